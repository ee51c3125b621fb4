//! Secrets in an image's config: every `Env` entry, every label, and every
//! `history[].created_by` — build arguments (`|1 NPM_TOKEN=… /bin/sh -c …`) and `#(nop) ENV` /
//! `LABEL` / `ARG` values, then the whole command. Pure: the config is already parsed.

use crate::manifest::ImageConfig;
use crate::report::{Finding, Location};
use crate::rules::{RuleSet, SECRET_NAME_RULE, secret_assignment};

/// Finds secrets in the config: `Env`, labels and history. Pure.
pub fn scan_config(
    cfg: &ImageConfig,
    rules: &RuleSet,
    layer_steps: &[Option<usize>],
) -> Vec<Finding> {
    let mut out = Vec::new();
    for e in &cfg.env {
        let (name, value) = e.split_once('=').unwrap_or((e.as_str(), ""));
        let loc = Location::Env {
            name: name.to_owned(),
        };
        scan_assignment(rules, name, value, &loc, &mut out, &mut Vec::new());
    }
    for (name, value) in &cfg.labels {
        let loc = Location::Label { name: name.clone() };
        scan_assignment(rules, name, value, &loc, &mut out, &mut Vec::new());
    }
    for (step, h) in cfg.history.iter().enumerate() {
        let Some(cmd) = &h.created_by else { continue };
        let layer_index = if h.empty_layer {
            None
        } else {
            layer_steps.iter().position(|s| *s == Some(step))
        };
        let mut seen: Vec<(usize, Vec<u8>)> = Vec::new();
        for (name, value) in history_assignments(cmd) {
            let loc = Location::History {
                step,
                layer_index,
                name: Some(name.to_owned()),
            };
            scan_assignment(rules, name, value, &loc, &mut out, &mut seen);
        }
        let loc = Location::History {
            step,
            layer_index,
            name: None,
        };
        for m in rules.scan(cmd.as_bytes(), false) {
            let value = &cmd.as_bytes()[m.start..m.end];
            // Skip what an assignment of this step already reported (under any rule).
            if seen.iter().any(|(_, v)| v == value) {
                continue;
            }
            seen.push((m.rule, value.to_vec()));
            out.push(Finding::new(&rules.rules[m.rule].def, value, loc.clone()));
        }
    }
    out
}

/// `name=value` pairs a history entry records: build arguments (`|2 A=1 B=2 /bin/sh -c ...`)
/// and `#(nop) ENV` / `#(nop) LABEL` / `ARG` values. Pure.
pub fn history_assignments(cmd: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = cmd.trim_start();
    if let Some(after) = rest.strip_prefix('|') {
        let (n, tail) = after.split_once(' ').unwrap_or((after, ""));
        if let Ok(n) = n.parse::<usize>() {
            let mut tail = tail;
            for _ in 0..n.min(256) {
                let t = tail.trim_start();
                let (tok, next) = t.split_once(' ').unwrap_or((t, ""));
                if let Some((k, v)) = tok.split_once('=') {
                    out.push((k, v));
                }
                tail = next;
            }
            rest = tail;
        }
    }
    for marker in ["#(nop) ENV ", "#(nop) LABEL ", "#(nop) ARG "] {
        if let Some(pos) = rest.find(marker) {
            let body = &rest[pos + marker.len()..];
            let tokens: Vec<&str> = body.split_whitespace().collect();
            if tokens.first().is_some_and(|t| !t.contains('=')) && marker == "#(nop) ENV " {
                // Legacy `ENV KEY value with spaces`.
                let key = tokens[0];
                let value = body.trim_start()[key.len()..].trim();
                out.push((key, value));
            } else {
                for t in tokens {
                    if let Some((k, v)) = t.split_once('=') {
                        out.push((k.trim_matches('"'), v.trim_matches('"').trim_matches('\'')));
                    }
                }
            }
        }
    }
    out
}

/// Scans one `name=value` assignment: provider rules on `name=value`, then the secret-name
/// rule if the name says secret and no specific rule matched the value.
fn scan_assignment(
    rules: &RuleSet,
    name: &str,
    value: &str,
    loc: &Location,
    out: &mut Vec<Finding>,
    seen: &mut Vec<(usize, Vec<u8>)>,
) {
    let text = format!("{name}={value}");
    let value_start = name.len() + 1;
    let secret_name = secret_assignment(name, value);
    let mut covered = false;
    for m in rules.scan(text.as_bytes(), false) {
        let def = &rules.rules[m.rule].def;
        if secret_name && def.priority == 0 {
            continue;
        }
        if m.end > value_start {
            covered = true;
        }
        let v = &text.as_bytes()[m.start..m.end];
        if seen.iter().any(|(r, s)| *r == m.rule && s == v) {
            continue;
        }
        seen.push((m.rule, v.to_vec()));
        out.push(Finding::new(def, v, loc.clone()));
    }
    if secret_name && !covered {
        let v = value.trim().as_bytes();
        let idx = usize::MAX;
        if !seen.iter().any(|(r, s)| *r == idx && s == v) {
            seen.push((idx, v.to_vec()));
            out.push(Finding::new(&SECRET_NAME_RULE, v, loc.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::HistoryEntry;
    use crate::rules::tests::{ALNUM, B64, UPPER32, fake};

    fn ids(f: &[Finding]) -> Vec<(String, String)> {
        f.iter()
            .map(|f| {
                let loc = match &f.location {
                    Location::Env { name } => format!("env:{name}"),
                    Location::Label { name } => format!("label:{name}"),
                    Location::History { step, name, .. } => {
                        format!("history:{step}:{}", name.clone().unwrap_or_default())
                    }
                    Location::File { path, .. } => format!("file:{path}"),
                };
                (f.rule.clone(), loc)
            })
            .collect()
    }

    #[test]
    fn history_assignment_forms() {
        assert_eq!(
            history_assignments("|2 NPM_TOKEN=abc GIT_REF=main /bin/sh -c npm ci"),
            vec![("NPM_TOKEN", "abc"), ("GIT_REF", "main")]
        );
        assert_eq!(
            history_assignments("/bin/sh -c #(nop) ENV A=1 B=two"),
            vec![("A", "1"), ("B", "two")]
        );
        assert_eq!(
            history_assignments("/bin/sh -c #(nop) ENV TOKEN some value"),
            vec![("TOKEN", "some value")]
        );
        assert_eq!(
            history_assignments("/bin/sh -c #(nop) LABEL k=\"v\""),
            vec![("k", "v")]
        );
        assert!(history_assignments("/bin/sh -c echo hi").is_empty());
        assert!(history_assignments("|x").is_empty());
    }

    #[test]
    fn config_env_labels_and_history() {
        let akia = format!("AKIA{}", fake(UPPER32, 16, 90));
        let sk = fake(B64, 40, 91);
        let npm = format!("npm_{}", fake(ALNUM, 36, 92));
        let cfg = ImageConfig {
            env: vec![
                "PATH=/usr/bin".into(),
                format!("AWS_ACCESS_KEY_ID={akia}"),
                format!("AWS_SECRET_ACCESS_KEY={sk}"),
                "DB_PASSWORD=hunter22".into(),
                "DB_PASSWORD_FILE=/run/secrets/db".into(),
                "API_TOKEN=${API_TOKEN}".into(),
            ],
            labels: [("maintainer".to_owned(), "a@b.c".to_owned())].into(),
            history: vec![
                HistoryEntry {
                    created_by: Some("/bin/sh -c #(nop) ADD file:abc in /".into()),
                    empty_layer: false,
                },
                HistoryEntry {
                    created_by: Some("/bin/sh -c #(nop) ENV DB_PASSWORD=hunter22".into()),
                    empty_layer: true,
                },
                HistoryEntry {
                    created_by: Some(format!(
                        "|1 NPM_TOKEN={npm} /bin/sh -c echo \"//r/:_authToken=$NPM_TOKEN\" > .npmrc && npm ci"
                    )),
                    empty_layer: false,
                },
            ],
            diff_ids: vec![],
            platform: None,
        };
        let f = scan_config(&cfg, RuleSet::builtin(), &[Some(0), Some(2)]);
        assert_eq!(
            ids(&f),
            vec![
                ("aws-access-key-id".into(), "env:AWS_ACCESS_KEY_ID".into()),
                (
                    "aws-secret-access-key".into(),
                    "env:AWS_SECRET_ACCESS_KEY".into()
                ),
                ("secret-env-name".into(), "env:DB_PASSWORD".into()),
                ("secret-env-name".into(), "history:1:DB_PASSWORD".into()),
                ("npm-token".into(), "history:2:NPM_TOKEN".into()),
            ]
        );
        match &f[4].location {
            Location::History { layer_index, .. } => assert_eq!(*layer_index, Some(1)),
            other => panic!("{other:?}"),
        }
    }
}
