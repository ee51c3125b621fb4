//! The `lanyard-broker` command line. `main.rs` only calls [`main`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lanyard::clock::{Clock, SystemClock};
use lanyard::wire::{
    ErrorBody, MintTokenRequest, MintTokenResponse, RevokeSessionRequest, SessionRevocationResponse,
};

use crate::audit::{self, Decision, Event};
use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::metrics::Metrics;
use crate::output::out;
use crate::server::routes::{ExplainRequest, IdentitySpec};

const EXAMPLES: &str = "\
Examples:
  lanyard-broker dev                                  # everything embedded, on https://127.0.0.1:8443
  lanyard-broker serve --config /etc/lanyard/broker.yaml
  lanyard-broker policy check policies/
  lanyard-broker policy explain --dir policies/ --issuer https://kubernetes.default.svc.cluster.local \\
      --subject system:serviceaccount:shop:api --namespace shop --service-account api --role orders-api
  lanyard-broker token create --role dev-app --ttl 10m   # needs LANYARD_BROKER_URL, LANYARD_CA_FILE, LANYARD_ADMIN_TOKEN_FILE
  lanyard-broker audit verify /var/lib/lanyard/audit.log
  lanyard-broker audit query /var/lib/lanyard/audit.log --decision deny --since 2026-11-01T00:00:00Z
  lanyard-broker scan oci-archive:app.oci.tar --format sarif > scan.sarif
  lanyard-broker image scan registry.example.com/shop/api:1.4   # scan ahead in CI; needs the admin variables too
  lanyard-broker image verdict registry.example.com/shop/api@sha256:…
  lanyard-broker image exempt sha256:… --reason \"vendor test key, INC-42\"
  lanyard-broker store migrate --from /var/lib/lanyard/lanyard.db --to-file /run/secrets/postgres-url

Exit codes: 0 success, 1 failure (invalid policy, broken audit chain, refused request), 2 usage error.
`scan`, `image scan`, `image verdict`: 0 clean, 1 secrets found, 2 error, incomplete or still pending.
Docs: docs/ARCHITECTURE.md, docs/CONFIG.md, docs/POLICIES.md, docs/API.md, docs/SCANNER.md";

/// lanyard broker: short-lived, scoped credentials for workloads, so images hold none.
#[derive(Debug, Parser)]
#[command(name = "lanyard-broker", version, after_help = EXAMPLES, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `lanyard_broker=debug`. At
    /// `info` the broker logs start-up, reloads, refusals and errors; each issuance is in the
    /// audit log, and in this log only at `debug`. rustls's warnings about malformed SNI
    /// (e.g. an IP address sent as SNI) are hidden unless the filter names `rustls`.
    #[arg(long, global = true, env = "LANYARD_LOG", default_value = "info")]
    log: String,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "LANYARD_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

/// Log line format (`--log-format`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker from a configuration file.
    Serve {
        /// Configuration file (YAML, TOML or JSON); `LANYARD_*` variables override keys
        /// (`LANYARD_STORE__SQLITE_PATH=...`). See docs/CONFIG.md.
        #[arg(long, short, env = "LANYARD_CONFIG")]
        config: PathBuf,
    },
    /// Run everything embedded for local development: broker, dev CA, store, sidecar.
    Dev {
        /// Directory for the dev CA, keys, store, audit log and secrets (kept across runs).
        #[arg(long, default_value = ".lanyard-dev")]
        dir: PathBuf,
        /// Listen address (`127.0.0.1:0` picks a free port).
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Policy directory (default: ./policies if it exists, else a built-in example).
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Role for the dev bootstrap token and sidecar.
        #[arg(long, default_value = "dev-app")]
        role: String,
        /// Do not run the in-process sidecar.
        #[arg(long)]
        no_sidecar: bool,
    },
    /// Bootstrap tokens (admin API).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Leases (admin API).
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Ask a running broker to reload its policies now (admin API).
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Check and explain policies, offline.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Verify and search audit logs, offline.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Scan a container image for baked-in secrets (config, history, every layer).
    /// Exit 0 clean, 1 secrets found, 2 error or incomplete. See docs/SCANNER.md.
    Scan(ScanArgs),
    /// The image gate of a running broker (admin API): scan ahead, show verdicts, exempt.
    /// See docs/GATE.md.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The broker's store, offline: move from SQLite to PostgreSQL.
    #[command(subcommand)]
    Store(StoreCommand),
}

/// `lanyard-broker store …`.
#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Copy an SQLite store into an empty PostgreSQL database (schema created first): signing
    /// keys, local secrets, bootstrap tokens (unexpired or redeemed), leases (unexpired or
    /// still to revoke), session revocations, verdicts, exemptions, admission records and the
    /// audit chain head. Stop every broker using the SQLite file first. See
    /// docs/OPERATIONS.md.
    Migrate {
        /// The SQLite file (`store.sqlite_path`).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL URL (`postgres://user:password@host:port/db?sslmode=verify-full`).
        /// Holds a password: prefer `--to-file`, or the variable.
        #[arg(
            long,
            env = "LANYARD_STORE_MIGRATE_TO",
            hide_env_values = true,
            required_unless_present = "to_file",
            conflicts_with = "to_file"
        )]
        to: Option<lanyard::Secret>,
        /// File holding the PostgreSQL URL.
        #[arg(long)]
        to_file: Option<PathBuf>,
        /// PEM CA certificates the PostgreSQL server's certificate must chain to (TLS).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
}

/// `lanyard-broker image …`.
#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Ask the broker to scan an image now (CI, right after a push), so that issuance and
    /// admission find a verdict instead of scanning. A tag is resolved to its digest through
    /// the registry; the verdict is stored under the digest and the scanner's ruleset version.
    /// Prints the verdict, the findings' locations (never a secret) and the pinned reference
    /// to bind into bootstrap tokens. Exit 0 clean, 1 dirty, 2 incomplete, failed or still
    /// pending (the scan goes on in the broker; ask again with `image verdict`).
    #[command(
        after_help = "Example:\n  lanyard-broker image scan --broker https://lanyard:8443 registry.example.com/shop/api:1.4\n\nThe broker reads registry credentials from its own configuration (gate.registries), never from this command."
    )]
    Scan {
        /// HOST/REPOSITORY:TAG or HOST/REPOSITORY@sha256:DIGEST.
        image: String,
        /// Scan again even if a verdict under the current ruleset exists.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the verdict (default: the broker's gate.scan_deadline_seconds).
        #[arg(long)]
        wait: Option<u64>,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the stored verdict of an image digest, with the broker's allowlist applied, and
    /// its exemption if any. Exit 0 clean, 1 dirty, 2 incomplete or no verdict.
    Verdict {
        /// sha256:DIGEST or HOST/REPOSITORY@sha256:DIGEST (for a tag, use `image scan`, which
        /// answers from the stored verdict when there is one).
        image: String,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Exempt one image digest from the gate: a dirty or incomplete verdict no longer refuses
    /// it. Every use is audited with the reason. Prefer fixing the image; an allowlist entry
    /// (gate.allowlist_file) is better for a known false positive.
    Exempt {
        /// sha256:DIGEST (an exemption is per digest, never per tag or repository).
        digest: String,
        /// Why (required): shown in every audit record of the exemption's use.
        #[arg(long, required = true)]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Args)]
struct ScanArgs {
    /// docker-archive:PATH, oci:DIR[:TAG], oci-archive:PATH[:TAG] or
    /// registry://HOST[:PORT]/REPO:TAG|@sha256:DIGEST.
    source: String,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value = "human")]
    format: ScanFormat,
    /// Allowlist file (YAML: `allow:` entries with fingerprint or path, and a reason).
    #[arg(long)]
    allowlist: Option<PathBuf>,
    /// Platform of an image index to scan, e.g. linux/arm64 (default: this machine's).
    #[arg(long, conflicts_with = "all_platforms")]
    platform: Option<String>,
    /// Scan every platform of an image index.
    #[arg(long)]
    all_platforms: bool,
    /// Registry user name (basic auth, or the registry's token flow).
    #[arg(long, env = "LANYARD_REGISTRY_USERNAME")]
    registry_username: Option<String>,
    /// File holding the registry password or access token.
    #[arg(long, env = "LANYARD_REGISTRY_PASSWORD_FILE")]
    registry_password_file: Option<PathBuf>,
    /// File holding a registry bearer token (sent as is).
    #[arg(
        long,
        env = "LANYARD_REGISTRY_TOKEN_FILE",
        conflicts_with = "registry_username"
    )]
    registry_token_file: Option<PathBuf>,
    /// Use plain HTTP for a registry on a loopback address (127.0.0.1, ::1, localhost).
    #[arg(long)]
    insecure_registry: bool,
    /// Give up after this long, e.g. 30m (exit 2); `0` or `none` for no limit.
    #[arg(long, value_parser = parse_scan_timeout, default_value = DEFAULT_SCAN_TIMEOUT)]
    timeout: Duration,
    /// Layers scanned at once (default: CPUs, at most 4).
    #[arg(long, default_value_t = 0)]
    parallelism: usize,
    /// Never show a progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScanFormat {
    Human,
    Json,
    Sarif,
}

#[derive(Debug, Args)]
struct AdminArgs {
    /// Broker URL.
    #[arg(long, env = "LANYARD_BROKER_URL")]
    broker: String,
    /// CA certificate (PEM) that signed the broker's certificate.
    #[arg(long, env = "LANYARD_CA_FILE")]
    ca: PathBuf,
    /// File holding the admin token.
    #[arg(long, env = "LANYARD_ADMIN_TOKEN_FILE")]
    admin_token_file: PathBuf,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a single-use bootstrap token; prints the token on stdout (and its id on stderr).
    Create {
        /// Role the token may be redeemed for (repeatable).
        #[arg(long, required = true)]
        role: Vec<String>,
        /// How long the token stays redeemable, e.g. `10m`, `1h` (default: the broker's
        /// `bootstrap.default_ttl_seconds`, 10m unless configured).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Bind the token to the image the workload runs: `HOST/REPO@sha256:…`, or
        /// `HOST/REPO:TAG` (the broker resolves the tag to its digest now). The image gate
        /// then checks that image at every issuance (docs/GATE.md).
        #[arg(long)]
        image: Option<String>,
        /// Print the full JSON answer instead of the bare token.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a bootstrap token, or the session it started.
    ///
    /// `bt_…`: an unredeemed token is revoked; once redeemed, the session it started is revoked
    /// instead. `ss_…`: that session. `--session-token-file`: the session that token belongs
    /// to. A revoked session's tokens are refused by every broker sharing the store within
    /// `bootstrap.session_revocation_max_stale_seconds`.
    Revoke {
        /// Token id (`bt_...`) or session id (`ss_...`).
        #[arg(
            required_unless_present = "session_token_file",
            conflicts_with = "session_token_file"
        )]
        id: Option<String>,
        /// File holding a session token; its session is revoked (the token is never recorded).
        #[arg(long)]
        session_token_file: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
enum LeaseCommand {
    /// Revoke a lease (upstream where the backend supports it; always recorded and audited),
    /// or every session of an aws-sts role.
    ///
    /// STS sessions cannot be revoked one by one: `--sts-role ROLE` drops the broker's cached
    /// sessions of the role's IAM role at once and prints the IAM policy to attach to that
    /// role, which denies every session issued before now (docs/SECURITY-MODEL.md).
    Revoke {
        /// Lease id (`ls_...`).
        #[arg(required_unless_present = "sts_role", conflicts_with = "sts_role")]
        lease_id: Option<String>,
        /// A lanyard role of the aws-sts backend: revoke all its sessions issued until now.
        #[arg(long, value_name = "ROLE")]
        sts_role: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy directory; prints `file:line: problem` for each error, and
    /// `file:line: warning: ...` for claim selectors that cannot match what their issuer sends.
    Check {
        /// Policy directory.
        dir: PathBuf,
        /// The broker's configuration file: its issuers' `claim_profile` and `claim_types`
        /// type the claim selectors (without it, only well-known issuer URLs are known).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Say which rule allows or denies a role to an identity.
    Explain(Box<ExplainArgs>),
}

/// `policy explain`'s arguments (boxed: the largest subcommand).
#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// Policy directory.
    #[arg(long)]
    dir: PathBuf,
    /// Issuer URL of the identity (`lanyard:bootstrap` for bootstrap tokens).
    #[arg(long, default_value = "")]
    issuer: String,
    /// Subject (`sub`), e.g. `system:serviceaccount:shop:api`; defaults to `--spiffe-id`.
    #[arg(long, required_unless_present = "spiffe_id")]
    subject: Option<String>,
    /// The SPIFFE ID of a JWT-SVID verified by a trust domain's bundle, for rules that
    /// select on `spiffe_id`.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// The token's claims as a JSON object (e.g. `{"repository": "octo-org/app",
    /// "ref_protected": "true"}`), or `@FILE` holding one, for rules that select on
    /// `claims`.
    #[arg(long)]
    claims: Option<String>,
    /// Kubernetes namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// Kubernetes service account.
    #[arg(long)]
    service_account: Option<String>,
    /// Roles a bootstrap token was minted for (repeatable).
    #[arg(long)]
    bootstrap_role: Vec<String>,
    /// The image bound into that bootstrap token (`HOST/REPO@sha256:…`), for rules that
    /// select on `image_repository`.
    #[arg(long, requires = "bootstrap_role")]
    image: Option<String>,
    /// An image of the pod's admission record (`HOST/REPO@sha256:…`, repeatable), for a
    /// pod token under `gate.pod_tokens: gate` and rules that select on
    /// `image_repository`.
    #[arg(long, requires_all = ["namespace", "service_account"])]
    pod_image: Vec<String>,
    /// The role to explain.
    #[arg(long)]
    role: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the hash chain; reports the first edited, dropped or reordered record.
    ///
    /// With `--store-url-file` and no FILE: every chain kept in that PostgreSQL store
    /// (`audit.sink: store`, one per broker process), each against its head row.
    Verify {
        /// Audit log file: segment 0 (`audit.sink`), or a later segment when earlier ones
        /// were removed; the segments after it (`<file>.000001`, ...) are followed.
        #[arg(required_unless_present = "store_url_file")]
        file: Option<PathBuf>,
        /// The broker's SQLite store: also checks the file ends at the recorded chain head
        /// (detects a truncated tail).
        #[arg(long, conflicts_with = "store_url_file")]
        store: Option<PathBuf>,
        /// The broker's PostgreSQL store, as a file holding its URL (as
        /// `store.postgres_url_file`): the same check against its chain head.
        #[arg(long)]
        store_url_file: Option<PathBuf>,
        /// PEM CA certificates for TLS to that PostgreSQL store (`store.postgres_ca_file`).
        #[arg(long, requires = "store_url_file")]
        store_ca_file: Option<PathBuf>,
    },
    /// Print the records matching every given filter (JSON lines).
    Query {
        /// Audit log file; the segments after it are read too (as for `verify`).
        #[arg(
            required_unless_present = "store_url_file",
            conflicts_with = "store_url_file"
        )]
        file: Option<PathBuf>,
        /// Read the chains kept in this PostgreSQL store instead (`audit.sink: store`), given
        /// as a file holding its URL (as `store.postgres_url_file`).
        #[arg(long)]
        store_url_file: Option<PathBuf>,
        /// PEM CA certificates for TLS to that PostgreSQL store (`store.postgres_ca_file`).
        #[arg(long, requires = "store_url_file")]
        store_ca_file: Option<PathBuf>,
        /// Records at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Records before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Identity glob, e.g. `system:serviceaccount:shop:*`.
        #[arg(long)]
        identity: Option<String>,
        /// Role name.
        #[arg(long)]
        role: Option<String>,
        /// allow or deny.
        #[arg(long, value_parser = parse_decision)]
        decision: Option<Decision>,
        /// Event: issue, deny, token_mint, token_redeem, token_revoke, session_revoke,
        /// lease_revoke, policy_reload, audit_segment, audit_repair, gate, image_scan,
        /// image_exempt, admission, admission_pin.
        #[arg(long, value_parser = parse_event)]
        event: Option<Event>,
    },
    /// Write every record kept in a PostgreSQL store (`audit.sink: store`) as JSON lines:
    /// chain after chain, each in order. Each chain verifies on its own
    /// (`audit verify` of the lines of one `epoch`).
    Export {
        /// The PostgreSQL store, as a file holding its URL (as `store.postgres_url_file`).
        #[arg(long)]
        store_url_file: PathBuf,
        /// PEM CA certificates for TLS to it (`store.postgres_ca_file`).
        #[arg(long)]
        store_ca_file: Option<PathBuf>,
        /// Write here (created, mode 0600; must not exist) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Opens the PostgreSQL store an `audit` command names (without migrating it).
fn audit_store(
    url_file: &Path,
    ca_file: Option<PathBuf>,
) -> Result<Arc<dyn crate::store::Store>, String> {
    let url = crate::store::read_url_file(url_file).map_err(|e| e.to_string())?;
    let mut opts = crate::store::postgres::PostgresOptions::new(url);
    opts.ca_file = ca_file;
    let s = crate::store::postgres::PostgresStore::open(&opts)
        .map_err(|e| format!("cannot open store {}: {e}", opts.shown()))?;
    Ok(Arc::new(s))
}

/// `audit verify --store-url-file` without a file: every chain in the store.
async fn verify_stored(store: Arc<dyn crate::store::Store>) -> Result<ExitCode, String> {
    let outcomes = audit::stored::verify_store(store)
        .await
        .map_err(|e| e.to_string())?;
    let mut failed = 0usize;
    let mut records = 0u64;
    for o in &outcomes {
        let name = audit::stored::chain_name(&o.chain);
        match &o.result {
            Ok(report) => {
                records += report.records;
                out!(
                    "{name}: ok, {} records, chain intact{}",
                    report.records,
                    report
                        .head
                        .as_ref()
                        .map(|h| format!(
                            " (head seq {} {})",
                            h.seq,
                            &h.hash[..12.min(h.hash.len())]
                        ))
                        .unwrap_or_default()
                );
            }
            Err(failure) => {
                failed += 1;
                out!("TAMPERED: {failure}");
            }
        }
    }
    if failed > 0 {
        out!("{failed} of {} chain(s) broken", outcomes.len());
        return Ok(ExitCode::FAILURE);
    }
    out!(
        "store: ok, {} chain(s), {records} records, every chain intact and at its head",
        outcomes.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `lanyard-broker scan --timeout` when not given: a hostile or stuck registry or archive
/// cannot hold a scan (and a CI job) forever.
const DEFAULT_SCAN_TIMEOUT: &str = "10m";

/// A scan timeout: a duration, or `0`/`none` for none (read back as [`Duration::ZERO`]).
fn parse_scan_timeout(s: &str) -> Result<Duration, String> {
    if s == "0" || s.eq_ignore_ascii_case("none") {
        Ok(Duration::ZERO)
    } else {
        parse_duration(s)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (use e.g. 90s, 10m, 1h)"))
}

fn parse_decision(s: &str) -> Result<Decision, String> {
    serde_json::from_value(serde_json::Value::from(s)).map_err(|_| "use allow or deny".to_owned())
}

fn parse_event(s: &str) -> Result<Event, String> {
    serde_json::from_value(serde_json::Value::from(s)).map_err(|_| {
        "use issue, deny, token_mint, token_redeem, token_revoke, session_revoke, lease_revoke, \
         policy_reload, audit_segment, audit_repair, gate, image_scan, image_exempt, admission, \
         admission_pin or admission_inject"
            .to_owned()
    })
}

fn parse_time(flag: &str, s: &Option<String>) -> Result<Option<std::time::SystemTime>, String> {
    match s {
        None => Ok(None),
        Some(s) => lanyard::clock::parse_rfc3339(s)
            .map(Some)
            .ok_or_else(|| format!("--{flag} `{s}`: expected RFC 3339, e.g. 2026-11-22T08:00:00Z")),
    }
}

/// The filter every lanyard binary builds from `--log` / `LANYARD_LOG` (shared with the
/// sidecar): the user's directives plus [`RUSTLS_SNI_DIRECTIVE`] unless they name `rustls`.
pub use lanyard::logging::{RUSTLS_SNI_DIRECTIVE, log_filter};

/// Logs go to stderr through a writer thread (`tracing-appender`), so a request never waits
/// for a `write` to stderr: the thread writes whatever lines queued up in one go. Nothing is
/// dropped (a full queue makes the logging thread wait, as a blocking stderr would). Colour
/// only on a terminal. Keep the guard until exit: dropping it flushes what is queued.
pub fn init_tracing(
    filter: &str,
    format: LogFormat,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter("info")));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("lanyard-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    guard
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Entry point: parses arguments, runs the command, returns the exit code.
pub async fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let logs = init_tracing(&cli.log, cli.log_format);
    let outcome = run(cli.command).await;
    // Flush queued log lines before the final message, so it comes last.
    drop(logs);
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("lanyard-broker: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Scan(args) => Ok(run_scan(args).await),
        Command::Serve { config } => {
            let env: Vec<(String, String)> = std::env::vars().collect();
            let cfg = BrokerConfig::load(&config, env).map_err(|e| e.to_string())?;
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let listen = cfg.listen;
            let broker = Broker::new(cfg, clock, Metrics::new())
                .await
                .map_err(|e| e.to_string())?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
            crate::server::run(listener, broker, shutdown_signal())
                .await
                .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev {
            dir,
            listen,
            policies,
            role,
            no_sidecar,
        } => {
            crate::dev::run(
                crate::dev::DevOptions {
                    dir,
                    listen,
                    policies,
                    role,
                    sidecar: !no_sidecar,
                },
                shutdown_signal(),
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Create {
            role,
            ttl,
            image,
            json,
            admin,
        }) => {
            let req = MintTokenRequest {
                roles: role,
                ttl_seconds: ttl.map(|t| t.as_secs().max(1)),
                image,
            };
            let body = admin_call(
                &admin,
                reqwest::Method::POST,
                "/v1/admin/tokens",
                Some(&req),
            )
            .await?;
            let resp: MintTokenResponse = serde_json::from_slice(&body)
                .map_err(|e| format!("unexpected answer from the broker: {e}"))?;
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&resp).map_err(|e| e.to_string())?
                );
            } else {
                eprintln!(
                    "minted bootstrap token {} (single use, redeemable until {})",
                    resp.token_id, resp.expires_at
                );
                out!("{}", resp.token.expose());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(TokenCommand::Revoke {
            id,
            session_token_file,
            admin,
        }) => {
            revoke(&admin, id.as_deref(), session_token_file.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Lease(LeaseCommand::Revoke {
            sts_role: Some(role),
            admin,
            ..
        }) => {
            let body = admin_call::<()>(
                &admin,
                reqwest::Method::POST,
                &format!("/v1/admin/sts-roles/{role}/revoke"),
                None,
            )
            .await?;
            let out: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| format!("the broker's answer is not JSON: {e}"))?;
            eprintln!(
                "dropped {} cached session(s) of {}; sessions issued before {} stay valid at \
                 AWS until this policy is attached to that role (e.g. aws iam put-role-policy \
                 --policy-name lanyard-revoke --policy-document file://deny.json):",
                out["dropped_sessions"],
                out["role_arn"].as_str().unwrap_or("?"),
                out["issued_before"].as_str().unwrap_or("?")
            );
            out!(
                "{}",
                serde_json::to_string_pretty(&out["deny_policy"]).map_err(|e| e.to_string())?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Lease(LeaseCommand::Revoke {
            lease_id, admin, ..
        }) => {
            let lease_id = lease_id.unwrap_or_default();
            let body = admin_call::<()>(
                &admin,
                reqwest::Method::POST,
                &format!("/v1/leases/{lease_id}/revoke"),
                None,
            )
            .await?;
            out!("{}", String::from_utf8_lossy(&body));
            Ok(ExitCode::SUCCESS)
        }
        Command::Image(cmd) => image_command(cmd).await,
        Command::Reload { admin } => {
            let body =
                admin_call::<()>(&admin, reqwest::Method::POST, "/v1/admin/reload", None).await?;
            out!("{}", String::from_utf8_lossy(&body));
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Check { dir, config }) => {
            let backends = known_backends();
            let issuers = match &config {
                Some(file) => {
                    crate::config::BrokerConfig::load(file, std::iter::empty())
                        .map_err(|e| e.to_string())?
                        .issuers
                }
                None => Vec::new(),
            };
            match crate::policy::load_dir(&dir, &|r| backends.validate_role(r)) {
                Ok(set) => {
                    for w in crate::policy::claim_warnings(&set, &issuers) {
                        out!("{w}");
                    }
                    out!(
                        "{}: ok ({} files, {} roles, {} rules, digest {})",
                        dir.display(),
                        set.files.len(),
                        set.roles.len(),
                        set.rules.len(),
                        &set.digest[..set.digest.len().min(12)]
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for e in &errors.0 {
                        out!("{e}");
                    }
                    eprintln!("{}: {} problem(s)", dir.display(), errors.0.len());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Policy(PolicyCommand::Explain(args)) => {
            let ExplainArgs {
                dir,
                issuer,
                subject,
                spiffe_id,
                claims,
                namespace,
                service_account,
                bootstrap_role,
                image,
                pod_image,
                role,
                json,
            } = *args;
            let claims =
                match claims {
                    None => None,
                    Some(text) => {
                        let text = match text.strip_prefix('@') {
                            Some(file) => std::fs::read_to_string(file)
                                .map_err(|e| format!("--claims: cannot read {file}: {e}"))?,
                            None => text,
                        };
                        match serde_json::from_str(&text) {
                            Ok(serde_json::Value::Object(map)) => Some(map),
                            _ => return Err(
                                "--claims: give a JSON object, e.g. '{\"ref_type\": \"branch\"}'"
                                    .into(),
                            ),
                        }
                    }
                };
            let subject = subject.or_else(|| spiffe_id.clone()).unwrap_or_default();
            let backends = known_backends();
            let set = crate::policy::load_dir(&dir, &|r| backends.validate_role(r))
                .map_err(|e| format!("policies in {} are invalid:\n{e}", dir.display()))?;
            let req = ExplainRequest {
                identity: IdentitySpec {
                    issuer,
                    subject,
                    namespace,
                    service_account,
                    bootstrap_roles: (!bootstrap_role.is_empty()).then_some(bootstrap_role),
                    image,
                    pod_images: (!pod_image.is_empty()).then_some(pod_image),
                    spiffe_id,
                    claims,
                },
                role,
            };
            let explanation = crate::policy::explain(&set, &req.identity.to_identity(), &req.role);
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(&explanation).map_err(|e| e.to_string())?
                );
            } else {
                out!("{explanation}");
            }
            Ok(if explanation.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Store(StoreCommand::Migrate {
            from,
            to,
            to_file,
            ca_file,
        }) => {
            let mut config = crate::config::StoreConfig::sqlite(&from);
            config.sqlite_path = None;
            config.postgres_url = to;
            config.postgres_url_file = to_file;
            config.postgres_ca_file = ca_file;
            config.check()?;
            let url = match (&config.postgres_url, &config.postgres_url_file) {
                (Some(u), _) => u.clone(),
                (None, Some(f)) => crate::store::read_url_file(f).map_err(|e| e.to_string())?,
                (None, None) => return Err("give --to or --to-file".into()),
            };
            let mut opts = crate::store::postgres::PostgresOptions::new(url);
            opts.ca_file = config.postgres_ca_file.clone();
            let to = crate::store::postgres::PostgresStore::connect(&opts)
                .await
                .map_err(|e| format!("cannot open {}: {e}", opts.shown()))?;
            let report = crate::store::copy::sqlite_to_postgres(&from, &to, SystemClock.now())
                .await
                .map_err(|e| e.to_string())?;
            out!("copied {} into {}: {report}", from.display(), opts.shown());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Verify {
            file,
            store,
            store_url_file,
            store_ca_file,
        }) => {
            use crate::store::Store as _;
            let Some(file) = file else {
                let Some(url_file) = store_url_file else {
                    return Err("give an audit log FILE or --store-url-file".into());
                };
                return verify_stored(audit_store(&url_file, store_ca_file)?).await;
            };
            let expected = match (store, store_url_file) {
                (None, None) => None,
                (Some(path), _) => {
                    let s = crate::store::sqlite::SqliteStore::open(&path)
                        .map_err(|e| format!("cannot open store {}: {e}", path.display()))?;
                    s.audit_head().await.map_err(|e| e.to_string())?
                }
                (None, Some(url_file)) => {
                    let url = crate::store::read_url_file(&url_file).map_err(|e| e.to_string())?;
                    let mut opts = crate::store::postgres::PostgresOptions::new(url);
                    opts.ca_file = store_ca_file;
                    let s = crate::store::postgres::PostgresStore::open(&opts)
                        .map_err(|e| format!("cannot open store {}: {e}", opts.shown()))?;
                    s.audit_head()
                        .await
                        .map_err(|e| format!("store {}: {e}", opts.shown()))?
                }
            };
            let segments = match audit::segment::open_from(&file)
                .map_err(|e| format!("cannot open {}: {e}", file.display()))?
            {
                Ok(s) => s,
                Err(missing) => {
                    out!("{}: TAMPERED: {missing}", file.display());
                    return Ok(ExitCode::FAILURE);
                }
            };
            match audit::verify::verify_segments(segments, expected.as_ref()) {
                Ok(report) => {
                    let segments = if report.segments > 1 {
                        format!(" in {} segments", report.segments)
                    } else {
                        String::new()
                    };
                    let from = match report.first_seq {
                        Some(first) if first > 1 => format!(
                            "; from seq {first} (earlier segments are not here, so the link before it is not checked)"
                        ),
                        _ => String::new(),
                    };
                    out!(
                        "{}: ok, {} records{segments}, chain intact{}{from}",
                        file.display(),
                        report.records,
                        report
                            .head
                            .map(|h| format!(
                                " (head seq {} {})",
                                h.seq,
                                &h.hash[..12.min(h.hash.len())]
                            ))
                            .unwrap_or_default()
                    );
                    if report.incomplete_tail_bytes > 0 {
                        out!(
                            "note: the newest segment ends in {} bytes of an incomplete record (a write cut short by a crash or a full disk, never acknowledged); the broker cuts it, and records the cut, at its next start",
                            report.incomplete_tail_bytes
                        );
                    }
                    if report.unwritten_bytes > 0 {
                        out!(
                            "note: the newest segment ends in {} bytes of unwritten (NUL) space",
                            report.unwritten_bytes
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(failure) => {
                    out!("{}: TAMPERED: {failure}", file.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Audit(AuditCommand::Query {
            file,
            store_url_file,
            store_ca_file,
            since,
            until,
            identity,
            role,
            decision,
            event,
        }) => {
            let filter = audit::query::Filter {
                since: parse_time("since", &since)?,
                until: parse_time("until", &until)?,
                identity,
                role,
                decision,
                event,
            };
            let file = match (file, store_url_file) {
                (Some(f), _) => f,
                (None, Some(url_file)) => {
                    let store = audit_store(&url_file, store_ca_file)?;
                    let print = Box::new(|line: &str| {
                        use std::io::Write as _;
                        let _ = writeln!(std::io::stdout().lock(), "{line}");
                    });
                    let n = audit::stored::query_store(store, filter, print)
                        .await
                        .map_err(|e| e.to_string())?;
                    eprintln!("{n} matching record(s)");
                    return Ok(ExitCode::SUCCESS);
                }
                (None, None) => return Err("give an audit log FILE or --store-url-file".into()),
            };
            let segments = audit::segment::open_from(&file)
                .map_err(|e| format!("cannot open {}: {e}", file.display()))??;
            let mut out = std::io::stdout().lock();
            let mut print = |line: &str| {
                use std::io::Write as _;
                let _ = writeln!(out, "{line}");
            };
            let n = audit::query::query_segments(segments, &filter, &mut print)
                .map_err(|e| e.to_string())?;
            eprintln!("{n} matching record(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(AuditCommand::Export {
            store_url_file,
            store_ca_file,
            out,
        }) => {
            let store = audit_store(&store_url_file, store_ca_file)?;
            let sink: Box<dyn std::io::Write + Send> = match &out {
                None => Box::new(std::io::stdout()),
                Some(path) => {
                    use std::os::unix::fs::OpenOptionsExt as _;
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                    Box::new(std::io::BufWriter::new(f))
                }
            };
            let n = audit::stored::export_store(store, sink)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("exported {n} record(s)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `lanyard-broker scan`: errors (and incomplete scans) exit 2, findings 1, clean 0.
async fn run_scan(args: ScanArgs) -> ExitCode {
    match scan_report(&args).await {
        Ok((report, out)) => {
            // `scan … | head`: a reader that went away is not an error of the scan (and
            // `println!` would panic on the broken pipe).
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = writeln!(stdout, "{out}").and_then(|()| stdout.flush())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                eprintln!("lanyard-broker scan: cannot write the report: {e}");
                return ExitCode::from(2);
            }
            ExitCode::from(report.exit_code())
        }
        Err(message) => {
            eprintln!("lanyard-broker scan: {message}");
            ExitCode::from(2)
        }
    }
}

/// Reads the secret file given to `flag` (see [`crate::secret_file`]); the error names the flag.
async fn read_secret_file(flag: &str, path: &std::path::Path) -> Result<lanyard::Secret, String> {
    crate::secret_file::read_secret_file(path)
        .await
        .map_err(|e| format!("{flag}: {e}"))
}

async fn scan_report(args: &ScanArgs) -> Result<(lanyard_scan::Report, String), String> {
    use lanyard_scan::{self as scan, PlatformChoice, RegistryAuth, ScanOptions, Source};
    use std::io::IsTerminal as _;
    let source = Source::parse(&args.source).map_err(|e| e.to_string())?;
    let auth = match (
        &args.registry_username,
        &args.registry_password_file,
        &args.registry_token_file,
    ) {
        (_, _, Some(t)) => {
            RegistryAuth::Bearer(read_secret_file("--registry-token-file", t).await?)
        }
        (Some(user), Some(p), None) => RegistryAuth::Basic {
            username: user.clone(),
            password: read_secret_file("--registry-password-file", p).await?,
        },
        (Some(user), None, None) => match std::env::var("LANYARD_REGISTRY_PASSWORD") {
            Ok(p) => RegistryAuth::Basic {
                username: user.clone(),
                password: lanyard::Secret::new(p),
            },
            Err(_) => {
                return Err(format!(
                    "--registry-username {user} needs --registry-password-file (or LANYARD_REGISTRY_PASSWORD)"
                ));
            }
        },
        (None, Some(_), None) => {
            return Err("--registry-password-file needs --registry-username".into());
        }
        (None, None, None) => RegistryAuth::Anonymous,
    };
    let allowlist = match &args.allowlist {
        Some(p) => Some(Arc::new(scan::Allowlist::load(p)?)),
        None => None,
    };
    let platform = match (&args.platform, args.all_platforms) {
        (_, true) => PlatformChoice::All,
        (Some(p), false) => {
            if p.split('/').count() < 2 || p.split('/').any(str::is_empty) {
                return Err(format!(
                    "--platform `{p}`: use OS/ARCH[/VARIANT], e.g. linux/arm64"
                ));
            }
            PlatformChoice::Exact(p.clone())
        }
        (None, false) => PlatformChoice::Host,
    };
    let bar = (!args.no_progress && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} scanning [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Arc::new(Bar(pb))
    });
    let opts = ScanOptions {
        platform,
        auth,
        insecure_loopback_registry: args.insecure_registry,
        timeout: (!args.timeout.is_zero()).then_some(args.timeout),
        parallelism: args.parallelism,
        allowlist,
        progress: bar.clone().map(|b| b as Arc<dyn scan::Progress>),
        ..ScanOptions::default()
    };
    let result = tokio::select! {
        r = scan::scan(&source, &opts) => r,
        _ = shutdown_signal() => {
            opts.cancel.cancel();
            Err(scan::ScanError::Cancelled)
        }
    };
    if let Some(b) = &bar {
        b.0.finish_and_clear();
    }
    let report = result.map_err(|e| e.to_string())?;
    let out = match args.format {
        ScanFormat::Human => scan::report::render_human(&report),
        ScanFormat::Json => serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?,
        ScanFormat::Sarif => serde_json::to_string_pretty(&scan::report::render_sarif(
            &report,
            &scan::rule_catalog(),
        ))
        .map_err(|e| e.to_string())?,
    };
    Ok((report, out))
}

/// A progress bar on stderr.
#[derive(Debug)]
struct Bar(indicatif::ProgressBar);

impl lanyard_scan::Progress for Bar {
    fn add_total(&self, bytes: u64) {
        self.0.inc_length(bytes);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

/// Backends known to offline policy tools: validation only, no keys.
fn known_backends() -> crate::issue::Backends {
    crate::issue::offline_backends()
}

/// `token revoke`: a bootstrap token, a session by id, or the session of a token in a file.
async fn revoke(
    admin: &AdminArgs,
    id: Option<&str>,
    session_token_file: Option<&std::path::Path>,
) -> Result<(), String> {
    let revoked = |body: Vec<u8>| -> Result<(), String> {
        let r: SessionRevocationResponse = serde_json::from_slice(&body)
            .map_err(|e| format!("unexpected answer from the broker: {e}"))?;
        let already = if r.already_revoked {
            " (it already was)"
        } else {
            ""
        };
        eprintln!(
            "revoked session {}{already}; its tokens are refused until it would have ended ({})",
            r.session_id, r.expires_at
        );
        Ok(())
    };
    if let Some(file) = session_token_file {
        let token = read_secret_file("--session-token-file", file).await?;
        let req = RevokeSessionRequest {
            session_token: token,
        };
        let body = admin_call(
            admin,
            reqwest::Method::POST,
            "/v1/admin/sessions/revoke",
            Some(&req),
        )
        .await?;
        return revoked(body);
    }
    let id = id.unwrap_or_default();
    if id.starts_with(crate::authn::session::SESSION_ID_PREFIX) {
        let path = format!("/v1/admin/sessions/{id}");
        return revoked(admin_call::<()>(admin, reqwest::Method::DELETE, &path, None).await?);
    }
    let path = format!("/v1/admin/tokens/{id}");
    match admin_request::<()>(admin, reqwest::Method::DELETE, &path, None).await {
        Ok(_) => {
            eprintln!("revoked bootstrap token {id}");
            Ok(())
        }
        // Not an unredeemed token: revoke the session it started, if it was redeemed.
        Err((Some(404), first)) => {
            let session = crate::authn::session::session_id_for(id);
            let path = format!("/v1/admin/sessions/{session}");
            match admin_request::<()>(admin, reqwest::Method::DELETE, &path, None).await {
                Ok(body) => revoked(body),
                Err((Some(400 | 404), _)) => Err(first),
                Err((_, message)) => Err(message),
            }
        }
        Err((_, message)) => Err(message),
    }
}

async fn image_command(cmd: ImageCommand) -> Result<ExitCode, String> {
    use lanyard::wire::{ExemptionRequest, ScanRequest, VerdictResponse};
    let show = |v: &VerdictResponse, json: bool| -> Result<ExitCode, String> {
        if json {
            out!(
                "{}",
                serde_json::to_string_pretty(v).map_err(|e| e.to_string())?
            );
        } else {
            out!(
                "{}: {}{}",
                v.image.as_deref().unwrap_or(&v.digest),
                v.verdict,
                if v.previous_ruleset {
                    " (previous ruleset; a re-scan is due)"
                } else {
                    ""
                }
            );
            for f in &v.findings {
                out!(
                    "  {}",
                    crate::gate::decide::describe_finding(f) + &format!("  {}", f.fingerprint)
                );
            }
            for i in &v.incomplete {
                out!("  incomplete: {i}");
            }
            if let Some(e) = &v.exemption {
                out!("  exempted: {e}");
            }
            if let Some(r) = &v.ruleset_version {
                out!(
                    "  ruleset {r}, scanned {}",
                    v.scanned_at.as_deref().unwrap_or("-")
                );
            }
        }
        Ok(match v.verdict.as_str() {
            "clean" => ExitCode::SUCCESS,
            "dirty" => ExitCode::from(1),
            _ => ExitCode::from(2),
        })
    };
    match cmd {
        ImageCommand::Scan {
            image,
            force,
            wait,
            json,
            admin,
        } => {
            let req = ScanRequest {
                image,
                force,
                wait_seconds: wait,
            };
            let body =
                admin_call(&admin, reqwest::Method::POST, "/v1/admin/scans", Some(&req)).await?;
            let v: VerdictResponse = serde_json::from_slice(&body)
                .map_err(|e| format!("unexpected answer from the broker: {e}"))?;
            if v.verdict == "pending" && !json {
                eprintln!(
                    "the scan of {} is still running in the broker; ask again with `lanyard-broker image verdict {}`",
                    v.image.as_deref().unwrap_or(&v.digest),
                    v.digest
                );
            }
            show(&v, json)
        }
        ImageCommand::Verdict { image, json, admin } => {
            let r = crate::gate::image::parse(&image)?;
            let digest = r.digest.ok_or_else(|| {
                format!("{image} names no digest; use `lanyard-broker image scan {image}`")
            })?;
            let body = admin_call::<()>(
                &admin,
                reqwest::Method::GET,
                &format!("/v1/admin/verdicts/{digest}"),
                None,
            )
            .await?;
            let v: VerdictResponse = serde_json::from_slice(&body)
                .map_err(|e| format!("unexpected answer from the broker: {e}"))?;
            show(&v, json)
        }
        ImageCommand::Exempt {
            digest,
            reason,
            admin,
        } => {
            let req = ExemptionRequest { digest, reason };
            admin_call(
                &admin,
                reqwest::Method::POST,
                "/v1/admin/exemptions",
                Some(&req),
            )
            .await?;
            out!(
                "exempted {} from the image gate (every use is audited)",
                req.digest
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn admin_call<T: serde::Serialize>(
    admin: &AdminArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<&T>,
) -> Result<Vec<u8>, String> {
    admin_request(admin, method, path, body)
        .await
        .map_err(|(_, message)| message)
}

/// An admin API call; an error carries the HTTP status when the broker answered.
async fn admin_request<T: serde::Serialize>(
    admin: &AdminArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<&T>,
) -> Result<Vec<u8>, (Option<u16>, String)> {
    let local = |message: String| (None, message);
    let ca = std::fs::read(&admin.ca)
        .map_err(|e| local(format!("cannot read CA file {}: {e}", admin.ca.display())))?;
    let certs = reqwest::Certificate::from_pem_bundle(&ca)
        .map_err(|e| local(format!("CA file {} is not PEM: {e}", admin.ca.display())))?;
    let token = read_secret_file("--admin-token-file", &admin.admin_token_file)
        .await
        .map_err(local)?;
    let client = reqwest::Client::builder()
        .tls_certs_only(certs)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| local(format!("cannot build HTTP client: {e}")))?;
    let url = format!("{}{path}", admin.broker.trim_end_matches('/'));
    let mut req = client.request(method, &url).bearer_auth(token.expose());
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| local(format!("cannot reach broker at {}: {e}", admin.broker)))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| local(format!("reading the broker's answer: {e}")))?;
    if status.is_success() {
        return Ok(bytes.to_vec());
    }
    let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(e) => format!(
            "broker refused ({} {}): {}",
            status.as_u16(),
            e.error.code,
            e.error.message
        ),
        Err(_) => format!("broker answered {status}"),
    };
    Err((Some(status.as_u16()), message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_timeout(extra: &[&str]) -> Duration {
        let args = ["lanyard-broker", "scan", "oci:/nowhere"]
            .iter()
            .chain(extra)
            .map(std::ffi::OsString::from);
        match Cli::try_parse_from(args).expect("parses").command {
            Command::Scan(a) => a.timeout,
            other => panic!("not scan: {other:?}"),
        }
    }

    /// Whether the filter built from `user` lets through a `WARN` event of `target`.
    fn warns(user: &str, target: &str) -> bool {
        use tracing_subscriber::layer::SubscriberExt as _;
        let filter = tracing_subscriber::EnvFilter::try_new(log_filter(user)).expect("valid");
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, || match target {
            "rustls::msgs::handshake" => {
                tracing::event_enabled!(target: "rustls::msgs::handshake", tracing::Level::WARN)
            }
            "rustls::conn" => tracing::event_enabled!(target: "rustls::conn", tracing::Level::WARN),
            "lanyard_broker::server" => {
                tracing::event_enabled!(target: "lanyard_broker::server", tracing::Level::WARN)
            }
            other => panic!("no callsite for {other}"),
        })
    }

    #[test]
    fn rustls_sni_warnings_are_hidden_unless_rustls_is_named() {
        for user in ["info", "debug", "warn,lanyard_broker=debug"] {
            assert!(!warns(user, "rustls::msgs::handshake"), "{user}");
            assert!(
                warns(user, "rustls::conn"),
                "other rustls warnings stay: {user}"
            );
            assert!(warns(user, "lanyard_broker::server"), "{user}");
        }
        assert!(warns("info,rustls=debug", "rustls::msgs::handshake"));
        assert!(warns(
            "rustls::msgs::handshake=warn",
            "rustls::msgs::handshake"
        ));
    }

    #[test]
    fn scan_has_a_default_timeout_that_can_be_changed_or_disabled() {
        assert_eq!(scan_timeout(&[]), Duration::from_secs(600));
        assert_eq!(scan_timeout(&["--timeout", "90s"]), Duration::from_secs(90));
        assert_eq!(scan_timeout(&["--timeout", "0"]), Duration::ZERO);
        assert_eq!(scan_timeout(&["--timeout", "none"]), Duration::ZERO);
        assert!(parse_scan_timeout("soon").is_err());
    }
}
