//! Readiness: etcd answers, and Kubernetes and S3 answer when they are configured. Checks are
//! cached for a few seconds so a busy probe does not hammer the servers.

use async_trait::async_trait;
use etcdsnap_storage::etcd::EtcdConfig;
use etcdsnap_storage::store::SnapshotStore;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const CACHE_FOR: Duration = Duration::from_secs(5);
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Something readiness depends on.
#[async_trait]
pub trait Dependency: Send + Sync {
    fn name(&self) -> &str;
    async fn check(&self) -> Result<(), String>;
}

/// etcd answers Status.
pub struct EtcdDependency(pub EtcdConfig);

#[async_trait]
impl Dependency for EtcdDependency {
    fn name(&self) -> &str {
        "etcd"
    }
    async fn check(&self) -> Result<(), String> {
        let mut config = self.0.clone();
        config.dial_timeout = config.dial_timeout.min(CHECK_TIMEOUT);
        config.command_timeout = config.command_timeout.min(CHECK_TIMEOUT);
        config.connect_member().await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// A store answers a minimal request.
pub struct StoreDependency(pub Arc<dyn SnapshotStore>);

#[async_trait]
impl Dependency for StoreDependency {
    fn name(&self) -> &str {
        "s3"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.check().await.map_err(|e| e.to_string())
    }
}

/// The API server answers (the kube-system namespace, which the agent's role may read).
pub struct KubeDependency(pub etcdsnap_kube::Kube);

#[async_trait]
impl Dependency for KubeDependency {
    fn name(&self) -> &str {
        "kubernetes"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}

/// The outcome of a readiness check.
#[derive(Debug, Clone)]
pub struct Report {
    pub ready: bool,
    pub lines: Vec<String>,
}

impl Report {
    pub fn text(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s.push_str(if self.ready { "ready\n" } else { "not ready\n" });
        s
    }
}

pub struct Health {
    dependencies: Vec<Box<dyn Dependency>>,
    cached: Mutex<Option<(Instant, Report)>>,
}

impl Health {
    pub fn new(dependencies: Vec<Box<dyn Dependency>>) -> Health {
        Health { dependencies, cached: Mutex::new(None) }
    }

    pub async fn check(&self) -> Report {
        let mut cached = self.cached.lock().await;
        if let Some((at, report)) = cached.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return report.clone();
        }
        let mut lines = Vec::new();
        let mut ready = true;
        for dep in &self.dependencies {
            let result = match tokio::time::timeout(CHECK_TIMEOUT * 2, dep.check()).await {
                Ok(r) => r,
                Err(_) => Err("timed out".into()),
            };
            match result {
                Ok(()) => lines.push(format!("[+] {} ok", dep.name())),
                Err(e) => {
                    ready = false;
                    lines.push(format!("[-] {} failed: {e}", dep.name()));
                }
            }
        }
        let report = Report { ready, lines };
        *cached = Some((Instant::now(), report.clone()));
        report
    }
}
