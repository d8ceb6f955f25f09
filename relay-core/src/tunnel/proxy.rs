//! PROXY protocol version 2 (HAProxy's binary header) that tells the PBX
//! which endpoint address a tunnelled connection came from.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte v2 signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

fn v6(a: SocketAddr) -> [u8; 16] {
    match a.ip() {
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
        IpAddr::V6(ip) => ip.octets(),
    }
}

/// The header for a TCP connection from `src` to `dst` (`PROXY` command).
/// Mixed families are sent as IPv6 (IPv4-mapped).
pub fn header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11); // TCP over IPv4
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        _ => {
            h.push(0x21); // TCP over IPv6
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(src));
            h.extend_from_slice(&v6(dst));
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// Parses a v2 header at the start of `buf`: (source, destination, header
/// length). `None` if it is not a complete PROXY/TCP header.
pub fn parse(buf: &[u8]) -> Option<(SocketAddr, SocketAddr, usize)> {
    if buf.get(..12)? != SIGNATURE || *buf.get(12)? != 0x21 {
        return None;
    }
    let fam = *buf.get(13)?;
    let len = usize::from(u16::from_be_bytes([*buf.get(14)?, *buf.get(15)?]));
    let body = buf.get(16..16 + len)?;
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let (src, dst) = match fam {
        0x11 if len >= 12 => {
            let s: [u8; 4] = body[0..4].try_into().ok()?;
            let d: [u8; 4] = body[4..8].try_into().ok()?;
            (SocketAddr::from((s, port(&body[8..]))), SocketAddr::from((d, port(&body[10..]))))
        }
        0x21 if len >= 36 => {
            let s: [u8; 16] = body[0..16].try_into().ok()?;
            let d: [u8; 16] = body[16..32].try_into().ok()?;
            (SocketAddr::from((s, port(&body[32..]))), SocketAddr::from((d, port(&body[34..]))))
        }
        _ => return None,
    };
    Some((src, dst, 16 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_for_both_families() {
        let cases = [
            ("198.51.100.7:51234", "203.0.113.10:5061", 28),
            ("[2001:db8::7]:51234", "[2001:db8::10]:5061", 52),
            ("198.51.100.7:51234", "[2001:db8::10]:443", 52),
        ];
        for (src, dst, len) in cases {
            let (s, d): (SocketAddr, SocketAddr) = (src.parse().expect("src"), dst.parse().expect("dst"));
            let h = header(s, d);
            assert_eq!(h.len(), len);
            let (ps, pd, n) = parse(&h).expect("parses");
            assert_eq!(n, len);
            assert_eq!(ps.port(), s.port());
            assert_eq!(pd.port(), d.port());
            if s.is_ipv4() && d.is_ipv4() {
                assert_eq!((ps, pd), (s, d));
            }
        }
        // The HAProxy spec's example header bytes for 127.0.0.1:56324 → 127.0.0.1:443.
        let mut spec = SIGNATURE.to_vec();
        spec.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb]);
        assert_eq!(header("127.0.0.1:56324".parse().expect("a"), "127.0.0.1:443".parse().expect("b")), spec);
        assert!(parse(&spec[..20]).is_none());
    }
}
