//! What a `vault` role says: which kind of Vault secret it issues, from where (see
//! `issue/vault.rs` for the calls).

use serde_json::Value;

use super::template::{Template, TemplateError};
use super::{RoleField, RoleSpec};

/// The backend kind.
pub const KIND: &str = "vault";

/// Settings a `vault` role may carry.
pub const SETTINGS: &[&str] = &[
    "kind",
    "mount",
    "path",
    "version",
    "role",
    "common_name",
    "alt_names",
    "policies",
    "token_role",
    "renewable",
];

/// The kinds `settings.kind` may name.
const KINDS: &str = "kv2, dynamic, pki, token";

/// What a `vault` role issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultKind {
    /// A KV v2 read.
    Kv2 {
        /// Engine mount (default `secret`).
        mount: String,
        /// Secret path (may hold placeholders).
        path: Template,
        /// A pinned version.
        version: Option<u64>,
    },
    /// Dynamic credentials from `<mount>/creds/<role>`.
    Dynamic {
        /// Engine mount, e.g. `database`.
        mount: String,
        /// Engine role.
        role: String,
    },
    /// A certificate from `<mount>/issue/<role>`.
    Pki {
        /// Engine mount (default `pki`).
        mount: String,
        /// PKI role.
        role: String,
        /// Common name template.
        common_name: Template,
        /// Subject alternative name templates.
        alt_names: Vec<Template>,
    },
    /// A child token.
    Token {
        /// Policies of the token.
        policies: Vec<String>,
        /// A token role to create it against.
        token_role: Option<String>,
        /// Whether the token may be renewed (up to its explicit max TTL).
        renewable: bool,
    },
}

/// A `vault` role's settings, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultRoleSettings {
    kind: VaultKind,
}

/// Whether `s` is a relative Vault path: no leading or trailing `/`, no empty, `.` or `..`
/// segments.
pub fn is_relative_path(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && !s.ends_with('/')
        && !s.split('/').any(|p| p.is_empty() || p == "." || p == "..")
}

fn str_setting(
    spec: &RoleSpec<'_>,
    key: &'static str,
) -> Result<Option<String>, VaultSettingsError> {
    match spec.settings.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(VaultSettingsError::NotAString { setting: key }),
    }
}

fn list_setting(spec: &RoleSpec<'_>, key: &'static str) -> Result<Vec<String>, VaultSettingsError> {
    match spec.settings.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i.as_str() {
                Some(s) if !s.is_empty() => Ok(s.to_owned()),
                _ => Err(VaultSettingsError::EmptyListEntry { setting: key }),
            })
            .collect(),
        Some(_) => Err(VaultSettingsError::NotAList { setting: key }),
    }
}

impl VaultRoleSettings {
    /// What the role issues.
    pub fn kind(&self) -> &VaultKind {
        &self.kind
    }

    /// Parses a `vault` role's settings (and checks that only `kv2` roles have a scope).
    pub fn parse(spec: &RoleSpec<'_>) -> Result<Self, VaultSettingsError> {
        use VaultSettingsError as E;
        let settings = spec.settings;
        if let Some(unknown) = settings.keys().find(|k| !SETTINGS.contains(&k.as_str())) {
            return Err(E::UnknownSetting {
                name: unknown.clone(),
            });
        }
        let allowed = |takes: &'static [&'static str], kind: &'static str| match settings
            .keys()
            .find(|k| k.as_str() != "kind" && !takes.contains(&k.as_str()))
        {
            Some(k) => Err(E::NotForKind {
                setting: k.clone(),
                kind,
                takes,
            }),
            None => Ok(()),
        };
        let kind = str_setting(spec, "kind")?.ok_or(E::MissingKind)?;
        let mount = |kind: &'static str, default: Option<&str>| -> Result<String, E> {
            let m = match (str_setting(spec, "mount")?, default) {
                (Some(m), _) => m,
                (None, Some(d)) => d.to_owned(),
                (None, None) => return Err(E::MissingMount { kind }),
            };
            if !is_relative_path(&m) || m.contains("{{") {
                return Err(E::BadMount { mount: m });
            }
            Ok(m)
        };
        let parsed = match kind.as_str() {
            "kv2" => {
                allowed(&["mount", "path", "version"], "kv2")?;
                let path = str_setting(spec, "path")?.ok_or(E::MissingPath)?;
                let template = Template::parse(&path).map_err(|error| E::Template {
                    setting: "path",
                    error,
                })?;
                if !is_relative_path(&path) {
                    return Err(E::BadPath { path });
                }
                let version = match settings.get("version") {
                    None => None,
                    Some(v) => Some(v.as_u64().filter(|v| *v > 0).ok_or(E::BadVersion)?),
                };
                VaultKind::Kv2 {
                    mount: mount("kv2", Some("secret"))?,
                    path: template,
                    version,
                }
            }
            "dynamic" => {
                allowed(&["mount", "role"], "dynamic")?;
                let r = str_setting(spec, "role")?.ok_or(E::MissingRole {
                    kind: "dynamic",
                    what: "the engine's role",
                })?;
                if !is_relative_path(&r) || r.contains('/') || r.contains("{{") {
                    return Err(E::BadRole { role: r });
                }
                VaultKind::Dynamic {
                    mount: mount("dynamic", None)?,
                    role: r,
                }
            }
            "pki" => {
                allowed(&["mount", "role", "common_name", "alt_names"], "pki")?;
                let r = str_setting(spec, "role")?.ok_or(E::MissingRole {
                    kind: "pki",
                    what: "the PKI role",
                })?;
                if r.contains('/') || r.contains("{{") {
                    return Err(E::BadRole { role: r });
                }
                let common_name = str_setting(spec, "common_name")?
                    .unwrap_or_else(|| "{{service_account}}.{{namespace}}.svc".to_owned());
                let alt_names = list_setting(spec, "alt_names")?;
                let common_name = Template::parse(&common_name).map_err(|error| E::Template {
                    setting: "common_name",
                    error,
                })?;
                let alt_names = alt_names
                    .iter()
                    .map(|a| Template::parse(a))
                    .collect::<Result<_, _>>()
                    .map_err(|error| E::Template {
                        setting: "alt_names",
                        error,
                    })?;
                VaultKind::Pki {
                    mount: mount("pki", Some("pki"))?,
                    role: r,
                    common_name,
                    alt_names,
                }
            }
            "token" => {
                allowed(&["policies", "token_role", "renewable"], "token")?;
                let policies = list_setting(spec, "policies")?;
                if policies.is_empty() {
                    return Err(E::MissingPolicies);
                }
                if policies.iter().any(|p| p == "root") {
                    return Err(E::RootPolicy);
                }
                let renewable = match settings.get("renewable") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(E::BadRenewable),
                };
                VaultKind::Token {
                    policies,
                    token_role: str_setting(spec, "token_role")?,
                    renewable,
                }
            }
            _ => return Err(E::UnknownKind { kind }),
        };
        if !spec.scope.is_empty() && !matches!(parsed, VaultKind::Kv2 { .. }) {
            return Err(E::ScopeNotKv2);
        }
        Ok(Self { kind: parsed })
    }
}

/// Why a `vault` role's settings are unusable; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VaultSettingsError {
    /// A setting the backend does not know.
    #[error(
        "unknown setting `{name}` for the vault backend (valid settings: {})",
        SETTINGS.join(", ")
    )]
    UnknownSetting {
        /// The setting.
        name: String,
    },
    /// A setting that must be a non-empty string is not.
    #[error("`settings.{setting}` must be a non-empty string")]
    NotAString {
        /// The setting.
        setting: &'static str,
    },
    /// A setting that must be a list is not.
    #[error("`settings.{setting}` must be a list of strings")]
    NotAList {
        /// The setting.
        setting: &'static str,
    },
    /// A list setting with an empty or non-string entry.
    #[error("`settings.{setting}` entries must be non-empty strings")]
    EmptyListEntry {
        /// The setting.
        setting: &'static str,
    },
    /// No `kind`.
    #[error("the vault backend needs `settings.kind`: kv2, dynamic, pki or token")]
    MissingKind,
    /// A `kind` that is none of the four.
    #[error("`settings.kind` `{kind}` is not one of {KINDS}")]
    UnknownKind {
        /// The kind named.
        kind: String,
    },
    /// A setting another kind takes.
    #[error(
        "`settings.{setting}` does not apply to kind `{kind}` (it takes: {})",
        takes.join(", ")
    )]
    NotForKind {
        /// The setting.
        setting: String,
        /// The role's kind.
        kind: &'static str,
        /// The settings that kind takes (besides `kind`).
        takes: &'static [&'static str],
    },
    /// No `mount` for a kind without a default one.
    #[error("kind `{kind}` needs `settings.mount` (e.g. `database`)")]
    MissingMount {
        /// The role's kind.
        kind: &'static str,
    },
    /// A `mount` that is not a relative path (or holds a placeholder).
    #[error("`settings.mount` `{mount}` is not a mount path")]
    BadMount {
        /// The mount.
        mount: String,
    },
    /// A `kv2` role without `path`.
    #[error("kind `kv2` needs `settings.path`")]
    MissingPath,
    /// A `path` that is not a relative path.
    #[error("`settings.path` `{path}` must be a relative path without empty, `.` or `..` segments")]
    BadPath {
        /// The path.
        path: String,
    },
    /// A bad placeholder in a templated setting.
    #[error("`settings.{setting}`: {error}")]
    Template {
        /// `path`, `common_name` or `alt_names`.
        setting: &'static str,
        /// The placeholder problem.
        error: TemplateError,
    },
    /// A `version` that is not a positive integer.
    #[error("`settings.version` must be a positive integer")]
    BadVersion,
    /// A `dynamic` or `pki` role without `role`.
    #[error("kind `{kind}` needs `settings.role` ({what})")]
    MissingRole {
        /// The role's kind.
        kind: &'static str,
        /// What the setting names.
        what: &'static str,
    },
    /// A `role` that is not a role name.
    #[error("`settings.role` `{role}` is not a role name")]
    BadRole {
        /// The value.
        role: String,
    },
    /// A `token` role without `policies`.
    #[error("kind `token` needs `settings.policies` (the Vault policies of the child token)")]
    MissingPolicies,
    /// A `token` role asking for `root`.
    #[error("child tokens cannot carry the `root` policy")]
    RootPolicy,
    /// A `renewable` that is not a boolean.
    #[error("`settings.renewable` must be true or false")]
    BadRenewable,
    /// A `scope` on a kind other than `kv2`.
    #[error("`scope` applies to kind `kv2` only (the keys to hand out); remove it")]
    ScopeNotKv2,
}

impl VaultSettingsError {
    /// The part of the role the error is about.
    pub fn field(&self) -> RoleField<'_> {
        match self {
            Self::UnknownSetting { name } | Self::NotForKind { setting: name, .. } => {
                RoleField::Setting(name)
            }
            Self::NotAString { setting }
            | Self::NotAList { setting }
            | Self::EmptyListEntry { setting }
            | Self::Template { setting, .. } => RoleField::Setting(setting),
            Self::MissingKind | Self::UnknownKind { .. } => RoleField::Setting("kind"),
            Self::MissingMount { .. } | Self::BadMount { .. } => RoleField::Setting("mount"),
            Self::MissingPath | Self::BadPath { .. } => RoleField::Setting("path"),
            Self::BadVersion => RoleField::Setting("version"),
            Self::MissingRole { .. } | Self::BadRole { .. } => RoleField::Setting("role"),
            Self::MissingPolicies | Self::RootPolicy => RoleField::Setting("policies"),
            Self::BadRenewable => RoleField::Setting("renewable"),
            Self::ScopeNotKv2 => RoleField::Scope,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::settings::tests::raw;

    fn parse(settings: Value, scope: &[&str]) -> Result<VaultKind, VaultSettingsError> {
        VaultRoleSettings::parse(&raw("db", KIND, settings, scope, 3600).spec()).map(|s| s.kind)
    }

    fn template(s: &str) -> Template {
        Template::parse(s).expect("template")
    }

    #[test]
    fn kinds_parse_with_defaults() {
        assert_eq!(
            parse(
                json!({"kind": "kv2", "path": "apps/{{namespace}}/db", "version": 3}),
                &["password"]
            )
            .expect("kv2"),
            VaultKind::Kv2 {
                mount: "secret".into(),
                path: template("apps/{{namespace}}/db"),
                version: Some(3)
            }
        );
        assert_eq!(
            parse(
                json!({"kind": "dynamic", "mount": "database", "role": "readonly"}),
                &[]
            )
            .expect("dynamic"),
            VaultKind::Dynamic {
                mount: "database".into(),
                role: "readonly".into()
            }
        );
        assert_eq!(
            parse(json!({"kind": "pki", "role": "svc"}), &[]).expect("pki"),
            VaultKind::Pki {
                mount: "pki".into(),
                role: "svc".into(),
                common_name: template("{{service_account}}.{{namespace}}.svc"),
                alt_names: vec![]
            }
        );
        assert_eq!(
            parse(
                json!({"kind": "pki", "mount": "pki-int", "role": "svc", "common_name": "x.{{namespace}}",
                    "alt_names": ["{{subject}}", "plain.example"]}),
                &[]
            )
            .expect("pki"),
            VaultKind::Pki {
                mount: "pki-int".into(),
                role: "svc".into(),
                common_name: template("x.{{namespace}}"),
                alt_names: vec![template("{{subject}}"), template("plain.example")]
            }
        );
        assert_eq!(
            parse(json!({"kind": "token", "policies": ["read-db"]}), &[]).expect("token"),
            VaultKind::Token {
                policies: vec!["read-db".into()],
                token_role: None,
                renewable: false
            }
        );
        assert_eq!(
            parse(
                json!({"kind": "token", "policies": ["a", "b"], "token_role": "apps", "renewable": true}),
                &[]
            )
            .expect("token"),
            VaultKind::Token {
                policies: vec!["a".into(), "b".into()],
                token_role: Some("apps".into()),
                renewable: true
            }
        );
    }

    #[test]
    fn each_bad_field_has_its_error() {
        use VaultSettingsError as E;
        let unknown_pod = TemplateError::UnknownPlaceholder { name: "pod".into() };
        let cases = [
            (json!({}), E::MissingKind, "needs `settings.kind`"),
            (
                json!({"kind": 3}),
                E::NotAString { setting: "kind" },
                "non-empty string",
            ),
            (
                json!({"kind": "kv3"}),
                E::UnknownKind { kind: "kv3".into() },
                "not one of kv2",
            ),
            (
                json!({"kind": "kv2"}),
                E::MissingPath,
                "needs `settings.path`",
            ),
            (
                json!({"kind": "kv2", "path": "a/../b"}),
                E::BadPath {
                    path: "a/../b".into(),
                },
                "without empty",
            ),
            (
                json!({"kind": "kv2", "path": "a/{{pod}}"}),
                E::Template {
                    setting: "path",
                    error: unknown_pod.clone(),
                },
                "unknown placeholder",
            ),
            (
                json!({"kind": "kv2", "path": "a", "version": 0}),
                E::BadVersion,
                "positive integer",
            ),
            (
                json!({"kind": "kv2", "path": "a", "mount": "/secret"}),
                E::BadMount {
                    mount: "/secret".into(),
                },
                "not a mount path",
            ),
            (
                json!({"kind": "kv2", "path": "a", "role": "x"}),
                E::NotForKind {
                    setting: "role".into(),
                    kind: "kv2",
                    takes: &["mount", "path", "version"],
                },
                "does not apply to kind `kv2`",
            ),
            (
                json!({"kind": "dynamic", "role": "r"}),
                E::MissingMount { kind: "dynamic" },
                "needs `settings.mount`",
            ),
            (
                json!({"kind": "dynamic", "mount": "database"}),
                E::MissingRole {
                    kind: "dynamic",
                    what: "the engine's role",
                },
                "needs `settings.role`",
            ),
            (
                json!({"kind": "dynamic", "mount": "database", "role": "a/b"}),
                E::BadRole { role: "a/b".into() },
                "not a role name",
            ),
            (
                json!({"kind": "pki"}),
                E::MissingRole {
                    kind: "pki",
                    what: "the PKI role",
                },
                "(the PKI role)",
            ),
            (
                json!({"kind": "pki", "role": "svc", "common_name": "{{pod}}.svc"}),
                E::Template {
                    setting: "common_name",
                    error: unknown_pod.clone(),
                },
                "`settings.common_name`: unknown placeholder",
            ),
            (
                json!({"kind": "pki", "role": "svc", "alt_names": ["ok", "{{pod}}"]}),
                E::Template {
                    setting: "alt_names",
                    error: unknown_pod,
                },
                "`settings.alt_names`: unknown placeholder",
            ),
            (
                json!({"kind": "pki", "role": "svc", "alt_names": "x"}),
                E::NotAList {
                    setting: "alt_names",
                },
                "list of strings",
            ),
            (
                json!({"kind": "token"}),
                E::MissingPolicies,
                "needs `settings.policies`",
            ),
            (
                json!({"kind": "token", "policies": ["a", ""]}),
                E::EmptyListEntry {
                    setting: "policies",
                },
                "entries must be non-empty strings",
            ),
            (
                json!({"kind": "token", "policies": ["root"]}),
                E::RootPolicy,
                "root",
            ),
            (
                json!({"kind": "token", "policies": ["a"], "renewable": "yes"}),
                E::BadRenewable,
                "true or false",
            ),
            (
                json!({"kind": "token", "policies": ["a"], "ttl": 3}),
                E::UnknownSetting { name: "ttl".into() },
                "unknown setting `ttl`",
            ),
        ];
        for (settings, want, text) in cases {
            let err = parse(settings.clone(), &[]).expect_err(text);
            assert_eq!(err, want, "{settings}");
            assert!(err.to_string().contains(text), "{settings}: {err}");
        }
        let err = parse(
            json!({"kind": "dynamic", "mount": "db", "role": "r"}),
            &["x"],
        )
        .expect_err("scope");
        assert_eq!(err, E::ScopeNotKv2);
        assert!(
            err.to_string().contains("applies to kind `kv2` only"),
            "{err}"
        );
        assert_eq!(err.field(), RoleField::Scope);
    }

    #[test]
    fn errors_name_their_field() {
        use VaultSettingsError as E;
        assert_eq!(
            E::NotForKind {
                setting: "role".into(),
                kind: "kv2",
                takes: &[]
            }
            .field(),
            RoleField::Setting("role")
        );
        assert_eq!(E::MissingKind.field(), RoleField::Setting("kind"));
        assert_eq!(E::RootPolicy.field(), RoleField::Setting("policies"));
        assert_eq!(
            E::BadMount { mount: "/".into() }.field(),
            RoleField::Setting("mount")
        );
    }

    #[test]
    fn relative_paths() {
        for good in ["a", "a/b", "apps/{{namespace}}/db", "a.b/c..d"] {
            assert!(is_relative_path(good), "{good}");
        }
        for bad in ["", "/a", "a/", "a//b", "a/./b", "a/../b", ".", ".."] {
            assert!(!is_relative_path(bad), "{bad}");
        }
    }
}
