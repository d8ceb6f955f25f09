//! Applies a shard's offload decisions ([`Shard::poll_offload`]) to the
//! kernel fast path and brings the kernel's counters back
//! ([`Shard::handle_offload_stats`]). One driver per shard thread; the
//! [`FastPath`] (one program, one set of maps) is shared by every shard.
//!
//! A route the kernel cannot take (a wildcard bind, legs of different
//! address families, an unroutable destination) simply stays in userspace.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Carries, FastPath, NextHop, Route, RouteStats, MAX_ROUTES};
use crate::offload::{Offload, OffloadStats};
use crate::shard::{PortIndex, RelayPort, Shard};

/// How often every installed route's counters are read back.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

/// One shard's driver.
pub struct OffloadDriver {
    fast: Arc<Mutex<FastPath>>,
    index: PortIndex,
    /// This shard's first counters slot (shards own disjoint slot ranges).
    slot_base: u32,
    /// Installed routes: socket → counters slot.
    installed: HashMap<RelayPort, u32>,
    next_sync: Option<Instant>,
    /// This host's addresses (a destination among them is delivered by the
    /// stack), read again at every periodic sync rather than per route.
    local_addrs: Vec<std::net::IpAddr>,
    /// Map operations that failed (the route stayed in userspace).
    pub errors: u64,
}

impl std::fmt::Debug for OffloadDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffloadDriver").field("installed", &self.installed.len()).finish_non_exhaustive()
    }
}

/// A specific address (the kernel matches real packet addresses, never a
/// wildcard bind), IPv4-mapped IPv6 as IPv4.
pub(super) fn specific(a: SocketAddr) -> Option<SocketAddr> {
    let a = crate::peer::canonical(a);
    (!a.ip().is_unspecified()).then_some(a)
}

/// How a datagram the kernel forwards reaches `to`: a destination on this
/// host (one of `local_addrs`, or loopback) is delivered by the stack; any
/// other leaves through the interface the routing table picks for it (a
/// LAN leg and an internet leg may be on different interfaces).
/// `None`: unroutable (the route stays in userspace).
pub(super) fn next_hop(to: SocketAddr, local_addrs: &[std::net::IpAddr]) -> Option<NextHop> {
    if to.ip().is_loopback() || local_addrs.contains(&to.ip()) {
        return Some(NextHop::Local);
    }
    crate::io::sys::egress_ifindex(to).map(NextHop::Interface)
}

fn to_offload(s: RouteStats, now_mono: Option<Duration>) -> OffloadStats {
    OffloadStats {
        packets: s.packets,
        bytes: s.bytes,
        rate_limited: s.dropped_over_rate,
        last_ago: s.last.zip(now_mono).map(|(last, now)| now.saturating_sub(last)),
        last_rtp: s.last_rtp,
    }
}

/// CLOCK_MONOTONIC now (bpf_ktime_get_ns's clock).
pub(super) fn monotonic() -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the struct we pass.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0;
    ok.then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

impl OffloadDriver {
    /// A driver for a shard whose sockets are numbered by `index`, using
    /// counters slots `slot_base .. slot_base + index.len()`.
    pub fn new(fast: Arc<Mutex<FastPath>>, index: PortIndex, slot_base: u32) -> Self {
        Self {
            fast,
            index,
            slot_base,
            installed: HashMap::new(),
            next_sync: None,
            local_addrs: crate::io::sys::local_addresses().unwrap_or_default(),
            errors: 0,
        }
    }

    fn slot(&self, port: RelayPort) -> Option<u32> {
        let i = u32::try_from(self.index.index(port)?).ok()?;
        let slot = self.slot_base.checked_add(i)?;
        (slot < MAX_ROUTES).then_some(slot)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FastPath> {
        self.fast.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads `port`'s counters into the shard.
    fn sync(&mut self, shard: &mut Shard, now: Instant, port: RelayPort) {
        let Some(&slot) = self.installed.get(&port) else { return };
        let stats = self.lock().stats(slot);
        match stats {
            Ok(s) => shard.handle_offload_stats(now, port, to_offload(s, monotonic())),
            Err(_) => self.errors += 1,
        }
    }

    /// Takes every pending decision of `shard`, and every [`SYNC_EVERY`]
    /// reads all routes' counters back.
    pub fn run(&mut self, shard: &mut Shard, now: Instant) {
        while let Some(action) = shard.poll_offload() {
            match action {
                Offload::Install(r) => {
                    let (Some(slot), Some(local), Some(via)) = (
                        self.slot(r.local),
                        self.index.bind_addr(r.local).and_then(specific),
                        self.index.bind_addr(r.via).and_then(specific),
                    ) else {
                        continue;
                    };
                    let (Some(from), Some(to)) = (specific(r.from), specific(r.to)) else { continue };
                    // The kernel does not translate between families.
                    if [from, via, to].iter().any(|a| a.is_ipv4() != local.is_ipv4()) {
                        continue;
                    }
                    let Some(next_hop) = next_hop(to, &self.local_addrs) else { continue };
                    let route = Route {
                        local,
                        from,
                        via,
                        to,
                        max_pps: r.max_pps.unwrap_or(0),
                        max_bytes_per_sec: r.max_bytes_per_sec.unwrap_or(0),
                        slot,
                        next_hop,
                        carries: Carries { rtp: r.rtp, rtcp: r.rtcp },
                    };
                    let result = self.lock().install(&route);
                    match result {
                        Ok(()) => {
                            self.installed.insert(r.local, slot);
                        }
                        Err(_) => self.errors += 1,
                    }
                }
                Offload::Refresh(port) => self.sync(shard, now, port),
                Offload::Remove(port) => {
                    let Some(slot) = self.installed.remove(&port) else {
                        // Never installed (the kernel could not take it):
                        // nothing was forwarded; the shard forgets it.
                        shard.handle_offload_stats(now, port, OffloadStats::default());
                        continue;
                    };
                    let Some(local) = self.index.bind_addr(port).and_then(specific) else { continue };
                    let result = {
                        let mut fast = self.lock();
                        let stats = fast.stats(slot);
                        fast.remove(local).and(stats)
                    };
                    match result {
                        Ok(s) => shard.handle_offload_stats(now, port, to_offload(s, monotonic())),
                        Err(_) => self.errors += 1,
                    }
                }
            }
        }
        if self.next_sync.is_none_or(|t| now >= t) {
            self.next_sync = Some(crate::session::instant_after(now, SYNC_EVERY));
            // The program forwards only while the relay lives.
            if self.lock().keep_alive().is_err() {
                self.errors += 1;
            }
            if let Ok(a) = crate::io::sys::local_addresses() {
                self.local_addrs = a;
            }
            let ports: Vec<RelayPort> = self.installed.keys().copied().collect();
            for p in ports {
                self.sync(shard, now, p);
            }
        }
    }

    /// Reads the counters of `id`'s routes before a command about it (a
    /// query, a release) so its figures include what the kernel forwarded.
    pub fn before_command(&mut self, shard: &mut Shard, now: Instant, cmd: &crate::shard::Command) {
        let id = match cmd {
            crate::shard::Command::Query { id } | crate::shard::Command::Release { id } => *id,
            _ => return,
        };
        for p in shard.routes_of(id) {
            self.sync(shard, now, p);
        }
    }

    /// Routes installed now.
    pub fn installed(&self) -> usize {
        self.installed.len()
    }
}
