//! The vendor pass through the whole scanner: OCI images whose layers GNU tar makes from
//! directories this test writes, with package records of every kind — a real RPM database
//! written by Debian's `rpm` from a package built by `rpmbuild`, dpkg records with merged
//! `/usr`, Python `RECORD`s with and without `direct_url.json`, an apk database written to
//! its documented format — and `.pyc` files next to their sources.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use lanyard_scan::report::{Manager, counts, render_human};
use lanyard_scan::vendor::FileHashes;
use lanyard_scan::{Finding, Location, ScanOptions, Source, Verdict, scan};

// Made-up values, generated for this test.
const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ2bmQtc2FtcGxlIiwiaWF0IjoxNzAwMDAwMDAwfQ.q3Vw8KpZ0sLr4Tn7YbXc2MdEhJf6GiAa9Uo1WeRtQyI";
const PAT: &str = "ghp_R7kLm2Qx9VbN4cTz8WpY3sHd6JfGa1EoUiKq";
const PASSWORD_LINE: &str = "password = \"Zr8#kQ2v!mWx5Lp\"\n";
const URL_LINE: &str = "REMOTE = \"https://deploy:Hx7Tq2Lm9Wz4@git.corp.lan/x.git\"\n";

/// Writes files (path, content) and symlinks (path, target) under `root`.
fn write_tree(root: &Path, files: &[(&str, &[u8])], links: &[(&str, &str)]) {
    for (p, data) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(&path, data).expect("write");
    }
    for (p, target) in links {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        symlink(target, &path).expect("symlink");
    }
}

/// A layer: GNU tar of everything under `root`.
fn tar_layer(root: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--numeric-owner", "--sort=name", "-cf", "-", "-C"])
        .arg(root)
        .arg(".")
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar failed");
    out.stdout
}

fn sha256(bytes: &[u8]) -> String {
    lanyard_scan::util::sha256_digest(bytes)
}

fn put_blob(root: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let dir = root.join("blobs/sha256");
    std::fs::create_dir_all(&dir).expect("blobs");
    std::fs::write(dir.join(&digest[7..]), bytes).expect("blob");
    digest
}

/// An OCI layout of one image with these (uncompressed) layers.
fn oci_image(root: &Path, layers: &[Vec<u8>]) -> Source {
    std::fs::create_dir_all(root).expect("root");
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut history = Vec::new();
    for l in layers {
        let d = put_blob(root, l);
        descs.push(
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": d, "size": l.len()}),
        );
        diff_ids.push(d);
        history.push(serde_json::json!({"created_by": "COPY . /"}));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history,
    })
    .to_string();
    let config_digest = put_blob(root, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": descs,
    })
    .to_string();
    let manifest_digest = put_blob(root, manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len()}],
    });
    std::fs::write(root.join("index.json"), index.to_string()).expect("index");
    Source::OciDir {
        path: root.to_owned(),
        tag: None,
    }
}

/// One line per finding: rule, layer, path, whether it counts, and the vendor package.
fn summary(findings: &[Finding]) -> Vec<String> {
    let mut out: Vec<String> = findings
        .iter()
        .filter_map(|f| match &f.location {
            Location::File {
                layer_index, path, ..
            } => Some(format!(
                "{} {layer_index} {path} {} {}",
                f.rule,
                if counts(f) { "counts" } else { "info" },
                f.vendor
                    .as_ref()
                    .map(|v| format!("{}:{}", v.manager.name(), v.package))
                    .unwrap_or_else(|| "-".into())
            )),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

async fn scan_layers(dir: &Path, layers: &[Vec<u8>]) -> lanyard_scan::Report {
    let source = oci_image(&dir.join("image"), layers);
    let report = scan(&source, &ScanOptions::default()).await.expect("scan");
    assert_eq!(report.images.len(), 1);
    let text = format!(
        "{}{}",
        render_human(&report),
        serde_json::to_string(&report).expect("json")
    );
    for secret in [JWT, PAT, "Zr8#kQ2v!mWx5Lp", "Hx7Tq2Lm9Wz4"] {
        assert!(!text.contains(secret), "a secret reached the output");
    }
    report
}

fn md5_line(path: &str, content: &[u8]) -> String {
    format!("{}  {path}\n", md5_hex(content))
}

fn md5_hex(content: &[u8]) -> String {
    // FileHashes has no accessor; compute md5 with the system tool, as dpkg would.
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("f");
    std::fs::write(&f, content).expect("write");
    let out = Command::new("md5sum").arg(&f).output().expect("md5sum");
    String::from_utf8(out.stdout).expect("utf8")[..32].to_owned()
}

#[tokio::test]
async fn dpkg_files_resolve_through_merged_usr_and_only_pristine_ones_go_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let readme = format!("Example: Authorization: Bearer {JWT}\n");
    let tool = format!("#!/bin/sh\n{URL_LINE}");
    let conf = PASSWORD_LINE.to_string();
    let keyfile = format!("GITHUB_TOKEN={PAT}\n");
    let md5sums = [
        md5_line("bin/tool", tool.as_bytes()),
        md5_line("usr/share/tool/README", readme.as_bytes()),
        md5_line("usr/share/tool/token.txt", keyfile.as_bytes()),
    ]
    .concat();
    let status = format!(
        "Package: tool\nStatus: install ok installed\nConffiles:\n /etc/tool.conf {}\n\n",
        md5_hex(conf.as_bytes())
    );
    let l0 = dir.path().join("l0");
    write_tree(
        &l0,
        &[
            ("usr/bin/tool", tool.as_bytes()),
            ("usr/share/tool/README", readme.as_bytes()),
            ("usr/share/tool/token.txt", keyfile.as_bytes()),
            ("etc/tool.conf", conf.as_bytes()),
            ("var/lib/dpkg/info/tool:amd64.md5sums", md5sums.as_bytes()),
            ("var/lib/dpkg/status", status.as_bytes()),
        ],
        &[("bin", "usr/bin")],
    );
    // A later layer edits the README and the conffile: those versions are the owner's.
    let l1 = dir.path().join("l1");
    write_tree(
        &l1,
        &[
            (
                "usr/share/tool/README",
                format!("{readme}edited\n").as_bytes(),
            ),
            ("etc/tool.conf", format!("# local\n{conf}").as_bytes()),
        ],
        &[],
    );
    let report = scan_layers(dir.path(), &[tar_layer(&l0), tar_layer(&l1)]).await;
    let img = &report.images[0];
    assert_eq!(
        summary(&img.findings),
        vec![
            "basic-auth-url 0 usr/bin/tool info dpkg:tool",
            "generic-password 0 etc/tool.conf info dpkg:tool",
            "generic-password 1 etc/tool.conf counts -",
            "github-pat 0 usr/share/tool/token.txt counts dpkg:tool",
            "jwt 0 usr/share/tool/README info dpkg:tool",
            "jwt 1 usr/share/tool/README counts -",
        ]
    );
    let lowered = img
        .findings
        .iter()
        .find(|f| f.rule == "jwt" && !counts(f))
        .expect("lowered");
    assert!(
        lowered
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("dpkg package tool")),
        "{:?}",
        lowered.reason
    );
    assert_eq!(img.verdict, Verdict::Dirty);
}

#[tokio::test]
async fn deleted_records_prove_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let readme = format!("token: {JWT}\n");
    let l0 = dir.path().join("l0");
    write_tree(
        &l0,
        &[
            ("usr/share/tool/README", readme.as_bytes()),
            (
                "var/lib/dpkg/info/tool.md5sums",
                md5_line("usr/share/tool/README", readme.as_bytes()).as_bytes(),
            ),
        ],
        &[],
    );
    let l1 = dir.path().join("l1");
    write_tree(&l1, &[("var/lib/dpkg/.wh.info", b"")], &[]);
    let report = scan_layers(dir.path(), &[tar_layer(&l0), tar_layer(&l1)]).await;
    assert_eq!(
        summary(&report.images[0].findings),
        vec!["jwt 0 usr/share/tool/README counts -"]
    );
}

fn record_line(rel: &str, content: &[u8]) -> String {
    use base64::Engine as _;
    let raw = hex::decode(&sha256(content)[7..]).expect("hex");
    format!(
        "{rel},sha256={},{}\n",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw),
        content.len()
    )
}

#[tokio::test]
async fn python_records_prove_wheels_but_not_direct_url_installs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = "usr/local/lib/python3.11/dist-packages";
    let lib = format!("\"\"\"Connect with {URL_LINE}\"\"\"\n");
    let app = URL_LINE.to_string();
    let l0 = dir.path().join("l0");
    let lib_record = record_line("vendorlib/__init__.py", lib.as_bytes());
    let app_record = record_line("myapp/__init__.py", app.as_bytes());
    write_tree(
        &l0,
        &[
            (&format!("{site}/vendorlib/__init__.py"), lib.as_bytes()),
            (
                &format!("{site}/vendorlib-1.0.dist-info/RECORD"),
                lib_record.as_bytes(),
            ),
            (&format!("{site}/myapp/__init__.py"), app.as_bytes()),
            (
                &format!("{site}/myapp-0.1.dist-info/RECORD"),
                app_record.as_bytes(),
            ),
            (
                &format!("{site}/myapp-0.1.dist-info/direct_url.json"),
                br#"{"url": "file:///src/myapp", "dir_info": {}}"#,
            ),
        ],
        &[],
    );
    let report = scan_layers(dir.path(), &[tar_layer(&l0)]).await;
    assert_eq!(
        summary(&report.images[0].findings),
        vec![
            format!("basic-auth-url 0 {site}/myapp/__init__.py counts -"),
            format!("basic-auth-url 0 {site}/vendorlib/__init__.py info python:vendorlib"),
        ]
    );
}

#[tokio::test]
async fn pyc_files_repeating_their_source_count_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let py = URL_LINE.to_string();
    // A .pyc holds the literal between binary marshal bytes.
    let mut pyc = vec![
        0xcb, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0, 0xe3, 0, 0, 0, b's', 40, 0, 0, 0,
    ];
    pyc.extend_from_slice(b"https://deploy:Hx7Tq2Lm9Wz4@git.corp.lan/x.git");
    pyc.extend_from_slice(&[0, 0, b')', 2]);
    let mut other = pyc.clone();
    other.extend_from_slice(b"https://ops:Vb3Nq8Rt5Kw2@db.corp.lan/y.git\0");
    let l0 = dir.path().join("l0");
    write_tree(
        &l0,
        &[
            ("app/settings.py", py.as_bytes()),
            ("app/__pycache__/settings.cpython-311.pyc", &pyc),
            ("app/__pycache__/other.cpython-311.pyc", &other),
        ],
        &[],
    );
    let report = scan_layers(dir.path(), &[tar_layer(&l0)]).await;
    let img = &report.images[0];
    assert_eq!(
        summary(&img.findings),
        vec![
            "basic-auth-url 0 app/__pycache__/other.cpython-311.pyc counts -",
            "basic-auth-url 0 app/__pycache__/other.cpython-311.pyc counts -",
            "basic-auth-url 0 app/__pycache__/settings.cpython-311.pyc info -",
            "basic-auth-url 0 app/settings.py counts -",
        ],
        "a .pyc without a source, or with another value, still counts"
    );
    let dup = img
        .findings
        .iter()
        .find(|f| !counts(f))
        .expect("the repeat");
    assert!(
        dup.reason
            .as_deref()
            .is_some_and(|r| r.contains("app/settings.py"))
    );
}

#[tokio::test]
async fn apk_database_in_its_documented_format() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let readme = format!("curl -H 'Authorization: Bearer {JWT}'\n");
    let sha1 = {
        let out = Command::new("sha1sum")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(readme.as_bytes())?;
                c.wait_with_output()
            })
            .expect("sha1sum");
        hex::decode(&String::from_utf8(out.stdout).expect("utf8")[..40]).expect("hex")
    };
    let db = format!(
        "C:Q1AAAAAAAAAAAAAAAAAAAAAAAAAAA=\nP:tool-doc\nV:1.0-r0\nA:x86_64\nF:usr\nF:usr/share\n\
         F:usr/share/doc/tool\nR:README\na:0:0:644\nZ:Q1{}\n\n",
        base64::engine::general_purpose::STANDARD.encode(sha1)
    );
    let l0 = dir.path().join("l0");
    write_tree(
        &l0,
        &[
            ("srv/tool/README", readme.as_bytes()),
            ("lib/apk/db/installed", db.as_bytes()),
        ],
        &[("usr/share/doc/tool", "/srv/tool")],
    );
    let report = scan_layers(dir.path(), &[tar_layer(&l0)]).await;
    assert_eq!(
        summary(&report.images[0].findings),
        vec!["jwt 0 srv/tool/README info apk:tool-doc"]
    );
    assert_eq!(report.images[0].verdict, Verdict::Clean);
}

/// Builds `demo-1.0-1.noarch.rpm` with `rpmbuild` and installs it with `rpm` into a root
/// whose database is at `var/lib/rpm` (SQLite, RPM 4.16+).
fn rpm_root(dir: &Path, readme: &str, conf: &str, token: &str) -> PathBuf {
    let top = dir.join("rpmbuild");
    let src = dir.join("src");
    std::fs::create_dir_all(top.join("SPECS")).expect("specs");
    write_tree(
        &src,
        &[
            ("README", readme.as_bytes()),
            ("demo.conf", conf.as_bytes()),
            ("token.txt", token.as_bytes()),
        ],
        &[],
    );
    let spec = format!(
        "Name: demo\nVersion: 1.0\nRelease: 1\nSummary: demo\nLicense: MIT\nBuildArch: noarch\n\
         %description\ndemo\n%install\nmkdir -p %{{buildroot}}/usr/share/demo %{{buildroot}}/etc/demo\n\
         cp {s}/README {s}/token.txt %{{buildroot}}/usr/share/demo/\ncp {s}/demo.conf %{{buildroot}}/etc/demo/\n\
         %files\n/usr/share/demo/README\n/usr/share/demo/token.txt\n%config(noreplace) /etc/demo/demo.conf\n",
        s = src.display()
    );
    std::fs::write(top.join("SPECS/demo.spec"), spec).expect("spec");
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("{cmd:?}: {e} (install Debian's `rpm` package; ./test.sh does)")
        });
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("rpmbuild")
        .arg("--define")
        .arg(format!("_topdir {}", top.display()))
        .args(["--quiet", "-bb"])
        .arg(top.join("SPECS/demo.spec")));
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    run(Command::new("rpm")
        .arg("--root")
        .arg(&root)
        .args(["--dbpath", "/var/lib/rpm", "-i", "--nodeps", "--noscripts"])
        .arg(top.join("RPMS/noarch/demo-1.0-1.noarch.rpm")));
    // rpm's lock and shared-memory files are not part of an image.
    for f in [".rpm.lock", "rpmdb.sqlite-shm", "rpmdb.sqlite-wal"] {
        let _ = std::fs::remove_file(root.join("var/lib/rpm").join(f));
    }
    root
}

#[tokio::test]
async fn a_real_rpm_database_proves_its_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let readme = format!("Example request:\n  Authorization: Bearer {JWT}\n");
    let token = format!("GITHUB_TOKEN={PAT}\n");
    let root = rpm_root(dir.path(), &readme, PASSWORD_LINE, &token);
    let db = std::fs::read(root.join("var/lib/rpm/rpmdb.sqlite")).expect("rpmdb");
    let files = lanyard_scan::vendor::rpm::parse_sqlite(&db).expect("parses a real rpmdb");
    let mut listed: Vec<(&str, bool)> = files
        .iter()
        .map(|o| {
            let content = std::fs::read(root.join(&o.path)).expect("listed file exists");
            (o.path.as_str(), FileHashes::of(&content).matches(&o.digest))
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("etc/demo/demo.conf", true),
            ("usr/share/demo/README", true),
            ("usr/share/demo/token.txt", true)
        ]
    );
    assert!(
        files
            .iter()
            .all(|o| o.manager == Manager::Rpm && &*o.package == "demo")
    );

    let l1 = dir.path().join("l1");
    write_tree(
        &l1,
        &[(
            "etc/demo/demo.conf",
            format!("{PASSWORD_LINE}# edited\n").as_bytes(),
        )],
        &[],
    );
    let report = scan_layers(dir.path(), &[tar_layer(&root), tar_layer(&l1)]).await;
    assert_eq!(
        summary(&report.images[0].findings),
        vec![
            "generic-password 0 etc/demo/demo.conf info rpm:demo",
            "generic-password 1 etc/demo/demo.conf counts -",
            "github-pat 0 usr/share/demo/token.txt counts rpm:demo",
            "jwt 0 usr/share/demo/README info rpm:demo",
        ]
    );
}

#[tokio::test]
async fn a_corrupt_record_is_a_warning_and_proves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let readme = format!("token: {JWT}\n");
    let l0 = dir.path().join("l0");
    write_tree(
        &l0,
        &[
            ("usr/share/tool/README", readme.as_bytes()),
            ("var/lib/rpm/rpmdb.sqlite", &[0x53; 4096]),
            (
                "var/lib/dpkg/info/tool.md5sums",
                b"not a checksum  usr/share/tool/README\n",
            ),
        ],
        &[],
    );
    let report = scan_layers(dir.path(), &[tar_layer(&l0)]).await;
    let img = &report.images[0];
    assert_eq!(
        summary(&img.findings),
        vec!["jwt 0 usr/share/tool/README counts -"]
    );
    assert_eq!(img.warnings.len(), 2, "{:?}", img.warnings);
    assert!(img.warnings.iter().all(|w| w.contains("not used")));
}

/// A PEM block with a made-up body of `lines` 64-character lines.
fn pem(kind: &str, lines: usize) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut body = String::new();
    for _ in 0..lines {
        for _ in 0..64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            body.push(alphabet[(x % 64) as usize] as char);
        }
        body.push('\n');
    }
    format!("-----BEGIN {kind}-----\n{body}-----END {kind}-----\n")
}

#[tokio::test]
async fn compressed_vendor_files_and_keys_compiled_into_vendor_libraries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = "usr/local/lib/python3.11/dist-packages";
    // A gzip-compressed data file of a wheel (botocore ships its models as .json.gz): the
    // RECORD hashes the compressed bytes.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, format!("{{\"doc\": \"Bearer {JWT}\"}}").as_bytes())
        .expect("gzip");
    let gz = gz.finish().expect("gzip");
    // A library with a self-test key and bare PEM header constants between NULs, as in
    // libgnutls; and the same key in a file no package owns.
    let key = pem("RSA PRIVATE KEY", 12);
    let mut lib = b"\x7fELF\x02\x01\x01\0".to_vec();
    for c in [
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\n",
        "\n",
    ] {
        lib.extend_from_slice(c.as_bytes());
        lib.push(0);
    }
    lib.extend_from_slice(key.as_bytes());
    lib.push(0);
    let md5sums = md5_line("usr/lib/x86_64-linux-gnu/libdemo.so.1", &lib);
    let record = record_line("vendorlib/data/model.json.gz", &gz);
    let l0 = dir.path().join("l0");
    write_tree(
        &l0,
        &[
            (&format!("{site}/vendorlib/data/model.json.gz"), &gz),
            (
                &format!("{site}/vendorlib-1.0.dist-info/RECORD"),
                record.as_bytes(),
            ),
            ("usr/lib/x86_64-linux-gnu/libdemo.so.1", &lib),
            (
                "var/lib/dpkg/info/libdemo1:amd64.md5sums",
                md5sums.as_bytes(),
            ),
            ("srv/app/tls.key", key.as_bytes()),
        ],
        &[],
    );
    let report = scan_layers(dir.path(), &[tar_layer(&l0)]).await;
    assert_eq!(
        summary(&report.images[0].findings),
        vec![
            format!("jwt 0 {site}/vendorlib/data/model.json.gz info python:vendorlib"),
            "private-key-rsa 0 srv/app/tls.key counts -".to_owned(),
            "private-key-rsa 0 usr/lib/x86_64-linux-gnu/libdemo.so.1 info dpkg:libdemo1".to_owned(),
        ],
        "bare PEM headers are no finding; a key block is, lowered only in a pristine package file"
    );
}
