//! Package ownership: which files of the image a package manager installed, and whether the
//! file in the image is byte-identical to what the package shipped. Public vendor material
//! (a library's README example, a docstring's sample URL) is then told apart from the image
//! owner's secrets: a pristine vendor file lowers low- and medium-confidence findings and
//! password-like ones (sample credentials) to `info` with the reason on the finding; a
//! high-confidence provider key or private key stays counted, marked as found in a vendor
//! file. Also here: a `.pyc` finding that repeats its source's literal is counted once, at the
//! source.
//!
//! The layers hand in what they saw (`LayerVendor`): the package managers' record files
//! (bounded copies), symlinks, and the digests of the files that carry a finding (no other file
//! is hashed). `apply` then works on the image's final view: the last version of each record
//! file that no later layer deletes, paths resolved through the image's own symlinks (merged
//! `/usr`: dpkg lists `bin/x`, the layers hold `usr/bin/x`).
//!
//! The records are written by whoever built the image: they can prove that a file is what a
//! package shipped only as far as the image is honest. A forged record can lower a low- or
//! medium-confidence finding, a password-like one or a private key; that is why provider
//! tokens never go down.
//!
//! # Layout
//! - this file: the digests, [`record_kind`], the final view and `apply`.
//! - [`dpkg`]: `var/lib/dpkg/info/*.md5sums` and the `Conffiles:` of `var/lib/dpkg/status`.
//! - [`python`]: `*.dist-info/RECORD` (skipped when `direct_url.json` is there, PEP 610).
//! - [`rpm`]: the SQLite rpmdb and RPM header blobs.
//! - [`apk`]: the installed database, `lib/apk/db/installed`.
//!
//! npm records only a tarball's hash, never a file's: files under `node_modules/` are never
//! proven pristine.

pub mod apk;
pub mod dpkg;
pub mod python;
pub mod rpm;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::report::{Finding, FingerprintKind, Location};
pub use crate::report::{Manager, VendorFile};
use crate::rules::{Confidence, Severity};

/// At most this many entries are read from one record file.
pub(crate) const MAX_RECORDS: usize = 2_000_000;

/// A record file larger than this is not read (the files it lists are then not proven).
pub const MAX_RECORD_FILE_BYTES: u64 = 64 << 20;

/// The record files of one image are kept in memory up to this total.
pub const MAX_RECORD_BYTES_PER_IMAGE: u64 = 128 << 20;

/// A file larger than this is not hashed: a finding in it is never proven to be vendor
/// material (it counts as found).
pub const MAX_HASHED_FILE_BYTES: u64 = 16 << 20;

/// A digest algorithm a record may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlg {
    /// MD5 (dpkg, old RPM).
    Md5,
    /// SHA-1 (apk `Q1`).
    Sha1,
    /// SHA-256 (RECORD, RPM, apk `Q2`).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl DigestAlg {
    pub(crate) fn len(self) -> usize {
        match self {
            DigestAlg::Md5 => 16,
            DigestAlg::Sha1 => 20,
            DigestAlg::Sha256 => 32,
            DigestAlg::Sha384 => 48,
            DigestAlg::Sha512 => 64,
        }
    }
}

/// A file digest from a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Algorithm.
    pub alg: DigestAlg,
    /// Raw digest bytes (their length is the algorithm's).
    pub bytes: Vec<u8>,
}

impl Digest {
    /// `None` when `bytes` has the wrong length for `alg`.
    pub fn new(alg: DigestAlg, bytes: Vec<u8>) -> Option<Digest> {
        (bytes.len() == alg.len()).then_some(Digest { alg, bytes })
    }

    /// From hex digits; `None` when they are not hex or of the wrong length.
    pub fn from_hex(alg: DigestAlg, hex_digits: &str) -> Option<Digest> {
        Digest::new(alg, hex::decode(hex_digits).ok()?)
    }
}

/// One file a package installed, as its record lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    /// Path as listed (no leading `/`; not yet resolved through symlinks).
    pub path: String,
    /// Whose record.
    pub manager: Manager,
    /// Package or project name.
    pub package: Arc<str>,
    /// What the file's content hashes to.
    pub digest: Digest,
}

/// Why a record file could not be read. Never holds file content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError(String);

impl RecordError {
    pub(crate) fn new(why: impl Into<String>) -> RecordError {
        RecordError(why.into())
    }

    pub(crate) fn at(line: usize, why: &str) -> RecordError {
        RecordError(format!("line {line}: {why}"))
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which record a path in a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// `var/lib/dpkg/status`.
    DpkgStatus,
    /// `var/lib/dpkg/info/PKG[:ARCH].md5sums`.
    DpkgMd5sums,
    /// `…/X.dist-info/RECORD`.
    PythonRecord,
    /// `…/X.dist-info/direct_url.json` (only its presence matters).
    PythonDirectUrl,
    /// `var/lib/rpm/rpmdb.sqlite`, `usr/lib/sysimage/rpm/rpmdb.sqlite`.
    RpmSqlite,
    /// `lib/apk/db/installed`.
    ApkInstalled,
}

/// The record kind of a path inside a layer (no leading `/`), if it is one. Pure.
pub fn record_kind(path: &str) -> Option<RecordKind> {
    if !path.ends_with(['s', 'D', 'n', 'e', 'd']) {
        return None;
    }
    match path {
        "var/lib/dpkg/status" => return Some(RecordKind::DpkgStatus),
        "var/lib/rpm/rpmdb.sqlite" | "usr/lib/sysimage/rpm/rpmdb.sqlite" => {
            return Some(RecordKind::RpmSqlite);
        }
        "lib/apk/db/installed" | "usr/lib/apk/db/installed" => {
            return Some(RecordKind::ApkInstalled);
        }
        _ => {}
    }
    if let Some(name) = path.strip_prefix("var/lib/dpkg/info/") {
        return dpkg::package_of_md5sums(name)
            .filter(|_| !name.contains('/'))
            .map(|_| RecordKind::DpkgMd5sums);
    }
    if path.ends_with(".dist-info/RECORD") {
        return Some(RecordKind::PythonRecord);
    }
    if path.ends_with(".dist-info/direct_url.json") {
        return Some(RecordKind::PythonDirectUrl);
    }
    None
}

/// The digests of one file's content, in every algorithm a record may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHashes {
    md5: [u8; 16],
    sha1: Vec<u8>,
    sha256: Vec<u8>,
    sha384: Vec<u8>,
    sha512: Vec<u8>,
}

impl FileHashes {
    /// Hashes `content`.
    pub fn of(content: &[u8]) -> FileHashes {
        use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, SHA384, SHA512, digest as hash};
        use md5::Digest as _;
        FileHashes {
            md5: md5::Md5::digest(content).into(),
            sha1: hash(&SHA1_FOR_LEGACY_USE_ONLY, content).as_ref().to_vec(),
            sha256: hash(&SHA256, content).as_ref().to_vec(),
            sha384: hash(&SHA384, content).as_ref().to_vec(),
            sha512: hash(&SHA512, content).as_ref().to_vec(),
        }
    }

    /// Does the content hash to `d`?
    pub fn matches(&self, d: &Digest) -> bool {
        let mine: &[u8] = match d.alg {
            DigestAlg::Md5 => &self.md5,
            DigestAlg::Sha1 => &self.sha1,
            DigestAlg::Sha256 => &self.sha256,
            DigestAlg::Sha384 => &self.sha384,
            DigestAlg::Sha512 => &self.sha512,
        };
        mine == d.bytes.as_slice()
    }
}

/// A record file seen in a layer.
#[derive(Debug, Clone)]
pub(crate) struct RecordFile {
    pub path: String,
    pub kind: RecordKind,
    /// The content, or why it was not kept (over a bound).
    pub bytes: Result<Vec<u8>, String>,
}

/// A file of a layer that carries a finding, with its digests (`None`: too large to hash).
#[derive(Debug, Clone)]
pub(crate) struct HashedFile {
    pub path: String,
    pub hashes: Option<FileHashes>,
}

/// What one layer hands to the vendor pass.
#[derive(Debug, Default)]
pub(crate) struct LayerVendor {
    pub layer: usize,
    pub records: Vec<RecordFile>,
    /// Symlinks (path, target) of the layer itself (not of nested archives).
    pub links: Vec<(String, String)>,
    pub hashed: Vec<HashedFile>,
}

/// An in-memory key of a finding's value (never reported): tells whether a `.pyc` finding
/// repeats its source file's literal.
pub(crate) type ValueKey = [u8; 16];

/// The [`ValueKey`] of `value` under `rule`.
pub(crate) fn value_key(rule: &str, value: &[u8]) -> ValueKey {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"lanyard-scan/pyc-dedupe\0");
    ctx.update(rule.as_bytes());
    ctx.update(b"\0");
    ctx.update(value);
    let d = ctx.finish();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d.as_ref()[..16]);
    k
}

/// The file of the layer a finding's path is in: the outer archive for a member of a nested
/// one (`a.tar.gz!/x` → `a.tar.gz`). Pure.
pub fn layer_file(path: &str) -> &str {
    path.split("!/").next().unwrap_or(path)
}

/// Can a pristine vendor file lower this finding? Low- and medium-confidence findings,
/// password-like ones (sample credentials in URLs and assignments) and private keys (a key
/// that a package ships byte-identical to every installation, such as the self-test keys
/// compiled into libgnutls, is public by construction); never a high-confidence provider
/// token (`ghp_…`, `AKIA…`, a SAS signature…), which is still somebody's live credential: it
/// stays counted, marked as found in a vendor file, for an operator to judge.
pub fn downgradable(f: &Finding) -> bool {
    f.confidence != Confidence::High
        || f.fingerprint_kind == FingerprintKind::Location
        || f.rule.starts_with("private-key-")
        || f.rule == "file-ssh-private-key"
}

/// Is the path from the layer deleted by a later layer's whiteout?
pub(crate) type DeletedLater<'a> = dyn Fn(usize, &str) -> bool + 'a;

/// The image's symlinks in its final view: the last layer's link at each path that no later
/// layer deletes.
struct Links(HashMap<String, String>);

impl Links {
    fn new(layers: &[LayerVendor], deleted_later: &DeletedLater<'_>) -> Links {
        let mut order: Vec<&LayerVendor> = layers.iter().collect();
        order.sort_by_key(|l| l.layer);
        let mut map = HashMap::new();
        for l in order {
            for (path, target) in &l.links {
                if !deleted_later(l.layer, path) {
                    map.insert(path.clone(), target.clone());
                }
            }
        }
        Links(map)
    }

    /// `path` with every directory component resolved through the image's symlinks (at most
    /// 40 links, as the kernel); the last component is kept as is.
    fn resolve(&self, path: &str) -> String {
        let mut todo: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .rev()
            .map(str::to_owned)
            .collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                done.pop();
                continue;
            }
            if todo.is_empty() {
                done.push(c);
                break;
            }
            let candidate = if done.is_empty() {
                c.clone()
            } else {
                format!("{}/{c}", done.join("/"))
            };
            match self.0.get(&candidate) {
                Some(target) if hops < 40 => {
                    hops += 1;
                    if target.starts_with('/') {
                        done.clear();
                    }
                    todo.extend(
                        target
                            .split('/')
                            .filter(|c| !c.is_empty() && *c != ".")
                            .rev()
                            .map(str::to_owned),
                    );
                }
                _ => done.push(c),
            }
        }
        done.join("/")
    }
}

/// The vendor pass over an image's file findings (`keys[i]` is `findings[i]`'s
/// [`ValueKey`]): marks findings in pristine package files, lowers the downgradable ones to
/// `info` with the reason, and counts a `.pyc`'s repeat of its source's literal once. Record
/// files that cannot be read become warnings (their files are then not proven).
pub(crate) fn apply(
    findings: &mut [Finding],
    keys: &[ValueKey],
    layers: &[LayerVendor],
    deleted_later: &DeletedLater<'_>,
    warnings: &mut Vec<String>,
) {
    mark_vendor_files(findings, layers, deleted_later, warnings);
    dedupe_compiled_python(findings, keys);
}

fn mark_vendor_files(
    findings: &mut [Finding],
    layers: &[LayerVendor],
    deleted_later: &DeletedLater<'_>,
    warnings: &mut Vec<String>,
) {
    let hashes: HashMap<(usize, &str), &FileHashes> = layers
        .iter()
        .flat_map(|l| {
            l.hashed
                .iter()
                .filter_map(move |h| Some(((l.layer, h.path.as_str()), h.hashes.as_ref()?)))
        })
        .collect();
    if hashes.is_empty() {
        return;
    }
    let links = Links::new(layers, deleted_later);
    let wanted: HashSet<String> = hashes.keys().map(|(_, p)| links.resolve(p)).collect();

    // The final view of the record files: the last layer's version, unless deleted later.
    let mut finals: HashMap<&str, (usize, &RecordFile)> = HashMap::new();
    for l in layers {
        for r in &l.records {
            if deleted_later(l.layer, &r.path) {
                continue;
            }
            match finals.get(r.path.as_str()) {
                Some((layer, _)) if *layer > l.layer => {}
                _ => {
                    finals.insert(&r.path, (l.layer, r));
                }
            }
        }
    }
    let direct_url: HashSet<&str> = finals
        .values()
        .filter(|(_, r)| r.kind == RecordKind::PythonDirectUrl)
        .filter_map(|(_, r)| r.path.strip_suffix("/direct_url.json"))
        .collect();
    let mut owners: HashMap<String, Vec<Owned>> = HashMap::new();
    let mut paths: Vec<&&str> = finals.keys().collect();
    paths.sort();
    for path in paths {
        let (_, rec) = finals[*path];
        let parsed = match (&rec.bytes, rec.kind) {
            (_, RecordKind::PythonDirectUrl) => continue,
            (_, RecordKind::PythonRecord)
                if rec
                    .path
                    .strip_suffix("/RECORD")
                    .is_some_and(|d| direct_url.contains(d)) =>
            {
                continue;
            }
            (Err(why), _) => Err(RecordError::new(why.clone())),
            (Ok(b), RecordKind::DpkgStatus) => dpkg::parse_status(b),
            (Ok(b), RecordKind::DpkgMd5sums) => {
                let name = rec.path.rsplit('/').next().unwrap_or("");
                dpkg::parse_md5sums(dpkg::package_of_md5sums(name).unwrap_or(name), b)
            }
            (Ok(b), RecordKind::PythonRecord) => match python::record_site(&rec.path) {
                Some((site, project)) => python::parse_record(site, project, b),
                None => continue,
            },
            (Ok(b), RecordKind::RpmSqlite) => rpm::parse_sqlite(b),
            (Ok(b), RecordKind::ApkInstalled) => apk::parse_installed(b),
        };
        match parsed {
            Ok(list) => {
                for o in list {
                    let resolved = links.resolve(&o.path);
                    if wanted.contains(&resolved) {
                        owners.entry(resolved).or_default().push(o);
                    }
                }
            }
            Err(e) => warnings.push(format!(
                "package records in /{path} not used ({e}): the files they list are not proven pristine"
            )),
        }
    }
    if owners.is_empty() {
        return;
    }
    for f in findings.iter_mut() {
        let Location::File {
            layer_index, path, ..
        } = &f.location
        else {
            continue;
        };
        let file = layer_file(path);
        let Some(h) = hashes.get(&(*layer_index, file)) else {
            continue;
        };
        let Some(list) = owners.get(&links.resolve(file)) else {
            continue;
        };
        let Some(owner) = list.iter().find(|o| h.matches(&o.digest)) else {
            continue;
        };
        f.vendor = Some(VendorFile {
            manager: owner.manager,
            package: owner.package.to_string(),
        });
        if downgradable(f) && f.severity != Severity::Info {
            f.severity = Severity::Info;
            f.reason = Some(format!(
                "the file is byte-identical to the one {} package {} installed (public vendor material)",
                owner.manager.name(),
                owner.package
            ));
        }
    }
}

/// The source file a compiled Python file was compiled from: `d/__pycache__/m.TAG.pyc` or
/// `d/m.pyc` → `d/m.py`. Pure.
pub fn pyc_source(path: &str) -> Option<String> {
    let stem = path.strip_suffix(".pyc")?;
    let (dir, name) = stem.rsplit_once('/').unwrap_or(("", stem));
    let (dir, module) = match dir.strip_suffix("__pycache__") {
        Some(parent) => (parent, name.split('.').next().unwrap_or(name)),
        None => (
            if dir.is_empty() {
                ""
            } else {
                &stem[..dir.len() + 1]
            },
            name,
        ),
    };
    if module.is_empty() {
        return None;
    }
    Some(format!("{dir}{module}.py"))
}

fn dedupe_compiled_python(findings: &mut [Finding], keys: &[ValueKey]) {
    let sources: HashSet<(&str, &str, ValueKey)> = findings
        .iter()
        .zip(keys)
        .filter_map(|(f, k)| match &f.location {
            Location::File { path, .. } if path.ends_with(".py") => {
                Some((path.as_str(), f.rule.as_str(), *k))
            }
            _ => None,
        })
        .collect();
    if sources.is_empty() {
        return;
    }
    let mut lowered = Vec::new();
    for (i, (f, k)) in findings.iter().zip(keys).enumerate() {
        let Location::File { path, .. } = &f.location else {
            continue;
        };
        let Some(src) = pyc_source(path) else {
            continue;
        };
        if sources.contains(&(src.as_str(), f.rule.as_str(), *k)) {
            lowered.push((i, src));
        }
    }
    for (i, src) in lowered {
        let f = &mut findings[i];
        if f.severity != Severity::Info {
            f.severity = Severity::Info;
            f.reason = Some(format!(
                "the same value as in its source file /{src}, which is reported (and counted) there"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_kinds_by_path() {
        assert_eq!(
            record_kind("var/lib/dpkg/status"),
            Some(RecordKind::DpkgStatus)
        );
        assert_eq!(
            record_kind("var/lib/dpkg/info/libc6:amd64.md5sums"),
            Some(RecordKind::DpkgMd5sums)
        );
        assert_eq!(record_kind("var/lib/dpkg/info/bash.list"), None);
        assert_eq!(record_kind("var/lib/dpkg/status-old"), None);
        assert_eq!(
            record_kind("usr/lib/python3/dist-packages/x-1.dist-info/RECORD"),
            Some(RecordKind::PythonRecord)
        );
        assert_eq!(
            record_kind("usr/lib/python3/dist-packages/x-1.dist-info/direct_url.json"),
            Some(RecordKind::PythonDirectUrl)
        );
        assert_eq!(
            record_kind("var/lib/rpm/rpmdb.sqlite"),
            Some(RecordKind::RpmSqlite)
        );
        assert_eq!(
            record_kind("lib/apk/db/installed"),
            Some(RecordKind::ApkInstalled)
        );
        assert_eq!(record_kind("app/RECORD"), None);
        assert_eq!(record_kind("usr/bin/python3"), None);
    }

    #[test]
    fn paths_resolve_through_the_images_own_symlinks() {
        let layers = vec![
            LayerVendor {
                layer: 0,
                links: vec![
                    ("bin".into(), "usr/bin".into()),
                    ("lib".into(), "/usr/lib".into()),
                    ("usr/lib64".into(), "lib".into()),
                    ("loop".into(), "loop".into()),
                    ("gone".into(), "usr/share".into()),
                ],
                ..LayerVendor::default()
            },
            LayerVendor {
                layer: 1,
                links: vec![("opt/app".into(), "../srv/app".into())],
                ..LayerVendor::default()
            },
        ];
        let links = Links::new(&layers, &|layer, path| layer < 1 && path == "gone");
        assert_eq!(links.resolve("bin/bash"), "usr/bin/bash");
        assert_eq!(
            links.resolve("/lib/x86_64-linux-gnu/libc.so.6"),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(links.resolve("usr/lib64/ld.so"), "usr/lib/ld.so");
        assert_eq!(links.resolve("opt/app/main.py"), "srv/app/main.py");
        assert_eq!(
            links.resolve("usr/bin/bin"),
            "usr/bin/bin",
            "the last component is kept"
        );
        assert_eq!(
            links.resolve("gone/x"),
            "gone/x",
            "a deleted link is not followed"
        );
        assert_eq!(links.resolve("loop/x"), "loop/x", "a link loop ends");
    }

    #[test]
    fn pyc_files_map_to_their_source() {
        assert_eq!(
            pyc_source(
                "usr/lib/python3/dist-packages/sqlalchemy/__pycache__/engine.cpython-311.pyc"
            ),
            Some("usr/lib/python3/dist-packages/sqlalchemy/engine.py".into())
        );
        assert_eq!(pyc_source("app/legacy.pyc"), Some("app/legacy.py".into()));
        assert_eq!(pyc_source("legacy.pyc"), Some("legacy.py".into()));
        assert_eq!(pyc_source("app/legacy.py"), None);
    }

    #[test]
    fn file_hashes_match_only_their_own_digests() {
        let h = FileHashes::of(b"hello\n");
        let md5 =
            Digest::from_hex(DigestAlg::Md5, "b1946ac92492d2347c6235b4d2611184").expect("md5");
        assert!(h.matches(&md5));
        let sha256 = Digest::from_hex(
            DigestAlg::Sha256,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
        )
        .expect("sha256");
        assert!(h.matches(&sha256));
        assert!(!FileHashes::of(b"hello!\n").matches(&sha256));
        assert!(Digest::from_hex(DigestAlg::Sha1, "b1946ac92492d2347c6235b4d2611184").is_none());
    }
}
