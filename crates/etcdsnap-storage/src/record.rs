//! The snapshot record: everything known about one stored copy of a snapshot (or a failed
//! attempt at one), and its conversion to and from the metadata document stored beside it. The
//! Kubernetes crate turns the same record into an `ETCDSnapshotFile` and a legacy ConfigMap
//! entry, so that a record read back from any of them is the same record.

use etcdsnap_api::consts::S3_STORAGE_NODE;
use etcdsnap_api::metadata::{METADATA_API_VERSION, METADATA_KIND};
use etcdsnap_api::{
    Compression, CrNameInput, DrillResult, ETCDSnapshotS3, EtcdInfo, MetadataDocument, Program, S3Lock, Sealed,
    SnapshotName, StorageKind, TokenHash, configmap_key, cr_name,
};
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
    /// Sealed with age: to which recipients, and the restore kit beside it.
    pub sealed: Option<Sealed>,
    /// sha256 of the API server's EncryptionConfiguration at save time.
    pub encryption_config_sha256: Option<String>,
    /// The last restore drill of this copy.
    pub drill: Option<DrillResult>,
    pub metadata_source: MetadataSource,
    /// S3 copies: the program whose names the object's user metadata carries, when known.
    pub program: Option<Program>,
    /// S3 copies: the object's user metadata does not name its uploader under the cluster's
    /// program (it was uploaded under the other program's names), so the server names its
    /// resource after `s3` rather than the uploader, and so does etcdsnap.
    pub uploader_unnamed: bool,
    /// S3 copies: the Object Lock etcdsnap put on the snapshot's object when it wrote it; None
    /// when it put none (the bucket's default retention is not recorded) or it is not known.
    pub s3_lock: Option<S3Lock>,
}

impl SnapshotRecord {
    /// A ready copy with only what a store sees for itself: its name, where it is, who took it,
    /// when and how large it is. Everything else (hash, etcd facts, token hash, extra metadata)
    /// is filled in from a metadata document, a save, or a resource.
    pub fn stored(
        name: SnapshotName,
        storage: StorageKind,
        node_name: impl Into<String>,
        location: impl Into<String>,
        created_at: jiff::Timestamp,
        size: u64,
    ) -> SnapshotRecord {
        SnapshotRecord {
            compression: name.compression(),
            name,
            storage,
            node_name: node_name.into(),
            location: location.into(),
            created_at,
            size,
            outcome: Outcome::Ready,
            sha256: None,
            etcd: None,
            token_hash: None,
            cluster_id: None,
            s3: None,
            extra_metadata: None,
            sealed: None,
            encryption_config_sha256: None,
            drill: None,
            metadata_source: MetadataSource::None,
            program: None,
            uploader_unnamed: false,
            s3_lock: None,
        }
    }

    /// A failed attempt, shaped like K3s's: no location, size 0, the error's message.
    pub fn failed(
        name: SnapshotName,
        storage: StorageKind,
        node_name: impl Into<String>,
        created_at: jiff::Timestamp,
        message: impl Into<String>,
    ) -> SnapshotRecord {
        SnapshotRecord {
            outcome: Outcome::Failed { message: message.into() },
            ..SnapshotRecord::stored(name, storage, node_name, "", created_at, 0)
        }
    }

    /// When a snapshot was taken: the time in its name (K3s's rule), else `fallback` (a file's
    /// modification time, an object's LastModified), rounded to whole seconds.
    pub fn creation_time(name: &SnapshotName, fallback: jiff::Timestamp) -> jiff::Timestamp {
        name.timestamp()
            .and_then(|s| jiff::Timestamp::from_second(s).ok())
            .unwrap_or_else(|| fallback.round(jiff::Unit::Second).unwrap_or(fallback))
    }

    pub fn is_ready(&self) -> bool {
        self.outcome == Outcome::Ready
    }

    /// K3s's object name for this record.
    pub fn cr_name(&self) -> String {
        cr_name(CrNameInput {
            name: self.name.as_str(),
            storage: self.storage,
            node_name: self.resource_node(),
            location: &self.location,
            created_unix: self.created_at.as_second(),
        })
    }

    /// K3s's legacy ConfigMap key, also the identity used to match storage to resources.
    pub fn key(&self) -> String {
        configmap_key(self.name.as_str(), self.storage)
    }

    /// The node K3s names the resource after and records in `spec.nodeName` (`s3` for S3
    /// copies when empty): the node that took it, unless the server cannot see the uploader.
    pub fn resource_node(&self) -> &str {
        if self.uploader_unnamed { "" } else { &self.node_name }
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
            sealed: self.sealed.clone(),
            encryption_config_sha256: self.encryption_config_sha256.clone(),
            drill: self.drill.clone(),
            program: self.program,
            s3_lock: self.s3_lock,
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
        self.sealed = doc.sealed;
        self.encryption_config_sha256 = doc.encryption_config_sha256;
        self.drill = doc.drill;
        self.program = doc.program;
        self.s3_lock = doc.s3_lock;
        self.metadata_source = MetadataSource::Document;
    }
}

/// A minimal ready local record of 100 bytes taken at the time in its name, for tests.
#[cfg(test)]
pub(crate) fn test_record(name: &str, node: &str) -> SnapshotRecord {
    let name = SnapshotName::parse(name).unwrap();
    let created = SnapshotRecord::creation_time(&name, jiff::Timestamp::UNIX_EPOCH);
    let location = format!("file:///snapshots/{name}");
    SnapshotRecord::stored(name, StorageKind::Local, node, location, created, 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip_through_records() {
        let mut r = test_record("a-n-1700000000.zst", "n");
        r.sha256 = Some("cd".repeat(32));
        r.etcd = Some(EtcdInfo { revision: 9, version: "3.6.16".into(), ..Default::default() });
        r.extra_metadata = Some(BTreeMap::from([("k".into(), "v".into())]));
        r.s3_lock =
            Some(S3Lock { until: jiff::Timestamp::from_second(1_700_007_200).unwrap(), mode: Default::default() });
        let doc = r.to_document();
        let mut bare = test_record("a-n-1700000000.zst", "");
        bare.apply_document(doc);
        assert_eq!(bare.node_name, "n");
        assert_eq!(bare.sha256, r.sha256);
        assert_eq!(bare.etcd, r.etcd);
        assert_eq!(bare.extra_metadata, r.extra_metadata);
        assert_eq!(bare.s3_lock, r.s3_lock);
        assert_eq!(bare.metadata_source, MetadataSource::Document);
    }

    #[test]
    fn constructors_take_what_the_name_says() {
        let name = SnapshotName::parse("s-n-1700000000.zip").unwrap();
        let r = SnapshotRecord::stored(
            name.clone(),
            StorageKind::S3,
            "n",
            "s3://b/s-n-1700000000.zip",
            jiff::Timestamp::UNIX_EPOCH,
            5,
        );
        assert_eq!(r.compression, Compression::Zip);
        assert!(r.is_ready());
        let f = SnapshotRecord::failed(name.clone(), StorageKind::Local, "n", jiff::Timestamp::UNIX_EPOCH, "boom");
        assert_eq!((f.size, f.location.as_str(), f.outcome), (0, "", Outcome::Failed { message: "boom".into() }));
        let fallback = "2024-01-01T00:00:00.6Z".parse().unwrap();
        assert_eq!(SnapshotRecord::creation_time(&name, fallback).as_second(), 1_700_000_000);
        let unnamed = SnapshotName::parse("backup.db").unwrap();
        assert_eq!(SnapshotRecord::creation_time(&unnamed, fallback).to_string(), "2024-01-01T00:00:01Z");
    }
}
