//! Peer policy: which remote addresses a leg may latch to or send to.
//!
//! Every address is canonicalized before it is checked, so an IPv4 address
//! hidden in IPv6 (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, 6to4
//! `2002:aabb:ccdd::/48`, NAT64 `64:ff9b::/96`) meets the same rules as the
//! plain IPv4 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
    /// Known cloud metadata addresses outside link-local.
    Metadata,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, 100.64.0.0/10 (CGNAT), fc00::/7.
    Private,
    /// 240.0.0.0/4 and other reserved space.
    Reserved,
}

/// The configurable part of the peer policy. The default refuses loopback
/// and private peers (production on a public host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerPolicy {
    /// Allow 127.0.0.0/8 and ::1 (tests, same-host PBX). Default `false`.
    pub allow_loopback: bool,
    /// Allow private ranges (RFC 1918, CGNAT, ULA). Default `false`.
    pub allow_private: bool,
}

impl PeerPolicy {
    /// A policy allowing loopback and private peers (for tests and labs).
    pub fn permissive_local() -> Self {
        Self { allow_loopback: true, allow_private: true }
    }

    /// Whether a remote address may be latched to or sent to.
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
}

/// Returns the canonical form of a socket address: an IPv4-mapped or
/// IPv4-compatible IPv6 address becomes IPv4. This is the form the relay
/// latches and compares.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The IPv4 address an IPv6 address stands for, if any: mapped,
/// compatible, 6to4 or NAT64 well-known prefix.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated), excluding :: and ::1.
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    // 6to4: 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // NAT64 well-known prefix 64:ff9b::/96 and local-use 64:ff9b:1::/48.
    if s[0] == 0x0064 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    None
}

/// Classifies an address after canonicalization.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                return AddressClass::Unspecified;
            }
            if v6.is_loopback() {
                return AddressClass::Loopback;
            }
            if let Some(v4) = embedded_ipv4(v6) {
                return classify_v4(v4);
            }
            let s = v6.segments();
            if s[0] & 0xff00 == 0xff00 {
                AddressClass::Multicast
            } else if s[0] & 0xffc0 == 0xfe80 {
                AddressClass::LinkLocal
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                AddressClass::Metadata
            } else if s[0] & 0xfe00 == 0xfc00 {
                AddressClass::Private
            } else if s[0] & 0xffc0 == 0xfec0 || (s[0] == 0x2001 && s[1] == 0x0db8) {
                // site-local (deprecated) and documentation space
                AddressClass::Reserved
            } else {
                AddressClass::Public
            }
        }
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
    } else if v4 == Ipv4Addr::new(100, 100, 100, 200) || v4 == Ipv4Addr::new(192, 0, 0, 192) {
        // Alibaba Cloud and Oracle Cloud metadata.
        AddressClass::Metadata
    } else if v4.is_loopback() {
        AddressClass::Loopback
    } else if v4.is_private() || (o[0] == 100 && o[1] & 0xc0 == 64) {
        AddressClass::Private
    } else if o[0] >= 240 {
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
            "127.0.0.1:1000",
            "[::1]:1000",
            "10.1.2.3:1000",
            "192.168.1.1:1000",
            "100.64.0.1:1000",
            "[fd12::1]:1000",
            "240.0.0.1:1000",
            "8.8.8.8:0",
            // disguised: mapped, compatible, 6to4, NAT64
            "[::ffff:127.0.0.1]:1000",
            "[::ffff:169.254.169.254]:80",
            "[::127.0.0.1]:1000",
            "[2002:a9fe:a9fe::1]:80",
            "[64:ff9b::a9fe:a9fe]:80",
            "[64:ff9b::7f00:1]:1000",
        ] {
            assert!(!p.allows(sa(bad)), "{bad} must be refused");
        }
        for good in ["8.8.8.8:5004", "[2001:4860::8888]:5004", "[::ffff:8.8.8.8]:5004", "[64:ff9b::808:808]:1"] {
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
        let only_lo = PeerPolicy { allow_loopback: true, allow_private: false };
        assert!(!only_lo.allows(sa("10.0.0.1:1000")));
    }
}
