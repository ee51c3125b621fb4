//! # lanyard-sidecar
//!
//! Writes short-lived credentials from a lanyard broker into a directory and keeps them
//! fresh. `init` fetches once and exits; `run` writes, then refreshes at about 70% of each
//! lifetime, backs off while the broker is unreachable and keeps the last good files until
//! they really expire.
//!
//! The library is what the binary runs, and what the broker's dev mode and tests call
//! in-process:
//!
//! ```no_run
//! # async fn demo() -> Result<(), lanyard_sidecar::SidecarError> {
//! use std::sync::Arc;
//! let client = lanyard::Client::from_env()?;
//! let cfg = lanyard_sidecar::SidecarConfig { client, dir: "/run/secrets".into() };
//! let written = lanyard_sidecar::init(&cfg).await?;
//! for path in written.files() {
//!     println!("wrote {}", path.display());
//! }
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! lanyard_sidecar::run(&cfg, Arc::new(lanyard::clock::SystemClock), shutdown).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`cli`]: the command line (clap) and how it becomes a [`SidecarConfig`].
//! - [`files`]: name checks, atomic 0400 writes, the on-disk layout.
//! - [`schedule`]: the pure refresh/backoff decision `run` follows.
//! - this file: [`init`], [`run`], [`main_with_args`] and the error type.

pub mod cli;
pub mod files;
pub mod schedule;

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use lanyard::Client;
use lanyard::clock::{Clock, SystemClock, rfc3339};
use tracing::{debug, error, info, warn};

pub use files::WrittenCredential;
use schedule::{Held, Schedule};

/// What the sidecar needs: a configured client and the directory to write into.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The broker client (URL, CA, token source, roles, TTL).
    pub client: Client,
    /// The secrets directory.
    pub dir: PathBuf,
}

/// What one fetch wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The broker's request id (also in its audit log).
    pub request_id: String,
    /// The identity the broker authenticated.
    pub identity: String,
    /// One entry per credential.
    pub credentials: Vec<WrittenCredential>,
}

impl Written {
    /// Every file written, in order.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.credentials
            .iter()
            .flat_map(|c| c.files.iter().map(PathBuf::as_path))
    }

    fn held(&self) -> Vec<Held> {
        self.credentials
            .iter()
            .map(|c| Held {
                role: c.role.clone(),
                issued_at: c.issued_at,
                expires_at: c.expires_at,
            })
            .collect()
    }
}

/// Errors of the sidecar.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// Fetching from the broker failed (unreachable, refused, bad answer, token file).
    #[error(transparent)]
    Fetch(#[from] lanyard::Error),
    /// The broker's answer cannot be written safely (bad role or field name, bad times).
    #[error("the broker sent a credential the sidecar will not write: {0}")]
    Invalid(String),
    /// Writing a file or creating a directory failed.
    #[error("cannot write {path}: {source}; check that the directory is writable by this user")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The command line or configuration is wrong.
    #[error("{0}")]
    Usage(String),
}

impl SidecarError {
    /// The process exit code for this error: 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Fetches once and writes the credentials; returns what was written.
pub async fn init(cfg: &SidecarConfig) -> Result<Written, SidecarError> {
    fetch_and_write(cfg).await
}

async fn fetch_and_write(cfg: &SidecarConfig) -> Result<Written, SidecarError> {
    let resp = cfg.client.fetch().await?;
    let dir = cfg.dir.clone();
    let request_id = resp.request_id.clone();
    let identity = resp.identity.clone();
    // fsync and rename block; keep them off the async workers.
    let credentials = tokio::task::spawn_blocking(move || files::write_response(&dir, &resp))
        .await
        .map_err(|e| SidecarError::Write {
            path: cfg.dir.clone(),
            source: io::Error::other(format!("writer task failed: {e}")),
        })??;
    Ok(Written {
        request_id,
        identity,
        credentials,
    })
}

/// Writes the credentials, then keeps them fresh until `shutdown` resolves. Failures are
/// logged and retried with backoff; the last good files stay in place. Returns `Ok(())` on
/// shutdown.
pub async fn run(
    cfg: &SidecarConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SidecarError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut schedule = Schedule::new();
    info!(broker = %cfg.client.broker_url(), dir = %cfg.dir.display(), "lanyard-sidecar running");
    loop {
        let outcome = tokio::select! {
            () = &mut shutdown => break,
            outcome = fetch_and_write(cfg) => outcome,
        };
        let decision = match outcome {
            Ok(written) => {
                for c in &written.credentials {
                    info!(
                        request_id = %written.request_id,
                        role = %c.role,
                        kind = %c.kind,
                        lease_id = %c.lease_id,
                        expires_at = %rfc3339(c.expires_at),
                        "credential written"
                    );
                }
                schedule.on_success(written.held(), clock.now(), fastrand::f64())
            }
            Err(e) => {
                let d = schedule.on_failure(clock.now(), fastrand::f64());
                warn!(
                    error = %e,
                    failures = d.failures,
                    retry_in_seconds = d.wait.as_secs_f64(),
                    "refresh failed; keeping the last good files"
                );
                d
            }
        };
        if decision.failures > 0 {
            for (role, left) in &decision.expiring {
                warn!(role = %role, seconds_left = left.as_secs(), "credential expires soon and has not been refreshed");
            }
            for role in &decision.expired {
                error!(role = %role, "credential has expired and could not be refreshed; its files are stale");
            }
        } else {
            for role in &decision.expired {
                warn!(role = %role, "the broker issued a credential that has already expired; check the clocks of broker and sidecar");
            }
        }
        debug!(
            wait_seconds = decision.wait.as_secs_f64(),
            due = decision.due.as_deref().unwrap_or("-"),
            "next refresh scheduled"
        );
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(decision.wait) => {}
        }
    }
    info!("lanyard-sidecar shutting down");
    Ok(())
}

/// The binary's whole `main`: parses `args` (including the program name), sets up logging,
/// runs `init` or `run`, and returns the exit code (0 ok, 1 failure, 2 usage).
pub async fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    init_tracing();
    let (is_run, args) = match &cli.command {
        cli::Command::Init(a) => (false, a),
        cli::Command::Run(a) => (true, a),
    };
    let cfg = match args.to_config() {
        Ok(cfg) => cfg,
        Err(e) => return fail(&e),
    };
    if is_run {
        match run(&cfg, Arc::new(SystemClock), shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        }
    } else {
        match init(&cfg).await {
            Ok(written) => {
                info!(
                    request_id = %written.request_id,
                    identity = %written.identity,
                    credentials = written.credentials.len(),
                    dir = %cfg.dir.display(),
                    "credentials written"
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        }
    }
}

fn fail(e: &SidecarError) -> ExitCode {
    eprintln!("lanyard-sidecar: {e}");
    ExitCode::from(e.exit_code())
}

/// Logs to stderr, level from `LANYARD_LOG` (default `info`). A no-op when the embedding
/// process already installed a subscriber.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LANYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(filter)
        .try_init();
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the sidecar");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
