//! Types and naming rules of etcdsnap's snapshot records, shared with programs that consume them.
//!
//! Everything here is wire-compatible with K3s/RKE2: the `ETCDSnapshotFile` custom resource
//! (`k3s.cattle.io/v1`, cluster-scoped), its object names, labels and annotations (named after
//! the [`Program`], `k3s` or `rke2`), the legacy ConfigMap entries, the token hash. etcdsnap's own additions (the metadata document, the
//! `etcdsnap.io/` annotations) never change what a K3s reader sees. No I/O happens in this crate.
//!
//! # Reading the snapshots of a cluster with kube-rs
//!
//! Every snapshot is one cluster-scoped `ETCDSnapshotFile`, so a consumer lists them (paged; a
//! label selector on [`Program::label_storage_node`] picks one node's, or `s3`) and watches them
//! for changes instead of reading the legacy ConfigMap:
//!
//! ```no_run
//! use etcdsnap_api::{ETCDSnapshotFile, Program};
//! use futures::TryStreamExt;
//! use kube::api::{Api, ListParams};
//! use kube::runtime::watcher::{self, Event};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let api: Api<ETCDSnapshotFile> = Api::all(kube::Client::try_default().await?);
//! let label = Program::K3s.label_storage_node(); // etcd.rke2.cattle.io/... on RKE2
//! let params = ListParams::default().labels(&format!("{label}=node-1")).limit(500);
//! for snap in api.list(&params).await? {
//!     let ready = snap.status.as_ref().and_then(|s| s.ready_to_use).unwrap_or(false);
//!     println!("{} at {} (ready: {ready})", snap.spec.snapshot_name, snap.spec.location);
//! }
//! let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
//! while let Some(event) = events.try_next().await? {
//!     if let Event::Apply(snap) | Event::InitApply(snap) = event {
//!         println!("{} is {:?}", snap.spec.snapshot_name, snap.status);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! `examples/list_and_watch.rs` is the same as a program
//! (`cargo run -p etcdsnap-api --example list_and_watch -- --watch`); `etcdsnap watch` and
//! `etcdsnap ls --cluster` do it from the command line.

pub mod consts;
pub mod crd;
pub mod go;
pub mod legacy;
pub mod lock;
pub mod members;
pub mod metadata;
pub mod names;
pub mod program;
pub mod seal;
pub mod token;

pub use crd::{ETCDSnapshotError, ETCDSnapshotFile, ETCDSnapshotS3, ETCDSnapshotSpec, ETCDSnapshotStatus, crd};
pub use legacy::{LegacyEntry, LegacyS3Config};
pub use lock::{LockMode, S3Lock};
pub use members::{ClusterMember, MemberOverride, MemberSet, MemberSetError};
pub use metadata::{
    DrillResult, EtcdInfo, KvHash, MetadataDocument, MetadataError, StoredMetadata, parse_stored_metadata,
};
pub use names::{
    Compression, CrNameInput, NameError, NodeNameError, SnapshotName, StorageKind, configmap_key, cr_name,
    is_dns1123_subdomain, is_valid_configmap_key, round_to_second, snapshot_file_name, timestamp_from_name,
    validate_node_name,
};
pub use program::Program;
pub use seal::{KitRef, Sealed};
pub use token::{TokenError, TokenHash};
