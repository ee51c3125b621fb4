//! Fuzzes the unverified JWT parser (`parse_jwt`): the first code that touches a bearer
//! token, before any signature check. It must never panic, must refuse oversized input
//! before decoding it, and must hand the signature check exactly the bytes that were sent.
#![no_main]

use lanyard_broker::authn::AuthnError;
use lanyard_broker::authn::jwt::{MAX_SEGMENT_BYTES, parse_jwt};

/// The broker's default `limits.max_token_bytes`.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    match parse_jwt(&token, MAX_TOKEN_BYTES) {
        Ok(jwt) => {
            assert!(token.len() <= MAX_TOKEN_BYTES);
            assert!(token.split('.').count() == 3);
            assert!(token.split('.').all(|s| s.len() <= MAX_SEGMENT_BYTES));
            assert!(jwt.claims.is_object());
            // The signed bytes are exactly the first two segments as sent.
            let (signed, _) = token.rsplit_once('.').expect("three segments");
            assert_eq!(jwt.signing_input, signed);
            let _ = jwt.header.kid;
        }
        Err(AuthnError::TooLarge) => assert!(token.len() > MAX_TOKEN_BYTES),
        Err(_) => {}
    }
});
