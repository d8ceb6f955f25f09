//! Reconnect delays: exponential backoff with "equal jitter" (half the
//! delay fixed, half random), so a relay restart is not met by every
//! connector at the same instant. Sans-IO: the caller supplies randomness.

use std::time::Duration;

/// Backoff settings and state.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// First delay (before jitter).
    pub initial: Duration,
    /// Largest delay (before jitter).
    pub max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Delays doubling from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), attempt: 0 }
    }

    /// Forget past failures (after a successful connect).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Jump to the largest delay (after the relay refused our credentials:
    /// retrying fast would only lock this address out).
    pub fn saturate(&mut self) {
        self.attempt = 32;
    }

    /// The next delay; `random` is uniform in `[0, 1)`.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        let base = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = base / 2;
        half + half.mul_f64(random.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let lows: Vec<u128> = (0..6).map(|_| b.next_delay(0.0).as_millis()).collect();
        assert_eq!(lows, [50, 100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(0.999_999).as_millis(), 99);
        assert_eq!(b.next_delay(0.5).as_millis(), 150);
        b.saturate();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
        for _ in 0..100 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(1));
        }
    }
}
