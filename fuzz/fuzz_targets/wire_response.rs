//! The SDK and sidecar parse broker answers: success bodies and error bodies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() > lanyard::wire::MAX_RESPONSE_BODY_BYTES {
        return;
    }
    let _ = serde_json::from_slice::<lanyard::wire::CredentialResponse>(data);
    let _ = serde_json::from_slice::<lanyard::wire::ErrorBody>(data);
    let _ = serde_json::from_slice::<lanyard::wire::CredentialRequest>(data);
    let _ = serde_json::from_slice::<lanyard::wire::MintTokenRequest>(data);
});
