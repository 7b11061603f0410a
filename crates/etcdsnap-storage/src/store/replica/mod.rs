//! Replicas: second stores that receive a copy of every snapshot after its save, on S3, Google
//! Cloud Storage, Azure Blob Storage or a local directory, through object_store. A replica's
//! folder has the S3 layout (`<folder>/<name>`, `<folder>/.metadata/<name>.etcdsnap.json` and
//! the signature and kit beside it), so a replica on S3 is a folder K3s can read too.
//!
//! A replica is a [`SnapshotStore`]: `ls`, `verify`, drills and `restore --from-replica` read it
//! like any store. It never receives a save directly ([`SnapshotStore::create`] refuses):
//! [`ReplicaStore::copy_from`] streams a stored snapshot into it and checks what arrived
//! (`copy`). Listings are fail-closed like S3's: [`guard`] refuses a listing answer that is not
//! the provider's whole listing document (a proxy's HTML page, a page cut short), which fails
//! the listing instead of showing an empty folder. Point-in-time recovery's segments are copied
//! too, after they are durable in the primary, at the keys they have in S3 (`deltas`).

pub mod config;
mod copy;
mod deltas;
mod gcs;
pub mod guard;

use super::{Listing, NewSnapshot, SignedRecord, SnapshotReader, SnapshotSink, SnapshotStore, StoreError};
use crate::describe_error;
use crate::record::{MetadataSource, SnapshotRecord};
use async_trait::async_trait;
use etcdsnap_api::consts::METADATA_DIR;
use etcdsnap_api::metadata::MAX_METADATA_BYTES;
use etcdsnap_api::{SnapshotName, StorageKind, StoredMetadata, parse_stored_metadata};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::HashMap;
use std::sync::Arc;

pub use config::{Provider, ReplicaConfig, parse_replicas};
pub use copy::Copied;

/// Concurrent GETs of records while a listing reads them.
const RECORD_FETCHES: usize = 8;

/// A replica's folder.
pub struct ReplicaStore {
    config: ReplicaConfig,
    store: Arc<dyn ObjectStore>,
    folder: ObjectPath,
}

impl std::fmt::Debug for ReplicaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaStore").field("url", &self.config.url).finish_non_exhaustive()
    }
}

impl ReplicaStore {
    /// Builds the client (no request is made).
    pub fn new(config: ReplicaConfig) -> Result<ReplicaStore, StoreError> {
        let (store, folder) = config.build()?;
        Ok(ReplicaStore { config, store, folder })
    }

    /// The URL as given: how messages, metrics and `--from-replica` name this replica.
    pub fn url(&self) -> &str {
        &self.config.url
    }

    pub fn provider(&self) -> Result<Provider, StoreError> {
        self.config.provider()
    }

    fn key(&self, file: &str) -> ObjectPath {
        self.folder.clone().join(file)
    }

    fn metadata_key(&self, file: &str) -> ObjectPath {
        self.folder.clone().join(METADATA_DIR).join(file)
    }

    fn record_key(&self, name: &SnapshotName) -> ObjectPath {
        self.metadata_key(&name.record_file_name())
    }

    fn location(&self, name: &SnapshotName) -> String {
        format!("{}/{name}", self.config.url)
    }

    fn error(&self, op: &'static str, target: impl std::fmt::Display, e: &object_store::Error) -> StoreError {
        StoreError::Replica { op, target: format!("{}: {target}", self.config.url), message: describe_error(e) }
    }

    /// Objects directly in `prefix` (no sub-folder), by file name.
    async fn list_files(&self, prefix: &ObjectPath) -> Result<Vec<object_store::ObjectMeta>, StoreError> {
        let listed = self.store.list_with_delimiter(Some(prefix)).await.map_err(|e| self.error("list", prefix, &e))?;
        Ok(listed.objects)
    }

    /// GET of a small object, at most `limit` bytes; None when absent.
    async fn get_small(&self, key: &ObjectPath, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let result = match self.store.get(key).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("get", key, &e)),
        };
        if result.meta.size > limit {
            let message = format!("{} bytes, more than the {limit} accepted", result.meta.size);
            return Err(StoreError::Replica { op: "get", target: key.to_string(), message });
        }
        result.bytes().await.map(|b| Some(b.to_vec())).map_err(|e| self.error("get", key, &e))
    }

    async fn put_small(&self, key: &ObjectPath, body: Vec<u8>) -> Result<(), StoreError> {
        self.store.put(key, PutPayload::from(body)).await.map(|_| ()).map_err(|e| self.error("put", key, &e))
    }

    async fn delete_if_present(&self, key: &ObjectPath) -> Result<(), StoreError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", key, &e)),
        }
    }

    /// The record of one listed snapshot, with what its document says when it has one.
    fn record_of(&self, object: &object_store::ObjectMeta, name: SnapshotName) -> SnapshotRecord {
        let modified =
            jiff::Timestamp::from_second(object.last_modified.timestamp()).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let created_at = SnapshotRecord::creation_time(&name, modified);
        let location = self.location(&name);
        SnapshotRecord::stored(name, StorageKind::S3, String::new(), location, created_at, object.size)
    }
}

#[async_trait]
impl SnapshotStore for ReplicaStore {
    fn kind(&self) -> StorageKind {
        StorageKind::S3
    }

    fn describe(&self) -> String {
        format!("replica {}", self.config.url)
    }

    fn deltas(&self) -> Option<&dyn crate::pitr::objects::DeltaObjects> {
        Some(self)
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.list_files(&self.folder).await.map(|_| ())
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let objects = self.list_files(&self.folder).await?;
        let meta_prefix = self.folder.clone().join(METADATA_DIR);
        let documents: HashMap<String, object_store::ObjectMeta> = self
            .list_files(&meta_prefix)
            .await?
            .into_iter()
            .filter_map(|o| o.location.filename().map(str::to_string).map(|f| (f, o)))
            .collect();
        let mut listing = Listing::default();
        let mut found = Vec::new();
        for object in &objects {
            if object.size == 0 {
                continue;
            }
            let Some(file) = object.location.filename() else { continue };
            match SnapshotName::parse(file) {
                Ok(name) => found.push(self.record_of(object, name)),
                Err(e) => listing.warnings.push(format!("skipping {}/{file}: {e}", self.config.url)),
            }
        }
        let wanted: Vec<(usize, ObjectPath)> = found
            .iter()
            .enumerate()
            .filter(|(_, r)| documents.contains_key(&r.name.record_file_name()))
            .map(|(i, r)| (i, self.record_key(&r.name)))
            .collect();
        let fetched: Vec<(usize, Result<Option<Vec<u8>>, StoreError>)> = futures::stream::iter(wanted)
            .map(|(i, key)| async move { (i, self.get_small(&key, MAX_METADATA_BYTES as u64).await) })
            .buffer_unordered(RECORD_FETCHES)
            .collect()
            .await;
        for (i, bytes) in fetched {
            let record = &mut found[i];
            let document = match bytes? {
                Some(b) => parse_stored_metadata(&b, record.name.as_str()).map_err(|e| e.to_string()),
                None => continue,
            };
            match document {
                Ok(StoredMetadata::Document(doc)) => {
                    let (location, size) = (record.location.clone(), record.size);
                    record.apply_document(*doc);
                    record.location = location;
                    record.size = size;
                    // The record is the source's, byte for byte: the lock it names is on the
                    // source's object, not on this copy.
                    record.s3_lock = None;
                }
                Ok(StoredMetadata::ExtraMetadata(_)) => record.metadata_source = MetadataSource::K3sMap,
                Err(e) => {
                    record.metadata_source = MetadataSource::Rejected;
                    listing.warnings.push(format!("ignoring the record of {}: {e}", record.location));
                }
            }
        }
        found.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        listing.records = found;
        Ok(listing)
    }

    async fn create(&self, new: &NewSnapshot) -> Result<Box<dyn SnapshotSink>, StoreError> {
        Err(StoreError::Unsupported(format!(
            "{}: a replica receives copies of stored snapshots, not saves ({})",
            self.config.url, new.name
        )))
    }

    async fn open(&self, name: &SnapshotName) -> Result<SnapshotReader, StoreError> {
        let key = self.key(name.as_str());
        let result = self.store.get(&key).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound(name.to_string(), self.describe()),
            other => self.error("download", &key, &other),
        })?;
        let size = result.meta.size;
        let stream = result.into_stream().map_err(std::io::Error::other);
        Ok(SnapshotReader { reader: Box::new(tokio_util::io::StreamReader::new(stream)), size })
    }

    async fn delete(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        let key = self.key(name.as_str());
        let existed = self.exists(name).await?;
        if existed {
            self.delete_if_present(&key).await?;
        }
        let n = name.as_str();
        for file in
            [name.record_file_name(), etcdsnap_api::seal::signature_file_name(n), etcdsnap_api::seal::kit_file_name(n)]
        {
            self.delete_if_present(&self.metadata_key(&file)).await?;
        }
        Ok(existed)
    }

    async fn exists(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        let key = self.key(name.as_str());
        match self.store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("check", &key, &e)),
        }
    }

    async fn update_record(&self, record: &SnapshotRecord, signature: Option<&str>) -> Result<(), StoreError> {
        let name = &record.name;
        if !self.exists(name).await? {
            return Err(StoreError::NotFound(name.to_string(), self.describe()));
        }
        if let Some(signature) = signature {
            let key = self.metadata_key(&etcdsnap_api::seal::signature_file_name(name.as_str()));
            self.put_small(&key, signature.as_bytes().to_vec()).await?;
        }
        self.put_small(&self.record_key(name), record.to_document().to_json()).await
    }

    async fn signed_record(&self, name: &SnapshotName) -> Result<SignedRecord, StoreError> {
        let limit = MAX_METADATA_BYTES as u64;
        let signature_key = self.metadata_key(&etcdsnap_api::seal::signature_file_name(name.as_str()));
        Ok(SignedRecord {
            record: self.get_small(&self.record_key(name), limit).await?,
            signature: self.get_small(&signature_key, limit).await?,
        })
    }

    async fn kit(&self, name: &SnapshotName) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.metadata_key(&etcdsnap_api::seal::kit_file_name(name.as_str()));
        self.get_small(&key, crate::seal::kit::MAX_KIT_BYTES * 2).await
    }
}
