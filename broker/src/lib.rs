//! # lanyard-broker
//!
//! Authenticates workloads, applies policy, issues short-lived credentials and audits every
//! decision. Read `docs/ARCHITECTURE.md` first. The image scanner behind
//! `lanyard-broker scan` is its own crate, [`lanyard_scan`].
//!
//! # Layout
//! - [`config`]: the configuration file and `LANYARD_*` overrides, parsed into types.
//! - [`authn`]: who is asking — JWTs from trusted issuers ([`authn::jwt`], [`authn::jwks`])
//!   and single-use bootstrap tokens ([`authn::bootstrap`]).
//! - [`policy`]: which roles an identity gets — loading with `file:line` errors
//!   ([`policy::load`]) and the pure decision and explanation ([`policy::eval`]).
//! - [`issue`]: the [`Backend`](issue::Backend) trait and the `jwt` backend.
//! - [`audit`]: hash-chained audit records, `verify` and `query`.
//! - [`store`]: the [`Store`](store::Store) trait and its SQLite implementation.
//! - [`metrics`]: Prometheus metrics.
//! - [`error`]: the one mapping from errors to HTTP statuses and stable codes.
//! - [`broker`]: the request pipeline (authenticate → authorize → issue → audit).
//! - [`server`]: HTTPS (reloading certificates), routes, admin API, `run(listener, ..)`.
//! - [`cli`]: the `lanyard-broker` command line; [`dev`]: `lanyard-broker dev`.

pub mod audit;
pub mod authn;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dev;
pub mod error;
pub mod issue;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod store;
