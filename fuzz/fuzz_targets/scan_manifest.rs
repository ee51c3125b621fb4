//! Image manifests, indexes, configs, docker-archive manifest.json and history lines from
//! untrusted images.
#![no_main]

use lanyard_broker::scan::{self, source};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = source::parse_manifest(data);
    let _ = source::parse_docker_manifest(data);
    if let Ok(cfg) = source::parse_config(data) {
        let steps = source::layer_history_steps(&cfg.history, 8);
        let _ = scan::scan_config(&cfg, scan::rules::RuleSet::builtin(), &steps);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = scan::history_assignments(text);
        let _ = scan::Source::parse(text);
    }
});
