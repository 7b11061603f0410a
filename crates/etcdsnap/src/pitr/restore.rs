//! `restore --to-revision N | --to-time T`: which snapshot and segments reach the target
//! ([`plan_local`]), and the roll forward itself ([`roll_forward`]), whose result is a snapshot
//! file that the ordinary restore then installs with the operator's member settings (so the
//! pre-flight checks, etcdutl's options and the swap are the same as for any restore).
//!
//! Two clusters' snapshots in one directory never mix: the base and the segments must come from
//! the same etcd cluster (by cluster ID). When snapshots of several clusters could reach the
//! target, the restore is refused until one is chosen.

use super::replay::{self, Replay, ReplayEngine, ReplayError, ReplayReport};
use crate::restore::{PassError, SnapshotSource, verify_pass};
use etcdsnap_api::{Compression, KvHash};
use etcdsnap_storage::SnapshotRecord;
use etcdsnap_storage::pitr::SEGMENT_LIMIT;
use etcdsnap_storage::pitr::history;
use etcdsnap_storage::pitr::objects::{DeltaObjects, read_record};
use etcdsnap_storage::pitr::{
    Base, ChainSummary, ObservedBy, PlanError, ReplayPlan, Segment, SegmentRecord, Target, local, plan,
    segments_spanning, summarize,
};
use etcdsnap_storage::seal::Identity;
use etcdsnap_storage::store::local::LocalStore;
use etcdsnap_storage::store::{SnapshotStore, StoreError};
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
    #[error("no history {0} of this cluster here (see `ls -o wide`)")]
    NoSuchHistory(String),
    #[error(
        "{target} resolves in several histories of cluster {cluster} (etcd reused these revisions after a restore or rollback): {}; choose one with --history ID",
        .histories.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    AmbiguousHistory { target: String, cluster: String, histories: Vec<HistorySpan> },
    #[error(
        "revision {target} falls in a gap: the changes captured in history {history} reach revision {newest}, and history {later} begins at revision {begins}: revisions {}..{} were not captured",
        newest + 1, begins - 1
    )]
    BetweenHistories { target: i64, history: String, newest: i64, later: String, begins: i64 },
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

/// One history's reach, as an ambiguous target lists it: its ID, revision and time range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistorySpan {
    pub history: String,
    pub first_revision: i64,
    pub last_revision: i64,
    pub first_ms: i64,
    pub last_ms: i64,
}

impl std::fmt::Display for HistorySpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at =
            |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_else(|_| ms.to_string());
        write!(
            f,
            "history {} (revisions {}..={}, {} to {})",
            self.history,
            self.first_revision,
            self.last_revision,
            at(self.first_ms),
            at(self.last_ms)
        )
    }
}

/// Which cluster and history a point-in-time restore reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Choose<'a> {
    /// `--etcd-cluster-id`.
    pub cluster: Option<&'a str>,
    /// `--history` (an ID, or `legacy`).
    pub history: Option<&'a str>,
}

/// What a point-in-time restore will do, for the pre-flight report.
#[derive(Debug, Clone)]
pub struct PitrPlan {
    pub replay: ReplayPlan,
    /// The base snapshot's record.
    pub base: SnapshotRecord,
    pub cluster_id: Option<String>,
    /// The history the base and segments belong to; None for the legacy one.
    pub history: Option<String>,
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
    choose: Choose<'_>,
    identity: Option<&Identity>,
) -> Result<PitrPlan, PitrError> {
    let listing = store.list().await?;
    let deltas_dir = local::dir_beside(store.dir());
    let (records, mut warnings) = local::read_all(&deltas_dir);
    warnings.extend(listing.warnings);
    let dir = deltas_dir.clone();
    let mut observed_by = move |r: &SegmentRecord, ms: i64| replay::last_observed_by(&dir, r, ms, identity);
    finish_plan(listing.records, records, warnings, deltas_dir, target, choose, &mut observed_by)
}

/// The largest record object downloaded from S3 or a replica (segments: [`SEGMENT_LIMIT`]).
const RECORD_LIMIT: u64 = 64 * 1024;

/// Plans a roll forward to `target` from the snapshots and chains in the S3 folder, or in a
/// replica (a node whose disk is gone, a primary lost): the records that can matter are
/// downloaded and checked. The plan's segments are fetched by [`fetch_segments`] once the
/// pre-flight checks passed.
pub async fn plan_s3(
    store: &Arc<dyn SnapshotStore>,
    target: Target,
    choose: Choose<'_>,
    identity: Option<&Identity>,
) -> Result<PitrPlan, PitrError> {
    let s3 = deltas_of(store.as_ref())?;
    let listing = store.list().await?;
    let mut warnings = listing.warnings;
    // Segments ending before every usable base never matter.
    let floor = listing.records.iter().filter_map(local::base_of).map(|b| b.revision).min().unwrap_or(i64::MAX);
    let objects = s3.list_deltas().await?;
    let mut records = Vec::new();
    for o in objects.iter().filter(|o| o.is_record() && o.last_revision().is_some_and(|l| l > floor)) {
        match read_record(s3, o, RECORD_LIMIT).await {
            Ok(r) => records.push(r),
            Err(e) => warnings.push(format!("delta record {}/{}: {e}: skipped", o.chain, o.file)),
        }
    }
    // A time target inside a segment is mapped to a revision by the segment's own times.
    let mut spanning = HashMap::new();
    if let Target::Time(ms) = target {
        for r in segments_spanning(&records, ms) {
            let bytes = s3.get_delta(&r.chain, &r.segment_name(), SEGMENT_LIMIT).await?;
            spanning.insert((r.chain.clone(), r.segment_name()), bytes);
        }
    }
    let mut observed_by = |r: &SegmentRecord, ms: i64| {
        let name = format!("{}/{}", r.chain, r.segment_name());
        let stored =
            spanning.get(&(r.chain.clone(), r.segment_name())).ok_or_else(|| format!("{name}: not downloaded"))?;
        observed_in(&name, stored, r, ms, identity)
    };
    finish_plan(listing.records, records, warnings, PathBuf::new(), target, choose, &mut observed_by)
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
    if let Err(found) = record.check_stored(stored) {
        return Err(format!(
            "delta segment {name} is damaged: its sha256 is {found}, its record says {}",
            record.sha256
        ));
    }
    let segment = Segment::from_stored(name, stored, SEGMENT_LIMIT as usize, identity).map_err(|e| e.to_string())?;
    Ok(segment.last_revision_observed_by(ms))
}

/// The delta objects of S3 or a replica.
fn deltas_of(store: &dyn SnapshotStore) -> Result<&dyn DeltaObjects, PitrError> {
    store.deltas().ok_or_else(|| PitrError::Download(format!("{} keeps no delta objects", store.describe())))
}

/// Downloads the plan's segments from S3 or a replica into `dir/<chain>/` (a private
/// directory), where the replay reads them and checks each against its record.
pub async fn fetch_segments(store: &Arc<dyn SnapshotStore>, plan: &mut PitrPlan, dir: &Path) -> Result<(), PitrError> {
    let s3 = deltas_of(store.as_ref())?;
    for r in &plan.replay.segments {
        let chain_dir = dir.join(&r.chain);
        std::fs::create_dir_all(&chain_dir)
            .map_err(|e| PitrError::Download(format!("{}: {e}", chain_dir.display())))?;
        let bytes = s3.get_delta(&r.chain, &r.segment_name(), SEGMENT_LIMIT).await?;
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
    choose: Choose<'_>,
    observed_by: &mut ObservedBy<'_>,
) -> Result<PitrPlan, PitrError> {
    let (cluster_id, history, replay) = choose_history(&snapshots, &records, target, choose, observed_by)?;
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
        .filter(|e| e.history == history)
        .find_map(|e| e.hash_kv);
    Ok(PitrPlan { replay, base, cluster_id, history, chains, deltas_dir, expected_hash, warnings })
}

/// Plans in each history of each cluster whose snapshots are here (only those `choose` names):
/// exactly one must reach the target. A history's plan uses only its own snapshots and
/// segments, so revisions etcd reused after a restore or a rollback never mix.
fn choose_history(
    snapshots: &[SnapshotRecord],
    segments: &[SegmentRecord],
    target: Target,
    choose: Choose<'_>,
    observed_by: &mut ObservedBy<'_>,
) -> Result<(Option<String>, Option<String>, ReplayPlan), PitrError> {
    let cluster_of = |r: &SnapshotRecord| r.etcd.as_ref().map(|e| e.cluster_id.clone());
    let history_of = |r: &SnapshotRecord| r.etcd.as_ref().and_then(|e| e.history.clone());
    let ready = || snapshots.iter().filter(|r| r.is_ready());
    let mut groups: BTreeSet<(Option<String>, Option<String>)> =
        ready().map(|r| (cluster_of(r), history_of(r))).collect();
    if let Some(w) = choose.cluster {
        groups.retain(|(c, _)| c.as_deref() == Some(w));
        if groups.is_empty() {
            return Err(PitrError::NoSuchCluster(w.into()));
        }
    }
    if let Some(w) = choose.history {
        groups.retain(|(_, h)| history::label(h.as_deref()) == w);
        if groups.is_empty() {
            return Err(PitrError::NoSuchHistory(w.into()));
        }
    }
    let mut reached = Vec::new();
    let mut failed = Vec::new();
    for (cluster, hist) in groups {
        let bases: Vec<_> =
            ready().filter(|r| cluster_of(r) == cluster && history_of(r) == hist).filter_map(local::base_of).collect();
        let own: Vec<SegmentRecord> = segments
            .iter()
            .filter(|s| s.cluster_id.is_none() || cluster.is_none() || s.cluster_id == cluster)
            .filter(|s| s.history == hist)
            .cloned()
            .collect();
        let reach = span(hist.as_deref(), &bases, &own);
        match plan(&bases, &own, target, observed_by) {
            Ok(p) => reached.push((cluster, hist, p, reach)),
            Err(e) => failed.push((cluster, e, reach)),
        }
    }
    let clusters: BTreeSet<Option<String>> = reached.iter().map(|(c, ..)| c.clone()).collect();
    match (reached.len(), clusters.len()) {
        (1, _) => {
            let (cluster, hist, plan, _) = reached.remove(0);
            Ok((cluster, hist, plan))
        }
        (0, _) => Err(why_unreached(failed, target)),
        (_, 1) => Err(PitrError::AmbiguousHistory {
            target: describe(target),
            cluster: clusters.into_iter().flatten().next().unwrap_or_else(|| "unknown".into()),
            histories: reached.into_iter().map(|(_, _, _, span)| span).collect(),
        }),
        _ => Err(PitrError::Ambiguous(clusters.into_iter().map(|c| c.unwrap_or_else(|| "unknown".into())).collect())),
    }
}

/// Why no history reaches the target: the reason of a history that has a snapshot at or before
/// it (rather than one that has none); when that history's changes end before the target and
/// a later history of the same cluster begins after it, the revisions between are a gap.
fn why_unreached(mut failed: Vec<(Option<String>, PlanError, HistorySpan)>, target: Target) -> PitrError {
    let Some(i) = failed.iter().position(|(_, e, _)| !matches!(e, PlanError::NoBase(_))) else {
        let first = failed.into_iter().next().map(|(_, e, _)| e);
        return first.unwrap_or_else(|| PlanError::NoBase(describe(target))).into();
    };
    if let PlanError::NotCaptured { target: revision, newest, .. } = &failed[i].1 {
        let (cluster, span) = (&failed[i].0, &failed[i].2);
        let next = failed
            .iter()
            .filter(|(c, _, s)| c == cluster && s.first_revision > *revision)
            .min_by_key(|(_, _, s)| s.first_revision);
        if let Some((_, _, later)) = next {
            return PitrError::BetweenHistories {
                target: *revision,
                history: span.history.clone(),
                newest: *newest,
                later: later.history.clone(),
                begins: later.first_revision,
            };
        }
    }
    failed.swap_remove(i).1.into()
}

/// A history's reach, from its snapshots and segments.
fn span(history: Option<&str>, bases: &[Base], segments: &[SegmentRecord]) -> HistorySpan {
    let revisions =
        bases.iter().map(|b| b.revision).chain(segments.iter().flat_map(|s| [s.first_revision, s.last_revision]));
    let times =
        bases.iter().map(|b| b.taken_ms).chain(segments.iter().flat_map(|s| [s.first_observed_ms, s.last_observed_ms]));
    let (revisions, times): (Vec<i64>, Vec<i64>) = (revisions.collect(), times.collect());
    HistorySpan {
        history: history::label(history).to_string(),
        first_revision: revisions.iter().copied().min().unwrap_or_default(),
        last_revision: revisions.iter().copied().max().unwrap_or_default(),
        first_ms: times.iter().copied().min().unwrap_or_default(),
        last_ms: times.iter().copied().max().unwrap_or_default(),
    }
}

fn describe(target: Target) -> String {
    match target {
        Target::Revision(rev) => format!("revision {rev}"),
        Target::Time(ms) => match jiff::Timestamp::from_millisecond(ms) {
            Ok(t) => format!("time {t}"),
            Err(_) => format!("time {ms} ms"),
        },
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
    /// The etcd binary of the etcd engine (unused by the direct engine).
    pub etcd: &'a Path,
    /// A private, empty directory; the result is written in it.
    pub work: &'a Path,
    /// The same bytes on every node that rolls the same plan forward (see [`Replay::compact`]).
    pub compact: bool,
    pub engine: ReplayEngine,
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
        compact: r.compact,
        engine: r.engine.clone(),
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
            history: None,
            fingerprint: None,
        }
    }

    /// Revision targets never read a segment's times.
    fn unread(_: &SegmentRecord, _: i64) -> Result<Option<i64>, String> {
        Err("a revision target read a segment".into())
    }

    fn choose_cluster(
        snapshots: &[SnapshotRecord],
        segments: &[SegmentRecord],
        target: Target,
        cluster: Option<&str>,
        observed_by: &mut ObservedBy<'_>,
    ) -> Result<(Option<String>, ReplayPlan), PitrError> {
        let choose = Choose { cluster, history: None };
        choose_history(snapshots, segments, target, choose, observed_by).map(|(c, _, p)| (c, p))
    }

    fn in_history(mut r: SnapshotRecord, h: &str) -> SnapshotRecord {
        if let Some(e) = r.etcd.as_mut() {
            e.history = Some(h.into());
        }
        r
    }

    #[test]
    fn a_target_two_histories_reach_is_refused_until_one_is_chosen() {
        // History h1: base at 100 rolled to 500. The member was rolled back to 300 in place
        // (same cluster ID): history h2, base at 320 rolled to 720. Both hold revision 400.
        let snapshots =
            [in_history(snap("node-a", 100, 100, "c1"), "h1"), in_history(snap("node-a", 200, 320, "c1"), "h2")];
        let seg = |chain: &str, base, first, last, h: &str| SegmentRecord {
            history: Some(h.into()),
            ..segment(chain, base, first, last, "c1")
        };
        let segments = [
            seg("etcd-snapshot-node-a-100", 100, 101, 500, "h1"),
            seg("etcd-snapshot-node-a-200", 320, 321, 720, "h2"),
            // A legacy chain of the same cluster without a snapshot to start from.
            segment("etcd-snapshot-node-a-50", 50, 51, 450, "c1"),
        ];
        let err =
            choose_history(&snapshots, &segments, Target::Revision(400), Choose::default(), &mut unread).unwrap_err();
        let PitrError::AmbiguousHistory { ref histories, ref cluster, .. } = err else { panic!("{err}") };
        assert_eq!(cluster, "c1");
        let listed: Vec<(&str, i64, i64)> =
            histories.iter().map(|h| (h.history.as_str(), h.first_revision, h.last_revision)).collect();
        assert_eq!(listed, [("h1", 100, 500), ("h2", 320, 720)]);
        let text = err.to_string();
        assert!(
            text.contains("revision 400") && text.contains("--history") && text.contains("revisions 320..=720"),
            "{text}"
        );
        // Chosen: only that history's base and segments are used, never the other's.
        for (h, base, chain) in [("h1", 100, "etcd-snapshot-node-a-100"), ("h2", 320, "etcd-snapshot-node-a-200")] {
            let choose = Choose { cluster: None, history: Some(h) };
            let (_, got, p) =
                choose_history(&snapshots, &segments, Target::Revision(400), choose, &mut unread).unwrap();
            assert_eq!((got.as_deref(), p.base.revision), (Some(h), base));
            assert!(p.segments.iter().all(|s| s.chain == chain && s.history.as_deref() == Some(h)), "{p:?}");
        }
        // Only one history holds 600 and 200: no choice needed.
        let (_, got, p) =
            choose_history(&snapshots, &segments, Target::Revision(600), Choose::default(), &mut unread).unwrap();
        assert_eq!((got.as_deref(), p.base.revision), (Some("h2"), 320));
        let (_, got, _) =
            choose_history(&snapshots, &segments, Target::Revision(200), Choose::default(), &mut unread).unwrap();
        assert_eq!(got.as_deref(), Some("h1"));
        // Past the rollback point in h1 only when the old history is chosen; h2's segments
        // never roll h1's base forward, nor the reverse.
        let choose = Choose { cluster: None, history: Some("h9") };
        let err = choose_history(&snapshots, &segments, Target::Revision(400), choose, &mut unread).unwrap_err();
        assert!(matches!(err, PitrError::NoSuchHistory(ref h) if h == "h9"), "{err}");
        let choose = Choose { cluster: None, history: Some("h1") };
        let err = choose_history(&snapshots, &segments, Target::Revision(600), choose, &mut unread).unwrap_err();
        assert!(err.to_string().contains("not captured yet"), "{err}");
    }

    #[test]
    fn a_target_between_two_histories_is_a_gap_named_as_such() {
        // The first history's tip was compacted away before capture resumed: a new history
        // began at 200. Nothing between 100 and 200 was captured.
        let snapshots =
            [in_history(snap("node-a", 100, 100, "c1"), "h1"), in_history(snap("node-a", 200, 200, "c1"), "h2")];
        let segments =
            [SegmentRecord { history: Some("h2".into()), ..segment("etcd-snapshot-node-a-200", 200, 201, 300, "c1") }];
        let err =
            choose_history(&snapshots, &segments, Target::Revision(150), Choose::default(), &mut unread).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, PitrError::BetweenHistories { newest: 100, begins: 200, .. }), "{text}");
        assert!(text.contains("gap") && text.contains("revisions 101..199") && text.contains("h2"), "{text}");
    }

    #[test]
    fn legacy_records_are_one_history_per_cluster() {
        // Snapshots and segments written before histories were recorded, and a newer history.
        let snapshots = [snap("node-a", 100, 100, "c1"), in_history(snap("node-a", 200, 600, "c1"), "h2")];
        let segments = [segment("etcd-snapshot-node-a-100", 100, 101, 500, "c1")];
        let (_, got, p) =
            choose_history(&snapshots, &segments, Target::Revision(450), Choose::default(), &mut unread).unwrap();
        assert_eq!((got, p.base.revision, p.segments.len()), (None, 100, 1));
        let choose = Choose { cluster: None, history: Some(history::LEGACY) };
        assert!(choose_history(&snapshots, &segments, Target::Revision(450), choose, &mut unread).is_ok());
        // The legacy chain never rolls the newer history's snapshot forward.
        let choose = Choose { cluster: None, history: Some("h2") };
        assert!(choose_history(&snapshots, &segments, Target::Revision(450), choose, &mut unread).is_err());
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
