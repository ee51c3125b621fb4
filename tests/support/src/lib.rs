//! # lanyard-test-support
//!
//! Shared helpers for lanyard's tests, so integration and end-to-end tests use the same real
//! peers instead of copying fixtures between files.
//!
//! # Layout
//! - [`oidc`]: [`OidcIssuer`], a real OIDC issuer on loopback (discovery document and JWKS
//!   over plain HTTP) with RSA, EC P-256 and Ed25519 signing keys, token minting (including
//!   Kubernetes projected service-account tokens) and hostile forgeries.
//! - [`pki`]: [`TestPki`], a throwaway CA plus a server certificate for `localhost` /
//!   `127.0.0.1` (and client certificates), written as PEM files.
//!
//! These helpers panic on setup failures: they run only in tests, where a panic is the
//! clearest report.

pub mod oidc;
pub mod pki;

pub use jsonwebtoken::Algorithm;
pub use oidc::{OidcIssuer, now_unix};
pub use pki::TestPki;
