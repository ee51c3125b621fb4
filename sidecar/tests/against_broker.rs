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
