//! The health port: `/healthz`, `/readyz` (ready only once every target is written),
//! `/metrics` (Prometheus text) and `POST /quitquitquit` (loopback callers only) so a Job's
//! main container can end the sidecar.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

/// What the refresh loop reports and the health port serves.
#[derive(Debug, Default)]
pub struct Status {
    ready: AtomicBool,
    refreshes: AtomicU64,
    failures: AtomicU64,
    refusals: AtomicU64,
    expiry: Mutex<BTreeMap<String, u64>>,
    quit: tokio::sync::Notify,
    aws: std::sync::OnceLock<Arc<crate::aws::AwsServer>>,
    startup: std::sync::OnceLock<f64>,
}

impl Status {
    /// Marks ready (every target written) or not (nothing written yet, or a credential
    /// expired).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether every target is written with a live credential.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Counts a successful refresh and records each role's expiry (Unix seconds).
    pub fn record_success(&self, expiries: impl IntoIterator<Item = (String, u64)>) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let mut m = self.expiry.lock().unwrap_or_else(|p| p.into_inner());
        m.extend(expiries);
    }

    /// Successful refreshes so far.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Counts a failed refresh.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed refresh the broker refused (also a failure).
    pub fn record_refusal(&self) {
        self.refusals.fetch_add(1, Ordering::Relaxed);
        self.record_failure();
    }

    /// Records, once, how long after the pod's admission the first credentials were on disk
    /// (seconds). Later calls are ignored: it is a start-up figure.
    pub fn record_startup(&self, seconds: f64) {
        let _ = self.startup.set(seconds);
    }

    /// Adds the AWS endpoint's request counters to `/metrics`.
    pub fn set_aws(&self, aws: Arc<crate::aws::AwsServer>) {
        let _ = self.aws.set(aws);
    }

    /// Asks `run` to end with exit 0.
    pub fn request_quit(&self) {
        self.quit.notify_one();
    }

    /// Resolves once [`request_quit`](Self::request_quit) was called.
    pub async fn quit_requested(&self) {
        self.quit.notified().await;
    }

    /// The Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP lanyard_sidecar_credential_expiry_timestamp_seconds When the credential last written for each role expires, in Unix seconds.\n");
        s.push_str("# TYPE lanyard_sidecar_credential_expiry_timestamp_seconds gauge\n");
        let m = self.expiry.lock().unwrap_or_else(|p| p.into_inner());
        for (role, t) in m.iter() {
            let _ = writeln!(
                s,
                "lanyard_sidecar_credential_expiry_timestamp_seconds{{role=\"{}\"}} {t}",
                escape_label(role)
            );
        }
        drop(m);
        let _ = write!(
            s,
            "# HELP lanyard_sidecar_refreshes_total Successful fetch-and-write rounds.\n\
             # TYPE lanyard_sidecar_refreshes_total counter\n\
             lanyard_sidecar_refreshes_total {}\n\
             # HELP lanyard_sidecar_refresh_failures_total Failed fetch-and-write rounds.\n\
             # TYPE lanyard_sidecar_refresh_failures_total counter\n\
             lanyard_sidecar_refresh_failures_total {}\n\
             # HELP lanyard_sidecar_refresh_refusals_total Failed rounds the broker refused (not retried; also counted as failures).\n\
             # TYPE lanyard_sidecar_refresh_refusals_total counter\n\
             lanyard_sidecar_refresh_refusals_total {}\n\
             # HELP lanyard_sidecar_ready 1 when every target is written with a live credential.\n\
             # TYPE lanyard_sidecar_ready gauge\n\
             lanyard_sidecar_ready {}\n",
            self.refreshes.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
            self.refusals.load(Ordering::Relaxed),
            u8::from(self.is_ready()),
        );
        if let Some(seconds) = self.startup.get() {
            let _ = write!(
                s,
                "# HELP lanyard_sidecar_admission_to_credentials_seconds From the pod's admission (the broker's admission record) to its first credentials on disk, the image gate included.\n\
                 # TYPE lanyard_sidecar_admission_to_credentials_seconds gauge\n\
                 lanyard_sidecar_admission_to_credentials_seconds {seconds:.3}\n"
            );
        }
        if let Some(aws) = self.aws.get() {
            s.push_str(&aws.metrics_text());
        }
        s
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The router of the health port.
pub fn router(status: Arc<Status>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/quitquitquit", post(quit))
        .with_state(status)
}

async fn readyz(State(status): State<Arc<Status>>) -> Response {
    if status.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not every target is written with a live credential\n",
        )
            .into_response()
    }
}

async fn metrics(State(status): State<Arc<Status>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        status.metrics_text(),
    )
        .into_response()
}

async fn quit(
    State(status): State<Arc<Status>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "quitquitquit is accepted only from localhost\n",
        )
            .into_response();
    }
    tracing::info!(%peer, "quit requested over the health port");
    status.request_quit();
    (StatusCode::OK, "exiting\n").into_response()
}

/// Serves the health port on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    status: Arc<Status>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(status).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_has_the_documented_series() {
        let s = Status::default();
        s.record_success([("db".to_owned(), 1_900_000_000)]);
        s.record_success([("db".to_owned(), 1_900_000_600), ("a\"b".to_owned(), 5)]);
        s.record_failure();
        s.set_ready(true);
        let t = s.metrics_text();
        assert!(
            t.contains(
                "lanyard_sidecar_credential_expiry_timestamp_seconds{role=\"db\"} 1900000600\n"
            ),
            "{t}"
        );
        assert!(t.contains("{role=\"a\\\"b\"} 5\n"), "{t}");
        assert!(t.contains("lanyard_sidecar_refreshes_total 2\n"), "{t}");
        assert!(
            t.contains("lanyard_sidecar_refresh_failures_total 1\n"),
            "{t}"
        );
        assert!(
            t.contains("lanyard_sidecar_refresh_refusals_total 0\n"),
            "{t}"
        );
        s.record_refusal();
        let t = s.metrics_text();
        assert!(
            t.contains("lanyard_sidecar_refresh_failures_total 2\n"),
            "{t}"
        );
        assert!(
            t.contains("lanyard_sidecar_refresh_refusals_total 1\n"),
            "{t}"
        );
        assert!(t.contains("lanyard_sidecar_ready 1\n"), "{t}");
    }

    async fn post_quit_from(peer: &str) -> (StatusCode, bool) {
        use tower::ServiceExt as _;
        let status = Arc::new(Status::default());
        let mut req = axum::http::Request::post("/quitquitquit")
            .body(axum::body::Body::empty())
            .expect("request");
        req.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().expect("addr")));
        let resp = router(status.clone()).oneshot(req).await.expect("answer");
        let quit = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            status.quit_requested(),
        )
        .await
        .is_ok();
        (resp.status(), quit)
    }

    #[tokio::test]
    async fn quit_is_only_for_loopback_callers() {
        assert_eq!(
            post_quit_from("127.0.0.1:5000").await,
            (StatusCode::OK, true)
        );
        assert_eq!(post_quit_from("[::1]:5000").await, (StatusCode::OK, true));
        assert_eq!(
            post_quit_from("10.1.2.3:5000").await,
            (StatusCode::FORBIDDEN, false)
        );
    }

    #[tokio::test]
    async fn quit_permit_is_kept_until_awaited() {
        let s = Status::default();
        s.request_quit();
        tokio::time::timeout(std::time::Duration::from_secs(1), s.quit_requested())
            .await
            .expect("a quit before the wait is not lost");
    }
}
