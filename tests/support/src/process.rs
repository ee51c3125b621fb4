//! [`SiteBroker`]: `lanyard-broker serve` as its own process on loopback, as an operator
//! runs it, for tests of what only separate processes show (replicas sharing one SQLite
//! store, a store locked by another process). Several may share one [`ProcessSite`]: one
//! directory with the PKI, the policies, the admin token and the store file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::TestPki;
use crate::broker::DEFAULT_POLICY;
use crate::child::{Probe, spawn_ready};

/// What the brokers of one test share: a directory holding the PKI, `policies/` (with
/// [`DEFAULT_POLICY`]), the admin token and the SQLite store `store.db`.
#[derive(Debug)]
pub struct ProcessSite {
    /// The directory (removed when dropped).
    pub dir: tempfile::TempDir,
    /// Certificates for `127.0.0.1`.
    pub pki: TestPki,
    /// The admin token.
    pub admin_token: String,
    /// The shared SQLite file.
    pub store_file: PathBuf,
}

impl ProcessSite {
    /// A fresh site.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::generate(&dir.path().join("tls"));
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policies dir");
        std::fs::write(policies.join("policy.yaml"), DEFAULT_POLICY).expect("policy");
        let admin_token = format!("admin-{}", crate::oidc::random_hex(16));
        std::fs::write(dir.path().join("admin-token"), &admin_token).expect("admin token");
        let store_file = dir.path().join("store.db");
        Self {
            dir,
            pki,
            admin_token,
            store_file,
        }
    }

    /// The site's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// An HTTPS client trusting only the site's CA.
    pub fn http(&self) -> reqwest::Client {
        let ca = std::fs::read(self.pki.ca_path()).expect("ca");
        reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("pem"))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client")
    }

    /// Starts `lanyard-broker serve` (the binary at `bin`) as broker `name` of the site: its
    /// config `<name>.yaml`, its log `<name>.log` (stdout and stderr), and `audit` as its
    /// audit sink (a file name in the site, or `stdout`); `extra_config` is appended (top-level
    /// keys). Every broker of the site has the public URL `https://broker.test`, as replicas
    /// behind one address do. Returns once `/healthz` answers.
    pub async fn spawn(
        &self,
        bin: &Path,
        name: &str,
        audit: &str,
        extra_config: &str,
    ) -> SiteBroker {
        let dir = self.path().to_path_buf();
        let log = dir.join(format!("{name}.log"));
        let config_file = dir.join(format!("{name}.yaml"));
        let (cert, key) = (self.pki.cert_path(), self.pki.key_path());
        let ca = std::fs::read(self.pki.ca_path()).expect("ca");
        let write_config = |port: u16| {
            let text = format!(
                "listen: \"127.0.0.1:{port}\"\npublic_url: \"https://broker.test\"\n\
                 tls:\n  cert_file: {cert}\n  key_file: {key}\npolicies_dir: policies\n\
                 admin:\n  token_file: admin-token\nstore:\n  sqlite_path: store.db\n\
                 audit:\n  sink: {audit}\nreload_interval_seconds: 1\n{extra_config}\n",
                cert = cert.display(),
                key = key.display(),
            );
            std::fs::write(&config_file, text).expect("write config");
        };
        let (child, port) = spawn_ready(
            &format!("lanyard-broker serve ({name})"),
            Duration::from_secs(30),
            |port| {
                write_config(port);
                let out = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("log file");
                Command::new(bin)
                    .args(["serve", "--config"])
                    .arg(&config_file)
                    .current_dir(&dir)
                    .env("LANYARD_LOG", "info")
                    .stdin(Stdio::null())
                    .stdout(out.try_clone().expect("log file"))
                    .stderr(out)
                    .spawn()
                    .expect("spawn lanyard-broker")
            },
            |_, port| {
                let client = reqwest::Client::builder()
                    .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("pem"))
                    .timeout(Duration::from_secs(2))
                    .build()
                    .expect("client");
                async move {
                    match client
                        .get(format!("https://127.0.0.1:{port}/healthz"))
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => Probe::Ready,
                        Ok(r) => Probe::Wrong(format!("/healthz answered {}", r.status())),
                        Err(_) => Probe::NotYet,
                    }
                }
            },
            || std::fs::read_to_string(&log).unwrap_or_default(),
        )
        .await;
        SiteBroker {
            name: name.to_owned(),
            url: format!("https://127.0.0.1:{port}"),
            child,
            log,
            http: self.http(),
            admin_token: self.admin_token.clone(),
        }
    }
}

impl Default for ProcessSite {
    fn default() -> Self {
        Self::new()
    }
}

/// A running `lanyard-broker serve` process; killed when dropped.
#[derive(Debug)]
pub struct SiteBroker {
    /// Its name in the site.
    pub name: String,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// Its stdout and stderr.
    pub log: PathBuf,
    child: Child,
    http: reqwest::Client,
    admin_token: String,
}

/// An answer: status, `Retry-After` (if any), JSON body (`Null` when not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The `Retry-After` header.
    pub retry_after: Option<String>,
    /// The body.
    pub body: Value,
}

impl SiteBroker {
    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("request to the broker process");
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.expect("body");
        Answer {
            status,
            retry_after,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// `POST /v1/credentials` with `bearer` and an empty body.
    pub async fn credentials(&self, bearer: &str) -> Answer {
        self.send(
            self.http
                .post(format!("{}/v1/credentials", self.url))
                .bearer_auth(bearer),
        )
        .await
    }

    /// Mints a bootstrap token for `roles` through the admin API.
    pub async fn mint(&self, roles: &[&str]) -> Answer {
        self.send(
            self.http
                .post(format!("{}/v1/admin/tokens", self.url))
                .bearer_auth(&self.admin_token)
                .json(&serde_json::json!({"roles": roles, "ttl_seconds": 600})),
        )
        .await
    }

    /// `GET path` (e.g. `/readyz`).
    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it with SIGTERM and waits (at most 15 s, then SIGKILL).
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..150 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SiteBroker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of the metric line starting with `series` (e.g.
/// `lanyard_errors_total{code="store_unavailable"}`), 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs `BIN audit verify AUDIT [--store STORE]` and fails the test, with its output, unless
/// the log verifies.
pub fn assert_audit_verifies(bin: &Path, audit: &Path, store: Option<&Path>) {
    let mut cmd = Command::new(bin);
    cmd.args(["audit", "verify"]).arg(audit);
    if let Some(store) = store {
        cmd.arg("--store").arg(store);
    }
    let out = cmd
        .env("LANYARD_LOG", "warn")
        .output()
        .expect("run audit verify");
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CPU seconds used so far by process `pid` (user and system, with its reaped children), from
/// `/proc/PID/stat` in clock ticks; 0 when the process is gone. (`ps -o times` counts whole
/// seconds, too coarse for a database's many short backends or a 10 s benchmark phase.)
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command (which may hold spaces) in parentheses: utime, stime,
    // cutime and cstime are the 12th to 15th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// The machine's CPU time so far by state, from the first line of `/proc/stat` (clock ticks,
/// all CPUs): what [`MachineCpu::shares_since`] turns into the share of a period each CPU was
/// idle or waiting for the disk.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    total: u64,
    idle: u64,
    iowait: u64,
}

impl MachineCpu {
    /// Now.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let at = |i: usize| fields.get(i).copied().unwrap_or(0);
        Self {
            // user nice system idle iowait irq softirq steal (guest time is inside user).
            total: fields.iter().take(8).sum(),
            idle: at(3),
            iowait: at(4),
        }
    }

    /// The shares (0–1) of the CPUs' time since `earlier` spent idle and in iowait.
    pub fn shares_since(&self, earlier: &Self) -> (f64, f64) {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        (
            self.idle.saturating_sub(earlier.idle) as f64 / total,
            self.iowait.saturating_sub(earlier.iowait) as f64 / total,
        )
    }
}
