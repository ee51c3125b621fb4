//! The PostgreSQL store: what several broker replicas share (issue 14).
//!
//! Every trait method is one statement or one short transaction on a connection from a
//! bounded pool ([`PostgresOptions::pool_size`]); a caller waits at most
//! [`PostgresOptions::connect_timeout`] for a connection, then gets
//! [`StoreError::Unavailable`] (a retryable 503), as it does when the database cannot be
//! reached, is shutting down or is a read-only standby. A connection the server closed is
//! dropped from the pool and replaced on next use, so the broker recovers without a restart
//! when the database comes back.
//!
//! What must happen once across replicas is one statement whose `WHERE` re-checks the state
//! under the row lock (PostgreSQL re-evaluates an `UPDATE`'s condition on the row version it
//! waited for): a bootstrap token is reserved by `UPDATE … WHERE redeemed_at IS NULL AND
//! (reserved_by IS NULL OR reserved_until <= now) RETURNING …`, committed and released by
//! `UPDATE … WHERE reserved_by = $reservation`; a local secret is created by `INSERT … ON
//! CONFLICT DO NOTHING` and then read, so every replica reads the first one written.
//!
//! Times are Unix seconds (`BIGINT`), lists and verdicts JSON text, as in the SQLite store,
//! so `lanyard-broker store migrate` copies rows without converting them. Text keys that are
//! ordered or paged (digests, ruleset versions, pod UIDs) use the `"C"` collation: byte order,
//! as SQLite's, whatever the database's default collation.
//!
//! # Migrations
//! [`MIGRATIONS`] are applied at [`PostgresStore::connect`] in one transaction that first
//! takes `pg_advisory_xact_lock(`[`MIGRATION_LOCK`]`)`: replicas starting together wait for
//! each other, and the ones after the first find nothing left to do. Applied versions are
//! rows of `lanyard_schema_migrations`; a database at a version this binary does not know is
//! refused (an older broker must not write a newer schema). The lock is transaction-scoped,
//! so it dies with its transaction even behind a transaction-pooling proxy.
//!
//! # TLS
//! `sslmode` in the URL (see [`TlsMode`]): `disable` (plain TCP — loopback or a Unix socket
//! only, refused for another host), or `require`, `verify-ca` and `verify-full`, which all
//! verify the server's certificate chain against `store.postgres_ca_file` *and* its name
//! against the URL's host through rustls (stricter than libpq's `require`, which checks
//! nothing: a TLS connection anyone can intercept protects no password). Without `sslmode`
//! a loopback host is plain and any other host needs TLS. `prefer` and `allow` (fall back to
//! plain text when TLS fails) are refused: a downgrade anyone on the path can force.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use lanyard::Secret;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use zeroize::Zeroizing;

use super::{
    AdmissionRecord, AuditChain, BootstrapTokenRecord, ChainHead, ExemptionRecord, LeaseRecord,
    MAX_LOCAL_SECRET_BYTES, RedeemedToken, ReserveOutcome, SessionRevocation, SigningKeyRecord,
    Store, StoreError, StoredLine, VerdictRecord, from_unix, from_unix_millis, to_unix,
    to_unix_millis,
};

/// The advisory lock key migrations hold (`pg_advisory_xact_lock`): "lanyard" in ASCII.
pub const MIGRATION_LOCK: i64 = 0x006c_616e_7961_7264;

/// How long [`Store::check_writable`] waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

// Defaults and the URL's printable form live with the store's config section (the config
// must not depend on the store: that made an import circle).
pub use crate::config::{
    DEFAULT_POSTGRES_CONNECT_TIMEOUT as DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_POSTGRES_POOL_SIZE as DEFAULT_POOL_SIZE, redacted_postgres_url as redacted_url,
};

/// Schema migrations; entry `i` takes the schema from version `i` to version `i + 1`. Never
/// edit an entry that was released: append one.
pub const MIGRATIONS: &[&str] = &[
    // v1: everything the SQLite store holds at its v6, in one step.
    r#"CREATE TABLE bootstrap_tokens (
        token_id       TEXT PRIMARY KEY,
        token_hash     TEXT NOT NULL UNIQUE,
        roles          TEXT NOT NULL,
        image          TEXT,
        created_at     BIGINT NOT NULL,
        expires_at     BIGINT NOT NULL,
        redeemed_at    BIGINT,
        reserved_by    TEXT,
        reserved_at    BIGINT,
        reserved_until BIGINT
    );
    CREATE TABLE leases (
        lease_id       TEXT PRIMARY KEY,
        role           TEXT NOT NULL,
        backend        TEXT NOT NULL,
        subject        TEXT NOT NULL,
        issuer         TEXT NOT NULL,
        issued_at      BIGINT NOT NULL,
        expires_at     BIGINT NOT NULL,
        upstream_lease TEXT,
        fingerprint    TEXT NOT NULL,
        revoked_at     BIGINT
    );
    CREATE INDEX leases_expires_at ON leases (expires_at);
    CREATE TABLE signing_keys (
        seq         BIGINT GENERATED ALWAYS AS IDENTITY,
        kid         TEXT PRIMARY KEY,
        alg         TEXT NOT NULL,
        pkcs8       TEXT NOT NULL,
        created_at  BIGINT NOT NULL,
        active_from BIGINT NOT NULL
    );
    CREATE TABLE audit_head (
        id   BIGINT PRIMARY KEY CHECK (id = 1),
        seq  BIGINT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TABLE local_secrets (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE session_revocations (
        session_id TEXT PRIMARY KEY,
        revoked_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX session_revocations_expires_at ON session_revocations (expires_at);
    CREATE TABLE image_verdicts (
        digest          TEXT COLLATE "C" NOT NULL,
        ruleset_version TEXT COLLATE "C" NOT NULL,
        repository      TEXT COLLATE "C",
        scanned_at      BIGINT NOT NULL,
        record          TEXT NOT NULL,
        PRIMARY KEY (digest, ruleset_version)
    );
    CREATE TABLE image_exemptions (
        digest     TEXT PRIMARY KEY,
        reason     TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE admission_records (
        pod_uid        TEXT COLLATE "C" PRIMARY KEY,
        namespace      TEXT NOT NULL,
        pod_name       TEXT NOT NULL,
        images         TEXT NOT NULL,
        pinned         BOOLEAN NOT NULL,
        admitted_at_ms BIGINT NOT NULL,
        expires_at     BIGINT NOT NULL
    );
    CREATE INDEX admission_records_expires_at ON admission_records (expires_at);"#,
    // v2: background jobs claimed by one replica at a time (`Store::claim_job`).
    "CREATE TABLE job_claims (
        job        TEXT PRIMARY KEY,
        holder     TEXT NOT NULL,
        held_until BIGINT NOT NULL
    );",
    // v3: the upstream lease length of a lease the broker renews (`issue::renewal`), so a
    // restarted broker resumes renewing it.
    "ALTER TABLE leases ADD COLUMN renew_step_secs BIGINT;",
    // v4: audit records kept in the database (`audit.sink: store`), one chain per broker
    // process: its head row is written in the same transaction as its records and leases.
    "CREATE TABLE audit_chains (
        epoch      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        replica    TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        seq        BIGINT NOT NULL DEFAULT 0,
        hash       TEXT
    );
    CREATE TABLE audit_records (
        epoch BIGINT NOT NULL REFERENCES audit_chains (epoch),
        seq   BIGINT NOT NULL,
        hash  TEXT NOT NULL,
        line  TEXT NOT NULL,
        PRIMARY KEY (epoch, seq)
    );",
    // v5 (issue 16): the pod a lease was issued to, for revocation when it is deleted.
    "ALTER TABLE leases ADD COLUMN pod_uid TEXT;
    CREATE INDEX leases_pod_uid ON leases (pod_uid) WHERE pod_uid IS NOT NULL;",
];

/// How the connection to the database is protected (`sslmode` in the URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP or a Unix socket: allowed for a loopback host or a socket only.
    Disable,
    /// TLS, the server's certificate verified against the CA file and its name against the
    /// URL's host (`require`, `verify-ca` and `verify-full` all mean this).
    VerifyFull,
}

/// How to reach the database: from `store.postgres_url` (or `_file`), `store.postgres_ca_file`,
/// `store.postgres_pool_size` and `store.postgres_connect_timeout_seconds`.
#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/db?sslmode=…`: holds a password, so a [`Secret`].
    pub url: Secret,
    /// PEM CA certificates the server's certificate must chain to (TLS).
    pub ca_file: Option<PathBuf>,
    /// Most connections this process holds open.
    pub pool_size: usize,
    /// How long connecting, or waiting for a free connection, may take.
    pub connect_timeout: Duration,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &redacted_url(self.url.expose()))
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl PostgresOptions {
    /// Options for `url` with the defaults.
    pub fn new(url: impl Into<Secret>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The URL without its password (`postgres://user@host:port/db`), for messages.
    pub fn shown(&self) -> String {
        redacted_url(self.url.expose())
    }
}

/// The parsed connection settings: the driver's config and the TLS mode.
fn parse_url(opts: &PostgresOptions) -> Result<(tokio_postgres::Config, TlsMode), StoreError> {
    let shown = opts.shown();
    let bad = |why: String| StoreError::Backend(format!("store.postgres_url {shown}: {why}"));
    let mut url = url::Url::parse(opts.url.expose()).map_err(|e| {
        bad(format!(
            "not a URL ({e}); write postgres://user:password@host:port/database"
        ))
    })?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(bad(
            "the scheme must be postgres:// or postgresql://".to_owned()
        ));
    }
    let mut sslmode = None;
    let mut kept = Vec::new();
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" => sslmode = Some(v.into_owned()),
            "sslrootcert" | "sslcert" | "sslkey" | "sslpassword" => {
                return Err(bad(format!(
                    "`{k}` in the URL is not used: give the CA with store.postgres_ca_file"
                )));
            }
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    let mut config: tokio_postgres::Config = url
        .as_str()
        .parse()
        .map_err(|e: tokio_postgres::Error| bad(describe(&e)))?;
    if config.get_dbname().is_none() {
        return Err(bad("name the database (postgres://…/DATABASE)".to_owned()));
    }
    let local = config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => is_loopback(name),
        tokio_postgres::config::Host::Unix(_) => true,
    });
    let mode = match sslmode.as_deref() {
        None if local => TlsMode::Disable,
        None | Some("require" | "verify-ca" | "verify-full") => TlsMode::VerifyFull,
        Some("disable") if local => TlsMode::Disable,
        Some("disable") => {
            return Err(bad(
                "sslmode=disable sends the password and every credential record in plain text \
                 to a host that is not loopback; use sslmode=verify-full with \
                 store.postgres_ca_file"
                    .to_owned(),
            ));
        }
        Some(other) => {
            return Err(bad(format!(
                "sslmode={other} is not supported: use verify-full (or require, verify-ca: the \
                 same here, the certificate and host name are always checked) or disable \
                 (loopback only)"
            )));
        }
    };
    if mode == TlsMode::VerifyFull && opts.ca_file.is_none() {
        return Err(bad(
            "TLS to the database needs store.postgres_ca_file (the CA that signed the \
             server's certificate)"
                .to_owned(),
        ));
    }
    config.ssl_mode(match mode {
        TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
        TlsMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    config.connect_timeout(opts.connect_timeout);
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("lanyard-broker");
    }
    Ok((config, mode))
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A rustls client config trusting only the certificates in `ca_file`.
fn tls_config(ca_file: &Path) -> Result<rustls::ClientConfig, StoreError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |why: String| {
        StoreError::Backend(format!(
            "store.postgres_ca_file {}: {why}",
            ca_file.display()
        ))
    };
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad(format!("cannot read PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block found".to_owned()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| bad(e.to_string()))?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(crate::server::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// The PostgreSQL-backed [`Store`]. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// The URL without its password, for messages.
    shown: Arc<str>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects (TLS as the URL and CA file say), applies the migrations the database has
    /// not seen and returns the store. Fails when the database cannot be reached, refuses the
    /// login, or holds a schema newer than this binary knows.
    pub async fn connect(opts: &PostgresOptions) -> Result<Self, StoreError> {
        let store = Self::open(opts)?;
        store.migrate().await?;
        Ok(store)
    }

    /// The store, without connecting yet or migrating (connections are made on first use).
    pub fn open(opts: &PostgresOptions) -> Result<Self, StoreError> {
        let (config, mode) = parse_url(opts)?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match mode {
            TlsMode::Disable => Manager::from_config(config, NoTls, manager_config),
            TlsMode::VerifyFull => {
                let ca = opts.ca_file.as_deref().ok_or_else(|| {
                    StoreError::Backend("TLS needs store.postgres_ca_file".to_owned())
                })?;
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(ca)?);
                Manager::from_config(config, tls, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .wait_timeout(Some(opts.connect_timeout))
            .create_timeout(Some(opts.connect_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("database {}: {e}", opts.shown())))?;
        Ok(Self {
            pool,
            shown: opts.shown().into(),
        })
    }

    /// The URL without its password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The schema version the database is at (0: never migrated).
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        let conn = self.conn("schema_version").await?;
        let exists: bool = conn
            .query_one(
                "SELECT to_regclass('lanyard_schema_migrations') IS NOT NULL",
                &[],
            )
            .await
            .map_err(pg_error("schema_version"))?
            .get(0);
        if !exists {
            return Ok(0);
        }
        let v: i32 = conn
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM lanyard_schema_migrations",
                &[],
            )
            .await
            .map_err(pg_error("schema_version"))?
            .get(0);
        Ok(u32::try_from(v).unwrap_or(0))
    }

    /// Applies the migrations the database has not seen, in one transaction holding
    /// `pg_advisory_xact_lock(MIGRATION_LOCK)`. Returns the versions it applied.
    pub async fn migrate(&self) -> Result<Vec<u32>, StoreError> {
        let whence = self.shown.clone();
        let fail = move |what: &str, e: StoreError| {
            let msg = match e {
                StoreError::Unavailable(m) | StoreError::Backend(m) | StoreError::Corrupt(m) => m,
                StoreError::Duplicate(m) => format!("duplicate {m}"),
            };
            StoreError::Backend(format!("database {whence}: {what}: {msg}"))
        };
        let mut conn = self
            .conn("migrate")
            .await
            .map_err(|e| fail("connecting", e))?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| fail("starting the migration transaction", pg_error("begin")(e)))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| fail("taking the migration lock", pg_error("lock")(e)))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS lanyard_schema_migrations (
                version    INTEGER PRIMARY KEY,
                applied_at BIGINT NOT NULL
            )",
        )
        .await
        .map_err(|e| fail("creating the version table", pg_error("create")(e)))?;
        let current: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM lanyard_schema_migrations",
                &[],
            )
            .await
            .map_err(|e| fail("reading the schema version", pg_error("read")(e)))?
            .get(0);
        let known = MIGRATIONS.len();
        let current_idx = usize::try_from(current).unwrap_or(0);
        if current_idx > known {
            return Err(StoreError::Backend(format!(
                "database {}: schema version {current} is newer than this broker understands \
                 ({known}); run a broker at least as new as the one that last migrated this \
                 database",
                self.shown
            )));
        }
        let mut applied = Vec::new();
        for (idx, sql) in MIGRATIONS.iter().enumerate().skip(current_idx) {
            let to = idx + 1;
            let to_i32 = i32::try_from(to).unwrap_or(i32::MAX);
            tx.batch_execute(sql).await.map_err(|e| {
                fail(
                    &format!("migrating to schema v{to}"),
                    pg_error("migrate")(e),
                )
            })?;
            tx.execute(
                "INSERT INTO lanyard_schema_migrations (version, applied_at) \
                 VALUES ($1, extract(epoch FROM now())::bigint)",
                &[&to_i32],
            )
            .await
            .map_err(|e| fail(&format!("recording schema v{to}"), pg_error("record")(e)))?;
            applied.push(u32::try_from(to).unwrap_or(u32::MAX));
        }
        tx.commit()
            .await
            .map_err(|e| fail("committing the migrations", pg_error("commit")(e)))?;
        for v in &applied {
            tracing::info!(version = v, "store schema migrated");
        }
        Ok(applied)
    }

    /// A connection from the pool; [`StoreError::Unavailable`] when none comes in time.
    pub(super) async fn conn(
        &self,
        op: &'static str,
    ) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| pool_error(op, &e))
    }

    async fn execute(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let conn = self.conn(op).await?;
        let stmt = conn.prepare_cached(sql).await.map_err(pg_error(op))?;
        conn.execute(&stmt, params).await.map_err(pg_error(op))
    }

    async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let conn = self.conn(op).await?;
        let stmt = conn.prepare_cached(sql).await.map_err(pg_error(op))?;
        conn.query(&stmt, params).await.map_err(pg_error(op))
    }

    async fn query_opt(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let conn = self.conn(op).await?;
        let stmt = conn.prepare_cached(sql).await.map_err(pg_error(op))?;
        conn.query_opt(&stmt, params).await.map_err(pg_error(op))
    }
}

/// A pool failure as a [`StoreError`]: no connection in time, or none could be made.
fn pool_error(op: &'static str, e: &deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Timeout(_) => StoreError::Unavailable(format!(
            "{op}: no database connection in time (pool exhausted or the database is not \
             answering)"
        )),
        PoolError::Backend(e) => pg_error(op)(clone_pg(e)),
        PoolError::Closed => StoreError::Unavailable(format!("{op}: the pool is closed")),
        other => StoreError::Backend(format!("{op}: {other}")),
    }
}

/// `tokio_postgres::Error` is not `Clone`; what [`pg_error`] needs of it, as text.
fn clone_pg(e: &tokio_postgres::Error) -> PgFailure {
    PgFailure {
        code: e.code().cloned(),
        text: describe(e),
        closed: e.is_closed(),
        conversion: false,
    }
}

/// A driver error reduced to what the mapping reads.
#[derive(Debug)]
struct PgFailure {
    code: Option<SqlState>,
    text: String,
    closed: bool,
    conversion: bool,
}

impl From<tokio_postgres::Error> for PgFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        let conversion = {
            let t = e.to_string();
            t.starts_with("error deserializing") || t.starts_with("error serializing")
        };
        Self {
            code: e.code().cloned(),
            text: describe(&e),
            closed: e.is_closed(),
            conversion,
        }
    }
}

/// The error's message: for a server error its SQLSTATE and primary message only (never its
/// DETAIL, which may quote a row's values), otherwise the driver's message and its causes.
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Maps a driver error to a [`StoreError`] naming the operation: a uniqueness violation is
/// [`StoreError::Duplicate`]; a connection that failed or closed, a server shutting down,
/// out of resources or read-only, a lock or serialization conflict is
/// [`StoreError::Unavailable`] (a retry may succeed).
fn pg_error<E: Into<PgFailure>>(op: &'static str) -> impl Fn(E) -> StoreError {
    move |e| {
        let f: PgFailure = e.into();
        let msg = format!("{op}: {}", f.text);
        match &f.code {
            Some(c) if *c == SqlState::UNIQUE_VIOLATION => StoreError::Duplicate(msg),
            Some(c) if is_transient(c) => StoreError::Unavailable(msg),
            Some(_) => StoreError::Backend(msg),
            None if f.conversion => StoreError::Corrupt(msg),
            None => {
                // No SQLSTATE: the connection failed (refused, reset, closed, timed out, TLS)
                // or the server's answer could not be read.
                let _ = f.closed;
                StoreError::Unavailable(msg)
            }
        }
    }
}

fn is_transient(code: &SqlState) -> bool {
    let c = code.code();
    // 08: connection exception; 53: insufficient resources; 57P0x: shutting down / cannot
    // connect now; 40001/40P01: serialization failure, deadlock; 55P03: lock not available;
    // 25006: read-only transaction (a standby, or a failover in progress).
    c.starts_with("08")
        || c.starts_with("53")
        || c.starts_with("57P")
        || matches!(c, "40001" | "40P01" | "55P03" | "25006")
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Reads column `idx` of `row`, a type mismatch as [`StoreError::Corrupt`].
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
    what: &str,
) -> Result<T, StoreError> {
    row.try_get(idx)
        .map_err(|e| StoreError::Corrupt(format!("{what}: column {idx}: {}", describe(&e))))
}

const TOKEN_COLUMNS: &str = "token_id, token_hash, roles, image, created_at, expires_at, \
     redeemed_at, reserved_by, reserved_at, reserved_until";

/// A `bootstrap_tokens` row as stored.
struct TokenRow {
    token_id: String,
    token_hash: String,
    roles: String,
    image: Option<String>,
    created_at: i64,
    expires_at: i64,
    redeemed_at: Option<i64>,
    reserved_by: Option<String>,
    reserved_at: Option<i64>,
    reserved_until: Option<i64>,
}

impl TokenRow {
    fn from_row(r: &Row) -> Result<Self, StoreError> {
        let w = "bootstrap token";
        Ok(Self {
            token_id: col(r, 0, w)?,
            token_hash: col(r, 1, w)?,
            roles: col(r, 2, w)?,
            image: col(r, 3, w)?,
            created_at: col(r, 4, w)?,
            expires_at: col(r, 5, w)?,
            redeemed_at: col(r, 6, w)?,
            reserved_by: col(r, 7, w)?,
            reserved_at: col(r, 8, w)?,
            reserved_until: col(r, 9, w)?,
        })
    }

    fn what(&self) -> String {
        format!("bootstrap token {}", self.token_id)
    }

    fn decode(self) -> Result<BootstrapTokenRecord, StoreError> {
        let what = self.what();
        let roles: Vec<String> = serde_json::from_str(&self.roles).map_err(|e| {
            StoreError::Corrupt(format!("{what}: roles are not a JSON list of strings: {e}"))
        })?;
        Ok(BootstrapTokenRecord {
            created_at: from_unix(self.created_at, &what)?,
            expires_at: from_unix(self.expires_at, &what)?,
            token_id: self.token_id,
            token_hash: self.token_hash,
            roles,
            image: self.image,
        })
    }

    fn redeemed(self) -> Result<RedeemedToken, StoreError> {
        let what = self.what();
        let redeemed_at = self.redeemed_at.unwrap_or_default();
        let session_started = self.reserved_at.unwrap_or(redeemed_at);
        Ok(RedeemedToken {
            redeemed_at: from_unix(redeemed_at, &what)?,
            session_started: from_unix(session_started, &what)?,
            token: self.decode()?,
        })
    }

    /// Why a reservation at `now` did not take this row; `None` when it is free (the hold
    /// that refused it was released since: try again).
    fn refusal(self, now: i64) -> Result<Option<ReserveOutcome>, StoreError> {
        if self.redeemed_at.is_some() {
            return Ok(Some(ReserveOutcome::Redeemed(self.redeemed()?)));
        }
        if self.expires_at <= now {
            return Ok(Some(ReserveOutcome::Expired(self.decode()?)));
        }
        match (&self.reserved_by, self.reserved_until) {
            (Some(_), Some(until)) if until > now => Ok(Some(ReserveOutcome::Held {
                until: from_unix(until, &self.what())?,
                token: self.decode()?,
            })),
            _ => Ok(None),
        }
    }
}

const LEASE_COLUMNS: &str = "lease_id, role, backend, subject, issuer, issued_at, expires_at, \
     upstream_lease, fingerprint, revoked_at, renew_step_secs, pod_uid";

fn decode_lease(r: &Row) -> Result<LeaseRecord, StoreError> {
    let lease_id: String = col(r, 0, "lease")?;
    let what = format!("lease {lease_id}");
    let revoked_at: Option<i64> = col(r, 9, &what)?;
    Ok(LeaseRecord {
        role: col(r, 1, &what)?,
        backend: col(r, 2, &what)?,
        subject: col(r, 3, &what)?,
        issuer: col(r, 4, &what)?,
        issued_at: from_unix(col(r, 5, &what)?, &what)?,
        expires_at: from_unix(col(r, 6, &what)?, &what)?,
        upstream_lease: col(r, 7, &what)?,
        fingerprint: col(r, 8, &what)?,
        revoked_at: revoked_at.map(|v| from_unix(v, &what)).transpose()?,
        renew_step_secs: col::<Option<i64>>(r, 10, &what)?.map(|s| u64::try_from(s).unwrap_or(0)),
        pod_uid: col(r, 11, &what)?,
        lease_id,
    })
}

/// The parameters of a lease row, times checked.
struct LeaseParams {
    issued_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    renew_step_secs: Option<i64>,
}

fn lease_params(rec: &LeaseRecord) -> Result<LeaseParams, StoreError> {
    Ok(LeaseParams {
        issued_at: to_unix(rec.issued_at)?,
        expires_at: to_unix(rec.expires_at)?,
        revoked_at: rec.revoked_at.map(to_unix).transpose()?,
        renew_step_secs: rec
            .renew_step_secs
            .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
    })
}

/// Inserts a lease unless its id exists; `Duplicate` then (the transaction goes on: `ON
/// CONFLICT DO NOTHING` raises nothing, so one duplicate does not abort a group).
const INSERT_LEASE: &str = "INSERT INTO leases (lease_id, role, backend, subject, issuer, \
     issued_at, expires_at, upstream_lease, fingerprint, revoked_at, renew_step_secs, pod_uid) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (lease_id) DO NOTHING";

const WRITE_HEAD: &str = "INSERT INTO audit_head (id, seq, hash) VALUES (1, $1, $2) \
     ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash";

async fn insert_lease_on<C: deadpool_postgres::GenericClient>(
    conn: &C,
    rec: &LeaseRecord,
) -> Result<(), StoreError> {
    let p = lease_params(rec)?;
    let stmt = conn
        .prepare_cached(INSERT_LEASE)
        .await
        .map_err(pg_error("insert_lease"))?;
    let n = conn
        .execute(
            &stmt,
            &[
                &rec.lease_id,
                &rec.role,
                &rec.backend,
                &rec.subject,
                &rec.issuer,
                &p.issued_at,
                &p.expires_at,
                &rec.upstream_lease,
                &rec.fingerprint,
                &p.revoked_at,
                &p.renew_step_secs,
                &rec.pod_uid,
            ],
        )
        .await
        .map_err(pg_error("insert_lease"))?;
    if n == 0 {
        return Err(StoreError::Duplicate(format!("lease id {}", rec.lease_id)));
    }
    Ok(())
}

fn epoch_i64(epoch: u64) -> Result<i64, StoreError> {
    i64::try_from(epoch)
        .map_err(|_| StoreError::Backend(format!("audit chain epoch {epoch} out of range")))
}

fn head_seq(head: &ChainHead) -> Result<i64, StoreError> {
    i64::try_from(head.seq).map_err(|_| {
        StoreError::Backend(format!(
            "set_audit_head: sequence {} does not fit in 63 bits",
            head.seq
        ))
    })
}

const ADMISSION_COLUMNS: &str =
    "pod_uid, namespace, pod_name, images, pinned, admitted_at_ms, expires_at";

fn decode_admission(r: &Row) -> Result<AdmissionRecord, StoreError> {
    let pod_uid: String = col(r, 0, "admission record")?;
    let what = format!("admission record of pod {pod_uid}");
    let images: String = col(r, 3, &what)?;
    let images: Vec<String> = serde_json::from_str(&images)
        .map_err(|e| StoreError::Corrupt(format!("{what}: images: {e}")))?;
    Ok(AdmissionRecord {
        namespace: col(r, 1, &what)?,
        pod_name: col(r, 2, &what)?,
        images,
        pinned: col(r, 4, &what)?,
        admitted_at: from_unix_millis(col(r, 5, &what)?, &what)?,
        expires_at: from_unix(col(r, 6, &what)?, &what)?,
        pod_uid,
    })
}

fn decode_verdict(r: &Row) -> Result<VerdictRecord, StoreError> {
    let json: String = col(r, 0, "image verdict")?;
    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("image verdict: {e}")))
}

#[async_trait::async_trait]
impl Store for PostgresStore {
    async fn insert_bootstrap_token(&self, rec: &BootstrapTokenRecord) -> Result<(), StoreError> {
        let roles = serde_json::to_string(&rec.roles)
            .map_err(|e| StoreError::Backend(format!("encoding roles: {e}")))?;
        let created_at = to_unix(rec.created_at)?;
        let expires_at = to_unix(rec.expires_at)?;
        let n = self
            .execute(
                "insert_bootstrap_token",
                "INSERT INTO bootstrap_tokens \
                 (token_id, token_hash, roles, image, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &rec.token_id,
                    &rec.token_hash,
                    &roles,
                    &rec.image,
                    &created_at,
                    &expires_at,
                ],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Duplicate(format!(
                "bootstrap token (id {} or its hash)",
                rec.token_id
            )));
        }
        Ok(())
    }

    async fn reserve_bootstrap_token(
        &self,
        token_hash: &str,
        reservation: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<ReserveOutcome, StoreError> {
        let now = to_unix(now)?;
        let until = to_unix(until)?;
        let reserve = format!(
            "UPDATE bootstrap_tokens \
             SET reserved_by = $1, reserved_at = $2, reserved_until = $3 \
             WHERE token_hash = $4 AND redeemed_at IS NULL AND expires_at > $2 \
             AND (reserved_by IS NULL OR reserved_until <= $2) \
             RETURNING {TOKEN_COLUMNS}"
        );
        let classify =
            format!("SELECT {TOKEN_COLUMNS} FROM bootstrap_tokens WHERE token_hash = $1");
        // The UPDATE waits for any other writer of the row and re-checks its condition on the
        // version that writer left, so of racing callers exactly one matches. The losers read
        // why; if the hold that beat them was released meanwhile, they try again.
        for _ in 0..8 {
            let won = self
                .query_opt(
                    "reserve_bootstrap_token",
                    &reserve,
                    &[&reservation, &now, &until, &token_hash],
                )
                .await?;
            if let Some(row) = won {
                return Ok(ReserveOutcome::Reserved(
                    TokenRow::from_row(&row)?.decode()?,
                ));
            }
            let row = self
                .query_opt(
                    "reserve_bootstrap_token (classifying)",
                    &classify,
                    &[&token_hash],
                )
                .await?;
            let Some(row) = row else {
                return Ok(ReserveOutcome::Unknown);
            };
            if let Some(outcome) = TokenRow::from_row(&row)?.refusal(now)? {
                return Ok(outcome);
            }
        }
        Err(StoreError::Unavailable(
            "reserve_bootstrap_token: the token changed hands too often; retry".to_owned(),
        ))
    }

    async fn commit_bootstrap_token(
        &self,
        token_hash: &str,
        reservation: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let now = to_unix(now)?;
        let n = self
            .execute(
                "commit_bootstrap_token",
                "UPDATE bootstrap_tokens SET redeemed_at = $1 \
                 WHERE token_hash = $2 AND reserved_by = $3 AND redeemed_at IS NULL",
                &[&now, &token_hash, &reservation],
            )
            .await?;
        Ok(n > 0)
    }

    async fn release_bootstrap_token(
        &self,
        token_hash: &str,
        reservation: &str,
    ) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "release_bootstrap_token",
                "UPDATE bootstrap_tokens \
                 SET reserved_by = NULL, reserved_at = NULL, reserved_until = NULL \
                 WHERE token_hash = $1 AND reserved_by = $2 AND redeemed_at IS NULL",
                &[&token_hash, &reservation],
            )
            .await?;
        Ok(n > 0)
    }

    async fn revoke_bootstrap_token(&self, token_id: &str) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "revoke_bootstrap_token",
                "DELETE FROM bootstrap_tokens WHERE token_id = $1 AND redeemed_at IS NULL",
                &[&token_id],
            )
            .await?;
        Ok(n > 0)
    }

    async fn redeemed_bootstrap_token(
        &self,
        token_id: &str,
    ) -> Result<Option<RedeemedToken>, StoreError> {
        let row = self
            .query_opt(
                "redeemed_bootstrap_token",
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM bootstrap_tokens \
                     WHERE token_id = $1 AND redeemed_at IS NOT NULL"
                ),
                &[&token_id],
            )
            .await?;
        row.map(|r| TokenRow::from_row(&r)?.redeemed()).transpose()
    }

    async fn revoke_session(&self, rec: &SessionRevocation) -> Result<bool, StoreError> {
        let revoked_at = to_unix(rec.revoked_at)?;
        let expires_at = to_unix(rec.expires_at)?;
        let n = self
            .execute(
                "revoke_session",
                "INSERT INTO session_revocations (session_id, revoked_at, expires_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (session_id) DO NOTHING",
                &[&rec.session_id, &revoked_at, &expires_at],
            )
            .await?;
        Ok(n > 0)
    }

    async fn session_revocations(
        &self,
        now: SystemTime,
    ) -> Result<Vec<SessionRevocation>, StoreError> {
        let now = to_unix(now)?;
        let rows = self
            .query(
                "session_revocations",
                "SELECT session_id, revoked_at, expires_at FROM session_revocations \
                 WHERE expires_at > $1",
                &[&now],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let session_id: String = col(r, 0, "session revocation")?;
                let what = format!("session revocation {session_id}");
                Ok(SessionRevocation {
                    revoked_at: from_unix(col(r, 1, &what)?, &what)?,
                    expires_at: from_unix(col(r, 2, &what)?, &what)?,
                    session_id,
                })
            })
            .collect()
    }

    async fn prune_session_revocations(&self, now: SystemTime) -> Result<usize, StoreError> {
        let now = to_unix(now)?;
        let n = self
            .execute(
                "prune_session_revocations",
                "DELETE FROM session_revocations WHERE expires_at <= $1",
                &[&now],
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let probe = async {
            let conn = self.conn("check_writable").await?;
            let read_only: bool = conn
                .query_one(
                    "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'",
                    &[],
                )
                .await
                .map_err(pg_error("check_writable"))?
                .get(0);
            if read_only {
                return Err(StoreError::Unavailable(
                    "check_writable: the database is read-only (a standby, or a failover in \
                     progress)"
                        .to_owned(),
                ));
            }
            Ok(())
        };
        tokio::time::timeout(PROBE_TIMEOUT, probe)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "check_writable: no answer from the database within {} ms",
                    PROBE_TIMEOUT.as_millis()
                )))
            })
    }

    async fn insert_lease(&self, rec: &LeaseRecord) -> Result<(), StoreError> {
        let conn = self.conn("insert_lease").await?;
        insert_lease_on(&conn, rec).await
    }

    async fn get_lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>, StoreError> {
        let row = self
            .query_opt(
                "get_lease",
                &format!("SELECT {LEASE_COLUMNS} FROM leases WHERE lease_id = $1"),
                &[&lease_id],
            )
            .await?;
        row.as_ref().map(decode_lease).transpose()
    }

    async fn mark_lease_revoked(
        &self,
        lease_id: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let now = to_unix(now)?;
        let n = self
            .execute(
                "mark_lease_revoked",
                "UPDATE leases SET revoked_at = $1 WHERE lease_id = $2 AND revoked_at IS NULL",
                &[&now, &lease_id],
            )
            .await?;
        Ok(n > 0)
    }

    async fn expired_leases(
        &self,
        backend: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError> {
        let now = to_unix(now)?;
        let rows = self
            .query(
                "expired_leases",
                &format!(
                    "SELECT {LEASE_COLUMNS} FROM leases WHERE backend = $1 AND expires_at <= $2 \
                     AND revoked_at IS NULL AND upstream_lease IS NOT NULL \
                     ORDER BY expires_at, lease_id LIMIT $3"
                ),
                &[&backend, &now, &limit_i64(limit)],
            )
            .await?;
        rows.iter().map(decode_lease).collect()
    }

    async fn running_leases_of_pod(
        &self,
        pod_uid: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError> {
        let now = to_unix(now)?;
        let rows = self
            .query(
                "running_leases_of_pod",
                &format!(
                    "SELECT {LEASE_COLUMNS} FROM leases WHERE pod_uid = $1 AND revoked_at IS NULL \
                     AND expires_at > $2 ORDER BY lease_id LIMIT $3"
                ),
                &[&pod_uid, &now, &limit_i64(limit)],
            )
            .await?;
        rows.iter().map(decode_lease).collect()
    }

    async fn pods_with_running_leases(
        &self,
        after: Option<&str>,
        issued_before: SystemTime,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let after = after.unwrap_or("");
        let issued_before = to_unix(issued_before)?;
        let now = to_unix(now)?;
        let rows = self
            .query(
                "pods_with_running_leases",
                "SELECT DISTINCT pod_uid FROM leases WHERE pod_uid > $1 \
                 AND revoked_at IS NULL AND expires_at > $2 AND issued_at < $3 \
                 ORDER BY pod_uid LIMIT $4",
                &[&after, &now, &issued_before, &limit_i64(limit)],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    async fn revoked_running_leases(
        &self,
        backend: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<(String, SystemTime)>, StoreError> {
        let now = to_unix(now)?;
        let rows = self
            .query(
                "revoked_running_leases",
                "SELECT lease_id, expires_at FROM leases WHERE expires_at > $2 \
                 AND backend = $1 AND revoked_at IS NOT NULL \
                 ORDER BY expires_at, lease_id LIMIT $3",
                &[&backend, &now, &limit_i64(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.get(0);
                let at = from_unix(r.get(1), &format_args!("lease {id} expires_at"))?;
                Ok((id, at))
            })
            .collect()
    }

    async fn renewable_leases(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError> {
        let now = to_unix(now)?;
        let rows = self
            .query(
                "renewable_leases",
                &format!(
                    "SELECT {LEASE_COLUMNS} FROM leases WHERE renew_step_secs IS NOT NULL \
                     AND revoked_at IS NULL AND upstream_lease IS NOT NULL AND expires_at > $1 \
                     ORDER BY expires_at, lease_id LIMIT $2"
                ),
                &[&now, &limit_i64(limit)],
            )
            .await?;
        rows.iter().map(decode_lease).collect()
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let rows = self
            .query(
                "signing_keys",
                "SELECT kid, alg, pkcs8, created_at, active_from FROM signing_keys \
                 ORDER BY created_at, seq",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let kid: String = col(r, 0, "signing key")?;
                let what = format!("signing key {kid}");
                let pkcs8: Zeroizing<String> = Zeroizing::new(col(r, 2, &what)?);
                Ok(SigningKeyRecord {
                    alg: col(r, 1, &what)?,
                    pkcs8: Secret::new(pkcs8.as_str()),
                    created_at: from_unix(col(r, 3, &what)?, &what)?,
                    active_from: from_unix(col(r, 4, &what)?, &what)?,
                    kid,
                })
            })
            .collect()
    }

    async fn insert_signing_key(&self, rec: &SigningKeyRecord) -> Result<(), StoreError> {
        let created_at = to_unix(rec.created_at)?;
        let active_from = to_unix(rec.active_from)?;
        let n = self
            .execute(
                "insert_signing_key",
                "INSERT INTO signing_keys (kid, alg, pkcs8, created_at, active_from) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kid) DO NOTHING",
                &[
                    &rec.kid,
                    &rec.alg,
                    &rec.pkcs8.expose(),
                    &created_at,
                    &active_from,
                ],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Duplicate(format!("signing key id {}", rec.kid)));
        }
        Ok(())
    }

    async fn delete_signing_key(&self, kid: &str) -> Result<(), StoreError> {
        self.execute(
            "delete_signing_key",
            "DELETE FROM signing_keys WHERE kid = $1",
            &[&kid],
        )
        .await?;
        Ok(())
    }

    async fn reseal_signing_key(
        &self,
        kid: &str,
        expected: &Secret,
        new: &Secret,
    ) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "reseal_signing_key",
                "UPDATE signing_keys SET pkcs8 = $3 WHERE kid = $1 AND pkcs8 = $2",
                &[&kid, &expected.expose(), &new.expose()],
            )
            .await?;
        Ok(n == 1)
    }

    async fn audit_head(&self) -> Result<Option<ChainHead>, StoreError> {
        let row = self
            .query_opt(
                "audit_head",
                "SELECT seq, hash FROM audit_head WHERE id = 1",
                &[],
            )
            .await?;
        row.map(|r| {
            let seq: i64 = col(&r, 0, "audit chain head")?;
            let seq = u64::try_from(seq).map_err(|_| {
                StoreError::Corrupt(format!("audit chain head: negative sequence {seq}"))
            })?;
            Ok(ChainHead {
                seq,
                hash: col(&r, 1, "audit chain head")?,
            })
        })
        .transpose()
    }

    async fn set_audit_head(&self, head: &ChainHead) -> Result<(), StoreError> {
        let seq = head_seq(head)?;
        self.execute("set_audit_head", WRITE_HEAD, &[&seq, &head.hash])
            .await?;
        Ok(())
    }

    async fn record_group(
        &self,
        leases: &[LeaseRecord],
        head: &ChainHead,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        for l in leases {
            lease_params(l)?;
        }
        let seq = head_seq(head)?;
        let mut conn = self.conn("record_group").await?;
        let tx = conn
            .transaction()
            .await
            .map_err(pg_error("record_group: begin"))?;
        let mut results = Vec::with_capacity(leases.len());
        for l in leases {
            match insert_lease_on(&tx, l).await {
                Err(e @ StoreError::Duplicate(_)) => results.push(Err(e)),
                // Any other failure aborts the transaction: the whole group fails.
                Err(e) => return Err(e),
                Ok(()) => results.push(Ok(())),
            }
        }
        let stmt = tx
            .prepare_cached(WRITE_HEAD)
            .await
            .map_err(pg_error("record_group: head"))?;
        tx.execute(&stmt, &[&seq, &head.hash])
            .await
            .map_err(pg_error("record_group: head"))?;
        tx.commit()
            .await
            .map_err(pg_error("record_group: commit"))?;
        Ok(results)
    }

    async fn local_secret(&self, name: &str, len: usize) -> Result<Secret, StoreError> {
        if len == 0 || len > MAX_LOCAL_SECRET_BYTES {
            return Err(StoreError::Backend(format!(
                "local_secret {name}: length {len} is out of range; ask for 1 to \
                 {MAX_LOCAL_SECRET_BYTES} bytes"
            )));
        }
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        SystemRandom::new().fill(&mut bytes).map_err(|_| {
            StoreError::Backend(format!(
                "local_secret {name}: the system random number generator failed"
            ))
        })?;
        let fresh = Zeroizing::new(hex::encode(&*bytes));
        // Whoever inserts first wins; everyone then reads the same value back.
        self.execute(
            "local_secret",
            "INSERT INTO local_secrets (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
            &[&name, &fresh.as_str()],
        )
        .await?;
        let row = self
            .query_opt(
                "local_secret",
                "SELECT value FROM local_secrets WHERE name = $1",
                &[&name],
            )
            .await?
            .ok_or_else(|| {
                StoreError::Backend(format!("local secret {name} vanished after its insert"))
            })?;
        let stored: Zeroizing<String> = Zeroizing::new(col(&row, 0, "local secret")?);
        let valid_hex = stored
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid_hex {
            return Err(StoreError::Corrupt(format!(
                "local secret {name} is not lowercase hex"
            )));
        }
        if stored.len() != len * 2 {
            return Err(StoreError::Corrupt(format!(
                "local secret {name} holds {} bytes but {len} were asked for",
                stored.len() / 2
            )));
        }
        Ok(Secret::new(stored.as_str()))
    }

    async fn put_verdict(&self, rec: &VerdictRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec)
            .map_err(|e| StoreError::Backend(format!("put_verdict: {e}")))?;
        let scanned_at = to_unix(rec.scanned_at)?;
        self.execute(
            "put_verdict",
            "INSERT INTO image_verdicts (digest, ruleset_version, repository, scanned_at, record) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest, ruleset_version) DO UPDATE SET \
             repository = excluded.repository, scanned_at = excluded.scanned_at, \
             record = excluded.record",
            &[
                &rec.digest,
                &rec.ruleset_version,
                &rec.repository,
                &scanned_at,
                &json,
            ],
        )
        .await?;
        Ok(())
    }

    async fn verdict(
        &self,
        digest: &str,
        ruleset_version: &str,
    ) -> Result<Option<VerdictRecord>, StoreError> {
        let row = self
            .query_opt(
                "verdict",
                "SELECT record FROM image_verdicts WHERE digest = $1 AND ruleset_version = $2",
                &[&digest, &ruleset_version],
            )
            .await?;
        row.as_ref().map(decode_verdict).transpose()
    }

    async fn previous_verdict(
        &self,
        digest: &str,
        except: &str,
    ) -> Result<Option<VerdictRecord>, StoreError> {
        let row = self
            .query_opt(
                "previous_verdict",
                "SELECT record FROM image_verdicts WHERE digest = $1 AND ruleset_version <> $2 \
                 ORDER BY scanned_at DESC, ruleset_version DESC LIMIT 1",
                &[&digest, &except],
            )
            .await?;
        row.as_ref().map(decode_verdict).transpose()
    }

    async fn digests_without_verdict(
        &self,
        ruleset_version: &str,
        limit: usize,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let rows = self
            .query(
                "digests_without_verdict",
                "SELECT digest, MAX(repository) FROM image_verdicts v WHERE NOT EXISTS \
                 (SELECT 1 FROM image_verdicts w WHERE w.digest = v.digest \
                  AND w.ruleset_version = $1) \
                 GROUP BY digest ORDER BY digest LIMIT $2",
                &[&ruleset_version, &limit_i64(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((col(r, 0, "image verdict")?, col(r, 1, "image verdict")?)))
            .collect()
    }

    async fn put_exemption(&self, rec: &ExemptionRecord) -> Result<(), StoreError> {
        let created_at = to_unix(rec.created_at)?;
        self.execute(
            "put_exemption",
            "INSERT INTO image_exemptions (digest, reason, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (digest) DO UPDATE SET reason = excluded.reason, \
             created_at = excluded.created_at",
            &[&rec.digest, &rec.reason, &created_at],
        )
        .await?;
        Ok(())
    }

    async fn exemption(&self, digest: &str) -> Result<Option<ExemptionRecord>, StoreError> {
        let row = self
            .query_opt(
                "exemption",
                "SELECT reason, created_at FROM image_exemptions WHERE digest = $1",
                &[&digest],
            )
            .await?;
        row.map(|r| {
            let what = format!("exemption of {digest}");
            Ok(ExemptionRecord {
                reason: col(&r, 0, &what)?,
                created_at: from_unix(col(&r, 1, &what)?, &what)?,
                digest: digest.to_owned(),
            })
        })
        .transpose()
    }

    async fn put_admission_record(&self, rec: &AdmissionRecord) -> Result<(), StoreError> {
        let images = serde_json::to_string(&rec.images)
            .map_err(|e| StoreError::Backend(format!("put_admission_record: {e}")))?;
        let admitted_at = to_unix_millis(rec.admitted_at)?;
        let expires_at = to_unix(rec.expires_at)?;
        // Concurrent commits share WAL flushes in PostgreSQL itself (each review on its own
        // connection), so no group commit here as in the SQLite store.
        self.execute(
            "put_admission_record",
            &format!(
                "INSERT INTO admission_records ({ADMISSION_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (pod_uid) DO UPDATE SET \
                 namespace = excluded.namespace, pod_name = excluded.pod_name, \
                 images = excluded.images, pinned = excluded.pinned, \
                 admitted_at_ms = excluded.admitted_at_ms, expires_at = excluded.expires_at"
            ),
            &[
                &rec.pod_uid,
                &rec.namespace,
                &rec.pod_name,
                &images,
                &rec.pinned,
                &admitted_at,
                &expires_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn admission_record(&self, pod_uid: &str) -> Result<Option<AdmissionRecord>, StoreError> {
        let row = self
            .query_opt(
                "admission_record",
                &format!("SELECT {ADMISSION_COLUMNS} FROM admission_records WHERE pod_uid = $1"),
                &[&pod_uid],
            )
            .await?;
        row.as_ref().map(decode_admission).transpose()
    }

    async fn delete_admission_record(&self, pod_uid: &str) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "delete_admission_record",
                "DELETE FROM admission_records WHERE pod_uid = $1",
                &[&pod_uid],
            )
            .await?;
        Ok(n > 0)
    }

    async fn admission_records_page(
        &self,
        after_uid: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AdmissionRecord>, StoreError> {
        let rows = self
            .query(
                "admission_records_page",
                &format!(
                    "SELECT {ADMISSION_COLUMNS} FROM admission_records \
                     WHERE $1::text IS NULL OR pod_uid > $1 ORDER BY pod_uid LIMIT $2"
                ),
                &[&after_uid, &limit_i64(limit)],
            )
            .await?;
        rows.iter().map(decode_admission).collect()
    }

    async fn prune_admission_records(&self, now: SystemTime) -> Result<usize, StoreError> {
        let now = to_unix(now)?;
        let n = self
            .execute(
                "prune_admission_records",
                "DELETE FROM admission_records WHERE expires_at <= $1",
                &[&now],
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn open_audit_chain(&self, replica: &str, now: SystemTime) -> Result<u64, StoreError> {
        let now = to_unix(now)?;
        let row = self
            .query_opt(
                "open_audit_chain",
                "INSERT INTO audit_chains (replica, started_at) VALUES ($1, $2) RETURNING epoch",
                &[&replica, &now],
            )
            .await?
            .ok_or_else(|| StoreError::Backend("open_audit_chain: no row came back".into()))?;
        let epoch: i64 = col(&row, 0, "audit chain")?;
        u64::try_from(epoch)
            .map_err(|_| StoreError::Corrupt(format!("audit chain: negative epoch {epoch}")))
    }

    async fn record_audit_lines(
        &self,
        epoch: u64,
        prev: Option<&ChainHead>,
        lines: &[StoredLine],
        leases: &[LeaseRecord],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        for l in leases {
            lease_params(l)?;
        }
        let Some(last) = lines.last() else {
            return Ok(Vec::new());
        };
        let epoch = epoch_i64(epoch)?;
        let prev_seq = prev.map(head_seq).transpose()?.unwrap_or(0);
        let new_seq = head_seq(&last.head)?;
        let seqs = lines
            .iter()
            .map(|l| head_seq(&l.head))
            .collect::<Result<Vec<i64>, _>>()?;
        let hashes: Vec<&str> = lines.iter().map(|l| l.head.hash.as_str()).collect();
        let texts: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
        let mut conn = self.conn("record_audit_lines").await?;
        let tx = conn
            .transaction()
            .await
            .map_err(pg_error("record_audit_lines: begin"))?;
        // The head moves only from where this writer left it: a second writer on one chain
        // (a bug) fails instead of forking it.
        let moved = tx
            .execute(
                "UPDATE audit_chains SET seq = $2, hash = $3 WHERE epoch = $1 AND seq = $4",
                &[&epoch, &new_seq, &last.head.hash, &prev_seq],
            )
            .await
            .map_err(pg_error("record_audit_lines: head"))?;
        if moved != 1 {
            return Err(StoreError::Corrupt(format!(
                "audit chain {epoch}: its head is not at seq {prev_seq} (another writer?)"
            )));
        }
        tx.execute(
            "INSERT INTO audit_records (epoch, seq, hash, line) \
             SELECT $1, s, h, l FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[]) AS t (s, h, l)",
            &[&epoch, &seqs, &hashes, &texts],
        )
        .await
        .map_err(pg_error("record_audit_lines: records"))?;
        let mut results = Vec::with_capacity(leases.len());
        for l in leases {
            match insert_lease_on(&tx, l).await {
                Err(e @ StoreError::Duplicate(_)) => results.push(Err(e)),
                Err(e) => return Err(e),
                Ok(()) => results.push(Ok(())),
            }
        }
        tx.commit()
            .await
            .map_err(pg_error("record_audit_lines: commit"))?;
        Ok(results)
    }

    async fn audit_chains(&self) -> Result<Vec<AuditChain>, StoreError> {
        let rows = self
            .query(
                "audit_chains",
                "SELECT epoch, replica, started_at, seq, hash FROM audit_chains ORDER BY epoch",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let epoch: i64 = col(r, 0, "audit chain")?;
                let what = format!("audit chain {epoch}");
                let seq: i64 = col(r, 3, &what)?;
                let hash: Option<String> = col(r, 4, &what)?;
                let head = match (seq, hash) {
                    (0, None) => None,
                    (seq, Some(hash)) if seq > 0 => Some(ChainHead {
                        seq: seq.unsigned_abs(),
                        hash,
                    }),
                    (seq, _) => {
                        return Err(StoreError::Corrupt(format!("{what}: head seq {seq}")));
                    }
                };
                Ok(AuditChain {
                    epoch: u64::try_from(epoch)
                        .map_err(|_| StoreError::Corrupt(format!("{what}: negative epoch")))?,
                    replica: col(r, 1, &what)?,
                    started_at: from_unix(col(r, 2, &what)?, &what)?,
                    head,
                })
            })
            .collect()
    }

    async fn audit_lines(
        &self,
        epoch: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredLine>, StoreError> {
        let epoch = epoch_i64(epoch)?;
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "audit_lines",
                "SELECT seq, hash, line FROM audit_records WHERE epoch = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3",
                &[&epoch, &after, &limit_i64(limit)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = col(r, 0, "audit record")?;
                let hash: String = col(r, 1, "audit record")?;
                let line: String = col(r, 2, "audit record")?;
                Ok(StoredLine {
                    head: ChainHead {
                        seq: u64::try_from(seq).map_err(|_| {
                            StoreError::Corrupt(format!("audit record: negative seq {seq}"))
                        })?,
                        hash,
                    },
                    line,
                })
            })
            .collect()
    }

    async fn claim_job(
        &self,
        job: &str,
        holder: &str,
        now: SystemTime,
        until: SystemTime,
    ) -> Result<bool, StoreError> {
        let now = to_unix(now)?;
        let until = to_unix(until)?;
        // One statement: the row is inserted, or taken over only when its holder is this one
        // or its claim lapsed (the condition is re-checked under the row lock); a row comes
        // back only when this holder has the job.
        let row = self
            .query_opt(
                "claim_job",
                "INSERT INTO job_claims (job, holder, held_until) VALUES ($1, $2, $4) \
                 ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, \
                 held_until = excluded.held_until \
                 WHERE job_claims.holder = excluded.holder OR job_claims.held_until <= $3 \
                 RETURNING holder",
                &[&job, &holder, &now, &until],
            )
            .await?;
        Ok(row.is_some())
    }
}

/// PostgreSQL-only behaviour: migrations, many connections and handles racing, the database
/// going away and coming back, TLS and the URL's secrecy. What every store promises is
/// checked by the shared contract in `super::suite`.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lanyard_test_support::{Postgres, TestPki};

    use super::*;
    use crate::store::suite::{lease, t, token};

    async fn fresh(prefix: &str) -> (String, PostgresStore) {
        let url = Postgres::shared().create_database(prefix);
        let store = PostgresStore::connect(&PostgresOptions::new(url.clone()))
            .await
            .expect("connect");
        (url, store)
    }

    #[tokio::test]
    async fn migrations_apply_on_an_empty_database_and_a_rerun_is_a_no_op() {
        let url = Postgres::shared().create_database("migrate");
        let store = PostgresStore::open(&PostgresOptions::new(url)).expect("open");
        assert_eq!(store.schema_version().await.expect("version"), 0);
        let first = store.migrate().await.expect("migrate");
        let all: Vec<u32> = (1..=u32::try_from(MIGRATIONS.len()).expect("few")).collect();
        assert_eq!(first, all);
        assert_eq!(
            store.schema_version().await.expect("version"),
            u32::try_from(MIGRATIONS.len()).expect("few")
        );
        assert_eq!(store.migrate().await.expect("re-run"), Vec::<u32>::new());
        // The schema works after both runs.
        store.insert_lease(&lease("ls_1")).await.expect("insert");
        assert!(store.get_lease("ls_1").await.expect("get").is_some());
    }

    /// Two replicas write their own audit chains into one database at once, with leases:
    /// every record is saved with its lease, each chain verifies against its head row, and
    /// an edited or deleted record is found with the chain it is in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_write_one_audit_chain_each_and_every_chain_verifies() {
        use crate::audit::{AuditLog, AuditOptions, AuditRecord, AuditSink, Decision, Event};
        let (url, store) = fresh("audit_chains").await;
        let store: Arc<dyn Store> = Arc::new(store);
        let mut logs = Vec::new();
        for replica in ["rp_a", "rp_b"] {
            let options = AuditOptions {
                replica: replica.to_owned(),
                ..AuditOptions::default()
            };
            logs.push(
                AuditLog::open_with(AuditSink::Store, store.clone(), options)
                    .await
                    .expect("open"),
            );
        }
        let mut waits = Vec::new();
        for i in 0..200 {
            let rec = AuditRecord::new(
                "2026-12-06T10:00:00Z".into(),
                Event::Issue,
                Decision::Allow,
                format!("rule {i}"),
            );
            let log = &logs[i % 2];
            waits.push(if i % 4 == 0 {
                futures_util::FutureExt::boxed(
                    log.append_with_lease(rec, lease(&format!("ls_{i}"))),
                )
            } else {
                futures_util::FutureExt::boxed(log.append(rec))
            });
        }
        let heads = futures_util::future::join_all(waits).await;
        assert!(heads.iter().all(Result::is_ok), "{heads:?}");
        for i in (0..200).step_by(4) {
            assert!(
                store
                    .get_lease(&format!("ls_{i}"))
                    .await
                    .expect("get")
                    .is_some(),
                "lease {i} was saved with its record"
            );
        }
        let chains = store.audit_chains().await.expect("chains");
        assert_eq!(chains.len(), 2);
        assert_eq!(
            chains
                .iter()
                .map(|c| c.replica.as_str())
                .collect::<Vec<_>>(),
            ["rp_a", "rp_b"]
        );
        let outcomes = crate::audit::stored::verify_store(store.clone())
            .await
            .expect("verify");
        for o in &outcomes {
            let report = o.result.as_ref().expect("intact");
            assert_eq!(report.records, 100);
            assert_eq!(report.head, o.chain.head);
        }
        // Each record names its chain.
        let line = &store
            .audit_lines(chains[1].epoch, 0, 1)
            .await
            .expect("lines")[0]
            .line;
        let parsed = crate::audit::parse_line(line).expect("parse");
        assert_eq!(parsed.record.replica.as_deref(), Some("rp_b"));
        assert_eq!(parsed.record.epoch, Some(chains[1].epoch));

        // Edit one record of the second chain, and delete the last one of the first.
        let db = url.rsplit('/').next().expect("db name");
        let (a, b) = (chains[0].epoch, chains[1].epoch);
        Postgres::shared().psql_db(
            db,
            &format!(
                "UPDATE audit_records SET line = replace(line, 'rule 3\"', 'rule 4\"') \
                 WHERE epoch = {b} AND seq = 2"
            ),
        );
        Postgres::shared().psql_db(
            db,
            &format!("DELETE FROM audit_records WHERE epoch = {a} AND seq = 100"),
        );
        let outcomes = crate::audit::stored::verify_store(store.clone())
            .await
            .expect("verify");
        let failures: Vec<String> = outcomes
            .iter()
            .map(|o| o.result.as_ref().expect_err("broken").to_string())
            .collect();
        assert!(
            failures[0].contains(&format!("chain {a} (replica rp_a)"))
                && failures[0].contains("100"),
            "{failures:?}"
        );
        assert!(
            failures[1].contains(&format!("chain {b} (replica rp_b)"))
                && failures[1].contains("seq 2"),
            "{failures:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stores_connecting_at_once_migrate_once() {
        let url = Postgres::shared().create_database("together");
        let opts = PostgresOptions::new(url.clone());
        let stores: Vec<PostgresStore> = (0..4)
            .map(|_| PostgresStore::open(&opts).expect("open"))
            .collect();
        let applied = futures_util::future::join_all(stores.iter().map(PostgresStore::migrate))
            .await
            .into_iter()
            .map(|r| r.expect("migrate").len())
            .collect::<Vec<_>>();
        assert_eq!(
            applied.iter().sum::<usize>(),
            MIGRATIONS.len(),
            "{applied:?}"
        );
        assert_eq!(applied.iter().filter(|n| **n > 0).count(), 1, "{applied:?}");
        let conn = stores[0].conn("test").await.expect("conn");
        let rows: i64 = conn
            .query_one("SELECT count(*) FROM lanyard_schema_migrations", &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(rows, i64::try_from(MIGRATIONS.len()).expect("few"));
        drop(url);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_is_claimed_by_one_holder_until_its_claim_lapses() {
        let (url, a) = fresh("jobs").await;
        let b = PostgresStore::open(&PostgresOptions::new(url)).expect("second handle");
        assert!(
            a.claim_job("sweep", "r-a", t(100), t(115))
                .await
                .expect("a")
        );
        assert!(
            !b.claim_job("sweep", "r-b", t(101), t(116))
                .await
                .expect("b")
        );
        // Another job is free; the holder renews its own claim.
        assert!(
            b.claim_job("prune", "r-b", t(101), t(116))
                .await
                .expect("b")
        );
        assert!(
            a.claim_job("sweep", "r-a", t(110), t(125))
                .await
                .expect("renew")
        );
        assert!(
            !b.claim_job("sweep", "r-b", t(124), t(139))
                .await
                .expect("held")
        );
        // a stops renewing: at its claim's end b takes over, and a is then refused.
        assert!(
            b.claim_job("sweep", "r-b", t(125), t(140))
                .await
                .expect("lapsed")
        );
        assert!(
            !a.claim_job("sweep", "r-a", t(126), t(141))
                .await
                .expect("taken")
        );
        // Racing holders on a free job: exactly one gets it.
        let claims = futures_util::future::join_all((0..20).map(|i| {
            let s = if i % 2 == 0 { &a } else { &b };
            s.claim_job(
                "rotate",
                if i % 2 == 0 { "r-a" } else { "r-b" },
                t(200),
                t(215),
            )
        }))
        .await;
        let holders: std::collections::BTreeSet<_> = claims
            .iter()
            .enumerate()
            .filter(|(_, c)| *c.as_ref().expect("claim"))
            .map(|(i, _)| i % 2)
            .collect();
        assert_eq!(holders.len(), 1, "{claims:?}");
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let (url, store) = fresh("newer").await;
        let conn = store.conn("test").await.expect("conn");
        conn.execute(
            "INSERT INTO lanyard_schema_migrations (version, applied_at) VALUES (99, 0)",
            &[],
        )
        .await
        .expect("insert");
        drop(conn);
        let err = PostgresStore::connect(&PostgresOptions::new(url))
            .await
            .expect_err("refused");
        let msg = err.to_string();
        assert!(msg.contains("schema version 99 is newer"), "{msg}");
        assert!(
            !msg.contains(lanyard_test_support::postgres::SUPERUSER_PASSWORD),
            "{msg}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_connections_reserve_a_token_exactly_once() {
        let (url, store) = fresh("race").await;
        store
            .insert_bootstrap_token(&token("bt_1", "h1", 10_000))
            .await
            .expect("insert");
        // Four handles (as four replicas), 8 connections each, 100 racers.
        let mut opts = PostgresOptions::new(url);
        opts.pool_size = 8;
        let handles: Vec<Arc<PostgresStore>> = (0..4)
            .map(|_| Arc::new(PostgresStore::open(&opts).expect("open")))
            .collect();
        let tasks = (0..100).map(|i| {
            let s = handles[i % handles.len()].clone();
            tokio::spawn(async move {
                s.reserve_bootstrap_token("h1", &format!("r{i}"), t(2_000), t(2_030))
                    .await
                    .expect("reserve")
            })
        });
        let outcomes = futures_util::future::join_all(tasks).await;
        let won = outcomes
            .iter()
            .filter(|o| matches!(o.as_ref().expect("task"), ReserveOutcome::Reserved(_)))
            .count();
        let held = outcomes
            .iter()
            .filter(|o| matches!(o.as_ref().expect("task"), ReserveOutcome::Held { .. }))
            .count();
        assert_eq!((won, held), (1, 99));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_database_is_unavailable_and_recovers_without_a_new_store() {
        let pg = Postgres::start();
        pg.psql("CREATE DATABASE app");
        let mut opts = PostgresOptions::new(pg.url("app"));
        opts.connect_timeout = Duration::from_secs(2);
        let store = PostgresStore::connect(&opts).await.expect("connect");
        store.insert_lease(&lease("ls_1")).await.expect("insert");
        store.check_writable().await.expect("writable");
        pg.stop();
        let err = store.get_lease("ls_1").await.expect_err("down");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let err = store.check_writable().await.expect_err("down");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let err = store.insert_lease(&lease("ls_2")).await.expect_err("down");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        pg.restart();
        store.check_writable().await.expect("writable again");
        assert!(store.get_lease("ls_1").await.expect("get").is_some());
        assert!(
            store.get_lease("ls_2").await.expect("get").is_none(),
            "nothing half-written"
        );
        store
            .insert_lease(&lease("ls_2"))
            .await
            .expect("insert after recovery");
    }

    #[tokio::test]
    async fn a_read_only_database_is_not_writable() {
        let (url, store) = fresh("readonly").await;
        let db = url.rsplit('/').next().expect("db").to_owned();
        Postgres::shared().psql(&format!(
            "ALTER DATABASE {db} SET default_transaction_read_only = on"
        ));
        // New connections take the setting; the pool's existing one does not.
        let fresh_store = PostgresStore::open(&PostgresOptions::new(url)).expect("open");
        let err = fresh_store.check_writable().await.expect_err("read-only");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        let err = fresh_store
            .insert_lease(&lease("ls_1"))
            .await
            .expect_err("read-only");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        drop(store);
    }

    #[test]
    fn the_password_never_shows() {
        let pw = "s3cret-pw";
        let opts = PostgresOptions::new(format!("postgres://app:{pw}@db.example:5432/lanyard"));
        let shown = format!("{opts:?} {}", opts.shown());
        assert!(!shown.contains(pw), "{shown}");
        assert!(shown.contains("db.example"), "{shown}");
        // Errors about the URL name it without the password.
        for url in [
            format!("postgres://app:{pw}@db.example/lanyard?sslmode=disable"),
            format!("postgres://app:{pw}@db.example/lanyard?sslmode=prefer"),
            format!("postgres://app:{pw}@db.example/lanyard"),
            format!("postgres://app:{pw}@db.example:notaport/lanyard"),
            format!("mysql://app:{pw}@db.example/lanyard"),
            format!("postgres://app:{pw}@127.0.0.1/"),
        ] {
            let err = PostgresStore::open(&PostgresOptions::new(url.clone()))
                .expect_err(&url)
                .to_string();
            assert!(!err.contains(pw), "{err}");
            assert!(err.contains("store.postgres_url"), "{err}");
        }
    }

    #[test]
    fn tls_mode_follows_sslmode_and_the_host() {
        let mode = |url: &str, ca: bool| {
            let mut o = PostgresOptions::new(url);
            if ca {
                o.ca_file = Some(PathBuf::from("ca.pem"));
            }
            parse_url(&o).map(|(_, m)| m).map_err(|e| e.to_string())
        };
        assert_eq!(
            mode("postgres://u@127.0.0.1/db", false),
            Ok(TlsMode::Disable)
        );
        assert_eq!(
            mode("postgres://u@localhost/db", false),
            Ok(TlsMode::Disable)
        );
        assert_eq!(mode("postgres://u@[::1]/db", false), Ok(TlsMode::Disable));
        assert_eq!(
            mode("postgres://u@127.0.0.1/db?sslmode=verify-full", true),
            Ok(TlsMode::VerifyFull)
        );
        assert_eq!(
            mode("postgres://u@db.example/db?sslmode=require", true),
            Ok(TlsMode::VerifyFull)
        );
        assert_eq!(
            mode("postgres://u@db.example/db", true),
            Ok(TlsMode::VerifyFull)
        );
        let no_ca = mode("postgres://u@db.example/db", false).expect_err("needs a CA");
        assert!(no_ca.contains("store.postgres_ca_file"), "{no_ca}");
        let plain = mode("postgres://u@db.example/db?sslmode=disable", true).expect_err("plain");
        assert!(plain.contains("plain text"), "{plain}");
        let prefer = mode("postgres://u@db.example/db?sslmode=prefer", true).expect_err("prefer");
        assert!(prefer.contains("not supported"), "{prefer}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_full_connects_to_a_server_with_a_certificate_from_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::generate(dir.path());
        let pg = Postgres::start_tls(&pki);
        pg.psql("CREATE DATABASE app");
        // The certificate names 127.0.0.1 and localhost: both verify.
        for host in ["127.0.0.1", "localhost"] {
            let url = pg.url("app").replace("127.0.0.1", host) + "?sslmode=verify-full";
            let mut opts = PostgresOptions::new(url);
            opts.ca_file = Some(pki.ca_path());
            let store = PostgresStore::connect(&opts).await.expect("TLS connect");
            store.check_writable().await.expect("writable");
            let conn = store.conn("test").await.expect("conn");
            let ssl: bool = conn
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .expect("pg_stat_ssl")
                .get(0);
            assert!(ssl, "the connection is encrypted");
        }
        // Another CA's certificate is refused.
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = TestPki::generate(other_dir.path());
        let mut opts = PostgresOptions::new(pg.url("app") + "?sslmode=verify-full");
        opts.ca_file = Some(other.ca_path());
        opts.connect_timeout = Duration::from_secs(2);
        let err = PostgresStore::connect(&opts).await.expect_err("untrusted");
        let msg = err.to_string();
        assert!(msg.contains("certificate") || msg.contains("TLS"), "{msg}");
    }
}
