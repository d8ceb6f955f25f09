//! Channels the kernel may relay (the driver's fast path, when it has one):
//! the server says which, the driver writes the routes (like firezone's
//! relay, whose event loop — not its state machine — writes the eBPF maps).
//!
//! With offloading on ([`TurnServer::enable_offload`]), every live channel
//! of an opened UDP allocation is announced with [`Command::OffloadChannel`]
//! after anything that moves its deadline — the earliest of the channel's,
//! its peer permission's and the allocation's expiry — or the allocation's
//! rate; [`Command::EndOffload`] follows the allocation's end. The kernel
//! relays until that deadline and passes everything else up, so every
//! decision stays this server's. A deadline extended by less than
//! [`ANNOUNCE_GRACE`] is not announced again: a client repeating its
//! requests would otherwise buy map writes for every channel with each
//! (the kernel's route then lapses up to that much early, and userspace
//! relays the rest); a shrunk one always is. What the kernel relayed
//! comes back with [`TurnServer::handle_offload_counts`] and is counted as
//! if relayed here.
//!
//! The allocation's byte budget moves with its first channel: the kernel's
//! bucket starts with what this server's held, and this server's starts
//! empty. This server's bucket still refills at the allocation's rate for
//! what stays in userspace — Send indications, expired routes — and is
//! charged what the kernel relayed at every report (every 500 ms) beyond
//! what was handed over, owing what it cannot pay: a client splitting one
//! allocation's traffic between channels and indications gets one rate
//! (plus one report's lag and the two bursts), not one per path, and no
//! byte is paid for by both.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::allocation::{ClientKey, RelayId, Transport};
use super::limits::later;
use super::proto::Family;
use super::server::{Command, TurnServer};

/// A channel's deadline extended by less than this is not announced again
/// (requests that move it a little, repeated, cost no map writes).
pub const ANNOUNCE_GRACE: Duration = Duration::from_secs(10);

/// One live channel of a UDP allocation, both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelOffload {
    /// The allocation (its first relayed socket): one budget, one set of
    /// counters in the kernel for all its channels.
    pub relay: RelayId,
    /// The relayed socket this channel's peer is reached from (a dual
    /// allocation's second one for a peer of its family).
    pub socket: RelayId,
    /// Its client (UDP).
    pub client: ClientKey,
    /// The channel number.
    pub channel: u16,
    /// The channel's peer.
    pub peer: SocketAddr,
    /// Until when the kernel may relay on it.
    pub until: Instant,
    /// The allocation's rate, bytes per second.
    pub bytes_per_second: u64,
    /// Its burst, bytes.
    pub burst_bytes: u64,
    /// The allocation's budget, handed over with its first channel.
    pub budget: Option<u64>,
}

/// What the kernel relayed for one allocation since the last report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadCounts {
    /// Datagrams client → peer.
    pub to_peer_packets: u64,
    /// Their application bytes.
    pub to_peer_bytes: u64,
    /// Datagrams peer → client.
    pub to_client_packets: u64,
    /// Their application bytes.
    pub to_client_bytes: u64,
    /// Datagrams dropped over the allocation's rate.
    pub rate_limited: u64,
}

impl TurnServer {
    /// Announces channels to the driver from now on (it has a kernel fast
    /// path); the allocations already open are announced at once.
    pub fn enable_offload(&mut self, now: Instant) {
        self.offload = true;
        let relays: Vec<RelayId> = self.allocations.keys().copied().collect();
        for relay in relays {
            self.offload_channels(now, relay);
        }
    }

    /// Announces the live channels of `relay`'s allocation with their
    /// current deadlines (nothing unless offloading is on and it is an
    /// opened UDP allocation): each for the first time, or when its
    /// deadline shrank or grew by [`ANNOUNCE_GRACE`] or more.
    pub(super) fn offload_channels(&mut self, now: Instant, relay: RelayId) {
        if !self.offload {
            return;
        }
        let limits = self.settings.limits;
        let Some(alloc) = self.allocations.get_mut(&relay) else { return };
        if !alloc.opened || alloc.tcp || alloc.client.transport != Transport::Udp {
            return;
        }
        let permissions: Vec<_> = alloc.permissions(now).collect();
        let routes: Vec<(u16, SocketAddr, Instant, RelayId)> = alloc
            .channels(now)
            .filter_map(|c| {
                let permission = permissions.iter().find(|(ip, _)| *ip == c.peer.ip())?.1;
                let family = Family::of(c.peer);
                // The kernel does not translate between families: a peer
                // of the client's other family (a dual allocation's, or
                // one asked with REQUESTED-ADDRESS-FAMILY) stays in
                // userspace, never announced (a refused announcement
                // would take the budget back and every request would
                // announce again).
                if family != Family::of(alloc.client.source) {
                    return None;
                }
                let socket = alloc.relay_for(family)?;
                Some((c.number, c.peer, c.expires.min(permission).min(alloc.expires_for(family)), socket))
            })
            // An allocation past its expiry whose timer has not run yet
            // relays nothing in the kernel.
            .filter(|(_, _, until, _)| *until > now)
            .collect();
        // What the kernel was told about routes no longer live is
        // forgotten (their kernel routes have lapsed): the list stays as
        // short as the allocation's live channels, however many come and go.
        alloc.announced.retain(|(n, p, _)| routes.iter().any(|(c, peer, _, _)| c == n && peer == p));
        for (channel, peer, until, socket) in routes {
            let last = alloc.announced.iter().find(|(n, p, _)| *n == channel && *p == peer).map(|a| a.2);
            // Map writes only for a deadline that moved materially: a
            // client repeating requests (each one re-announces every
            // channel) must not turn each into map writes for all of them.
            // An extension by less than the grace of a route the kernel
            // still holds is skipped (it lapses that much early; userspace
            // relays the rest); a shrink never is.
            let small_extension = |last: Instant| last > now && until >= last && until < later(last, ANNOUNCE_GRACE);
            if alloc.offloaded && last.is_some_and(small_extension) {
                continue;
            }
            alloc.announced.retain(|(n, p, _)| !(*n == channel && *p == peer));
            alloc.announced.push((channel, peer, until));
            let budget = (!alloc.offloaded).then(|| {
                alloc.offloaded = true;
                alloc.rate.hand_over(now, limits.bytes_per_second, limits.burst_bytes)
            });
            self.commands.push_back(Command::OffloadChannel(ChannelOffload {
                relay,
                socket,
                client: alloc.client,
                channel,
                peer,
                until,
                bytes_per_second: limits.bytes_per_second,
                burst_bytes: limits.burst_bytes,
                budget,
            }));
        }
    }

    /// The driver could not give `relay`'s channel to the kernel: the
    /// budget handed over with it comes back, and the next announcement
    /// hands it over again.
    pub fn handle_offload_refused(&mut self, now: Instant, relay: RelayId, budget: Option<u64>) {
        let limits = self.settings.limits;
        let key = self.allocation_key(relay);
        if let (Some(alloc), Some(budget)) = (self.allocations.get_mut(&key), budget) {
            alloc.offloaded = false;
            alloc.announced.clear();
            alloc.rate.take_back(now, budget, limits.bytes_per_second, limits.burst_bytes);
        }
    }

    /// What the kernel relayed for `relay`'s allocation since the last
    /// report: counted as relayed here, and paid for from the allocation's
    /// budget (it may have ended since: then only the totals count it).
    pub fn handle_offload_counts(&mut self, now: Instant, relay: RelayId, counts: OffloadCounts) {
        let limits = self.settings.limits;
        let key = self.allocation_key(relay);
        if let Some(alloc) = self.allocations.get_mut(&key) {
            // One budget for both paths: what the kernel relayed is paid
            // for here too.
            let relayed = counts.to_peer_bytes.saturating_add(counts.to_client_bytes);
            alloc.rate.charge(now, relayed, limits.bytes_per_second, limits.burst_bytes);
            alloc.to_peer.0 += counts.to_peer_packets;
            alloc.to_peer.1 += counts.to_peer_bytes;
            alloc.to_client.0 += counts.to_client_packets;
            alloc.to_client.1 += counts.to_client_bytes;
        }
        self.stats.to_peer_packets += counts.to_peer_packets;
        self.stats.to_peer_bytes += counts.to_peer_bytes;
        self.stats.to_client_packets += counts.to_client_packets;
        self.stats.to_client_bytes += counts.to_client_bytes;
        self.stats.dropped_many(super::stats::TurnDrop::RateLimited, counts.rate_limited);
    }
}
