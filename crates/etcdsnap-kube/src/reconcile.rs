//! Reconcile: storage is the truth, resources follow it. One pass lists the stores and the
//! resources, then creates what is missing, fixes what differs and deletes what no longer exists.
//!
//! The planner ([`plan`]) is a pure function of (what storage holds, what resources exist, who owns
//! which label, the time, what was just deleted), so every rule is unit-tested; the executor
//! ([`execute`]) only carries the plan out. A pass that finds nothing to change makes no write.
//!
//! Rules kept from K3s: a resource matches a stored snapshot when its ConfigMap-style key and its
//! object name both match; failed saves are kept for 24 h after their error; S3 resources younger
//! than a minute are kept (another node may have just uploaded them); snapshots deleted on purpose
//! lose their resources at once.

use crate::convert::RecordResource;
use crate::leader::{LeaderTerm, LeadershipLost};
use crate::lease::NodeLiveness;
use crate::resources::{self, Written, is_terminating, merge_for_update, resource_key, storage_label};
use crate::{ApiError, Kube, legacy};
use etcdsnap_api::consts::{LABEL_STORAGE_NODE, S3_STORAGE_NODE};
use etcdsnap_api::{ETCDSnapshotFile, ETCDSnapshotS3, StorageKind};
use etcdsnap_storage::SnapshotRecord;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long a failed save stays visible as a resource (K3s's errorTTL).
pub const FAILED_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a new S3 resource is protected from deletion (K3s's s3ReconcileTTL).
pub const NEW_S3_GRACE: Duration = Duration::from_secs(60);
/// Writes in flight at once during a reconcile.
const WRITE_CONCURRENCY: usize = 16;

/// One label value whose resources this pass manages, and what storage says should exist there.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    /// Value of the storage-node label.
    pub label: String,
    pub desired: &'a [SnapshotRecord],
    /// Keep failed-save resources for [`FAILED_TTL`] (not for departed nodes).
    pub keep_recent_failures: bool,
    /// Keep resources younger than [`NEW_S3_GRACE`] (S3 only).
    pub keep_new: bool,
    /// Only resources of this S3 location (endpoint, bucket, folder) are managed by the scope:
    /// storage that was not listed says nothing about its resources.
    pub location: Option<&'a ETCDSnapshotS3>,
}

/// Everything the planner looks at.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub scopes: Vec<Scope<'a>>,
    /// Every resource listed (resources outside the scopes are only touched by `deleted`).
    pub existing: &'a [ETCDSnapshotFile],
    /// Keys ([`etcdsnap_api::configmap_key`]) of snapshots just deleted on purpose.
    pub deleted: &'a BTreeSet<String>,
    /// This node's name: local resources of other nodes are never deleted through `deleted`.
    pub node_name: &'a str,
    /// The S3 location this node's operations use: S3 resources are deleted through `deleted`
    /// only when they are of this location.
    pub s3_location: Option<&'a ETCDSnapshotS3>,
    /// Extra metadata kept in the legacy ConfigMap, by key, for records that have none.
    pub legacy_metadata: &'a BTreeMap<String, BTreeMap<String, String>>,
    pub now: jiff::Timestamp,
}

/// What to write.
#[derive(Debug, Default, Clone)]
pub struct Plan {
    pub create: Vec<ETCDSnapshotFile>,
    /// Existing objects with etcdsnap's view applied (resourceVersion kept).
    pub update: Vec<ETCDSnapshotFile>,
    /// Existing objects to delete.
    pub delete: Vec<ETCDSnapshotFile>,
    pub unchanged: usize,
    /// Stale but protected by a TTL.
    pub kept: usize,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// Decides every create, update and delete of one pass.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut plan = Plan::default();
    let mut handled: BTreeSet<&str> = BTreeSet::new();
    for scope in &input.scopes {
        plan_scope(input, scope, &mut plan, &mut handled);
    }
    // Explicit deletions outside the managed scopes: S3 resources of snapshots this node just
    // removed from S3 (any node may delete what it removed), and this node's own.
    for cr in input.existing {
        let name = cr.metadata.name.as_deref().unwrap_or_default();
        if handled.contains(name) || is_terminating(cr) || !input.deleted.contains(&resource_key(cr)) {
            continue;
        }
        let label = storage_label(cr);
        let ours = match label {
            Some(S3_STORAGE_NODE) => input.s3_location.is_some_and(|loc| same_location(cr.spec.s3.as_ref(), loc)),
            other => other == Some(input.node_name),
        };
        if ours {
            plan.delete.push(cr.clone());
        }
    }
    plan.create.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    plan.update.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    plan.delete.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    plan
}

fn plan_scope<'a>(input: &PlanInput<'a>, scope: &Scope<'_>, plan: &mut Plan, handled: &mut BTreeSet<&'a str>) {
    let mut wanted: BTreeMap<String, SnapshotRecord> = BTreeMap::new();
    for record in scope.desired {
        let mut record = record.clone();
        if record.extra_metadata.as_ref().is_none_or(|m| m.is_empty())
            && let Some(meta) = input.legacy_metadata.get(&record.key())
        {
            record.extra_metadata = Some(meta.clone());
        }
        wanted.entry(record.key()).or_insert(record);
    }
    for cr in input.existing {
        if storage_label(cr) != Some(scope.label.as_str()) || is_terminating(cr) {
            continue;
        }
        if scope.location.is_some_and(|loc| !same_location(cr.spec.s3.as_ref(), loc)) {
            continue; // another folder, bucket or endpoint: not listed, not ours to judge
        }
        let name = cr.metadata.name.as_deref().unwrap_or_default();
        handled.insert(name);
        let key = resource_key(cr);
        if let Some(record) = wanted.get(&key)
            && record.cr_name() == name
        {
            match merge_for_update(cr, &record.to_resource()) {
                Some(merged) => plan.update.push(merged),
                None => plan.unchanged += 1,
            }
            wanted.remove(&key);
            continue;
        }
        if !input.deleted.contains(&key) && is_protected(cr, scope, input.now) {
            plan.kept += 1;
            continue;
        }
        plan.delete.push(cr.clone());
    }
    plan.create.extend(wanted.values().map(SnapshotRecord::to_resource));
}

/// Whether a resource's `spec.s3` names the S3 location `listed`: same endpoint, bucket and
/// folder (a missing folder and an empty one are the same; so are leading and trailing `/`).
pub fn same_location(spec: Option<&ETCDSnapshotS3>, listed: &ETCDSnapshotS3) -> bool {
    let Some(spec) = spec else { return false };
    let text = |v: &Option<String>| v.as_deref().unwrap_or_default().trim().to_string();
    let folder = |v: &Option<String>| text(v).trim_matches('/').to_string();
    text(&spec.endpoint) == text(&listed.endpoint)
        && text(&spec.bucket) == text(&listed.bucket)
        && folder(&spec.prefix) == folder(&listed.prefix)
}

/// Whether a resource with no snapshot behind it is kept for now.
fn is_protected(cr: &ETCDSnapshotFile, scope: &Scope<'_>, now: jiff::Timestamp) -> bool {
    let younger_than = |t: jiff::Timestamp, ttl: Duration| {
        jiff::SignedDuration::try_from(ttl)
            .ok()
            .and_then(|ttl| t.checked_add(ttl).ok())
            .is_some_and(|until| now < until)
    };
    if scope.keep_recent_failures
        && let Some(time) = cr.status.as_ref().and_then(|s| s.error.as_ref()).and_then(|e| e.time.as_ref())
        && younger_than(time.0, FAILED_TTL)
    {
        return true;
    }
    scope.keep_new && cr.metadata.creation_timestamp.as_ref().is_some_and(|t| younger_than(t.0, NEW_S3_GRACE))
}

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

    let creates = futures::stream::iter(plan.create.into_iter().map(|cr| async move {
        fence(leader)?;
        let written = match resources::create(client, &cr, node).await {
            Ok(created) => Ok((Written::Created, created)),
            Err(e) if e.is_conflict() => {
                return resources::upsert(client, &cr, node, leader)
                    .await
                    .map(|w| (w, cr))
                    .map_err(ReconcileError::from);
            }
            Err(e) => Err(e),
        };
        written.map_err(ReconcileError::Write)
    }))
    .buffer_unordered(WRITE_CONCURRENCY);
    let updates = futures::stream::iter(plan.update.into_iter().map(|cr| async move {
        fence(leader)?;
        let written = match resources::replace(client, &cr).await {
            Ok(updated) => Ok((Written::Updated, updated)),
            Err(e) if e.is_conflict() => {
                return resources::upsert(client, &cr, node, leader)
                    .await
                    .map(|w| (w, cr))
                    .map_err(ReconcileError::from);
            }
            Err(e) => Err(e),
        };
        written.map_err(ReconcileError::Write)
    }))
    .buffer_unordered(WRITE_CONCURRENCY);
    let results: Vec<Result<(Written, ETCDSnapshotFile), ReconcileError>> = creates.chain(updates).collect().await;
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
    let legacy_map = legacy::read(&kube.client).await.map_err(ReconcileError::Read)?;
    let legacy_metadata = legacy_map.as_ref().map(legacy::metadata_by_key).unwrap_or_default();

    // The leader looks at every resource (S3, departed nodes, the ConfigMap); a node only at its
    // own, plus S3's when it just deleted S3 snapshots on purpose.
    let s3_deleted = state.deleted.iter().any(|k| k.starts_with(StorageKind::S3.prefix()));
    let selector = match (leader.is_some(), s3_deleted) {
        (true, _) => None,
        (false, true) => Some(format!("{LABEL_STORAGE_NODE} in ({node},{S3_STORAGE_NODE})")),
        (false, false) => Some(format!("{LABEL_STORAGE_NODE}={node}")),
    };
    let existing = resources::list(&kube.client, selector.as_deref()).await.map_err(ReconcileError::Read)?;

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
        orphaned = view.liveness.orphaned_labels(&existing, &node, kube.settings.orphan_ttl);
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
    report.errors = applied.errors;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordResource;
    use crate::test_record;
    use etcdsnap_api::ETCDSnapshotS3;
    use etcdsnap_storage::Outcome;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn t(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).unwrap_or_default()
    }

    fn stored(cr: ETCDSnapshotFile, created: i64) -> ETCDSnapshotFile {
        let mut cr = cr;
        cr.metadata.uid = Some(format!("uid-{}", cr.metadata.name.clone().unwrap_or_default()));
        cr.metadata.resource_version = Some("1".into());
        cr.metadata.creation_timestamp = Some(Time(t(created)));
        cr
    }

    /// The S3 location the test passes list.
    fn listed_folder() -> ETCDSnapshotS3 {
        ETCDSnapshotS3 { bucket: Some("bucket".into()), prefix: Some("folder".into()), ..Default::default() }
    }

    fn s3_record_in(name: &str, node: &str, folder: &str) -> SnapshotRecord {
        let mut r = test_record(name, node);
        r.storage = StorageKind::S3;
        r.location = format!("s3://bucket/{folder}/{name}");
        r.s3 = Some(ETCDSnapshotS3 { prefix: Some(folder.into()), ..listed_folder() });
        r
    }

    fn s3_record(name: &str, node: &str) -> SnapshotRecord {
        s3_record_in(name, node, "folder")
    }

    #[test]
    fn resources_of_s3_locations_that_were_not_listed_stay() {
        let mut c = Case::new();
        let here = s3_record("a-n1-1700000000", "n1");
        // The same snapshot name in another folder of the same bucket, and one only there.
        let there = s3_record_in("a-n1-1700000000", "n1", "two");
        let only_there = s3_record_in("a-n2-1700000000", "n2", "two");
        c.existing = vec![
            stored(here.to_resource(), 1_700_000_000),
            stored(there.to_resource(), 1_700_000_000),
            stored(only_there.to_resource(), 1_700_000_000),
        ];
        // Listed: the folder holds nothing any more, and this node just deleted a-n1 there.
        c.s3 = Some(Vec::new());
        c.deleted = BTreeSet::from([here.key()]);
        let p = c.plan();
        assert_eq!(names(&p.delete), [here.cr_name()], "only the listed folder's resource goes");
        assert!(p.create.is_empty() && p.update.is_empty());
        assert!(same_location(
            here.s3.as_ref(),
            &ETCDSnapshotS3 { prefix: Some("/folder/".into()), ..listed_folder() }
        ));
        assert!(!same_location(None, &listed_folder()));
    }

    struct Case {
        local: Vec<SnapshotRecord>,
        s3: Option<Vec<SnapshotRecord>>,
        existing: Vec<ETCDSnapshotFile>,
        deleted: BTreeSet<String>,
        orphans: Vec<String>,
        now: i64,
    }

    impl Case {
        fn new() -> Case {
            Case {
                local: Vec::new(),
                s3: None,
                existing: Vec::new(),
                deleted: BTreeSet::new(),
                orphans: Vec::new(),
                now: 1_800_000_000,
            }
        }

        fn plan(&self) -> Plan {
            let scope = |label: &str, desired, keep_recent_failures, keep_new, location| Scope {
                label: label.into(),
                desired,
                keep_recent_failures,
                keep_new,
                location,
            };
            let folder = listed_folder();
            let mut scopes = vec![scope("n1", &self.local, true, false, None)];
            if let Some(s3) = &self.s3 {
                scopes.push(scope("s3", s3, true, true, Some(&folder)));
            }
            for o in &self.orphans {
                scopes.push(scope(o, &[], false, false, None));
            }
            let legacy = BTreeMap::from([(
                "local-a-n1-1700000002".to_string(),
                BTreeMap::from([("from".to_string(), "legacy".to_string())]),
            )]);
            plan(&PlanInput {
                scopes,
                existing: &self.existing,
                deleted: &self.deleted,
                node_name: "n1",
                s3_location: Some(&folder),
                legacy_metadata: &legacy,
                now: t(self.now),
            })
        }
    }

    fn names(v: &[ETCDSnapshotFile]) -> Vec<String> {
        v.iter().filter_map(|c| c.metadata.name.clone()).collect()
    }

    #[test]
    fn missing_resources_are_created_and_matching_ones_left_alone() {
        let mut c = Case::new();
        let a = test_record("a-n1-1700000000", "n1");
        let b = test_record("a-n1-1700000001", "n1");
        c.existing = vec![stored(a.to_resource(), 1_700_000_000)];
        c.local = vec![a, b.clone()];
        let p = c.plan();
        assert_eq!(names(&p.create), [b.cr_name()]);
        assert!(p.update.is_empty() && p.delete.is_empty());
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn nothing_changed_means_an_empty_plan() {
        let mut c = Case::new();
        c.local = (0..50).map(|i| test_record(&format!("a-n1-{}", 1_700_000_100 + i), "n1")).collect();
        c.existing = c.local.iter().map(|r| stored(r.to_resource(), 1_700_000_000)).collect();
        let p = c.plan();
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.unchanged, 50);
    }

    #[test]
    fn differing_resources_are_updated_and_vanished_ones_deleted() {
        let mut c = Case::new();
        let a = test_record("a-n1-1700000000", "n1");
        let mut changed = a.clone();
        changed.size = 999;
        let gone = test_record("a-n1-1600000000", "n1");
        c.existing = vec![stored(a.to_resource(), 1_700_000_000), stored(gone.to_resource(), 1_600_000_000)];
        c.local = vec![changed];
        let p = c.plan();
        assert_eq!(names(&p.update), [a.cr_name()]);
        assert_eq!(p.update[0].status.as_ref().and_then(|s| s.size.clone()).map(|q| q.0), Some("999".to_string()));
        assert_eq!(names(&p.delete), [gone.cr_name()]);
    }

    #[test]
    fn a_resource_whose_name_no_longer_matches_is_replaced() {
        let mut c = Case::new();
        let mut old = test_record("a-n1-1700000000", "n1");
        old.location = "file:///old/dir/a-n1-1700000000".into();
        let new = test_record("a-n1-1700000000", "n1");
        c.existing = vec![stored(old.to_resource(), 1_700_000_000)];
        c.local = vec![new.clone()];
        let p = c.plan();
        assert_eq!(names(&p.create), [new.cr_name()]);
        assert_eq!(names(&p.delete), [old.cr_name()]);
    }

    #[test]
    fn failed_saves_are_kept_for_a_day_unless_deleted_on_purpose() {
        let mut c = Case::new();
        let mut failed = test_record("a-n1-1700000000", "n1");
        failed.location.clear();
        failed.created_at = t(c.now - 3600);
        failed.outcome = Outcome::Failed { message: "boom".into() };
        let mut old_failure = failed.clone();
        old_failure.name = etcdsnap_api::SnapshotName::parse("a-n1-1600000000").unwrap();
        old_failure.created_at = t(c.now - 25 * 3600);
        c.existing =
            vec![stored(failed.to_resource(), c.now - 3600), stored(old_failure.to_resource(), c.now - 25 * 3600)];
        let p = c.plan();
        assert_eq!(names(&p.delete), [old_failure.cr_name()]);
        assert_eq!(p.kept, 1);
        c.deleted.insert(failed.key());
        let p = c.plan();
        assert_eq!(p.delete.len(), 2);
    }

    #[test]
    fn new_s3_resources_get_a_minute_of_grace() {
        let mut c = Case::new();
        let young = s3_record("a-n2-1700000000", "n2");
        let old = s3_record("a-n2-1700000001", "n2");
        c.existing = vec![stored(young.to_resource(), c.now - 30), stored(old.to_resource(), c.now - 120)];
        c.s3 = Some(Vec::new());
        let p = c.plan();
        assert_eq!(names(&p.delete), [old.cr_name()]);
        assert_eq!(p.kept, 1);
    }

    #[test]
    fn s3_resources_are_untouched_unless_s3_is_managed_or_deleted_on_purpose() {
        let mut c = Case::new();
        let s3 = s3_record("a-n2-1700000000", "n2");
        let other_local = test_record("a-n2-1700000000", "n2");
        c.existing = vec![stored(s3.to_resource(), 1), stored(other_local.to_resource(), 1)];
        assert!(c.plan().is_empty());
        c.deleted.insert(s3.key());
        c.deleted.insert(other_local.key());
        // Another node's local resource is never deleted by this node's explicit deletion.
        assert_eq!(names(&c.plan().delete), [s3.cr_name()]);
    }

    #[test]
    fn departed_nodes_lose_all_their_resources() {
        let mut c = Case::new();
        let mut failed = test_record("a-gone-1800000000", "gone");
        failed.outcome = Outcome::Failed { message: "x".into() };
        failed.created_at = t(c.now - 10);
        let ok = test_record("a-gone-1700000000", "gone");
        c.existing = vec![stored(failed.to_resource(), c.now), stored(ok.to_resource(), 1)];
        c.orphans = vec!["gone".into()];
        assert_eq!(c.plan().delete.len(), 2);
    }

    #[test]
    fn terminating_resources_are_left_to_their_finalizers() {
        let mut c = Case::new();
        let gone = test_record("a-n1-1600000000", "n1");
        let mut cr = stored(gone.to_resource(), 1);
        cr.metadata.deletion_timestamp = Some(Time(t(c.now)));
        c.existing = vec![cr];
        assert!(c.plan().is_empty());
    }

    #[test]
    fn legacy_metadata_fills_records_without_any() {
        let mut c = Case::new();
        c.local = vec![test_record("a-n1-1700000002", "n1")];
        let p = c.plan();
        assert_eq!(p.create[0].spec.metadata, Some(BTreeMap::from([("from".to_string(), "legacy".to_string())])));
    }

    #[test]
    fn s3_records_match_their_resources_by_uploader_digest() {
        let mut c = Case::new();
        let mine = s3_record("a-n1-1700000000", "n1");
        let legacy = s3_record("a-n1-1700000000", "");
        c.existing = vec![stored(legacy.to_resource(), 1)];
        c.s3 = Some(vec![mine.clone()]);
        let p = c.plan();
        // K3s renamed S3 resources when it started hashing the uploader: replace, not duplicate.
        assert_eq!(names(&p.create), [mine.cr_name()]);
        assert_eq!(names(&p.delete), [legacy.cr_name()]);
    }
}
