//! Per-tenant quotas shared by all shards: sessions and relay ports.
//!
//! A [`QuotaPermit`] is taken by the control plane before a session is
//! allocated and travels with the session into its shard; dropping the
//! session (release, timeout, shutdown) drops the permit and returns its
//! session and ports. The hot path never touches this.
//!
//! Every tenant — the ng protocol's included — is limited by default to a
//! share of the relay's ports ([`DEFAULT_PORT_SHARE_PERCENT`]), so no tenant
//! can take every port from the others; a session limit may be set on top.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Share of the relay's ports one tenant may hold by default.
pub const DEFAULT_PORT_SHARE_PERCENT: u8 = 50;

/// A tenant's limits. `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TenantLimit {
    /// Concurrent sessions.
    pub sessions: Option<usize>,
    /// Relay ports held by its sessions (2 to 4 per session).
    pub ports: Option<usize>,
}

/// Quota table: a default limit and per-tenant overrides.
#[derive(Debug, Default)]
pub struct TenantQuotas {
    default_limit: Mutex<TenantLimit>,
    overrides: Mutex<HashMap<String, TenantLimit>>,
    in_use: Mutex<InUse>,
}

/// What one tenant holds now.
#[derive(Debug, Default)]
struct Held {
    sessions: AtomicUsize,
    ports: AtomicUsize,
}

/// Per-tenant counters. A tenant's entry is forgotten once it holds no
/// session (tenant ids come from requests, so the table must not grow with
/// every id ever seen); pruning is amortized.
#[derive(Debug, Default)]
struct InUse {
    counters: HashMap<String, Arc<Held>>,
    prune_at: usize,
}

const MIN_PRUNE_AT: usize = 1024;

/// A session (and its ports) held against a tenant's quota; released on drop.
#[derive(Debug)]
pub struct QuotaPermit {
    held: Arc<Held>,
    ports: usize,
}

impl Drop for QuotaPermit {
    fn drop(&mut self) {
        self.held.sessions.fetch_sub(1, Ordering::AcqRel);
        self.held.ports.fetch_sub(self.ports, Ordering::AcqRel);
    }
}

/// Which limit a tenant reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Its session limit.
    Sessions,
    /// Its share of the relay's ports.
    Ports,
}

/// The tenant already holds its maximum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant:?} is at its quota of {limit} {}", match .kind { QuotaKind::Sessions => "sessions", QuotaKind::Ports => "relay ports" })]
pub struct QuotaExceeded {
    /// Tenant.
    pub tenant: String,
    /// Which limit.
    pub kind: QuotaKind,
    /// Its value.
    pub limit: usize,
}

impl TenantQuotas {
    /// A table where every tenant gets `default_limit`.
    pub fn new(default_limit: TenantLimit) -> Self {
        Self { default_limit: Mutex::new(default_limit), ..Self::default() }
    }

    /// Sets one tenant's limits.
    pub fn set_limit(&self, tenant: &str, limit: TenantLimit) {
        lock(&self.overrides).insert(tenant.to_owned(), limit);
    }

    /// The limits that apply to a tenant.
    pub fn limit(&self, tenant: &str) -> TenantLimit {
        let default = *lock(&self.default_limit);
        lock(&self.overrides).get(tenant).copied().unwrap_or(default)
    }

    /// Replaces the default limit and every per-tenant override at once
    /// (configuration reload). Sessions already held are kept; a lowered
    /// limit only refuses new ones.
    pub fn replace(&self, default_limit: TenantLimit, overrides: impl IntoIterator<Item = (String, TenantLimit)>) {
        *lock(&self.default_limit) = default_limit;
        *lock(&self.overrides) = overrides.into_iter().collect();
    }

    /// Sessions a tenant holds now.
    pub fn in_use(&self, tenant: &str) -> usize {
        lock(&self.in_use).counters.get(tenant).map_or(0, |c| c.sessions.load(Ordering::Acquire))
    }

    /// Relay ports a tenant holds now.
    pub fn ports_in_use(&self, tenant: &str) -> usize {
        lock(&self.in_use).counters.get(tenant).map_or(0, |c| c.ports.load(Ordering::Acquire))
    }

    /// Takes a permit for one session of `ports` relay ports, or says which
    /// quota is full.
    pub fn acquire(&self, tenant: &str, ports: usize) -> Result<QuotaPermit, QuotaExceeded> {
        let limit = self.limit(tenant);
        let held = {
            let mut in_use = lock(&self.in_use);
            if in_use.counters.len() >= in_use.prune_at.max(MIN_PRUNE_AT) {
                // Only the table holds a counter nobody has a permit on.
                in_use.counters.retain(|_, c| Arc::strong_count(c) > 1);
                in_use.prune_at = 2 * in_use.counters.len();
            }
            in_use.counters.entry(tenant.to_owned()).or_default().clone()
        };
        let exceeded = |kind, limit| QuotaExceeded { tenant: tenant.to_owned(), kind, limit };
        take(&held.sessions, 1, limit.sessions).map_err(|l| exceeded(QuotaKind::Sessions, l))?;
        if let Err(l) = take(&held.ports, ports, limit.ports) {
            held.sessions.fetch_sub(1, Ordering::AcqRel);
            return Err(exceeded(QuotaKind::Ports, l));
        }
        Ok(QuotaPermit { held, ports })
    }
}

/// Adds `n` to `counter` unless that would pass `limit` (returned as the error).
fn take(counter: &AtomicUsize, n: usize, limit: Option<usize>) -> Result<(), usize> {
    let mut current = counter.load(Ordering::Acquire);
    loop {
        let next = current.saturating_add(n);
        if let Some(limit) = limit {
            if next > limit {
                return Err(limit);
            }
        }
        match counter.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(()),
            Err(seen) => current = seen,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent
    // (single inserts), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(n: usize) -> TenantLimit {
        TenantLimit { sessions: Some(n), ports: None }
    }

    #[test]
    fn permits_are_counted_and_returned() {
        let q = TenantQuotas::new(sessions(2));
        q.set_limit("big", TenantLimit::default());
        let a = q.acquire("t", 2).expect("1");
        let _b = q.acquire("t", 2).expect("2");
        let e = q.acquire("t", 2).expect_err("full");
        assert_eq!((e.kind, e.limit), (QuotaKind::Sessions, 2));
        drop(a);
        assert_eq!(q.in_use("t"), 1);
        assert!(q.acquire("t", 2).is_ok());
        let many: Vec<_> = (0..10).map(|_| q.acquire("big", 4).expect("unlimited")).collect();
        assert_eq!(q.in_use("big"), many.len());
        assert_eq!(q.ports_in_use("big"), 40);
    }

    #[test]
    fn the_port_share_limits_ports_not_sessions() {
        let q = TenantQuotas::new(TenantLimit { sessions: None, ports: Some(10) });
        let held: Vec<_> = (0..2).map(|_| q.acquire("t", 4).expect("8 ports")).collect();
        let e = q.acquire("t", 4).expect_err("12 > 10");
        assert_eq!((e.kind, e.limit), (QuotaKind::Ports, 10));
        assert_eq!(q.in_use("t"), 2, "a refused session is not counted");
        let _two = q.acquire("t", 2).expect("10 ports fit");
        assert_eq!(q.ports_in_use("t"), 10);
        assert!(q.acquire("other", 4).is_ok(), "other tenants keep their own share");
        drop(held);
        assert_eq!(q.ports_in_use("t"), 2);
    }

    #[test]
    fn tenants_without_sessions_are_forgotten() {
        let q = TenantQuotas::new(sessions(1));
        let held = q.acquire("kept", 2).expect("permit");
        for i in 0..10_000 {
            drop(q.acquire(&format!("tenant-{i}"), 2).expect("permit"));
        }
        assert!(lock(&q.in_use).counters.len() <= 2 * MIN_PRUNE_AT, "bounded table");
        assert_eq!(q.in_use("kept"), 1, "a tenant holding a session keeps its count");
        assert!(q.acquire("kept", 2).is_err());
        drop(held);
        assert!(q.acquire("kept", 2).is_ok());
    }
}
