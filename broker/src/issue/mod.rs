//! Issuing credentials: the [`Backend`] trait, its implementations, and the lifetime of what
//! they issue.
//!
//! - [`jwt`]: broker-signed JWTs, with rotating signing keys and a published JWKS.
//! - [`kek`]: the signing keys' private halves sealed at rest under a key-encryption key.
//! - [`sts`]: AWS STS AssumeRole with a scoped-down session policy, tags, SourceIdentity.
//! - [`vault`]: HashiCorp Vault — KV v2, dynamic secrets with leases, PKI, child tokens.
//! - [`cache`]: the upstream cache, single-flight coalescing and per-backend limits.
//! - [`lifetime`]: the TTL to ask a backend for and the lifetime handed out (role cap,
//!   upstream expiry, `refresh_after`), as pure functions.
//! - [`pod_watch`]: revocation of a pod's leases when it is deleted (a watch on pods).
//! - [`status`]: the broker JWTs' revocation list and RFC 7662 introspection.
//! - [`renewal`]: renewal of issued upstream leases (Vault dynamic secrets) while the
//!   workload holds them, up to the broker's lease end.
//!
//! [`Backends::from_config`] builds the configured backends. Beyond issuing, a backend
//! declares what it can do: renew and revoke upstream (Vault leases; STS sessions and
//! broker-signed JWTs cannot be revoked and live until they expire), upkeep of its own
//! upstream login ([`Backend::maintain`]), and whether the broker should revoke its leases
//! upstream once they expire ([`Backend::revokes_on_expiry`]).
//!
//! A role's settings reach a backend already parsed into its own type ([`RoleSettings`], from
//! `policy::settings`): policy loading parses them through [`Backends::validate_role`], and
//! issuance reads typed fields, never JSON. A backend handed another kind's settings returns
//! [`BackendError::Internal`].

pub mod cache;
pub mod jwt;
pub mod kek;
pub mod lifetime;
pub mod pod_watch;
pub mod renewal;
pub mod status;
pub mod sts;
pub mod vault;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard::Secret;
use lanyard::clock::Clock;

use self::jwt::{JwtBackend, KeyRing};
use self::sts::StsBackend;
use self::vault::VaultBackend;
use crate::authn::Identity;
use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::policy::{Role, RoleError, RoleSettings, RoleSpec};

/// Everything a backend needs to issue one credential.
#[derive(Debug)]
pub struct IssueRequest<'a> {
    /// Who it is for.
    pub identity: &'a Identity,
    /// The role granted (backend settings, scope, cap).
    pub role: &'a Role,
    /// Requested lifetime, already clamped to the role's cap.
    pub ttl: Duration,
    /// Now, from the broker's clock.
    pub now: SystemTime,
    /// The broker's request id, for upstream correlation.
    pub request_id: &'a str,
    /// The broker's lease id for this credential (the `jti` of a broker-signed JWT).
    pub lease_id: &'a str,
}

/// A credential a backend issued.
#[derive(Debug)]
pub struct Issued {
    /// Secret fields, e.g. `token`.
    pub data: BTreeMap<String, Secret>,
    /// When it stops working: its real expiry. Never later than `now` + the role's cap;
    /// usually `now + ttl`, earlier if upstream says so (a lease, a cached credential's
    /// remaining life), later only where upstream has a minimum (STS: 900 s).
    pub expires_at: SystemTime,
    /// The upstream lease or session id (Vault `lease_id`, STS assumed-role id), if any.
    pub upstream_lease: Option<String>,
    /// Whether [`Backend::renew`] can extend it.
    pub renewable: bool,
}

/// What the broker knows of a lease when it asks a backend to renew or revoke it.
#[derive(Debug, Clone)]
pub struct LeaseRef<'a> {
    /// The broker's lease id.
    pub lease_id: &'a str,
    /// The backend's own id, if it returned one.
    pub upstream_lease: Option<&'a str>,
    /// The role it was issued for.
    pub role: &'a str,
}

/// Backend failures. Mapped to HTTP in `error.rs` (upstream → 503, or 502 when the upstream
/// refused and a retry cannot help; config → 500; refused → 403).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The upstream service failed or is unreachable. The message is a summary that never
    /// echoes request bodies or secrets.
    #[error("{backend} upstream failed: {message}")]
    Upstream {
        /// Backend kind.
        backend: &'static str,
        /// Summary.
        message: String,
        /// Whether a retry may succeed: `false` for the upstream's refusal (STS
        /// `AccessDenied`, a Vault 403 or 400), which clients must not retry.
        retryable: bool,
    },
    /// The role's settings are unusable (caught at policy load where possible).
    #[error("role misconfigured: {0}")]
    Config(String),
    /// The backend cannot do this (e.g. renew an STS session).
    #[error("{0} is not supported by this backend")]
    Unsupported(&'static str),
    /// A local failure (key material, serialization).
    #[error("internal: {0}")]
    Internal(String),
    /// This identity cannot receive this role's credential (e.g. the role's session policy
    /// needs a Kubernetes namespace the identity does not have). The caller's fault.
    #[error("{0}")]
    Refused(String),
}

/// A credential backend.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The kind named by roles' `backend` field.
    fn kind(&self) -> &'static str;

    /// Issues a credential.
    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, BackendError>;

    /// Extends a renewable lease to `ttl` from now.
    async fn renew(
        &self,
        _lease: &LeaseRef<'_>,
        _ttl: Duration,
    ) -> Result<SystemTime, BackendError> {
        Err(BackendError::Unsupported("renew"))
    }

    /// Revokes a lease upstream. Backends without upstream revocation return `Ok(false)`:
    /// the credential stays valid until it expires.
    async fn revoke(&self, _lease: &LeaseRef<'_>) -> Result<bool, BackendError> {
        Ok(false)
    }

    /// Drops the upstream credentials cached for `role` (every session of its upstream role),
    /// so the next request makes a new upstream call; returns how many were dropped. Default:
    /// nothing is cached.
    fn forget_role(&self, _role: &Role) -> usize {
        0
    }

    /// Periodic upkeep (e.g. renewing the broker's own upstream token). Default: nothing.
    async fn maintain(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Whether the broker should [`revoke`](Backend::revoke) this backend's leases upstream
    /// once they expire (the revoke-on-expiry sweep). Default: no.
    fn revokes_on_expiry(&self) -> bool {
        false
    }

    /// Whether the broker keeps [renewing](Backend::renew) this backend's renewable leases
    /// that are shorter than the TTL granted, up to it ([`renewal`]). Default: no.
    fn renews_leases(&self) -> bool {
        false
    }
}

/// The configured backends by kind.
#[derive(Debug, Clone, Default)]
pub struct Backends(BTreeMap<&'static str, Arc<dyn Backend>>);

/// Why the configured backends cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// `backends.vault` is unusable.
    #[error(transparent)]
    Vault(#[from] vault::SetupError),
}

impl Backends {
    /// The backends `config` enables: `jwt` (signing with `keys`) always, `vault` and
    /// `aws-sts` when their section is present. Nothing is contacted: Vault logs in at first
    /// use, so a Vault that is down at start does not stop the broker.
    pub async fn from_config(
        config: &BrokerConfig,
        keys: Arc<KeyRing>,
        clock: &Arc<dyn Clock>,
        metrics: &Metrics,
    ) -> Result<Self, SetupError> {
        let mut backends = Self::default();
        backends.insert(Arc::new(JwtBackend::new(keys, config.public_url.clone())));
        // Each replica applies its share of the upstream limits.
        let shared = config.backends.per_replica();
        if let Some(cfg) = &shared.vault {
            let backend = VaultBackend::new(cfg, clock.clone(), metrics.clone())?;
            backends.insert(Arc::new(backend));
        }
        if let Some(cfg) = &shared.aws_sts {
            let backend = StsBackend::from_config(cfg, clock.clone(), metrics.clone()).await;
            backends.insert(Arc::new(backend));
        }
        Ok(backends)
    }

    /// The backends whose leases the broker revokes upstream once they expire.
    pub fn revoking_on_expiry(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.0.values().filter(|b| b.revokes_on_expiry())
    }
}

impl Backends {
    /// Adds a backend.
    pub fn insert(&mut self, backend: Arc<dyn Backend>) {
        self.0.insert(backend.kind(), backend);
    }

    /// Every backend.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.0.values()
    }

    /// The backend of a kind.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Backend>> {
        self.0.get(kind)
    }

    /// Parses a role's settings for policy loading: its backend must be configured, and
    /// the settings must parse as that backend's (the error says what to fix).
    pub fn validate_role(&self, spec: &RoleSpec<'_>) -> Result<RoleSettings, RoleError> {
        if self.get(spec.backend).is_none() && RoleSettings::KINDS.contains(&spec.backend) {
            return Err(RoleError::NotConfigured {
                backend: spec.backend.to_owned(),
                configured: self.0.keys().map(|k| (*k).to_owned()).collect(),
            });
        }
        RoleSettings::parse(spec)
    }
}

/// The error for a role whose settings are not of the issuing backend's kind: a bug (the
/// broker picks the backend by the role's kind), never the caller's fault.
pub(crate) fn settings_mismatch(backend: &'static str, role: &Role) -> BackendError {
    BackendError::Internal(format!(
        "role `{}` has {} settings, not {backend} settings",
        role.name,
        role.settings.kind()
    ))
}

/// A backend that only parses roles (for offline `policy check` / `policy explain`).
#[derive(Debug)]
struct ValidateOnly {
    kind: &'static str,
}

#[async_trait::async_trait]
impl Backend for ValidateOnly {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn issue(&self, _req: &IssueRequest<'_>) -> Result<Issued, BackendError> {
        Err(BackendError::Internal(
            "offline validation backend cannot issue".into(),
        ))
    }
}

/// Every backend kind, able to parse roles (as the broker does) but not to issue: for
/// offline policy tools.
pub fn offline_backends() -> Backends {
    let mut b = Backends::default();
    for kind in RoleSettings::KINDS {
        b.insert(Arc::new(ValidateOnly { kind }));
    }
    b
}

#[cfg(test)]
mod tests {
    use lanyard::clock::ManualClock;
    use serde_json::{Value, json};

    use super::*;
    use crate::config::{Algorithm, SigningConfig};
    use crate::policy::settings::tests::raw;
    use crate::store::Store;
    use crate::store::memory::MemoryStore;

    fn config(backends: Value) -> BrokerConfig {
        serde_json::from_value(json!({
            "public_url": "https://lanyard.example:8443",
            "tls": {"cert_file": "cert.pem", "key_file": "key.pem"},
            "policies_dir": "policies",
            "store": {"sqlite_path": "lanyard.db"},
            "backends": backends,
        }))
        .expect("config")
    }

    async fn build(backends: Value) -> Result<Backends, SetupError> {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::at_unix(1_800_000_000));
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let signing = SigningConfig {
            algorithm: Algorithm::ES256,
            rotate_after_seconds: 86_400,
            publish_ahead_seconds: 3_600,
            overlap_seconds: 3600,
            ..SigningConfig::default()
        };
        let keys = KeyRing::load_or_create(store, clock.clone(), signing)
            .await
            .expect("key ring");
        Backends::from_config(&config(backends), Arc::new(keys), &clock, &Metrics::new()).await
    }

    fn kinds<'a>(backends: impl Iterator<Item = &'a Arc<dyn Backend>>) -> Vec<&'static str> {
        backends.map(|b| b.kind()).collect()
    }

    #[tokio::test]
    async fn jwt_is_always_built_and_upstreams_when_configured() {
        let only_jwt = build(json!({})).await.expect("builds");
        assert_eq!(kinds(only_jwt.iter()), ["jwt"]);
        assert_eq!(kinds(only_jwt.revoking_on_expiry()), Vec::<&str>::new());

        let all = build(json!({
            "aws_sts": {"endpoint_url": "http://127.0.0.1:1"},
            "vault": {"address": "http://127.0.0.1:1", "auth": {"token": {"token_file": "t"}}},
        }))
        .await
        .expect("builds");
        assert_eq!(kinds(all.iter()), [sts::KIND, "jwt", vault::KIND]);
    }

    #[tokio::test]
    async fn only_backends_that_declare_it_revoke_on_expiry() {
        let vault = |revoke: bool| {
            json!({
                "aws_sts": {"endpoint_url": "http://127.0.0.1:1"},
                "vault": {
                    "address": "http://127.0.0.1:1",
                    "auth": {"token": {"token_file": "t"}},
                    "revoke_on_expiry": revoke,
                },
            })
        };
        let on = build(vault(true)).await.expect("builds");
        assert_eq!(kinds(on.revoking_on_expiry()), [vault::KIND]);
        let off = build(vault(false)).await.expect("builds");
        assert_eq!(kinds(off.revoking_on_expiry()), Vec::<&str>::new());
        assert_eq!(off.iter().count(), 3, "still configured, just not swept");
    }

    #[tokio::test]
    async fn an_unusable_vault_section_is_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = dir.path().join("no-such-ca.pem");
        let err = build(json!({
            "vault": {
                "address": "https://vault.example:8200",
                "ca_file": missing,
                "auth": {"token": {"token_file": "t"}},
            },
        }))
        .await
        .expect_err("the CA file is missing");
        assert!(
            matches!(err, SetupError::Vault(vault::SetupError::Client(_))),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("backends.vault: cannot build the client"),
            "{msg}"
        );
        assert!(msg.contains("no-such-ca.pem"), "{msg}");
    }

    #[test]
    fn roles_parse_only_for_configured_backends() {
        let mut jwt_only = Backends::default();
        jwt_only.insert(Arc::new(ValidateOnly { kind: "jwt" }));
        let arn = "arn:aws:iam::123456789012:role/app";
        let sts_role = raw("s3", "aws-sts", json!({"role_arn": arn}), &[], 900);

        let settings = jwt_only
            .validate_role(&raw("app", "jwt", json!({}), &[], 60).spec())
            .expect("jwt is configured");
        assert_eq!(settings.kind(), "jwt");
        assert_eq!(
            jwt_only.validate_role(&sts_role.spec()),
            Err(RoleError::NotConfigured {
                backend: "aws-sts".into(),
                configured: vec!["jwt".into()],
            })
        );
        assert!(matches!(
            jwt_only.validate_role(&raw("x", "ldap", json!({}), &[], 60).spec()),
            Err(RoleError::UnknownBackend { .. })
        ));

        // Offline, every kind parses, with the same errors as a broker that has it.
        let offline = offline_backends();
        assert_eq!(
            offline
                .validate_role(&sts_role.spec())
                .expect("aws-sts offline")
                .kind(),
            "aws-sts"
        );
        let bad = raw("db", "vault", json!({"kind": "kv3"}), &[], 60);
        assert_eq!(
            offline.validate_role(&bad.spec()),
            RoleSettings::parse(&bad.spec())
        );
        assert!(offline.validate_role(&bad.spec()).is_err());
    }
}
