//! A restore drill's result on the snapshot's resource: two `etcdsnap.io/` annotations (K3s's
//! fields untouched; reconcile keeps annotations it does not own) and an Event.

use crate::ApiError;
use crate::events::emit_described;
use crate::resources::annotate;
use etcdsnap_api::consts::{
    ANNOTATION_DRILL, ANNOTATION_DRILLED_AT, EVENT_DRILL_FAILED, EVENT_DRILL_NOT_COMPARED, EVENT_DRILL_PASSED,
};
use etcdsnap_storage::SnapshotRecord;
use kube::Client;

/// The longest reason kept in the annotation (the Event carries it whole).
const MAX_REASON: usize = 512;

/// Marks the resource of `record` with the drill's time and verdict (`passed`, `not compared:
/// <why>` or `failed: <reason>`) and writes an Event. Ok(false) when the snapshot has no resource.
pub async fn record_drill(
    client: &Client,
    record: &SnapshotRecord,
    drilled_at: jiff::Timestamp,
    verdict: &str,
    reporting_node: &str,
) -> Result<bool, ApiError> {
    let annotation: String = verdict.chars().take(MAX_REASON).collect();
    let annotations = [(ANNOTATION_DRILLED_AT, drilled_at.to_string()), (ANNOTATION_DRILL, annotation)];
    let Some(patched) = annotate(client, &record.cr_name(), &annotations).await? else { return Ok(false) };
    let snapshot = &record.name;
    let described = if verdict == "passed" {
        ("Normal", EVENT_DRILL_PASSED, format!("Snapshot {snapshot} passed a restore drill"))
    } else if let Some(why) = verdict.strip_prefix("not compared: ") {
        let text = format!("Snapshot {snapshot} went through a restore drill, its contents not compared: {why}");
        ("Normal", EVENT_DRILL_NOT_COMPARED, text)
    } else {
        ("Warning", EVENT_DRILL_FAILED, format!("Snapshot {snapshot} failed a restore drill: {verdict}"))
    };
    emit_described(client, &patched, described, reporting_node).await;
    Ok(true)
}
