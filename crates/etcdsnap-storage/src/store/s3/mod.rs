//! Snapshots in an S3 bucket folder, in K3s's layout: `<folder>/<name>` and
//! `<folder>/.metadata/<name>`, with K3s's user metadata (`k3s-cluster-id`, `k3s-node-name`,
//! `k3s-token-hash`, or RKE2's `rke2-*`: [`S3Config::program`]) plus etcdsnap's own.
//!
//! Uploads stream as multipart uploads in the same pass that writes the local copy. Listings
//! use the real `<folder>/` prefix with a `/` delimiter (no sibling or nested folders) and learn
//! per-object details from metadata documents, or for K3s's objects from a HEAD, each fetched
//! once per ETag thanks to [`cache::DetailsCache`].
//!
//! Where each part lives: this file holds the store and its [`SnapshotStore`] methods; `records`
//! turns one listing into records; `sink` uploads a new snapshot; `cleanup` tidies what
//! interrupted saves and earlier releases left; `list` and `request` are the hand-written,
//! validated S3 calls; `settings` and `config` the settings; `pitr` point-in-time recovery's
//! objects.

pub mod cache;
mod cleanup;
pub mod config;
pub mod hints;
pub mod list;
mod lock;
pub mod pitr;
mod records;
mod request;
pub mod settings;
mod sink;
pub(crate) use sink::upload_parts;

use super::{Listing, NewSnapshot, SignedRecord, SnapshotReader, SnapshotSink, SnapshotStore, StoreError};
use crate::describe_error;
use async_trait::async_trait;
use cache::DetailsCache;
use etcdsnap_api::consts::{S3_META_COMPRESSION, S3_META_ETCD_REVISION, S3_META_ETCD_VERSION};
use etcdsnap_api::{ETCDSnapshotS3, SnapshotName, StorageKind};
use futures::TryStreamExt;
use hints::{S3Problem, explain};
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMultipartOptions, RetryConfig,
};
use sink::S3Sink;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use config::{BucketLookup, S3Config};
pub use settings::{RawS3Settings, S3Key, S3SettingsError, SettingsOrigin};

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
    /// Whether the bucket locks objects, and its default retention (asked before the first save
    /// without `--s3-lock-retention`, or at the first removal).
    bucket_lock: std::sync::OnceLock<(bool, Option<lock::DefaultRetention>)>,
    /// Set once the bucket refused a conditional upload: delta files are then uploaded plainly.
    unconditional_puts: std::sync::atomic::AtomicBool,
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
            // Every PUT and part carries its x-amz-checksum-sha256: S3 refuses uploads without an
            // integrity header into a bucket with Object Lock.
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
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
            bucket_lock: std::sync::OnceLock::new(),
            unconditional_puts: std::sync::atomic::AtomicBool::new(false),
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

    /// GET of a small object beside a snapshot, at most `limit` bytes; None when absent.
    async fn get_small(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.count(1);
        let result = match self.store.get(&self.path(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("get", key, &e)),
        };
        if result.meta.size > limit {
            return Err(StoreError::S3 {
                op: "get",
                target: key.to_string(),
                problem: None,
                message: format!("{} bytes, more than the {limit} accepted", result.meta.size),
            });
        }
        result.bytes().await.map(|b| Some(b.to_vec())).map_err(|e| self.error("get", key, &e))
    }

    /// Deletes a snapshot's record, its companions and K3s metadata objects (missing ones are
    /// fine).
    async fn delete_documents(&self, name: &SnapshotName) -> Result<(), StoreError> {
        let n = name.as_str();
        for key in [
            self.config.record_key(n),
            self.config.metadata_key(&etcdsnap_api::seal::signature_file_name(n)),
            self.config.metadata_key(&etcdsnap_api::seal::kit_file_name(n)),
            self.config.metadata_key(n),
        ] {
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

    fn deltas(&self) -> Option<&dyn crate::pitr::objects::DeltaObjects> {
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
        self.learn_bucket_lock().await;
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type(&new.name).into());
        let mut put = |k: &'static str, v: String| {
            attributes.insert(Attribute::Metadata(k.into()), v.into());
        };
        let program = self.config.program;
        put(program.s3_meta_node_name(), new.node_name.clone());
        if let Some(c) = &new.cluster_id {
            put(program.s3_meta_cluster_id(), c.clone());
        }
        if let Some(t) = &new.token_hash {
            put(program.s3_meta_token_hash(), t.to_string());
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

    async fn update_record(&self, record: &crate::SnapshotRecord, signature: Option<&str>) -> Result<(), StoreError> {
        let name = &record.name;
        if !self.exists(name).await? {
            return Err(StoreError::NotFound(name.to_string(), self.describe()));
        }
        if let Some(signature) = signature {
            let key = self.config.metadata_key(&etcdsnap_api::seal::signature_file_name(name.as_str()));
            self.count(1);
            self.store
                .put(&self.path(&key), object_store::PutPayload::from(signature.as_bytes().to_vec()))
                .await
                .map_err(|e| self.error("put", key.as_str(), &e))?;
        }
        let record_key = self.config.record_key(name.as_str());
        self.put_json(&record_key, record.to_document().to_json()).await?;
        let mut rewritten = vec![record_key];
        if signature.is_some() {
            rewritten.push(self.config.metadata_key(&etcdsnap_api::seal::signature_file_name(name.as_str())));
        }
        // The rewritten objects get a lock of their own from now; the record still names the
        // snapshot object's.
        match self.lock_from_now()? {
            Some(lock) => self.lock_objects(&rewritten, &lock).await,
            None => Ok(()),
        }
    }

    async fn signed_record(&self, name: &SnapshotName) -> Result<SignedRecord, StoreError> {
        let limit = etcdsnap_api::metadata::MAX_METADATA_BYTES as u64;
        let signature_key = self.config.metadata_key(&etcdsnap_api::seal::signature_file_name(name.as_str()));
        Ok(SignedRecord {
            record: self.get_small(&self.config.record_key(name.as_str()), limit).await?,
            signature: self.get_small(&signature_key, limit).await?,
        })
    }

    async fn kit(&self, name: &SnapshotName) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.config.metadata_key(&etcdsnap_api::seal::kit_file_name(name.as_str()));
        self.get_small(&key, crate::seal::kit::MAX_KIT_BYTES * 2).await
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
            Ok(meta) => {
                let modified = jiff::Timestamp::from_second(meta.last_modified.timestamp()).unwrap_or_default();
                if let Some(until) = self.locked_until(&key, modified).await? {
                    return Err(StoreError::ObjectLocked {
                        target: self.config.location(name.as_str()),
                        until: Some(until),
                    });
                }
                true
            }
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => {
                return Err(self.error("delete", self.config.location(name.as_str()), &e));
            }
        };
        if existed {
            self.count(1);
            self.store.delete(&path).await.map_err(|e| {
                // A bucket that refuses to delete a locked object without saying until when.
                if describe_error(&e).to_ascii_lowercase().contains("object lock") {
                    StoreError::ObjectLocked { target: self.config.location(name.as_str()), until: None }
                } else {
                    self.error("delete", self.config.location(name.as_str()), &e)
                }
            })?;
        }
        self.delete_documents(name).await?;
        Ok(existed)
    }
}
