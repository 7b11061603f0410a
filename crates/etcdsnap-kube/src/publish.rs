//! Writing resources right after an operation, so they appear at once rather than at the next
//! reconcile: a save upserts the resource of every copy it made (ready or failed). When the API
//! server cannot be reached the operation itself has still succeeded: the metadata documents are
//! on disk and in S3, and the next reconcile creates what is missing.

use crate::convert::RecordResource;
use crate::resources::{self, WriteError, Written};
use crate::{ApiError, Kube};
use etcdsnap_storage::{SnapshotRecord, failpoint};

/// What publishing a save's records did.
#[derive(Debug, Default)]
pub struct Published {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub errors: Vec<ApiError>,
}

/// Creates or updates the resource of each record (K3s's events on creation).
pub async fn publish_records(kube: &Kube, records: &[SnapshotRecord]) -> Published {
    let mut out = Published::default();
    failpoint::reached(failpoint::BEFORE_RESOURCES).await;
    for record in records {
        match resources::upsert(
            &kube.client,
            &record.to_resource(kube.settings.program),
            &kube.settings.node_name,
            None,
        )
        .await
        {
            Ok(Written::Created) => out.created += 1,
            Ok(Written::Updated) => out.updated += 1,
            Ok(Written::Unchanged) => out.unchanged += 1,
            Err(WriteError::Api(e)) => out.errors.push(e),
            // Without a term nothing is fenced.
            Err(WriteError::NotLeader(_)) => {}
        }
    }
    failpoint::reached(failpoint::AFTER_RESOURCES).await;
    out
}
