//! A standby's copy of its group's sessions, calls and TURN allocations,
//! and what keeps it
//! honest (sans-IO: the node feeds it what Redis returned).
//!
//! - Versions only move forward: a node never applies a version of a
//!   record older than one it has applied, nor brings back a record it saw
//!   deleted by a newer write ([`Applied`]); a replayed older record — an
//!   authentic one, copied back by someone who can write to Redis — is
//!   refused and counted.
//! - Records that do not open are refused, counted, and logged once per
//!   id ([`BadRecords`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use relay_core::session::SessionState;

use crate::calls::Call;
use crate::record::{RecordError, Version};
use crate::turn::Allocation;

/// Deletions remembered per kind (ids are never reused, so an old record
/// coming back after this many newer deletions is all that can slip by).
pub(crate) const MAX_TOMBSTONES: usize = 100_000;

/// The newest version applied of each record of one kind.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Id → (version, deleted).
    versions: HashMap<String, (Version, bool)>,
    /// Deleted ids, oldest first (bounded by [`MAX_TOMBSTONES`]).
    deleted: VecDeque<String>,
}

impl Applied {
    /// Whether a record of `id` at `v` may be applied (not older than what
    /// was applied); if so it is now the newest.
    pub(crate) fn admit(&mut self, id: &str, v: Version) -> bool {
        match self.versions.get_mut(id) {
            Some((seen, _)) if v < *seen => false,
            Some(entry) => {
                *entry = (v, false);
                true
            }
            None => {
                self.versions.insert(id.to_string(), (v, false));
                true
            }
        }
    }

    /// Whether a deletion of `id` by the write `v` may be applied (not
    /// older than the record's newest version); if so it is remembered.
    pub(crate) fn delete(&mut self, id: &str, v: Version) -> bool {
        if self.versions.get(id).is_some_and(|(seen, _)| v < *seen) {
            return false;
        }
        self.versions.insert(id.to_string(), (v, true));
        self.deleted.push_back(id.to_string());
        while self.deleted.len() > MAX_TOMBSTONES {
            if let Some(old) = self.deleted.pop_front() {
                if self.versions.get(&old).is_some_and(|(_, deleted)| *deleted) {
                    self.versions.remove(&old);
                }
            }
        }
        true
    }
}

/// Records that could not be read: counted, and logged once per id.
#[derive(Debug, Default)]
pub(crate) struct BadRecords {
    logged: HashSet<String>,
}

/// Distinct ids logged at most (after that, refusals are only counted).
const MAX_LOGGED: usize = 10_000;

impl BadRecords {
    /// Reports a refused record of `kind` stored under `id`.
    pub(crate) fn report(&mut self, kind: &str, id: &str, e: &RecordError) {
        if self.logged.len() < MAX_LOGGED && self.logged.insert(format!("{kind}/{id}")) {
            tracing::warn!(kind, id, error = %e, "record in redis refused (logged once per id)");
        }
    }
}

/// The standby's copy.
#[derive(Default)]
pub(crate) struct WarmCopy {
    /// Sessions by id, with when they arrived (aged again when restored).
    pub sessions: HashMap<String, (SessionState, Instant)>,
    /// ng calls by call-id.
    pub calls: HashMap<String, Call>,
    /// TURN allocations by id, with when they arrived (aged again when
    /// restored).
    pub turn: HashMap<String, (Allocation, Instant)>,
    /// The newest write applied (from its change note or a full read).
    pub last: Option<Version>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(epoch: u64, seq: u64) -> Version {
        Version { epoch, seq }
    }

    #[test]
    fn versions_only_move_forward_and_deletions_stick() {
        let mut a = Applied::default();
        assert!(a.admit("x", v(1, 5)));
        assert!(a.admit("x", v(1, 5)), "the same write again (a full read after a note)");
        assert!(a.admit("x", v(2, 1)), "a newer epoch");
        assert!(!a.admit("x", v(1, 9)), "an older epoch's record is a rollback");
        assert!(!a.delete("x", v(1, 10)), "an older delete cannot remove a newer record");
        assert!(a.delete("x", v(2, 3)));
        assert!(!a.admit("x", v(2, 2)), "a record from before its deletion does not come back");
        assert!(a.admit("x", v(3, 1)), "a newer write of it does (takeover resync)");
    }

    #[test]
    fn tombstones_are_bounded() {
        let mut a = Applied::default();
        for i in 0..MAX_TOMBSTONES + 10 {
            assert!(a.delete(&i.to_string(), v(1, i as u64)));
        }
        assert_eq!(a.deleted.len(), MAX_TOMBSTONES);
        assert!(a.versions.len() <= MAX_TOMBSTONES);
        assert!(a.admit("0", v(1, 0)), "the oldest deletion was forgotten");
        assert!(!a.admit(&(MAX_TOMBSTONES + 9).to_string(), v(1, 0)), "the newest is remembered");
    }
}
