//! The agent's Kubernetes duties: resources right after its own saves, prunes and late uploads;
//! its heartbeat Lease; the leader Lease; and the periodic reconcile, with the leader's duties
//! (S3 resources, departed nodes, the legacy ConfigMap) done only while holding the Lease, so two
//! agents never write the same objects.

use super::Index;
use super::metrics::Metrics;
use crate::kube::crd::ensure_crd;
use crate::kube::lease::{LeaderLease, NodeLiveness, renew_heartbeat};
use crate::kube::reconcile::{LeaderView, reconcile_leader, reconcile_node};
use crate::kube::{Kube, extra_metadata, publish, s3_secret};
use crate::ops::{Context, SaveReport};
use crate::record::SnapshotRecord;
use crate::store::s3::S3Store;
use async_trait::async_trait;
use etcdsnap_api::{SnapshotName, StorageKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How the agent's Kubernetes duties are paced.
#[derive(Debug, Clone)]
pub struct KubeDutySettings {
    /// Time between reconciles (plus up to 5% jitter, like K3s).
    pub reconcile_interval: Duration,
    /// How long a leader that stops renewing keeps the others waiting.
    pub lease_duration: Duration,
    /// Whether this node's local snapshots are managed (false with --no-local).
    pub local_managed: bool,
    /// Where the S3 listing cache lives, for S3 settings from the config Secret.
    pub data_dir: PathBuf,
    /// Whether periodic reconciles run (K3s skips them with --etcd-disable-snapshots).
    pub periodic_reconcile: bool,
}

pub struct KubeIndex {
    kube: Kube,
    base: Context,
    settings: KubeDutySettings,
    metrics: Arc<Metrics>,
    leader: LeaderLease,
    leading: AtomicBool,
    cluster_id: Mutex<Option<String>>,
}

impl KubeIndex {
    pub fn new(kube: Kube, base: Context, settings: KubeDutySettings, metrics: Arc<Metrics>) -> KubeIndex {
        let leader = LeaderLease::new(kube.client.clone(), &kube.settings.node_name, settings.lease_duration);
        let cluster_id = Mutex::new(base.cluster_id.clone());
        KubeIndex { kube, base, settings, metrics, leader, leading: AtomicBool::new(false), cluster_id }
    }

    /// Whether this agent held the leader Lease at its last check.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// How often the Leases are looked at: a third of the lease duration, at most 5 s.
    fn tick(&self) -> Duration {
        (self.settings.lease_duration / 3).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    fn heartbeat_interval(&self) -> Duration {
        (self.kube.settings.orphan_ttl / 4).min(Duration::from_secs(3600))
    }

    /// Heartbeat and leader Lease; returns whether this agent leads now.
    async fn leases(&self) -> bool {
        let s = &self.kube.settings;
        if let Err(e) = renew_heartbeat(&self.kube.client, &s.node_name, s.orphan_ttl, self.heartbeat_interval()).await
        {
            tracing::warn!("heartbeat lease not renewed: {e}");
        }
        let leading = match self.leader.try_acquire().await {
            Ok(l) => l.is_leader(),
            Err(e) => {
                tracing::warn!("leader lease: {e}");
                false
            }
        };
        if self.leading.swap(leading, Ordering::SeqCst) != leading {
            if leading {
                tracing::info!(node = %s.node_name, "took the leader lease: S3 resources, departed nodes and the legacy ConfigMap are this node's duties now");
            } else {
                tracing::info!(node = %s.node_name, "no longer the leader: leader duties stopped");
            }
        }
        leading
    }

    /// One reconcile pass; leader duties only if `leading`.
    async fn reconcile_once(&self, leading: bool) -> Result<(), String> {
        let started = Instant::now();
        let mut ctx = self.base.clone();
        self.prepare_context(&mut ctx).await;
        let (state, warnings, timings) =
            publish::storage_state_timed(&ctx, Default::default(), self.settings.local_managed).await;
        for w in warnings {
            tracing::warn!("{w}");
        }
        for t in timings {
            let h = match t.storage {
                StorageKind::Local => &self.metrics.reconcile_local,
                StorageKind::S3 => &self.metrics.reconcile_s3,
            };
            Metrics::observe(h, t.ok, t.elapsed);
        }
        let result = if leading {
            match NodeLiveness::read(&self.kube.client).await {
                Ok(liveness) => reconcile_leader(&self.kube, &state, &LeaderView { liveness }).await,
                Err(e) => Err(e),
            }
        } else {
            reconcile_node(&self.kube, &state).await
        };
        let ok = matches!(&result, Ok(r) if r.errors.is_empty());
        Metrics::observe(&self.metrics.reconcile, ok, started.elapsed());
        match result {
            Ok(r) => {
                for e in &r.errors {
                    tracing::warn!("reconcile: {e}");
                }
                if r.created + r.updated + r.deleted > 0 {
                    tracing::info!(
                        created = r.created,
                        updated = r.updated,
                        deleted = r.deleted,
                        leader = leading,
                        "ETCDSnapshotFile resources reconciled"
                    );
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The cluster id (read once) and S3 settings from the config Secret (read every time).
    async fn prepare_context(&self, ctx: &mut Context) {
        let mut cached = self.cluster_id.lock().await;
        if cached.is_none() {
            match extra_metadata::cluster_id(&self.kube.client).await {
                Ok(id) => *cached = id,
                Err(e) => tracing::warn!("cluster id: {e}"),
            }
        }
        ctx.cluster_id = cached.clone();
        drop(cached);
        let Some(name) = self.kube.settings.s3_config_secret.clone() else { return };
        if ctx.remote.is_some() {
            return;
        }
        match s3_secret::load(&self.kube.client, &name).await {
            Ok(settings) => match S3Store::from_settings(settings.into_store_settings(), &self.settings.data_dir) {
                Ok(store) => {
                    ctx.remote_spec = Some(store.spec());
                    ctx.remote = Some(store);
                }
                Err(e) => tracing::warn!("S3 unavailable: config secret {name}: {e}"),
            },
            Err(e) => tracing::warn!("S3 unavailable: {e}"),
        }
    }

    async fn publish(&self, records: &[SnapshotRecord]) {
        let published = publish::publish_records(&self.kube, records).await;
        for e in &published.errors {
            tracing::warn!("writing ETCDSnapshotFile resources: {e} (the next reconcile retries)");
        }
    }
}

/// The reconcile interval plus up to 5% (K3s's jitter factor).
fn jittered(interval: Duration) -> Duration {
    interval + super::schedule::jitter(interval / 20)
}

#[async_trait]
impl Index for KubeIndex {
    async fn prepare_run(&self, ctx: &mut Context) {
        self.prepare_context(ctx).await;
        match extra_metadata::read(&self.kube.client, &self.kube.settings.extra_metadata_configmap).await {
            Ok(meta) => ctx.extra_metadata = meta,
            Err(e) => tracing::warn!("extra metadata not read: {e}"),
        }
    }

    async fn saved(&self, report: &SaveReport) {
        self.publish(&report.records).await;
    }

    async fn pruned(&self, deleted: &[(StorageKind, SnapshotName)]) {
        let removed: Vec<(StorageKind, String)> = deleted.iter().map(|(k, n)| (*k, n.to_string())).collect();
        let mut ctx = self.base.clone();
        self.prepare_context(&mut ctx).await;
        if let Err(e) = publish::after_removal(&self.kube, &ctx, &removed, self.settings.local_managed).await {
            tracing::warn!("removing resources of pruned snapshots: {e} (the next reconcile retries)");
        }
    }

    async fn uploaded(&self, records: &[SnapshotRecord]) {
        self.publish(records).await;
    }

    async fn run(&self, stop: CancellationToken) {
        // The CRD first; without it nothing else can be written. Retried until it works.
        while let Err(e) = ensure_crd(&self.kube.client).await {
            tracing::warn!("ETCDSnapshotFile CRD not ready: {e}; retrying");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.tick()) => {}
            }
        }
        let mut next_reconcile = Instant::now();
        loop {
            let leading = self.leases().await;
            if Instant::now() >= next_reconcile {
                match self.reconcile_once(leading).await {
                    Ok(()) if self.settings.periodic_reconcile => {
                        next_reconcile = Instant::now() + jittered(self.settings.reconcile_interval)
                    }
                    Ok(()) => next_reconcile = Instant::now() + Duration::from_secs(86_400 * 365),
                    // Until the first reconcile succeeds, retry quickly (K3s retries every second).
                    Err(e) => {
                        tracing::warn!("reconcile failed: {e}; retrying");
                        next_reconcile = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.tick()) => {}
            }
        }
        if self.leading.load(Ordering::SeqCst) {
            match self.leader.release().await {
                Ok(()) => tracing::info!("leader lease released"),
                Err(e) => tracing::warn!("releasing the leader lease: {e}"),
            }
        }
    }
}
