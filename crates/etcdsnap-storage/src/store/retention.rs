//! Which snapshots a retention policy removes: a pure function shared by every store.
//!
//! Unlike K3s, the unit of retention is (name prefix, node, cluster): a prefix that happens to be
//! the beginning of another prefix (`etcd-snapshot` vs `etcd-snapshot-weekly`) does not compete
//! with it, one node's snapshots never push out another's, and snapshots of another cluster, or
//! of no known cluster, are never candidates.

use crate::record::SnapshotRecord;
use etcdsnap_api::{SnapshotName, timestamp_from_name};
use std::collections::BTreeMap;

/// What to keep.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// Base name (`on-demand`, `etcd-snapshot`, ...): only `<base>-<node>-<unix>[.ext]` match.
    pub base: String,
    /// Snapshots to keep per node; 0 disables retention.
    pub keep: usize,
    /// Only these nodes' snapshots are candidates (None: every node found).
    pub node: Option<String>,
    /// Only snapshots recorded with this cluster id are candidates (None: cluster not checked,
    /// for local directories, which belong to one node of one cluster).
    pub cluster_id: Option<String>,
}

impl RetentionPolicy {
    /// The rule in words, for a preview or a report.
    pub fn describe(&self) -> String {
        if self.keep == 0 {
            return format!("retention 0: every {}-* snapshot is kept", self.base);
        }
        let scope = match (&self.node, &self.cluster_id) {
            (Some(node), Some(cluster)) => format!("{}-{node}-<time> of cluster {cluster}", self.base),
            (Some(node), None) => format!("{}-{node}-<time>", self.base),
            (None, _) => format!("{}-<node>-<time> per node", self.base),
        };
        format!("keep the newest {} of {scope}", self.keep)
    }
}

/// Whether `name` is `<base>-<node>-<digits>` with an optional compression extension.
pub fn matches_base(name: &SnapshotName, base: &str, node: &str) -> bool {
    let stem = name.without_compression_extension();
    let Some(rest) = stem.strip_prefix(base).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(node).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `r` is one of the snapshots `policy` counts: ready, of its base name, of its node
/// and cluster when it names them.
pub fn in_scope(r: &SnapshotRecord, policy: &RetentionPolicy) -> bool {
    if !r.is_ready() || r.node_name.is_empty() {
        return false;
    }
    if policy.node.as_deref().is_some_and(|n| n != r.node_name) {
        return false;
    }
    if let Some(cluster) = &policy.cluster_id
        && r.cluster_id.as_deref() != Some(cluster.as_str())
    {
        return false;
    }
    matches_base(&r.name, &policy.base, &r.node_name)
}

/// Names to delete, oldest first. Snapshots are ordered by the time in their name (the
/// record's creation time when the name has none), newest kept.
pub fn plan_retention(records: &[SnapshotRecord], policy: &RetentionPolicy) -> Vec<SnapshotName> {
    if policy.keep == 0 {
        return Vec::new();
    }
    let mut groups: BTreeMap<&str, Vec<&SnapshotRecord>> = BTreeMap::new();
    for r in records.iter().filter(|r| in_scope(r, policy)) {
        groups.entry(r.node_name.as_str()).or_default().push(r);
    }
    let mut expired = Vec::new();
    for (_, mut group) in groups {
        group.sort_by_key(|r| {
            let ts = timestamp_from_name(r.name.as_str()).unwrap_or_else(|| r.created_at.as_second());
            std::cmp::Reverse((ts, r.name.clone()))
        });
        expired.extend(group.into_iter().skip(policy.keep).map(|r| r.name.clone()));
    }
    expired.sort_by_key(|n| (timestamp_from_name(n.as_str()), n.clone()));
    expired
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::test_record;

    fn names(v: Vec<SnapshotName>) -> Vec<String> {
        v.into_iter().map(|n| n.to_string()).collect()
    }

    fn policy(base: &str, keep: usize) -> RetentionPolicy {
        RetentionPolicy { base: base.into(), keep, node: None, cluster_id: None }
    }

    #[test]
    fn keeps_the_newest_per_node() {
        let recs = vec![
            test_record("on-demand-a-100", "a"),
            test_record("on-demand-a-300", "a"),
            test_record("on-demand-a-200", "a"),
            test_record("on-demand-b-150", "b"),
            test_record("on-demand-b-50", "b"),
        ];
        assert_eq!(
            names(plan_retention(&recs, &policy("on-demand", 1))),
            ["on-demand-b-50", "on-demand-a-100", "on-demand-a-200"]
        );
        assert_eq!(names(plan_retention(&recs, &policy("on-demand", 2))), ["on-demand-a-100"]);
        assert!(plan_retention(&recs, &policy("on-demand", 0)).is_empty());
        assert!(plan_retention(&recs, &policy("on-demand", 10)).is_empty());
    }

    #[test]
    fn prefixes_do_not_compete() {
        let recs = vec![
            test_record("etcd-snapshot-n-1", "n"),
            test_record("etcd-snapshot-n-2", "n"),
            test_record("etcd-snapshot-weekly-n-3", "n"),
            test_record("etcd-snapshot-weekly-n-4", "n"),
        ];
        assert_eq!(names(plan_retention(&recs, &policy("etcd-snapshot", 1))), ["etcd-snapshot-n-1"]);
        assert_eq!(names(plan_retention(&recs, &policy("etcd-snapshot-weekly", 1))), ["etcd-snapshot-weekly-n-3"]);
    }

    #[test]
    fn compressed_names_count_and_node_names_with_dashes_work() {
        let recs = vec![
            test_record("on-demand-node-1-10.zip", "node-1"),
            test_record("on-demand-node-1-20.zst", "node-1"),
            test_record("on-demand-node-1-30", "node-1"),
        ];
        assert_eq!(names(plan_retention(&recs, &policy("on-demand", 2))), ["on-demand-node-1-10.zip"]);
    }

    #[test]
    fn other_clusters_and_unknown_clusters_are_never_candidates() {
        let mut mine = test_record("s-n-1", "n");
        mine.cluster_id = Some("c1".into());
        let mut mine2 = test_record("s-n-2", "n");
        mine2.cluster_id = Some("c1".into());
        let mut theirs = test_record("s-n-0", "n");
        theirs.cluster_id = Some("c2".into());
        let unknown = test_record("s-n-00", "n");
        let recs = vec![mine, mine2, theirs, unknown];
        let p = RetentionPolicy { base: "s".into(), keep: 1, node: Some("n".into()), cluster_id: Some("c1".into()) };
        assert_eq!(names(plan_retention(&recs, &p)), ["s-n-1"]);
    }

    #[test]
    fn only_the_given_node_when_asked() {
        let recs = vec![
            test_record("s-a-1", "a"),
            test_record("s-a-2", "a"),
            test_record("s-b-1", "b"),
            test_record("s-b-2", "b"),
        ];
        let p = RetentionPolicy { base: "s".into(), keep: 1, node: Some("b".into()), cluster_id: None };
        assert_eq!(names(plan_retention(&recs, &p)), ["s-b-1"]);
    }

    #[test]
    fn failed_records_and_foreign_names_are_ignored() {
        let mut failed = test_record("s-n-1", "n");
        failed.outcome = crate::record::Outcome::Failed { message: "x".into() };
        let recs = vec![
            failed,
            test_record("s-n-2", "n"),
            test_record("s-n-3", "n"),
            test_record("s-n-x", "n"),
            test_record("other", "n"),
        ];
        assert_eq!(names(plan_retention(&recs, &policy("s", 1))), ["s-n-2"]);
    }

    #[test]
    fn base_matching() {
        let n = |s: &str| SnapshotName::parse(s).unwrap();
        assert!(matches_base(&n("on-demand-n1-5"), "on-demand", "n1"));
        assert!(matches_base(&n("on-demand-n1-5.zip"), "on-demand", "n1"));
        assert!(!matches_base(&n("on-demand-n1-"), "on-demand", "n1"));
        assert!(!matches_base(&n("on-demand-n12-5"), "on-demand", "n1"));
        assert!(!matches_base(&n("on-demandx-n1-5"), "on-demand", "n1"));
    }
}
