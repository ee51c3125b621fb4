//! SQLite store. STUB.

use std::path::Path;

use super::StoreError;

/// SQLite-backed store.
#[derive(Debug)]
pub struct SqliteStore;

impl SqliteStore {
    /// Opens (creating) the database.
    pub fn open(_path: &Path) -> Result<Self, StoreError> {
        Err(StoreError::Backend("stub".into()))
    }
}
