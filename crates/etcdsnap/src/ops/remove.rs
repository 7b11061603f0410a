//! Removing snapshots: `delete` by name from every store, and `prune`, which applies retention.
//! Both hold the removal lock, so nothing is removed under a `verify` that reads the snapshots,
//! and the process's removal guard, so no reconcile pass of the agent lists half a removal.

use super::Context;
use etcdsnap_api::{SnapshotName, StorageKind};
use etcdsnap_storage::store::{KeepPolicy, RetentionPolicy, StoreError, decide, in_scope};
use std::collections::BTreeMap;

/// What happened to one name in one store.
#[derive(Debug)]
pub enum DeleteResult {
    Deleted,
    NotFound,
    Failed(StoreError),
}

/// One name in one store.
#[derive(Debug)]
pub struct Deletion {
    pub name: SnapshotName,
    pub storage: StorageKind,
    /// The store as the operator knows it.
    pub store: String,
    pub result: DeleteResult,
}

/// Deletes `names` from every store; one [`Deletion`] per name and store. An error means the
/// removal lock could not be taken (a verify is reading): nothing was removed.
pub async fn delete(ctx: &Context, names: &[SnapshotName]) -> Result<Vec<Deletion>, StoreError> {
    let _in_process = ctx.removals.write().await;
    let _removing = ctx.lock_for_removal()?;
    let mut results = Vec::new();
    for name in names {
        for store in ctx.stores() {
            let result = match store.delete(name).await {
                Ok(true) => DeleteResult::Deleted,
                Ok(false) => DeleteResult::NotFound,
                Err(e) => DeleteResult::Failed(e),
            };
            results.push(Deletion { name: name.clone(), storage: store.kind(), store: store.describe(), result });
        }
    }
    Ok(results)
}

/// The snapshots a delete removed, for the resources to follow.
pub fn deleted(results: &[Deletion]) -> Vec<(StorageKind, SnapshotName)> {
    results.iter().filter(|d| matches!(d.result, DeleteResult::Deleted)).map(|d| (d.storage, d.name.clone())).collect()
}

/// Retention per store.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub base_name: String,
    /// What to keep per node in the local directory.
    pub keep_local: KeepPolicy,
    /// What to keep of this node's snapshots of this cluster in S3.
    pub keep_remote: KeepPolicy,
    /// Plan only: say what each store's rule keeps and removes, remove nothing.
    pub dry_run: bool,
}

/// Why a prune left something in place.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The removal lock could not be taken (a verify is reading): nothing was removed.
    #[error(transparent)]
    Lock(StoreError),
    #[error(
        "{store}: S3 retention skipped: the cluster id is unknown (no Kubernetes access and no --cluster-id), so other clusters' snapshots cannot be told apart"
    )]
    UnknownCluster { store: String },
    #[error("{store}: {source}")]
    List {
        store: String,
        #[source]
        source: StoreError,
    },
    #[error("{store}: deleting {name}: {source}")]
    Delete {
        store: String,
        name: SnapshotName,
        #[source]
        source: StoreError,
    },
}

/// What one store's retention rule keeps and removes.
#[derive(Debug, Clone)]
pub struct PrunePlan {
    pub storage: StorageKind,
    /// The store as the operator knows it.
    pub store: String,
    /// The rule in words ([`RetentionPolicy::describe`]).
    pub rule: String,
    /// The snapshots the rule counts and keeps, oldest first.
    pub kept: Vec<SnapshotName>,
    /// Why each kept snapshot stays: the rules that keep it (`last snapshot, daily snapshot`).
    pub reasons: BTreeMap<SnapshotName, String>,
    /// The snapshots the rule removes, oldest first.
    pub removed: Vec<SnapshotName>,
}

/// A snapshot retention would remove that S3 Object Lock keeps: not a failure, it is removed
/// by a prune after its date.
#[derive(Debug, Clone)]
pub struct LockedSnapshot {
    pub storage: StorageKind,
    /// The store as the operator knows it.
    pub store: String,
    pub name: SnapshotName,
    /// None: the bucket refused the deletion without saying until when.
    pub until: Option<jiff::Timestamp>,
}

impl std::fmt::Display for LockedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.until {
            Some(t) => write!(
                f,
                "{}: {} is locked until {}; kept, to be removed after that",
                self.store,
                self.name,
                t.strftime("%Y-%m-%dT%H:%M:%SZ")
            ),
            None => write!(
                f,
                "{}: {} is locked (the bucket did not say until when); kept, to be removed once it is not",
                self.store, self.name
            ),
        }
    }
}

/// What a prune planned, removed (and failed to remove) per store.
#[derive(Debug, Default)]
pub struct PruneReport {
    pub plans: Vec<PrunePlan>,
    pub deleted: Vec<(StorageKind, SnapshotName)>,
    /// Snapshots the rule removes that Object Lock keeps for now (not errors).
    pub locked: Vec<LockedSnapshot>,
    pub errors: Vec<PruneError>,
}

/// Applies retention: locally to every node group found in the directory (it is this node's);
/// in S3 only to this node's snapshots of this cluster. With `dry_run`, only plans.
pub async fn prune(ctx: &Context, opts: &PruneOptions) -> PruneReport {
    let mut report = PruneReport::default();
    let _in_process = ctx.removals.write().await;
    let _removing = match opts.dry_run {
        true => None,
        false => match ctx.lock_for_removal() {
            Ok(lock) => lock,
            Err(e) => {
                report.errors.push(PruneError::Lock(e));
                return report;
            }
        },
    };
    for store in ctx.stores() {
        let policy = match store.kind() {
            StorageKind::Local => {
                RetentionPolicy { base: opts.base_name.clone(), keep: opts.keep_local, node: None, cluster_id: None }
            }
            StorageKind::S3 => {
                let Some(cluster) = ctx.cluster_id.clone() else {
                    report.errors.push(PruneError::UnknownCluster { store: store.describe() });
                    continue;
                };
                RetentionPolicy {
                    base: opts.base_name.clone(),
                    keep: opts.keep_remote,
                    node: Some(ctx.node_name.clone()),
                    cluster_id: Some(cluster),
                }
            }
        };
        let listing = match store.list().await {
            Ok(l) => l,
            Err(source) => {
                report.errors.push(PruneError::List { store: store.describe(), source });
                continue;
            }
        };
        let (kept, reasons, removed) = plan_store(&listing.records, &policy);
        report.plans.push(PrunePlan {
            storage: store.kind(),
            store: store.describe(),
            rule: policy.describe(),
            kept,
            reasons,
            removed: removed.clone(),
        });
        if opts.dry_run {
            continue;
        }
        for name in removed {
            match store.delete(&name).await {
                Ok(_) => report.deleted.push((store.kind(), name)),
                Err(StoreError::ObjectLocked { until, .. }) => {
                    let locked = LockedSnapshot { storage: store.kind(), store: store.describe(), name, until };
                    tracing::info!("{locked}");
                    report.locked.push(locked);
                }
                Err(source) => report.errors.push(PruneError::Delete { store: store.describe(), name, source }),
            }
        }
    }
    report
}

/// What `policy` keeps (oldest first, with the rules that keep each) and removes (oldest
/// first). With no rule, every snapshot it counts is kept.
fn plan_store(
    records: &[etcdsnap_storage::SnapshotRecord],
    policy: &RetentionPolicy,
) -> (Vec<SnapshotName>, BTreeMap<SnapshotName, String>, Vec<SnapshotName>) {
    if policy.keep.is_empty() {
        let kept: Vec<SnapshotName> = records.iter().filter(|r| in_scope(r, policy)).map(|r| r.name.clone()).collect();
        let reasons = kept.iter().map(|n| (n.clone(), "no retention rule".to_string())).collect();
        return (kept, reasons, Vec::new());
    }
    let mut decisions = decide(records, policy);
    decisions.sort_by(|a, b| (a.time, &a.name).cmp(&(b.time, &b.name)));
    let (kept, removed): (Vec<_>, Vec<_>) = decisions.into_iter().partition(|d| d.kept());
    let reasons = kept
        .iter()
        .map(|d| (d.name.clone(), d.reasons.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")))
        .collect();
    (kept.into_iter().map(|d| d.name).collect(), reasons, removed.into_iter().map(|d| d.name).collect())
}
