//! The client against a loopback HTTP server that gives it hostile or tricky answers.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use lanyard::clock::{ManualClock, rfc3339};
use lanyard::wire::{
    Credential, CredentialRequest, CredentialResponse, ErrorBody, ErrorCode, ErrorInfo, Session,
};
use lanyard::{Client, Error, Secret, TokenSource};

const START: u64 = 1_900_000_000;

#[derive(Default)]
struct Seen {
    tokens: Vec<String>,
    bodies: Vec<CredentialRequest>,
    spent_bootstrap: Vec<String>,
    sessions_issued: u32,
    /// Requests to the upstream-refused and upstream-down routes.
    refused: u32,
    down: u32,
}

type Shared = Arc<Mutex<Seen>>;

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned()
}

fn credentials(session: Option<Session>) -> CredentialResponse {
    let mut data = BTreeMap::new();
    data.insert("token".to_owned(), Secret::new("eyJissued.payload.sig"));
    CredentialResponse {
        request_id: "req-1".into(),
        identity: "k8s:ns/sa".into(),
        credentials: vec![Credential {
            role: "dev-app".into(),
            kind: "jwt".into(),
            data,
            expires_at: "2030-01-01T00:10:00Z".into(),
            refresh_after: "2030-01-01T00:07:00Z".into(),
            ttl_seconds: 600,
            lease_id: "lease-1".into(),
            ttl_clamped: false,
        }],
        session,
        admitted_at: None,
    }
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).expect("serialize"),
    )
        .into_response()
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    json(
        status,
        &ErrorBody {
            error: ErrorInfo {
                code,
                message: message.into(),
                request_id: None,
                retryable: status.is_server_error(),
            },
        },
    )
}

async fn ok(State(seen): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let mut s = seen.lock().expect("lock");
    s.tokens.push(bearer(&headers));
    if let Ok(req) = serde_json::from_str(&body) {
        s.bodies.push(req);
    }
    json(StatusCode::OK, &credentials(None))
}

/// Redeems `lbt_…` tokens once, issuing `sess-N` sessions that expire 60 s after START; a
/// session is accepted and replaced by the next one.
async fn bootstrap(State(seen): State<Shared>, headers: HeaderMap) -> Response {
    let token = bearer(&headers);
    let mut s = seen.lock().expect("lock");
    s.tokens.push(token.clone());
    let valid_session = token
        .strip_prefix("sess-")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n == s.sessions_issued);
    if token.starts_with("lbt_") {
        if s.spent_bootstrap.contains(&token) {
            return error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                "bootstrap token already used",
            );
        }
        s.spent_bootstrap.push(token);
    } else if !valid_session {
        return error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "unknown session",
        );
    }
    s.sessions_issued += 1;
    let session = Session {
        token: Secret::new(format!("sess-{}", s.sessions_issued)),
        expires_at: rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(START + 60)),
    };
    json(StatusCode::OK, &credentials(Some(session)))
}

/// The broker's documented answer (docs/API.md) when STS refused its AssumeRole: 502
/// `upstream_refused`, not retryable, no `Retry-After`.
async fn upstream_refused(State(seen): State<Shared>) -> Response {
    seen.lock().expect("lock").refused += 1;
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":{"code":"upstream_refused","message":"aws-sts upstream refused: AccessDenied (HTTP 403): User: arn:aws:iam::123456789012:user/broker is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/app","request_id":"req_7","retryable":false}}"#,
    )
        .into_response()
}

/// The broker's documented answer when STS could not be reached: 503
/// `upstream_unavailable`, retryable, `Retry-After: 1`.
async fn upstream_down(State(seen): State<Shared>) -> Response {
    seen.lock().expect("lock").down += 1;
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::RETRY_AFTER, "1"),
        ],
        r#"{"error":{"code":"upstream_unavailable","message":"aws-sts upstream failed: STS unreachable: connection failed","request_id":"req_8","retryable":true}}"#,
    )
        .into_response()
}

async fn huge() -> Response {
    // 10 MB streamed in 64 KiB chunks without a Content-Length.
    let chunks = (0..160).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 64 * 1024]));
    Response::new(Body::from_stream(futures_util::stream::iter(chunks)))
}

fn app(seen: Shared) -> Router {
    Router::new()
        .route("/ok/v1/credentials", post(ok))
        .route("/bootstrap/v1/credentials", post(bootstrap))
        .route(
            "/garbage/v1/credentials",
            post(|| async { (StatusCode::OK, "{{{ not json") }),
        )
        .route(
            "/wrong-shape/v1/credentials",
            post(|| async { json(StatusCode::OK, &serde_json::json!({"hello": "world"})) }),
        )
        .route("/huge/v1/credentials", post(huge))
        .route("/upstream-refused/v1/credentials", post(upstream_refused))
        .route("/upstream-down/v1/credentials", post(upstream_down))
        .route(
            "/refused/v1/credentials",
            post(|| async {
                error(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Forbidden,
                    "no policy grants role dev-app",
                )
            }),
        )
        .route(
            "/html-error/v1/credentials",
            post(|| async { (StatusCode::BAD_GATEWAY, "<html>bad gateway</html>") }),
        )
        .route(
            "/slow/v1/credentials",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "too late"
            }),
        )
        .with_state(seen)
}

async fn serve() -> (SocketAddr, Shared) {
    let seen = Shared::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app(seen.clone());
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    (addr, seen)
}

/// A client with the default timeout: a short one would turn the expected outcomes into
/// timeouts on a loaded machine.
fn client(addr: SocketAddr, scenario: &str, token: TokenSource) -> Client {
    Client::builder()
        .broker_url(format!("http://{addr}/{scenario}"))
        .token_source(token)
        .build()
        .expect("client")
}

fn static_token() -> TokenSource {
    TokenSource::Static(Secret::new("eyJcaller.jwt.sig"))
}

fn file_with(content: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp");
    f.write_all(content.as_bytes()).expect("write");
    f
}

fn rewrite(f: &tempfile::NamedTempFile, content: &str) {
    std::fs::write(f.path(), content).expect("rewrite");
}

#[tokio::test]
async fn fetch_parses_credentials_and_sends_the_request() {
    let (addr, seen) = serve().await;
    let c = Client::builder()
        .broker_url(format!("http://{addr}/ok/"))
        .token_source(static_token())
        .roles(vec!["dev-app".into()])
        .ttl_seconds(300)
        .build()
        .expect("client");
    let resp = c.fetch().await.expect("fetch");
    assert_eq!(resp.credentials.len(), 1);
    assert_eq!(
        resp.credentials[0].data["token"].expose(),
        "eyJissued.payload.sig"
    );
    let s = seen.lock().expect("lock");
    assert_eq!(s.tokens, ["eyJcaller.jwt.sig"]);
    assert_eq!(
        s.bodies[0].roles.as_deref(),
        Some(&["dev-app".to_owned()][..])
    );
    assert_eq!(s.bodies[0].ttl_seconds, Some(300));
}

#[tokio::test]
async fn garbage_json_is_an_invalid_response() {
    let (addr, _) = serve().await;
    let e = client(addr, "garbage", static_token())
        .fetch()
        .await
        .expect_err("garbage");
    assert!(matches!(e, Error::InvalidResponse(_)), "{e:?}");
}

#[tokio::test]
async fn wrong_shape_is_an_invalid_response() {
    let (addr, _) = serve().await;
    let e = client(addr, "wrong-shape", static_token())
        .fetch()
        .await
        .expect_err("shape");
    assert!(matches!(e, Error::InvalidResponse(_)), "{e:?}");
    assert!(e.to_string().contains("request_id"), "{e}");
}

#[tokio::test]
async fn huge_body_is_refused_at_the_cap() {
    let (addr, _) = serve().await;
    let e = client(addr, "huge", static_token())
        .fetch()
        .await
        .expect_err("huge");
    match &e {
        Error::InvalidResponse(m) => assert!(m.contains("response larger than 1 MiB"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn error_body_becomes_a_broker_error() {
    let (addr, _) = serve().await;
    let e = client(addr, "refused", static_token())
        .fetch()
        .await
        .expect_err("403");
    match e {
        Error::Broker {
            status,
            code,
            message,
            retryable,
        } => {
            assert_eq!(status, 403);
            assert_eq!(code, ErrorCode::Forbidden);
            assert_eq!(message, "no policy grants role dev-app");
            assert!(!retryable);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_upstream_refusal_is_reported_and_not_retried() {
    let (addr, seen) = serve().await;
    let refused = client(addr, "upstream-refused", static_token());
    let e = refused.fetch().await.expect_err("502");
    match &e {
        Error::Broker {
            status,
            code,
            message,
            retryable,
        } => {
            assert_eq!(
                (*status, *code, *retryable),
                (502, ErrorCode::UpstreamRefused, false)
            );
            assert!(
                message.starts_with("aws-sts upstream refused: AccessDenied"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.is_retryable());
    assert!(
        e.to_string()
            .contains("not authorized to perform: sts:AssumeRole"),
        "{e}"
    );

    // The background refresh publishes the refusal with its reason and does not retry it;
    // an upstream outage it retries on the backoff (0.5 to 1 s, then 1 to 2 s).
    let mut refused_watch = refused.watch();
    let first = refused_watch
        .next_update()
        .await
        .expect("an update")
        .expect_err("refused");
    assert!(!first.is_retryable() && first.to_string().contains("AccessDenied"));
    let mut down_watch = client(addr, "upstream-down", static_token()).watch();
    let first = down_watch
        .next_update()
        .await
        .expect("an update")
        .expect_err("down");
    assert!(first.is_retryable(), "{first}");
    // Two retries of the outage take at least 1.5 s, longer than the refusal would have
    // waited on the backoff (1 s at most).
    for _ in 0..2 {
        let retried = down_watch
            .next_update()
            .await
            .expect("an update")
            .expect_err("still down");
        assert!(retried.is_retryable(), "{retried}");
    }
    assert!(refused_watch.current().is_none());
    let s = seen.lock().expect("lock");
    assert!(s.down >= 3, "the outage was asked again: {}", s.down);
    assert_eq!(s.refused, 2, "one fetch and the watch's first, no retry");
}

#[tokio::test]
async fn non_lanyard_error_body_is_invalid_and_not_quoted() {
    let (addr, _) = serve().await;
    let e = client(addr, "html-error", static_token())
        .fetch()
        .await
        .expect_err("502");
    assert!(matches!(e, Error::InvalidResponse(_)), "{e:?}");
    let m = e.to_string();
    assert!(m.contains("502") && !m.contains("bad gateway"), "{m}");
}

#[tokio::test]
async fn slow_broker_times_out() {
    let (addr, _) = serve().await;
    // The route answers after 5 s: the 2 s timeout must cut it short.
    let c = Client::builder()
        .broker_url(format!("http://{addr}/slow"))
        .token_source(static_token())
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let started = tokio::time::Instant::now();
    let e = c.fetch().await.expect_err("slow");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(e, Error::Transport(_)), "{e:?}");
    assert!(e.to_string().contains("timed out"), "{e}");
}

#[tokio::test]
async fn unreachable_broker_is_a_transport_error_naming_the_url() {
    // Nothing listens on port 1 and a bind to port 0 never gets it, unlike a port freed by
    // dropping a listener, which a parallel test's server could take.
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let e = client(addr, "ok", static_token())
        .fetch()
        .await
        .expect_err("closed");
    assert!(matches!(e, Error::Transport(_)), "{e:?}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    assert!(!e.to_string().contains("eyJcaller"), "{e}");
}

#[tokio::test]
async fn token_file_is_reread_on_every_fetch() {
    let (addr, seen) = serve().await;
    let f = file_with("eyJfirst.a.b\n");
    let c = client(addr, "ok", TokenSource::JwtFile(f.path().to_owned()));
    c.fetch().await.expect("first");
    rewrite(&f, "eyJsecond.a.b");
    c.fetch().await.expect("second");
    assert_eq!(
        seen.lock().expect("lock").tokens,
        ["eyJfirst.a.b", "eyJsecond.a.b"]
    );

    rewrite(&f, "   \n");
    let e = c.fetch().await.expect_err("empty");
    assert!(matches!(e, Error::TokenFile { .. }), "{e:?}");
}

#[tokio::test]
async fn bootstrap_token_is_spent_once_then_sessions_are_used() {
    let (addr, seen) = serve().await;
    let clock = Arc::new(ManualClock::at_unix(START));
    let f = file_with("lbt_one\n");
    let c = Client::builder()
        .broker_url(format!("http://{addr}/bootstrap"))
        .token_source(TokenSource::BootstrapFile(f.path().to_owned()))
        .clock(clock.clone())
        .build()
        .expect("client");

    let first = c.fetch().await.expect("redeem");
    assert!(first.session.is_some());
    // A clone shares the session.
    c.clone().fetch().await.expect("with session 1");
    c.fetch().await.expect("with session 2");
    assert_eq!(
        seen.lock().expect("lock").tokens,
        ["lbt_one", "sess-1", "sess-2"]
    );

    // The session expires; the file still holds the spent token.
    clock.advance(Duration::from_secs(61));
    let e = c.fetch().await.expect_err("spent");
    assert!(matches!(e, Error::BootstrapSpent { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&f.path().display().to_string()),
        "{e}"
    );
    assert_eq!(
        seen.lock().expect("lock").tokens.len(),
        3,
        "spent token must not be sent"
    );

    // A new bootstrap token in the file starts a new session.
    rewrite(&f, "lbt_two");
    c.fetch().await.expect("redeem again");
    assert_eq!(seen.lock().expect("lock").tokens[3], "lbt_two");
}

#[tokio::test]
async fn concurrent_fetches_spend_the_bootstrap_token_once() {
    let (addr, seen) = serve().await;
    let c = Client::builder()
        .broker_url(format!("http://{addr}/bootstrap"))
        .token_source(TokenSource::Static(Secret::new("lbt_static")))
        .clock(Arc::new(ManualClock::at_unix(START)))
        .build()
        .expect("client");
    let (a, b) = tokio::join!(c.fetch(), c.fetch());
    a.expect("a");
    b.expect("b");
    let tokens = seen.lock().expect("lock").tokens.clone();
    assert_eq!(
        tokens.iter().filter(|t| t.starts_with("lbt_")).count(),
        1,
        "{tokens:?}"
    );
}

#[tokio::test]
async fn a_refused_session_is_dropped() {
    let (addr, seen) = serve().await;
    let f = file_with("lbt_a");
    let c = Client::builder()
        .broker_url(format!("http://{addr}/bootstrap"))
        .token_source(TokenSource::BootstrapFile(f.path().to_owned()))
        .clock(Arc::new(ManualClock::at_unix(START)))
        .build()
        .expect("client");
    c.fetch().await.expect("redeem");
    // The broker forgets its sessions (e.g. restarted with a new key).
    seen.lock().expect("lock").sessions_issued = 99;
    let e = c.fetch().await.expect_err("refused");
    assert!(matches!(e, Error::Broker { status: 401, .. }), "{e:?}");
    // Next call does not resend the dead session nor the spent token.
    let e = c.fetch().await.expect_err("spent");
    assert!(matches!(e, Error::BootstrapSpent { .. }), "{e:?}");
}
