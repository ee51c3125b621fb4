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
    (StatusCode::OK, axum::Json(issued(&served, ttl))).into_response()
}

/// As [`issue`], saying the pod was admitted 2.5 s ago (as the broker does for a pod whose
/// images came from its admission record).
async fn admitted(State((served, ttl)): State<(Arc<Mutex<u32>>, u64)>) -> Response {
    let mut body = issued(&served, ttl);
    body.admitted_at = Some(lanyard::clock::rfc3339_millis(
        SystemClock.now() - Duration::from_millis(2_500),
    ));
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn issued(served: &Mutex<u32>, ttl: u64) -> CredentialResponse {
    let n = {
        let mut s = served.lock().expect("lock");
        *s += 1;
        *s
    };
    let now = SystemClock.now();
    let mut data = BTreeMap::new();
    data.insert("token".to_owned(), Secret::new(format!("eyJtoken-{n}")));
    CredentialResponse {
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
        admitted_at: None,
    }
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

/// Issues once, then answers 503 like a broker whose backend is down.
async fn once(state: State<(Arc<Mutex<u32>>, u64)>) -> Response {
    if *state.0.0.lock().expect("lock") >= 1 {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    issue(state).await
}

/// The broker's documented answer (docs/API.md) when STS refused its AssumeRole: 502
/// `upstream_refused`, not retryable, no `Retry-After`. Counts the request.
async fn upstream_refused(State((served, _)): State<(Arc<Mutex<u32>>, u64)>) -> Response {
    *served.lock().expect("lock") += 1;
    (
        StatusCode::BAD_GATEWAY,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"error":{"code":"upstream_refused","message":"aws-sts upstream refused: AccessDenied (HTTP 403): User: arn:aws:iam::123456789012:user/broker is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::123456789012:role/app","request_id":"req_7","retryable":false}}"#,
    )
        .into_response()
}

/// Issues once, then refuses like a broker whose upstream started to refuse (a changed
/// trust policy, say).
async fn once_then_refused(state: State<(Arc<Mutex<u32>>, u64)>) -> Response {
    if *state.0.0.lock().expect("lock") >= 1 {
        return upstream_refused(state).await;
    }
    issue(state).await
}

async fn garbage() -> Response {
    (StatusCode::OK, "<html>this is not the broker</html>").into_response()
}

async fn huge() -> Response {
    let mut body = b"{\"request_id\":\"".to_vec();
    body.resize(10 * 1024 * 1024, b'a');
    (StatusCode::OK, body).into_response()
}

async fn serve(ttl: u64) -> (SocketAddr, Arc<Mutex<u32>>) {
    let served = Arc::new(Mutex::new(0));
    let app = Router::new()
        .route("/v1/credentials", post(issue))
        .route("/admitted/v1/credentials", post(admitted))
        .route("/refuse/v1/credentials", post(refuse))
        .route("/once/v1/credentials", post(once))
        .route("/upstream-refused/v1/credentials", post(upstream_refused))
        .route("/once-then-refused/v1/credentials", post(once_then_refused))
        .route("/garbage/v1/credentials", post(garbage))
        .route("/huge/v1/credentials", post(huge))
        .with_state((served.clone(), ttl));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (addr, served)
}

fn config(addr: SocketAddr, dir: &std::path::Path) -> SidecarConfig {
    config_at(&format!("http://{addr}"), dir)
}

fn config_at(url: &str, dir: &std::path::Path) -> SidecarConfig {
    let client = Client::builder()
        .broker_url(url)
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
async fn init_stops_at_once_on_an_upstream_refusal_with_the_reason() {
    let (addr, served) = serve(600).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_at(&format!("http://{addr}/upstream-refused"), dir.path());
    // A deadline would retry a retryable failure for a minute; a refusal is not retried.
    let opts = lanyard_sidecar::Options {
        deadline: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let started = tokio::time::Instant::now();
    let e = lanyard_sidecar::init_with(&cfg, &opts)
        .await
        .expect_err("refused");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            e,
            SidecarError::Fetch(lanyard::Error::Broker {
                status: 502,
                code: ErrorCode::UpstreamRefused,
                retryable: false,
                ..
            })
        ),
        "{e:?}"
    );
    assert!(e.is_refusal() && !e.is_retryable());
    assert_eq!(e.exit_code(), 1);
    let m = e.to_string();
    assert!(
        m.contains("upstream_refused") && m.contains("not authorized to perform: sts:AssumeRole"),
        "{m}"
    );
    assert_eq!(*served.lock().expect("lock"), 1, "asked once");
    assert!(std::fs::read_dir(dir.path()).expect("ls").next().is_none());
}

#[tokio::test]
async fn the_init_binary_exits_1_at_once_naming_the_refusal() {
    let (addr, served) = serve(600).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJfromfile\n").expect("token");
    let started = tokio::time::Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lanyard-sidecar"))
        .args(["init", "--deadline-seconds", "60", "--broker"])
        .arg(format!("http://{addr}/upstream-refused"))
        .arg("--token-file")
        .arg(&token)
        .arg("--dir")
        .arg(dir.path().join("secrets"))
        .env("LANYARD_LOG", "off")
        .output()
        .await
        .expect("run the binary");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("502 upstream_refused")
            && stderr.contains("aws-sts upstream refused: AccessDenied (HTTP 403)"),
        "{stderr}"
    );
    assert!(!stderr.contains("eyJfromfile"), "{stderr}");
    assert_eq!(*served.lock().expect("lock"), 1, "asked once");
    assert!(!dir.path().join("secrets").exists());
}

#[tokio::test]
async fn run_does_not_retry_a_refusal_and_keeps_the_files_until_they_expire() {
    // A 2 s credential: refreshed at ~1.4 s, refused, removed at its expiry at 2 s.
    let (addr, served) = serve(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_at(&format!("http://{addr}/once-then-refused"), dir.path());
    let token = dir.path().join("dev-app/token");
    let watched = served.clone();
    let t = token.clone();
    let kept_after_refusal = Arc::new(Mutex::new(false));
    let kept = kept_after_refusal.clone();
    let shutdown = async move {
        while *watched.lock().expect("lock") < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Refused: the file is still there (it has not expired yet)...
        *kept.lock().expect("lock") = t.exists();
        // ...until it expires; then give a retry on the backoff (0.5 to 1 s) time to show.
        while t.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(2_000)).await;
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        lanyard_sidecar::run(&cfg, Arc::new(SystemClock), shutdown),
    )
    .await
    .expect("run stops on shutdown")
    .expect("run ok");
    assert!(
        *kept_after_refusal.lock().expect("lock"),
        "the last good file is kept after the refusal"
    );
    assert!(!token.exists(), "removed at expiry");
    assert_eq!(
        *served.lock().expect("lock"),
        2,
        "one issue and one refusal, no retry"
    );
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

#[tokio::test]
async fn garbage_or_a_10_mib_answer_is_a_clear_error_and_keeps_the_old_files() {
    let (addr, _) = serve(600).await;
    let dir = tempfile::tempdir().expect("tempdir");
    lanyard_sidecar::init(&config(addr, dir.path()))
        .await
        .expect("first init");
    let token = dir.path().join("dev-app/token");
    let before = std::fs::read(&token).expect("token");
    for (path, expect) in [
        ("garbage", "not a credentials body"),
        ("huge", "larger than 1 MiB"),
    ] {
        let cfg = config_at(&format!("http://{addr}/{path}"), dir.path());
        let e = lanyard_sidecar::init(&cfg).await.expect_err(path);
        assert!(
            matches!(e, SidecarError::Fetch(lanyard::Error::InvalidResponse(_))),
            "{e:?}"
        );
        assert!(e.to_string().contains(expect), "{e}");
        assert!(!e.to_string().contains("<html>"), "{e}");
        assert_eq!(std::fs::read(&token).expect("kept"), before);
    }
    let names: Vec<_> = std::fs::read_dir(dir.path().join("dev-app"))
        .expect("ls")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, ["token"], "nothing half-written");
}

#[tokio::test]
async fn a_credential_past_expiry_is_removed_by_default() {
    let (addr, served) = serve(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_at(&format!("http://{addr}/once"), dir.path());
    let token = dir.path().join("dev-app/token");
    let t = token.clone();
    let shutdown = async move {
        // Written, then gone once it expires (the refresh at ~1.4 s fails).
        while !t.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while t.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        lanyard_sidecar::run(&cfg, Arc::new(SystemClock), shutdown),
    )
    .await
    .expect("the expired files are removed in time")
    .expect("run ok");
    assert!(!dir.path().join("dev-app.json").exists());
    assert_eq!(
        *served.lock().expect("lock"),
        1,
        "only one credential was issued"
    );
}

#[tokio::test]
async fn run_exits_zero_when_the_exit_file_appears() {
    let (addr, _) = serve(600).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let done = dir.path().join("main-done");
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJfromfile\n").expect("token");
    let url = format!("http://{addr}");
    let args: Vec<std::ffi::OsString> = [
        "lanyard-sidecar",
        "run",
        "--broker",
        &url,
        "--token-file",
        token.to_str().expect("utf-8"),
        "--dir",
        dir.path().join("secrets").to_str().expect("utf-8"),
        "--exit-when-file",
        done.to_str().expect("utf-8"),
    ]
    .iter()
    .map(Into::into)
    .collect();
    let run = tokio::spawn(lanyard_sidecar::main_with_args(args));
    let written = dir.path().join("secrets/dev-app/token");
    for _ in 0..100 {
        if written.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(written.exists());
    assert!(!run.is_finished(), "run keeps going until told");
    std::fs::write(&done, "").expect("done");
    let code = tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .expect("exits soon after the file appears")
        .expect("join");
    assert_eq!(code, ExitCode::SUCCESS);
}

#[tokio::test]
async fn bad_targets_are_usage_errors_and_write_nothing() {
    let (addr, served) = serve(600).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "eyJfromfile\n").expect("token");
    let secrets = dir.path().join("secrets");
    let url = format!("http://{addr}");
    let run = |target: &str, env: Vec<(String, String)>| {
        let args: Vec<std::ffi::OsString> = [
            "lanyard-sidecar",
            "init",
            "--broker",
            &url,
            "--token-file",
            token.to_str().expect("utf-8"),
            "--dir",
            secrets.to_str().expect("utf-8"),
            "--target",
            target,
        ]
        .iter()
        .map(Into::into)
        .collect();
        lanyard_sidecar::main_with_env(args, env)
    };
    for bad in [
        "role=dev-app,path=../../etc/x",
        "role=dev-app,path=/etc/x",
        "role=dev-app,path=x,format=template,template={{ nope }}",
    ] {
        assert_eq!(run(bad, Vec::new()).await, ExitCode::from(2), "{bad}");
    }
    let env = vec![(
        "LANYARD_TARGET_1".to_owned(),
        "role=dev-app,path=../x".to_owned(),
    )];
    assert_eq!(run("role=dev-app,path=ok", env).await, ExitCode::from(2));
    assert!(!secrets.exists(), "nothing written");
    assert_eq!(
        *served.lock().expect("lock"),
        0,
        "the broker was not even asked"
    );

    // Both sources together, in order: flag, then LANYARD_TARGET_<N> by N.
    let env = vec![
        (
            "LANYARD_TARGET_10".to_owned(),
            "role=dev-app,path=ten".to_owned(),
        ),
        (
            "LANYARD_TARGET_2".to_owned(),
            "role=dev-app,format=env,path=two.env".to_owned(),
        ),
    ];
    assert_eq!(run("role=dev-app,path=flag", env).await, ExitCode::SUCCESS);
    assert_eq!(
        std::fs::read(secrets.join("flag")).expect("flag"),
        b"eyJtoken-1"
    );
    assert_eq!(
        std::fs::read(secrets.join("ten")).expect("ten"),
        b"eyJtoken-1"
    );
    assert_eq!(
        std::fs::read_to_string(secrets.join("two.env")).expect("env"),
        "TOKEN=eyJtoken-1\n"
    );
}

#[tokio::test]
async fn an_unwritable_directory_is_a_clear_error() {
    let (addr, _) = serve(600).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A file where the secrets directory should be: even root cannot write into it.
    let secrets = dir.path().join("secrets");
    std::fs::write(&secrets, "not a dir").expect("file");
    let e = lanyard_sidecar::init(&config(addr, &secrets))
        .await
        .expect_err("not a dir");
    assert!(e.to_string().contains("not a directory"), "{e}");
    // A read-only directory (checked only when not root, who may write anyway).
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    if std::fs::write(ro.join("probe"), "").is_err() {
        let e = lanyard_sidecar::init(&config(addr, &ro))
            .await
            .expect_err("read-only");
        assert!(matches!(e, SidecarError::Write { .. }), "{e:?}");
        assert!(e.to_string().contains("writable"), "{e}");
    } else {
        // Root: a read-only file system is the real case; /proc stands in for one.
        let e = lanyard_sidecar::init(&config(addr, std::path::Path::new("/proc/self/lanyard")))
            .await
            .expect_err("proc");
        assert!(matches!(e, SidecarError::Write { .. }), "{e:?}");
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).expect("chmod back");
}

/// Scrapes `/metrics` until `lanyard_sidecar_ready 1`.
async fn ready_metrics(port: u16) -> String {
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            let text = r.text().await.unwrap_or_default();
            if text.lines().any(|l| l == "lanyard_sidecar_ready 1") {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sidecar never became ready");
}

#[tokio::test]
async fn run_reports_admission_to_credentials_on_disk() {
    let (addr, _) = serve(60).await;
    for (path, expect) in [("/admitted", true), ("", false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config_at(&format!("http://{addr}{path}"), dir.path());
        let health = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = health.local_addr().expect("addr").port();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let opts = lanyard_sidecar::Options::default();
        let run = lanyard_sidecar::run_with(
            &cfg,
            &opts,
            Some(health),
            Arc::new(SystemClock),
            async move {
                let _ = stop_rx.await;
            },
        );
        let scrape = async {
            let text = ready_metrics(port).await;
            let _ = stop_tx.send(());
            text
        };
        let (ran, text) = tokio::join!(run, scrape);
        ran.expect("run ok");
        let listing: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(
            dir.path().join("dev-app/token").exists(),
            "{listing:?} {text}"
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("lanyard_sidecar_admission_to_credentials_seconds "));
        if expect {
            let seconds: f64 = line
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no startup figure in\n{text}"));
            // Admitted 2.5 s before the answer; written right after it.
            assert!((2.5..30.0).contains(&seconds), "{seconds}");
        } else {
            assert!(line.is_none(), "no admission, no figure: {text}");
        }
    }
}
