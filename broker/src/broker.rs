//! The request pipeline: authenticate → authorize → issue → audit. HTTP lives in
//! [`crate::server`]; this module is the broker's behaviour, callable in-process.
//!
//! It orchestrates; the work of each step lives with its capability: bearer verification in
//! [`crate::authn`] (session tokens in [`crate::authn::session`]), the decision in
//! [`crate::policy`], the backends and the credential lifetime in [`crate::issue`]
//! ([`crate::issue::lifetime`]), each event's audit record in [`crate::audit::record`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionResponse, AdmissionReview};
use lanyard::clock::{Clock, rfc3339};
use lanyard::wire::{
    Credential, CredentialRequest, CredentialResponse, MintTokenRequest, MintTokenResponse,
    Session, SessionRevocationResponse,
};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::audit::flood::{self, Admit, FailureLimiter};
use crate::audit::{AuditError, AuditLog, AuditOptions, AuditRecord, AuditSink, Fingerprinter};
use crate::authn::bootstrap::{self, CommitError, RedeemError, Redeemer, Redemption};
use crate::authn::jwt::{self, JwtVerifier};
use crate::authn::revocation::{Revocations, Verdict};
use crate::authn::{AuthnError, Identity, IssuerConfigError, session};
use crate::config::BrokerConfig;
use crate::error::ApiError;
use crate::gate::{self, Gate, Outcome};
use crate::issue::jwt::{KeyError, KeyRing};
use crate::issue::renewal::{Held, Renewals, Renewed};
use crate::issue::{
    self, Backend, BackendError, Backends, IssueRequest, Issued, LeaseRef, lifetime,
};
use crate::metrics::Metrics;
use crate::policy::{self, Denial, Explanation, Grant, PolicyErrors, PolicySet};
use crate::server::tls::TlsError;
use crate::store::{LeaseRecord, SessionRevocation, Store, StoreError};

/// Why the broker could not start. Each names the file or field to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The store could not be opened.
    #[error("cannot open store {path}: {source}")]
    Store {
        /// The database's path, or its URL without the password.
        path: String,
        /// Why.
        source: StoreError,
    },
    /// The policies do not load.
    #[error("policies in {dir} are invalid:\n{errors}")]
    Policy {
        /// Directory.
        dir: String,
        /// Every problem, `file:line: message`.
        errors: PolicyErrors,
    },
    /// An issuer's configuration is unusable.
    #[error("issuer configuration: {0}")]
    Issuer(#[from] IssuerConfigError),
    /// The audit log cannot be opened or resumed.
    #[error("audit log {sink}: {source}")]
    Audit {
        /// Sink.
        sink: String,
        /// Why.
        source: AuditError,
    },
    /// Signing keys cannot be loaded or created.
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    /// A configured backend cannot be built (the message names its section).
    #[error(transparent)]
    Backend(#[from] issue::SetupError),
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The image gate cannot start (its allowlist file).
    #[error("gate: {0}")]
    Gate(String),
}

/// Outcome of a policy reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The files did not change.
    Unchanged,
    /// A new set is active.
    Reloaded {
        /// Its digest.
        digest: String,
        /// Number of rules.
        rules: usize,
    },
}

/// The broker: configuration, state and the request pipeline.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
    redeemer: Redeemer,
    revocations: Revocations,
    verifier: JwtVerifier,
    policy: ArcSwap<PolicySet>,
    backends: Backends,
    /// Upstream leases kept alive while their broker lease lasts (`issue::renewal`).
    renewals: Renewals,
    keys: Arc<KeyRing>,
    audit: AuditLog,
    /// Which failed authentications are recorded one by one; locked only on that path.
    auth_failures: std::sync::Mutex<FailureLimiter>,
    fingerprinter: Fingerprinter,
    metrics: Metrics,
    policy_ok: AtomicBool,
    gate: Arc<Gate>,
    /// This process's id among replicas sharing the store (`rp_` + 16 hex, new at each
    /// start; the key ring's, which is built first): who holds a background job's claim.
    replica: String,
    /// REV (issue 16): the broker JWTs' revocation list (`issue::status`).
    revocation_list: crate::issue::status::RevocationList,
}

/// What one [`Broker::renew_leases`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseRenewals {
    /// Leases extended.
    pub renewed: usize,
    /// Leases the upstream would not extend as far as asked (they end early).
    pub capped: usize,
    /// Renewals that failed: refused ones are dropped (the lease ends with its current
    /// upstream lease), others are retried at the next call.
    pub failed: usize,
}

/// A request id: `req_` + 16 hex characters.
pub fn new_request_id() -> String {
    format!("req_{:016x}", fastrand::u64(..))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // SystemRandom failing means the OS RNG is broken; fall back is not acceptable.
    aws_lc_rs::rand::fill(&mut buf).expect("operating system random number generator");
    hex::encode(buf)
}

/// A lease id: `ls_`, the issue time in milliseconds (12 hex digits, so ids sort by
/// time and the store appends to its index instead of writing all over it), then 64
/// random bits (16 hex digits) so ids issued in the same millisecond never collide.
fn lease_id(now: SystemTime) -> String {
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("ls_{millis:012x}{}", random_hex(8))
}

impl Broker {
    /// Builds a broker from a validated configuration: opens the store, loads policies
    /// (fails on any error), loads or creates signing keys, opens and resumes the audit
    /// chain, and prepares the issuers' JWKS caches.
    pub async fn new(
        config: BrokerConfig,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Result<Arc<Self>, StartError> {
        let store: Arc<dyn Store> =
            crate::store::open(&config.store)
                .await
                .map_err(|source| StartError::Store {
                    path: config.store.describe(),
                    source,
                })?;
        Self::with_store(config, clock, metrics, store).await
    }

    /// Like [`Broker::new`] with a given store.
    pub async fn with_store(
        config: BrokerConfig,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Self>, StartError> {
        let keys = Arc::new(
            KeyRing::load_or_create(store.clone(), clock.clone(), config.signing.clone()).await?,
        );
        let backends = Backends::from_config(&config, keys.clone(), &clock, &metrics).await?;
        let set = policy::load_dir(&config.policies_dir, &|r| backends.validate_role(r)).map_err(
            |errors| StartError::Policy {
                dir: config.policies_dir.display().to_string(),
                errors,
            },
        )?;
        metrics.policy_rules.set(set.rules.len() as i64);
        for w in policy::claim_warnings(&set, &config.issuers) {
            warn!("{w}");
        }
        let verifier = JwtVerifier::new(
            &config.issuers,
            &config.limits,
            clock.clone(),
            metrics.clone(),
        )?;
        let sink = AuditSink::from_config(&config.audit.sink);
        let options = AuditOptions {
            segment_max_bytes: config.audit.segment_max_bytes,
            retry_interval: Duration::from_secs(1),
            clock: clock.clone(),
            metrics: Some(metrics.audit_sink()),
            replica: keys.replica_id().to_owned(),
        };
        let audit = AuditLog::open_with(sink, store.clone(), options)
            .await
            .map_err(|source| StartError::Audit {
                sink: config.audit.sink.clone(),
                source,
            })?;
        let fingerprinter = Fingerprinter::load(store.as_ref())
            .await
            .map_err(|source| StartError::Store {
                path: config.store.describe(),
                source,
            })?;
        info!(
            rules = set.rules.len(),
            roles = set.roles.len(),
            digest = %set.digest,
            "policies loaded"
        );
        let redeemer = Redeemer::new(
            store.clone(),
            clock.clone(),
            Duration::from_secs(config.bootstrap.redeem_grace_seconds),
        );
        let revocations = Revocations::load(
            store.as_ref(),
            clock.now(),
            Duration::from_secs(config.bootstrap.session_revocation_max_stale_seconds),
        )
        .await
        .map_err(|source| StartError::Store {
            path: config.store.describe(),
            source,
        })?;
        metrics.revoked_sessions.set(revocations.len() as i64);
        let gate = Gate::new(
            store.clone(),
            config.gate.clone(),
            metrics.clone(),
            clock.clone(),
        )
        .map_err(StartError::Gate)?;
        metrics
            .session_revocation_refreshed
            .set(lanyard::clock::unix_seconds(clock.now()) as f64);
        let replica = keys.replica_id().to_owned();
        let revocation_config = config.revocation.clone();
        let broker = Arc::new(Self {
            auth_failures: std::sync::Mutex::new(FailureLimiter::new(flood::Limits {
                records_per_window: config.audit.auth_failures.records_per_window,
                window: Duration::from_secs(config.audit.auth_failures.window_seconds),
                max_sources: config.audit.auth_failures.max_sources,
            })),
            config,
            clock,
            store,
            redeemer,
            revocations,
            verifier,
            policy: ArcSwap::from_pointee(set),
            backends,
            renewals: Renewals::default(),
            keys,
            audit,
            fingerprinter,
            metrics,
            policy_ok: AtomicBool::new(true),
            gate,
            replica,
            revocation_list: crate::issue::status::RevocationList::new(
                Duration::from_secs(revocation_config.list_max_age_seconds),
                revocation_config.list_max_entries,
            ),
        });
        broker.spawn_revocation_reload();
        // Verdicts of an older ruleset serve until their re-scan has stored a new one.
        broker.gate.spawn_rescan();
        Ok(broker)
    }

    /// Reloads the revoked-session set every `bootstrap.session_revocation_refresh_seconds`
    /// for as long as the broker lives, served over HTTP or not: a broker whose set is not
    /// reloaded refuses sessions once it is older than its bound.
    fn spawn_revocation_reload(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = Duration::from_secs(
            self.config
                .bootstrap
                .session_revocation_refresh_seconds
                .max(1),
        );
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is now: the set was just loaded.
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(broker) = weak.upgrade() else {
                    break;
                };
                broker.refresh_session_revocations().await;
            }
        });
    }

    /// The configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The JWT verifier (for background refresh).
    pub fn verifier(&self) -> &JwtVerifier {
        &self.verifier
    }

    /// The signing keys.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The image gate.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The active policy set.
    pub fn policy(&self) -> Arc<PolicySet> {
        self.policy.load_full()
    }

    /// The OIDC discovery document for broker-signed tokens.
    pub fn discovery_document(&self) -> serde_json::Value {
        let base = self.config.public_url.trim_end_matches('/');
        serde_json::json!({
            "issuer": self.config.public_url,
            "jwks_uri": format!("{base}/v1/jwks"),
            "id_token_signing_alg_values_supported": [format!("{:?}", self.config.signing.algorithm)],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            // REV (issue 16): the revocation list (`issue::status`) and RFC 7662.
            "revocation_list_uri": format!("{base}/v1/jwks/revoked"),
            "introspection_endpoint": format!("{base}/v1/introspect"),
        })
    }

    /// REV (issue 16): the broker JWTs' revocation list as served (`issue::status`): this
    /// broker's copy while it is younger than `revocation.list_max_age_seconds` and no JWT was
    /// revoked through it since, else read again from the store. Past
    /// `revocation.list_max_entries` it is not served (a retryable 503).
    pub async fn revocation_list(&self) -> Result<Arc<Vec<u8>>, ApiError> {
        let list = &self.revocation_list;
        if let Some(body) = list.current() {
            return Ok(body);
        }
        let (generation, taken) = list.begin();
        let now = self.now();
        let entries = self
            .store
            .revoked_running_leases(
                crate::issue::jwt::KIND,
                now,
                list.max_entries().saturating_add(1),
            )
            .await?;
        if let Err(e) = list.check_bound(entries.len()) {
            warn!(error = %e, "the JWT revocation list is over its bound; answering 503");
            return Err(ApiError::NotReady(e.to_string()));
        }
        let doc = crate::issue::status::list_document(
            &self.config.public_url,
            &entries,
            now,
            list.max_age(),
        );
        let body = serde_json::to_vec(&doc).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(list.store(body, generation, taken))
    }

    /// How long relying parties may cache the revocation list.
    pub fn revocation_list_max_age(&self) -> Duration {
        self.revocation_list.max_age()
    }

    /// REV (issue 16): RFC 7662 introspection of `token` (`issue::status::introspection`): the
    /// caller has been authenticated already. Anything but a running, unrevoked JWT this
    /// broker signed is `{"active": false}`.
    pub async fn introspect(&self, token: &str) -> Result<serde_json::Value, ApiError> {
        let now = self.now();
        let Ok(claims) = self
            .keys
            .verify_any_audience(token, &self.config.public_url, now)
        else {
            return Ok(serde_json::json!({"active": false}));
        };
        let lease = match claims.get("jti").and_then(serde_json::Value::as_str) {
            Some(jti) if jti.starts_with("ls_") => self.store.get_lease(jti).await?,
            _ => None,
        };
        Ok(crate::issue::status::introspection(
            &claims,
            lease.as_ref(),
            now,
        ))
    }

    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    async fn audit(&self, rec: AuditRecord) -> Result<(), ApiError> {
        self.audit_inner(rec, None).await
    }

    /// [`Self::audit`] for an issuance: the lease row is saved with the record's audit group.
    async fn audit_with_lease(&self, rec: AuditRecord, lease: LeaseRecord) -> Result<(), ApiError> {
        self.audit_inner(rec, Some(lease)).await
    }

    async fn audit_inner(
        &self,
        rec: AuditRecord,
        lease: Option<LeaseRecord>,
    ) -> Result<(), ApiError> {
        let event = rec.event.name();
        match lease {
            Some(l) => self.audit.append_with_lease(rec, l).await?,
            None => self.audit.append(rec).await?,
        };
        self.metrics.audit_records.with_label_values(&[event]).inc();
        Ok(())
    }

    /// Authenticates a bearer credential: a JWT from a trusted issuer, a broker session
    /// token, or a bootstrap token. A bootstrap token is only reserved here: [`Self::issue`]
    /// commits its redemption once everything was issued, or releases it (see
    /// [`crate::authn::bootstrap`]). Every failure is audited and answered with the same
    /// opaque 401; a token another request is redeeming gets a retryable 503.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        request_id: &str,
    ) -> Result<Authenticated, ApiError> {
        self.authenticate_as(bearer, request_id, true, None).await
    }

    /// [`Self::authenticate`] for a request from the client address `source`: its failures
    /// are recorded one by one only up to `audit.auth_failures.records_per_window` per
    /// window, the rest summed in one record ([`crate::audit::flood`]).
    pub async fn authenticate_from(
        &self,
        bearer: Option<&str>,
        request_id: &str,
        source: IpAddr,
    ) -> Result<Authenticated, ApiError> {
        self.authenticate_as(bearer, request_id, true, Some(source))
            .await
    }

    /// Authenticates like [`Self::authenticate_from`] where a bootstrap token is not accepted
    /// (revoking a lease): a bootstrap token is refused (audited, 401) without a store
    /// lookup, so it is neither reserved nor spent.
    pub async fn authenticate_without_redeeming(
        &self,
        bearer: Option<&str>,
        request_id: &str,
        source: IpAddr,
    ) -> Result<Authenticated, ApiError> {
        self.authenticate_as(bearer, request_id, false, Some(source))
            .await
    }

    async fn authenticate_as(
        &self,
        bearer: Option<&str>,
        request_id: &str,
        redeem: bool,
        source: Option<IpAddr>,
    ) -> Result<Authenticated, ApiError> {
        let (error, token_id) = match bearer {
            None => (AuthnError::Missing, None),
            Some(token) if token.len() > self.config.limits.max_token_bytes => {
                (AuthnError::TooLarge, None)
            }
            Some(token) if bootstrap::looks_like_bootstrap_token(token) && !redeem => {
                (AuthnError::BootstrapNotAccepted, None)
            }
            Some(token) if bootstrap::looks_like_bootstrap_token(token) => {
                match self.redeem(token).await? {
                    Ok(auth) => return Ok(auth),
                    Err(refused) => refused,
                }
            }
            Some(token) => match self.verify_jwt(token).await {
                Ok(auth) => match self.check_session(&auth)? {
                    None => return Ok(auth),
                    Some(refused) => refused,
                },
                Err(e) => (e, None),
            },
        };
        self.metrics
            .denials
            .with_label_values(&["-", error.reason()])
            .inc();
        let rec = AuditRecord::auth_failure(self.now(), request_id, &error, token_id);
        self.audit_auth_failure(rec, source).await?;
        Err(ApiError::Unauthenticated(error))
    }

    /// Records a failed authentication from `source` — in full, or only counted when its
    /// source is over the limit (after writing the summary of its previous window, if due).
    async fn audit_auth_failure(
        &self,
        rec: AuditRecord,
        source: Option<IpAddr>,
    ) -> Result<(), ApiError> {
        let Some(ip) = source else {
            return self.audit(rec).await;
        };
        let (admit, summary) = self
            .auth_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .admit(ip, self.now());
        if let Some(summary) = summary {
            self.audit(AuditRecord::auth_failures_suppressed(self.now(), &summary))
                .await?;
        }
        match admit {
            Admit::Record => self.audit(rec.from_source(Some(ip))).await,
            Admit::Suppress => {
                self.metrics.audit_records_suppressed.inc();
                Ok(())
            }
        }
    }

    /// Writes the summary records of failed authentications left out in windows that ended
    /// (all pending ones when `all`, at shutdown), and forgets those sources. Returns how
    /// many summaries were written.
    pub async fn flush_auth_failure_summaries(&self, all: bool) -> usize {
        let summaries = {
            let mut limiter = self
                .auth_failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if all {
                limiter.drain()
            } else {
                limiter.sweep(self.now())
            }
        };
        let mut written = 0;
        for summary in &summaries {
            match self
                .audit(AuditRecord::auth_failures_suppressed(self.now(), summary))
                .await
            {
                Ok(()) => written += 1,
                Err(e) => warn!(
                    error = %e,
                    source = %summary.source,
                    suppressed = summary.suppressed,
                    "could not write the summary of unrecorded authentication failures"
                ),
            }
        }
        written
    }

    /// Audits and counts a request to an admin `route` that did not carry the admin
    /// credential (`reason`, a stable label: `admin_wrong_token`, ...) and returns the same
    /// opaque 401 as any failed authentication (or the audit failure).
    pub async fn refuse_admin(
        &self,
        request_id: &str,
        route: &str,
        reason: &'static str,
        source: IpAddr,
    ) -> ApiError {
        self.metrics.denials.with_label_values(&["-", reason]).inc();
        let rec = AuditRecord::admin_auth_failure(self.now(), request_id, route, reason);
        match self.audit_auth_failure(rec, Some(source)).await {
            Ok(()) => ApiError::Unauthenticated(AuthnError::Missing),
            Err(e) => e,
        }
    }

    /// Checks the session an authenticated request belongs to (if any) against the revoked
    /// set ([`crate::authn::revocation`]): `None` to go on, the refusal to audit when it was
    /// revoked, a retryable 503 when the set is too old to tell.
    fn check_session(
        &self,
        auth: &Authenticated,
    ) -> Result<Option<(AuthnError, Option<String>)>, ApiError> {
        let Some(session_id) = &auth.session_id else {
            return Ok(None);
        };
        match self.revocations.check(session_id) {
            Verdict::Valid => Ok(None),
            Verdict::Revoked => Ok(Some((
                AuthnError::SessionRevoked,
                auth.identity.bootstrap.as_ref().map(|b| b.token_id.clone()),
            ))),
            Verdict::Stale { age } => {
                self.metrics
                    .denials
                    .with_label_values(&["-", "session_revocations_stale"])
                    .inc();
                Err(ApiError::StoreUnavailable(format!(
                    "the revoked-session set was last reloaded {} s ago, longer than \
                     bootstrap.session_revocation_max_stale_seconds ({} s): session {session_id} \
                     refused until the store can be read",
                    age.as_secs(),
                    self.revocations.max_stale().as_secs()
                )))
            }
        }
    }

    /// Begins redeeming a bootstrap token: reserved for this request, or a re-redemption
    /// within the grace window. A refused token comes back as `Ok(Err(..))`, with its id when
    /// it was found, for [`Self::authenticate_as`] to audit like any failure.
    async fn redeem(
        &self,
        token: &str,
    ) -> Result<Result<Authenticated, (AuthnError, Option<String>)>, ApiError> {
        let count = |event: &str| {
            self.metrics
                .bootstrap_tokens
                .with_label_values(&[event])
                .inc();
        };
        match self.redeemer.begin(token).await {
            Ok(redemption) => {
                let auth = Authenticated {
                    identity: redemption.identity().clone(),
                    new_session: true,
                    session_started: Some(redemption.session_started()),
                    session_id: redemption
                        .identity()
                        .bootstrap
                        .as_ref()
                        .map(|b| session::session_id_for(&b.token_id)),
                    redemption: None,
                };
                // The session it would start (or repeat) may have been revoked: the token
                // stays unspent, and refused.
                let refused = match self.check_session(&auth) {
                    Ok(None) => {
                        return Ok(Ok(Authenticated {
                            redemption: Some(Arc::new(redemption)),
                            ..auth
                        }));
                    }
                    Ok(Some(refused)) => {
                        count("rejected");
                        Ok(Err(refused))
                    }
                    Err(e) => Err(e),
                };
                let _ = redemption.release().await;
                refused
            }
            Err(RedeemError::Store(e)) => Err(ApiError::from(e)),
            Err(e @ RedeemError::Busy) => {
                count("busy");
                Err(ApiError::NotReady(e.to_string()))
            }
            Err(RedeemError::Rejected { error, token_id }) => {
                count("rejected");
                Ok(Err((error, token_id)))
            }
        }
    }

    /// Ends a bootstrap token's redemption with the outcome of the issuance it was presented
    /// for: commits it (audited `token_redeem`) when everything was issued, else releases it
    /// (audited as released) so the token stays unused, and answers with the failure.
    async fn settle_redemption(
        &self,
        redemption: &Redemption,
        issued: Result<CredentialResponse, ApiError>,
        request_id: &str,
    ) -> Result<CredentialResponse, ApiError> {
        let identity = redemption.identity();
        let error = match issued {
            Ok(resp) => match redemption.commit().await {
                Ok(()) => {
                    let (event, rec) = if redemption.is_repeat() {
                        let rec = AuditRecord::token_redeem_repeat(
                            self.now(),
                            request_id,
                            identity,
                            redemption.session_started(),
                        );
                        ("re_redeemed", rec)
                    } else {
                        (
                            "redeemed",
                            AuditRecord::token_redeem(self.now(), request_id, identity),
                        )
                    };
                    self.metrics
                        .bootstrap_tokens
                        .with_label_values(&[event])
                        .inc();
                    self.audit(rec).await?;
                    return Ok(resp);
                }
                Err(e @ CommitError::Lost) => ApiError::NotReady(e.to_string()),
                Err(CommitError::Store(e)) => ApiError::from(e),
            },
            Err(e) => e,
        };
        if let Ok(true) = redemption.release().await {
            self.metrics
                .bootstrap_tokens
                .with_label_values(&["released"])
                .inc();
            let rec = AuditRecord::token_release(self.now(), request_id, identity, error.reason());
            self.audit(rec).await?;
        }
        Err(error)
    }

    /// Verifies a JWT: a broker session token or an issuer's token.
    async fn verify_jwt(&self, token: &str) -> Result<Authenticated, AuthnError> {
        // The unverified `iss` tells a broker session token (checked by the key ring, which
        // decodes it itself) from an issuer's JWT, whose decoded claims go straight to the
        // verifier: the hot path decodes the token once.
        let parsed = jwt::parse_jwt(token, self.config.limits.max_token_bytes)?;
        let issuer = parsed.claims.get("iss").and_then(serde_json::Value::as_str);
        if issuer == Some(self.config.public_url.as_str()) {
            let session = session::verify(&self.keys, &self.config.public_url, token, self.now())?;
            return Ok(Authenticated {
                identity: session.identity,
                new_session: true,
                session_started: Some(session.started),
                session_id: Some(session.session_id),
                redemption: None,
            });
        }
        let identity = self.verifier.verify_parsed(parsed).await?;
        Ok(Authenticated::new(identity))
    }

    /// Issues credentials to an authenticated identity: policy decides the roles, each
    /// role's backend issues, each issuance is stored as a lease and audited. For a bootstrap
    /// token, the redemption commits only if all of it succeeded, and is released otherwise.
    pub async fn issue(
        &self,
        auth: &Authenticated,
        req: &CredentialRequest,
        request_id: &str,
    ) -> Result<CredentialResponse, ApiError> {
        let issued = self.issue_all(auth, req, request_id).await;
        match &auth.redemption {
            Some(redemption) => self.settle_redemption(redemption, issued, request_id).await,
            None => issued,
        }
    }

    async fn issue_all(
        &self,
        auth: &Authenticated,
        req: &CredentialRequest,
        request_id: &str,
    ) -> Result<CredentialResponse, ApiError> {
        policy::check_request(req).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        // A pod token's admission record (trust source 1) is read before the policy, so
        // `image_repository` selectors see its images.
        let identity = &*self.gate.with_admission(&auth.identity).await?;
        let set = self.policy.load_full();
        let decision = policy::evaluate(&set, identity, req.roles.as_deref());
        if !decision.denied.is_empty() || decision.granted.is_empty() {
            return Err(self
                .refuse(&set, identity, &decision.denied, request_id)
                .await);
        }
        let gated = self
            .gate_grants(&set, identity, &decision.granted, request_id)
            .await?;
        let mut credentials = Vec::with_capacity(decision.granted.len());
        for (grant, gate_decision) in decision.granted.iter().zip(&gated) {
            let credential = self
                .issue_one(
                    &set,
                    identity,
                    grant,
                    gate_decision,
                    req.ttl_seconds,
                    request_id,
                )
                .await?;
            credentials.push(credential);
        }
        let session = match (auth.new_session, auth.session_started) {
            (true, Some(started)) => self.mint_session(identity, started)?,
            _ => None,
        };
        Ok(CredentialResponse {
            request_id: request_id.to_owned(),
            identity: identity.subject.clone(),
            credentials,
            session,
            admitted_at: match identity.kubernetes.as_ref().map(|k| &k.admission) {
                Some(crate::authn::PodAdmission::Record {
                    admitted_at: Some(t),
                    ..
                }) => Some(lanyard::clock::rfc3339_millis(*t)),
                _ => None,
            },
        })
    }

    /// The image gate, for every granted role under its rule's settings: the workload's
    /// images are looked up (or scanned) once, then [`gate::decide`] decides per rule. A
    /// refusal is audited and answered (403 `image_refused`, or 503 `scan_pending` when a
    /// retry may succeed); audit mode's "would deny", exemptions used and unknown workloads
    /// allowed are audited and let through. Returns each grant's decision, for its `issue`
    /// record.
    async fn gate_grants(
        &self,
        set: &PolicySet,
        identity: &Identity,
        granted: &[Grant],
        request_id: &str,
    ) -> Result<Vec<gate::Decision>, ApiError> {
        let workload = self.gate.workload(identity).await?;
        let mut out = Vec::with_capacity(granted.len());
        for grant in granted {
            let Some(rule) = set.rules.iter().find(|r| r.name == grant.rule) else {
                return Err(ApiError::Internal(format!(
                    "policy granted role {} by unknown rule {}",
                    grant.role, grant.rule
                )));
            };
            let mut d = gate::decide::decide(&workload, &self.gate.settings_for(rule));
            let weak = gate::tag_based_record(identity);
            if weak {
                d.detail = format!("{}; {}", d.detail, gate::TAG_BASED_RECORD);
            }
            self.metrics
                .gate_decisions
                .with_label_values(&[d.outcome.as_str(), d.reason.as_str()])
                .inc();
            match d.outcome {
                Outcome::Deny => {
                    self.metrics
                        .denials
                        .with_label_values(&[&grant.role, "image_gate"])
                        .inc();
                    let rec =
                        AuditRecord::gate_denial(self.now(), request_id, identity, &grant.role, &d);
                    self.audit(rec).await?;
                    let message = format!("role `{}`: {}", grant.role, d.detail);
                    return Err(if d.retryable {
                        ApiError::ScanPending(message)
                    } else {
                        ApiError::ImageRefused(message)
                    });
                }
                Outcome::WouldDeny => {
                    let rec =
                        AuditRecord::gate_note(self.now(), request_id, identity, &grant.role, &d);
                    self.audit(rec).await?;
                }
                Outcome::Allow
                    if weak
                        || matches!(
                            d.reason,
                            gate::Reason::Exempted | gate::Reason::UnknownWorkload
                        ) =>
                {
                    let rec =
                        AuditRecord::gate_note(self.now(), request_id, identity, &grant.role, &d);
                    self.audit(rec).await?;
                }
                Outcome::Allow => {}
            }
            out.push(d);
        }
        Ok(out)
    }

    /// Audits a refusal — each denied role, or that no role was granted — and returns the
    /// 403 that names them (or the audit failure).
    async fn refuse(
        &self,
        set: &PolicySet,
        identity: &Identity,
        denied: &[Denial],
        request_id: &str,
    ) -> ApiError {
        let mut reasons = Vec::new();
        for d in denied {
            let role_label = if set.roles.contains_key(&d.role) {
                d.role.as_str()
            } else {
                "-"
            };
            self.metrics
                .denials
                .with_label_values(&[role_label, d.reason])
                .inc();
            let rec = AuditRecord::policy_denial(self.now(), request_id, identity, d);
            if let Err(e) = self.audit(rec).await {
                return e;
            }
            reasons.push(format!("role `{}`: {}", d.role, d.reason));
        }
        if denied.is_empty() {
            self.metrics
                .denials
                .with_label_values(&["-", "no_roles_granted"])
                .inc();
            let rec = AuditRecord::no_roles_granted(self.now(), request_id, identity);
            if let Err(e) = self.audit(rec).await {
                return e;
            }
            reasons.push("no policy grants any role to this identity".into());
        }
        ApiError::Forbidden(format!(
            "denied: {} (ask an operator to run `lanyard-broker policy explain`)",
            reasons.join("; ")
        ))
    }

    /// Issues one granted role: its backend issues for the planned lifetime, the lease is
    /// stored with its audit record.
    async fn issue_one(
        &self,
        set: &PolicySet,
        identity: &Identity,
        grant: &Grant,
        gate_decision: &gate::Decision,
        requested_ttl_seconds: Option<u64>,
        request_id: &str,
    ) -> Result<Credential, ApiError> {
        let Some(role) = set.roles.get(&grant.role) else {
            return Err(ApiError::Internal(format!(
                "policy granted undefined role {}",
                grant.role
            )));
        };
        let plan = lifetime::plan(
            requested_ttl_seconds,
            role.default_ttl_seconds,
            role.max_ttl_seconds,
        );
        let Some(backend) = self.backends.get(&role.backend) else {
            return Err(ApiError::Internal(format!(
                "role {} names backend {} which is not configured",
                role.name, role.backend
            )));
        };
        let lease_id = lease_id(self.now());
        let now = lifetime::whole_seconds(self.now());
        let issued = self
            .call_backend(
                backend.as_ref(),
                &IssueRequest {
                    identity,
                    role,
                    ttl: plan.ttl,
                    now,
                    request_id,
                    lease_id: &lease_id,
                },
            )
            .await;
        let issued = match issued {
            Ok(i) => i,
            Err(e) => {
                let err = ApiError::from(e);
                self.metrics
                    .denials
                    .with_label_values(&[&role.name, "backend_error"])
                    .inc();
                let rec = AuditRecord::backend_error(
                    self.now(),
                    request_id,
                    identity,
                    &role.name,
                    &role.backend,
                    &err,
                );
                self.audit(rec).await?;
                return Err(err);
            }
        };
        // A renewable upstream lease shorter than the TTL granted is renewed up to it, so the
        // credential lives the TTL granted (`issue::renewal`).
        let upstream_expires_at = issued.expires_at;
        let renew = match &issued.upstream_lease {
            Some(upstream)
                if issued.renewable
                    && backend.renews_leases()
                    && upstream_expires_at > now
                    && upstream_expires_at < now + plan.ttl =>
            {
                Some(upstream.clone())
            }
            _ => None,
        };
        let renew_step = upstream_expires_at
            .duration_since(now)
            .unwrap_or(Duration::ZERO);
        let granted = plan.grant(
            now,
            if renew.is_some() {
                now + plan.ttl
            } else {
                issued.expires_at
            },
        );
        let lease = LeaseRecord {
            lease_id,
            role: role.name.clone(),
            backend: role.backend.clone(),
            subject: identity.subject.clone(),
            issuer: identity.issuer.clone(),
            issued_at: now,
            expires_at: granted.expires_at,
            upstream_lease: issued.upstream_lease,
            fingerprint: self.fingerprinter.fingerprint(&issued.data),
            revoked_at: None,
            renew_step_secs: renew.as_ref().map(|_| renew_step.as_secs().max(1)),
            pod_uid: identity.kubernetes.as_ref().and_then(|k| k.pod_uid.clone()),
        };
        let rec = AuditRecord::issue(self.now(), request_id, identity, grant, &lease, &granted)
            .with_gate(gate_decision);
        let lease_id = lease.lease_id.clone();
        // The lease row is saved with the audit group that holds this record.
        self.audit_with_lease(rec, lease).await?;
        if let Some(upstream_lease) = renew {
            self.renewals.hold(Held {
                lease_id: lease_id.clone(),
                backend: role.backend.clone(),
                role: role.name.clone(),
                upstream_lease,
                until: granted.expires_at,
                upstream_expires_at,
                step: renew_step,
            });
        }
        self.metrics
            .issuances
            .with_label_values(&[&role.name, &role.backend])
            .inc();
        // Debug, not info: the audit log already holds every issuance, and a log line
        // per issuance cost about 13% of the broker's throughput (docs/benchmarks.md).
        debug!(role = %role.name, backend = %role.backend, lease_id = %lease_id, ttl_seconds = granted.ttl_seconds(), ttl_clamped = granted.clamped, "credential issued");
        Ok(Credential {
            role: role.name.clone(),
            kind: role.backend.clone(),
            data: issued.data,
            expires_at: rfc3339(granted.expires_at),
            refresh_after: rfc3339(granted.refresh_after),
            ttl_seconds: granted.ttl_seconds(),
            lease_id,
            ttl_clamped: granted.clamped,
        })
    }

    /// One backend call, timed into the backend-duration metric.
    async fn call_backend(
        &self,
        backend: &dyn Backend,
        req: &IssueRequest<'_>,
    ) -> Result<Issued, BackendError> {
        let started = Instant::now();
        let issued = backend.issue(req).await;
        let outcome = if issued.is_ok() { "ok" } else { "error" };
        self.metrics
            .backend_duration
            .with_label_values(&[backend.kind(), outcome])
            .observe(started.elapsed().as_secs_f64());
        issued
    }

    /// A new session token for a bootstrap identity, if its session has not ended.
    fn mint_session(
        &self,
        identity: &Identity,
        started: SystemTime,
    ) -> Result<Option<Session>, ApiError> {
        Ok(session::mint(
            &self.keys,
            &self.config.public_url,
            &self.config.bootstrap,
            identity,
            started,
            self.now(),
        )?)
    }

    /// Mints a bootstrap token (admin).
    pub async fn mint_token(
        &self,
        req: &MintTokenRequest,
        request_id: &str,
    ) -> Result<MintTokenResponse, ApiError> {
        let set = self.policy.load_full();
        policy::check_token_roles(&set, &req.roles)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let ttl_seconds = req
            .ttl_seconds
            .unwrap_or(self.config.bootstrap.default_ttl_seconds);
        if ttl_seconds == 0 || ttl_seconds > self.config.bootstrap.max_ttl_seconds {
            return Err(ApiError::BadRequest(format!(
                "ttl_seconds must be between 1 and {} (bootstrap.max_ttl_seconds)",
                self.config.bootstrap.max_ttl_seconds
            )));
        }
        let image = match &req.image {
            Some(i) => Some(self.bind_image(i).await?),
            None => None,
        };
        let minted = bootstrap::mint(
            self.store.as_ref(),
            self.clock.as_ref(),
            req.roles.clone(),
            Duration::from_secs(ttl_seconds),
            image,
        )
        .await
        .map_err(|e| match e {
            bootstrap::MintError::Invalid(m) => ApiError::BadRequest(m),
            bootstrap::MintError::Store(e) => ApiError::from(e),
            other => ApiError::Internal(other.to_string()),
        })?;
        self.metrics
            .bootstrap_tokens
            .with_label_values(&["minted"])
            .inc();
        let rec = AuditRecord::token_mint(self.now(), request_id, req, ttl_seconds, &minted);
        self.audit(rec).await?;
        Ok(MintTokenResponse {
            token_id: minted.token_id,
            token: minted.token,
            expires_at: rfc3339(minted.expires_at),
        })
    }

    /// The image a bootstrap token is bound to, as the gate will trust it: `repo@sha256:…`
    /// as given; `repo:tag` resolved to its digest through the registry now (tags move; the
    /// token binds what the tag named at mint time); a bare digest only when a verdict for it
    /// exists (there is no repository to scan it from).
    async fn bind_image(&self, given: &str) -> Result<String, ApiError> {
        let r = gate::image::parse(given).map_err(ApiError::BadRequest)?;
        match (&r.repository, &r.digest) {
            (Some(_), Some(_)) => Ok(r.pinned().unwrap_or_default()),
            (None, Some(d)) => {
                if self.gate.has_verdict(d).await? {
                    Ok(d.clone())
                } else {
                    Err(ApiError::BadRequest(format!(
                        "no verdict exists for the bare digest {d}, and it names no repository \
                         to scan it from: bind REPOSITORY@{d} instead (or scan it ahead first)"
                    )))
                }
            }
            (Some(repo), None) => {
                let wait = Duration::from_secs(self.config.gate.scan_deadline_seconds);
                let digest = self.gate.resolve(&r, wait).await.map_err(|e| {
                    ApiError::Upstream(format!("cannot resolve {r} to a digest: {e}"))
                })?;
                Ok(format!("{repo}@{digest}"))
            }
            (None, None) => Err(ApiError::BadRequest("image: no digest".into())),
        }
    }

    /// Scans an image ahead (admin, `POST /v1/admin/scans`): a tag is resolved to its digest
    /// first; waits at most `wait` for the verdict. Audited.
    pub async fn scan_image(
        &self,
        req: &lanyard::wire::ScanRequest,
        request_id: &str,
    ) -> Result<lanyard::wire::VerdictResponse, ApiError> {
        let r = gate::image::parse(&req.image).map_err(ApiError::BadRequest)?;
        // Below the request deadline, so the answer is ours and not the deadline's 503.
        let ceiling = (self.config.server.request_timeout_ms / 1000)
            .saturating_sub(1)
            .max(1);
        let wait = Duration::from_secs(
            req.wait_seconds
                .unwrap_or(self.config.gate.scan_deadline_seconds)
                .clamp(1, ceiling),
        );
        let (digest, result) =
            self.gate
                .scan_ahead(&r, wait, req.force)
                .await
                .map_err(|e| match e {
                    gate::GateError::BadImage(m) => ApiError::BadRequest(m),
                    gate::GateError::Registry(m) => ApiError::Upstream(m),
                    gate::GateError::Store(e) => ApiError::from(e),
                })?;
        let pinned = r.repository.as_ref().map(|repo| format!("{repo}@{digest}"));
        let shown = pinned.clone().unwrap_or_else(|| digest.clone());
        let resp = match result {
            Some(Ok(_)) => self.verdict_response(&digest).await?,
            Some(Err(e)) => {
                let rec = AuditRecord::image_scan(self.now(), request_id, &shown, "error", "");
                self.audit(rec).await?;
                return Err(ApiError::ScanPending(format!("cannot scan {shown}: {e}")));
            }
            None => None,
        };
        let resp = resp.unwrap_or(lanyard::wire::VerdictResponse {
            digest: digest.clone(),
            image: pinned.clone(),
            verdict: "pending".into(),
            ruleset_version: None,
            previous_ruleset: false,
            findings: Vec::new(),
            incomplete: Vec::new(),
            platforms: Vec::new(),
            scanned_at: None,
            exemption: None,
        });
        let detail = if resp.findings.is_empty() {
            String::new()
        } else {
            format!(
                " ({} finding(s): {})",
                resp.findings.len(),
                resp.findings
                    .iter()
                    .take(5)
                    .map(|f| f.rule.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let rec = AuditRecord::image_scan(self.now(), request_id, &shown, &resp.verdict, &detail);
        self.audit(rec).await?;
        Ok(lanyard::wire::VerdictResponse {
            image: pinned.or(resp.image.clone()),
            ..resp
        })
    }

    /// The stored verdict for a digest, with the allowlist applied (admin).
    pub async fn verdict_response(
        &self,
        digest: &str,
    ) -> Result<Option<lanyard::wire::VerdictResponse>, ApiError> {
        if !gate::image::is_digest(digest) {
            return Err(ApiError::BadRequest(
                "a verdict is looked up by digest: sha256: and 64 lowercase hex digits".into(),
            ));
        }
        let exemption = self.store.exemption(digest).await?.map(|e| e.reason);
        let Some((rec, lookup)) = self.gate.stored(digest).await? else {
            return Ok(None);
        };
        let (verdict, findings, previous) = match lookup {
            gate::Lookup::Verdict {
                verdict,
                findings,
                previous_ruleset,
                ..
            } => (verdict, findings, previous_ruleset),
            _ => (rec.verdict, rec.findings.clone(), false),
        };
        Ok(Some(lanyard::wire::VerdictResponse {
            digest: digest.to_owned(),
            image: rec.repository.as_ref().map(|r| format!("{r}@{digest}")),
            verdict: match verdict {
                lanyard_scan::Verdict::Clean => "clean",
                lanyard_scan::Verdict::Dirty => "dirty",
                lanyard_scan::Verdict::Incomplete => "incomplete",
            }
            .into(),
            ruleset_version: Some(rec.ruleset_version.clone()),
            previous_ruleset: previous,
            findings,
            incomplete: rec.incomplete.clone(),
            platforms: rec.platforms.clone(),
            scanned_at: Some(rfc3339(rec.scanned_at)),
            exemption,
        }))
    }

    /// Records an exemption of one digest from the gate (admin). Audited; its every use is
    /// audited too.
    pub async fn exempt_image(
        &self,
        req: &lanyard::wire::ExemptionRequest,
        request_id: &str,
    ) -> Result<(), ApiError> {
        self.gate
            .exempt(&req.digest, &req.reason)
            .await
            .map_err(|e| match e {
                gate::GateError::Store(e) => ApiError::from(e),
                other => ApiError::BadRequest(other.to_string()),
            })?;
        let rec = AuditRecord::image_exempt(self.now(), request_id, &req.digest, req.reason.trim());
        self.audit(rec).await
    }

    /// The mutating admission webhook (`POST /v1/admission/mutate`): reads the review
    /// (bounded, [`gate::admission::parse_review`]); for a pod annotated `lanyard.dev/inject`
    /// plans the sidecar's injection ([`gate::inject::plan`], with the `inject` section and
    /// the CA read now) — refused with a message when the pod cannot be injected as written;
    /// then, on the pod as injected, finds the image tags ([`gate::pin::plan`]), resolves
    /// them through the registry within `gate.admission.deadline_ms` (credentials per host
    /// from config), and answers allowed with one JSONPatch: the injection's operations, then
    /// the pins ([`gate::pin::pin`]). Pinning never denies: a tag not resolved in time is
    /// left with a warning. A workload template is allowed unpatched; with
    /// `gate.admission.pin_digests` off nothing is pinned. Audited (not for a dry run, whose
    /// answer is the same) when a tag was seen and when a sidecar is injected or refused;
    /// counted.
    pub async fn admission_mutate(
        &self,
        body: &[u8],
        request_id: &str,
    ) -> Result<gate::pin::MutateReview, ApiError> {
        use gate::inject::{self, Injection};
        use gate::pin::{self, Pinning, Plan};
        let bad = |e: gate::admission::ReviewError| ApiError::BadRequest(e.to_string());
        let req = gate::admission::parse_review(body).map_err(bad)?;
        let pod = format!(
            "pod {}/{}",
            req.namespace.as_deref().unwrap_or("-"),
            if req.name.is_empty() {
                "(generated name)"
            } else {
                req.name.as_str()
            }
        );

        // Injection first: its operations index the pod as submitted.
        let inject_config = self.config.inject.as_ref();
        let ca_pem = match inject_config.and_then(|c| c.ca_file.as_ref()) {
            Some(path) if inject::requested(&req) => read_ca(path).await,
            _ => None,
        };
        let count_injection = |result: &str| {
            self.metrics
                .admission_injections
                .with_label_values(&[result])
                .inc();
        };
        let (inject_ops, inject_warnings) =
            match inject::plan(&req, inject_config, ca_pem.as_deref()).map_err(bad)? {
                Injection::NotRequested => (Vec::new(), Vec::new()),
                Injection::Disabled => {
                    count_injection("disabled");
                    (
                        Vec::new(),
                        vec![
                            "lanyard: lanyard.dev/inject is set, but this broker has no `inject` \
                             section: the pod runs without the sidecar"
                                .to_owned(),
                        ],
                    )
                }
                Injection::Refused(message) => {
                    count_injection("refused");
                    warn!(%pod, "admission: sidecar injection refused");
                    if !req.dry_run {
                        self.audit(AuditRecord::admission_inject(
                            self.now(),
                            request_id,
                            &pod,
                            Err(&message),
                        ))
                        .await?;
                    }
                    return Ok(pin::refusal(&req.uid, &message));
                }
                Injection::Patch {
                    ops,
                    added_sidecar,
                    warnings,
                    summary,
                } => {
                    count_injection(if added_sidecar {
                        "injected"
                    } else {
                        "reinvoked"
                    });
                    if added_sidecar && !req.dry_run {
                        self.audit(AuditRecord::admission_inject(
                            self.now(),
                            request_id,
                            &pod,
                            Ok(&summary),
                        ))
                        .await?;
                    }
                    (ops, warnings)
                }
            };
        // Pinning reads the pod as injected, so the sidecar's image is pinned too.
        let injected;
        let pin_req = if inject_ops.is_empty() {
            &req
        } else {
            let internal = |e: String| ApiError::Internal(format!("sidecar injection: {e}"));
            let mut doc =
                serde_json::to_value(req.object.as_ref()).map_err(|e| internal(e.to_string()))?;
            json_patch::patch(&mut doc, &inject_ops).map_err(|e| internal(e.to_string()))?;
            let mut r = req.clone();
            r.object = Some(serde_json::from_value(doc).map_err(|e| internal(e.to_string()))?);
            injected = r;
            &injected
        };
        let with_injection = |mut pinning: Pinning| {
            let mut ops = inject_ops.clone();
            ops.append(&mut pinning.patch.0);
            pinning.patch.0 = ops;
            let mut warnings = inject_warnings.clone();
            warnings.append(&mut pinning.warnings);
            pinning.warnings = warnings;
            pinning
        };

        let plan = pin::plan(pin_req).map_err(bad)?;
        let Plan::Pod {
            targets,
            already_pinned,
            unchanged,
        } = plan
        else {
            return Ok(pin::response(&req.uid, &with_injection(Pinning::default())));
        };
        let count = |result: &str, n: usize| {
            self.metrics
                .admission_pinned_images
                .with_label_values(&[result])
                .inc_by(n as u64);
        };
        count("already_pinned", already_pinned);
        count("unchanged", unchanged);
        let config = &self.config.gate.admission;
        if targets.is_empty() || !config.pin_digests {
            count("unpinned", targets.len());
            return Ok(pin::response(&req.uid, &with_injection(Pinning::default())));
        }
        // Most of the deadline for the registry; the rest answers and audits.
        let deadline = Duration::from_millis(config.deadline_ms * 9 / 10);
        let refs: Vec<&gate::ImageRef> = targets
            .iter()
            .filter_map(|t| t.reference.as_ref().ok())
            .collect();
        let resolved = self.gate.resolve_tags(&refs, deadline).await;
        let pinning = pin::pin(&targets, &|r| resolved.get(r).cloned());
        count("pinned", pinning.pinned.len());
        count("unpinned", pinning.warnings.len());
        if !req.dry_run {
            if !pinning.warnings.is_empty() {
                warn!(%pod, unpinned = pinning.warnings.len(), "admission: image tags left unpinned");
            }
            self.audit(AuditRecord::admission_pin(
                self.now(),
                request_id,
                &pod,
                &pinning.pinned,
                &pinning.warnings,
            ))
            .await?;
        }
        Ok(pin::response(&req.uid, &with_injection(pinning)))
    }

    /// Revokes an unredeemed bootstrap token (admin), even one a request is redeeming: that
    /// redemption then fails to commit.
    pub async fn revoke_token(&self, token_id: &str, request_id: &str) -> Result<(), ApiError> {
        if !self.store.revoke_bootstrap_token(token_id).await? {
            return Err(ApiError::NotFound(format!(
                "no unredeemed bootstrap token `{token_id}`"
            )));
        }
        self.metrics
            .bootstrap_tokens
            .with_label_values(&["revoked"])
            .inc();
        self.audit(AuditRecord::token_revoke(self.now(), request_id, token_id))
            .await
    }

    /// Revokes a session (admin): every token of it is refused from now on by this broker,
    /// and by every replica sharing the store within
    /// `bootstrap.session_revocation_max_stale_seconds`. The revocation is kept until the
    /// session would have ended anyway. Revoking a revoked session changes nothing
    /// (`already_revoked`); both are audited.
    pub async fn revoke_session(
        &self,
        target: SessionRef<'_>,
        request_id: &str,
    ) -> Result<SessionRevocationResponse, ApiError> {
        let now = lifetime::whole_seconds(self.now());
        let (session_id, started, how) = match target {
            SessionRef::Id(id) => {
                let token_id = session::token_id_of(id).ok_or_else(|| {
                    ApiError::BadRequest(
                        "not a session id: expected `ss_` and 16 lowercase hex digits".into(),
                    )
                })?;
                let Some(redeemed) = self.store.redeemed_bootstrap_token(&token_id).await? else {
                    return Err(ApiError::NotFound(format!(
                        "no session `{id}` (its bootstrap token {token_id} was never redeemed; \
                         revoke the token instead)"
                    )));
                };
                (id.to_owned(), redeemed.session_started, "by its id")
            }
            SessionRef::Token(token) => {
                let verified =
                    session::verify(&self.keys, &self.config.public_url, token, self.now())
                        .map_err(|e| {
                            ApiError::BadRequest(format!(
                                "not a current session token of this broker ({e}); revoke an \
                                 expired one by its session id (`lanyard_session.session_id`)"
                            ))
                        })?;
                (verified.session_id, verified.started, "by a token of it")
            }
        };
        let expires_at =
            started + Duration::from_secs(self.config.bootstrap.session_max_lifetime_seconds);
        if expires_at <= now {
            return Err(ApiError::NotFound(format!(
                "session `{session_id}` ended at {}; nothing to revoke",
                rfc3339(expires_at)
            )));
        }
        let rec = SessionRevocation {
            session_id,
            revoked_at: now,
            expires_at,
        };
        let newly = self.store.revoke_session(&rec).await?;
        self.revocations.apply_local(&rec);
        self.metrics
            .revoked_sessions
            .set(self.revocations.len() as i64);
        let result = if newly { "revoked" } else { "already_revoked" };
        self.metrics
            .session_revocations
            .with_label_values(&[result])
            .inc();
        info!(session_id = %rec.session_id, result, "session revoked");
        self.audit(AuditRecord::session_revoke(
            self.now(),
            request_id,
            &rec,
            how,
            !newly,
        ))
        .await?;
        Ok(SessionRevocationResponse {
            session_id: rec.session_id,
            already_revoked: !newly,
            expires_at: rfc3339(rec.expires_at),
        })
    }

    /// Reloads the revoked-session set from the store (a task started with the broker does
    /// it every `bootstrap.session_revocation_refresh_seconds`). A failure is logged and
    /// counted; the old set stays until it is too old ([`crate::authn::revocation`]).
    pub async fn refresh_session_revocations(&self) {
        let now = self.now();
        match self.revocations.refresh(self.store.as_ref(), now).await {
            Ok(n) => {
                self.metrics
                    .session_revocation_refreshes
                    .with_label_values(&["ok"])
                    .inc();
                self.metrics.revoked_sessions.set(n as i64);
                self.metrics
                    .session_revocation_refreshed
                    .set(lanyard::clock::unix_seconds(now) as f64);
            }
            Err(e) => {
                self.metrics
                    .session_revocation_refreshes
                    .with_label_values(&["error"])
                    .inc();
                let age = self.revocations.age().as_secs();
                if self.revocations.is_stale() {
                    warn!(error = %e, age_seconds = age, "cannot reload the revoked sessions; refusing every session (503) until the store can be read");
                } else {
                    warn!(error = %e, age_seconds = age, "cannot reload the revoked sessions; will retry");
                }
            }
        }
    }

    /// This process's id among replicas sharing the store.
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// Whether this replica runs the background job `job` now: of the replicas sharing a
    /// PostgreSQL store one holds each job, renewing its claim at every run (every
    /// `reload_interval_seconds`); another takes over once the claim has not been renewed for
    /// three periods (its holder stopped). On SQLite or in memory every process runs its
    /// jobs. A failed claim skips this run (logged).
    pub async fn claim_job(&self, job: &str) -> bool {
        let every = Duration::from_secs(self.config.reload_interval_seconds.max(1));
        let now = self.clock.now();
        match self
            .store
            .claim_job(job, &self.replica, now, now + every * 3)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                warn!(error = %e, job, "claiming a background job failed; skipping this run");
                false
            }
        }
    }

    /// Deletes the revocations of sessions that have ended anyway.
    pub async fn prune_session_revocations(&self) -> Result<usize, ApiError> {
        Ok(self.store.prune_session_revocations(self.now()).await?)
    }

    /// Deletes the admission records past `gate.admission.record_retention_hours`.
    pub async fn prune_admission_records(&self) -> Result<usize, ApiError> {
        Ok(self.gate.prune_admission_records().await?)
    }

    /// Audits and counts a caller of the admission `route` that is not the API server
    /// (`reason`, a stable label) and returns the opaque 401 (or the audit failure).
    pub async fn refuse_admission(
        &self,
        request_id: &str,
        route: &str,
        reason: &'static str,
        source: IpAddr,
    ) -> ApiError {
        self.metrics
            .admission_decisions
            .with_label_values(&["error", "unauthenticated", "other"])
            .inc();
        self.metrics.denials.with_label_values(&["-", reason]).inc();
        let rec = AuditRecord::admission_auth_failure(self.now(), request_id, route, reason);
        match self.audit_auth_failure(rec, Some(source)).await {
            Ok(()) => ApiError::Unauthenticated(AuthnError::Missing),
            Err(e) => e,
        }
    }

    /// Decides an `AdmissionReview` (`POST /v1/admission/validate`, from an authenticated
    /// API server): parses it (bounded), finds the images of the pod or pod template, lets
    /// [`Gate::admit`] resolve and check them within `gate.admission.deadline_ms`, and
    /// answers with the pure [`gate::admission::decide`]'s decision. An allowed pod that is
    /// not a dry run gets its admission record written durably first. Every decision is
    /// audited and counted; a review that is not one is a 400.
    pub async fn admission_validate(
        &self,
        body: &[u8],
        request_id: &str,
    ) -> Result<AdmissionReview<DynamicObject>, ApiError> {
        use gate::admission::{self, Admitted};
        let started = std::time::Instant::now();
        let cfg = &self.config.gate.admission;
        let bad = |e: admission::ReviewError| {
            self.metrics
                .admission_decisions
                .with_label_values(&["error", "bad_review", "other"])
                .inc();
            ApiError::BadRequest(e.to_string())
        };
        let req = admission::parse_review(body).map_err(bad)?;
        let mut resp = AdmissionResponse::from(&req);
        // The request's own types are not carried by `parse_review`: the answer is an
        // `admission.k8s.io/v1` `AdmissionReview`, as the request was (checked there).
        resp.types = kube_core::TypeMeta {
            api_version: "admission.k8s.io/v1".to_owned(),
            kind: "AdmissionReview".to_owned(),
        };
        let Some(workload) = admission::workload_of(&req, cfg.templates).map_err(bad)? else {
            self.metrics
                .admission_decisions
                .with_label_values(&["allow", "not_gated", "other"])
                .inc();
            return Ok(resp.into_review());
        };
        let kind = match &workload.admitted {
            Admitted::Pod { .. } => "pod",
            Admitted::Template { .. } => "template",
        };
        let namespace = workload.namespace.clone().unwrap_or_default();
        let what = match &workload.admitted {
            Admitted::Pod { .. } => format!("pod {namespace}/{}", workload.name),
            Admitted::Template { kind } => {
                format!("{kind} {namespace}/{} pod template", workload.name)
            }
        };
        // Who asked for it (the API server's `userInfo`): a user or a controller, never a secret.
        let by: String = req
            .user_info
            .username
            .as_deref()
            .unwrap_or("?")
            .chars()
            .take(120)
            .collect();
        let settings = admission::AdmissionSettings {
            mode: self.config.gate.mode,
            on_timeout: cfg.on_timeout,
            namespace_exemption: cfg
                .exemption(&namespace)
                .map(|e| e.reason.trim().to_owned()),
        };
        let deadline = Duration::from_millis(cfg.deadline_ms);
        let decision = self.gate.admit(&workload, &settings, deadline).await?;
        let mut note = String::new();
        if let Some((uid, images)) = &decision.record {
            let pinned = workload
                .images
                .iter()
                .all(|c| gate::image::parse(&c.image).is_ok_and(|r| r.digest.is_some()));
            let rec = self
                .gate
                .record_admission(
                    uid,
                    &namespace,
                    &workload.name,
                    images,
                    pinned,
                    workload.changed_only,
                )
                .await
                .inspect_err(|_| {
                    // Nothing is allowed unrecorded: the review fails, the API server's
                    // failurePolicy applies.
                    self.metrics
                        .admission_decisions
                        .with_label_values(&["error", "store", kind])
                        .inc();
                })?;
            note = match rec {
                Some(rec) => format!(
                    "recorded pod uid {uid} ({} image(s){})",
                    rec.images.len(),
                    if rec.pinned { "" } else { ", tag-based" }
                ),
                None => format!(
                    "pod uid {uid} has no admission record to add to (admitted before the \
                     webhook, or pruned): nothing recorded, its tokens stay an unknown workload"
                ),
            };
        } else if workload.dry_run {
            note = "dry run: nothing recorded".to_owned();
        } else if decision.allowed
            && settings.namespace_exemption.is_none()
            && matches!(workload.admitted, Admitted::Pod { uid: None })
        {
            note = "the pod has no metadata.uid (is the webhook registered as validating?): \
                    nothing recorded"
                .to_owned();
        }
        note = if note.is_empty() {
            format!("requested by {by}")
        } else {
            format!("{note}; requested by {by}")
        };
        let images: Vec<String> = match &decision.record {
            Some((_, images)) => images.clone(),
            None => workload.images.iter().map(|c| c.image.clone()).collect(),
        };
        let rec = AuditRecord::admission(self.now(), request_id, &what, &images, &decision, &note);
        self.audit(rec).await?;
        self.metrics
            .admission_decisions
            .with_label_values(&[decision.outcome.as_str(), decision.reason.as_str(), kind])
            .inc();
        self.metrics
            .admission_duration
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        if decision.allowed {
            if !decision.warnings.is_empty() {
                resp.warnings = Some(decision.warnings);
            }
        } else {
            resp = resp.deny(&decision.message);
            resp.result = kube_core::Status::failure(&decision.message, "Forbidden").with_code(403);
        }
        Ok(resp.into_review())
    }

    /// Revokes a lease: by an admin, or by the workload it was issued to.
    pub async fn revoke_lease(
        &self,
        lease_id: &str,
        by: Option<&Identity>,
        request_id: &str,
    ) -> Result<RevokeResult, ApiError> {
        let Some(lease) = self.store.get_lease(lease_id).await? else {
            return Err(ApiError::NotFound(format!("no lease `{lease_id}`")));
        };
        if let Some(identity) = by
            && (identity.subject != lease.subject || identity.issuer != lease.issuer)
        {
            // Do not reveal that the lease exists.
            return Err(ApiError::NotFound(format!("no lease `{lease_id}`")));
        }
        let backend = self.backends.get(&lease.backend).ok_or_else(|| {
            ApiError::Internal(format!("lease backend {} not configured", lease.backend))
        })?;
        let upstream_revoked = backend
            .revoke(&LeaseRef {
                lease_id,
                upstream_lease: lease.upstream_lease.as_deref(),
                role: &lease.role,
            })
            .await?;
        self.renewals.release(lease_id);
        let newly = self.store.mark_lease_revoked(lease_id, self.now()).await?;
        if lease.backend == crate::issue::jwt::KIND {
            // REV (issue 16): in the revocation list this broker serves from now on.
            self.revocation_list.invalidate();
        }
        let rec = AuditRecord::lease_revoke(self.now(), request_id, &lease, upstream_revoked);
        self.audit(rec).await?;
        Ok(RevokeResult {
            lease_id: lease_id.to_owned(),
            already_revoked: !newly,
            upstream_revoked,
            expires_at: rfc3339(lease.expires_at),
        })
    }

    /// Revokes every session of an `aws-sts` role issued until now (admin). STS cannot revoke
    /// one session, so the broker hands back the IAM deny policy the operator attaches to the
    /// role (sessions issued before the cut-off are refused by AWS from then on), and drops its
    /// own cached sessions of that IAM role at once: the next request makes a new AssumeRole,
    /// whose session the policy does not touch. Audited.
    pub async fn revoke_sts_role(
        &self,
        role_name: &str,
        request_id: &str,
    ) -> Result<StsRoleRevocation, ApiError> {
        let policy = self.policy.load();
        let Some(role) = policy.roles.get(role_name) else {
            return Err(ApiError::NotFound(format!("no role `{role_name}`")));
        };
        let crate::policy::RoleSettings::AwsSts(settings) = &role.settings else {
            return Err(ApiError::BadRequest(format!(
                "role `{role_name}` is a {} role, not aws-sts; revoke its leases one by one",
                role.backend
            )));
        };
        let backend = self.backends.get(&role.backend).ok_or_else(|| {
            ApiError::Internal(format!("backend {} not configured", role.backend))
        })?;
        let now = self.now();
        let cutoff = crate::issue::sts::revocation_cutoff(now);
        let dropped = backend.forget_role(role);
        let issued_before = rfc3339(cutoff);
        info!(role = %role_name, role_arn = %settings.role_arn(), dropped, issued_before = %issued_before, "aws-sts sessions revoked: cached sessions dropped, deny policy produced");
        self.audit(AuditRecord::sts_role_revoke(
            now,
            request_id,
            role_name,
            settings.role_arn(),
            &issued_before,
            dropped,
        ))
        .await?;
        Ok(StsRoleRevocation {
            role: role_name.to_owned(),
            role_arn: settings.role_arn().to_owned(),
            issued_before,
            dropped_sessions: dropped,
            deny_policy: crate::issue::sts::deny_sessions_issued_before(cutoff),
        })
    }

    /// REV (issue 16): the broker's clock, for background jobs outside this module.
    pub fn now_for_jobs(&self) -> SystemTime {
        self.now()
    }

    /// REV (issue 16): pods holding running leases issued before `issued_before`
    /// ([`Store::pods_with_running_leases`]).
    pub async fn pods_with_running_leases(
        &self,
        after: Option<&str>,
        issued_before: SystemTime,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.store
            .pods_with_running_leases(after, issued_before, self.now(), limit)
            .await
    }

    /// REV (issue 16): revokes every running lease issued to the pod `pod_uid`, which was
    /// deleted (`how`: seen by the watch, or found by a relist): upstream where the backend
    /// can, recorded, in the JWT revocation list, audited one by one. Failures are logged and
    /// counted (the lease stays unrevoked: the pod watch retries it).
    pub async fn revoke_pod_leases(&self, pod_uid: &str, how: &str) -> PodRevocation {
        const BATCH: usize = 100;
        let mut revoked = 0;
        let mut failed = 0;
        loop {
            let leases = match self
                .store
                .running_leases_of_pod(pod_uid, self.now(), BATCH)
                .await
            {
                Ok(l) => l,
                Err(e) => {
                    warn!(pod_uid, error = %e, "cannot read the leases of a deleted pod; will retry");
                    return PodRevocation {
                        revoked,
                        failed: failed.max(1),
                    };
                }
            };
            let before = revoked;
            failed = 0;
            for lease in &leases {
                match self.revoke_for_pod(lease, pod_uid, how).await {
                    Ok(()) => revoked += 1,
                    Err(e) => {
                        failed += 1;
                        warn!(pod_uid, lease_id = %lease.lease_id, error = %e, "revoking a deleted pod's lease failed; will retry");
                    }
                }
            }
            if leases.len() < BATCH || revoked == before {
                break;
            }
        }
        if revoked > 0 {
            info!(pod_uid, revoked, how, "leases of a deleted pod revoked");
        }
        PodRevocation { revoked, failed }
    }

    async fn revoke_for_pod(
        &self,
        lease: &LeaseRecord,
        pod_uid: &str,
        how: &str,
    ) -> Result<(), ApiError> {
        let backend = self.backends.get(&lease.backend).ok_or_else(|| {
            ApiError::Internal(format!("lease backend {} not configured", lease.backend))
        })?;
        let upstream_revoked = backend
            .revoke(&LeaseRef {
                lease_id: &lease.lease_id,
                upstream_lease: lease.upstream_lease.as_deref(),
                role: &lease.role,
            })
            .await?;
        self.renewals.release(&lease.lease_id);
        if !self
            .store
            .mark_lease_revoked(&lease.lease_id, self.now())
            .await?
        {
            return Ok(());
        }
        if lease.backend == crate::issue::jwt::KIND {
            self.revocation_list.invalidate();
        }
        self.metrics.pod_deletion_revocations.inc();
        let mut rec =
            AuditRecord::lease_revoke(self.now(), &new_request_id(), lease, upstream_revoked);
        rec.reason = format!("pod {pod_uid} {how}: {}", rec.reason);
        self.audit(rec).await
    }

    /// Periodic backend upkeep (the Vault backend renews its own token or logs in again).
    pub async fn maintain_backends(&self) {
        for backend in self.backends.iter() {
            if let Err(e) = backend.maintain().await {
                warn!(backend = backend.kind(), error = %e, "backend upkeep failed; will retry");
            }
        }
    }

    /// Takes up renewing the leases handed out before this process started (`renew_step_secs`
    /// in the store: by an earlier process, or by another replica), as a starting broker does
    /// once. Their upstream expiry is not known here, so each is renewed at the next
    /// [`Broker::renew_leases`]; one whose upstream lease ended meanwhile is refused there and
    /// dropped. Returns how many are held.
    pub async fn resume_renewals(&self) -> Result<usize, StoreError> {
        let now = self.now();
        let mut held = 0;
        for h in self.renewable_from_store(now).await? {
            self.renewals.hold(h);
            held += 1;
        }
        Ok(held)
    }

    /// The leases in the store this broker can renew, as [`Held`] entries.
    async fn renewable_from_store(&self, now: SystemTime) -> Result<Vec<Held>, StoreError> {
        /// At most this many leases are taken up at once.
        const MAX_RESUMED: usize = 100_000;
        let mut out = Vec::new();
        for lease in self.store.renewable_leases(now, MAX_RESUMED).await? {
            let (Some(upstream_lease), Some(step)) = (lease.upstream_lease, lease.renew_step_secs)
            else {
                continue;
            };
            if !self
                .backends
                .get(&lease.backend)
                .is_some_and(|b| b.renews_leases())
            {
                continue;
            }
            let step = Duration::from_secs(step.max(1));
            out.push(Held {
                lease_id: lease.lease_id,
                backend: lease.backend,
                role: lease.role,
                upstream_lease,
                until: lease.expires_at,
                // Not known here beyond its first period: taken as ending then, or if that
                // is past (renewed since, by another process), a third of a step from now,
                // which makes the lease due at once (and not yet past, which would drop it).
                upstream_expires_at: (lease.issued_at + step).max(now + step / 3),
                step,
            });
        }
        Ok(out)
    }

    /// The periodic lease renewal (every `reload_interval_seconds`). On a store replicas
    /// share (PostgreSQL), one replica at a time renews (`claim_job("lease_renewals")`), and
    /// it first takes up every lease in the store it does not hold — those the other
    /// replicas handed out, and those of a replica that is gone — so no lease depends on the
    /// replica that issued it. Elsewhere each process renews what it holds. Returns what
    /// this replica renewed (nothing when another holds the job).
    pub async fn renewal_tick(&self) -> LeaseRenewals {
        if self.store.is_shared() {
            if !self.claim_job("lease_renewals").await {
                return LeaseRenewals::default();
            }
            match self.renewable_from_store(self.now()).await {
                Ok(found) => {
                    let taken = found
                        .into_iter()
                        .filter(|h| self.renewals.take_up(h.clone()))
                        .count();
                    if taken > 0 {
                        info!(leases = taken, "took up renewing leases from the store");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "could not read the leases to renew; renewing those held here");
                }
            }
        }
        self.renew_leases().await
    }

    /// Renews the upstream leases that are due (`issue::renewal`): each by one step of its
    /// upstream lease, never past the broker's lease end. A renewal the upstream caps is
    /// logged (the credential ends then, before the time handed out) and not tried again; a
    /// failed one is retried at the next call while the upstream lease lasts.
    pub async fn renew_leases(&self) -> LeaseRenewals {
        let mut out = LeaseRenewals::default();
        let count = |backend: &str, outcome: &str| {
            self.metrics
                .lease_renewals
                .with_label_values(&[backend, outcome])
                .inc();
        };
        for held in self.renewals.due(self.now()) {
            let Some(backend) = self.backends.get(&held.backend) else {
                self.renewals.release(&held.lease_id);
                continue;
            };
            // Revoked meanwhile through another replica (which cannot release it here).
            if let Ok(Some(lease)) = self.store.get_lease(&held.lease_id).await
                && lease.revoked_at.is_some()
            {
                self.renewals.release(&held.lease_id);
                count(&held.backend, "dropped");
                continue;
            }
            let now = self.now();
            let increment = held.increment(now);
            let renewed = backend
                .renew(
                    &LeaseRef {
                        lease_id: &held.lease_id,
                        upstream_lease: Some(&held.upstream_lease),
                        role: &held.role,
                    },
                    increment,
                )
                .await;
            match renewed {
                Ok(granted_until) => {
                    match self
                        .renewals
                        .renewed(&held.lease_id, now, increment, granted_until)
                    {
                        Some(Renewed::Capped(at)) => {
                            out.capped += 1;
                            count(&held.backend, "capped");
                            warn!(lease_id = %held.lease_id, role = %held.role, backend = %held.backend, ends_at = %rfc3339(at), lease_ends_at = %rfc3339(held.until), "the upstream capped a lease renewal: the credential ends before the time handed out (raise the upstream role's max TTL to the lanyard role's max_ttl_seconds)");
                        }
                        Some(_) => {
                            out.renewed += 1;
                            count(&held.backend, "renewed");
                        }
                        None => {}
                    }
                }
                // The upstream refused (the lease is gone, or renewing it is not allowed):
                // asking again cannot help.
                Err(
                    e @ BackendError::Upstream {
                        retryable: false, ..
                    },
                ) => {
                    out.failed += 1;
                    count(&held.backend, "dropped");
                    self.renewals.release(&held.lease_id);
                    warn!(lease_id = %held.lease_id, role = %held.role, backend = %held.backend, error = %e, "the upstream refused to renew a lease; it ends with its current upstream lease");
                }
                Err(e) => {
                    out.failed += 1;
                    count(&held.backend, "failed");
                    warn!(lease_id = %held.lease_id, role = %held.role, backend = %held.backend, error = %e, "renewing an upstream lease failed; will retry while it lasts");
                }
            }
        }
        out
    }

    /// Revoke-on-expiry: revokes upstream the expired, unrevoked leases of the backends that
    /// declare it ([`Backend::revokes_on_expiry`]: Vault unless its `revoke_on_expiry` is
    /// off), marks them revoked and audits each. Returns how many were revoked; failures are
    /// logged and retried at the next sweep.
    pub async fn sweep_expired_leases(&self) -> Result<usize, ApiError> {
        const BATCH: usize = 100;
        let mut revoked = 0;
        for backend in self.backends.revoking_on_expiry() {
            let now = self.now();
            for lease in self
                .store
                .expired_leases(backend.kind(), now, BATCH)
                .await?
            {
                let outcome = backend
                    .revoke(&LeaseRef {
                        lease_id: &lease.lease_id,
                        upstream_lease: lease.upstream_lease.as_deref(),
                        role: &lease.role,
                    })
                    .await;
                let upstream = match outcome {
                    Ok(upstream) => upstream,
                    Err(e) => {
                        warn!(lease_id = %lease.lease_id, error = %e, "revoke on expiry failed; will retry");
                        continue;
                    }
                };
                self.renewals.release(&lease.lease_id);
                if !self.store.mark_lease_revoked(&lease.lease_id, now).await? {
                    continue;
                }
                revoked += 1;
                self.audit(AuditRecord::lease_expired(self.now(), &lease, upstream))
                    .await?;
            }
        }
        Ok(revoked)
    }

    /// Explains the decision for an identity and a role.
    pub fn explain(&self, identity: &Identity, role: &str) -> Explanation {
        policy::explain(&self.policy.load(), identity, role)
    }

    /// Re-reads the policy directory. A bad set is refused (and audited) and the last good
    /// one stays active.
    pub async fn reload_policies(&self) -> Result<ReloadOutcome, PolicyErrors> {
        // The gate's allowlist is re-read with the policies: a change applies to every stored
        // verdict at its next lookup, with no re-scan. A broken file keeps the last good list.
        if let Err(e) = self.gate.reload_allowlist() {
            warn!(error = %e, "gate allowlist not reloaded; keeping the last good one");
        }
        let loaded = policy::load_dir(&self.config.policies_dir, &|r| {
            self.backends.validate_role(r)
        });
        match loaded {
            Ok(set) => {
                if set.digest == self.policy.load().digest {
                    self.policy_ok.store(true, Ordering::Relaxed);
                    return Ok(ReloadOutcome::Unchanged);
                }
                let outcome = ReloadOutcome::Reloaded {
                    digest: set.digest.clone(),
                    rules: set.rules.len(),
                };
                self.metrics.policy_rules.set(set.rules.len() as i64);
                self.metrics.policy_reloads.with_label_values(&["ok"]).inc();
                for w in policy::claim_warnings(&set, &self.config.issuers) {
                    warn!("{w}");
                }
                info!(digest = %set.digest, rules = set.rules.len(), "policies reloaded");
                let rec = AuditRecord::policy_reload(self.now(), set.rules.len(), &set.digest);
                self.policy.store(Arc::new(set));
                self.policy_ok.store(true, Ordering::Relaxed);
                if let Err(e) = self.audit(rec).await {
                    warn!(error = %e, "could not audit policy reload");
                }
                Ok(outcome)
            }
            Err(errors) => {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["error"])
                    .inc();
                self.policy_ok.store(false, Ordering::Relaxed);
                warn!(errors = %errors, "policy reload rejected; keeping the last good set");
                let rec = AuditRecord::policy_reload_rejected(self.now(), &errors);
                if let Err(e) = self.audit(rec).await {
                    warn!(error = %e, "could not audit policy reload");
                }
                Err(errors)
            }
        }
    }

    /// Whether the last policy reload succeeded.
    pub fn policy_healthy(&self) -> bool {
        self.policy_ok.load(Ordering::Relaxed)
    }

    /// Readiness checks, by name.
    pub async fn readiness(&self) -> BTreeMap<&'static str, Result<(), String>> {
        let mut checks = BTreeMap::new();
        // Writable, not just readable: another process holding the write lock (a backup,
        // a stuck replica) fails every issuance, which must be audited and recorded.
        checks.insert(
            "store",
            self.store.check_writable().await.map_err(|e| e.to_string()),
        );
        checks.insert(
            "session_revocations",
            if self.revocations.is_stale() {
                Err(format!(
                    "not reloaded from the store for {} s (bound {} s); sessions are refused until it is",
                    self.revocations.age().as_secs(),
                    self.revocations.max_stale().as_secs()
                ))
            } else {
                Ok(())
            },
        );
        checks.insert("policy", Ok(()));
        // An answer needs its audit record on disk: while the sink cannot write, nothing
        // can be served.
        checks.insert("audit", self.audit.writable());
        let missing = self.verifier.issuers_without_keys();
        // An issuer without keys only affects its own workloads: report it, stay ready.
        if !missing.is_empty() {
            tracing::debug!(issuers = ?missing, "issuers without keys yet");
        }
        checks
    }
}

/// An authenticated request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who.
    pub identity: Identity,
    /// Whether a session token should be returned (bootstrap and session identities).
    pub new_session: bool,
    /// When the bootstrap session started.
    pub session_started: Option<SystemTime>,
    /// The session (`ss_…`) a bootstrap or session token belongs to.
    pub session_id: Option<String>,
    /// The redemption of the bootstrap token this request presented, which [`Broker::issue`]
    /// commits or releases.
    redemption: Option<Arc<Redemption>>,
}

impl Authenticated {
    /// A workload that proved its identity with a JWT from a trusted issuer (no session).
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            new_session: false,
            session_started: None,
            session_id: None,
            redemption: None,
        }
    }
}

/// Which session to revoke.
#[derive(Debug, Clone, Copy)]
pub enum SessionRef<'a> {
    /// By its id (`ss_…`).
    Id(&'a str),
    /// By one of its tokens, verified (never recorded).
    Token(&'a str),
}

/// Outcome of a lease revocation.
#[derive(Debug, Clone, Serialize)]
pub struct RevokeResult {
    /// The lease.
    pub lease_id: String,
    /// It had been revoked before.
    pub already_revoked: bool,
    /// The backend revoked it upstream (else it lives until `expires_at`).
    pub upstream_revoked: bool,
    /// Its expiry.
    pub expires_at: String,
}

/// REV (issue 16): what [`Broker::revoke_pod_leases`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodRevocation {
    /// Leases revoked.
    pub revoked: usize,
    /// Leases (or the read of them) that failed, still unrevoked.
    pub failed: usize,
}

/// Outcome of revoking an `aws-sts` role's sessions ([`Broker::revoke_sts_role`]).
#[derive(Debug, Clone, Serialize)]
pub struct StsRoleRevocation {
    /// The lanyard role.
    pub role: String,
    /// Its IAM role.
    pub role_arn: String,
    /// The cut-off: sessions issued before it are denied once `deny_policy` is attached.
    pub issued_before: String,
    /// How many cached sessions of the IAM role this broker dropped.
    pub dropped_sessions: usize,
    /// The IAM policy to attach to the role (inline), as JSON.
    pub deny_policy: serde_json::Value,
}

/// The broker's CA for injected sidecars (`inject.ca_file`), read at each injection so a
/// rotated CA is handed out at once; `None` (the injection is then refused, and the reason
/// logged) when it cannot be read, is not UTF-8 or is above
/// [`gate::inject::MAX_CA_BYTES`].
async fn read_ca(path: &std::path::Path) -> Option<String> {
    use tokio::io::AsyncReadExt as _;
    let read = async {
        let f = tokio::fs::File::open(path).await?;
        let mut buf = Vec::new();
        f.take(gate::inject::MAX_CA_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .await?;
        Ok::<_, std::io::Error>(buf)
    };
    match read.await {
        Ok(b) if b.len() <= gate::inject::MAX_CA_BYTES => match String::from_utf8(b) {
            Ok(s) => Some(s),
            Err(_) => {
                warn!(file = %path.display(), "inject.ca_file is not UTF-8 PEM");
                None
            }
        },
        Ok(_) => {
            warn!(file = %path.display(), "inject.ca_file is larger than 64 KiB");
            None
        }
        Err(e) => {
            warn!(file = %path.display(), error = %e, "cannot read inject.ca_file");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_sort_by_issue_time_and_never_repeat() {
        let t = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let a = lease_id(t(1_764_000_000_000));
        let b = lease_id(t(1_764_000_000_001));
        let c = lease_id(t(1_764_000_000_001));
        assert!(a < b && a < c, "{a} {b} {c}");
        assert_ne!(b, c, "same millisecond, different ids");
        assert_eq!(a.len(), 3 + 12 + 16, "{a}");
        assert!(a.starts_with("ls_019ab"), "{a}");
        assert!(a[3..].bytes().all(|x| x.is_ascii_hexdigit()), "{a}");
    }
}
