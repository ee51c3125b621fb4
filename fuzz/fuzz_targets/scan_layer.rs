//! Layer blobs (gzip, zstd or plain tar, possibly nested archives) from untrusted images.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lanyard_broker::scan::layer::scan_layer_bytes(data);
});
