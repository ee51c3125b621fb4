//! The status of broker-signed JWTs for relying parties (issue 16): a revocation list
//! published beside the JWKS, and RFC 7662 introspection.
//!
//! # The revocation list (`GET /v1/jwks/revoked`)
//! A JSON document, defined here and in `docs/API.md`:
//! ```json
//! {"iss": "https://lanyard.example", "updated_at": 1800000000, "max_age_seconds": 30,
//!  "revoked": [{"jti": "ls_…", "exp": 1800000600}]}
//! ```
//! One entry per revoked `jwt` lease whose JWT has not expired: its `jti` (the lease id) and
//! `exp`. An entry drops out once its JWT expires (a relying party refuses an expired JWT
//! anyway), so the list holds the JWTs revoked within the longest `jwt` role lifetime, and
//! never more than `revocation.list_max_entries`: past that bound the list is not served (503,
//! so relying parties fail closed instead of trusting a list that misses entries). Entries are
//! sorted by `exp`, then `jti`. The broker reads the list from the store (so a revocation made
//! through any replica is in it) at most every `revocation.list_max_age_seconds`, and at once
//! after a revocation through this broker; relying parties may cache it that long
//! (`Cache-Control: max-age`).
//!
//! # Introspection (`POST /v1/introspect`, RFC 7662)
//! A relying party that prefers asking to caching posts `token=<JWT>`
//! (`application/x-www-form-urlencoded`) with its own credential as the bearer token (any
//! identity the broker accepts, or the admin token): anonymous callers are refused (401),
//! so the endpoint cannot be used to probe tokens. The answer is `{"active": true, …claims}`
//! only for a JWT this broker signed, within its lifetime, whose lease is in the store and not
//! revoked — read from the store at each call, so a revocation anywhere is seen at once.
//! Anything else is `{"active": false}` with nothing more, whatever the reason.
//!
//! The decisions are pure functions ([`list_document`], [`introspection`],
//! [`parse_introspection_form`]).

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use lanyard::clock::unix_seconds;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::store::LeaseRecord;

/// Largest introspection request body read, in bytes (a JWT the broker signs is far smaller).
pub const MAX_INTROSPECTION_BODY: usize = 16 * 1024;

/// Builds the revocation list document from the entries read from the store: `(jti, exp)`,
/// soonest expiry first. Entries already expired at `now` are left out.
pub fn list_document(
    issuer: &str,
    entries: &[(String, SystemTime)],
    now: SystemTime,
    max_age: Duration,
) -> Value {
    let revoked: Vec<Value> = entries
        .iter()
        .filter(|(_, exp)| *exp > now)
        .map(|(jti, exp)| json!({"jti": jti, "exp": unix_seconds(*exp)}))
        .collect();
    json!({
        "iss": issuer,
        "updated_at": unix_seconds(now),
        "max_age_seconds": max_age.as_secs(),
        "revoked": revoked,
    })
}

/// Why the list cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// More running revoked JWTs than `revocation.list_max_entries`.
    #[error(
        "the revocation list holds more than {0} entries (revocation.list_max_entries); it is \
         not served until enough revoked JWTs expire — use POST /v1/introspect meanwhile"
    )]
    Overflow(usize),
}

/// One built list, with when the store read behind it started.
#[derive(Debug)]
struct Built {
    body: std::sync::Arc<Vec<u8>>,
    taken: Instant,
    /// Bumped by [`RevocationList::invalidate`]; a list built before is not served.
    generation: u64,
}

/// The list as this broker serves it: rebuilt from the store when older than its max age or
/// after a revocation through this broker.
#[derive(Debug)]
pub struct RevocationList {
    max_age: Duration,
    max_entries: usize,
    state: Mutex<(Option<Built>, u64)>,
}

impl RevocationList {
    /// A list rebuilt at most every `max_age`, of at most `max_entries`.
    pub fn new(max_age: Duration, max_entries: usize) -> Self {
        Self {
            max_age,
            max_entries,
            state: Mutex::new((None, 0)),
        }
    }

    /// How long relying parties may cache it.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The bound on entries.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Built>, u64)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current body if it is fresh: built at the current generation, within the max age.
    pub fn current(&self) -> Option<std::sync::Arc<Vec<u8>>> {
        let state = self.lock();
        let generation = state.1;
        state
            .0
            .as_ref()
            .filter(|b| b.generation == generation && b.taken.elapsed() < self.max_age)
            .map(|b| b.body.clone())
    }

    /// The generation to build at, and when the read starts: pass both to [`Self::store`].
    pub fn begin(&self) -> (u64, Instant) {
        (self.lock().1, Instant::now())
    }

    /// Keeps a body built from a read that started at `taken` under `generation`, unless a
    /// revocation came meanwhile (it is then served once but not kept).
    pub fn store(&self, body: Vec<u8>, generation: u64, taken: Instant) -> std::sync::Arc<Vec<u8>> {
        let body = std::sync::Arc::new(body);
        let mut state = self.lock();
        if state.1 == generation {
            state.0 = Some(Built {
                body: body.clone(),
                taken,
                generation,
            });
        }
        body
    }

    /// A JWT was revoked through this broker: the next request reads the store again.
    pub fn invalidate(&self) {
        let mut state = self.lock();
        state.1 = state.1.wrapping_add(1);
    }

    /// Checks the entries read against the bound; `entries` was read with a limit of
    /// `max_entries + 1`.
    pub fn check_bound(&self, entries: usize) -> Result<(), ListError> {
        if entries > self.max_entries {
            Err(ListError::Overflow(self.max_entries))
        } else {
            Ok(())
        }
    }
}

/// The token of an RFC 7662 request: the `token` parameter of a form body. Other parameters
/// (`token_type_hint`) are ignored; a body without exactly one `token`, or above
/// [`MAX_INTROSPECTION_BODY`], or not UTF-8, is refused with the reason.
pub fn parse_introspection_form(body: &[u8]) -> Result<String, String> {
    if body.len() > MAX_INTROSPECTION_BODY {
        return Err(format!(
            "request body larger than {MAX_INTROSPECTION_BODY} bytes"
        ));
    }
    if std::str::from_utf8(body).is_err() {
        return Err("the body is not UTF-8; send token=<JWT> form-encoded".into());
    }
    let mut token = None;
    for (name, value) in url::form_urlencoded::parse(body) {
        if name == "token" {
            if token.is_some() {
                return Err("`token` appears more than once".into());
            }
            token = Some(value.into_owned());
        }
    }
    match token {
        Some(t) if !t.is_empty() => Ok(t),
        _ => Err(
            "missing `token`; send token=<JWT> as application/x-www-form-urlencoded (RFC 7662)"
                .into(),
        ),
    }
}

/// The answer to an introspection: `claims` of a JWT this broker signed and verified (in its
/// lifetime), and the lease its `jti` names (if the store holds it). Active only when the
/// lease is a `jwt` lease, not revoked, not expired at `now`, and issued to the JWT's subject;
/// an inactive answer says nothing else (RFC 7662 §2.2).
pub fn introspection(claims: &Value, lease: Option<&LeaseRecord>, now: SystemTime) -> Value {
    let inactive = json!({"active": false});
    let Some(lease) = lease else {
        return inactive;
    };
    if lease.backend != super::jwt::KIND
        || lease.revoked_at.is_some()
        || lease.expires_at <= now
        || claims.get("sub").and_then(Value::as_str) != Some(lease.subject.as_str())
        || claims.get("jti").and_then(Value::as_str) != Some(lease.lease_id.as_str())
    {
        return inactive;
    }
    let mut out = json!({"active": true, "token_type": "Bearer"});
    if let Some(obj) = out.as_object_mut() {
        for name in ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "scope"] {
            if let Some(v) = claims.get(name) {
                obj.insert(name.to_owned(), v.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn lease(id: &str) -> LeaseRecord {
        LeaseRecord {
            lease_id: id.into(),
            role: "app".into(),
            backend: "jwt".into(),
            subject: "system:serviceaccount:shop:api".into(),
            issuer: "https://k8s".into(),
            issued_at: at(1_000),
            expires_at: at(1_600),
            upstream_lease: None,
            fingerprint: "fp".into(),
            revoked_at: None,
            renew_step_secs: None,
            pod_uid: None,
        }
    }

    fn claims(id: &str) -> Value {
        json!({"iss": "https://b", "sub": "system:serviceaccount:shop:api", "aud": "app",
               "iat": 1_000, "nbf": 1_000, "exp": 1_600, "jti": id,
               "lanyard": {"role": "app"}})
    }

    #[test]
    fn the_list_holds_jti_and_exp_of_running_jwts_only() {
        let entries = vec![
            ("ls_gone".to_owned(), at(1_000)),
            ("ls_a".to_owned(), at(1_500)),
            ("ls_b".to_owned(), at(1_700)),
        ];
        let doc = list_document("https://b", &entries, at(1_000), Duration::from_secs(30));
        assert_eq!(
            doc,
            json!({"iss": "https://b", "updated_at": 1_000, "max_age_seconds": 30,
                   "revoked": [{"jti": "ls_a", "exp": 1_500}, {"jti": "ls_b", "exp": 1_700}]})
        );
    }

    #[test]
    fn the_bound_refuses_one_entry_more() {
        let list = RevocationList::new(Duration::from_secs(30), 2);
        assert_eq!(list.check_bound(2), Ok(()));
        assert_eq!(list.check_bound(3), Err(ListError::Overflow(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_built_list_is_served_until_its_max_age_or_a_local_revocation() {
        let list = RevocationList::new(Duration::from_secs(30), 10);
        assert!(list.current().is_none());
        let (generation, taken) = list.begin();
        list.store(b"one".to_vec(), generation, taken);
        assert_eq!(
            list.current().as_deref().map(Vec::as_slice),
            Some(&b"one"[..])
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(list.current().is_none(), "too old");
        let (generation, taken) = list.begin();
        list.store(b"two".to_vec(), generation, taken);
        list.invalidate();
        assert!(list.current().is_none(), "a revocation came");
        // A build that began before a revocation is served once, not kept.
        let (generation, taken) = list.begin();
        list.invalidate();
        let body = list.store(b"three".to_vec(), generation, taken);
        assert_eq!(body.as_slice(), b"three");
        assert!(list.current().is_none());
    }

    #[test]
    fn the_form_needs_exactly_one_token() {
        assert_eq!(
            parse_introspection_form(b"token=a.b.c&token_type_hint=access_token"),
            Ok("a.b.c".to_owned())
        );
        assert_eq!(
            parse_introspection_form(b"token=a%2Eb"),
            Ok("a.b".to_owned())
        );
        for bad in [&b""[..], b"token=", b"tok=1", b"token=a&token=b", b"\xff"] {
            assert!(parse_introspection_form(bad).is_err(), "{bad:?}");
        }
        let big = vec![b'a'; MAX_INTROSPECTION_BODY + 1];
        assert!(parse_introspection_form(&big).is_err());
    }

    #[test]
    fn only_a_running_unrevoked_jwt_lease_of_the_same_subject_is_active() {
        let now = at(1_100);
        let active = introspection(&claims("ls_1"), Some(&lease("ls_1")), now);
        assert_eq!(active["active"], true);
        assert_eq!(active["sub"], "system:serviceaccount:shop:api");
        assert_eq!(active["jti"], "ls_1");
        assert_eq!(active["exp"], 1_600);
        assert!(active.get("lanyard").is_none(), "only the standard claims");

        let inactive = json!({"active": false});
        assert_eq!(introspection(&claims("ls_1"), None, now), inactive);
        let mut revoked = lease("ls_1");
        revoked.revoked_at = Some(at(1_050));
        assert_eq!(
            introspection(&claims("ls_1"), Some(&revoked), now),
            inactive
        );
        assert_eq!(
            introspection(&claims("ls_1"), Some(&lease("ls_1")), at(1_600)),
            inactive
        );
        let mut vault = lease("ls_1");
        vault.backend = "vault".into();
        assert_eq!(introspection(&claims("ls_1"), Some(&vault), now), inactive);
        let mut other = lease("ls_1");
        other.subject = "someone-else".into();
        assert_eq!(introspection(&claims("ls_1"), Some(&other), now), inactive);
        assert_eq!(
            introspection(&claims("ls_2"), Some(&lease("ls_1")), now),
            inactive
        );
    }
}
