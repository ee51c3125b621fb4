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

/// Redeems a token. On failure also returns the token id when the token was known (for the
/// audit record); the caller answers every failure with the same opaque 401.
pub async fn redeem(
    _store: &dyn Store,
    _clock: &dyn Clock,
    _token: &str,
) -> Result<Identity, (AuthnError, Option<String>)> {
    Err((AuthnError::UnknownToken, None))
}

/// Errors of [`redeem`] that are the store's fault, not the caller's.
pub fn store_failure(e: StoreError) -> String {
    e.to_string()
}
