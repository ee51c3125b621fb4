//! Sealed signing keys as stored in the database (`lanyard_broker::issue::kek`): the
//! envelope text is read back from a row anyone with write access to the database could
//! have changed.
//!
//! Properties: no panic; text over the limit is refused before it is split; an
//! envelope not made with the KEK never opens; sealing then opening round-trips, in its own
//! row only; what would not open is refused when sealed.
#![no_main]

use lanyard::Secret;
use lanyard_broker::issue::kek::{Envelope, Kek, Keks, MAX_ENVELOPE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(Ok(env)) = Envelope::parse(text) {
        assert!(text.len() <= MAX_ENVELOPE_BYTES, "parsed over the limit");
        assert_eq!(env.kek_id.len(), 16);
    }
    let keks = Keks::new(Some(Kek::from_bytes(&[7; 32]).expect("kek")), Vec::new());
    // A key whose envelope would be over the limit is refused when sealed, never stored.
    let Ok(sealed) = keks.seal("kid", &Secret::new(text)) else {
        assert!(text.len() > MAX_ENVELOPE_BYTES / 2, "a short key was refused");
        return;
    };
    let opened = keks.open("kid", &sealed).expect("open what was sealed");
    assert_eq!(opened.pkcs8.expose(), text);
    assert!(keks.open("other", &sealed).is_err(), "opened in another row");
    // Arbitrary text as a stored envelope: only the sealer's KEK makes one that opens.
    if text.starts_with("lk1.") {
        assert!(keks.open("kid", &Secret::new(text)).is_err(), "a forged envelope opened");
    }
});
