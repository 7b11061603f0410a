//! Replication: after a save, every replica receives the snapshots of this node that the source
//! holds and it does not (the new one, and any an earlier outage held back), each streamed from
//! the local copy, or from S3 when there is none, and checked on arrival
//! ([`ReplicaStore::copy_from`]). A replica that cannot be reached is skipped and stays behind
//! until a later pass; [`ReplicaStatus::behind`] says by how much, for the agent's metric.
//!
//! With a base name (the agent's schedule, `prune`), each replica then keeps the newest
//! `--replica-retention` snapshots of that name per node, this cluster's only: other clusters'
//! and other nodes' objects in the same folder are never candidates, as in S3. Snapshots that
//! retention would remove at once are not copied. Then the delta segments no snapshot left in
//! the replica can use are removed (the segments themselves are copied by
//! [`super::replicate_deltas`]).

use super::Context;
use etcdsnap_api::SnapshotName;
use etcdsnap_storage::pitr::objects::DeltaObjects as _;
use etcdsnap_storage::pitr::retention as pitr_retention;
use etcdsnap_storage::record::SnapshotRecord;
use etcdsnap_storage::store::replica::{Copied, ReplicaStore};
use etcdsnap_storage::store::{KeepPolicy, RetentionPolicy, SnapshotStore, plan_retention};
use std::collections::HashSet;
use std::sync::Arc;

/// Which snapshots each replica keeps per node, of which name, after copying.
#[derive(Debug, Clone)]
pub struct ReplicaRetention {
    pub base_name: String,
    /// No rule keeps all.
    pub keep: KeepPolicy,
}

/// One replica after a pass.
#[derive(Debug)]
pub struct ReplicaStatus {
    pub url: String,
    /// Copies made in this pass.
    pub copied: Vec<(SnapshotName, Copied)>,
    /// Snapshots the replica should hold and does not (a copy failed, or it could not be listed).
    pub behind: Vec<SnapshotRecord>,
    /// Removed by the replica's retention.
    pub removed: Vec<SnapshotName>,
    /// Delta segments removed by the replica's retention (none is needed by a snapshot it keeps).
    pub removed_deltas: usize,
    /// What went wrong, each naming the replica and the snapshot.
    pub errors: Vec<String>,
}

impl ReplicaStatus {
    /// Seconds since the oldest snapshot the replica is missing was taken (0: none missing).
    pub fn lag_seconds(&self, now: jiff::Timestamp) -> i64 {
        self.behind.iter().map(|r| now.as_second() - r.created_at.as_second()).max().unwrap_or(0).max(0)
    }
}

/// The store copies are read from: the local directory, else S3.
fn source(ctx: &Context) -> Option<Arc<dyn SnapshotStore>> {
    ctx.shared_stores().into_iter().next()
}

/// Copies what each replica is missing, then applies its retention when `retention` is given.
pub async fn replicate(ctx: &Context, retention: Option<&ReplicaRetention>) -> Vec<ReplicaStatus> {
    if ctx.replicas.is_empty() {
        return Vec::new();
    }
    let Some(source) = source(ctx) else { return Vec::new() };
    let wanted: Vec<SnapshotRecord> = match source.list().await {
        Ok(listing) => listing
            .records
            .into_iter()
            .filter(|r| r.is_ready() && (r.node_name == ctx.node_name || r.node_name.is_empty()))
            .filter(|r| ctx.cluster_id.is_none() || r.cluster_id.is_none() || r.cluster_id == ctx.cluster_id)
            .collect(),
        Err(e) => {
            let error = format!("replication: cannot list {}: {e}", source.describe());
            return ctx
                .replicas
                .iter()
                .map(|r| ReplicaStatus {
                    url: r.url().to_string(),
                    copied: Vec::new(),
                    behind: Vec::new(),
                    removed: Vec::new(),
                    removed_deltas: 0,
                    errors: vec![error.clone()],
                })
                .collect();
        }
    };
    let mut statuses = Vec::with_capacity(ctx.replicas.len());
    for replica in &ctx.replicas {
        statuses.push(replicate_one(ctx, source.as_ref(), replica, &wanted, retention).await);
    }
    statuses
}

async fn replicate_one(
    ctx: &Context,
    source: &dyn SnapshotStore,
    replica: &ReplicaStore,
    wanted: &[SnapshotRecord],
    retention: Option<&ReplicaRetention>,
) -> ReplicaStatus {
    let mut status = ReplicaStatus {
        url: replica.url().to_string(),
        copied: Vec::new(),
        behind: Vec::new(),
        removed: Vec::new(),
        removed_deltas: 0,
        errors: Vec::new(),
    };
    let held = match replica.list().await {
        Ok(listing) => listing.records,
        Err(e) => {
            status.errors.push(format!("replica {}: cannot list: {e}", replica.url()));
            status.behind = wanted.to_vec();
            return status;
        }
    };
    let policy = retention.and_then(|r| {
        let cluster_id = ctx.cluster_id.clone()?;
        Some(RetentionPolicy {
            base: r.base_name.clone(),
            keep: r.keep,
            node: Some(ctx.node_name.clone()),
            cluster_id: Some(cluster_id),
        })
    });
    if retention.is_some() && policy.is_none() {
        status.errors.push(format!(
            "replica {}: retention skipped: this cluster's id is unknown (pass --cluster-id), and without it another cluster's snapshots cannot be told apart",
            replica.url()
        ));
    }
    let present: HashSet<&SnapshotName> = held.iter().map(|r| &r.name).collect();
    // What retention would remove from the replica once everything wanted is there.
    let expired: HashSet<SnapshotName> = match &policy {
        Some(policy) => {
            let mut all: Vec<SnapshotRecord> = held.clone();
            all.extend(wanted.iter().filter(|r| !present.contains(&r.name)).cloned().map(|mut r| {
                r.cluster_id = r.cluster_id.or_else(|| ctx.cluster_id.clone());
                r
            }));
            plan_retention(&all, policy).into_iter().collect()
        }
        None => HashSet::new(),
    };
    for record in wanted.iter().filter(|r| !present.contains(&r.name) && !expired.contains(&r.name)) {
        match replica.copy_from(source, record).await {
            Ok(copied) => {
                tracing::info!(replica = %replica.url(), snapshot = %record.name, bytes = copied.bytes, "copied to replica");
                status.copied.push((record.name.clone(), copied));
            }
            Err(e) => {
                status.errors.push(format!("replica {}: copying {}: {e}", replica.url(), record.name));
                status.behind.push(record.clone());
            }
        }
    }
    for name in held.iter().map(|r| &r.name).filter(|n| expired.contains(*n)) {
        match replica.delete(name).await {
            Ok(_) => status.removed.push(name.clone()),
            Err(e) => status.errors.push(format!("replica {}: removing {name}: {e}", replica.url())),
        }
    }
    if policy.is_some() {
        // The snapshots the replica holds now: what it held and received, less what it removed.
        let kept: Vec<SnapshotRecord> = held
            .iter()
            .filter(|r| !status.removed.contains(&r.name))
            .chain(wanted.iter().filter(|r| status.copied.iter().any(|(n, _)| *n == r.name)))
            .cloned()
            .collect();
        prune_deltas(replica, &kept, &mut status).await;
    }
    status
}

/// The replica's delta retention, after its snapshots' (`pitr::retention`'s rule, as in S3):
/// segments ending at or before the revision of the oldest snapshot the replica holds, of any
/// node, can roll nothing forward and are removed, each record before its segment. Without a
/// snapshot with a revision nothing is removed.
async fn prune_deltas(replica: &ReplicaStore, kept: &[SnapshotRecord], status: &mut ReplicaStatus) {
    let Some(oldest) = pitr_retention::oldest_base_revision(kept) else { return };
    let listed = match replica.list_deltas().await {
        Ok(listed) => listed,
        Err(e) => return status.errors.push(format!("replica {}: delta retention skipped: {e}", replica.url())),
    };
    for o in pitr_retention::expired_objects(listed, oldest) {
        match replica.delete_delta(&o.chain, &o.file).await {
            Ok(()) => status.removed_deltas += usize::from(!o.is_record()),
            Err(e) => {
                return status.errors.push(format!("replica {}: delta retention: {e}", replica.url()));
            }
        }
    }
    if status.removed_deltas > 0 {
        tracing::info!(replica = %replica.url(), segments = status.removed_deltas, before = oldest, "delta segments no replica snapshot needs removed");
    }
}
