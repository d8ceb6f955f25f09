//! Replies from the address a request was sent to, on a UDP socket bound
//! to a wildcard address (`0.0.0.0`, `::`): the kernel reports each
//! datagram's destination (`IP_PKTINFO`, `IPV6_PKTINFO`) and a reply names
//! it as its source. Without it, a host with several addresses (a service
//! address moved here at takeover, a secondary address) answers from
//! whichever address the route prefers, and a client whose socket is
//! connected to the address it asked — Kamailio's rtpengine module — never
//! sees the answer.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

use super::sys::{decode_addr, encode_addr};

/// Asks the kernel to report each datagram's destination address on `fd`
/// (for an IPv6 socket, also that of IPv4 datagrams it receives mapped).
pub fn enable(fd: RawFd, v6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let set = |level, name| {
        // SAFETY: a valid descriptor and an int option value that lives
        // for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    if v6 {
        set(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)?;
        // IPv4 datagrams on a dual-stack socket: best effort.
        let _ = set(libc::IPPROTO_IP, libc::IP_PKTINFO);
        Ok(())
    } else {
        set(libc::IPPROTO_IP, libc::IP_PKTINFO)
    }
}

/// Control buffer room for both kinds of pktinfo at once (a dual-stack
/// socket may be given both for one datagram).
const CONTROL: usize = 128;

/// Receives one datagram into `buf`: its length, its source and, when the
/// kernel reported it, the address it was sent to. Never blocks on a
/// non-blocking socket (`WouldBlock`).
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    // SAFETY: zeroed storage is a valid (empty) sockaddr_storage.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = [0u64; CONTROL / 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL as _;
    // SAFETY: `msg` describes live buffers of the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let source = decode_addr(&from, msg.msg_namelen)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram from an unknown address family"))?;
    let mut destination = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // within msg_controllen; each header is checked before its data is read
    // (read_unaligned: the data need not be aligned for the struct).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                destination = Some(IpAddr::V4(Ipv4Addr::from(info.ipi_addr.s_addr.to_ne_bytes())));
            } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>());
                let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                destination = Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, source, destination))
}

/// Sends `data` to `to` from address `from` (as received by [`recv`]; the
/// kernel picks when `None`). `v6`: the socket's family.
pub fn send(fd: RawFd, v6: bool, data: &[u8], to: SocketAddr, from: Option<IpAddr>) -> io::Result<usize> {
    // SAFETY: zeroed storage is a valid (empty) sockaddr_storage.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let namelen = encode_addr(to, v6, &mut name)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "destination of another family"))?;
    let mut control = [0u64; CONTROL / 8];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: zeroed msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = namelen;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // The source travels as the same control message the kernel reported:
    // IPv4 (also to a mapped destination on an IPv6 socket, which the
    // kernel sends as IPv4) or IPv6.
    let source = match (from, to) {
        (Some(IpAddr::V4(ip)), SocketAddr::V4(_)) => Some(IpAddr::V4(ip)),
        (Some(IpAddr::V4(ip)), SocketAddr::V6(t)) if t.ip().to_ipv4_mapped().is_some() => Some(IpAddr::V4(ip)),
        (Some(IpAddr::V6(ip)), SocketAddr::V6(_)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    if let Some(source) = source {
        let (level, kind, len) = match source {
            IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, size_of::<libc::in_pktinfo>()),
            IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, size_of::<libc::in6_pktinfo>()),
        };
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(len as u32) } as _;
        // SAFETY: the control buffer (128 bytes, 8-aligned) holds one header
        // and either pktinfo struct; CMSG_FIRSTHDR is non-null because
        // msg_controllen covers a header; we write whole values into it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = level;
            (*c).cmsg_type = kind;
            (*c).cmsg_len = libc::CMSG_LEN(len as u32) as _;
            match source {
                IpAddr::V4(ip) => {
                    let info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr { s_addr: u32::from_ne_bytes(ip.octets()) },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
                }
                IpAddr::V6(ip) => {
                    let info =
                        libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: ip.octets() }, ipi6_ifindex: 0 };
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>(), info);
                }
            }
        }
    }
    // SAFETY: `msg` describes live buffers of the lengths given.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// A request to 127.0.0.2 on a socket bound to 0.0.0.0: the reply names
    /// 127.0.0.2 as its source, so a client connected to that address takes
    /// it; the kernel's own choice would have been 127.0.0.1.
    #[test]
    fn a_reply_leaves_from_the_address_the_request_came_to() {
        let server = UdpSocket::bind("0.0.0.0:0").expect("bind");
        server.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        enable(server.as_raw_fd(), false).expect("IP_PKTINFO");
        let port = server.local_addr().expect("addr").port();
        let asked = SocketAddr::from(([127, 0, 0, 2], port));
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 64];
        for (n, reply_from) in [(0u8, true), (1, false)] {
            client.send_to(&[n], asked).expect("send");
            // Blocking until the request is there (recv itself never waits).
            let mut peek = [0u8; 1];
            server.peek_from(&mut peek).expect("a request");
            let (len, source, destination) = recv(server.as_raw_fd(), &mut buf).expect("recv");
            assert_eq!((len, buf[0], source), (1, n, client.local_addr().expect("addr")));
            assert_eq!(destination, Some(IpAddr::from([127, 0, 0, 2])));
            let from = if reply_from { destination } else { None };
            send(server.as_raw_fd(), false, b"reply", source, from).expect("send");
            let (len, replied_from) = client.recv_from(&mut buf).expect("the reply");
            assert_eq!(&buf[..len], b"reply");
            let expected = if reply_from { asked } else { SocketAddr::from(([127, 0, 0, 1], port)) };
            assert_eq!(replied_from, expected, "reply source (pktinfo: {reply_from})");
        }
    }
}
