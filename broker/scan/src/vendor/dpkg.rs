//! dpkg's records: `var/lib/dpkg/info/PKG.md5sums` (or `PKG:ARCH.md5sums`) — one
//! `<md5 hex>  <path>` line per file the package shipped, conffiles excepted — and the
//! `Conffiles:` field of `var/lib/dpkg/status`, where conffiles' md5s are kept. Pure, bounded
//! parsers of untrusted bytes.

use super::{Digest, DigestAlg, MAX_RECORDS, Manager, Owned, RecordError};

/// The package a `…/info/NAME.md5sums` file belongs to: `NAME` without a `:ARCH` suffix.
pub fn package_of_md5sums(file_name: &str) -> Option<&str> {
    let stem = file_name.strip_suffix(".md5sums")?;
    let name = stem.split(':').next().unwrap_or(stem);
    (!name.is_empty()).then_some(name)
}

/// Parses one `md5sums` file of `package`. Lines that are not `<32 hex> <path>` are refused.
pub fn parse_md5sums(package: &str, bytes: &[u8]) -> Result<Vec<Owned>, RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|_| RecordError::new("not UTF-8"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() >= MAX_RECORDS {
            return Err(RecordError::new("too many entries"));
        }
        let (hash, path) = line
            .split_once(' ')
            .ok_or_else(|| RecordError::at(i + 1, "expected `<md5>  <path>`"))?;
        let digest = Digest::from_hex(DigestAlg::Md5, hash)
            .ok_or_else(|| RecordError::at(i + 1, "not an md5 digest"))?;
        let path = path.trim_start_matches(' ');
        if path.is_empty() {
            return Err(RecordError::at(i + 1, "no path"));
        }
        out.push(Owned {
            path: path.trim_start_matches('/').to_owned(),
            manager: Manager::Dpkg,
            package: package.into(),
            digest,
        });
    }
    Ok(out)
}

/// Parses `var/lib/dpkg/status` for its conffiles: each stanza's `Package:` and the
/// ` /path md5 [obsolete|remove-on-upgrade]` lines under `Conffiles:`. A conffile with no
/// md5 (`newconffile`) is skipped: it cannot be proven pristine.
pub fn parse_status(bytes: &[u8]) -> Result<Vec<Owned>, RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|_| RecordError::new("not UTF-8"))?;
    let mut out = Vec::new();
    let mut package: Option<String> = None;
    let mut in_conffiles = false;
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            package = None;
            in_conffiles = false;
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if !in_conffiles {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(path), Some(hash)) = (words.next(), words.next()) else {
                return Err(RecordError::at(i + 1, "conffile line without a hash"));
            };
            let Some(digest) = Digest::from_hex(DigestAlg::Md5, hash) else {
                continue;
            };
            let Some(pkg) = &package else {
                return Err(RecordError::at(i + 1, "Conffiles before Package"));
            };
            if out.len() >= MAX_RECORDS {
                return Err(RecordError::new("too many entries"));
            }
            out.push(Owned {
                path: path.trim_start_matches('/').to_owned(),
                manager: Manager::Dpkg,
                package: pkg.as_str().into(),
                digest,
            });
            continue;
        }
        in_conffiles = false;
        let (field, value) = line
            .split_once(':')
            .ok_or_else(|| RecordError::at(i + 1, "expected `Field: value`"))?;
        if field.eq_ignore_ascii_case("Package") {
            package = Some(value.trim().to_owned());
        } else if field.eq_ignore_ascii_case("Conffiles") {
            in_conffiles = true;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5sums_lines_become_owned_files() {
        let r = parse_md5sums(
            "python3-jwt",
            b"0123456789abcdef0123456789abcdef  usr/lib/python3/dist-packages/jwt/api_jwt.py\n\
              fedcba9876543210fedcba9876543210  usr/share/doc/python3-jwt/changelog.gz\n",
        )
        .expect("parses");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].path, "usr/lib/python3/dist-packages/jwt/api_jwt.py");
        assert_eq!(&*r[0].package, "python3-jwt");
        assert_eq!(r[1].digest.alg, DigestAlg::Md5);
        assert!(parse_md5sums("p", b"nothex  usr/x\n").is_err());
        assert!(parse_md5sums("p", b"0123456789abcdef0123456789abcdef\n").is_err());
        assert!(parse_md5sums("p", &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn package_names_drop_the_architecture() {
        assert_eq!(package_of_md5sums("libc6:amd64.md5sums"), Some("libc6"));
        assert_eq!(package_of_md5sums("bash.md5sums"), Some("bash"));
        assert_eq!(package_of_md5sums("bash.list"), None);
        assert_eq!(package_of_md5sums(".md5sums"), None);
    }

    #[test]
    fn status_conffiles_are_read_per_package() {
        let status = b"Package: adduser\nStatus: install ok installed\nConffiles:\n \
            /etc/adduser.conf 0123456789abcdef0123456789abcdef\n \
            /etc/old.conf fedcba9876543210fedcba9876543210 obsolete\n \
            /etc/new.conf newconffile\nDescription: add users\n continued text 0123\n\n\
            Package: base-files\nConffiles:\n /etc/issue 00000000000000000000000000000000\n";
        let r = parse_status(status).expect("parses");
        let got: Vec<(&str, &str)> = r.iter().map(|o| (&*o.package, o.path.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("adduser", "etc/adduser.conf"),
                ("adduser", "etc/old.conf"),
                ("base-files", "etc/issue")
            ]
        );
        assert!(parse_status(b"Conffiles:\n /etc/x 0123456789abcdef0123456789abcdef\n").is_err());
        assert!(parse_status(b"garbage line\n").is_err());
    }
}
