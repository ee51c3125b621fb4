//! AdmissionReview bodies as the mutating webhook reads them (`lanyard_broker::gate::pin`:
//! `plan`, `pin`, `response`, after `admission::parse_review`), every tag resolved to one
//! digest.
//!
//! Properties: no panic; errors and warnings short; only pods are patched; the answer is
//! allowed and its base64 patch decodes and applies to the object it was made for, replacing
//! only `/spec/<list>/<i>/image` values that were tags; pinning the result again changes
//! nothing (what `reinvocationPolicy: IfNeeded` relies on).
#![no_main]

use base64::Engine as _;
use lanyard_broker::gate::admission::parse_review;
use lanyard_broker::gate::pin::{Plan, pin, plan, response};
use libfuzzer_sys::fuzz_target;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_review(data) else {
        return;
    };
    let targets = match plan(&req) {
        Err(e) => {
            assert!(e.to_string().len() <= 300, "long error");
            return;
        }
        Ok(Plan::NotAPod) => return,
        Ok(Plan::Pod { targets, .. }) => targets,
    };
    assert_eq!(req.kind.kind, "Pod", "only pods are patched");
    let pinning = pin(&targets, &|_| Some(Ok(D.to_owned())));
    for w in &pinning.warnings {
        assert!(w.len() <= 600, "long warning");
    }
    let answer = serde_json::to_value(response(&req.uid, &pinning)).expect("serializes");
    assert_eq!(answer["response"]["allowed"], true);
    let Some(patch) = answer["response"]["patch"].as_str() else {
        assert!(pinning.patch.0.is_empty());
        return;
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a patch");
    let object = req.object.as_ref().expect("a pod has an object");
    let mut doc = serde_json::to_value(object).expect("object");
    for op in patch.iter() {
        let json_patch::PatchOperation::Replace(r) = op else {
            panic!("only replace operations");
        };
        let path = r.path.to_string();
        let parts: Vec<&str> = path.split('/').collect();
        assert!(
            parts.len() == 5
                && parts[1] == "spec"
                && ["initContainers", "containers", "ephemeralContainers"].contains(&parts[2])
                && parts[3].parse::<usize>().is_ok()
                && parts[4] == "image",
            "unexpected path {path}"
        );
        let was = doc.pointer(&path).and_then(|v| v.as_str()).expect("a string image");
        assert!(!was.contains('@'), "a digest reference was rewritten");
    }
    json_patch::patch(&mut doc, &patch).expect("the patch applies to its object");
    // Pinning the pinned pod again is a no-op.
    // (The typed parse skips fields it does not read without checking their escapes; a
    // generic parse may refuse the same bytes, e.g. a lone surrogate `\ud800` in such a field.)
    let Ok(mut again) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    again["request"]["object"] = doc;
    if let Ok(req) = parse_review(&serde_json::to_vec(&again).expect("json"))
        && let Ok(Plan::Pod { targets, .. }) = plan(&req)
    {
        let second = pin(&targets, &|_| Some(Ok(D.to_owned())));
        assert!(second.patch.0.is_empty(), "pinning twice changed something");
    }
});
