//! The one place errors become HTTP answers.
//!
//! Whose fault it is decides the status: the caller's (4xx: bad request, failed
//! authentication, policy denial), an upstream's (STS, Vault, an issuer's JWKS), or ours
//! (500). An upstream failure that a retry may fix (unreachable, 5xx, throttled, timed out)
//! is 503 `upstream_unavailable`, retryable, with `Retry-After`; an upstream's refusal
//! (`BackendError::Upstream { retryable: false }`: STS `AccessDenied`, Vault 403 or 400) is
//! 502 `upstream_refused`, not retryable and without `Retry-After`, so clients stop asking
//! instead of retrying what will be refused again. Every answer is
//! `{"error":{"code","message","request_id","retryable"}}` with a stable [`ErrorCode`].
//! Authentication failures all get the same opaque message; the real reason goes to the audit
//! log and metrics only.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lanyard::wire::{ErrorBody, ErrorCode, ErrorInfo};

use crate::audit::AuditError;
use crate::authn::AuthnError;
use crate::issue::BackendError;
use crate::store::StoreError;

/// An error on its way to becoming an HTTP response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// Authentication failed (401). The reason is never sent to the caller.
    #[error("authentication failed")]
    Unauthenticated(AuthnError),
    /// Authenticated, but policy grants nothing asked for (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (404).
    #[error("{0}")]
    NotFound(String),
    /// Body above the limit (413).
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body did not arrive within `server.body_read_timeout_ms` (408; the caller's
    /// fault, and the connection is closed).
    #[error("request body not received within {0} ms; send the whole body at once")]
    BodyTimeout(u64),
    /// No answer within `server.request_timeout_ms` (503, retryable).
    #[error("no answer within {0} ms; retry later")]
    DeadlineExceeded(u64),
    /// An upstream failed in a way a retry may fix (503, retryable, `Retry-After`).
    #[error("{0}")]
    Upstream(String),
    /// An upstream refused the request (502, not retryable, no `Retry-After`): asking again
    /// gets the same answer until someone changes the upstream's policy or the role's
    /// settings. The message is the upstream's summary, which never holds a secret.
    #[error("{0}")]
    UpstreamRefused(String),
    /// The image gate refused (403 `image_refused`): the message names the image, the rule
    /// and the finding's location, never a secret.
    #[error("{0}")]
    ImageRefused(String),
    /// The image gate is scanning, or could not reach the registry or the Kubernetes API (503 `scan_pending`,
    /// retryable).
    #[error("{0}")]
    ScanPending(String),
    /// The broker cannot serve yet (503).
    #[error("{0}")]
    NotReady(String),
    /// The store cannot be used for now (503, retryable): locked by another process past the
    /// busy timeout, unreadable, or (for sessions) the revoked-session set could not be
    /// reloaded within its bound. The detail is logged, not sent.
    #[error("the broker's store is unavailable; retry later")]
    StoreUnavailable(String),
    /// Our fault (500). The detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::BodyTimeout(_) => ErrorCode::BodyTimeout,
            Self::DeadlineExceeded(_) => ErrorCode::DeadlineExceeded,
            Self::Upstream(_) => ErrorCode::UpstreamUnavailable,
            Self::UpstreamRefused(_) => ErrorCode::UpstreamRefused,
            Self::NotReady(_) => ErrorCode::NotReady,
            Self::ImageRefused(_) => ErrorCode::ImageRefused,
            Self::ScanPending(_) => ErrorCode::ScanPending,
            Self::StoreUnavailable(_) => ErrorCode::StoreUnavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// A stable, low-cardinality reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unauthenticated(e) => e.reason(),
            other => other.code().as_str(),
        }
    }

    /// The body sent to the caller.
    pub fn body(&self, request_id: Option<&str>) -> ErrorBody {
        let code = self.code();
        ErrorBody {
            error: ErrorInfo {
                code,
                message: self.to_string(),
                request_id: request_id.map(str::to_owned),
                retryable: is_retryable(code),
            },
        }
    }

    /// The full HTTP response.
    pub fn into_response_with_id(self, request_id: Option<&str>) -> Response {
        match &self {
            Self::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            Self::StoreUnavailable(detail) => {
                tracing::warn!(error = %detail, "store unavailable; answered 503");
            }
            _ => {}
        }
        let code = self.code();
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.body(request_id))).into_response();
        if code == ErrorCode::Unauthenticated {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // For the `lanyard_errors_total{code}` count (`server::routes`).
        resp.extensions_mut().insert(code);
        if is_retryable(code) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if code == ErrorCode::BodyTimeout {
            // The rest of the body may still be on its way: end the HTTP/1 connection rather
            // than read it (HTTP/2 resets just the stream).
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Codes a client should retry (after `Retry-After`).
fn is_retryable(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::UpstreamUnavailable
            | ErrorCode::NotReady
            | ErrorCode::DeadlineExceeded
            | ErrorCode::StoreUnavailable
            | ErrorCode::ScanPending
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_with_id(None)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Self::StoreUnavailable(e.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            // Nothing is answered without its record: refuse, retryably, until the sink
            // writes again (readiness says so meanwhile).
            AuditError::Unavailable(_) => Self::NotReady(e.to_string()),
            AuditError::Store(e @ StoreError::Unavailable(_)) => {
                Self::StoreUnavailable(format!("audit: {e}"))
            }
            other => Self::Internal(format!("audit: {other}")),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Upstream {
                backend,
                message,
                retryable: false,
            } => Self::UpstreamRefused(format!("{backend} upstream refused: {message}")),
            BackendError::Upstream { .. } => Self::Upstream(e.to_string()),
            BackendError::Unsupported(what) => {
                Self::BadRequest(format!("{what} is not supported for this credential"))
            }
            BackendError::Refused(m) => Self::Forbidden(m),
            BackendError::Config(_) | BackendError::Internal(_) => Self::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_failures_are_opaque() {
        for e in [
            AuthnError::Expired,
            AuthnError::TokenReused,
            AuthnError::UnknownToken,
            AuthnError::BadSignature,
        ] {
            let body = ApiError::Unauthenticated(e).body(Some("req_1"));
            assert_eq!(body.error.message, "authentication failed");
            assert_eq!(body.error.code, ErrorCode::Unauthenticated);
        }
    }

    #[test]
    fn statuses_follow_fault() {
        assert_eq!(ApiError::BadRequest("x".into()).code().http_status(), 400);
        assert_eq!(ApiError::Forbidden("x".into()).code().http_status(), 403);
        let up: ApiError = BackendError::Upstream {
            backend: "vault",
            message: "down".into(),
            retryable: true,
        }
        .into();
        assert_eq!(up.code().http_status(), 503);
        assert!(up.body(None).error.retryable);
        let late = ApiError::DeadlineExceeded(30_000).into_response_with_id(None);
        assert_eq!(late.status(), 503);
        assert_eq!(late.headers()[header::RETRY_AFTER], "1");
        let slow = ApiError::BodyTimeout(10_000);
        assert!(
            !slow.body(None).error.retryable,
            "a slow body is the caller's fault"
        );
        let slow = slow.into_response_with_id(None);
        assert_eq!(slow.status(), 408);
        assert_eq!(slow.headers()[header::CONNECTION], "close");
        let internal = ApiError::Internal("disk full at /secret/path".into());
        assert_eq!(internal.code().http_status(), 500);
        assert_eq!(internal.body(None).error.message, "internal error");
    }

    fn header(resp: &Response, name: header::HeaderName) -> Option<&str> {
        resp.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn a_retryable_upstream_failure_is_a_503_to_retry_after() {
        let e: ApiError = BackendError::Upstream {
            backend: "vault",
            message: "reading secret/data/app: Vault answered 503: Vault is sealed".into(),
            retryable: true,
        }
        .into();
        let body = e.body(Some("req_1"));
        assert_eq!(body.error.code, ErrorCode::UpstreamUnavailable);
        assert!(body.error.retryable);
        assert_eq!(
            body.error.message,
            "vault upstream failed: reading secret/data/app: Vault answered 503: Vault is sealed"
        );
        let resp = e.into_response_with_id(Some("req_1"));
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&resp, header::RETRY_AFTER), Some("1"));
    }

    #[test]
    fn an_upstream_refusal_is_a_502_not_to_retry() {
        let e: ApiError = BackendError::Upstream {
            backend: "aws-sts",
            message: "AccessDenied (HTTP 403): User: arn:aws:iam::123456789012:user/broker is \
                      not authorized to perform: sts:AssumeRole"
                .into(),
            retryable: false,
        }
        .into();
        assert_eq!(e.reason(), "upstream_refused");
        let body = e.body(Some("req_2"));
        assert_eq!(body.error.code, ErrorCode::UpstreamRefused);
        assert!(!body.error.retryable);
        assert_eq!(body.error.request_id.as_deref(), Some("req_2"));
        assert_eq!(
            body.error.message,
            "aws-sts upstream refused: AccessDenied (HTTP 403): User: \
             arn:aws:iam::123456789012:user/broker is not authorized to perform: sts:AssumeRole"
        );
        let resp = e.into_response_with_id(Some("req_2"));
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(header(&resp, header::RETRY_AFTER), None);
        assert_eq!(header(&resp, header::WWW_AUTHENTICATE), None);
    }
}
