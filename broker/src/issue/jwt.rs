//! The `jwt` backend: broker-signed tokens, rotating keys, published JWKS.
//!
//! [`KeyRing`] holds the broker's signing keys (ES256 or EdDSA, generated with aws-lc-rs and
//! persisted in the store as PKCS#8). The newest key signs; older keys stay in the JWKS for
//! `overlap_seconds` after a newer key takes over, so tokens they signed keep verifying until
//! they expire. Each key's `kid` is its RFC 7638 JWK thumbprint.
//!
//! With several replicas sharing a store, a key one replica creates becomes known to the
//! others at their next [`KeyRing::rotate_if_due`] (which reloads from the store first), so
//! call it often (e.g. every `reload_interval_seconds`).
//!
//! A role's audience and scope claim arrive parsed at policy load
//! ([`JwtRoleSettings`](crate::policy::settings::jwt::JwtRoleSettings)).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use lanyard::Secret;
use lanyard::clock::{Clock, unix_seconds};
use serde::Serialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::{Backend, BackendError, IssueRequest, Issued};
use crate::authn::AuthnError;
use crate::config::{Algorithm, SigningConfig};
use crate::policy::RoleSettings;
pub use crate::policy::settings::jwt::{KIND, RESERVED_AUDIENCE_PREFIX};
use crate::store::{SigningKeyRecord, Store, StoreError};

/// Largest token [`KeyRing::verify`] accepts before parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why the key ring cannot load or create its keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The configured algorithm cannot sign broker tokens.
    #[error("signing.algorithm {0:?} cannot sign broker tokens; use ES256 or EdDSA")]
    Algorithm(Algorithm),
    /// The store cannot be read or written, or holds a key that does not decode (the message
    /// names its `kid`, never its content).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A signing algorithm the key ring can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyAlg {
    Es256,
    EdDsa,
}

impl KeyAlg {
    fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }

    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::Es256 => jsonwebtoken::Algorithm::ES256,
            Self::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

/// The private half, parsed once at load (signing re-parsing PKCS#8 per token cost more
/// than the signature itself).
enum Signer {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// One loaded key: signing and verifying halves plus its public JWK.
struct SigningKey {
    kid: String,
    alg: KeyAlg,
    created_at: SystemTime,
    signer: Signer,
    /// `base64url({"alg","kid","typ":"JWT"})`, the JWS header every token of this key has.
    header_b64: String,
    decoding: DecodingKey,
    /// The public JWK, `kid`, `use` and `alg` included. Never holds private parts.
    jwk: Value,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

impl SigningKey {
    /// A compact JWS (`header.claims.signature`) over `claims` with this key: ES256 as the
    /// fixed-size `r || s` JWS wants, or Ed25519.
    fn sign<C: Serialize + ?Sized>(&self, claims: &C) -> Result<String, BackendError> {
        let fail = |e: &dyn fmt::Display| {
            BackendError::Internal(format!("signing with key {}: {e}", self.kid))
        };
        let payload = serde_json::to_vec(claims).map_err(|e| fail(&e))?;
        let mut jws = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        jws.push_str(&self.header_b64);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut jws);
        let signature = match &self.signer {
            Signer::Es256(kp) => kp
                .sign(&SystemRandom::new(), jws.as_bytes())
                .map_err(|e| fail(&e))?,
            Signer::EdDsa(kp) => kp.sign(jws.as_bytes()),
        };
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        Ok(jws)
    }

    /// Builds a key from PKCS#8 DER, computing its `kid`.
    fn from_pkcs8(alg: KeyAlg, der: &[u8], created_at: SystemTime) -> Result<Self, String> {
        let (thumb_input, mut jwk, decoding, signer) = match alg {
            KeyAlg::Es256 => {
                let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
                let point = kp.public_key().as_ref();
                // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
                if point.len() != 65 || point[0] != 4 {
                    return Err("unexpected P-256 public key encoding".into());
                }
                let (x, y) = (b64url(&point[1..33]), b64url(&point[33..]));
                let decoding = DecodingKey::from_ec_der(point);
                (
                    format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
                    json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
                    decoding,
                    Signer::Es256(kp),
                )
            }
            KeyAlg::EdDsa => {
                let kp = Ed25519KeyPair::from_pkcs8(der)
                    .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}"))?;
                let x = b64url(kp.public_key().as_ref());
                let decoding = DecodingKey::from_ed_der(kp.public_key().as_ref());
                (
                    format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
                    json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
                    decoding,
                    Signer::EdDsa(kp),
                )
            }
        };
        let kid = b64url(digest::digest(&digest::SHA256, thumb_input.as_bytes()).as_ref());
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("use".into(), json!("sig"));
            obj.insert("alg".into(), json!(alg.name()));
            obj.insert("kid".into(), json!(kid));
        }
        let header = json!({"alg": alg.name(), "kid": kid, "typ": "JWT"});
        let header_b64 = b64url(header.to_string().as_bytes());
        Ok(Self {
            kid,
            alg,
            created_at,
            signer,
            header_b64,
            decoding,
            jwk,
        })
    }

    /// Decodes a stored record, checking that its `kid` is the key's thumbprint.
    fn from_record(rec: &SigningKeyRecord) -> Result<Self, StoreError> {
        let corrupt =
            |what: String| StoreError::Corrupt(format!("signing key {}: {what}", rec.kid));
        let alg = KeyAlg::parse(&rec.alg)
            .ok_or_else(|| corrupt(format!("unknown algorithm `{}`", rec.alg)))?;
        let der = Zeroizing::new(
            STANDARD
                .decode(rec.pkcs8.expose())
                .map_err(|_| corrupt("private key is not valid base64".into()))?,
        );
        let key = Self::from_pkcs8(alg, &der, rec.created_at).map_err(corrupt)?;
        if key.kid != rec.kid {
            return Err(corrupt(format!(
                "kid does not match the key's thumbprint ({})",
                key.kid
            )));
        }
        Ok(key)
    }

    /// Generates a new key.
    fn generate(
        alg: KeyAlg,
        created_at: SystemTime,
    ) -> Result<(Self, SigningKeyRecord), StoreError> {
        let rng = SystemRandom::new();
        let doc = match alg {
            KeyAlg::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng),
            KeyAlg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng),
        }
        .map_err(|_| StoreError::Backend("generating a signing key failed".into()))?;
        let key = Self::from_pkcs8(alg, doc.as_ref(), created_at)
            .map_err(|e| StoreError::Backend(format!("generated key unusable: {e}")))?;
        let rec = SigningKeyRecord {
            kid: key.kid.clone(),
            alg: alg.name().to_owned(),
            pkcs8: Secret::new(STANDARD.encode(doc.as_ref())),
            created_at,
        };
        Ok((key, rec))
    }
}

type Keys = Vec<Arc<SigningKey>>;

/// The broker's signing keys: the newest signs; older ones stay in the JWKS for the overlap.
pub struct KeyRing {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: SigningConfig,
    alg: KeyAlg,
    /// Oldest first; the last one signs.
    keys: ArcSwap<Keys>,
    /// Serialises rotations within this process.
    rotation: tokio::sync::Mutex<()>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.keys.load();
        f.debug_struct("KeyRing")
            .field("alg", &self.alg)
            .field("config", &self.config)
            .field("keys", &keys.iter().map(|k| &k.kid).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn age(now: SystemTime, since: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or(Duration::ZERO)
}

impl KeyRing {
    /// Loads keys from the store, creating the first one if there is none.
    pub async fn load_or_create(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: SigningConfig,
    ) -> Result<Self, KeyError> {
        let alg = match config.algorithm {
            Algorithm::ES256 => KeyAlg::Es256,
            Algorithm::EdDSA => KeyAlg::EdDsa,
            other => return Err(KeyError::Algorithm(other)),
        };
        let ring = Self {
            store,
            clock,
            config,
            alg,
            keys: ArcSwap::from_pointee(Vec::new()),
            rotation: tokio::sync::Mutex::new(()),
        };
        ring.reload().await?;
        if ring.keys.load().is_empty() {
            let _guard = ring.rotation.lock().await;
            let mut keys = (**ring.keys.load()).clone();
            ring.create_key(&mut keys).await?;
            ring.keys.store(Arc::new(keys));
        }
        Ok(ring)
    }

    /// Re-reads the keys from the store (another replica may have rotated).
    async fn reload(&self) -> Result<(), StoreError> {
        let records = self.store.signing_keys().await?;
        let current = self.keys.load_full();
        let mut keys: Keys = Vec::with_capacity(records.len());
        for rec in &records {
            match current
                .iter()
                .find(|k| k.kid == rec.kid && k.created_at == rec.created_at)
            {
                Some(k) => keys.push(k.clone()),
                None => keys.push(Arc::new(SigningKey::from_record(rec)?)),
            }
        }
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.kid.cmp(&b.kid)));
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    async fn create_key(&self, keys: &mut Keys) -> Result<(), StoreError> {
        let (key, rec) = SigningKey::generate(self.alg, self.clock.now())?;
        self.store.insert_signing_key(&rec).await?;
        tracing::info!(kid = %key.kid, alg = key.alg.name(), "created a new signing key");
        keys.push(Arc::new(key));
        Ok(())
    }

    /// Creates a new key when the newest is older than `rotate_after_seconds` (or was made
    /// with another algorithm than the configured one), and drops keys retired longer than
    /// `overlap_seconds`. Returns whether anything changed.
    pub async fn rotate_if_due(&self) -> Result<bool, StoreError> {
        let _guard = self.rotation.lock().await;
        let before: Vec<String> = self.keys.load().iter().map(|k| k.kid.clone()).collect();
        self.reload().await?;
        let now = self.clock.now();
        let mut keys = (**self.keys.load()).clone();

        let due = match keys.last() {
            None => true,
            Some(newest) => {
                newest.alg != self.alg
                    || age(now, newest.created_at)
                        >= Duration::from_secs(self.config.rotate_after_seconds)
            }
        };
        if due {
            self.create_key(&mut keys).await?;
        }

        // A key is retired when the next newer key was created; it is deleted once it has
        // been retired for longer than the overlap.
        let overlap = Duration::from_secs(self.config.overlap_seconds);
        let expired: Vec<String> = keys
            .windows(2)
            .filter(|w| age(now, w[1].created_at) > overlap)
            .map(|w| w[0].kid.clone())
            .collect();
        for kid in &expired {
            self.store.delete_signing_key(kid).await?;
            tracing::info!(%kid, "deleted a retired signing key");
        }
        keys.retain(|k| !expired.contains(&k.kid));
        let after: Vec<String> = keys.iter().map(|k| k.kid.clone()).collect();
        self.keys.store(Arc::new(keys));
        Ok(before != after)
    }

    /// The public JWKS document (`{"keys": [...]}`), newest key first.
    pub fn jwks(&self) -> serde_json::Value {
        let keys = self.keys.load();
        json!({"keys": keys.iter().rev().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }

    /// Signs claims (a JSON object, or a type that serializes to one) with the newest key
    /// (header carries `kid` and `alg`).
    pub fn sign<C: Serialize + ?Sized>(&self, claims: &C) -> Result<String, BackendError> {
        let keys = self.keys.load();
        let key = keys
            .last()
            .ok_or_else(|| BackendError::Internal("no signing key is loaded".into()))?;
        key.sign(claims)
    }

    /// Verifies a token this broker signed (any published key), requiring `iss` and `aud`.
    /// Returns its claims.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<serde_json::Value, crate::authn::AuthnError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthnError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthnError::Malformed(format!("header: {e}")))?;
        let kid = header
            .kid
            .ok_or_else(|| AuthnError::Malformed("header has no `kid`".into()))?;
        let keys = self.keys.load();
        let key = keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(AuthnError::UnknownKey)?;
        if header.alg != key.alg.jwt() {
            return Err(AuthnError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }

        let mut validation = Validation::new(key.alg.jwt());
        // Time is checked below against the injected clock; jsonwebtoken would read the
        // system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.required_spec_claims =
            HashSet::from(["iss".to_owned(), "aud".to_owned(), "exp".to_owned()]);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        let claims = data.claims;

        if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err(AuthnError::UntrustedIssuer);
        }
        let now = unix_seconds(now);
        let number = |name: &str| -> Result<Option<u64>, AuthnError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or_else(|| AuthnError::InvalidClaims(format!("`{name}` is not a number"))),
            }
        };
        let exp = number("exp")?.ok_or_else(|| AuthnError::InvalidClaims("exp".into()))?;
        if now >= exp {
            return Err(AuthnError::Expired);
        }
        if number("nbf")?.is_some_and(|nbf| now < nbf)
            || number("iat")?.is_some_and(|iat| now < iat)
        {
            return Err(AuthnError::NotYetValid);
        }
        Ok(claims)
    }
}

fn map_jwt_error(kind: &ErrorKind) -> AuthnError {
    match kind {
        ErrorKind::InvalidSignature => AuthnError::BadSignature,
        ErrorKind::InvalidIssuer => AuthnError::UntrustedIssuer,
        ErrorKind::InvalidAudience => AuthnError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => AuthnError::InvalidClaims(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => AuthnError::InvalidClaims(c.clone()),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthnError::AlgorithmNotAllowed("algorithm does not match the key".into())
        }
        ErrorKind::ExpiredSignature => AuthnError::Expired,
        ErrorKind::ImmatureSignature => AuthnError::NotYetValid,
        ErrorKind::Base64(_) => AuthnError::Malformed("invalid base64".into()),
        ErrorKind::Json(_) => AuthnError::Malformed("invalid JSON".into()),
        ErrorKind::Utf8(_) => AuthnError::Malformed("invalid UTF-8".into()),
        ErrorKind::InvalidToken => AuthnError::Malformed("not a JWT".into()),
        _ => AuthnError::BadSignature,
    }
}

/// The `jwt` backend.
#[derive(Debug)]
pub struct JwtBackend {
    keys: Arc<KeyRing>,
    issuer_url: String,
}

impl JwtBackend {
    /// A backend signing with `keys`, with `iss` = `issuer_url`.
    pub fn new(keys: Arc<KeyRing>, issuer_url: String) -> Self {
        Self { keys, issuer_url }
    }
}

#[async_trait::async_trait]
impl Backend for JwtBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, BackendError> {
        let RoleSettings::Jwt(settings) = &req.role.settings else {
            return Err(super::settings_mismatch(KIND, req.role));
        };
        let iat = unix_seconds(req.now);
        let exp = iat.saturating_add(req.ttl.as_secs());
        let mut lanyard = serde_json::Map::new();
        lanyard.insert("role".into(), json!(req.role.name));
        if let Some(k) = &req.identity.kubernetes {
            lanyard.insert("namespace".into(), json!(k.namespace));
            lanyard.insert("service_account".into(), json!(k.service_account));
        }
        let mut claims = json!({
            "iss": self.issuer_url,
            "sub": req.identity.subject,
            "aud": settings.audience(),
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": req.lease_id,
            "lanyard": lanyard,
        });
        if let Some(scope) = settings.scope_claim()
            && let Some(obj) = claims.as_object_mut()
        {
            obj.insert("scope".into(), json!(scope));
        }
        let token = self.keys.sign(&claims)?;
        Ok(Issued {
            data: BTreeMap::from([("token".to_owned(), Secret::new(token))]),
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(exp),
            upstream_lease: None,
            renewable: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::JwkSet;
    use lanyard::clock::ManualClock;

    use super::*;
    use crate::authn::{Identity, KubernetesIdentity};
    use crate::policy::Role;
    use crate::policy::settings::tests::role as test_role;
    use crate::store::memory::MemoryStore;

    const T0: u64 = 1_800_000_000;
    const ISS: &str = "https://broker.example";

    fn config(alg: Algorithm) -> SigningConfig {
        SigningConfig {
            algorithm: alg,
            rotate_after_seconds: 100,
            overlap_seconds: 50,
        }
    }

    async fn ring_with(store: Arc<dyn Store>, clock: Arc<ManualClock>, alg: Algorithm) -> KeyRing {
        KeyRing::load_or_create(store, clock, config(alg))
            .await
            .expect("key ring")
    }

    /// A `jwt` role, its settings parsed as policy loading parses them.
    fn role(settings: Value, scope: &[&str]) -> Role {
        test_role("orders-read", KIND, settings, scope, 3600)
    }

    fn identity() -> Identity {
        Identity {
            issuer: "https://kubernetes.default.svc".into(),
            subject: "system:serviceaccount:shop:api".into(),
            kubernetes: Some(KubernetesIdentity {
                namespace: "shop".into(),
                service_account: "api".into(),
                pod_name: None,
                pod_uid: None,
            }),
            bootstrap: None,
        }
    }

    /// Verifies with jsonwebtoken alone, using only the published JWKS.
    fn decode_independently(token: &str, jwks: &Value, aud: &str) -> Value {
        let set: JwkSet = serde_json::from_value(jwks.clone()).expect("JWKS parses");
        let header = jsonwebtoken::decode_header(token).expect("header");
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let kid = header.kid.expect("kid");
        let jwk = set.find(&kid).expect("kid is published");
        let key = DecodingKey::from_jwk(jwk).expect("decoding key");
        let mut v = Validation::new(header.alg);
        v.validate_exp = false; // the manual clock is not the system clock
        v.required_spec_claims.clear();
        v.set_issuer(&[ISS]);
        v.set_audience(&[aud]);
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .expect("verifies independently")
            .claims
    }

    async fn issue_one(alg: Algorithm) {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::at_unix(T0));
        let ring = Arc::new(ring_with(store, clock, alg).await);
        let backend = JwtBackend::new(ring.clone(), ISS.into());
        let role = role(
            json!({"audience": "orders-api"}),
            &["orders:read", "orders:list"],
        );
        let id = identity();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
        let issued = backend
            .issue(&IssueRequest {
                identity: &id,
                role: &role,
                ttl: Duration::from_secs(600),
                now,
                request_id: "rq_1",
                lease_id: "ls_abc",
            })
            .await
            .expect("issue");
        assert_eq!(issued.expires_at, now + Duration::from_secs(600));
        assert!(!issued.renewable);
        assert!(issued.upstream_lease.is_none());
        let token = issued.data.get("token").expect("token").expose();

        let claims = decode_independently(token, &ring.jwks(), "orders-api");
        assert_eq!(claims["iss"], ISS);
        assert_eq!(claims["sub"], "system:serviceaccount:shop:api");
        assert_eq!(claims["aud"], "orders-api");
        assert_eq!(claims["scope"], "orders:read orders:list");
        assert_eq!(claims["iat"], T0);
        assert_eq!(claims["nbf"], T0);
        assert_eq!(claims["exp"], T0 + 600);
        assert_eq!(claims["jti"], "ls_abc");
        assert_eq!(
            claims["lanyard"],
            json!({"role": "orders-read", "namespace": "shop", "service_account": "api"})
        );
        let header = jsonwebtoken::decode_header(token).expect("header");
        assert_eq!(
            header.alg,
            KeyAlg::parse(&format!("{alg:?}")).expect("alg").jwt()
        );

        // The ring's own verify agrees, and enforces time and audience.
        assert_eq!(
            ring.verify(token, ISS, "orders-api", now).expect("verify"),
            claims
        );
        assert_eq!(
            ring.verify(token, ISS, "orders-api", now + Duration::from_secs(600)),
            Err(AuthnError::Expired)
        );
    }

    #[tokio::test]
    async fn es256_tokens_verify_with_the_published_jwks() {
        issue_one(Algorithm::ES256).await;
    }

    #[tokio::test]
    async fn eddsa_tokens_verify_with_the_published_jwks() {
        issue_one(Algorithm::EdDSA).await;
    }

    #[tokio::test]
    async fn audience_defaults_to_the_role_name_and_scope_is_omitted_when_empty() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ring =
            Arc::new(ring_with(store, Arc::new(ManualClock::at_unix(T0)), Algorithm::ES256).await);
        let backend = JwtBackend::new(ring.clone(), ISS.into());
        let role = role(json!({}), &[]);
        let id = Identity {
            kubernetes: None,
            ..identity()
        };
        let issued = backend
            .issue(&IssueRequest {
                identity: &id,
                role: &role,
                ttl: Duration::from_secs(60),
                now: SystemTime::UNIX_EPOCH + Duration::from_secs(T0),
                request_id: "rq",
                lease_id: "ls",
            })
            .await
            .expect("issue");
        let claims =
            decode_independently(issued.data["token"].expose(), &ring.jwks(), "orders-read");
        assert_eq!(claims["aud"], "orders-read");
        assert!(claims.get("scope").is_none(), "{claims}");
        assert_eq!(claims["lanyard"], json!({"role": "orders-read"}));
    }

    #[tokio::test]
    async fn jwks_is_public_only_and_kid_is_the_rfc7638_thumbprint() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let ring = ring_with(store, Arc::new(ManualClock::at_unix(T0)), alg).await;
            let jwks = ring.jwks();
            let keys = jwks["keys"].as_array().expect("keys");
            assert_eq!(keys.len(), 1);
            let k = keys[0].as_object().expect("object");
            assert!(!k.contains_key("d"), "private part published: {jwks}");
            let mut names: Vec<&str> = k.keys().map(String::as_str).collect();
            names.sort_unstable();
            let (expected, kty): (&[&str], _) = match alg {
                Algorithm::ES256 => (&["alg", "crv", "kid", "kty", "use", "x", "y"], "EC"),
                _ => (&["alg", "crv", "kid", "kty", "use", "x"], "OKP"),
            };
            assert_eq!(names, expected);
            assert_eq!(k["kty"], kty);
            assert_eq!(k["use"], "sig");
            // jsonwebtoken's own RFC 7638 thumbprint of the published JWK equals the kid.
            let set: JwkSet = serde_json::from_value(jwks.clone()).expect("jwks");
            let thumb = set.keys[0].thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256);
            assert_eq!(k["kid"], thumb);
        }
    }

    #[tokio::test]
    async fn rotation_timeline() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::at_unix(T0));
        let ring = ring_with(store.clone(), clock.clone(), Algorithm::ES256).await;
        let claims = |aud: &str| json!({"iss": ISS, "aud": aud, "exp": T0 + 10_000});
        let kid_of = |t: &str| {
            jsonwebtoken::decode_header(t)
                .expect("header")
                .kid
                .expect("kid")
        };
        let old_token = ring.sign(&claims("a")).expect("sign");
        let old_kid = kid_of(&old_token);

        clock.advance(Duration::from_secs(99));
        assert!(!ring.rotate_if_due().await.expect("rotate"), "not due yet");
        assert_eq!(kid_of(&ring.sign(&claims("a")).expect("sign")), old_kid);

        clock.advance(Duration::from_secs(1)); // T0+100: due
        assert!(ring.rotate_if_due().await.expect("rotate"));
        let new_token = ring.sign(&claims("a")).expect("sign");
        let new_kid = kid_of(&new_token);
        assert_ne!(new_kid, old_kid, "the new key signs");
        assert_eq!(ring.jwks()["keys"].as_array().expect("keys").len(), 2);
        assert_eq!(ring.jwks()["keys"][0]["kid"], new_kid, "newest first");
        ring.verify(&old_token, ISS, "a", clock.now())
            .expect("old key still verifies during the overlap");

        clock.advance(Duration::from_secs(50)); // retired for exactly the overlap
        assert!(!ring.rotate_if_due().await.expect("rotate"));
        ring.verify(&old_token, ISS, "a", clock.now())
            .expect("still inside the overlap");

        clock.advance(Duration::from_secs(1)); // retired for longer than the overlap
        assert!(ring.rotate_if_due().await.expect("rotate"));
        let jwks = ring.jwks();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k["kid"].as_str())
            .collect();
        assert_eq!(kids, [new_kid.as_str()]);
        assert_eq!(
            ring.verify(&old_token, ISS, "a", clock.now()),
            Err(AuthnError::UnknownKey)
        );
        ring.verify(&new_token, ISS, "a", clock.now())
            .expect("new key verifies");
        let stored: Vec<String> = store
            .signing_keys()
            .await
            .expect("keys")
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(stored, [new_kid]);
    }

    #[tokio::test]
    async fn keys_survive_a_reload_and_other_replicas_rotations_are_picked_up() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::at_unix(T0));
        let a = ring_with(store.clone(), clock.clone(), Algorithm::EdDSA).await;
        let token = a
            .sign(&json!({"iss": ISS, "aud": "x", "exp": T0 + 1000}))
            .expect("sign");
        let b = ring_with(store.clone(), clock.clone(), Algorithm::EdDSA).await;
        assert_eq!(a.jwks(), b.jwks(), "same keys after reload, none created");
        b.verify(&token, ISS, "x", clock.now())
            .expect("a reloaded ring verifies earlier tokens");

        clock.advance(Duration::from_secs(100));
        assert!(a.rotate_if_due().await.expect("rotate"));
        assert!(
            b.rotate_if_due().await.expect("rotate"),
            "b picks up a's new key"
        );
        assert_eq!(a.jwks(), b.jwks(), "b did not create a second key");
        assert_eq!(store.signing_keys().await.expect("keys").len(), 2);
    }

    #[tokio::test]
    async fn a_corrupt_stored_key_is_reported_without_its_content() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store
            .insert_signing_key(&SigningKeyRecord {
                kid: "k1".into(),
                alg: "ES256".into(),
                pkcs8: Secret::new("bm90LWEta2V5"),
                created_at: SystemTime::UNIX_EPOCH,
            })
            .await
            .expect("insert");
        let err = KeyRing::load_or_create(
            store,
            Arc::new(ManualClock::at_unix(T0)),
            config(Algorithm::ES256),
        )
        .await
        .expect_err("corrupt");
        let msg = err.to_string();
        assert!(msg.contains("k1"), "{msg}");
        assert!(!msg.contains("bm90LWEta2V5"), "{msg}");
    }

    #[tokio::test]
    async fn an_algorithm_that_cannot_sign_is_named() {
        let err = KeyRing::load_or_create(
            Arc::new(MemoryStore::new()),
            Arc::new(ManualClock::at_unix(T0)),
            config(Algorithm::RS256),
        )
        .await
        .expect_err("RS256 keys are not generated");
        assert!(
            matches!(err, KeyError::Algorithm(Algorithm::RS256)),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("signing.algorithm RS256"), "{msg}");
        assert!(msg.contains("ES256 or EdDSA"), "{msg}");
    }

    #[tokio::test]
    async fn verify_rejects_bad_tokens_with_the_right_reason() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::at_unix(T0));
        let ring = ring_with(store, clock.clone(), Algorithm::ES256).await;
        let now = clock.now();
        let good = ring
            .sign(&json!({"iss": ISS, "aud": ["x", "y"], "exp": T0 + 100, "nbf": T0}))
            .expect("sign");
        ring.verify(&good, ISS, "y", now).expect("aud list");
        assert_eq!(
            ring.verify(&good, ISS, "z", now),
            Err(AuthnError::WrongAudience)
        );
        assert_eq!(
            ring.verify(&good, "https://other", "x", now),
            Err(AuthnError::UntrustedIssuer)
        );
        assert_eq!(
            ring.verify(&good, ISS, "x", now - Duration::from_secs(1)),
            Err(AuthnError::NotYetValid)
        );
        assert_eq!(
            ring.verify(&good, ISS, "x", now + Duration::from_secs(100)),
            Err(AuthnError::Expired)
        );
        let no_exp = ring.sign(&json!({"iss": ISS, "aud": "x"})).expect("sign");
        assert!(matches!(
            ring.verify(&no_exp, ISS, "x", now),
            Err(AuthnError::InvalidClaims(_))
        ));
        // Swap in another token's signature.
        let other = ring
            .sign(&json!({"iss": ISS, "aud": "x", "exp": T0 + 999}))
            .expect("sign");
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[2] = other.split('.').nth(2).expect("sig");
        assert_eq!(
            ring.verify(&parts.join("."), ISS, "x", now),
            Err(AuthnError::BadSignature)
        );
        let foreign = ring_with(
            Arc::new(MemoryStore::new()),
            clock.clone(),
            Algorithm::ES256,
        )
        .await
        .sign(&json!({"iss": ISS, "aud": "x", "exp": T0 + 100}))
        .expect("sign");
        assert_eq!(
            ring.verify(&foreign, ISS, "x", now),
            Err(AuthnError::UnknownKey)
        );
        assert!(matches!(
            ring.verify("garbage", ISS, "x", now),
            Err(AuthnError::Malformed(_))
        ));
        assert_eq!(
            ring.verify(&"a".repeat(MAX_TOKEN_BYTES + 1), ISS, "x", now),
            Err(AuthnError::TooLarge)
        );
    }

    #[tokio::test]
    async fn a_role_with_another_backends_settings_is_an_internal_error() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ring =
            Arc::new(ring_with(store, Arc::new(ManualClock::at_unix(T0)), Algorithm::ES256).await);
        let backend = JwtBackend::new(ring, ISS.into());
        let vault_role = test_role(
            "orders-read",
            "vault",
            json!({"kind": "token", "policies": ["p"]}),
            &[],
            3600,
        );
        let id = identity();
        let err = backend
            .issue(&IssueRequest {
                identity: &id,
                role: &vault_role,
                ttl: Duration::from_secs(60),
                now: SystemTime::UNIX_EPOCH + Duration::from_secs(T0),
                request_id: "rq",
                lease_id: "ls",
            })
            .await
            .expect_err("vault settings");
        assert!(
            matches!(&err, BackendError::Internal(m) if m.contains("vault settings")),
            "{err}"
        );
    }
}
