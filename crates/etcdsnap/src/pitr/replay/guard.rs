//! The guard of a revision sent before the one before it is answered.
//!
//! The replay keeps many revisions in flight, and etcd runs each request in its own goroutine,
//! so it may evaluate them in another order than they were sent. Revision R's transaction
//! therefore carries compares (its guard) that hold exactly when the replayed etcd is at
//! revision R-1: arriving early, it fails and changes nothing, and is sent again. The guard
//! is built from what the revisions before R changed:
//!
//! - R-1 put a key `k`: `mod_revision(k) == R-1`. It is false until R-1 is applied, and stays
//!   true until a later revision changes `k`, which cannot be applied before R.
//! - R-1 only deleted keys: a deleted key being absent could also be true long before R-1 (the
//!   key may not have been created yet). So the guard reaches back to the nearest revision P
//!   that put a key `k` the revisions after it left alone, and asks `mod_revision(k) == P` and,
//!   for each delete-only revision between P and R, that one key it deleted is absent
//!   (`version == 0`). At P every such key exists (a delete event is only made for a key that
//!   exists, and delete-only revisions create nothing), so the guard is false at P and at every
//!   revision before R-1, and true at R-1.
//!
//! Beyond [`MAX_DELETE_ONLY_RUN`] delete-only revisions in a row, or with no such `k`, there is
//! no guard: the revision waits until its predecessor is answered, and is sent when etcd is known
//! to be at R-1.

use etcd_client::{Compare, CompareOp};
use etcdsnap_storage::pitr::{EventKind, RevisionChanges};
use std::collections::VecDeque;

/// How many delete-only revisions in a row a guard may span (one compare each).
pub(super) const MAX_DELETE_ONLY_RUN: usize = 8;
/// The most compares a guard holds.
pub(super) const MAX_GUARD_COMPARES: usize = MAX_DELETE_ONLY_RUN + 1;
/// How many of a revision's put keys are kept as candidates.
const PUT_CANDIDATES: usize = 4;

/// What a guard needs to know of one revision.
struct Mark {
    revision: i64,
    /// Up to [`PUT_CANDIDATES`] keys it put.
    puts: Vec<Vec<u8>>,
    /// Every key it deleted, when it put none.
    deleted: Vec<Vec<u8>>,
}

/// The revisions sent last, newest at the back.
#[derive(Default)]
pub(super) struct History {
    marks: VecDeque<Mark>,
}

/// A guard, as plain facts (turned into etcd compares by [`Guard::compares`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Guard {
    /// `mod_revision(key) == revision`.
    pub put: (Vec<u8>, i64),
    /// Each of these keys is absent.
    pub absent: Vec<Vec<u8>>,
}

impl Guard {
    pub fn compares(&self) -> Vec<Compare> {
        let (key, revision) = &self.put;
        let mut c = vec![Compare::mod_revision(key.clone(), CompareOp::Equal, *revision)];
        c.extend(self.absent.iter().map(|k| Compare::version(k.clone(), CompareOp::Equal, 0)));
        c
    }
}

impl History {
    /// Remembers `changes`, the revision sent after the last one remembered.
    pub fn record(&mut self, changes: &RevisionChanges) {
        let puts: Vec<Vec<u8>> = changes
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Put)
            .take(PUT_CANDIDATES)
            .map(|e| e.key.clone())
            .collect();
        let deleted = if puts.is_empty() { changes.events.iter().map(|e| e.key.clone()).collect() } else { Vec::new() };
        self.marks.push_back(Mark { revision: changes.revision, puts, deleted });
        while self.marks.len() > MAX_DELETE_ONLY_RUN + 1 {
            self.marks.pop_front();
        }
    }

    /// The guard of the revision after the last one remembered: true exactly when etcd is at
    /// that last one. None when no guard can be built from what is remembered.
    pub fn guard(&self) -> Option<Guard> {
        let mut absent: Vec<Vec<u8>> = Vec::new();
        let mut deleted_since: Vec<&[u8]> = Vec::new();
        for mark in self.marks.iter().rev() {
            if mark.puts.is_empty() {
                if absent.len() == MAX_DELETE_ONLY_RUN {
                    return None;
                }
                absent.push(mark.deleted.first()?.clone());
                deleted_since.extend(mark.deleted.iter().map(Vec::as_slice));
                continue;
            }
            let key = mark.puts.iter().find(|k| !deleted_since.contains(&k.as_slice()))?;
            return Some(Guard { put: (key.clone(), mark.revision), absent });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcdsnap_storage::pitr::{PitrEvent, PrevState};
    use std::collections::HashMap;

    fn event(kind: EventKind, key: u8, revision: i64) -> PitrEvent {
        PitrEvent {
            kind,
            key: vec![key],
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: 0,
            prev: PrevState::NotCaptured,
        }
    }

    /// xorshift: the same seed makes the same history.
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// The keys that exist, each with its mod revision and version.
    type State = HashMap<u8, (i64, i64)>;

    /// A history over 6 keys from revision 1 (etcd's rule: a delete only of a key that exists),
    /// with long runs of delete-only revisions, and every state it passes through.
    fn history(seed: u64, len: i64) -> (Vec<RevisionChanges>, Vec<State>) {
        let mut seed = seed | 1;
        let mut state = State::new();
        let (mut revisions, mut states) = (Vec::new(), vec![state.clone()]);
        for revision in 1..=len {
            let delete_only = next(&mut seed).is_multiple_of(3) && !state.is_empty();
            let mut events = Vec::new();
            let mut used = Vec::new();
            for _ in 0..1 + next(&mut seed) % 3 {
                let key = (next(&mut seed) % 6) as u8;
                if used.contains(&key) {
                    continue;
                }
                if delete_only || (state.contains_key(&key) && next(&mut seed).is_multiple_of(4)) {
                    if state.remove(&key).is_some() {
                        events.push(event(EventKind::Delete, key, revision));
                        used.push(key);
                    }
                } else {
                    let version = state.get(&key).map_or(1, |(_, v)| v + 1);
                    state.insert(key, (revision, version));
                    events.push(event(EventKind::Put, key, revision));
                    used.push(key);
                }
            }
            if events.is_empty() {
                let key = *state.keys().next().unwrap_or(&0);
                let version = state.get(&key).map_or(1, |(_, v)| v + 1);
                state.insert(key, (revision, version));
                events.push(event(EventKind::Put, key, revision));
            }
            revisions.push(RevisionChanges { revision, observed_ms: 0, events });
            states.push(state.clone());
        }
        (revisions, states)
    }

    fn holds(guard: &Guard, state: &State) -> bool {
        let (key, revision) = &guard.put;
        let put = state.get(&key[0]).is_some_and(|(m, _)| m == revision);
        put && guard.absent.iter().all(|k| !state.contains_key(&k[0]))
    }

    #[test]
    fn a_guard_holds_exactly_at_the_revision_before_its_own() {
        let mut guarded = 0;
        for seed in 1..200u64 {
            let (revisions, states) = history(seed * 7919, 60);
            let mut h = History::default();
            for r in &revisions {
                // The guard of r, from the revisions before it, against every state up to r-1.
                if let Some(guard) = h.guard() {
                    guarded += 1;
                    assert!(guard.absent.len() <= MAX_DELETE_ONLY_RUN && guard.compares().len() <= MAX_GUARD_COMPARES);
                    for (s, state) in states.iter().enumerate().take(r.revision as usize) {
                        let expected = s as i64 == r.revision - 1;
                        assert_eq!(
                            holds(&guard, state),
                            expected,
                            "seed {seed}: guard of {} at {s}: {guard:?}",
                            r.revision
                        );
                    }
                }
                h.record(r);
            }
        }
        assert!(guarded > 8_000, "too few revisions had a guard: {guarded}");
    }

    #[test]
    fn a_long_run_of_delete_only_revisions_has_no_guard() {
        let mut h = History::default();
        h.record(&RevisionChanges { revision: 1, observed_ms: 0, events: vec![event(EventKind::Put, 9, 1)] });
        for revision in 2..2 + MAX_DELETE_ONLY_RUN as i64 {
            h.record(&RevisionChanges {
                revision,
                observed_ms: 0,
                events: vec![event(EventKind::Delete, 100 + revision as u8, revision)],
            });
            assert!(h.guard().is_some(), "after {revision}");
        }
        let next_revision = 2 + MAX_DELETE_ONLY_RUN as i64;
        h.record(&RevisionChanges {
            revision: next_revision,
            observed_ms: 0,
            events: vec![event(EventKind::Delete, 99, next_revision)],
        });
        assert_eq!(h.guard(), None);
        // The put key deleted meanwhile is no witness either.
        let mut h = History::default();
        h.record(&RevisionChanges { revision: 1, observed_ms: 0, events: vec![event(EventKind::Put, 9, 1)] });
        h.record(&RevisionChanges { revision: 2, observed_ms: 0, events: vec![event(EventKind::Delete, 9, 2)] });
        assert_eq!(h.guard(), None);
        assert_eq!(History::default().guard(), None);
    }
}
