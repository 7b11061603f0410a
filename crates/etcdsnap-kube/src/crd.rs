//! Installing the `etcdsnapshotfiles.k3s.cattle.io` CRD, or living with the one K3s installed.
//!
//! etcdsnap installs the CRD when it is missing and upgrades its own when the schema changed. A CRD
//! installed by K3s is left alone unless it lacks a field etcdsnap writes (the API server would
//! silently drop that field), so the two never take turns rewriting it. Without permission to read
//! or write CRDs (the agent's least-privilege role), the CRD is assumed to be installed from
//! `deploy/crd.yaml`.

use crate::ApiError;
use etcdsnap_api::consts::{ANNOTATION_MANAGED_BY, CRD_NAME};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};

/// What `ensure_crd` found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrdOutcome {
    Created,
    Upgraded,
    Current,
    /// Installed by someone else (K3s) with every field etcdsnap writes; left as is.
    KeptForeign,
    /// Not allowed to read CRDs; assumed installed.
    NotChecked,
    /// Needs an upgrade that etcdsnap may not write; left as is (named fields are missing).
    UpgradeForbidden(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(
        "the CRD {CRD_NAME} is not installed and this identity may not install it: apply deploy/crd.yaml (or `etcdsnap crd | kubectl apply -f -`)"
    )]
    NotInstalled,
    #[error("the CRD {CRD_NAME} did not become Established within {0:?}")]
    NotEstablished(Duration),
}

/// The CRD etcdsnap installs: the generated one, marked as etcdsnap's.
pub fn desired_crd() -> CustomResourceDefinition {
    let mut crd = etcdsnap_api::crd();
    crd.metadata.annotations.get_or_insert_default().insert(ANNOTATION_MANAGED_BY.into(), "etcdsnap".into());
    crd
}

/// The CRD as YAML, what `etcdsnap crd` prints and `deploy/crd.yaml` holds.
pub fn crd_yaml() -> String {
    let crd = desired_crd();
    let value = serde_json::to_value(&crd).unwrap_or_default();
    serde_norway::to_string(&value).unwrap_or_default()
}

const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs or upgrades the CRD when allowed, then waits until it is Established.
pub async fn ensure_crd(client: &Client) -> Result<CrdOutcome, CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let desired = desired_crd();
    let existing = match api.get_opt(CRD_NAME).await {
        Ok(found) => found,
        Err(e) if crate::status_is(&e, |s| s.is_forbidden()) => return Ok(CrdOutcome::NotChecked),
        Err(e) => return Err(ApiError::new("get", format!("CRD {CRD_NAME}"))(e).into()),
    };
    let outcome = match existing {
        None => match api.create(&PostParams::default(), &desired).await {
            Ok(_) => {
                tracing::info!(crd = CRD_NAME, "installed the CRD");
                CrdOutcome::Created
            }
            Err(e) if crate::status_is(&e, |s| s.is_already_exists()) => CrdOutcome::Current,
            Err(e) if crate::status_is(&e, |s| s.is_forbidden()) => return Err(CrdError::NotInstalled),
            Err(e) => return Err(ApiError::new("create", format!("CRD {CRD_NAME}"))(e).into()),
        },
        Some(existing) => {
            let established = is_established(&existing);
            let outcome = upgrade_if_needed(&api, existing, &desired).await?;
            if established && outcome != CrdOutcome::Upgraded {
                return Ok(outcome);
            }
            outcome
        }
    };
    wait_established(&api).await?;
    Ok(outcome)
}

async fn upgrade_if_needed(
    api: &Api<CustomResourceDefinition>,
    existing: CustomResourceDefinition,
    desired: &CustomResourceDefinition,
) -> Result<CrdOutcome, CrdError> {
    let ours = existing.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(ANNOTATION_MANAGED_BY));
    let missing = missing_fields(&existing);
    if !ours && missing.is_empty() {
        return Ok(CrdOutcome::KeptForeign);
    }
    if ours && missing.is_empty() && same_schema(&existing, desired) {
        return Ok(CrdOutcome::Current);
    }
    let mut updated = existing.clone();
    updated.spec = desired.spec.clone();
    let annotations = updated.metadata.annotations.get_or_insert_default();
    for (k, v) in desired.metadata.annotations.iter().flatten() {
        annotations.insert(k.clone(), v.clone());
    }
    match api.replace(CRD_NAME, &PostParams::default(), &updated).await {
        Ok(_) => {
            tracing::info!(crd = CRD_NAME, "upgraded the CRD");
            Ok(CrdOutcome::Upgraded)
        }
        Err(e) if crate::status_is(&e, |s| s.is_forbidden()) => {
            if !missing.is_empty() {
                tracing::warn!(crd = CRD_NAME, missing = ?missing, "the installed CRD lacks fields etcdsnap writes and this identity may not upgrade it; apply deploy/crd.yaml");
            }
            Ok(CrdOutcome::UpgradeForbidden(missing))
        }
        Err(e) => Err(ApiError::new("update", format!("CRD {CRD_NAME}"))(e).into()),
    }
}

fn version_parts(crd: &CustomResourceDefinition) -> Vec<serde_json::Value> {
    crd.spec
        .versions
        .iter()
        .map(|v| {
            serde_json::json!({
                "name": v.name,
                "served": v.served,
                "storage": v.storage,
                "schema": v.schema,
                "columns": v.additional_printer_columns,
                "subresources": v.subresources,
            })
        })
        .collect()
}

fn same_schema(a: &CustomResourceDefinition, b: &CustomResourceDefinition) -> bool {
    a.spec.scope == b.spec.scope && a.spec.names == b.spec.names && version_parts(a) == version_parts(b)
}

/// Fields etcdsnap writes that the v1 schema of `crd` does not declare.
pub fn missing_fields(crd: &CustomResourceDefinition) -> Vec<String> {
    let Some(v1) = crd.spec.versions.iter().find(|v| v.name == "v1") else {
        return vec!["version v1".into()];
    };
    let schema = serde_json::to_value(&v1.schema).unwrap_or_default();
    let props = |path: &str| schema.pointer(path).cloned().unwrap_or_default();
    let mut missing = Vec::new();
    let checks: [(&str, &[&str]); 3] = [
        ("/openAPIV3Schema/properties/spec/properties", &["snapshotName", "nodeName", "location", "metadata", "s3"]),
        (
            "/openAPIV3Schema/properties/spec/properties/s3/properties",
            &["endpoint", "endpointCA", "skipSSLVerify", "bucket", "bucketLookup", "region", "prefix", "insecure"],
        ),
        ("/openAPIV3Schema/properties/status/properties", &["size", "creationTime", "readyToUse", "error"]),
    ];
    for (path, fields) in checks {
        let found = props(path);
        for f in fields {
            if found.get(f).is_none() {
                let section = if path.contains("status") {
                    "status"
                } else if path.contains("s3") {
                    "spec.s3"
                } else {
                    "spec"
                };
                missing.push(format!("{section}.{f}"));
            }
        }
    }
    missing
}

async fn wait_established(api: &Api<CustomResourceDefinition>) -> Result<(), CrdError> {
    let deadline = Instant::now() + ESTABLISH_TIMEOUT;
    loop {
        match api.get_opt(CRD_NAME).await {
            Ok(Some(crd)) if is_established(&crd) => return Ok(()),
            Ok(_) => {}
            Err(e) if crate::status_is(&e, |s| s.is_forbidden()) => return Ok(()),
            Err(e) => return Err(ApiError::new("get", format!("CRD {CRD_NAME}"))(e).into()),
        }
        if Instant::now() >= deadline {
            return Err(CrdError::NotEstablished(ESTABLISH_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_crd_declares_every_field() {
        assert!(missing_fields(&desired_crd()).is_empty());
    }

    #[test]
    fn a_crd_without_bucket_lookup_is_incomplete() {
        let mut crd = desired_crd();
        let mut schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap_or_default();
        if let Some(s3) = schema.pointer_mut("/openAPIV3Schema/properties/spec/properties/s3/properties")
            && let Some(map) = s3.as_object_mut()
        {
            map.remove("bucketLookup");
        }
        crd.spec.versions[0].schema = serde_json::from_value(schema).ok();
        assert_eq!(missing_fields(&crd), ["spec.s3.bucketLookup"]);
    }

    #[test]
    fn yaml_names_the_crd() {
        let yaml = crd_yaml();
        assert!(yaml.contains("name: etcdsnapshotfiles.k3s.cattle.io"), "{yaml}");
        assert!(yaml.contains("scope: Cluster"));
        assert!(yaml.contains("jsonPath: .status.size"));
    }
}
