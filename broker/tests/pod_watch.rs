//! Pod deletion → revoke (issue 16) end to end: a broker with `revocation.revoke_on_pod_deletion`
//! watching the pods of the API-server emulator of the test support crate (HTTPS, bearer token
//! checked, the documented list and watch wire format: `PodList` pages, one JSON event per line,
//! `BOOKMARK`s, `410 Gone` for a compacted resourceVersion). A pod deleted while watched has its
//! leases revoked within seconds; a watch resumes from the last bookmark after a disconnect,
//! without a relist; a deletion missed while the API server was down is found by the relist
//! that follows the 410; other pods' leases stay.

use std::time::{Duration, Instant};

use lanyard_test_support::{
    Algorithm, KubeApi, KubeFailure, OidcIssuer, TestBroker, TestBrokerOptions, TestPki, TestPod,
    now_unix,
};
use serde_json::{Value, json};

const API_TOKEN: &str = "kube-api-token-of-the-broker-0123456789";

struct Site {
    issuer: OidcIssuer,
    api: KubeApi,
    broker: TestBroker,
    _dir: tempfile::TempDir,
}

impl Site {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = TestPki::generate(&dir.path().join("kube-pki"));
        let api = KubeApi::start(&pki, API_TOKEN).await;
        api.set_bookmark_interval(Some(Duration::from_millis(200)));
        let token_file = dir.path().join("kube-token");
        std::fs::write(&token_file, API_TOKEN).expect("token file");
        let issuer = OidcIssuer::start().await;
        // Pods whose images are not pulled yet are unknown workloads, allowed here: the image
        // gate is not what this test is about.
        let broker = TestBroker::start_with(
            Some(&issuer),
            TestBrokerOptions {
                extra_config: format!(
                    "gate:\n  unknown_workload: allow\n  \
                     pod_lookup:\n    api_server: \"{}\"\n    ca_file: {}\n    token_file: {}\n    \
                     timeout_ms: 1500\n    sweep_interval_seconds: 3600\n\
                     revocation:\n  revoke_on_pod_deletion: true\n  pod_watch_timeout_seconds: 2\n  \
                     pod_watch_clock_skew_seconds: 0\n",
                    api.url(),
                    pki.ca_path().display(),
                    token_file.display()
                ),
                ..TestBrokerOptions::default()
            },
        )
        .await;
        Self {
            issuer,
            api,
            broker,
            _dir: dir,
        }
    }

    /// Pod `name` of `shop/api` with `uid`, its image still being pulled.
    fn pod(&self, name: &str, uid: &str) {
        self.api.set_pod(&TestPod::new("shop", name, uid).container(
            "app",
            "registry.test/app:1",
            None,
        ));
    }

    /// Credentials for pod `name`/`uid`: (lease id, JWT).
    async fn issue(&self, name: &str, uid: &str) -> (String, String) {
        let mut claims = self
            .issuer
            .k8s_claims("shop", "api", "lanyard", now_unix(), 600);
        claims["kubernetes.io"]["pod"] = json!({"name": name, "uid": uid});
        let token = self.issuer.token(Algorithm::RS256, claims);
        let (status, body) = self.broker.post_credentials(Some(&token), "{}").await;
        assert_eq!(status, 200, "{body}");
        let c = &body["credentials"][0];
        (
            c["lease_id"].as_str().expect("lease").to_owned(),
            c["data"]["token"].as_str().expect("JWT").to_owned(),
        )
    }

    /// Whether the broker's introspection says the JWT is active (admin caller).
    async fn active(&self, jwt: &str) -> bool {
        let resp = self
            .broker
            .http()
            .post(format!("{}/v1/introspect", self.broker.url))
            .bearer_auth(&self.broker.admin_token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={jwt}"))
            .send()
            .await
            .expect("introspect");
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = resp.json().await.expect("JSON");
        v["active"] == true
    }

    async fn wait_revoked(&self, jwt: &str, what: &str) -> Duration {
        let start = Instant::now();
        while self.active(jwt).await {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: not revoked within 20 s (lists {}, watches {:?})",
                self.api.lists(),
                self.api.watches()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        start.elapsed()
    }

    /// The `lease_revoke` audit record of `lease_id`.
    fn revoke_record(&self, lease_id: &str) -> Value {
        self.broker
            .audit_records()
            .into_iter()
            .find(|r| r["event"] == "lease_revoke" && r["lease_id"] == lease_id)
            .unwrap_or_else(|| panic!("no lease_revoke record for {lease_id}"))
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: not within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pods_have_their_leases_revoked_through_disconnects_and_a_410_relist() {
    let site = Site::start().await;
    let (uid_a, uid_b, uid_c) = (
        "6a1f0c52-0000-4000-8000-00000000000a",
        "6a1f0c52-0000-4000-8000-00000000000b",
        "6a1f0c52-0000-4000-8000-00000000000c",
    );
    site.pod("api-a", uid_a);
    site.pod("api-b", uid_b);
    site.pod("api-c", uid_c);
    let (lease_a, jwt_a) = site.issue("api-a", uid_a).await;
    let (lease_b, jwt_b) = site.issue("api-b", uid_b).await;
    let (lease_c, jwt_c) = site.issue("api-c", uid_c).await;
    assert!(site.active(&jwt_a).await && site.active(&jwt_b).await);

    // One list, then a watch from its resourceVersion.
    wait_until("the first watch", || !site.api.watches().is_empty()).await;
    assert_eq!(site.api.lists(), 1);

    // A deletion while watched: revoked within seconds, audited with the pod.
    assert!(site.api.delete_pod("shop", "api-a"));
    let took = site.wait_revoked(&jwt_a, "pod a").await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    let rec = site.revoke_record(&lease_a);
    let reason = rec["reason"].as_str().expect("reason");
    assert!(reason.contains(&format!("pod {uid_a} deleted")), "{reason}");
    assert_eq!(rec["backend"], "jwt");

    // Bookmarks: the resourceVersion moves on without pod events; the watcher follows it,
    // so after a compaction up to it and a dropped connection it resumes without a relist.
    let bumped = site.api.bump_resource_version().to_string();
    wait_until("a watch from the bookmark's resourceVersion", || {
        site.api.watches().contains(&bumped)
    })
    .await;
    site.api.compact();
    let watches = site.api.watches().len();
    site.api.disconnect_watches();
    wait_until("a new watch after the disconnect", || {
        site.api.watches().len() > watches
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(site.api.lists(), 1, "resumed from the bookmark: no relist");

    // Disconnected: the API server is down, pod b is deleted meanwhile, the history is
    // compacted past where the watcher was. When it comes back, the watch gets 410 Gone, the
    // broker lists again and finds pod b gone.
    site.api.set_failure(KubeFailure::Unavailable);
    site.api.disconnect_watches();
    assert!(site.api.delete_pod("shop", "api-b"));
    site.api.bump_resource_version();
    site.api.compact();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        site.active(&jwt_b).await,
        "not seen while the API server is down"
    );
    site.api.set_failure(KubeFailure::None);
    site.wait_revoked(&jwt_b, "pod b, by the relist").await;
    assert_eq!(site.api.lists(), 2, "one relist after the 410");
    let rec = site.revoke_record(&lease_b);
    let reason = rec["reason"].as_str().expect("reason");
    assert!(
        reason.contains(&format!("pod {uid_b} found deleted by a relist")),
        "{reason}"
    );

    // Pod c is alive: its lease stays; the revoked JWTs are on the revocation list.
    assert!(site.active(&jwt_c).await);
    let list: Value = site
        .broker
        .http()
        .get(format!("{}/v1/jwks/revoked", site.broker.url))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    let jtis: Vec<&str> = list["revoked"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["jti"].as_str())
        .collect();
    assert!(
        jtis.contains(&lease_a.as_str()) && jtis.contains(&lease_b.as_str()),
        "{list}"
    );
    assert!(!jtis.contains(&lease_c.as_str()));
    let metrics = site.broker.metrics().await;
    assert!(
        metrics.contains("lanyard_pod_deletion_revocations_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lanyard_pod_watch_lists_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("lanyard_pod_watch_up 1"), "{metrics}");
    // The API token never reaches the audit log.
    let audit = std::fs::read_to_string(&site.broker.audit_file).unwrap_or_default();
    assert!(!audit.contains(API_TOKEN));
}

/// Without RBAC on pods the watch fails (logged, retried, `lanyard_pod_watch_up` 0) and
/// revokes nothing; issuance goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_without_rbac_fails_visibly_and_revokes_nothing() {
    let site = Site::start().await;
    let uid = "6a1f0c52-0000-4000-8000-0000000000f1";
    site.pod("api-f", uid);
    let (_, jwt) = site.issue("api-f", uid).await;
    let gauge = |value: &'static str| {
        let broker = &site.broker;
        async move {
            let start = Instant::now();
            loop {
                let m = broker.metrics().await;
                if m.contains(&format!("lanyard_pod_watch_up {value}")) {
                    return;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "{m}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    gauge("1").await;
    // RBAC taken away (`list`/`watch` on pods): the running watch ends, the next is refused.
    site.api.set_failure(KubeFailure::Forbidden);
    site.api.disconnect_watches();
    gauge("0").await;
    assert!(site.api.delete_pod("shop", "api-f"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(site.active(&jwt).await, "nothing revoked without a watch");
}
