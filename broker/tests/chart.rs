//! The Helm chart `charts/lanyard`, checked with the real tools of `tests/peers/k8s-tools.sh`
//! and against a live broker: `helm lint`; `helm template` with the default values and with
//! `ci/full-values.yaml`; every rendered core object validated offline by
//! `kubernetes-validate --strict` at Kubernetes 1.29 (the chart's minimum) and at the latest
//! schema; the kinds it has no schema for by other means (`promtool check rules` for the
//! PrometheusRule; every metric the alerts and the dashboard name present in a live broker's
//! `/metrics`); the webhook configurations' paths answered by the broker's routes; the
//! policies ConfigMap through `lanyard-broker policy check`; the config ConfigMap loaded by the
//! broker's own parser; and the annotated example pod injected through the real mutate route
//! and validated.
//!
//! Outside `./test.sh`, a test whose tool is missing skips with a loud message; under
//! `./test.sh` it fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use lanyard_broker::config::BrokerConfig;
use lanyard_test_support::broker::{TestBroker, TestBrokerOptions};
use lanyard_test_support::k8s;
use lanyard_test_support::{OidcIssuer, VaultEmulator};
use serde_json::{Value, json};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/lanyard")
}

const NAMESPACE: &str = "lanyard-system";

/// `helm template` with the values files given; the objects it renders, as JSON.
fn render(helm: &str, values: &[&str]) -> (String, Vec<Value>) {
    let chart = chart();
    let mut args = vec![
        "template".to_owned(),
        "lanyard".to_owned(),
        chart.display().to_string(),
        "--namespace".to_owned(),
        NAMESPACE.to_owned(),
    ];
    for v in values {
        args.push("-f".into());
        args.push(chart.join(v).display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = k8s::run(helm, &args);
    let objects = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml_ng::Value =
                serde::Deserialize::deserialize(d).expect("helm renders YAML");
            serde_json::to_value(v).expect("JSON-compatible")
        })
        .filter(|v: &Value| !v.is_null())
        .collect();
    (text, objects)
}

fn kind_of(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

fn find<'a>(objects: &'a [Value], kind: &str, name_suffix: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            kind_of(o) == kind
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(name_suffix))
        })
        .unwrap_or_else(|| panic!("no {kind} named *{name_suffix}"))
}

/// Kinds `kubernetes-validate` has no schema for (CRDs), checked by other means below.
const CRD_KINDS: &[&str] = &["ServiceMonitor", "PrometheusRule", "Certificate"];

#[test]
fn the_chart_lints_and_every_rendered_object_validates_at_1_29_and_the_latest_kubernetes() {
    let (Some(helm), Some(validate)) = (k8s::helm(), k8s::kubernetes_validate()) else {
        return;
    };
    let chart = chart();
    k8s::run(&helm, &["lint", "--strict", &chart.display().to_string()]);
    let full = chart.join("ci/full-values.yaml");
    k8s::run(
        &helm,
        &[
            "lint",
            "--strict",
            &chart.display().to_string(),
            "-f",
            &full.display().to_string(),
        ],
    );
    let dir = tempfile::tempdir().expect("tmp");
    let latest = k8s::latest_schema_version(&validate);
    for (label, values) in [("default", vec![]), ("full", vec!["ci/full-values.yaml"])] {
        let (_, objects) = render(&helm, &values);
        let kinds: BTreeSet<&str> = objects.iter().map(kind_of).collect();
        if label == "full" {
            for k in [
                "Deployment",
                "Service",
                "ServiceAccount",
                "ConfigMap",
                "Role",
                "RoleBinding",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "ValidatingWebhookConfiguration",
                "MutatingWebhookConfiguration",
                "Certificate",
                "ServiceMonitor",
                "PrometheusRule",
            ] {
                assert!(kinds.contains(k), "full values render no {k}: {kinds:?}");
            }
        }
        let mut files = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            if CRD_KINDS.contains(&kind_of(o)) {
                continue;
            }
            let f = dir.path().join(format!("{label}-{i}.json"));
            std::fs::write(&f, serde_json::to_vec_pretty(o).expect("json")).expect("write");
            files.push(f);
        }
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        for version in [k8s::MIN_KUBERNETES, latest.as_str()] {
            k8s::validate(&validate, version, &refs);
        }
    }

    // The schema turns a typo into an install error, and the chart's own checks fail early.
    let typo = dir.path().join("typo.yaml");
    for (values, want) in [
        (
            "webhook:\n  enabled: true\n",
            "additional properties 'webhook'",
        ),
        ("inject:\n  tokenExpirationSeconds: 300\n", "minimum"),
        ("replicaCount: 2\n", "needs a shared store"),
        (
            "tls:\n  caBundle: Zm9v\nwebhooks:\n  validating:\n    enabled: true\n",
            "apiServerAuth",
        ),
        (
            "inject:\n  enabled: true\n",
            "inject.enabled needs webhooks.mutating.enabled",
        ),
        (
            "revocation:\n  podWatch:\n    enabled: true\n",
            "revocation.podWatch.enabled needs gate.podLookup.enabled",
        ),
    ] {
        std::fs::write(&typo, values).expect("write");
        let out = Command::new(&helm)
            .args(["template", "x"])
            .arg(&chart)
            .arg("-f")
            .arg(&typo)
            .output()
            .expect("helm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(want),
            "{values}: {stderr}"
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool() {
    let (Some(helm), Some(promtool)) = (k8s::helm(), k8s::promtool()) else {
        return;
    };
    let (_, objects) = render(&helm, &["ci/full-values.yaml"]);
    let rule = find(&objects, "PrometheusRule", "lanyard");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, serde_json::to_vec(&rule["spec"]).expect("json")).expect("write");
    let out = k8s::run(&promtool, &["check", "rules", &file.display().to_string()]);
    assert!(out.contains("SUCCESS"), "{out}");
    let groups = rule["spec"]["groups"].as_array().expect("groups");
    assert!(groups[0]["rules"].as_array().expect("rules").len() >= 5);
}

/// Every `lanyard_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("lanyard_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // `lanyard_` inside a longer identifier (e.g. a label value) is not a metric.
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_name_is_exported_and_the_webhook_paths_are_served() {
    let Some(helm) = k8s::helm() else {
        return;
    };
    let (_, objects) = render(&helm, &["ci/full-values.yaml"]);
    let rule = find(&objects, "PrometheusRule", "lanyard");
    let dashboard = find(&objects, "ConfigMap", "-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard_json: Value =
        serde_json::from_str(dashboard["data"]["lanyard.json"].as_str().expect("json"))
            .expect("the dashboard is JSON");
    let mut exprs = String::new();
    for p in dashboard_json["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    for g in rule["spec"]["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            exprs.push_str(r["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    let named = metric_names(&exprs);
    assert!(named.len() >= 15, "{named:?}");

    // A live broker with a real OIDC issuer and a Vault backend (the emulator), driven
    // through the paths that give each labelled family a sample.
    let issuer = OidcIssuer::start().await;
    let vault = VaultEmulator::start().await;
    vault.put_kv("secret", "apps/shop/db", json!({"password": "s3cr3t-pass"}));
    vault.enable_approle("approle", "role-123", "secret-456", 3600);
    let tmp = tempfile::tempdir().expect("tmp");
    let secret_id = tmp.path().join("secret-id");
    std::fs::write(&secret_id, "secret-456\n").expect("secret id");
    let b = TestBroker::start_with(
        Some(&issuer),
        TestBrokerOptions {
            policies: vec![("policy.yaml".into(), VAULT_POLICY.into())],
            extra_config: format!(
                "gate:\n  admission:\n    token_file: admission-token\nbackends:\n  vault:\n    \
                 address: \"{}\"\n    auth:\n      approle:\n        role_id: role-123\n        \
                 secret_id_file: \"{}\"\n",
                vault.url,
                secret_id.display()
            ),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    std::fs::write(b.dir().join("admission-token"), "api-server").expect("token");
    drive(&b, &issuer).await;
    let exported = metric_names(&b.metrics().await);
    let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named by the alerts or the dashboard but not exported: {missing:?}\nexported: {exported:?}"
    );

    // The webhooks call routes the broker serves: without the API server's credential the
    // route refuses (401), where a route that does not exist would be a 404.
    let service = find(&objects, "Service", "lanyard");
    let port = service["spec"]["ports"][0]["port"].as_u64().expect("port");
    let deployment = find(&objects, "Deployment", "lanyard");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["containerPort"].as_u64(), Some(port));
    for kind in [
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    ] {
        let hooks = find(&objects, kind, "lanyard")["webhooks"]
            .as_array()
            .expect("webhooks")
            .clone();
        for hook in hooks {
            let svc = &hook["clientConfig"]["service"];
            assert_eq!(svc["name"], service["metadata"]["name"]);
            assert_eq!(svc["namespace"], NAMESPACE);
            assert_eq!(svc["port"].as_u64(), Some(port));
            let path = svc["path"].as_str().expect("path");
            let resp = b
                .http()
                .post(format!("{}{path}", b.url))
                .json(&json!({}))
                .send()
                .await
                .expect("post");
            assert_eq!(resp.status().as_u16(), 401, "{kind} {path}");
            assert!(
                hook["timeoutSeconds"].as_u64().expect("timeout") * 1000 > 8000,
                "above the broker's decision deadline"
            );
            let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
            assert_eq!(excluded["operator"], "NotIn");
            assert!(
                excluded["values"]
                    .as_array()
                    .expect("values")
                    .contains(&json!(NAMESPACE)),
                "the broker's own namespace is excluded"
            );
            if kind == "MutatingWebhookConfiguration" {
                assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
            }
        }
    }
    // The probes ask the broker's real health routes.
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        assert_eq!(container[probe]["httpGet"]["path"], path);
        let resp = b
            .http()
            .get(format!("{}{path}", b.url))
            .send()
            .await
            .expect("probe");
        assert_eq!(resp.status().as_u16(), 200, "{probe} {path}");
    }
}

const VAULT_POLICY: &str = r#"
roles:
  db-password:
    backend: vault
    scope: [password]
    max_ttl_seconds: 3600
    settings: {kind: kv2, path: "apps/{{namespace}}/db"}
rules:
  - name: shop
    match: {namespace: shop, service_account: api}
    roles: [db-password]
"#;

/// Requests that give the families the alerts and dashboard name a sample each.
async fn drive(b: &TestBroker, issuer: &OidcIssuer) {
    let http = b.http();
    // An issuance through Vault (issuance, upstream call, gate decision) and an
    // unauthenticated one (a denial, an error code).
    let token = issuer.k8s_token("shop", "api", "lanyard", 600);
    let (status, body) = b.post_credentials(Some(&token), "{}").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = b.post_credentials(Some("not-a-token"), "{}").await;
    assert_eq!(status, 401);
    // Admission: a decision (validate) and an injection asked of a broker without `inject`.
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop", "uid": "4b1e1c4e-0000-4000-8000-000000000001",
            "annotations": {"lanyard.dev/inject": "true"}},
        "spec": {"containers": [{"name": "a", "image": "registry.example.com/a@sha256:0000000000000000000000000000000000000000000000000000000000000001"}]}});
    let review = lanyard_test_support::admission::Review::create(
        lanyard_test_support::admission::POD,
        "shop",
        "p",
        pod,
    )
    .to_json();
    for route in ["/v1/admission/validate", "/v1/admission/mutate"] {
        let resp = http
            .post(format!("{}{route}", b.url))
            .bearer_auth("api-server")
            .json(&review)
            .send()
            .await
            .expect("review");
        assert_eq!(resp.status().as_u16(), 200, "{route}");
    }
    // A policy change, reloaded (admin).
    std::fs::write(
        b.policies_dir.join("more.yaml"),
        "roles:\n  extra:\n    backend: jwt\n    max_ttl_seconds: 60\nrules: []\n",
    )
    .expect("policy");
    let resp = http
        .post(format!("{}/v1/admin/reload", b.url))
        .bearer_auth(&b.admin_token)
        .send()
        .await
        .expect("reload");
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn the_policies_configmap_passes_policy_check_and_the_config_configmap_loads() {
    let Some(helm) = k8s::helm() else {
        return;
    };
    for values in [vec![], vec!["ci/full-values.yaml"]] {
        let (_, objects) = render(&helm, &values);
        let dir = tempfile::tempdir().expect("tmp");
        let policies = find(&objects, "ConfigMap", "-policies");
        let files = policies["data"].as_object().expect("data");
        assert!(!files.is_empty());
        let pdir = dir.path().join("policies");
        std::fs::create_dir(&pdir).expect("dir");
        for (name, text) in files {
            std::fs::write(pdir.join(name), text.as_str().expect("text")).expect("write");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_lanyard-broker"))
            .args(["policy", "check"])
            .arg(&pdir)
            .output()
            .expect("lanyard-broker");
        assert!(
            out.status.success(),
            "policy check {values:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let config = find(&objects, "ConfigMap", "-config");
        let file = dir.path().join("broker.yaml");
        std::fs::write(&file, config["data"]["broker.yaml"].as_str().expect("yaml"))
            .expect("write");
        match BrokerConfig::load(&file, std::iter::empty()) {
            Ok(cfg) => {
                if values.is_empty() {
                    assert!(cfg.inject.is_none());
                    assert_eq!(
                        (cfg.audit.sink.as_str(), cfg.backends.replicas),
                        ("stdout", 1)
                    );
                    assert!(cfg.signing.kek_file.is_none());
                } else {
                    // Three replicas on PostgreSQL: audit in the database, a third of the
                    // upstream limits each.
                    assert_eq!(
                        (cfg.audit.sink.as_str(), cfg.backends.replicas),
                        ("store", 3)
                    );
                    // The signing keys sealed under the KEK Secret the chart mounts.
                    assert_eq!(
                        cfg.signing.kek_file.as_deref(),
                        Some(std::path::Path::new("/etc/lanyard/kek/kek"))
                    );
                    let inject = cfg.inject.expect("inject");
                    assert_eq!(inject.broker_url, cfg.public_url);
                    assert_eq!(inject.token_expiration_seconds, 900);
                }
            }
            Err(e) => panic!("the chart's broker config ({values:?}) does not load: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_annotated_example_pod_is_injected_and_validates() {
    let Some(helm) = k8s::helm() else {
        return;
    };
    // The broker's `inject` section as the chart renders it with the full values.
    let (_, objects) = render(&helm, &["ci/full-values.yaml"]);
    let config = find(&objects, "ConfigMap", "-config");
    let rendered: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(config["data"]["broker.yaml"].as_str().expect("yaml"))
            .expect("yaml");
    let mut inject = serde_json::to_value(&rendered["inject"]).expect("json");
    inject["ca_file"] = json!("broker-ca.pem");
    let inject_yaml = serde_yaml_ng::to_string(&json!({"inject": inject})).expect("yaml");
    let b = TestBroker::start_with(
        None,
        TestBrokerOptions {
            extra_config: format!(
                "gate:\n  admission:\n    token_file: admission-token\n    pin_digests: false\n{inject_yaml}"
            ),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    std::fs::write(b.dir().join("admission-token"), "api-server").expect("token");
    std::fs::copy(b.pki.ca_path(), b.dir().join("broker-ca.pem")).expect("ca");

    let example =
        std::fs::read_to_string(chart().join("examples/annotated-pod.yaml")).expect("example");
    let pod: serde_yaml_ng::Value = serde_yaml_ng::from_str(&example).expect("yaml");
    let pod = serde_json::to_value(pod).expect("json");
    let review = lanyard_test_support::admission::Review::create(
        lanyard_test_support::admission::POD,
        "shop",
        pod["metadata"]["name"].as_str().expect("name"),
        pod.clone(),
    )
    .to_json();
    let answer: Value = b
        .http()
        .post(format!("{}/v1/admission/mutate", b.url))
        .bearer_auth("api-server")
        .json(&review)
        .send()
        .await
        .expect("mutate")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    use base64::Engine as _;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().expect("a patch"))
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("patch");
    let mut doc = pod.clone();
    json_patch::patch(&mut doc, &patch).expect("applies");
    assert_eq!(doc["spec"]["initContainers"][0]["name"], "lanyard");
    assert_eq!(
        doc["spec"]["initContainers"][0]["image"],
        rendered["inject"]["image"].as_str().expect("image")
    );
    let Some(validate) = k8s::kubernetes_validate() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("pod.json");
    std::fs::write(&file, serde_json::to_vec(&doc).expect("json")).expect("write");
    let latest = k8s::latest_schema_version(&validate);
    for version in [k8s::MIN_KUBERNETES, latest.as_str()] {
        k8s::validate(&validate, version, &[&file]);
    }
}

/// Issue 16: the broker lists and watches pods only where revocation on pod deletion is on
/// (one ClusterRole: the watch covers every namespace), and the namespaced pod readers keep
/// `get` alone; the config turns the watch on.
#[test]
fn pods_are_listed_and_watched_only_where_revocation_on_pod_deletion_is_on() {
    let Some(helm) = k8s::helm() else {
        return;
    };
    let verbs = |objects: &[Value]| -> BTreeSet<String> {
        objects
            .iter()
            .filter(|o| matches!(kind_of(o), "Role" | "ClusterRole"))
            .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["verbs"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let (_, default) = render(&helm, &[]);
    assert!(verbs(&default).is_empty(), "{:?}", verbs(&default));
    let config = |objects: &[Value]| -> serde_yaml_ng::Value {
        let cm = find(objects, "ConfigMap", "-config");
        serde_yaml_ng::from_str(cm["data"]["broker.yaml"].as_str().expect("yaml")).expect("yaml")
    };
    assert!(config(&default).get("revocation").is_none());

    let (_, full) = render(&helm, &["ci/full-values.yaml"]);
    let watcher = find(&full, "ClusterRole", "-pod-watcher");
    assert_eq!(
        watcher["rules"],
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}])
    );
    let binding = find(&full, "ClusterRoleBinding", "-pod-watcher");
    assert_eq!(binding["roleRef"]["name"], watcher["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    for role in full.iter().filter(|o| kind_of(o) == "Role") {
        assert_eq!(role["rules"][0]["verbs"], json!(["get"]), "{role}");
    }
    assert_eq!(
        config(&full)["revocation"]["revoke_on_pod_deletion"],
        serde_yaml_ng::Value::Bool(true)
    );
}
