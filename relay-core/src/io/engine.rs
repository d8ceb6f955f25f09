//! The shard side of the datapath: backend selection, relay sockets, the
//! command mailbox and the loop contract every backend implements.
#![allow(unsafe_code)]

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use crate::shard::{Command, Response, Shard};

use super::{portable, sys, uring};

crate::names::named! {
    /// Which datapath implementation runs the shards.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum BackendKind {
        /// io_uring when the probe succeeds, otherwise portable (the reason is
        /// logged and reported by [`Relay::datapath`](crate::relay::Relay::datapath));
        /// built with the `ebpf` feature, plus the kernel fast path on the
        /// non-loopback interfaces holding the relay's addresses when the kernel
        /// and privileges allow (otherwise the reason is logged at info level and
        /// reported in [`DatapathInfo::fast_path`](crate::relay::DatapathInfo::fast_path)).
        #[default]
        Auto => "auto",
        /// io_uring: multishot receive into a provided-buffer ring, zero-copy
        /// forwarding from the receive buffer. Fails to start when unavailable.
        Uring => "uring",
        /// epoll + `recvmmsg`/`sendmmsg`; works everywhere Linux runs,
        /// including containers whose seccomp profile blocks io_uring.
        Portable => "portable",
        /// `Auto`'s userspace datapath plus the kernel fast path (the `ebpf`
        /// feature): established legs are forwarded by a tc program. When it
        /// cannot load (no BPF privileges, an old kernel, only wildcard relay
        /// addresses, built without the feature) the relay says why in
        /// [`DatapathInfo::fast_path`](crate::relay::DatapathInfo::fast_path)
        /// and runs userspace only.
        Ebpf => "ebpf",
    }
}

impl BackendKind {
    /// Resolves `Auto` by probing io_uring. Returns the backend to run and,
    /// for `Auto` falling back, why io_uring was not used.
    pub fn resolve(self) -> Result<(BackendKind, Option<String>), String> {
        match self {
            BackendKind::Portable => Ok((BackendKind::Portable, None)),
            BackendKind::Uring => uring::probe().map(|()| (BackendKind::Uring, None)),
            BackendKind::Auto | BackendKind::Ebpf => match uring::probe() {
                Ok(()) => Ok((BackendKind::Uring, None)),
                Err(reason) => Ok((BackendKind::Portable, Some(reason))),
            },
        }
    }
}

/// Socket settings for relay ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Receive buffer per socket (tries `SO_RCVBUFFORCE`, then `SO_RCVBUF`).
    pub recv_buffer: usize,
    /// Send buffer per socket (0: kernel default).
    pub send_buffer: usize,
    /// Bind even when the address is not (yet) on this host
    /// (`IP_FREEBIND`): a standby binds the service address's ports before
    /// the address moves to it.
    pub freebind: bool,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self { recv_buffer: 4 << 20, send_buffer: 0, freebind: false }
    }
}

/// Creates a non-blocking UDP socket bound to `ip:port` with the configured
/// buffer sizes (dual-stack when `ip` is `::`).
pub fn bind_udp(ip: IpAddr, port: u16, options: &SocketOptions) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if ip.is_ipv6() { Domain::IPV6 } else { Domain::IPV4 };
    // Non-blocking from the start: no fcntl round trip per socket (TURN
    // opens one per allocation).
    let sock = Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), Some(Protocol::UDP))?;
    if ip.is_ipv6() && ip.is_unspecified() {
        sock.set_only_v6(false)?;
    }
    if options.recv_buffer > 0 {
        sys::set_large_recv_buffer(&sock, options.recv_buffer)?;
    }
    if options.send_buffer > 0 {
        sock.set_send_buffer_size(options.send_buffer)?;
    }
    if options.freebind {
        if ip.is_ipv6() {
            sock.set_freebind_v6(true)?;
        } else {
            sock.set_freebind_v4(true)?;
        }
    }
    sock.bind(&std::net::SocketAddr::new(ip, port).into())?;
    Ok(sock)
}

/// Creates a non-blocking TCP socket bound to `addr` with `SO_REUSEADDR`,
/// `SO_REUSEPORT` when `reuse_port` (sockets sharing one address: a TURN
/// TCP allocation's listener and the connections it dials), and
/// `IP_FREEBIND` when `freebind`; not yet listening or connected.
pub fn bind_tcp(addr: std::net::SocketAddr, reuse_port: bool, freebind: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    if freebind {
        if addr.is_ipv6() {
            sock.set_freebind_v6(true)?;
        } else {
            sock.set_freebind_v4(true)?;
        }
    }
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "cpu index too large"));
    }
    // SAFETY: cpu_set_t is a plain bitmask; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside `set` for an index below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: passes a valid cpu_set_t and its size for the calling thread (0).
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A reply callback, run on the shard thread with the command's response.
pub type Reply = Box<dyn FnOnce(Response) + Send>;

/// What travels to a shard.
pub enum Envelope {
    /// A command and where its answer goes.
    Command(Command, Reply),
    /// Release every session and stop the thread.
    Stop,
}

/// The control plane's end of a shard's queue.
#[derive(Clone)]
pub struct Mailbox {
    tx: SyncSender<Envelope>,
    wake: Arc<sys::EventFd>,
    free_ports: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").field("free_ports", &self.free_ports()).finish()
    }
}

/// The shard's queue is full (back-pressure) or the shard has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxError {
    /// Queue full.
    Full,
    /// Shard thread gone.
    Closed,
}

impl Mailbox {
    /// Queues an envelope and wakes the shard.
    pub fn send(&self, env: Envelope) -> Result<(), MailboxError> {
        match self.tx.try_send(env) {
            Ok(()) => {
                self.wake.wake();
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(MailboxError::Full),
            Err(TrySendError::Disconnected(_)) => Err(MailboxError::Closed),
        }
    }

    /// Free ports the shard reported last (updated after each command/timer).
    pub fn free_ports(&self) -> usize {
        self.free_ports.load(Ordering::Relaxed)
    }
}

/// The shard thread's end of its queue.
pub struct Inbox {
    rx: Receiver<Envelope>,
    pub(super) wake: Arc<sys::EventFd>,
    free_ports: Arc<AtomicUsize>,
}

/// Creates a mailbox/inbox pair with `capacity` queued envelopes.
pub fn mailbox(capacity: usize, free_ports: usize) -> std::io::Result<(Mailbox, Inbox)> {
    let (tx, rx) = sync_channel(capacity.max(1));
    let wake = Arc::new(sys::EventFd::new()?);
    let free = Arc::new(AtomicUsize::new(free_ports));
    Ok((Mailbox { tx, wake: wake.clone(), free_ports: free.clone() }, Inbox { rx, wake, free_ports: free }))
}

/// Everything a backend needs to run one shard on the current thread.
pub struct ShardRun {
    /// The state machine.
    pub shard: Shard,
    /// Its command queue.
    pub inbox: Inbox,
    /// Socket settings.
    pub sockets: SocketOptions,
    /// The kernel fast path driver, when the relay runs one.
    pub offload: ShardOffload,
    /// Told once the backend is set up (or why it could not be).
    pub ready: Option<std::sync::mpsc::SyncSender<Result<(), String>>>,
}

/// A shard's kernel fast path driver, when the relay runs one (the `ebpf`
/// feature and `BackendKind::Ebpf`); otherwise nothing.
#[derive(Debug, Default)]
pub struct ShardOffload {
    #[cfg(feature = "ebpf")]
    pub(crate) driver: Option<super::ebpf::OffloadDriver>,
}

impl ShardOffload {
    /// Applies the shard's pending decisions and reads counters back.
    pub(super) fn run(&mut self, _shard: &mut Shard, _now: std::time::Instant) {
        #[cfg(feature = "ebpf")]
        if let Some(d) = self.driver.as_mut() {
            d.run(_shard, _now);
        }
    }

    /// Brings a session's kernel counters up to date before a command on it.
    fn before_command(&mut self, _shard: &mut Shard, _now: std::time::Instant, _cmd: &Command) {
        #[cfg(feature = "ebpf")]
        if let Some(d) = self.driver.as_mut() {
            d.before_command(_shard, _now, _cmd);
        }
    }
}

impl ShardRun {
    /// Reports the outcome of the backend's setup to whoever started it.
    pub fn report_ready(&mut self, result: Result<(), String>) {
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(result);
        }
    }
}

impl Inbox {
    pub(super) fn publish_free_ports(&self, shard: &Shard) {
        self.free_ports.store(shard.free_ports(), Ordering::Relaxed);
    }

    /// Runs every queued command. Returns `true` when the shard must stop
    /// (a `Stop` envelope or a closed mailbox); every session is then
    /// already released.
    pub(super) fn run_commands(
        &self,
        shard: &mut Shard,
        sockets: &mut impl crate::shard::PortSockets,
        offload: &mut ShardOffload,
    ) -> bool {
        self.wake.drain();
        loop {
            match self.rx.try_recv() {
                Ok(Envelope::Command(cmd, reply)) => {
                    let now = std::time::Instant::now();
                    offload.before_command(shard, now, &cmd);
                    let resp = shard.handle_command(now, cmd, sockets);
                    // Installs and removals the command caused happen at once.
                    offload.run(shard, now);
                    self.publish_free_ports(shard);
                    reply(resp);
                }
                Ok(Envelope::Stop) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    shard.release_all(sockets);
                    self.publish_free_ports(shard);
                    return true;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => return false,
            }
        }
    }
}

/// A datapath backend: runs one shard's event loop on the calling thread
/// until it receives [`Envelope::Stop`] or its mailbox closes.
///
/// A backend only moves bytes: it binds and closes sockets when the shard
/// asks (through [`PortSockets`](crate::shard::PortSockets)), feeds received
/// datagrams to [`Shard::handle_datagram`], sends what the verdicts say,
/// runs commands and timers. All policy lives in the shard.
pub trait Datapath {
    /// Which backend this is.
    const KIND: BackendKind;
    /// Runs the shard loop.
    fn run(run: ShardRun) -> std::io::Result<()>;
}

/// Runs a shard with the backend of `kind`.
pub fn run_shard(kind: BackendKind, run: ShardRun) -> std::io::Result<()> {
    match kind {
        BackendKind::Portable => portable::Portable::run(run),
        BackendKind::Uring => uring::Uring::run(run),
        BackendKind::Auto | BackendKind::Ebpf => match uring::probe() {
            Ok(()) => uring::Uring::run(run),
            Err(_) => portable::Portable::run(run),
        },
    }
}
