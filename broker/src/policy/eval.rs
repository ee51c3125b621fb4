//! Policy evaluation: pure functions of a policy set and an identity. Deny by default.

use std::fmt;

use serde::Serialize;

use super::{Location, PolicySet, Rule, Selector};
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
    /// The selector fields that matched, in field order (`issuer`, `claims.repository`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matched_on: Vec<String>,
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

/// Stable denial reason: no role by that name exists.
pub const UNKNOWN_ROLE: &str = "unknown_role";
/// Stable denial reason: no rule that grants the role matches the identity.
pub const NO_MATCHING_RULE: &str = "no_matching_rule";
/// Stable denial reason: a rule grants the role, but the identity's bootstrap token was not
/// minted for it.
pub const NOT_BOUND_TO_TOKEN: &str = "not_bound_to_token";

/// Decides which roles `identity` gets. `requested` narrows to named roles.
///
/// With `requested = None`, every role some matching rule grants is returned, in policy order,
/// and nothing is listed as denied. With `Some(roles)`, each distinct requested role is either
/// granted or denied with a reason; an empty list grants nothing.
pub fn evaluate(set: &PolicySet, identity: &Identity, requested: Option<&[String]>) -> Decision {
    let mut decision = Decision::default();
    match requested {
        None => {
            for rule in set.rules.iter().filter(|r| matches(&r.selector, identity)) {
                for role in &rule.roles {
                    let granted_already = decision.granted.iter().any(|g| &g.role == role);
                    if !granted_already && set.roles.contains_key(role) && bound(identity, role) {
                        decision.granted.push(grant(rule, role));
                    }
                }
            }
        }
        Some(requested) => {
            let mut seen: Vec<&str> = Vec::new();
            for role in requested {
                if seen.contains(&role.as_str()) {
                    continue;
                }
                seen.push(role);
                match decide(set, identity, role) {
                    Ok(g) => decision.granted.push(g),
                    Err(d) => decision.denied.push(d),
                }
            }
        }
    }
    decision
}

/// Explains the decision for one role.
pub fn explain(set: &PolicySet, identity: &Identity, role: &str) -> Explanation {
    let listing = set.rules.iter().any(|r| r.roles.iter().any(|x| x == role));
    let checks = set
        .rules
        .iter()
        .filter(|r| !listing || r.roles.iter().any(|x| x == role))
        .map(|rule| {
            let all = mismatches(&rule.selector, identity);
            let matched_on = selector_fields(&rule.selector)
                .into_iter()
                .filter(|f| !all.iter().any(|m| &m.field == f))
                .collect();
            let mismatch = all.into_iter().next();
            RuleCheck {
                rule: rule.name.clone(),
                location: rule.location.clone(),
                matched: mismatch.is_none(),
                grants_role: rule.roles.iter().any(|x| x == role),
                mismatch: mismatch.map(|m| m.to_string()),
                matched_on,
            }
        })
        .collect();
    let who = format!("{:?}", identity.display_name());
    let (allowed, summary) = match decide(set, identity, role) {
        Ok(g) => (
            true,
            format!(
                "Allowed: rule {:?} ({}) matches {who} and grants role {role:?}.",
                g.rule, g.location
            ),
        ),
        Err(d) => (false, format!("Denied to {who}: {}.", d.detail)),
    };
    Explanation {
        role: role.to_owned(),
        allowed,
        summary,
        checks,
    }
}

/// The decision for one named role.
fn decide(set: &PolicySet, identity: &Identity, role: &str) -> Result<Grant, Denial> {
    let deny = |reason, detail| Denial {
        role: role.to_owned(),
        reason,
        detail,
    };
    if !set.roles.contains_key(role) {
        let hint = super::load::closest(role, set.roles.keys().map(String::as_str))
            .map(|near| format!(" (did you mean {near:?}?)"))
            .unwrap_or_default();
        return Err(deny(
            UNKNOWN_ROLE,
            format!("no role named {role:?} is defined in the policy{hint}"),
        ));
    }
    let listing: Vec<&Rule> = set
        .rules
        .iter()
        .filter(|r| r.roles.iter().any(|x| x == role))
        .collect();
    if let Some(rule) = listing.iter().find(|r| matches(&r.selector, identity)) {
        if bound(identity, role) {
            return Ok(grant(rule, role));
        }
        let bound_to = identity
            .bootstrap
            .as_ref()
            .map(|b| b.roles.clone())
            .unwrap_or_default();
        return Err(deny(
            NOT_BOUND_TO_TOKEN,
            format!(
                "rule {:?} ({}) grants role {role:?}, but the bootstrap token was minted for \
                 {bound_to:?}, not for {role:?}",
                rule.name, rule.location
            ),
        ));
    }
    // The closest rule: fewest mismatching fields, first in policy order on a tie.
    let closest = listing
        .iter()
        .map(|r| (r, mismatches(&r.selector, identity)))
        .min_by_key(|(_, m)| m.len());
    let detail = match closest {
        None => format!("no rule grants role {role:?}"),
        Some((rule, m)) => {
            let first = m.first().map(ToString::to_string).unwrap_or_default();
            format!(
                "no rule granting role {role:?} matches; the closest is rule {:?} ({}), which \
                 differs on {first}",
                rule.name, rule.location
            )
        }
    };
    Err(deny(NO_MATCHING_RULE, detail))
}

fn grant(rule: &Rule, role: &str) -> Grant {
    Grant {
        role: role.to_owned(),
        rule: rule.name.clone(),
        location: rule.location.clone(),
    }
}

/// Whether a bootstrap-token identity's binding allows `role` (always true for other
/// identities).
fn bound(identity: &Identity, role: &str) -> bool {
    identity
        .bootstrap
        .as_ref()
        .is_none_or(|b| b.roles.iter().any(|x| x == role))
}

/// Whether every set field of `selector` matches `identity`. An empty selector (refused at
/// load) matches nothing.
fn matches(selector: &Selector, identity: &Identity) -> bool {
    selector.is_set() && mismatches(selector, identity).is_empty()
}

/// Every set field of `selector`, in the order [`mismatches`] checks them (claims as
/// `claims.<name>`).
fn selector_fields(selector: &Selector) -> Vec<String> {
    let mut out: Vec<String> = [
        ("issuer", selector.issuer.is_some()),
        ("namespace", selector.namespace.is_some()),
        ("service_account", selector.service_account.is_some()),
        ("subject", selector.subject.is_some()),
        ("bootstrap_role", selector.bootstrap_role.is_some()),
        ("image_repository", selector.image_repository.is_some()),
        ("spiffe_id", selector.spiffe_id.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(f, _)| f.to_owned())
    .collect();
    out.extend(selector.claims.iter().map(|c| format!("claims.{}", c.name)));
    out
}

/// A selector field that did not match.
struct Mismatch {
    field: String,
    /// What the selector wants, as shown (quoted strings, typed values).
    wanted: String,
    got: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: wanted {}, got {}",
            self.field, self.wanted, self.got
        )
    }
}

/// Longest claim value quoted in an explanation, in characters.
const MAX_SHOWN_CLAIM_CHARS: usize = 80;

/// A claim's value as an explanation shows it: quoted and bounded, with its JSON type.
fn shown_claim(value: &serde_json::Value) -> String {
    use serde_json::Value as J;
    let bounded = |s: &str| {
        let mut out: String = s.chars().take(MAX_SHOWN_CLAIM_CHARS).collect();
        if s.chars().count() > MAX_SHOWN_CLAIM_CHARS {
            out.push('…');
        }
        out
    };
    match value {
        J::String(s) => format!("{:?} (string)", bounded(s)),
        J::Bool(b) => format!("{b} (boolean)"),
        J::Number(n) => format!("{n} (number)"),
        J::Null => "null".to_owned(),
        J::Array(_) => "an array".to_owned(),
        J::Object(_) => "an object".to_owned(),
    }
}

/// Every set selector field that does not match, in field order.
fn mismatches(selector: &Selector, identity: &Identity) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut miss = |field: &str, wanted: &str, got: String| {
        out.push(Mismatch {
            field: field.to_owned(),
            wanted: format!("{wanted:?}"),
            got,
        });
    };
    if let Some(issuer) = &selector.issuer
        && *issuer != identity.issuer
    {
        miss("issuer", issuer, format!("{:?}", identity.issuer));
    }
    let k8s = identity.kubernetes.as_ref();
    let no_k8s = || "no Kubernetes identity".to_owned();
    if let Some(p) = &selector.namespace {
        match k8s {
            None => miss("namespace", &p.source, no_k8s()),
            Some(k) if !p.is_match(&k.namespace) => {
                miss("namespace", &p.source, format!("{:?}", k.namespace));
            }
            Some(_) => {}
        }
    }
    if let Some(p) = &selector.service_account {
        match k8s {
            None => miss("service_account", &p.source, no_k8s()),
            Some(k) if !p.is_match(&k.service_account) => {
                miss(
                    "service_account",
                    &p.source,
                    format!("{:?}", k.service_account),
                );
            }
            Some(_) => {}
        }
    }
    if let Some(p) = &selector.subject
        && !p.is_match(&identity.subject)
    {
        miss("subject", &p.source, format!("{:?}", identity.subject));
    }
    if let Some(role) = &selector.bootstrap_role {
        match &identity.bootstrap {
            None => miss("bootstrap_role", role, "no bootstrap token".to_owned()),
            Some(b) if !b.roles.iter().any(|x| x == role) => {
                miss(
                    "bootstrap_role",
                    role,
                    format!("a token minted for {:?}", b.roles),
                );
            }
            Some(_) => {}
        }
    }
    if let Some(p) = &selector.image_repository {
        let repos = crate::gate::image_repositories(identity);
        match repos.iter().find(|r| !p.is_match(r)) {
            _ if repos.is_empty() => miss(
                "image_repository",
                &p.source,
                "no image from a trusted source".to_owned(),
            ),
            Some(r) => miss("image_repository", &p.source, format!("{r:?}")),
            None => {}
        }
    }
    if let Some(p) = &selector.spiffe_id {
        match &identity.spiffe_id {
            None => miss(
                "spiffe_id",
                &p.source,
                "no SPIFFE ID (not verified by a SPIFFE trust domain's bundle)".to_owned(),
            ),
            Some(id) if !p.is_match(id) => miss("spiffe_id", &p.source, format!("{id:?}")),
            Some(_) => {}
        }
    }
    for sel in &selector.claims {
        let got = match identity.claims.get(&sel.name) {
            None => Some("no such claim".to_owned()),
            Some(v) if !sel.values.iter().any(|want| want.is_match(v)) => Some(shown_claim(v)),
            Some(_) => None,
        };
        if let Some(got) = got {
            let wanted = sel
                .values
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" or ");
            out.push(Mismatch {
                field: format!("claims.{}", sel.name),
                wanted,
                got,
            });
        }
    }
    out
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: granted by rule {} ({})",
            self.role, self.rule, self.location
        )
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: denied ({}): {}",
            self.role, self.reason, self.detail
        )
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.granted.is_empty() && self.denied.is_empty() {
            return write!(f, "no roles granted");
        }
        let lines = self
            .granted
            .iter()
            .map(ToString::to_string)
            .chain(self.denied.iter().map(ToString::to_string));
        for (i, line) in lines.enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{line}")?;
        }
        Ok(())
    }
}

impl fmt::Display for RuleCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule {} ({}): ", self.rule, self.location)?;
        let on = self.matched_on.join(", ");
        match (&self.mismatch, self.grants_role) {
            (Some(m), _) if on.is_empty() => write!(f, "does not match ({m})"),
            (Some(m), _) => write!(f, "does not match ({m}; matched on {on})"),
            (None, true) => write!(f, "matches (on {on})"),
            (None, false) => write!(f, "matches (on {on}), but does not grant this role"),
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.allowed { "allowed" } else { "denied" };
        writeln!(f, "role {}: {verdict}", self.role)?;
        write!(f, "{}", self.summary)?;
        let listed = self.checks.iter().any(|c| c.grants_role);
        if self.checks.is_empty() {
            write!(f, "\nno rules are defined")?;
        } else if listed {
            write!(f, "\nrules that grant {}:", self.role)?;
        } else {
            write!(f, "\nno rule grants {}; every rule:", self.role)?;
        }
        for check in &self.checks {
            write!(f, "\n  {check}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::authn::{BOOTSTRAP_ISSUER, BootstrapBinding, KubernetesIdentity};
    use crate::policy::load::parse_file;

    const K8S: &str = "https://kubernetes.default.svc.cluster.local";
    const GITHUB: &str = "https://token.actions.githubusercontent.com";

    const POLICY: &str = "\
roles:
  orders-api: {backend: jwt, max_ttl_seconds: 900}
  reports: {backend: jwt, max_ttl_seconds: 900}
  dev-app: {backend: jwt, max_ttl_seconds: 300}
  ci-deploy: {backend: jwt, max_ttl_seconds: 300}
  unused: {backend: jwt, max_ttl_seconds: 60}
rules:
  - name: shop-api
    match:
      issuer: https://kubernetes.default.svc.cluster.local
      namespace: shop
      service_account: api
    roles: [orders-api, reports]
  - name: shop-any-reports
    match: {issuer: 'https://kubernetes.default.svc.cluster.local', namespace: 'shop-*'}
    roles: [reports]
  - name: github-ci
    match:
      issuer: https://token.actions.githubusercontent.com
      subject: 'repo:acme/*:ref:refs/heads/main'
    roles: [ci-deploy]
  - name: dev-bootstrap
    match: {bootstrap_role: dev-app}
    roles: [dev-app, reports]
";

    fn set() -> PolicySet {
        let parsed = parse_file(
            Path::new("p.yaml"),
            POLICY,
            &crate::policy::RoleSettings::parse,
        );
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        PolicySet {
            roles: parsed
                .roles
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect(),
            rules: parsed.rules,
            files: vec!["p.yaml".into()],
            digest: String::new(),
        }
    }

    fn pod(namespace: &str, service_account: &str) -> Identity {
        Identity {
            issuer: K8S.to_owned(),
            subject: format!("system:serviceaccount:{namespace}:{service_account}"),
            kubernetes: Some(KubernetesIdentity {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
                pod_name: None,
                pod_uid: None,
                admission: Default::default(),
            }),
            bootstrap: None,
            spiffe_id: None,
            claims: Default::default(),
        }
    }

    fn oidc(issuer: &str, subject: &str) -> Identity {
        Identity {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            kubernetes: None,
            bootstrap: None,
            spiffe_id: None,
            claims: Default::default(),
        }
    }

    fn bootstrapped(roles: &[&str]) -> Identity {
        Identity {
            issuer: BOOTSTRAP_ISSUER.to_owned(),
            subject: "bootstrap:tok123".to_owned(),
            kubernetes: None,
            bootstrap: Some(BootstrapBinding {
                token_id: "tok123".to_owned(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                image: None,
            }),
            spiffe_id: None,
            claims: Default::default(),
        }
    }

    fn req(roles: &[&str]) -> Vec<String> {
        roles.iter().map(|r| (*r).to_owned()).collect()
    }

    /// (role, rule) pairs granted.
    fn granted(d: &Decision) -> Vec<(&str, &str)> {
        d.granted
            .iter()
            .map(|g| (g.role.as_str(), g.rule.as_str()))
            .collect()
    }

    fn only_denial(d: &Decision) -> &Denial {
        assert!(d.granted.is_empty(), "{d}");
        assert_eq!(d.denied.len(), 1, "{d}");
        &d.denied[0]
    }

    #[test]
    fn kubernetes_identity_gets_every_role_its_rules_grant_in_policy_order() {
        let d = evaluate(&set(), &pod("shop", "api"), None);
        assert_eq!(
            granted(&d),
            vec![("orders-api", "shop-api"), ("reports", "shop-api")]
        );
        assert!(d.denied.is_empty());
        assert_eq!(d.granted[0].location.line, 8);
        assert_eq!(d.granted[0].location.file, Path::new("p.yaml"));
    }

    #[test]
    fn globs_match_namespaces_and_subjects() {
        let s = set();
        let d = evaluate(&s, &pod("shop-staging", "worker"), None);
        assert_eq!(granted(&d), vec![("reports", "shop-any-reports")]);
        assert!(
            evaluate(&s, &pod("shopx", "worker"), None)
                .granted
                .is_empty()
        );

        let main = oidc(GITHUB, "repo:acme/web:ref:refs/heads/main");
        assert_eq!(
            granted(&evaluate(&s, &main, None)),
            vec![("ci-deploy", "github-ci")]
        );
        let branch = oidc(GITHUB, "repo:acme/web:ref:refs/heads/feature");
        let denial = evaluate(&s, &branch, Some(&req(&["ci-deploy"])));
        let denial = only_denial(&denial);
        assert_eq!(denial.reason, NO_MATCHING_RULE);
        assert!(
            denial.detail.contains(
                "rule \"github-ci\" (p.yaml:17), which differs on subject: wanted \
                 \"repo:acme/*:ref:refs/heads/main\", got \"repo:acme/web:ref:refs/heads/feature\""
            ),
            "{}",
            denial.detail
        );
    }

    #[test]
    fn deny_by_default() {
        let s = set();
        assert_eq!(evaluate(&s, &pod("dev", "api"), None), Decision::default());
        assert_eq!(
            evaluate(&s, &oidc("https://evil.example", "x"), None),
            Decision::default()
        );
        let empty = PolicySet::default();
        let d = evaluate(&empty, &pod("shop", "api"), Some(&req(&["orders-api"])));
        assert_eq!(only_denial(&d).reason, UNKNOWN_ROLE);
        assert!(
            evaluate(&empty, &pod("shop", "api"), None)
                .granted
                .is_empty()
        );
    }

    #[test]
    fn no_matching_rule_names_the_closest_rule_and_field() {
        let s = set();
        let d = evaluate(&s, &pod("dev", "api"), Some(&req(&["orders-api"])));
        let denial = only_denial(&d);
        assert_eq!(denial.role, "orders-api");
        assert_eq!(denial.reason, NO_MATCHING_RULE);
        assert!(
            denial.detail.contains(
                "closest is rule \"shop-api\" (p.yaml:8), which differs on namespace: wanted \
                 \"shop\", got \"dev\""
            ),
            "{}",
            denial.detail
        );

        // The same namespace from another issuer fails on the issuer.
        let mut other = pod("shop", "api");
        other.issuer = "https://other-cluster.example".to_owned();
        let d = evaluate(&s, &other, Some(&req(&["orders-api"])));
        assert!(
            only_denial(&d).detail.contains(&format!(
                "issuer: wanted {K8S:?}, got \"https://other-cluster.example\""
            )),
            "{}",
            only_denial(&d).detail
        );

        let d = evaluate(&s, &pod("shop", "api"), Some(&req(&["unused"])));
        assert_eq!(only_denial(&d).reason, NO_MATCHING_RULE);
        assert_eq!(only_denial(&d).detail, "no rule grants role \"unused\"");
    }

    #[test]
    fn oidc_identity_without_kubernetes_claims_never_matches_namespace_selectors() {
        let s = set();
        // Right issuer, but no `kubernetes.io` claims.
        let id = oidc(K8S, "system:serviceaccount:shop:api");
        assert!(evaluate(&s, &id, None).granted.is_empty());
        let d = evaluate(&s, &id, Some(&req(&["orders-api"])));
        assert!(
            only_denial(&d)
                .detail
                .contains("namespace: wanted \"shop\", got no Kubernetes identity"),
            "{}",
            only_denial(&d).detail
        );
    }

    #[test]
    fn bootstrap_identity_gets_only_roles_bound_to_its_token() {
        let s = set();
        let id = bootstrapped(&["dev-app"]);
        // The rule grants dev-app and reports; the token was minted for dev-app only.
        let d = evaluate(&s, &id, None);
        assert_eq!(granted(&d), vec![("dev-app", "dev-bootstrap")]);
        assert!(d.denied.is_empty());

        let d = evaluate(&s, &id, Some(&req(&["dev-app", "reports"])));
        assert_eq!(granted(&d), vec![("dev-app", "dev-bootstrap")]);
        assert_eq!(d.denied.len(), 1);
        assert_eq!(d.denied[0].role, "reports");
        assert_eq!(d.denied[0].reason, NOT_BOUND_TO_TOKEN);
        assert!(
            d.denied[0]
                .detail
                .contains("the bootstrap token was minted for [\"dev-app\"]"),
            "{}",
            d.denied[0].detail
        );

        // Bound to both: both granted.
        let both = evaluate(&s, &bootstrapped(&["dev-app", "reports"]), None);
        assert_eq!(
            granted(&both),
            vec![("dev-app", "dev-bootstrap"), ("reports", "dev-bootstrap")]
        );

        // A token minted for another role does not match `bootstrap_role: dev-app`.
        let d = evaluate(&s, &bootstrapped(&["reports"]), Some(&req(&["dev-app"])));
        let denial = only_denial(&d);
        assert_eq!(denial.reason, NO_MATCHING_RULE);
        assert!(
            denial.detail.contains(
                "bootstrap_role: wanted \"dev-app\", got a token minted for [\"reports\"]"
            ),
            "{}",
            denial.detail
        );
        // And a workload without a token does not match it either.
        let d = evaluate(&s, &pod("shop", "api"), Some(&req(&["dev-app"])));
        assert!(
            only_denial(&d)
                .detail
                .contains("bootstrap_role: wanted \"dev-app\", got no bootstrap token")
        );
    }

    #[test]
    fn requested_roles_narrow_in_request_order_without_duplicates() {
        let s = set();
        let id = pod("shop", "api");
        let d = evaluate(&s, &id, Some(&req(&["reports"])));
        assert_eq!(granted(&d), vec![("reports", "shop-api")]);
        let d = evaluate(&s, &id, Some(&req(&["reports", "orders-api", "reports"])));
        assert_eq!(
            granted(&d),
            vec![("reports", "shop-api"), ("orders-api", "shop-api")]
        );
        assert!(d.denied.is_empty());
        assert_eq!(evaluate(&s, &id, Some(&[])), Decision::default());

        let d = evaluate(&s, &id, Some(&req(&["orders-api", "ci-deploy"])));
        assert_eq!(granted(&d), vec![("orders-api", "shop-api")]);
        assert_eq!(d.denied.len(), 1);
        assert_eq!(
            (d.denied[0].role.as_str(), d.denied[0].reason),
            ("ci-deploy", NO_MATCHING_RULE)
        );
    }

    #[test]
    fn unknown_role_is_denied_with_a_suggestion() {
        let d = evaluate(&set(), &pod("shop", "api"), Some(&req(&["order-api"])));
        let denial = only_denial(&d);
        assert_eq!(denial.reason, UNKNOWN_ROLE);
        assert_eq!(
            denial.detail,
            "no role named \"order-api\" is defined in the policy (did you mean \"orders-api\"?)"
        );
        assert_eq!(
            d.to_string(),
            "order-api: denied (unknown_role): no role named \"order-api\" is defined in the \
             policy (did you mean \"orders-api\"?)"
        );
    }

    #[test]
    fn explain_allowed() {
        let e = explain(&set(), &pod("shop", "api"), "reports");
        assert!(e.allowed);
        assert_eq!(e.role, "reports");
        let rules: Vec<(&str, bool)> = e
            .checks
            .iter()
            .map(|c| (c.rule.as_str(), c.matched))
            .collect();
        assert_eq!(
            rules,
            vec![
                ("shop-api", true),
                ("shop-any-reports", false),
                ("dev-bootstrap", false)
            ]
        );
        assert!(e.checks.iter().all(|c| c.grants_role));
        assert_eq!(
            e.to_string(),
            "\
role reports: allowed
Allowed: rule \"shop-api\" (p.yaml:8) matches \"system:serviceaccount:shop:api\" and grants role \"reports\".
rules that grant reports:
  rule shop-api (p.yaml:8): matches (on issuer, namespace, service_account)
  rule shop-any-reports (p.yaml:14): does not match (namespace: wanted \"shop-*\", got \"shop\"; matched on issuer)
  rule dev-bootstrap (p.yaml:22): does not match (bootstrap_role: wanted \"dev-app\", got no bootstrap token)"
        );
    }

    #[test]
    fn explain_denied() {
        let e = explain(&set(), &pod("dev", "api"), "orders-api");
        assert!(!e.allowed);
        assert_eq!(e.checks.len(), 1);
        assert_eq!(
            e.checks[0].mismatch.as_deref(),
            Some("namespace: wanted \"shop\", got \"dev\"")
        );
        assert_eq!(
            e.to_string(),
            "\
role orders-api: denied
Denied to \"system:serviceaccount:dev:api\": no rule granting role \"orders-api\" matches; the closest is rule \"shop-api\" (p.yaml:8), which differs on namespace: wanted \"shop\", got \"dev\".
rules that grant orders-api:
  rule shop-api (p.yaml:8): does not match (namespace: wanted \"shop\", got \"dev\"; matched on issuer, service_account)"
        );
    }

    #[test]
    fn explain_lists_every_rule_when_none_grants_the_role() {
        let e = explain(&set(), &pod("shop", "api"), "unused");
        assert!(!e.allowed);
        assert_eq!(e.checks.len(), 4);
        assert!(e.checks.iter().all(|c| !c.grants_role));
        assert!(e.checks[0].matched && e.checks[0].mismatch.is_none());
        let text = e.to_string();
        assert!(
            text.contains("no rule grants unused; every rule:"),
            "{text}"
        );
        assert!(
            text.contains(
                "rule shop-api (p.yaml:8): matches (on issuer, namespace, service_account), but \
                 does not grant this role"
            ),
            "{text}"
        );

        let e = explain(&set(), &pod("shop", "api"), "nope");
        assert!(!e.allowed);
        assert!(
            e.summary.contains("no role named \"nope\""),
            "{}",
            e.summary
        );
        assert_eq!(e.checks.len(), 4);
    }

    #[test]
    fn explain_not_bound_to_token() {
        let e = explain(&set(), &bootstrapped(&["dev-app"]), "reports");
        assert!(!e.allowed);
        assert!(
            e.summary.contains(
                "rule \"dev-bootstrap\" (p.yaml:22) grants role \"reports\", but the bootstrap \
                 token was minted for [\"dev-app\"]"
            ),
            "{}",
            e.summary
        );
        let matched: Vec<&str> = e
            .checks
            .iter()
            .filter(|c| c.matched)
            .map(|c| c.rule.as_str())
            .collect();
        assert_eq!(matched, vec!["dev-bootstrap"]);
    }

    // --- claim and SPIFFE ID selectors (issue 16) ---

    const CLAIMS_POLICY: &str = "\
roles:
  deploy: {backend: jwt, max_ttl_seconds: 300}
  svc: {backend: jwt, max_ttl_seconds: 300}
rules:
  - name: protected-main
    match:
      issuer: https://ci.example
      claims:
        project_path: 'acme/*'
        ref_protected: 'true'
        runner_id: [7, 12]
    roles: [deploy]
  - name: bool-protected
    match:
      issuer: https://ci.example
      claims: {protected: true}
    roles: [deploy]
  - name: shop-workloads
    match: {spiffe_id: 'spiffe://example.org/ns/shop/**'}
    roles: [svc]
";

    fn claims_set() -> PolicySet {
        let parsed = parse_file(
            Path::new("c.yaml"),
            CLAIMS_POLICY,
            &crate::policy::RoleSettings::parse,
        );
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        PolicySet {
            roles: parsed
                .roles
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect(),
            rules: parsed.rules,
            ..PolicySet::default()
        }
    }

    fn ci(claims: serde_json::Value) -> Identity {
        let mut id = oidc(
            "https://ci.example",
            "project_path:acme/app:ref_type:branch:ref:main",
        );
        id.claims = claims.as_object().expect("object").clone();
        id
    }

    fn roles_for(set: &PolicySet, id: &Identity) -> Vec<String> {
        evaluate(set, id, None)
            .granted
            .into_iter()
            .map(|g| format!("{}<-{}", g.role, g.rule))
            .collect()
    }

    #[test]
    fn claim_selectors_match_by_json_type() {
        let set = claims_set();
        let good = serde_json::json!({
            "project_path": "acme/app", "ref_protected": "true", "runner_id": 12,
        });
        assert_eq!(
            roles_for(&set, &ci(good.clone())),
            ["deploy<-protected-main"]
        );
        // The boolean true is not the string "true", nor the string "12" the number 12.
        for (claim, value) in [
            ("ref_protected", serde_json::json!(true)),
            ("runner_id", serde_json::json!("12")),
            ("project_path", serde_json::json!(["acme/app"])),
            ("runner_id", serde_json::json!(8)),
            ("project_path", serde_json::json!("other/app")),
        ] {
            let mut c = good.clone();
            c[claim] = value.clone();
            assert!(roles_for(&set, &ci(c)).is_empty(), "{claim}: {value}");
        }
        // A missing claim never matches; a boolean selector matches only a boolean.
        let mut c = good.clone();
        c.as_object_mut().expect("object").remove("runner_id");
        assert!(roles_for(&set, &ci(c)).is_empty());
        assert_eq!(
            roles_for(&set, &ci(serde_json::json!({"protected": true}))),
            ["deploy<-bool-protected"]
        );
        assert!(roles_for(&set, &ci(serde_json::json!({"protected": "true"}))).is_empty());
        // The same claims from another issuer match nothing.
        let mut other = ci(good);
        other.issuer = "https://elsewhere.example".into();
        assert!(roles_for(&set, &other).is_empty());
    }

    #[test]
    fn spiffe_id_selectors_match_only_verified_spiffe_ids() {
        let set = claims_set();
        let svid = |id: &str| {
            let mut i = oidc("spiffe://example.org", id);
            i.spiffe_id = Some(id.to_owned());
            i
        };
        assert_eq!(
            roles_for(&set, &svid("spiffe://example.org/ns/shop/sa/api")),
            ["svc<-shop-workloads"]
        );
        assert!(roles_for(&set, &svid("spiffe://example.org/ns/dev/sa/api")).is_empty());
        // The same subject from an issuer that is not a trust domain has no SPIFFE ID.
        let plain = oidc(
            "https://issuer.example",
            "spiffe://example.org/ns/shop/sa/api",
        );
        assert!(roles_for(&set, &plain).is_empty());
        let e = explain(&set, &plain, "svc");
        assert!(
            e.checks[0]
                .mismatch
                .as_deref()
                .is_some_and(|m| m.contains("spiffe_id") && m.contains("no SPIFFE ID")),
            "{e}"
        );
    }

    #[test]
    fn explain_shows_which_claim_selector_matched_or_failed() {
        let set = claims_set();
        let id = ci(serde_json::json!({
            "project_path": "acme/app", "ref_protected": true, "runner_id": 7,
        }));
        let e = explain(&set, &id, "deploy");
        assert!(!e.allowed);
        let check = &e.checks[0];
        assert_eq!(check.rule, "protected-main");
        assert_eq!(
            check.mismatch.as_deref(),
            Some("claims.ref_protected: wanted \"true\", got true (boolean)")
        );
        assert_eq!(
            check.matched_on,
            ["issuer", "claims.project_path", "claims.runner_id"]
        );
        assert_eq!(
            e.checks[1].mismatch.as_deref(),
            Some("claims.protected: wanted true (boolean), got no such claim")
        );
        let text = e.to_string();
        assert!(
            text.contains(
                "rule protected-main (c.yaml:5): does not match (claims.ref_protected: wanted \
                 \"true\", got true (boolean); matched on issuer, claims.project_path, \
                 claims.runner_id)"
            ),
            "{text}"
        );
        // A long claim value is shown bounded.
        let long = ci(serde_json::json!({"project_path": "x".repeat(500)}));
        let m = explain(&set, &long, "deploy").checks[0]
            .mismatch
            .clone()
            .expect("mismatch");
        assert!(m.len() < 200 && m.contains('…'), "{m}");
        let json = serde_json::to_value(&e).expect("json");
        assert_eq!(json["checks"][0]["matched_on"][1], "claims.project_path");
    }
}
