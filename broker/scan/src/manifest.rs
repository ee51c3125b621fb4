//! Image metadata, parsed and bounded: descriptors, manifests and indexes (OCI and Docker v2
//! schema 2), image configs and their history, docker-archive `manifest.json`, and the choice
//! of an index's platforms. Pure functions over bytes; nothing here reads a file or the network.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::options::PlatformChoice;
use crate::util::DigestAlgorithm;

/// Largest manifest, index, config or `manifest.json` accepted, in bytes.
pub const MAX_METADATA_BYTES: u64 = 4 << 20;
/// Most layers per image.
pub const MAX_LAYERS: usize = 1000;

/// A content descriptor.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type (not trusted for compression).
    #[serde(default)]
    pub media_type: String,
    /// `algorithm:hex`.
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Platform, in an index.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A platform in an index.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `v8`.
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`.
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// A parsed manifest or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An image manifest (OCI or Docker v2 schema 2).
    Image {
        /// Config blob.
        config: Descriptor,
        /// Layer blobs, base first.
        layers: Vec<Descriptor>,
    },
    /// An image index or Docker manifest list.
    Index {
        /// Child manifests.
        manifests: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// Parses an image manifest or index. Bounded: refuses more than [`MAX_METADATA_BYTES`].
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(format!(
            "manifest of {} bytes exceeds {MAX_METADATA_BYTES}",
            bytes.len()
        ));
    }
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not valid JSON: {e}"))?;
    if raw.schema_version == Some(1) {
        return Err("Docker schema 1 manifests are not supported (push the image again with a current tool)".into());
    }
    let check = |d: &Descriptor| {
        DigestAlgorithm::of(&d.digest)
            .map(|_| ())
            .map_err(|e| format!("descriptor {e}"))
    };
    if let Some(manifests) = raw.manifests {
        manifests.iter().try_for_each(check)?;
        return Ok(Manifest::Index { manifests });
    }
    match (raw.config, raw.layers) {
        (Some(config), Some(layers)) => {
            check(&config)?;
            layers.iter().try_for_each(check)?;
            if layers.len() > MAX_LAYERS {
                return Err(format!("{} layers exceeds {MAX_LAYERS}", layers.len()));
            }
            Ok(Manifest::Image { config, layers })
        }
        _ => Err("neither an image manifest (config + layers) nor an index (manifests)".into()),
    }
}
/// One history entry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The command that made the step.
    #[serde(default)]
    pub created_by: Option<String>,
    /// The step made no layer.
    #[serde(default)]
    pub empty_layer: bool,
}

/// The parts of an image config the scanner reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// History, oldest first.
    pub history: Vec<HistoryEntry>,
    /// `rootfs.diff_ids`.
    pub diff_ids: Vec<String>,
    /// `os/arch[/variant]`.
    pub platform: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawRunConfig>,
    #[serde(default)]
    history: Option<Vec<HistoryEntry>>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    variant: Option<String>,
}

/// Parses an image config. Bounded: refuses more than [`MAX_METADATA_BYTES`].
pub fn parse_config(bytes: &[u8]) -> Result<ImageConfig, String> {
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(format!(
            "config of {} bytes exceeds {MAX_METADATA_BYTES}",
            bytes.len()
        ));
    }
    let raw: RawConfig = serde_json::from_slice(bytes)
        .map_err(|e| format!("image config is not valid JSON: {e}"))?;
    let rc = raw.config.unwrap_or_default();
    let platform = match (&raw.os, &raw.architecture) {
        (Some(os), Some(arch)) => Some(
            Platform {
                os: os.clone(),
                architecture: arch.clone(),
                variant: raw.variant.clone(),
            }
            .name(),
        ),
        _ => None,
    };
    Ok(ImageConfig {
        env: rc.env.unwrap_or_default(),
        labels: rc.labels.unwrap_or_default(),
        history: raw.history.unwrap_or_default(),
        diff_ids: raw.rootfs.map(|r| r.diff_ids).unwrap_or_default(),
        platform,
    })
}

/// Maps each layer index to the history step that created it (steps with `empty_layer`
/// create none). Pure.
pub fn layer_history_steps(history: &[HistoryEntry], layers: usize) -> Vec<Option<usize>> {
    let steps: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.empty_layer)
        .map(|(i, _)| i)
        .collect();
    (0..layers).map(|l| steps.get(l).copied()).collect()
}

/// Is this index entry an attestation or other non-image artifact?
fn is_attestation(d: &Descriptor) -> bool {
    d.annotations.contains_key("vnd.docker.reference.type")
        || d.platform
            .as_ref()
            .is_some_and(|p| p.os == "unknown" || p.architecture == "unknown")
}

/// Picks the index entries to scan. Pure.
pub fn select_platforms<'a>(
    manifests: &'a [Descriptor],
    choice: &PlatformChoice,
) -> Result<Vec<&'a Descriptor>, String> {
    let images: Vec<&Descriptor> = manifests.iter().filter(|d| !is_attestation(d)).collect();
    if images.is_empty() {
        return Err("the index lists no image manifests".into());
    }
    let available = || {
        images
            .iter()
            .map(|d| {
                d.platform
                    .as_ref()
                    .map(Platform::name)
                    .unwrap_or_else(|| "unknown".into())
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let matches = |want: &str| -> Vec<&'a Descriptor> {
        images
            .iter()
            .copied()
            .filter(|d| {
                d.platform.as_ref().is_some_and(|p| {
                    let name = p.name();
                    name == want
                        || (want.matches('/').count() == 1
                            && format!("{}/{}", p.os, p.architecture) == want)
                })
            })
            .collect()
    };
    match choice {
        PlatformChoice::All => Ok(images),
        PlatformChoice::Host => {
            if images.len() == 1 {
                return Ok(images);
            }
            let host = PlatformChoice::host();
            let m = matches(&host);
            if m.is_empty() {
                Err(format!(
                    "no image for the host platform {host}; available: {}; use --platform OS/ARCH or --all-platforms",
                    available()
                ))
            } else {
                Ok(m.into_iter().take(1).collect())
            }
        }
        PlatformChoice::Exact(want) => {
            let m = matches(want);
            if m.is_empty() {
                Err(format!(
                    "no image for platform {want}; available: {}",
                    available()
                ))
            } else {
                Ok(m.into_iter().take(1).collect())
            }
        }
    }
}

/// One image of a `docker save` archive's `manifest.json`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct DockerArchiveEntry {
    /// Config file inside the archive.
    pub config: String,
    /// Tags.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Layer files inside the archive, base first.
    pub layers: Vec<String>,
}

/// Parses a docker-archive `manifest.json`. Bounded.
pub fn parse_docker_manifest(bytes: &[u8]) -> Result<Vec<DockerArchiveEntry>, String> {
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(format!(
            "manifest.json of {} bytes exceeds {MAX_METADATA_BYTES}",
            bytes.len()
        ));
    }
    let v: Vec<DockerArchiveEntry> = serde_json::from_slice(bytes)
        .map_err(|e| format!("manifest.json is not a docker-archive manifest: {e}"))?;
    if v.iter().any(|e| e.layers.len() > MAX_LAYERS) {
        return Err(format!("more than {MAX_LAYERS} layers"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(d: char, platform: Option<(&str, &str)>) -> Descriptor {
        Descriptor {
            media_type: String::new(),
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            size: 1,
            platform: platform.map(|(os, arch)| Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn platform_selection() {
        let host_arch = PlatformChoice::host();
        let (_, arch) = host_arch.split_once('/').expect("os/arch");
        let other = if arch == "amd64" { "arm64" } else { "amd64" };
        let idx = vec![
            desc('a', Some(("linux", arch))),
            desc('b', Some(("linux", other))),
            desc('c', Some(("unknown", "unknown"))),
        ];
        assert_eq!(
            select_platforms(&idx, &PlatformChoice::Host)
                .expect("host")
                .len(),
            1
        );
        assert_eq!(
            select_platforms(&idx, &PlatformChoice::All)
                .expect("all")
                .len(),
            2
        );
        let pick = select_platforms(&idx, &PlatformChoice::Exact(format!("linux/{other}")))
            .expect("exact");
        assert_eq!(pick[0].digest, idx[1].digest);
        let e =
            select_platforms(&idx, &PlatformChoice::Exact("linux/s390x".into())).expect_err("none");
        assert!(e.contains("available"), "{e}");
        let single = vec![desc('d', Some(("linux", "riscv64")))];
        assert_eq!(
            select_platforms(&single, &PlatformChoice::Host)
                .expect("single")
                .len(),
            1
        );
    }

    #[test]
    fn manifests_and_configs() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"sha256:{}","size":2}},"layers":[{{"digest":"sha256:{}","size":3,"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}}]}}"#,
            "a".repeat(64),
            "b".repeat(64)
        );
        assert!(
            matches!(parse_manifest(m.as_bytes()), Ok(Manifest::Image { layers, .. }) if layers.len() == 1)
        );
        let bad = m.replace(&"b".repeat(64), "../../etc/passwd");
        assert!(parse_manifest(bad.as_bytes()).is_err());
        assert!(
            parse_manifest(br#"{"schemaVersion":1}"#)
                .expect_err("schema1")
                .contains("schema 1")
        );
        assert!(parse_manifest(&vec![b' '; (MAX_METADATA_BYTES + 1) as usize]).is_err());
        let c = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Labels":{"k":"v"}},
            "rootfs":{"type":"layers","diff_ids":["sha256:x"]},
            "history":[{"created_by":"a"},{"created_by":"ENV","empty_layer":true},{"created_by":"b"}]}"#;
        let cfg = parse_config(c).expect("config");
        assert_eq!(cfg.env, vec!["A=1"]);
        assert_eq!(cfg.platform.as_deref(), Some("linux/amd64"));
        assert_eq!(
            layer_history_steps(&cfg.history, 3),
            vec![Some(0), Some(2), None]
        );
    }
}
