//! Applies a TURN server's offload decisions ([`Command::OffloadChannel`],
//! [`Command::EndOffload`]) to the kernel fast path, and brings back what
//! the kernel relayed ([`TurnServer::handle_offload_counts`]). One driver
//! per TURN service; the [`FastPath`] is the relay's, shared with its
//! shards.
//!
//! A channel the kernel cannot take (a relay address bound to a wildcard,
//! addresses of two families, an unroutable destination, full maps)
//! simply stays in userspace. A wildcard listener's routes name the address
//! the client sends to.
//!
//! [`Command::OffloadChannel`]: crate::turn::Command::OffloadChannel
//! [`Command::EndOffload`]: crate::turn::Command::EndOffload
//! [`TurnServer::handle_offload_counts`]: crate::turn::TurnServer::handle_offload_counts

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::driver::{next_hop, specific};
use super::{ChannelRoute, FastPath, TurnBucket, TurnCounters, MAX_TURN_SLOTS};
use crate::turn::offload::{ChannelOffload, OffloadCounts};
use crate::turn::RelayId;

/// An allocation the kernel relays for.
#[derive(Debug)]
struct Held {
    slot: u32,
    /// Every route installed for it (a channel re-bound to another peer
    /// leaves its old peer's route, past its deadline, until the end).
    routes: Vec<ChannelRoute>,
    /// Counters already reported to the server.
    reported: TurnCounters,
    /// The rate and burst its bucket has.
    rate: (u64, u64),
}

/// The TURN service's driver of the kernel fast path.
pub struct TurnOffloadDriver {
    fast: Arc<Mutex<FastPath>>,
    /// UDP listener `i`'s address (`ClientKey::listener`).
    listeners: Vec<SocketAddr>,
    held: HashMap<RelayId, Held>,
    free_slots: Vec<u32>,
    next_slot: u32,
    /// This host's addresses (a destination among them is delivered by the
    /// stack), read again at every sync.
    local_addrs: Vec<IpAddr>,
    /// Map operations that failed (the channel stayed in userspace).
    pub errors: u64,
}

impl std::fmt::Debug for TurnOffloadDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnOffloadDriver").field("allocations", &self.held.len()).finish_non_exhaustive()
    }
}

fn to_counts(c: TurnCounters) -> OffloadCounts {
    OffloadCounts {
        to_peer_packets: c.to_peer_packets,
        to_peer_bytes: c.to_peer_bytes,
        to_client_packets: c.to_client_packets,
        to_client_bytes: c.to_client_bytes,
        rate_limited: c.over_rate,
    }
}

impl TurnOffloadDriver {
    /// A driver for a service whose UDP listeners are bound to `listeners`
    /// (by index). Attaches the fast path to the interfaces holding them
    /// and `relay_ips` (loopback only when the fast path is on it already:
    /// the relay chose it explicitly).
    pub fn new(fast: Arc<Mutex<FastPath>>, listeners: Vec<SocketAddr>, relay_ips: &[IpAddr]) -> Self {
        {
            let mut f = fast.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let on_lo = f.interfaces().iter().any(|i| i == "lo");
            let ips = listeners.iter().map(SocketAddr::ip).chain(relay_ips.iter().copied());
            for ip in ips.filter(|ip| !ip.is_unspecified()) {
                if let Ok(Some(name)) = crate::io::sys::interface_of(ip) {
                    if name != "lo" || on_lo {
                        if let Err(e) = f.attach(&name) {
                            tracing::warn!(interface = %name, error = %e, "TURN: kernel fast path not attached");
                        }
                    }
                }
            }
        }
        Self {
            fast,
            listeners,
            held: HashMap::new(),
            free_slots: Vec::new(),
            next_slot: 0,
            local_addrs: crate::io::sys::local_addresses().unwrap_or_default(),
            errors: 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FastPath> {
        self.fast.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take_slot(&mut self) -> Option<u32> {
        if let Some(s) = self.free_slots.pop() {
            return Some(s);
        }
        (self.next_slot < MAX_TURN_SLOTS).then(|| {
            self.next_slot += 1;
            self.next_slot - 1
        })
    }

    /// Installs or moves a channel's routes (`relayed`: the relayed socket
    /// address the channel's peer is reached from; `local`: the address the
    /// client sends to, when its listener is bound to a wildcard address).
    /// Returns the budget handed over when the kernel could not take the
    /// channel (to give back to the server's bucket), else `None` (also for
    /// a channel announced without a budget for an allocation the kernel
    /// holds nothing of: refused, as its budget is the server's).
    pub fn handle_offload(
        &mut self,
        o: &ChannelOffload,
        relayed: SocketAddr,
        local: Option<IpAddr>,
        now: Instant,
    ) -> Option<u64> {
        let Some(mono) = super::driver::monotonic() else { return o.budget };
        let until = mono.saturating_add(o.until.saturating_duration_since(now));
        let listener = self
            .listeners
            .get(usize::from(o.client.listener))
            .map(|l| match local {
                Some(ip) if l.ip().is_unspecified() => SocketAddr::new(ip, l.port()),
                _ => *l,
            })
            .and_then(specific);
        let (Some(listener), Some(relayed), Some(client), Some(peer)) =
            (listener, specific(relayed), specific(o.client.source), specific(o.peer))
        else {
            return o.budget;
        };
        // The kernel does not translate between families.
        if [listener, relayed, peer].iter().any(|a| a.is_ipv4() != client.is_ipv4()) {
            return o.budget;
        }
        let (Some(to_peer), Some(to_client)) = (next_hop(peer, &self.local_addrs), next_hop(client, &self.local_addrs))
        else {
            return o.budget;
        };
        let fresh = !self.held.contains_key(&o.relay);
        if fresh {
            // The allocation's budget went with an announcement this
            // driver refused (and gave back): no slot is opened without
            // it, or the kernel would relay at a rate of its own beside
            // the server's. The server hands it over again next time.
            let budget = o.budget?;
            let Some(slot) = self.take_slot() else { return Some(budget) };
            // The slot starts with the server's budget, nothing more.
            let bucket = TurnBucket { tokens: budget, bytes_per_second: o.bytes_per_second, burst: o.burst_bytes };
            if self.lock().start_turn_slot(slot, bucket).is_err() {
                self.errors += 1;
                self.free_slots.push(slot);
                return Some(budget);
            }
            let held = Held {
                slot,
                routes: Vec::new(),
                reported: TurnCounters::default(),
                rate: (o.bytes_per_second, o.burst_bytes),
            };
            self.held.insert(o.relay, held);
        }
        let Some(held) = self.held.get(&o.relay) else { return o.budget };
        let slot = held.slot;
        if held.rate != (o.bytes_per_second, o.burst_bytes) {
            let set = self.lock().set_turn_rate(slot, o.bytes_per_second, o.burst_bytes);
            match set {
                Ok(()) => {
                    if let Some(h) = self.held.get_mut(&o.relay) {
                        h.rate = (o.bytes_per_second, o.burst_bytes);
                    }
                }
                Err(_) => self.errors += 1,
            }
        }
        let route =
            ChannelRoute { client, listener, channel: o.channel, relayed, peer, until, slot, to_peer, to_client };
        let installed = self.lock().install_channel(&route);
        match installed {
            Ok(()) => {
                if let Some(h) = self.held.get_mut(&o.relay) {
                    h.routes.retain(|r| !(r.channel == route.channel && r.peer == route.peer));
                    h.routes.push(route);
                }
                None
            }
            Err(_) => {
                self.errors += 1;
                // The slot holds the budget; the server gets it back only
                // when nothing was installed for the allocation.
                if fresh {
                    if let Some(h) = self.held.remove(&o.relay) {
                        self.free_slots.push(h.slot);
                    }
                    return o.budget;
                }
                None
            }
        }
    }

    /// `relay`'s allocation ended: its routes go, and what the kernel
    /// relayed since the last report is returned.
    pub fn handle_end(&mut self, relay: RelayId) -> Option<OffloadCounts> {
        let held = self.held.remove(&relay)?;
        let mut fast = self.fast.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for r in &held.routes {
            if fast.remove_channel(r).is_err() {
                self.errors += 1;
            }
        }
        let counts = fast.turn_counters(held.slot);
        drop(fast);
        self.free_slots.push(held.slot);
        match counts {
            Ok(c) => Some(to_counts(c.since(&held.reported))),
            Err(_) => {
                self.errors += 1;
                None
            }
        }
    }

    /// What the kernel relayed since the last call, per allocation (the
    /// service calls it every [`super::SYNC_EVERY`]); renews the program's
    /// life too.
    pub fn poll_counts(&mut self) -> Vec<(RelayId, OffloadCounts)> {
        if let Ok(a) = crate::io::sys::local_addresses() {
            self.local_addrs = a;
        }
        let mut fast = self.fast.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if fast.keep_alive().is_err() {
            self.errors += 1;
        }
        let mut out = Vec::new();
        for (relay, held) in &mut self.held {
            match fast.turn_counters(held.slot) {
                Ok(c) => {
                    let delta = c.since(&held.reported);
                    held.reported = c;
                    if delta != TurnCounters::default() {
                        out.push((*relay, to_counts(delta)));
                    }
                }
                Err(_) => self.errors += 1,
            }
        }
        out
    }

    /// Removes every route (the service stops: nothing it decided may
    /// relay without it).
    pub fn end_all(&mut self) {
        let relays: Vec<RelayId> = self.held.keys().copied().collect();
        for relay in relays {
            let _ = self.handle_end(relay);
        }
    }

    /// Allocations holding kernel routes now.
    pub fn allocations(&self) -> usize {
        self.held.len()
    }
}
