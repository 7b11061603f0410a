//! The agent and Kubernetes: resources, reconcile, RBAC and the leader Lease against a real
//! kube-apiserver (`kube`), the agent as a process (`agent`), three agents as a cluster runs them
//! (`agent_cluster`), a leader that cannot split (`leadership`), living with K3s and other
//! clusters (`coexistence`), RKE2's names and a server's own configuration (`rke2`), and the
//! monitoring rules against a real agent (`monitoring`).
// Helpers of an integration test may panic too: clippy.toml allows it in #[test] functions only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// The helpers in `tests/common/` this binary uses (each binary names its own, so the compiler
/// reports one that no test calls).
#[path = "../common"]
mod common {
    pub mod agent;
    mod cli;
    pub mod cluster;
    pub mod etcd;
    pub mod k3s;
    pub mod layout;
    pub mod slow_etcd;
    pub use cli::*;
}

mod agent;
mod agent_cluster;
mod coexistence;
mod kube;
mod leadership;
mod monitoring;
mod restore_check;
mod rke2;

/// The audit log's user name of `node`'s agent (started by `common::cluster::start_agent`).
fn agent_user(node: &str) -> String {
    format!("system:serviceaccount:{}:{}", common::cluster::AGENT_NAMESPACE, common::cluster::service_account(node))
}

/// What K3s's listing ([`common::k3s`]) is compared with: the ready resources as K3s would
/// see them (name, snapshot, size and `spec.metadata`).
fn as_k3s_would_see(resources: &[etcdsnap_api::ETCDSnapshotFile]) -> Vec<common::k3s::K3sSnapshot> {
    let mut out: Vec<common::k3s::K3sSnapshot> = resources
        .iter()
        .filter(|cr| cr.status.as_ref().and_then(|s| s.ready_to_use) == Some(true))
        .map(|cr| common::k3s::K3sSnapshot {
            cr_name: cr.metadata.name.clone().unwrap_or_default(),
            snapshot_name: cr.spec.snapshot_name.clone(),
            size: cr.status.as_ref().and_then(|s| s.size.as_ref()).and_then(|q| q.0.parse().ok()).unwrap_or(0),
            metadata: cr.spec.metadata.clone(),
        })
        .collect();
    out.sort();
    out
}
