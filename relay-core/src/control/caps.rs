//! Caps on connections that have not proven anything yet (TLS handshake and
//! `hello` on the control listener, ClientHello peek on tunnel listeners):
//! at most `per_ip` from one source address and `total` overall, so one
//! host cannot exhaust the relay's sockets with half-open connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was refused at accept time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapRejection {
    /// The source already has `per_ip` connections pending.
    PerIp,
    /// `total` connections are pending.
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
    per_ip: HashMap<IpAddr, usize>,
}

/// Counts pending connections; cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnCaps {
    per_ip: usize,
    total: usize,
    counts: Arc<Mutex<Counts>>,
}

/// Holds one pending connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct CapGuard {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl ConnCaps {
    /// Caps of `per_ip` per source address and `total` overall.
    pub fn new(per_ip: usize, total: usize) -> Self {
        Self { per_ip, total, counts: Arc::default() }
    }

    /// Takes a place for a connection from `ip`, or says why not.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<CapGuard, CapRejection> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.total {
            return Err(CapRejection::Total);
        }
        let n = c.per_ip.entry(ip).or_default();
        if *n >= self.per_ip {
            return Err(CapRejection::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(CapGuard { ip, counts: self.counts.clone() })
    }

    /// Connections pending now.
    pub fn pending(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for CapGuard {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_caps_hold_and_places_come_back() {
        let caps = ConnCaps::new(2, 3);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let g1 = caps.try_acquire(a).expect("first");
        let _g2 = caps.try_acquire(a).expect("second");
        assert_eq!(caps.try_acquire(a).expect_err("third from a"), CapRejection::PerIp);
        let _g3 = caps.try_acquire(b).expect("b");
        assert_eq!(caps.try_acquire(b).expect_err("total"), CapRejection::Total);
        drop(g1);
        assert_eq!(caps.pending(), 2);
        let _g4 = caps.try_acquire(b).expect("freed place");
        assert_eq!(caps.try_acquire(a).expect_err("total again"), CapRejection::Total);
    }
}
