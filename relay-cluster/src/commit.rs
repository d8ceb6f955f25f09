//! Acknowledged means stored: the relay's [`CommitBarrier`]. An allocation
//! (or a change) is answered only once a replication round that began
//! after it has written everything to Redis, so a crash right after the
//! answer loses nothing a client was told exists. Concurrent requests
//! share rounds (a round writes whatever is pending); a request wakes the
//! replication loop instead of waiting for its next tick.

use std::sync::Arc;
use std::time::Duration;

use relay_core::{CommitBarrier, CommitFuture, RelayError};
use tokio::sync::{watch, Notify};

use crate::gate::ServeGate;

/// Replication rounds of the current active phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Rounds {
    /// Rounds begun (each pulls every change made before it began).
    started: u64,
    /// The last round that wrote everything pending.
    done: u64,
    /// The active phase ended: nothing more will be written.
    ended: bool,
}

/// Shared by the replication loop and the relay's services.
pub(crate) struct Commits {
    rounds: watch::Sender<Rounds>,
    wake: Notify,
    gate: Arc<ServeGate>,
    timeout: Duration,
}

impl Commits {
    /// Waiting at most `timeout` for a round; refusing at once while `gate`
    /// is closed.
    pub(crate) fn new(gate: Arc<ServeGate>, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            rounds: watch::channel(Rounds { ended: true, ..Rounds::default() }).0,
            wake: Notify::new(),
            gate,
            timeout,
        })
    }

    /// A new active phase begins.
    pub(crate) fn begin(&self) {
        self.rounds.send_modify(|r| r.ended = false);
    }

    /// The active phase ended: waiters are answered `standby`.
    pub(crate) fn end(&self) {
        self.rounds.send_modify(|r| r.ended = true);
    }

    /// A round begins (before it pulls the relay's changes); its number.
    pub(crate) fn round_begins(&self) -> u64 {
        let mut n = 0;
        self.rounds.send_modify(|r| {
            r.started += 1;
            n = r.started;
        });
        n
    }

    /// Round `n` wrote everything pending.
    pub(crate) fn round_done(&self, n: u64) {
        self.rounds.send_if_modified(|r| {
            let newer = n > r.done;
            r.done = r.done.max(n);
            newer
        });
    }

    /// Resolves when a request is waiting for a round.
    pub(crate) async fn wanted(&self) {
        self.wake.notified().await;
    }

    async fn commit(self: Arc<Self>) -> Result<(), RelayError> {
        if !self.gate.serving() {
            return Err(RelayError::Standby);
        }
        let mut rx = self.rounds.subscribe();
        let target = rx.borrow().started + 1;
        self.wake.notify_one();
        let waited = tokio::time::timeout(self.timeout, rx.wait_for(|r| r.done >= target || r.ended)).await;
        match waited {
            Ok(Ok(r)) if r.done >= target => Ok(()),
            Ok(_) => Err(RelayError::Standby),
            Err(_) if !self.gate.serving() => Err(RelayError::Standby),
            Err(_) => Err(RelayError::NotReplicated),
        }
    }
}

/// The barrier installed on the relay.
pub(crate) struct Barrier(pub(crate) Arc<Commits>);

impl CommitBarrier for Barrier {
    fn commit(&self) -> CommitFuture {
        Box::pin(self.0.clone().commit())
    }
}
