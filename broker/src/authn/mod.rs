//! Workload authentication: who is asking.
//!
//! - [`jwt`]: JWTs from trusted issuers (Kubernetes service-account tokens, other OIDC
//!   issuers), verified against each issuer's JWKS.
//! - [`jwks`]: fetching, caching and refreshing JWKS (OIDC discovery or a file).
//! - [`bootstrap`]: single-use bootstrap tokens (random 256-bit, stored hashed), and their
//!   redemption: reserved, then committed with the issuance or released.
//! - [`session`]: the session tokens handed out after a bootstrap token is redeemed — typed
//!   claims, session ids, minting and verification.
//! - [`revocation`]: which sessions are revoked — an in-memory set refreshed from the store,
//!   its staleness bound, and failing closed past it.

pub mod bootstrap;
pub mod jwks;
pub mod jwt;
pub mod revocation;
pub mod session;

use serde::Serialize;

use crate::config::{MAX_LEEWAY_SECONDS, MIN_JWKS_REFRESH_FLOOR_SECONDS};

/// Issuer name recorded for identities proven with a bootstrap token.
pub const BOOTSTRAP_ISSUER: &str = "lanyard:bootstrap";

/// An authenticated workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The issuer that vouched for it: an OIDC issuer URL, or [`BOOTSTRAP_ISSUER`].
    pub issuer: String,
    /// The workload's name: the token's `sub` (for Kubernetes
    /// `system:serviceaccount:<namespace>:<name>`), or `bootstrap:<token id>`.
    pub subject: String,
    /// Kubernetes claims, when the token is a projected service-account token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesIdentity>,
    /// The binding of the bootstrap token it redeemed, if it used one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapBinding>,
    /// The SPIFFE ID, when a SPIFFE trust domain's bundle verified the token (a JWT-SVID):
    /// then equal to `subject` and always in that issuer's trust domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Every claim of the verified token (issuers' JWTs; empty for bootstrap and session
    /// identities), for policies' claim selectors. Never serialized: audit records and
    /// answers name the identity, not its claims.
    #[serde(skip)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl Identity {
    /// A short, log-safe description, e.g. `system:serviceaccount:shop:api`.
    pub fn display_name(&self) -> &str {
        &self.subject
    }
}

/// Claims of a Kubernetes projected service-account token (`kubernetes.io`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubernetesIdentity {
    /// Namespace of the pod.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// Pod name, when the token is bound to a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Pod UID, when the token is bound to a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// What the broker's admission records say about the pod: filled in by the broker after
    /// authentication (`gate.pod_tokens: gate`), never from the token.
    #[serde(skip)]
    pub admission: PodAdmission,
}

/// The admission record of a pod token's pod, as the broker found it in its store (trust
/// source 1 of the image gate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PodAdmission {
    /// Not looked up: `gate.pod_tokens: ignore` (the token names no image).
    #[default]
    NotLooked,
    /// Looked up, and there is none (the pod was not admitted through the webhook, its record
    /// was pruned, or the token names no pod): an unknown workload.
    NoRecord,
    /// The pod was admitted with these images.
    Record {
        /// `repo@sha256:…`, as resolved and checked at admission.
        images: Vec<String>,
        /// Every container's image was written as a digest reference; `false`: tag-based,
        /// weaker.
        pinned: bool,
        /// When the pod was admitted (the answer's `admitted_at`, from which the sidecar
        /// measures admission → credentials on disk); `None` where no record was read
        /// (`policy explain`).
        admitted_at: Option<std::time::SystemTime>,
    },
}

/// What a bootstrap token was bound to when it was minted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootstrapBinding {
    /// Public id of the token.
    pub token_id: String,
    /// Roles the token may be used for.
    pub roles: Vec<String>,
    /// Image digest the token was bound to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Why authentication failed. The HTTP answer is always the same opaque 401; the reason goes
/// to the audit log and metrics (as [`AuthnError::reason`], a bounded label set).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthnError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer credential")]
    Missing,
    /// Too large to parse.
    #[error("credential too large")]
    TooLarge,
    /// Not a well-formed JWT (segments, base64, JSON).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The `alg` is not on the allow-list (`none`, HMAC, ...).
    #[error("algorithm not allowed: {0}")]
    AlgorithmNotAllowed(String),
    /// `iss` is not a trusted issuer.
    #[error("untrusted issuer")]
    UntrustedIssuer,
    /// No key with that `kid` even after refreshing the JWKS.
    #[error("unknown key id")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` does not name an allowed audience.
    #[error("audience not allowed")]
    WrongAudience,
    /// Required claims are missing or have the wrong type.
    #[error("missing or invalid claim: {0}")]
    InvalidClaims(String),
    /// The issuer's keys could not be fetched and none are cached.
    #[error("issuer keys unavailable")]
    KeysUnavailable,
    /// Bootstrap token not found (never minted, or revoked).
    #[error("unknown bootstrap token")]
    UnknownToken,
    /// Bootstrap token already redeemed (and past its re-redemption grace window).
    #[error("bootstrap token already used")]
    TokenReused,
    /// Bootstrap token past its expiry.
    #[error("bootstrap token expired")]
    TokenExpired,
    /// A bootstrap token where none is accepted (revoking a lease): it is not looked up, and
    /// so neither reserved nor spent.
    #[error("a bootstrap token is not accepted here")]
    BootstrapNotAccepted,
    /// The session (or the bootstrap token that would start it) was revoked.
    #[error("session revoked")]
    SessionRevoked,
}

impl AuthnError {
    /// A stable, low-cardinality reason for metrics and audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing_credential",
            Self::TooLarge => "too_large",
            Self::Malformed(_) => "malformed",
            Self::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::InvalidClaims(_) => "invalid_claims",
            Self::KeysUnavailable => "keys_unavailable",
            Self::UnknownToken => "unknown_token",
            Self::TokenReused => "token_reused",
            Self::TokenExpired => "token_expired",
            Self::BootstrapNotAccepted => "bootstrap_not_accepted",
            Self::SessionRevoked => "session_revoked",
        }
    }
}

/// Why an issuer's configuration is unusable (found when the verifier is built). Each names
/// the issuer and what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerConfigError {
    /// `leeway_seconds` is above [`MAX_LEEWAY_SECONDS`].
    #[error(
        "issuer `{issuer}`: leeway_seconds {leeway_seconds} is above the maximum {MAX_LEEWAY_SECONDS}; lower it"
    )]
    Leeway {
        /// The issuer.
        issuer: String,
        /// The configured leeway.
        leeway_seconds: u64,
    },
    /// `min_refresh_interval_seconds` is below [`MIN_JWKS_REFRESH_FLOOR_SECONDS`], so tokens
    /// with made-up `kid`s could make the broker fetch the JWKS without pause.
    #[error(
        "issuer `{issuer}`: min_refresh_interval_seconds {min_refresh_interval_seconds} is below the minimum {MIN_JWKS_REFRESH_FLOOR_SECONDS}; raise it"
    )]
    MinRefreshInterval {
        /// The issuer.
        issuer: String,
        /// The configured interval.
        min_refresh_interval_seconds: u64,
    },
    /// `audiences` is empty.
    #[error("issuer `{issuer}`: list at least one accepted audience in `audiences`")]
    NoAudiences {
        /// The issuer.
        issuer: String,
    },
    /// `algorithms` is empty.
    #[error("issuer `{issuer}`: `algorithms` must list at least one algorithm")]
    NoAlgorithms {
        /// The issuer.
        issuer: String,
    },
    /// The same issuer appears twice.
    #[error("issuer `{issuer}` is configured twice; merge the entries")]
    Duplicate {
        /// The issuer.
        issuer: String,
    },
    /// Its keys cannot be fetched or read as configured: an invalid or plain-http URL to a
    /// non-loopback host, a CA file or JWKS file that cannot be read or parsed.
    #[error("issuer `{issuer}`: {reason}")]
    KeySource {
        /// The issuer.
        issuer: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
}
