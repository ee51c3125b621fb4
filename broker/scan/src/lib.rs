//! # lanyard-scan
//!
//! The image scanner: finds credentials baked into container images — in the config (`Env`,
//! labels), in the history (`created_by`, where ARG values appear), and in every file of every
//! layer, including files a later layer deleted. The `lanyard-broker scan` command and the
//! image gate call [`scan`]. `docs/SCANNER.md` documents sources, rules, the JSON schema and
//! exit codes.
//!
//! Secrets never leave this crate: findings carry a redacted preview and a fingerprint only.
//!
//! # Layout
//! From the top down: each module imports only modules listed after it, so none imports one
//! that imports it back; none imports this file (it only declares them and re-exports).
//! - `image` (private): scanning one planned image — its config, then its layers in parallel on
//!   blocking threads against one budget, from a local store or a registry — and the merge
//!   into an [`ImageReport`].
//! - `registry` (private): the registry client through `oci-client` — authentication (the
//!   token realm checked before credentials go to it), manifests and configs bounded and
//!   checked against their digests, layer blobs streamed.
//! - `plan` (private): from a local source or a fetched manifest to the images to scan;
//!   docker-archive and OCI layout planning, layers attributed to history steps.
//! - [`config`]: secrets in the image config — `Env`, labels, `history[].created_by`.
//! - [`layer`]: one layer — decompression chosen by magic bytes (gzip, zstd, plain), the tar
//!   walk, chunked content scanning, nested archives, whiteouts, bounds, digest checks; hands
//!   package records, symlinks and the digests of files with findings to `vendor`.
//! - [`vendor`]: package ownership — dpkg, Python `RECORD`, RPM and apk records (bounded
//!   parsers), the image's final view through its symlinks, findings in pristine package
//!   files lowered or marked, `.pyc` repeats of their source counted once.
//! - [`store`]: local blob stores — an OCI layout directory, or a tar file read by seeking.
//! - [`manifest`]: manifests, indexes, configs and docker-archive `manifest.json`, parsed and
//!   bounded (pure); the choice of an index's platforms.
//! - [`options`]: how to scan — [`Limits`], [`PlatformChoice`], [`RegistryAuth`],
//!   [`CancelToken`], [`Progress`], gathered in [`ScanOptions`].
//! - [`allow`]: the [`Allowlist`].
//! - [`report`]: [`Finding`] (one [`Finding::new`] for every rule), preview and fingerprint,
//!   the [`Verdict`], the [`Report`] and its human / JSON / SARIF renderings.
//! - [`rules`]: provider rules, keyword prefilter, entropy, placeholder filter, file kinds,
//!   the secret-name rule, the [`rule_catalog`]; its submodules hold the token families
//!   (`rules::families`), the structured-assignment detector (`rules::assign`) and the
//!   filler/reference filter (`rules::placeholder`).
//! - [`source`]: the [`Source`] forms and their parsing.
//! - [`error`]: [`ScanError`], why a scan could not run at all.
//! - [`tar`]: the bounded streaming tar reader.
//! - [`util`]: leaf helpers — magic-byte detection, path normalisation, digests (sha256 and
//!   sha512 verified, others refused); it imports nothing from the crate.

pub mod allow;
pub mod config;
pub mod error;
mod image;
pub mod layer;
pub mod manifest;
pub mod options;
mod plan;
mod registry;
pub mod report;
pub mod rules;
pub mod source;
pub mod store;
pub mod tar;
pub mod util;
pub mod vendor;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use allow::Allowlist;
pub use error::ScanError;
pub use options::{CancelToken, Limits, PlatformChoice, Progress, RegistryAuth, ScanOptions};
pub use report::{Finding, ImageReport, Location, Report, Verdict};
pub use rules::rule_catalog;
pub use source::Source;

use image::Blobs;
use rules::RuleSet;

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

/// Resolves a registry reference (`HOST/REPO:TAG` or `HOST/REPO@DIGEST`, without the
/// `registry://` scheme) to the digest of the manifest or index it names now, with one
/// manifest fetch. Tags move; the digest is what a verdict is keyed by.
pub async fn resolve_digest(reference: &str, opts: &ScanOptions) -> Result<String, ScanError> {
    let fut = registry::resolve(reference, opts);
    match opts.timeout {
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .map_err(|_| ScanError::Timeout(t))?,
        None => fut.await,
    }
}

/// Plans a local source without reading its layers: the outer archive's table of contents,
/// `manifest.json` or `index.json`, tag and platform selection, and the digest check of every
/// manifest and config. Returns each image's digest and names. Blocking; for the
/// `scan_archive` fuzz target, not a stable API.
#[doc(hidden)]
pub fn plan_only(
    source: &Source,
    platform: &PlatformChoice,
) -> Result<Vec<(String, Vec<String>)>, ScanError> {
    let (_, images) = plan::plan_local(source, platform)?;
    Ok(images.into_iter().map(|i| (i.digest, i.names)).collect())
}

/// Stops blocking layer readers when the scan future is dropped or times out.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn scan_inner(
    source: &Source,
    opts: &ScanOptions,
    internal: Arc<AtomicBool>,
) -> Result<Report, ScanError> {
    let rules = RuleSet::builtin();
    let mut resolved = None;
    let (blobs, images) = match source {
        Source::Registry(r) => {
            let (remote, images, digest) = registry::plan(r, opts).await?;
            resolved = Some(digest);
            (Blobs::Registry(remote), images)
        }
        local => {
            let local = local.clone();
            let platform = opts.platform.clone();
            let (store, images) =
                tokio::task::spawn_blocking(move || plan::plan_local(&local, &platform))
                    .await
                    .map_err(|e| ScanError::Internal(e.to_string()))??;
            (Blobs::Local(store), images)
        }
    };
    let mut reports = Vec::new();
    for img in images {
        if opts.cancel.is_cancelled() {
            return Err(ScanError::Cancelled);
        }
        reports.push(image::scan_image(img, &blobs, opts, rules, &internal).await?);
    }
    Ok(Report {
        schema_version: report::SCHEMA_VERSION,
        scanner_version: env!("CARGO_PKG_VERSION").to_owned(),
        ruleset_version: rules.version.clone(),
        source: source.display(),
        resolved_digest: resolved,
        verdict: Report::combine(&reports),
        images: reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
