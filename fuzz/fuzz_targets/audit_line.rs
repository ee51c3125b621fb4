//! Fuzzes the audit line parser: any bytes must parse or fail cleanly, never panic, and a
//! line that parses must re-parse identically.
#![no_main]

use lanyard_broker::audit::parse_line;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = parse_line(text) {
        assert!(parsed.seq >= 1);
        assert_eq!(parsed.hash.len(), 64);
        assert_eq!(parsed.prev.len(), 64);
        let again = parse_line(text).expect("a line that parsed once parses again");
        assert_eq!(parsed, again);
    }
});
