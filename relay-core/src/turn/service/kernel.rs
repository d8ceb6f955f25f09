//! The kernel fast path's side of the service: channels handed to the
//! driver, their budgets back when it cannot take them, and what the
//! kernel relayed brought into the server's counters.

use super::*;

/// Counts what the kernel relayed since the last sync.
#[cfg(feature = "ebpf")]
pub(super) fn sync_kernel(s: &mut Shared) {
    let Some(kernel) = s.kernel.as_mut() else { return };
    for (relay, counts) in kernel.poll_counts() {
        s.server.handle_offload_counts(Instant::now(), relay, counts);
    }
}

/// Gives a channel to the kernel, or its budget back to the server.
pub(super) fn offload_channel(s: &mut Shared, o: crate::turn::offload::ChannelOffload) {
    #[cfg(feature = "ebpf")]
    if let (Some(kernel), Some(relayed)) = (s.kernel.as_mut(), s.server.relay_bind_address(o.socket)) {
        let local = s.local_of.get(&o.client).copied();
        if let Some(budget) = kernel.handle_offload(&o, relayed, local, Instant::now()) {
            s.server.handle_offload_refused(Instant::now(), o.relay, Some(budget));
        }
        return;
    }
    s.server.handle_offload_refused(Instant::now(), o.relay, o.budget);
}

/// An allocation ended: its kernel routes go, what they relayed is counted.
pub(super) fn end_offload(_s: &mut Shared, _relay: RelayId) {
    #[cfg(feature = "ebpf")]
    if let Some(counts) = _s.kernel.as_mut().and_then(|k| k.handle_end(_relay)) {
        _s.server.handle_offload_counts(Instant::now(), _relay, counts);
    }
}
