//! The release images (`charts/images/build-images.sh`), built with buildah from the binaries
//! `cargo test` built (the release build runs the same script on release binaries): scanned by
//! `lanyard-broker scan` with no allowlist — they must come out clean —, their user (65532)
//! and entrypoint checked, no shell inside, and each binary started (`--version`) inside the
//! image's root filesystem as the image's user.
//!
//! Needs buildah (tests/peers/images.sh installs it) and both binaries in the same target
//! directory (`cargo test --workspace` builds them); outside `./test.sh` it skips loudly when
//! either is missing, under `./test.sh` it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use lanyard_test_support::k8s;
use serde_json::Value;

const BROKER: &str = env!("CARGO_BIN_EXE_lanyard-broker");

fn missing(what: &str) {
    assert!(
        std::env::var_os("LANYARD_TEST_SH").is_none(),
        "{what} under ./test.sh"
    );
    k8s::skipped(&format!("{what}. Run ./test.sh"));
}

/// buildah with the test's own storage.
fn buildah(storage: &Path, args: &[&str]) -> String {
    let root = storage.join("root").display().to_string();
    let runroot = storage.join("runroot").display().to_string();
    let mut all = vec![
        "--root",
        root.as_str(),
        "--runroot",
        runroot.as_str(),
        "--storage-driver",
        "vfs",
    ];
    all.extend_from_slice(args);
    k8s::run("buildah", &all)
}

#[test]
fn the_release_images_scan_clean_run_as_non_root_without_a_shell_and_start() {
    if Command::new("buildah").arg("--version").output().is_err() {
        return missing("buildah is not installed (tests/peers/images.sh installs it)");
    }
    let bin_dir = Path::new(BROKER)
        .parent()
        .expect("target dir")
        .to_path_buf();
    if !bin_dir.join("lanyard-sidecar").is_file() {
        return missing(&format!(
            "{}/lanyard-sidecar is not built (cargo build -p lanyard-sidecar)",
            bin_dir.display()
        ));
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let storage = tmp.path().join("storage");
    let out = tmp.path().join("out");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/images/build-images.sh");
    let built = k8s::run(
        &script.display().to_string(),
        &[
            "build",
            "--bin-dir",
            &bin_dir.display().to_string(),
            "--tag",
            "test",
            "--out",
            &out.display().to_string(),
            "--storage",
            &storage.display().to_string(),
        ],
    );
    assert!(built.contains("lanyard-sidecar.oci.tar"), "{built}");

    for name in ["lanyard-broker", "lanyard-sidecar"] {
        let archive: PathBuf = out.join(format!("{name}.oci.tar"));
        // No allowlist: the image must be clean as it is.
        let scan = Command::new(BROKER)
            .arg("scan")
            .arg(format!("oci-archive:{}", archive.display()))
            .output()
            .expect("scan");
        let report = String::from_utf8_lossy(&scan.stdout);
        assert!(
            scan.status.success() && report.contains("verdict: clean"),
            "{name}: {report}{}",
            String::from_utf8_lossy(&scan.stderr)
        );

        let image = format!("localhost/lanyard/{name}:test");
        let inspect: Value =
            serde_json::from_str(&buildah(&storage, &["inspect", "--type", "image", &image]))
                .expect("inspect JSON");
        let config = &inspect["OCIv1"]["config"];
        assert_eq!(config["User"], "65532:65532", "{name}");
        assert_eq!(
            config["Entrypoint"],
            serde_json::json!([format!("/usr/local/bin/{name}")]),
            "{name}"
        );
        assert_eq!(inspect["OCIv1"]["architecture"], "amd64");
        assert!(
            config["Env"]
                .as_array()
                .expect("env")
                .iter()
                .any(|e| e == "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
            "{config}"
        );

        // The root filesystem: the binary, its loader, CA certificates; no shell.
        let ctr = buildah(&storage, &["from", "--pull-never", &image]);
        let ctr = ctr.trim();
        let mount = buildah(&storage, &["mount", ctr]);
        let root = Path::new(mount.trim());
        for present in [
            format!("usr/local/bin/{name}"),
            "lib64/ld-linux-x86-64.so.2".to_owned(),
            "etc/ssl/certs/ca-certificates.crt".to_owned(),
            "etc/passwd".to_owned(),
        ] {
            assert!(root.join(&present).is_file(), "{name}: {present} missing");
        }
        for absent in ["bin/sh", "bin/bash", "bin/busybox", "usr/bin/sh"] {
            assert!(!root.join(absent).exists(), "{name}: {absent} present");
        }
        // Started as the image's user, inside the image's root filesystem.
        let version = Command::new("chroot")
            .arg("--userspec=65532:65532")
            .arg(root)
            .arg(format!("/usr/local/bin/{name}"))
            .arg("--version")
            .output()
            .expect("chroot");
        let printed = String::from_utf8_lossy(&version.stdout);
        assert!(
            version.status.success() && printed.starts_with(name),
            "{name} --version in the image: {printed}{}",
            String::from_utf8_lossy(&version.stderr)
        );
        buildah(&storage, &["umount", ctr]);
        buildah(&storage, &["rm", ctr]);
    }
}
