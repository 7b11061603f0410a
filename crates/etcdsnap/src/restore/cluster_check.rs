//! `restore-check`: whether a restored cluster is the snapshot's. Every recorded member answers
//! and is healthy, all are in one cluster under one leader, at one revision, with one HashKV,
//! and the key space holds as many Kubernetes keys of each resource type as the snapshot
//! recorded (and, at the snapshot's own revision, its recorded HashKV).

use etcdsnap_api::KvHash;
use etcdsnap_api::consts::KUBERNETES_PREFIX;
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::etcd::{EtcdConfig, EtcdError, MemberStatus};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// One endpoint as last seen.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointState {
    pub endpoint: String,
    /// The member's name in its own member list, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_kv: Option<KvHash>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One verdict line.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// What `restore-check` found.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCheck {
    pub snapshot: String,
    pub endpoints: Vec<EndpointState>,
    pub checks: Vec<Verdict>,
    pub ok: bool,
}

impl ClusterCheck {
    fn push(&mut self, check: &'static str, ok: bool, detail: impl Into<String>) {
        self.ok &= ok;
        self.checks.push(Verdict { check, ok, detail: detail.into() });
    }

    /// The failed checks' details, for an error message.
    pub fn failures(&self) -> Vec<String> {
        self.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.check, c.detail)).collect()
    }
}

/// Checks the cluster behind `etcd.endpoints` against `record`, waiting up to `wait` for every
/// member to answer with one leader and one revision.
pub async fn check(etcd: &EtcdConfig, record: &SnapshotRecord, wait: Duration) -> ClusterCheck {
    let deadline = Instant::now() + wait;
    let (mut states, mut statuses) = poll(etcd).await;
    while !settled(&statuses) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (states, statuses) = poll(etcd).await;
    }
    let mut report =
        ClusterCheck { snapshot: record.name.to_string(), endpoints: states, checks: Vec::new(), ok: true };
    let healthy: Vec<&str> =
        report.endpoints.iter().filter(|s| s.error.is_none()).map(|s| s.endpoint.as_str()).collect();
    let down: Vec<String> =
        report.endpoints.iter().filter_map(|s| s.error.as_ref().map(|e| format!("{} ({e})", who(s)))).collect();
    report.push(
        "healthy",
        down.is_empty(),
        match down.is_empty() {
            true => format!("{} endpoints answer", healthy.len()),
            false => format!("not answering: {}", down.join("; ")),
        },
    );
    let etcd_info = record.etcd.as_ref();
    let recorded: BTreeSet<String> = etcd_info
        .and_then(|e| e.members.as_ref())
        .map(|m| m.iter().filter(|m| !m.is_learner).map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    let answered: BTreeSet<String> = report.endpoints.iter().filter_map(|s| s.name.clone()).collect();
    match recorded.is_empty() {
        true => report.push("members", true, "the snapshot records no members: not compared"),
        false => {
            let missing: Vec<&String> = recorded.difference(&answered).collect();
            let extra: Vec<&String> = answered.difference(&recorded).collect();
            let ok = missing.is_empty() && extra.is_empty();
            report.push(
                "members",
                ok,
                match ok {
                    true => format!("{} recorded members answer", recorded.len()),
                    false => format!("recorded but not answering: {missing:?}; answering but not recorded: {extra:?}"),
                },
            );
        }
    }
    same(&mut report, "one cluster", |s| s.cluster_id.clone());
    same(&mut report, "one leader", |s| s.leader.clone());
    if !same(&mut report, "one revision", |s| s.revision.map(|r| r.to_string())) || statuses.is_empty() {
        return report;
    }
    let revision = statuses[0].revision;
    hashes(etcd, &mut report, revision).await;
    if let (Some(recorded), Some(ours)) = (etcd_info.and_then(|e| e.hash_kv), report.endpoints[0].hash_kv)
        && etcd_info.is_some_and(|e| e.revision == revision)
    {
        report.push(
            "snapshot hashkv",
            recorded.hash == ours.hash,
            format!("recorded {} at revision {revision}, restored {}", recorded.hash, ours.hash),
        );
    }
    key_counts(etcd, &mut report, record, revision).await;
    report
}

/// Every endpoint's status and name; the statuses of those that answered.
async fn poll(etcd: &EtcdConfig) -> (Vec<EndpointState>, Vec<MemberStatus>) {
    let mut states = Vec::new();
    let mut statuses = Vec::new();
    for endpoint in &etcd.endpoints {
        let one = EtcdConfig { endpoints: vec![endpoint.clone()], ..etcd.clone() };
        let mut state = EndpointState {
            endpoint: endpoint.clone(),
            name: None,
            cluster_id: None,
            revision: None,
            leader: None,
            hash_kv: None,
            error: None,
        };
        let answer = async {
            let (mut member, status) = one.connect_member().await?;
            let members = member.members().await?;
            Ok::<_, EtcdError>((status, members))
        };
        match answer.await {
            Ok((status, members)) => {
                let id = format!("{:x}", status.member_id);
                state.name = members.iter().find(|m| m.id == id).map(|m| m.name.clone());
                state.cluster_id = Some(format!("{:x}", status.cluster_id));
                state.revision = Some(status.revision);
                state.leader = (status.leader != 0).then(|| format!("{:x}", status.leader));
                if state.leader.is_none() {
                    state.error = Some("no leader".into());
                }
                statuses.push(status);
            }
            Err(e) => state.error = Some(e.to_string()),
        }
        states.push(state);
    }
    let settled_all = states.iter().all(|s| s.error.is_none());
    (states, if settled_all { statuses } else { Vec::new() })
}

/// Every endpoint answered, with one leader and one revision.
fn settled(statuses: &[MemberStatus]) -> bool {
    let one = |f: fn(&MemberStatus) -> u64| statuses.iter().map(f).collect::<BTreeSet<_>>().len() == 1;
    !statuses.is_empty() && one(|s| s.leader) && one(|s| s.revision as u64) && one(|s| s.cluster_id)
}

/// Whether every endpoint that answered gives the same `value`; the verdict names the others.
fn same(report: &mut ClusterCheck, check: &'static str, value: impl Fn(&EndpointState) -> Option<String>) -> bool {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &report.endpoints {
        by.entry(value(s).unwrap_or_else(|| "none".into())).or_default().push(who(s));
    }
    let ok = by.len() == 1 && !by.contains_key("none");
    let detail = by.iter().map(|(v, who)| format!("{v}: {}", who.join(", "))).collect::<Vec<_>>().join("; ");
    report.push(check, ok, detail);
    ok
}

/// `m2 at http://...`, or the endpoint alone when its member did not say its name.
fn who(s: &EndpointState) -> String {
    match &s.name {
        Some(name) => format!("{name} at {}", s.endpoint),
        None => s.endpoint.clone(),
    }
}

/// HashKV at `revision` on every endpoint, equal on all.
async fn hashes(etcd: &EtcdConfig, report: &mut ClusterCheck, revision: i64) {
    for state in &mut report.endpoints {
        let one = EtcdConfig { endpoints: vec![state.endpoint.clone()], ..etcd.clone() };
        match one.connect_member().await {
            Ok((mut m, _)) => match m.hash_kv(revision).await {
                Ok(h) => state.hash_kv = Some(h),
                Err(e) => state.error = Some(e.to_string()),
            },
            Err(e) => state.error = Some(e.to_string()),
        }
    }
    same(report, "hashkv", |s| s.hash_kv.map(|h| h.to_annotation()));
}

/// The Kubernetes keys per resource type at `revision` against what the snapshot recorded.
async fn key_counts(etcd: &EtcdConfig, report: &mut ClusterCheck, record: &SnapshotRecord, revision: i64) {
    let Some(info) = record.etcd.as_ref() else {
        return report.push("key space", true, "nothing recorded to compare");
    };
    let counted = async {
        let (mut m, _) = etcd.connect_member().await?;
        m.count_keys_by_resource(KUBERNETES_PREFIX, revision).await
    };
    let counts = match counted.await {
        Ok(c) => c,
        Err(e) => return report.push("key space", false, format!("cannot count keys: {e}")),
    };
    let total: i64 = counts.values().sum();
    match (&info.kubernetes_keys_by_resource, info.kubernetes_keys) {
        (Some(recorded), _) => {
            let types: BTreeSet<&String> = recorded.keys().chain(counts.keys()).collect();
            let differ: Vec<String> = types
                .into_iter()
                .filter(|t| recorded.get(*t) != counts.get(*t))
                .map(|t| format!("{t} {}≠{}", recorded.get(t).unwrap_or(&0), counts.get(t).unwrap_or(&0)))
                .collect();
            report.push(
                "key space",
                differ.is_empty(),
                match differ.is_empty() {
                    true => format!("{total} Kubernetes keys in {} resource types, as recorded", recorded.len()),
                    false => format!("recorded≠restored: {}", differ.join(", ")),
                },
            );
        }
        (None, Some(keys)) => {
            report.push("key space", keys == total, format!("{keys} Kubernetes keys recorded, {total} restored"))
        }
        (None, None) => report.push("key space", true, "no key counts recorded: not compared"),
    }
}
