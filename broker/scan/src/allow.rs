//! The allowlist: findings accepted on purpose, by fingerprint or by path glob, each with a
//! reason. Allowed findings stay in the report (marked) but do not make an image dirty.
//!
//! ```yaml
//! allow:
//!   - fingerprint: "v1:0123456789abcdef0123456789abcdef"
//!     reason: "public test key of the fixtures in app/tests"
//!   - path: "usr/share/doc/**"
//!     rule: generic-password          # optional: only this rule
//!     reason: "documentation examples"
//! ```

use std::path::Path;

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use crate::report::{Finding, Location};

/// Largest allowlist file accepted.
pub const MAX_ALLOWLIST_BYTES: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    allow: Vec<RawEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug)]
enum Matcher {
    Fingerprint(String),
    Path(GlobMatcher),
}

#[derive(Debug)]
struct Entry {
    matcher: Matcher,
    rule: Option<String>,
    reason: String,
}

/// A parsed allowlist.
#[derive(Debug, Default)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

impl Allowlist {
    /// Parses an allowlist; errors name the entry and what to fix.
    pub fn parse(text: &str, origin: &str) -> Result<Allowlist, String> {
        if text.len() as u64 > MAX_ALLOWLIST_BYTES {
            return Err(format!("{origin}: larger than {MAX_ALLOWLIST_BYTES} bytes"));
        }
        let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|e| {
            format!("{origin}: {e} (expected `allow:` with entries of fingerprint or path, optional rule, and reason)")
        })?;
        let mut entries = Vec::new();
        for (i, e) in raw.allow.into_iter().enumerate() {
            let at = format!("{origin}: allow[{i}]");
            let reason = e.reason.filter(|r| !r.trim().is_empty()).ok_or_else(|| {
                format!("{at}: `reason` is required (say why this finding is acceptable)")
            })?;
            let matcher = match (e.fingerprint, e.path) {
                (Some(fp), None) => {
                    if !fp.starts_with("v1:") {
                        return Err(format!(
                            "{at}: fingerprint `{fp}` is not a scanner fingerprint (v1:...)"
                        ));
                    }
                    Matcher::Fingerprint(fp)
                }
                (None, Some(p)) => {
                    let g = Glob::new(p.trim_start_matches('/'))
                        .map_err(|err| format!("{at}: path glob `{p}`: {err}"))?;
                    Matcher::Path(g.compile_matcher())
                }
                _ => return Err(format!("{at}: give exactly one of `fingerprint` or `path`")),
            };
            entries.push(Entry {
                matcher,
                rule: e.rule,
                reason,
            });
        }
        Ok(Allowlist { entries })
    }

    /// Reads and parses an allowlist file.
    pub fn load(path: &Path) -> Result<Allowlist, String> {
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("cannot read allowlist {}: {e}", path.display()))?;
        if meta.len() > MAX_ALLOWLIST_BYTES {
            return Err(format!(
                "{}: larger than {MAX_ALLOWLIST_BYTES} bytes",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read allowlist {}: {e}", path.display()))?;
        Allowlist::parse(&text, &path.display().to_string())
    }

    /// The reason a finding known only by its rule, fingerprint and (for a file) path is
    /// allowed, if an entry matches it: what a stored findings summary is re-evaluated with
    /// when the allowlist changes, without a re-scan. Pure; agrees with [`Self::reason_for`].
    pub fn reason_for_summary(
        &self,
        rule: &str,
        fingerprint: &str,
        file_path: Option<&str>,
    ) -> Option<&str> {
        self.entries.iter().find_map(|e| {
            if e.rule.as_deref().is_some_and(|r| r != rule) {
                return None;
            }
            let hit = match &e.matcher {
                Matcher::Fingerprint(fp) => fp == fingerprint,
                Matcher::Path(g) => {
                    file_path.is_some_and(|p| g.is_match(p.split("!/").next().unwrap_or(p)))
                }
            };
            hit.then_some(e.reason.as_str())
        })
    }

    /// The reason a finding is allowed, if an entry matches it. Pure.
    pub fn reason_for(&self, f: &Finding) -> Option<&str> {
        self.entries.iter().find_map(|e| {
            if e.rule.as_deref().is_some_and(|r| r != f.rule) {
                return None;
            }
            let hit = match &e.matcher {
                Matcher::Fingerprint(fp) => *fp == f.fingerprint,
                Matcher::Path(g) => match &f.location {
                    Location::File { path, .. } => {
                        g.is_match(path.split("!/").next().unwrap_or(path))
                    }
                    _ => false,
                },
            };
            hit.then_some(e.reason.as_str())
        })
    }

    /// Marks allowed findings.
    pub fn apply(&self, findings: &mut [Finding]) {
        for f in findings {
            if let Some(r) = self.reason_for(f) {
                f.allowed = Some(r.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::FingerprintKind;
    use crate::rules::{Confidence, Severity};

    fn file_finding(rule: &str, path: &str, fp: &str) -> Finding {
        Finding {
            rule: rule.into(),
            description: String::new(),
            severity: Severity::High,
            confidence: Confidence::High,
            location: Location::File {
                layer_index: 1,
                layer_digest: "sha256:x".into(),
                history_step: None,
                path: path.into(),
                line: 1,
                deleted_later: false,
            },
            preview: String::new(),
            fingerprint: fp.into(),
            fingerprint_kind: FingerprintKind::Value,
            test_material: false,
            package_code: false,
            allowed: None,
            vendor: None,
            reason: None,
        }
    }

    #[test]
    fn matches_by_fingerprint_path_and_rule() {
        let a = Allowlist::parse(
            "allow:\n  - fingerprint: v1:aa\n    reason: known test key\n  - path: usr/share/doc/**\n    rule: generic-password\n    reason: docs\n",
            "allow.yaml",
        )
        .expect("valid");
        assert_eq!(
            a.reason_for(&file_finding("jwt", "app/x", "v1:aa")),
            Some("known test key")
        );
        assert_eq!(
            a.reason_for(&file_finding(
                "generic-password",
                "usr/share/doc/a/README",
                "v1:bb"
            )),
            Some("docs")
        );
        assert_eq!(
            a.reason_for(&file_finding(
                "github-pat",
                "usr/share/doc/a/README",
                "v1:bb"
            )),
            None
        );
        assert_eq!(a.reason_for(&file_finding("jwt", "app/x", "v1:cc")), None);
        let mut fs = vec![file_finding("jwt", "app/x", "v1:aa")];
        a.apply(&mut fs);
        assert_eq!(fs[0].allowed.as_deref(), Some("known test key"));
    }

    #[test]
    fn rejects_entries_without_reason_or_matcher() {
        let e = Allowlist::parse("allow:\n  - fingerprint: v1:aa\n", "f").expect_err("no reason");
        assert!(e.contains("f: allow[0]: `reason` is required"), "{e}");
        let e = Allowlist::parse("allow:\n  - reason: x\n", "f").expect_err("no matcher");
        assert!(e.contains("exactly one"), "{e}");
        let e = Allowlist::parse("allow:\n  - fingerprint: aa\n    reason: x\n", "f")
            .expect_err("bad fp");
        assert!(e.contains("v1:"), "{e}");
        assert!(Allowlist::parse("allow:\n  - pth: x\n", "f").is_err());
    }
}
