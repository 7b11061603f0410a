//! The target data directory: what is there now, and putting the restored one in its place.
//!
//! The restored directory is built beside the target (same file system) and only then swapped
//! in with two renames: an existing data directory is moved aside to `<dir>-old-<unix>` (never
//! deleted), and if the restored one cannot take its place the original is moved back.

use serde::Serialize;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What is at the target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetState {
    /// Nothing: it will be created.
    Absent,
    /// An empty directory: it will be replaced.
    Empty,
    /// A directory with content: it will be moved aside.
    Occupied,
    /// A file or something else that is not a directory.
    NotADirectory,
    /// A symbolic link (the restore would replace the link, not what it points to).
    Symlink,
    /// The parent directory does not exist.
    ParentMissing,
}

impl TargetState {
    /// Whether a restore can proceed.
    pub fn is_usable(self) -> bool {
        matches!(self, TargetState::Absent | TargetState::Empty | TargetState::Occupied)
    }
}

/// Why the target cannot be used, or the swap failed. Each message says where the original is.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("--data-dir {}: must name a directory below an existing parent", .0.display())]
    BadPath(PathBuf),
    #[error("cannot inspect {}: {source}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} changed while restoring (it is now {state:?}); nothing was moved", path.display())]
    Changed { path: PathBuf, state: TargetState },
    #[error("cannot move {} aside to {}: {source}; nothing was changed", from.display(), to.display())]
    MoveAside {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is in use ({holders}); nothing was moved: stop etcd and whatever else has it open, then restore again",
        path.display()
    )]
    InUse { path: PathBuf, holders: String },
    #[error("cannot make the restored data durable at {}: {source}; nothing was moved", path.display())]
    SyncStaged {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the restored data is at {} but the directory entry may not survive a power loss (fsync of {} failed: {source}); run `sync` and check the directory before starting etcd",
        target.display(),
        parent.display()
    )]
    SyncParent {
        target: PathBuf,
        parent: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot put the restored data in place at {}: {source}; {}",
        target.display(),
        describe_put_back(target, put_back)
    )]
    Install {
        target: PathBuf,
        put_back: PutBack,
        #[source]
        source: io::Error,
    },
}

/// What happened to the original after a failed install.
#[derive(Debug)]
pub enum PutBack {
    /// It had never been moved.
    NotMoved,
    /// It was moved back to the target path.
    Restored,
    /// It could not be moved back and is still at `aside`.
    Stranded { aside: PathBuf, error: io::Error },
}

fn describe_put_back(target: &Path, p: &PutBack) -> String {
    match p {
        PutBack::NotMoved => "the original was not moved".into(),
        PutBack::Restored => format!("the original data directory was put back at {}", target.display()),
        PutBack::Stranded { aside, error } => format!(
            "the original could not be put back ({error}): it is intact at {}; move it back with `mv {} {}`",
            aside.display(),
            aside.display(),
            target.display()
        ),
    }
}

/// The target data directory, as an absolute path split into parent and name.
#[derive(Debug, Clone)]
pub struct Target {
    pub path: PathBuf,
    pub parent: PathBuf,
    pub name: OsString,
}

/// The result of a successful swap.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Installed {
    pub data_dir: PathBuf,
    /// Where the previous data directory now is.
    pub moved_aside: Option<PathBuf>,
}

impl Target {
    pub fn new(path: &Path) -> Result<Target, SwapError> {
        let abs = std::path::absolute(path).map_err(|_| SwapError::BadPath(path.to_path_buf()))?;
        let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
            return Err(SwapError::BadPath(path.to_path_buf()));
        };
        Ok(Target { parent: parent.to_path_buf(), name: name.to_os_string(), path: parent.join(name) })
    }

    /// Looks at the target without changing anything.
    pub fn inspect(&self) -> Result<TargetState, SwapError> {
        let inspect_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SwapError::Inspect { path, source }
        };
        match fs::metadata(&self.parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(TargetState::ParentMissing),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TargetState::ParentMissing),
            Err(e) => return Err(inspect_err(&self.parent)(e)),
        }
        let meta = match fs::symlink_metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TargetState::Absent),
            Err(e) => return Err(inspect_err(&self.path)(e)),
        };
        if meta.file_type().is_symlink() {
            return Ok(TargetState::Symlink);
        }
        if !meta.is_dir() {
            return Ok(TargetState::NotADirectory);
        }
        let mut entries = fs::read_dir(&self.path).map_err(inspect_err(&self.path))?;
        Ok(if entries.next().is_some() { TargetState::Occupied } else { TargetState::Empty })
    }

    /// `<dir>-old-<unix>`, moved one second on while that name is taken (a second restore in
    /// the same second must not collide with the first one's copy).
    pub fn aside_path(&self, unix: i64) -> PathBuf {
        let mut t = unix;
        loop {
            let mut name = self.name.clone();
            name.push(format!("-old-{t}"));
            let candidate = self.parent.join(name);
            if fs::symlink_metadata(&candidate).is_err() {
                return candidate;
            }
            t += 1;
        }
    }

    /// Puts `staged` (a complete data directory on the same file system) at the target path.
    /// An occupied target is moved aside first; if the restored directory cannot take its
    /// place the original is moved back.
    pub fn install(&self, staged: &Path, unix: i64) -> Result<Installed, SwapError> {
        sync_tree(staged).map_err(|source| SwapError::SyncStaged { path: staged.to_path_buf(), source })?;
        let state = self.inspect()?;
        if matches!(state, TargetState::Occupied | TargetState::Empty) {
            // Checked by the pre-flight already; again now, since etcd may have been started
            // while etcdutl worked.
            let holders = super::holders::find(&self.path);
            if !holders.is_empty() {
                return Err(SwapError::InUse { path: self.path.clone(), holders: holders.describe() });
            }
        }
        self.swap_in(staged, state, unix)
    }

    /// The two renames (and the fsync that makes them durable), from the target's `state`.
    fn swap_in(&self, staged: &Path, state: TargetState, unix: i64) -> Result<Installed, SwapError> {
        let moved_aside = match state {
            TargetState::Absent | TargetState::Empty => None,
            TargetState::Occupied => {
                let aside = self.aside_path(unix);
                fs::rename(&self.path, &aside).map_err(|source| SwapError::MoveAside {
                    from: self.path.clone(),
                    to: aside.clone(),
                    source,
                })?;
                tracing::info!(from = %self.path.display(), to = %aside.display(), "moved the existing data directory aside");
                Some(aside)
            }
            other => {
                return Err(SwapError::Changed { path: self.path.clone(), state: other });
            }
        };
        // rename(2) replaces an empty directory atomically, so an empty target needs no step.
        if let Err(source) = fs::rename(staged, &self.path) {
            let put_back = match &moved_aside {
                None => PutBack::NotMoved,
                Some(aside) => match fs::rename(aside, &self.path) {
                    Ok(()) => PutBack::Restored,
                    Err(error) => PutBack::Stranded { aside: aside.clone(), error },
                },
            };
            return Err(SwapError::Install { target: self.path.clone(), put_back, source });
        }
        fs::File::open(&self.parent).and_then(|d| d.sync_all()).map_err(|source| SwapError::SyncParent {
            target: self.path.clone(),
            parent: self.parent.clone(),
            source,
        })?;
        Ok(Installed { data_dir: self.path.clone(), moved_aside })
    }
}

/// fsyncs every file and directory under `dir`, and `dir` itself, so the tree etcdutl built is on
/// disk before it is renamed into place (a rename is durable only once the data it names is).
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            fs::File::open(entry.path())?.sync_all()?;
        }
    }
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Target) {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::new(&dir.path().join("etcd")).unwrap();
        (dir, target)
    }

    fn staged(dir: &Path) -> PathBuf {
        let s = dir.join("staged");
        fs::create_dir_all(s.join("member/snap")).unwrap();
        fs::write(s.join("member/snap/db"), b"new").unwrap();
        s
    }

    #[test]
    fn states() {
        let (dir, t) = setup();
        assert_eq!(t.inspect().ok(), Some(TargetState::Absent));
        fs::create_dir(&t.path).unwrap();
        assert_eq!(t.inspect().ok(), Some(TargetState::Empty));
        fs::write(t.path.join("x"), b"").unwrap();
        assert_eq!(t.inspect().ok(), Some(TargetState::Occupied));
        let file = Target::new(&t.path.join("x")).unwrap();
        assert_eq!(file.inspect().ok(), Some(TargetState::NotADirectory));
        let orphan = Target::new(&dir.path().join("a/b")).unwrap();
        assert_eq!(orphan.inspect().ok(), Some(TargetState::ParentMissing));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&t.path, &link).unwrap();
        let link = Target::new(&link).unwrap();
        assert_eq!(link.inspect().ok(), Some(TargetState::Symlink));
        assert!(Target::new(Path::new("/")).is_err());
    }

    #[test]
    fn occupied_targets_are_moved_aside_never_deleted() {
        let (dir, t) = setup();
        fs::create_dir(&t.path).unwrap();
        fs::write(t.path.join("old"), b"old").unwrap();
        // A copy from an earlier restore in the same second is kept too.
        let earlier = dir.path().join("etcd-old-100");
        fs::create_dir(&earlier).unwrap();
        let s = staged(dir.path());
        let installed = t.install(&s, 100).unwrap();
        assert_eq!(installed.moved_aside.as_deref(), Some(dir.path().join("etcd-old-101").as_path()));
        assert_eq!(fs::read(dir.path().join("etcd-old-101/old")).ok(), Some(b"old".to_vec()));
        assert_eq!(fs::read(t.path.join("member/snap/db")).ok(), Some(b"new".to_vec()));
        assert!(earlier.exists());
    }

    #[test]
    fn empty_and_absent_targets_are_simply_replaced() {
        let (dir, t) = setup();
        let s = staged(dir.path());
        assert!(t.install(&s, 1).is_ok_and(|i| i.moved_aside.is_none()));
        fs::remove_dir_all(&t.path).unwrap();
        fs::create_dir(&t.path).unwrap();
        let s = staged(dir.path());
        assert!(t.install(&s, 1).is_ok_and(|i| i.moved_aside.is_none()));
        assert!(t.path.join("member/snap/db").exists());
    }

    #[test]
    fn a_failed_install_puts_the_original_back() {
        let (dir, t) = setup();
        fs::create_dir(&t.path).unwrap();
        fs::write(t.path.join("old"), b"old").unwrap();
        let err = t.swap_in(&dir.path().join("does-not-exist"), t.inspect().unwrap(), 5).err();
        assert!(matches!(&err, Some(SwapError::Install { put_back: PutBack::Restored, .. })), "{err:?}");
        assert!(err.is_some_and(|e| e.to_string().contains("put back")));
        assert_eq!(fs::read(t.path.join("old")).ok(), Some(b"old".to_vec()));
        assert!(!dir.path().join("etcd-old-5").exists());
    }

    #[test]
    fn a_target_that_became_a_file_is_left_alone() {
        let (dir, t) = setup();
        fs::write(&t.path, b"file").unwrap();
        let s = staged(dir.path());
        assert!(matches!(t.install(&s, 1), Err(SwapError::Changed { .. })));
        assert_eq!(fs::read(&t.path).ok(), Some(b"file".to_vec()));
    }
}
