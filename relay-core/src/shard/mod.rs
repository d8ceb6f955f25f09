//! The sans-IO shard: one port slice, its sessions, timers and counters.
//!
//! A shard is a pure state machine. The I/O backend feeds it datagrams with
//! [`Shard::handle_datagram`], commands with [`Shard::handle_command`] and time
//! with [`Shard::handle_timeout`], and asks [`Shard::poll_timeout`] when to
//! call again. It never reads a clock, owns a socket or spawns a thread; port
//! sockets are opened and closed through the [`PortSockets`] the caller passes
//! in. Everything here is therefore testable in virtual time.
#![forbid(unsafe_code)]

#[doc(hidden)] // the change journal's bounds, for the workspace's tests
pub mod journal;
#[doc(hidden)] // kernel-route decisions, for the datapaths and their tests
pub use crate::offload;
mod offload_table;
pub(crate) mod ports;
#[doc(hidden)] // the timer wheel, for the workspace's benches
pub mod timer;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use crate::framing::Framing;
use crate::offload::{Offload, OffloadStats, Offloaded};
use crate::peer::{self, PeerPolicy};
use crate::quota::QuotaPermit;
pub use crate::relay_port::RelayPort;
use crate::session::spec::{SessionDefaults, SessionSpec, SessionUpdate, Side};
use crate::session::state::SessionState;
use crate::session::stats::{DropReason, ShardCounters};
use crate::session::{self as sess, Component, InvalidSpec, LegPorts, Session, SessionId, SessionInfo};
pub use journal::Changes;
use journal::Journal;
use offload_table::OffloadTable;
use ports::PortPool;
use timer::{TimerEntry, TimerWheel};

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the datagram out of relay socket `via` to `to`, framed as
    /// `framing` says (media: unchanged).
    Forward {
        /// The relay socket to send from.
        via: RelayPort,
        /// The destination.
        to: SocketAddr,
        /// What happens to its bytes ([`Framing::apply`], by the datapath).
        framing: Framing,
    },
    /// Drop it (already counted).
    Drop(DropReason),
}

/// Opens and closes the UDP socket of a relay port. The I/O backend binds
/// real sockets; tests use a fake.
pub trait PortSockets {
    /// Binds `port` (its address is [`PortIndex::bind_addr`]). An error
    /// makes the shard try another port.
    fn open(&mut self, port: RelayPort) -> std::io::Result<()>;
    /// Closes `port`'s socket. [`PortClose::Closing`] means the socket is
    /// still held by in-flight I/O: the shard keeps the port out of the pool
    /// until the backend calls [`Shard::handle_port_closed`].
    fn close(&mut self, port: RelayPort) -> PortClose;
}

/// Whether a closed port can be bound again at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortClose {
    /// The socket is gone; the port is reusable.
    Closed,
    /// The socket goes away when in-flight I/O completes.
    Closing,
}

/// The ports one shard owns on one relay address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSlice {
    /// The interface the address belongs to (legs ask for an interface).
    pub interface: u8,
    /// The IP sockets are bound to.
    pub ip: IpAddr,
    /// First port of the slice.
    pub port_base: u16,
    /// Number of ports in the slice.
    pub port_count: usize,
}

impl AddressSlice {
    /// Interface 0, `count` ports from `base` on `ip`.
    pub fn new(ip: IpAddr, base: u16, count: usize) -> Self {
        Self { interface: 0, ip, port_base: base, port_count: count }
    }
}

/// Static configuration of one shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Shard index (0-based), encoded in session ids.
    pub index: u8,
    /// The shard's ports on each relay address (index = [`RelayPort::addr`]).
    pub addresses: Vec<AddressSlice>,
    /// Session defaults.
    pub defaults: SessionDefaults,
    /// Which remote addresses are allowed.
    pub peer_policy: PeerPolicy,
    /// Seed for randomized port choice (use a random one in production).
    pub seed: u64,
    /// How long a port that failed to bind stays out of rotation.
    pub bind_quarantine: Duration,
    /// Offer established leg directions to a kernel fast path
    /// ([`Shard::poll_offload`]); off: everything stays in userspace.
    pub offload: bool,
    /// Keep a change journal for replication ([`Command::Changes`]).
    pub journal: bool,
    /// The id space new session ids are minted in (24 bits; see
    /// [`SessionId`]): ids of different spaces never collide, so a relay
    /// that restarts, or a cluster node that takes over under a new lease
    /// epoch, never hands out an id a client may still hold. Change it with
    /// [`Command::SetIdSpace`].
    pub id_space: u32,
}

impl ShardConfig {
    /// Relay sockets this shard may open, over every address.
    pub fn port_count(&self) -> usize {
        self.addresses.iter().map(|a| a.port_count).sum()
    }

    /// The dense numbering of this shard's sockets, for backends' tables.
    pub fn port_index(&self) -> PortIndex {
        let mut offset = 0;
        let slices = self
            .addresses
            .iter()
            .map(|a| {
                let s = (a.port_base, a.port_count, offset, a.ip);
                offset += a.port_count;
                s
            })
            .collect();
        PortIndex { slices, total: offset }
    }
}

/// Numbers a shard's relay sockets `0 .. len()`, address by address, so a
/// backend can keep them in flat tables (fixed files, epoll tokens).
#[derive(Debug, Clone)]
pub struct PortIndex {
    /// Per address: first port, port count, first index, bind IP.
    slices: Vec<(u16, usize, usize, IpAddr)>,
    total: usize,
}

impl PortIndex {
    /// Sockets in all.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether the shard owns no port at all.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The index of `port`, if the shard owns it.
    pub fn index(&self, port: RelayPort) -> Option<usize> {
        let &(base, count, offset, _) = self.slices.get(usize::from(port.addr))?;
        let k = usize::from(port.port.checked_sub(base)?);
        (k < count).then_some(offset + k)
    }

    /// The socket at `index`.
    pub fn port(&self, index: usize) -> Option<RelayPort> {
        let addr = self.slices.iter().position(|&(_, count, offset, _)| index >= offset && index < offset + count)?;
        let (base, _, offset, _) = self.slices[addr];
        Some(RelayPort::new(addr as u16, base + (index - offset) as u16))
    }

    /// Where `port`'s socket binds.
    pub fn bind_addr(&self, port: RelayPort) -> Option<SocketAddr> {
        self.slices.get(usize::from(port.addr)).map(|s| SocketAddr::new(s.3, port.port))
    }
}

/// The ports and id of a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatedPorts {
    /// Session id.
    pub id: SessionId,
    /// PBX-leg relay ports.
    pub pbx: LegPorts,
    /// Endpoint-leg relay ports.
    pub endpoint: LegPorts,
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// No free ports (or pairs) left in this shard.
    #[error("port range exhausted")]
    PortsExhausted,
    /// No session with this id.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// The spec or update is invalid.
    #[error(transparent)]
    InvalidSpec(#[from] InvalidSpec),
    /// A session cannot be restored here: the clash names what.
    #[error("cannot restore session: {0}")]
    RestoreConflict(RestoreClash),
    /// Too many sessions in one shard (slot space exhausted).
    #[error("session table full")]
    TableFull,
}

/// A control command for a shard.
#[derive(Debug)]
pub enum Command {
    /// Allocate a session.
    Allocate {
        /// What to allocate.
        spec: Box<SessionSpec>,
        /// Tenant quota slot, released when the session ends.
        permit: Option<QuotaPermit>,
    },
    /// Update a session.
    Update {
        /// Which.
        id: SessionId,
        /// What changes.
        update: Box<SessionUpdate>,
    },
    /// Release a session.
    Release {
        /// Which.
        id: SessionId,
    },
    /// Describe a session.
    Query {
        /// Which.
        id: SessionId,
    },
    /// Describe sessions with ids greater than `after`, up to `limit`.
    List {
        /// Start after this id.
        after: Option<SessionId>,
        /// Maximum entries.
        limit: usize,
    },
    /// Counters snapshot.
    Snapshot,
    /// Resume a session from its exported state, on the same relay ports
    /// and under the same id.
    Restore {
        /// The state (see [`SessionState`]).
        state: Box<SessionState>,
        /// Tenant quota slot, released when the session ends.
        permit: Option<QuotaPermit>,
    },
    /// The states of sessions with ids greater than `after`, up to
    /// `limit` (a full export, page by page).
    Export {
        /// Start after this id.
        after: Option<SessionId>,
        /// Maximum entries.
        limit: usize,
    },
    /// What changed since the last pull of the change journal (up to
    /// `limit` changed sessions; needs [`ShardConfig::journal`]).
    Changes {
        /// Maximum changed sessions.
        limit: usize,
    },
    /// Mint new session ids in another id space from now on (a cluster
    /// node taking over under a new lease epoch). Live sessions keep their
    /// ids.
    SetIdSpace {
        /// The space (its low 24 bits are used).
        space: u32,
    },
    /// Replace the defaults for new sessions and the peer policy (reload).
    /// Existing sessions keep what they were allocated with.
    Reconfigure {
        /// New session defaults.
        defaults: Box<SessionDefaults>,
        /// New peer policy.
        peer_policy: PeerPolicy,
    },
}

/// The answer to a [`Command`].
#[derive(Debug)]
pub enum Response {
    /// Answer to `Allocate`.
    Allocated(Result<AllocatedPorts, ShardError>),
    /// Answer to `Update`.
    Updated(Result<(), ShardError>),
    /// Answer to `Release`: the final state.
    Released(Result<SessionInfo, ShardError>),
    /// Answer to `Query`.
    Session(Result<SessionInfo, ShardError>),
    /// Answer to `List`.
    List(Vec<SessionInfo>),
    /// Answer to `Snapshot`.
    Snapshot(ShardCounters),
    /// Answer to `Reconfigure`.
    Reconfigured,
    /// Answer to `SetIdSpace`.
    IdSpaceSet,
    /// Answer to `Restore`.
    Restored(Result<AllocatedPorts, ShardError>),
    /// Answer to `Export`.
    Exported(Vec<SessionState>),
    /// Answer to `Changes`.
    Changes(Changes),
}

/// Which session leg and component a port belongs to.
#[derive(Debug, Clone, Copy)]
struct PortOwner {
    slot: u32,
    side: Side,
    component: Component,
}

/// The sans-IO shard.
#[derive(Debug)]
pub struct Shard {
    config: ShardConfig,
    /// One pool per address (index = [`RelayPort::addr`]).
    pools: Vec<PortPool>,
    /// Who owns each port, per address.
    owners: Vec<Vec<Option<PortOwner>>>,
    /// Boxed sessions: the table's growth slack costs a pointer per slot.
    sessions: Vec<Option<Box<Session>>>,
    /// Where each live session sits in `sessions` (ids carry no slot: a
    /// restored session takes any free one).
    slots: HashMap<SessionId, u32>,
    free_slots: Vec<u32>,
    /// The id space and the last serial minted in it.
    id_space: u32,
    serial: u32,
    wheel: TimerWheel,
    quarantine: Vec<(Instant, RelayPort)>,
    closing: usize,
    rng: fastrand::Rng,
    counters: ShardCounters,
    expired: Vec<TimerEntry>,
    /// Kernel fast path actions not yet taken by the driver.
    offload_queue: VecDeque<Offload>,
    /// The routes the kernel holds (empty unless the relay offloads).
    offloads: OffloadTable,
    /// Routes withdrawn whose last counters are still to come:
    /// (socket, session, side index, route).
    retiring: Vec<(RelayPort, SessionId, usize, Offloaded)>,
    /// Changes not yet pulled (with [`ShardConfig::journal`]).
    journal: Option<Journal>,
}

/// Why a session state cannot be restored on a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RestoreClash {
    /// Its id names another shard.
    #[error("the id belongs to another shard")]
    OtherShard,
    /// A live session here has its id already.
    #[error("its id names a live session")]
    IdInUse,
    /// A port on an address this relay does not have.
    #[error("a port on an address this relay does not have")]
    UnknownAddress,
    /// A port outside this shard's range.
    #[error("a port outside this shard's range")]
    OutOfRange,
    /// A port another session holds.
    #[error("a port in use")]
    PortInUse,
    /// A port that does not bind (worth retrying: its previous owner may
    /// be closing it).
    #[error("a port that does not bind")]
    BindFailed,
}

/// Most queued kernel fast path actions (and withdrawn routes awaiting
/// their last counters).
const MAX_OFFLOAD_QUEUE: usize = 1 << 20;

/// How long an expiring session with kernel routes waits for fresh counters.
const OFFLOAD_REFRESH_WAIT: Duration = Duration::from_millis(200);

const MAX_SLOTS: usize = 1 << 24;

/// Id spaces are 24 bits wide (see [`SessionId`]).
const ID_SPACE_MASK: u32 = 0x00ff_ffff;

/// With the `__fault-injection` feature (tests only), allocating a session
/// for this tenant panics the shard thread, to prove what a shard failure
/// does to the relay and the process.
#[cfg(feature = "__fault-injection")]
#[doc(hidden)]
pub const FAULT_PANIC_TENANT: &str = "fault-injection-shard-panic";

impl Shard {
    /// A shard with every port free; `now` is the epoch of its timer wheel.
    pub fn new(config: ShardConfig, now: Instant) -> Self {
        let pools = config.addresses.iter().map(|a| PortPool::new(a.port_base, a.port_count)).collect();
        let counters = ShardCounters { ports_total: config.port_count() as u64, ..ShardCounters::default() };
        Self {
            owners: config.addresses.iter().map(|a| vec![None; a.port_count]).collect(),
            pools,
            sessions: Vec::new(),
            slots: HashMap::new(),
            free_slots: Vec::new(),
            id_space: config.id_space & ID_SPACE_MASK,
            serial: 0,
            wheel: TimerWheel::new(now, Duration::from_millis(100), 1024),
            quarantine: Vec::new(),
            closing: 0,
            rng: fastrand::Rng::with_seed(config.seed),
            counters,
            expired: Vec::new(),
            offload_queue: VecDeque::new(),
            offloads: OffloadTable::default(),
            retiring: Vec::new(),
            journal: config.journal.then(Journal::default),
            config,
        }
    }

    /// This shard's configuration.
    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// Current counters.
    pub fn counters(&self) -> ShardCounters {
        let mut c = self.counters;
        c.ports_in_use = self.pools.iter().map(|p| p.len() - p.free_count()).sum::<usize>() as u64;
        c.ports_quarantined = self.quarantine.len() as u64;
        c.ports_closing = self.closing as u64;
        c
    }

    /// Free ports right now.
    pub fn free_ports(&self) -> usize {
        self.pools.iter().map(PortPool::free_count).sum()
    }

    /// Whether `port` belongs to this shard's slices.
    pub fn owns_port(&self, port: RelayPort) -> bool {
        self.pools.get(usize::from(port.addr)).is_some_and(|p| p.contains(port.port))
    }

    fn owner(&self, port: RelayPort) -> Option<PortOwner> {
        let pool = self.pools.get(usize::from(port.addr))?;
        if !pool.contains(port.port) {
            return None;
        }
        self.owners[usize::from(port.addr)][usize::from(port.port - pool.base())]
    }

    /// Counts a datagram the backend had to drop before the shard saw it
    /// (e.g. [`DropReason::Truncated`]), so `received = forwarded + dropped`
    /// holds.
    pub fn record_backend_drop(&mut self, len: usize, reason: DropReason) {
        self.counters.packets_received += 1;
        self.counters.bytes_received += len as u64;
        self.counters.drops.add(reason);
    }

    /// Counts a send the backend could not perform.
    pub fn record_send_error(&mut self) {
        self.counters.send_errors += 1;
    }

    /// Counts an io_uring multishot receive that ended with `ENOBUFS`.
    pub fn record_enobufs(&mut self) {
        self.counters.backend_enobufs += 1;
    }

    /// Counts a re-armed io_uring multishot receive.
    pub fn record_rearm(&mut self) {
        self.counters.backend_rearms += 1;
    }

    /// Counts a receive error.
    pub fn record_recv_error(&mut self) {
        self.counters.recv_errors += 1;
    }

    /// Decides the fate of a datagram that arrived on `local_port` from `src`.
    /// `local` is the relay socket it arrived on (a plain `u16` is a port
    /// on the first address).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: impl Into<RelayPort>,
        src: SocketAddr,
        bytes: &[u8],
    ) -> Verdict {
        let local = local.into();
        self.counters.packets_received += 1;
        self.counters.bytes_received += bytes.len() as u64;
        let Some(owner) = self.owner(local) else {
            self.counters.drops.add(DropReason::NoSession);
            return Verdict::Drop(DropReason::NoSession);
        };
        let Some(Some(session)) = self.sessions.get_mut(owner.slot as usize) else {
            self.counters.drops.add(DropReason::NoSession);
            return Verdict::Drop(DropReason::NoSession);
        };
        let leg = owner.side.index();
        let before = (session.legs[leg].stats.latches, session.legs[leg].stats.relatches);
        let src = peer::canonical(src);
        // A new source on a keyed leg the kernel forwards for: its proof is
        // checked against the leg's replay memory, which must first learn
        // what the kernel forwarded (the leg's routes' last counters), or a
        // copy of a packet the kernel forwarded would pass as fresh.
        if self.config.offload && session.needs_kernel_state(now, owner.side, owner.component, src) {
            let id = session.id;
            let routes = self.offloads.take_leg(id, leg);
            let retiring = self.retiring.iter().any(|(_, r, side, _)| *r == id && *side == leg);
            if !routes.is_empty() || retiring {
                let stats = &mut session.legs[leg].stats;
                stats.packets_received += 1;
                stats.bytes_received += bytes.len() as u64;
                stats.drops.add(DropReason::KernelSync);
                self.withdraw(id, routes);
                self.counters.drops.add(DropReason::KernelSync);
                return Verdict::Drop(DropReason::KernelSync);
            }
        }
        let verdict = session.handle_datagram(now, owner.side, owner.component, src, bytes, &self.config.peer_policy);
        self.counters.latches += session.legs[leg].stats.latches - before.0;
        let relatched = session.legs[leg].stats.relatches - before.1;
        self.counters.relatches += relatched;
        if let Some(j) = self.journal.as_mut().filter(|_| session.legs[leg].stats.latches != before.0 || relatched > 0)
        {
            if !session.journaled {
                session.journaled = true;
                j.changed.push(session.id);
            }
        }
        if self.config.offload {
            if relatched > 0 {
                // A moved leg changes where both directions go: withdraw all.
                let id = session.id;
                let routes = self.offloads.take(id);
                self.withdraw(id, routes);
            } else if let Ok((via, to)) = verdict {
                let id = session.id;
                if let Some((slot, route)) =
                    session.offload_route(owner.side, owner.component, local, src, bytes, via, to)
                {
                    if self.offloads.install(id, leg, slot, route) {
                        self.queue_offload(Offload::Install(route));
                    }
                }
            }
        }
        match verdict {
            Ok((via, to)) => {
                self.counters.packets_forwarded += 1;
                self.counters.bytes_forwarded += bytes.len() as u64;
                Verdict::Forward { via, to, framing: Framing::Unchanged }
            }
            Err(reason) => {
                self.counters.drops.add(reason);
                Verdict::Drop(reason)
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let q = self.quarantine.iter().map(|(t, _)| *t).min();
        match (self.wheel.poll_timeout(), q) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends sessions whose idle timeout or maximum duration has passed.
    pub fn handle_timeout(&mut self, now: Instant, sockets: &mut impl PortSockets) {
        let mut expired = std::mem::take(&mut self.expired);
        expired.clear();
        self.wheel.expire(now, &mut expired);
        for e in &expired {
            let id = SessionId(e.key);
            let Some(session) = self.session_ref(id) else {
                continue; // released earlier
            };
            let deadline = session.deadline();
            if deadline > now {
                self.offloads.refreshed(id);
                self.wheel.schedule(deadline, id.0);
                continue;
            }
            // The kernel may have forwarded for it since the last counters:
            // ask for fresh ones once before ending it.
            if let Some(routes) = self.offloads.ask_refresh(id, now) {
                for r in routes {
                    self.queue_offload(Offload::Refresh(r));
                }
                self.wheel.schedule(sess::instant_after(now, OFFLOAD_REFRESH_WAIT), id.0);
                continue;
            }
            let Some(session) = self.session_ref(id) else { continue };
            let idle = session.last_activity + session.idle_timeout <= now;
            if idle {
                self.counters.sessions_expired_idle += 1;
            } else {
                self.counters.sessions_expired_max_duration += 1;
            }
            self.remove(id, sockets);
        }
        self.expired = expired;
        let pools = &mut self.pools;
        self.quarantine.retain(|(until, port)| {
            if *until <= now {
                pools[usize::from(port.addr)].release(port.port);
                false
            } else {
                true
            }
        });
    }

    /// Executes a control command.
    pub fn handle_command(&mut self, now: Instant, cmd: Command, sockets: &mut impl PortSockets) -> Response {
        match cmd {
            Command::Allocate { spec, permit } => {
                #[cfg(feature = "__fault-injection")]
                if spec.tenant == FAULT_PANIC_TENANT {
                    panic!("fault injection: shard {} told to panic", self.config.index);
                }
                let r = self.allocate(now, &spec, permit, sockets);
                if r.is_err() {
                    self.counters.allocations_refused += 1;
                }
                Response::Allocated(r)
            }
            Command::Update { id, update } => Response::Updated(self.update(now, id, &update)),
            Command::Release { id } => Response::Released(match self.session_ref(id) {
                Some(s) => {
                    let info = s.info(now);
                    self.remove(id, sockets);
                    self.counters.sessions_released += 1;
                    Ok(info)
                }
                None => Err(ShardError::UnknownSession(id)),
            }),
            Command::Query { id } => {
                Response::Session(self.session_ref(id).map(|s| s.info(now)).ok_or(ShardError::UnknownSession(id)))
            }
            Command::List { after, limit } => {
                let mut v: Vec<&Session> =
                    self.sessions.iter().flatten().map(|b| &**b).filter(|s| after.is_none_or(|a| s.id > a)).collect();
                v.sort_by_key(|s| s.id);
                Response::List(v.into_iter().take(limit).map(|s| s.info(now)).collect())
            }
            Command::Snapshot => Response::Snapshot(self.counters()),
            Command::SetIdSpace { space } => {
                self.set_id_space(space);
                Response::IdSpaceSet
            }
            Command::Reconfigure { defaults, peer_policy } => {
                self.config.defaults = *defaults;
                self.config.peer_policy = peer_policy;
                Response::Reconfigured
            }
            Command::Restore { state, permit } => {
                let r = self.restore(now, &state, permit, sockets);
                if r.is_err() {
                    self.counters.allocations_refused += 1;
                }
                Response::Restored(r)
            }
            Command::Export { after, limit } => {
                let mut v: Vec<&Session> =
                    self.sessions.iter().flatten().map(|b| &**b).filter(|s| after.is_none_or(|a| s.id > a)).collect();
                v.sort_by_key(|s| s.id);
                Response::Exported(v.into_iter().take(limit).map(|s| s.export(now)).collect())
            }
            Command::Changes { limit } => Response::Changes(self.pull_changes(now, limit)),
        }
    }

    /// Takes up to `limit` changed sessions' states and every ended id
    /// from the journal.
    fn pull_changes(&mut self, now: Instant, limit: usize) -> Changes {
        let Some(j) = self.journal.as_mut() else { return Changes::default() };
        let take = j.changed.len().min(limit);
        let ids: Vec<SessionId> = j.changed.drain(..take).collect();
        let more = !j.changed.is_empty();
        let ended = std::mem::take(&mut j.ended);
        let overflowed = std::mem::take(&mut j.overflowed);
        let mut changed = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(s) = self.session_mut(id) {
                s.journaled = false;
                changed.push(s.export(now));
            }
        }
        Changes { changed, ended, overflowed, more }
    }

    /// Lists `id` as changed in the journal (once until pulled).
    fn journal_changed(&mut self, id: SessionId) {
        let Some(&slot) = self.slots.get(&id) else { return };
        let (Some(j), Some(Some(s))) = (self.journal.as_mut(), self.sessions.get_mut(slot as usize)) else { return };
        if !s.journaled {
            s.journaled = true;
            j.changed.push(id);
        }
    }

    /// Resumes a session from `state` on its own ports and id.
    fn restore(
        &mut self,
        now: Instant,
        state: &SessionState,
        permit: Option<QuotaPermit>,
        sockets: &mut impl PortSockets,
    ) -> Result<AllocatedPorts, ShardError> {
        let id = state.id;
        if id.shard() != self.config.index {
            return Err(ShardError::RestoreConflict(RestoreClash::OtherShard));
        }
        if self.slots.contains_key(&id) {
            return Err(ShardError::RestoreConflict(RestoreClash::IdInUse));
        }
        sess::state::validate_state(state, &self.config.defaults, &self.config.peer_policy)?;
        let mut taken: Vec<RelayPort> = Vec::with_capacity(4);
        for (addr, port) in state.relay_ports() {
            let a = usize::from(addr);
            let failure = match self.pools.get_mut(a) {
                None => Some(RestoreClash::UnknownAddress),
                Some(pool) if !pool.contains(port) => Some(RestoreClash::OutOfRange),
                Some(pool) => (!pool.take_exact(port)).then_some(RestoreClash::PortInUse),
            };
            let failure = failure.or_else(|| {
                sockets.open(RelayPort::new(addr, port)).err().map(|_| {
                    self.pools[a].release(port);
                    self.counters.port_bind_failures += 1;
                    RestoreClash::BindFailed
                })
            });
            if let Some(reason) = failure {
                self.give_back(&taken, sockets);
                return Err(ShardError::RestoreConflict(reason));
            }
            taken.push(RelayPort::new(addr, port));
        }
        let Some(slot) = self.take_slot() else {
            self.give_back(&taken, sockets);
            return Err(ShardError::TableFull);
        };
        let session = Session::restore(state, permit, now);
        self.insert(slot, session, [state.pbx.ports, state.endpoint.ports]);
        Ok(AllocatedPorts { id, pbx: state.pbx.ports, endpoint: state.endpoint.ports })
    }

    /// A free slot of the session table (grown when none is).
    fn take_slot(&mut self) -> Option<u32> {
        if let Some(s) = self.free_slots.pop() {
            return Some(s);
        }
        if self.sessions.len() >= MAX_SLOTS {
            return None;
        }
        self.sessions.push(None);
        Some((self.sessions.len() - 1) as u32)
    }

    /// Puts a new or restored session into `slot`: its ports, its timer,
    /// its id, the counters and the journal.
    fn insert(&mut self, slot: u32, session: Session, legs: [LegPorts; 2]) {
        let id = session.id;
        for (side, ports) in [(Side::Pbx, legs[0]), (Side::Endpoint, legs[1])] {
            self.own(RelayPort::new(ports.addr, ports.rtp), PortOwner { slot, side, component: Component::Rtp });
            if let Some(p) = ports.rtcp {
                self.own(RelayPort::new(ports.addr, p), PortOwner { slot, side, component: Component::Rtcp });
            }
        }
        self.wheel.schedule(session.deadline(), id.0);
        self.sessions[slot as usize] = Some(Box::new(session));
        self.slots.insert(id, slot);
        self.counters.sessions_active += 1;
        self.counters.sessions_created += 1;
        self.journal_changed(id);
    }

    /// The next id of this shard's id space that names no live session.
    fn mint_id(&mut self) -> SessionId {
        loop {
            self.serial = self.serial.wrapping_add(1);
            let id = SessionId::new(self.config.index, self.id_space, self.serial);
            if !self.slots.contains_key(&id) {
                return id;
            }
        }
    }

    fn set_id_space(&mut self, space: u32) {
        let space = space & ID_SPACE_MASK;
        if space != self.id_space {
            self.id_space = space;
            self.serial = 0;
        }
    }

    /// Size of the session table (live and reusable slots); it grows only
    /// when more sessions are live at once than ever before.
    pub fn session_slots(&self) -> usize {
        self.sessions.len()
    }

    /// Ids of every live session (for drains and tests).
    pub fn session_ids(&self) -> Vec<SessionId> {
        self.sessions.iter().flatten().map(|s| s.id).collect()
    }

    /// Releases every session (shutdown).
    pub fn release_all(&mut self, sockets: &mut impl PortSockets) {
        for id in self.session_ids() {
            self.remove(id, sockets);
            self.counters.sessions_released += 1;
        }
    }

    fn session_ref(&self, id: SessionId) -> Option<&Session> {
        if id.shard() != self.config.index {
            return None;
        }
        let slot = *self.slots.get(&id)?;
        self.sessions.get(slot as usize)?.as_deref()
    }

    fn session_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        let slot = *self.slots.get(&id)?;
        self.sessions.get_mut(slot as usize)?.as_deref_mut()
    }

    fn update(&mut self, now: Instant, id: SessionId, update: &SessionUpdate) -> Result<(), ShardError> {
        let slot = self.slots.get(&id).copied().ok_or(ShardError::UnknownSession(id))?;
        let Some(Some(s)) = self.sessions.get_mut(slot as usize) else {
            return Err(ShardError::UnknownSession(id));
        };
        s.update(now, update, &self.config.defaults, &self.config.peer_policy)?;
        // Keys, hints, limits, policy or a block may change what userspace
        // would decide: the kernel stops deciding for it.
        let routes = self.offloads.take(id);
        self.withdraw(id, routes);
        self.journal_changed(id);
        Ok(())
    }

    /// Queues removals of `id`'s withdrawn routes, keeping what their
    /// final counters must be added to.
    fn withdraw(&mut self, id: SessionId, routes: Vec<(usize, usize, Offloaded)>) {
        for (side, _, r) in routes {
            self.queue_offload(Offload::Remove(r.route.local));
            if self.retiring.len() >= MAX_OFFLOAD_QUEUE {
                self.retiring.remove(0);
            }
            self.retiring.push((r.route.local, id, side, r));
        }
    }

    /// Queues an action, bounded: a driver that stopped taking them must
    /// not make the shard grow without end (the oldest go first).
    fn queue_offload(&mut self, action: Offload) {
        if self.offload_queue.len() >= MAX_OFFLOAD_QUEUE {
            self.offload_queue.pop_front();
        }
        self.offload_queue.push_back(action);
    }

    /// The next kernel fast path action (install, remove, refresh), if any.
    pub fn poll_offload(&mut self) -> Option<Offload> {
        self.offload_queue.pop_front()
    }

    /// The relay sockets of `id`'s kernel routes (a driver refreshes their
    /// counters before a command about the session, e.g. a release).
    pub fn routes_of(&self, id: SessionId) -> Vec<RelayPort> {
        self.offloads.locals(id)
    }

    /// The kernel's counters of the route on `local` since it was
    /// installed: what is new is added to the leg's and the shard's counters
    /// (forwarded, and dropped over the rate as `rate_limited`), and its last
    /// packet counts as the session's activity. After a
    /// [`Offload::Remove`], the final counters of the withdrawn route.
    pub fn handle_offload_stats(&mut self, now: Instant, local: RelayPort, total: OffloadStats) {
        let delta = if let Some(i) = self.retiring.iter().position(|(p, ..)| *p == local) {
            let (_, id, side, mut r) = self.retiring.swap_remove(i);
            let d = r.delta(total);
            let side = if side == 0 { Side::Pbx } else { Side::Endpoint };
            if let Some(s) = self.session_mut(id) {
                s.handle_offloaded(now, side, &d);
            }
            d
        } else {
            let Some(owner) = self.owner(local) else { return };
            let Some(Some(s)) = self.sessions.get_mut(owner.slot as usize) else { return };
            let slot = s.slot_of(owner.side, owner.component);
            let Some(r) = self.offloads.get_mut(s.id, owner.side.index(), slot) else { return };
            if r.route.local != local {
                return;
            }
            let d = r.delta(total);
            s.handle_offloaded(now, owner.side, &d);
            d
        };
        self.counters.packets_received += delta.packets + delta.rate_limited;
        self.counters.packets_forwarded += delta.packets;
        self.counters.packets_forwarded_kernel += delta.packets;
        self.counters.bytes_received += delta.bytes;
        self.counters.bytes_forwarded += delta.bytes;
        self.counters.drops.add_n(DropReason::RateLimited, delta.rate_limited);
    }

    fn allocate(
        &mut self,
        now: Instant,
        spec: &SessionSpec,
        permit: Option<QuotaPermit>,
        sockets: &mut impl PortSockets,
    ) -> Result<AllocatedPorts, ShardError> {
        sess::validate_spec(spec, &self.config.defaults, &self.config.peer_policy)?;
        for (leg, side) in [(&spec.pbx, "pbx"), (&spec.endpoint, "endpoint")] {
            if !self.config.addresses.iter().any(|a| a.interface == leg.interface) {
                return Err(InvalidSpec::invalid(
                    if side == "pbx" { "pbx.interface" } else { "endpoint.interface" },
                    "no such interface",
                )
                .into());
            }
        }
        let mut taken: Vec<RelayPort> = Vec::with_capacity(4);
        let mut legs = [LegPorts { addr: 0, rtp: 0, rtcp: None }; 2];
        for (i, leg_spec) in [&spec.pbx, &spec.endpoint].into_iter().enumerate() {
            match self.take_ports(now, leg_spec.rtcp_mux, leg_spec.interface, sockets) {
                Some(ports) => {
                    taken.push(RelayPort::new(ports.addr, ports.rtp));
                    taken.extend(ports.rtcp.map(|p| RelayPort::new(ports.addr, p)));
                    legs[i] = ports;
                }
                None => {
                    self.give_back(&taken, sockets);
                    return Err(ShardError::PortsExhausted);
                }
            }
        }
        let Some(slot) = self.take_slot() else {
            self.give_back(&taken, sockets);
            return Err(ShardError::TableFull);
        };
        let id = self.mint_id();
        let session = Session::new(id, spec, legs, &self.config.defaults, permit, now);
        self.insert(slot, session, legs);
        Ok(AllocatedPorts { id, pbx: legs[0], endpoint: legs[1] })
    }

    /// Takes and binds one port (rtcp-mux) or one even/odd pair on the
    /// address of `interface` with the most free ports.
    fn take_ports(
        &mut self,
        now: Instant,
        rtcp_mux: bool,
        interface: u8,
        sockets: &mut impl PortSockets,
    ) -> Option<LegPorts> {
        let addr = (0..self.pools.len())
            .filter(|&i| self.config.addresses[i].interface == interface)
            .max_by_key(|&i| self.pools[i].free_count())?;
        let a = addr as u16;
        // Ports that fail to bind are quarantined, so each attempt consumes
        // one; bound the attempts so a hostile host cannot make us spin.
        for _ in 0..64 {
            let pool = &mut self.pools[addr];
            if rtcp_mux {
                let p = pool.take_single(&mut self.rng)?;
                match sockets.open(RelayPort::new(a, p)) {
                    Ok(()) => return Some(LegPorts { addr: a, rtp: p, rtcp: None }),
                    Err(_) => self.quarantine_port(now, RelayPort::new(a, p)),
                }
            } else {
                let p = pool.take_pair(&mut self.rng)?;
                let rtcp = p + 1;
                match sockets.open(RelayPort::new(a, p)) {
                    Ok(()) => match sockets.open(RelayPort::new(a, rtcp)) {
                        Ok(()) => return Some(LegPorts { addr: a, rtp: p, rtcp: Some(rtcp) }),
                        Err(_) => {
                            sockets.close(RelayPort::new(a, p));
                            self.pools[addr].release(p);
                            self.quarantine_port(now, RelayPort::new(a, rtcp));
                        }
                    },
                    Err(_) => {
                        pool.release(rtcp);
                        self.quarantine_port(now, RelayPort::new(a, p));
                    }
                }
            }
        }
        None
    }

    fn give_back(&mut self, ports: &[RelayPort], sockets: &mut impl PortSockets) {
        for &p in ports {
            self.close_port(p, sockets);
        }
    }

    fn close_port(&mut self, port: RelayPort, sockets: &mut impl PortSockets) {
        match sockets.close(port) {
            PortClose::Closed => self.pools[usize::from(port.addr)].release(port.port),
            PortClose::Closing => self.closing += 1,
        }
    }

    /// The backend reports that a port it answered [`PortClose::Closing`]
    /// for is now closed; it returns to the pool.
    pub fn handle_port_closed(&mut self, port: RelayPort) {
        let Some(pool) = self.pools.get_mut(usize::from(port.addr)) else { return };
        if pool.contains(port.port) && !pool.is_free(port.port) {
            self.closing = self.closing.saturating_sub(1);
            pool.release(port.port);
        }
    }

    fn quarantine_port(&mut self, now: Instant, port: RelayPort) {
        self.counters.port_bind_failures += 1;
        // The port stays marked used in the pool until the quarantine ends.
        self.quarantine.push((now + self.config.bind_quarantine, port));
    }

    fn own(&mut self, port: RelayPort, owner: PortOwner) {
        let a = usize::from(port.addr);
        let i = usize::from(port.port - self.pools[a].base());
        self.owners[a][i] = Some(owner);
    }

    fn remove(&mut self, id: SessionId, sockets: &mut impl PortSockets) {
        let Some(slot) = self.slots.remove(&id) else { return };
        let Some(session) = self.sessions.get_mut(slot as usize).and_then(|s| s.take()) else {
            return;
        };
        let routes = self.offloads.take(id);
        self.withdraw(id, routes);
        for side in [Side::Pbx, Side::Endpoint] {
            let ports = session.ports(side);
            for p in std::iter::once(ports.rtp).chain(ports.rtcp) {
                let port = RelayPort::new(ports.addr, p);
                let a = usize::from(ports.addr);
                if self.pools[a].contains(p) {
                    let i = usize::from(p - self.pools[a].base());
                    self.owners[a][i] = None;
                }
                self.close_port(port, sockets);
            }
        }
        self.free_slots.push(slot);
        self.counters.sessions_active -= 1;
        if let Some(j) = self.journal.as_mut() {
            j.handle_ended(id);
        }
        // Dropping `session` here drops its quota permit.
    }
}
