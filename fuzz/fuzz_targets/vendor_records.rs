//! Package managers' records from untrusted images: dpkg `md5sums` and `status`, Python
//! `RECORD`, apk `installed`, RPM header blobs and the SQLite rpmdb.
#![no_main]

use lanyard_scan::vendor::{apk, dpkg, python, rpm};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dpkg::parse_md5sums("pkg", data);
    let _ = dpkg::parse_status(data);
    let _ = python::parse_record("usr/lib/python3/dist-packages", "pkg", data);
    let _ = apk::parse_installed(data);
    let _ = rpm::parse_header(data);
    // SQLite pages are 512 bytes at least: shorter inputs only exercise the header check.
    if data.len() >= 512 {
        let _ = rpm::parse_sqlite(data);
    }
});
