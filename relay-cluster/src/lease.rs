//! When a standby may take the lease (sans-IO, `now` passed in).
//!
//! The store's scripts make taking and renewing atomic; what is left to
//! decide is *when to try*, so that a live active is never displaced:
//! - the lease was seen held and is now free while the store still knows
//!   the epoch: it expired (the active stopped renewing) — try at once;
//! - the lease was not seen since this node (re)connected, or the epoch is
//!   gone too (Redis restarted without its data): a live active re-acquires
//!   its lease within a third of the TTL, so wait a whole TTL of absence
//!   first;
//! - an `eager` node (configured `role = "active"`) takes a free lease at
//!   start without waiting.

use std::time::{Duration, Instant};

use crate::store::LeaseView;

/// A standby's view of the lease over time.
#[derive(Debug, Clone)]
pub struct LeaseWatch {
    ttl: Duration,
    eager: bool,
    seen_held: bool,
    free_since: Option<Instant>,
}

/// One look at the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// What the store answered.
    Seen(LeaseView),
    /// The store did not answer.
    Unreachable,
}

impl LeaseWatch {
    /// A watch for a lease of `ttl`; `eager` takes a free lease at once
    /// until the lease is first seen held.
    pub fn new(ttl: Duration, eager: bool) -> Self {
        Self { ttl, eager, seen_held: false, free_since: None }
    }

    /// Feeds one observation; returns whether to try to take the lease now.
    pub fn handle_observation(&mut self, now: Instant, obs: &Observation) -> bool {
        match obs {
            Observation::Unreachable => {
                // What the lease does meanwhile is unknown: start over.
                self.seen_held = false;
                self.free_since = None;
                false
            }
            Observation::Seen(LeaseView { holder: Some(_), .. }) => {
                self.seen_held = true;
                self.eager = false;
                self.free_since = None;
                false
            }
            Observation::Seen(LeaseView { holder: None, epoch }) => {
                if self.eager || (self.seen_held && epoch.is_some()) {
                    return true;
                }
                let since = *self.free_since.get_or_insert(now);
                now.saturating_duration_since(since) >= self.ttl
            }
        }
    }

    /// Starts over (after this node served and stepped down).
    pub fn reset(&mut self) {
        self.seen_held = false;
        self.free_since = None;
        self.eager = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Holder;

    fn held(epoch: u64) -> Observation {
        Observation::Seen(LeaseView { holder: Some(Holder { node: "a".into(), epoch }), epoch: Some(epoch) })
    }
    fn free(epoch: Option<u64>) -> Observation {
        Observation::Seen(LeaseView { holder: None, epoch })
    }

    #[test]
    fn an_expired_lease_is_taken_at_once_and_a_lost_store_only_after_a_ttl() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut w = LeaseWatch::new(Duration::from_millis(600), false);
        // Never seen held: wait a TTL of absence.
        assert!(!w.handle_observation(ms(0), &free(Some(3))));
        assert!(!w.handle_observation(ms(599), &free(Some(3))));
        assert!(w.handle_observation(ms(600), &free(Some(3))));
        // Seen held, then free with the epoch known: the active stopped.
        let mut w = LeaseWatch::new(Duration::from_millis(600), false);
        assert!(!w.handle_observation(ms(0), &held(3)));
        assert!(w.handle_observation(ms(50), &free(Some(3))));
        // Seen held, then the store lost everything (restart without data):
        // give the active a TTL to re-acquire.
        let mut w = LeaseWatch::new(Duration::from_millis(600), false);
        assert!(!w.handle_observation(ms(0), &held(3)));
        assert!(!w.handle_observation(ms(50), &free(None)));
        assert!(!w.handle_observation(ms(200), &held(3)), "the active came back");
        // Unreachable forgets what was seen.
        let mut w = LeaseWatch::new(Duration::from_millis(600), false);
        assert!(!w.handle_observation(ms(0), &held(3)));
        assert!(!w.handle_observation(ms(10), &Observation::Unreachable));
        assert!(!w.handle_observation(ms(20), &free(Some(3))));
        assert!(!w.handle_observation(ms(619), &free(Some(3))));
        assert!(w.handle_observation(ms(620), &free(Some(3))));
        // Eager: a free lease at start at once, but not after it was seen held.
        let mut w = LeaseWatch::new(Duration::from_millis(600), true);
        assert!(w.handle_observation(ms(0), &free(None)));
        let mut w = LeaseWatch::new(Duration::from_millis(600), true);
        assert!(!w.handle_observation(ms(0), &held(1)));
        assert!(!w.handle_observation(ms(10), &free(None)));
    }
}
