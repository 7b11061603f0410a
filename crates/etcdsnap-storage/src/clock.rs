//! The wall clock, as this process sees it: the one place product code reads it
//! (`clippy.toml` forbids `Timestamp::now`, `Zoned::now` and `SystemTime::now` elsewhere).
//!
//! Wall time stamps records, Leases and resources, and judges long TTLs (a failed save's 24 h, a
//! departed node's heartbeat), where a few seconds or minutes of skew between machines do not
//! matter. Decisions that must survive skew, such as who leads, use the monotonic clock and
//! never compare another machine's stamp with this one (see `etcdsnap_kube::leader`); the end
//! of a leader's term is timed by [`since_boot`], which also counts the time the machine slept.
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

/// Time since the machine booted, time spent suspended included (Linux's `CLOCK_BOOTTIME`).
///
/// The monotonic clock (`std::time::Instant`, tokio's timers) runs on while a process is stopped
/// (SIGSTOP) but stands still while the machine is suspended, so a deadline timed by it can
/// outlive a suspend-to-RAM. A leader's term is timed by this clock instead. Neither clock moves
/// while a hypervisor holds a whole virtual machine paused with its clocks stopped: nothing inside
/// such a machine can tell that time passed (`etcdsnap_kube::fence` says what follows from that).
pub fn since_boot() -> std::time::Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => t.into(),
        // Linux has had CLOCK_BOOTTIME since 2.6.39; clock_gettime fails only for a clock the
        // kernel does not know, and then it fails on every call, so the two clocks never mix.
        Err(_) => monotonic_since_start(),
    }
}

fn monotonic_since_start() -> std::time::Duration {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_moves_forward_with_the_monotonic_one() {
        let (boot, mono) = (since_boot(), std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (boot_elapsed, mono_elapsed) = (since_boot() - boot, mono.elapsed());
        assert!(boot_elapsed >= std::time::Duration::from_millis(20), "{boot_elapsed:?}");
        // Nothing was suspended in between: both clocks saw the same time pass.
        assert!(
            boot_elapsed.abs_diff(mono_elapsed) < std::time::Duration::from_millis(10),
            "{boot_elapsed:?} {mono_elapsed:?}"
        );
    }
}
