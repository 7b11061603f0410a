//! The replay's first pass: every segment of the plan is read, checked against its record's
//! sha256 and decoded while etcdutl restores the base, so a damaged segment fails the restore
//! before the private etcd starts. The pass learns what the second one needs: the largest
//! transaction to apply (the private etcd's request limits), each lease's newest observation
//! at or before the target, and how much of the replay can be checked against captured
//! previous states. Nothing is kept in memory but those facts: the second pass reads the
//! segments again.

use super::ReplayError;
use super::guard::MAX_GUARD_COMPARES;
use crate::restore::loopback::RequestLimits;
use etcdsnap_storage::pitr::SEGMENT_LIMIT;
use etcdsnap_storage::pitr::{LeaseObservation, PrevState, ReplayPlan, Segment, SegmentRecord, Target};
use etcdsnap_storage::seal::Identity;
use std::collections::HashMap;
use std::path::Path;

/// The bytes a transaction carries besides its keys and values, per operation (generous: an
/// operation's framing, lease and flags take about 20).
const OP_OVERHEAD: usize = 64;

/// What the first pass found.
#[derive(Debug, Clone)]
pub(super) struct Scan {
    /// The last revision to apply.
    pub stop_at: i64,
    /// The target's moment (Unix milliseconds): the time asked for, or when the target revision
    /// was observed (the base's time when nothing is applied).
    pub target_ms: i64,
    pub limits: RequestLimits,
    /// Each lease's newest observation at or before the target.
    pub leases: HashMap<i64, LeaseObservation>,
    /// Revisions and events to apply, and events among them with no previous state to check.
    pub revisions: u64,
    pub events: u64,
    pub unchecked: u64,
}

/// Reads every segment of `plan` (from `segments_dir/<chain>/`) once, opening sealed ones with
/// `identity`.
pub(super) fn scan(
    plan: &ReplayPlan,
    target: Target,
    segments_dir: &Path,
    identity: Option<&Identity>,
) -> Result<Scan, ReplayError> {
    let base = &plan.base;
    // The plan's revision is exact: a time target was mapped to one before the base was chosen.
    let stop_at = plan.stop_at;
    let mut target_ms = match target {
        Target::Time(ms) => ms,
        Target::Revision(_) => base.taken_ms,
    };
    let (mut max_ops, mut max_bytes, mut max_key) = (0usize, 0usize, 0usize);
    let mut s = Scan {
        stop_at,
        target_ms,
        limits: RequestLimits::default(),
        leases: HashMap::new(),
        revisions: 0,
        events: 0,
        unchecked: 0,
    };
    for record in &plan.segments {
        let segment = read_segment(segments_dir, record, identity)?;
        let applied = |rev: i64| rev > base.revision && rev <= stop_at;
        for changes in segment.revisions.iter().filter(|c| applied(c.revision)) {
            s.revisions += 1;
            s.events += changes.events.len() as u64;
            s.unchecked += changes.events.iter().filter(|e| e.prev == PrevState::NotCaptured).count() as u64;
            max_ops = max_ops.max(changes.events.len());
            max_bytes = max_bytes.max(changes.payload_bytes() + OP_OVERHEAD * changes.events.len());
            max_key = max_key.max(changes.events.iter().map(|e| e.key.len()).max().unwrap_or(0));
            if changes.revision == stop_at && matches!(target, Target::Revision(_)) {
                target_ms = changes.observed_ms;
            }
        }
        for lease in segment.leases.iter().filter(|l| applied(l.revision)) {
            let newer = s.leases.get(&lease.id).is_none_or(|o| o.revision <= lease.revision);
            if newer {
                s.leases.insert(lease.id, *lease);
            }
        }
    }
    s.target_ms = target_ms;
    s.limits = limits(max_ops, max_bytes, max_key);
    Ok(s)
}

/// The private etcd's limits for transactions of at most `ops` operations and `bytes` bytes
/// (with keys of at most `key` bytes for the guard's compares), with a quarter to spare, and
/// never below etcd's defaults.
fn limits(ops: usize, bytes: usize, key: usize) -> RequestLimits {
    let default = RequestLimits::default();
    let guard = MAX_GUARD_COMPARES * (key + OP_OVERHEAD);
    RequestLimits {
        max_txn_ops: default.max_txn_ops.max((ops.max(MAX_GUARD_COMPARES) * 5).div_ceil(4)),
        max_request_bytes: default.max_request_bytes.max(((bytes + guard) * 5).div_ceil(4) + 64 * 1024),
    }
}

/// The last revision of `record`'s segment in `segments_dir` observed at or before `ms` (a time
/// target's revision, for the plan), the segment checked against its record first and opened
/// with `identity` when sealed.
pub fn last_observed_by(
    segments_dir: &Path,
    record: &SegmentRecord,
    ms: i64,
    identity: Option<&Identity>,
) -> Result<Option<i64>, String> {
    Ok(read_segment(segments_dir, record, identity).map_err(|e| e.to_string())?.last_revision_observed_by(ms))
}

/// Reads the segment of `record` from `segments_dir/<chain>/`, checks it against the record's
/// sha256 (of the stored bytes: no key needed), then opens it with `identity` when sealed and
/// decodes it.
pub(super) fn read_segment(
    segments_dir: &Path,
    record: &SegmentRecord,
    identity: Option<&Identity>,
) -> Result<Segment, ReplayError> {
    let name = format!("{}/{}", record.chain, record.segment_name());
    let stored =
        std::fs::read(segments_dir.join(&name)).map_err(|source| ReplayError::Read { name: name.clone(), source })?;
    if let Err(found) = record.check_stored(&stored) {
        return Err(ReplayError::Checksum { name, expected: record.sha256.clone(), found });
    }
    Ok(Segment::from_stored(&name, &stored, SEGMENT_LIMIT as usize, identity)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_cover_the_largest_revision_and_never_go_below_etcds_defaults() {
        assert_eq!(limits(3, 1000, 40), RequestLimits::default());
        let big = limits(300, 300 * 1200, 60);
        assert!(big.max_txn_ops >= 300 + 300 / 4, "{big:?}");
        assert!(big.max_request_bytes >= 300 * 1200 + 300 * 64, "{big:?}");
        let large_value = limits(1, 1_400_000 + 64, 20);
        assert!(large_value.max_request_bytes > RequestLimits::default().max_request_bytes, "{large_value:?}");
        assert!(large_value.max_request_bytes >= 1_400_000 * 5 / 4, "{large_value:?}");
    }
}
