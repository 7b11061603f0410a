//! A replica's settings: its URL (`s3://bucket/folder`, `gs://bucket/folder`,
//! `az://container/folder`, `file:///dir`, or any other URL form object_store parses) and its
//! `KEY=VALUE` options, which are object_store's configuration keys for the provider
//! (`aws_endpoint`, `google_base_url`, `azure_storage_account_name`, ...). Credentials come from
//! the provider's usual environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`) or from options; neither is
//! ever shown: a replica is described by its URL alone.

use super::guard::GuardedConnector;
use crate::describe_error;
use crate::store::StoreError;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreScheme};
use std::sync::Arc;
use url::Url;

/// One `--replica` with its `--replica-option`s.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// The URL as given (without userinfo or query, which are refused).
    pub url: String,
    /// object_store configuration keys and values (values may be credentials: never shown).
    pub options: Vec<(String, String)>,
}

impl std::fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.options.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ReplicaConfig").field("url", &self.url).field("option_keys", &keys).finish()
    }
}

/// Which provider a replica is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    S3,
    Gcs,
    Azure,
    File,
}

impl Provider {
    /// The prefix of this provider's option keys.
    fn option_prefix(self) -> &'static str {
        match self {
            Provider::S3 => "aws_",
            Provider::Gcs => "google_",
            Provider::Azure => "azure_",
            Provider::File => "file_",
        }
    }
}

/// Every `--replica` with the `--replica-option`s of its provider: an option applies to each
/// replica whose provider its key's prefix names (`aws_`, `google_`, `azure_`); one that names
/// no configured replica's provider is an error.
pub fn parse_replicas(urls: &[String], options: &[String]) -> Result<Vec<ReplicaConfig>, StoreError> {
    let mut configs = urls.iter().map(|u| ReplicaConfig::parse(u, &[])).collect::<Result<Vec<_>, _>>()?;
    let providers = configs.iter().map(ReplicaConfig::provider).collect::<Result<Vec<_>, _>>()?;
    for option in options {
        let key = option.split_once('=').map(|(k, _)| k.trim().to_ascii_lowercase()).unwrap_or_default();
        let mut used = false;
        for (config, provider) in configs.iter_mut().zip(&providers) {
            if key.starts_with(provider.option_prefix()) {
                config.options.extend(ReplicaConfig::parse(&config.url, std::slice::from_ref(option))?.options);
                used = true;
            }
        }
        if !used {
            let key = if key.is_empty() { "(no KEY=VALUE)".to_string() } else { key };
            return Err(StoreError::Client(format!(
                "--replica-option {key}: no --replica takes it (keys start with aws_, google_ or azure_, for s3://, gs:// and az:// replicas)"
            )));
        }
    }
    Ok(configs)
}

impl ReplicaConfig {
    /// Checks the URL and the options (`KEY=VALUE` each); nothing is contacted.
    pub fn parse(url: &str, options: &[String]) -> Result<ReplicaConfig, StoreError> {
        let bad = |message: String| StoreError::Client(format!("--replica {url}: {message}"));
        let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad("credentials do not belong in the URL; set them in the environment or an option".into()));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("a query or fragment is not part of a replica's URL; use --replica-option".into()));
        }
        ObjectStoreScheme::parse(&parsed).map_err(|e| bad(describe_error(&e)))?;
        let mut pairs = Vec::with_capacity(options.len());
        for option in options {
            let (k, v) = option
                .split_once('=')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or_else(|| StoreError::Client("--replica-option: expected KEY=VALUE".to_string()))?;
            pairs.push((k.trim().to_ascii_lowercase(), v.to_string()));
        }
        let config = ReplicaConfig { url: url.trim_end_matches('/').to_string(), options: pairs };
        config.provider()?;
        Ok(config)
    }

    pub fn provider(&self) -> Result<Provider, StoreError> {
        let url = Url::parse(&self.url).map_err(|e| StoreError::Client(format!("--replica {}: {e}", self.url)))?;
        let (scheme, _) = ObjectStoreScheme::parse(&url)
            .map_err(|e| StoreError::Client(format!("--replica {}: {}", self.url, describe_error(&e))))?;
        match scheme {
            ObjectStoreScheme::AmazonS3 => Ok(Provider::S3),
            ObjectStoreScheme::GoogleCloudStorage => Ok(Provider::Gcs),
            ObjectStoreScheme::MicrosoftAzure => Ok(Provider::Azure),
            ObjectStoreScheme::Local => Ok(Provider::File),
            other => Err(StoreError::Client(format!(
                "--replica {}: {other:?} is not a store etcdsnap replicates to (s3, gs, az, file)",
                self.url
            ))),
        }
    }

    /// The client and the folder inside the bucket (empty for the bucket root). Credentials are
    /// read from the provider's environment, then overridden by options.
    pub fn build(&self) -> Result<(Arc<dyn ObjectStore>, ObjectPath), StoreError> {
        let url = Url::parse(&self.url).map_err(|e| StoreError::Client(format!("--replica {}: {e}", self.url)))?;
        let fail =
            |e: object_store::Error| StoreError::Client(format!("--replica {}: {}", self.url, describe_error(&e)));
        let (_, path) = ObjectStoreScheme::parse(&url)
            .map_err(|e| StoreError::Client(format!("--replica {}: {}", self.url, describe_error(&e))))?;
        let folder = ObjectPath::parse(path).map_err(|e| fail(e.into()))?;
        let unknown = |key: &str| StoreError::Client(format!("--replica-option {key}: not a setting of {}", self.url));
        let store: Arc<dyn ObjectStore> = match self.provider()? {
            Provider::S3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(self.url.clone())
                    .with_retry(retry())
                    .with_http_connector(GuardedConnector);
                for (k, v) in &self.options {
                    b = b.with_config(k.parse().map_err(|_| unknown(k))?, v);
                }
                Arc::new(b.build().map_err(fail)?)
            }
            Provider::Gcs => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(self.url.clone())
                    .with_retry(retry())
                    .with_http_connector(GuardedConnector);
                for (k, v) in &self.options {
                    b = b.with_config(k.parse().map_err(|_| unknown(k))?, v);
                }
                let base_url = self.options.iter().find(|(k, _)| k == "google_base_url").map(|(_, v)| v.as_str());
                let bucket = url.host_str().unwrap_or_default();
                Arc::new(super::gcs::Gcs::new(b.build().map_err(fail)?, base_url, bucket).map_err(fail)?)
            }
            Provider::Azure => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(self.url.clone())
                    .with_retry(retry())
                    .with_http_connector(GuardedConnector);
                for (k, v) in &self.options {
                    b = b.with_config(k.parse().map_err(|_| unknown(k))?, v);
                }
                Arc::new(b.build().map_err(fail)?)
            }
            Provider::File => {
                if let Some((k, _)) = self.options.first() {
                    return Err(unknown(k));
                }
                let root = url
                    .to_file_path()
                    .map_err(|()| StoreError::Client(format!("--replica {}: not a local path", self.url)))?;
                if !root.is_dir() {
                    return Err(StoreError::MissingDir(root));
                }
                let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                    .map_err(fail)?
                    .with_automatic_cleanup(true);
                return Ok((Arc::new(store), ObjectPath::default()));
            }
        };
        Ok((store, folder))
    }
}

/// How a replica's requests are retried: a few times within [`RETRY_TIMEOUT`], so that a
/// replica that is down fails its copies within about that time (and stays behind until a later
/// pass) instead of holding the agent's pass for object_store's default three minutes.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: 4,
        retry_timeout: RETRY_TIMEOUT,
    }
}

/// The longest a replica's request is retried.
const RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_options_are_checked_before_anything_is_contacted() {
        let gs = ReplicaConfig::parse("gs://b/f/", &["google_base_url=http://x".into()]).unwrap();
        assert_eq!(gs.url, "gs://b/f");
        assert_eq!(gs.provider().unwrap(), Provider::Gcs);
        assert_eq!(ReplicaConfig::parse("az://c/f", &[]).unwrap().provider().unwrap(), Provider::Azure);
        assert_eq!(ReplicaConfig::parse("s3://b", &[]).unwrap().provider().unwrap(), Provider::S3);
        assert_eq!(ReplicaConfig::parse("file:///tmp", &[]).unwrap().provider().unwrap(), Provider::File);
        for bad in ["s3://key:secret@b/f", "gs://b/f?x=1", "ftp://b/f", "not a url", "memory:///"] {
            assert!(ReplicaConfig::parse(bad, &[]).is_err(), "{bad} accepted");
        }
        assert!(ReplicaConfig::parse("gs://b", &["no-equals".into()]).is_err());
        let unknown = ReplicaConfig::parse("gs://b", &["aws_endpoint=http://x".into()]).unwrap();
        let Err(e) = unknown.build() else { panic!("an S3 option on GCS was accepted") };
        assert!(e.to_string().contains("aws_endpoint"), "{e}");
    }

    #[test]
    fn options_go_to_the_replicas_of_their_provider() {
        let urls = ["gs://g/f".to_string(), "az://c/f".into(), "s3://b".into()];
        let options = ["google_base_url=http://g".to_string(), "azure_storage_account_name=a".into()];
        let configs = parse_replicas(&urls, &options).unwrap();
        assert_eq!(configs[0].options, vec![("google_base_url".to_string(), "http://g".to_string())]);
        assert_eq!(configs[1].options, vec![("azure_storage_account_name".to_string(), "a".to_string())]);
        assert!(configs[2].options.is_empty());
        assert!(parse_replicas(&urls[..1], &options).is_err(), "an Azure option without an Azure replica");
        assert!(parse_replicas(&urls, &["nothing".to_string()]).is_err());
    }

    #[test]
    fn option_values_are_never_shown() {
        let c = ReplicaConfig::parse("az://c", &["azure_storage_account_key=SECRETVALUE".into()]).unwrap();
        assert!(!format!("{c:?}").contains("SECRETVALUE"));
    }

    #[test]
    fn the_folder_is_the_path_after_the_bucket() {
        let c = ReplicaConfig::parse("gs://b/k3s/prod", &["google_skip_signature=true".into()]).unwrap();
        let (_, folder) = c.build().unwrap();
        assert_eq!(folder.as_ref(), "k3s/prod");
    }
}
