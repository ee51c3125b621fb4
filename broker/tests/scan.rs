//! The `lanyard-broker scan` command against real images built by buildah and a real OCI
//! registry with token auth (`tests/peers/images.sh`, run by `./test.sh`): exit codes, output
//! formats, the allowlist, registry credentials from files. The scanner library itself is
//! tested in `broker/scan/tests/`.

use std::path::PathBuf;
use std::process::Command;

use lanyard_scan::{Location, RegistryAuth, Report, ScanOptions, Source, Verdict};

fn images() -> PathBuf {
    match std::env::var("LANYARD_TEST_IMAGES") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => panic!(
            "LANYARD_TEST_IMAGES is not set: run ./test.sh (tests/peers/images.sh builds the test images with buildah)"
        ),
    }
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lanyard-broker"))
        .arg("scan")
        .args(args)
        .env_remove("LANYARD_REGISTRY_USERNAME")
        .output()
        .expect("run lanyard-broker");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_exit_codes_formats_and_allowlist() {
    let dirty = format!(
        "oci-archive:{}",
        images().join("copy-env-rm.oci.tar").display()
    );
    let clean = format!(
        "docker-archive:{}",
        images().join("secret-mount-clean.docker.tar").display()
    );
    let (code, out, _) = cli(&[&clean]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verdict: clean"));
    let (code, out, _) = cli(&[&dirty, "--format", "sarif"]);
    assert_eq!(code, 1);
    let sarif: serde_json::Value = serde_json::from_str(&out).expect("SARIF is JSON");
    assert_eq!(sarif["version"], "2.1.0");
    let rules: Vec<&str> = sarif["runs"][0]["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["ruleId"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(rules, vec!["postgres-url", "stripe-secret-key"]);
    let (code, out, _) = cli(&[&dirty, "--format", "json"]);
    assert_eq!(code, 1);
    let report: Report = serde_json::from_str(&out).expect("JSON report");
    // Allow both findings: one by fingerprint, one by path; the image is then clean.
    let dir = tempfile::tempdir().expect("tempdir");
    let allow = dir.path().join("allow.yaml");
    std::fs::write(
        &allow,
        format!(
            "allow:\n  - fingerprint: \"{}\"\n    reason: rotated on 2026-11-01\n  - path: \"app/.env\"\n    rule: postgres-url\n    reason: test database only\n",
            report.images[0].findings[1].fingerprint
        ),
    )
    .expect("write allowlist");
    let (code, out, _) = cli(&[&dirty, "--allowlist", allow.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[allowed: rotated on 2026-11-01]"), "{out}");
    let (code, _, err) = cli(&["oci:/nonexistent-dir"]);
    assert_eq!(code, 2);
    assert!(err.contains("not a directory"), "{err}");
    let (code, _, err) = cli(&["nonsense"]);
    assert_eq!(code, 2);
    assert!(err.contains("docker-archive:PATH"), "{err}");
}

/// `lanyard-broker scan IMAGE | head`: the reader goes away before the report is written;
/// the scan still exits with its verdict's code, quietly (no panic on the broken pipe).
#[test]
fn a_reader_that_goes_away_is_not_a_crash() {
    let dirty = format!(
        "oci-archive:{}",
        images().join("copy-env-rm.oci.tar").display()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_lanyard-broker"))
        .args(["scan", &dirty])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run lanyard-broker");
    // Close the read end at once: the scan takes far longer than this.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The CLI's report of the env-secret image is complete and finds what the library finds
/// (`broker/scan/tests/images.rs` checks those findings one by one).
fn same_as_library(what: &str, cli: &Report, library: &Report) {
    assert_eq!(cli.verdict, Verdict::Dirty, "{what}");
    assert_eq!(cli.images.len(), 1, "{what}");
    let img = &cli.images[0];
    assert!(img.incomplete.is_empty(), "{what}: {:?}", img.incomplete);
    assert!(
        img.stats.layers >= 2 && img.stats.files_scanned > 0,
        "{what}"
    );
    assert!(
        img.findings
            .iter()
            .any(|f| matches!(f.location, Location::Env { .. })),
        "{what}: the config's Env findings"
    );
    assert_eq!(img.findings, library.images[0].findings, "{what}");
}

/// `--registry-token-file` (exit 1: findings), a garbage token file (exit 2, the token not
/// shown), and basic credentials from a file through the registry's token flow, against a real
/// distribution registry with token auth (`lanyard_test_support::registry`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_registry_token_and_password_files() {
    use lanyard_test_support::TokenRegistry;

    let reg = TokenRegistry::start().await;
    let tokens = &reg.token_server;
    let (user, password) = (reg.username().to_owned(), reg.password().to_owned());
    let reference = reg.push_test_image("env-secret").await;
    let pull_scope = "repository:lanyard/env-secret:pull";
    let token = tokens
        .fetch_token(Some((&user, &password)), &[pull_scope])
        .await;
    let library = lanyard_scan::scan(
        &Source::Registry(reference.clone()),
        &ScanOptions {
            auth: RegistryAuth::Bearer(token.clone().into()),
            insecure_loopback_registry: true,
            ..ScanOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("the library with the bearer token: {e}"));
    let garbage = "garbage-bearer-token-0123456789abcdef";

    let dir = tempfile::tempdir().expect("tempdir");
    let good_file = dir.path().join("token");
    std::fs::write(&good_file, format!("{token}\n")).expect("token file");
    let bad_file = dir.path().join("garbage");
    std::fs::write(&bad_file, garbage).expect("garbage token file");
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, &password).expect("password file");
    let url = format!("registry://{reference}");
    let run = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&args)
        })
        .await
        .expect("cli task")
    };
    let path = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    let (code, out, err) = run(vec![
        "--registry-token-file".into(),
        path(&good_file),
        "--insecure-registry".into(),
        url.clone(),
        "--format".into(),
        "json".into(),
    ])
    .await;
    assert_eq!(code, 1, "{out}{err}");
    let cli_report: Report = serde_json::from_str(&out).expect("JSON report");
    same_as_library("CLI with --registry-token-file", &cli_report, &library);
    assert!(!out.contains(&token) && !err.contains(&token));
    let (code, out, err) = run(vec![
        "--registry-token-file".into(),
        path(&bad_file),
        "--insecure-registry".into(),
        url.clone(),
        "--format".into(),
        "json".into(),
    ])
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "no report on an error: {out}");
    assert!(err.contains("fetching the manifest"), "{err}");
    assert!(!err.contains(garbage), "{err}");
    let before = tokens.request_count();
    let (code, out, err) = run(vec![
        "--registry-username".into(),
        user.clone(),
        "--registry-password-file".into(),
        path(&password_file),
        "--insecure-registry".into(),
        url.clone(),
    ])
    .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("verdict: dirty"), "{out}");
    assert!(!out.contains(&password) && !err.contains(&password));
    assert!(
        tokens.request_count() > before,
        "the CLI did the token flow"
    );
}
