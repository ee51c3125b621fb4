//! The `aws-sts` backend against a real STS endpoint: `moto_server` on loopback (installed by
//! `tests/peers/moto.sh`, run by `./test.sh`), behind a recording proxy that counts calls and
//! keeps their exact parameters. moto enforces nothing, so these tests check what lanyard
//! sends and enforces: scoping, tags, SourceIdentity, duration clamping, caching,
//! coalescing, and serving cached credentials through an outage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lanyard::clock::{Clock, parse_rfc3339, unix_seconds};
use lanyard::wire::{CredentialResponse, ErrorCode};
use lanyard_broker::broker::Authenticated;
use lanyard_broker::error::ApiError;
use lanyard_test_support::{
    InProcessBroker, MotoServer, OidcIssuer, TestBroker, TestBrokerOptions, k8s_pod,
};
use serde_json::{Value, json};

use lanyard_test_support::moto::{STS_POLICY as POLICY, STS_ROLE_ARN as ARN};

fn sts_config(moto: &MotoServer, extra: &str) -> String {
    format!("{}{extra}", moto.broker_backend_config())
}

fn require_aws_env() {
    assert!(
        std::env::var("AWS_ACCESS_KEY_ID").is_ok(),
        "AWS_ACCESS_KEY_ID is not set: the broker's own AWS credentials come from the standard \
         chain; run ./test.sh (tests/peers/moto.sh exports dummy keys moto accepts)"
    );
}

async fn harness(moto: &MotoServer, policy: &str) -> Result<InProcessBroker, String> {
    require_aws_env();
    InProcessBroker::start(policy, &sts_config(moto, "")).await
}

fn pod(name: &str) -> Authenticated {
    k8s_pod("shop", "api", name)
}

async fn issue(
    h: &InProcessBroker,
    who: &Authenticated,
    ttl: Option<u64>,
) -> Result<CredentialResponse, ApiError> {
    h.issue(who, ttl).await
}

fn access_key(r: &CredentialResponse) -> String {
    r.credentials[0].data["access_key_id"].expose().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_is_sent_exactly_and_its_credentials_work_at_sts() {
    let moto = MotoServer::start().await;
    let h = harness(&moto, POLICY).await.expect("broker");
    let resp = issue(&h, &pod("api-7d9f"), Some(1200))
        .await
        .expect("issued");
    let cred = &resp.credentials[0];
    assert_eq!(cred.kind, "aws-sts");
    assert_eq!(
        cred.data.keys().collect::<Vec<_>>(),
        ["access_key_id", "secret_access_key", "session_token"]
    );
    assert_eq!(cred.ttl_seconds, 1200);
    let expires = parse_rfc3339(&cred.expires_at).expect("rfc3339");
    assert_eq!(unix_seconds(expires), unix_seconds(h.clock.now()) + 1200);

    let calls = moto.calls_of("AssumeRole");
    assert_eq!(calls.len(), 1);
    let p = &calls[0].params;
    assert_eq!(p["RoleArn"], ARN);
    assert_eq!(p["RoleSessionName"], "lanyard-aws-read");
    assert_eq!(p["DurationSeconds"], "1200");
    assert_eq!(p["SourceIdentity"], "shop.api");
    let policy: Value = serde_json::from_str(&p["Policy"]).expect("policy is JSON");
    assert_eq!(
        policy,
        json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::data/shop/api/*"]}]})
    );
    let tags: BTreeMap<&str, &str> = (1..=10)
        .filter_map(|i| {
            Some((
                p.get(&format!("Tags.member.{i}.Key"))?.as_str(),
                p.get(&format!("Tags.member.{i}.Value"))?.as_str(),
            ))
        })
        .collect();
    assert_eq!(
        tags,
        BTreeMap::from([
            ("kubernetes-namespace", "shop"),
            ("kubernetes-service-account", "api")
        ]),
        "pod tags are off by default, so pods of one service account share a session"
    );
    assert!(!p.contains_key("ExternalId"));

    // The issued credentials are real session credentials at STS.
    let creds = aws_sdk_sts::config::Credentials::new(
        cred.data["access_key_id"].expose(),
        cred.data["secret_access_key"].expose(),
        Some(cred.data["session_token"].expose().to_owned()),
        None,
        "lanyard",
    );
    let sts = aws_sdk_sts::Client::new(&moto.sdk_config_with(creds));
    let me = sts
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity");
    let arn = me.arn().expect("arn");
    assert!(
        arn.ends_with(":assumed-role/app/lanyard-aws-read"),
        "caller is the assumed role session: {arn}"
    );

    // The audit record carries the STS session id, never the credential.
    let audit = h.audit_log();
    assert!(audit.contains("\"upstream_lease\""), "{audit}");
    for secret in cred.data.values() {
        assert!(!audit.contains(secret.expose()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_are_clamped_by_lanyard_not_by_sts() {
    let moto = MotoServer::start().await;
    let h = harness(&moto, POLICY).await.expect("broker");
    // Below STS's floor: 900 s is asked for, and the real lifetime is reported.
    let short = issue(&h, &pod("a"), Some(60)).await.expect("short");
    assert_eq!(short.credentials[0].ttl_seconds, 900);
    // Above the role's cap: the cap.
    let long = issue(&h, &pod("a"), Some(99_999)).await.expect("long");
    assert_eq!(long.credentials[0].ttl_seconds, 3600);
    assert!(long.credentials[0].ttl_clamped);
    let durations: Vec<String> = moto
        .calls_of("AssumeRole")
        .iter()
        .map(|c| c.params["DurationSeconds"].clone())
        .collect();
    assert_eq!(durations, ["900", "3600"]);

    // A role whose cap is below STS's minimum is refused at load, not silently lengthened.
    let low_cap = POLICY
        .replace("max_ttl_seconds: 3600", "max_ttl_seconds: 600")
        .replace("default_ttl_seconds: 900", "default_ttl_seconds: 300");
    let err = harness(&moto, &low_cap).await.expect_err("cap below 900");
    assert!(err.contains("below 900"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_pod_starts_make_one_assume_role_call() {
    let moto = MotoServer::start().await;
    let h = Arc::new(harness(&moto, POLICY).await.expect("broker"));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            access_key(
                &issue(&h, &pod(&format!("api-{i}")), None)
                    .await
                    .expect("issued"),
            )
        }));
    }
    let mut keys = std::collections::HashSet::new();
    for t in tasks {
        keys.insert(t.await.expect("join"));
    }
    assert_eq!(keys.len(), 1, "every pod got the same session");
    assert_eq!(moto.calls_of("AssumeRole").len(), 1);
    let m = h.broker.metrics();
    let shared = m.cache_hits.with_label_values(&["aws-sts"]).get()
        + m.coalesced_waiters.with_label_values(&["aws-sts"]).get();
    assert_eq!(shared, 999);
    assert_eq!(
        m.upstream_calls.with_label_values(&["aws-sts", "ok"]).get(),
        1
    );

    // Still inside the reuse window (half of 900 s): cached, with the remaining lifetime.
    h.clock.advance(Duration::from_secs(449));
    let cached = issue(&h, &pod("late"), None).await.expect("cached");
    assert_eq!(cached.credentials[0].ttl_seconds, 451);
    assert_eq!(moto.calls_of("AssumeRole").len(), 1);
    // Past the refresh threshold: exactly one more call.
    h.clock.advance(Duration::from_secs(1));
    let fresh = issue(&h, &pod("later"), None).await.expect("refreshed");
    // moto stamps expirations with the real time, which the manual clock has run ahead of,
    // so the new session's reported lifetime is moto's (shorter), never more than asked.
    assert!(fresh.credentials[0].ttl_seconds <= 900);
    assert_ne!(access_key(&fresh), access_key(&cached));
    assert_eq!(moto.calls_of("AssumeRole").len(), 2);
}

/// Three replicas sharing one PostgreSQL database, each applying a third of the upstream
/// limits (`backends.replicas: 3`): 1,000 concurrent requests for one role spread over them
/// make at most one AssumeRole call per replica (cache and coalescing are per replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_over_three_replicas_make_at_most_three_assume_role_calls() {
    use lanyard_broker::store::postgres::{PostgresOptions, PostgresStore};
    require_aws_env();
    let moto = MotoServer::start().await;
    let url = lanyard_test_support::Postgres::shared().create_database("sts_replicas");
    let config = sts_config(&moto, "").replace("backends:\n", "backends:\n  replicas: 3\n");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let store = PostgresStore::connect(&PostgresOptions::new(url.clone()))
            .await
            .expect("store");
        replicas.push(Arc::new(
            InProcessBroker::start_with_store(POLICY, &config, Arc::new(store))
                .await
                .expect("broker"),
        ));
    }
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let h = replicas[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            access_key(
                &issue(&h, &pod(&format!("api-{i}")), None)
                    .await
                    .expect("issued"),
            )
        }));
    }
    let mut keys = std::collections::HashSet::new();
    for t in tasks {
        keys.insert(t.await.expect("join"));
    }
    let calls = moto.calls_of("AssumeRole").len();
    assert!((1..=3).contains(&calls), "{calls} AssumeRole calls");
    assert_eq!(keys.len(), calls, "one session per upstream call");
    for h in &replicas {
        let m = h.broker.metrics();
        assert!(m.upstream_calls.with_label_values(&["aws-sts", "ok"]).get() <= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sts_outage_serves_cached_credentials_until_they_expire_then_503() {
    let mut moto = MotoServer::start().await;
    let h = harness(&moto, POLICY).await.expect("broker");
    let first = issue(&h, &pod("a"), None).await.expect("issued");
    h.clock.advance(Duration::from_secs(600)); // refresh due
    moto.stop();
    let during = issue(&h, &pod("b"), None).await.expect("served from cache");
    assert_eq!(access_key(&during), access_key(&first));
    assert_eq!(
        during.credentials[0].expires_at,
        first.credentials[0].expires_at
    );
    assert_eq!(during.credentials[0].ttl_seconds, 300);

    h.clock.advance(Duration::from_secs(300)); // the real expiry
    let err = issue(&h, &pod("c"), None)
        .await
        .expect_err("nothing valid left");
    assert_eq!(err.code(), ErrorCode::UpstreamUnavailable);
    assert_eq!(err.code().http_status(), 503);
    let body = err.body(Some("req_test"));
    assert!(body.error.retryable);
    assert!(
        body.error.message.contains("aws-sts"),
        "{}",
        body.error.message
    );
    let m = h.broker.metrics();
    assert!(
        m.upstream_calls
            .with_label_values(&["aws-sts", "error"])
            .get()
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_a_kubernetes_pod_gets_aws_credentials() {
    require_aws_env();
    let moto = MotoServer::start().await;
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start_with(
        Some(&issuer),
        TestBrokerOptions {
            policies: vec![("aws.yaml".into(), POLICY.into())],
            extra_config: sts_config(&moto, ""),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let token = issuer.k8s_token("shop", "api", "lanyard", 600);
    let (status, body) = broker.post_credentials(Some(&token), "{}").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credentials"][0]["kind"], "aws-sts");
    assert!(body["credentials"][0]["data"]["session_token"].is_string());
    assert_eq!(moto.calls_of("AssumeRole").len(), 1);
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains("lanyard_upstream_calls_total{backend=\"aws-sts\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
}

/// `lanyard-broker lease revoke --sts-role` (issue 16): STS cannot revoke one session, so the
/// command prints the IAM policy that denies the role's sessions issued before now, and the
/// broker drops its cached sessions of that role at once — the next request makes a new
/// AssumeRole instead of handing out a session the policy rejects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_revoke_sts_role_drops_cached_sessions_and_prints_the_deny_policy() {
    require_aws_env();
    let moto = MotoServer::start().await;
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start_with(
        Some(&issuer),
        TestBrokerOptions {
            policies: vec![
                ("aws.yaml".into(), POLICY.into()),
                (
                    "app.yaml".into(),
                    lanyard_test_support::moto::JWT_APP_POLICY.into(),
                ),
            ],
            extra_config: sts_config(&moto, ""),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let token = issuer.k8s_token("shop", "api", "lanyard", 600);
    let key_of = |body: &Value| -> String {
        body["credentials"]
            .as_array()
            .expect("credentials")
            .iter()
            .find(|c| c["kind"] == "aws-sts")
            .expect("an aws-sts credential")["data"]["access_key_id"]
            .as_str()
            .expect("key")
            .to_owned()
    };
    let (status, first) = broker.post_credentials(Some(&token), "{}").await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = broker.post_credentials(Some(&token), "{}").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(key_of(&first), key_of(&again), "served from the cache");
    assert_eq!(moto.calls_of("AssumeRole").len(), 1);
    let before = lanyard::clock::SystemClock.now();

    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lanyard-broker"));
        cmd.args(["lease", "revoke"])
            .args(args)
            .args(["--broker", &broker.url, "--ca"])
            .arg(broker.pki.ca_path())
            .arg("--admin-token-file")
            .arg(broker.dir().join("admin-token"))
            .env("LANYARD_LOG", "warn");
        cmd
    };
    let mut cmd = cli(&["--sts-role", "aws-read"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("dropped 1 cached session(s) of {ARN}")),
        "{stderr}"
    );
    let policy: Value = serde_json::from_slice(&out.stdout).expect("the policy is JSON");
    let statement = &policy["Statement"][0];
    assert_eq!(policy["Version"], "2012-10-17");
    assert_eq!(statement["Effect"], "Deny");
    assert_eq!(statement["Action"], json!(["*"]));
    assert_eq!(statement["Resource"], json!(["*"]));
    let cutoff = statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
        .as_str()
        .expect("a cut-off");
    let cutoff = parse_rfc3339(cutoff).expect("RFC 3339");
    // After every session issued so far, by less than two seconds (the next whole second).
    assert!(cutoff > before, "{cutoff:?} {before:?}");
    assert!(
        unix_seconds(cutoff) <= unix_seconds(lanyard::clock::SystemClock.now()) + 2,
        "{cutoff:?}"
    );

    // The next request makes a new AssumeRole: a session the policy does not reject.
    let (status, after) = broker.post_credentials(Some(&token), "{}").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(moto.calls_of("AssumeRole").len(), 2);
    assert_ne!(key_of(&after), key_of(&first));

    // Audited, with the role and backend.
    let records = broker.audit_records();
    let revoke = records
        .iter()
        .find(|r| r["event"] == "lease_revoke")
        .expect("a lease_revoke record");
    assert_eq!(revoke["role"], "aws-read");
    assert_eq!(revoke["backend"], "aws-sts");
    assert!(
        revoke["reason"].as_str().expect("reason").contains(ARN),
        "{revoke}"
    );

    // Not an aws-sts role, or no such role: refused, nothing dropped.
    for (role, expect) in [("app", "not aws-sts"), ("nope", "no role `nope`")] {
        let mut cmd = cli(&["--sts-role", role]);
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
            .await
            .expect("join");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{role}: {stderr}");
        assert!(stderr.contains(expect), "{role}: {stderr}");
        assert!(out.stdout.is_empty(), "{role}");
    }
    let (status, last) = broker.post_credentials(Some(&token), "{}").await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(
        key_of(&last),
        key_of(&after),
        "the new session stays cached"
    );
    assert_eq!(moto.calls_of("AssumeRole").len(), 2);
}
