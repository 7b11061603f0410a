//! `restore --to-revision N | --to-time T`: which snapshot and segments reach the target
//! ([`plan_local`]), and the roll forward itself ([`roll_forward`]), whose result is a snapshot
//! file that the ordinary restore then installs with the operator's member settings (so the
//! pre-flight checks, etcdutl's options and the swap are the same as for any restore).
//!
//! Two clusters' snapshots in one directory never mix: the base and the segments must come from
//! the same etcd cluster (by cluster ID). When snapshots of several clusters could reach the
//! target, the restore is refused until one is chosen.

use super::replay::{self, Replay, ReplayError, ReplayReport};
use crate::restore::{PassError, SnapshotSource, verify_pass};
use etcdsnap_api::{Compression, KvHash};
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::pitr::{
    ChainSummary, ObservedBy, PlanError, ReplayPlan, Segment, SegmentRecord, Target, local, plan, segments_spanning,
    summarize,
};
use etcdsnap_storage::seal::Identity;
use etcdsnap_storage::store::local::LocalStore;
use etcdsnap_storage::store::{SnapshotStore, StoreError};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("no snapshot of cluster {0} in this snapshot directory")]
    NoSuchCluster(String),
    #[error(
        "snapshots of several etcd clusters ({}) can reach this target: choose one with --etcd-cluster-id",
        .0.join(", ")
    )]
    Ambiguous(Vec<String>),
    #[error("the base snapshot {name} cannot be read: {source}")]
    Base {
        name: String,
        #[source]
        source: PassError,
    },
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("cannot download the delta segments: {0}")]
    Download(String),
}

/// What a point-in-time restore will do, for the pre-flight report.
#[derive(Debug, Clone)]
pub struct PitrPlan {
    pub replay: ReplayPlan,
    /// The base snapshot's record.
    pub base: SnapshotRecord,
    pub cluster_id: Option<String>,
    /// The chains the segments come from, with their gaps.
    pub chains: Vec<ChainSummary>,
    pub deltas_dir: PathBuf,
    /// HashKV recorded by a snapshot taken at the target revision, when there is one.
    pub expected_hash: Option<KvHash>,
    /// Records that could not be used (shown; their revisions count as gaps).
    pub warnings: Vec<String>,
}

/// Plans a roll forward to `target` from the snapshots in `store` and the chains beside it
/// (`identity` opens sealed segments, read when a time target falls inside one).
pub async fn plan_local(
    store: &LocalStore,
    target: Target,
    cluster: Option<&str>,
    identity: Option<&Identity>,
) -> Result<PitrPlan, PitrError> {
    let listing = store.list().await?;
    let deltas_dir = local::dir_beside(store.dir());
    let (records, mut warnings) = local::read_all(&deltas_dir);
    warnings.extend(listing.warnings);
    let dir = deltas_dir.clone();
    let mut observed_by = move |r: &SegmentRecord, ms: i64| replay::last_observed_by(&dir, r, ms, identity);
    finish_plan(listing.records, records, warnings, deltas_dir, target, cluster, &mut observed_by)
}

/// The largest record and segment objects downloaded from S3.
const RECORD_LIMIT: u64 = 64 * 1024;
const SEGMENT_LIMIT: u64 = 256 * 1024 * 1024;

/// Plans a roll forward to `target` from the snapshots and chains in the S3 folder (a node whose
/// disk is gone): the records that can matter are downloaded and checked. The plan's segments
/// are fetched by [`fetch_segments`] once the pre-flight checks passed.
pub async fn plan_s3(
    store: &Arc<dyn SnapshotStore>,
    target: Target,
    cluster: Option<&str>,
    identity: Option<&Identity>,
) -> Result<PitrPlan, PitrError> {
    let s3 = store.as_s3().ok_or_else(|| PitrError::Download("the store is not S3".into()))?;
    let listing = store.list().await?;
    let mut warnings = listing.warnings;
    // Segments ending before every usable base never matter.
    let floor = listing.records.iter().filter_map(local::base_of).map(|b| b.revision).min().unwrap_or(i64::MAX);
    let objects = s3.list_pitr_objects().await?;
    let mut records = Vec::new();
    for o in objects.iter().filter(|o| o.is_record() && o.last_revision().is_some_and(|l| l > floor)) {
        let parsed = s3
            .get_pitr_object(&o.chain, &o.file, RECORD_LIMIT)
            .await
            .map_err(|e| e.to_string())
            .and_then(|bytes| SegmentRecord::parse(&o.file, &bytes).map_err(|e| e.to_string()));
        match parsed {
            Ok(r) if r.chain == o.chain && r.record_name() == o.file => records.push(r),
            Ok(_) => warnings.push(format!("delta record {}/{} does not match its key: skipped", o.chain, o.file)),
            Err(e) => warnings.push(format!("delta record {}/{}: {e}", o.chain, o.file)),
        }
    }
    // A time target inside a segment is mapped to a revision by the segment's own times.
    let mut spanning = HashMap::new();
    if let Target::Time(ms) = target {
        for r in segments_spanning(&records, ms) {
            let bytes = s3.get_pitr_object(&r.chain, &r.segment_name(), SEGMENT_LIMIT).await?;
            spanning.insert((r.chain.clone(), r.segment_name()), bytes);
        }
    }
    let mut observed_by = |r: &SegmentRecord, ms: i64| {
        let name = format!("{}/{}", r.chain, r.segment_name());
        let stored =
            spanning.get(&(r.chain.clone(), r.segment_name())).ok_or_else(|| format!("{name}: not downloaded"))?;
        observed_in(&name, stored, r, ms, identity)
    };
    finish_plan(listing.records, records, warnings, PathBuf::new(), target, cluster, &mut observed_by)
}

/// The last revision of a stored segment observed at or before `ms`, once its bytes match its
/// record (opened with `identity` when sealed).
fn observed_in(
    name: &str,
    stored: &[u8],
    record: &SegmentRecord,
    ms: i64,
    identity: Option<&Identity>,
) -> Result<Option<i64>, String> {
    let found = hex::encode(Sha256::digest(stored));
    if !found.eq_ignore_ascii_case(&record.sha256) {
        return Err(format!(
            "delta segment {name} is damaged: its sha256 is {found}, its record says {}",
            record.sha256
        ));
    }
    let segment = Segment::from_stored(name, stored, SEGMENT_LIMIT as usize, identity).map_err(|e| e.to_string())?;
    Ok(segment.last_revision_observed_by(ms))
}

/// Downloads the plan's segments from S3 into `dir/<chain>/` (a private directory), where the
/// replay reads them and checks each against its record.
pub async fn fetch_segments(store: &Arc<dyn SnapshotStore>, plan: &mut PitrPlan, dir: &Path) -> Result<(), PitrError> {
    let s3 = store.as_s3().ok_or_else(|| PitrError::Download("the store is not S3".into()))?;
    for r in &plan.replay.segments {
        let chain_dir = dir.join(&r.chain);
        std::fs::create_dir_all(&chain_dir)
            .map_err(|e| PitrError::Download(format!("{}: {e}", chain_dir.display())))?;
        let bytes = s3.get_pitr_object(&r.chain, &r.segment_name(), SEGMENT_LIMIT).await?;
        let path = chain_dir.join(r.segment_name());
        std::fs::write(&path, bytes).map_err(|e| PitrError::Download(format!("{}: {e}", path.display())))?;
    }
    plan.deltas_dir = dir.to_path_buf();
    Ok(())
}

/// The plan from listed snapshots and segment records, with what the report shows beside it.
fn finish_plan(
    snapshots: Vec<SnapshotRecord>,
    records: Vec<SegmentRecord>,
    warnings: Vec<String>,
    deltas_dir: PathBuf,
    target: Target,
    cluster: Option<&str>,
    observed_by: &mut ObservedBy<'_>,
) -> Result<PitrPlan, PitrError> {
    let (cluster_id, replay) = choose_cluster(&snapshots, &records, target, cluster, observed_by)?;
    let base = snapshots.iter().find(|r| r.name.as_str() == replay.base.name).cloned();
    let Some(base) = base else {
        return Err(PlanError::NoBase(replay.base.name.clone()).into());
    };
    let used: BTreeSet<&str> = replay.segments.iter().map(|s| s.chain.as_str()).collect();
    let chains = summarize(&records).into_iter().filter(|c| used.contains(c.chain.as_str())).collect();
    // Only a snapshot taken exactly at the revision the replay ends at can vouch for it.
    let expected_hash = snapshots
        .iter()
        .filter_map(|r| r.etcd.as_ref().filter(|_| r.is_ready()))
        .filter(|e| e.revision == replay.stop_at && cluster_id.as_deref().is_none_or(|c| e.cluster_id == c))
        .find_map(|e| e.hash_kv);
    Ok(PitrPlan { replay, base, cluster_id, chains, deltas_dir, expected_hash, warnings })
}

/// Plans for each cluster whose snapshots are here (only `wanted` when given): exactly one
/// must reach the target.
fn choose_cluster(
    snapshots: &[SnapshotRecord],
    segments: &[SegmentRecord],
    target: Target,
    wanted: Option<&str>,
    observed_by: &mut ObservedBy<'_>,
) -> Result<(Option<String>, ReplayPlan), PitrError> {
    let cluster_of = |r: &SnapshotRecord| r.etcd.as_ref().map(|e| e.cluster_id.clone());
    let mut clusters: BTreeSet<Option<String>> = snapshots.iter().filter(|r| r.is_ready()).map(cluster_of).collect();
    if let Some(w) = wanted {
        if !clusters.contains(&Some(w.to_string())) {
            return Err(PitrError::NoSuchCluster(w.into()));
        }
        clusters = BTreeSet::from([Some(w.to_string())]);
    }
    let mut reached = Vec::new();
    let mut first_error = None;
    for cluster in clusters {
        let bases: Vec<_> = snapshots.iter().filter(|r| cluster_of(r) == cluster).filter_map(local::base_of).collect();
        let own: Vec<SegmentRecord> = segments
            .iter()
            .filter(|s| s.cluster_id.is_none() || cluster.is_none() || s.cluster_id == cluster)
            .cloned()
            .collect();
        match plan(&bases, &own, target, observed_by) {
            Ok(p) => reached.push((cluster, p)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match reached.len() {
        1 => Ok(reached.remove(0)),
        0 => Err(first_error.unwrap_or_else(|| PlanError::NoBase(describe(target))).into()),
        _ => {
            Err(PitrError::Ambiguous(reached.into_iter().map(|(c, _)| c.unwrap_or_else(|| "unknown".into())).collect()))
        }
    }
}

fn describe(target: Target) -> String {
    match target {
        Target::Revision(rev) => format!("revision {rev}"),
        Target::Time(ms) => format!("time {ms} ms"),
    }
}

/// The binaries and the private directory a roll forward uses.
#[derive(Debug, Clone)]
pub struct RollForward<'a> {
    pub plan: &'a PitrPlan,
    pub target: Target,
    /// The base snapshot (as resolved for its pre-flight report).
    pub base: &'a SnapshotSource,
    /// Opens a sealed base.
    pub identity: Option<std::sync::Arc<etcdsnap_storage::seal::Identity>>,
    pub etcdutl: &'a Path,
    pub etcd: &'a Path,
    /// A private, empty directory; the result is written in it.
    pub work: &'a Path,
}

/// A snapshot of the cluster at the target, ready for an ordinary restore.
#[derive(Debug, Clone)]
pub struct RolledForward {
    pub snapshot: PathBuf,
    pub report: ReplayReport,
}

/// Replays the plan in a private etcd and saves the result as `work/<name>`.
pub async fn roll_forward(r: &RollForward<'_>) -> Result<RolledForward, PitrError> {
    let base_file = match (r.base.compression, r.base.path(), r.base.sealed) {
        (Compression::None, Some(path), false) => path.to_path_buf(),
        _ => {
            // Compressed, sealed or remote: opened and decompressed once, checked on the way.
            let out = r.work.join("base.db");
            let name = r.base.record.name.to_string();
            verify_pass(r.base, r.identity.clone(), Some(out.clone()), None)
                .await
                .map_err(|source| PitrError::Base { name, source })?;
            out
        }
    };
    let replay_dir = r.work.join("replay");
    std::fs::create_dir(&replay_dir)
        .map_err(|e| ReplayError::Save { path: replay_dir.clone(), message: e.to_string() })?;
    let snapshot = r.work.join(rolled_name(&r.plan.replay.base.name, r.target, r.plan.replay.stop_at));
    let report = replay::replay(&Replay {
        plan: &r.plan.replay,
        target: r.target,
        segments_dir: &r.plan.deltas_dir,
        base_snapshot: &base_file,
        etcdutl: r.etcdutl,
        etcd: r.etcd,
        work: &replay_dir,
        expected_hash: r.plan.expected_hash,
        save_to: Some(&snapshot),
        identity: r.identity.clone(),
    })
    .await?;
    Ok(RolledForward { snapshot, report })
}

/// The rolled-forward snapshot's file name: a snapshot name saying what it is.
fn rolled_name(base: &str, target: Target, stop_at: i64) -> String {
    // The result is an uncompressed, unsealed database, whatever the base was.
    let base = base.strip_suffix(etcdsnap_api::seal::SEALED_EXTENSION).unwrap_or(base);
    let base = base.strip_suffix(".zst").or_else(|| base.strip_suffix(".zip")).unwrap_or(base);
    match target {
        Target::Revision(_) => format!("{base}-rolled-to-{stop_at}"),
        Target::Time(ms) => format!("{base}-rolled-to-{}", ms / 1000),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use etcdsnap_api::{EtcdInfo, SnapshotName, StorageKind};

    /// A ready local snapshot of `node` taken at `unix` from cluster `cluster` at `revision`.
    pub(crate) fn snap(node: &str, unix: i64, revision: i64, cluster: &str) -> SnapshotRecord {
        let name = SnapshotName::parse(&format!("etcd-snapshot-{node}-{unix}")).unwrap();
        let at = jiff::Timestamp::from_second(unix).unwrap();
        let mut r = SnapshotRecord::stored(name, StorageKind::Local, node, "file:///x", at, 1);
        r.etcd = Some(EtcdInfo {
            revision,
            version: "3.6.0".into(),
            cluster_id: cluster.into(),
            member_id: "1".into(),
            db_size: None,
            ..Default::default()
        });
        r
    }

    pub(crate) fn segment(chain: &str, base: i64, first: i64, last: i64, cluster: &str) -> SegmentRecord {
        SegmentRecord {
            format: etcdsnap_storage::pitr::record::RECORD_FORMAT,
            chain: chain.into(),
            base_revision: base,
            first_revision: first,
            last_revision: last,
            first_observed_ms: first * 1000,
            last_observed_ms: last * 1000,
            revisions: (last - first + 1) as u64,
            events: (last - first + 1) as u64,
            sha256: "0".repeat(64),
            stored_bytes: 1,
            cluster_id: Some(cluster.into()),
            chain_broken: None,
        }
    }

    /// Revision targets never read a segment's times.
    fn unread(_: &SegmentRecord, _: i64) -> Result<Option<i64>, String> {
        Err("a revision target read a segment".into())
    }

    #[test]
    fn two_clusters_in_one_directory_never_mix() {
        // Cluster c1's chain reaches 200; cluster c2's snapshot is newer but its segments
        // stop at 150: a restore to 180 must use c1's, not roll c2's base with c1's changes.
        let snapshots = [snap("node-a", 100, 50, "c1"), snap("node-a", 110, 120, "c2")];
        let segments = [
            segment("etcd-snapshot-node-a-100", 50, 51, 200, "c1"),
            segment("etcd-snapshot-node-a-110", 120, 121, 150, "c2"),
        ];
        let (cluster, p) = choose_cluster(&snapshots, &segments, Target::Revision(180), None, &mut unread).unwrap();
        assert_eq!((cluster.as_deref(), p.base.name.as_str()), (Some("c1"), "etcd-snapshot-node-a-100"));
        // Both reach 140: the operator must choose.
        let err = choose_cluster(&snapshots, &segments, Target::Revision(140), None, &mut unread).unwrap_err();
        assert!(matches!(err, PitrError::Ambiguous(ref c) if c.len() == 2), "{err}");
        let (_, p) = choose_cluster(&snapshots, &segments, Target::Revision(140), Some("c2"), &mut unread).unwrap();
        assert_eq!(p.base.name, "etcd-snapshot-node-a-110");
        assert!(matches!(
            choose_cluster(&snapshots, &segments, Target::Revision(140), Some("c3"), &mut unread),
            Err(PitrError::NoSuchCluster(_))
        ));
        // Past every chain: the reason names what is missing.
        let err = choose_cluster(&snapshots, &segments, Target::Revision(500), None, &mut unread).unwrap_err();
        assert!(err.to_string().contains("not captured yet"), "{err}");
    }

    #[test]
    fn the_rolled_forward_snapshot_has_a_snapshot_name() {
        let name = rolled_name("etcd-snapshot-node-a-1700000000", Target::Revision(5), 5);
        assert!(SnapshotName::parse(&name).is_ok(), "{name}");
        let name = rolled_name("etcd-snapshot-node-a-1700000000", Target::Time(1_700_000_100_000), 5);
        assert!(SnapshotName::parse(&name).is_ok(), "{name}");
        let name = rolled_name("etcd-snapshot-node-a-1700000000.zst", Target::Revision(5), 5);
        assert_eq!(SnapshotName::parse(&name).unwrap().compression(), etcdsnap_api::Compression::None, "{name}");
        assert_eq!(name, "etcd-snapshot-node-a-1700000000-rolled-to-5");
    }
}
