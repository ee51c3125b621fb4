//! HTTPS: the accept loop (with its connection cap), routes and background tasks.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0` and run
//! the real server in-process. Background tasks: certificate reload, policy reload, signing
//! key rotation, JWKS refresh, backend upkeep and revoke-on-expiry of Vault leases, pruning
//! ended session revocations and expired admission records — all stop on shutdown. (The revoked-session set reloads itself:
//! see [`Broker`].)
//!
//! # Layout
//! - [`tls`]: reloading certificate resolver and rustls configuration.
//! - [`conn`]: one connection's life: TLS handshake deadline, HTTP/1 and HTTP/2 settings
//!   (hyper's timer, header deadline, HTTP/2 keep-alive), closing idle connections.
//! - [`deadline`]: the deadlines' values, the body and request deadlines (a layer on the
//!   routes), and the phase labels of `lanyard_http_timeouts_total`.
//! - [`routes`]: the HTTP API (public, workload and admin endpoints).

pub mod conn;
pub mod deadline;
pub mod routes;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::broker::{Broker, StartError};

/// What the accept loop knows about a connection, attached to each request.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer.
    pub peer: SocketAddr,
    /// The client presented a certificate signed by the admin client CA.
    pub admin_cert: bool,
    /// The client presented a certificate signed by the API server's client CA
    /// (`gate.admission.client_ca_file`): it may call the admission routes.
    pub admission_cert: bool,
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
    // Renewals of leases handed out before this process started (kept in the store) are taken
    // up once; the upkeep below renews them with this process's own.
    {
        let broker = broker.clone();
        tokio::spawn(async move {
            match broker.resume_renewals().await {
                Ok(0) => {}
                Ok(n) => info!(
                    leases = n,
                    "resumed renewing leases handed out before this start"
                ),
                Err(e) => {
                    warn!(error = %e, "could not read the leases to renew; those handed out before this start end with their upstream lease")
                }
            }
        });
    }
    // Upstream backends: the broker's own Vault token, renewal of the Vault leases this
    // replica holds, and revoke-on-expiry of Vault leases (with the prunes: by one replica at
    // a time, `Broker::claim_job`).
    let backends = {
        let broker = broker.clone();
        periodic(every, rx.clone(), move || {
            let broker = broker.clone();
            async move {
                broker.maintain_backends().await;
                // Lease renewal: on PostgreSQL one replica at a time, taking up every
                // replica's leases; elsewhere each process renews what it holds.
                broker.renewal_tick().await;
                // Sweeps over shared rows: one replica at a time (each replica's own Vault
                // token, above, is its own).
                if !broker.claim_job("expiry_sweeps").await {
                    return;
                }
                if let Err(e) = broker.sweep_expired_leases().await {
                    warn!(error = %e, "lease expiry sweep failed; will retry");
                }
                if let Err(e) = broker.prune_session_revocations().await {
                    warn!(error = %e, "pruning ended session revocations failed; will retry");
                }
                if let Err(e) = broker.prune_admission_records().await {
                    warn!(error = %e, "pruning expired admission records failed; will retry");
                }
            }
        })
    };
    // Summaries of failed authentications not recorded one by one, once their window ends.
    let auth_failures = {
        let broker = broker.clone();
        periodic(every, rx.clone(), move || {
            let broker = broker.clone();
            async move {
                broker.flush_auth_failure_summaries(false).await;
            }
        })
    };
    let mut tasks = vec![reload, rotate, backends, auth_failures];
    // Admission records of gone pods, where pod lookups are on (gate.pod_lookup).
    if let Some(l) = &broker.config().gate.pod_lookup {
        let broker = broker.clone();
        tasks.push(periodic(
            Duration::from_secs(l.sweep_interval_seconds),
            rx.clone(),
            move || {
                let broker = broker.clone();
                async move {
                    match broker.gate().sweep_admission_records().await {
                        Ok(r) if r.deleted > 0 => {
                            info!(
                                checked = r.checked,
                                deleted = r.deleted,
                                "admission records of gone pods deleted"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "admission record sweep failed; will retry"),
                    }
                }
            },
        ));
    }
    // REV (issue 16): revocation on pod deletion, by one replica at a time.
    if broker.config().revocation.revoke_on_pod_deletion
        && let Some(l) = &broker.config().gate.pod_lookup
    {
        match crate::gate::pods::PodLookup::new(l) {
            Ok(lookup) => {
                let watch = crate::issue::pod_watch::PodWatch::new(
                    lookup.client(),
                    broker.config().revocation.pod_watch_timeout_seconds,
                    Duration::from_secs(broker.config().revocation.pod_watch_clock_skew_seconds),
                );
                let broker = broker.clone();
                let rx = rx.clone();
                tasks.push(tokio::spawn(async move {
                    watch.run(broker, stopped(rx)).await;
                }));
            }
            Err(e) => {
                warn!(error = %e, "the pod watch cannot start; pods deleted will not revoke their leases")
            }
        }
    }
    let jwks = {
        let broker = broker.clone();
        tokio::spawn(async move { broker.verifier().run_refresh(stopped(rx)).await })
    };
    tasks.push(jwks);
    Background { stop, tasks }
}

/// Serves the broker on `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (up to 10 s) and stops background tasks.
///
/// At most `server.max_connections` connections are held at once: at the cap the loop stops
/// accepting until one closes (new clients wait in the kernel's accept queue rather than
/// being refused), and counts it in `lanyard_connection_limit_waits_total`.
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
    let (server_config, client_cas) = tls::server_setup(
        &tls_cfg,
        broker.config().gate.admission.client_ca_file.as_deref(),
        cert.clone(),
    )
    .map_err(StartError::Tls)?;
    let failures = broker.verifier().refresh_all().await;
    for (issuer, reason) in failures {
        warn!(%issuer, %reason, "issuer keys not available yet; will retry in the background");
    }
    let background = spawn_background(&broker, cert);
    let header_limit = u32::try_from(broker.config().limits.max_token_bytes.saturating_mul(8))
        .unwrap_or(u32::MAX)
        .max(64 * 1024);
    let deadlines = deadline::Deadlines::from_config(&broker.config().server);
    let shared = Arc::new(conn::Shared {
        acceptor: TlsAcceptor::from(Arc::new(server_config)),
        client_cas,
        app: routes::router(broker.clone()),
        http: conn::http_builder(&deadlines, header_limit),
        deadlines,
        metrics: broker.metrics().clone(),
    });
    let max_connections = broker.config().server.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections as usize));
    let (stop, stopping) = watch::channel(false);
    let local = listener.local_addr().ok();
    info!(addr = ?local, max_connections, "broker listening (https)");

    tokio::pin!(shutdown);
    let mut last_limit_warning: Option<Instant> = None;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                broker.metrics().connection_limit_waits.inc();
                if last_limit_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    warn!(
                        max_connections,
                        "connection limit reached; not accepting until a connection closes"
                    );
                    last_limit_warning = Some(Instant::now());
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    slot = slots.clone().acquire_owned() => slot.expect("the slot semaphore is never closed"),
                }
            }
        };
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
        let open = broker.metrics().open_connections.clone();
        open.inc();
        let shared = shared.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            conn::serve(shared, tcp, peer, stopping).await;
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    info!("shutting down: draining connections");
    let _ = stop.send(true);
    // Every connection holds a slot until it ends: all slots back means all drained.
    if tokio::time::timeout(
        conn::DRAIN + Duration::from_secs(1),
        slots.acquire_many(max_connections),
    )
    .await
    .is_err()
    {
        warn!("some connections did not finish within 10 s");
    }
    let _ = background.stop.send(true);
    for t in background.tasks {
        let _ = t.await;
    }
    // No failure goes uncounted in the log: the open windows' summaries too.
    broker.flush_auth_failure_summaries(true).await;
    info!("broker stopped");
    Ok(())
}
