//! Digest pinning at `POST /v1/admission/mutate`, with real images built by buildah on the
//! real loopback registries of `tests/peers/images.sh` (run by `./test.sh`): a pod's tags —
//! containers, init and ephemeral containers — come back as a JSONPatch naming the digests
//! the registry's manifests hash to (checked with skopeo, not with the broker's own
//! resolver); the patch applies with the `json-patch` crate and the result is still a Pod;
//! pinned images, Deployments, dry runs, unresolvable tags, pinning off and bad reviews. The
//! pure part is unit-tested in `gate::pin`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use lanyard_broker::gate::admission::MAX_REVIEW_BYTES;
use lanyard_test_support::broker::{TestBroker, TestBrokerOptions};
use serde_json::{Value, json};

fn registry() -> String {
    match std::env::var("LANYARD_TEST_REGISTRY") {
        Ok(r) if !r.is_empty() => r,
        _ => panic!(
            "LANYARD_TEST_REGISTRY is not set: run ./test.sh, or `source tests/peers/images.sh` before `cargo test`"
        ),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} (tests/peers/images.sh)"))
}

/// The digest of the manifest `reference` names in its registry: the sha256 of the bytes
/// skopeo fetches, so the broker's resolver is not the judge of itself.
fn registry_digest(reference: &str, creds: Option<&str>) -> String {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--raw", "--tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--creds", c]);
    }
    let out = cmd
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo (tests/peers/images.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lanyard_scan::util::sha256_digest(&out.stdout)
}

/// The bearer token the broker takes from the API server (`gate.admission.token_file`).
const API_SERVER_TOKEN: &str = "api-server-token-for-the-pinning-tests";

/// A broker with the gate's `registries` lines (`gate_extra`) and more `gate.admission` keys
/// (`admission_extra`, indented four spaces); the API server's token file is written.
async fn broker(gate_extra: &str, admission_extra: &str) -> TestBroker {
    let b = TestBroker::start_with(
        None,
        TestBrokerOptions {
            extra_config: format!(
                "gate:\n  insecure_loopback_registries: true\n  scan_deadline_seconds: 20\n{gate_extra}  admission:\n    token_file: admission-token\n{admission_extra}"
            ),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    // Re-read on every review: written after the start is soon enough.
    std::fs::write(b.dir().join("admission-token"), API_SERVER_TOKEN).expect("token file");
    b
}

/// An AdmissionReview as the Kubernetes documentation shows it
/// (`/docs/reference/access-authn-authz/extensible-admission-controllers/`, "Request").
fn review(
    kind: (&str, &str, &str),
    resource: &str,
    sub: Option<&str>,
    op: &str,
    object: Value,
    old: Option<Value>,
    dry_run: bool,
) -> Value {
    let mut request = json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": kind.0, "version": kind.1, "kind": kind.2},
        "resource": {"group": kind.0, "version": kind.1, "resource": resource},
        "requestKind": {"group": kind.0, "version": kind.1, "kind": kind.2},
        "requestResource": {"group": kind.0, "version": kind.1, "resource": resource},
        "name": object["metadata"]["name"],
        "namespace": "shop",
        "operation": op,
        "userInfo": {"username": "admin", "uid": "014fbff9a07c", "groups": ["system:authenticated"]},
        "object": object,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": if op == "CREATE" {"CreateOptions"} else {"UpdateOptions"}}
    });
    if let Some(s) = sub {
        request["subResource"] = json!(s);
        request["requestSubResource"] = json!(s);
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

fn pod_review(object: Value) -> Value {
    review(
        ("", "v1", "Pod"),
        "pods",
        None,
        "CREATE",
        object,
        None,
        false,
    )
}

fn pod(containers: Value, init: Value, ephemeral: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop"},
        "spec": {"initContainers": init, "containers": containers, "ephemeralContainers": ephemeral}
    })
}

/// POSTs `body` to the mutate route as the API server (its bearer token); status and JSON.
async fn mutate(b: &TestBroker, body: Vec<u8>) -> (u16, Value) {
    let resp = b
        .http()
        .post(format!("{}/v1/admission/mutate", b.url))
        .bearer_auth(API_SERVER_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("mutate");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The answer's patch applied to `object` as the API server applies it (base64-decoded, then
/// RFC 6902 with the `json-patch` crate); the patched object and how many operations.
fn apply(answer: &Value, object: &Value) -> (Value, usize) {
    let response = &answer["response"];
    let Some(patch) = response["patch"].as_str() else {
        assert!(response.get("patchType").is_none(), "{answer}");
        return (object.clone(), 0);
    };
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("the patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("an RFC 6902 patch");
    let mut doc = object.clone();
    json_patch::patch(&mut doc, &patch).expect("the patch applies to the object");
    (doc, patch.0.len())
}

fn images(doc: &Value, list: &str) -> Vec<String> {
    doc["spec"][list]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|c| c["image"].as_str().expect("image").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_tags_in_every_container_list_are_pinned_to_the_registrys_digests() {
    let reg = registry();
    let auth_reg = env("LANYARD_TEST_REGISTRY_AUTH");
    let user = env("LANYARD_TEST_REGISTRY_USER");
    let password_file = env("LANYARD_TEST_REGISTRY_PASSWORD_FILE");
    let password = std::fs::read_to_string(&password_file).expect("password");
    // The private registry's credentials come from the broker's config, never the request.
    let b = broker(
        &format!(
            "  registries:\n    - host: \"{auth_reg}\"\n      username: {user}\n      password_file: {password_file}\n"
        ),
        "",
    )
    .await;
    let clean = format!("{reg}/lanyard/multistage-clean:1");
    let index = format!("{reg}/lanyard/multi:1");
    let private = format!("{auth_reg}/lanyard/copy-env-rm:1");
    let init = format!("{reg}/lanyard/env-secret:1");
    let debug = format!("{reg}/lanyard/npmrc-rm:docker");
    let already = format!(
        "{reg}/lanyard/multistage-clean@{}",
        registry_digest(&clean, None)
    );
    let object = pod(
        json!([
            {"name": "app", "image": clean},
            {"name": "multi", "image": index},
            {"name": "private", "image": private},
            {"name": "sidecar", "image": already}
        ]),
        json!([{"name": "migrate", "image": init}]),
        json!([{"name": "debugger", "image": debug}]),
    );
    let started = Instant::now();
    let (status, answer) = mutate(
        &b,
        serde_json::to_vec(&pod_review(object.clone())).expect("json"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("warnings").is_none(), "{answer}");
    let (patched, ops) = apply(&answer, &object);
    assert_eq!(
        ops, 5,
        "one operation per tag, none for the digest: {answer}"
    );
    let pinned = |image: &str, creds: Option<&str>| {
        let repo = image.rsplit_once(':').expect("tag").0;
        format!("{repo}@{}", registry_digest(image, creds))
    };
    let creds = format!("{user}:{}", password.trim());
    assert_eq!(
        images(&patched, "containers"),
        [
            pinned(&clean, None),
            // The index's own digest: the kubelet picks its platform.
            pinned(&index, None),
            pinned(&private, Some(&creds)),
            already.clone(),
        ]
    );
    assert_eq!(images(&patched, "initContainers"), [pinned(&init, None)]);
    assert_eq!(
        images(&patched, "ephemeralContainers"),
        [pinned(&debug, None)]
    );
    let pod: Pod = serde_json::from_value(patched).expect("the patched object is a Pod");
    assert_eq!(pod.spec.expect("spec").containers.len(), 4);
    assert!(started.elapsed() < Duration::from_secs(8));

    let records = b.audit_records();
    let rec = records
        .iter()
        .find(|r| r["event"] == "admission_pin")
        .expect("an admission_pin record");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["gate"], "pin:pinned");
    assert_eq!(rec["identity"], "pod shop/web-1");
    let reason = rec["reason"].as_str().expect("reason");
    assert!(
        reason.contains("pod shop/web-1") && reason.contains("init container `migrate`"),
        "{reason}"
    );
    assert!(
        rec["image"]
            .as_str()
            .expect("image")
            .contains(&pinned(&init, None)),
        "{rec}"
    );
    assert!(!b.audit_lines().concat().contains(password.trim()));
    let metrics = b.metrics().await;
    for want in [
        "lanyard_admission_pinned_images_total{result=\"pinned\"} 5",
        "lanyard_admission_pinned_images_total{result=\"already_pinned\"} 1",
    ] {
        assert!(metrics.contains(want), "{want}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_pods_deployments_and_dry_runs_get_no_patch_or_no_record() {
    let reg = registry();
    let b = broker("", "").await;
    let clean = format!("{reg}/lanyard/multistage-clean:1");
    let digest = registry_digest(&clean, None);
    // A pod already pinned: no operation.
    let object = pod(
        json!([{"name": "app", "image": format!("{reg}/lanyard/multistage-clean@{digest}")},
               {"name": "both", "image": format!("{reg}/lanyard/multistage-clean:1@{digest}")}]),
        json!([]),
        json!([]),
    );
    let (status, answer) = mutate(
        &b,
        serde_json::to_vec(&pod_review(object.clone())).expect("json"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(apply(&answer, &object), (object, 0));

    // A Deployment (and a CronJob): allowed, never patched, whatever its template names.
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": clean}]}}}
    });
    for (kind, resource, object) in [
        (("apps", "v1", "Deployment"), "deployments", deployment),
        (
            ("batch", "v1", "CronJob"),
            "cronjobs",
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "report"},
                "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {
                    "containers": [{"name": "r", "image": clean}], "restartPolicy": "Never"}}}}}}),
        ),
    ] {
        let r = review(kind, resource, None, "CREATE", object.clone(), None, false);
        let (status, answer) = mutate(&b, serde_json::to_vec(&r).expect("json")).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["response"]["allowed"], true);
        assert_eq!(apply(&answer, &object), (object, 0), "{kind:?}");
    }

    // A dry run: the same answer, and nothing written.
    let object = pod(
        json!([{"name": "app", "image": clean}]),
        json!([]),
        json!([]),
    );
    let dry = review(
        ("", "v1", "Pod"),
        "pods",
        None,
        "CREATE",
        object.clone(),
        None,
        true,
    );
    let (status, answer) = mutate(&b, serde_json::to_vec(&dry).expect("json")).await;
    assert_eq!(status, 200, "{answer}");
    let (patched, ops) = apply(&answer, &object);
    assert_eq!(ops, 1);
    assert_eq!(
        images(&patched, "containers"),
        [format!("{reg}/lanyard/multistage-clean@{digest}")]
    );
    assert!(
        !b.audit_records()
            .iter()
            .any(|r| r["event"] == "admission_pin"),
        "a dry run writes no record"
    );
    // The same review for real is audited.
    let (_, real) = mutate(&b, serde_json::to_vec(&pod_review(object)).expect("json")).await;
    assert_eq!(real["response"], answer["response"]);
    assert!(
        b.audit_records()
            .iter()
            .any(|r| r["event"] == "admission_pin")
    );
}

/// `kubectl debug` adds an ephemeral container through the `pods/ephemeralcontainers`
/// subresource (an `UPDATE` of the running pod): the new container is pinned, and nothing
/// else is touched — rewriting a running container's image would restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_container_added_through_the_subresource_is_pinned_alone() {
    let reg = registry();
    let b = broker("", "").await;
    let app = format!("{reg}/lanyard/multistage-clean:1");
    let debug = format!("{reg}/lanyard/env-secret:1");
    let running = pod(json!([{"name": "app", "image": app}]), json!([]), json!([]));
    let mut debugged = running.clone();
    debugged["spec"]["ephemeralContainers"] =
        json!([{"name": "debugger-x7k2", "image": debug, "targetContainerName": "app"}]);
    let r = review(
        ("", "v1", "Pod"),
        "pods",
        Some("ephemeralcontainers"),
        "UPDATE",
        debugged.clone(),
        Some(running),
        false,
    );
    let (status, answer) = mutate(&b, serde_json::to_vec(&r).expect("json")).await;
    assert_eq!(status, 200, "{answer}");
    let (patched, ops) = apply(&answer, &debugged);
    assert_eq!(ops, 1, "{answer}");
    assert_eq!(
        images(&patched, "containers"),
        [app],
        "the running container is untouched"
    );
    let repo = debug.rsplit_once(':').expect("tag").0;
    assert_eq!(
        images(&patched, "ephemeralContainers"),
        [format!("{repo}@{}", registry_digest(&debug, None))]
    );
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("lanyard_admission_pinned_images_total{result=\"unchanged\"} 1"),
        "{metrics}"
    );
}

/// A TCP proxy on loopback to `target` counting the connections it takes: how often the
/// broker went to the registry.
async fn counting_proxy(target: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (addr.to_string(), count)
}

/// A Deployment scaled up creates many pods with one tag at once: the registry is asked once
/// (each manifest GET counts as a pull at registries such as Docker Hub), and every pod is
/// pinned to the same digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reviews_of_one_tag_ask_the_registry_once() {
    let (proxy, connections) = counting_proxy(registry()).await;
    let b = broker("", "").await;
    let tag = format!("{proxy}/lanyard/multistage-clean:1");
    let object = pod(json!([{"name": "app", "image": tag}]), json!([]), json!([]));
    let body = serde_json::to_vec(&pod_review(object.clone())).expect("json");
    let answers = futures_util::future::join_all((0..12).map(|_| mutate(&b, body.clone()))).await;
    let asked = connections.load(Ordering::SeqCst);
    let want = format!(
        "{proxy}/lanyard/multistage-clean@{}",
        registry_digest(&format!("{}/lanyard/multistage-clean:1", registry()), None)
    );
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(
            images(&apply(answer, &object).0, "containers"),
            std::slice::from_ref(&want)
        );
    }
    assert!(
        (1..=2).contains(&asked),
        "12 reviews of one tag took {asked} registry connections"
    );
    // Within the reuse window, another review asks nothing.
    let (_, answer) = mutate(&b, body).await;
    assert_eq!(images(&apply(&answer, &object).0, "containers"), [want]);
    assert_eq!(connections.load(Ordering::SeqCst), asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_tag_is_allowed_unpatched_with_a_warning_within_the_deadline() {
    let reg = registry();
    // A registry that accepts connections and never answers: the deadline decides.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let b = broker("", "    deadline_ms: 1500\n").await;
    let clean = format!("{reg}/lanyard/multistage-clean:1");
    let object = pod(
        json!([
            {"name": "app", "image": clean},
            {"name": "gone", "image": format!("{reg}/lanyard/no-such-image:1")},
            {"name": "hung", "image": format!("{silent_addr}/lanyard/app:1")},
            {"name": "hub", "image": "nginx:1.27"}
        ]),
        json!([]),
        json!([]),
    );
    let started = Instant::now();
    let (status, answer) = mutate(
        &b,
        serde_json::to_vec(&pod_review(object.clone())).expect("json"),
    )
    .await;
    let took = started.elapsed();
    held.abort();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"]["allowed"], true, "pinning never denies");
    assert!(
        took < Duration::from_millis(1500 + 1000),
        "answered within the deadline: {took:?}"
    );
    let (patched, ops) = apply(&answer, &object);
    assert_eq!(ops, 1, "only the tag that resolved: {answer}");
    let got = images(&patched, "containers");
    assert!(
        got[0].contains("/lanyard/multistage-clean@sha256:"),
        "{got:?}"
    );
    assert_eq!(
        &got[1..],
        &images(&object, "containers")[1..],
        "the others as written"
    );
    let warnings: Vec<&str> = answer["response"]["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w.as_str().expect("text"))
        .collect();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0].contains("container `gone`") && warnings[0].contains("manifest unknown"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("container `hung`")
            && warnings[1].contains("did not answer within 1350 ms"),
        "{}",
        warnings[1]
    );
    assert!(warnings[2].contains("no registry host"), "{}", warnings[2]);
    let rec = b
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "admission_pin")
        .expect("audited");
    assert_eq!(rec["gate"], "pin:partial");
    assert!(
        rec["reason"]
            .as_str()
            .expect("reason")
            .contains("left as tags"),
        "{rec}"
    );
    let metrics = b.metrics().await;
    assert!(
        metrics.contains("lanyard_admission_pinned_images_total{result=\"unpinned\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pinning_off_every_pod_is_allowed_without_a_patch() {
    let reg = registry();
    let b = broker("", "    pin_digests: false\n").await;
    let object = pod(
        json!([{"name": "app", "image": format!("{reg}/lanyard/multistage-clean:1")}]),
        json!([]),
        json!([]),
    );
    let (status, answer) = mutate(
        &b,
        serde_json::to_vec(&pod_review(object.clone())).expect("json"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(apply(&answer, &object), (object, 0));
    assert!(answer["response"].get("warnings").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_wrong_kind_and_unauthenticated_reviews_are_refused() {
    let b = broker("", "").await;
    let good = pod_review(pod(
        json!([{"name": "app", "image": "registry.example.com/a:1"}]),
        json!([]),
        json!([]),
    ));
    let mut wrong_kind = good.clone();
    wrong_kind["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let mut bad_spec = good.clone();
    bad_spec["request"]["object"]["spec"]["containers"] = json!("not a list");
    let mut too_many = good.clone();
    too_many["request"]["object"]["spec"]["containers"] = (0..300)
        .map(|i| json!({"name": format!("c{i}"), "image": "registry.example.com/a:1"}))
        .collect();
    for (what, body, want) in [
        ("not JSON", b"{not json".to_vec(), "not an AdmissionReview"),
        (
            "v1beta1",
            serde_json::to_vec(&wrong_kind).expect("json"),
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            "no request",
        ),
        (
            "bad pod spec",
            serde_json::to_vec(&bad_spec).expect("json"),
            "pod spec",
        ),
        (
            "300 containers",
            serde_json::to_vec(&too_many).expect("json"),
            "at most 256",
        ),
    ] {
        let (status, err) = mutate(&b, body).await;
        assert_eq!(status, 400, "{what}: {err}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(want), "{what}: {err}");
    }
    // Above the review bound: cut off unread, as the validating route does.
    let (status, err) = mutate(&b, vec![b' '; MAX_REVIEW_BYTES + 1]).await;
    assert_eq!(status, 413, "{err}");
    // Without the API server's token (an admin is not the API server): the opaque 401,
    // audited, before the body is read.
    for bearer in [None, Some(b.admin_token.as_str()), Some("guess")] {
        let mut req = b
            .http()
            .post(format!("{}/v1/admission/mutate", b.url))
            .json(&good);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status().as_u16(), 401, "{bearer:?}");
    }
    let refusals = b
        .audit_records()
        .into_iter()
        .filter(|r| {
            r["event"] == "admission"
                && r["decision"] == "deny"
                && r["reason"].as_str().is_some_and(|s| {
                    s.contains("admission caller not authenticated")
                        && s.contains("/v1/admission/mutate")
                })
        })
        .count();
    assert_eq!(refusals, 3, "each refusal is audited");
    // The refused and malformed reviews wrote no pinning record.
    assert!(
        !b.audit_records()
            .iter()
            .any(|r| r["event"] == "admission_pin")
    );
}
