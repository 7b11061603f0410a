//! S3 settings from a Secret in kube-system (`--s3-config-secret`), with K3s's `etcd-s3-*` keys,
//! so the S3 credentials never appear on a command line or in a config file. Read again on every
//! operation, so a rotated Secret takes effect without a restart. Unlike K3s, a value that does not
//! parse is an error naming its key, not a warning followed by a silent default.

use super::{ApiError, status_is};
use base64::Engine as _;
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::Api;
use std::collections::BTreeMap;
use std::time::Duration;

pub const KEY_ENDPOINT: &str = "etcd-s3-endpoint";
pub const KEY_ENDPOINT_CA: &str = "etcd-s3-endpoint-ca";
pub const KEY_ENDPOINT_CA_NAME: &str = "etcd-s3-endpoint-ca-name";
pub const KEY_SKIP_SSL_VERIFY: &str = "etcd-s3-skip-ssl-verify";
pub const KEY_ACCESS_KEY: &str = "etcd-s3-access-key";
pub const KEY_SECRET_KEY: &str = "etcd-s3-secret-key";
pub const KEY_SESSION_TOKEN: &str = "etcd-s3-session-token";
pub const KEY_BUCKET: &str = "etcd-s3-bucket";
pub const KEY_BUCKET_LOOKUP: &str = "etcd-s3-bucket-lookup-type";
pub const KEY_REGION: &str = "etcd-s3-region";
pub const KEY_FOLDER: &str = "etcd-s3-folder";
pub const KEY_RETENTION: &str = "etcd-s3-retention";
pub const KEY_PROXY: &str = "etcd-s3-proxy";
pub const KEY_INSECURE: &str = "etcd-s3-insecure";
pub const KEY_TIMEOUT: &str = "etcd-s3-timeout";

const KNOWN_KEYS: [&str; 15] = [
    KEY_ENDPOINT,
    KEY_ENDPOINT_CA,
    KEY_ENDPOINT_CA_NAME,
    KEY_SKIP_SSL_VERIFY,
    KEY_ACCESS_KEY,
    KEY_SECRET_KEY,
    KEY_SESSION_TOKEN,
    KEY_BUCKET,
    KEY_BUCKET_LOOKUP,
    KEY_REGION,
    KEY_FOLDER,
    KEY_RETENTION,
    KEY_PROXY,
    KEY_INSECURE,
    KEY_TIMEOUT,
];

/// S3 settings as the Secret gives them; None where the Secret has no such key. The S3 store
/// applies its own defaults (endpoint `s3.amazonaws.com`, region `us-east-1`, timeout 5m).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3SecretSettings {
    pub endpoint: Option<String>,
    /// PEM bundles to trust: the inline CA, then every value of the CA ConfigMap.
    pub endpoint_ca_pems: Vec<String>,
    pub skip_ssl_verify: Option<bool>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
    pub bucket: Option<String>,
    /// `auto`, `dns` or `path`.
    pub bucket_lookup: Option<String>,
    pub region: Option<String>,
    pub folder: Option<String>,
    pub retention: Option<u32>,
    /// A proxy URL, or `none` to use no proxy at all.
    pub proxy: Option<String>,
    pub insecure: Option<bool>,
    pub timeout: Option<Duration>,
}

impl std::fmt::Debug for S3SecretSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3SecretSettings")
            .field("endpoint", &self.endpoint)
            .field("endpoint_ca_pems", &self.endpoint_ca_pems.len())
            .field("skip_ssl_verify", &self.skip_ssl_verify)
            .field("access_key", &redacted(&self.access_key))
            .field("secret_key", &redacted(&self.secret_key))
            .field("session_token", &redacted(&self.session_token))
            .field("bucket", &self.bucket)
            .field("bucket_lookup", &self.bucket_lookup)
            .field("region", &self.region)
            .field("folder", &self.folder)
            .field("retention", &self.retention)
            .field("proxy", &self.proxy.as_ref().map(|_| "<set>"))
            .field("insecure", &self.insecure)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why the Secret could not be used. Messages name the Secret and key, never a value.
#[derive(Debug, thiserror::Error)]
pub enum S3SecretError {
    #[error("S3 config secret {SYSTEM_NAMESPACE}/{0} not found")]
    Missing(String),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("S3 config secret {secret}: key {key}: {problem}")]
    BadValue { secret: String, key: &'static str, problem: String },
}

/// Reads and parses the Secret, and the CA ConfigMap it names.
pub async fn load(client: &Client, secret_name: &str) -> Result<S3SecretSettings, S3SecretError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let secret = secrets
        .get_opt(secret_name)
        .await
        .map_err(ApiError::new("get", format!("secret {SYSTEM_NAMESPACE}/{secret_name}")))?
        .ok_or_else(|| S3SecretError::Missing(secret_name.to_string()))?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .chain(secret.string_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())))
        .collect();
    let mut settings = parse(secret_name, &data)?;
    if let Some(ca_name) = text(secret_name, &data, KEY_ENDPOINT_CA_NAME)? {
        let bundles = read_ca_configmap(client, &ca_name).await.map_err(|e| match e {
            CaError::Api(e) => S3SecretError::Api(e),
            CaError::Problem(problem) => {
                S3SecretError::BadValue { secret: secret_name.to_string(), key: KEY_ENDPOINT_CA_NAME, problem }
            }
        })?;
        settings.endpoint_ca_pems.extend(bundles);
    }
    Ok(settings)
}

enum CaError {
    Api(ApiError),
    Problem(String),
}

async fn read_ca_configmap(client: &Client, name: &str) -> Result<Vec<String>, CaError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let cm = match api.get_opt(name).await {
        Ok(Some(cm)) => cm,
        Ok(None) => {
            return Err(CaError::Problem(format!("configmap {SYSTEM_NAMESPACE}/{name} not found")));
        }
        Err(e) if status_is(&e, |s| s.is_forbidden()) => {
            return Err(CaError::Problem(format!("not allowed to read configmap {SYSTEM_NAMESPACE}/{name}")));
        }
        Err(e) => {
            return Err(CaError::Api(ApiError::new("get", format!("configmap {SYSTEM_NAMESPACE}/{name}"))(e)));
        }
    };
    let mut pems = Vec::new();
    for (key, value) in cm.data.into_iter().flatten() {
        pems.push(check_pem(&value).map_err(|p| CaError::Problem(format!("configmap {name} key {key}: {p}")))?);
    }
    for (key, value) in cm.binary_data.into_iter().flatten() {
        let text = String::from_utf8(value.0)
            .map_err(|_| CaError::Problem(format!("configmap {name} key {key}: not PEM text")))?;
        pems.push(check_pem(&text).map_err(|p| CaError::Problem(format!("configmap {name} key {key}: {p}")))?);
    }
    if pems.is_empty() {
        return Err(CaError::Problem(format!("configmap {SYSTEM_NAMESPACE}/{name} holds no certificates")));
    }
    Ok(pems)
}

/// Parses the Secret's data (without the CA ConfigMap).
pub fn parse(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<S3SecretSettings, S3SecretError> {
    for key in data.keys().filter(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        tracing::warn!(secret = %secret, key = %key, "ignoring unknown key in the S3 config secret");
    }
    let bad = |key: &'static str, problem: String| S3SecretError::BadValue { secret: secret.to_string(), key, problem };
    let get = |key: &'static str| text(secret, data, key);
    let boolean = |key: &'static str| -> Result<Option<bool>, S3SecretError> {
        get(key)?.map(|v| parse_go_bool(&v).ok_or_else(|| bad(key, "not a boolean (true or false)".into()))).transpose()
    };
    let mut settings = S3SecretSettings {
        endpoint: get(KEY_ENDPOINT)?,
        skip_ssl_verify: boolean(KEY_SKIP_SSL_VERIFY)?,
        access_key: get(KEY_ACCESS_KEY)?,
        secret_key: get(KEY_SECRET_KEY)?,
        session_token: get(KEY_SESSION_TOKEN)?,
        bucket: get(KEY_BUCKET)?,
        region: get(KEY_REGION)?,
        folder: get(KEY_FOLDER)?,
        insecure: boolean(KEY_INSECURE)?,
        ..Default::default()
    };
    if let Some(endpoint) = &settings.endpoint
        && (endpoint.contains("://") || endpoint.contains('/'))
    {
        return Err(bad(KEY_ENDPOINT, "must be host[:port], without a scheme or path".into()));
    }
    if let Some(lookup) = get(KEY_BUCKET_LOOKUP)? {
        let lookup = lookup.to_lowercase();
        if !matches!(lookup.as_str(), "auto" | "dns" | "path") {
            return Err(bad(KEY_BUCKET_LOOKUP, "must be auto, dns or path".into()));
        }
        settings.bucket_lookup = Some(lookup);
    }
    if let Some(r) = get(KEY_RETENTION)? {
        settings.retention = Some(r.parse().map_err(|_| bad(KEY_RETENTION, "not a whole number".into()))?);
    }
    if let Some(t) = get(KEY_TIMEOUT)? {
        settings.timeout = Some(
            crate::cli::args::parse_duration(&t)
                .map_err(|_| bad(KEY_TIMEOUT, "not a duration like 5m or 30s".into()))?,
        );
    }
    if let Some(p) = get(KEY_PROXY)? {
        if p != "none" && !is_proxy_url(&p) {
            return Err(bad(KEY_PROXY, "must be `none` or a URL with scheme and host".into()));
        }
        settings.proxy = Some(p);
    }
    if let Some(ca) = get(KEY_ENDPOINT_CA)? {
        settings.endpoint_ca_pems.push(check_pem(&ca).map_err(|p| bad(KEY_ENDPOINT_CA, p))?);
    }
    Ok(settings)
}

/// A key's value as trimmed UTF-8 text; None when absent or blank.
fn text(secret: &str, data: &BTreeMap<String, Vec<u8>>, key: &'static str) -> Result<Option<String>, S3SecretError> {
    let Some(raw) = data.get(key) else { return Ok(None) };
    let value = std::str::from_utf8(raw).map_err(|_| S3SecretError::BadValue {
        secret: secret.to_string(),
        key,
        problem: "not UTF-8 text".into(),
    })?;
    let value = value.trim();
    Ok((!value.is_empty()).then(|| value.to_string()))
}

/// Go's strconv.ParseBool, which K3s uses for these keys.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn is_proxy_url(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) && !host.is_empty()
}

/// Accepts PEM text, or base64 of PEM text (what K3s passes around), and returns PEM text.
fn check_pem(value: &str) -> Result<String, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    if value.contains(BEGIN) {
        return Ok(value.trim().to_string());
    }
    let compact: String = value.split_whitespace().collect();
    match base64::engine::general_purpose::STANDARD.decode(compact) {
        Ok(bytes) if String::from_utf8_lossy(&bytes).contains(BEGIN) => {
            Ok(String::from_utf8_lossy(&bytes).trim().to_string())
        }
        _ => Err("no PEM certificate found".into()),
    }
}

impl S3SecretSettings {
    /// The store settings these stand for, with the store's defaults where the Secret is silent.
    /// CA bundles are passed the way K3s passes them: base64-encoded, space-separated.
    pub fn into_store_settings(self) -> crate::store::s3::S3Settings {
        use crate::store::s3::config::{DEFAULT_ENDPOINT, DEFAULT_REGION, DEFAULT_TIMEOUT};
        let ca = (!self.endpoint_ca_pems.is_empty()).then(|| {
            self.endpoint_ca_pems
                .iter()
                .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()))
                .collect::<Vec<_>>()
                .join(" ")
        });
        crate::store::s3::S3Settings {
            endpoint: self.endpoint.unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            endpoint_ca: ca,
            skip_ssl_verify: self.skip_ssl_verify.unwrap_or(false),
            access_key: self.access_key,
            secret_key: self.secret_key,
            session_token: self.session_token,
            bucket: self.bucket,
            region: self.region.unwrap_or_else(|| DEFAULT_REGION.to_string()),
            folder: self.folder,
            insecure: self.insecure.unwrap_or(false),
            bucket_lookup: self.bucket_lookup.as_deref().and_then(|l| l.parse().ok()).unwrap_or_default(),
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            proxy: self.proxy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn parses_k3s_keys() {
        let s = parse(
            "s",
            &data(&[
                (KEY_ENDPOINT, "minio.local:9000"),
                (KEY_BUCKET, "etcd"),
                (KEY_FOLDER, "k3s"),
                (KEY_ACCESS_KEY, "AK"),
                (KEY_SECRET_KEY, "SK"),
                (KEY_INSECURE, "True"),
                (KEY_SKIP_SSL_VERIFY, "0"),
                (KEY_TIMEOUT, "30s"),
                (KEY_RETENTION, "7"),
                (KEY_BUCKET_LOOKUP, "PATH"),
                (KEY_PROXY, "none"),
                (KEY_ENDPOINT_CA, PEM),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.endpoint.as_deref(), Some("minio.local:9000"));
        assert_eq!(s.insecure, Some(true));
        assert_eq!(s.skip_ssl_verify, Some(false));
        assert_eq!(s.timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.retention, Some(7));
        assert_eq!(s.bucket_lookup.as_deref(), Some("path"));
        assert_eq!(s.endpoint_ca_pems.len(), 1);
        let debug = format!("{s:?}");
        assert!(!debug.contains("AK") && !debug.contains("SK"), "{debug}");
    }

    #[test]
    fn base64_ca_bundles_are_accepted() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(PEM);
        let s = parse("s", &data(&[(KEY_ENDPOINT_CA, &b64)])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.endpoint_ca_pems, [PEM.trim()]);
    }

    #[test]
    fn bad_values_name_their_key_and_not_their_value() {
        for (key, value) in [
            (KEY_INSECURE, "yes-please"),
            (KEY_SKIP_SSL_VERIFY, "maybe"),
            (KEY_TIMEOUT, "soon"),
            (KEY_RETENTION, "-1"),
            (KEY_BUCKET_LOOKUP, "virtual"),
            (KEY_PROXY, "/proxy"),
            (KEY_PROXY, "http://"),
            (KEY_ENDPOINT_CA, "not a certificate"),
            (KEY_ENDPOINT, "https://s3.example.com"),
        ] {
            let err = parse("cfg", &data(&[(key, value)])).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(key), "{key}: {err}");
            assert!(err.contains("cfg"), "{err}");
            assert!(!err.contains(value), "{err} leaks {value}");
        }
    }
}
