//! Checking what a workload asks for before policy sees it.
//!
//! A credential request's fields are the requester's words: they reach the decision, the 403
//! that names each refused role and, one record per refused role, the audit log. Each is
//! bounded here — role names to the policy's own name rules ([`is_valid_name`]: at most 63
//! bytes), the role list to [`MAX_REQUESTED_ROLES`], the TTL to at least one second — so
//! nothing longer than a policy name goes further. A refusal never repeats an oversized
//! value: it shows the first [`SHOWN_CHARS`] characters and says how long the value was.
//!
//! An admin's bootstrap-token mint names roles too; [`check_token_roles`] holds them to the
//! same bounds and to the roles the policy defines, since the token's roles are recorded in
//! its `token_mint` audit record and in every denial quoting its binding.
//!
//! The request body's size is bounded before it is parsed (`limits.max_request_body_bytes`);
//! the SDK's wire type stays a plain container, since what a valid role name is belongs to the
//! policy.

use lanyard::wire::CredentialRequest;

use super::PolicySet;
use super::load::is_valid_name;

/// Most roles one credential request may name.
pub const MAX_REQUESTED_ROLES: usize = 64;

/// How many characters of a refused value an error shows.
pub const SHOWN_CHARS: usize = 32;

/// Why a credential request is refused before policy sees it (the caller's fault: 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// `ttl_seconds` is 0.
    #[error("ttl_seconds must be at least 1")]
    ZeroTtl,
    /// `roles` is present but empty.
    #[error("roles, when given, must name at least one role")]
    NoRoles,
    /// `roles` names more than [`MAX_REQUESTED_ROLES`].
    #[error("at most {MAX_REQUESTED_ROLES} roles per request (got {0})")]
    TooManyRoles(usize),
    /// A bootstrap token's role is not defined in the policies.
    #[error("roles[{index}] ({shown}) is not defined in the policies (known: {known})")]
    UnknownRole {
        /// Its position in `roles` (0-based).
        index: usize,
        /// The name, quoted (a valid name, so at most 63 bytes).
        shown: String,
        /// The roles the policies define, comma-separated.
        known: String,
    },
    /// An entry of `roles` breaks the policy's name rules.
    #[error(
        "roles[{index}] ({shown}, {len} bytes) is not a role name: role names are 1 to 63 \
         lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
    )]
    InvalidRoleName {
        /// Its position in `roles` (0-based).
        index: usize,
        /// Its first [`SHOWN_CHARS`] characters, quoted and escaped.
        shown: String,
        /// Its full length in bytes.
        len: usize,
    },
}

/// Checks a credential request's fields: `Ok` means every requester-controlled value in it is
/// within the bounds above.
pub fn check_request(req: &CredentialRequest) -> Result<(), RequestError> {
    if req.ttl_seconds == Some(0) {
        return Err(RequestError::ZeroTtl);
    }
    let Some(roles) = &req.roles else {
        return Ok(());
    };
    if roles.is_empty() {
        return Err(RequestError::NoRoles);
    }
    if roles.len() > MAX_REQUESTED_ROLES {
        return Err(RequestError::TooManyRoles(roles.len()));
    }
    match roles.iter().position(|r| !is_valid_name(r)) {
        Some(index) => Err(RequestError::InvalidRoleName {
            index,
            shown: shown(&roles[index]),
            len: roles[index].len(),
        }),
        None => Ok(()),
    }
}

/// Checks the roles an admin mints a bootstrap token for: at least one, at most
/// [`MAX_REQUESTED_ROLES`], each a valid name defined in `set`.
pub fn check_token_roles(set: &PolicySet, roles: &[String]) -> Result<(), RequestError> {
    if roles.is_empty() {
        return Err(RequestError::NoRoles);
    }
    if roles.len() > MAX_REQUESTED_ROLES {
        return Err(RequestError::TooManyRoles(roles.len()));
    }
    for (index, role) in roles.iter().enumerate() {
        if !is_valid_name(role) {
            return Err(RequestError::InvalidRoleName {
                index,
                shown: shown(role),
                len: role.len(),
            });
        }
        if !set.roles.contains_key(role) {
            return Err(RequestError::UnknownRole {
                index,
                shown: shown(role),
                known: set.roles.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
    }
    Ok(())
}

/// The first [`SHOWN_CHARS`] characters of `value`, quoted with control characters escaped,
/// and `…` when it was longer.
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(roles: Option<Vec<String>>, ttl_seconds: Option<u64>) -> CredentialRequest {
        CredentialRequest { roles, ttl_seconds }
    }

    fn roles(names: &[&str]) -> CredentialRequest {
        req(Some(names.iter().map(|&n| n.to_owned()).collect()), None)
    }

    #[test]
    fn policy_names_and_absent_fields_pass() {
        assert_eq!(check_request(&req(None, None)), Ok(()));
        assert_eq!(check_request(&req(None, Some(1))), Ok(()));
        let longest = "a".repeat(63);
        assert_eq!(
            check_request(&roles(&["db", "orders-read", "0.x_y-z", &longest])),
            Ok(())
        );
        let most: Vec<String> = (0..MAX_REQUESTED_ROLES).map(|i| format!("r{i}")).collect();
        assert_eq!(check_request(&req(Some(most), Some(600))), Ok(()));
    }

    #[test]
    fn ttl_zero_and_empty_or_long_role_lists_are_refused() {
        assert_eq!(
            check_request(&req(None, Some(0))),
            Err(RequestError::ZeroTtl)
        );
        assert_eq!(check_request(&roles(&[])), Err(RequestError::NoRoles));
        let many: Vec<String> = (0..=MAX_REQUESTED_ROLES).map(|i| format!("r{i}")).collect();
        assert_eq!(
            check_request(&req(Some(many), None)),
            Err(RequestError::TooManyRoles(MAX_REQUESTED_ROLES + 1))
        );
    }

    #[test]
    fn names_outside_the_policy_rules_are_refused_by_position() {
        for bad in ["", "Admin", "-x", ".x", "a b", "db\n", "é", &"a".repeat(64)] {
            let err = check_request(&roles(&["db", bad])).expect_err(bad);
            assert!(
                matches!(&err, RequestError::InvalidRoleName { index: 1, len, .. } if *len == bad.len()),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn token_roles_must_be_defined_valid_and_few() {
        let policy = "
roles:
  boot: {backend: jwt, max_ttl_seconds: 60, settings: {audience: a}}
  db: {backend: jwt, max_ttl_seconds: 60, settings: {audience: a}}
";
        let parsed = crate::policy::load::parse_file(
            std::path::Path::new("p.yaml"),
            policy,
            &crate::policy::RoleSettings::parse,
        );
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let set = PolicySet {
            roles: parsed
                .roles
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect(),
            ..PolicySet::default()
        };
        let names = |n: &[&str]| n.iter().map(|&x| x.to_owned()).collect::<Vec<_>>();
        assert_eq!(
            check_token_roles(&set, &names(&["db", "boot", "db"])),
            Ok(())
        );
        assert_eq!(check_token_roles(&set, &[]), Err(RequestError::NoRoles));
        let many = vec!["db".to_owned(); MAX_REQUESTED_ROLES + 1];
        assert_eq!(
            check_token_roles(&set, &many),
            Err(RequestError::TooManyRoles(MAX_REQUESTED_ROLES + 1))
        );
        let err = check_token_roles(&set, &names(&["db", "nope"])).expect_err("unknown");
        assert_eq!(
            err.to_string(),
            r#"roles[1] ("nope") is not defined in the policies (known: boot, db)"#
        );
        let huge = "x".repeat(10_000);
        let err = check_token_roles(&set, &names(&["db", &huge])).expect_err("invalid");
        assert!(
            matches!(
                err,
                RequestError::InvalidRoleName {
                    index: 1,
                    len: 10_000,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn an_oversized_name_is_not_repeated_in_full() {
        let huge = format!("{}{}", "a".repeat(40_000), "TAIL");
        let err = check_request(&roles(&[&huge])).expect_err("refused");
        let msg = err.to_string();
        assert!(msg.len() < 300, "{} bytes: {msg}", msg.len());
        assert!(msg.contains("40004 bytes"), "{msg}");
        assert!(
            msg.contains(&format!("\"{}\"…", "a".repeat(SHOWN_CHARS))),
            "{msg}"
        );
        assert!(!msg.contains("TAIL"), "{msg}");
        // Control characters are escaped, never written raw.
        let err = check_request(&roles(&["a\u{1}\n"])).expect_err("refused");
        assert!(err.to_string().contains(r#""a\u{1}\n""#), "{err}");
    }
}
