//! The agent and Kubernetes: resources, reconcile, RBAC and the leader Lease against a real
//! kube-apiserver (`kube`), the agent as a process (`agent`), three agents as a cluster runs them
//! (`agent_cluster`), a leader that cannot split (`leadership`), living with K3s and other
//! clusters (`coexistence`), and the monitoring rules against a real agent (`monitoring`).
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
    pub mod slow_etcd;
    pub use cli::*;
}

mod agent;
mod agent_cluster;
mod coexistence;
mod kube;
mod leadership;
mod monitoring;

/// The audit log's user name of `node`'s agent (started by `common::cluster::start_agent`).
fn agent_user(node: &str) -> String {
    format!("system:serviceaccount:{}:{}", common::cluster::AGENT_NAMESPACE, common::cluster::service_account(node))
}
