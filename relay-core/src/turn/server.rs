//! The TURN server, sans-IO: bytes and `now` in, decisions and commands
//! out. Like firezone's relay it has separate entry points for what clients
//! send ([`TurnServer::handle_client`]) and what peers send to relayed
//! addresses ([`TurnServer::handle_peer`]); the driver owns the sockets,
//! opens and closes relayed ports when told ([`Command`]), and sends.
//!
//! Relayed data is never copied here: a client's ChannelData or Send
//! indication comes back as the byte range to send from the relayed
//! socket, and a peer's datagram on a bound channel as the 4-byte header
//! to put in front of it ([`crate::framing::Framing::Prepend`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::allocation::{Allocation, ClientKey, RelayId};
use super::answer::{data_indication, Answer};
use super::auth::NonceKey;
use super::limits::{later, SourceBudget};
use super::proto::{ChannelData, ErrorCode, Family, Method, ATTR_DATA, ATTR_XOR_PEER_ADDRESS, CHANNEL_HEADER_LEN};
use super::settings::TurnSettings;
use super::stats::{TurnDrop, TurnStats};
use crate::quota::TenantQuotas;
use crate::shard::ports::PortPool;
use crate::wire::stun::{StunClass, StunMessage};

/// How long a released port waits before it is handed out again (the
/// driver closes sockets asynchronously).
pub const PORT_REUSE_DELAY: Duration = Duration::from_secs(2);
/// How long a port that could not be opened stays out of the pool.
pub const PORT_RETRY_DELAY: Duration = Duration::from_secs(60);
/// Ports an Allocate tries before it is answered 508.
const OPEN_ATTEMPTS: u8 = 3;
/// How often a taken-over allocation's port is tried again while the node
/// that held it lets go of it.
pub const REOPEN_EVERY: Duration = Duration::from_millis(100);
/// How many times (two seconds in all) before it is given up.
const REOPEN_ATTEMPTS: u8 = 20;

/// The time a call happens at: the monotonic clock for lifetimes, Unix
/// seconds for what credentials and nonces name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnNow {
    /// Monotonic time.
    pub instant: Instant,
    /// Seconds since the Unix epoch.
    pub unix_secs: u64,
}

/// What to do with a client's datagram or message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// Send `payload` (a range of the input) from `relay` to `peer`.
    Relay {
        /// The relayed socket.
        relay: RelayId,
        /// The peer.
        peer: SocketAddr,
        /// The application data within the input.
        payload: Range<usize>,
    },
    /// Answer the client with this message.
    Reply(Vec<u8>),
    /// Nothing now (an Allocate's answer follows its port being opened).
    Pending,
    /// Send `reply` (a ConnectionBind's success) on this stream, then
    /// carry `connection`'s bytes on it both ways, unframed (RFC 6062).
    Bind {
        /// The peer connection it joins.
        connection: super::connections::ConnectionId,
        /// The answer to send first.
        reply: Vec<u8>,
    },
    /// Dropped, and counted with this reason.
    Drop(TurnDrop),
}

/// What to do with a peer's datagram to a relayed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOutput {
    /// Send it to `client` behind this ChannelData header.
    Channel {
        /// The allocation's client.
        client: ClientKey,
        /// The header to prepend.
        header: [u8; 4],
    },
    /// Send this Data indication (the datagram wrapped) to `client`.
    Indication {
        /// The allocation's client.
        client: ClientKey,
        /// The message.
        message: Vec<u8>,
    },
    /// Dropped, and counted with this reason.
    Drop(TurnDrop),
}

/// What the driver must do besides answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Bind a UDP socket on `bind` for `relay`, then call
    /// [`TurnServer::handle_relay_opened`].
    OpenRelay {
        /// The relayed socket's id.
        relay: RelayId,
        /// Where to bind it.
        bind: SocketAddr,
    },
    /// Listen on TCP at `bind` for `relay` (a TCP allocation, RFC 6062:
    /// `SO_REUSEADDR` and `SO_REUSEPORT`, as its peer connections are
    /// dialled from the same address), then call
    /// [`TurnServer::handle_relay_opened`]; connections from peers go to
    /// [`TurnServer::handle_peer_connection`].
    ListenRelay {
        /// The relayed socket's id.
        relay: RelayId,
        /// Where to listen.
        bind: SocketAddr,
    },
    /// Connect from `bind` (a TCP allocation's relayed address) to `peer`,
    /// then call [`TurnServer::handle_dialed`].
    Dial {
        /// The connection's id.
        connection: super::connections::ConnectionId,
        /// The relayed address to connect from.
        bind: SocketAddr,
        /// The peer.
        peer: SocketAddr,
    },
    /// Close a peer connection and the data connection bound to it.
    CloseConnection {
        /// The connection's id.
        connection: super::connections::ConnectionId,
    },
    /// Close `relay`'s socket.
    CloseRelay {
        /// The relayed socket's id.
        relay: RelayId,
    },
    /// Send `message` to `client` (a deferred answer).
    Send {
        /// The client.
        client: ClientKey,
        /// The message.
        message: Vec<u8>,
    },
    /// Let the kernel relay this channel until its deadline (install or
    /// replace its routes; see [`super::offload`]). Only with
    /// [`TurnServer::enable_offload`].
    OffloadChannel(super::offload::ChannelOffload),
    /// `relay`'s allocation ended: remove its kernel routes, report what
    /// they relayed ([`TurnServer::handle_offload_counts`]).
    EndOffload {
        /// The allocation's relayed socket.
        relay: RelayId,
    },
}

/// Why a server cannot be built from settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnSettingsError {
    /// No realm.
    #[error("TURN needs at least one realm")]
    NoRealm,
    /// No relay address of either family.
    #[error("TURN needs an IPv4 or IPv6 relay address")]
    NoRelayAddress,
    /// The port range is empty or reversed.
    #[error("the TURN port range {0}-{1} is empty")]
    EmptyPortRange(u16, u16),
}

/// An EVEN-PORT reservation: the odd port kept for a later Allocate.
#[derive(Debug)]
pub(super) struct Reservation {
    pub(super) relay: RelayId,
    pub(super) expires: Instant,
    /// The port's share of the tenant's quota, held until dropped.
    pub(super) _quota: Option<crate::quota::QuotaPermit>,
}

/// The TURN server (see the module docs).
#[derive(Debug)]
pub struct TurnServer {
    pub(super) settings: TurnSettings,
    pub(super) nonces: NonceKey,
    pub(super) quotas: Option<Arc<TenantQuotas>>,
    pub(super) allocations: HashMap<RelayId, Allocation>,
    pub(super) by_client: HashMap<ClientKey, RelayId>,
    /// Dual allocations' second relayed sockets, to the first one's (the
    /// allocation's key in `allocations`).
    pub(super) second_relays: HashMap<RelayId, RelayId>,
    /// Allocations per (realm, username).
    pub(super) per_user: HashMap<(usize, String), usize>,
    pub(super) ports_v4: PortPool,
    pub(super) ports_v6: PortPool,
    pub(super) reservations: HashMap<u64, Reservation>,
    /// Ports of allocations that ended while their socket was being opened
    /// (or, taken over, waited to be tried again): out of the pool until
    /// the driver reports the opening (or that try comes).
    pub(super) abandoned: std::collections::HashSet<RelayId>,
    /// Ports waiting to return to the pool: a closed socket may linger a
    /// moment in the driver, a port another process held is tried later.
    pub(super) cooling: BinaryHeap<Reverse<(Instant, RelayId)>>,
    pub(super) expiries: BinaryHeap<Reverse<(Instant, RelayId)>>,
    /// Taken-over allocations whose port is tried again then.
    pub(super) reopen: BinaryHeap<Reverse<(Instant, RelayId)>>,
    pub(super) strangers: SourceBudget,
    /// Peer connections of TCP allocations (RFC 6062).
    pub(super) connections: HashMap<super::connections::ConnectionId, super::connections::PeerConnection>,
    /// Data connections bound to them.
    pub(super) data_connections: HashMap<ClientKey, super::connections::ConnectionId>,
    /// When waiting peer connections are closed unless bound.
    pub(super) bind_deadlines: BinaryHeap<Reverse<(Instant, super::connections::ConnectionId)>>,
    pub(super) commands: VecDeque<Command>,
    /// A cluster standby serves nothing.
    pub(super) standby: bool,
    /// Replicated allocations changed or ended since the last pull.
    pub(super) journal: super::replica::Journal,
    pub(super) rng: fastrand::Rng,
    pub(super) stats: TurnStats,
    /// Whether channels are announced to a kernel fast path.
    pub(super) offload: bool,
}

impl TurnServer {
    /// A server with these settings, nonces signed with `nonces`, and
    /// allocations counted against `quotas` (one port each) when given.
    pub fn new(
        settings: TurnSettings,
        nonces: NonceKey,
        quotas: Option<Arc<TenantQuotas>>,
        seed: u64,
    ) -> Result<Self, TurnSettingsError> {
        if settings.realms.is_empty() {
            return Err(TurnSettingsError::NoRealm);
        }
        if settings.relay_v4.is_none() && settings.relay_v6.is_none() {
            return Err(TurnSettingsError::NoRelayAddress);
        }
        if settings.first_port > settings.last_port || settings.first_port == 0 {
            return Err(TurnSettingsError::EmptyPortRange(settings.first_port, settings.last_port));
        }
        let count = usize::from(settings.last_port - settings.first_port) + 1;
        let pool = |on: bool| PortPool::new(settings.first_port, if on { count } else { 0 });
        Ok(Self {
            ports_v4: pool(settings.relay_v4.is_some()),
            ports_v6: pool(settings.relay_v6.is_some()),
            strangers: SourceBudget::new(
                settings.limits.stranger_burst_bytes,
                settings.limits.stranger_bytes_per_second,
            ),
            settings,
            nonces,
            quotas,
            allocations: HashMap::new(),
            by_client: HashMap::new(),
            second_relays: HashMap::new(),
            per_user: HashMap::new(),
            reservations: HashMap::new(),
            abandoned: Default::default(),
            cooling: BinaryHeap::new(),
            expiries: BinaryHeap::new(),
            reopen: BinaryHeap::new(),
            connections: HashMap::new(),
            data_connections: HashMap::new(),
            bind_deadlines: BinaryHeap::new(),
            commands: VecDeque::new(),
            standby: false,
            journal: Default::default(),
            rng: fastrand::Rng::with_seed(seed),
            stats: TurnStats::default(),
            offload: false,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &TurnSettings {
        &self.settings
    }

    /// A configuration reload at `now`: new realms (secrets, users,
    /// allow-lists), limits and peer policy. Allocations go on under their
    /// realm's new settings, matched by name (their key stays the one they
    /// were made with); those whose realm is gone end. The relay addresses
    /// and the port range stay: they need a restart.
    pub fn handle_reconfigure(
        &mut self,
        now: Instant,
        realms: Vec<super::settings::Realm>,
        limits: super::settings::TurnLimits,
        policy: crate::peer::PeerPolicy,
    ) -> Result<(), TurnSettingsError> {
        if realms.is_empty() {
            return Err(TurnSettingsError::NoRealm);
        }
        let moved: Vec<(RelayId, Option<usize>)> = self
            .allocations
            .iter()
            .map(|(relay, a)| {
                let name = self.settings.realms.get(a.realm).map(|r| r.name.as_str());
                (*relay, realms.iter().position(|r| Some(r.name.as_str()) == name))
            })
            .collect();
        let old = self.settings.limits;
        if (old.stranger_burst_bytes, old.stranger_bytes_per_second)
            != (limits.stranger_burst_bytes, limits.stranger_bytes_per_second)
        {
            self.strangers = SourceBudget::new(limits.stranger_burst_bytes, limits.stranger_bytes_per_second);
        }
        self.settings.realms = realms;
        self.settings.limits = limits;
        self.settings.policy = policy;
        for (relay, index) in moved {
            match index {
                Some(i) => {
                    if let Some(a) = self.allocations.get_mut(&relay) {
                        a.realm = i;
                    }
                }
                None => self.forget(now, relay),
            }
        }
        self.per_user.clear();
        for a in self.allocations.values() {
            *self.per_user.entry((a.realm, a.username.clone())).or_default() += 1;
        }
        // The kernel's routes carry the allocations' rates.
        if old.bytes_per_second != limits.bytes_per_second || old.burst_bytes != limits.burst_bytes {
            let relays: Vec<RelayId> = self.allocations.keys().copied().collect();
            for relay in relays {
                // Every channel again, deadline moved or not.
                if let Some(alloc) = self.allocations.get_mut(&relay) {
                    alloc.announced.clear();
                }
                self.offload_channels(now, relay);
            }
        }
        Ok(())
    }

    /// Counters.
    pub fn stats(&self) -> &TurnStats {
        &self.stats
    }

    /// The allocations (opened or being opened).
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    /// Allocations per tenant now.
    pub fn allocations_by_tenant(&self) -> HashMap<&str, usize> {
        let mut by = HashMap::new();
        for a in self.allocations.values() {
            *by.entry(self.settings.realms[a.realm].tenant.as_str()).or_default() += 1;
        }
        by
    }

    /// Whether `client` holds an allocation (opened or being opened).
    pub fn has_allocation(&self, client: ClientKey) -> bool {
        self.by_client.contains_key(&ClientKey { source: crate::peer::canonical(client.source), ..client })
    }

    /// `client`'s connection (TCP or TLS) closed: its allocation is
    /// deleted (RFC 8656 §3.1).
    pub fn handle_client_closed(&mut self, now: Instant, client: ClientKey) {
        let client = ClientKey { source: crate::peer::canonical(client.source), ..client };
        if let Some(relay) = self.by_client.get(&client).copied() {
            self.forget(now, relay);
        }
        if let Some(connection) = self.data_connections.get(&client).copied() {
            self.handle_connection_closed(connection);
        }
    }

    /// A datagram (UDP) or message (TCP/TLS, one framed message) from
    /// `client`.
    pub fn handle_client(&mut self, now: TurnNow, client: ClientKey, buf: &[u8]) -> ClientOutput {
        let client = ClientKey { source: crate::peer::canonical(client.source), ..client };
        let out = match buf.first() {
            Some(b) if b & 0xc0 == 0x40 => self.handle_channel_data(now.instant, client, buf),
            _ => match StunMessage::parse(buf) {
                Ok(msg) => self.handle_stun(now, client, msg),
                Err(_) => ClientOutput::Drop(TurnDrop::Malformed),
            },
        };
        if let ClientOutput::Drop(reason) = &out {
            self.stats.dropped(*reason);
        }
        out
    }

    fn handle_channel_data(&mut self, now: Instant, client: ClientKey, buf: &[u8]) -> ClientOutput {
        let Some(cd) = ChannelData::parse(buf) else { return ClientOutput::Drop(TurnDrop::Malformed) };
        let Some(alloc) = self.allocation_of(client) else { return ClientOutput::Drop(TurnDrop::NoAllocation) };
        let Some(peer) = alloc.channel_peer(cd.channel, now) else { return ClientOutput::Drop(TurnDrop::NoChannel) };
        self.relay_to_peer(now, client, peer, CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + cd.len)
    }

    /// The opened allocation of `client`.
    fn allocation_of(&self, client: ClientKey) -> Option<&Allocation> {
        self.by_client.get(&client).and_then(|r| self.allocations.get(r)).filter(|a| a.opened)
    }

    /// Checks permission and rate, counts, and says what to send.
    fn relay_to_peer(
        &mut self,
        now: Instant,
        client: ClientKey,
        peer: SocketAddr,
        payload: Range<usize>,
    ) -> ClientOutput {
        let limits = self.settings.limits;
        let Some(alloc) = self.by_client.get(&client).and_then(|r| self.allocations.get_mut(r)) else {
            return ClientOutput::Drop(TurnDrop::NoAllocation);
        };
        if !alloc.permits(peer.ip(), now) {
            return ClientOutput::Drop(TurnDrop::NoPermission);
        }
        let len = payload.len() as u64;
        if !alloc.rate.take(now, len, limits.bytes_per_second, limits.burst_bytes) {
            return ClientOutput::Drop(TurnDrop::RateLimited);
        }
        // The relayed socket of the peer's family (a permission exists
        // only for a family the allocation has).
        let Some(relay) = alloc.relay_for(Family::of(peer)) else {
            return ClientOutput::Drop(TurnDrop::NoPermission);
        };
        alloc.to_peer.0 += 1;
        alloc.to_peer.1 += len;
        self.stats.relayed_to_peer(len);
        ClientOutput::Relay { relay, peer, payload }
    }

    fn handle_stun(&mut self, now: TurnNow, client: ClientKey, msg: StunMessage<'_>) -> ClientOutput {
        if msg.attribute(crate::wire::stun::ATTR_FINGERPRINT).is_some() && !msg.verify_fingerprint() {
            return ClientOutput::Drop(TurnDrop::Malformed);
        }
        match (msg.class(), Method::from_number(msg.method())) {
            // A standby (or a fenced active) changes nothing; what its
            // allocations relay goes on, like media.
            (StunClass::Request, _) if self.standby => ClientOutput::Drop(TurnDrop::Standby),
            (StunClass::Indication, Some(Method::Send)) => self.handle_send(now.instant, client, msg),
            (StunClass::Request, Some(method)) => self.handle_request(now, client, method, msg),
            (StunClass::Request, None) => ClientOutput::Drop(TurnDrop::UnknownMethod),
            _ => ClientOutput::Drop(TurnDrop::UnexpectedMessage),
        }
    }

    /// A Send indication: XOR-PEER-ADDRESS and DATA, to a permitted peer.
    fn handle_send(&mut self, now: Instant, client: ClientKey, msg: StunMessage<'_>) -> ClientOutput {
        match self.allocation_of(client) {
            None => return ClientOutput::Drop(TurnDrop::NoAllocation),
            // A TCP allocation relays over its peer connections only.
            Some(a) if a.tcp => return ClientOutput::Drop(TurnDrop::UnexpectedMessage),
            Some(_) => {}
        }
        let (Some(peer), Some(data)) = (msg.xor_address(ATTR_XOR_PEER_ADDRESS), msg.attribute(ATTR_DATA)) else {
            return ClientOutput::Drop(TurnDrop::Malformed);
        };
        let peer = crate::peer::canonical(peer);
        let realm = self.allocation_of(client).map_or(0, |a| a.realm);
        if !self.peer_allowed(realm, peer) {
            return ClientOutput::Drop(TurnDrop::Forbidden);
        }
        let start = data.offset + 4;
        self.relay_to_peer(now, client, peer, start..start + data.value.len())
    }

    /// A datagram from `peer` to `relay`'s socket.
    pub fn handle_peer(&mut self, now: TurnNow, relay: RelayId, peer: SocketAddr, buf: &[u8]) -> PeerOutput {
        let out = self.peer_output(now.instant, relay, crate::peer::canonical(peer), buf);
        if let PeerOutput::Drop(reason) = &out {
            self.stats.dropped(*reason);
        }
        out
    }

    fn peer_output(&mut self, now: Instant, relay: RelayId, peer: SocketAddr, buf: &[u8]) -> PeerOutput {
        let limits = self.settings.limits;
        let key = self.allocation_key(relay);
        let Some(alloc) =
            self.allocations.get_mut(&key).filter(|a| a.opened && a.relay_for(relay.family) == Some(relay))
        else {
            return PeerOutput::Drop(TurnDrop::NoAllocation);
        };
        if !alloc.permits(peer.ip(), now) {
            return PeerOutput::Drop(TurnDrop::NoPermission);
        }
        if buf.len() > usize::from(u16::MAX) - 64 {
            return PeerOutput::Drop(TurnDrop::Malformed);
        }
        let len = buf.len() as u64;
        if !alloc.rate.take(now, len, limits.bytes_per_second, limits.burst_bytes) {
            return PeerOutput::Drop(TurnDrop::RateLimited);
        }
        alloc.to_client.0 += 1;
        alloc.to_client.1 += len;
        let client = alloc.client;
        let out = match alloc.channel_of(peer, now) {
            Some(channel) => PeerOutput::Channel { client, header: ChannelData::header(channel, buf.len()) },
            None => {
                let txid: [u8; 12] = std::array::from_fn(|_| self.rng.u8(..));
                PeerOutput::Indication { client, message: data_indication(peer, buf, txid) }
            }
        };
        self.stats.relayed_to_client(len);
        out
    }

    /// Whether a client of `realm` may reach `peer`: another allocation's
    /// relayed address on this server, or an address the peer policy
    /// allows that is not one of the relay's own listeners or media
    /// ranges, or one the realm allow-lists.
    pub fn peer_allowed(&self, realm: usize, peer: SocketAddr) -> bool {
        let peer = crate::peer::canonical(peer);
        if self.is_relayed_address(peer) {
            return true;
        }
        if peer.port() == 0 || self.settings.policy.is_own(peer) {
            return false;
        }
        self.ip_allowed(realm, peer.ip())
    }

    /// Whether a permission for `ip` may be installed (ports are checked
    /// when data is sent): allowed by the policy's address classes, one of
    /// the relay addresses, or allow-listed by the realm.
    pub fn ip_allowed(&self, realm: usize, ip: IpAddr) -> bool {
        let ip = crate::peer::canonical(SocketAddr::new(ip, 0)).ip();
        self.is_relay_ip(ip)
            || self.settings.policy.allows(SocketAddr::new(ip, 1))
            || self.settings.realms.get(realm).is_some_and(|r| r.allow_peers.iter().any(|n| n.contains(ip)))
    }

    fn is_relay_ip(&self, ip: IpAddr) -> bool {
        [self.settings.relay_v4, self.settings.relay_v6]
            .into_iter()
            .flatten()
            .any(|r| r.advertised == ip || r.bind == ip)
    }

    fn is_relayed_address(&self, addr: SocketAddr) -> bool {
        self.is_relay_ip(addr.ip()) && (self.settings.first_port..=self.settings.last_port).contains(&addr.port())
    }

    /// The driver opened (`true`) or could not open `relay`'s socket: the
    /// allocation waiting for it is answered (a dual allocation once both
    /// of its sockets are).
    pub fn handle_relay_opened(&mut self, now: TurnNow, relay: RelayId, opened: bool) {
        if self.abandoned.remove(&relay) {
            // Its allocation ended meanwhile: the socket goes, the port
            // returns later.
            if opened {
                self.commands.push_back(Command::CloseRelay { relay });
            }
            self.cool(relay, now.instant, if opened { PORT_REUSE_DELAY } else { PORT_RETRY_DELAY });
            return;
        }
        if let Some(key) = self.second_relays.get(&relay).copied() {
            self.handle_second_opened(now, key, relay, opened);
            return;
        }
        let Some(alloc) = self.allocations.get_mut(&relay).filter(|a| !a.opened) else { return };
        if alloc.restored {
            // Taken over: it serves once its port is open again. The node
            // that held the port may take a moment to let go of it: tried
            // again for a while, then given up (nobody waits for an
            // answer).
            if opened {
                alloc.opened = true;
                self.journal_changed(relay);
                self.offload_channels(now.instant, relay);
            } else if alloc.open_attempts < REOPEN_ATTEMPTS {
                alloc.open_attempts += 1;
                self.reopen.push(Reverse((later(now.instant, REOPEN_EVERY), relay)));
            } else {
                tracing::warn!(port = relay.port, "TURN: a taken-over allocation's port could not be opened");
                self.stats.ports_unavailable += 1;
                self.remove(now.instant, relay);
                self.cool(relay, now.instant, PORT_RETRY_DELAY);
            }
            return;
        }
        if opened {
            alloc.opened = true;
            self.answer_when_ready(now.instant, relay);
            return;
        }
        // Another socket holds that port: it is tried again later, and the
        // allocation another port (unless it was asked for a given one).
        self.stats.ports_unavailable += 1;
        alloc.open_attempts += 1;
        let retry = alloc.any_port && alloc.open_attempts < OPEN_ATTEMPTS;
        let (client, txid, key, tcp) = (alloc.client, alloc.allocate_txid, alloc.key, alloc.tcp);
        self.cool(relay, now.instant, PORT_RETRY_DELAY);
        if retry {
            if let Some((relay, bind)) = self.move_to_free_port(relay) {
                self.commands.push_back(match tcp {
                    true => Command::ListenRelay { relay, bind },
                    false => Command::OpenRelay { relay, bind },
                });
                return;
            }
        }
        self.remove(now.instant, relay);
        let message = Answer::error(Method::Allocate, txid, ErrorCode::InsufficientCapacity, Some(key)).finish();
        self.stats.answered(Method::Allocate, Some(ErrorCode::InsufficientCapacity));
        self.commands.push_back(Command::Send { client, message });
    }

    /// A dual allocation's second socket (`relay`, of allocation `key`)
    /// opened or not. One that cannot be opened is exchanged for another
    /// port, then given up: the allocation goes on with its first family,
    /// its answer saying 508 for the second.
    fn handle_second_opened(&mut self, now: TurnNow, key: RelayId, relay: RelayId, opened: bool) {
        let Some(alloc) = self.allocations.get_mut(&key) else { return };
        let Some(second) = alloc.second.as_mut().filter(|s| s.relay == relay && !s.opened) else { return };
        if opened {
            second.opened = true;
            match alloc.restored {
                true => {
                    self.journal_changed(key);
                    self.offload_channels(now.instant, key);
                }
                false => self.answer_when_ready(now.instant, key),
            }
            return;
        }
        self.stats.ports_unavailable += 1;
        second.open_attempts += 1;
        let (attempts, restored) = (second.open_attempts, alloc.restored);
        if restored && attempts < REOPEN_ATTEMPTS {
            self.reopen.push(Reverse((later(now.instant, REOPEN_EVERY), relay)));
            return;
        }
        self.cool(relay, now.instant, PORT_RETRY_DELAY);
        self.second_relays.remove(&relay);
        if !restored && attempts < OPEN_ATTEMPTS {
            let moved = self.settings.relay_v6.and_then(|address| {
                let port = self.ports_v6.take_single(&mut self.rng)?;
                Some((RelayId { family: Family::V6, port }, address))
            });
            if let Some((moved, address)) = moved {
                if let Some(second) = self.allocations.get_mut(&key).and_then(|a| a.second.as_mut()) {
                    second.relay = moved;
                    second.relayed = SocketAddr::new(address.advertised, moved.port);
                    self.expiries.push(Reverse((second.expires, moved)));
                }
                self.second_relays.insert(moved, key);
                let bind = SocketAddr::new(address.bind, moved.port);
                self.commands.push_back(Command::OpenRelay { relay: moved, bind });
                return;
            }
        }
        let Some(alloc) = self.allocations.get_mut(&key) else { return };
        alloc.second = None;
        alloc.second_refused = Some(ErrorCode::InsufficientCapacity);
        match restored {
            true => self.journal_changed(key),
            false => self.answer_when_ready(now.instant, key),
        }
    }

    /// Answers `key`'s Allocate once every socket it waits for is open.
    fn answer_when_ready(&mut self, now: Instant, key: RelayId) {
        let Some(alloc) = self.allocations.get(&key).filter(|a| a.ready()) else { return };
        let client = alloc.client;
        let message = self.allocate_success(now, key);
        self.stats.answered(Method::Allocate, None);
        self.commands.push_back(Command::Send { client, message });
        self.journal_changed(key);
    }

    /// Moves an unopened allocation from `relay` to a free port of the
    /// same family: its new id and where to bind it.
    fn move_to_free_port(&mut self, relay: RelayId) -> Option<(RelayId, SocketAddr)> {
        let address = match relay.family {
            Family::V4 => self.settings.relay_v4,
            Family::V6 => self.settings.relay_v6,
        }?;
        let pool = match relay.family {
            Family::V4 => &mut self.ports_v4,
            Family::V6 => &mut self.ports_v6,
        };
        let port = pool.take_single(&mut self.rng)?;
        let moved = RelayId { family: relay.family, port };
        let mut alloc = self.allocations.remove(&relay)?;
        alloc.relay = moved;
        alloc.relayed = SocketAddr::new(address.advertised, port);
        if let Some(second) = &alloc.second {
            self.second_relays.insert(second.relay, moved);
        }
        self.by_client.insert(alloc.client, moved);
        self.expiries.push(Reverse((alloc.expires, moved)));
        self.allocations.insert(moved, alloc);
        Some((moved, SocketAddr::new(address.bind, port)))
    }

    /// Puts `relay`'s port back in the pool after `delay`.
    pub(super) fn cool(&mut self, relay: RelayId, now: Instant, delay: Duration) {
        let at = now.checked_add(delay).unwrap_or(now);
        self.cooling.push(Reverse((at, relay)));
    }

    /// The next command for the driver.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let allocation = self.expiries.peek().map(|Reverse((t, _))| *t);
        let reservation = self.reservations.values().map(|r| r.expires).min();
        let cooling = self.cooling.peek().map(|Reverse((t, _))| *t);
        let reopen = self.reopen.peek().map(|Reverse((t, _))| *t);
        allocation.into_iter().chain(reservation).chain(cooling).chain(reopen).chain(self.next_bind_deadline()).min()
    }

    /// Expires allocations, reservations and unbound peer connections due
    /// at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_waiting(now);
        while let Some(Reverse((at, relay))) = self.reopen.peek().copied() {
            if at > now {
                break;
            }
            self.reopen.pop();
            if self.abandoned.remove(&relay) {
                // Its allocation ended while the port waited to be tried
                // again: no opening is under way for it (the retry is this
                // look's to make), so no report will return the port — it
                // goes back from here.
                self.cool(relay, now, PORT_RETRY_DELAY);
                continue;
            }
            let key = self.allocation_key(relay);
            let waiting = self.allocations.get(&key).is_some_and(|a| {
                let second_waiting = a.second.as_ref().is_some_and(|s| s.relay == relay && !s.opened);
                a.restored && (relay == key && !a.opened || second_waiting)
            });
            if let (true, Some(bind)) = (waiting, self.relay_bind_address(relay)) {
                self.commands.push_back(Command::OpenRelay { relay, bind });
            }
        }
        while let Some(Reverse((due, relay))) = self.expiries.peek().copied() {
            if due > now {
                break;
            }
            self.expiries.pop();
            // A relayed address of an allocation: its first one, or a dual
            // allocation's second (each with its own lifetime).
            let key = self.allocation_key(relay);
            let Some(alloc) = self.allocations.get(&key) else { continue };
            let expires = match &alloc.second {
                Some(second) if second.relay == relay => second.expires,
                _ if relay == key => alloc.expires,
                _ => continue,
            };
            if expires > now {
                // Refreshed since: look again when it is due.
                self.expiries.push(Reverse((expires, relay)));
            } else if alloc.last_expiry() <= now {
                self.stats.expired += 1;
                self.forget(now, key);
            } else {
                // One family of a dual allocation ran out: it goes alone.
                self.drop_family(now, key, relay.family);
            }
        }
        let expired: Vec<u64> = self.reservations.iter().filter(|(_, r)| r.expires <= now).map(|(t, _)| *t).collect();
        for token in expired {
            if let Some(r) = self.reservations.remove(&token) {
                self.pool(r.relay.family).release(r.relay.port);
            }
        }
        while let Some(Reverse((at, relay))) = self.cooling.peek().copied() {
            if at > now {
                break;
            }
            self.cooling.pop();
            self.pool(relay.family).release(relay.port);
        }
    }

    /// Removes an allocation: the driver told to close its socket, its
    /// port back to the pool after [`PORT_REUSE_DELAY`] (when its socket is
    /// still being opened, once the driver reports that).
    pub(super) fn forget(&mut self, now: Instant, relay: RelayId) {
        self.close_connections_of(relay);
        let Some(opened) = self.allocations.get(&relay).map(|a| a.opened) else { return };
        self.remove(now, relay);
        self.let_go(now, relay, opened);
    }

    /// Lets go of a relayed socket no allocation holds any more: closed
    /// and its port back to the pool after [`PORT_REUSE_DELAY`]; one not
    /// `opened` is abandoned — its port returns when the driver reports
    /// the opening under way, or at the retry a taken-over port waits for.
    fn let_go(&mut self, now: Instant, relay: RelayId, opened: bool) {
        if opened {
            self.commands.push_back(Command::CloseRelay { relay });
            self.cool(relay, now, PORT_REUSE_DELAY);
        } else {
            self.abandoned.insert(relay);
        }
    }

    /// Takes an allocation out of the tables (its first port is the
    /// caller's to return; a dual allocation's second socket is closed and
    /// its port returned here).
    fn remove(&mut self, now: Instant, relay: RelayId) {
        let Some(mut alloc) = self.allocations.remove(&relay) else { return };
        if alloc.opened {
            self.journal_ended(&alloc);
        }
        if alloc.offloaded {
            self.commands.push_back(Command::EndOffload { relay });
        }
        if let Some(second) = alloc.second.take() {
            self.release_second(now, second);
        }
        self.by_client.remove(&alloc.client);
        let user = (alloc.realm, alloc.username);
        if let Some(n) = self.per_user.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&user);
            }
        }
    }

    /// Closes a dual allocation's second socket and returns its port (once
    /// the driver reports it opened, when it is still being opened).
    fn release_second(&mut self, now: Instant, second: super::allocation::SecondRelay) {
        self.second_relays.remove(&second.relay);
        self.let_go(now, second.relay, second.opened);
    }

    /// A Refresh of lifetime zero for one family of dual allocation `key`:
    /// that relayed address is deleted with the permissions and channels
    /// of its family, the allocation goes on with the other (RFC 8656
    /// §7.1). Deleting its first one makes the second its first, under the
    /// second's key. The kernel's routes are withdrawn and the remaining
    /// channels announced again: none may go on relaying from a closed
    /// address.
    pub(super) fn drop_family(&mut self, now: Instant, key: RelayId, family: Family) {
        let Some(mut alloc) = self.allocations.remove(&key) else { return };
        let Some(second) = alloc.second.take() else {
            self.allocations.insert(key, alloc);
            return;
        };
        alloc.forget_family(family);
        if alloc.offloaded {
            self.commands.push_back(Command::EndOffload { relay: key });
            alloc.offloaded = false;
            alloc.announced.clear();
        }
        let mut now_key = key;
        if alloc.relay.family == family {
            self.journal_ended(&alloc);
            self.let_go(now, key, alloc.opened);
            self.second_relays.remove(&second.relay);
            now_key = second.relay;
            alloc.relay = second.relay;
            alloc.relayed = second.relayed;
            alloc.expires = second.expires;
            // A taken-over second still waiting for its port is waited
            // for as the first now (tried again, or given up).
            alloc.opened = second.opened;
            alloc.open_attempts = second.open_attempts;
            alloc.take_quota_of(second);
            self.by_client.insert(alloc.client, now_key);
            self.expiries.push(Reverse((alloc.expires, now_key)));
        } else {
            self.release_second(now, second);
        }
        self.allocations.insert(now_key, alloc);
        self.journal_changed(now_key);
        self.offload_channels(now, now_key);
    }

    /// Looks at `relay`'s lifetime at `at`: a Refresh that shortened it
    /// must not wait for the look its longer one had. Earlier looks stay
    /// (each is checked against the lifetime when due, and looks again
    /// later if it moved); when they outnumber the live relayed addresses
    /// four to one, the heap is rebuilt from those, so no client's
    /// requests can grow it.
    pub(super) fn schedule_expiry(&mut self, at: Instant, relay: RelayId) {
        self.expiries.push(Reverse((at, relay)));
        if self.expiries.len() > 4 * (self.allocations.len() + self.second_relays.len()) + 64 {
            self.expiries = self
                .allocations
                .values()
                .flat_map(|a| {
                    let second = a.second.as_ref().map(|s| (s.expires, s.relay));
                    std::iter::once((a.expires, a.relay)).chain(second)
                })
                .map(Reverse)
                .collect();
        }
    }

    /// The key of the allocation `relay` serves: its own, or the first
    /// socket's when it is a dual allocation's second.
    pub(super) fn allocation_key(&self, relay: RelayId) -> RelayId {
        self.second_relays.get(&relay).copied().unwrap_or(relay)
    }

    pub(super) fn pool(&mut self, family: Family) -> &mut PortPool {
        match family {
            Family::V4 => &mut self.ports_v4,
            Family::V6 => &mut self.ports_v6,
        }
    }

    /// Answers a stranger when its prefix's budget allows (UDP only: a TCP
    /// or TLS source has proved its address).
    pub(super) fn answer_stranger(
        &mut self,
        now: Instant,
        client: ClientKey,
        received: usize,
        message: Vec<u8>,
    ) -> ClientOutput {
        if client.transport == super::allocation::Transport::Udp
            && !self.strangers.admit(client.source.ip(), received, message.len(), now)
        {
            return ClientOutput::Drop(TurnDrop::StrangerBudget);
        }
        ClientOutput::Reply(message)
    }
}
