//! Helpers shared by the integration tests: running the real `etcdsnap` binary and loading
//! Kubernetes-like data into a real etcd.
#![allow(dead_code)]

pub mod agent;
pub mod cluster;
pub mod k3s;

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

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_etcdsnap"))
}

/// A command for the binary with no ETCDSNAP_* or cloud settings inherited from the caller.
pub fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("ETCDSNAP_") || k.starts_with("AWS_") || k == "KUBECONFIG" || k == "NODE_NAME" {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info").args(args).kill_on_drop(true);
    cmd
}

/// Runs `etcdsnap args...` with extra environment.
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = command(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap_or_else(|e| panic!("cannot run etcdsnap: {e}")).into()
}

/// Puts `n` objects shaped like what a kube-apiserver stores (keys under `/registry/`, JSON
/// values of a kilobyte or two) into etcd. Every fifth is an Event attached to a lease, as the
/// API server attaches each minute's Events to one lease of `--event-ttl`: a snapshot of a real
/// cluster always holds leased keys (etcdutl 3.6's `hashkv` cannot read them).
pub async fn load_kube_like_data(client: &mut etcd_client::Client, n: usize) -> Result<(), etcd_client::Error> {
    let lease = client.lease_grant(3600, None).await?.id();
    for i in 0..n {
        let (kind, ns) = match i % 5 {
            0 => ("configmaps", "kube-system"),
            1 => ("pods", "default"),
            2 => ("secrets", "app"),
            3 => ("services", "default"),
            _ => ("events", "default"),
        };
        let name = format!("obj-{i:06}");
        let value = serde_json::json!({
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": ns, "uid": format!("{:08x}-0000-4000-8000-{:012x}", i, i * 7919),
                         "labels": {"app": format!("app-{}", i % 17), "tier": "backend"},
                         "resourceVersion": (i + 1).to_string()},
            "data": {"config.yaml": format!("replicas: {}\nimage: registry.example.com/app:{}\n{}", i % 5, i % 11, "x: y\n".repeat(40 + i % 50))},
        });
        let options = (kind == "events").then(|| etcd_client::PutOptions::new().with_lease(lease));
        client.put(format!("/registry/{kind}/{ns}/{name}"), value.to_string(), options).await?;
    }
    Ok(())
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

/// Unix permission bits of a path.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0)
}

/// An etcd holding `objects` Kubernetes-like objects behind a proxy that passes
/// `bytes_per_sec`: a save from `endpoint` takes long enough to be caught in the middle.
pub struct SlowEtcd {
    pub etcd: testenv::Etcd,
    pub proxy: testenv::FaultProxy,
    /// The proxy's URL, for `--endpoints`.
    pub endpoint: String,
}

impl SlowEtcd {
    pub async fn start(objects: usize, bytes_per_sec: u64) -> Result<SlowEtcd, Box<dyn std::error::Error>> {
        let etcd = testenv::Etcd::single().await?;
        load_kube_like_data(&mut etcd.client().await?, objects).await?;
        let proxy = testenv::FaultProxy::start(etcd.endpoints()[0].trim_start_matches("http://")).await?;
        proxy.set_fault(testenv::Fault::Throttle(bytes_per_sec));
        let endpoint = format!("http://{}", proxy.addr());
        Ok(SlowEtcd { etcd, proxy, endpoint })
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
pub async fn wait_for_save_in_progress(
    pid: u32,
    dir: &Path,
    min_bytes: u64,
    timeout: std::time::Duration,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if unpublished_bytes(pid, dir).is_some_and(|n| n >= min_bytes) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("no save of process {pid} in progress in {} after {timeout:?}", dir.display()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A snapshot taken the way K3s takes them (etcd's client snapshot helper, as in etcdctl).
pub async fn etcdctl_snapshot(etcd: &testenv::Etcd, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let out = tokio::process::Command::new(testenv::testbin("etcdctl")?)
        .args(["--endpoints", &etcd.endpoints()[0], "snapshot", "save"])
        .arg(path)
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!("etcdctl snapshot save: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}
