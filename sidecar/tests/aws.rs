//! Zero-code AWS SDKs: an unmodified boto3 gets the broker's `aws-sts` credential from the
//! sidecar, through the container-credentials endpoint (`run --aws-listen`) and through
//! `credential-process`, and calls GetCallerIdentity on a real STS (`moto_server`) with it.
//!
//! Needs `tests/peers/moto.sh` (run by `./test.sh`): moto and a venv with boto3.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use lanyard_test_support::boto3_python;
use lanyard_test_support::child::free_ports;
use lanyard_test_support::moto::{ASSUMED_ROLE_ARN_PREFIX, AwsStack};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lanyard-sidecar");

/// `--broker`, `--ca` and `--token-file` for the stack's pod.
fn broker_args(s: &AwsStack) -> Vec<String> {
    vec![
        "--broker".into(),
        s.broker.url.clone(),
        "--ca".into(),
        s.broker.pki.ca_path().display().to_string(),
        "--token-file".into(),
        s.work.token_file.display().to_string(),
    ]
}

/// How often a sidecar is started again on fresh ports when one it was given was taken
/// (by a parallel test) between choosing it and the sidecar's bind.
const PORT_ATTEMPTS: u32 = 3;

/// Whether the sidecar's stderr says it could not bind a port it was given.
fn lost_a_port(stderr: &str) -> bool {
    stderr.contains("cannot listen")
}

/// Runs boto3's default credential chain with nothing but `env` (no AWS keys, no config
/// files, no instance metadata), calls GetCallerIdentity at `sts_url` and prints
/// `{"arn", "method"}` — `method` is where boto3 found the credentials.
fn boto3(sts_url: &str, env: &[(&str, String)]) -> Output {
    const SCRIPT: &str = r#"
import json, sys, boto3
session = boto3.Session()
arn = session.client("sts", endpoint_url=sys.argv[1], region_name="us-east-1").get_caller_identity()["Arn"]
print(json.dumps({"arn": arn, "method": session.get_credentials().method}))
"#;
    let mut cmd = Command::new(boto3_python());
    cmd.args(["-c", SCRIPT, sts_url])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", "/nonexistent")
        .env("AWS_CONFIG_FILE", "/nonexistent/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run boto3")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A `lanyard-sidecar run` child, killed (SIGTERM) and reaped on drop.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for `/readyz` to answer 200; `Err` with the sidecar's stderr if it exits first.
async fn wait_ready(health: u16, run: &mut Running) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(30);
    // Per probe: whatever holds the port if the child lost it may never answer.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client");
    loop {
        if let Ok(Some(st)) = run.child.try_wait() {
            return Err(format!("sidecar exited with {st}: {}", read(&run.log)));
        }
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{health}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            return Ok(());
        }
        assert!(
            Instant::now() < end,
            "sidecar not ready in 30 s: {}",
            read(&run.log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_boto3_reads_the_container_endpoint_and_calls_sts() {
    let s = AwsStack::start().await;
    let log = s.work.path().join("sidecar.log");
    let mut attempt = 0;
    let (mut run, aws_port, health_port) = loop {
        attempt += 1;
        let [aws_port, health_port] = free_ports();
        let mut args = vec!["run".to_owned()];
        args.extend(broker_args(&s));
        args.extend(
            [
                "--dir",
                &s.work.secrets.display().to_string(),
                "--aws-listen",
                &format!("127.0.0.1:{aws_port}"),
                "--aws-role",
                "aws-read",
                "--health-listen",
                &format!("127.0.0.1:{health_port}"),
            ]
            .map(str::to_owned),
        );
        let mut run = Running {
            child: Command::new(BIN)
                .args(&args)
                .env("LANYARD_LOG", "debug")
                .stdout(std::fs::File::create(&log).expect("log"))
                .stderr(std::fs::File::create(s.work.path().join("sidecar.err")).expect("log"))
                .spawn()
                .expect("start sidecar"),
            log: s.work.path().join("sidecar.err"),
        };
        match wait_ready(health_port, &mut run).await {
            Ok(()) => break (run, aws_port, health_port),
            Err(e) if attempt < PORT_ATTEMPTS && lost_a_port(&e) => {}
            Err(e) => panic!("{e}"),
        }
    };

    let token_file = s.work.secrets.join("aws-container-token");
    let token = read(&token_file);
    assert_eq!(token.len(), 64, "a 256-bit hex token");
    let issued_key = read(&s.work.secrets.join("aws-read/access_key_id"));
    let issued_secret = read(&s.work.secrets.join("aws-read/secret_access_key"));
    assert!(issued_key.starts_with("ASIA"), "{issued_key}");

    // The endpoint itself: keys only for the token.
    let url = format!("http://127.0.0.1:{aws_port}/v1/aws-credentials");
    let http = reqwest::Client::new();
    for auth in [None, Some("wrong")] {
        let mut req = http.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.expect("request");
        assert_eq!(r.status(), 401);
        let body = r.text().await.expect("body");
        assert!(
            !body.contains(&issued_key) && !body.contains(&issued_secret),
            "{body}"
        );
    }
    let body: Value = http
        .get(&url)
        .header("authorization", &token)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(body["AccessKeyId"], issued_key.as_str());
    assert_eq!(body["SecretAccessKey"], issued_secret.as_str());
    let expiration = body["Expiration"].as_str().expect("Expiration");
    let sidecar_json: Value =
        serde_json::from_str(&read(&s.work.secrets.join("aws-read.json"))).expect("json");
    assert_eq!(
        expiration,
        sidecar_json["expires_at"].as_str().expect("expiry")
    );

    // boto3, unmodified: two environment variables and nothing else.
    let out = boto3(
        &s.moto.url,
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", url.clone()),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                token_file.display().to_string(),
            ),
        ],
    );
    let v = json_of(&out);
    assert_eq!(v["method"], "container-role", "{v}");
    let arn = v["arn"].as_str().expect("arn");
    assert!(
        arn.starts_with(ASSUMED_ROLE_ARN_PREFIX),
        "GetCallerIdentity must see the assumed role, got {arn}"
    );
    s.assert_one_call_signed_with(&issued_key);

    let metrics = http
        .get(format!("http://127.0.0.1:{health_port}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    // One GET above, then boto3's: it re-asks while a credential is within 15 minutes of
    // its expiry, which a 900 s STS session always is.
    let served: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lanyard_sidecar_aws_requests_total{outcome=\"served\"} "))
        .and_then(|n| n.parse().ok())
        .expect("served counter");
    assert!(served >= 2, "{metrics}");
    assert!(
        metrics.contains("lanyard_sidecar_aws_requests_total{outcome=\"unauthorized\"} 2\n"),
        "{metrics}"
    );

    let status = run.terminate();
    assert!(status.success(), "{status}");
    let logs = read(&run.log) + &read(&log);
    assert!(
        logs.contains("aws-credentials"),
        "the log names the URI: {logs}"
    );
    for secret in [&token, &issued_key, &issued_secret] {
        assert!(!logs.contains(secret.as_str()), "a secret reached the log");
    }
    s.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_listen_without_an_aws_role_granted_fails_with_a_clear_reason() {
    let s = AwsStack::start().await;
    let mut attempt = 0;
    let (out, err) = loop {
        attempt += 1;
        let [aws_port] = free_ports();
        let mut args = vec!["run".to_owned()];
        args.extend(broker_args(&s));
        args.extend(
            [
                "--dir",
                &s.work.secrets.display().to_string(),
                "--role",
                "app",
                "--aws-listen",
                &format!("127.0.0.1:{aws_port}"),
            ]
            .map(str::to_owned),
        );
        let out = tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output())
            .await
            .expect("join")
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if attempt < PORT_ATTEMPTS && lost_a_port(&err) {
            continue;
        }
        break (out, err);
    };
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("--aws-listen") && err.contains("carries AWS keys"),
        "{err}"
    );
    s.broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_process_feeds_boto3_and_fails_clearly() {
    let s = AwsStack::start().await;
    let process = |extra: &[&str]| {
        let mut args = vec!["credential-process".to_owned()];
        args.extend(broker_args(&s));
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };

    // Direct: the documented JSON, keys that work at STS.
    let args = process(&["--role", "aws-read"]);
    let out = tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output())
        .await
        .expect("join")
        .expect("run");
    let v = json_of(&out);
    assert_eq!(v["Version"], 1);
    for k in [
        "AccessKeyId",
        "SecretAccessKey",
        "SessionToken",
        "Expiration",
    ] {
        assert!(v[k].is_string(), "{k} missing");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains(v["SecretAccessKey"].as_str().expect("secret")),
        "{stderr}"
    );

    // Through boto3's `credential_process`, from an AWS config file.
    let config = s.work.path().join("aws-config");
    let line = std::iter::once(BIN.to_owned())
        .chain(process(&["--role", "aws-read"]))
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(&config, format!("[default]\ncredential_process = {line}\n")).expect("config");
    let out = boto3(
        &s.moto.url,
        &[("AWS_CONFIG_FILE", config.display().to_string())],
    );
    let v = json_of(&out);
    assert_eq!(v["method"], "custom-process", "{v}");
    assert!(
        v["arn"]
            .as_str()
            .expect("arn")
            .starts_with(ASSUMED_ROLE_ARN_PREFIX),
        "{v}"
    );
    // Both runs were served from the broker's STS cache: one AssumeRole.
    assert_eq!(s.moto.calls_of("AssumeRole").len(), 1);

    // A jwt role is not AWS keys; two AWS-less failures name what to fix.
    for (extra, code, want) in [
        (vec!["--role", "app"], 1, "jwt credential"),
        (vec!["--role", "nope"], 1, "403"),
    ] {
        let args = process(&extra);
        let out = tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output())
            .await
            .expect("join")
            .expect("run");
        assert_eq!(out.status.code(), Some(code), "{extra:?}");
        assert!(out.stdout.is_empty(), "nothing on stdout on failure");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{extra:?}: {err}");
    }

    // A bootstrap token works once; credential_process runs at every refresh.
    let boot = s.work.path().join("boot");
    std::fs::write(&boot, "lbt_x").expect("write");
    let out = Command::new(BIN)
        .args([
            "credential-process",
            "--broker",
            &s.broker.url,
            "--ca",
            &s.broker.pki.ca_path().display().to_string(),
            "--bootstrap-token-file",
            &boot.display().to_string(),
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token-file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.broker.stop().await;
}
