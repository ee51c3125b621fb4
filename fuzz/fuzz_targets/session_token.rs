//! Session tokens (`authn::session::verify`, then `session::mint` for the refresh), the
//! bearer a workload presents after redeeming a bootstrap token.
//!
//! Two ways in, chosen by the first byte:
//! - as sent: any bytes as the bearer. Nothing the fuzzer makes can carry this broker's
//!   signature, so it must be refused, never panic.
//! - as signed: claims built from the input (each field valid, hostile or missing) and signed
//!   by the broker's own key, as a buggy or older broker sharing the key could have signed
//!   them. Verification must refuse or accept them without a panic, an accepted session must
//!   carry exactly the signed binding, and its refresh (`mint`) must not panic either.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use lanyard::clock::ManualClock;
use lanyard_broker::authn::session::{self, SESSION_AUDIENCE};
use lanyard_broker::config::{Algorithm, BootstrapConfig, SigningConfig};
use lanyard_broker::issue::jwt::KeyRing;
use lanyard_broker::store::memory::MemoryStore;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use serde_json::{Value, json};

const ISS: &str = "https://broker.example";
const NOW: u64 = 1_800_000_000;

fn keys() -> &'static KeyRing {
    static KEYS: OnceLock<KeyRing> = OnceLock::new();
    KEYS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime
            .block_on(KeyRing::load_or_create(
                Arc::new(MemoryStore::new()),
                Arc::new(ManualClock::at_unix(NOW)),
                SigningConfig {
                    algorithm: Algorithm::ES256,
                    rotate_after_seconds: 86_400,
                    publish_ahead_seconds: 3_600,
                    overlap_seconds: 3_600,
                    ..SigningConfig::default()
                },
            ))
            .expect("key ring")
    })
}

/// A number claim: a time near now, any u64, or a value of the wrong type.
fn number(u: &mut Unstructured<'_>, near: u64) -> Result<Option<Value>> {
    Ok(match u.int_in_range(0..=6)? {
        0 => None,
        1 => Some(json!(near)),
        2 => Some(json!(near.wrapping_add(u64::from(u.arbitrary::<u16>()?)))),
        3 => Some(json!(near.saturating_sub(u64::from(u.arbitrary::<u16>()?)))),
        4 => Some(json!(u.arbitrary::<u64>()?)),
        5 => Some(json!(u.arbitrary::<f64>()?)),
        _ => Some(json!(u.arbitrary::<String>()?)),
    })
}

fn text(u: &mut Unstructured<'_>, valid: &str) -> Result<Option<Value>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => None,
        1 => Some(json!(valid)),
        2 => Some(json!(u.arbitrary::<String>()?)),
        _ => Some(json!(u.arbitrary::<Vec<String>>()?)),
    })
}

fn claims(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut session = serde_json::Map::new();
    let put = |map: &mut serde_json::Map<String, Value>, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            map.insert(k.to_owned(), v);
        }
    };
    let token_id = text(u, "bt_1234")?;
    put(&mut session, "token_id", token_id);
    let roles = match u.int_in_range(0..=2)? {
        0 => None,
        1 => Some(json!(u.arbitrary::<Vec<String>>()?)),
        _ => Some(json!(u.arbitrary::<String>()?)),
    };
    put(&mut session, "roles", roles);
    let image = match u.int_in_range(0..=2)? {
        0 => None,
        1 => Some(Value::Null),
        _ => Some(json!(u.arbitrary::<String>()?)),
    };
    put(&mut session, "image", image);
    let started = number(u, NOW)?;
    put(&mut session, "started_at", started);

    let mut c = serde_json::Map::new();
    for (k, v) in [
        ("iss", text(u, ISS)?),
        ("aud", text(u, SESSION_AUDIENCE)?),
        ("sub", text(u, "bootstrap:bt_1234")?),
        ("iat", number(u, NOW)?),
        ("nbf", number(u, NOW)?),
        ("exp", number(u, NOW + 900)?),
    ] {
        put(&mut c, k, v);
    }
    if u.arbitrary::<bool>()? {
        c.insert("lanyard_session".into(), Value::Object(session));
    }
    Ok(Value::Object(c))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let token = String::from_utf8_lossy(rest);
        assert!(
            session::verify(keys, ISS, &token, now).is_err(),
            "an unsigned token verified: {token:?}"
        );
        return;
    }
    let Ok(claims) = claims(&mut Unstructured::new(rest)) else {
        return;
    };
    let token = keys
        .sign(&claims)
        .expect("the broker's key signs any JSON object");
    let Ok(verified) = session::verify(keys, ISS, &token, now) else {
        return;
    };
    // Accepted: it carries exactly what was signed.
    let binding = verified
        .identity
        .bootstrap
        .as_ref()
        .expect("a bootstrap identity");
    assert_eq!(claims["iss"], ISS);
    assert!(
        claims["aud"] == SESSION_AUDIENCE
            || claims["aud"]
                .as_array()
                .is_some_and(|a| a.contains(&json!(SESSION_AUDIENCE))),
        "{}",
        claims["aud"]
    );
    assert_eq!(
        claims["lanyard_session"]["token_id"],
        binding.token_id.as_str()
    );
    assert_eq!(
        verified.identity.subject,
        format!("bootstrap:{}", binding.token_id)
    );
    assert_eq!(claims["lanyard_session"]["roles"], json!(binding.roles));
    assert!(claims["exp"].as_f64().is_some_and(|exp| exp > NOW as f64));
    // The refresh that follows every fetch with a session.
    let limits = BootstrapConfig::default();
    if let Ok(Some(next)) = session::mint(
        keys,
        ISS,
        &limits,
        &verified.identity,
        verified.started,
        now,
    ) {
        let again = session::verify(keys, ISS, next.token.expose(), now)
            .expect("a session the broker just minted verifies");
        assert_eq!(again.identity, verified.identity);
        assert_eq!(again.started, verified.started);
    }
});
