//! Snapshots in a local directory, K3s's layout: `<dir>/<name>` and `<dir>/../.metadata/<name>`.
//!
//! Writes go to `<name>.part`, are fsynced, then the metadata document is written the same way,
//! then the snapshot is renamed into place and the directories fsynced: a snapshot that is
//! visible is complete and has its document. Files are 0600, directories 0700.

use super::{Listing, NewSnapshot, SnapshotReader, SnapshotSink, SnapshotStore, StoreError};
use crate::failpoint;
use crate::record::{MetadataSource, SnapshotRecord};
use async_trait::async_trait;
use etcdsnap_api::consts::{METADATA_DIR, PART_SUFFIX};
use etcdsnap_api::metadata::MAX_METADATA_BYTES;
use etcdsnap_api::{MetadataDocument, SnapshotName, StorageKind, StoredMetadata, parse_stored_metadata};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Name of the lock file inside the snapshot directory.
const LOCK_FILE: &str = ".etcdsnap.lock";
/// `.part` files older than this are removed by listings (a save in progress keeps its file
/// fresh; a save holding the lock removes every `.part` regardless of age).
pub const STALE_PART_AGE: Duration = Duration::from_secs(3600);

/// A snapshot directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
    metadata_dir: PathBuf,
    node_name: String,
}

/// Exclusive right to write snapshots into a directory; released on drop.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` without waiting; a second holder gets `snapshot save already in
    /// progress`.
    pub fn take(dir: &Path) -> Result<DirLock, StoreError> {
        let path = dir.join(LOCK_FILE);
        let file = open_private(&path, false).map_err(StoreError::io("open lock file", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file, path }),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => Err(StoreError::io("lock", &path)(e)),
        }
    }

    /// [`DirLock::take`], creating `dir` (0700) if it is missing. S3-only saves take the
    /// snapshot directory's lock this way, so they never overlap another save of the same node.
    pub fn take_creating(dir: &Path) -> Result<DirLock, StoreError> {
        if !dir.exists() {
            create_private_dir(dir)?;
        }
        DirLock::take(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LocalStore {
    /// Opens `dir`. With `create`, a missing directory is created with mode 0700 (like K3s,
    /// only the default directory is created; a configured one must exist).
    pub fn open(dir: &Path, create: bool, node_name: &str) -> Result<LocalStore, StoreError> {
        if !dir.exists() {
            if !create {
                return Err(StoreError::MissingDir(dir.to_path_buf()));
            }
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(StoreError::io("create directory", dir))?;
        }
        let meta = fs::metadata(dir).map_err(StoreError::io("inspect", dir))?;
        if !meta.is_dir() {
            return Err(StoreError::NotADirectory(dir.to_path_buf()));
        }
        let dir = dir.canonicalize().map_err(StoreError::io("resolve", dir))?;
        let metadata_dir = dir.parent().unwrap_or(&dir).join(METADATA_DIR);
        Ok(LocalStore { dir, metadata_dir, node_name: node_name.to_string() })
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

    pub fn metadata_path(&self, name: &SnapshotName) -> PathBuf {
        self.metadata_dir.join(name.as_str())
    }

    /// `file://` URL of a snapshot, as recorded in resources.
    pub fn location(&self, name: &SnapshotName) -> String {
        format!("file://{}", self.snapshot_path(name).display())
    }

    /// Takes the directory lock without waiting: a second writer gets
    /// `snapshot save already in progress`. Holding it, every `.part` file is stale and removed.
    pub fn lock(&self) -> Result<DirLock, StoreError> {
        let lock = DirLock::take(&self.dir)?;
        for removed in self.remove_partials(Duration::ZERO) {
            tracing::info!(file = %removed.display(), "removed incomplete file left by an interrupted save");
        }
        Ok(lock)
    }

    /// Removes `.part` files (snapshot and metadata) older than `age`; returns what was removed.
    pub fn remove_partials(&self, age: Duration) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for dir in [&self.dir, &self.metadata_dir] {
            let Ok(entries) = fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                let is_part = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(PART_SUFFIX));
                let old_enough = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() >= age)
                    .unwrap_or(false);
                if is_part && old_enough && fs::remove_file(&path).is_ok() {
                    if dir == &self.dir {
                        removed.extend(self.remove_orphaned_document(&path));
                    }
                    removed.push(path);
                }
            }
        }
        removed
    }

    /// The metadata document of a snapshot whose `.part` was just removed, when no published
    /// snapshot of that name exists: a save killed between writing the document and renaming
    /// the snapshot leaves it behind.
    fn remove_orphaned_document(&self, part: &Path) -> Option<PathBuf> {
        let name = part.file_name()?.to_str()?.strip_suffix(PART_SUFFIX)?;
        if self.dir.join(name).symlink_metadata().is_ok() {
            return None;
        }
        let doc = self.metadata_dir.join(name);
        fs::remove_file(&doc).ok().map(|()| doc)
    }

    fn list_blocking(&self) -> Result<Listing, StoreError> {
        // Clean up after crashed saves, unless one is running right now.
        if let Ok(lock) = DirLock::take(&self.dir) {
            for removed in self.remove_partials(STALE_PART_AGE) {
                tracing::info!(file = %removed.display(), "removed stale incomplete file");
            }
            drop(lock);
        }
        let mut listing = Listing::default();
        let entries = fs::read_dir(&self.dir).map_err(StoreError::io("list", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(StoreError::io("list", &self.dir))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                listing.warnings.push(format!("skipping {}: file name is not UTF-8", entry.path().display()));
                continue;
            };
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

    /// The record of one file: from its name, its stat, and its metadata document if any.
    fn record_for(&self, name: SnapshotName, meta: &fs::Metadata, warnings: &mut Vec<String>) -> SnapshotRecord {
        let modified = meta.modified().ok().and_then(|t| jiff::Timestamp::try_from(t).ok());
        let created_at = SnapshotRecord::creation_time(&name, modified.unwrap_or(jiff::Timestamp::UNIX_EPOCH));
        let location = self.location(&name);
        let mut record =
            SnapshotRecord::stored(name, StorageKind::Local, self.node_name.clone(), location, created_at, meta.len());
        let doc_path = self.metadata_path(&record.name);
        match read_bounded(&doc_path) {
            Ok(None) => {}
            Ok(Some(bytes)) => match parse_stored_metadata(&bytes, record.name.as_str()) {
                Ok(StoredMetadata::Document(doc)) => {
                    if doc.size != meta.len() {
                        warnings.push(format!(
                            "{}: {} bytes on disk but its metadata document records {}; run `etcdsnap verify {}`",
                            record.location,
                            meta.len(),
                            doc.size,
                            record.name
                        ));
                    }
                    record.apply_document(*doc);
                }
                Ok(StoredMetadata::ExtraMetadata(map)) => {
                    record.extra_metadata = Some(map);
                    record.metadata_source = MetadataSource::K3sMap;
                }
                Err(e) => {
                    warnings.push(format!("ignoring metadata {}: {e}", doc_path.display()));
                    record.metadata_source = MetadataSource::Rejected;
                }
            },
            Err(e) => {
                warnings.push(format!("ignoring metadata {}: {e}", doc_path.display()));
                record.metadata_source = MetadataSource::Rejected;
            }
        }
        record
    }

    fn delete_blocking(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        let path = self.snapshot_path(name);
        let existed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(StoreError::io("delete", &path)(e)),
        };
        let meta = self.metadata_path(name);
        match fs::remove_file(&meta) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("delete metadata", &meta)(e)),
        }
        if existed {
            sync_dir(&self.dir)?;
        }
        Ok(existed)
    }
}

/// Creates (or opens) a file of the store for writing: mode 0600, never through a symlink
/// planted at its name; `truncate` empties an existing one.
fn open_private(path: &Path, truncate: bool) -> std::io::Result<File> {
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

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(StoreError::io("create directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(StoreError::io("chmod", dir))
}

fn part_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(PART_SUFFIX);
    PathBuf::from(s)
}

/// Writes `bytes` to `path` crash-safely: `.part`, fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
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

/// A snapshot being written to `<dir>/<name>.part`.
pub struct LocalSink {
    store: LocalStore,
    name: SnapshotName,
    part: PathBuf,
    file: Option<File>,
}

impl LocalSink {
    /// fsync, metadata document, rename, fsync of the directory. If any step fails the sink is
    /// dropped unpublished and `Drop` removes the `.part` file.
    fn publish(&mut self, doc: &MetadataDocument) -> Result<(), StoreError> {
        let file = self.file.as_ref().ok_or_else(|| StoreError::Finished(self.part.display().to_string()))?;
        file.sync_all().map_err(StoreError::io("fsync", &self.part))?;
        create_private_dir(&self.store.metadata_dir)?;
        write_atomic(&self.store.metadata_path(&self.name), &doc.to_json())?;
        failpoint::reached_blocking(failpoint::LOCAL_AFTER_METADATA);
        let final_path = self.store.snapshot_path(&self.name);
        fs::rename(&self.part, &final_path).map_err(StoreError::io("rename", &self.part))?;
        self.file = None;
        sync_dir(&self.store.dir)?;
        failpoint::reached_blocking(failpoint::LOCAL_AFTER_RENAME);
        Ok(())
    }
}

impl Drop for LocalSink {
    fn drop(&mut self) {
        // Not committed (error, panic or cancellation): leave nothing behind.
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.part);
        }
    }
}

#[async_trait]
impl SnapshotSink for LocalSink {
    fn write(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        let file = self.file.as_mut().ok_or_else(|| StoreError::Finished(self.part.display().to_string()))?;
        file.write_all(buf).map_err(StoreError::io("write", &self.part))
    }

    async fn commit(self: Box<Self>, doc: &MetadataDocument) -> Result<(), StoreError> {
        let doc = doc.clone();
        let part = self.part.clone();
        let mut sink = self;
        tokio::task::spawn_blocking(move || sink.publish(&doc))
            .await
            .map_err(|e| StoreError::worker(format!("writing {}", part.display()), e))?
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
        let part = part_path(&self.snapshot_path(&new.name));
        let file = open_private(&part, true).map_err(StoreError::io("create", &part))?;
        Ok(Box::new(LocalSink { store: self.clone(), name: new.name.clone(), part, file: Some(file) }))
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
        Ok(self.snapshot_path(name).exists())
    }

    async fn delete(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        let store = self.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || store.delete_blocking(&name))
            .await
            .map_err(|e| StoreError::worker(format!("deleting from {}", self.dir.display()), e))?
    }
}
