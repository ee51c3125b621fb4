//! The writer: atomic writes with mode and owner, the secrets directory's default layout,
//! targets on disk, and the files of expired credentials.
//!
//! For each credential of role `R` with data fields `F`:
//! - `DIR/R/F` holds the raw secret value (e.g. `DIR/dev-app/token`);
//! - `DIR/R.json` holds `{"role","kind","expires_at","refresh_after","lease_id","ttl_seconds",
//!   "data":{...}}`.
//!
//! Every file is written atomically with mode 0400: a temp file `.NAME.tmp-RANDOM` in the same
//! directory is written, fsynced and renamed over the target, then the directory is fsynced.
//! A reader sees the old file or the new one, never a torn one; on failure the temp file is
//! removed and the old file is left as it was.
//!
//! Every step below the secrets directory goes through a [`HeldDir`]: the directory is
//! opened once without following a link, and the temp file is created, renamed and removed
//! relative to that descriptor, so another process that swaps a path component for a
//! symbolic link meanwhile cannot redirect a write (or a removal) outside the secrets
//! directory.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use lanyard::refresh::{issued_at, parse_times};
use lanyard::wire::{Credential, CredentialResponse};
use zeroize::Zeroizing;

use crate::error::SidecarError;
use crate::held::{HeldDir, is_link_error, is_not_dir_error};
use crate::names::{FILE_MODE, check_name};
use crate::render::{render, role_json};
use crate::target::Target;

/// Mode of directories the sidecar creates (the secrets directory and one per role).
pub const DIR_MODE: u32 = 0o700;

/// Mode and owner of a file the sidecar writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOpts {
    /// File mode (default [`FILE_MODE`]).
    pub mode: u32,
    /// Owner uid to set (needs root or CAP_CHOWN).
    pub uid: Option<u32>,
    /// Owner gid to set.
    pub gid: Option<u32>,
}

impl Default for FileOpts {
    fn default() -> Self {
        Self {
            mode: FILE_MODE,
            uid: None,
            gid: None,
        }
    }
}

/// What a write did to the file that was there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// There was no file.
    Created,
    /// There was a file with other contents.
    Changed,
    /// There was a file with the same contents.
    Unchanged,
}

/// Writes `contents` to `dir/name` atomically with mode 0400 and returns the path written.
/// `name` must already have passed [`check_name`].
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<PathBuf> {
    let held = HeldDir::open(dir)?;
    write_atomic_with(&held, name, contents, FileOpts::default(), |_| Ok(())).map(|(p, _)| p)
}

/// Compares the regular file `name` in `dir` (if any) with `contents`, reading at most one
/// byte more than `contents`; never follows a link.
fn compare_existing(dir: &HeldDir, name: &str, contents: &[u8]) -> Change {
    use std::io::Read;
    let Some(file) = dir.open_regular(name) else {
        return Change::Created;
    };
    match file.metadata() {
        Ok(m) if m.len() == contents.len() as u64 => {}
        _ => return Change::Changed,
    }
    let mut old = Zeroizing::new(Vec::with_capacity(contents.len()));
    match file.take(contents.len() as u64 + 1).read_to_end(&mut old) {
        Ok(_) if old.as_slice() == contents => Change::Unchanged,
        _ => Change::Changed,
    }
}

const LINK_IN_THE_WAY: &str =
    "a symbolic link is in the way; the sidecar does not replace or follow links";

/// Writes `name` in the held directory `dir` atomically with `opts`, and says whether the
/// old contents differed. `before_rename` runs after the temp file is complete and before
/// the rename (tests use it to inject a failure at the worst moment).
fn write_atomic_with(
    dir: &HeldDir,
    name: &str,
    contents: &[u8],
    opts: FileOpts,
    before_rename: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<(PathBuf, Change)> {
    let target = dir.join(name);
    if dir.kind(name)? == Some(rustix::fs::FileType::Symlink) {
        return Err(io::Error::other(LINK_IN_THE_WAY));
    }
    let change = compare_existing(dir, name, contents);
    let tmp = format!(".{name}.tmp-{:016x}", fastrand::u64(..));
    let result = (|| {
        let mut file = dir.create_new(&tmp, FILE_MODE)?;
        if opts.uid.is_some() || opts.gid.is_some() {
            std::os::unix::fs::fchown(&file, opts.uid, opts.gid)?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        // The umask may have cleared bits; set the exact mode last (chown can clear some).
        file.set_permissions(fs::Permissions::from_mode(opts.mode))?;
        drop(file);
        before_rename(&dir.join(&tmp))?;
        dir.rename(&tmp, name)?;
        dir.sync()
    })();
    match result {
        Ok(()) => Ok((target, change)),
        Err(e) => {
            // Gone already if the rename happened; either way nothing is left behind.
            let _ = dir.remove_file(&tmp);
            Err(e)
        }
    }
}

/// Mode of directories the sidecar creates for targets: others may pass through (to reach
/// a file whose owner or mode lets them read it) but not list.
pub const TARGET_DIR_MODE: u32 = 0o711;

/// The error for a directory that could not be opened or created at `path`: a link or a
/// file in its place is a refusal, anything else a write error.
fn dir_error(path: PathBuf, source: io::Error) -> SidecarError {
    if is_link_error(&source) {
        SidecarError::Refused {
            path,
            why: "it is a symbolic link; the sidecar does not write through links".to_owned(),
        }
    } else if is_not_dir_error(&source) {
        SidecarError::Refused {
            path,
            why: "it exists and is not a directory".to_owned(),
        }
    } else {
        SidecarError::Write { path, source }
    }
}

/// Creates the secrets directory `path` with `mode` (and missing parents) unless it exists,
/// then holds it; refuses a symlink or a non-directory in its place.
fn hold_root(path: &Path, mode: u32) -> Result<HeldDir, SidecarError> {
    if let Err(e) = fs::symlink_metadata(path) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(dir_error(path.to_owned(), e));
        }
        let werr = |source: io::Error| SidecarError::Write {
            path: path.to_owned(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(werr)?;
        // The umask may have cleared bits.
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(werr)?;
    }
    HeldDir::open(path).map_err(|e| dir_error(path.to_owned(), e))
}

/// Holds the sub-directory `name` of `dir`, created with `mode` if missing.
fn hold_child(dir: &HeldDir, name: &str, mode: u32) -> Result<HeldDir, SidecarError> {
    dir.child(name, mode)
        .map_err(|e| dir_error(dir.join(name), e))
}

/// Writes one file `dir/name` that is not a credential (the AWS endpoint's authorization
/// token): `dir` is created if missing (traversable by others when `opts` lets anyone but
/// the owner read), links are refused, the write is atomic. `name` must have passed
/// [`check_name`].
pub fn write_secret_file(
    dir: &Path,
    name: &str,
    contents: &[u8],
    opts: FileOpts,
) -> Result<PathBuf, SidecarError> {
    let open = opts.uid.is_some() || opts.gid.is_some() || opts.mode & 0o077 != 0;
    let held = hold_root(dir, if open { TARGET_DIR_MODE } else { DIR_MODE })?;
    let path = held.join(name);
    if held.kind(name).ok().flatten() == Some(rustix::fs::FileType::Symlink) {
        return Err(SidecarError::Refused {
            path,
            why: LINK_IN_THE_WAY.to_owned(),
        });
    }
    write_atomic_with(&held, name, contents, opts, |_| Ok(()))
        .map(|(p, _)| p)
        .map_err(|source| SidecarError::Write { path, source })
}

/// What was written for one credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenCredential {
    /// Role name.
    pub role: String,
    /// Backend kind (`jwt`, `aws-sts`, `vault`).
    pub kind: String,
    /// The broker's lease id.
    pub lease_id: String,
    /// When it was issued (its expiry minus its granted lifetime).
    pub issued_at: SystemTime,
    /// When the broker suggests refreshing it.
    pub refresh_after: SystemTime,
    /// When it stops working.
    pub expires_at: SystemTime,
    /// Files written for it: in the default layout one per data field, then `ROLE.json`;
    /// with targets, its targets' files.
    pub files: Vec<PathBuf>,
    /// Whether a file that was already there now holds something else (a rotation the
    /// application may need to hear about).
    pub rotated: bool,
}

/// Checks a whole response before anything touches the disk: plain role and field names,
/// no role twice, times that parse.
pub fn check_response(resp: &CredentialResponse) -> Result<(), SidecarError> {
    let mut roles = BTreeSet::new();
    for c in &resp.credentials {
        check_name("role", &c.role).map_err(SidecarError::Invalid)?;
        if !roles.insert(c.role.as_str()) {
            return Err(SidecarError::Invalid(format!(
                "role {:?} appears twice in one answer",
                c.role
            )));
        }
        for field in c.data.keys() {
            check_name("field", field)
                .map_err(|why| SidecarError::Invalid(format!("role {:?}: {why}", c.role)))?;
        }
        if parse_times(c).is_none() {
            return Err(SidecarError::Invalid(format!(
                "role {:?}: expires_at or refresh_after is not an RFC 3339 time",
                c.role
            )));
        }
    }
    Ok(())
}

fn times(c: &Credential) -> Result<(SystemTime, SystemTime), SidecarError> {
    parse_times(c).ok_or_else(|| SidecarError::Invalid(format!("role {:?}: bad times", c.role)))
}

/// Writes every credential of `resp` under `dir` in the layout above. The whole response is
/// checked first, so a hostile or broken answer writes nothing.
pub fn write_response(
    dir: &Path,
    resp: &CredentialResponse,
) -> Result<Vec<WrittenCredential>, SidecarError> {
    check_response(resp)?;
    // Render everything before touching the disk.
    let mut planned = Vec::with_capacity(resp.credentials.len());
    for c in &resp.credentials {
        let json =
            role_json(c).map_err(|e| SidecarError::Invalid(format!("role {:?}: {e}", c.role)))?;
        planned.push((c, json));
    }
    let root = hold_root(dir, DIR_MODE)?;
    let mut written = Vec::with_capacity(resp.credentials.len());
    for (c, json) in planned {
        let (refresh_after, expires_at) = times(c)?;
        let role_dir = hold_child(&root, &c.role, DIR_MODE)?;
        let mut files = Vec::with_capacity(c.data.len() + 1);
        let mut rotated = false;
        for (field, value) in &c.data {
            let (path, change) = write_atomic_with(
                &role_dir,
                field,
                value.expose().as_bytes(),
                FileOpts::default(),
                |_| Ok(()),
            )
            .map_err(|source| SidecarError::Write {
                path: role_dir.join(field),
                source,
            })?;
            rotated |= change == Change::Changed;
            files.push(path);
        }
        let name = format!("{}.json", c.role);
        let (path, change) =
            write_atomic_with(&root, &name, &json, FileOpts::default(), |_| Ok(())).map_err(
                |source| SidecarError::Write {
                    path: root.join(&name),
                    source,
                },
            )?;
        rotated |= change == Change::Changed;
        files.push(path);
        written.push(WrittenCredential {
            role: c.role.clone(),
            kind: c.kind.clone(),
            lease_id: c.lease_id.clone(),
            issued_at: issued_at(expires_at, c.ttl_seconds),
            refresh_after,
            expires_at,
            files,
            rotated,
        });
    }
    Ok(written)
}

/// Checks that target `t` under `dir` can be written without following a link: `dir` and
/// every existing parent are real directories, and the file itself, if present, is a
/// regular file. (The write checks each step again, on held directories; this check runs
/// for every target first, so a planted link writes nothing at all.)
fn preflight(dir: &Path, t: &Target) -> Result<(), SidecarError> {
    let mut cur = match HeldDir::open(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(dir_error(dir.to_owned(), e)),
    };
    for part in t.parents() {
        match cur.existing_child(part) {
            Ok(Some(next)) => cur = next,
            Ok(None) => return Ok(()),
            Err(e) => return Err(dir_error(cur.join(part), e)),
        }
    }
    let refuse = |why: &str| SidecarError::Refused {
        path: cur.join(t.file_name()),
        why: why.to_owned(),
    };
    match cur.kind(t.file_name()) {
        Ok(Some(rustix::fs::FileType::Symlink)) => Err(refuse(LINK_IN_THE_WAY)),
        Ok(Some(rustix::fs::FileType::RegularFile)) | Ok(None) => Ok(()),
        Ok(Some(_)) => Err(refuse("it exists and is not a regular file")),
        Err(e) => Err(SidecarError::Write {
            path: cur.join(t.file_name()),
            source: e,
        }),
    }
}

/// Writes the `targets` of `resp` under `dir`. Every target is rendered and every path is
/// checked before the first byte is written, so a missing role or field, a bad template or
/// a planted link writes nothing. Roles without a target are not written.
pub fn write_targets(
    dir: &Path,
    targets: &[Target],
    resp: &CredentialResponse,
) -> Result<Vec<WrittenCredential>, SidecarError> {
    write_targets_with(dir, targets, resp, |_| {})
}

/// [`write_targets`] with a hook that runs for each target once its directories are held
/// and before its file is written (tests swap a path component there).
fn write_targets_with(
    dir: &Path,
    targets: &[Target],
    resp: &CredentialResponse,
    mut dirs_held: impl FnMut(&Target),
) -> Result<Vec<WrittenCredential>, SidecarError> {
    check_response(resp)?;
    let mut planned = Vec::with_capacity(targets.len());
    for t in targets {
        let c = resp.credential(&t.role).ok_or_else(|| {
            SidecarError::Invalid(format!(
                "target {:?} needs role {:?}, but the broker granted only: {}; check the \
                 policy or the target's role",
                t.rel_path(),
                t.role,
                if resp.credentials.is_empty() {
                    "nothing".to_owned()
                } else {
                    resp.credentials
                        .iter()
                        .map(|c| c.role.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))
        })?;
        let bytes = render(t, c)
            .map_err(|e| SidecarError::Invalid(format!("target {:?}: {e}", t.rel_path())))?;
        planned.push((t, c, bytes));
    }
    for t in targets {
        preflight(dir, t)?;
    }
    let open = targets
        .iter()
        .any(|t| t.uid.is_some() || t.gid.is_some() || t.mode & 0o077 != 0);
    let root = hold_root(dir, if open { TARGET_DIR_MODE } else { DIR_MODE })?;
    let mut by_role: Vec<WrittenCredential> = Vec::new();
    for (t, c, bytes) in planned {
        let mut held = None;
        for part in t.parents() {
            held = Some(hold_child(
                held.as_ref().unwrap_or(&root),
                part,
                TARGET_DIR_MODE,
            )?);
        }
        let parent = held.as_ref().unwrap_or(&root);
        dirs_held(t);
        let opts = FileOpts {
            mode: t.mode,
            uid: t.uid,
            gid: t.gid,
        };
        let name = t.file_name();
        let (path, change) =
            write_atomic_with(parent, name, &bytes, opts, |_| Ok(())).map_err(|source| {
                SidecarError::Write {
                    path: parent.join(name),
                    source,
                }
            })?;
        let _ = parent.remove_file(&format!("{name}{MARKER_SUFFIX}"));
        let (refresh_after, expires_at) = times(c)?;
        match by_role.iter_mut().find(|w| w.role == c.role) {
            Some(w) => {
                w.files.push(path);
                w.rotated |= change == Change::Changed;
            }
            None => by_role.push(WrittenCredential {
                role: c.role.clone(),
                kind: c.kind.clone(),
                lease_id: c.lease_id.clone(),
                issued_at: issued_at(expires_at, c.ttl_seconds),
                refresh_after,
                expires_at,
                files: vec![path],
                rotated: change == Change::Changed,
            }),
        }
    }
    Ok(by_role)
}

/// What the name of an expired file's marker adds to the file's name.
pub const MARKER_SUFFIX: &str = ".expired";

/// The marker written next to `file` when its credential expired: `FILE.expired`.
pub fn marker_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(MARKER_SUFFIX);
    PathBuf::from(s)
}

/// Holds the directory that `file` (a path under `dir`, as [`write_response`] and
/// [`write_targets`] report them) is in, walking down from `dir` without creating or
/// following anything; returns it with the file's name.
fn hold_parent_of<'a>(dir: &Path, file: &'a Path) -> io::Result<(HeldDir, &'a str)> {
    let rel = file
        .strip_prefix(dir)
        .map_err(|_| io::Error::other("not under the secrets directory"))?;
    let parts: Vec<&str> = rel
        .iter()
        .map(|p| {
            p.to_str()
                .ok_or_else(|| io::Error::other("not a plain name"))
        })
        .collect::<io::Result<_>>()?;
    let Some((name, parents)) = parts.split_last() else {
        return Err(io::Error::other("no file name"));
    };
    let mut cur = HeldDir::open(dir)?;
    for part in parents {
        cur = cur
            .existing_child(part)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    }
    Ok((cur, name))
}

/// Deals with the files of a credential past its expiry (paths under the secrets directory
/// `dir`): removes them, or writes a `FILE.expired` marker (mode 0444, holding the expiry
/// time) next to each. Returns the paths removed or marked; errors are collected, not
/// fatal. Like every write, this walks held directories: a component swapped for a link
/// makes it fail, never remove or write anything outside.
pub fn expire_files(
    dir: &Path,
    files: &[PathBuf],
    remove: bool,
    expired_at: &str,
) -> (Vec<PathBuf>, Vec<String>) {
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let r = match hold_parent_of(dir, f) {
            Err(e) if remove && e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
            Ok((parent, name)) if remove => parent.remove_file(name),
            Ok((parent, name)) => write_atomic_with(
                &parent,
                &format!("{name}{MARKER_SUFFIX}"),
                format!("{expired_at}\n").as_bytes(),
                FileOpts {
                    mode: 0o444,
                    ..FileOpts::default()
                },
                |_| Ok(()),
            )
            .map(|_| ()),
        };
        match r {
            Ok(()) => done.push(f.clone()),
            Err(e) => errors.push(format!("{}: {e}", f.display())),
        }
    }
    (done, errors)
}

#[cfg(test)]
mod tests {

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .expect("read_dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    fn cred(role: &str, fields: &[(&str, &str)]) -> Credential {
        crate::fixtures::credential(role, fields)
    }

    fn response(credentials: Vec<Credential>) -> CredentialResponse {
        CredentialResponse {
            request_id: "req".into(),
            identity: "id".into(),
            credentials,
            session: None,
            admitted_at: None,
        }
    }

    #[test]
    fn writes_content_with_mode_0400_and_no_temp_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write_atomic(dir.path(), "token", b"first").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"first");
        assert_eq!(mode(&p), 0o400);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn overwrites_a_read_only_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomic(dir.path(), "token", b"first").expect("first");
        let p = write_atomic(dir.path(), "token", b"second, longer").expect("second");
        assert_eq!(fs::read(&p).expect("read"), b"second, longer");
        assert_eq!(mode(&p), 0o400);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn failure_before_rename_keeps_the_old_file_and_removes_the_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomic(dir.path(), "token", b"old").expect("first");
        let mut saw_tmp = None;
        let held = HeldDir::open(dir.path()).expect("hold");
        let err = write_atomic_with(&held, "token", b"new", FileOpts::default(), |tmp| {
            saw_tmp = Some(tmp.to_owned());
            assert!(tmp.exists());
            Err(io::Error::other("disk full"))
        })
        .expect_err("injected failure");
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read(dir.path().join("token")).expect("read"), b"old");
        assert!(!saw_tmp.expect("hook ran").exists());
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn a_directory_in_the_way_fails_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("token")).expect("mkdir");
        fs::write(dir.path().join("token").join("inside"), b"keep").expect("inside");
        assert!(write_atomic(dir.path(), "token", b"new").is_err());
        assert_eq!(
            fs::read(dir.path().join("token").join("inside")).expect("read"),
            b"keep"
        );
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn missing_directory_is_an_error_without_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = dir.path().join("nope");
        assert!(write_atomic(&gone, "token", b"x").is_err());
        assert!(!gone.exists());
    }

    #[test]
    fn response_layout_is_raw_fields_plus_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = dir.path().join("secrets");
        let resp = response(vec![
            cred("dev-app", &[("token", "eyJabc")]),
            cred(
                "aws",
                &[("access_key_id", "AKIA1"), ("secret_access_key", "s3cr3t")],
            ),
        ]);
        let written = write_response(&secrets, &resp).expect("write");
        assert_eq!(written.len(), 2);
        assert_eq!(
            fs::read(secrets.join("dev-app/token")).expect("raw"),
            b"eyJabc"
        );
        assert_eq!(
            fs::read(secrets.join("aws/secret_access_key")).expect("raw"),
            b"s3cr3t"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(secrets.join("aws.json")).expect("json"))
                .expect("parse");
        assert_eq!(json["role"], "aws");
        assert_eq!(json["kind"], "jwt");
        assert_eq!(json["lease_id"], "lease-1");
        assert_eq!(json["expires_at"], "2030-01-01T00:10:00Z");
        assert_eq!(json["refresh_after"], "2030-01-01T00:07:00Z");
        assert_eq!(json["data"]["access_key_id"], "AKIA1");
        assert_eq!(mode(&secrets.join("aws.json")), 0o400);
        assert_eq!(mode(&secrets.join("aws")), DIR_MODE);
        let w = &written[0];
        assert_eq!(
            w.expires_at
                .duration_since(w.issued_at)
                .expect("order")
                .as_secs(),
            600
        );
        assert_eq!(w.files.last(), Some(&secrets.join("dev-app.json")));
    }

    #[test]
    fn hostile_names_write_nothing() {
        for resp in [
            response(vec![
                cred("ok", &[("token", "v")]),
                cred("../escape", &[("token", "v")]),
            ]),
            response(vec![cred("ok", &[("../../etc/passwd", "v")])]),
            response(vec![cred("ok", &[("a/b", "v")])]),
            response(vec![cred("..", &[("token", "v")])]),
            response(vec![cred("ok", &[("t", "v")]), cred("ok", &[("t", "w")])]),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let secrets = dir.path().join("secrets");
            let e = write_response(&secrets, &resp).expect_err("must refuse");
            assert!(matches!(e, SidecarError::Invalid(_)), "{e:?}");
            assert!(!secrets.exists(), "nothing may be written");
            assert!(!e.to_string().contains("v\""), "{e}");
        }
    }

    #[test]
    fn bad_times_write_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = cred("ok", &[("token", "v")]);
        c.expires_at = "tomorrow".into();
        let e = write_response(dir.path(), &response(vec![c])).expect_err("bad time");
        assert!(e.to_string().contains("RFC 3339"), "{e}");
        assert!(!dir.path().join("ok").exists());
    }

    fn everything_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).expect("read_dir").filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                out.extend(everything_under(&p));
            }
            out.push(p);
        }
        out
    }

    fn deep_target() -> Target {
        Target {
            role: "ok".into(),
            path: vec!["sub".into(), "deeper".into(), "token".into()],
            mode: FILE_MODE,
            uid: None,
            gid: None,
            format: crate::target::Format::Raw { field: None },
        }
    }

    /// The worst moment, made certain: right after the sidecar reached the target's
    /// directory and before it writes the file, `sub` is moved away and a link to a
    /// directory outside (holding a `deeper/` of its own) takes its name. The file must land
    /// in the directory that was reached (now `sub.real`), never outside.
    #[test]
    fn a_component_swapped_for_a_symlink_before_the_write_does_not_redirect_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let secrets = tmp.path().join("secrets");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("deeper")).expect("outside");
        let resp = response(vec![cred("ok", &[("token", "new")])]);
        let mut swapped = false;
        let written = write_targets_with(&secrets, &[deep_target()], &resp, |_| {
            fs::rename(secrets.join("sub"), secrets.join("sub.real")).expect("move away");
            std::os::unix::fs::symlink(&outside, secrets.join("sub")).expect("plant link");
            swapped = true;
        })
        .expect("written where it was reached");
        assert!(swapped);
        assert_eq!(
            everything_under(&outside),
            vec![outside.join("deeper")],
            "nothing written outside"
        );
        assert_eq!(
            fs::read(secrets.join("sub.real/deeper/token")).expect("inside"),
            b"new"
        );
        assert_eq!(written[0].files, vec![secrets.join("sub/deeper/token")]);
        // The next write refuses the link instead of following it.
        let e = write_targets(&secrets, &[deep_target()], &resp).expect_err("a link");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(everything_under(&outside), vec![outside.join("deeper")]);
    }

    /// Expiry walks held directories too: a removal or a marker never reaches outside.
    #[test]
    fn expiring_through_a_swapped_component_touches_nothing_outside() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let secrets = tmp.path().join("secrets");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("deeper")).expect("outside");
        fs::write(outside.join("deeper/token"), b"not yours").expect("decoy");
        let resp = response(vec![cred("ok", &[("token", "v")])]);
        let written = write_targets(&secrets, &[deep_target()], &resp).expect("write");
        fs::rename(secrets.join("sub"), secrets.join("sub.real")).expect("move away");
        std::os::unix::fs::symlink(&outside, secrets.join("sub")).expect("plant link");
        for remove in [true, false] {
            let (done, errors) = expire_files(&secrets, &written[0].files, remove, "then");
            assert!(done.is_empty() && errors.len() == 1, "{done:?} {errors:?}");
            assert_eq!(
                fs::read(outside.join("deeper/token")).expect("decoy"),
                b"not yours"
            );
            assert_eq!(everything_under(&outside).len(), 2, "no marker outside");
        }
        // Back in place, expiry works.
        fs::remove_file(secrets.join("sub")).expect("unlink");
        fs::rename(secrets.join("sub.real"), secrets.join("sub")).expect("back");
        let (done, errors) = expire_files(&secrets, &written[0].files, false, "then");
        assert_eq!((done.len(), errors.len()), (1, 0), "{errors:?}");
        assert_eq!(
            fs::read(secrets.join("sub/deeper/token.expired")).expect("marker"),
            b"then\n"
        );
        let (done, _) = expire_files(&secrets, &written[0].files, true, "then");
        assert_eq!(done.len(), 1);
        assert!(!secrets.join("sub/deeper/token").exists());
    }

    #[test]
    fn refuses_to_write_through_a_symlinked_role_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("ok")).expect("symlink");
        let e = write_response(dir.path(), &response(vec![cred("ok", &[("token", "v")])]))
            .expect_err("symlink");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(fs::read_dir(elsewhere.path()).expect("ls").next().is_none());
    }
}
