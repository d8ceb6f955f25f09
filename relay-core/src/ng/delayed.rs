//! `delete-delay` as a timer of the engine: the sessions of a deleted call
//! wait here until their time, and the engine's driver releases them
//! ([`super::NgEngine::poll_timeout`], [`super::NgEngine::handle_timeout`]).
//! No task is spawned per delete.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::session::SessionId;

/// Sessions waiting for their release, by when; bounded.
#[derive(Debug, Default)]
pub(super) struct DelayedReleases {
    due: BTreeMap<Instant, Vec<SessionId>>,
    len: usize,
}

impl DelayedReleases {
    /// Keeps `ids` until `at`; gives them back at once when the table
    /// already holds `cap` sessions (they are released now rather than
    /// held without bound).
    pub(super) fn handle_delete(&mut self, at: Instant, ids: Vec<SessionId>, cap: usize) -> Vec<SessionId> {
        if self.len + ids.len() > cap {
            return ids;
        }
        self.len += ids.len();
        self.due.entry(at).or_default().extend(ids);
        Vec::new()
    }

    /// When the next release is due.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.due.keys().next().copied()
    }

    /// The sessions due at `now`.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<SessionId> {
        let later = self.due.split_off(&now);
        let due = std::mem::replace(&mut self.due, later);
        let mut out: Vec<SessionId> = due.into_values().flatten().collect();
        // `split_off` keeps `now` itself in `later`: due too.
        if let Some(at_now) = self.due.remove(&now) {
            out.extend(at_now);
        }
        self.len -= out.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id(n: u64) -> SessionId {
        SessionId::new(0, 1, n as u32)
    }

    #[test]
    fn sessions_leave_at_their_time_in_order_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut d = DelayedReleases::default();
        assert_eq!(d.poll_timeout(), None);
        assert!(d.handle_delete(t0 + Duration::from_secs(2), vec![id(1), id(2)], 3).is_empty());
        assert!(d.handle_delete(t0 + Duration::from_secs(1), vec![id(3)], 3).is_empty());
        // Over the bound: released at once instead.
        assert_eq!(d.handle_delete(t0 + Duration::from_secs(1), vec![id(4)], 3), vec![id(4)]);
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(1)));
        assert!(d.take_due(t0).is_empty());
        assert_eq!(d.take_due(t0 + Duration::from_secs(1)), vec![id(3)], "due exactly at its time");
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(d.take_due(t0 + Duration::from_secs(9)), vec![id(1), id(2)]);
        assert_eq!((d.poll_timeout(), d.len), (None, 0));
    }
}
