//! The kernel fast path's loader: the tc program in `forward.bpf.c`
//! (compiled by `scripts/build-bpf.sh` into the committed `forward.bpf.o`,
//! so building needs no clang; the test command checks the object is what
//! the source compiles to), attached to tc/tcx ingress of the relay's
//! interfaces, and its maps.
//!
//! Userspace writes one [`Route`] per direction of an established leg
//! pair; the program forwards matching RTP/RTCP in the kernel and passes
//! everything else up (see the C file). The program and its links belong
//! to this process: nothing is pinned, so when a [`FastPath`] is dropped —
//! or the process dies — the kernel detaches the program and frees the
//! maps, and nothing keeps forwarding.

mod driver;

use std::net::SocketAddr;
use std::time::Duration;

pub use driver::{OffloadDriver, SYNC_EVERY};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::tc::{self, SchedClassifier, TcAttachType};
use aya::Ebpf;

/// The compiled program.
static PROGRAM: &[u8] = aya::include_bytes_aligned!("forward.bpf.o");

/// Most routes (the maps' size).
pub const MAX_ROUTES: u32 = 1 << 20;

/// `struct fwd_key` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FwdKey {
    addr: u32,
    port: u16,
    pad: u16,
}

/// `struct fwd_value` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct FwdValue {
    src_addr: u32,
    src_port: u16,
    out_port: u16,
    out_addr: u32,
    dst_addr: u32,
    dst_port: u16,
    flags: u16,
    slot: u32,
    max_pps: u32,
    out_ifindex: u32,
    pad2: u32,
    max_bps: u64,
}

/// `struct fwd6_key` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fwd6Key {
    addr: [u8; 16],
    port: u16,
    pad: u16,
}

/// `struct fwd6_value` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Fwd6Value {
    src_addr: [u8; 16],
    out_addr: [u8; 16],
    dst_addr: [u8; 16],
    src_port: u16,
    out_port: u16,
    dst_port: u16,
    flags: u16,
    slot: u32,
    max_pps: u32,
    out_ifindex: u32,
    pad2: u32,
    max_bps: u64,
}

/// `struct fwd_stats` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FwdStats {
    packets: u64,
    bytes: u64,
    dropped_over_rate: u64,
    last_ns: u64,
}

/// `struct fwd_bucket` of the C program (its lock word included).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FwdBucket {
    lock: u32,
    pad: u32,
    pkt_tokens: u64,
    byte_tokens: u64,
    last_ns: u64,
}

// SAFETY: plain `repr(C)` structs of integers with no padding the kernel
// could leave uninitialised in a way that matters (the C layout is the
// same: the compiler places the fields identically), valid for any bytes.
unsafe impl aya::Pod for FwdKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FwdValue {}
// SAFETY: as above.
unsafe impl aya::Pod for Fwd6Key {}
// SAFETY: as above.
unsafe impl aya::Pod for Fwd6Value {}
// SAFETY: as above.
unsafe impl aya::Pod for FwdStats {}
// SAFETY: as above.
unsafe impl aya::Pod for FwdBucket {}

/// One direction of an established leg pair, forwarded in the kernel:
/// a datagram to `local` from exactly `from` leaves from `via` to `to`.
/// All four are of one family (IPv4 or IPv6): the kernel does not
/// translate between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The relay socket it arrives on.
    pub local: SocketAddr,
    /// The latched source; any other source goes up to userspace.
    pub from: SocketAddr,
    /// The relay socket it leaves from (the other leg's).
    pub via: SocketAddr,
    /// The other side's latched address.
    pub to: SocketAddr,
    /// Packets per second forwarded in the kernel at most (0: no limit);
    /// beyond, the kernel drops them, as userspace's bucket would.
    pub max_pps: u32,
    /// Bytes per second likewise (0: no limit).
    pub max_bytes_per_sec: u64,
    /// The counters slot (`0 .. MAX_ROUTES`), chosen by the caller.
    pub slot: u32,
    /// How the datagram reaches `to`.
    pub next_hop: NextHop,
}

/// How a forwarded datagram reaches its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextHop {
    /// The destination is on this host (loopback, a local namespace): the
    /// stack delivers the rewritten datagram.
    Local,
    /// Out of interface `ifindex` (0: the one it arrived on), the kernel's
    /// routing and neighbour tables filling in the next hop and MACs.
    Interface(u32),
}

/// What the kernel did for one route, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Datagrams forwarded in the kernel.
    pub packets: u64,
    /// Their payload bytes (UDP payload, as userspace counts).
    pub bytes: u64,
    /// Datagrams over the route's rate, dropped.
    pub dropped_over_rate: u64,
    /// Time since boot (CLOCK_MONOTONIC) of the last forward, if any.
    pub last: Option<Duration>,
}

/// What the program did with the packets it saw, summed over CPUs:
/// forwarded, dropped over a route's rate, or why each went up to
/// userspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Forwarded in the kernel.
    pub forwarded: u64,
    /// Not UDP over IPv4 or IPv6 (or IPv6 with extension headers).
    pub not_ipv4_udp: u64,
    /// IP options or a fragment.
    pub fragment_or_options: u64,
    /// Not RTP/RTCP (STUN, DTLS, ...).
    pub not_rtp: u64,
    /// No route for the destination (not an established leg).
    pub no_route: u64,
    /// Another source than the latched one.
    pub other_source: u64,
    /// Over the route's rate (dropped).
    pub over_rate: u64,
    /// The redirect out of the interface failed (the packet is dropped by
    /// the kernel, as a failed send would be).
    pub no_next_hop: u64,
}

/// Why the fast path cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// Loading the program or its maps failed (old kernel, no BPF
    /// privileges, BPF disabled).
    #[error("cannot load the BPF program: {0}")]
    Load(String),
    /// Attaching to an interface failed.
    #[error("cannot attach to {interface}: {reason}")]
    Attach {
        /// The interface.
        interface: String,
        /// Why.
        reason: String,
    },
    /// A map operation failed.
    #[error("BPF map {map}: {reason}")]
    Map {
        /// The map.
        map: &'static str,
        /// Why.
        reason: String,
    },
}

/// The loaded, attached program and its maps.
pub struct FastPath {
    bpf: Ebpf,
    routes: HashMap<MapData, FwdKey, FwdValue>,
    routes6: HashMap<MapData, Fwd6Key, Fwd6Value>,
    stats: PerCpuArray<MapData, FwdStats>,
    buckets: Array<MapData, FwdBucket>,
    outcomes: PerCpuArray<MapData, u64>,
    interfaces: Vec<String>,
}

impl std::fmt::Debug for FastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath").field("interfaces", &self.interfaces).finish_non_exhaustive()
    }
}

fn key(a: std::net::SocketAddrV4) -> FwdKey {
    FwdKey { addr: u32::from_ne_bytes(a.ip().octets()), port: a.port().to_be(), pad: 0 }
}

fn key6(a: std::net::SocketAddrV6) -> Fwd6Key {
    Fwd6Key { addr: a.ip().octets(), port: a.port().to_be(), pad: 0 }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> FastPathError {
    move |e| FastPathError::Map { map, reason: e.to_string() }
}

impl FastPath {
    /// Loads the program and attaches it to tc/tcx ingress of every
    /// interface in `interfaces` (by name; none is allowed: see
    /// [`FastPath::attach`]).
    pub fn load(interfaces: &[&str]) -> Result<Self, FastPathError> {
        let mut bpf = Ebpf::load(PROGRAM).map_err(|e| FastPathError::Load(e.to_string()))?;
        Self::program(&mut bpf)?.load().map_err(|e| FastPathError::Load(e.to_string()))?;
        let take = |bpf: &mut Ebpf, name: &'static str| {
            bpf.take_map(name).ok_or_else(|| FastPathError::Load(format!("no {name} map in the object")))
        };
        let routes = HashMap::try_from(take(&mut bpf, "fwd")?).map_err(map_err("fwd"))?;
        let routes6 = HashMap::try_from(take(&mut bpf, "fwd6")?).map_err(map_err("fwd6"))?;
        let stats = PerCpuArray::try_from(take(&mut bpf, "stats")?).map_err(map_err("stats"))?;
        let buckets = Array::try_from(take(&mut bpf, "buckets")?).map_err(map_err("buckets"))?;
        let outcomes = PerCpuArray::try_from(take(&mut bpf, "outcomes")?).map_err(map_err("outcomes"))?;
        let mut fast = Self { bpf, routes, routes6, stats, buckets, outcomes, interfaces: Vec::new() };
        for name in interfaces {
            fast.attach(name)?;
        }
        Ok(fast)
    }

    /// Attaches the loaded program to tc/tcx ingress of interface `name`
    /// as well (an address that arrived there after the start: a takeover
    /// moved the service address to this host). Attached already: nothing.
    pub fn attach(&mut self, name: &str) -> Result<(), FastPathError> {
        if self.interfaces.iter().any(|i| i == name) {
            return Ok(());
        }
        // Before 6.6 (no tcx) the clsact qdisc must exist; already there is fine.
        let _ = tc::qdisc_add_clsact(name);
        Self::program(&mut self.bpf)?
            .attach(name, TcAttachType::Ingress)
            .map_err(|e| FastPathError::Attach { interface: name.to_string(), reason: e.to_string() })?;
        self.interfaces.push(name.to_string());
        Ok(())
    }

    fn program(bpf: &mut Ebpf) -> Result<&mut SchedClassifier, FastPathError> {
        bpf.program_mut("ucmrc_forward")
            .ok_or_else(|| FastPathError::Load("no ucmrc_forward program in the object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| FastPathError::Load(e.to_string()))
    }

    /// Installs (or replaces) a route; its counters and bucket restart.
    pub fn install(&mut self, r: &Route) -> Result<(), FastPathError> {
        if r.slot >= MAX_ROUTES {
            return Err(FastPathError::Map { map: "fwd", reason: format!("slot {} out of range", r.slot) });
        }
        let io = |e: std::io::Error| FastPathError::Map { map: "stats", reason: e.to_string() };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io(e))?;
        let values = aya::maps::PerCpuValues::try_from(vec![FwdStats::default(); cpus]).map_err(io)?;
        self.stats.set(r.slot, values, 0).map_err(map_err("stats"))?;
        self.buckets.set(r.slot, FwdBucket::default(), 0).map_err(map_err("buckets"))?;
        let flags = u16::from(r.next_hop == NextHop::Local);
        let out_ifindex = match r.next_hop {
            NextHop::Local => 0,
            NextHop::Interface(i) => i,
        };
        use SocketAddr::{V4, V6};
        match (r.local, r.from, r.via, r.to) {
            (V4(local), V4(from), V4(via), V4(to)) => {
                let v = FwdValue {
                    src_addr: u32::from_ne_bytes(from.ip().octets()),
                    src_port: from.port().to_be(),
                    out_port: via.port().to_be(),
                    out_addr: u32::from_ne_bytes(via.ip().octets()),
                    dst_addr: u32::from_ne_bytes(to.ip().octets()),
                    dst_port: to.port().to_be(),
                    flags,
                    slot: r.slot,
                    max_pps: r.max_pps,
                    out_ifindex,
                    pad2: 0,
                    max_bps: r.max_bytes_per_sec,
                };
                self.routes.insert(key(local), v, 0).map_err(map_err("fwd"))
            }
            (V6(local), V6(from), V6(via), V6(to)) => {
                let v = Fwd6Value {
                    src_addr: from.ip().octets(),
                    out_addr: via.ip().octets(),
                    dst_addr: to.ip().octets(),
                    src_port: from.port().to_be(),
                    out_port: via.port().to_be(),
                    dst_port: to.port().to_be(),
                    flags,
                    slot: r.slot,
                    max_pps: r.max_pps,
                    out_ifindex,
                    pad2: 0,
                    max_bps: r.max_bytes_per_sec,
                };
                self.routes6.insert(key6(local), v, 0).map_err(map_err("fwd6"))
            }
            _ => Err(FastPathError::Map {
                map: "fwd",
                reason: "a route's addresses must all be IPv4 or all IPv6".into(),
            }),
        }
    }

    /// Removes the route of `local` (a missing one is not an error).
    pub fn remove(&mut self, local: SocketAddr) -> Result<(), FastPathError> {
        let r = match local {
            SocketAddr::V4(a) => self.routes.remove(&key(a)),
            SocketAddr::V6(a) => self.routes6.remove(&key6(a)),
        };
        match r {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("fwd")(e)),
        }
    }

    /// The counters of `slot`, summed over CPUs.
    pub fn stats(&self, slot: u32) -> Result<RouteStats, FastPathError> {
        let per_cpu = self.stats.get(&slot, 0).map_err(map_err("stats"))?;
        let mut out = RouteStats::default();
        let mut last = 0;
        for s in per_cpu.iter() {
            out.packets += s.packets;
            out.bytes += s.bytes;
            out.dropped_over_rate += s.dropped_over_rate;
            last = last.max(s.last_ns);
        }
        out.last = (last > 0).then(|| Duration::from_nanos(last));
        Ok(out)
    }

    /// What the program did with every packet it saw so far.
    pub fn outcomes(&self) -> Result<Outcomes, FastPathError> {
        let mut n = [0u64; 8];
        for (i, slot) in n.iter_mut().enumerate() {
            *slot = self.outcomes.get(&(i as u32), 0).map_err(map_err("outcomes"))?.iter().sum();
        }
        Ok(Outcomes {
            forwarded: n[0],
            not_ipv4_udp: n[1],
            fragment_or_options: n[2],
            not_rtp: n[3],
            no_route: n[4],
            other_source: n[5],
            over_rate: n[6],
            no_next_hop: n[7],
        })
    }

    /// The interfaces the program is attached to.
    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }

    /// The loaded object (for diagnostics).
    pub fn ebpf(&self) -> &Ebpf {
        &self.bpf
    }
}
