//! A local snapshot being written: an unnamed file in the snapshot directory (`O_TMPFILE`), or
//! on a file system without unnamed files `partial/<name>.part` in the directory's private
//! directory, published by linking or renaming it into place once its record and K3s's
//! metadata are written.

use super::LocalStore;
use crate::failpoint;
use crate::files::{
    create_private_dir, link_unnamed, open_private, open_unnamed, same_file_system, sync_dir, unnamed_unsupported,
    write_all_vectored, write_atomic,
};
use crate::store::{Companions, SnapshotSink, StoreError};
use async_trait::async_trait;
use etcdsnap_api::consts::PART_SUFFIX;
use etcdsnap_api::{MetadataDocument, SnapshotName, StorageKind};
use std::fs::{self, File};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};

/// A new snapshot's bytes before it is published.
enum Pending {
    /// An unnamed file in the snapshot directory, linked into place when published.
    Unnamed(File),
    /// A file in the private directory, renamed into place when published.
    Named { file: File, path: PathBuf },
}

impl Pending {
    fn file(&mut self) -> &mut File {
        match self {
            Pending::Unnamed(file) | Pending::Named { file, .. } => file,
        }
    }

    /// Gives the bytes their final name; never replaces an existing snapshot.
    fn publish(&self, final_path: &Path) -> Result<(), StoreError> {
        match self {
            Pending::Unnamed(file) => link_unnamed(file, final_path).map_err(StoreError::io("link", final_path)),
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
    /// fsync, kit and signature, record and K3s's metadata, link or rename into place, fsync of
    /// the directories. If any step fails the sink is dropped unpublished and nothing of it
    /// stays.
    fn publish(&mut self, doc: &MetadataDocument, companions: &Companions) -> Result<(), StoreError> {
        let final_path = self.store.snapshot_path(&self.name);
        if final_path.symlink_metadata().is_ok() {
            // Never replace a snapshot, nor its record.
            return Err(StoreError::io("publish", &final_path)(std::io::ErrorKind::AlreadyExists.into()));
        }
        let pending = self.pending.as_mut().ok_or_else(|| StoreError::Finished(self.store.location(&self.name)))?;
        pending.file().sync_all().map_err(StoreError::io("fsync", self.store.snapshot_path(&self.name)))?;
        create_private_dir(&self.store.layout.records())?;
        let layout = &self.store.layout;
        let written = [
            (layout.kit_path(&self.name), companions.kit.as_ref().map(|k| k.as_slice())),
            (layout.signature_path(&self.name), companions.signature.as_ref().map(|s| s.as_bytes())),
        ];
        for (path, bytes) in written {
            if let Some(bytes) = bytes
                && let Err(e) = write_atomic(&path, bytes)
            {
                self.store.remove_metadata(&self.name);
                return Err(e);
            }
        }
        write_atomic(&self.store.record_path(&self.name), &doc.to_json())?;
        if let Some(extra) = doc.extra_metadata.as_ref().filter(|m| !m.is_empty()) {
            create_private_dir(&self.store.layout.k3s_metadata)?;
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

    async fn commit(self: Box<Self>, doc: &MetadataDocument, companions: &Companions) -> Result<(), StoreError> {
        let (doc, companions) = (doc.clone(), companions.clone());
        let location = self.store.location(&self.name);
        let mut sink = self;
        tokio::task::spawn_blocking(move || sink.publish(&doc, &companions))
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

impl LocalSink {
    /// Opens the file a new snapshot's bytes go to until it is published.
    pub(super) fn open(store: LocalStore, name: SnapshotName) -> Result<LocalSink, StoreError> {
        let pending = store.pending(&name)?;
        Ok(LocalSink { store, name, pending: Some(pending) })
    }
}

impl LocalStore {
    /// Where a new snapshot's bytes go until it is published.
    fn pending(&self, name: &SnapshotName) -> Result<Pending, StoreError> {
        match open_unnamed(&self.dir) {
            Ok(file) => return Ok(Pending::Unnamed(file)),
            Err(e) if unnamed_unsupported(&e) => {}
            Err(e) => return Err(StoreError::io("create a snapshot file in", &self.dir)(e)),
        }
        let partial = self.layout.partial();
        create_private_dir(&partial)?;
        if !same_file_system(&partial, &self.dir)? {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::tests::doc;
    use std::collections::BTreeMap;

    fn sink(store: &LocalStore, name: &str) -> LocalSink {
        LocalSink::open(store.clone(), SnapshotName::parse(name).unwrap()).unwrap()
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
        s.publish(&doc("s-n-1", Some(extra)), &Companions::default()).unwrap();
        let names: Vec<String> =
            fs::read_dir(store.dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["s-n-1"]);
        assert_eq!(fs::read(store.snapshot_path(&SnapshotName::parse("s-n-1").unwrap())).unwrap(), b"abc");
        // K3s's metadata, byte for byte as K3s writes it; etcdsnap's record beside it.
        assert_eq!(fs::read(root.path().join(".metadata/s-n-1")).unwrap(), br#"{"rancher":"\u003cx\u003e"}"#);
        assert!(root.path().join(".etcdsnap/dirs/snapshots/records/s-n-1.etcdsnap.json").is_file());
        assert!(root.path().join(".etcdsnap/dirs/snapshots/lock").is_file());
        assert!(!root.path().join(".metadata/s-n-1.etcdsnap.json").exists());
    }

    #[test]
    fn no_extra_metadata_means_no_k3s_file_and_an_unpublished_sink_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&root.path().join("snapshots"), true, "n").unwrap();
        let mut s = sink(&store, "s-n-1");
        s.write(b"abc").unwrap();
        s.publish(&doc("s-n-1", None), &Companions::default()).unwrap();
        assert!(!root.path().join(".metadata/s-n-1").exists());
        let mut dropped = sink(&store, "s-n-2");
        dropped.write(b"x").unwrap();
        drop(dropped);
        let names: Vec<_> = fs::read_dir(store.dir()).unwrap().collect();
        assert_eq!(names.len(), 1);
        // A second snapshot of the same name is refused, not overwritten.
        let mut again = sink(&store, "s-n-1");
        again.write(b"other").unwrap();
        assert!(again.publish(&doc("s-n-1", None), &Companions::default()).is_err());
        assert_eq!(fs::read(store.dir().join("s-n-1")).unwrap(), b"abc");
    }
}
