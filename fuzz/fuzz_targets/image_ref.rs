//! Image references as the gate parses them (`lanyard_broker::gate::image::parse` and
//! `parse_pinned`): bootstrap token bindings, scan-ahead requests.
//!
//! Properties: no panic; an error is short (at most 400 bytes, whatever the input's length)
//! and never echoes more than 41 characters of it; an accepted reference prints back to
//! itself when parsed again; a pinned reference always has a digest, and a bare digest no
//! repository.
#![no_main]

use lanyard_broker::gate::image::{is_digest, parse, parse_pinned};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match parse(s) {
        Err(e) => {
            assert!(e.len() <= 400, "long error: {} bytes", e.len());
            if s.len() > 60 {
                assert!(!e.contains(s), "the whole input echoed");
            }
        }
        Ok(r) => {
            let again = parse(&r.to_string()).expect("a printed reference parses");
            assert_eq!(again.repository, r.repository);
            assert_eq!(again.digest, r.digest);
            if let Some(d) = &r.digest {
                assert!(is_digest(d));
            }
            if r.repository.is_none() {
                assert!(r.digest.is_some());
            }
        }
    }
    if let Ok(p) = parse_pinned(s) {
        assert!(p.digest.is_some() && p.pinned().is_some());
    }
});
