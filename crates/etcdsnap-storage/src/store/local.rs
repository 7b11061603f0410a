//! Snapshots in a local directory, in K3s's layout: `<dir>/<name>`, K3s's extra metadata in
//! `<dir>/../.metadata/<name>` (only when there is some, byte for byte what K3s writes), and
//! etcdsnap's record in `<dir>/../.metadata/<name>.etcdsnap.json`, which K3s never reads.
//!
//! The snapshot directory holds snapshots and nothing else, because K3s takes every file in it
//! for one: the lock lives in etcdsnap's private directory `<dir>/../.etcdsnap/`, and a snapshot
//! being written is an unnamed file in the snapshot directory (`O_TMPFILE`), invisible to every
//! listing and gone if the process dies. Publishing fsyncs it, writes the record and the
//! metadata, then links the file into place and fsyncs the directories: a snapshot that is
//! visible is complete and has its record. On a file system without `O_TMPFILE` the bytes go to
//! `<dir>/../.etcdsnap/partial/<name>.part` and are renamed into place instead. Files are 0600,
//! directories 0700.

use super::{Listing, NewSnapshot, SnapshotReader, SnapshotSink, SnapshotStore, StoreError};
use crate::failpoint;
use crate::record::{MetadataSource, SnapshotRecord};
use async_trait::async_trait;
use etcdsnap_api::consts::{METADATA_DIR, PART_SUFFIX, PRIVATE_DIR};
use etcdsnap_api::metadata::MAX_METADATA_BYTES;
use etcdsnap_api::{MetadataDocument, SnapshotName, StorageKind, StoredMetadata, parse_stored_metadata};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where partial snapshots go on file systems without `O_TMPFILE`.
const PARTIAL_DIR: &str = "partial";

/// A snapshot directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
    metadata_dir: PathBuf,
    private_dir: PathBuf,
    node_name: String,
}

pub use super::locks::DirLock;

/// etcdsnap's private directory of a snapshot directory: beside it, never in it.
pub fn private_dir_of(snapshot_dir: &Path) -> PathBuf {
    snapshot_dir.parent().unwrap_or(snapshot_dir).join(PRIVATE_DIR)
}

/// What the metadata directory says about one snapshot.
#[derive(Debug, Default)]
pub struct FoundMetadata {
    /// etcdsnap's record (from `<name>.etcdsnap.json`, or an older etcdsnap's `<name>`).
    pub record: Option<MetadataDocument>,
    /// K3s's extra metadata (`<name>` as a string map).
    pub extra: Option<BTreeMap<String, String>>,
    /// Files that were refused, with why.
    pub problems: Vec<String>,
}

impl FoundMetadata {
    /// Fills `record` from what was found.
    pub fn apply_to(self, record: &mut SnapshotRecord, warnings: &mut Vec<String>) {
        if !self.problems.is_empty() {
            record.metadata_source = MetadataSource::Rejected;
        }
        warnings.extend(self.problems);
        if let Some(doc) = self.record {
            record.apply_document(doc);
        }
        if let Some(extra) = self.extra
            && record.extra_metadata.as_ref().is_none_or(BTreeMap::is_empty)
        {
            record.extra_metadata = Some(extra);
            if record.metadata_source != MetadataSource::Document {
                record.metadata_source = MetadataSource::K3sMap;
            }
        }
    }
}

/// Reads the record and K3s's metadata of `name` from `metadata_dir`. Snapshots saved by
/// earlier etcdsnap releases have their record at `<name>` itself; it is read there too.
pub fn read_metadata(metadata_dir: &Path, name: &SnapshotName) -> FoundMetadata {
    let mut found = FoundMetadata::default();
    let record_path = metadata_dir.join(name.record_file_name());
    match read_bounded(&record_path).map(|b| b.map(|b| parse_stored_metadata(&b, name.as_str()))) {
        Ok(None) => {}
        Ok(Some(Ok(StoredMetadata::Document(doc)))) => found.record = Some(*doc),
        Ok(Some(Ok(StoredMetadata::ExtraMetadata(_)))) => {
            found.problems.push(format!("ignoring {}: not an etcdsnap record", record_path.display()))
        }
        Ok(Some(Err(e))) => found.problems.push(format!("ignoring metadata {}: {e}", record_path.display())),
        Err(e) => found.problems.push(format!("ignoring metadata {}: {e}", record_path.display())),
    }
    let k3s_path = metadata_dir.join(name.as_str());
    match read_bounded(&k3s_path).map(|b| b.map(|b| parse_stored_metadata(&b, name.as_str()))) {
        Ok(None) => {}
        Ok(Some(Ok(StoredMetadata::ExtraMetadata(map)))) => found.extra = Some(map),
        Ok(Some(Ok(StoredMetadata::Document(doc)))) => {
            if found.record.is_none() {
                found.record = Some(*doc);
            }
        }
        Ok(Some(Err(e))) => found.problems.push(format!("ignoring metadata {}: {e}", k3s_path.display())),
        Err(e) => found.problems.push(format!("ignoring metadata {}: {e}", k3s_path.display())),
    }
    found
}

impl LocalStore {
    /// Opens `dir`. With `create`, a missing directory is created with mode 0700 (like K3s,
    /// only the default directory is created; a configured one must exist).
    pub fn open(dir: &Path, create: bool, node_name: &str) -> Result<LocalStore, StoreError> {
        if !dir.exists() {
            if !create {
                return Err(StoreError::MissingDir(dir.to_path_buf()));
            }
            create_private_dir(dir)?;
        }
        let meta = fs::metadata(dir).map_err(StoreError::io("inspect", dir))?;
        if !meta.is_dir() {
            return Err(StoreError::NotADirectory(dir.to_path_buf()));
        }
        let dir = dir.canonicalize().map_err(StoreError::io("resolve", dir))?;
        let metadata_dir = dir.parent().unwrap_or(&dir).join(METADATA_DIR);
        let private_dir = private_dir_of(&dir);
        Ok(LocalStore { dir, metadata_dir, private_dir, node_name: node_name.to_string() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn metadata_dir(&self) -> &Path {
        &self.metadata_dir
    }

    pub fn snapshot_path(&self, name: &SnapshotName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// K3s's metadata file of a snapshot.
    pub fn metadata_path(&self, name: &SnapshotName) -> PathBuf {
        self.metadata_dir.join(name.as_str())
    }

    /// etcdsnap's record of a snapshot.
    pub fn record_path(&self, name: &SnapshotName) -> PathBuf {
        self.metadata_dir.join(name.record_file_name())
    }

    /// `file://` URL of a snapshot, as recorded in resources.
    pub fn location(&self, name: &SnapshotName) -> String {
        format!("file://{}", self.snapshot_path(name).display())
    }

    /// Takes the directory lock without waiting: a second writer gets
    /// `snapshot save already in progress`. Holding it, whatever an interrupted save of this
    /// directory left is removed.
    pub fn lock(&self) -> Result<DirLock, StoreError> {
        let lock = DirLock::take(&self.dir)?;
        for removed in self.remove_interrupted() {
            tracing::info!(file = %removed.display(), "removed what an interrupted save left");
        }
        for moved in self.migrate_records() {
            tracing::info!(file = %moved.display(), "moved an earlier release's record out of K3s's metadata file");
        }
        Ok(lock)
    }

    /// Earlier releases kept etcdsnap's record in `.metadata/<name>`, K3s's file: the record
    /// moves to `<name>.etcdsnap.json`, and `<name>` becomes what K3s writes there (the extra
    /// metadata, or nothing). Only a save holding the lock calls this; the record is written
    /// before K3s's file is changed, so a crash in between loses nothing.
    fn migrate_records(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.metadata_dir) else { return Vec::new() };
        let mut moved = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().and_then(|n| SnapshotName::parse(n).ok()) else { continue };
            let record_path = self.record_path(&name);
            if record_path.symlink_metadata().is_ok() {
                continue;
            }
            let Ok(Some(bytes)) = read_bounded(&entry.path()) else { continue };
            let Ok(StoredMetadata::Document(doc)) = parse_stored_metadata(&bytes, name.as_str()) else { continue };
            let k3s = doc.extra_metadata.as_ref().filter(|m| !m.is_empty()).map(etcdsnap_api::go::marshal_string_map);
            let migrated = write_atomic(&record_path, &bytes).and_then(|()| match &k3s {
                Some(map) => write_atomic(&entry.path(), map),
                None => fs::remove_file(entry.path()).map_err(StoreError::io("remove", entry.path())),
            });
            match migrated {
                Ok(()) => moved.push(entry.path()),
                Err(e) => {
                    tracing::warn!(error = %e, "moving an earlier release's record failed; it is still read where it is")
                }
            }
        }
        moved
    }

    /// Removes what a killed save of this directory leaves: partial files in the private
    /// directory, half-written metadata files, and the record (with the K3s metadata written
    /// with it) of a snapshot that was never published. Only a save holding the lock calls
    /// this; K3s's own files are never touched (K3s writes no `.part` in the metadata
    /// directory, and a record is etcdsnap's by its suffix).
    fn remove_interrupted(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for dir in [self.private_dir.join(PARTIAL_DIR), self.metadata_dir.clone()] {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let Some(file_name) = entry.file_name().to_str().map(str::to_string) else { continue };
                if file_name.ends_with(PART_SUFFIX) && fs::remove_file(entry.path()).is_ok() {
                    removed.push(entry.path());
                } else if let Some(name) = SnapshotName::of_record_file(&file_name)
                    && self.snapshot_path(&name).symlink_metadata().is_err()
                {
                    removed.extend(self.remove_metadata(&name));
                }
            }
        }
        removed
    }

    /// Removes a snapshot's record and K3s metadata; returns what was there.
    fn remove_metadata(&self, name: &SnapshotName) -> Vec<PathBuf> {
        [self.record_path(name), self.metadata_path(name)].into_iter().filter(|p| fs::remove_file(p).is_ok()).collect()
    }

    fn list_blocking(&self) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        let entries = fs::read_dir(&self.dir).map_err(StoreError::io("list", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list", &self.dir))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                listing.warnings.push(format!("skipping {}: file name is not UTF-8", entry.path().display()));
                continue;
            };
            // Hidden files and K3s's (or an old etcdsnap's) files in progress are no snapshots.
            if file_name.starts_with('.') || file_name.ends_with(PART_SUFFIX) {
                continue;
            }
            // Regular files only: directories, symlinks and devices are never snapshots.
            let meta = match entry.path().symlink_metadata() {
                Ok(m) if m.is_file() => m,
                Ok(m) if m.file_type().is_symlink() => {
                    listing.warnings.push(format!(
                        "skipping {}: a symbolic link, which etcdsnap does not follow in its store",
                        entry.path().display()
                    ));
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    listing.warnings.push(format!("skipping {}: {e}", entry.path().display()));
                    continue;
                }
            };
            let name = match SnapshotName::parse(file_name) {
                Ok(n) => n,
                Err(e) => {
                    listing.warnings.push(format!("skipping {}: {e}", entry.path().display()));
                    continue;
                }
            };
            listing.records.push(self.record_for(name, &meta, &mut listing.warnings));
        }
        listing.records.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        Ok(listing)
    }

    /// The record of one file: from its name, its stat, its record and K3s's metadata.
    fn record_for(&self, name: SnapshotName, meta: &fs::Metadata, warnings: &mut Vec<String>) -> SnapshotRecord {
        let modified = meta.modified().ok().and_then(|t| jiff::Timestamp::try_from(t).ok());
        let created_at = SnapshotRecord::creation_time(&name, modified.unwrap_or(jiff::Timestamp::UNIX_EPOCH));
        let location = self.location(&name);
        let found = read_metadata(&self.metadata_dir, &name);
        if let Some(doc) = &found.record
            && doc.size != meta.len()
        {
            warnings.push(format!(
                "{location}: {} bytes on disk but its record says {}; run `etcdsnap verify {name}`",
                meta.len(),
                doc.size
            ));
        }
        let mut record =
            SnapshotRecord::stored(name, StorageKind::Local, self.node_name.clone(), location, created_at, meta.len());
        found.apply_to(&mut record, warnings);
        record
    }

    fn delete_blocking(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        let path = self.snapshot_path(name);
        let existed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(StoreError::io("delete", &path)(e)),
        };
        if existed {
            sync_dir(&self.dir)?;
        }
        let mut removed_metadata = false;
        for meta in [self.record_path(name), self.metadata_path(name)] {
            match fs::remove_file(&meta) {
                Ok(()) => removed_metadata = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("delete metadata", &meta)(e)),
            }
        }
        if removed_metadata {
            sync_dir(&self.metadata_dir)?;
        }
        Ok(existed)
    }

    /// Where a new snapshot's bytes go until it is published.
    fn pending(&self, name: &SnapshotName) -> Result<Pending, StoreError> {
        match open_anonymous(&self.dir) {
            Ok(file) => return Ok(Pending::Anonymous(file)),
            Err(e) if anonymous_unsupported(&e) => {}
            Err(e) => return Err(StoreError::io("create a snapshot file in", &self.dir)(e)),
        }
        let partial = self.private_dir.join(PARTIAL_DIR);
        create_private_dir(&partial)?;
        let same_fs = |a: &Path, b: &Path| Ok::<_, StoreError>(dev(a)? == dev(b)?);
        if !same_fs(&partial, &self.dir)? {
            return Err(StoreError::Unsupported(format!(
                "{}: the file system has no O_TMPFILE, and {} is on another file system, so a snapshot cannot be published atomically; put the snapshot directory on a file system with O_TMPFILE (ext4, xfs, btrfs, tmpfs) or below the same mount as its parent",
                self.dir.display(),
                partial.display()
            )));
        }
        let path = partial.join(format!("{name}{PART_SUFFIX}"));
        let file = open_private(&path, true).map_err(StoreError::io("create", &path))?;
        Ok(Pending::Named { file, path })
    }
}

fn dev(path: &Path) -> Result<u64, StoreError> {
    fs::metadata(path).map(|m| m.dev()).map_err(StoreError::io("inspect", path))
}

/// An unnamed file in `dir` (`O_TMPFILE`), 0600.
fn open_anonymous(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).read(true).mode(0o600).custom_flags(libc::O_TMPFILE).open(dir)
}

/// Whether the kernel or file system cannot create unnamed files (then the named fallback is used).
fn anonymous_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOENT))
}

/// Gives an unnamed file its name, atomically: it fails rather than replace an existing file.
fn link_anonymous(file: &File, path: &Path) -> std::io::Result<()> {
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
pub(crate) fn open_private(path: &Path, truncate: bool) -> std::io::Result<File> {
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
fn write_all_vectored(file: &mut File, bufs: &[IoSlice<'_>]) -> std::io::Result<()> {
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

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io("fsync directory", dir))
}

/// Creates `dir` (and missing parents) 0700; a directory it creates is made durable in its
/// parent, so a crash cannot lose the directory of a file already published in it.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        tighten(dir);
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(StoreError::io("create directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(StoreError::io("chmod", dir))?;
    sync_dir(dir.parent().unwrap_or(Path::new("/")))
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

/// A new snapshot's bytes before it is published.
enum Pending {
    /// An unnamed file in the snapshot directory, linked into place when published.
    Anonymous(File),
    /// A file in the private directory, renamed into place when published.
    Named { file: File, path: PathBuf },
}

impl Pending {
    fn file(&mut self) -> &mut File {
        match self {
            Pending::Anonymous(file) | Pending::Named { file, .. } => file,
        }
    }

    /// Gives the bytes their final name; never replaces an existing snapshot.
    fn publish(&self, final_path: &Path) -> Result<(), StoreError> {
        match self {
            Pending::Anonymous(file) => link_anonymous(file, final_path).map_err(StoreError::io("link", final_path)),
            Pending::Named { path, .. } => {
                if final_path.symlink_metadata().is_ok() {
                    return Err(StoreError::io("publish", final_path)(std::io::ErrorKind::AlreadyExists.into()));
                }
                fs::rename(path, final_path).map_err(StoreError::io("rename", path))
            }
        }
    }

    /// Removes a named partial file (an unnamed one disappears with its descriptor).
    fn discard(self) {
        if let Pending::Named { path, .. } = self {
            let _ = fs::remove_file(path);
        }
    }
}

/// A snapshot being written.
pub struct LocalSink {
    store: LocalStore,
    name: SnapshotName,
    pending: Option<Pending>,
}

impl LocalSink {
    /// fsync, record and K3s's metadata, link or rename into place, fsync of the directories.
    /// If any step fails the sink is dropped unpublished and nothing of it stays.
    fn publish(&mut self, doc: &MetadataDocument) -> Result<(), StoreError> {
        let final_path = self.store.snapshot_path(&self.name);
        if final_path.symlink_metadata().is_ok() {
            // Never replace a snapshot, nor its record.
            return Err(StoreError::io("publish", &final_path)(std::io::ErrorKind::AlreadyExists.into()));
        }
        let pending = self.pending.as_mut().ok_or_else(|| StoreError::Finished(self.store.location(&self.name)))?;
        pending.file().sync_all().map_err(StoreError::io("fsync", self.store.snapshot_path(&self.name)))?;
        create_private_dir(&self.store.metadata_dir)?;
        write_atomic(&self.store.record_path(&self.name), &doc.to_json())?;
        if let Some(extra) = doc.extra_metadata.as_ref().filter(|m| !m.is_empty()) {
            write_atomic(&self.store.metadata_path(&self.name), &etcdsnap_api::go::marshal_string_map(extra))?;
        }
        failpoint::reached_blocking(failpoint::LOCAL_AFTER_METADATA);
        let published = self.pending.as_ref().map(|p| p.publish(&final_path));
        if let Some(Err(e)) = published {
            self.store.remove_metadata(&self.name);
            return Err(e);
        }
        if let Some(pending) = self.pending.take() {
            drop(pending);
        }
        sync_dir(&self.store.dir)?;
        failpoint::reached_blocking(failpoint::LOCAL_AFTER_RENAME);
        Ok(())
    }
}

impl Drop for LocalSink {
    fn drop(&mut self) {
        // Not committed (error, panic or cancellation): leave nothing behind.
        if let Some(pending) = self.pending.take() {
            pending.discard();
        }
    }
}

#[async_trait]
impl SnapshotSink for LocalSink {
    fn write(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(StoreError::Finished(self.store.location(&self.name)));
        };
        let store = &self.store;
        let name = &self.name;
        pending.file().write_all(buf).map_err(|e| StoreError::io("write", store.snapshot_path(name))(e))
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Result<(), StoreError> {
        let Some(pending) = self.pending.as_mut() else {
            return Err(StoreError::Finished(self.store.location(&self.name)));
        };
        let store = &self.store;
        let name = &self.name;
        write_all_vectored(pending.file(), bufs).map_err(|e| StoreError::io("write", store.snapshot_path(name))(e))
    }

    async fn commit(self: Box<Self>, doc: &MetadataDocument) -> Result<(), StoreError> {
        let doc = doc.clone();
        let location = self.store.location(&self.name);
        let mut sink = self;
        tokio::task::spawn_blocking(move || sink.publish(&doc))
            .await
            .map_err(|e| StoreError::worker(format!("writing {location}"), e))?
    }

    async fn abort(self: Box<Self>) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }

    fn location(&self) -> String {
        self.store.location(&self.name)
    }

    fn storage(&self) -> StorageKind {
        StorageKind::Local
    }
}

#[async_trait]
impl SnapshotStore for LocalStore {
    fn kind(&self) -> StorageKind {
        StorageKind::Local
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.list_blocking())
            .await
            .map_err(|e| StoreError::worker(format!("listing {}", self.dir.display()), e))?
    }

    async fn create(&self, new: &NewSnapshot) -> Result<Box<dyn SnapshotSink>, StoreError> {
        let store = self.clone();
        let name = new.name.clone();
        let pending = tokio::task::spawn_blocking(move || store.pending(&name))
            .await
            .map_err(|e| StoreError::worker(format!("creating a snapshot in {}", self.dir.display()), e))??;
        Ok(Box::new(LocalSink { store: self.clone(), name: new.name.clone(), pending: Some(pending) }))
    }

    async fn open(&self, name: &SnapshotName) -> Result<SnapshotReader, StoreError> {
        let path = self.snapshot_path(name);
        // One open(2): not worth a blocking-pool hop.
        let file = open_no_follow(&path).map(tokio::fs::File::from_std).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NotFound(name.to_string(), self.describe())
            } else {
                StoreError::io("open", &path)(e)
            }
        })?;
        let size = file.metadata().await.map_err(StoreError::io("inspect", &path))?.len();
        Ok(SnapshotReader { reader: Box::new(file), size })
    }

    async fn exists(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        Ok(self.snapshot_path(name).symlink_metadata().is_ok())
    }

    async fn update_record(&self, record: &crate::SnapshotRecord) -> Result<(), StoreError> {
        let name = record.name.clone();
        if self.snapshot_path(&name).symlink_metadata().is_err() {
            return Err(StoreError::NotFound(name.to_string(), self.describe()));
        }
        let (store, bytes) = (self.clone(), record.to_document().to_json());
        tokio::task::spawn_blocking(move || {
            create_private_dir(&store.metadata_dir)?;
            write_atomic(&store.record_path(&name), &bytes)
        })
        .await
        .map_err(|e| StoreError::worker(format!("rewriting a record in {}", self.dir.display()), e))?
    }

    async fn delete(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        let store = self.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || store.delete_blocking(&name))
            .await
            .map_err(|e| StoreError::worker(format!("deleting from {}", self.dir.display()), e))?
    }
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

    use super::*;
    use etcdsnap_api::metadata::{METADATA_API_VERSION, METADATA_KIND};

    fn doc(name: &str, extra: Option<BTreeMap<String, String>>) -> MetadataDocument {
        MetadataDocument {
            api_version: METADATA_API_VERSION.into(),
            kind: METADATA_KIND.into(),
            name: name.into(),
            node_name: "n".into(),
            location: String::new(),
            created_at: jiff::Timestamp::UNIX_EPOCH,
            size: 3,
            sha256: "ab".repeat(32),
            compression: etcdsnap_api::Compression::None,
            etcd: None,
            token_hash: None,
            cluster_id: None,
            s3: None,
            extra_metadata: extra,
            drill: None,
        }
    }

    fn sink(store: &LocalStore, name: &str) -> LocalSink {
        let name = SnapshotName::parse(name).unwrap();
        let pending = store.pending(&name).unwrap();
        LocalSink { store: store.clone(), name, pending: Some(pending) }
    }

    #[test]
    fn the_snapshot_directory_holds_snapshots_only() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&root.path().join("snapshots"), true, "n").unwrap();
        let _lock = store.lock().unwrap();
        let mut s = sink(&store, "s-n-1");
        s.write(b"abc").unwrap();
        // While written, the bytes have no name anywhere in the snapshot directory.
        assert_eq!(fs::read_dir(store.dir()).unwrap().count(), 0);
        let extra = BTreeMap::from([("rancher".to_string(), "<x>".to_string())]);
        s.publish(&doc("s-n-1", Some(extra))).unwrap();
        let names: Vec<String> =
            fs::read_dir(store.dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["s-n-1"]);
        assert_eq!(fs::read(store.snapshot_path(&SnapshotName::parse("s-n-1").unwrap())).unwrap(), b"abc");
        // K3s's metadata, byte for byte as K3s writes it; etcdsnap's record beside it.
        assert_eq!(fs::read(root.path().join(".metadata/s-n-1")).unwrap(), br#"{"rancher":"\u003cx\u003e"}"#);
        assert!(root.path().join(".metadata/s-n-1.etcdsnap.json").is_file());
        assert!(root.path().join(".etcdsnap/lock").is_file());
    }

    #[test]
    fn no_extra_metadata_means_no_k3s_file_and_an_unpublished_sink_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&root.path().join("snapshots"), true, "n").unwrap();
        let mut s = sink(&store, "s-n-1");
        s.write(b"abc").unwrap();
        s.publish(&doc("s-n-1", None)).unwrap();
        assert!(!root.path().join(".metadata/s-n-1").exists());
        let mut dropped = sink(&store, "s-n-2");
        dropped.write(b"x").unwrap();
        drop(dropped);
        let names: Vec<_> = fs::read_dir(store.dir()).unwrap().collect();
        assert_eq!(names.len(), 1);
        // A second snapshot of the same name is refused, not overwritten.
        let mut again = sink(&store, "s-n-1");
        again.write(b"other").unwrap();
        assert!(again.publish(&doc("s-n-1", None)).is_err());
        assert_eq!(fs::read(store.dir().join("s-n-1")).unwrap(), b"abc");
    }

    #[test]
    fn records_of_earlier_releases_and_k3s_maps_are_read() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&root.path().join("snapshots"), true, "n").unwrap();
        fs::create_dir_all(store.metadata_dir()).unwrap();
        for n in ["old-n-1", "k3s-n-2"] {
            fs::write(store.dir().join(n), b"abc").unwrap();
        }
        fs::write(store.metadata_dir().join("old-n-1"), doc("old-n-1", None).to_json()).unwrap();
        fs::write(store.metadata_dir().join("k3s-n-2"), br#"{"a":"b"}"#).unwrap();
        let listing = store.list_blocking().unwrap();
        let old = listing.records.iter().find(|r| r.name.as_str() == "old-n-1").unwrap();
        assert_eq!(old.metadata_source, MetadataSource::Document);
        assert_eq!(old.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        let k3s = listing.records.iter().find(|r| r.name.as_str() == "k3s-n-2").unwrap();
        assert_eq!(k3s.metadata_source, MetadataSource::K3sMap);
        assert_eq!(k3s.extra_metadata, Some(BTreeMap::from([("a".to_string(), "b".to_string())])));
        assert!(listing.warnings.is_empty(), "{:?}", listing.warnings);
    }

    #[test]
    fn records_of_earlier_releases_move_out_of_k3s_s_file_when_a_save_takes_the_lock() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&root.path().join("snapshots"), true, "n").unwrap();
        fs::create_dir_all(store.metadata_dir()).unwrap();
        let extra = BTreeMap::from([("rancher".to_string(), "x".to_string())]);
        for (n, e) in [("old-n-1", None), ("old-n-2", Some(extra.clone()))] {
            fs::write(store.dir().join(n), b"abc").unwrap();
            fs::write(store.metadata_dir().join(n), doc(n, e).to_json()).unwrap();
        }
        let before = store.list_blocking().unwrap();
        drop(store.lock().unwrap());
        assert!(!store.metadata_dir().join("old-n-1").exists(), "no extra metadata: no K3s file");
        assert_eq!(fs::read(store.metadata_dir().join("old-n-2")).unwrap(), br#"{"rancher":"x"}"#);
        assert!(store.metadata_dir().join("old-n-1.etcdsnap.json").is_file());
        let after = store.list_blocking().unwrap();
        assert_eq!(before.records, after.records, "the same records, read from their new place");
    }

    #[test]
    fn the_lock_holder_removes_what_a_killed_save_left_and_nothing_of_k3s() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&root.path().join("snapshots"), true, "n").unwrap();
        fs::create_dir_all(store.metadata_dir()).unwrap();
        // A save killed after its record: no snapshot behind the record.
        fs::write(store.metadata_dir().join("gone-n-1.etcdsnap.json"), b"{}").unwrap();
        fs::write(store.metadata_dir().join("gone-n-1"), b"{}").unwrap();
        fs::write(store.metadata_dir().join("x.part"), b"{}").unwrap();
        // K3s's snapshot and metadata, and K3s's save in progress in the snapshot directory.
        fs::write(store.dir().join("k3s-n-2"), b"abc").unwrap();
        fs::write(store.metadata_dir().join("k3s-n-2"), b"{}").unwrap();
        fs::write(store.dir().join("k3s-n-3.part"), b"ab").unwrap();
        let _lock = store.lock().unwrap();
        let mut left: Vec<String> = fs::read_dir(store.metadata_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["k3s-n-2"]);
        assert!(store.dir().join("k3s-n-3.part").exists(), "K3s's save in progress is not ours to remove");
        assert!(matches!(DirLock::take(store.dir()), Err(StoreError::Locked(_))));
    }
}
