//! What a TURN server counts: requests by method and result, drops by
//! reason, relayed datagrams and bytes each way, allocation lifecycle.

use super::proto::{ErrorCode, Method};

/// Why a client's or peer's input was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TurnDrop {
    /// Neither STUN nor ChannelData, or a field that does not hold.
    Malformed,
    /// A request of a method the server does not know.
    UnknownMethod,
    /// A response or an indication other than Send from a client.
    UnexpectedMessage,
    /// Data for an allocation that does not exist (or is not open yet).
    NoAllocation,
    /// ChannelData on a channel not bound.
    NoChannel,
    /// Data to or from a peer without a permission.
    NoPermission,
    /// A Send indication to a peer the policy refuses.
    Forbidden,
    /// Over the allocation's rate.
    RateLimited,
    /// An answer to a stranger over its prefix's budget.
    StrangerBudget,
    /// A peer's connection to a TCP allocation holding as many as it may.
    ConnectionLimit,
    /// A request to a cluster standby or fenced active (it changes
    /// nothing).
    Standby,
}

impl TurnDrop {
    /// Every reason, in metric-label order.
    pub const ALL: [TurnDrop; 11] = [
        TurnDrop::Malformed,
        TurnDrop::UnknownMethod,
        TurnDrop::UnexpectedMessage,
        TurnDrop::NoAllocation,
        TurnDrop::NoChannel,
        TurnDrop::NoPermission,
        TurnDrop::Forbidden,
        TurnDrop::RateLimited,
        TurnDrop::StrangerBudget,
        TurnDrop::ConnectionLimit,
        TurnDrop::Standby,
    ];

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            TurnDrop::Malformed => "malformed",
            TurnDrop::UnknownMethod => "unknown_method",
            TurnDrop::UnexpectedMessage => "unexpected_message",
            TurnDrop::NoAllocation => "no_allocation",
            TurnDrop::NoChannel => "no_channel",
            TurnDrop::NoPermission => "no_permission",
            TurnDrop::Forbidden => "forbidden_peer",
            TurnDrop::RateLimited => "rate_limited",
            TurnDrop::StrangerBudget => "stranger_budget",
            TurnDrop::ConnectionLimit => "connection_limit",
            TurnDrop::Standby => "standby",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }
}

/// Results a request is counted under: success, then each error code.
const RESULTS: usize = 1 + ErrorCode::ALL.len();

/// The counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnStats {
    requests: [[u64; RESULTS]; Method::ALL.len()],
    drops: [u64; TurnDrop::ALL.len()],
    /// Datagrams relayed client → peer.
    pub to_peer_packets: u64,
    /// Bytes of application data relayed client → peer.
    pub to_peer_bytes: u64,
    /// Datagrams relayed peer → client.
    pub to_client_packets: u64,
    /// Bytes of application data relayed peer → client.
    pub to_client_bytes: u64,
    /// Allocations that expired unrefreshed.
    pub expired: u64,
    /// Relayed ports the driver could not open (taken by another process).
    pub ports_unavailable: u64,
    /// Peer connections (RFC 6062) closed because no ConnectionBind came.
    pub connections_unbound: u64,
}

impl TurnStats {
    pub(super) fn answered(&mut self, method: Method, error: Option<ErrorCode>) {
        let m = Method::ALL.iter().position(|x| *x == method).unwrap_or(0);
        let r = error.map_or(0, |e| 1 + ErrorCode::ALL.iter().position(|x| *x == e).unwrap_or(0));
        self.requests[m][r] += 1;
    }

    pub(super) fn dropped(&mut self, reason: TurnDrop) {
        self.drops[reason.index()] += 1;
    }

    pub(super) fn dropped_many(&mut self, reason: TurnDrop, n: u64) {
        self.drops[reason.index()] += n;
    }

    pub(super) fn relayed_to_peer(&mut self, bytes: u64) {
        self.to_peer_packets += 1;
        self.to_peer_bytes += bytes;
    }

    pub(super) fn relayed_to_client(&mut self, bytes: u64) {
        self.to_client_packets += 1;
        self.to_client_bytes += bytes;
    }

    /// Requests of `method` answered with `error` (`None`: success).
    pub fn requests(&self, method: Method, error: Option<ErrorCode>) -> u64 {
        let m = Method::ALL.iter().position(|x| *x == method).unwrap_or(0);
        let r = error.map_or(0, |e| 1 + ErrorCode::ALL.iter().position(|x| *x == e).unwrap_or(0));
        self.requests[m][r]
    }

    /// Inputs dropped for `reason`.
    pub fn drops(&self, reason: TurnDrop) -> u64 {
        self.drops[reason.index()]
    }
}
