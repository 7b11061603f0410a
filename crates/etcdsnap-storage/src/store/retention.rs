//! Which snapshots a retention policy removes: a pure function shared by every store.
//!
//! Unlike K3s, the unit of retention is (name prefix, node, cluster): a prefix that happens to be
//! the beginning of another prefix (`etcd-snapshot` vs `etcd-snapshot-weekly`) does not compete
//! with it, one node's snapshots never push out another's, and snapshots of another cluster, or
//! of no known cluster, are never candidates.

use super::keep::{KeepPolicy, KeepReason};
use crate::record::SnapshotRecord;
use etcdsnap_api::{SnapshotName, timestamp_from_name};
use std::collections::BTreeMap;

/// What to keep.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    /// Base name (`on-demand`, `etcd-snapshot`, ...): only `<base>-<node>-<unix>[.ext]` match.
    pub base: String,
    /// What to keep per node (restic's rules, [`KeepPolicy`]); no rule disables retention.
    pub keep: KeepPolicy,
    /// Only these nodes' snapshots are candidates (None: every node found).
    pub node: Option<String>,
    /// Only snapshots recorded with this cluster id are candidates (None: cluster not checked,
    /// for local directories, which belong to one node of one cluster).
    pub cluster_id: Option<String>,
}

impl RetentionPolicy {
    /// The rule in words, for a preview or a report.
    pub fn describe(&self) -> String {
        if self.keep.is_empty() {
            return format!("no retention rule: every {}-* snapshot is kept", self.base);
        }
        let scope = match (&self.node, &self.cluster_id) {
            (Some(node), Some(cluster)) => format!("{}-{node}-<time> of cluster {cluster}", self.base),
            (Some(node), None) => format!("{}-{node}-<time>", self.base),
            (None, _) => format!("{}-<node>-<time> per node", self.base),
        };
        match self.keep {
            KeepPolicy { last, .. } if self.keep == KeepPolicy::last(last) => {
                format!("keep the newest {last} of {scope}")
            }
            keep => format!("keep {keep} of {scope}"),
        }
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

/// One snapshot the policy counts, and why it stays (no reason: it goes).
#[derive(Debug, Clone)]
pub struct Decision {
    pub name: SnapshotName,
    /// The time the rules judge: the one in the name, else the record's creation time.
    pub time: jiff::Timestamp,
    pub reasons: Vec<KeepReason>,
}

impl Decision {
    pub fn kept(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Every snapshot `policy` counts, with the reasons it is kept, per node newest first. Nothing
/// when the policy has no rule (nothing is counted: everything stays).
pub fn decide(records: &[SnapshotRecord], policy: &RetentionPolicy) -> Vec<Decision> {
    if policy.keep.is_empty() {
        return Vec::new();
    }
    let mut groups: BTreeMap<&str, Vec<(jiff::Timestamp, &SnapshotName)>> = BTreeMap::new();
    for r in records.iter().filter(|r| in_scope(r, policy)) {
        let time = timestamp_from_name(r.name.as_str())
            .and_then(|s| jiff::Timestamp::from_second(s).ok())
            .unwrap_or(r.created_at);
        groups.entry(r.node_name.as_str()).or_default().push((time, &r.name));
    }
    let mut decisions = Vec::new();
    for (_, mut group) in groups {
        group.sort_by(|a, b| b.cmp(a));
        group.dedup_by(|a, b| a.1 == b.1);
        let times: Vec<jiff::Timestamp> = group.iter().map(|(t, _)| *t).collect();
        let reasons = policy.keep.apply(&times);
        decisions.extend(group.into_iter().zip(reasons).map(|((time, name), reasons)| Decision {
            name: name.clone(),
            time,
            reasons,
        }));
    }
    decisions
}

/// Names to delete, oldest first. Snapshots are judged by the time in their name (the
/// record's creation time when the name has none).
pub fn plan_retention(records: &[SnapshotRecord], policy: &RetentionPolicy) -> Vec<SnapshotName> {
    let mut expired: Vec<(jiff::Timestamp, SnapshotName)> =
        decide(records, policy).into_iter().filter(|d| !d.kept()).map(|d| (d.time, d.name)).collect();
    expired.sort();
    expired.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::test_record;

    fn names(v: Vec<SnapshotName>) -> Vec<String> {
        v.into_iter().map(|n| n.to_string()).collect()
    }

    fn policy(base: &str, keep: usize) -> RetentionPolicy {
        RetentionPolicy { base: base.into(), keep: KeepPolicy::last(keep), node: None, cluster_id: None }
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
        let p = RetentionPolicy {
            base: "s".into(),
            keep: KeepPolicy::last(1),
            node: Some("n".into()),
            cluster_id: Some("c1".into()),
        };
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
        let p =
            RetentionPolicy { base: "s".into(), keep: KeepPolicy::last(1), node: Some("b".into()), cluster_id: None };
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
    fn age_rules_judge_each_node_apart_by_the_time_in_the_name() {
        // Node a: two on 2023-11-14 (1699920000 is 00:00 UTC), one on the 15th; node b: one.
        let recs = vec![
            test_record("s-a-1699920000", "a"),
            test_record("s-a-1699930000", "a"),
            test_record("s-a-1700010000", "a"),
            test_record("s-b-1699920000", "b"),
        ];
        let p = RetentionPolicy {
            base: "s".into(),
            keep: KeepPolicy { daily: 1, ..KeepPolicy::default() },
            node: None,
            cluster_id: None,
        };
        assert_eq!(names(plan_retention(&recs, &p)), ["s-a-1699920000", "s-a-1699930000"]);
        let p = RetentionPolicy { keep: KeepPolicy { daily: 2, ..KeepPolicy::default() }, ..p };
        assert_eq!(names(plan_retention(&recs, &p)), ["s-a-1699920000"]);
        let d = decide(&recs, &p);
        let why: Vec<String> = d
            .iter()
            .map(|d| format!("{} {}", d.name, d.reasons.first().map(ToString::to_string).unwrap_or_default()))
            .collect();
        assert_eq!(
            why,
            [
                "s-a-1700010000 daily snapshot",
                "s-a-1699930000 daily snapshot",
                "s-a-1699920000 ",
                "s-b-1699920000 daily snapshot"
            ]
        );
        assert_eq!(p.describe(), "keep daily 2 of s-<node>-<time> per node");
        let none = RetentionPolicy { keep: KeepPolicy::default(), ..p };
        assert!(decide(&recs, &none).is_empty());
        assert_eq!(none.describe(), "no retention rule: every s-* snapshot is kept");
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
