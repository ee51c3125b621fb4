//! The `vault` backend end to end against a real OpenBao 2.7.2 (Vault's HTTP API; started by
//! `lanyard-test-support`'s [`OpenBao`], installed by `tests/peers/openbao.sh`), through the
//! broker: KV v2, dynamic PostgreSQL credentials from the database engine against a real
//! PostgreSQL, PKI, child tokens, the broker's token / AppRole / JWT logins, and the failure
//! paths a real server can be made to take (sealed, a denying policy, a revoked broker token,
//! hung, restarted with its state lost).
//!
//! One TLS server ([`OpenBao::shared`]) serves the tests that do not disturb it, each with
//! mounts, policies and auth roles of its own; the failure-path test runs its own server.
//! OpenBao's file audit device counts what the broker asked for.
//!
//! Kept on the emulator (`broker/tests/vault.rs`, `upstream_refusals.rs`): Kubernetes auth
//! (OpenBao would need a Kubernetes API server to review the token), the namespace header
//! (a Vault Enterprise / OpenBao namespaces feature the dev server's root namespace does
//! not exercise), and exact request bodies the real server does not echo back.

use std::sync::Arc;
use std::time::Duration;

use lanyard::clock::{Clock, parse_rfc3339, unix_seconds};

use lanyard::wire::{CredentialRequest, CredentialResponse, ErrorCode};
use lanyard_broker::broker::Authenticated;
use lanyard_broker::error::ApiError;
use lanyard_test_support::{InProcessBroker, OidcIssuer, OpenBao, Postgres, k8s_pod};
use serde_json::json;

/// The broker's `backends.vault` section for `bao` with `auth` (lines indented 6 spaces).
fn vault_config(bao: &OpenBao, auth: &str, extra: &str) -> String {
    let ca = if bao.url.starts_with("https://") {
        format!("    ca_file: \"{}\"\n", bao.ca_file().display())
    } else {
        String::new()
    };
    format!(
        "backends:\n  vault:\n    address: \"{}\"\n{ca}    max_requests_per_second: 1000\n    renew_leases: true\n{extra}    auth:\n{auth}",
        bao.url
    )
}

/// A secret file in a temp dir that lives as long as the returned guard.
fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, format!("{value}\n")).expect("secret file");
    p.display().to_string()
}

async fn token_auth(bao: &OpenBao, dir: &tempfile::TempDir, policies: &[&str]) -> (String, String) {
    let (token, _) = bao.token(policies, "1h").await;
    let file = secret_file(dir, "token", &token);
    (
        format!("      token:\n        token_file: \"{file}\"\n"),
        token,
    )
}

async fn approle_auth(
    bao: &OpenBao,
    dir: &tempfile::TempDir,
    mount: &str,
    policies: &[&str],
    ttl: &str,
) -> String {
    let (role_id, secret_id) = bao.approle(mount, "lanyard", policies, ttl).await;
    let file = secret_file(dir, "secret-id", &secret_id);
    format!(
        "      approle:\n        role_id: \"{role_id}\"\n        secret_id_file: \"{file}\"\n        mount: {mount}\n"
    )
}

async fn issue(
    b: &InProcessBroker,
    who: &Authenticated,
    roles: &[&str],
    ttl: Option<u64>,
) -> Result<CredentialResponse, ApiError> {
    b.broker
        .issue(
            who,
            &CredentialRequest {
                roles: Some(roles.iter().map(|r| (*r).to_owned()).collect()),
                ttl_seconds: ttl,
            },
            "req_test",
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv2_versions_a_deleted_version_and_a_missing_path_over_tls_with_approle() {
    let bao = OpenBao::shared().await;
    bao.enable_secrets("kv-t1", "kv").await;
    bao.kv_put(
        "kv-t1",
        "apps/shop/db",
        json!({"user": "app", "password": "v1-pass"}),
    )
    .await;
    bao.kv_put(
        "kv-t1",
        "apps/shop/db",
        json!({"user": "app", "password": "v2-pass"}),
    )
    .await;
    bao.kv_put(
        "kv-t1",
        "apps/shop/db",
        json!({"user": "app", "password": "v3-pass"}),
    )
    .await;
    bao.kv_delete_versions("kv-t1", "apps/shop/db", &[2]).await;
    bao.policy(
        "kv-t1-read",
        "path \"kv-t1/data/apps/*\" { capabilities = [\"read\"] }",
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let auth = approle_auth(bao, &dir, "approle-kv", &["kv-t1-read"], "1h").await;
    let policy = r#"
roles:
  latest:
    backend: vault
    scope: [password]
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: kv2, mount: kv-t1, path: "apps/{{namespace}}/db"}
  first:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: kv2, mount: kv-t1, path: "apps/{{namespace}}/db", version: 1}
  deleted:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: kv2, mount: kv-t1, path: "apps/{{namespace}}/db", version: 2}
  missing:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: kv2, mount: kv-t1, path: "apps/{{namespace}}/nothing"}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [latest, first, deleted, missing]
"#;
    let b = InProcessBroker::start(policy, &vault_config(bao, &auth, ""))
        .await
        .expect("broker");
    let me = k8s_pod("shop", "api", "a");

    let latest = issue(&b, &me, &["latest", "first"], None)
        .await
        .expect("issued");
    let by = |r: &str| {
        latest
            .credentials
            .iter()
            .find(|c| c.role == r)
            .expect("role")
    };
    assert_eq!(
        by("latest").data.keys().collect::<Vec<_>>(),
        ["password"],
        "only the scoped key"
    );
    assert_eq!(by("latest").data["password"].expose(), "v3-pass");
    assert_eq!(by("first").data["password"].expose(), "v1-pass");
    assert_eq!(by("first").data["user"].expose(), "app");
    // The second pod is served from the cache: one read of each upstream.
    issue(&b, &k8s_pod("shop", "api", "b"), &["latest"], None)
        .await
        .expect("cached");
    let reads = bao.audited("kv-t1/data/apps/shop/db");
    let reads = reads
        .iter()
        .filter(|r| r["request"]["operation"] == "read")
        .count();
    assert_eq!(reads, 2);
    assert_eq!(bao.audited("auth/approle-kv/login").len(), 1);

    // A deleted version and a missing path: what OpenBao answers (404), without secrets.
    for role in ["deleted", "missing"] {
        let err = issue(&b, &me, &[role], None).await.expect_err(role);
        let body = err.body(Some("req_test"));
        assert!(
            body.error.message.ends_with(
                "Vault answered 404 (no secret at this path, or the version read is deleted or \
                 destroyed)"
            ),
            "{role}: {}",
            body.error.message
        );
        assert_eq!(err.code(), ErrorCode::UpstreamRefused, "{role}");
        assert!(!body.error.retryable, "{role}: {}", body.error.message);
        assert!(
            !body.error.message.contains("pass"),
            "{}",
            body.error.message
        );
    }
}

const DB_POLICY: &str = r#"
roles:
  db:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: dynamic, mount: db-t2, role: app}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [db]
"#;

/// Whether PostgreSQL has a role named `user`.
fn pg_has_role(pg: &Postgres, user: &str) -> bool {
    pg.psql(&format!(
        "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
        user.replace('\'', "''")
    )) == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_credentials_log_in_and_are_dropped_on_revocation_and_on_expiry() {
    let bao = OpenBao::shared().await;
    let pg = Postgres::start();
    bao.database_postgres("db-t2", &pg, "app", 300, 3600).await;
    bao.policy(
        "db-t2-broker",
        "path \"db-t2/creds/app\" { capabilities = [\"read\"] }\n\
         path \"sys/leases/revoke\" { capabilities = [\"update\"] }\n\
         path \"sys/leases/renew\" { capabilities = [\"update\"] }",
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let (auth, broker_token) = token_auth(bao, &dir, &["db-t2-broker"]).await;
    let b = InProcessBroker::start(DB_POLICY, &vault_config(bao, &auth, ""))
        .await
        .expect("broker");
    let me = k8s_pod("shop", "api", "a");

    let resp = issue(&b, &me, &["db"], None).await.expect("issued");
    let cred = &resp.credentials[0];
    let user = cred.data["username"].expose().to_owned();
    let password = cred.data["password"].expose().to_owned();
    assert_eq!(
        pg.psql_as(&user, &password, "postgres", "SELECT current_user")
            .as_deref(),
        Ok(user.as_str()),
        "the issued user and password log in"
    );
    // OpenBao's lease is the database role's 300 s; the broker renews it up to the 600 s it
    // granted, so that is the credential's lifetime.
    assert_eq!(
        cred.ttl_seconds, 600,
        "the TTL granted, not OpenBao's first lease"
    );
    assert_eq!(
        unix_seconds(parse_rfc3339(&cred.expires_at).expect("time")),
        unix_seconds(b.clock.now()) + 600
    );
    assert!(!b.audit_log().contains(&password));

    // Revoked on request by the workload: OpenBao runs the revocation statements.
    let out = b
        .broker
        .revoke_lease(&cred.lease_id, Some(&me.identity), "req_rv")
        .await
        .expect("revoked");
    assert!(out.upstream_revoked);
    assert!(!pg_has_role(&pg, &user), "the role is dropped");
    let refused = pg
        .psql_as(&user, &password, "postgres", "SELECT 1")
        .expect_err("no login after revocation");
    assert!(
        refused.contains("password authentication failed"),
        "{refused}"
    );

    // Revoked on expiry by the sweep.
    let second = issue(&b, &me, &["db"], None).await.expect("issued");
    let user2 = second.credentials[0].data["username"].expose().to_owned();
    assert!(pg_has_role(&pg, &user2));
    assert_eq!(b.broker.sweep_expired_leases().await.expect("sweep"), 0);
    b.clock.advance(Duration::from_secs(600));
    assert_eq!(b.broker.sweep_expired_leases().await.expect("sweep"), 1);
    assert!(!pg_has_role(&pg, &user2), "dropped on expiry");
    assert_eq!(
        bao.audited("sys/leases/revoke")
            .iter()
            .filter(|r| r["auth"]["policies"].to_string().contains("db-t2-broker"))
            .count(),
        2
    );

    // Vault ties a lease to the token that created it: revoking the broker's token revokes
    // every credential the broker issued with it (CONFIG.md: the broker's token max TTL).
    let third = issue(&b, &me, &["db"], None).await.expect("issued");
    let user3 = third.credentials[0].data["username"].expose().to_owned();
    assert!(pg_has_role(&pg, &user3));
    bao.revoke_token(&broker_token).await;
    let mut gone = false;
    for _ in 0..20 {
        if !pg_has_role(&pg, &user3) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the broker's token took its leases with it");
}

/// Token auth for a broker that reads database credentials from `mount` and renews leases
/// (policy `<mount>-broker`).
async fn renewing_db_broker_auth(bao: &OpenBao, mount: &str, dir: &tempfile::TempDir) -> String {
    let policy = format!("{mount}-broker");
    bao.policy(
        &policy,
        &format!(
            "path \"{mount}/creds/*\" {{ capabilities = [\"read\"] }}\n\
             path \"sys/leases/*\" {{ capabilities = [\"update\"] }}"
        ),
    )
    .await;
    token_auth(bao, dir, &[&policy]).await.0
}

/// `rolvaliduntil` of a PostgreSQL role, in Unix seconds.
fn pg_valid_until(pg: &Postgres, user: &str) -> i64 {
    pg.psql(&format!(
        "SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = '{}'",
        user.replace('\'', "''")
    ))
    .parse()
    .expect("valid until")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_leases_are_renewed_while_held_up_to_the_ttl_granted_and_a_vault_cap_ends_them() {
    let bao = OpenBao::shared().await;
    let pg = Postgres::start();
    // `short`: 3 s leases, renewable for an hour. `capped`: 3 s leases, at most 5 s.
    bao.database_postgres("db-t6", &pg, "short", 3, 3600).await;
    bao.database_role("db-t6", "capped", 3, 5).await;
    let dir = tempfile::tempdir().expect("tmp");
    let auth = renewing_db_broker_auth(bao, "db-t6", &dir).await;
    let policy = r#"
roles:
  short:
    backend: vault
    max_ttl_seconds: 8
    default_ttl_seconds: 8
    settings: {kind: dynamic, mount: db-t6, role: short}
  capped:
    backend: vault
    max_ttl_seconds: 8
    default_ttl_seconds: 8
    settings: {kind: dynamic, mount: db-t6, role: capped}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [short, capped]
"#;
    let b = InProcessBroker::start(policy, &vault_config(bao, &auth, ""))
        .await
        .expect("broker");
    let me = k8s_pod("shop", "api", "a");
    // The broker's clock follows the real one from here (OpenBao's TTLs run on it).
    let (t0, real0) = (b.clock.now(), std::time::Instant::now());
    let resp = issue(&b, &me, &["short", "capped"], None)
        .await
        .expect("issued");
    let by = |r: &str| resp.credentials.iter().find(|c| c.role == r).expect("role");
    let (short, capped) = (by("short"), by("capped"));
    assert_eq!(short.ttl_seconds, 8, "the TTL granted, renewed up to");
    assert_eq!(capped.ttl_seconds, 8);
    let user = |c: &lanyard::wire::Credential| c.data["username"].expose().to_owned();
    let (short_user, capped_user) = (user(short), user(capped));
    let first_valid_until = pg_valid_until(&pg, &short_user);
    // A third lease, revoked by its workload at once: renewed no more.
    let other = k8s_pod("shop", "api", "b");
    let revoked = issue(&b, &other, &["short"], None).await.expect("issued");
    b.broker
        .revoke_lease(
            &revoked.credentials[0].lease_id,
            Some(&other.identity),
            "req_rv",
        )
        .await
        .expect("revoked");

    // Seven seconds, the renewals looked at four times a second: each lease renewed at two
    // thirds of its 3 s. Without renewal OpenBao would have dropped both users at 3 s.
    // What PostgreSQL says is read while the renewals run: after them the lease has only its
    // last step left, which a loaded machine can spend before the checks (OpenBao then drops
    // the user).
    let mut total = lanyard_broker::broker::LeaseRenewals::default();
    let (mut valid_until, mut late_login) = (first_valid_until, None);
    while real0.elapsed() < Duration::from_secs(7) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        b.clock.set(t0 + real0.elapsed());
        let r = b.broker.renew_leases().await;
        total.renewed += r.renewed;
        total.capped += r.capped;
        total.failed += r.failed;
        valid_until = valid_until.max(pg_valid_until(&pg, &short_user));
        if late_login.is_none() && real0.elapsed() > Duration::from_secs(4) {
            late_login = Some(pg.psql_as(
                &short_user,
                short.data["password"].expose(),
                "postgres",
                "SELECT 1",
            ));
        }
    }
    // No failure: the lease its workload revoked was not renewed (OpenBao would refuse it).
    assert_eq!(total.failed, 0, "{total:?}");
    assert_eq!(total.capped, 1, "OpenBao capped `capped` at 5 s: {total:?}");
    // `short` at about 2, 4 and 6 s (the last up to the 8 s granted); `capped` at about 2 s
    // (once more if that renewal came early: OpenBao counts from its own issue time), then
    // capped.
    assert!(total.renewed >= 4, "{total:?}");
    assert!(
        valid_until >= first_valid_until + 4,
        "OpenBao moved VALID UNTIL with each renewal"
    );
    assert_eq!(
        late_login.expect("a login after 4 s").as_deref(),
        Ok("1"),
        "the renewed credential still logs in past its first lease"
    );
    // OpenBao revoked the capped one at its 5 s cap (its expiry manager runs the statements).
    let mut gone = false;
    for _ in 0..20 {
        if !pg_has_role(&pg, &capped_user) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gone, "the capped lease ended upstream");

    // At the TTL granted the broker stops renewing and the sweep revokes it.
    b.clock.set(t0 + Duration::from_secs(9));
    assert_eq!(b.broker.renew_leases().await, Default::default());
    assert!(b.broker.sweep_expired_leases().await.expect("sweep") >= 1);
    assert!(
        !pg_has_role(&pg, &short_user),
        "dropped at the end of the TTL granted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_takes_up_renewing_what_an_earlier_process_handed_out() {
    use lanyard_broker::store::{Store, memory::MemoryStore};
    let bao = OpenBao::shared().await;
    let pg = Postgres::start();
    // 3 s leases, renewable for an hour; the lanyard role grants 8 s.
    bao.database_postgres("db-t9", &pg, "short", 3, 3600).await;
    let dir = tempfile::tempdir().expect("tmp");
    let auth = renewing_db_broker_auth(bao, "db-t9", &dir).await;
    let policy = r#"
roles:
  short:
    backend: vault
    max_ttl_seconds: 8
    default_ttl_seconds: 8
    settings: {kind: dynamic, mount: db-t9, role: short}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [short]
"#;
    // Both "processes" share the store, as a restarted broker shares its database.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let first =
        InProcessBroker::start_with_store(policy, &vault_config(bao, &auth, ""), store.clone())
            .await
            .expect("broker");
    let me = k8s_pod("shop", "api", "a");
    let resp = issue(&first, &me, &["short"], None).await.expect("issued");
    let cred = &resp.credentials[0];
    assert_eq!(
        cred.ttl_seconds, 8,
        "handed out for the TTL granted, to be renewed"
    );
    let user = cred.data["username"].expose().to_owned();
    let password = cred.data["password"].expose().to_owned();
    let second = first.restart_with_store(store).await.expect("restarted");
    assert_eq!(
        second.broker.renew_leases().await,
        Default::default(),
        "a new process holds nothing until it takes the store's leases up"
    );
    assert_eq!(second.broker.resume_renewals().await.expect("resume"), 1);
    // Five seconds, looked at four times a second: past the 3 s OpenBao gave at issue.
    let (t0, real0) = (second.clock.now(), std::time::Instant::now());
    let mut renewed = 0;
    while real0.elapsed() < Duration::from_secs(5) {
        let r = second.broker.renew_leases().await;
        assert_eq!(r.failed, 0, "{r:?}");
        renewed += r.renewed;
        tokio::time::sleep(Duration::from_millis(250)).await;
        second.clock.set(t0 + real0.elapsed());
    }
    assert!(
        renewed >= 2,
        "renewed at once, then at two thirds of each 3 s: {renewed}"
    );
    assert_eq!(
        pg.psql_as(&user, &password, "postgres", "SELECT 1")
            .as_deref(),
        Ok("1"),
        "the credential outlives its first lease under the restarted broker"
    );
}

/// Two replicas on one PostgreSQL store: the one holding the `lease_renewals` job renews
/// every replica's leases, so when the replica that handed a lease out is lost, the other
/// takes the job over (three reload periods later) and keeps the lease alive past its first
/// Vault period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replicas_leases_are_renewed_by_the_replica_that_takes_the_job_over() {
    use lanyard_broker::store::Store;
    use lanyard_broker::store::postgres::{PostgresOptions, PostgresStore};
    let bao = OpenBao::shared().await;
    let pg = Postgres::start();
    // 6 s leases, renewable for an hour; the lanyard role grants 20 s.
    bao.database_postgres("db-t11", &pg, "short", 6, 3600).await;
    pg.psql("CREATE DATABASE lanyard");
    let dir = tempfile::tempdir().expect("tmp");
    let auth = renewing_db_broker_auth(bao, "db-t11", &dir).await;
    let policy = r#"
roles:
  short:
    backend: vault
    max_ttl_seconds: 20
    default_ttl_seconds: 20
    settings: {kind: dynamic, mount: db-t11, role: short}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [short]
"#;
    // Claims last three reload periods: 3 s.
    let config = format!(
        "reload_interval_seconds: 1
{}",
        vault_config(bao, &auth, "")
    );
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store: Arc<dyn Store> = Arc::new(
            PostgresStore::connect(&PostgresOptions::new(pg.url("lanyard")))
                .await
                .expect("store"),
        );
        replicas.push(
            InProcessBroker::start_with_store(policy, &config, store)
                .await
                .expect("broker"),
        );
    }
    let (a, b) = (&replicas[0], &replicas[1]);
    let holder = || {
        pg.psql_db(
            "lanyard",
            "SELECT holder FROM job_claims WHERE job = 'lease_renewals'",
        )
    };
    let me = k8s_pod("shop", "api", "a");
    let resp = issue(a, &me, &["short"], None).await.expect("issued");
    let cred = &resp.credentials[0];
    assert_eq!(cred.ttl_seconds, 20);
    let user = cred.data["username"].expose().to_owned();
    let password = cred.data["password"].expose().to_owned();
    // Both clocks follow the real time (OpenBao's leases do).
    let real0 = std::time::Instant::now();
    let (ta, tb) = (a.clock.now(), b.clock.now());
    let sync = || {
        a.clock.set(ta + real0.elapsed());
        b.clock.set(tb + real0.elapsed());
    };
    // The issuing replica holds the job; the other renews nothing meanwhile.
    a.broker.renewal_tick().await;
    assert_eq!(holder(), a.broker.replica_id());
    assert_eq!(b.broker.renewal_tick().await, Default::default());
    assert_eq!(holder(), a.broker.replica_id());
    // The first replica is lost (it never runs again). Ten seconds, looked at four times a
    // second by the second replica: past the 6 s OpenBao gave at issue.
    let mut renewed = 0;
    while real0.elapsed() < Duration::from_secs(10) {
        sync();
        let r = b.broker.renewal_tick().await;
        assert_eq!(r.failed, 0, "{r:?}");
        renewed += r.renewed;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(holder(), b.broker.replica_id(), "the job was taken over");
    assert!(
        renewed >= 2,
        "renewed before the first period ended, then two thirds into the next: {renewed}"
    );
    assert_eq!(
        pg.psql_as(&user, &password, "postgres", "SELECT 1")
            .as_deref(),
        Ok("1"),
        "the credential outlives its first lease under the replica that took over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_certificates_verify_against_the_mounts_ca_and_child_tokens_carry_policy_and_ttl() {
    use x509_parser::prelude::*;
    let bao = OpenBao::shared().await;
    let ca_pem = bao.pki("pki-t3", "svc", "svc", "900s").await;
    bao.policy(
        "t3-read",
        "path \"kv-none/*\" { capabilities = [\"read\"] }",
    )
    .await;
    bao.policy(
        "t3-broker",
        "path \"pki-t3/issue/svc\" { capabilities = [\"update\"] }\n\
         path \"pki-t3/revoke\" { capabilities = [\"update\"] }\n\
         path \"auth/token/create\" { capabilities = [\"update\"] }\n\
         path \"auth/token/revoke-accessor\" { capabilities = [\"update\"] }",
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    // The broker's token must hold the policies it hands to child tokens.
    let (auth, _) = token_auth(bao, &dir, &["t3-broker", "t3-read"]).await;
    let policy = r#"
roles:
  cert:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings:
      kind: pki
      mount: pki-t3
      role: svc
      alt_names: ["{{service_account}}-alt.{{namespace}}.svc"]
  vault-token:
    backend: vault
    max_ttl_seconds: 1800
    default_ttl_seconds: 900
    settings: {kind: token, policies: [t3-read]}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [cert, vault-token]
"#;
    let b = InProcessBroker::start(policy, &vault_config(bao, &auth, ""))
        .await
        .expect("broker");
    let me = k8s_pod("shop", "api", "a");

    // The role asks for 600 s (and the caller may ask up to 3600 s): the PKI role caps at
    // 900 s, and the expiry handed out is the certificate's.
    let resp = issue(&b, &me, &["cert"], Some(3600)).await.expect("issued");
    let cert = &resp.credentials[0];
    let (_, pem) = parse_x509_pem(cert.data["certificate"].expose().as_bytes()).expect("pem");
    let x509 = pem.parse_x509().expect("x509");
    let (_, ca_pem) = parse_x509_pem(ca_pem.as_bytes()).expect("ca pem");
    let ca = ca_pem.parse_x509().expect("ca");
    // The signature verifies with the mount's CA key (EC P-256, ECDSA with SHA-256).
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        ca.public_key().subject_public_key.data.as_ref(),
    )
    .verify(
        x509.tbs_certificate.as_ref(),
        x509.signature_value.data.as_ref(),
    )
    .expect("signed by the mount's CA");
    assert_eq!(x509.issuer(), ca.subject());
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .expect("cn");
    assert_eq!(cn, "api.shop.svc");
    let sans: Vec<String> = x509
        .subject_alternative_name()
        .expect("san")
        .expect("san present")
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(
        sans.iter().any(|n| n.contains("api-alt.shop.svc")),
        "{sans:?}"
    );
    let lifetime = x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp();
    assert!(
        (900..=930).contains(&lifetime),
        "capped at the PKI role's 900 s (OpenBao backdates not_before by 30 s): {lifetime}"
    );
    assert!(cert.ttl_seconds <= 900, "{}", cert.ttl_seconds);
    assert_eq!(
        unix_seconds(parse_rfc3339(&cert.expires_at).expect("time")),
        x509.validity().not_after.timestamp() as u64,
        "the certificate's expiry"
    );

    // A child token: its own lookup-self shows the policy and the TTL.
    let resp = issue(&b, &me, &["vault-token"], Some(600))
        .await
        .expect("token");
    let token = resp.credentials[0].data["token"].expose().to_owned();
    let (status, looked) = bao
        .call_as(&token, reqwest::Method::GET, "auth/token/lookup-self", None)
        .await;
    assert_eq!(status, 200, "{looked}");
    let data = &looked["data"];
    assert_eq!(data["policies"], json!(["default", "t3-read"]));
    assert!(
        (595..=600).contains(&data["ttl"].as_u64().expect("ttl")),
        "{data}"
    );
    assert_eq!(data["explicit_max_ttl"], json!(600));
    assert_eq!(
        data["meta"]["lanyard_lease"],
        json!(resp.credentials[0].lease_id)
    );
    assert!(
        data["orphan"] == json!(false),
        "a child of the broker's token"
    );

    // Revocation reaches OpenBao: the token is gone, the certificate is on the CRL.
    for c in [&resp.credentials[0], cert] {
        let out = b
            .broker
            .revoke_lease(&c.lease_id, None, "req_rv")
            .await
            .expect("revoke");
        assert!(out.upstream_revoked, "{}", c.role);
    }
    assert!(bao.lookup(&token).await.is_none(), "child token revoked");
    let serial = cert.data["serial_number"].expose();
    let rec = bao.read(&format!("pki-t3/cert/{serial}")).await;
    assert!(
        rec["data"]["revocation_time"].as_i64().unwrap_or(0) > 0,
        "{rec}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_logs_in_with_jwt_auth_trusting_the_test_issuer() {
    let bao = OpenBao::shared().await;
    let issuer = OidcIssuer::start().await;
    bao.enable_secrets("kv-t4", "kv").await;
    bao.kv_put("kv-t4", "apps/shop/db", json!({"password": "jwt-pass"}))
        .await;
    bao.policy(
        "t4-read",
        "path \"kv-t4/data/*\" { capabilities = [\"read\"] }",
    )
    .await;
    bao.jwt_auth("jwt-t4", &issuer, "lanyard", "openbao", &["t4-read"], "1h")
        .await;
    let dir = tempfile::tempdir().expect("tmp");
    let jwt = issuer.token(
        lanyard_test_support::Algorithm::ES256,
        json!({
            "iss": issuer.url(),
            "sub": "system:serviceaccount:lanyard:broker",
            "aud": "openbao",
            "iat": lanyard_test_support::now_unix(),
            "exp": lanyard_test_support::now_unix() + 600,
        }),
    );
    let file = secret_file(&dir, "jwt", &jwt);
    let auth = format!(
        "      jwt:\n        role: lanyard\n        jwt_file: \"{file}\"\n        mount: jwt-t4\n"
    );
    let policy = r#"
roles:
  pw:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: kv2, mount: kv-t4, path: "apps/{{namespace}}/db"}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [pw]
"#;
    let b = InProcessBroker::start(policy, &vault_config(bao, &auth, ""))
        .await
        .expect("broker");
    let resp = issue(&b, &k8s_pod("shop", "api", "a"), &["pw"], None)
        .await
        .expect("issued");
    assert_eq!(resp.credentials[0].data["password"].expose(), "jwt-pass");
    let logins = bao.audited("auth/jwt-t4/login");
    assert_eq!(logins.len(), 1);
    assert_eq!(
        logins[0]["auth"]["metadata"]["role"],
        json!("lanyard"),
        "{}",
        logins[0]
    );
    assert!(
        issuer.jwks_fetches() >= 1,
        "OpenBao checked the JWT's signature"
    );

    // A JWT OpenBao does not accept (another audience): the login is refused, said so.
    let wrong = issuer.token(
        lanyard_test_support::Algorithm::ES256,
        json!({"iss": issuer.url(), "sub": "x", "aud": "elsewhere",
               "iat": lanyard_test_support::now_unix(), "exp": lanyard_test_support::now_unix() + 600}),
    );
    let dir2 = tempfile::tempdir().expect("tmp");
    let file = secret_file(&dir2, "jwt", &wrong);
    let auth = format!(
        "      jwt:\n        role: lanyard\n        jwt_file: \"{file}\"\n        mount: jwt-t4\n"
    );
    let b2 = InProcessBroker::start(policy, &vault_config(bao, &auth, ""))
        .await
        .expect("broker");
    let err = issue(&b2, &k8s_pod("shop", "api", "a"), &["pw"], None)
        .await
        .expect_err("login refused");
    let msg = err.body(Some("req_test")).error.message;
    assert!(msg.contains("JWT login: Vault answered 400"), "{msg}");
    assert!(!msg.contains(&wrong), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denying_policy_is_a_refusal_and_a_revoked_broker_token_is_replaced_by_a_new_login() {
    let bao = OpenBao::shared().await;
    bao.enable_secrets("kv-t5", "kv").await;
    bao.kv_put("kv-t5", "apps/shop/db", json!({"password": "t5-pass"}))
        .await;
    bao.kv_put("kv-t5", "apps/other/db", json!({"password": "other-pass"}))
        .await;
    bao.kv_put("kv-t5", "apps/third/db", json!({"password": "third-pass"}))
        .await;
    bao.policy(
        "t5-read",
        "path \"kv-t5/data/apps/shop/*\" { capabilities = [\"read\"] }\n\
         path \"kv-t5/data/apps/third/*\" { capabilities = [\"read\"] }\n\
         path \"kv-t5/data/apps/other/*\" { capabilities = [\"deny\"] }",
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let auth = approle_auth(bao, &dir, "approle-t5", &["t5-read"], "1h").await;
    let policy = r#"
roles:
  pw:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: kv2, mount: kv-t5, path: "apps/{{namespace}}/db"}
rules:
  - name: all
    match: {service_account: api}
    roles: [pw]
"#;
    // No reuse: every request reaches OpenBao.
    let b = InProcessBroker::start(
        policy,
        &vault_config(bao, &auth, "    cache_refresh_fraction: 0\n"),
    )
    .await
    .expect("broker");
    issue(&b, &k8s_pod("shop", "api", "a"), &["pw"], None)
        .await
        .expect("issued");

    // The broker's token is revoked behind its back: one retryable 503 that says the broker
    // logs in again, then a new login. (A path not read before, so no cached credential is
    // served over the failure.)
    let accessor = bao.audited("auth/approle-t5/login")[0]["auth"]["accessor"]
        .as_str()
        .expect("accessor")
        .to_owned();
    bao.write("auth/token/revoke-accessor", json!({"accessor": accessor}))
        .await;
    let err = issue(&b, &k8s_pod("third", "api", "a"), &["pw"], None)
        .await
        .expect_err("revoked token");
    assert_eq!(err.code(), ErrorCode::UpstreamUnavailable, "{err}");
    let body = err.body(None);
    assert!(body.error.retryable);
    assert!(
        body.error.message.contains("the broker logs in again"),
        "{}",
        body.error.message
    );
    let again = issue(&b, &k8s_pod("third", "api", "a"), &["pw"], None)
        .await
        .expect("logged in again");
    assert_eq!(again.credentials[0].data["password"].expose(), "third-pass");
    assert_eq!(bao.audited("auth/approle-t5/login").len(), 2);

    // The policy denies `other`. OpenBao answers 403 alike to a denial and to a token that
    // is no longer valid: on the token the broker already held, that is a retryable 503 and
    // a new login; with the token logged in for this very call, a refusal (502, not
    // retryable) that says what was refused.
    let err = issue(&b, &k8s_pod("other", "api", "a"), &["pw"], None)
        .await
        .expect_err("denied");
    assert_eq!(err.code(), ErrorCode::UpstreamUnavailable, "{err}");
    let err = issue(&b, &k8s_pod("other", "api", "a"), &["pw"], None)
        .await
        .expect_err("denied");
    assert_eq!(err.code(), ErrorCode::UpstreamRefused, "{err}");
    let body = err.body(Some("req_test"));
    assert!(!body.error.retryable);
    assert!(
        body.error
            .message
            .contains("reading kv-t5/data/apps/other/db: Vault answered 403: permission denied"),
        "{}",
        body.error.message
    );
    assert!(!body.error.message.contains("other-pass"));
    assert_eq!(bao.audited("auth/approle-t5/login").len(), 3);
}

/// What an operator sets up on a fresh server for the failure-path test: KV, a database role,
/// the broker's policy, and AppRole with a fixed role id and secret id (so the broker's files
/// stay valid across a restart that loses the server's state).
async fn operator_setup(bao: &OpenBao, pg: &Postgres, generation: &str) {
    bao.enable_secrets("kv", "kv").await;
    bao.kv_put("kv", "apps/shop/db", json!({"password": generation}))
        .await;
    bao.database_postgres("db", pg, "app", 300, 3600).await;
    bao.policy(
        "broker",
        "path \"kv/data/*\" { capabilities = [\"read\"] }\n\
         path \"db/creds/*\" { capabilities = [\"read\"] }\n\
         path \"sys/leases/*\" { capabilities = [\"update\"] }",
    )
    .await;
    bao.enable_auth("approle", "approle").await;
    bao.write(
        "auth/approle/role/lanyard",
        json!({"token_policies": ["broker"], "token_ttl": "1h"}),
    )
    .await;
    bao.write(
        "auth/approle/role/lanyard/role-id",
        json!({"role_id": "lanyard-role"}),
    )
    .await;
    bao.write(
        "auth/approle/role/lanyard/custom-secret-id",
        json!({"secret_id": "lanyard-secret-id"}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_hung_and_restarted_servers_are_503s_and_the_broker_logs_in_again() {
    let pg = Postgres::start();
    let mut bao = OpenBao::start().await;
    operator_setup(&bao, &pg, "before").await;
    let dir = tempfile::tempdir().expect("tmp");
    let file = secret_file(&dir, "secret-id", "lanyard-secret-id");
    let auth = format!(
        "      approle:\n        role_id: lanyard-role\n        secret_id_file: \"{file}\"\n"
    );
    let policy = r#"
roles:
  pw:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: kv2, mount: kv, path: "apps/{{namespace}}/db"}
  db:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: dynamic, mount: db, role: app}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [pw, db]
"#;
    let b = InProcessBroker::start(
        policy,
        &vault_config(
            &bao,
            &auth,
            "    cache_refresh_fraction: 0\n    request_timeout_seconds: 1\n",
        ),
    )
    .await
    .expect("broker");
    let me = k8s_pod("shop", "api", "a");
    let pw = |r: &CredentialResponse| r.credentials[0].data["password"].expose().to_owned();
    let first = issue(&b, &me, &["pw"], None).await.expect("issued");
    assert_eq!(pw(&first), "before");
    let db = issue(&b, &me, &["db"], None).await.expect("db issued");
    let db_user = db.credentials[0].data["username"].expose().to_owned();

    // Sealed: the database role (never cached) gets a retryable 503 that says so; the KV
    // secret read before is served from the cache meanwhile. Unsealed, the same broker
    // token works again.
    bao.seal().await;
    let err = issue(&b, &me, &["db"], None).await.expect_err("sealed");
    assert_eq!(err.code(), ErrorCode::UpstreamUnavailable, "{err}");
    let body = err.body(Some("req_test"));
    assert!(body.error.retryable);
    assert!(
        body.error
            .message
            .contains("Vault answered 503: Vault is sealed"),
        "{}",
        body.error.message
    );
    assert_eq!(
        pw(&issue(&b, &me, &["pw"], None).await.expect("cached")),
        "before"
    );
    bao.unseal().await;
    issue(&b, &me, &["db"], None).await.expect("unsealed");

    // Hung (the process stopped: connections are accepted, nothing answers): the request
    // timeout (1 s) ends the call with a retryable 503.
    bao.pause(true);
    let started = std::time::Instant::now();
    let err = issue(&b, &me, &["db"], None).await.expect_err("hung");
    let waited = started.elapsed();
    bao.pause(false);
    assert_eq!(err.code(), ErrorCode::UpstreamUnavailable, "{err}");
    assert!(err.body(None).error.retryable);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let msg = err.body(None).error.message;
    // Two timers of the same second race here, the HTTP client's (which names the path) and
    // the upstream limiter's around the whole call; either way the caller learns it timed out.
    assert!(
        msg.contains("reading db/creds/app: Vault did not answer in time")
            || msg.contains("no answer within 1 s"),
        "{msg}"
    );
    // Once resumed it answers again; on a loaded machine its first answers can still take
    // longer than the 1 s timeout (each such miss is the same retryable 503), so allow a few.
    let mut again = issue(&b, &me, &["db"], None).await;
    for _ in 0..10 {
        match &again {
            Err(e) if e.code() == ErrorCode::UpstreamUnavailable => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                again = issue(&b, &me, &["db"], None).await;
            }
            _ => break,
        }
    }
    again.expect("answering again");

    // Restarted: dev mode lost everything. The broker's token is unknown (a retryable 503
    // that says the broker logs in again), its login fails until the operator sets the
    // server up again (a refusal that names the login), and then it logs in on its own.
    let logins = bao.audited("auth/approle/login").len();
    bao.restart().await;
    let err = issue(&b, &me, &["db"], None)
        .await
        .expect_err("the broker's token is gone");
    assert_eq!(err.code(), ErrorCode::UpstreamUnavailable, "{err}");
    let msg = err.body(None).error.message;
    assert!(
        msg.contains("Vault answered 403: permission denied")
            && msg.contains("restarted without its storage"),
        "{msg}"
    );
    let err = issue(&b, &me, &["db"], None)
        .await
        .expect_err("no AppRole yet");
    assert_eq!(err.code(), ErrorCode::UpstreamRefused, "{err}");
    let msg = err.body(None).error.message;
    assert!(msg.contains("AppRole login: Vault answered 403"), "{msg}");
    assert!(!msg.contains("lanyard-secret-id"), "{msg}");
    operator_setup(&bao, &pg, "after").await;
    // The three database leases the broker was renewing are unknown to the new server: their
    // renewals are refused, so the broker stops renewing them and says so (a warning naming
    // each lease, `lanyard_lease_renewals_total{outcome="dropped"}`).
    b.clock.advance(Duration::from_secs(250));
    let renewals = b.broker.renew_leases().await;
    assert_eq!(renewals.failed, 3, "{renewals:?}");
    assert_eq!(
        b.broker.renew_leases().await,
        Default::default(),
        "dropped, not retried"
    );
    let metrics = b.broker.metrics().render();
    assert!(
        metrics.contains("lanyard_lease_renewals_total{backend=\"vault\",outcome=\"dropped\"} 3"),
        "{metrics}"
    );
    b.clock.advance(Duration::from_secs(350));
    let again = issue(&b, &me, &["pw"], None)
        .await
        .expect("logged in again");
    assert_eq!(pw(&again), "after");
    assert_eq!(
        bao.audited("auth/approle/login").len(),
        logins + 2,
        "one refused login, one that worked"
    );
    // The database user of the lost lease outlives it (nothing on the new server knows
    // it); revoking the broker's lease still succeeds, as OpenBao answers 204 for a lease
    // id it does not know.
    assert!(
        pg_has_role(&pg, &db_user),
        "a lost lease's user stays in PostgreSQL"
    );
    let out = b
        .broker
        .revoke_lease(&db.credentials[0].lease_id, None, "req_rv")
        .await
        .expect("revoked");
    assert!(out.upstream_revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_holds_the_brokers_login_and_its_secrets() {
    let bao = OpenBao::shared().await;
    let ns = "team-t7";
    bao.write(&format!("sys/namespaces/{ns}"), json!({})).await;
    bao.write_in(
        ns,
        "sys/mounts/kv",
        json!({"type": "kv", "options": {"version": "2"}}),
    )
    .await;
    bao.write_in(
        ns,
        "kv/data/apps/shop/db",
        json!({"data": {"password": "ns-pass"}}),
    )
    .await;
    bao.write_in(
        ns,
        "sys/policies/acl/read",
        json!({"policy": "path \"kv/data/*\" { capabilities = [\"read\"] }"}),
    )
    .await;
    bao.write_in(ns, "sys/auth/approle", json!({"type": "approle"}))
        .await;
    bao.write_in(
        ns,
        "auth/approle/role/lanyard",
        json!({"token_policies": ["read"], "token_ttl": "1h"}),
    )
    .await;
    bao.write_in(
        ns,
        "auth/approle/role/lanyard/role-id",
        json!({"role_id": "ns-role"}),
    )
    .await;
    bao.write_in(
        ns,
        "auth/approle/role/lanyard/custom-secret-id",
        json!({"secret_id": "ns-secret"}),
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let file = secret_file(&dir, "secret-id", "ns-secret");
    let auth =
        format!("      approle:\n        role_id: ns-role\n        secret_id_file: \"{file}\"\n");
    let policy = r#"
roles:
  pw:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: kv2, mount: kv, path: "apps/{{namespace}}/db"}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [pw]
"#;
    let b = InProcessBroker::start(
        policy,
        &vault_config(bao, &auth, &format!("    namespace: {ns}\n")),
    )
    .await
    .expect("broker");
    let resp = issue(&b, &k8s_pod("shop", "api", "a"), &["pw"], None)
        .await
        .expect("issued from the namespace");
    assert_eq!(resp.credentials[0].data["password"].expose(), "ns-pass");
    // The same login and path outside the namespace do not exist.
    let (status, _) = bao
        .call(
            reqwest::Method::POST,
            "auth/approle/login",
            Some(json!({"role_id": "ns-role", "secret_id": "ns-secret"})),
        )
        .await;
    assert_ne!(status, 200, "the AppRole lives in the namespace only");
    let in_ns = bao
        .audited("auth/approle/login")
        .into_iter()
        .filter(|r| r["request"]["namespace"]["path"] == json!(format!("{ns}/")))
        .count();
    assert_eq!(in_ns, 1, "the broker logged in inside the namespace");
}

/// Issue 16: a deleted pod's Vault leases are revoked upstream — OpenBao drops the database
/// user it made for that pod — and another pod's stay. (The pod watch that calls this is
/// tested against the API-server emulator in `tests/pod_watch.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pods_database_users_are_dropped_upstream_and_other_pods_keep_theirs() {
    let bao = OpenBao::shared().await;
    let pg = Postgres::start();
    bao.database_postgres("db-t16", &pg, "app", 300, 3600).await;
    bao.policy(
        "db-t16-broker",
        "path \"db-t16/creds/app\" { capabilities = [\"read\"] }\n\
         path \"sys/leases/revoke\" { capabilities = [\"update\"] }",
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let (auth, _) = token_auth(bao, &dir, &["db-t16-broker"]).await;
    let policy = DB_POLICY.replace("mount: db-t2", "mount: db-t16");
    let b = InProcessBroker::start(&policy, &vault_config(bao, &auth, ""))
        .await
        .expect("broker");
    let (a, other) = (k8s_pod("shop", "api", "a"), k8s_pod("shop", "api", "b"));
    let user_of = |r: &lanyard::wire::CredentialResponse| {
        r.credentials[0].data["username"].expose().to_owned()
    };
    let first = issue(&b, &a, &["db"], None).await.expect("issued");
    let second = issue(&b, &a, &["db"], None).await.expect("issued");
    let kept = issue(&b, &other, &["db"], None).await.expect("issued");
    let users = [user_of(&first), user_of(&second)];
    assert!(users.iter().all(|u| pg_has_role(&pg, u)));

    let done = b.broker.revoke_pod_leases("uid-a", "deleted").await;
    assert_eq!((done.revoked, done.failed), (2, 0));
    for u in &users {
        assert!(!pg_has_role(&pg, u), "{u} dropped by OpenBao");
    }
    assert!(
        pg_has_role(&pg, &user_of(&kept)),
        "the other pod's user stays"
    );
    // Once revoked, nothing is left to revoke; each revocation is audited with the pod.
    assert_eq!(
        b.broker.revoke_pod_leases("uid-a", "deleted").await.revoked,
        0
    );
    let log = b.audit_log();
    assert_eq!(
        log.matches("pod uid-a deleted: revoked upstream").count(),
        2,
        "{log}"
    );
    let lease = b
        .broker
        .revoke_lease(&kept.credentials[0].lease_id, None, "req_rv")
        .await
        .expect("revoke");
    assert!(lease.upstream_revoked);
}
