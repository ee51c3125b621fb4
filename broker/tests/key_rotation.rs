//! Signing key rotation seen by relying parties that cache the broker's JWKS as its
//! `Cache-Control` allows: the real broker over TLS, its clock moved by hand.
//!
//! Invariant (docs/SECURITY-MODEL.md): a relying party holding a JWKS it fetched within the
//! last `max-age` seconds never meets a `kid` it does not know, across rotations; and the
//! broker's own session tokens keep verifying across a rotation until they expire.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::JwkSet;
use lanyard::clock::{Clock as _, ManualClock, SystemClock, unix_seconds};
use lanyard_test_support::{TestBroker, TestBrokerOptions};
use serde_json::Value;

/// Rotation every hour, each key published ten minutes before it signs.
const ROTATE_AFTER: u64 = 3_600;
const PUBLISH_AHEAD: u64 = 600;
/// How far the clock moves between two issuances.
const STEP: u64 = 60;

/// A relying party that fetches `/v1/jwks` only when its cached copy is older than the
/// `max-age` the broker sent with it, and verifies tokens with that copy alone.
struct CachingVerifier {
    name: String,
    keys: JwkSet,
    fetched_at: SystemTime,
    max_age: Duration,
    fetches: usize,
}

impl CachingVerifier {
    async fn fetch(broker: &TestBroker, now: SystemTime, name: String) -> Self {
        let resp = broker
            .http()
            .get(format!("{}/v1/jwks", broker.url))
            .send()
            .await
            .expect("jwks request");
        assert_eq!(resp.status().as_u16(), 200);
        let cache_control = resp
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .expect("the JWKS says how long it may be cached")
            .to_owned();
        let max_age = cache_control
            .split(',')
            .find_map(|d| d.trim().strip_prefix("max-age="))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no max-age in `{cache_control}`"));
        assert_eq!(
            max_age,
            lanyard_broker::config::JWKS_MAX_AGE_SECONDS,
            "the header says the max-age the publish-ahead check is made against"
        );
        Self {
            name,
            keys: resp.json().await.expect("jwks json"),
            fetched_at: now,
            max_age: Duration::from_secs(max_age),
            fetches: 1,
        }
    }

    /// Refetches when the cached copy has expired, as an HTTP cache would.
    async fn refresh_if_stale(&mut self, broker: &TestBroker, now: SystemTime) {
        if now.duration_since(self.fetched_at).unwrap_or_default() >= self.max_age {
            let fetches = self.fetches;
            *self = Self::fetch(broker, now, self.name.clone()).await;
            self.fetches = fetches + 1;
        }
    }

    /// Verifies `token` (audience `aud`) with the cached keys only; returns its `kid`.
    fn verify(&self, token: &str, aud: &str, iss: &str, now: SystemTime) -> String {
        let header = jsonwebtoken::decode_header(token).expect("header");
        let kid = header.kid.expect("kid");
        let cached: Vec<&str> = self
            .keys
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.as_deref())
            .collect();
        let jwk = self.keys.find(&kid).unwrap_or_else(|| {
            panic!(
                "{}: unknown kid {kid} at {}; its JWKS, fetched at {} ({} s ago, cacheable {} s), holds {cached:?}",
                self.name,
                unix_seconds(now),
                unix_seconds(self.fetched_at),
                now.duration_since(self.fetched_at).unwrap_or_default().as_secs(),
                self.max_age.as_secs(),
            )
        });
        let mut v = jsonwebtoken::Validation::new(header.alg);
        v.validate_exp = false; // against the broker's clock, below, not the system's
        v.set_audience(&[aud]);
        v.set_issuer(&[iss]);
        let claims = jsonwebtoken::decode::<Value>(
            token,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key"),
            &v,
        )
        .unwrap_or_else(|e| panic!("{}: token with kid {kid} does not verify: {e}", self.name))
        .claims;
        assert!(
            claims["exp"].as_u64().expect("exp") > unix_seconds(now),
            "fresh token"
        );
        kid
    }
}

/// Issues `boot` with a session token; returns the role's JWT and the renewed session.
async fn fetch(broker: &TestBroker, session: &str) -> (String, String) {
    let (status, body) = broker.post_credentials(Some(session), "").await;
    assert_eq!(status, 200, "{body}");
    (
        body["credentials"][0]["data"]["token"]
            .as_str()
            .expect("token")
            .to_owned(),
        body["session"]["token"]
            .as_str()
            .expect("session")
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relying_parties_caching_the_jwks_never_meet_an_unknown_kid_across_rotations() {
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            extra_config: format!(
                "signing:\n  rotate_after_seconds: {ROTATE_AFTER}\n  publish_ahead_seconds: {PUBLISH_AHEAD}\n"
            ),
            clock: Some(clock.clone()),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let keys = broker.broker.keys().clone();
    let bootstrap = broker.mint(&["boot"], 300).await;
    let (_, mut session) = fetch(&broker, &bootstrap).await;

    // One relying party per step of its cache lifetime, each fetching on its own phase, so
    // whenever a key starts signing, one of them holds a JWKS fetched a step earlier.
    let phases = 300 / STEP;
    let mut verifiers = Vec::new();
    let mut signing_kids: Vec<String> = Vec::new();
    let mut sessions_at_switch: Vec<(String, SystemTime)> = Vec::new();
    let end = clock.now() + Duration::from_secs(2 * ROTATE_AFTER + 2 * PUBLISH_AHEAD);
    let mut step = 0;
    while clock.now() < end {
        let now = clock.now();
        // What the rotation task does every `reload_interval_seconds`.
        keys.rotate_if_due().await.expect("rotate");
        if step < phases {
            let name = format!("relying party {step}");
            verifiers.push(CachingVerifier::fetch(&broker, now, name).await);
        }
        for v in &mut verifiers {
            v.refresh_if_stale(&broker, now).await;
        }

        // The broker verifies the session token the previous step got (signed by the key
        // that signed then), and signs the role's token with the key that signs now.
        let previous_session = session.clone();
        let (token, renewed) = fetch(&broker, &session).await;
        session = renewed;
        let kids: Vec<String> = verifiers
            .iter()
            .map(|v| v.verify(&token, "boot", &broker.url, now))
            .collect();
        let kid = kids[0].clone();
        if signing_kids.last() != Some(&kid) {
            if !signing_kids.is_empty() {
                sessions_at_switch.push((previous_session, now));
            }
            signing_kids.push(kid);
        }
        clock.advance(Duration::from_secs(STEP));
        step += 1;
    }

    assert_eq!(
        signing_kids.len(),
        3,
        "two rotations were crossed: {signing_kids:?}"
    );
    assert!(
        verifiers.iter().all(|v| v.fetches >= 20),
        "each relying party refetched only on expiry"
    );
    // A session token signed by the old key just before a switch keeps working until it
    // expires (`bootstrap.session_ttl_seconds`, one hour by default).
    assert_eq!(sessions_at_switch.len(), 2);
    let (old_session, switched_at) = &sessions_at_switch[0];
    clock.set(*switched_at + Duration::from_secs(3_500));
    keys.rotate_if_due().await.expect("rotate");
    let (status, body) = broker.post_credentials(Some(old_session), "").await;
    assert_eq!(
        status, 200,
        "a session token from before the rotation: {body}"
    );
    clock.set(*switched_at + Duration::from_secs(3_600));
    let (status, _) = broker.post_credentials(Some(old_session), "").await;
    assert_eq!(status, 401, "and it ends when it expires");
    broker.stop().await;
}
