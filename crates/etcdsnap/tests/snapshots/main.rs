//! Snapshots taken, stored, listed, verified and pruned: the real `etcdsnap` binary against real
//! etcd servers, on local disk (`engine`), on a real S3 server (`s3`), behind an S3 proxy
//! that lies (`lying_s3`), and copied to replicas on S3, GCS and Azure (`replicas`).
// Helpers of an integration test may panic too: clippy.toml allows it in #[test] functions only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// The helpers in `tests/common/` this binary uses (each binary names its own, so the compiler
/// reports one that no test calls).
#[path = "../common"]
mod common {
    mod cli;
    pub mod etcd;
    pub mod keyspace;
    pub mod layout;
    pub mod slow_etcd;
    pub mod snapshot_files;
    pub mod terminal;
    pub use cli::*;
}

mod cli;
mod engine;
mod keep;
mod lock;
mod lying_s3;
mod replicas;
mod s3;
mod shared_parent;
