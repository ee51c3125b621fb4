//! Bootstrap tokens: random 256-bit bearer tokens, stored only as their SHA-256, bound at mint
//! time to roles (and optionally an image digest), redeemable exactly once before they expire.
//!
//! A token is `lbt_` followed by the unpadded base64url of 32 random bytes. Its public id
//! (`bt_` + 16 hex) is what logs, audit records and revocation use.

use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard::Secret;
use lanyard::clock::{Clock, unix_seconds};
use zeroize::Zeroizing;

use super::{AuthnError, BOOTSTRAP_ISSUER, BootstrapBinding, Identity};
use crate::store::{BootstrapTokenRecord, RedeemOutcome, Store, StoreError};

/// Prefix of every bootstrap token (`lbt_` + 43 base64url characters = 256 random bits).
pub const TOKEN_PREFIX: &str = "lbt_";

/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;

/// Length of a token: the prefix plus unpadded base64url of [`TOKEN_BYTES`].
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + (TOKEN_BYTES * 4).div_ceil(3);

/// Prefix of a token's public id.
pub const TOKEN_ID_PREFIX: &str = "bt_";

/// A freshly minted token. The only time the token itself exists outside the caller.
#[derive(Debug)]
pub struct MintedToken {
    /// Public id.
    pub token_id: String,
    /// The token.
    pub token: Secret,
    /// Redeemable until.
    pub expires_at: SystemTime,
}

/// Why minting failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The request is invalid (no roles, zero TTL, malformed image digest): the caller's
    /// fault (400). The message says what is expected.
    #[error("invalid bootstrap token request: {0}")]
    Invalid(String),
    /// The system random number generator failed (500).
    #[error("the system random number generator failed")]
    Random,
    /// The store failed (500/503).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a redemption failed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// The token was refused (unknown, expired, reused, malformed). Answer with an opaque 401.
    #[error("{error}")]
    Rejected {
        /// Why, for the audit log and metrics.
        error: AuthnError,
        /// The token's public id, when the token was known.
        token_id: Option<String>,
    },
    /// The store failed: not the caller's fault (500/503).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether a bearer credential is shaped like a bootstrap token (vs a JWT).
pub fn looks_like_bootstrap_token(s: &str) -> bool {
    s.starts_with(TOKEN_PREFIX)
}

/// Hex SHA-256 of the whole token string: what the store keeps instead of the token.
pub fn hash_token(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// Whether `token` has exactly the shape [`mint`] produces: the prefix, then 43 base64url
/// characters that decode (canonically) to 32 bytes.
fn well_formed(token: &str) -> bool {
    if token.len() != TOKEN_LEN {
        return false;
    }
    let Some(body) = token.strip_prefix(TOKEN_PREFIX) else {
        return false;
    };
    let mut buf = Zeroizing::new([0u8; TOKEN_BYTES + 3]);
    matches!(
        URL_SAFE_NO_PAD.decode_slice(body, &mut buf[..]),
        Ok(n) if n == TOKEN_BYTES
    )
}

/// Whether `image` is a digest reference `sha256:` + 64 lowercase hex.
fn valid_image_digest(image: &str) -> bool {
    image.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn validate(roles: &[String], ttl: Duration, image: Option<&str>) -> Result<(), MintError> {
    if roles.is_empty() {
        return Err(MintError::Invalid(
            "no roles: a bootstrap token must grant at least one role".to_owned(),
        ));
    }
    if let Some(i) = roles.iter().position(|r| r.trim().is_empty()) {
        return Err(MintError::Invalid(format!(
            "role #{} is empty: give each role's name",
            i + 1
        )));
    }
    if ttl < Duration::from_secs(1) {
        return Err(MintError::Invalid(
            "ttl must be at least 1 second".to_owned(),
        ));
    }
    if let Some(image) = image
        && !valid_image_digest(image)
    {
        // The value is not a secret, but it is caller input: say its length, not echo it.
        return Err(MintError::Invalid(format!(
            "image must be a digest of the form `sha256:` followed by 64 lowercase hex \
             characters (got {} characters)",
            image.len()
        )));
    }
    Ok(())
}

/// Mints a token bound to `roles` (and `image`), redeemable for `ttl`.
pub async fn mint(
    store: &dyn Store,
    clock: &dyn Clock,
    roles: Vec<String>,
    ttl: Duration,
    image: Option<String>,
) -> Result<MintedToken, MintError> {
    validate(&roles, ttl, image.as_deref())?;

    let rng = SystemRandom::new();
    let mut raw = Zeroizing::new([0u8; TOKEN_BYTES]);
    rng.fill(&mut raw[..]).map_err(|_| MintError::Random)?;
    let mut id = [0u8; 8];
    rng.fill(&mut id).map_err(|_| MintError::Random)?;

    let token = Secret::new(format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(&raw[..])
    ));
    let token_id = format!("{TOKEN_ID_PREFIX}{}", hex::encode(id));
    // Whole seconds, as the store keeps them, so what we return is what gets enforced.
    let created_at = SystemTime::UNIX_EPOCH + Duration::from_secs(unix_seconds(clock.now()));
    let expires_at = created_at
        .checked_add(Duration::from_secs(ttl.as_secs()))
        .ok_or_else(|| MintError::Invalid("ttl is too large".to_owned()))?;

    store
        .insert_bootstrap_token(&BootstrapTokenRecord {
            token_id: token_id.clone(),
            token_hash: hash_token(token.expose()),
            roles,
            image,
            created_at,
            expires_at,
        })
        .await?;
    tracing::info!(token_id = %token_id, expires_at = unix_seconds(expires_at), "bootstrap token minted");
    Ok(MintedToken {
        token_id,
        token,
        expires_at,
    })
}

/// Redeems a token. On failure the caller answers every [`RedeemError::Rejected`] with the same
/// opaque 401 and records the reason and the token id (when known) in the audit log.
pub async fn redeem(
    store: &dyn Store,
    clock: &dyn Clock,
    token: &str,
) -> Result<Identity, RedeemError> {
    if !well_formed(token) {
        return Err(RedeemError::Rejected {
            error: AuthnError::UnknownToken,
            token_id: None,
        });
    }
    let rejected = |error, rec: BootstrapTokenRecord| RedeemError::Rejected {
        error,
        token_id: Some(rec.token_id),
    };
    match store
        .redeem_bootstrap_token(&hash_token(token), clock.now())
        .await?
    {
        RedeemOutcome::Redeemed(rec) => Ok(Identity {
            issuer: BOOTSTRAP_ISSUER.to_owned(),
            subject: format!("bootstrap:{}", rec.token_id),
            kubernetes: None,
            bootstrap: Some(BootstrapBinding {
                token_id: rec.token_id,
                roles: rec.roles,
                image: rec.image,
            }),
        }),
        RedeemOutcome::Unknown => Err(RedeemError::Rejected {
            error: AuthnError::UnknownToken,
            token_id: None,
        }),
        RedeemOutcome::Expired(rec) => Err(rejected(AuthnError::TokenExpired, rec)),
        RedeemOutcome::AlreadyUsed(rec) => Err(rejected(AuthnError::TokenReused, rec)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lanyard::clock::ManualClock;

    use super::*;
    use crate::store::sqlite::SqliteStore;

    const IMAGE: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn roles() -> Vec<String> {
        vec!["db-read".to_owned()]
    }

    fn rejected(r: Result<Identity, RedeemError>) -> (AuthnError, Option<String>) {
        match r {
            Err(RedeemError::Rejected { error, token_id }) => (error, token_id),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn minted_token_redeems_to_a_bound_identity() {
        let store = SqliteStore::open_in_memory().expect("store");
        let clock = ManualClock::at_unix(1_700_000_000);
        let minted = mint(
            &store,
            &clock,
            vec!["db-read".to_owned(), "queue".to_owned()],
            Duration::from_secs(600),
            Some(IMAGE.to_owned()),
        )
        .await
        .expect("mint");

        assert_eq!(minted.token.len(), TOKEN_LEN);
        assert!(looks_like_bootstrap_token(minted.token.expose()));
        assert!(minted.token_id.starts_with("bt_") && minted.token_id.len() == 19);
        assert_eq!(unix_seconds(minted.expires_at), 1_700_000_600);
        assert!(!format!("{minted:?}").contains(minted.token.expose()));

        clock.advance(Duration::from_secs(599));
        let id = redeem(&store, &clock, minted.token.expose())
            .await
            .expect("redeem");
        assert_eq!(
            id,
            Identity {
                issuer: BOOTSTRAP_ISSUER.to_owned(),
                subject: format!("bootstrap:{}", minted.token_id),
                kubernetes: None,
                bootstrap: Some(BootstrapBinding {
                    token_id: minted.token_id.clone(),
                    roles: vec!["db-read".to_owned(), "queue".to_owned()],
                    image: Some(IMAGE.to_owned()),
                }),
            }
        );
    }

    #[tokio::test]
    async fn second_redemption_is_reuse() {
        let store = SqliteStore::open_in_memory().expect("store");
        let clock = ManualClock::at_unix(1_000);
        let m = mint(&store, &clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        let id = redeem(&store, &clock, m.token.expose())
            .await
            .expect("first");
        assert_eq!(id.bootstrap.expect("binding").image, None);
        let (err, tid) = rejected(redeem(&store, &clock, m.token.expose()).await);
        assert_eq!(err, AuthnError::TokenReused);
        assert_eq!(tid.as_deref(), Some(m.token_id.as_str()));
    }

    #[tokio::test]
    async fn expired_token_is_refused_with_its_id() {
        let store = SqliteStore::open_in_memory().expect("store");
        let clock = ManualClock::at_unix(1_000);
        let m = mint(&store, &clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        clock.advance(Duration::from_secs(60));
        let (err, tid) = rejected(redeem(&store, &clock, m.token.expose()).await);
        assert_eq!(err, AuthnError::TokenExpired);
        assert_eq!(tid.as_deref(), Some(m.token_id.as_str()));
    }

    #[tokio::test]
    async fn unknown_and_revoked_tokens_are_unknown() {
        let store = SqliteStore::open_in_memory().expect("store");
        let clock = ManualClock::at_unix(1_000);
        let stranger = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert_eq!(
            rejected(redeem(&store, &clock, &stranger).await),
            (AuthnError::UnknownToken, None)
        );

        let m = mint(&store, &clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        assert!(
            store
                .revoke_bootstrap_token(&m.token_id)
                .await
                .expect("revoke")
        );
        assert_eq!(
            rejected(redeem(&store, &clock, m.token.expose()).await),
            (AuthnError::UnknownToken, None)
        );
    }

    /// A store that fails every call, to prove malformed tokens never reach the store and
    /// that store failures are not reported as the caller's fault.
    #[derive(Debug)]
    struct FailingStore(SqliteStore);

    #[async_trait::async_trait]
    impl Store for FailingStore {
        async fn insert_bootstrap_token(&self, r: &BootstrapTokenRecord) -> Result<(), StoreError> {
            self.0.insert_bootstrap_token(r).await
        }
        async fn redeem_bootstrap_token(
            &self,
            _: &str,
            _: SystemTime,
        ) -> Result<RedeemOutcome, StoreError> {
            Err(StoreError::Backend("database is locked".to_owned()))
        }
        async fn revoke_bootstrap_token(&self, _: &str) -> Result<bool, StoreError> {
            unreachable!()
        }
        async fn insert_lease(&self, _: &crate::store::LeaseRecord) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn get_lease(
            &self,
            _: &str,
        ) -> Result<Option<crate::store::LeaseRecord>, StoreError> {
            unreachable!()
        }
        async fn expired_leases(
            &self,
            _: &str,
            _: SystemTime,
            _: usize,
        ) -> Result<Vec<crate::store::LeaseRecord>, StoreError> {
            unreachable!()
        }
        async fn mark_lease_revoked(&self, _: &str, _: SystemTime) -> Result<bool, StoreError> {
            unreachable!()
        }
        async fn signing_keys(&self) -> Result<Vec<crate::store::SigningKeyRecord>, StoreError> {
            unreachable!()
        }
        async fn insert_signing_key(
            &self,
            _: &crate::store::SigningKeyRecord,
        ) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn delete_signing_key(&self, _: &str) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn audit_head(&self) -> Result<Option<crate::store::ChainHead>, StoreError> {
            unreachable!()
        }
        async fn set_audit_head(&self, _: &crate::store::ChainHead) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn local_secret(&self, _: &str, _: usize) -> Result<Secret, StoreError> {
            unreachable!()
        }
    }

    #[tokio::test]
    async fn malformed_tokens_are_refused_without_a_lookup() {
        let store = FailingStore(SqliteStore::open_in_memory().expect("store"));
        let clock = ManualClock::at_unix(1_000);
        let good_body = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let mut non_canonical = good_body.clone();
        // The last character carries 2 unused bits; a set bit is not a canonical encoding.
        non_canonical.pop();
        non_canonical.push('B');
        let cases = [
            String::new(),
            TOKEN_PREFIX.to_owned(),
            good_body.clone(),
            format!("lbx_{good_body}"),
            format!("{TOKEN_PREFIX}{}", &good_body[1..]),
            format!("{TOKEN_PREFIX}{good_body}A"),
            format!("{TOKEN_PREFIX}{good_body}="),
            format!("{TOKEN_PREFIX}{}+", &good_body[1..]),
            format!("{TOKEN_PREFIX}{}/", &good_body[1..]),
            format!("{TOKEN_PREFIX}{}é", &good_body[2..]),
            format!("{TOKEN_PREFIX}{non_canonical}"),
            format!("{TOKEN_PREFIX}{}", "A".repeat(10_000)),
        ];
        for bad in &cases {
            assert_eq!(
                rejected(redeem(&store, &clock, bad).await),
                (AuthnError::UnknownToken, None),
                "{bad:?}"
            );
        }
        // The well-formed one does reach the store, whose failure is not the caller's fault.
        let good = format!("{TOKEN_PREFIX}{good_body}");
        assert!(matches!(
            redeem(&store, &clock, &good).await,
            Err(RedeemError::Store(StoreError::Backend(_)))
        ));
    }

    #[tokio::test]
    async fn mint_validates_its_inputs() {
        let store = SqliteStore::open_in_memory().expect("store");
        let clock = ManualClock::at_unix(1_000);
        let ttl = Duration::from_secs(60);
        let invalid = |r: Result<MintedToken, MintError>| match r {
            Err(MintError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        };

        let m = invalid(mint(&store, &clock, vec![], ttl, None).await);
        assert!(m.contains("at least one role"), "{m}");
        let m = invalid(mint(&store, &clock, vec![" ".to_owned()], ttl, None).await);
        assert!(m.contains("empty"), "{m}");
        let m = invalid(mint(&store, &clock, roles(), Duration::from_millis(999), None).await);
        assert!(m.contains("1 second"), "{m}");
        for image in [
            "latest",
            "sha256:abc",
            &IMAGE.to_uppercase(),
            &format!("{IMAGE}0"),
            &IMAGE.replace("sha256:", "sha512:"),
        ] {
            let m = invalid(mint(&store, &clock, roles(), ttl, Some(image.to_owned())).await);
            assert!(m.contains("`sha256:` followed by 64 lowercase hex"), "{m}");
        }
        // Nothing was stored by the refused requests.
        assert!(
            !store
                .revoke_bootstrap_token("bt_0000000000000000")
                .await
                .expect("store works")
        );
        mint(
            &store,
            &clock,
            roles(),
            Duration::from_secs(1),
            Some(IMAGE.to_owned()),
        )
        .await
        .expect("the minimum is fine");
    }

    #[tokio::test]
    async fn tokens_and_ids_are_unique() {
        let store = SqliteStore::open_in_memory().expect("store");
        let clock = ManualClock::at_unix(1_000);
        let mut tokens = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..50 {
            let m = mint(&store, &clock, roles(), Duration::from_secs(60), None)
                .await
                .expect("mint");
            assert!(well_formed(m.token.expose()));
            tokens.insert(m.token.expose().to_owned());
            ids.insert(m.token_id);
        }
        assert_eq!((tokens.len(), ids.len()), (50, 50));
    }

    #[test]
    fn hash_is_hex_sha256_of_the_whole_token() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(hash_token("lbt_a"), hash_token("a"));
    }

    #[tokio::test]
    async fn database_file_holds_the_hash_never_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let store = SqliteStore::open(&path).expect("store");
        let clock = ManualClock::at_unix(1_000);
        let m = mint(&store, &clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        let token = m.token.expose().to_owned();
        let body = &token[TOKEN_PREFIX.len()..];
        let hash = hash_token(&token);

        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir.path()).expect("read dir") {
            bytes.extend(std::fs::read(entry.expect("entry").path()).expect("read"));
        }
        let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(contains(hash.as_bytes()), "the hash should be stored");
        assert!(contains(m.token_id.as_bytes()), "the id should be stored");
        assert!(!contains(token.as_bytes()), "the token must not be stored");
        assert!(
            !contains(body.as_bytes()),
            "the token body must not be stored"
        );
    }

    async fn race(stores: Vec<Arc<dyn Store>>) {
        let clock = Arc::new(ManualClock::at_unix(1_000));
        let m = mint(&*stores[0], &*clock, roles(), Duration::from_secs(60), None)
            .await
            .expect("mint");
        let token = Arc::new(m.token);
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let store = Arc::clone(&stores[i % stores.len()]);
                let clock = Arc::clone(&clock);
                let token = Arc::clone(&token);
                tokio::spawn(async move { redeem(&*store, &*clock, token.expose()).await })
            })
            .collect();
        let (mut won, mut reused) = (0, 0);
        for t in tasks {
            match t.await.expect("join") {
                Ok(id) => {
                    assert_eq!(id.subject, format!("bootstrap:{}", m.token_id));
                    won += 1;
                }
                Err(RedeemError::Rejected {
                    error: AuthnError::TokenReused,
                    token_id,
                }) => {
                    assert_eq!(token_id.as_deref(), Some(m.token_id.as_str()));
                    reused += 1;
                }
                Err(other) => panic!("unexpected: {other:?}"),
            }
        }
        assert_eq!((won, reused), (1, 99));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hundred_racers_one_store_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("lanyard.db")).expect("store");
        race(vec![Arc::new(store)]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hundred_racers_four_handles_on_one_file_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lanyard.db");
        let stores: Vec<Arc<dyn Store>> = (0..4)
            .map(|_| Arc::new(SqliteStore::open(&path).expect("store")) as Arc<dyn Store>)
            .collect();
        race(stores).await;
    }
}
