//! The scanner library against real images built by buildah and real OCI registries
//! (`tests/peers/images.sh`, run by `./test.sh`). The `lanyard-broker scan` command is tested
//! in `broker/tests/scan.rs`.

use std::path::PathBuf;
use std::process::Command;

use lanyard_scan::report::{render_human, render_sarif};
use lanyard_scan::{
    self as scan, Location, PlatformChoice, RegistryAuth, Report, ScanError, ScanOptions, Source,
    Verdict,
};

fn images() -> PathBuf {
    match std::env::var("LANYARD_TEST_IMAGES") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => panic!(
            "LANYARD_TEST_IMAGES is not set: run ./test.sh (tests/peers/images.sh builds the test images with buildah)"
        ),
    }
}

fn registry(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run ./test.sh (tests/peers/images.sh starts the test registries)")
    })
}

/// Every local form each image is exported in.
fn forms(name: &str) -> Vec<Source> {
    let d = images();
    vec![
        Source::DockerArchive(d.join(format!("{name}.docker.tar"))),
        Source::OciDir {
            path: d.join(format!("{name}.oci")),
            tag: None,
        },
        Source::OciDir {
            path: d.join(format!("{name}.oci-zstd")),
            tag: Some(format!("{name}:1")),
        },
        Source::OciArchive {
            path: d.join(format!("{name}.oci.tar")),
            tag: None,
        },
        Source::OciArchive {
            path: d.join(format!("{name}.oci-zstd.tar")),
            tag: None,
        },
    ]
}

fn opts() -> ScanOptions {
    ScanOptions {
        insecure_loopback_registry: true,
        ..ScanOptions::default()
    }
}

/// One line per finding: rule, location kind, layer index, deleted_later and the name/path.
fn summary(report: &Report) -> Vec<String> {
    assert_eq!(report.images.len(), 1, "one image expected");
    report.images[0]
        .findings
        .iter()
        .map(|f| match &f.location {
            Location::Env { name } => format!("{} env {name}", f.rule),
            Location::Label { name } => format!("{} label {name}", f.rule),
            Location::History {
                step,
                layer_index,
                name,
            } => format!(
                "{} history step={step} layer={} {}",
                f.rule,
                layer_index
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "-".into()),
                name.as_deref().unwrap_or("-")
            ),
            Location::File {
                layer_index,
                path,
                line,
                deleted_later,
                ..
            } => format!(
                "{} file layer={layer_index} {path}:{line}{}",
                f.rule,
                if *deleted_later { " deleted_later" } else { "" }
            ),
        })
        .collect()
}

fn expected(name: &str) -> Vec<&'static str> {
    match name {
        "env-secret" => vec![
            "aws-access-key-id env AWS_ACCESS_KEY_ID",
            "aws-secret-access-key env AWS_SECRET_ACCESS_KEY",
            "secret-env-name env DB_PASSWORD",
            "slack-webhook-url label ci.notify",
            "aws-access-key-id history step=1 layer=- AWS_ACCESS_KEY_ID",
            "aws-secret-access-key history step=1 layer=- AWS_SECRET_ACCESS_KEY",
            "secret-env-name history step=2 layer=- DB_PASSWORD",
            "slack-webhook-url history step=3 layer=- ci.notify",
        ],
        "arg-run" => vec!["npm-token history step=2 layer=1 NPM_TOKEN"],
        "copy-env-rm" => vec![
            "postgres-url file layer=1 app/.env:1 deleted_later",
            "stripe-secret-key file layer=1 app/.env:2 deleted_later",
        ],
        "npmrc-rm" => vec![
            "npm-token history step=1 layer=1 -",
            "npm-token file layer=1 root/.npmrc:1 deleted_later",
        ],
        "multistage-clean" | "secret-mount-clean" => vec![],
        other => panic!("no expectation for {other}"),
    }
}

const ALL: &[&str] = &[
    "env-secret",
    "arg-run",
    "copy-env-rm",
    "npmrc-rm",
    "multistage-clean",
    "secret-mount-clean",
];

#[tokio::test]
async fn every_image_in_every_form_gives_exactly_the_expected_findings() {
    for name in ALL {
        for source in forms(name) {
            let report = scan::scan(&source, &opts())
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
            let img = &report.images[0];
            assert!(
                img.incomplete.is_empty(),
                "{}: {:?}",
                source.display(),
                img.incomplete
            );
            assert_eq!(summary(&report), expected(name), "{}", source.display());
            let want = if expected(name).is_empty() {
                Verdict::Clean
            } else {
                Verdict::Dirty
            };
            assert_eq!(report.verdict, want, "{}", source.display());
            assert_eq!(
                img.digest_kind,
                if matches!(source, Source::DockerArchive(_)) {
                    "config"
                } else {
                    "manifest"
                }
            );
            assert!(img.stats.files_scanned > 0 && img.stats.layers >= 2);
        }
    }
}

#[tokio::test]
async fn layer_attribution_names_the_history_step_and_layer_digest() {
    let report = scan::scan(&forms("copy-env-rm")[3], &opts())
        .await
        .expect("scan");
    let Location::File {
        layer_index,
        layer_digest,
        history_step,
        ..
    } = &report.images[0].findings[0].location
    else {
        panic!("file finding expected");
    };
    assert_eq!((*layer_index, *history_step), (1, Some(1)));
    assert!(layer_digest.starts_with("sha256:") && layer_digest.len() == 71);
}

#[tokio::test]
async fn multi_platform_index_selects_platforms() {
    for source in [
        Source::OciArchive {
            path: images().join("multi.oci.tar"),
            tag: None,
        },
        Source::OciDir {
            path: images().join("multi.oci"),
            tag: Some("multi".into()),
        },
    ] {
        let pick = |p: PlatformChoice| ScanOptions {
            platform: p,
            ..opts()
        };
        let amd = scan::scan(&source, &pick(PlatformChoice::Exact("linux/amd64".into())))
            .await
            .expect("amd64");
        assert_eq!(amd.images[0].platform.as_deref(), Some("linux/amd64"));
        assert_eq!(amd.verdict, Verdict::Clean);
        let arm = scan::scan(&source, &pick(PlatformChoice::Exact("linux/arm64".into())))
            .await
            .expect("arm64");
        assert_eq!(arm.images[0].platform.as_deref(), Some("linux/arm64"));
        assert_eq!(summary(&arm), expected("env-secret"));
        let all = scan::scan(&source, &pick(PlatformChoice::All))
            .await
            .expect("all");
        assert_eq!(all.images.len(), 2);
        assert_eq!(all.verdict, Verdict::Dirty);
        let e = scan::scan(&source, &pick(PlatformChoice::Exact("linux/s390x".into())))
            .await
            .expect_err("none");
        assert!(
            e.to_string().contains("linux/amd64") && e.to_string().contains("linux/arm64"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn registry_by_tag_and_by_digest() {
    let reg = registry("LANYARD_TEST_REGISTRY");
    let by_tag = scan::scan(
        &Source::Registry(format!("{reg}/lanyard/copy-env-rm:1")),
        &opts(),
    )
    .await
    .expect("tag");
    assert_eq!(summary(&by_tag), expected("copy-env-rm"));
    let digest = by_tag.images[0].digest.clone();
    let by_digest = scan::scan(
        &Source::Registry(format!("{reg}/lanyard/copy-env-rm@{digest}")),
        &opts(),
    )
    .await
    .expect("digest");
    assert_eq!(by_digest.images[0].digest, digest);
    assert_eq!(summary(&by_digest), expected("copy-env-rm"));
    let clean = scan::scan(
        &Source::Registry(format!("{reg}/lanyard/multistage-clean:1")),
        &opts(),
    )
    .await
    .expect("clean");
    assert_eq!(clean.verdict, Verdict::Clean);
    // Docker v2 schema 2 manifest (pushed from a docker-archive).
    let v2 = scan::scan(
        &Source::Registry(format!("{reg}/lanyard/npmrc-rm:docker")),
        &opts(),
    )
    .await
    .expect("v2s2");
    assert_eq!(summary(&v2), expected("npmrc-rm"));
    // A wrong digest is refused, not scanned.
    let wrong = format!("sha256:{}", "0".repeat(64));
    assert!(
        scan::scan(
            &Source::Registry(format!("{reg}/lanyard/copy-env-rm@{wrong}")),
            &opts()
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn registry_index_follows_platforms() {
    let reg = registry("LANYARD_TEST_REGISTRY");
    let source = Source::Registry(format!("{reg}/lanyard/multi:1"));
    let all = scan::scan(
        &source,
        &ScanOptions {
            platform: PlatformChoice::All,
            ..opts()
        },
    )
    .await
    .expect("all");
    let platforms: Vec<_> = all
        .images
        .iter()
        .map(|i| (i.platform.clone().unwrap_or_default(), i.verdict))
        .collect();
    assert_eq!(
        platforms,
        vec![
            ("linux/amd64".to_owned(), Verdict::Clean),
            ("linux/arm64".to_owned(), Verdict::Dirty)
        ]
    );
}

#[tokio::test]
async fn registry_basic_auth() {
    let reg = registry("LANYARD_TEST_REGISTRY_AUTH");
    let user = registry("LANYARD_TEST_REGISTRY_USER");
    let password = std::fs::read_to_string(registry("LANYARD_TEST_REGISTRY_PASSWORD_FILE"))
        .expect("password file");
    let source = Source::Registry(format!("{reg}/lanyard/env-secret:1"));
    let anon = scan::scan(&source, &opts()).await.expect_err("needs auth");
    assert!(matches!(anon, ScanError::Registry(_)), "{anon}");
    let wrong = ScanOptions {
        auth: RegistryAuth::Basic {
            username: user.clone(),
            password: "not-the-password".into(),
        },
        ..opts()
    };
    let e = scan::scan(&source, &wrong)
        .await
        .expect_err("wrong password");
    assert!(!e.to_string().contains("not-the-password"), "{e}");
    let good = ScanOptions {
        auth: RegistryAuth::Basic {
            username: user,
            password: password.clone().into(),
        },
        ..opts()
    };
    let report = scan::scan(&source, &good).await.expect("with credentials");
    assert_eq!(summary(&report), expected("env-secret"));
    let json = serde_json::to_string(&report).expect("json");
    assert!(!json.contains(&password));
}

#[tokio::test]
async fn insecure_registry_is_only_for_loopback() {
    let e = scan::scan(
        &Source::Registry("registry.example.org/app:1".into()),
        &opts(),
    )
    .await
    .expect_err("refused");
    assert!(e.to_string().contains("only allowed for loopback"), "{e}");
}

fn planted() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/images/planted.txt");
    std::fs::read_to_string(root)
        .expect("tests/images/planted.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn planted_secrets_never_appear_in_human_json_or_sarif_output() {
    let secrets = planted();
    assert!(secrets.len() >= 8);
    let mut outputs = Vec::new();
    let mut sources: Vec<Source> = ALL.iter().flat_map(|n| forms(n)).collect();
    sources.push(Source::OciArchive {
        path: images().join("multi.oci.tar"),
        tag: None,
    });
    for source in sources {
        let all = ScanOptions {
            platform: PlatformChoice::All,
            ..opts()
        };
        let report = scan::scan(&source, &all).await.expect("scan");
        outputs.push(render_human(&report));
        outputs.push(serde_json::to_string(&report).expect("json"));
        outputs.push(
            serde_json::to_string(&render_sarif(&report, &scan::rule_catalog())).expect("sarif"),
        );
    }
    let joined = outputs.join("\n");
    assert!(joined.contains("AKIA…HB"), "previews are shown");
    for s in &secrets {
        // No 8-character window of any secret appears anywhere.
        let chars: Vec<char> = s.chars().collect();
        for w in chars.windows(8) {
            let w: String = w.iter().collect();
            assert!(
                !joined.contains(&w),
                "output contains `{w}` from a planted secret"
            );
        }
    }
}

#[tokio::test]
async fn truncated_or_tampered_layers_are_never_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("layout");
    let status = Command::new("cp")
        .arg("-r")
        .arg(images().join("multistage-clean.oci"))
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    let report = scan::scan(
        &Source::OciDir {
            path: copy.clone(),
            tag: None,
        },
        &opts(),
    )
    .await
    .expect("scan");
    assert_eq!(report.verdict, Verdict::Clean);
    // Truncate the largest blob (the busybox layer).
    let mut blobs: Vec<_> = std::fs::read_dir(copy.join("blobs/sha256"))
        .expect("blobs")
        .map(|e| e.expect("entry").path())
        .collect();
    blobs.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    let big = blobs.last().expect("a blob").clone();
    let bytes = std::fs::read(&big).expect("read");
    std::fs::write(&big, &bytes[..bytes.len() / 2]).expect("truncate");
    let report = scan::scan(
        &Source::OciDir {
            path: copy.clone(),
            tag: None,
        },
        &opts(),
    )
    .await
    .expect("scan");
    assert_eq!(report.verdict, Verdict::Incomplete);
    assert!(!report.images[0].incomplete.is_empty());
    // Same length, one byte changed: the digest check catches what decompression might not.
    let mut flipped = bytes.clone();
    let at = flipped.len() - 3;
    flipped[at] ^= 1;
    std::fs::write(&big, &flipped).expect("flip");
    let report = scan::scan(
        &Source::OciDir {
            path: copy,
            tag: None,
        },
        &opts(),
    )
    .await
    .expect("scan");
    assert_eq!(
        report.verdict,
        Verdict::Incomplete,
        "{:?}",
        report.images[0].incomplete
    );
}

#[tokio::test]
async fn timeout_and_cancel() {
    let source = forms("copy-env-rm").remove(0);
    let o = ScanOptions {
        timeout: Some(std::time::Duration::from_nanos(1)),
        ..opts()
    };
    assert!(matches!(
        scan::scan(&source, &o).await,
        Err(ScanError::Timeout(_))
    ));
    let o = opts();
    o.cancel.cancel();
    assert!(matches!(
        scan::scan(&source, &o).await,
        Err(ScanError::Cancelled)
    ));
}

/// The env-secret image, scanned completely (config and every layer blob fetched).
fn complete_env_secret(what: &str, report: &Report) {
    assert_eq!(summary(report), expected("env-secret"), "{what}");
    assert_eq!(report.verdict, Verdict::Dirty, "{what}");
    let img = &report.images[0];
    assert!(img.incomplete.is_empty(), "{what}: {:?}", img.incomplete);
    assert!(
        img.stats.layers >= 2 && img.stats.files_scanned > 0,
        "{what}"
    );
}

/// A real distribution registry with token auth (`lanyard_test_support::registry`): oci-client
/// does the token flow with basic credentials, a pre-obtained token is sent as is, and wrong
/// credentials or tokens give an error that names neither. (The command line's
/// `--registry-token-file` and `--registry-password-file` are tested in `broker/tests/scan.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_token_auth_with_basic_credentials_and_with_a_bearer_token() {
    use lanyard_test_support::registry::SERVICE;
    use lanyard_test_support::{TokenRegistry, TokenRequest};

    let reg = TokenRegistry::start().await;
    let tokens = &reg.token_server;
    let (user, password) = (reg.username().to_owned(), reg.password().to_owned());
    let reference = reg.push_test_image("env-secret").await;
    assert!(
        tokens
            .requests()
            .iter()
            .any(|r| r.user.as_deref() == Some(user.as_str())
                && r.granted
                    .contains(&"repository:lanyard/env-secret:pull,push".to_owned())),
        "skopeo pushed through the token flow with push scope: {:?}",
        tokens.requests()
    );
    let source = Source::Registry(reference.clone());
    let pull_scope = "repository:lanyard/env-secret:pull".to_owned();
    let since = |n: usize| -> Vec<TokenRequest> { tokens.requests()[n..].to_vec() };

    // (a) Basic credentials: oci-client asks the token server for a pull token, then pulls.
    let before = tokens.request_count();
    let basic = ScanOptions {
        auth: RegistryAuth::Basic {
            username: user.clone(),
            password: password.clone().into(),
        },
        ..opts()
    };
    let report = scan::scan(&source, &basic)
        .await
        .unwrap_or_else(|e| panic!("basic credentials through the token flow: {e}"));
    complete_env_secret("basic credentials", &report);
    let asked = since(before);
    assert!(!asked.is_empty(), "the token server was not asked");
    for r in &asked {
        assert_eq!(
            (r.service.as_deref(), r.user.as_deref(), r.status),
            (Some(SERVICE), Some(user.as_str()), 200),
            "{r:?}"
        );
        assert_eq!(r.scopes, vec![pull_scope.clone()], "pull scope only: {r:?}");
        assert_eq!(r.granted, vec![pull_scope.clone()]);
    }
    let json = serde_json::to_string(&report).expect("json");
    assert!(!json.contains(&password));

    // (b) A token fetched beforehand, sent as is: the token server is not asked again.
    let token = tokens
        .fetch_token(Some((&user, &password)), &[&pull_scope])
        .await;
    let before = tokens.request_count();
    let bearer = ScanOptions {
        auth: RegistryAuth::Bearer(token.clone().into()),
        ..opts()
    };
    let report = scan::scan(&source, &bearer)
        .await
        .unwrap_or_else(|e| panic!("bearer token: {e}"));
    complete_env_secret("bearer token", &report);
    assert_eq!(
        tokens.request_count(),
        before,
        "a bearer token is sent as is, not exchanged: {:?}",
        since(before)
    );

    // (c) Refusals: an error naming neither the password nor the token, never a verdict.
    let refused = |what: &str, e: ScanError, secret: &str| {
        let text = e.to_string();
        assert!(matches!(e, ScanError::Registry(_)), "{what}: {text}");
        let expected = if what == "wrong password" {
            "refused the credentials of user"
        } else {
            "fetching the manifest"
        };
        assert!(text.contains(expected), "{what}: {text}");
        assert!(!text.contains(secret), "{what}: the error shows the secret");
        assert!(!format!("{e:?}").contains(secret), "{what}: Debug shows it");
    };
    let before = tokens.request_count();
    let wrong_password = "not-the-token-password-4711";
    let e = scan::scan(
        &source,
        &ScanOptions {
            auth: RegistryAuth::Basic {
                username: user.clone(),
                password: wrong_password.into(),
            },
            ..opts()
        },
    )
    .await
    .expect_err("wrong basic credentials");
    refused("wrong password", e, wrong_password);
    assert!(
        since(before)
            .iter()
            .any(|r| r.status == 401 && r.user.as_deref() == Some(user.as_str())),
        "the token server refused the wrong password: {:?}",
        since(before)
    );
    let garbage = "garbage-bearer-token-0123456789abcdef";
    let e = scan::scan(
        &source,
        &ScanOptions {
            auth: RegistryAuth::Bearer(garbage.into()),
            ..opts()
        },
    )
    .await
    .expect_err("garbage bearer token");
    refused("garbage token", e, garbage);
    // A real token for another repository: the registry checks the scope.
    let other = tokens
        .fetch_token(Some((&user, &password)), &["repository:lanyard/other:pull"])
        .await;
    let e = scan::scan(
        &source,
        &ScanOptions {
            auth: RegistryAuth::Bearer(other.clone().into()),
            ..opts()
        },
    )
    .await
    .expect_err("token for another repository");
    refused("token for another repository", e, &other);

    // Anonymous: the token server grants nothing, so the scan fails; with anonymous pull
    // allowed, oci-client's anonymous token flow pulls the image.
    let before = tokens.request_count();
    let e = scan::scan(&source, &opts())
        .await
        .expect_err("anonymous without anonymous pull");
    assert!(matches!(e, ScanError::Registry(_)), "{e}");
    assert!(
        since(before).iter().any(|r| r.user.is_none()
            && r.scopes == vec![pull_scope.clone()]
            && r.granted.is_empty()),
        "{:?}",
        since(before)
    );
    tokens.set_anonymous_pull(true);
    let report = scan::scan(&source, &opts())
        .await
        .unwrap_or_else(|e| panic!("anonymous pull through the token flow: {e}"));
    complete_env_secret("anonymous pull", &report);
    tokens.set_anonymous_pull(false);
}
