//! `init`, `run` and the binary's entry point against a loopback HTTP broker stand-in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use lanyard::clock::{Clock, SystemClock, rfc3339};
use lanyard::wire::{Credential, CredentialResponse, ErrorBody, ErrorCode, ErrorInfo};
use lanyard::{Client, Secret, TokenSource};
use lanyard_sidecar::{SidecarConfig, SidecarError};

/// Answers with one `dev-app` credential whose token counts the requests, living `ttl` s.
async fn issue(State((served, ttl)): State<(Arc<Mutex<u32>>, u64)>) -> Response {
    let n = {
        let mut s = served.lock().expect("lock");
        *s += 1;
        *s
    };
    let now = SystemClock.now();
    let mut data = BTreeMap::new();
    data.insert("token".to_owned(), Secret::new(format!("eyJtoken-{n}")));
    let body = CredentialResponse {
        request_id: format!("req-{n}"),
        identity: "k8s:ns/sa".into(),
        credentials: vec![Credential {
            role: "dev-app".into(),
            kind: "jwt".into(),
            data,
            expires_at: rfc3339(now + Duration::from_secs(ttl)),
            refresh_after: rfc3339(now + Duration::from_secs(ttl * 2 / 3)),
            ttl_seconds: ttl,
            lease_id: format!("lease-{n}"),
            ttl_clamped: false,
        }],
        session: None,
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn refuse() -> Response {
    let body = ErrorBody {
        error: ErrorInfo {
            code: ErrorCode::Forbidden,
            message: "no policy grants role dev-app".into(),
            request_id: None,
            retryable: false,
        },
    };
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

async fn serve(ttl: u64) -> (SocketAddr, Arc<Mutex<u32>>) {
    let served = Arc::new(Mutex::new(0));
    let app = Router::new()
        .route("/v1/credentials", post(issue))
        .route("/refuse/v1/credentials", post(refuse))
        .with_state((served.clone(), ttl));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (addr, served)
}

fn config(addr: SocketAddr, dir: &std::path::Path) -> SidecarConfig {
    let client = Client::builder()
        .broker_url(format!("http://{addr}"))
        .token_source(TokenSource::Static(Secret::new("eyJcaller")))
        .build()
        .expect("client");
    SidecarConfig {
        client,
        dir: dir.to_owned(),
    }
}

#[tokio::test]
async fn init_writes_the_layout() {
    let (addr, _) = serve(600).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let written = lanyard_sidecar::init(&config(addr, dir.path()))
        .await
        .expect("init");
    assert_eq!(written.request_id, "req-1");
    let token = dir.path().join("dev-app/token");
    assert_eq!(std::fs::read(&token).expect("token"), b"eyJtoken-1");
    let mode = std::fs::metadata(&token)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o400);
    assert!(
        written
            .files()
            .any(|p| p == dir.path().join("dev-app.json"))
    );
}

#[tokio::test]
async fn init_reports_a_refusal_and_writes_nothing() {
    let (addr, _) = serve(600).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(addr, dir.path());
    cfg.client = Client::builder()
        .broker_url(format!("http://{addr}/refuse"))
        .token_source(TokenSource::Static(Secret::new("eyJcaller")))
        .build()
        .expect("client");
    let e = lanyard_sidecar::init(&cfg).await.expect_err("refused");
    assert!(
        matches!(
            e,
            SidecarError::Fetch(lanyard::Error::Broker { status: 403, .. })
        ),
        "{e:?}"
    );
    assert_eq!(e.exit_code(), 1);
    assert!(std::fs::read_dir(dir.path()).expect("ls").next().is_none());
}

#[tokio::test]
async fn run_refreshes_in_place_then_stops_on_shutdown() {
    // A 2 s lifetime refreshes at about 1.4 s, before it expires.
    let (addr, served) = serve(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(addr, dir.path());
    let watched = served.clone();
    let shutdown = async move {
        while *watched.lock().expect("lock") < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        lanyard_sidecar::run(&cfg, Arc::new(SystemClock), shutdown),
    )
    .await
    .expect("run stops on shutdown")
    .expect("run ok");
    // Shutdown fired once the second request was served; its write may race the shutdown,
    // so the file holds the first or the second token, and never anything else.
    let token = std::fs::read_to_string(dir.path().join("dev-app/token")).expect("token");
    assert!(token == "eyJtoken-1" || token == "eyJtoken-2", "{token}");
    assert!(*served.lock().expect("lock") >= 2);
}

#[tokio::test]
async fn binary_entry_point_exit_codes() {
    let (addr, _) = serve(600).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJfromfile\n").expect("token");
    let out = dir.path().join("secrets");
    let args = |extra: &[&str]| {
        let mut v: Vec<std::ffi::OsString> = vec!["lanyard-sidecar".into(), "init".into()];
        v.extend(extra.iter().map(Into::into));
        v
    };
    let url = format!("http://{addr}");
    let ok = lanyard_sidecar::main_with_args(args(&[
        "--broker",
        &url,
        "--token-file",
        token.to_str().expect("utf-8"),
        "--dir",
        out.to_str().expect("utf-8"),
    ]))
    .await;
    assert_eq!(ok, ExitCode::SUCCESS);
    assert_eq!(
        std::fs::read(out.join("dev-app/token")).expect("written"),
        b"eyJtoken-1"
    );

    let usage = lanyard_sidecar::main_with_args(args(&["--broker", &url])).await;
    assert_eq!(usage, ExitCode::from(2));

    // Nobody listens on port 1 of loopback: retried until the deadline, then exit 1.
    let unreachable = lanyard_sidecar::main_with_args(args(&[
        "--deadline-seconds",
        "1",
        "--broker",
        "http://127.0.0.1:1",
        "--token-file",
        token.to_str().expect("utf-8"),
        "--dir",
        out.to_str().expect("utf-8"),
    ]))
    .await;
    assert_eq!(unreachable, ExitCode::FAILURE);
}
