//! Connection deadlines and the connection cap, against the real broker over real TLS on
//! 127.0.0.1:0: slow or silent clients are cut off while other clients are served.
//!
//! Deadlines are short (hundreds of milliseconds) and every wait for an event is bounded by
//! tens of seconds, so a loaded machine makes these tests slower, never red. The only
//! fixed sleep checks that something does *not* happen, which no delay can fake.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lanyard_test_support::{OidcIssuer, TestBroker, TestBrokerOptions};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

/// Generous bound on every wait for something that must happen.
const PATIENCE: Duration = Duration::from_secs(30);

async fn start(issuer: &OidcIssuer, server: &str) -> TestBroker {
    TestBroker::start_with(
        Some(issuer),
        TestBrokerOptions {
            extra_config: format!("server:\n{server}"),
            ..TestBrokerOptions::default()
        },
    )
    .await
}

/// `lanyard_http_timeouts_total{phase}`, read in-process (the HTTP port may be full).
fn timeouts(broker: &TestBroker, phase: &str) -> u64 {
    broker
        .broker
        .metrics()
        .http_timeouts
        .with_label_values(&[phase])
        .get()
}

async fn eventually(what: &str, mut holds: impl FnMut() -> bool) {
    let give_up = Instant::now() + PATIENCE;
    while !holds() {
        assert!(Instant::now() < give_up, "{what}: not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Kubernetes workload gets a credential.
async fn issue(broker: &TestBroker, issuer: &OidcIssuer) {
    let token = issuer.k8s_token("shop", "api", "lanyard", 600);
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200, "{body}");
}

/// Everything the broker sends until it closes the connection.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 4096];
        // An error (a reset, a TLS close without close_notify) is a close too.
        while let Ok(n @ 1..) = stream.read(&mut chunk).await {
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the broker closes the connection");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_request_head_is_cut_off_at_the_header_deadline_while_others_are_served() {
    let issuer = OidcIssuer::start().await;
    let broker = start(&issuer, "  header_read_timeout_ms: 1000\n").await;
    let started = Instant::now();
    let mut stalled = broker.tls_connect(&[b"http/1.1"]).await;
    stalled
        .write_all(b"POST /v1/credentials HTTP/1.1\r\nHost: localhost\r\nContent-Ty")
        .await
        .expect("half a head");
    stalled.flush().await.expect("flush");

    issue(&broker, &issuer).await;

    let answer = read_until_closed(&mut stalled).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "cut before the deadline: {:?}",
        started.elapsed()
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains(" 200 "),
        "{answer:?}"
    );
    eventually("the cut is counted as a header timeout", || {
        timeouts(&broker, "header") >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_at_the_body_deadline_while_others_are_served() {
    let issuer = OidcIssuer::start().await;
    let broker = start(&issuer, "  body_read_timeout_ms: 300\n").await;
    let started = Instant::now();
    let mut stalled = broker.tls_connect(&[b"http/1.1"]).await;
    stalled
        .write_all(
            b"POST /v1/credentials HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"roles\":",
        )
        .await
        .expect("head and part of the body");
    stalled.flush().await.expect("flush");

    issue(&broker, &issuer).await;

    let answer = read_until_closed(&mut stalled).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(timeouts(&broker, "body"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_while_others_are_served() {
    let issuer = OidcIssuer::start().await;
    // A long first-request deadline: the idle deadline must take over once a request is done.
    let broker = start(
        &issuer,
        "  idle_timeout_ms: 300\n  header_read_timeout_ms: 60000\n",
    )
    .await;
    let tls = broker.tls_connect(&[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let sent_at = Instant::now();
    let resp = send
        .send_request(
            hyper::Request::get(format!("{}/healthz", broker.url))
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("served over HTTP/2");
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.expect("body");

    issue(&broker, &issuer).await;

    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the broker closes the idle connection")
        .expect("the client task did not panic")
        .ok();
    assert!(
        sent_at.elapsed() >= Duration::from_millis(300),
        "closed before the idle deadline: {:?}",
        sent_at.elapsed()
    );
    assert!(send.is_closed() || send.ready().await.is_err());
    eventually("the close is counted as idle", || {
        timeouts(&broker, "idle") >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_peer_that_never_answers_a_ping_is_closed_by_keep_alive() {
    let issuer = OidcIssuer::start().await;
    let broker = start(
        &issuer,
        "  http2_keep_alive_interval_ms: 300\n  http2_keep_alive_timeout_ms: 300\n",
    )
    .await;
    let mut silent = broker.tls_connect(&[b"h2"]).await;
    // The client preface and an empty SETTINGS frame, then nothing: no ACK, no PING reply.
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    silent.flush().await.expect("flush");

    issue(&broker, &issuer).await;

    let frames = read_until_closed(&mut silent).await;
    let mut pinged = false;
    let mut rest = &frames[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        pinged |= kind == 0x6 && flags & 0x1 == 0;
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(pinged, "the broker sent a keep-alive PING before closing");
    eventually("the close is counted as a keep-alive timeout", || {
        timeouts(&broker, "keep_alive") >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_the_next_client_waits_until_a_slot_frees() {
    let issuer = OidcIssuer::start().await;
    // Held connections must not be cut by the handshake deadline while the test looks.
    let broker = start(
        &issuer,
        "  max_connections: 2\n  tls_handshake_timeout_ms: 120000\n",
    )
    .await;
    let metrics = broker.broker.metrics().clone();
    let held_a = tokio::net::TcpStream::connect(broker.addr)
        .await
        .expect("connect");
    let _held_b = tokio::net::TcpStream::connect(broker.addr)
        .await
        .expect("connect");
    eventually("both slots taken and accepting paused", || {
        metrics.open_connections.get() == 2 && metrics.connection_limit_waits.get() >= 1
    })
    .await;

    let http = broker.http();
    let url = format!("{}/healthz", broker.url);
    let waiting = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection was served with max_connections: 2"
    );
    assert_eq!(metrics.open_connections.get(), 2);

    drop(held_a);
    let status = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("served once a slot freed")
        .expect("no panic")
        .expect("request");
    assert_eq!(status, 200);
    assert!(metrics.open_connections.get() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_says_hello_loses_its_slot_at_the_handshake_deadline() {
    let issuer = OidcIssuer::start().await;
    let broker = start(
        &issuer,
        "  max_connections: 1\n  tls_handshake_timeout_ms: 300\n",
    )
    .await;
    let metrics = broker.broker.metrics().clone();
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(broker.addr)
        .await
        .expect("connect");
    eventually("the only slot is taken", || {
        metrics.open_connections.get() == 1
    })
    .await;

    // Waits in the accept queue until the silent client is cut.
    issue(&broker, &issuer).await;

    assert!(read_until_closed(&mut silent).await.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(timeouts(&broker, "tls_handshake"), 1);
}
