//! Findings, the verdict, and the human / JSON / SARIF renderings. Nothing here ever holds a
//! secret: a finding carries a redacted preview and a fingerprint only.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::rules::{Confidence, RuleDef, SecretClass, Severity};

/// Version of the JSON report schema (`docs/SCANNER.md`). Bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Where a finding is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Location {
    /// An entry of the image config's `Env`.
    Env {
        /// Variable name.
        name: String,
    },
    /// An image config label.
    Label {
        /// Label key.
        name: String,
    },
    /// A `history[].created_by` entry (ENV and ARG values, commands).
    History {
        /// Index into the config's `history`.
        step: usize,
        /// The layer this step created, if it created one.
        layer_index: Option<usize>,
        /// The build argument or ENV name the secret was assigned to, if any.
        name: Option<String>,
    },
    /// A file in a layer.
    File {
        /// Index of the layer (0 = base).
        layer_index: usize,
        /// Layer digest as listed in the manifest.
        layer_digest: String,
        /// Index into `history` of the step that created the layer, if known.
        history_step: Option<usize>,
        /// Path inside the layer (no leading `/`); `!/` separates nested archive members.
        path: String,
        /// 1-based line of the secret in the file.
        line: u64,
        /// A later layer deletes this file (whiteout): it is invisible in a container but
        /// still in the image.
        deleted_later: bool,
    },
}

impl Location {
    /// `env`, `label`, `history` or `file`.
    pub fn kind(&self) -> &'static str {
        match self {
            Location::Env { .. } => "env",
            Location::Label { .. } => "label",
            Location::History { .. } => "history",
            Location::File { .. } => "file",
        }
    }
}

/// One secret found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Rule id (`docs/SCANNER.md` lists them).
    pub rule: String,
    /// The rule's description.
    pub description: String,
    /// Severity (`info` for public test material).
    pub severity: Severity,
    /// Confidence that this is a real secret.
    pub confidence: Confidence,
    /// Where it is.
    pub location: Location,
    /// At most the first 4 and last 2 characters (high-entropy kinds) or first 2
    /// (password-like kinds); empty when the value is shorter than 12 characters.
    pub preview: String,
    /// Stable identifier for allowlists and de-duplication; see [`fingerprint`].
    pub fingerprint: String,
    /// `value` or `location`: what the fingerprint hashes.
    pub fingerprint_kind: FingerprintKind,
    /// The path is one where packages ship public test material or documentation.
    pub test_material: bool,
    /// A generic (low-confidence) match in package-managed code (`usr/lib/`, `node_modules/`,
    /// `site-packages/`...): reported as `info`.
    #[serde(default)]
    pub package_code: bool,
    /// The allowlist entry's reason, when the finding is allowed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allowed: Option<String>,
    /// The file is byte-identical to one a package installed (the package managers' own
    /// records say so): public vendor material unless the rule is a high-confidence key.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vendor: Option<VendorFile>,
    /// Why the severity was lowered to `info` by the vendor pass or the `.pyc` de-duplication
    /// (path-based `info` is told by `test_material` and `package_code`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
}

impl Finding {
    /// A finding of `rule` for `value` at `location`: the rule's id, description, severity and
    /// confidence, the value's redacted [`preview`] and its [`fingerprint`]. The value itself
    /// is not kept. Not allowed, not test material, not package code: callers that know
    /// better set those.
    pub fn new(rule: &RuleDef, value: &[u8], location: Location) -> Finding {
        let (fingerprint, fingerprint_kind) =
            fingerprint(rule.id, rule.class, value, &location_key(&location));
        Finding {
            rule: rule.id.to_owned(),
            description: rule.description.to_owned(),
            severity: rule.severity,
            confidence: rule.confidence,
            location,
            preview: preview(value, rule.class),
            fingerprint,
            fingerprint_kind,
            test_material: false,
            package_code: false,
            allowed: None,
            vendor: None,
            reason: None,
        }
    }
}

/// A package manager whose records the scanner reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    /// Debian's dpkg.
    Dpkg,
    /// Python wheels installed by pip (or any installer that writes `RECORD`).
    Python,
    /// RPM.
    Rpm,
    /// Alpine's apk.
    Apk,
}

impl Manager {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Manager::Dpkg => "dpkg",
            Manager::Python => "python",
            Manager::Rpm => "rpm",
            Manager::Apk => "apk",
        }
    }
}

/// The package a finding's file belongs to, when the file is byte-identical to what it shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VendorFile {
    /// The package manager whose record proves it.
    pub manager: Manager,
    /// The package (dpkg/rpm/apk) or project (Python) name.
    pub package: String,
}

/// What a fingerprint hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FingerprintKind {
    /// SHA-256 of the value (high-entropy kinds): the same key gets the same fingerprint
    /// wherever it appears.
    Value,
    /// SHA-256 of the location (password-like kinds): never usable to confirm a guessed value.
    Location,
}

/// The outcome for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Scanned completely; no finding that counts.
    Clean,
    /// At least one finding that counts (not allowed, not informational).
    Dirty,
    /// No finding that counts, but the scan did not cover everything: never clean.
    Incomplete,
}

/// The pure verdict decision.
pub fn verdict(findings: &[Finding], complete: bool) -> Verdict {
    if findings.iter().any(counts) {
        Verdict::Dirty
    } else if complete {
        Verdict::Clean
    } else {
        Verdict::Incomplete
    }
}

/// Does a finding make the image dirty? Allowed and informational findings do not.
pub fn counts(f: &Finding) -> bool {
    f.allowed.is_none() && f.severity != Severity::Info
}

/// Counters for one image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Layers scanned.
    pub layers: usize,
    /// Tar entries seen (including nested archives).
    pub entries: u64,
    /// Regular files whose content was scanned.
    pub files_scanned: u64,
    /// Bytes read from layer blobs (compressed).
    pub compressed_bytes: u64,
    /// Bytes after decompression.
    pub decompressed_bytes: u64,
    /// `info` findings (public test material, package code) found past the first
    /// [`crate::layer::MAX_LISTED_INFO_FINDINGS`] of the image: counted here, not listed. They
    /// never change the verdict, so a documentation-heavy image is not made incomplete by
    /// them; findings that may count keep their own bound (`max_findings`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub info_not_listed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The scan of one image (one platform of an index, or one image of an archive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageReport {
    /// Manifest digest (`sha256:...`); for docker-archive sources, which carry no manifest,
    /// the config digest (the image ID) — see `digest_kind`.
    pub digest: String,
    /// `manifest` or `config`.
    pub digest_kind: String,
    /// Config digest.
    pub config_digest: String,
    /// `os/arch[/variant]` when known.
    pub platform: Option<String>,
    /// Tags or reference names the source gives this image.
    pub names: Vec<String>,
    /// The verdict for (digest, ruleset version).
    pub verdict: Verdict,
    /// Why the scan is incomplete (empty when complete).
    pub incomplete: Vec<String>,
    /// Problems that did not stop the scan (e.g. a corrupt nested archive).
    pub warnings: Vec<String>,
    /// Findings, sorted by location.
    pub findings: Vec<Finding>,
    /// Counters.
    pub stats: Stats,
}

/// A whole scan: every image the source selected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Version of the scanner (`lanyard-scan`; the workspace version, the same as
    /// `lanyard-broker`'s).
    pub scanner_version: String,
    /// Rule set version; verdicts are keyed by (digest, ruleset_version).
    pub ruleset_version: String,
    /// The source as given (credentials never included).
    pub source: String,
    /// For a registry source: the digest of the manifest or index the reference named when
    /// it was scanned (a tag resolved).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resolved_digest: Option<String>,
    /// Worst verdict over all images (dirty > incomplete > clean).
    pub verdict: Verdict,
    /// Per-image results.
    pub images: Vec<ImageReport>,
}

impl Report {
    /// The combined verdict: dirty if any image is dirty, else incomplete if any is, else
    /// clean. An empty report is incomplete.
    pub fn combine(images: &[ImageReport]) -> Verdict {
        if images.iter().any(|i| i.verdict == Verdict::Dirty) {
            Verdict::Dirty
        } else if images.is_empty() || images.iter().any(|i| i.verdict == Verdict::Incomplete) {
            Verdict::Incomplete
        } else {
            Verdict::Clean
        }
    }

    /// CLI exit code: 0 clean, 1 dirty, 2 incomplete (cannot prove clean).
    pub fn exit_code(&self) -> u8 {
        match self.verdict {
            Verdict::Clean => 0,
            Verdict::Dirty => 1,
            Verdict::Incomplete => 2,
        }
    }
}

/// Redacted preview of a secret: at most the first 4 and last 2 characters for high-entropy
/// kinds and the first 2 for password-like kinds; nothing below 12 characters.
pub fn preview(value: &[u8], class: SecretClass) -> String {
    let v: Vec<char> = String::from_utf8_lossy(value)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if v.len() < 12 {
        return String::new();
    }
    let clean = |cs: &[char]| -> String {
        cs.iter()
            .map(|&c| if c.is_ascii_graphic() { c } else { '?' })
            .collect()
    };
    match class {
        SecretClass::HighEntropy => {
            format!("{}…{}", clean(&v[..4]), clean(&v[v.len() - 2..]))
        }
        SecretClass::PasswordLike => format!("{}…", clean(&v[..2])),
    }
}

const VALUE_DOMAIN: &[u8] = b"lanyard-scan/value/v1\0";
const LOCATION_DOMAIN: &[u8] = b"lanyard-scan/location/v1\0";

/// The fingerprint of a finding: `v1:` and 32 hex digits of SHA-256 over a fixed domain
/// prefix, the rule id and either the value (whitespace removed; high-entropy kinds only) or
/// a location key (password-like kinds).
pub fn fingerprint(
    rule: &str,
    class: SecretClass,
    value: &[u8],
    location_key: &str,
) -> (String, FingerprintKind) {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let kind = match class {
        SecretClass::HighEntropy => {
            ctx.update(VALUE_DOMAIN);
            ctx.update(rule.as_bytes());
            ctx.update(b"\0");
            let v: Vec<u8> = value
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            ctx.update(&v);
            FingerprintKind::Value
        }
        SecretClass::PasswordLike => {
            ctx.update(LOCATION_DOMAIN);
            ctx.update(rule.as_bytes());
            ctx.update(b"\0");
            ctx.update(location_key.as_bytes());
            FingerprintKind::Location
        }
    };
    let d = ctx.finish();
    (format!("v1:{}", &hex::encode(d.as_ref())[..32]), kind)
}

/// A stable string naming a location (for location fingerprints).
pub fn location_key(loc: &Location) -> String {
    match loc {
        Location::Env { name } => format!("env\0{name}"),
        Location::Label { name } => format!("label\0{name}"),
        Location::History { step, name, .. } => {
            format!("history\0{step}\0{}", name.as_deref().unwrap_or(""))
        }
        Location::File {
            layer_digest,
            path,
            line,
            ..
        } => format!("file\0{layer_digest}\0{path}\0{line}"),
    }
}

/// Sort key: env, label, history, then files by layer, path and line; then rule.
pub fn sort_findings(findings: &mut [Finding]) {
    fn key(f: &Finding) -> (u8, usize, String, u64, String) {
        match &f.location {
            Location::Env { name } => (0, 0, name.clone(), 0, f.rule.clone()),
            Location::Label { name } => (1, 0, name.clone(), 0, f.rule.clone()),
            Location::History { step, name, .. } => (
                2,
                *step,
                name.clone().unwrap_or_default(),
                0,
                f.rule.clone(),
            ),
            Location::File {
                layer_index,
                path,
                line,
                ..
            } => (3, *layer_index, path.clone(), *line, f.rule.clone()),
        }
    }
    findings.sort_by_key(key);
}

/// Renders the report for a terminal or a CI log.
pub fn render_human(report: &Report) -> String {
    let mut s = String::new();
    for img in &report.images {
        let _ = writeln!(
            s,
            "{} {}{}{}: {}",
            report.source,
            img.digest,
            img.platform
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default(),
            if img.names.is_empty() {
                String::new()
            } else {
                format!(" [{}]", img.names.join(", "))
            },
            match img.verdict {
                Verdict::Clean => "CLEAN",
                Verdict::Dirty => "DIRTY",
                Verdict::Incomplete => "INCOMPLETE (not proven clean)",
            }
        );
        for f in &img.findings {
            let where_ = match &f.location {
                Location::Env { name } => format!("config Env {name}"),
                Location::Label { name } => format!("config label {name}"),
                Location::History {
                    step,
                    layer_index,
                    name,
                } => format!(
                    "history step {step}{}{}",
                    layer_index
                        .map(|l| format!(" (layer {l})"))
                        .unwrap_or_else(|| " (no layer)".into()),
                    name.as_ref().map(|n| format!(" {n}")).unwrap_or_default()
                ),
                Location::File {
                    layer_index,
                    path,
                    line,
                    deleted_later,
                    history_step,
                    ..
                } => format!(
                    "layer {layer_index} /{path}:{line}{}{}",
                    history_step
                        .map(|h| format!(" (history step {h})"))
                        .unwrap_or_default(),
                    if *deleted_later {
                        " — deleted by a later layer, still in the image"
                    } else {
                        ""
                    }
                ),
            };
            let _ = writeln!(
                s,
                "  {:<8} {:<6} {:<28} {where_}  {}{} {}{}",
                format!("{:?}", f.severity).to_lowercase(),
                format!("{:?}", f.confidence).to_lowercase(),
                f.rule,
                if f.preview.is_empty() {
                    String::new()
                } else {
                    format!("{} ", f.preview)
                },
                f.fingerprint,
                if f.test_material {
                    "[test material shipped in a package?] ".to_owned()
                } else if f.package_code {
                    "[generic match in package code] ".to_owned()
                } else if let Some(reason) = &f.reason {
                    format!("[{reason}] ")
                } else if let Some(v) = &f.vendor {
                    format!(
                        "[in a file as {} package {} installed it] ",
                        v.manager.name(),
                        v.package
                    )
                } else {
                    String::new()
                },
                f.allowed
                    .as_ref()
                    .map(|r| format!("[allowed: {r}]"))
                    .unwrap_or_default(),
            );
        }
        for r in &img.incomplete {
            let _ = writeln!(s, "  incomplete: {r}");
        }
        for w in &img.warnings {
            let _ = writeln!(s, "  warning: {w}");
        }
        let counted = img.findings.iter().filter(|f| counts(f)).count();
        let _ = writeln!(
            s,
            "  {} finding(s), {} counted; {} layers, {} files, {} MiB decompressed",
            img.findings.len(),
            counted,
            img.stats.layers,
            img.stats.files_scanned,
            img.stats.decompressed_bytes / (1 << 20)
        );
        if img.stats.info_not_listed > 0 {
            let _ = writeln!(
                s,
                "  {} more info finding(s) not listed (public test material or package code)",
                img.stats.info_not_listed
            );
        }
    }
    let _ = writeln!(
        s,
        "verdict: {} (ruleset {})",
        match report.verdict {
            Verdict::Clean => "clean",
            Verdict::Dirty => "dirty",
            Verdict::Incomplete => "incomplete",
        },
        report.ruleset_version
    );
    s
}

/// Renders the report as SARIF 2.1.0 (one run; one result per finding).
pub fn render_sarif(report: &Report, rules: &[(String, String, Severity)]) -> serde_json::Value {
    use serde_json::json;
    let level = |s: Severity| match s {
        Severity::Critical | Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low | Severity::Info => "note",
    };
    let rule_entries: Vec<_> = rules
        .iter()
        .map(|(id, desc, sev)| {
            json!({
                "id": id,
                "name": id,
                "shortDescription": {"text": desc},
                "defaultConfiguration": {"level": level(*sev)},
            })
        })
        .collect();
    let mut results = Vec::new();
    for img in &report.images {
        for f in &img.findings {
            let (uri, line, msg_where) = match &f.location {
                Location::File {
                    layer_index,
                    path,
                    line,
                    deleted_later,
                    ..
                } => (
                    path.clone(),
                    *line,
                    format!(
                        "layer {layer_index}{}",
                        if *deleted_later {
                            ", deleted by a later layer but still in the image"
                        } else {
                            ""
                        }
                    ),
                ),
                other => (
                    format!("image-config/{}", other.kind()),
                    1,
                    format!("image config ({})", other.kind()),
                ),
            };
            let mut result = json!({
                "ruleId": f.rule,
                "level": if counts(f) { level(f.severity) } else { "note" },
                "message": {"text": format!("{} in {} of image {} ({})", f.description, msg_where, img.digest, f.preview)},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": uri},
                        "region": {"startLine": line.max(1)},
                    },
                    "logicalLocations": [{"name": img.digest, "kind": "image"}],
                }],
                "partialFingerprints": {"lanyardFingerprint/v1": f.fingerprint},
                "properties": {
                    "image": img.digest,
                    "location": f.location,
                    "confidence": f.confidence,
                    "severity": f.severity,
                    "testMaterial": f.test_material,
                },
            });
            if let Some(v) = &f.vendor {
                result["properties"]["vendor"] = json!(v);
            }
            if let Some(r) = &f.reason {
                result["properties"]["reason"] = json!(r);
            }
            if let Some(reason) = &f.allowed {
                result["suppressions"] = json!([{"kind": "external", "justification": reason}]);
            }
            results.push(result);
        }
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "lanyard-scan",
                "version": report.scanner_version,
                "semanticVersion": report.scanner_version,
                "informationUri": "https://github.com/lanyard-dev/lanyard/blob/main/docs/SCANNER.md",
                "rules": rule_entries,
            }},
            "results": results,
            "properties": {"rulesetVersion": report.ruleset_version, "verdict": report.verdict},
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(sev: Severity, allowed: Option<&str>) -> Finding {
        Finding {
            rule: "github-pat".into(),
            description: "d".into(),
            severity: sev,
            confidence: Confidence::High,
            location: Location::Env { name: "X".into() },
            preview: String::new(),
            fingerprint: "v1:00".into(),
            fingerprint_kind: FingerprintKind::Value,
            test_material: false,
            package_code: false,
            allowed: allowed.map(str::to_owned),
            vendor: None,
            reason: None,
        }
    }

    #[test]
    fn a_new_finding_takes_the_rule_and_keeps_no_secret() {
        let key = RuleDef {
            id: "test-key",
            description: "a test key",
            keywords: &["tk_"],
            pattern: "tk_[a-z]+",
            severity: Severity::Critical,
            confidence: Confidence::High,
            class: SecretClass::HighEntropy,
            priority: 2,
            min_entropy: 0.0,
            text_only: false,
        };
        let value = b"tk_abcdefghijklmnopq";
        let at = |name: &str| Location::Env { name: name.into() };
        let f = Finding::new(&key, value, at("A"));
        assert_eq!(
            (f.rule.as_str(), f.description.as_str()),
            ("test-key", "a test key")
        );
        assert_eq!(
            (f.severity, f.confidence),
            (Severity::Critical, Confidence::High)
        );
        assert_eq!(f.location, at("A"));
        assert_eq!(f.preview, preview(value, SecretClass::HighEntropy));
        assert_eq!(
            (f.fingerprint.clone(), f.fingerprint_kind),
            fingerprint("test-key", SecretClass::HighEntropy, value, "env\0A")
        );
        assert!(f.allowed.is_none() && !f.test_material && !f.package_code);
        assert!(!format!("{f:?}").contains("abcdefghijklmnopq"));
        // A value fingerprint is the same wherever the value is.
        assert_eq!(
            Finding::new(&key, value, at("B")).fingerprint,
            f.fingerprint
        );
        // A password-like rule fingerprints the location, never the value.
        let password = RuleDef {
            class: SecretClass::PasswordLike,
            confidence: Confidence::Low,
            ..key
        };
        let p = Finding::new(&password, value, at("A"));
        assert_eq!(p.fingerprint_kind, FingerprintKind::Location);
        assert_eq!(p.confidence, Confidence::Low);
        assert_eq!(p.preview, "tk…");
        assert_eq!(
            Finding::new(&password, b"another-value", at("A")).fingerprint,
            p.fingerprint
        );
        assert_ne!(
            Finding::new(&password, value, at("B")).fingerprint,
            p.fingerprint
        );
    }

    #[test]
    fn verdict_rules() {
        assert_eq!(verdict(&[], true), Verdict::Clean);
        assert_eq!(verdict(&[], false), Verdict::Incomplete);
        assert_eq!(
            verdict(&[finding(Severity::High, None)], true),
            Verdict::Dirty
        );
        assert_eq!(
            verdict(&[finding(Severity::High, None)], false),
            Verdict::Dirty
        );
        assert_eq!(
            verdict(&[finding(Severity::High, Some("ok"))], true),
            Verdict::Clean
        );
        assert_eq!(
            verdict(&[finding(Severity::Info, None)], false),
            Verdict::Incomplete
        );
    }

    #[test]
    fn combined_verdict_and_exit_code() {
        let img = |v| ImageReport {
            digest: "sha256:x".into(),
            digest_kind: "manifest".into(),
            config_digest: "sha256:y".into(),
            platform: None,
            names: vec![],
            verdict: v,
            incomplete: vec![],
            warnings: vec![],
            findings: vec![],
            stats: Stats::default(),
        };
        assert_eq!(
            Report::combine(&[img(Verdict::Clean), img(Verdict::Incomplete)]),
            Verdict::Incomplete
        );
        assert_eq!(
            Report::combine(&[img(Verdict::Incomplete), img(Verdict::Dirty)]),
            Verdict::Dirty
        );
        assert_eq!(Report::combine(&[]), Verdict::Incomplete);
        assert_eq!(Report::combine(&[img(Verdict::Clean)]), Verdict::Clean);
    }

    #[test]
    fn preview_shows_little_and_nothing_for_short_values() {
        assert_eq!(
            preview(b"ghp_abcdefghijklmnop", SecretClass::HighEntropy),
            "ghp_…op"
        );
        assert_eq!(preview(b"short-secret", SecretClass::PasswordLike), "sh…");
        assert_eq!(preview(b"elevenchars", SecretClass::HighEntropy), "");
        assert_eq!(preview(b"", SecretClass::HighEntropy), "");
    }

    #[test]
    fn fingerprints() {
        let (a, ka) = fingerprint("npm-token", SecretClass::HighEntropy, b"npm_abc", "env\0A");
        let (b, _) = fingerprint("npm-token", SecretClass::HighEntropy, b"npm_abc", "env\0B");
        assert_eq!(a, b, "value fingerprints do not depend on the location");
        assert_eq!(ka, FingerprintKind::Value);
        assert!(a.starts_with("v1:") && a.len() == 35);
        let (c, kc) = fingerprint(
            "generic-password",
            SecretClass::PasswordLike,
            b"hunter2",
            "env\0A",
        );
        let (d, _) = fingerprint(
            "generic-password",
            SecretClass::PasswordLike,
            b"other",
            "env\0A",
        );
        assert_eq!(c, d, "location fingerprints do not depend on the value");
        assert_eq!(kc, FingerprintKind::Location);
        let (e, _) = fingerprint(
            "generic-password",
            SecretClass::PasswordLike,
            b"hunter2",
            "env\0B",
        );
        assert_ne!(c, e);
    }
}
