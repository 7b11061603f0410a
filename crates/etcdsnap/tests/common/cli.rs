//! The real `etcdsnap` binary as a child process: a command with nothing inherited from the
//! caller's environment, one run's output, and what its arguments and results are made of.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The output of one `etcdsnap` run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with both streams unless the run succeeded.
    pub fn expect_ok(self) -> Run {
        assert!(self.ok(), "etcdsnap failed ({:?})\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr);
        self
    }

    pub fn expect_fail(self) -> Run {
        assert!(!self.ok(), "etcdsnap unexpectedly succeeded\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_etcdsnap"))
}

/// A command for the binary with no ETCDSNAP_* or cloud settings inherited from the caller.
pub fn command(args: &[impl AsRef<OsStr>]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin());
    for (k, _) in std::env::vars() {
        let server_config = k == "K3S_CONFIG_FILE" || k == "RKE2_CONFIG_FILE";
        let cloud = ["AWS_", "GOOGLE_", "AZURE_"].iter().any(|p| k.starts_with(p));
        if k.starts_with("ETCDSNAP_") || cloud || k == "KUBECONFIG" || k == "NODE_NAME" || server_config {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info").args(args).kill_on_drop(true);
    cmd
}

/// Runs `etcdsnap args...` with extra environment.
pub async fn run(args: &[impl AsRef<OsStr>], env: &[(&str, &str)]) -> Run {
    let mut cmd = command(args);
    cmd.envs(env.iter().copied());
    cmd.output().await.unwrap_or_else(|e| panic!("cannot run etcdsnap: {e}")).into()
}

/// Files (not directories) directly in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A path as a command-line argument.
pub fn s(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
