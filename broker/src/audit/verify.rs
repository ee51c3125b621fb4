//! `audit verify`: walks a log — one file, or its segments in order — and reports the first
//! place its chain breaks.
//!
//! Each record's hash is recomputed from its bytes, its `seq` must follow the previous one
//! and its `prev` must equal the previous record's hash, across segment boundaries too
//! (format in [`super::segment`]): each segment after the first must begin with its
//! `audit_segment` record, so a missing, renamed or reordered segment is reported. Given
//! the store's chain head, a log that ends early (truncated) or holds a different record at
//! that position is caught too. Lines are bounded to [`MAX_LINE_BYTES`] before parsing.
//!
//! The end of the newest segment is read by the segment rules: a run of NUL bytes there is
//! unwritten space, and an incomplete record before it (a write cut short, never
//! acknowledged, cut by the broker at its next start) is reported in the
//! [`VerifyReport`], not as tampering. Anywhere else, either is a failure.

use std::fmt;
use std::io::BufRead;

use super::Event;
use super::line::{
    BoundedLine, GENESIS_PREV, LineError, MAX_LINE_BYTES, ParsedLine, parse_line, read_line,
};
use crate::store::ChainHead;

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of records.
    pub records: u64,
    /// The last record's seq and hash (`None` for an empty log).
    pub head: Option<ChainHead>,
    /// `time` of the first record, as written (RFC 3339).
    pub first_time: Option<String>,
    /// `time` of the last record, as written (RFC 3339).
    pub last_time: Option<String>,
    /// Segments read.
    pub segments: u64,
    /// The seq the walk began at (1 from segment 0; later when earlier segments were
    /// removed and the walk began at a later one, whose link back cannot be checked).
    pub first_seq: Option<u64>,
    /// Bytes of an incomplete record at the end of the newest segment (a write cut short).
    pub incomplete_tail_bytes: u64,
    /// NUL bytes of unwritten space at the end of the newest segment.
    pub unwritten_bytes: u64,
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// The segment file, when the log was given as named segments.
    pub file: Option<String>,
    /// 1-based line number (in `file`).
    pub line: usize,
    /// The record's `seq`, when the line could be read.
    pub seq: Option<u64>,
    /// What is wrong and what it means.
    pub problem: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        match self.seq {
            Some(seq) => write!(f, "line {} (seq {seq}): {}", self.line, self.problem),
            None => write!(f, "line {}: {}", self.line, self.problem),
        }
    }
}

impl std::error::Error for VerifyFailure {}

/// One segment to verify: its file name (for messages), its number and its bytes.
#[derive(Debug)]
pub struct SegmentInput<R> {
    /// The file name, for messages (`None`: a single unnamed stream).
    pub name: Option<String>,
    /// The segment's number ([`super::segment`]).
    pub number: u64,
    /// Its bytes.
    pub reader: R,
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// What the next line of a segment holds.
enum Next {
    Record(Box<ParsedLine>),
    /// The segment's unterminated end: an incomplete record of `incomplete` bytes, then
    /// `unwritten` NUL bytes.
    Tail {
        incomplete: usize,
        unwritten: usize,
    },
    End,
}

/// Reads and parses the next line.
fn next_line(reader: &mut impl BufRead) -> Result<Next, (Option<u64>, String)> {
    let read = match read_line(reader, MAX_LINE_BYTES) {
        Ok(None) => return Ok(Next::End),
        Ok(Some(r)) => r,
        Err(e) => return Err((None, format!("could not read the file: {e}"))),
    };
    let nuls = read.trailing_nuls.min(read.len);
    let incomplete = read.len - nuls;
    // An unterminated end is a tail only if it could be a cut write: never longer than a line.
    if !read.terminated && incomplete <= MAX_LINE_BYTES {
        // A complete record that only lacks its newline is still a record.
        if let BoundedLine::Line(text) = &read.line
            && nuls == 0
            && let Ok(p) = parse_line(text)
            && p.hash_matches()
        {
            return Ok(Next::Record(Box::new(p)));
        }
        return Ok(Next::Tail {
            incomplete,
            unwritten: nuls,
        });
    }
    let text = match read.line {
        BoundedLine::Line(s) => s,
        BoundedLine::TooLong(len) => return Err((None, LineError::TooLong { len }.to_string())),
        BoundedLine::NotUtf8 => return Err((None, LineError::NotUtf8.to_string())),
    };
    parse_line(&text)
        .map(|p| Next::Record(Box::new(p)))
        .map_err(|e| (None, e.to_string()))
}

/// Verifies one log stream (a single file, read as segment 0 and the newest). `expected_head`
/// is the store's chain head, if known: the file must reach it, with the same hash at that
/// seq.
pub fn verify(
    reader: impl BufRead,
    expected_head: Option<&ChainHead>,
) -> Result<VerifyReport, VerifyFailure> {
    verify_segments(
        vec![SegmentInput {
            name: None,
            number: 0,
            reader,
        }],
        expected_head,
    )
}

/// Verifies a log given as consecutive segments, oldest first (the last is the newest).
/// Starting at a segment after 0 (earlier ones removed) checks the chain from that
/// segment's first record on.
pub fn verify_segments<R: BufRead>(
    segments: Vec<SegmentInput<R>>,
    expected_head: Option<&ChainHead>,
) -> Result<VerifyReport, VerifyFailure> {
    let mut w = Walk {
        prev_hash: GENESIS_PREV.to_owned(),
        last_seq: 0,
        records: 0,
        first_seq: None,
        first_time: None,
        last_time: None,
    };
    let count = segments.len();
    let mut incomplete_tail_bytes = 0;
    let mut unwritten_bytes = 0;
    let mut last_name = None;
    let mut last_line = 0;
    let first_number = segments.first().map_or(0, |s| s.number);
    for (i, seg) in segments.into_iter().enumerate() {
        let expected_number = first_number + i as u64;
        let newest = i + 1 == count;
        let file = seg.name.clone();
        let fail = |line: usize, seq: Option<u64>, problem: String| VerifyFailure {
            file: file.clone(),
            line,
            seq,
            problem,
        };
        if seg.number != expected_number {
            return Err(fail(
                0,
                None,
                format!(
                    "segment {expected_number} is missing (this is segment {}) — a segment was deleted or renamed",
                    seg.number
                ),
            ));
        }
        let mut reader = seg.reader;
        let mut line_no = 0usize;
        loop {
            line_no += 1;
            let p = match next_line(&mut reader) {
                Err((seq, problem)) => return Err(fail(line_no, seq, problem)),
                Ok(Next::End) => {
                    line_no -= 1;
                    break;
                }
                Ok(Next::Tail {
                    incomplete,
                    unwritten,
                }) => {
                    if !newest {
                        return Err(fail(
                            line_no,
                            None,
                            "the segment does not end with a complete line, yet a later segment exists — the segment was cut or edited".into(),
                        ));
                    }
                    incomplete_tail_bytes = incomplete as u64;
                    unwritten_bytes = unwritten as u64;
                    line_no -= 1;
                    break;
                }
                Ok(Next::Record(p)) => p,
            };
            let header = p.record.event == Event::AuditSegment;
            if line_no == 1 && seg.number > 0 {
                if !header || p.record.segment != Some(seg.number) {
                    return Err(fail(
                        line_no,
                        Some(p.seq),
                        format!(
                            "segment {} does not begin with its audit_segment record (segment {}) — segments were renamed, reordered or edited",
                            seg.number,
                            p.record
                                .segment
                                .map_or("none".to_owned(), |n| n.to_string())
                        ),
                    ));
                }
            } else if header {
                return Err(fail(
                    line_no,
                    Some(p.seq),
                    "an audit_segment record inside a segment — segments were joined or the record was copied in".into(),
                ));
            }
            let starts_walk = w.first_seq.is_none() && seg.number > 0 && i == 0;
            match w.step(&p, starts_walk, expected_head) {
                Err(problem) => return Err(fail(line_no, Some(p.seq), problem)),
                Ok(Some(gap)) => {
                    // Swapped rather than deleted when the very next line is the missing one.
                    let swapped = matches!(
                        next_line(&mut reader),
                        Ok(Next::Record(n)) if n.seq == gap.expected
                    );
                    return Err(fail(line_no, Some(p.seq), gap.describe(swapped)));
                }
                Ok(None) => {}
            }
            w.accept(*p);
        }
        if line_no == 0 && !newest {
            return Err(fail(
                1,
                None,
                "the segment is empty, yet a later segment exists — its records were removed"
                    .into(),
            ));
        }
        last_name = file;
        last_line = line_no;
    }

    if let Some(h) = expected_head
        && h.seq > w.last_seq
    {
        let missing = h.seq - w.last_seq;
        return Err(VerifyFailure {
            file: last_name,
            line: last_line + 1,
            seq: Some(w.last_seq + 1),
            problem: format!(
                "the log ends at seq {} but the store's chain head is seq {} — the last {missing} record(s) were removed (the file was truncated); restore it from a backup",
                w.last_seq, h.seq
            ),
        });
    }

    Ok(VerifyReport {
        records: w.records,
        head: (w.records > 0).then_some(ChainHead {
            seq: w.last_seq,
            hash: w.prev_hash,
        }),
        first_time: w.first_time,
        last_time: w.last_time,
        segments: count as u64,
        first_seq: w.first_seq,
        incomplete_tail_bytes,
        unwritten_bytes,
    })
}

/// The chain walked so far.
struct Walk {
    prev_hash: String,
    last_seq: u64,
    records: u64,
    first_seq: Option<u64>,
    first_time: Option<String>,
    last_time: Option<String>,
}

/// A record ahead of the next expected one: deleted, or swapped with the next line.
struct Gap {
    seq: u64,
    expected: u64,
    last: u64,
}

impl Gap {
    fn describe(&self, swapped: bool) -> String {
        let Self {
            seq,
            expected,
            last,
        } = *self;
        if swapped {
            format!(
                "records out of order: seq {seq} comes before seq {expected} — records were swapped or moved"
            )
        } else if seq == expected + 1 {
            format!(
                "record seq {expected} is missing (seq jumps from {last} to {seq}) — it was deleted"
            )
        } else {
            format!(
                "records seq {expected} to {} are missing (seq jumps from {last} to {seq}) — they were deleted",
                seq - 1
            )
        }
    }
}

impl Walk {
    /// Checks `p` against the chain; `Ok(Some(gap))` when records are missing before it.
    /// `starts_walk`: the first record of a walk that began after segment 0, whose link back
    /// is not checked.
    fn step(
        &self,
        p: &ParsedLine,
        starts_walk: bool,
        expected_head: Option<&ChainHead>,
    ) -> Result<Option<Gap>, String> {
        if !p.hash_matches() {
            return Err(
                "hash mismatch — the record was edited (its content no longer matches its hash)"
                    .into(),
            );
        }
        let expected = self.last_seq + 1;
        if starts_walk {
            // Accepted as the start.
        } else if p.seq == expected {
            if p.prev != self.prev_hash {
                return Err(format!(
                    "prev ({}…) is not the hash of the record before it ({}…) — a record before this line was replaced, or the file was spliced from another chain",
                    short(&p.prev),
                    short(&self.prev_hash)
                ));
            }
        } else if p.seq > expected {
            return Ok(Some(Gap {
                seq: p.seq,
                expected,
                last: self.last_seq,
            }));
        } else if p.seq == self.last_seq {
            return Err(format!(
                "seq {} appears twice — a forged record was inserted before this line, or a record was duplicated",
                p.seq
            ));
        } else {
            return Err(format!(
                "seq goes backwards ({} then {}) — records were reordered or copied in",
                self.last_seq, p.seq
            ));
        }
        if let Some(h) = expected_head
            && h.seq == p.seq
            && h.hash != p.hash
        {
            return Err(format!(
                "this record's hash ({}…) differs from the store's chain head at seq {} ({}…) — the file was replaced or rewritten",
                short(&p.hash),
                h.seq,
                short(&h.hash)
            ));
        }
        Ok(None)
    }

    fn accept(&mut self, p: ParsedLine) {
        self.records += 1;
        if self.first_seq.is_none() {
            self.first_seq = Some(p.seq);
            self.first_time = Some(p.record.time.clone());
        }
        self.last_seq = p.seq;
        self.prev_hash = p.hash;
        self.last_time = Some(p.record.time);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::super::line::{build_line, sha256_hex};
    use super::super::{AuditRecord, Decision, Event};
    use super::*;

    fn record(i: u64) -> AuditRecord {
        AuditRecord {
            identity: Some(format!("subject-{i}")),
            ..AuditRecord::new(
                format!("2026-01-01T00:00:{i:02}Z"),
                Event::Issue,
                Decision::Allow,
                format!("reason-{i}"),
            )
        }
    }

    /// A clean log of `n` records, as lines, plus its head.
    fn log(n: u64) -> (Vec<String>, ChainHead) {
        let mut prev = GENESIS_PREV.to_owned();
        let mut lines = Vec::new();
        for i in 1..=n {
            let (line, hash) = build_line(i, &prev, &record(i)).expect("build");
            lines.push(line);
            prev = hash;
        }
        (lines, ChainHead { seq: n, hash: prev })
    }

    fn join(lines: &[String]) -> String {
        let mut s = lines.join("\n");
        s.push('\n');
        s
    }

    fn run(lines: &[String], head: Option<&ChainHead>) -> Result<VerifyReport, VerifyFailure> {
        verify(Cursor::new(join(lines)), head)
    }

    #[test]
    fn a_clean_log_verifies() {
        let (lines, head) = log(5);
        let report = run(&lines, Some(&head)).expect("clean");
        assert_eq!(report.records, 5);
        assert_eq!(report.head, Some(head));
        assert_eq!(report.first_time.as_deref(), Some("2026-01-01T00:00:01Z"));
        assert_eq!(report.last_time.as_deref(), Some("2026-01-01T00:00:05Z"));

        let empty = verify(Cursor::new(""), None).expect("empty log");
        assert_eq!((empty.records, empty.head), (0, None));
    }

    #[test]
    fn an_edited_field_is_a_hash_mismatch_at_its_line() {
        let (mut lines, _) = log(5);
        lines[2] = lines[2].replace("subject-3", "subject-X");
        let f = run(&lines, None).expect_err("edit");
        assert_eq!((f.line, f.seq), (3, Some(3)));
        assert!(f.problem.contains("hash mismatch"), "{f}");
        assert!(
            f.to_string()
                .starts_with("line 3 (seq 3): hash mismatch — the record was edited"),
            "{f}"
        );
    }

    #[test]
    fn a_dropped_middle_record_is_reported_where_it_is_missing() {
        let (mut lines, _) = log(5);
        lines.remove(2);
        let f = run(&lines, None).expect_err("drop");
        assert_eq!((f.line, f.seq), (3, Some(4)));
        assert!(f.problem.contains("seq 3 is missing"), "{f}");
        assert!(f.problem.contains("deleted"), "{f}");
    }

    #[test]
    fn a_dropped_last_record_needs_and_uses_the_store_head() {
        let (mut lines, head) = log(5);
        lines.pop();
        // Without the store's head a truncated tail is indistinguishable from a short log.
        assert_eq!(run(&lines, None).expect("prefix is consistent").records, 4);
        let f = run(&lines, Some(&head)).expect_err("truncated");
        assert_eq!((f.line, f.seq), (5, Some(5)));
        assert!(f.problem.contains("truncated"), "{f}");
        assert!(f.problem.contains("ends at seq 4"), "{f}");
    }

    #[test]
    fn a_replaced_file_is_caught_by_the_store_head() {
        let (lines, mut head) = log(3);
        head.hash = "a".repeat(64);
        let f = run(&lines, Some(&head)).expect_err("replaced");
        assert_eq!((f.line, f.seq), (3, Some(3)));
        assert!(f.problem.contains("store's chain head"), "{f}");
    }

    #[test]
    fn swapped_records_are_reported_as_out_of_order() {
        let (mut lines, _) = log(5);
        lines.swap(2, 3);
        let f = run(&lines, None).expect_err("swap");
        assert_eq!((f.line, f.seq), (3, Some(4)));
        assert!(f.problem.contains("out of order"), "{f}");
    }

    #[test]
    fn a_record_moved_back_is_reported_as_going_backwards() {
        let (mut lines, _) = log(5);
        let moved = lines.remove(1);
        lines.insert(3, moved); // 1 3 4 2 5
        let f = run(&lines, None).expect_err("moved");
        assert_eq!(f.line, 2);
        assert!(f.problem.contains("missing"), "{f}");
        let (mut lines, _) = log(5);
        lines.push(lines[1].clone()); // 1 2 3 4 5 2
        let f = run(&lines, None).expect_err("copied");
        assert_eq!((f.line, f.seq), (6, Some(2)));
        assert!(f.problem.contains("backwards"), "{f}");
    }

    #[test]
    fn an_inserted_forged_record_is_detected() {
        let (mut lines, _) = log(5);
        let prev2 = parse_line(&lines[1]).expect("parse").hash;
        // A forger who knows the format writes a self-consistent record after seq 2.
        let (forged, _) = build_line(3, &prev2, &record(99)).expect("forge");
        lines.insert(2, forged);
        let f = run(&lines, None).expect_err("insert");
        assert_eq!((f.line, f.seq), (4, Some(3)));
        assert!(f.problem.contains("appears twice"), "{f}");
        assert!(f.problem.contains("inserted"), "{f}");

        // A forged record that does not link to the previous hash.
        let (mut lines, _) = log(3);
        let (forged, _) = build_line(3, &"b".repeat(64), &record(99)).expect("forge");
        lines[2] = forged;
        let f = run(&lines, None).expect_err("replace");
        assert_eq!((f.line, f.seq), (3, Some(3)));
        assert!(f.problem.starts_with("prev"), "{f}");
    }

    #[test]
    fn garbage_long_blank_and_incomplete_lines_are_reported() {
        let (mut lines, _) = log(3);
        lines.insert(1, "this is not json".into());
        let f = run(&lines, None).expect_err("garbage");
        assert_eq!((f.line, f.seq), (2, None));
        assert!(f.problem.contains("not a JSON object"), "{f}");

        let (mut lines, _) = log(3);
        lines.insert(2, format!("{{\"x\":\"{}\"}}", "a".repeat(100 * 1024)));
        let f = run(&lines, None).expect_err("long");
        assert_eq!(f.line, 3);
        assert!(f.problem.contains("byte limit"), "{f}");

        let (mut lines, _) = log(3);
        lines.insert(1, String::new());
        let f = run(&lines, None).expect_err("blank");
        assert_eq!(f.line, 2);
        assert!(f.problem.contains("blank line"), "{f}");

        let (mut lines, _) = log(3);
        let half = lines[2][..40].to_owned();
        lines[2] = half;
        let f = run(&lines, None).expect_err("cut");
        assert_eq!(f.line, 3);
        assert!(f.problem.contains("not a JSON object"), "{f}");
    }

    #[test]
    fn a_missing_field_is_named() {
        let (lines, _) = log(2);
        // Rebuild line 2 without `decision`, with a correct hash, so only the field is wrong.
        let p = parse_line(&lines[1]).expect("parse");
        let body = format!(
            r#"{{"seq":2,"prev":"{}","time":"t","event":"issue","reason":"r"}}"#,
            p.prev
        );
        let h = sha256_hex(body.as_bytes());
        let line = format!(r#"{},"hash":"{h}"}}"#, &body[..body.len() - 1]);
        let f = run(&[lines[0].clone(), line], None).expect_err("missing");
        assert_eq!(f.line, 2);
        assert!(f.problem.contains("missing field `decision`"), "{f}");
    }

    #[test]
    fn the_newest_segments_unwritten_space_and_cut_write_are_reported_not_failed() {
        let (lines, head) = log(3);
        let mut bytes = join(&lines).into_bytes();
        bytes.extend_from_slice(&[0u8; 70_000]);
        let r = verify(Cursor::new(bytes.clone()), Some(&head)).expect("unwritten space");
        assert_eq!(
            (r.records, r.unwritten_bytes, r.incomplete_tail_bytes),
            (3, 70_000, 0)
        );

        let (lines, _) = log(4);
        let mut bytes = join(&lines[..3]).into_bytes();
        bytes.extend_from_slice(&lines[3].as_bytes()[..50]);
        bytes.extend_from_slice(&[0u8; 10]);
        let r = verify(Cursor::new(bytes), Some(&head)).expect("cut write");
        assert_eq!(
            (r.records, r.incomplete_tail_bytes, r.unwritten_bytes),
            (3, 50, 10)
        );

        // A record that lacks only its newline counts.
        let (lines, head4) = log(4);
        let text = join(&lines);
        let r = verify(
            Cursor::new(text.trim_end_matches('\n').to_owned()),
            Some(&head4),
        )
        .expect("no newline");
        assert_eq!(r.records, 4);

        // But an unterminated end longer than any line is garbage.
        let (lines, _) = log(2);
        let mut bytes = join(&lines).into_bytes();
        bytes.extend_from_slice(&vec![b'x'; MAX_LINE_BYTES + 1]);
        let f = verify(Cursor::new(bytes), None).expect_err("garbage");
        assert!(f.problem.contains("byte limit"), "{f}");

        // And the store's head still catches a tail cut at a line end.
        let (lines, head) = log(3);
        let f = verify(Cursor::new(join(&lines[..2])), Some(&head)).expect_err("truncated");
        assert!(f.problem.contains("truncated"), "{f}");
    }
}
