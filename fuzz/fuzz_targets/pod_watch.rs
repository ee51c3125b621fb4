//! The Kubernetes API server's pod list pages and watch stream as the pod watch reads them
//! (`lanyard_broker::issue::pod_watch`: `take_lines` over arbitrary chunks, `parse_watch_line`,
//! `parse_pod_page`), and RFC 7662 introspection bodies (`issue::status::
//! parse_introspection_form`). Issue 16.
//!
//! Properties: no panic; errors short; every UID and resourceVersion kept is non-empty and at
//! most `MAX_ID_BYTES`; lines split at any chunk boundary are the same lines; an introspection
//! token is never empty.
#![no_main]

use lanyard_broker::issue::pod_watch::{
    MAX_ID_BYTES, WatchLine, parse_pod_page, parse_watch_line, take_lines,
};
use lanyard_broker::issue::status::parse_introspection_form;
use libfuzzer_sys::fuzz_target;

fn id_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES
}

fuzz_target!(|data: &[u8]| {
    match parse_pod_page(data) {
        Ok(page) => {
            assert!(id_ok(&page.resource_version));
            assert!(page.uids.iter().all(|u| id_ok(u)));
        }
        Err(e) => assert!(e.len() <= 400, "long error: {e}"),
    }
    match parse_watch_line(data) {
        Ok(WatchLine::Changed { resource_version } | WatchLine::Bookmark { resource_version }) => {
            assert!(id_ok(&resource_version));
        }
        Ok(WatchLine::Deleted {
            uid,
            resource_version,
        }) => assert!(id_ok(&uid) && id_ok(&resource_version)),
        Ok(WatchLine::Error { message, .. }) => assert!(message.len() <= 1000),
        Err(e) => assert!(e.len() <= 400, "long error: {e}"),
    }
    // The same bytes in two chunks split anywhere give the lines of one chunk.
    let cut = data.first().map_or(0, |b| usize::from(*b)) % (data.len() + 1);
    let mut whole = data.to_vec();
    let mut split = data[..cut].to_vec();
    if let (Ok(all), Ok(mut first)) = (take_lines(&mut whole), take_lines(&mut split)) {
        split.extend_from_slice(&data[cut..]);
        if let Ok(rest) = take_lines(&mut split) {
            first.extend(rest);
            assert_eq!(first, all);
            assert_eq!(split, whole);
        }
    }
    if let Ok(token) = parse_introspection_form(data) {
        assert!(!token.is_empty());
    }
});
