//! Leader election on the Lease `kube-system/etcdsnap-leader`, judged the way client-go's
//! leader election judges it, so that two nodes can never both do the leader's duties.
//!
//! - Expiry is observed, not computed from stamps: a candidate notes, by its own monotonic
//!   clock, when it first saw the Lease's current version, and takes it over only when that
//!   version stayed unchanged for the Lease's duration. The holder's `renewTime` (another
//!   machine's wall clock) decides nothing, so clock skew cannot hand the Lease to a second node.
//! - Renewal runs in the background ([`LeaderElector::run`]), independent of the work, every
//!   retry period.
//! - Every term has a deadline on the holder's own boot clock: the start of the last successful
//!   renewal plus the renew deadline, which is shorter than the Lease duration. A [`LeaderTerm`]
//!   is checked before every leader-only write and delete ([`LeaderTerm::check`]); past the
//!   deadline, or once another holder is seen, the check fails and the term's token is
//!   cancelled, so the running pass stops. Others can take over no earlier than the Lease
//!   duration after that renewal started: the difference is the margin for a write already on
//!   the wire. A process paused by SIGSTOP, or on a machine that was suspended, finds its
//!   deadline passed when it runs again (the boot clock counts both; `fence.rs` says what no
//!   clock of the machine can see).
//! - Identities are unique per process: an agent's is its node name and its instance
//!   ([`crate::instance`]), so a second process with the same node name is another holder and
//!   can never renew the first one's term.
//! - Every write carries the resourceVersion it was computed from, so two candidates that try at
//!   once cannot both win: the loser gets a 409.
//!
//! This file is the election ([`LeaderElector`]: rounds, renewal, release); `rules.rs` holds its
//! pure rules ([`Timing`], [`decide`]) and `term.rs` the term it hands out ([`LeaderTerm`]).
//!
//! kube-lease-manager and kubert's lease module were considered: both decide expiry from the
//! holder's `renewTime` against the local clock (with a skew allowance at best), which is the
//! very thing this module must not do.

mod rules;
mod term;

use crate::{ApiError, status_is};
use etcdsnap_api::consts::SYSTEM_NAMESPACE;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use rules::decide_remaining;
pub use rules::{Decision, Observation, Timing, decide};
pub use term::{LeaderTerm, LeadershipLost};

/// Name of the leader Lease.
pub const LEADER_LEASE: &str = "etcdsnap-leader";
/// The Lease duration of a one-shot command (`etcdsnap reconcile`), which renews it while it
/// works and releases it when done.
pub const COMMAND_LEADER_DURATION: Duration = Duration::from_secs(60);

/// Which Lease an election is about: the leader Lease, or a node's own Lease
/// ([`crate::instance`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    pub namespace: String,
    pub name: String,
}

impl LeaseRef {
    pub fn leader() -> LeaseRef {
        LeaseRef { namespace: SYSTEM_NAMESPACE.into(), name: LEADER_LEASE.into() }
    }
}

impl std::fmt::Display for LeaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lease {}/{}", self.namespace, self.name)
    }
}

/// The node part of a holder identity: an agent's identity is `<node>/<instance>`, a one-shot
/// command's `<node>/reconcile-<pid>`, an earlier release's the node name alone.
pub fn holder_node(holder: &str) -> &str {
    holder.split_once('/').map_or(holder, |(node, _)| node)
}

/// Tells the election that a holder is known to be gone (a process of this machine that no
/// longer exists), so its Lease can be taken over at once instead of after its duration.
pub type GoneHolder = Box<dyn Fn(&str) -> bool + Send + Sync>;

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
    lease: LeaseRef,
    identity: String,
    gone: Option<GoneHolder>,
    timing: Timing,
    observed: Option<Observation>,
    term: Option<LeaderTerm>,
}

impl LeaderElector {
    /// A candidate for the leader Lease. `identity` names this process in the Lease and must be
    /// unique to it (an agent's is [`crate::instance::Instance::identity`]).
    pub fn new(client: Client, identity: &str, timing: Timing) -> LeaderElector {
        LeaderElector::on_lease(client, LeaseRef::leader(), identity, timing)
    }

    /// A candidate for any Lease, under the same rules.
    pub fn on_lease(client: Client, lease: LeaseRef, identity: &str, timing: Timing) -> LeaderElector {
        LeaderElector { client, lease, identity: identity.to_string(), gone: None, timing, observed: None, term: None }
    }

    /// Holders for which `gone` says so are taken over at once.
    pub fn with_gone_holders(mut self, gone: GoneHolder) -> LeaderElector {
        self.gone = Some(gone);
        self
    }

    pub fn lease(&self) -> &LeaseRef {
        &self.lease
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.lease.namespace)
    }

    fn lease_path(&self) -> String {
        self.lease.to_string()
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
        let started_boot = etcdsnap_storage::clock::since_boot();
        let api = self.leases();
        let name = self.lease.name.clone();
        let existing = match api.get_opt(&name).await {
            Ok(lease) => lease,
            Err(e) => {
                self.end_term_if_expired();
                return Err(ApiError::new("get", self.lease_path())(e));
            }
        };
        let (mut decision, observed) = decide(existing.as_ref(), &self.identity, self.observed.as_ref(), started);
        if let (Decision::Wait { holder, .. }, Some(gone)) = (&decision, &self.gone)
            && gone(holder)
        {
            tracing::info!(holder = %holder, lease = %self.lease, "the holder's process is gone from this machine: taking its lease over at once");
            decision = Decision::TakeOver;
        }
        self.observed = observed;
        let written = match decision {
            Decision::Wait { holder, .. } => {
                self.end_term();
                return Ok(Role::Follower { holder });
            }
            Decision::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.lease.namespace.clone()),
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
                api.replace(&name, &PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(lease) => {
                self.observed = Some(Observation::of(&lease, started));
                let deadline = started_boot + self.timing.renew_deadline;
                let term = match &self.term {
                    Some(term) if term.check().is_ok() => {
                        term.extend(deadline);
                        term.clone()
                    }
                    _ => {
                        // A term that lapsed stays over: its work stopped, and a new term starts.
                        self.end_term();
                        let term = LeaderTerm::start(&self.identity, deadline);
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
                    .get_opt(&name)
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
                Err(ApiError::new("write", self.lease_path())(e))
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
        if self.term.as_ref().is_some_and(LeaderTerm::expired) {
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
                        "{} held by {holder}; watching it for up to {:?} to see whether its holder is alive",
                        self.lease,
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
            let deadline = self.term.as_ref().map(LeaderTerm::remaining);
            let step = tokio::select! {
                _ = stop.cancelled() => break,
                _ = sleep_for(deadline) => None,
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
        let deadline = self.term.as_ref().map(LeaderTerm::remaining);
        let before = etcdsnap_storage::clock::since_boot();
        let expired = tokio::select! {
            _ = stop.cancelled() => return std::ops::ControlFlow::Break(()),
            _ = sleep_for(deadline) => true,
            _ = tokio::time::sleep(pause) => false,
        };
        // A pause that took far longer than asked: the process was stopped or the machine
        // suspended (tokio's timer does not count a suspend, the boot clock does). The term
        // ends if its deadline passed meanwhile, and the next round reads the Lease afresh.
        let took = etcdsnap_storage::clock::since_boot().saturating_sub(before);
        if took > pause + self.timing.retry_period {
            tracing::warn!(lease = %self.lease, "the election did not run for {took:?} (process stopped or machine suspended)");
        }
        if expired || self.term.as_ref().is_some_and(LeaderTerm::expired) {
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
        let api = self.leases();
        let name = self.lease.name.clone();
        let Some(mut lease) = api.get_opt(&name).await.map_err(ApiError::new("get", self.lease_path()))? else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        match api.replace(&name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if status_is(&e, |s| s.is_conflict()) => Ok(()),
            Err(e) => Err(ApiError::new("release", self.lease_path())(e)),
        }
    }
}

async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_of_a_holder_is_what_comes_before_the_first_slash() {
        assert_eq!(holder_node("node-a/host.7.1a2b3c4d.9f8e7d6c"), "node-a");
        assert_eq!(holder_node("node-a/reconcile-42"), "node-a");
        assert_eq!(holder_node("node-a"), "node-a");
    }
}
