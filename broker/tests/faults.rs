//! Faults, end to end on loopback: the broker killed mid-burst, clock skew between the issuer
//! and the broker, key rotation at the issuer. Each test says what the user sees and checks
//! that nothing the broker acknowledged is lost. (A replaced TLS certificate: `ops.rs`; an
//! upstream outage: `sts.rs`, `vault.rs`; docs/ARCHITECTURE.md lists every fault and its test.)

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use lanyard::clock::Clock as _;
use lanyard_test_support::{
    Algorithm, BrokerProcess, OidcIssuer, TestBroker, TestBrokerOptions, now_unix,
};
use serde_json::Value;

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// `lanyard_denials_total` for `reason`, summed over roles.
fn denials(metrics: &str, reason: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("lanyard_denials_total{"))
        .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// What one request of the burst saw.
enum Outcome {
    /// 200, with its request id and lease ids.
    Issued(String, Vec<String>),
    /// Any other status.
    Refused(u16),
    /// No answer: the connection broke (the broker died).
    Lost,
}

async fn issue(client: &reqwest::Client, url: &str, token: &str) -> Outcome {
    let sent = client
        .post(format!("{url}/v1/credentials"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{}")
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    let Ok(resp) = sent else {
        return Outcome::Lost;
    };
    let status = resp.status().as_u16();
    let Ok(body) = resp.json::<Value>().await else {
        return Outcome::Lost;
    };
    if status != 200 {
        return Outcome::Refused(status);
    }
    let leases = body["credentials"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["lease_id"].as_str().expect("lease id").to_owned())
        .collect();
    Outcome::Issued(
        body["request_id"].as_str().expect("request id").to_owned(),
        leases,
    )
}

/// `SIGKILL` in the middle of many concurrent issuances. What the user sees: requests in
/// flight fail with a broken connection (never a 200 the broker did not keep), and after the
/// restart everything works again. Nothing acknowledged is lost: every 200 has its audit
/// record and its lease (the workload can still revoke it), and `audit verify --store`
/// passes on the log the killed broker left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_burst_keeps_every_answered_issuance() {
    let issuer = OidcIssuer::start().await;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_lanyard-broker"));
    let mut broker = BrokerProcess::start(bin, Some(&issuer), TestBrokerOptions::default()).await;
    let token = Arc::new(issuer.k8s_token("shop", "api", "lanyard", 3600));

    let answered = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..24 {
        let (client, url, token) = (broker.http(), broker.url.clone(), token.clone());
        let (answered, stop) = (answered.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let outcome = issue(&client, &url, &token).await;
                let lost = matches!(outcome, Outcome::Lost);
                if matches!(outcome, Outcome::Issued(..)) {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                seen.push(outcome);
                if lost {
                    break;
                }
            }
            seen
        }));
    }
    // Kill once the burst is well under way, at a moment the workers do not choose.
    while answered.load(Ordering::SeqCst) < 150 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(u64::from(jitter_ms()))).await;
    broker.kill();
    stop.store(true, Ordering::SeqCst);

    let mut issued = Vec::new();
    let mut lost = 0;
    for w in workers {
        for outcome in w.await.expect("worker") {
            match outcome {
                Outcome::Issued(request, leases) => issued.push((request, leases)),
                Outcome::Refused(status) => panic!("a {status} during the burst"),
                Outcome::Lost => lost += 1,
            }
        }
    }
    eprintln!(
        "{} answered 200 before the kill, {lost} broke",
        issued.len()
    );
    assert!(issued.len() >= 150, "{} issued", issued.len());
    assert!(lost > 0, "the kill broke requests in flight");

    // Restart: the broker resumes its chain and serves again.
    broker
        .restart()
        .await
        .expect("the killed broker starts again on its own audit log and store");
    let Outcome::Issued(_, after) = issue(&broker.http(), &broker.url, &token).await else {
        panic!("no issuance after the restart");
    };

    // Every acknowledged issuance is in the audit log...
    let records = broker.audit_records();
    let audited: BTreeSet<(&str, &str)> = records
        .iter()
        .filter(|r| r["event"] == "issue")
        .filter_map(|r| Some((r["request_id"].as_str()?, r["lease_id"].as_str()?)))
        .collect();
    for (request, leases) in &issued {
        for lease in leases {
            assert!(
                audited.contains(&(request.as_str(), lease.as_str())),
                "request {request} was answered 200 but lease {lease} has no audit record"
            );
        }
    }
    // ...and in the store: the workload can still revoke each lease (404 if it were lost).
    let client = broker.http();
    for lease in issued.iter().flat_map(|(_, l)| l).chain(&after) {
        let resp = client
            .post(format!("{}/v1/leases/{lease}/revoke", broker.url))
            .bearer_auth(token.as_str())
            .send()
            .await
            .expect("revoke");
        assert_eq!(resp.status().as_u16(), 200, "lease {lease}");
    }

    // The log the killed broker left verifies, chain and store head alike.
    broker.kill();
    lanyard_test_support::assert_audit_verifies(bin, &broker.audit_file, Some(&broker.store_file));
}

/// 0-49 ms, from the clock (the crate has no random-number dependency of its own).
fn jitter_ms() -> u8 {
    (lanyard::clock::SystemClock
        .now()
        .duration_since(std::time::UNIX_EPOCH))
    .map(|d| (d.subsec_nanos() % 50) as u8)
    .unwrap_or(0)
}

/// An issuer whose clock is off. What the user sees: within `leeway_seconds` (30 here) the
/// token works; beyond it the workload gets the same opaque 401 as any bad token, and the
/// operator sees the reason (`not_yet_valid` for an issuer ahead, `expired` for tokens past
/// their `exp`) in `lanyard_denials_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_within_the_leeway_is_accepted_and_beyond_it_refused_with_the_reason() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    // The default leeway is 30 s; these are well inside and well outside it, so the seconds
    // the test itself takes do not matter.
    let ahead_ok = issuer.k8s_token_skewed("shop", "api", "lanyard", 15, 600);
    let (status, body) = broker.post_credentials(Some(&ahead_ok), "").await;
    assert_eq!(status, 200, "issuer 15 s ahead: {body}");

    let ahead_far = issuer.k8s_token_skewed("shop", "api", "lanyard", 120, 600);
    let (status, body) = broker.post_credentials(Some(&ahead_far), "").await;
    assert_eq!((status, code(&body)), (401, "unauthenticated"), "{body}");

    // An issuer behind: its tokens reach `exp` early by the broker's clock.
    let behind_ok = issuer.k8s_token_skewed("shop", "api", "lanyard", -615, 600);
    let (status, body) = broker.post_credentials(Some(&behind_ok), "").await;
    assert_eq!(
        status, 200,
        "expired 15 s ago by the broker's clock: {body}"
    );

    let behind_far = issuer.k8s_token_skewed("shop", "api", "lanyard", -720, 600);
    let (status, body) = broker.post_credentials(Some(&behind_far), "").await;
    assert_eq!((status, code(&body)), (401, "unauthenticated"), "{body}");

    let metrics = broker.metrics().await;
    assert_eq!(denials(&metrics, "not_yet_valid"), 1.0, "{metrics}");
    assert_eq!(denials(&metrics, "expired"), 1.0, "{metrics}");
    let issued = broker
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "issue")
        .count();
    assert_eq!(issued, 2, "the two tokens within the leeway");
    broker.stop().await;
}

/// A token whose `iat` alone is ahead (some issuers stamp `nbf` in the past): the same leeway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_at_in_the_future_is_held_to_the_same_leeway() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let now = now_unix();
    for (iat_ahead, expected) in [(20, 200), (300, 401)] {
        let mut claims = issuer.k8s_claims("shop", "api", "lanyard", now - 60, 3600);
        claims["iat"] = serde_json::json!(now + iat_ahead);
        let token = issuer.token(Algorithm::RS256, claims);
        let (status, body) = broker.post_credentials(Some(&token), "").await;
        assert_eq!(status, expected, "iat {iat_ahead} s ahead: {body}");
    }
    broker.stop().await;
}

/// The issuer rotates its signing key. What the user sees: nothing — a token with the new
/// `kid` works at once (the broker refreshes the JWKS on an unknown `kid`, at most once per
/// `min_refresh_interval_seconds`), and tokens of the old key keep working while the issuer
/// still publishes it. Once the issuer drops the old key, the broker drops it at its next
/// refresh (`refresh_interval_seconds`), and tokens signed with it get a 401
/// (`unknown_key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_at_the_issuer_is_picked_up_and_a_dropped_key_stops_working() {
    let issuer = OidcIssuer::start().await;
    // Discovery, `min_refresh_interval_seconds` 10 and `refresh_interval_seconds` 300: the
    // defaults.
    let broker = TestBroker::start(Some(&issuer)).await;
    let old_kid = issuer.current_kid(Algorithm::RS256);
    let old_token = issuer.k8s_token("shop", "api", "lanyard", 3600);
    let (status, body) = broker.post_credentials(Some(&old_token), "").await;
    assert_eq!(status, 200, "{body}");
    let fetches = issuer.jwks_fetches();

    // Rotation: the new key signs. The first token with its kid makes the broker refresh
    // (the default minimum interval is 10 s since the last fetch).
    let new_kid = issuer.rotate();
    assert_ne!(new_kid, old_kid);
    let new_token = issuer.k8s_token("shop", "api", "lanyard", 3600);
    let mut status = 0;
    for _ in 0..150 {
        (status, _) = broker.post_credentials(Some(&new_token), "").await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the new kid is accepted after a refresh");
    assert!(
        issuer.jwks_fetches() > fetches,
        "the broker refetched the JWKS"
    );
    let (status, _) = broker.post_credentials(Some(&old_token), "").await;
    assert_eq!(
        status, 200,
        "the old key still verifies while it is published"
    );

    // The issuer drops the old key; a token naming a kid the broker does not know makes it
    // refresh (once the minimum interval has passed), and the refreshed set lacks the old key.
    assert!(issuer.retire(&old_kid));
    let unknown =
        issuer.sign_with_unknown_kid(issuer.k8s_claims("shop", "api", "lanyard", now_unix(), 600));
    let mut dropped = false;
    for _ in 0..150 {
        let _ = broker.post_credentials(Some(&unknown), "").await;
        let (status, _) = broker.post_credentials(Some(&old_token), "").await;
        if status == 401 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dropped,
        "a token of the dropped key is refused after a refresh"
    );
    let (status, body) = broker.post_credentials(Some(&new_token), "").await;
    assert_eq!(status, 200, "the new key keeps working: {body}");
    // The refusal names the reason for the operator.
    let before = denials(&broker.metrics().await, "unknown_key");
    let (status, _) = broker.post_credentials(Some(&old_token), "").await;
    assert_eq!(status, 401);
    assert_eq!(
        denials(&broker.metrics().await, "unknown_key"),
        before + 1.0
    );
    broker.stop().await;
}
