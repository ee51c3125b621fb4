//! Why a scan could not run at all.

use std::time::Duration;

/// Why a scan could not run at all. Problems inside layers do not fail the scan: they make
/// the image's verdict `incomplete`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The source string or what it points at is not a usable image.
    #[error("{0}")]
    BadSource(String),
    /// A local file could not be read.
    #[error("{0}")]
    Io(String),
    /// The registry refused or failed.
    #[error("registry: {0}")]
    Registry(String),
    /// The scan took longer than the timeout.
    #[error("scan timed out after {0:?}")]
    Timeout(Duration),
    /// The scan was cancelled.
    #[error("scan cancelled")]
    Cancelled,
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}
