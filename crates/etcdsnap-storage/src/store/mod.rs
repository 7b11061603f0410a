//! Where snapshots are kept. One trait, [`SnapshotStore`], with a local-directory, an S3, a
//! GCS or Azure ([`cloud`]) and a replica (S3, GCS, Azure or a directory, through object_store)
//! implementation; the pipeline writes to the local directory and the remote store (S3, GCS or
//! Azure) in one pass through [`SnapshotSink`]s, replicas receive copies afterwards, and every
//! command lists, reads and deletes through the same trait.

pub mod cloud;
pub mod keep;
pub mod local;
pub mod locks;
pub mod replica;
pub mod retention;
pub mod s3;

use crate::record::SnapshotRecord;
use async_trait::async_trait;
use etcdsnap_api::{EtcdInfo, MetadataDocument, SnapshotName, StorageKind, TokenHash};
use std::io::IoSlice;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::AsyncRead;

pub use keep::KeepPolicy;
pub use retention::{Decision, RetentionPolicy, decide, in_scope, plan_retention};

/// Failures of a store. Messages name the snapshot, file or object concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot directory {} does not exist; create it or pass another --dir", .0.display())]
    MissingDir(PathBuf),
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "snapshot save already in progress: another etcdsnap holds the lock on {}",
        .0.display()
    )]
    Locked(PathBuf),
    /// A verify is reading this directory's snapshots: nothing is removed under it.
    #[error(
        "snapshots of {} are being read by a verify; nothing was removed: try again once it is done",
        .0.display()
    )]
    BeingRead(PathBuf),
    /// A prune or delete kept removing snapshots of this directory for the whole wait.
    #[error("a prune or delete of {} still held its lock after {:?}; try again once it is done", .0.display(), .1)]
    BeingRemoved(PathBuf, std::time::Duration),
    #[error("snapshot {0} not found in {1}")]
    NotFound(String, String),
    /// An S3 request failed; `problem` is set when the cause has a known remedy (the message
    /// then starts with it).
    #[error("S3 {op} {target}: {message}")]
    S3 { op: &'static str, target: String, problem: Option<s3::hints::S3Problem>, message: String },
    #[error(transparent)]
    Settings(#[from] s3::S3SettingsError),
    /// A client could not be built from valid settings (TLS backend, proxy).
    #[error("{0}")]
    Client(String),
    /// A replica's request failed, or what arrived there is not what was sent.
    #[error("replica {op} {target}: {message}")]
    Replica { op: &'static str, target: String, message: String },
    /// A request to a GCS or Azure primary store failed (`target` starts with its URL).
    #[error("{op} {target}: {message}")]
    Cloud { op: &'static str, target: String, message: String },
    /// Bytes that were about to be copied no longer hash to what their record says.
    #[error("{} no longer matches its recorded sha256 (run `etcdsnap verify`)", .0.display())]
    Changed(PathBuf),
    /// A blocking worker stopped (panicked or was cancelled) while working on `what`.
    #[error("{what}: the worker thread stopped: {message}")]
    Worker { what: String, message: String },
    /// The file system cannot hold snapshots the way etcdsnap writes them.
    #[error("{0}")]
    Unsupported(String),
    /// A small file beside a snapshot (its record, its signature) that cannot be read.
    #[error("cannot read {}: {message}", path.display())]
    Unreadable { path: PathBuf, message: String },
    /// S3 Object Lock keeps the object until the date given (None: the bucket refused the
    /// deletion and said no date): nothing was removed, and a later prune tries again.
    #[error("{target} is locked by S3 Object Lock {}: kept, to be removed after that", until_text(.until))]
    ObjectLocked { target: String, until: Option<jiff::Timestamp> },
    /// A sink was used after it was committed or aborted (a bug in the caller).
    #[error("{0}: the snapshot is already finished")]
    Finished(String),
}

fn until_text(until: &Option<jiff::Timestamp>) -> String {
    match until {
        Some(t) => format!("until {}", t.strftime("%Y-%m-%dT%H:%M:%SZ")),
        None => "for a time the bucket did not say".to_string(),
    }
}

impl StoreError {
    /// A worker's failure, from its join error.
    pub fn worker(what: impl std::fmt::Display, e: tokio::task::JoinError) -> StoreError {
        StoreError::Worker { what: what.to_string(), message: e.to_string() }
    }

    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}

/// What a listing found: the snapshots, and problems with individual entries that did not stop
/// the listing (each names the file or object).
#[derive(Debug, Default)]
pub struct Listing {
    pub records: Vec<SnapshotRecord>,
    pub warnings: Vec<String>,
}

/// What is known about a snapshot before its bytes are written (S3 sends this as object
/// metadata when the upload starts).
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub name: SnapshotName,
    pub node_name: String,
    pub cluster_id: Option<String>,
    pub token_hash: Option<TokenHash>,
    pub etcd: EtcdInfo,
}

/// What is published beside a snapshot's record, before it: the record's detached signature
/// and the sealed restore kit.
#[derive(Debug, Clone, Default)]
pub struct Companions {
    /// The minisign signature of the record's bytes (`doc.to_json()`), as a `.minisig` file's text.
    pub signature: Option<String>,
    /// The sealed restore kit.
    pub kit: Option<std::sync::Arc<Vec<u8>>>,
}

/// A snapshot's record as stored, byte for byte, and the detached signature beside it: what
/// a signature check reads.
#[derive(Debug, Clone, Default)]
pub struct SignedRecord {
    pub record: Option<Vec<u8>>,
    pub signature: Option<Vec<u8>>,
}

/// The destination of one snapshot being written. Writes are blocking and happen on the
/// pipeline's worker thread; publishing is async.
#[async_trait]
pub trait SnapshotSink: Send {
    /// Appends stored (possibly compressed) bytes.
    fn write(&mut self, buf: &[u8]) -> Result<(), StoreError>;
    /// Appends several buffers, in order. Uncompressed snapshots arrive as etcd's messages; a
    /// sink that can take them as they are (one `writev` for the local file) saves the copy
    /// into a staging buffer and the buffer itself.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> Result<(), StoreError> {
        bufs.iter().try_for_each(|buf| self.write(buf))
    }
    /// Makes the bytes durable, writes the companions, the metadata document, then publishes
    /// the snapshot, in that order: a published snapshot always has its document, kit and
    /// signature.
    async fn commit(self: Box<Self>, doc: &MetadataDocument, companions: &Companions) -> Result<(), StoreError>;
    /// Discards everything written (no partial file or multipart upload is left behind).
    async fn abort(self: Box<Self>);
    /// `file:///...` or `s3://bucket/key` the snapshot will have once committed.
    fn location(&self) -> String;
    fn storage(&self) -> StorageKind;
    /// The program the committed record names (an S3 record says whose names its object's user
    /// metadata carries), so that a signature is made over the record as it is stored.
    fn program(&self) -> Option<etcdsnap_api::Program> {
        None
    }
    /// The Object Lock the commit puts on the snapshot's object (S3 with
    /// `--s3-lock-retention`), so that the record, written before it, names the date the lock
    /// request then sends. Asked once the stream has ended; the same answer every time.
    fn lock(&self) -> Option<etcdsnap_api::S3Lock> {
        None
    }
}

/// Stored bytes of one snapshot, streamed.
pub struct SnapshotReader {
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    /// Size the store reports for the object or file.
    pub size: u64,
}

/// A place snapshots are kept.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    fn kind(&self) -> StorageKind;
    /// The bucket behind this store, for what S3 holds besides snapshots (delta segments).
    fn as_s3(&self) -> Option<&s3::S3Store> {
        None
    }
    /// Where this store keeps point-in-time recovery's segments and records, when it keeps
    /// them as objects (S3, a replica); None for a local directory (`pitr::local` reads those).
    fn deltas(&self) -> Option<&dyn crate::pitr::objects::DeltaObjects> {
        None
    }
    /// Human description: the directory, or `s3://bucket/folder`.
    fn describe(&self) -> String;
    /// Every snapshot with its record. Unreadable metadata is a warning, not an error.
    async fn list(&self) -> Result<Listing, StoreError>;
    /// Starts writing a new snapshot.
    async fn create(&self, new: &NewSnapshot) -> Result<Box<dyn SnapshotSink>, StoreError>;
    /// Reads a snapshot's stored bytes.
    async fn open(&self, name: &SnapshotName) -> Result<SnapshotReader, StoreError>;
    /// Deletes a snapshot and its metadata document. Ok(false) if it did not exist.
    async fn delete(&self, name: &SnapshotName) -> Result<bool, StoreError>;
    /// Cheapest request that proves the store is reachable and usable (for readiness).
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether a snapshot of this name exists (a new save must not overwrite it).
    async fn exists(&self, name: &SnapshotName) -> Result<bool, StoreError>;
    /// Rewrites etcdsnap's record of a stored snapshot (after a restore drill), atomically, with
    /// its new signature when there is one (else the old signature stays: it covers the record
    /// as it was signed); the snapshot itself and K3s's metadata are not touched. A snapshot
    /// that is gone is an error.
    async fn update_record(&self, record: &crate::SnapshotRecord, signature: Option<&str>) -> Result<(), StoreError>;
    /// The record as stored and its signature, each None when absent.
    async fn signed_record(&self, name: &SnapshotName) -> Result<SignedRecord, StoreError>;
    /// The sealed restore kit stored beside the snapshot, if any.
    async fn kit(&self, name: &SnapshotName) -> Result<Option<Vec<u8>>, StoreError>;
    /// A save's housekeeping of `node`'s own objects: removes what interrupted saves under base
    /// name `base` left behind (an S3 multipart upload never completed nor aborted, idle for at
    /// least `idle`) and moves records of earlier releases out of K3s's metadata. Returns how
    /// many objects it changed.
    async fn clean_interrupted(&self, _node: &str, _base: &str, _idle: Duration) -> Result<usize, StoreError> {
        Ok(0)
    }
}
