//! The image scanner: finds credentials baked into container images — in the config (`Env`,
//! labels), in the history (`created_by`, where ARG values appear), and in every file of every
//! layer, including files a later layer deleted. The image gate and the `lanyard-broker scan`
//! command call [`scan`]. `docs/SCANNER.md` documents sources, rules, the JSON schema and exit
//! codes.
//!
//! # Layout
//! - [`source`]: source forms, manifest/index/config parsing (pure, bounded), platform
//!   selection, local blob stores; registry access through `oci-client`.
//! - [`layer`]: one layer: magic-byte decompression (gzip, zstd, plain), the tar walk, chunked
//!   content scanning, nested archives, whiteouts, bounds, digest checks.
//! - [`tar`]: the bounded streaming tar reader.
//! - [`rules`]: provider rules, keyword prefilter, entropy, placeholder filter, file kinds.
//! - [`report`]: findings, preview and fingerprint, the verdict, human/JSON/SARIF output.
//! - [`allow`]: the allowlist.
//!
//! Secrets never leave this module: findings carry a redacted preview and a fingerprint only.

pub mod allow;
pub mod layer;
pub mod report;
pub mod rules;
pub mod source;
pub mod tar;

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lanyard::Secret;

pub use allow::Allowlist;
pub use report::{Finding, ImageReport, Location, Report, Verdict};
pub use source::{PlatformChoice, Source};

use layer::{Budget, LayerInfo, LayerResult};
use report::{Stats, fingerprint, location_key, preview};
use rules::{Confidence, RuleSet, SecretClass, Severity};
use source::{ImageConfig, Manifest, Store};

/// Bounds on what one image scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes after decompression, all layers and nested archives together.
    pub max_decompressed_bytes: u64,
    /// Total tar entries, all layers and nested archives together.
    pub max_entries: u64,
    /// Longest path in a tar header.
    pub max_path_bytes: usize,
    /// Bytes scanned per file; beyond, the scan is incomplete.
    pub max_file_scan_bytes: u64,
    /// Archives inside archives opened (a `.tar.gz` in a layer is depth 1).
    pub max_nesting: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_decompressed_bytes: 32 << 30,
            max_entries: 2_000_000,
            max_path_bytes: 4096,
            max_file_scan_bytes: 1 << 30,
            max_nesting: 3,
        }
    }
}

/// Receives progress (bytes of layer blobs) for a progress bar.
pub trait Progress: Send + Sync + fmt::Debug {
    /// More work is known: `bytes` of blobs to read.
    fn add_total(&self, bytes: u64);
    /// `bytes` of blobs were read.
    fn advance(&self, bytes: u64);
}

/// Cancels a running scan from another task.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        CancelToken::default()
    }
    /// Stops the scan at the next read; [`scan`] returns [`ScanError::Cancelled`].
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Has [`CancelToken::cancel`] been called?
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Registry credentials.
#[derive(Debug, Clone, Default)]
pub enum RegistryAuth {
    /// No credentials (anonymous token flow still works).
    #[default]
    Anonymous,
    /// HTTP basic credentials (also used for the registry's token flow).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: Secret,
    },
    /// A bearer token sent as is.
    Bearer(Secret),
}

/// How to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Bounds.
    pub limits: Limits,
    /// Platforms of an image index to scan.
    pub platform: PlatformChoice,
    /// Registry credentials.
    pub auth: RegistryAuth,
    /// Allow plain HTTP to a loopback registry (tests, local registries).
    pub insecure_loopback_registry: bool,
    /// Give up after this long ([`ScanError::Timeout`]).
    pub timeout: Option<Duration>,
    /// Cancel from elsewhere.
    pub cancel: CancelToken,
    /// Layers scanned at once (0: the number of CPUs, at most 4).
    pub parallelism: usize,
    /// Findings accepted on purpose.
    pub allowlist: Option<Arc<Allowlist>>,
    /// Progress sink.
    pub progress: Option<Arc<dyn Progress>>,
}

/// Why a scan could not run at all. Problems inside layers do not fail the scan: they make
/// the image's verdict `incomplete`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The source string or what it points at is not a usable image.
    #[error("{0}")]
    BadSource(String),
    /// A local file could not be read.
    #[error("{0}")]
    Io(String),
    /// The registry refused or failed.
    #[error("registry: {0}")]
    Registry(String),
    /// The scan took longer than the timeout.
    #[error("scan timed out after {0:?}")]
    Timeout(Duration),
    /// The scan was cancelled.
    #[error("scan cancelled")]
    Cancelled,
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Scans every image the source selects. Async; honours `opts.timeout` and `opts.cancel`;
/// memory stays bounded (layers are streamed, never held).
pub async fn scan(source: &Source, opts: &ScanOptions) -> Result<Report, ScanError> {
    let internal = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(internal.clone());
    let fut = scan_inner(source, opts, internal.clone());
    let result = match opts.timeout {
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => {
                internal.store(true, Ordering::Relaxed);
                return Err(ScanError::Timeout(t));
            }
        },
        None => fut.await,
    };
    if opts.cancel.is_cancelled() {
        return Err(ScanError::Cancelled);
    }
    result
}

/// Stops blocking layer readers when the scan future is dropped or times out.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An image ready to scan.
#[derive(Debug)]
struct PlannedImage {
    digest: String,
    digest_kind: &'static str,
    config_digest: String,
    config: ImageConfig,
    platform: Option<String>,
    names: Vec<String>,
    layers: Vec<(String, LayerInfo, u64)>,
}

#[derive(Clone)]
enum Blobs {
    Local(Store),
    Registry {
        client: Arc<oci_client::Client>,
        reference: oci_client::Reference,
    },
}

async fn scan_inner(
    source: &Source,
    opts: &ScanOptions,
    internal: Arc<AtomicBool>,
) -> Result<Report, ScanError> {
    let rules = RuleSet::builtin();
    let (blobs, images) = match source {
        Source::Registry(r) => registry::plan(r, opts).await?,
        local => {
            let local = local.clone();
            let platform = opts.platform.clone();
            tokio::task::spawn_blocking(move || plan_local(&local, &platform))
                .await
                .map_err(|e| ScanError::Internal(e.to_string()))??
        }
    };
    let mut reports = Vec::new();
    for img in images {
        if opts.cancel.is_cancelled() {
            return Err(ScanError::Cancelled);
        }
        reports.push(scan_image(img, &blobs, opts, rules, &internal).await?);
    }
    Ok(Report {
        schema_version: report::SCHEMA_VERSION,
        scanner_version: env!("CARGO_PKG_VERSION").to_owned(),
        ruleset_version: rules.version.clone(),
        source: source.display(),
        verdict: Report::combine(&reports),
        images: reports,
    })
}

fn plan_local(
    source: &Source,
    platform: &PlatformChoice,
) -> Result<(Blobs, Vec<PlannedImage>), ScanError> {
    match source {
        Source::DockerArchive(path) => {
            let store = Store::Tar(Arc::new(source::TarIndex::build(path)?));
            let images = plan_docker_archive(&store)?;
            Ok((Blobs::Local(store), images))
        }
        Source::OciDir { path, tag } => {
            if !path.is_dir() {
                return Err(ScanError::BadSource(format!(
                    "{} is not a directory",
                    path.display()
                )));
            }
            let store = Store::Dir(path.clone());
            let images = plan_oci(&store, tag.as_deref(), platform)?;
            Ok((Blobs::Local(store), images))
        }
        Source::OciArchive { path, tag } => {
            let store = Store::Tar(Arc::new(source::TarIndex::build(path)?));
            let images = plan_oci(&store, tag.as_deref(), platform)?;
            Ok((Blobs::Local(store), images))
        }
        Source::Registry(_) => Err(ScanError::Internal("registry is not a local source".into())),
    }
}

fn plan_docker_archive(store: &Store) -> Result<Vec<PlannedImage>, ScanError> {
    let manifest = store.read_small("manifest.json")?;
    let entries = source::parse_docker_manifest(&manifest)
        .map_err(|e| ScanError::BadSource(format!("docker-archive: {e}")))?;
    if entries.is_empty() {
        return Err(ScanError::BadSource(
            "docker-archive: manifest.json lists no image".into(),
        ));
    }
    let mut out = Vec::new();
    for e in entries {
        let config_bytes = store.read_small(&e.config)?;
        let config_digest = source::sha256_digest(&config_bytes);
        let config = source::parse_config(&config_bytes)
            .map_err(|m| ScanError::BadSource(format!("docker-archive {}: {m}", e.config)))?;
        if config.diff_ids.len() != e.layers.len() {
            return Err(ScanError::BadSource(format!(
                "docker-archive: {} layers but the config lists {} diff_ids",
                e.layers.len(),
                config.diff_ids.len()
            )));
        }
        let steps = source::layer_history_steps(&config.history, e.layers.len());
        let layers = e
            .layers
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let diff_id = config.diff_ids[i].clone();
                let size = store.size(name);
                (
                    name.clone(),
                    LayerInfo {
                        index: i,
                        digest: diff_id.clone(),
                        history_step: steps[i],
                        verify_raw: None,
                        verify_decoded: source::valid_digest(&diff_id).then_some(diff_id),
                    },
                    size,
                )
            })
            .collect();
        out.push(PlannedImage {
            digest: config_digest.clone(),
            digest_kind: "config",
            config_digest,
            platform: config.platform.clone(),
            config,
            names: e.repo_tags.unwrap_or_default(),
            layers,
        });
    }
    Ok(out)
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

fn plan_oci(
    store: &Store,
    tag: Option<&str>,
    platform: &PlatformChoice,
) -> Result<Vec<PlannedImage>, ScanError> {
    if !store.exists("oci-layout") {
        return Err(ScanError::BadSource(
            "not an OCI image layout: no `oci-layout` file".into(),
        ));
    }
    let index_bytes = store.read_small("index.json")?;
    let Manifest::Index { manifests } = source::parse_manifest(&index_bytes)
        .map_err(|e| ScanError::BadSource(format!("index.json: {e}")))?
    else {
        return Err(ScanError::BadSource(
            "index.json is not an image index".into(),
        ));
    };
    let mut top: Vec<source::Descriptor> = manifests;
    if let Some(tag) = tag {
        let names: Vec<String> = top
            .iter()
            .filter_map(|d| d.annotations.get(REF_NAME).cloned())
            .collect();
        top.retain(|d| {
            d.annotations
                .get(REF_NAME)
                .is_some_and(|n| n == tag || n.rsplit_once(':').is_some_and(|(_, t)| t == tag))
        });
        if top.is_empty() {
            return Err(ScanError::BadSource(format!(
                "no image named `{tag}` in the layout; names: {}",
                if names.is_empty() {
                    "(none)".to_owned()
                } else {
                    names.join(", ")
                }
            )));
        }
    }
    let chosen: Vec<source::Descriptor> = if top.iter().any(|d| d.platform.is_some()) {
        source::select_platforms(&top, platform)
            .map_err(ScanError::BadSource)?
            .into_iter()
            .cloned()
            .collect()
    } else {
        top
    };
    let fetch = |digest: &str| -> Result<Vec<u8>, ScanError> {
        let bytes = store.read_small(&Store::blob_path(digest)?)?;
        if source::sha256_digest(&bytes) != digest && digest.starts_with("sha256:") {
            return Err(ScanError::BadSource(format!(
                "blob {digest} does not match its digest"
            )));
        }
        Ok(bytes)
    };
    let mut out = Vec::new();
    for d in chosen {
        let names: Vec<String> = d.annotations.get(REF_NAME).cloned().into_iter().collect();
        resolve_oci(
            &fetch,
            &d,
            platform,
            0,
            &mut |digest, platform, m, config_bytes| {
                let layers = m
                    .iter()
                    .enumerate()
                    .map(|(i, l)| Ok((Store::blob_path(&l.digest)?, i, l.digest.clone(), l.size)))
                    .collect::<Result<Vec<_>, ScanError>>()?;
                out.push(planned(
                    digest,
                    platform,
                    names.clone(),
                    layers,
                    config_bytes,
                )?);
                Ok(())
            },
        )?;
    }
    Ok(out)
}

type Found<'a> =
    dyn FnMut(String, Option<String>, &[source::Descriptor], Vec<u8>) -> Result<(), ScanError> + 'a;

/// Follows a descriptor (index → image manifests) and reports each image.
fn resolve_oci(
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, ScanError>,
    d: &source::Descriptor,
    platform: &PlatformChoice,
    depth: u32,
    found: &mut Found<'_>,
) -> Result<(), ScanError> {
    if depth > 2 {
        return Err(ScanError::BadSource(
            "image indexes nested more than 2 deep".into(),
        ));
    }
    let bytes = fetch(&d.digest)?;
    match source::parse_manifest(&bytes)
        .map_err(|e| ScanError::BadSource(format!("{}: {e}", d.digest)))?
    {
        Manifest::Index { manifests } => {
            for child in
                source::select_platforms(&manifests, platform).map_err(ScanError::BadSource)?
            {
                resolve_oci(fetch, child, platform, depth + 1, found)?;
            }
            Ok(())
        }
        Manifest::Image { config, layers } => {
            let config_bytes = fetch(&config.digest)?;
            found(
                d.digest.clone(),
                d.platform.as_ref().map(source::Platform::name),
                &layers,
                config_bytes,
            )
        }
    }
}

fn planned(
    digest: String,
    platform: Option<String>,
    names: Vec<String>,
    layers: Vec<(String, usize, String, u64)>,
    config_bytes: Vec<u8>,
) -> Result<PlannedImage, ScanError> {
    let config_digest = source::sha256_digest(&config_bytes);
    let config = source::parse_config(&config_bytes)
        .map_err(|e| ScanError::BadSource(format!("image {digest}: {e}")))?;
    let steps = source::layer_history_steps(&config.history, layers.len());
    Ok(PlannedImage {
        platform: platform.or_else(|| config.platform.clone()),
        digest,
        digest_kind: "manifest",
        config_digest,
        names,
        layers: layers
            .into_iter()
            .map(|(name, i, digest, size)| {
                (
                    name,
                    LayerInfo {
                        index: i,
                        digest: digest.clone(),
                        history_step: steps[i],
                        verify_raw: Some(digest),
                        verify_decoded: None,
                    },
                    size,
                )
            })
            .collect(),
        config,
    })
}

async fn scan_image(
    img: PlannedImage,
    blobs: &Blobs,
    opts: &ScanOptions,
    rules: &'static RuleSet,
    internal: &Arc<AtomicBool>,
) -> Result<ImageReport, ScanError> {
    let budget = Arc::new(Budget::new(
        opts.limits,
        internal.clone(),
        opts.cancel.0.clone(),
        opts.progress.clone(),
    ));
    if let Some(p) = &opts.progress {
        p.add_total(img.layers.iter().map(|l| l.2).sum());
    }
    let steps: Vec<Option<usize>> = img.layers.iter().map(|l| l.1.history_step).collect();
    let mut findings = scan_config(&img.config, rules, &steps);
    let parallel = if opts.parallelism == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .min(4)
    } else {
        opts.parallelism
    };
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (name, info, _) in img.layers.iter().cloned() {
        let permit = sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ScanError::Internal(e.to_string()))?;
        let budget = budget.clone();
        match blobs {
            Blobs::Local(store) => {
                let store = store.clone();
                set.spawn_blocking(move || {
                    let _permit = permit;
                    match store.open(&name) {
                        Ok((r, _)) => layer::scan_layer(r, &info, rules, &budget),
                        Err(e) => failed_layer(&info, &e.to_string()),
                    }
                });
            }
            Blobs::Registry { client, reference } => {
                match client
                    .pull_blob_stream(reference, info.digest.as_str())
                    .await
                {
                    Ok(stream) => {
                        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(8);
                        let pump = tokio::spawn(async move {
                            use futures_util::StreamExt as _;
                            let mut stream = stream;
                            while let Some(item) = stream.next().await {
                                let item =
                                    item.map_err(|e| io::Error::other(format!("registry: {e}")));
                                if tx.send(item).await.is_err() {
                                    break;
                                }
                            }
                        });
                        set.spawn_blocking(move || {
                            let _permit = permit;
                            let r = ChannelReader {
                                rx,
                                current: bytes::Bytes::new(),
                            };
                            let result = layer::scan_layer(r, &info, rules, &budget);
                            pump.abort();
                            result
                        });
                    }
                    Err(e) => {
                        drop(permit);
                        let info2 = info.clone();
                        set.spawn_blocking(move || {
                            failed_layer(&info2, &format!("cannot fetch the blob: {e}"))
                        });
                    }
                }
            }
        }
    }
    let mut results: Vec<LayerResult> = Vec::new();
    while let Some(joined) = set.join_next().await {
        results.push(joined.map_err(|e| ScanError::Internal(format!("layer task failed: {e}")))?);
    }
    if opts.cancel.is_cancelled() {
        return Err(ScanError::Cancelled);
    }
    let mut whiteouts = Vec::new();
    let mut incomplete = Vec::new();
    let mut warnings = Vec::new();
    let mut file_findings = Vec::new();
    for r in results {
        whiteouts.extend(r.whiteouts);
        incomplete.extend(r.incomplete);
        warnings.extend(r.warnings);
        file_findings.extend(r.findings);
    }
    incomplete.sort();
    warnings.sort();
    for f in &mut file_findings {
        if let Location::File {
            layer_index,
            path,
            deleted_later,
            ..
        } = &mut f.location
        {
            *deleted_later = layer::deleted_later(*layer_index, path, &whiteouts);
        }
    }
    findings.extend(file_findings);
    if let Some(a) = &opts.allowlist {
        a.apply(&mut findings);
    }
    report::sort_findings(&mut findings);
    let verdict = report::verdict(&findings, incomplete.is_empty());
    let stats = Stats {
        layers: img.layers.len(),
        entries: budget.entries.load(Ordering::Relaxed),
        files_scanned: budget.files.load(Ordering::Relaxed),
        compressed_bytes: budget.compressed.load(Ordering::Relaxed),
        decompressed_bytes: budget.decompressed.load(Ordering::Relaxed),
    };
    Ok(ImageReport {
        digest: img.digest,
        digest_kind: img.digest_kind.to_owned(),
        config_digest: img.config_digest,
        platform: img.platform,
        names: img.names,
        verdict,
        incomplete,
        warnings,
        findings,
        stats,
    })
}

fn failed_layer(info: &LayerInfo, why: &str) -> LayerResult {
    LayerResult {
        incomplete: vec![format!("layer {} ({}): {why}", info.index, info.digest)],
        ..LayerResult::default()
    }
}

/// A blocking reader over chunks sent by an async task.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
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

/// Finds secrets in the config: `Env`, labels and history. Pure.
pub fn scan_config(
    cfg: &ImageConfig,
    rules: &RuleSet,
    layer_steps: &[Option<usize>],
) -> Vec<Finding> {
    let mut out = Vec::new();
    for e in &cfg.env {
        let (name, value) = e.split_once('=').unwrap_or((e.as_str(), ""));
        let loc = Location::Env {
            name: name.to_owned(),
        };
        scan_assignment(rules, name, value, &loc, &mut out, &mut Vec::new());
    }
    for (name, value) in &cfg.labels {
        let loc = Location::Label { name: name.clone() };
        scan_assignment(rules, name, value, &loc, &mut out, &mut Vec::new());
    }
    for (step, h) in cfg.history.iter().enumerate() {
        let Some(cmd) = &h.created_by else { continue };
        let layer_index = if h.empty_layer {
            None
        } else {
            layer_steps.iter().position(|s| *s == Some(step))
        };
        let mut seen: Vec<(usize, Vec<u8>)> = Vec::new();
        for (name, value) in history_assignments(cmd) {
            let loc = Location::History {
                step,
                layer_index,
                name: Some(name.to_owned()),
            };
            scan_assignment(rules, name, value, &loc, &mut out, &mut seen);
        }
        let loc = Location::History {
            step,
            layer_index,
            name: None,
        };
        for m in rules.scan(cmd.as_bytes(), false) {
            let value = &cmd.as_bytes()[m.start..m.end];
            // Skip what an assignment of this step already reported (under any rule).
            if seen.iter().any(|(_, v)| v == value) {
                continue;
            }
            seen.push((m.rule, value.to_vec()));
            let def = &rules.rules[m.rule].def;
            out.push(make_finding(
                def.id,
                def.description,
                def.severity,
                def.confidence,
                def.class,
                value,
                loc.clone(),
            ));
        }
    }
    out
}

/// `name=value` pairs a history entry records: build arguments (`|2 A=1 B=2 /bin/sh -c ...`)
/// and `#(nop) ENV` / `#(nop) LABEL` / `ARG` values. Pure.
pub fn history_assignments(cmd: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = cmd.trim_start();
    if let Some(after) = rest.strip_prefix('|') {
        let (n, tail) = after.split_once(' ').unwrap_or((after, ""));
        if let Ok(n) = n.parse::<usize>() {
            let mut tail = tail;
            for _ in 0..n.min(256) {
                let t = tail.trim_start();
                let (tok, next) = t.split_once(' ').unwrap_or((t, ""));
                if let Some((k, v)) = tok.split_once('=') {
                    out.push((k, v));
                }
                tail = next;
            }
            rest = tail;
        }
    }
    for marker in ["#(nop) ENV ", "#(nop) LABEL ", "#(nop) ARG "] {
        if let Some(pos) = rest.find(marker) {
            let body = &rest[pos + marker.len()..];
            let tokens: Vec<&str> = body.split_whitespace().collect();
            if tokens.first().is_some_and(|t| !t.contains('=')) && marker == "#(nop) ENV " {
                // Legacy `ENV KEY value with spaces`.
                let key = tokens[0];
                let value = body.trim_start()[key.len()..].trim();
                out.push((key, value));
            } else {
                for t in tokens {
                    if let Some((k, v)) = t.split_once('=') {
                        out.push((k.trim_matches('"'), v.trim_matches('"').trim_matches('\'')));
                    }
                }
            }
        }
    }
    out
}

/// Scans one `name=value` assignment: provider rules on `name=value`, then the secret-name
/// rule if the name says secret and no specific rule matched the value.
fn scan_assignment(
    rules: &RuleSet,
    name: &str,
    value: &str,
    loc: &Location,
    out: &mut Vec<Finding>,
    seen: &mut Vec<(usize, Vec<u8>)>,
) {
    let text = format!("{name}={value}");
    let value_start = name.len() + 1;
    let secret_name = rules::secret_assignment(name, value);
    let mut covered = false;
    for m in rules.scan(text.as_bytes(), false) {
        let def = &rules.rules[m.rule].def;
        if secret_name && def.priority == 0 {
            continue;
        }
        if m.end > value_start {
            covered = true;
        }
        let v = &text.as_bytes()[m.start..m.end];
        if seen.iter().any(|(r, s)| *r == m.rule && s == v) {
            continue;
        }
        seen.push((m.rule, v.to_vec()));
        out.push(make_finding(
            def.id,
            def.description,
            def.severity,
            def.confidence,
            def.class,
            v,
            loc.clone(),
        ));
    }
    if secret_name && !covered {
        let v = value.trim().as_bytes();
        let idx = usize::MAX;
        if !seen.iter().any(|(r, s)| *r == idx && s == v) {
            seen.push((idx, v.to_vec()));
            out.push(make_finding(
                rules::SECRET_ENV_NAME,
                "variable whose name says it holds a secret, with a real value",
                Severity::High,
                Confidence::Medium,
                SecretClass::PasswordLike,
                v,
                loc.clone(),
            ));
        }
    }
}

fn make_finding(
    rule: &str,
    description: &str,
    severity: Severity,
    confidence: Confidence,
    class: SecretClass,
    value: &[u8],
    location: Location,
) -> Finding {
    let (fp, kind) = fingerprint(rule, class, value, &location_key(&location));
    Finding {
        rule: rule.to_owned(),
        description: description.to_owned(),
        severity,
        confidence,
        preview: preview(value, class),
        fingerprint: fp,
        fingerprint_kind: kind,
        location,
        test_material: false,
        package_code: false,
        allowed: None,
    }
}

/// Every rule id with its description and severity (for SARIF and docs).
pub fn rule_catalog() -> Vec<(String, String, Severity)> {
    let set = RuleSet::builtin();
    let mut v: Vec<(String, String, Severity)> = set
        .rules
        .iter()
        .map(|r| {
            (
                r.def.id.to_owned(),
                r.def.description.to_owned(),
                r.def.severity,
            )
        })
        .collect();
    v.extend(set.file_kinds.iter().map(|k| {
        (
            k.def.id.to_owned(),
            k.def.description.to_owned(),
            Severity::High,
        )
    }));
    v.push((
        rules::SECRET_ENV_NAME.to_owned(),
        "variable whose name says it holds a secret, with a real value".to_owned(),
        Severity::High,
    ));
    v
}

mod registry {
    //! Registry access through `oci-client`.

    use super::*;

    const ACCEPT: &[&str] = &[
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ];

    fn is_loopback(host: &str) -> bool {
        let h = host
            .rsplit_once(':')
            .map(|(h, p)| {
                if p.chars().all(|c| c.is_ascii_digit()) {
                    h
                } else {
                    host
                }
            })
            .unwrap_or(host);
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    fn auth(a: &RegistryAuth) -> oci_client::secrets::RegistryAuth {
        match a {
            RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryAuth::Basic { username, password } => oci_client::secrets::RegistryAuth::Basic(
                username.clone(),
                password.expose().to_owned(),
            ),
            RegistryAuth::Bearer(t) => {
                oci_client::secrets::RegistryAuth::Bearer(t.expose().to_owned())
            }
        }
    }

    /// oci-client errors can echo request details; keep the message short and credential-free.
    fn reg_err(what: &str, e: impl fmt::Display) -> ScanError {
        let msg = e.to_string();
        let msg: String = msg.chars().take(300).collect();
        ScanError::Registry(format!("{what}: {msg}"))
    }

    pub(super) async fn plan(
        r: &str,
        opts: &ScanOptions,
    ) -> Result<(Blobs, Vec<PlannedImage>), ScanError> {
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
        let (bytes, _) = client
            .pull_manifest_raw(&reference, &a, ACCEPT)
            .await
            .map_err(|e| reg_err(&format!("fetching the manifest of {r}"), e))?;
        let top_digest = source::sha256_digest(&bytes);
        if let Some(d) = reference.digest()
            && d != top_digest
        {
            return Err(ScanError::Registry(format!(
                "the manifest of {r} has digest {top_digest}, not {d}"
            )));
        }
        let names = reference
            .tag()
            .map(|t| vec![format!("{}:{t}", reference.repository())])
            .unwrap_or_default();
        let mut images = Vec::new();
        match source::parse_manifest(&bytes)
            .map_err(|e| ScanError::BadSource(format!("registry://{r}: {e}")))?
        {
            Manifest::Image { config, layers } => {
                images.push(
                    image(
                        &client, &reference, &a, top_digest, None, names, &config, &layers,
                    )
                    .await?,
                );
            }
            Manifest::Index { manifests } => {
                for child in source::select_platforms(&manifests, &opts.platform)
                    .map_err(ScanError::BadSource)?
                {
                    let child_ref = reference.clone_with_digest(child.digest.clone());
                    let (cb, _) = client
                        .pull_manifest_raw(&child_ref, &a, ACCEPT)
                        .await
                        .map_err(|e| reg_err(&format!("fetching manifest {}", child.digest), e))?;
                    if source::sha256_digest(&cb) != child.digest {
                        return Err(ScanError::Registry(format!(
                            "manifest {} does not match its digest",
                            child.digest
                        )));
                    }
                    match source::parse_manifest(&cb)
                        .map_err(|e| ScanError::BadSource(format!("{}: {e}", child.digest)))?
                    {
                        Manifest::Image { config, layers } => images.push(
                            image(
                                &client,
                                &reference,
                                &a,
                                child.digest.clone(),
                                child.platform.as_ref().map(source::Platform::name),
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
        Ok((Blobs::Registry { client, reference }, images))
    }

    #[allow(clippy::too_many_arguments)]
    async fn image(
        client: &oci_client::Client,
        reference: &oci_client::Reference,
        _auth: &oci_client::secrets::RegistryAuth,
        digest: String,
        platform: Option<String>,
        names: Vec<String>,
        config: &source::Descriptor,
        layers: &[source::Descriptor],
    ) -> Result<PlannedImage, ScanError> {
        if config.size > source::MAX_METADATA_BYTES {
            return Err(ScanError::BadSource(format!(
                "config {} is {} bytes; refused",
                config.digest, config.size
            )));
        }
        let mut buf = Bounded(Vec::new());
        client
            .pull_blob(reference, config.digest.as_str(), &mut buf)
            .await
            .map_err(|e| reg_err(&format!("fetching config {}", config.digest), e))?;
        if source::sha256_digest(&buf.0) != config.digest {
            return Err(ScanError::Registry(format!(
                "config {} does not match its digest",
                config.digest
            )));
        }
        let layers = layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.digest.clone(), i, l.digest.clone(), l.size))
            .collect();
        planned(digest, platform, names, layers, buf.0)
    }

    /// An in-memory sink refusing more than the metadata bound.
    struct Bounded(Vec<u8>);

    impl tokio::io::AsyncWrite for Bounded {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            if (self.0.len() + buf.len()) as u64 > source::MAX_METADATA_BYTES {
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
        use super::is_loopback;

        #[test]
        fn loopback_hosts() {
            assert!(is_loopback("127.0.0.1:5000"));
            assert!(is_loopback("localhost:5000"));
            assert!(is_loopback("[::1]:5000"));
            assert!(!is_loopback("registry.example.org"));
            assert!(!is_loopback("10.0.0.1:5000"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rules::tests::{ALNUM, B64, UPPER32, fake};
    use super::*;

    fn ids(f: &[Finding]) -> Vec<(String, String)> {
        f.iter()
            .map(|f| {
                let loc = match &f.location {
                    Location::Env { name } => format!("env:{name}"),
                    Location::Label { name } => format!("label:{name}"),
                    Location::History { step, name, .. } => {
                        format!("history:{step}:{}", name.clone().unwrap_or_default())
                    }
                    Location::File { path, .. } => format!("file:{path}"),
                };
                (f.rule.clone(), loc)
            })
            .collect()
    }

    #[test]
    fn history_assignment_forms() {
        assert_eq!(
            history_assignments("|2 NPM_TOKEN=abc GIT_REF=main /bin/sh -c npm ci"),
            vec![("NPM_TOKEN", "abc"), ("GIT_REF", "main")]
        );
        assert_eq!(
            history_assignments("/bin/sh -c #(nop) ENV A=1 B=two"),
            vec![("A", "1"), ("B", "two")]
        );
        assert_eq!(
            history_assignments("/bin/sh -c #(nop) ENV TOKEN some value"),
            vec![("TOKEN", "some value")]
        );
        assert_eq!(
            history_assignments("/bin/sh -c #(nop) LABEL k=\"v\""),
            vec![("k", "v")]
        );
        assert!(history_assignments("/bin/sh -c echo hi").is_empty());
        assert!(history_assignments("|x").is_empty());
    }

    #[test]
    fn config_env_labels_and_history() {
        let akia = format!("AKIA{}", fake(UPPER32, 16, 90));
        let sk = fake(B64, 40, 91);
        let npm = format!("npm_{}", fake(ALNUM, 36, 92));
        let cfg = ImageConfig {
            env: vec![
                "PATH=/usr/bin".into(),
                format!("AWS_ACCESS_KEY_ID={akia}"),
                format!("AWS_SECRET_ACCESS_KEY={sk}"),
                "DB_PASSWORD=hunter22".into(),
                "DB_PASSWORD_FILE=/run/secrets/db".into(),
                "API_TOKEN=${API_TOKEN}".into(),
            ],
            labels: [("maintainer".to_owned(), "a@b.c".to_owned())].into(),
            history: vec![
                source::HistoryEntry {
                    created_by: Some("/bin/sh -c #(nop) ADD file:abc in /".into()),
                    empty_layer: false,
                },
                source::HistoryEntry {
                    created_by: Some("/bin/sh -c #(nop) ENV DB_PASSWORD=hunter22".into()),
                    empty_layer: true,
                },
                source::HistoryEntry {
                    created_by: Some(format!(
                        "|1 NPM_TOKEN={npm} /bin/sh -c echo \"//r/:_authToken=$NPM_TOKEN\" > .npmrc && npm ci"
                    )),
                    empty_layer: false,
                },
            ],
            diff_ids: vec![],
            platform: None,
        };
        let f = scan_config(&cfg, RuleSet::builtin(), &[Some(0), Some(2)]);
        assert_eq!(
            ids(&f),
            vec![
                ("aws-access-key-id".into(), "env:AWS_ACCESS_KEY_ID".into()),
                (
                    "aws-secret-access-key".into(),
                    "env:AWS_SECRET_ACCESS_KEY".into()
                ),
                ("secret-env-name".into(), "env:DB_PASSWORD".into()),
                ("secret-env-name".into(), "history:1:DB_PASSWORD".into()),
                ("npm-token".into(), "history:2:NPM_TOKEN".into()),
            ]
        );
        match &f[4].location {
            Location::History { layer_index, .. } => assert_eq!(*layer_index, Some(1)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_sources_are_errors_not_clean() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.tar");
        let e = scan(&Source::DockerArchive(missing), &ScanOptions::default())
            .await
            .expect_err("missing");
        assert!(matches!(e, ScanError::Io(_)), "{e}");
        let e = scan(
            &Source::OciDir {
                path: dir.path().to_owned(),
                tag: None,
            },
            &ScanOptions::default(),
        )
        .await
        .expect_err("not a layout");
        assert!(e.to_string().contains("oci-layout"), "{e}");
    }
}
