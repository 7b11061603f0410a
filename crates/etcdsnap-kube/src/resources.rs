//! Reading and writing `ETCDSnapshotFile` objects: paged lists, creates, updates only when
//! something etcdsnap owns differs, deletes guarded by the object's UID.

use crate::events::{SnapshotEvent, emit};
use crate::leader::{LeaderTerm, LeadershipLost};
use crate::{ApiError, CONFLICT_RETRIES};
use etcdsnap_api::consts::{ANNOTATION_MANAGED_BY, FINALIZER_K3S};
use etcdsnap_api::{ETCDSnapshotFile, Program, StorageKind, configmap_key};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};

/// The key of a resource: its snapshot name as a ConfigMap key, `s3-` when it has `spec.s3`.
pub fn resource_key(cr: &ETCDSnapshotFile) -> String {
    let kind = if cr.spec.s3.is_some() { StorageKind::S3 } else { StorageKind::Local };
    configmap_key(&cr.spec.snapshot_name, kind)
}

/// The value of `program`'s storage-node label: a resource without it is not one of `program`'s
/// (its server's cleanup deletes it).
pub fn storage_label(cr: &ETCDSnapshotFile, program: Program) -> Option<&str> {
    cr.metadata.labels.as_ref().and_then(|l| l.get(program.label_storage_node())).map(String::as_str)
}

/// Whether etcdsnap wrote the resource (K3s's own carry no `etcdsnap.io/managed-by`).
pub fn is_managed(cr: &ETCDSnapshotFile) -> bool {
    cr.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ANNOTATION_MANAGED_BY))
}

/// Objects per LIST page: one request per thousand snapshots.
pub const PAGE_SIZE: u32 = 1000;

pub fn api(client: &Client) -> Api<ETCDSnapshotFile> {
    Api::all(client.clone())
}

/// Every object matching `label_selector` (all when None), one page of [`PAGE_SIZE`] at a time.
pub async fn list(client: &Client, label_selector: Option<&str>) -> Result<Vec<ETCDSnapshotFile>, ApiError> {
    let api = api(client);
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(PAGE_SIZE);
        if let Some(sel) = label_selector {
            params = params.labels(sel);
        }
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let what = label_selector.map_or("all".to_string(), |s| format!("selector {s}"));
        let page = api.list(&params).await.map_err(ApiError::new("list", format!("etcdsnapshotfiles ({what})")))?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(t) => token = Some(t),
            None => return Ok(items),
        }
    }
}

/// `existing` with etcdsnap's view of the snapshot applied, or None when nothing etcdsnap owns
/// differs (then no write is needed). What others put on the object survives: labels,
/// annotations and finalizers etcdsnap does not set, a token hash it no longer knows, extra
/// metadata it has no copy of.
pub fn merge_for_update(existing: &ETCDSnapshotFile, desired: &ETCDSnapshotFile) -> Option<ETCDSnapshotFile> {
    let mut merged = existing.clone();
    let labels = merged.metadata.labels.get_or_insert_default();
    for (k, v) in desired.metadata.labels.iter().flatten() {
        labels.insert(k.clone(), v.clone());
    }
    let annotations = merged.metadata.annotations.get_or_insert_default();
    for (k, v) in desired.metadata.annotations.iter().flatten() {
        // The program version alone is not worth rewriting thousands of objects for.
        if k == ANNOTATION_MANAGED_BY && annotations.contains_key(k) {
            continue;
        }
        annotations.insert(k.clone(), v.clone());
    }
    let metadata = desired.spec.metadata.clone().or_else(|| existing.spec.metadata.clone());
    merged.spec = desired.spec.clone();
    merged.spec.metadata = metadata;
    merged.status = desired.status.clone();
    let unchanged = merged.metadata.labels == existing.metadata.labels
        && merged.metadata.annotations == existing.metadata.annotations
        && merged.spec == existing.spec
        && merged.status == existing.status;
    (!unchanged).then_some(merged)
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Updated,
    Unchanged,
}

/// Creates `desired`, or updates the existing object of that name if it differs. Races with
/// other writers (409) are resolved by re-reading, a bounded number of times. With a leader's
/// `term`, the term is checked right before each write.
pub async fn upsert(
    client: &Client,
    desired: &ETCDSnapshotFile,
    node: &str,
    term: Option<&LeaderTerm>,
) -> Result<Written, WriteError> {
    let api = api(client);
    let name = desired.metadata.name.clone().unwrap_or_default();
    let fence = || term.map_or(Ok(()), LeaderTerm::check);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let existing = api.get_opt(&name).await.map_err(ApiError::new("get", format!("etcdsnapshotfile {name}")))?;
        let result = match &existing {
            None => {
                fence()?;
                create(client, desired, node).await.map(|_| Written::Created)
            }
            Some(existing) => match merge_for_update(existing, desired) {
                None => return Ok(Written::Unchanged),
                Some(merged) => {
                    fence()?;
                    replace(client, &merged).await.map(|_| Written::Updated)
                }
            },
        };
        match result {
            Err(e) if e.is_conflict() && attempt < CONFLICT_RETRIES => continue,
            other => return Ok(other?),
        }
    }
}

/// Why a fenced write was not made.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    NotLeader(#[from] LeadershipLost),
}

/// Creates one object and records K3s's creation event.
pub async fn create(client: &Client, desired: &ETCDSnapshotFile, node: &str) -> Result<ETCDSnapshotFile, ApiError> {
    let name = desired.metadata.name.clone().unwrap_or_default();
    let created = api(client)
        .create(&PostParams::default(), desired)
        .await
        .map_err(ApiError::new("create", format!("etcdsnapshotfile {name}")))?;
    emit(client, &created, SnapshotEvent::Created, node).await;
    Ok(created)
}

/// Replaces one object; its resourceVersion makes a concurrent change fail with 409.
pub async fn replace(client: &Client, updated: &ETCDSnapshotFile) -> Result<ETCDSnapshotFile, ApiError> {
    let name = updated.metadata.name.clone().unwrap_or_default();
    api(client)
        .replace(&name, &PostParams::default(), updated)
        .await
        .map_err(ApiError::new("update", format!("etcdsnapshotfile {name}")))
}

/// Deletes one object (only the one with this UID, if known) and records K3s's deletion event.
/// Already gone is success. With `clear_k3s_finalizer`, K3s's finalizer is removed first so the
/// object cannot get stuck Terminating (only the leader may do that: it owns the ConfigMap entry
/// the finalizer protects).
pub async fn delete(
    client: &Client,
    cr: &ETCDSnapshotFile,
    node: &str,
    clear_k3s_finalizer: bool,
) -> Result<bool, ApiError> {
    let name = cr.metadata.name.clone().unwrap_or_default();
    if clear_k3s_finalizer && has_k3s_finalizer(cr) {
        remove_k3s_finalizer(client, cr).await?;
    }
    let params = DeleteParams {
        preconditions: cr.metadata.uid.clone().map(|uid| Preconditions { uid: Some(uid), resource_version: None }),
        ..Default::default()
    };
    match api(client).delete(&name, &params).await {
        Ok(_) => {
            emit(client, cr, SnapshotEvent::Deleted, node).await;
            Ok(true)
        }
        Err(e) if crate::status_is(&e, |s| s.is_not_found() || s.is_conflict()) => Ok(false),
        Err(e) => Err(ApiError::new("delete", format!("etcdsnapshotfile {name}"))(e)),
    }
}

pub fn has_k3s_finalizer(cr: &ETCDSnapshotFile) -> bool {
    cr.metadata.finalizers.iter().flatten().any(|f| f == FINALIZER_K3S)
}

pub fn is_terminating(cr: &ETCDSnapshotFile) -> bool {
    cr.metadata.deletion_timestamp.is_some()
}

/// Removes K3s's finalizer (and only it), guarded by the object's resourceVersion.
pub async fn remove_k3s_finalizer(client: &Client, cr: &ETCDSnapshotFile) -> Result<(), ApiError> {
    let name = cr.metadata.name.clone().unwrap_or_default();
    let remaining: Vec<String> =
        cr.metadata.finalizers.iter().flatten().filter(|f| *f != FINALIZER_K3S).cloned().collect();
    let patch = serde_json::json!({
        "metadata": {"finalizers": remaining, "resourceVersion": cr.metadata.resource_version}
    });
    match api(client).patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(e) if crate::status_is(&e, |s| s.is_not_found()) => Ok(()),
        Err(e) => Err(ApiError::new("remove finalizer from", format!("etcdsnapshotfile {name}"))(e)),
    }
}

/// Sets `annotations` on the object `name` with a JSON merge patch: nothing else on the object
/// changes (K3s's fields stay; reconcile keeps annotations it does not own). Returns the object
/// as patched, or None when there is no such object.
pub async fn annotate(
    client: &Client,
    name: &str,
    annotations: &[(&str, String)],
) -> Result<Option<ETCDSnapshotFile>, ApiError> {
    let patch = annotations_patch(annotations);
    match api(client).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(cr) => Ok(Some(cr)),
        Err(e) if crate::status_is(&e, |s| s.is_not_found()) => Ok(None),
        Err(e) => Err(ApiError::new("patch", format!("etcdsnapshotfile {name}"))(e)),
    }
}

/// The merge patch that sets `annotations` and nothing else.
fn annotations_patch(annotations: &[(&str, String)]) -> serde_json::Value {
    let annotations: serde_json::Map<String, serde_json::Value> =
        annotations.iter().map(|(k, v)| ((*k).to_string(), serde_json::Value::from(v.as_str()))).collect();
    serde_json::json!({"metadata": {"annotations": annotations}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordResource;
    use crate::test_record;
    use etcdsnap_api::consts::ANNOTATION_SHA256;
    use std::collections::BTreeMap;

    const K3S: Program = Program::K3s;
    const ANNOTATION_TOKEN_HASH: &str = "etcd.k3s.cattle.io/snapshot-token-hash";

    fn server_copy(cr: &ETCDSnapshotFile) -> ETCDSnapshotFile {
        let mut c = cr.clone();
        c.metadata.uid = Some("uid-1".into());
        c.metadata.resource_version = Some("42".into());
        c.metadata.finalizers = Some(vec![FINALIZER_K3S.into()]);
        c
    }

    #[test]
    fn identical_objects_need_no_write() {
        let cr = test_record("a-n-1700000000", "n").to_resource(K3S);
        assert!(merge_for_update(&server_copy(&cr), &cr).is_none());
    }

    #[test]
    fn a_newer_program_version_alone_is_no_change() {
        let cr = test_record("a-n-1700000000", "n").to_resource(K3S);
        let mut old = server_copy(&cr);
        old.metadata.annotations.get_or_insert_default().insert(ANNOTATION_MANAGED_BY.into(), "etcdsnap/0.0.1".into());
        assert!(merge_for_update(&old, &cr).is_none());
    }

    #[test]
    fn known_facts_are_never_dropped() {
        let mut full = test_record("a-n-1700000000", "n");
        full.token_hash = etcdsnap_api::TokenHash::parse_recorded("652c7dc687d9");
        full.sha256 = Some("ab".repeat(32));
        full.extra_metadata = Some(BTreeMap::from([("k".into(), "v".into())]));
        let existing = server_copy(&full.to_resource(K3S));
        // Rebuilt from a bare file: no hash, no sha256, no extra metadata known.
        let bare = test_record("a-n-1700000000", "n").to_resource(K3S);
        assert!(merge_for_update(&existing, &bare).is_none());
    }

    #[test]
    fn differences_in_owned_fields_are_written_and_the_rest_kept() {
        let cr = test_record("a-n-1700000000", "n").to_resource(K3S);
        let mut existing = server_copy(&cr);
        existing.metadata.labels.get_or_insert_default().insert("team".into(), "x".into());
        existing.status.get_or_insert_default().ready_to_use = Some(false);
        let mut desired = cr.clone();
        desired.metadata.annotations.get_or_insert_default().insert(ANNOTATION_SHA256.into(), "cd".repeat(32));
        let merged = merge_for_update(&existing, &desired).expect("no update");
        assert_eq!(merged.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(merged.metadata.finalizers, existing.metadata.finalizers);
        let labels = merged.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("x"));
        assert_eq!(merged.status.and_then(|s| s.ready_to_use), Some(true));
        let ann = merged.metadata.annotations.unwrap_or_default();
        assert!(ann.contains_key(ANNOTATION_SHA256));
        assert!(!ann.contains_key(ANNOTATION_TOKEN_HASH));
    }

    #[test]
    fn an_annotation_patch_sets_its_annotations_and_nothing_else() {
        let patch = annotations_patch(&[("etcdsnap.io/a", "1".into()), ("etcdsnap.io/b", "x y".into())]);
        assert_eq!(
            patch,
            serde_json::json!({"metadata": {"annotations": {"etcdsnap.io/a": "1", "etcdsnap.io/b": "x y"}}})
        );
    }
}
