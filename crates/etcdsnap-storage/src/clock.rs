//! The wall clock, as this process sees it: the one place product code reads it
//! (`clippy.toml` forbids `Timestamp::now`, `Zoned::now` and `SystemTime::now` elsewhere).
//!
//! Wall time stamps records, Leases and resources, and judges long TTLs (a failed save's 24 h, a
//! departed node's heartbeat), where a few seconds or minutes of skew between machines do not
//! matter. Decisions that must survive skew, such as who leads, use the monotonic clock and
//! never compare another machine's stamp with this one (see `etcdsnap_kube::leader`).
//!
//! Builds with the `failpoints` feature read `ETCDSNAP_FAKE_CLOCK_OFFSET` (seconds, negative
//! for a clock that is behind), so the test suite can run one agent with a skewed clock
//! against real servers. Other builds ignore it.

/// The environment variable that shifts [`now`] (failpoints builds only).
pub const FAKE_OFFSET_ENV: &str = "ETCDSNAP_FAKE_CLOCK_OFFSET";

/// The current wall time.
pub fn now() -> jiff::Timestamp {
    #[allow(clippy::disallowed_methods, reason = "the one place that reads the system clock")]
    let now = jiff::Timestamp::now();
    match offset() {
        Some(seconds) => now.checked_add(jiff::SignedDuration::from_secs(seconds)).unwrap_or(now),
        None => now,
    }
}

/// The current wall time in the machine's time zone (schedules run in local time, like K3s's).
pub fn now_zoned() -> jiff::Zoned {
    now().to_zoned(jiff::tz::TimeZone::system())
}

#[cfg(feature = "failpoints")]
fn offset() -> Option<i64> {
    use std::sync::OnceLock;
    static OFFSET: OnceLock<Option<i64>> = OnceLock::new();
    *OFFSET.get_or_init(|| std::env::var(FAKE_OFFSET_ENV).ok().and_then(|v| v.trim().parse().ok()))
}

#[cfg(not(feature = "failpoints"))]
fn offset() -> Option<i64> {
    None
}
