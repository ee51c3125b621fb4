//! Spec parsing: what configuration asks for, read and checked into the types the sidecar
//! runs with. Targets come from a YAML config file (`targets:`) or from annotation-style keys
//! (`role=db,field=password,format=raw,path=db/password,mode=0400`) and become
//! [`Target`]s; notify actions (`notify:`) become [`Notify`]s; `on_expiry:` an [`OnExpiry`].
//! Every check happens here, at start, so a bad spec fails with the file, the target and the
//! field before anything is fetched; rendering and writing never see an unchecked spec.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::names::{FILE_MODE, check_env_key, check_name, check_path, parse_mode, read_bounded};
use crate::notify::{Notify, SignalName};
use crate::render::check_template;
use crate::target::{Format, OnExpiry, Target};

/// Largest template (inline or file), in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Largest config file, in bytes.
pub const MAX_CONFIG_FILE_BYTES: usize = 1024 * 1024;
/// Most targets in one sidecar.
pub const MAX_TARGETS: usize = 256;

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

/// The config file: `targets:`, `notify:` and `on_expiry:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The targets.
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    /// What to do after a rotation.
    #[serde(default)]
    pub notify: Vec<NotifySpec>,
    /// What to do with a credential past its expiry that could not be refreshed.
    #[serde(default)]
    pub on_expiry: Option<OnExpiry>,
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

/// One notify action as written in the config file. Exactly one of `pid_file`,
/// `process_name` (both with `signal`), `command` or `touch`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    /// Signal name: `HUP`, `USR1`, `USR2`, `TERM`, `INT`, `QUIT`, `WINCH` (with or without
    /// `SIG`).
    pub signal: Option<String>,
    /// File holding the pid to signal.
    pub pid_file: Option<PathBuf>,
    /// Process name to signal (every process whose `comm` or `argv[0]` base name matches).
    pub process_name: Option<String>,
    /// Command to run: argv, no shell.
    pub command: Option<Vec<String>>,
    /// File to create or touch.
    pub touch: Option<PathBuf>,
}

impl NotifySpec {
    /// Checks the spec. `what` names it in errors.
    pub fn check(&self, what: &str) -> Result<Notify, String> {
        let err = |m: &str| format!("{what}: {m}");
        let kinds = [
            self.pid_file.is_some(),
            self.process_name.is_some(),
            self.command.is_some(),
            self.touch.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(err(
                "give exactly one of pid_file, process_name (each with signal), command or touch",
            ));
        }
        let signal = match &self.signal {
            Some(s) => Some(SignalName::parse(s).map_err(|e| err(&e))?),
            None => None,
        };
        let need_signal = || signal.ok_or_else(|| err("give signal (e.g. HUP) with it"));
        if let Some(p) = &self.pid_file {
            return Ok(Notify::SignalPidFile {
                signal: need_signal()?,
                pid_file: p.clone(),
            });
        }
        if let Some(n) = &self.process_name {
            if n.is_empty() || n.contains('/') || n.len() > 255 {
                return Err(err("process_name must be a plain program name"));
            }
            return Ok(Notify::SignalProcessName {
                signal: need_signal()?,
                name: n.clone(),
            });
        }
        if signal.is_some() {
            return Err(err("signal goes with pid_file or process_name"));
        }
        if let Some(argv) = &self.command {
            if argv.first().is_none_or(|a| a.is_empty()) {
                return Err(err(
                    "command needs at least a program, e.g. [\"/bin/reload\"]",
                ));
            }
            return Ok(Notify::Command { argv: argv.clone() });
        }
        match &self.touch {
            Some(p) => Ok(Notify::Touch { path: p.clone() }),
            None => Err(err("nothing to do")),
        }
    }
}

/// Splits a `--notify-command` value: a JSON array of strings, or words split on whitespace.
pub fn parse_command(s: &str) -> Result<Vec<String>, String> {
    let t = s.trim();
    let argv: Vec<String> = if t.starts_with('[') {
        serde_json::from_str(t)
            .map_err(|e| format!("--notify-command {t:?} is not a JSON array of strings ({e})"))?
    } else {
        t.split_whitespace().map(str::to_owned).collect()
    };
    if argv.first().is_none_or(|a| a.is_empty()) {
        return Err("--notify-command is empty; give a program and its arguments".to_owned());
    }
    Ok(argv)
}
#[cfg(test)]
mod tests {
    use lanyard::wire::Credential;

    use super::*;
    use crate::render::render;

    fn cred(fields: &[(&str, &str)]) -> Credential {
        crate::fixtures::credential("db", fields)
    }

    fn target(keys: &str) -> Target {
        parse_target_keys(keys)
            .expect("parse")
            .check("target 1")
            .expect("check")
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
    }

    #[test]
    fn modes_are_octal_strings() {
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
        let e = parse_target_keys("role=db,path=x,mode=4755")
            .expect("parse")
            .check("t")
            .expect_err("setuid");
        assert!(e.starts_with("t: mode"), "{e}");
    }

    #[test]
    fn config_file_errors_name_the_field_and_line() {
        let e = ConfigFile::parse("targets:\n  - role: db\n    pth: x\n").expect_err("typo");
        assert!(e.contains("pth") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn config_file_carries_notify_and_on_expiry() {
        let c = ConfigFile::parse(
            "targets:\n  - {role: db, path: x}\nnotify:\n  - {touch: /run/rotated}\non_expiry: mark\n",
        )
        .expect("parse");
        assert_eq!(c.targets.len(), 1);
        assert_eq!(
            c.notify[0].check("notify 1"),
            Ok(Notify::Touch {
                path: "/run/rotated".into()
            })
        );
        assert_eq!(c.on_expiry, Some(OnExpiry::Mark));
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
    fn env_keys_are_checked_at_load() {
        let e = parse_target_keys("role=db,path=e,format=env,field=a,key=1BAD")
            .expect("parse")
            .check("t")
            .expect_err("bad key");
        assert!(e.contains("not a valid variable name"), "{e}");
        assert_eq!(
            target("role=db,path=e,format=env,prefix=DB_").format,
            Format::Env {
                field: None,
                key: None,
                prefix: "DB_".into()
            }
        );
    }

    #[test]
    fn a_template_spec_compiles_at_load() {
        let t = "postgres://app:{{ data.password | urlencode }}@db:5432/app?x={{ role }}\n";
        let spec = TargetSpec {
            role: Some("db".into()),
            path: Some("dsn".into()),
            format: Some(FormatKind::Template),
            template: Some(t.into()),
            ..TargetSpec::default()
        };
        assert_eq!(
            spec.check("t").expect("check").format,
            Format::Template {
                source: t.into(),
                origin: "(inline)".into()
            }
        );
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
        // So is a statement that would read a file.
        let e = parse_target_keys("role=db,path=x,format=template,template={% include 'x' %}")
            .expect("parse")
            .check("target 1")
            .expect_err("no loader");
        assert!(e.contains("syntax error"), "{e}");
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

    #[test]
    fn specs_need_exactly_one_action() {
        let ok = NotifySpec {
            signal: Some("sighup".into()),
            pid_file: Some("/run/app.pid".into()),
            ..Default::default()
        };
        assert_eq!(
            ok.check("notify 1"),
            Ok(Notify::SignalPidFile {
                signal: SignalName::Hup,
                pid_file: "/run/app.pid".into()
            })
        );
        let none = NotifySpec::default().check("notify 1").expect_err("none");
        assert!(none.contains("exactly one"), "{none}");
        let both = NotifySpec {
            touch: Some("/x".into()),
            command: Some(vec!["/bin/true".into()]),
            ..Default::default()
        };
        assert!(both.check("n").is_err());
        let no_sig = NotifySpec {
            process_name: Some("nginx".into()),
            ..Default::default()
        };
        assert!(no_sig.check("n").expect_err("sig").contains("signal"));
        let bad_sig = NotifySpec {
            signal: Some("KILL".into()),
            process_name: Some("nginx".into()),
            ..Default::default()
        };
        assert!(
            bad_sig
                .check("n")
                .expect_err("kill")
                .contains("not supported")
        );
        let stray = NotifySpec {
            signal: Some("HUP".into()),
            touch: Some("/x".into()),
            ..Default::default()
        };
        assert!(stray.check("n").is_err());
    }

    #[test]
    fn commands_are_argv_json_or_words() {
        assert_eq!(
            parse_command(r#"["/bin/echo", "a b", "$HOME"]"#),
            Ok(vec!["/bin/echo".into(), "a b".into(), "$HOME".into()])
        );
        assert_eq!(
            parse_command("nginx -s reload"),
            Ok(vec!["nginx".into(), "-s".into(), "reload".into()])
        );
        assert!(parse_command("  ").is_err());
        assert!(parse_command("[1, 2]").is_err());
    }
}
