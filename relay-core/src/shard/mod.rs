//! The sans-IO shard: one port slice, its sessions, timers and counters.
//!
//! A shard is a pure state machine. The I/O backend feeds it datagrams with
//! [`Shard::handle_datagram`], commands with [`Shard::handle_command`] and time
//! with [`Shard::handle_timeout`], and asks [`Shard::poll_timeout`] when to
//! call again. It never reads a clock, owns a socket or spawns a thread; port
//! sockets are opened and closed through the [`PortSockets`] the caller passes
//! in. Everything here is therefore testable in virtual time.
#![forbid(unsafe_code)]

pub(crate) mod ports;
#[doc(hidden)] // the timer wheel, for the workspace's benches
pub mod timer;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::peer::{self, PeerPolicy};
use crate::quota::QuotaPermit;
use crate::session::spec::{SessionDefaults, SessionSpec, SessionUpdate, Side};
use crate::session::stats::{DropReason, ShardCounters};
use crate::session::{self as sess, Component, InvalidSpec, LegPorts, Session, SessionId, SessionInfo};
use ports::PortPool;
use timer::{TimerEntry, TimerWheel};

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the datagram, unchanged, out of relay port `via_port` to `to`.
    Forward {
        /// The relay port to send from.
        via_port: u16,
        /// The destination.
        to: SocketAddr,
    },
    /// Drop it (already counted).
    Drop(DropReason),
}

/// Opens and closes the UDP socket of a relay port. The I/O backend binds
/// real sockets; tests use a fake.
pub trait PortSockets {
    /// Binds `port`. An error makes the shard try another port.
    fn open(&mut self, port: u16) -> std::io::Result<()>;
    /// Closes `port`'s socket. [`PortClose::Closing`] means the socket is
    /// still held by in-flight I/O: the shard keeps the port out of the pool
    /// until the backend calls [`Shard::handle_port_closed`].
    fn close(&mut self, port: u16) -> PortClose;
}

/// Whether a closed port can be bound again at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortClose {
    /// The socket is gone; the port is reusable.
    Closed,
    /// The socket goes away when in-flight I/O completes.
    Closing,
}

/// Static configuration of one shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Shard index (0-based), encoded in session ids.
    pub index: u8,
    /// First port of the slice.
    pub port_base: u16,
    /// Number of ports in the slice.
    pub port_count: usize,
    /// Session defaults.
    pub defaults: SessionDefaults,
    /// Which remote addresses are allowed.
    pub peer_policy: PeerPolicy,
    /// Seed for randomized port choice (use a random one in production).
    pub seed: u64,
    /// How long a port that failed to bind stays out of rotation.
    pub bind_quarantine: Duration,
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
    pool: PortPool,
    owners: Vec<Option<PortOwner>>,
    /// Boxed sessions: the table's growth slack costs a pointer per slot.
    sessions: Vec<Option<Box<Session>>>,
    generations: Vec<u32>,
    free_slots: Vec<u32>,
    wheel: TimerWheel,
    quarantine: Vec<(Instant, u16)>,
    closing: usize,
    rng: fastrand::Rng,
    counters: ShardCounters,
    expired: Vec<TimerEntry>,
}

const MAX_SLOTS: usize = 1 << 24;

/// With the `fault-injection` feature (tests only), allocating a session
/// for this tenant panics the shard thread, to prove what a shard failure
/// does to the relay and the process.
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub const FAULT_PANIC_TENANT: &str = "fault-injection-shard-panic";

impl Shard {
    /// A shard with every port free; `now` is the epoch of its timer wheel.
    pub fn new(config: ShardConfig, now: Instant) -> Self {
        let pool = PortPool::new(config.port_base, config.port_count);
        let counters = ShardCounters { ports_total: config.port_count as u64, ..ShardCounters::default() };
        Self {
            owners: vec![None; config.port_count],
            pool,
            sessions: Vec::new(),
            generations: Vec::new(),
            free_slots: Vec::new(),
            wheel: TimerWheel::new(now, Duration::from_millis(100), 1024),
            quarantine: Vec::new(),
            closing: 0,
            rng: fastrand::Rng::with_seed(config.seed),
            counters,
            expired: Vec::new(),
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
        c.ports_in_use = (self.pool.len() - self.pool.free_count()) as u64;
        c.ports_quarantined = self.quarantine.len() as u64;
        c.ports_closing = self.closing as u64;
        c
    }

    /// Free ports right now.
    pub fn free_ports(&self) -> usize {
        self.pool.free_count()
    }

    /// Whether `port` belongs to this shard's slice.
    pub fn owns_port(&self, port: u16) -> bool {
        self.pool.contains(port)
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
    pub fn handle_datagram(&mut self, now: Instant, local_port: u16, src: SocketAddr, bytes: &[u8]) -> Verdict {
        self.counters.packets_received += 1;
        self.counters.bytes_received += bytes.len() as u64;
        let owner =
            if self.pool.contains(local_port) { self.owners[usize::from(local_port - self.pool.base())] } else { None };
        let Some(owner) = owner else {
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
        let verdict = session.handle_datagram(now, owner.side, owner.component, src, bytes, &self.config.peer_policy);
        self.counters.latches += session.legs[leg].stats.latches - before.0;
        self.counters.relatches += session.legs[leg].stats.relatches - before.1;
        match verdict {
            Ok((via_port, to)) => {
                self.counters.packets_forwarded += 1;
                self.counters.bytes_forwarded += bytes.len() as u64;
                Verdict::Forward { via_port, to }
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
                self.wheel.schedule(deadline, id.0);
                continue;
            }
            let idle = session.last_activity + session.idle_timeout <= now;
            if idle {
                self.counters.sessions_expired_idle += 1;
            } else {
                self.counters.sessions_expired_max_duration += 1;
            }
            self.remove(id, sockets);
        }
        self.expired = expired;
        let pool = &mut self.pool;
        self.quarantine.retain(|(until, port)| {
            if *until <= now {
                pool.release(*port);
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
                #[cfg(feature = "fault-injection")]
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
            Command::Reconfigure { defaults, peer_policy } => {
                self.config.defaults = *defaults;
                self.config.peer_policy = peer_policy;
                Response::Reconfigured
            }
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
        self.sessions.get(id.slot())?.as_deref().filter(|s| s.id == id)
    }

    fn update(&mut self, now: Instant, id: SessionId, update: &SessionUpdate) -> Result<(), ShardError> {
        if self.session_ref(id).is_none() {
            return Err(ShardError::UnknownSession(id));
        }
        let (defaults, policy) = (&self.config.defaults, &self.config.peer_policy);
        match self.sessions.get_mut(id.slot()) {
            Some(Some(s)) => Ok(s.update(now, update, defaults, policy)?),
            _ => Err(ShardError::UnknownSession(id)),
        }
    }

    fn allocate(
        &mut self,
        now: Instant,
        spec: &SessionSpec,
        permit: Option<QuotaPermit>,
        sockets: &mut impl PortSockets,
    ) -> Result<AllocatedPorts, ShardError> {
        sess::validate_spec(spec, &self.config.defaults, &self.config.peer_policy)?;
        let mut taken: Vec<u16> = Vec::with_capacity(4);
        let mut legs = [LegPorts { rtp: 0, rtcp: None }; 2];
        for (i, leg_spec) in [&spec.pbx, &spec.endpoint].into_iter().enumerate() {
            match self.take_ports(now, leg_spec.rtcp_mux, sockets) {
                Some(ports) => {
                    taken.push(ports.rtp);
                    taken.extend(ports.rtcp);
                    legs[i] = ports;
                }
                None => {
                    self.give_back(&taken, sockets);
                    return Err(ShardError::PortsExhausted);
                }
            }
        }
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None if self.sessions.len() < MAX_SLOTS => {
                self.sessions.push(None);
                self.generations.push(0);
                (self.sessions.len() - 1) as u32
            }
            None => {
                self.give_back(&taken, sockets);
                return Err(ShardError::TableFull);
            }
        };
        let generation = self.generations[slot as usize].wrapping_add(1);
        self.generations[slot as usize] = generation;
        let id = SessionId::new(self.config.index, slot, generation);
        let session = Session::new(id, spec, legs, &self.config.defaults, permit, now);
        for (side, ports) in [(Side::Pbx, legs[0]), (Side::Endpoint, legs[1])] {
            self.own(ports.rtp, PortOwner { slot, side, component: Component::Rtp });
            if let Some(p) = ports.rtcp {
                self.own(p, PortOwner { slot, side, component: Component::Rtcp });
            }
        }
        self.wheel.schedule(session.deadline(), id.0);
        self.sessions[slot as usize] = Some(Box::new(session));
        self.counters.sessions_active += 1;
        self.counters.sessions_created += 1;
        Ok(AllocatedPorts { id, pbx: legs[0], endpoint: legs[1] })
    }

    /// Takes and binds one port (rtcp-mux) or one even/odd pair.
    fn take_ports(&mut self, now: Instant, rtcp_mux: bool, sockets: &mut impl PortSockets) -> Option<LegPorts> {
        // Ports that fail to bind are quarantined, so each attempt consumes
        // one; bound the attempts so a hostile host cannot make us spin.
        for _ in 0..64 {
            if rtcp_mux {
                let p = self.pool.take_single(&mut self.rng)?;
                match sockets.open(p) {
                    Ok(()) => return Some(LegPorts { rtp: p, rtcp: None }),
                    Err(_) => self.quarantine_port(now, p),
                }
            } else {
                let p = self.pool.take_pair(&mut self.rng)?;
                let rtcp = p + 1;
                match sockets.open(p) {
                    Ok(()) => match sockets.open(rtcp) {
                        Ok(()) => return Some(LegPorts { rtp: p, rtcp: Some(rtcp) }),
                        Err(_) => {
                            sockets.close(p);
                            self.pool.release(p);
                            self.quarantine_port(now, rtcp);
                        }
                    },
                    Err(_) => {
                        self.pool.release(rtcp);
                        self.quarantine_port(now, p);
                    }
                }
            }
        }
        None
    }

    fn give_back(&mut self, ports: &[u16], sockets: &mut impl PortSockets) {
        for &p in ports {
            self.close_port(p, sockets);
        }
    }

    fn close_port(&mut self, port: u16, sockets: &mut impl PortSockets) {
        match sockets.close(port) {
            PortClose::Closed => self.pool.release(port),
            PortClose::Closing => self.closing += 1,
        }
    }

    /// The backend reports that a port it answered [`PortClose::Closing`]
    /// for is now closed; it returns to the pool.
    pub fn handle_port_closed(&mut self, port: u16) {
        if self.pool.contains(port) && !self.pool.is_free(port) {
            self.closing = self.closing.saturating_sub(1);
            self.pool.release(port);
        }
    }

    fn quarantine_port(&mut self, now: Instant, port: u16) {
        self.counters.port_bind_failures += 1;
        // The port stays marked used in the pool until the quarantine ends.
        self.quarantine.push((now + self.config.bind_quarantine, port));
    }

    fn own(&mut self, port: u16, owner: PortOwner) {
        let i = usize::from(port - self.pool.base());
        self.owners[i] = Some(owner);
    }

    fn remove(&mut self, id: SessionId, sockets: &mut impl PortSockets) {
        let slot = id.slot();
        let Some(session) = self.sessions.get_mut(slot).and_then(|s| s.take()) else {
            return;
        };
        for side in [Side::Pbx, Side::Endpoint] {
            let ports = session.ports(side);
            for p in std::iter::once(ports.rtp).chain(ports.rtcp) {
                if self.pool.contains(p) {
                    self.owners[usize::from(p - self.pool.base())] = None;
                }
                self.close_port(p, sockets);
            }
        }
        self.free_slots.push(slot as u32);
        self.counters.sessions_active -= 1;
        // Dropping `session` here drops its quota permit.
    }
}
