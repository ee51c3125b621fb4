//! The `lanyard-sidecar` binary against the real broker.

use std::path::Path;

use lanyard_test_support::{OidcIssuer, TestBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_binary_init_succeeds_and_fails_with_a_clear_reason() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let work = lanyard_test_support::Workload::kubernetes(&issuer, "shop", "api");
    let (token_file, secrets) = (work.token_file.clone(), work.secrets.clone());
    let bin = env!("CARGO_BIN_EXE_lanyard-sidecar");
    let args = |token: &Path| {
        vec![
            "init".to_owned(),
            "--broker".to_owned(),
            broker.url.clone(),
            "--ca".to_owned(),
            broker.pki.ca_path().display().to_string(),
            "--token-file".to_owned(),
            token.display().to_string(),
            "--dir".to_owned(),
            secrets.display().to_string(),
        ]
    };
    let ok_args = args(&token_file);
    let b = bin;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(b)
            .args(ok_args)
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(secrets.join("app/token").is_file());

    let bad = work.path().join("bad-token");
    std::fs::write(
        &bad,
        issuer.forge_alg_none(issuer.k8s_claims(
            "shop",
            "api",
            "lanyard",
            lanyard_test_support::now_unix(),
            600,
        )),
    )
    .expect("write");
    let bad_args = args(&bad);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(bad_args)
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("401") || err.contains("unauthenticated"),
        "{err}"
    );
    broker.stop().await;
}

/// A bootstrap token bound to a dirty image (real image, real loopback registry from
/// `tests/peers/images.sh`): `init` fails at once with the gate's reason and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_init_fails_fast_with_the_image_gates_reason() {
    let registry = std::env::var("LANYARD_TEST_REGISTRY").expect(
        "LANYARD_TEST_REGISTRY is not set: run ./test.sh, or `source tests/peers/images.sh` first",
    );
    let broker = TestBroker::start_with(
        None,
        lanyard_test_support::broker::TestBrokerOptions {
            extra_config: "gate:\n  insecure_loopback_registries: true\n".into(),
            ..Default::default()
        },
    )
    .await;
    let resp = broker
        .http()
        .post(format!("{}/v1/admin/tokens", broker.url))
        .bearer_auth(&broker.admin_token)
        .json(&serde_json::json!({"roles": ["boot"], "image": format!("{registry}/lanyard/env-secret:1")}))
        .send()
        .await
        .expect("mint");
    assert_eq!(resp.status().as_u16(), 201);
    let minted: serde_json::Value = resp.json().await.expect("json");
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("bootstrap-token");
    std::fs::write(&token, minted["token"].as_str().expect("token")).expect("write");
    let secrets = dir.path().join("secrets");
    let args = vec![
        "init".to_owned(),
        "--broker".to_owned(),
        broker.url.clone(),
        "--ca".to_owned(),
        broker.pki.ca_path().display().to_string(),
        "--bootstrap-token-file".to_owned(),
        token.display().to_string(),
        "--dir".to_owned(),
        secrets.display().to_string(),
    ];
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lanyard-sidecar"))
            .args(args)
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    assert!(!out.status.success());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "a refusal is not retried"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("image_refused")
            && err.contains("bootstrap-boot")
            && err.contains("env-secret@sha256:"),
        "{err}"
    );
    assert!(
        !secrets.join("boot").exists(),
        "nothing written for a refused workload"
    );
    broker.stop().await;
}
