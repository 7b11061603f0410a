//! Where etcdsnap keeps its own files beside a snapshot directory, spelled out here rather than
//! taken from the code under test, so that a change of layout fails the tests that read them.

use std::path::{Path, PathBuf};

/// etcdsnap's own directory of `snapshot_dir`: `<parent>/.etcdsnap/dirs/<name>/`.
pub fn private_dir(snapshot_dir: &Path) -> PathBuf {
    let parent = snapshot_dir.parent().unwrap_or(snapshot_dir);
    parent.join(".etcdsnap/dirs").join(snapshot_dir.file_name().unwrap_or_default())
}

/// etcdsnap's records of the snapshots of `snapshot_dir`.
pub fn records_dir(snapshot_dir: &Path) -> PathBuf {
    private_dir(snapshot_dir).join("records")
}
