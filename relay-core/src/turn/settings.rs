//! What a TURN server is configured with: realms (one per tenant) and
//! their credentials and allowed internal peers, the relayed addresses and
//! port range, and the limits.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::auth::{long_term_key_md5, long_term_key_sha256, RestSecrets};
use crate::peer::PeerPolicy;

/// A user stored as its long-term keys, never its password.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticUser {
    /// Username.
    pub username: String,
    /// MD5(username:realm:password), the MESSAGE-INTEGRITY key.
    pub key_md5: [u8; 16],
    /// SHA-256(username:realm:password), the MESSAGE-INTEGRITY-SHA256 key
    /// (absent: that algorithm is refused for this user).
    pub key_sha256: Option<[u8; 32]>,
}

impl std::fmt::Debug for StaticUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticUser").field("username", &self.username).finish_non_exhaustive()
    }
}

impl StaticUser {
    /// The keys of `username` with `password` in `realm` (the password is
    /// not kept).
    pub fn from_password(username: &str, realm: &str, password: &str) -> Self {
        Self {
            username: username.to_owned(),
            key_md5: long_term_key_md5(username, realm, password),
            key_sha256: Some(long_term_key_sha256(username, realm, password)),
        }
    }
}

/// Internal addresses a realm's clients may reach anyway (its PBX): an
/// address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNet {
    /// Network address (canonical).
    pub ip: IpAddr,
    /// Prefix length (≤ 32 for IPv4, ≤ 128 for IPv6).
    pub prefix: u8,
}

impl PeerNet {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or `addr/n`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, n)) => (ip.parse::<IpAddr>().ok()?, n.parse::<u8>().ok()?),
            None => {
                let ip = s.parse::<IpAddr>().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        let canonical = crate::peer::canonical(SocketAddr::new(ip, 0)).ip();
        // A mapped IPv6 network is the IPv4 network in its last 32 bits.
        let prefix = match (ip, canonical) {
            (IpAddr::V6(_), IpAddr::V4(_)) => prefix.checked_sub(96)?,
            _ => prefix,
        };
        Some(Self { ip: canonical, prefix })
    }

    /// Whether `ip` (canonicalised) lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.ip, crate::peer::canonical(SocketAddr::new(ip, 0)).ip()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One realm: a tenant's users.
#[derive(Debug, Clone)]
pub struct Realm {
    /// The REALM clients are told and must echo.
    pub name: String,
    /// The tenant its allocations count against.
    pub tenant: String,
    /// REST-scheme shared secrets (empty: none).
    pub rest: RestSecrets,
    /// Static users.
    pub users: Vec<StaticUser>,
    /// Internal peers its clients may reach despite the peer policy.
    pub allow_peers: Vec<PeerNet>,
}

/// Where one family's relayed addresses live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAddress {
    /// The IP relay sockets bind to.
    pub bind: IpAddr,
    /// The IP clients are told (the public address behind a 1:1 NAT);
    /// usually `bind`.
    pub advertised: IpAddr,
}

/// Bounds on what clients may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnLimits {
    /// Lifetime given when a client asks for less (RFC 8656: 10 minutes).
    pub default_lifetime: Duration,
    /// Longest lifetime granted.
    pub max_lifetime: Duration,
    /// Permissions last this long (RFC 8656: 5 minutes).
    pub permission_lifetime: Duration,
    /// Channel bindings last this long (RFC 8656: 10 minutes).
    pub channel_lifetime: Duration,
    /// How long nonces stay fresh.
    pub nonce_lifetime: Duration,
    /// How long an EVEN-PORT reservation holds the odd port.
    pub reservation_lifetime: Duration,
    /// Allocations one user may hold at once.
    pub allocations_per_user: usize,
    /// Permissions per allocation.
    pub permissions_per_allocation: usize,
    /// Channels per allocation.
    pub channels_per_allocation: usize,
    /// Peer connections per TCP allocation (RFC 6062).
    pub connections_per_allocation: usize,
    /// How long a peer connection waits for the client's ConnectionBind
    /// (RFC 6062: 30 seconds).
    pub connection_bind_timeout: Duration,
    /// Bytes per second one allocation may relay (both ways together).
    pub bytes_per_second: u64,
    /// Burst above that rate.
    pub burst_bytes: u64,
    /// Bytes a stranger's prefix may be answered beyond what it sent.
    pub stranger_burst_bytes: u64,
    /// Refill of that budget per second.
    pub stranger_bytes_per_second: u64,
}

impl Default for TurnLimits {
    fn default() -> Self {
        Self {
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(3600),
            reservation_lifetime: Duration::from_secs(30),
            allocations_per_user: 16,
            permissions_per_allocation: 64,
            channels_per_allocation: 64,
            connections_per_allocation: 16,
            connection_bind_timeout: Duration::from_secs(30),
            // 16 Mbit/s: a browser's HD video call with headroom.
            bytes_per_second: 2_000_000,
            burst_bytes: 256 * 1024,
            stranger_burst_bytes: 4096,
            stranger_bytes_per_second: 1024,
        }
    }
}

/// A TURN server's whole configuration.
#[derive(Debug, Clone)]
pub struct TurnSettings {
    /// Realms; the first is the one strangers are told.
    pub realms: Vec<Realm>,
    /// IPv4 relayed addresses (absent: IPv4 allocations refused with 440).
    pub relay_v4: Option<RelayAddress>,
    /// IPv6 relayed addresses (absent: IPv6 allocations refused with 440).
    pub relay_v6: Option<RelayAddress>,
    /// First relayed port.
    pub first_port: u16,
    /// Last relayed port (inclusive).
    pub last_port: u16,
    /// Which peers are allowed (the media's policy: its own addresses are
    /// the relay's listeners and media ranges; the relayed range itself is
    /// allowed, so two clients of this server reach each other).
    pub policy: PeerPolicy,
    /// Limits.
    pub limits: TurnLimits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_nets_match_by_prefix_after_canonicalising() {
        let net = PeerNet::parse("10.1.2.0/24").expect("net");
        assert!(net.contains("10.1.2.200".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.2.9".parse().expect("mapped")));
        assert!(!net.contains("10.1.3.1".parse().expect("ip")));
        let host = PeerNet::parse("::ffff:192.0.2.1").expect("mapped host");
        assert_eq!(host, PeerNet { ip: "192.0.2.1".parse().expect("ip"), prefix: 32 });
        assert!(PeerNet::parse("10.0.0.0/33").is_none());
        assert!(PeerNet::parse("fd00::/8").expect("ula").contains("fd12::1".parse().expect("ip")));
        assert!(PeerNet::parse("0.0.0.0/0").expect("all").contains("8.8.8.8".parse().expect("ip")));
    }
}
