//! A save caught in the middle: an etcd behind a throttling proxy, and the snapshot a save is
//! still writing, seen from outside its process.

use std::path::Path;
use std::time::{Duration, Instant};

use super::etcd::etcd_with_objects;

/// An etcd holding `objects` Kubernetes-like objects behind a proxy that passes
/// `bytes_per_sec`: a save from `endpoint` takes long enough to be caught in the middle.
pub struct SlowEtcd {
    /// Held for its lifetime: the server stops when dropped. `proxy.target()` reaches it directly.
    _etcd: testenv::Etcd,
    pub proxy: testenv::FaultProxy,
    /// The proxy's URL, for `--endpoints`.
    pub endpoint: String,
}

impl SlowEtcd {
    pub async fn start(objects: usize, bytes_per_sec: u64) -> Result<SlowEtcd, Box<dyn std::error::Error>> {
        let etcd = etcd_with_objects(objects).await?;
        let proxy = testenv::FaultProxy::start(etcd.endpoints()[0].trim_start_matches("http://")).await?;
        proxy.set_fault(testenv::Fault::Throttle(bytes_per_sec));
        let endpoint = format!("http://{}", proxy.addr());
        Ok(SlowEtcd { _etcd: etcd, proxy, endpoint })
    }
}

/// Bytes the process `pid` has written to snapshot files it holds open in `dir` and has not
/// published yet (unnamed files: their links read `<dir>/#<inode> (deleted)`), if it holds one.
pub fn unpublished_bytes(pid: u32, dir: &Path) -> Option<u64> {
    let dir = dir.canonicalize().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.starts_with(&dir) && target.to_string_lossy().ends_with(" (deleted)"))
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok().map(|m| m.len()))
        .max()
}

/// Waits until the save running as `pid` has written at least `min_bytes` of a snapshot into
/// the snapshot directory `dir`, not yet published.
pub async fn wait_for_save_in_progress(pid: u32, dir: &Path, min_bytes: u64, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if unpublished_bytes(pid, dir).is_some_and(|n| n >= min_bytes) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no save of process {pid} in progress in {} after {timeout:?}", dir.display()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
