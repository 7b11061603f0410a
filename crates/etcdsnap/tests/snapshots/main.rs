//! Snapshots taken, stored, listed, verified and pruned: the real `etcdsnap` binary against real
//! etcd servers, on local disk (`engine`), on a real S3 server (`s3`) and behind an S3 proxy
//! that lies (`lying_s3`).
// Helpers of an integration test may panic too: clippy.toml allows it in #[test] functions only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod engine;
mod lying_s3;
mod s3;
