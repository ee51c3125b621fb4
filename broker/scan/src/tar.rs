//! A streaming tar reader with every header bounded: ustar, GNU long names (`L`/`K`) and PAX
//! extended headers (`x`), nothing else interpreted. It never touches the file system.
//!
//! Written here rather than taken from a crate so that hostile headers (a 1 GiB GNU long name, a
//! PAX record claiming a huge size) are refused before anything is buffered.

use std::io::{self, Read};

/// Bounds applied to every header.
#[derive(Debug, Clone, Copy)]
pub struct TarLimits {
    /// Longest path (or link target) accepted, in bytes.
    pub max_path_bytes: usize,
    /// Largest PAX extended header accepted, in bytes.
    pub max_pax_bytes: u64,
}

impl Default for TarLimits {
    fn default() -> Self {
        TarLimits {
            max_path_bytes: 4096,
            max_pax_bytes: 1 << 20,
        }
    }
}

/// What a tar entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (types `0`, `\0`, `7`).
    File,
    /// A directory.
    Dir,
    /// A symbolic link; `link` holds the target.
    Symlink,
    /// A hard link; `link` holds the target path inside the archive.
    Hardlink,
    /// Devices, FIFOs and unknown types: data (if any) is skipped.
    Other,
}

/// One entry's header, after long-name and PAX records were applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    /// The path as stored (lossy UTF-8), not normalised.
    pub path: String,
    /// Entry type.
    pub kind: EntryKind,
    /// Size of the entry's data in bytes.
    pub size: u64,
    /// Link target for symlinks and hard links.
    pub link: Option<String>,
    /// Offset of the first data byte from the start of the stream.
    pub data_offset: u64,
}

/// Why a tar stream could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    /// The underlying reader failed (includes decompression errors and budget stops).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The stream ended inside a header or an entry's data.
    #[error("truncated tar stream at byte {0}")]
    Truncated(u64),
    /// A header's checksum does not match: the stream is not tar or is corrupt.
    #[error("bad tar header checksum at byte {0} (not a tar stream, or corrupt)")]
    BadChecksum(u64),
    /// A header field could not be parsed.
    #[error("bad tar header at byte {offset}: {what}")]
    BadHeader {
        /// Offset of the header.
        offset: u64,
        /// Which field.
        what: &'static str,
    },
    /// A path, link target or PAX header is larger than the limits allow.
    #[error("tar header at byte {offset} exceeds a limit: {what}")]
    TooLarge {
        /// Offset of the header.
        offset: u64,
        /// Which limit.
        what: String,
    },
}

/// Streaming reader over a tar archive.
#[derive(Debug)]
pub struct TarReader<R> {
    inner: R,
    pos: u64,
    remaining: u64,
    padding: u64,
    limits: TarLimits,
    finished: bool,
    /// True when the archive ended with its end-of-archive marker (two zero blocks or one zero
    /// block then end of stream).
    pub clean_end: bool,
}

const BLOCK: usize = 512;

impl<R: Read> TarReader<R> {
    /// Reads a tar stream from `inner`.
    pub fn new(inner: R, limits: TarLimits) -> Self {
        TarReader {
            inner,
            pos: 0,
            remaining: 0,
            padding: 0,
            limits,
            finished: false,
            clean_end: false,
        }
    }

    /// Bytes consumed from the underlying reader so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The underlying reader (e.g. to drain it after the end-of-archive marker).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Skips whatever is left of the current entry and returns the next header, or `None` at the
    /// end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<EntryHeader>, TarError> {
        if self.finished {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        let mut pax_path: Option<String> = None;
        let mut pax_link: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        let mut meta_headers = 0u32;
        loop {
            let offset = self.pos;
            let mut block = [0u8; BLOCK];
            let n = self.read_full(&mut block)?;
            if n == 0 {
                // End of stream without an end-of-archive marker.
                self.finished = true;
                if meta_headers > 0 {
                    return Err(TarError::Truncated(self.pos));
                }
                return Ok(None);
            }
            if n < BLOCK {
                return Err(TarError::Truncated(self.pos));
            }
            if block.iter().all(|&b| b == 0) {
                // End-of-archive: a second zero block should follow; accept its absence.
                let mut second = [0u8; BLOCK];
                let _ = self.read_full(&mut second)?;
                self.finished = true;
                self.clean_end = meta_headers == 0;
                if meta_headers > 0 {
                    return Err(TarError::Truncated(self.pos));
                }
                return Ok(None);
            }
            let header = parse_header(&block, offset)?;
            match header.typeflag {
                b'L' | b'K' => {
                    meta_headers += 1;
                    if header.size > self.limits.max_path_bytes as u64 {
                        return Err(TarError::TooLarge {
                            offset,
                            what: format!(
                                "GNU long {} of {} bytes (limit {})",
                                if header.typeflag == b'L' {
                                    "name"
                                } else {
                                    "link"
                                },
                                header.size,
                                self.limits.max_path_bytes
                            ),
                        });
                    }
                    let data = self.read_meta(header.size)?;
                    let s = cstr(&data);
                    if header.typeflag == b'L' {
                        long_name = Some(s);
                    } else {
                        long_link = Some(s);
                    }
                }
                b'x' | b'g' => {
                    meta_headers += 1;
                    if header.size > self.limits.max_pax_bytes {
                        return Err(TarError::TooLarge {
                            offset,
                            what: format!(
                                "PAX header of {} bytes (limit {})",
                                header.size, self.limits.max_pax_bytes
                            ),
                        });
                    }
                    let data = self.read_meta(header.size)?;
                    if header.typeflag == b'x' {
                        for (key, value) in pax_records(&data) {
                            match key {
                                "path" => pax_path = Some(value.to_owned()),
                                "linkpath" => pax_link = Some(value.to_owned()),
                                "size" => {
                                    pax_size =
                                        Some(value.parse().map_err(|_| TarError::BadHeader {
                                            offset,
                                            what: "PAX size",
                                        })?)
                                }
                                _ => {}
                            }
                        }
                    }
                }
                _ => {
                    if meta_headers > 64 {
                        return Err(TarError::TooLarge {
                            offset,
                            what: "more than 64 extension headers before one entry".into(),
                        });
                    }
                    let path = pax_path.or(long_name).unwrap_or(header.name);
                    let link = pax_link.or(long_link).or(header.link);
                    if path.len() > self.limits.max_path_bytes {
                        return Err(TarError::TooLarge {
                            offset,
                            what: format!(
                                "path of {} bytes (limit {})",
                                path.len(),
                                self.limits.max_path_bytes
                            ),
                        });
                    }
                    let kind = match header.typeflag {
                        b'0' | 0 | b'7' => EntryKind::File,
                        b'5' => EntryKind::Dir,
                        b'2' => EntryKind::Symlink,
                        b'1' => EntryKind::Hardlink,
                        _ => EntryKind::Other,
                    };
                    let size = match kind {
                        // Links and directories carry no data even if a size is claimed.
                        EntryKind::Dir | EntryKind::Symlink | EntryKind::Hardlink => 0,
                        _ => pax_size.unwrap_or(header.size),
                    };
                    self.remaining = size;
                    self.padding = pad(size);
                    let link = match kind {
                        EntryKind::Symlink | EntryKind::Hardlink => link,
                        _ => None,
                    };
                    return Ok(Some(EntryHeader {
                        path,
                        kind,
                        size,
                        link,
                        data_offset: self.pos,
                    }));
                }
            }
            if meta_headers > 64 {
                return Err(TarError::TooLarge {
                    offset,
                    what: "more than 64 extension headers before one entry".into(),
                });
            }
        }
    }

    /// A reader over the current entry's remaining data.
    pub fn data(&mut self) -> EntryData<'_, R> {
        EntryData { tar: self }
    }

    /// Seeks over what is left of the current entry (for seekable sources).
    fn seek_past_data(&mut self) -> Result<(), TarError>
    where
        R: io::Seek,
    {
        let n = self.remaining + self.padding;
        if n > 0 {
            let step = i64::try_from(n).map_err(|_| TarError::Truncated(self.pos))?;
            self.inner.seek(io::SeekFrom::Current(step))?;
            self.pos += n;
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    /// Like [`TarReader::next_entry`] but seeks over the previous entry's data.
    pub fn next_entry_seeking(&mut self) -> Result<Option<EntryHeader>, TarError>
    where
        R: io::Seek,
    {
        self.seek_past_data()?;
        self.next_entry()
    }

    fn skip_rest(&mut self) -> Result<(), TarError> {
        let n = self.remaining + self.padding;
        if n > 0 {
            let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
            self.pos += copied;
            if copied < n {
                return Err(TarError::Truncated(self.pos));
            }
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        let len = usize::try_from(size).unwrap_or(usize::MAX);
        let mut data = vec![0u8; len];
        if self.read_full(&mut data)? < len {
            return Err(TarError::Truncated(self.pos));
        }
        let p = pad(size) as usize;
        let mut skip = [0u8; BLOCK];
        if self.read_full(&mut skip[..p])? < p {
            return Err(TarError::Truncated(self.pos));
        }
        Ok(data)
    }

    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(filled)
    }
}

/// Reader over one entry's data; see [`TarReader::data`].
#[derive(Debug)]
pub struct EntryData<'a, R> {
    tar: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tar.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.tar.remaining).unwrap_or(usize::MAX));
        let n = self.tar.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("truncated tar entry at byte {}", self.tar.pos),
            ));
        }
        self.tar.remaining -= n as u64;
        self.tar.pos += n as u64;
        Ok(n)
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

struct RawHeader {
    name: String,
    link: Option<String>,
    size: u64,
    typeflag: u8,
}

fn parse_header(block: &[u8; BLOCK], offset: u64) -> Result<RawHeader, TarError> {
    let stored = parse_octal(&block[148..156]).ok_or(TarError::BadChecksum(offset))?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return Err(TarError::BadChecksum(offset));
    }
    let size = parse_size(&block[124..136]).ok_or(TarError::BadHeader {
        offset,
        what: "size",
    })?;
    let typeflag = block[156];
    let mut name = cstr(&block[0..100]);
    if &block[257..262] == b"ustar" {
        let prefix = cstr(&block[345..500]);
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
    }
    let link = cstr(&block[157..257]);
    Ok(RawHeader {
        name,
        link: (!link.is_empty()).then_some(link),
        size,
        typeflag,
    })
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&c| c != 0)
        .filter(|&c| c != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for c in s {
        if !(b'0'..=b'7').contains(&c) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

fn parse_size(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        // GNU base-256: big-endian, first byte's high bit is the marker.
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    parse_octal(field)
}

/// `"<len> <key>=<value>\n"` records; malformed records end the parse.
fn pax_records(data: &[u8]) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|&c| c == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp + 1 || len > rest.len() {
            break;
        }
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Ok(text) = std::str::from_utf8(record)
            && let Some((k, v)) = text.split_once('=')
        {
            out.push((k, v));
        }
        rest = &rest[len..];
    }
    out
}

/// Writes a minimal ustar archive; for tests of this module and the layer scanner.
#[cfg(test)]
pub(crate) fn build_tar(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, typeflag, data) in entries {
        out.extend_from_slice(&header_bytes(name, *typeflag, data.len() as u64, ""));
        out.extend_from_slice(data);
        out.resize(out.len() + pad(data.len() as u64) as usize, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

#[cfg(test)]
pub(crate) fn header_bytes(name: &str, typeflag: u8, size: u64, link: &str) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[156] = typeflag;
    let l = link.as_bytes();
    h[157..157 + l.len().min(100)].copy_from_slice(&l[..l.len().min(100)]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(data: &[u8]) -> Result<Vec<(EntryHeader, Vec<u8>)>, TarError> {
        let mut r = TarReader::new(data, TarLimits::default());
        let mut out = Vec::new();
        while let Some(h) = r.next_entry()? {
            let mut d = Vec::new();
            r.data().read_to_end(&mut d)?;
            out.push((h, d));
        }
        Ok(out)
    }

    #[test]
    fn seeking_reads_the_same_headers_as_streaming() {
        let tar = build_tar(&[
            ("a.txt", b'0', b"hello"),
            ("dir/", b'5', b""),
            ("dir/b.bin", b'0', &[7u8; 1500]),
        ]);
        let streamed: Vec<(String, u64, u64)> = entries(&tar)
            .expect("valid")
            .into_iter()
            .map(|(h, _)| (h.path, h.size, h.data_offset))
            .collect();
        let mut r = TarReader::new(io::Cursor::new(&tar[..]), TarLimits::default());
        let mut seeked = Vec::new();
        while let Some(h) = r.next_entry_seeking().expect("valid") {
            seeked.push((h.path, h.size, h.data_offset));
        }
        assert_eq!(seeked, streamed);
        assert_eq!(seeked.len(), 3);
        assert!(r.clean_end);
    }

    #[test]
    fn reads_files_dirs_and_links() {
        let mut tar = Vec::new();
        tar.extend_from_slice(&header_bytes("app/", b'5', 0, ""));
        tar.extend_from_slice(&header_bytes("app/a.txt", b'0', 5, ""));
        tar.extend_from_slice(b"hello");
        tar.resize(tar.len() + 507, 0);
        tar.extend_from_slice(&header_bytes("app/l", b'2', 0, "a.txt"));
        tar.resize(tar.len() + 1024, 0);
        let e = entries(&tar).expect("valid tar");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].0.kind, EntryKind::Dir);
        assert_eq!(e[1].0.path, "app/a.txt");
        assert_eq!(e[1].1, b"hello");
        assert_eq!(e[1].0.data_offset, 1024);
        assert_eq!(e[2].0.kind, EntryKind::Symlink);
        assert_eq!(e[2].0.link.as_deref(), Some("a.txt"));
    }

    #[test]
    fn gnu_long_name_and_pax_path_apply_to_next_entry() {
        let long = "d/".repeat(80) + "file";
        let mut tar = Vec::new();
        tar.extend_from_slice(&header_bytes(
            "././@LongLink",
            b'L',
            long.len() as u64 + 1,
            "",
        ));
        let mut name = long.clone().into_bytes();
        name.push(0);
        tar.extend_from_slice(&name);
        tar.resize(tar.len() + pad(name.len() as u64) as usize, 0);
        tar.extend_from_slice(&header_bytes("short", b'0', 0, ""));
        let rec = "path=pax/named\n";
        let record = format!("{} {rec}", rec.len() + 3);
        tar.extend_from_slice(&header_bytes("PaxHeader", b'x', record.len() as u64, ""));
        tar.extend_from_slice(record.as_bytes());
        tar.resize(tar.len() + pad(record.len() as u64) as usize, 0);
        tar.extend_from_slice(&header_bytes("ignored", b'0', 0, ""));
        tar.resize(tar.len() + 1024, 0);
        let e = entries(&tar).expect("valid tar");
        assert_eq!(e[0].0.path, long);
        assert_eq!(e[1].0.path, "pax/named");
    }

    #[test]
    fn huge_long_name_is_refused_before_reading_it() {
        let mut tar = Vec::new();
        tar.extend_from_slice(&header_bytes("././@LongLink", b'L', 1 << 30, ""));
        let err = entries(&tar).expect_err("must refuse");
        assert!(matches!(err, TarError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn truncated_and_corrupt_streams_are_errors() {
        let tar = build_tar(&[("a", b'0', b"0123456789")]);
        assert!(matches!(entries(&tar[..520]), Err(TarError::Io(_))));
        assert!(matches!(entries(&tar[..300]), Err(TarError::Truncated(_))));
        let mut bad = tar.clone();
        bad[0] = b'z';
        assert!(matches!(entries(&bad), Err(TarError::BadChecksum(0))));
    }

    #[test]
    fn end_marker_is_recorded() {
        let tar = build_tar(&[("a", b'0', b"x")]);
        let mut r = TarReader::new(&tar[..], TarLimits::default());
        while r.next_entry().expect("valid").is_some() {}
        assert!(r.clean_end);
        let mut r = TarReader::new(&tar[..1024], TarLimits::default());
        while r.next_entry().expect("valid").is_some() {}
        assert!(!r.clean_end);
    }

    #[test]
    fn base256_size() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 5;
        f[10] = 1;
        assert_eq!(parse_size(&f), Some(261));
    }
}
