//! A bootstrap token is spent only with what it was presented for: every way the request can
//! fail leaves it usable, concurrent presentations make one upstream call and share one
//! session, a response lost after the commit is answered by re-redemption of the same session
//! within the grace window, and the token is spent (401) after it. The real broker over TLS on
//! loopback, STS as `moto_server` behind the recording proxy (`tests/peers/moto.sh`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard::wire::{CredentialRequest, ErrorCode, MintTokenRequest};
use lanyard_broker::error::ApiError;
use lanyard_broker::store::memory::MemoryStore;
use lanyard_broker::store::sqlite::SqliteStore;
use lanyard_broker::store::{
    AdmissionRecord, BootstrapTokenRecord, ChainHead, ExemptionRecord, LeaseRecord, RedeemedToken,
    ReserveOutcome, SessionRevocation, SigningKeyRecord, Store, StoreError, VerdictRecord,
};
use lanyard_test_support::moto::STS_ROLE_ARN;
use lanyard_test_support::{InProcessBroker, MotoServer, TestBroker, TestBrokerOptions};
use serde_json::Value;

/// `aws-boot` (aws-sts) and `boot` (jwt) for bootstrap tokens minted for them; `app` (jwt)
/// for no bootstrap token.
fn policy() -> String {
    format!(
        r#"
roles:
  aws-boot:
    backend: aws-sts
    max_ttl_seconds: 3600
    default_ttl_seconds: 900
    settings: {{role_arn: "{STS_ROLE_ARN}"}}
  boot:
    backend: jwt
    max_ttl_seconds: 120
    default_ttl_seconds: 60
  app:
    backend: jwt
    max_ttl_seconds: 120
    settings: {{audience: app}}
rules:
  - name: bootstrap-aws
    match: {{bootstrap_role: aws-boot}}
    roles: [aws-boot]
  - name: bootstrap-boot
    match: {{bootstrap_role: boot}}
    roles: [boot]
  - name: shop-api
    match: {{namespace: shop, service_account: api}}
    roles: [app]
"#
    )
}

const GRACE_SECONDS: u64 = 3;

fn require_aws_env() {
    assert!(
        std::env::var("AWS_ACCESS_KEY_ID").is_ok(),
        "AWS_ACCESS_KEY_ID is not set: run ./test.sh (tests/peers/moto.sh exports dummy keys)"
    );
}

/// A broker with [`policy`], STS at `moto`, and a grace window of [`GRACE_SECONDS`].
async fn broker(moto: &MotoServer) -> TestBroker {
    require_aws_env();
    TestBroker::start_with(
        None,
        TestBrokerOptions {
            policies: vec![("policy.yaml".into(), policy())],
            extra_config: format!(
                "{}bootstrap:\n  redeem_grace_seconds: {GRACE_SECONDS}\n",
                moto.broker_backend_config()
            ),
            ..TestBrokerOptions::default()
        },
    )
    .await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

/// The claims of a session token (a JWT the test trusts: it came from the broker).
fn session_claims(body: &Value) -> Value {
    let token = body["session"]["token"].as_str().expect("a session token");
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

/// `(reason, decision)` of each `token_redeem` record.
fn redemptions(broker: &TestBroker) -> Vec<(String, String)> {
    broker
        .audit_records()
        .iter()
        .filter(|r| r["event"] == "token_redeem")
        .map(|r| {
            (
                r["reason"].as_str().unwrap_or_default().to_owned(),
                r["decision"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn redeemed_records(broker: &TestBroker) -> usize {
    redemptions(broker)
        .iter()
        .filter(|(reason, _)| reason == "redeemed")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_parallel_redemptions_make_one_assume_role_and_share_one_session() {
    let moto = MotoServer::start().await;
    let broker = broker(&moto).await;
    let token = broker.mint(&["aws-boot"], 300).await;
    // A slow STS: the first request holds the reservation while the 99 others arrive.
    moto.stall_next("AssumeRole", 1, Duration::from_millis(300));
    let client = broker.http();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let req = client
                .post(format!("{}/v1/credentials", broker.url))
                .bearer_auth(&token);
            tokio::spawn(async move {
                let resp = req.send().await.expect("request");
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.expect("json"))
            })
        })
        .collect();
    let mut sessions = std::collections::BTreeSet::new();
    let mut keys = std::collections::BTreeSet::new();
    for t in tasks {
        let (status, body) = t.await.expect("task");
        assert_eq!(status, 200, "{body}");
        let claims = session_claims(&body);
        sessions.insert((
            claims["sub"].to_string(),
            claims["lanyard_session"]["started_at"].to_string(),
        ));
        keys.insert(
            body["credentials"][0]["data"]["access_key_id"]
                .as_str()
                .expect("access key")
                .to_owned(),
        );
    }
    assert_eq!(sessions.len(), 1, "one session: {sessions:?}");
    assert_eq!(keys.len(), 1, "one STS session: {keys:?}");
    assert_eq!(moto.calls_of("AssumeRole").len(), 1, "one upstream call");
    let reasons = redemptions(&broker);
    assert_eq!(redeemed_records(&broker), 1, "{reasons:?}");
    assert_eq!(
        reasons
            .iter()
            .filter(|(r, d)| r.starts_with("re-redeemed within the grace window") && d == "allow")
            .count(),
        99,
        "{reasons:?}"
    );
    assert!(
        !std::fs::read_to_string(&broker.audit_file)
            .expect("audit")
            .contains(&token)
    );
    broker.stop().await;
}

/// STS unavailable (503, retryable): the token stays unused, and the same request succeeds
/// once STS is back; the release is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sts_outage_leaves_the_token_unused() {
    let moto = MotoServer::start().await;
    let broker = broker(&moto).await;
    let token = broker.mint(&["aws-boot"], 300).await;
    moto.unavailable_next("AssumeRole", 2);
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(code(&body), "upstream_unavailable");
    assert_eq!(body["error"]["retryable"], true);

    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(moto.calls_of("AssumeRole").len(), 3);
    assert_eq!(
        redemptions(&broker),
        [
            (
                "released, the token is unused: upstream_unavailable".to_owned(),
                "deny".to_owned()
            ),
            ("redeemed".to_owned(), "allow".to_owned())
        ]
    );
    broker.stop().await;
}

/// STS refuses (502, not retryable): the token stays unused; once the refusal is fixed, it
/// works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sts_refusal_leaves_the_token_unused() {
    let moto = MotoServer::start().await;
    let broker = broker(&moto).await;
    let token = broker.mint(&["aws-boot"], 300).await;
    moto.refuse_next("AssumeRole", 1);
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(code(&body), "upstream_refused");
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(redeemed_records(&broker), 1);
    broker.stop().await;
}

/// Policy refuses what the request asked for (403): the token stays unused for what it was
/// minted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_refusal_leaves_the_token_unused() {
    let moto = MotoServer::start().await;
    let broker = broker(&moto).await;
    let token = broker.mint(&["boot"], 300).await;
    let (status, body) = broker
        .post_credentials(Some(&token), r#"{"roles":["app"]}"#)
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["credentials"][0]["role"], "boot");
    assert_eq!(
        redemptions(&broker),
        [
            (
                "released, the token is unused: forbidden".to_owned(),
                "deny".to_owned()
            ),
            ("redeemed".to_owned(), "allow".to_owned())
        ]
    );
    broker.stop().await;
}

/// The client sends its request and goes away while STS is slow. A disconnect never cancels
/// a request half-way (see `server.request_timeout_ms` in docs/CONFIG.md): the broker finishes
/// it, commits the redemption the client never saw, and the client's retry — which waits for
/// that request instead of calling STS again — gets the same session within the grace window.
/// The token is not burned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_still_commits_and_the_retry_gets_its_session() {
    let moto = MotoServer::start().await;
    let broker = broker(&moto).await;
    let token = broker.mint(&["aws-boot"], 300).await;
    moto.stall_next("AssumeRole", 1, Duration::from_secs(3));
    let abandoned = tokio::time::timeout(
        Duration::from_millis(500),
        broker.post_credentials(Some(&token), ""),
    )
    .await;
    assert!(abandoned.is_err(), "the client gave up: {abandoned:?}");
    // The connection is closed; the broker still finishes the request and commits.
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(redeemed_records(&broker), 1);
    let records = redemptions(&broker);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0], ("redeemed".to_owned(), "allow".to_owned()));
    assert!(
        records[1]
            .0
            .starts_with("re-redeemed within the grace window")
            && records[1].1 == "allow",
        "the retry is the same session: {records:?}"
    );
    assert_eq!(
        moto.calls_of("AssumeRole").len(),
        1,
        "the retry made no STS call of its own"
    );
    broker.stop().await;
}

/// The SDK's first fetch times out while STS is slow — which used to burn the token, and
/// every later fetch got 401: its retry redeems the token, and later fetches use the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_whose_first_fetch_timed_out_redeems_the_token_on_its_retry() {
    let moto = MotoServer::start().await;
    let broker = broker(&moto).await;
    let token = broker.mint(&["aws-boot"], 300).await;
    moto.stall_next("AssumeRole", 1, Duration::from_secs(5));
    let client = lanyard::Client::builder()
        .broker_url(broker.url.clone())
        .ca_file(broker.pki.ca_path())
        .token_source(lanyard::TokenSource::Static(lanyard::Secret::new(token)))
        .timeout(Duration::from_millis(1_500))
        .build()
        .expect("client");
    let err = client.fetch().await.expect_err("timed out");
    assert!(err.is_retryable(), "{err}");
    // The broker finishes the abandoned request; retries (as the sidecar's backoff would make
    // them) get in once it has committed, as a re-redemption within the grace window.
    let mut first = None;
    for _ in 0..20 {
        match client.fetch().await {
            Ok(r) => {
                first = Some(r);
                break;
            }
            Err(e) => {
                assert!(e.is_retryable(), "never a 401: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let first = first.expect("redeemed on a retry");
    assert!(first.session.is_some());
    let refreshed = client.fetch().await.expect("a refresh with the session");
    assert_eq!(refreshed.identity, first.identity);
    assert_eq!(redeemed_records(&broker), 1);
    broker.stop().await;
}

/// The response is lost after the commit (the client never saw its session): within the
/// grace window the same token is the same session again; after it, the token is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_response_is_the_same_session_within_the_grace_window_then_401() {
    let moto = MotoServer::start().await;
    let broker = broker(&moto).await;
    let token = broker.mint(&["boot"], 300).await;
    let (status, lost) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "{lost}");
    // The client never saw `lost` and presents the token again.
    let (status, again) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "{again}");
    let (first, second) = (session_claims(&lost), session_claims(&again));
    assert_eq!(second["sub"], first["sub"]);
    assert_eq!(second["lanyard_session"], first["lanyard_session"]);
    let reasons = redemptions(&broker);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[1].0.starts_with("re-redeemed"), "{reasons:?}");
    // Its session works.
    let session = again["session"]["token"].as_str().expect("session");
    let (status, body) = broker.post_credentials(Some(session), "").await;
    assert_eq!(status, 200, "{body}");

    tokio::time::sleep(Duration::from_secs(GRACE_SECONDS + 1)).await;
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 401, "spent after the grace window: {body}");
    assert!(
        broker
            .audit_records()
            .iter()
            .any(|r| r["reason"] == "authentication failed: token_reused"),
    );
    broker.stop().await;
}

/// A broker that crashed holding a token's reservation (another handle on the store file
/// reserves it and never commits): the token is busy (503, retryable) until the hold lapses,
/// then usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_brokers_reservation_lapses() {
    let moto = MotoServer::start().await;
    let broker = broker(&moto).await;
    let token = broker.mint(&["boot"], 300).await;
    let crashed = SqliteStore::open(&broker.store_file).expect("the broker's store");
    let now = lanyard::clock::Clock::now(&lanyard::clock::SystemClock);
    let hash = lanyard_broker::authn::bootstrap::hash_token(&token);
    assert!(matches!(
        crashed
            .reserve_bootstrap_token(&hash, "crashed", now, now + Duration::from_secs(7))
            .await
            .expect("reserve"),
        ReserveOutcome::Reserved(_)
    ));
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(code(&body), "not_ready");
    assert_eq!(body["error"]["retryable"], true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "the hold lapsed: {body}");
    assert!(
        !crashed
            .commit_bootstrap_token(&hash, "crashed", now + Duration::from_secs(8))
            .await
            .expect("commit"),
        "the crashed holder can no longer commit"
    );
    broker.stop().await;
}

/// The revoke route refuses a bootstrap bearer (401, audited) without redeeming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revoke_route_refuses_a_bootstrap_token_without_spending_it() {
    let moto = MotoServer::start().await;
    let broker = broker(&moto).await;
    let token = broker.mint(&["boot"], 300).await;
    let resp = broker
        .http()
        .post(format!("{}/v1/leases/ls_0/revoke", broker.url))
        .bearer_auth(&token)
        .send()
        .await
        .expect("revoke");
    assert_eq!(resp.status().as_u16(), 401);
    assert!(
        broker
            .audit_records()
            .iter()
            .any(|r| r["reason"] == "authentication failed: bootstrap_not_accepted")
    );
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(redemptions(&broker), [("redeemed".into(), "allow".into())]);
    // The session it bought revokes its own lease.
    let lease = body["credentials"][0]["lease_id"].as_str().expect("lease");
    let resp = broker
        .http()
        .post(format!("{}/v1/leases/{lease}/revoke", broker.url))
        .bearer_auth(body["session"]["token"].as_str().expect("session"))
        .send()
        .await
        .expect("revoke");
    assert_eq!(resp.status().as_u16(), 200);
    broker.stop().await;
}

/// A memory store whose commits fail while `fail_commit` is set.
#[derive(Debug, Default)]
struct CommitFails {
    inner: MemoryStore,
    fail_commit: AtomicBool,
}

#[async_trait::async_trait]
impl Store for CommitFails {
    async fn insert_bootstrap_token(&self, r: &BootstrapTokenRecord) -> Result<(), StoreError> {
        self.inner.insert_bootstrap_token(r).await
    }
    async fn reserve_bootstrap_token(
        &self,
        hash: &str,
        reservation: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<ReserveOutcome, StoreError> {
        self.inner
            .reserve_bootstrap_token(hash, reservation, now, until)
            .await
    }
    async fn commit_bootstrap_token(
        &self,
        hash: &str,
        reservation: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        if self.fail_commit.load(Ordering::SeqCst) {
            return Err(StoreError::Backend("disk I/O error".into()));
        }
        self.inner
            .commit_bootstrap_token(hash, reservation, now)
            .await
    }
    async fn release_bootstrap_token(
        &self,
        hash: &str,
        reservation: &str,
    ) -> Result<bool, StoreError> {
        self.inner.release_bootstrap_token(hash, reservation).await
    }
    async fn revoke_bootstrap_token(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.revoke_bootstrap_token(id).await
    }
    async fn redeemed_bootstrap_token(
        &self,
        id: &str,
    ) -> Result<Option<RedeemedToken>, StoreError> {
        self.inner.redeemed_bootstrap_token(id).await
    }
    async fn revoke_session(&self, r: &SessionRevocation) -> Result<bool, StoreError> {
        self.inner.revoke_session(r).await
    }
    async fn session_revocations(
        &self,
        now: SystemTime,
    ) -> Result<Vec<SessionRevocation>, StoreError> {
        self.inner.session_revocations(now).await
    }
    async fn prune_session_revocations(&self, now: SystemTime) -> Result<usize, StoreError> {
        self.inner.prune_session_revocations(now).await
    }
    async fn insert_lease(&self, l: &LeaseRecord) -> Result<(), StoreError> {
        self.inner.insert_lease(l).await
    }
    async fn get_lease(&self, id: &str) -> Result<Option<LeaseRecord>, StoreError> {
        self.inner.get_lease(id).await
    }
    async fn mark_lease_revoked(&self, id: &str, now: SystemTime) -> Result<bool, StoreError> {
        self.inner.mark_lease_revoked(id, now).await
    }
    async fn expired_leases(
        &self,
        backend: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError> {
        self.inner.expired_leases(backend, now, limit).await
    }
    async fn renewable_leases(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError> {
        self.inner.renewable_leases(now, limit).await
    }
    async fn running_leases_of_pod(
        &self,
        pod_uid: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError> {
        self.inner.running_leases_of_pod(pod_uid, now, limit).await
    }
    async fn pods_with_running_leases(
        &self,
        after: Option<&str>,
        issued_before: SystemTime,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.inner
            .pods_with_running_leases(after, issued_before, now, limit)
            .await
    }
    async fn revoked_running_leases(
        &self,
        backend: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<(String, SystemTime)>, StoreError> {
        self.inner.revoked_running_leases(backend, now, limit).await
    }
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.inner.signing_keys().await
    }
    async fn insert_signing_key(&self, k: &SigningKeyRecord) -> Result<(), StoreError> {
        self.inner.insert_signing_key(k).await
    }
    async fn delete_signing_key(&self, kid: &str) -> Result<(), StoreError> {
        self.inner.delete_signing_key(kid).await
    }
    async fn audit_head(&self) -> Result<Option<ChainHead>, StoreError> {
        self.inner.audit_head().await
    }
    async fn set_audit_head(&self, h: &ChainHead) -> Result<(), StoreError> {
        self.inner.set_audit_head(h).await
    }
    async fn local_secret(&self, name: &str, len: usize) -> Result<lanyard::Secret, StoreError> {
        self.inner.local_secret(name, len).await
    }
    async fn put_verdict(&self, r: &VerdictRecord) -> Result<(), StoreError> {
        self.inner.put_verdict(r).await
    }
    async fn verdict(&self, d: &str, r: &str) -> Result<Option<VerdictRecord>, StoreError> {
        self.inner.verdict(d, r).await
    }
    async fn previous_verdict(
        &self,
        d: &str,
        r: &str,
    ) -> Result<Option<VerdictRecord>, StoreError> {
        self.inner.previous_verdict(d, r).await
    }
    async fn digests_without_verdict(
        &self,
        r: &str,
        limit: usize,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        self.inner.digests_without_verdict(r, limit).await
    }
    async fn put_exemption(&self, r: &ExemptionRecord) -> Result<(), StoreError> {
        self.inner.put_exemption(r).await
    }
    async fn exemption(&self, d: &str) -> Result<Option<ExemptionRecord>, StoreError> {
        self.inner.exemption(d).await
    }
    async fn put_admission_record(&self, r: &AdmissionRecord) -> Result<(), StoreError> {
        self.inner.put_admission_record(r).await
    }
    async fn admission_record(&self, uid: &str) -> Result<Option<AdmissionRecord>, StoreError> {
        self.inner.admission_record(uid).await
    }
    async fn delete_admission_record(&self, uid: &str) -> Result<bool, StoreError> {
        self.inner.delete_admission_record(uid).await
    }
    async fn admission_records_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AdmissionRecord>, StoreError> {
        self.inner.admission_records_page(after, limit).await
    }
    async fn prune_admission_records(&self, now: SystemTime) -> Result<usize, StoreError> {
        self.inner.prune_admission_records(now).await
    }
}

/// The store fails as the redemption commits (500): nothing is handed out, the reservation is
/// released, and the token works once the store does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_error_at_commit_leaves_the_token_unused() {
    let store = Arc::new(CommitFails::default());
    let policy = "roles:\n  boot: {backend: jwt, max_ttl_seconds: 120}\nrules:\n  - name: boot\n    match: {bootstrap_role: boot}\n    roles: [boot]\n";
    let b = InProcessBroker::start_with_store(policy, "", store.clone())
        .await
        .expect("broker");
    let minted = b
        .broker
        .mint_token(
            &MintTokenRequest {
                roles: vec!["boot".into()],
                ttl_seconds: Some(300),
                image: None,
            },
            "req_mint",
        )
        .await
        .expect("mint");
    let token = minted.token.expose().to_owned();
    let request = CredentialRequest::default();

    store.fail_commit.store(true, Ordering::SeqCst);
    let auth = b
        .broker
        .authenticate(Some(&token), "req_1")
        .await
        .expect("reserved");
    let err: ApiError = b
        .broker
        .issue(&auth, &request, "req_1")
        .await
        .expect_err("the commit fails");
    assert_eq!(err.code(), ErrorCode::Internal);
    drop(auth);

    store.fail_commit.store(false, Ordering::SeqCst);
    let auth = b
        .broker
        .authenticate(Some(&token), "req_2")
        .await
        .expect("the token is unused");
    let resp = b
        .broker
        .issue(&auth, &request, "req_2")
        .await
        .expect("issued");
    assert!(resp.session.is_some());
    let log = b.audit_log();
    assert!(
        log.contains("released, the token is unused: internal"),
        "{log}"
    );
    assert_eq!(log.matches("\"reason\":\"redeemed\"").count(), 1, "{log}");
}
