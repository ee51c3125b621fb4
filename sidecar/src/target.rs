//! The checked target types: which file a credential is written to ([`Target`]), with which
//! mode and owner, in which [`Format`], and what becomes of its files once it expired
//! ([`OnExpiry`]). The spec parser makes them from configuration, the
//! renderer turns one and a credential into bytes, the writer puts those on disk; this
//! module knows none of them.

use std::fmt;

/// A checked target.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// Role whose credential it renders.
    pub role: String,
    /// Path components under the secrets directory (each a plain name).
    pub path: Vec<String>,
    /// File mode.
    pub mode: u32,
    /// Owner uid to set, if any.
    pub uid: Option<u32>,
    /// Owner gid to set, if any.
    pub gid: Option<u32>,
    /// How to render it.
    pub format: Format,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("role", &self.role)
            .field("path", &self.rel_path())
            .field("mode", &format_args!("{:04o}", self.mode))
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("format", &self.format)
            .finish()
    }
}

impl Target {
    /// The path relative to the secrets directory, `/`-joined.
    pub fn rel_path(&self) -> String {
        self.path.join("/")
    }

    /// The file name (last component).
    pub fn file_name(&self) -> &str {
        self.path.last().map(String::as_str).unwrap_or("")
    }

    /// The directories between the secrets directory and the file.
    pub fn parents(&self) -> &[String] {
        &self.path[..self.path.len().saturating_sub(1)]
    }
}

/// A checked format with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// One field's value.
    Raw {
        /// The field; `None` means the credential's only field.
        field: Option<String>,
    },
    /// `KEY=value` lines.
    Env {
        /// Only this field (else every field).
        field: Option<String>,
        /// The key for `field`.
        key: Option<String>,
        /// Prefix of derived keys.
        prefix: String,
    },
    /// The credential as JSON.
    Json,
    /// AWS shared-credentials file.
    Aws {
        /// Profile name.
        profile: String,
    },
    /// A template (its source; it compiled when the target was checked).
    Template {
        /// The template text.
        source: String,
        /// Where it came from, for errors (`inline` or the file path).
        origin: String,
    },
}

/// What to do with the files of a credential that is past its expiry and could not be
/// refreshed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExpiry {
    /// Delete its files, so nothing reads a dead credential (the default).
    #[default]
    Remove,
    /// Keep its files and write `FILE.expired` (holding the expiry time) next to each.
    Mark,
    /// Leave the files as they are.
    Keep,
}

impl OnExpiry {
    /// Parses `remove`, `mark` or `keep`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "remove" => Ok(Self::Remove),
            "mark" => Ok(Self::Mark),
            "keep" => Ok(Self::Keep),
            other => Err(format!(
                "on-expiry {other:?} is not known; use remove, mark or keep"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parts_and_debug() {
        let t = Target {
            role: "db".into(),
            path: vec!["app".into(), "config".into(), "db.yaml".into()],
            mode: 0o440,
            uid: Some(1000),
            gid: None,
            format: Format::Json,
        };
        assert_eq!(t.rel_path(), "app/config/db.yaml");
        assert_eq!(t.file_name(), "db.yaml");
        assert_eq!(t.parents(), ["app", "config"]);
        let d = format!("{t:?}");
        assert!(
            d.contains("\"app/config/db.yaml\"") && d.contains("0440"),
            "{d}"
        );
        let flat = Target {
            path: vec!["token".into()],
            ..t
        };
        assert_eq!((flat.file_name(), flat.parents().len()), ("token", 0));
    }
}
