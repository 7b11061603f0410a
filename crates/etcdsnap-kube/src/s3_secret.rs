//! S3 settings from a Secret in kube-system (`--s3-config-secret`), with K3s's `etcd-s3-*` keys,
//! so the S3 credentials never appear on a command line or in a config file. Read again on every
//! operation, so a rotated Secret takes effect without a restart. This module only fetches the
//! Secret and the CA ConfigMap it names; the values are interpreted by the same parser as flags,
//! and unlike K3s a value that does not parse is an error naming its key, not a silent default.

use crate::{ApiError, status_is};
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use etcdsnap_storage::store::s3::{RawS3Settings, S3Key, S3SettingsError};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::Api;
use std::collections::BTreeMap;

/// Why the Secret could not be read. Messages name the Secret and key, never a value.
#[derive(Debug, thiserror::Error)]
pub enum S3SecretError {
    #[error("S3 config secret {SYSTEM_NAMESPACE}/{0} not found")]
    Missing(String),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Settings(#[from] S3SettingsError),
    #[error("S3 config secret {SYSTEM_NAMESPACE}/{secret}: key etcd-s3-endpoint-ca-name: {problem}")]
    CaConfigMap { secret: String, problem: String },
}

/// Reads the Secret, and the CA ConfigMap it names, as raw settings for the S3 settings parser
/// (`etcdsnap_storage::store::s3::settings`), which interprets them exactly like flags.
pub async fn load(client: &Client, secret_name: &str) -> Result<RawS3Settings, S3SecretError> {
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
    let mut raw = RawS3Settings::from_secret_data(secret_name, &data)?;
    if let Some(ca_name) = raw.get(S3Key::EndpointCaName).map(str::to_string) {
        let bundles = read_ca_configmap(client, &ca_name).await.map_err(|e| match e {
            CaError::Api(e) => S3SecretError::Api(e),
            CaError::Problem(problem) => S3SecretError::CaConfigMap { secret: secret_name.to_string(), problem },
        })?;
        raw.add_ca_bundles(bundles);
    }
    Ok(raw)
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
    pems.extend(cm.data.into_iter().flatten().map(|(_, value)| value));
    for (key, value) in cm.binary_data.into_iter().flatten() {
        let text = String::from_utf8(value.0)
            .map_err(|_| CaError::Problem(format!("configmap {name} key {key}: not PEM text")))?;
        pems.push(text);
    }
    if pems.is_empty() {
        return Err(CaError::Problem(format!("configmap {SYSTEM_NAMESPACE}/{name} holds no certificates")));
    }
    Ok(pems)
}
