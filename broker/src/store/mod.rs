//! Persistent state: bootstrap tokens, session revocations, leases, signing keys, the audit
//! chain head, local secrets, image verdicts, image exemptions and admission records.
//!
//! [`Store`] is a trait so PostgreSQL can back replicas later. Every operation that must be
//! atomic across replicas (reserving, committing or releasing a bootstrap token's redemption)
//! is a single store call.
//!
//! # Layout
//! - this module: the [`Store`] trait, its records and [`StoreError`].
//! - [`sqlite`]: the embedded default (one file, nothing to install; several replicas on one
//!   host may share it).
//! - [`postgres`]: PostgreSQL, what several broker replicas share (migrations under an
//!   advisory lock, a bounded connection pool, TLS through rustls).
//! - [`memory`]: in process memory, not persistent (tests, embedding).
//! - `suite` (tests only): the trait's behavioural contract, written once and run against
//!   every implementation; a new store joins it with one line.

pub mod copy;
pub mod memory;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
mod suite;

use std::sync::Arc;
use std::time::SystemTime;

use lanyard::Secret;

/// A minted bootstrap token. The token itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapTokenRecord {
    /// Public id (`bt_` + 16 hex), safe to log.
    pub token_id: String,
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    /// Roles it may be redeemed for.
    pub roles: Vec<String>,
    /// Image digest it is bound to.
    pub image: Option<String>,
    /// Mint time.
    pub created_at: SystemTime,
    /// Redeemable while `now < expires_at`.
    pub expires_at: SystemTime,
}

/// A bootstrap token whose redemption was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemedToken {
    /// The token.
    pub token: BootstrapTokenRecord,
    /// When the redemption was committed (the grace window for re-redemption starts here).
    pub redeemed_at: SystemTime,
    /// When the session it bought started: the time the committing reservation was taken.
    pub session_started: SystemTime,
}

/// The result of trying to reserve a bootstrap token ([`Store::reserve_bootstrap_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// This call holds the token, until the `until` it gave or its commit or release; no
    /// other call holds it meanwhile.
    Reserved(BootstrapTokenRecord),
    /// Another reservation holds it until `until`: a redemption is in progress.
    Held {
        /// The token.
        token: BootstrapTokenRecord,
        /// When that hold lapses and the token may be reserved again.
        until: SystemTime,
    },
    /// Its redemption was committed; it can never be reserved again.
    Redeemed(RedeemedToken),
    /// No token with that hash (never minted, or revoked).
    Unknown,
    /// It exists, unredeemed, but expired.
    Expired(BootstrapTokenRecord),
}

/// A revoked session: every session token of it is refused until `expires_at`, when the
/// session would have ended anyway and the record may be pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRevocation {
    /// The session's id (`ss_` + 16 hex).
    pub session_id: String,
    /// When it was revoked.
    pub revoked_at: SystemTime,
    /// The session's latest possible end: kept (and refused) until then.
    pub expires_at: SystemTime,
}

/// A credential the broker issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The broker's lease id (`ls_` + 24 hex).
    pub lease_id: String,
    /// Role name.
    pub role: String,
    /// Backend kind.
    pub backend: String,
    /// Identity subject it was issued to.
    pub subject: String,
    /// Identity issuer.
    pub issuer: String,
    /// Issue time.
    pub issued_at: SystemTime,
    /// Expiry.
    pub expires_at: SystemTime,
    /// The backend's own lease/session id.
    pub upstream_lease: Option<String>,
    /// Credential fingerprint (as in the audit log).
    pub fingerprint: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
    /// The upstream lease's own length, in seconds, when the broker keeps renewing it up to
    /// `expires_at` (`issue::renewal`); `None` when it is not renewed. Kept so that a broker
    /// that restarts goes on renewing what an earlier process handed out.
    pub renew_step_secs: Option<u64>,
    /// REV (issue 16): the Kubernetes pod it was issued to (`kubernetes.io.pod.uid` of the
    /// identity), so the pod watch revokes it when the pod is deleted.
    pub pod_uid: Option<String>,
}

/// A JWT signing key held by the broker.
#[derive(Debug, Clone)]
pub struct SigningKeyRecord {
    /// Key id (`kid`).
    pub kid: String,
    /// `ES256` or `EdDSA`.
    pub alg: String,
    /// PKCS#8 DER of the private key, base64 (standard) encoded.
    pub pkcs8: Secret,
    /// When it was created (and published).
    pub created_at: SystemTime,
    /// When it starts signing: `publish_ahead_seconds` after `created_at`, so relying parties
    /// know it first (the key ring's `Schedule` decides from this alone). Keys stored before
    /// this field existed read as `created_at`, which is when they started signing.
    pub active_from: SystemTime,
}

/// The last record of the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the last record (1-based).
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
}

/// One audit chain kept in the store (`audit.sink: store`): every broker process writes its
/// own, so replicas never contend for one head. `epoch` is the chain's number, unique in the
/// store and increasing with each process start; every record of the chain names it and the
/// `replica` that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditChain {
    /// The chain's number (unique in the store).
    pub epoch: u64,
    /// The replica id of the process that writes it.
    pub replica: String,
    /// When the process opened it.
    pub started_at: SystemTime,
    /// Its last record (`None` before the first).
    pub head: Option<ChainHead>,
}

/// One record's line in a chain kept in the store, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLine {
    /// The record's seq and hash.
    pub head: ChainHead,
    /// The exact line (the hash covers it).
    pub line: String,
}

/// The message a store without audit chains answers `audit.sink: store` with.
pub const NO_AUDIT_CHAINS: &str =
    "this store keeps no audit records: `audit.sink: store` needs a PostgreSQL store";

/// The verdict of one image scan, keyed by (manifest digest, ruleset version). For an image
/// index it is the worst verdict over the platforms scanned. Holds a findings summary only:
/// never a secret value, never a preview of one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerdictRecord {
    /// The manifest (or index) digest, `sha256:` + 64 hex.
    pub digest: String,
    /// The scanner's ruleset version the verdict was reached under.
    pub ruleset_version: String,
    /// `host/repository` it was scanned from (so a background re-scan can fetch it again).
    pub repository: Option<String>,
    /// The verdict before the broker's allowlist (which is applied when the verdict is read,
    /// so an allowlist change needs no re-scan).
    pub verdict: lanyard_scan::Verdict,
    /// Every finding that counts before the allowlist, summarised.
    pub findings: Vec<FindingSummary>,
    /// Why the scan is incomplete (empty when complete).
    pub incomplete: Vec<String>,
    /// The platforms scanned (`os/arch`), for an index; empty for a single image.
    pub platforms: Vec<String>,
    /// When the scan finished.
    #[serde(with = "unix_seconds")]
    pub scanned_at: SystemTime,
}

/// One finding, as the gate keeps it: where it is and which rule, never what it is. The
/// same type the admin API answers with ([`lanyard::wire::GateFinding`]).
pub use lanyard::wire::GateFinding as FindingSummary;

/// An operator's exemption of one image digest from the gate, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExemptionRecord {
    /// The exempted digest.
    pub digest: String,
    /// Why (required; shown in every audit record of its use).
    pub reason: String,
    /// When it was recorded.
    pub created_at: SystemTime,
}

/// What the validating admission webhook admitted a pod with: the images of its containers,
/// init and ephemeral containers, each resolved to a digest and checked. Trust source 1 of
/// the gate: a pod token (`kubernetes.io.pod.uid`) is gated by the record for its pod.
/// Written durably before the webhook answers; removed after `expires_at` (or when the pod
/// is gone, where pod lookups are configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionRecord {
    /// `request.object.metadata.uid` of the admitted pod (not the review's `request.uid`).
    pub pod_uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name; may be empty (`generateName` before the name is set).
    pub pod_name: String,
    /// Full references `repo@sha256:…`, as resolved and checked, in spec order.
    pub images: Vec<String>,
    /// Every container's `image` was already a digest reference at validation (digest
    /// pinning on). `false`: tag-based, weaker — a tag may move between admission and the
    /// kubelet's pull.
    pub pinned: bool,
    /// When the pod was admitted.
    pub admitted_at: SystemTime,
    /// `admitted_at` + `gate.admission.record_retention_hours`: pruned after.
    pub expires_at: SystemTime,
}

mod unix_seconds {
    use std::time::{Duration, SystemTime};

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        s.serialize_u64(secs)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = <u64 as serde::Deserialize>::deserialize(d)?;
        SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(|| serde::de::Error::custom("time out of range"))
    }
}

/// Store failures.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed (I/O, corrupt, a bug).
    #[error("store: {0}")]
    Backend(String),
    /// The database cannot be used for now, and a retry may succeed: another process holds
    /// its lock past the busy timeout, or it cannot be read or written (permissions, disk
    /// full, I/O). Answered with a retryable 503 `store_unavailable`.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A record could not be decoded.
    #[error("store holds an invalid record: {0}")]
    Corrupt(String),
    /// An insert collided with an existing key.
    #[error("store: duplicate {0}")]
    Duplicate(String),
}

/// Largest `store.postgres_url_file` read, in bytes.
pub const MAX_URL_FILE_BYTES: u64 = 8 * 1024;

/// Opens the store `config` names: the SQLite file, or PostgreSQL (connecting and applying
/// its migrations). The PostgreSQL URL is read from `postgres_url_file` when that is set.
pub async fn open(config: &crate::config::StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    use crate::config::StoreChoice;
    match config.choice().map_err(StoreError::Backend)? {
        StoreChoice::Sqlite(path) => Ok(Arc::new(sqlite::SqliteStore::open(&path)?)),
        StoreChoice::Postgres => {
            let url = match (&config.postgres_url, &config.postgres_url_file) {
                (Some(url), _) => url.clone(),
                (None, Some(file)) => read_url_file(file)?,
                (None, None) => {
                    return Err(StoreError::Backend("no PostgreSQL URL configured".into()));
                }
            };
            let opts = postgres::PostgresOptions {
                url,
                ca_file: config.postgres_ca_file.clone(),
                pool_size: config.postgres_pool_size,
                connect_timeout: std::time::Duration::from_secs(
                    config.postgres_connect_timeout_seconds,
                ),
            };
            Ok(Arc::new(postgres::PostgresStore::connect(&opts).await?))
        }
    }
}

/// Reads a URL file: at most [`MAX_URL_FILE_BYTES`], UTF-8, trimmed, not empty.
pub fn read_url_file(file: &std::path::Path) -> Result<Secret, StoreError> {
    use std::io::Read as _;
    let shown = file.display();
    let mut text = zeroize::Zeroizing::new(String::new());
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_URL_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| {
            StoreError::Backend(format!(
                "store.postgres_url_file {shown}: cannot read it: {e}"
            ))
        })?;
    if text.len() as u64 > MAX_URL_FILE_BYTES {
        return Err(StoreError::Backend(format!(
            "store.postgres_url_file {shown}: larger than {MAX_URL_FILE_BYTES} bytes; it must \
             hold one URL"
        )));
    }
    let url = text.trim();
    if url.is_empty() {
        return Err(StoreError::Backend(format!(
            "store.postgres_url_file {shown}: empty; write postgres://user:password@host:port/db"
        )));
    }
    Ok(Secret::new(url))
}

/// Largest secret [`Store::local_secret`] creates, in bytes.
pub const MAX_LOCAL_SECRET_BYTES: usize = 1024;

/// Persistent broker state.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Saves a newly minted bootstrap token.
    async fn insert_bootstrap_token(&self, rec: &BootstrapTokenRecord) -> Result<(), StoreError>;

    /// Atomically reserves the unredeemed, unexpired (`now < expires_at`) token with this
    /// hash for `reservation` until `until`, unless another reservation holds it: of any
    /// number of racing callers, across handles and processes sharing the store, exactly one
    /// gets [`ReserveOutcome::Reserved`]. A hold whose `until` is at or before `now` has
    /// lapsed (its holder crashed) and is taken over. The other outcomes say why not, in this
    /// order: redeemed (whatever the time), expired, held.
    async fn reserve_bootstrap_token(
        &self,
        token_hash: &str,
        reservation: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<ReserveOutcome, StoreError>;

    /// Commits the redemption `reservation` holds: the token is redeemed at `now`, its session
    /// started when the reservation was taken, and it can never be reserved again. Returns
    /// false, changing nothing, when `reservation` does not hold it (released, taken over
    /// after its hold lapsed, the token revoked). A hold that lapsed but was not taken over
    /// still commits.
    async fn commit_bootstrap_token(
        &self,
        token_hash: &str,
        reservation: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError>;

    /// Releases the hold of `reservation`: the token is unused again. Returns false, changing
    /// nothing, when `reservation` holds nothing (committed, released, taken over, revoked).
    async fn release_bootstrap_token(
        &self,
        token_hash: &str,
        reservation: &str,
    ) -> Result<bool, StoreError>;

    /// Revokes an unredeemed token, held by a reservation or not (that reservation then
    /// cannot commit). Returns whether a token was revoked.
    async fn revoke_bootstrap_token(&self, token_id: &str) -> Result<bool, StoreError>;

    /// The bootstrap token with this public id, if its redemption was committed (what a
    /// session's start is read from).
    async fn redeemed_bootstrap_token(
        &self,
        token_id: &str,
    ) -> Result<Option<RedeemedToken>, StoreError>;

    /// Records a session revocation. Returns false, changing nothing, when the session was
    /// already revoked (its first record, and its `expires_at`, stay).
    async fn revoke_session(&self, rec: &SessionRevocation) -> Result<bool, StoreError>;

    /// Every revocation whose `expires_at` is after `now`, in no particular order.
    async fn session_revocations(
        &self,
        now: SystemTime,
    ) -> Result<Vec<SessionRevocation>, StoreError>;

    /// Deletes the revocations whose `expires_at` is at or before `now`; returns how many.
    async fn prune_session_revocations(&self, now: SystemTime) -> Result<usize, StoreError>;

    /// Whether the store can take a write now, without waiting long for it: `Ok` when it can,
    /// [`StoreError::Unavailable`] when another process holds its write lock or the file
    /// cannot be written. For readiness; writes nothing.
    async fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Saves an issued lease.
    async fn insert_lease(&self, rec: &LeaseRecord) -> Result<(), StoreError>;

    /// Looks up a lease.
    async fn get_lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>, StoreError>;

    /// Marks a lease revoked. Returns false if it did not exist or was already revoked.
    async fn mark_lease_revoked(&self, lease_id: &str, now: SystemTime)
    -> Result<bool, StoreError>;

    /// Up to `limit` leases of `backend` that expired at or before `now`, are not revoked, and
    /// carry an upstream lease (for revoke-on-expiry), oldest expiry first.
    async fn expired_leases(
        &self,
        backend: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError>;

    /// Leases the broker renews (`renew_step_secs` set), not revoked and still running at
    /// `now`, soonest expiry first, at most `limit`: what a starting broker resumes renewing.
    async fn renewable_leases(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError>;

    /// REV (issue 16): up to `limit` leases of `backend` that were revoked and are still
    /// running at `now` (`expires_at` after it), as (lease id, expiry), soonest expiry first
    /// (then by id): the broker JWTs' revocation list, whose entries drop out at expiry.
    async fn revoked_running_leases(
        &self,
        backend: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<(String, SystemTime)>, StoreError>;

    /// REV (issue 16): up to `limit` leases issued to the pod `pod_uid`, not revoked and still
    /// running at `now`: what its deletion revokes.
    async fn running_leases_of_pod(
        &self,
        pod_uid: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError>;

    /// REV (issue 16): up to `limit` distinct pod UIDs after `after` (all when `None`), in
    /// order, that hold a lease issued before `issued_before`, not revoked and still running
    /// at `now`: what a relist of the pods checks against the pods that exist.
    async fn pods_with_running_leases(
        &self,
        after: Option<&str>,
        issued_before: SystemTime,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Signing keys, oldest `created_at` first, each with its `active_from` as stored.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;

    /// Adds a signing key.
    async fn insert_signing_key(&self, rec: &SigningKeyRecord) -> Result<(), StoreError>;

    /// Deletes a signing key (after it has been retired long enough).
    async fn delete_signing_key(&self, kid: &str) -> Result<(), StoreError>;

    /// Replaces the stored private key text of `kid` with `new` only if it is still
    /// `expected` (sealing it again under another key-encryption key, `issue::kek`); false
    /// when it was not (another replica did it first, or the key is gone).
    async fn reseal_signing_key(
        &self,
        kid: &str,
        expected: &Secret,
        new: &Secret,
    ) -> Result<bool, StoreError> {
        let _ = (kid, expected, new);
        Err(StoreError::Backend(
            "this store cannot seal signing keys again".into(),
        ))
    }

    /// The audit chain head, if any record was written.
    async fn audit_head(&self) -> Result<Option<ChainHead>, StoreError>;

    /// Records the audit chain head.
    async fn set_audit_head(&self, head: &ChainHead) -> Result<(), StoreError>;

    /// Saves the leases of one committed audit group and its new chain head, as one
    /// transaction where the store has them. The outer error fails the whole group; the
    /// inner ones (one per lease, in order) fail only their lease (a duplicate id).
    async fn record_group(
        &self,
        leases: &[LeaseRecord],
        head: &ChainHead,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            out.push(self.insert_lease(l).await);
        }
        self.set_audit_head(head).await?;
        Ok(out)
    }

    /// [`Store::record_group`] for a group whose records are already durable in an audit log
    /// file, which replays the leases of the records after the store's chain head at start
    /// (`audit::resume`). A store may commit it without waiting for its own disk sync: a power
    /// cut can then lose the commit, never the leases. SQLite does (`synchronous = NORMAL` for
    /// this transaction only); the others save it as `record_group` does.
    async fn record_replayable_group(
        &self,
        leases: &[LeaseRecord],
        head: &ChainHead,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.record_group(leases, head).await
    }

    /// A named random secret of `len` bytes, as lowercase hex, created on first use and
    /// stable afterwards (e.g. the key for credential fingerprints). `len` must be 1 to
    /// [`MAX_LOCAL_SECRET_BYTES`]; asking for an existing secret with another length is
    /// [`StoreError::Corrupt`], never a secret of the wrong length.
    async fn local_secret(&self, name: &str, len: usize) -> Result<Secret, StoreError>;

    /// Saves a verdict, replacing any for the same (digest, ruleset version).
    async fn put_verdict(&self, rec: &VerdictRecord) -> Result<(), StoreError>;

    /// The verdict for (digest, ruleset version), if one was saved.
    async fn verdict(
        &self,
        digest: &str,
        ruleset_version: &str,
    ) -> Result<Option<VerdictRecord>, StoreError>;

    /// The most recently scanned verdict for `digest` under any ruleset version other than
    /// `except` (an older ruleset's verdict, used until the current one exists).
    async fn previous_verdict(
        &self,
        digest: &str,
        except: &str,
    ) -> Result<Option<VerdictRecord>, StoreError>;

    /// Up to `limit` digests (with the repository they were scanned from) that have a verdict
    /// under some ruleset version but none under `ruleset_version`: what a background
    /// re-scan after a ruleset change has left to do. In digest order.
    async fn digests_without_verdict(
        &self,
        ruleset_version: &str,
        limit: usize,
    ) -> Result<Vec<(String, Option<String>)>, StoreError>;

    /// Records (or replaces) an exemption.
    async fn put_exemption(&self, rec: &ExemptionRecord) -> Result<(), StoreError>;

    /// The exemption for `digest`, if one was recorded.
    async fn exemption(&self, digest: &str) -> Result<Option<ExemptionRecord>, StoreError>;

    /// Saves an admission record, replacing any for the same pod UID (an UPDATE of the pod
    /// writes the union of its images). Durable when it returns.
    async fn put_admission_record(&self, rec: &AdmissionRecord) -> Result<(), StoreError>;

    /// The admission record of the pod with this UID, if one was saved and not removed
    /// (whatever its `expires_at`: pruning removes it).
    async fn admission_record(&self, pod_uid: &str) -> Result<Option<AdmissionRecord>, StoreError>;

    /// Deletes the record of this pod. Returns whether one existed.
    async fn delete_admission_record(&self, pod_uid: &str) -> Result<bool, StoreError>;

    /// Up to `limit` records with a pod UID after `after_uid` (all when `None`), ordered by
    /// pod UID: for sweeps that page through them.
    async fn admission_records_page(
        &self,
        after_uid: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AdmissionRecord>, StoreError>;

    /// Deletes the records whose `expires_at` is at or before `now`; returns how many.
    async fn prune_admission_records(&self, now: SystemTime) -> Result<usize, StoreError>;

    /// Opens a new audit chain for `replica` (`audit.sink: store`) and returns its epoch.
    async fn open_audit_chain(&self, replica: &str, now: SystemTime) -> Result<u64, StoreError> {
        let _ = (replica, now);
        Err(StoreError::Backend(NO_AUDIT_CHAINS.into()))
    }

    /// Saves one group of chain `epoch`'s lines (following `prev`, the chain's head before
    /// them), the leases they record, and the new head, in one transaction: all or nothing,
    /// except that a lease whose id exists already fails alone (as in
    /// [`Store::record_group`]). An `Err` saved nothing; a head that moved meanwhile is
    /// [`StoreError::Corrupt`].
    async fn record_audit_lines(
        &self,
        epoch: u64,
        prev: Option<&ChainHead>,
        lines: &[StoredLine],
        leases: &[LeaseRecord],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let _ = (epoch, prev, lines, leases);
        Err(StoreError::Backend(NO_AUDIT_CHAINS.into()))
    }

    /// Every audit chain kept in the store, oldest first.
    async fn audit_chains(&self) -> Result<Vec<AuditChain>, StoreError> {
        Err(StoreError::Backend(NO_AUDIT_CHAINS.into()))
    }

    /// Up to `limit` lines of chain `epoch` after `after_seq`, in order.
    async fn audit_lines(
        &self,
        epoch: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredLine>, StoreError> {
        let _ = (epoch, after_seq, limit);
        Err(StoreError::Backend(NO_AUDIT_CHAINS.into()))
    }

    /// Whether several broker processes may share this store at once (PostgreSQL): work
    /// over shared rows is then claimed by one of them ([`Store::claim_job`]).
    fn is_shared(&self) -> bool {
        false
    }

    /// Claims the background job `job` (a sweep, a prune) for `holder` until `until`, so that
    /// of the replicas sharing the store one runs it per period: true when `holder` may run
    /// it now — no one holds it, the claim lapsed (its `until` at or before `now`: its holder
    /// stopped), or `holder` holds it already (the claim is then extended to `until`). A
    /// fenced row, not a session-level advisory lock (which dies silently with a pooled
    /// connection). Stores serving one process (memory, SQLite) claim always: each process
    /// runs its jobs, as before replicas.
    async fn claim_job(
        &self,
        job: &str,
        holder: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<bool, StoreError> {
        let _ = (job, holder, now, until);
        Ok(true)
    }
}

/// Seconds since the epoch as the stores keep them.
pub(crate) fn to_unix(t: SystemTime) -> Result<i64, StoreError> {
    i64::try_from(lanyard::clock::unix_seconds(t))
        .map_err(|_| StoreError::Backend("time is too far in the future to store".to_owned()))
}

/// A stored seconds-since-the-epoch column read back; `what` names it in the error.
pub(crate) fn from_unix(v: i64, what: &dyn std::fmt::Display) -> Result<SystemTime, StoreError> {
    u64::try_from(v)
        .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .map_err(|_| StoreError::Corrupt(format!("{what}: negative timestamp {v}")))
}

/// Milliseconds since the epoch as the stores keep them.
pub(crate) fn to_unix_millis(t: SystemTime) -> Result<i64, StoreError> {
    let millis = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    i64::try_from(millis)
        .map_err(|_| StoreError::Backend("time is too far in the future to store".to_owned()))
}

/// A stored milliseconds column read back; `what` names it in the error.
pub(crate) fn from_unix_millis(
    v: i64,
    what: &dyn std::fmt::Display,
) -> Result<SystemTime, StoreError> {
    u64::try_from(v)
        .map(|ms| SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .map_err(|_| StoreError::Corrupt(format!("{what}: negative timestamp {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_file_is_read_trimmed_and_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("url");
        std::fs::write(&file, "  postgres://u:pw@h/db\n").expect("write");
        assert_eq!(
            read_url_file(&file).expect("read").expose(),
            "postgres://u:pw@h/db"
        );
        std::fs::write(&file, "\n \n").expect("write");
        let e = read_url_file(&file).expect_err("empty").to_string();
        assert!(e.contains("empty"), "{e}");
        std::fs::write(&file, "x".repeat(9 * 1024)).expect("write");
        let e = read_url_file(&file).expect_err("large").to_string();
        assert!(e.contains("larger than"), "{e}");
        let e = read_url_file(&dir.path().join("missing"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}
