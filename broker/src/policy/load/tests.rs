use std::cell::RefCell;
use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::policy::settings::jwt::{Audience, JwtRoleSettings, JwtSettingsError};
use crate::policy::settings::sts::StsSettingsError;

/// Parses roles as a broker with only `jwt` configured does (`issue::Backends::validate_role`).
fn jwt_only(spec: &RoleSpec<'_>) -> Result<RoleSettings, RoleError> {
    if spec.backend != "jwt" && RoleSettings::KINDS.contains(&spec.backend) {
        return Err(RoleError::NotConfigured {
            backend: spec.backend.to_owned(),
            configured: vec!["jwt".to_owned()],
        });
    }
    RoleSettings::parse(spec)
}

/// The settings of a `jwt` role with the given audience and scope claim.
fn jwt_settings(audience: &str, scope: &[&str]) -> RoleSettings {
    let scope: Vec<String> = scope.iter().map(|s| (*s).to_owned()).collect();
    let settings = json!({"audience": audience});
    RoleSettings::Jwt(
        JwtRoleSettings::parse(&RoleSpec {
            name: "any",
            backend: "jwt",
            scope: &scope,
            max_ttl_seconds: 60,
            settings: settings.as_object().expect("object"),
        })
        .expect("valid"),
    )
}

fn write_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write policy file");
    }
    dir
}

fn load(files: &[(&str, &str)]) -> Result<PolicySet, PolicyErrors> {
    let dir = write_dir(files);
    load_dir(dir.path(), &jwt_only)
}

/// The errors of a directory that must not load, as (file name, line, message).
fn errors(files: &[(&str, &str)]) -> Vec<(String, usize, String)> {
    let dir = write_dir(files);
    let errs = load_dir(dir.path(), &jwt_only).expect_err("the directory must not load");
    errs.0
        .into_iter()
        .map(|e| {
            assert!(e.location.file.starts_with(dir.path()), "{e}");
            let name = e
                .location
                .file
                .strip_prefix(dir.path())
                .expect("under the dir")
                .display()
                .to_string();
            (name, e.location.line, e.message)
        })
        .collect()
}

/// Asserts exactly one error, at `file:line`, whose message contains every `needle`.
fn one_error(files: &[(&str, &str)], file: &str, line: usize, needles: &[&str]) {
    let errs = errors(files);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let (f, l, msg) = &errs[0];
    assert_eq!((f.as_str(), *l), (file, line), "{msg}");
    for needle in needles {
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    }
}

const ROLE: &str = "roles:\n  orders:\n    backend: jwt\n    max_ttl_seconds: 900\n";

#[test]
fn good_directory_loads_with_locations_defaults_and_settings() {
    let roles = "\
# roles only
roles:
  orders-token:
    backend: jwt
    scope: [orders:read]
    max_ttl_seconds: 900
    default_ttl_seconds: 300
    settings: {audience: orders}
  plain:
    backend: jwt
    max_ttl_seconds: 60
";
    let rules = "\
rules:
  - name: shop-api-gets-orders
    match:
      issuer: https://kubernetes.default.svc.cluster.local
      namespace: shop
      service_account: api
    roles: [orders-token]

  - name: anything-in-dev
    match: {subject: \"system:serviceaccount:dev:*\"}
    roles: [plain, orders-token]
";
    let dir = write_dir(&[
        ("a-roles.yaml", roles),
        ("b-rules.yml", rules),
        ("README.md", "not a policy"),
    ]);
    let set = load_dir(dir.path(), &jwt_only).expect("loads");
    assert_eq!(
        set.files,
        vec![
            dir.path().join("a-roles.yaml"),
            dir.path().join("b-rules.yml")
        ]
    );

    let orders = &set.roles["orders-token"];
    assert_eq!(orders.backend, "jwt");
    assert_eq!(orders.scope, vec!["orders:read"]);
    assert_eq!(
        (orders.max_ttl_seconds, orders.default_ttl_seconds),
        (900, 300)
    );
    assert_eq!(orders.location.file, dir.path().join("a-roles.yaml"));
    assert_eq!(orders.location.line, 3);
    assert_eq!(orders.settings, jwt_settings("orders", &["orders:read"]));
    let plain = &set.roles["plain"];
    assert_eq!(plain.location.line, 9);
    assert!(plain.scope.is_empty());
    let RoleSettings::Jwt(plain_settings) = &plain.settings else {
        panic!("a jwt role: {:?}", plain.settings);
    };
    assert_eq!(
        plain_settings.audience(),
        &Audience::One("plain".into()),
        "the audience defaults to the role name"
    );
    assert_eq!(plain_settings.scope_claim(), None);
    assert_eq!(plain.default_ttl_seconds, 60, "default is the cap");

    assert_eq!(set.rules.len(), 2);
    let r0 = &set.rules[0];
    assert_eq!(r0.name, "shop-api-gets-orders");
    assert_eq!(r0.location.file, dir.path().join("b-rules.yml"));
    assert_eq!(r0.location.line, 2);
    assert_eq!(
        r0.selector.issuer.as_deref(),
        Some("https://kubernetes.default.svc.cluster.local")
    );
    assert_eq!(
        r0.selector.namespace.as_ref().map(|p| p.source.as_str()),
        Some("shop")
    );
    assert!(r0.selector.subject.is_none() && r0.selector.bootstrap_role.is_none());
    let r1 = &set.rules[1];
    assert_eq!((r1.name.as_str(), r1.location.line), ("anything-in-dev", 9));
    assert_eq!(r1.roles, vec!["plain", "orders-token"]);
    assert!(
        r1.selector
            .subject
            .as_ref()
            .is_some_and(|p| p.is_match("system:serviceaccount:dev:x"))
    );

    assert_eq!(set.digest.len(), 64);
    assert!(set.digest.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn digest_changes_with_content_and_names_but_not_other_files() {
    let a = load(&[("a.yaml", ROLE)]).expect("loads").digest;
    let same = load(&[("a.yaml", ROLE), ("notes.txt", "x")])
        .expect("loads")
        .digest;
    assert_eq!(a, same);
    let renamed = load(&[("b.yaml", ROLE)]).expect("loads").digest;
    assert_ne!(a, renamed);
    let edited = load(&[("a.yaml", &ROLE.replace("900", "901"))])
        .expect("loads")
        .digest;
    assert_ne!(a, edited);
}

#[test]
fn yaml_syntax_error_reports_its_line() {
    one_error(
        &[(
            "p.yaml",
            "roles:\n  a:\n    backend: jwt\n    scope: [x, y\n    max_ttl_seconds: 5\n",
        )],
        "p.yaml",
        5,
        &["YAML syntax error"],
    );
}

#[test]
fn unknown_role_field_points_at_the_typo_and_lists_valid_fields() {
    let text = "roles:\n  orders:\n    backend: jwt\n    max_ttl_seconds: 900\n    default_ttl_secnds: 60\n";
    one_error(
        &[("p.yaml", text)],
        "p.yaml",
        5,
        &[
            "unknown field \"default_ttl_secnds\"",
            "did you mean \"default_ttl_seconds\"",
            "backend, scope, max_ttl_seconds, default_ttl_seconds, settings",
        ],
    );
}

#[test]
fn misspelt_required_field_reports_the_typo_and_the_missing_field() {
    let text = "roles:\n  orders:\n    backend: jwt\n    max_ttl_secnds: 900\n";
    let errs = errors(&[("p.yaml", text)]);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].1, 2);
    assert!(
        errs[0].2.contains("has no max_ttl_seconds"),
        "{}",
        errs[0].2
    );
    assert_eq!(errs[1].1, 4);
    assert!(
        errs[1].2.contains("did you mean \"max_ttl_seconds\""),
        "{}",
        errs[1].2
    );
}

#[test]
fn unknown_rule_field_mach_points_at_its_line() {
    let text = format!(
        "{ROLE}rules:\n  - name: r\n    mach:\n      namespace: shop\n    roles: [orders]\n"
    );
    let errs = errors(&[("p.yaml", &text)]);
    // Line 6 is the rule (now without a `match`), line 7 the typo.
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].1, 6);
    assert!(errs[0].2.contains("has no `match`"), "{}", errs[0].2);
    assert_eq!(errs[1].1, 7);
    assert!(
        errs[1].2.contains("unknown field \"mach\""),
        "{}",
        errs[1].2
    );
    assert!(
        errs[1].2.contains("did you mean \"match\""),
        "{}",
        errs[1].2
    );
    assert!(errs[1].2.contains("name, match, roles"), "{}", errs[1].2);
}

#[test]
fn unknown_match_and_top_level_fields_are_reported() {
    let text = format!(
        "{ROLE}rules:\n  - name: r\n    match:\n      namespace: shop\n      servce_account: api\n    roles: [orders]\nrule: []\n"
    );
    let errs = errors(&[("p.yaml", &text)]);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].1, 9);
    assert!(
        errs[0].2.contains("did you mean \"service_account\""),
        "{}",
        errs[0].2
    );
    assert_eq!(errs[1].1, 11);
    assert!(
        errs[1].2.contains("unknown field \"rule\""),
        "{}",
        errs[1].2
    );
    assert!(
        errs[1].2.contains("did you mean \"rules\""),
        "{}",
        errs[1].2
    );
}

#[test]
fn wrong_types_are_reported_at_the_field() {
    let text = "\
roles:
  a:
    backend: [jwt]
    scope: orders:read
    max_ttl_seconds: '900'
  b:
    backend: jwt
    max_ttl_seconds: 15m
    settings: [audience]
rules: {name: x}
";
    let errs = errors(&[("p.yaml", text)]);
    let got: Vec<(usize, &str)> = errs.iter().map(|(_, l, m)| (*l, m.as_str())).collect();
    assert_eq!(got.len(), 6, "{got:#?}");
    assert_eq!(got[0].0, 3);
    assert!(
        got[0].1.contains("backend must be a string, not a list"),
        "{}",
        got[0].1
    );
    assert_eq!(got[1].0, 4);
    assert!(got[1].1.contains("scope must be a list"), "{}", got[1].1);
    assert_eq!(got[2].0, 5);
    assert!(got[2].1.contains("whole number of seconds"), "{}", got[2].1);
    assert_eq!(got[3].0, 8);
    assert!(got[3].1.contains("not \"15m\""), "{}", got[3].1);
    assert_eq!(got[4].0, 9);
    assert!(
        got[4].1.contains("settings must be a mapping"),
        "{}",
        got[4].1
    );
    assert_eq!(got[5].0, 10);
    assert!(got[5].1.contains("rules must be a list"), "{}", got[5].1);
}

#[test]
fn duplicate_role_across_files_names_the_first_location() {
    let errs = errors(&[("a.yaml", ROLE), ("b.yaml", &format!("# again\n{ROLE}"))]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let (file, line, msg) = &errs[0];
    assert_eq!((file.as_str(), *line), ("b.yaml", 3));
    assert!(
        msg.contains("role \"orders\" is already defined at "),
        "{msg}"
    );
    assert!(msg.contains("a.yaml:2"), "{msg}");
}

#[test]
fn duplicate_rule_names_name_the_other_location() {
    let rule = "  - name: same\n    match: {namespace: shop}\n    roles: [orders]\n";
    let text = format!("{ROLE}rules:\n{rule}{rule}");
    let errs = errors(&[("p.yaml", &text)]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].1, 9);
    assert!(
        errs[0].2.contains("rule \"same\" is already defined at "),
        "{}",
        errs[0].2
    );
    assert!(errs[0].2.contains("p.yaml:6"), "{}", errs[0].2);
}

#[test]
fn duplicate_yaml_key_is_an_error() {
    let text = format!("{ROLE}roles:\n  other:\n    backend: jwt\n    max_ttl_seconds: 5\n");
    one_error(
        &[("p.yaml", &text)],
        "p.yaml",
        5,
        &["duplicate key \"roles\"", "first at line 1"],
    );
}

#[test]
fn unknown_role_in_rule_points_at_the_rule_and_suggests() {
    let text = format!(
        "{ROLE}rules:\n  - name: r\n    match: {{namespace: shop}}\n    roles:\n      - order\n"
    );
    one_error(
        &[("p.yaml", &text)],
        "p.yaml",
        6,
        &[
            "rule \"r\" grants unknown role \"order\"",
            "did you mean \"orders\"?",
        ],
    );
}

#[test]
fn roles_are_resolved_across_files_and_unknown_bootstrap_role_is_reported() {
    let rules =
        "rules:\n  - name: r\n    match:\n      bootstrap_role: ordres\n    roles: [orders]\n";
    one_error(
        &[("a.yaml", ROLE), ("b.yaml", rules)],
        "b.yaml",
        4,
        &[
            "bootstrap_role names unknown role \"ordres\"",
            "did you mean \"orders\"?",
        ],
    );
    assert!(
        load(&[
            ("a.yaml", ROLE),
            ("b.yaml", &rules.replace("ordres", "orders"))
        ])
        .is_ok()
    );
}

#[test]
fn missing_or_empty_match_is_refused() {
    let missing = format!("{ROLE}rules:\n  - name: r\n    roles: [orders]\n");
    one_error(
        &[("p.yaml", &missing)],
        "p.yaml",
        6,
        &["has no `match`", "every identity"],
    );
    let empty = format!("{ROLE}rules:\n  - name: r\n    match: {{}}\n    roles: [orders]\n");
    one_error(
        &[("p.yaml", &empty)],
        "p.yaml",
        7,
        &["`match` is empty", "every identity"],
    );
    let null = format!("{ROLE}rules:\n  - name: r\n    roles: [orders]\n    match:\n");
    one_error(&[("p.yaml", &null)], "p.yaml", 8, &["`match` is empty"]);
}

#[test]
fn rule_without_name_or_roles_is_refused() {
    let text = format!(
        "{ROLE}rules:\n  - match: {{namespace: a}}\n    roles: [orders]\n  - name: r2\n    match: {{namespace: a}}\n    roles: []\n"
    );
    let errs = errors(&[("p.yaml", &text)]);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].1, 6);
    assert!(
        errs[0].2.contains("rule #1 (line 6) has no name"),
        "{}",
        errs[0].2
    );
    assert_eq!(errs[1].1, 10);
    assert!(
        errs[1].2.contains("rule \"r2\": roles is empty"),
        "{}",
        errs[1].2
    );
}

#[test]
fn invalid_glob_is_reported_at_its_field() {
    let text = format!(
        "{ROLE}rules:\n  - name: r\n    match:\n      issuer: https://x\n      namespace: \"shop-[a\"\n    roles: [orders]\n"
    );
    one_error(
        &[("p.yaml", &text)],
        "p.yaml",
        9,
        &["match.namespace is not a valid glob"],
    );
}

#[test]
fn bad_role_and_rule_names_are_refused() {
    let text = "\
roles:
  Orders:
    backend: jwt
    max_ttl_seconds: 5
  -dash:
    backend: jwt
    max_ttl_seconds: 5
rules:
  - name: has space
    match: {namespace: a}
    roles: [Orders]
";
    let errs = errors(&[("p.yaml", text)]);
    let lines: Vec<usize> = errs.iter().map(|e| e.1).collect();
    assert_eq!(lines, vec![2, 5, 9], "{errs:#?}");
    assert!(
        errs[0].2.contains("invalid role name \"Orders\""),
        "{}",
        errs[0].2
    );
    assert!(
        errs[1].2.contains("invalid role name \"-dash\""),
        "{}",
        errs[1].2
    );
    assert!(
        errs[2].2.contains("invalid rule name \"has space\""),
        "{}",
        errs[2].2
    );
    assert!(is_valid_name("a") && is_valid_name("0.x_y-z") && is_valid_name(&"a".repeat(63)));
    assert!(!is_valid_name("") && !is_valid_name(&"a".repeat(64)) && !is_valid_name(".a"));
}

#[test]
fn ttl_bounds_are_enforced() {
    let text = "\
roles:
  zero:
    backend: jwt
    max_ttl_seconds: 0
  too-long:
    backend: jwt
    max_ttl_seconds: 43201
  default-above-max:
    backend: jwt
    max_ttl_seconds: 300
    default_ttl_seconds: 600
  negative-default:
    backend: jwt
    max_ttl_seconds: 300
    default_ttl_seconds: -1
  twelve-hours:
    backend: jwt
    max_ttl_seconds: 43200
    default_ttl_seconds: 1
";
    let errs = errors(&[("p.yaml", text)]);
    let got: Vec<(usize, &str)> = errs.iter().map(|(_, l, m)| (*l, m.as_str())).collect();
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_eq!(got[0].0, 4);
    assert!(
        got[0].1.contains("between 1 and 43200 seconds, got 0"),
        "{}",
        got[0].1
    );
    assert_eq!(got[1].0, 7);
    assert!(got[1].1.contains("got 43201"), "{}", got[1].1);
    assert_eq!(got[2].0, 11);
    assert!(
        got[2]
            .1
            .contains("default_ttl_seconds (600) is above max_ttl_seconds (300)"),
        "{}",
        got[2].1
    );
    assert_eq!(got[3].0, 15);
    assert!(got[3].1.contains("got -1"), "{}", got[3].1);
}

#[test]
fn validate_role_failures_are_reported_at_the_role() {
    let text = "roles:\n  ok:\n    backend: jwt\n    max_ttl_seconds: 5\n  s3:\n    backend: aws-sts\n    max_ttl_seconds: 900\n";
    one_error(
        &[("p.yaml", text)],
        "p.yaml",
        5,
        &[
            "role \"s3\": backend `aws-sts` is not configured (configured: jwt); add \
           `backends.aws_sts` to the broker's configuration",
        ],
    );
}

#[test]
fn scope_entries_with_whitespace_are_refused() {
    let text = "roles:\n  a:\n    backend: jwt\n    max_ttl_seconds: 5\n    scope:\n      - ok\n      - orders:read orders:write\n";
    one_error(&[("p.yaml", text)], "p.yaml", 7, &["contains whitespace"]);
}

#[test]
fn errors_are_collected_across_files_in_file_and_line_order() {
    let a = "roles:\n  a:\n    backend: nope\n    max_ttl_seconds: 5\n  b:\n    backend: jwt\n";
    let b = "rules:\n  - name: r\n    roles: [a]\n";
    let errs = errors(&[("b.yaml", b), ("a.yaml", a)]);
    let got: Vec<(&str, usize)> = errs.iter().map(|(f, l, _)| (f.as_str(), *l)).collect();
    assert_eq!(
        got,
        vec![("a.yaml", 2), ("a.yaml", 5), ("b.yaml", 2)],
        "{errs:#?}"
    );
    assert!(errs[0].2.contains("unknown backend"));
    assert!(errs[1].2.contains("has no max_ttl_seconds"));
    assert!(errs[2].2.contains("has no `match`"));
}

#[test]
fn empty_directory_or_no_policy_files_is_an_error() {
    for files in [&[][..], &[("README.md", "hi"), (".hidden.yaml", ROLE)][..]] {
        let dir = write_dir(files);
        let errs = load_dir(dir.path(), &jwt_only)
            .expect_err("no policy files")
            .0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].location.file, dir.path());
        assert_eq!(errs[0].location.line, 0);
        assert!(
            errs[0].message.starts_with("no policy files in "),
            "{}",
            errs[0].message
        );
        assert_eq!(
            errs[0].to_string(),
            format!("{}: {}", dir.path().display(), errs[0].message)
        );
    }
    let missing = PathBuf::from("/nonexistent/lanyard-policies");
    let errs = load_dir(&missing, &jwt_only).expect_err("missing dir").0;
    assert!(
        errs[0].message.contains("cannot read the policy directory"),
        "{}",
        errs[0].message
    );
}

#[test]
fn empty_and_comment_only_files_declare_nothing() {
    let set = load(&[("a.yaml", ""), ("b.yaml", "# later\n"), ("c.yaml", ROLE)]).expect("loads");
    assert_eq!(set.roles.len(), 1);
    assert_eq!(set.files.len(), 3);
}

#[cfg(unix)]
#[test]
fn unreadable_file_is_reported() {
    let dir = write_dir(&[("a.yaml", ROLE)]);
    std::os::unix::fs::symlink(dir.path().join("gone.txt"), dir.path().join("b.yaml"))
        .expect("symlink");
    let errs = load_dir(dir.path(), &jwt_only)
        .expect_err("dangling symlink")
        .0;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].location.file, dir.path().join("b.yaml"));
    assert_eq!(errs[0].location.line, 0);
    assert!(
        errs[0].message.starts_with("cannot read:"),
        "{}",
        errs[0].message
    );
}

#[test]
fn oversized_file_is_refused_before_parsing() {
    // Valid YAML, so only the size can be the problem.
    let big = format!("{ROLE}{}", "# padding\n".repeat(110_000));
    assert!(big.len() as u64 > MAX_FILE_BYTES);
    one_error(&[("big.yaml", &big)], "big.yaml", 0, &["1 MiB"]);
    let fits = format!("{ROLE}{}", "# padding\n".repeat(100_000));
    assert!(load(&[("fits.yaml", &fits)]).is_ok());
}

#[test]
fn invalid_utf8_is_reported_with_its_line() {
    let dir = write_dir(&[]);
    std::fs::write(
        dir.path().join("a.yaml"),
        b"roles:\n  a:\n    backend: j\xffwt\n",
    )
    .expect("write");
    let errs = load_dir(dir.path(), &jwt_only).expect_err("not UTF-8").0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].location.line, 3);
    assert!(errs[0].message.contains("UTF-8"));
}

#[test]
fn shipped_policies_load_with_only_the_jwt_backend() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let set = load_dir(&dir, &jwt_only).unwrap_or_else(|e| panic!("shipped policies:\n{e}"));
    let dev = &set.roles["dev-app"];
    assert_eq!(dev.scope, vec!["demo:read"]);
    assert_eq!((dev.max_ttl_seconds, dev.default_ttl_seconds), (300, 120));
    assert_eq!(dev.settings, jwt_settings("demo", &["demo:read"]));
    let orders = &set.roles["orders-api"];
    assert_eq!(orders.scope, vec!["orders:read", "orders:write"]);
    assert_eq!(orders.max_ttl_seconds, 900);
    assert_eq!(
        orders.settings,
        jwt_settings("orders", &["orders:read", "orders:write"])
    );
    assert!(
        set.rules
            .iter()
            .any(|r| r.selector.bootstrap_role.as_deref() == Some("dev-app")
                && r.roles == ["dev-app"])
    );
}

#[test]
fn suggestions_only_for_near_misses() {
    assert_eq!(closest("mach", RULE_FIELDS.iter().copied()), Some("match"));
    assert_eq!(closest("Roles", TOP_FIELDS.iter().copied()), Some("roles"));
    assert_eq!(closest("completely-different", ["orders"]), None);
}

#[test]
fn parse_file_survives_mangled_input() {
    let base = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/kubernetes-example.yaml"),
    )
    .expect("shipped policy");
    let mut rng = fastrand::Rng::with_seed(7);
    let alphabet: Vec<char> = ":-[]{}'\"&*!|>#%@`\t\n ,?~xé0".chars().collect();
    let path = Path::new("fuzz.yaml");
    for _ in 0..400 {
        let mut chars: Vec<char> = base.chars().collect();
        for _ in 0..rng.usize(1..8) {
            let at = rng.usize(0..chars.len());
            match rng.u8(0..3) {
                0 => chars[at] = alphabet[rng.usize(0..alphabet.len())],
                1 => {
                    chars.remove(at);
                }
                _ => chars.insert(at, alphabet[rng.usize(0..alphabet.len())]),
            }
        }
        let text: String = chars.into_iter().collect();
        let parsed = parse_file(path, &text, &jwt_only);
        for e in &parsed.errors {
            assert!(
                e.location.line <= text.lines().count() + 1,
                "{e} in\n{text}"
            );
        }
    }
    for text in [
        "",
        "~",
        "[",
        "- - -",
        "roles: *x",
        "{roles: {a: {settings: {b: [[[{}]]]}}}}",
        "\u{feff}roles: {}",
    ] {
        let _ = parse_file(path, text, &jwt_only);
    }
}

#[test]
fn a_lone_carriage_return_is_refused_at_its_line_and_crlf_files_load() {
    // Found by the policy_parse fuzz target: YAML counts a lone `\r` as a line break, so
    // line numbers disagreed with what editors show.
    one_error(
        &[("p.yaml", "rules: []\n\r!\n")],
        "p.yaml",
        2,
        &["carriage return"],
    );
    let crlf = "roles:\r\n  app:\r\n    backend: jwt\r\n    max_ttl_seconds: 60\r\nrules:\r\n  - name: r\r\n    match: {namespace: a}\r\n    roles: [app]\r\n";
    let set = load(&[("p.yaml", crlf)]).expect("CRLF loads");
    assert_eq!(set.rules[0].location.line, 6);
}

#[test]
fn settings_reach_the_backend_as_json_with_yaml_scalar_types() {
    let text = "\
roles:
  a:
    backend: jwt
    max_ttl_seconds: 60
    settings: {audience: orders, leeway: 5, ratio: 0.5, strict: true, off: False, none: ~,
      quoted: '5', tags: [a, 'b'], nested: {k: v}}
";
    let seen = RefCell::new(None);
    let parsed = parse_file(Path::new("p.yaml"), text, &|spec| {
        *seen.borrow_mut() = Some(serde_json::Value::Object(spec.settings.clone()));
        RoleSettings::parse(&RoleSpec {
            settings: &serde_json::Map::new(),
            ..*spec
        })
    });
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(
        seen.into_inner(),
        Some(
            json!({"audience": "orders", "leeway": 5, "ratio": 0.5, "strict": true,
            "off": false, "none": null, "quoted": "5", "tags": ["a", "b"], "nested": {"k": "v"}})
        )
    );
}

#[test]
fn a_settings_error_points_at_what_to_fix() {
    let text = "\
roles:
  tok:
    backend: jwt
    max_ttl_seconds: 60
    settings:
      audience: lanyard:session
  typo:
    backend: jwt
    max_ttl_seconds: 60
    settings:
      audience: x
      audiences: y
";
    let errs = errors(&[("p.yaml", text)]);
    let got: Vec<(usize, &str)> = errs.iter().map(|(_, l, m)| (*l, m.as_str())).collect();
    assert_eq!(got.len(), 2, "{got:#?}");
    // The setting's line, and the message names the role once.
    assert_eq!(got[0].0, 6);
    assert_eq!(
        got[0].1,
        format!(
            "role \"tok\": {}",
            JwtSettingsError::ReservedAudience {
                audience: "lanyard:session".into()
            }
        )
    );
    assert_eq!(got[1].0, 12);
    assert_eq!(
        got[1].1,
        "role \"typo\": unknown setting `audiences` for the jwt backend (valid settings: audience)"
    );
}

#[test]
fn every_backend_kind_is_parsed_offline_with_errors_at_their_lines() {
    let text = "\
roles:
  s3:
    backend: aws-sts
    max_ttl_seconds: 600
    settings:
      role_arn: arn:aws:iam::123456789012:role/app
  s3-actions:
    backend: aws-sts
    max_ttl_seconds: 900
    scope: [s3:GetObject, s3-GetObject]
    settings: {role_arn: arn:aws:iam::123456789012:role/app}
  s3-no-arn:
    backend: aws-sts
    max_ttl_seconds: 900
    settings:
      external_id: abc
  s3-bare:
    backend: aws-sts
    max_ttl_seconds: 900
  db:
    backend: vault
    max_ttl_seconds: 60
    settings:
      kind: kv2
      path: apps/{{pod}}/db
  db-ok:
    backend: vault
    max_ttl_seconds: 60
    scope: [password]
    settings: {kind: kv2, path: 'apps/{{namespace}}/db'}
";
    let dir = write_dir(&[("p.yaml", text)]);
    let errs = load_dir(dir.path(), &RoleSettings::parse)
        .expect_err("bad roles")
        .0;
    let got: Vec<(usize, &str)> = errs
        .iter()
        .map(|e| (e.location.line, e.message.as_str()))
        .collect();
    let want = [
        (
            4,
            "role \"s3\": max_ttl_seconds 600 is below 900".to_owned(),
        ),
        (
            10,
            format!(
                "role \"s3-actions\": {}",
                StsSettingsError::NotAnIamAction {
                    index: 1,
                    entry: "s3-GetObject".into()
                }
            ),
        ),
        (
            15,
            format!("role \"s3-no-arn\": {}", StsSettingsError::MissingRoleArn),
        ),
        (
            17,
            format!("role \"s3-bare\": {}", StsSettingsError::MissingRoleArn),
        ),
        (
            25,
            "role \"db\": `settings.path`: unknown placeholder `{{pod}}`".to_owned(),
        ),
    ];
    assert_eq!(got.len(), want.len(), "{got:#?}");
    for ((line, msg), (want_line, want_msg)) in got.iter().zip(&want) {
        assert_eq!(line, want_line, "{msg}");
        assert!(
            msg.starts_with(want_msg.as_str()),
            "{msg:?} vs {want_msg:?}"
        );
    }

    let fixed = text
        .replace("max_ttl_seconds: 600", "max_ttl_seconds: 900")
        .replace("s3-GetObject", "s3:ListBucket")
        .replace(
            "external_id: abc",
            "role_arn: arn:aws:iam::123456789012:role/x",
        )
        .replace("{{pod}}", "{{namespace}}")
        .replace(
            "  s3-bare:\n    backend: aws-sts\n    max_ttl_seconds: 900\n",
            "",
        );
    let dir = write_dir(&[("p.yaml", &fixed)]);
    let set = load_dir(dir.path(), &RoleSettings::parse).expect("loads");
    assert_eq!(set.roles["s3"].settings.kind(), "aws-sts");
    assert_eq!(set.roles["db-ok"].settings.kind(), "vault");
}

#[test]
fn gate_fields_load_and_bad_values_point_at_their_line() {
    let roles = "roles:\n  a: {backend: jwt, max_ttl_seconds: 60}\n";
    let set = load(&[(
        "p.yaml",
        &format!(
            "{roles}rules:\n  - name: r\n    match: {{bootstrap_role: a, image_repository: \"registry.example.com/shop/*\"}}\n    roles: [a]\n    require_image: true\n    gate_mode: audit\n"
        ),
    )])
    .expect("loads");
    let rule = &set.rules[0];
    assert!(rule.require_image);
    assert_eq!(rule.gate_mode, Some(crate::policy::GateMode::Audit));
    let p = rule.selector.image_repository.as_ref().expect("selector");
    assert!(
        p.is_match("registry.example.com/shop/api") && !p.is_match("registry.example.com/dev/api")
    );
    let set = load(&[(
        "p.yaml",
        &format!("{roles}rules:\n  - name: r\n    match: {{bootstrap_role: a}}\n    roles: [a]\n"),
    )])
    .expect("defaults");
    assert!(!set.rules[0].require_image && set.rules[0].gate_mode.is_none());
    one_error(
        &[(
            "p.yaml",
            &format!(
                "{roles}rules:\n  - name: r\n    match: {{bootstrap_role: a}}\n    roles: [a]\n    gate_mode: enforcing\n"
            ),
        )],
        "p.yaml",
        7,
        &["gate_mode", "`enforce` or `audit`"],
    );
    one_error(
        &[(
            "p.yaml",
            &format!(
                "{roles}rules:\n  - name: r\n    match: {{bootstrap_role: a}}\n    roles: [a]\n    require_image: yes\n"
            ),
        )],
        "p.yaml",
        7,
        &["require_image", "true or false"],
    );
}

// --- claim and SPIFFE ID selectors (issue 16) ---

const CI_RULE: &str = "rules:
  - name: deploy
    match:
      issuer: https://gitlab.com
      claims:
        project_path: 'acme/*'
        ref_protected: true
        runner_id: [7, 12]
        environment: [production, \"staging\"]
    roles: [orders]
";

#[test]
fn claim_selectors_load_typed_as_yaml_reads_them() {
    let set = load(&[("p.yaml", &format!("{ROLE}{CI_RULE}"))]).expect("loads");
    let claims = &set.rules[0].selector.claims;
    let shown: Vec<(String, Vec<String>, usize)> = claims
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.values.iter().map(ToString::to_string).collect(),
                c.line,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("project_path".into(), vec!["\"acme/*\"".into()], 10),
            ("ref_protected".into(), vec!["true (boolean)".into()], 11),
            (
                "runner_id".into(),
                vec!["7 (number)".into(), "12 (number)".into()],
                12
            ),
            (
                "environment".into(),
                vec!["\"production\"".into(), "\"staging\"".into()],
                13
            ),
        ]
    );
}

#[test]
fn claim_selectors_need_an_issuer_and_refuse_reserved_and_odd_values() {
    one_error(
        &[(
            "p.yaml",
            &format!(
                "{ROLE}rules:\n  - name: r\n    match:\n      claims: {{repository: acme/app}}\n    roles: [orders]\n"
            ),
        )],
        "p.yaml",
        7,
        &["match.claims needs `match.issuer`"],
    );
    for (claims, line, needle) in [
        ("{sub: x}", 9, "use `match.subject`"),
        ("{aud: x}", 9, "audiences"),
        ("{exp: 1}", 9, "verifier checks it"),
        ("{a: {b: c}}", 9, "not a mapping"),
        ("{a: [[b]]}", 9, "nested list"),
        ("{a: []}", 9, "list 1 to 32"),
        ("{a: ''}", 9, "empty string"),
        ("{a: '[z-a]'}", 9, "not a valid glob"),
        ("{}", 9, "is empty"),
    ] {
        let text = format!(
            "{ROLE}rules:\n  - name: r\n    match:\n      issuer: https://i.example\n      claims: {claims}\n    roles: [orders]\n"
        );
        let errs = errors(&[("p.yaml", &text)]);
        assert!(
            errs.iter()
                .any(|(_, l, m)| *l == line && m.contains(needle)),
            "{claims}: {errs:#?}"
        );
    }
}

#[test]
fn spiffe_id_selectors_write_the_trust_domain_out() {
    let rule = |id: &str| {
        format!(
            "{ROLE}rules:\n  - name: r\n    match:\n      spiffe_id: '{id}'\n    roles: [orders]\n"
        )
    };
    let set = load(&[("p.yaml", &rule("spiffe://example.org/ns/shop/sa/*"))]).expect("loads");
    let p = set.rules[0].selector.spiffe_id.as_ref().expect("spiffe_id");
    assert!(p.is_match("spiffe://example.org/ns/shop/sa/api"));
    assert!(
        !p.is_match("spiffe://example.org/ns/shop/sa/api/extra"),
        "* stays in a segment"
    );
    assert!(!p.is_match("spiffe://example.org.evil/ns/shop/sa/api"));
    let deep = load(&[("p.yaml", &rule("spiffe://example.org/ns/**"))]).expect("loads");
    let p = deep.rules[0]
        .selector
        .spiffe_id
        .as_ref()
        .expect("spiffe_id");
    assert!(p.is_match("spiffe://example.org/ns/shop/sa/api"));
    for (bad, needle) in [
        ("spiffe://*/ns/shop", "write it out"),
        ("spiffe://*.example.org/a", "write it out"),
        ("https://example.org/a", "must start with `spiffe://`"),
    ] {
        one_error(&[("p.yaml", &rule(bad))], "p.yaml", 8, &[needle]);
    }
    // A spiffe_id names its trust domain, so claims may go with it without an issuer.
    let text = format!(
        "{ROLE}rules:\n  - name: r\n    match:\n      spiffe_id: spiffe://example.org/a\n      claims: {{team: x}}\n    roles: [orders]\n"
    );
    load(&[("p.yaml", &text)]).expect("loads");
}

#[test]
fn claim_warnings_flag_selectors_the_issuer_cannot_match() {
    use crate::config::{ClaimProfile, ClaimType, IssuerConfig};
    let text = format!(
        "{ROLE}rules:
  - name: gh
    match:
      issuer: https://token.actions.githubusercontent.com
      claims: {{ref_protected: true, repository: 'acme/*', run_attempt: 1, colour: red}}
    roles: [orders]
  - name: gl
    match:
      issuer: https://gitlab.example.com
      claims: {{ref_protected: 'true', runner_id: '12'}}
    roles: [orders]
  - name: mine
    match:
      issuer: https://ci.example.com
      claims: {{approved: 'yes', anything: x}}
    roles: [orders]
"
    );
    let set = load(&[("p.yaml", &text)]).expect("loads");
    // Offline: GitHub is known by its URL; the self-managed GitLab and the custom issuer are not.
    let offline: Vec<String> = claim_warnings(&set, &[])
        .iter()
        .map(|w| format!("{}: {}", w.location.line, w.message))
        .collect();
    assert_eq!(offline.len(), 3, "{offline:#?}");
    assert!(offline[0].starts_with("9: warning: rule \"gh\": claims.ref_protected wants true (boolean), but https://token.actions.githubusercontent.com sends it as a string"), "{}", offline[0]);
    assert!(offline[0].contains("(quote it)"));
    assert!(
        offline[1].contains("claims.run_attempt wants 1 (number)"),
        "{}",
        offline[1]
    );
    assert!(
        offline[2].contains("does not send a claim named \"colour\""),
        "{}",
        offline[2]
    );
    // With the broker's issuers: a GitLab profile, and declared claim types.
    let mut gitlab = IssuerConfig::named("https://gitlab.example.com");
    gitlab.claim_profile = Some(ClaimProfile::Gitlab);
    let mut mine = IssuerConfig::named("https://ci.example.com");
    mine.claim_types
        .insert("approved".into(), ClaimType::Boolean);
    let warnings: Vec<String> = claim_warnings(&set, &[gitlab, mine])
        .iter()
        .map(|w| w.message.clone())
        .collect();
    assert_eq!(warnings.len(), 3 + 3, "{warnings:#?}");
    assert!(
        warnings[3].contains("claims.runner_id wants \"12\"")
            && warnings[3].contains("sends it as a number"),
        "{}",
        warnings[3]
    );
    assert!(
        warnings[4].contains("claims.approved wants \"yes\"")
            && warnings[4].contains("sends it as a boolean"),
        "{}",
        warnings[4]
    );
    // An issuer's `claim_types` declare its claim set: a claim it does not list is one it
    // does not send.
    assert!(
        warnings[5].contains("does not send a claim named \"anything\""),
        "{}",
        warnings[5]
    );
}
