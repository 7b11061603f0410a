//! A leader's term: cloned into every task that does leader-only work, checked right before each
//! of its writes, and ended (its token cancelled) at its deadline or as soon as the elector sees
//! another holder. The elector (`leader/mod.rs`) starts a term when it takes the Lease and moves
//! its deadline forward on every successful renewal.
//!
//! The deadline is on the boot clock ([`etcdsnap_storage::clock::since_boot`]), which runs on
//! while the process is stopped (SIGSTOP) and while the machine is suspended: a leader that runs
//! again after either finds its term over before it makes any other request.

use super::LEADER_LEASE;
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use etcdsnap_storage::clock::since_boot;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a leader-only write was not made.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "not the leader any more: {identity}'s term on lease {SYSTEM_NAMESPACE}/{LEADER_LEASE} ended ({why}); the leader's duties stopped before this write and the next leader does them"
)]
pub struct LeadershipLost {
    pub identity: String,
    pub why: &'static str,
}

/// One term of leadership: cloned into every task that does leader-only work, checked before
/// each of its writes and deletes, and cancelled when the term ends.
#[derive(Debug, Clone)]
pub struct LeaderTerm(Arc<TermState>);

#[derive(Debug)]
struct TermState {
    identity: String,
    /// The deadline, as nanoseconds since boot (lock-free, only ever moved forward).
    deadline_nanos: AtomicU64,
    ended: CancellationToken,
}

/// How soon [`LeaderTerm::during`] notices a deadline that passed while the process or the
/// machine was stopped (an end by the elector is noticed at once).
const DURING_POLL: Duration = Duration::from_secs(1);

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl LeaderTerm {
    /// A term of `identity` lasting until `deadline` on the boot clock.
    pub(super) fn start(identity: &str, deadline: Duration) -> LeaderTerm {
        LeaderTerm(Arc::new(TermState {
            identity: identity.to_string(),
            deadline_nanos: AtomicU64::new(nanos(deadline)),
            ended: CancellationToken::new(),
        }))
    }

    /// A term that is valid until `valid_for` from now and never renewed: for tests and for
    /// callers that hold leadership by other means.
    pub fn fixed(identity: &str, valid_for: Duration) -> LeaderTerm {
        LeaderTerm::start(identity, since_boot() + valid_for)
    }

    /// Moves the deadline to `deadline` (on the boot clock) if that is later.
    pub(super) fn extend(&self, deadline: Duration) {
        self.0.deadline_nanos.fetch_max(nanos(deadline), Ordering::SeqCst);
    }

    /// The deadline on the boot clock.
    fn deadline(&self) -> Duration {
        Duration::from_nanos(self.0.deadline_nanos.load(Ordering::SeqCst))
    }

    /// How long this term lasts unless renewed (zero once its deadline passed).
    pub fn remaining(&self) -> Duration {
        self.deadline().saturating_sub(since_boot())
    }

    /// Whether the deadline passed (whether or not the term was ended yet).
    pub(super) fn expired(&self) -> bool {
        since_boot() >= self.deadline()
    }

    pub fn identity(&self) -> &str {
        &self.0.identity
    }

    /// Ok while this term lasts. Call right before every leader-only write or delete.
    pub fn check(&self) -> Result<(), LeadershipLost> {
        if self.0.ended.is_cancelled() {
            return Err(self.lost("another holder was seen, or the elector stopped"));
        }
        if self.expired() {
            self.0.ended.cancel();
            return Err(self.lost("not renewed within the renew deadline"));
        }
        Ok(())
    }

    /// Why this term is over (for a pass that was cancelled when it ended).
    pub fn reason(&self) -> LeadershipLost {
        match self.check() {
            Err(lost) => lost,
            Ok(()) => self.lost("still valid"),
        }
    }

    fn lost(&self, why: &'static str) -> LeadershipLost {
        LeadershipLost { identity: self.0.identity.clone(), why }
    }

    /// Cancelled when the term ends: the work done under it stops.
    pub fn ended(&self) -> &CancellationToken {
        &self.0.ended
    }

    /// Resolves when the term is over: ended by the elector, or its deadline passed. Tasks that
    /// wait on this stop within `poll` of a deadline that passed while the process or the
    /// machine was stopped (tokio's timers do not count a suspend; the check does).
    pub async fn over(&self, poll: Duration) {
        while self.check().is_ok() {
            tokio::select! {
                () = self.0.ended.cancelled() => return,
                () = tokio::time::sleep(self.remaining().min(poll)) => {}
            }
        }
    }

    /// Runs `work`, a leader-only request that does not go through the fenced connection (an S3
    /// write), only if the term lasts, and cuts it off (drops it, closing its connection) if the
    /// term ends before it is done. A request already written to the socket before a pause is
    /// not taken back (`fence.rs`).
    pub async fn during<F: Future>(&self, work: F) -> Result<F::Output, LeadershipLost> {
        self.check()?;
        tokio::select! {
            biased;
            () = self.over(DURING_POLL) => Err(self.reason()),
            out = work => Ok(out),
        }
    }

    pub(super) fn end(&self) {
        self.0.ended.cancel();
    }

    /// Whether both are the same term (not merely terms of the same identity).
    pub fn is(&self, other: &LeaderTerm) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_term_fails_its_check_after_its_deadline_and_cancels_its_work() {
        let term = LeaderTerm::fixed("a", Duration::from_millis(50));
        assert!(term.check().is_ok());
        tokio::time::sleep(Duration::from_millis(60)).await;
        let err = term.check().unwrap_err();
        assert!(err.to_string().contains("renew deadline"), "{err}");
        assert!(term.ended().is_cancelled());
    }

    #[test]
    fn a_term_is_extended_only_forward() {
        let term = LeaderTerm::fixed("a", Duration::from_secs(10));
        let until = term.deadline();
        term.extend(until - Duration::from_secs(5));
        assert_eq!(term.deadline(), until);
        term.extend(until + Duration::from_secs(5));
        assert_eq!(term.deadline(), until + Duration::from_secs(5));
        assert!(term.remaining() > Duration::from_secs(14));
        term.end();
        assert!(term.check().unwrap_err().to_string().contains("another holder"));
    }

    #[tokio::test]
    async fn work_during_a_term_is_cut_off_when_the_term_ends() {
        let term = LeaderTerm::fixed("a", Duration::from_secs(60));
        assert_eq!(term.during(async { 7 }).await.unwrap(), 7);
        let ending = term.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            ending.end();
        });
        let started = std::time::Instant::now();
        let cut = term.during(tokio::time::sleep(Duration::from_secs(30))).await;
        assert!(cut.unwrap_err().to_string().contains("another holder"));
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let ran = std::sync::atomic::AtomicBool::new(false);
        let refused = term.during(async { ran.store(true, Ordering::SeqCst) }).await;
        assert!(refused.is_err() && !ran.load(Ordering::SeqCst), "work ran after the term");
    }

    #[tokio::test]
    async fn a_term_is_over_at_its_deadline_or_when_ended() {
        let term = LeaderTerm::fixed("a", Duration::from_millis(80));
        let started = std::time::Instant::now();
        term.over(Duration::from_secs(1)).await;
        assert!(started.elapsed() >= Duration::from_millis(80));
        let term = LeaderTerm::fixed("a", Duration::from_secs(60));
        let ending = term.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            ending.end();
        });
        tokio::time::timeout(Duration::from_secs(5), term.over(Duration::from_secs(1))).await.unwrap();
    }
}
