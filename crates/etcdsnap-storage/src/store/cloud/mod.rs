//! Google Cloud Storage and Azure Blob Storage as a node's primary remote store, in place of
//! S3 (`--gcs-*`, `--azure-*`). A primary store is a replica's folder (the same layout, client,
//! fail-closed listings: [`ReplicaStore`]) that also takes saves: [`SnapshotStore::create`]
//! streams the snapshot into a GCS resumable upload or an Azure block list ([`sink`]). Its
//! listings keep what they read in the S3 store's listing cache, in the data directory.
//!
//! Its snapshots are remote snapshots like S3's ([`StorageKind::S3`]): K3s's resource has no
//! other kind, so their resources carry an `s3` block naming the endpoint, the bucket or
//! container and the folder, and a `gs://` or `az://` location.

mod sink;

use super::replica::{Provider, ReplicaConfig, ReplicaStore};
use super::{Listing, NewSnapshot, SignedRecord, SnapshotReader, SnapshotSink, SnapshotStore, StoreError};
use crate::record::SnapshotRecord;
use async_trait::async_trait;
use etcdsnap_api::{ETCDSnapshotS3, SnapshotName, StorageKind};
use object_store::ObjectStoreExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use url::Url;

/// A bucket folder (GCS) or container folder (Azure) holding a node's snapshots.
#[derive(Debug)]
pub struct CloudStore {
    config: ReplicaConfig,
    inner: Arc<ReplicaStore>,
}

impl CloudStore {
    /// Builds the client (no request is made). `cache`: the listing cache's file.
    pub fn new(config: ReplicaConfig, cache: Option<PathBuf>) -> Result<CloudStore, StoreError> {
        match config.provider()? {
            Provider::Gcs | Provider::Azure => {}
            Provider::S3 | Provider::File => {
                return Err(StoreError::Client(format!(
                    "{}: a primary store here is gs:// or az:// (S3 has the --s3-* flags, a directory --dir)",
                    config.url
                )));
            }
        }
        let mut inner = ReplicaStore::new(config.clone())?;
        if let Some(file) = cache {
            inner = inner.with_cache(file);
        }
        Ok(CloudStore { config, inner: Arc::new(inner) })
    }

    /// [`CloudStore::new`] with the listing cache under `<data_dir>/cache`, one file per
    /// store (its URL and endpoint).
    pub fn with_cache_in(config: ReplicaConfig, data_dir: &Path) -> Result<Arc<CloudStore>, StoreError> {
        let id = {
            use sha2::Digest;
            let endpoint = config.options.iter().find(|(k, _)| is_endpoint(k)).map(|(_, v)| v.as_str());
            hex::encode(sha2::Sha256::digest(format!("{}\n{}", config.url, endpoint.unwrap_or_default())))
        };
        let prefix = match config.provider()? {
            Provider::Azure => "azure",
            _ => "gcs",
        };
        let cache = data_dir.join("cache").join(format!("{prefix}-{}.json", &id[..16]));
        Ok(Arc::new(CloudStore::new(config, Some(cache))?))
    }

    /// The URL (`gs://bucket/folder`, `az://container/folder`).
    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// The `spec.s3` of this folder's resources: the endpoint's host, the bucket or container,
    /// the folder (never credentials).
    pub fn spec(&self) -> ETCDSnapshotS3 {
        let url = Url::parse(&self.config.url).ok();
        let bucket = url.as_ref().and_then(|u| u.host_str()).map(str::to_string);
        let folder = url.as_ref().map(|u| u.path().trim_matches('/').to_string()).filter(|f| !f.is_empty());
        let given = self.config.options.iter().find(|(k, _)| is_endpoint(k)).and_then(|(_, v)| Url::parse(v).ok());
        let endpoint = match &given {
            Some(u) => u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            }),
            None => Some(self.default_endpoint()),
        };
        ETCDSnapshotS3 {
            endpoint,
            bucket,
            prefix: folder,
            insecure: given.as_ref().is_some_and(|u| u.scheme() == "http").then_some(true),
            ..Default::default()
        }
    }

    fn default_endpoint(&self) -> String {
        match self.config.provider() {
            Ok(Provider::Azure) => {
                let account = self
                    .config
                    .options
                    .iter()
                    .find(|(k, _)| k == "azure_storage_account_name")
                    .map(|(_, v)| v.clone())
                    .or_else(|| std::env::var("AZURE_STORAGE_ACCOUNT_NAME").ok());
                match account {
                    Some(a) => format!("{a}.blob.core.windows.net"),
                    None => "blob.core.windows.net".to_string(),
                }
            }
            _ => "storage.googleapis.com".to_string(),
        }
    }
}

/// The replica's errors, said of a primary store.
pub(crate) fn primary(e: StoreError) -> StoreError {
    match e {
        StoreError::Replica { op, target, message } => StoreError::Cloud { op, target, message },
        other => other,
    }
}

/// The option naming the service's endpoint.
fn is_endpoint(key: &str) -> bool {
    key == "google_base_url" || key == "azure_storage_endpoint"
}

#[async_trait]
impl SnapshotStore for CloudStore {
    fn kind(&self) -> StorageKind {
        StorageKind::S3
    }

    fn describe(&self) -> String {
        self.config.url.clone()
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let mut listing = self.inner.list().await.map_err(primary)?;
        // Where each snapshot is, for its resource (as S3's listing says it).
        let spec = self.spec();
        for record in &mut listing.records {
            record.s3 = Some(spec.clone());
        }
        Ok(listing)
    }

    async fn create(&self, new: &NewSnapshot) -> Result<Box<dyn SnapshotSink>, StoreError> {
        let key = self.inner.key(new.name.as_str());
        let upload = self
            .inner
            .object_store()
            .put_multipart(&key)
            .await
            .map_err(|e| primary(self.inner.error("start upload", &key, &e)))?;
        Ok(Box::new(sink::CloudSink::start(self.inner.clone(), new.name.clone(), upload)))
    }

    async fn open(&self, name: &SnapshotName) -> Result<SnapshotReader, StoreError> {
        self.inner.open(name).await.map_err(primary)
    }

    async fn delete(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        self.inner.delete(name).await.map_err(primary)
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await.map_err(primary)
    }

    async fn exists(&self, name: &SnapshotName) -> Result<bool, StoreError> {
        self.inner.exists(name).await.map_err(primary)
    }

    async fn update_record(&self, record: &SnapshotRecord, signature: Option<&str>) -> Result<(), StoreError> {
        self.inner.update_record(record, signature).await.map_err(primary)
    }

    async fn signed_record(&self, name: &SnapshotName) -> Result<SignedRecord, StoreError> {
        self.inner.signed_record(name).await.map_err(primary)
    }

    async fn kit(&self, name: &SnapshotName) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.kit(name).await.map_err(primary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gcs_and_azure_are_primary_stores_here() {
        for bad in ["s3://b/f", "file:///tmp"] {
            let config = ReplicaConfig::parse(bad, &[]).unwrap();
            assert!(CloudStore::new(config, None).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_resource_names_endpoint_bucket_and_folder_never_a_key() {
        let options = [
            "azure_storage_account_name=acct".to_string(),
            "azure_storage_account_key=U0VDUkVU".into(),
            "azure_storage_endpoint=http://127.0.0.1:10000/acct".into(),
            "azure_allow_http=true".into(),
        ];
        let config = ReplicaConfig::parse("az://snaps/k3s/prod", &options).unwrap();
        let spec = CloudStore::new(config, None).unwrap().spec();
        assert_eq!(spec.endpoint.as_deref(), Some("127.0.0.1:10000"));
        assert_eq!(spec.bucket.as_deref(), Some("snaps"));
        assert_eq!(spec.prefix.as_deref(), Some("k3s/prod"));
        assert_eq!(spec.insecure, Some(true));
        assert!(!format!("{spec:?}").contains("U0VDUkVU"));
        let gcs = ReplicaConfig::parse("gs://b", &["google_skip_signature=true".into()]).unwrap();
        let spec = CloudStore::new(gcs, None).unwrap().spec();
        assert_eq!((spec.endpoint.as_deref(), spec.prefix), (Some("storage.googleapis.com"), None));
    }
}
