//! HTTPS: the accept loop, routes and background tasks.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0` and run
//! the real server in-process. Background tasks: certificate reload, policy reload, signing
//! key rotation, JWKS refresh, backend upkeep and revoke-on-expiry of Vault leases — all stop
//! on shutdown.
//!
//! - [`tls`]: reloading certificate resolver and rustls configuration.
//! - [`routes`]: the HTTP API (public, workload and admin endpoints).

pub mod routes;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

use crate::broker::{Broker, StartError};

/// What the accept loop knows about a connection, attached to each request.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer.
    pub peer: SocketAddr,
    /// The client presented a certificate signed by the admin client CA.
    pub admin_cert: bool,
}

/// A running server's handle on its background work.
#[derive(Debug)]
struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Resolves once `rx` says stop.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Runs `tick` every `every` until `rx` says stop.
fn periodic<F, Fut>(
    every: Duration,
    rx: watch::Receiver<bool>,
    mut tick: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = stopped(rx);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = interval.tick() => tick().await,
            }
        }
    })
}

fn spawn_background(broker: &Arc<Broker>, cert: Arc<tls::ReloadingCert>) -> Background {
    let (stop, rx) = watch::channel(false);
    let every = Duration::from_secs(broker.config().reload_interval_seconds.max(1));
    let reload = {
        let broker = broker.clone();
        periodic(every, rx.clone(), move || {
            let broker = broker.clone();
            let cert = cert.clone();
            async move {
                cert.reload_if_changed();
                // Errors are logged, audited and counted inside.
                let _ = broker.reload_policies().await;
            }
        })
    };
    // Rotation is also how a replica learns of keys another replica created.
    let rotate = {
        let broker = broker.clone();
        periodic(every, rx.clone(), move || {
            let broker = broker.clone();
            async move {
                if let Err(e) = broker.keys().rotate_if_due().await {
                    warn!(error = %e, "signing key rotation failed; will retry");
                }
            }
        })
    };
    // Upstream backends: the broker's own Vault token, and revoke-on-expiry of Vault leases.
    let backends = {
        let broker = broker.clone();
        periodic(every, rx.clone(), move || {
            let broker = broker.clone();
            async move {
                broker.maintain_backends().await;
                if let Err(e) = broker.sweep_expired_leases().await {
                    warn!(error = %e, "lease expiry sweep failed; will retry");
                }
            }
        })
    };
    let jwks = {
        let broker = broker.clone();
        tokio::spawn(async move { broker.verifier().run_refresh(stopped(rx)).await })
    };
    Background {
        stop,
        tasks: vec![reload, rotate, backends, jwks],
    }
}

/// Serves the broker on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (up to 10 s) and stops background tasks.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let tls_cfg = broker.config().tls.clone();
    let cert = Arc::new(
        tls::ReloadingCert::new(
            &tls_cfg.cert_file,
            &tls_cfg.key_file,
            broker.metrics().clone(),
        )
        .map_err(StartError::Tls)?,
    );
    let server_config = tls::server_config(&tls_cfg, cert.clone()).map_err(StartError::Tls)?;
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let failures = broker.verifier().refresh_all().await;
    for (issuer, reason) in failures {
        warn!(%issuer, %reason, "issuer keys not available yet; will retry in the background");
    }
    let background = spawn_background(&broker, cert);
    let app = routes::router(broker.clone());
    let header_limit = u32::try_from(broker.config().limits.max_token_bytes.saturating_mul(8))
        .unwrap_or(u32::MAX)
        .max(64 * 1024);
    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    info!(addr = ?local, "broker listening (https)");

    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let admin_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            let info = ConnInfo { peer, admin_cert };
            let svc =
                app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    req
                });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // Let bearer tokens up to a few times `max_token_bytes` reach the broker's own
            // size check (a clear 401) instead of an HTTP/2 GOAWAY; far larger header blocks
            // are still refused by the protocol layer.
            builder.http2().max_header_list_size(header_limit);
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(svc),
            );
            if let Err(e) = watcher.watch(conn).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    info!("shutting down: draining connections");
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        warn!("some connections did not finish within 10 s");
    }
    let _ = background.stop.send(true);
    for t in background.tasks {
        let _ = t.await;
    }
    info!("broker stopped");
    Ok(())
}
