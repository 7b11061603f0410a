//! A drill's private scratch directory: `<parent>/etcdsnap-drill-<random>` (mode 0700), holding
//! the decompressed database, the restored data directory and the private etcd's files.
//! Removed when dropped. A drill killed outright leaves its directory behind with the pid that
//! owned it; the next drill removes every directory whose owner is gone.

use crate::restore::space::available_bytes;
use std::path::{Path, PathBuf};

const PREFIX: &str = "etcdsnap-drill-";
const OWNER_FILE: &str = "owner.pid";
/// Free space a drill leaves untouched beyond what it needs.
const MARGIN: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("drill scratch directory {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not enough free space in {} for a drill: {needed} bytes needed (plus a 256 MiB margin), {available} available; pass --drill-dir on another file system",
        dir.display()
    )]
    NoSpace { dir: PathBuf, needed: u64, available: u64 },
}

pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// Removes what killed drills left in `parent`, checks that `needed` bytes fit, and creates
    /// the directory.
    pub fn create(parent: &Path, needed: u64) -> Result<Scratch, ScratchError> {
        let io = |source| ScratchError::Io { dir: parent.to_path_buf(), source };
        std::fs::create_dir_all(parent).map_err(io)?;
        remove_abandoned(parent);
        let available = available_bytes(parent).map_err(io)?;
        if available < needed.saturating_add(MARGIN) {
            return Err(ScratchError::NoSpace { dir: parent.to_path_buf(), needed, available });
        }
        let dir = tempfile::Builder::new().prefix(PREFIX).tempdir_in(parent).map_err(io)?;
        std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string()).map_err(io)?;
        Ok(Scratch { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes scratch directories whose owning process is gone (or that name none).
pub fn remove_abandoned(parent: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else { return removed };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry.file_name().to_string_lossy().starts_with(PREFIX) && path.is_dir();
        if !ours || owner_alive(&path) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), "removed the scratch directory of a drill that was killed");
                removed.push(path);
            }
            Err(e) => tracing::warn!(dir = %path.display(), error = %e, "cannot remove an abandoned drill directory"),
        }
    }
    removed
}

fn owner_alive(dir: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(dir.join(OWNER_FILE)) else { return false };
    let pid = pid.trim();
    !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && Path::new("/proc").join(pid).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_directories_go_and_live_ones_stay() {
        let parent = tempfile::tempdir().unwrap();
        let live = Scratch::create(parent.path(), 0).unwrap();
        let dead = parent.path().join(format!("{PREFIX}dead"));
        std::fs::create_dir(&dead).unwrap();
        // No process has this pid on Linux (pid_max is at most 2^22).
        std::fs::write(dead.join(OWNER_FILE), "99999999").unwrap();
        let unowned = parent.path().join(format!("{PREFIX}unowned"));
        std::fs::create_dir(&unowned).unwrap();
        let other = parent.path().join("someone-elses");
        std::fs::create_dir(&other).unwrap();

        let removed = remove_abandoned(parent.path());
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!dead.exists() && !unowned.exists());
        assert!(live.path().exists() && other.exists());
        let path = live.path().to_path_buf();
        drop(live);
        assert!(!path.exists());
    }

    #[test]
    fn a_drill_that_does_not_fit_is_refused_before_writing() {
        let parent = tempfile::tempdir().unwrap();
        let e = Scratch::create(parent.path(), u64::MAX / 2).err().unwrap();
        assert!(matches!(e, ScratchError::NoSpace { .. }), "{e}");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
