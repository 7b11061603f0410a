//! What follows a save, the same for the agent's scheduled saves and `etcdsnap save`: verify
//! the new local copy, write the resources, upload what earlier saves could not, copy to the
//! replicas, apply retention. [`AfterSave`] says which of these steps a caller wants; an
//! [`AfterSaveObserver`] sees each result as it comes (the agent's metrics).

use super::Session;
use crate::ops::{self, Context, PruneOptions, PruneReport, SaveReport, VerifyResult};
use etcdsnap_api::StorageKind;
use etcdsnap_storage::record::SnapshotRecord;
use std::time::{Duration, Instant};

/// The steps after a save, and what differs between callers.
#[derive(Debug, Clone)]
pub struct AfterSave {
    /// Re-read the new local copy and check it (the agent's `--verify-after-save`).
    pub verify: bool,
    /// Upload local snapshots whose upload failed earlier; None: no catch-up.
    pub catch_up: Option<CatchUp>,
    /// Apply retention; None: no prune (`etcdsnap save` never prunes, like K3s).
    pub prune: Option<PruneOptions>,
}

/// Which local snapshots a catch-up uploads (see [`ops::catchup`]).
#[derive(Debug, Clone)]
pub struct CatchUp {
    pub base_name: String,
    /// The newest this many of the base name are to be in S3.
    pub keep: usize,
    /// Only when this save reached S3 (a command: S3 answers again); otherwise after every
    /// save of a node that keeps snapshots both locally and in S3.
    pub only_after_upload: bool,
}

/// What the steps found, for the caller to print or count.
#[derive(Debug, Default)]
pub struct AfterSaveReport {
    /// The check of the new local copy, when one was asked for and made.
    pub verified: Option<VerifyResult>,
    /// The S3 copies the catch-up made.
    pub uploaded: Vec<SnapshotRecord>,
    /// Each replica after its copies (and its retention, when pruning).
    pub replicas: Vec<ops::ReplicaStatus>,
    pub pruned: Option<PruneReport>,
}

/// Sees each step's result as it happens.
pub trait AfterSaveObserver: Sync {
    fn verified(&self, _result: &VerifyResult) {}
    fn pruned(&self, _report: &PruneReport, _took: Duration) {}
    fn replicated(&self, _statuses: &[ops::ReplicaStatus]) {}
}

/// Nothing to observe (a command prints the report instead).
impl AfterSaveObserver for () {}

impl Session {
    /// Verify, publish, catch up, replicate, prune: each step as `steps` asks, in that order. Problems are
    /// logged here and kept in the report; none stops the next step.
    pub async fn after_save(
        &self,
        ctx: &Context,
        saved: &SaveReport,
        steps: &AfterSave,
        observer: &dyn AfterSaveObserver,
    ) -> AfterSaveReport {
        let mut report = AfterSaveReport::default();
        if steps.verify {
            report.verified = verify_local(ctx, saved).await;
            if let Some(result) = &report.verified {
                observer.verified(result);
            }
        }
        self.publish(&saved.records).await;
        if let Some(catch_up) = &steps.catch_up {
            report.uploaded = self.catch_up(ctx, saved, catch_up).await;
        }
        if !ctx.replicas.is_empty() {
            report.replicas = replicate(ctx, steps.prune.as_ref()).await;
            observer.replicated(&report.replicas);
        }
        if let Some(options) = &steps.prune {
            let started = Instant::now();
            let pruned = ops::prune(ctx, options).await;
            observer.pruned(&pruned, started.elapsed());
            for plan in &pruned.plans {
                for name in
                    plan.removed.iter().filter(|n| pruned.deleted.iter().any(|(k, d)| *k == plan.storage && d == *n))
                {
                    tracing::info!(snapshot = %name, store = %plan.store, rule = %plan.rule, "removed by retention");
                }
            }
            for e in &pruned.errors {
                tracing::warn!(error = %e, "retention");
            }
            self.after_removal(ctx, &pruned.deleted).await;
            report.pruned = Some(pruned);
        }
        report
    }

    /// Uploads local snapshots whose earlier upload failed, and writes their resources.
    async fn catch_up(&self, ctx: &Context, saved: &SaveReport, catch_up: &CatchUp) -> Vec<SnapshotRecord> {
        if ctx.remote.is_none() || ctx.local.is_none() {
            return Vec::new();
        }
        if catch_up.only_after_upload && saved.ready_in(StorageKind::S3).is_none() {
            return Vec::new();
        }
        let (uploaded, problems) = ops::catchup::upload_missing(ctx, &catch_up.base_name, catch_up.keep).await;
        for p in problems {
            tracing::warn!("{p}");
        }
        self.publish(&uploaded).await;
        uploaded
    }
}

/// Copies to the replicas, with their retention when this caller prunes; problems are logged.
pub async fn replicate(ctx: &Context, prune: Option<&PruneOptions>) -> Vec<ops::ReplicaStatus> {
    let retention = prune.map(|p| ops::ReplicaRetention {
        base_name: p.base_name.clone(),
        keep: ctx.replica_retention.map(etcdsnap_storage::store::KeepPolicy::last).unwrap_or(p.keep_local),
    });
    let statuses = ops::replicate(ctx, retention.as_ref()).await;
    for status in &statuses {
        for e in &status.errors {
            tracing::warn!("{e}");
        }
        for name in &status.removed {
            tracing::info!(snapshot = %name, replica = %status.url, "removed by replica retention");
        }
    }
    statuses
}

/// Re-reads the new local copy, when the save made one.
async fn verify_local(ctx: &Context, saved: &SaveReport) -> Option<VerifyResult> {
    let (Some(local), Some(record)) = (&ctx.local, saved.ready_in(StorageKind::Local)) else {
        return None;
    };
    let result = ops::verify_record(local, record, &ctx.keys, None).await;
    if !result.ok() {
        tracing::error!(snapshot = %record.name, problems = %result.problems.join("; "), "a snapshot just written does not verify");
    }
    Some(result)
}
