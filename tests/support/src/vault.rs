//! [`VaultEmulator`]: an **emulator** of the HashiCorp Vault HTTP API, on loopback, for the
//! paths lanyard calls — not Vault.
//!
//! The `vault` backend is tested against a real OpenBao ([`crate::openbao`]); this emulator
//! stays for what the real server cannot be made to do: Kubernetes auth (OpenBao would need a
//! Kubernetes API server), an exact answer on demand (a denial switched on and off between
//! requests, a 503), and timing on a manual clock (OpenBao's TTLs run on real time). The
//! table in `docs/ARCHITECTURE.md` lists which test uses which. It is deliberately small and
//! follows Vault's documented response bodies exactly for each path it serves: every answer
//! carries the envelope `request_id`, `lease_id`, `renewable`, `lease_duration`, `data`,
//! `wrap_info`, `warnings`, `auth`; logins and token creation fill `auth{client_token,
//! accessor, policies, token_policies, metadata, lease_duration, renewable, entity_id,
//! token_type, orphan}`; errors are `{"errors": [...]}` with Vault's status codes; revocations
//! answer 204. It checks `X-Vault-Token` (403 `permission denied` otherwise), issues real
//! X.509 certificates from a throwaway CA, and records every request so tests can assert
//! what was called. It does not enforce Vault policies (a test denies a path with
//! [`VaultEmulator::deny_path`], answered as a policy denial is), and leases expire only when
//! revoked.
//!
//! Paths served (under `/v1/`): `auth/token/{lookup-self, renew-self, create, create/<role>,
//! revoke-accessor, renew-accessor}`, `auth/<approle mount>/login`,
//! `auth/<kubernetes mount>/login`, `<kv mount>/data/<path>[?version=N]`,
//! `<mount>/creds/<role>`, `<pki mount>/issue/<role>`, `<pki mount>/revoke`,
//! `sys/leases/renew`, `sys/leases/revoke`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use lanyard::clock::{Clock, SystemClock, unix_seconds};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde_json::{Value, json};

/// One request the emulator served.
#[derive(Debug, Clone)]
pub struct VaultRequest {
    /// HTTP method.
    pub method: String,
    /// Path after `/v1/`.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Accessor of the token used, if it was valid.
    pub accessor: Option<String>,
    /// `X-Vault-Namespace`, if sent.
    pub namespace: Option<String>,
    /// JSON body (Null when none).
    pub body: Value,
}

/// A token the emulator knows.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// The token.
    pub id: String,
    /// Its accessor.
    pub accessor: String,
    /// Policies.
    pub policies: Vec<String>,
    /// TTL in seconds (0: never expires).
    pub ttl: u64,
    /// Renewable.
    pub renewable: bool,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Revoked.
    pub revoked: bool,
    /// Renewals so far.
    pub renewals: u32,
    /// Accessor of the parent token.
    pub parent: Option<String>,
}

/// A lease the emulator handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Duration in seconds.
    pub lease_duration: u64,
    /// Revoked.
    pub revoked: bool,
    /// Renewals so far.
    pub renewals: u32,
}

/// A certificate the emulator issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// Serial, `xx:xx:..`.
    pub serial: String,
    /// Common name.
    pub common_name: String,
    /// Alt names as requested.
    pub alt_names: Vec<String>,
    /// TTL requested, as sent (e.g. `600s`).
    pub ttl: Option<String>,
    /// Revoked.
    pub revoked: bool,
}

#[derive(Debug, Default)]
struct Emu {
    down: bool,
    denied: std::collections::HashSet<String>,
    tokens: HashMap<String, TokenInfo>,
    approle: Option<(String, String, String, u64)>,
    kubernetes: Option<(String, String, String, u64)>,
    kv: HashMap<(String, String), Vec<Value>>,
    dynamic: HashMap<(String, String), u64>,
    pki: HashMap<(String, String), ()>,
    leases: HashMap<String, LeaseInfo>,
    certs: Vec<IssuedCert>,
    requests: Vec<VaultRequest>,
    counter: u64,
}

struct Shared {
    emu: Mutex<Emu>,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A running emulator; stops when dropped.
pub struct VaultEmulator {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for VaultEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultEmulator")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn uuid_like(n: u64) -> String {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).expect("random");
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{:012x}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        n
    )
}

fn envelope(data: Value, lease_id: &str, lease_duration: u64, renewable: bool) -> Value {
    json!({
        "request_id": uuid_like(0),
        "lease_id": lease_id,
        "renewable": renewable,
        "lease_duration": lease_duration,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
        "mount_type": "",
    })
}

fn auth_envelope(t: &TokenInfo, orphan: bool) -> Value {
    json!({
        "request_id": uuid_like(0),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": null,
        "warnings": null,
        "auth": {
            "client_token": t.id,
            "accessor": t.accessor,
            "policies": t.policies,
            "token_policies": t.policies,
            "metadata": t.meta,
            "lease_duration": t.ttl,
            "renewable": t.renewable,
            "entity_id": "",
            "token_type": "service",
            "orphan": orphan,
            "mfa_requirement": null,
            "num_uses": 0,
        },
        "mount_type": "",
    })
}

fn errors(status: StatusCode, msgs: &[&str]) -> Response {
    (status, axum::Json(json!({"errors": msgs}))).into_response()
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn ttl_seconds(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            if let Some(x) = s.strip_suffix('s') {
                x.parse().ok()
            } else if let Some(x) = s.strip_suffix('m') {
                x.parse::<u64>().ok().map(|m| m * 60)
            } else if let Some(x) = s.strip_suffix('h') {
                x.parse::<u64>().ok().map(|h| h * 3600)
            } else {
                s.parse().ok()
            }
        }
        _ => None,
    }
}

impl Emu {
    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn new_token(
        &mut self,
        policies: Vec<String>,
        ttl: u64,
        renewable: bool,
        meta: BTreeMap<String, String>,
        parent: Option<String>,
    ) -> TokenInfo {
        let n = self.next();
        let t = TokenInfo {
            id: format!("hvs.emu{}", uuid_like(n).replace('-', "")),
            accessor: format!("acc{}", uuid_like(n).replace('-', "")),
            policies,
            ttl,
            renewable,
            meta,
            revoked: false,
            renewals: 0,
            parent,
        };
        self.tokens.insert(t.id.clone(), t.clone());
        t
    }

    fn valid_token(&self, headers: &HeaderMap) -> Option<TokenInfo> {
        let t = headers.get("x-vault-token")?.to_str().ok()?;
        self.tokens.get(t).filter(|t| !t.revoked).cloned()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(path) = uri.path().strip_prefix("/v1/").map(str::to_owned) else {
        return errors(StatusCode::NOT_FOUND, &["not found"]);
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return errors(StatusCode::BAD_REQUEST, &["failed to parse JSON input"]),
        }
    };
    let mut emu = shared.emu.lock().expect("emulator state");
    let caller = emu.valid_token(&headers);
    emu.requests.push(VaultRequest {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        accessor: caller.as_ref().map(|t| t.accessor.clone()),
        namespace: headers
            .get("x-vault-namespace")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    });
    if emu.down {
        return errors(StatusCode::SERVICE_UNAVAILABLE, &["Vault is sealed"]);
    }
    let write = method == Method::POST || method == Method::PUT;
    let segs: Vec<&str> = path.split('/').collect();

    // Logins need no token.
    if write && segs.len() == 3 && segs[0] == "auth" && segs[2] == "login" {
        let mount = segs[1];
        if let Some((m, role_id, secret_id, ttl)) = emu.approle.clone()
            && m == mount
        {
            if body["role_id"] != role_id || body["secret_id"] != secret_id {
                return errors(StatusCode::BAD_REQUEST, &["invalid role or secret ID"]);
            }
            let meta = BTreeMap::from([("role_name".to_owned(), "lanyard".to_owned())]);
            let t = emu.new_token(
                vec!["default".into(), "lanyard-broker".into()],
                ttl,
                true,
                meta,
                None,
            );
            return ok(auth_envelope(&t, true));
        }
        if let Some((m, role, jwt, ttl)) = emu.kubernetes.clone()
            && m == mount
        {
            if body["role"] != role || body["jwt"] != jwt {
                return errors(StatusCode::FORBIDDEN, &["permission denied"]);
            }
            let meta = BTreeMap::from([("role".to_owned(), role)]);
            let t = emu.new_token(
                vec!["default".into(), "lanyard-broker".into()],
                ttl,
                true,
                meta,
                None,
            );
            return ok(auth_envelope(&t, true));
        }
        return errors(
            StatusCode::NOT_FOUND,
            &[&format!("no handler for route \"{path}\"")],
        );
    }

    let Some(caller) = caller else {
        return errors(StatusCode::FORBIDDEN, &["permission denied"]);
    };
    // A valid token whose policies do not grant this path: Vault's 403.
    if emu.denied.contains(&path) {
        return errors(StatusCode::FORBIDDEN, &["permission denied"]);
    }

    match (write, segs.as_slice()) {
        (false, ["auth", "token", "lookup-self"]) => ok(envelope(
            json!({
                "accessor": caller.accessor,
                "creation_time": 1_700_000_000u64,
                "creation_ttl": caller.ttl,
                "display_name": "token",
                "entity_id": "",
                "expire_time": null,
                "explicit_max_ttl": 0,
                "id": caller.id,
                "identity_policies": null,
                "issue_time": "2023-11-14T22:13:20Z",
                "meta": caller.meta,
                "num_uses": 0,
                "orphan": caller.parent.is_none(),
                "path": "auth/token/create",
                "policies": caller.policies,
                "renewable": caller.renewable,
                "role": null,
                "ttl": caller.ttl,
                "type": "service",
            }),
            "",
            0,
            false,
        )),
        (true, ["auth", "token", "renew-self"]) => {
            if !caller.renewable {
                return errors(StatusCode::BAD_REQUEST, &["lease is not renewable"]);
            }
            let t = emu.tokens.get_mut(&caller.id).expect("caller exists");
            t.renewals += 1;
            let t = t.clone();
            ok(auth_envelope(&t, t.parent.is_none()))
        }
        (true, ["auth", "token", "create"]) | (true, ["auth", "token", "create", _]) => {
            let policies: Vec<String> = body["policies"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_else(|| caller.policies.clone());
            let ttl = ttl_seconds(body.get("ttl")).unwrap_or(2_764_800);
            let max = ttl_seconds(body.get("explicit_max_ttl")).unwrap_or(u64::MAX);
            let meta: BTreeMap<String, String> = body["meta"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            let renewable = body["renewable"].as_bool().unwrap_or(true);
            let t = emu.new_token(
                policies,
                ttl.min(max),
                renewable,
                meta,
                Some(caller.accessor.clone()),
            );
            ok(auth_envelope(&t, false))
        }
        (true, ["auth", "token", "revoke-accessor"]) => {
            let accessor = body["accessor"].as_str().unwrap_or_default().to_owned();
            match emu.tokens.values_mut().find(|t| t.accessor == accessor) {
                Some(t) => {
                    t.revoked = true;
                    StatusCode::NO_CONTENT.into_response()
                }
                None => errors(StatusCode::BAD_REQUEST, &["invalid accessor"]),
            }
        }
        (true, ["auth", "token", "renew-accessor"]) => {
            let accessor = body["accessor"].as_str().unwrap_or_default().to_owned();
            let inc = ttl_seconds(body.get("increment"));
            match emu
                .tokens
                .values_mut()
                .find(|t| t.accessor == accessor && !t.revoked)
            {
                Some(t) if t.renewable => {
                    t.renewals += 1;
                    if let Some(i) = inc {
                        t.ttl = i;
                    }
                    let mut t = t.clone();
                    t.id = String::new(); // Vault does not return the token for accessor renewals
                    ok(auth_envelope(&t, false))
                }
                Some(_) => errors(StatusCode::BAD_REQUEST, &["lease is not renewable"]),
                None => errors(StatusCode::BAD_REQUEST, &["invalid accessor"]),
            }
        }
        (true, ["sys", "leases", "renew"]) => {
            let id = body["lease_id"].as_str().unwrap_or_default().to_owned();
            let inc = ttl_seconds(body.get("increment"));
            match emu.leases.get_mut(&id) {
                Some(l) if !l.revoked => {
                    l.renewals += 1;
                    if let Some(i) = inc {
                        l.lease_duration = i;
                    }
                    ok(envelope(Value::Null, &id, l.lease_duration, true))
                }
                _ => errors(StatusCode::BAD_REQUEST, &["lease not found"]),
            }
        }
        (true, ["sys", "leases", "revoke"]) => {
            let id = body["lease_id"].as_str().unwrap_or_default().to_owned();
            if let Some(l) = emu.leases.get_mut(&id) {
                l.revoked = true;
            }
            StatusCode::NO_CONTENT.into_response()
        }
        (false, [mount, "data", rest @ ..]) if !rest.is_empty() => {
            let key = ((*mount).to_owned(), rest.join("/"));
            let Some(versions) = emu.kv.get(&key) else {
                return errors(StatusCode::NOT_FOUND, &[]);
            };
            let version = uri
                .query()
                .and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "version")
                        .and_then(|(_, v)| v.parse::<usize>().ok())
                })
                .filter(|v| *v > 0)
                .unwrap_or(versions.len());
            let Some(data) = versions.get(version - 1) else {
                return errors(StatusCode::NOT_FOUND, &[]);
            };
            ok(envelope(
                json!({
                    "data": data,
                    "metadata": {
                        "created_time": "2018-03-22T02:24:06.945319214Z",
                        "custom_metadata": null,
                        "deletion_time": "",
                        "destroyed": false,
                        "version": version,
                    }
                }),
                "",
                0,
                false,
            ))
        }
        (false, [mount, "creds", role]) => {
            let key = ((*mount).to_owned(), (*role).to_owned());
            let Some(duration) = emu.dynamic.get(&key).copied() else {
                return errors(StatusCode::BAD_REQUEST, &[&format!("unknown role: {role}")]);
            };
            let n = emu.next();
            let lease_id = format!("{mount}/creds/{role}/{}", uuid_like(n));
            emu.leases.insert(
                lease_id.clone(),
                LeaseInfo {
                    lease_duration: duration,
                    revoked: false,
                    renewals: 0,
                },
            );
            let mut pw = [0u8; 12];
            aws_lc_rs::rand::fill(&mut pw).expect("random");
            ok(envelope(
                json!({
                    "username": format!("v-lanyard-{role}-{n}"),
                    "password": pw.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                }),
                &lease_id,
                duration,
                true,
            ))
        }
        (true, [mount, "issue", role]) => {
            if !emu
                .pki
                .contains_key(&((*mount).to_owned(), (*role).to_owned()))
            {
                return errors(StatusCode::BAD_REQUEST, &[&format!("unknown role: {role}")]);
            }
            let cn = body["common_name"].as_str().unwrap_or_default().to_owned();
            if cn.is_empty() {
                return errors(
                    StatusCode::BAD_REQUEST,
                    &["the common_name field is required"],
                );
            }
            let alt_names: Vec<String> = body["alt_names"]
                .as_str()
                .map(|s| {
                    s.split(',')
                        .filter(|x| !x.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let ttl = ttl_seconds(body.get("ttl")).unwrap_or(2_764_800);
            let n = emu.next();
            let now = unix_seconds(SystemClock.now());
            let (cert, key, serial) = issue_cert(&shared.ca, &cn, &alt_names, n, now, now + ttl);
            emu.certs.push(IssuedCert {
                serial: serial.clone(),
                common_name: cn,
                alt_names,
                ttl: body["ttl"].as_str().map(str::to_owned),
                revoked: false,
            });
            ok(envelope(
                json!({
                    "certificate": cert,
                    "issuing_ca": shared.ca.pem(),
                    "ca_chain": [shared.ca.pem()],
                    "private_key": key,
                    "private_key_type": "ec",
                    "serial_number": serial,
                    "expiration": now + ttl,
                }),
                "",
                0,
                false,
            ))
        }
        (true, [_mount, "revoke"]) => {
            let serial = body["serial_number"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match emu.certs.iter_mut().find(|c| c.serial == serial) {
                Some(c) => {
                    c.revoked = true;
                    ok(envelope(
                        json!({"revocation_time": 1_700_000_000u64, "revocation_time_rfc3339": "2023-11-14T22:13:20Z", "state": "revoked"}),
                        "",
                        0,
                        false,
                    ))
                }
                None => errors(
                    StatusCode::BAD_REQUEST,
                    &["certificate with serial not found"],
                ),
            }
        }
        _ => errors(
            StatusCode::NOT_FOUND,
            &[&format!(
                "no handler for route \"{path}\". route entry not found."
            )],
        ),
    }
}

fn issue_cert(
    ca: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    alt_names: &[String],
    n: u64,
    now: u64,
    not_after: u64,
) -> (String, String, String) {
    let mut sans = vec![cn.to_owned()];
    sans.extend(alt_names.iter().cloned());
    let mut params = CertificateParams::new(sans).expect("valid SANs");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let serial_bytes: Vec<u8> = [0x1f, 0x00].into_iter().chain(n.to_be_bytes()).collect();
    params.serial_number = Some(SerialNumber::from(serial_bytes.clone()));
    let ts = |s: u64| {
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(s).unwrap_or(0)).expect("timestamp")
    };
    params.not_before = ts(now.saturating_sub(30));
    params.not_after = ts(not_after);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("leaf certificate");
    let serial = serial_bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    (cert.pem(), key.serialize_pem(), serial)
}

impl VaultEmulator {
    /// Starts the emulator on a free loopback port.
    pub async fn start() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("empty SANs");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "vault emulator CA");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
        let shared = Arc::new(Shared {
            emu: Mutex::new(Emu::default()),
            ca,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            shared,
            task,
        }
    }

    fn emu(&self) -> std::sync::MutexGuard<'_, Emu> {
        self.shared.emu.lock().expect("emulator state")
    }

    /// Creates a token (as an operator would) and returns it.
    pub fn create_token(&self, policies: &[&str], ttl: u64, renewable: bool) -> String {
        self.emu()
            .new_token(
                policies.iter().map(|p| (*p).to_owned()).collect(),
                ttl,
                renewable,
                BTreeMap::new(),
                None,
            )
            .id
    }

    /// Enables AppRole at `mount` with one role; logins get tokens of `token_ttl` seconds.
    pub fn enable_approle(&self, mount: &str, role_id: &str, secret_id: &str, token_ttl: u64) {
        self.emu().approle = Some((mount.into(), role_id.into(), secret_id.into(), token_ttl));
    }

    /// Enables Kubernetes auth at `mount` accepting one (role, jwt) pair.
    pub fn enable_kubernetes(&self, mount: &str, role: &str, jwt: &str, token_ttl: u64) {
        self.emu().kubernetes = Some((mount.into(), role.into(), jwt.into(), token_ttl));
    }

    /// Writes a new version of a KV v2 secret; returns its version.
    pub fn put_kv(&self, mount: &str, path: &str, data: Value) -> usize {
        let mut emu = self.emu();
        let versions = emu.kv.entry((mount.into(), path.into())).or_default();
        versions.push(data);
        versions.len()
    }

    /// Adds a dynamic-secrets role whose leases last `lease_duration` seconds.
    pub fn add_dynamic_role(&self, mount: &str, role: &str, lease_duration: u64) {
        self.emu()
            .dynamic
            .insert((mount.into(), role.into()), lease_duration);
    }

    /// Adds a PKI role.
    pub fn add_pki_role(&self, mount: &str, role: &str) {
        self.emu().pki.insert((mount.into(), role.into()), ());
    }

    /// Every request served so far.
    pub fn requests(&self) -> Vec<VaultRequest> {
        self.emu().requests.clone()
    }

    /// Requests to one path (after `/v1/`).
    pub fn requests_to(&self, path: &str) -> Vec<VaultRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// A lease by id.
    pub fn lease(&self, id: &str) -> Option<LeaseInfo> {
        self.emu().leases.get(id).cloned()
    }

    /// A token by token or accessor.
    pub fn token(&self, token_or_accessor: &str) -> Option<TokenInfo> {
        self.emu()
            .tokens
            .values()
            .find(|t| t.id == token_or_accessor || t.accessor == token_or_accessor)
            .cloned()
    }

    /// Certificates issued so far.
    pub fn certs(&self) -> Vec<IssuedCert> {
        self.emu().certs.clone()
    }

    /// Revokes a token (to simulate its expiry).
    pub fn revoke_token(&self, token: &str) {
        if let Some(t) = self.emu().tokens.get_mut(token) {
            t.revoked = true;
        }
    }

    /// Answers requests to `path` (after `/v1/`, e.g. `secret/data/apps/shop/db`) made with a
    /// valid token as Vault does when the token's policies do not grant it: 403
    /// `{"errors":["permission denied"]}`, or stops doing so. Requests are still recorded.
    pub fn deny_path(&self, path: &str, denied: bool) {
        let mut emu = self.emu();
        if denied {
            emu.denied.insert(path.to_owned());
        } else {
            emu.denied.remove(path);
        }
    }

    /// Makes every request fail with 503 (`Vault is sealed`), or stops doing so.
    pub fn set_down(&self, down: bool) {
        self.emu().down = down;
    }

    /// The emulator's CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.shared.ca.pem()
    }
}

impl Drop for VaultEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}
