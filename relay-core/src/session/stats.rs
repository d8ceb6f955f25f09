//! Typed drop reasons and plain (non-atomic) counters.
//!
//! Counters are owned by one shard thread and read through snapshots, so the
//! hot path never touches an atomic or a lock.

crate::names::named! {
    /// Why a datagram was not forwarded. Every drop is counted with one of
    /// these; `ALL` is the index of the counters.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum DropReason {
        /// It arrived on a port that no session owns (stale or stray traffic).
        NoSession => "no_session",
        /// Empty datagram.
        Empty => "empty",
        /// Larger than the receive buffer; cut by the kernel.
        Truncated => "truncated",
        /// The source address is refused by the peer policy (e.g. multicast,
        /// link-local, metadata, loopback when not allowed).
        SourcePolicy => "source_policy",
        /// The source is one of the relay's own addresses (a media port or a
        /// listener): never latched, never a destination.
        RelayAddress => "relay_address",
        /// Not media: only the RFC 7983 classes (STUN, ZRTP, DTLS, TURN channel,
        /// RTP/RTCP) with a plausible header cross the relay.
        NotMedia => "not_media",
        /// The leg waits for its address from signalling (e.g. the answerer
        /// before the SDP answer) and latches nothing until then.
        NoHint => "no_hint",
        /// Strict source: the leg is latched to another address and this source
        /// may not re-latch now.
        SourceMismatch => "source_mismatch",
        /// `authenticated` latching: a new source without a valid SRTP/SRTCP tag
        /// or STUN MESSAGE-INTEGRITY.
        Unauthenticated => "unauthenticated",
        /// `authenticated` latching: the leg's budget of failed proofs is spent;
        /// new sources are refused without checking until the back-off ends.
        ProofBackoff => "proof_backoff",
        /// A valid proof with a packet index not newer than one already seen
        /// (or a STUN transaction already used).
        Replay => "replay",
        /// `verify = all`: the SRTP/SRTCP tag did not verify.
        AuthFailed => "auth_failed",
        /// The leg's packet-rate bucket is empty.
        RateLimited => "rate_limited",
        /// The leg's byte-rate bucket is empty.
        ByteRateLimited => "byte_rate_limited",
        /// The other leg has neither a latched address nor an exact hint yet.
        NoDestination => "no_destination",
        /// Media from this leg is blocked by a command (ng `block media`).
        Blocked => "blocked",
        /// `authenticated` latching on a leg the kernel fast path forwards: a
        /// new source waits until the kernel's last packet index is back in
        /// userspace (its routes are withdrawn at once; a fraction of a second).
        KernelSync => "kernel_sync",
    }
}

impl DropReason {
    fn index(self) -> usize {
        self as usize
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
    /// Counts `n` drops (saturating: `n` may come from a stored record).
    pub fn add_n(&mut self, reason: DropReason, n: u64) {
        let count = &mut self.counts[reason.index()];
        *count = count.saturating_add(n);
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
    /// Of the datagrams received, those that were RTCP (on either port).
    pub rtcp_packets_received: u64,
    /// Of the bytes received, those of RTCP datagrams.
    pub rtcp_bytes_received: u64,
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
    /// Datagrams forwarded (a `Forward` verdict was returned, or the
    /// kernel fast path forwarded them).
    pub packets_forwarded: u64,
    /// Of those, forwarded by the kernel fast path.
    pub packets_forwarded_kernel: u64,
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
        self.packets_forwarded_kernel += o.packets_forwarded_kernel;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_doc_names_every_drop_reason() {
        let doc = include_str!("../../../docs/relay-core.md");
        let section = doc.split("## Every drop has a reason").nth(1).expect("section");
        let section = section.split("\n## ").next().unwrap_or(section);
        for r in DropReason::ALL {
            assert!(section.contains(&format!("`{}`", r.as_str())), "docs/relay-core.md misses `{}`", r.as_str());
        }
    }
}
