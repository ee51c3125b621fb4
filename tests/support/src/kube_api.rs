//! [`KubeApi`]: an emulator of the one Kubernetes API server path the broker calls, since no
//! API server runs here: `GET /api/v1/namespaces/{namespace}/pods/{name}` over HTTPS (the
//! server certificate of a [`TestPki`]), answering exactly in the documented wire format —
//! a `v1.Pod` ([`TestPod::to_json`]), or a `v1.Status` (`kind: Status`, `apiVersion: v1`,
//! `status: Failure`, `reason`, `code`, `details`) for a missing pod (`NotFound`, 404), a
//! missing or wrong bearer token (`Unauthorized`, 401) or a failure the test asks for
//! (`InternalError`, 500). It can also hang (the broker's deadline must answer).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::TestPki;

/// How the emulator answers every request, whatever it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeFailure {
    /// Normally.
    None,
    /// `500` with a `v1.Status` `InternalError` (e.g. etcd down).
    InternalError,
    /// `503` with a `v1.Status` `ServiceUnavailable`.
    Unavailable,
    /// No answer for a minute.
    Hang,
    /// `403` with a `v1.Status` `Forbidden`, as RBAC answers a service account without
    /// `get` on `pods` (after the token was checked).
    Forbidden,
}

struct Shared {
    token: Mutex<String>,
    pods: Mutex<HashMap<(String, String), Value>>,
    failure: Mutex<KubeFailure>,
    requests: AtomicUsize,
}

/// The emulator. Stops when dropped.
pub struct KubeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeApi {
    /// Starts one on `127.0.0.1:0` serving the server certificate of `pki`, accepting
    /// `Authorization: Bearer <token>` only.
    pub async fn start(pki: &TestPki, token: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the API server emulator");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            token: Mutex::new(token.to_owned()),
            pods: Mutex::new(HashMap::new()),
            failure: Mutex::new(KubeFailure::None),
            requests: AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .route("/api/v1/namespaces/{namespace}/pods/{name}", get(get_pod))
            .fallback(not_found_path)
            .with_state(shared.clone());
        let task = tokio::spawn(crate::oidc::serve_tls(
            listener,
            router,
            crate::pki::server_config(pki),
        ));
        Self { shared, addr, task }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Creates or replaces a pod (keyed by its `metadata.namespace` and `metadata.name`).
    pub fn set_pod(&self, pod: &TestPod) {
        lock(&self.shared.pods).insert((pod.namespace.clone(), pod.name.clone()), pod.to_json());
    }

    /// Deletes a pod; whether it existed.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        lock(&self.shared.pods)
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_some()
    }

    /// Makes every answer fail (or not).
    pub fn set_failure(&self, failure: KubeFailure) {
        *lock(&self.shared.failure) = failure;
    }

    /// Replaces the token it accepts (the broker's becomes wrong).
    pub fn set_token(&self, token: &str) {
        *lock(&self.shared.token) = token.to_owned();
    }

    /// Requests received so far (any path, any answer).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A `v1.Status` failure body, as the API server writes it.
fn status(code: StatusCode, reason: &str, message: String, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn not_found_path(State(shared): State<Arc<Shared>>) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

async fn get_pod(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let failure = *lock(&shared.failure);
    match failure {
        KubeFailure::None | KubeFailure::Forbidden => {}
        KubeFailure::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        KubeFailure::InternalError => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "Internal error occurred: etcdserver: request timed out".into(),
                None,
            );
        }
        KubeFailure::Unavailable => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the server is currently unable to handle the request".into(),
                None,
            );
        }
    }
    let want = format!("Bearer {}", lock(&shared.token));
    let authorized = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == want);
    if !authorized {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
            None,
        );
    }
    if failure == KubeFailure::Forbidden {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "pods \"{name}\" is forbidden: User \"system:serviceaccount:lanyard:lanyard-broker\" \
                 cannot get resource \"pods\" in API group \"\" in the namespace \"{namespace}\""
            ),
            Some(json!({"name": name, "kind": "pods"})),
        );
    }
    let pod = lock(&shared.pods)
        .get(&(namespace.clone(), name.clone()))
        .cloned();
    match pod {
        Some(p) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            p.to_string(),
        )
            .into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods \"{name}\" not found"),
            Some(json!({"name": name, "kind": "pods"})),
        ),
    }
}

/// One container of a [`TestPod`]: its name, its `image`, and the `imageID` its status
/// reports (`None`: still being pulled — the status is `waiting` with an empty `imageID`).
#[derive(Debug, Clone)]
pub struct TestContainer {
    /// `name`.
    pub name: String,
    /// `image` (as written in the spec).
    pub image: String,
    /// `status.*ContainerStatuses[].imageID`.
    pub image_id: Option<String>,
}

/// A pod as the API server holds it, turned into `v1.Pod` JSON.
#[derive(Debug, Clone)]
pub struct TestPod {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.containers`.
    pub containers: Vec<TestContainer>,
    /// `spec.initContainers` (native sidecars: `restartPolicy: Always`).
    pub init_containers: Vec<TestContainer>,
    /// `spec.ephemeralContainers`.
    pub ephemeral_containers: Vec<TestContainer>,
}

impl TestPod {
    /// A pod with no container yet.
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            containers: Vec::new(),
            init_containers: Vec::new(),
            ephemeral_containers: Vec::new(),
        }
    }

    fn c(name: &str, image: &str, image_id: Option<&str>) -> TestContainer {
        TestContainer {
            name: name.into(),
            image: image.into(),
            image_id: image_id.map(str::to_owned),
        }
    }

    /// Adds an app container.
    pub fn container(mut self, name: &str, image: &str, image_id: Option<&str>) -> Self {
        self.containers.push(Self::c(name, image, image_id));
        self
    }

    /// Adds a native sidecar (an init container with `restartPolicy: Always`).
    pub fn sidecar(mut self, name: &str, image: &str, image_id: Option<&str>) -> Self {
        self.init_containers.push(Self::c(name, image, image_id));
        self
    }

    /// Adds an ephemeral container.
    pub fn ephemeral(mut self, name: &str, image: &str, image_id: Option<&str>) -> Self {
        self.ephemeral_containers
            .push(Self::c(name, image, image_id));
        self
    }

    /// The `v1.Pod` JSON (`kind`, `apiVersion`, `metadata`, `spec`, `status` with a
    /// `containerStatuses` entry per container as the kubelet reports it).
    pub fn to_json(&self) -> Value {
        fn statuses(list: &[TestContainer], init: bool) -> Value {
            Value::Array(
                list.iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let mut s = json!({
                            "name": c.name,
                            "image": c.image,
                            "imageID": c.image_id.clone().unwrap_or_default(),
                            "ready": c.image_id.is_some(),
                            "restartCount": 0,
                            "started": c.image_id.is_some(),
                        });
                        match &c.image_id {
                            Some(_) => {
                                s["containerID"] = json!(format!("containerd://{:064x}", i + 1));
                                s["state"] =
                                    json!({"running": {"startedAt": "2026-12-06T04:00:05Z"}});
                            }
                            None => {
                                s["state"] = json!({"waiting": {
                                    "reason": if init { "PodInitializing" } else { "ContainerCreating" }
                                }});
                            }
                        }
                        s
                    })
                    .collect(),
            )
        }
        fn specs(list: &[TestContainer], sidecar: bool) -> Value {
            Value::Array(
                list.iter()
                    .map(|c| {
                        let mut s = json!({
                            "name": c.name,
                            "image": c.image,
                            "imagePullPolicy": "IfNotPresent",
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File",
                        });
                        if sidecar {
                            s["restartPolicy"] = json!("Always");
                        }
                        s
                    })
                    .collect(),
            )
        }
        let ready = self
            .containers
            .iter()
            .chain(&self.init_containers)
            .all(|c| c.image_id.is_some());
        let mut spec = json!({
            "containers": specs(&self.containers, false),
            "restartPolicy": "Always",
            "serviceAccountName": "api",
            "nodeName": "node-1",
        });
        let mut status = json!({
            "phase": if ready { "Running" } else { "Pending" },
            "hostIP": "10.0.0.5",
            "podIP": "10.244.1.17",
            "qosClass": "BestEffort",
            "startTime": "2026-12-06T04:00:00Z",
            "containerStatuses": statuses(&self.containers, false),
        });
        if !self.init_containers.is_empty() {
            spec["initContainers"] = specs(&self.init_containers, true);
            status["initContainerStatuses"] = statuses(&self.init_containers, true);
        }
        if !self.ephemeral_containers.is_empty() {
            spec["ephemeralContainers"] = specs(&self.ephemeral_containers, false);
            status["ephemeralContainerStatuses"] = statuses(&self.ephemeral_containers, false);
        }
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": self.name,
                "generateName": self.name.rsplit_once('-').map(|(p, _)| format!("{p}-")),
                "namespace": self.namespace,
                "uid": self.uid,
                "resourceVersion": "48213",
                "creationTimestamp": "2026-12-06T04:00:00Z",
                "labels": {"app": "api"},
            },
            "spec": spec,
            "status": status,
        })
    }
}
