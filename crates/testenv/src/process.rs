//! Starting and stopping server processes.

#![allow(unsafe_code)]

use crate::{Error, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Where `testbins/build.sh` puts the servers: `$TESTBINS_DIR`, else `<workspace>/target/testbins`.
pub fn testbins_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TESTBINS_DIR") {
        return PathBuf::from(dir);
    }
    // crates/testenv -> workspace root
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/testbins")
}

/// Path of a pinned test binary (`etcd`, `etcdctl`, `etcdutl`, `kube-apiserver`, `versitygw`).
pub fn testbin(name: &str) -> Result<PathBuf> {
    let path = testbins_dir().join(name);
    if path.exists() { Ok(path.canonicalize().unwrap_or(path)) } else { Err(Error::MissingBinary { path }) }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// All servers are spawned from one thread that lives as long as the test process, so that
/// `PR_SET_PDEATHSIG` (which fires when the *spawning thread* exits) kills them exactly when the
/// test process goes away, including servers shared by several tests through statics.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between
                    // fork and exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the testenv spawner thread: {e}"));
        Mutex::new(tx)
    })
}

/// A running server process. Its stdout and stderr go to `log_path`; it is killed on drop.
#[derive(Debug)]
pub struct Server {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// Starts `program args...`, logging to `log_path` (appended, so restarts keep history).
    pub fn spawn(name: &str, program: &Path, args: Vec<String>, log_path: PathBuf) -> Result<Server> {
        let mut server = Server { name: name.to_string(), program: program.to_path_buf(), args, log_path, child: None };
        server.start()?;
        Ok(server)
    }

    fn start(&mut self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| Error::io(format!("open log {}", self.log_path.display()), e))?;
        let log2 = log.try_clone().map_err(|e| Error::io("clone log handle", e))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdin(Stdio::null()).stdout(log).stderr(log2);
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .map_err(|_| Error::other("spawn", "spawner lock poisoned"))?
            .send((cmd, tx))
            .map_err(|_| Error::other("spawn", "spawner thread is gone"))?;
        let child = rx
            .recv()
            .map_err(|_| Error::other("spawn", "spawner thread is gone"))?
            .map_err(|e| Error::io(format!("start {} ({})", self.name, self.program.display()), e))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Errors with the log tail if the process has already exited (used while waiting for
    /// readiness, so a crashing server fails fast instead of timing out).
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(Error::other(&self.name, "not running"));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                Err(Error::Exited { server: self.name.clone(), status: status.to_string(), log: self.log_tail(40) })
            }
            Err(e) => Err(Error::io(format!("wait for {}", self.name), e)),
        }
    }

    /// SIGKILLs the process and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERMs the process and waits up to `grace` for it to exit (a server that keeps its data
    /// in memory and writes it out on exit), then SIGKILLs it. Idempotent.
    pub fn terminate(&mut self, grace: std::time::Duration) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on a pid we own and have not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
            let deadline = std::time::Instant::now() + grace;
            while std::time::Instant::now() < deadline && self.is_running() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        self.kill();
    }

    /// Sends SIGSTOP/SIGCONT: a frozen server accepts connections but never answers, which is
    /// how tests simulate a slow or hung peer.
    pub fn freeze(&self, frozen: bool) {
        if let Some(pid) = self.pid() {
            let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on a pid we own and have not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    /// Starts the same command again (after `kill`), same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.start()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        read_tail(&self.log_path, lines)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = String::new();
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    buf.push_str(&String::from_utf8_lossy(&bytes));
    let all: Vec<&str> = buf.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
