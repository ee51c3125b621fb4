//! Image manifests, indexes, configs, docker-archive manifest.json and history lines from
//! untrusted images.
#![no_main]

use lanyard_scan::{config, manifest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = manifest::parse_manifest(data);
    let _ = manifest::parse_docker_manifest(data);
    if let Ok(cfg) = manifest::parse_config(data) {
        let steps = manifest::layer_history_steps(&cfg.history, 8);
        let _ = config::scan_config(&cfg, lanyard_scan::rules::RuleSet::builtin(), &steps);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = config::history_assignments(text);
        let _ = lanyard_scan::Source::parse(text);
    }
});
