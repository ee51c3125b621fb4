//! Fault: the SQLite store becomes unusable under a running `lanyard-broker serve` process
//! (issue 11, faults). What the user sees — a clear, retryable 503 `store_unavailable`,
//! readiness false, counted in metrics — and that nothing acknowledged is lost once the store
//! is back: `audit verify` passes and every 200 answer has its audit record.
//!
//! The outage is another process holding the database's write lock (as `sqlite3 FILE 'BEGIN
//! EXCLUSIVE; …'` or a stuck backup would): here this test process, through its own SQLite
//! connection. In WAL mode readers go on meanwhile; what needs a write (every audited answer
//! records the chain head, every issuance its lease) waits for the busy timeout and fails.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use lanyard_test_support::process::metric;
use lanyard_test_support::{Answer, ProcessSite, SiteBroker};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lanyard-broker");

/// Refresh the revoked sessions every second; refuse sessions once the set is 3 s old.
const CONFIG: &str = "bootstrap:\n  session_revocation_refresh_seconds: 1\n  session_revocation_max_stale_seconds: 3\n";

/// Answers that were 200, by request id.
#[derive(Default)]
struct Acknowledged(BTreeSet<String>);

impl Acknowledged {
    fn note(&mut self, a: &Answer) {
        if a.status == 200 {
            self.0.insert(
                a.body["request_id"]
                    .as_str()
                    .expect("a 200 answer has a request id")
                    .to_owned(),
            );
        }
    }
}

fn assert_store_unavailable(a: &Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}: {:?}", a.body);
    assert_eq!(a.body["error"]["code"], "store_unavailable", "{what}");
    assert_eq!(a.body["error"]["retryable"], true, "{what}");
    assert_eq!(a.retry_after.as_deref(), Some("1"), "{what}");
    assert!(
        a.body["error"]["request_id"].is_string(),
        "{what}: {:?}",
        a.body
    );
}

async fn poll_until(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < within, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn audit_verify(site: &ProcessSite) {
    lanyard_test_support::assert_audit_verifies(
        std::path::Path::new(BIN),
        &site.path().join("audit.log"),
        None,
    );
}

fn audited_request_ids(site: &ProcessSite) -> BTreeSet<String> {
    std::fs::read_to_string(site.path().join("audit.log"))
        .expect("audit log")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| r["request_id"].as_str().map(str::to_owned))
        .collect()
}

async fn redeem(broker: &SiteBroker) -> (String, Answer) {
    let minted = broker.mint(&["boot"]).await;
    assert_eq!(minted.status, 201, "{:?}", minted.body);
    let token = minted.body["token"].as_str().expect("token").to_owned();
    let answer = broker.credentials(&token).await;
    (token, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_is_a_retryable_503_and_nothing_acknowledged_is_lost() {
    let site = ProcessSite::new();
    let broker = site
        .spawn(Path::new(BIN), "broker", "audit.log", CONFIG)
        .await;
    let mut acked = Acknowledged::default();

    let (_, first) = redeem(&broker).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    acked.note(&first);
    let session = first.body["session"]["token"]
        .as_str()
        .expect("session")
        .to_owned();
    let again = broker.credentials(&session).await;
    assert_eq!(again.status, 200);
    acked.note(&again);
    let minted = broker.mint(&["boot"]).await;
    assert_eq!(minted.status, 201);
    let spare = minted.body["token"].as_str().expect("token").to_owned();
    assert_eq!(broker.get("/readyz").await.status, 200);

    // The outage: another process takes the write lock and keeps it.
    let lock = rusqlite::Connection::open(&site.store_file).expect("open the store");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");

    // A session needs no store read to authenticate, but its issuance records a lease and
    // the audit chain head: it fails, retryably.
    let during = broker.credentials(&session).await;
    assert_store_unavailable(&during, "session issuance");
    acked.note(&during);
    // A bootstrap token cannot be reserved: refused retryably, and not spent.
    let during = broker.credentials(&spare).await;
    assert_store_unavailable(&during, "bootstrap redemption");
    // The admin API too.
    assert_store_unavailable(&broker.mint(&["boot"]).await, "token mint");
    let ready = broker.get("/readyz").await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    assert_eq!(ready.body["ready"], false);
    assert!(
        ready.body["checks"]["store"]
            .as_str()
            .is_some_and(|m| m.contains("locked")),
        "{:?}",
        ready.body
    );
    assert_eq!(
        ready.body["checks"]["session_revocations"], "ok",
        "reads go on"
    );
    let metrics = broker.metrics().await;
    assert!(
        metric(&metrics, "lanyard_errors_total{code=\"store_unavailable\"}") >= 3.0,
        "{metrics}"
    );

    // The store comes back.
    lock.execute_batch("ROLLBACK").expect("let go of the lock");
    drop(lock);
    poll_until("ready again", Duration::from_secs(20), async || {
        broker.get("/readyz").await.status == 200
    })
    .await;
    let after = broker.credentials(&spare).await;
    assert_eq!(
        after.status, 200,
        "the token refused during the outage is unspent: {:?}",
        after.body
    );
    acked.note(&after);
    let after = broker.credentials(&session).await;
    assert_eq!(after.status, 200, "{:?}", after.body);
    acked.note(&after);
    assert!(
        !broker.log_text().contains(&session),
        "a token reached the log"
    );
    broker.stop();

    audit_verify(&site);
    let audited = audited_request_ids(&site);
    let missing: Vec<&String> = acked.0.difference(&audited).collect();
    assert!(
        missing.is_empty(),
        "200 answers without an audit record: {missing:?}"
    );
    assert_eq!(acked.0.len(), 4);
}

/// The revoked-session set cannot be reloaded (the store answers its reads with errors):
/// once it is older than the bound, sessions are refused with a retryable 503 — not a 401,
/// so clients keep their session — and readiness says why; a reload brings them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_fail_closed_when_revocations_cannot_be_reloaded() {
    let site = ProcessSite::new();
    let broker = site
        .spawn(Path::new(BIN), "broker", "audit.log", CONFIG)
        .await;
    let (_, first) = redeem(&broker).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let session = first.body["session"]["token"]
        .as_str()
        .expect("session")
        .to_owned();

    // The table the set is read from goes away: every reload fails.
    let db = rusqlite::Connection::open(&site.store_file).expect("open the store");
    db.execute_batch("ALTER TABLE session_revocations RENAME TO session_revocations_aside")
        .expect("break the reads");
    poll_until("sessions refused", Duration::from_secs(20), async || {
        let a = broker.credentials(&session).await;
        if a.status == 200 {
            return false;
        }
        assert_store_unavailable(&a, "stale revocations");
        true
    })
    .await;
    let ready = broker.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body["checks"]["session_revocations"]
            .as_str()
            .is_some_and(|m| m.contains("not reloaded")),
        "{:?}",
        ready.body
    );
    let metrics = broker.metrics().await;
    assert!(
        metric(
            &metrics,
            "lanyard_session_revocation_refreshes_total{result=\"error\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "lanyard_denials_total{reason=\"session_revocations_stale\",role=\"-\"}"
        ) >= 1.0
    );

    db.execute_batch("ALTER TABLE session_revocations_aside RENAME TO session_revocations")
        .expect("mend the reads");
    poll_until(
        "sessions served again",
        Duration::from_secs(20),
        async || broker.credentials(&session).await.status == 200,
    )
    .await;
    assert_eq!(broker.get("/readyz").await.status, 200);
    broker.stop();
    audit_verify(&site);
}
