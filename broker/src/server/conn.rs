//! One connection's life: the TLS handshake under its deadline, HTTP/1 or HTTP/2 with hyper's
//! timer set (without one, hyper silently drops the header deadline and panics on HTTP/2
//! keep-alive), request tracking, and closing a connection that has nothing in flight.
//!
//! The decision to close is the pure [`verdict`]; [`serve`] is the I/O around it. A connection
//! is closed when
//! - its TLS handshake is not done within `tls_handshake_timeout_ms`;
//! - it has not sent a complete first request head within `header_read_timeout_ms` of the
//!   handshake (hyper enforces the same on every later HTTP/1 request head, which also ends an
//!   HTTP/1 keep-alive connection left unused that long);
//! - it has had no request in flight for `idle_timeout_ms`;
//! - (HTTP/2) a keep-alive PING is not acknowledged within `http2_keep_alive_timeout_ms`;
//! - the server shuts down.
//!
//! A connection asked to close gets a graceful shutdown (HTTP/2 GOAWAY; HTTP/1 closes after
//! the response in progress) and is dropped if it has not closed a short grace later.

use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::debug;

use super::ConnInfo;
use super::deadline::{Deadlines, Phase};
use crate::metrics::Metrics;

/// How long a connection asked to close on server shutdown may take to finish its requests.
pub const DRAIN: Duration = Duration::from_secs(10);

/// The HTTP/1 and HTTP/2 settings every connection is served with. `header_limit` bounds an
/// HTTP/2 header block.
pub fn http_builder(d: &Deadlines, header_limit: u32) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(d.header);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(d.keep_alive_interval)
        .keep_alive_timeout(d.keep_alive_timeout)
        // Let bearer tokens up to a few times `max_token_bytes` reach the broker's own size
        // check (a clear 401) instead of an HTTP/2 GOAWAY; far larger header blocks are still
        // refused by the protocol layer.
        .max_header_list_size(header_limit);
    builder
}

/// What every connection shares.
pub struct Shared {
    /// TLS.
    pub acceptor: TlsAcceptor,
    /// The client CAs a connection's certificate is classified by.
    pub client_cas: super::tls::ClientCas,
    /// The routes.
    pub app: Router,
    /// HTTP settings, from [`http_builder`].
    pub http: auto::Builder<TokioExecutor>,
    /// Deadlines.
    pub deadlines: Deadlines,
    /// Where cuts are counted.
    pub metrics: Metrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("deadlines", &self.deadlines)
            .finish_non_exhaustive()
    }
}

/// What [`verdict`] looks at: a connection's requests and bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests whose response is not ready yet.
    pub in_flight: usize,
    /// Requests seen so far.
    pub requests: u64,
    /// Since when nothing has been in flight (the handshake, before the first request).
    pub idle_since: Instant,
    /// Plaintext bytes read since `idle_since`.
    pub bytes_since_idle: u64,
}

/// Whether a connection should be closed now, and if not, when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Close it; the cut is counted under this phase.
    Close(Phase),
    /// Look again at this instant.
    CheckAt(Instant),
}

/// The idle rule: a connection must send its first request head within `d.header` and may
/// then sit with nothing in flight for at most `d.idle`.
pub fn verdict(s: &Snapshot, now: Instant, d: &Deadlines) -> Verdict {
    if s.in_flight > 0 {
        return Verdict::CheckAt(now + d.idle);
    }
    let (limit, phase) = if s.requests == 0 {
        (d.header, Phase::Header)
    } else {
        (d.idle, Phase::Idle)
    };
    let due = s.idle_since + limit;
    if now >= due {
        Verdict::Close(phase)
    } else {
        Verdict::CheckAt(due)
    }
}

/// The deadline behind an error a connection ended with, if one is. hyper reports its own
/// timeouts (the HTTP/1 header deadline, the HTTP/2 keep-alive) as timeout errors; a header
/// deadline with nothing read since the previous response is an unused keep-alive connection.
pub fn classify(error: &(dyn StdError + 'static), http2: bool, s: &Snapshot) -> Option<Phase> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if !h.is_timeout() {
                return None;
            }
            return Some(if http2 {
                Phase::KeepAlive
            } else if s.requests > 0 && s.bytes_since_idle == 0 {
                Phase::Idle
            } else {
                Phase::Header
            });
        }
        cause = e.source();
    }
    None
}

/// A connection's request count, in-flight count and bytes read, shared by its I/O and its
/// service.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    requests: AtomicU64,
    bytes_read: AtomicU64,
    /// (idle since, `bytes_read` then).
    idle_mark: std::sync::Mutex<(Instant, u64)>,
    /// Signalled when the idle clock restarts, which can bring the verdict's deadline closer.
    idle_again: tokio::sync::Notify,
}

impl Activity {
    fn new(now: Instant) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            idle_mark: std::sync::Mutex::new((now, 0)),
            idle_again: tokio::sync::Notify::new(),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn snapshot(&self) -> Snapshot {
        let (idle_since, bytes_then) = *self.idle_mark.lock().unwrap_or_else(|p| p.into_inner());
        Snapshot {
            in_flight: self.in_flight.load(Ordering::Acquire),
            requests: self.requests.load(Ordering::Relaxed),
            idle_since,
            bytes_since_idle: self
                .bytes_read
                .load(Ordering::Relaxed)
                .saturating_sub(bytes_then),
        }
    }
}

/// A request in flight; dropping it (when the response is ready) may start the idle clock.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *a.idle_mark.lock().unwrap_or_else(|p| p.into_inner()) =
                (Instant::now(), a.bytes_read.load(Ordering::Relaxed));
            a.idle_again.notify_one();
        }
    }
}

/// The TLS stream, counting the plaintext bytes read.
#[derive(Debug)]
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.activity
                .bytes_read
                .fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one accepted connection until it closes, is cut by a deadline, or `stop` says the
/// server is shutting down.
pub async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let d = shared.deadlines;
    let handshake = tokio::time::timeout(d.tls_handshake, shared.acceptor.accept(tcp));
    let stream = tokio::select! {
        _ = stop.wait_for(|s| *s) => return,
        done = handshake => match done {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                Phase::TlsHandshake.counter(&shared.metrics).inc();
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let (_, tls) = stream.get_ref();
    let class = shared.client_cas.classify(tls.peer_certificates());
    let http2 = tls.alpn_protocol() == Some(b"h2");

    let activity = Arc::new(Activity::new(Instant::now()));
    let info = ConnInfo {
        peer,
        admin_cert: class.admin,
        admission_cert: class.admission,
    };
    let svc = {
        let app = shared.app.clone();
        let activity = activity.clone();
        tower::service_fn(move |mut req: axum::http::Request<Incoming>| {
            let in_flight = activity.begin();
            req.extensions_mut().insert(info.clone());
            let app = app.clone();
            async move {
                let resp = app.oneshot(req).await;
                drop(in_flight);
                resp
            }
        })
    };
    let io = TokioIo::new(Counted {
        inner: stream,
        activity: activity.clone(),
    });
    let conn = shared
        .http
        .serve_connection_with_upgrades(io, TowerToHyperService::new(svc));
    tokio::pin!(conn);

    let mut cut: Option<Phase> = None;
    // Once the connection was asked to close: when to stop waiting for it.
    let mut give_up_at: Option<Instant> = None;
    loop {
        let wake = match give_up_at {
            Some(at) => at,
            None => match verdict(&activity.snapshot(), Instant::now(), &d) {
                Verdict::CheckAt(at) => at,
                Verdict::Close(phase) => {
                    debug!(%peer, phase = phase.as_str(), "closing the connection");
                    cut = Some(phase);
                    conn.as_mut().graceful_shutdown();
                    give_up_at = Some(Instant::now() + d.keep_alive_timeout);
                    continue;
                }
            },
        };
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    if cut.is_none() {
                        cut = classify(&*e, http2, &activity.snapshot());
                    }
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = stop.wait_for(|s| *s), if give_up_at.is_none() => {
                conn.as_mut().graceful_shutdown();
                give_up_at = Some(Instant::now() + DRAIN);
            }
            () = activity.idle_again.notified(), if give_up_at.is_none() => {}
            () = tokio::time::sleep_until(wake) => {
                if give_up_at.is_some_and(|at| Instant::now() >= at) {
                    debug!(%peer, "connection did not close in time; dropped");
                    break;
                }
            }
        }
    }
    if let Some(phase) = cut {
        phase.counter(&shared.metrics).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn deadlines() -> Deadlines {
        Deadlines::from_config(&ServerConfig {
            header_read_timeout_ms: 1_000,
            idle_timeout_ms: 5_000,
            ..ServerConfig::default()
        })
    }

    fn snapshot(t0: Instant, in_flight: usize, requests: u64, bytes: u64) -> Snapshot {
        Snapshot {
            in_flight,
            requests,
            idle_since: t0,
            bytes_since_idle: bytes,
        }
    }

    #[test]
    fn the_first_request_head_is_due_within_the_header_deadline() {
        let d = deadlines();
        let t0 = Instant::now();
        let fresh = snapshot(t0, 0, 0, 0);
        assert_eq!(
            verdict(&fresh, t0, &d),
            Verdict::CheckAt(t0 + Duration::from_secs(1))
        );
        assert_eq!(
            verdict(&fresh, t0 + Duration::from_millis(999), &d),
            Verdict::CheckAt(t0 + Duration::from_secs(1))
        );
        assert_eq!(
            verdict(&fresh, t0 + Duration::from_secs(1), &d),
            Verdict::Close(Phase::Header)
        );
    }

    #[test]
    fn after_a_request_the_idle_deadline_applies() {
        let d = deadlines();
        let t0 = Instant::now();
        let used = snapshot(t0, 0, 3, 0);
        assert_eq!(
            verdict(&used, t0 + Duration::from_secs(2), &d),
            Verdict::CheckAt(t0 + Duration::from_secs(5))
        );
        assert_eq!(
            verdict(&used, t0 + Duration::from_secs(5), &d),
            Verdict::Close(Phase::Idle)
        );
    }

    #[test]
    fn a_request_in_flight_is_never_idle() {
        let d = deadlines();
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(3600);
        for requests in [0, 1] {
            assert_eq!(
                verdict(&snapshot(t0, 1, requests, 0), late, &d),
                Verdict::CheckAt(late + Duration::from_secs(5))
            );
        }
    }

    #[test]
    fn the_in_flight_count_starts_the_idle_clock_when_it_drops_to_zero() {
        let t0 = Instant::now();
        let a = Arc::new(Activity::new(t0));
        let first = a.begin();
        let second = a.begin();
        a.bytes_read.store(100, Ordering::Relaxed);
        drop(first);
        let s = a.snapshot();
        assert_eq!((s.in_flight, s.requests, s.idle_since), (1, 2, t0));
        drop(second);
        let s = a.snapshot();
        assert_eq!((s.in_flight, s.requests, s.bytes_since_idle), (0, 2, 0));
        a.bytes_read.store(130, Ordering::Relaxed);
        assert_eq!(a.snapshot().bytes_since_idle, 30);
    }

    type Served = tokio::task::JoinHandle<Result<(), Box<dyn StdError + Send + Sync>>>;

    /// Serves `builder` on one end of an in-memory pipe with a one-route app.
    fn serve_pipe(builder: auto::Builder<TokioExecutor>) -> (tokio::io::DuplexStream, Served) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let task = tokio::spawn(async move {
            builder
                .serve_connection_with_upgrades(TokioIo::new(server), TowerToHyperService::new(app))
                .await
        });
        (client, task)
    }

    #[tokio::test(start_paused = true)]
    async fn the_builder_enforces_the_http1_header_deadline() {
        // Without a timer hyper would wait for the rest of the head forever.
        let d = deadlines();
        let (mut client, task) = serve_pipe(http_builder(&d, 64 * 1024));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("the connection is cut")
            .expect("no panic");
        let e = ended.expect_err("cut with an error");
        assert!(started.elapsed() >= d.header, "{:?}", started.elapsed());
        let fresh = snapshot(started, 0, 0, 26);
        assert_eq!(classify(&*e, false, &fresh), Some(Phase::Header));
        let unused = snapshot(started, 0, 1, 0);
        assert_eq!(classify(&*e, false, &unused), Some(Phase::Idle));
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_builder_serves_http1_and_http2_keep_alive_without_panicking() {
        // hyper panics at the first connection when a timeout or HTTP/2 keep-alive is set
        // without a timer.
        let d = deadlines();
        for request in [
            &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        ] {
            let (mut client, task) = serve_pipe(http_builder(&d, 64 * 1024));
            client.write_all(request).await.expect("write");
            let mut answer = [0u8; 12];
            client.read_exact(&mut answer).await.expect("an answer");
            drop(client);
            let _ = tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("ends once the client is gone")
                .expect("no panic");
        }
    }

    #[test]
    fn other_errors_are_not_deadlines() {
        let e = io::Error::other("reset by peer");
        assert_eq!(
            classify(&e, false, &snapshot(Instant::now(), 0, 0, 10)),
            None
        );
    }
}
