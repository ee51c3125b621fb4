//! False positives on a real application image (`tests/peers/debian-app.sh`, run by
//! `./test.sh`): Debian 12 from debootstrap with Debian's python3-jwt, python3-oauthlib and
//! python3-requests, their docs and changelogs and the dpkg database; popular PyPI packages
//! installed by pip; an app installed by `pip install .`; a dpkg-owned file edited after
//! install; a token in a `.env`. Only the planted secrets may count (and, by design, a
//! provider-format token in a vendor file, marked as such).

use std::path::PathBuf;

use lanyard_scan::report::{Manager, counts, render_human};
use lanyard_scan::{Location, ScanOptions, Source, Verdict, scan};

fn image() -> PathBuf {
    match std::env::var("LANYARD_DEBIAN_APP_IMAGE") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "LANYARD_DEBIAN_APP_IMAGE is not set: run ./test.sh (tests/peers/debian-app.sh builds the image with debootstrap, pip and buildah)"
        ),
    }
}

fn planted() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/debian-app/planted.txt"
    );
    std::fs::read_to_string(path)
        .expect("planted.txt")
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_real_debian_python_image_counts_only_the_planted_secrets() {
    let source = Source::OciArchive {
        path: image(),
        tag: None,
    };
    let report = scan(&source, &ScanOptions::default()).await.expect("scan");
    assert_eq!(report.images.len(), 1);
    let img = &report.images[0];
    assert!(img.incomplete.is_empty(), "{:?}", img.incomplete);
    let where_ = |f: &lanyard_scan::Finding| match &f.location {
        Location::File {
            layer_index, path, ..
        } => format!("{} layer {layer_index} {path}", f.rule),
        other => format!("{} {}", f.rule, other.kind()),
    };
    let mut counted: Vec<String> = img
        .findings
        .iter()
        .filter(|f| counts(f))
        .map(where_)
        .collect();
    counted.sort();
    counted.dedup();
    let site = "usr/local/lib/python3.11/dist-packages";
    let mut expected = vec![
        // The app's own secret: `pip install .` wrote a RECORD, but also direct_url.json.
        format!("postgres-url layer 1 {site}/orders/__init__.py"),
        // A Debian package file edited after install (and the RUN that did it).
        "mysql-url layer 2 usr/lib/python3/dist-packages/oauthlib/__init__.py".to_owned(),
        "mysql-url history".to_owned(),
        // The deployment's token.
        "github-pat layer 3 srv/orders/.env".to_owned(),
    ];
    expected.sort();
    assert_eq!(counted, expected, "only the planted secrets count");
    // botocore's DataSync model documents an Azure SAS: a structured (medium-confidence)
    // match in a file the wheel's RECORD proves pristine goes down to info, marked and
    // explained. A provider-prefixed token there would stay counted.
    let sas = img
        .findings
        .iter()
        .find(|f| f.rule == "azure-sas-token")
        .expect("the SAS example is still reported");
    assert!(!counts(sas));
    assert!(sas.reason.is_some(), "the report says why it went down");
    assert_eq!(
        sas.vendor.as_ref().map(|v| (v.manager, v.package.as_str())),
        Some((Manager::Python, "botocore"))
    );
    assert_eq!(img.verdict, Verdict::Dirty);

    // What went down went down for a reason the report states: PyJWT's README example is in a
    // file dpkg proves python3-jwt installed; the app's compiled module repeats its source.
    let pyjwt = img
        .findings
        .iter()
        .find(|f| {
            f.rule == "jwt"
                && matches!(&f.location, Location::File { path, .. }
                    if path.starts_with("usr/lib/python3/dist-packages/PyJWT-"))
        })
        .expect("PyJWT's example token is still reported");
    assert!(!counts(pyjwt));
    assert_eq!(
        pyjwt
            .vendor
            .as_ref()
            .map(|v| (v.manager, v.package.as_str())),
        Some((Manager::Dpkg, "python3-jwt"))
    );
    let repeats = img
        .findings
        .iter()
        .filter(|f| {
            matches!(&f.location, Location::File { path, .. } if path.ends_with(".pyc"))
                && f.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("source file"))
        })
        .count();
    assert!(
        repeats > 0,
        "library .pyc files repeat their sources' literals, counted once"
    );
    assert!(
        img.findings.iter().any(|f| f
            .vendor
            .as_ref()
            .is_some_and(|v| v.manager == Manager::Python)),
        "pip-installed wheels are proven by their RECORD"
    );

    let text = format!(
        "{}{}",
        render_human(&report),
        serde_json::to_string(&report).expect("json")
    );
    for secret in planted() {
        assert!(
            !text.contains(&secret),
            "a planted secret reached the output"
        );
    }
}
