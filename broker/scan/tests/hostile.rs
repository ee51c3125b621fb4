//! Hostile image archives, made with GNU tar from files this test writes: link loops between
//! archive members, layer paths that climb out of the archive, absolute links to host files,
//! archives cut short. Each gives a clear error or an incomplete result — never a panic,
//! never `clean`, and never a byte read from outside the archive.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use lanyard_scan::{Location, ScanError, ScanOptions, Source, Verdict, scan};

/// An image config whose one layer has this diff id.
fn config(diff_id: &str) -> String {
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "COPY app /app"}],
    })
    .to_string()
}

const SOME_DIFF_ID: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000001";

/// A docker-archive tarball from `files` (path, contents) and `links` (path, target), in
/// that order, written with GNU tar (which stores symbolic links as links).
fn docker_archive(dir: &Path, files: &[(&str, &[u8])], links: &[(&str, &str)]) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let mut names = Vec::new();
    for (p, data) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(&path, data).expect("write");
        names.push((*p).to_owned());
    }
    for (p, target) in links {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        symlink(target, &path).expect("symlink");
        names.push((*p).to_owned());
    }
    let out = dir.join("image.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&out)
        .arg("-C")
        .arg(&root)
        .args(&names)
        .status()
        .expect("run tar");
    assert!(status.success());
    out
}

fn sha256(bytes: &[u8]) -> String {
    lanyard_scan::util::sha256_digest(bytes)
}

fn manifest(layers: &[&str]) -> String {
    serde_json::json!([{"Config": "config.json", "RepoTags": ["hostile:1"], "Layers": layers}])
        .to_string()
}

/// Scans and insists on "error or incomplete, never clean"; returns the error text or the
/// incomplete reasons.
async fn not_clean(path: &Path) -> String {
    not_clean_source(Source::DockerArchive(path.to_owned())).await
}

#[tokio::test]
async fn a_link_loop_between_members_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manifest(&["a/layer.tar"]);
    let tar = docker_archive(
        dir.path(),
        &[
            ("manifest.json", m.as_bytes()),
            ("config.json", config(SOME_DIFF_ID).as_bytes()),
        ],
        &[
            ("a/layer.tar", "../b/layer.tar"),
            ("b/layer.tar", "../a/layer.tar"),
        ],
    );
    let why = not_clean(&tar).await;
    assert!(why.contains("link loop"), "{why}");
}

#[tokio::test]
async fn layer_paths_and_links_never_leave_the_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A secret on the host, right beside the archive: the scanner must never read it.
    let host = dir.path().join("host-secret");
    std::fs::write(&host, "AKIAIOSFODNN7ZZZZZZZ").expect("write");

    for (i, layer) in [
        "../../../../../../etc/passwd".to_owned(),
        format!("../{}", host.file_name().expect("name").to_string_lossy()),
        host.display().to_string(),
    ]
    .iter()
    .enumerate()
    {
        let case = dir.path().join(format!("climb-{i}"));
        let m = manifest(&[layer]);
        let tar = docker_archive(
            &case,
            &[
                ("manifest.json", m.as_bytes()),
                ("config.json", config(SOME_DIFF_ID).as_bytes()),
            ],
            &[],
        );
        let why = not_clean(&tar).await;
        assert!(why.contains("missing"), "{layer}: {why}");
        assert!(!why.contains("AKIA"), "{why}");
    }

    // A member that is an absolute link to a host file is followed only inside the archive.
    let case = dir.path().join("abs-link");
    let m = manifest(&["layer.tar"]);
    let tar = docker_archive(
        &case,
        &[
            ("manifest.json", m.as_bytes()),
            ("config.json", config(SOME_DIFF_ID).as_bytes()),
        ],
        &[("layer.tar", &host.display().to_string())],
    );
    let why = not_clean(&tar).await;
    assert!(why.contains("missing"), "{why}");
}

#[tokio::test]
async fn an_archive_cut_short_is_never_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A real layer with a secret, then the archive truncated at every 512-byte block.
    let layer_dir = dir.path().join("layer");
    std::fs::create_dir_all(layer_dir.join("app")).expect("dirs");
    std::fs::write(
        layer_dir.join("app/.env"),
        "GITHUB_TOKEN=ghp_R8vXq2LmN4pT7wYz1aBcD3eF5gH6jK9sUvWx\n",
    )
    .expect("write");
    let layer = dir.path().join("layer.tar");
    assert!(
        Command::new("tar")
            .arg("-cf")
            .arg(&layer)
            .arg("-C")
            .arg(&layer_dir)
            .arg("app")
            .status()
            .expect("tar")
            .success()
    );
    let layer_bytes = std::fs::read(&layer).expect("read");
    let m = manifest(&["layer.tar"]);
    let whole = docker_archive(
        &dir.path().join("whole"),
        &[
            ("manifest.json", m.as_bytes()),
            ("config.json", config(&sha256(&layer_bytes)).as_bytes()),
            ("layer.tar", &layer_bytes),
        ],
        &[],
    );
    let full = std::fs::read(&whole).expect("read");
    let source = Source::DockerArchive(whole.clone());
    let r = scan(&source, &ScanOptions::default())
        .await
        .expect("whole archive scans");
    assert_eq!(
        r.verdict,
        Verdict::Dirty,
        "the intact archive finds the token"
    );

    let cut = dir.path().join("cut.tar");
    for blocks in 1..full.len() / 512 {
        std::fs::write(&cut, &full[..blocks * 512]).expect("write");
        let source = Source::DockerArchive(cut.clone());
        if let Ok(r) = scan(&source, &ScanOptions::default()).await {
            assert_ne!(r.verdict, Verdict::Clean, "cut at block {blocks}: {r:#?}");
        }
    }
}

/// A layer tarball (GNU tar) holding one file with a token.
fn token_layer(dir: &Path) -> Vec<u8> {
    let layer_dir = dir.join("layer");
    std::fs::create_dir_all(layer_dir.join("app")).expect("dirs");
    std::fs::write(
        layer_dir.join("app/.env"),
        "GITHUB_TOKEN=ghp_R8vXq2LmN4pT7wYz1aBcD3eF5gH6jK9sUvWx\n",
    )
    .expect("write");
    let layer = dir.join("layer.tar");
    assert!(
        Command::new("tar")
            .arg("-cf")
            .arg(&layer)
            .arg("-C")
            .arg(&layer_dir)
            .arg("app")
            .status()
            .expect("tar")
            .success()
    );
    std::fs::read(&layer).expect("read")
}

fn sha512(bytes: &[u8]) -> String {
    lanyard_scan::util::DigestAlgorithm::Sha512.digest(bytes)
}

/// Writes a blob of an OCI layout under the path its digest names (whatever its content).
fn put_blob(root: &Path, digest: &str, bytes: &[u8]) {
    let (alg, hex) = digest.split_once(':').expect("algorithm:hex");
    let dir = root.join("blobs").join(alg);
    std::fs::create_dir_all(&dir).expect("blobs dir");
    std::fs::write(dir.join(hex), bytes).expect("blob");
}

/// An OCI image layout (image-spec `image-layout.md`) whose index, manifest and config are
/// all referenced by `sha512:` digests: `digest_of` names each blob (the digest written into
/// the referring document; the blob is stored under that name).
fn sha512_layout(
    root: &Path,
    layer: &[u8],
    digest_of: &dyn Fn(&str, &[u8]) -> String,
) -> (String, String) {
    std::fs::create_dir_all(root).expect("root");
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    let layer_digest = digest_of("layer", layer);
    put_blob(root, &layer_digest, layer);
    let config = config(&sha256(layer));
    let config_digest = digest_of("config", config.as_bytes());
    put_blob(root, &config_digest, config.as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    let manifest_digest = digest_of("manifest", manifest.as_bytes());
    put_blob(root, &manifest_digest, manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "sha512:1"}}],
    });
    std::fs::write(root.join("index.json"), index.to_string()).expect("index");
    (manifest_digest, config_digest)
}

fn oci_dir(root: &Path) -> Source {
    Source::OciDir {
        path: root.to_owned(),
        tag: None,
    }
}

#[tokio::test]
async fn sha512_digests_are_verified_not_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = token_layer(dir.path());

    // Every blob named by its true SHA-512: verified, scanned, reported under those digests.
    let good = dir.path().join("good");
    let (manifest_digest, config_digest) = sha512_layout(&good, &layer, &|_, b| sha512(b));
    let r = scan(&oci_dir(&good), &ScanOptions::default())
        .await
        .expect("a sha512 layout scans");
    assert_eq!(r.verdict, Verdict::Dirty, "{r:#?}");
    let img = &r.images[0];
    assert!(img.incomplete.is_empty(), "{:?}", img.incomplete);
    assert_eq!(img.digest, manifest_digest);
    assert_eq!(img.config_digest, config_digest);

    // A blob whose content is not what its sha512 name says: the manifest and the config are
    // refused (the report would be keyed by a digest nobody checked); a layer is incomplete.
    let other = sha512(b"something else");
    for wrong in ["manifest", "config"] {
        let root = dir.path().join(format!("wrong-{wrong}"));
        sha512_layout(&root, &layer, &|what, b| {
            if what == wrong {
                other.clone()
            } else {
                sha512(b)
            }
        });
        let e = scan(&oci_dir(&root), &ScanOptions::default())
            .await
            .expect_err("a wrong sha512 is refused");
        assert!(
            matches!(e, ScanError::BadSource(_)) && e.to_string().contains("does not match"),
            "{wrong}: {e}"
        );
    }
    let root = dir.path().join("wrong-layer");
    sha512_layout(&root, &layer, &|what, b| {
        if what == "layer" {
            other.clone()
        } else {
            sha512(b)
        }
    });
    let why = not_clean_source(oci_dir(&root)).await;
    assert!(why.contains("does not match its manifest"), "{why}");

    // Unknown or malformed algorithms are refused, never read unverified.
    for bad in [
        "md5:900150983cd24fb0d6963f7d28e17f72".to_owned(),
        format!("sha384:{}", "a".repeat(96)),
        format!("sha512:{}", "a".repeat(64)),
    ] {
        for what in ["manifest", "config", "layer"] {
            let root = dir.path().join(format!("bad-{}-{what}", bad.len()));
            let _ = std::fs::remove_dir_all(&root);
            sha512_layout(&root, &layer, &|w, b| {
                if w == what { bad.clone() } else { sha512(b) }
            });
            let e = scan(&oci_dir(&root), &ScanOptions::default())
                .await
                .expect_err("an unsupported digest is refused");
            let msg = e.to_string();
            assert!(
                matches!(e, ScanError::BadSource(_))
                    && (msg.contains("unsupported algorithm") || msg.contains("malformed")),
                "{bad} as the {what}: {msg}"
            );
        }
    }
}

/// Like [`not_clean`], for any source.
async fn not_clean_source(source: Source) -> String {
    match scan(&source, &ScanOptions::default()).await {
        Err(e) => e.to_string(),
        Ok(r) => {
            assert_ne!(r.verdict, Verdict::Clean, "{r:#?}");
            r.images
                .iter()
                .flat_map(|i| i.incomplete.iter().cloned())
                .collect::<Vec<_>>()
                .join("; ")
        }
    }
}

#[tokio::test]
async fn a_docker_archive_diff_id_of_an_unknown_algorithm_is_never_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = token_layer(dir.path());
    let m = manifest(&["layer.tar"]);
    for (i, diff_id) in ["md5:900150983cd24fb0d6963f7d28e17f72", "sha256:x"]
        .iter()
        .enumerate()
    {
        let tar = docker_archive(
            &dir.path().join(format!("case-{i}")),
            &[
                ("manifest.json", m.as_bytes()),
                ("config.json", config(diff_id).as_bytes()),
                ("layer.tar", &layer),
            ],
            &[],
        );
        let why = not_clean(&tar).await;
        assert!(why.contains("cannot be verified"), "{diff_id}: {why}");
    }
}

#[tokio::test]
async fn a_small_gzip_bomb_of_key_shaped_strings_stops_at_the_findings_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A small cap keeps the debug-build test fast; the default cap is the same code.
    let max = 500;
    let opts = ScanOptions {
        limits: lanyard_scan::Limits {
            max_findings: max,
            ..lanyard_scan::Limits::default()
        },
        ..ScanOptions::default()
    };
    let lines = usize::try_from(max).expect("fits") * 20;
    let body = "GITHUB_TOKEN=ghp_R8vXq2LmN4pT7wYz1aBcD3eF5gH6jK9sUvWx\n".repeat(lines);
    // In an app directory the findings count: the cap stops the scan (dirty, and incomplete
    // reasons say why). In a test directory every finding is informational: those are listed
    // up to their own bound and counted past it, and the scan goes on to the end (a flood
    // of public test material neither fills memory nor hides what comes after it).
    for (case, file, want) in [
        ("info", "tests/keys.txt", Verdict::Clean),
        ("counts", "app/keys.txt", Verdict::Dirty),
    ] {
        let case = dir.path().join(case);
        let layer_dir = case.join("layer");
        let path = layer_dir.join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(&path, &body).expect("write");
        let layer = case.join("layer.tar");
        let top = file.split('/').next().expect("top");
        let tar_ok = Command::new("tar")
            .arg("-cf")
            .arg(&layer)
            .arg("-C")
            .arg(&layer_dir)
            .arg(top)
            .status()
            .expect("tar")
            .success();
        assert!(tar_ok);
        let diff_id = sha256(&std::fs::read(&layer).expect("read"));
        let gzip_ok = Command::new("gzip")
            .arg("-9")
            .arg(&layer)
            .status()
            .expect("gzip")
            .success();
        assert!(gzip_ok);
        let gz = std::fs::read(case.join("layer.tar.gz")).expect("read");
        assert!(gz.len() * 100 < body.len(), "a bomb: {} bytes", gz.len());
        let m = manifest(&["layer.tar.gz"]);
        let tar = docker_archive(
            &case.join("archive"),
            &[
                ("manifest.json", m.as_bytes()),
                ("config.json", config(&diff_id).as_bytes()),
                ("layer.tar.gz", &gz),
            ],
            &[],
        );
        let r = scan(&Source::DockerArchive(tar), &opts)
            .await
            .expect("scans");
        let img = &r.images[0];
        assert_eq!(img.verdict, want, "{file}: {:?}", img.incomplete);
        if want == Verdict::Clean {
            let listed = lanyard_scan::layer::MAX_LISTED_INFO_FINDINGS;
            assert_eq!(img.findings.len() as u64, listed, "{file}");
            assert_eq!(img.stats.info_not_listed, lines as u64 - listed);
            assert!(img.incomplete.is_empty(), "{:?}", img.incomplete);
        } else {
            assert_eq!(img.findings.len() as u64, max, "{file}");
            assert!(
                img.incomplete
                    .iter()
                    .any(|i| i.contains("limit max_findings")),
                "{file}: {:?}",
                img.incomplete
            );
        }
    }
}

/// A real secret after a flood of public test material is still found: the informational
/// findings before it do not use up the cap that stops the scan.
#[tokio::test]
async fn a_secret_after_a_flood_of_test_material_is_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let noise = "PASS: suite.exp: token=ghp_R8vXq2LmN4pT7wYz1aBcD3eF5gH6jK9sUvWx\n".repeat(3_000);
    let secret = b"GITHUB_TOKEN=ghp_Zq8vXr2LmN4pT7wYz1aBcD3eF5gH6jK9sUvW\n";
    let layer_dir = dir.path().join("layer");
    for (p, data) in [
        ("usr/share/doc/tool/tests/check.log", noise.as_bytes()),
        ("zz/app/.env", &secret[..]),
    ] {
        let path = layer_dir.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(&path, data).expect("write");
    }
    let layer = dir.path().join("layer.tar");
    let tar_ok = Command::new("tar")
        .arg("-cf")
        .arg(&layer)
        .arg("-C")
        .arg(&layer_dir)
        .args(["usr", "zz"])
        .status()
        .expect("tar")
        .success();
    assert!(tar_ok);
    let bytes = std::fs::read(&layer).expect("read");
    let diff_id = sha256(&bytes);
    let m = manifest(&["layer.tar"]);
    let tar = docker_archive(
        &dir.path().join("archive"),
        &[
            ("manifest.json", m.as_bytes()),
            ("config.json", config(&diff_id).as_bytes()),
            ("layer.tar", &bytes),
        ],
        &[],
    );
    let opts = ScanOptions {
        limits: lanyard_scan::Limits {
            max_findings: 500,
            ..lanyard_scan::Limits::default()
        },
        ..ScanOptions::default()
    };
    let r = scan(&Source::DockerArchive(tar), &opts)
        .await
        .expect("scans");
    let img = &r.images[0];
    assert!(img.incomplete.is_empty(), "{:?}", img.incomplete);
    assert_eq!(img.verdict, Verdict::Dirty);
    let counted: Vec<_> = img
        .findings
        .iter()
        .filter(|f| lanyard_scan::report::counts(f))
        .collect();
    assert_eq!(counted.len(), 1, "{counted:?}");
    assert!(matches!(&counted[0].location, Location::File { path, .. } if path == "zz/app/.env"));
    assert!(img.stats.info_not_listed > 0);
}

#[tokio::test]
async fn config_findings_count_against_the_cap_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layer = token_layer(dir.path());
    let env: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "GITHUB_TOKEN_{i}=ghp_R8vXq2LmN4pT7wYz1aBcD3eF5gH6jK9sUvW{}",
                i % 10
            )
        })
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]},
        "history": [{"created_by": "COPY app /app"}],
    })
    .to_string();
    let m = manifest(&["layer.tar"]);
    let tar = docker_archive(
        dir.path(),
        &[
            ("manifest.json", m.as_bytes()),
            ("config.json", config.as_bytes()),
            ("layer.tar", &layer),
        ],
        &[],
    );
    let opts = ScanOptions {
        limits: lanyard_scan::Limits {
            max_findings: 5,
            ..lanyard_scan::Limits::default()
        },
        ..ScanOptions::default()
    };
    let r = scan(&Source::DockerArchive(tar), &opts)
        .await
        .expect("scans");
    let img = &r.images[0];
    assert_eq!(img.findings.len(), 5);
    assert_eq!(img.verdict, Verdict::Dirty);
    assert!(
        img.incomplete
            .iter()
            .any(|i| i.starts_with("image config: more than 5 findings")),
        "{:?}",
        img.incomplete
    );
    assert!(
        img.incomplete
            .iter()
            .any(|i| i.starts_with("layer 0") && i.contains("max_findings")),
        "the layer stopped at its first finding: {:?}",
        img.incomplete
    );
}

/// A minimal HTTP server on loopback: answers every request with `response` and records each
/// request's head.
async fn http_stub(response: String) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            log.lock()
                .expect("log")
                .push(String::from_utf8_lossy(&head).into_owned());
            let _ = conn.write_all(response.as_bytes()).await;
        }
    });
    (addr.to_string(), seen)
}

#[tokio::test]
async fn registry_credentials_never_go_to_a_foreign_token_realm() {
    // The "token service" a hostile registry names: on another host (`localhost`, not the
    // registry's `127.0.0.1`). It must never see a request, let alone the credentials.
    let (realm_addr, realm_seen) = http_stub(
        "HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"token\":\"t\"}\r\n"
            .into(),
    )
    .await;
    let realm_port = realm_addr.rsplit_once(':').expect("port").1;
    let challenge = format!(
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://localhost:{realm_port}/token\",service=\"s\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (registry, registry_seen) = http_stub(challenge).await;
    let opts = ScanOptions {
        insecure_loopback_registry: true,
        auth: lanyard_scan::RegistryAuth::Basic {
            username: "ci".into(),
            password: lanyard::Secret::new("hunter2-registry-password"),
        },
        ..ScanOptions::default()
    };
    let e = scan(&Source::Registry(format!("{registry}/app:1")), &opts)
        .await
        .expect_err("refused");
    let msg = e.to_string();
    assert!(
        matches!(e, ScanError::Registry(_)) && msg.contains("refused") && msg.contains("own host"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(
        realm_seen.lock().expect("log").is_empty(),
        "the foreign realm was called: {:?}",
        realm_seen.lock().expect("log")
    );
    let asked = registry_seen.lock().expect("log").clone();
    assert!(
        asked
            .iter()
            .all(|h| !h.to_ascii_lowercase().contains("authorization:")),
        "{asked:?}"
    );
}
