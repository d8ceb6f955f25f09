//! Connector authentication, sans-IO: tenant tokens checked against stored
//! SHA-256 hashes in constant time, failures counted per source IP and per
//! tenant, sources locked out after too many failures in a window.
//!
//! Only *sources* are locked out: locking a tenant would let any stranger
//! lock a customer out by failing on purpose. Per-tenant failures are counted
//! for alerting.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::codes::ErrorCode;
use crate::peer::source_prefix;

/// Lockout settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Failures within `window` that lock a source out.
    pub max_attempts: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long a locked-out source is refused (even with a correct token).
    pub lockout: Duration,
    /// Delay before answering a failed attempt (slows guessing).
    pub failure_delay: Duration,
    /// Sources remembered at most (oldest forgotten first).
    pub max_tracked_sources: usize,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            failure_delay: Duration::from_secs(1),
            max_tracked_sources: 65_536,
        }
    }
}

/// The result of one `hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The tenant is authenticated.
    Accepted,
    /// Refused; answer after `delay` with `code`, then close.
    Rejected {
        /// `bad_credentials` or `locked_out`.
        code: ErrorCode,
        /// How long to wait before answering.
        delay: Duration,
    },
}

#[derive(Debug, Default)]
struct Failures {
    times: VecDeque<Instant>,
    locked_until: Option<Instant>,
    last: Option<Instant>,
}

/// SHA-256 of a token, as stored in configuration.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Tenant credentials and failure tracking.
#[derive(Debug, Default)]
pub struct Authenticator {
    policy: AuthPolicy,
    tenants: HashMap<String, [u8; 32]>,
    sources: HashMap<IpAddr, Failures>,
    tenant_failures: HashMap<String, u64>,
}

impl Authenticator {
    /// An authenticator for `tenants` (id → SHA-256 of the token).
    pub fn new(policy: AuthPolicy, tenants: impl IntoIterator<Item = (String, [u8; 32])>) -> Self {
        Self { policy, tenants: tenants.into_iter().collect(), ..Self::default() }
    }

    /// Replaces the tenants (configuration reload); failure history stays.
    pub fn replace_tenants(&mut self, tenants: impl IntoIterator<Item = (String, [u8; 32])>) {
        self.tenants = tenants.into_iter().collect();
    }

    /// Failed attempts against a tenant so far.
    pub fn tenant_failures(&self, tenant: &str) -> u64 {
        self.tenant_failures.get(tenant).copied().unwrap_or(0)
    }

    /// Whether `source` (its IPv4 address or IPv6 /64) is locked out at `now`.
    pub fn is_locked(&self, now: Instant, source: IpAddr) -> bool {
        let source = source_prefix(source);
        self.sources.get(&source).and_then(|f| f.locked_until).is_some_and(|t| now < t)
    }

    /// Checks a `hello`. Failures are counted per source: an IPv4 address,
    /// or an IPv6 /64 (one host usually holds a whole /64).
    pub fn handle_hello(&mut self, now: Instant, source: IpAddr, tenant: &str, token: &str) -> AuthOutcome {
        let source = source_prefix(source);
        let delay = self.policy.failure_delay;
        if self.is_locked(now, source) {
            return AuthOutcome::Rejected { code: ErrorCode::LockedOut, delay };
        }
        let presented = token_hash(token);
        // Compare against a dummy hash for unknown tenants so timing does not
        // reveal which tenant ids exist.
        let (known, expected) = match self.tenants.get(tenant) {
            Some(h) => (true, *h),
            None => (false, [0u8; 32]),
        };
        if crate::wire::ct_eq(&presented, &expected) && known {
            if let Some(f) = self.sources.get_mut(&source) {
                f.times.clear();
                f.locked_until = None;
            }
            return AuthOutcome::Accepted;
        }
        if known {
            *self.tenant_failures.entry(tenant.to_string()).or_default() += 1;
        }
        self.record_failure(now, source);
        AuthOutcome::Rejected {
            code: if self.is_locked(now, source) { ErrorCode::LockedOut } else { ErrorCode::BadCredentials },
            delay,
        }
    }

    fn record_failure(&mut self, now: Instant, source: IpAddr) {
        if !self.sources.contains_key(&source) && self.sources.len() >= self.policy.max_tracked_sources {
            self.handle_timeout(now);
            if self.sources.len() >= self.policy.max_tracked_sources {
                if let Some(oldest) = self.sources.iter().min_by_key(|(_, f)| f.last).map(|(ip, _)| *ip) {
                    self.sources.remove(&oldest);
                }
            }
        }
        let p = self.policy;
        let f = self.sources.entry(source).or_default();
        f.last = Some(now);
        f.times.push_back(now);
        while f.times.front().is_some_and(|t| now.saturating_duration_since(*t) >= p.window) {
            f.times.pop_front();
        }
        if f.times.len() as u32 >= p.max_attempts {
            f.locked_until = Some(now + p.lockout);
            f.times.clear();
        }
    }

    /// Forgets sources whose failures and lockouts have all expired.
    pub fn handle_timeout(&mut self, now: Instant) {
        let p = self.policy;
        self.sources.retain(|_, f| {
            let locked = f.locked_until.is_some_and(|t| now < t);
            let recent = f.last.is_some_and(|t| now.saturating_duration_since(t) < p.window);
            locked || recent
        });
    }

    /// Sources tracked now.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn auth() -> Authenticator {
        Authenticator::new(AuthPolicy::default(), [("acme".to_string(), token_hash("right-token"))])
    }

    #[test]
    fn correct_token_accepted_wrong_rejected_with_delay() {
        let mut a = auth();
        let t0 = Instant::now();
        assert_eq!(a.handle_hello(t0, ip("198.51.100.1"), "acme", "right-token"), AuthOutcome::Accepted);
        assert_eq!(
            a.handle_hello(t0, ip("198.51.100.1"), "acme", "wrong"),
            AuthOutcome::Rejected { code: ErrorCode::BadCredentials, delay: Duration::from_secs(1) }
        );
        assert!(matches!(
            a.handle_hello(t0, ip("198.51.100.1"), "nobody", "right-token"),
            AuthOutcome::Rejected { .. }
        ));
        assert_eq!(a.tenant_failures("acme"), 1);
        assert_eq!(a.tenant_failures("nobody"), 0, "unknown tenants are not tracked (bounded memory)");
    }

    #[test]
    fn repeated_failures_lock_the_source_out_even_for_the_right_token() {
        let mut a = auth();
        let t0 = Instant::now();
        let attacker = ip("203.0.113.66");
        for i in 0..4 {
            let r = a.handle_hello(t0 + Duration::from_secs(i), attacker, "acme", "guess");
            assert_eq!(r, AuthOutcome::Rejected { code: ErrorCode::BadCredentials, delay: Duration::from_secs(1) });
        }
        let fifth = a.handle_hello(t0 + Duration::from_secs(4), attacker, "acme", "guess");
        assert!(matches!(fifth, AuthOutcome::Rejected { code: ErrorCode::LockedOut, .. }));
        let t = t0 + Duration::from_secs(60);
        assert!(matches!(
            a.handle_hello(t, attacker, "acme", "right-token"),
            AuthOutcome::Rejected { code: ErrorCode::LockedOut, .. }
        ));
        // Other sources (the real PBX) are unaffected: only sources are locked.
        assert_eq!(a.handle_hello(t, ip("198.51.100.1"), "acme", "right-token"), AuthOutcome::Accepted);
        // After the lockout the source may try again.
        let later = t0 + Duration::from_secs(4 + 300);
        assert_eq!(a.handle_hello(later, attacker, "acme", "right-token"), AuthOutcome::Accepted);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up_and_memory_is_bounded() {
        let mut a = Authenticator::new(
            AuthPolicy { max_tracked_sources: 100, ..AuthPolicy::default() },
            [("acme".to_string(), token_hash("x"))],
        );
        let t0 = Instant::now();
        let src = ip("203.0.113.1");
        for i in 0..10u64 {
            // one failure every 20 s: never 5 within 60 s
            let r = a.handle_hello(t0 + Duration::from_secs(20 * i), src, "acme", "bad");
            assert!(matches!(r, AuthOutcome::Rejected { code: ErrorCode::BadCredentials, .. }), "attempt {i}");
        }
        for i in 0..1000u32 {
            let s = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            a.handle_hello(t0, s, "acme", "bad");
        }
        assert!(a.tracked_sources() <= 100);
        a.handle_timeout(t0 + Duration::from_secs(3600));
        assert_eq!(a.tracked_sources(), 0);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source_for_lockouts() {
        let mut a = auth();
        let t0 = Instant::now();
        for i in 0..5u16 {
            let src = IpAddr::from(std::net::Ipv6Addr::new(0x2001, 0xdb8, 7, 7, i, 0, 0, 1));
            a.handle_hello(t0, src, "acme", "guess");
        }
        let other_host_same_64 = ip("2001:db8:7:7:ffff::2");
        assert!(matches!(
            a.handle_hello(t0, other_host_same_64, "acme", "right-token"),
            AuthOutcome::Rejected { code: ErrorCode::LockedOut, .. }
        ));
        assert_eq!(a.handle_hello(t0, ip("2001:db8:7:8::1"), "acme", "right-token"), AuthOutcome::Accepted);
    }
}
