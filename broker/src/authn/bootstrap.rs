//! Bootstrap tokens. STUB.

use std::time::{Duration, SystemTime};

use lanyard::Secret;
use lanyard::clock::Clock;

use super::{AuthnError, Identity};
use crate::store::{Store, StoreError};

/// Prefix of every bootstrap token (`lbt_` + 43 base64url characters = 256 random bits).
pub const TOKEN_PREFIX: &str = "lbt_";

/// A freshly minted token. The only time the token itself exists outside the caller.
#[derive(Debug)]
pub struct MintedToken {
    /// Public id.
    pub token_id: String,
    /// The token.
    pub token: Secret,
    /// Redeemable until.
    pub expires_at: SystemTime,
}

/// Whether a bearer credential is shaped like a bootstrap token (vs a JWT).
pub fn looks_like_bootstrap_token(s: &str) -> bool {
    s.starts_with(TOKEN_PREFIX)
}

/// Mints a token bound to `roles` (and `image`), redeemable for `ttl`.
pub async fn mint(
    _store: &dyn Store,
    _clock: &dyn Clock,
    _roles: Vec<String>,
    _ttl: Duration,
    _image: Option<String>,
) -> Result<MintedToken, StoreError> {
    Err(StoreError::Backend("stub".into()))
}

/// Why a redemption failed.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// The token was refused (unknown, expired, reused, malformed). Answer with an opaque 401.
    #[error("{error}")]
    Rejected {
        /// Why.
        error: AuthnError,
        /// The token id, when the token was known.
        token_id: Option<String>,
    },
    /// The store failed: not the caller's fault (500/503).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Redeems a token.
pub async fn redeem(
    _store: &dyn Store,
    _clock: &dyn Clock,
    _token: &str,
) -> Result<Identity, RedeemError> {
    Err(RedeemError::Rejected {
        error: AuthnError::UnknownToken,
        token_id: None,
    })
}
