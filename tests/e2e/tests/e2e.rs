//! Broker + sidecar + SDK together: the real broker over TLS, a real OIDC issuer on
//! loopback, the sidecar as a library and as a binary, and the SDK client.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lanyard::TokenSource;
use lanyard::clock::SystemClock;
use lanyard_test_support::{OidcIssuer, TestBroker, TestBrokerOptions};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_init_writes_credentials_from_a_projected_token() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let work = lanyard_test_support::Workload::kubernetes(&issuer, "shop", "api");
    let (token_file, secrets) = (work.token_file.clone(), work.secrets.clone());

    let cfg = lanyard_sidecar::SidecarConfig {
        client: broker.client(TokenSource::JwtFile(token_file.clone())),
        dir: secrets.clone(),
    };
    lanyard_sidecar::init(&cfg).await.expect("init succeeds");

    let token_path = secrets.join("app").join("token");
    let token = std::fs::read_to_string(&token_path).expect("token written");
    assert_eq!(mode(&token_path), 0o400);
    let claims = token.split('.').nth(1).expect("jwt");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims)
            .expect("base64url"),
    )
    .expect("claims");
    assert_eq!(claims["sub"], "system:serviceaccount:shop:api");
    assert_eq!(claims["aud"], "app");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(secrets.join("app.json")).expect("json"))
            .expect("parse");
    assert_eq!(meta["role"], "app");
    assert!(meta["expires_at"].is_string());
    // Nothing half-written is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(secrets.join("app"))
        .expect("ls")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_rereads_the_token_file_on_every_fetch() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let work = tempfile::tempdir().expect("tmp");
    let token_file = work.path().join("sa-token");
    std::fs::write(&token_file, issuer.k8s_token("shop", "api", "lanyard", 600)).expect("write");
    let c = broker.client(TokenSource::JwtFile(token_file.clone()));

    let first = c.fetch().await.expect("fetch");
    assert_eq!(first.identity, "system:serviceaccount:shop:api");
    assert_eq!(first.credentials[0].role, "app");
    let secret = first.credentials[0].data.get("token").expect("token");
    assert!(
        !format!("{first:?}").contains(secret.expose()),
        "Debug must redact"
    );

    // The kubelet rotates the projected token: the next fetch uses the new one.
    std::fs::write(
        &token_file,
        issuer.k8s_token("shop", "other", "lanyard", 600),
    )
    .expect("write");
    match c.fetch().await {
        Err(lanyard::Error::Broker { status: 403, .. }) => {}
        other => panic!("expected a 403 for the rotated identity, got {other:?}"),
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_run_refreshes_with_a_bootstrap_session_and_stops_cleanly() {
    let policy = r#"
roles:
  short:
    backend: jwt
    max_ttl_seconds: 2
rules:
  - name: boot
    match: {bootstrap_role: short}
    roles: [short]
"#;
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            policies: vec![("p.yaml".into(), policy.into())],
            ..Default::default()
        },
    )
    .await;
    let work = tempfile::tempdir().expect("tmp");
    let token_file = work.path().join("bootstrap");
    std::fs::write(&token_file, broker.mint(&["short"], 60).await).expect("write");
    let secrets = work.path().join("secrets");
    std::fs::create_dir_all(&secrets).expect("mkdir");
    let cfg = lanyard_sidecar::SidecarConfig {
        client: broker.client(TokenSource::BootstrapFile(token_file)),
        dir: secrets.clone(),
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(async move {
        lanyard_sidecar::run(&cfg, Arc::new(SystemClock), async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await
    });
    let path = secrets.join("short").join("token");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        if let Ok(t) = std::fs::read_to_string(&path) {
            seen.insert(t);
        }
        if seen.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.len() >= 3,
        "a 2 s credential was refreshed at least twice (saw {} versions)",
        seen.len()
    );
    let _ = stop_tx.send(true);
    run.await
        .expect("join")
        .expect("run ends cleanly on shutdown");
    let redeemed = broker
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "token_redeem")
        .count();
    assert_eq!(
        redeemed, 1,
        "refreshes use the session, not the spent bootstrap token"
    );
    broker.stop().await;
}
