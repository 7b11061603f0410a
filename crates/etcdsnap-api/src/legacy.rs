//! Entries of the legacy ConfigMap `kube-system/k3s-etcd-snapshots`: one JSON value per snapshot,
//! in the exact shape K3s writes (its `File` struct), keyed by [`crate::configmap_key`].

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The S3 part of a legacy entry. K3s always includes `"timeout":"0s"` (a side effect of how it
/// masks its config struct), and never credentials.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LegacyS3Config {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    #[serde(default, rename = "endpointCA", skip_serializing_if = "String::is_empty")]
    pub endpoint_ca: String,
    #[serde(default, rename = "skipSSLVerify", skip_serializing_if = "std::ops::Not::not")]
    pub skip_ssl_verify: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bucket: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub folder: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    #[serde(default = "zero_timeout")]
    pub timeout: String,
}

fn zero_timeout() -> String {
    "0s".to_string()
}

/// One value of the legacy ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LegacyEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    /// base64 of the JSON extra-metadata map.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
    /// base64 of the error message of a failed save.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// RFC 3339, whole seconds.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_at: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: i64,
    /// `successful` or `failed`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, rename = "s3Config", skip_serializing_if = "Option::is_none")]
    pub s3_config: Option<LegacyS3Config>,
    pub compressed: bool,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl LegacyEntry {
    /// Compact JSON as stored in the ConfigMap.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a ConfigMap value; None when it is not a K3s entry.
    pub fn parse(value: &str) -> Option<LegacyEntry> {
        serde_json::from_str(value).ok()
    }

    /// The decoded extra metadata, if the entry carries any.
    pub fn extra_metadata(&self) -> Option<BTreeMap<String, String>> {
        if self.metadata.is_empty() {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD.decode(&self.metadata).ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// Encodes an extra-metadata map the way K3s stores it.
    pub fn encode_metadata(map: &BTreeMap<String, String>) -> String {
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(map).unwrap_or_default())
    }

    /// Encodes an error message the way K3s stores it.
    pub fn encode_message(message: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(message.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_in_k3s_field_order_with_omitempty() {
        let e = LegacyEntry {
            name: "s".into(),
            location: "s3://b/f/s".into(),
            metadata: LegacyEntry::encode_metadata(&BTreeMap::from([("a".into(), "b".into())])),
            node_name: "s3".into(),
            created_at: "2024-10-30T17:20:16Z".into(),
            size: 12,
            status: "successful".into(),
            s3_config: Some(LegacyS3Config {
                endpoint: "e".into(),
                bucket: "b".into(),
                folder: "f".into(),
                timeout: "0s".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            e.to_json(),
            r#"{"name":"s","location":"s3://b/f/s","metadata":"eyJhIjoiYiJ9","nodeName":"s3","createdAt":"2024-10-30T17:20:16Z","size":12,"status":"successful","s3Config":{"endpoint":"e","bucket":"b","folder":"f","timeout":"0s"},"compressed":false}"#
        );
        let back = LegacyEntry::parse(&e.to_json());
        assert_eq!(back.as_ref(), Some(&e));
        assert_eq!(back.and_then(|b| b.extra_metadata()), Some(BTreeMap::from([("a".into(), "b".into())])));
        assert_eq!(
            LegacyEntry { name: "x".into(), ..Default::default() }.to_json(),
            r#"{"name":"x","compressed":false}"#
        );
    }
}
