//! The ng engine's calls as the cluster replicates them (with the `ng`
//! feature; without it a node replicates sessions only).

/// The ng engine a node replicates the calls of.
#[cfg(feature = "ng")]
pub type CallEngine = std::sync::Arc<relay_core::ng::NgEngine>;

/// Without the `ng` feature there is no engine to replicate.
#[cfg(not(feature = "ng"))]
pub type CallEngine = std::convert::Infallible;

/// A node's access to the calls, if it has an engine.
#[derive(Clone, Default)]
pub(crate) struct Calls(pub(crate) Option<CallEngine>);

impl Calls {
    /// Calls touched since the last pull: `(call-id, state JSON)` and
    /// ended call-ids.
    pub(crate) async fn pull(&self) -> (Vec<(String, String)>, Vec<String>) {
        #[cfg(feature = "ng")]
        if let Some(ng) = &self.0 {
            let c = ng.call_changes().await;
            let set =
                c.changed.iter().map(|s| (s.call_id.clone(), serde_json::to_string(s).unwrap_or_default())).collect();
            return (set, c.ended);
        }
        (Vec::new(), Vec::new())
    }

    /// Every call: `(call-id, state JSON)`.
    pub(crate) async fn export(&self) -> Vec<(String, String)> {
        #[cfg(feature = "ng")]
        if let Some(ng) = &self.0 {
            return ng
                .export_calls()
                .await
                .iter()
                .map(|s| (s.call_id.clone(), serde_json::to_string(s).unwrap_or_default()))
                .collect();
        }
        Vec::new()
    }

    /// Takes the stored calls over; returns how many (unreadable ones are
    /// skipped and counted by the caller as the difference).
    pub(crate) async fn restore(&self, stored: Vec<Vec<u8>>) -> usize {
        #[cfg(feature = "ng")]
        if let Some(ng) = &self.0 {
            let states: Vec<relay_core::ng::state::CallState> = stored
                .iter()
                .filter(|b| b.len() <= crate::record::MAX_RECORD_BYTES)
                .filter_map(|b| serde_json::from_slice(b).ok())
                .collect();
            return ng.restore_calls(states).await;
        }
        let _ = stored;
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
