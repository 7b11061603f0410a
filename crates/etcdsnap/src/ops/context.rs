//! The [`Context`] every operation runs in: the stores and identity one operation works with,
//! built by [`crate::session::Session::context`].

use etcdsnap_api::{ETCDSnapshotS3, TokenHash};
use etcdsnap_storage::etcd::EtcdConfig;
use etcdsnap_storage::store::local::LocalStore;
use etcdsnap_storage::store::locks::RemovalLock;
use etcdsnap_storage::store::replica::ReplicaStore;
use etcdsnap_storage::store::{SnapshotStore, StoreError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The stores and identity one operation works with, from [`crate::session::Session::context`].
#[derive(Clone)]
pub struct Context {
    pub node_name: String,
    pub etcd: EtcdConfig,
    /// The node's snapshot directory, if snapshots are kept locally.
    pub local: Option<LocalStore>,
    /// The snapshot directory, when snapshots are kept locally but it does not exist (the
    /// default directory before its first save): commands that read it say so.
    pub missing_local: Option<PathBuf>,
    /// The S3 store, if configured.
    pub remote: Option<Arc<dyn SnapshotStore>>,
    /// Details of the S3 location for records (never credentials).
    pub remote_spec: Option<ETCDSnapshotS3>,
    /// The replicas, which receive copies after each save ([`super::replicate`]); not among
    /// [`Context::stores`], whose snapshots have resources.
    pub replicas: Vec<Arc<ReplicaStore>>,
    /// Snapshots to keep per node in each replica (None: the local retention).
    pub replica_retention: Option<usize>,
    /// Snapshots to keep per node in S3 when configured (`--s3-retention`, `etcd-s3-retention`).
    pub s3_retention: Option<usize>,
    /// How long an S3 upload of this node must have been idle before a save aborts it as left
    /// by a killed save.
    pub stale_upload_after: Duration,
    pub token_hash: Option<TokenHash>,
    pub cluster_id: Option<String>,
    pub extra_metadata: Option<BTreeMap<String, String>>,
    pub zstd_level: i32,
    /// Ask the member for its HashKV after each save and record it.
    pub record_hash_kv: bool,
    /// How new snapshots are sealed and signed, and what their kits hold.
    pub sealing: crate::seal::Sealing,
    /// The keys that open and check stored snapshots (verify, drills).
    pub keys: etcdsnap_storage::seal::OpenKeys,
    /// Where saves take their lock when there is no local store (S3 only): the directory a local
    /// store would use, so every save of the node takes the same lock.
    pub lock_dir: Option<PathBuf>,
    /// Within one process (the agent): a reconcile pass holds it shared from its listing to
    /// its last write, a prune or delete alone. Otherwise a pass that listed a snapshot just
    /// before retention removed it would create its resource again (seen in
    /// `agent_cluster.rs`: created, deleted, created). Processes exclude each other through
    /// the removal lock file only for reads that verify.
    pub removals: Arc<tokio::sync::RwLock<()>>,
}

impl Context {
    /// The snapshot directory whose locks this node's operations take: the local store's, or
    /// where a local copy would be kept (S3 only).
    fn lock_dir(&self) -> Option<&Path> {
        self.local.as_ref().map(LocalStore::dir).or(self.lock_dir.as_deref())
    }

    /// Held while snapshots are removed (prune, delete): refused while a verify reads them.
    pub fn lock_for_removal(&self) -> Result<Option<RemovalLock>, StoreError> {
        self.lock_dir().map(RemovalLock::remove).transpose()
    }

    /// Held while every snapshot is read (verify): waits up to `wait` for a removal to finish.
    pub async fn lock_for_reading(&self, wait: Duration) -> Result<Option<RemovalLock>, StoreError> {
        match self.lock_dir() {
            Some(dir) => RemovalLock::read(dir, wait).await.map(Some),
            None => Ok(None),
        }
    }

    /// The error of a snapshot directory that should be there and is not, when it was the only
    /// store to read.
    pub fn missing_local_error(&self) -> Option<StoreError> {
        self.missing_local.clone().filter(|_| self.remote.is_none()).map(StoreError::MissingDir)
    }

    /// The warning of a default snapshot directory that is not there while S3 is read: a node
    /// that keeps its snapshots in S3 only need not say `--no-local` to every command.
    pub fn missing_local_warning(&self) -> Option<String> {
        let (dir, remote) = (self.missing_local.as_ref()?, self.remote.as_ref()?);
        Some(format!("the snapshot directory {} does not exist: only {} was read", dir.display(), remote.describe()))
    }

    /// Every store and directory this context reads, as the operator knows them: for messages
    /// such as "no snapshots found in ...".
    pub fn describe_stores(&self) -> String {
        let mut all: Vec<String> = self.missing_local.iter().map(|d| d.display().to_string()).collect();
        all.extend(self.stores().iter().map(|s| s.describe()));
        match all.len() {
            0 => "no store (no local directory, no S3)".to_string(),
            _ => all.join(" or "),
        }
    }

    /// Every configured store, local first.
    pub fn stores(&self) -> Vec<&dyn SnapshotStore> {
        let mut stores: Vec<&dyn SnapshotStore> = Vec::new();
        if let Some(local) = &self.local {
            stores.push(local);
        }
        if let Some(remote) = &self.remote {
            stores.push(remote.as_ref());
        }
        stores
    }

    /// The replica given as `url` (as `--replica` spells it, a trailing `/` aside).
    pub fn replica(&self, url: &str) -> Option<Arc<ReplicaStore>> {
        self.replicas.iter().find(|r| r.url() == url.trim_end_matches('/')).cloned()
    }

    /// Every configured store, local first, then the replicas: what `verify` and drills read.
    pub fn stores_and_replicas(&self) -> Vec<&dyn SnapshotStore> {
        let mut stores = self.stores();
        stores.extend(self.replicas.iter().map(|r| r.as_ref() as &dyn SnapshotStore));
        stores
    }

    /// Every configured store, local first, as handles a snapshot source can keep.
    pub fn shared_stores(&self) -> Vec<Arc<dyn SnapshotStore>> {
        let mut stores: Vec<Arc<dyn SnapshotStore>> = Vec::new();
        if let Some(local) = &self.local {
            stores.push(Arc::new(local.clone()));
        }
        if let Some(remote) = &self.remote {
            stores.push(remote.clone());
        }
        stores
    }

    /// [`Context::shared_stores`], then the replicas: what drills read.
    pub fn shared_stores_and_replicas(&self) -> Vec<Arc<dyn SnapshotStore>> {
        let mut stores = self.shared_stores();
        stores.extend(self.replicas.iter().map(|r| r.clone() as Arc<dyn SnapshotStore>));
        stores
    }
}
