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
mod records;

use super::s3::cache::{DetailsCache, Learned};
use super::{Listing, NewSnapshot, SignedRecord, SnapshotReader, SnapshotSink, SnapshotStore, StoreError};
use crate::describe_error;
use crate::record::{MetadataSource, SnapshotRecord};
use async_trait::async_trait;
use etcdsnap_api::consts::METADATA_DIR;
use etcdsnap_api::metadata::MAX_METADATA_BYTES;
use etcdsnap_api::{SnapshotName, StorageKind};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::collections::HashMap;
use std::sync::Arc;

pub use config::{Provider, ReplicaConfig, parse_replicas};
pub use copy::Copied;

/// A replica's folder.
pub struct ReplicaStore {
    config: ReplicaConfig,
    store: Arc<dyn ObjectStore>,
    folder: ObjectPath,
    /// The listing cache of a primary store ([`crate::store::cloud`]); replicas have none.
    cache: Option<std::sync::Mutex<DetailsCache>>,
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
        Ok(ReplicaStore { config, store, folder, cache: None })
    }

    /// Records read by listings are kept in `file` (see [`DetailsCache`]), keyed by ETag.
    pub(crate) fn with_cache(mut self, file: std::path::PathBuf) -> ReplicaStore {
        self.cache = Some(std::sync::Mutex::new(DetailsCache::load(Some(file))));
        self
    }

    pub(crate) fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The URL as given: how messages, metrics and `--from-replica` name this replica.
    pub fn url(&self) -> &str {
        &self.config.url
    }

    pub fn provider(&self) -> Result<Provider, StoreError> {
        self.config.provider()
    }

    pub(crate) fn key(&self, file: &str) -> ObjectPath {
        self.folder.clone().join(file)
    }

    pub(crate) fn metadata_key(&self, file: &str) -> ObjectPath {
        self.folder.clone().join(METADATA_DIR).join(file)
    }

    pub(crate) fn record_key(&self, name: &SnapshotName) -> ObjectPath {
        self.metadata_key(&name.record_file_name())
    }

    pub(crate) fn location(&self, name: &SnapshotName) -> String {
        format!("{}/{name}", self.config.url)
    }

    pub(crate) fn error(
        &self,
        op: &'static str,
        target: impl std::fmt::Display,
        e: &object_store::Error,
    ) -> StoreError {
        let target = match target.to_string() {
            t if t.is_empty() => self.config.url.clone(),
            t => format!("{}: {t}", self.config.url),
        };
        StoreError::Replica { op, target, message: describe_error(e) }
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

    pub(crate) async fn put_small(&self, key: &ObjectPath, body: Vec<u8>) -> Result<(), StoreError> {
        self.store.put(key, PutPayload::from(body)).await.map(|_| ()).map_err(|e| self.error("put", key, &e))
    }

    pub(crate) async fn delete_if_present(&self, key: &ObjectPath) -> Result<(), StoreError> {
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
        let wanted: Vec<(usize, ObjectPath, String)> = found
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let document = documents.get(&r.name.record_file_name())?;
                Some((i, self.record_key(&r.name), document.e_tag.clone().unwrap_or_default()))
            })
            .collect();
        for (i, learned) in self.read_records(&found, wanted).await? {
            let record = &mut found[i];
            match learned {
                Learned::Document { document } => {
                    let (location, size) = (record.location.clone(), record.size);
                    record.apply_document(*document);
                    record.location = location;
                    record.size = size;
                    // The record is the source's, byte for byte: the lock it names is on the
                    // source's object, not on this copy.
                    record.s3_lock = None;
                }
                Learned::ExtraMetadata { .. } => record.metadata_source = MetadataSource::K3sMap,
                Learned::Rejected { reason } => {
                    record.metadata_source = MetadataSource::Rejected;
                    listing.warnings.push(format!("ignoring the record of {}: {reason}", record.location));
                }
                Learned::UserMetadata { .. } => {}
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
