//! Fuzzes the unverified JWT parser: the first code that touches a bearer token, before any
//! signature check. It must never panic, and must refuse oversized input before decoding it.
#![no_main]

use lanyard_broker::authn::AuthnError;
use lanyard_broker::authn::jwt::{MAX_SEGMENT_BYTES, parse_unverified};

/// The broker's default `limits.max_token_bytes`.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    match parse_unverified(&token, MAX_TOKEN_BYTES) {
        Ok((header, claims)) => {
            assert!(token.len() <= MAX_TOKEN_BYTES);
            assert!(token.split('.').count() == 3);
            assert!(token.split('.').all(|s| s.len() <= MAX_SEGMENT_BYTES));
            assert!(claims.is_object());
            let _ = header.kid;
        }
        Err(AuthnError::TooLarge) => assert!(token.len() > MAX_TOKEN_BYTES),
        Err(_) => {}
    }
});
