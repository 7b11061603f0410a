//! Point-in-time recovery's reach, said on the newest snapshot's resource: two `etcdsnap.io/`
//! annotations, merged in (K3s's fields untouched; reconcile keeps annotations it does not own).

use crate::ApiError;
use crate::resources::annotate;
use etcdsnap_api::consts::{ANNOTATION_ROLLS_FORWARD_TO, ANNOTATION_ROLLS_FORWARD_UNTIL};
use etcdsnap_storage::SnapshotRecord;
use kube::Client;

/// Says on the resource of `record` (the newest snapshot) until which revision, observed when,
/// point-in-time recovery can roll it forward. Ok(false) when the snapshot has no resource.
pub async fn record_reach(
    client: &Client,
    record: &SnapshotRecord,
    revision: i64,
    observed: jiff::Timestamp,
) -> Result<bool, ApiError> {
    let annotations =
        [(ANNOTATION_ROLLS_FORWARD_TO, revision.to_string()), (ANNOTATION_ROLLS_FORWARD_UNTIL, observed.to_string())];
    Ok(annotate(client, &record.cr_name(), &annotations).await?.is_some())
}
