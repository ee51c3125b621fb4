//! Benchmarks of the `vault` backend against a real OpenBao, ignored by default (numbers, not
//! assertions). Run through `tests/bench/openbao.sh` (it installs the peers and runs):
//!
//! ```text
//! cargo test -p lanyard-broker --test bench_openbao -- --ignored --nocapture --test-threads 1
//! ```
//!
//! The broker runs in-process (no HTTP/TLS) with an in-memory store and a file audit sink, as
//! in `bench.rs`; OpenBao is a dev server over TLS with a file audit device, whose log
//! counts the upstream calls. Results are in `docs/benchmarks.md`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Instant;

use lanyard_test_support::{InProcessBroker, OpenBao, OpenBaoOptions, Postgres, k8s_pod};
use serde_json::json;

/// The broker's config: limits opened wide so the figures measure the broker and OpenBao,
/// not the broker's own upstream limits.
async fn config(bao: &OpenBao, dir: &tempfile::TempDir, extra: &str) -> String {
    bao.policy(
        "bench",
        "path \"kv/data/*\" { capabilities = [\"read\"] }\n\
         path \"db/creds/*\" { capabilities = [\"read\"] }\n\
         path \"sys/leases/*\" { capabilities = [\"update\"] }\n\
         path \"auth/token/create\" { capabilities = [\"update\"] }",
    )
    .await;
    let (token, _) = bao.token(&["bench"], "1h").await;
    let file = dir.path().join("token");
    std::fs::write(&file, token).expect("token file");
    format!(
        "backends:\n  vault:\n    address: \"{}\"\n    ca_file: \"{}\"\n    max_requests_per_second: 100000\n    \
         max_concurrency: 64\n    max_queue_wait_ms: 60000\n{extra}    auth:\n      token:\n        token_file: \"{}\"\n",
        bao.url,
        bao.ca_file().display(),
        file.display()
    )
}

const POLICY: &str = r#"
roles:
  kv:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: kv2, mount: kv, path: "apps/{{namespace}}/db"}
  db:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: dynamic, mount: db, role: app}
  token:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: token, policies: [bench]}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [kv, db, token]
"#;

/// Issues `role` `n` times with `concurrency` tasks, each request for its own pod; returns
/// (per second, seconds).
async fn run(b: &Arc<InProcessBroker>, role: &str, n: usize, concurrency: usize) -> (f64, f64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let b = b.clone();
        let role = role.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(concurrency) {
                b.broker
                    .issue(
                        &k8s_pod("shop", "api", &format!("api-{i}")),
                        &lanyard::wire::CredentialRequest {
                            roles: Some(vec![role.clone()]),
                            ttl_seconds: None,
                        },
                        "req_bench",
                    )
                    .await
                    .expect("issued");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let secs = started.elapsed().as_secs_f64();
    (n as f64 / secs, secs)
}

async fn setup() -> (OpenBao, Postgres) {
    let bao = OpenBao::start_with(OpenBaoOptions { tls: true }).await;
    let pg = Postgres::start();
    bao.enable_secrets("kv", "kv").await;
    bao.kv_put("kv", "apps/shop/db", json!({"password": "bench"}))
        .await;
    bao.database_postgres("db", &pg, "app", 600, 3600).await;
    (bao, pg)
}

fn reads(bao: &OpenBao, path: &str) -> usize {
    bao.audited(path)
        .iter()
        .filter(|r| r["request"]["operation"] == "read" || r["request"]["operation"] == "update")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (tests/bench/openbao.sh)"]
async fn bench_openbao_issuance_cached_and_uncached() {
    let (bao, _pg) = setup().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cached = Arc::new(
        InProcessBroker::start(POLICY, &config(&bao, &dir, "").await)
            .await
            .expect("broker"),
    );
    run(&cached, "kv", 100, 16).await; // warm up: the one read
    let (kv_rate, _) = run(&cached, "kv", 2_000, 16).await;
    let kv_reads = reads(&bao, "kv/data/apps/shop/db");

    let uncached = Arc::new(
        InProcessBroker::start(
            POLICY,
            &config(&bao, &dir, "    cache_refresh_fraction: 0\n").await,
        )
        .await
        .expect("broker"),
    );
    run(&uncached, "kv", 100, 1).await;
    let before = reads(&bao, "kv/data/apps/shop/db");
    let (kv_uncached_1, _) = run(&uncached, "kv", 500, 1).await;
    let serial_reads = reads(&bao, "kv/data/apps/shop/db") - before;
    let before = reads(&bao, "kv/data/apps/shop/db");
    let (kv_uncached_16, _) = run(&uncached, "kv", 1_000, 16).await;
    let concurrent_reads = reads(&bao, "kv/data/apps/shop/db") - before;
    let (token_rate, _) = run(&cached, "token", 1_000, 16).await;
    let (db_rate, _) = run(&cached, "db", 200, 16).await;
    println!(
        "BENCH vault backend against OpenBao 2.7.2 (TLS, file audit), in-process broker, each request its own pod:\n  \
         kv2 cached, 2,000 requests, 16 concurrent: {kv_rate:.0}/s ({kv_reads} OpenBao read(s) for 2,100 issuances)\n  \
         kv2 uncached (cache_refresh_fraction 0), 500 requests one at a time: {kv_uncached_1:.0}/s ({serial_reads} reads)\n  \
         kv2 uncached, 1,000 requests, 16 concurrent: {kv_uncached_16:.0}/s ({concurrent_reads} reads: concurrent ones coalesce)\n  \
         child token (never cached), 1,000 requests, 16 concurrent: {token_rate:.0}/s\n  \
         database credentials (a PostgreSQL role each), 200 requests, 16 concurrent: {db_rate:.0}/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture (tests/bench/openbao.sh)"]
async fn bench_openbao_thousand_concurrent_requests_for_one_path() {
    let (bao, pg) = setup().await;
    let dir = tempfile::tempdir().expect("tmp");
    let b = Arc::new(
        InProcessBroker::start(POLICY, &config(&bao, &dir, "").await)
            .await
            .expect("broker"),
    );
    // Logged in first, so the figure is the KV path's alone.
    run(&b, "token", 1, 1).await;
    let (_, kv_secs) = run(&b, "kv", 1_000, 1_000).await;
    let kv_reads = reads(&bao, "kv/data/apps/shop/db");
    let roles_before: usize = pg
        .psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'")
        .parse()
        .expect("count");
    let (_, db_secs) = run(&b, "db", 1_000, 1_000).await;
    let db_reads = reads(&bao, "db/creds/app");
    let roles_after: usize = pg
        .psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'")
        .parse()
        .expect("count");
    println!(
        "BENCH 1,000 concurrent requests (1,000 pods) for one role, OpenBao's audit device counting:\n  \
         kv2 path: {kv_reads} OpenBao read(s), {kv_secs:.2} s\n  \
         database role: {db_reads} creds call(s), {} PostgreSQL roles created, {db_secs:.2} s",
        roles_after - roles_before
    );
}
