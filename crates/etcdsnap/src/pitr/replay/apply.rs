//! The replay's second pass: the captured revisions applied to the private etcd, each as one
//! transaction, many in flight, each proven against the capture.
//!
//! **Order.** Up to [`WINDOW`] transactions are in flight; once the window is full, the next
//! ones wait until half of it is answered and go together. Each carries a guard ([`guard`])
//! that holds only when etcd is at the revision before its own, so one that etcd evaluates too
//! early fails and changes nothing. After a failed guard nothing new is sent until every answer
//! is in; then the failed revisions are sent again, in order. A revision without a guard is
//! sent once its predecessor is answered. Every answer must name exactly the revision its
//! transaction was meant to make; a guard that fails although its predecessor was answered
//! means etcd changed by itself (a lease ran out), and the replay stops. A transport error
//! stops the replay too: a request whose answer was lost is never sent again, since it may
//! have been applied.
//!
//! Requests leave in the order they were made because the replay runs on a runtime of its own
//! with one thread. etcd runs each request in a goroutine of its own, and Go runs the newest
//! goroutine first: the last request of every burst would overtake the others. So every burst
//! ends with a read that needs no consensus (a serializable count of one key) to take that
//! place. And the private etcd runs Go code on one thread, so no second thread picks up a
//! later request first. None of this is needed for correctness, which the guards carry alone;
//! together they keep almost every guard true the first time (about 98% of the revisions of
//! `bench/pitr.sh`).
//!
//! **Proof.** Each operation asks for the key's previous state (`prev_kv`), which must have the
//! digest the capture recorded (or be absent where the capture saw none): any difference fails
//! the replay, naming the revision and the key, before anything is installed. Events whose
//! previous state was not captured (segments of the previous release) are applied unchecked.

use super::ReplayError;
use super::guard::{Guard, History};
use super::leases::{KeepAlive, ttl_at_target};
use etcd_client::proto::{PbKeyValue, PbTxnOpResponse};
use etcd_client::{
    DeleteOptions, GetOptions, KvClient, LeaseClient, LeaseGrantOptions, PutOptions, Txn, TxnOp, TxnResponse,
};
use etcdsnap_storage::pitr::{EventKind, LeaseObservation, PitrEvent, PrevDigest, PrevState, RevisionChanges};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Transactions in flight at most.
pub(super) const WINDOW: usize = 32;
/// Once the window is full, new transactions wait until no more than this many are in flight,
/// then go as one burst: etcd takes a burst's proposals in one batch, and one read ends it.
const REFILL_AT: usize = 16;
/// The key of the read that ends each burst (any key does; this one is never a real one).
const ORDER_KEY: &[u8] = b"\0etcdsnap-replay-order";

/// What the pipeline did.
#[derive(Debug, Clone, Default)]
pub(super) struct Applied {
    pub revisions: u64,
    pub events: u64,
    /// Events whose previous state matched the capture's.
    pub proven: u64,
    pub leases_granted: u64,
    /// Leases granted without an observation (for [`super::leases::REPLAY_LEASE_TTL`]).
    pub leases_unobserved: u64,
    /// Transactions sent again after a failed guard.
    pub resent: u64,
}

struct Pending {
    changes: RevisionChanges,
    in_flight: bool,
    /// etcd was known to be at the revision before when it was sent: its guard cannot fail.
    sent_at_predecessor: bool,
}

enum Answer {
    Txn(i64, Result<TxnResponse, etcd_client::Error>),
    Order(Result<(), etcd_client::Error>),
}

/// The leases of the replayed etcd, and what is needed to grant the others.
pub(super) struct Leases {
    pub client: LeaseClient,
    pub known: HashSet<i64>,
    pub observed: HashMap<i64, LeaseObservation>,
    pub target_ms: i64,
    pub keep_alive: KeepAlive,
}

pub(super) struct Pipeline {
    kv: KvClient,
    leases: Leases,
    /// The newest revision etcd confirmed applying (every one before it is applied too).
    confirmed: i64,
    /// The newest revision sent for the first time.
    sent: i64,
    pending: BTreeMap<i64, Pending>,
    answers: FuturesUnordered<BoxFuture<'static, Answer>>,
    history: History,
    /// A guard failed: nothing is sent until every answer is in.
    draining: bool,
    /// Requests were sent since the last burst ended.
    burst: bool,
    /// New transactions may be sent: set once no more than [`REFILL_AT`] are in flight, cleared
    /// once [`WINDOW`] are.
    refilling: bool,
    pub applied: Applied,
}

impl Pipeline {
    pub fn new(kv: KvClient, leases: Leases, base_revision: i64) -> Pipeline {
        Pipeline {
            kv,
            leases,
            confirmed: base_revision,
            sent: base_revision,
            pending: BTreeMap::new(),
            answers: FuturesUnordered::new(),
            history: History::default(),
            draining: false,
            burst: false,
            refilling: true,
            applied: Applied::default(),
        }
    }

    /// Sends `changes`, the revision after the last one pushed, once it may be sent.
    pub async fn push(&mut self, changes: RevisionChanges) -> Result<(), ReplayError> {
        let guard = self.history.guard();
        loop {
            self.resend()?;
            if self.pending.len() <= REFILL_AT {
                self.refilling = true;
            }
            if self.pending.len() >= WINDOW {
                self.refilling = false;
            }
            let quiet = !self.draining && self.pending.values().all(|p| p.in_flight);
            if quiet && self.refilling && (guard.is_some() || self.confirmed == self.sent) {
                break;
            }
            self.next_answer().await?;
        }
        self.grant_leases(&changes).await?;
        self.history.record(&changes);
        self.sent = changes.revision;
        self.send(changes, guard);
        Ok(())
    }

    /// Waits until every revision pushed is applied; stops the lease renewals.
    pub async fn finish(mut self) -> Result<Applied, ReplayError> {
        while !self.pending.is_empty() {
            self.resend()?;
            self.next_answer().await?;
        }
        self.leases.keep_alive.check()?;
        self.leases.keep_alive.stop();
        Ok(self.applied)
    }

    fn send(&mut self, changes: RevisionChanges, guard: Option<Guard>) {
        let revision = changes.revision;
        let sent_at_predecessor = self.confirmed == revision - 1;
        let txn = transaction(&changes, guard.as_ref());
        let mut kv = self.kv.clone();
        self.answers.push(async move { Answer::Txn(revision, kv.txn(txn).await) }.boxed());
        self.pending.insert(revision, Pending { changes, in_flight: true, sent_at_predecessor });
        self.burst = true;
    }

    /// Once every answer is in after a failed guard, sends the failed revisions again, in
    /// order: the first at once (etcd is at the revision before it), each next one guarded while
    /// the one before it is in flight, or later.
    fn resend(&mut self) -> Result<(), ReplayError> {
        if self.draining && self.pending.values().any(|p| p.in_flight) {
            return Ok(());
        }
        self.draining = false;
        let failed: Vec<i64> = self.pending.iter().filter(|(_, p)| !p.in_flight).map(|(r, _)| *r).collect();
        for revision in failed {
            let guard = guard_of(&self.pending, revision);
            let before_in_flight = self.pending.get(&(revision - 1)).is_some_and(|p| p.in_flight);
            if revision != self.confirmed + 1 && !(before_in_flight && guard.is_some()) {
                break;
            }
            let Some(changes) = self.pending.get(&revision).map(|p| p.changes.clone()) else { break };
            self.applied.resent += 1;
            self.send(changes, guard);
        }
        if !self.pending.is_empty() && self.pending.values().all(|p| !p.in_flight) && self.answers.is_empty() {
            // Cannot happen: once every answer is in, the first failed revision follows the last
            // confirmed one. Said rather than waited for.
            return Err(ReplayError::Apply {
                revision: self.confirmed + 1,
                message: "nothing left to wait for".into(),
            });
        }
        Ok(())
    }

    async fn next_answer(&mut self) -> Result<(), ReplayError> {
        if std::mem::take(&mut self.burst) {
            let mut kv = self.kv.clone();
            let opts = GetOptions::new().with_serializable().with_count_only();
            self.answers.push(async move { Answer::Order(kv.get(ORDER_KEY, Some(opts)).await.map(|_| ())) }.boxed());
        }
        let Some(answer) = self.answers.next().await else { return Ok(()) };
        self.leases.keep_alive.check()?;
        match answer {
            Answer::Order(result) => {
                result.map_err(|e| ReplayError::Apply { revision: self.confirmed, message: e.to_string() })
            }
            Answer::Txn(revision, result) => {
                let resp = result.map_err(|e| ReplayError::Apply { revision, message: e.to_string() })?;
                self.answered(revision, &resp)
            }
        }
    }

    fn answered(&mut self, revision: i64, resp: &TxnResponse) -> Result<(), ReplayError> {
        let Some(pending) = self.pending.get_mut(&revision) else {
            return Err(ReplayError::Apply { revision, message: "an answer to a request not sent".into() });
        };
        if !resp.succeeded() {
            if pending.sent_at_predecessor {
                let found = resp.header().map(|h| h.revision()).unwrap_or_default();
                return Err(ReplayError::GuardFailed { revision, found });
            }
            pending.in_flight = false;
            self.draining = true;
            return Ok(());
        }
        let found = resp.header().map(|h| h.revision()).unwrap_or_default();
        if found != revision {
            return Err(ReplayError::Drift { revision, found });
        }
        let Some(done) = self.pending.remove(&revision) else { return Ok(()) };
        self.applied.proven += prove(&done.changes, resp)?;
        self.applied.revisions += 1;
        self.applied.events += done.changes.events.len() as u64;
        self.confirmed = self.confirmed.max(revision);
        Ok(())
    }

    /// Grants the leases `changes` attaches keys to that etcd does not have yet, and renews
    /// them from then on.
    async fn grant_leases(&mut self, changes: &RevisionChanges) -> Result<(), ReplayError> {
        let l = &mut self.leases;
        for lease in changes.events.iter().filter(|e| e.kind == EventKind::Put && e.lease != 0).map(|e| e.lease) {
            if !l.known.insert(lease) {
                continue;
            }
            let observed = l.observed.get(&lease);
            let ttl = ttl_at_target(observed, l.target_ms);
            let failed = |e: etcd_client::Error| ReplayError::Lease {
                revision: changes.revision,
                lease,
                message: e.to_string(),
            };
            l.client.grant(ttl, Some(LeaseGrantOptions::new().with_id(lease))).await.map_err(failed)?;
            l.keep_alive.add(lease);
            self.applied.leases_granted += 1;
            self.applied.leases_unobserved += u64::from(observed.is_none());
        }
        Ok(())
    }
}

/// The guard of a failed revision sent again, from the run of pending revisions just before it
/// (in flight again); None when they do not hold one.
fn guard_of(pending: &BTreeMap<i64, Pending>, revision: i64) -> Option<Guard> {
    let mut run: Vec<&Pending> = Vec::new();
    for (r, p) in pending.range(..revision).rev() {
        if *r != revision - 1 - run.len() as i64 {
            break;
        }
        run.push(p);
    }
    let mut history = History::default();
    for p in run.iter().rev() {
        history.record(&p.changes);
    }
    history.guard()
}

/// The transaction of one revision: its guard, then every event in order, each asking for the
/// key's previous state when the capture recorded one.
fn transaction(changes: &RevisionChanges, guard: Option<&Guard>) -> Txn {
    let prove = changes.events.iter().any(|e| e.prev != PrevState::NotCaptured);
    let ops: Vec<TxnOp> = changes
        .events
        .iter()
        .map(|e| match e.kind {
            EventKind::Delete => TxnOp::delete(e.key.clone(), prove.then(|| DeleteOptions::new().with_prev_key())),
            EventKind::Put => {
                let mut opts = PutOptions::new();
                if e.lease != 0 {
                    opts = opts.with_lease(e.lease);
                }
                if prove {
                    opts = opts.with_prev_key();
                }
                TxnOp::put(e.key.clone(), e.value.clone(), Some(opts))
            }
        })
        .collect();
    let txn = Txn::new();
    let txn = match guard {
        Some(g) => txn.when(g.compares()),
        None => txn,
    };
    txn.and_then(ops)
}

/// Compares each event's captured previous state with the one etcd returned; the number of
/// events proven.
fn prove(changes: &RevisionChanges, resp: &TxnResponse) -> Result<u64, ReplayError> {
    let responses = &resp.0.responses;
    if responses.len() != changes.events.len() {
        let message = format!("{} answers to {} operations", responses.len(), changes.events.len());
        return Err(ReplayError::Apply { revision: changes.revision, message });
    }
    let mut proven = 0;
    for (event, op) in changes.events.iter().zip(responses) {
        let found = match &op.response {
            Some(PbTxnOpResponse::ResponsePut(p)) => p.prev_kv.as_ref(),
            Some(PbTxnOpResponse::ResponseDeleteRange(d)) => d.prev_kvs.first(),
            _ => None,
        };
        if check(event, found)? {
            proven += 1;
        }
    }
    Ok(proven)
}

/// Whether `event`'s captured previous state is `found`; Ok(false) when there is nothing to
/// compare.
fn check(event: &PitrEvent, found: Option<&PbKeyValue>) -> Result<bool, ReplayError> {
    let digest = found.map(|kv| PrevDigest::of(&kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease));
    let same = match (event.prev, digest) {
        (PrevState::NotCaptured, _) => return Ok(false),
        (PrevState::Absent, None) => true,
        (PrevState::Present(expected), Some(d)) => expected == d,
        _ => false,
    };
    if same {
        return Ok(true);
    }
    let expected = match event.prev {
        PrevState::Present(d) => format!("present (state digest {d})"),
        _ => "absent".to_string(),
    };
    let found = match (found, digest) {
        (Some(kv), Some(d)) => format!(
            "present (create revision {}, mod revision {}, version {}, lease {:x}; state digest {d})",
            kv.create_revision, kv.mod_revision, kv.version, kv.lease
        ),
        _ => "absent".to_string(),
    };
    Err(ReplayError::Diverged { revision: event.mod_revision, key: super::show_key(&event.key), expected, found })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, prev: PrevState) -> PitrEvent {
        PitrEvent {
            kind: EventKind::Put,
            key: key.into(),
            value: b"v".to_vec(),
            create_revision: 5,
            mod_revision: 9,
            version: 2,
            lease: 0,
            prev,
        }
    }

    fn kv(value: &[u8], mod_revision: i64) -> PbKeyValue {
        PbKeyValue { key: b"k".to_vec(), create_revision: 5, mod_revision, version: 1, value: value.to_vec(), lease: 0 }
    }

    #[test]
    fn a_previous_state_other_than_the_captured_one_names_revision_and_key() {
        let before = kv(b"old", 5);
        let digest = PrevDigest::of(b"old", 5, 5, 1, 0);
        assert!(check(&put("/k", PrevState::Present(digest)), Some(&before)).unwrap());
        assert!(check(&put("/k", PrevState::Absent), None).unwrap());
        assert!(!check(&put("/k", PrevState::NotCaptured), Some(&before)).unwrap(), "nothing to compare");
        let err = check(&put("/registry/x", PrevState::Present(digest)), Some(&kv(b"other", 5))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("revision 9") && text.contains("/registry/x") && text.contains("mod revision 5"),
            "{text}"
        );
        let err = check(&put("/registry/x", PrevState::Absent), Some(&before)).unwrap_err();
        assert!(err.to_string().contains("absent"), "{err}");
        let err = check(&put("/registry/x", PrevState::Present(digest)), None).unwrap_err();
        assert!(matches!(err, ReplayError::Diverged { revision: 9, .. }), "{err}");
    }
}
