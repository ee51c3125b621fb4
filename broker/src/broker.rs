//! The request pipeline: authenticate → authorize → issue → audit. HTTP lives in
//! [`crate::server`]; this module is the broker's behaviour, callable in-process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use lanyard::clock::{Clock, rfc3339, unix_seconds};
use lanyard::refresh::REFRESH_FRACTION;
use lanyard::wire::{
    Credential, CredentialRequest, CredentialResponse, MintTokenRequest, MintTokenResponse, Session,
};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::audit::{AuditLog, AuditRecord, AuditSink, Decision, Event, Fingerprinter};
use crate::authn::bootstrap::{self, RedeemError};
use crate::authn::jwt::{self, JwtVerifier};
use crate::authn::{AuthnError, BOOTSTRAP_ISSUER, BootstrapBinding, Identity};
use crate::config::BrokerConfig;
use crate::error::ApiError;
use crate::issue::jwt::{JwtBackend, KeyRing};
use crate::issue::sts::StsBackend;
use crate::issue::vault::VaultBackend;
use crate::issue::{Backends, IssueRequest, LeaseRef};
use crate::metrics::Metrics;
use crate::policy::{self, Explanation, PolicyErrors, PolicySet};
use crate::store::sqlite::SqliteStore;
use crate::store::{LeaseRecord, Store};

/// Audience of the session tokens the broker hands out after a bootstrap token is redeemed.
pub const SESSION_AUDIENCE: &str = "lanyard:session";

/// Why the broker could not start. Each names the file or field to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The store could not be opened.
    #[error("cannot open store {path}: {message}")]
    Store {
        /// Database path.
        path: String,
        /// Why.
        message: String,
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
    Issuer(String),
    /// The audit log cannot be opened or resumed.
    #[error("audit log {sink}: {message}")]
    Audit {
        /// Sink.
        sink: String,
        /// Why.
        message: String,
    },
    /// Signing keys cannot be loaded or created.
    #[error("signing keys: {0}")]
    Keys(String),
    /// TLS material is unusable.
    #[error("{0}")]
    Tls(String),
    /// Anything else at start-up.
    #[error("{0}")]
    Other(String),
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
    verifier: JwtVerifier,
    policy: ArcSwap<PolicySet>,
    backends: Backends,
    keys: Arc<KeyRing>,
    audit: AuditLog,
    fingerprinter: Fingerprinter,
    metrics: Metrics,
    policy_ok: AtomicBool,
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
            Arc::new(SqliteStore::open(&config.store.sqlite_path).map_err(|e| {
                StartError::Store {
                    path: config.store.sqlite_path.display().to_string(),
                    message: e.to_string(),
                }
            })?);
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
            KeyRing::load_or_create(store.clone(), clock.clone(), config.signing.clone())
                .await
                .map_err(|e| StartError::Keys(e.to_string()))?,
        );
        let mut backends = Backends::default();
        backends.insert(Arc::new(JwtBackend::new(
            keys.clone(),
            config.public_url.clone(),
        )));
        if let Some(vault) = &config.backends.vault {
            let backend = VaultBackend::new(vault, clock.clone(), metrics.clone())
                .map_err(StartError::Other)?;
            backends.insert(Arc::new(backend));
        }
        if let Some(sts) = &config.backends.aws_sts {
            backends.insert(Arc::new(
                StsBackend::from_config(sts, clock.clone(), metrics.clone()).await,
            ));
        }
        let set = policy::load_dir(&config.policies_dir, &|r| backends.validate_role(r)).map_err(
            |errors| StartError::Policy {
                dir: config.policies_dir.display().to_string(),
                errors,
            },
        )?;
        metrics.policy_rules.set(set.rules.len() as i64);
        let verifier = JwtVerifier::new(
            &config.issuers,
            &config.limits,
            clock.clone(),
            metrics.clone(),
        )
        .map_err(StartError::Issuer)?;
        let sink = AuditSink::from_config(&config.audit.sink);
        let audit = AuditLog::open(sink, store.clone())
            .await
            .map_err(|e| StartError::Audit {
                sink: config.audit.sink.clone(),
                message: e.to_string(),
            })?;
        let fingerprinter =
            Fingerprinter::load(store.as_ref())
                .await
                .map_err(|e| StartError::Store {
                    path: config.store.sqlite_path.display().to_string(),
                    message: e.to_string(),
                })?;
        info!(
            rules = set.rules.len(),
            roles = set.roles.len(),
            digest = %set.digest,
            "policies loaded"
        );
        Ok(Arc::new(Self {
            config,
            clock,
            store,
            verifier,
            policy: ArcSwap::from_pointee(set),
            backends,
            keys,
            audit,
            fingerprinter,
            metrics,
            policy_ok: AtomicBool::new(true),
        }))
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
        })
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
        let event = serde_json::to_value(rec.event)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        match lease {
            Some(l) => self.audit.append_with_lease(rec, l).await?,
            None => self.audit.append(rec).await?,
        };
        self.metrics
            .audit_records
            .with_label_values(&[&event])
            .inc();
        Ok(())
    }

    fn record(&self, event: Event, decision: Decision, reason: impl Into<String>) -> AuditRecord {
        AuditRecord::new(rfc3339(self.now()), event, decision, reason)
    }

    /// Authenticates a bearer credential: a JWT from a trusted issuer, a broker session
    /// token, or a bootstrap token (redeemed — single use). Every failure is audited and
    /// answered with the same opaque 401.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        request_id: &str,
    ) -> Result<Authenticated, ApiError> {
        let result = match bearer {
            None => Err((AuthnError::Missing, None)),
            Some(token) if token.len() > self.config.limits.max_token_bytes => {
                Err((AuthnError::TooLarge, None))
            }
            Some(token) if bootstrap::looks_like_bootstrap_token(token) => {
                match bootstrap::redeem(self.store.as_ref(), self.clock.as_ref(), token).await {
                    Ok(identity) => {
                        self.metrics
                            .bootstrap_tokens
                            .with_label_values(&["redeemed"])
                            .inc();
                        let binding = identity.bootstrap.clone();
                        let mut rec = self.record(Event::TokenRedeem, Decision::Allow, "redeemed");
                        rec.request_id = Some(request_id.to_owned());
                        rec.identity = Some(identity.subject.clone());
                        rec.issuer = Some(identity.issuer.clone());
                        rec.token_id = binding.as_ref().map(|b| b.token_id.clone());
                        rec.image = binding.as_ref().and_then(|b| b.image.clone());
                        self.audit(rec).await?;
                        return Ok(Authenticated {
                            identity,
                            new_session: true,
                            session_started: Some(self.now()),
                        });
                    }
                    Err(RedeemError::Store(e)) => return Err(ApiError::from(e)),
                    Err(RedeemError::Rejected { error, token_id }) => {
                        self.metrics
                            .bootstrap_tokens
                            .with_label_values(&["rejected"])
                            .inc();
                        Err((error, token_id))
                    }
                }
            }
            // The unverified `iss` tells a broker session token (checked by the key ring,
            // which decodes it itself) from an issuer's JWT, whose decoded claims go
            // straight to the verifier: the hot path decodes the token once.
            Some(token) => match jwt::parse_jwt(token, self.config.limits.max_token_bytes) {
                Err(e) => Err((e, None)),
                Ok(parsed)
                    if parsed.claims.get("iss").and_then(serde_json::Value::as_str)
                        == Some(self.config.public_url.as_str()) =>
                {
                    self.verify_session(token).map_err(|e| (e, None))
                }
                Ok(parsed) => self
                    .verifier
                    .verify_parsed(parsed)
                    .await
                    .map(|identity| Authenticated {
                        identity,
                        new_session: false,
                        session_started: None,
                    })
                    .map_err(|e| (e, None)),
            },
        };
        match result {
            Ok(a) => Ok(a),
            Err((error, token_id)) => {
                self.metrics
                    .denials
                    .with_label_values(&["-", error.reason()])
                    .inc();
                let mut rec = self.record(
                    Event::Deny,
                    Decision::Deny,
                    format!("authentication failed: {}", error.reason()),
                );
                rec.request_id = Some(request_id.to_owned());
                rec.token_id = token_id;
                self.audit(rec).await?;
                Err(ApiError::Unauthenticated(error))
            }
        }
    }

    fn verify_session(&self, token: &str) -> Result<Authenticated, AuthnError> {
        let claims =
            self.keys
                .verify(token, &self.config.public_url, SESSION_AUDIENCE, self.now())?;
        let session = claims
            .get("lanyard_session")
            .ok_or_else(|| AuthnError::InvalidClaims("lanyard_session".into()))?;
        let token_id = session
            .get("token_id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| AuthnError::InvalidClaims("lanyard_session.token_id".into()))?
            .to_owned();
        let roles = session
            .get("roles")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .ok_or_else(|| AuthnError::InvalidClaims("lanyard_session.roles".into()))?;
        let image = session
            .get("image")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let started = session
            .get("started_at")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| AuthnError::InvalidClaims("lanyard_session.started_at".into()))?;
        Ok(Authenticated {
            identity: Identity {
                issuer: BOOTSTRAP_ISSUER.to_owned(),
                subject: format!("bootstrap:{token_id}"),
                kubernetes: None,
                bootstrap: Some(BootstrapBinding {
                    token_id,
                    roles,
                    image,
                }),
            },
            new_session: true,
            session_started: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(started)),
        })
    }

    fn mint_session(
        &self,
        identity: &Identity,
        started: SystemTime,
    ) -> Result<Option<Session>, ApiError> {
        let Some(binding) = &identity.bootstrap else {
            return Ok(None);
        };
        let now = self.now();
        let hard_end =
            started + Duration::from_secs(self.config.bootstrap.session_max_lifetime_seconds);
        let exp =
            (now + Duration::from_secs(self.config.bootstrap.session_ttl_seconds)).min(hard_end);
        if exp <= now {
            return Ok(None);
        }
        let claims = serde_json::json!({
            "iss": self.config.public_url,
            "aud": SESSION_AUDIENCE,
            "sub": identity.subject,
            "iat": unix_seconds(now),
            "nbf": unix_seconds(now),
            "exp": unix_seconds(exp),
            "lanyard_session": {
                "token_id": binding.token_id,
                "roles": binding.roles,
                "image": binding.image,
                "started_at": unix_seconds(started),
            }
        });
        let token = self.keys.sign(&claims)?;
        Ok(Some(Session {
            token: lanyard::Secret::new(token),
            expires_at: rfc3339(exp),
        }))
    }

    /// Issues credentials to an authenticated identity: policy decides the roles, each
    /// role's backend issues, each issuance is stored as a lease and audited.
    pub async fn issue(
        &self,
        auth: &Authenticated,
        req: &CredentialRequest,
        request_id: &str,
    ) -> Result<CredentialResponse, ApiError> {
        let identity = &auth.identity;
        if req.ttl_seconds == Some(0) {
            return Err(ApiError::BadRequest(
                "ttl_seconds must be at least 1".into(),
            ));
        }
        if let Some(roles) = &req.roles {
            if roles.is_empty() {
                return Err(ApiError::BadRequest(
                    "roles, when given, must name at least one role".into(),
                ));
            }
            if roles.len() > 64 {
                return Err(ApiError::BadRequest("at most 64 roles per request".into()));
            }
        }
        let set = self.policy.load_full();
        let decision = policy::evaluate(&set, identity, req.roles.as_deref());
        if !decision.denied.is_empty() || decision.granted.is_empty() {
            let mut reasons = Vec::new();
            for d in &decision.denied {
                let role_label = if set.roles.contains_key(&d.role) {
                    d.role.as_str()
                } else {
                    "-"
                };
                self.metrics
                    .denials
                    .with_label_values(&[role_label, d.reason])
                    .inc();
                let mut rec = self.record(
                    Event::Deny,
                    Decision::Deny,
                    format!("{}: {}", d.reason, d.detail),
                );
                rec.request_id = Some(request_id.to_owned());
                rec.identity = Some(identity.subject.clone());
                rec.issuer = Some(identity.issuer.clone());
                rec.role = Some(d.role.clone());
                self.audit(rec).await?;
                reasons.push(format!("role `{}`: {}", d.role, d.reason));
            }
            if decision.denied.is_empty() {
                self.metrics
                    .denials
                    .with_label_values(&["-", "no_roles_granted"])
                    .inc();
                let mut rec = self.record(Event::Deny, Decision::Deny, "no_roles_granted");
                rec.request_id = Some(request_id.to_owned());
                rec.identity = Some(identity.subject.clone());
                rec.issuer = Some(identity.issuer.clone());
                self.audit(rec).await?;
                reasons.push("no policy grants any role to this identity".into());
            }
            return Err(ApiError::Forbidden(format!(
                "denied: {} (ask an operator to run `lanyard-broker policy explain`)",
                reasons.join("; ")
            )));
        }

        let mut credentials = Vec::with_capacity(decision.granted.len());
        for grant in &decision.granted {
            let Some(role) = set.roles.get(&grant.role) else {
                return Err(ApiError::Internal(format!(
                    "policy granted undefined role {}",
                    grant.role
                )));
            };
            let wanted = req.ttl_seconds.unwrap_or(role.default_ttl_seconds);
            let ttl_clamped = wanted > role.max_ttl_seconds;
            let ttl_seconds = wanted.min(role.max_ttl_seconds).max(1);
            let Some(backend) = self.backends.get(&role.backend) else {
                return Err(ApiError::Internal(format!(
                    "role {} names backend {} which is not configured",
                    role.name, role.backend
                )));
            };
            let lease_id = lease_id(self.now());
            // Whole seconds: JWT times are seconds, and TTLs should come out exact.
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds(self.now()));
            let started = Instant::now();
            let issued = backend
                .issue(&IssueRequest {
                    identity,
                    role,
                    ttl: Duration::from_secs(ttl_seconds),
                    now,
                    request_id,
                    lease_id: &lease_id,
                })
                .await;
            let outcome = if issued.is_ok() { "ok" } else { "error" };
            self.metrics
                .backend_duration
                .with_label_values(&[backend.kind(), outcome])
                .observe(started.elapsed().as_secs_f64());
            let issued = match issued {
                Ok(i) => i,
                Err(e) => {
                    let err = ApiError::from(e);
                    self.metrics
                        .denials
                        .with_label_values(&[&role.name, "backend_error"])
                        .inc();
                    let mut rec =
                        self.record(Event::Deny, Decision::Deny, format!("backend_error: {err}"));
                    rec.request_id = Some(request_id.to_owned());
                    rec.identity = Some(identity.subject.clone());
                    rec.issuer = Some(identity.issuer.clone());
                    rec.role = Some(role.name.clone());
                    rec.backend = Some(role.backend.clone());
                    self.audit(rec).await?;
                    return Err(err);
                }
            };
            // Never hand out more than the role's cap, whatever the backend says. A backend may
            // return less than asked (an upstream lease, a cached credential's remaining
            // life) or, where the upstream has a floor (STS: 900 s), more than asked but
            // within the cap; the reported expiry is always the credential's real one.
            let cap = now + Duration::from_secs(role.max_ttl_seconds);
            let expires_at = issued.expires_at.min(cap);
            let lifetime = expires_at.duration_since(now).unwrap_or(Duration::ZERO);
            let refresh_after = now + lifetime.mul_f64(REFRESH_FRACTION);
            let fingerprint = self.fingerprinter.fingerprint(&issued.data);
            let lease = LeaseRecord {
                lease_id: lease_id.clone(),
                role: role.name.clone(),
                backend: role.backend.clone(),
                subject: identity.subject.clone(),
                issuer: identity.issuer.clone(),
                issued_at: now,
                expires_at,
                upstream_lease: issued.upstream_lease.clone(),
                fingerprint: fingerprint.clone(),
                revoked_at: None,
            };
            let mut rec = self.record(
                Event::Issue,
                Decision::Allow,
                format!(
                    "granted by rule {} ({}){}",
                    grant.rule,
                    grant.location,
                    if ttl_clamped {
                        "; ttl clamped to role cap"
                    } else {
                        ""
                    }
                ),
            );
            rec.request_id = Some(request_id.to_owned());
            rec.identity = Some(identity.subject.clone());
            rec.issuer = Some(identity.issuer.clone());
            rec.role = Some(role.name.clone());
            rec.backend = Some(role.backend.clone());
            rec.ttl_seconds = Some(lifetime.as_secs());
            rec.ttl_clamped = ttl_clamped;
            rec.expires_at = Some(rfc3339(expires_at));
            rec.lease_id = Some(lease_id.clone());
            rec.fingerprint = Some(fingerprint);
            rec.upstream_lease = issued.upstream_lease.clone();
            rec.image = identity.bootstrap.as_ref().and_then(|b| b.image.clone());
            // The lease row is saved with the audit group that holds this record.
            self.audit_with_lease(rec, lease).await?;
            self.metrics
                .issuances
                .with_label_values(&[&role.name, &role.backend])
                .inc();
            // Debug, not info: the audit log already holds every issuance, and a log line
            // per issuance cost about 13% of the broker's throughput (docs/benchmarks.md).
            debug!(role = %role.name, backend = %role.backend, lease_id = %lease_id, ttl_seconds = lifetime.as_secs(), ttl_clamped, "credential issued");
            credentials.push(Credential {
                role: role.name.clone(),
                kind: role.backend.clone(),
                data: issued.data,
                expires_at: rfc3339(expires_at),
                refresh_after: rfc3339(refresh_after),
                ttl_seconds: lifetime.as_secs(),
                lease_id,
                ttl_clamped,
            });
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
        })
    }

    /// Mints a bootstrap token (admin).
    pub async fn mint_token(
        &self,
        req: &MintTokenRequest,
        request_id: &str,
    ) -> Result<MintTokenResponse, ApiError> {
        if req.roles.is_empty() {
            return Err(ApiError::BadRequest("roles: name at least one role".into()));
        }
        let set = self.policy.load_full();
        if let Some(unknown) = req.roles.iter().find(|r| !set.roles.contains_key(*r)) {
            return Err(ApiError::BadRequest(format!(
                "role `{unknown}` is not defined in the policies (known: {})",
                set.roles.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let ttl_seconds = req
            .ttl_seconds
            .unwrap_or(self.config.bootstrap.default_ttl_seconds);
        if ttl_seconds == 0 || ttl_seconds > self.config.bootstrap.max_ttl_seconds {
            return Err(ApiError::BadRequest(format!(
                "ttl_seconds must be between 1 and {} (bootstrap.max_ttl_seconds)",
                self.config.bootstrap.max_ttl_seconds
            )));
        }
        let minted = bootstrap::mint(
            self.store.as_ref(),
            self.clock.as_ref(),
            req.roles.clone(),
            Duration::from_secs(ttl_seconds),
            req.image.clone(),
        )
        .await
        .map_err(|e| match e {
            bootstrap::MintError::Invalid(m) => ApiError::BadRequest(m),
            other => ApiError::Internal(other.to_string()),
        })?;
        self.metrics
            .bootstrap_tokens
            .with_label_values(&["minted"])
            .inc();
        let mut rec = self.record(Event::TokenMint, Decision::Allow, "minted by admin");
        rec.request_id = Some(request_id.to_owned());
        rec.token_id = Some(minted.token_id.clone());
        rec.role = Some(req.roles.join(","));
        rec.image = req.image.clone();
        rec.ttl_seconds = Some(ttl_seconds);
        rec.expires_at = Some(rfc3339(minted.expires_at));
        self.audit(rec).await?;
        Ok(MintTokenResponse {
            token_id: minted.token_id,
            token: minted.token,
            expires_at: rfc3339(minted.expires_at),
        })
    }

    /// Revokes an unredeemed bootstrap token (admin).
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
        let mut rec = self.record(Event::TokenRevoke, Decision::Allow, "revoked by admin");
        rec.request_id = Some(request_id.to_owned());
        rec.token_id = Some(token_id.to_owned());
        self.audit(rec).await
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
        let newly = self.store.mark_lease_revoked(lease_id, self.now()).await?;
        let mut rec = self.record(
            Event::LeaseRevoke,
            Decision::Allow,
            if upstream_revoked {
                "revoked upstream"
            } else {
                "recorded; the credential stays valid until it expires (backend cannot revoke)"
            },
        );
        rec.request_id = Some(request_id.to_owned());
        rec.identity = Some(lease.subject.clone());
        rec.issuer = Some(lease.issuer.clone());
        rec.role = Some(lease.role.clone());
        rec.backend = Some(lease.backend.clone());
        rec.lease_id = Some(lease_id.to_owned());
        rec.fingerprint = Some(lease.fingerprint.clone());
        rec.upstream_lease = lease.upstream_lease.clone();
        self.audit(rec).await?;
        Ok(RevokeResult {
            lease_id: lease_id.to_owned(),
            already_revoked: !newly,
            upstream_revoked,
            expires_at: rfc3339(lease.expires_at),
        })
    }

    /// Periodic backend upkeep (the Vault backend renews its own token or logs in again).
    pub async fn maintain_backends(&self) {
        for backend in self.backends.iter() {
            if let Err(e) = backend.maintain().await {
                warn!(backend = backend.kind(), error = %e, "backend upkeep failed; will retry");
            }
        }
    }

    /// Revoke-on-expiry: revokes upstream the expired, unrevoked leases of backends that can
    /// revoke (Vault), marks them revoked and audits each. Returns how many were revoked;
    /// failures are logged and retried at the next sweep.
    pub async fn sweep_expired_leases(&self) -> Result<usize, ApiError> {
        const BATCH: usize = 100;
        let mut revoked = 0;
        for kind in [crate::issue::vault::KIND] {
            let Some(backend) = self.backends.get(kind) else {
                continue;
            };
            if kind == crate::issue::vault::KIND
                && !self
                    .config
                    .backends
                    .vault
                    .as_ref()
                    .is_some_and(|v| v.revoke_on_expiry)
            {
                continue;
            }
            let now = self.now();
            for lease in self.store.expired_leases(kind, now, BATCH).await? {
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
                if !self.store.mark_lease_revoked(&lease.lease_id, now).await? {
                    continue;
                }
                revoked += 1;
                let mut rec = self.record(
                    Event::LeaseRevoke,
                    Decision::Allow,
                    if upstream {
                        "expired; revoked upstream"
                    } else {
                        "expired; nothing to revoke upstream"
                    },
                );
                rec.identity = Some(lease.subject.clone());
                rec.issuer = Some(lease.issuer.clone());
                rec.role = Some(lease.role.clone());
                rec.backend = Some(lease.backend.clone());
                rec.lease_id = Some(lease.lease_id.clone());
                rec.fingerprint = Some(lease.fingerprint.clone());
                rec.upstream_lease = lease.upstream_lease.clone();
                rec.expires_at = Some(rfc3339(lease.expires_at));
                self.audit(rec).await?;
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
                info!(digest = %set.digest, rules = set.rules.len(), "policies reloaded");
                let rec = self.record(
                    Event::PolicyReload,
                    Decision::Allow,
                    format!("loaded {} rules, digest {}", set.rules.len(), set.digest),
                );
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
                let rec = self.record(
                    Event::PolicyReload,
                    Decision::Deny,
                    format!(
                        "rejected ({} problems, first: {}); last good set kept",
                        errors.0.len(),
                        errors.0.first().map(|e| e.to_string()).unwrap_or_default()
                    ),
                );
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
        checks.insert(
            "store",
            self.store
                .audit_head()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        );
        checks.insert("policy", Ok(()));
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
