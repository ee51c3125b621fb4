//! Targets: which file each credential is written to, in which format, with which mode and
//! owner. Parsed from a YAML config file (`targets:`) or from annotation-style keys
//! (`role=db,field=password,format=raw,path=db/password,mode=0400`); rendering is a pure
//! function of a target and a credential, so every format is tested without a disk.
//!
//! Formats:
//! - `raw`: one field's value, as is (`field=` names it; default: the only field).
//! - `env`: `KEY=value` lines, one per field (or only `field=`), keys derived from field
//!   names (`access_key_id` → `ACCESS_KEY_ID`, with an optional `prefix=`) or given with
//!   `key=` for a single field; values quoted for POSIX `sh` when they need it.
//! - `json`: `{"role","kind","expires_at","refresh_after","lease_id","ttl_seconds","data":{...}}`, the same
//!   bytes as the default layout's `ROLE.json`.
//! - `aws`: an AWS shared-credentials file, `[profile]` (default `default`) with
//!   `aws_access_key_id`, `aws_secret_access_key` and, when present, `aws_session_token`.
//! - `template`: a [minijinja](https://docs.rs/minijinja) template (no code execution) with
//!   `role`, `kind`, `lease_id`, `expires_at`, `refresh_after`, `ttl_seconds` and `data`
//!   (the fields) in scope. Undefined values are errors, never empty strings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use lanyard::wire::Credential;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::files::{FILE_MODE, MAX_NAME_BYTES, check_name};

/// Largest template (inline or file), in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Largest config file, in bytes.
pub const MAX_CONFIG_FILE_BYTES: usize = 1024 * 1024;
/// Most path components in a target path.
pub const MAX_PATH_DEPTH: usize = 8;
/// Most targets in one sidecar.
pub const MAX_TARGETS: usize = 256;
/// Names a template may use besides `data.*`.
pub const TEMPLATE_VARIABLES: &[&str] = &[
    "role",
    "kind",
    "lease_id",
    "expires_at",
    "refresh_after",
    "ttl_seconds",
    "data",
];

/// How a credential is turned into file contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatKind {
    /// One field's value.
    Raw,
    /// `KEY=value` lines.
    Env,
    /// The credential as JSON.
    Json,
    /// AWS shared-credentials file.
    Aws,
    /// A minijinja template.
    Template,
}

impl FormatKind {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Self::Raw),
            "env" => Ok(Self::Env),
            "json" => Ok(Self::Json),
            "aws" => Ok(Self::Aws),
            "template" => Ok(Self::Template),
            other => Err(format!(
                "format {other:?} is not known; use raw, env, json, aws or template"
            )),
        }
    }
}

/// A target as written in a config file or annotation, before it is checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// The role whose credential is written.
    pub role: Option<String>,
    /// The format (default `raw`).
    pub format: Option<FormatKind>,
    /// Path relative to the secrets directory, e.g. `db/password`.
    pub path: Option<String>,
    /// The field (`raw`: which value; `env`: only this one).
    pub field: Option<String>,
    /// File mode as an octal string, e.g. `"0440"` (default `0400`).
    pub mode: Option<ModeSpec>,
    /// Owner user id (the sidecar must be allowed to chown, i.e. run as root).
    pub uid: Option<u32>,
    /// Owner group id.
    pub gid: Option<u32>,
    /// `env`: the key for the single `field`.
    pub key: Option<String>,
    /// `env`: prefix of derived keys, e.g. `DB_`.
    pub prefix: Option<String>,
    /// `aws`: profile name (default `default`).
    pub profile: Option<String>,
    /// `template`: the template text.
    pub template: Option<String>,
    /// `template`: a file holding the template text.
    pub template_file: Option<PathBuf>,
}

/// A file mode as written in configuration: an octal string. A bare YAML integer is refused
/// because `0400` and `400` would mean different things to different YAML readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeSpec(pub String);

impl<'de> Deserialize<'de> for ModeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(u64),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) => Ok(Self(s)),
            Raw::N(n) => Err(serde::de::Error::custom(format!(
                "mode {n} is a bare number; write it as a quoted octal string, e.g. mode: \"0400\""
            ))),
        }
    }
}

/// Parses an octal mode: `0400`, `400`, `0o400`. At most `0777` (no setuid, setgid, sticky).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    let m = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("mode {s:?} is not an octal number like 0400"))?;
    if digits.is_empty() || m > 0o777 {
        return Err(format!(
            "mode {s:?} is out of range; use 0000 to 0777 (no setuid, setgid or sticky bits)"
        ));
    }
    Ok(m)
}

/// The config file: `targets:`, `notify:` and `on_expiry:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The targets.
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    /// What to do after a rotation.
    #[serde(default)]
    pub notify: Vec<crate::notify::NotifySpec>,
    /// What to do with a credential past its expiry that could not be refreshed.
    #[serde(default)]
    pub on_expiry: Option<crate::OnExpiry>,
}

impl ConfigFile {
    /// Reads and parses a YAML config file (bounded). Errors name the file, line and field.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = read_bounded(path, MAX_CONFIG_FILE_BYTES)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Parses YAML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }
}

/// Reads a UTF-8 text file of at most `max` bytes.
pub(crate) fn read_bounded(path: &Path, max: usize) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() > max {
        return Err(format!("larger than {} KiB", max / 1024));
    }
    String::from_utf8(buf).map_err(|_| "not UTF-8 text".to_owned())
}

/// Keys accepted in the annotation form.
const KEYS: &[&str] = &[
    "role",
    "format",
    "path",
    "field",
    "mode",
    "uid",
    "gid",
    "key",
    "prefix",
    "profile",
    "template_file",
    "template",
];

/// Parses the annotation form: comma-separated `key=value` pairs, e.g.
/// `role=db,field=password,format=raw,path=db/password,mode=0400`. `template=` must come last
/// and takes the rest of the string (commas included).
pub fn parse_target_keys(s: &str) -> Result<TargetSpec, String> {
    let mut spec = TargetSpec::default();
    let mut seen = BTreeSet::new();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let (pair, next) = if rest.starts_with("template=") {
            (rest, "")
        } else {
            match rest.split_once(',') {
                Some((p, n)) => (p, n),
                None => (rest, ""),
            }
        };
        rest = next.trim_start();
        // A template keeps its whitespace (a final newline matters in a file).
        let pair = if pair.starts_with("template=") {
            pair
        } else {
            pair.trim()
        };
        if pair.is_empty() {
            continue;
        }
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        let (k, v) = (k.trim(), if k.trim() == "template" { v } else { v.trim() });
        if !KEYS.contains(&k) {
            return Err(format!(
                "unknown key {k:?}; known keys: {}",
                KEYS.join(", ")
            ));
        }
        if !seen.insert(k.to_owned()) {
            return Err(format!("key {k:?} is given twice"));
        }
        let num = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| format!("{k}={v:?} is not a whole number"))
        };
        match k {
            "role" => spec.role = Some(v.to_owned()),
            "format" => spec.format = Some(FormatKind::parse(v)?),
            "path" => spec.path = Some(v.to_owned()),
            "field" => spec.field = Some(v.to_owned()),
            "mode" => spec.mode = Some(ModeSpec(v.to_owned())),
            "uid" => spec.uid = Some(num(v)?),
            "gid" => spec.gid = Some(num(v)?),
            "key" => spec.key = Some(v.to_owned()),
            "prefix" => spec.prefix = Some(v.to_owned()),
            "profile" => spec.profile = Some(v.to_owned()),
            "template_file" => spec.template_file = Some(PathBuf::from(v)),
            _ => spec.template = Some(v.to_owned()),
        }
    }
    Ok(spec)
}

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

/// Checks a target path: relative, plain components, not too deep.
pub fn check_path(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Err("path is empty; give a path relative to the secrets directory".to_owned());
    }
    if path.starts_with('/') {
        return Err(format!(
            "path {path:?} is absolute; give a path relative to the secrets directory"
        ));
    }
    let parts: Vec<String> = path.split('/').map(str::to_owned).collect();
    if parts.len() > MAX_PATH_DEPTH {
        return Err(format!(
            "path {path:?} is deeper than {MAX_PATH_DEPTH} components"
        ));
    }
    for p in &parts {
        if p == ".." || p == "." {
            return Err(format!(
                "path {path:?} leaves or names the secrets directory ({p:?}); give a path inside it"
            ));
        }
        check_name("path component", p).map_err(|why| format!("path {path:?}: {why}"))?;
    }
    Ok(parts)
}

fn check_env_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= MAX_NAME_BYTES
        && key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "env key {key:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"
        ))
    }
}

fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env
}

/// A minijinja error as one line: kind, line and detail (never a rendered value).
fn template_error(origin: &str, e: &minijinja::Error) -> String {
    let mut s = format!("template {origin}: {}", e.kind());
    if let Some(d) = e.detail() {
        s.push_str(": ");
        s.push_str(d);
    }
    if let Some(line) = e.line() {
        s.push_str(&format!(" (line {line})"));
    }
    s
}

impl TargetSpec {
    /// Checks the spec and compiles its template. `what` names it in errors (e.g. `target 2`).
    pub fn check(&self, what: &str) -> Result<Target, String> {
        let err = |m: String| format!("{what}: {m}");
        let role = self
            .role
            .as_deref()
            .ok_or_else(|| err("role is missing; give role=NAME".to_owned()))?;
        check_name("role", role).map_err(err)?;
        let path_text = self
            .path
            .as_deref()
            .ok_or_else(|| err("path is missing; give path=RELATIVE/PATH".to_owned()))?;
        let path = check_path(path_text).map_err(err)?;
        let mode = match &self.mode {
            Some(m) => parse_mode(&m.0).map_err(err)?,
            None => FILE_MODE,
        };
        if let Some(f) = &self.field {
            check_name("field", f).map_err(err)?;
        }
        let kind = self.format.unwrap_or(FormatKind::Raw);
        let only = |keys: &[(&str, bool)]| -> Result<(), String> {
            for (k, set) in keys {
                if *set {
                    return Err(err(format!("{k} does not apply to format {kind:?}")));
                }
            }
            Ok(())
        };
        let tmpl_set = self.template.is_some() || self.template_file.is_some();
        let format = match kind {
            FormatKind::Raw => {
                only(&[
                    ("key", self.key.is_some()),
                    ("prefix", self.prefix.is_some()),
                    ("profile", self.profile.is_some()),
                    ("template", tmpl_set),
                ])?;
                Format::Raw {
                    field: self.field.clone(),
                }
            }
            FormatKind::Env => {
                only(&[("profile", self.profile.is_some()), ("template", tmpl_set)])?;
                if let Some(k) = &self.key {
                    if self.field.is_none() {
                        return Err(err(
                            "key= names the variable for one field; give field= too".to_owned(),
                        ));
                    }
                    check_env_key(k).map_err(err)?;
                }
                let prefix = self.prefix.clone().unwrap_or_default();
                if !prefix.is_empty() {
                    check_env_key(&prefix).map_err(err)?;
                }
                Format::Env {
                    field: self.field.clone(),
                    key: self.key.clone(),
                    prefix,
                }
            }
            FormatKind::Json => {
                only(&[
                    ("field", self.field.is_some()),
                    ("key", self.key.is_some()),
                    ("prefix", self.prefix.is_some()),
                    ("profile", self.profile.is_some()),
                    ("template", tmpl_set),
                ])?;
                Format::Json
            }
            FormatKind::Aws => {
                only(&[
                    ("field", self.field.is_some()),
                    ("key", self.key.is_some()),
                    ("prefix", self.prefix.is_some()),
                    ("template", tmpl_set),
                ])?;
                let profile = self.profile.clone().unwrap_or_else(|| "default".to_owned());
                check_name("profile", &profile).map_err(err)?;
                Format::Aws { profile }
            }
            FormatKind::Template => {
                only(&[
                    ("field", self.field.is_some()),
                    ("key", self.key.is_some()),
                    ("prefix", self.prefix.is_some()),
                    ("profile", self.profile.is_some()),
                ])?;
                let (source, origin) = match (&self.template, &self.template_file) {
                    (Some(t), None) => (t.clone(), "(inline)".to_owned()),
                    (None, Some(f)) => (
                        read_bounded(f, MAX_TEMPLATE_BYTES)
                            .map_err(|e| err(format!("template_file {}: {e}", f.display())))?,
                        f.display().to_string(),
                    ),
                    _ => {
                        return Err(err(
                            "format template needs exactly one of template= or template_file="
                                .to_owned(),
                        ));
                    }
                };
                if source.len() > MAX_TEMPLATE_BYTES {
                    return Err(err(format!(
                        "template is larger than {} KiB",
                        MAX_TEMPLATE_BYTES / 1024
                    )));
                }
                check_template(&source, &origin).map_err(err)?;
                Format::Template { source, origin }
            }
        };
        Ok(Target {
            role: role.to_owned(),
            path,
            mode,
            uid: self.uid,
            gid: self.gid,
            format,
        })
    }
}

/// Compiles a template and checks that it only uses names that exist.
fn check_template(source: &str, origin: &str) -> Result<(), String> {
    let env = template_env();
    let t = env
        .template_from_str(source)
        .map_err(|e| template_error(origin, &e))?;
    let mut unknown: Vec<String> = t
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| !TEMPLATE_VARIABLES.contains(&v.as_str()))
        .collect();
    unknown.sort();
    if !unknown.is_empty() {
        return Err(format!(
            "template {origin} uses {} which {} not defined; available: {} (fields are data.NAME)",
            unknown.join(", "),
            if unknown.len() == 1 { "is" } else { "are" },
            TEMPLATE_VARIABLES.join(", ")
        ));
    }
    Ok(())
}

/// Checks a list of specs: each one, then no two targets on the same path and no target
/// path inside another target's file.
pub fn check_all(specs: &[(String, TargetSpec)]) -> Result<Vec<Target>, String> {
    if specs.len() > MAX_TARGETS {
        return Err(format!("more than {MAX_TARGETS} targets"));
    }
    let mut out = Vec::with_capacity(specs.len());
    for (what, spec) in specs {
        out.push(spec.check(what)?);
    }
    let files: BTreeMap<String, usize> = out
        .iter()
        .enumerate()
        .map(|(i, t)| (t.rel_path(), i))
        .collect();
    let mut seen = BTreeSet::new();
    for (i, t) in out.iter().enumerate() {
        let p = t.rel_path();
        if !seen.insert(p.clone()) {
            return Err(format!(
                "{}: path {p:?} is used by another target too",
                specs[i].0
            ));
        }
        for depth in 1..t.path.len() {
            let dir = t.path[..depth].join("/");
            if let Some(j) = files.get(&dir) {
                return Err(format!(
                    "{}: path {p:?} needs {dir:?} to be a directory, but {} writes a file there",
                    specs[i].0, specs[*j].0
                ));
            }
        }
    }
    Ok(out)
}

/// The JSON document of one credential (also the default layout's `ROLE.json`).
#[derive(Serialize)]
struct RoleJson<'a> {
    role: &'a str,
    kind: &'a str,
    expires_at: &'a str,
    refresh_after: &'a str,
    lease_id: &'a str,
    ttl_seconds: u64,
    data: &'a BTreeMap<String, lanyard::Secret>,
}

/// Renders `c` as the pretty JSON document of the default layout, with a final newline.
pub fn role_json(c: &Credential) -> Result<Zeroizing<Vec<u8>>, String> {
    let doc = RoleJson {
        role: &c.role,
        kind: &c.kind,
        expires_at: &c.expires_at,
        refresh_after: &c.refresh_after,
        lease_id: &c.lease_id,
        ttl_seconds: c.ttl_seconds,
        data: &c.data,
    };
    let mut bytes = Zeroizing::new(
        serde_json::to_vec_pretty(&doc).map_err(|e| format!("cannot encode JSON: {e}"))?,
    );
    bytes.push(b'\n');
    Ok(bytes)
}

/// An env key derived from a field name: upper case, anything else than `[A-Z0-9_]` becomes
/// `_`, with `prefix` in front (and `_` if it would start with a digit).
pub fn env_key(prefix: &str, field: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + field.len() + 1);
    k.push_str(prefix);
    if k.is_empty() && field.starts_with(|c: char| c.is_ascii_digit()) {
        k.push('_');
    }
    k.extend(field.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    k
}

/// Quotes `value` for POSIX `sh` (`set -a; . FILE`): bare when it holds only safe
/// characters, else single-quoted with `'` written as `'\''`. NUL cannot be represented.
pub fn sh_quote(value: &str) -> Result<String, String> {
    if value.contains('\0') {
        return Err("holds a NUL byte, which an env file cannot carry".to_owned());
    }
    let safe = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@+=,%".contains(c));
    if safe {
        return Ok(value.to_owned());
    }
    let mut q = String::with_capacity(value.len() + 2);
    q.push('\'');
    for c in value.chars() {
        if c == '\'' {
            q.push_str("'\\''");
        } else {
            q.push(c);
        }
    }
    q.push('\'');
    Ok(q)
}

fn field<'a>(c: &'a Credential, name: &str) -> Result<&'a lanyard::Secret, String> {
    c.data.get(name).ok_or_else(|| {
        format!(
            "role {:?} has no field {name:?}; it has: {}",
            c.role,
            c.data.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

/// Renders the file contents of `target` for credential `c`. Errors say what is missing and
/// never hold a secret value.
pub fn render(target: &Target, c: &Credential) -> Result<Zeroizing<Vec<u8>>, String> {
    match &target.format {
        Format::Raw { field: f } => {
            let name = match f {
                Some(f) => f.clone(),
                None => match c.data.keys().collect::<Vec<_>>().as_slice() {
                    [only] => (*only).clone(),
                    keys => {
                        return Err(format!(
                            "role {:?} has {} fields ({}); choose one with field=",
                            c.role,
                            keys.len(),
                            keys.iter()
                                .map(|k| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                },
            };
            Ok(Zeroizing::new(
                field(c, &name)?.expose().as_bytes().to_vec(),
            ))
        }
        Format::Env {
            field: f,
            key,
            prefix,
        } => {
            let pairs: Vec<(String, &lanyard::Secret)> = match f {
                Some(f) => vec![(
                    key.clone().unwrap_or_else(|| env_key(prefix, f)),
                    field(c, f)?,
                )],
                None => c
                    .data
                    .iter()
                    .map(|(k, v)| (env_key(prefix, k), v))
                    .collect(),
            };
            let mut out = Zeroizing::new(String::new());
            for (k, v) in pairs {
                check_env_key(&k)?;
                let q = Zeroizing::new(
                    sh_quote(v.expose()).map_err(|why| format!("field for {k}: {why}"))?,
                );
                out.push_str(&k);
                out.push('=');
                out.push_str(&q);
                out.push('\n');
            }
            Ok(Zeroizing::new(out.as_bytes().to_vec()))
        }
        Format::Json => role_json(c),
        Format::Aws { profile } => {
            let line = |name: &str, key: &str| -> Result<String, String> {
                let v = field(c, name)?.expose();
                if v.is_empty() || v.contains(['\n', '\r', '\0']) {
                    return Err(format!(
                        "role {:?} field {name:?} is empty or holds a line break; it cannot go into an AWS credentials file",
                        c.role
                    ));
                }
                Ok(format!("{key} = {v}\n"))
            };
            let mut out = Zeroizing::new(format!("[{profile}]\n"));
            out.push_str(&Zeroizing::new(line("access_key_id", "aws_access_key_id")?));
            out.push_str(&Zeroizing::new(line(
                "secret_access_key",
                "aws_secret_access_key",
            )?));
            if c.data.contains_key("session_token") {
                out.push_str(&Zeroizing::new(line("session_token", "aws_session_token")?));
            }
            Ok(Zeroizing::new(out.as_bytes().to_vec()))
        }
        Format::Template { source, origin } => {
            let env = template_env();
            let t = env
                .template_from_str(source)
                .map_err(|e| template_error(origin, &e))?;
            let data: BTreeMap<&str, &str> = c
                .data
                .iter()
                .map(|(k, v)| (k.as_str(), v.expose()))
                .collect();
            let ctx = minijinja::context! {
                role => &c.role,
                kind => &c.kind,
                lease_id => &c.lease_id,
                expires_at => &c.expires_at,
                refresh_after => &c.refresh_after,
                ttl_seconds => c.ttl_seconds,
                data => data,
            };
            let out = t.render(ctx).map_err(|e| {
                let mut m = template_error(origin, &e);
                if e.kind() == minijinja::ErrorKind::UndefinedError {
                    m.push_str(&format!(
                        "; role {:?} has fields: {}",
                        c.role,
                        c.data.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                m
            })?;
            Ok(Zeroizing::new(Zeroizing::new(out).as_bytes().to_vec()))
        }
    }
}

#[cfg(test)]
mod tests {
    use lanyard::Secret;

    use super::*;

    fn cred(fields: &[(&str, &str)]) -> Credential {
        Credential {
            role: "db".into(),
            kind: "jwt".into(),
            data: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Secret::new(*v)))
                .collect(),
            expires_at: "2030-01-01T00:10:00Z".into(),
            refresh_after: "2030-01-01T00:07:00Z".into(),
            ttl_seconds: 600,
            lease_id: "lease-1".into(),
            ttl_clamped: false,
        }
    }

    fn target(keys: &str) -> Target {
        parse_target_keys(keys)
            .expect("parse")
            .check("target 1")
            .expect("check")
    }

    fn rendered(keys: &str, c: &Credential) -> String {
        String::from_utf8(render(&target(keys), c).expect("render").to_vec()).expect("utf8")
    }

    #[test]
    fn annotation_keys_parse_with_defaults() {
        let t = target("role=db, field=password ,format=raw,path=db/password");
        assert_eq!(t.role, "db");
        assert_eq!(t.path, ["db", "password"]);
        assert_eq!(t.mode, 0o400);
        assert_eq!((t.uid, t.gid), (None, None));
        let t = target("role=db,path=x,mode=0440,uid=1000,gid=2000");
        assert_eq!((t.mode, t.uid, t.gid), (0o440, Some(1000), Some(2000)));
        assert_eq!(t.format, Format::Raw { field: None });
    }

    #[test]
    fn annotation_errors_are_clear() {
        let e = parse_target_keys("role=db,colour=blue").expect_err("unknown");
        assert!(e.contains("colour") && e.contains("known keys"), "{e}");
        let e = parse_target_keys("role=db,role=x").expect_err("twice");
        assert!(e.contains("twice"), "{e}");
        let e = parse_target_keys("role=db,format=xml").expect_err("format");
        assert!(e.contains("xml") && e.contains("template"), "{e}");
        let e = parse_target_keys("role=db,uid=root").expect_err("uid");
        assert!(e.contains("uid"), "{e}");
        let e = parse_target_keys("role=db,pathx").expect_err("no =");
        assert!(e.contains("key=value"), "{e}");
        let e = parse_target_keys("path=x")
            .expect("parse")
            .check("target 3")
            .expect_err("no role");
        assert!(e.starts_with("target 3: role is missing"), "{e}");
    }

    #[test]
    fn template_key_takes_the_rest_with_commas() {
        let t = target("role=db,path=dsn,format=template,template=a={{ data.user }},b={{ role }}");
        let c = cred(&[("user", "u1")]);
        assert_eq!(render(&t, &c).expect("render").as_slice(), b"a=u1,b=db");
        // Its whitespace, including a final newline, is kept.
        let t = target("role=db,path=dsn,format=template,template= {{ role }}\n");
        assert_eq!(render(&t, &c).expect("render").as_slice(), b" db\n");
    }

    #[test]
    fn paths_must_stay_inside_the_secrets_dir() {
        for bad in [
            "../../etc/x",
            "/etc/x",
            "a/../b",
            "./x",
            "a//b",
            "",
            ".hidden",
            "a/b/",
            "x\\y",
            "a/b/c/d/e/f/g/h/i",
        ] {
            let e = parse_target_keys(&format!("role=db,{}", format_args!("path={bad}")))
                .expect("parse")
                .check("target 1");
            assert!(e.is_err(), "{bad:?} must be refused");
        }
        let e = check_path("../../etc/x").expect_err("escape");
        assert!(e.contains("leaves"), "{e}");
        let e = check_path("/etc/x").expect_err("absolute");
        assert!(e.contains("absolute"), "{e}");
        assert_eq!(
            check_path("app/config/db.yaml").expect("ok"),
            ["app", "config", "db.yaml"]
        );
    }

    #[test]
    fn modes_are_octal_strings() {
        assert_eq!(parse_mode("0400"), Ok(0o400));
        assert_eq!(parse_mode("440"), Ok(0o440));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("4755").is_err(), "setuid refused");
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("rw").is_err());
        let e = ConfigFile::parse("targets:\n  - {role: db, path: x, mode: 400}\n")
            .expect_err("bare number");
        assert!(e.contains("quoted octal"), "{e}");
        // A leading zero makes YAML keep it as text, which reads as octal.
        let c = ConfigFile::parse("targets:\n  - {role: db, path: x, mode: 0400}\n")
            .expect("leading zero");
        assert_eq!(c.targets[0].check("t").expect("check").mode, 0o400);
        let c = ConfigFile::parse("targets:\n  - {role: db, path: x, mode: \"0440\"}\n")
            .expect("quoted");
        assert_eq!(c.targets[0].check("t").expect("check").mode, 0o440);
    }

    #[test]
    fn config_file_errors_name_the_field_and_line() {
        let e = ConfigFile::parse("targets:\n  - role: db\n    pth: x\n").expect_err("typo");
        assert!(e.contains("pth") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn options_that_do_not_apply_are_refused() {
        for keys in [
            "role=db,path=x,format=raw,profile=p",
            "role=db,path=x,format=json,field=token",
            "role=db,path=x,format=aws,key=K",
            "role=db,path=x,format=env,key=K",
            "role=db,path=x,format=template",
            "role=db,path=x,format=template,template_file=/y,template=x",
        ] {
            assert!(
                parse_target_keys(keys).expect("parse").check("t").is_err(),
                "{keys} must be refused"
            );
        }
    }

    #[test]
    fn raw_is_the_exact_value() {
        let c = cred(&[("password", "p@ss word\n'x'")]);
        assert_eq!(rendered("role=db,path=p", &c), "p@ss word\n'x'");
        let two = cred(&[("user", "u"), ("password", "p")]);
        assert_eq!(rendered("role=db,path=p,field=user", &two), "u");
        let e = render(&target("role=db,path=p"), &two).expect_err("ambiguous");
        assert!(e.contains("field=") && e.contains("password, user"), "{e}");
        let e = render(&target("role=db,path=p,field=nope"), &two).expect_err("missing");
        assert!(e.contains("no field \"nope\""), "{e}");
        assert!(!e.contains("\"p\""), "{e}");
    }

    #[test]
    fn env_keys_are_derived_and_values_quoted() {
        let c = cred(&[
            ("access_key_id", "AKIA123"),
            ("secret-key", "it's $HOME `x`"),
            ("9lives", ""),
        ]);
        assert_eq!(
            rendered("role=db,path=e,format=env", &c),
            "_9LIVES=''\nACCESS_KEY_ID=AKIA123\nSECRET_KEY='it'\\''s $HOME `x`'\n"
        );
        assert_eq!(
            rendered("role=db,path=e,format=env,prefix=DB_", &c),
            "DB_9LIVES=''\nDB_ACCESS_KEY_ID=AKIA123\nDB_SECRET_KEY='it'\\''s $HOME `x`'\n"
        );
        assert_eq!(
            rendered(
                "role=db,path=e,format=env,field=access_key_id,key=AWS_ACCESS_KEY_ID",
                &c
            ),
            "AWS_ACCESS_KEY_ID=AKIA123\n"
        );
        let e = parse_target_keys("role=db,path=e,format=env,field=a,key=1BAD")
            .expect("parse")
            .check("t")
            .expect_err("bad key");
        assert!(e.contains("not a valid variable name"), "{e}");
        let nul = cred(&[("x", "a\0b")]);
        assert!(render(&target("role=db,path=e,format=env"), &nul).is_err());
    }

    #[test]
    fn quoted_env_values_survive_a_real_shell() {
        let value = "it's $HOME `id` \\ \"q\" \n next";
        let c = cred(&[("v", value)]);
        let body = rendered("role=db,path=e,format=env", &c);
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("env");
        std::fs::write(&f, &body).expect("write");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(". {}; printf %s \"$V\"", f.display()))
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout), value);
    }

    #[test]
    fn json_matches_the_default_layout() {
        let c = cred(&[("token", "eyJ")]);
        let body = rendered("role=db,path=db.json,format=json", &c);
        assert_eq!(
            body,
            "{\n  \"role\": \"db\",\n  \"kind\": \"jwt\",\n  \"expires_at\": \"2030-01-01T00:10:00Z\",\n  \"refresh_after\": \"2030-01-01T00:07:00Z\",\n  \"lease_id\": \"lease-1\",\n  \"ttl_seconds\": 600,\n  \"data\": {\n    \"token\": \"eyJ\"\n  }\n}\n"
        );
    }

    #[test]
    fn aws_shared_credentials_file() {
        let c = cred(&[
            ("access_key_id", "ASIAXYZ"),
            ("secret_access_key", "s3cr3t/+="),
            ("session_token", "FwoGZX"),
        ]);
        assert_eq!(
            rendered("role=db,path=aws/credentials,format=aws,profile=app", &c),
            "[app]\naws_access_key_id = ASIAXYZ\naws_secret_access_key = s3cr3t/+=\naws_session_token = FwoGZX\n"
        );
        let no_session = cred(&[("access_key_id", "AKIA"), ("secret_access_key", "s")]);
        assert_eq!(
            rendered("role=db,path=c,format=aws", &no_session),
            "[default]\naws_access_key_id = AKIA\naws_secret_access_key = s\n"
        );
        let e = render(
            &target("role=db,path=c,format=aws"),
            &cred(&[("token", "t")]),
        )
        .expect_err("not aws");
        assert!(e.contains("access_key_id"), "{e}");
        let inject = cred(&[("access_key_id", "A\n[evil]"), ("secret_access_key", "s")]);
        let e = render(&target("role=db,path=c,format=aws"), &inject).expect_err("newline");
        assert!(e.contains("line break") && !e.contains("evil"), "{e}");
    }

    #[test]
    fn templates_render_and_do_not_escape() {
        let c = cred(&[("password", "p<&>'\"")]);
        let t = "postgres://app:{{ data.password | urlencode }}@db:5432/app?x={{ role }}\n";
        let spec = TargetSpec {
            role: Some("db".into()),
            path: Some("dsn".into()),
            format: Some(FormatKind::Template),
            template: Some(t.into()),
            ..TargetSpec::default()
        };
        let out = render(&spec.check("t").expect("check"), &c).expect("render");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "postgres://app:p%3C%26%3E%27%22@db:5432/app?x=db\n"
        );
        let raw = target("role=db,path=x,format=template,template={{ data.password }}");
        assert_eq!(render(&raw, &c).expect("render").as_slice(), b"p<&>'\"");
    }

    #[test]
    fn template_with_a_missing_field_is_an_error_not_empty() {
        let t = target("role=db,path=x,format=template,template=pw={{ data.pasword }}");
        let c = cred(&[("password", "hunter2")]);
        let e = render(&t, &c).expect_err("missing field");
        assert!(e.contains("undefined") && e.contains("password"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // A top-level name that does not exist is caught when the target is loaded.
        let e = parse_target_keys("role=db,path=x,format=template,template={{ pasword }}")
            .expect("parse")
            .check("target 1")
            .expect_err("unknown name");
        assert!(e.contains("pasword") && e.contains("data.NAME"), "{e}");
        // A syntax error too, with its line.
        let e = parse_target_keys("role=db,path=x,format=template,template=a\n{{ data.x ")
            .expect("parse")
            .check("target 1")
            .expect_err("syntax");
        assert!(e.contains("syntax") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn template_cannot_reach_outside() {
        // include/import/extends are not even part of the language here: templates cannot
        // read files.
        for stmt in [
            "{% include '/etc/passwd' %}",
            "{% import 'x' as y %}",
            "{% extends 'x' %}",
        ] {
            let e = parse_target_keys(&format!("role=db,path=x,format=template,template={stmt}"))
                .expect("parse")
                .check("target 1")
                .expect_err("no loader");
            assert!(e.contains("syntax error"), "{e}");
        }
    }

    #[test]
    fn template_file_is_read_and_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("t.j2");
        std::fs::write(&f, "user={{ data.user }}\n").expect("write");
        let t = target(&format!(
            "role=db,path=x,format=template,template_file={}",
            f.display()
        ));
        assert_eq!(
            render(&t, &cred(&[("user", "u")]))
                .expect("render")
                .as_slice(),
            b"user=u\n"
        );
        std::fs::write(&f, "x".repeat(MAX_TEMPLATE_BYTES + 1)).expect("write");
        let e = parse_target_keys(&format!(
            "role=db,path=x,format=template,template_file={}",
            f.display()
        ))
        .expect("parse")
        .check("t")
        .expect_err("too big");
        assert!(e.contains("KiB"), "{e}");
    }

    #[test]
    fn overlapping_paths_are_refused() {
        let spec = |k: &str| ("t".to_owned(), parse_target_keys(k).expect("parse"));
        let e = check_all(&[spec("role=a,path=x"), spec("role=b,path=x")]).expect_err("dup");
        assert!(e.contains("another target"), "{e}");
        let e = check_all(&[spec("role=a,path=x"), spec("role=b,path=x/y")]).expect_err("nest");
        assert!(e.contains("directory"), "{e}");
        assert_eq!(
            check_all(&[spec("role=a,path=x/a"), spec("role=b,path=x/b")])
                .expect("ok")
                .len(),
            2
        );
    }
}
