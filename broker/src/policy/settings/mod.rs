//! Role settings: each backend's `settings` (with the role's scope and cap), parsed once at
//! policy load into that backend's own type, so issuance reads typed fields and never JSON.
//!
//! The loader turns a role's `settings` mapping into JSON and hands it, as a [`RoleSpec`], to
//! a parser ([`RoleSettings::parse`], which the broker calls through
//! `issue::Backends::validate_role` once it has checked that the backend is configured). A
//! [`RoleError`] says what to fix and names the [`RoleField`] it is about, so the loader can
//! point at that line.
//!
//! # Layout
//! - [`jwt`]: [`JwtRoleSettings`], the audience and scope claims.
//! - [`sts`]: [`StsRoleSettings`], the IAM role, session policy, tags, source identity and
//!   external id.
//! - [`vault`]: [`VaultRoleSettings`], a kv2, dynamic, pki or token role.
//! - [`template`]: `{{field}}` placeholders, parsed here and filled from an identity at
//!   issuance.
//!
//! This module depends on nothing of the backends' implementations (`issue/`); they depend on
//! it.

pub mod jwt;
pub mod sts;
pub mod template;
pub mod vault;

use serde_json::{Map, Value};

use jwt::{JwtRoleSettings, JwtSettingsError};
use sts::{StsRoleSettings, StsSettingsError};
use vault::{VaultRoleSettings, VaultSettingsError};

/// A role as its backend's parser sees it: everything but the parsed settings.
#[derive(Debug, Clone, Copy)]
pub struct RoleSpec<'a> {
    /// The role's name.
    pub name: &'a str,
    /// The backend kind it names.
    pub backend: &'a str,
    /// Its scope.
    pub scope: &'a [String],
    /// Its cap.
    pub max_ttl_seconds: u64,
    /// Its `settings`, as JSON (YAML 1.2 core-schema scalars: `true` is a boolean, `3` a
    /// number).
    pub settings: &'a Map<String, Value>,
}

/// A role's settings, parsed by the backend it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleSettings {
    /// A `jwt` role.
    Jwt(JwtRoleSettings),
    /// An `aws-sts` role.
    AwsSts(StsRoleSettings),
    /// A `vault` role.
    Vault(VaultRoleSettings),
}

impl RoleSettings {
    /// Every backend kind a role may name.
    pub const KINDS: [&'static str; 3] = [jwt::KIND, sts::KIND, vault::KIND];

    /// The backend kind these settings are for.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Jwt(_) => jwt::KIND,
            Self::AwsSts(_) => sts::KIND,
            Self::Vault(_) => vault::KIND,
        }
    }

    /// Parses a role's settings with the parser of the backend it names.
    pub fn parse(spec: &RoleSpec<'_>) -> Result<Self, RoleError> {
        match spec.backend {
            jwt::KIND => Ok(Self::Jwt(JwtRoleSettings::parse(spec)?)),
            sts::KIND => Ok(Self::AwsSts(StsRoleSettings::parse(spec)?)),
            vault::KIND => Ok(Self::Vault(VaultRoleSettings::parse(spec)?)),
            other => Err(RoleError::UnknownBackend {
                backend: other.to_owned(),
            }),
        }
    }
}

/// The part of a role a [`RoleError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleField<'a> {
    /// `backend`.
    Backend,
    /// `settings.<name>`.
    Setting(&'a str),
    /// `scope` as a whole.
    Scope,
    /// One entry of `scope`, from 0.
    ScopeEntry(usize),
    /// `max_ttl_seconds`.
    MaxTtl,
}

/// Why a role cannot be used with its backend; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoleError {
    /// The role names a backend kind that does not exist.
    #[error(
        "unknown backend `{backend}`{} (backends: {})",
        super::load::closest(backend, RoleSettings::KINDS)
            .map(|near| format!("; did you mean `{near}`?"))
            .unwrap_or_default(),
        RoleSettings::KINDS.join(", ")
    )]
    UnknownBackend {
        /// The kind named.
        backend: String,
    },
    /// The role names a backend this broker has not configured.
    #[error(
        "backend `{backend}` is not configured (configured: {}); add `backends.{}` to the \
         broker's configuration or use a configured backend",
        configured.join(", "),
        backend.replace('-', "_")
    )]
    NotConfigured {
        /// The kind named.
        backend: String,
        /// The kinds that are configured.
        configured: Vec<String>,
    },
    /// The `jwt` backend refuses the role.
    #[error(transparent)]
    Jwt(#[from] JwtSettingsError),
    /// The `aws-sts` backend refuses the role.
    #[error(transparent)]
    AwsSts(#[from] StsSettingsError),
    /// The `vault` backend refuses the role.
    #[error(transparent)]
    Vault(#[from] VaultSettingsError),
}

impl RoleError {
    /// The part of the role the error is about.
    pub fn field(&self) -> RoleField<'_> {
        match self {
            Self::UnknownBackend { .. } | Self::NotConfigured { .. } => RoleField::Backend,
            Self::Jwt(e) => e.field(),
            Self::AwsSts(e) => e.field(),
            Self::Vault(e) => e.field(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::policy::{Location, Role};

    /// A role before parsing, owning what a [`RoleSpec`] borrows.
    #[derive(Debug)]
    pub(crate) struct RawRole {
        name: String,
        backend: String,
        scope: Vec<String>,
        max_ttl_seconds: u64,
        settings: Map<String, Value>,
    }

    impl RawRole {
        pub(crate) fn spec(&self) -> RoleSpec<'_> {
            RoleSpec {
                name: &self.name,
                backend: &self.backend,
                scope: &self.scope,
                max_ttl_seconds: self.max_ttl_seconds,
                settings: &self.settings,
            }
        }
    }

    /// A role as written, with `settings` given as a JSON object.
    pub(crate) fn raw(
        name: &str,
        backend: &str,
        settings: Value,
        scope: &[&str],
        max_ttl_seconds: u64,
    ) -> RawRole {
        let Value::Object(settings) = settings else {
            panic!("settings must be a JSON object, not {settings}");
        };
        RawRole {
            name: name.to_owned(),
            backend: backend.to_owned(),
            scope: scope.iter().map(|s| (*s).to_owned()).collect(),
            max_ttl_seconds,
            settings,
        }
    }

    /// A loaded role (settings parsed as policy loading parses them; panics if they are
    /// invalid), declared at `policies/test.yaml:1`.
    pub(crate) fn role(
        name: &str,
        backend: &str,
        settings: Value,
        scope: &[&str],
        max_ttl_seconds: u64,
    ) -> Role {
        let raw = raw(name, backend, settings, scope, max_ttl_seconds);
        let settings =
            RoleSettings::parse(&raw.spec()).unwrap_or_else(|e| panic!("role {name}: {e}"));
        Role {
            name: raw.name,
            backend: raw.backend,
            scope: raw.scope,
            max_ttl_seconds,
            default_ttl_seconds: max_ttl_seconds.min(600),
            settings,
            location: Location {
                file: PathBuf::from("policies/test.yaml"),
                line: 1,
            },
        }
    }

    #[test]
    fn each_kind_is_parsed_by_its_backend() {
        let arn = "arn:aws:iam::123456789012:role/app";
        let cases = [
            (jwt::KIND, json!({"audience": "a"}), 60),
            (sts::KIND, json!({"role_arn": arn}), 900),
            (
                vault::KIND,
                json!({"kind": "dynamic", "mount": "db", "role": "r"}),
                60,
            ),
        ];
        for (kind, settings, max) in cases {
            let parsed =
                RoleSettings::parse(&raw("r", kind, settings, &[], max).spec()).expect("valid");
            assert_eq!(parsed.kind(), kind);
        }
        // The same settings under another backend are that backend's to judge.
        let err =
            RoleSettings::parse(&raw("r", vault::KIND, json!({"audience": "a"}), &[], 60).spec())
                .expect_err("not vault settings");
        assert!(
            matches!(
                err,
                RoleError::Vault(VaultSettingsError::UnknownSetting { .. })
            ),
            "{err:?}"
        );
        assert_eq!(err.field(), RoleField::Setting("audience"));
        let err = RoleSettings::parse(&raw("r", jwt::KIND, json!({"audience": 3}), &[], 60).spec())
            .expect_err("bad audience");
        assert_eq!(err, RoleError::Jwt(JwtSettingsError::BadAudience));
        assert_eq!(err.to_string(), JwtSettingsError::BadAudience.to_string());
    }

    #[test]
    fn backend_errors_say_what_exists_and_what_to_configure() {
        let err = RoleSettings::parse(&raw("r", "valut", json!({}), &[], 60).spec())
            .expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown backend `valut`; did you mean `vault`? (backends: jwt, aws-sts, vault)"
        );
        assert_eq!(err.field(), RoleField::Backend);
        let err =
            RoleSettings::parse(&raw("r", "ldap", json!({}), &[], 60).spec()).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown backend `ldap` (backends: jwt, aws-sts, vault)"
        );
        let err = RoleError::NotConfigured {
            backend: "aws-sts".into(),
            configured: vec!["jwt".into(), "vault".into()],
        };
        assert_eq!(
            err.to_string(),
            "backend `aws-sts` is not configured (configured: jwt, vault); add \
             `backends.aws_sts` to the broker's configuration or use a configured backend"
        );
    }
}
