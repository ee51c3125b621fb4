//! The `aws-sts` backend: `AssumeRole` with a scoped-down session.
//!
//! For each issuance the broker builds one AssumeRole request from the role (its settings
//! parsed at policy load into
//! [`StsRoleSettings`](crate::policy::settings::sts::StsRoleSettings), the session policy into
//! a template filled by concatenation) and the identity ([`plan`], a pure function):
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
use tracing::Instrument;

use super::cache::{CacheKey, CachedCredential, Upstream};
use super::{Backend, BackendError, IssueRequest, Issued};
use crate::config::AwsStsConfig;
use crate::metrics::Metrics;
pub use crate::policy::settings::sts::{
    KIND, MAX_DURATION_SECONDS, MAX_SESSION_POLICY_CHARS, MIN_DURATION_SECONDS,
};
use crate::policy::settings::sts::{TagField, is_session_char};
use crate::policy::settings::template::Values;
use crate::policy::{Role, RoleSettings};

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
    /// The cache key: the role ARN ([`role_cache_prefix`], so the sessions of one IAM role
    /// can be dropped together), then a digest of everything sent upstream.
    pub fn cache_key(&self) -> String {
        let key = CacheKey::default()
            .str(&self.role_arn)
            .str(&self.session_name)
            .opt(self.policy.as_deref())
            .u64(self.tags.len() as u64);
        let digest = self
            .tags
            .iter()
            .fold(key, |key, (k, v)| key.str(k).str(v))
            .opt(self.source_identity.as_deref())
            .opt(self.external_id.as_deref())
            .u64(self.duration_seconds)
            .finish();
        format!("{}{digest}", role_cache_prefix(&self.role_arn))
    }
}

/// The start of the cache keys of every session of the IAM role `role_arn`.
pub fn role_cache_prefix(role_arn: &str) -> String {
    format!("{role_arn}#")
}

/// The cut-off of an STS revocation made at `now`: the next whole second (IAM compares
/// `aws:TokenIssueTime` at one-second precision), so every session issued before `now` was
/// issued before it.
pub fn revocation_cutoff(now: SystemTime) -> SystemTime {
    let secs = lanyard::clock::unix_seconds(now);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs + 1)
}

/// The IAM policy that denies every action to the sessions of a role issued before `cutoff`
/// (what AWS's "revoke active sessions" attaches): STS cannot revoke one session, so this is
/// how the sessions already handed out are cut off. Attached to the role as an inline policy;
/// sessions issued at or after `cutoff` are unaffected.
pub fn deny_sessions_issued_before(cutoff: SystemTime) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "LanyardRevokeOlderSessions",
            "Effect": "Deny",
            "Action": ["*"],
            "Resource": ["*"],
            "Condition": {
                "DateLessThan": {
                    "aws:TokenIssueTime": lanyard::clock::rfc3339(cutoff),
                },
            },
        }],
    })
}

/// A valid session-tag value (up to 256 letters, digits, spaces and `_.:/=+-@`).
pub fn is_tag_value(s: &str) -> bool {
    s.chars().count() <= 256
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || "_.:/=+-@".contains(c))
}

/// Keeps the characters STS allows and cuts to `max` characters.
fn sanitize(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if is_session_char(c) { c } else { '-' })
        .take(max)
        .collect()
}

/// Decides the AssumeRole request for an identity and role (pure; no I/O).
pub fn plan(req: &IssueRequest<'_>, session_prefix: &str) -> Result<AssumeRolePlan, BackendError> {
    let role = req.role;
    let RoleSettings::AwsSts(settings) = &role.settings else {
        return Err(super::settings_mismatch(KIND, role));
    };
    let policy = match settings.session_policy() {
        None => None,
        Some(template) => {
            let text = template.render(&Values::of(req.identity)).map_err(|e| {
                BackendError::Refused(format!(
                    "role `{}` cannot be issued to this identity: {e}",
                    role.name
                ))
            })?;
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
        for field in settings.session_tags() {
            let value = match field {
                TagField::Namespace => Some(k.namespace.as_str()),
                TagField::ServiceAccount => Some(k.service_account.as_str()),
                TagField::PodName => k.pod_name.as_deref(),
                TagField::PodUid => k.pod_uid.as_deref(),
            };
            if let Some(value) = value
                && !value.is_empty()
                && is_tag_value(value)
            {
                tags.push((field.tag_key().to_owned(), value.to_owned()));
            }
        }
    }
    tags.sort();
    let source_identity = if settings.source_identity() {
        let raw = match &req.identity.kubernetes {
            Some(k) => format!("{}.{}", k.namespace, k.service_account),
            None => req.identity.subject.clone(),
        };
        let s = sanitize(&raw, 64);
        (s.len() >= 2).then_some(s)
    } else {
        None
    };
    let cap = role
        .max_ttl_seconds
        .clamp(MIN_DURATION_SECONDS, MAX_DURATION_SECONDS);
    let duration_seconds = req.ttl.as_secs().clamp(MIN_DURATION_SECONDS, cap);
    Ok(AssumeRolePlan {
        role_arn: settings.role_arn().to_owned(),
        session_name: sanitize(&format!("{session_prefix}-{}", role.name), 64),
        policy,
        tags,
        source_identity,
        external_id: settings.external_id().map(str::to_owned),
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

    fn forget_role(&self, role: &Role) -> usize {
        match &role.settings {
            RoleSettings::AwsSts(s) => self
                .upstream
                .forget_prefix(&role_cache_prefix(s.role_arn())),
            _ => 0,
        }
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
    use serde_json::{Value, json};

    use super::*;
    use crate::authn::{Identity, KubernetesIdentity};
    use crate::policy::Role;
    use crate::policy::settings::tests::role as test_role;

    /// An `aws-sts` role, its settings parsed as policy loading parses them.
    fn role(settings: Value, scope: &[&str], max: u64) -> Role {
        test_role("s3-read", KIND, settings, scope, max)
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
                admission: Default::default(),
            }),
            bootstrap: None,
            spiffe_id: None,
            claims: Default::default(),
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
            spiffe_id: None,
            claims: Default::default(),
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

    #[test]
    fn the_cache_key_covers_every_field_sent_upstream() {
        let base = AssumeRolePlan {
            role_arn: ARN.into(),
            session_name: "lanyard-s3-read".into(),
            policy: Some("{}".into()),
            tags: vec![("kubernetes-namespace".into(), "shop".into())],
            source_identity: Some("shop.api".into()),
            external_id: None,
            duration_seconds: 900,
        };
        let variants = [
            AssumeRolePlan {
                role_arn: format!("{ARN}2"),
                ..base.clone()
            },
            AssumeRolePlan {
                session_name: "lanyard-other".into(),
                ..base.clone()
            },
            AssumeRolePlan {
                policy: None,
                ..base.clone()
            },
            AssumeRolePlan {
                tags: vec![("kubernetes-namespace".into(), "shop2".into())],
                ..base.clone()
            },
            AssumeRolePlan {
                tags: vec![],
                ..base.clone()
            },
            AssumeRolePlan {
                source_identity: None,
                ..base.clone()
            },
            AssumeRolePlan {
                external_id: Some("x".into()),
                ..base.clone()
            },
            AssumeRolePlan {
                duration_seconds: 901,
                ..base.clone()
            },
        ];
        assert_eq!(base.cache_key(), base.clone().cache_key());
        for v in &variants {
            assert_ne!(v.cache_key(), base.cache_key(), "{v:?}");
        }
    }

    #[test]
    fn the_revocation_cutoff_is_after_every_earlier_session_and_denies_only_those() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_400);
        let cutoff = revocation_cutoff(now);
        assert_eq!(
            cutoff,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_001)
        );
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert!(revocation_cutoff(whole) > whole);
        let doc = deny_sessions_issued_before(cutoff);
        assert_eq!(
            doc["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
            "2027-01-15T08:00:01Z"
        );
        assert_eq!(doc["Statement"][0]["Effect"], "Deny");
    }

    #[test]
    fn every_cache_key_of_a_role_starts_with_its_prefix() {
        let r = role(
            json!({"role_arn": "arn:aws:iam::123456789012:role/a"}),
            &[],
            3600,
        );
        let key = plan_for(&r, &k8s(Some("a")), 900)
            .expect("plan")
            .cache_key();
        assert!(key.starts_with(&role_cache_prefix("arn:aws:iam::123456789012:role/a")));
        assert!(!key.starts_with(&role_cache_prefix("arn:aws:iam::123456789012:role/ab")));
    }

    #[test]
    fn a_role_with_another_backends_settings_is_an_internal_error() {
        let jwt_role = test_role("s3-read", "jwt", json!({}), &[], 3600);
        let err = plan_for(&jwt_role, &k8s(None), 900).expect_err("jwt settings");
        assert!(
            matches!(&err, BackendError::Internal(m) if m.contains("jwt settings")),
            "{err}"
        );
    }
}
