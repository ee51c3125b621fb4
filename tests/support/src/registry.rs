//! A registry that uses the Docker/OCI **token authentication flow**: [`TokenServer`], a small
//! token server following CNCF distribution 2.8's token spec
//! (<https://distribution.github.io/distribution/spec/auth/token/> and `.../auth/jwt/`), and
//! [`TokenRegistry`], a real `docker-registry serve` (Debian's distribution 2.8) on a free
//! loopback port configured to trust it.
//!
//! The flow, as a client meets it: the registry answers `401` with
//! `WWW-Authenticate: Bearer realm="http://127.0.0.1:P/token",service="…",scope="…"`; the client
//! calls `GET /token?service=S&scope=repository:NAME:pull[,push]` (`scope` may repeat), with
//! HTTP basic credentials or none, gets `{"token", "access_token", "expires_in", "issued_at"}`
//! back and retries with `Authorization: Bearer <jwt>`.
//!
//! The token server's policy:
//! - right basic credentials: every `repository` scope is granted the asked actions among
//!   `pull` and `push`; other resource types (`registry:catalog:*`) get nothing;
//! - wrong or malformed credentials: `401 Unauthorized` (the spec: "the token server should
//!   return a 401 Unauthorized response indicating that the provided credentials are
//!   invalid");
//! - no credentials: a token with an **empty** `access` list (the registry then answers
//!   `401 insufficient_scope`), unless [`TokenServer::set_anonymous_pull`] turned anonymous pull
//!   on, which grants `pull` (never `push`) on every repository, like a public registry;
//! - a missing or different `service`: `400 Bad Request`.
//!
//! The JWT is what distribution 2.8 verifies: header `{"typ":"JWT","alg":"ES256","x5c":[DER]}`
//! (a self-signed P-256 certificate made with rcgen; the registry's `rootcertbundle` holds the
//! same certificate), claims `iss`, `sub` (the user, `""` when anonymous), `aud` (the service,
//! a string as 2.8 expects), `exp` (+300 s), `nbf`, `iat`, `jti` and
//! `access: [{"type":"repository","name":…,"actions":[…]}]`.
//!
//! Every request is recorded ([`TokenServer::requests`]) so tests can assert the flow happened
//! and with which scopes. Passwords are never recorded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::child::Probe;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::now_unix;

/// The `service` the registry names in its challenge and the token's `aud`.
pub const SERVICE: &str = "lanyard-test-registry";
/// The token's `iss`, which the registry trusts.
pub const ISSUER: &str = "lanyard-test-token-issuer";
/// Lifetime of issued tokens (`expires_in`), in seconds.
pub const TOKEN_TTL_SECS: u64 = 300;

/// One request to `/token`, as the token server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `service` query parameter.
    pub service: Option<String>,
    /// Every `scope` asked for, as sent (`repository:lanyard/app:pull`).
    pub scopes: Vec<String>,
    /// The basic-auth user name presented (`None`: anonymous). Never the password.
    pub user: Option<String>,
    /// The HTTP status answered: 200, 400 or 401.
    pub status: u16,
    /// What the issued token grants, one `type:name:action,action` per entry (empty when the
    /// request was refused or nothing was granted).
    pub granted: Vec<String>,
}

struct Signer {
    key: EncodingKey,
    cert_der_b64: String,
}

struct Shared {
    user: String,
    password: String,
    anonymous_pull: AtomicBool,
    signer: Signer,
    requests: Mutex<Vec<TokenRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A token server for distribution's token auth on `http://127.0.0.1:<port>/token`.
///
/// The server task stops when the value is dropped.
pub struct TokenServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    cert_pem: String,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.addr)
            .field("user", &self.shared.user)
            .finish_non_exhaustive()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenServer {
    /// Generates a P-256 signing key and self-signed certificate and starts serving on
    /// `127.0.0.1:0`, accepting basic credentials `user` / `password`. Must run inside a tokio
    /// runtime.
    pub async fn start(user: &str, password: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("P-256 key generation");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lanyard test token signer");
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let cert = params
            .self_signed(&key)
            .expect("self-signed token signing certificate");
        let signer = Signer {
            key: EncodingKey::from_ec_der(&key.serialize_der()),
            cert_der_b64: STANDARD.encode(cert.der().as_ref()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the test token server");
        let addr = listener
            .local_addr()
            .expect("local address of a bound listener");
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            password: password.to_owned(),
            anonymous_pull: AtomicBool::new(false),
            signer,
            requests: Mutex::new(Vec::new()),
        });
        let router = axum::Router::new()
            .route("/token", get(token))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            shared,
            addr,
            cert_pem: cert.pem(),
            http: reqwest::Client::new(),
            task,
        }
    }

    /// The realm the registry sends clients to: `http://127.0.0.1:<port>/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The PEM of the signing certificate (the registry's `rootcertbundle`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When `true`, requests without credentials get `pull` on every repository; when
    /// `false` (the default) they get a token granting nothing.
    pub fn set_anonymous_pull(&self, allowed: bool) {
        self.shared.anonymous_pull.store(allowed, Ordering::SeqCst);
    }

    /// Every request to `/token` so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests `/token` has had.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Asks this token server for a token over HTTP, as a client would (recorded like any
    /// request): `credentials` as basic auth (or none), each of `scopes` as a `scope`
    /// parameter. Returns the `token` field; panics unless the answer is 200.
    pub async fn fetch_token(&self, credentials: Option<(&str, &str)>, scopes: &[&str]) -> String {
        let mut query = vec![("service", SERVICE)];
        query.extend(scopes.iter().map(|s| ("scope", *s)));
        let mut req = self.http.get(self.realm()).query(&query);
        if let Some((user, password)) = credentials {
            req = req.basic_auth(user, Some(password));
        }
        let resp = req.send().await.expect("GET /token from the token server");
        let status = resp.status();
        let body: Value = resp.json().await.expect("token server answers JSON");
        assert_eq!(status, StatusCode::OK, "token server refused: {body}");
        body["token"]
            .as_str()
            .expect("`token` in the token response")
            .to_owned()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"errors": [{"code": code, "message": message}]});
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"lanyard-test-token\""),
        );
    }
    resp
}

/// `Some(Ok(user))` for the right credentials, `Some(Err(name))` for wrong or malformed ones
/// (with the user name when one could be read), `None` without an `Authorization` header.
fn check_basic(shared: &Shared, headers: &HeaderMap) -> Option<Result<String, Option<String>>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let Some(b64) = value.to_str().ok().and_then(|v| {
        v.strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))
    }) else {
        return Some(Err(None));
    };
    let Some((user, password)) = STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
    else {
        return Some(Err(None));
    };
    if user == shared.user && password == shared.password {
        Some(Ok(user))
    } else {
        Some(Err(Some(user)))
    }
}

/// `type:name:actions` → (type, name, actions). The name may hold `:` (a host with a port),
/// so the type ends at the first `:` and the actions start after the last.
fn parse_scope(scope: &str) -> Option<(&str, &str, Vec<&str>)> {
    let (ty, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    // `repository(plugin)` carries a class; the type is what precedes it.
    let ty = ty.split_once('(').map(|(t, _)| t).unwrap_or(ty);
    Some((
        ty,
        name,
        actions.split(',').filter(|a| !a.is_empty()).collect(),
    ))
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let mut service = None;
    let mut scopes = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "service" => service = Some(v.into_owned()),
            // One parameter may also carry several space-separated scopes.
            "scope" => scopes.extend(v.split_whitespace().map(str::to_owned)),
            _ => {}
        }
    }
    let mut record = TokenRequest {
        service: service.clone(),
        scopes: scopes.clone(),
        user: None,
        status: 200,
        granted: Vec::new(),
    };
    let finish = |record: TokenRequest, resp: Response| {
        lock(&shared.requests).push(record);
        resp
    };
    if service.as_deref() != Some(SERVICE) {
        record.status = 400;
        return finish(
            record,
            error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                &format!("unknown service; this token server serves `{SERVICE}`"),
            ),
        );
    }
    let authenticated = match check_basic(&shared, &headers) {
        Some(Ok(user)) => {
            record.user = Some(user);
            true
        }
        Some(Err(user)) => {
            record.user = user;
            record.status = 401;
            return finish(
                record,
                error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "invalid credentials",
                ),
            );
        }
        None => false,
    };
    let anonymous_pull = shared.anonymous_pull.load(Ordering::SeqCst);
    let mut access = Vec::new();
    for scope in &scopes {
        let Some((ty, name, actions)) = parse_scope(scope) else {
            continue;
        };
        if ty != "repository" {
            continue;
        }
        let granted: Vec<&str> = actions
            .into_iter()
            .filter(|a| match *a {
                "pull" => authenticated || anonymous_pull,
                "push" => authenticated,
                _ => false,
            })
            .collect();
        if granted.is_empty() {
            continue;
        }
        record
            .granted
            .push(format!("repository:{name}:{}", granted.join(",")));
        access.push(json!({"type": "repository", "name": name, "actions": granted}));
    }
    let now = now_unix();
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).expect("random jti");
    let claims = json!({
        "iss": ISSUER,
        "sub": record.user.clone().unwrap_or_default(),
        "aud": SERVICE,
        "exp": now + TOKEN_TTL_SECS,
        "nbf": now,
        "iat": now,
        "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "access": access,
    });
    let mut h = Header::new(Algorithm::ES256);
    h.typ = Some("JWT".into());
    h.x5c = Some(vec![shared.signer.cert_der_b64.clone()]);
    let jwt = jsonwebtoken::encode(&h, &claims, &shared.signer.key).expect("sign ES256 token");
    let issued_at = time::OffsetDateTime::from_unix_timestamp(now as i64)
        .expect("a representable time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formatting");
    finish(
        record,
        axum::Json(json!({
            "token": jwt,
            "access_token": jwt,
            "expires_in": TOKEN_TTL_SECS,
            "issued_at": issued_at,
        }))
        .into_response(),
    )
}

/// A real `docker-registry serve` (distribution 2.8) on a free loopback port, with token auth
/// pointing at its own [`TokenServer`] and filesystem storage in a temp dir. The user name is
/// `lanyard-test`; the password is random per registry. The registry is killed when the value
/// is dropped.
pub struct TokenRegistry {
    /// The token server the registry trusts.
    pub token_server: TokenServer,
    host: String,
    user: String,
    password: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for TokenRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRegistry")
            .field("host", &self.host)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MISSING_PEERS: &str = "run ./test.sh, or `source tests/peers/images.sh` before `cargo test` \
     (it installs docker-registry and skopeo, builds the test images and exports LANYARD_TEST_IMAGES)";

fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

impl TokenRegistry {
    /// Starts the token server and the registry and waits until the registry answers `/v2/`
    /// with a Bearer challenge naming the token server. Must run inside a tokio runtime.
    /// Panics, naming the fix, when `docker-registry` is not installed.
    pub async fn start() -> Self {
        match Command::new("docker-registry")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => {}
            other => panic!("`docker-registry --version` failed ({other:?}): {MISSING_PEERS}"),
        }
        let mut pw = [0u8; 12];
        aws_lc_rs::rand::fill(&mut pw).expect("random password");
        let password = format!(
            "tok-{}",
            pw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let user = "lanyard-test".to_owned();
        let token_server = TokenServer::start(&user, &password).await;

        let dir = tempfile::tempdir().expect("temp dir for the token-auth registry");
        let bundle = dir.path().join("token-signer.pem");
        std::fs::write(&bundle, token_server.cert_pem()).expect("write rootcertbundle");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("registry storage dir");
        let config_path = dir.path().join("config.yml");
        let log = dir.path().join("registry.log");
        let realm = token_server.realm();
        let (child, port) = crate::child::spawn_ready(
            "docker-registry",
            Duration::from_secs(15),
            |port| {
                let config = format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    storage.display(),
                    bundle.display(),
                );
                std::fs::write(&config_path, config).expect("write registry config");
                let out = std::fs::File::create(&log).expect("registry log file");
                let err = out.try_clone().expect("registry log file handle");
                Command::new("docker-registry")
                    .arg("serve")
                    .arg(&config_path)
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn()
                    .unwrap_or_else(|e| panic!("starting docker-registry: {e}: {MISSING_PEERS}"))
            },
            // Ready when `/v2/` answers with a Bearer challenge naming this realm; any other
            // answer means someone else has the port.
            |client, port| {
                let realm = realm.clone();
                async move {
                    let url = format!("http://127.0.0.1:{port}/v2/");
                    let Ok(resp) = client.get(&url).send().await else {
                        return Probe::NotYet;
                    };
                    let challenge = resp
                        .headers()
                        .get(header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    if resp.status() == StatusCode::UNAUTHORIZED
                        && challenge.starts_with("Bearer ")
                        && challenge.contains(&realm)
                        && challenge.contains(SERVICE)
                    {
                        Probe::Ready
                    } else {
                        Probe::Wrong(format!(
                            "{url} answered {} with challenge {challenge:?}, not the token-auth \
                             registry's 401 Bearer challenge",
                            resp.status()
                        ))
                    }
                }
            },
            || format!("docker-registry log:\n{}", read_log(&log)),
        )
        .await;
        let host = format!("127.0.0.1:{port}");
        Self {
            token_server,
            host,
            user,
            password,
            child,
            log,
            _dir: dir,
        }
    }

    /// The registry log so far (for failure messages).
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The user name the token server accepts.
    pub fn username(&self) -> &str {
        &self.user
    }

    /// The password the token server accepts.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Pushes `$LANYARD_TEST_IMAGES/<name>.oci.tar` (built by `tests/peers/images.sh`) to
    /// `lanyard/<name>:1` with skopeo, which does the token flow with push scope. Returns
    /// `127.0.0.1:<port>/lanyard/<name>:1`. Panics, naming the fix, when the images are missing.
    pub async fn push_test_image(&self, name: &str) -> String {
        let images = match std::env::var("LANYARD_TEST_IMAGES") {
            Ok(d) if !d.is_empty() => PathBuf::from(d),
            _ => panic!("LANYARD_TEST_IMAGES is not set: {MISSING_PEERS}"),
        };
        let archive = images.join(format!("{name}.oci.tar"));
        assert!(
            Path::new(&archive).is_file(),
            "{} is missing: {MISSING_PEERS}",
            archive.display()
        );
        let reference = format!("{}/lanyard/{name}:1", self.host);
        let args = vec![
            "copy".to_owned(),
            "-q".to_owned(),
            "--dest-tls-verify=false".to_owned(),
            "--dest-creds".to_owned(),
            format!("{}:{}", self.user, self.password),
            format!("oci-archive:{}", archive.display()),
            format!("docker://{reference}"),
        ];
        // Blocking: skopeo talks to the token server, which runs on this runtime.
        let out = tokio::task::spawn_blocking(move || Command::new("skopeo").args(&args).output())
            .await
            .expect("skopeo task")
            .unwrap_or_else(|e| panic!("running skopeo: {e}: {MISSING_PEERS}"));
        assert!(
            out.status.success(),
            "skopeo copy to {reference} failed: {}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        reference
    }
}
