//! Identities beyond pods, through the real broker over TLS: CI tokens in the claim shapes
//! GitHub Actions and GitLab CI document, matched by claim selectors; SPIFFE JWT-SVIDs from
//! a trust domain whose bundle endpoint is served over TLS, matched by SPIFFE ID selectors;
//! and the image gate's treatment of both (not gated unless the rule requires an image).
//!
//! The claim sets are written from each provider's published token documentation (GitHub:
//! "OpenID Connect reference", custom claims; GitLab: "OpenID Connect (OIDC) Authentication
//! Using ID Tokens", token payload) — every GitHub custom claim is a string (`ref_protected`
//! is `"true"`), GitLab's are strings except `runner_id` (a number) and the lists.

use lanyard_test_support::{
    Algorithm, OidcIssuer, SpiffeTrustDomain, SvidAlg, TestBroker, TestBrokerOptions, TestPki,
    now_unix,
};
use serde_json::{Value, json};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

fn roles(body: &Value) -> Vec<String> {
    body["credentials"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["role"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn times(mut claims: Value) -> Value {
    let now = now_unix();
    claims["iat"] = json!(now);
    claims["nbf"] = json!(now - 5);
    claims["exp"] = json!(now + 300);
    claims
}

async fn broker_with(issuer: Option<&OidcIssuer>, policy: String, extra: String) -> TestBroker {
    TestBroker::start_with(
        issuer,
        TestBrokerOptions {
            policies: vec![("policy.yaml".into(), policy)],
            extra_config: extra,
            ..TestBrokerOptions::default()
        },
    )
    .await
}

/// A GitHub Actions OIDC token's claims for a deployment job of `octo-org/octo-app` on
/// `main`, in environment `production`, through a reusable workflow of another repository.
fn github_claims(iss: &str) -> Value {
    times(json!({
        "iss": iss,
        "aud": "lanyard",
        "sub": "repo:octo-org/octo-app:environment:production",
        "jti": "8f2b6e0c-3f0a-4d7e-9a4e-2d3c1b0a9f8e",
        "actor": "octocat",
        "actor_id": "583231",
        "base_ref": "",
        "head_ref": "",
        "environment": "production",
        "event_name": "push",
        "job_workflow_ref": "octo-org/octo-automation/.github/workflows/deploy.yml@refs/heads/main",
        "job_workflow_sha": "1d8e3b9c5a7f2e4d6c8b0a9f1e3d5c7b9a2f4e6d",
        "ref": "refs/heads/main",
        "ref_protected": "true",
        "ref_type": "branch",
        "repository": "octo-org/octo-app",
        "repository_id": "74",
        "repository_owner": "octo-org",
        "repository_owner_id": "65",
        "repository_visibility": "private",
        "run_attempt": "1",
        "run_id": "5124723711",
        "run_number": "10",
        "runner_environment": "github-hosted",
        "sha": "c040cae0f0dc81641728557b80f09cfa23b83fe5",
        "workflow": "deploy",
        "workflow_ref": "octo-org/octo-app/.github/workflows/deploy.yml@refs/heads/main",
        "workflow_sha": "c040cae0f0dc81641728557b80f09cfa23b83fe5",
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_actions_tokens_are_granted_by_their_claims() {
    let issuer = OidcIssuer::start().await;
    let policy = format!(
        r#"
roles:
  deploy: {{backend: jwt, max_ttl_seconds: 300}}
rules:
  - name: octo-app-production
    match:
      issuer: "{iss}"
      claims:
        repository: octo-org/octo-app
        repository_owner: octo-org
        ref: refs/heads/main
        ref_type: branch
        ref_protected: "true"
        environment: production
        job_workflow_ref: 'octo-org/octo-automation/.github/workflows/deploy.yml@refs/heads/*'
        runner_environment: [github-hosted, self-hosted]
    roles: [deploy]
"#,
        iss = issuer.url()
    );
    let broker = broker_with(Some(&issuer), policy, String::new()).await;
    let good = github_claims(&issuer.url());
    let (status, body) = broker
        .post_credentials(Some(&issuer.token(Algorithm::RS256, good.clone())), "")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(roles(&body), ["deploy"]);
    assert_eq!(
        body["identity"],
        "repo:octo-org/octo-app:environment:production"
    );

    // Each of these is a job the rule must not serve.
    for (claim, value) in [
        ("repository", json!("someone/octo-app")),
        ("ref", json!("refs/pull/7/merge")),
        ("environment", json!("staging")),
        (
            "job_workflow_ref",
            json!("octo-org/octo-app/.github/workflows/evil.yml@refs/heads/main"),
        ),
        // Typed: a boolean `true` is not GitHub's string "true".
        ("ref_protected", json!(true)),
    ] {
        let mut c = good.clone();
        c[claim] = value.clone();
        let (status, body) = broker
            .post_credentials(Some(&issuer.token(Algorithm::ES256, c)), "")
            .await;
        assert_eq!(status, 403, "{claim}: {value}: {body}");
        assert_eq!(code(&body), "forbidden");
    }
    // A job without an environment lacks the claim altogether.
    let mut c = good;
    c.as_object_mut().expect("object").remove("environment");
    let (status, _) = broker
        .post_credentials(Some(&issuer.token(Algorithm::RS256, c)), "")
        .await;
    assert_eq!(status, 403);
    // The claims decide; they are not recorded.
    let lines = broker.audit_lines().join("\n");
    assert!(!lines.contains("octo-automation"), "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_ci_tokens_are_granted_by_their_typed_claims() {
    let issuer = OidcIssuer::start().await;
    let policy = format!(
        r#"
roles:
  deploy: {{backend: jwt, max_ttl_seconds: 300}}
rules:
  - name: platform-protected
    match:
      issuer: "{iss}"
      claims:
        project_path: 'acme/platform/*'
        ref_type: branch
        ref_protected: "true"
        environment_protected: "true"
        runner_id: [27, 31]
    roles: [deploy]
"#,
        iss = issuer.url()
    );
    let broker = broker_with(Some(&issuer), policy, String::new()).await;
    // A GitLab CI/CD ID token's claims for a job of acme/platform/api on protected `main`.
    let good = times(json!({
        "iss": issuer.url(),
        "aud": "lanyard",
        "sub": "project_path:acme/platform/api:ref_type:branch:ref:main",
        "jti": "2f3c4a5b-6d7e-4f80-9a1b-c2d3e4f5a6b7",
        "namespace_id": "72",
        "namespace_path": "acme/platform",
        "project_id": "20",
        "project_path": "acme/platform/api",
        "project_visibility": "internal",
        "user_id": "5",
        "user_login": "alice",
        "user_email": "alice@example.com",
        "user_identities": [{"provider": "ldapmain", "extern_uid": "cn=alice,ou=people,dc=acme"}],
        "pipeline_id": "574",
        "pipeline_source": "push",
        "job_id": "302",
        "ref": "main",
        "ref_type": "branch",
        "ref_path": "refs/heads/main",
        "ref_protected": "true",
        "groups_direct": ["acme/platform"],
        "environment": "production",
        "environment_protected": "true",
        "deployment_tier": "production",
        "environment_action": "start",
        "runner_id": 27,
        "runner_environment": "self-hosted",
        "sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
        "ci_config_ref_uri": "gitlab.example.com/acme/platform/api//.gitlab-ci.yml@refs/heads/main",
        "ci_config_sha": "714a629c0b401fdce83e847fc9589983fc6f46bc",
    }));
    let (status, body) = broker
        .post_credentials(Some(&issuer.token(Algorithm::ES256, good.clone())), "")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(roles(&body), ["deploy"]);
    for (claim, value) in [
        ("project_path", json!("acme/other/api")),
        ("ref_protected", json!("false")),
        ("ref_protected", json!(true)),
        // runner_id is a number: the string "27" is another type.
        ("runner_id", json!("27")),
        ("runner_id", json!(28)),
    ] {
        let mut c = good.clone();
        c[claim] = value.clone();
        let (status, body) = broker
            .post_credentials(Some(&issuer.token(Algorithm::EdDSA, c)), "")
            .await;
        assert_eq!(status, 403, "{claim}: {value}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_jwt_svids_are_granted_by_spiffe_id_and_gated_only_on_require_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::generate(dir.path());
    let ours = SpiffeTrustDomain::start_https("example.org", &pki).await;
    let partner = SpiffeTrustDomain::start_https("partner.example", &pki).await;
    let issuer = |td: &SpiffeTrustDomain| {
        format!(
            "  - issuer: spiffe://{d}\n    audiences: [lanyard]\n    spiffe_trust_domain: {d}\n    \
             jwks: {{url: \"{u}\"}}\n    ca_file: {ca}\n",
            d = td.trust_domain(),
            u = td.bundle_url(),
            ca = pki.ca_path().display(),
        )
    };
    let extra = format!("issuers:\n{}{}", issuer(&ours), issuer(&partner));
    let policy = r#"
roles:
  svc: {backend: jwt, max_ttl_seconds: 300}
  locked: {backend: jwt, max_ttl_seconds: 300}
rules:
  - name: shop-workloads
    match: {spiffe_id: 'spiffe://example.org/ns/shop/sa/*'}
    roles: [svc]
  - name: shop-needs-an-image
    match: {spiffe_id: 'spiffe://example.org/ns/shop/**'}
    roles: [locked]
    require_image: true
"#
    .to_owned();
    let broker = broker_with(None, policy, extra).await;
    let now = now_unix();
    let svid = ours.claims("/ns/shop/sa/api", json!("lanyard"), now, 300);

    // SPIRE's shape: no iss. Granted by the SPIFFE ID, not gated (no image, no require_image).
    let (status, body) = broker
        .post_credentials(
            Some(&ours.svid(SvidAlg::ES256, &svid)),
            r#"{"roles": ["svc"]}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(roles(&body), ["svc"]);
    assert_eq!(body["identity"], "spiffe://example.org/ns/shop/sa/api");

    // The rule that requires an image refuses it: a JWT-SVID names none.
    let (status, body) = broker
        .post_credentials(
            Some(&ours.svid(SvidAlg::PS256, &svid)),
            r#"{"roles": ["locked"]}"#,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("require_image"), "{body}");

    // The partner trust domain's key signing one of our SPIFFE IDs: refused (401), with
    // or without naming the partner as issuer.
    let (status, body) = broker
        .post_credentials(Some(&partner.svid(SvidAlg::ES256, &svid)), "")
        .await;
    assert_eq!((status, code(&body)), (401, "unauthenticated"), "{body}");
    let mut via_partner = svid.clone();
    via_partner["iss"] = json!("spiffe://partner.example");
    let (status, _) = broker
        .post_credentials(Some(&partner.svid(SvidAlg::ES256, &via_partner)), "")
        .await;
    assert_eq!(status, 401);
    // The partner's own workloads are authenticated, and no rule grants them anything.
    let theirs = partner.claims("/ns/shop/sa/api", json!("lanyard"), now, 300);
    let (status, body) = broker
        .post_credentials(
            Some(&partner.svid(SvidAlg::RS384, &theirs)),
            r#"{"roles": ["svc"]}"#,
        )
        .await;
    assert_eq!(status, 403, "{body}");
}

fn lanyard_broker(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lanyard-broker"))
        .env("LANYARD_LOG", "warn")
        .args(args)
        .output()
        .expect("run lanyard-broker");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn policy_check_warns_on_claim_types_and_explain_shows_the_claim_that_failed() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(&dir.path().join("tls"));
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("mkdir");
    std::fs::write(
        policies.join("ci.yaml"),
        r#"roles:
  deploy: {backend: jwt, max_ttl_seconds: 300}
rules:
  - name: platform-deploys
    match:
      issuer: https://gitlab.example.com
      claims:
        project_path: "acme/platform/*"
        ref_protected: true
        runner_id: 27
    roles: [deploy]
"#,
    )
    .expect("policy");
    let config = dir.path().join("broker.yaml");
    std::fs::write(
        &config,
        format!(
            "public_url: https://127.0.0.1:1\npolicies_dir: policies\nstore:\n  sqlite_path: s.db\n\
             audit:\n  sink: a.log\nlisten: 127.0.0.1:0\ntls:\n  cert_file: {}\n  key_file: {}\n\
             issuers:\n  - issuer: https://gitlab.example.com\n    audiences: [lanyard]\n    \
             claim_profile: gitlab\n",
            pki.cert_path().display(),
            pki.key_path().display()
        ),
    )
    .expect("config");
    let p = policies.to_str().expect("utf8");
    // Without the configuration, a self-managed GitLab's claims are unknown: no warning.
    let (code, out) = lanyard_broker(&["policy", "check", p]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warning"), "{out}");
    // With it, the boolean `ref_protected` is flagged (GitLab sends a string); the number
    // `runner_id` is right. Warnings do not fail the check.
    let (code, out) = lanyard_broker(&[
        "policy",
        "check",
        "--config",
        config.to_str().expect("utf8"),
        p,
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("ci.yaml:9: warning: rule \"platform-deploys\": claims.ref_protected wants true (boolean), but https://gitlab.example.com sends it as a string"),
        "{out}"
    );
    assert_eq!(out.matches("warning").count(), 1, "{out}");

    let (code, out) = lanyard_broker(&[
        "policy",
        "explain",
        "--dir",
        p,
        "--issuer",
        "https://gitlab.example.com",
        "--subject",
        "project_path:acme/platform/api:ref_type:branch:ref:main",
        "--claims",
        r#"{"project_path": "acme/platform/api", "ref_protected": "true", "runner_id": 27}"#,
        "--role",
        "deploy",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("claims.ref_protected: wanted true (boolean), got \"true\" (string); matched on issuer, claims.project_path, claims.runner_id"),
        "{out}"
    );
    let (code, out) = lanyard_broker(&[
        "policy",
        "explain",
        "--dir",
        p,
        "--spiffe-id",
        "spiffe://example.org/a",
        "--claims",
        "[1]",
        "--role",
        "deploy",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--claims: give a JSON object"), "{out}");
}
