//! The node's registration (for scale-out and the admin API): every second
//! this node's entry — role, load, capacity — is written and every node's
//! read back into the status. On a task of its own: its round trips never
//! stand in the way of the lease watch or a replication round (with a slow
//! Redis, three round trips a second inline starved both).

use std::sync::Arc;
use std::time::Duration;

use relay_core::RelayHandle;
use tokio::sync::watch;

use crate::node::{note_redis, ClusterConfig, ClusterStatus, Role};
use crate::store::{NodeInfo, Store};

/// How often the node registers.
const EVERY: Duration = Duration::from_secs(1);

/// How long an entry outlives its last refresh.
const ENTRY_TTL: Duration = Duration::from_secs(5);

/// Registers one node until it stops.
pub(crate) struct Registrar {
    pub(crate) store: Store,
    pub(crate) relay: RelayHandle,
    pub(crate) config: Arc<ClusterConfig>,
    pub(crate) status: Arc<watch::Sender<ClusterStatus>>,
}

impl Registrar {
    /// Registers every [`EVERY`] until `stop` says so (or its sender is
    /// gone).
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<Option<bool>>) {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.register().await,
                changed = stop.changed() => {
                    if changed.is_err() || stop.borrow().is_some() {
                        return;
                    }
                }
            }
        }
    }

    /// Writes this node's entry (its role as the status has it) and reads
    /// every node's into the status.
    async fn register(&mut self) {
        let role = self.status.borrow().role;
        if role == Role::Stopped {
            return;
        }
        let Ok(c) = self.relay.counters().await else { return };
        let info = NodeInfo {
            node: self.config.node_id.clone(),
            group: self.config.group.clone(),
            role: role.as_str().to_string(),
            address: self.config.advertise.clone(),
            sessions: c.total.sessions_active,
            ports_in_use: c.total.ports_in_use,
            ports_total: c.total.ports_total,
            updated_unix_ms: crate::record::unix_ms_now(),
        };
        let r = self.store.register(&info, ENTRY_TTL).await;
        note_redis(&self.status, &r);
        if let Ok(nodes) = self.store.nodes().await {
            self.status.send_modify(|s| s.nodes = nodes);
        }
    }
}
