//! The extra-metadata ConfigMap (`kube-system/k3s-etcd-snapshot-extra-metadata` by default): its
//! `data` is copied into every new snapshot's metadata document, resource and legacy entry, so a
//! system restoring the snapshot later finds the cluster state it recorded.

use crate::{ApiError, status_is};
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;
use std::collections::BTreeMap;

/// The ConfigMap's data; None when it is missing or empty. Not being allowed to read it is
/// treated like missing (K3s ignores read errors here too), other errors are returned.
pub async fn read(client: &Client, name: &str) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
    match api.get_opt(name).await {
        Ok(cm) => Ok(cm.and_then(|c| c.data).filter(|d| !d.is_empty())),
        Err(e) if status_is(&e, |s| s.is_forbidden()) => {
            tracing::warn!(configmap = %format!("{SYSTEM_NAMESPACE}/{name}"), "not allowed to read the extra-metadata ConfigMap; snapshots are saved without it");
            Ok(None)
        }
        Err(e) => Err(ApiError::new("get", format!("configmap {SYSTEM_NAMESPACE}/{name}"))(e)),
    }
}

/// UID of the kube-system namespace: K3s's cluster id, recorded with S3 snapshots so retention
/// never touches another cluster's objects in a shared bucket.
pub async fn cluster_id(client: &Client) -> Result<Option<String>, ApiError> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match api.get_opt(SYSTEM_NAMESPACE).await {
        Ok(ns) => Ok(ns.and_then(|n| n.metadata.uid)),
        Err(e) if status_is(&e, |s| s.is_forbidden()) => Ok(None),
        Err(e) => Err(ApiError::new("get", format!("namespace {SYSTEM_NAMESPACE}"))(e)),
    }
}
