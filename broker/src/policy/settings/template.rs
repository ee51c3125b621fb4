//! `{{field}}` placeholders in role settings: parsed at policy load, filled from the
//! workload's identity at issuance.
//!
//! This is plain substitution, not a template language: a placeholder names one identity
//! field ([`Field`]) and nothing is evaluated. In a JSON document ([`JsonTemplate`])
//! placeholders may stand only inside string values (object keys are never templated), so a
//! value can never change a document's structure. Values are checked before they are
//! substituted: only characters that carry no meaning in IAM or Vault paths or in JSON strings
//! are accepted (no `*`, `?`, `$`, `{`, `}`, quotes, backslashes or whitespace), so an identity
//! cannot widen a policy with a wildcard or a policy variable.
//!
//! Parsing happens once, at load ([`Template::parse`], [`JsonTemplate::parse`]); issuance only
//! concatenates the parsed pieces with the identity's values.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use crate::authn::Identity;

/// Longest value substituted for a placeholder.
const MAX_VALUE_BYTES: usize = 256;

/// An identity field a placeholder may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `{{namespace}}`: the Kubernetes namespace.
    Namespace,
    /// `{{service_account}}`: the Kubernetes service account.
    ServiceAccount,
    /// `{{subject}}`: the identity's subject.
    Subject,
}

impl Field {
    /// Every field, in the order error messages list them.
    pub const ALL: [Self; 3] = [Self::Namespace, Self::ServiceAccount, Self::Subject];

    /// The name written between the braces.
    pub fn name(self) -> &'static str {
        match self {
            Self::Namespace => "namespace",
            Self::ServiceAccount => "service_account",
            Self::Subject => "subject",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The placeholders a setting may use, as written: `{{namespace}}, {{service_account}}, ...`.
fn valid_placeholders() -> String {
    Field::ALL
        .iter()
        .map(|f| format!("{{{{{f}}}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A template that cannot be used: the error names the placeholder or the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A `{{` without its `}}`.
    #[error("unclosed `{{{{` in `{template}`")]
    Unclosed {
        /// The string that holds it.
        template: String,
    },
    /// A placeholder that names no identity field.
    #[error(
        "unknown placeholder `{{{{{name}}}}}` (valid: {})",
        valid_placeholders()
    )]
    UnknownPlaceholder {
        /// The name between the braces, trimmed.
        name: String,
    },
    /// A placeholder in a JSON object key.
    #[error("object key `{key}` cannot hold a placeholder")]
    PlaceholderInKey {
        /// The key.
        key: String,
    },
}

/// Why an identity cannot fill a template. The caller's fault: the identity lacks the field or
/// its value is unsafe to substitute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The identity has no value for the field (only Kubernetes identities have a namespace
    /// and a service account).
    #[error("the identity has no `{0}` (the role needs a Kubernetes service-account identity)")]
    Missing(Field),
    /// The identity's value holds characters that may not be substituted.
    #[error(
        "the identity's `{0}` contains characters that cannot be substituted safely (allowed: A-Z a-z 0-9 . _ - : @ /)"
    )]
    Unsafe(Field),
}

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

    /// The value of `field`, checked: present and safe to substitute.
    fn get(&self, field: Field) -> Result<&'a str, RenderError> {
        let value = match field {
            Field::Namespace => self.namespace,
            Field::ServiceAccount => self.service_account,
            Field::Subject => Some(self.subject),
        }
        .ok_or(RenderError::Missing(field))?;
        if is_safe_value(value) {
            Ok(value)
        } else {
            Err(RenderError::Unsafe(field))
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

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Text copied as is.
    Text(String),
    /// A placeholder.
    Field(Field),
}

/// Cuts `s` at its placeholders. Fails on an unknown name or an unclosed `{{`.
fn split(s: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError::Unclosed {
                template: s.to_owned(),
            });
        };
        let name = after[..end].trim();
        let field = Field::from_name(name).ok_or_else(|| TemplateError::UnknownPlaceholder {
            name: name.to_owned(),
        })?;
        parts.push(Part::Field(field));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// Appends the parts, filling each placeholder from `values`.
fn fill(parts: &[Part], values: &Values<'_>, out: &mut String) -> Result<(), RenderError> {
    for part in parts {
        match part {
            Part::Text(text) => out.push_str(text),
            Part::Field(field) => out.push_str(values.get(*field)?),
        }
    }
    Ok(())
}

/// A string setting with placeholders, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses a string setting. Fails on an unknown placeholder or an unclosed `{{`.
    pub fn parse(s: &str) -> Result<Self, TemplateError> {
        Ok(Self {
            source: s.to_owned(),
            parts: split(s)?,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The fields its placeholders name, in order.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(*f),
            Part::Text(_) => None,
        })
    }

    /// Fills the placeholders from an identity's values. A template without placeholders is
    /// returned without copying.
    pub fn render(&self, values: &Values<'_>) -> Result<Cow<'_, str>, RenderError> {
        if !self.parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Ok(Cow::Borrowed(&self.source));
        }
        let mut out = String::with_capacity(self.source.len());
        fill(&self.parts, values, &mut out)?;
        Ok(Cow::Owned(out))
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A JSON document whose string values may hold placeholders, parsed into its compact text cut
/// at the placeholders: filling it is concatenation, and gives exactly the compact text of the
/// document with its strings filled (values are safe characters that JSON never escapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonTemplate {
    parts: Vec<Part>,
    /// Characters of the compact text with the placeholders as written.
    unfilled_chars: usize,
}

impl JsonTemplate {
    /// Parses a document. Fails on a bad placeholder in a string or any placeholder in a key.
    pub fn parse(doc: &Value) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        build(doc, &mut parts)?;
        Ok(Self {
            parts,
            unfilled_chars: doc.to_string().chars().count(),
        })
    }

    /// The length in characters of the compact text with the placeholders unfilled.
    pub fn unfilled_chars(&self) -> usize {
        self.unfilled_chars
    }

    /// The compact JSON text with the placeholders filled from an identity's values.
    pub fn render(&self, values: &Values<'_>) -> Result<String, RenderError> {
        let mut out = String::with_capacity(self.unfilled_chars + 64);
        fill(&self.parts, values, &mut out)?;
        Ok(out)
    }
}

/// Appends `text` to the parts, merging it with a preceding text part.
fn push_text(parts: &mut Vec<Part>, text: &str) {
    if let Some(Part::Text(last)) = parts.last_mut() {
        last.push_str(text);
    } else {
        parts.push(Part::Text(text.to_owned()));
    }
}

/// `s` as the inside of a JSON string literal (escaped as serde_json escapes it).
fn escaped(s: &str) -> String {
    let quoted = Value::String(s.to_owned()).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// Appends the compact text of `v` (keys in the order serde_json writes them) to the parts.
fn build(v: &Value, parts: &mut Vec<Part>) -> Result<(), TemplateError> {
    match v {
        Value::String(s) => {
            push_text(parts, "\"");
            for part in split(s)? {
                match part {
                    Part::Text(text) => push_text(parts, &escaped(&text)),
                    field @ Part::Field(_) => parts.push(field),
                }
            }
            push_text(parts, "\"");
        }
        Value::Array(items) => {
            push_text(parts, "[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    push_text(parts, ",");
                }
                build(item, parts)?;
            }
            push_text(parts, "]");
        }
        Value::Object(map) => {
            push_text(parts, "{");
            for (i, (key, value)) in map.iter().enumerate() {
                if key.contains("{{") {
                    return Err(TemplateError::PlaceholderInKey { key: key.clone() });
                }
                if i > 0 {
                    push_text(parts, ",");
                }
                push_text(parts, &Value::String(key.clone()).to_string());
                push_text(parts, ":");
                build(value, parts)?;
            }
            push_text(parts, "}");
        }
        other => push_text(parts, &other.to_string()),
    }
    Ok(())
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

    fn render(s: &str, v: &Values<'_>) -> Result<String, RenderError> {
        Ok(Template::parse(s)
            .expect("valid template")
            .render(v)?
            .into_owned())
    }

    /// The straightforward way to fill a document: fill every string, then serialize. The
    /// parsed [`JsonTemplate`] must produce exactly its text.
    fn reference_render(v: &Value, values: &Values<'_>) -> Result<Value, RenderError> {
        Ok(match v {
            Value::String(s) => Value::String(render(s, values)?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| reference_render(i, values))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), reference_render(v, values)?)))
                    .collect::<Result<_, RenderError>>()?,
            ),
            other => other.clone(),
        })
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
        let t = Template::parse("{{namespace}}-{{subject}}").expect("parse");
        assert_eq!(
            t.fields().collect::<Vec<_>>(),
            [Field::Namespace, Field::Subject]
        );
        assert_eq!(t.as_str(), "{{namespace}}-{{subject}}");
        // A template without placeholders needs no identity and is not copied.
        let plain = Template::parse("apps/shared/db").expect("parse");
        let none = values(None, None, "x y");
        assert!(matches!(
            plain.render(&none),
            Ok(Cow::Borrowed("apps/shared/db"))
        ));
    }

    #[test]
    fn hostile_values_cannot_widen_or_break_a_document() {
        for bad in [
            "*",
            "a*",
            "x?",
            "${aws:username}",
            "a\"b",
            "a\\b",
            "a b",
            "",
            "{{namespace}}",
        ] {
            let v = values(Some(bad), Some("api"), "s");
            let err = render("arn:{{namespace}}", &v).expect_err(bad);
            assert_eq!(err, RenderError::Unsafe(Field::Namespace), "{bad}");
            assert!(err.to_string().contains("`namespace`"), "{err}");
        }
        let doc = JsonTemplate::parse(&json!({"Resource": ["arn:aws:s3:::b/{{subject}}"], "n": 1}))
            .expect("parse");
        let v = values(None, None, "a\",\"Effect\":\"Allow");
        assert_eq!(doc.render(&v), Err(RenderError::Unsafe(Field::Subject)));
        let v = values(None, None, "team-a");
        let text = doc.render(&v).expect("render");
        assert_eq!(
            serde_json::from_str::<Value>(&text).expect("valid JSON"),
            json!({"Resource": ["arn:aws:s3:::b/team-a"], "n": 1})
        );
    }

    #[test]
    fn a_parsed_document_renders_exactly_what_filling_and_serializing_would() {
        let docs = [
            json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Action": ["s3:GetObject", "s3:List*"],
                "Resource": "arn:aws:s3:::data/{{namespace}}/{{ service_account }}/*"}]}),
            json!({"tab\there": "a\tb{{subject}}c\"d\\e", "é": ["ü{{namespace}}", 1.5, -3, null,
                true, [], {}], "z": {"nested": {"deeper": "{{subject}}{{subject}}"}}}),
            json!(["{{namespace}}", "x"]),
            json!("just a string"),
            json!({"Condition": {"StringLike": {"s3:prefix": ["${aws:PrincipalTag/x}/*"]}},
                "big": 12345678901234567890_u64, "f": 1e-7}),
        ];
        let identities = [
            values(Some("shop"), Some("api"), "system:serviceaccount:shop:api"),
            values(Some("a.b-c_d"), Some("x@y/z"), "s:t"),
        ];
        for doc in &docs {
            let t = JsonTemplate::parse(doc).expect("parse");
            assert_eq!(t.unfilled_chars(), doc.to_string().chars().count());
            for v in &identities {
                let expected = reference_render(doc, v).expect("reference").to_string();
                assert_eq!(t.render(v).expect("render"), expected, "{doc}");
            }
        }
        // Missing fields fail the same way in both.
        let bootstrap = values(None, None, "bootstrap:bt_1");
        let t = JsonTemplate::parse(&docs[0]).expect("parse");
        assert_eq!(
            t.render(&bootstrap),
            Err(RenderError::Missing(Field::Namespace))
        );
        assert_eq!(
            reference_render(&docs[0], &bootstrap),
            Err(RenderError::Missing(Field::Namespace))
        );
    }

    #[test]
    fn missing_fields_and_bad_placeholders_are_named() {
        let v = values(None, None, "bootstrap:bt_1");
        let err = render("{{namespace}}", &v).expect_err("no namespace");
        assert_eq!(err, RenderError::Missing(Field::Namespace));
        assert!(err.to_string().contains("Kubernetes"), "{err}");
        let err = Template::parse("{{pod}}").expect_err("unknown");
        assert_eq!(
            err,
            TemplateError::UnknownPlaceholder { name: "pod".into() }
        );
        assert_eq!(
            err.to_string(),
            "unknown placeholder `{{pod}}` (valid: {{namespace}}, {{service_account}}, {{subject}})"
        );
        let err = Template::parse("a{{namespace").expect_err("unclosed");
        assert_eq!(err.to_string(), "unclosed `{{` in `a{{namespace`");
        assert_eq!(
            JsonTemplate::parse(&json!({"{{namespace}}": 1})),
            Err(TemplateError::PlaceholderInKey {
                key: "{{namespace}}".into()
            })
        );
        assert!(matches!(
            JsonTemplate::parse(&json!({"a": ["{{nope}}"]})),
            Err(TemplateError::UnknownPlaceholder { .. })
        ));
        JsonTemplate::parse(&json!({"a": ["{{namespace}}", 3, null]})).expect("fine");
    }
}
