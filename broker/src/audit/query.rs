//! `audit query`: prints the records that match a filter.
//!
//! Query reads records — of one file, or of a log's segments in order
//! ([`query_segments`]); it does not check the chain (that is `audit verify`). Lines are
//! bounded to [`MAX_LINE_BYTES`] before parsing, and a line that is not a record stops the
//! query with its file and line number. The end of the newest segment follows the segment
//! rules ([`super::segment`]): unwritten (NUL) space and an incomplete record before it are
//! not records, and are skipped.

use std::io::BufRead;
use std::time::SystemTime;

use lanyard::clock::parse_rfc3339;

use super::line::{BoundedLine, LineError, MAX_LINE_BYTES, parse_line, read_line};
use super::verify::SegmentInput;
use super::{Decision, Event};

/// Which records to print. Every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Records at or after this time.
    pub since: Option<SystemTime>,
    /// Records at or before this time.
    pub until: Option<SystemTime>,
    /// Identity subject, a glob (`*` also matches `:` and `/`), e.g.
    /// `system:serviceaccount:shop:*`. Records without an identity never match.
    pub identity: Option<String>,
    /// Exact role name.
    pub role: Option<String>,
    /// Allow or deny.
    pub decision: Option<Decision>,
    /// Event kind.
    pub event: Option<Event>,
}

/// Why a query stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The `identity` glob does not compile.
    #[error("invalid identity pattern `{pattern}`: {message}")]
    BadPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
    /// A line is not a record (or its time is unreadable when filtering by time).
    #[error("{}line {line}: {problem}; run `audit verify` on the file to check it", file.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    BadLine {
        /// The segment file, when the log was given as named segments.
        file: Option<String>,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// Reading failed.
    #[error("reading the audit log: {0}")]
    Io(#[from] std::io::Error),
}

/// Passes each line whose record matches `filter` (unchanged, without its newline) to `out`;
/// returns how many matched.
pub fn query(
    reader: impl BufRead,
    filter: &Filter,
    out: &mut dyn FnMut(&str),
) -> Result<u64, QueryError> {
    query_segments(
        vec![SegmentInput {
            name: None,
            number: 0,
            reader,
        }],
        filter,
        out,
    )
}

/// [`query`] over a log's segments, oldest first (the last is the newest).
pub fn query_segments<R: BufRead>(
    segments: Vec<SegmentInput<R>>,
    filter: &Filter,
    out: &mut dyn FnMut(&str),
) -> Result<u64, QueryError> {
    let identity = filter
        .identity
        .as_deref()
        .map(|p| {
            crate::policy::Pattern::new(p).map_err(|e| QueryError::BadPattern {
                pattern: p.to_owned(),
                message: e.kind().to_string(),
            })
        })
        .transpose()?;
    let by_time = filter.since.is_some() || filter.until.is_some();
    let mut matched = 0u64;
    let count = segments.len();
    for (i, seg) in segments.into_iter().enumerate() {
        let newest = i + 1 == count;
        let mut reader = seg.reader;
        let mut line_no = 0usize;
        while let Some(read) = read_line(&mut reader, MAX_LINE_BYTES)? {
            line_no += 1;
            let bad = |problem: String| QueryError::BadLine {
                file: seg.name.clone(),
                line: line_no,
                problem,
            };
            // The newest segment's unwritten space, or an incomplete record before it (never
            // longer than a line), is not a record.
            let tail = !read.terminated
                && newest
                && read.len - read.trailing_nuls.min(read.len) <= MAX_LINE_BYTES;
            let text = match read.line {
                BoundedLine::Line(s) => s,
                _ if tail => break,
                BoundedLine::TooLong(len) => {
                    return Err(bad(LineError::TooLong { len }.to_string()));
                }
                BoundedLine::NotUtf8 => return Err(bad(LineError::NotUtf8.to_string())),
            };
            let rec = match parse_line(&text) {
                Ok(p) => p.record,
                Err(_) if tail => break,
                Err(e) => return Err(bad(e.to_string())),
            };
            if by_time {
                let Some(t) = parse_rfc3339(&rec.time) else {
                    return Err(bad(format!(
                        "`time` is not an RFC 3339 time: `{}`",
                        rec.time.chars().take(64).collect::<String>()
                    )));
                };
                if filter.since.is_some_and(|s| t < s) || filter.until.is_some_and(|u| t > u) {
                    continue;
                }
            }
            if let Some(m) = &identity
                && !rec.identity.as_deref().is_some_and(|i| m.is_match(i))
            {
                continue;
            }
            if filter
                .role
                .as_deref()
                .is_some_and(|r| rec.role.as_deref() != Some(r))
                || filter.decision.is_some_and(|d| rec.decision != d)
                || filter.event.is_some_and(|e| rec.event != e)
            {
                continue;
            }
            matched += 1;
            out(&text);
        }
    }
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::super::AuditRecord;
    use super::super::line::{GENESIS_PREV, build_line};
    use super::*;

    fn rec(
        time: &str,
        event: Event,
        decision: Decision,
        identity: Option<&str>,
        role: Option<&str>,
    ) -> AuditRecord {
        AuditRecord {
            identity: identity.map(str::to_owned),
            role: role.map(str::to_owned),
            ..AuditRecord::new(time.into(), event, decision, "r")
        }
    }

    fn sample() -> String {
        let records = [
            rec(
                "2026-03-01T10:00:00Z",
                Event::Issue,
                Decision::Allow,
                Some("system:serviceaccount:shop:api"),
                Some("orders-read"),
            ),
            rec(
                "2026-03-01T11:00:00Z",
                Event::Deny,
                Decision::Deny,
                Some("system:serviceaccount:shop:worker"),
                Some("orders-write"),
            ),
            rec(
                "2026-03-01T12:00:00Z",
                Event::Issue,
                Decision::Allow,
                Some("system:serviceaccount:billing:api"),
                Some("orders-read"),
            ),
            rec(
                "2026-03-01T13:00:00Z",
                Event::PolicyReload,
                Decision::Allow,
                None,
                None,
            ),
        ];
        let mut prev = GENESIS_PREV.to_owned();
        let mut out = String::new();
        for (i, r) in records.iter().enumerate() {
            let (line, hash) = build_line(i as u64 + 1, &prev, r).expect("build");
            out.push_str(&line);
            out.push('\n');
            prev = hash;
        }
        out
    }

    /// The `seq` of every matching line.
    fn seqs(filter: &Filter) -> Vec<u64> {
        let mut got = Vec::new();
        let n = query(Cursor::new(sample()), filter, &mut |l| {
            got.push(parse_line(l).expect("raw line passed through").seq)
        })
        .expect("query");
        assert_eq!(n as usize, got.len());
        got
    }

    fn at(s: &str) -> Option<SystemTime> {
        Some(parse_rfc3339(s).expect("time"))
    }

    #[test]
    fn each_field_filters() {
        assert_eq!(seqs(&Filter::default()), [1, 2, 3, 4]);
        let f = |identity: &str| Filter {
            identity: Some(identity.into()),
            ..Filter::default()
        };
        assert_eq!(seqs(&f("system:serviceaccount:shop:*")), [1, 2]);
        assert_eq!(seqs(&f("*:api")), [1, 3]);
        assert_eq!(seqs(&f("system:serviceaccount:shop:api")), [1]);
        assert_eq!(
            seqs(&Filter {
                role: Some("orders-read".into()),
                ..Filter::default()
            }),
            [1, 3]
        );
        assert_eq!(
            seqs(&Filter {
                decision: Some(Decision::Deny),
                ..Filter::default()
            }),
            [2]
        );
        assert_eq!(
            seqs(&Filter {
                event: Some(Event::PolicyReload),
                ..Filter::default()
            }),
            [4]
        );
        assert_eq!(
            seqs(&Filter {
                event: Some(Event::Issue),
                identity: Some("*shop*".into()),
                ..Filter::default()
            }),
            [1]
        );
    }

    #[test]
    fn time_range_is_inclusive() {
        let f = Filter {
            since: at("2026-03-01T11:00:00Z"),
            until: at("2026-03-01T12:00:00Z"),
            ..Filter::default()
        };
        assert_eq!(seqs(&f), [2, 3]);
        let f = Filter {
            since: at("2026-03-01T12:30:00Z"),
            ..Filter::default()
        };
        assert_eq!(seqs(&f), [4]);
        let f = Filter {
            until: at("2026-03-01T09:00:00Z"),
            ..Filter::default()
        };
        assert_eq!(seqs(&f), Vec::<u64>::new());
    }

    #[test]
    fn bad_lines_and_patterns_are_errors_with_line_numbers() {
        let mut input = sample();
        input.insert_str(0, "{\"seq\":1}\n");
        let err = query(Cursor::new(input), &Filter::default(), &mut |_| {}).expect_err("bad");
        assert!(
            matches!(&err, QueryError::BadLine { line: 1, problem, .. } if problem.contains("missing field")),
            "{err}"
        );

        let mut input = sample();
        input.push_str(&"x".repeat(MAX_LINE_BYTES + 10));
        let err = query(Cursor::new(input), &Filter::default(), &mut |_| {}).expect_err("long");
        assert!(matches!(&err, QueryError::BadLine { line: 5, .. }), "{err}");

        let f = Filter {
            identity: Some("[unclosed".into()),
            ..Filter::default()
        };
        assert!(matches!(
            query(Cursor::new(sample()), &f, &mut |_| {}),
            Err(QueryError::BadPattern { .. })
        ));
    }
}
