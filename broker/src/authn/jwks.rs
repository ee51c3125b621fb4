//! JWKS sources and cache: where an issuer's public keys come from, how they are fetched
//! (bounded, over rustls with aws-lc-rs), parsed (asymmetric keys only) and kept (the last
//! good key set survives failed refreshes).
//!
//! - [`KeySet`]: a parsed JWKS, keeping only keys the broker can verify with (RSA ≥ 2048
//!   bits, EC P-256/P-384/P-521, Ed25519). Symmetric (`kty: oct`) keys are refused. A SPIFFE
//!   trust bundle ([`KeySet::parse_bundle`]) is a JWKS whose `use: jwt-svid` keys are kept
//!   (its `x509-svid` authorities are not JWT keys), with its `spiffe_refresh_hint`.
//! - [`IssuerKeys`]: one issuer's source, its cached [`KeySet`] and refresh bookkeeping
//!   (one refresh in flight at a time, on-demand refreshes rate-limited by the injected
//!   clock).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use lanyard::clock::Clock;
use reqwest::Url;
use serde::Deserialize;

use super::IssuerConfigError;
use crate::config::{Algorithm, IssuerConfig, JwksSource, LimitsConfig, is_loopback_host};
use crate::metrics::Metrics;

/// Timeout for one discovery or JWKS request (connect, headers and body).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Most keys accepted in one JWKS document.
pub const MAX_JWKS_KEYS: usize = 64;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// How often a JWKS file is checked for changes, at most (the issuer's
/// `refresh_interval_seconds` applies when it is shorter).
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The longest `kid` echoed in a log line.
const MAX_LOGGED_KID: usize = 64;

/// The key family of a JWK, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `kty: RSA` — RS256/384/512, PS256/384/512.
    Rsa,
    /// `kty: EC`, `crv: P-256` — ES256.
    EcP256,
    /// `kty: EC`, `crv: P-384` — ES384.
    EcP384,
    /// `kty: EC`, `crv: P-521` — ES512.
    EcP521,
    /// `kty: OKP`, `crv: Ed25519` — EdDSA.
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind may verify `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyKind::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyKind::EcP256, Algorithm::ES256)
                | (KeyKind::EcP384, Algorithm::ES384)
                | (KeyKind::EcP521, Algorithm::ES512)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// The JOSE name of an algorithm (`RS256`, ..., `EdDSA`).
pub fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::ES512 => "ES512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// A public key from a JWKS, ready to verify signatures.
#[derive(Clone)]
pub struct VerificationKey {
    /// The key's `kid`, if it has one.
    pub kid: Option<String>,
    /// Its family.
    pub kind: KeyKind,
    /// The key's own `alg`, if it names one; the key then verifies only that algorithm.
    pub alg: Option<String>,
    /// The key parsed once for each algorithm it may verify (an RSA key: up to six), so
    /// a verification does no key parsing.
    parsed: Arc<[(Algorithm, ParsedPublicKey)]>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// Whether this key may verify a token signed with `alg`: its family fits, and its own
    /// `alg` (if any) is exactly `alg`.
    pub fn usable_for(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.as_deref().is_none_or(|a| a == alg_name(alg))
    }

    /// Whether `signature` over `message` verifies with this key under `alg`. False when
    /// the key may not verify `alg` at all.
    pub fn verifies(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        self.parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }
}

/// How aws-lc-rs verifies a JOSE `alg`: RSA keys are built from their components, the
/// others from their public key bytes (JWS ECDSA signatures are the fixed-width `r || s`).
enum Verifier {
    Rsa(&'static signature::RsaParameters),
    Bytes(&'static dyn VerificationAlgorithm),
}

fn verifier(alg: Algorithm) -> Verifier {
    match alg {
        Algorithm::RS256 => Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Verifier::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Verifier::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 => Verifier::Bytes(&signature::ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Verifier::Bytes(&signature::ECDSA_P384_SHA384_FIXED),
        Algorithm::ES512 => Verifier::Bytes(&signature::ECDSA_P521_SHA512_FIXED),
        Algorithm::EdDSA => Verifier::Bytes(&signature::ED25519),
    }
}

const ALL_ALGORITHMS: [Algorithm; 10] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::ES512,
    Algorithm::EdDSA,
];

/// Longest `spiffe_refresh_hint` honoured as written, in seconds (a day); the refresh period
/// is further bounded by the issuer's `refresh_interval_seconds` ([`refresh_period`]).
pub const MAX_REFRESH_HINT_SECONDS: u64 = 24 * 60 * 60;

/// Which keys of a document are the issuer's JWT keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyUse {
    /// An OIDC JWKS: keys with `use: sig` or no `use`.
    Oidc,
    /// A SPIFFE trust bundle: keys with `use: jwt-svid` and a `kid` (SPIFFE Trust Domain and
    /// Bundle, section 4.2); `x509-svid` authorities are not JWT keys.
    JwtSvid,
}

/// A parsed JWKS: the usable asymmetric keys of one issuer.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
    /// A SPIFFE bundle's `spiffe_refresh_hint`, in seconds, at most
    /// [`MAX_REFRESH_HINT_SECONDS`].
    refresh_hint: Option<u64>,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
    #[serde(default)]
    spiffe_refresh_hint: Option<serde_json::Value>,
    #[serde(default)]
    spiffe_sequence: Option<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys the broker cannot or must not use
    /// (symmetric `oct` keys, `use: enc`, unknown types or curves, RSA below 2048 bits) are
    /// skipped with a log line that names the issuer and `kid`, never key material. Fails when
    /// the document is not a JWKS, holds more than [`MAX_JWKS_KEYS`] keys, or no usable key.
    pub fn parse(bytes: &[u8], issuer: &str, origin: &str) -> Result<Self, JwksError> {
        Self::parse_as(bytes, issuer, origin, KeyUse::Oidc)
    }

    /// Parses a SPIFFE trust bundle (SPIFFE Trust Domain and Bundle, section 4): a JWKS whose
    /// keys carry `use`. Keeps the `use: jwt-svid` keys that have a `kid` and that the broker
    /// can verify with (as [`KeySet::parse`]); skips `x509-svid` authorities quietly and
    /// other keys with a log line. `spiffe_sequence` and `spiffe_refresh_hint`, when present,
    /// must be non-negative integers; the hint is kept, capped at
    /// [`MAX_REFRESH_HINT_SECONDS`]. Fails as [`KeySet::parse`] does, and when no
    /// `jwt-svid` key is usable.
    pub fn parse_bundle(bytes: &[u8], issuer: &str, origin: &str) -> Result<Self, JwksError> {
        Self::parse_as(bytes, issuer, origin, KeyUse::JwtSvid)
    }

    /// The bundle's `spiffe_refresh_hint` in seconds (capped), if it had one.
    pub fn refresh_hint(&self) -> Option<u64> {
        self.refresh_hint
    }

    fn parse_as(
        bytes: &[u8],
        issuer: &str,
        origin: &str,
        usage: KeyUse,
    ) -> Result<Self, JwksError> {
        let invalid = |reason: String| JwksError::Invalid {
            origin: origin.to_owned(),
            reason,
        };
        let doc: JwksDocument = serde_json::from_slice(bytes).map_err(|e| {
            invalid(format!(
                "not a JWKS document (expected {{\"keys\": [...]}}): {}",
                bounded(&e.to_string(), MAX_REASON_CHARS)
            ))
        })?;
        if doc.keys.len() > MAX_JWKS_KEYS {
            return Err(invalid(format!(
                "{} keys, more than the {MAX_JWKS_KEYS} accepted",
                doc.keys.len()
            )));
        }
        let mut refresh_hint = None;
        if usage == KeyUse::JwtSvid {
            for (name, value) in [
                ("spiffe_refresh_hint", &doc.spiffe_refresh_hint),
                ("spiffe_sequence", &doc.spiffe_sequence),
            ] {
                let Some(value) = value else { continue };
                let Some(n) = value.as_u64() else {
                    return Err(invalid(format!("`{name}` is not a non-negative integer")));
                };
                if name == "spiffe_refresh_hint" {
                    refresh_hint = Some(n.min(MAX_REFRESH_HINT_SECONDS));
                }
            }
        }
        let total = doc.keys.len();
        let mut keys = Vec::with_capacity(total);
        for raw in doc.keys {
            if usage == KeyUse::JwtSvid {
                let use_ = raw.get("use").and_then(|v| v.as_str());
                let kid = raw.get("kid").and_then(|v| v.as_str());
                match (use_, kid) {
                    (Some("jwt-svid"), Some(k)) if !k.is_empty() => {}
                    (Some("x509-svid"), _) => continue,
                    (Some("jwt-svid"), _) => {
                        tracing::warn!(issuer, "skipping bundle key: a jwt-svid key without `kid`");
                        continue;
                    }
                    _ => {
                        tracing::warn!(
                            issuer,
                            kid = %kid.map(short).unwrap_or("-"),
                            "skipping bundle key: its `use` is not \"jwt-svid\" or \"x509-svid\""
                        );
                        continue;
                    }
                }
            }
            match parse_key(raw, usage) {
                Ok(k) => keys.push(k),
                Err((kid, reason)) => tracing::warn!(
                    issuer,
                    kid = %kid.as_deref().map(short).unwrap_or("-"),
                    "skipping JWKS key: {reason}"
                ),
            }
        }
        if keys.is_empty() {
            let what = match usage {
                KeyUse::Oidc => "signing key",
                KeyUse::JwtSvid => "jwt-svid key",
            };
            return Err(invalid(format!(
                "none of its {total} keys is a usable {what} (RSA >= {MIN_RSA_BITS} bits, EC P-256/P-384/P-521, Ed25519)"
            )));
        }
        Ok(Self { keys, refresh_hint })
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no usable keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every key.
    pub fn keys(&self) -> &[VerificationKey] {
        &self.keys
    }

    /// Keys whose `kid` is `kid`.
    pub fn with_kid<'a>(&'a self, kid: &'a str) -> impl Iterator<Item = &'a VerificationKey> {
        self.keys
            .iter()
            .filter(move |k| k.kid.as_deref() == Some(kid))
    }

    /// Keys usable for `alg`.
    pub fn usable_for(&self, alg: Algorithm) -> impl Iterator<Item = &VerificationKey> {
        self.keys.iter().filter(move |k| k.usable_for(alg))
    }
}

fn short(s: &str) -> &str {
    match s.char_indices().nth(MAX_LOGGED_KID) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Longest parser message (serde's, which quotes the offending value) kept in an error.
const MAX_REASON_CHARS: usize = 200;

/// `text` for an error message about a document the broker fetched: control characters
/// escaped and at most `max` characters, with `…` when cut, so a hostile document cannot make
/// a log line as long as itself.
fn bounded(text: &str, max: usize) -> String {
    // The bound is on what is written: a control character is written escaped (`\u{7f}`,
    // six bytes), so a run of them must not multiply the length (found by the
    // `oidc_discovery` fuzz target: 100 DELs made a 600-byte echo).
    let mut out = String::new();
    for c in text.chars() {
        let len_before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(len_before);
            out.push('…');
            break;
        }
    }
    out
}

/// Parses one JWK; on refusal returns its `kid` (for the log line) and why.
fn parse_key(
    raw: serde_json::Value,
    usage: KeyUse,
) -> Result<VerificationKey, (Option<String>, String)> {
    let kid = raw.get("kid").and_then(|v| v.as_str()).map(str::to_owned);
    let fail = |reason: &str| (kid.clone(), reason.to_owned());
    let kty = raw.get("kty").and_then(|v| v.as_str()).unwrap_or("");
    if kty == "oct" {
        return Err(fail(
            "symmetric key (kty oct) refused: JWT issuers must publish asymmetric keys",
        ));
    }
    if let Some(u) = raw.get("use")
        && u.as_str()
            != Some(if usage == KeyUse::JwtSvid {
                "jwt-svid"
            } else {
                "sig"
            })
    {
        return Err(fail("not a signing key (use is not \"sig\")"));
    }
    let alg = match raw.get("alg") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(fail("`alg` is not a string")),
    };
    let jwk: Jwk = serde_json::from_value(raw)
        .map_err(|_| fail("unsupported or malformed key (kty, crv or parameters)"))?;
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = base64_len(&p.n).ok_or_else(|| fail("RSA modulus is not base64url"))?;
            if n < MIN_RSA_BITS {
                return Err(fail("RSA key shorter than 2048 bits"));
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            EllipticCurve::P521 => KeyKind::EcP521,
            _ => return Err(fail("unsupported EC curve (P-256, P-384 and P-521 are)")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            _ => return Err(fail("unsupported OKP curve (Ed25519 is)")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err(fail("symmetric key refused"));
        }
    };
    let bad = || fail("key parameters do not decode");
    let b64 = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .map_err(|_| bad())
    };
    // The SEC1 uncompressed point (EC) or the raw key (Ed25519); RSA keys are built from
    // their components below.
    let point = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => {
            let (x, y) = (b64(&p.x)?, b64(&p.y)?);
            let width = match kind {
                KeyKind::EcP256 => 32,
                KeyKind::EcP384 => 48,
                _ => 66,
            };
            if x.len() != width || y.len() != width {
                return Err(bad());
            }
            [&[4u8][..], &x, &y].concat()
        }
        AlgorithmParameters::OctetKeyPair(p) => b64(&p.x)?,
        _ => Vec::new(),
    };
    let mut parsed = Vec::new();
    for a in ALL_ALGORITHMS {
        if !kind.fits(a) || alg.as_deref().is_some_and(|own| own != alg_name(a)) {
            continue;
        }
        let key = match (&jwk.algorithm, verifier(a)) {
            (AlgorithmParameters::RSA(p), Verifier::Rsa(params)) => {
                signature::RsaPublicKeyComponents {
                    n: b64(&p.n)?,
                    e: b64(&p.e)?,
                }
                .to_parsed_public_key(params)
            }
            (_, Verifier::Bytes(algorithm)) => ParsedPublicKey::new(algorithm, &point),
            // `kind.fits(a)` pairs RSA keys with RSA algorithms only.
            (_, Verifier::Rsa(_)) => return Err(bad()),
        }
        .map_err(|_| bad())?;
        parsed.push((a, key));
    }
    Ok(VerificationKey {
        kid,
        kind,
        alg,
        parsed: parsed.into(),
    })
}

/// Bit length of a base64url big-endian integer, without leading zero bytes.
fn base64_len(b64: &str) -> Option<usize> {
    let bytes = URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')).ok()?;
    let first = bytes.iter().position(|&b| b != 0)?;
    let lead = bytes[first].leading_zeros() as usize;
    Some((bytes.len() - first) * 8 - lead)
}

/// Why a JWKS could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The request failed (connection, TLS, timeout).
    #[error("fetching {url}: {reason}")]
    Fetch {
        /// What was fetched.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The server answered with a non-success status.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// What was fetched.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The document is larger than `limits.max_jwks_bytes`.
    #[error(
        "{origin} is larger than {limit} bytes; raise `limits.max_jwks_bytes` if it is legitimate"
    )]
    TooLarge {
        /// URL or file.
        origin: String,
        /// The limit.
        limit: usize,
    },
    /// The document is not a usable discovery document or JWKS.
    #[error("{origin}: {reason}")]
    Invalid {
        /// URL or file.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A JWKS file could not be read.
    #[error("reading JWKS file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// A URL that would fetch keys without TLS from a non-loopback host.
    #[error("{0}")]
    Insecure(String),
}

/// Checks that `url` is `https`, or plain `http` to a loopback host.
pub fn check_transport(url: &str, what: &str) -> Result<Url, String> {
    // A discovered URL comes from the issuer: echo a bounded part of it.
    let parsed = Url::parse(url)
        .map_err(|e| format!("{what} `{}` is not a valid URL: {e}", bounded(url, 100)))?;
    let url = bounded(url, 100);
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if is_loopback_host(&parsed) => Ok(parsed),
        "http" => Err(format!(
            "{what} `{url}` uses plain http to a non-loopback host, so keys could be swapped in transit; use https (plain http is allowed only for 127.0.0.1, ::1 and localhost)"
        )),
        other => Err(format!(
            "{what} `{url}` has scheme `{}`; use an https URL",
            bounded(other, 16)
        )),
    }
}

/// Where one issuer's keys come from, resolved from its configuration.
#[derive(Debug, Clone)]
enum Source {
    /// `<issuer>/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery(Url),
    /// A fixed JWKS URL.
    Url(Url),
    /// A file.
    File(PathBuf),
}

#[derive(Debug, Default)]
struct RefreshState {
    /// When the last refresh (successful or not) started, by the injected clock.
    last_attempt: Option<SystemTime>,
    /// SHA-256 of the last JWKS file content loaded, to log changes.
    file_digest: Option<Vec<u8>>,
}

/// One issuer's keys: its source, the last good [`KeySet`] and refresh bookkeeping.
#[derive(Debug)]
pub struct IssuerKeys {
    issuer: String,
    source: Source,
    /// The source is a SPIFFE trust bundle (`spiffe_trust_domain` is set).
    bundle: bool,
    client: Option<reqwest::Client>,
    max_bytes: usize,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    current: RwLock<Option<Arc<KeySet>>>,
    refresh: tokio::sync::Mutex<RefreshState>,
    /// Incremented when a refresh finishes, so waiters can tell one happened meanwhile.
    generation: AtomicU64,
}

impl IssuerKeys {
    /// Resolves the issuer's key source and, for a JWKS file, loads it. Fails naming the
    /// issuer when a URL is unusable or insecure, the CA file or the JWKS file cannot be read.
    pub fn new(
        cfg: &IssuerConfig,
        limits: &LimitsConfig,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Result<Self, IssuerConfigError> {
        let ctx = |reason: String| IssuerConfigError::KeySource {
            issuer: cfg.issuer.clone(),
            reason,
        };
        // An issuer that looks like a URL must not be plain http to a remote host, whatever
        // the key source: it names (and for discovery, locates) the trust anchor.
        if cfg.issuer.starts_with("http://") || matches!(cfg.jwks, JwksSource::Discovery) {
            check_transport(&cfg.issuer, "issuer URL").map_err(ctx)?;
        }
        let bundle = cfg.spiffe_trust_domain.is_some();
        if bundle && cfg.jwks == JwksSource::Discovery {
            return Err(ctx(
                "a SPIFFE trust domain's keys come from its trust bundle, not OIDC discovery; \
                 set `jwks: {file: ...}` (a bundle file) or `jwks: {url: ...}` (its bundle \
                 endpoint, https_web profile)"
                    .into(),
            ));
        }
        let source = match &cfg.jwks {
            JwksSource::Discovery => {
                let base = cfg.issuer.trim_end_matches('/');
                let url = format!("{base}/.well-known/openid-configuration");
                Source::Discovery(check_transport(&url, "discovery URL").map_err(ctx)?)
            }
            JwksSource::Url(u) => Source::Url(check_transport(u, "JWKS URL").map_err(ctx)?),
            JwksSource::File(p) => Source::File(p.clone()),
        };
        let client = match &source {
            Source::File(_) => None,
            Source::Discovery(u) | Source::Url(u) => {
                Some(build_client(u, cfg.ca_file.as_deref()).map_err(ctx)?)
            }
        };
        let keys = Self {
            issuer: cfg.issuer.clone(),
            source,
            bundle,
            client,
            max_bytes: limits.max_jwks_bytes,
            refresh_interval: Duration::from_secs(cfg.refresh_interval_seconds.max(1)),
            min_refresh_interval: Duration::from_secs(cfg.min_refresh_interval_seconds),
            clock,
            metrics,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(RefreshState::default()),
            generation: AtomicU64::new(0),
        };
        if let Source::File(path) = &keys.source {
            let (set, digest) =
                load_file(path, keys.max_bytes, &keys.issuer, bundle).map_err(|e| {
                    ctx(format!(
                        "{e}; check the `jwks.file` path and that the broker can read it"
                    ))
                })?;
            keys.store(set);
            // `new` is synchronous and nothing else can hold the lock yet.
            if let Ok(mut st) = keys.refresh.try_lock() {
                st.file_digest = Some(digest);
            }
        }
        Ok(keys)
    }

    /// The issuer, as configured.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The last good key set, if any was ever loaded.
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn store(&self, set: KeySet) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(set));
    }

    /// Refreshes now (waiting for a refresh already in flight, then doing its own). On
    /// failure the last good key set is kept.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        let mut st = self.refresh.lock().await;
        self.refresh_locked(&mut st).await
    }

    /// An on-demand refresh (for an unknown `kid` or an empty cache): at most one in flight;
    /// callers that waited for one in flight use its result; and none starts sooner than
    /// `min_refresh_interval_seconds` after the previous attempt. Returns whether a refresh
    /// finished (by this caller or the one it waited for).
    pub async fn refresh_on_demand(&self) -> bool {
        let seen = self.generation.load(Ordering::SeqCst);
        let mut st = self.refresh.lock().await;
        if self.generation.load(Ordering::SeqCst) != seen {
            return true;
        }
        if let Some(last) = st.last_attempt {
            // A clock that went backwards does not block refreshes.
            let since = self
                .clock
                .now()
                .duration_since(last)
                .unwrap_or(Duration::MAX);
            if since < self.min_refresh_interval {
                tracing::debug!(issuer = %self.issuer, "JWKS refresh rate-limited");
                return false;
            }
        }
        let _ = self.refresh_locked(&mut st).await;
        true
    }

    async fn refresh_locked(&self, st: &mut RefreshState) -> Result<(), JwksError> {
        st.last_attempt = Some(self.clock.now());
        let result = self.fetch(st).await;
        let label = match &result {
            Ok(set) => {
                tracing::debug!(issuer = %self.issuer, keys = set.len(), "JWKS refreshed");
                "ok"
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed; keeping the last good keys");
                "error"
            }
        };
        self.metrics
            .jwks_refresh
            .with_label_values(&[self.issuer.as_str(), label])
            .inc();
        self.generation.fetch_add(1, Ordering::SeqCst);
        result.map(|set| self.store(set))
    }

    async fn fetch(&self, st: &mut RefreshState) -> Result<KeySet, JwksError> {
        match &self.source {
            Source::File(path) => {
                let path = path.clone();
                let (max, issuer, bundle) = (self.max_bytes, self.issuer.clone(), self.bundle);
                let (set, digest) =
                    tokio::task::spawn_blocking(move || load_file(&path, max, &issuer, bundle))
                        .await
                        .map_err(|e| JwksError::File {
                            path: self.origin_name(),
                            reason: e.to_string(),
                        })??;
                if st.file_digest.as_ref().is_some_and(|d| *d != digest) {
                    tracing::info!(issuer = %self.issuer, keys = set.len(), "JWKS file changed; reloaded");
                }
                st.file_digest = Some(digest);
                Ok(set)
            }
            Source::Url(url) => {
                let body = self.get(url).await?;
                if self.bundle {
                    KeySet::parse_bundle(&body, &self.issuer, url.as_str())
                } else {
                    KeySet::parse(&body, &self.issuer, url.as_str())
                }
            }
            Source::Discovery(url) => {
                let body = self.get(url).await?;
                let jwks_uri = parse_discovery(&body, &self.issuer, url.as_str())?;
                let jwks_url = check_transport(&jwks_uri, "discovered jwks_uri")
                    .map_err(JwksError::Insecure)?;
                let body = self.get(&jwks_url).await?;
                KeySet::parse(&body, &self.issuer, jwks_url.as_str())
            }
        }
    }

    fn origin_name(&self) -> String {
        match &self.source {
            Source::File(p) => p.display().to_string(),
            Source::Url(u) | Source::Discovery(u) => u.to_string(),
        }
    }

    /// GET with the body read in chunks and capped at `max_jwks_bytes`.
    async fn get(&self, url: &Url) -> Result<Vec<u8>, JwksError> {
        let Some(client) = &self.client else {
            return Err(JwksError::Fetch {
                url: url.to_string(),
                reason: "no HTTP client for a file source".into(),
            });
        };
        let fetch_err = |e: reqwest::Error| JwksError::Fetch {
            url: url.to_string(),
            reason: error_chain(&e.without_url()),
        };
        let mut resp = client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(fetch_err)?;
        if !resp.status().is_success() {
            return Err(JwksError::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        let too_large = || JwksError::TooLarge {
            origin: url.to_string(),
            limit: self.max_bytes,
        };
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(fetch_err)? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Runs the background refresh for this issuer until dropped: every
    /// `refresh_interval_seconds` (JWKS files: every [`FILE_CHECK_INTERVAL`] at most; a SPIFFE
    /// bundle: per its `spiffe_refresh_hint`, bounded by [`refresh_period`]), sooner
    /// (`min_refresh_interval_seconds`, at least 1 s) after a failure, and at once if no keys
    /// are cached yet.
    pub async fn run_refresh(&self) {
        let period = || {
            let hinted = refresh_period(
                self.refresh_interval,
                self.min_refresh_interval,
                self.keys().and_then(|k| k.refresh_hint()),
            );
            match self.source {
                Source::File(_) => hinted.min(FILE_CHECK_INTERVAL),
                _ => hinted,
            }
        };
        let retry = || {
            self.min_refresh_interval
                .max(Duration::from_secs(1))
                .min(period())
        };
        let mut wait = if self.keys().is_none() {
            Duration::ZERO
        } else {
            period()
        };
        loop {
            tokio::time::sleep(wait).await;
            wait = match self.refresh().await {
                Ok(()) => period(),
                Err(_) => retry(),
            };
        }
    }
}

/// The background refresh period of an issuer: `configured` (`refresh_interval_seconds`),
/// or a SPIFFE bundle's `spiffe_refresh_hint` when it is shorter — but never below `min`
/// (`min_refresh_interval_seconds`) or 1 s, so a bundle cannot make the broker poll its
/// endpoint without pause, nor above `configured`, so a long hint cannot keep a revoked key
/// trusted longer than the operator chose.
pub fn refresh_period(configured: Duration, min: Duration, hint: Option<u64>) -> Duration {
    let floor = min.max(Duration::from_secs(1)).min(configured);
    match hint {
        Some(h) => Duration::from_secs(h).clamp(floor, configured),
        None => configured,
    }
}

/// Reads an OpenID discovery document fetched from `origin` for `issuer`: its `issuer` (when
/// present) must be `issuer` exactly; returns its `jwks_uri`, not yet checked for transport
/// ([`check_transport`] does that). Public for the `oidc_discovery` fuzz target only.
#[doc(hidden)]
pub fn parse_discovery(body: &[u8], issuer: &str, origin: &str) -> Result<String, JwksError> {
    #[derive(Deserialize)]
    struct Discovery {
        issuer: Option<String>,
        jwks_uri: Option<String>,
    }
    let invalid = |reason: String| JwksError::Invalid {
        origin: origin.to_owned(),
        reason,
    };
    // JSON is UTF-8 throughout; serde_json does not check the strings it skips (found by the
    // `oidc_discovery` fuzz target: a byte 0xA7 in an unknown field was accepted).
    let body = std::str::from_utf8(body).map_err(|e| {
        invalid(format!(
            "not an OpenID discovery document: not UTF-8 ({})",
            bounded(&e.to_string(), MAX_REASON_CHARS)
        ))
    })?;
    let doc: Discovery = serde_json::from_str(body).map_err(|e| {
        invalid(format!(
            "not an OpenID discovery document: {}",
            bounded(&e.to_string(), MAX_REASON_CHARS)
        ))
    })?;
    if let Some(iss) = &doc.issuer
        && iss != issuer
    {
        return Err(invalid(format!(
            "names issuer `{}`, not the configured `{issuer}`; the configured issuer must match exactly",
            bounded(iss, MAX_LOGGED_KID)
        )));
    }
    doc.jwks_uri
        .ok_or_else(|| invalid("has no `jwks_uri`".into()))
}

/// Reads a JWKS file (bounded) and returns the key set and the SHA-256 of the content.
fn load_file(
    path: &Path,
    max: usize,
    issuer: &str,
    bundle: bool,
) -> Result<(KeySet, Vec<u8>), JwksError> {
    use std::io::Read as _;
    let origin = path.display().to_string();
    let io_err = |e: std::io::Error| JwksError::File {
        path: origin.clone(),
        reason: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut buf = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    if buf.len() > max {
        return Err(JwksError::TooLarge { origin, limit: max });
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &buf)
        .as_ref()
        .to_vec();
    let set = if bundle {
        KeySet::parse_bundle(&buf, issuer, &origin)?
    } else {
        KeySet::parse(&buf, issuer, &origin)?
    };
    Ok((set, digest))
}

fn build_client(url: &Url, ca_file: Option<&Path>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            // Follow a few redirects, never to a URL the broker would refuse to configure.
            if attempt.previous().len() >= 3 {
                attempt.error("too many redirects")
            } else if check_transport(attempt.url().as_str(), "redirect target").is_err() {
                attempt.error("redirect to plain http on a non-loopback host")
            } else {
                attempt.follow()
            }
        }))
        .user_agent(concat!("lanyard-broker/", env!("CARGO_PKG_VERSION")));
    if url.scheme() == "https" {
        builder = builder.https_only(true);
    }
    if is_loopback_host(url) {
        builder = builder.no_proxy();
    }
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| format!("cannot read `ca_file` {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            format!(
                "`ca_file` {} is not a PEM certificate bundle: {e}",
                ca.display()
            )
        })?;
        if certs.is_empty() {
            return Err(format!(
                "`ca_file` {} holds no PEM certificate",
                ca.display()
            ));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTPS client: {}", error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use lanyard::clock::ManualClock;
    use lanyard_test_support::OidcIssuer;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn cfg(issuer: &str, jwks: JwksSource) -> IssuerConfig {
        IssuerConfig {
            issuer: issuer.to_owned(),
            audiences: vec!["aud".into()],
            jwks,
            ca_file: None,
            algorithms: Some(vec![Algorithm::RS256]),
            leeway_seconds: 30,
            refresh_interval_seconds: 300,
            min_refresh_interval_seconds: 10,
            spiffe_trust_domain: None,
            claim_profile: None,
            claim_types: Default::default(),
        }
    }

    fn issuer_keys(
        cfg: &IssuerConfig,
        max_jwks_bytes: usize,
    ) -> Result<IssuerKeys, IssuerConfigError> {
        let limits = LimitsConfig {
            max_jwks_bytes,
            ..LimitsConfig::default()
        };
        IssuerKeys::new(
            cfg,
            &limits,
            Arc::new(ManualClock::at_unix(1_800_000_000)),
            Metrics::new(),
        )
    }

    async fn real_jwks() -> serde_json::Value {
        OidcIssuer::start().await.jwks_json()
    }

    #[tokio::test]
    async fn symmetric_keys_are_skipped() {
        let mut doc = real_jwks().await;
        let keys = doc["keys"].as_array_mut().expect("keys");
        keys.push(json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"}));
        let set = KeySet::parse(doc.to_string().as_bytes(), "iss", "test").expect("parses");
        assert_eq!(set.len(), 3);
        assert_eq!(set.with_kid("hmac").count(), 0);
        // A JWKS of symmetric keys only has nothing usable.
        let only_oct = json!({"keys": [{"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]});
        assert!(matches!(
            KeySet::parse(only_oct.to_string().as_bytes(), "iss", "test"),
            Err(JwksError::Invalid { .. })
        ));
    }

    #[tokio::test]
    async fn keys_are_classified_and_alg_pinned() {
        let set =
            KeySet::parse(real_jwks().await.to_string().as_bytes(), "iss", "test").expect("parses");
        let kinds: Vec<KeyKind> = set.keys().iter().map(|k| k.kind).collect();
        assert_eq!(kinds, [KeyKind::Rsa, KeyKind::EcP256, KeyKind::Ed25519]);
        let rsa = &set.keys()[0];
        assert!(rsa.usable_for(Algorithm::RS256));
        // The JWK says RS256, so it must not verify PS256 even though the family fits.
        assert!(!rsa.usable_for(Algorithm::PS256));
        assert!(!set.keys()[1].usable_for(Algorithm::ES384));
    }

    #[tokio::test]
    async fn encryption_keys_are_skipped() {
        let mut doc = real_jwks().await;
        doc["keys"][0]["use"] = json!("enc");
        let set = KeySet::parse(doc.to_string().as_bytes(), "iss", "test").expect("parses");
        assert_eq!(set.len(), 2);
        assert!(set.keys().iter().all(|k| k.kind != KeyKind::Rsa));
    }

    #[test]
    fn short_rsa_keys_are_skipped() {
        use base64::Engine as _;
        let mut n = vec![0xffu8; 128]; // 1024 bits
        n[127] = 0x01;
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&n);
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "short", "n": n, "e": "AQAB"},
        ]});
        assert!(KeySet::parse(doc.to_string().as_bytes(), "iss", "test").is_err());
        assert_eq!(base64_len("AQAB"), Some(17));
    }

    #[test]
    fn not_a_jwks_is_invalid() {
        for body in [&b"{}"[..], b"[]", b"<html>", b"{\"keys\": 5}"] {
            assert!(matches!(
                KeySet::parse(body, "iss", "test"),
                Err(JwksError::Invalid { .. })
            ));
        }
        let many = json!({"keys": vec![json!({"kty": "oct"}); MAX_JWKS_KEYS + 1]});
        assert!(matches!(
            KeySet::parse(many.to_string().as_bytes(), "iss", "test"),
            Err(JwksError::Invalid { reason, .. }) if reason.contains("more than")
        ));
    }

    #[tokio::test]
    async fn url_source_fetches_and_counts_metrics() {
        let issuer = OidcIssuer::start().await;
        let keys = issuer_keys(
            &cfg(&issuer.url(), JwksSource::Url(issuer.jwks_url())),
            256 * 1024,
        )
        .expect("config ok");
        assert!(keys.keys().is_none());
        keys.refresh().await.expect("fetch");
        assert_eq!(keys.keys().map(|k| k.len()), Some(3));
        assert_eq!(issuer.discovery_fetches(), 0);
        assert_eq!(
            keys.metrics
                .jwks_refresh
                .with_label_values(&[issuer.url().as_str(), "ok"])
                .get(),
            1
        );
    }

    /// A one-shot HTTP server that answers with a chunked body of `total` bytes and no
    /// Content-Length, so only the streaming cap can stop it.
    async fn chunked_server(total: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut req = [0u8; 1024];
            let _ = sock.read(&mut req).await;
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let chunk = vec![b' '; 4096];
            let mut sent = 0;
            while sent < total {
                let head = format!("{:x}\r\n", chunk.len());
                if sock.write_all(head.as_bytes()).await.is_err()
                    || sock.write_all(&chunk).await.is_err()
                    || sock.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
                sent += chunk.len();
            }
            let _ = sock.write_all(b"0\r\n\r\n").await;
        });
        format!("http://{addr}/jwks")
    }

    #[tokio::test]
    async fn streamed_body_above_the_cap_is_refused_not_truncated() {
        let url = chunked_server(1 << 20).await;
        let keys = issuer_keys(
            &cfg("https://issuer.example.com", JwksSource::Url(url)),
            64 * 1024,
        )
        .expect("config ok");
        let err = keys.refresh().await.expect_err("too large");
        assert!(
            matches!(err, JwksError::TooLarge { limit: 65536, .. }),
            "{err}"
        );
        assert!(keys.keys().is_none());
    }

    #[tokio::test]
    async fn jwks_file_above_the_cap_is_refused_at_new() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, real_jwks().await.to_string()).expect("write");
        let err = issuer_keys(
            &cfg("https://issuer.example.com", JwksSource::File(path)),
            256,
        )
        .expect_err("too large")
        .to_string();
        assert!(err.contains("larger than 256 bytes"), "{err}");
    }

    #[test]
    fn unreadable_ca_file_is_refused_at_new() {
        let mut c = cfg("https://issuer.example.com", JwksSource::Discovery);
        c.ca_file = Some("no/such/ca.pem".into());
        let err = issuer_keys(&c, 1024).expect_err("missing CA").to_string();
        assert!(
            err.contains("https://issuer.example.com") && err.contains("no/such/ca.pem"),
            "{err}"
        );
    }

    /// Found while writing the `oidc_discovery` fuzz target (its short-error property): a
    /// discovery document (or JWKS) holding a long value where another type was expected, or
    /// naming a long issuer, made an error message as long as the document; these messages are
    /// logged on every refresh.
    #[test]
    fn hostile_discovery_documents_get_short_errors() {
        let long = "x".repeat(100_000);
        let origin = "https://issuer.example/.well-known/openid-configuration";
        for body in [
            json!({"issuer": long, "jwks_uri": "https://issuer.example/jwks"}),
            json!({"issuer": ["https://issuer.example", long]}),
            json!({"jwks_uri": {"k": long}}),
            json!({"jwks_uri": [long]}),
            json!(long),
        ] {
            let err = parse_discovery(
                body.to_string().as_bytes(),
                "https://issuer.example",
                origin,
            )
            .expect_err("refused")
            .to_string();
            assert!(
                err.len() < origin.len() + 400,
                "{} bytes: {err:.300}",
                err.len()
            );
            assert!(err.starts_with(origin), "{err:.300}");
        }
        let err = check_transport(
            &format!("ftp://issuer.example/{long}"),
            "discovered jwks_uri",
        )
        .expect_err("refused");
        assert!(err.len() < 400, "{} bytes: {err:.300}", err.len());
        for body in [json!({"keys": long}), json!(long), json!({"keys": [long]})] {
            let err = KeySet::parse(body.to_string().as_bytes(), "iss", "test")
                .expect_err("refused")
                .to_string();
            assert!(err.len() < 400, "{} bytes: {err:.300}", err.len());
        }
    }

    #[tokio::test]
    async fn discovery_naming_another_issuer_is_refused() {
        let issuer = OidcIssuer::start().await;
        // Same server, but configured under a different (loopback) name.
        let other = issuer.url().replace("127.0.0.1", "localhost");
        let keys = issuer_keys(&cfg(&other, JwksSource::Discovery), 256 * 1024).expect("ok");
        let err = keys.refresh().await.expect_err("issuer mismatch");
        assert!(err.to_string().contains("must match exactly"), "{err}");
    }

    #[tokio::test]
    async fn https_discovery_trusts_the_configured_ca_file_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = lanyard_test_support::TestPki::generate(dir.path());
        let issuer = OidcIssuer::start_https(&pki).await;
        assert!(issuer.url().starts_with("https://"));

        let untrusting =
            issuer_keys(&cfg(&issuer.url(), JwksSource::Discovery), 256 * 1024).expect("config ok");
        let err = untrusting.refresh().await.expect_err("unknown CA");
        assert!(matches!(err, JwksError::Fetch { .. }), "{err}");
        assert_eq!(issuer.jwks_fetches(), 0);

        let mut c = cfg(&issuer.url(), JwksSource::Discovery);
        c.ca_file = Some(pki.ca_path());
        let trusting = issuer_keys(&c, 256 * 1024).expect("config ok");
        trusting.refresh().await.expect("fetch over TLS");
        assert_eq!(trusting.keys().map(|k| k.len()), Some(3));
        assert_eq!(issuer.jwks_fetches(), 1);
    }

    #[test]
    fn transport_rules() {
        assert!(check_transport("https://kubernetes.default.svc", "issuer").is_ok());
        assert!(check_transport("http://127.0.0.2:8080", "issuer").is_ok());
        assert!(check_transport("http://LOCALHOST", "issuer").is_ok());
        assert!(check_transport("http://10.0.0.1", "issuer").is_err());
        assert!(check_transport("http://localhost.evil.com", "issuer").is_err());
        assert!(check_transport("ftp://x", "issuer").is_err());
        assert!(check_transport("not a url", "issuer").is_err());
    }

    /// Found by the `oidc_discovery` fuzz target: a `jwks_uri` of control characters was
    /// echoed escaped, six bytes each, past the error's bound.
    #[test]
    fn an_echoed_url_stays_short_whatever_it_holds() {
        for uri in [
            format!("e{}eee:", "\u{7f}".repeat(400)),
            format!("http://10.0.0.1/{}", "\u{1}".repeat(400)),
            format!("https://{}", "é".repeat(400)),
            format!("gopher://{}", "x".repeat(4000)),
        ] {
            let e = check_transport(&uri, "discovered jwks_uri")
                .err()
                .unwrap_or_default();
            assert!(e.len() <= 400, "{} bytes: {e}", e.len());
        }
        assert_eq!(bounded("ab\u{7f}cd", 100), "ab\\u{7f}cd");
        // Invalid UTF-8 in a field the broker does not read is still not JSON.
        let doc = b"{\"jwks_uri\": \"https://i.example/keys\", \"x\": \"\xa7\"}";
        assert!(parse_discovery(doc, "https://i.example", "origin").is_err());
        assert_eq!(bounded(&"\u{7f}".repeat(30), 12), "\\u{7f}\\u{7f}…");
    }

    // --- SPIFFE trust bundles (issue 16) ---

    #[tokio::test]
    async fn a_spiffe_bundle_keeps_its_jwt_svid_keys_only() {
        let td = lanyard_test_support::SpiffeTrustDomain::start("example.org").await;
        let mut doc = td.bundle_json();
        // The test bundle: RSA, P-256, P-384, P-521 jwt-svid keys and an x509-svid authority.
        let set = KeySet::parse_bundle(doc.to_string().as_bytes(), "td", "test").expect("bundle");
        let kinds: Vec<KeyKind> = set.keys().iter().map(|k| k.kind).collect();
        assert_eq!(
            kinds,
            [
                KeyKind::Rsa,
                KeyKind::EcP256,
                KeyKind::EcP384,
                KeyKind::EcP521
            ]
        );
        assert_eq!(set.refresh_hint(), Some(300));
        let rsa = &set.keys()[0];
        for alg in [
            Algorithm::RS256,
            Algorithm::RS512,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            assert!(rsa.usable_for(alg), "{alg:?}");
        }
        assert!(set.keys()[3].usable_for(Algorithm::ES512));
        // A `sig` key, a jwt-svid key without kid, a key without use: none is a bundle's
        // JWT key.
        let keys = doc["keys"].as_array_mut().expect("keys");
        let mut sig = keys[1].clone();
        sig["use"] = json!("sig");
        sig["kid"] = json!("sig-key");
        let mut no_kid = keys[1].clone();
        no_kid.as_object_mut().expect("object").remove("kid");
        let mut no_use = keys[2].clone();
        no_use.as_object_mut().expect("object").remove("use");
        no_use["kid"] = json!("no-use");
        let only_bad = json!({"keys": [sig, no_kid, no_use, keys[4].clone()]});
        let err = KeySet::parse_bundle(only_bad.to_string().as_bytes(), "td", "test")
            .expect_err("no jwt-svid key")
            .to_string();
        assert!(err.contains("usable jwt-svid key"), "{err}");
    }

    #[test]
    fn bundle_refresh_hints_are_bounded_and_typed() {
        let td_key = || {
            let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            )
            .expect("key");
            use aws_lc_rs::signature::KeyPair as _;
            kp.public_key().as_ref().to_vec()
        };
        let point = td_key();
        let doc = |hint: serde_json::Value| {
            let mut d = json!({"keys": [{
                "kty": "EC", "crv": "P-256", "use": "jwt-svid", "kid": "k",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            }], "spiffe_sequence": 7});
            if !hint.is_null() {
                d["spiffe_refresh_hint"] = hint;
            }
            KeySet::parse_bundle(d.to_string().as_bytes(), "td", "test")
        };
        assert_eq!(doc(json!(60)).expect("ok").refresh_hint(), Some(60));
        assert_eq!(
            doc(serde_json::Value::Null).expect("ok").refresh_hint(),
            None
        );
        assert_eq!(
            doc(json!(u64::MAX)).expect("ok").refresh_hint(),
            Some(MAX_REFRESH_HINT_SECONDS)
        );
        for bad in [json!(-1), json!("60"), json!(1.5), json!([60])] {
            let err = doc(bad.clone()).expect_err("refused").to_string();
            assert!(err.contains("spiffe_refresh_hint"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_refresh_period_follows_the_hint_within_the_issuers_bounds() {
        let s = Duration::from_secs;
        // No hint: the configured interval.
        assert_eq!(refresh_period(s(300), s(10), None), s(300));
        // A shorter hint is followed...
        assert_eq!(refresh_period(s(300), s(10), Some(60)), s(60));
        // ...but never below the minimum interval (nor 1 s)...
        assert_eq!(refresh_period(s(300), s(10), Some(0)), s(10));
        assert_eq!(refresh_period(s(300), s(0), Some(0)), s(1));
        // ...and a longer one never stretches the configured interval.
        assert_eq!(refresh_period(s(300), s(10), Some(86_400)), s(300));
        // A configured interval below the minimum wins over both.
        assert_eq!(refresh_period(s(5), s(10), Some(1)), s(5));
    }

    #[test]
    fn hostile_bundles_get_short_errors() {
        let long = "x".repeat(100_000);
        for body in [
            json!({"keys": [], "spiffe_refresh_hint": long}),
            json!({"keys": [{"use": "jwt-svid", "kid": long, "kty": "EC"}]}),
            json!({"keys": [{"use": long, "kid": "k"}], "spiffe_sequence": 1}),
            json!({"keys": long}),
            json!({"keys": [], "spiffe_sequence": {"n": long}}),
            json!(long),
        ] {
            let err = KeySet::parse_bundle(body.to_string().as_bytes(), "td", "test")
                .expect_err("refused")
                .to_string();
            assert!(err.len() < 400, "{} bytes: {err:.300}", err.len());
        }
    }
}
