//! `lanyard-broker dev`: everything embedded, nothing to install.
//!
//! Creates (or reuses) a dev directory with a CA and server certificate, an admin token, an
//! SQLite store and an audit log; loads the policies; starts the broker on loopback; mints a
//! bootstrap token; runs an in-process sidecar that writes credentials into `<dir>/secrets`
//! and keeps them fresh; prints what it did and how to talk to it. Ctrl-C stops it all.
//!
//! The image gate is on, reading plain-HTTP registries on loopback addresses only, and both
//! admission webhooks are served (they come with the server's router): the API server's
//! token is `<dir>/admission-token`, and `<dir>/admission-review.json` is an
//! AdmissionReview to try them with `curl`, as the banner shows.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lanyard::clock::{Clock, SystemClock};
use lanyard::wire::MintTokenRequest;
use tokio::net::TcpListener;

use crate::broker::{Broker, StartError, new_request_id};
use crate::config::BrokerConfig;
use crate::metrics::Metrics;

/// The example policy used when no policy directory is given and `./policies` is absent.
pub const BUILTIN_DEV_POLICY: &str = r#"# Written by `lanyard-broker dev` because no policies directory was found.
roles:
  dev-app:
    backend: jwt
    scope: [demo:read]
    max_ttl_seconds: 300
    default_ttl_seconds: 120
    settings:
      audience: demo
rules:
  - name: dev-bootstrap
    match:
      bootstrap_role: dev-app
    roles: [dev-app]
"#;

/// Options of `lanyard-broker dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Dev directory (created; reused across runs).
    pub dir: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Policy directory; `None` → `./policies` if present, else a built-in example.
    pub policies: Option<PathBuf>,
    /// Role to mint the bootstrap token for.
    pub role: String,
    /// Run the in-process sidecar.
    pub sidecar: bool,
}

/// Why dev mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A file in the dev directory could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot generate dev certificates: {0}")]
    Cert(String),
    /// The listen address is unavailable.
    #[error(
        "cannot listen on {addr}: {source} (is another broker running? try --listen 127.0.0.1:0)"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The broker did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The generated configuration did not load (a bug).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Minting the first bootstrap token failed.
    #[error("cannot mint the dev bootstrap token: {0}")]
    Mint(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DevError + '_ {
    move |source| DevError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file readable only by its owner (replacing it).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), DevError> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Files of a dev CA and server certificate.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// CA certificate (give this to clients).
    pub ca: PathBuf,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
}

/// Creates a CA and a `localhost`/`127.0.0.1` server certificate in `dir`, unless all three
/// files already exist.
pub fn ensure_pki(dir: &Path) -> Result<DevPki, DevError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let pki = DevPki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if pki.ca.is_file() && pki.cert.is_file() && pki.key.is_file() {
        return Ok(pki);
    }
    let cert_err = |e: rcgen::Error| DevError::Cert(e.to_string());
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "lanyard dev CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(cert_err)?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(cert_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "lanyard dev broker");
    let key = rcgen::KeyPair::generate().map_err(cert_err)?;
    let cert = params.signed_by(&key, &ca).map_err(cert_err)?;
    std::fs::write(&pki.ca, ca.pem()).map_err(io_err(&pki.ca))?;
    std::fs::write(&pki.cert, cert.pem()).map_err(io_err(&pki.cert))?;
    write_private(&pki.key, key.serialize_pem().as_bytes())?;
    Ok(pki)
}

fn random_token() -> String {
    let mut buf = [0u8; 32];
    aws_lc_rs::rand::fill(&mut buf).expect("operating system random number generator");
    hex::encode(buf)
}

/// A started dev environment.
#[derive(Debug)]
pub struct DevEnv {
    /// The broker.
    pub broker: Arc<Broker>,
    /// Its bound address.
    pub addr: SocketAddr,
    /// Its URL.
    pub url: String,
    /// Dev directory.
    pub dir: PathBuf,
    /// CA file.
    pub ca: PathBuf,
    /// Admin token file.
    pub admin_token_file: PathBuf,
    /// Bootstrap token file.
    pub bootstrap_token_file: PathBuf,
    /// Where the sidecar writes.
    pub secrets_dir: PathBuf,
    /// Generated configuration file.
    pub config_file: PathBuf,
    /// The bearer token the admission webhooks take (as the API server's).
    pub admission_token_file: PathBuf,
    /// An example AdmissionReview (a pod naming `127.0.0.1:5000/app:1`) for the webhooks.
    pub pod_review_file: PathBuf,
}

/// The image the example AdmissionReview names: a local registry's (`docker-registry serve`
/// on its default address).
pub const EXAMPLE_IMAGE: &str = "127.0.0.1:5000/app:1";

/// An AdmissionReview as the API server sends it for a pod `CREATE` (the Kubernetes
/// documentation's shape) whose one container runs `image`.
pub fn example_pod_review(image: &str) -> String {
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "dev-app",
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "dev", "groups": ["system:authenticated"]},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "dev-app",
                    "namespace": "default",
                    "uid": "9f1d3c52-5b7e-4a0e-9d55-2b1f0c6d7e8a"
                },
                "spec": {"containers": [{"name": "app", "image": image}]}
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    serde_json::to_string_pretty(&review).unwrap_or_default() + "\n"
}

/// Prepares the dev directory and starts the broker; returns the environment and the
/// bound listener (serve it with [`crate::server::run`]).
pub async fn prepare(opts: &DevOptions) -> Result<(DevEnv, TcpListener), DevError> {
    let dir = if opts.dir.is_absolute() {
        opts.dir.clone()
    } else {
        std::env::current_dir()
            .map_err(io_err(&opts.dir))?
            .join(&opts.dir)
    };
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
    let pki = ensure_pki(&dir.join("tls"))?;
    let admin_token_file = dir.join("admin-token");
    if !admin_token_file.is_file() {
        write_private(&admin_token_file, random_token().as_bytes())?;
    }
    // The API server's credential for the admission webhooks (a bearer token in dev; a
    // client certificate from its own CA in production, `gate.admission.client_ca_file`).
    let admission_token_file = dir.join("admission-token");
    if !admission_token_file.is_file() {
        write_private(&admission_token_file, random_token().as_bytes())?;
    }
    let pod_review_file = dir.join("admission-review.json");
    if !pod_review_file.is_file() {
        std::fs::write(&pod_review_file, example_pod_review(EXAMPLE_IMAGE))
            .map_err(io_err(&pod_review_file))?;
    }
    let policies = match &opts.policies {
        Some(p) => p.clone(),
        None if Path::new("policies").is_dir() => std::env::current_dir()
            .map_err(io_err(Path::new("policies")))?
            .join("policies"),
        None => {
            let p = dir.join("policies");
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
            std::fs::write(p.join("dev.yaml"), BUILTIN_DEV_POLICY).map_err(io_err(&p))?;
            p
        }
    };
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| DevError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DevError::Listen {
        addr: opts.listen,
        source,
    })?;
    let url = format!("https://{addr}");
    let secrets_dir = dir.join("secrets");
    std::fs::create_dir_all(&secrets_dir).map_err(io_err(&secrets_dir))?;
    let config_file = dir.join("broker.yaml");
    let config_text = format!(
        "# Generated by `lanyard-broker dev`; `lanyard-broker serve --config {cfg}` runs the same broker.\n\
         listen: \"{addr}\"\n\
         public_url: \"{url}\"\n\
         tls:\n  cert_file: tls/cert.pem\n  key_file: tls/key.pem\n\
         policies_dir: \"{policies}\"\n\
         admin:\n  token_file: admin-token\n\
         store:\n  sqlite_path: store.db\n\
         audit:\n  sink: audit.log\n\
         # The image gate checks every image-bound token and serves both admission webhooks;\n\
         # plain HTTP to loopback registries only.\n\
         gate:\n  insecure_loopback_registries: true\n  scan_deadline_seconds: 20\n\
         \x20 admission:\n    token_file: admission-token\n\
         reload_interval_seconds: 2\n",
        cfg = config_file.display(),
        policies = policies.display(),
    );
    std::fs::write(&config_file, config_text).map_err(io_err(&config_file))?;
    let config = BrokerConfig::load(&config_file, std::iter::empty())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let broker = Broker::new(config, clock, Metrics::new()).await?;
    let bootstrap_token_file = dir.join("bootstrap-token");
    let minted = broker
        .mint_token(
            &MintTokenRequest {
                roles: vec![opts.role.clone()],
                ttl_seconds: Some(3600),
                image: None,
            },
            &new_request_id(),
        )
        .await
        .map_err(|e| DevError::Mint(e.to_string()))?;
    write_private(&bootstrap_token_file, minted.token.expose().as_bytes())?;
    Ok((
        DevEnv {
            broker,
            addr,
            url,
            dir,
            ca: pki.ca,
            admin_token_file,
            bootstrap_token_file,
            secrets_dir,
            config_file,
            admission_token_file,
            pod_review_file,
        },
        listener,
    ))
}

/// What dev mode prints once it is up.
pub fn banner(env: &DevEnv, role: &str, sidecar: bool) -> String {
    let d = env.dir.display();
    let ca = env.ca.display();
    let mut s = format!(
        "\nlanyard dev broker is running at {url}\n\n\
         dev directory   {d}\n\
         CA certificate  {ca}\n\
         admin token     {admin}\n\
         store           {d}/store.db\n\
         audit log       {d}/audit.log\n\
         config          {cfg}\n\n",
        url = env.url,
        admin = env.admin_token_file.display(),
        cfg = env.config_file.display(),
    );
    if sidecar {
        s.push_str(&format!(
            "An in-process sidecar redeemed a bootstrap token for role `{role}` and writes\n\
             credentials into {secrets}/ (refreshed before they expire):\n  \
             cat {secrets}/{role}/token\n\n",
            secrets = env.secrets_dir.display(),
        ));
    }
    s.push_str(&format!(
        "Try it:\n  \
         export LANYARD_BROKER_URL={url} LANYARD_CA_FILE={ca} LANYARD_ADMIN_TOKEN_FILE={admin}\n  \
         lanyard-broker token create --role {role} --ttl 10m > /tmp/lanyard-token\n  \
         curl --cacert {ca} -X POST -H \"Authorization: Bearer $(cat /tmp/lanyard-token)\" {url}/v1/credentials\n  \
         lanyard-sidecar init --broker {url} --ca {ca} --bootstrap-token-file /tmp/lanyard-token --dir /tmp/lanyard-secrets\n  \
         curl --cacert {ca} {url}/v1/jwks\n  \
         lanyard-broker audit verify {d}/audit.log\n\n\
         The image gate, with a local registry (e.g. `docker-registry serve` on 127.0.0.1:5000):\n  \
         lanyard-broker image scan 127.0.0.1:5000/app:1          # scan ahead; prints the verdict and app@sha256:…\n  \
         lanyard-broker image verdict 127.0.0.1:5000/app@sha256:DIGEST   # the stored verdict; DIGEST as `image scan` printed it\n  \
         lanyard-broker token create --role {role} --image 127.0.0.1:5000/app:1 > /tmp/lanyard-token\n  \
         curl --cacert {ca} -X POST -H \"Authorization: Bearer $(cat /tmp/lanyard-token)\" {url}/v1/credentials\n  \
         # a dirty image gets 403 image_refused naming the rule and the finding's layer and path\n\n\
         The admission webhooks, as the API server calls them ({review} is a pod running\n\
         {image}; edit the image for your registry):\n  \
         curl --cacert {ca} -H \"Authorization: Bearer $(cat {admission})\" -H 'Content-Type: application/json' --data-binary @{review} {url}/v1/admission/mutate\n  \
         # allowed, with a JSONPatch pinning the tag to its digest: add | jq -r .response.patch | base64 -d\n  \
         curl --cacert {ca} -H \"Authorization: Bearer $(cat {admission})\" -H 'Content-Type: application/json' --data-binary @{review} {url}/v1/admission/validate\n  \
         # a dirty image is denied with the finding; a clean one allowed, and recorded for the pod's UID\n\n\
         Ctrl-C stops.\n",
        url = env.url,
        admin = env.admin_token_file.display(),
        admission = env.admission_token_file.display(),
        review = env.pod_review_file.display(),
        image = EXAMPLE_IMAGE,
    ));
    s
}

/// Runs dev mode until `shutdown` resolves.
pub async fn run(
    opts: DevOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DevError> {
    let (env, listener) = prepare(&opts).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(crate::server::run(
        listener,
        env.broker.clone(),
        stopped(stop_rx.clone()),
    ));
    let sidecar = if opts.sidecar {
        let client = lanyard::Client::builder()
            .broker_url(env.url.clone())
            .ca_file(&env.ca)
            .token_source(lanyard::TokenSource::BootstrapFile(
                env.bootstrap_token_file.clone(),
            ))
            .build()
            .map_err(|e| DevError::Mint(e.to_string()))?;
        let cfg = lanyard_sidecar::SidecarConfig {
            client,
            dir: env.secrets_dir.clone(),
        };
        let rx = stop_rx.clone();
        Some(tokio::spawn(async move {
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            if let Err(e) = lanyard_sidecar::run(&cfg, clock, stopped(rx)).await {
                tracing::error!(error = %e, "dev sidecar stopped");
            }
        }))
    } else {
        None
    };
    crate::output::write_out(format_args!("{}", banner(&env, &opts.role, opts.sidecar)));
    shutdown.await;
    let _ = stop_tx.send(true);
    if let Some(s) = sidecar {
        let _ = s.await;
    }
    match server.await {
        Ok(r) => r?,
        Err(e) => tracing::error!(error = %e, "server task failed"),
    }
    crate::output::write_out(format_args!(
        "lanyard dev stopped; state kept in {}",
        env.dir.display()
    ));
    Ok(())
}
