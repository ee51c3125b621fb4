//! The real broker over real TLS on 127.0.0.1:0, against a real OIDC issuer on loopback.

use std::collections::HashSet;

use lanyard_test_support::{Algorithm, OidcIssuer, TestBroker, TestBrokerOptions, now_unix};
use serde_json::{Value, json};

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_token_gets_a_verifiable_jwt_and_an_audit_record() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let sa_token = issuer.k8s_token("shop", "api", "lanyard", 600);

    let (status, body) = broker.post_credentials(Some(&sa_token), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["identity"], "system:serviceaccount:shop:api");
    let cred = &body["credentials"][0];
    assert_eq!(cred["role"], "app");
    assert_eq!(cred["kind"], "jwt");
    assert_eq!(cred["ttl_seconds"], 300, "role default TTL");
    assert_eq!(cred["ttl_clamped"], false);
    let token = cred["data"]["token"].as_str().expect("token").to_owned();
    let lease_id = cred["lease_id"].as_str().expect("lease").to_owned();

    // The issued JWT verifies with the published JWKS, independently of the broker.
    let jwks: jsonwebtoken::jwk::JwkSet = broker
        .http()
        .get(format!("{}/v1/jwks", broker.url))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("jwks json");
    let header = jsonwebtoken::decode_header(&token).expect("header");
    let jwk = jwks
        .find(header.kid.as_deref().expect("kid"))
        .expect("kid published");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&["app"]);
    validation.set_issuer(&[broker.url.as_str()]);
    let data = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key"),
        &validation,
    )
    .expect("issued token verifies");
    assert_eq!(data.claims["sub"], "system:serviceaccount:shop:api");
    assert_eq!(data.claims["scope"], "app:read");
    assert_eq!(data.claims["jti"], lease_id.as_str());
    let exp = data.claims["exp"].as_u64().expect("exp");
    let iat = data.claims["iat"].as_u64().expect("iat");
    assert_eq!(exp - iat, 300);

    // Discovery points at the JWKS.
    let disc: Value = broker
        .http()
        .get(format!("{}/.well-known/openid-configuration", broker.url))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(disc["issuer"], broker.url.as_str());
    assert_eq!(disc["jwks_uri"], format!("{}/v1/jwks", broker.url));

    // One issue record, with a fingerprint and never the credential.
    let records = broker.audit_records();
    let issue: Vec<_> = records.iter().filter(|r| r["event"] == "issue").collect();
    assert_eq!(issue.len(), 1, "{records:?}");
    assert_eq!(issue[0]["lease_id"], lease_id.as_str());
    assert_eq!(issue[0]["role"], "app");
    assert_eq!(issue[0]["identity"], "system:serviceaccount:shop:api");
    assert!(
        issue[0]["fingerprint"]
            .as_str()
            .expect("fingerprint")
            .starts_with("hmac-sha256:")
    );
    let log = std::fs::read_to_string(&broker.audit_file).expect("audit");
    assert!(
        !log.contains(&token),
        "credential leaked into the audit log"
    );
    assert!(
        !log.contains(&sa_token),
        "identity token leaked into the audit log"
    );

    // Metrics count it.
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains(r#"lanyard_issuances_total{backend="jwt",role="app"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains(&token));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identity_tokens_get_an_opaque_401_and_are_audited() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let now = now_unix();
    let good = issuer.k8s_claims("shop", "api", "lanyard", now, 600);
    let mut expired = good.clone();
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut future = good.clone();
    future["nbf"] = json!(now + 3600);
    future["iat"] = json!(now + 3600);
    future["exp"] = json!(now + 7200);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!(["somebody-else"]);
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example.com");
    let valid = issuer.token(Algorithm::RS256, good.clone());
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    parts[1] = "!!!not-base64!!!".to_owned();
    let malformed = parts.join(".");

    let cases = [
        ("alg none", issuer.forge_alg_none(good.clone())),
        (
            "HS256 with the RSA public key",
            issuer.forge_hs256_with_public_key(good.clone()),
        ),
        ("expired", issuer.token(Algorithm::RS256, expired)),
        ("not yet valid", issuer.token(Algorithm::ES256, future)),
        ("wrong aud", issuer.token(Algorithm::RS256, wrong_aud)),
        ("wrong iss", issuer.token(Algorithm::RS256, wrong_iss)),
        ("unknown kid", issuer.sign_with_unknown_kid(good.clone())),
        (
            "untrusted key",
            issuer.sign_with_untrusted_key(good.clone()),
        ),
        ("malformed base64", malformed),
        ("garbage", "not a token at all".to_owned()),
    ];
    let mut messages = HashSet::new();
    for (name, token) in &cases {
        let (status, body) = broker.post_credentials(Some(token), "").await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(code(&body), "unauthenticated", "{name}");
        messages.insert(body["error"]["message"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(
        messages.len(),
        1,
        "401 bodies must not reveal why: {messages:?}"
    );

    // A bearer above limits.max_token_bytes is refused before any parsing...
    let big = format!(
        "eyJ{}.eyJ{}.sig",
        "A".repeat(50 * 1024),
        "A".repeat(50 * 1024)
    );
    let (status, body) = broker.post_credentials(Some(&big), "").await;
    assert_eq!((status, code(&body)), (401, "unauthenticated"));
    // ...and a 1 MB one is refused by the HTTP layer (431) or the connection is closed:
    // either way nothing is parsed or issued.
    let huge = format!("eyJ{}", "A".repeat(1024 * 1024));
    let sent = broker
        .http()
        .post(format!("{}/v1/credentials", broker.url))
        .bearer_auth(&huge)
        .send()
        .await;
    if let Ok(resp) = sent {
        let status = resp.status().as_u16();
        assert!((400..500).contains(&status), "1 MB token: {status}");
    }

    let records = broker.audit_records();
    assert!(
        records.iter().all(|r| r["event"] != "issue"),
        "nothing issued"
    );
    let denials = records.iter().filter(|r| r["event"] == "deny").count();
    assert!(denials >= cases.len(), "every refusal audited: {denials}");
    broker.stop().await;
}

/// A broker whose bootstrap tokens are strictly single use: no re-redemption grace window.
async fn strict_bootstrap_broker() -> TestBroker {
    TestBroker::start_with(
        None,
        TestBrokerOptions {
            extra_config: "bootstrap:\n  redeem_grace_seconds: 0\n".into(),
            ..TestBrokerOptions::default()
        },
    )
    .await
}

/// With no grace window, the 99 requests that waited on the one that redeemed the token are
/// refused as reuse. (With one, they share its session: `tests/bootstrap.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bootstrap_token_redeems_exactly_once_under_100_concurrent_requests() {
    let broker = strict_bootstrap_broker().await;
    let token = broker.mint(&["boot"], 300).await;
    let client = broker.http();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let client = client.clone();
        let url = format!("{}/v1/credentials", broker.url);
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    let mut unauthorized = 0;
    for t in tasks {
        match t.await.expect("task") {
            200 => ok += 1,
            401 => unauthorized += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, unauthorized), (1, 99));
    let records = broker.audit_records();
    assert_eq!(
        records
            .iter()
            .filter(|r| r["event"] == "token_redeem")
            .count(),
        1
    );
    let reused = records
        .iter()
        .filter(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("token_reused"))
        })
        .count();
    // Failed authentications from one source are recorded in full up to
    // `audit.auth_failures.records_per_window` (10); the rest are counted, and summed in a
    // summary record when the window ends (docs/SECURITY-MODEL.md, invariant 19).
    assert_eq!(reused, 10);
    let suppressed = broker
        .metrics()
        .await
        .lines()
        .find_map(|l| {
            l.strip_prefix("lanyard_audit_records_suppressed_total ")?
                .parse::<u64>()
                .ok()
        })
        .expect("suppressed metric");
    assert_eq!(reused as u64 + suppressed, 99);
    assert!(
        !std::fs::read_to_string(&broker.audit_file)
            .expect("audit")
            .contains(&token)
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_session_allows_refresh_without_the_spent_token() {
    let broker = strict_bootstrap_broker().await;
    let token = broker.mint(&["boot"], 300).await;
    let (status, first) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["credentials"][0]["role"], "boot");
    let session = first["session"]["token"]
        .as_str()
        .expect("session")
        .to_owned();
    let (status, _) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 401, "the bootstrap token is spent");
    let (status, second) = broker.post_credentials(Some(&session), "").await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["identity"], first["identity"]);
    assert!(second["session"]["token"].is_string(), "session renewed");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_roles_are_refused_and_ttl_above_the_cap_is_clamped_and_audited() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let sa = issuer.k8s_token("shop", "api", "lanyard", 600);

    let (status, body) = broker
        .post_credentials(Some(&sa), r#"{"roles":["no-such-role"]}"#)
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(code(&body), "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no-such-role")
    );

    let (status, body) = broker
        .post_credentials(Some(&sa), r#"{"roles":["boot"]}"#)
        .await;
    assert_eq!(
        status, 403,
        "a role policy does not grant to this identity: {body}"
    );

    let (status, body) = broker
        .post_credentials(Some(&sa), r#"{"roles":["app"],"ttl_seconds":100000}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credentials"][0]["ttl_seconds"], 600);
    assert_eq!(body["credentials"][0]["ttl_clamped"], true);

    let records = broker.audit_records();
    let clamped: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "issue" && r["ttl_clamped"] == true)
        .collect();
    assert_eq!(clamped.len(), 1);
    assert_eq!(clamped[0]["ttl_seconds"], 600);
    let denied_roles: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "deny")
        .filter_map(|r| r["role"].as_str())
        .collect();
    assert!(denied_roles.contains(&"no-such-role") && denied_roles.contains(&"boot"));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_roles_are_bounded_so_no_workload_can_break_the_audit_log() {
    let issuer = OidcIssuer::start().await;
    let mut broker = TestBroker::start(Some(&issuer)).await;
    let sa = issuer.k8s_token("shop", "api", "lanyard", 600);
    let message = |body: &Value| body["error"]["message"].as_str().unwrap_or("").to_owned();

    // One 40 000-character role from a valid token (a 40 KiB body, under the body limit):
    // refused before policy sees it, without the value echoed back.
    let huge = format!("{}TAIL", "a".repeat(40_000));
    let (status, body) = broker
        .post_credentials(Some(&sa), &json!({ "roles": [huge] }).to_string())
        .await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");
    let msg = message(&body);
    assert!(
        msg.contains("roles[0]") && msg.contains("40004 bytes"),
        "{msg}"
    );
    assert!(msg.len() < 500 && !msg.contains("TAIL"), "{msg}");

    // A name against the policy's name rules is refused the same way, wherever it stands.
    for bad in ["Admin", "app role", "app\n", "-app", &"r".repeat(64)] {
        let (status, body) = broker
            .post_credentials(Some(&sa), &json!({ "roles": ["app", bad] }).to_string())
            .await;
        assert_eq!(
            (status, code(&body)),
            (400, "bad_request"),
            "{bad:?}: {body}"
        );
        assert!(message(&body).contains("roles[1]"), "{body}");
    }
    // Too many roles.
    let many: Vec<String> = (0..65).map(|i| format!("r{i}")).collect();
    let (status, body) = broker
        .post_credentials(Some(&sa), &json!({ "roles": many }).to_string())
        .await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");

    // The longest valid name is still only a policy decision (403), audited with its name.
    let longest = "z".repeat(63);
    let (status, body) = broker
        .post_credentials(Some(&sa), &json!({ "roles": [longest] }).to_string())
        .await;
    assert_eq!(status, 403, "{body}");
    let records = broker.audit_records();
    let denied: Vec<_> = records.iter().filter(|r| r["event"] == "deny").collect();
    assert_eq!(
        denied.len(),
        1,
        "only the policy denial is audited: {records:?}"
    );
    assert_eq!(denied[0]["role"], longest.as_str());

    // The log verifies, every line within the reader's limit, the last one being the denial.
    let verify = |path: &std::path::Path| {
        let file = std::io::BufReader::new(std::fs::File::open(path).expect("audit file"));
        lanyard_broker::audit::verify(file, None).expect("the audit log verifies")
    };
    assert!(
        broker
            .audit_lines()
            .iter()
            .all(|l| l.len() <= lanyard_broker::audit::MAX_LINE_BYTES)
    );
    let before = verify(&broker.audit_file);
    assert_eq!(before.records, records.len() as u64);

    // The broker restarts on that log and goes on chaining.
    broker.pause().await;
    broker.resume().await;
    let (status, body) = broker.post_credentials(Some(&sa), "").await;
    assert_eq!(status, 200, "{body}");
    let after = verify(&broker.audit_file);
    assert!(after.records > before.records, "{before:?} {after:?}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_get_clear_errors() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let sa = issuer.k8s_token("shop", "api", "lanyard", 600);

    let big = format!(r#"{{"roles":["{}"]}}"#, "a".repeat(200 * 1024));
    let (status, body) = broker.post_credentials(Some(&sa), &big).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(code(&body), "payload_too_large");

    let (status, body) = broker
        .post_credentials(Some(&sa), r#"{"rolez":["app"]}"#)
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("rolez"),
        "{body}"
    );

    let (status, body) = broker.post_credentials(Some(&sa), "{not json").await;
    assert_eq!((status, code(&body)), (400, "bad_request"));

    let (status, body) = broker
        .post_credentials(Some(&sa), r#"{"ttl_seconds":0}"#)
        .await;
    assert_eq!((status, code(&body)), (400, "bad_request"));

    let records = broker.audit_records();
    assert!(records.iter().all(|r| r["event"] != "issue"));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_admin_token() {
    let broker = TestBroker::start(None).await;
    let resp = broker
        .http()
        .post(format!("{}/v1/admin/tokens", broker.url))
        .bearer_auth("wrong")
        .json(&json!({"roles": ["boot"], "ttl_seconds": 60}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);

    let resp = broker
        .http()
        .post(format!("{}/v1/admin/tokens", broker.url))
        .bearer_auth(&broker.admin_token)
        .json(&json!({"roles": ["nope"], "ttl_seconds": 60}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400, "unknown role refused at mint");

    let resp = broker
        .http()
        .post(format!("{}/v1/admin/explain", broker.url))
        .bearer_auth(&broker.admin_token)
        .json(
            &json!({"identity": {"issuer": "https://x", "subject": "system:serviceaccount:dev:api",
                       "namespace": "dev", "service_account": "api"}, "role": "app"}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let explanation: Value = resp.json().await.expect("json");
    assert_eq!(explanation["allowed"], false);
    assert!(
        explanation.to_string().contains("shop-api"),
        "{explanation}"
    );

    // Revoke an unredeemed token: it can no longer be redeemed.
    let resp = broker
        .http()
        .post(format!("{}/v1/admin/tokens", broker.url))
        .bearer_auth(&broker.admin_token)
        .json(&json!({"roles": ["boot"], "ttl_seconds": 60}))
        .send()
        .await
        .expect("request");
    let minted: Value = resp.json().await.expect("json");
    let resp = broker
        .http()
        .delete(format!(
            "{}/v1/admin/tokens/{}",
            broker.url,
            minted["token_id"].as_str().expect("id")
        ))
        .bearer_auth(&broker.admin_token)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 204);
    let (status, _) = broker.post_credentials(minted["token"].as_str(), "").await;
    assert_eq!(status, 401);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_authentication_failures_are_audited_and_counted() {
    let broker = TestBroker::start(None).await;
    let wrong = "wrong-admin-token-PLANTED";
    let http = broker.http();
    let mint = format!("{}/v1/admin/tokens", broker.url);
    let body = json!({"roles": ["boot"], "ttl_seconds": 60});
    let attempts = [
        http.post(&mint).bearer_auth(wrong).json(&body),
        http.post(&mint).json(&body),
        http.delete(format!("{}/v1/admin/tokens/bt_1", broker.url))
            .bearer_auth(wrong),
        http.post(format!("{}/v1/admin/reload", broker.url)),
    ];
    for attempt in attempts {
        let resp = attempt.send().await.expect("request");
        assert_eq!(resp.status().as_u16(), 401);
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"]["message"], "authentication failed", "{body}");
    }
    // The admin itself is neither audited as a failure nor counted.
    let resp = http
        .post(&mint)
        .bearer_auth(&broker.admin_token)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 201);

    let reasons: Vec<String> = broker
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "deny")
        .map(|r| {
            assert!(
                r["request_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("req_")),
                "{r}"
            );
            r["reason"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "admin authentication failed (POST /v1/admin/tokens): admin_wrong_token",
            "admin authentication failed (POST /v1/admin/tokens): admin_missing_credential",
            "admin authentication failed (DELETE /v1/admin/tokens/{token_id}): admin_wrong_token",
            "admin authentication failed (POST /v1/admin/reload): admin_missing_credential",
        ]
    );
    let log = std::fs::read_to_string(&broker.audit_file).expect("audit");
    assert!(
        !log.contains("PLANTED"),
        "the presented token is never recorded"
    );
    let metrics = broker.metrics().await;
    for (reason, n) in [("admin_wrong_token", 2), ("admin_missing_credential", 2)] {
        let line = format!(r#"lanyard_denials_total{{reason="{reason}",role="-"}} {n}"#);
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    assert!(!metrics.contains("PLANTED"));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_can_revoke_its_own_lease_and_nobody_elses() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let sa = issuer.k8s_token("shop", "api", "lanyard", 600);
    let other = issuer.k8s_token("shop", "worker", "lanyard", 600);
    let (_, body) = broker.post_credentials(Some(&sa), "").await;
    let lease = body["credentials"][0]["lease_id"]
        .as_str()
        .expect("lease")
        .to_owned();
    let revoke = |bearer: String| {
        let client = broker.http();
        let url = format!("{}/v1/leases/{lease}/revoke", broker.url);
        async move {
            client
                .post(url)
                .bearer_auth(bearer)
                .send()
                .await
                .expect("revoke")
        }
    };
    assert_eq!(revoke(other).await.status().as_u16(), 404);
    let resp = revoke(sa.clone()).await;
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["already_revoked"], false);
    assert_eq!(v["upstream_revoked"], false);
    let records = broker.audit_records();
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "lease_revoke" && r["lease_id"] == lease.as_str())
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_change_keeps_the_last_good_set() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start_with(Some(&issuer), TestBrokerOptions::default()).await;
    let sa = issuer.k8s_token("shop", "api", "lanyard", 600);
    broker.write_policy(
        "policy.yaml",
        "roles:\n  app:\n    backend: jwt\n    max_ttl_secnds: 60\n",
    );
    let resp = broker
        .http()
        .post(format!("{}/v1/admin/reload", broker.url))
        .bearer_auth(&broker.admin_token)
        .send()
        .await
        .expect("reload");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json");
    let msg = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("policy.yaml:4"),
        "file:line of the typo: {msg}"
    );
    assert!(msg.contains("max_ttl_secnds"), "{msg}");

    let (status, _) = broker.post_credentials(Some(&sa), "").await;
    assert_eq!(status, 200, "last good policy still serves");
    let records = broker.audit_records();
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "policy_reload" && r["decision"] == "deny")
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let broker = TestBroker::start(None).await;
    let http = broker.http();
    let healthz = http
        .get(format!("{}/healthz", broker.url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(healthz.status().as_u16(), 200);
    let readyz: Value = http
        .get(format!("{}/readyz", broker.url))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(readyz["ready"], true, "{readyz}");
    let missing = http
        .get(format!("{}/nope", broker.url))
        .send()
        .await
        .expect("404");
    assert_eq!(missing.status().as_u16(), 404);
    broker.stop().await;
}
