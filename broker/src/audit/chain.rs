//! Hash chain, writer and sinks.
//!
//! [`AuditLog`] appends one line per record (format in [`super::line`]), flushing (and for
//! files, `fsync`ing) before it records the new chain head in the store; records that
//! arrive together are committed as a group (one write, one `fsync`, one head update). A file
//! sink is a series of segments ([`super::segment`]): when a write brings the current one to
//! `audit.segment_max_bytes`, the next group starts a new one with its header record.
//!
//! On open ([`super::resume`]) it finds the store's chain head in the file, keeps the
//! complete records that chain on from it, cuts only an incomplete record at the end (and
//! records that it did), and refuses to continue if the file does not hold the store's head,
//! so a truncated or replaced file is noticed at start rather than silently forked.
//!
//! A write that fails (a full disk) never stops the log for good: the file is cut back to
//! the end of its last complete group, the records of the failed group are refused (their
//! requests fail with a retryable 503 — nothing is answered without its record on disk),
//! [`AuditLog::writable`] says why (readiness), and the writer retries every
//! [`AuditOptions::retry_interval`]. The first write that succeeds again is an `audit_repair`
//! record saying how long the sink failed, how many records were refused and how many bytes
//! were cut.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use aws_lc_rs::hmac;
use lanyard::Secret;
use lanyard::clock::{Clock, SystemClock};

use super::AuditRecord;
use super::error::AuditError;
use super::line::{BuildError, GENESIS_PREV, build_line};
use super::resume::{self, Opened};
use super::segment;
use crate::store::{ChainHead, LeaseRecord, Store, StoreError, StoredLine};

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Standard output, one line per record.
    Stdout,
    /// A file, appended to (created with mode 0600): segment 0 of the log.
    File(PathBuf),
    /// The store (PostgreSQL): each process writes a chain of its own, its records saved in
    /// the same transaction as their leases and the chain's head, so replicas never
    /// contend for one head ([`Store::open_audit_chain`]).
    Store,
}

impl AuditSink {
    /// Parses the config value: `stdout`, `store` or a path.
    pub fn from_config(s: &str) -> Self {
        if s == "stdout" {
            Self::Stdout
        } else if s == "store" {
            Self::Store
        } else {
            Self::File(PathBuf::from(s))
        }
    }
}

/// Most records one write and `fsync` covers.
const MAX_BATCH: usize = 1024;

/// How the log is kept, beyond its sink.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Start a new segment once one reaches this size (0: never).
    pub segment_max_bytes: u64,
    /// How often a failed sink is retried.
    pub retry_interval: Duration,
    /// The clock for the times of the records the log writes itself.
    pub clock: Arc<dyn Clock>,
    /// Metrics of the sink's health.
    pub metrics: Option<SinkMetrics>,
    /// This process's replica id, which a [`AuditSink::Store`] chain is opened for and
    /// every record of it names.
    pub replica: String,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            segment_max_bytes: 0,
            retry_interval: Duration::from_secs(1),
            clock: Arc::new(SystemClock),
            metrics: None,
            replica: "rp_unnamed".to_owned(),
        }
    }
}

/// The sink's health metrics.
#[derive(Debug, Clone)]
pub struct SinkMetrics {
    /// `lanyard_audit_sink_writable`: 1 while the sink writes, 0 while it fails.
    pub writable: prometheus::IntGauge,
    /// `lanyard_audit_write_failures_total`: failed writes (each refuses its group).
    pub write_failures: prometheus::IntCounter,
    /// `lanyard_audit_segment`: the number of the segment being written.
    pub segment: prometheus::IntGauge,
    /// `lanyard_audit_group_records`: records per durable group.
    pub group_records: prometheus::Histogram,
    /// `lanyard_audit_stage_seconds{stage="write"}`: a group's write + sync.
    pub write: prometheus::Histogram,
    /// `lanyard_audit_stage_seconds{stage="save"}`: a group's store transaction.
    pub save: prometheus::Histogram,
    /// `lanyard_audit_wait_seconds`: from append to answer.
    pub wait: prometheus::Histogram,
}

/// Whether the sink can write, shared by the writer (which changes it only when it fails or
/// recovers) and readiness.
#[derive(Debug, Default)]
struct Health {
    failing: AtomicBool,
    error: std::sync::Mutex<String>,
}

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
    /// `lanyard_audit_wait_seconds`, when metrics are kept.
    wait: Option<prometheus::Histogram>,
    head: Arc<std::sync::Mutex<Option<ChainHead>>>,
    health: Arc<Health>,
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

/// The segment being written.
#[derive(Debug)]
struct SegmentOut {
    /// Segment 0's path.
    base: PathBuf,
    number: u64,
    file: Arc<std::fs::File>,
    /// Its length: the end of its last complete group.
    len: u64,
}

#[derive(Debug)]
enum Output {
    Stdout,
    File(SegmentOut),
    /// A chain kept in the store: its epoch and replica.
    Store {
        epoch: u64,
        replica: String,
    },
}

/// Why a write failed, and whether the file is back at the end of its last complete group.
struct WriteFailure {
    error: io::Error,
    /// Bytes of the failed write that were cut (0 for stdout, or when unknown).
    cut: u64,
    /// The file may still hold part of the failed write: cut it before writing again.
    dirty: bool,
}

/// Appends `lines` to `file` (whose complete content ends at `len`) and syncs; on failure
/// cuts the file back to `len`. Blocking.
fn append_file(file: &std::fs::File, len: u64, lines: &[u8]) -> Result<(), WriteFailure> {
    let written = (|| {
        let mut w: &std::fs::File = file;
        w.write_all(lines)?;
        file.sync_data()
    })();
    let Err(error) = written else {
        return Ok(());
    };
    match cut_back(file, len) {
        Ok(cut) => Err(WriteFailure {
            error,
            cut,
            dirty: false,
        }),
        Err(_) => Err(WriteFailure {
            error,
            cut: 0,
            dirty: true,
        }),
    }
}

/// Cuts `file` back to `len` and syncs; returns how many bytes were cut.
fn cut_back(file: &std::fs::File, len: u64) -> io::Result<u64> {
    let now = file.metadata()?.len();
    if now != len {
        file.set_len(len)?;
        file.sync_data()?;
    }
    Ok(now.saturating_sub(len))
}

fn write_stdout(lines: &[u8]) -> Result<(), WriteFailure> {
    let mut out = io::stdout().lock();
    out.write_all(lines)
        .and_then(|()| out.flush())
        .map_err(|error| WriteFailure {
            error,
            cut: 0,
            dirty: false,
        })
}

/// Creates segment `n` holding `header` (a line with its newline), synced with its directory
/// entry. On failure the new file is removed. Blocking.
fn create_segment(base: &std::path::Path, n: u64, header: &[u8]) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = segment::path(base, n);
    let made = (|| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        // Only our own failed attempt can have left a file under a new segment's name.
        file.set_len(0)?;
        let mut w: &std::fs::File = &file;
        w.write_all(header)?;
        file.sync_data()?;
        resume::sync_dir(&path)?;
        Ok(file)
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    made
}

impl AuditLog {
    /// Opens the sink with default options (no rotation), resumes the chain and starts the
    /// writer task (it ends when the log is dropped).
    pub async fn open(sink: AuditSink, store: Arc<dyn Store>) -> Result<Self, AuditError> {
        Self::open_with(sink, store, AuditOptions::default()).await
    }

    /// Opens the sink, resumes the chain ([`super::resume`]: an incomplete record at the end
    /// is cut and the cut recorded), and starts the writer task.
    pub async fn open_with(
        sink: AuditSink,
        store: Arc<dyn Store>,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        let store_head = store.audit_head().await?;
        let mut internal = Vec::new();
        let (out, head) = match sink {
            AuditSink::Stdout => (Output::Stdout, store_head),
            AuditSink::Store => {
                // A new chain for this process: nothing to resume, no one else writes it.
                let epoch = store
                    .open_audit_chain(&options.replica, options.clock.now())
                    .await?;
                tracing::info!(epoch, replica = %options.replica, "audit chain opened in the store");
                let replica = options.replica.clone();
                (Output::Store { epoch, replica }, None)
            }
            AuditSink::File(base) => {
                let opened: Opened = {
                    let base = base.clone();
                    let now = options.clock.now();
                    let store_head = store_head.clone();
                    tokio::task::spawn_blocking(move || resume::open(&base, store_head, now))
                        .await
                        .map_err(|e| io::Error::other(format!("audit open task failed: {e}")))??
                };
                if let Some(h) = &opened.adopt {
                    adopt(store.as_ref(), store_head.as_ref(), h, &opened).await?;
                }
                let now = options.clock.now();
                if let Some(previous) = &opened.needs_header {
                    internal.push(AuditRecord::segment_start(now, opened.number, previous));
                }
                if let Some(cut) = &opened.cut {
                    internal.push(AuditRecord::tail_cut(
                        now,
                        &cut.file,
                        cut.bytes,
                        cut.unwritten,
                    ));
                }
                if let Some(m) = &options.metrics {
                    m.segment
                        .set(i64::try_from(opened.number).unwrap_or(i64::MAX));
                }
                let out = Output::File(SegmentOut {
                    base,
                    number: opened.number,
                    file: Arc::new(opened.file),
                    len: opened.len,
                });
                (out, opened.head)
            }
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(std::sync::Mutex::new(head.clone()));
        let health = Arc::new(Health::default());
        let (recorder, written) = tokio::sync::mpsc::unbounded_channel();
        let wait = options.metrics.as_ref().map(|m| m.wait.clone());
        let save = options.metrics.as_ref().map(|m| m.save.clone());
        // A file replays the leases of its records at start: its groups may be saved
        // without the store's own sync (`Store::record_replayable_group`).
        let replayable = matches!(out, Output::File(_));
        if let Some(m) = &options.metrics {
            m.writable.set(1);
        }
        let mut writer = Writer {
            store: store.clone(),
            out: Some(out),
            head,
            shared: shared.clone(),
            recorder,
            internal,
            failure: None,
            health: health.clone(),
            options,
        };
        tokio::spawn(record(store, written, save, replayable));
        if !writer.internal.is_empty() {
            // The log's own records (a segment's header, a cut) before anything else.
            writer.commit(&mut Vec::new()).await;
        }
        tokio::spawn(writer.run(rx));
        Ok(Self {
            tx,
            wait,
            head: shared,
            health,
        })
    }

    /// The current chain head (`None` before the first record).
    pub async fn head(&self) -> Option<ChainHead> {
        self.head
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// `Ok` while the sink writes; `Err` says why it cannot (records are then refused until
    /// it recovers, which the writer retries by itself).
    pub fn writable(&self) -> Result<(), String> {
        if !self.health.failing.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(self
            .health
            .error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone())
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
        let waiting = self.wait.clone().map(|h| (h, std::time::Instant::now()));
        async move {
            let ended = || {
                AuditError::Io(io::Error::other(
                    "the audit writer task ended before answering",
                ))
            };
            if !queued {
                return Err(ended());
            }
            let answered = answer.await.unwrap_or_else(|_| Err(ended()));
            if let Some((h, since)) = waiting {
                h.observe(since.elapsed().as_secs_f64());
            }
            answered
        }
    }
}

/// A caller whose line is written: where to answer, its line's head, the lease to save.
type Caller = (
    tokio::sync::oneshot::Sender<Result<ChainHead, AuditError>>,
    ChainHead,
    Option<LeaseRecord>,
);

/// The sink is failing: since when, why, and what it cost so far.
#[derive(Debug)]
struct Failure {
    since: SystemTime,
    error: String,
    /// Records refused since.
    refused: u64,
    /// Bytes of failed writes cut since.
    cut: u64,
    /// The file may hold part of a failed write (cutting it back failed too).
    dirty: bool,
    /// No write is tried before this.
    next_try: tokio::time::Instant,
}

/// The writer task's state: it chains and writes groups; a second task (the recorder)
/// saves each written group's leases and head in the store and answers its callers, so the
/// next group's `write` + `fsync` overlaps the previous group's store transaction.
struct Writer {
    /// Where a [`Output::Store`] group is saved.
    store: Arc<dyn Store>,
    /// `None` only while a blocking write holds it.
    out: Option<Output>,
    head: Option<ChainHead>,
    shared: Arc<std::sync::Mutex<Option<ChainHead>>>,
    /// Written, durable groups (never empty) on their way to the store.
    recorder: tokio::sync::mpsc::UnboundedSender<Vec<Caller>>,
    /// The log's own records, written first with the next group: a segment's header, a cut.
    internal: Vec<AuditRecord>,
    failure: Option<Failure>,
    health: Arc<Health>,
    options: AuditOptions,
}

impl Writer {
    async fn run(mut self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let retry = self.failure.as_ref().map(|f| f.next_try);
            tokio::select! {
                biased;
                n = rx.recv_many(&mut batch, MAX_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.commit(&mut batch).await;
                }
                () = async {
                    match retry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Nothing is waiting: try to recover so readiness comes back by itself.
                    self.commit(&mut Vec::new()).await;
                }
            }
        }
    }

    /// Chains, writes and syncs one group (after the log's own records, and after starting
    /// a new segment when the current one is full), then hands it to the recorder. While the
    /// sink fails, a group is refused at once unless a retry is due.
    async fn commit(&mut self, batch: &mut Vec<Pending>) {
        if let Some(f) = &mut self.failure {
            if tokio::time::Instant::now() < f.next_try {
                f.refused += batch.len() as u64;
                let error = f.error.clone();
                for p in batch.drain(..) {
                    let _ = p.done.send(Err(AuditError::Unavailable(error.clone())));
                }
                return;
            }
            if f.dirty {
                let cut = self.cut_back().await;
                let Some(f) = &mut self.failure else { return };
                match cut {
                    Ok(bytes) => {
                        f.cut += bytes;
                        f.dirty = false;
                    }
                    Err(e) => {
                        f.refused += batch.len() as u64;
                        f.next_try = tokio::time::Instant::now() + self.options.retry_interval;
                        let error =
                            format!("{}; cutting the failed write back failed: {e}", f.error);
                        for p in batch.drain(..) {
                            let _ = p.done.send(Err(AuditError::Unavailable(error.clone())));
                        }
                        return;
                    }
                }
            }
        }
        self.rotate_if_full().await;
        let mut own: Vec<AuditRecord> = self.internal.clone();
        if let Some(f) = &self.failure {
            own.push(AuditRecord::sink_recovered(
                self.options.clock.now(),
                f.since,
                &f.error,
                f.refused,
                f.cut,
            ));
        }
        if own.is_empty() && batch.is_empty() {
            return;
        }
        let mut buf = String::new();
        let mut head = self.head.clone();
        let mut callers = Vec::with_capacity(batch.len() + own.len());
        // A chain in the store keeps each line apart, and every record names its chain.
        let in_store = match &self.out {
            Some(Output::Store { epoch, replica }) => Some((*epoch, replica.clone())),
            _ => None,
        };
        let mut stored: Vec<StoredLine> = Vec::new();
        let mut chain = |rec: &AuditRecord| -> Result<ChainHead, BuildError> {
            let (seq, prev) = match &head {
                Some(h) => (h.seq + 1, h.hash.clone()),
                None => (1, GENESIS_PREV.to_owned()),
            };
            let h = if let Some((epoch, replica)) = &in_store {
                let mut rec = rec.clone();
                rec.replica = Some(replica.clone());
                rec.epoch = Some(*epoch);
                let (line, hash) = build_line(seq, &prev, &rec)?;
                let h = ChainHead { seq, hash };
                stored.push(StoredLine {
                    head: h.clone(),
                    line,
                });
                h
            } else {
                let (line, hash) = build_line(seq, &prev, rec)?;
                buf.push_str(&line);
                buf.push('\n');
                ChainHead { seq, hash }
            };
            head = Some(h.clone());
            Ok(h)
        };
        for rec in &own {
            match chain(rec) {
                // Nobody waits for the log's own records: their answer is dropped.
                Ok(h) => callers.push((tokio::sync::oneshot::channel().0, h, None)),
                Err(e) => tracing::error!(error = %e, "cannot build the audit log's own record"),
            }
        }
        let mut refused = 0u64;
        for p in batch.drain(..) {
            match chain(&p.rec) {
                Ok(h) => {
                    callers.push((p.done, h, p.lease));
                    refused += 1;
                }
                Err(e) => {
                    let _ = p.done.send(Err(AuditError::Record(e)));
                }
            }
        }
        let Some(last) = head.filter(|_| !callers.is_empty()) else {
            return;
        };
        let started = std::time::Instant::now();
        let written = match in_store {
            Some((epoch, _)) => self.save(epoch, &stored, &callers).await.map(Some),
            None => self.write(buf.into_bytes()).await.map(|()| None),
        };
        if let Some(m) = &self.options.metrics {
            m.write.observe(started.elapsed().as_secs_f64());
            m.group_records.observe(callers.len() as f64);
        }
        let saved = match written {
            Ok(saved) => saved,
            Err(failed) => {
                // Every record of the group is refused (the log's own are written again later).
                self.fail(failed, refused);
                let error = self
                    .failure
                    .as_ref()
                    .map(|f| f.error.clone())
                    .unwrap_or_default();
                for (done, _, _) in callers {
                    let _ = done.send(Err(AuditError::Unavailable(error.clone())));
                }
                return;
            }
        };
        self.internal.clear();
        if let Some(f) = self.failure.take() {
            tracing::warn!(
                since = %lanyard::clock::rfc3339(f.since),
                refused = f.refused,
                cut_bytes = f.cut,
                "the audit sink writes again; readiness restored"
            );
            self.health.failing.store(false, Ordering::Release);
            if let Some(m) = &self.options.metrics {
                m.writable.set(1);
            }
        }
        self.head = Some(last.clone());
        *self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(last);
        if let Some(results) = saved {
            // Saved with their leases already: answer now.
            answer(callers, results);
            return;
        }
        if let Err(tokio::sync::mpsc::error::SendError(callers)) = self.recorder.send(callers) {
            for (done, _, _) in callers {
                let _ = done.send(Err(AuditError::Io(io::Error::other(
                    "the audit recorder task ended before saving the group",
                ))));
            }
        }
    }

    /// Enters (or stays in) the failing state after a failed write of `refused` records.
    fn fail(&mut self, failed: WriteFailure, refused: u64) {
        let next_try = tokio::time::Instant::now() + self.options.retry_interval;
        if let Some(m) = &self.options.metrics {
            m.write_failures.inc();
            m.writable.set(0);
        }
        let error = failed.error.to_string();
        match &mut self.failure {
            Some(f) => {
                f.refused += refused;
                f.cut += failed.cut;
                f.dirty = failed.dirty;
                f.next_try = next_try;
                f.error = error.clone();
            }
            None => {
                tracing::error!(
                    error = %error,
                    "the audit sink cannot write: refusing requests (503, retryable) and not ready until it recovers; retrying"
                );
                self.failure = Some(Failure {
                    since: self.options.clock.now(),
                    error: error.clone(),
                    refused,
                    cut: failed.cut,
                    dirty: failed.dirty,
                    next_try,
                });
            }
        }
        *self
            .health
            .error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = format!("cannot write: {error}");
        self.health.failing.store(true, Ordering::Release);
    }

    /// Saves a group of a chain kept in the store: its lines, their leases and the new head
    /// in one transaction. Nothing is saved on failure, so the chain stays where it was.
    async fn save(
        &self,
        epoch: u64,
        lines: &[StoredLine],
        callers: &[Caller],
    ) -> Result<Vec<Result<(), StoreError>>, WriteFailure> {
        let leases: Vec<LeaseRecord> = callers.iter().filter_map(|(_, _, l)| l.clone()).collect();
        self.store
            .record_audit_lines(epoch, self.head.as_ref(), lines, &leases)
            .await
            .map_err(|e| WriteFailure {
                error: io::Error::other(e.to_string()),
                cut: 0,
                dirty: false,
            })
    }

    /// Writes `buf` to the output, off the async threads.
    async fn write(&mut self, buf: Vec<u8>) -> Result<(), WriteFailure> {
        let Some(out) = self.out.take() else {
            return Err(WriteFailure {
                error: io::Error::other("the audit output was lost by an earlier failed task"),
                cut: 0,
                dirty: false,
            });
        };
        let n = buf.len() as u64;
        let joined = tokio::task::spawn_blocking(move || {
            let r = match &out {
                Output::Stdout => write_stdout(&buf),
                Output::File(s) => append_file(&s.file, s.len, &buf),
                Output::Store { .. } => Ok(()),
            };
            (out, r)
        })
        .await;
        match joined {
            Ok((mut out, r)) => {
                if r.is_ok()
                    && let Output::File(s) = &mut out
                {
                    s.len += n;
                }
                self.out = Some(out);
                r
            }
            Err(e) => Err(WriteFailure {
                error: io::Error::other(format!("audit write task failed: {e}")),
                cut: 0,
                dirty: true,
            }),
        }
    }

    /// Cuts the current segment back to the end of its last complete group.
    async fn cut_back(&mut self) -> io::Result<u64> {
        let Some(Output::File(s)) = &self.out else {
            return Ok(0);
        };
        let (file, len) = (s.file.clone(), s.len);
        tokio::task::spawn_blocking(move || cut_back(&file, len))
            .await
            .map_err(|e| io::Error::other(format!("audit cut task failed: {e}")))?
    }

    /// Starts the next segment when the current one reached `segment_max_bytes`. A failure
    /// is logged and the current segment kept (tried again with the next group).
    async fn rotate_if_full(&mut self) {
        let max = self.options.segment_max_bytes;
        let Some(Output::File(s)) = &self.out else {
            return;
        };
        if max == 0 || s.len < max || self.failure.is_some() {
            return;
        }
        let next = s.number + 1;
        let previous = segment::path(&s.base, s.number)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rec = AuditRecord::segment_start(self.options.clock.now(), next, &previous);
        let (seq, prev) = match &self.head {
            Some(h) => (h.seq + 1, h.hash.clone()),
            None => (1, GENESIS_PREV.to_owned()),
        };
        let (line, hash) = match build_line(seq, &prev, &rec) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a segment header");
                return;
            }
        };
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        let base = s.base.clone();
        let len = bytes.len() as u64;
        let made = tokio::task::spawn_blocking(move || create_segment(&base, next, &bytes))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(format!("audit rotate task failed: {e}"))));
        let file = match made {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, segment = next, "cannot start a new audit segment; writing on in the current one");
                return;
            }
        };
        if let Some(Output::File(s)) = &mut self.out {
            s.number = next;
            s.file = Arc::new(file);
            s.len = len;
        }
        if let Some(m) = &self.options.metrics {
            m.segment.set(i64::try_from(next).unwrap_or(i64::MAX));
        }
        let h = ChainHead { seq, hash };
        self.head = Some(h.clone());
        *self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(h.clone());
        let _ = self
            .recorder
            .send(vec![(tokio::sync::oneshot::channel().0, h, None)]);
        tracing::info!(segment = next, "audit segment started");
    }
}

/// The recorder task: saves written groups in order. Groups that queued up while the store
/// was busy are saved together, in one transaction with the newest head.
async fn record(
    store: Arc<dyn Store>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<Caller>>,
    save: Option<prometheus::Histogram>,
    replayable: bool,
) {
    let mut groups = Vec::new();
    while rx.recv_many(&mut groups, MAX_BATCH).await > 0 {
        let callers: Vec<Caller> = groups.drain(..).flatten().collect();
        // The newest line's head is the group's.
        let Some(head) = callers.last().map(|(_, h, _)| h.clone()) else {
            continue;
        };
        // The lines are durable; save the leases and the new head in one store
        // transaction. A failure leaves the store behind the file, which the next open
        // tolerates (the records after the store's head chain on from it); the callers
        // whose lease was not saved get the error.
        let leases: Vec<LeaseRecord> = callers.iter().filter_map(|(_, _, l)| l.clone()).collect();
        let started = std::time::Instant::now();
        let saved = if replayable {
            store.record_replayable_group(&leases, &head).await
        } else {
            store.record_group(&leases, &head).await
        };
        if let Some(h) = &save {
            h.observe(started.elapsed().as_secs_f64());
        }
        match saved {
            Ok(results) => answer(callers, results),
            Err(e) => {
                for (done, _, _) in callers {
                    let _ = done.send(Err(AuditError::Store(e.clone())));
                }
            }
        }
    }
}

/// Leases replayed per store transaction at start.
const REPLAY_CHUNK: usize = 1024;

/// Saves the head the store adopts at start (the file's last record: the store was empty or
/// behind), with the running leases of the records after the store's old head — the rows
/// of issuance groups whose commit a power cut undid. The head moves with the last chunk
/// only, so a stop midway replays again at the next start; a lease already saved is a
/// duplicate and left as it is.
async fn adopt(
    store: &dyn Store,
    old: Option<&ChainHead>,
    head: &ChainHead,
    opened: &Opened,
) -> Result<(), AuditError> {
    if opened.replay.is_empty() {
        store.set_audit_head(head).await?;
        return Ok(());
    }
    let chunks = opened.replay.chunks(REPLAY_CHUNK).count();
    let (mut replayed, mut present, mut refused) = (0u64, 0u64, Vec::new());
    for (i, chunk) in opened.replay.chunks(REPLAY_CHUNK).enumerate() {
        let at = if i + 1 == chunks {
            head
        } else {
            old.unwrap_or(head)
        };
        for result in store.record_group(chunk, at).await? {
            match result {
                Ok(()) => replayed += 1,
                Err(StoreError::Duplicate(_)) => present += 1,
                Err(e) => refused.push(e.to_string()),
            }
        }
    }
    tracing::warn!(
        replayed,
        already_saved = present,
        not_replayed = opened.replay_dropped + refused.len() as u64,
        first_refusal = refused.first().map(String::as_str).unwrap_or("-"),
        "saved the running leases of the audit records after the store's chain head (the store lost its last commits, or was restored from a backup)"
    );
    Ok(())
}

/// Answers each caller of a saved group: its lease's own outcome (in order), if it had one.
fn answer(callers: Vec<Caller>, results: Vec<Result<(), StoreError>>) {
    let mut results = results.into_iter();
    for (done, h, lease) in callers {
        let saved = match lease {
            Some(_) => results.next().unwrap_or(Ok(())),
            None => Ok(()),
        };
        let _ = done.send(saved.map(|()| h).map_err(AuditError::Store));
    }
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
    use std::path::Path;

    use super::super::line::parse_line;
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
            renew_step_secs: None,
            pod_uid: None,
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

    /// An `issue` record as the broker writes it for `lease`.
    fn issue_record(lease: &LeaseRecord) -> AuditRecord {
        let mut rec = AuditRecord::new(
            lanyard::clock::rfc3339(lease.issued_at),
            Event::Issue,
            Decision::Allow,
            "granted by rule shop",
        )
        .lease(lease);
        rec.expires_at = Some(lanyard::clock::rfc3339(lease.expires_at));
        rec
    }

    #[tokio::test]
    async fn running_leases_after_the_store_head_are_replayed_at_start() {
        // A power cut after issuance groups reached the file but before the store's commits
        // reached its disk: the store comes back at an older head without their leases.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let now = crate::issue::lifetime::whole_seconds(SystemClock.now());
        let running = |id: &str| LeaseRecord {
            issued_at: now,
            expires_at: now + Duration::from_secs(600),
            pod_uid: Some("pod-1".into()),
            renew_step_secs: Some(60),
            ..lease(id)
        };
        let (a, b, c) = (running("ls_a"), running("ls_b"), running("ls_c"));
        let expired = LeaseRecord {
            issued_at: now - Duration::from_secs(1_200),
            expires_at: now - Duration::from_secs(600),
            ..lease("ls_old")
        };
        let before: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = AuditLog::open(AuditSink::File(path.clone()), before.clone())
            .await
            .expect("open");
        let older_head = log.append(record(1)).await.expect("append");
        for l in [&a, &expired, &b, &c] {
            log.append_with_lease(issue_record(l), l.clone())
                .await
                .expect("append");
        }
        let file_head = log.head().await.expect("head");
        drop(log);

        let after: Arc<dyn Store> = Arc::new(MemoryStore::new());
        after.set_audit_head(&older_head).await.expect("head");
        after.insert_lease(&b).await.expect("one commit survived");
        let log = AuditLog::open(AuditSink::File(path.clone()), after.clone())
            .await
            .expect("reopen");
        assert_eq!(after.audit_head().await.expect("head"), Some(file_head));
        for l in [&a, &b, &c] {
            let saved = after.get_lease(&l.lease_id).await.expect("get");
            assert_eq!(
                saved.as_ref(),
                Some(l),
                "{} replayed as it was saved",
                l.lease_id
            );
        }
        assert_eq!(
            after.get_lease("ls_old").await.expect("get"),
            None,
            "an expired lease is not brought back"
        );
        // And the chain goes on from the file's head.
        let next = log.append(record(9)).await.expect("append");
        assert_eq!(next.seq, 6);
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

    /// Opens a log on `path` (segment 0) with `segment_max_bytes`.
    async fn open_log(path: &Path, store: &Arc<dyn Store>, segment_max_bytes: u64) -> AuditLog {
        AuditLog::open_with(
            AuditSink::File(path.to_owned()),
            store.clone(),
            AuditOptions {
                segment_max_bytes,
                ..AuditOptions::default()
            },
        )
        .await
        .expect("open")
    }

    /// `audit verify` over every segment from `path`, with the store's head.
    async fn verify_all(path: &Path, store: &Arc<dyn Store>) -> super::super::VerifyReport {
        let head = store.audit_head().await.expect("head");
        let segments = super::super::segment::open_from(path)
            .expect("open segments")
            .expect("consecutive");
        super::super::verify_segments(segments, head.as_ref()).expect("the chain verifies")
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open")
            .write_all(bytes)
            .expect("append");
    }

    #[tokio::test]
    async fn an_incomplete_last_record_is_cut_and_the_cut_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = open_log(&path, &store, 0).await;
        for i in 1..=3 {
            log.append(record(i)).await.expect("append");
        }
        drop(log);
        let before = lines(&path);
        // A write cut short by a crash or a full disk, then blocks left zeroed.
        let partial = br#"{"seq":4,"prev":"ab12"#;
        append_bytes(&path, partial);
        append_bytes(&path, &[0u8; 100]);

        let log = open_log(&path, &store, 0).await;
        let after = lines(&path);
        assert_eq!(after.len(), 4, "{after:?}");
        assert_eq!(&after[..3], &before[..], "no complete record was touched");
        let cut = parse_line(&after[3]).expect("the cut is a record");
        assert_eq!(cut.seq, 4);
        assert_eq!(cut.record.event, Event::AuditRepair);
        assert_eq!(cut.record.cut_bytes, Some(partial.len() as u64 + 100));
        assert!(
            cut.record
                .reason
                .contains(&format!("{} bytes of an incomplete record", partial.len()))
                && cut.record.reason.contains("100 bytes of unwritten"),
            "{}",
            cut.record.reason
        );
        // The store's head is the cut record (saved with its group); the chain goes on.
        assert_eq!(log.append(record(5)).await.expect("append").seq, 5);
        assert_eq!(verify_all(&path, &store).await.records, 5);
    }

    #[tokio::test]
    async fn a_log_that_is_only_a_partial_record_restarts_its_chain_with_the_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        std::fs::write(&path, r#"{"seq":1,"prev":"#).expect("write");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = open_log(&path, &store, 0).await;
        let ls = lines(&path);
        assert_eq!(ls.len(), 1);
        let p = parse_line(&ls[0]).expect("record");
        assert_eq!((p.seq, p.record.event), (1, Event::AuditRepair));
        assert_eq!(log.append(record(2)).await.expect("append").seq, 2);
    }

    #[tokio::test]
    async fn complete_records_after_the_store_head_are_kept_when_they_chain_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = open_log(&path, &store, 0).await;
        let h1 = log.append(record(1)).await.expect("append");
        log.append(record(2)).await.expect("append");
        let h3 = log.append(record(3)).await.expect("append");
        drop(log);
        // Written and synced, the store not yet told (a crash in between), and a partial
        // fourth write.
        store.set_audit_head(&h1).await.expect("set");
        append_bytes(&path, br#"{"seq":4"#);
        let log = open_log(&path, &store, 0).await;
        let ls = lines(&path);
        assert_eq!(
            ls.len(),
            4,
            "records 2 and 3 kept, the partial cut and recorded"
        );
        assert_eq!(parse_line(&ls[2]).expect("3").hash, h3.hash);
        assert_eq!(
            parse_line(&ls[3]).expect("cut").record.event,
            Event::AuditRepair
        );
        assert_eq!(log.head().await.expect("head").seq, 4);
        assert_eq!(verify_all(&path, &store).await.records, 4);
    }

    #[tokio::test]
    async fn a_complete_line_that_does_not_chain_on_is_refused_and_nothing_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = open_log(&path, &store, 0).await;
        let h1 = log.append(record(1)).await.expect("append");
        log.append(record(2)).await.expect("append");
        drop(log);
        store.set_audit_head(&h1).await.expect("set");
        // A well-formed record that does not follow the chain, then a partial line.
        let (forged, _) =
            super::super::line::build_line(3, &"c".repeat(64), &record(9)).expect("forge");
        append_bytes(&path, format!("{forged}\n{{\"seq\":4").as_bytes());
        let before = std::fs::read(&path).expect("read");
        let err = AuditLog::open(AuditSink::File(path.clone()), store.clone())
            .await
            .expect_err("refused");
        assert!(matches!(err, AuditError::Corrupt(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("line 3") && msg.contains("chain"), "{msg}");
        assert_eq!(std::fs::read(&path).expect("read"), before, "nothing cut");

        // A garbage complete last line is never cut either.
        std::fs::write(&path, b"not a record\n").expect("write");
        let err = AuditLog::open(AuditSink::File(path.clone()), Arc::new(MemoryStore::new()))
            .await
            .expect_err("refused");
        assert!(matches!(err, AuditError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("never a complete line"), "{err}");
        assert_eq!(std::fs::read(&path).expect("read"), b"not a record\n");
    }

    #[tokio::test]
    async fn a_file_without_the_store_head_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = open_log(&path, &store, 0).await;
        for i in 1..=3 {
            log.append(record(i)).await.expect("append");
        }
        drop(log);
        let ls = lines(&path);
        // Truncated to two records plus a partial third.
        let text = format!("{}\n{}\n{}", ls[0], ls[1], &ls[2][..30]);
        std::fs::write(&path, &text).expect("truncate");
        let err = AuditLog::open(AuditSink::File(path.clone()), store)
            .await
            .expect_err("refused");
        assert!(matches!(err, AuditError::ChainMismatch(_)), "{err}");
        assert!(
            err.to_string().contains("does not hold that record"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
    }

    #[tokio::test]
    async fn a_record_missing_only_its_newline_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = open_log(&path, &store, 0).await;
        let h1 = log.append(record(1)).await.expect("append");
        let h2 = log.append(record(2)).await.expect("append");
        drop(log);
        store.set_audit_head(&h1).await.expect("set");
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, text.trim_end_matches('\n')).expect("drop the newline");
        let log = open_log(&path, &store, 0).await;
        assert_eq!(log.head().await, Some(h2));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), text);
    }

    #[tokio::test]
    async fn segments_rotate_by_size_and_the_chain_runs_through_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = open_log(&path, &store, 2_000).await;
        for i in 1..=40 {
            log.append(record(i)).await.expect("append");
        }
        drop(log);
        let segments = super::super::segment::list(&path).expect("list");
        assert!(segments.len() >= 5, "{segments:?}");
        for (n, p) in &segments {
            let size = std::fs::metadata(p).expect("meta").len();
            let ls = lines(p);
            if *n > 0 {
                let header = parse_line(&ls[0]).expect("header");
                assert_eq!(header.record.event, Event::AuditSegment);
                assert_eq!(header.record.segment, Some(*n));
            }
            // A segment ends at the first group that reaches the size.
            if *n + 1 < segments.len() as u64 {
                assert!((2_000..3_000).contains(&size), "{n}: {size}");
            }
        }
        let report = verify_all(&path, &store).await;
        assert_eq!(report.records, 40 + segments.len() as u64 - 1);
        assert_eq!(report.segments, segments.len() as u64);
        // `audit query` follows the segments too.
        let mut issued = 0;
        let readers = super::super::segment::open_from(&path)
            .expect("open")
            .expect("ok");
        super::super::query_segments(
            readers,
            &super::super::Filter {
                event: Some(Event::Issue),
                ..Default::default()
            },
            &mut |_| issued += 1,
        )
        .expect("query");
        assert_eq!(issued, 40);

        // Reopened, the log goes on in the newest segment.
        let log = open_log(&path, &store, 2_000).await;
        log.append(record(41)).await.expect("append");
        drop(log);
        assert_eq!(verify_all(&path, &store).await.records, report.records + 1);

        // Verifying from a later segment (earlier ones removed by retention) checks from it.
        let from = super::super::segment::open_from(&segments[2].1)
            .expect("open")
            .expect("ok");
        let head = store.audit_head().await.expect("head");
        let later = super::super::verify_segments(from, head.as_ref()).expect("verifies");
        assert!(later.first_seq.expect("first") > 1);
    }

    #[tokio::test]
    async fn a_missing_or_swapped_segment_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = open_log(&path, &store, 1_500).await;
        for i in 1..=30 {
            log.append(record(i)).await.expect("append");
        }
        drop(log);
        let seg = |n| super::super::segment::path(&path, n);
        assert!(seg(3).exists());
        let verify_err = || {
            let readers = super::super::segment::open_from(&path).expect("open");
            match readers {
                Err(missing) => missing,
                Ok(r) => super::super::verify_segments(r, None)
                    .expect_err("must fail")
                    .to_string(),
            }
        };
        // Swapped: 1 and 2 exchange names.
        std::fs::rename(seg(1), dir.path().join("x")).expect("mv");
        std::fs::rename(seg(2), seg(1)).expect("mv");
        std::fs::rename(dir.path().join("x"), seg(2)).expect("mv");
        let e = verify_err();
        assert!(
            e.contains("audit.log.000001")
                && e.contains("does not begin with its audit_segment record"),
            "{e}"
        );
        // Missing: 2 removed.
        std::fs::remove_file(seg(2)).expect("rm");
        let e = verify_err();
        assert!(e.contains("audit.log.000002 is missing"), "{e}");
    }

    #[tokio::test]
    async fn a_new_segment_left_empty_by_a_crash_gets_its_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = open_log(&path, &store, 0).await;
        for i in 1..=3 {
            log.append(record(i)).await.expect("append");
        }
        drop(log);
        // The broker stopped after creating segment 1 and before its header was written;
        // the new file holds a partial header and pre-allocated space.
        let one = super::super::segment::path(&path, 1);
        std::fs::write(&one, [b"{\"seq\":4".as_slice(), &[0u8; 64]].concat()).expect("write");
        let log = open_log(&path, &store, 0).await;
        let ls = lines(&one);
        assert_eq!(ls.len(), 2, "{ls:?}");
        let header = parse_line(&ls[0]).expect("header");
        assert_eq!((header.seq, header.record.event), (4, Event::AuditSegment));
        assert_eq!(
            parse_line(&ls[1]).expect("cut").record.event,
            Event::AuditRepair
        );
        log.append(record(6)).await.expect("append");
        assert_eq!(verify_all(&path, &store).await.records, 6);
    }

    #[tokio::test]
    async fn unwritten_nul_space_at_the_end_is_not_tampering() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let log = open_log(&path, &store, 1_500).await;
        for i in 1..=20 {
            log.append(record(i)).await.expect("append");
        }
        drop(log);
        let segments = super::super::segment::list(&path).expect("list");
        let (_, newest) = segments.last().expect("newest");
        // A segment allocated ahead: zero-filled space after its last record.
        append_bytes(newest, &vec![0u8; 200_000]);
        let report = verify_all(&path, &store).await;
        assert_eq!(report.unwritten_bytes, 200_000);
        assert_eq!(report.incomplete_tail_bytes, 0);
        // The same space in a sealed segment is tampering.
        append_bytes(&segments[0].1, &[0u8; 10]);
        let readers = super::super::segment::open_from(&path)
            .expect("open")
            .expect("ok");
        let f = super::super::verify_segments(readers, None).expect_err("sealed segment");
        assert!(
            f.problem.contains("does not end with a complete line"),
            "{f}"
        );
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
