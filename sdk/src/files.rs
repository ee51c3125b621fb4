//! [`FileSource`]: credentials the sidecar wrote, for applications that only read files.
//!
//! Reads are bounded and confined to the secrets directory (no absolute paths, no `..`, no
//! symbolic links on the way). [`FileSource::watch`] reports changes through inotify (the
//! `notify` crate): the sidecar writes atomically (temp file, then rename), so a change
//! event means a complete new file is in place; its own temp files are not reported.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use notify::Watcher as _;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::Secret;
use crate::wire::Credential;

/// Environment variable: the secrets directory (default [`DEFAULT_DIR`]).
pub const ENV_SECRETS_DIR: &str = "LANYARD_SECRETS_DIR";
/// The secrets directory when none is configured.
pub const DEFAULT_DIR: &str = "/run/secrets";
/// Largest file read, in bytes.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Change events buffered before older ones are dropped (the files are still current).
const EVENT_BUFFER: usize = 256;

/// Errors of the file source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The relative path is absolute, leaves the directory or is empty.
    #[error("path {0:?} is not a plain relative path inside the secrets directory")]
    BadPath(String),
    /// Reading failed (missing, permission, a symbolic link on the way).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`] or not UTF-8.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why (never the contents).
        why: String,
    },
    /// The directory cannot be watched.
    #[error("cannot watch {path}: {why}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// A change in the secrets directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEvent {
    /// The changed file, relative to the secrets directory (e.g. `app/token`).
    pub path: PathBuf,
    /// Whether it is gone (removed, or renamed away).
    pub removed: bool,
}

/// Reads and watches a secrets directory.
#[derive(Debug, Clone)]
pub struct FileSource {
    dir: PathBuf,
}

impl FileSource {
    /// A source over `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// A source over `$LANYARD_SECRETS_DIR`, or [`DEFAULT_DIR`].
    pub fn from_env() -> Self {
        Self::new(
            std::env::var(ENV_SECRETS_DIR)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_DIR.to_owned()),
        )
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn resolve(&self, rel: &str) -> Result<PathBuf, FileError> {
        let p = Path::new(rel);
        let plain = !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(FileError::BadPath(rel.to_owned()));
        }
        // No symbolic link between the directory and the file.
        let mut cur = self.dir.clone();
        for c in p.components() {
            cur.push(c);
            if std::fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(FileError::Io {
                    path: cur,
                    source: std::io::Error::other("is a symbolic link; not followed"),
                });
            }
        }
        Ok(cur)
    }

    /// Reads `rel` (e.g. `app/token`) as a secret, bounded to [`MAX_FILE_BYTES`].
    pub fn read(&self, rel: &str) -> Result<Secret, FileError> {
        let path = self.resolve(rel)?;
        let io = |source| FileError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        let mut buf = Zeroizing::new(Vec::new());
        file.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
        if buf.len() > MAX_FILE_BYTES {
            return Err(FileError::Invalid {
                path,
                why: format!("larger than {} KiB", MAX_FILE_BYTES / 1024),
            });
        }
        let text = std::str::from_utf8(&buf).map_err(|_| FileError::Invalid {
            path: path.clone(),
            why: "not UTF-8 text".to_owned(),
        })?;
        Ok(Secret::new(text))
    }

    /// Reads the default layout's `ROLE.json` as a [`Credential`].
    pub fn credential(&self, role: &str) -> Result<Credential, FileError> {
        let rel = format!("{role}.json");
        let text = self.read(&rel)?;
        let path = self.dir.join(&rel);
        #[derive(serde::Deserialize)]
        struct RoleFile {
            role: String,
            kind: String,
            expires_at: String,
            refresh_after: String,
            lease_id: String,
            #[serde(default)]
            ttl_seconds: u64,
            data: std::collections::BTreeMap<String, Secret>,
        }
        let f: RoleFile = serde_json::from_str(text.expose()).map_err(|e| FileError::Invalid {
            path,
            why: format!(
                "not a lanyard credential file (line {} column {})",
                e.line(),
                e.column()
            ),
        })?;
        Ok(Credential {
            role: f.role,
            kind: f.kind,
            data: f.data,
            expires_at: f.expires_at,
            refresh_after: f.refresh_after,
            ttl_seconds: f.ttl_seconds,
            lease_id: f.lease_id,
            ttl_clamped: false,
        })
    }

    /// Watches the directory (recursively) and returns a stream of changes. Needs a Tokio
    /// runtime; dropping the stream stops watching.
    pub fn watch(&self) -> Result<FileWatch, FileError> {
        let werr = |why: String| FileError::Watch {
            path: self.dir.clone(),
            why,
        };
        let root = std::fs::canonicalize(&self.dir).map_err(|e| werr(e.to_string()))?;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let base = root.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            use notify::EventKind;
            use notify::event::{ModifyKind, RenameMode};
            let removed_kind = match ev.kind {
                EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => false,
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                    true
                }
                EventKind::Modify(ModifyKind::Name(_)) | EventKind::Modify(ModifyKind::Any) => {
                    false
                }
                _ => return,
            };
            let both = matches!(
                ev.kind,
                EventKind::Modify(ModifyKind::Name(RenameMode::Both))
            );
            for (i, p) in ev.paths.iter().enumerate() {
                let Ok(rel) = p.strip_prefix(&base) else {
                    continue;
                };
                // The sidecar's temp files (and other hidden files) are not news.
                let hidden = rel
                    .components()
                    .any(|c| c.as_os_str().to_str().is_none_or(|s| s.starts_with('.')));
                if hidden || rel.as_os_str().is_empty() {
                    continue;
                }
                let removed = if both { i == 0 } else { removed_kind };
                let _ = tx.try_send(FileEvent {
                    path: rel.to_owned(),
                    removed,
                });
            }
        })
        .map_err(|e| werr(e.to_string()))?;
        watcher
            .watch(&root, notify::RecursiveMode::Recursive)
            .map_err(|e| werr(e.to_string()))?;
        Ok(FileWatch {
            rx,
            _watcher: watcher,
        })
    }
}

/// A stream of [`FileEvent`]s.
#[derive(Debug)]
pub struct FileWatch {
    rx: mpsc::Receiver<FileEvent>,
    _watcher: notify::RecommendedWatcher,
}

impl Stream for FileWatch {
    type Item = FileEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FileEvent>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn reads_are_confined_and_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("app")).expect("mkdir");
        std::fs::write(dir.path().join("app/token"), "eyJ").expect("write");
        let src = FileSource::new(dir.path());
        assert_eq!(src.read("app/token").expect("read").expose(), "eyJ");
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "app/../app/token",
            "",
            "./app/token",
        ] {
            assert!(
                matches!(src.read(bad), Err(FileError::BadPath(_))),
                "{bad:?} must be refused"
            );
        }
        let outside = tempfile::tempdir().expect("tmp");
        std::fs::write(outside.path().join("x"), "outside").expect("write");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
        let e = src.read("link/x").expect_err("symlink");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::write(dir.path().join("big"), vec![b'a'; MAX_FILE_BYTES + 1]).expect("big");
        assert!(matches!(src.read("big"), Err(FileError::Invalid { .. })));
        let e = src.read("app/missing").expect_err("missing");
        assert!(e.to_string().contains("app/missing"), "{e}");
    }

    #[test]
    fn reads_the_default_layout_json() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("app.json"),
            r#"{"role":"app","kind":"jwt","expires_at":"2030-01-01T00:10:00Z","refresh_after":"2030-01-01T00:07:00Z","lease_id":"l1","ttl_seconds":600,"data":{"token":"eyJ"}}"#,
        )
        .expect("write");
        let c = FileSource::new(dir.path())
            .credential("app")
            .expect("parse");
        assert_eq!(c.secret("token").map(Secret::expose), Some("eyJ"));
        assert_eq!((c.ttl_seconds, c.lease_id.as_str()), (600, "l1"));
        std::fs::write(dir.path().join("bad.json"), r#"{"token":"eyJsecret"}"#).expect("write");
        let e = FileSource::new(dir.path())
            .credential("bad")
            .expect_err("bad");
        assert!(!e.to_string().contains("eyJsecret"), "{e}");
    }

    #[tokio::test]
    async fn watch_reports_atomic_replacements_but_not_temp_files() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(dir.path().join("app")).expect("mkdir");
        let src = FileSource::new(dir.path());
        let mut events = src.watch().expect("watch");
        // What the sidecar does: write a hidden temp file, then rename it into place.
        let tmp = dir.path().join("app/.token.tmp-1");
        std::fs::write(&tmp, "v2").expect("tmp");
        std::fs::rename(&tmp, dir.path().join("app/token")).expect("rename");
        let ev = tokio::time::timeout(Duration::from_secs(2), events.next())
            .await
            .expect("an event in time")
            .expect("stream open");
        assert_eq!(
            ev,
            FileEvent {
                path: PathBuf::from("app/token"),
                removed: false
            }
        );
        std::fs::remove_file(dir.path().join("app/token")).expect("rm");
        // One rename may be reported more than once; the removal follows.
        let removed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let ev = events.next().await.expect("stream open");
                assert_eq!(
                    ev.path,
                    Path::new("app/token"),
                    "only the real file is reported"
                );
                if ev.removed {
                    return ev;
                }
            }
        })
        .await
        .expect("the removal is reported in time");
        assert!(removed.removed);
    }
}
