//! Snapshots in an S3 bucket folder, in K3s's layout: `<folder>/<name>` and
//! `<folder>/.metadata/<name>`, with K3s's user metadata (`k3s-cluster-id`, `k3s-node-name`,
//! `k3s-token-hash`) plus etcdsnap's own.
//!
//! Uploads stream as multipart uploads in the same pass that writes the local copy. Listings
//! use the real `<folder>/` prefix with a `/` delimiter (no sibling or nested folders) and learn
//! per-object details from metadata documents, or for K3s's objects from a HEAD, each fetched
//! once per ETag thanks to [`cache::DetailsCache`].

pub mod cache;
pub mod config;
pub mod deltas;
pub mod hints;
pub mod list;
mod request;
pub mod settings;
mod sink;

use super::{Listing, NewSnapshot, SnapshotReader, SnapshotSink, SnapshotStore, StoreError};
use crate::record::{MetadataSource, SnapshotRecord};
use async_trait::async_trait;
use cache::{DetailsCache, Learned};

use crate::describe_error;
use crate::store::retention::matches_base;
use etcdsnap_api::consts::{
    S3_META_CLUSTER_ID, S3_META_COMPRESSION, S3_META_ETCD_REVISION, S3_META_ETCD_VERSION, S3_META_NODE_NAME,
    S3_META_TOKEN_HASH,
};
use etcdsnap_api::metadata::MAX_METADATA_BYTES;
use etcdsnap_api::{
    ETCDSnapshotS3, MetadataDocument, SnapshotName, StorageKind, StoredMetadata, TokenHash, parse_stored_metadata,
};
use futures::{StreamExt, TryStreamExt};
use hints::{S3Problem, explain};
use list::{ListedObject, list_prefix};
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMultipartOptions,
    RetryConfig,
};
use sink::S3Sink;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use config::{BucketLookup, S3Config};
pub use settings::{RawS3Settings, S3Key, S3SettingsError, SettingsOrigin};

/// Concurrent GET/HEAD requests while a listing fills its cache.
const DETAIL_FETCHES: usize = 8;

/// Hands object_store the HTTP client built from our settings (proxy, CA, timeouts), so every
/// S3 request, ours and object_store's, goes through the same client.
#[derive(Debug)]
struct FixedClient(reqwest::Client);

impl HttpConnector for FixedClient {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(self.0.clone()))
    }
}

/// A bucket folder.
pub struct S3Store {
    config: S3Config,
    store: AmazonS3,
    http: reqwest::Client,
    cache: Mutex<DetailsCache>,
    requests: AtomicU64,
    this: std::sync::Weak<S3Store>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("config", &self.config).finish_non_exhaustive()
    }
}

impl S3Store {
    /// Builds the clients (no request is made). `cache_file` keeps listing details between runs.
    pub fn new(config: S3Config, cache_file: Option<PathBuf>) -> Result<Arc<S3Store>, StoreError> {
        let http = config.http_client()?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_endpoint(config.object_store_endpoint())
            .with_allow_http(config.insecure)
            .with_virtual_hosted_style_request(config.virtual_hosted())
            .with_http_connector(FixedClient(http.clone()))
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: config.timeout,
                backoff: BackoffConfig::default(),
            })
            .with_client_options(ClientOptions::new().with_timeout(config.timeout).with_allow_http(config.insecure));
        if let (Some(access), Some(secret)) = (&config.access_key, &config.secret_key) {
            builder = builder.with_access_key_id(access).with_secret_access_key(secret);
        }
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token);
        }
        let store = builder.build().map_err(|e| StoreError::Client(format!("S3 client: {}", describe_error(&e))))?;
        let cache = Mutex::new(DetailsCache::load(cache_file));
        Ok(Arc::new_cyclic(|this| S3Store {
            config,
            store,
            http,
            cache,
            requests: AtomicU64::new(0),
            this: this.clone(),
        }))
    }

    /// Builds the store with its listing cache at
    /// `<data-dir>/cache/s3-<hash of endpoint, bucket and folder>.json`.
    pub fn with_cache_in(config: S3Config, data_dir: &std::path::Path) -> Result<Arc<S3Store>, StoreError> {
        let id = {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(format!("{}\n{}\n{}", config.endpoint, config.bucket, config.folder));
            hex::encode(digest)
        };
        let cache = data_dir.join("cache").join(format!("s3-{}.json", &id[..16]));
        S3Store::new(config, Some(cache))
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    pub(crate) fn object_store(&self) -> &AmazonS3 {
        &self.store
    }

    pub(crate) fn path(&self, key: &str) -> ObjectPath {
        ObjectPath::from(key)
    }

    /// Requests this store has made (LIST, HEAD, GET, PUT... each counted once).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn count(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
    }

    /// The `spec.s3` of this folder's resources (never credentials).
    pub fn spec(&self) -> ETCDSnapshotS3 {
        let c = &self.config;
        ETCDSnapshotS3 {
            endpoint: Some(c.endpoint.clone()),
            endpoint_ca: c.endpoint_ca_setting.clone(),
            skip_ssl_verify: c.skip_ssl_verify.then_some(true),
            bucket: Some(c.bucket.clone()),
            bucket_lookup: (c.bucket_lookup != BucketLookup::Auto).then(|| c.bucket_lookup.as_str().to_string()),
            region: Some(c.region.clone()),
            prefix: (!c.folder.is_empty()).then(|| c.folder.clone()),
            insecure: c.insecure.then_some(true),
        }
    }

    async fn credential(&self) -> Result<Arc<AwsCredential>, StoreError> {
        self.store.credentials().get_credential().await.map_err(|e| {
            let problem = S3Problem::NoCredentials;
            StoreError::S3 {
                op: "get credentials",
                target: self.config.describe(),
                problem: Some(problem),
                message: format!("{}: {}", problem.remedy(&self.config.bucket), describe_error(&e)),
            }
        })
    }

    fn folder_prefix(&self) -> String {
        if self.config.folder.is_empty() { String::new() } else { format!("{}/", self.config.folder) }
    }

    /// The snapshot name of a key directly in the folder, or why it is not one.
    fn name_of(&self, key: &str) -> Result<SnapshotName, String> {
        let prefix = self.folder_prefix();
        let name = key.strip_prefix(&prefix).ok_or_else(|| "outside the folder".to_string())?;
        let name = SnapshotName::parse(name).map_err(|e| e.to_string())?;
        // object_store re-encodes some characters in keys; such names could not be read back.
        if ObjectPath::parse(key).map(|p| p.as_ref() != key).unwrap_or(true) {
            return Err("the key contains characters etcdsnap cannot address".into());
        }
        Ok(name)
    }

    /// HEAD: the object's `x-amz-meta-*`.
    async fn head_metadata(&self, key: &str) -> Result<BTreeMap<String, String>, String> {
        self.count(1);
        let options = GetOptions { head: true, ..Default::default() };
        let result = self.store.get_opts(&self.path(key), options).await.map_err(|e| describe_error(&e))?;
        Ok(user_metadata(&result.attributes))
    }

    /// GET of a metadata document (already known to be small enough), parsed.
    async fn fetch_document(&self, key: &str, name: &SnapshotName) -> Learned {
        self.count(1);
        let bytes = match self.store.get(&self.path(key)).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        match bytes {
            Err(e) => Learned::Rejected { reason: describe_error(&e) },
            Ok(bytes) => match parse_stored_metadata(&bytes, name.as_str()) {
                Ok(StoredMetadata::Document(document)) => Learned::Document { document },
                Ok(StoredMetadata::ExtraMetadata(metadata)) => Learned::ExtraMetadata { metadata },
                Err(e) => Learned::Rejected { reason: e.to_string() },
            },
        }
    }

    fn record_of(&self, object: &ListedObject, name: SnapshotName) -> SnapshotRecord {
        let created_at = SnapshotRecord::creation_time(&name, object.last_modified);
        let location = self.config.location(name.as_str());
        SnapshotRecord {
            s3: Some(self.spec()),
            ..SnapshotRecord::stored(name, StorageKind::S3, String::new(), location, created_at, object.size)
        }
    }

    /// A failed object_store request on `target`, with its remedy when one is known.
    fn error(&self, op: &'static str, target: impl Into<String>, e: &object_store::Error) -> StoreError {
        StoreError::S3 {
            op,
            target: target.into(),
            problem: S3Problem::of_object_store(e),
            message: explain(e, &self.config.bucket),
        }
    }

    fn cache(&self) -> Result<std::sync::MutexGuard<'_, DetailsCache>, StoreError> {
        self.cache.lock().map_err(|_| StoreError::Worker {
            what: "the S3 listing cache".into(),
            message: "a listing panicked while holding it".into(),
        })
    }

    /// One listing: two paginated LISTs (the folder and its `.metadata/`), then GETs of
    /// documents and HEADs of document-less objects that the cache does not know at their ETag.
    async fn list_inner(&self) -> Result<Listing, StoreError> {
        let credential = self.credential().await?;
        let folder = self.folder_prefix();
        let meta_prefix = format!("{folder}{}/", etcdsnap_api::consts::METADATA_DIR);
        let (objects, n1) = list_prefix(&self.http, &self.config, &credential, &folder).await?;
        let (documents, n2) = list_prefix(&self.http, &self.config, &credential, &meta_prefix).await?;
        self.count((n1 + n2) as u64);
        let documents: HashMap<String, ListedObject> = documents
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(&meta_prefix).map(str::to_string).map(|n| (n, o)))
            .collect();

        let mut listing = Listing::default();
        let candidates = self.snapshot_objects(&objects, &mut listing.warnings);
        self.learn_documents(&candidates, &documents).await?;
        let (mut records, missing) = self.assemble(&candidates, &documents, &mut listing.warnings)?;
        self.learn_user_metadata(&mut records, missing, &mut listing.warnings).await?;

        let mut live: HashSet<String> = candidates.iter().map(|(o, _)| o.key.clone()).collect();
        live.extend(documents.values().map(|d| d.key.clone()));
        let mut cache = self.cache()?;
        cache.retain(&live);
        cache.save();
        drop(cache);
        records.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        listing.records = records;
        Ok(listing)
    }

    /// Objects that are snapshots; every other key costs a warning naming it.
    fn snapshot_objects<'a>(
        &self,
        objects: &'a [ListedObject],
        warnings: &mut Vec<String>,
    ) -> Vec<(&'a ListedObject, SnapshotName)> {
        let mut out = Vec::new();
        for object in objects {
            if object.size == 0 {
                continue; // K3s skips empty objects too (folder markers)
            }
            match self.name_of(&object.key) {
                Ok(name) => out.push((object, name)),
                Err(reason) => warnings.push(format!("skipping s3://{}/{}: {reason}", self.config.bucket, object.key)),
            }
        }
        out
    }

    /// Fetches (in parallel) the metadata documents the cache does not know at their ETag.
    /// Documents larger than the limit are never fetched.
    async fn learn_documents(
        &self,
        candidates: &[(&ListedObject, SnapshotName)],
        documents: &HashMap<String, ListedObject>,
    ) -> Result<(), StoreError> {
        let fetches: Vec<(String, String, SnapshotName)> = {
            let cache = self.cache()?;
            candidates
                .iter()
                .filter_map(|(_, name)| {
                    let doc = document_of(documents, name)?;
                    let small = doc.size as usize <= MAX_METADATA_BYTES;
                    (small && cache.get(&doc.key, &doc.etag).is_none())
                        .then(|| (doc.key.clone(), doc.etag.clone(), name.clone()))
                })
                .collect()
        };
        let fetched: Vec<(String, String, Learned)> = futures::stream::iter(fetches)
            .map(|(key, etag, name)| async move {
                let learned = self.fetch_document(&key, &name).await;
                (key, etag, learned)
            })
            .buffer_unordered(DETAIL_FETCHES)
            .collect()
            .await;
        let mut cache = self.cache()?;
        for (key, etag, learned) in fetched {
            cache.put(&key, &etag, learned);
        }
        Ok(())
    }

    /// Records from objects and what the cache knows; also returns which records still need
    /// their object's user metadata (no usable document, not cached).
    fn assemble(
        &self,
        candidates: &[(&ListedObject, SnapshotName)],
        documents: &HashMap<String, ListedObject>,
        warnings: &mut Vec<String>,
    ) -> Result<(Vec<SnapshotRecord>, Vec<MissingHead>), StoreError> {
        let cache = self.cache()?;
        let mut records = Vec::with_capacity(candidates.len());
        let mut missing = Vec::new();
        for (object, name) in candidates {
            let mut record = self.record_of(object, name.clone());
            let has_document = match document_of(documents, name) {
                Some(doc) => self.apply_cached_document(&mut record, doc, &cache, warnings),
                None => false,
            };
            if has_document {
                // The object's own location and size are authoritative, not the document's.
                record.location = self.config.location(record.name.as_str());
                record.size = object.size;
                record.s3 = Some(self.spec());
            } else {
                match cache.get(&object.key, &object.etag) {
                    Some(Learned::UserMetadata { metadata }) => apply_user_metadata(&mut record, metadata),
                    _ => missing.push(MissingHead {
                        index: records.len(),
                        key: object.key.clone(),
                        etag: object.etag.clone(),
                    }),
                }
            }
            records.push(record);
        }
        Ok((records, missing))
    }

    /// Applies what is known about a record's metadata document; true if it was an etcdsnap
    /// document (which makes a HEAD of the object unnecessary).
    fn apply_cached_document(
        &self,
        record: &mut SnapshotRecord,
        doc: &ListedObject,
        cache: &DetailsCache,
        warnings: &mut Vec<String>,
    ) -> bool {
        if doc.size as usize > MAX_METADATA_BYTES {
            warnings.push(format!(
                "ignoring metadata s3://{}/{}: {} bytes, more than the {MAX_METADATA_BYTES} accepted",
                self.config.bucket, doc.key, doc.size
            ));
            record.metadata_source = MetadataSource::Rejected;
            return false;
        }
        match cache.get(&doc.key, &doc.etag) {
            Some(Learned::Document { document }) => {
                record.apply_document((**document).clone());
                true
            }
            Some(Learned::ExtraMetadata { metadata }) => {
                record.extra_metadata = Some(metadata.clone());
                record.metadata_source = MetadataSource::K3sMap;
                false
            }
            Some(Learned::Rejected { reason }) => {
                warnings.push(format!("ignoring metadata s3://{}/{}: {reason}", self.config.bucket, doc.key));
                record.metadata_source = MetadataSource::Rejected;
                false
            }
            Some(Learned::UserMetadata { .. }) | None => false,
        }
    }

    /// HEADs (in parallel) the objects whose user metadata is needed and not cached.
    async fn learn_user_metadata(
        &self,
        records: &mut [SnapshotRecord],
        missing: Vec<MissingHead>,
        warnings: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let answers: Vec<(MissingHead, UserMetadataAnswer)> = futures::stream::iter(missing)
            .map(|m| async move {
                let result = self.head_metadata(&m.key).await;
                (m, result)
            })
            .buffer_unordered(DETAIL_FETCHES)
            .collect()
            .await;
        let mut cache = self.cache()?;
        for (m, result) in answers {
            match result {
                Ok(metadata) => {
                    apply_user_metadata(&mut records[m.index], &metadata);
                    cache.put(&m.key, &m.etag, Learned::UserMetadata { metadata });
                }
                Err(e) => warnings.push(format!("no object metadata for s3://{}/{}: {e}", self.config.bucket, m.key)),
            }
        }
        Ok(())
    }

    /// Aborts multipart uploads that a crashed or killed save of `node` (snapshots named
    /// `<base>-<node>-<unix>`, exactly: `server-1` never owns `k3s-server-1`'s uploads) left
    /// open; S3 keeps and bills their parts until aborted. Only uploads idle (neither started nor
    /// written to) for `idle`, and at least the S3 timeout, are touched: a save still running
    /// writes a part far more often than that, so no save in progress loses its upload, not
    /// even one of another cluster's node of the same name. The record and metadata a killed
    /// save wrote before completing its upload go with it.
    pub async fn abort_stale_uploads(&self, node: &str, base: &str, idle: Duration) -> Result<usize, StoreError> {
        let credential = self.credential().await?;
        let uploads = list::list_uploads(&self.http, &self.config, &credential, &self.folder_prefix()).await?;
        self.count(1);
        let idle = jiff::SignedDuration::try_from(idle.max(self.config.timeout)).unwrap_or(jiff::SignedDuration::MAX);
        let before = jiff::Timestamp::now().checked_sub(idle).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let mut aborted = 0;
        for upload in uploads {
            let Ok(name) = self.name_of(&upload.key) else { continue };
            if !matches_base(&name, base, node) || upload.initiated >= before {
                continue;
            }
            self.count(1);
            if list::last_part_time(&self.http, &self.config, &credential, &upload).await?.is_some_and(|t| t >= before)
            {
                continue; // still being written
            }
            list::abort_upload(&self.http, &self.config, &credential, &upload).await?;
            self.count(1);
            tracing::info!(key = %upload.key, "aborted a multipart upload left by an interrupted save");
            aborted += 1;
            if let Ok(false) = self.exists(&name).await {
                self.delete_documents(&name).await?;
            }
        }
        Ok(aborted)
    }

    /// Earlier releases kept the record of a snapshot in `.metadata/<name>`, K3s's object: the
    /// record moves to `<name>.etcdsnap.json`, and `<name>` becomes what K3s writes there (the
    /// extra metadata, or nothing). Only `node`'s own snapshots are touched, and only records
    /// a listing has already read (the listing cache knows them), so this costs one LIST and
    /// the writes. The record is written before K3s's object changes: a crash loses nothing.
    pub async fn migrate_legacy_records(&self, node: &str) -> Result<usize, StoreError> {
        let credential = self.credential().await?;
        let meta_prefix = format!("{}{}/", self.folder_prefix(), etcdsnap_api::consts::METADATA_DIR);
        let (documents, requests) = list_prefix(&self.http, &self.config, &credential, &meta_prefix).await?;
        self.count(requests as u64);
        let names: HashSet<String> =
            documents.iter().filter_map(|o| o.key.strip_prefix(&meta_prefix).map(str::to_string)).collect();
        let legacy: Vec<MetadataDocument> = {
            let cache = self.cache()?;
            documents
                .iter()
                .filter_map(|o| {
                    let name = SnapshotName::parse(o.key.strip_prefix(&meta_prefix)?).ok()?;
                    if names.contains(&name.record_file_name()) {
                        return None;
                    }
                    match cache.get(&o.key, &o.etag) {
                        Some(Learned::Document { document }) if document.node_name == node => {
                            Some((**document).clone())
                        }
                        _ => None,
                    }
                })
                .collect()
        };
        let mut moved = 0;
        for doc in legacy {
            let name = SnapshotName::parse(&doc.name).map_err(|e| StoreError::Client(e.to_string()))?;
            self.put_json(&self.config.record_key(name.as_str()), doc.to_json()).await?;
            let k3s_key = self.config.metadata_key(name.as_str());
            match doc.extra_metadata.as_ref().filter(|m| !m.is_empty()) {
                Some(extra) => self.put_json(&k3s_key, etcdsnap_api::go::marshal_string_map(extra)).await?,
                None => {
                    self.count(1);
                    self.store.delete(&self.path(&k3s_key)).await.map_err(|e| self.error("delete", &k3s_key, &e))?;
                }
            }
            tracing::info!(snapshot = %name, "moved an earlier release's record out of K3s's metadata object");
            moved += 1;
        }
        Ok(moved)
    }

    async fn put_json(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, "application/json".into());
        let options = object_store::PutOptions { attributes, ..Default::default() };
        self.count(1);
        self.store
            .put_opts(&self.path(key), object_store::PutPayload::from(body), options)
            .await
            .map(|_| ())
            .map_err(|e| self.error("put", key, &e))
    }

    /// Deletes a snapshot's record and K3s metadata objects (missing ones are fine).
    async fn delete_documents(&self, name: &SnapshotName) -> Result<(), StoreError> {
        for key in [self.config.record_key(name.as_str()), self.config.metadata_key(name.as_str())] {
            let path = self.path(&key);
            self.count(1);
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error("delete metadata", path.to_string(), &e)),
            }
        }
        Ok(())
    }
}

/// What describes a snapshot in the metadata folder: etcdsnap's record when there is one (it
/// holds everything, the extra metadata included), else `.metadata/<name>` (K3s's extra
/// metadata, or the record of a snapshot saved by an earlier etcdsnap release).
fn document_of<'a>(documents: &'a HashMap<String, ListedObject>, name: &SnapshotName) -> Option<&'a ListedObject> {
    documents.get(&name.record_file_name()).or_else(|| documents.get(name.as_str()))
}

/// A HEAD's answer: the object's user metadata, or why it could not be read.
type UserMetadataAnswer = Result<BTreeMap<String, String>, String>;

/// A record whose object's user metadata must be fetched.
struct MissingHead {
    index: usize,
    key: String,
    etag: String,
}

/// `x-amz-meta-*` attributes as a plain map with lowercase names.
fn user_metadata(attributes: &Attributes) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|(k, v)| match k {
            Attribute::Metadata(name) => Some((name.to_lowercase(), v.as_ref().to_string())),
            _ => None,
        })
        .collect()
}

/// What K3s's user metadata says about an object without an etcdsnap document.
fn apply_user_metadata(record: &mut SnapshotRecord, metadata: &BTreeMap<String, String>) {
    let get = |k: &str| metadata.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(node) = get(S3_META_NODE_NAME) {
        record.node_name = node.to_string();
    }
    record.token_hash = get(S3_META_TOKEN_HASH).and_then(TokenHash::parse_recorded);
    record.cluster_id = get(S3_META_CLUSTER_ID).map(str::to_string);
    if let Some(sha) = get(etcdsnap_api::consts::S3_META_SHA256) {
        record.sha256 = Some(sha.to_string());
    }
}

fn content_type(name: &SnapshotName) -> &'static str {
    if name.as_str().ends_with(".zip") { "application/zip" } else { "application/octet-stream" }
}

#[async_trait]
impl SnapshotStore for S3Store {
    async fn clean_interrupted(&self, node: &str, base: &str, idle: Duration) -> Result<usize, StoreError> {
        let aborted = self.abort_stale_uploads(node, base, idle).await?;
        Ok(aborted + self.migrate_legacy_records(node).await?)
    }

    async fn check(&self) -> Result<(), StoreError> {
        let credential = self.credential().await?;
        self.count(1);
        list::probe(&self.http, &self.config, &credential, &self.folder_prefix()).await
    }

    fn as_s3(&self) -> Option<&S3Store> {
        Some(self)
    }

    fn kind(&self) -> StorageKind {
        StorageKind::S3
    }

    fn describe(&self) -> String {
        self.config.describe()
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        self.list_inner().await
    }

    async fn create(&self, new: &NewSnapshot) -> Result<Box<dyn SnapshotSink>, StoreError> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type(&new.name).into());
        let mut put = |k: &'static str, v: String| {
            attributes.insert(Attribute::Metadata(k.into()), v.into());
        };
        put(S3_META_NODE_NAME, new.node_name.clone());
        if let Some(c) = &new.cluster_id {
            put(S3_META_CLUSTER_ID, c.clone());
        }
        if let Some(t) = &new.token_hash {
            put(S3_META_TOKEN_HASH, t.to_string());
        }
        put(S3_META_ETCD_REVISION, new.etcd.revision.to_string());
        put(S3_META_ETCD_VERSION, new.etcd.version.clone());
        put(S3_META_COMPRESSION, new.name.compression().to_string());
        let key = self.config.key(new.name.as_str());
        let path = self.path(&key);
        self.count(1);
        let upload = self
            .store
            .put_multipart_opts(&path, PutMultipartOptions { attributes: attributes.clone(), ..Default::default() })
            .await
            .map_err(|e| self.error("start upload", self.config.location(new.name.as_str()), &e))?;
        let this = self.this.upgrade().ok_or_else(|| StoreError::Finished(self.config.describe()))?;
        Ok(Box::new(S3Sink::start(this, new.name.clone(), attributes, upload)))
    }

    async fn open(&self, name: &SnapshotName) -> Result<SnapshotReader, StoreError> {
        let key = self.config.key(name.as_str());
        self.count(1);
        let result = self.store.get(&self.path(&key)).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound(name.to_string(), self.describe()),
            other => self.error("download", self.config.location(name.as_str()), &other),
        })?;
        let size = result.meta.size;
        let stream = result.into_stream().map_err(std::io::Error::other);
        Ok(SnapshotReader { reader: Box::new(tokio_util::io::StreamReader::new(stream)), size })
    }

    async fn update_record(&self, record: &crate::SnapshotRecord) -> Result<(), StoreError> {
        let name = &record.name;
        if !self.exists(name).await? {
            return Err(StoreError::NotFound(name.to_string(), self.describe()));
        }
        self.put_json(&self.config.record_key(name.as_str()), record.to_document().to_json()).await
    }

    async fn exists(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        let path = self.path(&self.config.key(name.as_str()));
        self.count(1);
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("check", self.config.location(name.as_str()), &e)),
        }
    }

    async fn delete(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        let key = self.config.key(name.as_str());
        let path = self.path(&key);
        self.count(1);
        let existed = match self.store.head(&path).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => {
                return Err(self.error("delete", self.config.location(name.as_str()), &e));
            }
        };
        if existed {
            self.count(1);
            self.store
                .delete(&path)
                .await
                .map_err(|e| self.error("delete", self.config.location(name.as_str()), &e))?;
        }
        self.delete_documents(name).await?;
        Ok(existed)
    }
}
