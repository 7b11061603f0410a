//! Where etcdsnap's snapshots come from and where they are kept.
//!
//! This crate owns the bytes and the facts about them: the etcd member a snapshot is streamed
//! from ([`etcd`]), the single pass that checks, hashes, compresses and writes it ([`pipeline`]),
//! the places it is kept, local directories and S3 folders, with their listings, deletes and
//! retention ([`store`]), the one parser of S3 settings ([`store::s3::settings`]), and the record
//! of each stored copy with the metadata document written beside it ([`record`]).
//!
//! What it must not do: talk to Kubernetes, parse command-line flags or decide which stores a
//! command uses. Callers hand it typed settings and get records and typed errors back; turning
//! records into `ETCDSnapshotFile` resources is `etcdsnap-kube`'s business.
//!
//! The path of one snapshot through it: [`etcd::EtcdConfig::connect_member`] picks a member and
//! opens [`etcd::SnapshotStream`]; each store's [`store::SnapshotStore::create`] gives a sink;
//! [`pipeline::run`] feeds the stream to every sink at once; each sink's `commit` writes the
//! metadata document and then publishes the snapshot.

pub mod clock;
pub mod error_chain;
pub mod etcd;
pub mod failpoint;
pub mod files;
pub mod pipeline;
pub mod pitr;
pub mod record;
pub mod retry;
pub mod seal;
pub mod store;

pub use error_chain::describe_error;
pub use record::{MetadataSource, Outcome, SnapshotRecord};
