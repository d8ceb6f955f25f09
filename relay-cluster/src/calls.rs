//! The ng engine's calls as the cluster replicates them (with the `ng`
//! feature; without it a node replicates sessions only).

#[cfg(feature = "ng")]
use relay_core::ng::CallState;

/// The ng engine a node replicates the calls of.
#[cfg(feature = "ng")]
pub type CallEngine = std::sync::Arc<relay_core::ng::NgEngine>;

/// Without the `ng` feature there is no engine to replicate.
#[cfg(not(feature = "ng"))]
pub type CallEngine = std::convert::Infallible;

/// A call as the node moves it: its state (with `ng`).
#[cfg(feature = "ng")]
pub(crate) type Call = CallState;

/// Without `ng` there are no calls.
#[cfg(not(feature = "ng"))]
pub(crate) type Call = std::convert::Infallible;

/// A node's access to the calls, if it has an engine.
#[derive(Clone, Default)]
pub(crate) struct Calls(pub(crate) Option<CallEngine>);

impl Calls {
    /// The tenant the engine's sessions belong to (bound into its call
    /// records).
    pub(crate) fn tenant(&self) -> String {
        #[cfg(feature = "ng")]
        if let Some(ng) = &self.0 {
            return ng.config().tenant.clone();
        }
        String::new()
    }

    /// Calls touched since the last pull, as they are now, and ended
    /// call-ids.
    pub(crate) async fn pull(&self) -> (Vec<Call>, Vec<String>) {
        #[cfg(feature = "ng")]
        if let Some(ng) = &self.0 {
            let c = ng.call_changes().await;
            return (c.changed, c.ended);
        }
        (Vec::new(), Vec::new())
    }

    /// Every call.
    pub(crate) async fn export(&self) -> Vec<Call> {
        #[cfg(feature = "ng")]
        if let Some(ng) = &self.0 {
            return ng.export_calls().await;
        }
        Vec::new()
    }

    /// Takes calls over (their sessions restored first); returns how many.
    /// A call whose sessions are not live here with the engine's tenant is
    /// refused by the engine.
    pub(crate) async fn restore(&self, calls: Vec<Call>) -> usize {
        #[cfg(feature = "ng")]
        if let Some(ng) = &self.0 {
            return ng.restore_calls(calls).await;
        }
        let _ = calls;
        0
    }

    /// Forgets every call (stepping down).
    pub(crate) fn forget(&self) {
        #[cfg(feature = "ng")]
        if let Some(ng) = &self.0 {
            ng.forget_calls();
        }
    }
}

/// The call-id a call is stored under.
#[cfg(feature = "ng")]
pub(crate) fn call_id(c: &Call) -> &str {
    &c.call_id
}

/// Without `ng` there are no calls.
#[cfg(not(feature = "ng"))]
pub(crate) fn call_id(c: &Call) -> &str {
    match *c {}
}
