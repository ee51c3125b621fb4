//! `audit verify`. STUB.
