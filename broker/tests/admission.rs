//! The validating admission webhook end to end (`POST /v1/admission/validate`), with real
//! images built by buildah in real OCI registries on loopback (`tests/peers/images.sh`, run
//! by `./test.sh`) and `AdmissionReview` bodies shaped as the Kubernetes documentation shows
//! them (`lanyard_test_support::admission`), sent by a client that authenticates as the API
//! server does (a client certificate from its own CA). Then the records it writes, read by
//! issuance: a pod token is gated by the admission record of its pod.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lanyard_broker::store::Store;
use lanyard_broker::store::sqlite::SqliteStore;
use lanyard_scan::ScanOptions;
use lanyard_test_support::admission::{
    self, CRONJOB, DEPLOYMENT, POD, Review, container, pod, pod_spec,
};
use lanyard_test_support::{Algorithm, OidcIssuer, TestBroker, TestBrokerOptions, TestPki};
use serde_json::{Value, json};

const POLICY: &str = r#"
roles:
  app: {backend: jwt, scope: [app], max_ttl_seconds: 300}
  shop-db: {backend: jwt, scope: [db], max_ttl_seconds: 300}
rules:
  - name: shop-api
    match: {namespace: shop, service_account: api}
    roles: [app]
    gate_mode: enforce
  - name: clean-shop-images-only
    match: {namespace: shop, service_account: api, image_repository: "127.0.0.1:*/lanyard/multistage-clean"}
    roles: [shop-db]
    gate_mode: enforce
"#;

fn registry() -> String {
    match std::env::var("LANYARD_TEST_REGISTRY") {
        Ok(r) if !r.is_empty() => r,
        _ => panic!(
            "LANYARD_TEST_REGISTRY is not set: run ./test.sh, or `source tests/peers/images.sh` before `cargo test`"
        ),
    }
}

fn images() -> PathBuf {
    PathBuf::from(
        std::env::var("LANYARD_TEST_IMAGES").expect("LANYARD_TEST_IMAGES (tests/peers/images.sh)"),
    )
}

/// The secret values planted in the test images: none may appear anywhere the broker writes.
fn assert_no_planted(what: &str, text: &str) {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/planted.txt");
    for p in std::fs::read_to_string(file)
        .expect("planted.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        assert!(!text.contains(p), "{what} holds a planted secret value");
        assert!(
            !text.contains(&p[..8.min(p.len())]),
            "{what} holds a prefix of a planted value"
        );
    }
}

/// Pushes `$LANYARD_TEST_IMAGES/<archive>.oci.tar` to `reference` on the anonymous registry.
fn push(archive: &str, reference: &str) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &format!(
                "oci-archive:{}",
                images().join(format!("{archive}.oci.tar")).display()
            ),
            &format!("docker://{reference}"),
        ])
        .output()
        .expect("skopeo (tests/peers/images.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unique(name: &str) -> String {
    format!("lanyard/adm-{name}-{:08x}", fastrand::u32(..))
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

/// A broker with the webhook on, the API server's client CA and token file configured, the
/// admin CA (the test PKI's) trusted too, and a client for each kind of caller.
struct Webhook {
    broker: TestBroker,
    /// Calls as the API server (a certificate from its own CA).
    api: reqwest::Client,
    /// The bearer token of `gate.admission.token_file`.
    token: String,
    _apiserver_ca: TestPki,
    _dir: tempfile::TempDir,
}

impl Webhook {
    async fn start(issuer: Option<&OidcIssuer>, gate: &str, admission: &str) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let apiserver_ca = TestPki::generate(&dir.path().join("apiserver-ca"));
        let token = format!("apiserver-{:016x}", fastrand::u64(..));
        let token_file = dir.path().join("apiserver-token");
        std::fs::write(&token_file, &token).expect("token file");
        let broker = TestBroker::start_with(
            issuer,
            TestBrokerOptions {
                policies: vec![("policy.yaml".into(), POLICY.into())],
                admin_mtls: true,
                extra_config: format!(
                    "gate:\n  insecure_loopback_registries: true\n  scan_deadline_seconds: 20\n  pod_tokens: gate\n{gate}\
                     \x20 admission:\n    client_ca_file: {ca}\n    token_file: {tf}\n\
                     \x20   exempt_namespaces:\n      - {{namespace: kube-system, reason: \"platform images, scanned by the vendor (INC-7)\"}}\n{admission}",
                    ca = apiserver_ca.ca_path().display(),
                    tf = token_file.display(),
                ),
                ..TestBrokerOptions::default()
            },
        )
        .await;
        let api = admission::apiserver_client(&broker.pki.ca_path(), &apiserver_ca);
        Self {
            broker,
            api,
            token,
            _apiserver_ca: apiserver_ca,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("{}/v1/admission/validate", self.broker.url)
    }

    /// Sends `review` as the API server; returns the HTTP status, the review sent and the
    /// answer (JSON, or `Null`).
    async fn review(&self, review: &Review) -> (u16, Value, Value) {
        let body = review.to_json();
        let (status, answer) = self
            .post(&self.api, serde_json::to_vec(&body).expect("json"))
            .await;
        (status, body, answer)
    }

    async fn post(&self, client: &reqwest::Client, body: Vec<u8>) -> (u16, Value) {
        let resp = client
            .post(self.url())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("review");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Sends `review` and checks it was answered (200, the review's `uid`); returns
    /// `response`.
    async fn answer(&self, review: &Review) -> Value {
        let (status, sent, answer) = self.review(review).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(
            answer["response"]["uid"], sent["request"]["uid"],
            "response.uid is request.uid"
        );
        answer["response"].clone()
    }

    fn store(&self) -> SqliteStore {
        SqliteStore::open(&self.broker.store_file).expect("store")
    }

    fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.broker.audit_file).expect("audit")
    }
}

fn message(response: &Value) -> String {
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn pod_review(namespace: &str, uid: &str, spec: Value) -> Review {
    Review::create(POD, namespace, "web", pod(namespace, "web", uid, spec))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_pods_are_recorded_and_dirty_containers_init_containers_and_templates_are_refused_with_the_finding_and_no_secret()
 {
    let reg = registry();
    let w = Webhook::start(None, "", "").await;
    let clean = format!("{reg}/lanyard/multistage-clean:1");
    let dirty = format!("{reg}/lanyard/env-secret:1");
    let clean_pinned = format!("{reg}/lanyard/multistage-clean@{}", digest_of(&clean).await);
    let store = w.store();
    let mut answers = String::new();

    // A clean pod written with tags: allowed, recorded (tag-based) under the object's UID.
    let uid = admission::uuid();
    let r = w
        .answer(&pod_review(
            "shop",
            &uid,
            pod_spec(&[container("migrate", &clean)], &[container("api", &clean)]),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let rec = store
        .admission_record(&uid)
        .await
        .expect("read")
        .expect("recorded before the answer");
    assert_eq!(
        (rec.namespace.as_str(), rec.pod_name.as_str()),
        ("shop", "web")
    );
    assert_eq!(rec.images, vec![clean_pinned.clone()], "resolved, once");
    assert!(!rec.pinned, "written as tags: a tag-based record");
    // Written as digests: a pinned record.
    let pinned_uid = admission::uuid();
    let r = w
        .answer(&pod_review(
            "shop",
            &pinned_uid,
            pod_spec(&[], &[container("api", &clean_pinned)]),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let rec = store
        .admission_record(&pinned_uid)
        .await
        .expect("read")
        .expect("record");
    assert!(rec.pinned);

    // Several containers, one dirty: refused, naming that container and the finding.
    let dirty_uid = admission::uuid();
    let r = w
        .answer(&pod_review(
            "shop",
            &dirty_uid,
            pod_spec(
                &[],
                &[
                    container("api", &clean),
                    container("sidecar", &dirty),
                    container("metrics", &clean_pinned),
                ],
            ),
        ))
        .await;
    answers.push_str(&r.to_string());
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 403);
    let m = message(&r);
    for want in [
        "container `sidecar`",
        "env-secret@sha256:",
        "config Env AWS_ACCESS_KEY_ID",
        "rotate the exposed credential",
    ] {
        assert!(m.contains(want), "{want:?} missing from: {m}");
    }
    assert!(
        !m.contains("`api`") && !m.contains("`metrics`"),
        "only the dirty container is named: {m}"
    );
    assert_eq!(
        store.admission_record(&dirty_uid).await.expect("read"),
        None,
        "a refused pod is not recorded"
    );

    // An init container dirty (a file a later layer deleted).
    let r = w
        .answer(&pod_review(
            "shop",
            &admission::uuid(),
            pod_spec(
                &[container(
                    "migrate",
                    &format!("{reg}/lanyard/copy-env-rm:1"),
                )],
                &[container("api", &clean)],
            ),
        ))
        .await;
    answers.push_str(&r.to_string());
    let m = message(&r);
    assert!(
        r["allowed"] == false && m.contains("init container `migrate`") && m.contains("layer"),
        "{r}"
    );

    // A Deployment and a CronJob whose templates are dirty: refused before they make pods.
    let spec = pod_spec(&[], &[container("api", &clean), container("job", &dirty)]);
    let r = w
        .answer(&Review::create(
            DEPLOYMENT,
            "shop",
            "api",
            admission::deployment("shop", "api", spec.clone()),
        ))
        .await;
    answers.push_str(&r.to_string());
    assert!(
        r["allowed"] == false && message(&r).contains("Deployment pod template"),
        "{r}"
    );
    let r = w
        .answer(&Review::create(
            CRONJOB,
            "shop",
            "report",
            admission::cronjob("shop", "report", spec),
        ))
        .await;
    answers.push_str(&r.to_string());
    assert!(
        r["allowed"] == false && message(&r).contains("CronJob pod template"),
        "{r}"
    );
    // A clean Deployment is allowed; nothing is recorded for a template.
    let r = w
        .answer(&Review::create(
            DEPLOYMENT,
            "shop",
            "web",
            admission::deployment("shop", "web", pod_spec(&[], &[container("w", &clean)])),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");

    // A multi-platform index with one dirty platform.
    let r = w
        .answer(&pod_review(
            "shop",
            &admission::uuid(),
            pod_spec(&[], &[container("api", &format!("{reg}/lanyard/multi:1"))]),
        ))
        .await;
    answers.push_str(&r.to_string());
    let m = message(&r);
    assert!(
        r["allowed"] == false && m.contains("[linux/arm64]") && !m.contains("[linux/amd64]"),
        "{r}"
    );

    // Audited, every decision, with the finding's location and never its value.
    let audit = w.audit_text();
    let records: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let denied = records
        .iter()
        .find(|r| r["event"] == "admission" && r["gate"] == "deny:dirty")
        .expect("an admission denial record");
    assert_eq!(denied["decision"], "deny");
    assert!(
        denied["reason"]
            .as_str()
            .expect("reason")
            .contains("AWS_ACCESS_KEY_ID"),
        "{denied}"
    );
    let allowed = records
        .iter()
        .find(|r| {
            r["event"] == "admission"
                && r["gate"] == "allow:clean"
                && r["reason"].as_str().is_some_and(|s| s.contains(&uid))
        })
        .expect("an admission record naming the recorded uid");
    assert_eq!(allowed["identity"], "pod shop/web");
    assert!(
        allowed["reason"]
            .as_str()
            .is_some_and(|r| r
                .contains("requested by system:serviceaccount:kube-system:replicaset-controller")),
        "who asked, from the review's userInfo: {allowed}"
    );
    let metrics = w.broker.metrics().await;
    for want in [
        "lanyard_admission_decisions_total{kind=\"pod\",outcome=\"allow\",reason=\"clean\"} 2",
        "lanyard_admission_decisions_total{kind=\"pod\",outcome=\"deny\",reason=\"dirty\"} 3",
        "lanyard_admission_decisions_total{kind=\"template\",outcome=\"deny\",reason=\"dirty\"} 2",
        "lanyard_admission_decision_duration_seconds_count{kind=\"pod\"} 5",
    ] {
        assert!(metrics.contains(want), "{want} missing from:\n{metrics}");
    }
    assert_no_planted("the answers", &answers);
    assert_no_planted("the audit log", &audit);
    assert_no_planted("the metrics", &metrics);
    w.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_container_added_through_the_subresource_is_checked_and_joins_the_record() {
    let reg = registry();
    let w = Webhook::start(None, "", "").await;
    let clean = format!("{reg}/lanyard/multistage-clean:1");
    // The same clean image under another repository: a second, distinct reference.
    let other = format!("{reg}/{}", unique("debug"));
    push("multistage-clean", &format!("{other}:1"));
    let uid = admission::uuid();
    let spec = pod_spec(&[], &[container("api", &clean)]);
    let r = w.answer(&pod_review("shop", &uid, spec.clone())).await;
    assert_eq!(r["allowed"], true, "{r}");
    let store = w.store();
    let before = store
        .admission_record(&uid)
        .await
        .expect("read")
        .expect("record");

    let ephemeral = |image: &str| {
        let mut debugged = spec.clone();
        debugged["ephemeralContainers"] =
            json!([{"name": "debugger", "image": image, "targetContainerName": "api"}]);
        Review {
            operation: "UPDATE",
            sub_resource: Some("ephemeralcontainers"),
            old_object: Some(pod("shop", "web", &uid, spec.clone())),
            ..pod_review("shop", &uid, debugged)
        }
    };
    // `kubectl debug` with a dirty image: refused, and the record stays as it was.
    let r = w
        .answer(&ephemeral(&format!("{reg}/lanyard/env-secret:1")))
        .await;
    assert!(
        r["allowed"] == false && message(&r).contains("ephemeral container `debugger`"),
        "{r}"
    );
    assert_eq!(
        store.admission_record(&uid).await.expect("read"),
        Some(before.clone())
    );
    // With a clean image: allowed, and the record is the union.
    let r = w.answer(&ephemeral(&format!("{other}:1"))).await;
    assert_eq!(r["allowed"], true, "{r}");
    let after = store
        .admission_record(&uid)
        .await
        .expect("read")
        .expect("record");
    let digest = digest_of(&clean).await;
    assert_eq!(
        after.images,
        vec![
            format!("{reg}/lanyard/multistage-clean@{digest}"),
            format!("{other}@{digest}")
        ]
    );
    // A pod admitted before the webhook (no record) gets a clean ephemeral container: allowed,
    // and no record is started with that container alone (it would vouch for the rest).
    let unrecorded = admission::uuid();
    let mut debugged = spec.clone();
    debugged["ephemeralContainers"] = json!([{"name": "debugger", "image": format!("{other}:1")}]);
    let r = w
        .answer(&Review {
            operation: "UPDATE",
            sub_resource: Some("ephemeralcontainers"),
            old_object: Some(pod("shop", "old", &unrecorded, spec.clone())),
            ..Review::create(
                POD,
                "shop",
                "old",
                pod("shop", "old", &unrecorded, debugged),
            )
        })
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(
        store.admission_record(&unrecorded).await.expect("read"),
        None
    );
    assert!(
        w.audit_text().contains("has no admission record to add to"),
        "said in the audit record"
    );
    w.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_a_removed_image_and_a_registry_down_are_each_decided_as_documented() {
    let reg = registry();
    let w = Webhook::start(None, "", "").await;
    // A tag that moves to a dirty digest after a clean verdict: resolved again, refused.
    let repo = format!("{reg}/{}", unique("moving"));
    push("multistage-clean", &format!("{repo}:1"));
    let running = admission::uuid();
    let spec = pod_spec(&[], &[container("api", &format!("{repo}:1"))]);
    let r = w.answer(&pod_review("shop", &running, spec.clone())).await;
    assert_eq!(r["allowed"], true, "{r}");
    let clean_digest = digest_of(&format!("{repo}:1")).await;
    push("env-secret", &format!("{repo}:1"));
    // The running pod's metadata can still change (a label, a finalizer removed): an UPDATE
    // checks only the images it changes, and this one changes none.
    let mut relabelled = pod("shop", "web", &running, spec.clone());
    relabelled["metadata"]["labels"]["version"] = json!("2");
    let r = w
        .answer(&Review {
            operation: "UPDATE",
            old_object: Some(pod("shop", "web", &running, spec)),
            ..Review::create(POD, "shop", "web", relabelled)
        })
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = w
        .answer(&pod_review(
            "shop",
            &admission::uuid(),
            pod_spec(&[], &[container("api", &format!("{repo}:1"))]),
        ))
        .await;
    assert!(
        r["allowed"] == false && message(&r).contains("AWS_ACCESS_KEY_ID"),
        "{r}"
    );

    // An image removed from the registry: its stored verdict still decides a digest
    // reference; its tag cannot be resolved any more (fail-closed: "scan pending, retry").
    let gone = format!("{reg}/{}", unique("gone"));
    push("multistage-clean", &format!("{gone}:1"));
    let r = w
        .answer(&pod_review(
            "shop",
            &admission::uuid(),
            pod_spec(&[], &[container("api", &format!("{gone}:1"))]),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let path = gone.split_once('/').expect("host/path").1;
    let resp = reqwest::Client::new()
        .delete(format!("http://{reg}/v2/{path}/manifests/{clean_digest}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status().as_u16(), 202, "the test registry deletes");
    let r = w
        .answer(&pod_review(
            "shop",
            &admission::uuid(),
            pod_spec(&[], &[container("api", &format!("{gone}@{clean_digest}"))]),
        ))
        .await;
    assert_eq!(r["allowed"], true, "the stored verdict decides: {r}");
    let uid = admission::uuid();
    let r = w
        .answer(&pod_review(
            "shop",
            &uid,
            pod_spec(&[], &[container("api", &format!("{gone}:1"))]),
        ))
        .await;
    let m = message(&r);
    assert!(
        r["allowed"] == false && m.contains("scan pending, retry") && m.contains(&gone),
        "{r}"
    );

    // The registry down: a pod fails closed; a template is allowed with a warning. Audited.
    let down = "127.0.0.1:1/lanyard/app:1";
    let r = w
        .answer(&pod_review(
            "shop",
            &admission::uuid(),
            pod_spec(&[], &[container("api", down)]),
        ))
        .await;
    assert!(
        r["allowed"] == false && message(&r).contains("scan pending, retry"),
        "{r}"
    );
    let r = w
        .answer(&Review::create(
            DEPLOYMENT,
            "shop",
            "api",
            admission::deployment("shop", "api", pod_spec(&[], &[container("api", down)])),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("could not decide in time"), "{r}");
    assert!(
        w.audit_text()
            .lines()
            .any(|l| l.contains("\"event\":\"admission\"")
                && l.contains("allow:scan_failed")
                && l.contains("Deployment shop/api")),
        "the template allowed on a timeout is audited"
    );
    w.broker.stop().await;

    // Fail-open: the pod is allowed (with a warning, audited), and recorded nothing: an
    // image not even resolved is vouched for by no record.
    let open = Webhook::start(None, "", "    on_timeout: fail-open\n").await;
    let uid = admission::uuid();
    let r = open
        .answer(&pod_review(
            "shop",
            &uid,
            pod_spec(&[], &[container("api", down)]),
        ))
        .await;
    assert!(
        r["allowed"] == true
            && r["warnings"]
                .to_string()
                .contains("could not decide in time"),
        "{r}"
    );
    assert_eq!(
        open.store().admission_record(&uid).await.expect("read"),
        None
    );
    assert!(
        open.audit_text()
            .lines()
            .any(|l| l.contains("\"event\":\"admission\"") && l.contains("allow:scan_failed"))
    );
    open.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_exempt_namespaces_and_audit_mode_allow_and_say_so() {
    let reg = registry();
    let dirty = format!("{reg}/lanyard/env-secret:1");
    let clean = format!("{reg}/lanyard/multistage-clean:1");
    let w = Webhook::start(None, "", "").await;
    let store = w.store();
    // A dry run is decided and records nothing.
    let uid = admission::uuid();
    let review = Review {
        dry_run: true,
        ..pod_review("shop", &uid, pod_spec(&[], &[container("api", &clean)]))
    };
    let r = w.answer(&review).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(store.admission_record(&uid).await.expect("read"), None);
    let review = Review {
        dry_run: true,
        ..pod_review("shop", &uid, pod_spec(&[], &[container("api", &dirty)]))
    };
    assert_eq!(w.answer(&review).await["allowed"], false);
    // An exempted namespace: allowed unchecked, audited with the reason, nothing recorded.
    let uid = admission::uuid();
    let r = w
        .answer(&pod_review(
            "kube-system",
            &uid,
            pod_spec(&[], &[container("proxy", &dirty)]),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(store.admission_record(&uid).await.expect("read"), None);
    let audit = w.audit_text();
    assert!(
        audit.lines().any(|l| l.contains("allow:exempted")
            && l.contains("pod kube-system/web")
            && l.contains("INC-7")),
        "{audit}"
    );
    assert!(
        audit.contains("dry run: nothing recorded"),
        "dry runs are audited as such"
    );
    w.broker.stop().await;

    // Audit mode: a dirty pod is allowed with a warning naming the finding, audited as
    // "would deny", and recorded (its tokens are then gated by their rule's mode).
    let audit_mode = Webhook::start(None, "  mode: audit\n", "").await;
    let uid = admission::uuid();
    let r = audit_mode
        .answer(&pod_review(
            "shop",
            &uid,
            pod_spec(&[], &[container("api", &dirty)]),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let warning = r["warnings"][0].as_str().expect("warning");
    assert!(
        warning.contains("audit mode") && warning.contains("AWS_ACCESS_KEY_ID"),
        "{warning}"
    );
    assert_no_planted("the warning", warning);
    assert!(
        audit_mode
            .store()
            .admission_record(&uid)
            .await
            .expect("read")
            .is_some()
    );
    assert!(
        audit_mode
            .audit_text()
            .lines()
            .any(|l| l.contains("\"event\":\"admission\"") && l.contains("would_deny:dirty"))
    );
    let metrics = audit_mode.broker.metrics().await;
    assert!(
        metrics.contains(
            "lanyard_admission_decisions_total{kind=\"pod\",outcome=\"would_deny\",reason=\"dirty\"} 1"
        ),
        "{metrics}"
    );
    audit_mode.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_wrong_kind_reviews_are_400_and_only_the_api_server_is_answered() {
    let w = Webhook::start(None, "", "").await;
    let valid = pod_review(
        "shop",
        &admission::uuid(),
        pod_spec(&[], &[container("api", "127.0.0.1:1/x/y@sha256:00")]),
    )
    .to_json();
    // Malformed, wrong kind, no request: 400 with a message saying what is wrong.
    for (body, want) in [
        (b"{not json".to_vec(), "not an AdmissionReview"),
        (
            serde_json::to_vec(&{
                let mut v = valid.clone();
                v["apiVersion"] = json!("admission.k8s.io/v1beta1");
                v
            })
            .expect("json"),
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "no request",
        ),
        (
            serde_json::to_vec(&{
                let mut v = valid.clone();
                v["request"]["object"]["spec"]["containers"] = json!("not a list");
                v
            })
            .expect("json"),
            "pod spec",
        ),
    ] {
        let (status, answer) = w.post(&w.api, body).await;
        assert_eq!(status, 400, "{answer}");
        let m = answer["error"]["message"].as_str().expect("message");
        assert!(m.contains(want), "{want:?} missing from {m}");
    }
    // Oversized: refused without being read whole.
    let big = vec![b' '; lanyard_broker::gate::admission::MAX_REVIEW_BYTES + 1];
    let (status, answer) = w.post(&w.api, big).await;
    assert_eq!(status, 413, "{answer}");
    // Something the webhook does not gate is allowed untouched (a ConfigMap).
    let cm = Review::create(
        admission::Kind {
            group: "",
            version: "v1",
            kind: "ConfigMap",
            resource: "configmaps",
        },
        "shop",
        "settings",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}),
    );
    assert_eq!(w.answer(&cm).await["allowed"], true);

    // Callers that are not the API server: 401, audited; nothing decided for them.
    let body = serde_json::to_vec(&valid).expect("json");
    let anonymous = w.broker.http();
    let (status, _) = w.post(&anonymous, body.clone()).await;
    assert_eq!(status, 401);
    let (cert, key) = w.broker.pki.client_cert("ops-admin", "admin-client");
    let admin = admission::client_with_identity(&w.broker.pki.ca_path(), &cert, &key);
    let (status, _) = w.post(&admin, body.clone()).await;
    assert_eq!(status, 401, "an admin is not the API server");
    let resp = anonymous
        .post(w.url())
        .bearer_auth("not-the-token")
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 401);
    let resp = anonymous
        .post(w.url())
        .bearer_auth(&w.broker.admin_token)
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 401, "nor is the admin token");
    // The configured bearer token is the API server's other way in.
    let resp = anonymous
        .post(w.url())
        .bearer_auth(&w.token)
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let audit = w.audit_text();
    for reason in ["admission_missing_credential", "admission_wrong_token"] {
        assert!(
            audit.lines().any(|l| l.contains("\"event\":\"admission\"")
                && l.contains("admission caller not authenticated")
                && l.contains(reason)),
            "{reason} not audited:\n{audit}"
        );
    }
    let metrics = w.broker.metrics().await;
    assert!(
        metrics.contains(
            "lanyard_admission_decisions_total{kind=\"other\",outcome=\"error\",reason=\"unauthenticated\"} 4"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "lanyard_admission_decisions_total{kind=\"other\",outcome=\"error\",reason=\"bad_review\"} 4"
    ));
    w.broker.stop().await;

    // Neither a client CA nor a token configured: the route refuses everyone.
    let bare = TestBroker::start(None).await;
    let resp = bare
        .http()
        .post(format!("{}/v1/admission/validate", bare.url))
        .body(serde_json::to_vec(&valid).expect("json"))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 401);
    assert!(
        std::fs::read_to_string(&bare.audit_file)
            .expect("audit")
            .contains("admission_not_configured")
    );
    bare.stop().await;
}

/// A projected service-account token of `shop/api` bound to the pod with `uid`.
fn pod_token(issuer: &OidcIssuer, uid: &str) -> String {
    let mut claims = issuer.k8s_claims(
        "shop",
        "api",
        "lanyard",
        lanyard_test_support::now_unix(),
        600,
    );
    claims["kubernetes.io"]["pod"]["uid"] = json!(uid);
    issuer.token(Algorithm::RS256, claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_token_is_gated_by_its_pods_admission_record() {
    let reg = registry();
    let issuer = OidcIssuer::start().await;
    // The webhook in audit mode (so a dirty pod is admitted and recorded); the policy's rules
    // enforce at issuance.
    let w = Webhook::start(Some(&issuer), "  mode: audit\n", "").await;
    let clean = format!("{reg}/lanyard/multistage-clean:1");
    let clean_pinned = format!("{reg}/lanyard/multistage-clean@{}", digest_of(&clean).await);

    // Clean, written as a tag: credentials for both roles (the record's repository matches
    // `image_repository`), and the gate says the record is tag-based.
    let tagged = admission::uuid();
    let before = lanyard::clock::Clock::now(&lanyard::clock::SystemClock);
    let r = w
        .answer(&pod_review(
            "shop",
            &tagged,
            pod_spec(&[], &[container("api", &clean)]),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let (status, body) = w
        .broker
        .post_credentials(Some(&pod_token(&issuer, &tagged)), "")
        .await;
    assert_eq!(status, 200, "{body}");
    // The answer says when the pod was admitted, to the millisecond (the sidecar measures
    // admission → credentials on disk from it).
    let admitted = body["admitted_at"]
        .as_str()
        .and_then(lanyard::clock::parse_rfc3339)
        .unwrap_or_else(|| panic!("no admitted_at in {body}"));
    let since = admitted
        .duration_since(before)
        .unwrap_or_else(|_| panic!("admitted_at {admitted:?} is before the review was sent"));
    assert!(since < Duration::from_secs(30), "{since:?}");
    assert!(
        body["admitted_at"]
            .as_str()
            .is_some_and(|t| t.len() == "2026-01-01T00:00:00.000Z".len()),
        "{body}"
    );
    let roles: Vec<&str> = body["credentials"]
        .as_array()
        .expect("credentials")
        .iter()
        .filter_map(|c| c["role"].as_str())
        .collect();
    assert_eq!(roles, ["app", "shop-db"], "{body}");
    let audit = w.audit_text();
    assert!(
        audit.lines().any(|l| l.contains("\"event\":\"gate\"")
            && l.contains("tag-based admission record, weaker")),
        "{audit}"
    );
    // Clean and pinned: credentials, no note.
    let pinned = admission::uuid();
    w.answer(&pod_review(
        "shop",
        &pinned,
        pod_spec(&[], &[container("api", &clean_pinned)]),
    ))
    .await;
    let (status, body) = w
        .broker
        .post_credentials(Some(&pod_token(&issuer, &pinned)), "")
        .await;
    assert_eq!(status, 200, "{body}");

    // A pod admitted with a dirty image (audit mode let it in): its token gets 403, audited.
    let dirty = admission::uuid();
    let r = w
        .answer(&pod_review(
            "shop",
            &dirty,
            pod_spec(
                &[],
                &[
                    container("api", &clean),
                    container("tools", &format!("{reg}/lanyard/env-secret:1")),
                ],
            ),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    let (status, body) = w
        .broker
        .post_credentials(Some(&pod_token(&issuer, &dirty)), "")
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "image_refused", "{body}");
    let m = body["error"]["message"].as_str().expect("message");
    assert!(
        m.contains("env-secret@sha256:") && m.contains("AWS_ACCESS_KEY_ID"),
        "{m}"
    );
    assert_no_planted("the refusal", m);

    // No record for the pod: an unknown workload, refused.
    let (status, body) = w
        .broker
        .post_credentials(Some(&pod_token(&issuer, &admission::uuid())), "")
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("no admission record"),
        "{body}"
    );
    let audit = w.audit_text();
    let records: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for gate in ["deny:dirty", "deny:unknown_workload"] {
        let rec = records
            .iter()
            .find(|r| r["event"] == "deny" && r["gate"] == gate)
            .unwrap_or_else(|| panic!("a {gate} record"));
        assert_eq!(rec["identity"], "system:serviceaccount:shop:api");
    }
    assert_no_planted("the audit log", &audit);
    w.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_past_their_retention_are_pruned() {
    let reg = registry();
    let clock = std::sync::Arc::new(lanyard::clock::ManualClock::new(
        lanyard::clock::Clock::now(&lanyard::clock::SystemClock),
    ));
    let dir = tempfile::tempdir().expect("tmp");
    let apiserver_ca = TestPki::generate(&dir.path().join("apiserver-ca"));
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            clock: Some(clock.clone()),
            extra_config: format!(
                "gate:\n  insecure_loopback_registries: true\n  admission:\n    client_ca_file: {}\n    record_retention_hours: 2\n",
                apiserver_ca.ca_path().display()
            ),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let api = admission::apiserver_client(&broker.pki.ca_path(), &apiserver_ca);
    let uid = admission::uuid();
    let review = pod_review(
        "shop",
        &uid,
        pod_spec(
            &[],
            &[container(
                "api",
                &format!("{reg}/lanyard/multistage-clean:1"),
            )],
        ),
    );
    let resp = api
        .post(format!("{}/v1/admission/validate", broker.url))
        .json(&review.to_json())
        .send()
        .await
        .expect("review");
    assert_eq!(resp.status().as_u16(), 200);
    let store = SqliteStore::open(&broker.store_file).expect("store");
    let rec = store
        .admission_record(&uid)
        .await
        .expect("read")
        .expect("record");
    // Expiry is kept in whole seconds, the admission to the millisecond.
    let kept = rec
        .expires_at
        .duration_since(rec.admitted_at)
        .expect("after");
    assert!(
        kept > Duration::from_secs(2 * 3600 - 1) && kept <= Duration::from_secs(2 * 3600),
        "{kept:?}"
    );
    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        broker
            .broker
            .prune_admission_records()
            .await
            .expect("prune"),
        0
    );
    clock.advance(Duration::from_secs(3601));
    // The broker's periodic maintenance prunes it (every reload interval, 1 s here).
    let mut pruned = false;
    for _ in 0..50 {
        if store.admission_record(&uid).await.expect("read").is_none() {
            pruned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pruned, "the record past its retention was pruned");
    assert!(
        broker
            .metrics()
            .await
            .contains("lanyard_admission_records_pruned_total 1")
    );
    broker.stop().await;
}

/// A TCP proxy on loopback to `target` that holds each new connection for `delay` before
/// forwarding it: a slow registry. Returns its `host:port`.
async fn slow_proxy(target: String, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_not_reached_by_the_deadline_fails_closed_for_pods_and_warns_for_templates() {
    let slow = slow_proxy(registry(), Duration::from_secs(4)).await;
    let w = Webhook::start(None, "", "    deadline_ms: 1000\n").await;
    let image = format!("{slow}/lanyard/multistage-clean:1");
    let started = std::time::Instant::now();
    let r = w
        .answer(&pod_review(
            "shop",
            &admission::uuid(),
            pod_spec(&[], &[container("api", &image)]),
        ))
        .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3000),
        "answered by the deadline, not the registry: {took:?}"
    );
    let m = message(&r);
    assert!(
        r["allowed"] == false && m.contains("scan pending, retry") && m.contains(&image),
        "{r}"
    );
    let r = w
        .answer(&Review::create(
            DEPLOYMENT,
            "shop",
            "api",
            admission::deployment("shop", "api", pod_spec(&[], &[container("api", &image)])),
        ))
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(
        r["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("could not decide in time")),
        "{r}"
    );
    let audit = w.audit_text();
    assert!(
        audit.contains("deny:scan_pending") && audit.contains("allow:scan_pending"),
        "both audited:\n{audit}"
    );
    w.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_process_keeps_no_planted_secret_in_its_log_when_refusing_dirty_pods() {
    use lanyard_test_support::BrokerProcess;
    let reg = registry();
    let dir = tempfile::tempdir().expect("tmp");
    let apiserver_ca = TestPki::generate(&dir.path().join("apiserver-ca"));
    let broker = BrokerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_lanyard-broker")),
        None,
        TestBrokerOptions {
            extra_config: format!(
                "gate:\n  insecure_loopback_registries: true\n  admission:\n    client_ca_file: {}\n",
                apiserver_ca.ca_path().display()
            ),
            log_level: "debug",
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let api = admission::apiserver_client(&broker.pki.ca_path(), &apiserver_ca);
    let mut answers = String::new();
    // Every dirty test image: env secrets, a file a later layer deleted, an .npmrc in a
    // Docker-format image, an index with a dirty platform.
    for image in [
        format!("{reg}/lanyard/env-secret:1"),
        format!("{reg}/lanyard/copy-env-rm:1"),
        format!("{reg}/lanyard/npmrc-rm:docker"),
        format!("{reg}/lanyard/multi:1"),
    ] {
        let review = pod_review(
            "shop",
            &admission::uuid(),
            pod_spec(&[], &[container("app", &image)]),
        );
        let resp = api
            .post(format!("{}/v1/admission/validate", broker.url))
            .json(&review.to_json())
            .send()
            .await
            .expect("review");
        assert_eq!(resp.status().as_u16(), 200);
        let answer: Value = resp.json().await.expect("json");
        assert_eq!(answer["response"]["allowed"], false, "{image}: {answer}");
        answers.push_str(&answer.to_string());
    }
    let metrics = broker
        .http()
        .get(format!("{}/metrics", broker.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains(
        "lanyard_admission_decisions_total{kind=\"pod\",outcome=\"deny\",reason=\"dirty\"} 4"
    ));
    assert_no_planted("the answers", &answers);
    assert_no_planted("the metrics", &metrics);
    assert_no_planted(
        "the audit log",
        &std::fs::read_to_string(&broker.audit_file).expect("audit"),
    );
    let log = std::fs::read_to_string(&broker.log_file).expect("log");
    assert!(
        log.contains("image scanned"),
        "the log is the broker's: {log}"
    );
    assert_no_planted("the broker's log", &log);
}
