//! JWKS documents fetched from issuers (or read from files) before any key is trusted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lanyard_broker::authn::jwks::KeySet::parse(data, "https://issuer.example", "fuzz");
});
