//! AdmissionReview bodies as the mutating webhook's sidecar injection reads them
//! (`lanyard_broker::gate::inject::plan`, after `admission::parse_review`): the pod's
//! `lanyard.dev/*` annotations are untrusted, and are turned into sidecar flags and targets.
//!
//! Properties: no panic; refusals short and prefixed; only pod creates asking for it are
//! patched; the patch applies to its object and the result is still a pod whose sidecar is
//! first in `initContainers`; planning the result again adds nothing (what
//! `reinvocationPolicy: IfNeeded` relies on).
#![no_main]

use lanyard_broker::config::InjectConfig;
use lanyard_broker::gate::admission::parse_review;
use lanyard_broker::gate::inject::{Injection, SIDECAR, plan};
use libfuzzer_sys::fuzz_target;

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

fn config() -> InjectConfig {
    serde_json::from_value(serde_json::json!({
        "image": "registry.example.com/lanyard/sidecar:0.1",
        "broker_url": "https://lanyard.lanyard-system.svc:8443",
        "ca_file": "/ca.pem"
    }))
    .expect("config")
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_review(data) else {
        return;
    };
    let config = config();
    let ops = match plan(&req, Some(&config), Some(CA)) {
        Err(e) => {
            assert!(e.to_string().len() <= 300, "long error");
            return;
        }
        Ok(Injection::NotRequested | Injection::Disabled) => return,
        Ok(Injection::Refused(m)) => {
            assert!(m.starts_with("lanyard: ") && m.len() <= 1200, "refusal: {m}");
            return;
        }
        Ok(Injection::Patch { ops, .. }) => ops,
    };
    assert_eq!(req.kind.kind, "Pod", "only pods are injected");
    let object = req.object.as_ref().expect("a pod has an object");
    let mut doc = serde_json::to_value(object).expect("object");
    json_patch::patch(&mut doc, &ops).expect("the patch applies to its object");
    if !ops.is_empty() {
        assert!(
            doc.pointer("/spec/initContainers/0/name")
                .is_some_and(|n| n == SIDECAR)
                || doc
                    .pointer("/spec/initContainers")
                    .and_then(|l| l.as_array())
                    .is_some_and(|l| l.iter().any(|c| c["name"] == SIDECAR)),
            "the sidecar is in initContainers"
        );
    }
    // Planning the injected pod again adds nothing. (The typed parse skips fields it does
    // not read; a generic parse may refuse the same bytes.)
    let Ok(mut again) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    again["request"]["object"] = doc;
    if let Ok(req) = parse_review(&serde_json::to_vec(&again).expect("json"))
        && let Ok(Injection::Patch { ops, .. }) = plan(&req, Some(&config), Some(CA))
    {
        assert!(ops.is_empty(), "injecting twice changed something: {ops:?}");
    }
});
