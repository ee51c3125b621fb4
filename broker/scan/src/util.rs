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

/// A digest algorithm this scanner verifies. Every digest it reads is one of these, checked
/// against the content before the content is trusted; any other algorithm is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// `sha256:` + 64 lowercase hex digits.
    Sha256,
    /// `sha512:` + 128 lowercase hex digits.
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm of a well-formed digest string; refuses unknown algorithms and malformed
    /// hex (the message names the digest, cut to 80 characters).
    pub fn of(digest: &str) -> Result<DigestAlgorithm, String> {
        let shown = || digest.chars().take(80).collect::<String>();
        let (alg, hex) = digest
            .split_once(':')
            .ok_or_else(|| format!("digest `{}` has no `algorithm:` prefix", shown()))?;
        let alg = match alg {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            _ => {
                return Err(format!(
                    "digest `{}` uses an unsupported algorithm (only sha256 and sha512 are verified)",
                    shown()
                ));
            }
        };
        let hex_ok = hex.len() == alg.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(format!(
                "digest `{}` is malformed ({} lowercase hex digits expected)",
                shown(),
                alg.hex_len()
            ));
        }
        Ok(alg)
    }

    fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    /// The name used in digest strings.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// The aws-lc-rs algorithm (the workspace's one crypto provider).
    pub fn provider(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            DigestAlgorithm::Sha256 => &aws_lc_rs::digest::SHA256,
            DigestAlgorithm::Sha512 => &aws_lc_rs::digest::SHA512,
        }
    }

    /// The digest string of `bytes` under this algorithm.
    pub fn digest(self, bytes: &[u8]) -> String {
        let d = aws_lc_rs::digest::digest(self.provider(), bytes);
        format!("{}:{}", self.name(), hex::encode(d.as_ref()))
    }
}

/// Is this a well-formed digest (`sha256:` + 64 hex or `sha512:` + 128 hex, lowercase)?
pub fn valid_digest(d: &str) -> bool {
    DigestAlgorithm::of(d).is_ok()
}

/// SHA-256 digest string of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    DigestAlgorithm::Sha256.digest(bytes)
}

/// Checks `bytes` against `expected` under `expected`'s own algorithm. Refuses an unknown
/// algorithm or a malformed digest; on a mismatch the message gives the digest computed.
pub fn verify_digest(expected: &str, bytes: &[u8]) -> Result<(), String> {
    let alg = DigestAlgorithm::of(expected)?;
    let got = alg.digest(bytes);
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "content has digest {got}, not {}: it does not match its descriptor",
            expected.chars().take(140).collect::<String>()
        ))
    }
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
        assert!(
            !valid_digest(&format!("sha512:{}", "f".repeat(64))),
            "sha256 length"
        );
        assert!(!valid_digest(&format!("sha384:{}", "f".repeat(96))));
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_supported_algorithm_is_verified_and_others_are_refused() {
        // Known answers (FIPS 180-2 "abc").
        let sha256_abc = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let sha512_abc = "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                          2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";
        assert_eq!(DigestAlgorithm::Sha256.digest(b"abc"), sha256_abc);
        assert_eq!(DigestAlgorithm::Sha512.digest(b"abc"), sha512_abc);
        verify_digest(sha256_abc, b"abc").expect("sha256 matches");
        verify_digest(sha512_abc, b"abc").expect("sha512 matches");
        let e = verify_digest(sha512_abc, b"abd").expect_err("sha512 mismatch");
        assert!(e.contains("does not match") && e.contains("sha512:"), "{e}");
        let e = verify_digest(sha256_abc, b"abd").expect_err("sha256 mismatch");
        assert!(e.contains("does not match"), "{e}");
        let md5 = "md5:900150983cd24fb0d6963f7d28e17f72";
        let e = verify_digest(md5, b"abc").expect_err("md5 refused");
        assert!(e.contains("unsupported algorithm"), "{e}");
        let e = verify_digest("abc", b"abc").expect_err("no prefix");
        assert!(e.contains("no `algorithm:` prefix"), "{e}");
        let upper = sha512_abc.to_uppercase().replacen("SHA512", "sha512", 1);
        let e = verify_digest(&upper, b"abc").expect_err("uppercase hex refused");
        assert!(e.contains("malformed"), "{e}");
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
