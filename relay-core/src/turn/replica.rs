//! Allocations as a cluster replicates them: a plain copy of what a UDP
//! allocation is (its client, relayed address, credentials' key, what is
//! left of its lifetime, permissions and channels), a journal of which
//! changed or ended since the last pull, and the restore a standby does
//! when it takes over — the same relayed port, so peers and the client
//! keep their addresses.
//!
//! Only allocations of UDP clients are replicated: a TCP or TLS client's
//! connection ends with the node that held it (and its allocation with
//! it, RFC 8656 §3.1), and so do TCP allocations (RFC 6062).
//!
//! A standby (or an active fenced from Redis) answers no request
//! ([`TurnServer::set_standby`]): what it would allocate or change could
//! not be replicated. What existing allocations relay is not gated.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::allocation::{Allocation, ClientKey, IntegrityKey, RelayId, SecondRelay, Transport};
use super::limits::{later, RateBucket};
use super::proto::Family;
use super::server::{Command, TurnServer};

/// One allocation as replicated (lifetimes as what is left of them when
/// it was copied).
#[derive(Clone, PartialEq, Eq)]
pub struct AllocationState {
    /// Its client (UDP).
    pub client: ClientKey,
    /// Its relayed socket.
    pub relay: RelayId,
    /// The relayed address clients are told.
    pub relayed: SocketAddr,
    /// A dual allocation's second relayed address.
    pub second: Option<SecondState>,
    /// Its realm's name.
    pub realm: String,
    /// The tenant it counts against (its realm's).
    pub tenant: String,
    /// Username of its credentials.
    pub username: String,
    /// The key its requests are checked with (a secret: the cluster seals
    /// it; `Debug` hides it).
    pub key: IntegrityKey,
    /// The Allocate transaction it answered.
    pub allocate_txid: [u8; 12],
    /// What is left of its lifetime.
    pub lifetime: Duration,
    /// Permissions: peer IP and what is left of each.
    pub permissions: Vec<(IpAddr, Duration)>,
    /// Channels: number, peer and what is left of each.
    pub channels: Vec<(u16, SocketAddr, Duration)>,
}

impl std::fmt::Debug for AllocationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocationState")
            .field("client", &self.client)
            .field("relay", &self.relay)
            .field("relayed", &self.relayed)
            .field("second", &self.second)
            .field("realm", &self.realm)
            .field("tenant", &self.tenant)
            .field("username", &self.username)
            .field("lifetime", &self.lifetime)
            .field("permissions", &self.permissions.len())
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

/// A dual allocation's second relayed address as replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondState {
    /// Its relayed socket.
    pub relay: RelayId,
    /// The relayed address clients are told.
    pub relayed: SocketAddr,
    /// What is left of its lifetime.
    pub lifetime: Duration,
}

impl AllocationState {
    /// Its record id: the relayed port and family (`v4-20001`), unique
    /// among a server's live allocations.
    pub fn id(&self) -> String {
        relay_record_id(self.relay)
    }

    /// The same allocation `elapsed` later (lifetimes shortened; what has
    /// run out is gone).
    pub fn aged(mut self, elapsed: Duration) -> Self {
        self.lifetime = self.lifetime.saturating_sub(elapsed);
        if let Some(second) = self.second.as_mut() {
            second.lifetime = second.lifetime.saturating_sub(elapsed);
        }
        match self.second {
            Some(second) if second.lifetime.is_zero() => self.forget_family(second.relay.family),
            Some(second) if self.lifetime.is_zero() => {
                // Its first address ran out, its second goes on as its first.
                self.forget_family(self.relay.family);
                (self.relay, self.relayed, self.lifetime) = (second.relay, second.relayed, second.lifetime);
            }
            _ => {}
        }
        self.permissions.retain_mut(|(_, left)| {
            *left = left.saturating_sub(elapsed);
            !left.is_zero()
        });
        self.channels.retain_mut(|(_, _, left)| {
            *left = left.saturating_sub(elapsed);
            !left.is_zero()
        });
        self
    }

    /// Drops its relayed address of `family` with the permissions and
    /// channels of that family (the second must be the other one then).
    fn forget_family(&mut self, family: Family) {
        self.second = None;
        let other = |ip: IpAddr| Family::of_ip(ip) != family;
        self.permissions.retain(|(ip, _)| other(*ip));
        self.channels.retain(|(_, peer, _)| other(peer.ip()));
    }
}

/// The record id of `relay` (see [`AllocationState::id`]).
pub fn relay_record_id(relay: RelayId) -> String {
    let family = match relay.family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    };
    format!("{family}-{}", relay.port)
}

/// Allocations changed and ended since the last pull.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AllocationChanges {
    /// Changed or new, as they are now.
    pub changed: Vec<AllocationState>,
    /// Record ids of those that ended.
    pub ended: Vec<String>,
}

/// Why an allocation was not restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RestoreRefusal {
    /// Not a UDP client's, or its lifetime has run out.
    #[error("not a live UDP allocation")]
    NotReplicable,
    /// No realm of that name (and tenant) here.
    #[error("unknown realm")]
    UnknownRealm,
    /// Its relayed port is outside this server's range or taken.
    #[error("relayed port unavailable")]
    PortUnavailable,
    /// Its client already holds an allocation here.
    #[error("client already has an allocation")]
    ClientTaken,
    /// Its tenant's quota is full.
    #[error("tenant quota full")]
    Quota,
}

/// The journal: relayed sockets whose allocation changed or ended.
#[derive(Debug, Default)]
pub(super) struct Journal {
    changed: HashSet<RelayId>,
    ended: HashSet<RelayId>,
}

impl TurnServer {
    /// Answers no request while `true` (a cluster standby, or an active
    /// fenced from Redis): requests are dropped, counted as `standby`;
    /// ChannelData and Send indications of existing allocations still
    /// relay.
    pub fn set_standby(&mut self, standby: bool) {
        self.standby = standby;
    }

    /// Whether it serves nothing now.
    pub fn is_standby(&self) -> bool {
        self.standby
    }

    /// Notes that `relay`'s allocation changed (replicated ones only).
    pub(super) fn journal_changed(&mut self, relay: RelayId) {
        if self.allocations.get(&relay).is_some_and(replicable) {
            self.journal.ended.remove(&relay);
            self.journal.changed.insert(relay);
        }
    }

    /// Notes that `alloc` ended.
    pub(super) fn journal_ended(&mut self, alloc: &Allocation) {
        if replicable(alloc) {
            self.journal.changed.remove(&alloc.relay);
            self.journal.ended.insert(alloc.relay);
        }
    }

    /// What changed and ended since the last call, at `now`.
    pub fn take_changes(&mut self, now: Instant) -> AllocationChanges {
        let changed = std::mem::take(&mut self.journal.changed);
        let ended = std::mem::take(&mut self.journal.ended);
        AllocationChanges {
            changed: changed.into_iter().filter_map(|r| self.export_one(r, now)).collect(),
            ended: ended.into_iter().map(relay_record_id).collect(),
        }
    }

    /// Every replicated allocation as it is at `now`.
    pub fn export(&self, now: Instant) -> Vec<AllocationState> {
        self.allocations.keys().filter_map(|r| self.export_one(*r, now)).collect()
    }

    fn export_one(&self, relay: RelayId, now: Instant) -> Option<AllocationState> {
        let a = self.allocations.get(&relay).filter(|a| replicable(a))?;
        let left = |t: Instant| t.saturating_duration_since(now);
        Some(AllocationState {
            client: a.client,
            relay: a.relay,
            relayed: a.relayed,
            second: a.second.as_ref().filter(|s| s.opened).map(|s| SecondState {
                relay: s.relay,
                relayed: s.relayed,
                lifetime: left(s.expires),
            }),
            realm: self.settings.realms.get(a.realm)?.name.clone(),
            tenant: self.settings.realms.get(a.realm)?.tenant.clone(),
            username: a.username.clone(),
            key: a.key,
            allocate_txid: a.allocate_txid,
            lifetime: left(a.expires),
            permissions: a.permissions(now).map(|(ip, t)| (ip, left(t))).collect(),
            channels: a.channels(now).map(|c| (c.number, c.peer, left(c.expires))).collect(),
        })
    }

    /// Takes `state` over at `now` (a standby's takeover): the same port
    /// (both, for a dual allocation) is opened again
    /// ([`Command::OpenRelay`]), and the allocation serves once it is;
    /// nothing is sent to its client.
    pub fn restore(&mut self, now: Instant, state: AllocationState) -> Result<(), RestoreRefusal> {
        let client = ClientKey { source: crate::peer::canonical(state.client.source), ..state.client };
        if client.transport != Transport::Udp || state.lifetime.is_zero() {
            return Err(RestoreRefusal::NotReplicable);
        }
        let realm = self
            .settings
            .realms
            .iter()
            .position(|r| r.name == state.realm && r.tenant == state.tenant)
            .ok_or(RestoreRefusal::UnknownRealm)?;
        if self.by_client.contains_key(&client) {
            return Err(RestoreRefusal::ClientTaken);
        }
        let bind = self.relay_bind_address(state.relay).ok_or(RestoreRefusal::PortUnavailable)?;
        let second_bind = match state.second {
            Some(second) => {
                let usable = second.relay.family != state.relay.family && !second.lifetime.is_zero();
                Some(self.relay_bind_address(second.relay).filter(|_| usable).ok_or(RestoreRefusal::PortUnavailable)?)
            }
            None => None,
        };
        let ports = if state.second.is_some() { 2 } else { 1 };
        let mut quotas = Vec::new();
        if let Some(q) = &self.quotas {
            for _ in 0..ports {
                quotas.push(q.acquire(&self.settings.realms[realm].tenant, 1).map_err(|_| RestoreRefusal::Quota)?);
            }
        }
        let mut quotas = quotas.into_iter();
        if !self.pool(state.relay.family).take_exact(state.relay.port) {
            return Err(RestoreRefusal::PortUnavailable);
        }
        if let Some(SecondState { relay: second, .. }) = state.second {
            if !self.pool(second.family).take_exact(second.port) {
                self.pool(state.relay.family).release(state.relay.port);
                return Err(RestoreRefusal::PortUnavailable);
            }
        }
        let quota = quotas.next();
        let limits = self.settings.limits;
        // Bounded as if the client had asked: a record cannot make an
        // allocation, permission or channel outlive what this server grants.
        let expires = later(now, state.lifetime.min(limits.max_lifetime));
        let mut alloc = Allocation::new(
            client,
            state.relay,
            state.relayed,
            realm,
            state.username,
            state.key,
            expires,
            state.allocate_txid,
            RateBucket::full(limits.burst_bytes),
            quota,
        );
        alloc.restored = true;
        if let Some(second) = state.second {
            let expires = later(now, second.lifetime.min(limits.max_lifetime));
            alloc.second = Some(SecondRelay::new(second.relay, second.relayed, expires, quotas.next()));
            self.second_relays.insert(second.relay, state.relay);
            self.expiries.push(std::cmp::Reverse((expires, second.relay)));
        }
        for (ip, left) in state.permissions {
            let until = later(now, left.min(limits.permission_lifetime));
            alloc.permit(&[ip], now, until, limits.permissions_per_allocation);
        }
        for (number, peer, left) in state.channels {
            let until = later(now, left.min(limits.channel_lifetime));
            let _ = alloc.bind_channel(number, peer, now, until, limits.channels_per_allocation);
        }
        *self.per_user.entry((realm, alloc.username.clone())).or_default() += 1;
        self.by_client.insert(client, state.relay);
        self.allocations.insert(state.relay, alloc);
        self.expiries.push(std::cmp::Reverse((expires, state.relay)));
        self.commands.push_back(Command::OpenRelay { relay: state.relay, bind });
        if let (Some(SecondState { relay, .. }), Some(bind)) = (state.second, second_bind) {
            // A dual allocation's second socket is reopened too.
            self.commands.push_back(Command::OpenRelay { relay, bind });
        }
        Ok(())
    }

    /// Forgets every allocation at `now` (a node stepping down): their
    /// sockets are closed, nothing is journaled.
    pub fn forget_all(&mut self, now: Instant) {
        let relays: Vec<RelayId> = self.allocations.keys().copied().collect();
        for relay in relays {
            self.forget(now, relay);
        }
        self.journal = Journal::default();
    }
}

/// Whether an allocation is replicated: a UDP client's UDP allocation.
fn replicable(a: &Allocation) -> bool {
    a.client.transport == Transport::Udp && !a.tcp
}
