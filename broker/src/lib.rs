//! # lanyard-broker
//!
//! Authenticates workloads, applies policy, issues short-lived credentials and audits every
//! decision. Read `docs/ARCHITECTURE.md` first. The image scanner behind
//! `lanyard-broker scan` is its own crate, [`lanyard_scan`].
//!
//! # Layout
//! - [`config`]: the configuration file and `LANYARD_*` overrides, parsed into types.
//! - [`authn`]: who is asking — JWTs from trusted issuers ([`authn::jwt`], [`authn::jwks`]),
//!   single-use bootstrap tokens ([`authn::bootstrap`]), the session tokens handed out
//!   after one is redeemed ([`authn::session`]) and which sessions are revoked
//!   ([`authn::revocation`]).
//! - [`policy`]: which roles an identity gets — loading with `file:line` errors
//!   ([`policy::load`]) and the pure decision and explanation ([`policy::eval`]).
//! - [`issue`]: the [`Backend`](issue::Backend) trait and its backends (`jwt`, `aws-sts`,
//!   `vault`) built from the configuration, the upstream cache, and credential lifetimes
//!   ([`issue::lifetime`]: TTL clamp, role cap, `refresh_after`).
//! - [`audit`]: hash-chained audit records (one constructor per event, [`audit::record`]),
//!   `verify` and `query`.
//! - [`store`]: the [`Store`](store::Store) trait, its SQLite and in-memory implementations.
//! - [`secret_file`]: the one bounded, non-blocking reader of small secret files (admin token,
//!   Vault credentials, registry credentials).
//! - [`metrics`]: Prometheus metrics.
//! - [`error`]: the one mapping from errors to HTTP statuses and stable codes.
//! - [`broker`]: the request pipeline (authenticate → authorize → issue → audit), orchestration
//!   only: each step's work lives in the modules above.
//! - [`gate`]: the image gate — image references, the pure decision, and the service
//!   around it (verdict lookups, single-flight scans, re-scans, exemptions).
//! - [`server`]: HTTPS (reloading certificates, connection cap and deadlines), routes, admin
//!   API, `run(listener, ..)`.
//! - [`cli`]: the `lanyard-broker` command line; [`dev`]: `lanyard-broker dev`.

pub mod audit;
pub mod authn;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dev;
pub mod error;
pub mod gate;
pub mod issue;
pub mod metrics;
mod output;
pub mod policy;
pub mod secret_file;
pub mod server;
pub mod store;
