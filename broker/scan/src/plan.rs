//! Planning: from a local source or a fetched manifest to the images to scan
//! ([`PlannedImage`]). Follows docker-archive `manifest.json` and OCI layouts (index → image
//! manifests, tags, platforms), checks each metadata blob against its digest, and attributes
//! each layer to its history step. Registries are planned in `registry`, with [`planned`].

use std::sync::Arc;

use crate::error::ScanError;
use crate::layer::LayerInfo;
use crate::manifest::{
    Descriptor, ImageConfig, Manifest, Platform, layer_history_steps, parse_config,
    parse_docker_manifest, parse_manifest, select_platforms,
};
use crate::options::PlatformChoice;
use crate::source::Source;
use crate::store::{Store, TarIndex};
use crate::util::{sha256_digest, verify_digest};

/// An image ready to scan: what its report will name it, its parsed config, and its layers.
#[derive(Debug)]
pub(crate) struct PlannedImage {
    /// Manifest digest, or for a docker-archive the config digest.
    pub digest: String,
    /// `manifest` or `config`: what [`PlannedImage::digest`] is the digest of.
    pub digest_kind: &'static str,
    /// Config digest.
    pub config_digest: String,
    /// The parsed config.
    pub config: ImageConfig,
    /// `os/arch[/variant]` when known.
    pub platform: Option<String>,
    /// Tags or reference names.
    pub names: Vec<String>,
    /// Each layer: where its blob is (a member name, a layout path or a registry digest),
    /// what the layer reader needs to know, and its size for progress.
    pub layers: Vec<(String, LayerInfo, u64)>,
}

/// Plans a local source (docker-archive, OCI layout directory or archive): its blob store and
/// the images to scan. Blocking I/O.
pub(crate) fn plan_local(
    source: &Source,
    platform: &PlatformChoice,
) -> Result<(Store, Vec<PlannedImage>), ScanError> {
    match source {
        Source::DockerArchive(path) => {
            let store = Store::Tar(Arc::new(TarIndex::build(path)?));
            let images = plan_docker_archive(&store)?;
            Ok((store, images))
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
            Ok((store, images))
        }
        Source::OciArchive { path, tag } => {
            let store = Store::Tar(Arc::new(TarIndex::build(path)?));
            let images = plan_oci(&store, tag.as_deref(), platform)?;
            Ok((store, images))
        }
        Source::Registry(_) => Err(ScanError::Internal("registry is not a local source".into())),
    }
}

fn plan_docker_archive(store: &Store) -> Result<Vec<PlannedImage>, ScanError> {
    let manifest = store.read_small("manifest.json")?;
    let entries = parse_docker_manifest(&manifest)
        .map_err(|e| ScanError::BadSource(format!("docker-archive: {e}")))?;
    if entries.is_empty() {
        return Err(ScanError::BadSource(
            "docker-archive: manifest.json lists no image".into(),
        ));
    }
    let mut out = Vec::new();
    for e in entries {
        let config_bytes = store.read_small(&e.config)?;
        let config_digest = sha256_digest(&config_bytes);
        let config = parse_config(&config_bytes)
            .map_err(|m| ScanError::BadSource(format!("docker-archive {}: {m}", e.config)))?;
        if config.diff_ids.len() != e.layers.len() {
            return Err(ScanError::BadSource(format!(
                "docker-archive: {} layers but the config lists {} diff_ids",
                e.layers.len(),
                config.diff_ids.len()
            )));
        }
        let steps = layer_history_steps(&config.history, e.layers.len());
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
                        // Always checked: a diff_id that is not a supported digest makes the
                        // layer incomplete, never unverified.
                        verify_decoded: Some(diff_id),
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
    let Manifest::Index { manifests } = parse_manifest(&index_bytes)
        .map_err(|e| ScanError::BadSource(format!("index.json: {e}")))?
    else {
        return Err(ScanError::BadSource(
            "index.json is not an image index".into(),
        ));
    };
    let mut top: Vec<Descriptor> = manifests;
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
    let chosen: Vec<Descriptor> = if top.iter().any(|d| d.platform.is_some()) {
        select_platforms(&top, platform)
            .map_err(ScanError::BadSource)?
            .into_iter()
            .cloned()
            .collect()
    } else {
        top
    };
    let fetch = |digest: &str| -> Result<Vec<u8>, ScanError> {
        let bytes = store.read_small(&Store::blob_path(digest)?)?;
        verify_digest(digest, &bytes).map_err(|e| ScanError::BadSource(format!("blob {e}")))?;
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
            &mut |digest, platform, m, config| {
                let layers = m
                    .iter()
                    .enumerate()
                    .map(|(i, l)| Ok((Store::blob_path(&l.digest)?, i, l.digest.clone(), l.size)))
                    .collect::<Result<Vec<_>, ScanError>>()?;
                out.push(planned(digest, platform, names.clone(), layers, config)?);
                Ok(())
            },
        )?;
    }
    Ok(out)
}

/// An image found: its manifest digest, platform, layers and (config digest, config bytes).
type Found<'a> = dyn FnMut(String, Option<String>, &[Descriptor], (String, Vec<u8>)) -> Result<(), ScanError>
    + 'a;

/// Follows a descriptor (index → image manifests) and reports each image.
fn resolve_oci(
    fetch: &dyn Fn(&str) -> Result<Vec<u8>, ScanError>,
    d: &Descriptor,
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
    match parse_manifest(&bytes).map_err(|e| ScanError::BadSource(format!("{}: {e}", d.digest)))? {
        Manifest::Index { manifests } => {
            for child in select_platforms(&manifests, platform).map_err(ScanError::BadSource)? {
                resolve_oci(fetch, child, platform, depth + 1, found)?;
            }
            Ok(())
        }
        Manifest::Image { config, layers } => {
            let config_bytes = fetch(&config.digest)?;
            found(
                d.digest.clone(),
                d.platform.as_ref().map(Platform::name),
                &layers,
                (config.digest, config_bytes),
            )
        }
    }
}

/// An image of a manifest (OCI layout or registry): parses its config and maps each layer to
/// the history step that made it. `layers` are (blob name, index, digest, size); `config` is
/// the config's descriptor digest (already verified against the bytes) and its bytes.
pub(crate) fn planned(
    digest: String,
    platform: Option<String>,
    names: Vec<String>,
    layers: Vec<(String, usize, String, u64)>,
    (config_digest, config_bytes): (String, Vec<u8>),
) -> Result<PlannedImage, ScanError> {
    let config = parse_config(&config_bytes)
        .map_err(|e| ScanError::BadSource(format!("image {digest}: {e}")))?;
    let steps = layer_history_steps(&config.history, layers.len());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_image_attributes_layers_to_history_and_checks_blob_digests() {
        let config = br#"{"architecture":"arm64","os":"linux","variant":"v8",
            "rootfs":{"type":"layers","diff_ids":["sha256:x","sha256:y"]},
            "history":[{"created_by":"base"},{"created_by":"ENV A=1","empty_layer":true},{"created_by":"COPY"}]}"#;
        let layer = |i: usize, c: char| {
            let d = format!("sha256:{}", c.to_string().repeat(64));
            (format!("blobs/{i}"), i, d, 10 * i as u64)
        };
        let img = planned(
            "sha256:m".into(),
            None,
            vec!["app:1".into()],
            vec![layer(0, 'a'), layer(1, 'b')],
            (sha256_digest(config), config.to_vec()),
        )
        .expect("valid config");
        assert_eq!(img.config_digest, sha256_digest(config));
        assert_eq!(
            (img.digest.as_str(), img.digest_kind),
            ("sha256:m", "manifest")
        );
        assert_eq!(
            img.platform.as_deref(),
            Some("linux/arm64/v8"),
            "from the config"
        );
        for (_, info, _) in &img.layers {
            assert_eq!(info.verify_raw.as_deref(), Some(info.digest.as_str()));
            assert_eq!(info.verify_decoded, None);
        }
        let digests: Vec<&str> = img.layers.iter().map(|l| l.1.digest.as_str()).collect();
        assert_eq!(
            digests,
            vec![
                format!("sha256:{}", "a".repeat(64)),
                format!("sha256:{}", "b".repeat(64))
            ]
        );
        let layers: Vec<(&str, usize, Option<usize>, u64)> = img
            .layers
            .iter()
            .map(|(name, info, size)| (name.as_str(), info.index, info.history_step, *size))
            .collect();
        assert_eq!(
            layers,
            vec![("blobs/0", 0, Some(0), 0), ("blobs/1", 1, Some(2), 10)]
        );
        let given = planned(
            "sha256:m".into(),
            Some("linux/amd64".into()),
            vec![],
            vec![],
            ("sha512:c".into(), config.to_vec()),
        )
        .expect("valid config");
        assert_eq!(
            given.platform.as_deref(),
            Some("linux/amd64"),
            "the index's wins"
        );
        assert_eq!(given.config_digest, "sha512:c", "the descriptor's digest");
        let e = planned(
            "sha256:m".into(),
            None,
            vec![],
            vec![],
            ("sha256:c".into(), b"{".to_vec()),
        )
        .expect_err("not JSON");
        assert!(e.to_string().contains("image sha256:m"), "{e}");
    }
}
