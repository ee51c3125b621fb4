//! The `vault` backend through the real `vaultrs` client against the Vault emulator in
//! `lanyard-test-support` (Vault's documented response bodies for the paths lanyard calls —
//! see its module doc), for what the real OpenBao of `openbao.rs` cannot be made to do:
//! Kubernetes auth, exact request bodies, and the broker's token renewal on a manual clock.
//! The table in `docs/ARCHITECTURE.md` says which test uses which server.

use std::time::Duration;

use lanyard::clock::{Clock, parse_rfc3339, unix_seconds};
use lanyard::wire::ErrorCode;
use lanyard_test_support::{InProcessBroker, VaultEmulator, k8s_pod};

/// Lease renewal is off here: these tests check the credential that lives as long as Vault's
/// first lease; renewal is tested against OpenBao (`broker/tests/openbao.rs`).
fn vault_config(vault: &VaultEmulator, auth: &str) -> String {
    format!(
        "backends:\n  vault:\n    address: \"{}\"\n    namespace: team-a\n    max_requests_per_second: 1000\n    renew_leases: false\n    auth:\n{auth}",
        vault.url
    )
}

fn approle(dir: &std::path::Path, vault: &VaultEmulator, ttl: u64) -> String {
    vault.enable_approle("approle", "role-123", "secret-456", ttl);
    let file = dir.join("secret-id");
    std::fs::write(&file, "secret-456\n").expect("secret id");
    format!(
        "      approle:\n        role_id: role-123\n        secret_id_file: \"{}\"\n",
        file.display()
    )
}

async fn start(policy: &str, config: &str) -> InProcessBroker {
    InProcessBroker::start(policy, config)
        .await
        .expect("broker starts")
}

const KV_POLICY: &str = r#"
roles:
  db-password:
    backend: vault
    scope: [password]
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: kv2, path: "apps/{{namespace}}/db", version: 1}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [db-password]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv2_reads_are_scoped_version_pinned_and_cached() {
    let vault = VaultEmulator::start().await;
    vault.put_kv(
        "secret",
        "apps/shop/db",
        serde_json::json!({"user": "app", "password": "v1-pass", "port": 5432}),
    );
    vault.put_kv(
        "secret",
        "apps/shop/db",
        serde_json::json!({"user": "app", "password": "v2-pass"}),
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let b = start(
        KV_POLICY,
        &vault_config(&vault, &approle(tmp.path(), &vault, 3600)),
    )
    .await;

    let first = b
        .issue(&k8s_pod("shop", "api", "a"), None)
        .await
        .expect("issued");
    let cred = &first.credentials[0];
    assert_eq!(cred.kind, "vault");
    assert_eq!(
        cred.data.keys().collect::<Vec<_>>(),
        ["password"],
        "only the scoped key"
    );
    assert_eq!(
        cred.data["password"].expose(),
        "v1-pass",
        "pinned version 1"
    );
    assert_eq!(cred.ttl_seconds, 600);
    let second = b
        .issue(&k8s_pod("shop", "api", "b"), None)
        .await
        .expect("cached");
    assert_eq!(second.credentials[0].data["password"].expose(), "v1-pass");

    let reads = vault.requests_to("secret/data/apps/shop/db");
    assert_eq!(reads.len(), 1, "the second pod was served from the cache");
    assert_eq!(reads[0].query.as_deref(), Some("version=1"));
    assert_eq!(reads[0].namespace.as_deref(), Some("team-a"));
    assert_eq!(vault.requests_to("auth/approle/login").len(), 1);
    assert!(
        reads[0].accessor.is_some(),
        "read with the broker's AppRole token"
    );
    // Another namespace is another path and is not granted here.
    assert_eq!(
        b.issue(&k8s_pod("other", "api", "c"), None)
            .await
            .expect_err("denied")
            .code(),
        ErrorCode::Forbidden
    );
}

const DYNAMIC_POLICY: &str = r#"
roles:
  db:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings: {kind: dynamic, mount: database, role: readonly}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [db]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_secrets_keep_their_lease_and_are_revoked_on_request_and_on_expiry() {
    let vault = VaultEmulator::start().await;
    vault.add_dynamic_role("database", "readonly", 300);
    let broker_token = vault.create_token(&["lanyard-broker"], 0, false);
    let tmp = tempfile::tempdir().expect("tmp");
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, &broker_token).expect("token");
    let auth = format!(
        "      token:\n        token_file: \"{}\"\n",
        token_file.display()
    );
    let b = start(DYNAMIC_POLICY, &vault_config(&vault, &auth)).await;
    let me = k8s_pod("shop", "api", "a");

    let resp = b.issue(&me, None).await.expect("issued");
    let cred = &resp.credentials[0];
    assert!(
        cred.data["username"]
            .expose()
            .starts_with("v-lanyard-readonly-")
    );
    assert!(!cred.data["password"].expose().is_empty());
    assert_eq!(cred.ttl_seconds, 300, "min(requested 600, Vault lease 300)");
    assert_eq!(
        unix_seconds(parse_rfc3339(&cred.expires_at).expect("time")),
        unix_seconds(b.clock.now()) + 300
    );
    let audit = b.audit_log();
    let upstream_id = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|r| r["upstream_lease"].as_str().map(str::to_owned))
        .expect("the Vault lease id is audited");
    let vault_lease = upstream_id
        .strip_prefix("lease:")
        .expect("lease prefix")
        .to_owned();
    assert!(vault_lease.starts_with("database/creds/readonly/"));
    assert!(!audit.contains(cred.data["password"].expose()));

    // Revoked on request by the owning workload: upstream too.
    let out = b
        .broker
        .revoke_lease(&cred.lease_id, Some(&me.identity), "req_rv")
        .await
        .expect("revoked");
    assert!(out.upstream_revoked);
    assert!(vault.lease(&vault_lease).expect("lease").revoked);
    assert_eq!(vault.requests_to("sys/leases/revoke").len(), 1);

    // Revoked on expiry by the sweep, once.
    let second = b.issue(&me, None).await.expect("issued");
    assert_eq!(
        b.broker.sweep_expired_leases().await.expect("sweep"),
        0,
        "not expired yet"
    );
    b.clock.advance(Duration::from_secs(300));
    assert_eq!(b.broker.sweep_expired_leases().await.expect("sweep"), 1);
    assert_eq!(
        b.broker.sweep_expired_leases().await.expect("sweep"),
        0,
        "only once"
    );
    let revokes = vault.requests_to("sys/leases/revoke");
    assert_eq!(revokes.len(), 2);
    let swept = revokes[1].body["lease_id"]
        .as_str()
        .expect("lease")
        .to_owned();
    assert!(vault.lease(&swept).expect("lease").revoked);
    let audit = b.audit_log();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("expired; revoked upstream")
                && l.contains(&second.credentials[0].lease_id)),
        "{audit}"
    );
}

const PKI_TOKEN_POLICY: &str = r#"
roles:
  cert:
    backend: vault
    max_ttl_seconds: 3600
    default_ttl_seconds: 600
    settings:
      kind: pki
      role: svc
      alt_names: ["{{service_account}}.{{namespace}}.svc.cluster.local"]
  vault-token:
    backend: vault
    max_ttl_seconds: 1800
    default_ttl_seconds: 900
    settings: {kind: token, policies: [read-db]}
rules:
  - name: shop
    match: {namespace: shop}
    roles: [cert, vault-token]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_certificates_and_child_tokens_follow_the_identity_and_ttl() {
    let vault = VaultEmulator::start().await;
    vault.add_pki_role("pki", "svc");
    vault.enable_kubernetes("kubernetes", "lanyard", "broker-sa-jwt", 3600);
    let tmp = tempfile::tempdir().expect("tmp");
    let jwt = tmp.path().join("sa-token");
    std::fs::write(&jwt, "broker-sa-jwt").expect("jwt");
    let auth = format!(
        "      kubernetes:\n        role: lanyard\n        jwt_file: \"{}\"\n",
        jwt.display()
    );
    let b = start(PKI_TOKEN_POLICY, &vault_config(&vault, &auth)).await;
    let resp = b
        .issue(&k8s_pod("shop", "api", "a"), None)
        .await
        .expect("issued");
    let by_role = |r: &str| {
        resp.credentials
            .iter()
            .find(|c| c.role == r)
            .unwrap_or_else(|| panic!("role {r}"))
    };

    let cert = by_role("cert");
    let pem = cert.data["certificate"].expose();
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
    let x509 = parsed.parse_x509().expect("x509");
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .expect("cn");
    assert_eq!(cn, "api.shop.svc");
    let issued = &vault.certs()[0];
    assert_eq!(issued.alt_names, ["api.shop.svc.cluster.local"]);
    assert_eq!(issued.ttl.as_deref(), Some("600s"));
    assert!(cert.data["private_key"].expose().contains("PRIVATE KEY"));
    assert_eq!(cert.ttl_seconds, 600);

    let token = by_role("vault-token");
    let child = vault
        .token(token.data["token"].expose())
        .expect("token exists");
    assert_eq!(child.policies, ["read-db"]);
    assert_eq!(child.ttl, 900);
    assert_eq!(child.meta["lanyard_lease"], token.lease_id);
    assert!(
        child.parent.is_some(),
        "a child of the broker's token, not an orphan"
    );
    assert_eq!(vault.requests_to("auth/kubernetes/login").len(), 1);

    // Both revoke upstream.
    for c in [cert, token] {
        let out = b
            .broker
            .revoke_lease(&c.lease_id, None, "req_rv")
            .await
            .expect("revoke");
        assert!(out.upstream_revoked, "{}", c.role);
    }
    assert!(vault.certs()[0].revoked);
    assert!(vault.token(&child.accessor).expect("token").revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brokers_token_is_renewed_and_replaced_and_outages_are_retryable_503s() {
    let vault = VaultEmulator::start().await;
    vault.add_dynamic_role("database", "readonly", 300);
    let tmp = tempfile::tempdir().expect("tmp");
    let b = start(
        DYNAMIC_POLICY,
        &vault_config(&vault, &approle(tmp.path(), &vault, 30)),
    )
    .await;
    let me = k8s_pod("shop", "api", "a");
    b.issue(&me, None).await.expect("issued");
    let broker_accessor = vault.requests_to("database/creds/readonly")[0]
        .accessor
        .clone()
        .expect("accessor");

    // Two thirds into its 30 s TTL the broker renews its own token.
    b.clock.advance(Duration::from_secs(19));
    b.broker.maintain_backends().await;
    assert!(vault.requests_to("auth/token/renew-self").is_empty());
    b.clock.advance(Duration::from_secs(1));
    b.broker.maintain_backends().await;
    assert_eq!(vault.requests_to("auth/token/renew-self").len(), 1);
    assert_eq!(vault.token(&broker_accessor).expect("token").renewals, 1);

    // Its token disappears (expired upstream): one request fails, the next logs in again.
    let token = vault.token(&broker_accessor).expect("token").id;
    vault.revoke_token(&token);
    let err = b.issue(&me, None).await.expect_err("403 upstream");
    assert_eq!(err.code(), ErrorCode::UpstreamUnavailable);
    b.issue(&me, None).await.expect("logged in again");
    assert_eq!(vault.requests_to("auth/approle/login").len(), 2);

    // Vault down: a retryable 503 that says what failed, without secrets.
    vault.set_down(true);
    let err = b.issue(&me, None).await.expect_err("down");
    assert_eq!(err.code().http_status(), 503);
    let body = err.body(Some("req_test"));
    assert!(body.error.retryable);
    assert!(
        body.error.message.contains("Vault answered 503"),
        "{}",
        body.error.message
    );
    assert!(!body.error.message.contains("secret-456"));
}
