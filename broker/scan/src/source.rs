//! Where images come from: the source forms `docker-archive:` (including buildah's variant),
//! `oci:` (an OCI image layout directory), `oci-archive:` (one in a tar file) and `registry://`.
//! Parsing only: `plan` reads local sources, `registry` talks to registries.

use std::path::PathBuf;

use crate::error::ScanError;

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
}
