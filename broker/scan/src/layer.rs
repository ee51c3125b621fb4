//! Reading one layer: the decompressor its magic bytes call for (gzip, zstd, plain), a
//! streaming tar walk, content scanning in overlapping chunks, nested archives, whiteouts,
//! bounds and digest checks. Runs on a blocking thread; memory is a few chunk buffers per layer
//! whatever the layer's size, plus the current file's bytes for the vendor pass (at most
//! `vendor::MAX_HASHED_FILE_BYTES`, or `vendor::MAX_RECORD_FILE_BYTES` for a package record).

use std::collections::HashSet;
use std::io::{self, Cursor, Read};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::options::{Limits, Progress};
use crate::report::{Finding, Location};
use crate::rules::{Confidence, RuleDef, RuleSet, Severity, is_package_path, is_test_material};
use crate::tar::{EntryKind, TarLimits, TarReader};
use crate::util::{
    Compression, DigestAlgorithm, detect, looks_like_tar, normalize_path, read_full,
};
use crate::vendor::{self, FileHashes, HashedFile, LayerVendor, RecordFile, ValueKey};

/// A whiteout seen in a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whiteout {
    /// Layer holding the whiteout.
    pub layer: usize,
    /// Deleted path (`.wh.name`) or the directory made opaque (`.wh..wh..opq`).
    pub path: String,
    /// Opaque: every lower-layer entry under `path` is hidden, not `path` itself.
    pub opaque: bool,
}

/// Is `path` from `layer` deleted by a whiteout in a later layer? Pure.
pub fn deleted_later(layer: usize, path: &str, whiteouts: &[Whiteout]) -> bool {
    let path = path.split("!/").next().unwrap_or(path);
    whiteouts.iter().any(|w| {
        w.layer > layer
            && if w.opaque {
                w.path.is_empty() || path.starts_with(&format!("{}/", w.path))
            } else {
                path == w.path || path.starts_with(&format!("{}/", w.path))
            }
    })
}

/// Per-image shared counters and stop flags; layers run in parallel against one budget.
#[derive(Debug)]
pub(crate) struct Budget {
    pub limits: Limits,
    pub decompressed: AtomicU64,
    pub compressed: AtomicU64,
    pub entries: AtomicU64,
    pub files: AtomicU64,
    /// Findings kept so far (config and layers), against [`Limits::max_findings`].
    pub findings: AtomicU64,
    /// `info` findings kept so far, against [`MAX_LISTED_INFO_FINDINGS`].
    pub info_findings: AtomicU64,
    /// `info` findings past [`MAX_LISTED_INFO_FINDINGS`]: counted, not kept.
    pub info_not_listed: AtomicU64,
    /// Bytes of package record files kept for the vendor pass, against
    /// [`vendor::MAX_RECORD_BYTES_PER_IMAGE`].
    pub record_bytes: AtomicU64,
    pub exceeded: Mutex<Option<String>>,
    /// Set when the scan future is dropped or times out.
    pub cancel: Arc<AtomicBool>,
    /// The caller's cancel token.
    pub user_cancel: Arc<AtomicBool>,
    pub progress: Option<Arc<dyn Progress>>,
    /// Threads that scan a layer's small files while its tar stream is walked (0: the walk
    /// scans every file itself). See [`scan_layer`].
    pub file_workers: usize,
    /// Whether a layer is decoded on a thread of its own (false: one thread does everything,
    /// and `file_workers` is not used — for the fuzz target, where no thread may outlive an
    /// input).
    pub layer_threads: bool,
}

impl Budget {
    pub(crate) fn new(
        limits: Limits,
        cancel: Arc<AtomicBool>,
        user_cancel: Arc<AtomicBool>,
        progress: Option<Arc<dyn Progress>>,
    ) -> Self {
        Budget {
            limits,
            decompressed: AtomicU64::new(0),
            compressed: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            files: AtomicU64::new(0),
            findings: AtomicU64::new(0),
            info_findings: AtomicU64::new(0),
            info_not_listed: AtomicU64::new(0),
            record_bytes: AtomicU64::new(0),
            exceeded: Mutex::new(None),
            cancel,
            user_cancel,
            progress,
            file_workers: 0,
            layer_threads: true,
        }
    }

    /// The same budget with `n` file workers per layer.
    pub(crate) fn with_file_workers(mut self, n: usize) -> Self {
        self.file_workers = n;
        self
    }

    fn stop(&self, why: String) -> io::Error {
        let mut e = self.exceeded.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            *e = Some(why.clone());
        }
        io::Error::other(why)
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.user_cancel.load(Ordering::Relaxed)
    }

    fn stopped(&self) -> Option<String> {
        if self.cancelled() {
            return Some("scan cancelled".into());
        }
        self.exceeded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Counts decompressed bytes against the budget; stops on cancellation.
struct Counting<'a, R> {
    inner: R,
    budget: &'a Budget,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.budget.cancelled() {
            return Err(self.budget.stop("scan cancelled".into()));
        }
        let n = self.inner.read(buf)?;
        let total = self
            .budget
            .decompressed
            .fetch_add(n as u64, Ordering::Relaxed)
            + n as u64;
        if total > self.budget.limits.max_decompressed_bytes {
            return Err(self.budget.stop(format!(
                "decompressed more than {} bytes (limit max_decompressed_bytes; a decompression bomb, or raise the limit)",
                self.budget.limits.max_decompressed_bytes
            )));
        }
        Ok(n)
    }
}

/// Counts raw blob bytes for progress and stats.
pub(crate) struct RawCounting<'a, R> {
    pub inner: R,
    pub budget: &'a Budget,
}

impl<R: Read> Read for RawCounting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.budget
            .compressed
            .fetch_add(n as u64, Ordering::Relaxed);
        if let Some(p) = &self.budget.progress {
            p.advance(n as u64);
        }
        Ok(n)
    }
}

/// Sets a flag when the wrapped stream fails, so a failure of the layer stream can be told
/// apart from a failure of a nested archive.
struct Tripwire<R> {
    inner: R,
    tripped: Arc<AtomicBool>,
}

impl<R: Read> Read for Tripwire<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| {
            self.tripped.store(true, Ordering::Relaxed);
        })
    }
}

/// The digest (under one algorithm) of everything read through it — or, without an algorithm
/// (nothing to check the digest against), just the reads.
pub(crate) struct Hashing<R> {
    inner: R,
    ctx: Option<(DigestAlgorithm, aws_lc_rs::digest::Context)>,
    result: Arc<Mutex<Option<String>>>,
}

impl<R> Hashing<R> {
    pub(crate) fn new(
        inner: R,
        alg: Option<DigestAlgorithm>,
    ) -> (Self, Arc<Mutex<Option<String>>>) {
        let result = Arc::new(Mutex::new(None));
        (
            Hashing {
                inner,
                ctx: alg.map(|a| (a, aws_lc_rs::digest::Context::new(a.provider()))),
                result: result.clone(),
            },
            result,
        )
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            if let Some((alg, ctx)) = self.ctx.take() {
                let d = ctx.finish();
                *self.result.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("{}:{}", alg.name(), hex::encode(d.as_ref())));
            }
        } else if let Some((_, ctx)) = &mut self.ctx {
            ctx.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// A reader that can tell whether its source is at its end without losing a byte.
struct PeekReader<R> {
    inner: R,
    peeked: Option<u8>,
}

impl<R: Read> PeekReader<R> {
    fn at_eof(&mut self) -> io::Result<bool> {
        if self.peeked.is_some() {
            return Ok(false);
        }
        let mut b = [0u8; 1];
        if read_full(&mut self.inner, &mut b)? == 0 {
            return Ok(true);
        }
        self.peeked = Some(b[0]);
        Ok(false)
    }
}

impl<R: Read> Read for PeekReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(b) = self.peeked.take() {
            buf[0] = b;
            return Ok(1);
        }
        self.inner.read(buf)
    }
}

/// Reads every zstd frame of a stream, skipping skippable frames (zstd:chunked metadata).
struct ZstdFrames<R> {
    src: PeekReader<R>,
    decoder: ruzstd::decoding::FrameDecoder,
    active: bool,
}

impl<R: Read> ZstdFrames<R> {
    fn new(src: R) -> Self {
        ZstdFrames {
            src: PeekReader {
                inner: src,
                peeked: None,
            },
            decoder: ruzstd::decoding::FrameDecoder::new(),
            active: false,
        }
    }
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::BlockDecodingStrategy;
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.active {
                let d = &mut self.decoder;
                while d.can_collect() < buf.len() && !d.is_finished() {
                    let want = buf.len() - d.can_collect();
                    d.decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBytes(want))
                        .map_err(|e| io::Error::other(format!("zstd: {e}")))?;
                }
                let n = d.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                if !d.is_finished() {
                    return Err(io::Error::other("zstd: decoder made no progress"));
                }
                self.active = false;
            }
            if self.src.at_eof()? {
                return Ok(0);
            }
            match self.decoder.init(&mut self.src) {
                Ok(()) => self.active = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = io::copy(
                        &mut (&mut self.src).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                    if skipped < u64::from(length) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "zstd: truncated skippable frame",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::other(format!("zstd: {e}"))),
            }
        }
    }
}

/// Wraps `r` in the decoder its first bytes call for.
fn decoder<'a, R: Read + 'a>(mut r: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut head = [0u8; 6];
    let n = read_full(&mut r, &mut head)?;
    let comp = detect(&head[..n]);
    let chained = Cursor::new(head[..n].to_vec()).chain(r);
    let boxed: Box<dyn Read + 'a> = match comp {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(chained)),
        Compression::Zstd => Box::new(ZstdFrames::new(chained)),
        Compression::None => Box::new(chained),
        Compression::Unsupported(name) => {
            return Err(io::Error::other(format!(
                "{name}-compressed data is not supported (gzip, zstd or plain tar only)"
            )));
        }
    };
    Ok((comp, boxed))
}

/// What the caller knows about one layer.
#[derive(Debug, Clone)]
pub(crate) struct LayerInfo {
    pub index: usize,
    pub digest: String,
    pub history_step: Option<usize>,
    /// Expected digest (sha256 or sha512) of the raw blob (OCI descriptors, registry).
    pub verify_raw: Option<String>,
    /// Expected digest of the decompressed tar (docker-archive diff_ids).
    pub verify_decoded: Option<String>,
}

/// The outcome of scanning one layer.
#[derive(Debug, Default)]
pub(crate) struct LayerResult {
    pub findings: Vec<Finding>,
    /// `keys[i]` is `findings[i]`'s value key (in memory only, for the `.pyc` de-duplication).
    pub keys: Vec<ValueKey>,
    /// Package records, symlinks and the digests of files with findings (the vendor pass).
    pub vendor: LayerVendor,
    pub whiteouts: Vec<Whiteout>,
    pub incomplete: Vec<String>,
    pub warnings: Vec<String>,
}

const CHUNK: usize = 1 << 20;
const OVERLAP: usize = 16 << 10;
const HEAD: usize = 8 << 10;
const MAX_LIST: usize = 50;

struct LayerCtx<'a> {
    rules: &'a RuleSet,
    budget: &'a Budget,
    info: &'a LayerInfo,
    out: LayerResult,
    buf: Vec<u8>,
    /// The current top-level file's bytes (up to a bound), for its digests or as a record.
    retained: Vec<u8>,
    outer_failed: Arc<AtomicBool>,
    /// Where the walk hands small top-level files to the file workers (none: it scans them).
    dispatch: Option<Dispatch>,
}

impl<'a> LayerCtx<'a> {
    fn new(rules: &'a RuleSet, budget: &'a Budget, info: &'a LayerInfo) -> Self {
        LayerCtx {
            rules,
            budget,
            info,
            out: LayerCtx::fresh_out(info),
            buf: Vec::with_capacity(CHUNK + OVERLAP),
            retained: Vec::new(),
            outer_failed: Arc::new(AtomicBool::new(false)),
            dispatch: None,
        }
    }

    fn fresh_out(info: &LayerInfo) -> LayerResult {
        LayerResult {
            vendor: LayerVendor {
                layer: info.index,
                ..LayerVendor::default()
            },
            ..LayerResult::default()
        }
    }
}

/// Top-level files at most this large are read whole and scanned by a file worker.
const WORKER_FILE_MAX: u64 = 1 << 20;

/// A top-level file for a file worker: its place in the layer, path and bytes.
struct FileJob {
    seq: u64,
    path: String,
    bytes: Vec<u8>,
}

/// What scanning one top-level file added, in the layer's file order.
struct FileDone {
    seq: u64,
    out: LayerResult,
    /// An error that ends the layer's walk (a limit reached, the scan cancelled).
    result: Result<(), String>,
}

/// The walk's side of the file workers.
struct Dispatch {
    jobs: Option<std::sync::mpsc::SyncSender<FileJob>>,
    /// File buffers the workers are done with, for the next files.
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    next_seq: u64,
    /// Files the walk scanned itself (too large to hand over), in order.
    own: Vec<FileDone>,
}

/// A file worker: scans the files it is handed, each into a result of its own.
fn file_worker(
    rules: &RuleSet,
    budget: &Budget,
    info: &LayerInfo,
    jobs: &Mutex<std::sync::mpsc::Receiver<FileJob>>,
    done: &std::sync::mpsc::Sender<FileDone>,
    spare: &std::sync::mpsc::Sender<Vec<u8>>,
) {
    let mut ctx = LayerCtx::new(rules, budget, info);
    loop {
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
        let Ok(job) = job else { return };
        let result = ctx
            .scan_file(Cursor::new(&job.bytes[..]), &job.path, 0)
            .map_err(|e| e.to_string());
        let out = std::mem::replace(&mut ctx.out, LayerCtx::fresh_out(info));
        let _ = spare.send(job.bytes);
        if done
            .send(FileDone {
                seq: job.seq,
                out,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Appends one file's result to the layer's, as the serial walk would have added it.
fn merge_file(into: &mut LayerResult, from: LayerResult) {
    into.findings.extend(from.findings);
    into.keys.extend(from.keys);
    into.vendor.records.extend(from.vendor.records);
    into.vendor.links.extend(from.vendor.links);
    into.vendor.hashed.extend(from.vendor.hashed);
    into.whiteouts.extend(from.whiteouts);
    for s in from.incomplete {
        if into.incomplete.len() < MAX_LIST {
            into.incomplete.push(s);
        }
    }
    for s in from.warnings {
        if into.warnings.len() < MAX_LIST {
            into.warnings.push(s);
        }
    }
}

/// Decoded bytes handed from a layer's decoding thread to its scanning thread at a time.
const DECODED_PIECE: usize = 256 << 10;
/// Pieces in flight between the two threads (bounds the memory a layer holds, whatever its
/// size: `DECODED_PIECE` × this).
const DECODED_QUEUE: usize = 4;

/// What a layer's decoding thread sends its scanning thread.
enum Decoded {
    /// The compression was recognised (or not: then the reason, and nothing follows).
    Started(Result<(), io::Error>),
    /// The next piece of the decompressed tar stream.
    Piece(Vec<u8>),
    /// Reading or decompressing failed; nothing follows.
    Failed(io::Error),
}

/// The scanning thread's end of the decoding thread's pieces: a reader of the decompressed
/// tar stream. The stream ends when the decoding thread is done (its digests then final).
struct Pieces {
    rx: std::sync::mpsc::Receiver<Decoded>,
    current: Vec<u8>,
    at: usize,
    /// Read pieces go back to the decoding thread for reuse (so the two threads pass the same
    /// few buffers around rather than allocate one per piece on one thread and free it on
    /// the other, which lets an allocator's per-thread caches grow).
    spent: std::sync::mpsc::Sender<Vec<u8>>,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.recv() {
                Ok(Decoded::Piece(p)) => {
                    let spent = std::mem::replace(&mut self.current, p);
                    if spent.capacity() > 0 {
                        let _ = self.spent.send(spent);
                    }
                    self.at = 0;
                }
                Ok(Decoded::Failed(e)) => return Err(e),
                Ok(Decoded::Started(_)) => {
                    return Err(io::Error::other("decoder protocol: started twice"));
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The digests a layer's decoding thread computes: the algorithms, and where each result
/// appears once the stream has been read to its end.
struct LayerDigests {
    /// `None` when there is no digest to check (then none is computed).
    raw_alg: Option<DigestAlgorithm>,
    decoded_alg: Option<DigestAlgorithm>,
    raw: Mutex<Option<DigestSlot>>,
    decoded: Mutex<Option<DigestSlot>>,
}

/// A layer blob's decompressed stream, counted against the budget, with the digests of the
/// blob and of the stream (each final once the stream has been read to its end).
type DigestSlot = Arc<Mutex<Option<String>>>;

/// What [`open_layer`] gives: the stream and the two digests' slots.
type OpenedLayer<'a> = (Hashing<Box<dyn Read + 'a>>, DigestSlot, DigestSlot);

fn open_layer<'a, R: Read + 'a>(
    blob: R,
    budget: &'a Budget,
    raw_alg: Option<DigestAlgorithm>,
    decoded_alg: Option<DigestAlgorithm>,
) -> io::Result<OpenedLayer<'a>> {
    let raw = RawCounting {
        inner: blob,
        budget,
    };
    let (raw, raw_digest) = Hashing::new(raw, raw_alg);
    let (_, decoded) = decoder(raw)?;
    let (decoded, decoded_digest) = Hashing::new(decoded, decoded_alg);
    Ok((decoded, raw_digest, decoded_digest))
}

/// The decoding half of a layer: reads the blob, hashes it, decompresses it, hashes the
/// result, and sends it on in pieces. Stops when the scanning half goes away.
fn decode_layer<R: Read>(
    blob: R,
    budget: &Budget,
    digests: &LayerDigests,
    tx: &std::sync::mpsc::SyncSender<Decoded>,
    spent: &std::sync::mpsc::Receiver<Vec<u8>>,
) {
    let (mut decoded, raw_result, decoded_result) =
        match open_layer(blob, budget, digests.raw_alg, digests.decoded_alg) {
            Ok(opened) => opened,
            Err(e) => {
                let _ = tx.send(Decoded::Started(Err(e)));
                return;
            }
        };
    *digests.raw.lock().unwrap_or_else(|p| p.into_inner()) = Some(raw_result);
    *digests.decoded.lock().unwrap_or_else(|p| p.into_inner()) = Some(decoded_result);
    if tx.send(Decoded::Started(Ok(()))).is_err() {
        return;
    }
    loop {
        if budget.cancelled() {
            let _ = tx.send(Decoded::Failed(budget.stop("scan cancelled".into())));
            return;
        }
        let mut piece = spent.try_recv().unwrap_or_default();
        piece.resize(DECODED_PIECE, 0);
        match read_full(&mut decoded, &mut piece) {
            Ok(0) => return,
            Ok(n) => {
                piece.truncate(n);
                if tx.send(Decoded::Piece(piece)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Decoded::Failed(e));
                return;
            }
        }
    }
}

/// Scans one layer blob. Never fails: problems become `incomplete` reasons (with whatever was
/// found before them) or, for nested archives, warnings.
///
/// Two threads share the work: one reads, hashes and decompresses the blob (what `zcat` does,
/// plus the digests), the other walks the tar stream and scans it, so a single large layer
/// keeps two cores busy. Between them at most `DECODED_QUEUE` pieces are in flight.
pub(crate) fn scan_layer<R: Read + Send>(
    blob: R,
    info: &LayerInfo,
    rules: &RuleSet,
    budget: &Budget,
) -> LayerResult {
    let mut ctx = LayerCtx::new(rules, budget, info);
    let layer = format!("layer {} ({})", info.index, info.digest);
    // The algorithm each expected digest names; one that names none is refused, never skipped.
    // No expected digest, no digest computed (an OCI layer's diff_id, say, is not checked).
    let algorithm = |expected: &Option<String>| match expected {
        None => Ok(None),
        Some(d) => DigestAlgorithm::of(d).map(Some),
    };
    let (raw_alg, decoded_alg) =
        match (algorithm(&info.verify_raw), algorithm(&info.verify_decoded)) {
            (Ok(r), Ok(d)) => (r, d),
            (Err(e), _) | (_, Err(e)) => {
                ctx.out
                    .incomplete
                    .push(format!("{layer}: {e}: the layer cannot be verified"));
                return ctx.out;
            }
        };
    if !budget.layer_threads {
        // One thread does it all, in order (the fuzz target's way: no thread outlives a run).
        let (decoded, raw_digest, decoded_digest) =
            match open_layer(blob, budget, raw_alg, decoded_alg) {
                Ok(opened) => opened,
                Err(e) => {
                    ctx.out.incomplete.push(format!("{layer}: {e}"));
                    return ctx.out;
                }
            };
        let (_, none) = std::sync::mpsc::channel();
        scan_decoded(
            &mut ctx,
            decoded,
            &layer,
            &raw_digest,
            &decoded_digest,
            Vec::new(),
            &none,
        );
        return ctx.out;
    }
    let digests = LayerDigests {
        raw_alg,
        decoded_alg,
        raw: Mutex::new(None),
        decoded: Mutex::new(None),
    };
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(DECODED_QUEUE);
        let (spent_tx, spent_rx) = std::sync::mpsc::channel();
        let digests = &digests;
        let decoding = std::thread::Builder::new()
            .name("lanyard-layer-decode".into())
            .spawn_scoped(scope, move || {
                decode_layer(blob, budget, digests, &tx, &spent_rx);
                drop(tx);
            });
        if let Err(e) = decoding {
            ctx.out
                .incomplete
                .push(format!("{layer}: cannot start a decoding thread: {e}"));
            return;
        }
        match rx.recv() {
            Ok(Decoded::Started(Ok(()))) => {}
            Ok(Decoded::Started(Err(e)) | Decoded::Failed(e)) => {
                ctx.out.incomplete.push(format!("{layer}: {e}"));
                return;
            }
            Ok(Decoded::Piece(_)) | Err(_) => {
                ctx.out.incomplete.push(format!(
                    "{layer}: the layer's decoder stopped before it started"
                ));
                return;
            }
        }
        let slot = |s: &Mutex<Option<Arc<Mutex<Option<String>>>>>| {
            s.lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default()
        };
        let raw_digest = slot(&digests.raw);
        let decoded_digest = slot(&digests.decoded);
        // File workers: small files are scanned while the walk goes on.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<FileDone>();
        let mut workers = Vec::new();
        if budget.file_workers > 0 {
            let (job_tx, job_rx) =
                std::sync::mpsc::sync_channel::<FileJob>(2 * budget.file_workers);
            let job_rx = Arc::new(Mutex::new(job_rx));
            let (spare_tx, spare_rx) = std::sync::mpsc::channel();
            for _ in 0..budget.file_workers {
                let (job_rx, done_tx, spare_tx) =
                    (job_rx.clone(), done_tx.clone(), spare_tx.clone());
                let spawned = std::thread::Builder::new()
                    .name("lanyard-layer-files".into())
                    .spawn_scoped(scope, move || {
                        file_worker(rules, budget, info, &job_rx, &done_tx, &spare_tx);
                    });
                if let Ok(h) = spawned {
                    workers.push(h);
                }
            }
            if !workers.is_empty() {
                ctx.dispatch = Some(Dispatch {
                    jobs: Some(job_tx),
                    spare: spare_rx,
                    next_seq: 0,
                    own: Vec::new(),
                });
            }
        }
        drop(done_tx);
        scan_decoded(
            &mut ctx,
            Pieces {
                rx,
                current: Vec::new(),
                at: 0,
                spent: spent_tx,
            },
            &layer,
            &raw_digest,
            &decoded_digest,
            workers,
            &done_rx,
        );
    });
    ctx.out
}

/// The scanning half of [`scan_layer`]: walks the decompressed tar stream, then reads it to its
/// end (the gzip trailer is checked and the digests complete) and checks the digests.
fn scan_decoded<R: Read>(
    ctx: &mut LayerCtx<'_>,
    decoded: R,
    layer: &str,
    raw_digest: &Arc<Mutex<Option<String>>>,
    decoded_digest: &Arc<Mutex<Option<String>>>,
    workers: Vec<std::thread::ScopedJoinHandle<'_, ()>>,
    done: &std::sync::mpsc::Receiver<FileDone>,
) {
    let budget = ctx.budget;
    let info = ctx.info;
    let counted = Counting {
        inner: decoded,
        budget,
    };
    let trip = Tripwire {
        inner: counted,
        tripped: ctx.outer_failed.clone(),
    };
    let mut tar = TarReader::new(
        trip,
        TarLimits {
            max_path_bytes: budget.limits.max_path_bytes,
            ..TarLimits::default()
        },
    );
    let walked = ctx.walk_tar(&mut tar, "", 0);
    let walked = ctx.gather_files(walked, workers, done);
    match walked {
        Ok(()) => {
            if !tar.clean_end {
                ctx.out.incomplete.push(format!(
                    "{layer}: the tar stream ends without an end-of-archive marker (truncated?)"
                ));
            }
            // Read to the end: checks the gzip trailer and lets the digests complete.
            let mut rest = tar.into_inner();
            if let Err(e) = io::copy(&mut rest, &mut io::sink()) {
                ctx.out
                    .incomplete
                    .push(format!("{layer}: after the tar stream: {e}"));
            } else {
                ctx.check_digest(layer, "blob", &info.verify_raw, raw_digest);
                ctx.check_digest(
                    layer,
                    "uncompressed content (diff_id)",
                    &info.verify_decoded,
                    decoded_digest,
                );
            }
        }
        Err(e) => {
            let why = budget.stopped().unwrap_or(e);
            ctx.out.incomplete.push(format!("{layer}: {why}"));
        }
    }
}

impl LayerCtx<'_> {
    /// After the walk: stops the file workers and adds every file's result in the layer's file
    /// order, so the outcome is the serial walk's. A file that ended in an error (a limit, a
    /// cancellation) ends the layer as the walk would have.
    fn gather_files(
        &mut self,
        walked: Result<(), String>,
        workers: Vec<std::thread::ScopedJoinHandle<'_, ()>>,
        done: &std::sync::mpsc::Receiver<FileDone>,
    ) -> Result<(), String> {
        let Some(mut dispatch) = self.dispatch.take() else {
            return walked;
        };
        dispatch.jobs = None;
        let mut files = std::mem::take(&mut dispatch.own);
        for w in workers {
            if w.join().is_err() {
                return Err("a file worker failed".into());
            }
        }
        files.extend(done.try_iter());
        files.sort_by_key(|f| f.seq);
        let mut first_error = None;
        for f in files {
            if first_error.is_some() {
                break;
            }
            merge_file(&mut self.out, f.out);
            if let Err(e) = f.result {
                first_error = Some(e);
            }
        }
        match (walked, first_error) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(e)) => Err(self.budget.stopped().unwrap_or(e)),
            (Ok(()), None) => Ok(()),
        }
    }

    fn check_digest(
        &mut self,
        layer: &str,
        what: &str,
        expected: &Option<String>,
        got: &Arc<Mutex<Option<String>>>,
    ) {
        let Some(expected) = expected else { return };
        let got = got.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match got {
            Some(g) if g.eq_ignore_ascii_case(expected) => {}
            Some(g) => self.out.incomplete.push(format!(
                "{layer}: {what} digest is {g}, the manifest says {expected}: the image content does not match its manifest"
            )),
            None => self
                .out
                .incomplete
                .push(format!("{layer}: could not verify the {what} digest")),
        }
    }

    /// Walks a tar stream. `prefix` is `""` for the layer itself and `archive!/` for nested
    /// archives; errors returned here end this tar.
    fn walk_tar<R: Read>(
        &mut self,
        tar: &mut TarReader<R>,
        prefix: &str,
        depth: u32,
    ) -> Result<(), String> {
        let limits = self.budget.limits;
        loop {
            if let Some(why) = self.budget.stopped() {
                return Err(why);
            }
            let Some(h) = tar.next_entry().map_err(|e| e.to_string())? else {
                return Ok(());
            };
            let n = self.budget.entries.fetch_add(1, Ordering::Relaxed) + 1;
            if n > limits.max_entries {
                return Err(self
                    .budget
                    .stop(format!(
                        "more than {} tar entries (limit max_entries)",
                        limits.max_entries
                    ))
                    .to_string());
            }
            let path = normalize_path(&h.path);
            let name = path.rsplit('/').next().unwrap_or(&path);
            if depth == 0 && name.starts_with(".wh.") {
                let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                let target = &name[4..];
                let wh = if target == ".wh..opq" {
                    Whiteout {
                        layer: self.info.index,
                        path: dir.to_owned(),
                        opaque: true,
                    }
                } else {
                    Whiteout {
                        layer: self.info.index,
                        path: if dir.is_empty() {
                            target.to_owned()
                        } else {
                            format!("{dir}/{target}")
                        },
                        opaque: false,
                    }
                };
                self.out.whiteouts.push(wh);
                continue;
            }
            if depth == 0
                && h.kind == EntryKind::Symlink
                && let Some(target) = &h.link
            {
                self.out.vendor.links.push((path.clone(), target.clone()));
                continue;
            }
            if h.kind != EntryKind::File || h.size == 0 {
                continue;
            }
            let full = format!("{prefix}{path}");
            let data = tar.data();
            if depth == 0 && self.dispatch.is_some() {
                self.dispatch_file(data, full, h.size)?;
                continue;
            }
            self.scan_file(data, &full, depth)
                .map_err(|e| e.to_string())?;
        }
    }

    /// A top-level file when there are file workers: a small one is read whole and handed
    /// over; a large one is scanned here (streamed), its result kept in file order.
    fn dispatch_file<R: Read>(
        &mut self,
        mut data: R,
        path: String,
        size: u64,
    ) -> Result<(), String> {
        let Some(d) = self.dispatch.as_mut() else {
            return Err("no file workers".into());
        };
        let seq = d.next_seq;
        d.next_seq += 1;
        if size <= WORKER_FILE_MAX
            && let Some(jobs) = d.jobs.clone()
        {
            let mut bytes = d.spare.try_recv().unwrap_or_default();
            bytes.clear();
            bytes.reserve(usize::try_from(size).unwrap_or(0));
            data.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
            return jobs
                .send(FileJob { seq, path, bytes })
                .map_err(|_| "the file workers stopped".to_owned());
        }
        let base = std::mem::replace(&mut self.out, LayerCtx::fresh_out(self.info));
        let result = self.scan_file(data, &path, 0).map_err(|e| e.to_string());
        let out = std::mem::replace(&mut self.out, base);
        if let Some(d) = self.dispatch.as_mut() {
            d.own.push(FileDone {
                seq,
                out,
                result: result.clone(),
            });
        }
        result
    }

    /// Scans one file's bytes: a nested archive is opened, anything else is content. Errors
    /// returned here end the enclosing tar. A file of the layer itself (`depth` 0) is kept as
    /// it is read (within bounds, never decompressed) for the vendor pass: hashed if it — or
    /// an archive member inside it — carries a finding, kept whole if it is a package record.
    fn scan_file<R: Read>(&mut self, r: R, path: &str, depth: u32) -> io::Result<()> {
        if depth > 0 {
            return self.scan_file_bytes(r, path, depth);
        }
        let record = vendor::record_kind(path);
        let mut bytes = std::mem::take(&mut self.retained);
        bytes.clear();
        let mut tee = Tee {
            inner: r,
            keep: Retain {
                bytes,
                cap: if record.is_some() {
                    vendor::MAX_RECORD_FILE_BYTES
                } else {
                    vendor::MAX_HASHED_FILE_BYTES
                },
                whole: true,
            },
        };
        // Read to the end of the entry, so the digest covers the whole file.
        let result = self
            .scan_file_bytes(&mut tee, path, depth)
            .and_then(|()| io::copy(&mut tee, &mut io::sink()).map(|_| ()));
        let Retain {
            mut bytes, whole, ..
        } = tee.keep;
        if result.is_ok() {
            self.hand_to_vendor(path, record, &bytes, whole);
        }
        if bytes.capacity() > vendor::MAX_HASHED_FILE_BYTES as usize {
            bytes = Vec::new();
        }
        self.retained = bytes;
        result
    }

    fn scan_file_bytes<R: Read>(&mut self, mut r: R, path: &str, depth: u32) -> io::Result<()> {
        self.budget.files.fetch_add(1, Ordering::Relaxed);
        let mut head = vec![0u8; HEAD];
        let n = read_full(&mut r, &mut head)?;
        head.truncate(n);
        let comp = detect(&head);
        let nested = matches!(comp, Compression::Gzip | Compression::Zstd) || looks_like_tar(&head);
        let chained = Cursor::new(head).chain(r);
        if !nested {
            return self.scan_content(chained, path);
        }
        if depth >= self.budget.limits.max_nesting {
            self.note_incomplete(format!(
                "{path}: archive nested deeper than {} levels not opened (limit max_nesting)",
                self.budget.limits.max_nesting
            ));
            return io::copy(&mut { chained }, &mut io::sink()).map(|_| ());
        }
        let result = self.scan_nested(chained, path, depth);
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                if self.outer_failed.load(Ordering::Relaxed) || self.budget.stopped().is_some() {
                    return Err(e);
                }
                self.note_warning(format!(
                    "{path}: nested archive unreadable ({e}); scanned up to the error"
                ));
                Ok(())
            }
        }
    }

    fn scan_nested<R: Read>(&mut self, r: R, path: &str, depth: u32) -> io::Result<()> {
        let (comp, inner) = decoder(r)?;
        let mut inner: Box<dyn Read + '_> = if comp == Compression::None {
            inner
        } else {
            Box::new(Counting {
                inner,
                budget: self.budget,
            })
        };
        let mut head = vec![0u8; HEAD];
        let n = read_full(&mut inner, &mut head)?;
        head.truncate(n);
        let chained = Cursor::new(head.clone()).chain(inner);
        if looks_like_tar(&head) {
            let mut tar = TarReader::new(
                chained,
                TarLimits {
                    max_path_bytes: self.budget.limits.max_path_bytes,
                    ..TarLimits::default()
                },
            );
            let r = self.walk_tar(&mut tar, &format!("{path}!/"), depth + 1);
            r.map_err(io::Error::other)?;
            let mut rest = tar.into_inner();
            io::copy(&mut rest, &mut io::sink())?;
            Ok(())
        } else if comp != Compression::None
            && depth + 1 < self.budget.limits.max_nesting
            && matches!(detect(&head), Compression::Gzip | Compression::Zstd)
        {
            self.scan_nested(chained, path, depth + 1)
        } else {
            self.scan_content(chained, path)
        }
    }

    fn note_incomplete(&mut self, s: String) {
        if self.out.incomplete.len() < MAX_LIST {
            self.out.incomplete.push(s);
        }
    }

    fn note_warning(&mut self, s: String) {
        if self.out.warnings.len() < MAX_LIST {
            self.out.warnings.push(s);
        }
    }

    /// Scans text or binary content in overlapping chunks.
    fn scan_content<R: Read>(&mut self, mut r: R, path: &str) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.scan_chunks(&mut r, path, &mut buf);
        buf.clear();
        self.buf = buf;
        result
    }

    /// After a top-level file: its digests if it carries a finding, its bytes if it is a
    /// package record.
    fn hand_to_vendor(
        &mut self,
        path: &str,
        record: Option<vendor::RecordKind>,
        retained: &[u8],
        whole: bool,
    ) {
        let has_findings = self
            .out
            .vendor
            .hashed
            .last()
            .is_some_and(|h| h.path == path);
        if has_findings && let Some(h) = self.out.vendor.hashed.last_mut() {
            h.hashes = whole.then(|| FileHashes::of(retained));
        }
        let Some(kind) = record else { return };
        let bytes = if kind == vendor::RecordKind::PythonDirectUrl {
            Ok(Vec::new())
        } else if !whole {
            Err(format!(
                "larger than {} bytes",
                vendor::MAX_RECORD_FILE_BYTES
            ))
        } else {
            let total = self
                .budget
                .record_bytes
                .fetch_add(retained.len() as u64, Ordering::Relaxed)
                + retained.len() as u64;
            if total > vendor::MAX_RECORD_BYTES_PER_IMAGE {
                Err(format!(
                    "the image's package records exceed {} bytes",
                    vendor::MAX_RECORD_BYTES_PER_IMAGE
                ))
            } else {
                // An exact-size copy: the reused buffer keeps its (possibly large) capacity.
                Ok(retained.to_vec())
            }
        };
        self.out.vendor.records.push(RecordFile {
            path: path.to_owned(),
            kind,
            bytes,
        });
    }

    fn scan_chunks<R: Read>(&mut self, r: &mut R, path: &str, buf: &mut Vec<u8>) -> io::Result<()> {
        let limit = self.budget.limits.max_file_scan_bytes;
        let mut carry = 0usize;
        let mut consumed: u64 = 0; // bytes before buf[0]
        let mut line_base: u64 = 1;
        let mut first = true;
        let mut binary = false;
        let mut seen: HashSet<(usize, u64)> = HashSet::new();
        let mut file_findings = 0usize;
        let mut kind_hit: Option<(usize, Vec<u8>, u64)> = None;
        let kinds: Vec<usize> = self.rules.file_kinds_for(path).collect();
        let test_material = is_test_material(path);
        let form = crate::rules::assign::Form::of_path(path);
        loop {
            // `read_to_end` into the reused buffer: no zeroing of a whole chunk per file.
            buf.truncate(carry);
            let n = r.by_ref().take(CHUNK as u64).read_to_end(buf)?;
            if n == 0 && !first {
                break;
            }
            let scanned_to = consumed + buf.len() as u64;
            if first {
                binary = buf[..buf.len().min(HEAD)].contains(&0);
                for &k in &kinds {
                    if let Some((s, e)) = self.rules.file_kind_value(k, buf) {
                        let line = line_base + count_lines(&buf[..s]);
                        kind_hit = Some((k, buf[s..e].to_vec(), line));
                        break;
                    }
                }
            }
            for m in self.rules.scan_form(buf, binary, form) {
                if !first && m.end <= carry {
                    continue;
                }
                let abs = consumed + m.start as u64;
                if !seen.insert((m.rule, abs)) {
                    continue;
                }
                let line = line_base + count_lines(&buf[..m.start]);
                let rule = &self.rules.rules[m.rule].def;
                let value = &buf[m.start..m.end];
                let f = self.file_finding(rule, value, path, line, test_material);
                self.keep_finding(f, vendor::value_key(rule.id, value))?;
                file_findings += 1;
            }
            first = false;
            if n < CHUNK {
                break;
            }
            if scanned_to >= limit {
                // Drain the rest unscanned and say so.
                let rest = io::copy(r, &mut io::sink())?;
                if rest > 0 {
                    self.note_incomplete(format!(
                        "{path}: only the first {limit} bytes scanned (limit max_file_scan_bytes)"
                    ));
                }
                break;
            }
            let new_carry = OVERLAP.min(buf.len());
            let cut = buf.len() - new_carry;
            line_base += count_lines(&buf[..cut]);
            consumed += cut as u64;
            buf.copy_within(cut.., 0);
            buf.truncate(new_carry);
            carry = new_carry;
        }
        if file_findings == 0
            && let Some((k, value, line)) = kind_hit
        {
            let rule = self.rules.file_kinds[k].def.rule();
            let f = self.file_finding(&rule, &value, path, line, test_material);
            self.keep_finding(f, vendor::value_key(rule.id, &value))?;
        }
        Ok(())
    }

    /// Keeps a finding within the image's [`Limits::max_findings`]; past it, stops every
    /// layer of the image (the reason becomes the layer's incomplete mark).
    /// The file of the layer that holds the finding (the outer archive for a member of a
    /// nested one) is then hashed for the vendor pass.
    ///
    /// A finding that is `info` already (public test material, package code) is kept only
    /// among the image's first [`MAX_LISTED_INFO_FINDINGS`] such; past them it is counted in
    /// `info_not_listed` and dropped. It can never make the image dirty, so dropping it
    /// cannot turn a dirty image clean, and a test log in `usr/share/doc` full of
    /// `PASS: x=y` lines does not make the image incomplete.
    fn keep_finding(&mut self, f: Finding, key: ValueKey) -> io::Result<()> {
        if f.severity == Severity::Info {
            let n = self.budget.info_findings.fetch_add(1, Ordering::Relaxed) + 1;
            if n > MAX_LISTED_INFO_FINDINGS {
                self.budget.info_not_listed.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        } else {
            let max = self.budget.limits.max_findings;
            let n = self.budget.findings.fetch_add(1, Ordering::Relaxed) + 1;
            if n > max {
                return Err(self.budget.stop(max_findings_reason(max)));
            }
        }
        if let Location::File { path, .. } = &f.location {
            let file = vendor::layer_file(path);
            if self.out.vendor.hashed.last().is_none_or(|h| h.path != file) {
                self.out.vendor.hashed.push(HashedFile {
                    path: file.to_owned(),
                    hashes: None,
                });
            }
        }
        self.out.findings.push(f);
        self.out.keys.push(key);
        Ok(())
    }

    /// A finding in a file of this layer. Public test material is `info` with low confidence;
    /// a generic (low-confidence) match in package-managed code is `info` too.
    fn file_finding(
        &self,
        rule: &RuleDef,
        value: &[u8],
        path: &str,
        line: u64,
        test_material: bool,
    ) -> Finding {
        let location = Location::File {
            layer_index: self.info.index,
            layer_digest: self.info.digest.clone(),
            history_step: self.info.history_step,
            path: path.to_owned(),
            line,
            deleted_later: false,
        };
        let mut f = Finding::new(rule, value, location);
        f.package_code =
            !test_material && rule.confidence == Confidence::Low && is_package_path(path);
        f.test_material = test_material;
        if test_material || f.package_code {
            f.severity = Severity::Info;
        }
        if test_material {
            f.confidence = Confidence::Low;
        }
        f
    }
}

/// The bytes of the file being scanned, kept for the vendor pass up to `cap`.
struct Retain {
    bytes: Vec<u8>,
    cap: u64,
    /// Every byte of the file is in `bytes` (false once over `cap`).
    whole: bool,
}

/// Keeps what is read through it in a [`Retain`].
struct Tee<R> {
    inner: R,
    keep: Retain,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.keep.add(&buf[..n]);
        Ok(n)
    }
}

impl Retain {
    fn add(&mut self, new: &[u8]) {
        if !self.whole {
            return;
        }
        if (self.bytes.len() + new.len()) as u64 > self.cap {
            self.whole = false;
            self.bytes.clear();
        } else {
            self.bytes.extend_from_slice(new);
        }
    }
}

/// `info` findings listed per image; the rest are counted in
/// [`Stats::info_not_listed`](crate::report::Stats::info_not_listed).
pub const MAX_LISTED_INFO_FINDINGS: u64 = 1_000;

/// Why an image stopped at [`Limits::max_findings`].
pub(crate) fn max_findings_reason(max: u64) -> String {
    format!(
        "more than {max} findings (limit max_findings): the rest of the image was not scanned; \
         remove the secrets found, or raise the limit"
    )
}

/// Scans one layer blob held in memory with small limits; returns the number of findings and
/// of incomplete reasons. For fuzzing the layer reader (`fuzz/fuzz_targets/scan_layer.rs`).
pub fn scan_layer_bytes(blob: &[u8]) -> (usize, usize) {
    let limits = Limits {
        max_decompressed_bytes: 64 << 20,
        max_entries: 10_000,
        max_path_bytes: 4096,
        max_file_scan_bytes: 16 << 20,
        max_nesting: 3,
        max_findings: 10_000,
    };
    let mut budget = Budget::new(
        limits,
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        None,
    );
    budget.layer_threads = false;
    let info = LayerInfo {
        index: 0,
        digest: "sha256:fuzz".into(),
        history_step: None,
        verify_raw: None,
        verify_decoded: None,
    };
    let r = scan_layer(blob, &info, RuleSet::builtin(), &budget);
    (r.findings.len(), r.incomplete.len())
}

fn count_lines(b: &[u8]) -> u64 {
    b.iter().filter(|&&c| c == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::FingerprintKind;
    use crate::rules::tests::{ALNUM, fake};
    use crate::tar::build_tar;
    use std::io::Write as _;

    fn info(index: usize) -> LayerInfo {
        LayerInfo {
            index,
            digest: format!("sha256:{}", "a".repeat(64)),
            history_step: Some(index),
            verify_raw: None,
            verify_decoded: None,
        }
    }

    fn budget(limits: Limits) -> Budget {
        Budget::new(
            limits,
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            None,
        )
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("in memory");
        e.finish().expect("in memory")
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    fn rules_of(r: &LayerResult) -> Vec<(String, String, u64)> {
        r.findings
            .iter()
            .map(|f| match &f.location {
                Location::File { path, line, .. } => (f.rule.clone(), path.clone(), *line),
                _ => unreachable!(),
            })
            .collect()
    }

    fn token() -> String {
        format!("ghp_{}", fake(ALNUM, 36, 7))
    }

    #[test]
    fn plain_gzip_and_zstd_layers_give_the_same_findings() {
        let t = token();
        let tar = build_tar(&[
            ("app/", b'5', b""),
            (
                "app/config.yml",
                b'0',
                format!("a: 1\nb: 2\ngh: {t}\n").as_bytes(),
            ),
        ]);
        let mut two_frames = zstd(&tar[..1024]);
        two_frames.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        two_frames.extend(zstd(&tar[1024..]));
        for blob in [tar.clone(), gzip(&tar), zstd(&tar), two_frames] {
            let r = scan_layer(
                &blob[..],
                &info(1),
                RuleSet::builtin(),
                &budget(Limits::default()),
            );
            assert_eq!(r.incomplete, Vec::<String>::new());
            assert_eq!(
                rules_of(&r),
                vec![("github-pat".into(), "app/config.yml".into(), 3)]
            );
        }
    }

    #[test]
    fn whiteouts_are_recorded_not_scanned() {
        let tar = build_tar(&[("app/.wh..env", b'0', b""), ("etc/.wh..wh..opq", b'0', b"")]);
        let r = scan_layer(
            &tar[..],
            &info(2),
            RuleSet::builtin(),
            &budget(Limits::default()),
        );
        assert_eq!(
            r.whiteouts,
            vec![
                Whiteout {
                    layer: 2,
                    path: "app/.env".into(),
                    opaque: false
                },
                Whiteout {
                    layer: 2,
                    path: "etc".into(),
                    opaque: true
                },
            ]
        );
    }

    #[test]
    fn deleted_later_follows_whiteouts() {
        let w = vec![
            Whiteout {
                layer: 2,
                path: "app/.env".into(),
                opaque: false,
            },
            Whiteout {
                layer: 3,
                path: "secrets".into(),
                opaque: false,
            },
            Whiteout {
                layer: 4,
                path: "etc/conf".into(),
                opaque: true,
            },
        ];
        assert!(deleted_later(1, "app/.env", &w));
        assert!(
            !deleted_later(2, "app/.env", &w),
            "same-layer whiteout does not delete"
        );
        assert!(!deleted_later(1, "app/.envrc", &w));
        assert!(deleted_later(1, "secrets/a/b", &w));
        assert!(deleted_later(3, "etc/conf/x", &w));
        assert!(
            !deleted_later(3, "etc/conf", &w),
            "opaque hides children only"
        );
        assert!(deleted_later(0, "secrets/x.tar!/inner", &w));
    }

    #[test]
    fn secrets_across_chunk_boundaries_are_found_once_with_the_right_line() {
        let t = token();
        let mut content = Vec::new();
        let mut line = 1u64;
        while content.len() < CHUNK - 20 {
            content.extend_from_slice(b"filler line of text\n");
            line += 1;
        }
        content.extend_from_slice(format!("{t}\n").as_bytes());
        content.resize(content.len() + CHUNK, b'\n');
        content.extend_from_slice(format!("again {t}\n").as_bytes());
        let second_line = line + 1 + CHUNK as u64;
        let tar = build_tar(&[("big.txt", b'0', &content)]);
        let r = scan_layer(
            &tar[..],
            &info(0),
            RuleSet::builtin(),
            &budget(Limits::default()),
        );
        assert_eq!(
            rules_of(&r),
            vec![
                ("github-pat".into(), "big.txt".into(), line),
                ("github-pat".into(), "big.txt".into(), second_line)
            ]
        );
    }

    #[test]
    fn nested_tar_gz_members_are_scanned() {
        let t = token();
        let inner = build_tar(&[("deep/cred.txt", b'0', t.as_bytes())]);
        let outer = build_tar(&[("opt/bundle.tar.gz", b'0', &gzip(&inner))]);
        let r = scan_layer(
            &gzip(&outer)[..],
            &info(0),
            RuleSet::builtin(),
            &budget(Limits::default()),
        );
        assert_eq!(
            rules_of(&r),
            vec![(
                "github-pat".into(),
                "opt/bundle.tar.gz!/deep/cred.txt".into(),
                1
            )]
        );
        let limited = Limits {
            max_nesting: 0,
            ..Limits::default()
        };
        let r = scan_layer(&outer[..], &info(0), RuleSet::builtin(), &budget(limited));
        assert!(r.findings.is_empty());
        assert!(
            r.incomplete[0].contains("max_nesting"),
            "{:?}",
            r.incomplete
        );
    }

    #[test]
    fn corrupt_nested_archive_is_a_warning_corrupt_layer_is_incomplete() {
        let mut bad = gzip(&build_tar(&[("x", b'0', b"hello")]));
        let l = bad.len();
        bad[l / 2] ^= 0xff;
        bad.truncate(l - 4);
        let outer = build_tar(&[("a.gz", b'0', &bad), ("b.txt", b'0', token().as_bytes())]);
        let r = scan_layer(
            &outer[..],
            &info(0),
            RuleSet::builtin(),
            &budget(Limits::default()),
        );
        assert!(r.incomplete.is_empty(), "{:?}", r.incomplete);
        assert_eq!(r.warnings.len(), 1);
        assert_eq!(rules_of(&r).len(), 1, "later files are still scanned");
        let layer = gzip(&outer);
        let r = scan_layer(
            &layer[..layer.len() - 30],
            &info(0),
            RuleSet::builtin(),
            &budget(Limits::default()),
        );
        assert!(!r.incomplete.is_empty());
    }

    #[test]
    fn bounds_make_results_incomplete() {
        let zeros = vec![0u8; 4 << 20];
        let tar = build_tar(&[("zeros", b'0', &zeros), ("t", b'0', token().as_bytes())]);
        let bomb = gzip(&tar);
        assert!(bomb.len() < 64 << 10);
        let lim = Limits {
            max_decompressed_bytes: 1 << 20,
            ..Limits::default()
        };
        let r = scan_layer(&bomb[..], &info(0), RuleSet::builtin(), &budget(lim));
        assert!(
            r.incomplete[0].contains("max_decompressed_bytes"),
            "{:?}",
            r.incomplete
        );
        let lim = Limits {
            max_entries: 1,
            ..Limits::default()
        };
        let r = scan_layer(&tar[..], &info(0), RuleSet::builtin(), &budget(lim));
        assert!(
            r.incomplete[0].contains("max_entries"),
            "{:?}",
            r.incomplete
        );
        let lim = Limits {
            max_file_scan_bytes: 1 << 20,
            ..Limits::default()
        };
        let r = scan_layer(&tar[..], &info(0), RuleSet::builtin(), &budget(lim));
        assert!(
            r.incomplete[0].contains("max_file_scan_bytes"),
            "{:?}",
            r.incomplete
        );
        assert_eq!(r.findings.len(), 1, "the next file is still scanned");
        let lim = Limits {
            max_path_bytes: 3,
            ..Limits::default()
        };
        let r = scan_layer(&tar[..], &info(0), RuleSet::builtin(), &budget(lim));
        assert!(
            r.incomplete[0].contains("path of 5 bytes"),
            "{:?}",
            r.incomplete
        );
    }

    #[test]
    fn sha512_layer_digests_are_verified_and_unknown_algorithms_refused() {
        let tar = build_tar(&[("a", b'0', b"x")]);
        let mut i = info(0);
        i.verify_raw = Some(DigestAlgorithm::Sha512.digest(&tar));
        i.verify_decoded = Some(DigestAlgorithm::Sha512.digest(&tar));
        let r = scan_layer(&tar[..], &i, RuleSet::builtin(), &budget(Limits::default()));
        assert!(r.incomplete.is_empty(), "{:?}", r.incomplete);
        let mut other = tar.clone();
        other[0] ^= 1;
        i.verify_raw = Some(DigestAlgorithm::Sha512.digest(&other));
        let r = scan_layer(&tar[..], &i, RuleSet::builtin(), &budget(Limits::default()));
        assert!(
            r.incomplete.len() == 1 && r.incomplete[0].contains("does not match its manifest"),
            "{:?}",
            r.incomplete
        );
        for bad in ["md5:900150983cd24fb0d6963f7d28e17f72", "sha512:abc"] {
            i.verify_raw = Some(bad.into());
            let r = scan_layer(&tar[..], &i, RuleSet::builtin(), &budget(Limits::default()));
            assert!(
                r.incomplete.len() == 1 && r.incomplete[0].contains("cannot be verified"),
                "{bad}: {:?}",
                r.incomplete
            );
        }
    }

    #[test]
    fn digest_mismatch_and_unsupported_compression_are_incomplete() {
        let tar = build_tar(&[("a", b'0', b"x")]);
        let mut i = info(0);
        i.verify_raw = Some(format!("sha256:{}", "0".repeat(64)));
        let r = scan_layer(&tar[..], &i, RuleSet::builtin(), &budget(Limits::default()));
        assert!(
            r.incomplete[0].contains("does not match its manifest"),
            "{:?}",
            r.incomplete
        );
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &tar);
        i.verify_raw = Some(format!("sha256:{}", hex::encode(d.as_ref())));
        let r = scan_layer(&tar[..], &i, RuleSet::builtin(), &budget(Limits::default()));
        assert!(r.incomplete.is_empty(), "{:?}", r.incomplete);
        let r = scan_layer(
            &b"BZh91AY&SY"[..],
            &info(0),
            RuleSet::builtin(),
            &budget(Limits::default()),
        );
        assert!(r.incomplete[0].contains("bzip2"), "{:?}", r.incomplete);
    }

    #[test]
    fn file_kind_reported_only_without_content_findings() {
        let tar = build_tar(&[
            ("app/.env", b'0', b"LOG_LEVEL=debug\nAPP_MODE=production\n"),
            ("srv/.env", b'0', b"LOG_LEVEL=debug\nDB_PASSWORD=hunter22\n"),
            (
                "root/.npmrc",
                b'0',
                format!("//r/:_authToken=npm_{}\n", fake(ALNUM, 36, 9)).as_bytes(),
            ),
        ]);
        let r = scan_layer(
            &tar[..],
            &info(0),
            RuleSet::builtin(),
            &budget(Limits::default()),
        );
        let got: Vec<String> = r.findings.iter().map(|f| f.rule.clone()).collect();
        assert_eq!(got, vec!["file-dotenv", "generic-password", "npm-token"]);
        assert_eq!(r.findings[0].fingerprint_kind, FingerprintKind::Location);
    }

    #[test]
    fn generic_matches_in_package_code_are_info_provider_matches_are_not() {
        let tar = build_tar(&[
            (
                "usr/lib/python3/dist-packages/x/db.py",
                b'0',
                b"password = 'Tr0ub4dor&3x'\n",
            ),
            (
                "usr/lib/python3/dist-packages/x/gh.py",
                b'0',
                token().as_bytes(),
            ),
            ("app/db.py", b'0', b"password = 'Tr0ub4dor&3x'\n"),
        ]);
        let r = scan_layer(
            &tar[..],
            &info(0),
            RuleSet::builtin(),
            &budget(Limits::default()),
        );
        let got: Vec<(String, Severity, bool)> = r
            .findings
            .iter()
            .map(|f| (f.rule.clone(), f.severity, f.package_code))
            .collect();
        assert_eq!(
            got,
            vec![
                ("generic-password".into(), Severity::Info, true),
                ("github-pat".into(), Severity::High, false),
                ("generic-password".into(), Severity::Medium, false),
            ]
        );
    }

    #[test]
    fn test_material_is_info() {
        let tar = build_tar(&[("usr/lib/python3/x/tests/t.py", b'0', token().as_bytes())]);
        let r = scan_layer(
            &tar[..],
            &info(0),
            RuleSet::builtin(),
            &budget(Limits::default()),
        );
        assert_eq!(r.findings[0].severity, Severity::Info);
        assert!(r.findings[0].test_material);
    }

    #[test]
    fn cancellation_stops_the_layer() {
        let tar = build_tar(&[("a", b'0', b"x")]);
        let b = budget(Limits::default());
        b.cancel.store(true, Ordering::Relaxed);
        let r = scan_layer(&tar[..], &info(0), RuleSet::builtin(), &b);
        assert_eq!(
            r.incomplete,
            vec![format!(
                "layer 0 (sha256:{}): scan cancelled",
                "a".repeat(64)
            )]
        );
    }

    #[test]
    fn mangled_layers_never_panic_and_are_never_silently_complete() {
        let t = token();
        let tar = build_tar(&[("a/b.txt", b'0', t.as_bytes()), ("c", b'0', b"hello")]);
        for (plain, blob) in [
            (true, tar.clone()),
            (false, gzip(&tar)),
            (false, zstd(&tar)),
        ] {
            // A plain tar cut inside its end-of-archive zero blocks has lost nothing.
            let end = if plain { blob.len() - 1023 } else { blob.len() };
            for cut in (0..end).step_by(97) {
                let (_, incomplete) = scan_layer_bytes(&blob[..cut]);
                assert!(
                    incomplete > 0,
                    "a blob cut at {cut} of {} must be incomplete",
                    blob.len()
                );
            }
            for i in (0..blob.len()).step_by(61) {
                let mut m = blob.clone();
                m[i] ^= 0x5a;
                let _ = scan_layer_bytes(&m);
            }
        }
    }

    /// Everything a layer's scan reports, in order, for comparing two scans of it.
    fn whole(r: &LayerResult) -> String {
        let vendor = &r.vendor;
        format!(
            "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
            r.findings
                .iter()
                .map(|f| (&f.rule, format!("{:?}", f.location), &f.fingerprint))
                .collect::<Vec<_>>(),
            r.keys,
            vendor
                .records
                .iter()
                .map(|x| (&x.path, x.bytes.as_ref().map(Vec::len)))
                .collect::<Vec<_>>(),
            vendor.links,
            vendor.hashed.iter().map(|h| &h.path).collect::<Vec<_>>(),
            r.whiteouts,
            r.incomplete,
            r.warnings,
        )
    }

    /// A layer with a bit of everything: many small files (some with secrets), a nested
    /// gzip tar with one, a whiteout, a symlink, a package record, and a file larger than a
    /// worker takes whole with a secret at its end.
    fn mixed_layer() -> Vec<u8> {
        let mut owned: Vec<(String, u8, Vec<u8>)> = Vec::new();
        for i in 0..60 {
            let body = if i % 7 == 3 {
                format!("line one\ntoken: ghp_{}\n", fake(ALNUM, 36, i))
            } else {
                format!("plain text file {i}\n")
            };
            owned.push((format!("srv/f{i:03}.txt"), b'0', body.into_bytes()));
        }
        let inner = build_tar(&[(
            "conf/app.env",
            b'0',
            format!("GH=ghp_{}\n", fake(ALNUM, 36, 99)).as_bytes(),
        )]);
        owned.push(("srv/bundle.tar.gz".into(), b'0', gzip(&inner)));
        owned.push(("srv/.wh.old".into(), b'0', Vec::new()));
        owned.push((
            "var/lib/dpkg/status".into(),
            b'0',
            b"Package: x\nStatus: install ok installed\n\n".to_vec(),
        ));
        let mut big = vec![b'a'; (WORKER_FILE_MAX + 4096) as usize];
        big.extend_from_slice(format!("\nkey=ghp_{}\n", fake(ALNUM, 36, 42)).as_bytes());
        owned.push(("srv/big.log".into(), b'0', big));
        for i in 60..80 {
            owned.push((
                format!("srv/f{i:03}.txt"),
                b'0',
                format!("after the big one {i}\n").into_bytes(),
            ));
        }
        let entries: Vec<(&str, u8, &[u8])> = owned
            .iter()
            .map(|(p, t, b)| (p.as_str(), *t, b.as_slice()))
            .collect();
        gzip(&build_tar(&entries))
    }

    #[test]
    fn file_workers_report_exactly_what_the_serial_walk_reports() {
        let blob = mixed_layer();
        let serial = scan_layer(
            &blob[..],
            &info(2),
            RuleSet::builtin(),
            &budget(Limits::default()),
        );
        assert_eq!(serial.incomplete, Vec::<String>::new());
        assert!(
            serial.findings.len() >= 10,
            "the layer has secrets in small, nested and large files: {:?}",
            rules_of(&serial)
        );
        let paths: Vec<String> = rules_of(&serial).into_iter().map(|(_, p, _)| p).collect();
        assert!(paths.iter().any(|p| p == "srv/big.log"), "{paths:?}");
        assert!(
            paths.iter().any(|p| p == "srv/bundle.tar.gz!/conf/app.env"),
            "{paths:?}"
        );
        assert_eq!(serial.whiteouts.len(), 1);
        assert_eq!(serial.vendor.records.len(), 1);
        for workers in [1, 2, 5] {
            let b = budget(Limits::default()).with_file_workers(workers);
            let parallel = scan_layer(&blob[..], &info(2), RuleSet::builtin(), &b);
            assert_eq!(whole(&parallel), whole(&serial), "{workers} file workers");
        }
        let mut one = budget(Limits::default());
        one.layer_threads = false;
        let inline = scan_layer(&blob[..], &info(2), RuleSet::builtin(), &one);
        assert_eq!(whole(&inline), whole(&serial), "one thread for everything");
    }

    #[test]
    fn with_file_workers_a_limit_still_ends_the_layer_incomplete() {
        let blob = mixed_layer();
        let limits = Limits {
            max_findings: 3,
            ..Limits::default()
        };
        for workers in [0, 2] {
            let b = budget(limits).with_file_workers(workers);
            let r = scan_layer(&blob[..], &info(0), RuleSet::builtin(), &b);
            assert!(
                r.incomplete.iter().any(|i| i.contains("max_findings")),
                "{workers} workers: {:?}",
                r.incomplete
            );
            assert!(
                r.findings.len() <= 3,
                "{workers} workers: {}",
                r.findings.len()
            );
        }
    }

    #[test]
    fn with_file_workers_a_truncated_layer_is_incomplete_and_keeps_what_was_found() {
        let blob = mixed_layer();
        let cut = &blob[..blob.len() / 2];
        let serial = scan_layer(
            cut,
            &info(0),
            RuleSet::builtin(),
            &budget(Limits::default()),
        );
        let b = budget(Limits::default()).with_file_workers(2);
        let parallel = scan_layer(cut, &info(0), RuleSet::builtin(), &b);
        assert_eq!(serial.incomplete.len(), 1, "{:?}", serial.incomplete);
        assert_eq!(whole(&parallel), whole(&serial));
    }
}
