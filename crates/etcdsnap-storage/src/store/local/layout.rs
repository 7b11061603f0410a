//! Where the files of one snapshot directory `<parent>/<dir>` live:
//!
//! - `<parent>/<dir>/<name>`: the snapshots, and nothing else (K3s takes every file there, at
//!   any depth, for a snapshot);
//! - `<parent>/.metadata/<name>`: K3s's extra metadata, exactly where and as K3s writes it
//!   (K3s reads `<snapshot dir>/../.metadata/<name>`), so it is shared by every snapshot
//!   directory of the parent, as it is in K3s;
//! - `<parent>/.etcdsnap/dirs/<dir>/`: etcdsnap's own files of this snapshot directory alone:
//!   `records/<name>.etcdsnap.json`, the locks, `partial/` (file systems without `O_TMPFILE`).
//!   Two snapshot directories of one parent have different names, so they never see each
//!   other's records, and no cleanup of one can remove what belongs to the other.
//!
//! Earlier releases kept records in `<parent>/.metadata/<name>.etcdsnap.json` (or in K3s's
//! `<parent>/.metadata/<name>` itself) and their lock and partial files in
//! `<parent>/.etcdsnap/`, shared by every snapshot directory of the parent: those are the
//! *legacy* places, still read, and emptied by `legacy.rs`.

use etcdsnap_api::SnapshotName;
use etcdsnap_api::consts::{METADATA_DIR, PRIVATE_DIR, PRIVATE_DIRS, RECORDS_DIR};
use std::path::{Path, PathBuf};

/// Where partial snapshots go on file systems without `O_TMPFILE`, in the private directory.
pub(super) const PARTIAL_DIR: &str = "partial";

/// The places of one snapshot directory's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// K3s's metadata directory, `<parent>/.metadata`.
    pub k3s_metadata: PathBuf,
    /// etcdsnap's directory of this snapshot directory, `<parent>/.etcdsnap/dirs/<dir>`.
    pub private: PathBuf,
}

impl Layout {
    /// The layout of the snapshot directory `dir` (resolved when it exists, so that every path
    /// naming it finds the same private directory).
    pub fn of(dir: &Path) -> Layout {
        let dir = dir.canonicalize().or_else(|_| std::path::absolute(dir)).unwrap_or_else(|_| dir.to_path_buf());
        let parent = dir.parent().unwrap_or(&dir).to_path_buf();
        // Only `/` has no name; its private directory is still outside it in name only.
        let name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "root".into());
        Layout {
            k3s_metadata: parent.join(METADATA_DIR),
            private: parent.join(PRIVATE_DIR).join(PRIVATE_DIRS).join(name),
            dir,
        }
    }

    /// etcdsnap's records of this directory's snapshots.
    pub fn records(&self) -> PathBuf {
        self.private.join(RECORDS_DIR)
    }

    /// etcdsnap's record of a snapshot.
    pub fn record_path(&self, name: &SnapshotName) -> PathBuf {
        self.records().join(name.record_file_name())
    }

    /// The detached signature of a snapshot's record, beside it.
    pub fn signature_path(&self, name: &SnapshotName) -> PathBuf {
        self.records().join(etcdsnap_api::seal::signature_file_name(name.as_str()))
    }

    /// A snapshot's sealed restore kit, beside its record.
    pub fn kit_path(&self, name: &SnapshotName) -> PathBuf {
        self.records().join(etcdsnap_api::seal::kit_file_name(name.as_str()))
    }

    /// Every file etcdsnap keeps beside a snapshot's record: its signature and kit.
    pub fn companion_paths(&self, name: &SnapshotName) -> [PathBuf; 2] {
        [self.signature_path(name), self.kit_path(name)]
    }

    /// K3s's metadata file of a snapshot.
    pub fn k3s_metadata_path(&self, name: &SnapshotName) -> PathBuf {
        self.k3s_metadata.join(name.as_str())
    }

    /// Where partial snapshots are written when unnamed files are not supported.
    pub fn partial(&self) -> PathBuf {
        self.private.join(PARTIAL_DIR)
    }

    /// Where earlier releases kept a snapshot's record: beside K3s's file, shared by every
    /// snapshot directory of the parent.
    pub fn legacy_record_path(&self, name: &SnapshotName) -> PathBuf {
        self.k3s_metadata.join(name.record_file_name())
    }

    /// Earlier releases' private directory, shared by every snapshot directory of the parent.
    pub fn legacy_private(&self) -> PathBuf {
        self.k3s_metadata.with_file_name(PRIVATE_DIR)
    }

    /// Whether another directory of the parent holds a file named `name`: K3s's metadata file
    /// of that name may then be its snapshot's, and is left alone.
    pub fn held_elsewhere(&self, name: &SnapshotName) -> bool {
        let Some(parent) = self.dir.parent() else { return false };
        let Ok(entries) = std::fs::read_dir(parent) else {
            // Cannot tell: assume it is, so that nothing is removed.
            return true;
        };
        entries.flatten().any(|e| {
            let path = e.path();
            let hidden = e.file_name().to_str().is_none_or(|n| n.starts_with('.'));
            !hidden
                && path != self.dir
                && e.file_type().is_ok_and(|t| t.is_dir())
                && path.join(name.as_str()).symlink_metadata().is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_snapshot_directory_has_its_own_private_directory_beside_it() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().canonicalize().unwrap();
        for d in ["a", "b"] {
            std::fs::create_dir(root.join(d)).unwrap();
        }
        let a = Layout::of(&root.join("a"));
        let b = Layout::of(&root.join("b/"));
        assert_eq!(a.private, root.join(".etcdsnap/dirs/a"));
        assert_eq!(b.private, root.join(".etcdsnap/dirs/b"));
        assert_eq!(a.k3s_metadata, b.k3s_metadata, "K3s's metadata directory is K3s's: shared");
        assert_eq!(a.k3s_metadata, root.join(".metadata"));
        assert_eq!(a.legacy_private(), root.join(".etcdsnap"));
        // Any spelling of a directory finds the same place.
        assert_eq!(Layout::of(&root.join("b/../a")), a);
        let name = SnapshotName::parse("s-n-1").unwrap();
        assert_eq!(a.record_path(&name), root.join(".etcdsnap/dirs/a/records/s-n-1.etcdsnap.json"));
        assert!(!a.held_elsewhere(&name));
        std::fs::write(root.join("b/s-n-1"), b"x").unwrap();
        assert!(a.held_elsewhere(&name));
        assert!(!b.held_elsewhere(&name), "its own directory is not elsewhere");
    }
}
