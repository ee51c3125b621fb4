//! Operations: certificate rotation, admin mTLS, policy reload on file change.

use std::time::Duration;

use lanyard_test_support::{OidcIssuer, TestBroker, TestBrokerOptions, TestPki};
use serde_json::json;

fn client_trusting(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca_pem).expect("pem"))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_without_a_restart() {
    let broker = TestBroker::start(None).await;
    let healthz = format!("{}/healthz", broker.url);
    let other = tempfile::tempdir().expect("tmp");
    let next = TestPki::generate(other.path());
    let next_ca = std::fs::read(next.ca_path()).expect("ca");
    assert!(
        client_trusting(&next_ca)
            .get(&healthz)
            .send()
            .await
            .is_err(),
        "the new CA is not trusted yet"
    );
    // Replace the files the way a secret mount does: write beside, rename over.
    for (from, to) in [
        (next.cert_path(), broker.pki.cert_path()),
        (next.key_path(), broker.pki.key_path()),
    ] {
        let tmp = to.with_extension("new");
        std::fs::copy(&from, &tmp).expect("copy");
        std::fs::rename(&tmp, &to).expect("rename");
    }
    let mut served = false;
    for _ in 0..60 {
        if client_trusting(&next_ca).get(&healthz).send().await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "the new certificate is served within the reload interval"
    );

    // A broken replacement is refused and the good certificate stays.
    std::fs::write(broker.pki.cert_path(), "not a certificate").expect("write");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(client_trusting(&next_ca).get(&healthz).send().await.is_ok());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_the_admin_ca_is_an_admin() {
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            admin_mtls: true,
            ..Default::default()
        },
    )
    .await;
    let (cert, key) = broker.pki.client_cert("ops-admin", "admin-client");
    let mut pem = std::fs::read(&cert).expect("cert");
    pem.extend(std::fs::read(&key).expect("key"));
    let ca = std::fs::read(broker.pki.ca_path()).expect("ca");
    let admin = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("pem"))
        .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
        .build()
        .expect("client");
    let body = json!({"roles": ["boot"], "ttl_seconds": 60});
    let resp = admin
        .post(format!("{}/v1/admin/tokens", broker.url))
        .json(&body)
        .send()
        .await
        .expect("mint with client cert");
    assert_eq!(resp.status().as_u16(), 201);
    // Without the certificate (and without the token) the same call is refused.
    let resp = broker
        .http()
        .post(format!("{}/v1/admin/tokens", broker.url))
        .json(&body)
        .send()
        .await
        .expect("mint without");
    assert_eq!(resp.status().as_u16(), 401);
    // Workloads without certificates still connect.
    let (status, _) = broker.post_credentials(Some("x"), "").await;
    assert_eq!(status, 401);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_policy_file_takes_effect_without_a_restart() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let worker = issuer.k8s_token("shop", "worker", "lanyard", 600);
    let (status, _) = broker.post_credentials(Some(&worker), "").await;
    assert_eq!(status, 403, "not granted yet");
    broker.write_policy(
        "worker.yaml",
        "rules:\n  - name: shop-worker\n    match: {namespace: shop, service_account: worker}\n    roles: [app]\n",
    );
    let mut granted = false;
    for _ in 0..50 {
        let (status, _) = broker.post_credentials(Some(&worker), "").await;
        if status == 200 {
            granted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(granted, "the new rule applies after the reload interval");
    let records = broker.audit_records();
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "policy_reload" && r["decision"] == "allow")
    );
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains(r#"lanyard_policy_reloads_total{result="ok"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("lanyard_tls_cert_expiry_timestamp_seconds"));
    broker.stop().await;
}
