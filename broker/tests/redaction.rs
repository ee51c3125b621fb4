//! Planted secrets never reach logs, audit records, metrics or error bodies. Everything the
//! broker logs (at trace level) during a busy session is captured and searched.

use std::io::Write;
use std::sync::{Arc, Mutex};

use lanyard_test_support::{OidcIssuer, TestBroker};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_audit_metrics_or_errors() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("lanyard=trace,lanyard_broker=trace,lanyard_sidecar=trace,info")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let sa = issuer.k8s_token("shop", "api", "lanyard", 600);
    let mut planted = vec![sa.clone(), broker.admin_token.clone()];
    let mut bodies = Vec::new();

    let (status, body) = broker.post_credentials(Some(&sa), "").await;
    assert_eq!(status, 200);
    planted.push(
        body["credentials"][0]["data"]["token"]
            .as_str()
            .expect("t")
            .to_owned(),
    );

    let bootstrap = broker.mint(&["boot"], 60).await;
    planted.push(bootstrap.clone());
    let (status, body) = broker.post_credentials(Some(&bootstrap), "").await;
    assert_eq!(status, 200);
    let session = body["session"]["token"]
        .as_str()
        .expect("session")
        .to_owned();
    planted.push(session.clone());
    planted.push(
        body["credentials"][0]["data"]["token"]
            .as_str()
            .expect("t")
            .to_owned(),
    );

    // Presented again within the grace window: a re-redemption of the same session.
    let (status, body) = broker.post_credentials(Some(&bootstrap), "").await;
    assert_eq!(status, 200);
    for secret in [
        &body["session"]["token"],
        &body["credentials"][0]["data"]["token"],
    ] {
        planted.push(secret.as_str().expect("t").to_owned());
    }
    let refused_bootstrap = broker.mint(&["boot"], 60).await;
    planted.push(refused_bootstrap.clone());

    // Failures: a bootstrap token asking for a role it was not minted for (its reservation
    // is released), a forged token, a denied role, a bad body.
    let forged = issuer.forge_alg_none(issuer.k8s_claims(
        "shop",
        "api",
        "lanyard",
        lanyard_test_support::now_unix(),
        600,
    ));
    planted.push(forged.clone());
    for (bearer, body) in [
        (refused_bootstrap.as_str(), r#"{"roles":["app"]}"#),
        (forged.as_str(), ""),
        (sa.as_str(), r#"{"roles":["boot"]}"#),
        (session.as_str(), r#"{"roles":["nope"]}"#),
        (sa.as_str(), "{bad json"),
    ] {
        let (status, b) = broker.post_credentials(Some(bearer), body).await;
        assert!(status >= 400);
        bodies.push(b.to_string());
    }
    let metrics = broker.metrics().await;
    let audit = std::fs::read_to_string(&broker.audit_file).expect("audit");
    broker.stop().await;

    let logs = String::from_utf8(capture.0.lock().expect("lock").clone()).expect("utf8");
    assert!(
        logs.contains("credential issued"),
        "the capture works: {logs}"
    );
    for secret in &planted {
        // JWT signatures alone are unique enough to catch partial leaks too.
        let tail = secret.rsplit('.').next().unwrap_or(secret);
        for (name, text) in [("logs", &logs), ("audit", &audit), ("metrics", &metrics)] {
            assert!(!text.contains(secret.as_str()), "secret leaked into {name}");
            assert!(
                tail.len() < 16 || !text.contains(tail),
                "secret part leaked into {name}"
            );
        }
        for b in &bodies {
            assert!(
                !b.contains(secret.as_str()),
                "secret leaked into an error body: {b}"
            );
        }
    }
}
