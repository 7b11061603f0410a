//! The agent's Kubernetes duties that run on their own clock: the CRD, this node's heartbeat
//! Lease, the leader Lease, the periodic reconcile, and while leading the leader's duties (S3
//! resources, departed nodes, the legacy ConfigMap, which a controller keeps in step with the
//! resources within seconds). Resources of the agent's own saves, prunes and late uploads are
//! written right after them through the session, not here.

use super::metrics::{Cause, Metrics};
use crate::ops::reconcile::{self, PassOutcome};
use crate::session::{Purpose, Session};
use etcdsnap_api::StorageKind;
use etcdsnap_kube::Kube;
use etcdsnap_kube::crd::ensure_crd;
use etcdsnap_kube::lease::{LeaderLease, heartbeat_interval, renew_heartbeat};
use etcdsnap_kube::legacy_controller::{self, StorageHints};
use etcdsnap_kube::reconcile::ReconcileError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How the agent's Kubernetes duties are paced.
#[derive(Debug, Clone)]
pub struct KubeDutySettings {
    /// Time between reconciles (plus up to 5% jitter, like K3s).
    pub reconcile_interval: Duration,
    /// How long a leader that stops renewing keeps the others waiting.
    pub lease_duration: Duration,
    /// Whether periodic reconciles run (K3s skips them with --etcd-disable-snapshots).
    pub periodic_reconcile: bool,
}

pub struct KubeDuties {
    kube: Kube,
    session: Arc<Session>,
    settings: KubeDutySettings,
    metrics: Arc<Metrics>,
    leader: LeaderLease,
    leading: AtomicBool,
    hints: Arc<StorageHints>,
}

/// The legacy ConfigMap controller while this agent leads.
struct LegacyTask {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl KubeDuties {
    pub fn new(kube: Kube, session: Arc<Session>, settings: KubeDutySettings, metrics: Arc<Metrics>) -> KubeDuties {
        let leader = LeaderLease::new(kube.client.clone(), &kube.settings.node_name, settings.lease_duration);
        KubeDuties {
            kube,
            session,
            settings,
            metrics,
            leader,
            leading: AtomicBool::new(false),
            hints: Arc::new(StorageHints::default()),
        }
    }

    /// Whether this agent held the leader Lease at its last check.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// How often the Leases are looked at: a third of the lease duration, at most 5 s.
    fn tick(&self) -> Duration {
        (self.settings.lease_duration / 3).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    /// Heartbeat and leader Lease; returns whether this agent leads now.
    async fn leases(&self) -> bool {
        let s = &self.kube.settings;
        if let Err(e) =
            renew_heartbeat(&self.kube.client, &s.node_name, s.orphan_ttl, heartbeat_interval(s.orphan_ttl)).await
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
        let ctx = self.session.context(Purpose::Write).await;
        let result = reconcile::run_pass(&self.kube, &ctx, leading, self.session.local_managed()).await;
        let ok = matches!(&result, Ok(r) if r.ok());
        Metrics::observe(&self.metrics.reconcile, ok, started.elapsed());
        match &result {
            Ok(outcome) => self.record(outcome),
            Err(e) => self.metrics.reconcile_failed(Cause(e.cause())),
        }
        let outcome = result.map_err(|e| e.to_string())?;
        if leading {
            self.hints.set_s3_listed(outcome.listing.state.s3.is_some());
        }
        let r = &outcome.report;
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

    /// Listing times and failure causes of a pass, into the metrics.
    fn record(&self, outcome: &PassOutcome) {
        for t in &outcome.listing.timings {
            let h = match t.storage {
                StorageKind::Local => &self.metrics.reconcile_local,
                StorageKind::S3 => &self.metrics.reconcile_s3,
            };
            Metrics::observe(h, t.ok, t.elapsed);
        }
        for cause in outcome.failure_causes() {
            self.metrics.reconcile_failed(Cause(cause));
        }
    }

    /// Starts the legacy ConfigMap controller (leaders only, when the ConfigMap is kept).
    fn start_legacy(&self) -> Option<LegacyTask> {
        if !self.kube.settings.legacy.enabled {
            return None;
        }
        let stop = CancellationToken::new();
        let metrics = self.metrics.clone();
        let on_sync = move |outcome: &Result<_, ReconcileError>| match outcome {
            Ok(report) => tracing::debug!(?report, "legacy ConfigMap synced"),
            Err(e) => {
                metrics.reconcile_failed(Cause(e.cause()));
                tracing::warn!("legacy ConfigMap: {e}; retrying");
            }
        };
        let task = tokio::spawn(legacy_controller::run(self.kube.clone(), self.hints.clone(), stop.clone(), on_sync));
        Some(LegacyTask { stop, task })
    }

    pub async fn run(&self, stop: CancellationToken) {
        // The CRD first; without it nothing else can be written. Retried until it works.
        while let Err(e) = ensure_crd(&self.kube.client).await {
            tracing::warn!("ETCDSnapshotFile CRD not ready: {e}; retrying");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.tick()) => {}
            }
        }
        let mut next_reconcile = Instant::now();
        let mut legacy: Option<LegacyTask> = None;
        loop {
            let leading = self.leases().await;
            match (leading, legacy.is_some()) {
                (true, false) => legacy = self.start_legacy(),
                (false, true) => stop_legacy(legacy.take()).await,
                _ => {}
            }
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
        stop_legacy(legacy.take()).await;
        if self.leading.load(Ordering::SeqCst) {
            match self.leader.release().await {
                Ok(()) => tracing::info!("leader lease released"),
                Err(e) => tracing::warn!("releasing the leader lease: {e}"),
            }
        }
    }
}

async fn stop_legacy(task: Option<LegacyTask>) {
    if let Some(t) = task {
        t.stop.cancel();
        let _ = t.task.await;
    }
}

/// The reconcile interval plus up to 5% (K3s's jitter factor).
fn jittered(interval: Duration) -> Duration {
    interval + super::schedule::jitter(interval / 20)
}
