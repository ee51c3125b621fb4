//! Policies: which identities get which roles. Deny by default.
//!
//! Policies live in `*.yaml` files in one directory (see `policies/` and
//! `docs/POLICIES.md`). Each file may declare `roles` (a backend, a scope, a TTL cap) and
//! `rules` (identity selectors → role names). Role names are unique across the directory.
//!
//! # Layout
//! - [`load`]: reading and validating a directory, with `file:line` errors.
//! - [`settings`]: each backend's role settings, parsed at load into its own type
//!   ([`RoleSettings`]), and the `{{field}}` templates they may hold.
//! - [`eval`]: the pure decision (`evaluate`) and the explanation (`explain`).
//! - [`request`]: what a workload may ask for — each field of a credential request bounded
//!   (role names to the policy's name rules) before the decision sees it (`check_request`),
//!   and the roles an admin mints a bootstrap token for (`check_token_roles`).

pub mod eval;
pub mod load;
pub mod request;
pub mod settings;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

pub use eval::{Decision, Denial, Explanation, Grant, RuleCheck, evaluate, explain};
pub use load::{PolicyError, PolicyErrors, claim_warnings, load_dir};
pub use request::{RequestError, check_request, check_token_roles};
pub use settings::{RoleError, RoleField, RoleSettings, RoleSpec};

/// Where something was declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    /// The policy file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A role: what a granted identity receives.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    /// Unique name.
    pub name: String,
    /// Backend kind: `jwt`, `aws-sts` or `vault` (the kind of `settings`).
    pub backend: String,
    /// Scope passed to the backend (`jwt`: the `scope` claim; `aws-sts`: IAM actions;
    /// `vault` kv2: the keys handed out).
    pub scope: Vec<String>,
    /// Upper bound on the credential's lifetime.
    pub max_ttl_seconds: u64,
    /// Lifetime when the request does not ask for one (≤ `max_ttl_seconds`).
    pub default_ttl_seconds: u64,
    /// Backend-specific settings, parsed by the backend at load.
    pub settings: RoleSettings,
    /// Where the role was declared.
    pub location: Location,
}

/// A rule: identities matching every set field of `selector` may receive `roles`.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    /// Name, for explanations and audit reasons.
    pub name: String,
    /// Which identities match.
    pub selector: Selector,
    /// Roles granted.
    pub roles: Vec<String>,
    /// `require_image: true`: the image gate applies even to identities that name no image
    /// (they are refused: `docs/GATE.md`).
    pub require_image: bool,
    /// `gate_mode`: this rule's gate mode, overriding `gate.mode`.
    pub gate_mode: Option<GateMode>,
    /// Where the rule was declared.
    pub location: Location,
}

/// Identity selector. Every field that is set must match; an empty selector is rejected at
/// load (it would grant to everyone).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Selector {
    /// Exact issuer URL (or `lanyard:bootstrap`).
    pub issuer: Option<String>,
    /// Kubernetes namespace, glob (`*`, `?`, `[..]`).
    pub namespace: Option<Pattern>,
    /// Kubernetes service account name, glob.
    pub service_account: Option<Pattern>,
    /// Subject, glob (e.g. `system:serviceaccount:shop:*`).
    pub subject: Option<Pattern>,
    /// Matches identities that redeemed a bootstrap token minted for this role.
    pub bootstrap_role: Option<String>,
    /// Image repository (`host/path`), glob: every image the workload runs, from a trusted
    /// source, must match (an identity with no image never does).
    pub image_repository: Option<Pattern>,
    /// SPIFFE ID (`spiffe://example.org/ns/shop/*`), a glob over the path whose trust domain
    /// is written out: `*` stays within one path segment, `**` spans segments. Matches only
    /// identities a SPIFFE trust domain's bundle verified ([`crate::authn::Identity::spiffe_id`]).
    pub spiffe_id: Option<Pattern>,
    /// Claim selectors: every one must match the verified token's claim of its name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimSelector>,
}

impl Selector {
    /// Whether any field is set (an empty selector is refused at load).
    pub fn is_set(&self) -> bool {
        self.issuer.is_some()
            || self.namespace.is_some()
            || self.service_account.is_some()
            || self.subject.is_some()
            || self.bootstrap_role.is_some()
            || self.image_repository.is_some()
            || self.spiffe_id.is_some()
            || !self.claims.is_empty()
    }
}

/// `match.claims.<name>`: the token's claim `name` must be one of `values`, compared by JSON
/// type — a boolean selector matches only a JSON boolean, a number only a number, a string
/// (a glob) only a string: GitLab's `ref_protected: "true"` is not `true`.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimSelector {
    /// The claim's name (a top-level claim of the token).
    pub name: String,
    /// Accepted values (any one of them).
    pub values: Vec<ClaimValue>,
    /// Where it is declared.
    #[serde(skip)]
    pub line: usize,
}

/// One accepted value of a claim selector.
#[derive(Debug, Clone)]
pub enum ClaimValue {
    /// A string claim matching this glob (a string without `*`, `?` or `[` matches exactly).
    String(Pattern),
    /// A boolean claim with this value.
    Bool(bool),
    /// A number claim equal to this number.
    Number(serde_json::Number),
}

impl ClaimValue {
    /// Whether the claim `value` matches: same JSON type, and equal (numbers, booleans) or
    /// glob-matched (strings).
    pub fn is_match(&self, value: &serde_json::Value) -> bool {
        use serde_json::Value as J;
        match (self, value) {
            (Self::String(p), J::String(s)) => p.is_match(s),
            (Self::Bool(b), J::Bool(v)) => b == v,
            (Self::Number(n), J::Number(v)) => {
                match (n.as_i64(), v.as_i64(), n.as_u64(), v.as_u64()) {
                    (Some(a), Some(b), _, _) => a == b,
                    (_, _, Some(a), Some(b)) => a == b,
                    _ => n.as_f64().zip(v.as_f64()).is_some_and(|(a, b)| a == b),
                }
            }
            _ => false,
        }
    }

    /// The JSON type this value matches.
    pub fn claim_type(&self) -> crate::config::ClaimType {
        use crate::config::ClaimType;
        match self {
            Self::String(_) => ClaimType::String,
            Self::Bool(_) => ClaimType::Boolean,
            Self::Number(_) => ClaimType::Number,
        }
    }
}

impl fmt::Display for ClaimValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(p) => write!(f, "{:?}", p.source),
            Self::Bool(b) => write!(f, "{b} (boolean)"),
            Self::Number(n) => write!(f, "{n} (number)"),
        }
    }
}

impl Serialize for ClaimValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::String(p) => s.serialize_str(&p.source),
            Self::Bool(b) => s.serialize_bool(*b),
            Self::Number(n) => n.serialize(s),
        }
    }
}

/// A compiled glob pattern that remembers its source text.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The pattern as written.
    pub source: String,
    /// The compiled matcher.
    pub matcher: globset::GlobMatcher,
}

impl Pattern {
    /// Compiles a glob. `*` matches any run of characters including `:` and `/`.
    pub fn new(source: &str) -> Result<Self, globset::Error> {
        let glob = globset::GlobBuilder::new(source)
            .literal_separator(false)
            .build()?;
        Ok(Self {
            source: source.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    /// Compiles a glob over a path: `*` and `?` stay within one `/`-separated segment, `**`
    /// spans segments (for `spiffe_id`).
    pub fn path(source: &str) -> Result<Self, globset::Error> {
        let glob = globset::GlobBuilder::new(source)
            .literal_separator(true)
            .build()?;
        Ok(Self {
            source: source.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    /// Whether `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.matcher.is_match(value)
    }
}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// A validated, loaded set of policies.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// Roles by name.
    pub roles: BTreeMap<String, Role>,
    /// Rules in load order (files sorted by name, then document order).
    pub rules: Vec<Rule>,
    /// Files it was loaded from.
    pub files: Vec<PathBuf>,
    /// SHA-256 (hex) over the files' names and contents, to tell versions apart.
    pub digest: String,
}

pub use crate::config::GateMode;
