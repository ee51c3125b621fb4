//! Answers of the Kubernetes API server to the gate's pod lookup
//! (`lanyard_broker::gate::pods::parse_response`: a `v1.Pod` or a `v1.Status`), with the
//! first byte choosing the status code.
//!
//! Properties: no panic; errors at most `MAX_ERROR_BYTES`; a pod is "gone" only on a 404 or
//! a 200 (another uid), never on another code; at most `MAX_CONTAINERS` images, each usable
//! one carrying a digest, each `imageID` kept at most `MAX_IMAGE_ID_BYTES` long.
#![no_main]

use lanyard_broker::gate::pods::{
    MAX_CONTAINERS, MAX_ERROR_BYTES, MAX_IMAGE_ID_BYTES, PodImages, parse_response,
};
use libfuzzer_sys::fuzz_target;

const CODES: [u16; 6] = [200, 404, 401, 403, 500, 503];
const NAME: &str = "api-7d9c8b6f5-x2k4q";
const UID: &str = "3f2b7c1e-9a4d-4e8b-a1c2-5d6e7f8a9b0c";

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let status = CODES[usize::from(pick) % CODES.len()];
    match parse_response(status, body, NAME, UID) {
        Err(e) => assert!(
            e.0.len() <= MAX_ERROR_BYTES,
            "long error: {} bytes",
            e.0.len()
        ),
        Ok(PodImages::Gone(why)) => {
            assert!(status == 404 || status == 200, "gone on {status}");
            assert!(why.len() <= MAX_ERROR_BYTES);
        }
        Ok(PodImages::NotReady { waiting }) => {
            assert_eq!(status, 200);
            assert!(!waiting.is_empty() && waiting.len() <= 3 * MAX_CONTAINERS);
        }
        Ok(PodImages::Images(images)) => {
            assert_eq!(status, 200);
            assert!(images.len() <= MAX_CONTAINERS);
            for i in images {
                assert!(i.image_id.len() <= MAX_IMAGE_ID_BYTES);
                if let Ok(r) = &i.parsed {
                    assert!(r.digest.is_some(), "a usable image without a digest");
                }
            }
        }
    }
});
