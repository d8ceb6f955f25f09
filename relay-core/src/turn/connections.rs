//! TCP allocations (RFC 6062), sans-IO: a client on a TCP or TLS control
//! connection allocates a relayed *TCP* address; it asks the server to
//! dial a permitted peer from it (Connect → CONNECTION-ID), or learns of a
//! permitted peer that dialled it (a ConnectionAttempt indication); either
//! way it opens a new *data* connection to the server and binds it to the
//! peer connection (ConnectionBind), after which the two carry each
//! other's bytes unchanged.
//!
//! Held to the same policy as UDP: the peer policy and the realm's
//! allow-list for Connect, permissions for both directions, a cap on
//! connections per allocation, the allocation's byte rate (paced, since a
//! stream cannot drop), and a peer connection that is not bound within
//! [`TurnLimits::connection_bind_timeout`](super::TurnLimits) is closed.
//! The data connection must prove the allocation's own credentials.

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::allocation::{ClientKey, IntegrityKey, RelayId};
use super::answer::Answer;
use super::limits::later;
use super::proto::{message_type, ErrorCode, Family, Method, ATTR_CONNECTION_ID, ATTR_XOR_PEER_ADDRESS};
use super::server::{ClientOutput, Command, TurnNow, TurnServer};
use crate::wire::stun::{StunClass, StunMessage};
use crate::wire::stun_writer::StunWriter;

/// An RFC 6062 CONNECTION-ID.
pub type ConnectionId = u32;

/// A peer connection of a TCP allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConnection {
    /// The allocation's relayed socket.
    pub relay: RelayId,
    /// The peer (canonical).
    pub peer: SocketAddr,
    /// Where it is in its life.
    pub state: ConnectionState,
}

/// The life of a peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// The server is dialing the peer for a client's Connect (answered
    /// once the driver reports the outcome).
    Dialing {
        /// The Connect transaction.
        txid: [u8; 12],
    },
    /// Connected; waiting for the client's ConnectionBind until `deadline`.
    Waiting {
        /// When it is closed unless bound.
        deadline: Instant,
    },
    /// Joined to the client's data connection.
    Bound {
        /// The data connection.
        data: ClientKey,
    },
}

impl TurnServer {
    /// The peer connections (every TCP allocation's).
    pub fn connections(&self) -> impl Iterator<Item = (&ConnectionId, &PeerConnection)> {
        self.connections.iter()
    }

    /// A new, unused, non-zero connection id.
    fn new_connection_id(&mut self) -> ConnectionId {
        loop {
            let id = self.rng.u32(1..);
            if !self.connections.contains_key(&id) {
                return id;
            }
        }
    }

    /// A Connect from `client` (authenticated): the peer dialled from the
    /// relayed address when the policy, a permission and the cap allow;
    /// answered when the driver reports
    /// ([`handle_dialed`](Self::handle_dialed)).
    pub(super) fn connect(
        &mut self,
        now: Instant,
        client: ClientKey,
        msg: &StunMessage<'_>,
        txid: [u8; 12],
    ) -> Result<ClientOutput, ErrorCode> {
        let relay = self.opened(client)?;
        let alloc = &self.allocations[&relay];
        if !alloc.tcp {
            return Err(ErrorCode::BadRequest);
        }
        let peer = crate::peer::canonical(msg.xor_address(ATTR_XOR_PEER_ADDRESS).ok_or(ErrorCode::BadRequest)?);
        if Family::of(peer) != relay.family {
            return Err(ErrorCode::PeerAddressFamilyMismatch);
        }
        let (realm, connections) = (alloc.realm, alloc.connections);
        if !self.peer_allowed(realm, peer) || !alloc.permits(peer.ip(), now) {
            return Err(ErrorCode::Forbidden);
        }
        if self.connections.values().any(|c| c.relay == relay && c.peer == peer) {
            return Err(ErrorCode::ConnectionAlreadyExists);
        }
        if connections >= self.settings.limits.connections_per_allocation {
            return Err(ErrorCode::InsufficientCapacity);
        }
        let bind = self.relay_bind_address(relay).ok_or(ErrorCode::AddressFamilyNotSupported)?;
        let id = self.new_connection_id();
        self.connections.insert(id, PeerConnection { relay, peer, state: ConnectionState::Dialing { txid } });
        if let Some(a) = self.allocations.get_mut(&relay) {
            a.connections += 1;
        }
        self.commands.push_back(Command::Dial { connection: id, bind, peer });
        Ok(ClientOutput::Pending)
    }

    /// The driver connected (`true`) or could not connect the peer of a
    /// Connect: the client is answered (CONNECTION-ID, or 447).
    pub fn handle_dialed(&mut self, now: TurnNow, connection: ConnectionId, connected: bool) {
        let Some(c) = self.connections.get(&connection).copied() else {
            // Closed meanwhile (its allocation went): drop what was dialled.
            if connected {
                self.commands.push_back(Command::CloseConnection { connection });
            }
            return;
        };
        let ConnectionState::Dialing { txid } = c.state else { return };
        let Some(alloc) = self.allocations.get(&c.relay) else { return };
        let (client, key) = (alloc.client, alloc.key);
        if !connected {
            self.drop_connection(connection);
            self.stats.answered(Method::Connect, Some(ErrorCode::ConnectionFailure));
            let message = Answer::error(Method::Connect, txid, ErrorCode::ConnectionFailure, Some(key)).finish();
            self.commands.push_back(Command::Send { client, message });
            return;
        }
        self.wait_for_bind(now.instant, connection);
        let mut answer = Answer::success(Method::Connect, txid, Some(key));
        answer.writer().attribute(ATTR_CONNECTION_ID, &connection.to_be_bytes());
        self.stats.answered(Method::Connect, None);
        self.commands.push_back(Command::Send { client, message: answer.finish() });
    }

    /// A peer connected to `relay`'s listening socket: when its allocation
    /// permits the peer's address (and has room), the client is told with
    /// a ConnectionAttempt indication and the connection waits for its
    /// ConnectionBind; `None`: the driver closes it.
    pub fn handle_peer_connection(&mut self, now: TurnNow, relay: RelayId, peer: SocketAddr) -> Option<ConnectionId> {
        let peer = crate::peer::canonical(peer);
        let alloc = self.allocations.get(&relay).filter(|a| a.opened && a.tcp)?;
        let limits = self.settings.limits;
        let refused = if !alloc.permits(peer.ip(), now.instant) {
            Some(super::stats::TurnDrop::NoPermission)
        } else if alloc.connections >= limits.connections_per_allocation {
            Some(super::stats::TurnDrop::ConnectionLimit)
        } else {
            None
        };
        if let Some(reason) = refused {
            self.stats.dropped(reason);
            return None;
        }
        let client = alloc.client;
        let id = self.new_connection_id();
        let deadline = later(now.instant, limits.connection_bind_timeout);
        self.connections.insert(id, PeerConnection { relay, peer, state: ConnectionState::Waiting { deadline } });
        self.bind_deadlines.push(Reverse((deadline, id)));
        if let Some(a) = self.allocations.get_mut(&relay) {
            a.connections += 1;
        }
        let txid: [u8; 12] = std::array::from_fn(|_| self.rng.u8(..));
        let mut w = StunWriter::new(message_type(Method::ConnectionAttempt, StunClass::Indication), txid);
        w.attribute(ATTR_CONNECTION_ID, &id.to_be_bytes()).xor_address(ATTR_XOR_PEER_ADDRESS, peer);
        w.fingerprint();
        self.commands.push_back(Command::Send { client, message: w.finish() });
        Some(id)
    }

    /// A ConnectionBind on a new connection (`client` holds no allocation):
    /// authenticated with the credentials of the allocation the connection
    /// belongs to, it joins that connection.
    pub(super) fn connection_bind(
        &mut self,
        client: ClientKey,
        msg: &StunMessage<'_>,
        txid: [u8; 12],
        realm: usize,
        username: &str,
        key: IntegrityKey,
    ) -> Result<ClientOutput, ErrorCode> {
        if client.transport == super::allocation::Transport::Udp || self.by_client.contains_key(&client) {
            return Err(ErrorCode::BadRequest);
        }
        let id = msg
            .attribute(ATTR_CONNECTION_ID)
            .and_then(|a| <[u8; 4]>::try_from(a.value).ok())
            .map(u32::from_be_bytes)
            .ok_or(ErrorCode::BadRequest)?;
        let c = self.connections.get(&id).copied().ok_or(ErrorCode::BadRequest)?;
        let alloc = self.allocations.get(&c.relay).ok_or(ErrorCode::BadRequest)?;
        if alloc.realm != realm || alloc.username != username {
            // Another user's connection: as if it did not exist.
            return Err(ErrorCode::BadRequest);
        }
        if !matches!(c.state, ConnectionState::Waiting { .. }) {
            return Err(ErrorCode::BadRequest);
        }
        if let Some(conn) = self.connections.get_mut(&id) {
            conn.state = ConnectionState::Bound { data: client };
        }
        self.data_connections.insert(client, id);
        self.stats.answered(Method::ConnectionBind, None);
        let reply = Answer::success(Method::ConnectionBind, txid, Some(key)).finish();
        Ok(ClientOutput::Bind { connection: id, reply })
    }

    /// Either side of a peer connection closed (or could not be read): the
    /// server forgets it; the driver closes the other side itself.
    pub fn handle_connection_closed(&mut self, connection: ConnectionId) {
        self.drop_connection(connection);
    }

    /// `bytes` went through a bound connection (`to_peer`: client → peer):
    /// counted, and paced at the allocation's rate — the driver waits the
    /// returned time before it reads more from that side.
    pub fn handle_tcp_relayed(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        to_peer: bool,
        bytes: u64,
    ) -> Duration {
        let limits = self.settings.limits;
        let Some(alloc) = self.connections.get(&connection).and_then(|c| self.allocations.get_mut(&c.relay)) else {
            return Duration::ZERO;
        };
        let wait = alloc.rate.pace(now, bytes, limits.bytes_per_second, limits.burst_bytes);
        if to_peer {
            alloc.to_peer.0 += 1;
            alloc.to_peer.1 += bytes;
            self.stats.relayed_to_peer(bytes);
        } else {
            alloc.to_client.0 += 1;
            alloc.to_client.1 += bytes;
            self.stats.relayed_to_client(bytes);
        }
        wait
    }

    fn wait_for_bind(&mut self, now: Instant, connection: ConnectionId) {
        let deadline = later(now, self.settings.limits.connection_bind_timeout);
        if let Some(c) = self.connections.get_mut(&connection) {
            c.state = ConnectionState::Waiting { deadline };
            self.bind_deadlines.push(Reverse((deadline, connection)));
        }
    }

    /// Takes a connection out of the tables.
    fn drop_connection(&mut self, connection: ConnectionId) -> Option<PeerConnection> {
        let c = self.connections.remove(&connection)?;
        if let ConnectionState::Bound { data } = c.state {
            self.data_connections.remove(&data);
        }
        if let Some(a) = self.allocations.get_mut(&c.relay) {
            a.connections = a.connections.saturating_sub(1);
        }
        Some(c)
    }

    /// Closes every connection of `relay` (its allocation is going).
    pub(super) fn close_connections_of(&mut self, relay: RelayId) {
        let ids: Vec<ConnectionId> =
            self.connections.iter().filter(|(_, c)| c.relay == relay).map(|(id, _)| *id).collect();
        for connection in ids {
            // One still dialing is dropped too: the driver's report of it
            // then finds nothing and closes what it dialled.
            if self.drop_connection(connection).is_some() {
                self.commands.push_back(Command::CloseConnection { connection });
            }
        }
    }

    /// Closes the peer connections whose ConnectionBind did not come in time.
    pub(super) fn expire_waiting(&mut self, now: Instant) {
        while let Some(Reverse((due, connection))) = self.bind_deadlines.peek().copied() {
            if due > now {
                break;
            }
            self.bind_deadlines.pop();
            let waiting = matches!(
                self.connections.get(&connection).map(|c| c.state),
                Some(ConnectionState::Waiting { deadline }) if deadline <= now
            );
            if waiting {
                self.drop_connection(connection);
                self.stats.connections_unbound += 1;
                self.commands.push_back(Command::CloseConnection { connection });
            }
        }
    }

    /// When the next bind deadline is due.
    pub(super) fn next_bind_deadline(&self) -> Option<Instant> {
        self.bind_deadlines.peek().map(|Reverse((t, _))| *t)
    }

    /// Where `relay`'s sockets bind.
    pub fn relay_bind_address(&self, relay: RelayId) -> Option<SocketAddr> {
        let address = match relay.family {
            Family::V4 => self.settings.relay_v4,
            Family::V6 => self.settings.relay_v6,
        }?;
        Some(SocketAddr::new(address.bind, relay.port))
    }
}
