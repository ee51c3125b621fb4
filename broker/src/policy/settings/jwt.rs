//! What a `jwt` role says: the audience and scope of the tokens the broker signs for it.

use serde::Serialize;
use serde_json::Value;

use super::{RoleField, RoleSpec};

/// The backend kind.
pub const KIND: &str = "jwt";

/// Settings a `jwt` role may carry.
pub const SETTINGS: &[&str] = &["audience"];

/// Audiences the broker keeps for its own tokens (e.g. `lanyard:session`); roles cannot
/// mint tokens for them.
pub const RESERVED_AUDIENCE_PREFIX: &str = "lanyard:";

/// The `aud` claim: one audience or several (serialized as a string or a list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

impl Audience {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            Self::One(a) => (Some(a.as_str()), &[][..]),
            Self::Many(list) => (None, list.as_slice()),
        };
        one.into_iter().chain(many.iter().map(String::as_str))
    }
}

/// A `jwt` role's settings, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRoleSettings {
    audience: Audience,
    scope: Option<String>,
}

impl JwtRoleSettings {
    /// The `aud` claim: `settings.audience`, else the role name.
    pub fn audience(&self) -> &Audience {
        &self.audience
    }

    /// The `scope` claim: the role's scope joined with spaces; none for an empty scope.
    pub fn scope_claim(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// Parses a `jwt` role's settings (only `audience`) and checks its scope (no empty or
    /// whitespace entries: the claim joins them with spaces).
    pub fn parse(spec: &RoleSpec<'_>) -> Result<Self, JwtSettingsError> {
        if let Some(unknown) = spec
            .settings
            .keys()
            .find(|k| !SETTINGS.contains(&k.as_str()))
        {
            return Err(JwtSettingsError::UnknownSetting {
                name: unknown.clone(),
            });
        }
        let audience = match spec.settings.get("audience") {
            None => Audience::One(spec.name.to_owned()),
            Some(Value::String(s)) if !s.is_empty() => Audience::One(s.clone()),
            Some(Value::Array(items)) if !items.is_empty() => Audience::Many(
                items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) if !s.is_empty() => Ok(s.clone()),
                        _ => Err(JwtSettingsError::BadAudience),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(JwtSettingsError::BadAudience),
        };
        if let Some(reserved) = audience
            .iter()
            .find(|a| a.starts_with(RESERVED_AUDIENCE_PREFIX))
        {
            return Err(JwtSettingsError::ReservedAudience {
                audience: reserved.to_owned(),
            });
        }
        for (index, entry) in spec.scope.iter().enumerate() {
            if entry.is_empty() {
                return Err(JwtSettingsError::EmptyScopeEntry { index });
            }
            if entry.chars().any(char::is_whitespace) {
                return Err(JwtSettingsError::ScopeWhitespace {
                    index,
                    entry: entry.clone(),
                });
            }
        }
        Ok(Self {
            audience,
            scope: (!spec.scope.is_empty()).then(|| spec.scope.join(" ")),
        })
    }
}

/// Why a `jwt` role's settings are unusable; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtSettingsError {
    /// A setting the backend does not know.
    #[error(
        "unknown setting `{name}` for the jwt backend (valid settings: {})",
        SETTINGS.join(", ")
    )]
    UnknownSetting {
        /// The setting.
        name: String,
    },
    /// `audience` is neither a non-empty string nor a list of them.
    #[error(
        "`settings.audience` must be a non-empty string or a non-empty list of non-empty strings"
    )]
    BadAudience,
    /// An audience the broker keeps for its own tokens.
    #[error(
        "audience `{audience}`: audiences starting with `{RESERVED_AUDIENCE_PREFIX}` are reserved for the broker's own tokens; pick another audience"
    )]
    ReservedAudience {
        /// The audience.
        audience: String,
    },
    /// An empty scope entry (0-based `index`).
    #[error("scope entry {} is empty; remove it", index + 1)]
    EmptyScopeEntry {
        /// Which entry, from 0.
        index: usize,
    },
    /// A scope entry with whitespace (0-based `index`).
    #[error(
        "scope entry {} `{entry}` contains whitespace; list each scope as its own entry",
        index + 1
    )]
    ScopeWhitespace {
        /// Which entry, from 0.
        index: usize,
        /// The entry.
        entry: String,
    },
}

impl JwtSettingsError {
    /// The part of the role the error is about.
    pub fn field(&self) -> RoleField<'_> {
        match self {
            Self::UnknownSetting { name } => RoleField::Setting(name),
            Self::BadAudience | Self::ReservedAudience { .. } => RoleField::Setting("audience"),
            Self::EmptyScopeEntry { index } | Self::ScopeWhitespace { index, .. } => {
                RoleField::ScopeEntry(*index)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::settings::tests::raw;

    fn parse(settings: Value, scope: &[&str]) -> Result<JwtRoleSettings, JwtSettingsError> {
        JwtRoleSettings::parse(&raw("orders-read", KIND, settings, scope, 3600).spec())
    }

    #[test]
    fn audience_defaults_to_the_role_name_and_scope_becomes_one_claim() {
        let s = parse(json!({}), &[]).expect("no settings");
        assert_eq!(s.audience(), &Audience::One("orders-read".into()));
        assert_eq!(s.scope_claim(), None);
        let s = parse(json!({"audience": ["a", "b"]}), &["x:read", "x:list"]).expect("list");
        assert_eq!(s.audience(), &Audience::Many(vec!["a".into(), "b".into()]));
        assert_eq!(s.scope_claim(), Some("x:read x:list"));
        assert_eq!(
            serde_json::to_value(s.audience()).expect("serialize"),
            json!(["a", "b"])
        );
        let s = parse(json!({"audience": "orders"}), &[]).expect("string");
        assert_eq!(
            serde_json::to_value(s.audience()).expect("serialize"),
            json!("orders")
        );
    }

    #[test]
    fn each_bad_field_has_its_error() {
        let err = parse(json!({"audiences": "x"}), &[]).expect_err("unknown key");
        assert_eq!(
            err,
            JwtSettingsError::UnknownSetting {
                name: "audiences".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown setting `audiences` for the jwt backend (valid settings: audience)"
        );
        assert_eq!(err.field(), RoleField::Setting("audiences"));
        for bad in [json!(""), json!([]), json!([1]), json!(["a", ""]), json!(3)] {
            let err = parse(json!({"audience": bad}), &[]).expect_err("bad audience");
            assert_eq!(err, JwtSettingsError::BadAudience, "{bad}");
            assert!(err.to_string().contains("settings.audience"), "{err}");
            assert_eq!(err.field(), RoleField::Setting("audience"));
        }
        let err = parse(json!({}), &["ok", "read write"]).expect_err("whitespace");
        assert_eq!(err.field(), RoleField::ScopeEntry(1));
        assert_eq!(
            err.to_string(),
            "scope entry 2 `read write` contains whitespace; list each scope as its own entry"
        );
        let err = parse(json!({}), &["ok", ""]).expect_err("empty");
        assert_eq!(err, JwtSettingsError::EmptyScopeEntry { index: 1 });
        assert!(err.to_string().contains("scope entry 2 is empty"), "{err}");
    }

    #[test]
    fn roles_cannot_mint_tokens_for_the_brokers_own_audiences() {
        for audience in [json!("lanyard:session"), json!(["ok", "lanyard:session"])] {
            let err = parse(json!({"audience": audience}), &[]).expect_err("reserved");
            assert_eq!(
                err,
                JwtSettingsError::ReservedAudience {
                    audience: "lanyard:session".into()
                }
            );
            assert!(err.to_string().contains("reserved"), "{err}");
        }
        // The role name is the default audience, so it is checked too.
        let err = JwtRoleSettings::parse(&raw("lanyard:x", KIND, json!({}), &[], 60).spec())
            .expect_err("reserved default");
        assert!(matches!(err, JwtSettingsError::ReservedAudience { .. }));
    }
}
