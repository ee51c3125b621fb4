//! Image references as the gate reads them: `host[:port]/path[:tag]@sha256:…`, `host/path:tag`
//! (operator tools only: a tag is resolved to a digest through the registry, never a key) and
//! a bare `sha256:…` digest. Parsing is bounded ([`MAX_IMAGE_REF_BYTES`]) and never echoes
//! more than a short prefix of what it refuses; the `image_ref` fuzz target holds it to that.

use std::fmt;

/// Longest image reference accepted, in bytes.
pub const MAX_IMAGE_REF_BYTES: usize = 512;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `host[:port]/path`, lowercase; `None` for a bare digest.
    pub repository: Option<String>,
    /// The tag, when one was given.
    pub tag: Option<String>,
    /// `sha256:` + 64 lowercase hex, when one was given.
    pub digest: Option<String>,
}

impl ImageRef {
    /// The registry host (`host[:port]`), when the reference names a repository.
    pub fn host(&self) -> Option<&str> {
        self.repository
            .as_deref()
            .and_then(|r| r.split_once('/').map(|(h, _)| h))
    }

    /// `repository@digest` (or the bare digest), the form the gate scans and records; `None`
    /// when there is no digest.
    pub fn pinned(&self) -> Option<String> {
        let digest = self.digest.as_ref()?;
        Some(match &self.repository {
            Some(r) => format!("{r}@{digest}"),
            None => digest.clone(),
        })
    }

    /// The reference as the scanner's `registry://` source wants it (`host/path@digest` or
    /// `host/path:tag`); `None` for a bare digest.
    pub fn registry_source(&self) -> Option<String> {
        let repo = self.repository.as_ref()?;
        match (&self.digest, &self.tag) {
            (Some(d), _) => Some(format!("{repo}@{d}")),
            (None, Some(t)) => Some(format!("{repo}:{t}")),
            (None, None) => None,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.repository, &self.tag, &self.digest) {
            (Some(r), _, Some(d)) => write!(f, "{r}@{d}"),
            (Some(r), Some(t), None) => write!(f, "{r}:{t}"),
            (Some(r), None, None) => f.write_str(r),
            (None, _, Some(d)) => f.write_str(d),
            (None, _, None) => f.write_str("-"),
        }
    }
}

/// Whether `s` is `sha256:` + 64 lowercase hex.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// A short, printable prefix of untrusted input for error messages.
fn shown(s: &str) -> String {
    let head: String = s
        .chars()
        .take(40)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    if s.chars().count() > 40 {
        format!("{head}…")
    } else {
        head
    }
}

/// Whether `host` is a registry host as references write it: a name with a `.` or a port, or
/// `localhost`, or a bracketed IPv6 address; a port is 1 to 5 digits. (A "port" that is not a
/// number would make `sha256:x./repo:tag` a host, whose printed form reads as a bare digest.)
fn host_ok(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("[v6]", Some(port)),
                None => return false,
            },
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if name == "[v6]" {
        return true;
    }
    !name.is_empty()
        && (name.contains('.') || port.is_some() || name == "localhost")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
}

/// Parses any reference: with a digest, a tag, or both; or a bare digest. The repository must
/// name its registry host (`registry.example.com/shop/api`, `127.0.0.1:5000/app`,
/// `localhost/app`): the gate never guesses a default registry.
pub fn parse(s: &str) -> Result<ImageRef, String> {
    if s.len() > MAX_IMAGE_REF_BYTES {
        return Err(format!(
            "image reference of {} bytes is longer than {MAX_IMAGE_REF_BYTES}",
            s.len()
        ));
    }
    let bad = |why: &str| {
        Err(format!(
            "image reference `{}`: {why}; use HOST/REPOSITORY@sha256:DIGEST (or :TAG for operator tools)",
            shown(s)
        ))
    };
    // A bare digest has no `/`; `sha256:55/app:1` is a host `sha256` on port 55 (found by the
    // image_ref fuzz target: its printed form must parse back the same way).
    if s.starts_with("sha256:") && !s.contains('/') {
        return if is_digest(s) {
            Ok(ImageRef {
                repository: None,
                tag: None,
                digest: Some(s.to_owned()),
            })
        } else {
            bad("a digest is `sha256:` and 64 lowercase hex digits")
        };
    }
    let (name, digest) = match s.split_once('@') {
        Some((n, d)) => {
            if !is_digest(d) {
                return bad("the digest after `@` must be `sha256:` and 64 lowercase hex digits");
            }
            (n, Some(d.to_owned()))
        }
        None => (s, None),
    };
    let Some((host, path)) = name.split_once('/') else {
        return bad("no registry host (write it out, e.g. registry.example.com/shop/api)");
    };
    if !host_ok(host) {
        return bad(
            "the first component must be the registry host (with a `.` or a port, or `localhost`)",
        );
    }
    // The tag is after the last `:` of the last path component.
    let (path, tag) = match path.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, Some(t)),
        _ => (path, None),
    };
    if path.is_empty()
        || path.starts_with('/')
        || path.ends_with('/')
        || path.contains("//")
        || !path
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/'))
    {
        return bad("the repository path takes lowercase letters, digits, `.`, `_`, `-` and `/`");
    }
    if let Some(t) = tag
        && (t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    {
        return bad("a tag is 1 to 128 letters, digits, `.`, `_` and `-`");
    }
    if tag.is_none() && digest.is_none() {
        return bad("no tag or digest");
    }
    Ok(ImageRef {
        repository: Some(format!("{}/{path}", host.to_ascii_lowercase())),
        tag: tag.map(str::to_owned),
        digest,
    })
}

/// Parses a reference the broker will trust as a workload's image (a bootstrap token's
/// binding): it must carry a digest — `repository@sha256:…` or a bare `sha256:…`. A tag
/// alongside the digest is kept for display; the digest decides.
pub fn parse_pinned(s: &str) -> Result<ImageRef, String> {
    let r = parse(s)?;
    if r.digest.is_none() {
        return Err(format!(
            "image reference `{}` has no digest: bind the image as REPOSITORY@sha256:DIGEST \
             (`lanyard-broker image scan` prints it)",
            shown(s)
        ));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_accepted_forms() {
        let r = parse(&format!("registry.example.com/shop/api@{D}")).expect("pinned");
        assert_eq!(
            r.repository.as_deref(),
            Some("registry.example.com/shop/api")
        );
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.host(), Some("registry.example.com"));
        assert_eq!(r.to_string(), format!("registry.example.com/shop/api@{D}"));
        let r = parse("127.0.0.1:5000/app:1").expect("tag");
        assert_eq!(
            (r.repository.as_deref(), r.tag.as_deref()),
            (Some("127.0.0.1:5000/app"), Some("1"))
        );
        assert_eq!(r.host(), Some("127.0.0.1:5000"));
        assert_eq!(r.registry_source().as_deref(), Some("127.0.0.1:5000/app:1"));
        let r = parse(&format!("localhost/app:v2@{D}")).expect("both");
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.pinned(), Some(format!("localhost/app@{D}")));
        let r = parse(D).expect("bare");
        assert_eq!(
            (r.repository.clone(), r.pinned()),
            (None, Some(D.to_owned()))
        );
    }

    #[test]
    fn refusals_name_the_fix_and_echo_little() {
        for bad in [
            "nginx:1".to_owned(),
            "shop/api:1".to_owned(),
            "registry.example.com/Shop/api:1".to_owned(),
            "registry.example.com/api".to_owned(),
            format!("registry.example.com/api@{}", D.to_uppercase()),
            format!("{D}0"),
            "sha512:abcd".to_owned(),
            "registry.example.com//api:1".to_owned(),
            "registry.example.com/api:".to_owned(),
            format!("registry.example.com/{}:1", "a".repeat(600)),
            // A port must be a number (found by the image_ref fuzz target: this one printed
            // back as `sha256:dmt25./sba:-3`, which reads as a bare digest).
            "sHa256:dMt25./sba:-3".to_owned(),
            "registry.example.com:/api:1".to_owned(),
            "registry.example.com:123456/api:1".to_owned(),
            "[::1/api:1".to_owned(),
            "[zz]:5000/api:1".to_owned(),
        ] {
            let e = parse(&bad).expect_err(&bad);
            assert!(e.len() < 300, "{e}");
        }
        for good in [
            "[::1]:5000/api:1",
            "[::1]/api:1",
            "localhost:5000/api:1",
            "r-1.example/a:1",
            "shA256:55/9:w",
        ] {
            let r = parse(good).expect(good);
            assert_eq!(parse(&r.to_string()).expect("again"), r, "{good}");
        }
        let e = parse_pinned("registry.example.com/api:1").expect_err("tag only");
        assert!(e.contains("REPOSITORY@sha256:DIGEST"), "{e}");
    }
}
