//! The scanner allowlist (`lanyard_scan::Allowlist::parse`, then `reason_for`): a YAML file
//! that silences findings by fingerprint or path glob.
//!
//! The input is the file's text up to the first NUL byte; the bytes after it describe a few
//! findings to match against it. Properties: no panic; an allowed finding always has a
//! non-blank reason; a path entry never silences a finding outside a file (`Env`, label,
//! history); an entry restricted to a rule never silences another rule's finding.
#![no_main]

use lanyard_scan::Allowlist;
use lanyard_scan::report::{Finding, FingerprintKind, Location};
use lanyard_scan::rules::{Confidence, Severity};
use libfuzzer_sys::arbitrary::{Result, Unstructured};

fn finding(u: &mut Unstructured<'_>) -> Result<Finding> {
    let rule = match u.int_in_range(0..=2)? {
        0 => "jwt".to_owned(),
        1 => "generic-password".to_owned(),
        _ => u.arbitrary()?,
    };
    let fingerprint = match u.int_in_range(0..=1)? {
        0 => format!("v1:{}", u.arbitrary::<String>()?),
        _ => u.arbitrary()?,
    };
    let location = match u.int_in_range(0..=3)? {
        0 => Location::Env {
            name: u.arbitrary()?,
        },
        1 => Location::Label {
            name: u.arbitrary()?,
        },
        2 => Location::History {
            step: u.int_in_range(0..=9)?,
            layer_index: None,
            name: u.arbitrary()?,
        },
        _ => Location::File {
            layer_index: 0,
            layer_digest: "sha256:x".into(),
            history_step: None,
            path: u.arbitrary()?,
            line: 1,
            deleted_later: u.arbitrary()?,
        },
    };
    Ok(Finding {
        rule,
        description: String::new(),
        severity: Severity::High,
        confidence: Confidence::High,
        location,
        preview: String::new(),
        fingerprint,
        fingerprint_kind: FingerprintKind::Value,
        test_material: false,
        package_code: false,
        allowed: None,
        vendor: None,
        reason: None,
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let Ok(text) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let Ok(list) = Allowlist::parse(text, "allow.yaml") else {
        return;
    };
    // What the file asks for, read independently of the parser under test.
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).expect("a parsed allowlist is YAML");
    let entries = doc
        .get("allow")
        .and_then(|a| a.as_sequence())
        .cloned()
        .unwrap_or_default();
    let any_fingerprint = entries.iter().any(|e| e.get("fingerprint").is_some());
    let unrestricted = entries.iter().any(|e| e.get("rule").is_none());
    let rules: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.get("rule").and_then(|r| r.as_str()))
        .collect();

    let rest = data.get(split + 1..).unwrap_or_default();
    let mut u = Unstructured::new(rest);
    for _ in 0..4 {
        let Ok(f) = finding(&mut u) else { break };
        let Some(reason) = list.reason_for(&f) else {
            continue;
        };
        assert!(!reason.trim().is_empty(), "allowed with a blank reason");
        if !matches!(f.location, Location::File { .. }) {
            assert!(
                any_fingerprint,
                "a path entry allowed a {:?} finding",
                f.location.kind()
            );
        }
        assert!(
            unrestricted || rules.contains(&f.rule.as_str()),
            "rule {:?} allowed by entries for {rules:?}",
            f.rule
        );
    }
});
