//! The `ETCDSnapshotFile` custom resource (`k3s.cattle.io/v1`, cluster-scoped), field for field
//! what K3s/RKE2 define, so Rancher and `kubectl get etcdsnapshotfiles` read etcdsnap's objects.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// ETCDSnapshotFile tracks a point-in-time snapshot of the etcd datastore.
// kube's derive takes one `printcolumn(...)` per column, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "k3s.cattle.io",
    version = "v1",
    kind = "ETCDSnapshotFile",
    status = "ETCDSnapshotStatus",
    printcolumn(name = "SnapshotName", type_ = "string", json_path = ".spec.snapshotName"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Location", type_ = "string", json_path = ".spec.location"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.size"),
    printcolumn(name = "CreationTime", type_ = "date", json_path = ".status.creationTime")
)]
#[serde(rename_all = "camelCase")]
pub struct ETCDSnapshotSpec {
    /// SnapshotName contains the base name of the snapshot file. CLI actions that act on
    /// snapshots stored locally or within a pre-configured S3 bucket and prefix usually take the
    /// snapshot name as their argument.
    pub snapshot_name: String,
    /// NodeName contains the name of the node that took the snapshot.
    pub node_name: String,
    /// Location is the absolute file:// or s3:// URI address of the snapshot.
    pub location: String,
    /// Metadata contains a point-in-time copy of the data of the
    /// k3s-etcd-snapshot-extra-metadata ConfigMap, taken with the snapshot: cluster state an
    /// external system may need when restoring it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// S3 describes the S3 storage holding the snapshot. Set for every snapshot uploaded to S3,
    /// and only for those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<ETCDSnapshotS3>,
}

/// Where in S3 a snapshot is stored. Credentials are never recorded.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ETCDSnapshotS3 {
    /// Endpoint is the host or host:port of the S3 service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// EndpointCA is the CA bundle (path or base64 PEM) trusted for the S3 service; empty means
    /// the OS CA bundle.
    #[serde(default, rename = "endpointCA", skip_serializing_if = "Option::is_none")]
    pub endpoint_ca: Option<String>,
    /// SkipSSLVerify is true if TLS certificate verification is disabled.
    #[serde(default, rename = "skipSSLVerify", skip_serializing_if = "Option::is_none")]
    pub skip_ssl_verify: Option<bool>,
    /// Bucket is the bucket holding the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// BucketLookup is the bucket lookup type, one of 'auto', 'dns', 'path'. Empty means 'auto'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_lookup: Option<String>,
    /// Region is the region of the S3 service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Prefix is the folder in which the snapshot file is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Insecure is true if the S3 service uses HTTP instead of HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
}

/// Current information about a snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ETCDSnapshotStatus {
    /// Size is the size of the snapshot file, in bytes. If not specified, the snapshot failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "size_schema")]
    pub size: Option<Quantity>,
    /// CreationTime is the timestamp when the snapshot was taken by etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// ReadyToUse indicates that the snapshot is available to be restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// Error is the last observed error during snapshot creation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ETCDSnapshotError>,
}

/// An error encountered while taking or uploading a snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ETCDSnapshotError {
    /// Time is the timestamp when the error was encountered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Message details the error. It may be logged and must not contain sensitive information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `status.size` is a Kubernetes quantity: an integer or a string, like K3s declares it.
fn size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Size is the size of the snapshot file, in bytes. If not specified, the snapshot failed.",
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": true
    })
}

/// The CRD as etcdsnap installs it: what `kube` derives from the types above, with K3s's choices
/// applied: no status subresource (K3s writes status with plain updates, so a status subresource
/// would make its writes silently drop the status) and the list kind K3s uses.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = ETCDSnapshotFile::crd();
    for version in &mut crd.spec.versions {
        version.subresources = None;
    }
    crd.spec.names.list_kind = Some("ETCDSnapshotFileList".into());
    crd.spec.names.singular = Some("etcdsnapshotfile".into());
    crd
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn identity_matches_k3s() {
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("etcdsnapshotfiles.k3s.cattle.io"));
        assert_eq!(crd.spec.group, "k3s.cattle.io");
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.kind, "ETCDSnapshotFile");
        assert_eq!(crd.spec.names.plural, "etcdsnapshotfiles");
        assert_eq!(crd.spec.names.list_kind.as_deref(), Some("ETCDSnapshotFileList"));
        assert_eq!(ETCDSnapshotFile::api_version(&()), "k3s.cattle.io/v1");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1");
        assert!(v.subresources.is_none(), "K3s has no status subresource");
        let columns: Vec<(String, String)> =
            v.additional_printer_columns.iter().flatten().map(|c| (c.name.clone(), c.json_path.clone())).collect();
        assert_eq!(
            columns,
            [
                ("SnapshotName", ".spec.snapshotName"),
                ("Node", ".spec.nodeName"),
                ("Location", ".spec.location"),
                ("Size", ".status.size"),
                ("CreationTime", ".status.creationTime"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn schema_has_k3s_fields() {
        let crd = crd();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap_or_default();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        let mut required: Vec<&str> =
            spec["required"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
        required.sort();
        assert_eq!(required, ["location", "nodeName", "snapshotName"]);
        for f in ["snapshotName", "nodeName", "location", "metadata", "s3"] {
            assert!(spec["properties"][f].is_object(), "spec.{f} missing");
        }
        for f in ["endpoint", "endpointCA", "skipSSLVerify", "bucket", "bucketLookup", "region", "prefix", "insecure"] {
            assert!(
                spec["properties"]["s3"]["properties"][f].is_object(),
                "spec.s3.{f} missing: {}",
                spec["properties"]["s3"]
            );
        }
        let status = &schema["openAPIV3Schema"]["properties"]["status"];
        for f in ["size", "creationTime", "readyToUse", "error"] {
            assert!(status["properties"][f].is_object(), "status.{f} missing");
        }
        assert_eq!(status["properties"]["size"]["x-kubernetes-int-or-string"], true);
    }

    #[test]
    fn serialises_like_k3s() {
        let obj = ETCDSnapshotFile {
            metadata: kube::api::ObjectMeta { name: Some("local-x-abcdef".into()), ..Default::default() },
            spec: ETCDSnapshotSpec {
                snapshot_name: "x".into(),
                node_name: "n".into(),
                location: "file:///x".into(),
                metadata: None,
                s3: Some(ETCDSnapshotS3 {
                    endpoint_ca: Some("ca".into()),
                    skip_ssl_verify: Some(true),
                    ..Default::default()
                }),
            },
            status: Some(ETCDSnapshotStatus {
                size: Some(Quantity("2891808".into())),
                creation_time: Some(Time("2024-10-30T17:20:16Z".parse().unwrap_or_default())),
                ready_to_use: Some(true),
                error: None,
            }),
        };
        let v = serde_json::to_value(&obj).unwrap_or_default();
        assert_eq!(v["apiVersion"], "k3s.cattle.io/v1");
        assert_eq!(v["kind"], "ETCDSnapshotFile");
        assert_eq!(v["spec"]["s3"]["endpointCA"], "ca");
        assert_eq!(v["spec"]["s3"]["skipSSLVerify"], true);
        assert_eq!(v["status"]["size"], "2891808");
        assert_eq!(v["status"]["creationTime"], "2024-10-30T17:20:16Z");
        assert_eq!(v["status"]["readyToUse"], true);
    }
}
