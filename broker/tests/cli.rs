//! The `lanyard-broker` binary, as an operator runs it.

use std::path::Path;
use std::process::{Command, Output};

use lanyard_test_support::{OidcIssuer, TestBroker, TestPki};

fn broker_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lanyard-broker"));
    c.env_remove("LANYARD_BROKER_URL")
        .env_remove("LANYARD_CA_FILE")
        .env_remove("LANYARD_ADMIN_TOKEN_FILE")
        .env("LANYARD_LOG", "warn");
    c
}

fn run(args: &[&str]) -> Output {
    broker_cmd()
        .args(args)
        .output()
        .expect("run lanyard-broker")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn help_teaches_with_examples() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let t = text(&out);
    for needle in [
        "serve",
        "dev",
        "policy",
        "audit",
        "token",
        "Examples:",
        "Exit codes",
    ] {
        assert!(t.contains(needle), "--help lacks {needle}: {t}");
    }
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn policy_check_accepts_the_shipped_policies() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let out = run(&["policy", "check", dir.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ok"));
}

#[test]
fn policy_check_points_at_file_and_line_of_a_typo() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "roles:\n  app:\n    backend: jwt\n    max_ttl_secnds: 60\n",
    )
    .expect("write");
    let out = run(&["policy", "check", dir.path().to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("bad.yaml:4"), "{t}");
    assert!(t.contains("max_ttl_secnds"), "{t}");
}

/// `policy explain` of the shipped policies in `d` for `shop/api` asking for `orders-api`
/// (a rule grants it).
fn explain_orders_api(d: &str) -> [&str; 14] {
    [
        "policy",
        "explain",
        "--dir",
        d,
        "--issuer",
        "https://kubernetes.default.svc.cluster.local",
        "--subject",
        "system:serviceaccount:shop:api",
        "--namespace",
        "shop",
        "--service-account",
        "api",
        "--role",
        "orders-api",
    ]
}

/// `lanyard-broker policy explain … | head` once panicked ("failed printing to stdout: Broken
/// pipe"). With nobody reading its output a command ends quietly, and its exit says so.
#[test]
fn a_command_whose_reader_went_away_ends_quietly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for args in [
        vec!["policy", "check", dir.to_str().expect("utf8")],
        explain_orders_api(dir.to_str().expect("utf8")).to_vec(),
    ] {
        // A pipe whose read end is closed before the command starts: its first write fails.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = broker_cmd()
            .args(&args)
            .stdout(writer)
            .output()
            .expect("run lanyard-broker");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn policy_explain_names_the_rule() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let d = dir.to_str().expect("utf8");
    let allowed = run(&explain_orders_api(d));
    assert!(allowed.status.success(), "{}", text(&allowed));
    let denied = run(&[
        "policy",
        "explain",
        "--dir",
        d,
        "--issuer",
        "https://kubernetes.default.svc.cluster.local",
        "--subject",
        "system:serviceaccount:dev:api",
        "--namespace",
        "dev",
        "--service-account",
        "api",
        "--role",
        "orders-api",
    ]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(text(&denied).contains("namespace"), "{}", text(&denied));
}

#[test]
fn serve_refuses_bad_config_and_unreadable_certificates_with_the_file_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = TestPki::generate(&dir.path().join("tls"));
    std::fs::create_dir_all(dir.path().join("policies")).expect("mkdir");
    std::fs::write(
        dir.path().join("policies/p.yaml"),
        lanyard_test_support::broker::DEFAULT_POLICY,
    )
    .expect("policy");
    let base = "public_url: https://127.0.0.1:1\npolicies_dir: policies\nstore:\n  sqlite_path: s.db\naudit:\n  sink: a.log\nlisten: 127.0.0.1:0\n";
    // A typo'd field.
    let cfg = dir.path().join("typo.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{base}tls:\n  cert_file: {}\n  key_file: {}\n  client_ca: x\n",
            pki.cert_path().display(),
            pki.key_path().display()
        ),
    )
    .expect("write");
    let out = run(&["serve", "--config", cfg.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("typo.yaml") && t.contains("client_ca"), "{t}");

    // A certificate file that does not exist.
    let cfg = dir.path().join("nocert.yaml");
    std::fs::write(
        &cfg,
        format!(
            "{base}tls:\n  cert_file: missing-cert.pem\n  key_file: {}\n",
            pki.key_path().display()
        ),
    )
    .expect("write");
    let out = run(&["serve", "--config", cfg.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("missing-cert.pem"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_audit_verify_and_query_against_a_running_broker() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let admin_file = broker.dir().join("admin-token");
    let mut cmd = broker_cmd();
    cmd.env("LANYARD_BROKER_URL", &broker.url)
        .env("LANYARD_CA_FILE", broker.pki.ca_path())
        .env("LANYARD_ADMIN_TOKEN_FILE", &admin_file)
        .args(["token", "create", "--role", "boot", "--ttl", "5m"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
        .await
        .expect("join");
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(token.starts_with("lbt_"), "{token}");
    let (status, _) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 200);
    let sa = issuer.k8s_token("shop", "api", "lanyard", 600);
    let (status, _) = broker.post_credentials(Some(&sa), "").await;
    assert_eq!(status, 200);
    let (status, _) = broker.post_credentials(Some("junk"), "").await;
    assert_eq!(status, 401);
    let audit = broker.audit_file.clone();
    let store = broker.store_file.clone();
    let _dir = broker.stop().await;

    let a = audit.to_str().expect("utf8");
    let out = run(&[
        "audit",
        "verify",
        a,
        "--store",
        store.to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    let out = run(&["audit", "query", a, "--decision", "deny"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("\"deny\""));
    let out = run(&[
        "audit",
        "query",
        a,
        "--identity",
        "system:serviceaccount:shop:*",
        "--event",
        "issue",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    // Edit one record: verify names the line.
    let original = std::fs::read_to_string(&audit).expect("read");
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    lines[1] = lines[1].replace("\"allow\"", "\"deny\"");
    std::fs::write(&audit, lines.join("\n") + "\n").expect("write");
    let out = run(&["audit", "verify", a]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("line 2"), "{}", text(&out));

    // Drop the last record: only the store's head reveals it.
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    lines.pop();
    std::fs::write(&audit, lines.join("\n") + "\n").expect("write");
    let out = run(&[
        "audit",
        "verify",
        a,
        "--store",
        store.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

/// The README's first command, as a new user runs it: `lanyard-broker dev` with nothing
/// installed. It must put a credential on disk, refresh-ready, and stop cleanly on Ctrl-C.
#[test]
fn dev_mode_writes_a_credential_and_stops_on_ctrl_c() {
    let work = tempfile::tempdir().expect("tmp");
    let dev_dir = work.path().join("devdir");
    let child = broker_cmd()
        .env("LANYARD_LOG", "info")
        .current_dir(work.path())
        .args(["dev", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dev_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn dev");
    let token = dev_dir.join("secrets/dev-app/token");
    let mut waited = 0;
    while !token.is_file() && waited < 300 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
    }
    let written = token.is_file();
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    let out = child.wait_with_output().expect("wait");
    let t = text(&out);
    assert!(written, "no credential after 30 s: {t}");
    assert!(out.status.success(), "dev mode exits 0 on Ctrl-C: {t}");
    assert!(
        t.contains("lanyard dev broker is running at https://127.0.0.1:"),
        "{t}"
    );
    assert!(t.contains("curl --cacert"), "prints how to use it: {t}");
    // Logs go through a writer thread: what was queued at exit is flushed, and stderr that
    // is not a terminal gets no colour codes.
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("broker stopped"), "{logs}");
    assert!(!logs.contains('\u{1b}'), "no ANSI escapes in {logs}");
    for f in [
        "tls/ca.pem",
        "admin-token",
        "store.db",
        "audit.log",
        "broker.yaml",
    ] {
        assert!(dev_dir.join(f).exists(), "{f} missing");
    }
    // The generated config is a real one: `serve --config` accepts it (checked by loading).
    let jwt = std::fs::read_to_string(&token).expect("read token");
    assert_eq!(jwt.split('.').count(), 3, "a JWT");
    let out = run(&[
        "audit",
        "verify",
        dev_dir.join("audit.log").to_str().expect("utf8"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn policy_explain_checks_the_image_repository_of_a_bound_image() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("p.yaml"),
        "roles:\n  db: {backend: jwt, max_ttl_seconds: 60}\nrules:\n  - name: shop-images\n    match: {bootstrap_role: db, image_repository: \"registry.example.com/shop/*\"}\n    roles: [db]\n",
    )
    .expect("write");
    let d = dir.path().to_str().expect("utf8");
    let digest = format!("sha256:{}", "a".repeat(64));
    let explain = |image: &str| {
        run(&[
            "policy",
            "explain",
            "--dir",
            d,
            "--issuer",
            "lanyard:bootstrap",
            "--subject",
            "bootstrap:bt_1",
            "--bootstrap-role",
            "db",
            "--image",
            image,
            "--role",
            "db",
        ])
    };
    let allowed = explain(&format!("registry.example.com/shop/api@{digest}"));
    assert!(allowed.status.success(), "{}", text(&allowed));
    let denied = explain(&format!("registry.example.com/dev/api@{digest}"));
    assert!(!denied.status.success());
    let t = text(&denied);
    assert!(
        t.contains("image_repository") && t.contains("registry.example.com/dev/api"),
        "{t}"
    );
}

#[test]
fn policy_explain_checks_the_image_repository_of_a_pods_admission_record() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("p.yaml"),
        "roles:\n  db: {backend: jwt, max_ttl_seconds: 60}\nrules:\n  - name: shop-pods\n    match: {namespace: shop, image_repository: \"registry.example.com/shop/*\"}\n    roles: [db]\n",
    )
    .expect("write");
    let d = dir.path().to_str().expect("utf8");
    let digest = format!("sha256:{}", "a".repeat(64));
    let explain = |images: &[String]| {
        let mut args = vec![
            "policy".to_owned(),
            "explain".into(),
            "--dir".into(),
            d.into(),
            "--issuer".into(),
            "https://kubernetes.test".into(),
            "--subject".into(),
            "system:serviceaccount:shop:api".into(),
            "--namespace".into(),
            "shop".into(),
            "--service-account".into(),
            "api".into(),
            "--role".into(),
            "db".into(),
        ];
        for i in images {
            args.push("--pod-image".into());
            args.push(i.clone());
        }
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let shop = format!("registry.example.com/shop/api@{digest}");
    let allowed = explain(std::slice::from_ref(&shop));
    assert!(allowed.status.success(), "{}", text(&allowed));
    // Every image of the record must match: a debug container from elsewhere does not.
    let denied = explain(&[shop, format!("docker.io/library/busybox@{digest}")]);
    assert!(!denied.status.success());
    assert!(
        text(&denied).contains("docker.io/library/busybox"),
        "{}",
        text(&denied)
    );
    let none = explain(&[]);
    assert!(
        !none.status.success() && text(&none).contains("no image from a trusted source"),
        "{}",
        text(&none)
    );
}

/// `lanyard-broker dev` gates images too, reading a plain-HTTP registry on loopback (the test
/// registry of `tests/peers/images.sh`): a token bound to a dirty image is refused with the
/// finding, as its banner says.
#[test]
fn dev_mode_gates_images_from_a_loopback_registry() {
    let registry = std::env::var("LANYARD_TEST_REGISTRY")
        .expect("LANYARD_TEST_REGISTRY is not set: `source tests/peers/images.sh` first");
    let work = tempfile::tempdir().expect("tmp");
    let dev_dir = work.path().join("devdir");
    let child = broker_cmd()
        .current_dir(work.path())
        .args(["dev", "--no-sidecar", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dev_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn dev");
    let config = dev_dir.join("broker.yaml");
    let url = (0..300)
        .find_map(|_| {
            let text = std::fs::read_to_string(&config).unwrap_or_default();
            let url = text
                .lines()
                .find_map(|l| l.strip_prefix("public_url: "))
                .map(|u| u.trim_matches('"').to_owned());
            // Ready once the admin token and the server are there.
            if url.is_some() && dev_dir.join("bootstrap-token").is_file() {
                return url;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            None
        })
        .expect("dev mode started");
    let image = |args: &[&str]| {
        broker_cmd()
            .arg("image")
            .args(args)
            .args(["--broker", &url, "--ca"])
            .arg(dev_dir.join("tls/ca.pem"))
            .arg("--admin-token-file")
            .arg(dev_dir.join("admin-token"))
            .output()
            .expect("run")
    };
    let mut out = image(&["scan", &format!("{registry}/lanyard/env-secret:1")]);
    for _ in 0..20 {
        // The listener may not accept yet right after the files appear.
        if !text(&out).contains("cannot reach broker") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        out = image(&["scan", &format!("{registry}/lanyard/env-secret:1")]);
    }
    let pid = child.id().to_string();
    let clean = image(&["scan", &format!("{registry}/lanyard/multistage-clean:1")]);
    // The validating webhook, as its banner shows: the sample review (a pod running
    // 127.0.0.1:5000/app:1) with the dirty image, and the dev API-server token.
    let review = std::fs::read_to_string(dev_dir.join("admission-review.json"))
        .expect("sample review")
        .replace(
            "127.0.0.1:5000/app:1",
            &format!("{registry}/lanyard/env-secret:1"),
        );
    let token = std::fs::read_to_string(dev_dir.join("admission-token")).expect("token");
    let ca = std::fs::read(dev_dir.join("tls/ca.pem")).expect("ca");
    let answer: serde_json::Value =
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(async {
                reqwest::Client::builder()
                    .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("pem"))
                    .build()
                    .expect("client")
                    .post(format!("{url}/v1/admission/validate"))
                    .bearer_auth(token.trim())
                    .header("content-type", "application/json")
                    .body(review)
                    .send()
                    .await
                    .expect("review")
                    .json()
                    .await
                    .expect("json")
            });
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    let dev = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1), "dirty: {}", text(&out));
    assert!(
        text(&out).contains("config Env AWS_ACCESS_KEY_ID"),
        "{}",
        text(&out)
    );
    assert_eq!(clean.status.code(), Some(0), "clean: {}", text(&clean));
    let banner = text(&dev);
    assert!(
        banner.contains("lanyard-broker image scan") && banner.contains("--image"),
        "{banner}"
    );
    assert!(banner.contains("/v1/admission/validate"), "{banner}");
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("AWS_ACCESS_KEY_ID")),
        "{answer}"
    );
    assert!(
        std::fs::read_to_string(&config)
            .expect("config")
            .contains("insecure_loopback_registries: true")
    );
}

/// `lanyard-broker dev` serves both admission webhooks, and the steps its banner prints work
/// as printed against a plain-HTTP loopback registry (the test registry of
/// `tests/peers/images.sh`, written into the example review as the banner says to): scan
/// ahead, `image verdict`, and the `curl` of the example AdmissionReview to
/// `/v1/admission/mutate`, which answers with the patch pinning the tag to the digest the scan
/// printed. The `/v1/admission/validate` line is printed the same way, with the same token
/// and file.
#[test]
fn dev_mode_serves_the_admission_webhooks_as_its_banner_shows() {
    use base64::Engine as _;
    use std::io::BufRead as _;
    let registry = std::env::var("LANYARD_TEST_REGISTRY")
        .expect("LANYARD_TEST_REGISTRY is not set: `source tests/peers/images.sh` first");
    let work = tempfile::tempdir().expect("tmp");
    let dev_dir = work.path().join("devdir");
    let mut child = broker_cmd()
        .current_dir(work.path())
        .args(["dev", "--no-sidecar", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&dev_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn dev");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Ctrl-C stops.") {
                let _ = tx.send(banner.clone());
            }
        }
    });
    let banner = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the dev banner");
    let pid = child.id().to_string();
    let step = |starts: &str| {
        banner
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(starts))
            .unwrap_or_else(|| panic!("no `{starts}` step in:\n{banner}"))
            .to_owned()
    };
    let bin = env!("CARGO_BIN_EXE_lanyard-broker");
    let sh = |script: &str| {
        Command::new("sh")
            .args(["-c", script])
            .env("LANYARD_LOG", "warn")
            .output()
            .expect("sh")
    };
    let export = step("export LANYARD_BROKER_URL=");
    let tag = format!("{registry}/lanyard/multistage-clean:1");
    let scan = step("lanyard-broker image scan")
        .replace("lanyard-broker", bin)
        .replace("127.0.0.1:5000/app:1", &tag);
    let mut out = sh(&format!("{export}; {scan}"));
    for _ in 0..20 {
        // The listener may not accept yet right after the banner.
        if !text(&out).contains("cannot reach broker") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        out = sh(&format!("{export}; {scan}"));
    }
    let scanned = text(&out);
    let digest = scanned
        .split("@sha256:")
        .nth(1)
        .map(|rest| format!("sha256:{}", &rest[..64]))
        .unwrap_or_else(|| panic!("no digest in: {scanned}"));
    let pinned = format!("{registry}/lanyard/multistage-clean@{digest}");
    let verdict = step("lanyard-broker image verdict")
        .replace("lanyard-broker", bin)
        .replace("127.0.0.1:5000/app@sha256:DIGEST", &pinned);
    let verdict = sh(&format!("{export}; {verdict}"));
    // "Edit the image for your registry."
    let review = dev_dir.join("admission-review.json");
    let text_of_review = std::fs::read_to_string(&review).expect("example review");
    assert!(text_of_review.contains("127.0.0.1:5000/app:1"));
    std::fs::write(
        &review,
        text_of_review.replace("127.0.0.1:5000/app:1", &tag),
    )
    .expect("edit");
    let mutate_line = banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl") && l.ends_with("/v1/admission/mutate"))
        .expect("a curl of the mutate route")
        .to_owned();
    let validate_line = banner
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl") && l.ends_with("/v1/admission/validate"))
        .expect("a curl of the validate route")
        .to_owned();
    let answer = sh(&format!("{mutate_line} --silent --show-error"));
    let validated = sh(&format!("{validate_line} --silent --show-error"));
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    let _ = child.wait();
    assert_eq!(out.status.code(), Some(0), "scan: {scanned}");
    assert_eq!(
        verdict.status.code(),
        Some(0),
        "verdict: {}",
        text(&verdict)
    );
    assert!(text(&verdict).contains("clean"), "{}", text(&verdict));
    let answer: serde_json::Value =
        serde_json::from_slice(&answer.stdout).unwrap_or_else(|_| panic!("{}", text(&answer)));
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().expect("a patch"))
        .expect("base64");
    let patch: serde_json::Value = serde_json::from_slice(&patch).expect("json");
    assert_eq!(
        patch,
        serde_json::json!([{"op": "replace", "path": "/spec/containers/0/image", "value": pinned}])
    );
    // The validate step: the same credential and review, the other route: the clean image
    // is admitted (and the pod recorded).
    assert_eq!(
        validate_line.replace("/v1/admission/validate", "/v1/admission/mutate"),
        mutate_line
    );
    let validated: serde_json::Value = serde_json::from_slice(&validated.stdout)
        .unwrap_or_else(|_| panic!("{}", text(&validated)));
    assert_eq!(validated["response"]["allowed"], true, "{validated}");
}

/// Runs `lanyard-broker ARGS --broker … --ca … --admin-token-file …` against `broker` off the
/// async runtime.
async fn admin_cli(broker: &TestBroker, args: &[&str]) -> Output {
    let mut cmd = broker_cmd();
    cmd.args(args)
        .args(["--broker", &broker.url, "--ca"])
        .arg(broker.pki.ca_path())
        .arg("--admin-token-file")
        .arg(broker.dir().join("admin-token"));
    tokio::task::spawn_blocking(move || cmd.output().expect("run lanyard-broker"))
        .await
        .expect("join")
}

/// `GET /v1/jwks/revoked`: status, `Cache-Control`, JSON.
async fn revocation_list(broker: &TestBroker) -> (u16, String, serde_json::Value) {
    let resp = broker
        .http()
        .get(format!("{}/v1/jwks/revoked", broker.url))
        .send()
        .await
        .expect("list request");
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, cache, resp.json().await.expect("list JSON"))
}

/// `POST /v1/introspect` of `token` with `bearer` as the caller's credential.
async fn introspect(
    broker: &TestBroker,
    bearer: Option<&str>,
    token: &str,
) -> (u16, serde_json::Value) {
    let mut req = broker
        .http()
        .post(format!("{}/v1/introspect", broker.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&token_type_hint=access_token"));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.expect("introspect request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Issue 16: `lease revoke` of a broker JWT against a running broker — recorded, audited, and
/// published: the JWT's `jti` enters the revocation list beside the JWKS at once, and
/// introspection answers inactive; an unknown lease is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_revoke_puts_a_jwt_on_the_revocation_list_and_introspection_turns_inactive() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let sa = issuer.k8s_token("shop", "api", "lanyard", 600);
    let (status, body) = broker.post_credentials(Some(&sa), "{}").await;
    assert_eq!(status, 200, "{body}");
    let cred = &body["credentials"][0];
    let lease_id = cred["lease_id"].as_str().expect("lease id").to_owned();
    let jwt = cred["data"]["token"].as_str().expect("a JWT").to_owned();

    let (status, cache, list) = revocation_list(&broker).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(cache, "public, max-age=30");
    assert_eq!(list["revoked"], serde_json::json!([]));
    assert_eq!(list["iss"], broker.broker.config().public_url);

    // Introspection needs a caller credential: none, or junk, is a 401.
    assert_eq!(introspect(&broker, None, &jwt).await.0, 401);
    assert_eq!(introspect(&broker, Some("junk"), &jwt).await.0, 401);
    let caller = issuer.k8s_token("shop", "web", "lanyard", 600);
    let (status, active) = introspect(&broker, Some(&caller), &jwt).await;
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["jti"], lease_id.as_str());
    assert_eq!(active["sub"], "system:serviceaccount:shop:api");
    assert_eq!(active["aud"], "app");
    // Not a JWT of this broker: inactive, nothing more.
    let (_, other) = introspect(&broker, Some(&caller), &sa).await;
    assert_eq!(other, serde_json::json!({"active": false}));
    // A bootstrap token is no caller credential, and is not spent by trying.
    let boot = broker.mint(&["boot"], 300).await;
    assert_eq!(introspect(&broker, Some(&boot), &jwt).await.0, 401);
    assert_eq!(
        broker.post_credentials(Some(&boot), "").await.0,
        200,
        "not spent"
    );
    // A body without a token: 400.
    let resp = broker
        .http()
        .post(format!("{}/v1/introspect", broker.url))
        .bearer_auth(&caller)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token_type_hint=access_token")
        .send()
        .await
        .expect("introspect");
    assert_eq!(resp.status().as_u16(), 400);

    let out = admin_cli(&broker, &["lease", "revoke", &lease_id]).await;
    assert!(out.status.success(), "{}", text(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    assert_eq!(answer["lease_id"], lease_id.as_str());
    assert_eq!(answer["already_revoked"], false);
    assert_eq!(
        answer["upstream_revoked"], false,
        "a JWT cannot be recalled"
    );

    let (status, _, list) = revocation_list(&broker).await;
    assert_eq!(status, 200);
    let entries = list["revoked"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["jti"], lease_id.as_str());
    let exp = lanyard::clock::parse_rfc3339(cred["expires_at"].as_str().expect("expiry"))
        .expect("RFC 3339");
    assert_eq!(entries[0]["exp"], lanyard::clock::unix_seconds(exp));
    let (status, inactive) = introspect(&broker, Some(&caller), &jwt).await;
    assert_eq!(status, 200);
    assert_eq!(inactive, serde_json::json!({"active": false}));

    // Again: recorded once; an unknown lease: refused, named.
    let out = admin_cli(&broker, &["lease", "revoke", &lease_id]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"already_revoked\":true"));
    let out = admin_cli(&broker, &["lease", "revoke", "ls_000000000000000000000000"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("404 not_found"), "{}", text(&out));
    assert!(text(&out).contains("no lease"), "{}", text(&out));

    let revokes: Vec<_> = broker
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "lease_revoke")
        .collect();
    assert_eq!(revokes.len(), 2, "{revokes:?}");
    assert_eq!(revokes[0]["lease_id"], lease_id.as_str());
}

/// Issue 16: `token revoke` of an unredeemed bootstrap token against a running broker: the
/// token is refused afterwards; an unknown id is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_revoke_refuses_an_unredeemed_token_afterwards() {
    let broker = TestBroker::start(None).await;
    let out = admin_cli(&broker, &["token", "create", "--role", "boot", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let minted: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let token = minted["token"].as_str().expect("token").to_owned();
    let id = minted["token_id"].as_str().expect("id").to_owned();

    let out = admin_cli(&broker, &["token", "revoke", &id]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("revoked bootstrap token {id}")),
        "{}",
        text(&out)
    );
    let (status, body) = broker.post_credentials(Some(&token), "").await;
    assert_eq!(status, 401, "{body}");

    let out = admin_cli(&broker, &["token", "revoke", "bt_0000000000000000"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("bt_0000000000000000"), "{}", text(&out));
    assert!(
        broker
            .audit_records()
            .iter()
            .any(|r| r["event"] == "token_revoke" && r["token_id"] == id.as_str()),
        "audited"
    );
}

/// Issue 16: `reload` against a running broker: a broken policy file is refused with its file
/// and line, and the last good set keeps serving; a fixed one serves as soon as `reload`
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_broken_policy_and_applies_a_good_one() {
    let issuer = OidcIssuer::start().await;
    let broker = TestBroker::start(Some(&issuer)).await;
    let web = issuer.k8s_token("shop", "web", "lanyard", 600);
    let (status, _) = broker.post_credentials(Some(&web), "{}").await;
    assert_eq!(status, 403, "no rule for shop/web yet");

    broker.write_policy(
        "web.yaml",
        "rules:\n  - name: web\n    match: {namespace: shop}\n    roles: [no-such-role]\n",
    );
    let out = admin_cli(&broker, &["reload"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("400 bad_request"), "{t}");
    assert!(t.contains("web.yaml:"), "{t}");
    assert!(t.contains("last good set kept"), "{t}");
    let sa = issuer.k8s_token("shop", "api", "lanyard", 600);
    let (status, _) = broker.post_credentials(Some(&sa), "{}").await;
    assert_eq!(status, 200, "the last good set serves");

    broker.write_policy(
        "web.yaml",
        "rules:\n  - name: web\n    match: {namespace: shop, service_account: web}\n    roles: [app]\n",
    );
    let out = admin_cli(&broker, &["reload"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    // The broker's own reload tick may have loaded it a moment before.
    assert!(
        answer["reloaded"] == true || answer["reason"] == "unchanged",
        "{answer}"
    );
    let (status, body) = broker.post_credentials(Some(&web), "{}").await;
    assert_eq!(status, 200, "{body}");
}
