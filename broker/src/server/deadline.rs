//! Deadlines: how long each phase of a connection may take, the body deadline and the request
//! deadline (both applied per request, as an axum layer), and the label every cut is counted
//! under in `lanyard_http_timeouts_total{phase}`.
//!
//! The connection-level deadlines (TLS handshake, request head, idle, HTTP/2 keep-alive) are
//! enforced in [`super::conn`]; this module holds their values.

use std::error::Error as StdError;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use prometheus::IntCounter;
use tracing::Instrument as _;

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// Where a deadline passed: the `phase` label of `lanyard_http_timeouts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No finished TLS handshake within `tls_handshake_timeout_ms`.
    TlsHandshake,
    /// No complete request head within `header_read_timeout_ms`.
    Header,
    /// The body did not arrive within `body_read_timeout_ms` (the request got 408).
    Body,
    /// No answer within `request_timeout_ms` (the request got 503).
    Request,
    /// No request in flight for `idle_timeout_ms`, or (HTTP/1) no next request head within
    /// `header_read_timeout_ms` of the previous response.
    Idle,
    /// HTTP/2: a keep-alive PING was not acknowledged in time.
    KeepAlive,
}

impl Phase {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TlsHandshake => "tls_handshake",
            Self::Header => "header",
            Self::Body => "body",
            Self::Request => "request",
            Self::Idle => "idle",
            Self::KeepAlive => "keep_alive",
        }
    }

    /// The counter for this phase.
    pub fn counter(self, metrics: &Metrics) -> IntCounter {
        metrics.http_timeouts.with_label_values(&[self.as_str()])
    }
}

/// The server's deadlines, from `server.*` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Accept to finished TLS handshake.
    pub tls_handshake: Duration,
    /// Handshake (or previous response) to a complete request head.
    pub header: Duration,
    /// Request head to the body's last byte.
    pub body: Duration,
    /// Request head to the response.
    pub request: Duration,
    /// No request in flight for this long closes a connection.
    pub idle: Duration,
    /// HTTP/2 keep-alive PING interval.
    pub keep_alive_interval: Duration,
    /// HTTP/2 keep-alive PING acknowledgement deadline.
    pub keep_alive_timeout: Duration,
}

impl Deadlines {
    /// The deadlines a configuration asks for.
    pub fn from_config(c: &ServerConfig) -> Self {
        let ms = Duration::from_millis;
        Self {
            tls_handshake: ms(c.tls_handshake_timeout_ms),
            header: ms(c.header_read_timeout_ms),
            body: ms(c.body_read_timeout_ms),
            request: ms(c.request_timeout_ms),
            idle: ms(c.idle_timeout_ms),
            keep_alive_interval: ms(c.http2_keep_alive_interval_ms),
            keep_alive_timeout: ms(c.http2_keep_alive_timeout_ms),
        }
    }
}

/// The error a body read returns once the body deadline has passed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body not received within {after_ms} ms")]
pub struct BodyTimedOut {
    /// The deadline, for the answer.
    pub after_ms: u64,
}

/// A request body that fails with [`BodyTimedOut`] once its deadline passes, however the bytes
/// trickle in (a total deadline, not a per-read one: a client sending a byte a second is cut
/// as surely as one that sends nothing).
#[derive(Debug)]
pub struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    after_ms: u64,
    timeouts: Option<IntCounter>,
}

impl DeadlineBody {
    /// `inner`, due within `within` from now; `timeouts` is counted once if it is late.
    pub fn new(inner: Body, within: Duration, timeouts: IntCounter) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(within)),
            after_ms: u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
            timeouts: Some(timeouts),
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.inner.is_end_stream() {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            if let Some(counter) = this.timeouts.take() {
                counter.inc();
            }
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut {
                after_ms: this.after_ms,
            }))));
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The body deadline that failed this body read, if that is why it failed.
pub fn body_timed_out(rejection: &BytesRejection) -> Option<BodyTimedOut> {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(rejection);
    while let Some(e) = cause {
        if let Some(t) = e.downcast_ref::<BodyTimedOut>() {
            return Some(*t);
        }
        cause = e.source();
    }
    None
}

/// State of [`enforce`].
#[derive(Debug, Clone)]
pub struct DeadlineLayerState {
    /// The deadlines.
    pub deadlines: Deadlines,
    /// Where timeouts are counted.
    pub metrics: Metrics,
}

/// Puts the body deadline on the request body, and answers 503 `deadline_exceeded` when the
/// response is not ready within the request deadline.
///
/// The handler runs in its own task and is never cancelled half-way — not by this deadline,
/// not by a client that goes away: an audit record, a token redemption or an upstream call
/// that has started completes, and only its answer is dropped.
pub async fn enforce(
    State(state): State<DeadlineLayerState>,
    req: Request,
    next: Next,
) -> Response {
    let d = state.deadlines;
    let body_timeouts = Phase::Body.counter(&state.metrics);
    let req = req.map(|body| Body::new(DeadlineBody::new(body, d.body, body_timeouts)));
    let work = tokio::spawn(next.run(req).in_current_span());
    match tokio::time::timeout(d.request, work).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => ApiError::Internal(format!("request handler failed: {e}")).into_response(),
        Err(_) => {
            Phase::Request.counter(&state.metrics).inc();
            tracing::info!(
                deadline_ms = d.request.as_millis(),
                "request deadline passed; answered 503"
            );
            ApiError::DeadlineExceeded(u64::try_from(d.request.as_millis()).unwrap_or(u64::MAX))
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::post;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    fn deadlines(body_ms: u64, request_ms: u64) -> Deadlines {
        Deadlines::from_config(&ServerConfig {
            body_read_timeout_ms: body_ms,
            request_timeout_ms: request_ms,
            ..ServerConfig::default()
        })
    }

    fn app(d: Deadlines, metrics: &Metrics) -> Router {
        async fn echo(body: Result<Bytes, BytesRejection>) -> Response {
            match body {
                Ok(b) => b.into_response(),
                Err(r) => match body_timed_out(&r) {
                    Some(t) => ApiError::BodyTimeout(t.after_ms).into_response(),
                    None => ApiError::BadRequest(r.body_text()).into_response(),
                },
            }
        }
        async fn slow() -> &'static str {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            "late"
        }
        Router::new()
            .route("/echo", post(echo))
            .route("/slow", post(slow))
            .layer(axum::middleware::from_fn_with_state(
                DeadlineLayerState {
                    deadlines: d,
                    metrics: metrics.clone(),
                },
                enforce,
            ))
    }

    async fn error_code(resp: Response) -> (u16, String) {
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json error body");
        (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
    }

    /// A body that sends `first` and then nothing, ever.
    fn stalled_body(first: &'static [u8]) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.try_send(Ok(Frame::data(Bytes::from_static(first))))
            .expect("room for one frame");
        // The sender is kept alive (and silent) for as long as the body.
        let stream = futures_util::stream::unfold((rx, tx), |(mut rx, tx)| async move {
            rx.recv().await.map(|item| (item, (rx, tx)))
        });
        Body::new(http_body_util::StreamBody::new(stream))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_gets_408_after_the_body_deadline_and_is_counted() {
        let metrics = Metrics::new();
        let app = app(deadlines(300, 30_000), &metrics);
        let started = tokio::time::Instant::now();
        let resp = app
            .oneshot(
                Request::post("/echo")
                    .body(stalled_body(b"{\"roles\":"))
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(error_code(resp).await, (408, "body_timeout".to_owned()));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(30),
            "{waited:?}"
        );
        assert_eq!(Phase::Body.counter(&metrics).get(), 1);
        assert_eq!(Phase::Request.counter(&metrics).get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_is_cut_however_steadily_it_trickles() {
        // One byte every 100 ms: never idle for long, but never done within 300 ms either.
        let trickle = futures_util::stream::unfold(0u32, |sent| async move {
            (sent < 100).then_some(())?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b" "))),
                sent + 1,
            ))
        });
        let metrics = Metrics::new();
        let resp = app(deadlines(300, 30_000), &metrics)
            .oneshot(
                Request::post("/echo")
                    .body(Body::new(http_body_util::StreamBody::new(trickle)))
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(error_code(resp).await, (408, "body_timeout".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_body_in_time_passes_through() {
        let metrics = Metrics::new();
        let resp = app(deadlines(300, 30_000), &metrics)
            .oneshot(
                Request::post("/echo")
                    .body(Body::from("{\"roles\":[]}"))
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(resp.status(), 200);
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&bytes[..], b"{\"roles\":[]}");
        assert_eq!(Phase::Body.counter(&metrics).get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_handler_gets_503_deadline_exceeded_and_is_counted() {
        let metrics = Metrics::new();
        let started = tokio::time::Instant::now();
        let resp = app(deadlines(300, 500), &metrics)
            .oneshot(Request::post("/slow").body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(
            error_code(resp).await,
            (503, "deadline_exceeded".to_owned())
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_secs(60),
            "{waited:?}"
        );
        assert_eq!(Phase::Request.counter(&metrics).get(), 1);
    }

    #[tokio::test]
    async fn the_handler_finishes_after_the_deadline_answered() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let done_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(done_tx)));
        let handler = move || {
            let done_tx = done_tx.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if let Some(tx) = done_tx.lock().expect("lock").take() {
                    let _ = tx.send(());
                }
                "done"
            }
        };
        let metrics = Metrics::new();
        let app = Router::new().route("/work", post(handler)).layer(
            axum::middleware::from_fn_with_state(
                DeadlineLayerState {
                    deadlines: deadlines(50, 50),
                    metrics: metrics.clone(),
                },
                enforce,
            ),
        );
        let resp = app
            .oneshot(Request::post("/work").body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(resp.status(), 503);
        // The caller has its answer; the work it started still runs to its end.
        tokio::time::timeout(Duration::from_secs(30), done_rx)
            .await
            .expect("the handler ran to completion")
            .expect("sent");
    }

    #[tokio::test(start_paused = true)]
    async fn other_body_errors_are_not_timeouts() {
        let metrics = Metrics::new();
        let broken = futures_util::stream::iter([Err::<Frame<Bytes>, BoxError>(Box::new(
            std::io::Error::other("connection reset"),
        ))]);
        let resp = app(deadlines(300, 30_000), &metrics)
            .oneshot(
                Request::post("/echo")
                    .body(Body::new(http_body_util::StreamBody::new(broken)))
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(error_code(resp).await, (400, "bad_request".to_owned()));
        assert_eq!(Phase::Body.counter(&metrics).get(), 0);
    }

    #[test]
    fn configured_milliseconds_become_deadlines() {
        let d = Deadlines::from_config(&ServerConfig {
            header_read_timeout_ms: 1_500,
            ..ServerConfig::default()
        });
        assert_eq!(d.header, Duration::from_millis(1_500));
        assert_eq!(d.request, Duration::from_secs(30));
    }
}
