//! JWT workload identity: verification against trusted issuers. STUB — see HELPER NOTES.

use std::sync::Arc;

use lanyard::clock::Clock;

use super::{AuthnError, Identity};
use crate::config::{IssuerConfig, LimitsConfig};
use crate::metrics::Metrics;

/// Verifies JWTs from the configured issuers.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    _p: (),
}

impl JwtVerifier {
    /// Builds a verifier; fails naming the issuer if its config is unusable (e.g. unreadable
    /// JWKS file or CA file).
    pub fn new(
        _issuers: &[IssuerConfig],
        _limits: &LimitsConfig,
        _clock: Arc<dyn Clock>,
        _metrics: Metrics,
    ) -> Result<Self, String> {
        Ok(Self { _p: () })
    }

    /// Fetches every issuer's keys once. Returns the issuers that failed (name, reason).
    pub async fn refresh_all(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Runs background refresh until `shutdown` resolves.
    pub async fn run_refresh(&self, shutdown: impl std::future::Future<Output = ()> + Send) {
        shutdown.await
    }

    /// Verifies a JWT and returns the workload identity.
    pub async fn verify(&self, _token: &str) -> Result<Identity, AuthnError> {
        Err(AuthnError::UntrustedIssuer)
    }
}
