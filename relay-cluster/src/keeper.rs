//! Keeps a held lease renewed on its own task and Redis connection, so
//! nothing the node does meanwhile — restoring ten thousand sessions in a
//! takeover, writing a large backlog — can let the lease lapse under it
//! (a lapsed lease hands the service to a standby while this node still
//! forwards).

use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::store::{Holder, Renewal, Store};

/// What the keeper has seen so far (counts only grow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeeperState {
    /// Whether the last renewal reached Redis.
    pub redis_up: bool,
    /// Renewals that did not reach Redis.
    pub failures: u64,
    /// Times Redis had lost the lease and it was ours again under the same
    /// epoch (everything must be written again).
    pub reacquired: u64,
    /// Someone else holds the lease now; the keeper has stopped.
    pub lost: bool,
}

/// The renewal task of one held lease. Stop it with [`LeaseKeeper::stop`]
/// before releasing the lease (a renewal after a release would take it
/// back); dropping it aborts the task.
pub(crate) struct LeaseKeeper {
    state: watch::Receiver<KeeperState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl LeaseKeeper {
    /// Starts renewing `holder`'s lease every `ttl / 3` on `store` (a
    /// connection of its own). Never waits for the node: what it sees is
    /// published, not queued.
    pub(crate) fn start(mut store: Store, holder: Holder, ttl: Duration) -> Self {
        let (tx, state) = watch::channel(KeeperState { redis_up: true, ..KeeperState::default() });
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut renew = tokio::time::interval(ttl / 3);
            renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            renew.tick().await; // the lease was just taken
            loop {
                tokio::select! {
                    _ = renew.tick() => {}
                    _ = &mut stopped => return,
                }
                // Not raced against the stop signal: a renewal sent is
                // finished before the keeper ends.
                let r = store.renew(&holder, ttl).await;
                tx.send_modify(|s| {
                    s.redis_up = r.is_ok();
                    match r {
                        Ok(Renewal::Renewed) => {}
                        Ok(Renewal::Reacquired) => s.reacquired += 1,
                        Ok(Renewal::Lost) => s.lost = true,
                        Err(_) => s.failures += 1,
                    }
                });
                if tx.borrow().lost {
                    return;
                }
            }
        });
        Self { state, stop: Some(stop), task: Some(task) }
    }

    /// Waits until the keeper has seen something new, and returns it.
    pub(crate) async fn changed(&mut self) -> KeeperState {
        if self.state.changed().await.is_err() {
            // The keeper ended (lost, or aborted): its last word stands.
            std::future::pending::<()>().await;
        }
        *self.state.borrow_and_update()
    }

    /// Stops renewing and waits until any renewal in flight has finished.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
