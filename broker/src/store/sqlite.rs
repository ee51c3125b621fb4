//! SQLite store. STUB.
