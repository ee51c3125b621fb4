//! Trust source 3 end to end: a pod token's images read from the Kubernetes API
//! (`gate.pod_lookup`) — against the API-server emulator of the test support crate (HTTPS,
//! documented `v1.Pod` / `v1.Status` bodies, bearer token checked), the real test images in
//! the real registry (`tests/peers/images.sh`) and Kubernetes-shaped tokens of the test OIDC
//! issuer. A pod running a clean image (either `imageID` form) gets credentials, a dirty one
//! 403 with an audit record; a pod whose images are not pulled yet is an unknown workload; a
//! pod recreated under the same name or deleted is gone (refused, and its admission record
//! swept); the API down or refusing the broker's token is a retryable 503 that deletes
//! nothing. The parse is unit-tested in `gate::pods`.

use std::time::{Duration, Instant, SystemTime};

use lanyard_broker::store::sqlite::SqliteStore;
use lanyard_broker::store::{AdmissionRecord, Store};
use lanyard_scan::ScanOptions;
use lanyard_test_support::{
    Algorithm, KubeApi, KubeFailure, OidcIssuer, TestBroker, TestBrokerOptions, TestPki, TestPod,
    now_unix,
};
use serde_json::{Value, json};

const API_TOKEN: &str = "kube-api-token-of-the-broker-0123456789";

fn registry() -> String {
    match std::env::var("LANYARD_TEST_REGISTRY") {
        Ok(r) if !r.is_empty() => r,
        _ => panic!(
            "LANYARD_TEST_REGISTRY is not set: run ./test.sh, or `source tests/peers/images.sh` before `cargo test`"
        ),
    }
}

async fn digest_of(reference: &str) -> String {
    let opts = ScanOptions {
        insecure_loopback_registry: true,
        ..ScanOptions::default()
    };
    lanyard_scan::resolve_digest(reference, &opts)
        .await
        .expect("resolve")
}

/// The clean and the dirty test image, as `repo@sha256:…`.
async fn images() -> (String, String) {
    let reg = registry();
    let clean = format!("{reg}/lanyard/multistage-clean");
    let dirty = format!("{reg}/lanyard/env-secret");
    let cd = digest_of(&format!("{clean}:1")).await;
    let dd = digest_of(&format!("{dirty}:1")).await;
    (format!("{clean}@{cd}"), format!("{dirty}@{dd}"))
}

/// The issuer, the emulator and a broker looking pods up there.
struct Site {
    issuer: OidcIssuer,
    api: KubeApi,
    broker: TestBroker,
    _dir: tempfile::TempDir,
}

impl Site {
    async fn start() -> Self {
        Self::start_sweeping_every(3600).await
    }

    async fn start_sweeping_every(sweep_interval_seconds: u64) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let pki = TestPki::generate(&dir.path().join("kube-pki"));
        let api = KubeApi::start(&pki, API_TOKEN).await;
        let token_file = dir.path().join("kube-token");
        std::fs::write(&token_file, API_TOKEN).expect("token file");
        let issuer = OidcIssuer::start().await;
        let broker = TestBroker::start_with(
            Some(&issuer),
            TestBrokerOptions {
                extra_config: format!(
                    "gate:\n  insecure_loopback_registries: true\n  scan_deadline_seconds: 20\n  \
                     pod_lookup:\n    api_server: \"{}\"\n    ca_file: {}\n    token_file: {}\n    \
                     timeout_ms: 1500\n    sweep_interval_seconds: {sweep_interval_seconds}\n    sweep_batch: 2\n",
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

    /// A projected service-account token of `shop/api` bound to pod `name` with `uid`.
    fn token(&self, name: &str, uid: &str) -> String {
        let mut claims = self
            .issuer
            .k8s_claims("shop", "api", "lanyard", now_unix(), 600);
        claims["kubernetes.io"]["pod"] = json!({"name": name, "uid": uid});
        self.issuer.token(Algorithm::RS256, claims)
    }

    async fn ask(&self, name: &str, uid: &str) -> (u16, Value) {
        self.broker
            .post_credentials(Some(&self.token(name, uid)), "{}")
            .await
    }

    fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.broker.store_file).expect("open the broker's store")
    }

    /// The last audit record of `event` for pod tokens.
    fn last(&self, event: &str) -> Value {
        self.broker
            .audit_records()
            .into_iter()
            .rev()
            .find(|r| r["event"] == event)
            .unwrap_or_else(|| panic!("no {event} record"))
    }

    fn no_token_anywhere(&self) {
        let audit = std::fs::read_to_string(&self.broker.audit_file).unwrap_or_default();
        assert!(
            !audit.contains(API_TOKEN),
            "the API token is in the audit log"
        );
    }
}

fn uid() -> String {
    let h = format!("{:032x}", fastrand::u128(..));
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or("").to_owned()
}

fn record(uid: &str, name: &str, images: &[&str]) -> AdmissionRecord {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_unix());
    AdmissionRecord {
        pod_uid: uid.into(),
        namespace: "shop".into(),
        pod_name: name.into(),
        images: images.iter().map(|s| (*s).to_owned()).collect(),
        pinned: true,
        admitted_at: now,
        expires_at: now + Duration::from_secs(7 * 24 * 3600),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_running_clean_images_gets_credentials_in_either_image_id_form_and_a_dirty_one_403() {
    let (clean, dirty) = images().await;
    let site = Site::start().await;
    // containerd's form for the app, the Docker-era form for the native sidecar.
    let (u1, u2) = (uid(), uid());
    site.api.set_pod(
        &TestPod::new("shop", "api-7d9c8b6f5-aaaaa", &u1)
            .container("app", "shop/api:1", Some(&clean))
            .sidecar(
                "lanyard",
                "lanyard/sidecar:1",
                Some(&format!("docker-pullable://{clean}")),
            ),
    );
    let (status, body) = site.ask("api-7d9c8b6f5-aaaaa", &u1).await;
    assert_eq!(status, 200, "{body}");
    let issued = site.last("issue");
    assert_eq!(issued["gate"], "allow:clean", "{issued}");
    assert_eq!(issued["gate_source"], "pod_status", "{issued}");
    assert!(
        issued["image"]
            .as_str()
            .is_some_and(|i| i.contains("multistage-clean@sha256:")),
        "{issued}"
    );

    site.api.set_pod(
        &TestPod::new("shop", "api-7d9c8b6f5-bbbbb", &u2)
            .container(
                "app",
                "shop/api:2",
                Some(&format!("docker-pullable://{dirty}")),
            )
            .sidecar("lanyard", "lanyard/sidecar:1", Some(&clean)),
    );
    let (status, body) = site.ask("api-7d9c8b6f5-bbbbb", &u2).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "image_refused", "{body}");
    let m = message(&body);
    assert!(
        m.contains("env-secret@sha256:") && m.contains("config Env AWS_SECRET_ACCESS_KEY"),
        "{m}"
    );
    let denial = site.last("deny");
    assert_eq!(denial["gate"], "deny:dirty", "{denial}");
    assert_eq!(denial["gate_source"], "pod_status", "{denial}");
    assert!(site.api.requests() >= 2);
    site.no_token_anywhere();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_app_image_is_not_pulled_yet_is_an_unknown_workload_until_it_is() {
    let (clean, _) = images().await;
    let site = Site::start().await;
    let u = uid();
    // A native sidecar's first issuance: it runs, the app image is still being pulled.
    let pod = TestPod::new("shop", "api-7d9c8b6f5-ccccc", &u)
        .container("app", "shop/api:1", None)
        .sidecar("lanyard", "lanyard/sidecar:1", Some(&clean));
    site.api.set_pod(&pod);
    let (status, body) = site.ask("api-7d9c8b6f5-ccccc", &u).await;
    assert_eq!(status, 403, "{body}");
    let m = message(&body);
    assert!(
        m.contains("no trusted source") && m.contains("container(s) app have no imageID"),
        "{m}"
    );
    assert_eq!(site.last("deny")["gate"], "deny:unknown_workload");
    // Pulled: the refresh gets credentials.
    let pulled = TestPod::new("shop", "api-7d9c8b6f5-ccccc", &u)
        .container("app", "shop/api:1", Some(&clean))
        .sidecar("lanyard", "lanyard/sidecar:1", Some(&clean));
    site.api.set_pod(&pulled);
    let (status, body) = site.ask("api-7d9c8b6f5-ccccc", &u).await;
    assert_eq!(status, 200, "{body}");
    // An ephemeral container added by `kubectl debug` counts too, once it has an image.
    site.api
        .set_pod(&pulled.clone().ephemeral("debugger", "busybox", None));
    let (status, _) = site.ask("api-7d9c8b6f5-ccccc", &u).await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_recreated_under_the_same_name_or_deleted_is_gone_and_its_admission_record_swept() {
    let (clean, _) = images().await;
    let site = Site::start().await;
    let store = site.store();
    let (old, new, kept, deleted) = (uid(), uid(), uid(), uid());
    // The token's pod was recreated: same name, another uid.
    site.api
        .set_pod(&TestPod::new("shop", "api-0", &new).container("app", "shop/api:1", Some(&clean)));
    site.api
        .set_pod(&TestPod::new("shop", "api-1", &kept).container(
            "app",
            "shop/api:1",
            Some(&clean),
        ));
    site.api
        .set_pod(&TestPod::new("shop", "api-2", &deleted).container(
            "app",
            "shop/api:1",
            Some(&clean),
        ));
    let (status, body) = site.ask("api-0", &old).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("recreated"), "{body}");
    let denial = site.last("deny");
    assert_eq!(denial["gate"], "deny:pod_gone", "{denial}");
    assert_eq!(denial["gate_source"], "pod_status", "{denial}");

    assert!(site.api.delete_pod("shop", "api-2"));
    let (status, body) = site.ask("api-2", &deleted).await;
    assert_eq!(status, 403, "{body}");
    assert!(message(&body).contains("no longer exists"), "{body}");

    for (u, name) in [
        (&old, "api-0"),
        (&kept, "api-1"),
        (&deleted, "api-2"),
        (&uid(), ""),
    ] {
        store
            .put_admission_record(&record(u, name, &[&clean]))
            .await
            .expect("put");
    }
    // Two records per sweep (sweep_batch: 2), from where the last one stopped.
    let gate = site.broker.broker.gate();
    let mut deleted_total = 0;
    for _ in 0..3 {
        let r = gate.sweep_admission_records().await.expect("sweep");
        assert_eq!(r.error, None);
        deleted_total += r.deleted;
    }
    assert_eq!(
        deleted_total, 2,
        "the recreated and the deleted pod's records"
    );
    assert!(store.admission_record(&old).await.expect("read").is_none());
    assert!(
        store
            .admission_record(&deleted)
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        store.admission_record(&kept).await.expect("read").is_some(),
        "a running pod's record stays"
    );
    assert_eq!(
        store
            .admission_records_page(None, 10)
            .await
            .expect("page")
            .len(),
        2,
        "a record without a pod name waits for its retention"
    );
    let metrics = site.broker.metrics().await;
    assert!(
        metrics.contains("lanyard_gate_pod_lookups_total{purpose=\"sweep\",result=\"gone\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_down_or_hanging_is_a_retryable_503_and_the_sweep_deletes_nothing() {
    let (clean, _) = images().await;
    let site = Site::start().await;
    let store = site.store();
    let u = uid();
    site.api
        .set_pod(&TestPod::new("shop", "api-3", &u).container("app", "shop/api:1", Some(&clean)));
    store
        .put_admission_record(&record(&uid(), "api-gone", &[&clean]))
        .await
        .expect("put");
    for failure in [KubeFailure::InternalError, KubeFailure::Unavailable] {
        site.api.set_failure(failure);
        let (status, body) = site.ask("api-3", &u).await;
        assert_eq!(status, 503, "{failure:?}: {body}");
        assert_eq!(body["error"]["code"], "scan_pending", "{body}");
        assert_eq!(body["error"]["retryable"], true, "{body}");
        let m = message(&body);
        assert!(m.contains("Kubernetes API") && m.contains("retry"), "{m}");
        let r = site
            .broker
            .broker
            .gate()
            .sweep_admission_records()
            .await
            .expect("sweep");
        assert_eq!(r.deleted, 0);
        assert!(r.error.is_some());
    }
    assert_eq!(site.last("deny")["gate"], "deny:pod_lookup_failed");
    site.api.set_failure(KubeFailure::Hang);
    let started = Instant::now();
    let (status, body) = site.ask("api-3", &u).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        message(&body).contains("did not answer within 1500 ms"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        store
            .admission_records_page(None, 10)
            .await
            .expect("page")
            .len(),
        1,
        "nothing deleted while the API cannot answer"
    );
    site.api.set_failure(KubeFailure::None);
    let (status, body) = site.ask("api-3", &u).await;
    assert_eq!(status, 200, "{body}");
    let r = site
        .broker
        .broker
        .gate()
        .sweep_admission_records()
        .await
        .expect("sweep");
    assert_eq!((r.deleted, r.error), (1, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_or_rbac_the_api_server_refuses_is_a_clear_error_naming_the_fix() {
    let (clean, _) = images().await;
    let site = Site::start().await;
    let u = uid();
    site.api
        .set_pod(&TestPod::new("shop", "api-4", &u).container("app", "shop/api:1", Some(&clean)));
    site.api.set_token("another-token");
    let (status, body) = site.ask("api-4", &u).await;
    assert_eq!(status, 503, "{body}");
    let m = message(&body);
    assert!(
        m.contains("401") && m.contains("credentials") && m.contains("gate.pod_lookup"),
        "{m}"
    );
    assert!(!m.contains(API_TOKEN));
    // The token is right, RBAC is missing: the message names the permission.
    site.api.set_token(API_TOKEN);
    site.api.set_failure(KubeFailure::Forbidden);
    let (status, body) = site.ask("api-4", &u).await;
    assert_eq!(status, 503, "{body}");
    let m = message(&body);
    assert!(m.contains("403") && m.contains("`get` on `pods`"), "{m}");
    site.api.set_failure(KubeFailure::None);
    let (status, body) = site.ask("api-4", &u).await;
    assert_eq!(status, 200, "{body}");
    site.no_token_anywhere();
}

/// The emulator's answers are real `v1.Pod` / `v1.Status` documents (as `k8s-openapi`
/// reads them), so the tests above hold for a real API server.
#[test]
fn the_emulators_pods_are_v1_pods() {
    let pod = TestPod::new("shop", "api-5", "u")
        .container("app", "a", Some("sha256:x"))
        .sidecar("s", "b", None)
        .ephemeral("d", "c", Some("x"));
    let typed: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(pod.to_json()).expect("a v1.Pod");
    let status = typed.status.expect("status");
    assert_eq!(
        status.container_statuses.expect("containers")[0].image_id,
        "sha256:x"
    );
    assert_eq!(
        status.init_container_statuses.expect("init")[0].image_id,
        ""
    );
    assert_eq!(
        status
            .ephemeral_container_statuses
            .expect("ephemeral")
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_sweeps_the_records_of_gone_pods_on_its_own() {
    let (clean, _) = images().await;
    let site = Site::start_sweeping_every(10).await;
    let store = site.store();
    let (running, gone) = (uid(), uid());
    site.api
        .set_pod(&TestPod::new("shop", "api-6", &running).container(
            "app",
            "shop/api:1",
            Some(&clean),
        ));
    for (u, name) in [(&running, "api-6"), (&gone, "api-7")] {
        store
            .put_admission_record(&record(u, name, &[&clean]))
            .await
            .expect("put");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.admission_record(&gone).await.expect("read").is_some() {
        assert!(
            Instant::now() < deadline,
            "the gone pod's record is still there after 30 s (sweep every 10 s)"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        store
            .admission_record(&running)
            .await
            .expect("read")
            .is_some()
    );
}
