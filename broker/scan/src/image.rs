//! Scanning one planned image: the config's findings, then every layer on a blocking thread
//! (at most [`ScanOptions::parallelism`] at once) against one shared budget, from a local store
//! or streamed from a registry; then the merge into an [`ImageReport`] (with the vendor pass
//! over the final view of the image's package records).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config;
use crate::error::ScanError;
use crate::layer::{self, Budget, LayerInfo, LayerResult};
use crate::options::ScanOptions;
use crate::plan::PlannedImage;
use crate::registry::Remote;
use crate::report::{self, ImageReport, Location, Stats};
use crate::rules::RuleSet;
use crate::store::Store;
use crate::vendor;

/// Where an image's layer blobs are read from.
#[derive(Clone)]
pub(crate) enum Blobs {
    /// A local archive or layout.
    Local(Store),
    /// A registry repository.
    Registry(Remote),
}

/// Scans one planned image: its config, then its layers in parallel against one budget;
/// merges the layers' results, marks files deleted by later layers, applies the allowlist and
/// decides the verdict.
pub(crate) async fn scan_image(
    img: PlannedImage,
    blobs: &Blobs,
    opts: &ScanOptions,
    rules: &'static RuleSet,
    internal: &Arc<AtomicBool>,
) -> Result<ImageReport, ScanError> {
    let budget = Arc::new(
        Budget::new(
            opts.limits,
            internal.clone(),
            opts.cancel.flag(),
            opts.progress.clone(),
        )
        .with_file_workers(file_workers(opts.layer_parallelism())),
    );
    if let Some(p) = &opts.progress {
        p.add_total(img.layers.iter().map(|l| l.2).sum());
    }
    let steps: Vec<Option<usize>> = img.layers.iter().map(|l| l.1.history_step).collect();
    let mut findings = config::scan_config(&img.config, rules, &steps);
    let mut incomplete = Vec::new();
    let max = opts.limits.max_findings;
    if findings.len() as u64 > max {
        // The layers then stop at their first finding: the budget is already spent.
        findings.truncate(usize::try_from(max).unwrap_or(usize::MAX));
        incomplete.push(format!("image config: {}", layer::max_findings_reason(max)));
    }
    budget
        .findings
        .store(findings.len() as u64, Ordering::Relaxed);
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.layer_parallelism().max(1)));
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
            Blobs::Registry(remote) => match remote.open_blob(&info.digest).await {
                Ok(r) => {
                    set.spawn_blocking(move || {
                        let _permit = permit;
                        layer::scan_layer(r, &info, rules, &budget)
                    });
                }
                Err(e) => {
                    drop(permit);
                    set.spawn_blocking(move || {
                        failed_layer(&info, &format!("cannot fetch the blob: {e}"))
                    });
                }
            },
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
    let mut warnings = Vec::new();
    let mut file_findings = Vec::new();
    let mut keys = Vec::new();
    let mut vendors = Vec::new();
    for r in results {
        whiteouts.extend(r.whiteouts);
        incomplete.extend(r.incomplete);
        warnings.extend(r.warnings);
        file_findings.extend(r.findings);
        keys.extend(r.keys);
        vendors.push(r.vendor);
    }
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
    vendor::apply(
        &mut file_findings,
        &keys,
        &vendors,
        &|layer, path| layer::deleted_later(layer, path, &whiteouts),
        &mut warnings,
    );
    drop(vendors);
    incomplete.sort();
    warnings.sort();
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
        info_not_listed: budget.info_not_listed.load(Ordering::Relaxed),
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

/// File workers per layer: with one core to use (`--parallelism 1`) none — each layer's walk
/// scans its files itself — otherwise as many as the cores the scan may use, so one large
/// layer keeps them all busy (layers scanned side by side share the cores through the OS).
fn file_workers(parallelism: usize) -> usize {
    if parallelism > 1 { parallelism } else { 0 }
}

fn failed_layer(info: &LayerInfo, why: &str) -> LayerResult {
    LayerResult {
        incomplete: vec![format!("layer {} ({}): {why}", info.index, info.digest)],
        ..LayerResult::default()
    }
}
