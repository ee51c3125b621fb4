//! # lanyard-sidecar
//!
//! Writes short-lived credentials from a lanyard broker into a directory and keeps them
//! fresh. `init` fetches once and exits; `run` writes, then refreshes at about 70% of each
//! lifetime, backs off while the broker is unreachable, does not retry what the broker
//! refused, and keeps the last good files until they really expire.
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
//! From the top down; each module imports only modules listed below it, and only this file
//! sees them all:
//! - this file: [`init`], [`init_with`], [`run`], [`run_with`], [`main_with_args`]: the
//!   fetch-and-write loops and the binary's entry point.
//! - [`cli`]: the command line (clap) and how it becomes a [`SidecarConfig`] and
//!   [`Options`].
//! - [`health`]: `/healthz`, `/readyz`, `/metrics`, `POST /quitquitquit`.
//! - [`options`]: what `init` and `run` are given ([`SidecarConfig`], [`Options`]).
//! - [`aws`]: the AWS container-credentials endpoint (`--aws-listen`) for unmodified AWS
//!   SDKs.
//! - [`spec`]: spec parsing: the config file and annotation keys, checked into targets,
//!   notify actions and the on-expiry choice.
//! - [`files`]: the writer: atomic writes with mode and owner, the default layout, targets
//!   on disk, expired files.
//! - [`held`]: held directories: files created, renamed and removed relative to a directory
//!   descriptor opened without following links (`openat`/`renameat`, `O_NOFOLLOW`), so a
//!   path component swapped for a link cannot redirect a write.
//! - [`render`]: the pure rendering of each format (raw, env, json, aws, template).
//! - [`notify`]: telling the application after a rotation (signal, command, touch).
//! - [`schedule`]: the pure refresh/backoff decision `run` follows.
//! - [`error`](mod@error): the error type, [`SidecarError`], with exit codes and retryability.
//! - [`target`]: the checked target types ([`Target`], [`Format`](target::Format),
//!   [`OnExpiry`]).
//! - [`names`]: the leaf: plain names, target paths, modes and bounded reads of small
//!   files.

pub mod aws;
pub mod cli;
pub mod error;
pub mod files;
#[cfg(test)]
mod fixtures;
pub mod health;
pub mod held;
pub mod names;
pub mod notify;
pub mod options;
pub mod render;
pub mod schedule;
pub mod spec;
pub mod target;

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Parser;
use lanyard::clock::{Clock, SystemClock, rfc3339, unix_seconds};
use tracing::{debug, error, info, warn};

pub use error::SidecarError;
pub use files::WrittenCredential;
pub use notify::Notify;
pub use options::{Options, SidecarConfig};
use schedule::{Held, Schedule};
pub use target::{OnExpiry, Target};

/// What one fetch wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The broker's request id (also in its audit log).
    pub request_id: String,
    /// The identity the broker authenticated.
    pub identity: String,
    /// One entry per credential.
    pub credentials: Vec<WrittenCredential>,
    /// When the broker says the pod was admitted (its admission record), if it did.
    pub admitted_at: Option<SystemTime>,
}

impl Written {
    /// Seconds from the pod's admission to `now` (when the files are on disk), if the broker
    /// said when the pod was admitted; 0 when the clocks disagree the other way.
    pub fn since_admission(&self, now: SystemTime) -> Option<f64> {
        self.admitted_at
            .map(|t| now.duration_since(t).map_or(0.0, |d| d.as_secs_f64()))
    }

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

/// Fetches once and writes the credentials in the default layout; returns what was written.
pub async fn init(cfg: &SidecarConfig) -> Result<Written, SidecarError> {
    fetch_and_write(cfg, &Options::default()).await
}

/// Fetches and writes per `opts`. With a deadline, retryable failures are retried with
/// backoff (0.25 s doubling to 5 s, jittered) until it passes; anything else (a refusal, an
/// unsafe path, a bad target) fails at once, with the broker's reason when it refused.
pub async fn init_with(cfg: &SidecarConfig, opts: &Options) -> Result<Written, SidecarError> {
    let Some(deadline) = opts.deadline else {
        return fetch_and_write(cfg, opts).await;
    };
    let started = tokio::time::Instant::now();
    let end = started + deadline;
    let mut backoff =
        lanyard::refresh::Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last = match tokio::time::timeout_at(end, fetch_and_write(cfg, opts)).await {
            Ok(Ok(w)) => return Ok(w),
            Ok(Err(e)) if !e.is_retryable() => return Err(e),
            Ok(Err(e)) => e,
            Err(_) => SidecarError::Fetch(lanyard::Error::Transport(format!(
                "at {}: no answer before the deadline",
                cfg.client.broker_url()
            ))),
        };
        let wait = backoff.next_delay(fastrand::f64());
        let now = tokio::time::Instant::now();
        if now + wait >= end {
            return Err(SidecarError::Deadline {
                attempts,
                seconds: deadline.as_secs(),
                last: Box::new(last),
            });
        }
        warn!(error = %last, attempt = attempts, retry_in_seconds = wait.as_secs_f64(), "init failed; retrying");
        tokio::time::sleep(wait).await;
    }
}

async fn fetch_and_write(cfg: &SidecarConfig, opts: &Options) -> Result<Written, SidecarError> {
    fetch_write_keep(cfg, opts).await.map(|(w, _)| w)
}

/// [`fetch_and_write`], also returning the broker's answer (for the AWS endpoint).
async fn fetch_write_keep(
    cfg: &SidecarConfig,
    opts: &Options,
) -> Result<(Written, Arc<lanyard::wire::CredentialResponse>), SidecarError> {
    let resp = Arc::new(cfg.client.fetch().await?);
    let kept = resp.clone();
    let dir = cfg.dir.clone();
    let request_id = resp.request_id.clone();
    let identity = resp.identity.clone();
    let admitted_at = resp
        .admitted_at
        .as_deref()
        .and_then(lanyard::clock::parse_rfc3339);
    let targets = opts.targets.clone();
    // fsync and rename block; keep them off the async workers.
    let credentials = tokio::task::spawn_blocking(move || {
        if targets.is_empty() {
            files::write_response(&dir, &resp)
        } else {
            files::write_targets(&dir, &targets, &resp)
        }
    })
    .await
    .map_err(|e| SidecarError::Write {
        path: cfg.dir.clone(),
        source: io::Error::other(format!("writer task failed: {e}")),
    })??;
    Ok((
        Written {
            request_id,
            identity,
            credentials,
            admitted_at,
        },
        kept,
    ))
}

/// Writes the credentials, then keeps them fresh until `shutdown` resolves. Failures are
/// logged and retried with backoff; a refusal ([`SidecarError::is_refusal`]) is logged as an
/// error with the broker's reason and not retried, only asked again 4 to 5 minutes later.
/// Either way the last good files stay in place until they expire. Returns `Ok(())` on
/// shutdown.
pub async fn run(
    cfg: &SidecarConfig,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SidecarError> {
    run_with(cfg, &Options::default(), None, clock, shutdown).await
}

/// Why `run` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Shutdown,
    Quit,
    ExitFile,
}

/// Resolves once `path` exists (checked every 200 ms); never without a path.
async fn file_appears(path: Option<&Path>) {
    let Some(path) = path else {
        return std::future::pending().await;
    };
    loop {
        if tokio::fs::symlink_metadata(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`run`] with options, and a bound listener for the health port (`/healthz`, `/readyz`,
/// `/metrics`, `POST /quitquitquit`). Ends with `Ok(())` on `shutdown`, on a quit request
/// and when `opts.exit_when_file` appears.
pub async fn run_with(
    cfg: &SidecarConfig,
    opts: &Options,
    health: Option<tokio::net::TcpListener>,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SidecarError> {
    let status = Arc::new(health::Status::default());
    if let Some(aws) = &opts.aws {
        status.set_aws(aws.clone());
    }
    let mut aws_served = false;
    let (health_stop, health_rx) = tokio::sync::watch::channel(false);
    let health_task = health.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "health port listening");
        }
        let mut rx = health_rx;
        tokio::spawn(health::serve(listener, status.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    });
    let stop = async {
        tokio::select! {
            () = shutdown => Stop::Shutdown,
            () = status.quit_requested() => Stop::Quit,
            () = file_appears(opts.exit_when_file.as_deref()) => Stop::ExitFile,
        }
    };
    let mut stop = std::pin::pin!(stop);
    let mut schedule = Schedule::new();
    // The credentials on disk, by role (expired ones are dropped once handled).
    let mut held: std::collections::BTreeMap<String, WrittenCredential> = Default::default();
    let mut expired_roles = std::collections::BTreeSet::new();
    info!(broker = %cfg.client.broker_url(), dir = %cfg.dir.display(), targets = opts.targets.len(), "lanyard-sidecar running");
    let why = 'outer: loop {
        let outcome = tokio::select! {
            why = &mut stop => break 'outer why,
            outcome = fetch_write_keep(cfg, opts) => outcome,
        };
        let decision = match outcome {
            Ok((written, resp)) => {
                if let Some(aws) = &opts.aws {
                    match aws.update(&resp) {
                        Ok(role) => {
                            if !aws_served {
                                info!(role = %role, "AWS container-credentials endpoint is serving");
                            }
                            aws_served = true;
                        }
                        // Nothing to serve from the start is a configuration error; later,
                        // keep serving the held credential until it expires.
                        Err(e) if !aws_served => {
                            let _ = health_stop.send(true);
                            return Err(e);
                        }
                        Err(e) => {
                            warn!(error = %e, "keeping the AWS credential held until it expires")
                        }
                    }
                }
                let mut rotated = Vec::new();
                for c in &written.credentials {
                    info!(
                        request_id = %written.request_id,
                        role = %c.role,
                        kind = %c.kind,
                        lease_id = %c.lease_id,
                        expires_at = %rfc3339(c.expires_at),
                        rotated = c.rotated,
                        "credential written"
                    );
                    // A role whose files were removed at expiry and are back is a
                    // rotation too.
                    if c.rotated || expired_roles.remove(&c.role) {
                        rotated.push(c.role.clone());
                    }
                    held.insert(c.role.clone(), c.clone());
                }
                if let Some(seconds) = written.since_admission(clock.now()) {
                    if status.refreshes() == 0 {
                        info!(
                            seconds = format!("{seconds:.3}"),
                            "credentials on disk after the pod's admission"
                        );
                    }
                    status.record_startup(seconds);
                }
                status.record_success(
                    written
                        .credentials
                        .iter()
                        .map(|c| (c.role.clone(), unix_seconds(c.expires_at))),
                );
                status.set_ready(true);
                if !rotated.is_empty() {
                    tokio::select! {
                        why = &mut stop => break 'outer why,
                        () = tell_the_app(&opts.notify, &rotated, clock.now()) => {}
                    }
                }
                schedule.on_success(written.held(), clock.now(), fastrand::f64())
            }
            Err(e) if e.is_refusal() => {
                // Asking again gets the same answer until someone fixes the cause: no
                // retries, a recheck minutes later, the last good files kept until they expire.
                status.record_refusal();
                let d = schedule.on_refusal(clock.now(), fastrand::f64());
                error!(
                    error = %e,
                    failures = d.failures,
                    ask_again_in_seconds = d.wait.as_secs_f64(),
                    "the broker refused the refresh; not retrying, keeping the last good files until they expire"
                );
                d
            }
            Err(e) => {
                status.record_failure();
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
        // Sleep until the next fetch, waking at each held credential's expiry on the way.
        let fetch_at = tokio::time::Instant::now() + decision.wait;
        loop {
            let now = clock.now();
            let expired: Vec<String> = held
                .values()
                .filter(|c| c.expires_at <= now)
                .map(|c| c.role.clone())
                .collect();
            for role in expired {
                if let Some(c) = held.remove(&role) {
                    expired_roles.insert(role.clone());
                    handle_expired(&cfg.dir, &c, opts.on_expiry).await;
                    status.set_ready(false);
                }
            }
            let until_fetch = fetch_at.saturating_duration_since(tokio::time::Instant::now());
            if until_fetch.is_zero() {
                break;
            }
            let until_expiry = held
                .values()
                .map(|c| c.expires_at.duration_since(now).unwrap_or(Duration::ZERO))
                .min()
                .map(|d| d + Duration::from_millis(10));
            let nap = until_expiry.map_or(until_fetch, |e| e.min(until_fetch));
            tokio::select! {
                why = &mut stop => break 'outer why,
                () = tokio::time::sleep(nap) => {}
            }
        }
    };
    info!(reason = ?why, "lanyard-sidecar shutting down");
    if opts.revoke_on_shutdown {
        revoke_all(cfg, &held, clock.now()).await;
    }
    let _ = health_stop.send(true);
    if let Some(t) = health_task {
        let _ = t.await;
    }
    Ok(())
}

async fn tell_the_app(actions: &[Notify], roles: &[String], now: std::time::SystemTime) {
    for a in actions {
        match a.fire(roles, now).await {
            Ok(what) => info!(roles = %roles.join(","), "{what}"),
            Err(why) => {
                warn!(roles = %roles.join(","), error = %why, "could not tell the application about the rotation")
            }
        }
    }
}

async fn handle_expired(dir: &Path, c: &WrittenCredential, on_expiry: OnExpiry) {
    let when = rfc3339(c.expires_at);
    if on_expiry == OnExpiry::Keep {
        error!(role = %c.role, expired_at = %when, "credential has expired and could not be refreshed; its files are stale (on-expiry keep)");
        return;
    }
    let remove = on_expiry == OnExpiry::Remove;
    let files = c.files.clone();
    let w = when.clone();
    let dir = dir.to_owned();
    let (done, errors) =
        tokio::task::spawn_blocking(move || files::expire_files(&dir, &files, remove, &w))
            .await
            .unwrap_or_else(|e| (Vec::new(), vec![e.to_string()]));
    error!(
        role = %c.role,
        expired_at = %when,
        files = done.len(),
        action = if remove { "removed" } else { "marked" },
        "credential has expired and could not be refreshed"
    );
    for e in errors {
        error!(role = %c.role, error = %e, "could not handle an expired file");
    }
}

async fn revoke_all(
    cfg: &SidecarConfig,
    held: &std::collections::BTreeMap<String, WrittenCredential>,
    now: std::time::SystemTime,
) {
    for c in held.values().filter(|c| c.expires_at > now) {
        match tokio::time::timeout(Duration::from_secs(5), cfg.client.revoke_lease(&c.lease_id))
            .await
        {
            Ok(Ok(())) => info!(role = %c.role, lease_id = %c.lease_id, "lease revoked"),
            Ok(Err(e)) => {
                warn!(role = %c.role, lease_id = %c.lease_id, error = %e, "could not revoke lease")
            }
            Err(_) => warn!(role = %c.role, lease_id = %c.lease_id, "revoking the lease timed out"),
        }
    }
}

/// The binary's whole `main`: parses `args` (including the program name), sets up logging,
/// runs `init` or `run`, and returns the exit code (0 ok, 1 failure, 2 usage).
pub async fn main_with_args(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let env: Vec<(String, String)> = std::env::vars().collect();
    main_with_env(args, env).await
}

/// [`main_with_args`] with the environment given (for `LANYARD_TARGET_<N>`).
pub async fn main_with_env(
    args: impl IntoIterator<Item = OsString>,
    env: impl IntoIterator<Item = (String, String)>,
) -> ExitCode {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let env: Vec<(String, String)> = env.into_iter().collect();
    init_tracing(
        env.iter()
            .find(|(k, _)| k == "LANYARD_LOG")
            .map(|(_, v)| v.as_str()),
    );
    let (is_run, args) = match &cli.command {
        cli::Command::Init(a) => (false, a),
        cli::Command::Run(a) => (true, a),
        cli::Command::CredentialProcess(a) => return credential_process(a).await,
    };
    let (cfg, mut opts) = match args
        .to_config()
        .and_then(|cfg| Ok((cfg, args.to_options(is_run, &env)?)))
    {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if is_run {
        let health = match args.health_listen {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    return fail(&SidecarError::Usage(format!(
                        "--health-listen {addr}: cannot listen: {e}"
                    )));
                }
            },
            None => None,
        };
        if let Some(addr) = args.aws_listen {
            match start_aws_endpoint(args, addr, &cfg.dir).await {
                Ok(server) => opts.aws = Some(server),
                Err(e) => return fail(&e),
            }
        }
        match run_with(
            &cfg,
            &opts,
            health,
            Arc::new(SystemClock),
            shutdown_signal(),
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        }
    } else {
        match init_with(&cfg, &opts).await {
            Ok(written) => {
                let since_admission = written
                    .since_admission(SystemClock.now())
                    .map(|s| format!("{s:.3}"));
                info!(
                    request_id = %written.request_id,
                    identity = %written.identity,
                    credentials = written.credentials.len(),
                    dir = %cfg.dir.display(),
                    seconds_since_admission = since_admission.as_deref().unwrap_or("-"),
                    "credentials written"
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        }
    }
}

/// Binds `--aws-listen`, writes the authorization token file and serves the endpoint until
/// the process ends.
async fn start_aws_endpoint(
    args: &cli::CommonArgs,
    addr: std::net::SocketAddr,
    dir: &Path,
) -> Result<Arc<aws::AwsServer>, SidecarError> {
    let opts = args.aws_token_opts()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| SidecarError::Usage(format!("--aws-listen {addr}: cannot listen: {e}")))?;
    let bound = listener.local_addr().unwrap_or(addr);
    let token = aws::new_token()?;
    let token_dir = dir.to_owned();
    let name = args.aws_token_file.clone();
    let t = token.clone();
    let token_path =
        tokio::task::spawn_blocking(move || aws::write_token(&token_dir, &name, &t, opts))
            .await
            .map_err(|e| SidecarError::Write {
                path: dir.to_owned(),
                source: io::Error::other(format!("writer task failed: {e}")),
            })??;
    let server = Arc::new(aws::AwsServer::new(
        args.aws_role.clone(),
        token,
        Arc::new(SystemClock),
    ));
    info!(
        full_uri = %format!("http://{bound}{}", aws::PATH),
        token_file = %token_path.display(),
        "AWS container-credentials endpoint listening: set AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE to these in the app"
    );
    tokio::spawn(aws::serve(listener, server.clone(), std::future::pending()));
    Ok(server)
}

/// `credential-process`: fetch once, print the AWS `credential_process` JSON.
async fn credential_process(args: &cli::ProcessArgs) -> ExitCode {
    use std::io::Write as _;
    let client = match args.to_client() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let resp = match client.fetch().await {
        Ok(r) => r,
        Err(e) => return fail(&SidecarError::Fetch(e)),
    };
    let json = match lanyard::aws::pick(&resp, args.role.as_deref())
        .and_then(lanyard::aws::AwsKeys::from_credential)
    {
        Ok(keys) => keys.process_json(),
        Err(e) => return fail(&SidecarError::Invalid(e)),
    };
    let mut out = io::stdout().lock();
    match out
        .write_all(&json)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&SidecarError::Write {
            path: PathBuf::from("<stdout>"),
            source: e,
        }),
    }
}

fn fail(e: &SidecarError) -> ExitCode {
    eprintln!("lanyard-sidecar: {e}");
    ExitCode::from(e.exit_code())
}

/// The log filter for the value of `LANYARD_LOG` (default, and when it does not parse:
/// `info`), through the filter the broker uses too ([`lanyard::logging::log_filter`]):
/// rustls's warning about an IP address sent as SNI stays out unless the value names rustls.
fn env_filter(lanyard_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    use lanyard::logging::log_filter;
    tracing_subscriber::EnvFilter::try_new(log_filter(lanyard_log.unwrap_or("info")))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter("info")))
}

/// Logs to stderr, filtered by [`env_filter`], in colour only on a terminal (a log file or a
/// container log gets plain text). A no-op when the embedding process already installed a
/// subscriber.
fn init_tracing(lanyard_log: Option<&str>) {
    use std::io::IsTerminal as _;
    let filter = env_filter(lanyard_log);
    let _ = tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether [`env_filter`] for `lanyard_log` lets a `WARN` of rustls's handshake module
    /// (where the SNI warning comes from) and one of the sidecar through.
    fn warns(lanyard_log: Option<&str>) -> (bool, bool) {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry().with(env_filter(lanyard_log));
        tracing::subscriber::with_default(subscriber, || {
            (
                tracing::event_enabled!(target: "rustls::msgs::handshake", tracing::Level::WARN),
                tracing::event_enabled!(target: "lanyard_sidecar", tracing::Level::WARN),
            )
        })
    }

    #[test]
    fn rustls_sni_warnings_are_hidden_unless_lanyard_log_names_rustls() {
        for value in [
            None,
            Some("info"),
            Some("debug"),
            Some("warn,lanyard_sidecar=debug"),
        ] {
            assert_eq!(warns(value), (false, true), "{value:?}");
        }
        assert_eq!(warns(Some("info,rustls=debug")), (true, true));
    }
}
