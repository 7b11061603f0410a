//! The locks of a node's snapshot directory, both files in etcdsnap's private directory beside
//! it (never in it: K3s takes every file there for a snapshot).
//!
//! - [`DirLock`] (`lock`): one save at a time per node. Exclusive, never waited for: a second
//!   save is refused at once.
//! - [`RemovalLock`] (`removal.lock`): what reads every snapshot (verify) shares it; what
//!   removes them (prune, delete) takes it alone. A prune never deletes a snapshot a verify is
//!   reading, and a verify never reports a snapshot as damaged because retention took it away
//!   mid-read. Removal does not wait (retention runs again next time); reading waits a while,
//!   since removals are quick.
//!
//! Both are `flock` locks, released when the holder exits however it exits.

use super::StoreError;
use super::local::private_dir_of;
use crate::files::{create_private_dir, open_private};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

const LOCK_FILE: &str = "lock";
const REMOVAL_LOCK_FILE: &str = "removal.lock";

fn open_lock(dir: &Path, file: &str) -> Result<(File, PathBuf), StoreError> {
    let private = private_dir_of(dir);
    create_private_dir(&private)?;
    let path = private.join(file);
    let f = open_private(&path, false).map_err(StoreError::io("open lock file", &path))?;
    Ok((f, path))
}

/// Exclusive right to write snapshots into a directory; released on drop.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of the snapshot directory `dir` without waiting (creating etcdsnap's
    /// private directory beside it if needed); a second holder gets `snapshot save already in
    /// progress`. S3-only saves take the lock of the directory a local copy would use, so they
    /// never overlap another save of the same node.
    pub fn take(dir: &Path) -> Result<DirLock, StoreError> {
        let (file, path) = open_lock(dir, LOCK_FILE)?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file, path }),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => Err(StoreError::io("lock", &path)(e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Readers share it, removers hold it alone; released on drop.
#[derive(Debug)]
pub struct RemovalLock {
    _file: File,
}

impl RemovalLock {
    /// For removing snapshots of `dir`: refused at once while anything reads them.
    pub fn remove(dir: &Path) -> Result<RemovalLock, StoreError> {
        let (file, path) = open_lock(dir, REMOVAL_LOCK_FILE)?;
        match file.try_lock() {
            Ok(()) => Ok(RemovalLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::BeingRead(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => Err(StoreError::io("lock", &path)(e)),
        }
    }

    /// For reading snapshots of `dir`: shared with other readers; waits up to `wait` for a
    /// removal in progress to finish.
    pub async fn read(dir: &Path, wait: Duration) -> Result<RemovalLock, StoreError> {
        let (file, path) = open_lock(dir, REMOVAL_LOCK_FILE)?;
        let deadline = Instant::now() + wait;
        let mut told = false;
        loop {
            match file.try_lock_shared() {
                Ok(()) => return Ok(RemovalLock { _file: file }),
                Err(fs::TryLockError::Error(e)) => return Err(StoreError::io("lock", &path)(e)),
                Err(fs::TryLockError::WouldBlock) if Instant::now() >= deadline => {
                    return Err(StoreError::BeingRemoved(dir.to_path_buf(), wait));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    if !std::mem::replace(&mut told, true) {
                        tracing::info!(dir = %dir.display(), "a prune or delete is removing snapshots; waiting for it");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_share_and_a_remover_waits_for_none_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join("snapshots");
        let a = RemovalLock::read(&snapshots, Duration::ZERO).await.unwrap();
        let b = RemovalLock::read(&snapshots, Duration::ZERO).await.unwrap();
        assert!(matches!(RemovalLock::remove(&snapshots), Err(StoreError::BeingRead(_))));
        drop((a, b));
        let removing = RemovalLock::remove(&snapshots).unwrap();
        let err = RemovalLock::read(&snapshots, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, StoreError::BeingRemoved(..)), "{err}");
        drop(removing);
        assert!(RemovalLock::read(&snapshots, Duration::ZERO).await.is_ok());
    }

    #[tokio::test]
    async fn a_reader_gets_in_once_the_removal_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join("snapshots");
        let removing = RemovalLock::remove(&snapshots).unwrap();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(removing);
        });
        assert!(RemovalLock::read(&snapshots, Duration::from_secs(5)).await.is_ok());
        release.await.unwrap();
    }

    #[test]
    fn the_locks_live_beside_the_snapshot_directory_never_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join("snapshots");
        fs::create_dir(&snapshots).unwrap();
        let lock = DirLock::take(&snapshots).unwrap();
        assert!(lock.path().starts_with(private_dir_of(&snapshots)));
        let _removal = RemovalLock::remove(&snapshots).unwrap();
        assert_eq!(fs::read_dir(&snapshots).unwrap().count(), 0);
    }
}
