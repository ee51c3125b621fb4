//! Bootstrap tokens: random 256-bit bearer tokens, stored only as their SHA-256, bound at mint
//! time to roles (and optionally an image digest), redeemed at most once before they expire.
//!
//! A token is `lbt_` followed by the unpadded base64url of 32 random bytes. Its public id
//! (`bt_` + 16 hex) is what logs, audit records and revocation use.
//!
//! # Redemption and issuance are one outcome
//! A token is spent only once what it was presented for has been issued:
//!
//! 1. [`Redeemer::begin`] **reserves** it in the store for this request (a hold of at most
//!    [`RESERVATION_HOLD`]) and returns a [`Redemption`] carrying the identity it proves.
//! 2. The broker issues.
//! 3. [`Redemption::commit`] commits the redemption once everything was issued;
//!    [`Redemption::release`] releases the reservation on any failure (policy, backend, store,
//!    audit), and the token stays unused. A `Redemption` dropped before either (a request
//!    task dropped unsettled, e.g. at shutdown; a client that goes away does not cancel its
//!    request, see `server::conn`) releases in a spawned task; when even that
//!    cannot run (the broker crashed), the hold lapses after [`RESERVATION_HOLD`] and the
//!    token can be reserved again.
//!
//! **Concurrent presentations of one token make one attempt.** In one broker the first request
//! leads and the others wait for its outcome (at most [`REDEEM_WAIT`]); while another replica
//! sharing the store holds the token, the leader polls the store. When the attempt commits,
//! the waiters become re-redemptions (below) of its session; when it fails, they answer
//! [`RedeemError::Busy`] (retryable) without calling a backend themselves, and a retry finds the
//! token unused.
//!
//! **A response lost after the commit** — the client never saw its session — is answered by
//! **re-redemption**: for `bootstrap.redeem_grace_seconds` after the commit the same token is
//! accepted again as a redemption of the *same* session (same token id, same start, so the
//! same end). Credentials are issued again, nothing is committed again, and each is audited.
//! After the grace window the token is spent (an opaque 401). With a grace of 0 a lost
//! response means minting a new token.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard::Secret;
use lanyard::clock::{Clock, unix_seconds};
use tokio::sync::watch;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::{AuthnError, BOOTSTRAP_ISSUER, BootstrapBinding, Identity};
use crate::store::{BootstrapTokenRecord, RedeemedToken, ReserveOutcome, Store, StoreError};

/// Prefix of every bootstrap token (`lbt_` + 43 base64url characters = 256 random bits).
pub const TOKEN_PREFIX: &str = "lbt_";

/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;

/// Length of a token: the prefix plus unpadded base64url of [`TOKEN_BYTES`].
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + (TOKEN_BYTES * 4).div_ceil(3);

/// Prefix of a token's public id.
pub const TOKEN_ID_PREFIX: &str = "bt_";

/// How long a reservation holds a token before another request may take it over: longer than
/// any request takes (each backend call is bounded by its `request_timeout_seconds`, 10 s by
/// default), and the longest a crashed broker's reservation keeps the token from being used.
pub const RESERVATION_HOLD: Duration = Duration::from_secs(60);

/// How long a request waits for a concurrent redemption of the same token before answering
/// [`RedeemError::Busy`].
pub const REDEEM_WAIT: Duration = Duration::from_secs(5);

/// First and longest pause between polls of a token another replica holds.
const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(250);

/// A freshly minted token. The only time the token itself exists outside the caller.
#[derive(Debug)]
pub struct MintedToken {
    /// Public id.
    pub token_id: String,
    /// The token.
    pub token: Secret,
    /// Redeemable until.
    pub expires_at: SystemTime,
}

/// Why minting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The request is invalid (no roles, zero TTL, malformed image digest): the caller's
    /// fault (400). The message says what is expected.
    #[error("invalid bootstrap token request: {0}")]
    Invalid(String),
    /// The system random number generator failed (500).
    #[error("the system random number generator failed")]
    Random,
    /// The store failed (500/503).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a redemption could not begin.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// The token was refused (unknown, expired, spent, malformed). Answer with an opaque 401.
    #[error("{error}")]
    Rejected {
        /// Why, for the audit log and metrics.
        error: AuthnError,
        /// The token's public id, when the token was known.
        token_id: Option<String>,
    },
    /// Another request is redeeming this token, or its attempt has just failed: nothing was
    /// decided about this one, and retrying in a moment will be (503, retryable).
    #[error(
        "another request is redeeming this bootstrap token; retry in a moment (the token is not spent unless that request succeeds)"
    )]
    Busy,
    /// The store failed: not the caller's fault (500).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a redemption could not be committed. Nothing was committed; the caller answers with an
/// error and discards what it issued.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The reservation no longer holds the token: an admin revoked it meanwhile, or the
    /// request outlived [`RESERVATION_HOLD`] and another took the token over. A retry gets
    /// the truth (401 for a revoked token), so this is retryable (503).
    #[error(
        "the bootstrap token's reservation was lost before its redemption committed (revoked, or taken over after {} s); retry",
        RESERVATION_HOLD.as_secs()
    )]
    Lost,
    /// The store failed (500). The reservation was released if the store allowed; if the
    /// commit happened after all, a retry within the grace window is a re-redemption.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether a bearer credential is shaped like a bootstrap token (vs a JWT).
pub fn looks_like_bootstrap_token(s: &str) -> bool {
    s.starts_with(TOKEN_PREFIX)
}

/// Hex SHA-256 of the whole token string: what the store keeps instead of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// Whether `token` has exactly the shape [`mint`] produces: the prefix, then 43 base64url
/// characters that decode (canonically) to 32 bytes.
fn well_formed(token: &str) -> bool {
    if token.len() != TOKEN_LEN {
        return false;
    }
    let Some(body) = token.strip_prefix(TOKEN_PREFIX) else {
        return false;
    };
    let mut buf = Zeroizing::new([0u8; TOKEN_BYTES + 3]);
    matches!(
        URL_SAFE_NO_PAD.decode_slice(body, &mut buf[..]),
        Ok(n) if n == TOKEN_BYTES
    )
}

/// Whether `image` is a pinned reference the gate can trust: `repo@sha256:…` or a bare
/// `sha256:` + 64 lowercase hex ([`crate::gate::image::parse_pinned`]).
fn valid_image_digest(image: &str) -> bool {
    crate::gate::image::parse_pinned(image).is_ok()
}

fn validate(roles: &[String], ttl: Duration, image: Option<&str>) -> Result<(), MintError> {
    if roles.is_empty() {
        return Err(MintError::Invalid(
            "no roles: a bootstrap token must grant at least one role".to_owned(),
        ));
    }
    if let Some(i) = roles.iter().position(|r| r.trim().is_empty()) {
        return Err(MintError::Invalid(format!(
            "role #{} is empty: give each role's name",
            i + 1
        )));
    }
    if ttl < Duration::from_secs(1) {
        return Err(MintError::Invalid(
            "ttl must be at least 1 second".to_owned(),
        ));
    }
    if let Some(image) = image
        && !valid_image_digest(image)
    {
        // The value is not a secret, but it is caller input: say its length, not echo it.
        return Err(MintError::Invalid(format!(
            "image must be REPOSITORY@sha256:DIGEST or a digest of the form `sha256:` followed \
             by 64 lowercase hex characters (got {} characters)",
            image.len()
        )));
    }
    Ok(())
}

/// Mints a token bound to `roles` (and `image`), redeemable for `ttl`.
pub async fn mint(
    store: &dyn Store,
    clock: &dyn Clock,
    roles: Vec<String>,
    ttl: Duration,
    image: Option<String>,
) -> Result<MintedToken, MintError> {
    validate(&roles, ttl, image.as_deref())?;

    let rng = SystemRandom::new();
    let mut raw = Zeroizing::new([0u8; TOKEN_BYTES]);
    rng.fill(&mut raw[..]).map_err(|_| MintError::Random)?;
    let mut id = [0u8; 8];
    rng.fill(&mut id).map_err(|_| MintError::Random)?;

    let token = Secret::new(format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(&raw[..])
    ));
    let token_id = format!("{TOKEN_ID_PREFIX}{}", hex::encode(id));
    // Whole seconds, as the store keeps them, so what we return is what gets enforced.
    let created_at = SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds(clock.now()));
    let expires_at = created_at
        .checked_add(Duration::from_secs(ttl.as_secs()))
        .ok_or_else(|| MintError::Invalid("ttl is too large".to_owned()))?;

    store
        .insert_bootstrap_token(&BootstrapTokenRecord {
            token_id: token_id.clone(),
            token_hash: hash_token(token.expose()),
            roles,
            image,
            created_at,
            expires_at,
        })
        .await?;
    tracing::info!(token_id = %token_id, expires_at = unix_seconds(expires_at), "bootstrap token minted");
    Ok(MintedToken {
        token_id,
        token,
        expires_at,
    })
}

/// Redeems bootstrap tokens: reservations in the store, and the in-process coordination of
/// concurrent presentations of one token. One per broker.
pub struct Redeemer {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    grace: Duration,
    wait: Duration,
    inflight: Arc<Inflight>,
}

impl fmt::Debug for Redeemer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redeemer")
            .field("grace", &self.grace)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl Redeemer {
    /// A redeemer over `store`, accepting re-redemptions for `grace` after a commit (zero:
    /// never).
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, grace: Duration) -> Self {
        Self {
            store,
            clock,
            grace,
            wait: REDEEM_WAIT,
            inflight: Arc::default(),
        }
    }

    /// Begins redeeming `token`: reserves it for this request and returns the identity it
    /// proves, or — within the grace window after its redemption committed — a
    /// re-redemption of that same session. Waits for a concurrent redemption of the same
    /// token, at most [`REDEEM_WAIT`]. Malformed tokens are refused without a store lookup.
    pub async fn begin(&self, token: &str) -> Result<Redemption, RedeemError> {
        if !well_formed(token) {
            return Err(RedeemError::Rejected {
                error: AuthnError::UnknownToken,
                token_id: None,
            });
        }
        let hash = hash_token(token);
        let deadline = Instant::now() + self.wait;
        loop {
            let mut waiting = match self.inflight.join(&hash, || self.claim(&hash)) {
                Role::Lead(claim) => return self.lead(claim, deadline).await,
                Role::Wait(rx) => rx,
            };
            let settled = match tokio::time::timeout_at(
                deadline,
                waiting.wait_for(Settled::is_final),
            )
            .await
            {
                Ok(Ok(settled)) => settled.clone(),
                // The leader vanished without a word: look again.
                Ok(Err(_)) => Settled::Retry,
                Err(_) => return Err(RedeemError::Busy),
            };
            match settled {
                Settled::Redeemed(r) => return self.again(&r),
                Settled::Rejected(error, token_id) => {
                    return Err(RedeemError::Rejected { error, token_id });
                }
                Settled::Failed => return Err(RedeemError::Busy),
                Settled::Retry | Settled::Pending => {
                    if Instant::now() >= deadline {
                        return Err(RedeemError::Busy);
                    }
                }
            }
        }
    }

    fn claim(&self, hash: &str) -> Claim {
        let (tx, _) = watch::channel(Settled::Pending);
        Claim {
            store: self.store.clone(),
            clock: self.clock.clone(),
            inflight: self.inflight.clone(),
            hash: hash.to_owned(),
            reservation: format!("rs_{:032x}", fastrand::u128(..)),
            tx,
            settled: false,
        }
    }

    /// Leads this process's attempt on a token: reserve it, or find out why not; while
    /// another replica holds it, poll until it settles or `deadline` passes.
    async fn lead(&self, mut claim: Claim, deadline: Instant) -> Result<Redemption, RedeemError> {
        let mut pause = POLL_FIRST;
        loop {
            let now = whole_seconds(self.clock.now());
            let outcome = self
                .store
                .reserve_bootstrap_token(
                    &claim.hash,
                    &claim.reservation,
                    now,
                    now + RESERVATION_HOLD,
                )
                .await;
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    claim.settle(Settled::Failed);
                    return Err(RedeemError::Store(e));
                }
            };
            match outcome {
                ReserveOutcome::Reserved(record) => {
                    return Ok(Redemption {
                        identity: identity(&record),
                        session_started: now,
                        state: Mutex::new(State::Held(Box::new(Held { claim, record }))),
                    });
                }
                ReserveOutcome::Redeemed(r) => {
                    let r = Arc::new(r);
                    claim.settle(Settled::Redeemed(r.clone()));
                    return self.again(&r);
                }
                ReserveOutcome::Unknown => {
                    return Err(claim.reject(AuthnError::UnknownToken, None));
                }
                ReserveOutcome::Expired(rec) => {
                    return Err(claim.reject(AuthnError::TokenExpired, Some(rec.token_id)));
                }
                ReserveOutcome::Held { .. } => {
                    if Instant::now() + pause >= deadline {
                        claim.settle(Settled::Failed);
                        return Err(RedeemError::Busy);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(POLL_MAX);
                }
            }
        }
    }

    /// A re-redemption of the committed `r`, if still within the grace window.
    fn again(&self, r: &RedeemedToken) -> Result<Redemption, RedeemError> {
        let now = unix_seconds(self.clock.now());
        let grace_ends = unix_seconds(r.redeemed_at).saturating_add(self.grace.as_secs());
        if now < grace_ends {
            Ok(Redemption {
                identity: identity(&r.token),
                session_started: r.session_started,
                state: Mutex::new(State::Again),
            })
        } else {
            Err(RedeemError::Rejected {
                error: AuthnError::TokenReused,
                token_id: Some(r.token.token_id.clone()),
            })
        }
    }
}

/// The identity a token proves.
fn identity(rec: &BootstrapTokenRecord) -> Identity {
    Identity {
        issuer: BOOTSTRAP_ISSUER.to_owned(),
        subject: format!("bootstrap:{}", rec.token_id),
        kubernetes: None,
        bootstrap: Some(BootstrapBinding {
            token_id: rec.token_id.clone(),
            roles: rec.roles.clone(),
            image: rec.image.clone(),
        }),
        spiffe_id: None,
        claims: Default::default(),
    }
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds(t))
}

/// A redemption in progress: the identity a token proves, and either this request's
/// reservation of it (to [`commit`](Self::commit) or [`release`](Self::release)) or a
/// re-redemption within the grace window (nothing to commit). Dropped while it holds the
/// reservation, it releases it in a spawned task.
pub struct Redemption {
    identity: Identity,
    session_started: SystemTime,
    state: Mutex<State>,
}

/// A reservation this request holds, and the token it holds.
struct Held {
    claim: Claim,
    record: BootstrapTokenRecord,
}

enum State {
    /// This request holds the reservation.
    Held(Box<Held>),
    /// A re-redemption: the token's redemption committed earlier, within the grace window.
    Again,
    /// Committed or released.
    Done,
}

impl fmt::Debug for Redemption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redemption")
            .field("subject", &self.identity.subject)
            .field("session_started", &unix_seconds(self.session_started))
            .field("repeat", &self.is_repeat())
            .finish_non_exhaustive()
    }
}

impl Redemption {
    /// The identity the token proves.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// When the session this redemption starts (or repeats) started: the time the committing
    /// reservation was taken.
    pub fn session_started(&self) -> SystemTime {
        self.session_started
    }

    /// Whether this is a re-redemption within the grace window (nothing to commit).
    pub fn is_repeat(&self) -> bool {
        matches!(*self.state(), State::Again)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change is one assignment, so a poisoned lock holds a whole state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the reservation, if this redemption still holds one.
    fn take_held(&self) -> Option<(Claim, BootstrapTokenRecord)> {
        let mut state = self.state();
        if !matches!(*state, State::Held(_)) {
            return None;
        }
        match std::mem::replace(&mut *state, State::Done) {
            State::Held(held) => Some((held.claim, held.record)),
            State::Again | State::Done => None,
        }
    }

    /// Commits the redemption: the token is spent from now on (but for re-redemptions within
    /// the grace window). Requests waiting on it get its session. A re-redemption has nothing
    /// to commit. On failure nothing is committed: the caller must not hand out what it
    /// issued, and releases (as after any failure).
    pub async fn commit(&self) -> Result<(), CommitError> {
        let Some((mut claim, record)) = self.take_held() else {
            return match *self.state() {
                State::Again => Ok(()),
                State::Held(_) | State::Done => Err(CommitError::Lost),
            };
        };
        let now = whole_seconds(claim.clock.now());
        let committed = claim
            .store
            .commit_bootstrap_token(&claim.hash, &claim.reservation, now)
            .await;
        match committed {
            Ok(true) => {
                tracing::debug!(token_id = %record.token_id, "bootstrap token redeemed");
                claim.settle(Settled::Redeemed(Arc::new(RedeemedToken {
                    token: record,
                    redeemed_at: now,
                    session_started: self.session_started,
                })));
                Ok(())
            }
            Ok(false) => {
                claim.settle(Settled::Retry);
                Err(CommitError::Lost)
            }
            Err(e) => {
                // Whether the commit happened is unknown: the reservation stays for the
                // caller's release, which changes nothing if it did.
                *self.state() = State::Held(Box::new(Held { claim, record }));
                Err(CommitError::Store(e))
            }
        }
    }

    /// Releases the reservation after a failure: the token stays unused, and requests waiting
    /// on this one answer [`RedeemError::Busy`]. Returns whether a reservation was released
    /// (false for a re-redemption, or when the reservation was already lost).
    pub async fn release(&self) -> Result<bool, StoreError> {
        let Some((mut claim, record)) = self.take_held() else {
            return Ok(false);
        };
        let released = claim
            .store
            .release_bootstrap_token(&claim.hash, &claim.reservation)
            .await;
        if let Err(e) = &released {
            tracing::warn!(token_id = %record.token_id, error = %e, "cannot release a bootstrap token reservation; it lapses on its own");
        }
        claim.settle(Settled::Failed);
        released
    }
}

/// How one process's attempt on a token ended, for the requests waiting on it.
#[derive(Debug, Clone)]
enum Settled {
    /// Not yet.
    Pending,
    /// Redeemed (now or earlier): a re-redemption of it, within the grace window.
    Redeemed(Arc<RedeemedToken>),
    /// Refused, for this reason.
    Rejected(AuthnError, Option<String>),
    /// The attempt failed (an issuance refused or failed, a store error, no answer from
    /// another replica in time): the token is unused as far as anyone knows; retry later.
    Failed,
    /// The attempt was abandoned (its request cancelled) or lost its reservation: look again.
    Retry,
}

impl Settled {
    fn is_final(&self) -> bool {
        !matches!(self, Self::Pending)
    }
}

/// The attempts on tokens this process is making, by token hash: one leader each, the other
/// requests for the same token wait on it.
#[derive(Debug, Default)]
struct Inflight {
    attempts: Mutex<HashMap<String, watch::Receiver<Settled>>>,
}

enum Role {
    Lead(Claim),
    Wait(watch::Receiver<Settled>),
}

impl Inflight {
    fn attempts(&self) -> MutexGuard<'_, HashMap<String, watch::Receiver<Settled>>> {
        // Every change is one insert or remove, so a poisoned lock holds a whole map.
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on the attempt on `hash` if there is one, else leads a new one.
    fn join(&self, hash: &str, claim: impl FnOnce() -> Claim) -> Role {
        let mut attempts = self.attempts();
        if let Some(rx) = attempts.get(hash) {
            return Role::Wait(rx.clone());
        }
        let claim = claim();
        attempts.insert(hash.to_owned(), claim.tx.subscribe());
        Role::Lead(claim)
    }
}

/// This process's lead on a token: its entry in [`Inflight`], and the reservation id it
/// reserves with. Settling it tells the waiters; dropping it unsettled (its request was
/// cancelled) tells them to look again and releases whatever it may have reserved.
struct Claim {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    inflight: Arc<Inflight>,
    /// The token's hash (the token itself is never kept).
    hash: String,
    reservation: String,
    tx: watch::Sender<Settled>,
    settled: bool,
}

impl Claim {
    fn settle(&mut self, outcome: Settled) {
        if self.settled {
            return;
        }
        self.settled = true;
        self.inflight.attempts().remove(&self.hash);
        self.tx.send_replace(outcome);
    }

    fn reject(&mut self, error: AuthnError, token_id: Option<String>) -> RedeemError {
        self.settle(Settled::Rejected(error.clone(), token_id.clone()));
        RedeemError::Rejected { error, token_id }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.settle(Settled::Retry);
        // Cancelled while reserving or holding: release what may be held. A release by a
        // reservation that holds nothing changes nothing.
        let (store, hash, reservation) = (
            self.store.clone(),
            std::mem::take(&mut self.hash),
            std::mem::take(&mut self.reservation),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    match store.release_bootstrap_token(&hash, &reservation).await {
                        Ok(true) => tracing::info!(
                            "a bootstrap token reservation was released after its request was cancelled"
                        ),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(
                            error = %e,
                            "cannot release the bootstrap token reservation of a cancelled request; it lapses after {} s",
                            RESERVATION_HOLD.as_secs()
                        ),
                    }
                });
            }
            Err(_) => tracing::warn!(
                "no runtime to release the bootstrap token reservation of a cancelled request; it lapses after {} s",
                RESERVATION_HOLD.as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use lanyard::clock::ManualClock;

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{AdmissionRecord, ExemptionRecord, VerdictRecord};

    const IMAGE: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const GRACE: Duration = Duration::from_secs(30);

    fn roles() -> Vec<String> {
        vec!["db-read".to_owned()]
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn rejected(r: Result<Redemption, RedeemError>) -> (AuthnError, Option<String>) {
        match r {
            Err(RedeemError::Rejected { error, token_id }) => (error, token_id),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    /// A redeemer with a short wait, over `store`, on `clock`.
    fn redeemer(store: Arc<dyn Store>, clock: Arc<ManualClock>, grace: Duration) -> Redeemer {
        Redeemer {
            wait: Duration::from_millis(500),
            ..Redeemer::new(store, clock, grace)
        }
    }

    /// A store, a clock at 1 000 s, a redeemer with [`GRACE`], and a token for `roles()`.
    async fn setup() -> (Arc<dyn Store>, Arc<ManualClock>, Redeemer, MintedToken) {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let r = redeemer(store.clone(), clock.clone(), GRACE);
        let m = mint(&*store, &*clock, roles(), Duration::from_secs(600), None)
            .await
            .expect("mint");
        (store, clock, r, m)
    }

    #[tokio::test]
    async fn minted_token_redeems_to_a_bound_identity() {
        let store = Arc::new(SqliteStore::open_in_memory().expect("store"));
        let clock = Arc::new(ManualClock::at_unix(1_700_000_000));
        let minted = mint(
            &*store,
            &*clock,
            vec!["db-read".to_owned(), "queue".to_owned()],
            Duration::from_secs(600),
            Some(IMAGE.to_owned()),
        )
        .await
        .expect("mint");

        assert_eq!(minted.token.len(), TOKEN_LEN);
        assert!(looks_like_bootstrap_token(minted.token.expose()));
        assert!(minted.token_id.starts_with("bt_") && minted.token_id.len() == 19);
        assert_eq!(unix_seconds(minted.expires_at), 1_700_000_600);
        assert!(!format!("{minted:?}").contains(minted.token.expose()));

        clock.advance(Duration::from_secs(599));
        let r = redeemer(store, clock.clone(), GRACE);
        let redemption = r.begin(minted.token.expose()).await.expect("redeem");
        assert!(!redemption.is_repeat());
        assert_eq!(
            unix_seconds(redemption.session_started()),
            1_700_000_599,
            "the session starts when the token is reserved"
        );
        assert_eq!(
            redemption.identity(),
            &Identity {
                issuer: BOOTSTRAP_ISSUER.to_owned(),
                subject: format!("bootstrap:{}", minted.token_id),
                kubernetes: None,
                bootstrap: Some(BootstrapBinding {
                    token_id: minted.token_id.clone(),
                    roles: vec!["db-read".to_owned(), "queue".to_owned()],
                    image: Some(IMAGE.to_owned()),
                }),
                spiffe_id: None,
                claims: Default::default(),
            }
        );
        let debug = format!("{redemption:?}");
        assert!(!debug.contains(minted.token.expose()), "{debug}");
        assert!(
            !debug.contains(&hash_token(minted.token.expose())),
            "{debug}"
        );
        clock.advance(Duration::from_secs(3));
        redemption.commit().await.expect("commit");
    }

    /// After the commit, the same token is the same session for the grace window (counted
    /// from the commit), then spent; with no grace it is spent at once.
    #[tokio::test]
    async fn a_committed_token_is_the_same_session_for_the_grace_window_then_spent() {
        let (store, clock, r, m) = setup().await;
        let first = r.begin(m.token.expose()).await.expect("first");
        clock.advance(Duration::from_secs(5));
        first.commit().await.expect("commit");

        clock.advance(Duration::from_secs(29));
        let again = r.begin(m.token.expose()).await.expect("within the grace");
        assert!(again.is_repeat());
        assert_eq!(again.identity(), first.identity());
        assert_eq!(again.session_started(), first.session_started());
        again.commit().await.expect("nothing to commit");
        assert!(!again.release().await.expect("nothing to release"));

        clock.advance(Duration::from_secs(1));
        let (err, tid) = rejected(r.begin(m.token.expose()).await);
        assert_eq!(err, AuthnError::TokenReused);
        assert_eq!(tid.as_deref(), Some(m.token_id.as_str()));

        let strict = redeemer(store.clone(), clock.clone(), Duration::ZERO);
        let m2 = mint(&*store, &*clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        strict
            .begin(m2.token.expose())
            .await
            .expect("first")
            .commit()
            .await
            .expect("commit");
        assert_eq!(
            rejected(strict.begin(m2.token.expose()).await).0,
            AuthnError::TokenReused
        );
    }

    /// A failed issuance releases the reservation: the token is unused, redeemable again.
    #[tokio::test]
    async fn a_released_token_is_unused() {
        let (_store, clock, r, m) = setup().await;
        let first = r.begin(m.token.expose()).await.expect("first");
        assert!(first.release().await.expect("release"));
        assert!(!first.release().await.expect("released once"));
        assert!(
            matches!(first.commit().await, Err(CommitError::Lost)),
            "a released redemption cannot commit"
        );
        clock.advance(Duration::from_secs(1));
        let second = r.begin(m.token.expose()).await.expect("usable again");
        assert!(!second.is_repeat(), "a fresh redemption, not a repeat");
        assert_eq!(unix_seconds(second.session_started()), 1_001);
        second.commit().await.expect("commit");
    }

    /// A request cancelled mid-issuance (its client went away) drops its redemption: the
    /// reservation is released at once, without waiting for the hold to lapse; so is one
    /// dropped after a failed commit.
    #[tokio::test]
    async fn a_dropped_redemption_releases_the_token() {
        let (store, _clock, r, m) = setup().await;
        let hash = hash_token(m.token.expose());
        let first = r.begin(m.token.expose()).await.expect("first");
        drop(first);
        // The release runs in a spawned task; the clock does not move, so the hold cannot
        // have lapsed: only the release frees the token.
        let mut outcome = None;
        for _ in 0..100 {
            match store
                .reserve_bootstrap_token(&hash, "probe", at(1_000), at(1_060))
                .await
                .expect("reserve")
            {
                ReserveOutcome::Held { .. } => tokio::task::yield_now().await,
                other => {
                    outcome = Some(other);
                    break;
                }
            }
        }
        assert!(
            matches!(outcome, Some(ReserveOutcome::Reserved(_))),
            "{outcome:?}"
        );
        assert!(
            store
                .release_bootstrap_token(&hash, "probe")
                .await
                .expect("release")
        );
        r.begin(m.token.expose())
            .await
            .expect("usable again")
            .commit()
            .await
            .expect("commit");
    }

    /// A crashed broker's reservation (never committed, released or dropped) keeps the token
    /// busy until its hold lapses, then the token is usable.
    #[tokio::test]
    async fn a_crashed_reservation_lapses_after_the_hold() {
        let (_store, clock, r, m) = setup().await;
        let crashed = r.begin(m.token.expose()).await.expect("first");
        // A crash runs no destructor and leaves the in-process entry behind with the broker;
        // a restarted broker (a new redeemer on the same store) has neither.
        std::mem::forget(crashed);
        let restarted = redeemer(r.store.clone(), clock.clone(), GRACE);
        assert!(matches!(
            restarted.begin(m.token.expose()).await,
            Err(RedeemError::Busy)
        ));
        clock.advance(RESERVATION_HOLD - Duration::from_secs(1));
        assert!(matches!(
            restarted.begin(m.token.expose()).await,
            Err(RedeemError::Busy)
        ));
        clock.advance(Duration::from_secs(1));
        let taken = restarted
            .begin(m.token.expose())
            .await
            .expect("the hold lapsed");
        assert!(!taken.is_repeat());
        taken.commit().await.expect("commit");
    }

    #[tokio::test]
    async fn expired_token_is_refused_with_its_id() {
        let store = SqliteStore::open_in_memory().expect("store");
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let m = mint(&store, &*clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        let r = redeemer(Arc::new(store), clock.clone(), GRACE);
        clock.advance(Duration::from_secs(60));
        let (err, tid) = rejected(r.begin(m.token.expose()).await);
        assert_eq!(err, AuthnError::TokenExpired);
        assert_eq!(tid.as_deref(), Some(m.token_id.as_str()));
    }

    #[tokio::test]
    async fn unknown_and_revoked_tokens_are_unknown() {
        let (store, clock, r, _) = setup().await;
        let stranger = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert_eq!(
            rejected(r.begin(&stranger).await),
            (AuthnError::UnknownToken, None)
        );

        let m = mint(&*store, &*clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        assert!(
            store
                .revoke_bootstrap_token(&m.token_id)
                .await
                .expect("revoke")
        );
        assert_eq!(
            rejected(r.begin(m.token.expose()).await),
            (AuthnError::UnknownToken, None)
        );

        // Revoked while a request holds it: that redemption cannot commit, and is not spent.
        let m = mint(&*store, &*clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        let held = r.begin(m.token.expose()).await.expect("begin");
        assert!(
            store
                .revoke_bootstrap_token(&m.token_id)
                .await
                .expect("revoke")
        );
        assert!(matches!(held.commit().await, Err(CommitError::Lost)));
        assert_eq!(
            rejected(r.begin(m.token.expose()).await),
            (AuthnError::UnknownToken, None)
        );
    }

    /// A store whose bootstrap calls fail (reserve always; commit while `fail_commit` is set),
    /// counting the releases it is asked for.
    #[derive(Debug)]
    struct FailingStore {
        inner: MemoryStore,
        fail_reserve: bool,
        fail_commit: AtomicBool,
        releases: std::sync::atomic::AtomicUsize,
    }

    impl FailingStore {
        fn new(fail_reserve: bool) -> Self {
            Self {
                inner: MemoryStore::new(),
                fail_reserve,
                fail_commit: AtomicBool::new(true),
                releases: Default::default(),
            }
        }
    }

    fn locked() -> StoreError {
        StoreError::Backend("database is locked".to_owned())
    }

    #[async_trait::async_trait]
    impl Store for FailingStore {
        async fn insert_bootstrap_token(&self, r: &BootstrapTokenRecord) -> Result<(), StoreError> {
            self.inner.insert_bootstrap_token(r).await
        }
        async fn reserve_bootstrap_token(
            &self,
            hash: &str,
            reservation: &str,
            now: SystemTime,
            until: SystemTime,
        ) -> Result<ReserveOutcome, StoreError> {
            if self.fail_reserve {
                return Err(locked());
            }
            self.inner
                .reserve_bootstrap_token(hash, reservation, now, until)
                .await
        }
        async fn commit_bootstrap_token(
            &self,
            hash: &str,
            reservation: &str,
            now: SystemTime,
        ) -> Result<bool, StoreError> {
            if self.fail_commit.load(Ordering::SeqCst) {
                return Err(locked());
            }
            self.inner
                .commit_bootstrap_token(hash, reservation, now)
                .await
        }
        async fn release_bootstrap_token(
            &self,
            hash: &str,
            reservation: &str,
        ) -> Result<bool, StoreError> {
            self.releases.fetch_add(1, Ordering::SeqCst);
            self.inner.release_bootstrap_token(hash, reservation).await
        }
        async fn revoke_bootstrap_token(&self, _: &str) -> Result<bool, StoreError> {
            unreachable!()
        }
        async fn redeemed_bootstrap_token(
            &self,
            _: &str,
        ) -> Result<Option<RedeemedToken>, StoreError> {
            unreachable!()
        }
        async fn revoke_session(
            &self,
            _: &crate::store::SessionRevocation,
        ) -> Result<bool, StoreError> {
            unreachable!()
        }
        async fn session_revocations(
            &self,
            _: SystemTime,
        ) -> Result<Vec<crate::store::SessionRevocation>, StoreError> {
            unreachable!()
        }
        async fn prune_session_revocations(&self, _: SystemTime) -> Result<usize, StoreError> {
            unreachable!()
        }
        async fn insert_lease(&self, _: &crate::store::LeaseRecord) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn get_lease(
            &self,
            _: &str,
        ) -> Result<Option<crate::store::LeaseRecord>, StoreError> {
            unreachable!()
        }
        async fn expired_leases(
            &self,
            _: &str,
            _: SystemTime,
            _: usize,
        ) -> Result<Vec<crate::store::LeaseRecord>, StoreError> {
            unreachable!()
        }
        async fn renewable_leases(
            &self,
            _: SystemTime,
            _: usize,
        ) -> Result<Vec<crate::store::LeaseRecord>, StoreError> {
            unreachable!()
        }
        async fn mark_lease_revoked(&self, _: &str, _: SystemTime) -> Result<bool, StoreError> {
            unreachable!()
        }
        async fn running_leases_of_pod(
            &self,
            _: &str,
            _: SystemTime,
            _: usize,
        ) -> Result<Vec<crate::store::LeaseRecord>, StoreError> {
            unreachable!()
        }
        async fn pods_with_running_leases(
            &self,
            _: Option<&str>,
            _: SystemTime,
            _: SystemTime,
            _: usize,
        ) -> Result<Vec<String>, StoreError> {
            unreachable!()
        }
        async fn revoked_running_leases(
            &self,
            _: &str,
            _: SystemTime,
            _: usize,
        ) -> Result<Vec<(String, SystemTime)>, StoreError> {
            unreachable!()
        }
        async fn signing_keys(&self) -> Result<Vec<crate::store::SigningKeyRecord>, StoreError> {
            unreachable!()
        }
        async fn insert_signing_key(
            &self,
            _: &crate::store::SigningKeyRecord,
        ) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn delete_signing_key(&self, _: &str) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn audit_head(&self) -> Result<Option<crate::store::ChainHead>, StoreError> {
            unreachable!()
        }
        async fn set_audit_head(&self, _: &crate::store::ChainHead) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn local_secret(&self, _: &str, _: usize) -> Result<Secret, StoreError> {
            unreachable!()
        }
        async fn put_verdict(&self, r: &VerdictRecord) -> Result<(), StoreError> {
            self.inner.put_verdict(r).await
        }
        async fn verdict(&self, d: &str, r: &str) -> Result<Option<VerdictRecord>, StoreError> {
            self.inner.verdict(d, r).await
        }
        async fn previous_verdict(
            &self,
            d: &str,
            r: &str,
        ) -> Result<Option<VerdictRecord>, StoreError> {
            self.inner.previous_verdict(d, r).await
        }
        async fn digests_without_verdict(
            &self,
            r: &str,
            limit: usize,
        ) -> Result<Vec<(String, Option<String>)>, StoreError> {
            self.inner.digests_without_verdict(r, limit).await
        }
        async fn put_exemption(&self, r: &ExemptionRecord) -> Result<(), StoreError> {
            self.inner.put_exemption(r).await
        }
        async fn exemption(&self, d: &str) -> Result<Option<ExemptionRecord>, StoreError> {
            self.inner.exemption(d).await
        }
        async fn put_admission_record(&self, r: &AdmissionRecord) -> Result<(), StoreError> {
            self.inner.put_admission_record(r).await
        }
        async fn admission_record(&self, uid: &str) -> Result<Option<AdmissionRecord>, StoreError> {
            self.inner.admission_record(uid).await
        }
        async fn delete_admission_record(&self, uid: &str) -> Result<bool, StoreError> {
            self.inner.delete_admission_record(uid).await
        }
        async fn admission_records_page(
            &self,
            after: Option<&str>,
            limit: usize,
        ) -> Result<Vec<AdmissionRecord>, StoreError> {
            self.inner.admission_records_page(after, limit).await
        }
        async fn prune_admission_records(&self, now: SystemTime) -> Result<usize, StoreError> {
            self.inner.prune_admission_records(now).await
        }
    }

    #[tokio::test]
    async fn malformed_tokens_are_refused_without_a_lookup() {
        let store = Arc::new(FailingStore::new(true));
        let r = redeemer(store, Arc::new(ManualClock::at_unix(1_000)), GRACE);
        let good_body = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let mut non_canonical = good_body.clone();
        // The last character carries 2 unused bits; a set bit is not a canonical encoding.
        non_canonical.pop();
        non_canonical.push('B');
        let cases = [
            String::new(),
            TOKEN_PREFIX.to_owned(),
            good_body.clone(),
            format!("lbx_{good_body}"),
            format!("{TOKEN_PREFIX}{}", &good_body[1..]),
            format!("{TOKEN_PREFIX}{good_body}A"),
            format!("{TOKEN_PREFIX}{good_body}="),
            format!("{TOKEN_PREFIX}{}+", &good_body[1..]),
            format!("{TOKEN_PREFIX}{}/", &good_body[1..]),
            format!("{TOKEN_PREFIX}{}é", &good_body[2..]),
            format!("{TOKEN_PREFIX}{non_canonical}"),
            format!("{TOKEN_PREFIX}{}", "A".repeat(10_000)),
        ];
        for bad in &cases {
            assert_eq!(
                rejected(r.begin(bad).await),
                (AuthnError::UnknownToken, None),
                "{bad:?}"
            );
        }
        // The well-formed one does reach the store, whose failure is not the caller's fault.
        let good = format!("{TOKEN_PREFIX}{good_body}");
        assert!(matches!(
            r.begin(&good).await,
            Err(RedeemError::Store(StoreError::Backend(_)))
        ));
    }

    /// A store error at commit: nothing committed, the release that follows frees the
    /// token, usable again once the store recovers.
    #[tokio::test]
    async fn a_store_error_at_commit_leaves_the_token_unused() {
        let store = Arc::new(FailingStore::new(false));
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let m = mint(&*store, &*clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        let r = redeemer(store.clone(), clock.clone(), GRACE);
        let first = r.begin(m.token.expose()).await.expect("begin");
        assert!(matches!(
            first.commit().await,
            Err(CommitError::Store(StoreError::Backend(_)))
        ));
        assert_eq!(store.releases.load(Ordering::SeqCst), 0);
        assert!(first.release().await.expect("release"));
        assert_eq!(store.releases.load(Ordering::SeqCst), 1);
        drop(first);
        assert_eq!(
            store.releases.load(Ordering::SeqCst),
            1,
            "settled: dropping it releases nothing more"
        );
        store.fail_commit.store(false, Ordering::SeqCst);
        let second = r.begin(m.token.expose()).await.expect("usable again");
        assert!(!second.is_repeat());
        second.commit().await.expect("commit");
    }

    /// `racers` concurrent presentations of one token across `redeemers` (each a broker,
    /// all on `store`): the one that reserves it commits after `work`; returns (fresh
    /// redemptions, repeats, refusals as reused), checking every repeat shares the session.
    async fn race(
        redeemers: Vec<Arc<Redeemer>>,
        store: &dyn Store,
        clock: &ManualClock,
        racers: usize,
    ) -> (usize, usize, usize) {
        let m = mint(store, clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        let token = Arc::new(m.token);
        let tasks: Vec<_> = (0..racers)
            .map(|i| {
                let r = Arc::clone(&redeemers[i % redeemers.len()]);
                let token = Arc::clone(&token);
                tokio::spawn(async move {
                    let redemption = r.begin(token.expose()).await?;
                    if !redemption.is_repeat() {
                        // Issuing takes a while: the others must wait, not issue.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    redemption.commit().await.expect("commit");
                    Ok::<_, RedeemError>(redemption)
                })
            })
            .collect();
        let (mut fresh, mut repeats, mut reused) = (Vec::new(), Vec::new(), 0);
        for t in tasks {
            match t.await.expect("join") {
                Ok(r) if r.is_repeat() => repeats.push(r),
                Ok(r) => fresh.push(r),
                Err(RedeemError::Rejected {
                    error: AuthnError::TokenReused,
                    token_id,
                }) => {
                    assert_eq!(token_id.as_deref(), Some(m.token_id.as_str()));
                    reused += 1;
                }
                Err(other) => panic!("unexpected: {other:?}"),
            }
        }
        for r in &repeats {
            assert_eq!(r.identity(), fresh[0].identity());
            assert_eq!(r.session_started(), fresh[0].session_started());
        }
        (fresh.len(), repeats.len(), reused)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hundred_racers_one_broker_one_reservation_all_share_its_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("lanyard.db")).expect("store"));
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let r = Arc::new(redeemer(store.clone(), clock.clone(), GRACE));
        assert_eq!(race(vec![r], &*store, &clock, 100).await, (1, 99, 0));
        // With no grace window the others are refused as reused once it commits.
        let strict = Arc::new(redeemer(store.clone(), clock.clone(), Duration::ZERO));
        assert_eq!(race(vec![strict], &*store, &clock, 100).await, (1, 0, 99));
    }

    /// Four brokers on one file (replicas on one host): exactly one reservation; the other
    /// brokers poll the store and share the committed session.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hundred_racers_four_brokers_on_one_file_one_reservation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let redeemers: Vec<Arc<Redeemer>> = (0..4)
            .map(|_| {
                let store = Arc::new(SqliteStore::open(&path).expect("store"));
                Arc::new(redeemer(store, clock.clone(), GRACE))
            })
            .collect();
        let store = SqliteStore::open(&path).expect("store");
        assert_eq!(race(redeemers, &store, &clock, 100).await, (1, 99, 0));
    }

    /// When the one attempt fails, the requests that waited on it answer Busy (retry) without
    /// an attempt of their own, and the token is unused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn waiters_on_a_failed_attempt_are_told_to_retry_and_the_token_stays_unused() {
        let (_store, _clock, r, m) = setup().await;
        let r = Arc::new(r);
        let leader = r.begin(m.token.expose()).await.expect("leader");
        let waiters: Vec<_> = (0..20)
            .map(|_| {
                let r = Arc::clone(&r);
                let token = m.token.expose().to_owned();
                tokio::spawn(async move { r.begin(&token).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(leader.release().await.expect("release"));
        for w in waiters {
            assert!(matches!(w.await.expect("join"), Err(RedeemError::Busy)));
        }
        let retry = r.begin(m.token.expose()).await.expect("usable");
        assert!(!retry.is_repeat());
        retry.commit().await.expect("commit");
    }

    #[tokio::test]
    async fn mint_validates_its_inputs() {
        let store = SqliteStore::open_in_memory().expect("store");
        let clock = ManualClock::at_unix(1_000);
        let ttl = Duration::from_secs(60);
        let invalid = |r: Result<MintedToken, MintError>| match r {
            Err(MintError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        };

        let m = invalid(mint(&store, &clock, vec![], ttl, None).await);
        assert!(m.contains("at least one role"), "{m}");
        let m = invalid(mint(&store, &clock, vec![" ".to_owned()], ttl, None).await);
        assert!(m.contains("empty"), "{m}");
        let m = invalid(mint(&store, &clock, roles(), Duration::from_millis(999), None).await);
        assert!(m.contains("1 second"), "{m}");
        for image in [
            "latest",
            "registry.example.com/shop/api:1",
            "sha256:abc",
            &IMAGE.to_uppercase(),
            &format!("{IMAGE}0"),
            &IMAGE.replace("sha256:", "sha512:"),
        ] {
            let m = invalid(mint(&store, &clock, roles(), ttl, Some(image.to_owned())).await);
            assert!(m.contains("`sha256:` followed by 64 lowercase hex"), "{m}");
        }
        // Nothing was stored by the refused requests.
        assert!(
            !store
                .revoke_bootstrap_token("bt_0000000000000000")
                .await
                .expect("store works")
        );
        mint(
            &store,
            &clock,
            roles(),
            Duration::from_secs(1),
            Some(IMAGE.to_owned()),
        )
        .await
        .expect("the minimum is fine");
    }

    #[tokio::test]
    async fn tokens_and_ids_are_unique() {
        let store = SqliteStore::open_in_memory().expect("store");
        let clock = ManualClock::at_unix(1_000);
        let mut tokens = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..50 {
            let m = mint(&store, &clock, roles(), Duration::from_secs(60), None)
                .await
                .expect("mint");
            assert!(well_formed(m.token.expose()));
            tokens.insert(m.token.expose().to_owned());
            ids.insert(m.token_id);
        }
        assert_eq!((tokens.len(), ids.len()), (50, 50));
    }

    #[test]
    fn hash_is_hex_sha256_of_the_whole_token() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(hash_token("lbt_a"), hash_token("a"));
    }

    #[tokio::test]
    async fn database_file_holds_the_hash_never_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let store = Arc::new(SqliteStore::open(&path).expect("store"));
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let m = mint(&*store, &*clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        // Reserved and committed too: no step writes the token.
        redeemer(store.clone(), clock, GRACE)
            .begin(m.token.expose())
            .await
            .expect("begin")
            .commit()
            .await
            .expect("commit");
        let token = m.token.expose().to_owned();
        let body = &token[TOKEN_PREFIX.len()..];
        let hash = hash_token(&token);

        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir.path()).expect("read dir") {
            bytes.extend(std::fs::read(entry.expect("entry").path()).expect("read"));
        }
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(contains(hash.as_bytes()), "the hash should be stored");
        assert!(contains(m.token_id.as_bytes()), "the id should be stored");
        assert!(!contains(token.as_bytes()), "the token must not be stored");
        assert!(
            !contains(body.as_bytes()),
            "the token body must not be stored"
        );
    }
}
