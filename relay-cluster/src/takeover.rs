//! The takeover: with the lease just taken (and kept renewed from that
//! moment), run the hook, resume every warm session on its own ports and
//! every call, move to the epoch's id space, then serve.

use std::time::{Duration, Instant};

use relay_core::session::SessionState;
use relay_core::shard::RestoreClash;
use relay_core::RelayError;

use crate::keeper::LeaseKeeper;
use crate::node::{Node, Role, TakeoverReport};
use crate::standby::Taken;
use crate::store::Holder;

/// How long a takeover retries sessions whose ports do not bind yet.
const RESTORE_RETRY: Duration = Duration::from_secs(2);
/// How often it retries them.
const RESTORE_RETRY_EVERY: Duration = Duration::from_millis(20);
/// Restores in flight at once (a shard's command queue holds 1 024 by
/// default).
const RESTORE_WINDOW: usize = 256;

/// The low 24 bits of an epoch: the id space new sessions are minted in.
/// Epochs only grow, so spaces repeat only after 16 million takeovers.
fn id_space(epoch: u64) -> u32 {
    (epoch & 0x00ff_ffff) as u32
}

/// A TURN allocation `elapsed` older.
#[cfg(feature = "turn")]
fn aged(a: crate::turn::Allocation, elapsed: Duration) -> crate::turn::Allocation {
    a.aged(elapsed)
}

/// Without `turn` there are none.
#[cfg(not(feature = "turn"))]
fn aged(a: crate::turn::Allocation, _elapsed: Duration) -> crate::turn::Allocation {
    a
}

impl Node {
    /// Becomes active: the lease is renewed from now on, the hook runs,
    /// every warm session and call resumes; returns the lease and its
    /// keeper once this node serves.
    pub(crate) async fn take_over(&mut self, taken: Taken) -> (Holder, LeaseKeeper) {
        let Taken { holder, taken_at, warm, reloaded } = taken;
        // Renewed from now on, however long the takeover takes.
        let keeper = LeaseKeeper::start(
            self.lease_store.clone(),
            holder.clone(),
            self.config.lease_ttl,
            taken_at,
            self.gate.clone(),
            self.status.clone(),
        );
        let started = Instant::now();
        let total = warm.sessions.len();
        tracing::warn!(epoch = holder.epoch, sessions = total, "took the cluster lease: taking over");
        if let Some(hook) = self.config.takeover_hook.clone() {
            self.run_hook("takeover", &hook, holder.epoch);
        }
        let restored = self.restore_sessions(warm.sessions.into_values().collect()).await;
        let calls: Vec<_> = warm.calls.into_values().collect();
        let calls_total = calls.len();
        let calls_restored = self.calls.restore(calls).await;
        if calls_restored < calls_total {
            tracing::warn!(calls_total, calls_restored, "some ng calls were not taken over");
        }
        // TURN allocations on their relayed ports, aged by their time here.
        let turn: Vec<_> = warm.turn.into_values().map(|(a, arrived)| aged(a, arrived.elapsed())).collect();
        let turn_total = turn.len();
        let turn_restored = self.turn.restore(turn);
        if turn_restored < turn_total {
            tracing::warn!(turn_total, turn_restored, "some TURN allocations were not taken over");
        }
        // New ids in this epoch's space: none can be one a node of an
        // earlier epoch handed out (it may still be serving, cut off).
        if let Err(e) = self.relay.set_id_space(id_space(holder.epoch)).await {
            tracing::error!(error = %e, "could not move to the epoch's id space");
        }
        self.commits.begin();
        self.gate.set_ready(true);
        // The kernel fast path follows the service address here (the hook
        // may still be moving it: the active looks again every second).
        self.relay.attach_fast_path();
        let report = TakeoverReport {
            epoch: holder.epoch,
            restored,
            failed: total - restored,
            calls: calls_restored,
            turn_allocations: turn_restored,
            took: started.elapsed(),
            reloaded,
        };
        tracing::warn!(?report, "takeover done");
        let gate = self.gate.clone();
        self.update(|s| {
            s.role = if gate.serving() { Role::Active } else { Role::Fenced };
            s.epoch = Some(holder.epoch);
            s.holder = Some(holder.clone());
            s.takeovers += 1;
            s.warm_sessions = 0;
            s.warm_calls = 0;
            s.warm_turn = 0;
            s.last_takeover = Some(report);
        });
        (holder, keeper)
    }

    /// Resumes sessions a window at a time (the shards' command queues are
    /// bounded), retrying for a while those whose ports are still held;
    /// returns how many resumed.
    async fn restore_sessions(&self, mut todo: Vec<(SessionState, Instant)>) -> usize {
        let mut restored = 0;
        let retry_until = Instant::now() + RESTORE_RETRY;
        loop {
            let mut retry = Vec::new();
            while !todo.is_empty() {
                let window: Vec<_> = todo.drain(..todo.len().min(RESTORE_WINDOW)).collect();
                let pending: Vec<_> = window
                    .into_iter()
                    .map(|(state, arrived)| (self.relay.restore(state.clone().aged(arrived.elapsed())), state, arrived))
                    .collect();
                for (p, state, arrived) in pending {
                    match p.await {
                        Ok(_) => restored += 1,
                        // A port still held by a process that just died on
                        // this host (an io_uring ring is torn down
                        // asynchronously), or a shard's queue full of other
                        // work: try again shortly.
                        Err(RelayError::RestoreConflict(RestoreClash::BindFailed) | RelayError::Busy)
                            if Instant::now() < retry_until =>
                        {
                            retry.push((state, arrived));
                        }
                        Err(e) => tracing::warn!(session = %state.id, error = %e, "session not resumed"),
                    }
                }
            }
            todo = retry;
            if todo.is_empty() {
                return restored;
            }
            tokio::time::sleep(RESTORE_RETRY_EVERY).await;
        }
    }
}
