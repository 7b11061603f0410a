//! Retention of point-in-time recovery's segments, run after snapshot retention: a segment can
//! only roll forward a full snapshot taken at or before its first revision, so once every kept
//! snapshot is newer than a segment's last revision, nothing can use it. Locally the segments
//! are judged against the local snapshots; in S3 against the S3 snapshots of any node (segments
//! are the cluster's, not a node's). Without any snapshot, nothing is removed.

use super::local::{LocalPitrError, base_of, dir_beside, read_all};
use super::record::SegmentRecord;
use crate::SnapshotRecord;
use crate::store::local::LocalStore;
use crate::store::s3::S3Store;
use crate::store::s3::pitr::PitrObject;
use std::path::Path;

/// The revision of the oldest snapshot a chain can start from (ready, with a recorded etcd
/// revision); None when there is none.
pub fn oldest_base_revision(snapshots: &[SnapshotRecord]) -> Option<i64> {
    snapshots.iter().filter_map(base_of).map(|b| b.revision).min()
}

/// Removes the local segments no kept local snapshot can use, logging what it did.
pub fn prune_local(local: &LocalStore, snapshots: &[SnapshotRecord]) {
    let Some(oldest) = oldest_base_revision(snapshots) else { return };
    match remove_older_than(&dir_beside(local.dir()), oldest) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(
                segments = removed.len(),
                before = oldest,
                "delta segments older than every snapshot removed"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "delta retention"),
    }
}

/// Retention: removes the segments (and their records) no retained snapshot can use, those
/// ending at or before `oldest_kept_revision`, the revision of the oldest full snapshot kept,
/// and chain directories left empty. Returns the records removed.
pub fn remove_older_than(deltas_dir: &Path, oldest_kept_revision: i64) -> Result<Vec<SegmentRecord>, LocalPitrError> {
    let (records, _) = read_all(deltas_dir);
    let mut removed = Vec::new();
    for r in records.into_iter().filter(|r| r.last_revision <= oldest_kept_revision) {
        let chain_dir = deltas_dir.join(&r.chain);
        // The record goes first: a segment without a record is already ignored.
        remove(&chain_dir.join(r.record_name()))?;
        remove(&chain_dir.join(r.segment_name()))?;
        removed.push(r);
    }
    if let Ok(chains) = std::fs::read_dir(deltas_dir) {
        for chain in chains.filter_map(Result::ok).map(|e| e.path()) {
            // Fails, harmlessly, unless the directory is empty.
            let _ = std::fs::remove_dir(&chain);
        }
    }
    Ok(removed)
}

fn remove(path: &Path) -> Result<(), LocalPitrError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(LocalPitrError::Remove { path: path.into(), source: e })
        }
        _ => Ok(()),
    }
}

/// Removes the S3 objects (segments and records) no S3 snapshot can use, logging what it did.
/// A failed listing or delete ends the pass with a warning; the next prune tries again.
pub async fn prune_s3(s3: &S3Store, snapshots: &[SnapshotRecord]) {
    let Some(oldest) = oldest_base_revision(snapshots) else {
        return tracing::debug!(snapshots = snapshots.len(), "S3 delta retention: no S3 snapshot with a revision");
    };
    let listed = match s3.list_pitr_objects().await {
        Ok(l) => l,
        Err(e) => return tracing::warn!(error = %e, "S3 delta retention skipped"),
    };
    tracing::debug!(oldest, objects = listed.len(), "S3 delta retention");
    let old = expired_objects(listed, oldest);
    let n = old.len();
    for o in old {
        if let Err(e) = s3.delete_pitr_object(&o.chain, &o.file).await {
            return tracing::warn!(error = %e, "S3 delta retention");
        }
    }
    if n > 0 {
        tracing::info!(objects = n, before = oldest, "S3 delta objects older than every S3 snapshot removed");
    }
}

/// The objects of `listed` ending at or before `oldest_kept_revision`, records first: a segment
/// without its record is never used, so a pass cut short leaves nothing half-usable.
pub fn expired_objects(listed: Vec<PitrObject>, oldest_kept_revision: i64) -> Vec<PitrObject> {
    let mut old: Vec<_> =
        listed.into_iter().filter(|o| o.last_revision().is_some_and(|l| l <= oldest_kept_revision)).collect();
    old.sort_by_key(|o| !o.is_record());
    old
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::local::tests::{CHAIN, store};
    use crate::pitr::record::tests::record;
    use crate::record::test_record;
    use etcdsnap_api::EtcdInfo;

    #[test]
    fn retention_removes_only_segments_no_kept_snapshot_can_use() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &record(CHAIN, 10, 11, 20, 0, 1));
        store(dir.path(), &record(CHAIN, 10, 21, 30, 2, 3));
        let other = "etcd-snapshot-node-a-1700000100";
        store(dir.path(), &record(other, 5, 6, 9, 0, 1));
        let removed = remove_older_than(dir.path(), 20).unwrap();
        let ranges: Vec<_> = removed.iter().map(|r| (r.first_revision, r.last_revision)).collect();
        assert_eq!(ranges, [(11, 20), (6, 9)]);
        let (left, _) = read_all(dir.path());
        assert_eq!(left.iter().map(|r| r.first_revision).collect::<Vec<_>>(), [21]);
        assert!(!dir.path().join(CHAIN).join(record(CHAIN, 10, 11, 20, 0, 1).segment_name()).exists());
        assert!(!dir.path().join(other).exists(), "an emptied chain directory is removed");
    }

    #[test]
    fn the_oldest_base_is_the_oldest_ready_snapshot_with_a_revision() {
        let with_revision = |name: &str, revision: i64| {
            let mut r = test_record(name, "n");
            r.etcd = Some(EtcdInfo { revision, ..Default::default() });
            r
        };
        let mut failed = with_revision("a-n-1700000001", 5);
        failed.outcome = crate::Outcome::Failed { message: "boom".into() };
        let snapshots = [with_revision("a-n-1700000002", 40), failed, test_record("a-n-1700000003", "n")];
        assert_eq!(oldest_base_revision(&snapshots), Some(40), "a failed save and a revision-less file are no bases");
        assert_eq!(oldest_base_revision(&snapshots[1..]), None, "without a base, nothing is removed");
    }

    #[test]
    fn expired_s3_objects_are_those_no_kept_snapshot_can_use_records_first() {
        let object = |file: &str| PitrObject { chain: CHAIN.into(), file: file.into(), size: 1 };
        let listed = vec![
            object("00000000000000000011-00000000000000000020.seg.zst"),
            object("00000000000000000011-00000000000000000020.json"),
            object("00000000000000000021-00000000000000000030.seg.zst"),
            object("00000000000000000021-00000000000000000030.json"),
            object("not-a-segment.json"),
        ];
        let files: Vec<String> = expired_objects(listed, 20).into_iter().map(|o| o.file).collect();
        assert_eq!(
            files,
            ["00000000000000000011-00000000000000000020.json", "00000000000000000011-00000000000000000020.seg.zst"]
        );
    }
}
