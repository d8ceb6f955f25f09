//! Thin safe wrappers over the Linux calls the portable backend needs:
//! epoll, eventfd, socket buffer sizes, and `recvmmsg`/`sendmmsg` batches.
//!
//! Every `unsafe` block of the crate lives under `io/`, each with its SAFETY
//! argument.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::framing::HEADROOM;

/// Converts a libc return value into an `io::Result`.
fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// `epoll_create1(EPOLL_CLOEXEC)`.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall without pointers; the returned fd is owned
        // exclusively by the OwnedFd below.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Watches `fd` for readability (level-triggered) with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    /// Stops watching `fd`.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: `ev` is valid (ignored by the kernel for DEL since 2.6.9).
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) })?;
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: forever) and fills `events`; returns how many.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = events.len().min(i32::MAX as usize) as i32;
        // SAFETY: `events` is a valid writable buffer of `max` epoll_event.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        match cvt(n) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// A non-blocking eventfd used to wake a shard thread.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// `eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)`.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned by the OwnedFd below.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `fd` is fresh and exclusively ours.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Adds one to the counter (wakes a waiter).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. A full counter (EAGAIN)
        // still leaves the fd readable, which is all a wake needs.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// The raw descriptor (for epoll).
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Sets `SO_RCVBUFFORCE` (needs CAP_NET_ADMIN), falling back to `SO_RCVBUF`.
/// Returns the size the kernel reports afterwards.
pub fn set_large_recv_buffer(sock: &socket2::Socket, bytes: usize) -> io::Result<usize> {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: passes a pointer to a valid c_int and its size.
    let forced = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced != 0 {
        sock.set_recv_buffer_size(bytes)?;
    }
    sock.recv_buffer_size()
}

/// Writes `addr` into a `sockaddr_storage` for a socket of family `v6`
/// (IPv4 destinations become IPv4-mapped on IPv6 sockets). Returns the
/// address length, or `None` when the family cannot carry the address.
pub fn encode_addr(addr: SocketAddr, v6: bool, out: &mut libc::sockaddr_storage) -> Option<libc::socklen_t> {
    let addr = match (addr, v6) {
        (SocketAddr::V4(a), true) => SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0)),
        (SocketAddr::V6(a), false) => SocketAddr::V4(SocketAddrV4::new(a.ip().to_ipv4_mapped()?, a.port())),
        (a, _) => a,
    };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned
            // for sockaddr_in; we write one whole value at its start.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(), sin) };
            Some(size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>(), sin6) };
            Some(size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// Reads a socket address the kernel wrote into `storage`.
pub fn decode_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is aligned for it.
            let sin = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Size of each datagram buffer. Larger datagrams are truncated and dropped
/// with a counted reason.
pub const DATAGRAM_BUFFER: usize = 2048;

/// One batch slot: headroom, then the receive buffer.
const SLOT: usize = HEADROOM + DATAGRAM_BUFFER;

/// One received or to-be-sent datagram in a [`MsgBatch`].
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Slot in the batch.
    pub slot: usize,
    /// Bytes received (capped at the buffer size).
    pub len: usize,
    /// Source address, if the kernel gave a known family.
    pub src: Option<SocketAddr>,
    /// The datagram was larger than the buffer.
    pub truncated: bool,
}

/// Fixed arrays for `recvmmsg`/`sendmmsg`: `capacity` slots, each
/// [`HEADROOM`] free bytes then a [`DATAGRAM_BUFFER`]-byte receive buffer,
/// with their iovecs, headers and addresses.
pub struct MsgBatch {
    bufs: Box<[u8]>,
    iovecs: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_storage]>,
    hdrs: Box<[libc::mmsghdr]>,
    capacity: usize,
}

// SAFETY: the raw pointers inside iovecs/hdrs point only into this struct's
// own heap allocations, and they are rebuilt before every call.
unsafe impl Send for MsgBatch {}

impl std::fmt::Debug for MsgBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgBatch").field("capacity", &self.capacity).finish()
    }
}

impl MsgBatch {
    /// A batch of `capacity` slots.
    pub fn new(capacity: usize) -> Self {
        let iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        // SAFETY: sockaddr_storage and mmsghdr are plain C structs for which
        // all-zero bytes are a valid value.
        let zero_name: libc::sockaddr_storage = unsafe { zeroed() };
        // SAFETY: as above.
        let zero_hdr: libc::mmsghdr = unsafe { zeroed() };
        Self {
            bufs: vec![0u8; capacity * SLOT].into_boxed_slice(),
            iovecs: vec![iov; capacity].into_boxed_slice(),
            names: vec![zero_name; capacity].into_boxed_slice(),
            hdrs: vec![zero_hdr; capacity].into_boxed_slice(),
            capacity,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The bytes of a slot.
    pub fn slot(&self, slot: usize, len: usize) -> &[u8] {
        let start = slot * SLOT + HEADROOM;
        &self.bufs[start..start + len.min(DATAGRAM_BUFFER)]
    }

    /// A slot's whole region: [`HEADROOM`] bytes, then its datagram (for
    /// [`Framing::apply`](crate::framing::Framing::apply) in place).
    pub fn region_mut(&mut self, slot: usize) -> &mut [u8] {
        &mut self.bufs[slot * SLOT..(slot + 1) * SLOT]
    }

    /// Receives up to `count` datagrams from `fd` into slots `first..`, without blocking.
    pub fn recv(&mut self, fd: RawFd, first: usize, count: usize, out: &mut Vec<Received>) -> io::Result<usize> {
        let count = count.min(self.capacity.saturating_sub(first));
        if count == 0 {
            return Ok(0);
        }
        for i in first..first + count {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i * SLOT + HEADROOM..].as_mut_ptr().cast(),
                iov_len: DATAGRAM_BUFFER,
            };
            let hdr = &mut self.hdrs[i];
            hdr.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = &mut self.iovecs[i];
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = std::ptr::null_mut();
            hdr.msg_hdr.msg_controllen = 0;
            hdr.msg_hdr.msg_flags = 0;
            hdr.msg_len = 0;
        }
        // SAFETY: hdrs[first..first+count] point at iovecs and names that
        // point into `self.bufs`/`self.names`, all alive and exclusively
        // borrowed for the call; the kernel writes at most iov_len bytes.
        let n = unsafe {
            libc::recvmmsg(fd, self.hdrs[first..].as_mut_ptr(), count as u32, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        let n = n as usize;
        for i in first..first + n {
            let h = &self.hdrs[i];
            out.push(Received {
                slot: i,
                len: (h.msg_len as usize).min(DATAGRAM_BUFFER),
                src: decode_addr(&self.names[i], h.msg_hdr.msg_namelen),
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(n)
    }

    /// Sends datagrams `(slot, bytes of its region, destination)` out of
    /// `fd` with as few `sendmmsg` calls as the kernel allows (a datagram as
    /// received is `HEADROOM..HEADROOM + len`). Returns how many were sent
    /// and how many failed (counted, never retried forever).
    pub fn send(&mut self, fd: RawFd, v6: bool, items: &[(usize, Range<usize>, SocketAddr)]) -> (usize, usize) {
        let mut sent = 0;
        let mut failed = 0;
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(items.len());
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(items.len());
        let mut names: Vec<MaybeUninit<libc::sockaddr_storage>> = Vec::with_capacity(items.len());
        let mut lens = Vec::with_capacity(items.len());
        for (slot, bytes, to) in items {
            let (slot, to) = (*slot, *to);
            if slot >= self.capacity || bytes.start > bytes.end || bytes.end > SLOT {
                failed += 1;
                continue;
            }
            let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
            // SAFETY: zeroed sockaddr_storage is a valid value.
            let name_len = encode_addr(to, v6, unsafe { storage.assume_init_mut() });
            let Some(name_len) = name_len else {
                failed += 1;
                continue;
            };
            names.push(storage);
            lens.push(name_len);
            iovs.push(libc::iovec {
                iov_base: self.bufs[slot * SLOT + bytes.start..].as_mut_ptr().cast(),
                iov_len: bytes.len(),
            });
        }
        for i in 0..iovs.len() {
            // SAFETY: all-zero mmsghdr is valid; fields are set below.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = names[i].as_mut_ptr().cast();
            h.msg_hdr.msg_namelen = lens[i];
            h.msg_hdr.msg_iov = &mut iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            hdrs.push(h);
        }
        let mut at = 0;
        while at < hdrs.len() {
            let left = (hdrs.len() - at) as u32;
            // SAFETY: hdrs[at..] point at iovecs and names in vectors that
            // live until the end of this function and are not moved; the
            // iovecs point into `self.bufs`, which outlives the call.
            let n = unsafe { libc::sendmmsg(fd, hdrs[at..].as_mut_ptr(), left, libc::MSG_DONTWAIT) };
            if n <= 0 {
                // This datagram failed (full buffer, unreachable...): count it
                // and go on with the rest.
                failed += 1;
                at += 1;
            } else {
                sent += n as usize;
                at += n as usize;
            }
        }
        (sent, failed)
    }
}

/// Calls `f` with the name and address of every IPv4/IPv6 address
/// configured on this host's interfaces (`getifaddrs`), until it returns
/// `false`.
fn for_each_interface_address(mut f: impl FnMut(&std::ffi::CStr, std::net::IpAddr) -> bool) -> io::Result<()> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list it receives
    // is owned by us until `freeifaddrs`.
    cvt(unsafe { libc::getifaddrs(&mut head) })?;
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned,
        // valid until freeifaddrs below.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let addr = ifa.ifa_addr;
        if addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a non-null ifa_addr points at a sockaddr whose family
        // field is always readable.
        let family = i32::from(unsafe { (*addr).sa_family });
        let ip = if family == libc::AF_INET {
            // SAFETY: AF_INET entries carry a full sockaddr_in.
            let sin = unsafe { &*(addr as *const libc::sockaddr_in) };
            std::net::IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
        } else if family == libc::AF_INET6 {
            // SAFETY: AF_INET6 entries carry a full sockaddr_in6.
            let sin6 = unsafe { &*(addr as *const libc::sockaddr_in6) };
            std::net::IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
        } else {
            continue;
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list,
        // valid until freeifaddrs below.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        if !f(name, ip) {
            break;
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(())
}

/// The CPU time process `pid` has used so far: every thread's, those that
/// have ended included, at nanosecond precision (`clock_getcpuclockid`,
/// then `clock_gettime` on that clock). Summing `/proc/PID/task/*/schedstat`
/// instead loses a thread's time when it ends between two readings — a
/// measurement window could even come out negative.
pub fn process_cpu_time(pid: u32) -> io::Result<std::time::Duration> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock_getcpuclockid writes one clockid_t into `clock`, a
    // valid local for the call's duration.
    let r = unsafe { libc::clock_getcpuclockid(pid, &mut clock) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, a valid local.
    cvt(unsafe { libc::clock_gettime(clock, &mut ts) })?;
    Ok(std::time::Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0)))
}

/// Every IP address configured on this host's interfaces right now
/// (`getifaddrs`), loopback included. The peer policy uses it to recognize
/// the relay's own addresses when a socket is bound to a wildcard address.
pub fn local_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let mut out = Vec::new();
    for_each_interface_address(|_, ip| {
        out.push(ip);
        true
    })?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// The name of the interface that holds address `ip`, if any.
pub fn interface_of(ip: std::net::IpAddr) -> io::Result<Option<String>> {
    let mut found = None;
    for_each_interface_address(|name, a| {
        if a == ip {
            found = Some(name.to_string_lossy().into_owned());
        }
        found.is_none()
    })?;
    Ok(found)
}

/// The index of interface `name` (`if_nametoindex`), if it exists.
pub fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The interface the routing table sends `to` through, as the kernel picks
/// it for a fresh socket (connect, then the interface that holds the chosen
/// source address). `None` when unroutable.
pub fn egress_ifindex(to: std::net::SocketAddr) -> Option<u32> {
    let any: std::net::IpAddr = if to.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let s = std::net::UdpSocket::bind((any, 0)).ok()?;
    s.connect(to).ok()?;
    let name = interface_of(s.local_addr().ok()?.ip()).ok()??;
    ifindex_of(&name)
}

/// The CPUs this process may run on (its affinity mask), by index.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { zeroed() };
    // SAFETY: passes a valid cpu_set_t and its size for the calling process (0).
    cvt(unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) })?;
    // SAFETY: CPU_ISSET reads inside `set` for indexes below CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::Framing;
    use std::net::UdpSocket;
    use std::time::Duration;

    /// A thread's CPU time still counts once it has ended.
    #[test]
    fn a_process_cpu_time_keeps_its_ended_threads_time() {
        let pid = std::process::id();
        let before = process_cpu_time(pid).expect("cpu time");
        let burned = std::thread::spawn(|| {
            let start = process_cpu_time(std::process::id()).expect("cpu time");
            let mut x = 1u64;
            while process_cpu_time(std::process::id()).expect("cpu time") < start + Duration::from_millis(50) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            x
        });
        burned.join().expect("the burning thread");
        let after = process_cpu_time(pid).expect("cpu time");
        assert!(after >= before + Duration::from_millis(50), "{before:?} -> {after:?}");
        assert!(process_cpu_time(u32::MAX).is_err(), "no such process");
    }

    /// A datagram received into a batch leaves framed in place: a header
    /// written into the slot's headroom, or one taken off — real sockets.
    #[test]
    fn a_batch_sends_framed_datagrams_from_its_receive_buffers() {
        let (peer, relay) =
            (UdpSocket::bind("127.0.0.1:0").expect("bind"), UdpSocket::bind("127.0.0.1:0").expect("bind"));
        peer.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let to = peer.local_addr().expect("addr");
        let mut batch = MsgBatch::new(4);
        for payload in [b"\x40\x01\x00\x04data".as_slice(), b"media"] {
            peer.send_to(payload, relay.local_addr().expect("addr")).expect("send");
        }
        let mut got = Vec::new();
        while got.len() < 2 {
            relay.set_nonblocking(false).expect("blocking");
            let mut one = [0u8; 1];
            relay.peek_from(&mut one).expect("a datagram waits");
            batch.recv(relay.as_raw_fd(), got.len(), 2 - got.len(), &mut got).expect("recv");
        }
        assert_eq!(batch.slot(got[0].slot, got[0].len), b"\x40\x01\x00\x04data");
        let strip = Framing::Strip(4).apply(batch.region_mut(got[0].slot), HEADROOM, got[0].len).expect("strip");
        let prepend = Framing::Prepend(*b"\x40\x01\x00\x05").apply(batch.region_mut(got[1].slot), HEADROOM, got[1].len);
        let items = [(got[0].slot, strip, to), (got[1].slot, prepend.expect("headroom"), to)];
        assert_eq!(batch.send(relay.as_raw_fd(), false, &items), (2, 0));
        let mut buf = [0u8; 64];
        let (n, _) = peer.recv_from(&mut buf).expect("stripped");
        assert_eq!(&buf[..n], b"data");
        let (n, _) = peer.recv_from(&mut buf).expect("prepended");
        assert_eq!(&buf[..n], b"\x40\x01\x00\x05media");
        // A range outside the slot is refused, not sent.
        assert_eq!(batch.send(relay.as_raw_fd(), false, &[(0, 0..SLOT + 1, to)]), (0, 1));
    }
}
