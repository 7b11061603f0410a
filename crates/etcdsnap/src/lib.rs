//! etcdsnap: etcd snapshots for Kubernetes control planes, recorded as K3s/RKE2-compatible
//! `ETCDSnapshotFile` resources. See `docs/architecture.md` for how the modules fit together.

pub mod agent;
pub mod catchup;
pub mod cli;
pub mod etcd;
pub mod failpoint;
pub mod kube;
pub mod ops;
pub mod pipeline;
pub mod record;
pub mod restore;
pub mod store;
