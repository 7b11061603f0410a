//! From stored records to what a point-in-time restore replays: the chains (a full snapshot and
//! the segments that roll it forward, with their gaps) and, for a target revision or time, the
//! base and the segments to apply. Pure functions of listed records: no I/O.
//!
//! Gaps are never bridged: etcd numbers every change, so a revision missing between two
//! segments is a change nobody captured. A target past a gap is refused, naming the gap and
//! the newest revision that can be reached before it.

use super::record::SegmentRecord;
use std::collections::BTreeMap;

/// A full snapshot a chain can start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub name: String,
    pub revision: i64,
    /// When it was taken, Unix milliseconds.
    pub taken_ms: i64,
    /// The history it belongs to (`super::history`); None for the legacy one.
    pub history: Option<String>,
}

/// What to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Revision(i64),
    /// The newest revision observed at or before this Unix millisecond.
    Time(i64),
}

/// Revisions no segment holds, between two that one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The last revision held before the gap.
    pub after: i64,
    /// The first revision held after it.
    pub resumes_at: i64,
}

/// One chain as `ls --deltas` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub chain: String,
    pub base_revision: i64,
    /// The newest revision reachable from the base without crossing a gap.
    pub reachable: i64,
    pub last_revision: i64,
    pub first_observed_ms: Option<i64>,
    pub last_observed_ms: Option<i64>,
    pub segments: usize,
    pub events: u64,
    pub stored_bytes: u64,
    pub gaps: Vec<Gap>,
    pub broken: Option<String>,
}

/// The replay a restore performs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayPlan {
    pub base: Base,
    /// In order; the last may extend past the target (the replay stops at it).
    pub segments: Vec<SegmentRecord>,
    /// The revision to stop at. For a time target this is the newest revision whose segment
    /// began at or before the time; the replay narrows it with the segment's own times.
    pub stop_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no full snapshot at or before {0}: point-in-time restore needs one to start from")]
    NoBase(String),
    #[error(
        "revision {target} is past a gap in the changes captured after snapshot {chain}: revisions {}..{} were not captured; the newest revision before the gap is {}",
        gap.after + 1, gap.resumes_at - 1, gap.after
    )]
    AcrossGap { chain: String, target: i64, gap: Gap },
    #[error(
        "revision {target} was not captured yet: the changes captured after snapshot {chain} reach revision {newest}"
    )]
    NotCaptured { chain: String, target: i64, newest: i64 },
    #[error(
        "{at} was not captured yet: the captured changes end at revision {newest}, observed at {newest_at} (to restore that, use --to-revision {newest})"
    )]
    TimeNotCaptured { at: String, newest: i64, newest_at: String },
    #[error(
        "{at} falls in a gap in the captured changes: revision {} was the last observed by then, and revisions {}..{} were not captured (to restore revision {}, use --to-revision {})",
        gap.after, gap.after + 1, gap.resumes_at - 1, gap.after, gap.after
    )]
    TimeAcrossGap { at: String, gap: Gap },
    #[error("no captured change was observed at or before {at}{}", match earliest {
        Some((rev, at)) => format!(": the earliest is revision {rev}, observed at {at}"),
        None => String::new(),
    })]
    NothingObserved { at: String, earliest: Option<(i64, String)> },
    #[error("cannot read a delta segment's times: {0}")]
    Segment(String),
}

/// Records of `chain` (every chain with None), ordered, without exact duplicates (the same
/// segment listed from two stores, or written twice by a retried upload).
fn chain_segments<'a>(records: &'a [SegmentRecord], chain: Option<&str>) -> Vec<&'a SegmentRecord> {
    let mut by_first: BTreeMap<(i64, i64), &SegmentRecord> = BTreeMap::new();
    for r in records.iter().filter(|r| chain.is_none_or(|c| r.chain == c)) {
        by_first.entry((r.first_revision, r.last_revision)).or_insert(r);
    }
    by_first.into_values().collect()
}

/// Walks forward from a base: the fewest segments that continue it without a gap (at each step
/// the one reaching furthest among those that start by the next revision), then every gap
/// after it, found by walking on from each gap's far side.
fn walk<'a>(base_revision: i64, segments: &[&'a SegmentRecord]) -> (Vec<&'a SegmentRecord>, Vec<Gap>) {
    let mut reached = base_revision;
    let mut continuous = Vec::new();
    let mut gaps = Vec::new();
    loop {
        let next = segments.iter().filter(|s| s.first_revision <= reached + 1 && s.last_revision > reached);
        if let Some(s) = next.max_by_key(|s| s.last_revision) {
            if gaps.is_empty() {
                continuous.push(*s);
            }
            reached = s.last_revision;
            continue;
        }
        let after_gap = segments.iter().filter(|s| s.last_revision > reached).min_by_key(|s| s.first_revision);
        match after_gap {
            Some(s) => {
                gaps.push(Gap { after: reached, resumes_at: s.first_revision });
                reached = s.first_revision - 1;
            }
            None => return (continuous, gaps),
        }
    }
}

/// Every chain of `records`, oldest base first.
pub fn summarize(records: &[SegmentRecord]) -> Vec<ChainSummary> {
    let mut bases: BTreeMap<&str, i64> = BTreeMap::new();
    for r in records {
        bases.entry(&r.chain).or_insert(r.base_revision);
    }
    let mut chains: Vec<ChainSummary> = bases
        .into_iter()
        .map(|(chain, base_revision)| {
            let segments = chain_segments(records, Some(chain));
            let (continuous, gaps) = walk(base_revision, &segments);
            ChainSummary {
                chain: chain.to_string(),
                base_revision,
                reachable: continuous.last().map_or(base_revision, |s| s.last_revision),
                last_revision: segments.iter().map(|s| s.last_revision).max().unwrap_or(base_revision),
                first_observed_ms: segments.iter().map(|s| s.first_observed_ms).min(),
                last_observed_ms: segments.iter().map(|s| s.last_observed_ms).max(),
                segments: segments.len(),
                events: segments.iter().map(|s| s.events).sum(),
                stored_bytes: segments.iter().map(|s| s.stored_bytes).sum(),
                gaps,
                broken: segments.iter().find_map(|s| s.chain_broken.clone()),
            }
        })
        .collect();
    chains.sort_by_key(|c| c.base_revision);
    chains
}

/// The last revision a segment holds that was observed at or before a time, read from the
/// segment's own times (records give only each segment's first and last): Ok(None) when none
/// was. Err says why the segment cannot be read.
pub type ObservedBy<'a> = dyn FnMut(&SegmentRecord, i64) -> Result<Option<i64>, String> + 'a;

/// The base and segments that reach `target`. A time target is first mapped to a revision, the
/// last one observed at or before the time ([`revision_at_time`]); then, as for a revision
/// target, the base is the newest full snapshot at or before that revision (a snapshot's time
/// never decides: it is stamped before the snapshot's revision is known), and the segments are
/// those that roll it forward to the revision, from whichever chain holds them. A chain
/// outlives its own base: retention removes old full snapshots, and a newer snapshot is rolled
/// forward by the segments of a chain begun before it. `records` must be one cluster's (the
/// caller filters by cluster id). `observed_by` reads a segment's own times; it is asked only
/// about segments a time target falls inside.
pub fn plan(
    bases: &[Base],
    records: &[SegmentRecord],
    target: Target,
    observed_by: &mut ObservedBy<'_>,
) -> Result<ReplayPlan, PlanError> {
    let segments = chain_segments(records, None);
    let stop_at = match target {
        Target::Revision(rev) => rev,
        Target::Time(ms) => revision_at_time(&segments, ms, observed_by)?,
    };
    let base =
        bases.iter().filter(|b| b.revision <= stop_at).max_by_key(|b| (b.revision, b.taken_ms)).ok_or_else(|| {
            PlanError::NoBase(match target {
                Target::Revision(rev) => format!("revision {rev}"),
                Target::Time(ms) => format!("revision {stop_at} (the last observed at or before {})", fmt_ms(ms)),
            })
        })?;
    let (continuous, gaps) = walk(base.revision, &segments);
    let reached = continuous.last().map_or(base.revision, |s| s.last_revision);
    if stop_at > reached {
        return Err(match gaps.first() {
            Some(gap) => PlanError::AcrossGap { chain: base.name.clone(), target: stop_at, gap: *gap },
            None => PlanError::NotCaptured { chain: base.name.clone(), target: stop_at, newest: reached },
        });
    }
    let needed = continuous.iter().take_while(|s| s.first_revision <= stop_at).map(|s| (*s).clone()).collect();
    Ok(ReplayPlan { base: base.clone(), segments: needed, stop_at })
}

/// The segments a time falls strictly inside (observed from before it to after it): only their
/// own times say which of their revisions were observed by then. A restore from S3 downloads
/// these before planning.
pub fn segments_spanning(records: &[SegmentRecord], ms: i64) -> Vec<SegmentRecord> {
    chain_segments(records, None)
        .into_iter()
        .filter(|s| s.first_observed_ms <= ms && ms < s.last_observed_ms)
        .cloned()
        .collect()
}

/// The last revision observed at or before `ms` by any capture, from the records where a
/// segment ends by then and from the segment's own times where the time falls inside one.
/// What is known after it must show that capture went on past the time: the next revision is
/// held by some segment (observed after the time), or the time is that of the last change
/// captured. Otherwise nothing says what happened between the revision and the time, and the
/// target is refused: past a gap when a later segment exists, else as not captured yet.
fn revision_at_time(segments: &[&SegmentRecord], ms: i64, observed_by: &mut ObservedBy<'_>) -> Result<i64, PlanError> {
    let mut best: Option<i64> = None;
    for s in segments.iter().filter(|s| s.last_observed_ms <= ms) {
        best = best.max(Some(s.last_revision));
    }
    for s in segments.iter().filter(|s| s.first_observed_ms <= ms && ms < s.last_observed_ms) {
        if best.is_some_and(|b| b >= s.last_revision) {
            continue;
        }
        let found = observed_by(s, ms).map_err(PlanError::Segment)?;
        best = best.max(found);
    }
    let Some(revision) = best else {
        let earliest = segments.iter().min_by_key(|s| (s.first_observed_ms, s.first_revision));
        return Err(PlanError::NothingObserved {
            at: fmt_ms(ms),
            earliest: earliest.map(|s| (s.first_revision, fmt_ms(s.first_observed_ms))),
        });
    };
    let holds_next = segments.iter().any(|s| s.first_revision <= revision + 1 && revision < s.last_revision);
    let newest_ms = segments.iter().map(|s| s.last_observed_ms).max().unwrap_or(i64::MIN);
    if holds_next || ms <= newest_ms && segments.iter().all(|s| s.last_revision <= revision) {
        return Ok(revision);
    }
    let after = segments.iter().filter(|s| s.first_revision > revision).map(|s| s.first_revision).min();
    Err(match after {
        Some(resumes_at) => PlanError::TimeAcrossGap { at: fmt_ms(ms), gap: Gap { after: revision, resumes_at } },
        None => {
            let newest_at = segments.iter().filter(|s| s.last_revision == revision).map(|s| s.last_observed_ms).max();
            PlanError::TimeNotCaptured { at: fmt_ms(ms), newest: revision, newest_at: fmt_ms(newest_at.unwrap_or(ms)) }
        }
    })
}

fn fmt_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_else(|_| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pitr::record::tests::record;

    const CHAIN: &str = "etcd-snapshot-node-a-1700000000";

    fn base(name: &str, revision: i64, taken_ms: i64) -> Base {
        Base { name: name.into(), revision, taken_ms, history: None }
    }

    /// Plans with segments whose revisions were observed evenly spread over their times.
    fn plan(bases: &[Base], records: &[SegmentRecord], target: Target) -> Result<ReplayPlan, PlanError> {
        super::plan(bases, records, target, &mut |s, ms| Ok(Some(evenly_observed_by(s, ms))))
    }

    fn evenly_observed_by(s: &SegmentRecord, ms: i64) -> i64 {
        let span = (s.last_observed_ms - s.first_observed_ms).max(1);
        s.first_revision + (ms - s.first_observed_ms) * (s.last_revision - s.first_revision) / span
    }

    /// Base at 100; segments 101-200 (t 1000-2000), 201-300 (t 2000-3000), a gap, 351-400.
    fn chain_with_gap() -> (Vec<Base>, Vec<SegmentRecord>) {
        let records = vec![
            record(CHAIN, 100, 101, 200, 1_000, 2_000),
            record(CHAIN, 100, 201, 300, 2_000, 3_000),
            record(CHAIN, 100, 351, 400, 4_000, 5_000),
            // Listed twice (local and S3).
            record(CHAIN, 100, 201, 300, 2_000, 3_000),
        ];
        (vec![base(CHAIN, 100, 900)], records)
    }

    #[test]
    fn a_revision_target_takes_the_base_and_the_segments_up_to_it() {
        let (bases, records) = chain_with_gap();
        let p = plan(&bases, &records, Target::Revision(250)).unwrap();
        assert_eq!(p.base.revision, 100);
        assert_eq!(p.stop_at, 250);
        let ranges: Vec<(i64, i64)> = p.segments.iter().map(|s| (s.first_revision, s.last_revision)).collect();
        assert_eq!(ranges, vec![(101, 200), (201, 300)]);
        let exact = plan(&bases, &records, Target::Revision(100)).unwrap();
        assert!(exact.segments.is_empty(), "the base itself needs no replay");
    }

    #[test]
    fn a_target_past_a_gap_is_refused_naming_the_gap() {
        let (bases, records) = chain_with_gap();
        let err = plan(&bases, &records, Target::Revision(360)).unwrap_err();
        assert_eq!(
            err,
            PlanError::AcrossGap { chain: CHAIN.into(), target: 360, gap: Gap { after: 300, resumes_at: 351 } }
        );
        let text = err.to_string();
        assert!(text.contains("301..350") && text.contains("newest revision before the gap is 300"), "{text}");
    }

    #[test]
    fn a_target_not_captured_yet_or_before_every_base_is_refused() {
        let (bases, records) = chain_with_gap();
        let no_gap: Vec<SegmentRecord> = records.into_iter().filter(|r| r.last_revision <= 300).collect();
        let err = plan(&bases, &no_gap, Target::Revision(301)).unwrap_err();
        assert_eq!(err, PlanError::NotCaptured { chain: CHAIN.into(), target: 301, newest: 300 });
        assert!(matches!(plan(&bases, &no_gap, Target::Revision(99)), Err(PlanError::NoBase(_))));
        assert!(matches!(plan(&bases, &no_gap, Target::Time(800)), Err(PlanError::NothingObserved { .. })));
    }

    #[test]
    fn a_time_target_maps_to_the_last_revision_observed_by_then() {
        let (bases, records) = chain_with_gap();
        // Inside the second segment: its own times say which revision (here 250 at 2500).
        let p = plan(&bases, &records, Target::Time(2_500)).unwrap();
        assert_eq!((p.stop_at, p.segments.len()), (250, 2));
        // Before every captured change: nothing says which revision that was, whatever the
        // base's time.
        let err = plan(&bases, &records, Target::Time(950)).unwrap_err();
        assert!(matches!(err, PlanError::NothingObserved { .. }), "{err}");
        assert!(err.to_string().contains("the earliest is revision 101"), "{err}");
        // In the gap: the last revision observed is known, what followed it is not.
        let err = plan(&bases, &records, Target::Time(3_500)).unwrap_err();
        assert_eq!(err, PlanError::TimeAcrossGap { at: fmt_ms(3_500), gap: Gap { after: 300, resumes_at: 351 } });
        assert!(err.to_string().contains("--to-revision 300"), "{err}");
        // After the gap's far side began: past the gap from the base.
        assert!(matches!(plan(&bases, &records, Target::Time(4_500)), Err(PlanError::AcrossGap { .. })));
        // Only the segments a time falls inside are read.
        let mut asked = Vec::new();
        let p = super::plan(&bases, &records, Target::Time(2_500), &mut |s, ms| {
            asked.push(s.first_revision);
            Ok(Some(evenly_observed_by(s, ms)))
        });
        assert_eq!((p.unwrap().stop_at, asked), (250, vec![201]));
        let unreadable = super::plan(&bases, &records, Target::Time(2_500), &mut |_, _| Err("gone".into()));
        assert_eq!(unreadable, Err(PlanError::Segment("gone".into())));
        assert_eq!(segments_spanning(&records, 2_500).len(), 1, "listed once though stored twice");
    }

    #[test]
    fn a_base_taken_before_the_time_but_holding_later_revisions_is_not_used() {
        // A snapshot stamped at 2600 whose stream ended at revision 250, while revision 231 was
        // the last one observed by 2600 (a snapshot's time is taken before its revision).
        let newer = "etcd-snapshot-node-a-1700003600";
        let bases = vec![base(CHAIN, 100, 900), base(newer, 250, 2_600)];
        let records = vec![record(CHAIN, 100, 101, 200, 1_000, 2_000), record(CHAIN, 100, 201, 301, 2_300, 3_300)];
        let p = plan(&bases, &records, Target::Time(2_600)).unwrap();
        assert_eq!((p.base.name.as_str(), p.stop_at), (CHAIN, 231), "never raised to the newer base's revision");
        // Without the older base, no snapshot is at or before that revision.
        let err = plan(&bases[1..], &records, Target::Time(2_600)).unwrap_err();
        assert!(matches!(err, PlanError::NoBase(ref what) if what.contains("revision 231")), "{err}");
        // Once the time reaches revision 250, the newer base is used.
        let p = plan(&bases, &records, Target::Time(2_800)).unwrap();
        assert_eq!((p.base.name.as_str(), p.stop_at), (newer, 251));
    }

    #[test]
    fn a_time_after_the_last_captured_change_is_refused_with_the_newest_revision() {
        // Nothing says what happened after 3000: capture may have stopped there.
        let (bases, records) = chain_with_gap();
        let no_gap: Vec<SegmentRecord> = records.into_iter().filter(|r| r.last_revision <= 300).collect();
        assert_eq!(plan(&bases, &no_gap, Target::Time(3_000)).unwrap().stop_at, 300);
        let err = plan(&bases, &no_gap, Target::Time(3_001)).unwrap_err();
        assert!(matches!(err, PlanError::TimeNotCaptured { newest: 300, .. }), "{err}");
        assert!(err.to_string().contains("--to-revision 300"), "{err}");
        // A snapshot with nothing captured after it: no revision was observed at any time.
        let alone = [base(CHAIN, 100, 900)];
        let err = plan(&alone, &[], Target::Time(900)).unwrap_err();
        assert!(matches!(err, PlanError::NothingObserved { earliest: None, .. }), "{err}");
    }

    #[test]
    fn the_newest_base_at_or_before_the_target_is_chosen() {
        let newer = "etcd-snapshot-node-a-1700003600";
        let bases = vec![base(CHAIN, 100, 900), base(newer, 250, 2_600)];
        let records = vec![record(CHAIN, 100, 101, 300, 1_000, 3_000), record(newer, 250, 251, 400, 2_700, 5_000)];
        assert_eq!(plan(&bases, &records, Target::Revision(240)).unwrap().base.name, CHAIN);
        let p = plan(&bases, &records, Target::Revision(390)).unwrap();
        assert_eq!((p.base.name.as_str(), p.segments.len()), (newer, 1));
    }

    #[test]
    fn a_newer_snapshot_is_rolled_forward_by_a_chain_begun_before_it() {
        // The chain began at 100; its base was pruned; a snapshot at 250 remains.
        let newer = "etcd-snapshot-node-a-1700003600";
        let bases = vec![base(newer, 250, 2_600)];
        let records = vec![record(CHAIN, 100, 101, 200, 1_000, 2_000), record(CHAIN, 100, 201, 400, 2_000, 5_000)];
        let p = plan(&bases, &records, Target::Revision(390)).unwrap();
        assert_eq!(p.base.name, newer);
        let ranges: Vec<(i64, i64)> = p.segments.iter().map(|s| (s.first_revision, s.last_revision)).collect();
        assert_eq!(ranges, vec![(201, 400)], "only the segment past the base, whose first revisions the replay skips");
        // At 2700 revision 250 was not observed yet (247 was): that base cannot be used,
        // whatever its time. The target is refused, never raised to the base's revision.
        assert_eq!(evenly_observed_by(&records[1], 2_700), 247);
        let err = plan(&bases, &records, Target::Time(2_700)).unwrap_err();
        assert!(matches!(err, PlanError::NoBase(_)), "{err}");
        let p = plan(&bases, &records, Target::Time(4_000)).unwrap();
        assert_eq!((p.base.name.as_str(), p.stop_at), (newer, 333));
    }

    #[test]
    fn summaries_show_reach_gaps_and_breaks() {
        let (_, mut records) = chain_with_gap();
        records[2].chain_broken = Some("watch compacted at 351".into());
        let chains = summarize(&records);
        assert_eq!(chains.len(), 1);
        let c = &chains[0];
        assert_eq!((c.base_revision, c.reachable, c.last_revision, c.segments), (100, 300, 400, 3));
        assert_eq!(c.gaps, vec![Gap { after: 300, resumes_at: 351 }]);
        assert_eq!((c.first_observed_ms, c.last_observed_ms), (Some(1_000), Some(5_000)));
        assert_eq!(c.broken.as_deref(), Some("watch compacted at 351"));
    }
}
