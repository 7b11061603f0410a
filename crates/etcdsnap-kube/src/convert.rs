//! A snapshot record as Kubernetes sees it: the `ETCDSnapshotFile` K3s (or RKE2: the label and
//! the token-hash annotation follow the [`Program`]) would write for it, plus etcdsnap's
//! `etcdsnap.io/` annotations; the record rebuilt from any such resource (K3s's or ours); and
//! the value K3s keeps for it in the legacy ConfigMap.

use etcdsnap_api::consts::{
    ANNOTATION_COMPRESSION, ANNOTATION_DRILL, ANNOTATION_DRILLED_AT, ANNOTATION_ETCD_HASHKV, ANNOTATION_ETCD_HISTORY,
    ANNOTATION_ETCD_MEMBERS, ANNOTATION_ETCD_REVISION, ANNOTATION_ETCD_VERSION, ANNOTATION_MANAGED_BY,
    ANNOTATION_S3_LOCKED_UNTIL, ANNOTATION_SHA256, S3_STORAGE_NODE,
};
use etcdsnap_api::{
    Compression, DrillResult, ETCDSnapshotError, ETCDSnapshotFile, ETCDSnapshotSpec, ETCDSnapshotStatus, EtcdInfo,
    KvHash, LegacyEntry, LegacyS3Config, Program, S3Lock, SnapshotName, StorageKind, TokenHash,
};
use etcdsnap_storage::{MetadataSource, Outcome, SnapshotRecord};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ObjectMeta;
use std::collections::BTreeMap;

/// Conversions between [`SnapshotRecord`] and its Kubernetes forms.
pub trait RecordResource: Sized {
    /// The `ETCDSnapshotFile` for this record, labelled and annotated with `program`'s names.
    fn to_resource(&self, program: Program) -> ETCDSnapshotFile;
    /// Rebuilds a record from a resource, reading `program`'s names. None if the snapshot name
    /// is not a valid file name (such a resource is never matched to storage).
    fn from_resource(cr: &ETCDSnapshotFile, program: Program) -> Option<Self>;
    /// The value K3s keeps for this snapshot in the legacy ConfigMap.
    fn to_legacy_entry(&self) -> LegacyEntry;
}

impl RecordResource for SnapshotRecord {
    /// The `ETCDSnapshotFile` for this record, as K3s would write it plus etcdsnap's annotations.
    fn to_resource(&self, program: Program) -> ETCDSnapshotFile {
        let mut labels = BTreeMap::new();
        labels.insert(program.label_storage_node().to_string(), self.storage_node().to_string());
        let mut annotations = BTreeMap::new();
        if let Some(hash) = &self.token_hash {
            annotations.insert(program.annotation_token_hash().to_string(), hash.to_string());
        }
        if let Some(sha) = &self.sha256 {
            annotations.insert(ANNOTATION_SHA256.to_string(), sha.clone());
        }
        if let Some(etcd) = &self.etcd {
            annotations.insert(ANNOTATION_ETCD_REVISION.to_string(), etcd.revision.to_string());
            annotations.insert(ANNOTATION_ETCD_VERSION.to_string(), etcd.version.clone());
            if let Some(hash) = &etcd.hash_kv {
                annotations.insert(ANNOTATION_ETCD_HASHKV.to_string(), hash.to_annotation());
            }
            if let Some(members) = &etcd.members
                && let Ok(json) = serde_json::to_string(members)
            {
                annotations.insert(ANNOTATION_ETCD_MEMBERS.to_string(), json);
            }
            if let Some(history) = &etcd.history {
                annotations.insert(ANNOTATION_ETCD_HISTORY.to_string(), history.clone());
            }
        }
        if self.is_ready() {
            annotations.insert(ANNOTATION_COMPRESSION.to_string(), self.compression.to_string());
        }
        if let Some(drill) = &self.drill {
            annotations.insert(ANNOTATION_DRILLED_AT.to_string(), drill.at.to_string());
            annotations.insert(ANNOTATION_DRILL.to_string(), drill.result.clone());
        }
        if let Some(lock) = &self.s3_lock {
            annotations.insert(ANNOTATION_S3_LOCKED_UNTIL.to_string(), lock.to_annotation());
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
                node_name: match self.resource_node() {
                    "" => S3_STORAGE_NODE.into(),
                    node => node.to_string(),
                },
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
    fn from_resource(cr: &ETCDSnapshotFile, program: Program) -> Option<SnapshotRecord> {
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
            hash_kv: annotations.get(ANNOTATION_ETCD_HASHKV).and_then(|h| KvHash::from_annotation(h)),
            members: annotations.get(ANNOTATION_ETCD_MEMBERS).and_then(|m| serde_json::from_str(m).ok()),
            history: annotations.get(ANNOTATION_ETCD_HISTORY).cloned(),
            ..Default::default()
        });
        let node_name = match (storage, cr.spec.node_name.as_str()) {
            (StorageKind::S3, S3_STORAGE_NODE) => String::new(),
            (_, n) => n.to_string(),
        };
        let stored = SnapshotRecord::stored(name, storage, node_name, cr.spec.location.clone(), created_at, size);
        Some(SnapshotRecord {
            outcome,
            sha256: annotations.get(ANNOTATION_SHA256).cloned(),
            etcd,
            token_hash: annotations.get(program.annotation_token_hash()).and_then(|h| TokenHash::parse_recorded(h)),
            s3: cr.spec.s3.clone(),
            extra_metadata: cr.spec.metadata.clone(),
            drill: drill_of(&annotations),
            s3_lock: annotations.get(ANNOTATION_S3_LOCKED_UNTIL).and_then(|l| S3Lock::from_annotation(l)),
            metadata_source: MetadataSource::Resource,
            ..stored
        })
    }

    /// The value K3s keeps for this snapshot in the legacy ConfigMap.
    fn to_legacy_entry(&self) -> LegacyEntry {
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

/// The drill annotations read back (both, or none).
fn drill_of(annotations: &BTreeMap<String, String>) -> Option<DrillResult> {
    let at = annotations.get(ANNOTATION_DRILLED_AT)?.parse().ok()?;
    Some(DrillResult { at, result: annotations.get(ANNOTATION_DRILL)?.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_record;
    use etcdsnap_api::{ETCDSnapshotS3, TokenHash};

    const K3S: Program = Program::K3s;
    const LABEL_STORAGE_NODE: &str = "etcd.k3s.cattle.io/snapshot-storage-node";
    const ANNOTATION_TOKEN_HASH: &str = "etcd.k3s.cattle.io/snapshot-token-hash";
    use etcdsnap_storage::Outcome;

    #[test]
    fn resources_follow_k3s_rules() {
        let mut r = test_record("on-demand-k3s-server-1-1730308816", "k3s-server-1");
        r.location = "file:///var/lib/rancher/k3s/server/db/snapshots/on-demand-k3s-server-1-1730308816".into();
        r.size = 2891808;
        r.token_hash = TokenHash::parse_recorded("652c7dc687d9");
        r.sha256 = Some("ab".repeat(32));
        let cr = r.to_resource(K3S);
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
        let back = SnapshotRecord::from_resource(&cr, K3S).unwrap();
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
        let cr = r.to_resource(K3S);
        assert_eq!(cr.metadata.name.as_deref(), Some("s3-on-demand-k3s-server-1-1730308816-3b38ed"));
        assert_eq!(cr.metadata.labels.unwrap_or_default().get(LABEL_STORAGE_NODE).map(String::as_str), Some("s3"));
        assert_eq!(cr.spec.node_name, "k3s-server-1");
        r.node_name.clear();
        let cr = r.to_resource(K3S);
        assert_eq!(cr.metadata.name.as_deref(), Some("s3-on-demand-k3s-server-1-1730308816-79b15c"));
        assert_eq!(cr.spec.node_name, "s3");
        let back = SnapshotRecord::from_resource(&cr, K3S).unwrap();
        assert_eq!(back.node_name, "");
        assert_eq!(back.cr_name(), "s3-on-demand-k3s-server-1-1730308816-79b15c");
    }

    #[test]
    fn s3_locks_round_trip_through_the_annotation() {
        let mut r = test_record("on-demand-k3s-server-1-1730308816", "k3s-server-1");
        r.storage = StorageKind::S3;
        r.location = "s3://etcd/k3s-test/on-demand-k3s-server-1-1730308816".into();
        r.s3 = Some(ETCDSnapshotS3 { bucket: Some("etcd".into()), ..Default::default() });
        let unlocked = r.to_resource(K3S);
        assert!(!unlocked.metadata.annotations.unwrap_or_default().contains_key(ANNOTATION_S3_LOCKED_UNTIL));
        assert_eq!(SnapshotRecord::from_resource(&r.to_resource(K3S), K3S).unwrap().s3_lock, None);

        let until = "2026-12-07T08:00:00Z".parse().unwrap();
        r.s3_lock = Some(S3Lock { until, mode: etcdsnap_api::LockMode::Governance });
        let cr = r.to_resource(K3S);
        let ann = cr.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get(ANNOTATION_S3_LOCKED_UNTIL).map(String::as_str), Some("2026-12-07T08:00:00Z governance"));
        assert_eq!(SnapshotRecord::from_resource(&cr, K3S).unwrap().s3_lock, r.s3_lock);
        // An annotation that is not etcdsnap's form is no lock.
        let mut edited = cr.clone();
        edited.metadata.annotations.get_or_insert_default().insert(ANNOTATION_S3_LOCKED_UNTIL.into(), "soon".into());
        assert_eq!(SnapshotRecord::from_resource(&edited, K3S).unwrap().s3_lock, None);
    }

    #[test]
    fn failures_become_failed_resources_and_entries() {
        let mut r = test_record("etcd-snapshot-server1-1700000000", "server1");
        r.location.clear();
        r.outcome = Outcome::Failed { message: "etcd unreachable".into() };
        let cr = r.to_resource(K3S);
        assert_eq!(cr.metadata.name.as_deref(), Some("local-etcd-snapshot-server1-1700000000-7f409b"));
        let status = cr.status.clone().unwrap_or_default();
        assert_eq!(status.ready_to_use, Some(false));
        assert_eq!(status.size, Some(Quantity("0".into())));
        assert_eq!(status.error.and_then(|e| e.message).as_deref(), Some("etcd unreachable"));
        let back = SnapshotRecord::from_resource(&cr, K3S).unwrap();
        assert_eq!(back.outcome, r.outcome);
        let entry = r.to_legacy_entry();
        assert_eq!(entry.status, "failed");
        assert_eq!(entry.message, LegacyEntry::encode_message("etcd unreachable"));
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

    #[test]
    fn rke2_resources_carry_rke2_s_label_and_annotation_only() {
        let mut r = test_record("on-demand-rke2-server-1-1730308816", "rke2-server-1");
        r.token_hash = TokenHash::parse_recorded("652c7dc687d9");
        let cr = r.to_resource(Program::Rke2);
        let labels = cr.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.keys().collect::<Vec<_>>(),
            ["etcd.rke2.cattle.io/snapshot-storage-node"],
            "no K3s label on an RKE2 cluster"
        );
        assert_eq!(labels.values().next().map(String::as_str), Some("rke2-server-1"));
        let ann = cr.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get("etcd.rke2.cattle.io/snapshot-token-hash").map(String::as_str), Some("652c7dc687d9"));
        assert!(!ann.contains_key(ANNOTATION_TOKEN_HASH));
        // Read back under RKE2's names it is the same record; under K3s's the hash is unknown.
        assert_eq!(SnapshotRecord::from_resource(&cr, Program::Rke2).unwrap().token_hash, r.token_hash);
        assert_eq!(SnapshotRecord::from_resource(&cr, K3S).unwrap().token_hash, None);
    }

    #[test]
    fn an_upload_the_server_cannot_attribute_is_named_after_s3() {
        let mut r = test_record("on-demand-k3s-server-1-1730308816", "k3s-server-1");
        r.storage = StorageKind::S3;
        r.location = "s3://etcd/k3s-test/on-demand-k3s-server-1-1730308816".into();
        r.s3 = Some(ETCDSnapshotS3 { bucket: Some("etcd".into()), ..Default::default() });
        r.uploader_unnamed = true;
        let cr = r.to_resource(Program::Rke2);
        assert_eq!(cr.metadata.name.as_deref(), Some("s3-on-demand-k3s-server-1-1730308816-79b15c"));
        assert_eq!(cr.spec.node_name, "s3");
        assert_eq!(r.node_name, "k3s-server-1", "the record still knows who took it");
    }
}
