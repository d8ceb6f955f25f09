//! Whether the relay beside a node serves allocations and changes: only
//! while the node is active (its takeover done) *and* its lease is known
//! to be valid on its own clock. The keeper closes the gate the moment the
//! lease could have expired in Redis, before a standby can take it — a node
//! cut off from Redis stops acknowledging anything a new active would not
//! know. Forwarding of existing media is not gated.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use relay_core::RelayHandle;

/// The two conditions, kept together so that concurrent changes never
/// leave the relay's flag stale.
#[derive(Debug, Default, Clone, Copy)]
struct Conditions {
    /// The node is active and its takeover is done.
    ready: bool,
    /// The lease was renewed recently enough that it cannot have expired.
    lease_valid: bool,
}

/// The gate of one relay (closed until opened).
pub(crate) struct ServeGate {
    relay: RelayHandle,
    conditions: Mutex<Conditions>,
    serving: AtomicBool,
}

impl ServeGate {
    /// A closed gate: the relay is marked standby.
    pub(crate) fn new(relay: RelayHandle) -> Self {
        relay.set_standby(true);
        Self { relay, conditions: Mutex::new(Conditions::default()), serving: AtomicBool::new(false) }
    }

    /// The node finished taking over (or stopped being active).
    pub(crate) fn set_ready(&self, ready: bool) {
        self.change(|c| c.ready = ready);
    }

    /// The lease is (or is no longer) known valid.
    pub(crate) fn set_lease_valid(&self, valid: bool) {
        self.change(|c| c.lease_valid = valid);
    }

    /// Whether the relay serves now.
    pub(crate) fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    fn change(&self, f: impl FnOnce(&mut Conditions)) {
        let mut c = self.conditions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut c);
        let serving = c.ready && c.lease_valid;
        // Under the lock: the flag always follows the last change.
        self.relay.set_standby(!serving);
        self.serving.store(serving, Ordering::SeqCst);
    }
}
