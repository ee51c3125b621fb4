//! Loading and validating a policy directory.
//!
//! Every `*.yaml`/`*.yml` file in the directory (hidden files excluded) is read, in file-name
//! order, each bounded to [`MAX_FILE_BYTES`] before parsing. Every problem is collected, each
//! with its file and line, so one `policy check` run shows everything to fix.
//!
//! Each role's backend-specific part is handed to a [`ParseRole`] (the broker's
//! `Backends::validate_role`): it parses the settings into their typed form or says, as a
//! [`RoleError`], what to fix and where (the setting's, scope entry's or cap's line).

mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use super::{ClaimSelector, ClaimValue, Rule, Selector};
use super::{Location, Pattern, PolicySet, Role, RoleError, RoleField, RoleSettings, RoleSpec};
use crate::config::IssuerConfig;
use yaml::{Entry, Node, Value};

/// Largest policy file accepted, in bytes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

pub use crate::config::MAX_TTL_SECONDS;

const TOP_FIELDS: &[&str] = &["roles", "rules"];
const ROLE_FIELDS: &[&str] = &[
    "backend",
    "scope",
    "max_ttl_seconds",
    "default_ttl_seconds",
    "settings",
];
const RULE_FIELDS: &[&str] = &["name", "match", "roles", "require_image", "gate_mode"];
const MATCH_FIELDS: &[&str] = &[
    "issuer",
    "namespace",
    "service_account",
    "subject",
    "bootstrap_role",
    "image_repository",
    "spiffe_id",
    "claims",
];

/// Most claim selectors in one rule's `match.claims`.
pub const MAX_CLAIM_SELECTORS: usize = 32;

/// Most accepted values in one claim selector's list.
pub const MAX_CLAIM_VALUES: usize = 32;

/// Longest claim name in a claim selector, in bytes.
pub const MAX_CLAIM_NAME_BYTES: usize = 128;

/// Claims a claim selector may not name: the verifier checks them (`aud`, times, `jti`), or
/// another selector matches them (`iss`: `issuer`, `sub`: `subject`/`spiffe_id`).
const RESERVED_CLAIMS: &[(&str, &str)] = &[
    ("iss", "use `match.issuer`"),
    ("sub", "use `match.subject` (or `match.spiffe_id`)"),
    ("aud", "the issuer's `audiences` check it"),
    ("exp", "the verifier checks it"),
    ("nbf", "the verifier checks it"),
    ("iat", "the verifier checks it"),
    ("jti", "it differs on every token"),
];

/// Parses a role's settings for its backend at load (for the broker:
/// `issue::Backends::validate_role`; offline, every backend kind).
pub type ParseRole<'a> = dyn Fn(&RoleSpec<'_>) -> Result<RoleSettings, RoleError> + 'a;

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where (line 0 when the problem is the whole file or directory).
    pub location: Location,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.line == 0 {
            write!(f, "{}: {}", self.location.file.display(), self.message)
        } else {
            write!(f, "{}: {}", self.location, self.message)
        }
    }
}

/// Every problem found in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// A role name used somewhere other than where roles are declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleReference {
    /// The role named.
    pub role: String,
    /// The rule that names it.
    pub rule: String,
    /// Whether it is the rule's `match.bootstrap_role` (else one of its `roles`).
    pub bootstrap_role: bool,
    /// Where: the rule's line for `roles`, the field's line for `bootstrap_role`.
    pub location: Location,
}

/// What one policy file declares, before the checks that need the whole directory
/// (duplicate names across files, references to roles declared elsewhere).
#[derive(Debug, Default)]
pub struct ParsedFile {
    /// Roles that passed every check of their own.
    pub roles: Vec<Role>,
    /// Rules that passed every check of their own.
    pub rules: Vec<Rule>,
    /// Every role name declared in the file, valid or not, with its location.
    pub declared_roles: Vec<(String, Location)>,
    /// Every rule name declared in the file, valid or not, with its location.
    pub declared_rules: Vec<(String, Location)>,
    /// Role names the file's rules refer to.
    pub references: Vec<RoleReference>,
    /// Problems found in the file.
    pub errors: Vec<PolicyError>,
}

/// Parses and checks one policy file's text. `path` is used only to label locations;
/// `parse_role` parses each otherwise valid role's settings for its backend. Never panics on
/// any input; the caller bounds `text`'s size.
pub fn parse_file(path: &Path, text: &str, parse_role: &ParseRole<'_>) -> ParsedFile {
    let mut cx = FileCx {
        path,
        parse_role,
        out: ParsedFile::default(),
    };
    // YAML counts a lone `\r` as a line break, editors and `file:line` readers mostly do not:
    // refuse it so every reported line number means the same thing to everyone.
    if let Some(pos) = text
        .char_indices()
        .find(|&(i, c)| c == '\r' && text.as_bytes().get(i + 1) != Some(&b'\n'))
        .map(|(i, _)| i)
    {
        let line = text[..pos].matches('\n').count() + 1;
        cx.error(
            line,
            "a carriage return (\\r) without a line feed; save the file with \\n or \\r\\n line endings"
                .to_owned(),
        );
        return cx.out;
    }
    match yaml::parse(text) {
        Err((line, message)) => cx.error(line, message),
        Ok(doc) => {
            for (line, message) in doc.problems {
                cx.error(line, message);
            }
            if let Some(root) = doc.root {
                cx.top(&root);
            }
        }
    }
    cx.out
}

/// Loads every `*.yaml`/`*.yml` file in `dir`. `parse_role` parses each role's settings for
/// its backend.
pub fn load_dir(dir: &Path, parse_role: &ParseRole<'_>) -> Result<PolicySet, PolicyErrors> {
    let whole = |path: &Path, message: String| PolicyError {
        location: Location {
            file: path.to_owned(),
            line: 0,
        },
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| {
        PolicyErrors(vec![whole(
            dir,
            format!("cannot read the policy directory: {e}"),
        )])
    })?;
    let mut errors = Vec::new();
    let mut names = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(whole(dir, format!("cannot list the policy directory: {e}")));
                continue;
            }
        };
        let name = entry.file_name();
        let is_policy = name
            .to_str()
            .is_some_and(|n| !n.starts_with('.') && (n.ends_with(".yaml") || n.ends_with(".yml")));
        if !is_policy {
            continue;
        }
        let path = dir.join(&name);
        // `metadata` follows symlinks, as Kubernetes ConfigMap volumes use them.
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => names.push(name),
            Err(e) => errors.push(whole(&path, format!("cannot read: {e}"))),
        }
    }
    names.sort();
    if names.is_empty() && errors.is_empty() {
        errors.push(whole(
            dir,
            format!(
                "no policy files in {}: add *.yaml files with roles and rules (an empty \
                 directory would deny every request)",
                dir.display()
            ),
        ));
    }

    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut parsed = Vec::new();
    let mut files = Vec::new();
    for name in &names {
        let path = dir.join(name);
        let text = match read_bounded(&path) {
            Ok(text) => text,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for part in [name.as_encoded_bytes(), text.as_bytes()] {
            digest.update(&(part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        parsed.push(parse_file(&path, &text, parse_role));
        files.push(path);
    }

    // Checks across files.
    let mut role_names: HashMap<&str, &Location> = HashMap::new();
    let mut rule_names: HashMap<&str, &Location> = HashMap::new();
    for file in &parsed {
        errors.extend(file.errors.iter().cloned());
        for (name, location) in &file.declared_roles {
            if let Some(first) = role_names.get(name.as_str()) {
                errors.push(PolicyError {
                    location: location.clone(),
                    message: format!(
                        "role {name:?} is already defined at {first}; role names must be unique \
                         across the policy directory, so rename or remove one"
                    ),
                });
            } else {
                role_names.insert(name, location);
            }
        }
        for (name, location) in &file.declared_rules {
            if let Some(first) = rule_names.get(name.as_str()) {
                errors.push(PolicyError {
                    location: location.clone(),
                    message: format!(
                        "rule {name:?} is already defined at {first}; rule names must be unique \
                         across the policy directory, so rename or remove one"
                    ),
                });
            } else {
                rule_names.insert(name, location);
            }
        }
    }
    let mut known: Vec<&str> = role_names.keys().copied().collect();
    known.sort_unstable();
    for reference in parsed.iter().flat_map(|f| &f.references) {
        if role_names.contains_key(reference.role.as_str()) {
            continue;
        }
        let what = if reference.bootstrap_role {
            format!(
                "rule {:?}: match.bootstrap_role names unknown role {:?}",
                reference.rule, reference.role
            )
        } else {
            format!(
                "rule {:?} grants unknown role {:?}",
                reference.rule, reference.role
            )
        };
        let hint = match closest(&reference.role, known.iter().copied()) {
            Some(near) => format!("; did you mean {near:?}?"),
            None if known.is_empty() => "; no roles are defined in any policy file".to_owned(),
            None if known.len() <= 10 => format!("; defined roles: {}", known.join(", ")),
            None => format!(
                "; {} roles are defined, none with a similar name",
                known.len()
            ),
        };
        errors.push(PolicyError {
            location: reference.location.clone(),
            message: what + &hint,
        });
    }

    if !errors.is_empty() {
        // Stable: within one line, problems stay in the order they were found.
        errors.sort_by(|a, b| {
            (&a.location.file, a.location.line).cmp(&(&b.location.file, b.location.line))
        });
        return Err(PolicyErrors(errors));
    }
    let mut set = PolicySet {
        files,
        digest: hex::encode(digest.finish().as_ref()),
        ..PolicySet::default()
    };
    for file in parsed {
        for role in file.roles {
            set.roles.insert(role.name.clone(), role);
        }
        set.rules.extend(file.rules);
    }
    Ok(set)
}

/// Reads a file as UTF-8, refusing it when it is over [`MAX_FILE_BYTES`] without reading more.
fn read_bounded(path: &Path) -> Result<String, PolicyError> {
    let err = |line: usize, message: String| PolicyError {
        location: Location {
            file: path.to_owned(),
            line,
        },
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| err(0, format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(0, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(err(
            0,
            format!(
                "larger than the {MAX_FILE_BYTES}-byte (1 MiB) limit for a policy file; split \
                 it into several files"
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
        err(line, "not valid UTF-8; save the file as UTF-8".to_owned())
    })
}

/// Whether `name` is a valid role or rule name: `[a-z0-9][a-z0-9-_.]{0,62}`.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, case-insensitive, bounded work for long inputs.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(128).flat_map(char::to_lowercase).collect();
    let b: Vec<char> = b.chars().take(128).flat_map(char::to_lowercase).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// State while checking one file.
struct FileCx<'a> {
    path: &'a Path,
    parse_role: &'a ParseRole<'a>,
    out: ParsedFile,
}

impl FileCx<'_> {
    fn location(&self, line: usize) -> Location {
        Location {
            file: self.path.to_owned(),
            line,
        }
    }

    fn error(&mut self, line: usize, message: String) {
        let location = self.location(line);
        self.out.errors.push(PolicyError { location, message });
    }

    /// Reports keys of `entries` not in `valid`.
    fn unknown_fields(&mut self, entries: &[Entry], valid: &[&str], owner: &str) {
        for e in entries {
            if valid.contains(&e.key.as_str()) {
                continue;
            }
            let hint = closest(&e.key, valid.iter().copied())
                .map(|near| format!("; did you mean {near:?}?"))
                .unwrap_or_default();
            let key = yaml::truncate(&e.key, 64);
            self.error(
                e.key_line,
                format!(
                    "unknown field {key:?} in {owner}{hint} (valid fields: {})",
                    valid.join(", ")
                ),
            );
        }
    }

    /// The entries of a mapping node, or an error at `line` naming `what`.
    fn mapping<'n>(&mut self, node: &'n Node, line: usize, what: &str) -> Option<&'n [Entry]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            _ => {
                self.error(
                    line,
                    format!(
                        "{what} must be a mapping (`key: value` lines), not {}",
                        node.describe()
                    ),
                );
                None
            }
        }
    }

    /// A field's value as a non-empty string. Any non-null scalar is accepted as its text.
    fn string(&mut self, e: &Entry, owner: &str) -> Option<String> {
        match &e.value.value {
            _ if e.value.is_null() => {
                self.error(
                    e.key_line,
                    format!("{owner}: {} is empty; give it a value", e.key),
                );
                None
            }
            Value::Scalar { text, .. } if text.is_empty() => {
                self.error(
                    e.key_line,
                    format!("{owner}: {} must not be an empty string", e.key),
                );
                None
            }
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.error(
                    e.key_line,
                    format!(
                        "{owner}: {} must be a string, not {}",
                        e.key,
                        e.value.describe()
                    ),
                );
                None
            }
        }
    }

    /// A field's value as a list of non-empty strings, each with its line.
    fn string_list(&mut self, e: &Entry, owner: &str) -> Option<Vec<(String, usize)>> {
        let Value::Seq(items) = &e.value.value else {
            let example = if e.key == "scope" {
                "[orders:read]"
            } else {
                "[name]"
            };
            self.error(
                e.key_line,
                format!(
                    "{owner}: {} must be a list, e.g. `{}: {example}`, not {}",
                    e.key,
                    e.key,
                    e.value.describe()
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match &item.value {
                Value::Scalar { text, .. } if !item.is_null() && !text.is_empty() => {
                    out.push((text.clone(), item.line));
                }
                _ => {
                    ok = false;
                    self.error(
                        item.line,
                        format!(
                            "{owner}: every entry of {} must be a non-empty string, not {}",
                            e.key,
                            item.describe()
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    /// A field's value as a whole number of seconds in `min..=max`.
    fn seconds(&mut self, e: &Entry, owner: &str, min: u64, max: u64) -> Option<u64> {
        let n = match &e.value.value {
            Value::Scalar { text, plain: true } if !e.value.is_null() => {
                let digits = text.strip_prefix('+').unwrap_or(text);
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    // Too many digits to fit is simply out of range.
                    Some(digits.parse::<u64>().unwrap_or(u64::MAX))
                } else if text.starts_with('-') && text[1..].bytes().all(|b| b.is_ascii_digit()) {
                    Some(0)
                } else {
                    None
                }
            }
            _ => None,
        };
        match n {
            None => {
                self.error(
                    e.key_line,
                    format!(
                        "{owner}: {} must be a whole number of seconds (e.g. `{}: 300`), not {}",
                        e.key,
                        e.key,
                        e.value.describe()
                    ),
                );
                None
            }
            Some(n) if n < min || n > max => {
                let shown = match &e.value.value {
                    Value::Scalar { text, .. } => yaml::truncate(text, 24),
                    _ => n.to_string(),
                };
                self.error(
                    e.key_line,
                    format!(
                        "{owner}: {} must be between {min} and {max} seconds, got {shown}",
                        e.key
                    ),
                );
                None
            }
            Some(n) => Some(n),
        }
    }

    fn top(&mut self, root: &Node) {
        if root.is_null() {
            return;
        }
        let Some(entries) = self.mapping(root, root.line, "a policy file") else {
            return;
        };
        self.unknown_fields(entries, TOP_FIELDS, "a policy file");
        for e in entries {
            match e.key.as_str() {
                "roles" if !e.value.is_null() => {
                    if let Some(roles) = self.mapping(&e.value, e.key_line, "roles") {
                        for role in roles {
                            self.role(role);
                        }
                    }
                }
                "rules" if !e.value.is_null() => match &e.value.value {
                    Value::Seq(items) => {
                        for (index, item) in items.iter().enumerate() {
                            self.rule(index, item);
                        }
                    }
                    _ => self.error(
                        e.key_line,
                        format!(
                            "rules must be a list (each rule starts with `- name:`), not {}",
                            e.value.describe()
                        ),
                    ),
                },
                _ => {}
            }
        }
    }

    fn role(&mut self, e: &Entry) {
        let name = &e.key;
        let line = e.key_line;
        let owner = format!("role {:?}", yaml::truncate(name, 64));
        let errors_before = self.out.errors.len();
        if !is_valid_name(name) {
            self.error(
                line,
                format!(
                    "invalid role name {:?}: use 1 to 63 lowercase letters, digits, '-', '_' or \
                     '.', starting with a letter or digit",
                    yaml::truncate(name, 64)
                ),
            );
        }
        let location = self.location(line);
        self.out
            .declared_roles
            .push((name.clone(), location.clone()));
        let Some(fields) = self.mapping(&e.value, line, &owner) else {
            return;
        };
        self.unknown_fields(fields, ROLE_FIELDS, &owner);
        let get = |key: &str| fields.iter().find(|f| f.key == key);

        let backend = match get("backend") {
            Some(f) => self.string(f, &owner),
            None => {
                self.error(
                    line,
                    format!("{owner} has no backend; add one, e.g. `backend: jwt`"),
                );
                None
            }
        };
        // The line of each kept scope entry, to point at the one a backend refuses.
        let mut scope_lines = Vec::new();
        let scope = match get("scope") {
            Some(f) if f.value.is_null() => Some(Vec::new()),
            Some(f) => self.string_list(f, &owner).map(|items| {
                let mut scope = Vec::new();
                for (item, item_line) in items {
                    if item.chars().any(char::is_whitespace) {
                        self.error(
                            item_line,
                            format!(
                                "{owner}: scope entry {:?} contains whitespace, but scopes are \
                                 joined with spaces; split it into separate entries",
                                yaml::truncate(&item, 64)
                            ),
                        );
                    } else if !scope.contains(&item) {
                        scope.push(item);
                        scope_lines.push(item_line);
                    }
                }
                scope
            }),
            None => Some(Vec::new()),
        };
        let max_ttl = match get("max_ttl_seconds") {
            Some(f) => self.seconds(f, &owner, 1, MAX_TTL_SECONDS),
            None => {
                self.error(
                    line,
                    format!(
                        "{owner} has no max_ttl_seconds; add the longest lifetime a credential \
                         may have (1 to {MAX_TTL_SECONDS} seconds), e.g. `max_ttl_seconds: 900`"
                    ),
                );
                None
            }
        };
        let default_ttl = match (get("default_ttl_seconds"), max_ttl) {
            (Some(f), Some(max)) => {
                let default = self.seconds(f, &owner, 1, MAX_TTL_SECONDS);
                match default {
                    Some(d) if d > max => {
                        self.error(
                            f.key_line,
                            format!(
                                "{owner}: default_ttl_seconds ({d}) is above max_ttl_seconds \
                                 ({max}); lower the default or raise the cap"
                            ),
                        );
                        None
                    }
                    other => other,
                }
            }
            (Some(f), None) => self.seconds(f, &owner, 1, MAX_TTL_SECONDS),
            (None, max) => max,
        };
        let settings_entries: &[Entry] = match get("settings") {
            Some(f) if !f.value.is_null() => {
                match self.mapping(&f.value, f.key_line, &format!("{owner}: settings")) {
                    Some(entries) => entries,
                    None => return,
                }
            }
            _ => &[],
        };
        let settings: serde_json::Map<String, serde_json::Value> = settings_entries
            .iter()
            .map(|s| (s.key.clone(), to_json(&s.value)))
            .collect();

        if self.out.errors.len() != errors_before {
            return;
        }
        let (Some(backend), Some(scope), Some(max_ttl), Some(default_ttl)) =
            (backend, scope, max_ttl, default_ttl)
        else {
            return;
        };
        let spec = RoleSpec {
            name,
            backend: &backend,
            scope: &scope,
            max_ttl_seconds: max_ttl,
            settings: &settings,
        };
        match (self.parse_role)(&spec) {
            Ok(settings) => self.out.roles.push(Role {
                name: name.clone(),
                backend,
                scope,
                max_ttl_seconds: max_ttl,
                default_ttl_seconds: default_ttl,
                settings,
                location,
            }),
            Err(err) => {
                // Point at what the backend refuses: the setting (or `settings:` when one is
                // missing), the scope entry, the cap; the role itself for its backend.
                let key_line = |key: &str| get(key).map(|f| f.key_line);
                let at = match err.field() {
                    RoleField::Backend => None,
                    RoleField::Setting(name) => settings_entries
                        .iter()
                        .find(|s| s.key == name)
                        .map(|s| s.key_line)
                        .or_else(|| key_line("settings")),
                    RoleField::Scope => key_line("scope"),
                    RoleField::ScopeEntry(i) => {
                        scope_lines.get(i).copied().or_else(|| key_line("scope"))
                    }
                    RoleField::MaxTtl => key_line("max_ttl_seconds"),
                };
                self.error(at.unwrap_or(line), format!("{owner}: {err}"));
            }
        }
    }

    fn rule(&mut self, index: usize, node: &Node) {
        let line = node.line;
        let errors_before = self.out.errors.len();
        let unnamed = format!("rule #{} (line {line})", index + 1);
        let Some(fields) = self.mapping(node, line, &unnamed) else {
            return;
        };
        let get = |key: &str| fields.iter().find(|f| f.key == key);
        let name = match get("name") {
            Some(f) => self.string(f, &unnamed),
            None => {
                self.error(
                    line,
                    format!("{unnamed} has no name; add one, e.g. `- name: shop-api`"),
                );
                None
            }
        };
        let owner = match &name {
            Some(n) => format!("rule {:?}", yaml::truncate(n, 64)),
            None => unnamed,
        };
        let location = self.location(line);
        if let (Some(n), Some(f)) = (&name, get("name")) {
            if is_valid_name(n) {
                self.out.declared_rules.push((n.clone(), location.clone()));
            } else {
                self.error(
                    f.key_line,
                    format!(
                        "invalid rule name {:?}: use 1 to 63 lowercase letters, digits, '-', '_' \
                         or '.', starting with a letter or digit",
                        yaml::truncate(n, 64)
                    ),
                );
            }
        }
        self.unknown_fields(fields, RULE_FIELDS, &owner);
        let rule_name = name.clone().unwrap_or_default();

        let selector = match get("match") {
            None => {
                self.error(
                    line,
                    format!(
                        "{owner} has no `match`; a rule without a selector would grant its roles \
                         to every identity, so add at least one of: {}",
                        MATCH_FIELDS.join(", ")
                    ),
                );
                None
            }
            Some(f) => self.selector(f, &owner, &rule_name),
        };
        let roles = match get("roles") {
            None => {
                self.error(
                    line,
                    format!(
                        "{owner} has no roles; add the roles it grants, e.g. `roles: [orders-api]`"
                    ),
                );
                None
            }
            Some(f)
                if f.value.is_null() || matches!(&f.value.value, Value::Seq(v) if v.is_empty()) =>
            {
                self.error(
                    f.key_line,
                    format!("{owner}: roles is empty; list the roles this rule grants"),
                );
                None
            }
            Some(f) => self.string_list(f, &owner).map(|items| {
                let mut roles: Vec<String> = Vec::new();
                for (role, _) in items {
                    if !roles.contains(&role) {
                        self.out.references.push(RoleReference {
                            role: role.clone(),
                            rule: rule_name.clone(),
                            bootstrap_role: false,
                            location: location.clone(),
                        });
                        roles.push(role);
                    }
                }
                roles
            }),
        };

        let require_image = match get("require_image") {
            None => false,
            Some(f) => match self.string(f, &owner).as_deref() {
                Some("true") => true,
                Some("false") => false,
                Some(_) => {
                    self.error(
                        f.key_line,
                        format!("{owner}: require_image must be true or false"),
                    );
                    false
                }
                None => false,
            },
        };
        let gate_mode = match get("gate_mode") {
            None => None,
            Some(f) => match self.string(f, &owner).as_deref() {
                Some("enforce") => Some(crate::policy::GateMode::Enforce),
                Some("audit") => Some(crate::policy::GateMode::Audit),
                Some(_) => {
                    self.error(
                        f.key_line,
                        format!("{owner}: gate_mode must be `enforce` or `audit`"),
                    );
                    None
                }
                None => None,
            },
        };

        if self.out.errors.len() != errors_before {
            return;
        }
        if let (Some(name), Some(selector), Some(roles)) = (name, selector, roles) {
            self.out.rules.push(Rule {
                name,
                selector,
                roles,
                require_image,
                gate_mode,
                location,
            });
        }
    }

    fn selector(&mut self, f: &Entry, owner: &str, rule_name: &str) -> Option<Selector> {
        let empty = || {
            format!(
                "{owner}: `match` is empty; a rule without a selector would grant its roles to \
                 every identity, so add at least one of: {}",
                MATCH_FIELDS.join(", ")
            )
        };
        if f.value.is_null() {
            self.error(f.key_line, empty());
            return None;
        }
        let entries = self.mapping(&f.value, f.key_line, &format!("{owner}: match"))?;
        if entries.is_empty() {
            self.error(f.key_line, empty());
            return None;
        }
        self.unknown_fields(entries, MATCH_FIELDS, &format!("the match of {owner}"));
        let mut selector = Selector::default();
        let mut ok = true;
        for e in entries {
            if !MATCH_FIELDS.contains(&e.key.as_str()) {
                ok = false;
                continue;
            }
            if e.key == "claims" {
                match self.claim_selectors(e, owner) {
                    Some(claims) => selector.claims = claims,
                    None => ok = false,
                }
                continue;
            }
            let field_owner = format!("{owner}: match");
            let Some(text) = self.string(e, &field_owner) else {
                ok = false;
                continue;
            };
            match e.key.as_str() {
                "issuer" => selector.issuer = Some(text),
                "spiffe_id" => match spiffe_pattern(&text) {
                    Ok(pattern) => selector.spiffe_id = Some(pattern),
                    Err(why) => {
                        ok = false;
                        self.error(e.key_line, format!("{owner}: match.spiffe_id {why}"));
                    }
                },
                "bootstrap_role" => {
                    self.out.references.push(RoleReference {
                        role: text.clone(),
                        rule: rule_name.to_owned(),
                        bootstrap_role: true,
                        location: self.location(e.key_line),
                    });
                    selector.bootstrap_role = Some(text);
                }
                field => match Pattern::new(&text) {
                    Ok(pattern) => match field {
                        "namespace" => selector.namespace = Some(pattern),
                        "service_account" => selector.service_account = Some(pattern),
                        "image_repository" => selector.image_repository = Some(pattern),
                        _ => selector.subject = Some(pattern),
                    },
                    Err(err) => {
                        ok = false;
                        self.error(
                            e.key_line,
                            format!(
                                "{owner}: match.{field} is not a valid glob: {}; globs use `*`, \
                                 `?` and `[...]`, and `\\` escapes them",
                                err.kind()
                            ),
                        );
                    }
                },
            }
        }
        if ok
            && !selector.claims.is_empty()
            && selector.issuer.is_none()
            && selector.spiffe_id.is_none()
        {
            // A claim means what its issuer says: `repository: shop/*` from an issuer that
            // lets its users pick claims would grant to anyone.
            self.error(
                f.key_line,
                format!(
                    "{owner}: match.claims needs `match.issuer` (or `match.spiffe_id`) in the \
                     same rule: a claim's value means something only for the issuer that set it"
                ),
            );
            ok = false;
        }
        ok.then_some(selector)
    }

    /// `match.claims`: a mapping of claim name to a value or a list of accepted values, each
    /// typed as YAML reads it (`true` a boolean, `"true"` a string, `3` a number; strings
    /// are globs).
    fn claim_selectors(&mut self, e: &Entry, owner: &str) -> Option<Vec<ClaimSelector>> {
        let what = format!("{owner}: match.claims");
        if e.value.is_null() {
            self.error(
                e.key_line,
                format!("{what} is empty; map claim names to values, e.g. `claims: {{ref_type: branch}}`"),
            );
            return None;
        }
        let entries = self.mapping(&e.value, e.key_line, &what)?;
        if entries.is_empty() {
            self.error(
                e.key_line,
                format!("{what} is empty; name at least one claim"),
            );
            return None;
        }
        if entries.len() > MAX_CLAIM_SELECTORS {
            self.error(
                e.key_line,
                format!(
                    "{what} has {} claims, more than the {MAX_CLAIM_SELECTORS} accepted",
                    entries.len()
                ),
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for c in entries {
            let name = yaml::truncate(&c.key, 64);
            if c.key.is_empty() || c.key.len() > MAX_CLAIM_NAME_BYTES {
                self.error(
                    c.key_line,
                    format!("{what}: a claim name must be 1 to {MAX_CLAIM_NAME_BYTES} bytes"),
                );
                ok = false;
                continue;
            }
            if let Some((_, why)) = RESERVED_CLAIMS.iter().find(|(n, _)| *n == c.key) {
                self.error(
                    c.key_line,
                    format!("{what}: claim {name:?} cannot be selected on: {why}"),
                );
                ok = false;
                continue;
            }
            if out.iter().any(|s: &ClaimSelector| s.name == c.key) {
                self.error(
                    c.key_line,
                    format!("{what}: claim {name:?} is listed twice"),
                );
                ok = false;
                continue;
            }
            let items: Vec<&Node> = match &c.value.value {
                Value::Seq(items) => items.iter().collect(),
                _ => vec![&c.value],
            };
            if items.is_empty() || items.len() > MAX_CLAIM_VALUES {
                self.error(
                    c.key_line,
                    format!("{what}.{name}: list 1 to {MAX_CLAIM_VALUES} accepted values"),
                );
                ok = false;
                continue;
            }
            let mut values = Vec::new();
            for item in items {
                match claim_value(item) {
                    Ok(v) => values.push(v),
                    Err(why) => {
                        self.error(item.line, format!("{what}.{name}: {why}"));
                        ok = false;
                    }
                }
            }
            out.push(ClaimSelector {
                name: c.key.clone(),
                values,
                line: c.key_line,
            });
        }
        ok.then_some(out)
    }
}

/// One accepted value of a claim selector, typed as YAML's core schema reads it.
fn claim_value(node: &Node) -> Result<ClaimValue, String> {
    use serde_json::Value as J;
    match to_json(node) {
        J::Bool(b) => Ok(ClaimValue::Bool(b)),
        J::Number(n) => Ok(ClaimValue::Number(n)),
        J::String(text) if text.is_empty() => {
            Err("an empty string matches nothing useful; give a value".to_owned())
        }
        J::String(text) => Pattern::new(&text).map(ClaimValue::String).map_err(|err| {
            format!(
                "not a valid glob: {}; globs use `*`, `?` and `[...]`, and `\\` escapes them",
                err.kind()
            )
        }),
        J::Null => Err("is empty; give a string, boolean or number".to_owned()),
        other => Err(format!(
            "must be a string, boolean or number (or a list of them), not {}",
            match other {
                J::Array(_) => "a nested list",
                _ => "a mapping",
            }
        )),
    }
}

/// `match.spiffe_id`: `spiffe://<trust domain>` with the trust domain written out, then a
/// path glob (`*` within a segment, `**` across).
fn spiffe_pattern(text: &str) -> Result<Pattern, String> {
    let rest = text.strip_prefix("spiffe://").ok_or_else(|| {
        "must start with `spiffe://`, e.g. `spiffe://example.org/ns/shop/sa/*`".to_owned()
    })?;
    let td = rest.split('/').next().unwrap_or_default();
    if !crate::config::is_valid_trust_domain(td) {
        return Err(format!(
            "names trust domain {:?}: write it out (lowercase letters, digits, `.`, `-`, `_`; \
             no globs), so a rule never spans trust domains",
            yaml::truncate(td, 64)
        ));
    }
    Pattern::path(text).map_err(|err| {
        format!(
            "is not a valid glob: {}; globs use `*`, `?` and `[...]`, and `\\` escapes them",
            err.kind()
        )
    })
}

/// Warnings (not errors) for claim selectors that cannot match what their rule's issuer
/// sends: a selector whose JSON type differs from the claim's (a boolean `true` where GitLab
/// sends the string `"true"`), or a claim an issuer that declares its claim set
/// (`claim_profile`, `claim_types`, a well-known issuer URL) does not send. `issuers` is the
/// broker's issuer configuration (empty offline: only well-known issuer URLs are known).
pub fn claim_warnings(set: &PolicySet, issuers: &[IssuerConfig]) -> Vec<PolicyError> {
    let mut out = Vec::new();
    for rule in &set.rules {
        let Some(issuer) = &rule.selector.issuer else {
            continue;
        };
        let configured = issuers.iter().find(|i| &i.issuer == issuer);
        let fallback;
        let cfg = match configured {
            Some(c) => c,
            None => {
                if crate::config::ClaimProfile::for_issuer(issuer).is_none() {
                    continue;
                }
                fallback = IssuerConfig::named(issuer);
                &fallback
            }
        };
        for sel in &rule.selector.claims {
            let location = Location {
                file: rule.location.file.clone(),
                line: sel.line,
            };
            let warn = |message: String| PolicyError {
                location: location.clone(),
                message,
            };
            match cfg.claim_type(&sel.name) {
                Some(sent) => {
                    if let Some(v) = sel.values.iter().find(|v| v.claim_type() != sent) {
                        out.push(warn(format!(
                            "warning: rule {:?}: claims.{} wants {v}, but {issuer} sends it as a \
                             {}, so it never matches{}",
                            rule.name,
                            sel.name,
                            sent.as_str(),
                            if sent == crate::config::ClaimType::String {
                                " (quote it)"
                            } else {
                                ""
                            }
                        )));
                    }
                }
                None if cfg.declares_claims() => out.push(warn(format!(
                    "warning: rule {:?}: {issuer} does not send a claim named {:?}, so this \
                     rule never matches",
                    rule.name, sel.name
                ))),
                None => {}
            }
        }
    }
    out
}

/// Converts a settings value to JSON, reading plain scalars as YAML 1.2 core-schema types.
fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        _ if node.is_null() => J::Null,
        Value::Scalar { text, plain: false } => J::String(text.clone()),
        Value::Scalar { text, plain: true } => match text.as_str() {
            "true" | "True" | "TRUE" => J::Bool(true),
            "false" | "False" | "FALSE" => J::Bool(false),
            t => {
                if let Ok(i) = t.parse::<i64>() {
                    J::from(i)
                } else if let Ok(u) = t.parse::<u64>() {
                    J::from(u)
                } else if t.bytes().any(|b| b.is_ascii_digit())
                    && t.bytes()
                        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
                {
                    t.parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map_or_else(|| J::String(t.to_owned()), J::Number)
                } else {
                    J::String(t.to_owned())
                }
            }
        },
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(
            entries
                .iter()
                .map(|e| (e.key.clone(), to_json(&e.value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests;
