//! Fuzzes sidecar template rendering: a template source, then after a NUL byte the
//! credential's fields as `name=value` lines. Whatever the template, rendering ends (fuel)
//! with contents of at most `MAX_RENDERED_BYTES` or an error, never a panic; and an error
//! never carries a field's value (a secret) that the template source does not itself hold.
#![no_main]

use lanyard::Secret;
use lanyard::wire::Credential;
use lanyard_sidecar::render::{MAX_RENDERED_BYTES, check_template, render};
use lanyard_sidecar::spec::MAX_TEMPLATE_BYTES;
use lanyard_sidecar::target::{Format, Target};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, fields) = text.split_once('\0').unwrap_or((text, "password=hunter2-canary"));
    if source.len() > MAX_TEMPLATE_BYTES {
        return;
    }
    let credential = Credential {
        role: "db".into(),
        kind: "vault".into(),
        data: fields
            .lines()
            .take(16)
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), Secret::new(v)))
            .collect(),
        expires_at: "2030-01-01T00:10:00Z".into(),
        refresh_after: "2030-01-01T00:07:00Z".into(),
        ttl_seconds: 600,
        lease_id: "lease-1".into(),
        ttl_clamped: false,
    };
    let target = Target {
        role: "db".into(),
        path: vec!["out".into()],
        mode: 0o400,
        uid: None,
        gid: None,
        format: Format::Template {
            source: source.to_owned(),
            origin: "fuzz.j2".to_owned(),
        },
    };
    // The sidecar renders only templates that passed the check; render the others too.
    let _ = check_template(source, "fuzz.j2");
    match render(&target, &credential) {
        Ok(out) => assert!(out.len() <= MAX_RENDERED_BYTES),
        Err(e) => {
            for v in credential.data.values() {
                let v = v.expose();
                // Short values occur in any message by chance.
                if v.len() >= 8 && !source.contains(v) && !fields.lines().any(|l| l.split_once('=').is_some_and(|(k, _)| k.contains(v))) {
                    assert!(!e.contains(v), "the error holds a secret: {e}");
                }
            }
        }
    }
});
