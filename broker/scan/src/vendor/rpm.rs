//! RPM's records: the SQLite rpmdb (`var/lib/rpm/rpmdb.sqlite`, or
//! `usr/lib/sysimage/rpm/rpmdb.sqlite` on newer Fedora), the default backend since RPM 4.16
//! (Fedora 33, RHEL 9). Its `Packages` table holds one RPM header blob per package; a header
//! names each file as `DIRNAMES[DIRINDEXES[i]] + BASENAMES[i]` with its digest in
//! `FILEDIGESTS[i]` (hex, algorithm `FILEDIGESTALGO`, MD5 when absent). The Berkeley DB and
//! `ndb` backends of older and SUSE systems are not read.
//!
//! The database is opened from memory (never written to disk), read only, with SQLite's
//! defensive settings and an untrusted schema, and only `SELECT blob FROM Packages` is run; the
//! header parser is pure and bounded.

use std::sync::Arc;

use rusqlite::{Connection, MAIN_DB, OpenFlags, config::DbConfig, limits::Limit};

use super::{Digest, DigestAlg, MAX_RECORDS, Manager, Owned, RecordError};

const TAG_NAME: u32 = 1000;
const TAG_FILEDIGESTS: u32 = 1035;
const TAG_DIRINDEXES: u32 = 1116;
const TAG_BASENAMES: u32 = 1117;
const TAG_DIRNAMES: u32 = 1118;
const TAG_FILEDIGESTALGO: u32 = 5011;

const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

/// RPM's own bound on index entries in a header.
const MAX_INDEX: usize = 0xffff;

/// Reads every package's files from an rpmdb.sqlite image held in memory.
pub fn parse_sqlite(db: &[u8]) -> Result<Vec<Owned>, RecordError> {
    let sqlite = |e: rusqlite::Error| RecordError::new(format!("sqlite: {e}"));
    let mut conn = Connection::open_with_flags(
        ":memory:",
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sqlite)?;
    // SQLite's advice for untrusted database files ("Defense against the dark arts").
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .map_err(sqlite)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)
        .map_err(sqlite)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, 64 << 20)
        .map_err(sqlite)?;
    conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, 4096)
        .map_err(sqlite)?;
    // rpm keeps its database in WAL mode (header bytes 18 and 19 are 2), which an in-memory
    // database cannot open; rpm checkpoints on close, so the main file is whole: it is read as
    // a rollback-journal database (1). The caller's bytes are not changed, nor copied.
    use std::io::Read as _;
    let mut versions = [0u8; 2];
    let wal = db.len() >= 100 && db.starts_with(b"SQLite format 3\0");
    if wal {
        versions = [db[18], db[19]].map(|b| if b == 2 { 1 } else { b });
    }
    let reader: Box<dyn std::io::Read> = if wal {
        Box::new(db[..18].chain(&versions[..]).chain(&db[20..]))
    } else {
        Box::new(db)
    };
    conn.deserialize_read_exact(MAIN_DB, reader, db.len(), true)
        .map_err(sqlite)?;
    conn.pragma_update(None, "cell_size_check", "ON")
        .map_err(sqlite)?;
    let mut stmt = conn.prepare("SELECT blob FROM Packages").map_err(sqlite)?;
    let mut rows = stmt.query([]).map_err(sqlite)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite)? {
        let blob: Vec<u8> = row.get(0).map_err(sqlite)?;
        let files = parse_header(&blob)?;
        if out.len() + files.len() > MAX_RECORDS {
            return Err(RecordError::new("too many entries"));
        }
        out.extend(files);
    }
    Ok(out)
}

/// One index entry of a header.
struct Entry {
    tag: u32,
    kind: u32,
    offset: usize,
    count: usize,
}

/// Parses one header blob as stored in the rpmdb (no lead, no 8-byte magic): `il` and `dl`
/// (big-endian u32), `il` 16-byte index entries (tag, type, offset, count), then `dl` bytes of
/// data. Files without a digest (directories, symlinks, ghosts) are skipped.
pub fn parse_header(blob: &[u8]) -> Result<Vec<Owned>, RecordError> {
    let bad = |why: &str| RecordError::new(format!("rpm header: {why}"));
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        b.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    let il = u32_at(blob, 0).ok_or_else(|| bad("truncated"))? as usize;
    let dl = u32_at(blob, 4).ok_or_else(|| bad("truncated"))? as usize;
    if il > MAX_INDEX {
        return Err(bad("too many index entries"));
    }
    let data_start = 8 + il * 16;
    let data = blob
        .get(data_start..data_start.saturating_add(dl))
        .ok_or_else(|| bad("shorter than its index says"))?;
    let mut entries = Vec::with_capacity(il);
    for i in 0..il {
        let at = 8 + i * 16;
        let field = |k: usize| u32_at(blob, at + 4 * k).ok_or_else(|| bad("truncated index"));
        entries.push(Entry {
            tag: field(0)?,
            kind: field(1)?,
            offset: field(2)? as usize,
            count: field(3)? as usize,
        });
    }
    let find = |tag: u32| entries.iter().find(|e| e.tag == tag);
    let strings = |tag: u32| -> Result<Vec<&str>, RecordError> {
        let Some(e) = find(tag) else {
            return Ok(Vec::new());
        };
        if !matches!(e.kind, TYPE_STRING_ARRAY | TYPE_STRING | TYPE_I18NSTRING) {
            return Err(bad("a string tag has another type"));
        }
        if e.count > data.len() {
            return Err(bad("string count past the data"));
        }
        let mut rest = data
            .get(e.offset..)
            .ok_or_else(|| bad("offset past the data"))?;
        let mut out = Vec::with_capacity(e.count);
        for _ in 0..e.count {
            let end = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| bad("unterminated string"))?;
            out.push(std::str::from_utf8(&rest[..end]).map_err(|_| bad("string not UTF-8"))?);
            rest = &rest[end + 1..];
        }
        Ok(out)
    };
    let ints = |tag: u32| -> Result<Vec<u32>, RecordError> {
        let Some(e) = find(tag) else {
            return Ok(Vec::new());
        };
        if e.kind != TYPE_INT32 {
            return Err(bad("an integer tag has another type"));
        }
        let bytes = e
            .count
            .checked_mul(4)
            .and_then(|n| data.get(e.offset..e.offset.checked_add(n)?))
            .ok_or_else(|| bad("integers past the data"))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let name: Arc<str> = strings(TAG_NAME)?.first().copied().unwrap_or("").into();
    let basenames = strings(TAG_BASENAMES)?;
    let dirnames = strings(TAG_DIRNAMES)?;
    let dirindexes = ints(TAG_DIRINDEXES)?;
    let digests = strings(TAG_FILEDIGESTS)?;
    let alg = match ints(TAG_FILEDIGESTALGO)?.first().copied().unwrap_or(1) {
        1 => DigestAlg::Md5,
        2 => DigestAlg::Sha1,
        8 => DigestAlg::Sha256,
        9 => DigestAlg::Sha384,
        10 => DigestAlg::Sha512,
        // SHA-224 and anything newer: no file of this package can be proven.
        _ => return Ok(Vec::new()),
    };
    if dirindexes.len() != basenames.len() || digests.len() != basenames.len() {
        return Err(bad("file tags of different lengths"));
    }
    let mut out = Vec::new();
    for ((base, &di), hash) in basenames.iter().zip(&dirindexes).zip(&digests) {
        if hash.is_empty() {
            continue;
        }
        let dir = dirnames
            .get(di as usize)
            .ok_or_else(|| bad("directory index out of range"))?;
        let digest = Digest::from_hex(alg, hash).ok_or_else(|| bad("bad file digest"))?;
        out.push(Owned {
            path: format!("{dir}{base}").trim_start_matches('/').to_owned(),
            manager: Manager::Rpm,
            package: name.clone(),
            digest,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with the given (tag, type, count, data) entries, laid out as rpm stores it.
    pub(crate) fn header(entries: &[(u32, u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (tag, kind, count, bytes) in entries {
            while *kind == TYPE_INT32 && data.len() % 4 != 0 {
                data.push(0);
            }
            for v in [*tag, *kind, data.len() as u32, *count] {
                index.extend_from_slice(&v.to_be_bytes());
            }
            data.extend_from_slice(bytes);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend(index);
        out.extend(data);
        out
    }

    fn strs(v: &[&str]) -> Vec<u8> {
        v.iter()
            .flat_map(|s| [s.as_bytes(), b"\0"].concat())
            .collect()
    }

    fn ints(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|i| i.to_be_bytes()).collect()
    }

    #[test]
    fn header_files_are_dirname_plus_basename_with_their_digest() {
        let sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let h = header(&[
            (TAG_NAME, TYPE_STRING, 1, strs(&["demo"])),
            (TAG_FILEDIGESTS, TYPE_STRING_ARRAY, 3, strs(&[sha, "", sha])),
            (TAG_DIRINDEXES, TYPE_INT32, 3, ints(&[0, 1, 1])),
            (
                TAG_BASENAMES,
                TYPE_STRING_ARRAY,
                3,
                strs(&["demo.conf", "link", "README"]),
            ),
            (
                TAG_DIRNAMES,
                TYPE_STRING_ARRAY,
                2,
                strs(&["/etc/demo/", "/usr/share/demo/"]),
            ),
            (TAG_FILEDIGESTALGO, TYPE_INT32, 1, ints(&[8])),
        ]);
        let r = parse_header(&h).expect("parses");
        let got: Vec<(&str, &str)> = r.iter().map(|o| (&*o.package, o.path.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("demo", "etc/demo/demo.conf"),
                ("demo", "usr/share/demo/README")
            ]
        );
        assert_eq!(r[0].digest.alg, DigestAlg::Sha256);
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let good = header(&[
            (TAG_DIRINDEXES, TYPE_INT32, 1, ints(&[5])),
            (TAG_BASENAMES, TYPE_STRING_ARRAY, 1, strs(&["x"])),
            (TAG_DIRNAMES, TYPE_STRING_ARRAY, 1, strs(&["/a/"])),
            (TAG_FILEDIGESTS, TYPE_STRING_ARRAY, 1, strs(&["00"])),
        ]);
        assert!(parse_header(&good).is_err(), "directory index out of range");
        for cut in 0..good.len() {
            let _ = parse_header(&good[..cut]);
        }
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_header(&huge).is_err());
        let mut count = header(&[(TAG_BASENAMES, TYPE_STRING_ARRAY, u32::MAX, strs(&["x"]))]);
        assert!(parse_header(&count).is_err());
        count = header(&[(TAG_DIRINDEXES, TYPE_INT32, u32::MAX, ints(&[1]))]);
        assert!(parse_header(&count).is_err());
        assert!(parse_sqlite(b"not a database").is_err());
        assert!(parse_sqlite(b"").is_err());
    }
}
