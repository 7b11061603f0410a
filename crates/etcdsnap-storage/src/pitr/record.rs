//! The record stored beside each delta segment, and where both live.
//!
//! A segment is durable only once its record is stored too: the record carries the sha256 of the
//! segment's stored bytes, so a listing reads records alone and a restore checks each segment it
//! downloads against its record.
//!
//! Placement keeps segments invisible to K3s. Locally they live in `.etcdsnap-deltas/` beside the snapshot
//! directory, never in it (K3s takes every file there for a snapshot). In S3, K3s lists the
//! folder as a plain prefix, so `<folder>-deltas/` and `<folder>/anything/` are inside its
//! listing; it skips only objects whose parent directory is named `.metadata` (and reads such an
//! object as the metadata of the snapshot with the same basename, of which there is none here).
//! So every delta object's parent directory is `.metadata`:
//! `<folder>/.etcdsnap-deltas/<chain>/.metadata/<first>-<last>.seg.zst` and `….json`.

use serde::{Deserialize, Serialize};

/// Format version of [`SegmentRecord`] written: 2 since segments carry the keys' previous states
/// and lease observations (segment format 2). A record of format 1 describes a segment of
/// format 1; both are read.
pub const RECORD_FORMAT: u32 = 2;
/// The oldest record format still read.
const OLDEST_RECORD_FORMAT: u32 = 1;
pub use etcdsnap_api::consts::DELTAS_DIR;
/// The S3 parent directory name K3s's listing skips (and reads as snapshot metadata).
use etcdsnap_api::consts::METADATA_DIR as K3S_SKIPPED_PARENT;

/// What is known about one stored segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentRecord {
    pub format: u32,
    /// The chain: the name of the full snapshot the segments roll forward from.
    pub chain: String,
    /// That snapshot's revision.
    pub base_revision: i64,
    pub first_revision: i64,
    pub last_revision: i64,
    /// Unix milliseconds at which the first and last revisions were observed.
    pub first_observed_ms: i64,
    pub last_observed_ms: i64,
    pub revisions: u64,
    pub events: u64,
    /// sha256 (hex) and size of the stored (compressed) bytes.
    pub sha256: String,
    pub stored_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Set on the last segment of a chain the capture could not continue, with why (compacted
    /// revision, leader change, restart): the next revision is not in this chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_broken: Option<String>,
    /// The history the segment belongs to (`super::history`); None in records written before
    /// histories were recorded (the cluster's legacy history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<String>,
    /// The fingerprint of the puts at `last_revision` (`super::history::fingerprint`): what a
    /// capture checks a live etcd against before it continues the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// Why a record cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("delta record {name}: {source}")]
    Json { name: String, source: serde_json::Error },
    #[error("delta record {name}: {problem}")]
    Invalid { name: String, problem: String },
}

/// The largest segment read, as stored and once decompressed: segments are flushed at 8 MiB by
/// default, so anything larger is not one etcdsnap wrote.
pub const SEGMENT_LIMIT: u64 = 256 * 1024 * 1024;

impl SegmentRecord {
    /// Whether `stored` are the bytes this record describes; Err carries their sha256 (hex)
    /// when they are not.
    pub fn check_stored(&self, stored: &[u8]) -> Result<(), String> {
        use sha2::Digest as _;
        let found = hex::encode(sha2::Sha256::digest(stored));
        match found.eq_ignore_ascii_case(&self.sha256) {
            true => Ok(()),
            false => Err(found),
        }
    }

    /// The segment's file name within its chain: revisions zero-padded, so names sort by revision.
    pub fn segment_name(&self) -> String {
        format!("{:020}-{:020}.seg.zst", self.first_revision, self.last_revision)
    }

    pub fn record_name(&self) -> String {
        format!("{:020}-{:020}.json", self.first_revision, self.last_revision)
    }

    /// Reads a stored record, refusing one whose facts contradict each other (a hostile or
    /// damaged object must not make a restore replay the wrong revisions).
    pub fn parse(name: &str, bytes: &[u8]) -> Result<SegmentRecord, RecordError> {
        let record: SegmentRecord =
            serde_json::from_slice(bytes).map_err(|source| RecordError::Json { name: name.into(), source })?;
        record.check().map_err(|problem| RecordError::Invalid { name: name.into(), problem })?;
        Ok(record)
    }

    fn check(&self) -> Result<(), String> {
        if !(OLDEST_RECORD_FORMAT..=RECORD_FORMAT).contains(&self.format) {
            return Err(format!(
                "format {} (this etcdsnap reads {OLDEST_RECORD_FORMAT} to {RECORD_FORMAT})",
                self.format
            ));
        }
        if !crate::pitr::valid_chain_name(&self.chain) {
            return Err(format!("chain name {:?} is not a snapshot name", self.chain));
        }
        if self.first_revision <= self.base_revision || self.last_revision < self.first_revision {
            return Err(format!(
                "revisions {}..={} do not follow base revision {}",
                self.first_revision, self.last_revision, self.base_revision
            ));
        }
        if self.revisions == 0 || self.revisions > (self.last_revision - self.first_revision + 1) as u64 {
            return Err(format!("{} revisions in {}..={}", self.revisions, self.first_revision, self.last_revision));
        }
        if self.last_observed_ms < self.first_observed_ms {
            return Err("last revision observed before the first".into());
        }
        if let Some(h) = self.history.as_deref().filter(|h| !super::history::valid_id(h)) {
            return Err(format!("history {h:?} is not a history ID"));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256 is not 64 hex digits".into());
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A record is plain data: serializing it cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// The S3 key of a chain's object `file` under `folder` (K3s's folder, possibly empty).
pub fn s3_key(folder: &str, chain: &str, file: &str) -> String {
    format!("{}/{chain}/{K3S_SKIPPED_PARENT}/{file}", s3_prefix(folder))
}

/// Where every chain of `folder` lives in the bucket (no trailing slash).
pub fn s3_prefix(folder: &str) -> String {
    let folder = folder.trim_matches('/');
    if folder.is_empty() { DELTAS_DIR.to_string() } else { format!("{folder}/{DELTAS_DIR}") }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(chain: &str, base: i64, first: i64, last: i64, t0: i64, t1: i64) -> SegmentRecord {
        SegmentRecord {
            format: RECORD_FORMAT,
            chain: chain.into(),
            base_revision: base,
            first_revision: first,
            last_revision: last,
            first_observed_ms: t0,
            last_observed_ms: t1,
            revisions: (last - first + 1) as u64,
            events: (last - first + 1) as u64,
            sha256: "ab".repeat(32),
            stored_bytes: 100,
            cluster_id: None,
            chain_broken: None,
            history: None,
            fingerprint: None,
        }
    }

    #[test]
    fn a_record_reads_back_and_names_sort_by_revision() {
        let r = record("etcd-snapshot-node-a-1700000000", 10, 11, 99, 1, 2);
        assert_eq!(SegmentRecord::parse("r", &r.to_json()).unwrap(), r);
        let older = SegmentRecord { format: 1, ..r.clone() };
        assert_eq!(
            SegmentRecord::parse("r", &older.to_json()).unwrap(),
            older,
            "the previous release's records are read"
        );
        let later = record("etcd-snapshot-node-a-1700000000", 10, 100, 1000, 3, 4);
        assert!(r.segment_name() < later.segment_name());
        assert_eq!(r.segment_name(), "00000000000000000011-00000000000000000099.seg.zst");
    }

    #[test]
    fn hostile_records_are_refused() {
        let good = record("etcd-snapshot-node-a-1700000000", 10, 11, 20, 1, 2);
        let cases: Vec<(SegmentRecord, &str)> = vec![
            (SegmentRecord { format: 9, ..good.clone() }, "format 9"),
            (SegmentRecord { chain: "../../etc".into(), ..good.clone() }, "chain name"),
            (SegmentRecord { first_revision: 10, ..good.clone() }, "do not follow"),
            (SegmentRecord { last_revision: 5, ..good.clone() }, "do not follow"),
            (SegmentRecord { revisions: 11, ..good.clone() }, "11 revisions"),
            (SegmentRecord { last_observed_ms: 0, ..good.clone() }, "observed before"),
            (SegmentRecord { sha256: "zz".into(), ..good.clone() }, "sha256"),
            (SegmentRecord { history: Some("../x".into()), ..good.clone() }, "history"),
        ];
        for (bad, expected) in cases {
            let err = SegmentRecord::parse("rec-1", &bad.to_json()).unwrap_err().to_string();
            assert!(err.contains("rec-1") && err.contains(expected), "{err} (expected {expected})");
        }
        assert!(SegmentRecord::parse("rec-2", b"<html>").unwrap_err().to_string().contains("rec-2"));
    }

    /// K3s's S3 reading rule (design.md): an object is a snapshot unless its parent directory is
    /// `.metadata`; the folder is listed as a plain prefix.
    fn k3s_takes_for_a_snapshot(folder: &str, key: &str) -> bool {
        let in_listing = key.starts_with(folder);
        let parent = std::path::Path::new(key).parent().and_then(|p| p.file_name()).and_then(|n| n.to_str());
        in_listing && parent != Some(".metadata")
    }

    #[test]
    fn s3_delta_objects_are_never_snapshots_to_k3s() {
        let r = record("etcd-snapshot-node-a-1700000000", 10, 11, 20, 1, 2);
        for folder in ["", "snapshots", "snapshots/", "a/b"] {
            for file in [r.segment_name(), r.record_name()] {
                let key = s3_key(folder, &r.chain, &file);
                assert!(key.starts_with(folder.trim_end_matches('/')), "{key}");
                assert!(!k3s_takes_for_a_snapshot(folder.trim_end_matches('/'), &key), "{key}");
                assert!(!key.starts_with('/') && !key.contains("//"), "{key}");
            }
        }
    }
}
