//! Start-up: finding where the chain goes on, and cutting only what was never a record.
//!
//! The broker syncs a group's lines before it saves their chain head in the store, so after
//! a crash or a full disk the newest segment ([`super::segment`]) ends in one of these ways,
//! each handled here:
//!
//! | the newest segment ends with | at start |
//! |---|---|
//! | the store's head | go on from it |
//! | complete records after the store's head that chain on from it (a crash after the `fsync`, before the head was saved) | **kept**; the store adopts the last one |
//! | a complete record without its newline | kept: the newline is added |
//! | an incomplete record and/or NUL bytes (a write cut short; unwritten space) | **cut** — only the bytes after the last complete line, never a complete record — and the cut is recorded (`audit_repair` with `cut_bytes`) |
//! | a complete line that is not a valid record, or records after the store's head that do not chain on from it | refused: [`AuditError::Corrupt`] names the file and line; run `audit verify` |
//! | no record matching the store's head (truncated, replaced) | refused: [`AuditError::ChainMismatch`] names both heads |
//!
//! A store with no head (a new store) adopts the file's last record. A newest segment after
//! segment 0 that holds no record yet (a crash while starting it) gets its header written
//! first. The common start reads only the end of the newest segment; the store's head is
//! searched for in the files (at most [`MAX_SEGMENTS_SEARCHED`] newest segments) only when the
//! file's last record is not it.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::AuditError;
use super::line::{MAX_LINE_BYTES, ParsedLine, parse_line, read_bounded_line};
use super::record::Event;
use super::segment;
use crate::store::ChainHead;

/// How many of the newest segments are searched for the store's head.
pub const MAX_SEGMENTS_SEARCHED: usize = 8;

/// Most lease rows replayed at start from records after the store's head (the newest are
/// kept). Issuance groups reach the store within a checkpoint interval of their records, so
/// a store that lost its last commits to a power cut is a few thousand records behind at
/// most; more means a store restored from an older backup, whose older leases are mostly
/// expired (and skipped) anyway.
pub const MAX_REPLAYED: usize = 100_000;

/// What opening found and did.
#[derive(Debug)]
pub(super) struct Opened {
    /// The newest segment, open for appending.
    pub file: std::fs::File,
    /// Its number.
    pub number: u64,
    /// Its length once cut: the end of its last complete record.
    pub len: u64,
    /// The head to go on from.
    pub head: Option<ChainHead>,
    /// A head to save to the store (the store was empty or behind the file).
    pub adopt: Option<ChainHead>,
    /// What was cut from the end, to be recorded.
    pub cut: Option<Cut>,
    /// The running leases of `issue` records after the store's head, oldest first: saved
    /// with the adopted head (the store lost its last issuance groups, or is a backup).
    pub replay: Vec<crate::store::LeaseRecord>,
    /// Running leases after the store's head beyond [`MAX_REPLAYED`], not replayed.
    pub replay_dropped: u64,
    /// The segment holds no record yet: write its header first (the previous segment's
    /// file name, for the header's reason).
    pub needs_header: Option<String>,
}

/// Bytes cut from the end of the newest segment at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cut {
    /// The segment's file name.
    pub file: String,
    /// Bytes cut in all.
    pub bytes: u64,
    /// Of which NUL bytes (unwritten space).
    pub unwritten: u64,
}

/// Syncs the directory holding `path`, so a new file's entry is durable.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn corrupt(path: &Path, what: &str) -> AuditError {
    AuditError::Corrupt(format!(
        "{what} in {p}; the broker cuts only an incomplete record at the end, never a complete line. \
         Run `lanyard-broker audit verify {p}` to see where, then restore the file from a backup \
         (or move the log aside together with the store to start a new chain)",
        p = path.display()
    ))
}

/// Opens the log whose segment 0 is `base`: its newest segment, resumed against the store's
/// head (see the module doc). Changes the file (a cut, a missing newline) only once it is
/// known the broker can go on.
pub(super) fn open(
    base: &Path,
    store_head: Option<ChainHead>,
    now: std::time::SystemTime,
) -> Result<Opened, AuditError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    if let Some(dir) = base.parent().filter(|d| !d.as_os_str().is_empty()) {
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
    let segments = segment::list(base)?;
    let (number, path) = segments
        .last()
        .cloned()
        .unwrap_or_else(|| (0, base.to_owned()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
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
    let len = file.metadata()?.len();
    let tail = scan_tail(&file, len, &path)?;

    // A record that lacks only its newline is complete: keep it.
    let mut last = tail.last.as_ref().map(ParsedLine::head);
    let mut keep_end = tail.content_end;
    let mut add_newline = false;
    if !tail.partial.is_empty()
        && let Ok(text) = std::str::from_utf8(&tail.partial)
        && let Ok(p) = parse_line(text)
        && p.hash_matches()
        && last.as_ref().map_or(p.seq == 1 || number > 0, |h| {
            p.seq == h.seq + 1 && p.prev == h.hash
        })
    {
        last = Some(p.head());
        keep_end = tail.logical_end;
        add_newline = true;
    }
    // An empty newest segment after segment 0 goes on from the previous one's last record.
    let previous = (number > 0).then(|| segment::path(base, number - 1));
    if last.is_none()
        && let Some(prev) = &previous
    {
        let f = std::fs::File::open(prev)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", prev.display())))?;
        let plen = f.metadata()?.len();
        let t = scan_tail(&f, plen, prev)?;
        if !t.partial.is_empty() {
            return Err(corrupt(
                prev,
                "a segment followed by another does not end with a complete line",
            ));
        }
        last = t.last.as_ref().map(ParsedLine::head);
    }

    let mut replay = Replay::new(now);
    let (head, adopt) = match (last, store_head) {
        (None, None) => (None, None),
        (Some(f), None) => (Some(f.clone()), Some(f)),
        (Some(f), Some(s)) if f == s => (Some(f), None),
        (file_head, Some(s)) => {
            match follow_from(base, &segments, (number, &path, keep_end), &s, &mut replay)? {
                Some(end) => {
                    tracing::warn!(
                        file = %path.display(),
                        store_seq = s.seq,
                        file_seq = end.seq,
                        "the audit log holds complete records after the store's chain head that chain on from it (a stop between a write and the head update); keeping them"
                    );
                    let adopt = (end != s).then(|| end.clone());
                    (Some(end), adopt)
                }
                None => return Err(mismatch(&path, file_head.as_ref(), &s)),
            }
        }
    };

    // Only now change the file.
    let cut_bytes = len - keep_end;
    if cut_bytes > 0 || add_newline {
        file.set_len(keep_end)?;
        if add_newline {
            let mut w: &std::fs::File = &file;
            io::Write::write_all(&mut w, b"\n")?;
        }
        file.sync_data()?;
    }
    let len = keep_end + u64::from(add_newline);
    let cut = (cut_bytes > 0).then(|| {
        let c = Cut {
            file: file_name(&path),
            bytes: cut_bytes,
            unwritten: len_unwritten(tail.logical_end, keep_end, cut_bytes, add_newline),
        };
        tracing::warn!(
            file = %path.display(),
            cut_bytes = c.bytes,
            unwritten_bytes = c.unwritten,
            "cut an incomplete record and unwritten space from the end of the audit log (a write was cut short); recording the cut"
        );
        c
    });
    let needs_header =
        (number > 0 && len == 0).then(|| previous.as_deref().map(file_name).unwrap_or_default());
    Ok(Opened {
        file,
        number,
        len,
        head,
        adopt,
        cut,
        replay: replay.leases.into(),
        replay_dropped: replay.dropped,
        needs_header,
    })
}

/// The running leases of the records after the store's head, newest [`MAX_REPLAYED`] kept.
#[derive(Debug)]
struct Replay {
    now: std::time::SystemTime,
    leases: std::collections::VecDeque<crate::store::LeaseRecord>,
    dropped: u64,
}

impl Replay {
    fn new(now: std::time::SystemTime) -> Self {
        Self {
            now,
            leases: std::collections::VecDeque::new(),
            dropped: 0,
        }
    }

    /// Keeps `rec`'s lease if it is an issuance still running.
    fn add(&mut self, rec: &super::AuditRecord) {
        let Some(lease) = rec.replayed_lease().filter(|l| l.expires_at > self.now) else {
            return;
        };
        if self.leases.len() >= MAX_REPLAYED {
            self.leases.pop_front();
            self.dropped += 1;
        }
        self.leases.push_back(lease);
    }
}

/// NUL bytes among the cut ones: everything after the logical end.
fn len_unwritten(logical_end: u64, keep_end: u64, cut: u64, add_newline: bool) -> u64 {
    if add_newline {
        cut
    } else {
        cut - (logical_end - keep_end)
    }
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

fn mismatch(path: &Path, file_head: Option<&ChainHead>, s: &ChainHead) -> AuditError {
    let p = path.display();
    let what = match file_head {
        Some(f) => format!(
            "the last record in {p} is seq {} (hash {}…) but the store's chain head is seq {} (hash {}…)",
            f.seq,
            short(&f.hash),
            s.seq,
            short(&s.hash)
        ),
        None => format!(
            "{p} has no records but the store's chain head is seq {} (hash {}…)",
            s.seq,
            short(&s.hash)
        ),
    };
    AuditError::ChainMismatch(format!(
        "{what}, and the log does not hold that record: the file was truncated, replaced or rotated away. \
         Restore the file that ends at seq {}; or, to start a new chain, move both aside: the audit log {p} (and its segments) and the broker's store database (it holds the chain head)",
        s.seq
    ))
}

/// The end of a segment, read backwards.
#[derive(Debug)]
struct Tail {
    /// The end of its last newline-terminated line.
    content_end: u64,
    /// The end of its last byte that is not NUL.
    logical_end: u64,
    /// Its last complete record (a valid record; else the start is refused).
    last: Option<ParsedLine>,
    /// The bytes between `content_end` and `logical_end` (at most a line's length).
    partial: Vec<u8>,
}

fn read_range(file: &std::fs::File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; usize::try_from(end - start).unwrap_or(usize::MAX)];
    file.read_exact_at(&mut buf, start)?;
    Ok(buf)
}

/// Reads the end of a segment: skips the NUL run, finds the last line end, parses the last
/// complete line.
fn scan_tail(file: &std::fs::File, len: u64, path: &Path) -> Result<Tail, AuditError> {
    const CHUNK: u64 = 64 * 1024;
    let mut logical_end = len;
    while logical_end > 0 {
        let start = logical_end.saturating_sub(CHUNK);
        let buf = read_range(file, start, logical_end)?;
        match buf.iter().rposition(|&b| b != 0) {
            Some(i) => {
                logical_end = start + i as u64 + 1;
                break;
            }
            None => logical_end = start,
        }
    }
    let line_max = MAX_LINE_BYTES as u64 + 1;
    let wstart = logical_end.saturating_sub(2 * line_max);
    let window = read_range(file, wstart, logical_end)?;
    let content_end = match window.iter().rposition(|&b| b == b'\n') {
        Some(i) => wstart + i as u64 + 1,
        None if wstart == 0 => 0,
        None => {
            return Err(corrupt(
                path,
                "the end of the file holds no line end for over 128 KiB (not an incomplete record: the broker never writes a line over 64 KiB)",
            ));
        }
    };
    let partial = window[usize::try_from(content_end - wstart).unwrap_or(window.len())..].to_vec();
    if partial.len() > MAX_LINE_BYTES {
        return Err(corrupt(
            path,
            "the bytes after the last complete line are longer than any line the broker writes",
        ));
    }
    if content_end == 0 {
        return Ok(Tail {
            content_end,
            logical_end,
            last: None,
            partial,
        });
    }
    let body = &window[..usize::try_from(content_end - wstart - 1).unwrap_or(0)];
    let start = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if wstart == 0 => 0,
        None => {
            return Err(corrupt(
                path,
                "the last line is longer than the 64 KiB limit",
            ));
        }
    };
    let line = &body[start..];
    let text =
        std::str::from_utf8(line).map_err(|_| corrupt(path, "the last line is not UTF-8"))?;
    let parsed = parse_line(text.strip_suffix('\r').unwrap_or(text)).map_err(|e| {
        corrupt(
            path,
            &format!("the last complete line is not a valid record ({e})"),
        )
    })?;
    if !parsed.hash_matches() {
        return Err(corrupt(
            path,
            &format!("the last record (seq {}) fails its hash check", parsed.seq),
        ));
    }
    Ok(Tail {
        content_end,
        logical_end,
        last: Some(parsed),
        partial,
    })
}

/// Finds the store's head `s` among the newest segments and follows the chain from it to
/// the end of the newest segment's complete records (`newest_end`). `Ok(None)`: no segment
/// holds `s`. `Err`: a record after `s` does not chain on from it.
fn follow_from(
    base: &Path,
    segments: &[(u64, PathBuf)],
    (newest, newest_path, newest_end): (u64, &Path, u64),
    s: &ChainHead,
    replay: &mut Replay,
) -> Result<Option<ChainHead>, AuditError> {
    let mut all = segments.to_vec();
    if all.is_empty() {
        all.push((newest, newest_path.to_owned()));
    }
    let reader = |n: u64,
                  path: &Path|
     -> Result<io::BufReader<io::Take<std::fs::File>>, AuditError> {
        let f = std::fs::File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        let limit = if n == newest { newest_end } else { u64::MAX };
        Ok(io::BufReader::new(f.take(limit)))
    };
    let from = all.len().saturating_sub(MAX_SEGMENTS_SEARCHED);
    for idx in (from..all.len()).rev() {
        let (n, path) = &all[idx];
        let mut r = reader(*n, path)?;
        let mut line_no = 0usize;
        let mut found = false;
        while let Some(line) = read_bounded_line(&mut r, MAX_LINE_BYTES)? {
            line_no += 1;
            if let super::line::BoundedLine::Line(l) = line
                && let Ok(p) = parse_line(&l)
                && p.seq == s.seq
                && p.hash == s.hash
                && p.hash_matches()
            {
                found = true;
                break;
            }
        }
        if !found {
            continue;
        }
        // Follow the chain from `s` to the end.
        let mut head = s.clone();
        let mut i = idx;
        loop {
            let (n, path) = &all[i];
            while let Some(line) = read_bounded_line(&mut r, MAX_LINE_BYTES)? {
                line_no += 1;
                let bad = |problem: String| {
                    AuditError::Corrupt(format!(
                        "{}, line {line_no}, after the store's chain head (seq {}): {problem}. \
                         Complete records after the head are kept only if they chain on from it. \
                         Run `lanyard-broker audit verify {}`",
                        path.display(),
                        s.seq,
                        base.display()
                    ))
                };
                let text = match line {
                    super::line::BoundedLine::Line(t) => t,
                    other => return Err(bad(other.problem())),
                };
                let p = parse_line(&text).map_err(|e| bad(e.to_string()))?;
                if !p.hash_matches() {
                    return Err(bad("the record fails its hash check".into()));
                }
                if p.seq != head.seq + 1 || p.prev != head.hash {
                    return Err(bad(format!(
                        "seq {} does not follow seq {} of the chain",
                        p.seq, head.seq
                    )));
                }
                let header = p.record.event == Event::AuditSegment;
                let first_of_segment = line_no == 1 && *n > 0;
                if header != first_of_segment || (header && p.record.segment != Some(*n)) {
                    return Err(bad(
                        "segment header out of place (segments renamed or joined)".into(),
                    ));
                }
                replay.add(&p.record);
                head = p.head();
            }
            if i + 1 >= all.len() {
                break;
            }
            i += 1;
            line_no = 0;
            r = reader(all[i].0, &all[i].1)?;
        }
        return Ok(Some(head));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritten_counts_only_nul_bytes() {
        // 10 bytes of record then 6 NULs, all cut.
        assert_eq!(len_unwritten(110, 100, 16, false), 6);
        // A record completed with its newline; the 6 NULs after it cut.
        assert_eq!(len_unwritten(110, 110, 6, true), 6);
    }
}
