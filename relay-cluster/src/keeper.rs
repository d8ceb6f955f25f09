//! Keeps a held lease renewed on its own task and Redis connection, so
//! nothing the node does meanwhile — restoring ten thousand sessions in a
//! takeover, writing a large backlog — can let the lease lapse under it
//! (a lapsed lease hands the service to a standby while this node still
//! forwards).
//!
//! It also knows, on this node's own monotonic clock, until when the lease
//! is certainly still ours: Redis sets a renewed lease to expire a TTL
//! after it *receives* the renewal, so the lease cannot expire before the
//! renewal's send time plus the TTL. From a margin before that instant on,
//! unless a later renewal came back, the keeper closes the [`ServeGate`]:
//! a node cut off from Redis stops answering allocations and changes
//! before any standby can take the lease, and opens again only when a
//! renewal succeeds.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::gate::ServeGate;
use crate::node::{publish_serving, ClusterStatus};
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
    /// The lease may have expired: the gate is closed until a renewal
    /// succeeds.
    pub fenced: bool,
}

/// How long before the certain expiry the gate closes: timers fire late on
/// a busy runtime, and a request let through just before must finish
/// first.
fn margin(ttl: Duration) -> Duration {
    ttl / 10
}

/// The renewal task of one held lease. Stop it with [`LeaseKeeper::stop`]
/// before releasing the lease (a renewal after a release would take it
/// back); dropping it aborts the task.
pub(crate) struct LeaseKeeper {
    state: watch::Receiver<KeeperState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Renewer {
    store: Store,
    holder: Holder,
    ttl: Duration,
    gate: Arc<ServeGate>,
    /// The node's status: the role follows the gate at once.
    status: Arc<watch::Sender<ClusterStatus>>,
    state: watch::Sender<KeeperState>,
    /// Until when the lease is certainly ours (less the margin).
    valid_until: Instant,
}

impl Renewer {
    /// Closes the gate: the lease may have expired.
    fn fence(&mut self) {
        self.gate.set_lease_valid(false);
        self.status.send_modify(|s| s.fences += 1);
        publish_serving(&self.status, &self.gate);
        self.state.send_modify(|s| s.fenced = true);
        tracing::warn!(epoch = self.holder.epoch, "lease not renewed in time: refusing changes until it is");
    }

    fn fenced(&self) -> bool {
        self.state.borrow().fenced
    }

    /// Waits until `at`, closing the gate if the lease's validity ends
    /// first; `false` if told to stop.
    async fn wait_until(&mut self, at: Instant, stopped: &mut oneshot::Receiver<()>) -> bool {
        loop {
            let fenced = self.fenced();
            tokio::select! {
                _ = tokio::time::sleep_until(at) => return true,
                _ = tokio::time::sleep_until(self.valid_until), if !fenced => self.fence(),
                _ = &mut *stopped => return false,
            }
        }
    }

    /// One renewal, sent now; the gate closes meanwhile if it must. Not
    /// raced against the stop signal: a renewal sent is finished before
    /// the keeper ends.
    async fn renew(&mut self) -> (Instant, Result<Renewal, crate::store::StoreError>) {
        let sent = Instant::now();
        let mut store = self.store.clone();
        let holder = self.holder.clone();
        let ttl = self.ttl;
        let renewal = async move { store.renew(&holder, ttl).await };
        tokio::pin!(renewal);
        loop {
            let fenced = self.fenced();
            tokio::select! {
                r = &mut renewal => return (sent, r),
                _ = tokio::time::sleep_until(self.valid_until), if !fenced => self.fence(),
            }
        }
    }

    /// Renews from `next` on until the lease is lost or the keeper stops.
    async fn run(mut self, mut next: Instant, mut stopped: oneshot::Receiver<()>) {
        loop {
            if !self.wait_until(next, &mut stopped).await {
                return;
            }
            let (sent, r) = self.renew().await;
            match r {
                Ok(Renewal::Renewed | Renewal::Reacquired) => {
                    self.valid_until = sent + self.ttl - margin(self.ttl);
                    next = sent + self.ttl / 3;
                    if self.fenced() && Instant::now() < self.valid_until {
                        self.gate.set_lease_valid(true);
                        publish_serving(&self.status, &self.gate);
                        self.state.send_modify(|s| s.fenced = false);
                        tracing::warn!(epoch = self.holder.epoch, "lease renewed again: serving");
                    }
                }
                Ok(Renewal::Lost) => {
                    self.gate.set_lease_valid(false);
                    publish_serving(&self.status, &self.gate);
                    self.state.send_modify(|s| s.lost = true);
                }
                // Try again soon: every renewal that lands extends the lease.
                Err(_) => next = Instant::now() + self.ttl / 10,
            }
            self.state.send_modify(|s| {
                s.redis_up = r.is_ok();
                match r {
                    Ok(Renewal::Reacquired) => s.reacquired += 1,
                    Err(_) => s.failures += 1,
                    _ => {}
                }
            });
            if self.state.borrow().lost {
                return;
            }
        }
    }
}

impl LeaseKeeper {
    /// Starts renewing `holder`'s lease (taken with a request sent at
    /// `taken_at`) every `ttl / 3` on `store` (a connection of its own),
    /// and opens the lease half of `gate` until the lease may have lapsed
    /// (the role in `status` follows).
    /// Never waits for the node: what it sees is published, not queued.
    pub(crate) fn start(
        store: Store,
        holder: Holder,
        ttl: Duration,
        taken_at: std::time::Instant,
        gate: Arc<ServeGate>,
        status: Arc<watch::Sender<ClusterStatus>>,
    ) -> Self {
        let (tx, state) = watch::channel(KeeperState { redis_up: true, ..KeeperState::default() });
        let (stop, stopped) = oneshot::channel();
        let taken_at = Instant::from_std(taken_at);
        let valid_until = taken_at + ttl - margin(ttl);
        gate.set_lease_valid(Instant::now() < valid_until);
        let renewer = Renewer { store, holder, ttl, gate, status, state: tx, valid_until };
        let task = tokio::spawn(renewer.run(taken_at + ttl / 3, stopped));
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
