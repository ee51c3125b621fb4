//! Brokers on PostgreSQL (issue 14), as real `lanyard-broker serve` processes over TLS on
//! loopback against a real throwaway cluster: the database going away makes the broker
//! unready and its requests retryable 503s with nothing half-written, and it recovers without
//! a restart; three brokers started together on one empty database migrate it once, share
//! bootstrap tokens, each redeemed exactly once across them, and run the sweeps on one of
//! them; `store migrate` moves a used SQLite broker to PostgreSQL.

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
