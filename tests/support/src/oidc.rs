//! A real OIDC issuer on loopback for tests: it serves a discovery document and a JWKS over
//! plain HTTP on `127.0.0.1:<random port>` and mints tokens signed by the keys it publishes.
//!
//! Keys are generated fresh for every issuer with aws-lc-rs: one RSA 2048 (`RS256`), one
//! EC P-256 (`ES256`) and one Ed25519 (`EdDSA`), each with its own `kid`. [`OidcIssuer::rotate`]
//! adds keys and [`OidcIssuer::retire`] drops them; [`OidcIssuer::set_available`] makes the endpoints answer 503 so tests can check
//! that verifiers keep the last good key set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// Seconds since the Unix epoch, from the real system clock. Tests use it to stamp tokens
/// that a broker running on `SystemClock` will accept.
#[allow(clippy::disallowed_methods)] // test support: stamping real tokens needs real time
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One signing key: its private half for minting and its public JWK for the JWKS.
#[derive(Clone)]
struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// SubjectPublicKeyInfo PEM of an RSA key (for the HMAC key-confusion forgery).
    public_pem: Option<String>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Shared {
    url: String,
    /// Published keys, oldest first; the newest key of an algorithm is the one that signs.
    keys: Mutex<Vec<SigningKey>>,
    /// An RSA key that is never published, created on first use.
    untrusted: Mutex<Option<SigningKey>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    available: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A test OIDC issuer serving `/.well-known/openid-configuration` and `/jwks` on loopback.
///
/// The server task stops when the value is dropped.
#[derive(Debug)]
pub struct OidcIssuer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OidcIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OidcIssuer {
    /// Generates keys and starts serving plain HTTP on `127.0.0.1:0`. Must run inside a
    /// tokio runtime.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Like [`OidcIssuer::start`], but serving HTTPS with the server certificate of `pki`
    /// (valid for `127.0.0.1`); the URL is `https://127.0.0.1:<port>`. Clients must trust
    /// `pki.ca_path()`.
    pub async fn start_https(pki: &crate::TestPki) -> Self {
        Self::start_with(Some(crate::pki::server_config(pki))).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the test OIDC issuer");
        let addr = listener
            .local_addr()
            .expect("local address of a bound listener");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}");
        let keys = vec![
            generate_key(Algorithm::RS256),
            generate_key(Algorithm::ES256),
            generate_key(Algorithm::EdDSA),
        ];
        let shared = Arc::new(Shared {
            url,
            keys: Mutex::new(keys),
            untrusted: Mutex::new(None),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            available: AtomicBool::new(true),
        });
        let router = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(shared.clone());
        let task = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            }),
            Some(config) => tokio::spawn(serve_tls(listener, router, config)),
        };
        Self { shared, addr, task }
    }

    /// The issuer URL (`http://127.0.0.1:<port>`, or `https://` from
    /// [`OidcIssuer::start_https`]), which is also the `iss` of its tokens.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The JWKS URL (`<url>/jwks`).
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.shared.url)
    }

    /// How many times `/jwks` was requested (including answers of 503).
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was requested.
    pub fn discovery_fetches(&self) -> usize {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }

    /// When `false`, discovery and JWKS answer `503 Service Unavailable`.
    pub fn set_available(&self, available: bool) {
        self.shared.available.store(available, Ordering::SeqCst);
    }

    /// Adds a new RS256 key, which signs from now on; older keys stay published. Returns the
    /// new `kid`.
    pub fn rotate(&self) -> String {
        self.rotate_alg(Algorithm::RS256)
    }

    /// Adds a new key for `alg` (RS256, ES256 or EdDSA), which signs that algorithm from now
    /// on; older keys stay published. Returns the new `kid`.
    pub fn rotate_alg(&self, alg: Algorithm) -> String {
        let key = generate_key(alg);
        let kid = key.kid.clone();
        lock(&self.shared.keys).push(key);
        kid
    }

    /// Stops publishing the key `kid` (as an issuer does once it has rotated away from it);
    /// tokens it signed no longer verify at a verifier that refreshed since. Returns whether
    /// the key was published.
    pub fn retire(&self, kid: &str) -> bool {
        let mut keys = lock(&self.shared.keys);
        let before = keys.len();
        keys.retain(|k| k.kid != kid);
        keys.len() != before
    }

    /// The `kid` of the key that currently signs `alg`.
    pub fn current_kid(&self, alg: Algorithm) -> String {
        self.current_key(alg).kid
    }

    /// Every published `kid` with its algorithm.
    pub fn published_kids(&self) -> HashMap<String, Algorithm> {
        lock(&self.shared.keys)
            .iter()
            .map(|k| (k.kid.clone(), k.alg))
            .collect()
    }

    /// The JWKS document as currently published (for tests that use a JWKS file).
    pub fn jwks_json(&self) -> Value {
        jwks_document(&lock(&self.shared.keys))
    }

    fn current_key(&self, alg: Algorithm) -> SigningKey {
        lock(&self.shared.keys)
            .iter()
            .rev()
            .find(|k| k.alg == alg)
            .cloned()
            .unwrap_or_else(|| panic!("the test issuer has no {alg:?} key (RS256, ES256, EdDSA)"))
    }

    /// A token with `claims`, signed by the current key of `alg` and carrying its `kid`.
    pub fn token(&self, alg: Algorithm, claims: Value) -> String {
        let key = self.current_key(alg);
        sign(&key, Some(key.kid.clone()), &claims)
    }

    /// Like [`OidcIssuer::token`] but without a `kid` in the header.
    pub fn token_without_kid(&self, alg: Algorithm, claims: Value) -> String {
        let key = self.current_key(alg);
        sign(&key, None, &claims)
    }

    /// Claims of a Kubernetes projected service-account token issued at `iat` and valid for
    /// `ttl_secs` (`nbf` = `iat`).
    pub fn k8s_claims(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        iat: u64,
        ttl_secs: u64,
    ) -> Value {
        json!({
            "aud": [audience],
            "exp": iat + ttl_secs,
            "iat": iat,
            "nbf": iat,
            "iss": self.shared.url,
            "jti": random_hex(16),
            "sub": format!("system:serviceaccount:{namespace}:{service_account}"),
            "kubernetes.io": {
                "namespace": namespace,
                "node": { "name": "node-1", "uid": random_uuid() },
                "pod": { "name": format!("{service_account}-7d9c8b6f5-x2k4q"), "uid": random_uuid() },
                "serviceaccount": { "name": service_account, "uid": random_uuid() },
                "warnafter": iat + ttl_secs * 4 / 5,
            },
        })
    }

    /// A realistic projected service-account token (RS256), stamped with the real time.
    pub fn k8s_token(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        ttl_secs: u64,
    ) -> String {
        self.k8s_token_at(namespace, service_account, audience, now_unix(), ttl_secs)
    }

    /// A projected service-account token (RS256) from an issuer whose clock is `skew_seconds`
    /// ahead of the real time (behind when negative): `iat` = `nbf` = real time + skew, valid
    /// for `ttl_secs` from then.
    pub fn k8s_token_skewed(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        skew_seconds: i64,
        ttl_secs: u64,
    ) -> String {
        let iat = now_unix().saturating_add_signed(skew_seconds);
        self.k8s_token_at(namespace, service_account, audience, iat, ttl_secs)
    }

    /// A projected service-account token (RS256) issued at `iat` (Unix seconds).
    pub fn k8s_token_at(
        &self,
        namespace: &str,
        service_account: &str,
        audience: &str,
        iat: u64,
        ttl_secs: u64,
    ) -> String {
        let claims = self.k8s_claims(namespace, service_account, audience, iat, ttl_secs);
        self.token(Algorithm::RS256, claims)
    }

    /// Forgery: `alg: none` and an empty signature.
    pub fn forge_alg_none(&self, claims: Value) -> String {
        let header = json!({ "alg": "none", "typ": "JWT" });
        format!("{}.{}.", b64_json(&header), b64_json(&claims))
    }

    /// Forgery (key confusion): `alg: HS256` with the RS256 key's `kid`, an HMAC-SHA256
    /// keyed with the bytes of that RSA public key's PEM — what a verifier that lets the token
    /// pick the algorithm would accept.
    pub fn forge_hs256_with_public_key(&self, claims: Value) -> String {
        let key = self.current_key(Algorithm::RS256);
        let pem = key
            .public_pem
            .clone()
            .expect("RSA keys keep their public PEM");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(pem.as_bytes()))
            .expect("HMAC signing cannot fail")
    }

    /// Forgery: signed by the real RS256 key, but naming a `kid` that is not published.
    pub fn sign_with_unknown_kid(&self, claims: Value) -> String {
        let key = self.current_key(Algorithm::RS256);
        sign(&key, Some(format!("unknown-{}", random_hex(8))), &claims)
    }

    /// Forgery: signed by an RSA key that is never published, under the `kid` of the real
    /// RS256 key (so a verifier finds a key and must reject the signature).
    pub fn sign_with_untrusted_key(&self, claims: Value) -> String {
        let kid = self.current_kid(Algorithm::RS256);
        let key = lock(&self.shared.untrusted)
            .get_or_insert_with(|| generate_key(Algorithm::RS256))
            .clone();
        sign(&key, Some(kid), &claims)
    }
}

/// Serves `router` over TLS, one task per connection.
pub(crate) async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    config: Arc<rustls::ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if !shared.available.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "issuer unavailable").into_response();
    }
    Json(json!({
        "issuer": shared.url,
        "jwks_uri": format!("{}/jwks", shared.url),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
    }))
    .into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if !shared.available.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "issuer unavailable").into_response();
    }
    let doc = jwks_document(&lock(&shared.keys));
    Json(doc).into_response()
}

fn jwks_document(keys: &[SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

fn sign(key: &SigningKey, kid: Option<String>, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = kid;
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("signing with a generated key")
}

fn b64_json(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("JSON values serialize"))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut buf).expect("system randomness");
    buf
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

fn random_uuid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// PEM-encodes DER with 64-column lines.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[start..]
}

fn generate_key(alg: Algorithm) -> SigningKey {
    let kid = format!("{}-{}", format!("{alg:?}").to_lowercase(), random_hex(6));
    match alg {
        Algorithm::RS256 => {
            let kp = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA 2048 key generation");
            let pkcs8: Pkcs8V1Der<'static> = kp.as_der().expect("RSA private key to PKCS#8");
            let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
                .expect("jsonwebtoken reads a PKCS#8 RSA key");
            let public = kp.public_key();
            let spki: PublicKeyX509Der<'static> = public.as_der().expect("RSA public key to SPKI");
            let comps = PublicKeyComponents::<Vec<u8>>::from(public);
            let jwk = json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": kid,
                "n": b64(strip_leading_zeros(&comps.n)),
                "e": b64(strip_leading_zeros(&comps.e)),
            });
            SigningKey {
                kid,
                alg,
                encoding,
                jwk,
                public_pem: Some(pem("PUBLIC KEY", spki.as_ref())),
            }
        }
        Algorithm::ES256 => {
            let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .expect("P-256 key generation");
            let pkcs8 = kp.to_pkcs8v1().expect("P-256 private key to PKCS#8");
            let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
            let point = kp.public_key().as_ref();
            // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
            let (x, y) = (&point[1..33], &point[33..65]);
            let jwk = json!({
                "kty": "EC",
                "crv": "P-256",
                "use": "sig",
                "alg": "ES256",
                "kid": kid,
                "x": b64(x),
                "y": b64(y),
            });
            SigningKey {
                kid,
                alg,
                encoding,
                jwk,
                public_pem: None,
            }
        }
        Algorithm::EdDSA => {
            let kp = Ed25519KeyPair::generate().expect("Ed25519 key generation");
            let pkcs8 = kp.to_pkcs8v1().expect("Ed25519 private key to PKCS#8");
            let encoding = EncodingKey::from_ed_der(pkcs8.as_ref());
            let jwk = json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "use": "sig",
                "alg": "EdDSA",
                "kid": kid,
                "x": b64(kp.public_key().as_ref()),
            });
            SigningKey {
                kid,
                alg,
                encoding,
                jwk,
                public_pem: None,
            }
        }
        other => panic!("the test issuer signs with RS256, ES256 or EdDSA, not {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_discovery_and_jwks_and_counts_fetches() {
        let issuer = OidcIssuer::start().await;
        let mut stream = tokio::net::TcpStream::connect(issuer.addr())
            .await
            .expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /jwks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write request");
        let mut body = String::new();
        stream.read_to_string(&mut body).await.expect("io");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        for kid in issuer.published_kids().keys() {
            assert!(body.contains(kid.as_str()), "{kid} missing from {body}");
        }
        assert_eq!(issuer.jwks_fetches(), 1);
    }

    #[tokio::test]
    async fn rotate_adds_a_key_that_signs() {
        let issuer = OidcIssuer::start().await;
        let old = issuer.current_kid(Algorithm::RS256);
        let new = issuer.rotate();
        assert_ne!(old, new);
        assert_eq!(issuer.published_kids().len(), 4);
        let token = issuer.token(Algorithm::RS256, json!({"sub": "a"}));
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.kid.as_deref(), Some(new.as_str()));
    }
}
