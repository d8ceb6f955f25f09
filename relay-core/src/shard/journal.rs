//! The change journal: which sessions changed (created, updated, latched,
//! re-latched, restored) and which ended since the cluster layer last
//! pulled, so it can replicate them without scanning every session. Off
//! unless [`ShardConfig::journal`](super::ShardConfig::journal): a single
//! relay pays nothing.
//!
//! Bounded: a changed session is listed once until pulled (a flag on the
//! session), and ended ids are kept up to [`MAX_ENDED`]; past that the
//! journal says it overflowed and the puller resynchronizes everything.

use crate::session::state::SessionState;
use crate::session::SessionId;

/// Most ended sessions remembered between two pulls.
pub const MAX_ENDED: usize = 1 << 16;

/// What changed since the last pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The current state of every session that changed.
    pub changed: Vec<SessionState>,
    /// Sessions that ended.
    pub ended: Vec<SessionId>,
    /// Ended sessions were forgotten (more than [`MAX_ENDED`] between two
    /// pulls): the puller must resynchronize from a full export.
    pub overflowed: bool,
    /// More changes are waiting (the pull's limit was reached).
    pub more: bool,
}

/// The shard's journal.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    pub(crate) changed: Vec<SessionId>,
    pub(crate) ended: Vec<SessionId>,
    pub(crate) overflowed: bool,
}

impl Journal {
    /// Records that `id` ended.
    pub(crate) fn handle_ended(&mut self, id: SessionId) {
        if self.ended.len() >= MAX_ENDED {
            self.ended.clear();
            self.overflowed = true;
        }
        self.ended.push(id);
    }
}
