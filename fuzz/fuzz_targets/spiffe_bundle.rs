//! SPIFFE trust bundles (`authn::jwks::KeySet::parse_bundle`), fetched from a trust domain's
//! bundle endpoint or read from a file before any of its keys is trusted, and SPIFFE IDs
//! (`authn::jwt::spiffe_id`), read from the `sub` of tokens not yet verified.
//!
//! Properties: no panic; every error is short; an accepted bundle holds at most
//! `MAX_JWKS_KEYS` keys, each with a `kid`, and a refresh hint at most
//! `MAX_REFRESH_HINT_SECONDS`; an accepted SPIFFE ID is `spiffe://` + its trust domain + its
//! path, the trust domain valid, the path without empty, `.` or `..` segments.
#![no_main]

use lanyard_broker::authn::jwks::{KeySet, MAX_JWKS_KEYS, MAX_REFRESH_HINT_SECONDS};
use lanyard_broker::authn::jwt::spiffe_id;
use lanyard_broker::config::is_valid_trust_domain;

const ORIGIN: &str = "https://spire.example/bundle";
/// Longest error text accepted, beyond the origin it names.
const MAX_ERROR: usize = 512;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match KeySet::parse_bundle(data, "spiffe://example.org", ORIGIN) {
        Ok(set) => {
            assert!(!set.is_empty() && set.len() <= MAX_JWKS_KEYS);
            assert!(set.keys().iter().all(|k| k.kid.as_deref().is_some_and(|k| !k.is_empty())));
            assert!(set.refresh_hint().is_none_or(|h| h <= MAX_REFRESH_HINT_SECONDS));
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.len() <= ORIGIN.len() + MAX_ERROR,
                "{} bytes: {text:.200}",
                text.len()
            );
        }
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok((td, path)) = spiffe_id(text)
    {
        assert_eq!(format!("spiffe://{td}{path}"), text);
        assert!(is_valid_trust_domain(td));
        if !path.is_empty() {
            assert!(path.starts_with('/'));
            assert!(path[1..]
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."));
        }
    }
});
