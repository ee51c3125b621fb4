//! [`Client`]: fetches credentials from a lanyard broker.
//!
//! The client speaks `POST {broker}/v1/credentials` over HTTPS, trusting exactly the CA it is
//! given. It authenticates with a JWT file (re-read on every call, since projected
//! service-account tokens rotate), a single-use bootstrap token (after which it uses the
//! session token the broker returns), or a static token. Answers are read with a hard size
//! cap before they are parsed, and no error or log line ever holds a token or a credential.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

use crate::Secret;
use crate::clock::{Clock, SystemClock, parse_rfc3339};
use crate::wire::{
    CREDENTIALS_PATH, CredentialRequest, CredentialResponse, ErrorBody, ErrorCode,
    MAX_RESPONSE_BODY_BYTES,
};

/// Environment variable: the broker's base URL.
pub const ENV_BROKER_URL: &str = "LANYARD_BROKER_URL";
/// Environment variable: PEM file of the CA that signed the broker's certificate.
pub const ENV_CA_FILE: &str = "LANYARD_CA_FILE";
/// Environment variable: file holding a JWT (e.g. a projected service-account token).
pub const ENV_TOKEN_FILE: &str = "LANYARD_TOKEN_FILE";
/// Environment variable: file holding a single-use bootstrap token.
pub const ENV_BOOTSTRAP_TOKEN_FILE: &str = "LANYARD_BOOTSTRAP_TOKEN_FILE";
/// Environment variable: comma-separated roles to ask for (default: all granted).
pub const ENV_ROLES: &str = "LANYARD_ROLES";
/// Environment variable: requested TTL in seconds (default: each role's default).
pub const ENV_TTL_SECONDS: &str = "LANYARD_TTL_SECONDS";

/// Default time limit for one request, connection to last body byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token file the client reads, in bytes.
pub const MAX_TOKEN_FILE_BYTES: usize = 64 * 1024;
/// Largest CA file the client reads, in bytes.
pub const MAX_CA_FILE_BYTES: usize = 1024 * 1024;
/// Prefix of single-use bootstrap tokens.
pub const BOOTSTRAP_TOKEN_PREFIX: &str = "lbt_";
/// Longest broker error message kept in an [`Error::Broker`], in characters.
const MAX_BROKER_MESSAGE_CHARS: usize = 512;

/// Where the client gets the credential that proves its identity to the broker.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// A JWT in a file, re-read on every request (Kubernetes projected tokens rotate).
    JwtFile(PathBuf),
    /// A single-use bootstrap token in a file. After it is redeemed the client uses the
    /// session token the broker returns.
    BootstrapFile(PathBuf),
    /// A token given directly (JWT or bootstrap token). A bootstrap token (`lbt_…`) is
    /// redeemed once and then replaced by the session token the broker returns.
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
    #[error("cannot reach broker {0}")]
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
    /// The bootstrap token was already redeemed by this client and the session it bought
    /// has ended (expired or refused), so there is nothing left to authenticate with.
    #[error(
        "the bootstrap token from {location} was already redeemed and its session has ended; \
         mint a new bootstrap token and put it there"
    )]
    BootstrapSpent {
        /// Where the spent token came from (a file path, or "the client configuration").
        location: String,
    },
}

impl Error {
    /// Whether retrying the same call later may succeed (network trouble, timeouts, broker
    /// errors it marks retryable, 5xx and 429). An upstream's refusal (502
    /// `upstream_refused`) is not: the broker says asking again gets the same answer until
    /// someone changes the upstream's policy or the role's settings.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Broker {
                code: ErrorCode::UpstreamRefused,
                ..
            } => false,
            Self::Broker {
                status, retryable, ..
            } => *retryable || *status >= 500 || *status == 429,
            Self::InvalidResponse(_) => true,
            Self::TokenFile { .. } => true, // projected tokens can appear late
            Self::Config(_) | Self::BootstrapSpent { .. } => false,
        }
    }
}

/// How configuration errors name their inputs: builder methods, or environment variables.
#[derive(Debug, Clone, Copy)]
struct Names {
    url: &'static str,
    ca: &'static str,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            url: "broker URL",
            ca: "CA file",
        }
    }
}

/// Builds a [`Client`].
#[derive(Debug, Default)]
pub struct ClientBuilder {
    pub(crate) broker_url: Option<String>,
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) token: Option<TokenSource>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) request: CredentialRequest,
    ca_file: Option<PathBuf>,
    system_roots: bool,
    clock: Option<Arc<dyn Clock>>,
    names: Names,
}

impl ClientBuilder {
    /// The broker's base URL, e.g. `https://lanyard.lanyard-system.svc:8443`. Plain `http://`
    /// is accepted only for loopback hosts.
    pub fn broker_url(mut self, url: impl Into<String>) -> Self {
        self.broker_url = Some(url.into());
        self
    }

    /// Trusts exactly the CA certificate(s) in this PEM for the broker's certificate.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Trusts exactly the CA certificate(s) in this PEM file (read by [`build`](Self::build)).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Also trusts the platform's root certificates (for a broker with a public certificate).
    pub fn use_system_roots(mut self) -> Self {
        self.system_roots = true;
        self
    }

    /// How the client proves its identity.
    pub fn token_source(mut self, source: TokenSource) -> Self {
        self.token = Some(source);
        self
    }

    /// Time limit for one request, connection to last byte (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Asks only for these roles (default: every role the policy grants).
    pub fn roles(mut self, roles: Vec<String>) -> Self {
        self.request.roles = Some(roles);
        self
    }

    /// Asks for this lifetime (the broker lowers it to each role's cap).
    pub fn ttl_seconds(mut self, ttl_seconds: u64) -> Self {
        self.request.ttl_seconds = Some(ttl_seconds);
        self
    }

    /// The clock used to decide when a session token has expired (default: system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Checks the configuration and builds the client.
    pub fn build(self) -> Result<Client, Error> {
        let names = self.names;
        let raw_url = self.broker_url.as_deref().map(str::trim).unwrap_or("");
        if raw_url.is_empty() {
            return Err(Error::Config(format!(
                "{} is not set; give the broker's base URL, e.g. https://lanyard.lanyard-system.svc:8443",
                names.url
            )));
        }
        let (base_url, https) = parse_broker_url(raw_url).map_err(|why| {
            Error::Config(format!("{} {raw_url:?} is not usable: {why}", names.url))
        })?;
        let endpoint = format!("{base_url}{CREDENTIALS_PATH}");

        let token = self.token.ok_or_else(|| {
            Error::Config(
                "no token source; set a JWT file, a bootstrap token file or a static token"
                    .to_owned(),
            )
        })?;
        if let TokenSource::Static(s) = &token {
            check_token_text(s.expose())
                .map_err(|why| Error::Config(format!("the static token {why}")))?;
        }
        if self.request.ttl_seconds == Some(0) {
            return Err(Error::Config(
                "ttl_seconds must be at least 1 (or unset for the role's default)".to_owned(),
            ));
        }

        let mut pems: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(pem) = self.ca_pem {
            pems.push(("the CA PEM given to ca_pem()".to_owned(), pem));
        }
        if let Some(path) = &self.ca_file {
            let pem = read_ca_file(path).map_err(|why| {
                Error::Config(format!(
                    "{}: cannot read {}: {why}",
                    names.ca,
                    path.display()
                ))
            })?;
            pems.push((format!("{} {}", names.ca, path.display()), pem));
        }
        let mut certs = Vec::new();
        for (what, pem) in &pems {
            let parsed = reqwest::Certificate::from_pem_bundle(pem).map_err(|_| {
                Error::Config(format!(
                    "{what} is not valid PEM; expected one or more -----BEGIN CERTIFICATE----- blocks"
                ))
            })?;
            if parsed.is_empty() {
                return Err(Error::Config(format!(
                    "{what} holds no certificate; expected one or more -----BEGIN CERTIFICATE----- blocks"
                )));
            }
            certs.extend(parsed);
        }
        if https && certs.is_empty() && !self.system_roots {
            return Err(Error::Config(format!(
                "an https broker needs the CA that signed its certificate: set the {} (or opt in to the system roots)",
                names.ca
            )));
        }

        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let mut http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if !certs.is_empty() {
            http = if self.system_roots {
                http.tls_certs_merge(certs)
            } else {
                http.tls_certs_only(certs)
            };
        }
        let http = http.build().map_err(|e| {
            Error::Config(format!(
                "cannot set up the HTTPS client (is the CA certificate valid?): {}",
                error_chain(&e)
            ))
        })?;

        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base_url,
                endpoint,
                token,
                timeout,
                request: self.request,
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                auth: tokio::sync::Mutex::new(AuthState::default()),
            }),
        })
    }
}

/// A client of the broker. Cheap to clone; clones share the session obtained with a
/// bootstrap token.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base_url: String,
    endpoint: String,
    token: TokenSource,
    timeout: Duration,
    request: CredentialRequest,
    clock: Arc<dyn Clock>,
    /// Held across a bootstrap-authenticated request so a single-use token is sent once.
    auth: tokio::sync::Mutex<AuthState>,
}

/// What a bootstrap-authenticated client knows about its session.
#[derive(Default)]
struct AuthState {
    session: Option<HeldSession>,
    /// The bootstrap token this client already redeemed (kept in memory only, to recognise
    /// it when it is still in its file after the session ends).
    redeemed: Option<Secret>,
}

impl fmt::Debug for AuthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthState")
            .field(
                "session_expires_at",
                &self.session.as_ref().map(|s| s.expires_at),
            )
            .field("redeemed", &self.redeemed.is_some())
            .finish()
    }
}

struct HeldSession {
    token: Secret,
    expires_at: SystemTime,
}

impl Client {
    /// A builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Configures from `LANYARD_*` environment variables: `LANYARD_BROKER_URL`,
    /// `LANYARD_CA_FILE`, `LANYARD_TOKEN_FILE` or `LANYARD_BOOTSTRAP_TOKEN_FILE`, and
    /// optionally `LANYARD_ROLES` (comma-separated) and `LANYARD_TTL_SECONDS`.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_env_map(|k| std::env::var(k).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `get` (for tests and
    /// embedders). Empty values count as unset.
    pub fn from_env_map(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let var = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut b = ClientBuilder {
            names: Names {
                url: ENV_BROKER_URL,
                ca: ENV_CA_FILE,
            },
            ..ClientBuilder::default()
        };
        if let Some(url) = var(ENV_BROKER_URL) {
            b = b.broker_url(url);
        }
        if let Some(ca) = var(ENV_CA_FILE) {
            b = b.ca_file(ca);
        }
        b = match (var(ENV_TOKEN_FILE), var(ENV_BOOTSTRAP_TOKEN_FILE)) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(format!(
                    "both {ENV_TOKEN_FILE} and {ENV_BOOTSTRAP_TOKEN_FILE} are set; set only one"
                )));
            }
            (None, None) => {
                return Err(Error::Config(format!(
                    "no identity token: set {ENV_TOKEN_FILE} to a JWT file (e.g. a projected \
                     service-account token) or {ENV_BOOTSTRAP_TOKEN_FILE} to a bootstrap token file"
                )));
            }
            (Some(f), None) => b.token_source(TokenSource::JwtFile(f.into())),
            (None, Some(f)) => b.token_source(TokenSource::BootstrapFile(f.into())),
        };
        if let Some(roles) = var(ENV_ROLES) {
            let roles = split_roles(&roles);
            if !roles.is_empty() {
                b = b.roles(roles);
            }
        }
        if let Some(ttl) = var(ENV_TTL_SECONDS) {
            let ttl = ttl.parse::<u64>().ok().filter(|t| *t > 0).ok_or_else(|| {
                Error::Config(format!(
                    "{ENV_TTL_SECONDS}={ttl:?} is not a positive whole number of seconds"
                ))
            })?;
            b = b.ttl_seconds(ttl);
        }
        b.build()
    }

    /// The broker's base URL, as configured (without a trailing slash).
    pub fn broker_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The time on the client's clock.
    pub(crate) fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// The request [`fetch`](Self::fetch) sends.
    pub fn request(&self) -> &CredentialRequest {
        &self.inner.request
    }

    /// Fetches credentials for every role the builder asked for.
    pub async fn fetch(&self) -> Result<CredentialResponse, Error> {
        self.fetch_with(&self.inner.request).await
    }

    /// Fetches credentials with an explicit request.
    pub async fn fetch_with(
        &self,
        request: &CredentialRequest,
    ) -> Result<CredentialResponse, Error> {
        let body = serde_json::to_vec(request)
            .map_err(|e| Error::Config(format!("cannot encode the request: {e}")))?;
        match &self.inner.token {
            TokenSource::JwtFile(path) => {
                let token = read_token_file(path).await?;
                self.send(&token, body).await
            }
            TokenSource::Static(token) if !is_bootstrap(token) => self.send(token, body).await,
            TokenSource::Static(_) | TokenSource::BootstrapFile(_) => {
                self.fetch_bootstrapped(body).await
            }
        }
    }

    /// A fetch that authenticates with the session if one is live, else with the bootstrap
    /// token; the lock makes concurrent callers wait instead of spending the token twice.
    async fn fetch_bootstrapped(&self, body: Vec<u8>) -> Result<CredentialResponse, Error> {
        let mut state = self.inner.auth.lock().await;
        let now = self.inner.clock.now();
        let live_session = state
            .session
            .as_ref()
            .filter(|s| now < s.expires_at)
            .map(|s| s.token.clone());
        let (token, with_session) = match live_session {
            Some(t) => (t, true),
            None => {
                state.session = None;
                let t = self.bootstrap_token().await?;
                if state.redeemed.as_ref() == Some(&t) {
                    return Err(Error::BootstrapSpent {
                        location: self.token_location(),
                    });
                }
                (t, false)
            }
        };
        let result = self.send(&token, body).await;
        match &result {
            Ok(resp) => {
                if !with_session {
                    tracing::debug!(broker = %self.inner.base_url, "bootstrap token redeemed");
                    state.redeemed = Some(token);
                }
                if let Some(s) = &resp.session {
                    let expires_at = parse_rfc3339(&s.expires_at).unwrap_or_else(|| {
                        // Keep it until the broker refuses it rather than drop it: the
                        // bootstrap token that bought it is already spent.
                        tracing::warn!(
                            expires_at = %s.expires_at,
                            "broker sent a session expiry that is not RFC 3339; using the session until the broker refuses it"
                        );
                        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX))
                    });
                    state.session = Some(HeldSession {
                        token: s.token.clone(),
                        expires_at,
                    });
                }
            }
            Err(Error::Broker { status: 401, .. }) if with_session => {
                tracing::warn!(broker = %self.inner.base_url, "broker refused the session token; dropping it");
                state.session = None;
            }
            Err(_) => {}
        }
        result
    }

    async fn bootstrap_token(&self) -> Result<Secret, Error> {
        match &self.inner.token {
            TokenSource::BootstrapFile(p) | TokenSource::JwtFile(p) => read_token_file(p).await,
            TokenSource::Static(s) => Ok(s.clone()),
        }
    }

    fn token_location(&self) -> String {
        match &self.inner.token {
            TokenSource::BootstrapFile(p) | TokenSource::JwtFile(p) => p.display().to_string(),
            TokenSource::Static(_) => "the client configuration".to_owned(),
        }
    }

    /// One POST; the answer's body is read under the size cap and then parsed.
    async fn send(&self, token: &Secret, body: Vec<u8>) -> Result<CredentialResponse, Error> {
        let (status, body) = self.post(&self.inner.endpoint, token, body).await?;
        if (200..300).contains(&status) {
            parse_success(&body)
        } else {
            Err(parse_failure(status, &body))
        }
    }

    /// Revokes a lease this client was issued (`POST /v1/leases/{id}/revoke`),
    /// authenticating like [`fetch`](Self::fetch): the JWT file, the static token, or the
    /// live session bought with a bootstrap token (a bootstrap token itself is never spent
    /// on a revocation). For the `jwt` backend the broker records the revocation but the
    /// token stays valid until it expires.
    pub async fn revoke_lease(&self, lease_id: &str) -> Result<(), Error> {
        if lease_id.is_empty()
            || lease_id.len() > 256
            || !lease_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(Error::Config(format!(
                "lease id {:?} is not a lease id the broker issues",
                lease_id.escape_default().to_string()
            )));
        }
        let token = match &self.inner.token {
            TokenSource::JwtFile(path) => read_token_file(path).await?,
            TokenSource::Static(t) if !is_bootstrap(t) => t.clone(),
            TokenSource::Static(_) | TokenSource::BootstrapFile(_) => {
                let state = self.inner.auth.lock().await;
                let now = self.inner.clock.now();
                match state.session.as_ref().filter(|s| now < s.expires_at) {
                    Some(s) => s.token.clone(),
                    None => {
                        return Err(Error::BootstrapSpent {
                            location: self.token_location(),
                        });
                    }
                }
            }
        };
        let url = format!("{}/v1/leases/{lease_id}/revoke", self.inner.base_url);
        let (status, body) = self.post(&url, &token, b"{}".to_vec()).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(parse_failure(status, &body))
        }
    }

    /// One authenticated POST; returns the status and the body read under the size cap.
    async fn post(
        &self,
        url: &str,
        token: &Secret,
        body: Vec<u8>,
    ) -> Result<(u16, Zeroizing<Vec<u8>>), Error> {
        let auth = Zeroizing::new(format!("Bearer {}", token.expose()));
        let mut auth = HeaderValue::from_str(&auth).map_err(|_| {
            Error::Config("the token holds characters not allowed in an HTTP header".to_owned())
        })?;
        auth.set_sensitive(true);
        let resp = self
            .inner
            .http
            .post(url)
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("lanyard/", env!("CARGO_PKG_VERSION")))
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status().as_u16();
        let body = self.read_body(resp, status).await?;
        Ok((status, body))
    }

    /// Reads the body chunk by chunk, refusing it as soon as it passes the cap.
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
        status: u16,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let too_large = || {
            Error::InvalidResponse(format!(
                "HTTP {status}: response larger than {} MiB",
                MAX_RESPONSE_BODY_BYTES / (1024 * 1024)
            ))
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BODY_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Zeroizing::new(Vec::new());
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport_error(&e))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BODY_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport_error(&self, e: &reqwest::Error) -> Error {
        let cause = if e.is_timeout() {
            format!(
                "no complete answer within {:.1} s (timed out)",
                self.inner.timeout.as_secs_f64()
            )
        } else {
            error_chain(e)
        };
        Error::Transport(format!("at {}: {cause}", self.inner.base_url))
    }
}

fn is_bootstrap(token: &Secret) -> bool {
    token.expose().starts_with(BOOTSTRAP_TOKEN_PREFIX)
}

/// Parses a 2xx body. Serde's messages can quote input values, so only safe parts of them
/// (position, missing field names) are kept.
fn parse_success(body: &[u8]) -> Result<CredentialResponse, Error> {
    serde_json::from_slice::<CredentialResponse>(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data if e.to_string().starts_with("missing field") => {
                let msg = e.to_string();
                msg.split(" at line")
                    .next()
                    .unwrap_or("missing field")
                    .to_owned()
            }
            serde_json::error::Category::Data => "a field has the wrong type or value".to_owned(),
            serde_json::error::Category::Eof => "the JSON ends early".to_owned(),
            _ => "not JSON".to_owned(),
        };
        Error::InvalidResponse(format!(
            "success answer is not a credentials body ({what}, line {} column {})",
            e.line(),
            e.column()
        ))
    })
}

/// Turns a non-2xx answer into [`Error::Broker`], or [`Error::InvalidResponse`] when the body
/// is not an error body (the body itself is never quoted).
fn parse_failure(status: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => {
            let message: String = b
                .error
                .message
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(MAX_BROKER_MESSAGE_CHARS)
                .collect();
            Error::Broker {
                status,
                code: b.error.code,
                message,
                retryable: b.error.retryable,
            }
        }
        Err(_) => Error::InvalidResponse(format!(
            "HTTP {status} with a body that is not a lanyard error ({} bytes); is the URL a lanyard broker?",
            body.len()
        )),
    }
}

/// Checks the broker URL and returns it without a trailing slash, and whether it is https.
fn parse_broker_url(raw: &str) -> Result<(String, bool), String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        other => return Err(format!("scheme {other:?} is not supported; use https://")),
    };
    let host = url.host_str().unwrap_or("");
    if host.is_empty() {
        return Err("it has no host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("it carries a user name or password; authenticate with a token instead".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("it has a query or fragment; give only scheme, host, port and path".into());
    }
    if !https && !is_loopback_host(host) {
        return Err("plain http:// is allowed only for loopback hosts; use https://".into());
    }
    Ok((url.as_str().trim_end_matches('/').to_owned(), https))
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn split_roles(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads a CA file, bounded.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    file.take(MAX_CA_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() > MAX_CA_FILE_BYTES {
        return Err(format!(
            "larger than {} KiB; is this the right file?",
            MAX_CA_FILE_BYTES / 1024
        ));
    }
    Ok(buf)
}

/// Reads and trims a token file, bounded; the errors never hold the content.
async fn read_token_file(path: &Path) -> Result<Secret, Error> {
    let err = |source: io::Error| Error::TokenFile {
        path: path.to_owned(),
        source,
    };
    let invalid = |why: String| err(io::Error::new(io::ErrorKind::InvalidData, why));
    let file = tokio::fs::File::open(path).await.map_err(err)?;
    let mut buf = Zeroizing::new(Vec::new());
    file.take(MAX_TOKEN_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(err)?;
    if buf.len() > MAX_TOKEN_FILE_BYTES {
        return Err(invalid(format!(
            "larger than {} KiB; is this the right file?",
            MAX_TOKEN_FILE_BYTES / 1024
        )));
    }
    let text = std::str::from_utf8(&buf)
        .map_err(|_| invalid("not UTF-8 text; expected a token".to_owned()))?;
    let token = text.trim();
    check_token_text(token).map_err(|why| invalid(why.to_owned()))?;
    Ok(Secret::new(token))
}

/// A token must be non-empty printable ASCII without spaces (it goes into an HTTP header).
fn check_token_text(token: &str) -> Result<(), &'static str> {
    if token.trim().is_empty() {
        return Err("is empty; it should hold the token");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("holds spaces, control or non-ASCII characters inside the token");
    }
    Ok(())
}

/// A reqwest error's causes joined by `: `, without the top-level message (which repeats
/// the URL). Never includes headers or bodies.
fn error_chain(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut parts: Vec<String> = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn config_message(r: Result<Client, Error>) -> String {
        match r {
            Err(Error::Config(m)) => m,
            Err(other) => panic!("expected a Config error, got {other:?}"),
            Ok(_) => panic!("expected a Config error, got a client"),
        }
    }

    fn token_file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(content).expect("write");
        f
    }

    #[test]
    fn missing_url_names_it() {
        let m = config_message(Client::builder().build());
        assert!(m.contains("broker URL is not set"), "{m}");
        let m = config_message(Client::from_env_map(env(&[(
            ENV_TOKEN_FILE,
            "/var/run/token",
        )])));
        assert!(m.contains(ENV_BROKER_URL), "{m}");
    }

    #[test]
    fn url_must_be_http_or_https_and_http_only_on_loopback() {
        let build = |url: &str| {
            Client::builder()
                .broker_url(url)
                .token_source(TokenSource::Static(Secret::new("t")))
                .build()
        };
        assert!(config_message(build("ftp://broker")).contains("not supported"));
        assert!(config_message(build("not a url")).contains("not a URL"));
        assert!(config_message(build("http://broker.example:8080")).contains("loopback"));
        assert!(config_message(build("https://u:p@broker.example")).contains("password"));
        for ok in [
            "http://127.0.0.1:1",
            "http://localhost:1/",
            "http://[::1]:1",
        ] {
            let c = build(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(!c.broker_url().ends_with('/'));
        }
    }

    #[test]
    fn https_needs_a_ca_unless_system_roots() {
        let b = || {
            Client::builder()
                .broker_url("https://broker.example")
                .token_source(TokenSource::Static(Secret::new("t")))
        };
        assert!(config_message(b().build()).contains("CA"));
        assert!(b().use_system_roots().build().is_ok());
    }

    #[test]
    fn unreadable_ca_file_names_the_path_and_variable() {
        let m = config_message(Client::from_env_map(env(&[
            (ENV_BROKER_URL, "https://broker.example"),
            (ENV_CA_FILE, "/nonexistent/lanyard-ca.pem"),
            (ENV_TOKEN_FILE, "/var/run/token"),
        ])));
        assert!(m.contains("/nonexistent/lanyard-ca.pem"), "{m}");
        assert!(m.contains(ENV_CA_FILE), "{m}");
    }

    #[test]
    fn bad_pem_is_refused() {
        let b = || {
            Client::builder()
                .broker_url("https://broker.example")
                .token_source(TokenSource::Static(Secret::new("t")))
        };
        let m = config_message(b().ca_pem(b"hello, not a certificate".to_vec()).build());
        assert!(m.contains("no certificate"), "{m}");
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let m = config_message(b().ca_pem(broken.to_vec()).build());
        assert!(m.contains("not valid PEM"), "{m}");
    }

    #[test]
    fn env_token_choice_is_exclusive_and_required() {
        let m = config_message(Client::from_env_map(env(&[(
            ENV_BROKER_URL,
            "http://127.0.0.1:1",
        )])));
        assert!(
            m.contains(ENV_TOKEN_FILE) && m.contains(ENV_BOOTSTRAP_TOKEN_FILE),
            "{m}"
        );
        let m = config_message(Client::from_env_map(env(&[
            (ENV_BROKER_URL, "http://127.0.0.1:1"),
            (ENV_TOKEN_FILE, "/a"),
            (ENV_BOOTSTRAP_TOKEN_FILE, "/b"),
        ])));
        assert!(m.contains("only one"), "{m}");
    }

    #[test]
    fn env_roles_and_ttl_are_parsed() {
        let c = Client::from_env_map(env(&[
            (ENV_BROKER_URL, "http://127.0.0.1:1"),
            (ENV_TOKEN_FILE, "/a"),
            (ENV_ROLES, " app-db, ,cache "),
            (ENV_TTL_SECONDS, "900"),
        ]))
        .expect("valid env");
        assert_eq!(
            c.request().roles.as_deref(),
            Some(&["app-db".to_owned(), "cache".to_owned()][..])
        );
        assert_eq!(c.request().ttl_seconds, Some(900));
        for bad in ["soon", "0", "-5"] {
            let m = config_message(Client::from_env_map(env(&[
                (ENV_BROKER_URL, "http://127.0.0.1:1"),
                (ENV_TOKEN_FILE, "/a"),
                (ENV_TTL_SECONDS, bad),
            ])));
            assert!(m.contains(ENV_TTL_SECONDS), "{m}");
        }
    }

    #[tokio::test]
    async fn token_file_is_trimmed_and_bounded() {
        let f = token_file(b"  eyJhbGciOi.x.y\n\n");
        let t = read_token_file(f.path()).await.expect("read");
        assert_eq!(t.expose(), "eyJhbGciOi.x.y");

        let empty = token_file(b" \n");
        let e = read_token_file(empty.path()).await.expect_err("empty");
        assert!(matches!(e, Error::TokenFile { .. }));
        assert!(e.to_string().contains("empty"), "{e}");

        let big = token_file(&vec![b'a'; MAX_TOKEN_FILE_BYTES + 1]);
        let e = read_token_file(big.path()).await.expect_err("too big");
        assert!(e.to_string().contains("64 KiB"), "{e}");

        let spaced = token_file(b"secret-part other-part");
        let e = read_token_file(spaced.path())
            .await
            .expect_err("inner space");
        assert!(!e.to_string().contains("secret-part"), "{e}");

        let e = read_token_file(Path::new("/nonexistent/token"))
            .await
            .expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/token"), "{e}");
    }

    #[test]
    fn broker_errors_are_parsed_and_garbage_is_not_quoted() {
        let body = br#"{"error":{"code":"forbidden","message":"no policy grants role x","retryable":false}}"#;
        match parse_failure(403, body) {
            Error::Broker {
                status,
                code,
                message,
                retryable,
            } => {
                assert_eq!(
                    (status, code, retryable),
                    (403, ErrorCode::Forbidden, false)
                );
                assert_eq!(message, "no policy grants role x");
            }
            other => panic!("{other:?}"),
        }
        let e = parse_failure(502, b"<html>secret-ish proxy page</html>");
        assert!(matches!(e, Error::InvalidResponse(_)));
        assert!(e.to_string().contains("502") && !e.to_string().contains("proxy page"));
    }

    #[test]
    fn success_parse_errors_never_quote_values() {
        let body = br#"{"request_id":"r","identity":"i","credentials":[{"role":"a","kind":"jwt","data":{"token":"eyJTOPSECRET"},"expires_at":"x","refresh_after":"y","ttl_seconds":"eyJTOPSECRET2","lease_id":"l"}]}"#;
        let e = parse_success(body).expect_err("wrong type");
        assert!(!e.to_string().contains("TOPSECRET"), "{e}");
        let e = parse_success(br#"{"request_id":"r"}"#).expect_err("missing");
        assert!(e.to_string().contains("missing field"), "{e}");
    }

    #[test]
    fn retryability() {
        assert!(Error::Transport("x".into()).is_retryable());
        assert!(!Error::Config("x".into()).is_retryable());
        let broker = |status, retryable| Error::Broker {
            status,
            code: ErrorCode::Unknown,
            message: String::new(),
            retryable,
        };
        assert!(broker(503, false).is_retryable());
        assert!(broker(429, false).is_retryable());
        assert!(!broker(403, false).is_retryable());
        assert!(broker(400, true).is_retryable());
        // A 502 is retryable as a 5xx, unless the broker says the upstream refused.
        assert!(broker(502, false).is_retryable());
        let refused = Error::Broker {
            status: 502,
            code: ErrorCode::UpstreamRefused,
            message: "aws-sts upstream refused: AccessDenied (HTTP 403)".into(),
            retryable: false,
        };
        assert!(!refused.is_retryable());
    }
}
