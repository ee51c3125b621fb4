//! Hostile image archives, made with GNU tar from files this test writes: link loops between
//! archive members, layer paths that climb out of the archive, absolute links to host files,
//! archives cut short. Each gives a clear error or an incomplete result — never a panic,
//! never `clean`, and never a byte read from outside the archive.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use lanyard_scan::{ScanOptions, Source, Verdict, scan};

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
    let source = Source::DockerArchive(path.to_owned());
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
