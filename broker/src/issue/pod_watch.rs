//! Pod deletion → revoke (issue 16): a watch on the cluster's pods revokes the leases issued to
//! a pod (its `kubernetes.io.pod.uid`, kept with each lease) once the pod is deleted.
//!
//! On with `revocation.revoke_on_pod_deletion` and Kubernetes API access (`gate.pod_lookup`:
//! the same client — kube-rs over rustls with aws-lc-rs — and RBAC `list` and `watch` on
//! pods). It speaks the documented list/watch wire protocol itself over that client, each
//! answer bounded:
//! - **list**: `GET /api/v1/pods?limit=500` (then `&continue=…`), `v1.PodList` pages; the
//!   first page's `metadata.resourceVersion` is where the watch starts;
//! - **watch**: `GET /api/v1/pods?watch=1&resourceVersion=RV&allowWatchBookmarks=true&
//!   timeoutSeconds=…`, one JSON event per line (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`,
//!   `ERROR`); each event's `metadata.resourceVersion` (a bookmark's too) is where a new watch
//!   resumes after the stream ends or breaks;
//! - **410 Gone** (an `ERROR` event with a `v1.Status` of code 410, or the answer's status):
//!   the resourceVersion is too old, so the watcher lists again;
//! - after every list (at start, after a 410, when a replica takes the job over), the pods
//!   holding running leases issued before the list began are checked against the pods that
//!   exist: a pod deleted while no watch was running is found there.
//!
//! `DELETED` revokes at once (upstream where the backend can: Vault; recorded and in the JWT
//! revocation list for broker JWTs; STS sessions cannot be revoked one by one, see
//! `lease revoke --sts-role`). A revocation that fails (Vault down) is retried before each
//! following list or watch (at most [`MAX_RETRY_PODS`] pods held for it).
//!
//! One replica watches at a time: the job `pod_watch` is claimed in the store before each
//! list or watch and renewed while a watch runs; a replica that loses the claim stops
//! watching, and the one that takes it over starts with a list.
//!
//! The parsers ([`parse_pod_page`], [`parse_watch_line`]) and the decision ([`gone_pods`]) are
//! pure and bounded; `fuzz/` has a target for the parsers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::http;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use tracing::{info, warn};

/// Pods asked for per list page.
pub const LIST_PAGE: usize = 500;
/// Largest list page read, in bytes (500 pods of the API server's 1.5 MiB object limit would
/// be more; pages that large are refused and logged, not half-read).
pub const MAX_LIST_BYTES: usize = 64 * 1024 * 1024;
/// Longest watch event line, in bytes (one pod, at most 1.5 MiB in etcd, plus the envelope).
pub const MAX_EVENT_BYTES: usize = 2 * 1024 * 1024;
/// Longest `uid` or `resourceVersion` kept, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Most deleted pods whose revocation failed kept for a retry at the next watch.
pub const MAX_RETRY_PODS: usize = 10_000;

/// One page of a pod list: the UIDs on it, the list's resourceVersion, the continue token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPage {
    /// `metadata.resourceVersion` of the list.
    pub resource_version: String,
    /// `metadata.continue`, when more pages follow.
    pub continue_token: Option<String>,
    /// `items[].metadata.uid`.
    pub uids: Vec<String>,
}

/// One watch event, as far as the watcher needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchLine {
    /// `ADDED` or `MODIFIED`: only its resourceVersion matters.
    Changed {
        /// The object's resourceVersion.
        resource_version: String,
    },
    /// `DELETED`: the pod with this UID is gone.
    Deleted {
        /// `metadata.uid`.
        uid: String,
        /// The object's resourceVersion.
        resource_version: String,
    },
    /// `BOOKMARK`: nothing happened up to this resourceVersion.
    Bookmark {
        /// The bookmark's resourceVersion.
        resource_version: String,
    },
    /// `ERROR` with a `v1.Status`: `code` 410 means list again.
    Error {
        /// `code` of the Status (0 if absent).
        code: u16,
        /// Its `message`, cut short.
        message: String,
    },
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    uid: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(default, rename = "continue")]
    continue_token: Option<String>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default)]
    metadata: Option<Meta>,
}

#[derive(Deserialize)]
struct List {
    #[serde(default)]
    kind: Option<String>,
    metadata: Meta,
    #[serde(default)]
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(200).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn id(what: &str, v: Option<String>) -> Result<String, String> {
    match v {
        Some(v) if !v.is_empty() && v.len() <= MAX_ID_BYTES => Ok(v),
        Some(v) if v.len() > MAX_ID_BYTES => {
            Err(format!("{what} longer than {MAX_ID_BYTES} bytes"))
        }
        _ => Err(format!("{what} missing")),
    }
}

/// Parses one list page (`v1.PodList`). Bounded by [`MAX_LIST_BYTES`]; every item must carry
/// a UID (a page that does not is refused whole: a pod missed would look deleted).
pub fn parse_pod_page(body: &[u8]) -> Result<PodPage, String> {
    if body.len() > MAX_LIST_BYTES {
        return Err(format!(
            "a pod list page larger than {MAX_LIST_BYTES} bytes"
        ));
    }
    let list: List = serde_json::from_slice(body)
        .map_err(|e| format!("not a pod list: {}", short(&e.to_string())))?;
    if let Some(kind) = &list.kind
        && kind != "PodList"
    {
        return Err(format!("not a pod list: kind {}", short(kind)));
    }
    let resource_version = id(
        "the list's metadata.resourceVersion",
        list.metadata.resource_version,
    )?;
    let continue_token = list.metadata.continue_token.filter(|c| !c.is_empty());
    if continue_token.as_ref().is_some_and(|c| c.len() > 4096) {
        return Err("a continue token longer than 4096 bytes".into());
    }
    let uids = list
        .items
        .into_iter()
        .map(|i| id("an item's metadata.uid", i.metadata.and_then(|m| m.uid)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PodPage {
        resource_version,
        continue_token,
        uids,
    })
}

/// Parses one watch event line. Bounded by [`MAX_EVENT_BYTES`].
pub fn parse_watch_line(line: &[u8]) -> Result<WatchLine, String> {
    if line.len() > MAX_EVENT_BYTES {
        return Err(format!("a watch event longer than {MAX_EVENT_BYTES} bytes"));
    }
    let event: Event = serde_json::from_slice(line)
        .map_err(|e| format!("not a watch event: {}", short(&e.to_string())))?;
    let meta = || -> Result<Meta, String> {
        serde_json::from_value(event.object.get("metadata").cloned().unwrap_or_default())
            .map_err(|e| format!("an event's metadata: {}", short(&e.to_string())))
    };
    match event.kind.as_str() {
        "ADDED" | "MODIFIED" => Ok(WatchLine::Changed {
            resource_version: id("metadata.resourceVersion", meta()?.resource_version)?,
        }),
        "DELETED" => {
            let m = meta()?;
            Ok(WatchLine::Deleted {
                uid: id("metadata.uid", m.uid)?,
                resource_version: id("metadata.resourceVersion", m.resource_version)?,
            })
        }
        "BOOKMARK" => Ok(WatchLine::Bookmark {
            resource_version: id("metadata.resourceVersion", meta()?.resource_version)?,
        }),
        "ERROR" => Ok(WatchLine::Error {
            code: event
                .object
                .get("code")
                .and_then(serde_json::Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0),
            message: short(
                event
                    .object
                    .get("message")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or(""),
            ),
        }),
        other => Err(format!("unknown watch event type {}", short(other))),
    }
}

/// The pods among `holding` (pods with running leases, issued before the list began) that
/// the list did not return: deleted while no watch was running.
pub fn gone_pods(live: &HashSet<String>, holding: &[String]) -> Vec<String> {
    holding
        .iter()
        .filter(|u| !live.contains(*u))
        .cloned()
        .collect()
}

/// Splits complete lines off `buf` (each without its `\n`); what is left is an incomplete
/// line. An incomplete line past [`MAX_EVENT_BYTES`] is an error.
pub fn take_lines(buf: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
        let rest = buf.split_off(pos + 1);
        let mut line = std::mem::replace(buf, rest);
        line.pop();
        if !line.iter().all(u8::is_ascii_whitespace) {
            out.push(line);
        }
    }
    if buf.len() > MAX_EVENT_BYTES {
        return Err(format!("a watch event longer than {MAX_EVENT_BYTES} bytes"));
    }
    Ok(out)
}

/// Why a list or watch stopped.
#[derive(Debug)]
enum Stop {
    /// 410 Gone: list again.
    Expired,
    /// This replica no longer holds the job.
    LostClaim,
    /// Failed (the API server is down, refused, answered garbage): retry after a pause.
    Failed(String),
}

/// The watcher. Run by [`PodWatch::run`] until the broker stops.
pub struct PodWatch {
    client: kube::Client,
    /// Deleted pods some of whose leases could not be revoked (Vault down, the store
    /// unavailable): retried before each list or watch until none is left.
    retry: std::sync::Mutex<HashSet<String>>,
    /// `timeoutSeconds` of each watch request.
    watch_seconds: u64,
    /// How much earlier than a list's start a lease must have been issued for the relist to
    /// check it (`revocation.pod_watch_clock_skew_seconds` + 1 s).
    margin: Duration,
}

impl std::fmt::Debug for PodWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodWatch")
            .field("watch_seconds", &self.watch_seconds)
            .finish_non_exhaustive()
    }
}

impl PodWatch {
    /// A watcher using the pod lookup's client; see [`crate::config::RevocationConfig`].
    pub fn new(client: kube::Client, watch_seconds: u64, clock_skew: Duration) -> Self {
        Self {
            client,
            retry: std::sync::Mutex::new(HashSet::new()),
            watch_seconds,
            margin: clock_skew + Duration::from_secs(1),
        }
    }

    async fn get(&self, path: &str) -> Result<http::Response<kube::client::Body>, Stop> {
        let request = http::Request::get(path)
            .header(http::header::ACCEPT, "application/json")
            .body(kube::client::Body::empty())
            .map_err(|e| Stop::Failed(format!("building the request: {e}")))?;
        let resp =
            self.client.send(request).await.map_err(|e| {
                Stop::Failed(format!("cannot reach the Kubernetes API server: {e}"))
            })?;
        match resp.status().as_u16() {
            200 => Ok(resp),
            410 => Err(Stop::Expired),
            code => {
                let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(short))
                    .unwrap_or_default();
                Err(Stop::Failed(format!(
                    "the Kubernetes API server answered {code}: {message} (the broker needs \
                     `list` and `watch` on pods: the chart's RBAC with revocation.podWatch)"
                )))
            }
        }
    }

    /// Lists every pod; returns the live UIDs and the list's resourceVersion.
    async fn list(&self) -> Result<(HashSet<String>, String), Stop> {
        let mut live = HashSet::new();
        let mut version = None;
        let mut cont: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/pods?limit={LIST_PAGE}");
            if let Some(c) = &cont {
                path.push_str("&continue=");
                path.push_str(
                    &url::form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>(),
                );
            }
            let resp = self.get(&path).await?;
            let body = http_body_util::Limited::new(resp.into_body(), MAX_LIST_BYTES)
                .collect()
                .await
                .map_err(|e| Stop::Failed(format!("reading a pod list page: {e}")))?
                .to_bytes();
            let page = parse_pod_page(&body).map_err(Stop::Failed)?;
            version.get_or_insert(page.resource_version);
            live.extend(page.uids);
            match page.continue_token {
                Some(c) => cont = Some(c),
                None => break,
            }
        }
        Ok((live, version.unwrap_or_default()))
    }

    /// Runs until `stop` resolves.
    pub async fn run(
        self,
        broker: Arc<crate::broker::Broker>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        tokio::select! {
            _ = &mut stop => {}
            _ = self.run_forever(&broker) => {}
        }
    }

    async fn run_forever(&self, broker: &Arc<crate::broker::Broker>) {
        let every = Duration::from_secs(broker.config().reload_interval_seconds.max(1));
        let mut pause = Duration::from_secs(1);
        // The resourceVersion to resume from; none: list first.
        let mut version: Option<String> = None;
        loop {
            if !broker.claim_job("pod_watch").await {
                version = None;
                broker.metrics().pod_watch_up.set(0);
                tokio::time::sleep(every).await;
                continue;
            }
            self.retry_failed(broker).await;
            let outcome = match &version {
                None => self.relist(broker).await,
                Some(v) => self.watch(broker, v, every).await,
            };
            match outcome {
                Ok(v) => {
                    version = Some(v);
                    pause = Duration::from_secs(1);
                    broker.metrics().pod_watch_up.set(1);
                }
                Err((_, Stop::Expired)) => {
                    info!("pod watch: resourceVersion expired (410 Gone); listing again");
                    version = None;
                }
                Err((_, Stop::LostClaim)) => {
                    broker.metrics().pod_watch_up.set(0);
                    info!("pod watch: another replica holds the job now; stopping this watch");
                    version = None;
                }
                Err((v, Stop::Failed(e))) => {
                    broker.metrics().pod_watch_up.set(0);
                    warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "pod watch failed; will retry");
                    // Keep the last resourceVersion reached: the next watch resumes there.
                    version = v;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Revokes the leases of deleted pod `uid`; remembers it for a retry when some failed.
    async fn revoke(&self, broker: &crate::broker::Broker, uid: &str, how: &str) {
        let done = broker.revoke_pod_leases(uid, how).await;
        let mut retry = self
            .retry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if done.failed > 0 {
            // Bounded: past it a pod is left to the next relist (and Vault leases to the
            // revoke-on-expiry sweep).
            if retry.len() < MAX_RETRY_PODS {
                retry.insert(uid.to_owned());
            }
        } else {
            retry.remove(uid);
        }
    }

    async fn retry_failed(&self, broker: &crate::broker::Broker) {
        let pending: Vec<String> = self
            .retry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        for uid in pending {
            self.revoke(broker, &uid, "deleted (retried)").await;
        }
    }

    /// Lists, then revokes the leases of pods that hold running leases (issued before the
    /// list began) and are not in the list. Returns the list's resourceVersion.
    async fn relist(
        &self,
        broker: &Arc<crate::broker::Broker>,
    ) -> Result<String, (Option<String>, Stop)> {
        // A lease issued after this was issued to a pod that may be newer than the list. Each
        // replica stamps its own clock, in whole seconds: a margin for both.
        let began = broker.now_for_jobs() - self.margin;
        let (live, version) = self.list().await.map_err(|e| (None, e))?;
        broker.metrics().pod_watch_lists.inc();
        let mut after: Option<String> = None;
        loop {
            let holding = broker
                .pods_with_running_leases(after.as_deref(), began, LIST_PAGE)
                .await
                .map_err(|e| (None, Stop::Failed(e.to_string())))?;
            let Some(last) = holding.last().cloned() else {
                break;
            };
            for uid in gone_pods(&live, &holding) {
                self.revoke(broker, &uid, "found deleted by a relist").await;
            }
            after = Some(last);
        }
        Ok(version)
    }

    /// Watches from `version` until the stream ends (then returns the resourceVersion
    /// reached), a 410, a failure, or the claim is lost.
    async fn watch(
        &self,
        broker: &Arc<crate::broker::Broker>,
        version: &str,
        every: Duration,
    ) -> Result<String, (Option<String>, Stop)> {
        let mut reached = version.to_owned();
        let path = format!(
            "/api/v1/pods?watch=1&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={}",
            url::form_urlencoded::byte_serialize(version.as_bytes()).collect::<String>(),
            self.watch_seconds
        );
        let resp = self
            .get(&path)
            .await
            .map_err(|e| (Some(reached.clone()), e))?;
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        let mut claim = tokio::time::interval(every);
        claim.tick().await;
        loop {
            let frame = tokio::select! {
                f = body.frame() => f,
                _ = claim.tick() => {
                    if !broker.claim_job("pod_watch").await {
                        return Err((None, Stop::LostClaim));
                    }
                    continue;
                }
            };
            let Some(frame) = frame else {
                // The server ended the watch (its timeout): resume from here.
                return Ok(reached);
            };
            let frame = frame.map_err(|e| {
                (
                    Some(reached.clone()),
                    Stop::Failed(format!("the watch broke: {e}")),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            let lines =
                take_lines(&mut buf).map_err(|e| (Some(reached.clone()), Stop::Failed(e)))?;
            for line in lines {
                match parse_watch_line(&line) {
                    Ok(WatchLine::Changed { resource_version })
                    | Ok(WatchLine::Bookmark { resource_version }) => reached = resource_version,
                    Ok(WatchLine::Deleted {
                        uid,
                        resource_version,
                    }) => {
                        self.revoke(broker, &uid, "deleted").await;
                        reached = resource_version;
                    }
                    Ok(WatchLine::Error { code: 410, .. }) => {
                        return Err((None, Stop::Expired));
                    }
                    Ok(WatchLine::Error { code, message }) => {
                        return Err((
                            Some(reached),
                            Stop::Failed(format!(
                                "the watch ended with an error {code}: {message}"
                            )),
                        ));
                    }
                    Err(e) => {
                        return Err((Some(reached), Stop::Failed(e)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_page_gives_uids_version_and_continue() {
        let body = json!({"kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "120", "continue": "abc"},
            "items": [{"metadata": {"uid": "u1", "name": "a"}}, {"metadata": {"uid": "u2"}}]});
        let page = parse_pod_page(body.to_string().as_bytes()).expect("page");
        assert_eq!(
            page,
            PodPage {
                resource_version: "120".into(),
                continue_token: Some("abc".into()),
                uids: vec!["u1".into(), "u2".into()],
            }
        );
        let last = json!({"kind": "PodList", "metadata": {"resourceVersion": "120", "continue": ""}, "items": []});
        assert_eq!(
            parse_pod_page(last.to_string().as_bytes())
                .expect("page")
                .continue_token,
            None
        );
    }

    #[test]
    fn a_page_with_an_item_without_uid_or_another_kind_is_refused() {
        for bad in [
            json!({"kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": [{"metadata": {}}]}),
            json!({"kind": "Status", "metadata": {"resourceVersion": "1"}, "items": []}),
            json!({"kind": "PodList", "metadata": {}, "items": []}),
            json!({"kind": "PodList", "metadata": {"resourceVersion": "x".repeat(200)}}),
        ] {
            assert!(parse_pod_page(bad.to_string().as_bytes()).is_err(), "{bad}");
        }
        assert!(parse_pod_page(b"not json").is_err());
    }

    #[test]
    fn watch_events_are_read_as_documented() {
        let line = |v: serde_json::Value| parse_watch_line(v.to_string().as_bytes());
        assert_eq!(
            line(
                json!({"type": "ADDED", "object": {"kind": "Pod", "metadata": {"uid": "u", "resourceVersion": "5"}}})
            ),
            Ok(WatchLine::Changed {
                resource_version: "5".into()
            })
        );
        assert_eq!(
            line(
                json!({"type": "DELETED", "object": {"kind": "Pod", "metadata": {"uid": "u", "resourceVersion": "6"}}})
            ),
            Ok(WatchLine::Deleted {
                uid: "u".into(),
                resource_version: "6".into()
            })
        );
        assert_eq!(
            line(
                json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"resourceVersion": "9", "annotations": {"k8s.io/initial-events-end": "true"}}}})
            ),
            Ok(WatchLine::Bookmark {
                resource_version: "9".into()
            })
        );
        assert_eq!(
            line(
                json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "too old resource version: 1 (5)", "reason": "Expired", "code": 410}})
            ),
            Ok(WatchLine::Error {
                code: 410,
                message: "too old resource version: 1 (5)".into()
            })
        );
        assert!(
            line(json!({"type": "DELETED", "object": {"metadata": {"resourceVersion": "6"}}}))
                .is_err()
        );
        assert!(line(json!({"type": "SURPRISE", "object": {}})).is_err());
        assert!(parse_watch_line(b"{").is_err());
    }

    #[test]
    fn lines_are_split_across_chunks_and_bounded() {
        let mut buf = b"{\"a\":1}\n{\"b\"".to_vec();
        assert_eq!(
            take_lines(&mut buf).expect("lines"),
            vec![b"{\"a\":1}".to_vec()]
        );
        buf.extend_from_slice(b":2}\n\n");
        assert_eq!(
            take_lines(&mut buf).expect("lines"),
            vec![b"{\"b\":2}".to_vec()]
        );
        assert!(buf.is_empty());
        let mut big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(take_lines(&mut big).is_err());
    }

    #[test]
    fn pods_not_listed_are_gone() {
        let live: HashSet<String> = ["u1".to_owned(), "u3".to_owned()].into();
        let holding = vec!["u1".to_owned(), "u2".to_owned(), "u4".to_owned()];
        assert_eq!(gone_pods(&live, &holding), ["u2", "u4"]);
    }
}
