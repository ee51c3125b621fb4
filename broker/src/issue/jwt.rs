//! The `jwt` backend: broker-signed tokens, rotating keys, published JWKS. STUB.

use std::sync::Arc;
use std::time::SystemTime;

use lanyard::clock::Clock;

use super::{Backend, BackendError, IssueRequest, Issued};
use crate::config::SigningConfig;
use crate::policy::Role;
use crate::store::{Store, StoreError};

/// The broker's signing keys: the newest signs; older ones stay in the JWKS for the overlap.
#[derive(Debug)]
pub struct KeyRing {
    _p: (),
}

impl KeyRing {
    /// Loads keys from the store, creating the first one if there is none.
    pub async fn load_or_create(
        _store: Arc<dyn Store>,
        _clock: Arc<dyn Clock>,
        _config: SigningConfig,
    ) -> Result<Self, StoreError> {
        Ok(Self { _p: () })
    }

    /// Creates a new key when the newest is older than `rotate_after_seconds`, and drops keys
    /// retired longer than `overlap_seconds`. Returns whether anything changed.
    pub async fn rotate_if_due(&self) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// The public JWKS document (`{"keys": [...]}`).
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({"keys": []})
    }

    /// Signs claims with the newest key (header carries `kid` and `alg`).
    pub fn sign(&self, _claims: &serde_json::Value) -> Result<String, BackendError> {
        Err(BackendError::Internal("stub".into()))
    }

    /// Verifies a token this broker signed (any published key), requiring `iss` and `aud`.
    /// Returns its claims.
    pub fn verify(
        &self,
        _token: &str,
        _issuer: &str,
        _audience: &str,
        _now: SystemTime,
    ) -> Result<serde_json::Value, crate::authn::AuthnError> {
        Err(crate::authn::AuthnError::BadSignature)
    }
}

/// The `jwt` backend.
#[derive(Debug)]
pub struct JwtBackend {
    _p: (),
}

impl JwtBackend {
    /// A backend signing with `keys`, with `iss` = `issuer_url`.
    pub fn new(_keys: Arc<KeyRing>, _issuer_url: String) -> Self {
        Self { _p: () }
    }
}

#[async_trait::async_trait]
impl Backend for JwtBackend {
    fn kind(&self) -> &'static str {
        "jwt"
    }

    fn validate_role(&self, _role: &Role) -> Result<(), String> {
        Ok(())
    }

    async fn issue(&self, _req: &IssueRequest<'_>) -> Result<Issued, BackendError> {
        Err(BackendError::Internal("stub".into()))
    }
}

/// Checks a `jwt` role's settings and scope.
pub fn validate_role(_role: &Role) -> Result<(), String> {
    Ok(())
}
