//! The audit log: one hash-chained JSON line per issuance, denial, token mint/redeem,
//! revocation and policy reload.
//!
//! Each line carries `seq`, `prev` (the previous record's hash) and `hash` — SHA-256 over
//! the line's exact bytes without the `hash` field (so over `seq` and `prev` too) — so
//! editing, dropping or reordering any record breaks the chain at a point [`fn@verify`]
//! reports. Records hold a fingerprint of
//! the credential, never the credential.
//!
//! - [`chain`]: the writer ([`AuditLog`]), its sinks (file or stdout) and fingerprints.
//! - [`mod@line`]: the line format, hashing and the bounded line parser ([`parse_line`]).
//! - [`mod@verify`]: `audit verify FILE`.
//! - [`mod@query`]: `audit query FILE` filters.

pub mod chain;
pub mod line;
pub mod query;
pub mod verify;

use serde::{Deserialize, Serialize};

pub use chain::{AuditError, AuditLog, AuditSink, Fingerprinter};
pub use line::{LineError, MAX_LINE_BYTES, ParsedLine, parse_line};
pub use query::{Filter, QueryError, query};
pub use verify::{VerifyFailure, VerifyReport, verify};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A credential was issued.
    Issue,
    /// A request was refused (authentication or policy).
    Deny,
    /// A bootstrap token was minted.
    TokenMint,
    /// A bootstrap token was redeemed.
    TokenRedeem,
    /// A bootstrap token was revoked.
    TokenRevoke,
    /// A lease was revoked.
    LeaseRevoke,
    /// Policies were reloaded (or a reload was rejected).
    PolicyReload,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed / succeeded.
    Allow,
    /// Denied / failed.
    Deny,
}

/// One audit record, before chaining. Never holds a secret: `fingerprint` is an HMAC of the
/// credential under a broker-local key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339 time.
    pub time: String,
    /// What happened.
    pub event: Event,
    /// Allow or deny.
    pub decision: Decision,
    /// Why (rule name, denial reason, reload outcome).
    pub reason: String,
    /// The request id, when the record comes from an API request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Identity subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Identity issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Role name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Backend kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Granted TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Whether the requested TTL was clamped to the role's cap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ttl_clamped: bool,
    /// Credential expiry (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Lease id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// Bootstrap token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Image digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Credential fingerprint (`hmac-sha256:` + 32 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The upstream's own lease or session id (Vault `lease_id` or token accessor, STS
    /// assumed-role id). An identifier, never a credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_lease: Option<String>,
}

impl AuditRecord {
    /// A record with the required fields; fill the rest with struct update syntax.
    pub fn new(time: String, event: Event, decision: Decision, reason: impl Into<String>) -> Self {
        Self {
            time,
            event,
            decision,
            reason: reason.into(),
            request_id: None,
            identity: None,
            issuer: None,
            role: None,
            backend: None,
            ttl_seconds: None,
            ttl_clamped: false,
            expires_at: None,
            lease_id: None,
            token_id: None,
            image: None,
            fingerprint: None,
            upstream_lease: None,
        }
    }
}
