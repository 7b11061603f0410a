//! Validated S3 settings of one bucket folder ([`S3Config`], built only by
//! [`super::settings`]) and what follows from them: URLs, keys, locations and the HTTP client.

use super::super::StoreError;
use etcdsnap_api::Program;
use std::fmt;
use std::time::Duration;

pub use etcdsnap_api::LockMode;

/// How the bucket is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BucketLookup {
    /// Virtual-host style for AWS and Aliyun endpoints, path style otherwise.
    #[default]
    Auto,
    /// `https://<bucket>.<endpoint>/<key>`.
    Dns,
    /// `https://<endpoint>/<bucket>/<key>`.
    Path,
}

impl std::str::FromStr for BucketLookup {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(BucketLookup::Auto),
            "dns" => Ok(BucketLookup::Dns),
            "path" => Ok(BucketLookup::Path),
            other => Err(format!("unknown bucket lookup type {other:?} (expected auto, dns or path)")),
        }
    }
}

impl BucketLookup {
    pub fn as_str(self) -> &'static str {
        match self {
            BucketLookup::Auto => "auto",
            BucketLookup::Dns => "dns",
            BucketLookup::Path => "path",
        }
    }
}

/// The Object Lock retention etcdsnap puts on every object it writes (`--s3-lock-retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    /// Each object is retained until its upload's time plus this.
    pub retention: Duration,
}

/// Proxy for S3 requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProxySetting {
    /// `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY` from the environment.
    #[default]
    System,
    /// `--s3-proxy none`: no proxy at all.
    Disabled,
    /// A proxy URL.
    Url(String),
}

/// Everything needed to reach one bucket folder. Debug output never shows credentials.
#[derive(Clone)]
pub struct S3Config {
    /// `host[:port]`, no scheme.
    pub endpoint: String,
    /// Extra CA certificates to trust, parsed once.
    pub endpoint_ca: Vec<reqwest::Certificate>,
    /// The CA setting as given (recorded in resources, like K3s does).
    pub endpoint_ca_setting: Option<String>,
    pub skip_ssl_verify: bool,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
    pub bucket: String,
    pub region: String,
    /// Folder (key prefix) without leading or trailing `/`; empty for the bucket root.
    pub folder: String,
    /// Plain HTTP instead of HTTPS.
    pub insecure: bool,
    pub bucket_lookup: BucketLookup,
    /// Per request (each part of an upload gets the whole timeout).
    pub timeout: Duration,
    pub proxy: ProxySetting,
    /// Snapshots to keep per node in this folder (`etcd-s3-retention`); None: the local retention.
    pub retention: Option<usize>,
    /// The Object Lock retention put on each object written (`etcd-s3-lock-retention`).
    pub lock: Option<ObjectLock>,
    /// Bytes per multipart part (S3 requires at least 5 MiB for all but the last).
    pub part_size: usize,
    /// Parts uploaded at once.
    pub concurrency: usize,
    /// The program whose names the objects' user metadata carries (`k3s-node-name` or
    /// `rke2-node-name`); not a setting of the folder but of the cluster ([`S3Config::for_program`]).
    pub program: Program,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("folder", &self.folder)
            .field("region", &self.region)
            .field("insecure", &self.insecure)
            .field("skip_ssl_verify", &self.skip_ssl_verify)
            .field("bucket_lookup", &self.bucket_lookup)
            .field("endpoint_ca", &self.endpoint_ca.len())
            .field("proxy", &matches!(self.proxy, ProxySetting::Url(_)).then_some("<set>"))
            .field("retention", &self.retention)
            .field("lock", &self.lock)
            .field("program", &self.program)
            .field("access_key", &self.access_key.as_ref().map(|_| "<set>"))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<redacted>"))
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

pub const DEFAULT_ENDPOINT: &str = "s3.amazonaws.com";
pub const DEFAULT_REGION: &str = "us-east-1";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Multipart part size. Memory holds `CONCURRENCY + 1` parts; 6 MiB keeps that under 20 MiB
/// and still allows snapshots of up to 58 GiB (10,000 parts).
pub(crate) const PART_SIZE: usize = 6 * 1024 * 1024;
pub(crate) const CONCURRENCY: usize = 2;

impl S3Config {
    /// The same folder, its objects' user metadata named after `program`.
    pub fn for_program(self, program: Program) -> S3Config {
        S3Config { program, ..self }
    }

    fn scheme(&self) -> &'static str {
        if self.insecure { "http" } else { "https" }
    }

    /// Whether requests address the bucket as a host name.
    pub fn virtual_hosted(&self) -> bool {
        match self.bucket_lookup {
            BucketLookup::Dns => true,
            BucketLookup::Path => false,
            // RKE1 compatibility: Aliyun only works with DNS lookup.
            BucketLookup::Auto => self.endpoint.contains("aliyun") || self.endpoint.ends_with("amazonaws.com"),
        }
    }

    /// URL of the bucket (ends with `/`).
    pub fn bucket_url(&self) -> String {
        if self.virtual_hosted() {
            format!("{}://{}.{}/", self.scheme(), self.bucket, self.endpoint)
        } else {
            format!("{}://{}/{}/", self.scheme(), self.endpoint, self.bucket)
        }
    }

    /// Endpoint URL as object_store wants it (with the bucket for virtual-host style).
    pub fn object_store_endpoint(&self) -> String {
        if self.virtual_hosted() {
            format!("{}://{}.{}", self.scheme(), self.bucket, self.endpoint)
        } else {
            format!("{}://{}", self.scheme(), self.endpoint)
        }
    }

    /// Key of an object in the folder.
    pub fn key(&self, name: &str) -> String {
        if self.folder.is_empty() { name.to_string() } else { format!("{}/{name}", self.folder) }
    }

    /// Key of K3s's metadata object of a snapshot.
    pub fn metadata_key(&self, name: &str) -> String {
        self.key(&format!("{}/{name}", etcdsnap_api::consts::METADATA_DIR))
    }

    /// Key of etcdsnap's record of a snapshot, beside K3s's metadata where K3s never reads it.
    pub fn record_key(&self, name: &str) -> String {
        self.metadata_key(&format!("{name}{}", etcdsnap_api::consts::RECORD_SUFFIX))
    }

    /// The `s3://bucket/key` location recorded in resources.
    pub fn location(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }

    /// `s3://bucket/folder` for messages.
    pub fn describe(&self) -> String {
        if self.folder.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.folder)
        }
    }

    /// The reqwest client every S3 request goes through: TLS trust, proxy and timeouts from
    /// these settings.
    pub fn http_client(&self) -> Result<reqwest::Client, StoreError> {
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(10).min(self.timeout))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("etcdsnap/", env!("CARGO_PKG_VERSION")));
        match &self.proxy {
            ProxySetting::System => {}
            ProxySetting::Disabled => builder = builder.no_proxy(),
            ProxySetting::Url(url) => {
                let proxy = reqwest::Proxy::all(url).map_err(|e| StoreError::Client(format!("S3 proxy: {e}")))?;
                builder = builder.proxy(proxy);
            }
        }
        if self.skip_ssl_verify {
            builder = builder.danger_accept_invalid_certs(true);
        } else if !self.endpoint_ca.is_empty() {
            builder = builder.tls_certs_merge(self.endpoint_ca.clone());
        }
        builder.build().map_err(|e| StoreError::Client(format!("S3 HTTP client: {e}")))
    }
}
