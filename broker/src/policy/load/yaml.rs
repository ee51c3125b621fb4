//! A small YAML tree that remembers the line of every node, built from `yaml-rust2`'s event
//! stream. Policy files need line numbers for every role, rule and field, which serde-based
//! loaders do not keep.
//!
//! Deliberately smaller than YAML: one document per file, no aliases (no "billion laughs"),
//! no tags, bounded nesting, and scalars kept as text (the caller decides what a field's type
//! is). Duplicate mapping keys are reported instead of silently keeping one.

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// Deepest nesting of sequences and mappings accepted. Policies need about six levels.
pub(crate) const MAX_DEPTH: usize = 32;

/// A YAML node and the 1-based line where it starts.
#[derive(Debug)]
pub(crate) struct Node {
    /// 1-based line.
    pub line: usize,
    /// The content.
    pub value: Value,
}

/// The content of a node.
#[derive(Debug)]
pub(crate) enum Value {
    /// A scalar as written; `plain` when it was not quoted or a block scalar.
    Scalar { text: String, plain: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order, keys unique.
    Map(Vec<Entry>),
}

/// One key of a mapping.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The key text.
    pub key: String,
    /// The key's 1-based line.
    pub key_line: usize,
    /// The value.
    pub value: Node,
}

impl Node {
    /// Whether this is a plain scalar YAML reads as null (`~`, `null`, or nothing at all).
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A short description of the node's type for error messages.
    pub fn describe(&self) -> String {
        match &self.value {
            _ if self.is_null() => "nothing (null)".to_owned(),
            Value::Scalar { text, .. } => format!("{:?}", truncate(text, 40)),
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        }
    }
}

/// Cuts `s` to at most `max` characters, marking the cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// A parsed document: its root (None when the file is empty or only comments) and
/// non-fatal problems (duplicate keys), as (line, message).
#[derive(Debug, Default)]
pub(crate) struct Document {
    pub root: Option<Node>,
    pub problems: Vec<(usize, String)>,
}

enum Frame {
    Seq {
        line: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        entries: Vec<Entry>,
        key: Option<(String, usize)>,
    },
}

/// Parses `text`. A syntax error, or a YAML feature policy files do not accept, is fatal and
/// returned as (line, message).
pub(crate) fn parse(text: &str) -> Result<Document, (usize, String)> {
    let mut parser = Parser::new_from_str(text);
    let mut doc = Document::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut documents = 0usize;
    loop {
        let (event, mark) = parser.next_token().map_err(|e| {
            (
                e.marker().line().max(1),
                format!("YAML syntax error: {}", e.info()),
            )
        })?;
        let line = mark.line().max(1);
        let node = match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => continue,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err((
                        line,
                        "a policy file holds one YAML document, but a second one (`---`) starts \
                         here; move it to its own file or merge the two"
                            .to_owned(),
                    ));
                }
                continue;
            }
            Event::Alias(_) => {
                return Err((
                    line,
                    "YAML aliases (`*name`) are not supported in policy files; write the value \
                     out in full"
                        .to_owned(),
                ));
            }
            Event::Scalar(_, _, _, Some(_))
            | Event::SequenceStart(_, Some(_))
            | Event::MappingStart(_, Some(_)) => {
                return Err((
                    line,
                    "YAML tags (`!name`) are not supported in policy files; remove the tag"
                        .to_owned(),
                ));
            }
            Event::Scalar(text, style, _, None) => Node {
                line,
                value: Value::Scalar {
                    text,
                    plain: style == TScalarStyle::Plain,
                },
            },
            Event::SequenceStart(_, None) | Event::MappingStart(_, None) => {
                if stack.len() >= MAX_DEPTH {
                    return Err((
                        line,
                        format!(
                            "nested more than {MAX_DEPTH} levels deep; policies need far fewer"
                        ),
                    ));
                }
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        line,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        line,
                        entries: Vec::new(),
                        key: None,
                    }
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq { line, items }) => Node {
                    line,
                    value: Value::Seq(items),
                },
                Some(Frame::Map { line, entries, .. }) => Node {
                    line,
                    value: Value::Map(entries),
                },
                // The parser never ends a collection it did not start; tolerate it anyway.
                None => continue,
            },
        };
        match stack.last_mut() {
            None => doc.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => match node.value {
                    Value::Scalar { text, .. } => *key = Some((text, node.line)),
                    _ => {
                        return Err((
                            node.line,
                            "a mapping key must be a plain string, not a list or mapping"
                                .to_owned(),
                        ));
                    }
                },
                Some((key, key_line)) => {
                    if let Some(first) = entries.iter().find(|e| e.key == key) {
                        doc.problems.push((
                            key_line,
                            format!(
                                "duplicate key {key:?} (first at line {}); YAML would keep only \
                                 one of them, so merge them or remove one",
                                first.key_line
                            ),
                        ));
                    } else {
                        entries.push(Entry {
                            key,
                            key_line,
                            value: node,
                        });
                    }
                }
            },
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Node {
        parse(text).expect("parses").root.expect("has a root")
    }

    #[test]
    fn nodes_carry_their_lines() {
        let n = root(
            "# comment\nroles:\n  a:\n    backend: jwt\nrules:\n  - name: r\n    roles: [a]\n",
        );
        let Value::Map(top) = &n.value else {
            panic!("not a map")
        };
        assert_eq!((top[0].key.as_str(), top[0].key_line), ("roles", 2));
        assert_eq!((top[1].key.as_str(), top[1].key_line), ("rules", 5));
        let Value::Map(roles) = &top[0].value.value else {
            panic!("roles not a map")
        };
        assert_eq!((roles[0].key.as_str(), roles[0].key_line), ("a", 3));
        let Value::Seq(rules) = &top[1].value.value else {
            panic!("rules not a seq")
        };
        assert_eq!(rules[0].line, 6);
        let Value::Map(rule) = &rules[0].value else {
            panic!("rule not a map")
        };
        assert_eq!(rule[1].key_line, 7);
        assert_eq!(rule[1].value.line, 7);
    }

    #[test]
    fn quoted_scalars_are_not_plain() {
        let n = root("a: '900'\nb: 900\n");
        let Value::Map(m) = &n.value else {
            panic!("not a map")
        };
        assert!(matches!(
            &m[0].value.value,
            Value::Scalar { plain: false, .. }
        ));
        assert!(matches!(
            &m[1].value.value,
            Value::Scalar { plain: true, .. }
        ));
    }

    #[test]
    fn empty_and_comment_only_files_have_no_root() {
        assert!(parse("").expect("parses").root.is_none());
        assert!(parse("# nothing yet\n").expect("parses").root.is_none());
    }

    #[test]
    fn syntax_errors_report_their_line() {
        let (line, msg) = parse("a: 1\nb: [1, 2\n").expect_err("unclosed flow sequence");
        assert!(msg.starts_with("YAML syntax error"), "{msg}");
        assert!(line >= 2, "line {line}");
        let (line, _) = parse("a: 1\n b: 2\n  c: 3\n").expect_err("bad indentation");
        assert_eq!(line, 2);
    }

    #[test]
    fn duplicate_keys_are_reported_and_first_kept() {
        let doc = parse("a: 1\nb: 2\na: 3\n").expect("parses");
        assert_eq!(doc.problems.len(), 1);
        assert_eq!(doc.problems[0].0, 3);
        assert!(doc.problems[0].1.contains("first at line 1"));
    }

    #[test]
    fn aliases_tags_second_documents_and_deep_nesting_are_refused() {
        assert_eq!(parse("a: &x 1\nb: *x\n").expect_err("alias").0, 2);
        assert_eq!(parse("a: 1\nb: !!str 2\n").expect_err("tag").0, 2);
        assert_eq!(parse("a: 1\n---\nb: 2\n").expect_err("two documents").0, 2);
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).expect_err("too deep").1.contains("nested"));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&ok).is_ok());
    }
}
