//! The `vault` backend (HashiCorp Vault, through `vaultrs`).
//!
//! A role's `settings.kind` picks what it issues:
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
//! AppRole or Kubernetes auth, and [`VaultBackend::maintain`] renews its token (or logs in
//! again) at two thirds of its TTL. Vault errors are summarised as status and Vault's first
//! error message, cut short; request bodies and secrets never appear.

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

use super::cache::{CachedCredential, Upstream};
use super::template::{self, Values};
use super::{Backend, BackendError, IssueRequest, Issued, LeaseRef};
use crate::config::{VaultAuth, VaultConfig};
use crate::metrics::Metrics;
use crate::policy::Role;

/// The backend kind.
pub const KIND: &str = "vault";

/// Settings a `vault` role may carry.
pub const ROLE_SETTINGS: &[&str] = &[
    "kind",
    "mount",
    "path",
    "version",
    "role",
    "common_name",
    "alt_names",
    "policies",
    "token_role",
    "renewable",
];

/// What a `vault` role issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultKind {
    /// A KV v2 read.
    Kv2 {
        /// Engine mount (default `secret`).
        mount: String,
        /// Secret path (may hold placeholders).
        path: String,
        /// A pinned version.
        version: Option<u64>,
    },
    /// Dynamic credentials from `<mount>/creds/<role>`.
    Dynamic {
        /// Engine mount, e.g. `database`.
        mount: String,
        /// Engine role.
        role: String,
    },
    /// A certificate from `<mount>/issue/<role>`.
    Pki {
        /// Engine mount (default `pki`).
        mount: String,
        /// PKI role.
        role: String,
        /// Common name template.
        common_name: String,
        /// Subject alternative name templates.
        alt_names: Vec<String>,
    },
    /// A child token.
    Token {
        /// Policies of the token.
        policies: Vec<String>,
        /// A token role to create it against.
        token_role: Option<String>,
        /// Whether the token may be renewed (up to its explicit max TTL).
        renewable: bool,
    },
}

fn str_setting(role: &Role, key: &str) -> Result<Option<String>, String> {
    match role.settings.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(format!(
            "role `{}`: `settings.{key}` must be a non-empty string",
            role.name
        )),
    }
}

fn list_setting(role: &Role, key: &str) -> Result<Vec<String>, String> {
    match role.settings.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i.as_str() {
                Some(s) if !s.is_empty() => Ok(s.to_owned()),
                _ => Err(format!(
                    "role `{}`: `settings.{key}` entries must be non-empty strings",
                    role.name
                )),
            })
            .collect(),
        Some(_) => Err(format!(
            "role `{}`: `settings.{key}` must be a list of strings",
            role.name
        )),
    }
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && !s.ends_with('/')
        && !s.split('/').any(|p| p.is_empty() || p == "." || p == "..")
}

/// Reads a role's settings into a [`VaultKind`], with errors that say what to fix.
pub fn parse_role(role: &Role) -> Result<VaultKind, String> {
    let name = &role.name;
    if let Some(unknown) = role
        .settings
        .keys()
        .find(|k| !ROLE_SETTINGS.contains(&k.as_str()))
    {
        return Err(format!(
            "role `{name}`: unknown setting `{unknown}` for the vault backend (valid settings: {})",
            ROLE_SETTINGS.join(", ")
        ));
    }
    let allowed = |keys: &[&str], kind: &str| -> Result<(), String> {
        match role
            .settings
            .keys()
            .find(|k| k.as_str() != "kind" && !keys.contains(&k.as_str()))
        {
            Some(k) => Err(format!(
                "role `{name}`: `settings.{k}` does not apply to kind `{kind}` (it takes: {})",
                keys.join(", ")
            )),
            None => Ok(()),
        }
    };
    let kind = str_setting(role, "kind")?.ok_or_else(|| {
        format!(
            "role `{name}`: the vault backend needs `settings.kind`: kv2, dynamic, pki or token"
        )
    })?;
    let mount = |default: Option<&str>| -> Result<String, String> {
        let m = match (str_setting(role, "mount")?, default) {
            (Some(m), _) => m,
            (None, Some(d)) => d.to_owned(),
            (None, None) => {
                return Err(format!(
                    "role `{name}`: kind `{kind}` needs `settings.mount` (e.g. `database`)"
                ));
            }
        };
        if !segment_ok(&m) || m.contains("{{") {
            return Err(format!(
                "role `{name}`: `settings.mount` `{m}` is not a mount path"
            ));
        }
        Ok(m)
    };
    let parsed = match kind.as_str() {
        "kv2" => {
            allowed(&["mount", "path", "version"], "kv2")?;
            let path = str_setting(role, "path")?
                .ok_or_else(|| format!("role `{name}`: kind `kv2` needs `settings.path`"))?;
            template::placeholders(&path)
                .map_err(|e| format!("role `{name}`: `settings.path`: {e}"))?;
            if !segment_ok(&path) {
                return Err(format!(
                    "role `{name}`: `settings.path` `{path}` must be a relative path without empty, `.` or `..` segments"
                ));
            }
            let version = match role.settings.get("version") {
                None => None,
                Some(v) => Some(v.as_u64().filter(|v| *v > 0).ok_or_else(|| {
                    format!("role `{name}`: `settings.version` must be a positive integer")
                })?),
            };
            VaultKind::Kv2 {
                mount: mount(Some("secret"))?,
                path,
                version,
            }
        }
        "dynamic" => {
            allowed(&["mount", "role"], "dynamic")?;
            let r = str_setting(role, "role")?.ok_or_else(|| {
                format!("role `{name}`: kind `dynamic` needs `settings.role` (the engine's role)")
            })?;
            if !segment_ok(&r) || r.contains('/') || r.contains("{{") {
                return Err(format!(
                    "role `{name}`: `settings.role` `{r}` is not a role name"
                ));
            }
            VaultKind::Dynamic {
                mount: mount(None)?,
                role: r,
            }
        }
        "pki" => {
            allowed(&["mount", "role", "common_name", "alt_names"], "pki")?;
            let r = str_setting(role, "role")?.ok_or_else(|| {
                format!("role `{name}`: kind `pki` needs `settings.role` (the PKI role)")
            })?;
            if r.contains('/') || r.contains("{{") {
                return Err(format!(
                    "role `{name}`: `settings.role` `{r}` is not a role name"
                ));
            }
            let common_name = str_setting(role, "common_name")?
                .unwrap_or_else(|| "{{service_account}}.{{namespace}}.svc".to_owned());
            let alt_names = list_setting(role, "alt_names")?;
            for t in std::iter::once(&common_name).chain(&alt_names) {
                template::placeholders(t).map_err(|e| format!("role `{name}`: {e}"))?;
            }
            VaultKind::Pki {
                mount: mount(Some("pki"))?,
                role: r,
                common_name,
                alt_names,
            }
        }
        "token" => {
            allowed(&["policies", "token_role", "renewable"], "token")?;
            let policies = list_setting(role, "policies")?;
            if policies.is_empty() {
                return Err(format!(
                    "role `{name}`: kind `token` needs `settings.policies` (the Vault policies of the child token)"
                ));
            }
            if policies.iter().any(|p| p == "root") {
                return Err(format!(
                    "role `{name}`: child tokens cannot carry the `root` policy"
                ));
            }
            let renewable = match role.settings.get("renewable") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(format!(
                        "role `{name}`: `settings.renewable` must be true or false"
                    ));
                }
            };
            VaultKind::Token {
                policies,
                token_role: str_setting(role, "token_role")?,
                renewable,
            }
        }
        other => {
            return Err(format!(
                "role `{name}`: `settings.kind` `{other}` is not one of kv2, dynamic, pki, token"
            ));
        }
    };
    if !role.scope.is_empty() && !matches!(parsed, VaultKind::Kv2 { .. }) {
        return Err(format!(
            "role `{name}`: `scope` applies to kind `kv2` only (the keys to hand out); remove it"
        ));
    }
    Ok(parsed)
}

/// Checks a `vault` role at policy load.
pub fn validate_role(role: &Role) -> Result<(), String> {
    parse_role(role).map(|_| ())
}

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
            let first: String = errors
                .first()
                .map(String::as_str)
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_control())
                .take(160)
                .collect();
            let retryable = *code >= 500 || *code == 429 || *code == 412;
            (format!("{what}: Vault answered {code}: {first}"), retryable)
        }
        ClientError::RestClientError { source } => match source {
            rustify::errors::ClientError::ServerResponseError { code, .. } => (
                format!("{what}: Vault answered {code}"),
                *code >= 500 || *code == 429,
            ),
            rustify::errors::ClientError::RequestError { .. } => {
                (format!("{what}: Vault unreachable"), true)
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
            (Some(_), Some(at)) => now >= at + self.ttl.mul_f64(2.0 / 3.0),
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
        match &self.config.auth {
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
            }
            VaultAuth::Approle {
                role_id,
                secret_id_file,
                mount,
            } => {
                let secret_id = read_secret_file(secret_id_file).await?;
                let auth = {
                    let client = self.client.read().await;
                    vaultrs::auth::approle::login(&*client, mount, role_id, secret_id.expose())
                        .await
                        .map_err(|e| summarize(&e, "AppRole login"))?
                };
                self.set_token(
                    state,
                    Secret::new(auth.client_token),
                    auth.lease_duration,
                    auth.renewable,
                )
                .await;
            }
            VaultAuth::Kubernetes {
                role,
                jwt_file,
                mount,
            } => {
                let jwt = read_secret_file(jwt_file).await?;
                let auth = {
                    let client = self.client.read().await;
                    vaultrs::auth::kubernetes::login(&*client, mount, role, jwt.expose())
                        .await
                        .map_err(|e| summarize(&e, "Kubernetes login"))?
                };
                self.set_token(
                    state,
                    Secret::new(auth.client_token),
                    auth.lease_duration,
                    auth.renewable,
                )
                .await;
            }
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
            if !fresh_login && let BackendError::Upstream { retryable, .. } = &mut err {
                *retryable = true;
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
            .await?;
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

fn render_path(t: &str, values: &Values<'_>, role: &str) -> Result<String, BackendError> {
    let rendered = template::render(t, values).map_err(|e| {
        BackendError::Refused(format!(
            "role `{role}` cannot be issued to this identity: {e}"
        ))
    })?;
    if !segment_ok(&rendered) {
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

    fn validate_role(&self, role: &Role) -> Result<(), String> {
        validate_role(role)
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, BackendError> {
        let kind = parse_role(req.role).map_err(BackendError::Config)?;
        let values = Values::of(req.identity);
        let now = req.now;
        let ttl = req.ttl;
        let role = &req.role.name;
        match kind {
            VaultKind::Kv2 {
                mount,
                path,
                version,
            } => {
                let path = render_path(&path, &values, role)?;
                let key = hex::encode(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    json!([mount, path, version, req.role.scope, ttl.as_secs()])
                        .to_string()
                        .as_bytes(),
                ));
                let keys = req.role.scope.clone();
                self.upstream
                    .cached(&key, || {
                        self.read_kv2(&mount, &path, version, &keys, now, ttl)
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
                let lease = Duration::from_secs(env.lease_duration);
                let lifetime = if env.lease_duration == 0 {
                    ttl
                } else {
                    ttl.min(lease)
                };
                Ok(Issued {
                    data: secrets_from(env.data),
                    expires_at: now + lifetime,
                    upstream_lease: (!env.lease_id.is_empty())
                        .then(|| format!("lease:{}", env.lease_id)),
                    renewable: env.renewable,
                })
            }
            VaultKind::Pki {
                mount,
                role: pki_role,
                common_name,
                alt_names,
            } => {
                let cn = template::render(&common_name, &values).map_err(|e| {
                    BackendError::Refused(format!(
                        "role `{role}` cannot be issued to this identity: {e}"
                    ))
                })?;
                let alts = alt_names
                    .iter()
                    .map(|a| template::render(a, &values))
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
                let mut expires_at = now + ttl;
                if let Some(exp) = cert.expiration {
                    expires_at = expires_at.min(SystemTime::UNIX_EPOCH + Duration::from_secs(exp));
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
                Ok(Issued {
                    data,
                    expires_at,
                    upstream_lease: Some(format!("pki:{mount}:{}", cert.serial_number)),
                    renewable: false,
                })
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
                                        .renewable(renewable)
                                        .display_name(display.clone())
                                        .meta(meta.clone());
                                    vaultrs::token::new_role(&*client, tr, Some(&mut o)).await
                                }
                                None => {
                                    let mut o = vaultrs::api::token::requests::CreateTokenRequest::builder();
                                    o.policies(policies.clone())
                                        .ttl(ttl_text.clone())
                                        .explicit_max_ttl(ttl_text.clone())
                                        .renewable(renewable)
                                        .display_name(display.clone())
                                        .meta(meta.clone());
                                    vaultrs::token::new(&*client, Some(&mut o)).await
                                }
                            }
                        })
                    })
                    .await?;
                let lease = Duration::from_secs(auth.lease_duration);
                let lifetime = if auth.lease_duration == 0 {
                    ttl
                } else {
                    ttl.min(lease)
                };
                Ok(Issued {
                    data: BTreeMap::from([("token".to_owned(), Secret::new(auth.client_token))]),
                    expires_at: now + lifetime,
                    upstream_lease: Some(format!("token-accessor:{}", auth.accessor)),
                    renewable: auth.renewable,
                })
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
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy::Location;

    fn role(settings: Value, scope: &[&str]) -> Role {
        Role {
            name: "db".into(),
            backend: KIND.into(),
            scope: scope.iter().map(|s| (*s).to_owned()).collect(),
            max_ttl_seconds: 3600,
            default_ttl_seconds: 600,
            settings: serde_json::from_value(settings).expect("settings"),
            location: Location {
                file: PathBuf::from("policies/vault.yaml"),
                line: 1,
            },
        }
    }

    #[test]
    fn kinds_parse_with_defaults() {
        assert_eq!(
            parse_role(&role(
                json!({"kind": "kv2", "path": "apps/{{namespace}}/db", "version": 3}),
                &["password"]
            ))
            .expect("kv2"),
            VaultKind::Kv2 {
                mount: "secret".into(),
                path: "apps/{{namespace}}/db".into(),
                version: Some(3)
            }
        );
        assert_eq!(
            parse_role(&role(
                json!({"kind": "dynamic", "mount": "database", "role": "readonly"}),
                &[]
            ))
            .expect("dynamic"),
            VaultKind::Dynamic {
                mount: "database".into(),
                role: "readonly".into()
            }
        );
        assert_eq!(
            parse_role(&role(json!({"kind": "pki", "role": "svc"}), &[])).expect("pki"),
            VaultKind::Pki {
                mount: "pki".into(),
                role: "svc".into(),
                common_name: "{{service_account}}.{{namespace}}.svc".into(),
                alt_names: vec![]
            }
        );
        assert_eq!(
            parse_role(&role(
                json!({"kind": "token", "policies": ["read-db"]}),
                &[]
            ))
            .expect("token"),
            VaultKind::Token {
                policies: vec!["read-db".into()],
                token_role: None,
                renewable: false
            }
        );
    }

    #[test]
    fn bad_roles_say_what_to_fix() {
        let cases = [
            (json!({}), "needs `settings.kind`"),
            (json!({"kind": "kv3"}), "not one of kv2"),
            (json!({"kind": "kv2"}), "needs `settings.path`"),
            (json!({"kind": "kv2", "path": "a/../b"}), "without empty"),
            (
                json!({"kind": "kv2", "path": "a/{{pod}}"}),
                "unknown placeholder",
            ),
            (
                json!({"kind": "kv2", "path": "a", "version": 0}),
                "positive integer",
            ),
            (
                json!({"kind": "kv2", "path": "a", "role": "x"}),
                "does not apply to kind `kv2`",
            ),
            (
                json!({"kind": "dynamic", "role": "r"}),
                "needs `settings.mount`",
            ),
            (
                json!({"kind": "dynamic", "mount": "database"}),
                "needs `settings.role`",
            ),
            (json!({"kind": "token"}), "needs `settings.policies`"),
            (json!({"kind": "token", "policies": ["root"]}), "root"),
            (
                json!({"kind": "token", "policies": ["a"], "ttl": 3}),
                "unknown setting `ttl`",
            ),
        ];
        for (settings, want) in cases {
            let err = validate_role(&role(settings.clone(), &[])).expect_err(want);
            assert!(err.contains(want), "{settings}: {err}");
        }
        let err = validate_role(&role(
            json!({"kind": "dynamic", "mount": "db", "role": "r"}),
            &["x"],
        ))
        .expect_err("scope");
        assert!(err.contains("applies to kind `kv2` only"), "{err}");
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
}
