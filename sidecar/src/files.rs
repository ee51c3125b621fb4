//! The secrets directory: name checks, atomic writes and the on-disk layout.
//!
//! For each credential of role `R` with data fields `F`:
//! - `DIR/R/F` holds the raw secret value (e.g. `DIR/dev-app/token`);
//! - `DIR/R.json` holds `{"role","kind","expires_at","refresh_after","lease_id","data":{...}}`.
//!
//! Every file is written atomically with mode 0400: a temp file `.NAME.tmp-RANDOM` in the same
//! directory is written, fsynced and renamed over the target, then the directory is fsynced.
//! A reader sees the old file or the new one, never a torn one; on failure the temp file is
//! removed and the old file is left as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use lanyard::Secret;
use lanyard::refresh::{issued_at, parse_times};
use lanyard::wire::CredentialResponse;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::SidecarError;

/// Mode of every secret file.
pub const FILE_MODE: u32 = 0o400;
/// Mode of directories the sidecar creates (the secrets directory and one per role).
pub const DIR_MODE: u32 = 0o700;
/// Longest role or field name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Checks that `name` is a plain file name: 1 to [`MAX_NAME_BYTES`] of `[A-Za-z0-9._-]`, not
/// starting with a dot (so never `.`, `..`, a hidden file or one of our temp files). `what`
/// names the thing in the error ("role", "field").
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("empty {what} name"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("{what} name longer than {MAX_NAME_BYTES} bytes"));
    }
    if name.starts_with('.') {
        return Err(format!("{what} name {name:?} starts with a dot"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{what} name {:?} holds {bad:?}; only A-Z a-z 0-9 . _ - are allowed",
            name.escape_default().to_string()
        ));
    }
    Ok(())
}

/// Writes `contents` to `dir/name` atomically with mode 0400 and returns the path written.
/// `name` must already have passed [`check_name`].
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<PathBuf> {
    write_atomic_with(dir, name, contents, |_| Ok(()))
}

/// [`write_atomic`] with a hook that runs after the temp file is complete and before the
/// rename (tests use it to inject a failure at the worst moment).
fn write_atomic_with(
    dir: &Path,
    name: &str,
    contents: &[u8],
    before_rename: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let target = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", fastrand::u64(..)));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // The umask may have cleared bits from FILE_MODE but never added any; make it exact.
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        before_rename(&tmp)?;
        fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()
    })();
    match result {
        Ok(()) => Ok(target),
        Err(e) => {
            // Gone already if the rename happened; either way nothing is left behind.
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Creates `path` as a directory with [`DIR_MODE`] (and missing parents) unless it exists;
/// refuses a symlink or a non-directory in its place.
fn ensure_dir(path: &Path) -> Result<(), SidecarError> {
    let werr = |source: io::Error| SidecarError::Write {
        path: path.to_owned(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => Err(werr(io::Error::other(
            "is a symbolic link; the sidecar does not write through links",
        ))),
        Ok(_) => Err(werr(io::Error::other("exists and is not a directory"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)
            .map_err(werr),
        Err(e) => Err(werr(e)),
    }
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
    /// Files written for it: one per data field, then `ROLE.json`.
    pub files: Vec<PathBuf>,
}

/// The JSON file written per role. Secrets serialize as their plain value on purpose.
#[derive(Serialize)]
struct RoleFile<'a> {
    role: &'a str,
    kind: &'a str,
    expires_at: &'a str,
    refresh_after: &'a str,
    lease_id: &'a str,
    data: &'a BTreeMap<String, Secret>,
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

/// Writes every credential of `resp` under `dir` in the layout above. The whole response is
/// checked first, so a hostile or broken answer writes nothing.
pub fn write_response(
    dir: &Path,
    resp: &CredentialResponse,
) -> Result<Vec<WrittenCredential>, SidecarError> {
    check_response(resp)?;
    ensure_dir(dir)?;
    let mut written = Vec::with_capacity(resp.credentials.len());
    for c in &resp.credentials {
        let Some((refresh_after, expires_at)) = parse_times(c) else {
            // check_response parsed these already.
            return Err(SidecarError::Invalid(format!(
                "role {:?}: bad times",
                c.role
            )));
        };
        let role_dir = dir.join(&c.role);
        ensure_dir(&role_dir)?;
        let mut files = Vec::with_capacity(c.data.len() + 1);
        for (field, value) in &c.data {
            let path =
                write_atomic(&role_dir, field, value.expose().as_bytes()).map_err(|source| {
                    SidecarError::Write {
                        path: role_dir.join(field),
                        source,
                    }
                })?;
            files.push(path);
        }
        let json = RoleFile {
            role: &c.role,
            kind: &c.kind,
            expires_at: &c.expires_at,
            refresh_after: &c.refresh_after,
            lease_id: &c.lease_id,
            data: &c.data,
        };
        let mut bytes = Zeroizing::new(serde_json::to_vec_pretty(&json).map_err(|e| {
            SidecarError::Invalid(format!("role {:?}: cannot encode JSON: {e}", c.role))
        })?);
        bytes.push(b'\n');
        let name = format!("{}.json", c.role);
        let path = write_atomic(dir, &name, &bytes).map_err(|source| SidecarError::Write {
            path: dir.join(&name),
            source,
        })?;
        files.push(path);
        written.push(WrittenCredential {
            role: c.role.clone(),
            kind: c.kind.clone(),
            lease_id: c.lease_id.clone(),
            issued_at: issued_at(expires_at, c.ttl_seconds),
            refresh_after,
            expires_at,
            files,
        });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use lanyard::wire::Credential;

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
        Credential {
            role: role.into(),
            kind: "jwt".into(),
            data: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Secret::new(*v)))
                .collect(),
            expires_at: "2030-01-01T00:10:00Z".into(),
            refresh_after: "2030-01-01T00:07:00Z".into(),
            ttl_seconds: 600,
            lease_id: "lease-1".into(),
            ttl_clamped: false,
        }
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
    fn names_must_be_plain() {
        for bad in [
            "../x", "a/b", "..", ".", "", ".hidden", "a b", "a\0b", "é", "x\\y",
        ] {
            assert!(check_name("role", bad).is_err(), "{bad:?} must be refused");
        }
        assert!(check_name("role", &"a".repeat(MAX_NAME_BYTES + 1)).is_err());
        for good in ["dev-app", "token", "a.b_c-D9", "x..y"] {
            assert!(
                check_name("role", good).is_ok(),
                "{good:?} must be accepted"
            );
        }
        let msg = check_name("field", "a/b").expect_err("slash");
        assert!(msg.contains("field") && msg.contains("'/'"), "{msg}");
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
        let err = write_atomic_with(dir.path(), "token", b"new", |tmp| {
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
