//! One reproducible layer: a root file system directory as a gzip-compressed tar, streamed file by
//! file, with the sha256 of both the tar (the diff_id) and the compressed blob computed on the way.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use crate::blob::HashingWriter;
use crate::error::{Error, Result};

/// Owner and/or mode for one path of the layer, in place of uid/gid 0 and the mode on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathOverride {
    /// Relative to the root file system ("var/lib/etcdsnap").
    pub path: PathBuf,
    pub owner: Option<(u64, u64)>,
    pub mode: Option<u32>,
}

impl PathOverride {
    /// `PATH=UID:GID`, e.g. `/var/lib/etcdsnap=65532:65532`.
    pub fn parse_owner(spec: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidOverride { spec: spec.to_string(), reason: reason.to_string() };
        let (path, owner) = spec.split_once('=').ok_or_else(|| invalid("expected PATH=UID:GID"))?;
        let (uid, gid) = owner.split_once(':').ok_or_else(|| invalid("expected PATH=UID:GID"))?;
        let uid = uid.parse().map_err(|_| invalid("the UID is not a number"))?;
        let gid = gid.parse().map_err(|_| invalid("the GID is not a number"))?;
        Ok(PathOverride { path: image_path(path).map_err(invalid)?, owner: Some((uid, gid)), mode: None })
    }

    /// `PATH=OCTAL`, e.g. `/tmp=1777`.
    pub fn parse_mode(spec: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidOverride { spec: spec.to_string(), reason: reason.to_string() };
        let (path, mode) = spec.split_once('=').ok_or_else(|| invalid("expected PATH=OCTAL_MODE"))?;
        let mode = u32::from_str_radix(mode, 8).map_err(|_| invalid("the mode is not an octal number"))?;
        if mode > 0o7777 {
            return Err(invalid("the mode has bits beyond 7777"));
        }
        Ok(PathOverride { path: image_path(path).map_err(invalid)?, owner: None, mode: Some(mode) })
    }
}

/// A path inside the image, absolute or not, as the relative path the layer stores.
fn image_path(path: &str) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => return Err("the path must not contain `..`"),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("the path names the root directory");
    }
    Ok(out)
}

/// What went into the layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// Hex sha256 of the uncompressed tar: the config's `rootfs.diff_ids` entry.
    pub diff_id: String,
    /// Hex sha256 of the compressed blob.
    pub digest: String,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// Number of tar entries.
    pub entries: u64,
}

/// Writes `rootfs` as a gzip tar layer to `out`: entries sorted by name, parents before children,
/// every mtime `mtime`, owner 0:0 unless overridden, modes and symbolic links as on disk.
pub fn write_layer<W: Write>(rootfs: &Path, out: W, mtime: u64, overrides: &[PathOverride]) -> Result<(W, LayerInfo)> {
    let meta = fs::metadata(rootfs).map_err(Error::io(rootfs))?;
    if !meta.is_dir() {
        return Err(Error::Io {
            path: rootfs.to_path_buf(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "the root file system must be a directory"),
        });
    }
    let gz = GzEncoder::new(HashingWriter::new(out), Compression::default());
    let mut walker = Walker {
        root: rootfs,
        tar: tar::Builder::new(HashingWriter::new(gz)),
        mtime,
        overrides,
        applied: vec![false; overrides.len()],
        entries: 0,
    };
    walker.walk(Path::new(""))?;
    if let Some(missing) = overrides.iter().zip(&walker.applied).find(|(_, applied)| !**applied) {
        return Err(Error::OverrideTargetMissing { path: Path::new("/").join(&missing.0.path) });
    }
    let entries = walker.entries;
    let finish_err = Error::io(rootfs);
    let tar_out = walker.tar.into_inner().map_err(finish_err)?;
    let (gz, diff_id, _) = tar_out.finish();
    let blob = gz.finish().map_err(Error::io(rootfs))?;
    let (out, digest, size) = blob.finish();
    Ok((out, LayerInfo { diff_id, digest, size, entries }))
}

struct Walker<'a, W: Write> {
    root: &'a Path,
    tar: tar::Builder<W>,
    mtime: u64,
    overrides: &'a [PathOverride],
    applied: Vec<bool>,
    entries: u64,
}

impl<W: Write> Walker<'_, W> {
    fn walk(&mut self, dir_rel: &Path) -> Result<()> {
        let dir = self.root.join(dir_rel);
        let mut names = fs::read_dir(&dir)
            .and_then(|entries| entries.map(|e| e.map(|e| e.file_name())).collect::<io::Result<Vec<_>>>())
            .map_err(Error::io(&dir))?;
        // OsString orders by bytes on Unix, independent of locale and of the directory's order.
        names.sort();
        for name in names {
            let rel = dir_rel.join(&name);
            let full = self.root.join(&rel);
            let meta = fs::symlink_metadata(&full).map_err(Error::io(&full))?;
            let file_type = meta.file_type();

            let mut header = Header::new_gnu();
            header.set_mtime(self.mtime);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mode(meta.mode() & 0o7777);
            self.apply_overrides(&rel, &mut header);
            self.entries += 1;

            if file_type.is_dir() {
                header.set_entry_type(EntryType::Directory);
                header.set_size(0);
                self.tar.append_data(&mut header, &rel, io::empty()).map_err(Error::io(&full))?;
                self.walk(&rel)?;
            } else if file_type.is_file() {
                header.set_entry_type(EntryType::Regular);
                header.set_size(meta.len());
                let file = File::open(&full).map_err(Error::io(&full))?;
                let data = ExactReader { inner: file.take(meta.len()), remaining: meta.len() };
                self.tar.append_data(&mut header, &rel, data).map_err(Error::io(&full))?;
            } else if file_type.is_symlink() {
                let target = fs::read_link(&full).map_err(Error::io(&full))?;
                header.set_entry_type(EntryType::Symlink);
                header.set_size(0);
                self.tar.append_link(&mut header, &rel, &target).map_err(Error::io(&full))?;
            } else {
                debug_assert!(
                    file_type.is_fifo()
                        || file_type.is_socket()
                        || file_type.is_block_device()
                        || file_type.is_char_device()
                );
                return Err(Error::UnsupportedFileType { path: full });
            }
        }
        Ok(())
    }

    fn apply_overrides(&mut self, rel: &Path, header: &mut Header) {
        for (o, applied) in self.overrides.iter().zip(self.applied.iter_mut()) {
            if o.path != rel {
                continue;
            }
            if let Some((uid, gid)) = o.owner {
                header.set_uid(uid);
                header.set_gid(gid);
            }
            if let Some(mode) = o.mode {
                header.set_mode(mode);
            }
            *applied = true;
        }
    }
}

/// Yields exactly `remaining` bytes or fails: a file that shrinks while it is archived must not
/// leave an entry shorter than its header says.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was being archived"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn sample_rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib64")).unwrap();
        fs::create_dir_all(root.join("var/lib/etcdsnap")).unwrap();
        fs::create_dir(root.join("tmp")).unwrap();
        fs::write(root.join("usr/lib64/ld.so"), b"loader").unwrap();
        fs::write(root.join("b-file"), b"bee").unwrap();
        fs::set_permissions(root.join("b-file"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("usr/lib64", root.join("lib64")).unwrap();
        dir
    }

    fn list(layer: &[u8]) -> Vec<(String, EntryType, u32, u64, u64, Option<String>)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                )
            })
            .collect()
    }

    #[test]
    fn entries_are_sorted_owned_by_root_and_keep_modes_and_links() {
        let dir = sample_rootfs();
        let overrides = [
            PathOverride::parse_owner("/var/lib/etcdsnap=65532:65532").unwrap(),
            PathOverride::parse_mode("/tmp=1777").unwrap(),
        ];
        let (layer, info) = write_layer(dir.path(), Vec::new(), 42, &overrides).unwrap();
        let entries = list(&layer);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["b-file", "lib64", "tmp", "usr", "usr/lib64", "usr/lib64/ld.so", "var", "var/lib", "var/lib/etcdsnap"]
        );
        assert_eq!(info.entries, 9);
        assert!(entries.iter().all(|e| e.4 == 42), "every mtime is the given epoch");
        let get = |name: &str| entries.iter().find(|e| e.0 == name).unwrap();
        assert_eq!(get("b-file").2, 0o750);
        assert_eq!(get("b-file").3, 0);
        assert_eq!(get("lib64").1, EntryType::Symlink);
        assert_eq!(get("lib64").5.as_deref(), Some("usr/lib64"));
        assert_eq!(get("tmp").2, 0o1777);
        assert_eq!(get("var/lib/etcdsnap").3, 65532);
        assert_eq!(get("var/lib").3, 0);
        assert_eq!(info.size, layer.len() as u64);
        assert_eq!(info.digest, crate::blob::sha256_hex(&layer));
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&layer[..]).read_to_end(&mut tar).unwrap();
        assert_eq!(info.diff_id, crate::blob::sha256_hex(&tar));
    }

    #[test]
    fn same_tree_gives_the_same_layer() {
        let dir = sample_rootfs();
        let (a, _) = write_layer(dir.path(), Vec::new(), 0, &[]).unwrap();
        let (b, _) = write_layer(dir.path(), Vec::new(), 0, &[]).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn override_of_a_missing_path_names_it() {
        let dir = sample_rootfs();
        let err =
            write_layer(dir.path(), Vec::new(), 0, &[PathOverride::parse_mode("/nope=755").unwrap()]).unwrap_err();
        assert!(matches!(err, Error::OverrideTargetMissing { .. }));
        assert_eq!(err.to_string(), "/nope: not in the root file system, so its owner or mode cannot be set");
    }

    #[test]
    fn unsupported_file_types_are_refused_by_path() {
        let dir = sample_rootfs();
        let sock = dir.path().join("tmp/sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let err = write_layer(dir.path(), Vec::new(), 0, &[]).unwrap_err();
        assert!(err.to_string().starts_with(&format!("{}: unsupported file type", sock.display())), "{err}");
    }

    #[test]
    fn override_specs_parse_and_reject() {
        let o = PathOverride::parse_owner("/var/lib/etcdsnap=65532:65533").unwrap();
        assert_eq!(o.path, Path::new("var/lib/etcdsnap"));
        assert_eq!(o.owner, Some((65532, 65533)));
        assert_eq!(PathOverride::parse_mode("tmp=1777").unwrap().mode, Some(0o1777));
        assert!(PathOverride::parse_owner("/x=1").is_err());
        assert!(PathOverride::parse_owner("/../x=1:1").is_err());
        assert!(PathOverride::parse_mode("/=755").is_err());
        assert!(PathOverride::parse_mode("/x=999").is_err());
        assert!(PathOverride::parse_mode("/x=17777").is_err());
    }
}
