//! The structured-assignment detector: a literal value assigned to a key whose name says it
//! holds a credential, whatever the value looks like (`DB_PASSWORD=…`, `adminPassword: …`,
//! `<password>…</password>`, `"api_key": "…"`, `String token = "…";`, `if password == "…"`).
//!
//! It runs only where the keyword prefilter found a credential word ([`super::RuleSet::scan`]
//! passes the keyword hits): around each hit it takes the key token, scores its name
//! ([`key_kind`]), parses the assignment syntax after it ([`find`]) and keeps the value only if
//! it is a literal ([`super::placeholder::non_literal`], [`accept`]). Pure functions over bytes;
//! the work is proportional to the number of keyword hits, not to the size of the text.

use super::placeholder::non_literal;

/// What kind of file a text comes from; decides whether an unquoted value is a literal (in
/// configuration files) or an expression (in code, where only quoted strings are literals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `.env`, YAML, JSON, INI, `.properties`, XML, shell, Dockerfile…: unquoted values are
    /// literals.
    Config,
    /// Source code (and HCL): only quoted strings are literals.
    Code,
    /// Anything else (documentation, unknown extensions, image config values): unquoted
    /// values count unless they look like identifiers.
    Unknown,
    /// A file format whose credential-named keys never hold credentials: `nsswitch.conf`
    /// (`passwd: files` maps the password database to its source). No assignments are read;
    /// the token rules still run.
    NoAssignments,
}

impl Form {
    /// The form of a file, from its path.
    pub fn of_path(path: &str) -> Form {
        let base = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
        if base == "nsswitch.conf" {
            return Form::NoAssignments;
        }
        if base.starts_with(".env")
            || base.starts_with("dockerfile")
            || base.starts_with("containerfile")
            || base == "makefile"
            || matches!(
                base.as_str(),
                ".npmrc"
                    | ".netrc"
                    | ".pypirc"
                    | ".pgpass"
                    | ".gitconfig"
                    | "config"
                    | "credentials"
                    | "kubeconfig"
                    | ".my.cnf"
            )
        {
            return Form::Config;
        }
        let ext = base.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        match ext {
            "env" | "yaml" | "yml" | "json" | "ini" | "cfg" | "conf" | "cnf" | "properties"
            | "props" | "toml" | "xml" | "config" | "plist" | "sh" | "bash" | "zsh" | "ksh"
            | "ps1" | "bat" | "cmd" | "mk" | "service" | "sql" | "cf" | "local" | "prod" => {
                Form::Config
            }
            "py" | "js" | "mjs" | "cjs" | "ts" | "tsx" | "jsx" | "java" | "kt" | "kts"
            | "scala" | "groovy" | "go" | "rb" | "php" | "cs" | "rs" | "swift" | "c" | "h"
            | "cc" | "cpp" | "hpp" | "m" | "vue" | "svelte" | "dart" | "lua" | "pl" | "ex"
            | "exs" | "erl" | "clj" | "tf" | "tfvars" | "hcl" => Form::Code,
            _ => Form::Unknown,
        }
    }
}

/// What a credential-named key holds; decides the rule a finding reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `password`, `passwd`, `pwd`, `passphrase`, `SMTP_PASS`, `bindpw`…
    Password,
    /// `secret`, `client_secret`, `SECRET_KEY_BASE`, AppRole `secret_id`, `auth`,
    /// `credentials`.
    Secret,
    /// `token`, `api_key`, `accessKey`, `signing_key`, `PAT`…
    Token,
    /// `Authorization`: the value is `Bearer …`, `Basic …` or `token …`.
    Authorization,
}

impl KeyKind {
    /// The id of the rule its findings report.
    pub fn rule_id(self) -> &'static str {
        match self {
            KeyKind::Password => "generic-password",
            KeyKind::Secret => "generic-secret",
            KeyKind::Token | KeyKind::Authorization => "generic-token",
        }
    }
    fn min_len(self) -> usize {
        match self {
            KeyKind::Password => 4,
            _ => 8,
        }
    }
}

/// Keywords that put the detector to work (case-insensitive; the prefilter's).
pub const KEYWORDS: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "auth",
    "credential",
    "bindpw",
    "identified by",
    "_pat",
];

/// Splits a key name into lower-case words: `adminPassword` → `admin password`,
/// `MY_SERVICE_API_KEY` → `my service api key`, `APIKey` → `api key`.
fn words(key: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for (i, &b) in key.iter().enumerate() {
        if !b.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let prev = i.checked_sub(1).map(|p| key[p]);
        let next = key.get(i + 1).copied();
        let boundary = b.is_ascii_uppercase()
            && prev.is_some_and(|p| {
                p.is_ascii_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_ascii_uppercase() && next.is_some_and(|n| n.is_ascii_lowercase()))
            });
        if boundary && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(b.to_ascii_lowercase() as char);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Words that say a `key` is a credential (`api key`, `signing key`, `writeKey`).
const KEY_QUALIFIERS: &[&str] = &[
    "api",
    "access",
    "secret",
    "private",
    "signing",
    "sign",
    "encryption",
    "encrypt",
    "crypt",
    "master",
    "session",
    "client",
    "app",
    "application",
    "auth",
    "account",
    "storage",
    "admin",
    "service",
    "integration",
    "write",
    "server",
    "shared",
    "sas",
    "subscription",
    "hmac",
    "jwt",
    "webhook",
    "cookie",
    "cipher",
    "aes",
    "license",
    "ingest",
    "management",
    "root",
    "deploy",
    "consumer",
    "partner",
    "merchant",
    "license",
    "x",
];

/// Words that may follow the credential word without changing what the key holds.
const AFTER_OK: &[&str] = &[
    "value",
    "plain",
    "plaintext",
    "clear",
    "cleartext",
    "raw",
    "b64",
    "base64",
    "hex",
    "str",
    "string",
    "data",
    "literal",
    "prod",
    "production",
    "dev",
    "staging",
    "live",
    "v1",
    "v2",
    "v3",
    "new",
    "current",
    "1",
    "2",
    "3",
    "encoded",
];

/// Words that, before the credential word, say the key is about a credential, not one.
const BEFORE_NOT: &[&str] = &[
    "public",
    "pub",
    "no",
    "not",
    "disable",
    "disabled",
    "enable",
    "enabled",
    "use",
    "using",
    "is",
    "has",
    "show",
    "hide",
    "forgot",
    "min",
    "max",
    "minimum",
    "maximum",
    "invalid",
    "expired",
    "hash",
    "hashed",
    "digest",
    "salt",
    "salted",
    "encrypted",
    "bcrypt",
    "sha",
    "md5",
    "get",
    "fetch",
    "read",
    "load",
    "generate",
    "validate",
    "verify",
    "check",
    "err",
    "error",
    "missing",
    "empty",
    "wrong",
    "bad",
    "require",
    "required",
    "allow",
    "reset",
    "change",
];

fn password_word(w: &str) -> bool {
    matches!(
        w,
        "pass"
            | "pw"
            | "pswd"
            | "authtok"
            | "bindpw"
            | "requirepass"
            | "masterauth"
            | "storepass"
            | "keypass"
            | "userpass"
            | "rootpass"
            | "adminpass"
            | "dbpass"
    ) || ["password", "passwd", "passphrase", "passcode", "pwd"]
        .iter()
        .any(|s| w.ends_with(s) && w.len() <= s.len() + 12)
}

/// The credential kind of word `i` of `ws`, if it is a credential word.
fn credential_word(ws: &[String], i: usize) -> Option<KeyKind> {
    let w = ws[i].as_str();
    let prev = i.checked_sub(1).map(|p| ws[p].as_str());
    if password_word(w) {
        return Some(KeyKind::Password);
    }
    if w == "secret" || (w.ends_with("secret") && w.len() <= 18) {
        return Some(KeyKind::Secret);
    }
    if w == "token" || w == "tokens" || (w.ends_with("token") && w.len() <= 18) || w == "pat" {
        return Some(KeyKind::Token);
    }
    if (w == "key" || w == "keys") && prev.is_some_and(|p| KEY_QUALIFIERS.contains(&p)) {
        return Some(KeyKind::Token);
    }
    if let Some(q) = w.strip_suffix("keys").or_else(|| w.strip_suffix("key"))
        && KEY_QUALIFIERS.contains(&q)
    {
        return Some(KeyKind::Token);
    }
    if w == "authorization" {
        return Some(KeyKind::Authorization);
    }
    if w == "auth" && i + 1 == ws.len() {
        return Some(KeyKind::Secret);
    }
    if matches!(w, "credential" | "credentials") && ws.len() == 1 {
        return Some(KeyKind::Secret);
    }
    None
}

/// Does this key name say it holds a credential, and of which kind? `db_password`,
/// `SMTP_PASS`, `adminPassword`, `github.token`, `stripeSecretKey`, `MY_SERVICE_API_KEY`,
/// `secret_id`: yes. `password_min_length`, `token_url`, `secretName`, `PUBLIC_KEY`,
/// `api_key_id`, `password_hash`: no. Pure.
pub fn key_kind(key: &[u8]) -> Option<KeyKind> {
    if key.len() > 80 {
        return None;
    }
    let ws = words(key);
    if ws.is_empty() || ws.len() > 8 {
        return None;
    }
    // AppRole's `secret_id` is the credential half of the pair.
    if ws.len() >= 2 && ws[ws.len() - 2] == "secret" && ws[ws.len() - 1] == "id" {
        return Some(KeyKind::Secret);
    }
    let (i, kind) = (0..ws.len())
        .rev()
        .find_map(|i| credential_word(&ws, i).map(|k| (i, k)))?;
    if !ws[i + 1..].iter().all(|w| AFTER_OK.contains(&w.as_str())) {
        return None;
    }
    if ws[..i].iter().any(|w| BEFORE_NOT.contains(&w.as_str())) {
        return None;
    }
    Some(kind)
}

/// One literal assigned to a credential-named key: its byte span in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    /// What the key holds.
    pub kind: KeyKind,
    /// Start of the value.
    pub start: usize,
    /// End of the value (exclusive).
    pub end: usize,
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

fn is_quote(b: u8) -> bool {
    matches!(b, b'"' | b'\'' | b'`')
}

fn skip_blank(text: &[u8], mut p: usize, end: usize) -> usize {
    while p < end && matches!(text[p], b' ' | b'\t') {
        p += 1;
    }
    p
}

/// How far a line is followed from a keyword hit, each way: minified files hold megabyte
/// lines, and the detector must stay proportional to the number of hits.
const LINE_WINDOW: usize = 4096;

fn line_bounds(text: &[u8], at: usize) -> (usize, usize) {
    let lo = at.saturating_sub(LINE_WINDOW);
    let hi = (at + LINE_WINDOW).min(text.len());
    let start = text[lo..at]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(lo, |p| lo + p + 1);
    let end = text[at..hi]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(hi, |p| at + p);
    let end = if end > start && text[end - 1] == b'\r' {
        end - 1
    } else {
        end
    };
    (start, end)
}

/// A quoted string starting at `p` (the quote): the span inside, or `None` if it does not
/// close on the line or is a triple quote.
fn quoted(text: &[u8], p: usize, end: usize) -> Option<(usize, usize)> {
    let q = text[p];
    if text.get(p + 1) == Some(&q) && text.get(p + 2) == Some(&q) {
        return None;
    }
    let mut i = p + 1;
    while i < end {
        match text[i] {
            b'\\' => i += 2,
            b if b == q => return Some((p + 1, i)),
            _ => i += 1,
        }
    }
    None
}

/// Is the rest of the line after an unquoted value empty, a comment, a delimiter or another
/// `key=value`? (Otherwise the "value" was the first word of prose.)
fn clean_tail(text: &[u8], p: usize, end: usize) -> bool {
    let p = skip_blank(text, p, end);
    if p >= end {
        return true;
    }
    if matches!(
        text[p],
        b'#' | b';' | b',' | b'&' | b'"' | b'\'' | b')' | b']' | b'}' | b'<' | b'\\'
    ) || text[p..end].starts_with(b"//")
    {
        return true;
    }
    let tok_end = text[p..end]
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .map_or(end, |e| p + e);
    text[p..tok_end].contains(&b'=')
}

fn unquoted(text: &[u8], p: usize, end: usize, stop_lt: bool) -> (usize, usize) {
    let mut i = p;
    while i < end {
        let b = text[i];
        if b.is_ascii_whitespace()
            || matches!(b, b'"' | b'\'' | b'`' | b';' | b',' | b')' | b']' | b'}')
            || (stop_lt && b == b'<')
        {
            break;
        }
        i += 1;
    }
    (p, i)
}

/// A value found after a key: span and whether it was quoted.
type Value = (usize, usize, bool);

/// Values on the lines after `line_end` for a key whose line ended at its operator: a YAML
/// block scalar or plain continuation, list items, or a JSON array of strings.
fn next_line_values(text: &[u8], key_indent: usize, line_end: usize, array: bool) -> Vec<Value> {
    let mut out = Vec::new();
    let mut p = line_end + 1;
    let mut lines = 0;
    while p < text.len() && lines < 16 {
        let (ls, le) = line_bounds(text, p);
        lines += 1;
        let body = skip_blank(text, ls, le);
        if body >= le {
            p = le + 1;
            continue;
        }
        let indent = body - ls;
        if array {
            if text[body] == b']' {
                break;
            }
            if is_quote(text[body])
                && let Some((s, e)) = quoted(text, body, le)
            {
                out.push((s, e, true));
            } else {
                break;
            }
        } else {
            if indent <= key_indent && text[body] != b'-' {
                break;
            }
            let (vs, quoted_item) = if text[body] == b'-' && text.get(body + 1) == Some(&b' ') {
                (skip_blank(text, body + 1, le), true)
            } else if out.is_empty() {
                (body, false)
            } else {
                break;
            };
            // A nested mapping (`key: value`) is not a value.
            if text[vs..le].windows(2).any(|w| w == b": ") || text[le - 1] == b':' {
                break;
            }
            if vs < le && is_quote(text[vs]) {
                if let Some((s, e)) = quoted(text, vs, le) {
                    out.push((s, e, true));
                }
            } else {
                let (s, e) = unquoted(text, vs, le, false);
                if e == le || clean_tail(text, e, le) {
                    out.push((s, e, false));
                }
            }
            if !quoted_item {
                break;
            }
        }
        p = le + 1;
    }
    out
}

/// Values assigned to the key at `ks..ke`, by the syntax that follows it.
fn values_after(text: &[u8], ks: usize, ke: usize, form: Form) -> Vec<Value> {
    let (ls, le) = line_bounds(text, ks);
    let before = if ks > ls { text[ks - 1] } else { b'\n' };
    // `</password>`: a closing tag.
    if before == b'/' && ks >= 2 && text[ks - 2] == b'<' {
        return Vec::new();
    }
    let key_quoted = is_quote(before);
    // `${PASSWORD:?required}`, `$(TOKEN)`: the name of a variable being read.
    let before2 = if ks >= ls + 2 {
        &text[ks - 2..ks]
    } else {
        &b""[..]
    };
    if matches!(before2, b"${" | b"$(" | b"%(" | b"#{" | b"{{") {
        return Vec::new();
    }
    // `arn:…:secret:name`: a segment of a colon-separated path.
    if before == b':' && text.get(ke) == Some(&b':') {
        return Vec::new();
    }
    let mut p = ke;
    // Closing quote and bracket of `"key"`, `['key']`.
    if p < le && key_quoted && text[p] == before {
        p += 1;
    }
    if p < le && text[p] == b']' {
        p += 1;
    }
    let q = skip_blank(text, p, le);
    let rest = &text[q..le];
    // XML element content `<password>v</password>`, or `<x name="…password">v<`.
    let xml_name_attr = key_quoted && {
        let head = &text[ls..ks - 1];
        head.ends_with(b"name=") || head.ends_with(b"key=")
    };
    if rest.first() == Some(&b'>') && (before == b'<' || xml_name_attr) {
        let (s, e) = unquoted(text, q + 1, le, true);
        let e = text[s..e]
            .iter()
            .position(|b| *b == b'<')
            .map_or(e, |x| s + x);
        return vec![(s, e, true)];
    }
    // `<add key="…Password" value="v" />`.
    if key_quoted && rest.starts_with(b"value=") {
        let v = q + 6;
        if v < le && is_quote(text[v]) {
            return quoted(text, v, le)
                .map(|(s, e)| vec![(s, e, true)])
                .unwrap_or_default();
        }
    }
    // `f("password", "v")`, `define('DB_PASSWORD', 'v')`: a quoted key opening a call.
    if key_quoted && rest.first() == Some(&b',') {
        let open = text[ls..ks - 1]
            .iter()
            .rposition(|b| !matches!(b, b' ' | b'\t'));
        if open.is_some_and(|o| text[ls + o] == b'(') {
            let v = skip_blank(text, q + 1, le);
            if v < le && is_quote(text[v]) {
                return quoted(text, v, le)
                    .map(|(s, e)| vec![(s, e, true)])
                    .unwrap_or_default();
            }
        }
        return Vec::new();
    }
    // Operators.
    let mut op_len = [":=", "===", "==", "=>", "=", ":", ".equals("]
        .iter()
        .find(|o| rest.starts_with(o.as_bytes()))
        .map(|o| o.len());
    let mut after = q + op_len.unwrap_or(0);
    // A type between the key and `=`: `API_KEY: string = "v"`, `var t string = "v"`.
    if !key_quoted && op_len.is_none_or(|n| rest[..n] == *b":") {
        let t = skip_blank(text, after, le);
        let te = t + text[t..le]
            .iter()
            .position(|b| {
                !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'<' | b'>' | b'[' | b']'))
            })
            .unwrap_or(le - t);
        let eq = skip_blank(text, te, le);
        if te > t && eq < le && text[eq] == b'=' && text.get(eq + 1) != Some(&b'=') {
            op_len = Some(1);
            after = eq + 1;
        }
    }
    let Some(op) = op_len else {
        return whitespace_forms(text, ks, ke, ls, le, before);
    };
    // `install passwd:amd64 <none> 1:4.13` (a log), `user:group`: a colon with no blank
    // after it is an assignment only where the key starts its line (`.properties`'
    // `key:value`) or is quoted (minified JSON).
    if op == 1
        && rest.first() == Some(&b':')
        && !key_quoted
        && text.get(q + 1).is_some_and(|b| !b.is_ascii_whitespace())
        && !text[ls..ks].iter().all(|b| matches!(b, b' ' | b'\t'))
    {
        return Vec::new();
    }
    if rest.starts_with(b"=") && text.get(q.wrapping_sub(1)) == Some(&b'!') {
        return Vec::new();
    }
    let v = skip_blank(text, after, le);
    if v >= le || text[v..le].starts_with(b"#") && form != Form::Code {
        // Value on the next lines (configuration files only).
        if form == Form::Code {
            return Vec::new();
        }
        return next_line_values(text, ks - ls, le, false);
    }
    match text[v] {
        b'|' | b'>'
            if text[v + 1..le]
                .iter()
                .all(|b| matches!(b, b'-' | b'+' | b' ' | b'\t')) =>
        {
            next_line_values(text, ks - ls, le, false)
        }
        b'[' if v + 1 == le || text[v + 1..le].iter().all(|b| *b == b' ') => {
            next_line_values(text, 0, le, true)
        }
        b if is_quote(b) => quoted(text, v, le)
            .map(|(s, e)| vec![(s, e, true)])
            .unwrap_or_default(),
        _ => {
            let (s, e) = unquoted(text, v, le, false);
            if clean_tail(text, e, le) {
                vec![(s, e, false)]
            } else {
                Vec::new()
            }
        }
    }
}

/// `key value` forms without an operator: a command-line flag (`--password v`), a config
/// directive alone on its line (`requirepass v`, `ENV KEY v`, `BINDPW v`), SQL
/// (`PASSWORD 'v'`, `IDENTIFIED BY 'v'`).
fn whitespace_forms(
    text: &[u8],
    ks: usize,
    ke: usize,
    ls: usize,
    le: usize,
    before: u8,
) -> Vec<Value> {
    let v = skip_blank(text, ke, le);
    if v == ke || v >= le {
        return Vec::new();
    }
    let key = &text[ks..ke];
    if key.eq_ignore_ascii_case(b"identified") {
        let by = &text[v..le];
        if by.len() > 3 && by[..3].eq_ignore_ascii_case(b"by ") {
            let w = skip_blank(text, v + 3, le);
            if w < le && is_quote(text[w]) {
                return quoted(text, w, le)
                    .map(|(s, e)| vec![(s, e, true)])
                    .unwrap_or_default();
            }
        }
        return Vec::new();
    }
    if is_quote(text[v]) {
        // SQL `PASSWORD 'v'`.
        if text[v] == b'\'' && key_kind(key) == Some(KeyKind::Password) {
            return quoted(text, v, le)
                .map(|(s, e)| vec![(s, e, true)])
                .unwrap_or_default();
        }
        return Vec::new();
    }
    // `update-passwd --verbose`: a command and its flag, not a directive and its value.
    if text[v] == b'-' {
        return Vec::new();
    }
    let (s, e) = unquoted(text, v, le, false);
    if key.starts_with(b"-") {
        return vec![(s, e, false)];
    }
    // Directive alone on its line: `[ENV|export|set|ARG] KEY value`.
    let head: Vec<&[u8]> = text[ls..ks]
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    let lead_ok = head.is_empty()
        || (head.len() == 1 && matches!(head[0], b"ENV" | b"env" | b"export" | b"set" | b"setenv"));
    if lead_ok && before != b'-' && skip_blank(text, e, le) >= le {
        return vec![(s, e, false)];
    }
    Vec::new()
}

/// `Authorization: Bearer v` (header, in quotes or not): the span of `Bearer v`.
fn authorization_value(text: &[u8], ke: usize) -> Option<Value> {
    let (_, le) = line_bounds(text, ke);
    let mut p = ke;
    if p < le && is_quote(text[p]) {
        p += 1;
    }
    let p = skip_blank(text, p, le);
    if p >= le || !matches!(text[p], b':' | b'=') {
        return None;
    }
    let mut s = skip_blank(text, p + 1, le);
    if s < le && is_quote(text[s]) {
        s += 1;
    }
    let scheme_end = text[s..le].iter().position(|b| *b == b' ').map(|x| s + x)?;
    let v = skip_blank(text, scheme_end, le);
    let (_, e) = unquoted(text, v, le, false);
    (e > v).then_some((s, e, true))
}

/// Does this value, assigned to a key of `kind` in a file of `form`, count as a literal
/// credential? Pure.
pub fn accept(kind: KeyKind, form: Form, quoted: bool, value: &[u8]) -> bool {
    let mut v = value;
    if kind == KeyKind::Authorization {
        let lower = v.to_ascii_lowercase();
        let Some(scheme) = [&b"bearer "[..], b"basic ", b"token "]
            .into_iter()
            .find(|s| lower.starts_with(s))
        else {
            return false;
        };
        v = &v[scheme.len()..];
    } else if form == Form::Code && !quoted {
        return false;
    }
    if v.len() < kind.min_len() || v.len() > 8192 {
        return false;
    }
    if matches!(kind, KeyKind::Secret)
        && v.len() < 12
        && words(v).len() <= 1
        && !v.iter().any(u8::is_ascii_digit)
    {
        // `auth: basic`, `credentials: none`.
        if !v.iter().any(|b| !b.is_ascii_alphanumeric()) {
            return false;
        }
    }
    if non_literal(v, quoted).is_some() {
        return false;
    }
    // Identifiers (`invalid_token`, `auth.token`, `self.password`): code, unless a person
    // could have picked it as a password in a configuration file.
    let ident = v
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'))
        && !v.iter().any(u8::is_ascii_digit)
        && v.first()
            .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_');
    if ident
        && !(kind == KeyKind::Password && (form == Form::Config || quoted) && !v.contains(&b'.'))
    {
        return false;
    }
    kind == KeyKind::Password || super::shannon_entropy(v) >= 2.5
}

/// Longest key token considered, each side of the keyword.
const MAX_KEY: usize = 96;

/// A cheap look at the bytes around a key token, before its name is scored: is anything
/// there that one of the assignment syntaxes could start with? Most keyword hits in prose and
/// code (`keyboard`, `author`, `passes`) stop here.
fn could_assign(text: &[u8], ks: usize, ke: usize) -> bool {
    let mut p = ke;
    while p < text.len() && p < ke + 3 && matches!(text[p], b'"' | b'\'' | b'`' | b']') {
        p += 1;
    }
    while p < text.len() && matches!(text[p], b' ' | b'\t') && p < ke + 64 {
        p += 1;
    }
    let Some(&next) = text.get(p) else {
        return false;
    };
    if matches!(next, b'=' | b':' | b'>' | b',' | b'(') || text[ks] == b'-' {
        return true;
    }
    if text[ke..].len() >= 8 && text[ke..ke + 8].eq_ignore_ascii_case(b".equals(") {
        return true;
    }
    // `KEY value` directives, `PASSWORD 'v'`, `IDENTIFIED BY 'v'`: whitespace after the key.
    if p == ke || next == b'\n' || next == b'\r' {
        return false;
    }
    if next == b'\''
        || text[ks..ke].eq_ignore_ascii_case(b"identified")
        || text[p..].starts_with(b"value=")
    {
        return true;
    }
    // The key starts its line, or follows one short word (`ENV`, `export`, `set`).
    let at_line_start = |mut b: usize| {
        while b > 0 && matches!(text[b - 1], b' ' | b'\t') {
            b -= 1;
        }
        b == 0 || text[b - 1] == b'\n'
    };
    let mut b = ks;
    while b > 0 && matches!(text[b - 1], b' ' | b'\t') {
        b -= 1;
    }
    if at_line_start(ks) {
        return true;
    }
    let mut w = b;
    while w > 0 && text[w - 1].is_ascii_alphabetic() && b - w < 8 {
        w -= 1;
    }
    w < b && at_line_start(w)
}

/// Literal values assigned to credential-named keys, found around the keyword hits `hits`
/// (byte offsets into `text`, ascending). Pure; at most a few lines are read per hit.
pub fn find(text: &[u8], hits: &[usize], form: Form) -> Vec<Assignment> {
    let mut out: Vec<Assignment> = Vec::new();
    if form == Form::NoAssignments {
        return out;
    }
    let mut done = 0usize;
    for &h in hits {
        if h < done || h >= text.len() {
            continue;
        }
        let mut ks = h;
        while ks > 0 && h - ks < MAX_KEY && is_key_byte(text[ks - 1]) {
            ks -= 1;
        }
        let mut ke = h;
        while ke < text.len() && ke - h < MAX_KEY && is_key_byte(text[ke]) {
            ke += 1;
        }
        if h - ks >= MAX_KEY || ke - h >= MAX_KEY {
            // Inside a long run of word characters (base64, minified code): not a key.
            done = ke;
            continue;
        }
        if !could_assign(text, ks, ke) {
            done = ke;
            continue;
        }
        // `identified by`: the key is the first word.
        if text[h..].len() >= 10 && text[h..h + 10].eq_ignore_ascii_case(b"identified") {
            ke = h + 10;
        }
        done = ke;
        let mut key = &text[ks..ke];
        // `password.equals("v")`: the key ends before the method.
        if key.len() > 7 && key[key.len() - 7..].eq_ignore_ascii_case(b".equals") {
            key = &key[..key.len() - 7];
        }
        while let [rest @ .., b'.' | b'-'] = key {
            key = rest;
        }
        let ke = ks + key.len();
        // `PASS: name`, `XPASS: name`: a test result line (DejaGnu, Automake logs), not a
        // password.
        if matches!(key, b"PASS" | b"XPASS") && text.get(ke) == Some(&b':') {
            continue;
        }
        let kind = if key.eq_ignore_ascii_case(b"identified") {
            KeyKind::Password
        } else {
            match key_kind(
                key.strip_prefix(b"--")
                    .or_else(|| key.strip_prefix(b"-"))
                    .unwrap_or(key),
            ) {
                Some(k) => k,
                None => continue,
            }
        };
        let (ls, _) = line_bounds(text, ks);
        // Inside a string literal (`"host=db password=v"`), the syntax is configuration's.
        let dq = text[ls..ks].iter().filter(|b| **b == b'"').count();
        let form_here = if form == Form::Code && dq % 2 == 1 && text[ks - 1] != b'"' {
            Form::Config
        } else {
            form
        };
        let values = if kind == KeyKind::Authorization {
            authorization_value(text, ke).into_iter().collect()
        } else {
            values_after(text, ks, ke, form_here)
        };
        for (s, e, q) in values {
            let (mut s, mut e) = (s, e);
            while s < e && text[s].is_ascii_whitespace() {
                s += 1;
            }
            while e > s && text[e - 1].is_ascii_whitespace() {
                e -= 1;
            }
            if accept(kind, form_here, q, &text[s..e]) {
                let s = if kind == KeyKind::Authorization {
                    s + text[s..e]
                        .iter()
                        .position(|b| *b == b' ')
                        .map_or(0, |p| p + 1)
                } else {
                    s
                };
                if !out.iter().any(|a| a.start == s) {
                    out.push(Assignment {
                        kind,
                        start: s,
                        end: e,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_in_every_style() {
        for (k, want) in [
            ("db_password", KeyKind::Password),
            ("SMTP_PASS", KeyKind::Password),
            ("adminPassword", KeyKind::Password),
            ("github.token", KeyKind::Token),
            ("stripeSecretKey", KeyKind::Token),
            ("MY_SERVICE_API_KEY", KeyKind::Token),
            ("APIKey", KeyKind::Token),
            ("storePassword", KeyKind::Password),
            ("BINDPW", KeyKind::Password),
            ("ldap_default_authtok", KeyKind::Password),
            ("client_secret", KeyKind::Secret),
            ("VAULT_SECRET_ID", KeyKind::Secret),
            ("AZURE_DEVOPS_EXT_PAT", KeyKind::Token),
            ("TS_AUTHKEY", KeyKind::Token),
            ("writeKey", KeyKind::Token),
            ("NEO4J_AUTH", KeyKind::Secret),
            ("Authorization", KeyKind::Authorization),
            (
                "akka.remote.netty.ssl.key-store-password",
                KeyKind::Password,
            ),
        ] {
            assert_eq!(key_kind(k.as_bytes()), Some(want), "{k}");
        }
        for k in [
            "password_min_length",
            "token_url",
            "token_uri",
            "token_type",
            "secretName",
            "secret_name",
            "PUBLIC_KEY",
            "API_KEY_ID",
            "password_hash",
            "GPG_KEY",
            "PasswordAuthentication",
            "PASS_MAX_DAYS",
            "password_encryption",
            "TOKEN_HEADER",
            "ErrInvalidToken",
            "AUTH_MODE",
            "secretKeyRef",
            "DB_PASSWORD_FILE",
            "compass",
            "keyboard",
            "author",
            "LoadCredential",
            "get-token",
        ] {
            assert_eq!(key_kind(k.as_bytes()), None, "{k}");
        }
    }

    /// Runs the detector the way the rule set does: hits at every keyword.
    fn detect(text: &str, form: Form) -> Vec<&str> {
        let lower = text.to_ascii_lowercase();
        let mut hits: Vec<usize> = KEYWORDS
            .iter()
            .flat_map(|k| lower.match_indices(k).map(|(i, _)| i).collect::<Vec<_>>())
            .collect();
        hits.sort_unstable();
        find(text.as_bytes(), &hits, form)
            .into_iter()
            .map(|a| &text[a.start..a.end])
            .collect()
    }

    #[test]
    fn assignment_syntaxes() {
        let v = "Vn3xQ8rTb1zP";
        for (text, form) in [
            (format!("DB_PASSWORD={v}\n"), Form::Config),
            (format!("export DB_PASSWORD='{v}'\n"), Form::Config),
            (format!("ENV DB_PASSWORD {v}\n"), Form::Config),
            (format!("admin:\n  adminPassword: {v}\n"), Form::Config),
            (format!("{{\"password\": \"{v}\"}}\n"), Form::Config),
            (format!("<password>{v}</password>\n"), Form::Config),
            (
                format!("<add key=\"ClearTextPassword\" value=\"{v}\" />\n"),
                Form::Config,
            ),
            (
                format!("<property name=\"connection.password\">{v}</property>\n"),
                Form::Config,
            ),
            (
                format!("<user name=\"a\" password=\"{v}\"/>\n"),
                Form::Config,
            ),
            (format!("String password = \"{v}\";\n"), Form::Code),
            (format!("var authToken string = \"{v}\"\n"), Form::Code),
            (format!("const API_KEY: string = \"{v}\";\n"), Form::Code),
            (format!("if password == \"{v}\":\n"), Form::Code),
            (format!("if (password.equals(\"{v}\")) {{}}\n"), Form::Code),
            (
                format!("props.setProperty(\"password\", \"{v}\");\n"),
                Form::Code,
            ),
            (format!("$c['encryption_key'] = '{v}';\n"), Form::Code),
            (
                format!("dsn := \"host=db password={v} dbname=x\"\n"),
                Form::Code,
            ),
            (format!("password:\n    {v}\n"), Form::Config),
            (format!("api_key: >-\n  {v}\n"), Form::Config),
            (format!("requirepass {v}\n"), Form::Config),
            (format!("db.password:{v}\n"), Form::Config),
            (format!("{{\"password\":\"{v}\"}}\n"), Form::Config),
            (format!("run --password {v} x\n"), Form::Config),
            (
                format!("CREATE USER a WITH PASSWORD '{v}';\n"),
                Form::Unknown,
            ),
            (
                format!("ALTER USER 'r'@'h' IDENTIFIED BY '{v}';\n"),
                Form::Unknown,
            ),
            (format!("Authorization: Bearer {v}\n"), Form::Unknown),
            (
                format!("Server=tcp:s;Password={v};Encrypt=True\n"),
                Form::Config,
            ),
        ] {
            assert_eq!(detect(&text, form), vec![v], "{text}");
        }
        assert_eq!(
            detect(&format!("api_keys:\n  - {v}\n  - {v}x\n"), Form::Config),
            vec![v.to_owned(), format!("{v}x")]
        );
        assert_eq!(
            detect(&format!("\"tokens\": [\n  \"{v}\"\n]\n"), Form::Config),
            vec![v]
        );
    }

    #[test]
    fn short_password_in_config_is_a_finding() {
        assert_eq!(
            detect("[db]\npassword = k9x2q\n", Form::Config),
            vec!["k9x2q"]
        );
        assert_eq!(
            detect("password: qwhdkeuwtz\n", Form::Config),
            vec!["qwhdkeuwtz"]
        );
    }

    #[test]
    fn not_literals() {
        for (text, form) in [
            ("password = request.form['password']\n", Form::Code),
            ("password = get_password()\n", Form::Code),
            ("self.password = password\n", Form::Code),
            ("password: string;\n", Form::Code),
            ("PASSWORD = \"password\"\n", Form::Code),
            ("REFRESH_TOKEN = \"refresh_token\"\n", Form::Code),
            ("TOKEN_STORAGE_KEY = 'auth.token'\n", Form::Code),
            ("password = var.db_password\n", Form::Code),
            ("DB_PASSWORD=${DB_PASSWORD}\n", Form::Config),
            ("password: {{ .Values.password }}\n", Form::Config),
            ("secret: '%env(APP_SECRET)%'\n", Form::Config),
            ("MasterUserPassword: !Ref DBPassword\n", Form::Config),
            ("password: changeme\n", Form::Config),
            ("password: <your-password>\n", Form::Config),
            ("DB_PASSWORD_FILE=/run/secrets/db\n", Form::Config),
            ("password_file: /etc/app/password\n", Form::Config),
            ("password:\n  file: ./db_password.txt\n", Form::Config),
            ("login.password=Mot de passe\n", Form::Config),
            ("password: true\n", Form::Config),
            ("token_ttl: 3600\n", Form::Config),
            ("REDIS_PASSWORD=6379\n", Form::Config),
            ("password   required   pam_unix.so sha512\n", Form::Config),
            ("PasswordAuthentication no\n", Form::Config),
            (
                "<input type=\"password\" name=\"password\" id=\"password\">\n",
                Form::Config,
            ),
            ("value=\"csrfmiddlewaretoken\">\n", Form::Config),
            ("name: db-password\n", Form::Config),
            (
                "  --password string   password for the registry\n",
                Form::Unknown,
            ),
            (
                "flag.StringVar(&password, \"password\", \"\", \"db password\")\n",
                Form::Code,
            ),
            (
                "args: [\"eks\", \"get-token\", \"--cluster-name\", \"shop\"]\n",
                Form::Config,
            ),
            ("Authorization: Bearer $TOKEN\n", Form::Unknown),
            ("</password>\n", Form::Config),
            (
                "<input type=\"password\" name=\"password\" id=\"password\" placeholder=\"Password\" autocomplete=\"current-password\">\n",
                Form::Unknown,
            ),
            (
                "{\"password\": \"arn:aws:secretsmanager:us-east-1:1:secret:db-pass-AbCdEf\"}\n",
                Form::Config,
            ),
            (
                "      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?required}\n",
                Form::Config,
            ),
            ("The password is used to log in.\n", Form::Unknown),
            // Found on a debootstrapped Debian 12: a maintainer script, dpkg's log.
            ("\t\tupdate-passwd --verbose\n", Form::Unknown),
            (
                "2026-12-06 00:57:58 install passwd:amd64 <none> 1:4.13+dfsg1-1\n",
                Form::Unknown,
            ),
            ("chown app:secrets /srv\n", Form::Config),
            (
                "PASS: gdb.arch/amd64-osabi.exp: arch=i386:x86-64: set osabi none\n",
                Form::Unknown,
            ),
        ] {
            assert!(
                detect(text, form).is_empty(),
                "{text}: {:?}",
                detect(text, form)
            );
        }
    }

    #[test]
    fn work_per_hit_is_bounded() {
        // A keyword inside a long run of word characters (base64, minified code) is no key,
        // and a megabyte line is read only near the hit.
        let blob = format!("{}token{}=Vn3xQ8rTb1zP\n", "a".repeat(200), "b".repeat(200));
        assert!(detect(&blob, Form::Config).is_empty());
        let line = format!(
            "{}password=Vn3xQ8rTb1zP;{}",
            "x ".repeat(1 << 19),
            "y ".repeat(1 << 19)
        );
        assert_eq!(detect(&line, Form::Config), vec!["Vn3xQ8rTb1zP"]);
    }

    #[test]
    fn forms_of_paths() {
        assert_eq!(Form::of_path("app/.env.production"), Form::Config);
        assert_eq!(Form::of_path("app/Dockerfile"), Form::Config);
        assert_eq!(Form::of_path("etc/app/config.yaml"), Form::Config);
        assert_eq!(Form::of_path("app/settings.py"), Form::Code);
        assert_eq!(Form::of_path("infra/main.tf"), Form::Code);
        assert_eq!(Form::of_path("README.md"), Form::Unknown);
        assert_eq!(Form::of_path("etc/nsswitch.conf"), Form::NoAssignments);
        // `passwd: files` in nsswitch.conf is the password database's source.
        let text = "passwd:         files\nshadow:         files\n";
        assert!(detect(text, Form::of_path("etc/nsswitch.conf")).is_empty());
        assert_eq!(detect(text, Form::Config), vec!["files"]);
    }
}
