//! S3 settings (K3s's `--etcd-s3-*` names) and the HTTP client built from them.

use super::super::StoreError;
use base64::Engine as _;
use std::fmt;
use std::path::Path;
use std::time::Duration;

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
    /// Extra CA certificates, PEM.
    pub endpoint_ca_pems: Vec<String>,
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
    /// Bytes per multipart part (S3 requires at least 5 MiB for all but the last).
    pub part_size: usize,
    /// Parts uploaded at once.
    pub concurrency: usize,
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
            .field("access_key", &self.access_key.as_ref().map(|_| "<set>"))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "<redacted>"))
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// A configuration error that names the setting to fix.
fn invalid(flag: &str, message: impl fmt::Display) -> StoreError {
    StoreError::Config(format!("--{flag}: {message}"))
}

/// Raw settings as given on the command line, a config file or a Secret.
#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub endpoint: String,
    pub endpoint_ca: Option<String>,
    pub skip_ssl_verify: bool,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
    pub bucket: Option<String>,
    pub region: String,
    pub folder: Option<String>,
    pub insecure: bool,
    pub bucket_lookup: BucketLookup,
    pub timeout: Duration,
    pub proxy: Option<String>,
}

pub const DEFAULT_ENDPOINT: &str = "s3.amazonaws.com";
pub const DEFAULT_REGION: &str = "us-east-1";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Multipart part size. Memory holds `CONCURRENCY + 1` parts; 6 MiB keeps that under 20 MiB
/// and still allows snapshots of up to 58 GiB (10,000 parts).
const PART_SIZE: usize = 6 * 1024 * 1024;
const CONCURRENCY: usize = 2;

impl S3Config {
    /// Validates settings; every error names the flag to fix. Nothing secret is echoed.
    pub fn from_settings(s: S3Settings) -> Result<S3Config, StoreError> {
        let endpoint = s.endpoint.trim().to_string();
        if endpoint.is_empty() {
            return Err(invalid("s3-endpoint", "must not be empty"));
        }
        if endpoint.contains("://") {
            return Err(invalid(
                "s3-endpoint",
                format!("{endpoint:?} must be host[:port] without a scheme (use --s3-insecure for plain HTTP)"),
            ));
        }
        if endpoint.contains('/') || endpoint.contains(char::is_whitespace) {
            return Err(invalid("s3-endpoint", format!("{endpoint:?} must be host[:port]")));
        }
        let bucket = s.bucket.unwrap_or_default().trim().to_string();
        if bucket.is_empty() {
            return Err(invalid("s3-bucket", "is required when S3 is enabled"));
        }
        if bucket.contains('/') || bucket.chars().any(char::is_whitespace) {
            return Err(invalid("s3-bucket", format!("{bucket:?} is not a bucket name")));
        }
        let folder = normalise_folder(s.folder.as_deref().unwrap_or(""))?;
        if s.region.trim().is_empty() {
            return Err(invalid("s3-region", "must not be empty"));
        }
        if s.timeout.is_zero() {
            return Err(invalid("s3-timeout", "must be greater than zero"));
        }
        match (&s.access_key, &s.secret_key) {
            (Some(_), None) => return Err(invalid("s3-secret-key", "is required with --s3-access-key")),
            (None, Some(_)) => return Err(invalid("s3-access-key", "is required with --s3-secret-key")),
            _ => {}
        }
        let proxy = match s.proxy.as_deref().map(str::trim) {
            None | Some("") => ProxySetting::System,
            Some("none") => ProxySetting::Disabled,
            Some(url) => {
                let parsed =
                    url::Url::parse(url).map_err(|e| invalid("s3-proxy", format!("failed to parse as a URL: {e}")))?;
                if parsed.host_str().is_none() || !matches!(parsed.scheme(), "http" | "https" | "socks5" | "socks5h") {
                    return Err(invalid("s3-proxy", "proxy URL must include scheme and host"));
                }
                ProxySetting::Url(url.to_string())
            }
        };
        let endpoint_ca_pems = match &s.endpoint_ca {
            Some(ca) if !ca.trim().is_empty() => load_ca_list(ca)?,
            _ => Vec::new(),
        };
        Ok(S3Config {
            endpoint,
            endpoint_ca_pems,
            endpoint_ca_setting: s.endpoint_ca.filter(|c| !c.trim().is_empty()),
            skip_ssl_verify: s.skip_ssl_verify,
            access_key: s.access_key,
            secret_key: s.secret_key,
            session_token: s.session_token,
            bucket,
            region: s.region.trim().to_string(),
            folder,
            insecure: s.insecure,
            bucket_lookup: s.bucket_lookup,
            timeout: s.timeout,
            proxy,
            part_size: PART_SIZE,
            concurrency: CONCURRENCY,
        })
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

    /// Key of a metadata document in the folder.
    pub fn metadata_key(&self, name: &str) -> String {
        self.key(&format!("{}/{name}", etcdsnap_api::consts::METADATA_DIR))
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
                let proxy = reqwest::Proxy::all(url).map_err(|e| invalid("s3-proxy", e))?;
                builder = builder.proxy(proxy);
            }
        }
        if self.skip_ssl_verify {
            builder = builder.danger_accept_invalid_certs(true);
        } else if !self.endpoint_ca_pems.is_empty() {
            let mut certs = Vec::new();
            for pem in &self.endpoint_ca_pems {
                let bundle =
                    reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| invalid("s3-endpoint-ca", e))?;
                certs.extend(bundle);
            }
            builder = builder.tls_certs_merge(certs);
        }
        builder.build().map_err(|e| StoreError::Config(format!("S3 HTTP client: {e}")))
    }
}

/// `a/b/` → `a/b`; refuses `..`, empty segments and control characters.
fn normalise_folder(folder: &str) -> Result<String, StoreError> {
    let trimmed = folder.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for segment in trimmed.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.chars().any(char::is_control) {
            return Err(invalid(
                "s3-folder",
                format!("{folder:?} is not a valid folder (no empty, '.' or '..' segments)"),
            ));
        }
    }
    Ok(trimmed.to_string())
}

/// K3s accepts a space-separated list where each item is a base64-encoded PEM bundle or a file.
fn load_ca_list(list: &str) -> Result<Vec<String>, StoreError> {
    let mut pems = Vec::new();
    for item in list.split_whitespace() {
        let path = Path::new(item);
        if path.is_file() {
            let text =
                std::fs::read_to_string(path).map_err(|e| invalid("s3-endpoint-ca", format!("reading {item}: {e}")))?;
            pems.push(text);
            continue;
        }
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(item)
            && let Ok(text) = String::from_utf8(bytes)
            && text.contains("-----BEGIN CERTIFICATE-----")
        {
            pems.push(text);
            continue;
        }
        if item.starts_with('/') || item.starts_with('.') {
            return Err(invalid("s3-endpoint-ca", format!("CA file {item} does not exist")));
        }
        return Err(invalid(
            "s3-endpoint-ca",
            "no certificates loaded (each item must be a PEM file path or a base64-encoded PEM bundle)",
        ));
    }
    for pem in &pems {
        if reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map(|c| c.is_empty()).unwrap_or(true) {
            return Err(invalid("s3-endpoint-ca", "no certificates loaded: not a PEM certificate bundle"));
        }
    }
    Ok(pems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            endpoint: DEFAULT_ENDPOINT.into(),
            bucket: Some("b".into()),
            region: DEFAULT_REGION.into(),
            timeout: DEFAULT_TIMEOUT,
            ..Default::default()
        }
    }

    fn err(s: S3Settings) -> String {
        S3Config::from_settings(s).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(err(S3Settings { bucket: None, ..settings() }).starts_with("--s3-bucket"));
        assert!(err(S3Settings { endpoint: "https://x".into(), ..settings() }).starts_with("--s3-endpoint"));
        assert!(err(S3Settings { folder: Some("a/../b".into()), ..settings() }).starts_with("--s3-folder"));
        assert!(err(S3Settings { proxy: Some("/proxy".into()), ..settings() }).starts_with("--s3-proxy"));
        assert!(err(S3Settings { proxy: Some("http://%invalid".into()), ..settings() }).starts_with("--s3-proxy"));
        assert!(
            err(S3Settings { endpoint_ca: Some("/does/not/exist".into()), ..settings() })
                .starts_with("--s3-endpoint-ca")
        );
        assert!(
            err(S3Settings { endpoint_ca: Some("bm90IGEgY2VydA==".into()), ..settings() })
                .starts_with("--s3-endpoint-ca")
        );
        assert!(err(S3Settings { timeout: Duration::ZERO, ..settings() }).starts_with("--s3-timeout"));
        let e = err(S3Settings { secret_key: Some("s3cr3t-value".into()), ..settings() });
        assert!(e.starts_with("--s3-access-key") && !e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn keys_locations_and_lookup() {
        let c = S3Config::from_settings(S3Settings { folder: Some("/k3s/prod/".into()), ..settings() })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.folder, "k3s/prod");
        assert_eq!(c.key("s-n-1"), "k3s/prod/s-n-1");
        assert_eq!(c.metadata_key("s-n-1"), "k3s/prod/.metadata/s-n-1");
        assert_eq!(c.location("s-n-1"), "s3://b/k3s/prod/s-n-1");
        assert!(c.virtual_hosted(), "AWS endpoints use DNS lookup in auto mode");
        assert_eq!(c.bucket_url(), "https://b.s3.amazonaws.com/");
        let c = S3Config::from_settings(S3Settings { endpoint: "127.0.0.1:9000".into(), insecure: true, ..settings() })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.virtual_hosted());
        assert_eq!(c.bucket_url(), "http://127.0.0.1:9000/b/");
        assert_eq!(c.key("x"), "x");
        // RKE1 compatibility: Aliyun endpoints always use DNS lookup in auto mode.
        let aliyun = S3Settings { endpoint: "oss-cn-hangzhou.aliyuncs.com".into(), ..settings() };
        assert!(S3Config::from_settings(aliyun).is_ok_and(|c| c.virtual_hosted()));
        let minio = S3Settings { endpoint: "minio.internal:9000".into(), ..settings() };
        assert!(S3Config::from_settings(minio).is_ok_and(|c| !c.virtual_hosted()));
        assert_eq!("PATH".parse::<BucketLookup>(), Ok(BucketLookup::Path));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = S3Config::from_settings(S3Settings {
            access_key: Some("AKIAEXAMPLE".into()),
            secret_key: Some("very-secret".into()),
            session_token: Some("tok-secret".into()),
            ..settings()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let d = format!("{c:?}");
        assert!(!d.contains("very-secret") && !d.contains("tok-secret") && !d.contains("AKIAEXAMPLE"), "{d}");
    }
}
