//! The agent's Kubernetes duties that run on their own clock: the CRD, this node's heartbeat
//! Lease, the leader election (renewed in the background, [`LeaderElector::run`]), the periodic
//! reconcile, and during a leader term the leader's duties (S3 resources, departed nodes, the
//! legacy ConfigMap, which a controller keeps in step with the resources within seconds), each
//! stopped the moment the term ends. Resources of the agent's own saves, prunes and late uploads
//! are written right after them through the session, not here.
//!
//! The agent's other leader-only duties (S3 drills, delta capture and its annotations, S3 delta
//! retention) take the current term and its fenced connection from [`KubeDuties::leader`]. The
//! node's own Lease, which keeps a second agent with this node name out, is claimed through
//! [`KubeDuties::node_claim`] before the agent starts.

use super::metrics::{Cause, Location, Metrics};
use crate::ops::reconcile::{self, PassOutcome};
use crate::session::{Purpose, Session};
use etcdsnap_api::StorageKind;
use etcdsnap_kube::Kube;
use etcdsnap_kube::crd::ensure_crd;
use etcdsnap_kube::instance::{Instance, NodeClaim};
use etcdsnap_kube::leader::{LeaderElector, LeaderTerm, Timing};
use etcdsnap_kube::lease::{heartbeat_interval, renew_heartbeat};
use etcdsnap_kube::legacy::SyncReport;
use etcdsnap_kube::legacy_controller::{self, StorageHints};
use etcdsnap_kube::reconcile::ReconcileError;
use etcdsnap_storage::record::SnapshotRecord;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How the agent's Kubernetes duties are paced.
#[derive(Debug, Clone)]
pub struct KubeDutySettings {
    /// Time between reconciles (plus up to 5% jitter, like K3s).
    pub reconcile_interval: Duration,
    /// How long a leader that stops renewing keeps the others waiting (the election's timing
    /// derives from it).
    pub lease_duration: Duration,
    /// Whether periodic reconciles run (K3s skips them with --etcd-disable-snapshots).
    pub periodic_reconcile: bool,
}

pub struct KubeDuties {
    kube: Kube,
    session: Arc<Session>,
    settings: KubeDutySettings,
    metrics: Arc<Metrics>,
    hints: Arc<StorageHints>,
    /// This process in the Leases: the leader Lease and the node's own.
    instance: Instance,
    /// The current leader term, published by the election task.
    leading: watch::Sender<Option<LeaderTerm>>,
    /// The current term's fenced connection, built once per term and shared by every duty.
    lead: Mutex<Option<LeaderKube>>,
}

/// A leader term and the fenced connection its duties write through ([`Kube::for_term`]): every
/// leader-only request goes through `kube`, which writes nothing once `term` ended.
#[derive(Clone)]
pub struct LeaderKube {
    pub term: LeaderTerm,
    pub kube: Kube,
}

/// The legacy ConfigMap controller during one leader term.
struct LegacyTask {
    term: LeaderTerm,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl KubeDuties {
    pub fn new(kube: Kube, session: Arc<Session>, settings: KubeDutySettings, metrics: Arc<Metrics>) -> KubeDuties {
        let instance = Instance::new(&kube.settings.node_name);
        KubeDuties {
            kube,
            session,
            settings,
            metrics,
            hints: Arc::new(StorageHints::default()),
            instance,
            leading: watch::Sender::new(None),
            lead: Mutex::new(None),
        }
    }

    /// Whether this agent is in a leader term now.
    pub fn is_leading(&self) -> bool {
        self.current_term().is_some()
    }

    /// The election's timing (the node's own Lease follows it too).
    pub fn timing(&self) -> Timing {
        Timing::for_lease(self.settings.lease_duration)
    }

    /// The claim on this node's own Lease, not yet made ([`NodeClaim::acquire`]).
    pub fn node_claim(&self) -> NodeClaim {
        NodeClaim::new(self.kube.client.clone(), &self.instance, self.timing())
    }

    /// The current term with its fenced connection, if this agent leads now. Leader-only work
    /// outside the reconcile (drills of S3 snapshots, delta capture, S3 delta retention) writes
    /// through it and checks its term before each write.
    pub fn leader(&self) -> Option<LeaderKube> {
        let term = self.current_term();
        let mut lead = self.lead.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(term) = term else {
            // The ended term's connections close with its client.
            *lead = None;
            return None;
        };
        if let Some(l) = lead.as_ref().filter(|l| l.term.is(&term)) {
            return Some(l.clone());
        }
        *lead = match self.kube.for_term(&term) {
            Ok(kube) => Some(LeaderKube { term, kube }),
            Err(e) => {
                tracing::warn!("leader duties skipped this term: {e}");
                None
            }
        };
        lead.clone()
    }

    /// The current leader term, if it still lasts.
    fn current_term(&self) -> Option<LeaderTerm> {
        self.leading.borrow().clone().filter(|t| t.check().is_ok())
    }

    /// How often the heartbeat and the reconcile schedule are looked at.
    fn tick(&self) -> Duration {
        (self.settings.lease_duration / 3).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    async fn heartbeat(&self) {
        let s = &self.kube.settings;
        if let Err(e) =
            renew_heartbeat(&self.kube.client, &s.node_name, s.orphan_ttl, heartbeat_interval(s.orphan_ttl)).await
        {
            tracing::warn!("heartbeat lease not renewed: {e}");
        }
    }

    /// One reconcile pass; the leader's duties only during a term.
    async fn reconcile_once(&self, leader: Option<&LeaderKube>) -> Result<(), ReconcileError> {
        let leading = leader.is_some();
        let (kube, term) = match leader {
            Some(l) => (&l.kube, Some(&l.term)),
            None => (&self.kube, None),
        };
        let started = Instant::now();
        let ctx = self.session.context(Purpose::Write).await;
        let result = reconcile::run_pass(kube, &ctx, term, self.session.local_managed()).await;
        let ok = matches!(&result, Ok(r) if r.ok());
        Metrics::observe(&self.metrics.reconcile, ok, started.elapsed());
        match &result {
            Ok(outcome) => self.record(outcome),
            Err(e) => self.metrics.reconcile_failed(Cause(e.cause())),
        }
        let outcome = result?;
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
        let state = &outcome.listing.state;
        let node = &self.kube.settings.node_name;
        for (location, records) in [(Location::Local, &state.local), (Location::S3, &state.s3)] {
            if let Some(at) = records.as_deref().and_then(|r| newest_ready_of(r, node)) {
                self.metrics.seen_success(location, at);
            }
        }
    }

    /// Starts the legacy ConfigMap controller for a term (when the ConfigMap is kept).
    fn start_legacy(&self, leader: &LeaderKube) -> Option<LegacyTask> {
        let term = leader.term.clone();
        if !self.kube.settings.legacy.enabled {
            return None;
        }
        let stop = CancellationToken::new();
        let metrics = self.metrics.clone();
        let limits = self.kube.settings.legacy.clone();
        let on_sync = move |outcome: &Result<SyncReport, ReconcileError>| match outcome {
            Ok(report) => {
                tracing::debug!(?report, "legacy ConfigMap synced");
                metrics.legacy_synced(report, &limits);
            }
            Err(e) => {
                metrics.reconcile_failed(Cause(e.cause()));
                tracing::warn!("legacy ConfigMap: {e}; retrying");
            }
        };
        let task = tokio::spawn(legacy_controller::run(
            leader.kube.clone(),
            self.hints.clone(),
            term.clone(),
            stop.clone(),
            on_sync,
        ));
        Some(LegacyTask { term, stop, task })
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
        let node = self.kube.settings.node_name.clone();
        let timing = self.timing();
        let elector = LeaderElector::new(self.kube.client.clone(), &self.instance.identity(), timing)
            .with_gone_holders(self.instance.gone_holders());
        let election_stop = CancellationToken::new();
        let election = tokio::spawn(elector.run(election_stop.clone(), self.leading.clone()));
        let mut terms = self.leading.subscribe();
        // The first pass waits briefly for the first round, so a node that can lead at once
        // does its leader's duties in that pass already.
        let _ = tokio::time::timeout(timing.retry_period, terms.changed()).await;
        let mut next_reconcile = Instant::now();
        let mut legacy: Option<LegacyTask> = None;
        let mut was_leading = false;
        loop {
            self.heartbeat().await;
            let leader = self.leader();
            let term = leader.as_ref().map(|l| l.term.clone());
            if term.is_some() != was_leading {
                was_leading = term.is_some();
                self.metrics.leader.set(i64::from(was_leading));
                if was_leading {
                    tracing::info!(node = %node, "took the leader lease: S3 resources, departed nodes and the legacy ConfigMap are this node's duties now");
                } else {
                    tracing::info!(node = %node, "no longer the leader: leader duties stopped");
                }
            }
            if legacy.as_ref().is_some_and(|l| term.as_ref().is_none_or(|t| !l.term.is(t))) {
                stop_legacy(legacy.take()).await;
            }
            if legacy.is_none()
                && let Some(l) = &leader
            {
                legacy = self.start_legacy(l);
            }
            if Instant::now() >= next_reconcile {
                match self.reconcile_once(leader.as_ref()).await {
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
                _ = terms.changed() => {}
                _ = tokio::time::sleep(self.tick()) => {}
            }
        }
        stop_legacy(legacy.take()).await;
        self.lead.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.metrics.leader.set(0);
        // Ends the term, then releases the Lease so another node leads at once.
        election_stop.cancel();
        let _ = election.await;
    }
}

async fn stop_legacy(task: Option<LegacyTask>) {
    if let Some(t) = task {
        t.stop.cancel();
        let _ = t.task.await;
    }
}

/// When this node's newest ready snapshot among `records` was taken (Unix seconds).
fn newest_ready_of(records: &[SnapshotRecord], node: &str) -> Option<f64> {
    records
        .iter()
        .filter(|r| r.is_ready() && r.node_name == node)
        .map(|r| r.created_at.as_second() as f64)
        .reduce(f64::max)
}

/// The reconcile interval plus up to 5% (K3s's jitter factor).
fn jittered(interval: Duration) -> Duration {
    interval + super::schedule::jitter(interval / 20)
}
