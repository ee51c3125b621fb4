//! Small secret files: the one way the broker reads a token, password or secret id from disk.
//!
//! [`read_secret_file`] serves every such file — the admin token (re-read on each admin call
//! and by the admin CLI), the Vault token, AppRole secret id and Kubernetes JWT, and the
//! scanner's registry token and password files. It
//! - reads at most [`MAX_SECRET_FILE_BYTES`] + 1 bytes into one fixed, zeroized buffer, so a
//!   huge file, `/dev/zero` or an endless pipe is refused without being read whole;
//! - runs the blocking read on tokio's blocking pool, never on an async worker;
//! - trims surrounding whitespace (the newline an editor or `echo` leaves) and refuses a
//!   file that is empty, only whitespace, not UTF-8 or too large, with a [`SecretFileError`]
//!   that names the path and the fix but never the content.
//!
//! The content is only checked for UTF-8 and trimmed, never parsed, so there is no parser here
//! to fuzz. Opening a FIFO still waits for its writer, as any read of one does.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use lanyard::Secret;
use zeroize::Zeroizing;

/// Largest secret file accepted, in bytes, before trimming: 64 KiB, far above any token,
/// password or service-account JWT, and small enough to hold in memory at once.
pub const MAX_SECRET_FILE_BYTES: usize = 64 * 1024;

/// A secret file that could not be used. The message names the file and what to fix; it never
/// holds any of the file's content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// The file could not be opened or read: missing, not readable by the broker's user, a
    /// directory, or the read failed.
    #[error("cannot read the secret file {}: {source}; check that it exists and that this user may read it", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (the OS error names no content).
        source: io::Error,
    },
    /// The file holds more than [`MAX_SECRET_FILE_BYTES`] bytes.
    #[error("the secret file {} is larger than {max_bytes} bytes; it should hold only the secret", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, [`MAX_SECRET_FILE_BYTES`].
        max_bytes: usize,
    },
    /// The content is not UTF-8 text.
    #[error("the secret file {} is not UTF-8 text; write the secret into it as text", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// The file is empty or holds only whitespace.
    #[error("the secret file {} is empty; write the secret into it", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Reads the secret in the file at `path`, with surrounding whitespace trimmed, without
/// blocking the async runtime and without reading more than [`MAX_SECRET_FILE_BYTES`] + 1
/// bytes. See the module documentation.
pub async fn read_secret_file(path: &Path) -> Result<Secret, SecretFileError> {
    let owned = path.to_path_buf();
    match tokio::task::spawn_blocking(move || read_secret_file_blocking(&owned)).await {
        Ok(result) => result,
        Err(join) => Err(SecretFileError::Read {
            path: path.to_path_buf(),
            source: io::Error::other(format!("the reading task did not finish: {join}")),
        }),
    }
}

/// The blocking read behind [`read_secret_file`].
fn read_secret_file_blocking(path: &Path) -> Result<Secret, SecretFileError> {
    let file = std::fs::File::open(path).map_err(|source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    secret_from_reader(file, path)
}

/// Reads at most [`MAX_SECRET_FILE_BYTES`] + 1 bytes from `reader` into one buffer allocated up
/// front (so no copy of the secret is left behind by a reallocation, and the buffer is zeroed
/// when dropped), then checks and trims them. `path` only names the source in errors.
fn secret_from_reader(mut reader: impl Read, path: &Path) -> Result<Secret, SecretFileError> {
    let mut buf = Zeroizing::new(vec![0u8; MAX_SECRET_FILE_BYTES + 1]);
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(SecretFileError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    if filled > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::TooLarge {
            path: path.to_path_buf(),
            max_bytes: MAX_SECRET_FILE_BYTES,
        });
    }
    let text = std::str::from_utf8(&buf[..filled]).map_err(|_| SecretFileError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SecretFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret::new(trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks like a credential, so a leak into a message would be plain to see.
    const PLANTED: &str = "hvs.PLANTED-s3cr3t-0123456789abcdef";

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        std::fs::write(&path, bytes).expect("write");
        (dir, path)
    }

    async fn read(bytes: &[u8]) -> Result<Secret, SecretFileError> {
        let (_dir, path) = file_with(bytes);
        read_secret_file(&path).await
    }

    /// The error names the file and shows none of `content`, in `Display` and in `Debug`.
    fn assert_hides(err: &SecretFileError, path: &Path, content: &str) {
        let (shown, debug) = (err.to_string(), format!("{err:?}"));
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        for needle in [content, "PLANTED", "s3cr3t"] {
            assert!(!shown.contains(needle), "Display leaks {needle}: {shown}");
            assert!(!debug.contains(needle), "Debug leaks {needle}: {debug}");
        }
    }

    #[tokio::test]
    async fn reads_the_secret_as_is() {
        let secret = read(PLANTED.as_bytes()).await.expect("read");
        assert_eq!(secret.expose(), PLANTED);
    }

    #[tokio::test]
    async fn surrounding_whitespace_and_newlines_are_trimmed() {
        for text in [
            format!("{PLANTED}\n"),
            format!("{PLANTED}\r\n"),
            format!("  \t{PLANTED} \n\n"),
        ] {
            let secret = read(text.as_bytes()).await.expect("read");
            assert_eq!(secret.expose(), PLANTED, "{text:?}");
        }
        // Inner whitespace is part of the secret.
        let secret = read(b"pass word\n").await.expect("read");
        assert_eq!(secret.expose(), "pass word");
    }

    #[tokio::test]
    async fn an_empty_or_blank_file_is_refused() {
        for bytes in [&b""[..], b"\n", b" \r\n\t "] {
            let (_dir, path) = file_with(bytes);
            let err = read_secret_file(&path).await.expect_err("empty");
            assert!(matches!(err, SecretFileError::Empty { .. }), "{err:?}");
            assert!(err.to_string().contains("is empty"), "{err}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn the_limit_is_inclusive() {
        let at_limit = "a".repeat(MAX_SECRET_FILE_BYTES);
        let secret = read(at_limit.as_bytes()).await.expect("at the limit");
        assert_eq!(secret.len(), MAX_SECRET_FILE_BYTES);

        let over = "a".repeat(MAX_SECRET_FILE_BYTES + 1);
        let err = read(over.as_bytes()).await.expect_err("one byte over");
        assert!(
            matches!(err, SecretFileError::TooLarge { max_bytes, .. } if max_bytes == MAX_SECRET_FILE_BYTES),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_oversize_file_is_refused_without_showing_it() {
        let content = format!("{PLANTED}\n").repeat(MAX_SECRET_FILE_BYTES / PLANTED.len() + 1);
        let (_dir, path) = file_with(content.as_bytes());
        let err = read_secret_file(&path).await.expect_err("too large");
        assert!(matches!(err, SecretFileError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("65536 bytes"), "{err}");
        assert_hides(&err, &path, PLANTED);
    }

    #[tokio::test]
    async fn non_utf8_is_refused_without_showing_it() {
        let mut content = PLANTED.as_bytes().to_vec();
        content.extend([0xff, 0xfe]);
        let (_dir, path) = file_with(&content);
        let err = read_secret_file(&path).await.expect_err("not UTF-8");
        assert!(matches!(err, SecretFileError::NotUtf8 { .. }), "{err:?}");
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        assert_hides(&err, &path, PLANTED);
    }

    #[tokio::test]
    async fn a_missing_file_or_a_directory_is_a_read_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("no-such-token");
        let err = read_secret_file(&missing).await.expect_err("missing");
        assert!(
            matches!(&err, SecretFileError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(err.to_string().contains("no-such-token"), "{err}");

        let err = read_secret_file(dir.path()).await.expect_err("a directory");
        assert!(matches!(err, SecretFileError::Read { .. }), "{err:?}");
    }

    /// An endless source that counts the bytes taken from it.
    struct Endless {
        taken: usize,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            buf.fill(b'x');
            self.taken += buf.len();
            Ok(buf.len())
        }
    }

    #[test]
    fn an_endless_source_is_read_only_one_byte_past_the_limit() {
        let mut source = Endless { taken: 0 };
        let err = secret_from_reader(&mut source, Path::new("endless")).expect_err("too large");
        assert!(matches!(err, SecretFileError::TooLarge { .. }), "{err:?}");
        assert_eq!(source.taken, MAX_SECRET_FILE_BYTES + 1);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn dev_zero_is_refused_not_read_forever() {
        let err = read_secret_file(Path::new("/dev/zero"))
            .await
            .expect_err("too large");
        assert!(matches!(err, SecretFileError::TooLarge { .. }), "{err:?}");
    }

    /// A source that hands out a few bytes at a time and is sometimes interrupted.
    struct Trickle<'a> {
        rest: &'a [u8],
        calls: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.rest.len().min(buf.len()).min(3);
            buf[..n].copy_from_slice(&self.rest[..n]);
            self.rest = &self.rest[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_and_interrupted_reads_are_joined() {
        let text = format!("{PLANTED}\n");
        let source = Trickle {
            rest: text.as_bytes(),
            calls: 0,
        };
        let secret = secret_from_reader(source, Path::new("trickle")).expect("read");
        assert_eq!(secret.expose(), PLANTED);
    }

    /// A source whose read fails outright.
    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("device gone"))
        }
    }

    #[test]
    fn a_failing_read_is_a_read_error() {
        let err = secret_from_reader(Broken, Path::new("broken")).expect_err("read fails");
        assert!(matches!(err, SecretFileError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("device gone"), "{err}");
    }
}
