//! Test fixtures shared by the modules' unit tests (compiled for tests only). A leaf: it
//! imports nothing from this crate.

use lanyard::Secret;
use lanyard::wire::Credential;

/// A `jwt` credential for `role` holding `fields`, valid until 2030-01-01T00:10:00Z.
pub(crate) fn credential(role: &str, fields: &[(&str, &str)]) -> Credential {
    Credential {
        role: role.into(),
        kind: "jwt".into(),
        data: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Secret::new(*v)))
            .collect(),
        expires_at: "2030-01-01T00:10:00Z".into(),
        refresh_after: "2030-01-01T00:07:00Z".into(),
        ttl_seconds: 600,
        lease_id: "lease-1".into(),
        ttl_clamped: false,
    }
}
