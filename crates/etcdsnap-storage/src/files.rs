//! Crash-safe file primitives: every file etcdsnap writes on local disk goes through these.
//!
//! - Files are 0600 and directories 0700 ([`open_private`], [`create_private_dir`]).
//! - Nothing is read or written through a symbolic link planted at a file's name
//!   ([`open_no_follow`], `O_NOFOLLOW` in [`open_private`]).
//! - A small file is replaced whole or not at all ([`write_atomic`]: `.part`, fsync, rename,
//!   fsync of the directory); one read is bounded by the size a metadata file may have
//!   ([`read_bounded`]).
//! - A large file being written has no name until it is complete: [`open_unnamed`]
//!   (`O_TMPFILE`) and [`link_unnamed`], which never replaces an existing file. File systems
//!   without unnamed files are recognised ([`unnamed_unsupported`]) so callers can fall back to
//!   a named file and a rename on the same file system ([`same_file_system`]).
//!
//! Used by the local snapshot store (`store::local`), its locks (`store::locks`) and
//! point-in-time recovery's local segments (`pitr::local`).

use crate::store::StoreError;
use etcdsnap_api::consts::PART_SUFFIX;
use etcdsnap_api::metadata::MAX_METADATA_BYTES;
use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Whether `a` and `b` are on the same file system (so a rename between them is atomic).
pub fn same_file_system(a: &Path, b: &Path) -> Result<bool, StoreError> {
    Ok(dev(a)? == dev(b)?)
}

fn dev(path: &Path) -> Result<u64, StoreError> {
    fs::metadata(path).map(|m| m.dev()).map_err(StoreError::io("inspect", path))
}

/// An unnamed file in `dir` (`O_TMPFILE`), 0600.
pub fn open_unnamed(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).read(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir)
}

/// Whether the kernel or file system cannot create unnamed files (then the named fallback is used).
pub fn unnamed_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOENT))
}

/// Gives an unnamed file its name, atomically: it fails rather than replace an existing file.
pub fn link_unnamed(file: &File, path: &Path) -> std::io::Result<()> {
    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        fd_path.as_str(),
        nix::fcntl::AT_FDCWD,
        path,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(std::io::Error::from)
}

/// Creates (or opens) a file of the store for writing: mode 0600, never through a symlink
/// planted at its name; `truncate` empties an existing one.
pub fn open_private(path: &Path, truncate: bool) -> std::io::Result<File> {
    OpenOptions::new().create(true).truncate(truncate).write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Opens a file of the store for reading without following a symlink at its name: a link
/// planted in the snapshot or metadata directory must not make etcdsnap read (or upload, or
/// restore) a file from elsewhere.
pub fn open_no_follow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            std::io::Error::other("it is a symbolic link, and etcdsnap does not follow links in its store")
        } else {
            e
        }
    })
}

/// Writes every byte of `bufs` with as few `writev` calls as the kernel allows (std's
/// `write_all_vectored` is not stable yet).
pub fn write_all_vectored(file: &mut File, bufs: &[IoSlice<'_>]) -> std::io::Result<()> {
    let mut owned: Vec<IoSlice<'_>> = bufs.iter().filter(|b| !b.is_empty()).copied().collect();
    let mut rest = owned.as_mut_slice();
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads a metadata file if it exists and is not larger than the limit.
pub fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let file = match open_no_follow(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_METADATA_BYTES as u64 {
        return Err(format!("{} bytes, more than the {MAX_METADATA_BYTES} accepted", meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_METADATA_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(Some(bytes))
}

/// Makes the entries of `dir` (names created, renamed or removed) durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io("fsync directory", dir))
}

/// Creates `dir` (and missing parents) 0700; every directory it creates is made durable in its
/// parent, so a crash cannot lose the directory of a file already published in it.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        tighten(dir);
        return Ok(());
    }
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.is_dir()).collect();
    for created in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(created) {
            Ok(()) => {}
            // Made by another process meanwhile: as good.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && created.is_dir() => continue,
            Err(e) => return Err(StoreError::io("create directory", created)(e)),
        }
        fs::set_permissions(created, fs::Permissions::from_mode(0o700)).map_err(StoreError::io("chmod", created))?;
        let parent = created.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    Ok(())
}

/// A private directory made by someone else (a hostPath volume's `DirectoryOrCreate` makes
/// 0755) is narrowed to 0700, as etcdsnap and K3s make it. Failing that (not its owner) is worth
/// a warning, not a failed save: the files inside are 0600 either way.
fn tighten(dir: &Path) {
    let open = fs::metadata(dir).map(|m| m.permissions().mode() & 0o077 != 0).unwrap_or(false);
    if open && let Err(e) = fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), error = %e, "private directory is readable by others and cannot be narrowed to 0700");
    }
}

fn part_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(PART_SUFFIX);
    PathBuf::from(s)
}

/// Writes `bytes` to `path` crash-safely: `.part`, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let part = part_path(path);
    let result = (|| {
        let mut f = open_private(&part, true).map_err(StoreError::io("create", &part))?;
        f.write_all(bytes).map_err(StoreError::io("write", &part))?;
        f.sync_all().map_err(StoreError::io("fsync", &part))?;
        fs::rename(&part, path).map_err(StoreError::io("rename", &part))?;
        sync_dir(path.parent().unwrap_or(Path::new("/")))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&part);
    }
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_existing_private_directory_is_narrowed_to_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join(".metadata");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o755)).unwrap();
        super::create_private_dir(&private).unwrap();
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
