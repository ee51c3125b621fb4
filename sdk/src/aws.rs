//! AWS credentials from lanyard.
//!
//! An `aws-sts` credential carries `access_key_id`, `secret_access_key` and `session_token`.
//! This module picks the AWS credential out of a broker answer ([`pick`]), reads its keys
//! ([`AwsKeys`]) and renders the two JSON shapes unmodified AWS SDKs read:
//!
//! - the **container-credentials endpoint** body ([`AwsKeys::container_json`]), served by
//!   `lanyard-sidecar run --aws-listen` for `AWS_CONTAINER_CREDENTIALS_FULL_URI` with
//!   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`;
//! - the **`credential_process`** output ([`AwsKeys::process_json`]), printed by
//!   `lanyard-sidecar credential-process`.
//!
//! With the `aws` cargo feature, `CredentialsProvider` implements the AWS SDK for Rust's
//! `ProvideCredentials`, so an application's AWS clients get their keys from the broker:
//!
//! ```no_run
//! # #[cfg(feature = "aws")]
//! # async fn demo() -> Result<(), lanyard::Error> {
//! let provider = lanyard::aws::CredentialsProvider::new(lanyard::Client::from_env()?)
//!     .role("aws-read");
//! // aws_config::defaults(BehaviorVersion::latest()).credentials_provider(provider)
//! # let _ = provider;
//! # Ok(()) }
//! ```

use std::time::SystemTime;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::Secret;
use crate::clock::{parse_rfc3339, rfc3339};
use crate::wire::{Credential, CredentialResponse};

/// Field of the access key id in a credential's `data`.
pub const ACCESS_KEY_ID: &str = "access_key_id";
/// Field of the secret access key.
pub const SECRET_ACCESS_KEY: &str = "secret_access_key";
/// Field of the session token (STS credentials always have one).
pub const SESSION_TOKEN: &str = "session_token";

/// Whether `c` carries AWS keys (`access_key_id` and `secret_access_key`).
pub fn is_aws(c: &Credential) -> bool {
    c.data.contains_key(ACCESS_KEY_ID) && c.data.contains_key(SECRET_ACCESS_KEY)
}

/// The AWS credential in `resp`: the one for `role` when given, else the only credential
/// that carries AWS keys. The error says what was granted and what to pass instead; it
/// never holds a secret.
pub fn pick<'a>(
    resp: &'a CredentialResponse,
    role: Option<&str>,
) -> Result<&'a Credential, String> {
    let granted = || {
        let names: Vec<&str> = resp.credentials.iter().map(|c| c.role.as_str()).collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    };
    if let Some(role) = role {
        let c = resp.credential(role).ok_or_else(|| {
            format!(
                "the broker granted no role {role:?} to {} (granted: {})",
                resp.identity,
                granted()
            )
        })?;
        if !is_aws(c) {
            return Err(format!(
                "role {role:?} is a {} credential without {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}; \
                 name an aws-sts role",
                c.kind
            ));
        }
        return Ok(c);
    }
    let aws: Vec<&Credential> = resp.credentials.iter().filter(|c| is_aws(c)).collect();
    match aws.as_slice() {
        [c] => Ok(c),
        [] => Err(format!(
            "none of the credentials granted to {} carries AWS keys (granted: {}); \
             grant an aws-sts role in the policy",
            resp.identity,
            granted()
        )),
        several => Err(format!(
            "several AWS credentials were granted ({}); name the one to use",
            several
                .iter()
                .map(|c| c.role.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The AWS keys of one credential, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct AwsKeys<'a> {
    /// `AccessKeyId`.
    pub access_key_id: &'a Secret,
    /// `SecretAccessKey`.
    pub secret_access_key: &'a Secret,
    /// `Token` / `SessionToken`, when the credential has one.
    pub session_token: Option<&'a Secret>,
    /// When the keys stop working.
    pub expires_at: SystemTime,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerBody<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    expiration: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessBody<'a> {
    version: u8,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_token: Option<&'a str>,
    expiration: String,
}

impl<'a> AwsKeys<'a> {
    /// Reads the keys of `c`; the error names the missing field or the bad expiry.
    pub fn from_credential(c: &'a Credential) -> Result<Self, String> {
        let field = |name: &str| {
            c.data.get(name).ok_or_else(|| {
                format!(
                    "role {:?} ({}) has no {name} field; AWS keys need {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}",
                    c.role, c.kind
                )
            })
        };
        let access_key_id = field(ACCESS_KEY_ID)?;
        let secret_access_key = field(SECRET_ACCESS_KEY)?;
        let expires_at = parse_rfc3339(&c.expires_at).ok_or_else(|| {
            format!(
                "role {:?}: expires_at {:?} is not an RFC 3339 time",
                c.role, c.expires_at
            )
        })?;
        Ok(Self {
            access_key_id,
            secret_access_key,
            session_token: c.data.get(SESSION_TOKEN),
            expires_at,
        })
    }

    /// The body of the AWS container-credentials endpoint:
    /// `{"AccessKeyId","SecretAccessKey","Token","Expiration"}`. Zeroized on drop.
    pub fn container_json(&self) -> Zeroizing<Vec<u8>> {
        to_json(&ContainerBody {
            access_key_id: self.access_key_id.expose(),
            secret_access_key: self.secret_access_key.expose(),
            token: self.session_token.map(Secret::expose),
            expiration: rfc3339(self.expires_at),
        })
    }

    /// The output of a `credential_process`:
    /// `{"Version":1,"AccessKeyId","SecretAccessKey","SessionToken","Expiration"}`.
    /// Zeroized on drop.
    pub fn process_json(&self) -> Zeroizing<Vec<u8>> {
        to_json(&ProcessBody {
            version: 1,
            access_key_id: self.access_key_id.expose(),
            secret_access_key: self.secret_access_key.expose(),
            session_token: self.session_token.map(Secret::expose),
            expiration: rfc3339(self.expires_at),
        })
    }
}

/// Serializes into a buffer sized up front, so no reallocation leaves a copy of the keys
/// behind in freed memory.
fn to_json(v: &impl Serialize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(8 * 1024));
    // Serializing plain strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
    out
}

#[cfg(feature = "aws")]
pub use provider::CredentialsProvider;

#[cfg(feature = "aws")]
mod provider {
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::error::CredentialsError;
    use aws_credential_types::provider::{self, ProvideCredentials};

    use super::{AwsKeys, pick};
    use crate::wire::CredentialRequest;
    use crate::{Client, Error};

    /// Name the AWS SDK shows as the source of these credentials.
    const PROVIDER_NAME: &str = "lanyard";

    /// An AWS SDK for Rust credentials provider backed by a lanyard broker: each call fetches
    /// the role's credential (the broker serves it from its STS cache). Wrap it in the SDK's
    /// identity cache (the default in `aws_config`), which refreshes before `Expiration`.
    #[derive(Debug, Clone)]
    pub struct CredentialsProvider {
        client: Client,
        role: Option<String>,
    }

    impl CredentialsProvider {
        /// A provider that asks `client`'s broker for the only AWS credential its policy
        /// grants (see [`role`](Self::role) to name one).
        pub fn new(client: Client) -> Self {
            Self { client, role: None }
        }

        /// Use this role's credential (the request names only this role).
        #[must_use]
        pub fn role(mut self, role: impl Into<String>) -> Self {
            self.role = Some(role.into());
            self
        }

        /// Fetches and converts one credential.
        pub async fn credentials(&self) -> Result<Credentials, CredentialsError> {
            let resp = match &self.role {
                Some(role) => {
                    let req = CredentialRequest {
                        roles: Some(vec![role.clone()]),
                        ttl_seconds: self.client.request().ttl_seconds,
                    };
                    self.client.fetch_with(&req).await
                }
                None => self.client.fetch().await,
            }
            .map_err(|e| match e {
                Error::Config(_) | Error::BootstrapSpent { .. } => {
                    CredentialsError::invalid_configuration(e)
                }
                other => CredentialsError::provider_error(other),
            })?;
            let c = pick(&resp, self.role.as_deref())
                .map_err(CredentialsError::invalid_configuration)?;
            let keys = AwsKeys::from_credential(c).map_err(CredentialsError::unhandled)?;
            tracing::debug!(role = %c.role, lease_id = %c.lease_id, expires_at = %c.expires_at, "AWS credentials from lanyard");
            Ok(Credentials::new(
                keys.access_key_id.expose(),
                keys.secret_access_key.expose(),
                keys.session_token.map(|t| t.expose().to_owned()),
                Some(keys.expires_at),
                PROVIDER_NAME,
            ))
        }
    }

    impl ProvideCredentials for CredentialsProvider {
        fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            provider::future::ProvideCredentials::new(self.credentials())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn cred(role: &str, kind: &str, fields: &[(&str, &str)]) -> Credential {
        Credential {
            role: role.into(),
            kind: kind.into(),
            data: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Secret::new(*v)))
                .collect::<BTreeMap<_, _>>(),
            expires_at: "2026-12-01T20:15:00Z".into(),
            refresh_after: "2026-12-01T20:10:00Z".into(),
            ttl_seconds: 900,
            lease_id: "ls_1".into(),
            ttl_clamped: false,
        }
    }

    fn sts(role: &str) -> Credential {
        cred(
            role,
            "aws-sts",
            &[
                (ACCESS_KEY_ID, "ASIAEXAMPLE"),
                (SECRET_ACCESS_KEY, "s3cr3t/+="),
                (SESSION_TOKEN, "FwoG\"quoted\""),
            ],
        )
    }

    fn resp(creds: Vec<Credential>) -> CredentialResponse {
        CredentialResponse {
            request_id: "r".into(),
            identity: "k8s:shop/api".into(),
            credentials: creds,
            session: None,
            admitted_at: None,
        }
    }

    #[test]
    fn container_json_is_the_documented_shape() {
        let c = sts("aws");
        let keys = AwsKeys::from_credential(&c).expect("keys");
        let v: serde_json::Value = serde_json::from_slice(&keys.container_json()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "AccessKeyId": "ASIAEXAMPLE",
                "SecretAccessKey": "s3cr3t/+=",
                "Token": "FwoG\"quoted\"",
                "Expiration": "2026-12-01T20:15:00Z",
            })
        );
    }

    #[test]
    fn process_json_is_version_1() {
        let c = cred(
            "aws",
            "aws-sts",
            &[(ACCESS_KEY_ID, "AKIA"), (SECRET_ACCESS_KEY, "s")],
        );
        let keys = AwsKeys::from_credential(&c).expect("keys");
        let v: serde_json::Value = serde_json::from_slice(&keys.process_json()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "Version": 1,
                "AccessKeyId": "AKIA",
                "SecretAccessKey": "s",
                "Expiration": "2026-12-01T20:15:00Z",
            })
        );
    }

    #[test]
    fn picking_names_what_was_granted_and_never_a_secret() {
        let jwt = cred("app", "jwt", &[("token", "eyJsecret")]);
        let r = resp(vec![jwt.clone(), sts("aws")]);
        assert_eq!(pick(&r, None).expect("the only aws one").role, "aws");
        assert_eq!(pick(&r, Some("aws")).expect("named").role, "aws");
        let e = pick(&r, Some("app")).expect_err("jwt is not aws");
        assert!(
            e.contains("jwt credential") && !e.contains("eyJsecret"),
            "{e}"
        );
        let e = pick(&r, Some("nope")).expect_err("not granted");
        assert!(e.contains("granted: app, aws"), "{e}");

        let e = pick(&resp(vec![jwt]), None).expect_err("no aws");
        assert!(e.contains("aws-sts role"), "{e}");
        let e = pick(&resp(vec![sts("a"), sts("b")]), None).expect_err("ambiguous");
        assert!(e.contains("a, b") && !e.contains("ASIA"), "{e}");
    }

    #[test]
    fn missing_fields_and_bad_times_are_named() {
        let c = cred("aws", "vault", &[(ACCESS_KEY_ID, "AKIA")]);
        let e = AwsKeys::from_credential(&c).expect_err("no secret key");
        assert!(e.contains(SECRET_ACCESS_KEY), "{e}");
        let mut c = sts("aws");
        c.expires_at = "tomorrow".into();
        let e = AwsKeys::from_credential(&c).expect_err("bad time");
        assert!(e.contains("tomorrow"), "{e}");
    }
}
