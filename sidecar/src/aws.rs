//! Zero-code AWS SDKs: the AWS container-credentials endpoint on localhost.
//!
//! Every AWS SDK (and the AWS CLI) reads credentials from `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//! when it is set, sending the contents of `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` as the
//! `Authorization` header, and expects
//! `{"AccessKeyId","SecretAccessKey","Token","Expiration"}` back. `lanyard-sidecar run
//! --aws-listen 127.0.0.1:PORT` serves that at [`PATH`] from the AWS credential it holds, and
//! writes a random authorization token into the secrets directory, so an application only
//! needs two environment variables:
//!
//! ```text
//! AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:PORT/v1/aws-credentials
//! AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/run/secrets/aws-container-token
//! ```
//!
//! Answers: 200 with the keys; 401 without the right token; 503 before the first credential
//! arrives and after the held one has expired (SDKs retry 5xx). Bodies of errors never hold a
//! secret. The token is compared in constant time.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lanyard::Secret;
use lanyard::aws::{AwsKeys, pick};
use lanyard::clock::Clock;
use lanyard::wire::{Credential, CredentialResponse};
use subtle::ConstantTimeEq as _;

use crate::error::SidecarError;
use crate::files::{FileOpts, write_secret_file};
use crate::names::check_name;

/// Path the endpoint serves.
pub const PATH: &str = "/v1/aws-credentials";
/// Default name of the authorization token file in the secrets directory.
pub const DEFAULT_TOKEN_FILE: &str = "aws-container-token";
/// Bytes of randomness in the authorization token (hex-encoded in the file).
const TOKEN_BYTES: usize = 32;

/// The endpoint's state: which role it serves, the token callers must present, the held
/// credential and request counters.
pub struct AwsServer {
    role: Option<String>,
    token: Secret,
    clock: Arc<dyn Clock>,
    current: Mutex<Option<Arc<Credential>>>,
    served: AtomicU64,
    unauthorized: AtomicU64,
    unavailable: AtomicU64,
}

impl std::fmt::Debug for AwsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsServer")
            .field("role", &self.role)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl AwsServer {
    /// An endpoint serving `role` (or the only AWS credential granted) to callers that
    /// present `token`.
    pub fn new(role: Option<String>, token: Secret, clock: Arc<dyn Clock>) -> Self {
        Self {
            role,
            token,
            clock,
            current: Mutex::new(None),
            served: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
        }
    }

    /// The role named with `--aws-role`, if any.
    pub fn role(&self) -> Option<&str> {
        self.role.as_deref()
    }

    /// Takes the AWS credential out of a fresh broker answer. The error (no AWS credential,
    /// or several and no `--aws-role`) leaves the held one in place.
    pub fn update(&self, resp: &CredentialResponse) -> Result<String, SidecarError> {
        let c = pick(resp, self.role.as_deref())
            .map_err(|e| SidecarError::Invalid(format!("--aws-listen: {e}")))?;
        AwsKeys::from_credential(c)
            .map_err(|e| SidecarError::Invalid(format!("--aws-listen: {e}")))?;
        let role = c.role.clone();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(c.clone()));
        Ok(role)
    }

    fn answer(&self, headers: &HeaderMap) -> Response {
        let presented = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !bool::from(presented.ct_eq(self.token.expose().as_bytes())) {
            self.unauthorized.fetch_add(1, Ordering::Relaxed);
            return error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "send the contents of AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE in the Authorization header",
            );
        }
        let held = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let now = self.clock.now();
        let live = held.as_deref().and_then(|c| {
            AwsKeys::from_credential(c)
                .ok()
                .filter(|k| k.expires_at > now)
                .map(|k| k.container_json())
        });
        match live {
            Some(body) => {
                self.served.fetch_add(1, Ordering::Relaxed);
                (
                    StatusCode::OK,
                    [
                        (header::CONTENT_TYPE, "application/json"),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    body.to_vec(),
                )
                    .into_response()
            }
            None => {
                self.unavailable.fetch_add(1, Ordering::Relaxed);
                let why = if held.is_some() {
                    "the AWS credential expired and has not been refreshed yet; retry"
                } else {
                    "no AWS credential has arrived from the broker yet; retry"
                };
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "CredentialsUnavailable",
                    why,
                )
            }
        }
    }

    /// Prometheus text for the health port's `/metrics`.
    pub fn metrics_text(&self) -> String {
        let mut s = String::from(
            "# HELP lanyard_sidecar_aws_requests_total Requests to the AWS container-credentials endpoint, by outcome.\n\
             # TYPE lanyard_sidecar_aws_requests_total counter\n",
        );
        for (outcome, n) in [
            ("served", &self.served),
            ("unauthorized", &self.unauthorized),
            ("unavailable", &self.unavailable),
        ] {
            let _ = writeln!(
                s,
                "lanyard_sidecar_aws_requests_total{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        s
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"code": code, "message": message}).to_string(),
    )
        .into_response()
}

/// The endpoint's router.
pub fn router(server: Arc<AwsServer>) -> Router {
    Router::new()
        .route(
            PATH,
            get(|State(s): State<Arc<AwsServer>>, headers: HeaderMap| async move {
                s.answer(&headers)
            }),
        )
        .with_state(server)
}

/// Serves the endpoint on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Arc<AwsServer>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(server).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// A fresh random authorization token (256 bits, hex).
pub fn new_token() -> Result<Secret, SidecarError> {
    let mut raw = zeroize::Zeroizing::new([0u8; TOKEN_BYTES]);
    getrandom::fill(&mut raw[..]).map_err(|e| {
        SidecarError::Invalid(format!("no randomness for the AWS endpoint token: {e}"))
    })?;
    let mut hex = String::with_capacity(TOKEN_BYTES * 2);
    for b in raw.iter() {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(Secret::new(hex))
}

/// Writes `token` to `dir/name` (atomic, no links, `opts` mode and owner) and returns the
/// path, for `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
pub fn write_token(
    dir: &Path,
    name: &str,
    token: &Secret,
    opts: FileOpts,
) -> Result<PathBuf, SidecarError> {
    check_name("--aws-token-file", name).map_err(SidecarError::Usage)?;
    write_secret_file(dir, name, token.expose().as_bytes(), opts)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use lanyard::clock::{ManualClock, rfc3339};
    use tower::ServiceExt as _;

    use super::*;

    fn resp(expires_in: u64, clock: &ManualClock) -> CredentialResponse {
        let mut data = BTreeMap::new();
        data.insert("access_key_id".to_owned(), Secret::new("ASIAPLANTED"));
        data.insert("secret_access_key".to_owned(), Secret::new("plantedsecret"));
        data.insert("session_token".to_owned(), Secret::new("plantedsession"));
        CredentialResponse {
            request_id: "r".into(),
            identity: "k8s:shop/api".into(),
            credentials: vec![Credential {
                role: "aws".into(),
                kind: "aws-sts".into(),
                data,
                expires_at: rfc3339(clock.now() + Duration::from_secs(expires_in)),
                refresh_after: rfc3339(clock.now()),
                ttl_seconds: expires_in,
                lease_id: "ls_1".into(),
                ttl_clamped: false,
            }],
            session: None,
            admitted_at: None,
        }
    }

    async fn get(server: &Arc<AwsServer>, auth: Option<&str>) -> (StatusCode, String) {
        let mut req = axum::http::Request::get(PATH);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = router(server.clone())
            .oneshot(req.body(axum::body::Body::empty()).expect("request"))
            .await
            .expect("answer");
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn serves_only_with_the_token_and_only_while_live() {
        let clock = Arc::new(ManualClock::at_unix(1_900_000_000));
        let server = Arc::new(AwsServer::new(None, Secret::new("tok"), clock.clone()));
        let (s, body) = get(&server, Some("tok")).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("no AWS credential has arrived"), "{body}");

        assert_eq!(server.update(&resp(900, &clock)).expect("aws"), "aws");
        for bad in [None, Some(""), Some("to"), Some("tok "), Some("Bearer tok")] {
            let (s, body) = get(&server, bad).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad:?}");
            assert!(!body.contains("planted"), "{body}");
        }
        let (s, body) = get(&server, Some("tok")).await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["AccessKeyId"], "ASIAPLANTED");
        assert_eq!(v["Token"], "plantedsession");
        assert_eq!(v["Expiration"], "2030-03-17T18:01:40Z");

        clock.advance(Duration::from_secs(900));
        let (s, body) = get(&server, Some("tok")).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("expired") && !body.contains("planted"),
            "{body}"
        );

        let m = server.metrics_text();
        assert!(m.contains("{outcome=\"served\"} 1\n"), "{m}");
        assert!(m.contains("{outcome=\"unauthorized\"} 5\n"), "{m}");
        assert!(m.contains("{outcome=\"unavailable\"} 2\n"), "{m}");
        assert!(!format!("{server:?}").contains("tok\""), "{server:?}");
    }

    #[tokio::test]
    async fn a_refresh_replaces_the_served_keys() {
        let clock = Arc::new(ManualClock::at_unix(1_900_000_000));
        let server = Arc::new(AwsServer::new(None, Secret::new("tok"), clock.clone()));
        server.update(&resp(900, &clock)).expect("first");
        clock.advance(Duration::from_secs(630));
        let mut next = resp(900, &clock);
        next.credentials[0]
            .data
            .insert("access_key_id".into(), Secret::new("ASIAROTATED"));
        server.update(&next).expect("refresh");
        let (s, body) = get(&server, Some("tok")).await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["AccessKeyId"], "ASIAROTATED");
        assert_eq!(v["Expiration"], "2030-03-17T18:12:10Z");
    }

    #[test]
    fn an_answer_without_aws_keys_keeps_the_held_one() {
        let clock = Arc::new(ManualClock::at_unix(1_900_000_000));
        let server = AwsServer::new(Some("other".into()), Secret::new("t"), clock.clone());
        let e = server
            .update(&resp(900, &clock))
            .expect_err("role not granted");
        assert!(e.to_string().contains("--aws-listen"), "{e}");
        assert!(server.current.lock().expect("lock").is_none());
    }

    #[test]
    fn the_token_file_is_written_atomically_and_never_through_a_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = dir.path().join("secrets");
        let token = new_token().expect("token");
        let opts = FileOpts {
            mode: 0o440,
            uid: None,
            gid: None,
        };
        let path = write_token(&secrets, DEFAULT_TOKEN_FILE, &token, opts).expect("written");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            token.expose()
        );
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o440);

        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").expect("write");
        std::os::unix::fs::symlink(&target, secrets.join("link")).expect("symlink");
        let e = write_token(&secrets, "link", &token, opts).expect_err("a link is refused");
        assert!(matches!(e, SidecarError::Refused { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "untouched");
        let e = write_token(&secrets, "../x", &token, opts).expect_err("not a plain name");
        assert!(matches!(e, SidecarError::Usage(_)), "{e}");
    }

    #[test]
    fn tokens_are_random_hex() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_eq!(a.len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.expose(), b.expose());
    }
}
