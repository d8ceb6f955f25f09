//! The TURN server's allocations as the cluster replicates them (with the
//! `turn` feature; without it a node replicates none).

/// The TURN service a node replicates the allocations of.
#[cfg(feature = "turn")]
pub type TurnEngine = relay_core::turn::service::TurnService;

/// Without the `turn` feature there is no service to replicate.
#[cfg(not(feature = "turn"))]
pub type TurnEngine = std::convert::Infallible;

/// An allocation as the node moves it (with `turn`).
#[cfg(feature = "turn")]
pub(crate) type Allocation = relay_core::turn::replica::AllocationState;

/// Without `turn` there are no allocations.
#[cfg(not(feature = "turn"))]
pub(crate) type Allocation = std::convert::Infallible;

/// A node's access to the TURN allocations, if it has a service.
#[derive(Clone, Default)]
pub(crate) struct Turn(pub(crate) Option<TurnEngine>);

impl Turn {
    /// Allocations changed since the last pull, as they are now, and the
    /// ids of those that ended.
    pub(crate) fn pull(&self) -> (Vec<Allocation>, Vec<String>) {
        #[cfg(feature = "turn")]
        if let Some(t) = &self.0 {
            let c = t.take_changes();
            return (c.changed, c.ended);
        }
        (Vec::new(), Vec::new())
    }

    /// Every replicated allocation.
    pub(crate) fn export(&self) -> Vec<Allocation> {
        #[cfg(feature = "turn")]
        if let Some(t) = &self.0 {
            return t.export();
        }
        Vec::new()
    }

    /// Takes allocations over on their relayed ports; returns how many.
    pub(crate) fn restore(&self, allocations: Vec<Allocation>) -> usize {
        #[cfg(feature = "turn")]
        if let Some(t) = &self.0 {
            return t.restore(allocations);
        }
        let _ = allocations;
        0
    }

    /// Forgets every allocation (stepping down), and what the journal
    /// holds: their ends are not this node's to write.
    pub(crate) fn forget(&self) {
        #[cfg(feature = "turn")]
        if let Some(t) = &self.0 {
            t.forget_all();
            let _ = t.take_changes();
        }
    }
}

/// The record id an allocation is stored under.
#[cfg(feature = "turn")]
pub(crate) fn turn_id(a: &Allocation) -> String {
    a.id()
}

/// Without `turn` there is nothing to name.
#[cfg(not(feature = "turn"))]
pub(crate) fn turn_id(a: &Allocation) -> String {
    match *a {}
}
