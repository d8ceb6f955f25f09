//! Sending many datagrams, each from its own socket to its own address, in
//! one system call: `sendmmsg` batches only one socket, so a load generator
//! with a socket per simulated call submits a batch of `SENDMSG` operations
//! to io_uring instead. Falls back to one `sendto` per datagram where
//! io_uring is unavailable (e.g. Docker's default seccomp profile).

use std::io;
use std::mem::zeroed;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

use super::sys::encode_addr;

/// One datagram to send: from socket `fd`, `bytes`, to `to`.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The sending socket (must stay open for the call).
    pub fd: RawFd,
    /// The datagram.
    pub bytes: &'a [u8],
    /// Its destination.
    pub to: SocketAddr,
}

/// How a [`BatchSender`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    /// io_uring `SENDMSG` batches.
    Uring,
    /// One `sendto` per datagram.
    Plain,
}

/// A reusable batch sender.
pub struct BatchSender {
    ring: Option<IoUring>,
    depth: usize,
    hdrs: Vec<libc::msghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
}

// SAFETY: the raw pointers inside `hdrs`/`iovs` are rebuilt before every
// use and only point at this struct's own vectors and the caller's slices
// for the duration of one `send` call.
unsafe impl Send for BatchSender {}

impl std::fmt::Debug for BatchSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSender").field("kind", &self.kind()).field("depth", &self.depth).finish()
    }
}

impl BatchSender {
    /// A sender submitting up to `depth` datagrams per system call
    /// (io_uring when it works here, plain `sendto` otherwise).
    pub fn new(depth: usize) -> Self {
        let depth = depth.clamp(1, 4096);
        let ring = IoUring::builder().build(depth.next_power_of_two() as u32).ok();
        // SAFETY: msghdr, iovec and sockaddr_storage are plain C structs for
        // which all-zero bytes are valid values.
        let (hdr, name): (libc::msghdr, libc::sockaddr_storage) = unsafe { (zeroed(), zeroed()) };
        let iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        Self { ring, depth, hdrs: vec![hdr; depth], iovs: vec![iov; depth], names: vec![name; depth] }
    }

    /// A sender that never uses io_uring.
    pub fn plain() -> Self {
        let mut s = Self::new(1);
        s.ring = None;
        s
    }

    /// How this sender sends.
    pub fn kind(&self) -> BatchKind {
        if self.ring.is_some() {
            BatchKind::Uring
        } else {
            BatchKind::Plain
        }
    }

    /// Sends every datagram; returns how many the kernel refused (full
    /// buffers, unreachable destinations). Never blocks on a full socket
    /// buffer for long: io_uring waits for room like a blocking send would.
    pub fn send(&mut self, items: &[Outgoing<'_>]) -> usize {
        if self.ring.is_none() {
            return items.iter().filter(|o| plain_send(o).is_err()).count();
        }
        let mut failed = 0;
        for chunk in items.chunks(self.depth) {
            failed += self.send_chunk(chunk);
        }
        failed
    }

    fn send_chunk(&mut self, chunk: &[Outgoing<'_>]) -> usize {
        let Some(ring) = self.ring.as_mut() else { return chunk.len() };
        let mut failed = 0;
        let mut pushed = 0;
        for (i, o) in chunk.iter().enumerate() {
            let Some(name_len) = encode_addr(o.to, o.to.is_ipv6(), &mut self.names[i]) else {
                failed += 1;
                continue;
            };
            self.iovs[i] = libc::iovec { iov_base: o.bytes.as_ptr() as *mut libc::c_void, iov_len: o.bytes.len() };
            let h = &mut self.hdrs[i];
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = name_len;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            let entry = opcode::SendMsg::new(types::Fd(o.fd), &self.hdrs[i]).build().user_data(i as u64);
            // SAFETY: the entry points at hdrs[i], which points at iovs[i],
            // names[i] and the caller's bytes; all stay alive and untouched
            // until every submitted entry has completed below.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                failed += 1;
                continue;
            }
            pushed += 1;
        }
        // Every submitted entry must complete before returning: the kernel
        // holds pointers into our vectors and the caller's bytes until then.
        let mut done = 0;
        let mut errors = 0u32;
        while done < pushed {
            if let Err(e) = ring.submit_and_wait(pushed - done) {
                if e.kind() != io::ErrorKind::Interrupted {
                    errors += 1;
                    if errors > 10_000 {
                        // The ring is broken with our pointers still inside:
                        // returning could let the kernel write freed memory.
                        std::process::abort();
                    }
                }
            }
            for cqe in ring.completion() {
                done += 1;
                if cqe.result() < 0 {
                    failed += 1;
                }
            }
        }
        failed
    }
}

fn plain_send(o: &Outgoing<'_>) -> io::Result<()> {
    // SAFETY: zeroed sockaddr_storage is valid; encode_addr fills it.
    let mut name: libc::sockaddr_storage = unsafe { zeroed() };
    let len = encode_addr(o.to, o.to.is_ipv6(), &mut name).ok_or(io::ErrorKind::InvalidInput)?;
    // SAFETY: `bytes` and `name` are valid for the call; the kernel only reads them.
    let n = unsafe {
        libc::sendto(
            o.fd,
            o.bytes.as_ptr().cast(),
            o.bytes.len(),
            libc::MSG_DONTWAIT,
            (&name as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn run(mut sender: BatchSender) {
        let from: Vec<UdpSocket> = (0..8).map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind")).collect();
        let to = UdpSocket::bind("127.0.0.1:0").expect("bind");
        to.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
        let dest = to.local_addr().expect("addr");
        let payloads: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 20 + usize::from(i)]).collect();
        let items: Vec<Outgoing<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Outgoing { fd: from[i % from.len()].as_raw_fd(), bytes: p, to: dest })
            .collect();
        assert_eq!(sender.send(&items), 0);
        let mut seen = std::collections::HashMap::new();
        let mut buf = [0u8; 256];
        for _ in 0..items.len() {
            let (n, src) = to.recv_from(&mut buf).expect("every datagram arrives");
            seen.insert(buf[0], (n, src));
        }
        for (i, p) in payloads.iter().enumerate() {
            let (n, src) = seen[&(i as u8)];
            assert_eq!(n, p.len());
            assert_eq!(src, from[i % from.len()].local_addr().expect("addr"), "sent from its own socket");
        }
    }

    #[test]
    fn a_batch_leaves_each_from_its_own_socket_to_its_address() {
        let s = BatchSender::new(16);
        if s.kind() == BatchKind::Plain && std::env::var_os("UCMRC_ALLOW_NO_URING").is_none() {
            panic!("io_uring unavailable here; set UCMRC_ALLOW_NO_URING=1 to accept the fallback");
        }
        run(s);
        run(BatchSender::plain());
    }
}
