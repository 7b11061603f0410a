//! A private etcd on loopback, on a data directory etcdutl restored from a snapshot: drills boot
//! one to ask what a cluster restored from the snapshot would hold, point-in-time replays roll
//! one forward. It is a one-member cluster of its own (its own name and cluster token), on ports
//! the system chose, so it can never join or be mistaken for the live cluster.
//!
//! The URLs it advertises are fixed ([`ADVERTISED_PEER`], [`ADVERTISED_CLIENT`]), not the ports it
//! listens on: they are what its member record in the database holds, and a replay on another
//! node (another free port) must leave the same bytes (`restore --all-members`). Nothing dials
//! them: a one-member cluster never reaches its own peer URL, and etcdsnap reaches it at the
//! port it listens on.
//!
//! A replay raises the request limits etcd starts with ([`RequestLimits`]): a revision the live
//! etcd accepted must be replayable as one transaction, however many keys it changed.

use super::etcdutl::{self, EtcdutlError, MemberSettings};
use etcdsnap_storage::etcd::{EtcdConfig, EtcdMember, MemberStatus};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The peer URL the private etcd's member is made with (its member ID derives from it).
const ADVERTISED_PEER: &str = "http://127.0.0.1:2380";
/// The client URL it publishes in its member record.
const ADVERTISED_CLIENT: &str = "http://127.0.0.1:2379";

/// How long the private etcd may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a clean stop may take before the etcd is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How large a transaction the private etcd accepts (`--max-txn-ops`, `--max-request-bytes`).
/// etcd's defaults are 128 operations and 1.5 MiB; one revision of a real cluster can hold more
/// (a range delete of 300 keys, the expiry of a lease holding a minute of Events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
}

impl Default for RequestLimits {
    /// etcd's own defaults.
    fn default() -> Self {
        RequestLimits { max_txn_ops: 128, max_request_bytes: 1536 * 1024 }
    }
}

impl RequestLimits {
    /// The flags that set them.
    pub fn args(&self) -> [String; 2] {
        [format!("--max-txn-ops={}", self.max_txn_ops), format!("--max-request-bytes={}", self.max_request_bytes)]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error("no free loopback port for the private etcd: {0}")]
    Port(std::io::Error),
    #[error(transparent)]
    Restore(#[from] EtcdutlError),
    #[error("cannot start {}: {source}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the private etcd did not serve within {}s: {last}\n{log}", START_TIMEOUT.as_secs())]
    NotServing { last: String, log: String },
}

/// A data directory etcdutl restored from a snapshot, with the member it was made for.
pub struct Restored {
    data: PathBuf,
    scratch: PathBuf,
    member: MemberSettings,
    peer: String,
}

/// Restores `snapshot` into `scratch/data` for a one-member cluster `name` on loopback.
pub async fn restore(
    name: &str,
    etcdutl_bin: &Path,
    snapshot: &Path,
    scratch: &Path,
) -> Result<Restored, LoopbackError> {
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let member = MemberSettings {
        name: name.into(),
        initial_cluster: format!("{name}={ADVERTISED_PEER}"),
        initial_advertise_peer_urls: ADVERTISED_PEER.into(),
        initial_cluster_token: format!("etcdsnap-{name}"),
        bump_revision: None,
        mark_compacted: false,
    };
    let data = scratch.join("data");
    etcdutl::start(etcdutl_bin, snapshot, &data, &member, &scratch.join("etcdutl.log"))?.wait().await?;
    Ok(Restored { data, scratch: scratch.to_path_buf(), member, peer })
}

/// The private etcd, serving. Killed when dropped; [`Running::stop`] stops it cleanly.
pub struct Running {
    child: tokio::process::Child,
    url: String,
    pub member: EtcdMember,
    pub status: MemberStatus,
}

impl Restored {
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Starts etcd on the restored directory with `cmd` (the etcd binary, or a wrapper that
    /// execs it: drills lower its priority) and waits until it answers. Its log is
    /// `scratch/etcd.log`.
    pub async fn start(&self, mut cmd: tokio::process::Command, bin: &Path) -> Result<Running, LoopbackError> {
        let url = format!("http://127.0.0.1:{}", free_port()?);
        let log_path = self.scratch.join("etcd.log");
        let spawn = |source| LoopbackError::Spawn { bin: bin.into(), source };
        let log = std::fs::File::create(&log_path).map_err(spawn)?;
        let log_err = log.try_clone().map_err(spawn)?;
        cmd.arg("--data-dir")
            .arg(&self.data)
            .args(["--name", &self.member.name, "--listen-client-urls", &url])
            .args(["--advertise-client-urls", ADVERTISED_CLIENT, "--listen-peer-urls", &self.peer])
            .args([
                "--initial-advertise-peer-urls",
                ADVERTISED_PEER,
                "--initial-cluster",
                &self.member.initial_cluster,
            ]);
        let child = cmd.stdin(Stdio::null()).stdout(log).stderr(log_err).kill_on_drop(true).spawn().map_err(spawn)?;
        // Dropping `child` on an error below kills the etcd.
        let (member, status) = wait_serving(&url, &log_path).await?;
        Ok(Running { child, url, member, status })
    }
}

impl Running {
    /// Its client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// SIGTERM, then a wait, so its data directory is closed cleanly; killed when it does not
    /// exit in time.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await.is_err() {
            tracing::warn!("the private etcd did not stop on SIGTERM; killing it");
            let _ = self.child.kill().await;
        }
    }
}

async fn wait_serving(url: &str, log: &Path) -> Result<(EtcdMember, MemberStatus), LoopbackError> {
    let config = EtcdConfig {
        endpoints: vec![url.to_string()],
        dial_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(60),
        ..EtcdConfig::default()
    };
    let deadline = Instant::now() + START_TIMEOUT;
    // Until the port accepts connections there is nobody to ask (and nothing worth a warning).
    let addr = url.trim_start_matches("http://").to_string();
    while tokio::net::TcpStream::connect(&addr).await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    loop {
        match config.connect_member().await {
            Ok(ready) => return Ok(ready),
            Err(e) if Instant::now() >= deadline => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(LoopbackError::NotServing { last: e.to_string(), log: tail.join("\n") });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn free_port() -> Result<u16, LoopbackError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(LoopbackError::Port)?;
    Ok(listener.local_addr().map_err(LoopbackError::Port)?.port())
}
