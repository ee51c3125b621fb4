//! The audit log: one hash-chained JSON line per issuance, denial, token mint/redeem,
//! revocation and policy reload.
//!
//! Each line carries `seq`, `prev` (the previous record's hash) and `hash` — SHA-256 over
//! the line's exact bytes without the `hash` field (so over `seq` and `prev` too) — so
//! editing, dropping or reordering any record breaks the chain at a point [`fn@verify`]
//! reports. Records hold a fingerprint of the credential, never the credential.
//!
//! - [`mod@record`]: the record ([`AuditRecord`]) and one constructor per event
//!   ([`AuditRecord::issue`], [`AuditRecord::policy_denial`], [`AuditRecord::lease_revoke`], …),
//!   so the broker writes each record in one line and each event's fields are filled alike.
//! - [`chain`]: the writer ([`AuditLog`]): group commit, segment rotation, and recovery
//!   from a sink that cannot write (readiness via [`AuditLog::writable`]); sinks (file or
//!   stdout) and fingerprints.
//! - [`mod@error`]: [`AuditError`], shared by the writer and start-up.
//! - [`resume`]: start-up — finding the store's chain head in the file, keeping the complete
//!   records that chain on from it, cutting (and recording the cut of) only an incomplete
//!   record at the end.
//! - [`segment`]: the segment format (names, header record, the end of the newest segment
//!   and its unwritten NUL space) and listing a log's segments.
//! - [`flood`]: failed-authentication records limited per source and window, with summary
//!   records ([`FailureLimiter`]).
//! - [`mod@line`]: the line format, hashing, the bounded line parser ([`parse_line`]) and
//!   the builder, which never writes a line longer than [`MAX_LINE_BYTES`] (a record that
//!   would be longer has its longest fields cut, visibly: [`cut_marker`]).
//! - [`mod@verify`]: `audit verify FILE`, across segments.
//! - [`mod@query`]: `audit query FILE` filters, across segments.
//! - [`stored`]: the chains kept in a PostgreSQL store (`audit.sink: store`, one per broker
//!   process), read back for `audit verify`, `audit query` and `audit export`.

pub mod chain;
pub mod error;
pub mod flood;
pub mod line;
pub mod query;
pub mod record;
pub mod resume;
pub mod segment;
pub mod stored;
pub mod verify;

pub use chain::{AuditLog, AuditOptions, AuditSink, Fingerprinter, SinkMetrics};
pub use error::AuditError;
pub use flood::FailureLimiter;
pub use line::{
    BuildError, LineError, MAX_FIELD_BYTES, MAX_LINE_BYTES, ParsedLine, cut_marker, parse_line,
};
pub use query::{Filter, QueryError, query, query_segments};
pub use record::{AuditRecord, Decision, Event};
pub use verify::{SegmentInput, VerifyFailure, VerifyReport, verify, verify_segments};
