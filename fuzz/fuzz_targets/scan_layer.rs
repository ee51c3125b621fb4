//! Layer blobs (gzip, zstd or plain tar, possibly nested archives) from untrusted images.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lanyard_scan::layer::scan_layer_bytes(data);
});
