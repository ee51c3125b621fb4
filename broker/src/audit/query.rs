//! `audit query`. STUB.
