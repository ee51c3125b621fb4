//! Audit segments: the log as numbered files, one chain running through them.
//!
//! # Format
//! - **Names.** Segment 0 is the file `audit.sink` names (a log written before segments
//!   existed is segment 0, read as before). Segment `n ≥ 1` is `<sink>.<n>` with `n` written
//!   in at least six digits (`audit.log.000001`), in the same directory. Numbers are
//!   consecutive; old segments may be removed from the front (retention), never from the
//!   middle.
//! - **Header.** Segment `n ≥ 1` begins with an ordinary chained record, event
//!   `audit_segment`, whose `segment` field is `n`: its `prev` is the hash of the previous
//!   segment's last record and its `seq` follows that record's. So the chain runs through the
//!   files, and a missing, extra, renamed or reordered segment breaks it where it happens. An
//!   `audit_segment` record appears nowhere else.
//! - **End of a sealed segment.** Every segment but the newest ends with the newline of its
//!   last record.
//! - **End of the newest segment.** After its last newline the newest segment may hold, in
//!   this order, an incomplete record (a write cut short by a crash or a full disk: not part
//!   of the chain; the broker cuts it at its next start and records that it did, as an
//!   `audit_repair` record with `cut_bytes`) and then a run of NUL bytes, which is
//!   **unwritten space**, not a record and not tampering: a segment allocated ahead of its
//!   records, zero-filled, or blocks a crash left zeroed. A writer that allocates ahead
//!   writes each record at the logical end (the end of the last newline-terminated record)
//!   and cuts a segment to its logical end before it starts the next one.
//! - **Rotation.** When a write brings a segment to `audit.segment_max_bytes` or more, the
//!   next write starts segment `n + 1` (its header is written and synced, and the directory
//!   synced, before any record goes there). A segment can so exceed the size by one group of
//!   records.

use std::io;
use std::path::{Path, PathBuf};

use super::verify::SegmentInput;

/// Digits a segment number is written with, at least.
const DIGITS: usize = 6;

/// The path of segment `n` of the log whose segment 0 is `base`.
pub fn path(base: &Path, n: u64) -> PathBuf {
    if n == 0 {
        return base.to_owned();
    }
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{n:0DIGITS$}"));
    PathBuf::from(name)
}

/// Splits a segment's path into the log's base path and the segment's number: `audit.log`
/// is segment 0 of `audit.log`, `audit.log.000003` segment 3.
pub fn parse(file: &Path) -> (PathBuf, u64) {
    let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
        return (file.to_owned(), 0);
    };
    if let Some((stem, digits)) = name.rsplit_once('.')
        && !stem.is_empty()
        && digits.len() >= DIGITS
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = digits.parse::<u64>()
        && n > 0
    {
        return (file.with_file_name(stem), n);
    }
    (file.to_owned(), 0)
}

/// The segments of the log whose segment 0 is `base` that exist, by number.
pub fn list(base: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let dir = match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let Some(base_name) = base.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let n = if name == base_name {
            0
        } else {
            match name
                .strip_prefix(base_name)
                .and_then(|rest| rest.strip_prefix('.'))
            {
                Some(d) if d.len() >= DIGITS && d.bytes().all(|b| b.is_ascii_digit()) => {
                    match d.parse::<u64>() {
                        Ok(n) if n > 0 => n,
                        _ => continue,
                    }
                }
                _ => continue,
            }
        };
        found.push((n, base.with_file_name(name)));
    }
    found.sort_by_key(|(n, _)| *n);
    Ok(found)
}

/// The segments from `first` on, checked to be consecutive; `Err` names the first missing
/// one.
pub fn consecutive_from(
    base: &Path,
    first: u64,
) -> io::Result<Result<Vec<(u64, PathBuf)>, String>> {
    let all = list(base)?;
    let from: Vec<_> = all.into_iter().filter(|(n, _)| *n >= first).collect();
    for (expected, (n, _)) in (first..).zip(from.iter()) {
        if *n != expected {
            return Ok(Err(format!(
                "segment {} is missing: {} is followed by {} — a segment was deleted or renamed",
                path(base, expected).display(),
                path(base, expected - 1).display(),
                path(base, *n).display()
            )));
        }
    }
    Ok(Ok(from))
}

/// The segments of a log for `audit verify`/`audit query`, from `file` (segment 0, or any
/// later segment when earlier ones were removed) to the newest, opened. `Ok(Err(..))` names
/// a missing segment.
pub fn open_from(
    file: &Path,
) -> io::Result<Result<Vec<SegmentInput<io::BufReader<std::fs::File>>>, String>> {
    let (base, first) = parse(file);
    // The file asked for must exist, whatever else does.
    std::fs::metadata(file)?;
    let segments = match consecutive_from(&base, first)? {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let mut out = Vec::with_capacity(segments.len());
    for (n, p) in segments {
        let f = std::fs::File::open(&p)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        out.push(SegmentInput {
            name: Some(p.display().to_string()),
            number: n,
            reader: io::BufReader::new(f),
        });
    }
    Ok(Ok(out))
}

/// How the bytes after a segment's last newline split: `(incomplete, unwritten)` — the
/// length of an incomplete record, then of the run of NUL bytes that ends the segment.
pub fn tail_parts(tail: &[u8]) -> (usize, usize) {
    let nuls = tail.iter().rev().take_while(|&&b| b == 0).count();
    (tail.len() - nuls, nuls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let base = Path::new("/var/lib/lanyard/audit.log");
        assert_eq!(path(base, 0), base);
        assert_eq!(
            path(base, 3),
            Path::new("/var/lib/lanyard/audit.log.000003")
        );
        assert_eq!(
            path(base, 1_234_567),
            Path::new("/var/lib/lanyard/audit.log.1234567")
        );
        for n in [0, 1, 42, 1_234_567] {
            assert_eq!(parse(&path(base, n)), (base.to_owned(), n));
        }
        // Not segment names: too few digits, zero, not digits.
        for other in ["audit.log.1", "audit.log.000000", "audit.log.bak", "audit"] {
            let p = Path::new(other);
            assert_eq!(parse(p), (p.to_owned(), 0), "{other}");
        }
    }

    #[test]
    fn listing_finds_the_segments_in_order_and_gaps_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("audit.log");
        for n in [0, 2, 1, 10] {
            std::fs::write(path(&base, n), "").expect("write");
        }
        std::fs::write(dir.path().join("audit.log.bak"), "").expect("write");
        std::fs::write(dir.path().join("other.log.000001"), "").expect("write");
        let got: Vec<u64> = list(&base).expect("list").iter().map(|(n, _)| *n).collect();
        assert_eq!(got, [0, 1, 2, 10]);
        let gap = consecutive_from(&base, 0).expect("list").expect_err("gap");
        assert!(gap.contains("audit.log.000003 is missing"), "{gap}");
        let from = consecutive_from(&base, 10).expect("list").expect("one");
        assert_eq!(from.len(), 1);
        assert!(
            list(&dir.path().join("none/audit.log"))
                .expect("list")
                .is_empty()
        );
    }

    #[test]
    fn a_tail_splits_into_an_incomplete_record_and_unwritten_space() {
        assert_eq!(tail_parts(b""), (0, 0));
        assert_eq!(tail_parts(b"\0\0\0\0"), (0, 4));
        assert_eq!(tail_parts(b"{\"seq\":4"), (8, 0));
        assert_eq!(tail_parts(b"{\"seq\":4\0\0"), (8, 2));
        // A NUL inside the record is part of the record (which is then garbage).
        assert_eq!(tail_parts(b"{\0x\0"), (3, 1));
    }
}
