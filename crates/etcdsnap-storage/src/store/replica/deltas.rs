//! Point-in-time recovery's objects in a replica, at the keys they have in the S3 primary
//! (`<folder>/.etcdsnap-deltas/<chain>/.metadata/<file>`, `pitr::record::s3_key`), so that
//! `restore --to-revision --from-replica` reads a replica as it reads S3. A segment is copied
//! before its record (a record in the replica always has its segment), its bytes streamed and
//! checked against the record's sha256 on the way and again on arrival.

use super::{Copied, ReplicaStore};
use crate::pitr::SegmentRecord;
use crate::pitr::objects::DeltaObjects;
use crate::pitr::record::{s3_key, s3_prefix};
use crate::store::s3::pitr::{PitrObject, parse_key};
use crate::store::{SnapshotReader, StoreError};
use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjectPath;

impl ReplicaStore {
    fn delta_key(&self, chain: &str, file: &str) -> ObjectPath {
        ObjectPath::from(s3_key(self.folder.as_ref(), chain, file))
    }

    /// Copies one segment, streamed from `segment` (read from `from`), then its record
    /// (`record_bytes`, as the source stores them). A segment whose bytes do not hash to what
    /// its record says is not copied, and neither is its record.
    pub async fn copy_delta(
        &self,
        record: &SegmentRecord,
        record_bytes: Vec<u8>,
        segment: SnapshotReader,
        from: &str,
    ) -> Result<Copied, StoreError> {
        let key = self.delta_key(&record.chain, &record.segment_name());
        let check = |sha256: &str| match sha256.eq_ignore_ascii_case(&record.sha256) {
            true => Ok(()),
            false => Err(StoreError::Replica {
                op: "copy delta",
                target: from.to_string(),
                message: format!("the segment's sha256 is {sha256}, its record says {}: not copied", record.sha256),
            }),
        };
        let copied = self.upload_checked(&key, segment, from, check).await?;
        self.put_small(&self.delta_key(&record.chain, &record.record_name()), record_bytes).await?;
        Ok(copied)
    }
}

#[async_trait]
impl DeltaObjects for ReplicaStore {
    fn deltas_location(&self) -> String {
        self.url().to_string()
    }

    async fn list_deltas(&self) -> Result<Vec<PitrObject>, StoreError> {
        let prefix = s3_prefix(self.folder.as_ref());
        let path = ObjectPath::from(prefix.as_str());
        let listed: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&path)).try_collect().await.map_err(|e| self.error("list deltas", &path, &e))?;
        Ok(listed.into_iter().filter_map(|o| parse_key(o.location.as_ref(), &prefix, o.size)).collect())
    }

    async fn get_delta(&self, chain: &str, file: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        let key = self.delta_key(chain, file);
        let result = self.store.get(&key).await.map_err(|e| self.error("download delta", &key, &e))?;
        if result.meta.size > limit {
            return Err(StoreError::Replica {
                op: "download delta",
                target: format!("{}: {key}", self.url()),
                message: format!("{} bytes, more than the {limit} a delta object may have", result.meta.size),
            });
        }
        result.bytes().await.map(|b| b.to_vec()).map_err(|e| self.error("download delta", &key, &e))
    }

    async fn open_delta(&self, chain: &str, file: &str) -> Result<SnapshotReader, StoreError> {
        let key = self.delta_key(chain, file);
        let result = self.store.get(&key).await.map_err(|e| self.error("download delta", &key, &e))?;
        let size = result.meta.size;
        let stream = result.into_stream().map_err(std::io::Error::other);
        Ok(SnapshotReader { reader: Box::new(tokio_util::io::StreamReader::new(stream)), size })
    }

    async fn delete_delta(&self, chain: &str, file: &str) -> Result<(), StoreError> {
        self.delete_if_present(&self.delta_key(chain, file)).await
    }
}
