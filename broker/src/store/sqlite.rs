//! The embedded SQLite store: one file, nothing to install.
//!
//! Every trait method runs its SQL on one dedicated thread that owns the connection, in the
//! order the calls were made; callers await the answer without holding an async worker.
//! Commits are `synchronous = FULL` ([`Synchronous`]): the write-ahead log is synced before a
//! commit returns, so a committed bootstrap redemption (single use) or session revocation
//! survives a power loss; its cost is measured in `docs/benchmarks.md`.
//! Issuances reach it through [`Store::record_group`]: the leases of one audit group and the
//! new chain head in one transaction, so a burst of issuances costs one WAL commit instead of
//! one each. The file is opened in WAL mode with a 5 s busy timeout, so several handles
//! (several broker replicas on one host sharing the file) can use it at once; every operation that
//! must be atomic across them is a single SQL statement or an `IMMEDIATE` transaction.
//!
//! Times are stored as Unix seconds, roles as a JSON list of strings, secrets as text. The
//! schema version lives in `PRAGMA user_version`; [`MIGRATIONS`] are applied in order on open.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use lanyard::Secret;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use zeroize::Zeroizing;

use super::{
    AdmissionRecord, BootstrapTokenRecord, ChainHead, ExemptionRecord, LeaseRecord,
    MAX_LOCAL_SECRET_BYTES, RedeemedToken, ReserveOutcome, SessionRevocation, SigningKeyRecord,
    Store, StoreError, VerdictRecord, from_unix, from_unix_millis, to_unix, to_unix_millis,
};

/// How long a statement waits for another connection's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Store::check_writable`] waits for the write lock: far longer than any of the
/// broker's own transactions holds it, far shorter than a readiness probe's timeout.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Schema migrations; entry `i` takes the schema from version `i` to version `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE bootstrap_tokens (
        token_id    TEXT PRIMARY KEY NOT NULL,
        token_hash  TEXT NOT NULL UNIQUE,
        roles       TEXT NOT NULL,
        image       TEXT,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        redeemed_at INTEGER
    );
    CREATE TABLE leases (
        lease_id       TEXT PRIMARY KEY NOT NULL,
        role           TEXT NOT NULL,
        backend        TEXT NOT NULL,
        subject        TEXT NOT NULL,
        issuer         TEXT NOT NULL,
        issued_at      INTEGER NOT NULL,
        expires_at     INTEGER NOT NULL,
        upstream_lease TEXT,
        fingerprint    TEXT NOT NULL,
        revoked_at     INTEGER
    );
    CREATE INDEX leases_expires_at ON leases (expires_at);
    CREATE TABLE signing_keys (
        kid        TEXT PRIMARY KEY NOT NULL,
        alg        TEXT NOT NULL,
        pkcs8      TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE audit_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        seq  INTEGER NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE TABLE local_secrets (
        name  TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );",
    // v2: when each signing key starts signing. A row without it (written before v2) signs
    // from `created_at`, as it did then.
    "ALTER TABLE signing_keys ADD COLUMN active_from INTEGER;
    UPDATE signing_keys SET active_from = created_at;",
    // v3: a bootstrap token is reserved by the request redeeming it, and its redemption is
    // committed (`redeemed_at`) only once that request has issued. The committing
    // reservation's columns stay: `reserved_at` is when the session it bought started. A
    // token redeemed before v3 has none; its session started at `redeemed_at`.
    "ALTER TABLE bootstrap_tokens ADD COLUMN reserved_by TEXT;
    ALTER TABLE bootstrap_tokens ADD COLUMN reserved_at INTEGER;
    ALTER TABLE bootstrap_tokens ADD COLUMN reserved_until INTEGER;",
    // v4: revoked sessions, kept until the session would have ended anyway.
    "CREATE TABLE session_revocations (
        session_id TEXT PRIMARY KEY NOT NULL,
        revoked_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX session_revocations_expires_at ON session_revocations (expires_at);",
    // v5: the image gate. A verdict per (manifest digest, ruleset version), the record (a
    // findings summary, never a secret) as JSON; operators' exemptions per digest.
    "CREATE TABLE image_verdicts (
        digest          TEXT NOT NULL,
        ruleset_version TEXT NOT NULL,
        repository      TEXT,
        scanned_at      INTEGER NOT NULL,
        record          TEXT NOT NULL,
        PRIMARY KEY (digest, ruleset_version)
    );
    CREATE TABLE image_exemptions (
        digest     TEXT PRIMARY KEY NOT NULL,
        reason     TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );",
    // v6: admission records — the images the validating webhook admitted a pod with, by the
    // pod's UID (`images` a JSON array of `repo@sha256:…`), pruned after `expires_at`;
    // `admitted_at_ms` in milliseconds (the sidecar's start-up figure is measured from it).
    "CREATE TABLE admission_records (
        pod_uid     TEXT PRIMARY KEY NOT NULL,
        namespace   TEXT NOT NULL,
        pod_name    TEXT NOT NULL,
        images      TEXT NOT NULL,
        pinned      INTEGER NOT NULL,
        admitted_at_ms INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    );
    CREATE INDEX admission_records_expires_at ON admission_records (expires_at);",
    // v7: the upstream lease length of a lease the broker renews (`issue::renewal`), so a
    // restarted broker resumes renewing it.
    "ALTER TABLE leases ADD COLUMN renew_step_secs INTEGER;",
    // v8 (REV, issue 16): the pod a lease was issued to, for revocation when it is deleted.
    "ALTER TABLE leases ADD COLUMN pod_uid TEXT;
    CREATE INDEX leases_pod_uid ON leases (pod_uid) WHERE pod_uid IS NOT NULL;",
];

/// A closure to run on the store thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The SQLite-backed [`Store`]. Cheap to clone: clones share one connection, owned by one
/// thread that stops when the last clone is dropped (and, on a file, a second connection
/// on a thread of its own for the reads that must not wait behind writes).
#[derive(Clone)]
pub struct SqliteStore {
    jobs: Arc<mpsc::Sender<Job>>,
    /// The reader thread (on a file only): the revoked-session set is reloaded through it, so
    /// a write stuck behind another process's lock cannot starve the reload. WAL lets it
    /// read while a writer holds the lock.
    reads: Option<Arc<mpsc::Sender<Job>>>,
    /// Where the database lives (`None` in memory), for error messages.
    path: Option<PathBuf>,
    /// Admission records waiting for their group's commit (see `put_admission_record`).
    pending_records: Arc<std::sync::Mutex<Vec<PendingRecord>>>,
    /// How commits wait for the disk (see [`Synchronous`]).
    synchronous: Synchronous,
    /// Held only to stop the checkpointer thread (on a file) when the last handle goes.
    _checkpointer: Option<Arc<mpsc::Sender<()>>>,
}

/// An admission record's row and who waits for its commit.
type PendingRecord = (
    AdmissionRow,
    tokio::sync::oneshot::Sender<Result<(), StoreError>>,
);

/// Writes `rows` in one transaction (one sync of the log for the whole group).
fn insert_admission_rows(conn: &mut Connection, rows: &[AdmissionRow]) -> Result<(), StoreError> {
    let tx = conn
        .transaction()
        .map_err(sql_error("put_admission_record"))?;
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO admission_records \
                 (pod_uid, namespace, pod_name, images, pinned, admitted_at_ms, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(sql_error("put_admission_record"))?;
        for (uid, ns, name, images, pinned, admitted_at, expires_at) in rows {
            stmt.execute(params![
                uid,
                ns,
                name,
                images,
                pinned,
                admitted_at,
                expires_at
            ])
            .map_err(sql_error("put_admission_record"))?;
        }
    }
    tx.commit().map_err(sql_error("put_admission_record"))
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// How a commit waits for the disk: SQLite's `PRAGMA synchronous`, for every transaction of
/// the connection (it is a connection setting, not a per-transaction one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `FULL`: a commit returns once the write-ahead log is synced, so it survives a power
    /// loss. What the broker uses: a committed bootstrap redemption or session revocation
    /// must never come back undone.
    #[default]
    Full,
    /// `NORMAL`: the log is synced only at checkpoints, so a power loss (not a crash of the
    /// process) may roll back the last commits: a redeemed bootstrap token would be
    /// redeemable again. For measuring what `FULL` costs (`docs/benchmarks.md`), not for a
    /// broker.
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

impl SqliteStore {
    /// Opens (creating if missing, with mode 0600 and its parent directory) the database at
    /// `path` and brings its schema up to date; commits are [`Synchronous::Full`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Synchronous::Full)
    }

    /// [`SqliteStore::open`] with commits as durable as `synchronous` says.
    pub fn open_with(path: &Path, synchronous: Synchronous) -> Result<Self, StoreError> {
        let shown = path.display();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dir_private(parent).map_err(|e| {
                StoreError::Backend(format!(
                    "cannot create the directory {} for the database {shown}: {e}; create it \
                     or point the store at a writable path",
                    parent.display()
                ))
            })?;
        }
        create_file_private(path).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create the database file {shown}: {e}; check that the broker user may \
                 write there"
            ))
        })?;
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("cannot open the database {shown}: {e}")))?;
        Self::init(conn, Some(path.to_path_buf()), synchronous)
    }

    /// A private in-memory database, empty and gone when dropped. For tests and dev mode.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()
            .map_err(|e| StoreError::Backend(format!("cannot open an in-memory database: {e}")))?;
        Self::init(conn, None, Synchronous::Full)
    }

    /// The database file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        self.run("schema_version", |conn| {
            user_version(conn).map_err(sql_error("schema_version"))
        })
        .await
    }

    /// Saves an audit group's leases and chain head in one transaction, committed as
    /// `synchronous` says; the connection is back at its own setting before anything else
    /// runs on it.
    async fn save_group(
        &self,
        leases: &[LeaseRecord],
        head: &ChainHead,
        synchronous: Synchronous,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        for l in leases {
            check_lease_times(l)?;
        }
        let (seq, hash) = head_row(head)?;
        let leases = leases.to_vec();
        let own = self.synchronous;
        self.run("record_group", move |conn| {
            if synchronous != own {
                set_synchronous(conn, synchronous)?;
            }
            let saved = (|| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(sql_error("record_group: begin"))?;
                let results = leases.iter().map(|l| insert_lease_row(&tx, l)).collect();
                write_head(&tx, seq, &hash)?;
                tx.commit().map_err(sql_error("record_group: commit"))?;
                Ok(results)
            })();
            if synchronous != own {
                set_synchronous(conn, own)?;
            }
            saved
        })
        .await
    }

    fn init(
        mut conn: Connection,
        path: Option<PathBuf>,
        synchronous: Synchronous,
    ) -> Result<Self, StoreError> {
        let whence = match &path {
            Some(p) => p.display().to_string(),
            None => ":memory:".to_owned(),
        };
        let fail = |what: &str, e: rusqlite::Error| {
            StoreError::Backend(format!("database {whence}: {what}: {e}"))
        };
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| fail("setting busy_timeout", e))?;
        // Only a database being created takes it (before WAL mode writes its first page); one
        // that exists keeps its own.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(|e| fail("setting page_size", e))?;
        // In memory the journal mode stays `memory`; on a file this answers `wal`.
        // Switching to WAL takes an exclusive lock, and SQLite answers SQLITE_BUSY at once
        // (without calling the busy handler) when another connection is doing the same, so
        // retry for up to BUSY_TIMEOUT.
        let started = std::time::Instant::now();
        loop {
            match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
                Ok(_mode) => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(fail("enabling WAL journal mode", e)),
            }
        }
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(|e| fail("enabling foreign keys", e))?;
        conn.pragma_update(None, "synchronous", synchronous.pragma())
            .map_err(|e| fail("setting synchronous", e))?;
        migrate(&mut conn).map_err(|e| match e {
            StoreError::Backend(m) => StoreError::Backend(format!("database {whence}: {m}")),
            other => other,
        })?;
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| fail("reading page_size", e))?;
        if path.is_some() && page_size != PAGE_SIZE {
            tracing::info!(
                database = %whence,
                page_size,
                created_with = PAGE_SIZE,
                "the database's pages are not the size the broker creates them with; larger \
                 ones make each issuance write more to the store's log (docs/OPERATIONS.md, \
                 \"SQLite page size\", says how to convert it)"
            );
        }
        let reader = match &path {
            Some(p) => {
                let reader = Connection::open(p)
                    .and_then(|c| c.busy_timeout(BUSY_TIMEOUT).map(|()| c))
                    .map_err(|e| fail("opening the reader connection", e))?;
                Some(Arc::new(spawn_thread(
                    "lanyard-sqlite-read",
                    reader,
                    &whence,
                )?))
            }
            None => None,
        };
        let checkpointer = match &path {
            Some(p) => {
                // The writer never checkpoints below this many pages of log: the
                // checkpointer thread does, so a commit does not wait for one (the far tail of
                // issuance, `docs/benchmarks.md`). The limit only bounds the log should that
                // thread fall behind.
                conn.pragma_update(None, "wal_autocheckpoint", CHECKPOINT_FALLBACK_PAGES)
                    .map_err(|e| fail("setting wal_autocheckpoint", e))?;
                let ckpt = Connection::open(p)
                    .and_then(|c| c.busy_timeout(BUSY_TIMEOUT).map(|()| c))
                    .map_err(|e| fail("opening the checkpointer connection", e))?;
                Some(Arc::new(spawn_checkpointer(ckpt, &whence)?))
            }
            None => None,
        };
        Ok(Self {
            jobs: Arc::new(spawn_thread("lanyard-sqlite", conn, &whence)?),
            reads: reader,
            path,
            pending_records: Arc::default(),
            synchronous,
            _checkpointer: checkpointer,
        })
    }

    /// Runs `f` on the store thread and waits (asynchronously) for its answer.
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = done.send(f(conn));
        });
        self.jobs.send(job).map_err(|_| stopped(op))?;
        answer.await.map_err(|_| stopped(op))?
    }

    /// Like [`Self::run`] for a read-only `f`, on the reader thread when there is one.
    async fn run_read<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let Some(reads) = &self.reads else {
            return self.run(op, f).await;
        };
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = done.send(f(conn));
        });
        reads.send(job).map_err(|_| stopped(op))?;
        answer.await.map_err(|_| stopped(op))?
    }
}

/// Starts a thread `name` owning `conn`, running the jobs sent to the returned sender.
fn spawn_thread(
    name: &str,
    conn: Connection,
    whence: &str,
) -> Result<mpsc::Sender<Job>, StoreError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || store_thread(conn, &rx))
        .map_err(|e| {
            StoreError::Backend(format!("database {whence}: cannot start its thread: {e}"))
        })?;
    Ok(tx)
}

/// How often the checkpointer thread copies the write-ahead log into the database. Each
/// checkpoint syncs the log and the database file, and those syncs queue with the audit
/// file's on the same disk, so a checkpoint that has more to copy stalls the audit longer: at
/// half of peak issuance for 2 minutes, every second gave an issuance p99 of 27.7–28.6 ms
/// (195–200 audit writes over 5 ms), every 100 ms 5.91–6.05 ms (52–87), alternating runs
/// (`docs/benchmarks.md`, issue 18; 20 s runs had suggested the opposite).
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The page size of a database the store creates (SQLite's default is 4,096; a database keeps
/// the size it was created with). A commit copies every page it changed, whole, into the
/// write-ahead log, and each checkpoint syncs that log: a group of three issuances (lease
/// rows, their index entries, the chain head) writes 27.8 KB of log with 4 KiB pages and
/// 11.6 KB with 1 KiB pages (`tests/bench/store-wal-bytes.py`), and those writes queue with
/// the audit file's syncs on the same disk. At half of peak issuance for 2 minutes,
/// alternating runs: 4 KiB pages gave an issuance p99 of 6.84–10.76 ms (93–257 audit writes
/// over 5 ms), 1 KiB pages 4.21–4.59 ms (1–3) (`docs/benchmarks.md`, issue 18). Rows are a few hundred bytes, so a page still holds
/// several; a larger value (an image verdict's record) spills into overflow pages.
pub const PAGE_SIZE: i64 = 1024;

/// Pages of write-ahead log past which the writer checkpoints itself (the checkpointer fell
/// behind): 16 MiB of 1 KiB pages (64 MiB in a database of 4 KiB pages). SQLite's own
/// default is 1,000.
const CHECKPOINT_FALLBACK_PAGES: i64 = 16_384;

/// Starts the checkpointer: every [`CHECKPOINT_INTERVAL`] a passive checkpoint on a
/// connection of its own (it never waits for the writer, and the writer never waits for
/// it), which syncs the log and the database. It ends when the store's last handle drops
/// the returned sender.
fn spawn_checkpointer(conn: Connection, whence: &str) -> Result<mpsc::Sender<()>, StoreError> {
    let (tx, rx) = mpsc::channel::<()>();
    let db = whence.to_owned();
    std::thread::Builder::new()
        .name("lanyard-sqlite-ckpt".into())
        .spawn(move || {
            let mut failing = false;
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(CHECKPOINT_INTERVAL)
            {
                let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    r.get::<_, i64>(0)
                });
                match (done, failing) {
                    (Err(e), false) => {
                        tracing::warn!(database = %db, error = %e, "checkpoint failed; the writer checkpoints itself past its limit meanwhile");
                        failing = true;
                    }
                    (Ok(_), true) => failing = false,
                    _ => {}
                }
            }
        })
        .map_err(|e| {
            StoreError::Backend(format!(
                "database {whence}: cannot start its checkpointer thread: {e}"
            ))
        })?;
    Ok(tx)
}

/// Sets the connection's `PRAGMA synchronous` (it applies to the commits after it).
fn set_synchronous(conn: &Connection, to: Synchronous) -> Result<(), StoreError> {
    conn.pragma_update(None, "synchronous", to.pragma())
        .map_err(sql_error("setting synchronous"))
}

fn stopped(op: &str) -> StoreError {
    StoreError::Backend(format!(
        "{op}: the store thread stopped (a bug: a store operation panicked)"
    ))
}

/// The store thread: runs jobs in order until every handle is dropped.
fn store_thread(mut conn: Connection, rx: &mpsc::Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        // A panicking job drops its answer channel (its caller gets an error); the thread
        // and the connection carry on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn)));
    }
}

fn head_row(head: &ChainHead) -> Result<(i64, String), StoreError> {
    let seq = i64::try_from(head.seq).map_err(|_| {
        StoreError::Backend(format!(
            "set_audit_head: sequence {} does not fit in 63 bits",
            head.seq
        ))
    })?;
    Ok((seq, head.hash.clone()))
}

fn write_head(conn: &Connection, seq: i64, hash: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) \
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )
    .and_then(|mut st| st.execute(params![seq, hash]))
    .map_err(sql_error("set_audit_head"))?;
    Ok(())
}

fn check_lease_times(rec: &LeaseRecord) -> Result<(), StoreError> {
    to_unix(rec.issued_at)?;
    to_unix(rec.expires_at)?;
    rec.revoked_at.map(to_unix).transpose()?;
    Ok(())
}

fn insert_lease_row(conn: &Connection, rec: &LeaseRecord) -> Result<(), StoreError> {
    let step = rec
        .renew_step_secs
        .map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    let issued_at = to_unix(rec.issued_at)?;
    let expires_at = to_unix(rec.expires_at)?;
    let revoked_at = rec.revoked_at.map(to_unix).transpose()?;
    conn.prepare_cached(
        "INSERT INTO leases (lease_id, role, backend, subject, issuer, issued_at, \
         expires_at, upstream_lease, fingerprint, revoked_at, renew_step_secs, pod_uid) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )
    .and_then(|mut st| {
        st.execute(params![
            rec.lease_id,
            rec.role,
            rec.backend,
            rec.subject,
            rec.issuer,
            issued_at,
            expires_at,
            rec.upstream_lease,
            rec.fingerprint,
            revoked_at,
            step,
            rec.pod_uid,
        ])
    })
    .map_err(insert_error(
        "insert_lease",
        format!("lease id {}", rec.lease_id),
    ))?;
    Ok(())
}

/// Applies the migrations the database has not seen yet, in one `IMMEDIATE` transaction so
/// that handles opening the same file at once apply each exactly once.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error("starting the migration transaction"))?;
    let current = user_version(&tx).map_err(sql_error("reading the schema version"))?;
    let known = MIGRATIONS.len();
    let current_idx = usize::try_from(current).unwrap_or(usize::MAX);
    if current_idx > known {
        return Err(StoreError::Backend(format!(
            "schema version {current} is newer than this broker understands ({known}); run a \
             broker at least as new as the one that last wrote this database"
        )));
    }
    for (idx, sql) in MIGRATIONS.iter().enumerate().skip(current_idx) {
        let to = idx + 1;
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Backend(format!("migrating to schema v{to}: {e}")))?;
        tx.pragma_update(None, "user_version", to)
            .map_err(|e| StoreError::Backend(format!("recording schema v{to}: {e}")))?;
        tracing::info!(version = to, "store schema migrated");
    }
    tx.commit()
        .map_err(sql_error("committing the migration transaction"))
}

/// Whether `path` can take a write transaction within [`PROBE_TIMEOUT`]: opens it (never
/// creating it), takes the write lock and rolls back.
fn probe_writable(path: &Path) -> Result<(), StoreError> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(sql_error("check_writable: open"))?;
    conn.busy_timeout(PROBE_TIMEOUT)
        .map_err(sql_error("check_writable"))?;
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(sql_error("check_writable"))?;
    let read = conn
        .query_row("SELECT count(*) FROM audit_head", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(sql_error("check_writable"));
    conn.execute_batch("ROLLBACK")
        .map_err(sql_error("check_writable"))?;
    read.map(|_| ())
}

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

#[cfg(unix)]
fn create_dir_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_dir_private(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Creates the file with mode 0600 if it does not exist; leaves an existing file alone.
fn create_file_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            warn_if_shared(path);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "the store file is readable by other users; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

/// Maps a SQLite error to a [`StoreError`] naming the operation. SQLite's messages name
/// tables and columns, never bound values, so no secret reaches the message.
fn sql_error(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Corrupt(format!("{op}: {e}")),
        rusqlite::Error::SqliteFailure(f, _) if is_transient(f.code) => {
            StoreError::Unavailable(format!("{op}: {e}"))
        }
        other => StoreError::Backend(format!("{op}: {other}")),
    }
}

/// SQLite failures a retry may outlast: a lock held by another process past the busy
/// timeout, a file that cannot be opened, read or written for now.
fn is_transient(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::DiskFull
    )
}

/// Like [`sql_error`], but a uniqueness violation becomes [`StoreError::Duplicate`] of `what`.
fn insert_error(op: &'static str, what: String) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == ErrorCode::ConstraintViolation
                && matches!(
                    f.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                        | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                ) =>
        {
            StoreError::Duplicate(what.clone())
        }
        _ => sql_error(op)(e),
    }
}

fn opt_from_unix(
    v: Option<i64>,
    what: &dyn fmt::Display,
) -> Result<Option<SystemTime>, StoreError> {
    v.map(|v| from_unix(v, what)).transpose()
}

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

const TOKEN_COLUMNS: &str = "token_id, token_hash, roles, image, created_at, expires_at, \
     redeemed_at, reserved_by, reserved_at, reserved_until";

impl TokenRow {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            token_id: r.get(0)?,
            token_hash: r.get(1)?,
            roles: r.get(2)?,
            image: r.get(3)?,
            created_at: r.get(4)?,
            expires_at: r.get(5)?,
            redeemed_at: r.get(6)?,
            reserved_by: r.get(7)?,
            reserved_at: r.get(8)?,
            reserved_until: r.get(9)?,
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

    /// Why a reservation at `now` did not take this row: redeemed, expired or held.
    fn refusal(self, now: i64) -> Result<ReserveOutcome, StoreError> {
        let what = self.what();
        if let Some(redeemed_at) = self.redeemed_at {
            let session_started = self.reserved_at.unwrap_or(redeemed_at);
            return Ok(ReserveOutcome::Redeemed(RedeemedToken {
                redeemed_at: from_unix(redeemed_at, &what)?,
                session_started: from_unix(session_started, &what)?,
                token: self.decode()?,
            }));
        }
        if self.expires_at <= now {
            return Ok(ReserveOutcome::Expired(self.decode()?));
        }
        match (&self.reserved_by, self.reserved_until) {
            (Some(_), Some(until)) if until > now => Ok(ReserveOutcome::Held {
                until: from_unix(until, &what)?,
                token: self.decode()?,
            }),
            _ => Err(StoreError::Corrupt(format!(
                "{what}: neither free nor held, yet it could not be reserved"
            ))),
        }
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn insert_bootstrap_token(&self, rec: &BootstrapTokenRecord) -> Result<(), StoreError> {
        let roles = serde_json::to_string(&rec.roles)
            .map_err(|e| StoreError::Backend(format!("encoding roles: {e}")))?;
        let created_at = to_unix(rec.created_at)?;
        let expires_at = to_unix(rec.expires_at)?;
        let rec = rec.clone();
        self.run("insert_bootstrap_token", move |conn| {
            conn.execute(
                "INSERT INTO bootstrap_tokens \
                 (token_id, token_hash, roles, image, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    rec.token_id,
                    rec.token_hash,
                    roles,
                    rec.image,
                    created_at,
                    expires_at
                ],
            )
            .map_err(insert_error(
                "insert_bootstrap_token",
                format!("bootstrap token (id {} or its hash)", rec.token_id),
            ))?;
            Ok(())
        })
        .await
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
        let hash = token_hash.to_owned();
        let reservation = reservation.to_owned();
        self.run("reserve_bootstrap_token", move |conn| {
            // One `IMMEDIATE` transaction: the write lock is taken before the row is read, so
            // of all the connections racing on it exactly one finds it free and takes it, and
            // the others see why not as it then stands. An error rolls the reservation back.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_error("reserve_bootstrap_token: begin"))?;
            let won = tx
                .query_row(
                    &format!(
                        "UPDATE bootstrap_tokens \
                         SET reserved_by = ?1, reserved_at = ?2, reserved_until = ?3 \
                         WHERE token_hash = ?4 AND redeemed_at IS NULL AND expires_at > ?2 \
                         AND (reserved_by IS NULL OR reserved_until <= ?2) \
                         RETURNING {TOKEN_COLUMNS}"
                    ),
                    params![reservation, now, until, hash],
                    TokenRow::from_row,
                )
                .optional()
                .map_err(sql_error("reserve_bootstrap_token"))?;
            let outcome = match won {
                Some(row) => ReserveOutcome::Reserved(row.decode()?),
                None => {
                    let row = tx
                        .query_row(
                            &format!(
                                "SELECT {TOKEN_COLUMNS} FROM bootstrap_tokens WHERE token_hash = ?1"
                            ),
                            params![hash],
                            TokenRow::from_row,
                        )
                        .optional()
                        .map_err(sql_error("reserve_bootstrap_token (classifying)"))?;
                    match row {
                        None => ReserveOutcome::Unknown,
                        Some(row) => row.refusal(now)?,
                    }
                }
            };
            tx.commit()
                .map_err(sql_error("reserve_bootstrap_token: commit"))?;
            Ok(outcome)
        })
        .await
    }

    async fn commit_bootstrap_token(
        &self,
        token_hash: &str,
        reservation: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let now = to_unix(now)?;
        let hash = token_hash.to_owned();
        let reservation = reservation.to_owned();
        self.run("commit_bootstrap_token", move |conn| {
            // One statement: only the holding reservation's commit matches the row, once.
            let n = conn
                .execute(
                    "UPDATE bootstrap_tokens SET redeemed_at = ?1 \
                     WHERE token_hash = ?2 AND reserved_by = ?3 AND redeemed_at IS NULL",
                    params![now, hash, reservation],
                )
                .map_err(sql_error("commit_bootstrap_token"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn release_bootstrap_token(
        &self,
        token_hash: &str,
        reservation: &str,
    ) -> Result<bool, StoreError> {
        let hash = token_hash.to_owned();
        let reservation = reservation.to_owned();
        self.run("release_bootstrap_token", move |conn| {
            let n = conn
                .execute(
                    "UPDATE bootstrap_tokens \
                     SET reserved_by = NULL, reserved_at = NULL, reserved_until = NULL \
                     WHERE token_hash = ?1 AND reserved_by = ?2 AND redeemed_at IS NULL",
                    params![hash, reservation],
                )
                .map_err(sql_error("release_bootstrap_token"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn revoke_bootstrap_token(&self, token_id: &str) -> Result<bool, StoreError> {
        let token_id = token_id.to_owned();
        self.run("revoke_bootstrap_token", move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM bootstrap_tokens WHERE token_id = ?1 AND redeemed_at IS NULL",
                    params![token_id],
                )
                .map_err(sql_error("revoke_bootstrap_token"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn redeemed_bootstrap_token(
        &self,
        token_id: &str,
    ) -> Result<Option<RedeemedToken>, StoreError> {
        let token_id = token_id.to_owned();
        self.run("redeemed_bootstrap_token", move |conn| {
            let row = conn
                .query_row(
                    &format!(
                        "SELECT {TOKEN_COLUMNS} FROM bootstrap_tokens \
                         WHERE token_id = ?1 AND redeemed_at IS NOT NULL"
                    ),
                    params![token_id],
                    TokenRow::from_row,
                )
                .optional()
                .map_err(sql_error("redeemed_bootstrap_token"))?;
            let Some(row) = row else {
                return Ok(None);
            };
            let what = row.what();
            let redeemed_at = row.redeemed_at.unwrap_or_default();
            let session_started = row.reserved_at.unwrap_or(redeemed_at);
            Ok(Some(RedeemedToken {
                redeemed_at: from_unix(redeemed_at, &what)?,
                session_started: from_unix(session_started, &what)?,
                token: row.decode()?,
            }))
        })
        .await
    }

    async fn revoke_session(&self, rec: &SessionRevocation) -> Result<bool, StoreError> {
        let revoked_at = to_unix(rec.revoked_at)?;
        let expires_at = to_unix(rec.expires_at)?;
        let session_id = rec.session_id.clone();
        self.run("revoke_session", move |conn| {
            let n = conn
                .execute(
                    "INSERT OR IGNORE INTO session_revocations (session_id, revoked_at, expires_at) \
                     VALUES (?1, ?2, ?3)",
                    params![session_id, revoked_at, expires_at],
                )
                .map_err(sql_error("revoke_session"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn session_revocations(
        &self,
        now: SystemTime,
    ) -> Result<Vec<SessionRevocation>, StoreError> {
        let now = to_unix(now)?;
        self.run_read("session_revocations", move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT session_id, revoked_at, expires_at FROM session_revocations \
                     WHERE expires_at > ?1",
                )
                .map_err(sql_error("session_revocations"))?;
            let rows = stmt
                .query_map(params![now], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(sql_error("session_revocations"))?;
            let mut out = Vec::new();
            for row in rows {
                let (session_id, revoked_at, expires_at) =
                    row.map_err(sql_error("session_revocations"))?;
                let what = format!("session revocation {session_id}");
                out.push(SessionRevocation {
                    revoked_at: from_unix(revoked_at, &what)?,
                    expires_at: from_unix(expires_at, &what)?,
                    session_id,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn prune_session_revocations(&self, now: SystemTime) -> Result<usize, StoreError> {
        let now = to_unix(now)?;
        self.run("prune_session_revocations", move |conn| {
            conn.execute(
                "DELETE FROM session_revocations WHERE expires_at <= ?1",
                params![now],
            )
            .map_err(sql_error("prune_session_revocations"))
        })
        .await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        // A connection of its own, not the store thread's: the answer does not wait behind
        // queued operations, and a lock held elsewhere shows within PROBE_TIMEOUT.
        tokio::task::spawn_blocking(move || probe_writable(&path))
            .await
            .map_err(|e| StoreError::Backend(format!("check_writable: the probe failed: {e}")))?
    }

    async fn insert_lease(&self, rec: &LeaseRecord) -> Result<(), StoreError> {
        check_lease_times(rec)?;
        let rec = rec.clone();
        self.run("insert_lease", move |conn| insert_lease_row(conn, &rec))
            .await
    }

    async fn get_lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>, StoreError> {
        let lease_id = lease_id.to_owned();
        self.run("get_lease", move |conn| {
            let row = conn
                .query_row(
                    "SELECT lease_id, role, backend, subject, issuer, issued_at, expires_at, \
                     upstream_lease, fingerprint, revoked_at, renew_step_secs, pod_uid \
                     FROM leases WHERE lease_id = ?1",
                    params![lease_id],
                    |r| {
                        Ok((
                            (
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, String>(3)?,
                                r.get::<_, String>(4)?,
                            ),
                            (
                                r.get::<_, i64>(5)?,
                                r.get::<_, i64>(6)?,
                                r.get::<_, Option<String>>(7)?,
                                r.get::<_, String>(8)?,
                                r.get::<_, Option<i64>>(9)?,
                                r.get::<_, Option<i64>>(10)?,
                            ),
                            r.get::<_, Option<String>>(11)?,
                        ))
                    },
                )
                .optional()
                .map_err(sql_error("get_lease"))?;
            let Some((
                (lease_id, role, backend, subject, issuer),
                (issued_at, expires_at, upstream_lease, fingerprint, revoked_at, step),
                pod_uid,
            )) = row
            else {
                return Ok(None);
            };
            let what = format!("lease {lease_id}");
            Ok(Some(LeaseRecord {
                issued_at: from_unix(issued_at, &what)?,
                expires_at: from_unix(expires_at, &what)?,
                revoked_at: opt_from_unix(revoked_at, &what)?,
                lease_id,
                role,
                backend,
                subject,
                issuer,
                upstream_lease,
                fingerprint,
                renew_step_secs: step.map(|s| u64::try_from(s).unwrap_or(0)),
                pod_uid,
            }))
        })
        .await
    }

    async fn running_leases_of_pod(
        &self,
        pod_uid: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError> {
        let pod_uid = pod_uid.to_owned();
        let now = to_unix(now)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<String> = self
            .run("running_leases_of_pod", move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT lease_id FROM leases WHERE pod_uid = ?1 AND revoked_at IS NULL \
                         AND expires_at > ?2 ORDER BY lease_id LIMIT ?3",
                    )
                    .map_err(sql_error("running_leases_of_pod"))?;
                let rows = stmt
                    .query_map(params![pod_uid, now, limit], |r| r.get::<_, String>(0))
                    .map_err(sql_error("running_leases_of_pod"))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql_error("running_leases_of_pod"))
            })
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(l) = self.get_lease(&id).await? {
                out.push(l);
            }
        }
        Ok(out)
    }

    async fn pods_with_running_leases(
        &self,
        after: Option<&str>,
        issued_before: SystemTime,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let after = after.unwrap_or("").to_owned();
        let issued_before = to_unix(issued_before)?;
        let now = to_unix(now)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run("pods_with_running_leases", move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT DISTINCT pod_uid FROM leases WHERE pod_uid > ?1 \
                     AND revoked_at IS NULL AND expires_at > ?2 AND issued_at < ?3 \
                     ORDER BY pod_uid LIMIT ?4",
                )
                .map_err(sql_error("pods_with_running_leases"))?;
            let rows = stmt
                .query_map(params![after, now, issued_before, limit], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(sql_error("pods_with_running_leases"))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql_error("pods_with_running_leases"))
        })
        .await
    }

    async fn revoked_running_leases(
        &self,
        backend: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<(String, SystemTime)>, StoreError> {
        let backend = backend.to_owned();
        let now = to_unix(now)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, i64)> = self
            .run("revoked_running_leases", move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT lease_id, expires_at FROM leases WHERE expires_at > ?2 \
                         AND backend = ?1 AND revoked_at IS NOT NULL \
                         ORDER BY expires_at, lease_id LIMIT ?3",
                    )
                    .map_err(sql_error("revoked_running_leases"))?;
                let rows = stmt
                    .query_map(params![backend, now, limit], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })
                    .map_err(sql_error("revoked_running_leases"))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql_error("revoked_running_leases"))
            })
            .await?;
        rows.into_iter()
            .map(|(id, exp)| {
                let at = from_unix(exp, &format_args!("lease {id} expires_at"))?;
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<String> = self
            .run("renewable_leases", move |conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT lease_id FROM leases WHERE renew_step_secs IS NOT NULL \
                         AND revoked_at IS NULL AND upstream_lease IS NOT NULL \
                         AND expires_at > ?1 ORDER BY expires_at, lease_id LIMIT ?2",
                    )
                    .map_err(sql_error("renewable_leases"))?;
                let rows = stmt
                    .query_map(params![now, limit], |r| r.get::<_, String>(0))
                    .map_err(sql_error("renewable_leases"))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql_error("renewable_leases"))
            })
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(l) = self.get_lease(&id).await? {
                out.push(l);
            }
        }
        Ok(out)
    }

    async fn mark_lease_revoked(
        &self,
        lease_id: &str,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let now = to_unix(now)?;
        let lease_id = lease_id.to_owned();
        self.run("mark_lease_revoked", move |conn| {
            let n = conn
                .execute(
                    "UPDATE leases SET revoked_at = ?1 \
                     WHERE lease_id = ?2 AND revoked_at IS NULL",
                    params![now, lease_id],
                )
                .map_err(sql_error("mark_lease_revoked"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn expired_leases(
        &self,
        backend: &str,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<LeaseRecord>, StoreError> {
        let backend = backend.to_owned();
        let now = to_unix(now)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<String> = self
            .run("expired_leases", move |conn| {
                let mut stmt = conn
                    .prepare(
                        "SELECT lease_id FROM leases WHERE backend = ?1 AND expires_at <= ?2 \
                         AND revoked_at IS NULL AND upstream_lease IS NOT NULL \
                         ORDER BY expires_at LIMIT ?3",
                    )
                    .map_err(sql_error("expired_leases"))?;
                let rows = stmt
                    .query_map(params![backend, now, limit], |r| r.get::<_, String>(0))
                    .map_err(sql_error("expired_leases"))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql_error("expired_leases"))
            })
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(l) = self.get_lease(&id).await? {
                out.push(l);
            }
        }
        Ok(out)
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.run("signing_keys", |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT kid, alg, pkcs8, created_at, active_from FROM signing_keys \
                     ORDER BY created_at, rowid",
                )
                .map_err(sql_error("signing_keys"))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        Zeroizing::new(r.get::<_, String>(2)?),
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })
                .map_err(sql_error("signing_keys"))?;
            let mut keys = Vec::new();
            for row in rows {
                let (kid, alg, pkcs8, created_at, active_from) =
                    row.map_err(sql_error("signing_keys"))?;
                let what = format!("signing key {kid}");
                keys.push(SigningKeyRecord {
                    created_at: from_unix(created_at, &what)?,
                    active_from: from_unix(active_from.unwrap_or(created_at), &what)?,
                    pkcs8: Secret::new(pkcs8.as_str()),
                    kid,
                    alg,
                });
            }
            Ok(keys)
        })
        .await
    }

    async fn insert_signing_key(&self, rec: &SigningKeyRecord) -> Result<(), StoreError> {
        let created_at = to_unix(rec.created_at)?;
        let active_from = to_unix(rec.active_from)?;
        let rec = rec.clone();
        self.run("insert_signing_key", move |conn| {
            conn.execute(
                "INSERT INTO signing_keys (kid, alg, pkcs8, created_at, active_from) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    rec.kid,
                    rec.alg,
                    rec.pkcs8.expose(),
                    created_at,
                    active_from
                ],
            )
            .map_err(insert_error(
                "insert_signing_key",
                format!("signing key id {}", rec.kid),
            ))?;
            Ok(())
        })
        .await
    }

    async fn delete_signing_key(&self, kid: &str) -> Result<(), StoreError> {
        let kid = kid.to_owned();
        self.run("delete_signing_key", move |conn| {
            conn.execute("DELETE FROM signing_keys WHERE kid = ?1", params![kid])
                .map_err(sql_error("delete_signing_key"))?;
            Ok(())
        })
        .await
    }

    async fn reseal_signing_key(
        &self,
        kid: &str,
        expected: &Secret,
        new: &Secret,
    ) -> Result<bool, StoreError> {
        let (kid, expected, new) = (kid.to_owned(), expected.clone(), new.clone());
        self.run("reseal_signing_key", move |conn| {
            let n = conn
                .execute(
                    "UPDATE signing_keys SET pkcs8 = ?3 WHERE kid = ?1 AND pkcs8 = ?2",
                    params![kid, expected.expose(), new.expose()],
                )
                .map_err(sql_error("reseal_signing_key"))?;
            Ok(n == 1)
        })
        .await
    }

    async fn audit_head(&self) -> Result<Option<ChainHead>, StoreError> {
        self.run("audit_head", |conn| {
            let row = conn
                .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                })
                .optional()
                .map_err(sql_error("audit_head"))?;
            row.map(|(seq, hash)| {
                let seq = u64::try_from(seq).map_err(|_| {
                    StoreError::Corrupt(format!("audit chain head: negative sequence {seq}"))
                })?;
                Ok(ChainHead { seq, hash })
            })
            .transpose()
        })
        .await
    }

    async fn set_audit_head(&self, head: &ChainHead) -> Result<(), StoreError> {
        let (seq, hash) = head_row(head)?;
        self.run("set_audit_head", move |conn| write_head(conn, seq, &hash))
            .await
    }

    async fn record_group(
        &self,
        leases: &[LeaseRecord],
        head: &ChainHead,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        self.save_group(leases, head, self.synchronous).await
    }

    async fn record_replayable_group(
        &self,
        leases: &[LeaseRecord],
        head: &ChainHead,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        // This transaction alone commits without syncing the log: the audit file holds its
        // records durably and replays their leases at start.
        self.save_group(leases, head, Synchronous::Normal).await
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
        let name = name.to_owned();
        self.run("local_secret", move |conn| {
            // Whoever inserts first wins; everyone then reads the same value back.
            conn.execute(
                "INSERT OR IGNORE INTO local_secrets (name, value) VALUES (?1, ?2)",
                params![name, fresh.as_str()],
            )
            .map_err(sql_error("local_secret"))?;
            let stored: Zeroizing<String> = conn
                .query_row(
                    "SELECT value FROM local_secrets WHERE name = ?1",
                    params![name],
                    |r| r.get::<_, String>(0),
                )
                .map(Zeroizing::new)
                .map_err(sql_error("local_secret"))?;
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
        })
        .await
    }

    async fn put_verdict(&self, rec: &VerdictRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(rec)
            .map_err(|e| StoreError::Backend(format!("put_verdict: {e}")))?;
        let scanned_at = to_unix(rec.scanned_at)?;
        let (digest, ruleset, repository) = (
            rec.digest.clone(),
            rec.ruleset_version.clone(),
            rec.repository.clone(),
        );
        self.run("put_verdict", move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO image_verdicts \
                 (digest, ruleset_version, repository, scanned_at, record) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![digest, ruleset, repository, scanned_at, json],
            )
            .map_err(sql_error("put_verdict"))?;
            Ok(())
        })
        .await
    }

    async fn verdict(
        &self,
        digest: &str,
        ruleset_version: &str,
    ) -> Result<Option<VerdictRecord>, StoreError> {
        let (digest, ruleset) = (digest.to_owned(), ruleset_version.to_owned());
        self.run_read("verdict", move |conn| {
            let json: Option<String> = conn
                .query_row(
                    "SELECT record FROM image_verdicts WHERE digest = ?1 AND ruleset_version = ?2",
                    params![digest, ruleset],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_error("verdict"))?;
            json.map(|j| decode_verdict(&j)).transpose()
        })
        .await
    }

    async fn previous_verdict(
        &self,
        digest: &str,
        except: &str,
    ) -> Result<Option<VerdictRecord>, StoreError> {
        let (digest, except) = (digest.to_owned(), except.to_owned());
        self.run_read("previous_verdict", move |conn| {
            let json: Option<String> = conn
                .query_row(
                    "SELECT record FROM image_verdicts WHERE digest = ?1 AND ruleset_version != ?2 \
                     ORDER BY scanned_at DESC, ruleset_version DESC LIMIT 1",
                    params![digest, except],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_error("previous_verdict"))?;
            json.map(|j| decode_verdict(&j)).transpose()
        })
        .await
    }

    async fn digests_without_verdict(
        &self,
        ruleset_version: &str,
        limit: usize,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let ruleset = ruleset_version.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run_read("digests_without_verdict", move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT digest, MAX(repository) FROM image_verdicts v WHERE NOT EXISTS \
                     (SELECT 1 FROM image_verdicts w WHERE w.digest = v.digest \
                      AND w.ruleset_version = ?1) \
                     GROUP BY digest ORDER BY digest LIMIT ?2",
                )
                .map_err(sql_error("digests_without_verdict"))?;
            let rows = stmt
                .query_map(params![ruleset, limit], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
                })
                .map_err(sql_error("digests_without_verdict"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(sql_error("digests_without_verdict"))
        })
        .await
    }

    async fn put_exemption(&self, rec: &ExemptionRecord) -> Result<(), StoreError> {
        let created_at = to_unix(rec.created_at)?;
        let (digest, reason) = (rec.digest.clone(), rec.reason.clone());
        self.run("put_exemption", move |conn| {
            conn.execute(
                "INSERT OR REPLACE INTO image_exemptions (digest, reason, created_at) \
                 VALUES (?1, ?2, ?3)",
                params![digest, reason, created_at],
            )
            .map_err(sql_error("put_exemption"))?;
            Ok(())
        })
        .await
    }

    async fn exemption(&self, digest: &str) -> Result<Option<ExemptionRecord>, StoreError> {
        let digest = digest.to_owned();
        self.run_read("exemption", move |conn| {
            let row: Option<(String, i64)> = conn
                .query_row(
                    "SELECT reason, created_at FROM image_exemptions WHERE digest = ?1",
                    params![digest],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql_error("exemption"))?;
            row.map(|(reason, created_at)| {
                Ok(ExemptionRecord {
                    created_at: from_unix(created_at, &format!("exemption of {digest}"))?,
                    digest: digest.clone(),
                    reason,
                })
            })
            .transpose()
        })
        .await
    }

    async fn put_admission_record(&self, rec: &AdmissionRecord) -> Result<(), StoreError> {
        let images = serde_json::to_string(&rec.images)
            .map_err(|e| StoreError::Backend(format!("put_admission_record: {e}")))?;
        let admitted_at = to_unix_millis(rec.admitted_at)?;
        let expires_at = to_unix(rec.expires_at)?;
        let row = (
            rec.pod_uid.clone(),
            rec.namespace.clone(),
            rec.pod_name.clone(),
            images,
            rec.pinned,
            admitted_at,
            expires_at,
        );
        // Group commit: every record put while a group waits for the store thread joins it,
        // and the group is written in one transaction — one sync of the log for all (each
        // admission review waits for its record to be durable; at 1,000 reviews/s one sync
        // each would queue them behind each other). The first record of a group sends the job.
        let (done, answer) = tokio::sync::oneshot::channel();
        let first = {
            let mut pending = self
                .pending_records
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.push((row, done));
            pending.len() == 1
        };
        if first {
            let pending = self.pending_records.clone();
            let job: Job = Box::new(move |conn| {
                let group = std::mem::take(
                    &mut *pending
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                let (rows, waiters): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                let result = insert_admission_rows(conn, &rows);
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            });
            if self.jobs.send(job).is_err() {
                // The store thread is gone: tell the whole group, not only this caller.
                let group = std::mem::take(
                    &mut *self
                        .pending_records
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for (_, w) in group {
                    let _ = w.send(Err(stopped("put_admission_record")));
                }
            }
        }
        answer.await.map_err(|_| stopped("put_admission_record"))?
    }

    async fn admission_record(&self, pod_uid: &str) -> Result<Option<AdmissionRecord>, StoreError> {
        let uid = pod_uid.to_owned();
        self.run_read("admission_record", move |conn| {
            let row = conn
                .query_row(
                    &format!(
                        "SELECT {ADMISSION_COLUMNS} FROM admission_records WHERE pod_uid = ?1"
                    ),
                    params![uid],
                    admission_row,
                )
                .optional()
                .map_err(sql_error("admission_record"))?;
            row.map(decode_admission).transpose()
        })
        .await
    }

    async fn delete_admission_record(&self, pod_uid: &str) -> Result<bool, StoreError> {
        let uid = pod_uid.to_owned();
        self.run("delete_admission_record", move |conn| {
            let n = conn
                .execute(
                    "DELETE FROM admission_records WHERE pod_uid = ?1",
                    params![uid],
                )
                .map_err(sql_error("delete_admission_record"))?;
            Ok(n > 0)
        })
        .await
    }

    async fn admission_records_page(
        &self,
        after_uid: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AdmissionRecord>, StoreError> {
        let after = after_uid.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run_read("admission_records_page", move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {ADMISSION_COLUMNS} FROM admission_records \
                     WHERE ?1 IS NULL OR pod_uid > ?1 ORDER BY pod_uid LIMIT ?2"
                ))
                .map_err(sql_error("admission_records_page"))?;
            let rows = stmt
                .query_map(params![after, limit], admission_row)
                .map_err(sql_error("admission_records_page"))?;
            let mut out = Vec::new();
            for row in rows {
                out.push(decode_admission(
                    row.map_err(sql_error("admission_records_page"))?,
                )?);
            }
            Ok(out)
        })
        .await
    }

    async fn prune_admission_records(&self, now: SystemTime) -> Result<usize, StoreError> {
        let now = to_unix(now)?;
        self.run("prune_admission_records", move |conn| {
            conn.execute(
                "DELETE FROM admission_records WHERE expires_at <= ?1",
                params![now],
            )
            .map_err(sql_error("prune_admission_records"))
        })
        .await
    }
}

/// The columns of an `admission_records` row, in `ADMISSION_COLUMNS` order.
type AdmissionRow = (String, String, String, String, bool, i64, i64);

const ADMISSION_COLUMNS: &str =
    "pod_uid, namespace, pod_name, images, pinned, admitted_at_ms, expires_at";

fn admission_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AdmissionRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

fn decode_admission(row: AdmissionRow) -> Result<AdmissionRecord, StoreError> {
    let (pod_uid, namespace, pod_name, images, pinned, admitted_at, expires_at) = row;
    let what = format!("admission record of pod {pod_uid}");
    let images: Vec<String> = serde_json::from_str(&images)
        .map_err(|e| StoreError::Corrupt(format!("{what}: images: {e}")))?;
    Ok(AdmissionRecord {
        admitted_at: from_unix_millis(admitted_at, &what)?,
        expires_at: from_unix(expires_at, &what)?,
        pod_uid,
        namespace,
        pod_name,
        images,
        pinned,
    })
}

fn decode_verdict(json: &str) -> Result<VerdictRecord, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("image verdict: {e}")))
}

/// SQLite-only behaviour: files, migrations, several handles on one file, undecodable rows.
/// What every store promises is checked by the shared contract in `super::suite`.
#[cfg(test)]
mod tests {
    use super::super::suite;
    use super::super::suite::{key, lease, t, token};
    use super::*;

    /// The contract's concurrent inserts on a file, then a fresh handle sees every committed
    /// lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lease_inserts_are_seen_by_a_fresh_handle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        let s = SqliteStore::open(&path).expect("open");
        suite::concurrent_lease_inserts_each_succeed_or_fail_alone(Arc::new(s)).await;
        let again = SqliteStore::open(&path).expect("reopen");
        assert!(again.get_lease("ls_299").await.expect("get").is_some());
        assert!(again.get_lease("ls_taken").await.expect("get").is_some());
        assert!(again.get_lease("ls_7").await.expect("get").is_none());
    }

    /// Replicas on one host: handles on one file racing to reserve a token, exactly one
    /// wins; its commit through another handle redeems it for all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handles_on_one_file_reserve_a_token_exactly_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let stores: Vec<SqliteStore> = (0..4)
            .map(|_| SqliteStore::open(&path).expect("open"))
            .collect();
        stores[0]
            .insert_bootstrap_token(&token("bt_1", "h1", 1_600))
            .await
            .expect("insert");
        let tasks: Vec<_> = stores
            .iter()
            .cycle()
            .take(16)
            .enumerate()
            .map(|(i, s)| {
                let s = s.clone();
                tokio::spawn(async move {
                    let r = format!("r{i}");
                    (
                        r.clone(),
                        s.reserve_bootstrap_token("h1", &r, t(1_100), t(1_160))
                            .await,
                    )
                })
            })
            .collect();
        let (mut winners, mut held) = (Vec::new(), 0);
        for task in tasks {
            match task.await.expect("join") {
                (r, Ok(ReserveOutcome::Reserved(_))) => winners.push(r),
                (_, Ok(ReserveOutcome::Held { until, .. })) => {
                    assert_eq!(until, t(1_160));
                    held += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((winners.len(), held), (1, 15));
        assert!(
            stores[3]
                .commit_bootstrap_token("h1", &winners[0], t(1_101))
                .await
                .expect("commit")
        );
        for s in &stores {
            assert!(matches!(
                s.reserve_bootstrap_token("h1", "late", t(1_102), t(1_162)).await,
                Ok(ReserveOutcome::Redeemed(RedeemedToken { redeemed_at, session_started, .. }))
                    if redeemed_at == t(1_101) && session_started == t(1_100)
            ));
        }
    }

    /// The environment variable that turns [`reserve_from_a_child_process`] into a racer.
    const CHILD_DB: &str = "LANYARD_TEST_RESERVE_DB";

    /// Not a test on its own: run by [`processes_on_one_file_reserve_a_token_exactly_once`]
    /// in child processes (with [`CHILD_DB`] set), it makes 8 racing reservations of `h1` on
    /// that database and prints how many it won (`won=N`). Without the variable it does
    /// nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reserve_from_a_child_process() {
        let Ok(db) = std::env::var(CHILD_DB) else {
            return;
        };
        let s = SqliteStore::open(Path::new(&db)).expect("open");
        let pid = std::process::id();
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.reserve_bootstrap_token("h1", &format!("p{pid}-{i}"), t(1_100), t(1_160))
                        .await
                })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            match task.await.expect("join").expect("reserve") {
                ReserveOutcome::Reserved(_) => won += 1,
                ReserveOutcome::Held { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        println!("won={won}");
    }

    /// Replicas as separate processes on one file: four processes (this test binary run
    /// again) race 32 reservations of one token; exactly one wins.
    #[test]
    fn processes_on_one_file_reserve_a_token_exactly_once() {
        if std::env::var_os(CHILD_DB).is_some() {
            return; // a child: only the racer runs
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            SqliteStore::open(&path)
                .expect("open")
                .insert_bootstrap_token(&token("bt_1", "h1", 1_600))
                .await
                .expect("insert");
        });
        let exe = std::env::current_exe().expect("test binary");
        let children: Vec<_> = (0..4)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "store::sqlite::tests::reserve_from_a_child_process",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env(CHILD_DB, &path)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn a child")
            })
            .collect();
        let mut won = 0;
        for child in children {
            let out = child.wait_with_output().expect("child");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let line = stdout
                .lines()
                .find_map(|l| l.split_once("won=").map(|(_, n)| n))
                .unwrap_or_else(|| panic!("the child ran no racer: {stdout}"));
            won += line.trim().parse::<u32>().expect("count");
        }
        assert_eq!(won, 1);
    }

    /// A database written by a v1 broker: its redeemed token stays redeemed (its session
    /// started when it was redeemed) and its unredeemed one can be reserved.
    #[tokio::test]
    async fn a_v1_database_keeps_its_redemptions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        {
            let conn = Connection::open(&path).expect("raw open");
            conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
            conn.pragma_update(None, "user_version", 1).expect("v1");
            conn.execute_batch(
                "INSERT INTO bootstrap_tokens VALUES ('bt_1','h1','[\"db\"]',NULL,1000,1600,1100);
                 INSERT INTO bootstrap_tokens VALUES ('bt_2','h2','[\"db\"]',NULL,1000,1600,NULL);",
            )
            .expect("v1 rows");
        }
        let s = SqliteStore::open(&path).expect("migrate");
        assert_eq!(
            s.schema_version().await.expect("v"),
            MIGRATIONS.len() as u32
        );
        assert!(matches!(
            s.reserve_bootstrap_token("h1", "r", t(1_200), t(1_260)).await,
            Ok(ReserveOutcome::Redeemed(RedeemedToken { redeemed_at, session_started, .. }))
                if redeemed_at == t(1_100) && session_started == t(1_100)
        ));
        assert!(matches!(
            s.reserve_bootstrap_token("h2", "r", t(1_200), t(1_260))
                .await,
            Ok(ReserveOutcome::Reserved(_))
        ));
    }

    #[tokio::test]
    async fn undecodable_rows_are_reported_corrupt() {
        let s = SqliteStore::open_in_memory().expect("open");
        s.run("test setup", |conn| {
            conn.execute_batch(
                "INSERT INTO bootstrap_tokens (token_id, token_hash, roles, image, created_at, \
                 expires_at) VALUES ('bt_x','hx','not json',NULL,1,5000);
                 INSERT INTO bootstrap_tokens (token_id, token_hash, roles, image, created_at, \
                 expires_at, reserved_by) VALUES ('bt_y','hy','[]',NULL,1,5000,'r');
                 INSERT INTO leases VALUES ('ls_x','r','jwt','s','i',-5,10,NULL,'fp',NULL,NULL,NULL);
                 INSERT INTO signing_keys VALUES ('k','ES256','p','yesterday',NULL);
                 INSERT INTO audit_head VALUES (1, -1, 'h');
                 INSERT INTO local_secrets VALUES ('n', 'not-hex!');",
            )
            .map_err(sql_error("test setup"))
        })
        .await
        .expect("setup");
        let r = s.reserve_bootstrap_token("hx", "r", t(100), t(160)).await;
        assert!(
            matches!(&r, Err(StoreError::Corrupt(m)) if m.contains("bt_x")),
            "{r:?}"
        );
        // The refused decode rolled the reservation back: the row is still free, not held.
        let holder = s
            .run("test check", |conn| {
                conn.query_row(
                    "SELECT reserved_by FROM bootstrap_tokens WHERE token_id = 'bt_x'",
                    [],
                    |r| r.get::<_, Option<String>>(0),
                )
                .map_err(sql_error("test check"))
            })
            .await
            .expect("check");
        assert_eq!(holder, None);
        // Held without a hold time: neither free nor held.
        let r = s.reserve_bootstrap_token("hy", "r", t(100), t(160)).await;
        assert!(
            matches!(&r, Err(StoreError::Corrupt(m)) if m.contains("bt_y")),
            "{r:?}"
        );
        let r = s.get_lease("ls_x").await;
        assert!(
            matches!(&r, Err(StoreError::Corrupt(m)) if m.contains("ls_x")),
            "{r:?}"
        );
        let r = s.signing_keys().await;
        assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
        let r = s.audit_head().await;
        assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
        let r = s.local_secret("n", 4).await;
        assert!(matches!(r, Err(StoreError::Corrupt(_))), "{r:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admission_records_put_at_once_are_committed_in_groups_and_all_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        {
            let s = SqliteStore::open(&path).expect("open");
            let puts = (0..200_usize).map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let rec = crate::store::suite::admission(
                        &format!("uid-{i:03}1"),
                        &["r.example/a@sha256:00"],
                        i.is_multiple_of(2),
                        9_000,
                    );
                    s.put_admission_record(&rec).await
                })
            });
            for p in futures_util::future::join_all(puts).await {
                p.expect("join").expect("put");
            }
        }
        // Reopened: every answered put is on disk, as it was written.
        let s = SqliteStore::open(&path).expect("reopen");
        let mut seen = 0;
        let mut after = None;
        loop {
            let page = s
                .admission_records_page(after.as_deref(), 64)
                .await
                .expect("page");
            if page.is_empty() {
                break;
            }
            for r in &page {
                let i: usize = r.pod_uid[4..7].parse().expect("index");
                assert_eq!(r.pinned, i.is_multiple_of(2), "{r:?}");
                assert_eq!(r.pod_name, format!("pod-{}", r.pod_uid));
            }
            seen += page.len();
            after = page.last().map(|r| r.pod_uid.clone());
        }
        assert_eq!(seen, 200);
    }

    #[tokio::test]
    async fn file_store_persists_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state").join("lanyard.db");
        let secret = {
            let s = SqliteStore::open(&path).expect("open");
            s.insert_bootstrap_token(&token("bt_1", "h1", 1_600))
                .await
                .expect("insert");
            s.insert_lease(&lease("ls_1")).await.expect("lease");
            s.insert_signing_key(&key("k1", 100)).await.expect("key");
            s.set_audit_head(&ChainHead {
                seq: 7,
                hash: "cafe".to_owned(),
            })
            .await
            .expect("head");
            s.local_secret("fp", 32).await.expect("secret")
        };

        let s = SqliteStore::open(&path).expect("reopen");
        assert_eq!(s.path(), Some(path.as_path()));
        assert_eq!(s.get_lease("ls_1").await.expect("get"), Some(lease("ls_1")));
        assert_eq!(s.signing_keys().await.expect("keys").len(), 1);
        assert_eq!(
            s.audit_head().await.expect("head"),
            Some(ChainHead {
                seq: 7,
                hash: "cafe".to_owned()
            })
        );
        assert_eq!(
            s.local_secret("fp", 32).await.expect("secret").expose(),
            secret.expose()
        );
        assert!(matches!(
            s.reserve_bootstrap_token("h1", "r", t(1_100), t(1_160))
                .await,
            Ok(ReserveOutcome::Reserved(_))
        ));
        // A reservation survives a reopen (a restarted broker), and commits through it.
        let s = SqliteStore::open(&path).expect("reopen again");
        assert!(matches!(
            s.reserve_bootstrap_token("h1", "other", t(1_101), t(1_161))
                .await,
            Ok(ReserveOutcome::Held { .. })
        ));
        assert!(
            s.commit_bootstrap_token("h1", "r", t(1_102))
                .await
                .expect("commit")
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn new_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("lanyard.db");
        let s = SqliteStore::open(&path).expect("open");
        s.local_secret("x", 8).await.expect("write something");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("parent")), 0o700);
        let wal = path.with_extension("db-wal");
        assert!(wal.exists(), "WAL mode should create {}", wal.display());
        assert_eq!(mode(&wal), 0o600);
    }

    /// A committed redemption must survive a power loss: the connection commits with
    /// `synchronous = FULL` (2), not `NORMAL` (1), unless asked otherwise (for benchmarks).
    #[tokio::test]
    async fn commits_are_synchronous_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let file = SqliteStore::open(&path).expect("open");
        assert_eq!(pragma(&file, "synchronous").await, 2);
        let memory = SqliteStore::open_in_memory().expect("open");
        assert_eq!(pragma(&memory, "synchronous").await, 2);
        let normal = SqliteStore::open_with(&path, Synchronous::Normal).expect("open");
        assert_eq!(pragma(&normal, "synchronous").await, 1);
    }

    /// A `PRAGMA`'s value as the store's own connection sees it.
    async fn pragma(s: &SqliteStore, name: &'static str) -> i64 {
        s.run("test check", move |conn| {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
                .map_err(sql_error("test check"))
        })
        .await
        .expect("pragma")
    }

    /// A database the store creates has small pages (what each commit writes to the log); one
    /// created elsewhere with SQLite's default keeps it, and the store works on it as on any.
    #[tokio::test]
    async fn a_new_database_has_small_pages_and_an_existing_one_keeps_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let new = SqliteStore::open(&dir.path().join("new.db")).expect("open");
        assert_eq!(pragma(&new, "page_size").await, PAGE_SIZE);

        let old = dir.path().join("old.db");
        {
            let conn = Connection::open(&old).expect("sqlite");
            conn.execute_batch(
                "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE before (x);",
            )
            .expect("an existing database");
        }
        let s = SqliteStore::open(&old).expect("open existing");
        assert_eq!(pragma(&s, "page_size").await, 4096);
        let head = ChainHead {
            seq: 1,
            hash: "abcd".to_owned(),
        };
        s.record_replayable_group(&[lease("ls_1"), lease("ls_2")], &head)
            .await
            .expect("group");
        assert!(s.get_lease("ls_2").await.expect("get").is_some());
        assert_eq!(s.audit_head().await.expect("head"), Some(head));
    }

    /// A replayable group (issuances whose records the audit file holds) commits without the
    /// log's sync, and the connection is back at FULL for whatever runs next; its leases are
    /// saved like any group's, a duplicate failing alone.
    #[tokio::test]
    async fn a_replayable_group_leaves_the_connection_at_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("lanyard.db")).expect("open");
        s.insert_lease(&lease("ls_taken")).await.expect("seed");
        let head = ChainHead {
            seq: 3,
            hash: "beef".to_owned(),
        };
        let results = s
            .record_replayable_group(&[lease("ls_1"), lease("ls_taken"), lease("ls_2")], &head)
            .await
            .expect("group");
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(matches!(results[1], Err(StoreError::Duplicate(_))));
        assert_eq!(s.audit_head().await.expect("head"), Some(head));
        assert!(s.get_lease("ls_2").await.expect("get").is_some());
        assert_eq!(
            pragma(&s, "synchronous").await,
            2,
            "FULL again after the group"
        );
    }

    /// Commits do not checkpoint (the writer's limit is far off): the checkpointer thread
    /// copies the log into the database file within a few of its intervals.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_checkpointed_off_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let s = SqliteStore::open(&path).expect("open");
        // Let the checkpointer take in what the migrations wrote.
        tokio::time::sleep(CHECKPOINT_INTERVAL * 2).await;
        let size = || std::fs::metadata(&path).expect("db file").len();
        let before = size();
        let leases: Vec<_> = (0..500).map(|i| lease(&format!("ls_{i}"))).collect();
        let head = ChainHead {
            seq: 1,
            hash: "cafe".to_owned(),
        };
        s.record_replayable_group(&leases, &head)
            .await
            .expect("group");
        let deadline = std::time::Instant::now() + CHECKPOINT_INTERVAL * 10;
        while size() <= before && std::time::Instant::now() < deadline {
            tokio::time::sleep(CHECKPOINT_INTERVAL / 2).await;
        }
        assert!(
            size() > before,
            "the database file grew from {before} bytes: the rows were checkpointed into it"
        );
    }

    /// Another process holding the write lock (here another connection, as `sqlite3 FILE
    /// 'BEGIN EXCLUSIVE; …'` would): the store is not writable and a write fails as
    /// `Unavailable` after the busy timeout, reads go on (WAL), and all is well once the lock
    /// is let go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_lock_held_elsewhere_is_unavailable_until_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let s = SqliteStore::open(&path).expect("open");
        s.check_writable().await.expect("writable at first");
        let other = Connection::open(&path).expect("another connection");
        other.execute_batch("BEGIN EXCLUSIVE").expect("lock");
        let r = s.check_writable().await;
        assert!(
            matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("locked")),
            "{r:?}"
        );
        let rec = SessionRevocation {
            session_id: "ss_1".into(),
            revoked_at: t(1_000),
            expires_at: t(2_000),
        };
        let r = s.revoke_session(&rec).await;
        assert!(matches!(&r, Err(StoreError::Unavailable(_))), "{r:?}");
        assert_eq!(
            s.session_revocations(t(1_000)).await.expect("reads go on"),
            []
        );
        other.execute_batch("ROLLBACK").expect("unlock");
        s.check_writable().await.expect("writable again");
        assert!(s.revoke_session(&rec).await.expect("written"));
    }

    #[tokio::test]
    async fn reopening_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let s = SqliteStore::open(&path).expect("open");
        assert_eq!(
            s.schema_version().await.expect("v"),
            MIGRATIONS.len() as u32
        );
        s.insert_lease(&lease("ls_1")).await.expect("lease");
        drop(s);
        // A second open would fail on `CREATE TABLE` if it re-applied v1.
        let s = SqliteStore::open(&path).expect("reopen");
        let s2 = SqliteStore::open(&path).expect("open a second handle");
        assert_eq!(
            s.schema_version().await.expect("v"),
            MIGRATIONS.len() as u32
        );
        assert!(s2.get_lease("ls_1").await.expect("get").is_some());
    }

    /// A database written before signing keys had `active_from` (schema v1) opens, and its
    /// keys sign from when they were created, as they did.
    #[tokio::test]
    async fn a_v1_database_migrates_and_its_keys_sign_from_creation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        {
            let conn = Connection::open(&path).expect("raw open");
            conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
            conn.pragma_update(None, "user_version", 1).expect("set");
            conn.execute_batch(
                "INSERT INTO signing_keys VALUES ('k-old', 'ES256', 'p1', 100);
                 INSERT INTO signing_keys VALUES ('k-new', 'EdDSA', 'p2', 200);",
            )
            .expect("v1 rows");
        }
        let s = SqliteStore::open(&path).expect("migrates");
        assert_eq!(
            s.schema_version().await.expect("v"),
            MIGRATIONS.len() as u32
        );
        let keys = s.signing_keys().await.expect("keys");
        let times: Vec<(&str, SystemTime, SystemTime)> = keys
            .iter()
            .map(|k| (k.kid.as_str(), k.created_at, k.active_from))
            .collect();
        assert_eq!(
            times,
            [("k-old", t(100), t(100)), ("k-new", t(200), t(200))]
        );
        // New rows keep their own `active_from`.
        s.insert_signing_key(&key("k-next", 300))
            .await
            .expect("insert");
        let next = s.signing_keys().await.expect("keys").pop().expect("one");
        assert_eq!((next.kid.as_str(), next.active_from), ("k-next", t(1_300)));
    }

    #[tokio::test]
    async fn newer_schema_is_refused_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        {
            let conn = Connection::open(&path).expect("raw open");
            conn.pragma_update(None, "user_version", 99).expect("set");
        }
        let err = SqliteStore::open(&path).expect_err("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("lanyard.db") && msg.contains("99"), "{msg}");
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").expect("write");
        let path = blocker.join("lanyard.db");
        let err = SqliteStore::open(&path).expect_err("parent is a file");
        assert!(err.to_string().contains("not-a-dir"), "{err}");

        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x42u8; 4096]).expect("write");
        let err = SqliteStore::open(&garbage).expect_err("not a database");
        assert!(err.to_string().contains("garbage.db"), "{err}");
    }

    #[test]
    fn handles_opened_at_once_migrate_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || SqliteStore::open(&path).map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().expect("thread").expect("open");
        }
    }

    #[tokio::test]
    async fn concurrent_first_use_of_a_local_secret_agrees_across_handles() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let stores: Vec<SqliteStore> = (0..4)
            .map(|_| SqliteStore::open(&path).expect("open"))
            .collect();
        let tasks: Vec<_> = stores
            .iter()
            .cycle()
            .take(16)
            .map(|s| {
                let s = s.clone();
                tokio::spawn(async move { s.local_secret("shared", 32).await })
            })
            .collect();
        let mut values = std::collections::BTreeSet::new();
        for t in tasks {
            values.insert(t.await.expect("join").expect("secret").expose().to_owned());
        }
        assert_eq!(values.len(), 1);
    }
}
