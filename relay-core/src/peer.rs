//! Peer policy: which remote addresses a leg may latch to or send to.
//!
//! Every address is canonicalized before it is checked, so an IPv4 address
//! hidden in IPv6 (mapped `::ffff:a.b.c.d`, translated `::ffff:0:a.b.c.d`,
//! compatible `::a.b.c.d`, 6to4 `2002:aabb:ccdd::/48`, NAT64 `64:ff9b::/96`
//! and `64:ff9b:1::/48`, Teredo `2001::/32`, ISATAP) meets the same rules as
//! the plain IPv4 address.
//!
//! Besides address classes, the policy knows the relay's **own addresses**:
//! its media port ranges on its bind and advertised IPs and every listener
//! of the process (admin, ng, control, tunnels). Those are never a valid
//! hint, latched source or destination, whatever else the policy allows —
//! otherwise a hint could point a session at the relay's own ng port (and
//! let a stranger drive it) or at another session's port (one datagram
//! turning into a loop of internal forwards).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// Allowed.
    Public,
    /// 0.0.0.0/8, `::`, port 0.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 169.254.0.0/16 (which holds most metadata services), fe80::/10.
    LinkLocal,
    /// Known cloud metadata and host-agent addresses outside link-local
    /// (Azure's 168.63.129.16, Alibaba's 100.100.100.200, Oracle's
    /// 192.0.0.192, AWS's fd00:ec2::254).
    Metadata,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, 100.64.0.0/10 (CGNAT), fc00::/7.
    Private,
    /// 240.0.0.0/4, 192.0.0.0/24, 198.18.0.0/15, 192.88.99.0/24,
    /// 100::/64 (discard), documentation and benchmarking IPv6 space.
    Reserved,
}

/// One of the relay's own addresses: a port range on one IP, or on every
/// address of the host when the IP is unspecified (a wildcard bind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnEndpoint {
    /// The IP (canonical), or `0.0.0.0`/`::` for "any address of this host".
    pub ip: IpAddr,
    /// First port.
    pub first_port: u16,
    /// Last port (inclusive).
    pub last_port: u16,
}

impl OwnEndpoint {
    /// One socket address (a listener).
    pub fn socket(addr: SocketAddr) -> Self {
        let addr = canonical(addr);
        Self { ip: addr.ip(), first_port: addr.port(), last_port: addr.port() }
    }

    /// A port range on one IP (a media range).
    pub fn range(ip: IpAddr, first_port: u16, last_port: u16) -> Self {
        Self { ip: canonical(SocketAddr::new(ip, 0)).ip(), first_port, last_port }
    }
}

/// The relay's own addresses (see the module docs). Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnAddresses {
    endpoints: Arc<Vec<OwnEndpoint>>,
    /// The host's interface addresses, for wildcard endpoints.
    local_ips: Arc<Vec<IpAddr>>,
}

impl OwnAddresses {
    /// A set of endpoints. `local_ips` are the host's interface addresses
    /// (`io::sys::local_addresses` lists them); loopback always counts as
    /// local.
    pub fn new(endpoints: impl IntoIterator<Item = OwnEndpoint>, local_ips: Vec<IpAddr>) -> Self {
        let mut endpoints: Vec<OwnEndpoint> = endpoints.into_iter().collect();
        endpoints.sort_by_key(|e| (e.ip, e.first_port, e.last_port));
        endpoints.dedup();
        let mut local_ips: Vec<IpAddr> =
            local_ips.into_iter().map(|ip| canonical(SocketAddr::new(ip, 0)).ip()).collect();
        local_ips.sort();
        local_ips.dedup();
        Self { endpoints: Arc::new(endpoints), local_ips: Arc::new(local_ips) }
    }

    /// The same set with more endpoints.
    pub fn with(&self, more: impl IntoIterator<Item = OwnEndpoint>) -> Self {
        Self::new(self.endpoints.iter().copied().chain(more), self.local_ips.to_vec())
    }

    /// The endpoints, sorted.
    pub fn endpoints(&self) -> &[OwnEndpoint] {
        &self.endpoints
    }

    /// Whether any endpoint is a wildcard (needs the host's interface list).
    pub fn has_wildcard(&self) -> bool {
        self.endpoints.iter().any(|e| e.ip.is_unspecified())
    }

    /// Whether `addr` is one of the relay's own addresses.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        let addr = canonical(addr);
        let port = addr.port();
        let ip = addr.ip();
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.endpoints.iter().any(|e| {
            if port < e.first_port || port > e.last_port {
                return false;
            }
            if e.ip.is_unspecified() {
                [Some(ip), embedded].into_iter().flatten().any(|ip| self.is_local(ip))
            } else {
                e.ip == ip || Some(e.ip) == embedded
            }
        })
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip.is_unspecified() || self.local_ips.contains(&ip)
    }
}

/// Which remote addresses a leg may latch to or send to. The default
/// refuses loopback and private peers (production on a public host) and
/// knows no own address; `Relay::start` adds the
/// relay's media ranges to whatever it is given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerPolicy {
    /// Allow 127.0.0.0/8 and ::1 (tests, same-host PBX). Default `false`.
    pub allow_loopback: bool,
    /// Allow private ranges (RFC 1918, CGNAT, ULA). Default `false`.
    pub allow_private: bool,
    /// The relay's own addresses: never a peer, whatever the flags allow.
    pub own: OwnAddresses,
}

impl PeerPolicy {
    /// A policy allowing loopback and private peers (for tests and labs).
    pub fn permissive_local() -> Self {
        Self { allow_loopback: true, allow_private: true, own: OwnAddresses::default() }
    }

    /// A policy allowing loopback peers only (a loopback-bound lab relay).
    pub fn loopback_lab() -> Self {
        Self { allow_loopback: true, allow_private: false, own: OwnAddresses::default() }
    }

    /// The same flags with these own addresses.
    pub fn with_own(mut self, own: OwnAddresses) -> Self {
        self.own = own;
        self
    }

    /// Whether the address class of `addr` may be a peer (cheap; checked
    /// for every packet). [`is_own`](Self::is_own) is checked separately,
    /// where an address is first accepted.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        if addr.port() == 0 {
            return false;
        }
        match classify(addr.ip()) {
            AddressClass::Public => true,
            AddressClass::Loopback => self.allow_loopback,
            AddressClass::Private => self.allow_private,
            _ => false,
        }
    }

    /// Whether `addr` is one of the relay's own addresses.
    pub fn is_own(&self, addr: SocketAddr) -> bool {
        self.own.contains(addr)
    }

    /// Whether `addr` may be a hint, latched source or destination: its
    /// class is allowed and it is not the relay itself.
    pub fn allows_peer(&self, addr: SocketAddr) -> bool {
        self.allows(addr) && !self.is_own(addr)
    }
}

/// The unit the relay counts strangers by: an IPv4 address, or an IPv6
/// /64 (one subscriber usually holds a whole /64, so per-address counting
/// would give each of them 2⁶⁴ budgets). Mapped IPv4 counts as IPv4.
pub fn source_prefix(ip: IpAddr) -> IpAddr {
    match canonical(SocketAddr::new(ip, 0)).ip() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Returns the canonical form of a socket address: an IPv4-mapped IPv6
/// address becomes IPv4. This is the form the relay latches and compares.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The IPv4 address an IPv6 address stands for, if any: mapped
/// (`::ffff:0:0/96`), translated (`::ffff:0:0:0/96`, RFC 2765), compatible,
/// 6to4 (`2002::/16`), NAT64 (`64:ff9b::/96`; `64:ff9b:1::/48` with the
/// RFC 6052 /48 layout), Teredo (`2001::/32`, the client's obfuscated
/// address) or ISATAP (interface id `0:5efe` / `200:5efe`).
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-translated ::ffff:0:a.b.c.d (SIIT).
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return Some(last32);
    }
    // IPv4-compatible ::a.b.c.d (deprecated), excluding :: and ::1.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(last32);
    }
    // 6to4: 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return Some(last32);
    }
    // NAT64 local-use 64:ff9b:1::/48: RFC 6052 §2.2 puts the IPv4 address
    // in bits 48..63 and 72..87 (bits 64..71 are the zero "u" octet).
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001 {
        return Some(Ipv4Addr::new(o[6], o[7], o[9], o[10]));
    }
    // Teredo 2001:0000::/32: the client's public IPv4 is the last 32 bits, inverted.
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(Ipv4Addr::from(!u32::from(last32)));
    }
    // ISATAP: interface identifier 0000:5efe or 0200:5efe followed by the IPv4.
    if (s[4] == 0 || s[4] == 0x0200) && s[5] == 0x5efe {
        return Some(last32);
    }
    None
}

/// Classifies an address after canonicalization.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v6(v6: Ipv6Addr) -> AddressClass {
    if v6.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if v6.is_loopback() {
        return AddressClass::Loopback;
    }
    let s = v6.segments();
    let o = v6.octets();
    // Multicast and link-local first: an embedded IPv4 (ISATAP) never makes them public.
    if s[0] & 0xff00 == 0xff00 {
        return AddressClass::Multicast;
    }
    if s[0] & 0xffc0 == 0xfe80 {
        return AddressClass::LinkLocal;
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001 {
        // NAT64 local-use 64:ff9b:1::/48 may carry the IPv4 in the RFC 6052
        // /48 layout or in the last 32 bits (/96): refuse if either reading
        // is not public.
        let last32 = [o[12], o[13], o[14], o[15]];
        let slash48 = [o[6], o[7], o[9], o[10]];
        let readings = [
            (o[8] == 0 && slash48 != [0; 4]).then(|| Ipv4Addr::from(slash48)),
            (last32 != [0; 4]).then(|| Ipv4Addr::from(last32)),
        ];
        let mut classes = readings.into_iter().flatten().map(classify_v4).peekable();
        if classes.peek().is_none() {
            return AddressClass::Reserved;
        }
        return classes.find(|c| *c != AddressClass::Public).unwrap_or(AddressClass::Public);
    }
    if let Some(v4) = embedded_ipv4(v6) {
        return classify_v4(v4);
    }
    if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        AddressClass::Metadata
    } else if s[0] & 0xfe00 == 0xfc00 {
        AddressClass::Private
    } else if s[0] & 0xffc0 == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x3fff && s[1] & 0xf000 == 0) // documentation 3fff::/20
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0) // benchmarking 2001:2::/48
        || (s[0] == 0x0100 && s[1..4] == [0; 3]) // discard-only 100::/64
        || s[0] == 0
    // anything else under ::/16 (reserved by IETF)
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v4(v4: Ipv4Addr) -> AddressClass {
    let o = v4.octets();
    if o[0] == 0 {
        AddressClass::Unspecified
    } else if v4.is_broadcast() {
        AddressClass::Broadcast
    } else if v4.is_multicast() {
        AddressClass::Multicast
    } else if v4.is_link_local() {
        AddressClass::LinkLocal
    } else if v4 == Ipv4Addr::new(100, 100, 100, 200)
        || v4 == Ipv4Addr::new(192, 0, 0, 192)
        || v4 == Ipv4Addr::new(168, 63, 129, 16)
    {
        // Alibaba Cloud and Oracle Cloud metadata, Azure's host agent (WireServer).
        AddressClass::Metadata
    } else if v4.is_loopback() {
        AddressClass::Loopback
    } else if v4.is_private() || (o[0] == 100 && o[1] & 0xc0 == 64) {
        AddressClass::Private
    } else if o[0] >= 240
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments 192.0.0.0/24
        || (o[0] == 198 && o[1] & 0xfe == 18) // benchmarking 198.18.0.0/15
        || (o[0] == 192 && o[1] == 88 && o[2] == 99)
    // deprecated 6to4 relay anycast
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn canonicalizes_mapped_addresses() {
        assert_eq!(canonical(sa("[::ffff:198.51.100.7]:5000")), sa("198.51.100.7:5000"));
        assert_eq!(canonical(sa("[2001:db8::1]:5000")), sa("[2001:db8::1]:5000"));
    }

    #[test]
    fn refuses_dangerous_destinations_in_every_disguise() {
        let p = PeerPolicy::default();
        for bad in [
            "0.0.0.0:1000",
            "[::]:1000",
            "255.255.255.255:1000",
            "224.0.0.1:1000",
            "[ff02::1]:1000",
            "169.254.169.254:80",
            "[fe80::1]:1000",
            "[fd00:ec2::254]:80",
            "100.100.100.200:80",
            "168.63.129.16:80",
            "192.0.0.8:1000",
            "198.18.0.1:1000",
            "198.19.255.1:1000",
            "[100::1]:1000",
            "127.0.0.1:1000",
            "[::1]:1000",
            "10.1.2.3:1000",
            "192.168.1.1:1000",
            "100.64.0.1:1000",
            "[fd12::1]:1000",
            "240.0.0.1:1000",
            "8.8.8.8:0",
            // disguised: mapped, translated, compatible, 6to4, NAT64 (both prefixes), Teredo, ISATAP
            "[::ffff:127.0.0.1]:1000",
            "[::ffff:169.254.169.254]:80",
            "[::ffff:0:7f00:1]:1000",
            "[::ffff:0:a9fe:a9fe]:80",
            "[::127.0.0.1]:1000",
            "[2002:a9fe:a9fe::1]:80",
            "[64:ff9b::a9fe:a9fe]:80",
            "[64:ff9b::7f00:1]:1000",
            // 64:ff9b:1::/48, RFC 6052 /48 layout: 127.0.0.1 in bits 48..63 and 72..87
            "[64:ff9b:1:7f00:0:100::]:1000",
            // the same prefix with the /96 layout
            "[64:ff9b:1::a00:1]:1000",
            // Teredo client 127.0.0.1 (obfuscated: inverted)
            "[2001:0:4136:e378:8000:63bf:80ff:fffe]:1000",
            // Teredo client 169.254.169.254
            "[2001:0:4136:e378:8000:63bf:5601:5601]:80",
            // ISATAP with a private IPv4
            "[2001:4860:1::5efe:a00:1]:1000",
            // ISATAP-shaped link-local stays link-local
            "[fe80::5efe:808:808]:1000",
        ] {
            assert!(!p.allows(sa(bad)), "{bad} must be refused");
        }
        for good in [
            "8.8.8.8:5004",
            "[2001:4860::8888]:5004",
            "[::ffff:8.8.8.8]:5004",
            "[64:ff9b::808:808]:1",
            "[64:ff9b:1:808:8:800::]:1",
            "[64:ff9b:1::808:808]:1",
            "[2001:0:4136:e378:8000:63bf:f7f7:f7f7]:5004",
            "192.0.2.66:5004",
            "198.51.100.7:5004",
        ] {
            assert!(p.allows(sa(good)), "{good} must be allowed");
        }
    }

    #[test]
    fn loopback_and_private_only_when_configured() {
        let p = PeerPolicy::permissive_local();
        assert!(p.allows(sa("127.0.0.1:1000")));
        assert!(p.allows(sa("[::ffff:10.0.0.1]:1000")));
        assert!(!p.allows(sa("169.254.169.254:80")));
        assert!(!p.allows(sa("[::ffff:224.0.0.1]:1000")));
        let only_lo = PeerPolicy::loopback_lab();
        assert!(!only_lo.allows(sa("10.0.0.1:1000")));
        assert!(only_lo.allows(sa("127.0.0.1:1000")));
    }

    #[test]
    fn own_addresses_are_refused_in_every_disguise_and_only_they() {
        let public: IpAddr = "203.0.113.9".parse().expect("ip");
        let own = OwnAddresses::new(
            [
                OwnEndpoint::range(public, 30000, 39999),
                OwnEndpoint::socket(sa("127.0.0.1:22222")),
                OwnEndpoint::socket(sa("0.0.0.0:5061")),
            ],
            vec![public, "10.1.1.1".parse().expect("ip")],
        );
        let p = PeerPolicy::permissive_local().with_own(own);
        for mine in [
            "203.0.113.9:30000",
            "203.0.113.9:39999",
            "[::ffff:203.0.113.9]:31000",
            "[2002:cb00:7109::1]:31000",
            "127.0.0.1:22222",
            "[::ffff:127.0.0.1]:22222",
            "127.0.0.1:5061",
            "10.1.1.1:5061",
            "203.0.113.9:5061",
        ] {
            assert!(p.is_own(sa(mine)), "{mine} is the relay");
            assert!(!p.allows_peer(sa(mine)), "{mine} is never a peer");
        }
        for other in ["203.0.113.9:29999", "203.0.113.10:30000", "127.0.0.2:22222", "127.0.0.1:22223", "8.8.8.8:5061"] {
            assert!(!p.is_own(sa(other)), "{other} is not the relay");
        }
    }
}
