//! Listing what the stores hold. [`list_stores`] is the one pass over the stores that `ls`
//! ([`list`]) and the reconcile job ([`super::reconcile::list_storage`]) both build on: each
//! store listed in turn, local first, with how long it took and why it could not be listed.

use super::Context;
use etcdsnap_api::StorageKind;
use etcdsnap_storage::record::SnapshotRecord;
use etcdsnap_storage::store::{Listing, SnapshotStore, StoreError};
use std::time::{Duration, Instant};

/// One store's listing.
#[derive(Debug)]
pub struct StoreListing {
    pub storage: StorageKind,
    /// The store as the operator knows it (`file:///…`, `s3://bucket/folder`).
    pub store: String,
    pub elapsed: Duration,
    pub result: Result<Listing, StoreError>,
}

/// Lists every store of `ctx`, local first.
pub async fn list_stores(ctx: &Context) -> Vec<StoreListing> {
    let mut listings = Vec::new();
    for store in ctx.stores() {
        let started = Instant::now();
        let result = store.list().await;
        listings.push(StoreListing {
            storage: store.kind(),
            store: store.describe(),
            elapsed: started.elapsed(),
            result,
        });
    }
    listings
}

/// Everything the stores hold, with per-entry warnings and per-store errors.
#[derive(Debug, Default)]
pub struct ListReport {
    pub records: Vec<SnapshotRecord>,
    pub warnings: Vec<String>,
    /// Stores that could not be listed at all: (store, error).
    pub errors: Vec<(String, StoreError)>,
}

/// Every snapshot of every store and replica, oldest first (local before S3 and replicas within
/// a name). A snapshot directory that should be there and is not is one of the errors; so is a
/// replica that cannot be listed.
pub async fn list(ctx: &Context) -> ListReport {
    let mut report = ListReport::default();
    if let (Some(dir), Some(e)) = (&ctx.missing_local, ctx.missing_local_error()) {
        report.errors.push((dir.display().to_string(), e));
    }
    report.warnings.extend(ctx.missing_local_warning());
    for listed in list_stores(ctx).await {
        match listed.result {
            Ok(listing) => {
                report.records.extend(listing.records);
                report.warnings.extend(listing.warnings);
            }
            Err(e) => report.errors.push((listed.store, e)),
        }
    }
    for replica in &ctx.replicas {
        match replica.list().await {
            Ok(listing) => {
                report.records.extend(listing.records);
                report.warnings.extend(listing.warnings);
            }
            Err(e) => report.errors.push((replica.describe(), e)),
        }
    }
    report.records.sort_by(|a, b| {
        (a.created_at, &a.name, a.storage == StorageKind::S3).cmp(&(
            b.created_at,
            &b.name,
            b.storage == StorageKind::S3,
        ))
    });
    report
}
