//! Session revocation (issue 11, hole 5): a revoked session's tokens are refused — at once by
//! the broker that revoked it, and within the staleness bound by every replica sharing the
//! store — with the usual opaque 401; other sessions go on. Replicas are real
//! `lanyard-broker serve` processes on one SQLite file.

use std::path::Path;
use std::time::{Duration, Instant};

use lanyard_test_support::process::metric;
use lanyard_test_support::{ProcessSite, SiteBroker, TestBroker};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_lanyard-broker");

/// The staleness bound the replicas run with (and the refresh interval).
const REVOCATION_CONFIG: &str = "bootstrap:\n  session_revocation_refresh_seconds: 1\n  session_revocation_max_stale_seconds: 5\n";
const BOUND: Duration = Duration::from_secs(5);

/// Mints a bootstrap token on `broker`, redeems it there; returns (token id, session token).
async fn session_on(broker: &SiteBroker) -> (String, String) {
    let minted = broker.mint(&["boot"]).await;
    assert_eq!(minted.status, 201, "{:?}", minted.body);
    let token = minted.body["token"].as_str().expect("token").to_owned();
    let redeemed = broker.credentials(&token).await;
    assert_eq!(redeemed.status, 200, "{:?}", redeemed.body);
    (
        minted.body["token_id"].as_str().expect("id").to_owned(),
        redeemed.body["session"]["token"]
            .as_str()
            .expect("a session")
            .to_owned(),
    )
}

fn admin_cli(site: &ProcessSite, broker: &SiteBroker, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["token", "revoke"])
        .args(args)
        .args(["--broker", &broker.url, "--ca"])
        .arg(site.pki.ca_path())
        .arg("--admin-token-file")
        .arg(site.path().join("admin-token"))
        .env("LANYARD_LOG", "warn")
        .output()
        .expect("run lanyard-broker token revoke")
}

fn stdout_records(broker: &SiteBroker) -> Vec<Value> {
    broker
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("event").is_some() && v.get("hash").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_revoked_on_one_replica_is_refused_by_the_other_within_the_bound() {
    let site = ProcessSite::new();
    // Replicas on one store write their audit records to stdout (their logs here).
    let a = site
        .spawn(Path::new(BIN), "a", "stdout", REVOCATION_CONFIG)
        .await;
    let b = site
        .spawn(Path::new(BIN), "b", "stdout", REVOCATION_CONFIG)
        .await;

    let (token_id, first) = session_on(&a).await;
    // The session works on both replicas: B knows A's signing key from the store.
    let on_b = b.credentials(&first).await;
    assert_eq!(on_b.status, 200, "{:?}", on_b.body);
    let renewed = on_b.body["session"]["token"]
        .as_str()
        .expect("renewed")
        .to_owned();
    let (_, other) = session_on(&b).await;

    // Revoke by the bootstrap token's id: it was redeemed, so its session is revoked.
    let out = admin_cli(&site, &a, &[&token_id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let session_id = token_id.replace("bt_", "ss_");
    assert!(stderr.contains(&session_id), "{stderr}");
    let revoked_at = Instant::now();

    // The revoking broker refuses every token of the session at once, opaquely.
    for token in [&first, &renewed] {
        let refused = a.credentials(token).await;
        assert_eq!(refused.status, 401, "{:?}", refused.body);
        assert_eq!(refused.body["error"]["message"], "authentication failed");
    }
    // The other replica refuses it within the bound (polled, not timed).
    let mut seen = Vec::new();
    let refused_by_b = loop {
        let answer = b.credentials(&renewed).await;
        seen.push(answer.status);
        if answer.status == 401 {
            break revoked_at.elapsed();
        }
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert!(
            revoked_at.elapsed() < BOUND + Duration::from_secs(10),
            "replica b still accepts the revoked session: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("replica b refused the revoked session after {refused_by_b:?}");
    assert_eq!(b.credentials(&first).await.status, 401);
    // Another session is untouched, on both.
    assert_eq!(a.credentials(&other).await.status, 200);
    assert_eq!(b.credentials(&other).await.status, 200);

    // Revoking again: nothing changes, and the CLI says so.
    let out = admin_cli(&site, &a, &[&session_id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("already"), "{stderr}");

    // Audited where it happened, counted where it was refused.
    let revocations: Vec<Value> = stdout_records(&a)
        .into_iter()
        .filter(|r| r["event"] == "session_revoke")
        .collect();
    assert_eq!(revocations.len(), 2, "{revocations:?}");
    assert_eq!(revocations[0]["token_id"], json!(token_id));
    let denials: Vec<Value> = stdout_records(&b)
        .into_iter()
        .filter(|r| r["event"] == "deny" && r["reason"] == "authentication failed: session_revoked")
        .collect();
    assert!(!denials.is_empty(), "b audited no session_revoked denial");
    assert!(!b.log_text().contains(&renewed), "a token reached b's log");
    let metrics_a = a.metrics().await;
    let metrics_b = b.metrics().await;
    assert_eq!(
        metric(
            &metrics_a,
            "lanyard_session_revocations_total{result=\"revoked\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &metrics_b,
            "lanyard_denials_total{reason=\"session_revoked\",role=\"-\"}"
        ) >= 1.0,
        "{metrics_b}"
    );
    assert!(metric(&metrics_b, "lanyard_revoked_sessions") >= 1.0);
    assert!(
        metric(
            &metrics_b,
            "lanyard_session_revocation_refreshes_total{result=\"ok\"}"
        ) >= 1.0
    );
    a.stop();
    b.stop();
}

/// The admin route revokes by a token of the session (the token is never recorded); a
/// bootstrap token whose session was revoked is refused on re-redemption; bad ids and
/// non-admins are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_routes_revoke_by_token_or_id_and_refuse_the_rest() {
    let broker = TestBroker::start(None).await;
    let http = broker.http();
    let token = broker.mint(&["boot"], 600).await;
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "{body}");
    let session = body["session"]["token"]
        .as_str()
        .expect("session")
        .to_owned();

    // Not an admin: the opaque 401, and nothing revoked.
    let resp = http
        .post(format!("{}/v1/admin/sessions/revoke", broker.url))
        .bearer_auth(&session)
        .json(&json!({"session_token": session}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(broker.post_credentials(Some(&session), "").await.0, 200);

    let resp = http
        .post(format!("{}/v1/admin/sessions/revoke", broker.url))
        .bearer_auth(&broker.admin_token)
        .json(&json!({"session_token": session}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let answer: Value = resp.json().await.expect("json");
    let session_id = answer["session_id"].as_str().expect("id").to_owned();
    assert!(session_id.starts_with("ss_"), "{answer}");
    assert_eq!(answer["already_revoked"], false);

    let (status, body) = broker.post_credentials(Some(&session), "").await;
    assert_eq!(status, 401, "{body}");
    // Within the grace window the bootstrap token would re-redeem into the same session:
    // refused too, and it makes no new session.
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 401, "{body}");

    // By id: already revoked. Unknown and malformed ids.
    let delete = |path: String| {
        http.delete(format!("{}{path}", broker.url))
            .bearer_auth(&broker.admin_token)
            .send()
    };
    let resp = delete(format!("/v1/admin/sessions/{session_id}"))
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.json::<Value>().await.expect("json")["already_revoked"],
        true
    );
    let resp = delete("/v1/admin/sessions/ss_00000000000000ff".into())
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 404);
    let resp = delete("/v1/admin/sessions/not-a-session".into())
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    // A token that is not a session token of this broker.
    let resp = http
        .post(format!("{}/v1/admin/sessions/revoke", broker.url))
        .bearer_auth(&broker.admin_token)
        .json(&json!({"session_token": "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);

    let log = std::fs::read_to_string(&broker.audit_file).expect("audit log");
    assert!(
        !log.contains(&session),
        "a session token reached the audit log"
    );
    let records = broker.audit_records();
    let revokes: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "session_revoke")
        .collect();
    assert_eq!(revokes.len(), 2, "{revokes:?}");
    assert!(
        revokes[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&session_id) && r.contains("by a token of it")),
        "{:?}",
        revokes[0]
    );
    broker.stop().await;
}

/// Issue 16: a broker JWT revoked through one replica is on the other's revocation list within
/// `revocation.list_max_age_seconds` (each reads the store), on the revoking one at once, and
/// introspection on either answers inactive at once (read from the store at each call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_revoked_on_one_replica_is_on_the_others_revocation_list_within_its_max_age() {
    const MAX_AGE: Duration = Duration::from_secs(2);
    let site = ProcessSite::new();
    let config = "revocation:\n  list_max_age_seconds: 2\n";
    let a = site.spawn(Path::new(BIN), "a", "stdout", config).await;
    let b = site.spawn(Path::new(BIN), "b", "stdout", config).await;
    let minted = a.mint(&["boot"]).await;
    let token = minted.body["token"].as_str().expect("token").to_owned();
    let redeemed = a.credentials(&token).await;
    assert_eq!(redeemed.status, 200, "{:?}", redeemed.body);
    let cred = &redeemed.body["credentials"][0];
    let lease_id = cred["lease_id"].as_str().expect("lease").to_owned();
    let jwt = cred["data"]["token"].as_str().expect("JWT").to_owned();
    let listed = |answer: &lanyard_test_support::process::Answer| -> bool {
        answer.body["revoked"]
            .as_array()
            .expect("a list")
            .iter()
            .any(|e| e["jti"] == lease_id.as_str())
    };
    let introspect = |url: String| {
        let http = site.http();
        let admin = site.admin_token.clone();
        let jwt = jwt.clone();
        async move {
            let v: Value = http
                .post(format!("{url}/v1/introspect"))
                .bearer_auth(admin)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={jwt}"))
                .send()
                .await
                .expect("introspect")
                .json()
                .await
                .expect("JSON");
            v["active"] == true
        }
    };
    // B caches its (empty) list now.
    assert!(!listed(&b.get("/v1/jwks/revoked").await));
    assert!(
        introspect(b.url.clone()).await,
        "B verifies A's JWT (keys in the store)"
    );

    let revoked = site
        .http()
        .post(format!("{}/v1/leases/{lease_id}/revoke", a.url))
        .bearer_auth(&site.admin_token)
        .send()
        .await
        .expect("revoke");
    assert_eq!(revoked.status().as_u16(), 200);
    let at = Instant::now();
    assert!(listed(&a.get("/v1/jwks/revoked").await), "at once on A");
    assert!(!introspect(a.url.clone()).await);
    assert!(!introspect(b.url.clone()).await, "at once on B too");
    let took = loop {
        if listed(&b.get("/v1/jwks/revoked").await) {
            break at.elapsed();
        }
        assert!(
            at.elapsed() < MAX_AGE + Duration::from_secs(3),
            "B's list still lacks the revoked JWT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(took <= MAX_AGE + Duration::from_secs(1), "{took:?}");
}
