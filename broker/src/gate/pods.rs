//! Trust source 3: which images a pod runs, read from the Kubernetes API
//! (`GET /api/v1/namespaces/{ns}/pods/{name}`, `status.*ContainerStatuses[].imageID`).
//!
//! - [`PodLookup`]: the client (kube-rs over rustls with aws-lc-rs), configured by
//!   `gate.pod_lookup` — in-cluster (the service account's token, CA and
//!   `KUBERNETES_SERVICE_HOST`/`PORT`) or an explicit API server, CA file and token file —
//!   with one deadline for the whole lookup and a bounded response body.
//! - [`parse_response`] and [`pod_images`]: pure — an answer (status code and body) to what
//!   it says about the pod the token was issued to: its images, not ready yet, or gone. The
//!   pod's `metadata.uid` must be the token's: a pod recreated under the same name is
//!   another pod.
//!
//! An error (API server down, refused, a body that is not a Pod) is never taken as "gone":
//! only a `v1.Status` `NotFound` for this very pod, or another uid under its name, is.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http;
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

use super::image::{self, ImageRef};
use crate::config::PodLookupConfig;

/// Largest Pod answer read, in bytes (the API server stores objects of at most 1.5 MiB).
pub const MAX_POD_BYTES: usize = 2 * 1024 * 1024;
/// Most container statuses (containers, init and ephemeral together) looked at in one pod.
pub const MAX_CONTAINERS: usize = 256;
/// Longest `imageID` accepted, in bytes.
pub const MAX_IMAGE_ID_BYTES: usize = 1024;

/// Longest message of an error [`parse_response`] returns, in bytes.
pub const MAX_ERROR_BYTES: usize = 600;

/// `docker-pullable://` — the prefix of Docker-era (dockershim, cri-dockerd) image IDs.
const DOCKER_PULLABLE: &str = "docker-pullable://";

/// One image a pod runs, from a container status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodImage {
    /// The `imageID` as the API server gave it (at most [`MAX_IMAGE_ID_BYTES`]), for messages.
    pub image_id: String,
    /// The parsed reference (a digest, with its repository when it names one), or why it
    /// cannot be used.
    pub parsed: Result<ImageRef, String>,
}

/// What the API server says about the pod a token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodImages {
    /// Every container (app, init, ephemeral) has an `imageID`: the images, without
    /// duplicates, in the order of their first container.
    Images(Vec<PodImage>),
    /// Some container has no `imageID` yet (its image is still being pulled — e.g. a native
    /// sidecar's first issuance, before the app images are pulled): the lookup says nothing.
    NotReady {
        /// The containers without one.
        waiting: Vec<String>,
    },
    /// The pod is gone: a `NotFound` for it, or a pod of another uid under its name.
    Gone(String),
}

/// Why a lookup said nothing about the pod. Retryable; never taken as "gone". The message
/// from [`parse_response`] is at most [`MAX_ERROR_BYTES`] long, whatever the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PodLookupError(pub String);

/// Parses one `imageID`: `docker-pullable://REPO@sha256:…`, `REPO@sha256:…` or
/// `sha256:…`. A repository the gate cannot use (a Docker Hub short name such as
/// `nginx@sha256:…`) leaves the bare digest: it is looked up by digest. Pure, bounded.
pub fn parse_image_id(id: &str) -> Result<ImageRef, String> {
    if id.len() > MAX_IMAGE_ID_BYTES {
        return Err(format!(
            "an imageID of {} bytes is longer than {MAX_IMAGE_ID_BYTES}",
            id.len()
        ));
    }
    let rest = id.strip_prefix(DOCKER_PULLABLE).unwrap_or(id);
    if rest.contains("://") {
        return Err(format!(
            "imageID `{}` is in a form that names no registry digest",
            shown(id)
        ));
    }
    if let Ok(r) = image::parse(rest)
        && r.digest.is_some()
    {
        return Ok(ImageRef { tag: None, ..r });
    }
    match rest.rsplit_once('@').map_or(rest, |(_, d)| d) {
        d if image::is_digest(d) => Ok(ImageRef {
            repository: None,
            tag: None,
            digest: Some(d.to_owned()),
        }),
        _ => Err(format!("imageID `{}` carries no sha256 digest", shown(id))),
    }
}

/// What `pod` says about the pod with uid `uid`: its images, not ready, or gone (another
/// uid). Every container named in the spec (app, init, ephemeral) needs a status with an
/// `imageID`. Pure, bounded by [`MAX_CONTAINERS`].
pub fn pod_images(pod: &Pod, uid: &str) -> Result<PodImages, PodLookupError> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    match pod.metadata.uid.as_deref() {
        Some(u) if u == uid => {}
        Some(other) => {
            return Ok(PodImages::Gone(format!(
                "pod {} has uid {}, not the token's {}: it was deleted and recreated under \
                 the same name",
                shown(name),
                shown(other),
                shown(uid)
            )));
        }
        None => {
            return Err(PodLookupError(
                "the API server's Pod has no metadata.uid".into(),
            ));
        }
    }
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let lists: [(Vec<&str>, &[ContainerStatus]); 3] = [
        (
            spec.map(|s| s.containers.iter().map(|c| c.name.as_str()).collect())
                .unwrap_or_default(),
            status
                .and_then(|s| s.container_statuses.as_deref())
                .unwrap_or(&[]),
        ),
        (
            spec.and_then(|s| s.init_containers.as_ref())
                .map(|v| v.iter().map(|c| c.name.as_str()).collect())
                .unwrap_or_default(),
            status
                .and_then(|s| s.init_container_statuses.as_deref())
                .unwrap_or(&[]),
        ),
        (
            spec.and_then(|s| s.ephemeral_containers.as_ref())
                .map(|v| v.iter().map(|c| c.name.as_str()).collect())
                .unwrap_or_default(),
            status
                .and_then(|s| s.ephemeral_container_statuses.as_deref())
                .unwrap_or(&[]),
        ),
    ];
    let total: usize = lists.iter().map(|(n, s)| n.len().max(s.len())).sum();
    if total > MAX_CONTAINERS {
        return Err(PodLookupError(format!(
            "pod {} has more than {MAX_CONTAINERS} containers",
            shown(name)
        )));
    }
    if lists
        .iter()
        .all(|(names, statuses)| names.is_empty() && statuses.is_empty())
    {
        return Err(PodLookupError(format!(
            "pod {} names no container",
            shown(name)
        )));
    }
    let mut waiting = Vec::new();
    let mut seen = BTreeSet::new();
    let mut images = Vec::new();
    for (names, statuses) in &lists {
        for n in names {
            if !statuses
                .iter()
                .any(|s| s.name == *n && !s.image_id.is_empty())
            {
                waiting.push(shown(n));
            }
        }
        for s in statuses.iter() {
            if s.image_id.is_empty() {
                if !names.contains(&s.name.as_str()) {
                    waiting.push(shown(&s.name));
                }
                continue;
            }
            let id: String = if s.image_id.len() > MAX_IMAGE_ID_BYTES {
                s.image_id.chars().take(64).collect()
            } else {
                s.image_id.clone()
            };
            let parsed = parse_image_id(&s.image_id);
            let key = match &parsed {
                Ok(r) => r.digest.clone().unwrap_or_default(),
                Err(_) => id.clone(),
            };
            if seen.insert(key) {
                images.push(PodImage {
                    image_id: id,
                    parsed,
                });
            }
        }
    }
    if !waiting.is_empty() {
        return Ok(PodImages::NotReady { waiting });
    }
    Ok(PodImages::Images(images))
}

/// What an answer of the API server to `GET …/pods/{name}` says about the pod `name` with
/// uid `uid`: a `200` Pod (see [`pod_images`]); a `404` `v1.Status` `NotFound` for this pod
/// — gone; anything else an error (a `404` without that body, e.g. a wrong URL, deletes
/// nothing). Pure; `body` is bounded by the caller ([`MAX_POD_BYTES`]).
pub fn parse_response(
    status: u16,
    body: &[u8],
    name: &str,
    uid: &str,
) -> Result<PodImages, PodLookupError> {
    match status {
        200 => {
            // serde's message may quote the input: shortened.
            let pod: Pod = serde_json::from_slice(body).map_err(|e| {
                PodLookupError(format!(
                    "the API server's answer is not a Pod: {}",
                    shown(&e.to_string())
                ))
            })?;
            if pod.metadata.name.as_deref().is_some_and(|n| n != name) {
                return Err(PodLookupError(
                    "the API server answered with another pod than the one asked for".into(),
                ));
            }
            pod_images(&pod, uid)
        }
        404 => {
            let st: Status = serde_json::from_slice(body).map_err(|_| {
                PodLookupError(
                    "the API server answered 404 without a v1.Status (is gate.pod_lookup.api_server \
                     the API server's URL?)"
                        .into(),
                )
            })?;
            let details_match = st.details.as_ref().is_some_and(|d| {
                d.kind.as_deref() == Some("pods") && d.name.as_deref() == Some(name)
            });
            if st.reason.as_deref() == Some("NotFound") && details_match {
                Ok(PodImages::Gone(format!(
                    "pod {} no longer exists (the API server answers NotFound)",
                    shown(name)
                )))
            } else {
                Err(PodLookupError(format!(
                    "the API server answered 404 ({}) but not NotFound for pod {}",
                    shown(st.reason.as_deref().unwrap_or("no reason")),
                    shown(name)
                )))
            }
        }
        401 => Err(PodLookupError(
            "the API server refused the broker's credentials (401 Unauthorized): check the \
             token file of gate.pod_lookup (in-cluster: the service account's token)"
                .into(),
        )),
        403 => Err(PodLookupError(
            "the API server forbids the broker to read the pod (403 Forbidden): its service \
             account needs `get` on `pods` in the workload's namespace (docs/GATE.md, RBAC)"
                .into(),
        )),
        other => Err(PodLookupError(format!(
            "the API server answered {other}{}",
            status_message(body)
        ))),
    }
}

/// ` (reason: message)` of a `v1.Status` body, shortened, or nothing.
fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<Status>(body)
        .ok()
        .and_then(|s| s.message.or(s.reason))
        .map(|m| format!(" ({})", shown(&m)))
        .unwrap_or_default()
}

/// An error and its sources (`a: b: c`), at most 300 characters, printable.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if parts.last() != Some(&text) && parts.len() < 6 {
            parts.push(text);
        }
        next = s.source();
    }
    parts
        .join(": ")
        .chars()
        .take(300)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A DNS-1123 label (a namespace) or subdomain (a pod name): what may go into the path.
fn is_object_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// A short, printable prefix of untrusted text for messages.
fn shown(s: &str) -> String {
    let head: String = s
        .chars()
        .take(80)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if s.chars().count() > 80 {
        format!("{head}…")
    } else {
        head
    }
}

/// The pod lookup client. Cheap to clone.
#[derive(Clone)]
pub struct PodLookup {
    client: kube::Client,
    timeout: Duration,
}

impl std::fmt::Debug for PodLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodLookup")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PodLookup {
    /// A client for `config` (must be called within a Tokio runtime). An error names the
    /// field to fix; it never holds the token.
    pub fn new(config: &PodLookupConfig) -> Result<Self, String> {
        let mut kc = if config.in_cluster {
            kube::Config::incluster().map_err(|e| {
                format!(
                    "gate.pod_lookup.in_cluster: not in a cluster, or the service account's \
                     files are missing ({e})"
                )
            })?
        } else {
            let url = config
                .api_server
                .as_deref()
                .ok_or("gate.pod_lookup: give `in_cluster: true` or `api_server`")?;
            let uri: http::Uri = url
                .parse()
                .map_err(|e| format!("gate.pod_lookup.api_server: {e}"))?;
            let mut kc = kube::Config::new(uri);
            if let Some(ca) = &config.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("gate.pod_lookup.ca_file {}: {e}", ca.display()))?;
                use rustls_pki_types::pem::PemObject as _;
                let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                    .map(|c| c.map(|c| c.to_vec()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("gate.pod_lookup.ca_file {}: {e}", ca.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "gate.pod_lookup.ca_file {}: no certificate in it",
                        ca.display()
                    ));
                }
                kc.root_cert = Some(certs);
                // kube-rs re-reads it about every minute (a rotated CA).
                kc.root_cert_file = Some(ca.clone());
            }
            let token = config
                .token_file
                .as_ref()
                .ok_or("gate.pod_lookup.token_file: required with api_server")?;
            // kube-rs re-reads it about every minute (a projected token is rotated).
            kc.auth_info.token_file = Some(token.display().to_string());
            kc
        };
        let timeout = Duration::from_millis(config.timeout_ms);
        // The connection within the deadline; the whole lookup under it (`lookup`), so its
        // message, not a transport's, says what happened.
        kc.connect_timeout = Some(timeout);
        kc.read_timeout = None;
        kc.write_timeout = None;
        // One answer within the deadline, no retries behind the gate's back.
        kc.default_retry = false;
        let client = kube::Client::try_from(kc).map_err(|e| format!("gate.pod_lookup: {e}"))?;
        Ok(Self { client, timeout })
    }

    /// The client (REV, issue 16: the pod watch uses it too).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// What the API server says about pod `namespace/name`, expected to have `uid`. At most
    /// `gate.pod_lookup.timeout_ms`; an error when it cannot tell.
    pub async fn lookup(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<PodImages, PodLookupError> {
        if !is_object_name(namespace, 63) || !is_object_name(name, 253) {
            // No such pod can exist; nothing is asked.
            return Ok(PodImages::Gone(format!(
                "the token names no valid pod ({}/{})",
                shown(namespace),
                shown(name)
            )));
        }
        let request = http::Request::get(format!("/api/v1/namespaces/{namespace}/pods/{name}"))
            .header(http::header::ACCEPT, "application/json")
            .body(kube::client::Body::empty())
            .map_err(|e| PodLookupError(format!("building the pod request: {e}")))?;
        let ask = async {
            let resp = self.client.send(request).await.map_err(|e| {
                PodLookupError(format!(
                    "cannot reach the Kubernetes API server: {}",
                    error_chain(&e)
                ))
            })?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_POD_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    PodLookupError(format!(
                        "reading the API server's answer (at most {MAX_POD_BYTES} bytes): {e}"
                    ))
                })?
                .to_bytes();
            parse_response(status, &body, name, uid)
        };
        match tokio::time::timeout(self.timeout, ask).await {
            Ok(r) => r,
            Err(_) => Err(PodLookupError(format!(
                "the Kubernetes API server did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const A: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const B: &str = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const UID: &str = "3f2b7c1e-9a4d-4e8b-a1c2-5d6e7f8a9b0c";

    /// A `v1.Pod` as the API server returns it (trimmed to the fields that matter, in the
    /// documented wire format).
    fn pod(app_id: &str, sidecar_id: &str) -> Value {
        json!({
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {
                "name": "api-7d9c8b6f5-x2k4q",
                "namespace": "shop",
                "uid": UID,
                "resourceVersion": "48213",
                "creationTimestamp": "2026-12-06T04:00:00Z"
            },
            "spec": {
                "containers": [{"name": "app", "image": "registry.example.com/shop/api:1"}],
                "initContainers": [{"name": "lanyard", "image": "registry.example.com/lanyard/sidecar:1", "restartPolicy": "Always"}]
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [{
                    "name": "app", "ready": true, "restartCount": 0,
                    "image": "registry.example.com/shop/api:1",
                    "imageID": app_id,
                    "containerID": "containerd://0a1b",
                    "state": {"running": {"startedAt": "2026-12-06T04:00:05Z"}}
                }],
                "initContainerStatuses": [{
                    "name": "lanyard", "ready": true, "restartCount": 0, "started": true,
                    "image": "registry.example.com/lanyard/sidecar:1",
                    "imageID": sidecar_id,
                    "state": {"running": {"startedAt": "2026-12-06T04:00:02Z"}}
                }]
            }
        })
    }

    fn parse(v: &Value) -> Result<PodImages, PodLookupError> {
        parse_response(
            200,
            &serde_json::to_vec(v).expect("json"),
            "api-7d9c8b6f5-x2k4q",
            UID,
        )
    }

    fn digests(p: &PodImages) -> Vec<String> {
        match p {
            PodImages::Images(v) => v
                .iter()
                .map(|i| i.parsed.as_ref().expect("parsed").to_string())
                .collect(),
            other => panic!("not images: {other:?}"),
        }
    }

    #[test]
    fn both_image_id_forms_and_bare_digests_are_read() {
        let p = parse(&pod(
            &format!("docker-pullable://registry.example.com/shop/api@{A}"),
            &format!("registry.example.com/lanyard/sidecar@{B}"),
        ))
        .expect("pod");
        assert_eq!(
            digests(&p),
            [
                format!("registry.example.com/shop/api@{A}"),
                format!("registry.example.com/lanyard/sidecar@{B}")
            ]
        );
        let p = parse(&pod(A, &format!("docker-pullable://nginx@{B}"))).expect("pod");
        // A bare digest, and a Docker Hub short name: looked up by digest.
        assert_eq!(digests(&p), [A.to_owned(), B.to_owned()]);
        // The same image in two containers counts once.
        let p = parse(&pod(A, A)).expect("pod");
        assert_eq!(digests(&p), [A.to_owned()]);
    }

    #[test]
    fn image_ids_that_name_no_digest_are_unusable_not_dropped() {
        for bad in [
            "docker://sha256:abc",
            "registry.example.com/shop/api:1",
            "sha256:ABC",
            &"x".repeat(MAX_IMAGE_ID_BYTES + 1),
        ] {
            assert!(parse_image_id(bad).is_err(), "{bad}");
            let p = parse(&pod(bad, A)).expect("pod");
            let PodImages::Images(images) = p else {
                panic!("images")
            };
            assert!(images[0].parsed.is_err(), "{bad}");
            assert!(images[0].image_id.len() <= MAX_IMAGE_ID_BYTES);
        }
    }

    #[test]
    fn a_container_without_an_image_id_makes_the_pod_not_ready() {
        // A native sidecar's first issuance: the app image is still being pulled.
        let mut v = pod("", &format!("registry.example.com/lanyard/sidecar@{B}"));
        v["status"]["containerStatuses"][0]["state"] =
            json!({"waiting": {"reason": "ContainerCreating"}});
        assert_eq!(
            parse(&v).expect("pod"),
            PodImages::NotReady {
                waiting: vec!["app".into()]
            }
        );
        // No status at all for a container in the spec (an ephemeral one just added).
        let mut v = pod(A, B);
        v["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox"}]);
        assert_eq!(
            parse(&v).expect("pod"),
            PodImages::NotReady {
                waiting: vec!["debugger".into()]
            }
        );
        v["status"]["ephemeralContainerStatuses"] = json!([{
            "name": "debugger", "ready": false, "restartCount": 0,
            "image": "busybox", "imageID": format!("docker.io/library/busybox@{A}"),
            "state": {"running": {}}
        }]);
        assert_eq!(digests(&parse(&v).expect("pod")).len(), 2);
    }

    #[test]
    fn another_uid_under_the_name_is_gone_and_a_not_found_status_too() {
        let mut v = pod(A, B);
        v["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000000");
        assert!(matches!(parse(&v), Ok(PodImages::Gone(m)) if m.contains("recreated")));
        let not_found = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure",
            "message": "pods \"api-7d9c8b6f5-x2k4q\" not found",
            "reason": "NotFound",
            "details": {"name": "api-7d9c8b6f5-x2k4q", "kind": "pods"},
            "code": 404
        });
        let body = serde_json::to_vec(&not_found).expect("json");
        assert!(matches!(
            parse_response(404, &body, "api-7d9c8b6f5-x2k4q", UID),
            Ok(PodImages::Gone(_))
        ));
        // NotFound for something else, or a 404 that is no Status (a wrong URL): an error,
        // never "gone".
        assert!(parse_response(404, &body, "other", UID).is_err());
        assert!(parse_response(404, b"404 page not found", "api-7d9c8b6f5-x2k4q", UID).is_err());
    }

    #[test]
    fn refusals_and_failures_are_errors_that_say_what_to_fix() {
        let e = parse_response(401, b"", "p", UID).expect_err("401");
        assert!(e.0.contains("credentials"), "{e}");
        let e = parse_response(403, b"", "p", UID).expect_err("403");
        assert!(e.0.contains("`get` on `pods`"), "{e}");
        let st = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500});
        let e = parse_response(500, &serde_json::to_vec(&st).expect("json"), "p", UID)
            .expect_err("500");
        assert!(e.0.contains("500") && e.0.contains("etcdserver"), "{e}");
        assert!(parse_response(200, b"{not json", "p", UID).is_err());
        assert!(parse_response(200, b"{\"kind\":\"Pod\",\"metadata\":{}}", "p", UID).is_err());
        // A pod answered under another name than asked.
        assert!(
            parse_response(
                200,
                &serde_json::to_vec(&pod(A, B)).expect("json"),
                "p",
                UID
            )
            .is_err()
        );
    }

    #[test]
    fn errors_stay_short_whatever_the_answer_quotes() {
        let long = "é".repeat(5_000);
        let mut v = pod(A, B);
        v["spec"]["containers"][0]["imagePullPolicy"] = json!(5);
        v["metadata"]["labels"] = json!(long);
        let body = serde_json::to_vec(&v).expect("json");
        let e = parse_response(200, &body, "api-7d9c8b6f5-x2k4q", UID).expect_err("not a pod");
        assert!(e.0.len() <= MAX_ERROR_BYTES, "{}", e.0.len());
        let st = json!({"kind": "Status", "apiVersion": "v1", "message": long, "code": 500});
        let e = parse_response(500, &serde_json::to_vec(&st).expect("json"), &long, &long)
            .expect_err("500");
        assert!(e.0.len() <= MAX_ERROR_BYTES, "{}", e.0.len());
        let mut v = pod(A, B);
        v["metadata"]["uid"] = json!(long);
        v["metadata"]["name"] = json!(long);
        let Ok(PodImages::Gone(why)) = parse_response(
            200,
            &serde_json::to_vec(&v).expect("json"),
            &long,
            &long[2..],
        ) else {
            panic!("gone")
        };
        assert!(why.len() <= MAX_ERROR_BYTES, "{}", why.len());
    }

    #[test]
    fn too_many_containers_is_an_error() {
        let mut v = pod(A, B);
        let many: Vec<Value> = (0..=MAX_CONTAINERS)
            .map(|i| json!({"name": format!("c{i}"), "image": "x"}))
            .collect();
        v["spec"]["containers"] = json!(many);
        assert!(parse(&v).is_err());
    }

    #[tokio::test]
    async fn a_client_that_cannot_be_made_names_the_field_to_fix() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = |in_cluster: bool, ca: Option<&str>, token: &str| PodLookupConfig {
            in_cluster,
            api_server: (!in_cluster).then(|| "https://127.0.0.1:6443".to_owned()),
            ca_file: ca.map(|c| dir.path().join(c)),
            token_file: (!in_cluster).then(|| dir.path().join(token)),
            timeout_ms: 1_000,
            sweep_interval_seconds: 60,
            sweep_batch: 10,
        };
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            let e = PodLookup::new(&cfg(true, None, "")).expect_err("not in a cluster");
            assert!(e.contains("gate.pod_lookup.in_cluster"), "{e}");
        }
        let e = PodLookup::new(&cfg(false, Some("missing.pem"), "t")).expect_err("no CA");
        assert!(e.contains("gate.pod_lookup.ca_file"), "{e}");
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").expect("write");
        let e = PodLookup::new(&cfg(false, Some("empty.pem"), "t")).expect_err("empty CA");
        assert!(e.contains("no certificate"), "{e}");
        std::fs::write(dir.path().join("token"), "secret-token-value").expect("write");
        let ok = PodLookup::new(&cfg(false, None, "token")).expect("a client");
        assert!(!format!("{ok:?}").contains("secret-token-value"));
    }

    #[test]
    fn only_object_names_go_into_the_path() {
        assert!(is_object_name("shop", 63));
        assert!(is_object_name("api-7d9c8b6f5-x2k4q", 253));
        for bad in ["", "../x", "a/b", "A", "-a", "a.", &"a".repeat(64)] {
            assert!(!is_object_name(bad, 63), "{bad}");
        }
    }
}
