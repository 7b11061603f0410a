//! Point-in-time recovery's objects in the bucket, at the keys `pitr::record::s3_key` names
//! (`<folder>/.etcdsnap-deltas/<chain>/.metadata/<file>`): never listed as snapshots, by K3s or
//! by etcdsnap (whose snapshot listing does not descend into sub-folders).

use super::S3Store;
use crate::pitr::record::{s3_key, s3_prefix};
use crate::store::{SnapshotReader, SnapshotStore as _, StoreError};
use futures::TryStreamExt as _;
use object_store::{ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use std::sync::atomic::Ordering;

/// One delta object in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PitrObject {
    pub chain: String,
    pub file: String,
    pub size: u64,
}

impl S3Store {
    /// Uploads one file of a chain (a segment or its record), in a single PUT: S3 makes it
    /// visible whole or not at all.
    pub async fn put_pitr_object(&self, chain: &str, file: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let key = s3_key(&self.config.folder, chain, file);
        self.count(1);
        self.store
            .put(&self.path(&key), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| self.error("upload delta", key, &e))
    }

    /// Uploads one file of a chain only if no object has its name (`If-None-Match: *`): two
    /// writers of one chain (the two leaders of a leader change) never replace each other's
    /// file, so a record always sits beside the segment it describes. A bucket that refuses
    /// conditional uploads (HTTP 501) gets plain ones from then on, with a warning.
    pub async fn create_pitr_object(&self, chain: &str, file: &str, bytes: Vec<u8>) -> Result<Created, StoreError> {
        if !self.unconditional_puts.load(Ordering::Relaxed) {
            let key = s3_key(&self.config.folder, chain, file);
            let options = PutOptions { mode: PutMode::Create, ..Default::default() };
            self.count(1);
            match self.store.put_opts(&self.path(&key), PutPayload::from(bytes.clone()), options).await {
                Ok(_) => return Ok(Created::Stored),
                Err(object_store::Error::AlreadyExists { .. }) => return Ok(Created::AlreadyThere),
                Err(e) if refuses_conditions(&e) => {
                    self.unconditional_puts.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        bucket = %self.config.bucket,
                        "the bucket does not take conditional uploads (If-None-Match): delta files are uploaded without the check that keeps two writers of one chain apart"
                    );
                }
                Err(e) => return Err(self.error("upload delta", key, &e)),
            }
        }
        self.put_pitr_object(chain, file, bytes).await.map(|()| Created::Stored)
    }

    /// Every delta object of the folder.
    pub async fn list_pitr_objects(&self) -> Result<Vec<PitrObject>, StoreError> {
        let prefix = s3_prefix(&self.config.folder);
        self.count(1);
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.path(&prefix)))
            .try_collect()
            .await
            .map_err(|e| self.error("list deltas", prefix.clone(), &e))?;
        Ok(listed.into_iter().filter_map(|o| parse_key(o.location.as_ref(), &prefix, o.size)).collect())
    }

    /// Downloads one file of a chain, refusing one larger than `limit` bytes.
    pub async fn get_pitr_object(&self, chain: &str, file: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        let key = s3_key(&self.config.folder, chain, file);
        self.count(1);
        let result =
            self.store.get(&self.path(&key)).await.map_err(|e| self.error("download delta", key.clone(), &e))?;
        if result.meta.size > limit {
            return Err(StoreError::S3 {
                op: "download delta",
                target: key,
                problem: None,
                message: format!("{} bytes, more than the {limit} a delta object may have", result.meta.size),
            });
        }
        let bytes = result.bytes().await.map_err(|e| self.error("download delta", key, &e))?;
        Ok(bytes.to_vec())
    }
}

impl S3Store {
    /// Whether one file of a chain is stored.
    pub async fn pitr_object_exists(&self, chain: &str, file: &str) -> Result<bool, StoreError> {
        let key = s3_key(&self.config.folder, chain, file);
        self.count(1);
        match self.store.head(&self.path(&key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("look up delta", key, &e)),
        }
    }

    /// Deletes one file of a chain (gone already is fine).
    pub async fn delete_pitr_object(&self, chain: &str, file: &str) -> Result<(), StoreError> {
        let key = s3_key(&self.config.folder, chain, file);
        self.count(1);
        match self.store.delete(&self.path(&key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete delta", key, &e)),
        }
    }
}

/// What a conditional upload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The file is stored under its name.
    Stored,
    /// An object of that name was there already (another writer's); nothing was written.
    AlreadyThere,
}

/// Whether an upload failed because the server does not implement conditional uploads.
fn refuses_conditions(e: &object_store::Error) -> bool {
    let text = e.to_string();
    text.contains("501") || text.contains("NotImplemented")
}

impl PitrObject {
    /// The last revision a segment or record file covers, from its name
    /// (`<first>-<last>.seg.zst` or `.json`).
    pub fn last_revision(&self) -> Option<i64> {
        let (_, rest) = self.file.split_once('-')?;
        rest.split('.').next()?.parse().ok()
    }

    pub fn is_record(&self) -> bool {
        self.file.ends_with(".json")
    }
}

#[async_trait::async_trait]
impl crate::pitr::objects::DeltaObjects for S3Store {
    fn deltas_location(&self) -> String {
        self.describe()
    }

    async fn list_deltas(&self) -> Result<Vec<PitrObject>, StoreError> {
        self.list_pitr_objects().await
    }

    async fn get_delta(&self, chain: &str, file: &str, limit: u64) -> Result<Vec<u8>, StoreError> {
        self.get_pitr_object(chain, file, limit).await
    }

    async fn open_delta(&self, chain: &str, file: &str) -> Result<SnapshotReader, StoreError> {
        let key = s3_key(&self.config.folder, chain, file);
        self.count(1);
        let result =
            self.store.get(&self.path(&key)).await.map_err(|e| self.error("download delta", key.clone(), &e))?;
        let size = result.meta.size;
        let stream = result.into_stream().map_err(std::io::Error::other);
        Ok(SnapshotReader { reader: Box::new(tokio_util::io::StreamReader::new(stream)), size })
    }

    async fn delete_delta(&self, chain: &str, file: &str) -> Result<(), StoreError> {
        self.delete_pitr_object(chain, file).await
    }
}

/// `<prefix>/<chain>/.metadata/<file>`, anything else is not ours.
pub(crate) fn parse_key(key: &str, prefix: &str, size: u64) -> Option<PitrObject> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (chain, metadata, file) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || metadata != etcdsnap_api::consts::METADATA_DIR || !crate::pitr::valid_chain_name(chain)
    {
        return None;
    }
    Some(PitrObject { chain: chain.into(), file: file.into(), size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_keys_of_the_delta_layout_are_delta_objects() {
        let prefix = "db/.etcdsnap-deltas";
        let chain = "etcd-snapshot-node-a-1700000000";
        let good = format!("{prefix}/{chain}/.metadata/00000000000000000001-00000000000000000002.json");
        assert_eq!(
            parse_key(&good, prefix, 7),
            Some(PitrObject {
                chain: chain.into(),
                file: "00000000000000000001-00000000000000000002.json".into(),
                size: 7
            })
        );
        assert_eq!(parse_key(&good, prefix, 7).unwrap().last_revision(), Some(2));
        for bad in [
            format!("{prefix}/{chain}/x.json"),
            format!("{prefix}/{chain}/.metadata/a/b"),
            format!("{prefix}/../.metadata/x"),
            format!("{prefix}-other/{chain}/.metadata/x"),
        ] {
            assert_eq!(parse_key(&bad, prefix, 1), None, "{bad}");
        }
    }
}
