//! The `vault` backend (HashiCorp Vault, through `vaultrs`).
//!
//! A role's `settings.kind` picks what it issues (parsed at policy load into
//! [`VaultKind`]):
//! - `kv2`: a KV v2 read (`mount`, templated `path`, optional pinned `version`); `scope`, if
//!   given, lists the keys handed out. No upstream lease; reads are cached and coalesced like
//!   STS sessions.
//! - `dynamic`: `<mount>/creds/<role>` (database, aws, any secrets engine with creds); the
//!   Vault lease id becomes the broker lease's upstream lease, so it can be renewed, revoked
//!   by `POST /v1/leases/{id}/revoke`, and revoked when it expires.
//! - `pki`: `<mount>/issue/<role>` with the requested TTL, a templated `common_name` and
//!   `alt_names` from the identity; revocable by serial number.
//! - `token`: a child token of the broker's token with `policies`, TTL and explicit max TTL
//!   equal to the granted TTL; revocable by accessor.
//!
//! Expiry is min(requested TTL, Vault's lease). The broker itself logs in with a token file,
//! AppRole, Kubernetes or JWT auth, and [`VaultBackend::maintain`] renews its token (or logs in
//! again) at two thirds of its TTL. Vault errors are summarised as status and Vault's first
//! error message, cut short; request bodies and secrets never appear.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lanyard::Secret;
use lanyard::clock::Clock;
use rustify::endpoint::Endpoint;
use rustify::enums::{RequestMethod, RequestType, ResponseType};
use serde_json::{Value, json};
use tokio::sync::{Mutex, RwLock};
use tracing::{info, warn};
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::cache::{CacheKey, CachedCredential, Upstream};
use super::{Backend, BackendError, IssueRequest, Issued, LeaseRef};
use crate::config::{VaultAuth, VaultConfig};
use crate::metrics::Metrics;
use crate::policy::RoleSettings;
use crate::policy::settings::template::{Template, Values};
use crate::policy::settings::vault::{VaultKind, is_relative_path};

pub use crate::policy::settings::vault::KIND;

/// A Vault call whose full response envelope (lease id, duration) the caller needs; `vaultrs`
/// strips it for these paths.
#[derive(Debug)]
struct RawCall {
    method: RequestMethod,
    path: String,
    body: Option<Value>,
}

impl Endpoint for RawCall {
    type Response = Value;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        self.path.clone()
    }

    fn method(&self) -> RequestMethod {
        self.method.clone()
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        Ok(self.body.as_ref().map(|b| b.to_string().into_bytes()))
    }
}

/// The envelope of a Vault response (as documented for every endpoint).
#[derive(Debug, serde::Deserialize)]
struct Envelope {
    #[serde(default)]
    lease_id: String,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    data: Option<Value>,
}

/// Summarises a Vault failure: HTTP status and Vault's first error, cut short.
fn summarize(e: &ClientError, what: &str) -> BackendError {
    let (message, retryable) = match e {
        ClientError::APIError { code, errors } => {
            let first: String = first_error(errors.first().map(String::as_str).unwrap_or(""))
                .chars()
                .filter(|c| !c.is_control())
                .take(160)
                .collect();
            let retryable = *code >= 500 || *code == 429 || *code == 412;
            if first.is_empty() {
                (format!("{what}: Vault answered {code}"), retryable)
            } else {
                (format!("{what}: Vault answered {code}: {first}"), retryable)
            }
        }
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, .. } => (
                format!("{what}: Vault answered {code}"),
                *code >= 500 || *code == 429,
            ),
            rustify::errors::ClientError::RequestError { source, .. } => {
                let timed_out = source.chain().any(|e| {
                    e.downcast_ref::<reqwest::Error>()
                        .is_some_and(reqwest::Error::is_timeout)
                });
                if timed_out {
                    (format!("{what}: Vault did not answer in time"), true)
                } else {
                    (format!("{what}: Vault unreachable"), true)
                }
            }
            _ => (format!("{what}: unexpected response from Vault"), true),
        },
        ClientError::ResponseEmptyError | ClientError::ResponseDataEmptyError => {
            (format!("{what}: Vault returned no data"), false)
        }
        ClientError::JsonParseError { .. } => {
            (format!("{what}: unexpected response from Vault"), true)
        }
        _ => (format!("{what}: Vault call failed"), true),
    };
    BackendError::Upstream {
        backend: KIND,
        message,
        retryable,
    }
}

/// The first error of a Vault error message. Vault and OpenBao wrap some errors in Go's
/// multierror text (`"1 error occurred:\n\t* permission denied\n\n"`, as OpenBao 2.7
/// answers a policy's denial): that is the first `* ` item; any other message is itself.
fn first_error(message: &str) -> &str {
    let trimmed = message.trim();
    let Some((head, rest)) = trimmed.split_once(':') else {
        return trimmed;
    };
    if !(head.ends_with(" error occurred") || head.ends_with(" errors occurred")) {
        return trimmed;
    }
    rest.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("* "))
        .map(str::trim)
        .unwrap_or(trimmed)
}

fn rustify_error(e: rustify::errors::ClientError) -> ClientError {
    if let rustify::errors::ClientError::ServerResponseError {
        code,
        content: Some(c),
    } = &e
        && let Ok(v) = serde_json::from_str::<Value>(c)
        && let Some(errors) = v.get("errors").and_then(Value::as_array)
    {
        return ClientError::APIError {
            code: *code,
            errors: errors
                .iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect(),
        };
    }
    ClientError::RestClientError { source: e }
}

/// Reads one of the broker's own Vault credential files (token, AppRole secret id, Kubernetes
/// JWT) through [`crate::secret_file`]: bounded, trimmed, never blocking a worker.
async fn read_secret_file(path: &Path) -> Result<Secret, BackendError> {
    crate::secret_file::read_secret_file(path)
        .await
        .map_err(|e| BackendError::Config(e.to_string()))
}

/// The broker's own Vault token, as far as the broker knows it.
#[derive(Debug, Default)]
struct TokenState {
    /// The token (also set in the client).
    token: Option<Secret>,
    obtained_at: Option<SystemTime>,
    /// Zero for a token that does not expire.
    ttl: Duration,
    renewable: bool,
}

impl TokenState {
    /// Whether it is time to renew or log in again: two thirds into its TTL.
    fn due(&self, now: SystemTime) -> bool {
        match (self.token.as_ref(), self.obtained_at) {
            (None, _) | (_, None) => true,
            (Some(_), Some(_)) if self.ttl.is_zero() => false,
            // A TTL too long for the clock's range is never due.
            (Some(_), Some(at)) => at
                .checked_add(self.ttl.mul_f64(2.0 / 3.0))
                .is_some_and(|due| now >= due),
        }
    }
}

/// Why the Vault client cannot be built from `backends.vault`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The settings are unusable (e.g. the address is not a URL).
    #[error("backends.vault: {0}")]
    Settings(#[source] vaultrs::client::VaultClientSettingsBuilderError),
    /// The HTTP client cannot be built (e.g. a `ca_file` that cannot be read or parsed).
    #[error("backends.vault: cannot build the client: {0}")]
    Client(#[source] ClientError),
}

/// The `vault` backend.
pub struct VaultBackend {
    config: VaultConfig,
    client: Arc<RwLock<VaultClient>>,
    token: Mutex<TokenState>,
    upstream: Upstream,
}

impl std::fmt::Debug for VaultBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultBackend")
            .field("address", &self.config.address)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl VaultBackend {
    /// Builds the client. The broker logs in on first use (or at the first
    /// [`VaultBackend::maintain`]), so a Vault that is down at start does not stop the broker.
    pub fn new(
        config: &VaultConfig,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Result<Self, SetupError> {
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(config.address.as_str())
            .token("")
            .verify(true)
            .timeout(Some(Duration::from_secs(config.request_timeout_seconds)))
            .ca_certs(
                config
                    .ca_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            );
        if let Some(ns) = &config.namespace {
            settings.set_namespace(ns.clone());
        }
        let settings = settings.build().map_err(SetupError::Settings)?;
        let client = VaultClient::new(settings).map_err(SetupError::Client)?;
        Ok(Self {
            config: config.clone(),
            client: Arc::new(RwLock::new(client)),
            token: Mutex::new(TokenState::default()),
            upstream: Upstream::new(KIND, config.limits(), clock, metrics),
        })
    }

    /// The upstream (limits and cache).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    fn now(&self) -> SystemTime {
        self.upstream.clock().now()
    }

    async fn set_token(&self, state: &mut TokenState, token: Secret, ttl: u64, renewable: bool) {
        self.client.write().await.set_token(token.expose());
        state.token = Some(token);
        state.obtained_at = Some(self.now());
        state.ttl = Duration::from_secs(ttl);
        state.renewable = renewable;
    }

    /// Logs in with the configured method.
    async fn login(&self, state: &mut TokenState) -> Result<(), BackendError> {
        // A login method's answer, or `None` for a token given as is (set above).
        let auth = match &self.config.auth {
            VaultAuth::Token { token_file } => {
                let token = read_secret_file(token_file).await?;
                self.client.write().await.set_token(token.expose());
                let looked = {
                    let client = self.client.read().await;
                    vaultrs::token::lookup_self(&*client).await
                };
                let (ttl, renewable) = match looked {
                    Ok(l) => (l.ttl, l.renewable.unwrap_or(false)),
                    Err(e) => {
                        return Err(summarize(&e, "looking up the broker's Vault token"));
                    }
                };
                self.set_token(state, token, ttl, renewable).await;
                None
            }
            VaultAuth::Approle {
                role_id,
                secret_id_file,
                mount,
            } => {
                let secret_id = read_secret_file(secret_id_file).await?;
                let client = self.client.read().await;
                Some(
                    vaultrs::auth::approle::login(&*client, mount, role_id, secret_id.expose())
                        .await
                        .map_err(|e| summarize(&e, "AppRole login"))?,
                )
            }
            VaultAuth::Kubernetes {
                role,
                jwt_file,
                mount,
            } => {
                let jwt = read_secret_file(jwt_file).await?;
                let client = self.client.read().await;
                Some(
                    vaultrs::auth::kubernetes::login(&*client, mount, role, jwt.expose())
                        .await
                        .map_err(|e| summarize(&e, "Kubernetes login"))?,
                )
            }
            VaultAuth::Jwt {
                role,
                jwt_file,
                mount,
            } => {
                let jwt = read_secret_file(jwt_file).await?;
                let client = self.client.read().await;
                Some(
                    vaultrs::auth::oidc::login(&*client, mount, jwt.expose(), Some(role.clone()))
                        .await
                        .map_err(|e| summarize(&e, "JWT login"))?,
                )
            }
        };
        if let Some(auth) = auth {
            self.set_token(
                state,
                Secret::new(auth.client_token),
                auth.lease_duration,
                auth.renewable,
            )
            .await;
        }
        info!(
            ttl_seconds = state.ttl.as_secs(),
            renewable = state.renewable,
            "logged in to Vault"
        );
        Ok(())
    }

    /// Makes sure the broker holds a token (logging in if it has none); says whether it
    /// logged in just now.
    async fn ensure_token(&self) -> Result<bool, BackendError> {
        let mut state = self.token.lock().await;
        if state.token.is_none() {
            self.login(&mut state).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Keeps the broker's own token alive: re-reads a token file that changed, renews a
    /// renewable token two thirds into its TTL, and logs in again when renewal is not
    /// possible. Call it periodically.
    pub async fn maintain(&self) -> Result<(), BackendError> {
        let mut state = self.token.lock().await;
        if let VaultAuth::Token { token_file } = &self.config.auth
            && let Ok(current) = read_secret_file(token_file).await
            && state
                .token
                .as_ref()
                .is_none_or(|t| t.expose() != current.expose())
        {
            return self.login(&mut state).await;
        }
        if !state.due(self.now()) {
            return Ok(());
        }
        if state.token.is_some() && state.renewable {
            let renewed = {
                let client = self.client.read().await;
                vaultrs::token::renew_self(&*client, None).await
            };
            match renewed {
                Ok(auth) => {
                    state.obtained_at = Some(self.now());
                    state.ttl = Duration::from_secs(auth.lease_duration);
                    state.renewable = auth.renewable;
                    return Ok(());
                }
                Err(e) => {
                    warn!(error = %summarize(&e, "renewing the broker's Vault token"), "will log in again")
                }
            }
        }
        self.login(&mut state).await
    }

    /// Summarises a failed call. Vault answers 403 both when a policy refuses the call and
    /// when the token expired or was revoked, so with a token the broker logs in for
    /// (AppRole, Kubernetes) it forgets the token and the next call logs in again. A 403 on
    /// a token older than this call is then retryable (that next call may succeed); a 403
    /// on a token logged in for this very call, or on a static token, is a refusal.
    async fn failed(&self, e: &ClientError, what: &str, fresh_login: bool) -> BackendError {
        let mut err = summarize(e, what);
        if matches!(e, ClientError::APIError { code: 403, .. })
            && !matches!(self.config.auth, VaultAuth::Token { .. })
        {
            self.token.lock().await.token = None;
            if !fresh_login
                && let BackendError::Upstream {
                    retryable, message, ..
                } = &mut err
            {
                *retryable = true;
                message.push_str(
                    " (if the broker's token is no longer valid — revoked, expired, or Vault \
                     restarted without its storage, taking the leases it issued — the broker \
                     logs in again at the next request)",
                );
                warn!(error = %message, "Vault refused the broker's token; will log in again");
            }
        }
        err
    }

    async fn raw(&self, call: RawCall, what: &str) -> Result<Envelope, BackendError> {
        let fresh_login = self.ensure_token().await?;
        let result = {
            let client = self.client.read().await;
            match call
                .with_middleware(client.middle())
                .exec(client.http())
                .await
            {
                Ok(r) => r
                    .parse()
                    .map_err(|e| ClientError::RestClientError { source: e }),
                Err(e) => Err(rustify_error(e)),
            }
        };
        match result {
            Ok(v) => serde_json::from_value(v).map_err(|_| BackendError::Upstream {
                backend: KIND,
                message: format!("{what}: unexpected response from Vault"),
                retryable: true,
            }),
            Err(e) => Err(self.failed(&e, what, fresh_login).await),
        }
    }

    async fn raw_empty(&self, call: RawCall, what: &str) -> Result<(), BackendError> {
        let fresh_login = self.ensure_token().await?;
        let result = {
            let client = self.client.read().await;
            call.with_middleware(client.middle())
                .exec(client.http())
                .await
                .map(|_| ())
                .map_err(rustify_error)
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(&e, what, fresh_login).await),
        }
    }

    async fn vaultrs<T, F, Fut>(&self, what: &str, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(tokio::sync::OwnedRwLockReadGuard<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let fresh_login = self.ensure_token().await?;
        let result = f(self.client.clone().read_owned().await).await;
        match result {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(&e, what, fresh_login).await),
        }
    }

    async fn read_kv2(
        &self,
        mount: &str,
        path: &str,
        version: Option<u64>,
        keys: &[String],
        now: SystemTime,
        ttl: Duration,
    ) -> Result<CachedCredential, BackendError> {
        let what = format!("reading {mount}/data/{path}");
        let fields: HashMap<String, Value> = self
            .vaultrs(&what, |client| async move {
                match version {
                    Some(v) => vaultrs::kv2::read_version(&*client, mount, path, v).await,
                    None => vaultrs::kv2::read(&*client, mount, path).await,
                }
            })
            .await
            .map_err(kv2_not_found)?;
        kv2_credential(fields, keys, &what, now, ttl)
    }
}

/// Vault answers a KV v2 read of a missing secret, and of a deleted or destroyed version,
/// with a bare 404: says which those are.
fn kv2_not_found(e: BackendError) -> BackendError {
    match e {
        BackendError::Upstream {
            backend,
            message,
            retryable,
        } if message.ends_with("Vault answered 404") => BackendError::Upstream {
            backend,
            message: format!(
                "{message} (no secret at this path, or the version read is deleted or destroyed)"
            ),
            retryable,
        },
        other => other,
    }
}

/// The credential of a KV v2 read: the secret's fields (only those in `keys`, when the role
/// lists any; each one listed must be there), valid for `ttl`. Pure.
fn kv2_credential(
    fields: HashMap<String, Value>,
    keys: &[String],
    what: &str,
    now: SystemTime,
    ttl: Duration,
) -> Result<CachedCredential, BackendError> {
    let mut data = BTreeMap::new();
    for (k, v) in fields {
        if !keys.is_empty() && !keys.contains(&k) {
            continue;
        }
        let text = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        data.insert(k, Secret::new(text));
    }
    if let Some(missing) = keys.iter().find(|k| !data.contains_key(*k)) {
        return Err(BackendError::Upstream {
            backend: KIND,
            message: format!(
                "{what}: key `{missing}` (listed in the role's scope) is not in the secret"
            ),
            retryable: false,
        });
    }
    Ok(CachedCredential {
        data,
        issued_at: now,
        expires_at: now + ttl,
        upstream_lease: None,
    })
}

/// How long a credential with an upstream lease of `lease_seconds` lives when `ttl` was
/// granted: the shorter of the two (a lease of 0 means none).
fn lease_lifetime(lease_seconds: u64, ttl: Duration) -> Duration {
    if lease_seconds == 0 {
        ttl
    } else {
        ttl.min(Duration::from_secs(lease_seconds))
    }
}

/// The credential of a dynamic-secret read (`<mount>/creds/<role>`). Pure.
fn dynamic_issued(env: Envelope, now: SystemTime, ttl: Duration) -> Issued {
    Issued {
        data: secrets_from(env.data),
        expires_at: now + lease_lifetime(env.lease_duration, ttl),
        upstream_lease: (!env.lease_id.is_empty()).then(|| format!("lease:{}", env.lease_id)),
        renewable: env.renewable,
    }
}

/// The credential of a PKI issue: the certificate, key, CA and chain, expiring at the
/// certificate's `expiration` when that comes before `now + ttl`. Pure.
fn pki_issued(
    cert: vaultrs::api::pki::responses::GenerateCertificateResponse,
    mount: &str,
    now: SystemTime,
    ttl: Duration,
) -> Issued {
    let mut expires_at = now + ttl;
    // An expiration too far out for the clock's range is no earlier than `now + ttl`.
    if let Some(exp) = cert
        .expiration
        .and_then(|exp| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp)))
    {
        expires_at = expires_at.min(exp);
    }
    let mut data = BTreeMap::from([
        ("certificate".to_owned(), Secret::new(cert.certificate)),
        ("private_key".to_owned(), Secret::new(cert.private_key)),
        ("issuing_ca".to_owned(), Secret::new(cert.issuing_ca)),
        (
            "serial_number".to_owned(),
            Secret::new(cert.serial_number.clone()),
        ),
    ]);
    if let Some(chain) = cert.ca_chain.filter(|c| !c.is_empty()) {
        data.insert("ca_chain".to_owned(), Secret::new(chain.join("\n")));
    }
    Issued {
        data,
        expires_at,
        upstream_lease: Some(format!("pki:{mount}:{}", cert.serial_number)),
        renewable: false,
    }
}

/// The credential of a child-token create. Pure.
fn token_issued(auth: vaultrs::api::AuthInfo, now: SystemTime, ttl: Duration) -> Issued {
    Issued {
        data: BTreeMap::from([("token".to_owned(), Secret::new(auth.client_token))]),
        expires_at: now + lease_lifetime(auth.lease_duration, ttl),
        upstream_lease: Some(format!("token-accessor:{}", auth.accessor)),
        renewable: auth.renewable,
    }
}

/// Which Vault answer [`decode_response`] decodes.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum ResponseKind {
    /// A KV v2 read, with the role's scope keys.
    Kv2,
    /// A dynamic-secret read.
    Dynamic,
    /// A PKI issue.
    Pki,
    /// A child-token create.
    Token,
    /// A token lookup (the broker's own token: its TTL decides when it is renewed).
    Lookup,
}

/// Decodes a Vault answer (`status`, `body`) the way the backend does — the `vaultrs` response
/// types in their envelope, an error body through the same summary, then the pure functions
/// above — for the `vault_response` fuzz target. Not a stable API.
#[doc(hidden)]
pub fn decode_response(
    kind: ResponseKind,
    status: u16,
    body: &[u8],
    keys: &[String],
    now: SystemTime,
    ttl: Duration,
) -> Result<Issued, BackendError> {
    use vaultrs::api::EndpointResult;
    let what = "fuzzing";
    if !(200..300).contains(&status) {
        let e = rustify_error(rustify::errors::ClientError::ServerResponseError {
            code: status,
            content: String::from_utf8(body.to_vec()).ok(),
        });
        return Err(summarize(&e, what));
    }
    let unexpected = |_| BackendError::Upstream {
        backend: KIND,
        message: format!("{what}: unexpected response from Vault"),
        retryable: true,
    };
    let no_data = || summarize(&ClientError::ResponseDataEmptyError, what);
    match kind {
        ResponseKind::Kv2 => {
            let r: EndpointResult<vaultrs::api::kv2::responses::ReadSecretResponse> =
                serde_json::from_slice(body).map_err(unexpected)?;
            let fields: HashMap<String, Value> =
                serde_json::from_value(r.data.ok_or_else(no_data)?.data).map_err(unexpected)?;
            kv2_credential(fields, keys, what, now, ttl).map(|c| Issued {
                data: c.data,
                expires_at: c.expires_at,
                upstream_lease: None,
                renewable: false,
            })
        }
        ResponseKind::Dynamic => {
            let v: Value = serde_json::from_slice(body).map_err(unexpected)?;
            let env: Envelope = serde_json::from_value(v).map_err(unexpected)?;
            Ok(dynamic_issued(env, now, ttl))
        }
        ResponseKind::Pki => {
            let r: EndpointResult<vaultrs::api::pki::responses::GenerateCertificateResponse> =
                serde_json::from_slice(body).map_err(unexpected)?;
            Ok(pki_issued(r.data.ok_or_else(no_data)?, "pki", now, ttl))
        }
        ResponseKind::Token => {
            let r: EndpointResult<()> = serde_json::from_slice(body).map_err(unexpected)?;
            Ok(token_issued(r.auth.ok_or_else(no_data)?, now, ttl))
        }
        ResponseKind::Lookup => {
            let r: EndpointResult<vaultrs::api::token::responses::LookupTokenResponse> =
                serde_json::from_slice(body).map_err(unexpected)?;
            let looked = r.data.ok_or_else(no_data)?;
            let state = TokenState {
                token: Some(Secret::new(String::new())),
                obtained_at: Some(now),
                ttl: Duration::from_secs(looked.ttl),
                renewable: looked.renewable.unwrap_or(false),
            };
            // When the broker would renew it: at once, later, or (a TTL of 0) never.
            let _ = state.due(now);
            let _ = state.due(now + ttl);
            Ok(Issued {
                data: BTreeMap::new(),
                expires_at: now,
                upstream_lease: None,
                renewable: state.renewable,
            })
        }
    }
}

fn secrets_from(data: Option<Value>) -> BTreeMap<String, Secret> {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(map)) = data {
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s,
                Value::Null => continue,
                other => other.to_string(),
            };
            out.insert(k, Secret::new(text));
        }
    }
    out
}

fn render_path<'t>(
    t: &'t Template,
    values: &Values<'_>,
    role: &str,
) -> Result<Cow<'t, str>, BackendError> {
    let rendered = t.render(values).map_err(|e| {
        BackendError::Refused(format!(
            "role `{role}` cannot be issued to this identity: {e}"
        ))
    })?;
    if !is_relative_path(&rendered) {
        return Err(BackendError::Refused(format!(
            "role `{role}`: the identity makes the Vault path unusable"
        )));
    }
    Ok(rendered)
}

#[async_trait::async_trait]
impl Backend for VaultBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, BackendError> {
        let RoleSettings::Vault(settings) = &req.role.settings else {
            return Err(super::settings_mismatch(KIND, req.role));
        };
        let values = Values::of(req.identity);
        let now = req.now;
        let ttl = req.ttl;
        let role = &req.role.name;
        match settings.kind() {
            VaultKind::Kv2 {
                mount,
                path,
                version,
            } => {
                let path = render_path(path, &values, role)?;
                let keys = &req.role.scope;
                // A pinned version is positive, so 0 stands for "latest".
                let key = CacheKey::default()
                    .str(mount)
                    .str(&path)
                    .u64(version.unwrap_or(0))
                    .list(keys.iter().map(String::as_str))
                    .u64(ttl.as_secs())
                    .finish();
                self.upstream
                    .cached(&key, || {
                        self.read_kv2(mount, &path, *version, keys, now, ttl)
                    })
                    .await
            }
            VaultKind::Dynamic {
                mount,
                role: engine_role,
            } => {
                let what = format!("reading {mount}/creds/{engine_role}");
                let env = self
                    .upstream
                    .call(|| {
                        self.raw(
                            RawCall {
                                method: RequestMethod::GET,
                                path: format!("{mount}/creds/{engine_role}"),
                                body: None,
                            },
                            &what,
                        )
                    })
                    .await?;
                Ok(dynamic_issued(env, now, ttl))
            }
            VaultKind::Pki {
                mount,
                role: pki_role,
                common_name,
                alt_names,
            } => {
                let cn = common_name.render(&values).map_err(|e| {
                    BackendError::Refused(format!(
                        "role `{role}` cannot be issued to this identity: {e}"
                    ))
                })?;
                let alts = alt_names
                    .iter()
                    .map(|a| a.render(&values))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| BackendError::Refused(format!("role `{role}`: {e}")))?;
                let what = format!("issuing from {mount}/issue/{pki_role}");
                let cert = self
                    .upstream
                    .call(|| {
                        self.vaultrs(&what, |client| {
                            let (mount, pki_role, cn, alts) = (&mount, &pki_role, cn.clone(), alts.join(","));
                            async move {
                                let mut opts = vaultrs::api::pki::requests::GenerateCertificateRequest::builder();
                                opts.common_name(cn).ttl(format!("{}s", ttl.as_secs()));
                                if !alts.is_empty() {
                                    opts.alt_names(alts);
                                }
                                vaultrs::pki::cert::generate(&*client, mount, pki_role, Some(&mut opts)).await
                            }
                        })
                    })
                    .await?;
                Ok(pki_issued(cert, mount, now, ttl))
            }
            VaultKind::Token {
                policies,
                token_role,
                renewable,
            } => {
                let what = "creating a child token".to_owned();
                let meta = HashMap::from([
                    ("lanyard_lease".to_owned(), req.lease_id.to_owned()),
                    ("lanyard_role".to_owned(), role.clone()),
                    ("lanyard_identity".to_owned(), req.identity.subject.clone()),
                ]);
                let display = format!("lanyard-{role}");
                let ttl_text = format!("{}s", ttl.as_secs());
                let auth = self
                    .upstream
                    .call(|| {
                        self.vaultrs(&what, |client| async move {
                            match &token_role {
                                Some(tr) => {
                                    let mut o = vaultrs::api::token::requests::CreateRoleTokenRequest::builder();
                                    o.policies(policies.clone())
                                        .ttl(ttl_text.clone())
                                        .explicit_max_ttl(ttl_text.clone())
                                        .renewable(*renewable)
                                        .display_name(display.clone())
                                        .meta(meta.clone());
                                    vaultrs::token::new_role(&*client, tr, Some(&mut o)).await
                                }
                                None => {
                                    let mut o = vaultrs::api::token::requests::CreateTokenRequest::builder();
                                    o.policies(policies.clone())
                                        .ttl(ttl_text.clone())
                                        .explicit_max_ttl(ttl_text.clone())
                                        .renewable(*renewable)
                                        .display_name(display.clone())
                                        .meta(meta.clone());
                                    vaultrs::token::new(&*client, Some(&mut o)).await
                                }
                            }
                        })
                    })
                    .await?;
                Ok(token_issued(auth, now, ttl))
            }
        }
    }

    async fn renew(&self, lease: &LeaseRef<'_>, ttl: Duration) -> Result<SystemTime, BackendError> {
        let upstream = lease.upstream_lease.unwrap_or("");
        let increment = ttl.as_secs();
        let seconds = if let Some(id) = upstream.strip_prefix("lease:") {
            let env = self
                .upstream
                .call(|| {
                    self.raw(
                        RawCall {
                            method: RequestMethod::PUT,
                            path: "sys/leases/renew".into(),
                            body: Some(json!({"lease_id": id, "increment": increment})),
                        },
                        "renewing a lease",
                    )
                })
                .await?;
            env.lease_duration
        } else if let Some(accessor) = upstream.strip_prefix("token-accessor:") {
            let inc = format!("{increment}s");
            let auth = self
                .upstream
                .call(|| {
                    self.vaultrs("renewing a child token", |client| async move {
                        vaultrs::token::renew_accessor(&*client, accessor, Some(&inc)).await
                    })
                })
                .await?;
            auth.lease_duration
        } else {
            return Err(BackendError::Unsupported("renew"));
        };
        Ok(self.now() + Duration::from_secs(seconds.min(increment)))
    }

    async fn revoke(&self, lease: &LeaseRef<'_>) -> Result<bool, BackendError> {
        let Some(upstream) = lease.upstream_lease else {
            return Ok(false);
        };
        if let Some(id) = upstream.strip_prefix("lease:") {
            self.upstream
                .call(|| {
                    self.raw_empty(
                        RawCall {
                            method: RequestMethod::PUT,
                            path: "sys/leases/revoke".into(),
                            body: Some(json!({"lease_id": id})),
                        },
                        "revoking a lease",
                    )
                })
                .await?;
        } else if let Some(accessor) = upstream.strip_prefix("token-accessor:") {
            self.upstream
                .call(|| {
                    self.vaultrs("revoking a child token", |client| async move {
                        vaultrs::token::revoke_accessor(&*client, accessor).await
                    })
                })
                .await?;
        } else if let Some((mount, serial)) = upstream
            .strip_prefix("pki:")
            .and_then(|rest| rest.split_once(':'))
        {
            self.upstream
                .call(|| {
                    self.vaultrs("revoking a certificate", |client| async move {
                        vaultrs::pki::cert::revoke(&*client, mount, serial)
                            .await
                            .map(|_| ())
                    })
                })
                .await?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    async fn maintain(&self) -> Result<(), BackendError> {
        VaultBackend::maintain(self).await
    }

    fn revokes_on_expiry(&self) -> bool {
        self.config.revoke_on_expiry
    }

    fn renews_leases(&self) -> bool {
        self.config.renew_leases
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::Identity;
    use crate::policy::settings::tests::role as test_role;

    #[tokio::test]
    async fn a_role_with_another_backends_settings_is_an_internal_error() {
        // Fails before any call to Vault: nothing listens at this address.
        let config: VaultConfig = serde_json::from_value(json!({
            "address": "http://127.0.0.1:9",
            "auth": {"token": {"token_file": "/nonexistent/token"}}
        }))
        .expect("config");
        let backend = VaultBackend::new(
            &config,
            Arc::new(lanyard::clock::ManualClock::at_unix(1_800_000_000)),
            Metrics::new(),
        )
        .expect("backend");
        let jwt_role = test_role("db", "jwt", json!({}), &[], 3600);
        let id = Identity {
            issuer: "https://k8s".into(),
            subject: "system:serviceaccount:shop:api".into(),
            kubernetes: None,
            bootstrap: None,
            spiffe_id: None,
            claims: Default::default(),
        };
        let err = backend
            .issue(&IssueRequest {
                identity: &id,
                role: &jwt_role,
                ttl: Duration::from_secs(60),
                now: SystemTime::UNIX_EPOCH,
                request_id: "rq",
                lease_id: "ls",
            })
            .await
            .expect_err("jwt settings");
        assert!(
            matches!(&err, BackendError::Internal(m) if m.contains("jwt settings")),
            "{err}"
        );
    }

    #[test]
    fn a_multierror_message_is_summarised_by_its_first_error() {
        assert_eq!(
            first_error("1 error occurred:\n\t* permission denied\n\n"),
            "permission denied"
        );
        assert_eq!(
            first_error("2 errors occurred:\n\t* invalid lease\n\t* second\n\n"),
            "invalid lease"
        );
        assert_eq!(first_error("Vault is sealed"), "Vault is sealed");
        assert_eq!(
            first_error("missing client token: see docs"),
            "missing client token: see docs"
        );
        assert_eq!(first_error("3 errors occurred:"), "3 errors occurred:");
    }

    #[test]
    fn token_renewal_is_due_two_thirds_in() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut s = TokenState::default();
        assert!(s.due(t0), "no token yet");
        s.token = Some(Secret::new("t"));
        s.obtained_at = Some(t0);
        s.ttl = Duration::from_secs(300);
        assert!(!s.due(t0 + Duration::from_secs(199)));
        assert!(s.due(t0 + Duration::from_secs(200)));
        s.ttl = Duration::ZERO;
        assert!(
            !s.due(t0 + Duration::from_secs(99_999)),
            "non-expiring token"
        );
    }

    /// Found while writing the `vault_response` fuzz target (its `Lookup` kind reaches it): a
    /// token lookup answering a TTL near `u64::MAX` seconds overflowed the `SystemTime` arithmetic (a panic in upkeep).
    #[test]
    fn a_token_ttl_beyond_the_clocks_range_is_never_due_not_a_panic() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let s = TokenState {
            token: Some(Secret::new("t")),
            obtained_at: Some(t0),
            ttl: Duration::from_secs(u64::MAX),
            renewable: true,
        };
        assert!(!s.due(t0 + Duration::from_secs(86_400 * 365 * 100)));
    }

    /// Found while writing the `vault_response` fuzz target: a certificate `expiration` near
    /// `u64::MAX` overflowed the `SystemTime` arithmetic (a panic in the request).
    #[test]
    fn a_certificate_expiring_beyond_the_clocks_range_lives_the_ttl_not_a_panic() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ttl = Duration::from_secs(600);
        let cert = |expiration| vaultrs::api::pki::responses::GenerateCertificateResponse {
            ca_chain: None,
            certificate: "cert".into(),
            expiration,
            issuing_ca: "ca".into(),
            private_key: "key".into(),
            private_key_type: "ec".into(),
            serial_number: "01:02".into(),
        };
        for far in [u64::MAX, i64::MAX as u64] {
            assert_eq!(
                pki_issued(cert(Some(far)), "pki", now, ttl).expires_at,
                now + ttl
            );
        }
        let soon = 1_800_000_000 + 60;
        assert_eq!(
            pki_issued(cert(Some(soon)), "pki", now, ttl).expires_at,
            now + Duration::from_secs(60),
            "a certificate that expires first sets the expiry"
        );
        let issued = pki_issued(cert(None), "pki", now, ttl);
        assert_eq!(issued.expires_at, now + ttl);
        assert_eq!(issued.upstream_lease.as_deref(), Some("pki:pki:01:02"));
    }
}
