//! Python's records: `NAME.dist-info/RECORD` (the wheel spec / PyPA "Recording installed
//! projects"): a CSV of `path,algorithm=urlsafe-base64-digest,size`, paths relative to the
//! directory that holds the `.dist-info` (`../../../bin/x` for scripts). Entries without a
//! hash (`RECORD` itself, compiled `.pyc` files) cannot be proven pristine and are skipped. A
//! `.dist-info` that also holds `direct_url.json` (PEP 610: installed from a local directory, a
//! VCS or a URL) is the user's own code, not vendor material: the caller skips it. Pure,
//! bounded parser of untrusted bytes.

use base64::Engine as _;

use super::{Digest, DigestAlg, MAX_RECORDS, Manager, Owned, RecordError};
use crate::util::normalize_path;

/// The directory holding a `.dist-info` and the project name, for a `…/X.dist-info/RECORD`
/// path; `None` for any other path.
pub fn record_site(path: &str) -> Option<(&str, &str)> {
    let dist = path.strip_suffix("/RECORD")?;
    let (site, dir) = dist.rsplit_once('/').unwrap_or(("", dist));
    let name = dir.strip_suffix(".dist-info")?;
    let project = name.split('-').next().unwrap_or(name);
    (!project.is_empty()).then_some((site, project))
}

/// Parses one `RECORD` of `project` installed in `site` (the directory holding its
/// `.dist-info`). Paths are joined to `site` and normalised (`..` resolved lexically); one
/// that climbs above the root is refused.
pub fn parse_record(site: &str, project: &str, bytes: &[u8]) -> Result<Vec<Owned>, RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|_| RecordError::new("not UTF-8"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields = csv_fields(line).ok_or_else(|| RecordError::at(i + 1, "bad CSV quoting"))?;
        let [path, hash, ..] = fields.as_slice() else {
            return Err(RecordError::at(i + 1, "expected `path,hash,size`"));
        };
        if hash.is_empty() {
            continue;
        }
        let (alg, b64) = hash
            .split_once('=')
            .ok_or_else(|| RecordError::at(i + 1, "expected `algorithm=digest`"))?;
        let alg = match alg {
            "sha256" => DigestAlg::Sha256,
            "sha384" => DigestAlg::Sha384,
            "sha512" => DigestAlg::Sha512,
            // The spec forbids md5 and sha1; anything else cannot prove a file.
            _ => continue,
        };
        // The spec says urlsafe base64; Debian's dh-python writes hex. Their lengths differ.
        let bytes = if b64.len() == 2 * alg.len() && b64.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(b64).map_err(|_| RecordError::at(i + 1, "bad hex digest"))?
        } else {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64.trim_end_matches('='))
                .map_err(|_| RecordError::at(i + 1, "digest is not urlsafe base64"))?
        };
        let digest = Digest::new(alg, bytes)
            .ok_or_else(|| RecordError::at(i + 1, "digest has the wrong length"))?;
        let joined = join(site, path).ok_or_else(|| RecordError::at(i + 1, "path leaves /"))?;
        if out.len() >= MAX_RECORDS {
            return Err(RecordError::new("too many entries"));
        }
        out.push(Owned {
            path: joined,
            manager: Manager::Python,
            package: project.into(),
            digest,
        });
    }
    Ok(out)
}

/// `site/path` with `.` and `..` resolved lexically; an absolute `path` stands alone.
/// `None` when `..` climbs above the root.
fn join(site: &str, path: &str) -> Option<String> {
    let full = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{site}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in full.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(normalize_path(&parts.join("/")))
}

/// Splits one CSV line (RFC 4180 quoting: `"a,b"`, `""` for a quote). `None` on an
/// unterminated quote.
fn csv_fields(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, ',') => out.push(std::mem::take(&mut cur)),
            (false, '"') if cur.is_empty() => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => quoted = false,
            (_, c) => cur.push(c),
        }
    }
    if quoted {
        return None;
    }
    out.push(cur);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_site_finds_the_directory_and_project() {
        assert_eq!(
            record_site("usr/local/lib/python3.11/dist-packages/boto3-1.35.99.dist-info/RECORD"),
            Some(("usr/local/lib/python3.11/dist-packages", "boto3"))
        );
        assert_eq!(record_site("usr/lib/x/RECORD"), None);
        assert_eq!(record_site("usr/lib/x.dist-info/METADATA"), None);
    }

    #[test]
    fn record_rows_are_joined_to_the_site_and_decoded() {
        // sha256 of "hello\n", urlsafe base64 without padding.
        let rec = "flask/__init__.py,sha256=WJG1tSLV3whtD_CxEPvZ0hu0_HFjrzTQgoai6Eb2vgM,6\n\
                   \"odd,name.py\",sha256=WJG1tSLV3whtD_CxEPvZ0hu0_HFjrzTQgoai6Eb2vgM,6\n\
                   ../../../bin/flask,sha256=WJG1tSLV3whtD_CxEPvZ0hu0_HFjrzTQgoai6Eb2vgM,6\n\
                   flask/__pycache__/app.cpython-311.pyc,,\n\
                   flask-3.1.0.dist-info/RECORD,,\n";
        let r = parse_record(
            "usr/local/lib/python3.11/dist-packages",
            "flask",
            rec.as_bytes(),
        )
        .expect("parses");
        let paths: Vec<&str> = r.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "usr/local/lib/python3.11/dist-packages/flask/__init__.py",
                "usr/local/lib/python3.11/dist-packages/odd,name.py",
                "usr/local/bin/flask",
            ]
        );
        assert_eq!(
            hex::encode(&r[0].digest.bytes),
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
        );
        let hex_row =
            b"x.py,sha256=5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03,6\n";
        let debian = parse_record("a", "p", hex_row).expect("Debian's hex RECORD");
        assert_eq!(debian[0].digest, r[0].digest);
        assert!(parse_record("a", "p", b"x.py,sha256=!!!,1\n").is_err());
        assert!(parse_record("a", "p", b"\"x.py,sha256=a,1\n").is_err());
        assert!(
            parse_record(
                "a",
                "p",
                b"../../../x,sha256=WJG1tSLV3whtD_CxEPvZ0hu0_HFjrzTQgoai6Eb2vgM,6\n"
            )
            .is_err()
        );
        assert!(
            parse_record("a", "p", b"x.py,sha256=AAAA,1\n").is_err(),
            "short digest"
        );
        assert_eq!(
            parse_record("a", "p", b"x.py,md5=AAAA,1\n").map(|r| r.len()),
            Ok(0)
        );
    }
}
