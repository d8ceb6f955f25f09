//! Typed drop reasons and plain (non-atomic) counters.
//!
//! Counters are owned by one shard thread and read through snapshots, so the
//! hot path never touches an atomic or a lock.

/// Why a datagram was not forwarded. Every drop is counted with one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// It arrived on a port that no session owns (stale or stray traffic).
    NoSession,
    /// Empty datagram.
    Empty,
    /// Larger than the receive buffer; cut by the kernel.
    Truncated,
    /// The source address is refused by the peer policy (e.g. multicast,
    /// link-local, metadata, loopback when not allowed).
    SourcePolicy,
    /// Strict source: the leg is latched to another address and this source
    /// may not re-latch now.
    SourceMismatch,
    /// `authenticated` latching: a new source without a valid SRTP/SRTCP tag
    /// or STUN MESSAGE-INTEGRITY.
    Unauthenticated,
    /// A valid proof with a packet index not newer than one already seen.
    Replay,
    /// `verify = all`: the SRTP/SRTCP tag did not verify.
    AuthFailed,
    /// The leg's packet-rate bucket is empty.
    RateLimited,
    /// The leg's byte-rate bucket is empty.
    ByteRateLimited,
    /// The other leg has neither a latched address nor an exact hint yet.
    NoDestination,
}

impl DropReason {
    /// All reasons, in a stable order (the index of `counters`).
    pub const ALL: [DropReason; 11] = [
        DropReason::NoSession,
        DropReason::Empty,
        DropReason::Truncated,
        DropReason::SourcePolicy,
        DropReason::SourceMismatch,
        DropReason::Unauthenticated,
        DropReason::Replay,
        DropReason::AuthFailed,
        DropReason::RateLimited,
        DropReason::ByteRateLimited,
        DropReason::NoDestination,
    ];

    /// Stable snake_case name (for metrics labels and JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoSession => "no_session",
            DropReason::Empty => "empty",
            DropReason::Truncated => "truncated",
            DropReason::SourcePolicy => "source_policy",
            DropReason::SourceMismatch => "source_mismatch",
            DropReason::Unauthenticated => "unauthenticated",
            DropReason::Replay => "replay",
            DropReason::AuthFailed => "auth_failed",
            DropReason::RateLimited => "rate_limited",
            DropReason::ByteRateLimited => "byte_rate_limited",
            DropReason::NoDestination => "no_destination",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Drop counts by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::ALL.len()],
}

impl DropCounters {
    /// Counts one drop.
    pub fn add(&mut self, reason: DropReason) {
        self.counts[reason.index()] += 1;
    }
    /// Drops for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }
    /// All drops.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    /// `(reason, count)` pairs, including zeros.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }
    /// Adds another set of counters into this one.
    pub fn merge(&mut self, other: &DropCounters) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }
}

/// Traffic counters of one leg (packets *received from* this leg's remote).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegStats {
    /// Datagrams received on this leg's ports.
    pub packets_received: u64,
    /// Bytes received on this leg's ports.
    pub bytes_received: u64,
    /// Datagrams forwarded to the other leg.
    pub packets_forwarded: u64,
    /// Bytes forwarded to the other leg.
    pub bytes_forwarded: u64,
    /// Times this leg latched to a first address.
    pub latches: u64,
    /// Times this leg moved to a new address.
    pub relatches: u64,
    /// Datagrams dropped, by reason.
    pub drops: DropCounters,
}

/// A shard's global counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Datagrams received on any port.
    pub packets_received: u64,
    /// Bytes received on any port.
    pub bytes_received: u64,
    /// Datagrams forwarded (a `Forward` verdict was returned).
    pub packets_forwarded: u64,
    /// Bytes forwarded.
    pub bytes_forwarded: u64,
    /// Datagrams dropped, by reason.
    pub drops: DropCounters,
    /// Sessions currently allocated.
    pub sessions_active: u64,
    /// Sessions ever allocated.
    pub sessions_created: u64,
    /// Sessions released by a command.
    pub sessions_released: u64,
    /// Sessions ended by the idle timeout.
    pub sessions_expired_idle: u64,
    /// Sessions ended by the maximum duration.
    pub sessions_expired_max_duration: u64,
    /// First latches.
    pub latches: u64,
    /// Moves to a new address.
    pub relatches: u64,
    /// Relay ports owned by this shard.
    pub ports_total: u64,
    /// Relay ports in use.
    pub ports_in_use: u64,
    /// Ports skipped because binding them failed (in use by another program).
    pub port_bind_failures: u64,
    /// Ports out of rotation right now after a failed bind (counted in
    /// `ports_in_use`; they return after the quarantine).
    pub ports_quarantined: u64,
    /// Ports whose socket is still being closed by the backend (counted in
    /// `ports_in_use`).
    pub ports_closing: u64,
    /// Allocations refused (ports exhausted, quota, invalid spec).
    pub allocations_refused: u64,
    /// Sends the backend failed to perform (counted by the I/O backend).
    pub send_errors: u64,
    /// Receive errors other than "would block" (counted by the I/O backend).
    pub recv_errors: u64,
    /// io_uring: multishot receives that ended for lack of buffers.
    pub backend_enobufs: u64,
    /// io_uring: multishot receives re-armed after they ended.
    pub backend_rearms: u64,
}

impl ShardCounters {
    /// Adds another shard's counters into this one.
    pub fn merge(&mut self, o: &ShardCounters) {
        self.packets_received += o.packets_received;
        self.bytes_received += o.bytes_received;
        self.packets_forwarded += o.packets_forwarded;
        self.bytes_forwarded += o.bytes_forwarded;
        self.drops.merge(&o.drops);
        self.sessions_active += o.sessions_active;
        self.sessions_created += o.sessions_created;
        self.sessions_released += o.sessions_released;
        self.sessions_expired_idle += o.sessions_expired_idle;
        self.sessions_expired_max_duration += o.sessions_expired_max_duration;
        self.latches += o.latches;
        self.relatches += o.relatches;
        self.ports_total += o.ports_total;
        self.ports_in_use += o.ports_in_use;
        self.port_bind_failures += o.port_bind_failures;
        self.ports_quarantined += o.ports_quarantined;
        self.ports_closing += o.ports_closing;
        self.allocations_refused += o.allocations_refused;
        self.send_errors += o.send_errors;
        self.recv_errors += o.recv_errors;
        self.backend_enobufs += o.backend_enobufs;
        self.backend_rearms += o.backend_rearms;
    }
}
