//! Replicas on PostgreSQL (issue 14; docs/benchmarks.md, "Replicas on PostgreSQL"): issuance
//! throughput and p99 of one broker on SQLite, one on PostgreSQL and three on one PostgreSQL
//! database, in the same run, with PostgreSQL's `fsync` on.
//!
//! ```console
//! $ apt-get install -y wrk postgresql
//! $ cargo test --release -p lanyard-broker --test bench_replicas -- --ignored --nocapture
//! ```
//!
//! Every broker is a real `lanyard-broker serve` process (TLS, a Kubernetes service-account
//! token verified against a real OIDC issuer on loopback, the `jwt` backend, a lease row and
//! a hash-chained audit record per request): on SQLite with the audit log in a file
//! (`fdatasync` per group), on PostgreSQL with `audit.sink: store` (each group committed
//! with its leases). The load is three `wrk -t1 -c21` processes at once (63 connections),
//! all at the one broker or one at each of the three, for `LANYARD_BENCH_SECONDS` (10) after
//! a 3 s warm-up; each scenario runs `LANYARD_BENCH_ROUNDS` (3) times, interleaved. Everything
//! shares the machine's cores: brokers, PostgreSQL and `wrk`.

use std::path::Path;
use std::time::Duration;

use lanyard_test_support::{BrokerProcess, OidcIssuer, Postgres, TestBrokerOptions};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lanyard-broker"))
}

/// One `wrk -t1` run: (requests/s, p99 in ms, non-2xx).
fn wrk_once(url: &str, script: &Path, connections: u32, secs: u32) -> (f64, f64, u64) {
    let out = std::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
            &script.display().to_string(),
            url,
        ])
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(|r| r.trim().to_owned()))
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Requests/sec in wrk output: {text}"));
    let p99 = field("99%").map_or(f64::NAN, |v| to_ms(&v));
    let non2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (rps, p99, non2xx)
}

/// `wrk`'s latency text (`812.00us`, `9.23ms`, `1.02s`) in milliseconds.
fn to_ms(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map_or(f64::NAN, |n| n * scale)
}

/// Three `wrk -t1 -c21` at once against `urls` (round robin): total requests/s, the worst
/// p99 of the three, total non-2xx.
fn load(urls: &[String], script: &Path, secs: u32) -> (f64, f64, u64) {
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let url = format!("{}/v1/credentials", urls[i % urls.len()]);
            let script = script.to_path_buf();
            std::thread::spawn(move || wrk_once(&url, &script, 21, secs))
        })
        .collect();
    runs.into_iter()
        .map(|h| h.join().expect("wrk thread"))
        .fold((0.0, 0.0_f64, 0), |(r, p, n), (r2, p2, n2)| {
            (r + r2, p.max(p2), n + n2)
        })
}

/// CPU seconds used so far (user and system, with reaped children) by the processes
/// `pgrep ARGS` lists (`-u postgres`, or `-f PATH`).
fn cpu_seconds(args: &[&str]) -> f64 {
    let out = std::process::Command::new("pgrep")
        .args(args)
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .map(lanyard_test_support::process::cpu_seconds)
        .sum()
}

/// Committed transactions in database `db` so far.
fn commits(pg: &Postgres, db: &str) -> f64 {
    pg.psql(&format!(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = '{db}'"
    ))
    .parse()
    .unwrap_or(0.0)
}

async fn brokers(
    issuer: &OidcIssuer,
    n: usize,
    store_config: &str,
    sink: Option<&str>,
) -> Vec<BrokerProcess> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            BrokerProcess::start(
                bin(),
                Some(issuer),
                TestBrokerOptions {
                    store_config: store_config.to_owned(),
                    audit_file: sink.map(Into::into),
                    ..TestBrokerOptions::default()
                },
            )
            .await,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture (needs wrk and PostgreSQL)"]
async fn bench_replicas_postgres_vs_sqlite() {
    let secs: u32 = std::env::var("LANYARD_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rounds: usize = std::env::var("LANYARD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let issuer = OidcIssuer::start().await;
    let pg = Postgres::start_durable();
    assert_eq!(pg.psql("SHOW fsync"), "on");
    let dir = tempfile::tempdir().expect("tmp");
    let claims = issuer.k8s_claims(
        "shop",
        "api",
        "lanyard",
        lanyard_test_support::now_unix(),
        3600,
    );
    let token = issuer.token(jsonwebtoken::Algorithm::RS256, claims);
    let script = dir.path().join("issue.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = \"{{}}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {token}\"\n"
        ),
    )
    .expect("script");

    let mut scenarios: Vec<(&str, Vec<BrokerProcess>, Option<&str>)> = Vec::new();
    scenarios.push((
        "1 broker, SQLite, file audit",
        brokers(&issuer, 1, "", None).await,
        None,
    ));
    for (name, n, db) in [
        ("1 broker, PostgreSQL, audit in the database", 1, "one"),
        (
            "3 brokers, one PostgreSQL, audit in the database",
            3,
            "three",
        ),
    ] {
        pg.psql(&format!("CREATE DATABASE {db}"));
        let store = format!("  postgres_url: \"{}\"\n", pg.url(db));
        scenarios.push((
            name,
            brokers(&issuer, n, &store, Some("store")).await,
            Some(db),
        ));
    }
    let broker_path = bin().display().to_string();
    let mut results: Vec<Vec<(f64, f64, u64)>> = vec![Vec::new(); scenarios.len()];
    // Over all rounds: broker CPU s, PostgreSQL CPU s, database commits, issuances.
    let mut costs = vec![(0.0, 0.0, 0.0, 0.0); scenarios.len()];
    for round in 0..rounds {
        for (i, (name, procs, db)) in scenarios.iter().enumerate() {
            let urls: Vec<String> = procs.iter().map(|b| b.url.clone()).collect();
            load(&urls, &script, 3);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let before = (
                cpu_seconds(&["-f", &broker_path]),
                cpu_seconds(&["-u", "postgres"]),
                db.map_or(0.0, |d| commits(&pg, d)),
            );
            let r = load(&urls, &script, secs);
            let c = &mut costs[i];
            c.0 += cpu_seconds(&["-f", &broker_path]) - before.0;
            c.1 += cpu_seconds(&["-u", "postgres"]) - before.1;
            c.2 += db.map_or(0.0, |d| commits(&pg, d)) - before.2;
            c.3 += r.0 * f64::from(secs);
            println!(
                "round {round}: {name}: {:.0} req/s, p99 {:.2} ms, {} non-2xx",
                r.0, r.1, r.2
            );
            results[i].push(r);
        }
    }
    println!(
        "\n| scenario | req/s (median of {rounds}) | p99 ms (median) | runs req/s | broker CPU µs / issuance | PostgreSQL CPU µs / issuance | commits / issuance |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (((name, _, db), rs), c) in scenarios.iter().zip(&results).zip(&costs) {
        let mut rps: Vec<f64> = rs.iter().map(|r| r.0).collect();
        let mut p99: Vec<f64> = rs.iter().map(|r| r.1).collect();
        rps.sort_by(f64::total_cmp);
        p99.sort_by(f64::total_cmp);
        let runs: Vec<String> = rs.iter().map(|r| format!("{:.0}", r.0)).collect();
        let per = |x: f64| x / c.3 * 1e6;
        let db_figure = |v: String| if db.is_some() { v } else { "–".into() };
        println!(
            "| {name} | {:.0} | {:.2} | {} | {:.0} | {} | {} |",
            rps[rps.len() / 2],
            p99[p99.len() / 2],
            runs.join(", "),
            per(c.0),
            db_figure(format!("{:.0}", per(c.1))),
            db_figure(format!("{:.3}", c.2 / c.3)),
        );
        assert!(rs.iter().all(|r| r.2 == 0), "{name}: non-2xx answers");
    }
}
