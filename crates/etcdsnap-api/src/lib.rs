//! Types and naming rules of etcdsnap's snapshot records, shared with programs that consume them.
//!
//! Everything here is wire-compatible with K3s/RKE2: the `ETCDSnapshotFile` custom resource
//! (`k3s.cattle.io/v1`, cluster-scoped), its object names, labels and annotations, the legacy
//! ConfigMap entries, the token hash. etcdsnap's own additions (the metadata document, the
//! `etcdsnap.io/` annotations) never change what a K3s reader sees. No I/O happens in this crate.

pub mod consts;
pub mod crd;
pub mod legacy;
pub mod metadata;
pub mod names;
pub mod token;

pub use crd::{ETCDSnapshotError, ETCDSnapshotFile, ETCDSnapshotS3, ETCDSnapshotSpec, ETCDSnapshotStatus, crd};
pub use legacy::{LegacyEntry, LegacyS3Config};
pub use metadata::{EtcdInfo, MetadataDocument, MetadataError, StoredMetadata, parse_stored_metadata};
pub use names::{
    Compression, CrNameInput, NameError, SnapshotName, StorageKind, configmap_key, cr_name, is_dns1123_subdomain,
    round_to_second, snapshot_file_name, timestamp_from_name,
};
pub use token::{TokenError, TokenHash};
