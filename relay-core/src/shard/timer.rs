//! A hashed timer wheel of session deadlines, driven by the `now` it is given.
//!
//! Entries are lazy: a session reschedules itself only when its timer fires
//! and its real deadline (moved by traffic) is still ahead, so traffic never
//! touches the wheel.

use std::time::{Duration, Instant};

/// One scheduled check: session slot and the id it had when scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerEntry {
    /// When to fire.
    pub deadline: Instant,
    /// Opaque key (the session id).
    pub key: u64,
}

/// A wheel of `slots` buckets of `tick` each; far deadlines wait for later laps.
#[derive(Debug)]
pub struct TimerWheel {
    epoch: Instant,
    tick: Duration,
    buckets: Vec<Vec<TimerEntry>>,
    /// Ticks since `epoch` processed so far.
    cursor: u64,
    len: usize,
}

impl TimerWheel {
    /// A wheel starting at `epoch`.
    pub fn new(epoch: Instant, tick: Duration, slots: usize) -> Self {
        Self {
            epoch,
            tick: tick.max(Duration::from_millis(1)),
            buckets: vec![Vec::new(); slots.max(1)],
            cursor: 0,
            len: 0,
        }
    }

    /// Pending entries.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn tick_of(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.epoch).as_nanos() / self.tick.as_nanos().max(1)) as u64
    }

    /// Schedules `key` at `deadline` (rounded up to the tick).
    pub fn schedule(&mut self, deadline: Instant, key: u64) {
        let t = self.tick_of(deadline).max(self.cursor);
        let b = (t % self.buckets.len() as u64) as usize;
        self.buckets[b].push(TimerEntry { deadline, key });
        self.len += 1;
    }

    /// When to call [`expire`](Self::expire) next: the end of the current
    /// tick while anything is pending. Deadlines are honoured to within one
    /// tick, and the cost of a wake-up is one bucket scan.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let nanos = self.tick.as_nanos().saturating_mul(u128::from(self.cursor) + 1);
        let offset = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        Some(self.epoch.checked_add(offset).unwrap_or(self.epoch))
    }

    /// Pops every entry whose deadline is `<= now` into `out`.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<TimerEntry>) {
        let target = self.tick_of(now);
        let n = self.buckets.len() as u64;
        let laps_end = target.min(self.cursor + n - 1);
        let mut t = self.cursor;
        loop {
            let bucket = &mut self.buckets[(t % n) as usize];
            let before = bucket.len();
            let mut i = 0;
            while i < bucket.len() {
                if bucket[i].deadline <= now {
                    out.push(bucket.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            self.len -= before - bucket.len();
            if t >= laps_end {
                break;
            }
            t += 1;
        }
        self.cursor = target.max(self.cursor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_order_and_handles_far_deadlines() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, Duration::from_millis(100), 16);
        w.schedule(t0 + Duration::from_millis(250), 1);
        w.schedule(t0 + Duration::from_secs(10), 2); // beyond one lap (1.6 s)
        w.schedule(t0 + Duration::from_millis(50), 3);
        assert_eq!(w.poll_timeout(), Some(t0 + Duration::from_millis(100)));
        let mut out = vec![];
        w.expire(t0 + Duration::from_millis(60), &mut out);
        assert_eq!(out.iter().map(|e| e.key).collect::<Vec<_>>(), vec![3]);
        out.clear();
        w.expire(t0 + Duration::from_millis(300), &mut out);
        assert_eq!(out.iter().map(|e| e.key).collect::<Vec<_>>(), vec![1]);
        out.clear();
        for s in 1..=9 {
            w.expire(t0 + Duration::from_secs(s), &mut out);
            assert!(out.is_empty(), "key 2 not before 10 s");
        }
        assert!(w.poll_timeout().is_some());
        w.expire(t0 + Duration::from_secs(10), &mut out);
        assert_eq!(out.iter().map(|e| e.key).collect::<Vec<_>>(), vec![2]);
        assert!(w.is_empty());
        assert_eq!(w.poll_timeout(), None);
    }

    #[test]
    fn jumping_far_ahead_expires_everything_due() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0, Duration::from_millis(10), 8);
        for k in 0..100u64 {
            w.schedule(t0 + Duration::from_millis(k * 7), k);
        }
        let mut out = vec![];
        w.expire(t0 + Duration::from_secs(60), &mut out);
        assert_eq!(out.len(), 100);
        assert!(w.is_empty());
    }
}
