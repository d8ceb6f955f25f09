//! Per-tenant session quotas shared by all shards.
//!
//! A [`QuotaPermit`] is taken by the control plane before a session is
//! allocated and travels with the session into its shard; dropping the
//! session (release, timeout, shutdown) drops the permit and returns the slot.
//! The hot path never touches this.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Quota table: a default limit and per-tenant overrides.
#[derive(Debug, Default)]
pub struct TenantQuotas {
    default_limit: Mutex<Option<usize>>,
    overrides: Mutex<HashMap<String, Option<usize>>>,
    in_use: Mutex<InUse>,
}

/// Per-tenant session counters. A tenant's entry is forgotten once it holds
/// no session (tenant ids come from requests, so the table must not grow
/// with every id ever seen); pruning is amortized.
#[derive(Debug, Default)]
struct InUse {
    counters: HashMap<String, Arc<AtomicUsize>>,
    prune_at: usize,
}

const MIN_PRUNE_AT: usize = 1024;

/// A session slot held against a tenant's quota; released on drop.
#[derive(Debug)]
pub struct QuotaPermit {
    counter: Arc<AtomicUsize>,
}

impl Drop for QuotaPermit {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The tenant already has its maximum number of sessions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant:?} is at its quota of {limit} sessions")]
pub struct QuotaExceeded {
    /// Tenant.
    pub tenant: String,
    /// Its limit.
    pub limit: usize,
}

impl TenantQuotas {
    /// A table where every tenant gets `default_limit` sessions (`None`: unlimited).
    pub fn new(default_limit: Option<usize>) -> Self {
        Self { default_limit: Mutex::new(default_limit), ..Self::default() }
    }

    /// Sets (or with `None` removes the limit of) one tenant.
    pub fn set_limit(&self, tenant: &str, limit: Option<usize>) {
        lock(&self.overrides).insert(tenant.to_owned(), limit);
    }

    /// The limit that applies to a tenant.
    pub fn limit(&self, tenant: &str) -> Option<usize> {
        let default = *lock(&self.default_limit);
        lock(&self.overrides).get(tenant).copied().unwrap_or(default)
    }

    /// Replaces the default limit and every per-tenant override at once
    /// (configuration reload). Sessions already held are kept; a lowered
    /// limit only refuses new ones.
    pub fn replace(&self, default_limit: Option<usize>, overrides: impl IntoIterator<Item = (String, Option<usize>)>) {
        *lock(&self.default_limit) = default_limit;
        *lock(&self.overrides) = overrides.into_iter().collect();
    }

    /// Sessions a tenant holds now.
    pub fn in_use(&self, tenant: &str) -> usize {
        lock(&self.in_use).counters.get(tenant).map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Takes a permit, or says which quota is full.
    pub fn acquire(&self, tenant: &str) -> Result<QuotaPermit, QuotaExceeded> {
        let limit = self.limit(tenant);
        let counter = {
            let mut in_use = lock(&self.in_use);
            if in_use.counters.len() >= in_use.prune_at.max(MIN_PRUNE_AT) {
                // Only the table holds a counter nobody has a permit on.
                in_use.counters.retain(|_, c| Arc::strong_count(c) > 1);
                in_use.prune_at = 2 * in_use.counters.len();
            }
            in_use.counters.entry(tenant.to_owned()).or_default().clone()
        };
        let mut current = counter.load(Ordering::Acquire);
        loop {
            if let Some(limit) = limit {
                if current >= limit {
                    return Err(QuotaExceeded { tenant: tenant.to_owned(), limit });
                }
            }
            match counter.compare_exchange(current, current + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(QuotaPermit { counter }),
                Err(seen) => current = seen,
            }
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

    #[test]
    fn permits_are_counted_and_returned() {
        let q = TenantQuotas::new(Some(2));
        q.set_limit("big", None);
        let a = q.acquire("t").expect("1");
        let _b = q.acquire("t").expect("2");
        assert_eq!(q.acquire("t").err().map(|e| e.limit), Some(2));
        drop(a);
        assert_eq!(q.in_use("t"), 1);
        assert!(q.acquire("t").is_ok());
        let many: Vec<_> = (0..10).map(|_| q.acquire("big").expect("unlimited")).collect();
        assert_eq!(q.in_use("big"), many.len());
    }

    #[test]
    fn tenants_without_sessions_are_forgotten() {
        let q = TenantQuotas::new(Some(1));
        let held = q.acquire("kept").expect("permit");
        for i in 0..10_000 {
            drop(q.acquire(&format!("tenant-{i}")).expect("permit"));
        }
        assert!(lock(&q.in_use).counters.len() <= 2 * MIN_PRUNE_AT, "bounded table");
        assert_eq!(q.in_use("kept"), 1, "a tenant holding a session keeps its count");
        assert!(q.acquire("kept").is_err());
        drop(held);
        assert!(q.acquire("kept").is_ok());
    }
}
