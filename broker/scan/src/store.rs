//! Blob storage of local sources: an OCI layout directory, or an uncompressed tar file
//! (docker-archive, oci-archive) read through a table of its members. Members are opened by
//! seeking; nothing is ever extracted to disk, and links between members resolve inside the
//! archive only.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::ScanError;
use crate::manifest::MAX_METADATA_BYTES;
use crate::tar::{EntryKind, TarLimits, TarReader};
use crate::util::{Compression, detect, normalize_path, resolve_dotdot, valid_digest};

/// Most entries read from an outer archive's table of contents.
pub const MAX_ARCHIVE_MEMBERS: usize = 200_000;

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
        if matches!(detect(&magic[..n]), Compression::Gzip | Compression::Zstd) {
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
                normalize_path(&h.path),
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
        let mut name = normalize_path(name);
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
                        normalize_path(target)
                    } else {
                        let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                        resolve_dotdot(&format!("{dir}/{target}"))
                    };
                }
                (EntryKind::Hardlink, Some(target)) => name = normalize_path(target),
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
        self.members.contains_key(&normalize_path(name))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_paths_come_from_valid_digests_only() {
        let hex = "0".repeat(64);
        assert_eq!(
            Store::blob_path(&format!("sha256:{hex}")).expect("valid"),
            format!("blobs/sha256/{hex}")
        );
        assert!(Store::blob_path("sha256:../../x").is_err());
        assert!(Store::blob_path("blobs/sha256/x").is_err());
    }
}
