//! Session tokens: what a workload gets after redeeming a bootstrap token, so it can fetch
//! again without the spent token.
//!
//! A session token is a JWT the broker signs with its [`KeyRing`] (`iss` = the broker's public
//! URL, `aud` = [`SESSION_AUDIENCE`]) carrying the bootstrap binding in a `lanyard_session`
//! claim ([`SessionBinding`]). Each fetch with it returns a new one, valid for
//! `bootstrap.session_ttl_seconds` but never past `bootstrap.session_max_lifetime_seconds`
//! after the bootstrap token was redeemed.
//!
//! # Session ids
//! One bootstrap token buys at most one session (a re-redemption within the grace window is
//! the same session), so a session's id is derived from the token's: `bt_<16 hex>` redeems
//! into session `ss_<the same 16 hex>` ([`session_id_for`]). Every token of the session carries
//! it (`lanyard_session.session_id`), and revoking it ([`super::revocation`]) refuses all of
//! them. A token minted before session ids were put on the wire has no `session_id` claim; its
//! id is derived from its `token_id` the same way.

use std::time::{Duration, SystemTime};

use lanyard::clock::{rfc3339, unix_seconds};
use lanyard::wire::Session;
use serde::{Deserialize, Serialize};

use super::{AuthnError, BOOTSTRAP_ISSUER, BootstrapBinding, Identity};
use crate::config::BootstrapConfig;
use crate::issue::BackendError;
use crate::issue::jwt::KeyRing;

/// Audience of the session tokens the broker hands out after a bootstrap token is redeemed.
pub const SESSION_AUDIENCE: &str = "lanyard:session";

/// Prefix of a session id.
pub const SESSION_ID_PREFIX: &str = "ss_";

/// The id of the session bought by the bootstrap token `token_id` (`bt_<hex>` → `ss_<hex>`).
pub fn session_id_for(token_id: &str) -> String {
    let hex = token_id
        .strip_prefix(super::bootstrap::TOKEN_ID_PREFIX)
        .unwrap_or(token_id);
    format!("{SESSION_ID_PREFIX}{hex}")
}

/// The bootstrap token id a session id comes from, when `session_id` is well formed (`ss_` and
/// 16 lowercase hex digits); `None` otherwise.
pub fn token_id_of(session_id: &str) -> Option<String> {
    let hex = session_id.strip_prefix(SESSION_ID_PREFIX)?;
    let well_formed = hex.len() == 16
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    well_formed.then(|| format!("{}{hex}", super::bootstrap::TOKEN_ID_PREFIX))
}

/// The claims of a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The broker's public URL.
    pub iss: String,
    /// [`SESSION_AUDIENCE`].
    pub aud: String,
    /// The identity's subject, `bootstrap:<token id>`.
    pub sub: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not before (Unix seconds).
    pub nbf: u64,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// What the session is bound to.
    pub lanyard_session: SessionBinding,
}

/// The `lanyard_session` claim: the redeemed bootstrap token's binding and when it was
/// redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionBinding {
    /// The session's id ([`session_id_for`] of `token_id`); absent in tokens minted before
    /// session ids were on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The redeemed bootstrap token's public id.
    pub token_id: String,
    /// The roles it may be used for.
    pub roles: Vec<String>,
    /// The image digest it was bound to (`null` when none).
    pub image: Option<String>,
    /// When the bootstrap token was redeemed (Unix seconds): the session ends
    /// `session_max_lifetime_seconds` later.
    pub started_at: u64,
}

/// A verified session token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSession {
    /// The session's id.
    pub session_id: String,
    /// The bootstrap identity it carries (issuer [`BOOTSTRAP_ISSUER`]).
    pub identity: Identity,
    /// When the bootstrap token was redeemed.
    pub started: SystemTime,
}

/// Mints a session token for a bootstrap identity whose session started at `started`: valid
/// for `session_ttl_seconds` from `now`, but never past `session_max_lifetime_seconds` after
/// `started`. `None` when the identity did not come from a bootstrap token, or its session
/// has reached its end.
pub fn mint(
    keys: &KeyRing,
    issuer: &str,
    limits: &BootstrapConfig,
    identity: &Identity,
    started: SystemTime,
    now: SystemTime,
) -> Result<Option<Session>, BackendError> {
    let Some(binding) = &identity.bootstrap else {
        return Ok(None);
    };
    let hard_end = started + Duration::from_secs(limits.session_max_lifetime_seconds);
    let exp = (now + Duration::from_secs(limits.session_ttl_seconds)).min(hard_end);
    if exp <= now {
        return Ok(None);
    }
    let claims = SessionClaims {
        iss: issuer.to_owned(),
        aud: SESSION_AUDIENCE.to_owned(),
        sub: identity.subject.clone(),
        iat: unix_seconds(now),
        nbf: unix_seconds(now),
        exp: unix_seconds(exp),
        lanyard_session: SessionBinding {
            session_id: Some(session_id_for(&binding.token_id)),
            token_id: binding.token_id.clone(),
            roles: binding.roles.clone(),
            image: binding.image.clone(),
            started_at: unix_seconds(started),
        },
    };
    let token = keys.sign(&claims)?;
    Ok(Some(Session {
        token: lanyard::Secret::new(token),
        expires_at: rfc3339(exp),
    }))
}

/// Verifies a session token this broker signed as `issuer`: signature, `iss`, `aud`
/// ([`SESSION_AUDIENCE`]) and times by the key ring, then the claims' shape
/// ([`AuthnError::InvalidClaims`] when a field is missing or of the wrong type, or the
/// `session_id` is not the one its `token_id` gives). Whether the session was revoked is the
/// caller's to check ([`super::revocation`]).
pub fn verify(
    keys: &KeyRing,
    issuer: &str,
    token: &str,
    now: SystemTime,
) -> Result<VerifiedSession, AuthnError> {
    let claims = keys.verify(token, issuer, SESSION_AUDIENCE, now)?;
    let claims: SessionClaims = serde_json::from_value(claims)
        .map_err(|e| AuthnError::InvalidClaims(format!("session token: {e}")))?;
    let SessionBinding {
        session_id,
        token_id,
        roles,
        image,
        started_at,
    } = claims.lanyard_session;
    let derived = session_id_for(&token_id);
    if session_id.is_some_and(|id| id != derived) {
        return Err(AuthnError::InvalidClaims(
            "session token: session_id does not match token_id".into(),
        ));
    }
    // A session cannot have started after now: `started_at <= iat <= now` for every token
    // `mint` signs. Checked, so the time arithmetic here and in `mint` cannot overflow.
    if started_at > unix_seconds(now) {
        return Err(AuthnError::InvalidClaims(
            "session token: `started_at` is in the future".into(),
        ));
    }
    Ok(VerifiedSession {
        session_id: derived,
        identity: Identity {
            issuer: BOOTSTRAP_ISSUER.to_owned(),
            subject: format!("bootstrap:{token_id}"),
            kubernetes: None,
            bootstrap: Some(BootstrapBinding {
                token_id,
                roles,
                image,
            }),
            spiffe_id: None,
            claims: Default::default(),
        },
        started: SystemTime::UNIX_EPOCH + Duration::from_secs(started_at),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use lanyard::clock::{Clock, ManualClock, parse_rfc3339};
    use serde_json::{Value, json};

    use super::*;
    use crate::config::{Algorithm, SigningConfig};
    use crate::store::Store;
    use crate::store::memory::MemoryStore;

    const T0: u64 = 1_800_000_000;
    const ISS: &str = "https://broker.example";

    async fn ring(clock: Arc<ManualClock>) -> KeyRing {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        KeyRing::load_or_create(
            store,
            clock,
            SigningConfig {
                algorithm: Algorithm::ES256,
                rotate_after_seconds: 86_400,
                publish_ahead_seconds: 3_600,
                overlap_seconds: 3600,
                ..SigningConfig::default()
            },
        )
        .await
        .expect("key ring")
    }

    fn limits(ttl: u64, max: u64) -> BootstrapConfig {
        BootstrapConfig {
            default_ttl_seconds: 600,
            max_ttl_seconds: 86_400,
            session_ttl_seconds: ttl,
            session_max_lifetime_seconds: max,
            ..BootstrapConfig::default()
        }
    }

    fn bootstrap_identity(image: Option<&str>) -> Identity {
        Identity {
            issuer: BOOTSTRAP_ISSUER.into(),
            subject: "bootstrap:bt_1234".into(),
            kubernetes: None,
            bootstrap: Some(BootstrapBinding {
                token_id: "bt_1234".into(),
                roles: vec!["orders-read".into(), "db".into()],
                image: image.map(str::to_owned),
            }),
            spiffe_id: None,
            claims: Default::default(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn a_minted_session_verifies_to_the_same_identity() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let keys = ring(clock.clone()).await;
        for image in [None, Some("sha256:abcd")] {
            let identity = bootstrap_identity(image);
            let started = at(T0 - 100);
            let session = mint(
                &keys,
                ISS,
                &limits(900, 3600),
                &identity,
                started,
                clock.now(),
            )
            .expect("signs")
            .expect("a session");
            assert_eq!(session.expires_at, rfc3339(at(T0 + 900)));
            let verified =
                verify(&keys, ISS, session.token.expose(), clock.now()).expect("verifies");
            assert_eq!(verified.identity, identity);
            assert_eq!(verified.started, started);
            assert_eq!(verified.session_id, "ss_1234");
        }
    }

    #[tokio::test]
    async fn the_claims_have_their_wire_names_and_values() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let keys = ring(clock.clone()).await;
        let session = mint(
            &keys,
            ISS,
            &limits(900, 3600),
            &bootstrap_identity(None),
            at(T0 - 100),
            clock.now(),
        )
        .expect("signs")
        .expect("a session");
        let claims = keys
            .verify(session.token.expose(), ISS, SESSION_AUDIENCE, clock.now())
            .expect("verifies");
        assert_eq!(
            claims,
            json!({
                "iss": ISS,
                "aud": "lanyard:session",
                "sub": "bootstrap:bt_1234",
                "iat": T0,
                "nbf": T0,
                "exp": T0 + 900,
                "lanyard_session": {
                    "session_id": "ss_1234",
                    "token_id": "bt_1234",
                    "roles": ["orders-read", "db"],
                    "image": null,
                    "started_at": T0 - 100,
                }
            })
        );
    }

    #[tokio::test]
    async fn a_session_ends_at_its_hard_end() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let keys = ring(clock.clone()).await;
        let identity = bootstrap_identity(None);
        let started = at(T0 - 3000);
        // 600 s of the 3600 s maximum left: the token lives 600 s, not the 900 s TTL.
        let session = mint(
            &keys,
            ISS,
            &limits(900, 3600),
            &identity,
            started,
            clock.now(),
        )
        .expect("signs")
        .expect("a session");
        assert_eq!(
            parse_rfc3339(&session.expires_at),
            Some(at(T0 + 600)),
            "{}",
            session.expires_at
        );
        clock.advance(Duration::from_secs(599));
        verify(&keys, ISS, session.token.expose(), clock.now()).expect("valid until the end");
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            verify(&keys, ISS, session.token.expose(), clock.now()),
            Err(AuthnError::Expired)
        );
        // At the hard end no new session is minted.
        let minted = mint(
            &keys,
            ISS,
            &limits(900, 3600),
            &identity,
            started,
            clock.now(),
        )
        .expect("no signing needed");
        assert!(minted.is_none(), "past the hard end");
    }

    #[tokio::test]
    async fn only_bootstrap_identities_get_a_session() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let keys = ring(clock.clone()).await;
        let mut identity = bootstrap_identity(None);
        identity.bootstrap = None;
        let minted = mint(
            &keys,
            ISS,
            &limits(900, 3600),
            &identity,
            at(T0),
            clock.now(),
        )
        .expect("no signing needed");
        assert!(minted.is_none(), "not a bootstrap identity");
    }

    fn claims_with(session: Value) -> Value {
        json!({
            "iss": ISS,
            "aud": SESSION_AUDIENCE,
            "sub": "bootstrap:bt_1234",
            "iat": T0,
            "nbf": T0,
            "exp": T0 + 900,
            "lanyard_session": session,
        })
    }

    #[tokio::test]
    async fn missing_or_mistyped_session_fields_are_invalid_claims() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let keys = ring(clock.clone()).await;
        let good = json!({"token_id": "bt_1", "roles": ["a"], "image": null, "started_at": T0});
        let token = keys.sign(&claims_with(good.clone())).expect("signs");
        verify(&keys, ISS, &token, clock.now()).expect("the well-formed one verifies");

        let mut bad = vec![claims_with(Value::Null), {
            let mut c = claims_with(good.clone());
            c.as_object_mut().expect("object").remove("lanyard_session");
            c
        }];
        for (field, wrong) in [
            ("token_id", json!(7)),
            ("roles", json!("a")),
            ("roles", json!([1])),
            ("image", json!(["x"])),
            ("started_at", json!("yesterday")),
            ("started_at", json!(-1)),
        ] {
            let mut session = good.clone();
            session[field] = wrong;
            bad.push(claims_with(session));
        }
        for field in ["token_id", "roles", "started_at"] {
            let mut session = good.clone();
            session.as_object_mut().expect("object").remove(field);
            bad.push(claims_with(session));
        }
        for claims in bad {
            let token = keys.sign(&claims).expect("signs");
            let got = verify(&keys, ISS, &token, clock.now());
            assert!(
                matches!(got, Err(AuthnError::InvalidClaims(_))),
                "{claims}: {got:?}"
            );
        }
    }

    #[test]
    fn a_session_id_is_the_token_ids_hex_and_back() {
        let token_id = "bt_0123456789abcdef";
        assert_eq!(session_id_for(token_id), "ss_0123456789abcdef");
        assert_eq!(
            token_id_of("ss_0123456789abcdef").as_deref(),
            Some(token_id)
        );
        for bad in [
            "bt_0123456789abcdef",
            "ss_0123456789ABCDEF",
            "ss_0123456789abcde",
            "ss_0123456789abcdef0",
            "ss_../../etc/passwd0",
            "",
        ] {
            assert_eq!(token_id_of(bad), None, "{bad}");
        }
    }

    /// A session token minted before session ids were on the wire verifies, with the id its
    /// token id gives; a token whose id contradicts its token id is refused.
    #[tokio::test]
    async fn the_session_id_claim_is_optional_but_never_contradicts_the_token_id() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let keys = ring(clock.clone()).await;
        let old = json!({"token_id": "bt_1", "roles": ["a"], "image": null, "started_at": T0});
        let token = keys.sign(&claims_with(old.clone())).expect("signs");
        let verified = verify(&keys, ISS, &token, clock.now()).expect("an older token verifies");
        assert_eq!(verified.session_id, "ss_1");
        let mut forged = old;
        forged["session_id"] = json!("ss_2");
        let token = keys.sign(&claims_with(forged)).expect("signs");
        assert!(matches!(
            verify(&keys, ISS, &token, clock.now()),
            Err(AuthnError::InvalidClaims(_))
        ));
    }

    /// Found while writing the `session_token` fuzz target (whose signed-claims mode reaches
    /// it): a `started_at` near `u64::MAX` overflowed the `SystemTime` arithmetic (a panic)
    /// instead of being refused.
    #[tokio::test]
    async fn a_session_start_in_the_future_is_invalid_claims_not_a_panic() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let keys = ring(clock.clone()).await;
        for started_at in [T0 + 1, i64::MAX as u64, u64::MAX] {
            let session = json!({"token_id": "bt_1", "roles": ["a"], "image": null, "started_at": started_at});
            let token = keys.sign(&claims_with(session)).expect("signs");
            let got = verify(&keys, ISS, &token, clock.now());
            assert!(
                matches!(got, Err(AuthnError::InvalidClaims(_))),
                "{started_at}: {got:?}"
            );
        }
        // `started_at` == now (a session redeemed this second) is fine, and its refresh mints.
        let session = json!({"token_id": "bt_1", "roles": ["a"], "image": null, "started_at": T0});
        let token = keys.sign(&claims_with(session)).expect("signs");
        let verified = verify(&keys, ISS, &token, clock.now()).expect("verifies");
        assert_eq!(verified.started, at(T0));
    }

    #[tokio::test]
    async fn a_token_for_another_audience_or_issuer_is_refused() {
        let clock = Arc::new(ManualClock::at_unix(T0));
        let keys = ring(clock.clone()).await;
        let session = json!({"token_id": "bt_1", "roles": ["a"], "image": null, "started_at": T0});
        let mut claims = claims_with(session);
        claims["aud"] = json!("orders-read");
        let token = keys.sign(&claims).expect("signs");
        assert_eq!(
            verify(&keys, ISS, &token, clock.now()),
            Err(AuthnError::WrongAudience)
        );
        // A session token of another broker.
        let session = mint(
            &keys,
            "https://other-broker.example",
            &limits(900, 3600),
            &bootstrap_identity(None),
            at(T0),
            clock.now(),
        )
        .expect("signs")
        .expect("a session");
        assert_eq!(
            verify(&keys, ISS, session.token.expose(), clock.now()),
            Err(AuthnError::UntrustedIssuer)
        );
    }
}
