//! Held directories: a directory opened once, without following a link, in which files are
//! then created, compared, renamed and removed by plain name relative to its descriptor
//! (`openat`, `mkdirat`, `renameat`, `unlinkat`, all with `O_NOFOLLOW` or its equivalent).
//!
//! What is held is the directory itself, not its path: once a [`HeldDir`] is open, another
//! process that swaps a component of its path for a symbolic link (or renames it away)
//! cannot redirect a write, a rename or a removal to somewhere else. Each step down opens
//! the next component relative to the held one, refusing a link there (`ELOOP`) or a
//! non-directory (`ENOTDIR`), so a walk from the secrets directory never leaves it.
//!
//! Only the secrets directory itself is opened by path ([`HeldDir::open`]); its last
//! component is not followed either, the components above it are the operator's own
//! configuration.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Flags of every directory open: read-only, a directory, never through a link.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A directory held open by descriptor; names given to its methods must be plain names
/// (one component, no `/`), as [`check_name`](crate::names::check_name) makes them.
#[derive(Debug)]
pub struct HeldDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Whether `e` says a symbolic link was in the way of an `O_NOFOLLOW` open.
pub fn is_link_error(e: &io::Error) -> bool {
    Errno::from_io_error(e) == Some(Errno::LOOP)
}

/// Whether `e` says a component is not a directory.
pub fn is_not_dir_error(e: &io::Error) -> bool {
    Errno::from_io_error(e) == Some(Errno::NOTDIR)
}

fn mode(bits: u32) -> Mode {
    Mode::from_bits_truncate(bits)
}

/// `ELOOP`, the error of an `O_NOFOLLOW` open that met a link.
fn link_error() -> io::Error {
    Errno::LOOP.into()
}

impl HeldDir {
    /// Opens the directory at `path`. A symbolic link as its last component fails with
    /// `ELOOP` ([`is_link_error`]), a file with `ENOTDIR`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = match rustix::fs::open(path, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            // With O_DIRECTORY, Linux answers ENOTDIR for a link too: tell them apart.
            Err(Errno::NOTDIR)
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                return Err(link_error());
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            fd,
            path: path.to_owned(),
        })
    }

    /// The path this directory was reached by (for messages; never used to reach it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory (for messages and reports).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens the sub-directory `name`, creating it with `mode_bits` (exactly, whatever the
    /// umask) when it is missing. A link in its place fails with `ELOOP`, a file with
    /// `ENOTDIR`; an existing directory keeps its mode.
    pub fn child(&self, name: &str, mode_bits: u32) -> io::Result<Self> {
        let created = match rustix::fs::mkdirat(&self.fd, name, mode(mode_bits)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(e.into()),
        };
        let fd = self.open_dir(name)?;
        if created {
            rustix::fs::fchmod(&fd, mode(mode_bits))?;
        }
        Ok(Self {
            fd,
            path: self.join(name),
        })
    }

    /// Opens the existing sub-directory `name`; `None` when there is nothing by that name.
    pub fn existing_child(&self, name: &str) -> io::Result<Option<Self>> {
        match self.open_dir(name) {
            Ok(fd) => Ok(Some(Self {
                fd,
                path: self.join(name),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the directory `name` in this one: `ELOOP` for a link, `ENOTDIR` for a file.
    fn open_dir(&self, name: &str) -> io::Result<OwnedFd> {
        match rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(fd),
            // With O_DIRECTORY, Linux answers ENOTDIR for a link too: tell them apart.
            Err(Errno::NOTDIR) if self.kind(name).ok().flatten() == Some(FileType::Symlink) => {
                Err(link_error())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// What `name` is (not following a link); `None` when there is nothing by that name.
    pub fn kind(&self, name: &str) -> io::Result<Option<FileType>> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens `name` for reading if it is a regular file; `None` otherwise (missing, a link,
    /// a directory, a pipe: never blocks, never follows).
    pub fn open_regular(&self, name: &str) -> Option<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, name, flags, Mode::empty()).ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then(|| File::from(fd))
    }

    /// Creates the new file `name` for writing with `mode_bits` (before the umask); fails if
    /// anything, a link included, is already there.
    pub fn create_new(&self, name: &str, mode_bits: u32) -> io::Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(
            &self.fd,
            name,
            flags,
            mode(mode_bits),
        )?))
    }

    /// Renames `from` to `to`, both in this directory (atomic; replaces `to`, and a link
    /// named `to` is replaced, not followed).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Removes the file (or link) `name`; a missing one is not an error.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Flushes the directory's entries to disk (after a rename).
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_files_are_not_entered() {
        let tmp = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("outside");
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("link")).expect("link");
        std::fs::write(tmp.path().join("file"), b"x").expect("file");
        let root = HeldDir::open(tmp.path()).expect("open");
        let e = root.child("link", 0o700).expect_err("a link");
        assert!(is_link_error(&e), "{e}");
        let e = root.existing_child("link").expect_err("a link");
        assert!(is_link_error(&e), "{e}");
        let e = root.child("file", 0o700).expect_err("a file");
        assert!(is_not_dir_error(&e), "{e}");
        assert!(root.existing_child("missing").expect("ok").is_none());
        let e = HeldDir::open(&tmp.path().join("link")).expect_err("a link");
        assert!(is_link_error(&e), "{e}");
        assert!(root.open_regular("link").is_none());
        assert!(root.create_new("link", 0o400).is_err());
        assert_eq!(
            root.kind("link").expect("stat"),
            Some(FileType::Symlink),
            "not followed"
        );
        assert!(
            std::fs::read_dir(outside.path())
                .expect("ls")
                .next()
                .is_none()
        );
    }

    #[test]
    fn a_held_directory_stays_the_same_directory_after_its_path_is_swapped() {
        let tmp = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("outside");
        let root = HeldDir::open(tmp.path()).expect("open");
        let sub = root.child("sub", 0o700).expect("sub");
        std::fs::rename(tmp.path().join("sub"), tmp.path().join("moved")).expect("mv");
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("sub")).expect("link");
        drop(sub.create_new("f", 0o600).expect("create"));
        sub.rename("f", "g").expect("rename");
        assert!(tmp.path().join("moved/g").is_file());
        assert!(
            std::fs::read_dir(outside.path())
                .expect("ls")
                .next()
                .is_none()
        );
    }
}
