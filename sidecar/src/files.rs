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

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use lanyard::refresh::{issued_at, parse_times};
use lanyard::wire::{Credential, CredentialResponse};
use zeroize::Zeroizing;

use crate::error::SidecarError;
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
    write_atomic_with(dir, name, contents, FileOpts::default(), |_| Ok(())).map(|(p, _)| p)
}

/// [`write_atomic`] with a mode and owner; also says whether the old contents differed.
pub fn write_atomic_opts(
    dir: &Path,
    name: &str,
    contents: &[u8],
    opts: FileOpts,
) -> io::Result<(PathBuf, Change)> {
    write_atomic_with(dir, name, contents, opts, |_| Ok(()))
}

/// Compares the regular file at `path` (if any) with `contents`, reading at most one byte
/// more than `contents`.
fn compare_existing(path: &Path, contents: &[u8]) -> Change {
    use std::io::Read;
    let Ok(m) = fs::symlink_metadata(path) else {
        return Change::Created;
    };
    if !m.is_file() {
        return Change::Created;
    }
    if m.len() != contents.len() as u64 {
        return Change::Changed;
    }
    let mut old = Zeroizing::new(Vec::with_capacity(contents.len()));
    match File::open(path).and_then(|f| f.take(contents.len() as u64 + 1).read_to_end(&mut old)) {
        Ok(_) if old.as_slice() == contents => Change::Unchanged,
        _ => Change::Changed,
    }
}

/// [`write_atomic_opts`] with a hook that runs after the temp file is complete and before
/// the rename (tests use it to inject a failure at the worst moment).
fn write_atomic_with(
    dir: &Path,
    name: &str,
    contents: &[u8],
    opts: FileOpts,
    before_rename: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<(PathBuf, Change)> {
    let target = dir.join(name);
    if fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(io::Error::other(
            "a symbolic link is in the way; the sidecar does not replace or follow links",
        ));
    }
    let change = compare_existing(&target, contents);
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", fastrand::u64(..)));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        if opts.uid.is_some() || opts.gid.is_some() {
            std::os::unix::fs::fchown(&file, opts.uid, opts.gid)?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        // The umask may have cleared bits; set the exact mode last (chown can clear some).
        file.set_permissions(fs::Permissions::from_mode(opts.mode))?;
        drop(file);
        before_rename(&tmp)?;
        fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()
    })();
    match result {
        Ok(()) => Ok((target, change)),
        Err(e) => {
            // Gone already if the rename happened; either way nothing is left behind.
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Mode of directories the sidecar creates for targets: others may pass through (to reach
/// a file whose owner or mode lets them read it) but not list.
pub const TARGET_DIR_MODE: u32 = 0o711;

/// Creates `path` as a directory with [`DIR_MODE`] (and missing parents) unless it exists;
/// refuses a symlink or a non-directory in its place.
fn ensure_dir(path: &Path) -> Result<(), SidecarError> {
    ensure_dir_mode(path, DIR_MODE)
}

fn ensure_dir_mode(path: &Path, mode: u32) -> Result<(), SidecarError> {
    let werr = |source: io::Error| SidecarError::Write {
        path: path.to_owned(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => Err(SidecarError::Refused {
            path: path.to_owned(),
            why: "it is a symbolic link; the sidecar does not write through links".to_owned(),
        }),
        Ok(_) => Err(SidecarError::Refused {
            path: path.to_owned(),
            why: "it exists and is not a directory".to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(path)
                .map_err(werr)?;
            // The umask may have cleared bits.
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(werr)
        }
        Err(e) => Err(werr(e)),
    }
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
    ensure_dir_mode(dir, if open { TARGET_DIR_MODE } else { DIR_MODE })?;
    let path = dir.join(name);
    if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(SidecarError::Refused {
            path,
            why: "a symbolic link is in the way; the sidecar does not replace or follow links"
                .to_owned(),
        });
    }
    write_atomic_opts(dir, name, contents, opts)
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
    ensure_dir(dir)?;
    let mut written = Vec::with_capacity(resp.credentials.len());
    for (c, json) in planned {
        let (refresh_after, expires_at) = times(c)?;
        let role_dir = dir.join(&c.role);
        ensure_dir(&role_dir)?;
        let mut files = Vec::with_capacity(c.data.len() + 1);
        let mut rotated = false;
        for (field, value) in &c.data {
            let (path, change) = write_atomic_opts(
                &role_dir,
                field,
                value.expose().as_bytes(),
                FileOpts::default(),
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
            write_atomic_opts(dir, &name, &json, FileOpts::default()).map_err(|source| {
                SidecarError::Write {
                    path: dir.join(&name),
                    source,
                }
            })?;
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

/// Checks that `path` (under `dir`) can be written without following a link: `dir` and
/// every existing parent are real directories, and the file itself, if present, is a
/// regular file.
fn preflight(dir: &Path, t: &Target) -> Result<(), SidecarError> {
    let refuse = |path: PathBuf, why: &str| SidecarError::Refused {
        path,
        why: why.to_owned(),
    };
    let mut p = dir.to_owned();
    let check_dir = |p: &Path| match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(refuse(
            p.to_owned(),
            "it is a symbolic link; the sidecar does not write through links",
        )),
        Ok(m) if !m.is_dir() => Err(refuse(p.to_owned(), "it exists and is not a directory")),
        _ => Ok(()),
    };
    check_dir(&p)?;
    for part in t.parents() {
        p.push(part);
        check_dir(&p)?;
    }
    p.push(t.file_name());
    match fs::symlink_metadata(&p) {
        Ok(m) if m.file_type().is_symlink() => Err(refuse(
            p,
            "a symbolic link is in the way; the sidecar does not replace or follow links",
        )),
        Ok(m) if !m.is_file() => Err(refuse(p, "it exists and is not a regular file")),
        _ => Ok(()),
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
    ensure_dir_mode(dir, if open { TARGET_DIR_MODE } else { DIR_MODE })?;
    let mut by_role: Vec<WrittenCredential> = Vec::new();
    for (t, c, bytes) in planned {
        let mut parent = dir.to_owned();
        for part in t.parents() {
            parent.push(part);
            ensure_dir_mode(&parent, TARGET_DIR_MODE)?;
        }
        let opts = FileOpts {
            mode: t.mode,
            uid: t.uid,
            gid: t.gid,
        };
        let (path, change) =
            write_atomic_opts(&parent, t.file_name(), &bytes, opts).map_err(|source| {
                SidecarError::Write {
                    path: parent.join(t.file_name()),
                    source,
                }
            })?;
        let _ = fs::remove_file(marker_path(&path));
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

/// The marker written next to `file` when its credential expired: `FILE.expired`.
pub fn marker_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".expired");
    PathBuf::from(s)
}

/// Deals with the files of a credential past its expiry: removes them, or writes a
/// `FILE.expired` marker (mode 0444, holding the expiry time) next to each. Returns the
/// paths removed or marked; errors are collected, not fatal.
pub fn expire_files(
    files: &[PathBuf],
    remove: bool,
    expired_at: &str,
) -> (Vec<PathBuf>, Vec<String>) {
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let r = if remove {
            match fs::remove_file(f) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        } else {
            let marker = marker_path(f);
            match (marker.parent(), marker.file_name().and_then(|n| n.to_str())) {
                (Some(dir), Some(name)) => write_atomic_opts(
                    dir,
                    name,
                    format!("{expired_at}\n").as_bytes(),
                    FileOpts {
                        mode: 0o444,
                        ..FileOpts::default()
                    },
                )
                .map(|_| ()),
                _ => Err(io::Error::other("no parent directory")),
            }
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
        let err = write_atomic_with(dir.path(), "token", b"new", FileOpts::default(), |tmp| {
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
