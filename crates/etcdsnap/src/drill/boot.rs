//! The boot level of a drill: the snapshot restored with etcdutl into the scratch directory, a
//! private etcd started on it on loopback ([`crate::restore::loopback`]), and asked what a
//! cluster restored from the snapshot would hold. The etcd is killed when this is done or
//! dropped; its files go with the scratch directory.

use crate::restore::loopback::{self, LoopbackError, Restored};
use etcdsnap_api::KvHash;
use etcdsnap_api::consts::KUBERNETES_PREFIX;
use std::path::Path;

/// What the booted etcd said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    pub version: String,
    /// Its revision (at least the snapshot's).
    pub revision: i64,
    /// Its HashKV at the drilled revision.
    pub hash: KvHash,
    /// Keys under `/registry/` at the drilled revision.
    pub kubernetes_keys: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Loopback(#[from] LoopbackError),
    #[error("the drill's etcd served, then failed: {0}")]
    Query(String),
}

/// Restores `snapshot` into `scratch/data` for a one-member cluster on loopback. Runs before
/// `etcdutl hashkv`, which opens the database read-write and changes the file (its sha256 no
/// longer matches etcd's trailer afterwards).
pub async fn restore(etcdutl_bin: &Path, snapshot: &Path, scratch: &Path) -> Result<Restored, BootError> {
    Ok(loopback::restore("drill", etcdutl_bin, snapshot, scratch).await?)
}

/// Boots `etcd` on the restored directory and asks it about `revision` (its latest when None).
/// The etcd is killed when this returns, whatever happened.
pub async fn boot(restored: &Restored, etcd: &Path, revision: Option<i64>) -> Result<Booted, BootError> {
    let mut running = restored.start(super::low_priority_command(etcd), etcd).await?;
    let status = running.status.clone();
    let at = revision.unwrap_or(status.revision);
    let query = |e: etcdsnap_storage::etcd::EtcdError| BootError::Query(e.to_string());
    let hash = running.member.hash_kv(at).await.map_err(query)?;
    let kubernetes_keys = running.member.count_keys(KUBERNETES_PREFIX, at).await.map_err(query)?;
    Ok(Booted { version: status.version, revision: status.revision, hash, kubernetes_keys })
}
