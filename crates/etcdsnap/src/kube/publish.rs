//! Writing resources right after an operation, so they appear at once rather than at the next
//! reconcile: a save upserts the resource of every copy it made (ready or failed); a delete or a
//! prune runs this node's reconcile with the names it removed, which deletes their resources
//! immediately. When the API server cannot be reached the operation itself has still succeeded:
//! the metadata documents are on disk and in S3, and the next reconcile creates what is missing.

use super::reconcile::{self, ReconcileReport, StorageState};
use super::resources::{self, Written};
use super::{ApiError, Kube};
use crate::failpoint;
use crate::ops::Context;
use crate::record::SnapshotRecord;
use etcdsnap_api::StorageKind;
use std::collections::BTreeSet;

/// What publishing a save's records did.
#[derive(Debug, Default, Clone)]
pub struct Published {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub errors: Vec<String>,
}

/// Creates or updates the resource of each record (K3s's events on creation).
pub async fn publish_records(kube: &Kube, records: &[SnapshotRecord]) -> Published {
    let mut out = Published::default();
    failpoint::reached(failpoint::BEFORE_RESOURCES).await;
    for record in records {
        match resources::upsert(&kube.client, &record.to_resource(), &kube.settings.node_name).await {
            Ok(Written::Created) => out.created += 1,
            Ok(Written::Updated) => out.updated += 1,
            Ok(Written::Unchanged) => out.unchanged += 1,
            Err(e) => out.errors.push(e.to_string()),
        }
    }
    failpoint::reached(failpoint::AFTER_RESOURCES).await;
    out
}

/// Lists every store of `ctx` for a reconcile pass. A store that cannot be listed is left out
/// (None), so its resources stay as they are; the error is returned as a warning. With
/// `local_managed` false (`--no-local`) this node's local resources are not touched at all;
/// otherwise a missing snapshot directory means "no local snapshots".
pub async fn storage_state(
    ctx: &Context,
    deleted: BTreeSet<String>,
    local_managed: bool,
) -> (StorageState, Vec<String>) {
    let (state, warnings, _) = storage_state_timed(ctx, deleted, local_managed).await;
    (state, warnings)
}

/// How long listing one store took, and whether it worked (for the reconcile metrics).
#[derive(Debug, Clone, Copy)]
pub struct ListingTime {
    pub storage: StorageKind,
    pub elapsed: std::time::Duration,
    pub ok: bool,
}

/// [`storage_state`], also timing each listing.
pub async fn storage_state_timed(
    ctx: &Context,
    deleted: BTreeSet<String>,
    local_managed: bool,
) -> (StorageState, Vec<String>, Vec<ListingTime>) {
    let mut timings = Vec::new();
    let mut state = StorageState { local: None, s3: None, deleted };
    let mut warnings = Vec::new();
    if ctx.local.is_none() && local_managed {
        // No local directory yet (nothing saved on this node): nothing local exists.
        state.local = Some(Vec::new());
    }
    for store in ctx.stores() {
        let started = std::time::Instant::now();
        let listed = store.list().await;
        timings.push(ListingTime { storage: store.kind(), elapsed: started.elapsed(), ok: listed.is_ok() });
        match listed {
            Ok(listing) => {
                warnings.extend(listing.warnings);
                match store.kind() {
                    StorageKind::Local => {
                        let (mine, foreign): (Vec<_>, Vec<_>) =
                            listing.records.into_iter().partition(|r| r.node_name == ctx.node_name);
                        for r in foreign {
                            warnings.push(format!(
                                "{}: recorded as taken by node {}, not {}; not published from this node",
                                r.location, r.node_name, ctx.node_name
                            ));
                        }
                        state.local = Some(mine);
                    }
                    StorageKind::S3 => state.s3 = Some(listing.records),
                }
            }
            Err(e) => warnings.push(format!("listing {}: {e}; its resources are left unchanged", store.describe())),
        }
    }
    (state, warnings, timings)
}

/// After a delete or prune: this node's reconcile with the removed snapshots' keys, so their
/// resources go at once (their TTLs notwithstanding).
pub async fn after_removal(
    kube: &Kube,
    ctx: &Context,
    removed: &[(StorageKind, String)],
    local_managed: bool,
) -> Result<(ReconcileReport, Vec<String>), ApiError> {
    let deleted: BTreeSet<String> =
        removed.iter().map(|(kind, name)| etcdsnap_api::configmap_key(name, *kind)).collect();
    let (state, warnings) = storage_state(ctx, deleted, local_managed).await;
    let report = reconcile::reconcile_node(kube, &state).await?;
    Ok((report, warnings))
}
