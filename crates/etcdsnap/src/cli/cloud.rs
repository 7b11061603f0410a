//! The flags of a GCS or Azure Blob Storage primary store (`--gcs-*`, `--azure-*`): where a
//! node keeps its remote snapshots in place of S3. They become one replica URL with its
//! object_store options (`gs://bucket/folder`, `az://container/folder`), checked by the same
//! parser as `--replica`, so that a primary store and a replica are configured alike.

use anyhow::bail;
use clap::Args;
use etcdsnap_storage::store::replica::ReplicaConfig;
use std::path::PathBuf;

/// The help headings of these flags.
pub const GCS_HEADING: &str = "Google Cloud Storage";
pub const AZURE_HEADING: &str = "Azure Blob Storage";

/// Google Cloud Storage as the remote store.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = GCS_HEADING)]
pub struct GcsArgs {
    /// Keep snapshots in this GCS bucket (uploaded in the same pass as the local copy), in
    /// place of S3
    #[arg(id = "gcs_bucket", long = "gcs-bucket", env = "ETCDSNAP_GCS_BUCKET", value_name = "BUCKET")]
    pub bucket: Option<String>,
    /// Folder in the GCS bucket [default: the bucket's root]
    #[arg(id = "gcs_folder", long = "gcs-folder", env = "ETCDSNAP_GCS_FOLDER", value_name = "FOLDER")]
    pub folder: Option<String>,
    /// GCS API base URL, for an emulator such as fake-gcs-server [default:
    /// https://storage.googleapis.com]
    #[arg(id = "gcs_endpoint", long = "gcs-endpoint", env = "ETCDSNAP_GCS_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// Service account key file (JSON) [default: $GOOGLE_APPLICATION_CREDENTIALS, else the
    /// instance's metadata server]
    #[arg(id = "gcs_credentials", long = "gcs-credentials", env = "ETCDSNAP_GCS_CREDENTIALS", value_name = "FILE")]
    pub credentials: Option<PathBuf>,
}

/// Azure Blob Storage as the remote store.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = AZURE_HEADING)]
pub struct AzureArgs {
    /// Keep snapshots in this Azure Blob Storage container (uploaded in the same pass as the
    /// local copy), in place of S3
    #[arg(
        id = "azure_container",
        long = "azure-container",
        env = "ETCDSNAP_AZURE_CONTAINER",
        value_name = "CONTAINER"
    )]
    pub container: Option<String>,
    /// Storage account holding the container
    #[arg(id = "azure_account", long = "azure-account", env = "AZURE_STORAGE_ACCOUNT", value_name = "NAME")]
    pub account: Option<String>,
    /// Folder in the container [default: the container's root]
    #[arg(id = "azure_folder", long = "azure-folder", env = "ETCDSNAP_AZURE_FOLDER", value_name = "FOLDER")]
    pub folder: Option<String>,
    /// Blob service URL, for an emulator such as Azurite (http:// is accepted as given)
    /// [default: https://<account>.blob.core.windows.net]
    #[arg(id = "azure_endpoint", long = "azure-endpoint", env = "ETCDSNAP_AZURE_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// Storage account access key [default: $AZURE_STORAGE_KEY, else the other usual AZURE_*
    /// credentials (a SAS, a service principal, a managed identity)]
    #[arg(
        id = "azure_access_key",
        long = "azure-access-key",
        env = "AZURE_STORAGE_ACCESS_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub access_key: Option<String>,
}

/// Both groups, as every snapshot command, the agent and `restore` take them.
#[derive(Debug, Clone, Default, Args)]
pub struct CloudArgs {
    #[command(flatten)]
    pub gcs: GcsArgs,
    #[command(flatten)]
    pub azure: AzureArgs,
}

impl CloudArgs {
    /// The primary store these flags name, checked (nothing is contacted); None when neither
    /// --gcs-bucket nor --azure-container is given and no other flag of theirs either.
    pub fn config(&self) -> anyhow::Result<Option<ReplicaConfig>> {
        let (g, a) = (&self.gcs, &self.azure);
        let gcs_other = g.folder.is_some() || g.endpoint.is_some() || g.credentials.is_some();
        let azure_other = a.folder.is_some() || a.endpoint.is_some();
        match (&g.bucket, &a.container) {
            (Some(_), Some(_)) => bail!("--gcs-bucket and --azure-container: give one remote store, not both"),
            (None, _) if gcs_other => bail!("--gcs-folder, --gcs-endpoint and --gcs-credentials need --gcs-bucket"),
            (_, None) if azure_other => bail!("--azure-folder and --azure-endpoint need --azure-container"),
            (Some(bucket), None) => Ok(Some(gcs_config(g, bucket)?)),
            (None, Some(container)) => Ok(Some(azure_config(a, container)?)),
            (None, None) => Ok(None),
        }
    }
}

/// `gs://bucket/folder` or `az://container/folder`; a name with a `/`, or an empty one, is
/// refused (it would change what the URL means).
fn url(scheme: &str, flag: &str, bucket: &str, folder: Option<&str>) -> anyhow::Result<String> {
    let bucket = bucket.trim();
    if bucket.is_empty() || bucket.contains(['/', ':', '?', '#', '@']) {
        bail!("{flag} {bucket:?}: not a bucket or container name");
    }
    let folder = folder.map(|f| f.trim_matches('/')).filter(|f| !f.is_empty());
    Ok(match folder {
        Some(f) => format!("{scheme}://{bucket}/{f}"),
        None => format!("{scheme}://{bucket}"),
    })
}

fn gcs_config(g: &GcsArgs, bucket: &str) -> anyhow::Result<ReplicaConfig> {
    let url = url("gs", "--gcs-bucket", bucket, g.folder.as_deref())?;
    let mut options = Vec::new();
    if let Some(endpoint) = &g.endpoint {
        options.push(format!("google_base_url={}", endpoint.trim_end_matches('/')));
    }
    if let Some(file) = &g.credentials {
        if !file.is_file() {
            bail!("--gcs-credentials {}: no such file", file.display());
        }
        options.push(format!("google_service_account={}", file.display()));
    }
    Ok(ReplicaConfig::parse(&url, &options)?)
}

fn azure_config(a: &AzureArgs, container: &str) -> anyhow::Result<ReplicaConfig> {
    let url = url("az", "--azure-container", container, a.folder.as_deref())?;
    let mut options = Vec::new();
    if let Some(account) = &a.account {
        options.push(format!("azure_storage_account_name={account}"));
    }
    if let Some(endpoint) = &a.endpoint {
        let endpoint = endpoint.trim_end_matches('/');
        options.push(format!("azure_storage_endpoint={endpoint}"));
        if endpoint.starts_with("http://") {
            options.push("azure_allow_http=true".into());
        }
    }
    let key = a.access_key.clone().or_else(|| std::env::var("AZURE_STORAGE_KEY").ok()).filter(|k| !k.is_empty());
    if let Some(key) = key {
        options.push(format!("azure_storage_account_key={key}"));
    }
    Ok(ReplicaConfig::parse(&url, &options)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcs(bucket: Option<&str>, folder: Option<&str>) -> CloudArgs {
        let gcs = GcsArgs { bucket: bucket.map(Into::into), folder: folder.map(Into::into), ..Default::default() };
        CloudArgs { gcs, ..Default::default() }
    }

    #[test]
    fn the_flags_become_a_url_and_options() {
        let config = gcs(Some("snaps"), Some("/k3s/prod/")).config().unwrap().unwrap();
        assert_eq!(config.url, "gs://snaps/k3s/prod");
        assert!(gcs(None, None).config().unwrap().is_none());
        let azure = AzureArgs {
            container: Some("c".into()),
            account: Some("acct".into()),
            endpoint: Some("http://127.0.0.1:10000/acct/".into()),
            access_key: Some("S2V5".into()),
            ..Default::default()
        };
        let config = CloudArgs { azure, ..Default::default() }.config().unwrap().unwrap();
        assert_eq!(config.url, "az://c");
        let keys: Vec<&str> = config.options.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["azure_storage_account_name", "azure_storage_endpoint", "azure_allow_http", "azure_storage_account_key"]
        );
        assert!(!format!("{config:?}").contains("S2V5"), "the key is never shown");
    }

    #[test]
    fn incomplete_or_conflicting_flags_are_refused() {
        assert!(gcs(None, Some("k3s")).config().is_err(), "a folder without a bucket");
        assert!(gcs(Some("a/b"), None).config().is_err(), "a bucket name with a slash");
        let mut both = gcs(Some("b"), None);
        both.azure.container = Some("c".into());
        assert!(both.config().is_err());
        let missing = GcsArgs {
            bucket: Some("b".into()),
            credentials: Some("/nonexistent/key.json".into()),
            ..Default::default()
        };
        assert!(CloudArgs { gcs: missing, ..Default::default() }.config().is_err());
    }
}
