//! Brokers on PostgreSQL (issue 14), as real `lanyard-broker serve` processes over TLS on
//! loopback against a real throwaway cluster: the database going away makes the broker
//! unready and its requests retryable 503s with nothing half-written, and it recovers without
//! a restart; three brokers started together on one empty database migrate it once, share
//! bootstrap tokens, each redeemed exactly once across them, and run the sweeps on one of
//! them; `store migrate` moves a used SQLite broker to PostgreSQL. With the audit records in
//! the database (`audit.sink: store`, one chain per broker process): a broker killed with
//! `SIGKILL` mid-burst, or the database restarted under load, loses no acknowledged issuance
//! (its lease row and its audit record are there) and `audit verify` passes over every chain.

use std::path::Path;
use std::time::{Duration, Instant};

use lanyard_test_support::{BrokerProcess, Postgres, TestBrokerOptions};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lanyard-broker"))
}

/// A broker on the PostgreSQL database at `url`, without the re-redemption grace (so a
/// redeemed token is refused at once: redemption counts are exact).
fn on_postgres(url: &str) -> TestBrokerOptions {
    TestBrokerOptions {
        store_config: format!("  postgres_url: \"{url}\"\n  postgres_connect_timeout_seconds: 2\n"),
        extra_config: "bootstrap:\n  redeem_grace_seconds: 0\n".into(),
        ..TestBrokerOptions::default()
    }
}

/// `POST /v1/admin/tokens`: (status, `Retry-After`, body).
async fn mint(b: &BrokerProcess) -> (u16, Option<String>, Value) {
    let resp = b
        .http()
        .post(format!("{}/v1/admin/tokens", b.url))
        .bearer_auth(&b.admin_token)
        .json(&serde_json::json!({"roles": ["boot"], "ttl_seconds": 300}))
        .send()
        .await
        .expect("mint request");
    answer(resp).await
}

/// Redeems `token` at `b`: (status, `Retry-After`, body).
async fn redeem(b: &BrokerProcess, token: &str) -> (u16, Option<String>, Value) {
    let resp = b
        .http()
        .post(format!("{}/v1/credentials", b.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("credentials request");
    answer(resp).await
}

async fn answer(resp: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

async fn readyz(b: &BrokerProcess) -> (u16, Value) {
    let resp = b
        .http()
        .get(format!("{}/readyz", b.url))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("readyz");
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

fn token_of(body: &Value) -> String {
    body["token"].as_str().expect("token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_makes_the_broker_unready_and_it_recovers_without_a_restart() {
    let pg = Postgres::start();
    pg.psql("CREATE DATABASE lanyard");
    let broker = BrokerProcess::start(bin(), None, on_postgres(&pg.url("lanyard"))).await;
    let (status, body) = readyz(&broker).await;
    assert_eq!(
        (status, &body["checks"]["store"]),
        (200, &Value::from("ok")),
        "{body}"
    );
    let (status, _, body) = mint(&broker).await;
    assert_eq!(status, 201, "{body}");
    let before = token_of(&body);
    let (status, _, body) = mint(&broker).await;
    assert_eq!(status, 201, "{body}");
    let unused = token_of(&body);
    let (status, _, body) = redeem(&broker, &before).await;
    assert_eq!(status, 200, "{body}");

    pg.stop();
    let (status, body) = readyz(&broker).await;
    assert_eq!(status, 503, "{body}");
    assert_ne!(body["checks"]["store"], "ok", "{body}");
    let log = std::fs::read_to_string(&broker.log_file).unwrap_or_default();
    assert!(!log.contains(lanyard_test_support::postgres::SUPERUSER_PASSWORD));
    // Requests that need the store: retryable 503s with Retry-After.
    let (status, retry, body) = mint(&broker).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["retryable"], true, "{body}");
    assert!(retry.is_some(), "Retry-After on {body}");
    let (status, retry, body) = redeem(&broker, &unused).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["retryable"], true, "{body}");
    assert!(retry.is_some(), "Retry-After on {body}");
    let shown = body.to_string();
    assert!(
        !shown.contains(lanyard_test_support::postgres::SUPERUSER_PASSWORD),
        "{shown}"
    );

    pg.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = readyz(&broker).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again within 20 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing half-written: the token whose redemption failed is still unused, once; the one
    // redeemed before stays redeemed.
    let (status, _, body) = redeem(&broker, &unused).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = redeem(&broker, &unused).await;
    assert_ne!(status, 200, "{body}");
    let (status, _, body) = mint(&broker).await;
    assert_eq!(status, 201, "{body}");
    let leases = pg.psql_db("lanyard", "SELECT count(*) FROM leases");
    assert_eq!(leases, "2", "one lease per successful redemption");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_started_together_migrate_once_and_redeem_a_token_exactly_once() {
    let pg = Postgres::start();
    pg.psql("CREATE DATABASE lanyard");
    let url = pg.url("lanyard");
    let (a, b, c) = tokio::join!(
        BrokerProcess::start(bin(), None, on_postgres(&url)),
        BrokerProcess::start(bin(), None, on_postgres(&url)),
        BrokerProcess::start(bin(), None, on_postgres(&url)),
    );
    let versions = pg.psql_db(
        "lanyard",
        "SELECT string_agg(version::text, ',' ORDER BY version) FROM lanyard_schema_migrations",
    );
    let every: Vec<String> = (1..=lanyard_broker::store::postgres::MIGRATIONS.len())
        .map(|v| v.to_string())
        .collect();
    assert_eq!(versions, every.join(","), "each migration recorded once");
    // A token minted at one is redeemed at the other, once.
    let (status, _, body) = mint(&a).await;
    assert_eq!(status, 201, "{body}");
    let token = token_of(&body);
    let (status, _, body) = redeem(&b, &token).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = redeem(&a, &token).await;
    assert_ne!(status, 200, "{body}");
    // 100 redemptions of one token, spread over the three: exactly one wins.
    let (status, _, body) = mint(&c).await;
    assert_eq!(status, 201, "{body}");
    let token = token_of(&body);
    let brokers = [&a, &b, &c];
    let attempts = (0..100).map(|i| redeem(brokers[i % 3], &token));
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|(s, _, _)| s)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    // The sweeps run on one replica, which keeps its claim (renewed every second here).
    let holder = || {
        pg.psql_db(
            "lanyard",
            "SELECT holder FROM job_claims WHERE job = 'expiry_sweeps'",
        )
    };
    let first = holder();
    assert!(first.starts_with("rp_"), "{first:?}");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(holder(), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_migrate_moves_a_used_sqlite_broker_to_postgres() {
    let pg = Postgres::start();
    pg.psql("CREATE DATABASE lanyard");
    let url = pg.url("lanyard");
    let mut broker = BrokerProcess::start(
        bin(),
        None,
        TestBrokerOptions {
            extra_config: "bootstrap:\n  redeem_grace_seconds: 0\n".into(),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    // Use it: a redeemed token (a lease, a session), an unused one, an exemption.
    let (_, _, body) = mint(&broker).await;
    let redeemed = token_of(&body);
    let (status, _, body) = redeem(&broker, &redeemed).await;
    assert_eq!(status, 200, "{body}");
    let (_, _, body) = mint(&broker).await;
    let unused = token_of(&body);
    let digest = format!("sha256:{}", "ab".repeat(32));
    let resp = broker
        .http()
        .post(format!("{}/v1/admin/exemptions", broker.url))
        .bearer_auth(&broker.admin_token)
        .json(&serde_json::json!({"digest": digest, "reason": "vendor test key"}))
        .send()
        .await
        .expect("exempt");
    assert_eq!(resp.status().as_u16(), 201);
    let jwks = |b: &BrokerProcess| {
        let (http, url) = (b.http(), format!("{}/v1/jwks", b.url));
        async move {
            http.get(url)
                .send()
                .await
                .expect("jwks")
                .json::<Value>()
                .await
                .expect("jwks json")
        }
    };
    let keys_before = jwks(&broker).await;
    broker.kill();

    let url_file = broker.dir().join("pg-url");
    std::fs::write(&url_file, format!("{url}\n")).expect("url file");
    let migrate = || {
        std::process::Command::new(bin())
            .args(["store", "migrate", "--from"])
            .arg(&broker.store_file)
            .arg("--to-file")
            .arg(&url_file)
            .env("LANYARD_LOG", "warn")
            .output()
            .expect("run store migrate")
    };
    let out = migrate();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    for part in [
        "signing_keys 1",
        "local_secrets 1",
        "bootstrap_tokens 2",
        "leases 1",
        "image_exemptions 1",
        "audit_head 1",
    ] {
        assert!(stdout.contains(part), "{part} in {stdout}");
    }
    let password = lanyard_test_support::postgres::SUPERUSER_PASSWORD;
    assert!(!stdout.contains(password) && !stderr.contains(password));
    // A second run is refused: the database is in use.
    let again = migrate();
    let stderr = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(!again.status.success());
    assert!(stderr.contains("already holds broker state"), "{stderr}");

    // The same broker (directory, audit log) on PostgreSQL: it resumes the audit chain, signs
    // with the same keys, and the tokens are where they were.
    let config = std::fs::read_to_string(&broker.config_file).expect("config");
    let config = config.replace(
        "  sqlite_path: store.db\n",
        &format!("  postgres_url_file: {}\n", url_file.display()),
    );
    std::fs::write(&broker.config_file, config).expect("config");
    broker.restart().await.expect("starts on PostgreSQL");
    assert_eq!(jwks(&broker).await, keys_before);
    let (status, _, body) = redeem(&broker, &redeemed).await;
    assert_ne!(status, 200, "a redeemed token stays redeemed: {body}");
    let (status, _, body) = redeem(&broker, &unused).await;
    assert_eq!(status, 200, "{body}");
    broker.kill();
    // The log verifies, and ends at the head the PostgreSQL store holds now.
    let out = std::process::Command::new(bin())
        .args(["audit", "verify"])
        .arg(&broker.audit_file)
        .arg("--store-url-file")
        .arg(&url_file)
        .output()
        .expect("audit verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("chain intact"), "{stdout}");
    // A head the log does not reach (a truncated tail) fails the check.
    pg.psql_db("lanyard", "UPDATE audit_head SET seq = seq + 1");
    let out = std::process::Command::new(bin())
        .args(["audit", "verify"])
        .arg(&broker.audit_file)
        .arg("--store-url-file")
        .arg(&url_file)
        .output()
        .expect("audit verify");
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A broker on PostgreSQL keeping its audit records there (`audit.sink: store`).
fn on_postgres_audited(url: &str) -> TestBrokerOptions {
    TestBrokerOptions {
        // The sink's config value: `store` (not a path).
        audit_file: Some("store".into()),
        ..on_postgres(url)
    }
}

/// Redeems `token` at the broker at `base` with `http`: (status, body).
async fn redeem_at(http: reqwest::Client, base: String, token: String) -> (u16, Value) {
    match http
        .post(format!("{base}/v1/credentials"))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(20))
        .send()
        .await
    {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.json().await.unwrap_or(Value::Null))
        }
        // A broker killed mid-request answers nothing: not acknowledged.
        Err(_) => (0, Value::Null),
    }
}

/// Runs `lanyard-broker audit ARGS --store-url-file FILE`: (success, stdout).
fn audit_cli(args: &[&str], url_file: &Path) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .arg("audit")
        .args(args)
        .arg("--store-url-file")
        .arg(url_file)
        .env("LANYARD_LOG", "warn")
        .output()
        .expect("run lanyard-broker audit");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains(lanyard_test_support::postgres::SUPERUSER_PASSWORD)
            && !stderr.contains(lanyard_test_support::postgres::SUPERUSER_PASSWORD)
    );
    (out.status.success(), format!("{stdout}{stderr}"))
}

/// Every acknowledged issuance (a 200 with its `lease_id`) has its lease row and its `issue`
/// record in the chains the store keeps, and `audit verify` passes over every chain.
fn assert_acknowledged_are_audited(pg: &Postgres, url_file: &Path, answers: &[(u16, Value)]) {
    let acked: Vec<&str> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| {
            b["credentials"][0]["lease_id"]
                .as_str()
                .expect("lease_id in a 200")
        })
        .collect();
    assert!(!acked.is_empty(), "no issuance was acknowledged");
    let (ok, out) = audit_cli(&["verify"], url_file);
    assert!(ok, "{out}");
    assert!(out.contains("every chain intact"), "{out}");
    let (ok, export) = audit_cli(&["export"], url_file);
    assert!(ok, "{export}");
    let issued: std::collections::HashSet<String> = export
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"] == "issue" && r["decision"] == "allow")
        .filter_map(|r| r["lease_id"].as_str().map(str::to_owned))
        .collect();
    let (ok, queried) = audit_cli(
        &["query", "--event", "issue", "--decision", "allow"],
        url_file,
    );
    assert!(ok, "{queried}");
    for id in &acked {
        assert!(queried.contains(id), "audit query finds {id}");
    }
    let leases = pg.psql_db("lanyard", "SELECT lease_id FROM leases");
    let leases: std::collections::HashSet<&str> = leases.lines().collect();
    for id in &acked {
        assert!(
            issued.contains(*id),
            "acknowledged {id} has no audit record"
        );
        assert!(leases.contains(id), "acknowledged {id} has no lease row");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_burst_loses_no_acknowledged_record_and_every_chain_verifies() {
    let pg = Postgres::start();
    pg.psql("CREATE DATABASE lanyard");
    let url = pg.url("lanyard");
    let (a, b, mut c) = tokio::join!(
        BrokerProcess::start(bin(), None, on_postgres_audited(&url)),
        BrokerProcess::start(bin(), None, on_postgres_audited(&url)),
        BrokerProcess::start(bin(), None, on_postgres_audited(&url)),
    );
    let url_file = a.dir().join("pg-url");
    std::fs::write(&url_file, format!("{url}\n")).expect("url file");
    let tokens: Vec<String> = futures_util::future::join_all((0..240).map(|_| mint(&a)))
        .await
        .iter()
        .map(|(s, _, body)| {
            assert_eq!(*s, 201, "{body}");
            token_of(body)
        })
        .collect();
    let targets = [
        (a.http(), a.url.clone()),
        (b.http(), b.url.clone()),
        (c.http(), c.url.clone()),
    ];
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sixth = std::sync::Arc::new(tokio::sync::Notify::new());
    let burst: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (http, base) = targets[i % 3].clone();
            let (answered, sixth) = (answered.clone(), sixth.clone());
            tokio::spawn(async move {
                let a = redeem_at(http, base, t).await;
                if answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == 40 {
                    sixth.notify_one();
                }
                a
            })
        })
        .collect();
    // Mid-burst (a sixth answered): the third broker is killed with SIGKILL at once (a poll
    // every few milliseconds once let a fast burst finish first).
    sixth.notified().await;
    c.kill();
    let mut answers = Vec::new();
    for h in burst {
        answers.push(h.await.expect("redeem task"));
    }
    let from_c: Vec<u16> = answers.iter().skip(2).step_by(3).map(|(s, _)| *s).collect();
    assert!(
        from_c.contains(&0),
        "some requests to the killed broker went unanswered: {from_c:?}"
    );
    assert!(
        answers.iter().step_by(3).all(|(s, _)| *s == 200),
        "the brokers left running answered all"
    );
    assert_acknowledged_are_audited(&pg, &url_file, &answers);
    let chains = pg.psql_db("lanyard", "SELECT count(*) FROM audit_chains");
    assert_eq!(chains, "3", "one chain per broker process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_brokers_recover_and_nothing_acknowledged_is_lost() {
    let pg = Postgres::start();
    pg.psql("CREATE DATABASE lanyard");
    let url = pg.url("lanyard");
    let (a, b, c) = tokio::join!(
        BrokerProcess::start(bin(), None, on_postgres_audited(&url)),
        BrokerProcess::start(bin(), None, on_postgres_audited(&url)),
        BrokerProcess::start(bin(), None, on_postgres_audited(&url)),
    );
    let url_file = a.dir().join("pg-url");
    std::fs::write(&url_file, format!("{url}\n")).expect("url file");
    let tokens: Vec<String> = futures_util::future::join_all((0..300).map(|_| mint(&a)))
        .await
        .iter()
        .map(|(s, _, body)| {
            assert_eq!(*s, 201, "{body}");
            token_of(body)
        })
        .collect();
    let targets = [
        (a.http(), a.url.clone()),
        (b.http(), b.url.clone()),
        (c.http(), c.url.clone()),
    ];
    // Load: redemptions spread over the three, a few at a time, while the database restarts.
    let load = {
        let targets = targets.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for (n, chunk) in tokens.chunks(6).enumerate() {
                let round = chunk.iter().enumerate().map(|(i, t)| {
                    let (http, base) = targets[(n + i) % 3].clone();
                    redeem_at(http, base, t.clone())
                });
                answers.extend(futures_util::future::join_all(round).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    pg.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.restart();
    let answers = load.await.expect("load");
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert!(
        statuses.contains(&503),
        "some requests met the restart: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "only successes and retryable refusals: {statuses:?}"
    );
    for (s, body) in &answers {
        if *s == 503 {
            assert_eq!(body["error"]["retryable"], true, "{body}");
        }
    }
    // Every broker is ready again by itself, and issues again.
    for broker in [&a, &b, &c] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = readyz(broker).await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "not ready within 20 s: {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (status, _, body) = mint(broker).await;
        assert_eq!(status, 201, "{body}");
        let (status, _, body) = redeem(broker, &token_of(&body)).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_acknowledged_are_audited(&pg, &url_file, &answers);
}
