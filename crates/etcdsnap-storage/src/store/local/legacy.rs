//! Earlier releases' layout, found and moved, never lost. They kept etcdsnap's records in
//! `<parent>/.metadata/<name>.etcdsnap.json` (the oldest in K3s's `<parent>/.metadata/<name>`
//! itself) and their lock and partial files in `<parent>/.etcdsnap/`: places every snapshot
//! directory of the parent shares. A record there belongs to this directory unless its
//! recorded location names another directory that holds the snapshot.
//!
//! A save holding this directory's lock moves this directory's records into its private
//! directory ([`Layout::records`]), and removes what earlier releases' interrupted saves of
//! this directory left. It does that only while it also holds the earlier releases' lock, so
//! that no save of an earlier release, in this or a sibling directory, is writing meanwhile;
//! records of other directories are never touched.

use super::LocalStore;
use super::layout::{Layout, PARTIAL_DIR};
use crate::files::{create_private_dir, open_no_follow, read_bounded, sync_dir, write_atomic};
use crate::store::StoreError;
use etcdsnap_api::consts::PART_SUFFIX;
use etcdsnap_api::{MetadataDocument, SnapshotName, StoredMetadata, parse_stored_metadata};
use std::fs;
use std::path::{Path, PathBuf};

/// The lock file earlier releases took for every save beside the parent's snapshot directories.
const LEGACY_LOCK_FILE: &str = "lock";

/// Whether `doc`, found in the parent's shared `.metadata/`, is the record of `name` in this
/// snapshot directory: yes unless its location names another directory that still holds it.
pub(super) fn is_this_directorys(layout: &Layout, name: &SnapshotName, doc: &MetadataDocument) -> bool {
    let Some(path) = doc.location.strip_prefix("file://").map(Path::new) else { return true };
    let dir = path.parent().map(|p| p.canonicalize().unwrap_or_else(|_| p.to_path_buf()));
    dir.as_deref() == Some(layout.dir.as_path()) || !path.with_file_name(name.as_str()).exists()
}

/// What a move did.
#[derive(Debug, Default)]
pub(super) struct Migration {
    /// Records moved into the private directory (their old paths).
    pub moved: Vec<PathBuf>,
    /// Files of earlier releases' interrupted saves of this directory, removed.
    pub removed: Vec<PathBuf>,
    /// Why the move was put off or a file left where it was.
    pub problems: Vec<String>,
}

impl LocalStore {
    /// Moves this directory's records out of the shared `.metadata/` and removes earlier
    /// releases' leftovers. Only a holder of this directory's lock calls this.
    pub(super) fn migrate_legacy(&self) -> Migration {
        let mut done = Migration::default();
        let layout = &self.layout;
        let legacy_lock = layout.legacy_private().join(LEGACY_LOCK_FILE);
        let _held = match open_no_follow(&legacy_lock) {
            Ok(file) => match file.try_lock() {
                Ok(()) => Some(file),
                Err(fs::TryLockError::WouldBlock) => {
                    done.problems.push(format!(
                        "an earlier etcdsnap release holds {}: its records stay where they are until the next save",
                        legacy_lock.display()
                    ));
                    return done;
                }
                Err(fs::TryLockError::Error(e)) => {
                    done.problems.push(format!("cannot lock {}: {e}", legacy_lock.display()));
                    return done;
                }
            },
            // No earlier release ever saved beside this directory.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                done.problems.push(format!("cannot open {}: {e}", legacy_lock.display()));
                return done;
            }
        };
        // Earlier releases' partial files: with their lock held, none of them is being written.
        if let Ok(entries) = fs::read_dir(layout.legacy_private().join(PARTIAL_DIR)) {
            for entry in entries.flatten() {
                let part = entry.file_name().to_str().is_some_and(|n| n.ends_with(PART_SUFFIX));
                if part && fs::remove_file(entry.path()).is_ok() {
                    done.removed.push(entry.path());
                }
            }
        }
        let Ok(entries) = fs::read_dir(&layout.k3s_metadata) else { return done };
        for entry in entries.flatten() {
            let Some(file_name) = entry.file_name().to_str().map(str::to_string) else { continue };
            let result = match SnapshotName::of_record_file(&file_name) {
                Some(name) => self.move_record(&name, &entry.path(), &mut done),
                None => match SnapshotName::parse(&file_name) {
                    Ok(name) => self.move_record_out_of_k3s_file(&name, &entry.path(), &mut done),
                    Err(_) => Ok(()),
                },
            };
            if let Err(e) = result {
                done.problems.push(format!("{e}; the record is still read where it is"));
            }
        }
        if !done.moved.is_empty() || !done.removed.is_empty() {
            let synced = sync_dir(&layout.k3s_metadata).and_then(|()| sync_dir(&layout.records()));
            if let Err(e) = synced {
                done.problems.push(e.to_string());
            }
        }
        done
    }

    /// `.metadata/<name>.etcdsnap.json`: moved when it is this directory's record; removed
    /// when it is this directory's and its snapshot is gone (an interrupted save, or K3s's
    /// retention removed the snapshot); left alone otherwise.
    fn move_record(&self, name: &SnapshotName, path: &Path, done: &mut Migration) -> Result<(), StoreError> {
        let Ok(Some(bytes)) = read_bounded(path) else { return Ok(()) };
        let Ok(StoredMetadata::Document(doc)) = parse_stored_metadata(&bytes, name.as_str()) else { return Ok(()) };
        let layout = &self.layout;
        if !self.snapshot_path(name).exists() {
            let recorded_here =
                doc.location.strip_prefix("file://").map(Path::new) == Some(self.snapshot_path(name).as_path());
            if recorded_here {
                fs::remove_file(path).map_err(StoreError::io("remove", path))?;
                done.removed.push(path.to_path_buf());
                done.removed.extend(self.remove_k3s_metadata(name));
            }
            return Ok(());
        }
        if !is_this_directorys(layout, name, &doc) {
            return Ok(());
        }
        let new_path = layout.record_path(name);
        if new_path.symlink_metadata().is_err() {
            create_private_dir(&layout.records())?;
            write_atomic(&new_path, &bytes)?;
        }
        fs::remove_file(path).map_err(StoreError::io("remove", path))?;
        done.moved.push(path.to_path_buf());
        Ok(())
    }

    /// The oldest releases wrote the record in K3s's `.metadata/<name>`: it moves, and
    /// `<name>` becomes what K3s writes there (the extra metadata, or nothing). The record is
    /// written before K3s's file is changed, so a crash in between loses nothing.
    fn move_record_out_of_k3s_file(
        &self,
        name: &SnapshotName,
        path: &Path,
        done: &mut Migration,
    ) -> Result<(), StoreError> {
        let layout = &self.layout;
        if !self.snapshot_path(name).exists() || layout.record_path(name).symlink_metadata().is_ok() {
            return Ok(());
        }
        let Ok(Some(bytes)) = read_bounded(path) else { return Ok(()) };
        let Ok(StoredMetadata::Document(doc)) = parse_stored_metadata(&bytes, name.as_str()) else { return Ok(()) };
        if !is_this_directorys(layout, name, &doc) {
            return Ok(());
        }
        create_private_dir(&layout.records())?;
        write_atomic(&layout.record_path(name), &bytes)?;
        match doc.extra_metadata.as_ref().filter(|m| !m.is_empty()) {
            Some(map) => write_atomic(path, &etcdsnap_api::go::marshal_string_map(map))?,
            None => fs::remove_file(path).map_err(StoreError::io("remove", path))?,
        }
        done.moved.push(path.to_path_buf());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::tests::doc;
    use std::collections::BTreeMap;

    /// An earlier release's record of `dir/name`, in the parent's shared `.metadata/`.
    fn legacy_doc(dir: &Path, name: &str, extra: Option<BTreeMap<String, String>>) -> Vec<u8> {
        let mut d = doc(name, extra);
        d.location = format!("file://{}", dir.join(name).display());
        d.to_json()
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.file_name().into_string().unwrap()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Two snapshot directories of one parent in an earlier release's layout: each save moves
    /// its own directory's records and no other's, and every record is read the same before and
    /// after.
    #[test]
    fn each_directory_takes_its_own_records_out_of_the_shared_parent() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().canonicalize().unwrap();
        let a = LocalStore::open(&parent.join("a"), true, "n").unwrap();
        let b = LocalStore::open(&parent.join("b"), true, "n").unwrap();
        let meta = parent.join(".metadata");
        fs::create_dir_all(&meta).unwrap();
        let extra = BTreeMap::from([("rancher".to_string(), "x".to_string())]);
        // a: one record beside K3s's file, one of the oldest kind inside it (with extra metadata).
        fs::write(a.dir().join("a-n-1"), b"abc").unwrap();
        fs::write(meta.join("a-n-1.etcdsnap.json"), legacy_doc(a.dir(), "a-n-1", None)).unwrap();
        fs::write(a.dir().join("a-n-2"), b"abc").unwrap();
        fs::write(meta.join("a-n-2"), legacy_doc(a.dir(), "a-n-2", Some(extra))).unwrap();
        // b: a good snapshot, and an interrupted save of an earlier release into b.
        fs::write(b.dir().join("b-n-1"), b"abc").unwrap();
        fs::write(meta.join("b-n-1.etcdsnap.json"), legacy_doc(b.dir(), "b-n-1", None)).unwrap();
        fs::write(meta.join("b-n-9.etcdsnap.json"), legacy_doc(b.dir(), "b-n-9", None)).unwrap();
        fs::create_dir_all(parent.join(".etcdsnap/partial")).unwrap();
        fs::write(parent.join(".etcdsnap/lock"), b"").unwrap();
        fs::write(parent.join(".etcdsnap/partial/b-n-9.part"), b"ab").unwrap();

        let listed = |s: &LocalStore| s.list_blocking().unwrap().records;
        let (a_before, b_before) = (listed(&a), listed(&b));
        assert!(a_before.iter().chain(&b_before).all(|r| r.sha256.is_some()), "every record is read where it is");

        drop(a.lock().unwrap());
        // a's records moved; b's stay where they were, untouched (b-n-9's leftover included).
        assert_eq!(names_in(&a.layout().records()), ["a-n-1.etcdsnap.json", "a-n-2.etcdsnap.json"]);
        assert_eq!(names_in(&meta), ["a-n-2", "b-n-1.etcdsnap.json", "b-n-9.etcdsnap.json"]);
        assert_eq!(fs::read(meta.join("a-n-2")).unwrap(), br#"{"rancher":"x"}"#, "K3s's file, as K3s writes it");
        assert!(!parent.join(".etcdsnap/partial/b-n-9.part").exists(), "an earlier release's partial file");

        drop(b.lock().unwrap());
        assert_eq!(names_in(&b.layout().records()), ["b-n-1.etcdsnap.json"]);
        assert_eq!(names_in(&meta), ["a-n-2"], "b's interrupted save is gone, a's K3s file stays");
        assert_eq!((listed(&a), listed(&b)), (a_before, b_before), "the same records, read from their new place");
    }

    #[test]
    fn nothing_moves_while_an_earlier_release_saves() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().canonicalize().unwrap();
        let a = LocalStore::open(&parent.join("a"), true, "n").unwrap();
        fs::create_dir_all(parent.join(".metadata")).unwrap();
        fs::write(a.dir().join("a-n-1"), b"abc").unwrap();
        fs::write(parent.join(".metadata/a-n-1.etcdsnap.json"), legacy_doc(a.dir(), "a-n-1", None)).unwrap();
        fs::create_dir_all(a.layout().legacy_private()).unwrap();
        let legacy_lock = fs::File::create(a.layout().legacy_private().join("lock")).unwrap();
        legacy_lock.lock().unwrap();
        let _lock = a.lock().unwrap();
        assert!(parent.join(".metadata/a-n-1.etcdsnap.json").exists());
        assert!(a.list_blocking().unwrap().records[0].sha256.is_some());
    }

    #[test]
    fn a_record_naming_another_directory_that_holds_the_snapshot_is_that_directorys() {
        let root = tempfile::tempdir().unwrap();
        let parent = root.path().canonicalize().unwrap();
        let a = LocalStore::open(&parent.join("a"), true, "n").unwrap();
        let b = LocalStore::open(&parent.join("b"), true, "n").unwrap();
        let name = SnapshotName::parse("s-n-1").unwrap();
        for s in [&a, &b] {
            fs::write(s.snapshot_path(&name), b"abc").unwrap();
        }
        let d: MetadataDocument = serde_json::from_slice(&legacy_doc(b.dir(), "s-n-1", None)).unwrap();
        assert!(is_this_directorys(b.layout(), &name, &d));
        assert!(!is_this_directorys(a.layout(), &name, &d));
        // Once b no longer holds it (moved, deleted), a record naming b is a's to use.
        fs::remove_file(b.snapshot_path(&name)).unwrap();
        assert!(is_this_directorys(a.layout(), &name, &d));
    }
}
