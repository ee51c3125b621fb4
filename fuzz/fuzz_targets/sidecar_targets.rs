//! Fuzzes the sidecar's target specs: the annotation form (`--target`, `LANYARD_TARGET_<N>`:
//! `role=db,format=env,path=db.env,...`, one per line here) and the config file (`targets:`,
//! `notify:`, `on_expiry:` YAML), checked into targets as at start. Any text must give
//! targets or errors, never a panic, and every checked target must be safe to write: a
//! plain role, a relative path of plain components no deeper than the limit, a mode without
//! setuid/setgid/sticky bits, and no two targets on one path.
#![no_main]

use std::collections::BTreeSet;

use lanyard_sidecar::names::{MAX_PATH_DEPTH, check_name};
use lanyard_sidecar::spec::{
    ConfigFile, MAX_CONFIG_FILE_BYTES, TargetSpec, check_all, parse_command, parse_target_keys,
};
use lanyard_sidecar::target::Target;

fn assert_safe(t: &Target) {
    check_name("role", &t.role).expect("a checked role is a plain name");
    assert!(!t.path.is_empty() && t.path.len() <= MAX_PATH_DEPTH, "{t:?}");
    for part in &t.path {
        check_name("path component", part).expect("a checked path is plain names");
    }
    assert!(!t.rel_path().starts_with('/'));
    assert!(t.mode <= 0o777, "{t:?}");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_CONFIG_FILE_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut specs: Vec<(String, TargetSpec)> = Vec::new();
    for (i, line) in text.lines().take(16).enumerate() {
        if let Ok(spec) = parse_target_keys(line) {
            specs.push((format!("--target {i}"), spec));
        }
        let _ = parse_command(line);
    }
    if let Ok(cfg) = ConfigFile::parse(text) {
        for (i, n) in cfg.notify.iter().enumerate() {
            let _ = n.check(&format!("notify {i}"));
        }
        specs.extend(
            cfg.targets
                .into_iter()
                .enumerate()
                .map(|(i, s)| (format!("target {i}"), s)),
        );
    }
    // A template_file names a file on this machine: not the fuzzer's business.
    for (_, s) in &mut specs {
        s.template_file = None;
    }
    for (what, spec) in &specs {
        if let Ok(t) = spec.check(what) {
            assert_safe(&t);
        }
    }
    if let Ok(all) = check_all(&specs) {
        let mut paths = BTreeSet::new();
        for t in &all {
            assert_safe(t);
            assert!(paths.insert(t.rel_path()), "two targets on one path");
        }
    }
});
