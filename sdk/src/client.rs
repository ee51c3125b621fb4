//! [`Client`]: fetches credentials from a lanyard broker.

use std::path::PathBuf;
use std::time::Duration;

use crate::Secret;
use crate::wire::{CredentialRequest, CredentialResponse, ErrorCode};

/// Where the client gets the credential that proves its identity to the broker.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A JWT in a file, re-read on every request (Kubernetes projected tokens rotate).
    JwtFile(PathBuf),
    /// A single-use bootstrap token in a file. After it is redeemed the client uses the
    /// session token the broker returns.
    BootstrapFile(PathBuf),
    /// A token given directly (JWT or bootstrap token).
    Static(Secret),
}

/// Errors from the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client is misconfigured (missing URL, unreadable CA file, bad env var).
    #[error("configuration: {0}")]
    Config(String),
    /// The identity token file could not be read.
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The broker could not be reached or the connection failed.
    #[error("cannot reach broker: {0}")]
    Transport(String),
    /// The broker answered with an error.
    #[error("broker refused ({status} {code}): {message}")]
    Broker {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
        /// Whether retrying later may help.
        retryable: bool,
    },
    /// The broker's answer could not be understood (or was too large).
    #[error("invalid response from broker: {0}")]
    InvalidResponse(String),
}

/// Builds a [`Client`].
#[derive(Debug, Default)]
pub struct ClientBuilder {
    pub(crate) broker_url: Option<String>,
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) token: Option<TokenSource>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) request: CredentialRequest,
}

/// A client of the broker.
#[derive(Debug, Clone)]
pub struct Client {
    _private: (),
}

impl Client {
    /// A builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Configures from `LANYARD_*` environment variables.
    pub fn from_env() -> Result<Self, Error> {
        Err(Error::Config("not yet built".into()))
    }

    /// Fetches credentials for every role the builder asked for.
    pub async fn fetch(&self) -> Result<CredentialResponse, Error> {
        Err(Error::Config("not yet built".into()))
    }
}
