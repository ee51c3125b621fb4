//! Leaf helpers over bytes, paths and digests that the source, store and layer readers share:
//! magic-byte detection, tar path normalisation, digest strings, a full read. Pure (except
//! [`read_full`], which only reads), and this module imports nothing from the crate.

use std::io::{self, Read};

/// Compression of a blob, from its first bytes (media types are not trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
    /// Anything else: read as-is.
    None,
    /// A compression this scanner does not read (bzip2, xz).
    Unsupported(&'static str),
}

/// Detects the compression from a blob's first bytes.
pub fn detect(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if magic.starts_with(b"BZh") {
        Compression::Unsupported("bzip2")
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Unsupported("xz")
    } else {
        Compression::None
    }
}

/// Does this block start a ustar / GNU tar archive?
pub fn looks_like_tar(head: &[u8]) -> bool {
    head.len() >= 512 && &head[257..262] == b"ustar"
}

/// Normalises a tar path: no leading `./` or `/`, no empty or `.` components. `..` is kept
/// (reported as-is; nothing is ever written to disk).
pub fn normalize_path(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Resolves `.` and `..` in a `/`-separated path; `..` never climbs above the root.
pub fn resolve_dotdot(p: &str) -> String {
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

/// SHA-256 digest string of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    format!("sha256:{}", hex::encode(d.as_ref()))
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(detect(b"BZh91AY&SY"), Compression::Unsupported("bzip2"));
        assert_eq!(
            detect(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            Compression::Unsupported("xz")
        );
        assert_eq!(detect(b"ustar"), Compression::None);
        assert_eq!(detect(&[0x1f]), Compression::None, "one byte is not gzip");
        let mut block = vec![0u8; 512];
        assert!(!looks_like_tar(&block));
        block[257..262].copy_from_slice(b"ustar");
        assert!(looks_like_tar(&block));
        assert!(!looks_like_tar(&block[..511]), "shorter than a header");
    }

    #[test]
    fn paths() {
        assert_eq!(normalize_path("./a//b/./c"), "a/b/c");
        assert_eq!(normalize_path("/etc/passwd"), "etc/passwd");
        assert_eq!(normalize_path("a/../b"), "a/../b", "`..` is kept");
        assert_eq!(resolve_dotdot("a/b/../c.tar"), "a/c.tar");
        assert_eq!(resolve_dotdot("../../x"), "x");
    }

    #[test]
    fn digests_are_validated() {
        assert!(valid_digest(&format!("sha256:{}", "0".repeat(64))));
        assert!(valid_digest(&format!("sha512:{}", "f".repeat(128))));
        assert!(!valid_digest(&format!("sha256:{}", "0".repeat(63))));
        assert!(!valid_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!valid_digest(&format!("sha256:{}/..", "0".repeat(62))));
        assert!(!valid_digest("md5:abc"));
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn read_full_fills_across_short_reads() {
        let mut r = io::Read::chain(&b"ab"[..], &b"cde"[..]);
        let mut buf = [0u8; 4];
        assert_eq!(read_full(&mut r, &mut buf).expect("in memory"), 4);
        assert_eq!(&buf, b"abcd");
        let mut buf = [0u8; 4];
        assert_eq!(read_full(&mut r, &mut buf).expect("in memory"), 1);
    }
}
