//! The broker's HTTP API on the wire. These types are the contract between the broker, the
//! sidecar and applications; `docs/API.md` documents them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Secret;

/// Path of the issuance endpoint.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";
/// Largest request body the broker accepts, in bytes.
pub const MAX_REQUEST_BODY_BYTES: usize = 64 * 1024;
/// Largest response body a client accepts, in bytes.
pub const MAX_RESPONSE_BODY_BYTES: usize = 1024 * 1024;

/// `POST /v1/credentials` body. Both fields narrow what the policy grants; neither widens it.
///
/// A plain container: the broker bounds the fields when it checks the request (1 to 64 roles,
/// each a policy role name of at most 63 bytes; `ttl_seconds` at least 1) and answers 400
/// otherwise, since what a role name may be is the policy's rule, not the wire format's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    /// Only these roles (default: every role the policy grants this identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// A TTL shorter than each role's cap (default: the role's default TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// `POST /v1/credentials` success body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialResponse {
    /// The broker's id for this request (also in its audit log and logs).
    pub request_id: String,
    /// The workload identity the broker authenticated.
    pub identity: String,
    /// One entry per granted role.
    pub credentials: Vec<Credential>,
    /// When the request authenticated with a single-use bootstrap token: a broker-signed
    /// session token to authenticate later refreshes with (the bootstrap token is spent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    /// When the image gate took the workload's images from its pod's admission record: when
    /// the pod was admitted (RFC 3339, milliseconds). The sidecar reports admitted →
    /// credentials on disk from it (`lanyard_sidecar_admission_to_credentials_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<String>,
}

impl CredentialResponse {
    /// The credential issued for `role`, if it was granted.
    pub fn credential(&self, role: &str) -> Option<&Credential> {
        self.credentials.iter().find(|c| c.role == role)
    }
}

impl Credential {
    /// A secret field, e.g. `token`, or `access_key_id`.
    pub fn secret(&self, field: &str) -> Option<&Secret> {
        self.data.get(field)
    }

    /// When the credential stops working (`None` if the broker sent an unparseable time).
    pub fn expires_at_time(&self) -> Option<std::time::SystemTime> {
        crate::clock::parse_rfc3339(&self.expires_at)
    }

    /// When a client should fetch a new one.
    pub fn refresh_after_time(&self) -> Option<std::time::SystemTime> {
        crate::clock::parse_rfc3339(&self.refresh_after)
    }
}

/// A broker-issued session token, returned after a bootstrap token is redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Bearer token for the next `POST /v1/credentials`.
    pub token: Secret,
    /// When it stops being accepted (RFC 3339).
    pub expires_at: String,
}

/// One issued credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// Role name from the policy.
    pub role: String,
    /// Backend kind that issued it: `jwt`, `aws-sts`, `vault`.
    pub kind: String,
    /// The secret material, by field name (e.g. `token`; `access_key_id`,
    /// `secret_access_key`, `session_token`).
    pub data: BTreeMap<String, Secret>,
    /// When the credential stops working (RFC 3339, UTC).
    pub expires_at: String,
    /// When a client should fetch a new one (RFC 3339, UTC).
    pub refresh_after: String,
    /// Granted lifetime in seconds.
    pub ttl_seconds: u64,
    /// The broker's lease id, for revocation and audit lookups.
    pub lease_id: String,
    /// True when the requested TTL was above the role's cap and was lowered to it.
    #[serde(default)]
    pub ttl_clamped: bool,
}

/// Error body: `{"error": {"code": "...", "message": "...", "request_id": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorInfo,
}

/// Details of an error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation; never holds a secret.
    pub message: String,
    /// The broker's request id, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Whether retrying later may succeed.
    #[serde(default)]
    pub retryable: bool,
}

/// Stable error codes. New codes may be added; clients treat unknown ones by HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the request is malformed.
    BadRequest,
    /// 401: no credential, or it is invalid, expired, reused or unknown.
    Unauthenticated,
    /// 403: the identity is valid but policy grants none of the requested roles.
    Forbidden,
    /// 404: no such resource (lease, route).
    NotFound,
    /// 408: the request body did not arrive within the broker's body deadline.
    BodyTimeout,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 429: too many requests.
    RateLimited,
    /// 503: an upstream (STS, Vault, JWKS endpoint) failed; retry later.
    UpstreamUnavailable,
    /// 502: an upstream (STS, Vault) refused the request (e.g. STS `AccessDenied`, Vault
    /// `permission denied`); asking again gets the same answer until its policy or the
    /// role's settings change, so clients do not retry it.
    UpstreamRefused,
    /// 503: the broker is not ready (e.g. no valid policy loaded).
    NotReady,
    /// 503: the broker did not answer within its request deadline; retry later.
    DeadlineExceeded,
    /// 503: the broker's store cannot be used for now (locked by another process, unreadable);
    /// retry later.
    StoreUnavailable,
    /// 403: the image gate refused: an image the workload runs is dirty, incomplete or
    /// unscanned, or its rule requires an image and none is known. The message names the
    /// image, the rule and where the finding is (never the secret); fix the image.
    ImageRefused,
    /// 503: the image gate is scanning an image the workload runs (or could not reach its
    /// registry); retry shortly.
    ScanPending,
    /// 500: a bug or an unexpected local failure.
    Internal,
    /// Any code this client does not know yet.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::BodyTimeout => "body_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::RateLimited => "rate_limited",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::UpstreamRefused => "upstream_refused",
            Self::NotReady => "not_ready",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::StoreUnavailable => "store_unavailable",
            Self::ImageRefused => "image_refused",
            Self::ScanPending => "scan_pending",
            Self::Internal => "internal",
            Self::Unknown => "unknown",
        }
    }

    /// The HTTP status the broker sends with this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthenticated => 401,
            Self::Forbidden | Self::ImageRefused => 403,
            Self::NotFound => 404,
            Self::BodyTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::RateLimited => 429,
            Self::UpstreamRefused => 502,
            Self::UpstreamUnavailable
            | Self::NotReady
            | Self::DeadlineExceeded
            | Self::StoreUnavailable
            | Self::ScanPending => 503,
            Self::Internal | Self::Unknown => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Admin API: `POST /v1/admin/tokens` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintTokenRequest {
    /// Roles the token may redeem (policy must also grant them via `bootstrap_role`).
    pub roles: Vec<String>,
    /// How long the token stays redeemable (default: the broker's
    /// `bootstrap.default_ttl_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// The image the token is bound to, if any: `HOST/REPOSITORY@sha256:…` (a tag is resolved
    /// to its digest through the registry at mint time; a bare `sha256:…` only when the
    /// broker already has a verdict for it). The image gate then checks it at every issuance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Admin API: `POST /v1/admin/scans` body — scan an image ahead (CI, right after a push).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanRequest {
    /// `HOST/REPOSITORY:TAG` or `HOST/REPOSITORY@sha256:…`.
    pub image: String,
    /// Scan again even if a verdict under the current ruleset exists.
    #[serde(default)]
    pub force: bool,
    /// Seconds to wait for the verdict (default: the broker's `gate.scan_deadline_seconds`;
    /// at most 300). The scan goes on after that; ask again for the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<u64>,
}

/// One finding as the gate keeps it: rule and location, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateFinding {
    /// Rule id.
    pub rule: String,
    /// `env`, `label`, `history` or `file`.
    pub location_kind: String,
    /// Layer index, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// The file's path, or the ENV, label or build-argument name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The scanner's fingerprint, for an allowlist entry.
    pub fingerprint: String,
    /// The platform, for an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// Admin API: the answer of `POST /v1/admin/scans` and `GET /v1/admin/verdicts/{digest}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictResponse {
    /// The manifest or index digest (a tag resolved).
    pub digest: String,
    /// `REPOSITORY@DIGEST`, when the repository is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `clean`, `dirty`, `incomplete`, or `pending` (the scan did not finish within the wait).
    pub verdict: String,
    /// The ruleset version of the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ruleset_version: Option<String>,
    /// The verdict is from an older ruleset (a re-scan is due).
    #[serde(default)]
    pub previous_ruleset: bool,
    /// Findings that count, with the broker's allowlist applied.
    #[serde(default)]
    pub findings: Vec<GateFinding>,
    /// Why the scan is incomplete.
    #[serde(default)]
    pub incomplete: Vec<String>,
    /// Platforms scanned, for an index.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// When it was scanned (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanned_at: Option<String>,
    /// The exemption's reason, if the digest is exempted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exemption: Option<String>,
}

/// Admin API: `POST /v1/admin/exemptions` body — exempt one image digest from the gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExemptionRequest {
    /// `sha256:…`.
    pub digest: String,
    /// Why (required; in every audit record of the exemption's use).
    pub reason: String,
}

/// Admin API: `POST /v1/admin/tokens` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintTokenResponse {
    /// Public id of the token (safe to log; used to revoke it).
    pub token_id: String,
    /// The bootstrap token itself. Shown once; the broker keeps only its hash.
    pub token: Secret,
    /// When it stops being redeemable (RFC 3339).
    pub expires_at: String,
}

/// Admin API: `POST /v1/admin/sessions/revoke` body — revoke the session a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeSessionRequest {
    /// A session token of the session to revoke (never recorded).
    pub session_token: Secret,
}

/// Admin API: answer to a session revocation (`DELETE /v1/admin/sessions/{session_id}`,
/// `POST /v1/admin/sessions/revoke`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRevocationResponse {
    /// The session (`ss_…`).
    pub session_id: String,
    /// It had been revoked before (nothing changed).
    pub already_revoked: bool,
    /// When the session would have ended anyway (RFC 3339): the revocation is kept until then.
    pub expires_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_error_codes_parse() {
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"brand_new","message":"m"}}"#).expect("parse");
        assert_eq!(body.error.code, ErrorCode::Unknown);
    }

    #[test]
    fn codes_travel_under_their_names() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::Unauthenticated,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::BodyTimeout,
            ErrorCode::PayloadTooLarge,
            ErrorCode::RateLimited,
            ErrorCode::UpstreamUnavailable,
            ErrorCode::UpstreamRefused,
            ErrorCode::NotReady,
            ErrorCode::DeadlineExceeded,
            ErrorCode::StoreUnavailable,
            ErrorCode::ImageRefused,
            ErrorCode::ScanPending,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(
                serde_json::from_str::<ErrorCode>(&json).expect("parse"),
                code
            );
        }
    }

    #[test]
    fn upstream_refused_is_a_502_on_the_wire() {
        let body: ErrorBody = serde_json::from_str(
            r#"{"error":{"code":"upstream_refused","message":"m","retryable":false}}"#,
        )
        .expect("parse");
        assert_eq!(body.error.code, ErrorCode::UpstreamRefused);
        assert_eq!(body.error.code.http_status(), 502);
        assert_eq!(
            serde_json::to_value(ErrorCode::UpstreamRefused).expect("serialize"),
            serde_json::json!(ErrorCode::UpstreamRefused.as_str())
        );
        assert_eq!(ErrorCode::UpstreamRefused.to_string(), "upstream_refused");
    }

    #[test]
    fn request_rejects_unknown_fields() {
        let err = serde_json::from_str::<CredentialRequest>(r#"{"rolez":["a"]}"#)
            .expect_err("typo'd field must fail");
        assert!(err.to_string().contains("rolez"), "{err}");
    }

    #[test]
    fn typed_accessors() {
        let mut data = BTreeMap::new();
        data.insert("token".to_owned(), Secret::new("t"));
        let c = Credential {
            role: "db".into(),
            kind: "jwt".into(),
            data,
            expires_at: "2026-11-22T08:00:00Z".into(),
            refresh_after: "2026-11-22T07:58:00Z".into(),
            ttl_seconds: 600,
            lease_id: "ls_1".into(),
            ttl_clamped: false,
        };
        let resp = CredentialResponse {
            request_id: "r".into(),
            identity: "i".into(),
            credentials: vec![c],
            session: None,
            admitted_at: None,
        };
        let c = resp.credential("db").expect("granted");
        assert!(resp.credential("other").is_none());
        assert_eq!(c.secret("token").map(Secret::expose), Some("t"));
        let exp = c.expires_at_time().expect("time");
        let refresh = c.refresh_after_time().expect("time");
        assert_eq!(exp.duration_since(refresh).expect("order").as_secs(), 120);
    }

    #[test]
    fn credential_debug_redacts_data() {
        let mut data = BTreeMap::new();
        data.insert("token".to_owned(), Secret::new("eyJsecret"));
        let c = Credential {
            role: "r".into(),
            kind: "jwt".into(),
            data,
            expires_at: "x".into(),
            refresh_after: "y".into(),
            ttl_seconds: 1,
            lease_id: "l".into(),
            ttl_clamped: false,
        };
        assert!(!format!("{c:?}").contains("eyJsecret"));
    }
}
