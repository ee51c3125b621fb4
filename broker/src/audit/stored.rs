//! Audit chains kept in the store (`audit.sink: store`, PostgreSQL): reading them back for
//! `audit verify`, `audit query` and `audit export`.
//!
//! Every broker process writes a chain of its own ([`crate::store::AuditChain`]: an epoch
//! and the replica id, named in each of its records), each record saved in the same
//! transaction as the chain's head row and the leases it records. Verifying the store walks
//! every chain from seq 1 to its head row with the same checks as a file
//! ([`mod@super::verify`]): a record edited, dropped or reordered inside a chain, or a chain cut
//! short of its head row, is reported with the chain it is in.
//!
//! A chain is read a page at a time ([`PAGE`] lines) through a blocking reader, so a long
//! chain is never held in memory at once; the readers run on a blocking thread
//! ([`tokio::task::spawn_blocking`]) and fetch pages through the runtime's handle.

use std::io::{self, BufRead, Read};
use std::sync::Arc;

use super::query::{Filter, QueryError};
use super::verify::{SegmentInput, VerifyFailure, VerifyReport};
use crate::store::{AuditChain, Store, StoreError};

/// Lines fetched per page.
pub const PAGE: usize = 1000;

/// A chain's lines as one byte stream (each line and its newline), fetched page by page.
struct ChainReader {
    store: Arc<dyn Store>,
    handle: tokio::runtime::Handle,
    epoch: u64,
    after: u64,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl ChainReader {
    fn new(store: Arc<dyn Store>, handle: tokio::runtime::Handle, epoch: u64) -> Self {
        Self {
            store,
            handle,
            epoch,
            after: 0,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for ChainReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let avail = self.fill_buf()?;
            let n = avail.len().min(out.len());
            out[..n].copy_from_slice(&avail[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChainReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.buf.len() && !self.done {
            let page = self
                .handle
                .block_on(self.store.audit_lines(self.epoch, self.after, PAGE))
                .map_err(|e| io::Error::other(e.to_string()))?;
            self.done = page.len() < PAGE;
            self.buf.clear();
            self.pos = 0;
            for l in page {
                self.after = l.head.seq;
                self.buf.extend_from_slice(l.line.as_bytes());
                self.buf.push(b'\n');
            }
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.buf.len());
    }
}

/// The name a chain goes by in messages: `chain <epoch> (replica <id>)`.
pub fn chain_name(c: &AuditChain) -> String {
    format!("chain {} (replica {})", c.epoch, c.replica)
}

/// One chain's outcome.
#[derive(Debug)]
pub struct ChainOutcome {
    /// The chain.
    pub chain: AuditChain,
    /// Its report, or where it breaks.
    pub result: Result<VerifyReport, VerifyFailure>,
}

/// Why the chains could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoredError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A reading task failed.
    #[error("reading the audit chains: {0}")]
    Task(String),
    /// A query failed (a bad pattern, or a line that does not parse).
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Writing the export failed.
    #[error("writing the export: {0}")]
    Io(#[from] io::Error),
}

/// Verifies every chain in the store against its head row; one outcome per chain, oldest
/// first. Must run inside a multi-threaded tokio runtime.
pub async fn verify_store(store: Arc<dyn Store>) -> Result<Vec<ChainOutcome>, StoredError> {
    let chains = store.audit_chains().await?;
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        chains
            .into_iter()
            .map(|chain| {
                let reader = ChainReader::new(store.clone(), handle.clone(), chain.epoch);
                let result = super::verify::verify_segments(
                    vec![SegmentInput {
                        name: Some(chain_name(&chain)),
                        number: 0,
                        reader,
                    }],
                    chain.head.as_ref(),
                );
                ChainOutcome { chain, result }
            })
            .collect()
    })
    .await
    .map_err(|e| StoredError::Task(e.to_string()))
}

/// Passes each line of every chain whose record matches `filter` to `out` (chain after chain,
/// each in order); returns how many matched.
pub async fn query_store(
    store: Arc<dyn Store>,
    filter: Filter,
    mut out: Box<dyn FnMut(&str) + Send>,
) -> Result<u64, StoredError> {
    let chains = store.audit_chains().await?;
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let segments = chains
            .iter()
            .map(|c| SegmentInput {
                name: Some(chain_name(c)),
                number: 0,
                reader: ChainReader::new(store.clone(), handle.clone(), c.epoch),
            })
            .collect();
        super::query::query_segments(segments, &filter, &mut *out).map_err(StoredError::from)
    })
    .await
    .map_err(|e| StoredError::Task(e.to_string()))?
}

/// Writes every chain's lines, as stored (JSON lines), chain after chain, each in order;
/// returns how many.
pub async fn export_store(
    store: Arc<dyn Store>,
    mut out: Box<dyn io::Write + Send>,
) -> Result<u64, StoredError> {
    let chains = store.audit_chains().await?;
    let mut n = 0u64;
    for c in chains {
        let mut after = 0;
        loop {
            let page = store.audit_lines(c.epoch, after, PAGE).await?;
            for l in &page {
                after = l.head.seq;
                writeln!(out, "{}", l.line)?;
                n += 1;
            }
            if page.len() < PAGE {
                break;
            }
        }
    }
    out.flush()?;
    Ok(n)
}
