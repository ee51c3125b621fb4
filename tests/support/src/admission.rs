//! `AdmissionReview` requests shaped as the Kubernetes documentation shows them
//! (`/docs/reference/access-authn-authz/extensible-admission-controllers/`, "Request" — an
//! `admission.k8s.io/v1` review of a Pod, a Pod's `ephemeralcontainers` subresource, or a
//! workload carrying a pod template), and an HTTPS client that calls the broker's admission
//! routes as the API server does: with a client certificate from the API server's own CA.

use std::path::Path;

use serde_json::{Value, json};

use crate::TestPki;

/// A `kind`/`resource` pair of the review: (group, version, kind, resource).
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Plural resource.
    pub resource: &'static str,
}

/// `v1` `Pod`.
pub const POD: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Pod",
    resource: "pods",
};
/// `apps/v1` `Deployment`.
pub const DEPLOYMENT: Kind = Kind {
    group: "apps",
    version: "v1",
    kind: "Deployment",
    resource: "deployments",
};
/// `batch/v1` `CronJob`.
pub const CRONJOB: Kind = Kind {
    group: "batch",
    version: "v1",
    kind: "CronJob",
    resource: "cronjobs",
};

/// One review request's variable parts.
#[derive(Debug, Clone)]
pub struct Review {
    /// What is admitted.
    pub kind: Kind,
    /// `CREATE` or `UPDATE`.
    pub operation: &'static str,
    /// A subresource (`ephemeralcontainers`).
    pub sub_resource: Option<&'static str>,
    /// Namespace.
    pub namespace: String,
    /// Object name (`""` for a pod named by `generateName`).
    pub name: String,
    /// The object.
    pub object: Value,
    /// The object before an UPDATE.
    pub old_object: Option<Value>,
    /// `dryRun`.
    pub dry_run: bool,
}

impl Review {
    /// A `CREATE` of `object` (of `kind`) in `namespace`, named `name`.
    pub fn create(kind: Kind, namespace: &str, name: &str, object: Value) -> Self {
        Self {
            kind,
            operation: "CREATE",
            sub_resource: None,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            object,
            old_object: None,
            dry_run: false,
        }
    }

    /// The review's JSON body, with a fresh `request.uid`.
    pub fn to_json(&self) -> Value {
        let k = self.kind;
        let gvk = json!({"group": k.group, "version": k.version, "kind": k.kind});
        let gvr = json!({"group": k.group, "version": k.version, "resource": k.resource});
        let options_kind = if self.operation == "CREATE" {
            "CreateOptions"
        } else {
            "UpdateOptions"
        };
        let mut request = json!({
            "uid": uuid(),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": self.name,
            "namespace": self.namespace,
            "operation": self.operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "014fbff9a07c",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": self.object,
            "oldObject": self.old_object.clone().unwrap_or(Value::Null),
            "dryRun": self.dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind}
        });
        if let Some(s) = self.sub_resource {
            request["subResource"] = json!(s);
            request["requestSubResource"] = json!(s);
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
    }
}

/// A container `{name, image}`.
pub fn container(name: &str, image: &str) -> Value {
    json!({"name": name, "image": image, "imagePullPolicy": "IfNotPresent",
           "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"})
}

/// A pod spec with these init containers and containers.
pub fn pod_spec(init: &[Value], containers: &[Value]) -> Value {
    let mut spec = json!({
        "containers": containers,
        "restartPolicy": "Always",
        "serviceAccountName": "api",
        "dnsPolicy": "ClusterFirst"
    });
    if !init.is_empty() {
        spec["initContainers"] = json!(init);
    }
    spec
}

/// A Pod object as the validating webhook sees it: `metadata.uid` filled by the API server.
pub fn pod(namespace: &str, name: &str, uid: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid,
                     "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"app": name}},
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "BestEffort"}
    })
}

/// A Deployment whose pod template has `spec`.
pub fn deployment(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec}
        }
    })
}

/// A CronJob whose job's pod template has `spec`.
pub fn cronjob(namespace: &str, name: &str, spec: Value) -> Value {
    let mut spec = spec;
    spec["restartPolicy"] = json!("OnFailure");
    json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": spec}}}}
    })
}

/// A random RFC 4122 version-4 UUID, as the API server gives objects and requests.
pub fn uuid() -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("random");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// An HTTPS client trusting the broker's CA at `broker_ca` and presenting a client
/// certificate issued by `apiserver_ca` (the API server's own CA, configured in the broker
/// as `gate.admission.client_ca_file`), with common name `kube-apiserver`.
pub fn apiserver_client(broker_ca: &Path, apiserver_ca: &TestPki) -> reqwest::Client {
    let (cert, key) = apiserver_ca.client_cert("kube-apiserver", "apiserver-client");
    client_with_identity(broker_ca, &cert, &key)
}

/// An HTTPS client trusting `broker_ca` and presenting the certificate `cert` (key `key`).
pub fn client_with_identity(broker_ca: &Path, cert: &Path, key: &Path) -> reqwest::Client {
    let mut pem = std::fs::read(cert).expect("client certificate");
    pem.extend(std::fs::read(key).expect("client key"));
    let ca = std::fs::read(broker_ca).expect("broker CA");
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("pem"))
        .identity(reqwest::Identity::from_pem(&pem).expect("identity"))
        .build()
        .expect("client")
}
