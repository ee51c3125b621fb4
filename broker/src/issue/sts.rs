//! The `aws-sts` backend: `AssumeRole` with a scoped-down session.
//!
//! For each issuance the broker builds one AssumeRole request from the role and the
//! identity ([`plan`], a pure function):
//! - `RoleArn` from `settings.role_arn`, `RoleSessionName` = `<role_session_prefix>-<role>`;
//! - an inline session `Policy` that scopes the session down: `settings.session_policy` (a
//!   JSON object whose strings may hold `{{namespace}}`, `{{service_account}}`,
//!   `{{subject}}`), or, from `scope` (IAM actions) and `settings.resources`, one Allow
//!   statement; the session gets the intersection of the IAM role's policies and this one;
//! - session `Tags` from the Kubernetes identity (`kubernetes-namespace`,
//!   `kubernetes-service-account`, and on request `kubernetes-pod-name`/`-uid`; only values
//!   that are valid tag values), for attribute-based access control and deny-by-tag;
//! - `SourceIdentity` (`<namespace>.<service account>`, or the subject) for CloudTrail;
//! - `DurationSeconds` = clamp(requested TTL, 900, min(role cap, 43200)). STS cannot issue
//!   sessions shorter than 900 s, so roles whose cap is below 900 s are refused at policy
//!   load rather than given longer credentials.
//!
//! Identical plans share one credential through the [`Upstream`] cache (reused for the first
//! `cache_refresh_fraction` of its life; concurrent identical requests coalesce into one
//! call). The broker's own AWS credentials come from the standard chain. STS errors are
//! summarised as code and a short message; request bodies and credentials never appear.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::Tag;
use lanyard::Secret;
use lanyard::clock::Clock;
use serde_json::{Value, json};
use tracing::Instrument;

use super::cache::{CachedCredential, Upstream};
use super::template::{self, Values};
use super::{Backend, BackendError, IssueRequest, Issued};
use crate::config::AwsStsConfig;
use crate::metrics::Metrics;
use crate::policy::Role;

/// The backend kind.
pub const KIND: &str = "aws-sts";

/// Settings an `aws-sts` role may carry.
pub const ROLE_SETTINGS: &[&str] = &[
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

/// Identity fields that can become session tags, and their tag keys.
const TAG_FIELDS: &[(&str, &str)] = &[
    ("namespace", "kubernetes-namespace"),
    ("service_account", "kubernetes-service-account"),
    ("pod_name", "kubernetes-pod-name"),
    ("pod_uid", "kubernetes-pod-uid"),
];
const DEFAULT_TAGS: &[&str] = &["namespace", "service_account"];

/// One AssumeRole request, fully decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRolePlan {
    /// `RoleArn`.
    pub role_arn: String,
    /// `RoleSessionName`.
    pub session_name: String,
    /// `Policy` (compact JSON), if the role scopes the session down.
    pub policy: Option<String>,
    /// `Tags`, sorted by key.
    pub tags: Vec<(String, String)>,
    /// `SourceIdentity`.
    pub source_identity: Option<String>,
    /// `ExternalId`.
    pub external_id: Option<String>,
    /// `DurationSeconds`.
    pub duration_seconds: u64,
}

impl AssumeRolePlan {
    /// The cache key: a digest of everything sent upstream.
    pub fn cache_key(&self) -> String {
        let canonical = json!([
            self.role_arn,
            self.session_name,
            self.policy,
            self.tags,
            self.source_identity,
            self.external_id,
            self.duration_seconds,
        ]);
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.to_string().as_bytes(),
        ))
    }
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

fn is_session_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

/// A valid session-tag value (up to 256 letters, digits, spaces and `_.:/=+-@`).
pub fn is_tag_value(s: &str) -> bool {
    s.chars().count() <= 256
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c))
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

/// Keeps the characters STS allows and cuts to `max` characters.
fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if is_session_char(c) { c } else { '-' })
        .take(max)
        .collect()
}

/// Which identity fields a role tags its sessions with.
fn tag_fields(role: &Role) -> Result<Vec<&'static str>, String> {
    let name = &role.name;
    match role.settings.get("session_tags") {
        None | Some(Value::Bool(true)) => Ok(DEFAULT_TAGS.to_vec()),
        Some(Value::Bool(false)) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                let f = i.as_str().unwrap_or_default();
                TAG_FIELDS
                    .iter()
                    .find(|(field, _)| *field == f)
                    .map(|(field, _)| *field)
                    .ok_or_else(|| {
                        format!(
                            "role `{name}`: `settings.session_tags` entry `{i}` is not one of {}",
                            TAG_FIELDS
                                .iter()
                                .map(|(f, _)| *f)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
            })
            .collect(),
        Some(_) => Err(format!(
            "role `{name}`: `settings.session_tags` must be true, false, or a list of identity fields"
        )),
    }
}

/// The session policy document a role asks for, placeholders unfilled.
fn policy_template(role: &Role) -> Result<Option<Value>, String> {
    let name = &role.name;
    if let Some(p) = role.settings.get("session_policy") {
        if !role.scope.is_empty() || role.settings.contains_key("resources") {
            return Err(format!(
                "role `{name}`: use either `settings.session_policy` or `scope`/`settings.resources`, not both"
            ));
        }
        let Value::Object(map) = p else {
            return Err(format!(
                "role `{name}`: `settings.session_policy` must be a JSON object (an IAM policy document)"
            ));
        };
        if !map.contains_key("Statement") {
            return Err(format!(
                "role `{name}`: `settings.session_policy` has no `Statement`"
            ));
        }
        return Ok(Some(p.clone()));
    }
    if role.scope.is_empty() {
        if role.settings.contains_key("resources") {
            return Err(format!(
                "role `{name}`: `settings.resources` needs `scope` (the IAM actions to allow)"
            ));
        }
        return Ok(None);
    }
    let resources = match role.settings.get("resources") {
        None => json!("*"),
        Some(Value::Array(items))
            if !items.is_empty()
                && items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| !s.is_empty())) =>
        {
            Value::Array(items.clone())
        }
        Some(_) => {
            return Err(format!(
                "role `{name}`: `settings.resources` must be a non-empty list of ARNs"
            ));
        }
    };
    Ok(Some(json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": role.scope,
            "Resource": resources,
        }]
    })))
}

/// Checks an `aws-sts` role at policy load. The error says what to fix.
pub fn validate_role(role: &Role) -> Result<(), String> {
    let name = &role.name;
    if let Some(unknown) = role
        .settings
        .keys()
        .find(|k| !ROLE_SETTINGS.contains(&k.as_str()))
    {
        return Err(format!(
            "role `{name}`: unknown setting `{unknown}` for the aws-sts backend (valid settings: {})",
            ROLE_SETTINGS.join(", ")
        ));
    }
    match role.settings.get("role_arn") {
        Some(Value::String(arn)) if is_role_arn(arn) => {}
        Some(other) => {
            return Err(format!(
                "role `{name}`: `settings.role_arn` {other} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)"
            ));
        }
        None => {
            return Err(format!(
                "role `{name}`: the aws-sts backend needs `settings.role_arn` (the IAM role to assume)"
            ));
        }
    }
    if role.max_ttl_seconds < MIN_DURATION_SECONDS {
        return Err(format!(
            "role `{name}`: max_ttl_seconds {} is below {MIN_DURATION_SECONDS}, the shortest session AWS STS can issue; raise it to at least {MIN_DURATION_SECONDS} (the broker will not issue credentials that outlive the cap)",
            role.max_ttl_seconds
        ));
    }
    for (i, s) in role.scope.iter().enumerate() {
        if !is_iam_action(s) {
            return Err(format!(
                "role `{name}`: scope entry {} `{s}` is not an IAM action (`service:Action`, e.g. `s3:GetObject`)",
                i + 1
            ));
        }
    }
    if let Some(doc) = policy_template(role)? {
        template::check_json(&doc).map_err(|e| format!("role `{name}`: session policy: {e}"))?;
        let len = doc.to_string().chars().count();
        if len > MAX_SESSION_POLICY_CHARS {
            return Err(format!(
                "role `{name}`: the session policy is {len} characters; STS accepts at most {MAX_SESSION_POLICY_CHARS}"
            ));
        }
    }
    tag_fields(role)?;
    match role.settings.get("source_identity") {
        None | Some(Value::Bool(_)) => {}
        Some(_) => {
            return Err(format!(
                "role `{name}`: `settings.source_identity` must be true or false"
            ));
        }
    }
    match role.settings.get("external_id") {
        None => {}
        Some(Value::String(s))
            if (2..=1224).contains(&s.len())
                && s.chars()
                    .all(|c| is_session_char(c) || c == ':' || c == '/') => {}
        Some(_) => {
            return Err(format!(
                "role `{name}`: `settings.external_id` must be 2-1224 characters from A-Z a-z 0-9 _+=,.@:/-"
            ));
        }
    }
    Ok(())
}

/// Decides the AssumeRole request for an identity and role (pure; no I/O).
pub fn plan(req: &IssueRequest<'_>, session_prefix: &str) -> Result<AssumeRolePlan, BackendError> {
    let role = req.role;
    let config = |m: String| BackendError::Config(m);
    let role_arn = role
        .settings
        .get("role_arn")
        .and_then(Value::as_str)
        .ok_or_else(|| config(format!("role `{}`: no settings.role_arn", role.name)))?
        .to_owned();
    let values = Values::of(req.identity);
    let policy = match policy_template(role).map_err(config)? {
        None => None,
        Some(doc) => {
            let rendered = template::render_json(&doc, &values).map_err(|e| {
                BackendError::Refused(format!(
                    "role `{}` cannot be issued to this identity: {e}",
                    role.name
                ))
            })?;
            let text = rendered.to_string();
            if text.chars().count() > MAX_SESSION_POLICY_CHARS {
                return Err(BackendError::Refused(format!(
                    "role `{}`: the session policy for this identity exceeds STS's {MAX_SESSION_POLICY_CHARS} characters",
                    role.name
                )));
            }
            Some(text)
        }
    };
    let mut tags = Vec::new();
    if let Some(k) = &req.identity.kubernetes {
        for field in tag_fields(role).map_err(config)? {
            let value = match field {
                "namespace" => Some(k.namespace.as_str()),
                "service_account" => Some(k.service_account.as_str()),
                "pod_name" => k.pod_name.as_deref(),
                "pod_uid" => k.pod_uid.as_deref(),
                _ => None,
            };
            let key = TAG_FIELDS
                .iter()
                .find(|(f, _)| *f == field)
                .map(|(_, key)| *key);
            if let (Some(key), Some(value)) = (key, value)
                && !value.is_empty()
                && is_tag_value(value)
            {
                tags.push((key.to_owned(), value.to_owned()));
            }
        }
    }
    tags.sort();
    let source_identity = match role.settings.get("source_identity") {
        Some(Value::Bool(false)) => None,
        _ => {
            let raw = match &req.identity.kubernetes {
                Some(k) => format!("{}.{}", k.namespace, k.service_account),
                None => req.identity.subject.clone(),
            };
            let s = sanitize(&raw, 64);
            (s.len() >= 2).then_some(s)
        }
    };
    let cap = role
        .max_ttl_seconds
        .clamp(MIN_DURATION_SECONDS, MAX_DURATION_SECONDS);
    let duration_seconds = req.ttl.as_secs().clamp(MIN_DURATION_SECONDS, cap);
    Ok(AssumeRolePlan {
        role_arn,
        session_name: sanitize(&format!("{session_prefix}-{}", role.name), 64),
        policy,
        tags,
        source_identity,
        external_id: role
            .settings
            .get("external_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        duration_seconds,
    })
}

/// Summarises an STS failure: the error code and a short message, never the request.
fn summarize<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: &SdkError<E>,
) -> BackendError {
    let (message, retryable) = match e {
        SdkError::ServiceError(se) => {
            let err = se.err();
            let code = err.code().unwrap_or("Unknown");
            let status = se.raw().status().as_u16();
            let msg: String = err
                .message()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            let retryable = status >= 500
                || matches!(
                    code,
                    "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "ServiceUnavailable" | "InternalFailure"
                );
            (format!("{code} (HTTP {status}): {msg}"), retryable)
        }
        SdkError::TimeoutError(_) => ("STS did not answer in time".to_owned(), true),
        SdkError::DispatchFailure(d) => {
            let why = if d.is_timeout() {
                "timed out"
            } else if d.is_io() {
                "connection failed"
            } else {
                "request could not be sent (are the broker's own AWS credentials available?)"
            };
            (format!("STS unreachable: {why}"), true)
        }
        SdkError::ResponseError(_) => ("STS sent an unreadable response".to_owned(), true),
        SdkError::ConstructionFailure(_) => (
            "the AssumeRole request could not be built (check the broker's AWS credentials and region)"
                .to_owned(),
            false,
        ),
        _ => ("STS call failed".to_owned(), true),
    };
    BackendError::Upstream {
        backend: KIND,
        message,
        retryable,
    }
}

/// The `aws-sts` backend.
pub struct StsBackend {
    client: aws_sdk_sts::Client,
    session_prefix: String,
    upstream: Upstream,
}

impl std::fmt::Debug for StsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsBackend")
            .field("session_prefix", &self.session_prefix)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl StsBackend {
    /// Builds the backend with the broker's own credentials from the standard AWS chain
    /// (environment, web identity, profile, container, instance metadata), the configured
    /// region and, if set, endpoint.
    pub async fn from_config(cfg: &AwsStsConfig, clock: Arc<dyn Clock>, metrics: Metrics) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(cfg.region.clone()))
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(cfg.request_timeout_seconds))
                    .build(),
            );
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        Self::with_sdk_config(&sdk, cfg, clock, metrics)
    }

    /// Builds the backend from an AWS SDK configuration (credentials, region, endpoint).
    pub fn with_sdk_config(
        sdk: &aws_config::SdkConfig,
        cfg: &AwsStsConfig,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Self {
        Self {
            client: aws_sdk_sts::Client::new(sdk),
            session_prefix: cfg.role_session_prefix.clone(),
            upstream: Upstream::new(KIND, cfg.limits(), clock, metrics),
        }
    }

    /// The upstream (limits and cache).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    async fn assume_role(
        &self,
        plan: &AssumeRolePlan,
        now: SystemTime,
    ) -> Result<CachedCredential, BackendError> {
        let tags = plan
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BackendError::Internal(format!("session tag: {e}")))?;
        let duration = i32::try_from(plan.duration_seconds).unwrap_or(i32::MAX);
        let out = self
            .client
            .assume_role()
            .role_arn(&plan.role_arn)
            .role_session_name(&plan.session_name)
            .set_policy(plan.policy.clone())
            .set_tags((!tags.is_empty()).then_some(tags))
            .set_source_identity(plan.source_identity.clone())
            .set_external_id(plan.external_id.clone())
            .duration_seconds(duration)
            .send()
            .await
            .map_err(|e| summarize(&e))?;
        let creds = out.credentials().ok_or_else(|| BackendError::Upstream {
            backend: KIND,
            message: "AssumeRole answered without credentials".into(),
            retryable: true,
        })?;
        let upstream_expiry = u64::try_from(creds.expiration().secs())
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        // Never later than what was asked for, whatever STS says.
        let expires_at = upstream_expiry.min(now + Duration::from_secs(plan.duration_seconds));
        if expires_at <= now {
            return Err(BackendError::Upstream {
                backend: KIND,
                message: "AssumeRole returned credentials that are already expired (is the broker's clock right?)".into(),
                retryable: true,
            });
        }
        Ok(CachedCredential {
            data: BTreeMap::from([
                (
                    "access_key_id".to_owned(),
                    Secret::new(creds.access_key_id()),
                ),
                (
                    "secret_access_key".to_owned(),
                    Secret::new(creds.secret_access_key()),
                ),
                (
                    "session_token".to_owned(),
                    Secret::new(creds.session_token()),
                ),
            ]),
            issued_at: now,
            expires_at,
            upstream_lease: out
                .assumed_role_user()
                .map(|u| u.assumed_role_id().to_owned()),
        })
    }
}

#[async_trait::async_trait]
impl Backend for StsBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn validate_role(&self, role: &Role) -> Result<(), String> {
        validate_role(role)
    }

    async fn issue(&self, req: &IssueRequest<'_>) -> Result<Issued, BackendError> {
        let plan = plan(req, &self.session_prefix)?;
        let key = plan.cache_key();
        let now = req.now;
        self.upstream
            .cached(&key, || self.assume_role(&plan, now))
            .instrument(tracing::debug_span!(
                "aws_sts_assume_role",
                role = %req.role.name,
                identity = %req.identity.subject
            ))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::authn::{Identity, KubernetesIdentity};
    use crate::policy::Location;

    fn role(settings: Value, scope: &[&str], max: u64) -> Role {
        Role {
            name: "s3-read".into(),
            backend: KIND.into(),
            scope: scope.iter().map(|s| (*s).to_owned()).collect(),
            max_ttl_seconds: max,
            default_ttl_seconds: max.min(900),
            settings: serde_json::from_value(settings).expect("settings"),
            location: Location {
                file: PathBuf::from("policies/aws.yaml"),
                line: 1,
            },
        }
    }

    const ARN: &str = "arn:aws:iam::123456789012:role/app";

    fn k8s(pod: Option<&str>) -> Identity {
        Identity {
            issuer: "https://k8s".into(),
            subject: "system:serviceaccount:shop:api".into(),
            kubernetes: Some(KubernetesIdentity {
                namespace: "shop".into(),
                service_account: "api".into(),
                pod_name: pod.map(str::to_owned),
                pod_uid: Some("5f0c-11".into()),
            }),
            bootstrap: None,
        }
    }

    fn plan_for(role: &Role, id: &Identity, ttl: u64) -> Result<AssumeRolePlan, BackendError> {
        plan(
            &IssueRequest {
                identity: id,
                role,
                ttl: Duration::from_secs(ttl),
                now: SystemTime::UNIX_EPOCH,
                request_id: "req_1",
                lease_id: "ls_1",
            },
            "lanyard",
        )
    }

    #[test]
    fn validation_names_what_to_fix() {
        validate_role(&role(json!({"role_arn": ARN}), &[], 3600)).expect("minimal");
        let cases = [
            (json!({}), 3600, "needs `settings.role_arn`"),
            (
                json!({"role_arn": "arn:aws:s3:::x"}),
                3600,
                "not an IAM role ARN",
            ),
            (
                json!({"role_arn": ARN, "policy": {}}),
                3600,
                "unknown setting `policy`",
            ),
            (json!({"role_arn": ARN}), 600, "below 900"),
            (
                json!({"role_arn": ARN, "session_policy": "x"}),
                3600,
                "JSON object",
            ),
            (
                json!({"role_arn": ARN, "session_policy": {"Version": "2012-10-17"}}),
                3600,
                "no `Statement`",
            ),
            (
                json!({"role_arn": ARN, "session_policy": {"Statement": [{"Resource": "{{pod}}"}]}}),
                3600,
                "unknown placeholder",
            ),
            (
                json!({"role_arn": ARN, "session_tags": ["namespace", "node"]}),
                3600,
                "session_tags",
            ),
            (
                json!({"role_arn": ARN, "session_tags": "yes"}),
                3600,
                "session_tags",
            ),
            (
                json!({"role_arn": ARN, "resources": ["arn:aws:s3:::b/*"]}),
                3600,
                "needs `scope`",
            ),
            (
                json!({"role_arn": ARN, "external_id": "x"}),
                3600,
                "external_id",
            ),
        ];
        for (settings, max, want) in cases {
            let err = validate_role(&role(settings.clone(), &[], max)).expect_err(want);
            assert!(err.contains(want), "{settings}: {err}");
            assert!(err.contains("`s3-read`"), "{err}");
        }
        let err = validate_role(&role(json!({"role_arn": ARN}), &["s3 GetObject"], 3600))
            .expect_err("bad action");
        assert!(err.contains("not an IAM action"), "{err}");
        let big = "x".repeat(2100);
        let err = validate_role(&role(
            json!({"role_arn": ARN, "session_policy": {"Statement": [{"Sid": big}]}}),
            &[],
            3600,
        ))
        .expect_err("too long");
        assert!(err.contains("2048"), "{err}");
    }

    #[test]
    fn the_plan_scopes_tags_and_clamps() {
        let r = role(
            json!({
                "role_arn": ARN,
                "session_policy": {"Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Action": "s3:GetObject",
                    "Resource": "arn:aws:s3:::data/{{namespace}}/{{service_account}}/*"}]},
                "session_tags": ["namespace", "service_account", "pod_name"],
                "external_id": "ext-1",
            }),
            &[],
            3600,
        );
        validate_role(&r).expect("valid");
        let p = plan_for(&r, &k8s(Some("api-7d9f")), 1200).expect("plan");
        assert_eq!(p.role_arn, ARN);
        assert_eq!(p.session_name, "lanyard-s3-read");
        let policy: Value =
            serde_json::from_str(p.policy.as_deref().expect("policy")).expect("json");
        assert_eq!(
            policy["Statement"][0]["Resource"],
            "arn:aws:s3:::data/shop/api/*"
        );
        assert_eq!(
            p.tags,
            [
                ("kubernetes-namespace".to_owned(), "shop".to_owned()),
                ("kubernetes-pod-name".to_owned(), "api-7d9f".to_owned()),
                ("kubernetes-service-account".to_owned(), "api".to_owned()),
            ]
        );
        assert_eq!(p.source_identity.as_deref(), Some("shop.api"));
        assert_eq!(p.external_id.as_deref(), Some("ext-1"));
        assert_eq!(p.duration_seconds, 1200);
        // Below STS's minimum → 900; above the cap → the cap.
        assert_eq!(
            plan_for(&r, &k8s(None), 60).expect("plan").duration_seconds,
            900
        );
        assert_eq!(
            plan_for(&r, &k8s(None), 99_999)
                .expect("plan")
                .duration_seconds,
            3600
        );
        let long = role(json!({"role_arn": ARN}), &[], 100_000);
        assert_eq!(
            plan_for(&long, &k8s(None), 100_000)
                .expect("plan")
                .duration_seconds,
            MAX_DURATION_SECONDS
        );
        // Invalid tag values are left out, not sent.
        let odd = plan_for(&r, &k8s(Some("bad\u{7}pod")), 900).expect("plan");
        assert!(odd.tags.iter().all(|(k, _)| k != "kubernetes-pod-name"));
        // Different pods only differ by key when the pod is a tag.
        assert_ne!(
            plan_for(&r, &k8s(Some("a")), 900).expect("a").cache_key(),
            plan_for(&r, &k8s(Some("b")), 900).expect("b").cache_key()
        );
        let shared = role(json!({"role_arn": ARN}), &["s3:GetObject"], 3600);
        assert_eq!(
            plan_for(&shared, &k8s(Some("a")), 900)
                .expect("a")
                .cache_key(),
            plan_for(&shared, &k8s(Some("b")), 900)
                .expect("b")
                .cache_key()
        );
    }

    #[test]
    fn scope_becomes_one_allow_statement() {
        let r = role(
            json!({"role_arn": ARN, "resources": ["arn:aws:s3:::b/{{namespace}}/*"], "session_tags": false, "source_identity": false}),
            &["s3:GetObject", "s3:List*"],
            3600,
        );
        validate_role(&r).expect("valid");
        let p = plan_for(&r, &k8s(None), 900).expect("plan");
        let policy: Value =
            serde_json::from_str(p.policy.as_deref().expect("policy")).expect("json");
        assert_eq!(
            policy,
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Action": ["s3:GetObject", "s3:List*"], "Resource": ["arn:aws:s3:::b/shop/*"]}]})
        );
        assert!(p.tags.is_empty());
        assert!(p.source_identity.is_none());
        let none =
            plan_for(&role(json!({"role_arn": ARN}), &[], 3600), &k8s(None), 900).expect("plan");
        assert!(none.policy.is_none(), "no scope, no session policy");
    }

    #[test]
    fn identities_that_cannot_fill_the_template_are_refused() {
        let r = role(
            json!({"role_arn": ARN, "session_policy": {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/{{namespace}}/*"}]}}),
            &[],
            3600,
        );
        let bootstrap = Identity {
            issuer: "lanyard:bootstrap".into(),
            subject: "bootstrap:bt_1".into(),
            kubernetes: None,
            bootstrap: None,
        };
        let err = plan_for(&r, &bootstrap, 900).expect_err("no namespace");
        assert!(
            matches!(err, BackendError::Refused(ref m) if m.contains("namespace")),
            "{err}"
        );
        let mut wild = k8s(None);
        if let Some(k) = wild.kubernetes.as_mut() {
            k.namespace = "*".into();
        }
        assert!(matches!(
            plan_for(&r, &wild, 900),
            Err(BackendError::Refused(_))
        ));
        // A non-Kubernetes subject becomes a sanitized SourceIdentity.
        let plain = role(json!({"role_arn": ARN}), &[], 3600);
        let p = plan_for(&plain, &bootstrap, 900).expect("plan");
        assert_eq!(p.source_identity.as_deref(), Some("bootstrap-bt_1"));
        assert!(p.tags.is_empty());
    }
}
