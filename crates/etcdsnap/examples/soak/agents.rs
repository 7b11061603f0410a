//! The soak's agents: one `etcdsnap agent` process per node, restarted after a kill, with its
//! log appended across restarts and its memory and open files sampled over each life.

use crate::fds::{self, Kinds, Peers};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Names that are suffixes of one another, as in a real fleet that grew.
pub const NODES: [&str; 3] = ["server-1", "k3s-server-1", "server-11"];
pub const BUCKET: &str = "soak";
pub const FOLDER: &str = "soak";
pub const RETENTION: usize = 5;

/// What every agent is started with besides its node, endpoint and directory.
pub struct Fleet {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub s3_endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// The servers, to tell the agents' sockets apart.
    pub peers: Peers,
}

/// One sample of a running agent.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
    /// The open files by kind ([`fds::classify`]).
    pub kinds: Kinds,
}

/// One process lifetime of an agent.
#[derive(Debug, Default)]
pub struct Life {
    pub samples: Vec<Sample>,
}

pub struct Agent {
    pub node: &'static str,
    pub endpoint: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<std::process::Child>,
    pub lives: Vec<Life>,
    peers: Peers,
}

impl Agent {
    pub fn new(node: &'static str, endpoint: String, work: &Path) -> anyhow::Result<Agent> {
        let dir = work.join(node);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Agent {
            node,
            endpoint,
            log: dir.join("agent.log"),
            dir,
            child: None,
            lives: Vec::new(),
            peers: Peers::default(),
        })
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.dir.join("snapshots")
    }

    /// The S3 and identity flags `agent` and `verify` share.
    pub fn common_args(&self, fleet: &Fleet) -> Vec<String> {
        let dir = self.dir.display().to_string();
        let args = [
            "--node-name",
            self.node,
            "--data-dir",
            &dir,
            "--s3",
            "--s3-endpoint",
            &fleet.s3_endpoint,
            "--s3-insecure",
            "--s3-bucket",
            BUCKET,
            "--s3-folder",
            FOLDER,
            "--retention",
        ];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.push(RETENTION.to_string());
        args
    }

    pub fn start(&mut self, fleet: &Fleet, since: Instant) -> anyhow::Result<()> {
        self.start_with(fleet, since, &[])
    }

    /// Starts the agent with `extra` arguments after the usual ones.
    pub fn start_with(&mut self, fleet: &Fleet, since: Instant, extra: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let metrics = format!("127.0.0.1:{}", testenv::free_port()?);
        let kubeconfig = fleet.kubeconfig.display().to_string();
        let child = std::process::Command::new(&fleet.bin)
            .arg("agent")
            .args(self.common_args(fleet))
            .args(["--endpoints", &self.endpoint, "--kubeconfig", &kubeconfig, "--metrics-addr", &metrics])
            .args(["--schedule", "*/2 * * * * *", "--compress", "zstd", "--reconcile-interval", "30s"])
            .args(["--leader-lease-duration", "10s"])
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", &fleet.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &fleet.secret_key)
            .env("HOME", "/nonexistent")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start the agent of {}", self.node))?;
        self.child = Some(child);
        self.peers = fleet.peers.clone();
        self.lives.push(Life::default());
        self.sample(since);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-TERM`).
    pub fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill").args([signal, &pid.to_string()]).status();
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to a minute for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.signal("-CONT");
        self.signal("-TERM");
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::ensure!(status.success(), "the agent of {} exited with {status}", self.node);
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the agent of {} did not stop within a minute", self.node);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Records the process's resident memory and open files (Linux /proc).
    pub fn sample(&mut self, since: Instant) {
        let Some(pid) = self.pid() else { return };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let kinds = fds::classify(pid, &self.peers);
        let fds = kinds.values().sum();
        if rss_kib > 0
            && let Some(life) = self.lives.last_mut()
        {
            life.samples.push(Sample { at: since.elapsed(), rss_kib, fds, kinds });
        }
    }

    /// The open files of the running agent by kind, as last sampled.
    pub fn open_files(&self) -> Option<&Kinds> {
        self.child.as_ref()?;
        self.lives.last()?.samples.last().map(|s| &s.kinds)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
