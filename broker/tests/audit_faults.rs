//! The audit log under attack and under faults, with the real broker over TLS on loopback:
//! an unauthenticated flood stays a few lines, and a full disk makes the broker unready and
//! refuse (503, retryable) instead of dying — and it recovers by itself when space returns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lanyard_broker::audit::{segment, verify_segments};
use lanyard_broker::store::Store as _;
use lanyard_test_support::{OidcIssuer, TestBroker, TestBrokerOptions};
use serde_json::Value;

/// A metric's value in the `/metrics` text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

fn is_auth_failure(r: &Value) -> bool {
    r["reason"]
        .as_str()
        .is_some_and(|s| s.starts_with("authentication failed:"))
}

fn suppressed_by_summaries(records: &[Value]) -> u64 {
    records
        .iter()
        .filter(|r| r["event"] == "deny" && r["suppressed"].is_u64())
        .map(|r| r["suppressed"].as_u64().expect("count"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_flood_is_recorded_in_a_few_lines_per_source_and_counted() {
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            audit_config: "  auth_failures: {records_per_window: 5, window_seconds: 3600}\n".into(),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    const SENT: usize = 300;
    let http = broker.http();
    let mut tasks = Vec::new();
    for worker in 0..10 {
        let http = http.clone();
        let url = format!("{}/v1/credentials", broker.url);
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..SENT / 10 {
                let mut req = http.post(&url).body("{}");
                // A mix of failures: no credential, garbage, a forged-looking JWT.
                req = match (worker + i) % 3 {
                    0 => req,
                    1 => req.bearer_auth("not-a-token"),
                    _ => req.bearer_auth("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
                };
                statuses.push(req.send().await.expect("request").status().as_u16());
            }
            statuses
        }));
    }
    for t in tasks {
        assert!(t.await.expect("join").iter().all(|s| *s == 401));
    }
    // Every failure is counted; five are recorded in full, with their source.
    let text = broker.metrics().await;
    assert_eq!(
        metric(&text, "lanyard_audit_records_suppressed_total"),
        (SENT - 5) as f64,
        "{text}"
    );
    let audit_file = broker.audit_file.clone();
    let full: Vec<Value> = records(&audit_file)
        .into_iter()
        .filter(is_auth_failure)
        .collect();
    assert_eq!(full.len(), 5, "{full:?}");
    assert!(full.iter().all(|r| r["source"] == "127.0.0.1"), "{full:?}");

    // At shutdown the open window's summary is written: full records plus the summary's
    // count is every failure, in a log of a handful of lines.
    let store_file = broker.store_file.clone();
    let dir = broker.stop().await;
    let all = records(&audit_file);
    let summaries: Vec<&Value> = all.iter().filter(|r| r["suppressed"].is_u64()).collect();
    assert_eq!(summaries.len(), 1, "{all:?}");
    assert_eq!(summaries[0]["source"], "127.0.0.1");
    assert_eq!(
        all.iter().filter(|r| is_auth_failure(r)).count() as u64 + suppressed_by_summaries(&all),
        SENT as u64
    );
    assert!(all.len() <= 10, "{} lines for {SENT} failures", all.len());
    assert!(std::fs::metadata(&audit_file).expect("meta").len() < 8 * 1024);
    verify_log(&audit_file, &store_file).await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sources_summary_is_written_when_its_window_ends() {
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            audit_config: "  auth_failures: {records_per_window: 2, window_seconds: 1}\n".into(),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    // Sent at once, well inside one window on any machine? Not needed: whatever the
    // windows, full records plus summaries is every failure once the windows end.
    for _ in 0..20 {
        let (status, _) = broker.post_credentials(None, "").await;
        assert_eq!(status, 401);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let all = records(&broker.audit_file);
        let full = all.iter().filter(|r| is_auth_failure(r)).count() as u64;
        if full + suppressed_by_summaries(&all) == 20 {
            assert!(suppressed_by_summaries(&all) > 0, "{all:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no summary within 15 s (the sweep runs every reload_interval_seconds): {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `audit verify --store` over the log's segments, as the CLI does.
async fn verify_log(audit_file: &Path, store_file: &Path) -> Vec<Value> {
    let store =
        lanyard_broker::store::sqlite::SqliteStore::open(store_file).expect("open the store");
    let head = store.audit_head().await.expect("head");
    let segments = segment::open_from(audit_file)
        .expect("open")
        .expect("consecutive segments");
    let report = verify_segments(segments, head.as_ref())
        .unwrap_or_else(|f| panic!("audit verify fails: {f}"));
    assert_eq!(report.incomplete_tail_bytes, 0);
    records(audit_file)
}

/// A small tmpfs mounted on a fresh temp dir, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with a message) when not root: mounting needs it.
    fn mount(size: &str) -> Option<Self> {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!(
                "SKIPPED: this test mounts a small tmpfs to fill the audit log's disk and needs \
                 root (CI runs as root); run it as root to exercise a full disk"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed");
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the file system holding `dir` with one file; returns it.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = [0x55u8; 4096];
    loop {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // Fill the last partial page too.
    while f.write_all(&[0x55]).is_ok() {}
    path
}

async fn readyz(broker: &TestBroker) -> (u16, Value) {
    let resp = broker
        .http()
        .get(format!("{}/readyz", broker.url))
        .send()
        .await
        .expect("readyz");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_broker_unready_and_refuse_until_space_returns() {
    let Some(fs) = Tmpfs::mount("256k") else {
        return;
    };
    let audit_file = fs.path().join("audit.log");
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start_with(
        Some(&issuer),
        TestBrokerOptions {
            audit_file: Some(audit_file.clone()),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let token = issuer.k8s_token("shop", "api", "lanyard", 600);
    let mut leases = Vec::new();
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "{body}");
    leases.push(
        body["credentials"][0]["lease_id"]
            .as_str()
            .expect("lease")
            .to_owned(),
    );
    assert_eq!(readyz(&broker).await.0, 200);

    let filler = fill(fs.path());
    // Appends may still fit the audit file's last page; keep asking until one does not.
    let mut refused = None;
    for _ in 0..200 {
        let (status, body) = broker.post_credentials(Some(&token), "").await;
        match status {
            200 => leases.push(
                body["credentials"][0]["lease_id"]
                    .as_str()
                    .expect("lease")
                    .to_owned(),
            ),
            _ => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("a full disk must refuse issuance");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "not_ready", "{body}");
    assert_eq!(body["error"]["retryable"], true, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("audit log cannot be written")),
        "{body}"
    );
    let (status, ready) = readyz(&broker).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false);
    assert!(
        ready["checks"]["audit"]
            .as_str()
            .is_some_and(|e| e.contains("No space left")),
        "{ready}"
    );
    let text = broker.metrics().await;
    assert_eq!(metric(&text, "lanyard_audit_sink_writable"), 0.0, "{text}");
    assert!(
        metric(&text, "lanyard_audit_write_failures_total") >= 1.0,
        "{text}"
    );
    // Still refused while full (and failed authentications too: no answer without a record).
    let (status, _) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 503);

    // Space returns: the broker recovers by itself, without a restart.
    std::fs::remove_file(&filler).expect("free space");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while readyz(&broker).await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready again within 15 s of space returning"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..3 {
        let (status, body) = broker.post_credentials(Some(&token), "").await;
        assert_eq!(status, 200, "{body}");
        leases.push(
            body["credentials"][0]["lease_id"]
                .as_str()
                .expect("lease")
                .to_owned(),
        );
    }
    assert_eq!(
        metric(&broker.metrics().await, "lanyard_audit_sink_writable"),
        1.0
    );

    let store_file = broker.store_file.clone();
    let dir = broker.stop().await;
    let all = verify_log(&audit_file, &store_file).await;
    // Every 200 answer's record is in the log.
    for lease in &leases {
        assert!(
            all.iter()
                .any(|r| r["event"] == "issue" && r["lease_id"] == lease.as_str()),
            "issued lease {lease} has no audit record"
        );
    }
    // And the log says what happened.
    let repair = all
        .iter()
        .find(|r| r["event"] == "audit_repair")
        .expect("an audit_repair record");
    assert!(
        repair["suppressed"].as_u64().expect("refused") >= 2,
        "{repair}"
    );
    assert!(
        repair["reason"]
            .as_str()
            .expect("reason")
            .contains("No space left"),
        "{repair}"
    );
    drop(dir);
    drop(fs);
}

/// `lanyard-broker audit verify` and `audit query` on a log of several segments: they
/// follow the chain across the files and name a missing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_verifies_and_queries_across_segments() {
    use lanyard_broker::audit::{AuditLog, AuditOptions, AuditRecord, AuditSink, Decision, Event};
    use std::sync::Arc;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("audit.log");
    let store: Arc<dyn lanyard_broker::store::Store> = Arc::new(
        lanyard_broker::store::sqlite::SqliteStore::open(&dir.path().join("s.db")).expect("store"),
    );
    let log = AuditLog::open_with(
        AuditSink::File(base.clone()),
        store.clone(),
        AuditOptions {
            segment_max_bytes: 1_000,
            ..AuditOptions::default()
        },
    )
    .await
    .expect("open");
    for i in 0..20 {
        let rec = AuditRecord::new(
            format!("2026-01-01T00:00:{i:02}Z"),
            Event::Deny,
            Decision::Deny,
            format!("test record {i}"),
        );
        log.append(rec).await.expect("append");
    }
    drop(log);
    drop(store);
    let segments = segment::list(&base).expect("list");
    assert!(segments.len() >= 3, "{segments:?}");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lanyard-broker"))
            .args(args)
            .output()
            .expect("run lanyard-broker")
    };
    let b = base.to_str().expect("utf8");
    let db = dir.path().join("s.db");
    let out = run(&["audit", "verify", b, "--store", db.to_str().expect("utf8")]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("in {} segments, chain intact", segments.len())),
        "{stdout}"
    );
    let out = run(&["audit", "query", b, "--event", "deny"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 20);
    let out = run(&["audit", "query", b, "--event", "audit_segment"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        segments.len() - 1
    );
    std::fs::remove_file(&segments[1].1).expect("remove a segment");
    let out = run(&["audit", "verify", b]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("TAMPERED") && stdout.contains("audit.log.000001 is missing"),
        "{stdout}"
    );
}
