//! The legacy ConfigMap `kube-system/k3s-etcd-snapshots` (`rke2-etcd-snapshots` on RKE2), kept
//! for consumers that predate the custom resources: K3s's keys and JSON values, one entry per
//! snapshot, newest first.
//!
//! K3s discovered its size limit by being rejected and then trimming; etcdsnap bounds the map
//! before writing ([`bound`]): entries are dropped oldest first until the whole serialized object
//! fits `max_bytes` (default 900,000, well under the API server's 1 MiB) and `max_keys`. The
//! snapshots themselves stay referenced by their resources, so nothing is lost by dropping an
//! entry. Only the leader writes the ConfigMap. A ConfigMap left by K3s is adopted as is: its
//! labels and annotations are kept, its entries are replaced by the bounded, current set, and its
//! extra metadata is first imported into resources that have none (see `reconcile`).

use crate::convert::RecordResource;
use crate::resources::is_terminating;
use crate::{ApiError, CONFLICT_RETRIES, Kube, LegacySettings, status_is};
use etcdsnap_api::consts::{S3_STORAGE_NODE, SYSTEM_NAMESPACE};
use etcdsnap_api::names::MAX_CONFIGMAP_KEY_LEN;
use etcdsnap_api::{ETCDSnapshotFile, LegacyEntry, Program, StorageKind, is_valid_configmap_key, timestamp_from_name};
use etcdsnap_storage::SnapshotRecord;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use std::collections::{BTreeMap, BTreeSet};

/// Room left for what the API server adds to the object (uid, resourceVersion, timestamps, the
/// managedFields header); the per-key part of managedFields is counted with each entry.
pub const SERVER_METADATA_ALLOWANCE: usize = 2048;

fn configmaps(client: &Client) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), SYSTEM_NAMESPACE)
}

/// `program`'s legacy ConfigMap, if it exists (and this identity may read it).
pub async fn read(client: &Client, program: Program) -> Result<Option<ConfigMap>, ApiError> {
    let name = program.legacy_configmap();
    match configmaps(client).get_opt(name).await {
        Ok(cm) => Ok(cm),
        Err(e) if status_is(&e, |s| s.is_forbidden()) => {
            tracing::debug!("not allowed to read the legacy ConfigMap; no metadata back-fill");
            Ok(None)
        }
        Err(e) => Err(ApiError::new("get", format!("configmap {SYSTEM_NAMESPACE}/{name}"))(e)),
    }
}

/// Extra metadata held by the ConfigMap's entries, by key (what K3s back-fills into resources).
pub fn metadata_by_key(cm: &ConfigMap) -> BTreeMap<String, BTreeMap<String, String>> {
    cm.data
        .iter()
        .flatten()
        .filter_map(|(k, v)| {
            let meta = LegacyEntry::parse(v)?.extra_metadata()?;
            (!meta.is_empty()).then(|| (k.clone(), meta))
        })
        .collect()
}

/// One candidate entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// Unix seconds the snapshot was taken: the order in which entries are dropped.
    pub created: i64,
}

/// Which entries without a resource are known to be stale.
#[derive(Debug, Clone, Default)]
pub struct SyncScope {
    /// Nodes running etcdsnap (their resources are complete, so an entry without one is stale).
    pub live_nodes: BTreeSet<String>,
    /// S3 was listed by this pass (so S3 entries without a resource are stale).
    pub s3_listed: bool,
    /// Keys of snapshots just deleted on purpose.
    pub deleted: BTreeSet<String>,
}

/// The entries the ConfigMap should hold before bounding: one per live resource, plus entries of
/// nodes that have not reconciled with etcdsnap yet (K3s nodes mid-migration), which are kept
/// rather than lost.
pub fn desired_entries(
    resources: &[ETCDSnapshotFile],
    existing: Option<&ConfigMap>,
    scope: &SyncScope,
    program: Program,
) -> Vec<Entry> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for cr in resources.iter().filter(|c| !is_terminating(c)) {
        let Some(record) = SnapshotRecord::from_resource(cr, program) else {
            continue;
        };
        let key = record.key();
        entries.entry(key.clone()).or_insert(Entry {
            key,
            value: record.to_legacy_entry().to_json(),
            created: record.created_at.as_second(),
        });
    }
    for (key, value) in existing.and_then(|c| c.data.as_ref()).into_iter().flatten() {
        if entries.contains_key(key) || scope.deleted.contains(key) {
            continue;
        }
        let Some(entry) = LegacyEntry::parse(value) else {
            continue;
        };
        let is_s3 = key.starts_with(StorageKind::S3.prefix()) || entry.node_name == S3_STORAGE_NODE;
        let known_stale = if is_s3 { scope.s3_listed } else { scope.live_nodes.contains(&entry.node_name) };
        if known_stale {
            continue;
        }
        let created = entry
            .created_at
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_second())
            .ok()
            .or_else(|| timestamp_from_name(&entry.name))
            .unwrap_or(0);
        entries.insert(key.clone(), Entry { key: key.clone(), value: value.clone(), created });
    }
    entries.into_values().collect()
}

/// Bytes one entry adds to the serialized object: `"key":"value",` in `data`, and
/// `"f:key":{},` in the managedFields the API server keeps.
pub fn entry_cost(key: &str, value: &str) -> usize {
    let quoted = |s: &str| serde_json::to_string(s).map(|q| q.len()).unwrap_or(s.len() * 6 + 2);
    quoted(key) + 1 + quoted(value) + 1 + quoted(&format!("f:{key}")) + 4
}

/// What the bounding kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bounded {
    pub data: BTreeMap<String, String>,
    pub dropped: usize,
    /// Keys the API server would refuse (a very long snapshot name): left out, so that one
    /// snapshot cannot keep the whole ConfigMap from being written.
    pub invalid: Vec<String>,
    /// Estimated serialized size of the object, server additions included.
    pub estimated_bytes: usize,
}

/// Newest entries first, as many as fit `max_keys` and `max_bytes` (including `base_bytes`, the
/// object without entries); the rest, the oldest, are dropped.
pub fn bound(mut entries: Vec<Entry>, base_bytes: usize, max_bytes: usize, max_keys: usize) -> Bounded {
    entries.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.key.cmp(&b.key)));
    let mut out = Bounded { estimated_bytes: base_bytes, ..Default::default() };
    for entry in entries {
        if !is_valid_configmap_key(&entry.key) {
            out.invalid.push(entry.key);
            continue;
        }
        let cost = entry_cost(&entry.key, &entry.value);
        if out.data.len() >= max_keys || out.estimated_bytes + cost > max_bytes {
            out.dropped += 1;
            continue;
        }
        out.estimated_bytes += cost;
        out.data.insert(entry.key, entry.value);
    }
    out
}

/// Serialized size of `cm` without entries, plus room for the API server's own metadata.
pub fn base_bytes(cm: &ConfigMap) -> usize {
    let mut empty = cm.clone();
    empty.data = Some(BTreeMap::new());
    empty.binary_data = None;
    empty.metadata.managed_fields = None;
    serde_json::to_vec(&empty).map(|v| v.len()).unwrap_or(0) + SERVER_METADATA_ALLOWANCE
}

/// What a sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    pub entries: usize,
    pub dropped: usize,
    /// Entries left out because their key is not a valid ConfigMap key.
    pub invalid: Vec<String>,
    pub estimated_bytes: usize,
    pub written: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("configmap {SYSTEM_NAMESPACE}/{0} kept changing under etcdsnap ({CONFLICT_RETRIES} attempts)")]
    Contended(&'static str),
    #[error(transparent)]
    NotLeader(#[from] crate::leader::LeadershipLost),
}

/// What the ConfigMap should be, given what was observed.
#[derive(Debug, Clone)]
pub struct LegacyPlan {
    /// The ConfigMap to write (the existing object with its entries replaced, or a new one).
    pub configmap: ConfigMap,
    /// Whether it differs from what exists (false: no request is needed).
    pub write: bool,
    pub report: SyncReport,
}

/// Decides the ConfigMap from the cluster's resources and the ConfigMap as it is (a pure
/// function: observed state in, the action out).
pub fn plan(
    resources: &[ETCDSnapshotFile],
    existing: Option<&ConfigMap>,
    scope: &SyncScope,
    limits: &LegacySettings,
    program: Program,
) -> LegacyPlan {
    let mut cm = existing.cloned().unwrap_or_else(|| ConfigMap {
        metadata: ObjectMeta {
            name: Some(program.legacy_configmap().into()),
            namespace: Some(SYSTEM_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    });
    let bounded =
        bound(desired_entries(resources, existing, scope, program), base_bytes(&cm), limits.max_bytes, limits.max_keys);
    let report = SyncReport {
        entries: bounded.data.len(),
        dropped: bounded.dropped,
        invalid: bounded.invalid,
        estimated_bytes: bounded.estimated_bytes,
        written: false,
    };
    let write = existing.is_none() || cm.data.as_ref().map_or(!bounded.data.is_empty(), |d| *d != bounded.data);
    cm.data = Some(bounded.data);
    cm.metadata.managed_fields = None;
    LegacyPlan { configmap: cm, write, report }
}

/// Brings the ConfigMap in line with `resources` (the cluster's resources after this pass).
/// Writes only when the bounded entries differ from what it holds, and only while the leader's
/// `term` lasts; a write that lost a race is planned again from a fresh read.
pub async fn sync(
    kube: &Kube,
    resources: &[ETCDSnapshotFile],
    existing: Option<ConfigMap>,
    scope: &SyncScope,
    term: &crate::leader::LeaderTerm,
) -> Result<SyncReport, LegacyError> {
    let api = configmaps(&kube.client);
    let program = kube.settings.program;
    let name = program.legacy_configmap();
    let mut existing = existing;
    for _ in 0..CONFLICT_RETRIES {
        let planned = plan(resources, existing.as_ref(), scope, &kube.settings.legacy, program);
        let mut report = planned.report;
        for key in &report.invalid {
            tracing::warn!(
                key = %key,
                "legacy ConfigMap: entry left out: {} characters or characters the API server refuses in a ConfigMap key (at most {MAX_CONFIGMAP_KEY_LEN} of [-._a-zA-Z0-9]); its ETCDSnapshotFile resource is not affected",
                key.len()
            );
        }
        if !planned.write {
            return Ok(report);
        }
        if report.dropped > 0 {
            tracing::debug!(
                kept = report.entries,
                dropped = report.dropped,
                bytes = report.estimated_bytes,
                "legacy ConfigMap bounded: oldest entries left out (their resources remain)"
            );
        }
        term.check()?;
        let result = match &existing {
            Some(_) => api.replace(name, &PostParams::default(), &planned.configmap).await,
            None => api.create(&PostParams::default(), &planned.configmap).await,
        };
        match result {
            Ok(_) => {
                report.written = true;
                return Ok(report);
            }
            Err(e) if status_is(&e, |s| s.is_conflict() || s.is_already_exists()) => {
                existing = read(&kube.client, program).await?;
            }
            Err(e) => {
                return Err(ApiError::new("write", format!("configmap {SYSTEM_NAMESPACE}/{name}"))(e).into());
            }
        }
    }
    Err(LegacyError::Contended(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_record;

    fn entry(i: i64, value_len: usize) -> Entry {
        Entry { key: format!("local-a-n-{i}"), value: "v".repeat(value_len), created: i }
    }

    #[test]
    fn keeps_the_newest_within_the_key_limit() {
        let entries: Vec<Entry> = (0..10).map(|i| entry(i, 10)).collect();
        let b = bound(entries, 100, 1_000_000, 3);
        assert_eq!(b.data.keys().cloned().collect::<Vec<_>>(), ["local-a-n-7", "local-a-n-8", "local-a-n-9"]);
        assert_eq!(b.dropped, 7);
    }

    #[test]
    fn never_exceeds_the_byte_limit() {
        let entries: Vec<Entry> = (0..5000).map(|i| entry(i, 1800)).collect();
        let max = 900_000;
        let b = bound(entries.clone(), 3000, max, 100_000);
        assert!(b.estimated_bytes <= max);
        assert!(b.data.len() > 400 && b.data.len() < 500, "{}", b.data.len());
        // Every kept entry is newer than every dropped one.
        let oldest_kept = b.data.keys().filter_map(|k| k.rsplit('-').next()?.parse::<i64>().ok()).min();
        assert_eq!(oldest_kept, Some(5000 - b.data.len() as i64));
        // The estimate really bounds the JSON of the data map.
        let json = serde_json::to_vec(&b.data).map(|v| v.len()).unwrap_or(usize::MAX);
        assert!(json + 3000 <= max);
    }

    #[test]
    fn a_key_the_api_server_refuses_is_left_out_alone() {
        let mut entries: Vec<Entry> = (0..3).map(|i| entry(i, 10)).collect();
        let long = format!("local-{}", "x".repeat(250));
        entries.push(Entry { key: long.clone(), value: "v".into(), created: 99 });
        let b = bound(entries, 100, 1_000_000, 100);
        assert_eq!(b.invalid, [long]);
        assert_eq!(b.data.len(), 3);
    }

    #[test]
    fn values_with_quotes_are_counted_escaped() {
        let cost = entry_cost("k", r#"{"a":"b"}"#);
        assert_eq!(cost, 3 + 1 + (9 + 4 + 2) + 1 + 5 + 4);
    }

    #[test]
    fn entries_come_from_resources_and_unsynced_nodes_only() {
        let ours = test_record("a-n1-1700000000", "n1").to_resource(Program::K3s);
        let k3s_entry = |node: &str, name: &str| {
            LegacyEntry {
                name: name.into(),
                node_name: node.into(),
                created_at: "2023-11-14T22:13:20Z".into(),
                status: "successful".into(),
                ..Default::default()
            }
            .to_json()
        };
        let cm = ConfigMap {
            data: Some(BTreeMap::from([
                ("local-a-n1-1600000000".to_string(), k3s_entry("n1", "a-n1-1600000000")),
                ("local-a-k3s-1600000000".to_string(), k3s_entry("k3s", "a-k3s-1600000000")),
                ("local-a-k3s-1600000001".to_string(), k3s_entry("k3s", "a-k3s-1600000001")),
                ("s3-a-n1-1600000000".to_string(), k3s_entry("s3", "a-n1-1600000000")),
                ("local-junk".to_string(), "not json".to_string()),
            ])),
            ..Default::default()
        };
        let scope = SyncScope {
            live_nodes: BTreeSet::from(["n1".to_string()]),
            s3_listed: true,
            deleted: BTreeSet::from(["local-a-k3s-1600000001".to_string()]),
        };
        let entries = desired_entries(&[ours], Some(&cm), &scope, Program::K3s);
        let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["local-a-k3s-1600000000", "local-a-n1-1700000000"]);
        assert_eq!(entries[0].created, 1_700_000_000);
        let value = LegacyEntry::parse(&entries[1].value).unwrap_or_default();
        assert_eq!(value.name, "a-n1-1700000000");
        assert_eq!(value.status, "successful");
    }

    #[test]
    fn the_plan_writes_only_what_differs() {
        let limits = LegacySettings::default();
        let scope = SyncScope::default();
        let ours = test_record("a-n1-1700000000", "n1").to_resource(Program::K3s);
        let first = plan(std::slice::from_ref(&ours), None, &scope, &limits, Program::K3s);
        assert!(first.write, "a missing ConfigMap is created");
        assert_eq!(first.report.entries, 1);
        let again = plan(std::slice::from_ref(&ours), Some(&first.configmap), &scope, &limits, Program::K3s);
        assert!(!again.write, "nothing changed");
        let emptied = plan(
            &[],
            Some(&first.configmap),
            &SyncScope { s3_listed: true, live_nodes: BTreeSet::from(["n1".to_string()]), ..scope },
            &limits,
            Program::K3s,
        );
        assert!(emptied.write && emptied.report.entries == 0);
    }

    #[test]
    fn rke2_s_configmap_is_rke2_s_name() {
        let ours = test_record("a-n1-1700000000", "n1").to_resource(Program::Rke2);
        let planned = plan(&[ours], None, &SyncScope::default(), &LegacySettings::default(), Program::Rke2);
        assert_eq!(planned.configmap.metadata.name.as_deref(), Some("rke2-etcd-snapshots"));
        assert_eq!(planned.report.entries, 1);
    }

    #[test]
    fn metadata_is_read_back_for_back_fill() {
        let mut r = test_record("a-n1-1700000000", "n1");
        r.extra_metadata = Some(BTreeMap::from([("k".into(), "v".into())]));
        let cm =
            ConfigMap { data: Some(BTreeMap::from([(r.key(), r.to_legacy_entry().to_json())])), ..Default::default() };
        assert_eq!(metadata_by_key(&cm).get(&r.key()), r.extra_metadata.as_ref());
    }
}
