//! An upstream's refusal is not an outage: STS `AccessDenied` (moto's recording proxy
//! answering STS's documented error XML) and Vault `permission denied` (the Vault emulator
//! answering Vault's documented 403) reach the caller as 502 `upstream_refused`, not
//! retryable and without `Retry-After`, and the credential cache does not serve an older
//! credential over them. An outage still gets 503 and the cached credential.

use std::time::Duration;

use axum::http::{StatusCode, header};
use lanyard::wire::ErrorCode;
use lanyard_broker::error::ApiError;
use lanyard_test_support::moto::STS_POLICY;
use lanyard_test_support::{InProcessBroker, MotoServer, VaultEmulator, k8s_pod};

/// Checks the HTTP answer of a refusal: 502, `upstream_refused`, not retryable, no
/// `Retry-After`, and a message with `reason` and without `never`.
fn assert_refusal(err: ApiError, reason: &str, never: &str) {
    assert_eq!(err.code(), ErrorCode::UpstreamRefused, "{err}");
    let body = err.body(Some("req_test"));
    assert!(!body.error.retryable);
    assert!(
        body.error.message.contains(reason),
        "{}",
        body.error.message
    );
    assert!(
        !body.error.message.contains(never),
        "{}",
        body.error.message
    );
    let resp = err.into_response_with_id(Some("req_test"));
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert!(resp.headers().get(header::RETRY_AFTER).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_access_denied_is_a_502_the_broker_does_not_retry() {
    assert!(
        std::env::var("AWS_ACCESS_KEY_ID").is_ok(),
        "AWS_ACCESS_KEY_ID is not set: run ./test.sh (tests/peers/moto.sh exports dummy keys)"
    );
    let moto = MotoServer::start().await;
    let b = InProcessBroker::start(STS_POLICY, &moto.broker_backend_config())
        .await
        .expect("broker");
    let me = k8s_pod("shop", "api", "a");
    moto.refuse_next("AssumeRole", 1);
    let err = b.issue(&me, None).await.expect_err("refused");
    assert_refusal(
        err,
        "aws-sts upstream refused: AccessDenied (HTTP 403): User: \
         arn:aws:iam::123456789012:user/lanyard-broker is not authorized to perform: \
         sts:AssumeRole",
        "lanyard-test-secret",
    );
    assert_eq!(
        moto.calls_of("AssumeRole").len(),
        1,
        "neither the broker nor its AWS SDK retried the refusal"
    );
    // Once STS allows it again, the next request is issued.
    b.issue(&me, None).await.expect("issued");
    assert_eq!(moto.calls_of("AssumeRole").len(), 2);
}

const KV_POLICY: &str = r#"
roles:
  db-password:
    backend: vault
    scope: [password]
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: kv2, path: "apps/{{namespace}}/db"}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [db-password]
"#;

const KV_PATH: &str = "secret/data/apps/shop/db";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_permission_denied_is_a_502_and_never_served_from_the_cache() {
    let vault = VaultEmulator::start().await;
    vault.put_kv(
        "secret",
        "apps/shop/db",
        serde_json::json!({"password": "s3cr3t-pass"}),
    );
    vault.enable_approle("approle", "role-123", "secret-456", 3600);
    let tmp = tempfile::tempdir().expect("tmp");
    let secret_id = tmp.path().join("secret-id");
    std::fs::write(&secret_id, "secret-456\n").expect("secret id");
    let config = format!(
        "backends:\n  vault:\n    address: \"{}\"\n    max_requests_per_second: 1000\n    \
         cache_refresh_fraction: 0.5\n    auth:\n      approle:\n        role_id: role-123\n        \
         secret_id_file: \"{}\"\n",
        vault.url,
        secret_id.display()
    );
    let b = InProcessBroker::start(KV_POLICY, &config)
        .await
        .expect("broker");
    let me = k8s_pod("shop", "api", "a");

    // Denied with a token the broker has just logged in with: a refusal.
    vault.deny_path(KV_PATH, true);
    let err = b.issue(&me, None).await.expect_err("denied");
    assert_refusal(
        err,
        "vault upstream refused: reading secret/data/apps/shop/db: Vault answered 403: \
         permission denied",
        "secret-456",
    );
    assert_eq!(vault.requests_to(KV_PATH).len(), 1);

    // Allowed: issued and cached.
    vault.deny_path(KV_PATH, false);
    let first = b.issue(&me, None).await.expect("issued");
    assert_eq!(
        first.credentials[0].data["password"].expose(),
        "s3cr3t-pass"
    );

    // Past the cache's refresh point the path is denied again. Vault answers 403 alike to a
    // denial and to a token that expired upstream, so on a token older than the request the
    // broker logs in again and calls it an outage: the cached credential is served.
    b.clock.advance(Duration::from_secs(400));
    vault.deny_path(KV_PATH, true);
    let served = b.issue(&me, None).await.expect("served from the cache");
    assert_eq!(
        served.credentials[0].expires_at,
        first.credentials[0].expires_at
    );
    // Denied again with a fresh token: a refusal, and the cached credential (still valid for
    // 200 s) is not served over it.
    let err = b.issue(&me, None).await.expect_err("refused");
    assert_refusal(err, "Vault answered 403: permission denied", "s3cr3t-pass");
    assert_eq!(vault.requests_to(KV_PATH).len(), 4);
    assert_eq!(vault.requests_to("auth/approle/login").len(), 3);

    // An outage is still a retryable 503 that serves the cached credential.
    vault.deny_path(KV_PATH, false);
    vault.set_down(true);
    let served = b.issue(&me, None).await.expect("served through the outage");
    assert_eq!(
        served.credentials[0].expires_at,
        first.credentials[0].expires_at
    );
}
