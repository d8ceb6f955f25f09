//! One global send schedule: packet `n` is due `n / rate` seconds after the
//! start, whatever stream it belongs to.

use std::time::{Duration, Instant};

/// `rate` packets per second, `total` in all, from `start`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    start: Instant,
    rate: f64,
    total: u64,
}

impl Schedule {
    /// A schedule of `rate` packets per second, `total` in all, from `start`.
    pub fn new(start: Instant, rate: f64, total: u64) -> Self {
        Self { start, rate, total }
    }

    /// How many packets are due by now (at most `total`). When no more than
    /// `sent` are, it first waits toward the next one — sleeping when that
    /// is far off, spinning once when it is near — and the caller asks
    /// again.
    pub fn due(&self, sent: u64) -> u64 {
        let now = self.start.elapsed();
        let due = ((now.as_secs_f64() * self.rate) as u64).min(self.total);
        if sent >= due {
            let wait = self.at(sent).saturating_sub(now);
            if wait > Duration::from_micros(200) {
                std::thread::sleep(wait - Duration::from_micros(100));
            } else {
                std::hint::spin_loop();
            }
        }
        due
    }

    /// When packet `n` is due, from the start.
    pub fn at(&self, n: u64) -> Duration {
        Duration::from_secs_f64(n as f64 / self.rate)
    }
}
