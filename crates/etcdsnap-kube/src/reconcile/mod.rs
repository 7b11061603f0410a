//! Reconcile: storage is the truth, resources follow it. One pass lists the resources, plans
//! with what the stores hold, then creates what is missing, fixes what differs and deletes what
//! no longer exists; the leader's pass then syncs the legacy ConfigMap and releases K3s's
//! finalizers.
//!
//! The planner ([`plan()`], in `plan.rs`) is a pure function, unit-tested rule by rule; this
//! file is the pass: it gathers the planner's input ([`reconcile_node`], [`reconcile_leader`]),
//! carries the plan out ([`execute`]) and reports typed errors. A pass that finds nothing to
//! change makes no write.

mod migrate;
mod plan;

use crate::leader::{LeaderTerm, LeadershipLost};
use crate::lease::NodeLiveness;
use crate::resources::{self, Written, is_terminating};
use crate::{ApiError, Kube, legacy};
use etcdsnap_api::consts::S3_STORAGE_NODE;
use etcdsnap_api::{ETCDSnapshotFile, ETCDSnapshotS3, StorageKind};
use etcdsnap_storage::SnapshotRecord;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};

pub use migrate::relabel;
pub use plan::{FAILED_TTL, NEW_S3_GRACE, Plan, PlanInput, Scope, plan, same_location};

/// Writes in flight at once during a reconcile.
const WRITE_CONCURRENCY: usize = 16;

/// Why (part of) a reconcile pass failed. A pass goes on after a failed write: the next pass
/// retries it.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The resources, the legacy ConfigMap or the heartbeats could not be read: nothing was
    /// planned.
    #[error("{0}")]
    Read(ApiError),
    /// A resource could not be created, updated or deleted.
    #[error("{0}")]
    Write(ApiError),
    /// The legacy ConfigMap could not be written.
    #[error(transparent)]
    Legacy(#[from] legacy::LegacyError),
    /// K3s's finalizer could not be removed from a resource being deleted.
    #[error("removing K3s's finalizer: {0}")]
    Finalizer(ApiError),
    /// K3s's reconciled-at annotations could not be written on this node's Node.
    #[error("{0}")]
    NodeAnnotation(ApiError),
    /// The leader's term ended during the pass: its remaining writes were not made.
    #[error(transparent)]
    NotLeader(#[from] LeadershipLost),
}

impl From<resources::WriteError> for ReconcileError {
    fn from(e: resources::WriteError) -> ReconcileError {
        match e {
            resources::WriteError::Api(e) => ReconcileError::Write(e),
            resources::WriteError::NotLeader(lost) => ReconcileError::NotLeader(lost),
        }
    }
}

impl ReconcileError {
    /// A short, stable name of the cause, for metric labels.
    pub fn cause(&self) -> &'static str {
        match self {
            ReconcileError::Read(_) => "api_read",
            ReconcileError::Write(_) => "api_write",
            ReconcileError::Legacy(legacy::LegacyError::NotLeader(_)) => "leadership_lost",
            ReconcileError::Legacy(_) => "legacy_configmap",
            ReconcileError::Finalizer(_) => "finalizer",
            ReconcileError::NodeAnnotation(_) => "node_annotation",
            ReconcileError::NotLeader(_) => "leadership_lost",
        }
    }
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct Applied {
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Objects as written (created and updated), to derive the legacy ConfigMap without a re-list.
    pub written: Vec<ETCDSnapshotFile>,
    pub errors: Vec<ReconcileError>,
}

/// Carries a plan out, [`WRITE_CONCURRENCY`] requests at a time. Errors are collected per object;
/// the rest of the plan still runs (the next pass retries what failed). A leader's pass checks
/// its term right before every request: once the term ends, nothing more is written.
pub async fn execute(kube: &Kube, plan: Plan, leader: Option<&LeaderTerm>) -> Applied {
    let node = kube.settings.node_name.as_str();
    let client = &kube.client;
    let mut applied = Applied::default();
    let fence = |term: Option<&LeaderTerm>| term.map_or(Ok(()), LeaderTerm::check).map_err(ReconcileError::from);

    // Creates and updates in one stream: each is written as planned, and one that lost a race
    // with another writer (409) is re-read and written again by `upsert`.
    let planned = plan.create.into_iter().map(|cr| (Written::Created, cr));
    let planned = planned.chain(plan.update.into_iter().map(|cr| (Written::Updated, cr)));
    let results: Vec<Result<(Written, ETCDSnapshotFile), ReconcileError>> =
        futures::stream::iter(planned.map(|(intent, cr)| async move {
            fence(leader)?;
            let first = if intent == Written::Created {
                resources::create(client, &cr, node).await
            } else {
                resources::replace(client, &cr).await
            };
            match first {
                Ok(written) => Ok((intent, written)),
                Err(e) if e.is_conflict() => {
                    resources::upsert(client, &cr, node, leader).await.map(|w| (w, cr)).map_err(ReconcileError::from)
                }
                Err(e) => Err(ReconcileError::Write(e)),
            }
        }))
        .buffer_unordered(WRITE_CONCURRENCY)
        .collect()
        .await;
    for result in results {
        match result {
            Ok((Written::Created, cr)) => {
                applied.created += 1;
                applied.written.push(cr);
            }
            Ok((Written::Updated, cr)) => {
                applied.updated += 1;
                applied.written.push(cr);
            }
            Ok((Written::Unchanged, _)) => {}
            Err(e) => applied.push_error(e),
        }
    }

    // By value: borrowed items would make this future not provably Send for the agent's tasks.
    let deletes: Vec<Result<bool, ReconcileError>> =
        futures::stream::iter(plan.delete.into_iter().map(|cr| async move {
            fence(leader)?;
            resources::delete(client, &cr, node, leader.is_some()).await.map_err(ReconcileError::Write)
        }))
        .buffer_unordered(WRITE_CONCURRENCY)
        .collect()
        .await;
    for result in deletes {
        match result {
            Ok(true) => applied.deleted += 1,
            Ok(false) => {}
            Err(e) => applied.push_error(e),
        }
    }
    applied
}

impl Applied {
    /// Records an error; a lost term is recorded once, not once per write it stopped.
    fn push_error(&mut self, e: ReconcileError) {
        let repeated_loss = matches!(e, ReconcileError::NotLeader(_))
            && self.errors.iter().any(|seen| matches!(seen, ReconcileError::NotLeader(_)));
        if !repeated_loss {
            self.errors.push(e);
        }
    }
}

/// What storage holds, as listed for this pass. None means "not listed" (not configured, or the
/// listing failed): the resources of that storage are then left exactly as they are.
#[derive(Debug, Default, Clone)]
pub struct StorageState {
    /// This node's local snapshots.
    pub local: Option<Vec<SnapshotRecord>>,
    /// The S3 snapshots.
    pub s3: Option<Vec<SnapshotRecord>>,
    /// Where they were listed (never credentials); S3 resources of other locations stay as
    /// they are.
    pub s3_location: Option<ETCDSnapshotS3>,
    /// Keys of snapshots an operation just deleted on purpose.
    pub deleted: BTreeSet<String>,
}

/// The leader's extra knowledge for a pass, and its term, checked before each of its writes.
#[derive(Debug, Clone)]
pub struct LeaderView {
    /// Liveness of nodes from their heartbeat Leases.
    pub liveness: NodeLiveness,
    pub term: LeaderTerm,
}

/// The result of one reconcile pass.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    pub listed: usize,
    /// etcdsnap's resources moved from the other program's names to this one's.
    pub migrated: usize,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    pub unchanged: usize,
    pub kept: usize,
    pub orphaned_nodes: Vec<String>,
    pub legacy: Option<legacy::SyncReport>,
    pub errors: Vec<ReconcileError>,
}

/// This node's duties only: its local resources (and S3 resources of snapshots it just deleted).
pub async fn reconcile_node(kube: &Kube, state: &StorageState) -> Result<ReconcileReport, ReconcileError> {
    reconcile(kube, state, None).await
}

/// This node's duties plus the leader's: S3 resources, departed nodes, the legacy ConfigMap,
/// each write made only while `view.term` lasts.
pub async fn reconcile_leader(
    kube: &Kube,
    state: &StorageState,
    view: &LeaderView,
) -> Result<ReconcileReport, ReconcileError> {
    reconcile(kube, state, Some(view)).await
}

async fn reconcile(
    kube: &Kube,
    state: &StorageState,
    leader: Option<&LeaderView>,
) -> Result<ReconcileReport, ReconcileError> {
    let node = kube.settings.node_name.clone();
    let program = kube.settings.program;
    let label = program.label_storage_node();
    let legacy_map = legacy::read(&kube.client, program).await.map_err(ReconcileError::Read)?;
    let legacy_metadata = legacy_map.as_ref().map(legacy::metadata_by_key).unwrap_or_default();

    // The leader looks at every resource (S3, departed nodes, the ConfigMap); a node only at its
    // own, plus S3's when it just deleted S3 snapshots on purpose.
    let s3_deleted = state.deleted.iter().any(|k| k.starts_with(StorageKind::S3.prefix()));
    let selector = match (leader.is_some(), s3_deleted) {
        (true, _) => None,
        (false, true) => Some(format!("{label} in ({node},{S3_STORAGE_NODE})")),
        (false, false) => Some(format!("{label}={node}")),
    };
    let mut existing = resources::list(&kube.client, selector.as_deref()).await.map_err(ReconcileError::Read)?;
    let (migrated, migration_errors) = match leader {
        Some(view) => migrate::run(kube, &mut existing, &view.term).await,
        None => (0, Vec::new()),
    };

    let mut scopes = Vec::new();
    if let Some(local) = &state.local {
        scopes.push(Scope {
            label: node.clone(),
            desired: local,
            keep_recent_failures: true,
            keep_new: false,
            location: None,
        });
    }
    let mut orphaned = Vec::new();
    if let Some(view) = leader {
        if let (Some(s3), Some(location)) = (&state.s3, &state.s3_location) {
            scopes.push(Scope {
                label: S3_STORAGE_NODE.into(),
                desired: s3,
                keep_recent_failures: true,
                keep_new: true,
                location: Some(location),
            });
        }
        orphaned = view.liveness.orphaned_labels(&existing, program, &node, kube.settings.orphan_ttl);
        for label in &orphaned {
            scopes.push(Scope {
                label: label.clone(),
                desired: &[],
                keep_recent_failures: false,
                keep_new: false,
                location: None,
            });
        }
    }
    let input = PlanInput {
        program,
        scopes,
        existing: &existing,
        deleted: &state.deleted,
        node_name: &node,
        s3_location: state.s3_location.as_ref(),
        legacy_metadata: &legacy_metadata,
        now: etcdsnap_storage::clock::now(),
    };
    let plan = plan(&input);
    let mut report = ReconcileReport {
        listed: existing.len(),
        migrated,
        unchanged: plan.unchanged,
        kept: plan.kept,
        orphaned_nodes: orphaned,
        ..Default::default()
    };
    let deleted_names: BTreeSet<String> = plan.delete.iter().filter_map(|c| c.metadata.name.clone()).collect();
    let applied = execute(kube, plan, leader.map(|v| &v.term)).await;
    report.created = applied.created;
    report.updated = applied.updated;
    report.deleted = applied.deleted;
    report.errors = migration_errors;
    report.errors.extend(applied.errors);

    if let Some(view) = leader {
        let after = state_after(existing, &deleted_names, applied.written);
        if kube.settings.legacy.enabled {
            let synced = legacy::SyncScope {
                live_nodes: view.liveness.live_nodes(kube.settings.orphan_ttl),
                s3_listed: state.s3.is_some(),
                deleted: state.deleted.clone(),
            };
            match legacy::sync(kube, &after, legacy_map, &synced, &view.term).await {
                Ok(r) => report.legacy = Some(r),
                Err(e) => report.errors.push(e.into()),
            }
        }
        for cr in after.iter().filter(|c| is_terminating(c) && resources::has_k3s_finalizer(c)) {
            if let Err(lost) = view.term.check() {
                report.errors.push(lost.into());
                break;
            }
            match resources::remove_k3s_finalizer(&kube.client, cr).await {
                Ok(()) => {
                    crate::events::emit(&kube.client, cr, crate::events::SnapshotEvent::Deleted, &node).await;
                }
                Err(e) => report.errors.push(ReconcileError::Finalizer(e)),
            }
        }
    }
    if kube.settings.annotate_node && report.errors.is_empty() && state.local.is_some() {
        let s3 = leader.is_some() && state.s3.is_some();
        if let Err(e) = crate::node_annotations::mark_reconciled(kube, s3, etcdsnap_storage::clock::now()).await {
            report.errors.push(ReconcileError::NodeAnnotation(e));
        }
    }
    Ok(report)
}

/// The resources as they are after a pass, from the listing and what the pass wrote.
fn state_after(
    existing: Vec<ETCDSnapshotFile>,
    deleted: &BTreeSet<String>,
    written: Vec<ETCDSnapshotFile>,
) -> Vec<ETCDSnapshotFile> {
    let mut by_name: BTreeMap<String, ETCDSnapshotFile> = existing
        .into_iter()
        .filter_map(|c| c.metadata.name.clone().map(|n| (n, c)))
        .filter(|(n, _)| !deleted.contains(n))
        .collect();
    for cr in written {
        if let Some(n) = cr.metadata.name.clone() {
            by_name.insert(n, cr);
        }
    }
    by_name.into_values().collect()
}
