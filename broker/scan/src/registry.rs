//! The registry client, through `oci-client`: authentication (basic credentials through the
//! registry's token flow — to a realm [`realm_allowed`] accepts only — or a bearer token as
//! is), manifests and indexes fetched, bounded and checked against their digests, configs
//! fetched under the metadata bound, and layer blobs streamed to the blocking layer readers
//! ([`Remote::open_blob`]). Errors never carry credentials.

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use crate::error::ScanError;
use crate::manifest::{
    Descriptor, MAX_METADATA_BYTES, Manifest, Platform, parse_manifest, select_platforms,
};
use crate::options::{RegistryAuth, ScanOptions};
use crate::plan::{PlannedImage, planned};
use crate::util::{sha256_digest, verify_digest};

/// A registry repository to read blobs from, with the client that fetched its manifest.
#[derive(Clone)]
pub(crate) struct Remote {
    client: Arc<oci_client::Client>,
    reference: oci_client::Reference,
}

impl Remote {
    /// Starts streaming a blob: an async task pumps its chunks to the returned blocking reader,
    /// and stops when the reader is dropped.
    pub(crate) async fn open_blob(
        &self,
        digest: &str,
    ) -> Result<ChannelReader, oci_client::errors::OciDistributionError> {
        let stream = self
            .client
            .pull_blob_stream(&self.reference, digest)
            .await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(8);
        let pump = tokio::spawn(async move {
            use futures_util::StreamExt as _;
            let mut stream = stream;
            while let Some(item) = stream.next().await {
                let item = item.map_err(|e| io::Error::other(format!("registry: {e}")));
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        Ok(ChannelReader {
            rx,
            current: bytes::Bytes::new(),
            pump,
        })
    }
}

/// A blocking reader over chunks sent by an async task; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
    pump: tokio::task::JoinHandle<()>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The host of `host[:port]` (IPv6 brackets removed), lowercased.
fn host_only(host: &str) -> String {
    let h = host
        .rsplit_once(':')
        .map(|(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) && (!h.contains(':') || h.ends_with(']')) {
                h
            } else {
                host
            }
        })
        .unwrap_or(host);
    h.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

fn is_loopback(host: &str) -> bool {
    let h = host_only(host);
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Registries whose token service is on another host, as (registry, token service) pairs. Any
/// other registry may send credentials only to its own host.
pub(crate) const KNOWN_TOKEN_REALMS: &[(&str, &str)] = &[
    ("index.docker.io", "auth.docker.io"),
    ("registry-1.docker.io", "auth.docker.io"),
    ("docker.io", "auth.docker.io"),
    ("registry.gitlab.com", "gitlab.com"),
];

/// May the registry `registry` (`host[:port]`) have our credentials sent to `realm`, the URL of
/// its Bearer challenge? Only over HTTPS (plain HTTP only to a loopback realm of a loopback
/// registry under `--insecure-registry`), without user info in the URL, and to the registry's
/// own host or its token service in [`KNOWN_TOKEN_REALMS`]. Pure.
pub(crate) fn realm_allowed(
    registry: &str,
    realm: &str,
    insecure_loopback: bool,
) -> Result<(), String> {
    let shown: String = realm.chars().take(200).collect();
    let url = url::Url::parse(realm)
        .map_err(|e| format!("its token realm `{shown}` is not a URL: {e}"))?;
    let realm_host = url.host_str().map(host_only).unwrap_or_default();
    let registry_host = host_only(registry);
    let refuse = |why: &str| {
        Err(format!(
            "{registry} asks for credentials to be sent to `{shown}`; refused: {why}"
        ))
    };
    if !url.username().is_empty() || url.password().is_some() {
        return refuse("the realm URL carries user info");
    }
    match url.scheme() {
        "https" => {}
        "http" if insecure_loopback && is_loopback(registry) && is_loopback(&realm_host) => {}
        _ => return refuse("the token realm must be https"),
    }
    if realm_host == registry_host
        || KNOWN_TOKEN_REALMS
            .iter()
            .any(|(r, a)| *r == registry_host && *a == realm_host)
    {
        Ok(())
    } else {
        refuse(
            "the token realm must be on the registry's own host (or a known registry/token-service pair)",
        )
    }
}

/// The realm of the first Bearer challenge with one, as oci-client picks it.
fn bearer_realm(header: &str) -> Option<String> {
    http_auth::parser::ChallengeParser::new(header)
        .filter_map(Result::ok)
        .filter(|c| c.scheme.eq_ignore_ascii_case("Bearer"))
        .find_map(|c| {
            c.params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("realm"))
                .map(|(_, v)| v.to_unescaped())
        })
}

/// Before oci-client sends basic credentials to the registry's token realm, asks the registry
/// for its challenge (no redirects followed) and refuses a realm [`realm_allowed`] refuses.
/// oci-client asks again itself (it has no hook for the realm): a registry that answers this
/// probe and oci-client differently could still direct the credentials elsewhere — but such a
/// registry gets them anyway, by asking for HTTP basic authentication on its own host.
async fn check_token_realm(host: &str, insecure_loopback: bool) -> Result<(), ScanError> {
    let scheme = if insecure_loopback { "http" } else { "https" };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| ScanError::Internal(format!("HTTP client: {e}")))?;
    let res = http
        .get(format!("{scheme}://{host}/v2/"))
        .send()
        .await
        .map_err(|e| reg_err(&format!("asking {host} how to authenticate"), e))?;
    let realm = res
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer_realm);
    match realm {
        // No Bearer challenge: basic credentials go to the registry itself.
        None => Ok(()),
        Some(realm) => realm_allowed(host, &realm, insecure_loopback).map_err(ScanError::Registry),
    }
}

fn auth(a: &RegistryAuth) -> oci_client::secrets::RegistryAuth {
    match a {
        RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
        RegistryAuth::Basic { username, password } => {
            oci_client::secrets::RegistryAuth::Basic(username.clone(), password.expose().to_owned())
        }
        RegistryAuth::Bearer(t) => oci_client::secrets::RegistryAuth::Bearer(t.expose().to_owned()),
    }
}

/// oci-client errors can echo request details; keep the message short and credential-free.
fn reg_err(what: &str, e: impl fmt::Display) -> ScanError {
    let msg = e.to_string();
    let msg: String = msg.chars().take(300).collect();
    ScanError::Registry(format!("{what}: {msg}"))
}

/// Resolves a `registry://` reference (without the scheme) to the digest of the manifest or
/// index it names now: a tag is looked up in the registry, a digest is checked against the
/// bytes the registry serves under it. One manifest fetch; nothing else is read.
pub(crate) async fn resolve(r: &str, opts: &ScanOptions) -> Result<String, ScanError> {
    let (client, reference, a) = connect(r, opts).await?;
    let (bytes, _) = client
        .pull_manifest_raw(&reference, &a, ACCEPT)
        .await
        .map_err(|e| reg_err(&format!("fetching the manifest of {r}"), e))?;
    top_digest(r, &reference, &bytes)
}

/// The digest of the manifest bytes a reference named: checked against a pinned digest (under
/// its own algorithm; an unknown one is refused), else their SHA-256.
fn top_digest(
    r: &str,
    reference: &oci_client::Reference,
    bytes: &[u8],
) -> Result<String, ScanError> {
    match reference.digest() {
        Some(d) => {
            verify_digest(d, bytes)
                .map_err(|e| ScanError::Registry(format!("the manifest of {r}: {e}")))?;
            Ok(d.to_owned())
        }
        None => Ok(sha256_digest(bytes)),
    }
}

/// Parses the reference, builds the client and authenticates.
async fn connect(
    r: &str,
    opts: &ScanOptions,
) -> Result<
    (
        Arc<oci_client::Client>,
        oci_client::Reference,
        oci_client::secrets::RegistryAuth,
    ),
    ScanError,
> {
    let reference: oci_client::Reference = r
        .parse()
        .map_err(|e| ScanError::BadSource(format!("registry://{r}: {e}")))?;
    let host = reference.resolve_registry().to_owned();
    let protocol = if opts.insecure_loopback_registry {
        if !is_loopback(&host) {
            return Err(ScanError::BadSource(format!(
                "--insecure-registry is only allowed for loopback registries, not {host}"
            )));
        }
        oci_client::client::ClientProtocol::HttpsExcept(vec![host.clone()])
    } else {
        oci_client::client::ClientProtocol::Https
    };
    let client = Arc::new(oci_client::Client::new(oci_client::client::ClientConfig {
        protocol,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    }));
    let a = auth(&opts.auth);
    if let RegistryAuth::Basic { username, .. } = &opts.auth {
        check_token_realm(&host, opts.insecure_loopback_registry).await?;
        // Authenticate first: on a refusal oci-client would fall back to an anonymous
        // pull and report only "not authorized" for the manifest.
        match client
            .auth(&reference, &a, oci_client::RegistryOperation::Pull)
            .await
        {
            Ok(_) => {}
            Err(oci_client::errors::OciDistributionError::AuthenticationFailure(_)) => {
                return Err(ScanError::Registry(format!(
                    "{host} refused the credentials of user {username:?} for pulling {}: \
                     check --registry-username and --registry-password-file",
                    reference.repository()
                )));
            }
            Err(e) => return Err(reg_err(&format!("authenticating to {host}"), e)),
        }
    }
    Ok((client, reference, a))
}

/// Resolves a `registry://` reference (without the scheme) to the images to scan: fetches and
/// checks the manifest or index, picks the platforms, fetches and checks each config. Also
/// returns the digest of the manifest or index the reference named.
pub(crate) async fn plan(
    r: &str,
    opts: &ScanOptions,
) -> Result<(Remote, Vec<PlannedImage>, String), ScanError> {
    let (client, reference, a) = connect(r, opts).await?;
    let (bytes, _) = client
        .pull_manifest_raw(&reference, &a, ACCEPT)
        .await
        .map_err(|e| reg_err(&format!("fetching the manifest of {r}"), e))?;
    // Pinned by digest: verified under the digest's own algorithm (an unknown one is refused);
    // by tag: the manifest is named by its SHA-256.
    let top_digest = top_digest(r, &reference, &bytes)?;
    let resolved = top_digest.clone();
    let names = reference
        .tag()
        .map(|t| vec![format!("{}:{t}", reference.repository())])
        .unwrap_or_default();
    let mut images = Vec::new();
    match parse_manifest(&bytes)
        .map_err(|e| ScanError::BadSource(format!("registry://{r}: {e}")))?
    {
        Manifest::Image { config, layers } => {
            images.push(
                image(
                    &client, &reference, top_digest, None, names, &config, &layers,
                )
                .await?,
            );
        }
        Manifest::Index { manifests } => {
            for child in
                select_platforms(&manifests, &opts.platform).map_err(ScanError::BadSource)?
            {
                within_metadata_bound("manifest", child)?;
                let child_ref = reference.clone_with_digest(child.digest.clone());
                let (cb, _) = client
                    .pull_manifest_raw(&child_ref, &a, ACCEPT)
                    .await
                    .map_err(|e| reg_err(&format!("fetching manifest {}", child.digest), e))?;
                verify_digest(&child.digest, &cb)
                    .map_err(|e| ScanError::Registry(format!("manifest {e}")))?;
                match parse_manifest(&cb)
                    .map_err(|e| ScanError::BadSource(format!("{}: {e}", child.digest)))?
                {
                    Manifest::Image { config, layers } => images.push(
                        image(
                            &client,
                            &reference,
                            child.digest.clone(),
                            child.platform.as_ref().map(Platform::name),
                            names.clone(),
                            &config,
                            &layers,
                        )
                        .await?,
                    ),
                    Manifest::Index { .. } => {
                        return Err(ScanError::BadSource(format!(
                            "{}: nested image indexes are not supported",
                            child.digest
                        )));
                    }
                }
            }
        }
    }
    Ok((Remote { client, reference }, images, resolved))
}

/// Fetches and checks an image's config (the client is authenticated by the manifest pull).
async fn image(
    client: &oci_client::Client,
    reference: &oci_client::Reference,
    digest: String,
    platform: Option<String>,
    names: Vec<String>,
    config: &Descriptor,
    layers: &[Descriptor],
) -> Result<PlannedImage, ScanError> {
    within_metadata_bound("config", config)?;
    let mut buf = Bounded(Vec::new());
    client
        .pull_blob(reference, config.digest.as_str(), &mut buf)
        .await
        .map_err(|e| reg_err(&format!("fetching config {}", config.digest), e))?;
    verify_digest(&config.digest, &buf.0)
        .map_err(|e| ScanError::Registry(format!("config {e}")))?;
    let layers = layers
        .iter()
        .enumerate()
        .map(|(i, l)| (l.digest.clone(), i, l.digest.clone(), l.size))
        .collect();
    planned(
        digest,
        platform,
        names,
        layers,
        (config.digest.clone(), buf.0),
    )
}

/// Refuses, before fetching it, a manifest or config whose descriptor says it is larger than
/// [`MAX_METADATA_BYTES`] (the fetched bytes are then held to the descriptor by its digest).
fn within_metadata_bound(what: &str, d: &Descriptor) -> Result<(), ScanError> {
    if d.size > MAX_METADATA_BYTES {
        return Err(ScanError::BadSource(format!(
            "{what} {} is {} bytes; metadata over {MAX_METADATA_BYTES} bytes is refused",
            d.digest, d.size
        )));
    }
    Ok(())
}

/// An in-memory sink refusing more than the metadata bound.
struct Bounded(Vec<u8>);

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        if (self.0.len() + buf.len()) as u64 > MAX_METADATA_BYTES {
            return std::task::Poll::Ready(Err(io::Error::other(
                "config blob larger than the metadata bound",
            )));
        }
        self.0.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_channel_reader_reads_across_chunks_and_stops_its_pump_when_dropped() {
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(8);
        let (alive, stopped) = tokio::sync::oneshot::channel::<()>();
        let pump = tokio::spawn(async move {
            let _alive = alive;
            for chunk in [&b"hel"[..], b"", b"lo wor", b"ld"] {
                tx.send(Ok(bytes::Bytes::from_static(chunk)))
                    .await
                    .expect("reader alive");
            }
            tx.send(Err(io::Error::other("registry: reset")))
                .await
                .expect("reader alive");
            std::future::pending::<()>().await;
        });
        let mut r = ChannelReader {
            rx,
            current: bytes::Bytes::new(),
            pump,
        };
        let (got, err, r) = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4];
            let err = loop {
                match r.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => break Some(e.to_string()),
                }
            };
            (got, err, r)
        })
        .await
        .expect("reader task");
        assert_eq!(got, b"hello world");
        assert_eq!(err.as_deref(), Some("registry: reset"));
        drop(r);
        let outcome = tokio::time::timeout(Duration::from_secs(10), stopped)
            .await
            .expect("the pump stops when the reader is dropped");
        assert!(outcome.is_err(), "aborted, not finished");
    }

    #[test]
    fn metadata_over_the_bound_is_refused_before_it_is_fetched() {
        let d = |size| Descriptor {
            media_type: String::new(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size,
            platform: None,
            annotations: Default::default(),
        };
        within_metadata_bound("manifest", &d(MAX_METADATA_BYTES)).expect("at the bound");
        let e = within_metadata_bound("manifest", &d(MAX_METADATA_BYTES + 1))
            .expect_err("over the bound");
        assert!(
            matches!(e, ScanError::BadSource(_)) && e.to_string().starts_with("manifest sha256:a"),
            "{e}"
        );
    }

    #[test]
    fn credentials_go_only_to_an_https_realm_on_the_registry_or_a_known_token_service() {
        let ok = |reg: &str, realm: &str, insecure: bool| realm_allowed(reg, realm, insecure);
        ok("ghcr.io", "https://ghcr.io/token", false).expect("own host");
        ok("quay.io:443", "https://QUAY.io/v2/auth", false).expect("own host, case, port");
        ok("index.docker.io", "https://auth.docker.io/token", false).expect("docker hub");
        ok(
            "registry-1.docker.io",
            "https://auth.docker.io/token",
            false,
        )
        .expect("docker hub");
        ok("127.0.0.1:5000", "http://127.0.0.1:5001/token", true).expect("loopback test");
        ok("[::1]:5000", "http://[::1]:5001/token", true).expect("loopback v6");
        for (reg, realm, insecure, why) in [
            ("ghcr.io", "http://ghcr.io/token", false, "must be https"),
            (
                "127.0.0.1:5000",
                "http://127.0.0.1:5001/token",
                false,
                "must be https",
            ),
            (
                "127.0.0.1:5000",
                "http://10.0.0.1/token",
                true,
                "must be https",
            ),
            ("ghcr.io", "https://evil.example/token", false, "own host"),
            ("ghcr.io", "https://auth.docker.io/token", false, "own host"),
            (
                "127.0.0.1:5000",
                "https://localhost/token",
                true,
                "own host",
            ),
            (
                "evil.example",
                "https://evil.example.auth.docker.io/",
                false,
                "own host",
            ),
            ("ghcr.io", "https://u:p@ghcr.io/token", false, "user info"),
            ("ghcr.io", "/token", false, "not a URL"),
            ("ghcr.io", "file:///etc/passwd", false, "must be https"),
        ] {
            let e = ok(reg, realm, insecure).expect_err(realm);
            assert!(e.contains(why), "{reg} {realm}: {e}");
        }
    }

    #[test]
    fn the_realm_is_read_from_the_first_bearer_challenge_with_one() {
        assert_eq!(
            bearer_realm(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#
            )
            .as_deref(),
            Some("https://auth.docker.io/token")
        );
        assert_eq!(
            bearer_realm(r#"Basic realm="x", Bearer service="s", Bearer realm="https://a/t""#)
                .as_deref(),
            Some("https://a/t")
        );
        assert_eq!(bearer_realm(r#"Basic realm="registry""#), None);
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.org"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }
}
