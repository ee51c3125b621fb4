//! The image gate end to end, with real images built by buildah and real OCI registries on
//! loopback (`tests/peers/images.sh`, run by `./test.sh`): a bootstrap token bound to a dirty
//! image gets nothing, to a clean one gets credentials; a tag that moves; an index with one
//! dirty platform; the registry down; audit mode; exemptions; a ruleset change re-scanning in
//! the background; one scan per digest for concurrent requests; a scan outliving the request
//! that timed out. The pure decision is unit-tested in `gate::decide`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use lanyard::wire::ErrorCode;
use lanyard_broker::authn::{BOOTSTRAP_ISSUER, BootstrapBinding, Identity};
use lanyard_broker::broker::Authenticated;
use lanyard_broker::store::memory::MemoryStore;
use lanyard_broker::store::{Store, VerdictRecord};
use lanyard_scan::{ScanOptions, Verdict};
use lanyard_test_support::broker::{BrokerProcess, InProcessBroker, TestBroker, TestBrokerOptions};
use serde_json::{Value, json};

const POLICY: &str = r#"
roles:
  app: {backend: jwt, scope: [app], max_ttl_seconds: 300}
  rollout: {backend: jwt, scope: [rollout], max_ttl_seconds: 300}
  needs-image: {backend: jwt, scope: [ci], max_ttl_seconds: 300}
  shop-db: {backend: jwt, scope: [db], max_ttl_seconds: 300}
rules:
  - name: image-bound-app
    match: {bootstrap_role: app}
    roles: [app]
  - name: rollout-in-audit-mode
    match: {bootstrap_role: rollout}
    roles: [rollout]
    gate_mode: audit
  - name: ci-must-name-an-image
    match: {bootstrap_role: needs-image}
    roles: [needs-image]
    require_image: true
  - name: only-shop-images
    match: {bootstrap_role: shop-db, image_repository: "127.0.0.1:*/shop/*"}
    roles: [shop-db]
"#;

fn registry() -> String {
    match std::env::var("LANYARD_TEST_REGISTRY") {
        Ok(r) if !r.is_empty() => r,
        _ => panic!(
            "LANYARD_TEST_REGISTRY is not set: run ./test.sh, or `source tests/peers/images.sh` before `cargo test`"
        ),
    }
}

fn images() -> PathBuf {
    PathBuf::from(
        std::env::var("LANYARD_TEST_IMAGES").expect("LANYARD_TEST_IMAGES (tests/peers/images.sh)"),
    )
}

/// The secret values planted in the test images: none may appear anywhere the broker writes.
fn planted() -> Vec<String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/planted.txt");
    std::fs::read_to_string(file)
        .expect("planted.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn assert_no_planted(what: &str, text: &str) {
    for p in planted() {
        assert!(!text.contains(&p), "{what} holds a planted secret value");
        // A redaction preview (first 4 … last 2) is fine in scanner output, but the gate
        // keeps none: not even the first 8 characters may appear.
        assert!(
            !text.contains(&p[..8.min(p.len())]),
            "{what} holds a prefix of a planted value"
        );
    }
}

/// Pushes `$LANYARD_TEST_IMAGES/<archive>.oci.tar` to `reference` on the anonymous registry.
fn push(archive: &str, reference: &str) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--dest-tls-verify=false",
            &format!(
                "oci-archive:{}",
                images().join(format!("{archive}.oci.tar")).display()
            ),
            &format!("docker://{reference}"),
        ])
        .output()
        .expect("skopeo (tests/peers/images.sh installs it)");
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unique(name: &str) -> String {
    format!("lanyard/gate-{name}-{:08x}", fastrand_u32())
}

fn fastrand_u32() -> u32 {
    fastrand::u32(..)
}

async fn digest_of(reference: &str) -> String {
    let opts = ScanOptions {
        insecure_loopback_registry: true,
        ..ScanOptions::default()
    };
    lanyard_scan::resolve_digest(reference, &opts)
        .await
        .expect("resolve")
}

fn gate_config(extra: &str) -> String {
    format!("gate:\n  insecure_loopback_registries: true\n  scan_deadline_seconds: 20\n{extra}")
}

/// A bootstrap identity bound to `image`, for role `role` (as the token's redemption gives).
fn bound(image: Option<&str>, role: &str) -> Authenticated {
    let id = format!("bt_{:016x}", u64::from(fastrand_u32()) << 8 | 7);
    Authenticated::new(Identity {
        issuer: BOOTSTRAP_ISSUER.into(),
        subject: format!("bootstrap:{id}"),
        kubernetes: None,
        bootstrap: Some(BootstrapBinding {
            token_id: id,
            roles: vec![role.into()],
            image: image.map(str::to_owned),
        }),
        spiffe_id: None,
        claims: Default::default(),
    })
}

/// A TCP proxy on loopback to `target` that holds each new connection for `delay` before
/// forwarding it: a slow registry. Returns its `host:port` and the connections it took.
async fn slow_proxy(target: String, delay: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (addr.to_string(), count)
}

async fn mint(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    role: &str,
    image: Option<&str>,
) -> (u16, Value) {
    let mut body = json!({"roles": [role], "ttl_seconds": 300});
    if let Some(i) = image {
        body["image"] = json!(i);
    }
    let resp = http
        .post(format!("{url}/v1/admin/tokens"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
        .expect("mint");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn redeem(http: &reqwest::Client, url: &str, token: &str) -> (u16, String) {
    let resp = http
        .post(format!("{url}/v1/credentials"))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .expect("credentials");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bound_to_a_dirty_image_gets_403_and_a_clean_one_gets_credentials_with_no_secret_anywhere()
 {
    let reg = registry();
    let auth_reg = std::env::var("LANYARD_TEST_REGISTRY_AUTH").expect("LANYARD_TEST_REGISTRY_AUTH");
    let user = std::env::var("LANYARD_TEST_REGISTRY_USER").expect("user");
    let password_file =
        std::env::var("LANYARD_TEST_REGISTRY_PASSWORD_FILE").expect("password file");
    // The clean image comes from the registry that needs credentials: the broker reads them
    // from the file its config names, never from the request.
    let broker = BrokerProcess::start(
        Path::new(env!("CARGO_BIN_EXE_lanyard-broker")),
        None,
        TestBrokerOptions {
            policies: vec![("policy.yaml".into(), POLICY.into())],
            extra_config: gate_config(&format!(
                "  registries:\n    - host: \"{auth_reg}\"\n      username: {user}\n      password_file: {password_file}\n"
            )),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let http = broker.http();
    let dirty_tag = format!("{reg}/lanyard/env-secret:1");
    let (status, minted) = mint(
        &http,
        &broker.url,
        &broker.admin_token,
        "app",
        Some(&dirty_tag),
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().expect("token").to_owned();
    let (status, body) = redeem(&http, &broker.url, &token).await;
    assert_eq!(status, 403, "{body}");
    let err: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(err["error"]["code"], "image_refused", "{body}");
    let message = err["error"]["message"].as_str().expect("message");
    for want in [
        "rule `image-bound-app`",
        &format!("{reg}/lanyard/env-secret@sha256:"),
        "config Env AWS_SECRET_ACCESS_KEY",
        "rotate the exposed credential",
    ] {
        assert!(message.contains(want), "{want:?} missing from: {message}");
    }
    // The token was not spent by the refusal: asking again is refused by the gate again.
    let (status, _) = redeem(&http, &broker.url, &token).await;
    assert_eq!(status, 403);

    let clean = format!("{auth_reg}/lanyard/multistage-clean:1");
    let (status, minted) = mint(&http, &broker.url, &broker.admin_token, "app", Some(&clean)).await;
    assert_eq!(status, 201, "{minted}");
    let (status, body) = redeem(&http, &broker.url, minted["token"].as_str().expect("token")).await;
    assert_eq!(status, 200, "{body}");

    let records = broker.audit_records();
    let denial = records
        .iter()
        .find(|r| r["event"] == "deny" && r["gate"] == "deny:dirty")
        .expect("a gate denial record");
    assert_eq!(denial["role"], "app");
    let reason = denial["reason"].as_str().expect("reason");
    assert!(
        reason.contains("image-bound-app") && reason.contains("AWS_ACCESS_KEY_ID"),
        "{reason}"
    );
    assert!(
        denial["image"]
            .as_str()
            .expect("image")
            .contains("env-secret@sha256:")
    );
    let issued = records
        .iter()
        .find(|r| r["event"] == "issue")
        .expect("an issue record");
    assert_eq!(issued["gate"], "allow:clean");
    assert!(
        issued["image"]
            .as_str()
            .expect("image")
            .starts_with(&format!("{auth_reg}/lanyard/multistage-clean@sha256:"))
    );

    let metrics = broker
        .http()
        .get(format!("{}/metrics", broker.url))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("lanyard_gate_decisions_total{outcome=\"deny\",reason=\"dirty\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("lanyard_gate_decisions_total{outcome=\"allow\",reason=\"clean\"} 1"));
    assert!(metrics.contains("lanyard_gate_scans_total{result=\"dirty\",trigger=\"demand\"} 1"));
    assert!(
        metrics.contains("lanyard_gate_verdict_lookups_total{result=\"hit\"} 1"),
        "the second refusal was a cache hit"
    );
    assert_no_planted("the answer", &body);
    assert_no_planted("the refusal", message);
    assert_no_planted("the metrics", &metrics);
    assert_no_planted(
        "the audit log",
        &std::fs::read_to_string(&broker.audit_file).expect("audit"),
    );
    assert_no_planted(
        "the broker's log",
        &std::fs::read_to_string(&broker.log_file).expect("log"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_that_moves_to_a_dirty_digest_is_resolved_again_and_refused() {
    let reg = registry();
    let repo = format!("{reg}/{}", unique("moving"));
    push("multistage-clean", &format!("{repo}:1"));
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            policies: vec![("policy.yaml".into(), POLICY.into())],
            extra_config: gate_config(""),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let http = broker.http();
    let scan = |image: String| {
        let http = http.clone();
        let url = broker.url.clone();
        let admin = broker.admin_token.clone();
        async move {
            let resp = http
                .post(format!("{url}/v1/admin/scans"))
                .bearer_auth(admin)
                .json(&json!({"image": image}))
                .send()
                .await
                .expect("scan");
            assert_eq!(resp.status().as_u16(), 200);
            resp.json::<Value>().await.expect("json")
        }
    };
    let first = scan(format!("{repo}:1")).await;
    assert_eq!(first["verdict"], "clean", "{first}");
    let clean_digest = first["digest"].as_str().expect("digest").to_owned();
    let (_, minted) = mint(
        &http,
        &broker.url,
        &broker.admin_token,
        "app",
        Some(&format!("{repo}:1")),
    )
    .await;
    let (status, body) = redeem(&http, &broker.url, minted["token"].as_str().expect("token")).await;
    assert_eq!(status, 200, "{body}");

    // The tag moves to a dirty image. The clean verdict belongs to the old digest only.
    push("env-secret", &format!("{repo}:1"));
    let second = scan(format!("{repo}:1")).await;
    assert_eq!(second["verdict"], "dirty", "{second}");
    assert_ne!(second["digest"], first["digest"]);
    let (_, minted) = mint(
        &http,
        &broker.url,
        &broker.admin_token,
        "app",
        Some(&format!("{repo}:1")),
    )
    .await;
    let (status, body) = redeem(&http, &broker.url, minted["token"].as_str().expect("token")).await;
    assert_eq!(status, 403, "{body}");
    // A token pinned to the old, clean digest still works.
    let (_, minted) = mint(
        &http,
        &broker.url,
        &broker.admin_token,
        "app",
        Some(&format!("{repo}@{clean_digest}")),
    )
    .await;
    let (status, body) = redeem(&http, &broker.url, minted["token"].as_str().expect("token")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        broker
            .audit_records()
            .iter()
            .any(|r| r["event"] == "image_scan" && r["gate"] == "verdict:dirty")
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_with_one_dirty_platform_is_dirty_unless_only_clean_platforms_are_configured() {
    let reg = registry();
    let index = format!(
        "{reg}/lanyard/multi@{}",
        digest_of(&format!("{reg}/lanyard/multi:1")).await
    );
    let all = InProcessBroker::start(POLICY, &gate_config(""))
        .await
        .expect("broker");
    let e = all
        .issue(&bound(Some(&index), "app"), None)
        .await
        .expect_err("dirty platform");
    assert_eq!(e.code(), ErrorCode::ImageRefused, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("[linux/arm64]") && !msg.contains("[linux/amd64]"),
        "{msg}"
    );
    let amd64 = InProcessBroker::start(POLICY, &gate_config("  platforms: [linux/amd64]\n"))
        .await
        .expect("broker");
    amd64
        .issue(&bound(Some(&index), "app"), None)
        .await
        .expect("only the clean platform counts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_down_is_a_retryable_503_or_with_unscanned_deny_a_refusal() {
    let image = format!("127.0.0.1:1/lanyard/app@sha256:{}", "ab".repeat(32));
    let scan = InProcessBroker::start(POLICY, &gate_config(""))
        .await
        .expect("broker");
    let e = scan
        .issue(&bound(Some(&image), "app"), None)
        .await
        .expect_err("down");
    assert_eq!(e.code(), ErrorCode::ScanPending, "{e}");
    assert_eq!(e.code().http_status(), 503);
    assert!(e.to_string().contains("could not be scanned"), "{e}");
    let deny = InProcessBroker::start(POLICY, &gate_config("  unscanned: deny\n"))
        .await
        .expect("broker");
    let e = deny
        .issue(&bound(Some(&image), "app"), None)
        .await
        .expect_err("unscanned");
    assert_eq!(e.code(), ErrorCode::ImageRefused, "{e}");
    assert!(e.to_string().contains("has no verdict"), "{e}");
    assert!(deny.audit_log().contains("deny:unscanned"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_issues_and_records_what_would_be_denied() {
    let reg = registry();
    let dirty = format!(
        "{reg}/lanyard/env-secret@{}",
        digest_of(&format!("{reg}/lanyard/env-secret:1")).await
    );
    let b = InProcessBroker::start(POLICY, &gate_config(""))
        .await
        .expect("broker");
    let resp = b
        .issue(&bound(Some(&dirty), "rollout"), None)
        .await
        .expect("audit mode issues");
    assert_eq!(resp.credentials.len(), 1);
    let log = b.audit_log();
    let note: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .find(|r| r["event"] == "gate")
        .expect("a gate record");
    assert_eq!(note["gate"], "would_deny:dirty");
    assert!(
        note["reason"]
            .as_str()
            .expect("reason")
            .contains("rollout-in-audit-mode"),
        "{note}"
    );
    assert!(log.contains("\"gate\":\"would_deny:dirty\"") && log.contains("\"event\":\"issue\""));
    let m = b.broker.metrics().render();
    assert!(
        m.contains("lanyard_gate_decisions_total{outcome=\"would_deny\",reason=\"dirty\"} 1"),
        "{m}"
    );
    // The same image under an enforcing rule is refused.
    b.issue(&bound(Some(&dirty), "app"), None)
        .await
        .expect_err("enforced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_without_an_image_pass_unless_their_rule_requires_one_and_repository_selectors_hold()
 {
    let reg = registry();
    let b = InProcessBroker::start(POLICY, &gate_config(""))
        .await
        .expect("broker");
    b.issue(&bound(None, "app"), None)
        .await
        .expect("no image, not required");
    assert!(b.audit_log().contains("\"gate\":\"allow:no_image\""));
    let e = b
        .issue(&bound(None, "needs-image"), None)
        .await
        .expect_err("required");
    assert_eq!(e.code(), ErrorCode::ImageRefused);
    assert!(e.to_string().contains("require_image"), "{e}");
    // `only-shop-images` selects on the repository: a lanyard/ image does not match.
    let clean = format!(
        "{reg}/lanyard/multistage-clean@{}",
        digest_of(&format!("{reg}/lanyard/multistage-clean:1")).await
    );
    let e = b
        .issue(&bound(Some(&clean), "shop-db"), None)
        .await
        .expect_err("wrong repository");
    assert_eq!(e.code(), ErrorCode::Forbidden, "{e}");
    let shop = format!("{reg}/shop/api");
    push("multistage-clean", &format!("{shop}:1"));
    let pinned = format!("{shop}@{}", digest_of(&format!("{shop}:1")).await);
    b.issue(&bound(Some(&pinned), "shop-db"), None)
        .await
        .expect("shop image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exemption_lets_a_dirty_digest_through_and_each_use_is_audited_through_the_cli() {
    let reg = registry();
    let repo = format!("{reg}/{}", unique("exempt"));
    push("copy-env-rm", &format!("{repo}:1"));
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            policies: vec![("policy.yaml".into(), POLICY.into())],
            extra_config: gate_config(""),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let cli = |args: Vec<String>| {
        let url = broker.url.clone();
        let ca = broker.pki.ca_path();
        let token_file = broker.dir().join("admin-token");
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_lanyard-broker"))
                .arg("image")
                .args(&args)
                .args(["--broker", &url, "--ca"])
                .arg(&ca)
                .arg("--admin-token-file")
                .arg(&token_file)
                .output()
                .expect("run");
            (
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        })
    };
    let (code, out) = cli(vec!["scan".into(), format!("{repo}:1")])
        .await
        .expect("cli");
    assert_eq!(code, 1, "dirty: {out}");
    assert!(out.contains("layer") && out.contains("/app/.env"), "{out}");
    assert_no_planted("image scan output", &out);
    let digest = out
        .split_whitespace()
        .find_map(|w| {
            w.split_once('@')
                .map(|(_, d)| d.trim_end_matches(':').to_owned())
        })
        .expect("pinned reference in the output");
    let (code, out) = cli(vec!["verdict".into(), digest.clone()])
        .await
        .expect("cli");
    assert_eq!(code, 1, "{out}");
    let (_, minted) = mint(
        &broker.http(),
        &broker.url,
        &broker.admin_token,
        "app",
        Some(&format!("{repo}@{digest}")),
    )
    .await;
    let token = minted["token"].as_str().expect("token").to_owned();
    let (status, _) = redeem(&broker.http(), &broker.url, &token).await;
    assert_eq!(status, 403);
    let (code, out) = cli(vec![
        "exempt".into(),
        digest.clone(),
        "--reason".into(),
        "INC-42: rotated, rebuild pending".into(),
    ])
    .await
    .expect("cli");
    assert_eq!(code, 0, "{out}");
    let (status, body) = redeem(&broker.http(), &broker.url, &token).await;
    assert_eq!(status, 200, "{body}");
    let records = broker.audit_records();
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "image_exempt" && r["image"] == digest.as_str())
    );
    let used = records
        .iter()
        .find(|r| r["event"] == "gate" && r["gate"] == "allow:exempted")
        .expect("the exemption's use is audited");
    assert!(
        used["reason"].as_str().expect("reason").contains("INC-42"),
        "{used}"
    );
    let (code, out) = cli(vec!["verdict".into(), digest]).await.expect("cli");
    assert!(code == 1 && out.contains("exempted: INC-42"), "{out}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruleset_change_rescans_in_the_background_without_refusing_clean_images_meanwhile() {
    let reg = registry();
    let digest = digest_of(&format!("{reg}/lanyard/multistage-clean:1")).await;
    // The registry answers only after 3 s: the re-scan cannot finish before the issuance.
    let (slow, _) = slow_proxy(reg.clone(), Duration::from_secs(3)).await;
    let store = Arc::new(MemoryStore::new());
    store
        .put_verdict(&VerdictRecord {
            digest: digest.clone(),
            ruleset_version: "0-previous+000000000000".into(),
            repository: Some(format!("{slow}/lanyard/multistage-clean")),
            verdict: Verdict::Clean,
            findings: vec![],
            incomplete: vec![],
            platforms: vec![],
            scanned_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        })
        .await
        .expect("old verdict");
    let b = InProcessBroker::start_with_store(POLICY, &gate_config(""), store.clone())
        .await
        .expect("broker");
    let current = b.broker.gate().ruleset_version().to_owned();
    let image = format!("{slow}/lanyard/multistage-clean@{digest}");
    let started = Instant::now();
    b.issue(&bound(Some(&image), "app"), None)
        .await
        .expect("the previous clean verdict serves");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "it did not wait for the re-scan"
    );
    assert!(
        b.audit_log()
            .contains("\"gate\":\"allow:clean_previous_ruleset\"")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let fresh = loop {
        if let Some(v) = store.verdict(&digest, &current).await.expect("read") {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the background re-scan never stored a verdict"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(fresh.verdict, Verdict::Clean);
    b.issue(&bound(Some(&image), "app"), None)
        .await
        .expect("clean");
    assert!(b.audit_log().contains("\"gate\":\"allow:clean\""));
    let m = b.broker.metrics().render();
    assert!(
        m.contains("lanyard_gate_scans_total{result=\"clean\",trigger=\"rescan\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_digest_share_one_scan() {
    let reg = registry();
    let digest = digest_of(&format!("{reg}/lanyard/env-secret:1")).await;
    let (slow, _) = slow_proxy(reg, Duration::from_secs(2)).await;
    let b = Arc::new(
        InProcessBroker::start(POLICY, &gate_config(""))
            .await
            .expect("broker"),
    );
    let image = format!("{slow}/lanyard/env-secret@{digest}");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let b = b.clone();
        let image = image.clone();
        tasks.push(tokio::spawn(async move {
            b.issue(&bound(Some(&image), "app"), None).await
        }));
    }
    for t in tasks {
        let e = t.await.expect("join").expect_err("dirty");
        assert_eq!(e.code(), ErrorCode::ImageRefused, "{e}");
    }
    let m = b.broker.metrics().render();
    assert!(
        m.contains("lanyard_gate_scans_total{result=\"dirty\",trigger=\"demand\"} 1"),
        "{m}"
    );
    assert!(m.contains("lanyard_gate_scan_waiters_total 7"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_outlives_the_request_that_timed_out_and_stores_its_verdict() {
    let reg = registry();
    let digest = digest_of(&format!("{reg}/lanyard/env-secret:1")).await;
    let (slow, _) = slow_proxy(reg, Duration::from_secs(3)).await;
    let store = Arc::new(MemoryStore::new());
    let b = InProcessBroker::start_with_store(
        POLICY,
        &gate_config("").replace("scan_deadline_seconds: 20", "scan_deadline_seconds: 1"),
        store.clone(),
    )
    .await
    .expect("broker");
    let image = format!("{slow}/lanyard/env-secret@{digest}");
    let e = b
        .issue(&bound(Some(&image), "app"), None)
        .await
        .expect_err("pending");
    assert_eq!(e.code(), ErrorCode::ScanPending, "{e}");
    assert!(e.to_string().contains("being scanned"), "{e}");
    let current = b.broker.gate().ruleset_version().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while store
        .verdict(&digest, &current)
        .await
        .expect("read")
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the scan never stored its verdict"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = b
        .issue(&bound(Some(&image), "app"), None)
        .await
        .expect_err("dirty");
    assert_eq!(e.code(), ErrorCode::ImageRefused, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_names_an_image_is_a_bad_request() {
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            policies: vec![("policy.yaml".into(), POLICY.into())],
            extra_config: gate_config(""),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let token = broker.mint(&["app"], 300).await;
    let clean = format!(
        "{}/lanyard/multistage-clean@sha256:{}",
        registry(),
        "0".repeat(64)
    );
    let (status, body) = broker
        .post_credentials(Some(&token), &json!({"image": clean}).to_string())
        .await;
    assert_eq!(status, 400, "{body}");
    // The token was not spent: without the field it works (it names no image).
    let (status, body) = broker.post_credentials(Some(&token), "{}").await;
    assert_eq!(status, 200, "{body}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlist_change_reevaluates_stored_verdicts_without_a_rescan_and_sessions_stay_gated()
{
    let reg = registry();
    let dir = tempfile::tempdir().expect("tmp");
    let allow = dir.path().join("allow.yaml");
    std::fs::write(
        &allow,
        "allow:\n  - path: \"app/**\"\n    reason: fixtures of the demo app\n",
    )
    .expect("write");
    let broker = TestBroker::start_with(
        None,
        TestBrokerOptions {
            policies: vec![("policy.yaml".into(), POLICY.into())],
            extra_config: gate_config(&format!("  allowlist_file: {}\n", allow.display())),
            ..TestBrokerOptions::default()
        },
    )
    .await;
    let http = broker.http();
    let image = format!("{reg}/lanyard/copy-env-rm:1");
    let (_, minted) = mint(&http, &broker.url, &broker.admin_token, "app", Some(&image)).await;
    let (status, body) = redeem(&http, &broker.url, minted["token"].as_str().expect("token")).await;
    assert_eq!(status, 200, "allowlisted findings do not count: {body}");
    let session: Value = serde_json::from_str(&body).expect("json");
    let session_token = session["session"]["token"]
        .as_str()
        .expect("session token")
        .to_owned();
    assert!(
        broker
            .audit_records()
            .iter()
            .any(|r| r["event"] == "issue" && r["gate"] == "allow:clean")
    );

    // The allowlist entry goes: the stored findings count again, with no new scan, and the
    // session's next refresh (its token carries the bound image) is refused.
    std::fs::write(&allow, "allow: []\n").expect("write");
    let resp = http
        .post(format!("{}/v1/admin/reload", broker.url))
        .bearer_auth(&broker.admin_token)
        .send()
        .await
        .expect("reload");
    assert_eq!(resp.status().as_u16(), 200);
    let (status, body) = redeem(&http, &broker.url, &session_token).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("/app/.env") && body.contains("image_refused"),
        "{body}"
    );
    let m = broker.metrics().await;
    assert!(
        m.contains("lanyard_gate_scans_total{result=\"dirty\",trigger=\"demand\"} 1"),
        "one scan only: {m}"
    );
    assert!(
        m.contains("lanyard_gate_verdict_lookups_total{result=\"hit\"} 1"),
        "{m}"
    );
    broker.stop().await;
}

/// An AdmissionReview as the Kubernetes documentation shows it, for `object` of `kind`.
fn admission_review(
    kind: (&str, &str, &str),
    resource: &str,
    object: Value,
    dry_run: bool,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": kind.0, "version": kind.1, "kind": kind.2},
            "resource": {"group": kind.0, "version": kind.1, "resource": resource},
            "name": "web",
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .expect("json")
}

fn pod_spec(init: &str, containers: &[&str]) -> Value {
    json!({
        "initContainers": [{"name": "migrate", "image": init}],
        "containers": containers.iter().enumerate().map(|(i, c)| json!({"name": format!("c{i}"), "image": c})).collect::<Vec<_>>()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_decisions_resolve_tags_and_check_every_container_against_real_images() {
    use lanyard_broker::gate::admission::{self, AdmissionSettings, OnTimeout};
    let reg = registry();
    let b = InProcessBroker::start(POLICY, &gate_config(""))
        .await
        .expect("broker");
    let gate = b.broker.gate().clone();
    let settings = AdmissionSettings {
        mode: lanyard_broker::config::GateMode::Enforce,
        on_timeout: OnTimeout::FailClosed,
        namespace_exemption: None,
    };
    let admit = |body: Vec<u8>| {
        let gate = gate.clone();
        let settings = settings.clone();
        async move {
            let req = admission::parse_review(&body).expect("review");
            let w = admission::workload_of(&req, true)
                .expect("object")
                .expect("gated");
            gate.admit(&w, &settings, Duration::from_secs(20))
                .await
                .expect("decision")
        }
    };
    let clean = format!("{reg}/lanyard/multistage-clean:1");
    let dirty = format!("{reg}/lanyard/env-secret:1");
    let pod = |spec: Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "uid": "pod-uid-7"}, "spec": spec});

    // Clean everywhere: allowed, recorded under the object's UID with the resolved digests.
    let d = admit(admission_review(
        ("", "v1", "Pod"),
        "pods",
        pod(pod_spec(&clean, &[&clean])),
        false,
    ))
    .await;
    assert!(d.allowed, "{d:?}");
    let (uid, images) = d.record.expect("record");
    assert_eq!(uid, "pod-uid-7");
    let pinned = format!("{reg}/lanyard/multistage-clean@{}", digest_of(&clean).await);
    assert_eq!(images, vec![pinned; 2]);
    // A dry run records nothing.
    let d = admit(admission_review(
        ("", "v1", "Pod"),
        "pods",
        pod(pod_spec(&clean, &[&clean])),
        true,
    ))
    .await;
    assert!(d.allowed && d.record.is_none());
    // One dirty init container among clean ones: denied, naming it and the finding.
    let d = admit(admission_review(
        ("", "v1", "Pod"),
        "pods",
        pod(pod_spec(&dirty, &[&clean, &clean])),
        false,
    ))
    .await;
    assert!(!d.allowed);
    assert!(
        d.message.contains("init container `migrate`")
            && d.message.contains("config Env AWS_ACCESS_KEY_ID"),
        "{}",
        d.message
    );
    assert!(!d.message.contains("`c0`"), "{}", d.message);
    assert_no_planted("the admission message", &d.message);
    // A dirty Deployment template is refused before it makes pods.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"template": {"metadata": {}, "spec": pod_spec(&clean, &[&dirty])}}});
    let d = admit(admission_review(
        ("apps", "v1", "Deployment"),
        "deployments",
        deployment,
        false,
    ))
    .await;
    assert!(
        !d.allowed && d.message.contains("Deployment pod template"),
        "{}",
        d.message
    );
    // A registry down: a pod fails closed ("retry"); a template is allowed with a warning.
    let down = format!("127.0.0.1:1/lanyard/app@sha256:{}", "ab".repeat(32));
    let d = admit(admission_review(
        ("", "v1", "Pod"),
        "pods",
        pod(pod_spec(&clean, &[&down])),
        false,
    ))
    .await;
    assert!(
        !d.allowed && d.message.contains("scan pending, retry"),
        "{}",
        d.message
    );
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
        "spec": {"template": {"spec": {"containers": [{"name": "j", "image": down}], "restartPolicy": "Never"}}}});
    let d = admit(admission_review(("batch", "v1", "Job"), "jobs", job, false)).await;
    assert!(d.allowed && d.warnings.len() == 1, "{d:?}");
    // An image without a registry host cannot be checked: refused, not retried.
    let d = admit(admission_review(
        ("", "v1", "Pod"),
        "pods",
        pod(pod_spec(&clean, &["nginx:1"])),
        false,
    ))
    .await;
    assert!(
        !d.allowed && d.message.contains("cannot be checked") && !d.message.contains("retry"),
        "{}",
        d.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_background_rescan_is_not_retried_on_every_issuance() {
    // The previous ruleset's clean verdict names a registry that is down.
    let digest = format!("sha256:{}", "cd".repeat(32));
    let store = Arc::new(MemoryStore::new());
    store
        .put_verdict(&VerdictRecord {
            digest: digest.clone(),
            ruleset_version: "0-previous+000000000000".into(),
            repository: Some("127.0.0.1:1/lanyard/app".into()),
            verdict: Verdict::Clean,
            findings: vec![],
            incomplete: vec![],
            platforms: vec![],
            scanned_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        })
        .await
        .expect("old verdict");
    let b = InProcessBroker::start_with_store(POLICY, &gate_config(""), store)
        .await
        .expect("broker");
    let image = format!("127.0.0.1:1/lanyard/app@{digest}");
    let errors = || {
        let m = b.broker.metrics().render();
        m.lines()
            .find(|l| {
                l.starts_with("lanyard_gate_scans_total{result=\"error\",trigger=\"rescan\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The start-up re-scan fails at once (connection refused).
    let deadline = Instant::now() + Duration::from_secs(30);
    while errors() == 0 {
        assert!(Instant::now() < deadline, "the start-up re-scan never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        b.issue(&bound(Some(&image), "app"), None)
            .await
            .expect("the previous clean verdict serves while the registry is down");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(errors(), 1, "no new re-scan within the retry interval");
}
