//! `lanyard-broker store migrate`: copies what a broker on SQLite holds into an empty
//! PostgreSQL database, so replicas can take over where the single broker stopped.
//!
//! Run with every broker on the SQLite file stopped: the copy is one read transaction of the
//! file (a consistent snapshot) written in one PostgreSQL transaction (all or nothing), into
//! a database that holds no broker state yet (a second run, or a database in use, is
//! refused rather than merged).
//!
//! What is copied, and why:
//! - signing keys (every one, in order): tokens and sessions already signed keep verifying;
//! - local secrets (the credential fingerprint key): fingerprints in the audit log stay
//!   comparable;
//! - bootstrap tokens not yet expired, and every redeemed one: the first can still be
//!   redeemed once, the second are what a session's start is read from (and refuse a second
//!   redemption);
//! - leases not yet expired, and expired ones the revoke-on-expiry sweep has still to revoke;
//! - session revocations not yet expired (dropping one would un-revoke a session);
//! - image verdicts and exemptions; admission records not yet expired;
//! - the audit chain head, so the audit log goes on from where it stopped.
//!
//! The tables have the same columns in both stores (times in Unix seconds, lists as JSON
//! text), so rows are copied as they are; SQLite's `0`/`1` for a boolean becomes `BOOLEAN`.

use std::path::Path;
use std::time::SystemTime;

use lanyard::clock::unix_seconds;
use tokio_postgres::types::ToSql;

use super::StoreError;
use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;

/// How a column is read from SQLite and written to PostgreSQL.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `TEXT` (nullable).
    Text,
    /// `INTEGER` / `BIGINT` (nullable).
    Int,
    /// SQLite `INTEGER` 0/1, PostgreSQL `BOOLEAN`.
    Bool,
}

/// A table to copy: its columns and which rows.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    /// SQLite `WHERE` clause; `?1` is now (Unix seconds).
    filter: &'static str,
    /// SQLite `ORDER BY` (the order rows are inserted in).
    order: &'static str,
}

use Kind::{Bool, Int, Text};

const TABLES: &[Table] = &[
    Table {
        name: "signing_keys",
        columns: &[
            ("kid", Text),
            ("alg", Text),
            ("pkcs8", Text),
            ("created_at", Int),
            ("active_from", Int),
        ],
        filter: "?1 IS NOT NULL",
        order: "created_at, rowid",
    },
    Table {
        name: "local_secrets",
        columns: &[("name", Text), ("value", Text)],
        filter: "?1 IS NOT NULL",
        order: "name",
    },
    Table {
        name: "bootstrap_tokens",
        columns: &[
            ("token_id", Text),
            ("token_hash", Text),
            ("roles", Text),
            ("image", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("redeemed_at", Int),
            ("reserved_by", Text),
            ("reserved_at", Int),
            ("reserved_until", Int),
        ],
        filter: "redeemed_at IS NOT NULL OR expires_at > ?1",
        order: "token_id",
    },
    Table {
        name: "leases",
        columns: &[
            ("lease_id", Text),
            ("role", Text),
            ("backend", Text),
            ("subject", Text),
            ("issuer", Text),
            ("issued_at", Int),
            ("expires_at", Int),
            ("upstream_lease", Text),
            ("fingerprint", Text),
            ("revoked_at", Int),
            ("renew_step_secs", Int),
            ("pod_uid", Text),
        ],
        filter: "expires_at > ?1 OR (revoked_at IS NULL AND upstream_lease IS NOT NULL)",
        order: "lease_id",
    },
    Table {
        name: "session_revocations",
        columns: &[
            ("session_id", Text),
            ("revoked_at", Int),
            ("expires_at", Int),
        ],
        filter: "expires_at > ?1",
        order: "session_id",
    },
    Table {
        name: "image_verdicts",
        columns: &[
            ("digest", Text),
            ("ruleset_version", Text),
            ("repository", Text),
            ("scanned_at", Int),
            ("record", Text),
        ],
        filter: "?1 IS NOT NULL",
        order: "digest, ruleset_version",
    },
    Table {
        name: "image_exemptions",
        columns: &[("digest", Text), ("reason", Text), ("created_at", Int)],
        filter: "?1 IS NOT NULL",
        order: "digest",
    },
    Table {
        name: "admission_records",
        columns: &[
            ("pod_uid", Text),
            ("namespace", Text),
            ("pod_name", Text),
            ("images", Text),
            ("pinned", Bool),
            ("admitted_at_ms", Int),
            ("expires_at", Int),
        ],
        filter: "expires_at > ?1",
        order: "pod_uid",
    },
    Table {
        name: "audit_head",
        columns: &[("id", Int), ("seq", Int), ("hash", Text)],
        filter: "?1 IS NOT NULL",
        order: "id",
    },
];

/// One value read from SQLite.
#[derive(Debug)]
enum Cell {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
}

impl Cell {
    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Self::Text(v) => v,
            Self::Int(v) => v,
            Self::Bool(v) => v,
        }
    }
}

/// What [`sqlite_to_postgres`] copied: rows per table, in copy order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// (table, rows copied).
    pub tables: Vec<(&'static str, usize)>,
}

impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .tables
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// Copies the SQLite store at `sqlite_path` (brought to the current schema first) into the
/// PostgreSQL store `to`, which must hold no broker state. `now` decides what has expired.
pub async fn sqlite_to_postgres(
    sqlite_path: &Path,
    to: &PostgresStore,
    now: SystemTime,
) -> Result<CopyReport, StoreError> {
    if !sqlite_path.is_file() {
        return Err(StoreError::Backend(format!(
            "{}: no such SQLite store (give the file `store.sqlite_path` names)",
            sqlite_path.display()
        )));
    }
    // Opening it applies any SQLite migration the file has not seen.
    drop(SqliteStore::open(sqlite_path)?);
    let now = i64::try_from(unix_seconds(now))
        .map_err(|_| StoreError::Backend("the clock is out of range".to_owned()))?;
    let path = sqlite_path.to_path_buf();
    let rows = tokio::task::spawn_blocking(move || read_sqlite(&path, now))
        .await
        .map_err(|e| StoreError::Backend(format!("reading the SQLite store: {e}")))??;
    to.write_copy(TABLES.iter().map(|t| (t.name, t.columns)), rows)
        .await
}

/// Every table's rows to copy, in [`TABLES`] order, read in one transaction.
fn read_sqlite(path: &Path, now: i64) -> Result<Vec<Vec<Vec<Cell>>>, StoreError> {
    let fail = |e: rusqlite::Error| {
        StoreError::Backend(format!("reading the SQLite store {}: {e}", path.display()))
    };
    let mut conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    conn.busy_timeout(super::sqlite::BUSY_TIMEOUT)
        .map_err(fail)?;
    let tx = conn.transaction().map_err(fail)?;
    let mut all = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let cols: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {}",
            cols.join(", "),
            table.name,
            table.filter,
            table.order
        );
        let mut stmt = tx.prepare(&sql).map_err(fail)?;
        let mut rows = stmt.query([now]).map_err(fail)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(fail)? {
            let mut cells = Vec::with_capacity(table.columns.len());
            for (i, (_, kind)) in table.columns.iter().enumerate() {
                cells.push(match kind {
                    Text => Cell::Text(row.get(i).map_err(fail)?),
                    Int => Cell::Int(row.get(i).map_err(fail)?),
                    Bool => Cell::Bool(row.get::<_, i64>(i).map_err(fail)? != 0),
                });
            }
            out.push(cells);
        }
        all.push(out);
    }
    Ok(all)
}

impl PostgresStore {
    /// Writes the copied rows in one transaction, after checking that no table holds any.
    async fn write_copy<'a>(
        &self,
        tables: impl Iterator<Item = (&'static str, &'a [(&'static str, Kind)])>,
        rows: Vec<Vec<Vec<Cell>>>,
    ) -> Result<CopyReport, StoreError> {
        let tables: Vec<_> = tables.collect();
        let mut conn = self.conn("store migrate").await?;
        let tx = conn
            .transaction()
            .await
            .map_err(|e| copy_error("begin", &e))?;
        for (name, _) in &tables {
            let any = tx
                .query_opt(&format!("SELECT 1 FROM {name} LIMIT 1"), &[])
                .await
                .map_err(|e| copy_error(name, &e))?;
            if any.is_some() {
                return Err(StoreError::Backend(format!(
                    "the PostgreSQL database already holds broker state (table {name} has \
                     rows); migrate into an empty database (a fresh one, or one a broker has \
                     only migrated, never used)"
                )));
            }
        }
        let mut report = CopyReport { tables: Vec::new() };
        for ((name, columns), rows) in tables.iter().zip(rows) {
            let cols: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
            let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "INSERT INTO {name} ({}) VALUES ({})",
                cols.join(", "),
                placeholders.join(", ")
            );
            let stmt = tx.prepare(&sql).await.map_err(|e| copy_error(name, &e))?;
            for row in &rows {
                let params: Vec<&(dyn ToSql + Sync)> = row.iter().map(Cell::param).collect();
                tx.execute(&stmt, &params)
                    .await
                    .map_err(|e| copy_error(name, &e))?;
            }
            report.tables.push((name, rows.len()));
        }
        tx.commit().await.map_err(|e| copy_error("commit", &e))?;
        Ok(report)
    }
}

fn copy_error(what: &str, e: &tokio_postgres::Error) -> StoreError {
    StoreError::Backend(format!(
        "copying into PostgreSQL ({what}): {}",
        super::postgres::describe(e)
    ))
}
