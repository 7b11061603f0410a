//! Names shared with K3s/RKE2 (identical on the wire) and etcdsnap's own additions. Names K3s
//! builds from its program name (`k3s` or `rke2`: labels, annotations, ConfigMaps, S3 user
//! metadata) are [`crate::Program`]'s, never constants.

/// API group of the `ETCDSnapshotFile` resource (K3s's group).
pub const GROUP: &str = "k3s.cattle.io";
/// API version of the `ETCDSnapshotFile` resource.
pub const VERSION: &str = "v1";
/// Name of the CRD.
pub const CRD_NAME: &str = "etcdsnapshotfiles.k3s.cattle.io";

/// Storage-node label value of snapshots that live in S3 (the label is
/// [`crate::Program::label_storage_node`]).
pub const S3_STORAGE_NODE: &str = "s3";
/// Finalizer K3s's leader puts on CRs so it can drop their legacy ConfigMap entry.
pub const FINALIZER_K3S: &str = "wrangler.cattle.io/managed-etcd-snapshots-controller";

/// etcdsnap's annotations on CRs (never read by K3s).
pub const ANNOTATION_SHA256: &str = "etcdsnap.io/sha256";
pub const ANNOTATION_ETCD_REVISION: &str = "etcdsnap.io/etcd-revision";
pub const ANNOTATION_ETCD_VERSION: &str = "etcdsnap.io/etcd-version";
/// etcd's HashKV at the snapshot's revision, `<hash>/<compact revision>` ([`crate::KvHash`]).
pub const ANNOTATION_ETCD_HASHKV: &str = "etcdsnap.io/etcd-hashkv";
/// The etcd cluster's members at save time, a JSON array of [`crate::ClusterMember`].
pub const ANNOTATION_ETCD_MEMBERS: &str = "etcdsnap.io/etcd-members";
/// The history the snapshot belongs to (`etcd.history` in its record): the run of revisions
/// etcd numbered since it last started over (a restore, a member rolled back).
pub const ANNOTATION_ETCD_HISTORY: &str = "etcdsnap.io/etcd-history";
pub const ANNOTATION_COMPRESSION: &str = "etcdsnap.io/compression";
/// When the snapshot last went through a restore drill (RFC 3339), and how it ended
/// (`passed` or `failed: <reason>`).
pub const ANNOTATION_DRILLED_AT: &str = "etcdsnap.io/drilled-at";
pub const ANNOTATION_DRILL: &str = "etcdsnap.io/drill";
/// S3 copies locked by etcdsnap (`--s3-lock-retention`): until when and in which mode,
/// `<RFC 3339 date> <governance|compliance>` ([`crate::S3Lock`]).
pub const ANNOTATION_S3_LOCKED_UNTIL: &str = "etcdsnap.io/s3-locked-until";
/// Point-in-time recovery on the newest snapshot's resource: the newest revision it can be
/// rolled forward to (`restore --to-revision`) and when that revision was observed (RFC 3339).
pub const ANNOTATION_ROLLS_FORWARD_TO: &str = "etcdsnap.io/rolls-forward-to-revision";
pub const ANNOTATION_ROLLS_FORWARD_UNTIL: &str = "etcdsnap.io/rolls-forward-until";
/// Marks CRs written by etcdsnap (value: the program version).
pub const ANNOTATION_MANAGED_BY: &str = "etcdsnap.io/managed-by";

/// Namespace of the ConfigMaps, Secrets and Leases.
pub const SYSTEM_NAMESPACE: &str = "kube-system";

/// Event reasons on `ETCDSnapshotFile` objects.
pub const EVENT_CREATED: &str = "ETCDSnapshotCreated";
pub const EVENT_FAILED: &str = "ETCDSnapshotFailed";
pub const EVENT_DELETED: &str = "ETCDSnapshotDeleted";
/// etcdsnap's events of restore drills.
pub const EVENT_DRILL_PASSED: &str = "ETCDSnapshotDrillPassed";
pub const EVENT_DRILL_FAILED: &str = "ETCDSnapshotDrillFailed";
/// A drill in which nothing failed but the contents could not be compared with the live member's.
pub const EVENT_DRILL_NOT_COMPARED: &str = "ETCDSnapshotDrillNotCompared";

/// etcdsnap's S3 user metadata keys (sent as `x-amz-meta-<key>`; K3s's are
/// [`crate::Program::s3_meta_node_name`] and its siblings).
pub const S3_META_SHA256: &str = "etcdsnap-sha256";
pub const S3_META_SIZE: &str = "etcdsnap-size";
pub const S3_META_ETCD_REVISION: &str = "etcdsnap-etcd-revision";
pub const S3_META_ETCD_VERSION: &str = "etcdsnap-etcd-version";
pub const S3_META_COMPRESSION: &str = "etcdsnap-compression";

/// K3s's metadata directory: beside the snapshot directory (`<dir>/../.metadata/`), and under
/// the S3 folder. It holds `<name>`, K3s's extra metadata of snapshot `<name>`. In S3 it also
/// holds etcdsnap's record `<name>` + [`RECORD_SUFFIX`], which K3s never reads (it matches
/// metadata to snapshots by exact name); on local disk the records live in etcdsnap's own
/// directory of the snapshot directory ([`PRIVATE_DIR`]), and earlier releases' records found
/// in `.metadata/` are moved there.
pub const METADATA_DIR: &str = ".metadata";
/// Suffix of etcdsnap's record of a snapshot: `<name>.etcdsnap.json`.
pub const RECORD_SUFFIX: &str = ".etcdsnap.json";
/// Point-in-time recovery's delta chains: the directory beside the snapshot directory, and the
/// path element under the S3 folder (`<folder>/.etcdsnap-deltas/<chain>/.metadata/<file>`).
pub const DELTAS_DIR: &str = ".etcdsnap-deltas";
/// The prefix Kubernetes keeps its objects under in etcd.
pub const KUBERNETES_PREFIX: &[u8] = b"/registry/";
/// etcdsnap's private directory beside snapshot directories: `<parent>/.etcdsnap/`. Each
/// snapshot directory `<parent>/<dir>` has its own part of it, `<parent>/.etcdsnap/dirs/<dir>/`
/// ([`PRIVATE_DIRS`]), with its records ([`RECORDS_DIR`]), locks and partial writes, so that two
/// snapshot directories of one parent never share them, and the snapshot directory holds
/// snapshots only: K3s takes every file there for a snapshot.
pub const PRIVATE_DIR: &str = ".etcdsnap";
/// In [`PRIVATE_DIR`]: one directory per snapshot directory, named like it.
pub const PRIVATE_DIRS: &str = "dirs";
/// In a snapshot directory's private directory: etcdsnap's records, `<name>` + [`RECORD_SUFFIX`].
pub const RECORDS_DIR: &str = "records";
/// Suffix of files being written; never a snapshot.
pub const PART_SUFFIX: &str = ".part";
