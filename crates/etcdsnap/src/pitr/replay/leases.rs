//! Leases during a replay: which TTL a lease the base lacks is granted with, and the renewals
//! that keep every lease of the replayed etcd alive until the replay ends.
//!
//! A lease first used after the base is granted, with its ID, just before the first put
//! attached to it, for the time it had left at the target: the capture asked etcd for its
//! remaining TTL when it first saw it in a segment ([`LeaseObservation`]), and the time from
//! that answer to the target is taken off. A lease that had run out by the target (its keys'
//! deletions are among the captured revisions, or its owner renewed it, which no watch shows)
//! is granted for its full TTL. A lease the capture did not observe (a segment of the previous
//! release, or etcd did not answer) is granted for [`REPLAY_LEASE_TTL`].
//!
//! etcd would expire a lease during a long replay (a kube-apiserver's 15 s lease, restored from
//! the base, runs out long before a replay of hours), deleting its keys and making a revision
//! the capture never saw. So every lease the replayed etcd holds is renewed at a third of its
//! TTL from the start of the replay to its end ([`KeepAlive`]); a renewal restarts a lease's
//! TTL, which for a lease the replay granted is its time left at the target.

use super::ReplayError;
use etcd_client::{LeaseClient, LeaseKeepAliveStream, LeaseKeeper};
use etcdsnap_storage::pitr::LeaseObservation;
use futures::StreamExt as _;
use futures::stream::SelectAll;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// TTL, in seconds, of a lease the replay grants without an observation: an hour, the TTL of
/// Kubernetes events, the most common leased keys.
pub const REPLAY_LEASE_TTL: i64 = 3600;
/// The shortest wait between two renewals of one lease, and how often renewals are due.
const RENEW_TICK: Duration = Duration::from_millis(200);

/// The TTL, in seconds, to grant a lease with for a replay whose target was at `target_ms`.
pub(super) fn ttl_at_target(observed: Option<&LeaseObservation>, target_ms: i64) -> i64 {
    let Some(o) = observed else { return REPLAY_LEASE_TTL };
    // Gone when asked: it had at most until then.
    let left_then_ms = o.remaining_ttl.max(0).saturating_mul(1000);
    let left_ms = left_then_ms - (target_ms - o.observed_ms);
    if left_ms > 0 {
        (left_ms + 999) / 1000
    } else if o.granted_ttl > 0 {
        o.granted_ttl
    } else {
        1
    }
}

/// Renews leases of the replayed etcd until stopped. Runs as a task of the replay's runtime;
/// a failed renewal is kept and fails the replay ([`KeepAlive::check`]).
pub(super) struct KeepAlive {
    add: mpsc::UnboundedSender<i64>,
    failure: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

struct Renewal {
    keeper: LeaseKeeper,
    ttl: Duration,
    due: Instant,
}

impl KeepAlive {
    /// Starts renewing `leases` (those of the base) at once.
    pub fn start(client: LeaseClient, leases: Vec<i64>) -> KeepAlive {
        let (add, added) = mpsc::unbounded_channel();
        for id in leases {
            let _ = add.send(id);
        }
        let failure = Arc::new(Mutex::new(None));
        let task = tokio::spawn(renew(client, added, failure.clone()));
        KeepAlive { add, failure, task }
    }

    /// Renews `id` too, from now on.
    pub fn add(&self, id: i64) {
        let _ = self.add.send(id);
    }

    /// Err when a renewal failed: a lease may have run out, and the replay cannot be trusted.
    pub fn check(&self) -> Result<(), ReplayError> {
        match self.failure.lock().map(|f| f.clone()) {
            Ok(None) => Ok(()),
            Ok(Some(message)) => Err(ReplayError::Leases(message)),
            Err(_) => Err(ReplayError::Leases("the renewals stopped".into())),
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn renew(mut client: LeaseClient, mut added: mpsc::UnboundedReceiver<i64>, failure: Arc<Mutex<Option<String>>>) {
    let fail = |message: String| {
        if let Ok(mut f) = failure.lock() {
            f.get_or_insert(message);
        }
    };
    let mut renewals: HashMap<i64, Renewal> = HashMap::new();
    let mut answers: SelectAll<LeaseKeepAliveStream> = SelectAll::new();
    let mut tick = tokio::time::interval(RENEW_TICK);
    loop {
        tokio::select! {
            Some(id) = added.recv() => match client.keep_alive(id).await {
                // The first renewal is made by opening the stream; its answer is the lease's TTL.
                Ok((keeper, stream)) => {
                    let ttl = Duration::from_secs(1);
                    renewals.insert(id, Renewal { keeper, ttl, due: Instant::now() + RENEW_TICK });
                    answers.push(stream);
                }
                // Run out already: its keys are gone, which the next revision applied reveals.
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => {}
                Err(e) => return fail(format!("cannot renew lease {id:x}: {e}")),
            },
            _ = tick.tick() => {
                let now = Instant::now();
                for (id, r) in renewals.iter_mut().filter(|(_, r)| r.due <= now) {
                    if let Err(e) = r.keeper.keep_alive().await {
                        return fail(format!("cannot renew lease {id:x}: {e}"));
                    }
                    r.due = now + (r.ttl / 3).max(RENEW_TICK);
                }
            }
            Some(answer) = answers.next() => match answer {
                Ok(a) if a.ttl() > 0 => {
                    if let Some(r) = renewals.get_mut(&a.id()) {
                        r.ttl = Duration::from_secs(a.ttl() as u64);
                    }
                }
                Ok(a) => {
                    renewals.remove(&a.id());
                }
                Err(e) => return fail(format!("lease renewals failed: {e}")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(observed_ms: i64, granted_ttl: i64, remaining_ttl: i64) -> LeaseObservation {
        LeaseObservation { id: 7, revision: 10, observed_ms, granted_ttl, remaining_ttl }
    }

    #[test]
    fn a_lease_is_granted_with_the_time_it_had_left_at_the_target() {
        // A 15 s lease seen with 14 s left at t = 100 s; the target was at 105.5 s: 8.5 s left.
        assert_eq!(ttl_at_target(Some(&seen(100_000, 15, 14)), 105_500), 9);
        // The target before the observation: more time left then.
        assert_eq!(ttl_at_target(Some(&seen(100_000, 15, 14)), 99_000), 15);
        // Run out by the target: its full TTL (renewed by its owner, or key-less by then).
        assert_eq!(ttl_at_target(Some(&seen(100_000, 15, 14)), 130_000), 15);
        // Gone when asked, asked after the target: at most until then.
        assert_eq!(ttl_at_target(Some(&seen(100_000, 0, -1)), 97_500), 3);
        assert_eq!(ttl_at_target(Some(&seen(100_000, 0, -1)), 100_000), 1);
        // Never observed: an hour.
        assert_eq!(ttl_at_target(None, 100_000), REPLAY_LEASE_TTL);
    }
}
