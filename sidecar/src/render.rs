//! Rendering: the file contents of a [`Target`] for one credential, a pure function per
//! format, so every format is tested without a disk. Errors say what is missing and never
//! hold a secret value.
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
//!   (the fields) in scope. Undefined values are errors, never empty strings. A rendering
//!   is bounded: at most [`TEMPLATE_FUEL`] instructions (a loop that runs for ever, or
//!   nested loops over large ranges, stop with an error) and at most
//!   [`MAX_RENDERED_BYTES`] of output (a template that expands to gigabytes stops when it
//!   passes the bound). Either is an error naming the template; the writer renders before it
//!   touches the disk, so the old file stays as it was.

use std::collections::BTreeMap;

use lanyard::wire::Credential;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::names::check_env_key;
use crate::target::{Format, Target};

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

/// Instructions one template rendering may run (minijinja "fuel"). A template that writes a
/// connection string or a config file takes tens to a few thousand.
pub const TEMPLATE_FUEL: u64 = 100_000;

/// Largest output of one template rendering, in bytes.
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

fn template_env() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env
}

/// The rendering's output: refuses to grow past `limit` bytes, and wipes what it holds when
/// dropped (it holds secrets).
struct BoundedOutput {
    buf: Zeroizing<Vec<u8>>,
    limit: usize,
    over: bool,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            self.over = true;
            return Err(std::io::Error::other("output bound reached"));
        }
        if self.buf.capacity() - self.buf.len() < data.len() {
            // Grow into a new buffer and wipe the old one, so no copy of a secret is left
            // behind in freed memory.
            let want = (self.buf.len() + data.len())
                .max(self.buf.capacity() * 2)
                .min(self.limit);
            let mut bigger = Zeroizing::new(Vec::with_capacity(want));
            bigger.extend_from_slice(&self.buf);
            self.buf = bigger;
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders `t` with `ctx` within the environment's fuel and `limit` bytes of output.
fn render_bounded(
    t: &minijinja::Template<'_, '_>,
    ctx: minijinja::Value,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, minijinja::Error> {
    let mut out = BoundedOutput {
        buf: Zeroizing::new(Vec::new()),
        limit,
        over: false,
    };
    match t.render_captured_to(ctx, &mut out) {
        Ok(_) => Ok(out.buf),
        Err(_) if out.over => Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!(
                "it renders more than {limit} bytes, the most one file may hold; check its loops"
            ),
        )),
        Err(e) => Err(e),
    }
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

/// Compiles a template and checks that it only uses names that exist, so a typo is refused
/// when the target is loaded rather than when a credential is rendered. `origin` names it
/// in errors (`(inline)` or the file path).
pub fn check_template(source: &str, origin: &str) -> Result<(), String> {
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
            render_bounded(&t, ctx, MAX_RENDERED_BYTES).map_err(|e| {
                let mut m = template_error(origin, &e);
                if e.kind() == minijinja::ErrorKind::OutOfFuel {
                    m.push_str(&format!(
                        "; a template may run at most {TEMPLATE_FUEL} instructions: check its loops"
                    ));
                }
                if e.kind() == minijinja::ErrorKind::UndefinedError {
                    m.push_str(&format!(
                        "; role {:?} has fields: {}",
                        c.role,
                        c.data.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                }
                m
            })
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn cred(fields: &[(&str, &str)]) -> Credential {
        crate::fixtures::credential("db", fields)
    }

    fn target(format: Format) -> Target {
        Target {
            role: "db".into(),
            path: vec!["x".into()],
            mode: 0o400,
            uid: None,
            gid: None,
            format,
        }
    }

    fn raw(field: Option<&str>) -> Format {
        Format::Raw {
            field: field.map(str::to_owned),
        }
    }

    fn env(field: Option<&str>, key: Option<&str>, prefix: &str) -> Format {
        Format::Env {
            field: field.map(str::to_owned),
            key: key.map(str::to_owned),
            prefix: prefix.to_owned(),
        }
    }

    fn aws(profile: &str) -> Format {
        Format::Aws {
            profile: profile.to_owned(),
        }
    }

    fn template(source: &str) -> Format {
        Format::Template {
            source: source.to_owned(),
            origin: "(inline)".to_owned(),
        }
    }

    fn template_from(source: &str, origin: &str) -> Format {
        Format::Template {
            source: source.to_owned(),
            origin: origin.to_owned(),
        }
    }

    fn rendered(format: Format, c: &Credential) -> String {
        String::from_utf8(render(&target(format), c).expect("render").to_vec()).expect("utf8")
    }

    #[test]
    fn raw_is_the_exact_value() {
        let c = cred(&[("password", "p@ss word\n'x'")]);
        assert_eq!(rendered(raw(None), &c), "p@ss word\n'x'");
        let two = cred(&[("user", "u"), ("password", "p")]);
        assert_eq!(rendered(raw(Some("user")), &two), "u");
        let e = render(&target(raw(None)), &two).expect_err("ambiguous");
        assert!(e.contains("field=") && e.contains("password, user"), "{e}");
        let e = render(&target(raw(Some("nope"))), &two).expect_err("missing");
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
            rendered(env(None, None, ""), &c),
            "_9LIVES=''\nACCESS_KEY_ID=AKIA123\nSECRET_KEY='it'\\''s $HOME `x`'\n"
        );
        assert_eq!(
            rendered(env(None, None, "DB_"), &c),
            "DB_9LIVES=''\nDB_ACCESS_KEY_ID=AKIA123\nDB_SECRET_KEY='it'\\''s $HOME `x`'\n"
        );
        assert_eq!(
            rendered(
                env(Some("access_key_id"), Some("AWS_ACCESS_KEY_ID"), ""),
                &c
            ),
            "AWS_ACCESS_KEY_ID=AKIA123\n"
        );
        let nul = cred(&[("x", "a\0b")]);
        assert!(render(&target(env(None, None, "")), &nul).is_err());
    }

    #[test]
    fn quoted_env_values_survive_a_real_shell() {
        let value = "it's $HOME `id` \\ \"q\" \n next";
        let c = cred(&[("v", value)]);
        let body = rendered(env(None, None, ""), &c);
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
        let body = rendered(Format::Json, &c);
        assert_eq!(
            body,
            "{\n  \"role\": \"db\",\n  \"kind\": \"jwt\",\n  \"expires_at\": \"2030-01-01T00:10:00Z\",\n  \"refresh_after\": \"2030-01-01T00:07:00Z\",\n  \"lease_id\": \"lease-1\",\n  \"ttl_seconds\": 600,\n  \"data\": {\n    \"token\": \"eyJ\"\n  }\n}\n"
        );
        assert_eq!(role_json(&c).expect("json").as_slice(), body.as_bytes());
    }

    #[test]
    fn aws_shared_credentials_file() {
        let c = cred(&[
            ("access_key_id", "ASIAXYZ"),
            ("secret_access_key", "s3cr3t/+="),
            ("session_token", "FwoGZX"),
        ]);
        assert_eq!(
            rendered(aws("app"), &c),
            "[app]\naws_access_key_id = ASIAXYZ\naws_secret_access_key = s3cr3t/+=\naws_session_token = FwoGZX\n"
        );
        let no_session = cred(&[("access_key_id", "AKIA"), ("secret_access_key", "s")]);
        assert_eq!(
            rendered(aws("default"), &no_session),
            "[default]\naws_access_key_id = AKIA\naws_secret_access_key = s\n"
        );
        let e = render(&target(aws("default")), &cred(&[("token", "t")])).expect_err("not aws");
        assert!(e.contains("access_key_id"), "{e}");
        let inject = cred(&[("access_key_id", "A\n[evil]"), ("secret_access_key", "s")]);
        let e = render(&target(aws("default")), &inject).expect_err("newline");
        assert!(e.contains("line break") && !e.contains("evil"), "{e}");
    }

    #[test]
    fn templates_render_and_do_not_escape() {
        let c = cred(&[("password", "p<&>'\"")]);
        let t = "postgres://app:{{ data.password | urlencode }}@db:5432/app?x={{ role }}\n";
        check_template(t, "(inline)").expect("check");
        assert_eq!(
            rendered(template(t), &c),
            "postgres://app:p%3C%26%3E%27%22@db:5432/app?x=db\n"
        );
        assert_eq!(
            render(&target(template("{{ data.password }}")), &c)
                .expect("render")
                .as_slice(),
            b"p<&>'\""
        );
    }

    #[test]
    fn template_with_a_missing_field_is_an_error_not_empty() {
        let t = target(template("pw={{ data.pasword }}"));
        let c = cred(&[("password", "hunter2")]);
        let e = render(&t, &c).expect_err("missing field");
        assert!(e.contains("undefined") && e.contains("password"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn templates_are_checked_for_names_and_syntax() {
        check_template("{{ role }} {{ data.anything }}", "(inline)").expect("known names");
        let e = check_template("{{ pasword }}", "(inline)").expect_err("unknown name");
        assert!(e.contains("pasword") && e.contains("data.NAME"), "{e}");
        let e = check_template("a\n{{ data.x ", "t.j2").expect_err("syntax");
        assert!(
            e.contains("syntax") && e.contains("line 2") && e.contains("t.j2"),
            "{e}"
        );
    }

    #[test]
    fn a_template_that_runs_for_ever_runs_out_of_fuel() {
        let c = cred(&[("password", "hunter2")]);
        for body in [
            // 7 * 10^5 squared iterations, almost no output: stops after TEMPLATE_FUEL
            // instructions.
            "{% for a in data.password * 100000 %}{% for b in data.password * 100000 %}{% endfor %}{% endfor %}",
            "{% for a in data.password * 100000 %}{% for b in data.password * 100000 %}{{ a }}{% endfor %}{% endfor %}",
        ] {
            check_template(body, "loop.j2").expect("compiles and names only known variables");
            let e = render(&target(template_from(body, "loop.j2")), &c).expect_err("must stop");
            assert!(e.contains("loop.j2"), "{e}");
            assert!(
                e.contains("fuel") && e.contains(&TEMPLATE_FUEL.to_string()),
                "names the bound: {e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn a_template_that_expands_past_the_output_bound_is_refused() {
        let c = cred(&[("password", "hunter2")]);
        for body in [
            "{{ \"x\" * 2000000 }}",
            "{% for a in range(50) %}{{ data.password * 100000 }}{% endfor %}",
        ] {
            let e = render(&target(template_from(body, "big.j2")), &c).expect_err("too big");
            assert!(
                e.contains("big.j2") && e.contains(&MAX_RENDERED_BYTES.to_string()),
                "{e}"
            );
            assert!(!e.contains("hunter2"), "{e}");
        }
        // Just under the bound renders in full.
        let body = format!("{{{{ \"z\" * {} }}}}", MAX_RENDERED_BYTES);
        let out = render(&target(template_from(&body, "big.j2")), &c).expect("at the bound");
        assert_eq!(out.len(), MAX_RENDERED_BYTES);
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
            let e = check_template(stmt, "(inline)").expect_err("no loader");
            assert!(e.contains("syntax error"), "{e}");
            assert!(render(&target(template(stmt)), &cred(&[])).is_err());
        }
    }
}
