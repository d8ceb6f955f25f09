//! The heartbeat of a control channel, sans-IO: send a `heartbeat` every
//! interval, and give the channel up after three intervals without a frame.
//! Both ends use it; tested in virtual time.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Intervals of silence after which a channel is dead.
pub const SILENT_INTERVALS: u32 = 3;

/// Longest interval honoured (a day): longer settings are clamped, so the
/// deadline arithmetic cannot overflow an `Instant` whatever a
/// configuration or a relay's `hello_result` says.
pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// What to do when [`Heartbeat::poll_timeout`] is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Nothing yet.
    Wait,
    /// Send a `heartbeat` with this sequence number.
    Send(u64),
    /// No frame for three intervals: close the channel.
    Dead,
}

/// A channel's heartbeat state.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Duration,
    last_rx: Instant,
    next_tx: Instant,
    seq: u64,
}

impl Heartbeat {
    /// Starts at `now` with `interval` (a millisecond to [`MAX_INTERVAL`]).
    pub fn new(now: Instant, interval: Duration) -> Self {
        let interval = interval.clamp(Duration::from_millis(1), MAX_INTERVAL);
        Self { interval, last_rx: now, next_tx: now + interval, seq: 0 }
    }

    /// A frame (any frame) arrived at `now`.
    pub fn handle_received(&mut self, now: Instant) {
        self.last_rx = now;
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Instant {
        self.next_tx.min(self.last_rx + self.interval * SILENT_INTERVALS)
    }

    /// Time has come: close, send a heartbeat, or wait.
    pub fn handle_timeout(&mut self, now: Instant) -> HeartbeatAction {
        if now >= self.last_rx + self.interval * SILENT_INTERVALS {
            return HeartbeatAction::Dead;
        }
        if now >= self.next_tx {
            self.next_tx = now + self.interval;
            self.seq += 1;
            return HeartbeatAction::Send(self.seq);
        }
        HeartbeatAction::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_every_interval_and_declares_three_silent_intervals_dead_in_virtual_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs(10);
        let mut hb = Heartbeat::new(t0, s);
        assert_eq!(hb.poll_timeout(), t0 + s);
        assert_eq!(hb.handle_timeout(t0 + Duration::from_secs(9)), HeartbeatAction::Wait);
        assert_eq!(hb.handle_timeout(t0 + s), HeartbeatAction::Send(1));
        hb.handle_received(t0 + Duration::from_secs(15));
        assert_eq!(hb.handle_timeout(t0 + Duration::from_secs(20)), HeartbeatAction::Send(2));
        assert_eq!(hb.handle_timeout(t0 + Duration::from_secs(30)), HeartbeatAction::Send(3));
        assert_eq!(hb.handle_timeout(t0 + Duration::from_secs(40)), HeartbeatAction::Send(4));
        // The last frame came at 15 s: at 45 s, three intervals of silence.
        assert_eq!(hb.poll_timeout(), t0 + Duration::from_secs(45));
        assert_eq!(hb.handle_timeout(t0 + Duration::from_secs(45)), HeartbeatAction::Dead);
    }

    #[test]
    fn an_absurd_interval_is_clamped_instead_of_overflowing_the_clock() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, Duration::from_secs(u64::MAX));
        assert_eq!(hb.poll_timeout(), t0 + MAX_INTERVAL);
        assert_eq!(hb.handle_timeout(t0 + MAX_INTERVAL), HeartbeatAction::Send(1));
        assert_eq!(hb.handle_timeout(t0 + MAX_INTERVAL * SILENT_INTERVALS), HeartbeatAction::Dead);
    }

    #[test]
    fn traffic_keeps_a_channel_alive_however_long() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, Duration::from_secs(1));
        for i in 1..=10_000u64 {
            let now = t0 + Duration::from_millis(500 * i);
            hb.handle_received(now);
            assert_ne!(hb.handle_timeout(now), HeartbeatAction::Dead);
        }
    }
}
