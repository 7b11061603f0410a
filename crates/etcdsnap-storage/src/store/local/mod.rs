//! Snapshots in a local directory, in K3s's layout: `<dir>/<name>`, and K3s's extra metadata
//! in `<dir>/../.metadata/<name>` (only when there is some, byte for byte what K3s writes).
//! etcdsnap's record of each snapshot, its locks and its partial writes live in its own
//! directory of this snapshot directory, `<dir>/../.etcdsnap/dirs/<dir name>/`, which no other
//! snapshot directory shares ([`Layout`]; earlier releases' shared places are read and emptied
//! by `legacy.rs`).
//!
//! The snapshot directory holds snapshots and nothing else, because K3s takes every file in it
//! for one: a snapshot being written is an unnamed file in the snapshot directory
//! (`O_TMPFILE`), invisible to every listing and gone if the process dies. Publishing fsyncs
//! it, writes the record and the metadata, then links the file into place and fsyncs the
//! directories: a snapshot that is visible is complete and has its record. On a file system
//! without `O_TMPFILE` the bytes go to the private directory's `partial/<name>.part` and are
//! renamed into place instead. Files are 0600, directories 0700.
//!
//! This file holds the store: listing, delete and the cleanup a save's lock holder does;
//! `layout` says where each file lives; `sink` writes and publishes a new snapshot; `metadata`
//! reads records and K3s's metadata; `legacy` moves earlier releases' records. The crash-safe
//! file primitives they use are [`crate::files`].

mod layout;
mod legacy;
mod metadata;
mod sink;

use super::{Listing, NewSnapshot, SignedRecord, SnapshotReader, SnapshotSink, SnapshotStore, StoreError};
use crate::files::{create_private_dir, open_no_follow, sync_dir, write_atomic};
use crate::record::SnapshotRecord;
use async_trait::async_trait;
use etcdsnap_api::consts::PART_SUFFIX;
use etcdsnap_api::{SnapshotName, StorageKind};
use std::fs;
use std::path::{Path, PathBuf};

pub use layout::Layout;
pub use metadata::{FoundMetadata, read_metadata};
pub use sink::LocalSink;

/// A snapshot directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
    layout: Layout,
    node_name: String,
}

pub use super::locks::DirLock;

/// etcdsnap's private directory of a snapshot directory: beside it, never in it, and its own.
pub fn private_dir_of(snapshot_dir: &Path) -> PathBuf {
    Layout::of(snapshot_dir).private
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
        let layout = Layout::of(&dir);
        Ok(LocalStore { dir, layout, node_name: node_name.to_string() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where this directory's files live.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// K3s's metadata directory, `<dir>/../.metadata`.
    pub fn metadata_dir(&self) -> &Path {
        &self.layout.k3s_metadata
    }

    pub fn snapshot_path(&self, name: &SnapshotName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// K3s's metadata file of a snapshot.
    pub fn metadata_path(&self, name: &SnapshotName) -> PathBuf {
        self.layout.k3s_metadata_path(name)
    }

    /// etcdsnap's record of a snapshot.
    pub fn record_path(&self, name: &SnapshotName) -> PathBuf {
        self.layout.record_path(name)
    }

    /// `file://` URL of a snapshot, as recorded in resources.
    pub fn location(&self, name: &SnapshotName) -> String {
        format!("file://{}", self.snapshot_path(name).display())
    }

    /// Takes the directory lock without waiting: a second writer gets
    /// `snapshot save already in progress`. Holding it, whatever an interrupted save of this
    /// directory left is removed, and earlier releases' records of this directory are moved
    /// into its private directory.
    pub fn lock(&self) -> Result<DirLock, StoreError> {
        let lock = DirLock::take(&self.dir)?;
        for removed in self.remove_interrupted() {
            tracing::info!(file = %removed.display(), "removed what an interrupted save of this directory left");
        }
        let migration = self.migrate_legacy();
        for moved in &migration.moved {
            tracing::info!(file = %moved.display(), to = %self.layout.records().display(), "moved an earlier release's record into this directory's own records");
        }
        for removed in &migration.removed {
            tracing::info!(file = %removed.display(), "removed what an earlier release's interrupted save of this directory left");
        }
        for problem in &migration.problems {
            tracing::warn!("{problem}");
        }
        Ok(lock)
    }

    /// Removes what a killed save of this directory leaves, all in its private directory:
    /// partial files, half-written records, and the record of a snapshot that is not here
    /// (never published, or removed by K3s's retention), with K3s's metadata file of that name
    /// unless another directory of the parent holds a snapshot of that name. Only a save
    /// holding the lock calls this; K3s's own files of this directory's snapshots are never
    /// touched.
    fn remove_interrupted(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for dir in [self.layout.partial(), self.layout.records()] {
            let Ok(entries) = fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let Some(file_name) = entry.file_name().to_str().map(str::to_string) else { continue };
                if file_name.ends_with(PART_SUFFIX) && fs::remove_file(entry.path()).is_ok() {
                    removed.push(entry.path());
                } else if let Some(name) =
                    etcdsnap_api::seal::companion_of(&file_name).and_then(|n| SnapshotName::parse(n).ok())
                    && self.snapshot_path(&name).symlink_metadata().is_err()
                    && fs::remove_file(entry.path()).is_ok()
                {
                    removed.push(entry.path());
                    if SnapshotName::of_record_file(&file_name).is_some() {
                        removed.extend(self.remove_k3s_metadata(&name));
                    }
                }
            }
        }
        removed
    }

    /// Removes K3s's metadata file of `name` (and a half-written one) unless another directory
    /// of the parent holds a snapshot of that name; returns what was there.
    fn remove_k3s_metadata(&self, name: &SnapshotName) -> Vec<PathBuf> {
        if self.layout.held_elsewhere(name) {
            return Vec::new();
        }
        let path = self.metadata_path(name);
        let mut part = path.clone().into_os_string();
        part.push(PART_SUFFIX);
        [path, PathBuf::from(part)].into_iter().filter(|p| fs::remove_file(p).is_ok()).collect()
    }

    /// Removes a snapshot's record, its companions and K3s metadata after a failed publish;
    /// returns what was there.
    fn remove_metadata(&self, name: &SnapshotName) -> Vec<PathBuf> {
        let [signature, kit] = self.layout.companion_paths(name);
        let mut removed: Vec<PathBuf> =
            [self.record_path(name), signature, kit].into_iter().filter(|p| fs::remove_file(p).is_ok()).collect();
        removed.extend(self.remove_k3s_metadata(name));
        removed
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
        let found = read_metadata(&self.layout, &name);
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
        let mut removed = Vec::new();
        let legacy = self.layout.legacy_record_path(name);
        let legacy_is_mine = matches!(
            crate::files::read_bounded(&legacy).ok().flatten().map(|b| etcdsnap_api::parse_stored_metadata(&b, name.as_str())),
            Some(Ok(etcdsnap_api::StoredMetadata::Document(doc))) if legacy::is_this_directorys(&self.layout, name, &doc)
        );
        let mut candidates = vec![self.record_path(name)];
        candidates.extend(self.layout.companion_paths(name));
        if legacy_is_mine {
            candidates.push(legacy);
        }
        if !self.layout.held_elsewhere(name) {
            candidates.push(self.metadata_path(name));
        }
        for meta in candidates {
            match fs::remove_file(&meta) {
                Ok(()) => removed.push(meta),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("delete metadata", &meta)(e)),
            }
        }
        for dir in removed.iter().filter_map(|p| p.parent()).collect::<std::collections::BTreeSet<_>>() {
            sync_dir(dir)?;
        }
        Ok(existed)
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
        let sink = tokio::task::spawn_blocking(move || LocalSink::open(store, name))
            .await
            .map_err(|e| StoreError::worker(format!("creating a snapshot in {}", self.dir.display()), e))??;
        Ok(Box::new(sink))
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

    async fn update_record(&self, record: &crate::SnapshotRecord, signature: Option<&str>) -> Result<(), StoreError> {
        let name = record.name.clone();
        if self.snapshot_path(&name).symlink_metadata().is_err() {
            return Err(StoreError::NotFound(name.to_string(), self.describe()));
        }
        let (store, bytes) = (self.clone(), record.to_document().to_json());
        let signature = signature.map(str::to_string);
        tokio::task::spawn_blocking(move || {
            create_private_dir(&store.layout.records())?;
            if let Some(signature) = signature {
                write_atomic(&store.layout.signature_path(&name), signature.as_bytes())?;
            }
            write_atomic(&store.record_path(&name), &bytes)
        })
        .await
        .map_err(|e| StoreError::worker(format!("rewriting a record in {}", self.dir.display()), e))?
    }

    async fn signed_record(&self, name: &SnapshotName) -> Result<SignedRecord, StoreError> {
        read_signed_record(&self.layout, name)
    }

    async fn kit(&self, name: &SnapshotName) -> Result<Option<Vec<u8>>, StoreError> {
        read_kit(&self.layout, name)
    }

    async fn delete(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        let store = self.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || store.delete_blocking(&name))
            .await
            .map_err(|e| StoreError::worker(format!("deleting from {}", self.dir.display()), e))?
    }
}

/// The record of snapshot `name` of the directory `layout` describes, as stored, and its
/// signature (a snapshot given by path has no store, only its directory's layout).
pub fn read_signed_record(layout: &Layout, name: &SnapshotName) -> Result<SignedRecord, StoreError> {
    let read =
        |path: PathBuf| crate::files::read_bounded(&path).map_err(|message| StoreError::Unreadable { path, message });
    Ok(SignedRecord { record: read(layout.record_path(name))?, signature: read(layout.signature_path(name))? })
}

/// The sealed restore kit of snapshot `name` of the directory `layout` describes.
pub fn read_kit(layout: &Layout, name: &SnapshotName) -> Result<Option<Vec<u8>>, StoreError> {
    let path = layout.kit_path(name);
    let file = match open_no_follow(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("open", &path)(e)),
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, crate::seal::kit::MAX_KIT_BYTES * 2), &mut bytes)
        .map_err(StoreError::io("read", &path))?;
    Ok(Some(bytes))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etcdsnap_api::MetadataDocument;
    use etcdsnap_api::metadata::{METADATA_API_VERSION, METADATA_KIND};
    use std::collections::BTreeMap;

    /// The record of a 3-byte snapshot `name` of node `n`.
    pub(crate) fn doc(name: &str, extra: Option<BTreeMap<String, String>>) -> MetadataDocument {
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
            sealed: None,
            encryption_config_sha256: None,
            drill: None,
            program: None,
            s3_lock: None,
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.file_name().into_string().unwrap()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn the_lock_holder_removes_what_a_killed_save_left_and_nothing_of_k3s() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&root.path().join("snapshots"), true, "n").unwrap();
        let records = store.layout().records();
        fs::create_dir_all(&records).unwrap();
        fs::create_dir_all(store.metadata_dir()).unwrap();
        // A save killed after its record (and K3s's metadata): no snapshot behind the record.
        fs::write(records.join("gone-n-1.etcdsnap.json"), b"{}").unwrap();
        fs::write(store.metadata_dir().join("gone-n-1"), b"{}").unwrap();
        fs::write(records.join("x.etcdsnap.json.part"), b"{}").unwrap();
        // K3s's snapshot and metadata, and K3s's save in progress in the snapshot directory.
        fs::write(store.dir().join("k3s-n-2"), b"abc").unwrap();
        fs::write(store.metadata_dir().join("k3s-n-2"), b"{}").unwrap();
        fs::write(store.dir().join("k3s-n-3.part"), b"ab").unwrap();
        // A half-written K3s metadata file may be a sibling directory's save: not ours.
        fs::write(store.metadata_dir().join("other-n-4.part"), b"{").unwrap();
        let _lock = store.lock().unwrap();
        assert!(names_in(&records).is_empty());
        assert_eq!(names_in(store.metadata_dir()), ["k3s-n-2", "other-n-4.part"]);
        assert!(store.dir().join("k3s-n-3.part").exists(), "K3s's save in progress is not ours to remove");
        assert!(matches!(DirLock::take(store.dir()), Err(StoreError::Locked(_))));
    }

    /// Two snapshot directories of one parent: a save's cleanup in one never removes the other's
    /// records, nor K3s's metadata of a snapshot the other holds.
    #[test]
    fn a_directory_never_removes_what_belongs_to_its_sibling() {
        let root = tempfile::tempdir().unwrap();
        let a = LocalStore::open(&root.path().join("a"), true, "n").unwrap();
        let b = LocalStore::open(&root.path().join("b"), true, "n").unwrap();
        let name = SnapshotName::parse("s-n-1").unwrap();
        fs::write(b.snapshot_path(&name), b"abc").unwrap();
        fs::create_dir_all(b.layout().records()).unwrap();
        fs::write(b.record_path(&name), doc("s-n-1", None).to_json()).unwrap();
        fs::create_dir_all(a.metadata_dir()).unwrap();
        fs::write(a.metadata_path(&name), br#"{"a":"b"}"#).unwrap();
        // a once had a record of the same name (an interrupted save): it goes, b's files stay.
        fs::create_dir_all(a.layout().records()).unwrap();
        fs::write(a.record_path(&name), doc("s-n-1", None).to_json()).unwrap();
        drop(a.lock().unwrap());
        assert!(!a.record_path(&name).exists());
        assert!(b.record_path(&name).exists());
        assert!(a.metadata_path(&name).exists(), "b holds s-n-1: K3s's file may be its");
        assert!(a.list_blocking().unwrap().records.is_empty());
        let listed = b.list_blocking().unwrap().records;
        assert_eq!(listed[0].sha256.as_deref(), Some("ab".repeat(32).as_str()));
        // Deleting a name from a never touches b's files.
        assert!(!a.delete_blocking(&name).unwrap());
        assert!(b.record_path(&name).exists() && a.metadata_path(&name).exists());
        assert!(b.delete_blocking(&name).unwrap());
        assert!(!b.record_path(&name).exists() && !a.metadata_path(&name).exists());
    }
}
