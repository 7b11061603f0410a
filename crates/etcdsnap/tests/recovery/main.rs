//! Getting data back: `etcdsnap restore` (`restore`), every etcd minor saved and restored with
//! its own tools (`versions`), restore drills (`drill`), and point-in-time recovery through the
//! library (`pitr`, and the replay's proof: `pitr_proof`), the agent (`pitr_agent`), from a replica alone
//! (`pitr_replicas`), across restarts
//! (`pitr_history`), two agents with Kubernetes (`pitr_cluster`), snapshots prepared for K3s's
//! and RKE2's own restore (`prepare`), and sealed backups opened and checked with the age and
//! minisign tools (`sealed`).
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
    pub mod keyspace;
    pub mod layout;
    pub mod restore;
    pub mod snapshot_files;
    pub use cli::*;
}

mod drill;
mod members;
mod pitr;
mod pitr_agent;
mod pitr_cluster;
mod pitr_history;
mod pitr_proof;
mod pitr_race;
mod pitr_replicas;
mod prepare;
mod restore;
mod sealed;
mod versions;
