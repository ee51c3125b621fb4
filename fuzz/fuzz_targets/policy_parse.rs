//! Fuzzes the policy file parser: any bytes must yield roles, rules or errors, never a panic,
//! and every error must point inside the file.

#![no_main]

use std::path::Path;

use lanyard_broker::policy::RoleSettings;
use lanyard_broker::policy::load::{MAX_FILE_BYTES, parse_file};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // `load_dir` refuses larger files before parsing.
    if data.len() as u64 > MAX_FILE_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Every backend kind's settings parser, as offline `policy check` runs them.
    let parsed = parse_file(Path::new("fuzz.yaml"), text, &RoleSettings::parse);
    let lines = text.lines().count() + 1;
    for error in &parsed.errors {
        assert!(error.location.line <= lines, "{error}");
    }
    for role in &parsed.roles {
        assert_eq!(role.settings.kind(), role.backend);
        assert!(role.default_ttl_seconds <= role.max_ttl_seconds);
        assert!(role.max_ttl_seconds >= 1);
    }
    for rule in &parsed.rules {
        assert!(!rule.roles.is_empty());
    }
});
