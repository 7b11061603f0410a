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
        "{at} was not captured yet: the changes captured after snapshot {chain} end at revision {newest}, observed at {newest_at} (to restore that, use --to-revision {newest})"
    )]
    TimeNotCaptured { chain: String, at: String, newest: i64, newest_at: String },
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

/// The base and segments that reach `target`: the newest full snapshot at or before it, and
/// the segments that roll it forward to the target, from whichever chain holds them. A chain
/// outlives its own base: retention removes old full snapshots, and a newer snapshot is rolled
/// forward by the segments of a chain begun before it. `records` must be one cluster's (the
/// caller filters by cluster id).
pub fn plan(bases: &[Base], records: &[SegmentRecord], target: Target) -> Result<ReplayPlan, PlanError> {
    let base = bases
        .iter()
        .filter(|b| match target {
            Target::Revision(rev) => b.revision <= rev,
            Target::Time(ms) => b.taken_ms <= ms,
        })
        .max_by_key(|b| (b.revision, b.taken_ms))
        .ok_or_else(|| {
            PlanError::NoBase(match target {
                Target::Revision(rev) => format!("revision {rev}"),
                Target::Time(ms) => format!("time {}", fmt_ms(ms)),
            })
        })?;
    let segments = chain_segments(records, None);
    let (continuous, gaps) = walk(base.revision, &segments);
    let reached = continuous.last().map_or(base.revision, |s| s.last_revision);
    let stop_at = match target {
        Target::Revision(rev) => rev,
        Target::Time(ms) => revision_by_time(&segments, ms, base.revision).max(base.revision),
    };
    let covered_ms = continuous.last().map_or(base.taken_ms, |s| s.last_observed_ms);
    if let (Target::Time(ms), true) = (target, stop_at <= reached) {
        // Nothing says what happened after the last change captured: capture may have stopped.
        if ms > covered_ms {
            return Err(match gaps.first() {
                Some(gap) => {
                    PlanError::AcrossGap { chain: base.name.clone(), target: stop_at.max(gap.after + 1), gap: *gap }
                }
                None => PlanError::TimeNotCaptured {
                    chain: base.name.clone(),
                    at: fmt_ms(ms),
                    newest: reached,
                    newest_at: fmt_ms(covered_ms),
                },
            });
        }
    }
    if stop_at > reached {
        return Err(match gaps.first() {
            Some(gap) => PlanError::AcrossGap { chain: base.name.clone(), target: stop_at, gap: *gap },
            None => PlanError::NotCaptured { chain: base.name.clone(), target: stop_at, newest: reached },
        });
    }
    let needed: Vec<SegmentRecord> = match target {
        Target::Revision(rev) => {
            continuous.iter().take_while(|s| s.first_revision <= rev).map(|s| (*s).clone()).collect()
        }
        Target::Time(ms) => continuous.iter().take_while(|s| s.first_observed_ms <= ms).map(|s| (*s).clone()).collect(),
    };
    Ok(ReplayPlan { base: base.clone(), segments: needed, stop_at })
}

/// A lower bound of the newest revision observed at or before `ms`, from records alone: exact
/// when a segment ends by then, else the first revision of the segment the time falls in (the
/// replay finds the exact one in that segment's own times).
fn revision_by_time(segments: &[&SegmentRecord], ms: i64, base_revision: i64) -> i64 {
    let known = segments.iter().filter(|s| s.first_observed_ms <= ms);
    known
        .map(|s| if s.last_observed_ms <= ms { s.last_revision } else { s.first_revision })
        .max()
        .unwrap_or(base_revision)
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
        Base { name: name.into(), revision, taken_ms }
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
        assert!(matches!(plan(&bases, &no_gap, Target::Time(800)), Err(PlanError::NoBase(_))));
    }

    #[test]
    fn a_time_target_takes_the_segments_begun_by_then() {
        let (bases, records) = chain_with_gap();
        // Inside the second segment: its revisions up to the time are found by the replay.
        let p = plan(&bases, &records, Target::Time(2_500)).unwrap();
        assert_eq!(p.segments.len(), 2);
        assert_eq!(p.stop_at, 201);
        // Between the base and the first event: the base alone.
        let p = plan(&bases, &records, Target::Time(950)).unwrap();
        assert!(p.segments.is_empty());
        assert_eq!(p.stop_at, 100);
        // After the gap's far side began, or inside the gap: refused.
        assert!(matches!(plan(&bases, &records, Target::Time(4_500)), Err(PlanError::AcrossGap { .. })));
        assert!(matches!(plan(&bases, &records, Target::Time(3_500)), Err(PlanError::AcrossGap { .. })));
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
        // A snapshot with nothing captured after it covers only its own moment.
        let alone = [base(CHAIN, 100, 900)];
        assert_eq!(plan(&alone, &[], Target::Time(900)).unwrap().stop_at, 100);
        assert!(matches!(plan(&alone, &[], Target::Time(901)), Err(PlanError::TimeNotCaptured { .. })));
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
        // A time before every change after the base lands on the base itself.
        let p = plan(&bases, &records, Target::Time(2_700)).unwrap();
        assert_eq!(p.stop_at, 250);
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
