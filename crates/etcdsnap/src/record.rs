//! The snapshot record: everything known about one stored copy of a snapshot, and its
//! conversions to the metadata document, the `ETCDSnapshotFile` resource and the legacy
//! ConfigMap entry. One model, so that a record read back from any of them is the same record.

use etcdsnap_api::consts::{
    ANNOTATION_COMPRESSION, ANNOTATION_ETCD_REVISION, ANNOTATION_ETCD_VERSION, ANNOTATION_MANAGED_BY,
    ANNOTATION_SHA256, ANNOTATION_TOKEN_HASH, LABEL_STORAGE_NODE, S3_STORAGE_NODE,
};
use etcdsnap_api::metadata::{METADATA_API_VERSION, METADATA_KIND};
use etcdsnap_api::{
    Compression, CrNameInput, ETCDSnapshotError, ETCDSnapshotFile, ETCDSnapshotS3, ETCDSnapshotSpec,
    ETCDSnapshotStatus, EtcdInfo, LegacyEntry, LegacyS3Config, MetadataDocument, SnapshotName, StorageKind, TokenHash,
    configmap_key, cr_name,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use std::collections::BTreeMap;

/// Whether the snapshot can be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ready,
    /// The save or upload failed; the message is free of secrets.
    Failed {
        message: String,
    },
}

/// Where the record's details came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MetadataSource {
    /// etcdsnap's metadata document.
    Document,
    /// K3s's flat extra-metadata map.
    K3sMap,
    /// No metadata document (a K3s snapshot, or one whose document was lost).
    #[default]
    None,
    /// A document existed but was refused; the reason was reported as a warning.
    Rejected,
    /// Rebuilt from a custom resource.
    Resource,
}

/// One stored copy of a snapshot (a local file or an S3 object), or a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub name: SnapshotName,
    pub storage: StorageKind,
    /// Node that took the snapshot; empty when unknown (S3 objects from old K3s releases).
    pub node_name: String,
    /// `file:///...` or `s3://bucket/key`; empty for failed local saves.
    pub location: String,
    /// When the snapshot was taken, whole seconds.
    pub created_at: jiff::Timestamp,
    /// Stored bytes (compressed size when compressed); 0 for failures.
    pub size: u64,
    pub outcome: Outcome,
    pub compression: Compression,
    /// sha256 of the stored bytes, when recorded.
    pub sha256: Option<String>,
    pub etcd: Option<EtcdInfo>,
    pub token_hash: Option<TokenHash>,
    pub cluster_id: Option<String>,
    /// S3 location details (never credentials) for S3 records.
    pub s3: Option<ETCDSnapshotS3>,
    pub extra_metadata: Option<BTreeMap<String, String>>,
    pub metadata_source: MetadataSource,
}

impl SnapshotRecord {
    pub fn is_ready(&self) -> bool {
        self.outcome == Outcome::Ready
    }

    /// K3s's object name for this record.
    pub fn cr_name(&self) -> String {
        cr_name(CrNameInput {
            name: self.name.as_str(),
            storage: self.storage,
            node_name: &self.node_name,
            location: &self.location,
            created_unix: self.created_at.as_second(),
        })
    }

    /// K3s's legacy ConfigMap key, also the identity used to match storage to resources.
    pub fn key(&self) -> String {
        configmap_key(self.name.as_str(), self.storage)
    }

    /// Value of the storage-node label: the node for local copies, `s3` for S3 copies.
    pub fn storage_node(&self) -> &str {
        match self.storage {
            StorageKind::Local => &self.node_name,
            StorageKind::S3 => S3_STORAGE_NODE,
        }
    }

    /// The metadata document describing this record.
    pub fn to_document(&self) -> MetadataDocument {
        MetadataDocument {
            api_version: METADATA_API_VERSION.into(),
            kind: METADATA_KIND.into(),
            name: self.name.to_string(),
            node_name: self.node_name.clone(),
            location: self.location.clone(),
            created_at: self.created_at,
            size: self.size,
            sha256: self.sha256.clone().unwrap_or_default(),
            compression: self.compression,
            etcd: self.etcd.clone(),
            token_hash: self.token_hash.clone(),
            cluster_id: self.cluster_id.clone(),
            s3: self.s3.clone(),
            extra_metadata: self.extra_metadata.clone(),
        }
    }

    /// Fills this record's details from a metadata document found beside it. What the store
    /// itself observed (location, size, storage) stays authoritative.
    pub fn apply_document(&mut self, doc: MetadataDocument) {
        if !doc.node_name.is_empty() {
            self.node_name = doc.node_name;
        }
        self.created_at = doc.created_at;
        self.sha256 = (!doc.sha256.is_empty()).then_some(doc.sha256);
        self.compression = doc.compression;
        self.etcd = doc.etcd;
        self.token_hash = doc.token_hash.or(self.token_hash.take());
        self.cluster_id = doc.cluster_id.or(self.cluster_id.take());
        self.extra_metadata = doc.extra_metadata;
        self.metadata_source = MetadataSource::Document;
    }

    /// The `ETCDSnapshotFile` for this record, as K3s would write it plus etcdsnap's annotations.
    pub fn to_resource(&self) -> ETCDSnapshotFile {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_STORAGE_NODE.to_string(), self.storage_node().to_string());
        let mut annotations = BTreeMap::new();
        if let Some(hash) = &self.token_hash {
            annotations.insert(ANNOTATION_TOKEN_HASH.to_string(), hash.to_string());
        }
        if let Some(sha) = &self.sha256 {
            annotations.insert(ANNOTATION_SHA256.to_string(), sha.clone());
        }
        if let Some(etcd) = &self.etcd {
            annotations.insert(ANNOTATION_ETCD_REVISION.to_string(), etcd.revision.to_string());
            annotations.insert(ANNOTATION_ETCD_VERSION.to_string(), etcd.version.clone());
        }
        if self.is_ready() {
            annotations.insert(ANNOTATION_COMPRESSION.to_string(), self.compression.to_string());
        }
        annotations.insert(ANNOTATION_MANAGED_BY.to_string(), format!("etcdsnap/{}", env!("CARGO_PKG_VERSION")));
        let created = Time(self.created_at);
        let (ready, error, size) = match &self.outcome {
            Outcome::Ready => (true, None, self.size),
            Outcome::Failed { message } => {
                (false, Some(ETCDSnapshotError { time: Some(created.clone()), message: Some(message.clone()) }), 0)
            }
        };
        ETCDSnapshotFile {
            metadata: ObjectMeta {
                name: Some(self.cr_name()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: ETCDSnapshotSpec {
                snapshot_name: self.name.to_string(),
                node_name: if self.node_name.is_empty() { S3_STORAGE_NODE.into() } else { self.node_name.clone() },
                location: self.location.clone(),
                metadata: self.extra_metadata.clone().filter(|m| !m.is_empty()),
                s3: self.s3.clone(),
            },
            status: Some(ETCDSnapshotStatus {
                size: Some(Quantity(size.to_string())),
                creation_time: Some(created),
                ready_to_use: Some(ready),
                error,
            }),
        }
    }

    /// Rebuilds a record from a resource (K3s's or ours). None if the snapshot name is not a
    /// valid file name (such a resource is never matched to storage).
    pub fn from_resource(cr: &ETCDSnapshotFile) -> Option<SnapshotRecord> {
        let name = SnapshotName::parse(&cr.spec.snapshot_name).ok()?;
        let storage = if cr.spec.s3.is_some() { StorageKind::S3 } else { StorageKind::Local };
        let status = cr.status.clone().unwrap_or_default();
        let annotations = cr.metadata.annotations.clone().unwrap_or_default();
        let error_time = status.error.as_ref().and_then(|e| e.time.clone());
        let created_at = error_time
            .or(status.creation_time.clone())
            .map(|t| t.0)
            .or_else(|| name.timestamp().and_then(|s| jiff::Timestamp::from_second(s).ok()))
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let outcome = if status.ready_to_use == Some(true) {
            Outcome::Ready
        } else {
            let message = status.error.and_then(|e| e.message).unwrap_or_else(|| "etcd snapshot failed".into());
            Outcome::Failed { message }
        };
        let size = status.size.and_then(|q| q.0.parse::<u64>().ok()).unwrap_or_default();
        let revision = annotations.get(ANNOTATION_ETCD_REVISION).and_then(|r| r.parse().ok());
        let etcd = revision.map(|revision| EtcdInfo {
            revision,
            version: annotations.get(ANNOTATION_ETCD_VERSION).cloned().unwrap_or_default(),
            ..Default::default()
        });
        let node_name = match (storage, cr.spec.node_name.as_str()) {
            (StorageKind::S3, S3_STORAGE_NODE) => String::new(),
            (_, n) => n.to_string(),
        };
        Some(SnapshotRecord {
            compression: name.compression(),
            name,
            storage,
            node_name,
            location: cr.spec.location.clone(),
            created_at,
            size,
            outcome,
            sha256: annotations.get(ANNOTATION_SHA256).cloned(),
            etcd,
            token_hash: annotations.get(ANNOTATION_TOKEN_HASH).and_then(|h| TokenHash::parse_recorded(h)),
            cluster_id: None,
            s3: cr.spec.s3.clone(),
            extra_metadata: cr.spec.metadata.clone(),
            metadata_source: MetadataSource::Resource,
        })
    }

    /// The value K3s keeps for this snapshot in the legacy ConfigMap.
    pub fn to_legacy_entry(&self) -> LegacyEntry {
        let (status, message, size) = match &self.outcome {
            Outcome::Ready => ("successful", String::new(), self.size as i64),
            Outcome::Failed { message } => ("failed", LegacyEntry::encode_message(message), 0),
        };
        LegacyEntry {
            name: self.name.to_string(),
            location: self.location.clone(),
            metadata: self.extra_metadata.as_ref().map(LegacyEntry::encode_metadata).unwrap_or_default(),
            message,
            node_name: self.storage_node().to_string(),
            created_at: jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", self.created_at).unwrap_or_default(),
            size,
            status: status.into(),
            s3_config: self.s3.as_ref().map(|s3| LegacyS3Config {
                endpoint: s3.endpoint.clone().unwrap_or_default(),
                endpoint_ca: s3.endpoint_ca.clone().unwrap_or_default(),
                skip_ssl_verify: s3.skip_ssl_verify.unwrap_or_default(),
                bucket: s3.bucket.clone().unwrap_or_default(),
                region: s3.region.clone().unwrap_or_default(),
                folder: s3.prefix.clone().unwrap_or_default(),
                insecure: s3.insecure.unwrap_or_default(),
                timeout: "0s".into(),
            }),
            compressed: self.compression == Compression::Zip,
        }
    }
}

/// A minimal ready local record, for tests.
#[cfg(test)]
pub(crate) fn test_record(name: &str, node: &str) -> SnapshotRecord {
    let name = SnapshotName::parse(name).unwrap_or_else(|e| panic!("{e}"));
    SnapshotRecord {
        created_at: name.timestamp().and_then(|s| jiff::Timestamp::from_second(s).ok()).unwrap_or_default(),
        compression: name.compression(),
        location: format!("file:///snapshots/{name}"),
        name,
        storage: StorageKind::Local,
        node_name: node.into(),
        size: 100,
        outcome: Outcome::Ready,
        sha256: None,
        etcd: None,
        token_hash: None,
        cluster_id: None,
        s3: None,
        extra_metadata: None,
        metadata_source: MetadataSource::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_follow_k3s_rules() {
        let mut r = test_record("on-demand-k3s-server-1-1730308816", "k3s-server-1");
        r.location = "file:///var/lib/rancher/k3s/server/db/snapshots/on-demand-k3s-server-1-1730308816".into();
        r.size = 2891808;
        r.token_hash = TokenHash::parse_recorded("652c7dc687d9");
        r.sha256 = Some("ab".repeat(32));
        let cr = r.to_resource();
        assert_eq!(cr.metadata.name.as_deref(), Some("local-on-demand-k3s-server-1-1730308816-3e9290"));
        let labels = cr.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(LABEL_STORAGE_NODE).map(String::as_str), Some("k3s-server-1"));
        let ann = cr.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get(ANNOTATION_TOKEN_HASH).map(String::as_str), Some("652c7dc687d9"));
        let v = serde_json::to_value(&cr).unwrap_or_default();
        assert_eq!(v["status"]["size"], "2891808");
        assert_eq!(v["status"]["creationTime"], "2024-10-30T17:20:16Z");
        assert_eq!(v["status"]["readyToUse"], true);
        assert!(v["spec"].get("metadata").is_none());
        let back = SnapshotRecord::from_resource(&cr).unwrap_or_else(|| panic!("no record"));
        assert_eq!(back.cr_name(), r.cr_name());
        assert_eq!(back.token_hash, r.token_hash);
        assert_eq!(back.sha256, r.sha256);
        assert_eq!(back.size, r.size);
    }

    #[test]
    fn s3_records_use_the_s3_label_and_uploader_digest() {
        let mut r = test_record("on-demand-k3s-server-1-1730308816", "k3s-server-1");
        r.storage = StorageKind::S3;
        r.location = "s3://etcd/k3s-test/on-demand-k3s-server-1-1730308816".into();
        r.s3 =
            Some(ETCDSnapshotS3 { bucket: Some("etcd".into()), prefix: Some("k3s-test".into()), ..Default::default() });
        let cr = r.to_resource();
        assert_eq!(cr.metadata.name.as_deref(), Some("s3-on-demand-k3s-server-1-1730308816-3b38ed"));
        assert_eq!(cr.metadata.labels.unwrap_or_default().get(LABEL_STORAGE_NODE).map(String::as_str), Some("s3"));
        assert_eq!(cr.spec.node_name, "k3s-server-1");
        r.node_name.clear();
        let cr = r.to_resource();
        assert_eq!(cr.metadata.name.as_deref(), Some("s3-on-demand-k3s-server-1-1730308816-79b15c"));
        assert_eq!(cr.spec.node_name, "s3");
        let back = SnapshotRecord::from_resource(&cr).unwrap_or_else(|| panic!("no record"));
        assert_eq!(back.node_name, "");
        assert_eq!(back.cr_name(), "s3-on-demand-k3s-server-1-1730308816-79b15c");
    }

    #[test]
    fn failures_become_failed_resources_and_entries() {
        let mut r = test_record("etcd-snapshot-server1-1700000000", "server1");
        r.location.clear();
        r.outcome = Outcome::Failed { message: "etcd unreachable".into() };
        let cr = r.to_resource();
        assert_eq!(cr.metadata.name.as_deref(), Some("local-etcd-snapshot-server1-1700000000-7f409b"));
        let status = cr.status.clone().unwrap_or_default();
        assert_eq!(status.ready_to_use, Some(false));
        assert_eq!(status.size, Some(Quantity("0".into())));
        assert_eq!(status.error.and_then(|e| e.message).as_deref(), Some("etcd unreachable"));
        let back = SnapshotRecord::from_resource(&cr).unwrap_or_else(|| panic!("no record"));
        assert_eq!(back.outcome, r.outcome);
        let entry = r.to_legacy_entry();
        assert_eq!(entry.status, "failed");
        assert_eq!(entry.message, LegacyEntry::encode_message("etcd unreachable"));
    }

    #[test]
    fn documents_round_trip_through_records() {
        let mut r = test_record("a-n-1700000000.zst", "n");
        r.sha256 = Some("cd".repeat(32));
        r.etcd = Some(EtcdInfo { revision: 9, version: "3.6.16".into(), ..Default::default() });
        r.extra_metadata = Some(BTreeMap::from([("k".into(), "v".into())]));
        let doc = r.to_document();
        let mut bare = test_record("a-n-1700000000.zst", "");
        bare.apply_document(doc);
        assert_eq!(bare.node_name, "n");
        assert_eq!(bare.sha256, r.sha256);
        assert_eq!(bare.etcd, r.etcd);
        assert_eq!(bare.extra_metadata, r.extra_metadata);
        assert_eq!(bare.metadata_source, MetadataSource::Document);
    }

    #[test]
    fn legacy_entries_carry_extra_metadata() {
        let mut r = test_record("s-n-1730308816.zip", "n");
        r.extra_metadata = Some(BTreeMap::from([("rancher".into(), "x".into())]));
        let e = r.to_legacy_entry();
        assert!(e.compressed);
        assert_eq!(e.node_name, "n");
        assert_eq!(e.created_at, "2024-10-30T17:20:16Z");
        assert_eq!(e.extra_metadata(), r.extra_metadata);
    }
}
