//! The audit line format: building a chained line, parsing one back (bounded), and reading
//! lines from a file without trusting their length.
//!
//! A line is one JSON object: `{"seq":N,"prev":"<64 hex>", ...record fields..., "hash":"<64
//! hex>"}`. `hash` is the SHA-256 of the exact bytes of the line with its final
//! `,"hash":"…"` member removed, so checking it never depends on JSON canonicalisation and
//! keeps working when records gain fields.

use std::io::{self, BufRead};

use aws_lc_rs::digest;
use serde::Deserialize;

use super::AuditRecord;
use crate::store::ChainHead;

/// Longest audit line accepted, in bytes (without the newline). Longer lines are refused
/// before any parsing.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The `prev` of the first record of a chain.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Length of the textual suffix `,"hash":"<64 hex>"}`.
const HASH_SUFFIX_LEN: usize = r#","hash":""}"#.len() + 64;

/// Lowercase hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data).as_ref())
}

/// Longest a text field may be, JSON-escaped, in a record whose line would otherwise exceed
/// [`MAX_LINE_BYTES`]: longer fields are cut to this (marker included). Every text field at
/// this length, plus the field names and chain members, still fits a line (a test holds it).
pub const MAX_FIELD_BYTES: usize = 4096;

/// Why a record cannot become a line. The record is then not written (its request fails).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The record does not serialise.
    #[error("serialising the audit record: {0}")]
    Json(#[from] serde_json::Error),
    /// Even with every text field cut, the line is over the reader's limit.
    #[error(
        "the audit record's line would be {len} bytes even with its fields cut, over the {max} byte line limit"
    )]
    TooLong {
        /// The cut line's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Builds the line (without newline) for `rec` chained after `prev` at `seq`, and its hash.
///
/// Never longer than [`MAX_LINE_BYTES`], the limit every reader ([`parse_line`], `audit
/// verify`, `audit query`, resuming at start) holds lines to: a record whose line would be
/// longer has each text field over [`MAX_FIELD_BYTES`] cut, with a marker saying so and how
/// long it was ([`cut_marker`]); should that not be enough, the record is refused.
pub(crate) fn build_line(
    seq: u64,
    prev: &str,
    rec: &AuditRecord,
) -> Result<(String, String), BuildError> {
    build_line_within(seq, prev, rec, MAX_LINE_BYTES, MAX_FIELD_BYTES)
}

/// [`build_line`] with the limits as parameters.
fn build_line_within(
    seq: u64,
    prev: &str,
    rec: &AuditRecord,
    max_line: usize,
    max_field: usize,
) -> Result<(String, String), BuildError> {
    let built = chained_line(seq, prev, rec)?;
    if built.0.len() <= max_line {
        return Ok(built);
    }
    let mut cut = rec.clone();
    let mut fields = 0;
    for field in cut.text_fields_mut() {
        if cut_field(field, max_field) {
            fields += 1;
        }
    }
    let built = chained_line(seq, prev, &cut)?;
    if built.0.len() > max_line {
        return Err(BuildError::TooLong {
            len: built.0.len(),
            max: max_line,
        });
    }
    tracing::warn!(
        seq,
        fields,
        max_field_bytes = max_field,
        "audit record cut to fit the line limit: its longest fields end in a `[cut by the audit writer …]` marker"
    );
    Ok(built)
}

/// The line and its hash, whatever its length.
fn chained_line(
    seq: u64,
    prev: &str,
    rec: &AuditRecord,
) -> Result<(String, String), serde_json::Error> {
    let fields = serde_json::to_string(rec)?;
    // `fields` is a JSON object with at least `time`: `{"time":...}`.
    let fields = fields
        .strip_prefix('{')
        .filter(|f| f.len() > 1)
        .unwrap_or("}");
    let body = if fields == "}" {
        format!(r#"{{"seq":{seq},"prev":"{prev}"}}"#)
    } else {
        format!(r#"{{"seq":{seq},"prev":"{prev}",{fields}"#)
    };
    let hash = sha256_hex(body.as_bytes());
    let mut line = body;
    line.pop(); // the closing brace
    line.push_str(r#","hash":""#);
    line.push_str(&hash);
    line.push_str("\"}");
    Ok((line, hash))
}

/// What ends a cut field: ` …[cut by the audit writer: N bytes in all]`.
pub fn cut_marker(original_bytes: usize) -> String {
    format!("{CUT_MARK}: {original_bytes} bytes in all]")
}

/// How every [`cut_marker`] begins.
pub const CUT_MARK: &str = " …[cut by the audit writer";

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if c < ' ' => 6, // \u00XX
        c => c.len_utf8(),
    }
}

/// Cuts `field` so that, JSON-escaped, it takes at most `max` bytes including the
/// [`cut_marker`] it then ends with. Returns whether it was cut.
fn cut_field(field: &mut String, max: usize) -> bool {
    if field.chars().map(escaped_len).sum::<usize>() <= max {
        return false;
    }
    let marker = cut_marker(field.len());
    let room = max.saturating_sub(marker.len());
    let mut used = 0;
    let mut end = 0;
    for (i, c) in field.char_indices() {
        used += escaped_len(c);
        if used > room {
            break;
        }
        end = i + c.len_utf8();
    }
    field.truncate(end);
    field.push_str(&marker);
    true
}

/// One audit line, parsed. The record's own hash has been recomputed but not compared:
/// [`ParsedLine::hash_matches`] says whether the line is intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLine {
    /// Sequence number (1-based).
    pub seq: u64,
    /// Hash of the previous record (64 hex), or 64 zeros for the first.
    pub prev: String,
    /// The hash the line claims (64 hex).
    pub hash: String,
    /// SHA-256 (hex) of the line's bytes without its `hash` member, as recomputed.
    pub computed_hash: String,
    /// The record's fields.
    pub record: AuditRecord,
}

impl ParsedLine {
    /// Whether the stored hash matches the line's content (false: the line was edited).
    pub fn hash_matches(&self) -> bool {
        self.hash == self.computed_hash
    }

    /// The chain head this record represents.
    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// Why a line is not a well-formed audit record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// Longer than [`MAX_LINE_BYTES`]; not parsed.
    #[error(
        "line is {len} bytes, over the {max} byte limit — the broker never writes such lines; the file was edited or corrupted",
        max = MAX_LINE_BYTES
    )]
    TooLong {
        /// Its length in bytes (at least `MAX_LINE_BYTES + 1`).
        len: usize,
    },
    /// Not valid UTF-8.
    #[error("line is not valid UTF-8 — the file was edited or corrupted")]
    NotUtf8,
    /// Empty (or only whitespace).
    #[error("blank line — the broker never writes one; the file was edited")]
    Blank,
    /// Not a JSON object.
    #[error("not a JSON object ({0}) — the line was edited, or a write was cut short")]
    NotJson(String),
    /// A required field is absent.
    #[error("missing field `{0}` — the record was edited or was not written by the broker")]
    MissingField(String),
    /// A field has the wrong type or value.
    #[error("invalid field: {0} — the record was edited or was not written by the broker")]
    InvalidField(String),
    /// `seq`, `prev` or `hash` is malformed.
    #[error("{0} — the chain fields were edited")]
    BadChainField(String),
    /// `hash` is not the last member in the form the broker writes.
    #[error(
        "the `hash` field is not the line's last member in the broker's format — the line was rewritten (e.g. reformatted)"
    )]
    HashNotLast,
}

#[derive(Deserialize)]
struct RawLine {
    seq: u64,
    prev: String,
    hash: String,
    #[serde(flatten)]
    record: AuditRecord,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses one audit line (without its newline). Bounded: lines over [`MAX_LINE_BYTES`] are
/// refused before parsing. Never panics.
pub fn parse_line(line: &str) -> Result<ParsedLine, LineError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(LineError::TooLong { len: line.len() });
    }
    if line.trim().is_empty() {
        return Err(LineError::Blank);
    }
    // First make sure it is a JSON object at all, so that the error says so plainly.
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| LineError::NotJson(e.to_string()))?;
    let Some(obj) = value.as_object() else {
        return Err(LineError::NotJson("not an object".into()));
    };
    for field in ["seq", "prev", "hash", "time", "event", "decision", "reason"] {
        if !obj.contains_key(field) {
            return Err(LineError::MissingField(field.into()));
        }
    }
    let raw: RawLine =
        serde_json::from_value(value).map_err(|e| LineError::InvalidField(e.to_string()))?;
    if raw.seq == 0 {
        return Err(LineError::BadChainField(
            "`seq` is 0 but sequence numbers start at 1".into(),
        ));
    }
    if !is_hex64(&raw.prev) {
        return Err(LineError::BadChainField(
            "`prev` is not 64 lowercase hex characters".into(),
        ));
    }
    if !is_hex64(&raw.hash) {
        return Err(LineError::BadChainField(
            "`hash` is not 64 lowercase hex characters".into(),
        ));
    }
    // The hash member must be the last one, exactly as written: `,"hash":"<hex>"}`.
    let split = line.len().saturating_sub(HASH_SUFFIX_LEN);
    let (body, suffix) = match (line.get(..split), line.get(split..)) {
        (Some(b), Some(s)) => (b, s),
        _ => return Err(LineError::HashNotLast),
    };
    if suffix.get(..9) != Some(r#","hash":""#) || suffix.get(9..73) != Some(raw.hash.as_str()) {
        return Err(LineError::HashNotLast);
    }
    let mut hashed = String::with_capacity(body.len() + 1);
    hashed.push_str(body);
    hashed.push('}');
    Ok(ParsedLine {
        seq: raw.seq,
        prev: raw.prev,
        hash: raw.hash,
        computed_hash: sha256_hex(hashed.as_bytes()),
        record: raw.record,
    })
}

/// A line read with [`read_bounded_line`].
#[derive(Debug)]
pub(crate) enum BoundedLine {
    /// The line, without its newline (and without a trailing `\r`).
    Line(String),
    /// The line exceeded the bound; its length is reported, the bytes were discarded.
    TooLong(usize),
    /// Not UTF-8.
    NotUtf8,
}

impl BoundedLine {
    /// What is wrong with a line that could not be read as text (empty for a line).
    pub(crate) fn problem(&self) -> String {
        match self {
            Self::Line(_) => String::new(),
            Self::TooLong(len) => LineError::TooLong { len: *len }.to_string(),
            Self::NotUtf8 => LineError::NotUtf8.to_string(),
        }
    }
}

/// One line as [`read_line`] read it.
#[derive(Debug)]
pub(crate) struct ReadLine {
    /// The line (or why it cannot be one).
    pub line: BoundedLine,
    /// It ended with a newline (false: the input ended first).
    pub terminated: bool,
    /// Its length in bytes, without the newline.
    pub len: usize,
    /// How many NUL bytes end it (counted even past the bound).
    pub trailing_nuls: usize,
}

/// Reads one line of at most `max` bytes; longer lines are consumed and reported as
/// [`BoundedLine::TooLong`] without being held in memory. `Ok(None)` at end of input.
pub(crate) fn read_bounded_line(
    reader: &mut impl BufRead,
    max: usize,
) -> io::Result<Option<BoundedLine>> {
    Ok(read_line(reader, max)?.map(|r| r.line))
}

/// [`read_bounded_line`], also saying whether the line was ended by a newline and how many
/// NUL bytes end it (so a reader can tell unwritten space at the end of a segment).
pub(crate) fn read_line(reader: &mut impl BufRead, max: usize) -> io::Result<Option<ReadLine>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut len = 0usize;
    let mut trailing_nuls = 0usize;
    let mut saw_any = false;
    let mut terminated = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        saw_any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let part = &chunk[..take];
        match part.iter().rposition(|&b| b != 0) {
            Some(i) => trailing_nuls = take - i - 1,
            None => trailing_nuls += take,
        }
        if len <= max {
            let room = (max + 1).saturating_sub(buf.len());
            buf.extend_from_slice(&part[..take.min(room)]);
        }
        len = len.saturating_add(take);
        reader.consume(if done { take + 1 } else { take });
        if done {
            terminated = true;
            break;
        }
    }
    if !saw_any {
        return Ok(None);
    }
    let line = if len > max {
        BoundedLine::TooLong(len)
    } else {
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        match String::from_utf8(buf) {
            Ok(s) => BoundedLine::Line(s),
            Err(_) => BoundedLine::NotUtf8,
        }
    };
    Ok(Some(ReadLine {
        line,
        terminated,
        len,
        trailing_nuls,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{Decision, Event};
    use super::*;

    fn rec() -> AuditRecord {
        AuditRecord::new(
            "2026-01-01T00:00:00Z".into(),
            Event::Issue,
            Decision::Allow,
            "rule-a",
        )
    }

    #[test]
    fn built_lines_parse_back_and_verify() {
        let (line, hash) = build_line(1, GENESIS_PREV, &rec()).expect("build");
        assert!(line.starts_with(r#"{"seq":1,"prev":"000"#), "{line}");
        assert!(line.ends_with(&format!(r#","hash":"{hash}"}}"#)), "{line}");
        let p = parse_line(&line).expect("parse");
        assert!(p.hash_matches());
        assert_eq!(p.seq, 1);
        assert_eq!(p.record, rec());
    }

    #[test]
    fn a_new_field_keeps_the_hash_valid_and_an_edit_breaks_it() {
        // A newer broker may write fields this one does not know: the hash still checks.
        let body = format!(
            r#"{{"seq":1,"prev":"{GENESIS_PREV}","time":"t","event":"deny","decision":"deny","reason":"r","future":[1,2]}}"#
        );
        let h = sha256_hex(body.as_bytes());
        let line = format!(r#"{},"hash":"{h}"}}"#, &body[..body.len() - 1]);
        assert!(parse_line(&line).expect("parse").hash_matches());
        let edited = line.replace(r#""reason":"r""#, r#""reason":"s""#);
        assert!(!parse_line(&edited).expect("parse").hash_matches());
    }

    #[test]
    fn malformed_lines_get_distinct_errors() {
        let (line, _) = build_line(1, GENESIS_PREV, &rec()).expect("build");
        assert_eq!(parse_line(""), Err(LineError::Blank));
        assert!(matches!(parse_line("{nope"), Err(LineError::NotJson(_))));
        assert!(matches!(parse_line("[1]"), Err(LineError::NotJson(_))));
        let no_reason = line.replace(r#","reason":"rule-a""#, "");
        assert_eq!(
            parse_line(&no_reason),
            Err(LineError::MissingField("reason".into()))
        );
        let bad_event = line.replace(r#""event":"issue""#, r#""event":"explode""#);
        assert!(matches!(
            parse_line(&bad_event),
            Err(LineError::InvalidField(_))
        ));
        let pretty = line.replace(r#","hash":"#, r#", "hash": "#);
        assert_eq!(parse_line(&pretty), Err(LineError::HashNotLast));
        let long = "x".repeat(MAX_LINE_BYTES + 1);
        assert_eq!(
            parse_line(&long),
            Err(LineError::TooLong {
                len: MAX_LINE_BYTES + 1
            })
        );
    }

    /// Bytes `s` takes as a JSON string, without its quotes.
    fn json_len(s: &str) -> usize {
        serde_json::to_string(s).expect("json").len() - 2
    }

    /// A record with every text field set to `value`.
    fn every_field(value: &str) -> AuditRecord {
        let mut rec = AuditRecord {
            ttl_seconds: Some(u64::MAX),
            ttl_clamped: true,
            ..rec()
        };
        let some = || Some(value.to_owned());
        (rec.time, rec.reason) = (value.to_owned(), value.to_owned());
        (rec.request_id, rec.identity, rec.issuer, rec.role) = (some(), some(), some(), some());
        (rec.backend, rec.expires_at, rec.lease_id, rec.token_id) =
            (some(), some(), some(), some());
        (rec.image, rec.fingerprint, rec.upstream_lease) = (some(), some(), some());
        rec
    }

    #[test]
    fn a_record_with_huge_fields_is_cut_visibly_and_reads_back_and_verifies() {
        // Escapes that grow six-fold, quotes, multi-byte characters: the worst a caller could
        // smuggle into a field, 40 000 times over in every field.
        let huge = "\u{1}\"é😀a".repeat(8_000);
        let rec = every_field(&huge);
        assert!(
            chained_line(1, GENESIS_PREV, &rec).expect("json").0.len() > 13 * 40_000,
            "uncut, the line would be far over the limit"
        );
        let (first, h1) = build_line(1, GENESIS_PREV, &rec).expect("cut to fit");
        let (second, _) = build_line(2, &h1, &every_field("short")).expect("build");
        assert!(first.len() <= MAX_LINE_BYTES, "{} bytes", first.len());
        let parsed = parse_line(&first).expect("the reader accepts it");
        assert!(parsed.hash_matches());
        assert_eq!(parsed.head().hash, h1);
        let mut cut = parsed.record.clone();
        let fields = cut.text_fields_mut();
        assert_eq!(fields.len(), 13, "every text field is set");
        for field in fields {
            assert!(json_len(field) <= MAX_FIELD_BYTES, "{}", json_len(field));
            let kept = field
                .strip_suffix(&cut_marker(huge.len()))
                .expect("ends in the marker with the original length");
            assert!(
                huge.starts_with(kept) && kept.len() > 500,
                "{} bytes kept",
                kept.len()
            );
        }
        assert_eq!(
            parsed.record.ttl_seconds,
            Some(u64::MAX),
            "numbers are kept"
        );
        // The whole file reads back and verifies, cut line first.
        let log = format!("{first}\n{second}\n");
        let report = super::super::verify(log.as_bytes(), None).expect("verifies");
        assert_eq!(report.records, 2);
    }

    #[test]
    fn a_line_within_the_limit_is_never_cut() {
        // One 40 000-byte field: long, but the line fits, so it is written whole.
        let long = AuditRecord {
            reason: "r".repeat(40_000),
            ..rec()
        };
        let built = build_line(1, GENESIS_PREV, &long).expect("build");
        assert_eq!(built, chained_line(1, GENESIS_PREV, &long).expect("json"));
        assert_eq!(parse_line(&built.0).expect("parse").record, long);
        // Just over the limit, only the field over the field limit is cut.
        let over = AuditRecord {
            reason: "r".repeat(MAX_LINE_BYTES),
            ..rec()
        };
        let (line, _) = build_line(1, GENESIS_PREV, &over).expect("build");
        let back = parse_line(&line).expect("parse").record;
        assert_eq!(back.time, over.time);
        assert!(
            back.reason.ends_with(&cut_marker(MAX_LINE_BYTES)),
            "{}",
            back.reason
        );
        assert_eq!(back.reason.len(), MAX_FIELD_BYTES);
    }

    #[test]
    fn a_record_that_cannot_be_cut_to_fit_is_refused() {
        let big = every_field(&"x".repeat(1_000));
        let err = build_line_within(1, GENESIS_PREV, &big, 2_000, 500).expect_err("refused");
        assert!(
            matches!(err, BuildError::TooLong { len, max: 2_000 } if len > 2_000),
            "{err}"
        );
        // With room for every cut field it fits.
        let (line, _) = build_line_within(1, GENESIS_PREV, &big, 10_000, 500).expect("fits");
        assert!(line.len() <= 10_000, "{}", line.len());
    }

    #[test]
    fn a_cut_field_fits_its_limit_escaped_and_ends_on_a_character() {
        for value in [
            "\u{1}".repeat(999),
            "é".repeat(999),
            "😀\"".repeat(333),
            "ab".repeat(999),
        ] {
            for max in [60, 61, 62, 63, 64, 65, 100, 257] {
                let mut field = value.clone();
                assert!(cut_field(&mut field, max), "{max}");
                assert!(
                    json_len(&field) <= max,
                    "{max}: {} > {max}",
                    json_len(&field)
                );
                let kept = field
                    .strip_suffix(&cut_marker(value.len()))
                    .expect("marker");
                assert!(value.starts_with(kept), "{max}");
                // Nothing more would have fitted: one more character would be over.
                let next = value[kept.len()..].chars().next().expect("was cut");
                assert!(json_len(kept) + escaped_len(next) + cut_marker(value.len()).len() > max);
            }
        }
        let mut short = "fits".to_owned();
        assert!(!cut_field(&mut short, 4));
        assert_eq!(short, "fits");
        // `escaped_len` agrees with serde_json for every character it special-cases.
        for c in ('\0'..='\u{7f}').chain(['é', '😀', '\u{2028}']) {
            assert_eq!(escaped_len(c), json_len(&c.to_string()), "{c:?}");
        }
    }

    #[test]
    fn bounded_reader_discards_long_lines() {
        let input = format!("ab\n{}\ncd", "x".repeat(100));
        let mut r = io::BufReader::with_capacity(8, input.as_bytes());
        assert!(
            matches!(read_bounded_line(&mut r, 10), Ok(Some(BoundedLine::Line(s))) if s == "ab")
        );
        assert!(matches!(
            read_bounded_line(&mut r, 10),
            Ok(Some(BoundedLine::TooLong(100)))
        ));
        assert!(
            matches!(read_bounded_line(&mut r, 10), Ok(Some(BoundedLine::Line(s))) if s == "cd")
        );
        assert!(matches!(read_bounded_line(&mut r, 10), Ok(None)));
    }
}
