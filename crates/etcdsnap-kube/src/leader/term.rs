//! A leader's term: cloned into every task that does leader-only work, checked right before each
//! of its writes, and ended (its token cancelled) at its deadline on the holder's own monotonic
//! clock or as soon as the elector sees another holder. The elector (`leader/mod.rs`) starts a
//! term when it takes the Lease and moves its deadline forward on every successful renewal.

use super::LEADER_LEASE;
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
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
    started: Instant,
    /// The deadline, as nanoseconds after `started` (lock-free, only ever moved forward).
    valid_for_nanos: AtomicU64,
    ended: CancellationToken,
}

impl LeaderTerm {
    pub(super) fn start(identity: &str, valid_until: Instant) -> LeaderTerm {
        let started = Instant::now();
        let term = LeaderTerm(Arc::new(TermState {
            identity: identity.to_string(),
            started,
            valid_for_nanos: AtomicU64::new(0),
            ended: CancellationToken::new(),
        }));
        term.extend(valid_until);
        term
    }

    /// A term that is valid until `valid_for` from now and never renewed: for tests and for
    /// callers that hold leadership by other means.
    pub fn fixed(identity: &str, valid_for: Duration) -> LeaderTerm {
        LeaderTerm::start(identity, Instant::now() + valid_for)
    }

    pub(super) fn extend(&self, valid_until: Instant) {
        let nanos = valid_until.saturating_duration_since(self.0.started).as_nanos().min(u128::from(u64::MAX)) as u64;
        self.0.valid_for_nanos.fetch_max(nanos, Ordering::SeqCst);
    }

    /// Until when this term lasts unless renewed.
    pub fn valid_until(&self) -> Instant {
        self.0.started + Duration::from_nanos(self.0.valid_for_nanos.load(Ordering::SeqCst))
    }

    pub fn identity(&self) -> &str {
        &self.0.identity
    }

    /// Ok while this term lasts. Call right before every leader-only write or delete.
    pub fn check(&self) -> Result<(), LeadershipLost> {
        if self.0.ended.is_cancelled() {
            return Err(self.lost("another holder was seen, or the elector stopped"));
        }
        if Instant::now() >= self.valid_until() {
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
        let until = term.valid_until();
        term.extend(until - Duration::from_secs(5));
        assert_eq!(term.valid_until(), until);
        term.extend(until + Duration::from_secs(5));
        assert_eq!(term.valid_until(), until + Duration::from_secs(5));
        term.end();
        assert!(term.check().unwrap_err().to_string().contains("another holder"));
    }
}
