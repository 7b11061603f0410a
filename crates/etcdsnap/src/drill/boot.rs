//! The boot level of a drill: the snapshot restored with etcdutl into the scratch directory, a
//! private etcd started on it on loopback, and asked what a cluster restored from the snapshot
//! would hold. The etcd is killed when this is done or dropped; its files go with the scratch
//! directory.

use crate::restore::MemberSettings;
use crate::restore::etcdutl;
use etcdsnap_api::KvHash;
use etcdsnap_api::consts::KUBERNETES_PREFIX;
use etcdsnap_storage::etcd::{EtcdConfig, EtcdMember, MemberStatus};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long the private etcd may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What the booted etcd said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    pub version: String,
    /// Its revision (at least the snapshot's).
    pub revision: i64,
    /// Its HashKV at the drilled revision.
    pub hash: KvHash,
    /// Keys under `/registry/` at the drilled revision.
    pub kubernetes_keys: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("no free loopback port for the drill's etcd: {0}")]
    Port(std::io::Error),
    #[error(transparent)]
    Restore(#[from] etcdutl::EtcdutlError),
    #[error("cannot start {}: {source}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the drill's etcd did not serve within {}s: {last}\n{log}", START_TIMEOUT.as_secs())]
    NotServing { last: String, log: String },
    #[error("the drill's etcd served, then failed: {0}")]
    Query(String),
}

/// A data directory etcdutl restored from the snapshot, with the member it was made for.
pub struct Restored {
    data: PathBuf,
    scratch: PathBuf,
    member: MemberSettings,
    peer: String,
}

/// Restores `snapshot` into `scratch/data` for a one-member cluster on loopback. Runs before
/// `etcdutl hashkv`, which opens the database read-write and changes the file (its sha256 no
/// longer matches etcd's trailer afterwards).
pub async fn restore(etcdutl_bin: &Path, snapshot: &Path, scratch: &Path) -> Result<Restored, BootError> {
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let member = MemberSettings {
        name: "drill".into(),
        initial_cluster: format!("drill={peer}"),
        initial_advertise_peer_urls: peer.clone(),
        initial_cluster_token: "etcdsnap-drill".into(),
        bump_revision: None,
        mark_compacted: false,
    };
    let data = scratch.join("data");
    etcdutl::start(etcdutl_bin, snapshot, &data, &member, &scratch.join("etcdutl.log"))?.wait().await?;
    Ok(Restored { data, scratch: scratch.to_path_buf(), member, peer })
}

impl Restored {
    /// Boots `etcd` on the restored directory and asks it about `revision` (its latest when
    /// None). The etcd is killed when this returns, whatever happened.
    pub async fn boot(&self, etcd: &Path, revision: Option<i64>) -> Result<Booted, BootError> {
        let client_url = format!("http://127.0.0.1:{}", free_port()?);
        let log_path = self.scratch.join("etcd.log");
        let spawn = |source| BootError::Spawn { bin: etcd.into(), source };
        let log = std::fs::File::create(&log_path).map_err(spawn)?;
        let log_err = log.try_clone().map_err(spawn)?;
        let mut cmd = super::low_priority_command(etcd);
        cmd.arg("--data-dir")
            .arg(&self.data)
            .args(["--name", &self.member.name, "--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url, "--listen-peer-urls", &self.peer])
            .args(["--initial-advertise-peer-urls", &self.peer, "--initial-cluster", &self.member.initial_cluster]);
        // Dropped when this returns (or is cancelled): the etcd is killed.
        let _etcd = cmd.stdin(Stdio::null()).stdout(log).stderr(log_err).spawn().map_err(spawn)?;

        let (mut member, status) = wait_serving(&client_url, &log_path).await?;
        let at = revision.unwrap_or(status.revision);
        let query = |e: etcdsnap_storage::etcd::EtcdError| BootError::Query(e.to_string());
        let hash = member.hash_kv(at).await.map_err(query)?;
        let kubernetes_keys = member.count_keys(KUBERNETES_PREFIX, at).await.map_err(query)?;
        Ok(Booted { version: status.version, revision: status.revision, hash, kubernetes_keys })
    }
}

async fn wait_serving(url: &str, log: &Path) -> Result<(EtcdMember, MemberStatus), BootError> {
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        match config.connect_member().await {
            Ok(ready) => return Ok(ready),
            Err(e) if Instant::now() >= deadline => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(BootError::NotServing { last: e.to_string(), log: tail.join("\n") });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn free_port() -> Result<u16, BootError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(BootError::Port)?;
    Ok(listener.local_addr().map_err(BootError::Port)?.port())
}
