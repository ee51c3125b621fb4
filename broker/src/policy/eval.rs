//! Policy evaluation: pure functions of a policy set and an identity. STUB.

use serde::Serialize;

use super::{Location, PolicySet};
use crate::authn::Identity;

/// A role granted, and the rule that granted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// Role name.
    pub role: String,
    /// Rule name.
    pub rule: String,
    /// Rule location.
    pub location: Location,
}

/// A role refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// Role name as requested.
    pub role: String,
    /// Stable reason: `unknown_role`, `no_matching_rule`, `not_bound_to_token`.
    pub reason: &'static str,
    /// Human-readable detail (no secrets; names rules and files).
    pub detail: String,
}

/// The outcome for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Roles granted, in request order (or policy order when none were named).
    pub granted: Vec<Grant>,
    /// Roles refused.
    pub denied: Vec<Denial>,
}

/// How one rule compared with the identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleCheck {
    /// Rule name.
    pub rule: String,
    /// Where it is.
    pub location: Location,
    /// Whether the selector matched the identity.
    pub matched: bool,
    /// Whether the rule lists the role.
    pub grants_role: bool,
    /// The first selector field that did not match, e.g. `namespace: wanted shop, got dev`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
}

/// Why a role was or was not granted to an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The role asked about.
    pub role: String,
    /// The outcome.
    pub allowed: bool,
    /// One sentence.
    pub summary: String,
    /// Every rule that lists the role (and, if none does, every rule).
    pub checks: Vec<RuleCheck>,
}

/// Decides which roles `identity` gets. `requested` narrows to named roles.
pub fn evaluate(_set: &PolicySet, _identity: &Identity, _requested: Option<&[String]>) -> Decision {
    Decision::default()
}

/// Explains the decision for one role.
pub fn explain(_set: &PolicySet, _identity: &Identity, role: &str) -> Explanation {
    Explanation {
        role: role.to_owned(),
        allowed: false,
        summary: String::new(),
        checks: Vec::new(),
    }
}
