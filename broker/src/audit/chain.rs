//! Hash chain, writer and sinks. STUB.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use lanyard::Secret;

use super::AuditRecord;
use crate::store::{ChainHead, Store, StoreError};

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Standard output, one line per record.
    Stdout,
    /// A file, appended to (created with mode 0600).
    File(PathBuf),
}

impl AuditSink {
    /// Parses the config value: `stdout` or a path.
    pub fn from_config(s: &str) -> Self {
        if s == "stdout" {
            Self::Stdout
        } else {
            Self::File(PathBuf::from(s))
        }
    }
}

/// Audit failures. A failed audit write fails the request it records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Writing the sink failed.
    #[error("audit sink: {0}")]
    Io(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file's last record and the store's chain head disagree.
    #[error("audit chain mismatch: {0}")]
    ChainMismatch(String),
}

/// Writes hash-chained records.
#[derive(Debug)]
pub struct AuditLog {
    _p: (),
}

impl AuditLog {
    /// Opens the sink and resumes the chain.
    pub async fn open(_sink: AuditSink, _store: Arc<dyn Store>) -> Result<Self, AuditError> {
        Ok(Self { _p: () })
    }

    /// Appends a record; returns the new head once it is written and flushed.
    pub async fn append(&self, _rec: AuditRecord) -> Result<ChainHead, AuditError> {
        Ok(ChainHead {
            seq: 0,
            hash: String::new(),
        })
    }
}

/// Computes credential fingerprints: HMAC-SHA256 under a broker-local key, so a
/// fingerprint identifies a credential without letting anyone guess low-entropy secrets.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    _p: (),
}

impl Fingerprinter {
    /// Loads (or creates) the key from the store.
    pub async fn load(_store: &dyn Store) -> Result<Self, StoreError> {
        Ok(Self { _p: () })
    }

    /// Fingerprint of a credential's secret fields: `hmac-sha256:` + 32 hex characters.
    pub fn fingerprint(&self, _data: &BTreeMap<String, Secret>) -> String {
        String::new()
    }
}
