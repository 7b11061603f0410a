//! The metadata document stored beside every snapshot (`.metadata/<name>` on disk and in S3).
//!
//! It holds the whole record, so storage alone is enough to rebuild every custom resource. K3s
//! stores a flat JSON string map in the same place (the extra metadata); both are read.

use crate::crd::ETCDSnapshotS3;
use crate::lock::S3Lock;
use crate::members::ClusterMember;
use crate::names::Compression;
use crate::program::Program;
use crate::seal::Sealed;
use crate::token::TokenHash;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `apiVersion` of etcdsnap's metadata document.
pub const METADATA_API_VERSION: &str = "etcdsnap.io/v1";
/// `kind` of etcdsnap's metadata document.
pub const METADATA_KIND: &str = "SnapshotMetadata";
/// Larger metadata files or objects are refused unread: real ones are a few KiB, and a hostile
/// one must not be able to exhaust memory.
pub const MAX_METADATA_BYTES: usize = 1024 * 1024;

/// What etcd said about the member a snapshot was taken from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EtcdInfo {
    /// The revision the snapshot holds, read from its own pages as it streamed (a `Status` taken
    /// before the stream can be older: any write in between is in the file).
    pub revision: i64,
    /// etcd server version, e.g. `3.6.16`.
    pub version: String,
    /// Cluster and member ids, in hex as etcdctl prints them.
    pub cluster_id: String,
    pub member_id: String,
    /// Size of the database file etcd reported before the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size: Option<i64>,
    /// etcd's own hash of the key space at `revision`, asked of the member right after the
    /// snapshot: what a restore drill compares the snapshot's contents with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_kv: Option<KvHash>,
    /// Keys under `/registry/` (Kubernetes' objects) at `revision`, counted by the member with
    /// the HashKV: a booted drill must find as many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_keys: Option<i64>,
    /// Keys under `/registry/` by resource type (`pods`, `apps/deployments` as the key's first
    /// segments name it) at `revision`: what `restore-check` compares a restored cluster with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_keys_by_resource: Option<BTreeMap<String, i64>>,
    /// The cluster's members at save time (etcd's MemberList); absent in records of K3s, RKE2
    /// and earlier etcdsnap releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<ClusterMember>>,
    /// The history the snapshot belongs to: the revisions etcd numbered since it last started
    /// over (a restore, a member rolled back). None for snapshots saved before histories were
    /// recorded: each cluster's such snapshots count as one legacy history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<String>,
    /// A digest of the puts etcd made at `revision` (`etcdsnap_storage::pitr::history`): what
    /// tells, later, whether a live etcd's revision `revision` is this snapshot's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// The answer of etcd's Maintenance `HashKV` at a revision: a hash of every key revision from
/// the compact revision up to that revision. Two key spaces hash alike only over the same range,
/// so the compact revision is part of it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KvHash {
    pub hash: u32,
    pub compact_revision: i64,
}

impl KvHash {
    /// `<hash>/<compact revision>`, the form of the `etcdsnap.io/etcd-hashkv` annotation.
    pub fn to_annotation(&self) -> String {
        format!("{}/{}", self.hash, self.compact_revision)
    }

    /// The annotation's form read back; None for anything else.
    pub fn from_annotation(value: &str) -> Option<KvHash> {
        let (hash, compact) = value.split_once('/')?;
        Some(KvHash { hash: hash.parse().ok()?, compact_revision: compact.parse().ok()? })
    }
}

/// etcdsnap's metadata document: the full record of one stored snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetadataDocument {
    pub api_version: String,
    pub kind: String,
    /// Snapshot file name (the document's own file name).
    pub name: String,
    /// Node that took the snapshot.
    pub node_name: String,
    /// Where this copy lives: `file:///...` or `s3://bucket/key`.
    pub location: String,
    /// When the snapshot was taken (whole seconds, the instant in its name).
    pub created_at: jiff::Timestamp,
    /// Size of the stored (possibly compressed) bytes.
    pub size: u64,
    /// sha256 of the stored bytes, lowercase hex.
    pub sha256: String,
    pub compression: Compression,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<TokenHash>,
    /// UID of the `kube-system` namespace (K3s's cluster id), or `--cluster-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// S3 location details of this copy (never credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<ETCDSnapshotS3>,
    /// Copy of the extra-metadata ConfigMap's data at save time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_metadata: Option<BTreeMap<String, String>>,
    /// Set when the stored bytes are sealed (age): to whom, and the restore kit beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
    /// sha256 of the API server's EncryptionConfiguration file at save time: a restore
    /// compares it with the target host's (Secrets read as garbage under another key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_config_sha256: Option<String>,
    /// The last restore drill of this copy, kept with it so a rebuilt resource keeps it. It is
    /// written after the save, so a record's signature covers the record without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillResult>,
    /// The program (`k3s` or `rke2`) whose names the S3 object's user metadata carries. Absent
    /// for local copies and in records of earlier releases, which uploaded under K3s's names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<Program>,
    /// S3 copies: the Object Lock etcdsnap put on the snapshot's object when it wrote it
    /// (`--s3-lock-retention`). Absent when it put none (a bucket's default retention may still
    /// lock the object) and in records of earlier releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_lock: Option<S3Lock>,
}

/// When a snapshot was last drilled and how it ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DrillResult {
    pub at: jiff::Timestamp,
    /// `passed`, `not compared: <why>` or `failed: <reason>`.
    pub result: String,
}

impl DrillResult {
    pub fn passed(&self) -> bool {
        self.result == "passed"
    }

    /// Whether the drill found a problem (a drill that could not compare did not).
    pub fn failed(&self) -> bool {
        !self.passed() && !self.result.starts_with("not compared")
    }
}

/// What a metadata file or object turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredMetadata {
    /// etcdsnap's document.
    Document(Box<MetadataDocument>),
    /// K3s's flat string map: the extra metadata only.
    ExtraMetadata(BTreeMap<String, String>),
}

/// Why a metadata file or object was not accepted. The snapshot itself is still listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata is {0} bytes, more than the {MAX_METADATA_BYTES} accepted")]
    TooLarge(usize),
    #[error("metadata is not valid JSON: {0}")]
    NotJson(String),
    #[error("metadata is neither an etcdsnap.io/v1 document nor a string map")]
    UnknownFormat,
    #[error("metadata document is invalid: {0}")]
    InvalidDocument(String),
    #[error("metadata document describes snapshot {found:?}, not {expected:?}")]
    NameMismatch { expected: String, found: String },
}

impl MetadataDocument {
    /// Compact JSON, as written to disk and S3.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, integers and string maps always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Parses the bytes of `.metadata/<expected_name>`.
pub fn parse_stored_metadata(bytes: &[u8], expected_name: &str) -> Result<StoredMetadata, MetadataError> {
    if bytes.len() > MAX_METADATA_BYTES {
        return Err(MetadataError::TooLarge(bytes.len()));
    }
    // serde_json refuses nesting deeper than 128 levels, so hostile depth is an error, not a crash.
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| MetadataError::NotJson(e.to_string()))?;
    let serde_json::Value::Object(map) = &value else {
        return Err(MetadataError::UnknownFormat);
    };
    if map.get("apiVersion").and_then(|v| v.as_str()) == Some(METADATA_API_VERSION) {
        let doc: MetadataDocument =
            serde_json::from_value(value).map_err(|e| MetadataError::InvalidDocument(e.to_string()))?;
        if doc.name != expected_name {
            return Err(MetadataError::NameMismatch { expected: expected_name.to_string(), found: doc.name });
        }
        return Ok(StoredMetadata::Document(Box::new(doc)));
    }
    let mut extra = BTreeMap::new();
    for (k, v) in map {
        match v {
            serde_json::Value::String(s) => {
                extra.insert(k.clone(), s.clone());
            }
            _ => return Err(MetadataError::UnknownFormat),
        }
    }
    Ok(StoredMetadata::ExtraMetadata(extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str) -> MetadataDocument {
        MetadataDocument {
            api_version: METADATA_API_VERSION.into(),
            kind: METADATA_KIND.into(),
            name: name.into(),
            node_name: "n1".into(),
            location: format!("file:///s/{name}"),
            created_at: jiff::Timestamp::from_second(1_700_000_000).unwrap_or_default(),
            size: 10,
            sha256: "ab".repeat(32),
            compression: Compression::Zstd,
            etcd: Some(EtcdInfo {
                revision: 5,
                version: "3.6.16".into(),
                cluster_id: "1".into(),
                member_id: "2".into(),
                db_size: Some(20),
                hash_kv: Some(KvHash { hash: 3_735_928_559, compact_revision: 2 }),
                kubernetes_keys: Some(7),
                kubernetes_keys_by_resource: Some(BTreeMap::from([("pods".to_string(), 7)])),
                members: Some(vec![crate::ClusterMember {
                    name: "m0".into(),
                    id: "2".into(),
                    peer_urls: vec!["https://10.0.0.5:2380".into()],
                    client_urls: vec!["https://10.0.0.5:2379".into()],
                    is_learner: false,
                }]),
                history: Some("0123456789abcdef".into()),
                fingerprint: Some("ab".repeat(16)),
            }),
            token_hash: TokenHash::parse_recorded("652c7dc687d9"),
            cluster_id: Some("uid".into()),
            s3: None,
            extra_metadata: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
            sealed: Some(Sealed { recipients: vec!["age1x".into()], kit: None }),
            encryption_config_sha256: None,
            drill: Some(DrillResult {
                at: jiff::Timestamp::from_second(1_700_000_100).unwrap_or_default(),
                result: "passed".into(),
            }),
            program: Some(Program::Rke2),
            s3_lock: Some(S3Lock {
                until: jiff::Timestamp::from_second(1_700_007_200).unwrap_or_default(),
                mode: crate::LockMode::Compliance,
            }),
        }
    }

    #[test]
    fn documents_round_trip() {
        let d = doc("a-n1-1700000000.zst");
        let json = d.to_json();
        let text = String::from_utf8_lossy(&json);
        assert!(text.contains("\"apiVersion\":\"etcdsnap.io/v1\""), "{text}");
        assert!(text.contains("\"createdAt\":\"2023-11-14T22:13:20Z\""), "{text}");
        assert!(text.contains("\"program\":\"rke2\""), "{text}");
        assert!(text.contains("\"s3Lock\":{\"until\":\"2023-11-15T00:13:20Z\",\"mode\":\"compliance\"}"), "{text}");
        assert_eq!(parse_stored_metadata(&json, "a-n1-1700000000.zst"), Ok(StoredMetadata::Document(Box::new(d))));
    }

    #[test]
    fn documents_without_a_hashkv_still_read() {
        let mut d = doc("a-n1-1700000000.zst");
        if let Some(etcd) = d.etcd.as_mut() {
            etcd.hash_kv = None;
        }
        let text = String::from_utf8_lossy(&d.to_json()).to_string();
        assert!(!text.contains("hashKv"), "{text}");
        assert_eq!(
            parse_stored_metadata(text.as_bytes(), "a-n1-1700000000.zst"),
            Ok(StoredMetadata::Document(Box::new(d)))
        );
    }

    #[test]
    fn hashkv_annotations_round_trip_and_refuse_anything_else() {
        let h = KvHash { hash: 3_735_928_559, compact_revision: 41 };
        assert_eq!(h.to_annotation(), "3735928559/41");
        assert_eq!(KvHash::from_annotation("3735928559/41"), Some(h));
        for bad in ["", "3735928559", "x/41", "3735928559/", "99999999999/1", "1/2/3"] {
            assert_eq!(KvHash::from_annotation(bad), None, "{bad}");
        }
    }

    #[test]
    fn k3s_string_maps_are_extra_metadata() {
        let parsed = parse_stored_metadata(br#"{"rancher":"yes","x":"1"}"#, "any");
        let expected = BTreeMap::from([("rancher".to_string(), "yes".to_string()), ("x".to_string(), "1".to_string())]);
        assert_eq!(parsed, Ok(StoredMetadata::ExtraMetadata(expected)));
        assert_eq!(parse_stored_metadata(b"{}", "any"), Ok(StoredMetadata::ExtraMetadata(BTreeMap::new())));
    }

    #[test]
    fn hostile_metadata_is_refused() {
        assert!(matches!(
            parse_stored_metadata(&vec![b' '; MAX_METADATA_BYTES + 1], "a"),
            Err(MetadataError::TooLarge(_))
        ));
        assert!(matches!(parse_stored_metadata(b"not json", "a"), Err(MetadataError::NotJson(_))));
        assert!(matches!(parse_stored_metadata(b"[1,2]", "a"), Err(MetadataError::UnknownFormat)));
        assert!(matches!(parse_stored_metadata(br#"{"a":{"b":1}}"#, "a"), Err(MetadataError::UnknownFormat)));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(parse_stored_metadata(deep.as_bytes(), "a"), Err(MetadataError::NotJson(_))));
        let lying = doc("other-name").to_json();
        assert!(matches!(parse_stored_metadata(&lying, "a"), Err(MetadataError::NameMismatch { .. })));
        let bad = br#"{"apiVersion":"etcdsnap.io/v1","name":"a"}"#;
        assert!(matches!(parse_stored_metadata(bad, "a"), Err(MetadataError::InvalidDocument(_))));
    }
}
