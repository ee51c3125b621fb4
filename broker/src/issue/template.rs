//! `{{field}}` placeholders in role settings, filled from the workload's identity.
//!
//! This is plain substitution, not a template language: a placeholder names one identity
//! field ([`FIELDS`]), nothing is evaluated, and substitution happens inside JSON string
//! values only (object keys are never templated), so a value can never change a document's
//! structure. Values are checked before they are substituted: only characters that carry no
//! meaning in IAM or Vault paths are accepted (no `*`, `?`, `$`, `{`, `}`, quotes or
//! whitespace), so an identity cannot widen a policy with a wildcard or a policy variable.

use serde_json::Value;

use crate::authn::Identity;

/// The placeholders a setting may use.
pub const FIELDS: &[&str] = &["namespace", "service_account", "subject"];

/// Longest value substituted for a placeholder.
const MAX_VALUE_BYTES: usize = 256;

/// The values of the placeholders for one identity.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    /// Kubernetes namespace, if the identity has one.
    pub namespace: Option<&'a str>,
    /// Kubernetes service account, if the identity has one.
    pub service_account: Option<&'a str>,
    /// The identity's subject.
    pub subject: &'a str,
}

impl<'a> Values<'a> {
    /// The values of an identity.
    pub fn of(identity: &'a Identity) -> Self {
        Self {
            namespace: identity.kubernetes.as_ref().map(|k| k.namespace.as_str()),
            service_account: identity
                .kubernetes
                .as_ref()
                .map(|k| k.service_account.as_str()),
            subject: &identity.subject,
        }
    }

    fn get(&self, field: &str) -> Option<&'a str> {
        match field {
            "namespace" => self.namespace,
            "service_account" => self.service_account,
            "subject" => Some(self.subject),
            _ => None,
        }
    }
}

/// Whether `value` may be substituted: 1–256 characters from `A-Z a-z 0-9 . _ - : @ /`.
pub fn is_safe_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VALUE_BYTES
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:@/".contains(c))
}

/// The placeholder names in `s`, in order. Fails on an unknown name or an unclosed `{{`.
pub fn placeholders(s: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("unclosed `{{{{` in `{s}`"));
        };
        let name = after[..end].trim();
        if !FIELDS.contains(&name) {
            return Err(format!(
                "unknown placeholder `{{{{{name}}}}}` (valid: {})",
                FIELDS
                    .iter()
                    .map(|f| format!("{{{{{f}}}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        names.push(name);
        rest = &after[end + 2..];
    }
    Ok(names)
}

/// Fills the placeholders of `s`. The error says which field is missing or unusable.
pub fn render(s: &str, values: &Values<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("unclosed `{{{{` in `{s}`"));
        };
        let name = after[..end].trim();
        let Some(value) = values.get(name) else {
            return if FIELDS.contains(&name) {
                Err(format!(
                    "the identity has no `{name}` (the role needs a Kubernetes service-account identity)"
                ))
            } else {
                Err(format!("unknown placeholder `{name}`"))
            };
        };
        if !is_safe_value(value) {
            return Err(format!(
                "the identity's `{name}` contains characters that cannot be substituted safely (allowed: A-Z a-z 0-9 . _ - : @ /)"
            ));
        }
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks every string of a JSON document for valid placeholders; keys may have none.
pub fn check_json(v: &Value) -> Result<(), String> {
    match v {
        Value::String(s) => placeholders(s).map(|_| ()),
        Value::Array(items) => items.iter().try_for_each(check_json),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.contains("{{") {
                return Err(format!("object key `{k}` cannot hold a placeholder"));
            }
            check_json(v)
        }),
        _ => Ok(()),
    }
}

/// Fills the placeholders in every string value of a JSON document.
pub fn render_json(v: &Value, values: &Values<'_>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(render(s, values)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_json(i, values))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, values)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn values<'a>(ns: Option<&'a str>, sa: Option<&'a str>, sub: &'a str) -> Values<'a> {
        Values {
            namespace: ns,
            service_account: sa,
            subject: sub,
        }
    }

    #[test]
    fn substitutes_known_fields_and_leaves_iam_variables_alone() {
        let v = values(Some("shop"), Some("api"), "system:serviceaccount:shop:api");
        assert_eq!(
            render(
                "arn:aws:s3:::bucket/{{namespace}}/{{ service_account }}/*",
                &v
            )
            .expect("render"),
            "arn:aws:s3:::bucket/shop/api/*"
        );
        assert_eq!(
            render("${aws:PrincipalTag/x} {{subject}}", &v).expect("render"),
            "${aws:PrincipalTag/x} system:serviceaccount:shop:api"
        );
    }

    #[test]
    fn hostile_values_cannot_widen_or_break_a_document() {
        for bad in [
            "*",
            "a*",
            "x?",
            "${aws:username}",
            "a\"b",
            "a b",
            "",
            "{{namespace}}",
        ] {
            let v = values(Some(bad), Some("api"), "s");
            let err = render("arn:{{namespace}}", &v).expect_err(bad);
            assert!(err.contains("`namespace`"), "{err}");
        }
        let doc = json!({"Resource": ["arn:aws:s3:::b/{{subject}}"], "n": 1});
        let v = values(None, None, "a\",\"Effect\":\"Allow");
        assert!(render_json(&doc, &v).is_err());
        let v = values(None, None, "team-a");
        assert_eq!(
            render_json(&doc, &v).expect("render"),
            json!({"Resource": ["arn:aws:s3:::b/team-a"], "n": 1})
        );
    }

    #[test]
    fn missing_fields_and_bad_placeholders_are_named() {
        let v = values(None, None, "bootstrap:bt_1");
        let err = render("{{namespace}}", &v).expect_err("no namespace");
        assert!(err.contains("Kubernetes"), "{err}");
        assert!(
            placeholders("{{pod}}")
                .expect_err("unknown")
                .contains("{{pod}}")
        );
        assert!(
            placeholders("{{namespace")
                .expect_err("unclosed")
                .contains("unclosed")
        );
        assert_eq!(
            placeholders("a{{namespace}}b{{subject}}").expect("ok"),
            ["namespace", "subject"]
        );
        assert!(check_json(&json!({"{{namespace}}": 1})).is_err());
        assert!(check_json(&json!({"a": ["{{nope}}"]})).is_err());
        check_json(&json!({"a": ["{{namespace}}", 3, null]})).expect("fine");
    }
}
