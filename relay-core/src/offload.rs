//! Kernel offload, sans-IO: which established leg directions a kernel
//! fast path (the `ebpf` feature's tc program) may forward on its own, and
//! how its counters come back.
//!
//! The shard decides (a session says which route a forwarded datagram
//! establishes; the shard keeps which routes are installed, in its
//! `OffloadTable`); a driver beside the backend applies the decisions to
//! the kernel's maps and reports the kernel's counters. A route is offered
//! ([`Offload::Install`]) after userspace itself forwarded an RTP/RTCP
//! packet from a leg's latched source, so the kernel only ever continues a
//! decision userspace already made; any change that could alter a decision
//! — a re-latch, an update (keys, hints, limits, policy, block), the end of
//! the session — withdraws the session's routes ([`Offload::Remove`]) and
//! the next packets come up again. `verify = all` legs are never offloaded
//! (every packet needs an HMAC check). Idle timeouts stay exact: a session
//! with routes asks for fresh counters ([`Offload::Refresh`]) before it may
//! expire.

use std::net::SocketAddr;
use std::time::Duration;

use crate::relay_port::RelayPort;

/// One direction of a leg, forwarded in the kernel: a datagram to `local`
/// from exactly `from` leaves from `via` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadRoute {
    /// The relay socket it arrives on.
    pub local: RelayPort,
    /// The leg's latched source.
    pub from: SocketAddr,
    /// The relay socket it leaves from.
    pub via: RelayPort,
    /// Where it goes.
    pub to: SocketAddr,
    /// The leg's packet-rate limit (the kernel drops beyond it, counted as
    /// `rate_limited`, as userspace would).
    pub max_pps: Option<u32>,
    /// The leg's byte-rate limit.
    pub max_bytes_per_sec: Option<u64>,
    /// RTP on this socket from `from` goes to `to` via `via`.
    pub rtp: bool,
    /// RTCP on this socket from `from` goes there too (a muxing remote's
    /// RTCP may go elsewhere than its RTP: then it stays in userspace). A
    /// leg with SRTP keys offloads RTP only: its replay memory needs every
    /// SRTCP index, and the kernel reports the last RTP one.
    pub rtcp: bool,
}

/// What the shard asks the kernel fast path to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// Install (or replace) a route.
    Install(OffloadRoute),
    /// Read the route's counters one last time (answer with
    /// [`Shard::handle_offload_stats`](crate::shard::Shard::handle_offload_stats)),
    /// then remove it.
    Remove(RelayPort),
    /// Read the route's counters now (the session may be idle).
    Refresh(RelayPort),
}

/// The kernel's counters of one route since it was installed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadStats {
    /// Datagrams forwarded.
    pub packets: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Datagrams dropped over the route's rate.
    pub rate_limited: u64,
    /// How long ago the last one was forwarded.
    pub last_ago: Option<Duration>,
    /// The SSRC and sequence number of the last RTP packet forwarded (the
    /// leg's replay memory follows it).
    pub last_rtp: Option<(u32, u16)>,
}

/// A route the kernel holds, with the counters already accounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offloaded {
    pub(crate) route: OffloadRoute,
    pub(crate) seen: OffloadStats,
}

impl Offloaded {
    pub(crate) fn new(route: OffloadRoute) -> Self {
        Self { route, seen: OffloadStats::default() }
    }

    /// What `now_total` adds to what was accounted (counters only grow
    /// while a route is installed).
    pub(crate) fn delta(&mut self, now_total: OffloadStats) -> OffloadStats {
        let d = OffloadStats {
            packets: now_total.packets.saturating_sub(self.seen.packets),
            bytes: now_total.bytes.saturating_sub(self.seen.bytes),
            rate_limited: now_total.rate_limited.saturating_sub(self.seen.rate_limited),
            last_ago: now_total.last_ago,
            last_rtp: now_total.last_rtp,
        };
        self.seen = now_total;
        d
    }
}
