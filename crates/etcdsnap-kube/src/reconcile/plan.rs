//! The reconcile planner: a pure function of (what storage holds, what resources exist, who owns
//! which label, the time, what was just deleted) that decides every create, update and delete of
//! a pass. Every rule is unit-tested here, one test a rule.
//!
//! Rules kept from K3s: a resource matches a stored snapshot when its ConfigMap-style key and its
//! object name both match; failed saves are kept for 24 h after their error; S3 resources younger
//! than a minute are kept (another node may have just uploaded them); snapshots deleted on purpose
//! lose their resources at once.

use crate::convert::RecordResource;
use crate::resources::{is_terminating, merge_for_update, resource_key, storage_label};
use etcdsnap_api::consts::S3_STORAGE_NODE;
use etcdsnap_api::{ETCDSnapshotFile, ETCDSnapshotS3, Program};
use etcdsnap_storage::SnapshotRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long a failed save stays visible as a resource (K3s's errorTTL).
pub const FAILED_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a new S3 resource is protected from deletion (K3s's s3ReconcileTTL).
pub const NEW_S3_GRACE: Duration = Duration::from_secs(60);

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
    /// Whose names the resources carry: a resource is in a scope by this program's label.
    pub program: Program,
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
        let label = storage_label(cr, input.program);
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
        if storage_label(cr, input.program) != Some(scope.label.as_str()) || is_terminating(cr) {
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
            match merge_for_update(cr, &record.to_resource(input.program)) {
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
    plan.create.extend(wanted.values().map(|r| r.to_resource(input.program)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RecordResource;
    use crate::test_record;
    use etcdsnap_api::{ETCDSnapshotS3, StorageKind};
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
            stored(here.to_resource(Program::K3s), 1_700_000_000),
            stored(there.to_resource(Program::K3s), 1_700_000_000),
            stored(only_there.to_resource(Program::K3s), 1_700_000_000),
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
        program: Program,
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
                program: Program::K3s,
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
                program: self.program,
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
        c.existing = vec![stored(a.to_resource(Program::K3s), 1_700_000_000)];
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
        c.existing = c.local.iter().map(|r| stored(r.to_resource(Program::K3s), 1_700_000_000)).collect();
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
        c.existing = vec![
            stored(a.to_resource(Program::K3s), 1_700_000_000),
            stored(gone.to_resource(Program::K3s), 1_600_000_000),
        ];
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
        c.existing = vec![stored(old.to_resource(Program::K3s), 1_700_000_000)];
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
        c.existing = vec![
            stored(failed.to_resource(Program::K3s), c.now - 3600),
            stored(old_failure.to_resource(Program::K3s), c.now - 25 * 3600),
        ];
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
        c.existing = vec![
            stored(young.to_resource(Program::K3s), c.now - 30),
            stored(old.to_resource(Program::K3s), c.now - 120),
        ];
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
        c.existing = vec![stored(s3.to_resource(Program::K3s), 1), stored(other_local.to_resource(Program::K3s), 1)];
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
        c.existing = vec![stored(failed.to_resource(Program::K3s), c.now), stored(ok.to_resource(Program::K3s), 1)];
        c.orphans = vec!["gone".into()];
        assert_eq!(c.plan().delete.len(), 2);
    }

    #[test]
    fn terminating_resources_are_left_to_their_finalizers() {
        let mut c = Case::new();
        let gone = test_record("a-n1-1600000000", "n1");
        let mut cr = stored(gone.to_resource(Program::K3s), 1);
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
        c.existing = vec![stored(legacy.to_resource(Program::K3s), 1)];
        c.s3 = Some(vec![mine.clone()]);
        let p = c.plan();
        // K3s renamed S3 resources when it started hashing the uploader: replace, not duplicate.
        assert_eq!(names(&p.create), [mine.cr_name()]);
        assert_eq!(names(&p.delete), [legacy.cr_name()]);
    }

    #[test]
    fn on_rke2_only_rke2_s_label_puts_a_resource_in_scope() {
        let mut c = Case::new();
        c.program = Program::Rke2;
        let a = test_record("a-n1-1700000000", "n1");
        let k3s_only = test_record("a-n1-1600000000", "n1");
        // K3s's label alone: not RKE2's resource (RKE2's cleanup judges it), never touched here.
        c.existing =
            vec![stored(a.to_resource(Program::Rke2), 1_700_000_000), stored(k3s_only.to_resource(Program::K3s), 1)];
        let b = test_record("a-n1-1700000001", "n1");
        c.local = vec![a, b.clone()];
        let p = c.plan();
        assert_eq!(names(&p.create), [b.cr_name()]);
        let labels = p.create[0].metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.keys().collect::<Vec<_>>(), ["etcd.rke2.cattle.io/snapshot-storage-node"]);
        assert!(p.update.is_empty() && p.delete.is_empty(), "{p:?}");
        assert_eq!(p.unchanged, 1);
    }
}
