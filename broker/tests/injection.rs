//! Sidecar injection at `POST /v1/admission/mutate`, through the real broker route as the API
//! server calls it, with AdmissionReview shapes from the Kubernetes documentation: an
//! annotated pod gets the native sidecar, its volumes and read-only mounts, and its tags —
//! the sidecar's own image included — pinned to the digests of the real loopback registry of
//! `tests/peers/images.sh`, all in one JSONPatch; the patched pod validates against the
//! Kubernetes schemas (`kubernetes-validate --strict`, 1.29 and the latest) and a
//! re-invocation adds nothing; a pod that cannot be injected is refused with the reason
//! (audited, counted); a broker without the `inject` section warns; a Job's pod, a Deployment.
//! The pure planner is unit-tested in `gate::inject`.

use std::process::Command;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use lanyard_test_support::broker::{TestBroker, TestBrokerOptions};
use lanyard_test_support::k8s;
use serde_json::{Value, json};

fn registry() -> String {
    match std::env::var("LANYARD_TEST_REGISTRY") {
        Ok(r) if !r.is_empty() => r,
        _ => panic!(
            "LANYARD_TEST_REGISTRY is not set: run ./test.sh, or `source tests/peers/images.sh` before `cargo test`"
        ),
    }
}

/// The digest of the manifest `reference` names, as skopeo fetches it.
fn registry_digest(reference: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo (tests/peers/images.sh installs it)");
    assert!(out.status.success(), "skopeo inspect {reference}");
    lanyard_scan::util::sha256_digest(&out.stdout)
}

const API_SERVER_TOKEN: &str = "api-server-token-for-the-injection-tests";

/// A broker with an `inject` section (`sidecar_image`) when given, whose CA file is the test
/// PKI's CA.
async fn broker(sidecar_image: Option<&str>) -> TestBroker {
    let inject = sidecar_image.map_or(String::new(), |image| {
        format!(
            "inject:\n  image: \"{image}\"\n  broker_url: https://lanyard.lanyard-system.svc:8443\n  ca_file: broker-ca.pem\n  token_expiration_seconds: 3600\n"
        )
    });
    let b = TestBroker::start_with(
        None,
        TestBrokerOptions {
            extra_config: format!(
                "gate:\n  insecure_loopback_registries: true\n  admission:\n    token_file: admission-token\n{inject}"
            ),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    std::fs::write(b.dir().join("admission-token"), API_SERVER_TOKEN).expect("token file");
    // Re-read at every injection: written after the start is soon enough.
    std::fs::copy(b.pki.ca_path(), b.dir().join("broker-ca.pem")).expect("ca");
    b
}

/// An AdmissionReview as the Kubernetes documentation shows it
/// (`/docs/reference/access-authn-authz/extensible-admission-controllers/`, "Request").
fn review(kind: (&str, &str, &str), resource: &str, object: Value, dry_run: bool) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": kind.0, "version": kind.1, "kind": kind.2},
        "resource": {"group": kind.0, "version": kind.1, "resource": resource},
        "requestKind": {"group": kind.0, "version": kind.1, "kind": kind.2},
        "requestResource": {"group": kind.0, "version": kind.1, "resource": resource},
        "name": object["metadata"]["name"],
        "namespace": "shop",
        "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "014fbff9a07c",
            "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": object,
        "oldObject": null,
        "dryRun": dry_run,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
    }})
}

async fn mutate(b: &TestBroker, review: &Value) -> Value {
    let resp = b
        .http()
        .post(format!("{}/v1/admission/mutate", b.url))
        .bearer_auth(API_SERVER_TOKEN)
        .json(review)
        .send()
        .await
        .expect("mutate");
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.expect("json")
}

/// The answer's patch applied to `object` as the API server does (base64, RFC 6902).
fn apply(answer: &Value, object: &Value) -> (Value, usize) {
    let response = &answer["response"];
    let Some(patch) = response["patch"].as_str() else {
        assert!(response.get("patchType").is_none(), "{answer}");
        return (object.clone(), 0);
    };
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("an RFC 6902 patch");
    let mut doc = object.clone();
    json_patch::patch(&mut doc, &patch).expect("the patch applies");
    (doc, patch.0.len())
}

/// A Deployment's pod as the ReplicaSet controller creates it (the shape of the Kubernetes
/// documentation's `nginx-deployment`), annotated for injection, with a migration init
/// container.
fn web_pod(reg: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-7d4b9c8f6-x2x9q", "namespace": "shop",
            "generateName": "web-7d4b9c8f6-",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c8f6"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f6",
                "uid": "0c9e8b2a-5d7f-4e1a-9b3c-2f6d8e4a1b7c", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {
            "serviceAccountName": "web",
            "initContainers": [{"name": "migrate", "image": format!("{reg}/lanyard/env-secret:1"),
                "command": ["/bin/sh", "-c", "test -s /run/secrets/db/password"]}],
            "containers": [{"name": "app", "image": format!("{reg}/lanyard/multistage-clean:1"),
                "ports": [{"containerPort": 80}],
                "volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}]
        }
    })
}

/// Validates `pod` with `kubernetes-validate --strict` at 1.29 and at the latest schema
/// (skipped loudly outside test.sh when the tool is missing).
fn validate_pod(pod: &Value) {
    let Some(tool) = k8s::kubernetes_validate() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("pod.json");
    std::fs::write(&file, serde_json::to_vec_pretty(pod).expect("json")).expect("write");
    let latest = k8s::latest_schema_version(&tool);
    for version in [k8s::MIN_KUBERNETES, latest.as_str()] {
        k8s::validate(&tool, version, &[&file]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_pod_gets_the_sidecar_and_its_tags_pinned_in_one_patch_that_validates() {
    let reg = registry();
    let sidecar = format!("{reg}/lanyard/multistage-clean:1");
    let b = broker(Some(&sidecar)).await;
    let object = web_pod(
        &reg,
        json!({
            "lanyard.dev/inject": "true",
            "lanyard.dev/roles": "app-db",
            "lanyard.dev/target-db": "role=app-db,field=password,path=db/password",
            "lanyard.dev/notify-signal": "HUP",
            "lanyard.dev/notify-pid-file": "/run/app/app.pid"
        }),
    );
    let answer = mutate(
        &b,
        &review(("", "v1", "Pod"), "pods", object.clone(), false),
    )
    .await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(answer["response"].get("warnings").is_none(), "{answer}");
    let (patched, _) = apply(&answer, &object);
    let pod: Pod = serde_json::from_value(patched.clone()).expect("a Pod");
    let spec = pod.spec.expect("spec");
    let init = spec.init_containers.expect("init");
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["lanyard", "migrate"], "the sidecar first");
    let digest = registry_digest(&sidecar);
    // The sidecar's image came in as a tag and left pinned, like the app's.
    assert_eq!(
        init[0].image.as_deref(),
        Some(format!("{reg}/lanyard/multistage-clean@{digest}").as_str())
    );
    assert_eq!(
        spec.containers[0].image.as_deref(),
        Some(format!("{reg}/lanyard/multistage-clean@{digest}").as_str())
    );
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    for c in [&init[1], &spec.containers[0]] {
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "lanyard-secrets"
                    && m.mount_path == "/run/secrets"
                    && m.read_only == Some(true)),
            "{}",
            c.name
        );
    }
    assert_eq!(
        patched["metadata"]["annotations"]["lanyard.dev/broker-ca"],
        std::fs::read_to_string(b.pki.ca_path()).expect("ca")
    );
    let token = spec
        .volumes
        .expect("volumes")
        .into_iter()
        .find(|v| v.name == "lanyard-token");
    let sources = token
        .and_then(|v| v.projected)
        .and_then(|p| p.sources)
        .expect("sources");
    let sat = sources[0].service_account_token.as_ref().expect("token");
    assert_eq!(
        (sat.audience.as_deref(), sat.expiration_seconds),
        (Some("lanyard"), Some(3600))
    );
    validate_pod(&patched);

    // Re-invoked (reinvocationPolicy: IfNeeded) on its own output: nothing to add.
    let again = mutate(
        &b,
        &review(("", "v1", "Pod"), "pods", patched.clone(), false),
    )
    .await;
    assert_eq!(apply(&again, &patched), (patched.clone(), 0), "{again}");

    let records = b.audit_records();
    let rec = records
        .iter()
        .find(|r| r["event"] == "admission_inject")
        .expect("an admission_inject record");
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["gate"], "inject:injected");
    let reason = rec["reason"].as_str().expect("reason");
    assert!(
        reason.contains("pod shop/web-7d4b9c8f6-x2x9q")
            && reason.contains("roles app-db")
            && reason.contains("targets db"),
        "{reason}"
    );
    assert!(
        !reason.contains("password,path"),
        "names, not values: {reason}"
    );
    let metrics = b.metrics().await;
    for want in [
        "lanyard_admission_injections_total{result=\"injected\"} 1",
        "lanyard_admission_injections_total{result=\"reinvoked\"} 1",
    ] {
        assert!(metrics.contains(want), "{want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_cannot_be_injected_is_refused_with_the_reason_and_audited() {
    let reg = registry();
    let b = broker(Some(&format!("{reg}/lanyard/multistage-clean:1"))).await;
    let mut object = web_pod(&reg, json!({"lanyard.dev/inject": "true"}));
    object["spec"]["volumes"]
        .as_array_mut()
        .expect("volumes")
        .push(json!({"name": "lanyard-secrets", "emptyDir": {}}));
    let answer = mutate(
        &b,
        &review(("", "v1", "Pod"), "pods", object.clone(), false),
    )
    .await;
    let response = &answer["response"];
    assert_eq!(response["allowed"], false, "{answer}");
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["status"]["code"], 403);
    let message = response["status"]["message"].as_str().expect("message");
    assert!(
        message.contains("volume named `lanyard-secrets`"),
        "{message}"
    );
    assert!(response.get("patch").is_none());

    // A bad annotation: refused at admission, not a pod stuck in Init.
    let object = web_pod(
        &reg,
        json!({"lanyard.dev/inject": "true", "lanyard.dev/target-db": "role=app-db,path=/etc/passwd"}),
    );
    let answer = mutate(&b, &review(("", "v1", "Pod"), "pods", object.clone(), true)).await;
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"]
        .as_str()
        .expect("message");
    assert!(
        message.contains("annotation lanyard.dev/target-db"),
        "{message}"
    );

    let records: Vec<Value> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "admission_inject")
        .collect();
    assert_eq!(records.len(), 1, "the dry run is not recorded: {records:?}");
    assert_eq!(records[0]["decision"], "deny");
    assert_eq!(records[0]["gate"], "inject:refused");
    assert!(
        b.metrics()
            .await
            .contains("lanyard_admission_injections_total{result=\"refused\"} 2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_pods_are_injected_templates_are_not_and_a_broker_without_inject_warns() {
    let reg = registry();
    let sidecar = format!("{reg}/lanyard/multistage-clean:1");
    let b = broker(Some(&sidecar)).await;
    // A Job's pod (the documentation's `pi`), restartPolicy Never: the native sidecar is
    // ended by the kubelet when `pi` exits, so the Job completes.
    let job_pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pi-x7k2p", "generateName": "pi-", "namespace": "shop",
            "labels": {"batch.kubernetes.io/job-name": "pi"},
            "annotations": {"lanyard.dev/inject": "true", "lanyard.dev/roles": "reports"},
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "pi",
                "uid": "d2e3b1f0-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": format!("{reg}/lanyard/env-secret:1"),
            "command": ["perl", "-Mbignum=bpi", "-wle", "print bpi(2000)"]}]}
    });
    let answer = mutate(
        &b,
        &review(("", "v1", "Pod"), "pods", job_pod.clone(), false),
    )
    .await;
    let (patched, _) = apply(&answer, &job_pod);
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "lanyard");
    assert_eq!(
        patched["spec"]["initContainers"][0]["restartPolicy"],
        "Always"
    );
    assert_eq!(patched["spec"]["restartPolicy"], "Never");
    validate_pod(&patched);

    // The Job itself: its template is never patched; its pods are, when created.
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "pi", "namespace": "shop"},
        "spec": {"template": {"metadata": {"annotations": {"lanyard.dev/inject": "true"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "perl:5.34.0"}]}}}});
    let answer = mutate(
        &b,
        &review(("batch", "v1", "Job"), "jobs", job.clone(), false),
    )
    .await;
    assert_eq!(apply(&answer, &job), (job, 0));

    // A broker without the inject section: allowed, pinned, not injected, with a warning.
    let off = broker(None).await;
    let object = web_pod(&reg, json!({"lanyard.dev/inject": "true"}));
    let answer = mutate(
        &off,
        &review(("", "v1", "Pod"), "pods", object.clone(), false),
    )
    .await;
    assert_eq!(answer["response"]["allowed"], true);
    let warnings = answer["response"]["warnings"].as_array().expect("warnings");
    assert!(
        warnings[0]
            .as_str()
            .expect("w")
            .contains("no `inject` section"),
        "{warnings:?}"
    );
    let (patched, ops) = apply(&answer, &object);
    assert_eq!(ops, 2, "the two tags pinned, nothing injected");
    assert_eq!(
        patched["spec"]["initContainers"].as_array().map(Vec::len),
        Some(1)
    );
}
