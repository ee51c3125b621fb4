//! [`TestBroker`]: the real broker, in-process, on `127.0.0.1:0` over real TLS, with its own
//! temp directory (config file, PKI, policies, SQLite store, audit log, admin token);
//! [`BrokerProcess`]: the same, as a `lanyard-broker serve` process that can be killed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lanyard_broker::broker::Broker;
use lanyard_broker::config::BrokerConfig;
use lanyard_broker::metrics::Metrics;
use serde_json::Value;
use tokio::sync::watch;

use crate::{OidcIssuer, TestPki};

/// Policy used when a test does not give one: role `app` (jwt, audience `app`, cap 600 s)
/// for service account `shop/api` of any issuer, and role `boot` for bootstrap tokens.
pub const DEFAULT_POLICY: &str = r#"
roles:
  app:
    backend: jwt
    scope: [app:read]
    max_ttl_seconds: 600
    default_ttl_seconds: 300
    settings: {audience: app}
  boot:
    backend: jwt
    max_ttl_seconds: 120
    default_ttl_seconds: 60
rules:
  - name: shop-api
    match: {namespace: shop, service_account: api}
    roles: [app]
  - name: bootstrap-boot
    match: {bootstrap_role: boot}
    roles: [boot]
"#;

/// Options for [`TestBroker::start_with`].
#[derive(Debug, Clone)]
pub struct TestBrokerOptions {
    /// Policy files: (file name, YAML).
    pub policies: Vec<(String, String)>,
    /// Extra YAML appended to the generated config (top-level keys).
    pub extra_config: String,
    /// Audience the broker accepts from the test issuer.
    pub audience: String,
    /// Trust client certificates from the test CA as admins (mTLS).
    pub admin_mtls: bool,
    /// The broker's clock, for tests that move time (`None`: the system clock).
    pub clock: Option<Arc<lanyard::clock::ManualClock>>,
    /// The audit log file (`None`: `audit.log` in the broker's directory), e.g. on a small
    /// file system a test fills.
    pub audit_file: Option<PathBuf>,
    /// More keys of the `audit:` section, each line indented two spaces (e.g.
    /// `"  auth_failures: {records_per_window: 5}\n"`).
    pub audit_config: String,
    /// `LANYARD_LOG` of a [`BrokerProcess`] (default `warn`; `info` or `debug` for tests that
    /// check what the broker logs).
    pub log_level: &'static str,
    /// The keys of the `store:` section, each line indented two spaces (empty: the default
    /// `  sqlite_path: store.db\n`), e.g. `"  postgres_url_file: pg-url\n"`.
    pub store_config: String,
}

impl Default for TestBrokerOptions {
    fn default() -> Self {
        Self {
            policies: vec![("policy.yaml".into(), DEFAULT_POLICY.into())],
            extra_config: String::new(),
            audience: "lanyard".into(),
            admin_mtls: false,
            clock: None,
            audit_file: None,
            audit_config: String::new(),
            log_level: "warn",
            store_config: String::new(),
        }
    }
}

/// A running broker.
#[derive(Debug)]
pub struct TestBroker {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// Bound address.
    pub addr: SocketAddr,
    /// The broker (for in-process calls).
    pub broker: Arc<Broker>,
    /// Test PKI (CA for clients).
    pub pki: TestPki,
    /// The admin token.
    pub admin_token: String,
    /// Generated config file.
    pub config_file: PathBuf,
    /// Policy directory.
    pub policies_dir: PathBuf,
    /// Audit log file.
    pub audit_file: PathBuf,
    /// SQLite file.
    pub store_file: PathBuf,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
    clock: Arc<dyn lanyard::clock::Clock>,
}

impl TestBroker {
    /// A broker trusting `issuer` (if given) with [`DEFAULT_POLICY`].
    pub async fn start(issuer: Option<&OidcIssuer>) -> Self {
        Self::start_with(issuer, TestBrokerOptions::default()).await
    }

    /// A broker with options.
    pub async fn start_with(issuer: Option<&OidcIssuer>, opts: TestBrokerOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::generate(&dir.path().join("tls"));
        let policies_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policies_dir).expect("policies dir");
        for (name, text) in &opts.policies {
            std::fs::write(policies_dir.join(name), text).expect("write policy");
        }
        let admin_token = write_admin_token(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let url = format!("https://{addr}");
        let audit_file = audit_path(dir.path(), &opts);
        let config_file = write_config(dir.path(), addr, &pki, issuer, &opts);
        let clock: Arc<dyn lanyard::clock::Clock> = match opts.clock {
            Some(c) => c,
            None => Arc::new(lanyard::clock::SystemClock),
        };
        let (broker, stop, task) = serve(listener, &config_file, clock.clone()).await;
        Self {
            url,
            addr,
            broker,
            pki,
            admin_token,
            config_file,
            policies_dir,
            audit_file,
            store_file: dir.path().join("store.db"),
            stop,
            task: Some(task),
            dir: Some(dir),
            clock,
        }
    }

    /// Stops serving (the port is closed and connections refused) but keeps the directory,
    /// store and certificates, so [`resume`](Self::resume) brings the same broker back.
    pub async fn pause(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Serves again on the same address with the same configuration and store, after
    /// [`pause`](Self::pause).
    pub async fn resume(&mut self) {
        // While paused the port is free, so a parallel test's server can bind it; clients
        // hold this URL, so wait for it to be released rather than move.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot rebind the paused broker's address {} within 30 s ({e}): \
                         another process took the port while the broker was paused",
                        self.addr
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        };
        let (broker, stop, task) = serve(listener, &self.config_file, self.clock.clone()).await;
        self.broker = broker;
        self.stop = stop;
        self.task = Some(task);
    }

    /// The temp directory holding everything.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("present until stop").path()
    }

    /// Writes (or replaces) policy file `name` atomically while the broker runs.
    pub fn write_policy(&self, name: &str, text: &str) {
        // `fs::write` truncates first, and the reload tick could load the empty file; a
        // dotfile is ignored by the loader until it is renamed into place.
        let tmp = self.policies_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write policy");
        std::fs::rename(&tmp, self.policies_dir.join(name)).expect("rename policy into place");
    }

    /// An HTTPS client trusting only the test CA.
    pub fn http(&self) -> reqwest::Client {
        client_trusting(&self.pki.ca_path())
    }

    /// A TLS connection to the broker (trusting only the test CA) offering the ALPN
    /// protocols `alpn` (`b"h2"`, `b"http/1.1"`), for tests that speak HTTP by hand.
    pub async fn tls_connect(
        &self,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use rustls_pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(self.pki.ca_path())
            .expect("read the test CA")
        {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to the broker");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("server name");
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the broker")
    }

    /// `POST /v1/credentials` with an optional bearer and a raw body; returns status and JSON
    /// (or `Value::Null` when the body is not JSON).
    pub async fn post_credentials(&self, bearer: Option<&str>, body: &str) -> (u16, Value) {
        let mut req = self
            .http()
            .post(format!("{}/v1/credentials", self.url))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics text")
    }

    /// An SDK client for this broker (trusting the test CA) with `source` as its identity.
    pub fn client(&self, source: lanyard::TokenSource) -> lanyard::Client {
        lanyard::Client::builder()
            .broker_url(self.url.clone())
            .ca_file(self.pki.ca_path())
            .token_source(source)
            .build()
            .expect("client builds")
    }

    /// Mints a bootstrap token through the admin API.
    pub async fn mint(&self, roles: &[&str], ttl_seconds: u64) -> String {
        let resp = self
            .http()
            .post(format!("{}/v1/admin/tokens", self.url))
            .bearer_auth(&self.admin_token)
            .json(&serde_json::json!({"roles": roles, "ttl_seconds": ttl_seconds}))
            .send()
            .await
            .expect("mint request");
        assert_eq!(resp.status().as_u16(), 201, "mint failed");
        let v: Value = resp.json().await.expect("mint json");
        v["token"].as_str().expect("token").to_owned()
    }

    /// The audit log's lines.
    pub fn audit_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.audit_file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Parsed audit records.
    pub fn audit_records(&self) -> Vec<Value> {
        self.audit_lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// Stops the server and waits for it. Returns its directory, which lives (with the
    /// store and audit log) until the returned value is dropped.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.dir.take().expect("present until stop")
    }
}

/// Writes `admin-token` in `dir` and returns the token.
fn write_admin_token(dir: &Path) -> String {
    let admin_token = format!("admin-{}", crate::oidc::random_hex(16));
    std::fs::write(dir.join("admin-token"), &admin_token).expect("admin token");
    admin_token
}

/// Writes `broker.yaml` in `dir` for a broker listening on `addr` (TLS from `pki`, policies in
/// `policies/`, `store.db`, `audit.log`, trusting `issuer`) and returns its path.
fn write_config(
    dir: &Path,
    addr: SocketAddr,
    pki: &TestPki,
    issuer: Option<&OidcIssuer>,
    opts: &TestBrokerOptions,
) -> PathBuf {
    let issuers = match issuer {
        Some(i) => format!(
            "issuers:\n  - issuer: \"{}\"\n    audiences: [\"{}\"]\n",
            i.url(),
            opts.audience
        ),
        None => String::new(),
    };
    let mtls = if opts.admin_mtls {
        format!("  admin_client_ca_file: {}\n", pki.ca_path().display())
    } else {
        String::new()
    };
    let config_text = format!(
        "listen: \"{addr}\"\npublic_url: \"https://{addr}\"\ntls:\n  cert_file: {cert}\n  key_file: {key}\n{mtls}\
         policies_dir: policies\nadmin:\n  token_file: admin-token\nstore:\n{store}\
         audit:\n  sink: {audit}\n{audit_extra}reload_interval_seconds: 1\n{issuers}{extra}\n",
        store = if opts.store_config.is_empty() {
            "  sqlite_path: store.db\n"
        } else {
            &opts.store_config
        },
        cert = pki.cert_path().display(),
        key = pki.key_path().display(),
        audit = audit_path(dir, opts).display(),
        audit_extra = opts.audit_config,
        extra = opts.extra_config,
    );
    let config_file = dir.join("broker.yaml");
    std::fs::write(&config_file, config_text).expect("write config");
    config_file
}

/// The audit log file a broker in `dir` started with `opts` writes.
fn audit_path(dir: &Path, opts: &TestBrokerOptions) -> PathBuf {
    opts.audit_file
        .clone()
        .unwrap_or_else(|| dir.join("audit.log"))
}

/// An HTTPS client trusting only the CA at `ca`.
fn client_trusting(ca: &Path) -> reqwest::Client {
    let ca = std::fs::read(ca).expect("ca");
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("pem"))
        .build()
        .expect("client")
}

/// The real `lanyard-broker serve` in its own process, for the faults an in-process server
/// cannot show (`SIGKILL`). Same directory layout as [`TestBroker`]; the port is chosen by
/// [`crate::child::spawn_ready`] and kept across [`restart`](Self::restart)s. Killed on drop.
#[derive(Debug)]
pub struct BrokerProcess {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// Test PKI (CA for clients).
    pub pki: TestPki,
    /// The admin token.
    pub admin_token: String,
    /// Generated config file.
    pub config_file: PathBuf,
    /// Audit log file.
    pub audit_file: PathBuf,
    /// SQLite file.
    pub store_file: PathBuf,
    /// The process's stdout and stderr (appended across restarts).
    pub log_file: PathBuf,
    bin: PathBuf,
    log_level: String,
    addr: SocketAddr,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl BrokerProcess {
    /// Starts `bin serve --config broker.yaml` (`bin`: the `lanyard-broker` binary, e.g.
    /// `env!("CARGO_BIN_EXE_lanyard-broker")`) and waits until `/readyz` answers 200.
    pub async fn start(bin: &Path, issuer: Option<&OidcIssuer>, opts: TestBrokerOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = TestPki::generate(&dir.path().join("tls"));
        let policies_dir = dir.path().join("policies");
        std::fs::create_dir_all(&policies_dir).expect("policies dir");
        for (name, text) in &opts.policies {
            std::fs::write(policies_dir.join(name), text).expect("write policy");
        }
        let admin_token = write_admin_token(dir.path());
        let log_file = dir.path().join("broker.log");
        let ca = pki.ca_path();
        let (child, port) = crate::child::spawn_ready(
            "lanyard-broker serve",
            std::time::Duration::from_secs(30),
            |port| {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                let config = write_config(dir.path(), addr, &pki, issuer, &opts);
                spawn(bin, &config, &log_file, opts.log_level)
            },
            |_, port| ready(client_trusting(&ca), port),
            || std::fs::read_to_string(&log_file).unwrap_or_default(),
        )
        .await;
        Self {
            url: format!("https://127.0.0.1:{port}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin_token,
            config_file: dir.path().join("broker.yaml"),
            audit_file: audit_path(dir.path(), &opts),
            store_file: dir.path().join("store.db"),
            log_file,
            pki,
            bin: bin.to_owned(),
            log_level: opts.log_level.to_owned(),
            child: Some(child),
            dir,
        }
    }

    /// The directory holding everything.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the process with `SIGKILL` (no shutdown code runs) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port with the same directory, after
    /// [`kill`](Self::kill). Returns the start error (the process's output) when it exits
    /// instead of becoming ready within 30 s.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let mut child = spawn(
            &self.bin,
            &self.config_file,
            &self.log_file,
            &self.log_level,
        );
        let client = self.http();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "the broker exited with {status}:\n{}",
                    std::fs::read_to_string(&self.log_file).unwrap_or_default()
                ));
            }
            if matches!(
                ready(client.clone(), self.addr.port()).await,
                crate::child::Probe::Ready
            ) {
                self.child = Some(child);
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the broker did not become ready within 30 s".into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// An HTTPS client trusting only the test CA.
    pub fn http(&self) -> reqwest::Client {
        client_trusting(&self.pki.ca_path())
    }

    /// Parsed audit records.
    pub fn audit_records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(bin: &Path, config: &Path, log: &Path, level: &str) -> std::process::Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("broker log file");
    std::process::Command::new(bin)
        .args(["serve", "--config"])
        .arg(config)
        .env("LANYARD_LOG", level)
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .spawn()
        .expect("spawn lanyard-broker")
}

async fn ready(client: reqwest::Client, port: u16) -> crate::child::Probe {
    match client
        .get(format!("https://127.0.0.1:{port}/readyz"))
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => crate::child::Probe::Ready,
        // The handshake proved it is this broker (the test CA signed its certificate): it is
        // still starting.
        Ok(_) | Err(_) => crate::child::Probe::NotYet,
    }
}

/// Loads the config and runs the server on `listener` with `clock` until the returned sender
/// says stop.
async fn serve(
    listener: tokio::net::TcpListener,
    config_file: &Path,
    clock: Arc<dyn lanyard::clock::Clock>,
) -> (
    Arc<Broker>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let config = BrokerConfig::load(config_file, std::iter::empty()).expect("config loads");
    let broker = Broker::new(config, clock, Metrics::new())
        .await
        .expect("broker starts");
    let (stop, rx) = watch::channel(false);
    let b = broker.clone();
    let task = tokio::spawn(async move {
        let mut rx = rx;
        let shutdown = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        lanyard_broker::server::run(listener, b, shutdown)
            .await
            .expect("server runs");
    });
    (broker, stop, task)
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The broker in-process without HTTP: a manual clock (started at the real time, since
/// upstreams such as moto stamp expirations with it), an in-memory store, an audit log file,
/// and `policy` as its only policy file. For tests that drive [`Broker::issue`] directly.
#[derive(Debug)]
pub struct InProcessBroker {
    /// The broker.
    pub broker: Arc<Broker>,
    /// Its clock.
    pub clock: Arc<lanyard::clock::ManualClock>,
    /// Its directory (config, policies, `audit.log`).
    pub dir: tempfile::TempDir,
}

impl InProcessBroker {
    /// Starts one; `extra_config` is appended to the config file (e.g. a `backends:`
    /// section). Returns the start error's text when the broker refuses to start.
    pub async fn start(policy: &str, extra_config: &str) -> Result<Self, String> {
        Self::start_with_store(
            policy,
            extra_config,
            Arc::new(lanyard_broker::store::memory::MemoryStore::new()),
        )
        .await
    }

    /// Like [`InProcessBroker::start`] on `store` (e.g. one that fails on demand).
    pub async fn start_with_store(
        policy: &str,
        extra_config: &str,
        store: Arc<dyn lanyard_broker::store::Store>,
    ) -> Result<Self, String> {
        use lanyard::clock::Clock as _;
        let dir = tempfile::tempdir().expect("tmp");
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).expect("policies dir");
        std::fs::write(policies.join("policy.yaml"), policy).expect("policy");
        let file = dir.path().join("broker.yaml");
        std::fs::write(
            &file,
            format!(
                "public_url: https://broker.test\ntls: {{cert_file: c.pem, key_file: k.pem}}\npolicies_dir: policies\nstore: {{sqlite_path: s.db}}\naudit: {{sink: audit.log}}\n{extra_config}"
            ),
        )
        .expect("config");
        let config = BrokerConfig::load(&file, std::iter::empty()).map_err(|e| e.to_string())?;
        let clock = Arc::new(lanyard::clock::ManualClock::new(
            lanyard::clock::SystemClock.now(),
        ));
        let broker = Broker::with_store(config, clock.clone(), Metrics::new(), store)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { broker, clock, dir })
    }

    /// A new broker process, as after a restart: the same directory (config, policies, audit
    /// log) and `store` (the one this broker used, for a restart that keeps its database), a
    /// fresh clock at the real time. This broker is dropped first.
    pub async fn restart_with_store(
        self,
        store: Arc<dyn lanyard_broker::store::Store>,
    ) -> Result<Self, String> {
        use lanyard::clock::Clock as _;
        let Self { broker, dir, .. } = self;
        drop(broker);
        let config = BrokerConfig::load(&dir.path().join("broker.yaml"), std::iter::empty())
            .map_err(|e| e.to_string())?;
        let clock = Arc::new(lanyard::clock::ManualClock::new(
            lanyard::clock::SystemClock.now(),
        ));
        let broker = Broker::with_store(config, clock.clone(), Metrics::new(), store)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { broker, clock, dir })
    }

    /// The audit log's text.
    pub fn audit_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default()
    }

    /// Issues every granted role (or `ttl_seconds` each) to `who`.
    pub async fn issue(
        &self,
        who: &lanyard_broker::broker::Authenticated,
        ttl_seconds: Option<u64>,
    ) -> Result<lanyard::wire::CredentialResponse, lanyard_broker::error::ApiError> {
        self.broker
            .issue(
                who,
                &lanyard::wire::CredentialRequest {
                    roles: None,
                    ttl_seconds,
                },
                "req_test",
            )
            .await
    }
}

/// An authenticated Kubernetes pod `pod` of service account `namespace/service_account`.
pub fn k8s_pod(
    namespace: &str,
    service_account: &str,
    pod: &str,
) -> lanyard_broker::broker::Authenticated {
    use lanyard_broker::authn::{Identity, KubernetesIdentity};
    lanyard_broker::broker::Authenticated::new(Identity {
        issuer: "https://kubernetes.test".into(),
        subject: format!("system:serviceaccount:{namespace}:{service_account}"),
        kubernetes: Some(KubernetesIdentity {
            namespace: namespace.into(),
            service_account: service_account.into(),
            pod_name: Some(pod.into()),
            pod_uid: Some(format!("uid-{pod}")),
            admission: Default::default(),
        }),
        bootstrap: None,
        spiffe_id: None,
        claims: Default::default(),
    })
}
