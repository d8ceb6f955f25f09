//! The kernel fast path's loader: the tc program in `forward.bpf.c`
//! (compiled by `scripts/build-bpf.sh` into the committed `forward.bpf.o`,
//! so building needs no clang; the test command checks the object is what
//! the source compiles to), attached to tc/tcx ingress of the relay's
//! interfaces, and its maps.
//!
//! Userspace writes one [`Route`] per direction of an established leg
//! pair; the program forwards matching RTP/RTCP in the kernel — judged
//! exactly as userspace judges it — and passes everything else up (see the
//! C file). Nothing is pinned, and nothing the relay installs outlives it:
//! - the program forwards only while its owner renews it ([`LIVENESS`],
//!   renewed by every shard's driver), so a relay killed with `kill -9`
//!   forwards nothing a moment later even where a netlink `cls_bpf` filter
//!   (kernels before 6.6, no tcx) keeps the program loaded;
//! - a relay that starts finds such programs of earlier relays, waits until
//!   each has either been renewed (another live relay: left alone) or
//!   expired, and removes the expired ones' filters from the interfaces it
//!   attaches to.

mod driver;
mod turn;
#[cfg(feature = "turn")]
mod turn_driver;

use std::net::SocketAddr;
use std::time::Duration;

pub use driver::{OffloadDriver, SYNC_EVERY};
pub use turn::{ChannelRoute, TurnBucket, TurnCounters, MAX_TURN_SLOTS};
#[cfg(feature = "turn")]
pub use turn_driver::TurnOffloadDriver;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::tc::{self, SchedClassifier, TcAttachType};
use aya::Ebpf;

/// CLOCK_MONOTONIC now: the clock of a [`ChannelRoute`]'s deadline (and
/// of `std::time::Instant` on Linux).
pub fn monotonic_now() -> Option<Duration> {
    driver::monotonic()
}

/// The compiled program.
static PROGRAM: &[u8] = aya::include_bytes_aligned!("forward.bpf.o");

/// Most routes (the maps' size).
pub const MAX_ROUTES: u32 = 1 << 20;

/// How long the program keeps forwarding after its owner last renewed it
/// (the drivers renew it every [`SYNC_EVERY`]).
pub const LIVENESS: Duration = Duration::from_secs(2);

/// The program's name (its filters and programs are found by it).
const PROGRAM_NAME: &str = "ucmrc_forward";

/// `FLAG_*` of the C program's route flags.
const FLAG_LOCAL: u16 = 1;
const FLAG_RTP: u16 = 2;
const FLAG_RTCP: u16 = 4;

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
    last_rtp_ns: u64,
    last_ssrc: u32,
    last_seq: u32,
}

/// `struct owner` of the C program.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Owner {
    alive_until_ns: u64,
    netns: u64,
    pid: u32,
    pad: u32,
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
// SAFETY: as above.
unsafe impl aya::Pod for Owner {}

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
    /// What it carries: RTP, RTCP or both (the rest goes up).
    pub carries: Carries,
}

/// The classes a route forwards in the kernel; any other packet on it goes
/// up to userspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Carries {
    /// RTP (SRTP).
    pub rtp: bool,
    /// RTCP (SRTCP).
    pub rtcp: bool,
}

impl Carries {
    fn flags(self) -> u16 {
        (if self.rtp { FLAG_RTP } else { 0 }) | (if self.rtcp { FLAG_RTCP } else { 0 })
    }
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
    /// The SSRC and sequence number of the last RTP packet forwarded (the
    /// leg's replay memory follows what the kernel forwarded).
    pub last_rtp: Option<(u32, u16)>,
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
    /// Lengths that disagree (frame, IP, UDP) or a bad IPv4 header
    /// checksum: the stack decides.
    pub bad_header: u64,
    /// The owning relay stopped renewing the program: everything goes up.
    pub not_owned: u64,
    /// ChannelData from TURN clients relayed to their peers in the kernel.
    pub turn_to_peer: u64,
    /// Peers' datagrams relayed to TURN clients as ChannelData in the
    /// kernel.
    pub turn_to_client: u64,
    /// TURN routes past their channel's, permission's or allocation's
    /// expiry: up, where userspace decides.
    pub turn_expired: u64,
    /// ChannelData userspace must judge (padding, lengths, size): up.
    pub turn_unusual: u64,
}

/// How the program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// tcx links where the kernel has them (6.6 and later), netlink
    /// `cls_bpf` filters before.
    #[default]
    Auto,
    /// Netlink `cls_bpf` filters always (what kernels before 6.6 get; tests
    /// reproduce their behaviour with it).
    Netlink,
}

/// What running the program once on a frame did ([`FastPath::run_on`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameVerdict {
    /// The tc action: forwarded (`TC_ACT_OK` to a local destination,
    /// `TC_ACT_REDIRECT` out of an interface), passed up (`TC_ACT_UNSPEC`)
    /// or dropped (`TC_ACT_SHOT`).
    pub action: i32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
}

impl FrameVerdict {
    /// `TC_ACT_UNSPEC`: passed up (to the next program, then the stack).
    pub const PASS_UP: i32 = -1;
    /// `TC_ACT_OK`: delivered by the stack (a local destination).
    pub const DELIVER: i32 = 0;
    /// `TC_ACT_SHOT`: dropped (over a route's rate).
    pub const DROP: i32 = 2;
    /// `TC_ACT_REDIRECT`: sent out of an interface.
    pub const REDIRECT: i32 = 7;

    /// Whether the program forwarded the datagram itself.
    pub fn forwarded(&self) -> bool {
        self.action == Self::DELIVER || self.action == Self::REDIRECT
    }
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
    owner: Array<MapData, Owner>,
    turn: turn::TurnMaps,
    interfaces: Vec<String>,
    mode: AttachMode,
    /// Filters of earlier relays removed at attach time (for the log).
    retired: Vec<String>,
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
        Self::load_with(interfaces, AttachMode::Auto)
    }

    /// [`load`](Self::load), attaching in `mode`.
    pub fn load_with(interfaces: &[&str], mode: AttachMode) -> Result<Self, FastPathError> {
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
        let owner = Array::try_from(take(&mut bpf, "owner")?).map_err(map_err("owner"))?;
        let turn = turn::TurnMaps::take(&mut bpf)?;
        let mut fast = Self {
            bpf,
            routes,
            routes6,
            stats,
            buckets,
            outcomes,
            owner,
            turn,
            interfaces: Vec::new(),
            mode,
            retired: Vec::new(),
        };
        fast.keep_alive()?;
        for (i, name) in interfaces.iter().enumerate() {
            // Waiting to tell a live relay from a dead one once is enough.
            fast.attach_after(name, i == 0)?;
        }
        // Counted from now: telling may have taken a while.
        fast.keep_alive()?;
        Ok(fast)
    }

    /// Renews the program's life for [`LIVENESS`] from now (the drivers
    /// call it every [`SYNC_EVERY`]; a relay that stops calling it — that
    /// died — forwards nothing once it lapses).
    pub fn keep_alive(&mut self) -> Result<(), FastPathError> {
        let now = driver::monotonic().ok_or_else(|| FastPathError::Load("no CLOCK_MONOTONIC".into()))?;
        let until = u64::try_from((now + LIVENESS).as_nanos()).unwrap_or(u64::MAX);
        let owner = Owner { alive_until_ns: until, netns: own_netns(), pid: std::process::id(), pad: 0 };
        self.owner.set(0, owner, 0).map_err(map_err("owner"))
    }

    /// Attaches the loaded program to tc/tcx ingress of interface `name`
    /// as well (an address that arrived there after the start: a takeover
    /// moved the service address to this host). Attached already: nothing.
    /// Filters an earlier relay left there (it died) are removed first.
    pub fn attach(&mut self, name: &str) -> Result<(), FastPathError> {
        self.attach_after(name, false)
    }

    /// [`attach`](Self::attach); with `wait`, first waits to tell whether
    /// other relays' programs are alive (at load: a relay that just died
    /// may still look alive for up to [`LIVENESS`]).
    fn attach_after(&mut self, name: &str, wait: bool) -> Result<(), FastPathError> {
        if self.interfaces.iter().any(|i| i == name) {
            return Ok(());
        }
        self.retire_stale(name, wait)?;
        // Before 6.6 (no tcx) the clsact qdisc must exist; already there is fine.
        let _ = tc::qdisc_add_clsact(name);
        let program = Self::program(&mut self.bpf)?;
        let attached = match self.mode {
            AttachMode::Auto => program.attach(name, TcAttachType::Ingress),
            AttachMode::Netlink => program.attach_with_options(
                name,
                TcAttachType::Ingress,
                tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
            ),
        };
        attached.map_err(|e| FastPathError::Attach { interface: name.to_string(), reason: e.to_string() })?;
        self.interfaces.push(name.to_string());
        Ok(())
    }

    /// Before attaching to `interface`: every other loaded program of ours
    /// is either renewed by a live relay or lapses within [`LIVENESS`];
    /// with `wait`, waits that long at most to tell. When none is live,
    /// the filters of ours on `interface` (a netlink filter outlives its
    /// relay) are removed; a live relay's are left alone (the lapsed ones
    /// forward nothing anyway).
    fn retire_stale(&mut self, interface: &str, wait: bool) -> Result<(), FastPathError> {
        let own = self.program_id()?;
        let others = other_owners(own);
        if others.is_empty() {
            return Ok(());
        }
        let Some(now) = driver::monotonic() else { return Ok(()) };
        let others = if wait {
            // Long enough for a live owner to renew (it does every SYNC_EVERY).
            let latest = others.iter().map(|o| o.1).max().unwrap_or(0);
            let wait_until = Duration::from_nanos(latest).min(now + LIVENESS) + SYNC_EVERY;
            if let Some(wait) = wait_until.checked_sub(now) {
                std::thread::sleep(wait); // one observation window, at most LIVENESS + SYNC_EVERY, only when another program exists
            }
            other_owners(own)
        } else {
            others
        };
        if any_alive(&others) {
            return Ok(());
        }
        self.detach_ours(interface)
    }

    /// Removes every filter of ours on `interface` (netlink `cls_bpf`: tcx
    /// links end with their process).
    fn detach_ours(&mut self, interface: &str) -> Result<(), FastPathError> {
        match tc::qdisc_detach_program(interface, TcAttachType::Ingress, PROGRAM_NAME) {
            Ok(()) => {
                tracing::warn!(interface, "removed the kernel fast path filters a relay that died left behind");
                self.retired.push(interface.to_string());
                Ok(())
            }
            Err(tc::TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FastPathError::Attach { interface: interface.to_string(), reason: e.to_string() }),
        }
    }

    /// This process's program id.
    fn program_id(&mut self) -> Result<u32, FastPathError> {
        let info = Self::program(&mut self.bpf)?.info().map_err(|e| FastPathError::Load(e.to_string()))?;
        Ok(info.id())
    }

    /// Interfaces whose left-over filters this relay removed.
    pub fn retired(&self) -> &[String] {
        &self.retired
    }

    /// Runs the program once on `frame` (an Ethernet frame) with
    /// `BPF_PROG_TEST_RUN`, on no interface: what it would do with that
    /// packet given the routes installed now (the differential tests hold it
    /// to userspace's decisions; counters and buckets are updated as for a
    /// real packet).
    pub fn run_on(&mut self, frame: &[u8]) -> Result<FrameVerdict, FastPathError> {
        use aya::programs::{TestRun, TestRunOptions};
        let mut out = vec![0u8; frame.len() + 256];
        let program = Self::program(&mut self.bpf)?;
        let opts = TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..TestRunOptions::default() };
        let r = program.test_run(opts).map_err(|e| FastPathError::Load(format!("test run: {e}")))?;
        out.truncate(r.data_size_out as usize);
        Ok(FrameVerdict { action: r.return_value as i32, frame: out })
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
        let flags = if r.next_hop == NextHop::Local { FLAG_LOCAL } else { 0 } | r.carries.flags();
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
        let (mut last, mut last_rtp) = (0, 0);
        for s in per_cpu.iter() {
            out.packets += s.packets;
            out.bytes += s.bytes;
            out.dropped_over_rate += s.dropped_over_rate;
            last = last.max(s.last_ns);
            if s.last_rtp_ns > last_rtp {
                last_rtp = s.last_rtp_ns;
                out.last_rtp = Some((s.last_ssrc, s.last_seq as u16));
            }
        }
        out.last = (last > 0).then(|| Duration::from_nanos(last));
        Ok(out)
    }

    /// What the program did with every packet it saw so far.
    pub fn outcomes(&self) -> Result<Outcomes, FastPathError> {
        let mut n = [0u64; 14];
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
            bad_header: n[8],
            not_owned: n[9],
            turn_to_peer: n[10],
            turn_to_client: n[11],
            turn_expired: n[12],
            turn_unusual: n[13],
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

/// This process's network namespace (the inode of `/proc/self/ns/net`; 0
/// if unreadable).
fn own_netns() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino())
}

/// Whether any of `owners` (from [`other_owners`]) is renewed past now
/// (an unreadable clock counts as alive: nothing is removed on a guess).
fn any_alive(owners: &[(u32, u64)]) -> bool {
    let Some(now) = driver::monotonic() else { return true };
    let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
    owners.iter().any(|o| o.1 > now_ns)
}

/// Every other loaded program of ours whose relay runs in this network
/// namespace (the only one that can have attached to its interfaces):
/// (program id, its owner's `alive_until_ns`; 0 when unreadable).
fn other_owners(own: u32) -> Vec<(u32, u64)> {
    let netns = own_netns();
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs().flatten() {
        if info.id() == own || info.name_as_str() != Some(PROGRAM_NAME) {
            continue;
        }
        let owner = info
            .map_ids()
            .ok()
            .flatten()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|id| MapData::from_id(id).ok())
            .find(|m| m.info().ok().and_then(|i| i.name_as_str().map(|n| n == "owner")).unwrap_or(false))
            .and_then(|m| Array::<MapData, Owner>::try_from(aya::maps::Map::Array(m)).ok())
            .and_then(|a| a.get(&0, 0).ok());
        match owner {
            // Another namespace's relay: none of our interfaces is its.
            Some(o) if o.netns != netns => {}
            Some(o) => out.push((info.id(), o.alive_until_ns)),
            // Unreadable (an older release's program): it renews nothing.
            None => out.push((info.id(), 0)),
        }
    }
    out
}

#[cfg(test)]
mod layout_tests;
