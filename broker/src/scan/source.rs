//! Where images come from: `docker-archive:` tarballs (including buildah's variant), OCI image
//! layouts (`oci:` directory, `oci-archive:` tar) and registries (`registry://`, through
//! `oci-client`). Parsing of manifests and configs is pure and bounded; reading blobs is the
//! only I/O, and nothing is ever extracted to disk.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::ScanError;
use super::tar::{EntryKind, TarLimits, TarReader};

/// Largest manifest, index, config or `manifest.json` accepted, in bytes.
pub const MAX_METADATA_BYTES: u64 = 4 << 20;
/// Most entries read from an outer archive's table of contents.
pub const MAX_ARCHIVE_MEMBERS: usize = 200_000;
/// Most layers per image.
pub const MAX_LAYERS: usize = 1000;

/// An image source, parsed from the forms in `docs/SCANNER.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// `docker-archive:PATH` — `docker save`, `skopeo`/`buildah push docker-archive:`.
    DockerArchive(PathBuf),
    /// `oci:DIR[:TAG]` — an OCI image layout directory.
    OciDir {
        /// The layout directory.
        path: PathBuf,
        /// `org.opencontainers.image.ref.name` to select; all images when absent.
        tag: Option<String>,
    },
    /// `oci-archive:PATH[:TAG]` — an OCI image layout in a tar file.
    OciArchive {
        /// The tar file.
        path: PathBuf,
        /// Reference name to select; all images when absent.
        tag: Option<String>,
    },
    /// `registry://HOST[:PORT]/REPO:TAG` or `registry://HOST[:PORT]/REPO@sha256:...`.
    Registry(String),
}

impl Source {
    /// Parses a source string; the error says which forms exist.
    pub fn parse(s: &str) -> Result<Source, ScanError> {
        let bad = |why: &str| {
            ScanError::BadSource(format!(
                "`{s}`: {why}; use docker-archive:PATH, oci:DIR[:TAG], oci-archive:PATH[:TAG] or registry://HOST/REPO:TAG|@DIGEST"
            ))
        };
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(bad("empty path"));
            }
            return Ok(Source::DockerArchive(PathBuf::from(rest)));
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, tag) = split_tag(rest);
            if path.is_empty() {
                return Err(bad("empty path"));
            }
            return Ok(Source::OciArchive {
                path: PathBuf::from(path),
                tag,
            });
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = split_tag(rest);
            if path.is_empty() {
                return Err(bad("empty path"));
            }
            return Ok(Source::OciDir {
                path: PathBuf::from(path),
                tag,
            });
        }
        if let Some(rest) = s.strip_prefix("registry://") {
            let (host, repo) = rest.split_once('/').ok_or_else(|| bad("no repository"))?;
            if host.is_empty() || repo.is_empty() {
                return Err(bad("no host or repository"));
            }
            if !repo.contains('@') && !repo.rsplit('/').next().is_some_and(|l| l.contains(':')) {
                return Err(bad("no tag or digest (add :TAG or @sha256:...)"));
            }
            return Ok(Source::Registry(rest.to_owned()));
        }
        Err(bad("unknown source form"))
    }

    /// The source as text (never includes credentials).
    pub fn display(&self) -> String {
        match self {
            Source::DockerArchive(p) => format!("docker-archive:{}", p.display()),
            Source::OciDir { path, tag } => format!(
                "oci:{}{}",
                path.display(),
                tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default()
            ),
            Source::OciArchive { path, tag } => format!(
                "oci-archive:{}{}",
                path.display(),
                tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default()
            ),
            Source::Registry(r) => format!("registry://{r}"),
        }
    }
}

/// `path:tag` where the tag holds no `/` (so `./a:b/c` stays a path).
fn split_tag(s: &str) -> (&str, Option<String>) {
    match s.rsplit_once(':') {
        Some((p, t)) if !t.is_empty() && !t.contains('/') && !p.is_empty() => {
            (p, Some(t.to_owned()))
        }
        _ => (s, None),
    }
}

/// Which platforms of an image index to scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PlatformChoice {
    /// `linux/<this machine's architecture>`; an index with a single image is scanned
    /// whatever its platform.
    #[default]
    Host,
    /// `os/arch[/variant]`.
    Exact(String),
    /// Every image in the index (attestation manifests excepted).
    All,
}

impl PlatformChoice {
    /// The host platform string.
    pub fn host() -> String {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        format!("linux/{arch}")
    }
}

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

/// Is this a well-formed digest (`sha256:` + 64 hex or `sha512:` + 128 hex, lowercase)?
pub fn valid_digest(d: &str) -> bool {
    let ok = |hex: &str, n: usize| {
        hex.len() == n
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match d.split_once(':') {
        Some(("sha256", h)) => ok(h, 64),
        Some(("sha512", h)) => ok(h, 128),
        _ => false,
    }
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
        if valid_digest(&d.digest) {
            Ok(())
        } else {
            Err(format!(
                "descriptor digest `{}` is not a valid sha256/sha512 digest",
                d.digest.chars().take(80).collect::<String>()
            ))
        }
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

/// A member of an outer archive.
#[derive(Debug, Clone)]
struct Member {
    offset: u64,
    size: u64,
    kind: EntryKind,
    link: Option<String>,
}

/// Table of contents of an uncompressed tar file, for random access to its members.
#[derive(Debug)]
pub(crate) struct TarIndex {
    path: PathBuf,
    members: HashMap<String, Member>,
}

impl TarIndex {
    /// Reads the headers of a tar file, seeking over the data.
    pub(crate) fn build(path: &Path) -> Result<TarIndex, ScanError> {
        let f = File::open(path)
            .map_err(|e| ScanError::Io(format!("cannot open {}: {e}", path.display())))?;
        let mut br = BufReader::with_capacity(64 << 10, f);
        let mut magic = [0u8; 6];
        let n = br
            .read(&mut magic)
            .map_err(|e| ScanError::Io(format!("{}: {e}", path.display())))?;
        if matches!(
            super::layer::detect(&magic[..n]),
            super::layer::Compression::Gzip | super::layer::Compression::Zstd
        ) {
            return Err(ScanError::BadSource(format!(
                "{} is compressed; decompress it first (e.g. `gunzip -k`), archives are read by seeking",
                path.display()
            )));
        }
        br.seek(SeekFrom::Start(0))
            .map_err(|e| ScanError::Io(e.to_string()))?;
        let mut tar = TarReader::new(br, TarLimits::default());
        let mut members = HashMap::new();
        loop {
            let h = tar.next_entry_seeking().map_err(|e| {
                ScanError::BadSource(format!(
                    "{} is not a readable tar archive: {e}",
                    path.display()
                ))
            })?;
            let Some(h) = h else { break };
            if members.len() >= MAX_ARCHIVE_MEMBERS {
                return Err(ScanError::BadSource(format!(
                    "{} has more than {MAX_ARCHIVE_MEMBERS} members",
                    path.display()
                )));
            }
            members.insert(
                super::layer::normalize_path(&h.path),
                Member {
                    offset: h.data_offset,
                    size: h.size,
                    kind: h.kind,
                    link: h.link,
                },
            );
        }
        Ok(TarIndex {
            path: path.to_owned(),
            members,
        })
    }

    /// Resolves symlinks and hard links (bounded hops) to a regular member.
    fn resolve(&self, name: &str) -> Result<&Member, ScanError> {
        let mut name = super::layer::normalize_path(name);
        for _ in 0..8 {
            let m = self.members.get(&name).ok_or_else(|| {
                ScanError::BadSource(format!(
                    "{}: member `{name}` is missing",
                    self.path.display()
                ))
            })?;
            match (m.kind, &m.link) {
                (EntryKind::File, _) => return Ok(m),
                (EntryKind::Symlink, Some(target)) => {
                    name = if target.starts_with('/') {
                        super::layer::normalize_path(target)
                    } else {
                        let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                        resolve_dotdot(&format!("{dir}/{target}"))
                    };
                }
                (EntryKind::Hardlink, Some(target)) => name = super::layer::normalize_path(target),
                _ => {
                    return Err(ScanError::BadSource(format!(
                        "{}: member `{name}` is not a file",
                        self.path.display()
                    )));
                }
            }
        }
        Err(ScanError::BadSource(format!(
            "{}: too many links resolving `{name}` (a link loop?)",
            self.path.display()
        )))
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.members
            .contains_key(&super::layer::normalize_path(name))
    }
}

fn resolve_dotdot(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// Blob storage of a local source.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    /// An OCI layout directory.
    Dir(PathBuf),
    /// An uncompressed tar file.
    Tar(Arc<TarIndex>),
}

impl Store {
    /// Opens a member or file by its path inside the layout/archive.
    pub(crate) fn open(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64), ScanError> {
        match self {
            Store::Dir(root) => {
                let p = root.join(name);
                let f = File::open(&p)
                    .map_err(|e| ScanError::Io(format!("cannot open {}: {e}", p.display())))?;
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                Ok((Box::new(BufReader::with_capacity(256 << 10, f)), size))
            }
            Store::Tar(index) => {
                let m = index.resolve(name)?;
                let mut f = File::open(&index.path).map_err(|e| {
                    ScanError::Io(format!("cannot open {}: {e}", index.path.display()))
                })?;
                f.seek(SeekFrom::Start(m.offset))
                    .map_err(|e| ScanError::Io(e.to_string()))?;
                Ok((
                    Box::new(BufReader::with_capacity(256 << 10, f).take(m.size)),
                    m.size,
                ))
            }
        }
    }

    /// Reads a small member (manifest, config), bounded by [`MAX_METADATA_BYTES`].
    pub(crate) fn read_small(&self, name: &str) -> Result<Vec<u8>, ScanError> {
        let (r, size) = self.open(name)?;
        if size > MAX_METADATA_BYTES {
            return Err(ScanError::BadSource(format!(
                "`{name}` is {size} bytes; metadata over {MAX_METADATA_BYTES} bytes is refused"
            )));
        }
        let mut out = Vec::new();
        r.take(MAX_METADATA_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| ScanError::Io(format!("reading `{name}`: {e}")))?;
        if out.len() as u64 > MAX_METADATA_BYTES {
            return Err(ScanError::BadSource(format!(
                "`{name}` exceeds {MAX_METADATA_BYTES} bytes"
            )));
        }
        Ok(out)
    }

    /// Path of a blob in an OCI layout, from a validated digest.
    pub(crate) fn blob_path(digest: &str) -> Result<String, ScanError> {
        if !valid_digest(digest) {
            return Err(ScanError::BadSource(format!(
                "invalid digest `{}`",
                digest.chars().take(80).collect::<String>()
            )));
        }
        let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        Ok(format!("blobs/{alg}/{hex}"))
    }

    /// Size of a member or file (0 when unknown); for progress only.
    pub(crate) fn size(&self, name: &str) -> u64 {
        match self {
            Store::Dir(root) => std::fs::metadata(root.join(name))
                .map(|m| m.len())
                .unwrap_or(0),
            Store::Tar(index) => index.resolve(name).map(|m| m.size).unwrap_or(0),
        }
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        match self {
            Store::Dir(root) => root.join(name).exists(),
            Store::Tar(index) => index.has(name),
        }
    }
}

impl<R: Read + Seek> TarReader<R> {
    /// Like [`TarReader::next_entry`] but seeks over the previous entry's data.
    pub fn next_entry_seeking(
        &mut self,
    ) -> Result<Option<super::tar::EntryHeader>, super::tar::TarError> {
        self.seek_past_data()?;
        self.next_entry()
    }
}

/// SHA-256 digest string of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    format!("sha256:{}", hex::encode(d.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_forms() {
        assert_eq!(
            Source::parse("docker-archive:/x/img.tar").ok(),
            Some(Source::DockerArchive("/x/img.tar".into()))
        );
        assert_eq!(
            Source::parse("oci:./layout:v1").ok(),
            Some(Source::OciDir {
                path: "./layout".into(),
                tag: Some("v1".into())
            })
        );
        assert_eq!(
            Source::parse("oci:./lay:out/x").ok(),
            Some(Source::OciDir {
                path: "./lay:out/x".into(),
                tag: None
            })
        );
        assert_eq!(
            Source::parse("oci-archive:img.oci.tar").ok(),
            Some(Source::OciArchive {
                path: "img.oci.tar".into(),
                tag: None
            })
        );
        assert_eq!(
            Source::parse("registry://127.0.0.1:5000/app:1").ok(),
            Some(Source::Registry("127.0.0.1:5000/app:1".into()))
        );
        assert!(Source::parse(&format!("registry://h/app@sha256:{}", "a".repeat(64))).is_ok());
        for bad in [
            "registry://127.0.0.1:5000/app",
            "registry://h",
            "docker:x",
            "oci:",
            "/tmp/x.tar",
        ] {
            let e = Source::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("docker-archive:PATH"), "{e}");
        }
    }

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

    #[test]
    fn digests_are_validated() {
        assert!(valid_digest(&format!("sha256:{}", "0".repeat(64))));
        assert!(!valid_digest(&format!("sha256:{}", "0".repeat(63))));
        assert!(!valid_digest(&format!("sha256:{}/..", "0".repeat(62))));
        assert!(!valid_digest("md5:abc"));
        assert!(Store::blob_path("sha256:../../x").is_err());
    }

    #[test]
    fn dotdot_resolution() {
        assert_eq!(resolve_dotdot("a/b/../c.tar"), "a/c.tar");
        assert_eq!(resolve_dotdot("../../x"), "x");
    }
}
