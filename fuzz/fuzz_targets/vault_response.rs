//! Vault answers as the `vault` backend decodes them (`issue::vault::decode_response`): a KV v2
//! read, a dynamic-secret read, a PKI issue, a child-token create and the broker's own token
//! lookup, in their envelope; and error answers (any status, any body) through the one
//! summary the broker logs and returns.
//!
//! The first byte picks the kind, the next two the HTTP status class, the rest is the body.
//! Properties: no panic (a hostile or broken Vault fails a request, never the broker); a
//! credential never outlives the granted TTL nor expires before it is issued; an error is an
//! upstream error whose message is short and free of control characters (it is logged and
//! returned to the workload).
#![no_main]

use std::time::{Duration, SystemTime};

use lanyard_broker::issue::BackendError;
use lanyard_broker::issue::vault::{ResponseKind, decode_response};

const NOW: u64 = 1_800_000_000;
const TTL: Duration = Duration::from_secs(600);
/// `what` ("fuzzing"), "Vault answered NNN: " and Vault's first error cut at 160 characters.
const MAX_MESSAGE: usize = 7 + 24 + 160 * 4;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let [kind, status_class, status_low, body @ ..] = data else {
        return;
    };
    let kind = match kind % 5 {
        0 => ResponseKind::Kv2,
        1 => ResponseKind::Dynamic,
        2 => ResponseKind::Pki,
        3 => ResponseKind::Token,
        _ => ResponseKind::Lookup,
    };
    let status = match status_class % 4 {
        0 | 1 => 200,
        2 => 400 + u16::from(*status_low) % 100,
        _ => 500 + u16::from(*status_low) % 100,
    };
    let keys = ["password".to_owned()];
    let scope: &[String] = if status_low % 2 == 0 { &keys } else { &[] };
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW);
    match decode_response(kind, status, body, scope, now, TTL) {
        Ok(issued) => {
            assert!((200..300).contains(&status));
            assert!(issued.expires_at <= now + TTL, "outlives the granted TTL");
            if !matches!(kind, ResponseKind::Pki) {
                assert!(issued.expires_at >= now, "expired before it was issued");
            }
            for key in scope {
                if matches!(kind, ResponseKind::Kv2) {
                    assert!(issued.data.contains_key(key), "a scoped key is missing");
                }
            }
        }
        Err(BackendError::Upstream { message, .. }) => {
            assert!(
                message.len() <= MAX_MESSAGE,
                "{} bytes: {message:.200}",
                message.len()
            );
            assert!(!message.chars().any(char::is_control), "{message:?}");
        }
        Err(other) => panic!("a Vault answer gave a non-upstream error: {other}"),
    }
});
