//! etcdsnap: etcd snapshots for Kubernetes control planes, recorded as K3s/RKE2-compatible
//! `ETCDSnapshotFile` resources.
//!
//! This crate is the service layer on top of the two sides: `etcdsnap-storage` (the etcd stream,
//! the pipeline, local and S3 stores, records) and `etcdsnap-kube` (resources, reconcile, the
//! legacy ConfigMap, Leases). It owns the [`session`] every command and the agent are built from,
//! the [`ops`] they run, the long-running [`agent`] and [`restore`]. The command line (clap,
//! config file, output, progress) is the binary's own module and not part of this library: no
//! library code can depend on it. See `docs/architecture.md` for the path of one snapshot.

pub mod agent;
pub mod drill;
pub mod ops;
pub mod pitr;
pub mod restore;
pub mod seal;
pub mod session;
pub mod units;
