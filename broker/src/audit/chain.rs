//! Hash chain, writer and sinks.
//!
//! [`AuditLog`] appends one line per record (format in [`super::line`]), flushing (and for
//! files, `fsync`ing) before it records the new chain head in the store; records that
//! arrive together are committed as a group (one write, one `fsync`, one head update). On open it resumes
//! from the file's last record and refuses to continue if the store remembers a different
//! head, so a truncated or replaced file is noticed at start rather than silently forked.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::hmac;
use lanyard::Secret;

use super::AuditRecord;
use super::line::{
    BoundedLine, BuildError, GENESIS_PREV, MAX_LINE_BYTES, build_line, parse_line,
    read_bounded_line,
};
use crate::store::{ChainHead, LeaseRecord, Store, StoreError};

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Standard output, one line per record.
    Stdout,
    /// A file, appended to (created with mode 0600).
    File(PathBuf),
}

impl AuditSink {
    /// Parses the config value: `stdout` or a path.
    pub fn from_config(s: &str) -> Self {
        if s == "stdout" {
            Self::Stdout
        } else {
            Self::File(PathBuf::from(s))
        }
    }
}

/// Audit failures. A failed audit write fails the request it records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Writing the sink failed.
    #[error("audit sink: {0}")]
    Io(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file's last record and the store's chain head disagree.
    #[error("audit chain mismatch: {0}")]
    ChainMismatch(String),
    /// The audit file's last line cannot be resumed from (cut short, edited, unreadable).
    #[error("audit file unusable: {0}")]
    Corrupt(String),
    /// The record cannot be written as a line a reader accepts; nothing was written.
    #[error("audit record refused: {0}")]
    Record(#[from] BuildError),
    /// An earlier write failed part-way; the file may end in a partial line, so no further
    /// record is appended until the broker is restarted (which re-reads the file's tail).
    #[error(
        "audit log stopped after a failed write; restart the broker so it re-reads the audit file's tail"
    )]
    Stopped,
}

/// Most records one write and `fsync` covers.
const MAX_BATCH: usize = 1024;

/// Writes hash-chained records.
///
/// Appends go to one writer task that commits them in groups: every record that arrived
/// while the previous group was being written is chained, written with one `write`, made
/// durable with one `fsync` and recorded in the store with one head update. Each caller is
/// answered only once its own line is durable, so a busy broker pays one `fsync` per group
/// instead of one per request, and an idle one still pays exactly one per record.
#[derive(Debug)]
pub struct AuditLog {
    tx: tokio::sync::mpsc::UnboundedSender<Pending>,
    head: Arc<std::sync::Mutex<Option<ChainHead>>>,
}

/// A record waiting for the writer (with the lease it records, if any), and where to send
/// its outcome.
struct Pending {
    rec: AuditRecord,
    lease: Option<LeaseRecord>,
    done: tokio::sync::oneshot::Sender<Result<ChainHead, AuditError>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
enum Output {
    Stdout,
    File(Arc<std::fs::File>),
}

impl Output {
    /// Writes, flushes and (for files) syncs the lines. Blocking; run off the async threads.
    fn write_lines(&self, lines: &[u8]) -> io::Result<()> {
        match self {
            Self::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(lines)?;
                out.flush()
            }
            Self::File(f) => {
                let mut w: &std::fs::File = f;
                w.write_all(lines)?;
                w.flush()?;
                f.sync_data()
            }
        }
    }
}

impl AuditLog {
    /// Opens the sink, resumes the chain and starts the writer task (it ends when the log
    /// is dropped).
    pub async fn open(sink: AuditSink, store: Arc<dyn Store>) -> Result<Self, AuditError> {
        let store_head = store.audit_head().await?;
        let (out, head) = match sink {
            AuditSink::Stdout => (Output::Stdout, store_head),
            AuditSink::File(path) => {
                let (file, head) =
                    tokio::task::spawn_blocking(move || open_file(&path, store_head))
                        .await
                        .map_err(|e| io::Error::other(format!("audit open task failed: {e}")))??;
                if let Some(h) = &head.adopt {
                    store.set_audit_head(h).await?;
                }
                (Output::File(Arc::new(file)), head.head)
            }
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(std::sync::Mutex::new(head.clone()));
        let (recorder, written) = tokio::sync::mpsc::unbounded_channel();
        let writer = Writer {
            out,
            head,
            shared: shared.clone(),
            stopped: false,
            recorder,
        };
        tokio::spawn(writer.run(rx));
        tokio::spawn(record(store, written));
        Ok(Self { tx, head: shared })
    }

    /// The current chain head (`None` before the first record).
    pub async fn head(&self) -> Option<ChainHead> {
        self.head
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Appends a record; returns the new head once its line is written and durable.
    ///
    /// The record is queued before this returns its future, and the writer finishes it even
    /// if the caller stops waiting, so the chain never loses track of a line it wrote.
    pub fn append(
        &self,
        rec: AuditRecord,
    ) -> impl std::future::Future<Output = Result<ChainHead, AuditError>> + Send + 'static {
        self.queue(rec, None)
    }

    /// Appends the record of an issuance together with its lease: once the line is durable
    /// the lease row is saved in the same store transaction as the new chain head (one
    /// hand-off and one transaction per group instead of one per lease). An error means the
    /// lease was not saved, and the request must fail.
    pub fn append_with_lease(
        &self,
        rec: AuditRecord,
        lease: LeaseRecord,
    ) -> impl std::future::Future<Output = Result<ChainHead, AuditError>> + Send + 'static {
        self.queue(rec, Some(lease))
    }

    fn queue(
        &self,
        rec: AuditRecord,
        lease: Option<LeaseRecord>,
    ) -> impl std::future::Future<Output = Result<ChainHead, AuditError>> + Send + 'static {
        let (done, answer) = tokio::sync::oneshot::channel();
        let queued = self.tx.send(Pending { rec, lease, done }).is_ok();
        async move {
            if !queued {
                return Err(AuditError::Stopped);
            }
            answer.await.unwrap_or_else(|_| {
                Err(AuditError::Io(io::Error::other(
                    "the audit writer task ended before answering",
                )))
            })
        }
    }
}

/// A caller whose line is written: where to answer, its line's head, the lease to save.
type Caller = (
    tokio::sync::oneshot::Sender<Result<ChainHead, AuditError>>,
    ChainHead,
    Option<LeaseRecord>,
);

/// The writer task's state: it chains and writes groups; a second task (the recorder)
/// saves each written group's leases and head in the store and answers its callers, so the
/// next group's `write` + `fsync` overlaps the previous group's store transaction.
struct Writer {
    out: Output,
    head: Option<ChainHead>,
    shared: Arc<std::sync::Mutex<Option<ChainHead>>>,
    stopped: bool,
    /// Written, durable groups (never empty) on their way to the store.
    recorder: tokio::sync::mpsc::UnboundedSender<Vec<Caller>>,
}

impl Writer {
    async fn run(mut self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.commit(&mut batch).await;
        }
    }

    /// Chains, writes and syncs one group, then hands it to the recorder.
    async fn commit(&mut self, batch: &mut Vec<Pending>) {
        if self.stopped {
            for p in batch.drain(..) {
                let _ = p.done.send(Err(AuditError::Stopped));
            }
            return;
        }
        let mut buf = String::new();
        let mut head = self.head.clone();
        let mut callers = Vec::with_capacity(batch.len());
        for p in batch.drain(..) {
            let (seq, prev) = match &head {
                Some(h) => (h.seq + 1, h.hash.clone()),
                None => (1, GENESIS_PREV.to_owned()),
            };
            match build_line(seq, &prev, &p.rec) {
                Ok((line, hash)) => {
                    buf.push_str(&line);
                    buf.push('\n');
                    let h = ChainHead { seq, hash };
                    head = Some(h.clone());
                    callers.push((p.done, h, p.lease));
                }
                Err(e) => {
                    let _ = p.done.send(Err(AuditError::Record(e)));
                }
            }
        }
        let Some(last) = head.filter(|_| !callers.is_empty()) else {
            return;
        };
        let out = self.out.clone();
        let written = tokio::task::spawn_blocking(move || out.write_lines(buf.as_bytes()))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("audit write task failed: {e}"))));
        if let Err(e) = written {
            // The file may now end in part of a line: stop until a restart re-reads it.
            self.stopped = true;
            for (done, _, _) in callers {
                let _ = done.send(Err(AuditError::Io(io::Error::new(e.kind(), e.to_string()))));
            }
            return;
        }
        self.head = Some(last.clone());
        *self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(last);
        if let Err(tokio::sync::mpsc::error::SendError(callers)) = self.recorder.send(callers) {
            for (done, _, _) in callers {
                let _ = done.send(Err(AuditError::Io(io::Error::other(
                    "the audit recorder task ended before saving the group",
                ))));
            }
        }
    }
}

/// The recorder task: saves written groups in order. Groups that queued up while the store
/// was busy are saved together, in one transaction with the newest head.
async fn record(store: Arc<dyn Store>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<Caller>>) {
    let mut groups = Vec::new();
    while rx.recv_many(&mut groups, MAX_BATCH).await > 0 {
        let callers: Vec<Caller> = groups.drain(..).flatten().collect();
        // The newest line's head is the group's.
        let Some(head) = callers.last().map(|(_, h, _)| h.clone()) else {
            continue;
        };
        // The lines are durable; save the leases and the new head in one store
        // transaction. A failure leaves the store behind the file, which the next open
        // tolerates (the store's head is then an ancestor of the file's); the callers whose
        // lease was not saved get the error.
        let leases: Vec<LeaseRecord> = callers.iter().filter_map(|(_, _, l)| l.clone()).collect();
        match store.record_group(&leases, &head).await {
            Ok(results) => {
                let mut results = results.into_iter();
                for (done, h, lease) in callers {
                    let saved = match lease {
                        Some(_) => results.next().unwrap_or(Ok(())),
                        None => Ok(()),
                    };
                    let _ = done.send(saved.map(|()| h).map_err(AuditError::Store));
                }
            }
            Err(e) => {
                for (done, _, _) in callers {
                    let _ = done.send(Err(AuditError::Store(e.clone())));
                }
            }
        }
    }
}

/// What opening a file found.
struct Resumed {
    /// The head to continue from.
    head: Option<ChainHead>,
    /// A head to save to the store (the store was empty or one step behind).
    adopt: Option<ChainHead>,
}

fn open_file(
    path: &Path,
    store_head: Option<ChainHead>,
) -> Result<(std::fs::File, Resumed), AuditError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("creating directory {}: {e}", dir.display()),
                )
            })?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    if let Ok(meta) = file.metadata()
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "audit file is readable by group or others; chmod 600 it"
        );
    }
    let file_head = last_record(&mut file, path)?;
    let resumed = reconcile(path, file_head, store_head)?;
    Ok((file, resumed))
}

/// Reads the file's last record (looking at most `MAX_LINE_BYTES + 1` bytes back).
fn last_record(file: &mut std::fs::File, path: &Path) -> Result<Option<ChainHead>, AuditError> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let window = (MAX_LINE_BYTES as u64 + 2).min(len);
    file.seek(SeekFrom::Start(len - window))?;
    let mut tail = Vec::with_capacity(window as usize);
    Read::by_ref(file).take(window).read_to_end(&mut tail)?;
    let corrupt = |what: &str| {
        AuditError::Corrupt(format!(
            "{what} in {}; run `lanyard-broker audit verify {}` to see where, then restore the file from a backup (or move it aside together with the store to start a new chain)",
            path.display(),
            path.display()
        ))
    };
    let Some(body) = tail.strip_suffix(b"\n") else {
        return Err(corrupt(
            "the last line is incomplete (no newline; a write was cut short or the file was edited)",
        ));
    };
    let start = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if window == len => 0,
        None => return Err(corrupt("the last line is longer than the 64 KiB limit")),
    };
    let last =
        std::str::from_utf8(&body[start..]).map_err(|_| corrupt("the last line is not UTF-8"))?;
    let parsed = parse_line(last.strip_suffix('\r').unwrap_or(last))
        .map_err(|e| corrupt(&format!("the last line is not a valid record ({e})")))?;
    if !parsed.hash_matches() {
        return Err(corrupt(&format!(
            "the last record (seq {}) fails its hash check",
            parsed.seq
        )));
    }
    Ok(Some(parsed.head()))
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// Decides where to resume, given the file's last record and the store's head.
fn reconcile(
    path: &Path,
    file_head: Option<ChainHead>,
    store_head: Option<ChainHead>,
) -> Result<Resumed, AuditError> {
    let p = path.display();
    match (file_head, store_head) {
        (None, None) => Ok(Resumed {
            head: None,
            adopt: None,
        }),
        (Some(f), None) => Ok(Resumed {
            adopt: Some(f.clone()),
            head: Some(f),
        }),
        (Some(f), Some(s)) if f == s => Ok(Resumed {
            head: Some(f),
            adopt: None,
        }),
        (Some(f), Some(s)) if f.seq > s.seq && store_head_is_ancestor(path, &s)? => {
            // The broker stopped between writing a line and saving the head.
            tracing::warn!(
                file = %p,
                file_seq = f.seq,
                store_seq = s.seq,
                "audit store head was behind the file; adopting the file's head"
            );
            Ok(Resumed {
                adopt: Some(f.clone()),
                head: Some(f),
            })
        }
        (None, Some(s)) => Err(AuditError::ChainMismatch(format!(
            "{p} has no records but the store's chain head is seq {} (hash {}…): the file was truncated, replaced or rotated away. \
             Restore the file that ends at seq {}; or, to start a new chain, move both aside: the audit file {p} and the broker's store database (it holds the chain head)",
            s.seq,
            short(&s.hash),
            s.seq
        ))),
        (Some(f), Some(s)) => Err(AuditError::ChainMismatch(format!(
            "the last record in {p} is seq {} (hash {}…) but the store's chain head is seq {} (hash {}…): the file was truncated, replaced or rotated away. \
             Restore the file that ends at seq {}; or, to start a new chain, move both aside: the audit file {p} and the broker's store database (it holds the chain head)",
            f.seq,
            short(&f.hash),
            s.seq,
            short(&s.hash),
            s.seq
        ))),
    }
}

/// Whether the file holds the record `head` (by seq and hash). Reads the whole file; only
/// used in the rare case where the store fell behind.
fn store_head_is_ancestor(path: &Path, head: &ChainHead) -> Result<bool, AuditError> {
    let mut reader = io::BufReader::new(std::fs::File::open(path)?);
    while let Some(line) = read_bounded_line(&mut reader, MAX_LINE_BYTES)? {
        if let BoundedLine::Line(l) = line
            && let Ok(p) = parse_line(&l)
            && p.seq == head.seq
        {
            return Ok(p.hash_matches() && p.hash == head.hash);
        }
    }
    Ok(false)
}

/// Computes credential fingerprints: HMAC-SHA256 under a broker-local key, so a
/// fingerprint identifies a credential without letting anyone guess low-entropy secrets.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    key: hmac::Key,
}

/// The store's name for the fingerprint key.
pub const FINGERPRINT_SECRET_NAME: &str = "audit-fingerprint";

impl Fingerprinter {
    /// Loads (or creates) the key from the store.
    pub async fn load(store: &dyn Store) -> Result<Self, StoreError> {
        let secret = store.local_secret(FINGERPRINT_SECRET_NAME, 32).await?;
        Ok(Self::from_key(&secret))
    }

    /// A fingerprinter with an explicit key.
    pub fn from_key(key: &Secret) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key.expose().as_bytes()),
        }
    }

    /// Fingerprint of a credential's secret fields: `hmac-sha256:` + 32 hex characters.
    pub fn fingerprint(&self, data: &BTreeMap<String, Secret>) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        // BTreeMap iterates sorted by name; each part is length-prefixed so that no two
        // different maps feed the same bytes.
        for (name, value) in data {
            ctx.update(&(name.len() as u64).to_be_bytes());
            ctx.update(name.as_bytes());
            ctx.update(&(value.len() as u64).to_be_bytes());
            ctx.update(value.expose().as_bytes());
        }
        let tag = ctx.sign();
        let mut hex = hex::encode(tag.as_ref());
        hex.truncate(32);
        format!("hmac-sha256:{hex}")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::{Decision, Event};
    use super::*;
    use crate::store::memory::MemoryStore;

    fn record(i: u64) -> AuditRecord {
        AuditRecord {
            identity: Some(format!("system:serviceaccount:shop:api-{i}")),
            role: Some("reader".into()),
            ..AuditRecord::new(
                format!("2026-01-01T00:00:{:02}Z", i % 60),
                Event::Issue,
                Decision::Allow,
                "rule-a",
            )
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn appends_chain_and_resume_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = AuditLog::open(AuditSink::File(path.clone()), store.clone())
            .await
            .expect("open");
        let h1 = log.append(record(1)).await.expect("append");
        let h2 = log.append(record(2)).await.expect("append");
        assert_eq!((h1.seq, h2.seq), (1, 2));
        assert_eq!(store.audit_head().await.expect("head"), Some(h2.clone()));
        drop(log);

        let log = AuditLog::open(AuditSink::File(path.clone()), store.clone())
            .await
            .expect("reopen");
        let h3 = log.append(record(3)).await.expect("append");
        assert_eq!(h3.seq, 3);

        let ls = lines(&path);
        assert_eq!(ls.len(), 3);
        let parsed: Vec<_> = ls.iter().map(|l| parse_line(l).expect("parse")).collect();
        assert_eq!(parsed[0].prev, GENESIS_PREV);
        assert_eq!(parsed[1].prev, h1.hash);
        assert_eq!(parsed[2].prev, h2.hash, "resumed from the file's head");
        assert!(parsed.iter().all(|p| p.hash_matches()));
        assert_eq!(parsed[2].hash, h3.hash);
    }

    #[tokio::test]
    async fn file_is_created_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = AuditLog::open(AuditSink::File(path.clone()), store)
            .await
            .expect("open");
        log.append(record(1)).await.expect("append");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_file_with_records_and_an_empty_store_is_adopted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let first: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = AuditLog::open(AuditSink::File(path.clone()), first)
            .await
            .expect("open");
        let h = log.append(record(1)).await.expect("append");
        drop(log);

        let fresh: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = AuditLog::open(AuditSink::File(path.clone()), fresh.clone())
            .await
            .expect("open");
        assert_eq!(fresh.audit_head().await.expect("head"), Some(h.clone()));
        assert_eq!(log.append(record(2)).await.expect("append").seq, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_form_one_chain_and_each_answer_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = Arc::new(
            AuditLog::open(AuditSink::File(path.clone()), store.clone())
                .await
                .expect("open"),
        );
        let mut tasks = Vec::new();
        for i in 0..500u64 {
            let log = log.clone();
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                let h = log.append(record(i)).await.expect("append");
                // Answered means written: the caller's own line is already in the file.
                let text = std::fs::read_to_string(&path).expect("read");
                assert!(
                    text.contains(&h.hash),
                    "seq {} answered before written",
                    h.seq
                );
                h.seq
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.expect("join"));
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=500).collect::<Vec<_>>(), "one seq each, no gaps");
        let head = log.head().await.expect("head");
        assert_eq!(head.seq, 500);
        assert_eq!(store.audit_head().await.expect("store"), Some(head.clone()));
        let file = std::io::BufReader::new(std::fs::File::open(&path).expect("open"));
        let report = super::super::verify::verify(file, Some(&head)).expect("the chain verifies");
        assert_eq!(report.records, 500);
    }

    fn lease(id: &str) -> LeaseRecord {
        LeaseRecord {
            lease_id: id.to_owned(),
            role: "reader".into(),
            backend: "jwt".into(),
            subject: "system:serviceaccount:shop:api".into(),
            issuer: "https://kubernetes.default.svc".into(),
            issued_at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000),
            expires_at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_600),
            upstream_lease: None,
            fingerprint: "fp".into(),
            revoked_at: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leases_are_saved_with_their_group_and_a_duplicate_fails_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(
            crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db")).expect("store"),
        );
        let log = Arc::new(
            AuditLog::open(AuditSink::File(dir.path().join("audit.log")), store.clone())
                .await
                .expect("open"),
        );
        store.insert_lease(&lease("ls_taken")).await.expect("seed");
        let mut tasks = Vec::new();
        for i in 0..100u64 {
            let log = log.clone();
            let id = if i == 50 {
                "ls_taken".to_owned()
            } else {
                format!("ls_{i}")
            };
            tasks.push(tokio::spawn(async move {
                (
                    id.clone(),
                    log.append_with_lease(record(i), lease(&id)).await,
                )
            }));
        }
        let mut failed = Vec::new();
        for t in tasks {
            let (id, r) = t.await.expect("join");
            match r {
                Ok(_) => assert!(store.get_lease(&id).await.expect("get").is_some(), "{id}"),
                Err(e) => failed.push((id, e.to_string())),
            }
        }
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].1.contains("duplicate"), "{failed:?}");
        // Every record is in the chain (the duplicate's line was written before its lease
        // failed), and the store's head is the file's.
        let head = log.head().await.expect("head");
        assert_eq!(head.seq, 100);
        assert_eq!(store.audit_head().await.expect("store head"), Some(head));
    }

    #[tokio::test]
    async fn a_truncated_file_is_refused_with_both_heads_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = AuditLog::open(AuditSink::File(path.clone()), store.clone())
            .await
            .expect("open");
        for i in 1..=3 {
            log.append(record(i)).await.expect("append");
        }
        drop(log);
        let ls = lines(&path);
        std::fs::write(&path, format!("{}\n{}\n", ls[0], ls[1])).expect("truncate");

        let err = AuditLog::open(AuditSink::File(path.clone()), store.clone())
            .await
            .expect_err("must refuse");
        let msg = err.to_string();
        assert!(matches!(err, AuditError::ChainMismatch(_)), "{msg}");
        assert!(msg.contains("seq 2") && msg.contains("seq 3"), "{msg}");
        assert!(
            msg.contains("Restore") && msg.contains("move both aside"),
            "{msg}"
        );

        std::fs::write(&path, "").expect("empty");
        let err = AuditLog::open(AuditSink::File(path.clone()), store)
            .await
            .expect_err("must refuse");
        assert!(matches!(err, AuditError::ChainMismatch(_)), "{err}");
    }

    #[tokio::test]
    async fn a_store_one_step_behind_is_tolerated_but_a_foreign_head_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = AuditLog::open(AuditSink::File(path.clone()), store.clone())
            .await
            .expect("open");
        let h1 = log.append(record(1)).await.expect("append");
        let h2 = log.append(record(2)).await.expect("append");
        drop(log);
        // Crash between the file write and the store update.
        store.set_audit_head(&h1).await.expect("set");
        AuditLog::open(AuditSink::File(path.clone()), store.clone())
            .await
            .expect("store behind by one is fine");
        assert_eq!(store.audit_head().await.expect("head"), Some(h2));

        store
            .set_audit_head(&ChainHead {
                seq: 1,
                hash: "f".repeat(64),
            })
            .await
            .expect("set");
        assert!(matches!(
            AuditLog::open(AuditSink::File(path.clone()), store).await,
            Err(AuditError::ChainMismatch(_))
        ));
    }

    #[tokio::test]
    async fn an_incomplete_last_line_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        std::fs::write(&path, r#"{"seq":1,"prev":"#).expect("write");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let err = AuditLog::open(AuditSink::File(path), store)
            .await
            .expect_err("refuse");
        assert!(matches!(err, AuditError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("incomplete"), "{err}");
    }

    #[tokio::test]
    async fn the_audit_file_never_holds_the_credential() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let fp = Fingerprinter::load(store.as_ref()).await.expect("fp");
        let planted = "sk-live-PLANTED-5ecr3t-value";
        let data = BTreeMap::from([("token".to_owned(), Secret::new(planted))]);
        let log = AuditLog::open(AuditSink::File(path.clone()), store.clone())
            .await
            .expect("open");
        for i in 1..=3 {
            let rec = AuditRecord {
                fingerprint: Some(fp.fingerprint(&data)),
                ..record(i)
            };
            log.append(rec).await.expect("append");
        }
        let content = std::fs::read_to_string(&path).expect("read");
        assert_eq!(content.lines().count(), 3);
        assert!(content.contains("hmac-sha256:"));
        assert!(!content.contains(planted));
        assert!(!content.contains("PLANTED"));
    }

    #[tokio::test]
    async fn fingerprints_are_stable_keyed_and_unambiguous() {
        let store = MemoryStore::new();
        let fp = Fingerprinter::load(&store).await.expect("load");
        let again = Fingerprinter::load(&store).await.expect("load");
        let other_key = Fingerprinter::load(&MemoryStore::new())
            .await
            .expect("load");
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, Secret> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Secret::new(*v)))
                .collect()
        };
        let a = m(&[("token", "abc")]);
        let f = fp.fingerprint(&a);
        assert!(f.starts_with("hmac-sha256:"), "{f}");
        assert_eq!(f.len(), "hmac-sha256:".len() + 32);
        assert!(
            f["hmac-sha256:".len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
        assert_eq!(f, fp.fingerprint(&a), "same data, same fingerprint");
        assert_eq!(f, again.fingerprint(&a), "key persists in the store");
        assert_ne!(f, fp.fingerprint(&m(&[("token", "abd")])));
        assert_ne!(f, other_key.fingerprint(&a), "different key");
        // Different splits of the same bytes must not collide.
        assert_ne!(
            fp.fingerprint(&m(&[("ab", "c")])),
            fp.fingerprint(&m(&[("a", "bc")]))
        );
        assert_ne!(
            fp.fingerprint(&m(&[("a", "b"), ("c", "d")])),
            fp.fingerprint(&m(&[("a", "bcd")]))
        );
        let key = store
            .local_secret(FINGERPRINT_SECRET_NAME, 32)
            .await
            .expect("key");
        // The fingerprint is 32 hex characters, so it cannot hold the 64-character key; a
        // 16-character run of it would only appear if the key leaked into the output. (No
        // check against the short value "abc": random hex holds it by chance ~1 run in 140.)
        assert!(!f.contains(&key.expose()[..16]));
        let debug = format!("{fp:?}");
        assert!(!debug.contains(&key.expose()[..16]), "{debug}");
    }
}
