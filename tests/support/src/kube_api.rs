//! [`KubeApi`]: an emulator of the one Kubernetes API server path the broker calls, since no
//! API server runs here: `GET /api/v1/namespaces/{namespace}/pods/{name}` over HTTPS (the
//! server certificate of a [`TestPki`]), answering exactly in the documented wire format —
//! a `v1.Pod` ([`TestPod::to_json`]), or a `v1.Status` (`kind: Status`, `apiVersion: v1`,
//! `status: Failure`, `reason`, `code`, `details`) for a missing pod (`NotFound`, 404), a
//! missing or wrong bearer token (`Unauthorized`, 401) or a failure the test asks for
//! (`InternalError`, 500). It can also hang (the broker's deadline must answer).
//!
//! Issue 16 (the pod watch): also `GET /api/v1/pods` — a `v1.PodList` (`limit` and
//! `continue` paging, `metadata.resourceVersion`) and, with `watch=1`, the watch stream in
//! the documented wire format: one JSON event per line (`ADDED`, `MODIFIED`, `DELETED`;
//! `BOOKMARK` every [`KubeApi::set_bookmark_interval`] when `allowWatchBookmarks=true`),
//! from the `resourceVersion` asked for, ended at `timeoutSeconds`; a `resourceVersion`
//! older than the last [`KubeApi::compact`] gets an `ERROR` event with a `v1.Status` of code
//! 410 (`Expired`), as etcd compaction does. Every change bumps one resourceVersion counter.
//! [`KubeApi::disconnect_watches`] ends the running watch streams.

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
    /// The watch side (issue 16).
    watch: Mutex<WatchLog>,
    /// Bumped by `disconnect_watches`: streams of an older generation end.
    generation: AtomicUsize,
    lists: AtomicUsize,
}

/// Changes, as a watch replays them.
#[derive(Default)]
struct WatchLog {
    /// The current resourceVersion (the last change's).
    rv: u64,
    /// (resourceVersion, type, object) of every change not compacted away.
    events: Vec<(u64, &'static str, Value)>,
    /// A watch from a resourceVersion below this gets 410.
    compacted: u64,
    /// The resourceVersion of every watch request, in order.
    asked: Vec<String>,
    /// Between bookmarks.
    bookmark_every: Option<Duration>,
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
            watch: Mutex::new(WatchLog {
                rv: 1000,
                compacted: 0,
                bookmark_every: Some(Duration::from_millis(500)),
                ..WatchLog::default()
            }),
            generation: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .route("/api/v1/namespaces/{namespace}/pods/{name}", get(get_pod))
            .route("/api/v1/pods", get(list_or_watch))
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

    /// Creates or replaces a pod (keyed by its `metadata.namespace` and `metadata.name`): a
    /// new resourceVersion, an `ADDED` or `MODIFIED` event.
    pub fn set_pod(&self, pod: &TestPod) {
        let mut log = lock(&self.shared.watch);
        log.rv += 1;
        let mut json = pod.to_json();
        json["metadata"]["resourceVersion"] = json!(log.rv.to_string());
        let old =
            lock(&self.shared.pods).insert((pod.namespace.clone(), pod.name.clone()), json.clone());
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        let rv = log.rv;
        log.events.push((rv, kind, json));
    }

    /// Deletes a pod; whether it existed. A new resourceVersion, a `DELETED` event.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        let mut log = lock(&self.shared.watch);
        let Some(mut json) =
            lock(&self.shared.pods).remove(&(namespace.to_owned(), name.to_owned()))
        else {
            return false;
        };
        log.rv += 1;
        json["metadata"]["resourceVersion"] = json!(log.rv.to_string());
        json["metadata"]["deletionTimestamp"] = json!("2026-12-06T05:00:00Z");
        let rv = log.rv;
        log.events.push((rv, "DELETED", json));
        true
    }

    /// Compacts the history, as etcd does: a watch from any resourceVersion before the current
    /// one gets `410 Gone` (an `ERROR` event) and must list again.
    pub fn compact(&self) {
        let mut log = lock(&self.shared.watch);
        log.compacted = log.rv;
        log.events.clear();
    }

    /// A new resourceVersion without a pod event (other objects changed in etcd): only a
    /// bookmark tells a pod watch about it.
    pub fn bump_resource_version(&self) -> u64 {
        let mut log = lock(&self.shared.watch);
        log.rv += 1;
        log.rv
    }

    /// Ends every running watch stream (a dropped connection, an API server restart).
    pub fn disconnect_watches(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Sends bookmarks this often on watches that allow them (`None`: never). 500 ms at start.
    pub fn set_bookmark_interval(&self, every: Option<Duration>) {
        lock(&self.shared.watch).bookmark_every = every;
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.watch).rv
    }

    /// The `resourceVersion` each watch request asked for, in order.
    pub fn watches(&self) -> Vec<String> {
        lock(&self.shared.watch).asked.clone()
    }

    /// List requests (pages) so far.
    pub fn lists(&self) -> usize {
        self.shared.lists.load(Ordering::SeqCst)
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

/// The failure the test asked for, or a wrong token: the answer to send instead.
async fn refusal(
    shared: &Shared,
    headers: &HeaderMap,
    verb: &str,
    name: &str,
    namespace: &str,
) -> Option<Response> {
    let failure = *lock(&shared.failure);
    match failure {
        KubeFailure::None | KubeFailure::Forbidden => {}
        KubeFailure::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        KubeFailure::InternalError => {
            return Some(status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "Internal error occurred: etcdserver: request timed out".into(),
                None,
            ));
        }
        KubeFailure::Unavailable => {
            return Some(status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the server is currently unable to handle the request".into(),
                None,
            ));
        }
    }
    let want = format!("Bearer {}", lock(&shared.token));
    let authorized = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == want);
    if !authorized {
        return Some(status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
            None,
        ));
    }
    if failure == KubeFailure::Forbidden {
        let scope = if namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace \"{namespace}\"")
        };
        return Some(status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "pods{} is forbidden: User \"system:serviceaccount:lanyard:lanyard-broker\" \
                 cannot {verb} resource \"pods\" in API group \"\" {scope}",
                if name.is_empty() {
                    String::new()
                } else {
                    format!(" \"{name}\"")
                }
            ),
            Some(json!({"name": name, "kind": "pods"})),
        ));
    }
    None
}

/// `GET /api/v1/pods`: a list, or with `watch=1` a watch.
async fn list_or_watch(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    if let Some(r) = refusal(
        &shared,
        &headers,
        if watch { "watch" } else { "list" },
        "",
        "",
    )
    .await
    {
        return r;
    }
    if watch {
        return watch_pods(shared, &query);
    }
    shared.lists.fetch_add(1, Ordering::SeqCst);
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let offset: usize = match query.get("continue") {
        None => 0,
        Some(c) => match c.strip_prefix("offset-").and_then(|o| o.parse().ok()) {
            Some(o) => o,
            None => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "continue key is not valid".into(),
                    None,
                );
            }
        },
    };
    let rv = lock(&shared.watch).rv;
    let mut pods: Vec<((String, String), Value)> = lock(&shared.pods)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pods.sort_by(|a, b| a.0.cmp(&b.0));
    let items: Vec<Value> = pods
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(_, v)| v.clone())
        .collect();
    let next = offset.saturating_add(items.len());
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if next < pods.len() {
        metadata["continue"] = json!(format!("offset-{next}"));
        metadata["remainingItemCount"] = json!(pods.len() - next);
    }
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata, "items": items})
            .to_string(),
    )
        .into_response()
}

/// One watch stream's position.
struct Stream {
    shared: Arc<Shared>,
    /// The last resourceVersion sent.
    last: u64,
    generation: usize,
    bookmarks: bool,
    next_bookmark: tokio::time::Instant,
    deadline: tokio::time::Instant,
    pending: std::collections::VecDeque<String>,
    done: bool,
}

fn watch_pods(shared: Arc<Shared>, query: &HashMap<String, String>) -> Response {
    let asked = query.get("resourceVersion").cloned().unwrap_or_default();
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let (from, expired) = {
        let mut log = lock(&shared.watch);
        log.asked.push(asked.clone());
        let from = if asked.is_empty() || asked == "0" {
            log.rv
        } else {
            asked.parse::<u64>().unwrap_or(0)
        };
        (from, from < log.compacted)
    };
    let now = tokio::time::Instant::now();
    let every = lock(&shared.watch).bookmark_every;
    let mut stream = Stream {
        generation: shared.generation.load(Ordering::SeqCst),
        shared,
        last: from,
        bookmarks,
        next_bookmark: now + every.unwrap_or(Duration::from_secs(3600)),
        deadline: now + Duration::from_secs(timeout),
        pending: std::collections::VecDeque::new(),
        done: false,
    };
    if expired {
        let compacted = lock(&stream.shared.watch).compacted;
        stream.pending.push_back(
            json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from} ({compacted})"),
                "reason": "Expired", "code": 410}})
            .to_string()
                + "\n",
        );
        stream.done = true;
    }
    let body = futures_util::stream::unfold(stream, |mut st| async move {
        loop {
            if let Some(line) = st.pending.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(line), st));
            }
            if st.done
                || st.shared.generation.load(Ordering::SeqCst) != st.generation
                || tokio::time::Instant::now() >= st.deadline
            {
                return None;
            }
            {
                let log = lock(&st.shared.watch);
                let since = st.last;
                for (rv, kind, obj) in log.events.iter().filter(|(rv, _, _)| *rv > since) {
                    st.pending
                        .push_back(json!({"type": kind, "object": obj}).to_string() + "\n");
                    st.last = *rv;
                }
                if st.pending.is_empty()
                    && st.bookmarks
                    && tokio::time::Instant::now() >= st.next_bookmark
                {
                    st.last = log.rv;
                    st.pending.push_back(
                        json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                            "metadata": {"resourceVersion": log.rv.to_string()}}})
                        .to_string()
                            + "\n",
                    );
                    st.next_bookmark = tokio::time::Instant::now()
                        + log.bookmark_every.unwrap_or(Duration::from_secs(3600));
                }
            }
            if st.pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

async fn get_pod(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = refusal(&shared, &headers, "get", &name, &namespace).await {
        return r;
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
