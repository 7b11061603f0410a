//! The `etcdsnap` binary.

use clap::Parser;

/// Takes, stores, indexes, prunes, verifies and restores etcd snapshots of a Kubernetes
/// control plane, compatible with K3s/RKE2's ETCDSnapshotFile resources.
#[derive(Debug, Parser)]
#[command(name = "etcdsnap", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
