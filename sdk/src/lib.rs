//! # lanyard
//!
//! Short-lived, scoped credentials for containers, so that images hold none. This crate is
//! the SDK applications use to fetch credentials from a lanyard broker, and it owns the wire
//! types shared by the broker, the sidecar and applications.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lanyard::Error> {
//! let client = lanyard::Client::from_env()?;
//! let creds = client.fetch().await?;
//! for c in &creds.credentials {
//!     println!("{} expires at {}", c.role, c.expires_at);
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`secret`]: [`Secret`], a value that redacts itself and is zeroized on drop.
//! - [`wire`]: request, response and error bodies of the broker's HTTP API.
//! - [`clock`]: the injected [`Clock`](clock::Clock); nothing else reads the system time.
//! - [`refresh`]: when to refresh a credential, how to back off after a failure and how long
//!   to wait after a refusal (shared with the sidecar).
//! - [`client`]: [`Client`], its builder and `from_env`; fetch and lease revocation.
//! - [`watch`]: [`Client::watch`], background refresh as a stream of updates.
//! - [`aws`]: the AWS keys of an `aws-sts` credential, the container-credentials and
//!   `credential_process` JSON, and (feature `aws`) an AWS SDK credentials provider.
//! - [`files`]: [`FileSource`](files::FileSource), reading and watching (inotify) the files
//!   the sidecar writes.
//! - [`logging`]: the log filter the broker and the sidecar build from `LANYARD_LOG` (keeps
//!   rustls's warning about an IP address sent as SNI out unless rustls is named).

pub mod aws;
pub mod client;
pub mod clock;
pub mod files;
pub mod logging;
pub mod refresh;
pub mod secret;
pub mod watch;
pub mod wire;

pub use client::{Client, ClientBuilder, Error, TokenSource};
pub use secret::Secret;
pub use watch::CredentialWatch;
