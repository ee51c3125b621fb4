//! The image gate: no credentials for a workload whose images are not proven clean.
//!
//! `docs/GATE.md` is the user's guide. Here:
//!
//! # Layout
//! - [`image`]: image references (`repo@sha256:…`, tags for operator tools, bare digests),
//!   parsed and bounded.
//! - [`inject`]: sidecar injection by pod annotation, the mutating webhook's pure part
//!   composed with [`pin`] (digest pinning) into one patch.
//! - [`pods`]: pod lookups through the Kubernetes API (trust source 3): the client and the
//!   pure parse of its answers.
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
//! the image an admin bound into a bootstrap token; the admission record the validating
//! webhook wrote for a pod token's pod ([`Gate::with_admission`], `gate.pod_tokens: gate`);
//! and, where `gate.pod_lookup` is set, the pod's container statuses read from the
//! Kubernetes API ([`pods`]). All feed the same decision.

/// How many locks admission records are spread over (by pod UID).
const RECORD_LOCKS: usize = 64;
/// How long an admission record read from the store serves issuance without a new read.
const RECORD_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most admission records (and verdicts) cached; past it a cache starts again empty.
const RECORD_CACHE_MAX: usize = 65_536;
/// How long a verdict read from the store serves issuance without a new read.
const VERDICT_CACHE_TTL: Duration = Duration::from_secs(5);

pub mod admission;
pub mod decide;
pub mod image;
pub mod inject;
pub mod pin;
pub mod pods;

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

use crate::authn::{Identity, PodAdmission};
use crate::config::{GateConfig, PodTokens, Unscanned};
use crate::metrics::Metrics;
use crate::secret_file::read_secret_file;
use crate::store::{AdmissionRecord, FindingSummary, Store, StoreError, VerdictRecord};

/// The repositories of the images a workload runs, from a trusted source (for the policy
/// selector `image_repository`): the bootstrap binding's, or the pod's admission record's
/// (once the broker looked it up, `gate.pod_tokens: gate`). Empty when the identity names none.
pub fn image_repositories(identity: &Identity) -> Vec<String> {
    let mut repos: Vec<String> = Vec::new();
    for r in workload_images(identity)
        .map(|(_, refs)| refs)
        .unwrap_or_default()
    {
        if let Some(repo) = r.repository
            && !repos.contains(&repo)
        {
            repos.push(repo);
        }
    }
    repos
}

/// Which images `identity`'s workload runs, from a trusted source, before verdicts are
/// looked up: the bootstrap token's binding, or the admission record of a pod token's pod
/// (as the broker found it, [`PodAdmission`]). `None`: the identity names no image from a
/// trusted source (see [`Gate::workload`] for a pod without a record).
pub fn workload_images(identity: &Identity) -> Option<(TrustSource, Vec<ImageRef>)> {
    if let Some(PodAdmission::Record { images, .. }) =
        identity.kubernetes.as_ref().map(|k| &k.admission)
    {
        return Some((
            TrustSource::AdmissionRecord,
            images.iter().map(|i| pinned_or_bare(i)).collect(),
        ));
    }
    let bound = identity.bootstrap.as_ref()?.image.as_deref()?;
    Some((TrustSource::BootstrapBinding, vec![pinned_or_bare(bound)]))
}

/// A stored reference (a binding, a record's image) as the gate reads it. Bindings were
/// checked at mint time and records at admission; one that does not parse (minted before the
/// gate, as a bare digest of another form) still names an image: it is looked up by nothing
/// and refused.
fn pinned_or_bare(stored: &str) -> ImageRef {
    image::parse_pinned(stored).unwrap_or(ImageRef {
        repository: None,
        tag: None,
        digest: Some(stored.to_owned()),
    })
}

/// What the gate's audit detail says about a pod token whose admission record is tag-based.
pub const TAG_BASED_RECORD: &str = "tag-based admission record, weaker: the pod's images were \
    written as tags (gate.admission.pin_digests off), so a tag that moved between admission and \
    the kubelet's pull is not seen";

/// Whether `identity`'s images come from a tag-based admission record.
pub fn tag_based_record(identity: &Identity) -> bool {
    matches!(
        identity.kubernetes.as_ref().map(|k| &k.admission),
        Some(PodAdmission::Record { pinned: false, .. })
    )
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
    /// One is held while an admission record is read and replaced (an UPDATE's union), so
    /// two reviews of one pod in this process do not lose each other's images: the pod's UID
    /// picks the lock, so reviews of other pods go on (and their records share a commit).
    /// (Replicas sharing a store can still interleave; the API server serialises a pod's
    /// updates.)
    records: Box<[tokio::sync::Mutex<()>]>,
    /// Admission records recently read or written here, by pod UID, with when: a pod token's
    /// issuance reads its pod's record from here for [`RECORD_CACHE_TTL`] (this process
    /// writes every record change it makes through it; a change made by another process
    /// sharing the store is seen within the TTL). At most [`RECORD_CACHE_MAX`] entries.
    record_cache: dashmap::DashMap<String, (AdmissionRecord, std::time::Instant)>,
    /// Verdicts under the current ruleset recently read from the store, by digest, with when:
    /// issuance reads them from here for [`VERDICT_CACHE_TTL`]; a scan that stores a verdict
    /// drops the digest at once. At most [`RECORD_CACHE_MAX`] entries.
    verdict_cache: dashmap::DashMap<String, (Arc<VerdictRecord>, std::time::Instant)>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    /// The pod lookup (trust source 3), when `gate.pod_lookup` is set.
    pods: Option<pods::PodLookup>,
    /// Where the next sweep of admission records goes on from (a pod UID).
    sweep_cursor: tokio::sync::Mutex<Option<String>>,
}

/// What one sweep of admission records did ([`Gate::sweep_admission_records`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Records whose pod was looked up.
    pub checked: usize,
    /// Records deleted: their pod is gone.
    pub deleted: usize,
    /// The lookup failed (the sweep stopped there; nothing was deleted for it).
    pub error: Option<String>,
    /// The sweep reached the last record (the next one starts from the first).
    pub wrapped: bool,
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
        let pods = config
            .pod_lookup
            .as_ref()
            .map(pods::PodLookup::new)
            .transpose()?;
        let gate = Arc::new(Self {
            pods,
            sweep_cursor: tokio::sync::Mutex::new(None),
            store,
            scans: Arc::new(Semaphore::new(config.max_concurrent_scans.max(1))),
            config,
            ruleset_version: lanyard_scan::rules::RuleSet::builtin().version.clone(),
            allowlist: ArcSwap::from_pointee(AllowState::default()),
            inflight: Mutex::new(HashMap::new()),
            rescan_failed: Mutex::new(HashMap::new()),
            records: (0..RECORD_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            record_cache: dashmap::DashMap::new(),
            verdict_cache: dashmap::DashMap::new(),
            tags: Mutex::new(HashMap::new()),
            metrics,
            clock,
        });
        gate.reload_allowlist()?;
        let a = &gate.config.admission;
        if (a.client_ca_file.is_some() || a.token_file.is_some())
            && gate.config.pod_tokens == PodTokens::Ignore
        {
            info!(
                "the admission webhook is configured and gate.pod_tokens is `ignore`: pod tokens \
                 are not gated by admission records yet; set `gate.pod_tokens: gate` once every \
                 running pod was admitted through the webhook (docs/GATE.md)"
            );
        }
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
        let cached = self
            .verdict_cache
            .get(digest)
            .filter(|e| e.1.elapsed() < VERDICT_CACHE_TTL)
            .map(|e| e.0.clone());
        let current = match cached {
            Some(rec) => Some(rec),
            None => self
                .store
                .verdict(digest, &self.ruleset_version)
                .await?
                .map(|rec| {
                    let rec = Arc::new(rec);
                    if self.verdict_cache.len() >= RECORD_CACHE_MAX {
                        self.verdict_cache.clear();
                    }
                    self.verdict_cache
                        .insert(digest.to_owned(), (rec.clone(), std::time::Instant::now()));
                    rec
                }),
        };
        if let Some(rec) = current {
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
            self.verdict_cache.remove(digest);
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
                    self.verdict_cache.remove(&img.digest);
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

    /// Fills in what the admission records say about a pod token's pod (trust source 1),
    /// with `gate.pod_tokens: gate`: the record of its `kubernetes.io.pod.uid`, or none (a
    /// Kubernetes token that names no pod counts as none). Other identities, and every
    /// identity with `gate.pod_tokens: ignore`, are returned as they are.
    pub async fn with_admission<'a>(
        &self,
        identity: &'a Identity,
    ) -> Result<std::borrow::Cow<'a, Identity>, StoreError> {
        use std::borrow::Cow;
        if self.config.pod_tokens != PodTokens::Gate || identity.kubernetes.is_none() {
            return Ok(Cow::Borrowed(identity));
        }
        let mut out = identity.clone();
        let Some(k) = out.kubernetes.as_mut() else {
            return Ok(Cow::Owned(out));
        };
        let record = match &k.pod_uid {
            Some(uid) => self.admission_record_in_use(uid).await?,
            None => None,
        };
        k.admission = match record {
            Some(r) => PodAdmission::Record {
                images: r.images,
                pinned: r.pinned,
                admitted_at: Some(r.admitted_at),
            },
            None => PodAdmission::NoRecord,
        };
        Ok(Cow::Owned(out))
    }

    /// The record of the pod `pod_uid` as a token of it is gated: none once past its
    /// `expires_at` (pruning may not have run yet), and kept while in use — a record past half
    /// its retention is extended to `now + record_retention_hours`, so a pod that runs longer
    /// than the retention, asking for credentials meanwhile, keeps its record (one store write
    /// per record per half retention). A failed extension is logged; the record still serves.
    async fn admission_record_in_use(
        &self,
        pod_uid: &str,
    ) -> Result<Option<AdmissionRecord>, StoreError> {
        let now = crate::issue::lifetime::whole_seconds(self.clock.now());
        let cached = self
            .record_cache
            .get(pod_uid)
            .filter(|e| e.1.elapsed() < RECORD_CACHE_TTL)
            .map(|e| e.0.clone());
        let rec = match cached {
            Some(rec) => rec,
            None => {
                let Some(rec) = self.store.admission_record(pod_uid).await? else {
                    self.record_cache.remove(pod_uid);
                    return Ok(None);
                };
                self.cache_record(&rec);
                rec
            }
        };
        if rec.expires_at <= now {
            return Ok(None);
        }
        let retention = Duration::from_secs(self.config.admission.record_retention_hours * 3600);
        if rec.expires_at >= now + retention / 2 {
            return Ok(Some(rec));
        }
        let _serialised = self.record_lock(pod_uid).lock().await;
        // Read again under the lock: an UPDATE may have replaced it meanwhile.
        let Some(mut rec) = self.store.admission_record(pod_uid).await? else {
            return Ok(None);
        };
        rec.expires_at = now + retention;
        if let Err(e) = self.store.put_admission_record(&rec).await {
            warn!(error = %e, pod_uid, "cannot extend the admission record in use; it serves until it expires");
        } else {
            self.cache_record(&rec);
        }
        Ok(Some(rec))
    }

    /// Keeps `rec` as the latest known state of its pod's record (see `record_cache`).
    fn cache_record(&self, rec: &AdmissionRecord) {
        if self.record_cache.len() >= RECORD_CACHE_MAX {
            self.record_cache.clear();
        }
        self.record_cache.insert(
            rec.pod_uid.clone(),
            (rec.clone(), std::time::Instant::now()),
        );
    }

    /// The workload's images with what is known of each (verdict, exemption), or which
    /// kind of workload it is when it names none. Scans on demand. A pod token whose pod has
    /// no admission record ([`Self::with_admission`] found none) is looked up in the
    /// Kubernetes API where `gate.pod_lookup` is set (trust source 3), else it is an unknown
    /// workload. With `gate.pod_tokens: ignore`, pod lookups (when set) still gate pod tokens.
    pub async fn workload(self: &Arc<Self>, identity: &Identity) -> Result<Workload, StoreError> {
        if matches!(
            identity.kubernetes.as_ref().map(|k| &k.admission),
            Some(PodAdmission::NoRecord)
        ) {
            return Ok(self
                .pod_workload(identity)
                .await?
                .unwrap_or(Workload::Unknown));
        }
        let Some((source, refs)) = workload_images(identity) else {
            // Source 3, the pod lookup, for pod tokens no record speaks for.
            if let Some(w) = self.pod_workload(identity).await? {
                return Ok(w);
            }
            return Ok(Workload::NoImage);
        };
        let wait = Duration::from_secs(self.config.scan_deadline_seconds);
        let mut images = Vec::with_capacity(refs.len());
        for r in refs {
            let digest = r.digest.clone().unwrap_or_default();
            let lookup = if image::is_digest(&digest) {
                self.lookup(&r, wait).await?
            } else {
                Lookup::Unresolvable(match source {
                    TrustSource::BootstrapBinding => {
                        "the bound image is not a digest reference; mint a new token bound to \
                     REPOSITORY@sha256:DIGEST"
                            .into()
                    }
                    _ => "the recorded image is not a digest reference".into(),
                })
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

    /// Trust source 3: which images a pod token's pod runs, from its container statuses in
    /// the Kubernetes API. `None` when `gate.pod_lookup` is off or the identity names no pod;
    /// else the images (each looked up or scanned, as a bound image), `PodNotReady` (decided
    /// as an unknown workload) while some container has no `imageID` yet, `PodGone`, or `PodLookupFailed` (retryable).
    pub async fn pod_workload(
        self: &Arc<Self>,
        identity: &Identity,
    ) -> Result<Option<Workload>, StoreError> {
        let (Some(lookup), Some(k)) = (&self.pods, &identity.kubernetes) else {
            return Ok(None);
        };
        let (Some(name), Some(uid)) = (&k.pod_name, &k.pod_uid) else {
            return Ok(None);
        };
        let answer = lookup.lookup(&k.namespace, name, uid).await;
        self.count_pod_lookup("issue", &answer);
        let images = match answer {
            Err(e) => {
                warn!(namespace = %k.namespace, pod = %name, error = %e, "pod lookup failed");
                return Ok(Some(Workload::PodLookupFailed(e.0)));
            }
            Ok(pods::PodImages::Gone(why)) => return Ok(Some(Workload::PodGone(why))),
            Ok(pods::PodImages::NotReady { waiting }) => {
                return Ok(Some(Workload::PodNotReady { waiting }));
            }
            Ok(pods::PodImages::Images(images)) => images,
        };
        let wait = Duration::from_secs(self.config.scan_deadline_seconds);
        let mut states = Vec::with_capacity(images.len());
        for img in images {
            let state = match img.parsed {
                Err(why) => ImageState {
                    image: img.image_id,
                    digest: String::new(),
                    lookup: Lookup::Unresolvable(why),
                    exemption: None,
                },
                Ok(r) => {
                    let digest = r.digest.clone().unwrap_or_default();
                    let lookup = self.lookup(&r, wait).await?;
                    let exemption = match &lookup {
                        Lookup::Verdict { verdict, .. } if *verdict != Verdict::Clean => {
                            self.store.exemption(&digest).await?.map(|e| e.reason)
                        }
                        _ => None,
                    };
                    ImageState {
                        image: if r.repository.is_some() {
                            r.to_string()
                        } else {
                            img.image_id
                        },
                        digest,
                        lookup,
                        exemption,
                    }
                }
            };
            states.push(state);
        }
        Ok(Some(Workload::Images {
            source: TrustSource::PodStatus,
            images: states,
        }))
    }

    fn count_pod_lookup(
        &self,
        purpose: &str,
        answer: &Result<pods::PodImages, pods::PodLookupError>,
    ) {
        let result = match answer {
            Ok(pods::PodImages::Images(_)) => "images",
            Ok(pods::PodImages::NotReady { .. }) => "not_ready",
            Ok(pods::PodImages::Gone(_)) => "gone",
            Err(_) => "error",
        };
        self.metrics
            .gate_pod_lookups
            .with_label_values(&[purpose, result])
            .inc();
    }

    /// Whether pod lookups are on (`gate.pod_lookup`).
    pub fn pod_lookup_enabled(&self) -> bool {
        self.pods.is_some()
    }

    /// One sweep of admission records: up to `gate.pod_lookup.sweep_batch` records, from
    /// where the last sweep stopped, each one's pod looked up; a record whose pod is gone
    /// (NotFound, or another uid under its name) is deleted. The first failed lookup ends the
    /// sweep and deletes nothing (it goes on from that record next time). Records without a
    /// pod name wait for their retention. Nothing when pod lookups are off.
    pub async fn sweep_admission_records(&self) -> Result<SweepReport, StoreError> {
        let (Some(lookup), Some(cfg)) = (&self.pods, &self.config.pod_lookup) else {
            return Ok(SweepReport::default());
        };
        let mut cursor = self.sweep_cursor.lock().await;
        let page = self
            .store
            .admission_records_page(cursor.as_deref(), cfg.sweep_batch)
            .await?;
        let mut report = SweepReport {
            wrapped: page.len() < cfg.sweep_batch,
            ..SweepReport::default()
        };
        for rec in &page {
            if !rec.pod_name.is_empty() {
                let answer = lookup
                    .lookup(&rec.namespace, &rec.pod_name, &rec.pod_uid)
                    .await;
                self.count_pod_lookup("sweep", &answer);
                report.checked += 1;
                match answer {
                    Err(e) => {
                        warn!(error = %e, "admission record sweep stopped: the pod lookup failed; nothing deleted, will retry");
                        report.error = Some(e.0);
                        report.wrapped = false;
                        return Ok(report);
                    }
                    Ok(pods::PodImages::Gone(why)) => {
                        self.record_cache.remove(&rec.pod_uid);
                        if self.store.delete_admission_record(&rec.pod_uid).await? {
                            report.deleted += 1;
                            info!(namespace = %rec.namespace, pod = %rec.pod_name, uid = %rec.pod_uid, why = %why, "admission record of a gone pod deleted");
                        }
                    }
                    Ok(_) => {}
                }
            }
            *cursor = Some(rec.pod_uid.clone());
        }
        if report.wrapped {
            *cursor = None;
        }
        Ok(report)
    }

    /// Decides an admission (the validating webhook): each image of `workload` is resolved
    /// to a digest (a tag through its registry), looked up or scanned, its exemption read —
    /// every image at once, each scan shared by digest and bounded by
    /// `gate.max_concurrent_scans` — all within `deadline` (what is not done by then is
    /// pending), and [`admission::decide`] answers.
    pub async fn admit(
        self: &Arc<Self>,
        workload: &admission::AdmissionWorkload,
        settings: &admission::AdmissionSettings,
        deadline: Duration,
    ) -> Result<admission::AdmissionDecision, StoreError> {
        if settings.namespace_exemption.is_some() {
            // Nothing is resolved or scanned in an exempted namespace.
            return Ok(admission::decide(workload, &[], settings));
        }
        let until = tokio::time::Instant::now() + deadline;
        // Each distinct reference once (an init container and a container often share one).
        let mut distinct: Vec<&str> = Vec::new();
        for c in &workload.images {
            if !distinct.contains(&c.image.as_str()) {
                distinct.push(&c.image);
            }
        }
        let checked =
            futures_util::future::join_all(distinct.iter().map(|i| self.admission_state(i, until)))
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
        let states: Vec<ImageState> = workload
            .images
            .iter()
            .map(|c| {
                let at = distinct
                    .iter()
                    .position(|i| *i == c.image)
                    .unwrap_or_default();
                checked[at].clone()
            })
            .collect();
        Ok(admission::decide(workload, &states, settings))
    }

    async fn admission_state(
        self: &Arc<Self>,
        written: &str,
        until: tokio::time::Instant,
    ) -> Result<ImageState, StoreError> {
        let left = || until.saturating_duration_since(tokio::time::Instant::now());
        let r = match image::parse(written) {
            Err(e) => {
                return Ok(ImageState {
                    image: written.chars().take(200).collect(),
                    digest: String::new(),
                    lookup: Lookup::Unresolvable(e),
                    exemption: None,
                });
            }
            Ok(r) => r,
        };
        // The deadline, not the registry client's own timeout, ends a slow resolution: what is
        // not done by then is pending.
        let resolving = self.resolve(&r, left() + Duration::from_secs(1));
        let digest = match tokio::time::timeout(left(), resolving).await {
            Err(_) => {
                return Ok(ImageState {
                    image: r.to_string(),
                    digest: String::new(),
                    lookup: Lookup::Pending,
                    exemption: None,
                });
            }
            Ok(Err(GateError::Store(e))) => return Err(e),
            Ok(Err(e)) => {
                return Ok(ImageState {
                    image: r.to_string(),
                    digest: String::new(),
                    lookup: Lookup::ScanFailed(e.to_string()),
                    exemption: None,
                });
            }
            Ok(Ok(d)) => d,
        };
        let pinned = ImageRef {
            digest: Some(digest.clone()),
            tag: None,
            ..r
        };
        let lookup = self.lookup(&pinned, left()).await?;
        let exemption = match &lookup {
            Lookup::Verdict { verdict, .. } if *verdict != Verdict::Clean => {
                self.store.exemption(&digest).await?.map(|e| e.reason)
            }
            _ => None,
        };
        Ok(ImageState {
            image: pinned.to_string(),
            digest,
            lookup,
            exemption,
        })
    }

    /// Saves the record of an admitted pod, durably: `images` as checked, `pinned` as the
    /// pod wrote them. An existing record of the same pod (an UPDATE: an ephemeral container
    /// added) is replaced by the union of both, tag-based if either was. With `add_only`
    /// (`images` are only what an UPDATE changed) and no record to add to, nothing is saved
    /// and `None` returned: a record names everything the pod runs, or is not written.
    pub async fn record_admission(
        &self,
        pod_uid: &str,
        namespace: &str,
        pod_name: &str,
        images: &[String],
        pinned: bool,
        add_only: bool,
    ) -> Result<Option<AdmissionRecord>, StoreError> {
        let now = crate::issue::lifetime::whole_seconds(self.clock.now());
        let retention = Duration::from_secs(self.config.admission.record_retention_hours * 3600);
        let mut rec = AdmissionRecord {
            pod_uid: pod_uid.to_owned(),
            namespace: namespace.to_owned(),
            pod_name: pod_name.to_owned(),
            images: Vec::with_capacity(images.len()),
            pinned,
            // Exact (milliseconds are stored): the sidecar's start-up figure counts from it.
            admitted_at: self.clock.now(),
            expires_at: now + retention,
        };
        let _serialised = self.record_lock(pod_uid).lock().await;
        match self.store.admission_record(pod_uid).await? {
            Some(old) => {
                rec.images = old.images;
                rec.pinned &= old.pinned;
                // The pod was admitted when it was created; an UPDATE does not move that.
                rec.admitted_at = old.admitted_at;
                if rec.pod_name.is_empty() {
                    rec.pod_name = old.pod_name;
                }
            }
            None if add_only => return Ok(None),
            None => {}
        }
        for i in images {
            if !rec.images.contains(i) {
                rec.images.push(i.clone());
            }
        }
        self.store.put_admission_record(&rec).await?;
        self.cache_record(&rec);
        Ok(Some(rec))
    }

    /// The lock of `pod_uid`'s admission record (see `records`).
    fn record_lock(&self, pod_uid: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pod_uid.hash(&mut h);
        let i = usize::try_from(h.finish() % RECORD_LOCKS as u64).unwrap_or(0);
        &self.records[i]
    }

    /// Removes the admission records past their retention; returns how many.
    pub async fn prune_admission_records(&self) -> Result<usize, StoreError> {
        let n = self.store.prune_admission_records(self.clock.now()).await?;
        if n > 0 {
            self.metrics
                .admission_records_pruned
                .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
            info!(pruned = n, "admission records past their retention removed");
        }
        Ok(n)
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

    fn pod_identity(uid: Option<&str>) -> Identity {
        Identity {
            issuer: "https://kubernetes.test".into(),
            subject: "system:serviceaccount:shop:api".into(),
            kubernetes: Some(crate::authn::KubernetesIdentity {
                namespace: "shop".into(),
                service_account: "api".into(),
                pod_name: uid.map(|_| "api-7d9c8b6f5-x2k4q".to_owned()),
                pod_uid: uid.map(str::to_owned),
                admission: PodAdmission::NotLooked,
            }),
            bootstrap: None,
            spiffe_id: None,
            claims: Default::default(),
        }
    }

    #[tokio::test]
    async fn pod_tokens_are_gated_by_their_pods_admission_record_only_when_configured() {
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::new());
        let clock = Arc::new(lanyard::clock::ManualClock::at_unix(1_800_000_000));
        let img = format!("registry.example.com/shop/api@sha256:{}", "a".repeat(64));
        let gate = |pod_tokens| {
            Gate::new(
                store.clone(),
                GateConfig {
                    pod_tokens,
                    ..GateConfig::default()
                },
                Metrics::new(),
                clock.clone(),
            )
            .expect("gate")
        };
        let on = gate(PodTokens::Gate);
        on.record_admission(
            "u-1",
            "shop",
            "api",
            std::slice::from_ref(&img),
            false,
            false,
        )
        .await
        .expect("record")
        .expect("written");
        // Recorded: the record's images, its repositories for policies, tag-based said.
        let id = on
            .with_admission(&pod_identity(Some("u-1")))
            .await
            .expect("lookup")
            .into_owned();
        assert_eq!(
            workload_images(&id).map(|(s, r)| (s, r.len())),
            Some((TrustSource::AdmissionRecord, 1))
        );
        assert_eq!(image_repositories(&id), ["registry.example.com/shop/api"]);
        assert!(tag_based_record(&id));
        // No record, or a token bound to no pod: an unknown workload.
        for uid in [Some("u-2"), None] {
            let id = on
                .with_admission(&pod_identity(uid))
                .await
                .expect("lookup")
                .into_owned();
            assert_eq!(
                on.workload(&id).await.expect("workload"),
                Workload::Unknown,
                "{uid:?}"
            );
            assert!(image_repositories(&id).is_empty());
        }
        // In use, a record outlives its retention; unused, it expires (retention 168 h).
        let hour = Duration::from_secs(3600);
        clock.advance(hour * 100);
        let id = on
            .with_admission(&pod_identity(Some("u-1")))
            .await
            .expect("lookup")
            .into_owned();
        assert_eq!(image_repositories(&id).len(), 1, "used at 100 h: extended");
        let extended = store
            .admission_record("u-1")
            .await
            .expect("read")
            .expect("record");
        assert_eq!(
            extended.expires_at,
            lanyard::clock::Clock::now(clock.as_ref()) + hour * 168
        );
        clock.advance(hour * 200);
        let id = on
            .with_admission(&pod_identity(Some("u-1")))
            .await
            .expect("lookup")
            .into_owned();
        assert_eq!(
            on.workload(&id).await.expect("workload"),
            Workload::Unknown,
            "past its expiry, even before pruning: no record"
        );
        // An UPDATE adding an image to a pod without a record starts none.
        assert_eq!(
            on.record_admission("u-3", "shop", "x", std::slice::from_ref(&img), true, true)
                .await
                .expect("record"),
            None
        );
        // `gate.pod_tokens: ignore` (the default): not looked up, the token names no image.
        let off = gate(PodTokens::default());
        let id = off
            .with_admission(&pod_identity(Some("u-1")))
            .await
            .expect("lookup")
            .into_owned();
        assert_eq!(
            off.workload(&id).await.expect("workload"),
            Workload::NoImage
        );
        assert!(image_repositories(&id).is_empty());
    }

    /// Issue 16's audit of the gate for identities beyond pods: a JWT-SVID or a CI token
    /// names no workload image — even when its claims copy a pod's (`kubernetes.io` with the
    /// uid of an admitted pod), since only a Kubernetes issuer's token has a Kubernetes
    /// identity — so it is gated only under a rule with `require_image: true`, which refuses it.
    #[tokio::test]
    async fn spiffe_and_ci_identities_name_no_image_and_are_gated_only_on_require_image() {
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::new());
        let clock = Arc::new(lanyard::clock::ManualClock::at_unix(1_800_000_000));
        let gate = Gate::new(
            store,
            GateConfig {
                pod_tokens: PodTokens::Gate,
                ..GateConfig::default()
            },
            Metrics::new(),
            clock,
        )
        .expect("gate");
        let img = format!("registry.example.com/shop/api@sha256:{}", "a".repeat(64));
        gate.record_admission(
            "u-1",
            "shop",
            "api",
            std::slice::from_ref(&img),
            true,
            false,
        )
        .await
        .expect("record")
        .expect("written");
        let pod_claims = serde_json::json!({"kubernetes.io": {"namespace": "shop",
            "serviceaccount": {"name": "api"}, "pod": {"name": "api-1", "uid": "u-1"}}});
        let svid = Identity {
            issuer: "spiffe://example.org".into(),
            subject: "spiffe://example.org/ns/shop/sa/api".into(),
            kubernetes: None,
            bootstrap: None,
            spiffe_id: Some("spiffe://example.org/ns/shop/sa/api".into()),
            claims: pod_claims.as_object().expect("object").clone(),
        };
        let ci = Identity {
            issuer: "https://token.actions.githubusercontent.com".into(),
            subject: "repo:acme/app:ref:refs/heads/main".into(),
            spiffe_id: None,
            ..svid.clone()
        };
        for id in [svid, ci] {
            let id = gate.with_admission(&id).await.expect("lookup").into_owned();
            let workload = gate.workload(&id).await.expect("workload");
            assert_eq!(workload, Workload::NoImage, "{}", id.subject);
            assert!(image_repositories(&id).is_empty());
            let settings = |require_image| decide::Settings {
                mode: crate::policy::GateMode::Enforce,
                unknown_workload: Default::default(),
                require_image,
                rule: "r".into(),
            };
            assert_eq!(
                decide::decide(&workload, &settings(false)).outcome,
                decide::Outcome::Allow
            );
            let refused = decide::decide(&workload, &settings(true));
            assert_eq!(refused.outcome, decide::Outcome::Deny);
            assert_eq!(refused.reason, decide::Reason::ImageRequired);
        }
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
