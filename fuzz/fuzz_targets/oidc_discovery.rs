//! OpenID discovery documents (`authn::jwks::parse_discovery`, then the transport check of the
//! `jwks_uri` it names), fetched from an issuer before any of its keys is trusted.
//!
//! Properties: no panic; a document naming another issuer is refused; a `jwks_uri` that passes
//! the transport check is https, or plain http to a loopback host; and every error is short
//! (it is logged and shown by `/readyz`-style diagnostics, so a hostile document must not make
//! a megabyte log line).
#![no_main]

use lanyard_broker::authn::jwks::{check_transport, parse_discovery};

const ISSUER: &str = "https://issuer.example";
const ORIGIN: &str = "https://issuer.example/.well-known/openid-configuration";
/// Longest error text accepted, beyond the origin URL it names.
const MAX_ERROR: usize = 512;

fn loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match parse_discovery(data, ISSUER, ORIGIN) {
        Ok(jwks_uri) => {
            let doc: serde_json::Value =
                serde_json::from_slice(data).expect("an accepted document is JSON");
            if let Some(iss) = doc.get("issuer").filter(|v| !v.is_null()) {
                assert_eq!(iss, ISSUER, "a document naming another issuer was accepted");
            }
            match check_transport(&jwks_uri, "discovered jwks_uri") {
                Ok(url) => assert!(
                    url.scheme() == "https"
                        || (url.scheme() == "http" && loopback(url.host_str().unwrap_or(""))),
                    "{url} passed the transport check"
                ),
                Err(e) => assert!(e.len() <= MAX_ERROR, "{} bytes: {e:.200}", e.len()),
            }
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
});
