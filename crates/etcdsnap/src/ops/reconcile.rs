//! The reconcile job: list every store of a context, then have the Kubernetes side bring the
//! resources in line with what was listed. The agent's periodic pass, `etcdsnap reconcile` and
//! the immediate clean-up after a delete or prune all run through here.
//!
//! A store that cannot be listed is left out of the pass (its resources stay exactly as they
//! are) and reported as a failure of the pass, so the metrics say why.

use super::Context;
use super::list::list_stores;
use etcdsnap_api::{SnapshotName, StorageKind, configmap_key};
use etcdsnap_kube::Kube;
use etcdsnap_kube::leader::LeaderTerm;
use etcdsnap_kube::lease::NodeLiveness;
use etcdsnap_kube::reconcile::{
    LeaderView, ReconcileError, ReconcileReport, StorageState, reconcile_leader, reconcile_node,
};
use etcdsnap_storage::store::StoreError;
use std::collections::BTreeSet;
use std::time::Duration;

/// How long listing one store took, and whether it worked (for the reconcile metrics).
#[derive(Debug, Clone, Copy)]
pub struct ListingTime {
    pub storage: StorageKind,
    pub elapsed: Duration,
    pub ok: bool,
}

/// What listing the stores found.
#[derive(Debug, Default)]
pub struct StorageListing {
    pub state: StorageState,
    /// Problems with single entries, and local snapshots recorded as another node's.
    pub warnings: Vec<String>,
    /// Stores that could not be listed: (store, error).
    pub failures: Vec<(String, StoreError)>,
    pub timings: Vec<ListingTime>,
}

/// Lists every store of `ctx`. With `local_managed` false (`--no-local`) this node's local
/// resources are not touched at all; otherwise a missing snapshot directory means "no local
/// snapshots".
pub async fn list_storage(ctx: &Context, deleted: BTreeSet<String>, local_managed: bool) -> StorageListing {
    let state = StorageState { local: None, s3: None, s3_location: None, deleted };
    let mut listing = StorageListing { state, ..Default::default() };
    if ctx.local.is_none() && local_managed {
        // No local directory yet (nothing saved on this node): nothing local exists.
        listing.state.local = Some(Vec::new());
    }
    for listed in list_stores(ctx).await {
        let ok = listed.result.is_ok();
        listing.timings.push(ListingTime { storage: listed.storage, elapsed: listed.elapsed, ok });
        let found = match listed.result {
            Ok(found) => found,
            Err(e) => {
                listing.failures.push((listed.store, e));
                continue;
            }
        };
        listing.warnings.extend(found.warnings);
        match listed.storage {
            StorageKind::Local => {
                let (mine, foreign): (Vec<_>, Vec<_>) =
                    found.records.into_iter().partition(|r| r.node_name == ctx.node_name);
                for r in foreign {
                    listing.warnings.push(format!(
                        "{}: recorded as taken by node {}, not {}; not published from this node",
                        r.location, r.node_name, ctx.node_name
                    ));
                }
                listing.state.local = Some(mine);
            }
            StorageKind::S3 => {
                listing.state.s3 = Some(found.records);
                listing.state.s3_location = ctx.remote_spec.clone();
            }
        }
    }
    listing
}

/// One pass and what it was based on.
#[derive(Debug)]
pub struct PassOutcome {
    pub listing: StorageListing,
    pub report: ReconcileReport,
    /// Whether the leader's duties were done.
    pub leader: bool,
}

impl PassOutcome {
    /// Whether anything failed: a store, a read or a write.
    pub fn ok(&self) -> bool {
        self.listing.failures.is_empty() && self.report.errors.is_empty()
    }

    /// Why the pass failed, as metric label values (empty when it did not).
    pub fn failure_causes(&self) -> BTreeSet<&'static str> {
        let mut causes: BTreeSet<&'static str> = self.report.errors.iter().map(ReconcileError::cause).collect();
        if !self.listing.failures.is_empty() {
            causes.insert("storage_list");
        }
        causes
    }
}

/// Lists storage and reconciles; the leader's duties only with a `leader` term, whose end
/// cancels the pass at once (every write in it is checked against the term too).
pub async fn run_pass(
    kube: &Kube,
    ctx: &Context,
    leader: Option<&LeaderTerm>,
    local_managed: bool,
) -> Result<PassOutcome, ReconcileError> {
    let pass = async {
        let _no_removals = ctx.removals.read().await;
        let listing = list_storage(ctx, BTreeSet::new(), local_managed).await;
        reconcile_listed(kube, listing, leader).await
    };
    let Some(term) = leader else { return pass.await };
    tokio::select! {
        outcome = pass => outcome,
        _ = term.ended().cancelled() => Err(term.reason().into()),
    }
}

/// After a delete or prune: this node's reconcile with the removed snapshots' keys, so their
/// resources go at once (their TTLs notwithstanding).
pub async fn after_removal(
    kube: &Kube,
    ctx: &Context,
    removed: &[(StorageKind, SnapshotName)],
    local_managed: bool,
) -> Result<PassOutcome, ReconcileError> {
    let deleted: BTreeSet<String> = removed.iter().map(|(kind, name)| configmap_key(name.as_str(), *kind)).collect();
    let _no_removals = ctx.removals.read().await;
    let listing = list_storage(ctx, deleted, local_managed).await;
    reconcile_listed(kube, listing, None).await
}

async fn reconcile_listed(
    kube: &Kube,
    listing: StorageListing,
    leader: Option<&LeaderTerm>,
) -> Result<PassOutcome, ReconcileError> {
    for w in &listing.warnings {
        tracing::warn!("{w}");
    }
    for (store, e) in &listing.failures {
        tracing::warn!("listing {store}: {e}; its resources are left unchanged");
    }
    let report = match leader {
        Some(term) => {
            let liveness = NodeLiveness::read(&kube.client).await.map_err(ReconcileError::Read)?;
            reconcile_leader(kube, &listing.state, &LeaderView { liveness, term: term.clone() }).await?
        }
        None => reconcile_node(kube, &listing.state).await?,
    };
    Ok(PassOutcome { listing, report, leader: leader.is_some() })
}
