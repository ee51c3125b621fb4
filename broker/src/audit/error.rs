//! [`AuditError`]: what can go wrong writing or resuming the audit log.

use super::line::BuildError;
use crate::store::StoreError;

/// Audit failures. A failed audit write fails the request it records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Opening or reading the sink failed.
    #[error("audit sink: {0}")]
    Io(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file's records and the store's chain head disagree.
    #[error("audit chain mismatch: {0}")]
    ChainMismatch(String),
    /// The audit file cannot be resumed from (a complete line that is not a valid record,
    /// records after the store's head that do not chain on from it, …).
    #[error("audit file unusable: {0}")]
    Corrupt(String),
    /// The record cannot be written as a line a reader accepts; nothing was written.
    #[error("audit record refused: {0}")]
    Record(#[from] BuildError),
    /// The sink cannot write now (e.g. the disk is full): the record was not written and
    /// its request must fail, retryably. The writer retries and recovers by itself.
    #[error("the audit log cannot be written now ({0}); retry later")]
    Unavailable(String),
}
