//! AdmissionReview bodies as the validating webhook will read them
//! (`lanyard_broker::gate::admission::parse_review`, then `workload_of`).
//!
//! Properties: no panic; errors short (at most 300 bytes, whatever the input); a workload
//! never lists more than `MAX_IMAGES` images; a pod's recorded UID is the object's
//! `metadata.uid`, never the review's `request.uid` (unless they are equal).
#![no_main]

use lanyard_broker::gate::admission::{Admitted, MAX_IMAGES, parse_review, workload_of};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let req = match parse_review(data) {
        Ok(r) => r,
        Err(e) => {
            assert!(e.to_string().len() <= 300, "long error");
            return;
        }
    };
    match workload_of(&req, true) {
        Err(e) => assert!(e.to_string().len() <= 300, "long error"),
        Ok(None) => {}
        Ok(Some(w)) => {
            assert!(w.images.len() <= MAX_IMAGES);
            if let Admitted::Pod { uid: Some(uid) } = &w.admitted {
                let object_uid = req.object.as_ref().and_then(|o| o.metadata.uid.as_deref());
                assert_eq!(Some(uid.as_str()), object_uid);
            }
        }
    }
});
