//! Leader election on the Lease `kube-system/etcdsnap-leader`, judged the way client-go's
//! leader election judges it, so that two nodes can never both do the leader's duties.
//!
//! - Expiry is observed, not computed from stamps: a candidate notes, by its own monotonic
//!   clock, when it first saw the Lease's current version, and takes it over only when that
//!   version stayed unchanged for the Lease's duration. The holder's `renewTime` (another
//!   machine's wall clock) decides nothing, so clock skew cannot hand the Lease to a second node.
//! - Renewal runs in the background ([`LeaderElector::run`]), independent of the work, every
//!   retry period.
//! - Every term has a deadline on the holder's own monotonic clock: the start of the last
//!   successful renewal plus the renew deadline, which is shorter than the Lease duration. A
//!   [`LeaderTerm`] is checked before every leader-only write and delete ([`LeaderTerm::check`]);
//!   past the deadline, or once another holder is seen, the check fails and the term's token is
//!   cancelled, so the running pass stops. Others can take over no earlier than the Lease
//!   duration after that renewal started: the difference is the margin for a write already on
//!   the wire. A process paused by SIGSTOP finds its deadline passed when it resumes (the
//!   monotonic clock runs on while it is stopped).
//! - Every write carries the resourceVersion it was computed from, so two candidates that try at
//!   once cannot both win: the loser gets a 409.
//!
//! kube-lease-manager and kubert's lease module were considered: both decide expiry from the
//! holder's `renewTime` against the local clock (with a skew allowance at best), which is the
//! very thing this module must not do.

use crate::{ApiError, status_is};
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Name of the leader Lease.
pub const LEADER_LEASE: &str = "etcdsnap-leader";
/// The Lease duration of a one-shot command (`etcdsnap reconcile`), which renews it while it
/// works and releases it when done.
pub const COMMAND_LEADER_DURATION: Duration = Duration::from_secs(60);

fn leases(client: &Client) -> Api<Lease> {
    Api::namespaced(client.clone(), SYSTEM_NAMESPACE)
}

fn lease_path() -> String {
    format!("lease {SYSTEM_NAMESPACE}/{LEADER_LEASE}")
}

/// How an election is paced, all derived from the Lease duration as client-go's defaults are
/// (15 s / 10 s / 2 s there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long candidates wait, after the Lease last changed, before they take it over.
    pub lease_duration: Duration,
    /// How long a holder keeps leading without a successful renewal: two thirds of the duration,
    /// leaving a third as the margin for writes in flight.
    pub renew_deadline: Duration,
    /// Time between renewals (and between a candidate's looks).
    pub retry_period: Duration,
}

impl Timing {
    pub fn for_lease(lease_duration: Duration) -> Timing {
        let lease_duration = lease_duration.max(Duration::from_secs(1));
        Timing {
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            retry_period: (lease_duration / 6).clamp(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

/// The Lease as a candidate last saw it, and since when (its own monotonic clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub resource_version: String,
    pub holder: String,
    /// The duration the holder wrote into the Lease (a one-shot command's differs from an
    /// agent's).
    pub duration: Duration,
    pub since: Instant,
}

impl Observation {
    fn of(lease: &Lease, since: Instant) -> Observation {
        let spec = lease.spec.clone().unwrap_or_default();
        Observation {
            resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
            holder: spec.holder_identity.unwrap_or_default(),
            duration: Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64),
            since,
        }
    }
}

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it.
    Create,
    /// This identity holds it: renew it.
    Renew,
    /// Free (released), or unchanged for its whole duration: take it over.
    TakeOver,
    /// Someone else holds it; it can be taken over after `remaining` if it does not change.
    Wait { holder: String, remaining: Duration },
}

/// Decides from the Lease as read now and the previous observation; returns the decision and
/// the observation to keep. Pure: the rules are unit-tested.
pub fn decide(
    lease: Option<&Lease>,
    identity: &str,
    previous: Option<&Observation>,
    now: Instant,
) -> (Decision, Option<Observation>) {
    let Some(lease) = lease else {
        return (Decision::Create, None);
    };
    let mut seen = Observation::of(lease, now);
    if let Some(previous) = previous
        && previous.resource_version == seen.resource_version
    {
        seen.since = previous.since;
    }
    let decision = if seen.holder == identity {
        Decision::Renew
    } else if seen.holder.is_empty() {
        Decision::TakeOver
    } else {
        let unchanged = now.saturating_duration_since(seen.since);
        match seen.duration.checked_sub(unchanged) {
            Some(remaining) if !remaining.is_zero() => Decision::Wait { holder: seen.holder.clone(), remaining },
            _ => Decision::TakeOver,
        }
    };
    (decision, Some(seen))
}

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
    fn start(identity: &str, valid_until: Instant) -> LeaderTerm {
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

    fn extend(&self, valid_until: Instant) {
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

    fn end(&self) {
        self.0.ended.cancel();
    }

    /// Whether both are the same term (not merely terms of the same identity).
    pub fn is(&self, other: &LeaderTerm) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Who leads, as this candidate sees it after a round.
#[derive(Debug, Clone)]
pub enum Role {
    Leader(LeaderTerm),
    Follower { holder: String },
}

impl Role {
    pub fn term(&self) -> Option<&LeaderTerm> {
        match self {
            Role::Leader(t) => Some(t),
            Role::Follower { .. } => None,
        }
    }
}

/// One candidate in the election.
pub struct LeaderElector {
    client: Client,
    identity: String,
    timing: Timing,
    observed: Option<Observation>,
    term: Option<LeaderTerm>,
}

impl LeaderElector {
    /// `identity` names this process in the Lease: the node name for agents.
    pub fn new(client: Client, identity: &str, timing: Timing) -> LeaderElector {
        LeaderElector { client, identity: identity.to_string(), timing, observed: None, term: None }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// One look at the Lease, and at most one write: takes or renews it when the rules allow.
    pub async fn round(&mut self) -> Result<Role, ApiError> {
        let started = Instant::now();
        let api = leases(&self.client);
        let existing = match api.get_opt(LEADER_LEASE).await {
            Ok(lease) => lease,
            Err(e) => {
                self.end_term_if_expired();
                return Err(ApiError::new("get", lease_path())(e));
            }
        };
        let (decision, observed) = decide(existing.as_ref(), &self.identity, self.observed.as_ref(), started);
        self.observed = observed;
        let written = match decision {
            Decision::Wait { holder, .. } => {
                self.end_term();
                return Ok(Role::Follower { holder });
            }
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEADER_LEASE.into()),
                        namespace: Some(SYSTEM_NAMESPACE.into()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(None)),
                };
                api.create(&PostParams::default(), &lease).await
            }
            Decision::Renew | Decision::TakeOver => {
                let Some(mut lease) = existing else {
                    return Ok(Role::Follower { holder: String::new() });
                };
                lease.spec = Some(self.spec(lease.spec.take()));
                api.replace(LEADER_LEASE, &PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(lease) => {
                self.observed = Some(Observation::of(&lease, started));
                let valid_until = started + self.timing.renew_deadline;
                let term = match &self.term {
                    Some(term) if !term.ended().is_cancelled() && Instant::now() < term.valid_until() => {
                        term.extend(valid_until);
                        term.clone()
                    }
                    _ => {
                        let term = LeaderTerm::start(&self.identity, valid_until);
                        self.term = Some(term.clone());
                        term
                    }
                };
                Ok(Role::Leader(term))
            }
            // Someone else wrote first: they lead.
            Err(e) if status_is(&e, |s| s.is_conflict() || s.is_already_exists()) => {
                self.end_term();
                let holder = api
                    .get_opt(LEADER_LEASE)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec)
                    .and_then(|s| s.holder_identity)
                    .unwrap_or_default();
                Ok(Role::Follower { holder })
            }
            Err(e) => {
                self.end_term_if_expired();
                Err(ApiError::new("write", lease_path())(e))
            }
        }
    }

    fn spec(&self, previous: Option<LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(etcdsnap_storage::clock::now());
        let previous = previous.unwrap_or_default();
        let ours = previous.holder_identity.as_deref() == Some(self.identity.as_str());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: if ours { previous.acquire_time } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(previous.lease_transitions.unwrap_or(0) + i32::from(!ours)),
            ..Default::default()
        }
    }

    fn end_term(&mut self) {
        if let Some(term) = self.term.take() {
            term.end();
        }
    }

    fn end_term_if_expired(&mut self) {
        if self.term.as_ref().is_some_and(|t| Instant::now() >= t.valid_until()) {
            self.end_term();
        }
    }

    /// For one-shot commands: rounds until this candidate leads, or the holder is seen renewing
    /// (it is alive: Follower), or taking over would need longer than `max_wait`.
    pub async fn acquire_within(&mut self, max_wait: Duration) -> Result<Role, ApiError> {
        let deadline = Instant::now() + max_wait;
        let mut first: Option<String> = None;
        loop {
            let role = self.round().await?;
            let Role::Follower { holder } = &role else { return Ok(role) };
            let version = self.observed.as_ref().map(|o| o.resource_version.clone()).unwrap_or_default();
            let remaining = match decide_remaining(self.observed.as_ref(), Instant::now()) {
                Some(r) => r,
                None => return Ok(role),
            };
            match &first {
                None => {
                    tracing::info!(
                        holder = %holder,
                        "leader lease held by {holder}; watching it for up to {:?} to see whether its holder is alive",
                        remaining.min(max_wait)
                    );
                    first = Some(version);
                }
                Some(v) if *v != version => return Ok(role), // renewed: the holder is alive
                Some(_) => {}
            }
            if Instant::now() + remaining > deadline {
                return Ok(role);
            }
            tokio::time::sleep(self.timing.retry_period.min(remaining)).await;
        }
    }

    /// Keeps renewing (or trying to take over) every retry period until `stop`, publishing the
    /// current term (or None) on `leading`. A term whose deadline passes while a round is still
    /// waiting on the API server ends at its deadline. On `stop` the term ends first, then the
    /// Lease is released so another node can lead at once.
    pub async fn run(mut self, stop: CancellationToken, leading: watch::Sender<Option<LeaderTerm>>) {
        let bound = self.timing.renew_deadline.max(self.timing.retry_period);
        // A term already held (a one-shot command that just took the Lease) is renewed after
        // a retry period, not at once.
        let mut wait_first = self.term.is_some();
        loop {
            if std::mem::take(&mut wait_first) && self.pause(&stop, &leading).await.is_break() {
                break;
            }
            let deadline = self.term.as_ref().map(LeaderTerm::valid_until);
            let step = tokio::select! {
                _ = stop.cancelled() => break,
                _ = sleep_until(deadline) => None,
                result = tokio::time::timeout(bound, self.round()) => Some(result),
            };
            match step {
                None => self.end_term(),
                Some(Ok(Ok(_))) => {}
                Some(Ok(Err(e))) => tracing::warn!("leader election: {e}"),
                Some(Err(_)) => tracing::warn!("leader election: no answer from the API server within {bound:?}"),
            }
            self.publish(&leading);
            if self.pause(&stop, &leading).await.is_break() {
                break;
            }
        }
        self.end_term();
        self.publish(&leading);
        if self.observed.as_ref().is_some_and(|o| o.holder == self.identity) {
            match self.release().await {
                Ok(()) => tracing::info!("leader lease released"),
                Err(e) => tracing::warn!("releasing the leader lease: {e}"),
            }
        }
    }

    /// Waits a retry period (jittered); a term whose deadline passes meanwhile ends then.
    async fn pause(
        &mut self,
        stop: &CancellationToken,
        leading: &watch::Sender<Option<LeaderTerm>>,
    ) -> std::ops::ControlFlow<()> {
        let pause = self.timing.retry_period + etcdsnap_storage::retry::jitter(self.timing.retry_period / 5);
        let deadline = self.term.as_ref().map(LeaderTerm::valid_until);
        let expired = tokio::select! {
            _ = stop.cancelled() => return std::ops::ControlFlow::Break(()),
            _ = sleep_until(deadline) => true,
            _ = tokio::time::sleep(pause) => false,
        };
        if expired {
            self.end_term();
            self.publish(leading);
        }
        std::ops::ControlFlow::Continue(())
    }

    fn publish(&self, leading: &watch::Sender<Option<LeaderTerm>>) {
        let current = self.term.clone().filter(|t| !t.ended().is_cancelled());
        leading.send_if_modified(|seen| {
            let changed = match (&*seen, &current) {
                (Some(a), Some(b)) => !a.is(b),
                (None, None) => false,
                _ => true,
            };
            if changed {
                *seen = current.clone();
            }
            changed
        });
    }

    /// Gives the Lease up (only if this identity holds it), so another node can lead at once.
    pub async fn release(&mut self) -> Result<(), ApiError> {
        self.end_term();
        let api = leases(&self.client);
        let Some(mut lease) = api.get_opt(LEADER_LEASE).await.map_err(ApiError::new("get", lease_path()))? else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        match api.replace(LEADER_LEASE, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if status_is(&e, |s| s.is_conflict()) => Ok(()),
            Err(e) => Err(ApiError::new("release", lease_path())(e)),
        }
    }
}

/// How long until an observed holder's Lease may be taken over (None: it is free now).
fn decide_remaining(observed: Option<&Observation>, now: Instant) -> Option<Duration> {
    let o = observed?;
    if o.holder.is_empty() {
        return None;
    }
    o.duration.checked_sub(now.saturating_duration_since(o.since)).filter(|d| !d.is_zero())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(version: &str, holder: &str, secs: i32, renewed_at_unix: i64) -> Lease {
        Lease {
            metadata: ObjectMeta { resource_version: Some(version.into()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: (!holder.is_empty()).then(|| holder.to_string()),
                lease_duration_seconds: Some(secs),
                renew_time: Some(MicroTime(jiff::Timestamp::from_second(renewed_at_unix).unwrap_or_default())),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn no_lease_is_created_and_our_own_is_renewed() {
        let now = Instant::now();
        assert_eq!(decide(None, "a", None, now).0, Decision::Create);
        assert_eq!(decide(Some(&lease("1", "a", 30, 0)), "a", None, now).0, Decision::Renew);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        assert_eq!(decide(Some(&lease("1", "", 1, 0)), "a", None, Instant::now()).0, Decision::TakeOver);
    }

    #[test]
    fn a_lease_first_seen_is_waited_for_its_whole_duration_whatever_its_stamp_says() {
        // Renewed "in 1970" by the holder's clock: a skewed holder, not an expired one.
        let now = Instant::now();
        let (decision, seen) = decide(Some(&lease("7", "b", 30, 0)), "a", None, now);
        assert_eq!(decision, Decision::Wait { holder: "b".into(), remaining: Duration::from_secs(30) });
        let seen = seen.unwrap();
        assert_eq!((seen.since, seen.resource_version.as_str()), (now, "7"));
    }

    #[test]
    fn an_unchanged_lease_expires_after_its_duration_of_observation() {
        let t0 = Instant::now();
        let l = lease("7", "b", 30, 0);
        let (_, seen) = decide(Some(&l), "a", None, t0);
        let (d, seen) = decide(Some(&l), "a", seen.as_ref(), t0 + Duration::from_secs(29));
        assert_eq!(d, Decision::Wait { holder: "b".into(), remaining: Duration::from_secs(1) });
        assert_eq!(seen.as_ref().unwrap().since, t0, "the first observation is kept while nothing changes");
        assert_eq!(decide(Some(&l), "a", seen.as_ref(), t0 + Duration::from_secs(30)).0, Decision::TakeOver);
    }

    #[test]
    fn every_renewal_restarts_the_wait() {
        let t0 = Instant::now();
        let (_, seen) = decide(Some(&lease("7", "b", 30, 0)), "a", None, t0);
        let later = t0 + Duration::from_secs(29);
        // Renewed with a stamp far in the past: the change is what counts.
        let (d, seen) = decide(Some(&lease("8", "b", 30, -3600)), "a", seen.as_ref(), later);
        assert_eq!(d, Decision::Wait { holder: "b".into(), remaining: Duration::from_secs(30) });
        assert_eq!(seen.unwrap().since, later);
    }

    #[test]
    fn the_wait_uses_the_duration_the_holder_wrote() {
        let t0 = Instant::now();
        let (_, seen) = decide(Some(&lease("3", "cmd", 60, 0)), "agent", None, t0);
        let at = t0 + Duration::from_secs(45);
        assert!(matches!(decide(Some(&lease("3", "cmd", 60, 0)), "agent", seen.as_ref(), at).0, Decision::Wait { .. }));
    }

    #[test]
    fn timing_leaves_a_margin_between_the_renew_deadline_and_the_lease_duration() {
        let t = Timing::for_lease(Duration::from_secs(30));
        assert_eq!((t.renew_deadline, t.retry_period), (Duration::from_secs(20), Duration::from_secs(5)));
        let short = Timing::for_lease(Duration::from_secs(6));
        assert!(short.retry_period < short.renew_deadline && short.renew_deadline < short.lease_duration);
        assert_eq!(Timing::for_lease(Duration::ZERO).lease_duration, Duration::from_secs(1));
    }

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
