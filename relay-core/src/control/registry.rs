//! Which connector serves which tenant, and how long a tenant whose
//! connector left keeps its sessions — sans-IO: time is passed in, and the
//! caller acts on what the methods return (kill a replaced channel, release
//! a tenant's sessions). Tested in virtual time.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Longest grace period honoured (a year); longer settings are clamped.
pub const MAX_GRACE: Duration = Duration::from_secs(365 * 86_400);

crate::names::named! {
    /// What to do with a second connector of a tenant that already has one.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SecondConnector {
        /// The newcomer replaces the connector in place (which gets `replaced`).
        Replace => "replace",
        /// The newcomer is refused (`duplicate`).
        Reject => "reject",
    }
}

/// One tenant's current connector.
#[derive(Debug)]
pub struct Entry<H> {
    /// The connector's own id (the same id reconnecting replaces itself).
    pub connector_id: String,
    /// Where it connected from.
    pub peer: SocketAddr,
    /// Services it exposes.
    pub services: Vec<String>,
    /// Since when.
    pub since: Instant,
    /// This channel's id (changes on every reconnect or replacement).
    pub epoch: u64,
    /// The caller's handle on the channel (its outbox, its kill switch).
    pub handle: H,
}

/// A connector that may not register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate;

/// The registry of connectors and of tenants in their grace period.
#[derive(Debug)]
pub struct Registry<H> {
    grace: Duration,
    second: SecondConnector,
    active: HashMap<String, Entry<H>>,
    /// Tenants whose connector left: the channel that left and when their
    /// sessions go.
    away: HashMap<String, (u64, Instant)>,
    next_epoch: u64,
}

/// A new registration: its epoch, and the channel it replaced (the caller
/// closes that one with `replaced`).
#[derive(Debug)]
pub struct Registered<H> {
    /// The new channel's epoch.
    pub epoch: u64,
    /// The replaced channel, if any.
    pub replaced: Option<Entry<H>>,
}

impl<H> Registry<H> {
    /// An empty registry: sessions of an absent tenant live `grace`.
    pub fn new(grace: Duration, second: SecondConnector) -> Self {
        // Clamped so `now + grace` cannot overflow an `Instant`.
        let grace = grace.min(MAX_GRACE);
        Self { grace, second, active: HashMap::new(), away: HashMap::new(), next_epoch: 0 }
    }

    /// A connector of `tenant` authenticated at `now`. A tenant back within
    /// its grace period keeps its sessions.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_register(
        &mut self,
        now: Instant,
        tenant: &str,
        connector_id: &str,
        peer: SocketAddr,
        services: Vec<String>,
        handle: H,
    ) -> Result<Registered<H>, Duplicate> {
        if let Some(current) = self.active.get(tenant) {
            if current.connector_id != connector_id && self.second == SecondConnector::Reject {
                return Err(Duplicate);
            }
        }
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        self.away.remove(tenant);
        let entry = Entry { connector_id: connector_id.to_string(), peer, services, since: now, epoch, handle };
        let replaced = self.active.insert(tenant.to_string(), entry);
        Ok(Registered { epoch, replaced })
    }

    /// The channel `epoch` of `tenant` ended at `now`. Returns whether it
    /// was the tenant's current one (then its grace period starts); a
    /// replaced channel leaving changes nothing.
    pub fn handle_leave(&mut self, now: Instant, tenant: &str, epoch: u64) -> bool {
        if self.active.get(tenant).is_none_or(|e| e.epoch != epoch) {
            return false;
        }
        self.active.remove(tenant);
        self.away.insert(tenant.to_string(), (epoch, now + self.grace));
        true
    }

    /// Removes a tenant (configuration reload): its entry, for the caller to
    /// close with `tenant_removed`.
    pub fn remove_tenant(&mut self, tenant: &str) -> Option<Entry<H>> {
        self.active.remove(tenant)
    }

    /// When a grace period ends next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.away.values().map(|(_, deadline)| *deadline).min()
    }

    /// Ends the grace periods due at `now`: the tenants whose sessions must
    /// be released.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self.away.iter().filter(|(_, (_, d))| *d <= now).map(|(t, _)| t.clone()).collect();
        for t in &due {
            self.away.remove(t);
        }
        due
    }

    /// The tenant's current connector.
    pub fn get(&self, tenant: &str) -> Option<&Entry<H>> {
        self.active.get(tenant)
    }

    /// Every current connector, by tenant.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry<H>)> {
        self.active.iter()
    }

    /// Connectors now.
    pub fn len(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "198.51.100.1:40000".parse().expect("addr")
    }

    #[test]
    fn a_tenant_back_within_its_grace_keeps_its_sessions_in_virtual_time() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(120);
        let mut r: Registry<&str> = Registry::new(grace, SecondConnector::Replace);
        let a = r.handle_register(t0, "acme", "pbx-1", peer(), vec![], "chan-1").expect("registered");
        assert!(r.handle_leave(t0 + Duration::from_secs(5), "acme", a.epoch));
        assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(125)));
        assert!(r.handle_timeout(t0 + Duration::from_secs(124)).is_empty());
        // Back one second before the end: nothing is released, ever.
        r.handle_register(t0 + Duration::from_secs(124), "acme", "pbx-1", peer(), vec![], "chan-2").expect("back");
        assert_eq!(r.poll_timeout(), None);
        assert!(r.handle_timeout(t0 + Duration::from_secs(3600)).is_empty());
        // Away for good: released exactly when the grace ends.
        let epoch = r.get("acme").expect("current").epoch;
        r.handle_leave(t0 + Duration::from_secs(200), "acme", epoch);
        assert!(r.handle_timeout(t0 + Duration::from_secs(319)).is_empty());
        assert_eq!(r.handle_timeout(t0 + Duration::from_secs(320)), ["acme"]);
        assert!(r.handle_timeout(t0 + Duration::from_secs(321)).is_empty(), "released once");
    }

    #[test]
    fn an_absurd_grace_is_clamped_instead_of_overflowing_the_clock() {
        let t0 = Instant::now();
        let mut r: Registry<u8> = Registry::new(Duration::from_secs(u64::MAX), SecondConnector::Replace);
        let a = r.handle_register(t0, "acme", "pbx-1", peer(), vec![], 1).expect("registered");
        assert!(r.handle_leave(t0, "acme", a.epoch));
        assert_eq!(r.poll_timeout(), Some(t0 + MAX_GRACE));
    }

    #[test]
    fn second_connectors_replace_or_are_rejected_and_a_replaced_channel_leaving_changes_nothing() {
        let t0 = Instant::now();
        let mut r: Registry<u32> = Registry::new(Duration::from_secs(60), SecondConnector::Replace);
        let first = r.handle_register(t0, "acme", "pbx-1", peer(), vec![], 1).expect("first");
        let second = r.handle_register(t0, "acme", "pbx-2", peer(), vec![], 2).expect("replaces");
        assert_eq!(second.replaced.map(|e| e.handle), Some(1), "the caller closes the old channel");
        assert!(!r.handle_leave(t0, "acme", first.epoch), "the replaced channel leaving is not the tenant leaving");
        assert_eq!(r.poll_timeout(), None);
        assert_eq!(r.get("acme").map(|e| e.handle), Some(2));

        let mut strict: Registry<u32> = Registry::new(Duration::from_secs(60), SecondConnector::Reject);
        strict.handle_register(t0, "acme", "pbx-1", peer(), vec![], 1).expect("first");
        assert_eq!(strict.handle_register(t0, "acme", "pbx-2", peer(), vec![], 2).err(), Some(Duplicate));
        let same = strict.handle_register(t0, "acme", "pbx-1", peer(), vec![], 3).expect("same id replaces itself");
        assert!(same.replaced.is_some());
        assert_eq!(strict.remove_tenant("acme").map(|e| e.handle), Some(3));
        assert_eq!(strict.len(), 0);
    }
}
