//! `audit verify`: walks a log and reports the first place its chain breaks.
//!
//! Each record's hash is recomputed from its bytes, its `seq` must follow the previous one
//! and its `prev` must equal the previous record's hash. Given the store's chain head, a
//! file that ends early (truncated) or holds a different record at that position is caught
//! too. Lines are bounded to [`MAX_LINE_BYTES`] before parsing.

use std::fmt;
use std::io::BufRead;

use super::line::{
    BoundedLine, GENESIS_PREV, LineError, MAX_LINE_BYTES, ParsedLine, parse_line, read_bounded_line,
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
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// 1-based line number.
    pub line: usize,
    /// The record's `seq`, when the line could be read.
    pub seq: Option<u64>,
    /// What is wrong and what it means.
    pub problem: String,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "line {} (seq {seq}): {}", self.line, self.problem),
            None => write!(f, "line {}: {}", self.line, self.problem),
        }
    }
}

impl std::error::Error for VerifyFailure {}

fn fail(line: usize, seq: Option<u64>, problem: impl Into<String>) -> VerifyFailure {
    VerifyFailure {
        line,
        seq,
        problem: problem.into(),
    }
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// Reads and parses the next line; `Ok(None)` at end of input.
fn next_record(
    reader: &mut impl BufRead,
    line_no: usize,
) -> Result<Option<ParsedLine>, VerifyFailure> {
    let text = match read_bounded_line(reader, MAX_LINE_BYTES) {
        Ok(None) => return Ok(None),
        Ok(Some(BoundedLine::Line(s))) => s,
        Ok(Some(BoundedLine::TooLong(len))) => {
            return Err(fail(line_no, None, LineError::TooLong { len }.to_string()));
        }
        Ok(Some(BoundedLine::NotUtf8)) => {
            return Err(fail(line_no, None, LineError::NotUtf8.to_string()));
        }
        Err(e) => return Err(fail(line_no, None, format!("could not read the file: {e}"))),
    };
    parse_line(&text)
        .map(Some)
        .map_err(|e| fail(line_no, None, e.to_string()))
}

/// Verifies a whole log. `expected_head` is the store's chain head, if known: the file must
/// reach it, with the same hash at that seq.
pub fn verify(
    mut reader: impl BufRead,
    expected_head: Option<&ChainHead>,
) -> Result<VerifyReport, VerifyFailure> {
    let mut line_no = 0usize;
    let mut prev_hash = GENESIS_PREV.to_owned();
    let mut last_seq = 0u64;
    let mut records = 0u64;
    let mut first_time = None;
    let mut last_time = None;

    loop {
        line_no += 1;
        let Some(p) = next_record(&mut reader, line_no)? else {
            line_no -= 1;
            break;
        };
        let seq = Some(p.seq);
        if !p.hash_matches() {
            return Err(fail(
                line_no,
                seq,
                "hash mismatch — the record was edited (its content no longer matches its hash)",
            ));
        }
        let expected = last_seq + 1;
        if p.seq == expected {
            if p.prev != prev_hash {
                return Err(fail(
                    line_no,
                    seq,
                    format!(
                        "prev ({}…) is not the hash of the record before it ({}…) — a record before this line was replaced, or the file was spliced from another chain",
                        short(&p.prev),
                        short(&prev_hash)
                    ),
                ));
            }
        } else if p.seq > expected {
            // A record is missing here; if the very next line is the missing one, they were
            // swapped rather than deleted.
            let swapped = matches!(
                next_record(&mut reader, line_no + 1),
                Ok(Some(n)) if n.seq == expected
            );
            let problem = if swapped {
                format!(
                    "records out of order: seq {} comes before seq {expected} — records were swapped or moved",
                    p.seq
                )
            } else if p.seq == expected + 1 {
                format!(
                    "record seq {expected} is missing (seq jumps from {last_seq} to {}) — it was deleted",
                    p.seq
                )
            } else {
                format!(
                    "records seq {expected} to {} are missing (seq jumps from {last_seq} to {}) — they were deleted",
                    p.seq - 1,
                    p.seq
                )
            };
            return Err(fail(line_no, seq, problem));
        } else if p.seq == last_seq {
            return Err(fail(
                line_no,
                seq,
                format!(
                    "seq {} appears twice — a forged record was inserted before this line, or a record was duplicated",
                    p.seq
                ),
            ));
        } else {
            return Err(fail(
                line_no,
                seq,
                format!(
                    "seq goes backwards ({last_seq} then {}) — records were reordered or copied in",
                    p.seq
                ),
            ));
        }
        if let Some(h) = expected_head
            && h.seq == p.seq
            && h.hash != p.hash
        {
            return Err(fail(
                line_no,
                seq,
                format!(
                    "this record's hash ({}…) differs from the store's chain head at seq {} ({}…) — the file was replaced or rewritten",
                    short(&p.hash),
                    h.seq,
                    short(&h.hash)
                ),
            ));
        }
        records += 1;
        if first_time.is_none() {
            first_time = Some(p.record.time.clone());
        }
        last_seq = p.seq;
        prev_hash = p.hash;
        last_time = Some(p.record.time);
    }

    if let Some(h) = expected_head
        && h.seq > last_seq
    {
        let missing = h.seq - last_seq;
        return Err(fail(
            line_no + 1,
            Some(last_seq + 1),
            format!(
                "the file ends at seq {last_seq} but the store's chain head is seq {} — the last {missing} record(s) were removed (the file was truncated); restore it from a backup",
                h.seq
            ),
        ));
    }

    Ok(VerifyReport {
        records,
        head: (last_seq > 0).then_some(ChainHead {
            seq: last_seq,
            hash: prev_hash,
        }),
        first_time,
        last_time,
    })
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
}
