//! The one parser of S3 settings. Flags (and the config file, which becomes flags), and the
//! `etcd-s3-*` map of K3s's S3 config Secret are all given to it as the same raw text values
//! ([`RawS3Settings`]), so a value means the same wherever it is written and every check runs
//! once. The result is an [`S3Config`]; errors name the setting the way its origin spells it
//! (`--s3-bucket`, or the Secret and its key), and never echo a value.

use super::config::{
    BucketLookup, CONCURRENCY, DEFAULT_ENDPOINT, DEFAULT_REGION, DEFAULT_TIMEOUT, LockMode, ObjectLock, PART_SIZE,
    ProxySetting, S3Config,
};
use base64::Engine as _;
use etcdsnap_api::Program;
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// One S3 setting, by K3s's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum S3Key {
    Endpoint,
    EndpointCa,
    EndpointCaName,
    SkipSslVerify,
    AccessKey,
    SecretKey,
    SessionToken,
    Bucket,
    BucketLookupType,
    Region,
    Folder,
    Retention,
    Proxy,
    Insecure,
    Timeout,
    LockRetention,
    LockMode,
}

impl S3Key {
    pub const ALL: [S3Key; 17] = [
        S3Key::Endpoint,
        S3Key::EndpointCa,
        S3Key::EndpointCaName,
        S3Key::SkipSslVerify,
        S3Key::AccessKey,
        S3Key::SecretKey,
        S3Key::SessionToken,
        S3Key::Bucket,
        S3Key::BucketLookupType,
        S3Key::Region,
        S3Key::Folder,
        S3Key::Retention,
        S3Key::Proxy,
        S3Key::Insecure,
        S3Key::Timeout,
        S3Key::LockRetention,
        S3Key::LockMode,
    ];

    /// The Secret's key, which is also the K3s server flag without its dashes.
    pub fn k3s_name(self) -> &'static str {
        match self {
            S3Key::Endpoint => "etcd-s3-endpoint",
            S3Key::EndpointCa => "etcd-s3-endpoint-ca",
            S3Key::EndpointCaName => "etcd-s3-endpoint-ca-name",
            S3Key::SkipSslVerify => "etcd-s3-skip-ssl-verify",
            S3Key::AccessKey => "etcd-s3-access-key",
            S3Key::SecretKey => "etcd-s3-secret-key",
            S3Key::SessionToken => "etcd-s3-session-token",
            S3Key::Bucket => "etcd-s3-bucket",
            S3Key::BucketLookupType => "etcd-s3-bucket-lookup-type",
            S3Key::Region => "etcd-s3-region",
            S3Key::Folder => "etcd-s3-folder",
            S3Key::Retention => "etcd-s3-retention",
            S3Key::Proxy => "etcd-s3-proxy",
            S3Key::Insecure => "etcd-s3-insecure",
            S3Key::Timeout => "etcd-s3-timeout",
            S3Key::LockRetention => "etcd-s3-lock-retention",
            S3Key::LockMode => "etcd-s3-lock-mode",
        }
    }

    /// etcdsnap's flag for the setting (`s3-bucket`, without dashes).
    pub fn flag(self) -> &'static str {
        self.k3s_name().trim_start_matches("etcd-")
    }

    pub fn from_k3s_name(name: &str) -> Option<S3Key> {
        S3Key::ALL.into_iter().find(|k| k.k3s_name() == name)
    }

    /// Whether the value is a credential (never shown, not even its shape).
    fn is_secret(self) -> bool {
        matches!(self, S3Key::AccessKey | S3Key::SecretKey | S3Key::SessionToken)
    }
}

/// Where a set of settings came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingsOrigin {
    /// Command-line flags, environment variables or the config file.
    Flags,
    /// The S3 config Secret of this name in kube-system.
    Secret(String),
}

/// A setting that cannot be used. The message names the setting and what is wrong with it, never
/// the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", setting_name(origin, *key))]
pub struct S3SettingsError {
    pub origin: SettingsOrigin,
    pub key: S3Key,
    pub problem: String,
}

fn setting_name(origin: &SettingsOrigin, key: S3Key) -> String {
    match origin {
        SettingsOrigin::Flags => format!("--{}", key.flag()),
        SettingsOrigin::Secret(name) => {
            format!("S3 config secret {SYSTEM_NAMESPACE}/{name}: key {}", key.k3s_name())
        }
    }
}

/// Settings as given, before any of them is interpreted: text values by key, plus CA bundles
/// found elsewhere (the CA ConfigMap a Secret names).
#[derive(Clone)]
pub struct RawS3Settings {
    origin: SettingsOrigin,
    values: BTreeMap<S3Key, String>,
    extra_ca: Vec<String>,
    /// The Secret's `etcdsnap-encrypt-to`: age recipients (public keys), not an S3 setting.
    recipients: Option<String>,
}

impl fmt::Debug for RawS3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .values
            .iter()
            .map(|(k, v)| (k.k3s_name(), if k.is_secret() || *k == S3Key::Proxy { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("RawS3Settings")
            .field("origin", &self.origin)
            .field("values", &shown)
            .field("extra_ca", &self.extra_ca.len())
            .finish()
    }
}

impl RawS3Settings {
    pub fn new(origin: SettingsOrigin) -> RawS3Settings {
        RawS3Settings { origin, values: BTreeMap::new(), extra_ca: Vec::new(), recipients: None }
    }

    /// A Secret's data: UTF-8 text per key, blank values treated as absent. Unknown keys are
    /// logged and ignored (K3s ignores them too).
    pub fn from_secret_data(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<RawS3Settings, S3SettingsError> {
        let mut raw = RawS3Settings::new(SettingsOrigin::Secret(secret.to_string()));
        for (name, bytes) in data {
            if name == etcdsnap_api::seal::SECRET_RECIPIENTS_KEY {
                raw.recipients =
                    std::str::from_utf8(bytes).ok().map(str::trim).filter(|r| !r.is_empty()).map(String::from);
                continue;
            }
            let Some(key) = S3Key::from_k3s_name(name) else {
                tracing::warn!(secret = %secret, key = %name, "ignoring unknown key in the S3 config secret");
                continue;
            };
            let text = std::str::from_utf8(bytes).map_err(|_| raw.error(key, "not UTF-8 text"))?;
            raw.set(key, text);
        }
        Ok(raw)
    }

    /// Sets a value; blank text counts as not set.
    pub fn set(&mut self, key: S3Key, value: impl Into<String>) -> &mut Self {
        let value = value.into();
        if value.trim().is_empty() {
            self.values.remove(&key);
        } else {
            self.values.insert(key, value.trim().to_string());
        }
        self
    }

    pub fn get(&self, key: S3Key) -> Option<&str> {
        self.values.get(&key).map(String::as_str)
    }

    pub fn origin(&self) -> &SettingsOrigin {
        &self.origin
    }

    /// The age recipients the Secret lists (`etcdsnap-encrypt-to`), as given.
    pub fn recipients(&self) -> Option<&str> {
        self.recipients.as_deref()
    }

    /// Whether anything but the retention and the lock is set: K3s uses the Secret only when
    /// the flags describe no S3 location of their own.
    pub fn names_a_location(&self) -> bool {
        self.values.keys().any(|k| !matches!(k, S3Key::Retention | S3Key::LockRetention | S3Key::LockMode))
    }

    /// PEM bundles to trust besides the CA setting itself (the Secret's CA ConfigMap).
    pub fn add_ca_bundles(&mut self, bundles: impl IntoIterator<Item = String>) {
        self.extra_ca.extend(bundles);
    }

    fn error(&self, key: S3Key, problem: impl Into<String>) -> S3SettingsError {
        S3SettingsError { origin: self.origin.clone(), key, problem: problem.into() }
    }

    /// Validates every setting and applies K3s's defaults (endpoint `s3.amazonaws.com`, region
    /// `us-east-1`, timeout 5m, bucket lookup auto).
    pub fn parse(&self) -> Result<S3Config, S3SettingsError> {
        let text = |k: S3Key| self.get(k).map(str::to_string);
        let boolean = |k: S3Key| -> Result<bool, S3SettingsError> {
            self.get(k)
                .map(|v| etcdsnap_api::go::parse_bool(v).ok_or_else(|| self.error(k, "not a boolean (true or false)")))
                .transpose()
                .map(|b| b.unwrap_or(false))
        };
        let endpoint = self.endpoint()?;
        let bucket = self.bucket()?;
        let folder =
            normalise_folder(self.get(S3Key::Folder).unwrap_or("")).map_err(|p| self.error(S3Key::Folder, p))?;
        let region = text(S3Key::Region).unwrap_or_else(|| DEFAULT_REGION.to_string());
        let timeout = match self.get(S3Key::Timeout) {
            None => DEFAULT_TIMEOUT,
            Some(t) => etcdsnap_api::go::parse_duration(t)
                .map_err(|_| self.error(S3Key::Timeout, "not a duration like 5m or 30s"))?,
        };
        if timeout.is_zero() {
            return Err(self.error(S3Key::Timeout, "must be greater than zero"));
        }
        let (access_key, secret_key) = (text(S3Key::AccessKey), text(S3Key::SecretKey));
        match (&access_key, &secret_key) {
            (Some(_), None) => {
                return Err(self.error(S3Key::SecretKey, format!("is required with {}", self.name(S3Key::AccessKey))));
            }
            (None, Some(_)) => {
                return Err(self.error(S3Key::AccessKey, format!("is required with {}", self.name(S3Key::SecretKey))));
            }
            _ => {}
        }
        let bucket_lookup = match self.get(S3Key::BucketLookupType) {
            None => BucketLookup::Auto,
            Some(l) => l.parse().map_err(|_| self.error(S3Key::BucketLookupType, "must be auto, dns or path"))?,
        };
        let retention = self
            .get(S3Key::Retention)
            .map(|r| r.parse::<usize>().map_err(|_| self.error(S3Key::Retention, "not a whole number")))
            .transpose()?;
        let lock = self.lock()?;
        Ok(S3Config {
            endpoint,
            endpoint_ca: self.ca_certificates()?,
            endpoint_ca_setting: text(S3Key::EndpointCa),
            skip_ssl_verify: boolean(S3Key::SkipSslVerify)?,
            access_key,
            secret_key,
            session_token: text(S3Key::SessionToken),
            bucket,
            region,
            folder,
            insecure: boolean(S3Key::Insecure)?,
            bucket_lookup,
            timeout,
            proxy: self.proxy()?,
            retention,
            lock,
            part_size: PART_SIZE,
            concurrency: CONCURRENCY,
            program: Program::default(),
        })
    }

    fn name(&self, key: S3Key) -> String {
        match &self.origin {
            SettingsOrigin::Flags => format!("--{}", key.flag()),
            SettingsOrigin::Secret(_) => key.k3s_name().to_string(),
        }
    }

    /// The Object Lock retention each object gets (`etcd-s3-lock-retention`, a Go duration or a
    /// number of days like `30d`; `etcd-s3-lock-mode`, governance unless compliance is asked).
    fn lock(&self) -> Result<Option<ObjectLock>, S3SettingsError> {
        let mode = match self.get(S3Key::LockMode) {
            None => LockMode::Governance,
            Some(m) => m.parse().map_err(|_| self.error(S3Key::LockMode, "must be governance or compliance"))?,
        };
        let Some(text) = self.get(S3Key::LockRetention) else {
            if self.get(S3Key::LockMode).is_some() {
                return Err(self.error(S3Key::LockMode, format!("needs {}", self.name(S3Key::LockRetention))));
            }
            return Ok(None);
        };
        let bad = || self.error(S3Key::LockRetention, "not a duration like 2h, 720h or 30d");
        let retention = match text.strip_suffix('d') {
            Some(days) => {
                days.parse::<u64>().map(|d| Duration::from_secs(d.saturating_mul(86_400))).map_err(|_| bad())?
            }
            None => etcdsnap_api::go::parse_duration(text).map_err(|_| bad())?,
        };
        if retention < Duration::from_secs(1) {
            return Err(self.error(S3Key::LockRetention, "must be at least one second"));
        }
        if retention > Duration::from_secs(100 * 365 * 86_400) {
            return Err(self.error(S3Key::LockRetention, "must be under 100 years"));
        }
        Ok(Some(ObjectLock { mode, retention }))
    }

    fn endpoint(&self) -> Result<String, S3SettingsError> {
        let endpoint = self.get(S3Key::Endpoint).unwrap_or(DEFAULT_ENDPOINT).to_string();
        if endpoint.contains("://") {
            return Err(self.error(
                S3Key::Endpoint,
                format!("must be host[:port] without a scheme (use {} for plain HTTP)", self.name(S3Key::Insecure)),
            ));
        }
        if endpoint.contains('/') || endpoint.contains(char::is_whitespace) {
            return Err(self.error(S3Key::Endpoint, "must be host[:port], without a path"));
        }
        Ok(endpoint)
    }

    fn bucket(&self) -> Result<String, S3SettingsError> {
        let bucket = self.get(S3Key::Bucket).unwrap_or_default().to_string();
        if bucket.is_empty() {
            return Err(self.error(S3Key::Bucket, "is required when S3 is enabled"));
        }
        if bucket.contains('/') || bucket.chars().any(char::is_whitespace) {
            return Err(self.error(S3Key::Bucket, "is not a bucket name (no '/' or spaces)"));
        }
        Ok(bucket)
    }

    fn proxy(&self) -> Result<ProxySetting, S3SettingsError> {
        match self.get(S3Key::Proxy) {
            None => Ok(ProxySetting::System),
            Some("none") => Ok(ProxySetting::Disabled),
            Some(url) => {
                let bad = || self.error(S3Key::Proxy, "must be `none` or a proxy URL with scheme and host");
                let parsed = url::Url::parse(url).map_err(|_| bad())?;
                if parsed.host_str().is_none_or(str::is_empty)
                    || !matches!(parsed.scheme(), "http" | "https" | "socks5" | "socks5h")
                {
                    return Err(bad());
                }
                reqwest::Proxy::all(url).map_err(|_| bad())?;
                Ok(ProxySetting::Url(url.to_string()))
            }
        }
    }

    /// The CA setting (K3s's list of PEM file paths and base64-encoded PEM bundles, or PEM text
    /// as the Secret may hold it) and the extra bundles, parsed into certificates once.
    fn ca_certificates(&self) -> Result<Vec<reqwest::Certificate>, S3SettingsError> {
        let mut pems = match self.get(S3Key::EndpointCa) {
            Some(ca) => ca_bundles(ca).map_err(|p| self.error(S3Key::EndpointCa, p))?,
            None => Vec::new(),
        };
        pems.extend(self.extra_ca.iter().cloned());
        let mut certs = Vec::new();
        for pem in pems {
            let bundle = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).unwrap_or_default();
            if bundle.is_empty() {
                let key = if self.extra_ca.contains(&pem) { S3Key::EndpointCaName } else { S3Key::EndpointCa };
                return Err(self.error(key, "no certificates loaded: not a PEM certificate bundle"));
            }
            certs.extend(bundle);
        }
        Ok(certs)
    }
}

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";

/// PEM text of each item of a CA setting: the whole value when it is PEM text, else each
/// whitespace-separated item as a file path or a base64-encoded PEM bundle.
fn ca_bundles(value: &str) -> Result<Vec<String>, String> {
    if value.contains(PEM_BEGIN) {
        return Ok(vec![value.trim().to_string()]);
    }
    let mut pems = Vec::new();
    for item in value.split_whitespace() {
        let path = Path::new(item);
        if path.is_file() {
            pems.push(std::fs::read_to_string(path).map_err(|e| format!("reading CA file {item}: {e}"))?);
            continue;
        }
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(item)
            && let Ok(text) = String::from_utf8(bytes)
            && text.contains(PEM_BEGIN)
        {
            pems.push(text);
            continue;
        }
        if item.starts_with('/') || item.starts_with('.') {
            return Err(format!("CA file {item} does not exist"));
        }
        return Err(
            "no certificates loaded (each item must be a PEM file path or a base64-encoded PEM bundle)".to_string()
        );
    }
    Ok(pems)
}

/// `a/b/` → `a/b`; refuses `..`, empty segments and control characters.
fn normalise_folder(folder: &str) -> Result<String, String> {
    let trimmed = folder.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    for segment in trimmed.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." || segment.chars().any(char::is_control) {
            return Err("is not a valid folder (no empty, '.' or '..' segments)".to_string());
        }
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ0vlGHG3ZqJw6K3mN8WwVqC8dXUwCgYIKoZIzj0EAwIw\nDzENMAsGA1UEAwwEdGVzdDAeFw0yNDAxMDEwMDAwMDBaFw0zNDAxMDEwMDAwMDBa\n-----END CERTIFICATE-----\n";

    fn flags(pairs: &[(S3Key, &str)]) -> RawS3Settings {
        let mut raw = RawS3Settings::new(SettingsOrigin::Flags);
        raw.set(S3Key::Bucket, "b");
        for (k, v) in pairs {
            raw.set(*k, *v);
        }
        raw
    }

    fn err(raw: RawS3Settings) -> String {
        raw.parse().err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(err(flags(&[(S3Key::Bucket, " ")])).starts_with("--s3-bucket"));
        assert!(err(flags(&[(S3Key::Endpoint, "https://x")])).starts_with("--s3-endpoint"));
        assert!(err(flags(&[(S3Key::Folder, "a/../b")])).starts_with("--s3-folder"));
        assert!(err(flags(&[(S3Key::Proxy, "/proxy")])).starts_with("--s3-proxy"));
        assert!(err(flags(&[(S3Key::Proxy, "http://%invalid")])).starts_with("--s3-proxy"));
        assert!(err(flags(&[(S3Key::EndpointCa, "/does/not/exist")])).starts_with("--s3-endpoint-ca"));
        assert!(err(flags(&[(S3Key::EndpointCa, "bm90IGEgY2VydA==")])).starts_with("--s3-endpoint-ca"));
        assert!(err(flags(&[(S3Key::Timeout, "0s")])).starts_with("--s3-timeout"));
        assert!(err(flags(&[(S3Key::BucketLookupType, "virtual")])).starts_with("--s3-bucket-lookup-type"));
        let e = err(flags(&[(S3Key::SecretKey, "s3cr3t-value")]));
        assert!(e.starts_with("--s3-access-key") && !e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn object_lock_settings() {
        let lock = |pairs: &[(S3Key, &str)]| flags(pairs).parse().map(|c| c.lock);
        let bucket = (S3Key::Bucket, "b");
        assert_eq!(lock(&[bucket]), Ok(None));
        let two_hours = Some(ObjectLock { mode: LockMode::Governance, retention: Duration::from_secs(7200) });
        assert_eq!(lock(&[bucket, (S3Key::LockRetention, "2h")]), Ok(two_hours));
        assert_eq!(
            lock(&[bucket, (S3Key::LockRetention, "30d"), (S3Key::LockMode, "COMPLIANCE")]),
            Ok(Some(ObjectLock { mode: LockMode::Compliance, retention: Duration::from_secs(30 * 86_400) }))
        );
        assert!(err(flags(&[bucket, (S3Key::LockRetention, "soon")])).starts_with("--s3-lock-retention"));
        assert!(err(flags(&[bucket, (S3Key::LockRetention, "0s")])).starts_with("--s3-lock-retention"));
        assert!(
            err(flags(&[bucket, (S3Key::LockRetention, "2h"), (S3Key::LockMode, "strict")]))
                .starts_with("--s3-lock-mode")
        );
        assert!(err(flags(&[bucket, (S3Key::LockMode, "governance")])).starts_with("--s3-lock-mode"));
        let raw = secret(&[("etcd-s3-bucket", "b"), ("etcd-s3-lock-retention", "48h")]).unwrap();
        assert_eq!(raw.parse().unwrap().lock.map(|l| l.retention), Some(Duration::from_secs(48 * 3600)));
        // Lock settings alone do not name a location: the Secret's is used.
        let mut raw = RawS3Settings::new(SettingsOrigin::Flags);
        raw.set(S3Key::LockRetention, "2h").set(S3Key::LockMode, "governance");
        assert!(!raw.names_a_location());
    }

    fn secret(pairs: &[(&str, &str)]) -> Result<RawS3Settings, S3SettingsError> {
        let data = pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        RawS3Settings::from_secret_data("cfg", &data)
    }

    #[test]
    fn the_secret_is_read_with_k3s_keys_and_the_same_rules() {
        let raw = secret(&[
            ("etcd-s3-endpoint", "minio.local:9000"),
            ("etcd-s3-bucket", "etcd"),
            ("etcd-s3-folder", "k3s"),
            ("etcd-s3-access-key", "AK"),
            ("etcd-s3-secret-key", "SK"),
            ("etcd-s3-insecure", "True"),
            ("etcd-s3-skip-ssl-verify", "0"),
            ("etcd-s3-timeout", "30s"),
            ("etcd-s3-retention", "7"),
            ("etcd-s3-bucket-lookup-type", "PATH"),
            ("etcd-s3-proxy", "none"),
            ("something-else", "ignored"),
        ])
        .unwrap();
        let debug = format!("{raw:?}");
        assert!(!debug.contains("\"AK\"") && !debug.contains("\"SK\""), "{debug}");
        let c = raw.parse().unwrap();
        assert_eq!((c.endpoint.as_str(), c.bucket.as_str(), c.folder.as_str()), ("minio.local:9000", "etcd", "k3s"));
        assert!(c.insecure && !c.skip_ssl_verify);
        assert_eq!(c.timeout, std::time::Duration::from_secs(30));
        assert_eq!(c.retention, Some(7));
        assert_eq!(c.bucket_lookup, BucketLookup::Path);
        assert_eq!(c.proxy, ProxySetting::Disabled);
        let debug = format!("{c:?}");
        assert!(!debug.contains("\"AK\"") && !debug.contains("SK\""), "{debug}");
    }

    #[test]
    fn bad_secret_values_name_their_key_and_not_their_value() {
        for (key, value) in [
            ("etcd-s3-insecure", "yes-please"),
            ("etcd-s3-skip-ssl-verify", "maybe"),
            ("etcd-s3-timeout", "soon"),
            ("etcd-s3-retention", "-1"),
            ("etcd-s3-bucket-lookup-type", "virtual"),
            ("etcd-s3-proxy", "/proxy"),
            ("etcd-s3-proxy", "http://"),
            ("etcd-s3-endpoint-ca", "not a certificate"),
            ("etcd-s3-endpoint", "https://s3.example.com"),
        ] {
            let e = secret(&[("etcd-s3-bucket", "b"), (key, value)]).and_then(|r| r.parse().map(|_| ()));
            let e = e.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(key) && e.contains("kube-system/cfg"), "{key}: {e}");
            assert!(!e.contains(value), "{e} leaks {value}");
        }
        let data = BTreeMap::from([("etcd-s3-bucket".to_string(), vec![0xff, 0xfe])]);
        assert!(RawS3Settings::from_secret_data("cfg", &data).is_err());
    }

    #[test]
    fn ca_settings_in_every_spelling() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(PEM);
        assert_eq!(ca_bundles(PEM).unwrap(), [PEM.trim()]);
        assert_eq!(ca_bundles(&format!("{b64} {b64}")).unwrap().len(), 2);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, PEM).unwrap();
        assert_eq!(ca_bundles(file.to_str().unwrap()).unwrap(), [PEM]);
        assert!(ca_bundles("/nope/ca.pem").unwrap_err().contains("does not exist"));
    }

    #[test]
    fn defaults_and_the_location_test() {
        let c = flags(&[]).parse().unwrap();
        assert_eq!((c.endpoint.as_str(), c.region.as_str()), (DEFAULT_ENDPOINT, DEFAULT_REGION));
        assert_eq!((c.timeout, c.bucket_lookup, c.retention), (DEFAULT_TIMEOUT, BucketLookup::Auto, None));
        let mut raw = RawS3Settings::new(SettingsOrigin::Flags);
        assert!(!raw.names_a_location());
        raw.set(S3Key::Retention, "3");
        assert!(!raw.names_a_location());
        raw.set(S3Key::Folder, "x");
        assert!(raw.names_a_location());
        assert_eq!(S3Key::Bucket.flag(), "s3-bucket");
        assert_eq!(S3Key::from_k3s_name("etcd-s3-timeout"), Some(S3Key::Timeout));
    }

    #[test]
    fn keys_locations_and_lookup() {
        let c = flags(&[(S3Key::Folder, "/k3s/prod/")]).parse().unwrap();
        assert_eq!(c.folder, "k3s/prod");
        assert_eq!(c.key("s-n-1"), "k3s/prod/s-n-1");
        assert_eq!(c.metadata_key("s-n-1"), "k3s/prod/.metadata/s-n-1");
        assert_eq!(c.location("s-n-1"), "s3://b/k3s/prod/s-n-1");
        assert!(c.virtual_hosted(), "AWS endpoints use DNS lookup in auto mode");
        assert_eq!(c.bucket_url(), "https://b.s3.amazonaws.com/");
        let c = flags(&[(S3Key::Endpoint, "127.0.0.1:9000"), (S3Key::Insecure, "true")]).parse().unwrap();
        assert!(!c.virtual_hosted());
        assert_eq!(c.bucket_url(), "http://127.0.0.1:9000/b/");
        assert_eq!(c.key("x"), "x");
        // RKE1 compatibility: Aliyun endpoints always use DNS lookup in auto mode.
        assert!(flags(&[(S3Key::Endpoint, "oss-cn-hangzhou.aliyuncs.com")]).parse().is_ok_and(|c| c.virtual_hosted()));
        assert!(flags(&[(S3Key::Endpoint, "minio.internal:9000")]).parse().is_ok_and(|c| !c.virtual_hosted()));
    }
}
