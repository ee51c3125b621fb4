//! apk's records: `lib/apk/db/installed` (Alpine's "Apk spec", installed database): one
//! stanza per package separated by blank lines, `P:` the package name, `F:` a directory
//! (relative to `/`), each `R:` a file in the last `F:` directory, and the `Z:` after an `R:`
//! its checksum — `Q1` + base64 of the SHA-1 (`Q2` + base64 of the SHA-256 in newer apk-tools).
//! Pure, bounded parser of untrusted bytes.

use base64::Engine as _;

use super::{Digest, DigestAlg, MAX_RECORDS, Manager, Owned, RecordError};

/// Parses `lib/apk/db/installed`.
pub fn parse_installed(bytes: &[u8]) -> Result<Vec<Owned>, RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|_| RecordError::new("not UTF-8"))?;
    let mut out = Vec::new();
    let mut package: Option<std::sync::Arc<str>> = None;
    let mut dir: Option<String> = None;
    let mut file: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            package = None;
            dir = None;
            file = None;
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            return Err(RecordError::at(i + 1, "expected `X:value`"));
        };
        match field {
            "P" => package = Some(value.into()),
            "F" => {
                dir = Some(value.trim_matches('/').to_owned());
                file = None;
            }
            "R" => {
                let d = dir
                    .as_deref()
                    .ok_or_else(|| RecordError::at(i + 1, "R: before F:"))?;
                if value.is_empty() || value.contains('/') {
                    return Err(RecordError::at(i + 1, "R: is not a file name"));
                }
                file = Some(if d.is_empty() {
                    value.to_owned()
                } else {
                    format!("{d}/{value}")
                });
            }
            "Z" => {
                // A `Z:` after `F:` (no `R:` since) is not a file's checksum.
                let Some(path) = file.take() else { continue };
                let pkg = package
                    .clone()
                    .ok_or_else(|| RecordError::at(i + 1, "file before P:"))?;
                let (alg, b64) = if let Some(b) = value.strip_prefix("Q1") {
                    (DigestAlg::Sha1, b)
                } else if let Some(b) = value.strip_prefix("Q2") {
                    (DigestAlg::Sha256, b)
                } else {
                    continue;
                };
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| RecordError::at(i + 1, "checksum is not base64"))?;
                let digest = Digest::new(alg, raw)
                    .ok_or_else(|| RecordError::at(i + 1, "checksum has the wrong length"))?;
                if out.len() >= MAX_RECORDS {
                    return Err(RecordError::new("too many entries"));
                }
                out.push(Owned {
                    path,
                    manager: Manager::Apk,
                    package: pkg,
                    digest,
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_db_files_and_checksums() {
        // Q1 = base64(sha1("hello\n")); Q2 = base64(sha256("hello\n")).
        let db = "C:Q1abc=\nP:musl\nV:1.2.5-r0\nF:lib\nR:ld-musl-x86_64.so.1\na:0:0:755\n\
                  Z:Q19XLTlvrpIGYocU+yzgD3LpTyJY8=\nR:libc.musl-x86_64.so.1\n\
                  F:usr/share/doc/musl\nZ:Q1notachecksumofafile=\nR:README\n\
                  Z:Q2WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=\n\n\
                  P:busybox\nF:bin\nR:busybox\nZ:Q19XLTlvrpIGYocU+yzgD3LpTyJY8=\n";
        let r = parse_installed(db.as_bytes()).expect("parses");
        let got: Vec<(&str, &str, DigestAlg)> = r
            .iter()
            .map(|o| (&*o.package, o.path.as_str(), o.digest.alg))
            .collect();
        assert_eq!(
            got,
            vec![
                ("musl", "lib/ld-musl-x86_64.so.1", DigestAlg::Sha1),
                ("musl", "usr/share/doc/musl/README", DigestAlg::Sha256),
                ("busybox", "bin/busybox", DigestAlg::Sha1),
            ]
        );
        assert!(parse_installed(b"P:x\nR:file\n").is_err(), "R before F");
        assert!(parse_installed(b"P:x\nF:a\nR:../../etc/x\n").is_err());
        assert!(parse_installed(b"P:x\nF:a\nR:f\nZ:Q1%%%%\n").is_err());
        assert!(
            parse_installed(b"P:x\nF:a\nR:f\nZ:Q1AAAA\n").is_err(),
            "short digest"
        );
        assert!(parse_installed(b"no colon\n").is_err());
    }
}
