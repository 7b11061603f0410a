//! Who holds a data directory: a restore must never pull one out from under a running etcd.
//!
//! Two independent looks. etcd's own locks: bbolt holds an exclusive `flock` on
//! `member/snap/db` and etcd an exclusive lock on its WAL files (an open-file-description
//! lock, or `flock` where those do not exist); both are seen whatever user runs etcd. And every
//! process's open files and working directory under `/proc`, which names the process (etcd,
//! an editor, a shell sitting in the directory); processes whose `/proc` entries this user may
//! not read are counted, not guessed at.

use nix::fcntl::{FcntlArg, Flock, FlockArg, fcntl};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// One process with something open under the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`).
    pub command: String,
    /// What it has open there (a file, or the directory it works in).
    pub path: PathBuf,
}

/// What was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holders {
    /// Files under the directory that another process holds etcd's lock on.
    pub locked: Vec<PathBuf>,
    pub processes: Vec<Holder>,
    /// Processes whose open files could not be read (another user's, without privilege).
    pub unreadable: usize,
}

impl Holders {
    pub fn is_empty(&self) -> bool {
        self.locked.is_empty() && self.processes.is_empty()
    }

    /// One line for the report: who holds what.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for h in self.processes.iter().take(5) {
            parts.push(format!("{} (pid {}) has {} open", h.command, h.pid, h.path.display()));
        }
        if self.processes.len() > 5 {
            parts.push(format!("and {} more processes", self.processes.len() - 5));
        }
        if self.processes.is_empty() {
            for p in &self.locked {
                parts.push(format!("{} is locked by a running etcd", p.display()));
            }
        }
        parts.join("; ")
    }
}

/// Looks at `dir` (which exists) for locks and open files.
pub fn find(dir: &Path) -> Holders {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut found = Holders { locked: locked_files(&dir), ..Default::default() };
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == own {
            continue;
        }
        match open_under(pid, &dir) {
            Ok(Some(path)) => found.processes.push(Holder { pid, command: command(pid), path }),
            Ok(None) => {}
            Err(()) => found.unreadable += 1,
        }
    }
    found.processes.sort_by_key(|h| h.pid);
    found
}

/// The first thing process `pid` has open under `dir` (its working directory counts). Err:
/// its file table cannot be read.
fn open_under(pid: u32, dir: &Path) -> Result<Option<PathBuf>, ()> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    if let Ok(cwd) = fs::read_link(proc.join("cwd"))
        && cwd.starts_with(dir)
    {
        return Ok(Some(cwd));
    }
    let fds = match fs::read_dir(proc.join("fd")) {
        Ok(fds) => fds,
        // Gone meanwhile: it holds nothing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err(()),
    };
    for fd in fds.flatten() {
        if let Ok(target) = fs::read_link(fd.path())
            && target.starts_with(dir)
        {
            return Ok(Some(target));
        }
    }
    Ok(None)
}

fn command(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// etcd's database and WAL files under `dir` that another process holds a lock on.
fn locked_files(dir: &Path) -> Vec<PathBuf> {
    let mut candidates = vec![dir.join("member/snap/db")];
    if let Ok(wal) = fs::read_dir(dir.join("member/wal")) {
        candidates.extend(wal.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "wal")));
    }
    candidates.into_iter().filter(|p| is_locked(p)).collect()
}

/// Whether another process holds an exclusive lock on `path`: a `flock` (bbolt's) or an
/// open-file-description lock (etcd's WAL). Our own probe never keeps a lock.
fn is_locked(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return false };
    let mut probe = libc_flock_write();
    if fcntl(&file, FcntlArg::F_OFD_GETLK(&mut probe)).is_ok() && i32::from(probe.l_type) != nix::libc::F_UNLCK {
        return true;
    }
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(held) => {
            drop(held.unlock());
            false
        }
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// A whole-file write-lock request, as F_OFD_GETLK asks "could I take this?".
fn libc_flock_write() -> nix::libc::flock {
    nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn data_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("member/snap")).unwrap();
        fs::create_dir_all(dir.path().join("member/wal")).unwrap();
        fs::write(dir.path().join("member/snap/db"), b"db").unwrap();
        fs::write(dir.path().join("member/wal/0000000000000000-0000000000000000.wal"), b"wal").unwrap();
        dir
    }

    #[test]
    fn an_idle_directory_has_no_holders() {
        let dir = data_dir();
        assert_eq!(find(dir.path()), Holders { unreadable: find(dir.path()).unreadable, ..Default::default() });
    }

    #[test]
    fn a_process_with_a_file_open_is_named() {
        let dir = data_dir();
        let db = File::open(dir.path().join("member/snap/db")).unwrap();
        let mut child = Command::new("sleep").arg("30").stdin(Stdio::from(db)).spawn().unwrap();
        let found = find(dir.path());
        child.kill().unwrap();
        child.wait().unwrap();
        let holder = found.processes.iter().find(|h| h.pid == child.id()).expect("sleep not found");
        assert_eq!(holder.command, "sleep");
        assert!(holder.path.ends_with("member/snap/db"), "{holder:?}");
        assert!(found.describe().contains("sleep (pid"), "{}", found.describe());
    }

    #[test]
    fn a_process_working_in_the_directory_is_named() {
        let dir = data_dir();
        let mut child = Command::new("sleep").arg("30").current_dir(dir.path().join("member")).spawn().unwrap();
        let found = find(dir.path());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.processes.iter().any(|h| h.pid == child.id()), "{found:?}");
    }

    #[test]
    fn a_flock_held_elsewhere_is_seen_and_our_probe_leaves_none() {
        let dir = data_dir();
        let db = dir.path().join("member/snap/db");
        assert!(!is_locked(&db));
        assert!(!is_locked(&db), "a probe left a lock behind");
        // flock locks belong to an open file description: another one, as bbolt's would be.
        let held = Flock::lock(File::open(&db).unwrap(), FlockArg::LockExclusiveNonblock).unwrap();
        assert_eq!(locked_files(dir.path()), vec![db.clone()]);
        assert!(find(dir.path()).locked.contains(&db));
        drop(held);
        assert!(!is_locked(&db));
    }
}
