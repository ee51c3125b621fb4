//! Names and bounded reads: what every other module checks its input with. Plain file names
//! (roles, fields, path components), target paths, shell variable names, file modes, and
//! size-bounded reads of the small text files configuration names.
//!
//! The leaf of the crate: it imports nothing from it, so the spec parser, the renderer, the
//! writer and the notifier all build on it without building on each other.

use std::io::Read;
use std::path::Path;

/// Mode of every secret file unless a target gives another.
pub const FILE_MODE: u32 = 0o400;
/// Longest role or field name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Most path components in a target path.
pub const MAX_PATH_DEPTH: usize = 8;

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

/// Checks a target path: relative, plain components, not too deep.
pub fn check_path(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Err("path is empty; give a path relative to the secrets directory".to_owned());
    }
    if path.starts_with('/') {
        return Err(format!(
            "path {path:?} is absolute; give a path relative to the secrets directory"
        ));
    }
    let parts: Vec<String> = path.split('/').map(str::to_owned).collect();
    if parts.len() > MAX_PATH_DEPTH {
        return Err(format!(
            "path {path:?} is deeper than {MAX_PATH_DEPTH} components"
        ));
    }
    for p in &parts {
        if p == ".." || p == "." {
            return Err(format!(
                "path {path:?} leaves or names the secrets directory ({p:?}); give a path inside it"
            ));
        }
        check_name("path component", p).map_err(|why| format!("path {path:?}: {why}"))?;
    }
    Ok(parts)
}

/// Checks that `key` is a shell variable name (`[A-Za-z_][A-Za-z0-9_]*`, at most
/// [`MAX_NAME_BYTES`]), as an `env` file's keys must be.
pub fn check_env_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= MAX_NAME_BYTES
        && key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "env key {key:?} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"
        ))
    }
}

/// Parses an octal mode: `0400`, `400`, `0o400`. At most `0777` (no setuid, setgid, sticky).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    let m = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("mode {s:?} is not an octal number like 0400"))?;
    if digits.is_empty() || m > 0o777 {
        return Err(format!(
            "mode {s:?} is out of range; use 0000 to 0777 (no setuid, setgid or sticky bits)"
        ));
    }
    Ok(m)
}

/// Reads a UTF-8 text file of at most `max` bytes (one byte more is read to tell), for the
/// small files configuration names: the config file, a template, a pid file.
pub fn read_bounded(path: &Path, max: usize) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() > max {
        return Err(format!("larger than {} KiB", max / 1024));
    }
    String::from_utf8(buf).map_err(|_| "not UTF-8 text".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn paths_must_stay_inside_the_secrets_dir() {
        let e = check_path("../../etc/x").expect_err("escape");
        assert!(e.contains("leaves"), "{e}");
        let e = check_path("/etc/x").expect_err("absolute");
        assert!(e.contains("absolute"), "{e}");
        assert_eq!(
            check_path("app/config/db.yaml").expect("ok"),
            ["app", "config", "db.yaml"]
        );
    }

    #[test]
    fn env_keys_are_shell_variable_names() {
        for good in ["A", "_x", "AWS_ACCESS_KEY_ID", "a1"] {
            assert_eq!(check_env_key(good), Ok(()), "{good:?}");
        }
        for bad in ["", "1BAD", "A-B", "A B", "É"] {
            assert!(check_env_key(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(check_env_key(&"A".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn modes_are_octal_strings() {
        assert_eq!(parse_mode("0400"), Ok(0o400));
        assert_eq!(parse_mode("440"), Ok(0o440));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("4755").is_err(), "setuid refused");
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn bounded_reads_stop_one_byte_past_the_bound() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("f");
        std::fs::write(&f, "x".repeat(2048)).expect("write");
        assert_eq!(read_bounded(&f, 2048).map(|s| s.len()), Ok(2048));
        let e = read_bounded(&f, 2047).expect_err("one byte over");
        assert!(e.contains("larger than 1 KiB"), "{e}");
        std::fs::write(&f, b"\xff\xfe").expect("write");
        assert_eq!(read_bounded(&f, 2048), Err("not UTF-8 text".to_owned()));
        assert!(read_bounded(&dir.path().join("missing"), 2048).is_err());
    }
}
