//! # lanyard-test-support
//!
//! Shared helpers for lanyard's tests, so integration and end-to-end tests use the same real
//! peers instead of copying fixtures between files.
//!
//! # Layout
//! - [`admission`]: `AdmissionReview` requests shaped as the Kubernetes documentation shows
//!   them (pods, the `ephemeralcontainers` subresource, workload templates) and a client
//!   calling the admission routes as the API server does (a client certificate).
//! - [`broker`]: [`TestBroker`], the real broker in-process on `127.0.0.1:0` over TLS, with
//!   its own temp directory, config, policies, store and audit log; [`BrokerProcess`], the
//!   `lanyard-broker serve` binary with the same layout in its own process, killed and
//!   restarted by fault tests.
//! - [`child`]: starting a peer process on a free port it binds itself, retried on a fresh
//!   port when a parallel test took it first.
//! - [`oidc`]: [`OidcIssuer`], a real OIDC issuer on loopback (discovery document and JWKS
//!   over plain HTTP) with RSA, EC P-256 and Ed25519 signing keys, token minting (including
//!   Kubernetes projected service-account tokens) and hostile forgeries.
//! - [`moto`]: [`MotoServer`], a real `moto_server` (STS) on loopback behind a recording
//!   proxy that counts calls and keeps their exact parameters; [`moto::AwsStack`], moto + an
//!   OIDC issuer + a broker granting an `aws-sts` role, for zero-code AWS SDK tests.
//! - [`openbao`]: [`OpenBao`], a real OpenBao server (Vault's HTTP API) in dev mode on
//!   loopback with a file audit device, and helpers that configure it through its API
//!   (mounts, policies, AppRole, JWT auth, the database engine on a [`Postgres`], PKI).
//! - [`vault`]: [`VaultEmulator`], an emulator of the Vault HTTP API (documented response
//!   bodies for exactly the paths lanyard calls), for what the real server cannot be made
//!   to do (Kubernetes auth without an API server, an exact answer on demand).
//! - [`postgres`]: [`Postgres`], a throwaway PostgreSQL cluster on a free loopback port.
//! - [`process`]: [`SiteBroker`], `lanyard-broker serve` as its own process on loopback;
//!   several share one [`ProcessSite`] (PKI, policies, admin token, SQLite store) as replicas.
//! - [`k8s`]: the Kubernetes tools of `tests/peers/k8s-tools.sh` (`helm`,
//!   `kubernetes-validate`, `promtool`), skipped loudly outside `./test.sh` when missing.
//! - [`kube_api`]: [`KubeApi`], an emulator of the Kubernetes API server's pod read
//!   (`GET /api/v1/namespaces/{ns}/pods/{name}`, documented `v1.Pod` and `v1.Status` bodies,
//!   bearer token checked) over HTTPS, with pods a test sets, deletes, or makes fail.
//! - [`pki`]: [`TestPki`], a throwaway CA plus a server certificate for `localhost` /
//!   `127.0.0.1` (and client certificates), written as PEM files.
//! - [`registry`]: [`TokenRegistry`], a real `docker-registry` (distribution 2.8) on loopback
//!   using the Docker/OCI token authentication flow, with its [`TokenServer`] (ES256 JWTs
//!   signed by a self-signed certificate the registry trusts), and a push of the test images.
//!
//! These helpers panic on setup failures: they run only in tests, where a panic is the
//! clearest report.

pub mod admission;
pub mod broker;
pub mod child;
pub mod k8s;
pub mod kube_api;
pub mod moto;
pub mod oidc;
pub mod openbao;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod registry;
pub mod spiffe;
pub mod vault;
pub mod workload;

pub use broker::{BrokerProcess, InProcessBroker, TestBroker, TestBrokerOptions, k8s_pod};
pub use jsonwebtoken::Algorithm;
pub use kube_api::{KubeApi, KubeFailure, TestPod};
pub use moto::{MotoServer, StsCall, boto3_python};
pub use oidc::{OidcIssuer, now_unix};
pub use openbao::{OpenBao, OpenBaoOptions};
pub use pki::TestPki;
pub use postgres::Postgres;
pub use process::{Answer, ProcessSite, SiteBroker, assert_audit_verifies};
pub use registry::{TokenRegistry, TokenRequest, TokenServer};
pub use spiffe::{SpiffeTrustDomain, SvidAlg};
pub use vault::VaultEmulator;
pub use workload::Workload;
