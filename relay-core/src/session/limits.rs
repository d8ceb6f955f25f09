//! Per-leg token buckets (packets per second and bytes per second).

use std::time::Instant;

/// Rate limits of one leg. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegLimits {
    /// Maximum packets per second (burst: one second's worth).
    pub max_pps: Option<u32>,
    /// Maximum bytes per second (burst: one second's worth).
    pub max_bytes_per_sec: Option<u64>,
}

const MICRO: u64 = 1_000_000;

/// A token bucket in integer micro-tokens; refilled from the `now` it is given.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    capacity: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens per second with a one-second burst.
    pub fn new(rate: u64, now: Instant) -> Self {
        let capacity = rate.max(1).saturating_mul(MICRO);
        Self { rate, capacity, tokens: capacity, last: now }
    }

    /// Takes `cost` tokens if available.
    pub fn try_take(&mut self, now: Instant, cost: u64) -> bool {
        if now > self.last {
            let us = u64::try_from(now.duration_since(self.last).as_micros()).unwrap_or(u64::MAX);
            self.tokens = self.tokens.saturating_add(us.saturating_mul(self.rate)).min(self.capacity);
            self.last = now;
        }
        let need = cost.saturating_mul(MICRO);
        if self.tokens >= need {
            self.tokens -= need;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50, t0);
        assert_eq!((0..100).filter(|_| b.try_take(t0, 1)).count(), 50);
        // 100 ms later: 5 more tokens.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((0..100).filter(|_| b.try_take(t1, 1)).count(), 5);
        // Never more than the burst after a long pause.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..1000).filter(|_| b.try_take(t2, 1)).count(), 50);
    }

    #[test]
    fn byte_bucket_counts_bytes() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, t0);
        assert!(b.try_take(t0, 600));
        assert!(!b.try_take(t0, 600));
        assert!(b.try_take(t0 + Duration::from_millis(200), 600));
    }
}
