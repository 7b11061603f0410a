//! The agent and Kubernetes: resources, reconcile, RBAC and the leader Lease against a real
//! kube-apiserver (`kube`), the agent as a process (`agent`), three agents as a cluster runs them
//! (`agent_cluster`), a leader that cannot split (`leadership`), living with K3s and other
//! clusters (`coexistence`), and the monitoring rules against a real agent (`monitoring`).
// Helpers of an integration test may panic too: clippy.toml allows it in #[test] functions only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod agent;
mod agent_cluster;
mod coexistence;
mod kube;
mod leadership;
mod monitoring;
