//! Ethernet frames carrying UDP over IPv4 or IPv6, for the kernel fast
//! path's program (`BPF_PROG_TEST_RUN`): built with chosen lies, checked
//! as Linux would check them after tc ingress, and read back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// How a test frame lies or differs from a plain one.
#[derive(Clone, Default)]
pub struct Tweak {
    /// IPv4 TTL / IPv6 hop limit (57 otherwise).
    pub ttl: Option<u8>,
    /// IPv4 TOS / IPv6 traffic class (0 otherwise).
    pub tos: Option<u8>,
    /// IPv4 options (4 bytes of NOPs): IHL 6.
    pub options: bool,
    /// IPv4 flags/offset field (more fragments, an offset).
    pub frag: Option<u16>,
    /// IP total length (IPv6 payload length) other than the real one.
    pub ip_len: Option<u16>,
    /// UDP length other than the real one.
    pub udp_len: Option<u16>,
    /// Bytes after the datagram (Ethernet padding).
    pub trailer: usize,
    /// An IPv4 header checksum that does not verify.
    pub bad_ip_checksum: bool,
    /// A UDP checksum that does not verify.
    pub bad_udp_checksum: bool,
    /// IPv4 protocol / IPv6 next header other than UDP.
    pub protocol: Option<u8>,
}

/// Folds a ones-complement sum to 16 bits.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The ones-complement sum of `bytes` as 16-bit big-endian words.
pub fn sum16(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// The UDP checksum of `udp` (header with a zero checksum, and payload).
pub fn udp_checksum(src: IpAddr, dst: IpAddr, udp: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend(s.octets());
            pseudo.extend(d.octets());
            pseudo.extend([0, 17]);
            pseudo.extend((udp.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend(s.octets());
            pseudo.extend(d.octets());
            pseudo.extend((udp.len() as u32).to_be_bytes());
            pseudo.extend([0, 0, 0, 17]);
        }
        _ => unreachable!("one family"),
    }
    let c = !fold(sum16(&pseudo) + sum16(udp));
    if c == 0 {
        0xffff
    } else {
        c
    }
}

/// An Ethernet frame carrying `payload` from `src` to `dst` over UDP.
pub fn frame(src: SocketAddr, dst: SocketAddr, payload: &[u8], t: &Tweak) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend(src.port().to_be_bytes());
    udp.extend(dst.port().to_be_bytes());
    udp.extend(t.udp_len.unwrap_or((8 + payload.len()) as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(payload);
    // A lying UDP length comes with the checksum the stack will check: the
    // one over the bytes that length names.
    let covered = usize::from(t.udp_len.unwrap_or(u16::MAX)).clamp(8, udp.len());
    let mut sum = udp_checksum(src.ip(), dst.ip(), &udp[..covered]);
    if t.bad_udp_checksum {
        sum ^= 0x0101;
    }
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend([0x08, 0x00]);
            let ihl = if t.options { 6 } else { 5 };
            let total = t.ip_len.unwrap_or((4 * ihl + udp.len()) as u16);
            let mut ip = vec![0x40 | ihl as u8, t.tos.unwrap_or(0)];
            ip.extend(total.to_be_bytes());
            ip.extend([0x12, 0x34]);
            ip.extend(t.frag.unwrap_or(0x4000).to_be_bytes());
            ip.extend([t.ttl.unwrap_or(57), t.protocol.unwrap_or(17), 0, 0]);
            ip.extend(s.octets());
            ip.extend(d.octets());
            if t.options {
                ip.extend([1, 1, 1, 0]);
            }
            let mut c = !fold(sum16(&ip));
            if t.bad_ip_checksum {
                c ^= 0x0101;
            }
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend(ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend([0x86, 0xdd]);
            let tc = t.tos.unwrap_or(0);
            f.extend([0x60 | (tc >> 4), ((tc & 0x0f) << 4) | 0x0a, 0xbc, 0xde]);
            f.extend(t.ip_len.unwrap_or(udp.len() as u16).to_be_bytes());
            f.extend([t.protocol.unwrap_or(17), t.ttl.unwrap_or(57)]);
            f.extend(s.octets());
            f.extend(d.octets());
        }
        _ => unreachable!("one family"),
    }
    f.extend(udp);
    f.extend(std::iter::repeat_n(0, t.trailer));
    f
}

/// What Linux delivers to a UDP socket for `frame` (source, destination,
/// payload), or nothing: the checks the stack makes after tc ingress.
pub fn stack_delivers(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
    let l3 = frame.get(14..)?;
    let be16 = |b: &[u8], at: usize| usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
    let (src, dst, udp) = match frame.get(12..14)? {
        [0x08, 0x00] => {
            let ihl = usize::from(l3.first()? & 0x0f) * 4;
            if l3[0] >> 4 != 4 || ihl < 20 || l3.len() < ihl || fold(sum16(&l3[..ihl])) != 0xffff {
                return None;
            }
            let total = be16(l3, 2);
            if total < ihl || total > l3.len() || be16(l3, 6) & 0x3fff != 0 || l3[9] != 17 {
                return None; // truncated, a fragment held for reassembly, not UDP
            }
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(l3[o], l3[o + 1], l3[o + 2], l3[o + 3]));
            (ip(12), ip(16), &l3[ihl..total])
        }
        [0x86, 0xdd] => {
            let plen = be16(l3, 4);
            if l3.len() < 40 || l3[0] >> 4 != 6 || 40 + plen > l3.len() || l3[6] != 17 {
                return None;
            }
            let ip = |o: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&l3[o..o + 16]).expect("16")));
            (ip(8), ip(24), &l3[40..40 + plen])
        }
        _ => return None,
    };
    let ulen = be16(udp, 4);
    if udp.len() < 8 || ulen < 8 || ulen > udp.len() {
        return None;
    }
    let udp = &udp[..ulen]; // the stack trims to the UDP length
    let check = be16(udp, 6);
    let mut zeroed = udp.to_vec();
    zeroed[6..8].copy_from_slice(&[0, 0]);
    let valid = if check == 0 { src.is_ipv4() } else { usize::from(udp_checksum(src, dst, &zeroed)) == check };
    if !valid {
        return None;
    }
    let port = |o: usize| u16::from_be_bytes([udp[o], udp[o + 1]]);
    Some((SocketAddr::new(src, port(0)), SocketAddr::new(dst, port(2)), udp[8..].to_vec()))
}

/// The addresses, ports, TTL and TOS of a frame the program rewrote, and
/// its payload.
pub fn parse_out(frame: &[u8]) -> (SocketAddr, SocketAddr, u8, u8, Vec<u8>) {
    let l3 = &frame[14..];
    let port = |b: &[u8], o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    if frame[12..14] == [0x08, 0x00] {
        let ihl = usize::from(l3[0] & 0x0f) * 4;
        assert_eq!(fold(sum16(&l3[..ihl])), 0xffff, "the IPv4 header checksum still verifies");
        let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(l3[o], l3[o + 1], l3[o + 2], l3[o + 3]));
        let udp = &l3[ihl..];
        (SocketAddr::new(ip(12), port(udp, 0)), SocketAddr::new(ip(16), port(udp, 2)), l3[8], l3[1], udp[8..].to_vec())
    } else {
        let ip = |o: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&l3[o..o + 16]).expect("16")));
        let udp = &l3[40..];
        let class = ((l3[0] & 0x0f) << 4) | (l3[1] >> 4);
        (SocketAddr::new(ip(8), port(udp, 0)), SocketAddr::new(ip(24), port(udp, 2)), l3[7], class, udp[8..].to_vec())
    }
}

/// Whether the UDP checksum of a (rewritten) frame verifies: the stack
/// model delivers it.
pub fn udp_checksum_verifies(frame: &[u8]) -> bool {
    stack_delivers(frame).is_some()
}
