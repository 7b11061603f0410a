//! `etcdsnap agent`: the long-running process beside each etcd member. It takes scheduled
//! snapshots (cron, jittered, never two at once), applies retention, verifies what it wrote,
//! exposes metrics and health, and shuts down without leaving anything half-written.

mod delta_replicas;
pub mod drills;
pub mod health;
pub mod http;
pub mod kube_duties;
pub mod metrics;
pub mod pitr;
mod pitr_upload;
pub mod replica_metrics;
mod resume;
pub mod schedule;

use crate::ops::{self, Context, PruneOptions, PruneReport, SaveError, SaveOptions, SaveReport, VerifyResult};
use crate::session::{AfterSave, AfterSaveObserver, CatchUp, Purpose, Session};
use etcdsnap_api::{Compression, StorageKind};
use etcdsnap_kube::instance::ClaimError;
use etcdsnap_kube::leader::LeaderTerm;
use etcdsnap_storage::Outcome;
use etcdsnap_storage::pitr::retention as pitr_retention;
use etcdsnap_storage::store::{SnapshotStore as _, StoreError};
use health::Health;
use kube_duties::{KubeDuties, LeaderKube};
use metrics::{Location, LocationLabel, Metrics};
use schedule::Schedule;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a running snapshot may take to finish or abort after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// What the agent does and when.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// None: scheduled snapshots are disabled.
    pub schedule: Option<Schedule>,
    pub base_name: String,
    pub compression: Compression,
    /// What to keep per node locally, and in S3 (with S3's own count as `last` when it has one).
    pub retention: etcdsnap_storage::store::KeepPolicy,
    pub metrics_addr: SocketAddr,
    /// Re-read each new local snapshot and check it (sets the "last verified" gauge).
    pub verify_after_save: bool,
    /// Upper bound of the random delay before each scheduled run.
    pub jitter: Duration,
    /// How often copies a replica missed (it was down, its credentials failed) are tried again
    /// between scheduled saves (5 minutes unless a test asks otherwise).
    pub replica_retry: Duration,
    /// Scheduled restore drills; None when disabled.
    pub drills: Option<drills::DrillSettings>,
    /// Point-in-time capture (`--deltas`); None when disabled.
    pub deltas: Option<crate::pitr::capture::CaptureSettings>,
}

/// The running agent's shared state.
pub struct Agent {
    session: Arc<Session>,
    settings: AgentSettings,
    metrics: Arc<Metrics>,
    duties: Option<Arc<KubeDuties>>,
    running: AtomicBool,
}

/// Why the agent could not start, or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Start(String),
    /// Another agent runs with this node name.
    #[error(transparent)]
    NodeTaken(Box<ClaimError>),
}

impl From<ClaimError> for AgentError {
    fn from(e: ClaimError) -> AgentError {
        AgentError::NodeTaken(Box::new(e))
    }
}

/// Whether this agent does the leader-only duties now, and under which term.
#[derive(Clone)]
pub enum Lead {
    /// Without Kubernetes there is no election: each agent does them on its own.
    Alone,
    /// During a leader term, through its fenced connection.
    Term(LeaderKube),
}

impl Lead {
    pub fn term(&self) -> Option<&LeaderTerm> {
        match self {
            Lead::Alone => None,
            Lead::Term(l) => Some(&l.term),
        }
    }

    /// Ok while the leader-only duties are still this agent's (always, alone).
    pub fn check(&self) -> Result<(), etcdsnap_kube::leader::LeadershipLost> {
        self.term().map_or(Ok(()), LeaderTerm::check)
    }

    /// Runs `work`, a leader-only request outside the fenced connection (an S3 delete), only
    /// while the duties are this agent's, cut off if the term ends first ([`LeaderTerm::during`]).
    pub async fn during<F: Future>(&self, work: F) -> Result<F::Output, etcdsnap_kube::leader::LeadershipLost> {
        match self.term() {
            Some(term) => term.during(work).await,
            None => Ok(work.await),
        }
    }
}

impl Agent {
    pub fn new(
        session: Arc<Session>,
        settings: AgentSettings,
        metrics: Arc<Metrics>,
        duties: Option<Arc<KubeDuties>>,
    ) -> Arc<Agent> {
        Arc::new(Agent { session, settings, metrics, duties, running: AtomicBool::new(false) })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The leader-only duties' term now: None while another agent leads.
    pub fn lead(&self) -> Option<Lead> {
        match &self.duties {
            None => Some(Lead::Alone),
            Some(duties) => duties.leader().map(Lead::Term),
        }
    }

    /// Runs until `stop` is cancelled (SIGTERM/SIGINT in the binary), then lets a running
    /// snapshot finish or abort cleanly and returns. With Kubernetes, it first claims its node's
    /// Lease: it refuses to start while another agent with this node name runs, and stops (with
    /// [`AgentError::NodeTaken`]) if one takes the node over while this one was stopped.
    pub async fn run(self: Arc<Self>, stop: CancellationToken, health: Arc<Health>) -> Result<(), AgentError> {
        let stop = stop.child_token();
        let listener = http::bind(self.settings.metrics_addr).await.map_err(AgentError::Start)?;
        let claim = match &self.duties {
            Some(duties) => Some(self.claim_node(duties).await?),
            None => None,
        };
        tracing::info!(
            metrics = %self.settings.metrics_addr,
            schedule = self.settings.schedule.as_ref().map(Schedule::expression).unwrap_or("disabled"),
            node = %self.session.node_name(),
            "etcdsnap agent started"
        );
        self.metrics.set_info(self.session.node_name());
        if let Some(period) = self.settings.schedule.as_ref().and_then(Schedule::interval) {
            self.metrics.schedule_interval.set(period.as_secs_f64());
        }
        let server = tokio::spawn(http::serve(listener, self.metrics.clone(), health, stop.clone()));
        // The node's Lease is released last, once nothing of this agent runs any more.
        let claim_stop = CancellationToken::new();
        let mut claim = claim.map(|claim| tokio::spawn(claim.keep(claim_stop.clone())));
        let duties = self.duties.clone().map(|duties| {
            let stop = stop.clone();
            tokio::spawn(async move { duties.run(stop).await })
        });
        let scheduler = self.settings.schedule.clone().map(|schedule| {
            let agent = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move { agent.schedule_loop(schedule, stop).await })
        });
        let drilling = self.settings.drills.clone().map(|settings| {
            let (session, metrics, duties) = (self.session.clone(), self.metrics.clone(), self.duties.clone());
            // S3 snapshots are the leader's to drill: never without Kubernetes' election.
            let leader = move || duties.as_ref().and_then(|d| d.leader());
            tokio::spawn(drills::drill_loop(session, settings, metrics, leader, stop.clone()))
        });
        let capturing = self.settings.deltas.clone().map(|settings| {
            let uploads = tokio::spawn(pitr_upload::upload_loop(self.clone(), settings.flush_interval, stop.clone()));
            (tokio::spawn(pitr::capture_loop(self.clone(), settings, stop.clone())), uploads)
        });
        let replicating = (!self.session.config().replicas.is_empty()).then(|| {
            let agent = self.clone();
            tokio::spawn(agent.replica_loop(stop.clone()))
        });
        let mut taken = None;
        if let Some(keeping) = claim.as_mut() {
            tokio::select! {
                _ = stop.cancelled() => {}
                kept = keeping => {
                    claim = None;
                    match kept {
                        Ok(Err(e)) => taken = Some(e),
                        Ok(Ok(())) => {}
                        Err(e) => tracing::error!("the node lease's task failed: {e}"),
                    }
                }
            }
        }
        match &taken {
            Some(e) => {
                tracing::error!("{e}");
                stop.cancel();
            }
            None => stop.cancelled().await,
        }
        tracing::info!("shutting down");
        if let Some((capture, uploads)) = capturing {
            let _ = capture.await;
            let _ = uploads.await;
        }
        if let Some(d) = drilling {
            let _ = d.await;
        }
        if let Some(r) = replicating {
            let _ = r.await;
        }
        if let Some(s) = scheduler
            && tokio::time::timeout(SHUTDOWN_GRACE, s).await.is_err()
        {
            tracing::warn!("a snapshot did not finish within the shutdown grace period");
        }
        if let Some(d) = duties {
            let _ = tokio::time::timeout(Duration::from_secs(10), d).await;
        }
        let _ = server.await;
        claim_stop.cancel();
        if let Some(keeping) = claim {
            let _ = keeping.await;
        }
        tracing::info!("etcdsnap agent stopped");
        taken.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Takes this node's own Lease before anything else runs. Another agent holding and renewing
    /// it refuses the start; an API server that cannot be reached only delays the check, which
    /// the claim's renewals then make (saving must not wait for Kubernetes).
    async fn claim_node(&self, duties: &KubeDuties) -> Result<etcdsnap_kube::instance::NodeClaim, AgentError> {
        let mut claim = duties.node_claim();
        match claim.acquire().await {
            Ok(()) => {}
            Err(e @ (ClaimError::Taken { .. } | ClaimError::Lost { .. })) => return Err(e.into()),
            Err(e) => tracing::warn!("{e}; checked again with every renewal"),
        }
        Ok(claim)
    }

    /// Between saves, every [`AgentSettings::replica_retry`]: copies to each replica what it is missing (what
    /// an outage held back), nothing removed; the gauges say how far behind each still is.
    async fn replica_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.replica_retry) => {}
            }
            let ctx = self.session.context(Purpose::Write).await;
            let statuses = crate::session::replicate(&ctx, None).await;
            self.metrics.replicas.observe(&statuses);
        }
    }

    /// Waits for each scheduled time and starts a run, unless the previous one is still going
    /// (then the run is skipped and counted, like K3s's SkipIfStillRunning).
    async fn schedule_loop(self: Arc<Self>, schedule: Schedule, stop: CancellationToken) {
        let mut current: Option<JoinHandle<()>> = None;
        loop {
            let Some((at, wait)) = schedule.next() else {
                tracing::error!(schedule = schedule.expression(), "the schedule has no next time");
                break;
            };
            tracing::info!(
                at = %at.timestamp(),
                "next scheduled snapshot in {}",
                crate::units::human_age(i64::try_from(wait.as_secs()).unwrap_or(i64::MAX))
            );
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            if self.running.swap(true, Ordering::SeqCst) {
                self.metrics.skipped.inc();
                tracing::warn!("scheduled snapshot skipped: the previous run is still going");
                continue;
            }
            let agent = self.clone();
            let stop = stop.clone();
            current = Some(tokio::spawn(async move {
                agent.scheduled_run(stop).await;
                agent.running.store(false, Ordering::SeqCst);
            }));
        }
        // Shutdown: the run sees the cancellation and aborts cleanly; wait for it.
        if let Some(run) = current {
            let _ = run.await;
        }
    }

    /// One scheduled run: jitter, save, verify, prune, record.
    pub async fn scheduled_run(&self, stop: CancellationToken) {
        let delay = schedule::jitter(self.settings.jitter);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        self.save(stop).await;
    }

    /// A snapshot outside the schedule (a new delta chain needs one), never beside a running
    /// one: while a scheduled run is going, this waits for it instead. True when a snapshot was
    /// taken everywhere (by this call or the run it waited for).
    pub async fn snapshot_now(&self, stop: CancellationToken) -> bool {
        while self.running.swap(true, Ordering::SeqCst) {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let ok = self.save(stop).await;
        self.running.store(false, Ordering::SeqCst);
        ok
    }

    /// Save, verify, prune, record; true when the snapshot is ready everywhere.
    async fn save(&self, stop: CancellationToken) -> bool {
        let options = SaveOptions {
            base_name: self.settings.base_name.clone(),
            compression: self.settings.compression,
            cancel: stop.clone(),
        };
        let started = Instant::now();
        let ctx = self.session.context(Purpose::Save).await;
        match ops::save(&ctx, &options, None).await {
            Ok(report) => {
                self.after_save(&ctx, &report).await;
                report.all_ready()
            }
            Err(SaveError::Store(StoreError::Locked(dir))) => {
                self.metrics.skipped.inc();
                tracing::warn!(dir = %dir.display(), "scheduled snapshot skipped: another save is running in this directory");
                false
            }
            Err(SaveError::Cancelled) => {
                tracing::info!("scheduled snapshot cancelled by shutdown; nothing was published");
                false
            }
            Err(e) => {
                Metrics::observe(&self.metrics.save, false, started.elapsed());
                self.metrics.saved(false);
                tracing::error!(error = %e, "scheduled snapshot failed");
                false
            }
        }
    }

    /// The agent's own record of a save (metrics, log), then what follows every save
    /// ([`Session::after_save`]), then delta retention.
    async fn after_save(&self, ctx: &Context, report: &SaveReport) {
        self.record_save(report);
        let s3_retention = self.settings.retention.with_last(ctx.s3_retention);
        let steps = AfterSave {
            verify: self.settings.verify_after_save,
            catch_up: Some(CatchUp {
                base_name: self.settings.base_name.clone(),
                keep: s3_retention.catch_up_count(),
                only_after_upload: false,
            }),
            prune: Some(PruneOptions {
                base_name: self.settings.base_name.clone(),
                keep_local: self.settings.retention,
                keep_remote: s3_retention,
                dry_run: false,
            }),
        };
        self.session.after_save(ctx, report, &steps, self.metrics.as_ref()).await;
        if self.settings.deltas.is_some() {
            self.prune_segments(ctx).await;
        }
    }

    /// A save's durations, sizes and outcome into the metrics and the log.
    fn record_save(&self, report: &SaveReport) {
        let ok = report.all_ready();
        Metrics::observe(&self.metrics.save, ok, report.duration);
        self.metrics.saved(ok);
        let now = etcdsnap_storage::clock::now().as_second() as f64;
        for record in &report.records {
            let location = match record.storage {
                StorageKind::Local => Location::Local,
                StorageKind::S3 => Location::S3,
            };
            let elapsed =
                report.finished.iter().find(|(k, _)| *k == record.storage).map(|(_, d)| *d).unwrap_or(report.duration);
            let histogram = if location == Location::Local { &self.metrics.save_local } else { &self.metrics.save_s3 };
            Metrics::observe(histogram, record.is_ready(), elapsed);
            let label = LocationLabel { location };
            match &record.outcome {
                Outcome::Ready => {
                    self.metrics.last_success.get_or_create(&label).set(now);
                    self.metrics.size.get_or_create(&label).set(record.size as i64);
                }
                Outcome::Failed { message } => {
                    tracing::error!(snapshot = %record.name, storage = ?record.storage, error = %message, "snapshot failed")
                }
            }
        }
        let locations: Vec<&str> =
            report.records.iter().filter(|r| r.is_ready()).map(|r| r.location.as_str()).collect();
        let size = report.records.iter().find(|r| r.is_ready()).map(|r| r.size).unwrap_or(0);
        tracing::info!(
            snapshot = %report.name,
            size,
            duration_ms = report.duration.as_millis() as u64,
            locations = %locations.join(" "),
            ok,
            "snapshot taken"
        );
    }

    /// Delta retention, after snapshot retention: locally, and (the leader's duty: segments are
    /// the cluster's) in S3 against S3's snapshots, each delete made only while the term lasts.
    async fn prune_segments(&self, ctx: &Context) {
        if let Some(local) = &ctx.local {
            match local.list().await {
                Ok(listing) => pitr_retention::prune_local(local, &listing.records),
                Err(e) => {
                    tracing::warn!(error = %e, "delta retention skipped: the snapshot directory cannot be listed")
                }
            }
        }
        if let Some(remote) = &ctx.remote
            && let Some(s3) = remote.as_s3()
            && let Some(lead) = self.lead()
        {
            match remote.list().await {
                Ok(listing) => pitr::prune_s3_segments(s3, &listing.records, &lead).await,
                Err(e) => tracing::warn!(error = %e, "S3 delta retention skipped: the folder cannot be listed"),
            }
        }
    }
}

/// The steps after a save, into the metrics.
impl AfterSaveObserver for Metrics {
    fn verified(&self, result: &VerifyResult) {
        if result.ok() {
            self.last_verified.set(etcdsnap_storage::clock::now().as_second() as f64);
        }
    }

    fn pruned(&self, report: &PruneReport, took: Duration) {
        Metrics::observe(&self.prune, report.errors.is_empty(), took);
    }

    fn replicated(&self, statuses: &[ops::ReplicaStatus]) {
        self.replicas.observe(statuses);
    }
}
