//! Randomised waits: jitter for schedules and elections (so nodes that start together do not
//! act in lockstep), and capped exponential backoff with full jitter for retried requests.

use std::time::Duration;

/// A random duration in `[0, max)`.
pub fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let nanos = rand::random_range(0..max.as_nanos().min(u64::MAX as u128) as u64);
    Duration::from_nanos(nanos)
}

/// Capped exponential backoff with full jitter (the AWS SDKs' choice): attempt `n` (from 0)
/// waits a random time below `min(cap, base * 2^n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const S3: Backoff = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(5) };

    /// The most attempt `n` may wait.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX)).min(self.cap)
    }

    /// How long to wait before retry `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        jitter(self.ceiling(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(5)) < Duration::from_secs(5));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff::S3;
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(6), Duration::from_secs(5));
        assert_eq!(b.ceiling(200), Duration::from_secs(5));
        assert!(b.delay(2) < Duration::from_millis(400));
    }
}
