//! TURN channels in the kernel: the maps of `forward.bpf.c`'s TURN part
//! and the operations on them. One [`ChannelRoute`] is a live channel of
//! a UDP allocation, both directions: ChannelData from the client goes to
//! the peer unwrapped, the peer's datagrams go to the client wrapped —
//! until the route's deadline (the earliest of the channel's, the
//! permission's and the allocation's expiry), after which packets go up
//! and userspace decides. Counters and the byte bucket are per allocation
//! (a slot), shared by its channels and both directions.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::Ebpf;

use super::{map_err, FastPath, FastPathError, NextHop, FLAG_LOCAL};

/// Allocations that may hold kernel routes at once (the slot maps' size).
pub const MAX_TURN_SLOTS: u32 = 65_536;

/// `struct turn_in_key` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TurnInKey {
    pub(super) client_addr: u32,
    pub(super) listener_addr: u32,
    pub(super) client_port: u16,
    pub(super) listener_port: u16,
    pub(super) channel: u16,
    pub(super) pad: u16,
}

/// `struct turn_in_value` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct TurnInValue {
    pub(super) relay_addr: u32,
    pub(super) peer_addr: u32,
    pub(super) relay_port: u16,
    pub(super) peer_port: u16,
    pub(super) slot: u32,
    pub(super) out_ifindex: u32,
    pub(super) flags: u16,
    pub(super) pad: u16,
    pub(super) until_ns: u64,
}

/// `struct turn_out_key` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TurnOutKey {
    pub(super) peer_addr: u32,
    pub(super) relay_addr: u32,
    pub(super) peer_port: u16,
    pub(super) relay_port: u16,
}

/// `struct turn_out_value` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct TurnOutValue {
    pub(super) listener_addr: u32,
    pub(super) client_addr: u32,
    pub(super) listener_port: u16,
    pub(super) client_port: u16,
    pub(super) channel: u16,
    pub(super) flags: u16,
    pub(super) slot: u32,
    pub(super) out_ifindex: u32,
    pub(super) until_ns: u64,
}

/// `struct turn6_in_key` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Turn6InKey {
    pub(super) client_addr: [u8; 16],
    pub(super) listener_addr: [u8; 16],
    pub(super) client_port: u16,
    pub(super) listener_port: u16,
    pub(super) channel: u16,
    pub(super) pad: u16,
}

/// `struct turn6_in_value` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct Turn6InValue {
    pub(super) relay_addr: [u8; 16],
    pub(super) peer_addr: [u8; 16],
    pub(super) relay_port: u16,
    pub(super) peer_port: u16,
    pub(super) slot: u32,
    pub(super) out_ifindex: u32,
    pub(super) flags: u16,
    pub(super) pad: u16,
    pub(super) until_ns: u64,
}

/// `struct turn6_out_key` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Turn6OutKey {
    pub(super) peer_addr: [u8; 16],
    pub(super) relay_addr: [u8; 16],
    pub(super) peer_port: u16,
    pub(super) relay_port: u16,
}

/// `struct turn6_out_value` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct Turn6OutValue {
    pub(super) listener_addr: [u8; 16],
    pub(super) client_addr: [u8; 16],
    pub(super) listener_port: u16,
    pub(super) client_port: u16,
    pub(super) channel: u16,
    pub(super) flags: u16,
    pub(super) slot: u32,
    pub(super) out_ifindex: u32,
    pub(super) until_ns: u64,
}

/// `struct turn_stats` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TurnStatsC {
    pub(super) to_peer_packets: u64,
    pub(super) to_peer_bytes: u64,
    pub(super) to_client_packets: u64,
    pub(super) to_client_bytes: u64,
    pub(super) over_rate: u64,
}

/// `struct turn_bucket` of the C program (its lock word included).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TurnBucketC {
    pub(super) lock: u32,
    pub(super) pad: u32,
    pub(super) tokens: u64,
    pub(super) last_ns: u64,
    pub(super) bytes_per_sec: u64,
    pub(super) burst: u64,
}

// SAFETY: plain `repr(C)` structs of integers laid out as the C program's
// (checked against its BTF by the layout test), valid for any bytes.
unsafe impl aya::Pod for TurnInKey {}
// SAFETY: as above.
unsafe impl aya::Pod for TurnInValue {}
// SAFETY: as above.
unsafe impl aya::Pod for TurnOutKey {}
// SAFETY: as above.
unsafe impl aya::Pod for TurnOutValue {}
// SAFETY: as above.
unsafe impl aya::Pod for Turn6InKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Turn6InValue {}
// SAFETY: as above.
unsafe impl aya::Pod for Turn6OutKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Turn6OutValue {}
// SAFETY: as above.
unsafe impl aya::Pod for TurnStatsC {}
// SAFETY: as above.
unsafe impl aya::Pod for TurnBucketC {}

/// The TURN maps of the loaded program.
pub(super) struct TurnMaps {
    routes_in: HashMap<MapData, TurnInKey, TurnInValue>,
    routes_out: HashMap<MapData, TurnOutKey, TurnOutValue>,
    routes6_in: HashMap<MapData, Turn6InKey, Turn6InValue>,
    routes6_out: HashMap<MapData, Turn6OutKey, Turn6OutValue>,
    stats: PerCpuArray<MapData, TurnStatsC>,
    buckets: Array<MapData, TurnBucketC>,
}

impl TurnMaps {
    pub(super) fn take(bpf: &mut Ebpf) -> Result<Self, FastPathError> {
        let mut take = |name: &'static str| {
            bpf.take_map(name).ok_or_else(|| FastPathError::Load(format!("no {name} map in the object")))
        };
        Ok(Self {
            routes_in: HashMap::try_from(take("turn_in")?).map_err(map_err("turn_in"))?,
            routes_out: HashMap::try_from(take("turn_out")?).map_err(map_err("turn_out"))?,
            routes6_in: HashMap::try_from(take("turn6_in")?).map_err(map_err("turn6_in"))?,
            routes6_out: HashMap::try_from(take("turn6_out")?).map_err(map_err("turn6_out"))?,
            stats: PerCpuArray::try_from(take("turn_stats")?).map_err(map_err("turn_stats"))?,
            buckets: Array::try_from(take("turn_buckets")?).map_err(map_err("turn_buckets"))?,
        })
    }
}

/// One live channel of a UDP allocation, both directions; its four
/// addresses of one family (IPv4 or IPv6: the kernel does not translate
/// between them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelRoute {
    /// The client's address (its datagrams' source).
    pub client: SocketAddr,
    /// The listener the client sends to (a specific address).
    pub listener: SocketAddr,
    /// The channel number.
    pub channel: u16,
    /// The allocation's relayed socket (a specific address).
    pub relayed: SocketAddr,
    /// The channel's peer.
    pub peer: SocketAddr,
    /// Time since boot (CLOCK_MONOTONIC) until which the kernel relays.
    pub until: Duration,
    /// The allocation's counters and bucket slot (`0 .. MAX_TURN_SLOTS`).
    pub slot: u32,
    /// How the peer's datagrams leave (toward the peer).
    pub to_peer: NextHop,
    /// How the client's leave (toward the client).
    pub to_client: NextHop,
}

/// An allocation's byte budget as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnBucket {
    /// Bytes it may relay now.
    pub tokens: u64,
    /// Refill rate.
    pub bytes_per_second: u64,
    /// Most it holds.
    pub burst: u64,
}

/// What the kernel relayed for one allocation, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnCounters {
    /// Datagrams client → peer.
    pub to_peer_packets: u64,
    /// Their application bytes.
    pub to_peer_bytes: u64,
    /// Datagrams peer → client.
    pub to_client_packets: u64,
    /// Their application bytes.
    pub to_client_bytes: u64,
    /// Datagrams dropped over the allocation's rate.
    pub over_rate: u64,
}

impl TurnCounters {
    /// What was counted since `earlier` (counters only grow while a slot
    /// is held).
    pub fn since(&self, earlier: &TurnCounters) -> TurnCounters {
        TurnCounters {
            to_peer_packets: self.to_peer_packets.saturating_sub(earlier.to_peer_packets),
            to_peer_bytes: self.to_peer_bytes.saturating_sub(earlier.to_peer_bytes),
            to_client_packets: self.to_client_packets.saturating_sub(earlier.to_client_packets),
            to_client_bytes: self.to_client_bytes.saturating_sub(earlier.to_client_bytes),
            over_rate: self.over_rate.saturating_sub(earlier.over_rate),
        }
    }
}

/// A route's map entries, by family.
enum Entries {
    V4(TurnInKey, TurnInValue, TurnOutKey, TurnOutValue),
    V6(Turn6InKey, Turn6InValue, Turn6OutKey, Turn6OutValue),
}

fn hop(h: NextHop) -> (u16, u32) {
    match h {
        NextHop::Local => (FLAG_LOCAL, 0),
        NextHop::Interface(i) => (0, i),
    }
}

fn entries(r: &ChannelRoute) -> Option<Entries> {
    let until_ns = u64::try_from(r.until.as_nanos()).unwrap_or(u64::MAX);
    let (to_peer_flags, to_peer_if) = hop(r.to_peer);
    let (to_client_flags, to_client_if) = hop(r.to_client);
    let (channel, slot) = (r.channel.to_be(), r.slot);
    let port = |a: SocketAddr| a.port().to_be();
    // Both families' structs have the same fields; only the addresses'
    // type differs (network-order `u32`, or 16 bytes).
    macro_rules! family {
        ($variant:ident, $kin:ident, $vin:ident, $kout:ident, $vout:ident, $client:expr, $listener:expr, $relayed:expr, $peer:expr) => {{
            let kin = $kin {
                client_addr: $client,
                listener_addr: $listener,
                client_port: port(r.client),
                listener_port: port(r.listener),
                channel,
                pad: 0,
            };
            let vin = $vin {
                relay_addr: $relayed,
                peer_addr: $peer,
                relay_port: port(r.relayed),
                peer_port: port(r.peer),
                slot,
                out_ifindex: to_peer_if,
                flags: to_peer_flags,
                pad: 0,
                until_ns,
            };
            let kout =
                $kout { peer_addr: $peer, relay_addr: $relayed, peer_port: port(r.peer), relay_port: port(r.relayed) };
            let vout = $vout {
                listener_addr: $listener,
                client_addr: $client,
                listener_port: port(r.listener),
                client_port: port(r.client),
                channel,
                flags: to_client_flags,
                slot,
                out_ifindex: to_client_if,
                until_ns,
            };
            Some(Entries::$variant(kin, vin, kout, vout))
        }};
    }
    use SocketAddr::{V4, V6};
    match (r.client, r.listener, r.relayed, r.peer) {
        (V4(c), V4(l), V4(rl), V4(p)) => {
            let a = |a: SocketAddrV4| u32::from_ne_bytes(a.ip().octets());
            family!(V4, TurnInKey, TurnInValue, TurnOutKey, TurnOutValue, a(c), a(l), a(rl), a(p))
        }
        (V6(c), V6(l), V6(rl), V6(p)) => {
            let a = |a: SocketAddrV6| a.ip().octets();
            family!(V6, Turn6InKey, Turn6InValue, Turn6OutKey, Turn6OutValue, a(c), a(l), a(rl), a(p))
        }
        _ => None,
    }
}

fn mixed_families() -> FastPathError {
    FastPathError::Map { map: "turn_in", reason: "a TURN route's addresses must all be IPv4 or all IPv6".into() }
}

/// A removal of a key that is not there is no error.
fn removed(r: Result<(), aya::maps::MapError>, map: &'static str) -> Result<(), FastPathError> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(map)(e)),
    }
}

impl FastPath {
    /// Starts an allocation's slot: its counters zeroed, its bucket holding
    /// what userspace's held (the budget moves to the kernel, it does not
    /// refill twice).
    pub fn start_turn_slot(&mut self, slot: u32, bucket: TurnBucket) -> Result<(), FastPathError> {
        if slot >= MAX_TURN_SLOTS {
            return Err(FastPathError::Map { map: "turn_stats", reason: format!("slot {slot} out of range") });
        }
        let io = |e: std::io::Error| FastPathError::Map { map: "turn_stats", reason: e.to_string() };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io(e))?;
        let values = aya::maps::PerCpuValues::try_from(vec![TurnStatsC::default(); cpus]).map_err(io)?;
        self.turn.stats.set(slot, values, 0).map_err(map_err("turn_stats"))?;
        let now = super::driver::monotonic().unwrap_or_default();
        let b = TurnBucketC {
            tokens: bucket.tokens,
            last_ns: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
            bytes_per_sec: bucket.bytes_per_second,
            burst: bucket.burst,
            ..TurnBucketC::default()
        };
        self.turn.buckets.set(slot, b, 0).map_err(map_err("turn_buckets"))
    }

    /// Changes a slot's rate and burst (a reload), keeping what its bucket
    /// holds (at most the new burst).
    pub fn set_turn_rate(&mut self, slot: u32, bytes_per_second: u64, burst: u64) -> Result<(), FastPathError> {
        let mut b = self.turn.buckets.get(&slot, 0).map_err(map_err("turn_buckets"))?;
        b.lock = 0;
        b.bytes_per_sec = bytes_per_second;
        b.burst = burst;
        b.tokens = b.tokens.min(burst);
        self.turn.buckets.set(slot, b, 0).map_err(map_err("turn_buckets"))
    }

    /// Installs (or replaces) both directions of a channel.
    pub fn install_channel(&mut self, r: &ChannelRoute) -> Result<(), FastPathError> {
        if r.slot >= MAX_TURN_SLOTS {
            return Err(FastPathError::Map { map: "turn_in", reason: format!("slot {} out of range", r.slot) });
        }
        let m = &mut self.turn;
        match entries(r).ok_or_else(mixed_families)? {
            Entries::V4(kin, vin, kout, vout) => {
                m.routes_in.insert(kin, vin, 0).map_err(map_err("turn_in"))?;
                m.routes_out.insert(kout, vout, 0).map_err(map_err("turn_out")).inspect_err(|_| {
                    let _ = m.routes_in.remove(&kin);
                })
            }
            Entries::V6(kin, vin, kout, vout) => {
                m.routes6_in.insert(kin, vin, 0).map_err(map_err("turn6_in"))?;
                m.routes6_out.insert(kout, vout, 0).map_err(map_err("turn6_out")).inspect_err(|_| {
                    let _ = m.routes6_in.remove(&kin);
                })
            }
        }
    }

    /// Removes both directions of a channel (missing ones are no error).
    pub fn remove_channel(&mut self, r: &ChannelRoute) -> Result<(), FastPathError> {
        let m = &mut self.turn;
        match entries(r).ok_or_else(mixed_families)? {
            Entries::V4(kin, _, kout, _) => {
                removed(m.routes_in.remove(&kin), "turn_in")?;
                removed(m.routes_out.remove(&kout), "turn_out")
            }
            Entries::V6(kin, _, kout, _) => {
                removed(m.routes6_in.remove(&kin), "turn6_in")?;
                removed(m.routes6_out.remove(&kout), "turn6_out")
            }
        }
    }

    /// What the kernel relayed for `slot`'s allocation since its start.
    pub fn turn_counters(&self, slot: u32) -> Result<TurnCounters, FastPathError> {
        let per_cpu = self.turn.stats.get(&slot, 0).map_err(map_err("turn_stats"))?;
        let mut out = TurnCounters::default();
        for s in per_cpu.iter() {
            out.to_peer_packets += s.to_peer_packets;
            out.to_peer_bytes += s.to_peer_bytes;
            out.to_client_packets += s.to_client_packets;
            out.to_client_bytes += s.to_client_bytes;
            out.over_rate += s.over_rate;
        }
        Ok(out)
    }
}
