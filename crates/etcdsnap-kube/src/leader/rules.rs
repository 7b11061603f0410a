//! The election's rules, pure and unit-tested: how it is paced ([`Timing`]) and what a candidate
//! does with the Lease as it reads it ([`decide`]). Expiry is observed on the candidate's own
//! monotonic clock, never computed from the holder's `renewTime` stamp.

use k8s_openapi::api::coordination::v1::Lease;
use std::time::Duration;
use tokio::time::Instant;

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
    pub(super) fn of(lease: &Lease, since: Instant) -> Observation {
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

/// How long until an observed holder's Lease may be taken over (None: it is free now).
pub(super) fn decide_remaining(observed: Option<&Observation>, now: Instant) -> Option<Duration> {
    let o = observed?;
    if o.holder.is_empty() {
        return None;
    }
    o.duration.checked_sub(now.saturating_duration_since(o.since)).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::ObjectMeta;

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
}
