//! The image gate: no credentials for a workload whose images are not proven clean.
//!
//! `docs/GATE.md` is the user's guide. Here:
//!
//! # Layout
//! - [`image`]: image references (`repo@sha256:…`, tags for operator tools, bare digests),
//!   parsed and bounded.
//! - [`decide`]: the pure decision — a workload's images and what is known about them, the
//!   settings that apply → allow, deny or (audit mode) would deny, with a reason.
//! - this module: [`Gate`], the service around it — verdict lookups in the store (keyed by
//!   digest and ruleset version; the allowlist applied on read, so an allowlist change needs
//!   no re-scan), scans (one per digest at a time, shared by every request that waits for it;
//!   at most `gate.max_concurrent_scans` at once; a scan outlives the request that started
//!   it and stores its verdict), background re-scans after a ruleset change (the previous
//!   ruleset's verdicts serve until then), registry credentials per host read from files,
//!   and exemptions.
//!
//! Which images a workload runs comes from a trusted source only ([`decide::TrustSource`]):
//! today the image an admin bound into a bootstrap token; admission records (the validating
//! webhook) and pod lookups come next and feed the same decision.

pub mod admission;
pub mod decide;
pub mod image;
pub mod pin;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use lanyard::clock::Clock;
use lanyard_scan::{Allowlist, PlatformChoice, RegistryAuth, ScanOptions, Source, Verdict};
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

pub use decide::{Decision, ImageState, Lookup, Outcome, Reason, Settings, TrustSource, Workload};
pub use image::ImageRef;

use crate::authn::Identity;
use crate::config::{GateConfig, Unscanned};
use crate::metrics::Metrics;
use crate::secret_file::read_secret_file;
use crate::store::{FindingSummary, Store, StoreError, VerdictRecord};

/// The repositories of the images a workload runs, from a trusted source (for the policy
/// selector `image_repository`). Empty when the identity names none.
pub fn image_repositories(identity: &Identity) -> Vec<String> {
    identity
        .bootstrap
        .as_ref()
        .and_then(|b| b.image.as_deref())
        .and_then(|i| image::parse(i).ok())
        .and_then(|r| r.repository)
        .into_iter()
        .collect()
}

/// Which images `identity`'s workload runs, from a trusted source, before verdicts are
/// looked up: the bootstrap token's binding. Pod tokens name a workload, but until admission
/// records exist (the validating webhook) no trusted source lists their images: they are
/// treated as naming none, so only rules with `require_image: true` gate them.
pub fn workload_images(identity: &Identity) -> Option<(TrustSource, Vec<ImageRef>)> {
    let bound = identity.bootstrap.as_ref()?.image.as_deref()?;
    // Bindings were checked at mint time; an unparsable one (minted before the gate, as a bare
    // digest of another form) still names an image: it is looked up by nothing and refused.
    let parsed = image::parse_pinned(bound).unwrap_or(ImageRef {
        repository: None,
        tag: None,
        digest: Some(bound.to_owned()),
    });
    Some((TrustSource::BootstrapBinding, vec![parsed]))
}

/// The verdict with the allowlist applied: findings it allows are dropped, and the verdict is
/// decided again from what remains. Pure.
pub fn effective(
    rec: &VerdictRecord,
    allowlist: Option<&Allowlist>,
) -> (Verdict, Vec<FindingSummary>) {
    let counted: Vec<FindingSummary> = rec
        .findings
        .iter()
        .filter(|f| {
            allowlist.is_none_or(|a| {
                let path = (f.location_kind == "file")
                    .then_some(f.name.as_deref())
                    .flatten();
                a.reason_for_summary(&f.rule, &f.fingerprint, path)
                    .is_none()
            })
        })
        .cloned()
        .collect();
    let verdict = if !counted.is_empty() {
        Verdict::Dirty
    } else if !rec.incomplete.is_empty() || rec.verdict == Verdict::Incomplete {
        Verdict::Incomplete
    } else {
        Verdict::Clean
    };
    (verdict, counted)
}

/// The verdict record of a scan report: the platforms that count (all, or
/// `gate.platforms`), their worst verdict, their counted findings summarised. Pure.
pub fn record_from_report(
    report: &lanyard_scan::Report,
    digest: &str,
    repository: Option<String>,
    platforms: &[String],
    scanned_at: std::time::SystemTime,
) -> VerdictRecord {
    let is_index = report.images.len() > 1 || report.images.iter().any(|i| i.digest != digest);
    let selected: Vec<&lanyard_scan::ImageReport> = report
        .images
        .iter()
        .filter(|i| {
            platforms.is_empty()
                || i.platform.as_deref().is_some_and(|p| {
                    platforms
                        .iter()
                        .any(|want| p == want || p.starts_with(&format!("{want}/")))
                })
        })
        .collect();
    let mut findings = Vec::new();
    let mut incomplete = Vec::new();
    for img in &selected {
        let platform = if is_index { img.platform.clone() } else { None };
        for f in img
            .findings
            .iter()
            .filter(|f| f.severity != lanyard_scan::rules::Severity::Info)
        {
            let (layer, name) = match &f.location {
                lanyard_scan::Location::Env { name } | lanyard_scan::Location::Label { name } => {
                    (None, Some(name.clone()))
                }
                lanyard_scan::Location::History {
                    layer_index, name, ..
                } => (*layer_index, name.clone()),
                lanyard_scan::Location::File {
                    layer_index, path, ..
                } => (Some(*layer_index), Some(path.clone())),
            };
            findings.push(FindingSummary {
                rule: f.rule.clone(),
                location_kind: f.location.kind().to_owned(),
                layer,
                name,
                fingerprint: f.fingerprint.clone(),
                platform: platform.clone(),
            });
        }
        for why in &img.incomplete {
            incomplete.push(match &platform {
                Some(p) => format!("{p}: {why}"),
                None => why.clone(),
            });
        }
    }
    if selected.is_empty() {
        incomplete.push(format!(
            "the image has none of the platforms in gate.platforms ({})",
            platforms.join(", ")
        ));
    }
    let verdict = if !findings.is_empty() {
        Verdict::Dirty
    } else if !incomplete.is_empty() {
        Verdict::Incomplete
    } else {
        Verdict::Clean
    };
    VerdictRecord {
        digest: digest.to_owned(),
        ruleset_version: report.ruleset_version.clone(),
        repository,
        verdict,
        findings,
        incomplete,
        platforms: if is_index {
            selected.iter().filter_map(|i| i.platform.clone()).collect()
        } else {
            Vec::new()
        },
        scanned_at,
    }
}

/// What a scan ends in: the stored verdict, or why it could not run.
pub type ScanResult = Result<Arc<VerdictRecord>, String>;

/// Why the gate could not do what an operator asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// The image reference is not usable.
    #[error("{0}")]
    BadImage(String),
    /// The registry could not be asked (resolving a tag).
    #[error("{0}")]
    Registry(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The loaded allowlist and the bytes it was parsed from (to tell a change).
#[derive(Debug, Default)]
struct AllowState {
    list: Option<Arc<Allowlist>>,
    digest: Option<String>,
}

/// The gate service. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Gate {
    store: Arc<dyn Store>,
    config: GateConfig,
    ruleset_version: String,
    allowlist: ArcSwap<AllowState>,
    inflight: Mutex<HashMap<String, watch::Receiver<Option<ScanResult>>>>,
    /// When a background re-scan of a digest last failed: lookups do not start another one
    /// for [`RESCAN_RETRY_AFTER`] (a registry that is down is not asked on every issuance).
    rescan_failed: Mutex<HashMap<String, std::time::Instant>>,
    /// Tag resolutions for digest pinning: running (shared by every review that waits for
    /// it) or done within [`TAG_RESOLUTION_TTL`].
    tags: Mutex<HashMap<ImageRef, TagResolution>>,
    scans: Arc<Semaphore>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
}

/// Tags [`Gate::resolve_tags`] resolves at once (one admission review names at most
/// [`admission::MAX_IMAGES`]).
pub const RESOLVE_CONCURRENCY: usize = 8;

/// How long a tag's resolution serves later reviews: a Deployment scaled to 50 pods asks the
/// registry once, not 50 times (each a manifest GET, which registries such as Docker Hub
/// count as a pull). It changes which digest a tag is pinned to by at most this long, never
/// what is checked: the validating webhook checks the digest that was pinned.
pub const TAG_RESOLUTION_TTL: Duration = Duration::from_secs(5);

/// Most tag resolutions kept; past it, expired ones are dropped.
const MAX_TAG_RESOLUTIONS: usize = 4096;

/// A tag resolution: running (its result comes on the channel), or done.
#[derive(Debug)]
enum TagResolution {
    Running(watch::Receiver<Option<Result<String, String>>>),
    Done {
        digest: String,
        at: std::time::Instant,
    },
}

/// How long after a failed background re-scan of a digest lookups start no new one.
pub const RESCAN_RETRY_AFTER: Duration = Duration::from_secs(60);

impl Gate {
    /// A gate over `store` with the broker's `gate` configuration. Loads the allowlist (an
    /// unreadable one is an error: the broker does not start with an allowlist it cannot
    /// apply).
    pub fn new(
        store: Arc<dyn Store>,
        config: GateConfig,
        metrics: Metrics,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, String> {
        let gate = Arc::new(Self {
            store,
            scans: Arc::new(Semaphore::new(config.max_concurrent_scans.max(1))),
            config,
            ruleset_version: lanyard_scan::rules::RuleSet::builtin().version.clone(),
            allowlist: ArcSwap::from_pointee(AllowState::default()),
            inflight: Mutex::new(HashMap::new()),
            rescan_failed: Mutex::new(HashMap::new()),
            tags: Mutex::new(HashMap::new()),
            metrics,
            clock,
        });
        gate.reload_allowlist()?;
        Ok(gate)
    }

    /// The scanner's ruleset version: the second half of every verdict's key.
    pub fn ruleset_version(&self) -> &str {
        &self.ruleset_version
    }

    /// The configuration.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// Re-reads the allowlist file when its content changed. Returns whether it changed; an
    /// unreadable or invalid file is an error and the last good list stays.
    pub fn reload_allowlist(&self) -> Result<bool, String> {
        let Some(path) = &self.config.allowlist_file else {
            return Ok(false);
        };
        let text = read_bounded(path)?;
        let digest = lanyard_scan::util::sha256_digest(text.as_bytes());
        if self.allowlist.load().digest.as_deref() == Some(digest.as_str()) {
            return Ok(false);
        }
        let list = Allowlist::parse(&text, &path.display().to_string())?;
        self.allowlist.store(Arc::new(AllowState {
            list: Some(Arc::new(list)),
            digest: Some(digest),
        }));
        info!(file = %path.display(), "gate allowlist loaded; stored verdicts are re-evaluated on read");
        Ok(true)
    }

    fn lookup_from(&self, rec: &VerdictRecord, previous_ruleset: bool) -> Lookup {
        let allow = self.allowlist.load();
        let (verdict, findings) = effective(rec, allow.list.as_deref());
        Lookup::Verdict {
            verdict,
            findings,
            incomplete: rec.incomplete.clone(),
            previous_ruleset,
        }
    }

    /// What is known about `image`, scanning it when there is no verdict and
    /// `gate.unscanned` is `scan` (waiting at most `wait`; the scan goes on after that and
    /// stores its verdict). A verdict from an older ruleset serves while a background re-scan
    /// runs.
    pub async fn lookup(
        self: &Arc<Self>,
        image: &ImageRef,
        wait: Duration,
    ) -> Result<Lookup, StoreError> {
        let Some(digest) = image.digest.as_deref() else {
            return Ok(Lookup::Unscanned);
        };
        if let Some(rec) = self.store.verdict(digest, &self.ruleset_version).await? {
            self.metrics
                .gate_verdict_lookups
                .with_label_values(&["hit"])
                .inc();
            return Ok(self.lookup_from(&rec, false));
        }
        if let Some(rec) = self
            .store
            .previous_verdict(digest, &self.ruleset_version)
            .await?
        {
            self.metrics
                .gate_verdict_lookups
                .with_label_values(&["previous_ruleset"])
                .inc();
            let source = image
                .registry_source()
                .or_else(|| rec.repository.as_ref().map(|r| format!("{r}@{digest}")));
            let failed_recently = self
                .rescan_failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(digest)
                .is_some_and(|at| at.elapsed() < RESCAN_RETRY_AFTER);
            if let (Some(source), false) = (source, failed_recently) {
                // Not awaited: the previous verdict serves meanwhile.
                drop(self.scan(source, digest.to_owned(), "rescan"));
            }
            return Ok(self.lookup_from(&rec, true));
        }
        self.metrics
            .gate_verdict_lookups
            .with_label_values(&["miss"])
            .inc();
        let source = match (self.config.unscanned, image.registry_source()) {
            (Unscanned::Scan, Some(source)) => source,
            _ => return Ok(Lookup::Unscanned),
        };
        let rx = self.scan(source, digest.to_owned(), "demand");
        Ok(match wait_for(rx, wait).await {
            Some(Ok(rec)) => self.lookup_from(&rec, false),
            Some(Err(e)) => Lookup::ScanFailed(e),
            None => Lookup::Pending,
        })
    }

    /// The stored verdict for `digest` under the current ruleset (or the previous one), with
    /// the allowlist applied, for `image verdict`.
    pub async fn stored(
        &self,
        digest: &str,
    ) -> Result<Option<(VerdictRecord, Lookup)>, StoreError> {
        if let Some(rec) = self.store.verdict(digest, &self.ruleset_version).await? {
            let l = self.lookup_from(&rec, false);
            return Ok(Some((rec, l)));
        }
        Ok(self
            .store
            .previous_verdict(digest, &self.ruleset_version)
            .await?
            .map(|rec| {
                let l = self.lookup_from(&rec, true);
                (rec, l)
            }))
    }

    /// Resolves a tag to the digest its registry names now (one manifest fetch).
    pub async fn resolve(&self, image: &ImageRef, wait: Duration) -> Result<String, GateError> {
        if let Some(d) = &image.digest {
            return Ok(d.clone());
        }
        let source = image
            .registry_source()
            .ok_or_else(|| GateError::BadImage("no repository to resolve".into()))?;
        let opts = self
            .options(image.host().unwrap_or_default(), Some(wait))
            .await
            .map_err(GateError::Registry)?;
        lanyard_scan::resolve_digest(&source, &opts)
            .await
            .map_err(|e| GateError::Registry(e.to_string()))
    }

    /// Resolves each distinct tag reference of `refs` to the digest its registry names (a
    /// manifest fetch each, with the host's configured credentials, [`RESOLVE_CONCURRENCY`] at
    /// a time), all within `deadline`: a reference not answered by then is an `Err` that says
    /// so. One fetch per tag at a time, shared by every review that asks meanwhile, and its
    /// digest reused for [`TAG_RESOLUTION_TTL`] (failures are not kept). For the mutating
    /// admission webhook's digest pinning.
    pub async fn resolve_tags(
        self: &Arc<Self>,
        refs: &[&ImageRef],
        deadline: Duration,
    ) -> HashMap<ImageRef, Result<String, String>> {
        use futures_util::stream::{self, StreamExt as _};
        let until = tokio::time::Instant::now() + deadline;
        let mut distinct: Vec<ImageRef> = Vec::with_capacity(refs.len());
        for r in refs {
            if !distinct.contains(r) {
                distinct.push((*r).clone());
            }
        }
        stream::iter(distinct)
            .map(|r| self.resolve_until(r, until, deadline))
            .buffer_unordered(RESOLVE_CONCURRENCY)
            .collect()
            .await
    }

    async fn resolve_until(
        self: &Arc<Self>,
        r: ImageRef,
        until: tokio::time::Instant,
        deadline: Duration,
    ) -> (ImageRef, Result<String, String>) {
        let rx = {
            let mut tags = self
                .tags
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match tags.get(&r) {
                Some(TagResolution::Done { digest, at }) if at.elapsed() < TAG_RESOLUTION_TTL => {
                    return (r, Ok(digest.clone()));
                }
                Some(TagResolution::Running(rx)) => rx.clone(),
                _ => {
                    if tags.len() >= MAX_TAG_RESOLUTIONS {
                        tags.retain(|_, t| match t {
                            TagResolution::Running(_) => true,
                            TagResolution::Done { at, .. } => at.elapsed() < TAG_RESOLUTION_TTL,
                        });
                    }
                    let (tx, rx) = watch::channel(None);
                    tags.insert(r.clone(), TagResolution::Running(rx.clone()));
                    // Not tied to this review: the reviews that wait on it meanwhile get its
                    // answer even if this one stops waiting. Bounded by the registry client's
                    // timeout, a little past this review's deadline.
                    let gate = Arc::clone(self);
                    let key = r.clone();
                    let timeout = deadline + Duration::from_secs(1);
                    tokio::spawn(async move {
                        let answer = gate.resolve(&key, timeout).await.map_err(|e| e.to_string());
                        let mut tags = gate
                            .tags
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        match &answer {
                            Ok(digest) => {
                                tags.insert(
                                    key,
                                    TagResolution::Done {
                                        digest: digest.clone(),
                                        at: std::time::Instant::now(),
                                    },
                                );
                            }
                            Err(_) => {
                                tags.remove(&key);
                            }
                        }
                        drop(tags);
                        let _ = tx.send(Some(answer));
                    });
                    rx
                }
            }
        };
        let mut rx = rx;
        let answer = match tokio::time::timeout_at(until, rx.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.clone().unwrap_or_else(|| Err("no answer".into())),
            Ok(Err(_)) => Err("the resolution stopped without an answer".into()),
            Err(_) => Err(format!(
                "the registry did not answer within {} ms",
                deadline.as_millis()
            )),
        };
        (r, answer)
    }

    /// Scans `image` ahead (an operator or CI right after a push): a tag is resolved to its
    /// digest through the registry first. Returns the digest and, when the scan finished
    /// within `wait`, its result (an existing verdict under the current ruleset is returned
    /// without a new scan unless `force`).
    pub async fn scan_ahead(
        self: &Arc<Self>,
        image: &ImageRef,
        wait: Duration,
        force: bool,
    ) -> Result<(String, Option<ScanResult>), GateError> {
        let Some(repo) = &image.repository else {
            return Err(GateError::BadImage(
                "a bare digest names no repository to scan it from; give REPOSITORY@DIGEST".into(),
            ));
        };
        let digest = self.resolve(image, wait).await?;
        if !force && let Some(rec) = self.store.verdict(&digest, &self.ruleset_version).await? {
            return Ok((digest, Some(Ok(Arc::new(rec)))));
        }
        let rx = self.scan(format!("{repo}@{digest}"), digest.clone(), "admin");
        let result = wait_for(rx, wait).await;
        Ok((digest, result))
    }

    /// Starts a scan of `source` (`host/path@digest`) keyed by `digest`, or joins the one
    /// running for it. The scan runs in its own task, at most `gate.max_concurrent_scans` at
    /// once, and stores its verdict whether or not anyone still waits.
    pub fn scan(
        self: &Arc<Self>,
        source: String,
        digest: String,
        trigger: &'static str,
    ) -> watch::Receiver<Option<ScanResult>> {
        let mut inflight = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(rx) = inflight.get(&digest) {
            self.metrics.gate_scan_waiters.inc();
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(digest.clone(), rx.clone());
        drop(inflight);
        let gate = Arc::clone(self);
        tokio::spawn(async move {
            let result = gate.run_scan(&source, &digest, trigger).await;
            {
                let mut failed = gate
                    .rescan_failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match &result {
                    Err(_) if trigger == "rescan" => {
                        failed.insert(digest.clone(), std::time::Instant::now());
                    }
                    _ => {
                        failed.remove(&digest);
                    }
                }
            }
            // Remove first, then publish: a request arriving after the removal finds the
            // stored verdict.
            gate.inflight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&digest);
            let _ = tx.send(Some(result));
        });
        rx
    }

    async fn run_scan(&self, source: &str, digest: &str, trigger: &'static str) -> ScanResult {
        let _permit = self
            .scans
            .acquire()
            .await
            .map_err(|_| "the gate is shutting down".to_owned())?;
        let host = source.split_once('/').map(|(h, _)| h).unwrap_or_default();
        let result = async {
            let opts = self
                .options(
                    host,
                    Some(Duration::from_secs(self.config.scan_timeout_seconds)),
                )
                .await?;
            let report = lanyard_scan::scan(&Source::Registry(source.to_owned()), &opts)
                .await
                .map_err(|e| e.to_string())?;
            let repository = source.split_once('@').map(|(r, _)| r.to_owned());
            let rec = record_from_report(
                &report,
                digest,
                repository.clone(),
                &self.config.platforms,
                crate::issue::lifetime::whole_seconds(self.clock.now()),
            );
            self.store
                .put_verdict(&rec)
                .await
                .map_err(|e| e.to_string())?;
            // Each platform's own manifest too, so a lookup by a platform digest finds it.
            if !rec.platforms.is_empty() {
                for img in &report.images {
                    let mut one = record_from_report(
                        &lanyard_scan::Report {
                            images: vec![img.clone()],
                            ..report.clone()
                        },
                        &img.digest,
                        repository.clone(),
                        &[],
                        rec.scanned_at,
                    );
                    one.platforms.clear();
                    self.store
                        .put_verdict(&one)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok::<_, String>(Arc::new(rec))
        }
        .await;
        let label = match &result {
            Ok(r) => match r.verdict {
                Verdict::Clean => "clean",
                Verdict::Dirty => "dirty",
                Verdict::Incomplete => "incomplete",
            },
            Err(_) => "error",
        };
        self.metrics
            .gate_scans
            .with_label_values(&[trigger, label])
            .inc();
        match &result {
            Ok(r) => info!(
                digest,
                trigger,
                verdict = label,
                findings = r.findings.len(),
                "image scanned"
            ),
            Err(e) => warn!(digest, trigger, error = %e, "image scan failed"),
        }
        result
    }

    /// Scan options for a registry host: every platform of an index, the host's credentials
    /// read from their files now (never cached, never from a request), plain HTTP only to
    /// loopback when configured.
    async fn options(&self, host: &str, timeout: Option<Duration>) -> Result<ScanOptions, String> {
        let auth = match self
            .config
            .registries
            .iter()
            .find(|r| r.host.eq_ignore_ascii_case(host))
        {
            None => RegistryAuth::Anonymous,
            Some(r) => match (&r.username, &r.password_file, &r.token_file) {
                (Some(u), Some(p), _) => RegistryAuth::Basic {
                    username: u.clone(),
                    password: read_secret_file(p)
                        .await
                        .map_err(|e| format!("registry {host}: {e}"))?,
                },
                (_, _, Some(t)) => RegistryAuth::Bearer(
                    read_secret_file(t)
                        .await
                        .map_err(|e| format!("registry {host}: {e}"))?,
                ),
                _ => RegistryAuth::Anonymous,
            },
        };
        Ok(ScanOptions {
            platform: PlatformChoice::All,
            auth,
            insecure_loopback_registry: self.config.insecure_loopback_registries
                && is_loopback_host(host),
            timeout,
            ..ScanOptions::default()
        })
    }

    /// Re-scans, in the background, every digest that has a verdict under an older ruleset
    /// and none under the current one (a ruleset upgrade). Old verdicts serve meanwhile.
    /// Returns how many scans it ran.
    pub async fn rescan_stale(self: &Arc<Self>) -> usize {
        let mut skipped: HashSet<String> = HashSet::new();
        let mut ran = 0;
        loop {
            let batch = match self
                .store
                .digests_without_verdict(&self.ruleset_version, 64 + skipped.len())
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    warn!(error = %e, "cannot list verdicts to re-scan; will retry at the next start");
                    return ran;
                }
            };
            let todo: Vec<_> = batch
                .into_iter()
                .filter(|(d, _)| !skipped.contains(d))
                .collect();
            if todo.is_empty() {
                return ran;
            }
            for (digest, repo) in todo {
                skipped.insert(digest.clone());
                let Some(repo) = repo else { continue };
                let rx = self.scan(format!("{repo}@{digest}"), digest, "rescan");
                let _ = wait_for(
                    rx,
                    Duration::from_secs(self.config.scan_timeout_seconds + 5),
                )
                .await;
                ran += 1;
            }
        }
    }

    /// Starts [`Self::rescan_stale`] in the background.
    pub fn spawn_rescan(self: &Arc<Self>) {
        let gate = Arc::clone(self);
        tokio::spawn(async move {
            let n = gate.rescan_stale().await;
            if n > 0 {
                info!(rescanned = n, ruleset = %gate.ruleset_version, "background re-scan after a ruleset change done");
            }
        });
    }

    /// The settings for a decision under `rule`.
    pub fn settings_for(&self, rule: &crate::policy::Rule) -> Settings {
        Settings {
            mode: rule.gate_mode.unwrap_or(self.config.mode),
            unknown_workload: self.config.unknown_workload,
            require_image: rule.require_image,
            rule: rule.name.clone(),
        }
    }

    /// The workload's images with what is known of each (verdict, exemption), or which
    /// kind of workload it is when it names none. Scans on demand.
    pub async fn workload(self: &Arc<Self>, identity: &Identity) -> Result<Workload, StoreError> {
        let Some((source, refs)) = workload_images(identity) else {
            return Ok(Workload::NoImage);
        };
        let wait = Duration::from_secs(self.config.scan_deadline_seconds);
        let mut images = Vec::with_capacity(refs.len());
        for r in refs {
            let digest = r.digest.clone().unwrap_or_default();
            let lookup = if image::is_digest(&digest) {
                self.lookup(&r, wait).await?
            } else {
                Lookup::Unresolvable(
                    "the bound image is not a digest reference; mint a new token bound to \
                     REPOSITORY@sha256:DIGEST"
                        .into(),
                )
            };
            let exemption = match &lookup {
                Lookup::Verdict { verdict, .. } if *verdict != Verdict::Clean => {
                    self.store.exemption(&digest).await?.map(|e| e.reason)
                }
                _ => None,
            };
            images.push(ImageState {
                image: r.to_string(),
                digest,
                lookup,
                exemption,
            });
        }
        Ok(Workload::Images { source, images })
    }

    /// Decides an admission (the validating webhook, part B): each image of `workload` is
    /// resolved to a digest (a tag through its registry, within `gate.scan_deadline_seconds`),
    /// looked up or scanned, its exemption read, and [`admission::decide`] answers. The route
    /// and the records of admitted pods are not wired yet.
    pub async fn admit(
        self: &Arc<Self>,
        workload: &admission::AdmissionWorkload,
        settings: &admission::AdmissionSettings,
    ) -> Result<admission::AdmissionDecision, StoreError> {
        let wait = Duration::from_secs(self.config.scan_deadline_seconds);
        let mut states = Vec::with_capacity(workload.images.len());
        for c in &workload.images {
            let state = match image::parse(&c.image) {
                Err(e) => ImageState {
                    image: c.image.chars().take(200).collect(),
                    digest: String::new(),
                    lookup: Lookup::Unresolvable(e),
                    exemption: None,
                },
                Ok(r) => match self.resolve(&r, wait).await {
                    Err(GateError::Store(e)) => return Err(e),
                    Err(e) => ImageState {
                        image: r.to_string(),
                        digest: String::new(),
                        lookup: Lookup::ScanFailed(e.to_string()),
                        exemption: None,
                    },
                    Ok(digest) => {
                        let pinned = ImageRef {
                            digest: Some(digest.clone()),
                            tag: None,
                            ..r
                        };
                        let lookup = self.lookup(&pinned, wait).await?;
                        let exemption = match &lookup {
                            Lookup::Verdict { verdict, .. } if *verdict != Verdict::Clean => {
                                self.store.exemption(&digest).await?.map(|e| e.reason)
                            }
                            _ => None,
                        };
                        ImageState {
                            image: pinned.to_string(),
                            digest,
                            lookup,
                            exemption,
                        }
                    }
                },
            };
            states.push(state);
        }
        Ok(admission::decide(workload, &states, settings))
    }

    /// Records an exemption for `digest`.
    pub async fn exempt(&self, digest: &str, reason: &str) -> Result<(), GateError> {
        if !image::is_digest(digest) {
            return Err(GateError::BadImage(
                "an exemption is per digest: give sha256: and 64 lowercase hex digits".into(),
            ));
        }
        let reason = reason.trim();
        if reason.is_empty() || reason.len() > 500 {
            return Err(GateError::BadImage(
                "give a reason of 1 to 500 characters (it is shown in every audit record of the exemption's use)".into(),
            ));
        }
        self.store
            .put_exemption(&crate::store::ExemptionRecord {
                digest: digest.to_owned(),
                reason: reason.to_owned(),
                created_at: crate::issue::lifetime::whole_seconds(self.clock.now()),
            })
            .await?;
        Ok(())
    }

    /// Whether a verdict exists for a bare digest (under any ruleset): what lets a bootstrap
    /// token bind a bare digest.
    pub async fn has_verdict(&self, digest: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .verdict(digest, &self.ruleset_version)
            .await?
            .is_some()
            || self
                .store
                .previous_verdict(digest, &self.ruleset_version)
                .await?
                .is_some())
    }
}

/// Waits at most `wait` for a scan's result.
async fn wait_for(
    mut rx: watch::Receiver<Option<ScanResult>>,
    wait: Duration,
) -> Option<ScanResult> {
    let done = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
    match done {
        Ok(Ok(v)) => v.clone(),
        // The sender is gone without a result: the task panicked.
        Ok(Err(_)) => Some(Err("the scan stopped without a result".into())),
        Err(_) => None,
    }
}

fn is_loopback_host(host: &str) -> bool {
    let h = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn read_bounded(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("gate.allowlist_file {}: {e}", path.display()))?;
    if meta.len() > lanyard_scan::allow::MAX_ALLOWLIST_BYTES {
        return Err(format!(
            "gate.allowlist_file {}: larger than {} bytes",
            path.display(),
            lanyard_scan::allow::MAX_ALLOWLIST_BYTES
        ));
    }
    std::fs::read_to_string(path)
        .map_err(|e| format!("gate.allowlist_file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict_record(dirty: bool) -> VerdictRecord {
        VerdictRecord {
            digest: format!("sha256:{}", "a".repeat(64)),
            ruleset_version: "r1".into(),
            repository: Some("registry.example.com/shop/api".into()),
            verdict: if dirty {
                Verdict::Dirty
            } else {
                Verdict::Clean
            },
            findings: if dirty {
                vec![FindingSummary {
                    rule: "aws-access-key-id".into(),
                    location_kind: "file".into(),
                    layer: Some(1),
                    name: Some("app/.env".into()),
                    fingerprint: format!("v1:{}", "0f".repeat(16)),
                    platform: None,
                }]
            } else {
                vec![]
            },
            incomplete: vec![],
            platforms: vec![],
            scanned_at: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_allowlist_is_applied_to_stored_findings_without_a_rescan() {
        let rec = verdict_record(true);
        assert_eq!(effective(&rec, None).0, Verdict::Dirty);
        let by_fp = Allowlist::parse(
            &format!(
                "allow:\n  - fingerprint: \"{}\"\n    reason: test key\n",
                rec.findings[0].fingerprint
            ),
            "t",
        )
        .expect("parse");
        let (v, f) = effective(&rec, Some(&by_fp));
        assert_eq!((v, f.len()), (Verdict::Clean, 0));
        let by_path = Allowlist::parse("allow:\n  - path: \"app/**\"\n    reason: fixtures\n", "t")
            .expect("parse");
        assert_eq!(effective(&rec, Some(&by_path)).0, Verdict::Clean);
        let other_rule = Allowlist::parse(
            "allow:\n  - path: \"app/**\"\n    rule: github-pat\n    reason: x\n",
            "t",
        )
        .expect("parse");
        assert_eq!(effective(&rec, Some(&other_rule)).0, Verdict::Dirty);
        // An incomplete scan stays incomplete whatever the allowlist says.
        let mut inc = verdict_record(false);
        inc.verdict = Verdict::Incomplete;
        inc.incomplete = vec!["layer 0: truncated".into()];
        assert_eq!(effective(&inc, Some(&by_path)).0, Verdict::Incomplete);
    }

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1:5000", "localhost", "[::1]:5000", "localhost:80"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["registry.example.com", "10.0.0.1:5000", "127.0.0.1.nip.io"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
