//! The scanner's outer archive (`oci-archive:` / `docker-archive:` tar files): its table of
//! contents (members, symlinks and hard links resolved inside the archive), `index.json` or
//! `manifest.json`, `:TAG` selection by `org.opencontainers.image.ref.name`, platform
//! selection, nested indexes and the digest check of every manifest and config
//! (`lanyard_scan::plan_only`; layers are the `scan_layer` target's).
//!
//! Two ways in, chosen by the first byte:
//! - raw: the bytes are the archive file, read as both an OCI and a docker archive.
//! - built: a well-formed tar with `oci-layout`, an `index.json`, and blobs stored under their
//!   real digests (a config, an image manifest, a nested index), every field drawn from the
//!   input, some members replaced by links; so the fuzzer spends its time past the tar and
//!   digest checks.
//!
//! Properties: no panic; with a tag, every planned image carries a reference name that is the
//! tag or ends in `:TAG`; without `oci-layout`, never a plan. Slow inputs show up as libFuzzer
//! timeouts (`fuzz/run.sh` sets `-timeout`).
#![no_main]

use std::path::PathBuf;

use lanyard_scan::util::sha256_digest;
use lanyard_scan::{PlatformChoice, Source, plan_only};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use serde_json::{Value, json};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One tar member: name, kind (`0` file, `1` hard link, `2` symlink, `5` directory), link
/// target, content.
struct Member {
    name: String,
    kind: u8,
    link: String,
    data: Vec<u8>,
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{:0width$o}", value, width = field.len() - 1);
    let bytes = text.as_bytes();
    let n = bytes.len().min(field.len() - 1);
    field[..n].copy_from_slice(&bytes[bytes.len() - n..]);
}

fn set(field: &mut [u8], text: &str) {
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

/// A ustar archive of `members`.
fn tar(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut h = [0u8; 512];
        set(&mut h[0..100], &m.name);
        octal(&mut h[100..108], if m.kind == b'5' { 0o755 } else { 0o644 });
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        let size = if m.kind == b'0' {
            m.data.len() as u64
        } else {
            0
        };
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0);
        h[156] = m.kind;
        set(&mut h[157..257], &m.link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        octal(&mut h[148..155], sum);
        h[155] = b' ';
        out.extend_from_slice(&h);
        if m.kind == b'0' {
            out.extend_from_slice(&m.data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A short name: one of a few the descriptors use, or anything.
fn name(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=5)? {
        0 => "latest".into(),
        1 => "app:latest".into(),
        2 => "localhost/app:1".into(),
        3 => "1".into(),
        4 => String::new(),
        _ => u.arbitrary()?,
    })
}

fn platform(u: &mut Unstructured<'_>) -> Result<Option<Value>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => None,
        1 => Some(json!({"os": "linux", "architecture": "amd64"})),
        2 => Some(json!({"os": "linux", "architecture": "arm64", "variant": "v8"})),
        _ => Some(json!({"os": name(u)?, "architecture": name(u)?})),
    })
}

/// A descriptor of one of the blobs made so far, or of a digest that is not stored.
fn descriptor(u: &mut Unstructured<'_>, blobs: &[Vec<u8>]) -> Result<Value> {
    let (digest, size) = match u.int_in_range(0..=blobs.len())? {
        i if i < blobs.len() => (sha256_digest(&blobs[i]), blobs[i].len()),
        _ => match u.int_in_range(0..=2)? {
            0 => (format!("sha256:{}", "0".repeat(64)), 0),
            1 => (format!("sha512:{}", "0".repeat(128)), 0),
            _ => (u.arbitrary::<String>()?, 0),
        },
    };
    let mut d = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": size,
    });
    if let Some(p) = platform(u)? {
        d["platform"] = p;
    }
    if u.arbitrary()? {
        d["annotations"] = json!({REF_NAME: name(u)?});
    }
    if u.int_in_range(0..=7)? == 0 {
        d["annotations"] = json!({"vnd.docker.reference.type": "attestation-manifest"});
    }
    Ok(d)
}

fn built(u: &mut Unstructured<'_>) -> Result<(Vec<u8>, Option<String>, PlatformChoice)> {
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    // A config, then documents that may point at anything made before them.
    let diff_ids: Vec<String> = (0..u.int_in_range(0..=2)?)
        .map(|_| format!("sha256:{}", "1".repeat(64)))
        .collect();
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": [u.arbitrary::<String>()?]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": u.arbitrary::<String>()?}],
    });
    blobs.push(config.to_string().into_bytes());
    for _ in 0..u.int_in_range(1..=4)? {
        let doc = if u.arbitrary()? {
            let layers = (0..u.int_in_range(0..=2)?)
                .map(|_| descriptor(u, &blobs))
                .collect::<Result<Vec<_>>>()?;
            json!({"schemaVersion": 2, "config": descriptor(u, &blobs)?, "layers": layers})
        } else {
            let manifests = (0..u.int_in_range(0..=3)?)
                .map(|_| descriptor(u, &blobs))
                .collect::<Result<Vec<_>>>()?;
            json!({"schemaVersion": 2, "manifests": manifests})
        };
        blobs.push(doc.to_string().into_bytes());
    }
    if u.arbitrary()? {
        blobs.push(u.arbitrary()?);
    }
    let top = (0..u.int_in_range(0..=4)?)
        .map(|_| descriptor(u, &blobs))
        .collect::<Result<Vec<_>>>()?;
    let index = json!({"schemaVersion": 2, "manifests": top}).to_string();

    let mut members = Vec::new();
    if u.int_in_range(0..=15)? != 0 {
        members.push(Member {
            name: "oci-layout".into(),
            kind: b'0',
            link: String::new(),
            data: br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        });
    }
    for (i, blob) in blobs.iter().enumerate() {
        let hex = sha256_digest(blob);
        let name = format!("blobs/sha256/{}", hex.trim_start_matches("sha256:"));
        // Some blobs are links to another member (resolved inside the archive, or not).
        match u.int_in_range(0..=7)? {
            0 if i > 0 => {
                let target = format!("x/{i}");
                members.push(Member {
                    name: target.clone(),
                    kind: b'0',
                    link: String::new(),
                    data: blob.clone(),
                });
                members.push(Member {
                    name,
                    kind: if u.arbitrary()? { b'1' } else { b'2' },
                    link: if u.arbitrary()? {
                        format!("../../{target}")
                    } else {
                        u.arbitrary()?
                    },
                    data: Vec::new(),
                });
            }
            _ => members.push(Member {
                name,
                kind: b'0',
                link: String::new(),
                data: blob.clone(),
            }),
        }
    }
    match u.int_in_range(0..=7)? {
        0 => members.push(Member {
            name: "index.json".into(),
            kind: b'2',
            link: u.arbitrary()?,
            data: Vec::new(),
        }),
        1 => {}
        _ => members.push(Member {
            name: "index.json".into(),
            kind: b'0',
            link: String::new(),
            data: index.into_bytes(),
        }),
    }
    let tag = if u.arbitrary()? { Some(name(u)?) } else { None };
    let choice = match u.int_in_range(0..=2)? {
        0 => PlatformChoice::Host,
        1 => PlatformChoice::All,
        _ => PlatformChoice::Exact(name(u)?),
    };
    Ok((tar(&members), tag, choice))
}

fn path() -> &'static PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("lanyard-fuzz-archive-{}.tar", std::process::id()))
    })
}

fn check(source: &Source, tag: Option<&str>, choice: &PlatformChoice) {
    let Ok(images) = plan_only(source, choice) else {
        return;
    };
    if let Some(tag) = tag {
        for (digest, names) in &images {
            assert!(
                names
                    .iter()
                    .any(|n| n == tag || n.rsplit_once(':').is_some_and(|(_, t)| t == tag)),
                "{digest} planned for tag {tag:?} with names {names:?}"
            );
        }
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let path = path();
    if mode % 2 == 0 {
        std::fs::write(path, rest).expect("write the archive");
        let oci = Source::OciArchive {
            path: path.clone(),
            tag: None,
        };
        check(&oci, None, &PlatformChoice::All);
        check(
            &Source::DockerArchive(path.clone()),
            None,
            &PlatformChoice::All,
        );
        return;
    }
    let Ok((archive, tag, choice)) = built(&mut Unstructured::new(rest)) else {
        return;
    };
    let has_layout = archive.windows(10).any(|w| w == b"oci-layout");
    std::fs::write(path, &archive).expect("write the archive");
    let source = Source::OciArchive {
        path: path.clone(),
        tag: tag.clone(),
    };
    if !has_layout {
        assert!(
            plan_only(&source, &choice).is_err(),
            "planned without `oci-layout`"
        );
    }
    check(&source, tag.as_deref(), &choice);
});
