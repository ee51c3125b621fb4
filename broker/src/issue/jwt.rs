//! The `jwt` backend: broker-signed tokens, rotating keys, published JWKS.
//!
//! [`KeyRing`] holds the broker's signing keys (ES256 or EdDSA, generated with aws-lc-rs and
//! persisted in the store as PKCS#8). Each key's `kid` is its RFC 7638 JWK thumbprint.
//!
//! # Rotation
//! A key goes through [`KeyState`]s, decided by [`Schedule`] from its stored `active_from`
//! alone: **next** (published in the JWKS, not signing) → **current** (signing) →
//! **previous** (published for verification only) → **gone** (deleted). A new key is created
//! `publish_ahead_seconds` before it signs — at least one JWKS cache lifetime
//! ([`JWKS_MAX_AGE_SECONDS`](crate::config::JWKS_MAX_AGE_SECONDS)) — so a relying party
//! that cached the JWKS before the key existed has fetched it again before the key's first
//! token; it stays published `overlap_seconds` after its successor takes over, so every
//! token it signed verifies until it expires. The very first key of an empty store signs at
//! once (nobody can have cached a JWKS that lacks it: there was none).
//!
//! With several replicas sharing a store, a key one replica creates becomes known to the
//! others at their next [`KeyRing::rotate_if_due`] (which reloads from the store first), so
//! call it often (every `reload_interval_seconds`; `publish_ahead_seconds` covers that
//! delay too). Every replica switches to a key at its stored `active_from`, by its own clock.
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

use super::kek::Keks;
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
    /// A key-encryption key file cannot be used (`signing.kek_file`, `other_kek_files`).
    #[error(transparent)]
    Kek(#[from] super::kek::KekError),
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
    /// When it starts signing (see [`Schedule`]).
    active_from: SystemTime,
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
            .field("active_from", &self.active_from)
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
    fn from_pkcs8(
        alg: KeyAlg,
        der: &[u8],
        created_at: SystemTime,
        active_from: SystemTime,
    ) -> Result<Self, String> {
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
            active_from,
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
        let key = Self::from_pkcs8(alg, &der, rec.created_at, rec.active_from).map_err(corrupt)?;
        if key.kid != rec.kid {
            return Err(corrupt(format!(
                "kid does not match the key's thumbprint ({})",
                key.kid
            )));
        }
        Ok(key)
    }

    /// Generates a new key that signs from `active_from`.
    fn generate(
        alg: KeyAlg,
        created_at: SystemTime,
        active_from: SystemTime,
    ) -> Result<(Self, SigningKeyRecord), StoreError> {
        let rng = SystemRandom::new();
        let doc = match alg {
            KeyAlg::Es256 => EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng),
            KeyAlg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng),
        }
        .map_err(|_| StoreError::Backend("generating a signing key failed".into()))?;
        let key = Self::from_pkcs8(alg, doc.as_ref(), created_at, active_from)
            .map_err(|e| StoreError::Backend(format!("generated key unusable: {e}")))?;
        let rec = SigningKeyRecord {
            kid: key.kid.clone(),
            alg: alg.name().to_owned(),
            pkcs8: Secret::new(STANDARD.encode(doc.as_ref())),
            created_at,
            active_from,
        };
        Ok((key, rec))
    }
}

/// Where a key stands in the rotation at one instant (see [`Schedule::states`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published in the JWKS, not signing yet: relying parties learn it before its first
    /// token.
    Next,
    /// The key that signs (and is published).
    Current,
    /// Published for verification only: a newer key signs, since at most `overlap_seconds`.
    Previous,
    /// Its successor has signed for longer than `overlap_seconds`: unpublished and deleted.
    Gone,
}

/// The rotation decisions, as pure functions of the keys' `active_from` times and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// How long each key signs (`rotate_after_seconds`).
    pub rotate_after: Duration,
    /// How long a key is published before it signs (`publish_ahead_seconds`).
    pub publish_ahead: Duration,
    /// How long a key stays published after its successor starts signing
    /// (`overlap_seconds`).
    pub overlap: Duration,
}

/// The index of the key that signs at `now` among keys sorted by `active_from`: the last one
/// whose `active_from` has come. When none has (the clock went back), the first: some key
/// must sign, and every key is published. `None` only when there is no key.
fn signer_index<T>(
    keys: &[T],
    active_from: impl Fn(&T) -> SystemTime,
    now: SystemTime,
) -> Option<usize> {
    keys.iter()
        .rposition(|k| active_from(k) <= now)
        .or((!keys.is_empty()).then_some(0))
}

impl Schedule {
    /// The schedule a configuration asks for.
    pub fn new(config: &SigningConfig) -> Self {
        Self {
            rotate_after: Duration::from_secs(config.rotate_after_seconds),
            publish_ahead: Duration::from_secs(config.publish_ahead_seconds),
            overlap: Duration::from_secs(config.overlap_seconds),
        }
    }

    /// Each key's state at `now`, for keys sorted by `active_from`: the signer (see
    /// [`Schedule::signer`]) is current, keys after it are next, and a key before it is
    /// previous until its successor has signed for longer than the overlap, then gone.
    pub fn states(&self, active_from: &[SystemTime], now: SystemTime) -> Vec<KeyState> {
        let Some(current) = Self::signer(active_from, now) else {
            return Vec::new();
        };
        (0..active_from.len())
            .map(|i| match i.cmp(&current) {
                std::cmp::Ordering::Equal => KeyState::Current,
                std::cmp::Ordering::Greater => KeyState::Next,
                // i < current, so the successor i + 1 exists and has started signing.
                std::cmp::Ordering::Less => {
                    if age(now, active_from[i + 1]) > self.overlap {
                        KeyState::Gone
                    } else {
                        KeyState::Previous
                    }
                }
            })
            .collect()
    }

    /// The index of the key that signs at `now`, among keys sorted by `active_from`.
    pub fn signer(active_from: &[SystemTime], now: SystemTime) -> Option<usize> {
        signer_index(active_from, |t| *t, now)
    }

    /// Whether a new key is due at `now`, and if so when it starts signing. `newest` is the
    /// `active_from` of the key that signs last (current or next) and whether it has the
    /// configured algorithm. With no key the first one signs at once (no relying party can
    /// have cached a JWKS without it: there was none). Otherwise a key is due
    /// `publish_ahead` before the newest has signed for `rotate_after` — as soon as it signs
    /// when it has another algorithm than the configured one — and starts signing
    /// `publish_ahead` after it is created. While a next key waits, none is due
    /// (`rotate_after >= publish_ahead`, which [`SigningConfig::validate`] holds), whatever
    /// its algorithm: replicas configured with different algorithms during a change then
    /// create at most one key per `publish_ahead` between them, not one per check.
    pub fn new_key(
        &self,
        newest: Option<(SystemTime, bool)>,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let Some((active_from, configured_alg)) = newest else {
            return Some(now);
        };
        let due = now.duration_since(active_from).is_ok_and(|signed| {
            !configured_alg || signed.saturating_add(self.publish_ahead) >= self.rotate_after
        });
        // A time past what `SystemTime` holds is never: no key is created.
        if due {
            now.checked_add(self.publish_ahead)
        } else {
            None
        }
    }
}

type Keys = Vec<Arc<SigningKey>>;

/// Orders keys as the [`Schedule`] reads them: by `active_from`, then creation, then `kid`.
fn sort_keys(keys: &mut Keys) {
    keys.sort_by(|a, b| {
        (a.active_from, a.created_at, &a.kid).cmp(&(b.active_from, b.created_at, &b.kid))
    });
}

/// The broker's signing keys, each [`KeyState::Next`], [`KeyState::Current`] or
/// [`KeyState::Previous`] as the [`Schedule`] says; all of them are published and verify.
pub struct KeyRing {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: SigningConfig,
    schedule: Schedule,
    alg: KeyAlg,
    /// Sorted by [`sort_keys`]; [`signer_index`] picks the one that signs.
    keys: ArcSwap<Keys>,
    /// Serialises rotations within this process.
    rotation: tokio::sync::Mutex<()>,
    /// This process's id among replicas sharing the store (`rp_` + 16 hex): who claims a
    /// rotation ([`Store::claim_job`]), so that one replica creates each new key.
    replica: String,
    /// The key-encryption keys the private halves are sealed under at rest (none: stored
    /// in the clear).
    keks: Keks,
}

/// How long a replica's claim on creating the next key lasts: others skip creating one
/// meanwhile (and load the one it created at their next reload); if it stopped before
/// creating it, another replica creates it after this.
pub const ROTATION_CLAIM: Duration = Duration::from_secs(60);

/// How long a replica starting on an empty store waits for the replica that claimed the
/// first key to create it.
pub const FIRST_KEY_WAIT: Duration = Duration::from_secs(10);

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
    /// Loads keys from the store, creating the first one (signing at once) if there is none.
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
        let keks = Keks::from_config(&config).await?;
        let ring = Self {
            keks,
            store,
            clock,
            schedule: Schedule::new(&config),
            config,
            alg,
            keys: ArcSwap::from_pointee(Vec::new()),
            rotation: tokio::sync::Mutex::new(()),
            replica: {
                let mut id = [0u8; 8];
                aws_lc_rs::rand::fill(&mut id).map_err(|_| {
                    KeyError::Store(StoreError::Backend(
                        "the system random number generator failed".into(),
                    ))
                })?;
                format!("rp_{}", hex::encode(id))
            },
        };
        ring.reload().await?;
        if ring.keys.load().is_empty() {
            let _guard = ring.rotation.lock().await;
            // Replicas starting together on an empty store: the one that claims the rotation
            // creates the first key; the others wait for it (up to FIRST_KEY_WAIT, then create
            // one themselves: the claimer may have died).
            let now = ring.clock.now();
            if !ring
                .store
                .claim_job("key_rotation", &ring.replica, now, now + ROTATION_CLAIM)
                .await?
            {
                let waited = std::time::Instant::now();
                while ring.keys.load().is_empty() && waited.elapsed() < FIRST_KEY_WAIT {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    ring.reload().await?;
                }
            }
            if ring.keys.load().is_empty() {
                let mut keys = (**ring.keys.load()).clone();
                let now = ring.clock.now();
                ring.create_key(&mut keys, now).await?;
                ring.keys.store(Arc::new(keys));
            }
        }
        Ok(ring)
    }

    /// Re-reads the keys from the store (another replica may have rotated), opening each
    /// new one under the key-encryption keys, and seals again under the current KEK any key
    /// stored in the clear or under another KEK.
    async fn reload(&self) -> Result<(), StoreError> {
        let records = self.store.signing_keys().await?;
        let current = self.keys.load_full();
        let mut keys: Keys = Vec::with_capacity(records.len());
        for rec in &records {
            let known = current.iter().find(|k| {
                k.kid == rec.kid
                    && k.created_at == rec.created_at
                    && k.active_from == rec.active_from
            });
            // A key already loaded was opened and resealed when first seen.
            if let Some(k) = known {
                keys.push(k.clone());
                continue;
            }
            let opened = self
                .keks
                .open(&rec.kid, &rec.pkcs8)
                .map_err(|e| StoreError::Backend(format!("signing key {}: {e}", rec.kid)))?;
            let clear = SigningKeyRecord {
                pkcs8: opened.pkcs8.clone(),
                ..rec.clone()
            };
            keys.push(Arc::new(SigningKey::from_record(&clear)?));
            if opened.reseal {
                self.reseal(&rec.kid, &rec.pkcs8, &opened.pkcs8).await;
            }
        }
        sort_keys(&mut keys);
        self.keys.store(Arc::new(keys));
        Ok(())
    }

    /// Seals key `kid` again under the current KEK, if its stored text is still `stored`. A
    /// failure is logged and tried again at the next start (the key keeps working).
    async fn reseal(&self, kid: &str, stored: &Secret, pkcs8: &Secret) {
        let sealed = match self.keks.seal(kid, pkcs8) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%kid, error = %e, "cannot seal a signing key under the current key-encryption key");
                return;
            }
        };
        match self.store.reseal_signing_key(kid, stored, &sealed).await {
            Ok(true) => {
                tracing::info!(%kid, "sealed a signing key under the current key-encryption key")
            }
            // Another replica did it first, or the key is gone.
            Ok(false) => {}
            Err(e) => tracing::warn!(%kid, error = %e, "cannot store a signing key sealed again"),
        }
    }

    /// Creates and stores a key that signs from `active_from`. Both times are whole seconds,
    /// as the store keeps them, `active_from` rounded up (never earlier than asked).
    async fn create_key(&self, keys: &mut Keys, active_from: SystemTime) -> Result<(), StoreError> {
        let second = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let created_at = second(unix_seconds(self.clock.now()));
        let mut signs_from = second(unix_seconds(active_from));
        if signs_from < active_from {
            signs_from += Duration::from_secs(1);
        }
        let (key, rec) = SigningKey::generate(self.alg, created_at, signs_from)?;
        let sealed = SigningKeyRecord {
            pkcs8: self
                .keks
                .seal(&rec.kid, &rec.pkcs8)
                .map_err(|e| StoreError::Backend(format!("signing key {}: {e}", rec.kid)))?,
            ..rec
        };
        self.store.insert_signing_key(&sealed).await?;
        tracing::info!(
            kid = %key.kid,
            alg = key.alg.name(),
            signs_from = %lanyard::clock::rfc3339(signs_from),
            "created a new signing key; it is published now and signs from `signs_from`"
        );
        keys.push(Arc::new(key));
        sort_keys(keys);
        Ok(())
    }

    /// Creates the next key when the [`Schedule`] says one is due (published now, signing
    /// `publish_ahead_seconds` later), and deletes keys whose successor has signed for longer
    /// than `overlap_seconds`. Reloads from the store first, so it is also how this replica
    /// learns of keys another one created. Returns whether the set of keys changed.
    pub async fn rotate_if_due(&self) -> Result<bool, StoreError> {
        let _guard = self.rotation.lock().await;
        let before: Vec<String> = self.keys.load().iter().map(|k| k.kid.clone()).collect();
        self.reload().await?;
        let now = self.clock.now();
        let mut keys = (**self.keys.load()).clone();

        let newest = keys.last().map(|k| (k.active_from, k.alg == self.alg));
        if let Some(active_from) = self.schedule.new_key(newest, now) {
            // One replica creates it: the others (on a shared PostgreSQL store) skip, and
            // load it at their next reload, well within `publish_ahead_seconds`.
            if self
                .store
                .claim_job("key_rotation", &self.replica, now, now + ROTATION_CLAIM)
                .await?
            {
                self.create_key(&mut keys, active_from).await?;
            }
        }

        let active_from: Vec<SystemTime> = keys.iter().map(|k| k.active_from).collect();
        let gone: Vec<String> = self
            .schedule
            .states(&active_from, now)
            .iter()
            .zip(&keys)
            .filter(|(state, _)| **state == KeyState::Gone)
            .map(|(_, k)| k.kid.clone())
            .collect();
        for kid in &gone {
            self.store.delete_signing_key(kid).await?;
            tracing::info!(%kid, "deleted a retired signing key");
        }
        keys.retain(|k| !gone.contains(&k.kid));
        let after: Vec<String> = keys.iter().map(|k| k.kid.clone()).collect();
        self.keys.store(Arc::new(keys));
        Ok(before != after)
    }

    /// This process's id among replicas sharing the store.
    pub fn replica_id(&self) -> &str {
        &self.replica
    }

    /// Each loaded key's `kid` and state at the ring's clock, in schedule order (for
    /// operators and tests).
    pub fn key_states(&self) -> Vec<(String, KeyState)> {
        let keys = self.keys.load();
        let active_from: Vec<SystemTime> = keys.iter().map(|k| k.active_from).collect();
        self.schedule
            .states(&active_from, self.clock.now())
            .into_iter()
            .zip(keys.iter())
            .map(|(state, k)| (k.kid.clone(), state))
            .collect()
    }

    /// The public JWKS document (`{"keys": [...]}`): every loaded key — next, current and
    /// previous — the latest to sign first.
    pub fn jwks(&self) -> serde_json::Value {
        let keys = self.keys.load();
        json!({"keys": keys.iter().rev().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
    }

    /// Signs claims (a JSON object, or a type that serializes to one) with the key that signs
    /// now by the ring's clock (header carries `kid` and `alg`).
    pub fn sign<C: Serialize + ?Sized>(&self, claims: &C) -> Result<String, BackendError> {
        let keys = self.keys.load();
        let key = signer_index(&keys, |k| k.active_from, self.clock.now())
            .map(|i| &keys[i])
            .ok_or_else(|| BackendError::Internal("no signing key is loaded".into()))?;
        key.sign(claims)
    }

    /// Verifies a token this broker signed (any published key: next, current or previous),
    /// requiring `iss` and `aud`.
    /// Returns its claims.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<serde_json::Value, crate::authn::AuthnError> {
        self.verify_for(token, issuer, Some(audience), now)
    }

    /// [`KeyRing::verify`] with any audience (introspection answers for every relying
    /// party; `aud` is still required).
    pub fn verify_any_audience(
        &self,
        token: &str,
        issuer: &str,
        now: SystemTime,
    ) -> Result<serde_json::Value, crate::authn::AuthnError> {
        self.verify_for(token, issuer, None, now)
    }

    fn verify_for(
        &self,
        token: &str,
        issuer: &str,
        audience: Option<&str>,
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
        match audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
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
            rotate_after_seconds: 1_000,
            publish_ahead_seconds: 300,
            overlap_seconds: 500,
            ..SigningConfig::default()
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
                admission: Default::default(),
            }),
            bootstrap: None,
            spiffe_id: None,
            claims: Default::default(),
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

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn schedule() -> Schedule {
        Schedule::new(&config(Algorithm::ES256))
    }

    #[test]
    fn which_key_signs_and_which_are_published_at_each_instant() {
        use KeyState::{Current, Gone, Next, Previous};
        let s = schedule(); // overlap 500
        let keys = [at(0), at(1_000), at(2_000)];
        for (now, states, signer) in [
            (at(500), [Current, Next, Next], 0),
            (at(999), [Current, Next, Next], 0),
            (at(1_000), [Previous, Current, Next], 1),
            (at(1_500), [Previous, Current, Next], 1), // retired for exactly the overlap
            (at(1_501), [Gone, Current, Next], 1),
            (at(2_000), [Gone, Previous, Current], 2),
            (at(2_501), [Gone, Gone, Current], 2),
            // The clock went back before every key: the first one signs, the rest wait.
            (at(0) - Duration::from_secs(10), [Current, Next, Next], 0),
        ] {
            assert_eq!(s.states(&keys, now), states, "at {now:?}");
            assert_eq!(Schedule::signer(&keys, now), Some(signer), "at {now:?}");
        }
        assert!(s.states(&[], at(0)).is_empty());
        assert_eq!(Schedule::signer(&[], at(0)), None);
    }

    #[test]
    fn the_next_key_is_created_publish_ahead_before_it_signs() {
        let s = schedule(); // rotate after 1000, publish 300 ahead
        assert_eq!(
            s.new_key(None, at(5)),
            Some(at(5)),
            "the first key signs at once"
        );
        let newest = Some((at(0), true));
        assert_eq!(s.new_key(newest, at(699)), None, "not due yet");
        assert_eq!(
            s.new_key(newest, at(700)),
            Some(at(1_000)),
            "due 300 s before the current key has signed 1000 s, signing when it has"
        );
        assert_eq!(
            s.new_key(newest, at(5_000)),
            Some(at(5_300)),
            "late (the broker was down): still published a full 300 s before it signs"
        );
        assert_eq!(
            s.new_key(Some((at(1_000), true)), at(800)),
            None,
            "a next key waits: none is due"
        );
        assert_eq!(
            s.new_key(Some((at(0), false)), at(1)),
            Some(at(301)),
            "the algorithm changed: a key of the new one is due at once, and the old key \
             signs until the new one has been published"
        );
        assert_eq!(
            s.new_key(Some((at(1_000), false)), at(800)),
            None,
            "a next key of another algorithm (another replica's choice) is left to wait"
        );
        assert_eq!(
            s.new_key(Some((at(1_000), false)), at(1_000)),
            Some(at(1_300)),
            "and replaced as soon as it signs"
        );
    }

    /// Drives the schedule alone over many rotations, as the rotation task does, and checks
    /// the two promises at every step: the key that signs was published `publish_ahead`
    /// before (but the very first), and no key is dropped while a token it signed, living
    /// `overlap`, may be unexpired.
    #[test]
    fn over_many_rotations_signers_were_published_ahead_and_outlive_their_tokens() {
        let s = schedule();
        let step = Duration::from_secs(7);
        // (created, active_from, last time it signed)
        let mut keys: Vec<(SystemTime, SystemTime, Option<SystemTime>)> = Vec::new();
        let (mut now, end) = (at(0), at(20_000));
        let (mut created, mut dropped) = (0, 0);
        while now < end {
            let newest = keys.last().map(|k| (k.1, true));
            if let Some(active_from) = s.new_key(newest, now) {
                keys.push((now, active_from, None));
                created += 1;
            }
            let active: Vec<SystemTime> = keys.iter().map(|k| k.1).collect();
            let states = s.states(&active, now);
            let signer = Schedule::signer(&active, now).expect("a key signs");
            assert_eq!(states[signer], KeyState::Current);
            let (key_created, active_from, _) = keys[signer];
            assert!(active_from <= now, "a key signs before its time");
            if key_created != at(0) {
                assert!(
                    age(now, key_created) >= s.publish_ahead,
                    "key created at {key_created:?} signs at {now:?}, before it was published 300 s"
                );
            }
            keys[signer].2 = Some(now);
            for (k, state) in keys.iter().zip(&states) {
                if *state == KeyState::Gone {
                    let last = k.2.expect("a gone key had signed");
                    assert!(
                        age(now, last) > s.overlap,
                        "a key is dropped {:?} after its last token",
                        age(now, last)
                    );
                    dropped += 1;
                }
            }
            keys = keys
                .into_iter()
                .zip(states)
                .filter(|(_, state)| *state != KeyState::Gone)
                .map(|(k, _)| k)
                .collect();
            assert!(keys.len() <= 3, "next, current and previous at most");
            now += step;
        }
        assert!(
            created >= 20 && dropped >= 18,
            "{created} created, {dropped} dropped"
        );
    }

    fn kid_of(token: &str) -> String {
        jsonwebtoken::decode_header(token)
            .expect("header")
            .kid
            .expect("kid")
    }

    fn published(ring: &KeyRing) -> Vec<String> {
        ring.jwks()["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k["kid"].as_str().map(str::to_owned))
            .collect()
    }

    #[tokio::test]
    async fn rotation_timeline() {
        use KeyState::{Current, Next, Previous};
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::at_unix(T0));
        let ring = ring_with(store.clone(), clock.clone(), Algorithm::ES256).await;
        let claims = |aud: &str| json!({"iss": ISS, "aud": aud, "exp": T0 + 10_000});
        let old_token = ring.sign(&claims("a")).expect("sign");
        let old_kid = kid_of(&old_token);
        assert_eq!(ring.key_states(), [(old_kid.clone(), Current)]);

        clock.set(at(699));
        assert!(!ring.rotate_if_due().await.expect("rotate"), "not due yet");
        assert_eq!(kid_of(&ring.sign(&claims("a")).expect("sign")), old_kid);

        clock.set(at(700)); // due: the next key is published, and does not sign yet
        assert!(ring.rotate_if_due().await.expect("rotate"));
        let states = ring.key_states();
        assert_eq!(states.len(), 2);
        let new_kid = states[1].0.clone();
        assert_eq!(
            states,
            [(old_kid.clone(), Current), (new_kid.clone(), Next)]
        );
        assert_eq!(published(&ring), [new_kid.clone(), old_kid.clone()]);
        assert_eq!(
            kid_of(&ring.sign(&claims("a")).expect("sign")),
            old_kid,
            "a published key does not sign before its time"
        );

        clock.set(at(999));
        assert!(
            !ring.rotate_if_due().await.expect("rotate"),
            "a next key waits"
        );
        assert_eq!(kid_of(&ring.sign(&claims("a")).expect("sign")), old_kid);

        clock.set(at(1_000)); // the switch needs no rotation call: it is in the schedule
        let new_token = ring.sign(&claims("a")).expect("sign");
        assert_eq!(kid_of(&new_token), new_kid, "the new key signs at its time");
        assert_eq!(
            ring.key_states(),
            [(old_kid.clone(), Previous), (new_kid.clone(), Current)]
        );
        ring.verify(&old_token, ISS, "a", clock.now())
            .expect("old key still verifies during the overlap");

        clock.set(at(1_500)); // retired for exactly the overlap
        assert!(!ring.rotate_if_due().await.expect("rotate"));
        ring.verify(&old_token, ISS, "a", clock.now())
            .expect("still inside the overlap");

        clock.set(at(1_501)); // retired for longer than the overlap
        assert!(ring.rotate_if_due().await.expect("rotate"));
        assert_eq!(published(&ring), std::slice::from_ref(&new_kid));
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

        clock.set(at(700));
        assert!(a.rotate_if_due().await.expect("rotate"));
        assert!(
            b.rotate_if_due().await.expect("rotate"),
            "b picks up a's new key"
        );
        assert_eq!(a.jwks(), b.jwks(), "b did not create a second key");
        assert_eq!(store.signing_keys().await.expect("keys").len(), 2);
        let signer = |r: &KeyRing| kid_of(&r.sign(&json!({"aud": "x"})).expect("sign"));
        for t in [999, 1_000] {
            clock.set(at(t));
            assert_eq!(signer(&a), signer(&b), "replicas switch together at {t}");
        }
        assert_eq!(signer(&a), a.key_states()[1].0, "the new key signs");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_starting_and_rotating_at_once_on_postgres_create_one_key_each_time() {
        let url = lanyard_test_support::Postgres::shared().create_database("rotation");
        let opts = crate::store::postgres::PostgresOptions::new(url);
        let store: Arc<dyn Store> = Arc::new(
            crate::store::postgres::PostgresStore::connect(&opts)
                .await
                .expect("connect"),
        );
        let clock = Arc::new(ManualClock::at_unix(T0));
        // Four replicas starting together on the empty database, each with its own store
        // handle (its own pool): one creates the first key, the others load it.
        let starts = (0..4).map(|_| {
            let own: Arc<dyn Store> =
                Arc::new(crate::store::postgres::PostgresStore::open(&opts).expect("open"));
            let clock = clock.clone();
            tokio::spawn(async move { ring_with(own, clock, Algorithm::ES256).await })
        });
        let rings: Vec<Arc<KeyRing>> = futures_util::future::join_all(starts)
            .await
            .into_iter()
            .map(|r| Arc::new(r.expect("task")))
            .collect();
        assert_eq!(
            store.signing_keys().await.expect("keys").len(),
            1,
            "one first key"
        );
        for r in &rings[1..] {
            assert_eq!(r.jwks(), rings[0].jwks());
        }
        clock.set(at(700));
        // Each replica's periodic task, at once.
        let tasks = rings.iter().map(|r| {
            let r = r.clone();
            tokio::spawn(async move { r.rotate_if_due().await })
        });
        for r in futures_util::future::join_all(tasks).await {
            r.expect("task").expect("rotate");
        }
        assert_eq!(
            store.signing_keys().await.expect("keys").len(),
            2,
            "one replica created the next key"
        );
        // The others load it at their next reload; all publish the same keys.
        for r in &rings {
            r.rotate_if_due().await.expect("reload");
        }
        for r in &rings[1..] {
            assert_eq!(r.jwks(), rings[0].jwks());
        }
    }

    /// `config(ES256)` sealing under `kek` and opening under `others` too (KEK files in `dir`).
    fn sealed_config(dir: &std::path::Path, kek: u8, others: &[u8]) -> SigningConfig {
        let file = |b: u8| {
            let p = dir.join(format!("kek-{b}"));
            std::fs::write(&p, STANDARD.encode([b; 32])).expect("kek file");
            p
        };
        SigningConfig {
            kek_file: Some(file(kek)),
            other_kek_files: others.iter().map(|b| file(*b)).collect(),
            ..config(Algorithm::ES256)
        }
    }

    fn kek_id(b: u8) -> String {
        super::super::kek::Kek::from_bytes(&[b; 32])
            .expect("kek")
            .id()
            .to_owned()
    }

    /// Three replicas on one PostgreSQL database, their keys sealed under one KEK: a JWT
    /// minted by any verifies at the others, before and across a rotation (each re-reads the
    /// keys at its periodic `rotate_if_due`, well within `publish_ahead_seconds`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_verify_each_others_jwts_across_a_rotation_with_sealed_keys_on_postgres() {
        let dir = tempfile::tempdir().expect("dir");
        let url = lanyard_test_support::Postgres::shared().create_database("sealed_rotation");
        let opts = crate::store::postgres::PostgresOptions::new(url);
        let store: Arc<dyn Store> = Arc::new(
            crate::store::postgres::PostgresStore::connect(&opts)
                .await
                .expect("connect"),
        );
        let clock = Arc::new(ManualClock::at_unix(T0));
        let mut rings = Vec::new();
        for _ in 0..3 {
            let own: Arc<dyn Store> =
                Arc::new(crate::store::postgres::PostgresStore::open(&opts).expect("open"));
            rings.push(
                KeyRing::load_or_create(own, clock.clone(), sealed_config(dir.path(), 1, &[]))
                    .await
                    .expect("ring"),
            );
        }
        let token = |r: &KeyRing| {
            r.sign(&json!({"iss": ISS, "aud": "app", "exp": T0 + 5_000}))
                .expect("sign")
        };
        let verifies = |r: &KeyRing, t: &str| {
            r.verify(t, ISS, "app", clock.now())
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let first = token(&rings[0]);
        for r in &rings[1..] {
            verifies(r, &first).expect("minted at the first, verified here");
        }
        // Rotation due: one creates the next key; every replica re-reads it.
        clock.set(at(700));
        for r in &rings {
            r.rotate_if_due().await.expect("rotate");
        }
        let stored = store.signing_keys().await.expect("keys");
        assert_eq!(stored.len(), 2);
        for k in &stored {
            let text = k.pkcs8.expose();
            assert!(
                text.starts_with(&format!("lk1.{}.", kek_id(1))),
                "sealed at rest: {}",
                &text[..20.min(text.len())]
            );
        }
        for r in &rings[1..] {
            assert_eq!(r.jwks(), rings[0].jwks());
        }
        // The new key signs; tokens of either key verify everywhere.
        clock.set(at(1_001));
        let second = token(&rings[2]);
        assert_ne!(
            jsonwebtoken::decode_header(&first).expect("h").kid,
            jsonwebtoken::decode_header(&second).expect("h").kid,
            "the new key signs"
        );
        for r in &rings {
            verifies(r, &first).expect("the previous key still verifies");
            verifies(r, &second).expect("the new key verifies at every replica");
        }
    }

    /// A KEK rotation: keys sealed under the old KEK open under a configuration naming the
    /// new one and the old one as `other_kek_files`, and are sealed again under the new one;
    /// then the old KEK is no longer needed; a broker with no KEK cannot open them.
    #[tokio::test]
    async fn keys_are_sealed_again_under_a_new_kek_and_need_a_kek_to_load() {
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::at_unix(T0));
        // Keys stored in the clear by a broker without a KEK are sealed once one has one.
        let clear = ring_with(store.clone(), clock.clone(), Algorithm::ES256).await;
        let jwks = clear.jwks();
        let sealed_under = |store: Arc<dyn Store>| async move {
            store
                .signing_keys()
                .await
                .expect("keys")
                .iter()
                .map(|k| {
                    k.pkcs8
                        .expose()
                        .split('.')
                        .nth(1)
                        .unwrap_or("clear")
                        .to_owned()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(sealed_under(store.clone()).await, ["clear"]);
        let old = KeyRing::load_or_create(
            store.clone(),
            clock.clone(),
            sealed_config(dir.path(), 1, &[]),
        )
        .await
        .expect("ring with a KEK");
        assert_eq!(old.jwks(), jwks);
        assert_eq!(sealed_under(store.clone()).await, [kek_id(1)]);
        // Rotation: the new KEK seals, the old one opens.
        let rotating = KeyRing::load_or_create(
            store.clone(),
            clock.clone(),
            sealed_config(dir.path(), 2, &[1]),
        )
        .await
        .expect("ring during the rotation");
        assert_eq!(rotating.jwks(), jwks);
        assert_eq!(sealed_under(store.clone()).await, [kek_id(2)]);
        let done = KeyRing::load_or_create(
            store.clone(),
            clock.clone(),
            sealed_config(dir.path(), 2, &[]),
        )
        .await
        .expect("ring after the rotation");
        assert_eq!(done.jwks(), jwks);
        // Without its KEK, or with another one, a broker does not start, and says why.
        let e = ring_with_err(store.clone(), clock.clone(), config(Algorithm::ES256)).await;
        assert!(
            e.contains("signing.kek_file") && e.contains(&kek_id(2)),
            "{e}"
        );
        let e = ring_with_err(
            store.clone(),
            clock.clone(),
            sealed_config(dir.path(), 3, &[]),
        )
        .await;
        assert!(
            e.contains("other_kek_files") && e.contains(&kek_id(2)),
            "{e}"
        );
    }

    async fn ring_with_err(
        store: Arc<dyn Store>,
        clock: Arc<ManualClock>,
        c: SigningConfig,
    ) -> String {
        KeyRing::load_or_create(store, clock, c)
            .await
            .expect_err("no ring")
            .to_string()
    }

    #[tokio::test]
    async fn a_new_algorithm_signs_only_once_its_key_has_been_published_ahead() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::at_unix(T0));
        let es = ring_with(store.clone(), clock.clone(), Algorithm::ES256).await;
        let alg_of = |r: &KeyRing| {
            jsonwebtoken::decode_header(r.sign(&json!({"aud": "x"})).expect("sign"))
                .expect("header")
                .alg
        };
        assert_eq!(alg_of(&es), jsonwebtoken::Algorithm::ES256);

        clock.set(at(10)); // restarted with EdDSA configured
        let ed = ring_with(store.clone(), clock.clone(), Algorithm::EdDSA).await;
        assert!(
            ed.rotate_if_due().await.expect("rotate"),
            "an EdDSA key is made"
        );
        assert_eq!(published(&ed).len(), 2);
        assert_eq!(
            alg_of(&ed),
            jsonwebtoken::Algorithm::ES256,
            "the old key signs while the new one is only published"
        );
        clock.set(at(310));
        assert_eq!(alg_of(&ed), jsonwebtoken::Algorithm::EdDSA);
        assert!(!ed.rotate_if_due().await.expect("rotate"), "no more keys");
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
                active_from: SystemTime::UNIX_EPOCH,
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
