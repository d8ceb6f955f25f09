//! Caps on connections that have not proven anything yet (TLS handshake and
//! `hello` on the control listener, ClientHello peek on tunnel listeners,
//! data connections before their ticket): at most `per_source` from one
//! source and `total` overall, so one host cannot exhaust the relay's
//! sockets with half-open connections.
//!
//! Sources are counted by [`source_prefix`]: an IPv4 address or an IPv6
//! /64, so a host with a /64 cannot open 2⁶⁴ × `per_source` connections.
//! A share of `total` ([`RESERVED_PERCENT`]) is kept for *known* sources —
//! ones that proved themselves recently by something a stranger cannot
//! produce cheaply (a connector that logged in, an endpoint whose tunnel
//! carried its PBX's answer): a handful of strangers filling the caps
//! cannot lock the relay's real users out. The reserve has a per-source
//! share of its own ([`RESERVE_SOURCE_SHARE_PERCENT`]), so one known source
//! cannot take all of it either.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::peer::source_prefix;

/// Share of a total cap only known sources may use, percent.
pub const RESERVED_PERCENT: usize = 25;

/// Share of the reserve one known source may hold, percent (at least one
/// place).
pub const RESERVE_SOURCE_SHARE_PERCENT: usize = 25;

/// Why a connection was refused at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapRejection {
    /// The source already has `per_source` connections pending.
    PerIp,
    /// The total (for a stranger: the unreserved part of it) is reached.
    Total,
}

impl CapRejection {
    /// Stable reason label for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CapRejection::PerIp => "per_ip_cap",
            CapRejection::Total => "total_cap",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
    /// Reserved places held, per source.
    reserved_by_source: HashMap<IpAddr, usize>,
}

/// Counts pending connections; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnCaps {
    per_source: usize,
    total: usize,
    reserved: usize,
    reserved_per_source: usize,
    counts: Arc<Mutex<Counts>>,
}

/// Holds one pending connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct CapGuard {
    source: IpAddr,
    /// It holds a place of the reserve.
    reserved: bool,
    counts: Arc<Mutex<Counts>>,
}

impl ConnCaps {
    /// Caps of `per_source` per source and `total` overall, of which
    /// [`RESERVED_PERCENT`] is kept for known sources.
    pub fn new(per_source: usize, total: usize) -> Self {
        let reserved = total * RESERVED_PERCENT / 100;
        let reserved_per_source = (reserved * RESERVE_SOURCE_SHARE_PERCENT / 100).max(1);
        Self { per_source, total, reserved, reserved_per_source, counts: Arc::default() }
    }

    /// Takes a place for a connection from `ip` (`known`: a source that
    /// proved itself recently, which may use the reserved share), or says
    /// why not.
    pub fn try_acquire(&self, ip: IpAddr, known: bool) -> Result<CapGuard, CapRejection> {
        let source = source_prefix(ip);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        // Beyond the unreserved part, only known sources, each up to its
        // share of the reserve.
        let reserved = c.total >= self.total - self.reserved;
        if reserved
            && (!known
                || c.total >= self.total
                || c.reserved_by_source.get(&source).is_some_and(|n| *n >= self.reserved_per_source))
        {
            return Err(CapRejection::Total);
        }
        let n = c.per_source.entry(source).or_default();
        if *n >= self.per_source {
            return Err(CapRejection::PerIp);
        }
        *n += 1;
        c.total += 1;
        if reserved {
            *c.reserved_by_source.entry(source).or_default() += 1;
        }
        Ok(CapGuard { source, reserved, counts: self.counts.clone() })
    }

    /// Connections pending now.
    pub fn pending(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for CapGuard {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = &mut *c;
        c.total = c.total.saturating_sub(1);
        let release = |counts: &mut HashMap<IpAddr, usize>| {
            if let Some(n) = counts.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&self.source);
                }
            }
        };
        release(&mut c.per_source);
        if self.reserved {
            release(&mut c.reserved_by_source);
        }
    }
}

/// Sources (by [`source_prefix`]) that proved themselves recently: bounded
/// in number (the oldest is forgotten) and in time.
#[derive(Debug)]
pub struct KnownSources {
    ttl: Duration,
    max: usize,
    seen: Mutex<HashMap<IpAddr, Instant>>,
}

impl KnownSources {
    /// Remembers up to `max` sources for `ttl` each.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self { ttl, max: max.max(1), seen: Mutex::default() }
    }

    /// `ip` proved itself at `now`.
    pub fn remember(&self, now: Instant, ip: IpAddr) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let source = source_prefix(ip);
        if !seen.contains_key(&source) && seen.len() >= self.max {
            let ttl = self.ttl;
            seen.retain(|_, t| now.saturating_duration_since(*t) < ttl);
            if seen.len() >= self.max {
                if let Some(oldest) = seen.iter().min_by_key(|(_, t)| **t).map(|(ip, _)| *ip) {
                    seen.remove(&oldest);
                }
            }
        }
        seen.insert(source, now);
    }

    /// Whether `ip` proved itself within the last `ttl` at `now`.
    pub fn knows(&self, now: Instant, ip: IpAddr) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&source_prefix(ip)).is_some_and(|t| now.saturating_duration_since(*t) < self.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn per_source_and_total_caps_hold_and_places_come_back() {
        let caps = ConnCaps::new(2, 4); // 1 place reserved
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        let g1 = caps.try_acquire(a, false).expect("first");
        let _g2 = caps.try_acquire(a, false).expect("second");
        assert_eq!(caps.try_acquire(a, false).expect_err("third from a"), CapRejection::PerIp);
        let _g3 = caps.try_acquire(b, false).expect("b");
        assert_eq!(caps.try_acquire(c, false).expect_err("strangers stop at 3"), CapRejection::Total);
        let _g4 = caps.try_acquire(c, true).expect("a known source takes the reserved place");
        assert_eq!(caps.try_acquire(b, true).expect_err("total"), CapRejection::Total);
        drop(g1);
        assert_eq!(caps.pending(), 3);
        assert_eq!(caps.try_acquire(b, false).expect_err("still at the strangers' share"), CapRejection::Total);
        let _g5 = caps.try_acquire(b, true).expect("freed place");
    }

    #[test]
    fn one_known_source_holds_at_most_its_share_of_the_reserve() {
        let caps = ConnCaps::new(4, 16); // 4 reserved, 1 per known source
        let mut held: Vec<CapGuard> = (1..=3u8)
            .flat_map(|n| (0..4).map(move |_| ip(&format!("192.0.2.{n}"))))
            .map(|a| caps.try_acquire(a, false).expect("unreserved"))
            .collect();
        assert_eq!(caps.try_acquire(ip("192.0.2.9"), false).expect_err("strangers"), CapRejection::Total);
        let (a, b) = (ip("198.51.100.1"), ip("198.51.100.2"));
        held.push(caps.try_acquire(a, true).expect("a's share of the reserve"));
        assert_eq!(caps.try_acquire(a, true).expect_err("a's share is one"), CapRejection::Total);
        held.push(caps.try_acquire(b, true).expect("b's share"));
        // Freed reserved places are the source's again.
        held.pop();
        held.push(caps.try_acquire(b, true).expect("b again"));
        assert_eq!(caps.pending(), 14);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let caps = ConnCaps::new(2, 100);
        let _a = caps.try_acquire(ip("2001:db8:1:2::1"), false).expect("1");
        let _b = caps.try_acquire(ip("2001:db8:1:2::ffff"), false).expect("2");
        assert_eq!(caps.try_acquire(ip("2001:db8:1:2:abcd::9"), false).expect_err("same /64"), CapRejection::PerIp);
        assert!(caps.try_acquire(ip("2001:db8:1:3::1"), false).is_ok(), "another /64");
    }

    #[test]
    fn known_sources_are_bounded_and_expire() {
        let t0 = Instant::now();
        let k = KnownSources::new(Duration::from_secs(60), 3);
        k.remember(t0, ip("198.51.100.1"));
        assert!(k.knows(t0, ip("198.51.100.1")));
        assert!(k.knows(t0, ip("::ffff:198.51.100.1")), "mapped IPv4 is the same source");
        assert!(!k.knows(t0 + Duration::from_secs(60), ip("198.51.100.1")));
        for i in 0..10 {
            k.remember(t0 + Duration::from_secs(i), IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32)));
        }
        assert_eq!(k.seen.lock().expect("lock").len(), 3);
    }
}
