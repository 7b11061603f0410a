//! The stores that keep point-in-time recovery's objects besides the local directory: the S3
//! primary (`store::s3::pitr`) and every replica (`store::replica::deltas`), each at the keys
//! `record::s3_key` names, so that a restore to a revision or a time reads a replica exactly as
//! it reads the primary.

use super::record::SegmentRecord;
use crate::store::s3::pitr::PitrObject;
use crate::store::{SnapshotReader, StoreError};
use async_trait::async_trait;

/// A store's delta objects: segments and their records, by chain and file name.
#[async_trait]
pub trait DeltaObjects: Send + Sync {
    /// `s3://bucket/folder`, or the replica's URL: where the objects are, for messages.
    fn deltas_location(&self) -> String;
    /// Every delta object of the folder.
    async fn list_deltas(&self) -> Result<Vec<PitrObject>, StoreError>;
    /// One file of a chain, refusing one larger than `limit` bytes.
    async fn get_delta(&self, chain: &str, file: &str, limit: u64) -> Result<Vec<u8>, StoreError>;
    /// One file of a chain, streamed.
    async fn open_delta(&self, chain: &str, file: &str) -> Result<SnapshotReader, StoreError>;
    /// Deletes one file of a chain (gone already is fine).
    async fn delete_delta(&self, chain: &str, file: &str) -> Result<(), StoreError>;
}

/// The record of a listed record object, checked against its key; Err says why it cannot be used.
pub async fn read_record(store: &dyn DeltaObjects, object: &PitrObject, limit: u64) -> Result<SegmentRecord, String> {
    let bytes = store.get_delta(&object.chain, &object.file, limit).await.map_err(|e| e.to_string())?;
    let record = SegmentRecord::parse(&object.file, &bytes).map_err(|e| e.to_string())?;
    if record.chain != object.chain || record.record_name() != object.file {
        return Err("it does not match its key".to_string());
    }
    Ok(record)
}

/// The chains of a local `.etcdsnap-deltas` directory seen as delta objects: what replicas copy
/// when deltas are captured without S3. Only segments with a record are listed (a record is
/// written once its segment is durable, `local`).
#[derive(Debug, Clone)]
pub struct LocalDeltas {
    pub dir: std::path::PathBuf,
}

impl LocalDeltas {
    fn path(&self, chain: &str, file: &str) -> Result<std::path::PathBuf, StoreError> {
        if !super::valid_chain_name(chain) || file.contains('/') || file.starts_with('.') {
            return Err(StoreError::NotFound(format!("{chain}/{file}"), self.deltas_location()));
        }
        Ok(self.dir.join(chain).join(file))
    }

    fn io_error(&self, path: &std::path::Path, e: std::io::Error) -> StoreError {
        match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(path.display().to_string(), self.deltas_location()),
            _ => StoreError::Replica { op: "read delta", target: path.display().to_string(), message: e.to_string() },
        }
    }
}

#[async_trait]
impl DeltaObjects for LocalDeltas {
    fn deltas_location(&self) -> String {
        self.dir.display().to_string()
    }

    async fn list_deltas(&self) -> Result<Vec<PitrObject>, StoreError> {
        let dir = self.dir.clone();
        let (records, _) = tokio::task::spawn_blocking(move || super::local::read_all(&dir)).await.map_err(|e| {
            StoreError::Replica { op: "list deltas", target: self.deltas_location(), message: e.to_string() }
        })?;
        Ok(records
            .into_iter()
            .flat_map(|r| {
                let segment = PitrObject { chain: r.chain.clone(), file: r.segment_name(), size: r.stored_bytes };
                let record = PitrObject { chain: r.chain.clone(), file: r.record_name(), size: 0 };
                [segment, record]
            })
            .collect())
    }

    async fn get_delta(&self, chain: &str, file: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.path(chain, file)?;
        let bytes = tokio::fs::read(&path).await.map_err(|e| self.io_error(&path, e))?;
        if bytes.len() as u64 > limit {
            return Err(StoreError::Replica {
                op: "read delta",
                target: path.display().to_string(),
                message: format!("{} bytes, more than the {limit} a delta file may have", bytes.len()),
            });
        }
        Ok(bytes)
    }

    async fn open_delta(&self, chain: &str, file: &str) -> Result<SnapshotReader, StoreError> {
        let path = self.path(chain, file)?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| self.io_error(&path, e))?;
        let size = file.metadata().await.map_err(|e| self.io_error(&path, e))?.len();
        Ok(SnapshotReader { reader: Box::new(file), size })
    }

    async fn delete_delta(&self, chain: &str, file: &str) -> Result<(), StoreError> {
        let path = self.path(chain, file)?;
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io_error(&path, e)),
            _ => Ok(()),
        }
    }
}
