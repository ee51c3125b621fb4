//! What an `aws-sts` role says: the IAM role to assume and how to scope its session (see
//! `issue/sts.rs` for how a request becomes one AssumeRole call).

use serde_json::{Value, json};

use super::template::{JsonTemplate, TemplateError};
use super::{RoleField, RoleSpec};

/// The backend kind.
pub const KIND: &str = "aws-sts";

/// Settings an `aws-sts` role may carry.
pub const SETTINGS: &[&str] = &[
    "role_arn",
    "session_policy",
    "resources",
    "session_tags",
    "source_identity",
    "external_id",
];

/// STS's shortest session.
pub const MIN_DURATION_SECONDS: u64 = 900;
/// STS's longest session (role chaining aside; the IAM role's own maximum also applies).
pub const MAX_DURATION_SECONDS: u64 = 43_200;
/// Largest inline session policy STS accepts, in characters.
pub const MAX_SESSION_POLICY_CHARS: usize = 2048;

/// An identity field a session can be tagged with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagField {
    /// `kubernetes-namespace`.
    Namespace,
    /// `kubernetes-service-account`.
    ServiceAccount,
    /// `kubernetes-pod-name`.
    PodName,
    /// `kubernetes-pod-uid`.
    PodUid,
}

impl TagField {
    /// Every field, in the order error messages list them.
    pub const ALL: [Self; 4] = [
        Self::Namespace,
        Self::ServiceAccount,
        Self::PodName,
        Self::PodUid,
    ];
    /// The fields tagged when `session_tags` is left out or `true`.
    pub const DEFAULT: [Self; 2] = [Self::Namespace, Self::ServiceAccount];

    /// The name a role's `session_tags` lists.
    pub fn name(self) -> &'static str {
        match self {
            Self::Namespace => "namespace",
            Self::ServiceAccount => "service_account",
            Self::PodName => "pod_name",
            Self::PodUid => "pod_uid",
        }
    }

    /// The session tag's key.
    pub fn tag_key(self) -> &'static str {
        match self {
            Self::Namespace => "kubernetes-namespace",
            Self::ServiceAccount => "kubernetes-service-account",
            Self::PodName => "kubernetes-pod-name",
            Self::PodUid => "kubernetes-pod-uid",
        }
    }
}

/// An `aws-sts` role's settings, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRoleSettings {
    role_arn: String,
    session_policy: Option<JsonTemplate>,
    session_tags: Vec<TagField>,
    source_identity: bool,
    external_id: Option<String>,
}

impl StsRoleSettings {
    /// `RoleArn`: the IAM role to assume.
    pub fn role_arn(&self) -> &str {
        &self.role_arn
    }

    /// The inline session policy, from `settings.session_policy` or from `scope` and
    /// `settings.resources`; none when the role has neither.
    pub fn session_policy(&self) -> Option<&JsonTemplate> {
        self.session_policy.as_ref()
    }

    /// The identity fields the session is tagged with, in the order the role lists them.
    pub fn session_tags(&self) -> &[TagField] {
        &self.session_tags
    }

    /// Whether the session gets a `SourceIdentity`.
    pub fn source_identity(&self) -> bool {
        self.source_identity
    }

    /// `ExternalId`, if the role's trust policy asks for one.
    pub fn external_id(&self) -> Option<&str> {
        self.external_id.as_deref()
    }

    /// Parses an `aws-sts` role's settings and checks its cap (≥ STS's shortest session) and
    /// scope (IAM actions).
    pub fn parse(spec: &RoleSpec<'_>) -> Result<Self, StsSettingsError> {
        use StsSettingsError as E;
        let settings = spec.settings;
        if let Some(unknown) = settings.keys().find(|k| !SETTINGS.contains(&k.as_str())) {
            return Err(E::UnknownSetting {
                name: unknown.clone(),
            });
        }
        let role_arn = match settings.get("role_arn") {
            Some(Value::String(arn)) if is_role_arn(arn) => arn.clone(),
            Some(other) => {
                return Err(E::BadRoleArn {
                    value: other.to_string(),
                });
            }
            None => return Err(E::MissingRoleArn),
        };
        if spec.max_ttl_seconds < MIN_DURATION_SECONDS {
            return Err(E::CapBelowMinimum {
                max_ttl_seconds: spec.max_ttl_seconds,
            });
        }
        if let Some((index, entry)) = spec
            .scope
            .iter()
            .enumerate()
            .find(|(_, s)| !is_iam_action(s))
        {
            return Err(E::NotAnIamAction {
                index,
                entry: entry.clone(),
            });
        }
        let session_policy = match policy_document(spec)? {
            None => None,
            Some((setting, doc)) => {
                let template = JsonTemplate::parse(&doc)
                    .map_err(|error| E::PolicyTemplate { setting, error })?;
                let chars = template.unfilled_chars();
                if chars > MAX_SESSION_POLICY_CHARS {
                    return Err(E::PolicyTooLong { setting, chars });
                }
                Some(template)
            }
        };
        let session_tags = match settings.get("session_tags") {
            None | Some(Value::Bool(true)) => TagField::DEFAULT.to_vec(),
            Some(Value::Bool(false)) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    TagField::ALL
                        .into_iter()
                        .find(|f| item.as_str() == Some(f.name()))
                        .ok_or_else(|| E::BadTagField {
                            entry: item.to_string(),
                        })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(E::BadSessionTags),
        };
        let source_identity = match settings.get("source_identity") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(E::BadSourceIdentity),
        };
        let external_id = match settings.get("external_id") {
            None => None,
            Some(Value::String(s))
                if (2..=1224).contains(&s.len())
                    && s.chars()
                        .all(|c| is_session_char(c) || c == ':' || c == '/') =>
            {
                Some(s.clone())
            }
            Some(_) => return Err(E::BadExternalId),
        };
        Ok(Self {
            role_arn,
            session_policy,
            session_tags,
            source_identity,
            external_id,
        })
    }
}

/// The session policy document a role asks for, placeholders unfilled, with the setting it
/// comes from.
fn policy_document(spec: &RoleSpec<'_>) -> Result<Option<(&'static str, Value)>, StsSettingsError> {
    use StsSettingsError as E;
    let settings = spec.settings;
    if let Some(p) = settings.get("session_policy") {
        if !spec.scope.is_empty() || settings.contains_key("resources") {
            return Err(E::PolicyAndScope);
        }
        let Value::Object(map) = p else {
            return Err(E::PolicyNotAnObject);
        };
        if !map.contains_key("Statement") {
            return Err(E::PolicyWithoutStatement);
        }
        return Ok(Some(("session_policy", p.clone())));
    }
    if spec.scope.is_empty() {
        if settings.contains_key("resources") {
            return Err(E::ResourcesWithoutScope);
        }
        return Ok(None);
    }
    let resources = match settings.get("resources") {
        None => json!("*"),
        Some(Value::Array(items))
            if !items.is_empty()
                && items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| !s.is_empty())) =>
        {
            Value::Array(items.clone())
        }
        Some(_) => return Err(E::BadResources),
    };
    Ok(Some((
        "resources",
        json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Action": spec.scope,
                "Resource": resources,
            }]
        }),
    )))
}

/// Whether a string is a valid IAM role ARN.
fn is_role_arn(s: &str) -> bool {
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts[..] else {
        return false;
    };
    arn == "arn"
        && partition.starts_with("aws")
        && partition
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '-')
        && service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
        && resource
            .strip_prefix("role/")
            .is_some_and(|name| !name.is_empty() && name.chars().all(is_iam_name_char))
        && s.len() <= 2048
}

fn is_iam_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-/".contains(c)
}

/// A character STS accepts in a session name or source identity.
pub fn is_session_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// An IAM action: `service:Action` (wildcards allowed in the action part) or `*`.
fn is_iam_action(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let Some((service, action)) = s.split_once(':') else {
        return false;
    };
    !service.is_empty()
        && service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !action.is_empty()
        && action
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '*' || c == '?')
}

fn tag_field_names() -> String {
    TagField::ALL
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why an `aws-sts` role's settings are unusable; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StsSettingsError {
    /// A setting the backend does not know.
    #[error(
        "unknown setting `{name}` for the aws-sts backend (valid settings: {})",
        SETTINGS.join(", ")
    )]
    UnknownSetting {
        /// The setting.
        name: String,
    },
    /// No `role_arn`.
    #[error("the aws-sts backend needs `settings.role_arn` (the IAM role to assume)")]
    MissingRoleArn,
    /// `role_arn` is not an IAM role ARN.
    #[error(
        "`settings.role_arn` {value} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
    )]
    BadRoleArn {
        /// What the setting holds, as JSON.
        value: String,
    },
    /// The role's cap is below STS's shortest session.
    #[error(
        "max_ttl_seconds {max_ttl_seconds} is below {MIN_DURATION_SECONDS}, the shortest session AWS STS can issue; raise it to at least {MIN_DURATION_SECONDS} (the broker will not issue credentials that outlive the cap)"
    )]
    CapBelowMinimum {
        /// The cap.
        max_ttl_seconds: u64,
    },
    /// A scope entry that is not an IAM action (0-based `index`).
    #[error(
        "scope entry {} `{entry}` is not an IAM action (`service:Action`, e.g. `s3:GetObject`)",
        index + 1
    )]
    NotAnIamAction {
        /// Which entry, from 0.
        index: usize,
        /// The entry.
        entry: String,
    },
    /// Both `session_policy` and `scope`/`resources`.
    #[error("use either `settings.session_policy` or `scope`/`settings.resources`, not both")]
    PolicyAndScope,
    /// `session_policy` is not a JSON object.
    #[error("`settings.session_policy` must be a JSON object (an IAM policy document)")]
    PolicyNotAnObject,
    /// `session_policy` has no `Statement`.
    #[error("`settings.session_policy` has no `Statement`")]
    PolicyWithoutStatement,
    /// `resources` without `scope`.
    #[error("`settings.resources` needs `scope` (the IAM actions to allow)")]
    ResourcesWithoutScope,
    /// `resources` is not a non-empty list of strings.
    #[error("`settings.resources` must be a non-empty list of ARNs")]
    BadResources,
    /// A bad placeholder in the session policy (`setting` is where the policy comes from).
    #[error("session policy: {error}")]
    PolicyTemplate {
        /// `session_policy` or `resources`.
        setting: &'static str,
        /// The placeholder problem.
        error: TemplateError,
    },
    /// The session policy is longer than STS accepts.
    #[error(
        "the session policy is {chars} characters; STS accepts at most {MAX_SESSION_POLICY_CHARS}"
    )]
    PolicyTooLong {
        /// `session_policy` or `resources`.
        setting: &'static str,
        /// Its length with the placeholders unfilled.
        chars: usize,
    },
    /// A `session_tags` entry that names no taggable field.
    #[error(
        "`settings.session_tags` entry `{entry}` is not one of {}",
        tag_field_names()
    )]
    BadTagField {
        /// The entry, as JSON.
        entry: String,
    },
    /// `session_tags` is neither a boolean nor a list.
    #[error("`settings.session_tags` must be true, false, or a list of identity fields")]
    BadSessionTags,
    /// `source_identity` is not a boolean.
    #[error("`settings.source_identity` must be true or false")]
    BadSourceIdentity,
    /// `external_id` is not an acceptable ExternalId.
    #[error("`settings.external_id` must be 2-1224 characters from A-Z a-z 0-9 _+=,.@:/-")]
    BadExternalId,
}

impl StsSettingsError {
    /// The part of the role the error is about.
    pub fn field(&self) -> RoleField<'_> {
        match self {
            Self::UnknownSetting { name } => RoleField::Setting(name),
            Self::MissingRoleArn | Self::BadRoleArn { .. } => RoleField::Setting("role_arn"),
            Self::CapBelowMinimum { .. } => RoleField::MaxTtl,
            Self::NotAnIamAction { index, .. } => RoleField::ScopeEntry(*index),
            Self::PolicyAndScope | Self::PolicyNotAnObject | Self::PolicyWithoutStatement => {
                RoleField::Setting("session_policy")
            }
            Self::ResourcesWithoutScope | Self::BadResources => RoleField::Setting("resources"),
            Self::PolicyTemplate { setting, .. } | Self::PolicyTooLong { setting, .. } => {
                RoleField::Setting(setting)
            }
            Self::BadTagField { .. } | Self::BadSessionTags => RoleField::Setting("session_tags"),
            Self::BadSourceIdentity => RoleField::Setting("source_identity"),
            Self::BadExternalId => RoleField::Setting("external_id"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::settings::template::Values;
    use crate::policy::settings::tests::raw;

    const ARN: &str = "arn:aws:iam::123456789012:role/app";

    fn parse(
        settings: Value,
        scope: &[&str],
        max: u64,
    ) -> Result<StsRoleSettings, StsSettingsError> {
        StsRoleSettings::parse(&raw("s3-read", KIND, settings, scope, max).spec())
    }

    #[test]
    fn settings_parse_with_defaults() {
        let s = parse(json!({"role_arn": ARN}), &[], 3600).expect("minimal");
        assert_eq!(s.role_arn(), ARN);
        assert!(s.session_policy().is_none(), "no scope, no session policy");
        assert_eq!(s.session_tags(), TagField::DEFAULT);
        assert!(s.source_identity());
        assert_eq!(s.external_id(), None);

        let s = parse(
            json!({"role_arn": ARN, "session_tags": ["pod_uid", "namespace"],
                "source_identity": false, "external_id": "ext:1/a"}),
            &["s3:GetObject"],
            900,
        )
        .expect("full");
        assert_eq!(s.session_tags(), [TagField::PodUid, TagField::Namespace]);
        assert!(!s.source_identity());
        assert_eq!(s.external_id(), Some("ext:1/a"));
        let values = Values {
            namespace: Some("shop"),
            service_account: Some("api"),
            subject: "s",
        };
        let policy: Value = serde_json::from_str(
            &s.session_policy()
                .expect("from scope")
                .render(&values)
                .expect("render"),
        )
        .expect("json");
        assert_eq!(
            policy,
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Action": ["s3:GetObject"], "Resource": "*"}]})
        );
        assert!(
            parse(json!({"role_arn": ARN, "session_tags": false}), &[], 900)
                .expect("no tags")
                .session_tags()
                .is_empty()
        );
    }

    #[test]
    fn each_bad_field_has_its_error() {
        use StsSettingsError as E;
        let big = "x".repeat(2100);
        let cases = [
            (
                json!({}),
                3600,
                E::MissingRoleArn,
                "needs `settings.role_arn`",
            ),
            (
                json!({"role_arn": "arn:aws:s3:::x"}),
                3600,
                E::BadRoleArn {
                    value: "\"arn:aws:s3:::x\"".into(),
                },
                "not an IAM role ARN",
            ),
            (
                json!({"role_arn": ARN, "policy": {}}),
                3600,
                E::UnknownSetting {
                    name: "policy".into(),
                },
                "unknown setting `policy`",
            ),
            (
                json!({"role_arn": ARN}),
                600,
                E::CapBelowMinimum {
                    max_ttl_seconds: 600,
                },
                "below 900",
            ),
            (
                json!({"role_arn": ARN, "session_policy": "x"}),
                3600,
                E::PolicyNotAnObject,
                "JSON object",
            ),
            (
                json!({"role_arn": ARN, "session_policy": {"Version": "2012-10-17"}}),
                3600,
                E::PolicyWithoutStatement,
                "no `Statement`",
            ),
            (
                json!({"role_arn": ARN, "session_policy": {"Statement": [{"Resource": "{{pod}}"}]}}),
                3600,
                E::PolicyTemplate {
                    setting: "session_policy",
                    error: TemplateError::UnknownPlaceholder { name: "pod".into() },
                },
                "unknown placeholder",
            ),
            (
                json!({"role_arn": ARN, "session_policy": {"Statement": [{"Sid": big}]}}),
                3600,
                E::PolicyTooLong {
                    setting: "session_policy",
                    chars: 2126,
                },
                "2048",
            ),
            (
                json!({"role_arn": ARN, "session_tags": ["namespace", "node"]}),
                3600,
                E::BadTagField {
                    entry: "\"node\"".into(),
                },
                "session_tags",
            ),
            (
                json!({"role_arn": ARN, "session_tags": "yes"}),
                3600,
                E::BadSessionTags,
                "session_tags",
            ),
            (
                json!({"role_arn": ARN, "resources": ["arn:aws:s3:::b/*"]}),
                3600,
                E::ResourcesWithoutScope,
                "needs `scope`",
            ),
            (
                json!({"role_arn": ARN, "source_identity": "yes"}),
                3600,
                E::BadSourceIdentity,
                "source_identity",
            ),
            (
                json!({"role_arn": ARN, "external_id": "x"}),
                3600,
                E::BadExternalId,
                "external_id",
            ),
        ];
        for (settings, max, want, text) in cases {
            let err = parse(settings.clone(), &[], max).expect_err(text);
            assert_eq!(err, want, "{settings}");
            assert!(err.to_string().contains(text), "{settings}: {err}");
        }
        let err = parse(
            json!({"role_arn": ARN}),
            &["s3:GetObject", "s3 GetObject"],
            3600,
        )
        .expect_err("bad action");
        assert_eq!(err.field(), RoleField::ScopeEntry(1));
        assert_eq!(
            err.to_string(),
            "scope entry 2 `s3 GetObject` is not an IAM action (`service:Action`, e.g. `s3:GetObject`)"
        );
        let err = parse(
            json!({"role_arn": ARN, "session_policy": {"Statement": []}}),
            &["s3:GetObject"],
            3600,
        )
        .expect_err("both");
        assert_eq!(err, E::PolicyAndScope);
        for bad in [json!([]), json!("arn"), json!([""])] {
            let err = parse(json!({"role_arn": ARN, "resources": bad}), &["s3:*"], 3600)
                .expect_err("resources");
            assert_eq!(err, E::BadResources);
        }
        let err = parse(
            json!({"role_arn": ARN, "resources": ["arn:aws:s3:::{{pod}}"]}),
            &["s3:*"],
            3600,
        )
        .expect_err("bad placeholder in resources");
        assert_eq!(err.field(), RoleField::Setting("resources"));
    }

    #[test]
    fn errors_name_their_field() {
        use StsSettingsError as E;
        assert_eq!(E::MissingRoleArn.field(), RoleField::Setting("role_arn"));
        assert_eq!(
            E::CapBelowMinimum { max_ttl_seconds: 1 }.field(),
            RoleField::MaxTtl
        );
        assert_eq!(
            E::BadSessionTags.field(),
            RoleField::Setting("session_tags")
        );
        assert_eq!(E::BadExternalId.field(), RoleField::Setting("external_id"));
    }
}
