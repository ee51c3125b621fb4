//! A test SPIFFE trust domain: keys for every algorithm a JWT-SVID may use, JWT-SVIDs minted
//! in the shapes the SPIFFE JWT-SVID spec gives (with or without `iss`, `aud` a string or a
//! list, `typ` `JWT` or `JOSE` or none), and its trust bundle served as the SPIFFE bundle
//! endpoint serves it (`https_web` profile over TLS, or plain HTTP on loopback).
//!
//! The bundle is a JWKS in the SPIFFE Trust Domain and Bundle format: `spiffe_sequence`,
//! `spiffe_refresh_hint`, `use: jwt-svid` keys (each with a `kid`, no `alg`) and one
//! `use: x509-svid` authority (an X.509 CA certificate in `x5c`), which is not a JWT key.
//! Signing is aws-lc-rs directly, since jsonwebtoken cannot sign ES512.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256,
    RSA_PKCS1_SHA384, RSA_PKCS1_SHA512, RSA_PSS_SHA256, RSA_PSS_SHA384, RSA_PSS_SHA512,
    RsaEncoding,
};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

/// The algorithms a JWT-SVID may be signed with (SPIFFE JWT-SVID, section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// ECDSA P-521 with SHA-512.
    ES512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
}

impl SvidAlg {
    /// Every one of them.
    pub const ALL: [SvidAlg; 9] = [
        SvidAlg::RS256,
        SvidAlg::RS384,
        SvidAlg::RS512,
        SvidAlg::ES256,
        SvidAlg::ES384,
        SvidAlg::ES512,
        SvidAlg::PS256,
        SvidAlg::PS384,
        SvidAlg::PS512,
    ];

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            SvidAlg::RS256 => "RS256",
            SvidAlg::RS384 => "RS384",
            SvidAlg::RS512 => "RS512",
            SvidAlg::ES256 => "ES256",
            SvidAlg::ES384 => "ES384",
            SvidAlg::ES512 => "ES512",
            SvidAlg::PS256 => "PS256",
            SvidAlg::PS384 => "PS384",
            SvidAlg::PS512 => "PS512",
        }
    }

    fn rsa_encoding(self) -> Option<&'static dyn RsaEncoding> {
        match self {
            SvidAlg::RS256 => Some(&RSA_PKCS1_SHA256),
            SvidAlg::RS384 => Some(&RSA_PKCS1_SHA384),
            SvidAlg::RS512 => Some(&RSA_PKCS1_SHA512),
            SvidAlg::PS256 => Some(&RSA_PSS_SHA256),
            SvidAlg::PS384 => Some(&RSA_PSS_SHA384),
            SvidAlg::PS512 => Some(&RSA_PSS_SHA512),
            _ => None,
        }
    }
}

/// One jwt-svid key: RSA (signs RS* and PS*) or one EC curve.
enum Signer {
    Rsa(RsaKeyPair),
    Ec(SvidAlg, EcdsaKeyPair),
}

struct SvidKey {
    kid: String,
    signer: Signer,
    jwk: Value,
}

impl SvidKey {
    fn signs(&self, alg: SvidAlg) -> bool {
        match &self.signer {
            Signer::Rsa(_) => alg.rsa_encoding().is_some(),
            Signer::Ec(a, _) => *a == alg,
        }
    }
}

struct Shared {
    trust_domain: String,
    keys: Mutex<Vec<SvidKey>>,
    x509_authority: Value,
    refresh_hint: Mutex<Option<Value>>,
    sequence: AtomicU64,
    fetches: AtomicUsize,
}

/// A SPIFFE trust domain serving its bundle at `/bundle` on `127.0.0.1:0`; the server stops
/// when the value is dropped.
pub struct SpiffeTrustDomain {
    shared: Arc<Shared>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SpiffeTrustDomain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiffeTrustDomain")
            .field("trust_domain", &self.shared.trust_domain)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for SpiffeTrustDomain {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SpiffeTrustDomain {
    /// Trust domain `trust_domain` (e.g. `example.org`) with an RSA, a P-256, a P-384 and a
    /// P-521 key, its bundle served over plain HTTP on loopback.
    pub async fn start(trust_domain: &str) -> Self {
        Self::start_with(trust_domain, None).await
    }

    /// Like [`SpiffeTrustDomain::start`], the bundle endpoint served over TLS with `pki`'s
    /// server certificate (the `https_web` profile: Web PKI authentication of the endpoint).
    pub async fn start_https(trust_domain: &str, pki: &crate::TestPki) -> Self {
        Self::start_with(trust_domain, Some(crate::pki::server_config(pki))).await
    }

    async fn start_with(trust_domain: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the test bundle endpoint");
        let addr: SocketAddr = listener.local_addr().expect("local address");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let keys = vec![
            rsa_key(),
            ec_key(SvidAlg::ES256),
            ec_key(SvidAlg::ES384),
            ec_key(SvidAlg::ES512),
        ];
        let shared = Arc::new(Shared {
            trust_domain: trust_domain.to_owned(),
            keys: Mutex::new(keys),
            x509_authority: x509_authority(trust_domain),
            refresh_hint: Mutex::new(Some(json!(300))),
            sequence: AtomicU64::new(1),
            fetches: AtomicUsize::new(0),
        });
        let router = axum::Router::new()
            .route("/bundle", get(bundle))
            .with_state(shared.clone());
        let task = match tls {
            None => tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            }),
            Some(config) => tokio::spawn(crate::oidc::serve_tls(listener, router, config)),
        };
        Self {
            shared,
            url: format!("{scheme}://{addr}"),
            task,
        }
    }

    /// The trust domain's name.
    pub fn trust_domain(&self) -> &str {
        &self.shared.trust_domain
    }

    /// The bundle endpoint URL.
    pub fn bundle_url(&self) -> String {
        format!("{}/bundle", self.url)
    }

    /// How many times the bundle was fetched.
    pub fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// The bundle as the endpoint serves it now.
    pub fn bundle_json(&self) -> Value {
        bundle_document(&self.shared)
    }

    /// Sets `spiffe_refresh_hint` (any JSON value, to test hostile ones; `None` leaves it out).
    pub fn set_refresh_hint(&self, hint: Option<Value>) {
        *lock(&self.shared.refresh_hint) = hint;
    }

    /// Adds a new RSA key (as a rotation does: the new key signs RS*/PS* from now on, the old
    /// one stays in the bundle) and bumps `spiffe_sequence`. Returns the new `kid`.
    pub fn rotate_rsa(&self) -> String {
        let key = rsa_key();
        let kid = key.kid.clone();
        lock(&self.shared.keys).push(key);
        self.shared.sequence.fetch_add(1, Ordering::SeqCst);
        kid
    }

    /// The SPIFFE ID `spiffe://<trust domain><path>`.
    pub fn id(&self, path: &str) -> String {
        format!("spiffe://{}{path}", self.shared.trust_domain)
    }

    /// JWT-SVID claims as the spec gives them: `sub` the SPIFFE ID, `aud`, `exp` (and `iat`),
    /// without `iss`.
    pub fn claims(&self, path: &str, aud: Value, iat: u64, ttl: u64) -> Value {
        json!({
            "sub": self.id(path),
            "aud": aud,
            "iat": iat,
            "exp": iat + ttl,
        })
    }

    /// A JWT-SVID over `claims` signed with this trust domain's newest key for `alg`, its
    /// `kid` in the header, `typ: JWT`.
    pub fn svid(&self, alg: SvidAlg, claims: &Value) -> String {
        self.svid_typed(alg, claims, Some("JWT"))
    }

    /// Like [`SpiffeTrustDomain::svid`] with header `typ` as given (`None`: no `typ`).
    pub fn svid_typed(&self, alg: SvidAlg, claims: &Value, typ: Option<&str>) -> String {
        let keys = lock(&self.shared.keys);
        let key = keys
            .iter()
            .rev()
            .find(|k| k.signs(alg))
            .expect("a key for every JWT-SVID algorithm");
        let mut header = json!({"alg": alg.name(), "kid": key.kid});
        if let Some(t) = typ {
            header["typ"] = json!(t);
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match &key.signer {
            Signer::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                let encoding = alg.rsa_encoding().expect("an RSA algorithm");
                kp.sign(encoding, &rng, input.as_bytes(), &mut sig)
                    .expect("RSA signing");
                sig
            }
            Signer::Ec(_, kp) => kp
                .sign(&rng, input.as_bytes())
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn bundle(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared.fetches.fetch_add(1, Ordering::SeqCst);
    Json(bundle_document(&shared))
}

fn bundle_document(shared: &Shared) -> Value {
    let mut keys: Vec<Value> = lock(&shared.keys).iter().map(|k| k.jwk.clone()).collect();
    keys.push(shared.x509_authority.clone());
    let mut doc = json!({
        "keys": keys,
        "spiffe_sequence": shared.sequence.load(Ordering::SeqCst),
    });
    if let Some(hint) = lock(&shared.refresh_hint).clone() {
        doc["spiffe_refresh_hint"] = hint;
    }
    doc
}

fn kid() -> String {
    let mut b = [0u8; 12];
    aws_lc_rs::rand::fill(&mut b).expect("randomness");
    URL_SAFE_NO_PAD.encode(b)
}

fn rsa_key() -> SvidKey {
    let kp = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA 2048 key generation");
    let comps = PublicKeyComponents::<Vec<u8>>::from(kp.public_key());
    let strip = |b: &[u8]| {
        let start = b.iter().position(|&x| x != 0).unwrap_or(0);
        URL_SAFE_NO_PAD.encode(&b[start..])
    };
    let kid = kid();
    let jwk = json!({
        "kty": "RSA",
        "use": "jwt-svid",
        "kid": kid,
        "n": strip(&comps.n),
        "e": strip(&comps.e),
    });
    SvidKey {
        kid,
        signer: Signer::Rsa(kp),
        jwk,
    }
}

fn ec_key(alg: SvidAlg) -> SvidKey {
    let (signing, crv, width) = match alg {
        SvidAlg::ES256 => (&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32),
        SvidAlg::ES384 => (&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48),
        SvidAlg::ES512 => (&ECDSA_P521_SHA512_FIXED_SIGNING, "P-521", 66),
        other => panic!("{other:?} is not an EC algorithm"),
    };
    let kp = EcdsaKeyPair::generate(signing).expect("EC key generation");
    let point = kp.public_key().as_ref().to_vec();
    let (x, y) = (&point[1..1 + width], &point[1 + width..]);
    let kid = kid();
    let jwk = json!({
        "kty": "EC",
        "crv": crv,
        "use": "jwt-svid",
        "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(x),
        "y": URL_SAFE_NO_PAD.encode(y),
    });
    SvidKey {
        kid,
        signer: Signer::Ec(alg, kp),
        jwk,
    }
}

/// The trust domain's X.509 authority as a bundle lists it: a self-signed CA whose URI SAN
/// is the trust domain's SPIFFE ID, `use: x509-svid`, the certificate in `x5c`.
fn x509_authority(trust_domain: &str) -> Value {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}")
            .try_into()
            .expect("a SPIFFE ID is an IA5 string"),
    )];
    let key = KeyPair::generate().expect("P-256 key generation");
    let cert = params.self_signed(&key).expect("self-signed authority");
    let point = key.public_key_raw();
    json!({
        "kty": "EC",
        "crv": "P-256",
        "use": "x509-svid",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        "x5c": [STANDARD.encode(cert.der())],
    })
}
