//! TURN on tokio sockets: the driver of a [`TurnServer`] over UDP, TCP and
//! TLS (RFC 8656 §3.1). One task per UDP listener, per relayed socket and
//! per stream connection, one for timers; the server is shared behind a
//! mutex held only for a decision, never across a send.
//!
//! It binds relayed sockets when the server asks ([`Command::OpenRelay`]),
//! closes them when told, and applies the framing decisions: a peer's
//! datagram is received four bytes into its buffer so a ChannelData header
//! goes in front of it without a copy. Over TCP and TLS, messages are
//! framed by their own length fields and ChannelData is padded to four
//! bytes; a connection's end deletes its allocation, and a connection that
//! holds no allocation is closed after [`STREAM_IDLE`].

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::allocation::{ClientKey, RelayId, Transport};
use super::connections::ConnectionId;
use super::proto::{Family, CHANNEL_HEADER_LEN};
use super::server::{ClientOutput, Command, PeerOutput, TurnNow, TurnServer};
use super::stats::TurnStats;
use crate::framing::Framing;
use crate::io::accept::accept_or_back_off;
use crate::wire::stun::HEADER_LEN;

/// Largest datagram received from a client.
const MAX_DATAGRAM: usize = 65_535;
/// Largest datagram a relayed socket takes from a peer (media is far
/// smaller; a datagram that fills the buffer may have been cut, and is
/// dropped, counted). Every allocation holds one such buffer.
const MAX_PEER_DATAGRAM: usize = 4096;
/// Receive buffer of each UDP listener, bytes.
const LISTENER_RECV_BUFFER: usize = 8 << 20;
/// A stream connection holding no allocation is closed after this long.
pub const STREAM_IDLE: Duration = Duration::from_secs(30);
/// Messages queued for one stream client before more are dropped.
const STREAM_QUEUE: usize = 256;
/// How long a closing stream may take to write what is queued for it.
const STREAM_FLUSH: Duration = Duration::from_secs(2);
/// How long dialing a peer for a Connect may take (RFC 6062 §5.2: then
/// 447).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Read size of a bound peer connection (each read is one chunk queued to
/// the client's data connection: with the queue's bound, at most 1 MiB
/// waits for a slow client).
const TCP_CHUNK: usize = 4096;

/// Bounds on stream connections (TCP and TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Connections open at once.
    pub total: usize,
    /// Connections one source (IPv4 address or IPv6 /64) may hold.
    pub per_source: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self { total: 8192, per_source: 64 }
    }
}

/// The clock now.
pub fn turn_now() -> TurnNow {
    let unix_secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    TurnNow { instant: Instant::now(), unix_secs }
}

/// What the server and its sockets share.
struct Shared {
    server: TurnServer,
    relays: HashMap<RelayId, Relay>,
    /// Stream clients' outgoing queues.
    streams: HashMap<ClientKey, mpsc::Sender<Vec<u8>>>,
    /// Stream connections per source prefix, and in all.
    stream_sources: HashMap<IpAddr, usize>,
    stream_count: usize,
    stream_limits: StreamLimits,
    /// Sends the kernel refused, or a stream client's full queue.
    send_failures: u64,
    /// Stream connections refused at a limit.
    streams_refused: u64,
    /// Peer datagrams too large for a relayed socket's buffer.
    oversize_drops: u64,
    /// Peer connections of TCP allocations (RFC 6062).
    peer_connections: HashMap<ConnectionId, PeerStream>,
    /// The relay whose standby flag the server follows (a cluster node).
    follows: Option<crate::RelayHandle>,
    /// Relayed sockets bind with `IP_FREEBIND` (see
    /// [`TurnService::bind_freely`]).
    freebind: bool,
    /// The address each client of a wildcard listener sends to (while it
    /// holds an allocation): what reaches it leaves from there.
    local_of: HashMap<ClientKey, IpAddr>,
    /// The kernel fast path's driver, when channels are relayed there.
    #[cfg(feature = "ebpf")]
    kernel: Option<crate::io::ebpf::TurnOffloadDriver>,
}

/// A relayed port: a UDP socket and its receive task, or (a TCP
/// allocation) the task that accepts peers on its listening socket.
struct Relay {
    socket: Option<Arc<UdpSocket>>,
    task: JoinHandle<()>,
}

/// A peer connection the driver holds: the stream until it is joined to
/// the client's data connection, then the stop signal of the two pumps.
struct PeerStream {
    stream: Option<TcpStream>,
    stop: watch::Sender<bool>,
}

impl PeerStream {
    fn new(stream: TcpStream) -> Self {
        Self { stream: Some(stream), stop: watch::channel(false).0 }
    }

    /// Closes it: a held stream is dropped, pumps stop.
    fn close(self) {
        let _ = self.stop.send(true);
    }
}

/// One UDP listener.
struct Listener {
    socket: Arc<UdpSocket>,
    /// Bound to a wildcard address: each datagram's destination is read
    /// (`IP_PKTINFO`) and answers leave from it.
    wildcard: bool,
    /// An IPv6 socket.
    v6: bool,
}

/// The sockets a service sends from: its UDP listeners.
type Listeners = Arc<Vec<Listener>>;

/// A running TURN server (see the module docs). Cheap to clone; the last
/// clone dropped stops every task and closes every socket.
#[derive(Clone)]
pub struct TurnService {
    shared: Arc<Mutex<Shared>>,
    udp: Listeners,
    tasks: Arc<Tasks>,
}

/// Tasks stopped when the service goes.
struct Tasks(Mutex<Vec<JoinHandle<()>>>, Arc<Mutex<Shared>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            t.abort();
        }
        let mut s = lock(&self.1);
        for (_, relay) in s.relays.drain() {
            relay.task.abort();
        }
        for (_, peer) in s.peer_connections.drain() {
            peer.close();
        }
        // Its channels stop in the kernel too (the relay's fast path may
        // outlive this service).
        #[cfg(feature = "ebpf")]
        if let Some(kernel) = s.kernel.as_mut() {
            kernel.end_all();
        }
    }
}

impl std::fmt::Debug for TurnService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnService").field("udp", &self.udp_addrs()).finish_non_exhaustive()
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Every critical section leaves the maps consistent, so a panic in one
    // (none is expected) does not make the state unusable.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl TurnService {
    /// Serves `server` on bound UDP `listeners` (UDP listener `i` is
    /// [`ClientKey::listener`] `i`). Call within a tokio runtime.
    pub fn start(server: TurnServer, listeners: Vec<StdUdpSocket>, limits: StreamLimits) -> io::Result<Self> {
        let udp: Vec<Listener> = listeners
            .into_iter()
            .map(|s| {
                s.set_nonblocking(true)?;
                // Every client's datagrams arrive on these few sockets.
                let _ = crate::io::sys::set_large_recv_buffer(&socket2::SockRef::from(&s), LISTENER_RECV_BUFFER);
                let local = s.local_addr()?;
                let (wildcard, v6) = (local.ip().is_unspecified(), local.is_ipv6());
                if wildcard {
                    use std::os::fd::AsRawFd as _;
                    crate::io::pktinfo::enable(s.as_raw_fd(), v6)?;
                }
                Ok(Listener { socket: Arc::new(UdpSocket::from_std(s)?), wildcard, v6 })
            })
            .collect::<io::Result<_>>()?;
        let udp = Arc::new(udp);
        let shared = Arc::new(Mutex::new(Shared {
            server,
            relays: HashMap::new(),
            streams: HashMap::new(),
            stream_sources: HashMap::new(),
            stream_count: 0,
            stream_limits: limits,
            send_failures: 0,
            streams_refused: 0,
            oversize_drops: 0,
            peer_connections: HashMap::new(),
            follows: None,
            freebind: false,
            local_of: HashMap::new(),
            #[cfg(feature = "ebpf")]
            kernel: None,
        }));
        let mut tasks = Vec::new();
        for i in 0..udp.len() {
            let (shared, udp) = (shared.clone(), udp.clone());
            let index = u16::try_from(i).map_err(|_| io::Error::other("too many TURN listeners"))?;
            tasks.push(tokio::spawn(serve_udp(shared, udp, index)));
        }
        tasks.push(tokio::spawn(run_timers(shared.clone(), udp.clone())));
        let tasks = Arc::new(Tasks(Mutex::new(tasks), shared.clone()));
        Ok(Self { shared, udp, tasks })
    }

    /// The UDP listeners' addresses.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.iter().filter_map(|l| l.socket.local_addr().ok()).collect()
    }

    /// Serves TURN over TCP on `listener` (its connections are
    /// [`ClientKey::listener`] `index`).
    pub fn serve_tcp(&self, listener: TcpListener, index: u16) {
        let service = self.clone();
        self.spawn(async move {
            loop {
                let Some((tcp, peer)) = accept_or_back_off(&listener, "turn tcp").await else { continue };
                let _ = tcp.set_nodelay(true);
                service.serve_stream(tcp, Transport::Tcp, index, peer, Vec::new());
            }
        });
    }

    /// Serves TURN over TLS on `listener` with `config`.
    pub fn serve_tls(&self, listener: TcpListener, config: Arc<rustls::ServerConfig>, index: u16) {
        let service = self.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        self.spawn(async move {
            loop {
                let Some((tcp, peer)) = accept_or_back_off(&listener, "turn tls").await else { continue };
                let _ = tcp.set_nodelay(true);
                service.accept_tls(acceptor.clone(), tcp, peer, Vec::new(), index);
            }
        });
    }

    /// Completes a TLS handshake on `tcp` (whose first bytes, `read`, were
    /// already taken from it: the ClientHello a shared listener looked at)
    /// and serves TURN on it.
    pub fn accept_tls(
        &self,
        acceptor: tokio_rustls::TlsAcceptor,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        read: Vec<u8>,
        index: u16,
    ) {
        let service = self.clone();
        tokio::spawn(async move {
            let stream = super::prefixed::Prefixed::new(read, tcp);
            match tokio::time::timeout(STREAM_IDLE, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => service.serve_stream(tls, Transport::Tls, index, peer, Vec::new()),
                _ => tracing::debug!("TURN over TLS: handshake failed"),
            }
        });
    }

    /// Serves TURN on a connected stream from `peer`; `read` holds bytes
    /// already read from it (a shared listener's look at the first ones).
    /// Refused (closed) at the connection limits.
    pub fn serve_stream<S>(&self, stream: S, transport: Transport, index: u16, peer: SocketAddr, read: Vec<u8>)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let key = ClientKey { transport, listener: index, source: crate::peer::canonical(peer) };
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        {
            let mut s = lock(&self.shared);
            let source = crate::peer::source_prefix(peer.ip());
            let from_source = s.stream_sources.get(&source).copied().unwrap_or(0);
            if s.stream_count >= s.stream_limits.total || from_source >= s.stream_limits.per_source {
                s.streams_refused += 1;
                return;
            }
            s.stream_count += 1;
            *s.stream_sources.entry(source).or_default() += 1;
            s.streams.insert(key, tx);
        }
        let (shared, udp) = (self.shared.clone(), self.udp.clone());
        tokio::spawn(async move {
            let (reader, writer) = tokio::io::split(stream);
            let mut writing = tokio::spawn(write_stream(writer, rx));
            read_stream(&shared, &udp, reader, key, read).await;
            // What is queued for the client (a peer's last bytes) is
            // written before the connection closes, briefly.
            lock(&shared).streams.remove(&key);
            if tokio::time::timeout(STREAM_FLUSH, &mut writing).await.is_err() {
                writing.abort();
            }
            let commands = {
                let mut s = lock(&shared);
                s.stream_count -= 1;
                let source = crate::peer::source_prefix(key.source.ip());
                if let Some(n) = s.stream_sources.get_mut(&source) {
                    *n -= 1;
                    if *n == 0 {
                        s.stream_sources.remove(&source);
                    }
                }
                s.server.handle_client_closed(Instant::now(), key);
                drain(&mut s.server)
            };
            apply(&shared, &udp, commands);
        });
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.tasks.0.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
    }

    /// The server's counters now.
    pub fn stats(&self) -> TurnStats {
        lock(&self.shared).server.stats().clone()
    }

    /// Sends the kernel refused (or a stream client's full queue) so far.
    pub fn send_failures(&self) -> u64 {
        lock(&self.shared).send_failures
    }

    /// Stream connections refused at a limit so far.
    pub fn streams_refused(&self) -> u64 {
        lock(&self.shared).streams_refused
    }

    /// Peer datagrams dropped as too large for a relayed socket's buffer.
    pub fn oversize_drops(&self) -> u64 {
        lock(&self.shared).oversize_drops
    }

    /// Binds relayed sockets with `IP_FREEBIND` from now on: a cluster node
    /// opens a taken-over allocation's port on the service address, which
    /// may arrive on this host only after (its takeover hook moves it).
    pub fn bind_freely(&self) {
        lock(&self.shared).freebind = true;
    }

    /// Serves nothing while `relay` is a cluster standby (its flag is
    /// looked at with every client input).
    pub fn follow_standby(&self, relay: crate::RelayHandle) {
        let mut s = lock(&self.shared);
        let standby = relay.is_standby();
        s.server.set_standby(standby);
        s.follows = Some(relay);
    }

    /// A configuration reload: new realms, limits and peer policy (see
    /// [`TurnServer::handle_reconfigure`]).
    pub fn reconfigure(
        &self,
        realms: Vec<super::settings::Realm>,
        limits: super::settings::TurnLimits,
        policy: crate::peer::PeerPolicy,
    ) -> Result<(), super::server::TurnSettingsError> {
        let commands = {
            let mut s = lock(&self.shared);
            s.server.handle_reconfigure(Instant::now(), realms, limits, policy)?;
            drain(&mut s.server)
        };
        apply(&self.shared, &self.udp, commands);
        Ok(())
    }

    /// Replicated allocations changed and ended since the last call.
    pub fn take_changes(&self) -> super::replica::AllocationChanges {
        lock(&self.shared).server.take_changes(Instant::now())
    }

    /// Every replicated allocation as it is now.
    pub fn export(&self) -> Vec<super::replica::AllocationState> {
        lock(&self.shared).server.export(Instant::now())
    }

    /// Takes allocations over (a takeover): their ports are opened again;
    /// returns how many were taken (those refused are logged).
    pub fn restore(&self, states: Vec<super::replica::AllocationState>) -> usize {
        let (taken, commands) = {
            let mut s = lock(&self.shared);
            let mut taken = 0;
            for state in states {
                let id = state.id();
                match s.server.restore(Instant::now(), state) {
                    Ok(()) => taken += 1,
                    Err(e) => tracing::warn!(allocation = %id, error = %e, "TURN allocation not taken over"),
                }
            }
            (taken, drain(&mut s.server))
        };
        apply(&self.shared, &self.udp, commands);
        taken
    }

    /// Forgets every allocation (a node stepping down).
    pub fn forget_all(&self) {
        let commands = {
            let mut s = lock(&self.shared);
            s.server.forget_all(Instant::now());
            drain(&mut s.server)
        };
        apply(&self.shared, &self.udp, commands);
    }

    /// Relays live channels of UDP allocations in the kernel from now on
    /// (`fast`: the relay's fast path, attached here to the interfaces of
    /// TURN's listeners and relay addresses as well): the server announces
    /// them, this service writes the routes, and what the kernel relayed
    /// is counted as if relayed here (see [`super::offload`]). Channels the
    /// kernel cannot take (a relay address bound to a wildcard, an
    /// unroutable destination, full maps) stay in userspace.
    #[cfg(feature = "ebpf")]
    pub fn use_fast_path(&self, fast: Arc<Mutex<crate::io::ebpf::FastPath>>) {
        let listeners = self.udp_addrs();
        let commands = {
            let mut s = lock(&self.shared);
            let settings = s.server.settings();
            let relay_ips: Vec<IpAddr> =
                [settings.relay_v4, settings.relay_v6].into_iter().flatten().map(|r| r.bind).collect();
            s.kernel = Some(crate::io::ebpf::TurnOffloadDriver::new(fast, listeners, &relay_ips));
            s.server.enable_offload(Instant::now());
            drain(&mut s.server)
        };
        apply(&self.shared, &self.udp, commands);
        let shared = self.shared.clone();
        self.spawn(async move {
            let mut every = tokio::time::interval(crate::io::ebpf::SYNC_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                sync_kernel(&mut lock(&shared));
            }
        });
    }

    /// Allocations whose channels the kernel relays now.
    #[cfg(feature = "ebpf")]
    pub fn offloaded_allocations(&self) -> usize {
        lock(&self.shared).kernel.as_ref().map_or(0, |k| k.allocations())
    }

    /// Brings what the kernel relayed into the server's counters now (the
    /// service does it every [`crate::io::ebpf::SYNC_EVERY`]).
    #[cfg(feature = "ebpf")]
    pub fn sync_kernel_counters(&self) {
        sync_kernel(&mut lock(&self.shared));
    }

    /// Reads the server (allocations, settings) under its lock.
    pub fn with_server<R>(&self, f: impl FnOnce(&TurnServer) -> R) -> R {
        f(&lock(&self.shared).server)
    }
}

/// `addr` as a socket of the family `v6` can send to it (IPv4 as mapped
/// IPv6 on an IPv6 socket). The family is the caller's knowledge, not a
/// `getsockname` per datagram.
fn for_family(v6: bool, addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v6 => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        _ => addr,
    }
}

/// Sends without waiting: a full buffer drops the datagram, counted.
///
/// The datagram goes straight to the kernel (a non-blocking `sendto`):
/// tokio's own `try_send_to` refuses until its reactor has seen the socket
/// writable, which a socket just opened for an allocation has not — its
/// first datagram was lost that way.
fn send_udp(shared: &Mutex<Shared>, socket: &UdpSocket, v6: bool, bytes: &[u8], to: SocketAddr) {
    let to = socket2::SockAddr::from(for_family(v6, to));
    if socket2::SockRef::from(socket).send_to(bytes, &to).is_err() {
        lock(shared).send_failures += 1;
    }
}

/// Sends from listener `l` to `to`: from `local` (the address the client
/// sends to) when `l` is bound to a wildcard address.
fn send_from_listener(shared: &Mutex<Shared>, l: &Listener, bytes: &[u8], to: SocketAddr, local: Option<IpAddr>) {
    match local.filter(|_| l.wildcard) {
        Some(from) => {
            use std::os::fd::AsRawFd as _;
            if crate::io::pktinfo::send(l.socket.as_raw_fd(), l.v6, bytes, to, Some(from)).is_err() {
                lock(shared).send_failures += 1;
            }
        }
        None => send_udp(shared, &l.socket, l.v6, bytes, to),
    }
}

/// Sends `bytes` (a STUN message, or a ChannelData message when `channel`)
/// to `client` over its transport: ChannelData is padded to four bytes on
/// streams; over UDP from `local`, the address the client sends to, when
/// its listener is bound to a wildcard address.
fn deliver(
    shared: &Mutex<Shared>,
    udp: &Listeners,
    client: ClientKey,
    bytes: &[u8],
    channel: bool,
    local: Option<IpAddr>,
) {
    if client.transport == Transport::Udp {
        if let Some(l) = udp.get(usize::from(client.listener)) {
            send_from_listener(shared, l, bytes, client.source, local);
        }
        return;
    }
    let mut message = bytes.to_vec();
    if channel {
        message.resize(bytes.len().div_ceil(4) * 4, 0);
    }
    let mut s = lock(shared);
    let queued = s.streams.get(&client).is_some_and(|tx| tx.try_send(message).is_ok());
    if !queued {
        s.send_failures += 1;
    }
}

/// Decides on one message from `client` (sent to `local`, when its
/// listener is bound to a wildcard address) and carries the decision out;
/// `Some` when a ConnectionBind joined this stream to a peer connection
/// (its answer queued): the stream carries that connection's bytes now.
fn handle_client_message(
    shared: &Arc<Mutex<Shared>>,
    udp: &Listeners,
    client: ClientKey,
    message: &[u8],
    local: Option<IpAddr>,
) -> Option<ConnectionId> {
    let (out, relay_socket, commands) = {
        let mut s = lock(shared);
        if let Some(standby) = s.follows.as_ref().map(crate::RelayHandle::is_standby) {
            s.server.set_standby(standby);
        }
        let out = s.server.handle_client(turn_now(), client, message);
        // Where a client with an allocation sends to is where what reaches
        // it leaves from (strangers are answered at once, never kept).
        if let Some(ip) = local {
            if s.local_of.get(&client) != Some(&ip) && s.server.has_allocation(client) {
                s.local_of.insert(client, ip);
            }
        }
        let relay_socket = match &out {
            ClientOutput::Relay { relay, .. } => s.relays.get(relay).and_then(|r| r.socket.clone()),
            _ => None,
        };
        (out, relay_socket, drain(&mut s.server))
    };
    // Commands first: a channel's kernel route is in place before the
    // client learns it is bound.
    apply(shared, udp, commands);
    let mut bound = None;
    match out {
        ClientOutput::Relay { relay: id, peer, payload } => {
            if let Some(relay) = relay_socket {
                send_udp(shared, &relay, id.family == Family::V6, &message[payload], peer);
            }
        }
        ClientOutput::Reply(answer) => deliver(shared, udp, client, &answer, false, local),
        ClientOutput::Bind { connection, reply } => {
            deliver(shared, udp, client, &reply, false, local);
            bound = Some(connection);
        }
        ClientOutput::Pending | ClientOutput::Drop(_) => {}
    }
    bound
}

/// Receives one datagram on `l`: its length, source and (a wildcard
/// listener) the address it was sent to.
fn recv_on(l: &Listener, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    if l.wildcard {
        use std::os::fd::AsRawFd as _;
        let fd = l.socket.as_raw_fd();
        l.socket.try_io(tokio::io::Interest::READABLE, || crate::io::pktinfo::recv(fd, buf))
    } else {
        l.socket.try_recv_from(buf).map(|(n, from)| (n, from, None))
    }
}

async fn serve_udp(shared: Arc<Mutex<Shared>>, udp: Listeners, index: u16) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let Some(l) = udp.get(usize::from(index)) else { return };
    loop {
        if l.socket.readable().await.is_err() {
            tokio::task::yield_now().await;
            continue;
        }
        // Everything queued, then wait again (one wake-up for a burst).
        loop {
            match recv_on(l, &mut buf) {
                Ok((n, from, local)) => {
                    let client = ClientKey { transport: Transport::Udp, listener: index, source: from };
                    handle_client_message(&shared, &udp, client, &buf[..n], local);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // An ICMP error reported on the socket: nothing to read.
                Err(_) => {}
            }
        }
    }
}

/// The length of the message at the start of `buf` on a stream: a STUN
/// message by its header, ChannelData by its header padded to four bytes
/// (RFC 8656 §12.5). `Ok(None)`: more bytes needed; `Err`: neither.
fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    let Some(header) = buf.get(..CHANNEL_HEADER_LEN) else { return Ok(None) };
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    match header[0] & 0xc0 {
        0x00 => Ok(Some(HEADER_LEN + len)),
        0x40 => Ok(Some((CHANNEL_HEADER_LEN + len).div_ceil(4) * 4)),
        _ => Err(()),
    }
}

/// Reads framed messages from a stream client until it closes, breaks the
/// framing, or holds no allocation for [`STREAM_IDLE`].
async fn read_stream<R: AsyncRead + Unpin>(
    shared: &Arc<Mutex<Shared>>,
    udp: &Listeners,
    mut reader: R,
    key: ClientKey,
    mut buf: Vec<u8>,
) {
    let mut chunk = vec![0u8; 16 * 1024];
    let mut idle_since = Instant::now();
    loop {
        while let Ok(Some(len)) = stream_frame_len(&buf) {
            if buf.len() < len {
                break;
            }
            let bound = handle_client_message(shared, udp, key, &buf[..len], None);
            buf.drain(..len);
            if let Some(connection) = bound {
                // What follows the ConnectionBind is the peer's already.
                splice(shared, reader, key, connection, buf).await;
                return;
            }
        }
        if stream_frame_len(&buf).is_err() {
            return;
        }
        let deadline = idle_since + STREAM_IDLE;
        match tokio::time::timeout_at(deadline.into(), reader.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            // Quiet for a while: fine while it holds an allocation.
            Err(_) if lock(shared).server.has_allocation(key) => idle_since = Instant::now(),
            Err(_) => return,
        }
    }
}

async fn write_stream<W: AsyncWrite + Unpin>(mut writer: W, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(message) = rx.recv().await {
        if writer.write_all(&message).await.is_err() {
            return;
        }
    }
}

/// Counts what the kernel relayed since the last sync.
#[cfg(feature = "ebpf")]
fn sync_kernel(s: &mut Shared) {
    let Some(kernel) = s.kernel.as_mut() else { return };
    for (relay, counts) in kernel.poll_counts() {
        s.server.handle_offload_counts(Instant::now(), relay, counts);
    }
}

/// Gives a channel to the kernel, or its budget back to the server.
fn offload_channel(s: &mut Shared, o: super::offload::ChannelOffload) {
    #[cfg(feature = "ebpf")]
    if let (Some(kernel), Some(relayed)) = (s.kernel.as_mut(), s.server.relay_bind_address(o.relay)) {
        let local = s.local_of.get(&o.client).copied();
        if let Some(budget) = kernel.handle_offload(&o, relayed, local, Instant::now()) {
            s.server.handle_offload_refused(Instant::now(), o.relay, Some(budget));
        }
        return;
    }
    s.server.handle_offload_refused(Instant::now(), o.relay, o.budget);
}

/// An allocation ended: its kernel routes go, what they relayed is counted.
fn end_offload(_s: &mut Shared, _relay: RelayId) {
    #[cfg(feature = "ebpf")]
    if let Some(counts) = _s.kernel.as_mut().and_then(|k| k.handle_end(_relay)) {
        _s.server.handle_offload_counts(Instant::now(), _relay, counts);
    }
}

fn drain(server: &mut TurnServer) -> Vec<Command> {
    std::iter::from_fn(|| server.poll_command()).collect()
}

/// Carries out the server's commands (and those they lead to).
fn apply(shared: &Arc<Mutex<Shared>>, udp: &Listeners, mut commands: Vec<Command>) {
    while !commands.is_empty() {
        for command in std::mem::take(&mut commands) {
            match command {
                Command::OpenRelay { relay, bind } => {
                    let freebind = lock(shared).freebind;
                    let opened = open_relay(bind, freebind);
                    let mut s = lock(shared);
                    let ok = match opened {
                        Ok(socket) => {
                            let task = tokio::spawn(serve_relay(shared.clone(), udp.clone(), socket.clone(), relay));
                            s.relays.insert(relay, Relay { socket: Some(socket), task });
                            true
                        }
                        Err(e) => {
                            tracing::warn!(%bind, error = %e, "cannot open a TURN relayed port");
                            false
                        }
                    };
                    s.server.handle_relay_opened(turn_now(), relay, ok);
                    commands.extend(drain(&mut s.server));
                }
                Command::ListenRelay { relay, bind } => {
                    let freebind = lock(shared).freebind;
                    let opened = listen_relay(bind, freebind);
                    let mut s = lock(shared);
                    let ok = match opened {
                        Ok(listener) => {
                            let task = tokio::spawn(accept_peers(shared.clone(), udp.clone(), listener, relay));
                            s.relays.insert(relay, Relay { socket: None, task });
                            true
                        }
                        Err(e) => {
                            tracing::warn!(%bind, error = %e, "cannot listen on a TURN relayed TCP port");
                            false
                        }
                    };
                    s.server.handle_relay_opened(turn_now(), relay, ok);
                    commands.extend(drain(&mut s.server));
                }
                Command::Dial { connection, bind, peer } => {
                    tokio::spawn(dial_peer(shared.clone(), udp.clone(), connection, bind, peer));
                }
                Command::CloseConnection { connection } => {
                    if let Some(peer) = lock(shared).peer_connections.remove(&connection) {
                        peer.close();
                    }
                }
                Command::CloseRelay { relay } => {
                    if let Some(r) = lock(shared).relays.remove(&relay) {
                        r.task.abort();
                    }
                }
                Command::Send { client, message } => {
                    let local = lock(shared).local_of.get(&client).copied();
                    deliver(shared, udp, client, &message, false, local)
                }
                Command::OffloadChannel(o) => {
                    let mut s = lock(shared);
                    offload_channel(&mut s, o);
                    commands.extend(drain(&mut s.server));
                }
                Command::EndOffload { relay } => end_offload(&mut lock(shared), relay),
            }
        }
    }
}

fn open_relay(bind: SocketAddr, freebind: bool) -> io::Result<Arc<UdpSocket>> {
    let options = crate::io::SocketOptions { recv_buffer: 0, send_buffer: 0, freebind };
    let socket: StdUdpSocket = crate::io::bind_udp(bind.ip(), bind.port(), &options)?.into();
    Ok(Arc::new(UdpSocket::from_std(socket)?))
}

/// A TCP socket on `bind` that may share its address with the others of
/// its allocation (the listener and the connections dialled from it).
fn relay_tcp_socket(bind: SocketAddr, freebind: bool) -> io::Result<TcpSocket> {
    Ok(TcpSocket::from_std_stream(crate::io::bind_tcp(bind, true, freebind)?.into()))
}

fn listen_relay(bind: SocketAddr, freebind: bool) -> io::Result<TcpListener> {
    relay_tcp_socket(bind, freebind)?.listen(64)
}

/// Accepts peers on a TCP allocation's relayed address; the server keeps
/// those it permits (telling the client), the others are closed at once.
async fn accept_peers(shared: Arc<Mutex<Shared>>, udp: Listeners, listener: TcpListener, relay: RelayId) {
    loop {
        let Some((stream, peer)) = accept_or_back_off(&listener, "turn relayed tcp").await else { continue };
        let _ = stream.set_nodelay(true);
        let commands = {
            let mut s = lock(&shared);
            if let Some(id) = s.server.handle_peer_connection(turn_now(), relay, peer) {
                s.peer_connections.insert(id, PeerStream::new(stream));
            }
            drain(&mut s.server)
        };
        apply(&shared, &udp, commands);
    }
}

/// Dials `peer` from `bind` for a Connect and reports the outcome.
async fn dial_peer(shared: Arc<Mutex<Shared>>, udp: Listeners, id: ConnectionId, bind: SocketAddr, peer: SocketAddr) {
    let freebind = lock(&shared).freebind;
    let dialled = match relay_tcp_socket(bind, freebind) {
        Ok(socket) => tokio::time::timeout(DIAL_TIMEOUT, socket.connect(peer)).await.ok().and_then(Result::ok),
        Err(_) => None,
    };
    let commands = {
        let mut s = lock(&shared);
        let connected = dialled.is_some();
        if let Some(stream) = dialled {
            let _ = stream.set_nodelay(true);
            s.peer_connections.insert(id, PeerStream::new(stream));
        }
        s.server.handle_dialed(turn_now(), id, connected);
        drain(&mut s.server)
    };
    apply(&shared, &udp, commands);
}

/// Joins a client's data connection (`reader`, and its queue for writing)
/// to peer connection `id`: bytes both ways, unchanged, paced at the
/// allocation's rate, until either side closes or the server closes the
/// connection; `pending` is what the client sent after its ConnectionBind.
async fn splice<R: AsyncRead + Unpin>(
    shared: &Arc<Mutex<Shared>>,
    mut reader: R,
    key: ClientKey,
    id: ConnectionId,
    pending: Vec<u8>,
) {
    let taken = {
        let mut s = lock(shared);
        let to_client = s.streams.get(&key).cloned();
        let peer = s.peer_connections.get_mut(&id).and_then(|p| Some((p.stream.take()?, p.stop.subscribe())));
        to_client.zip(peer)
    };
    let Some((to_client, (peer, mut stop))) = taken else {
        end_connection(shared, id);
        return;
    };
    let (mut peer_reader, mut peer_writer) = peer.into_split();
    let pump = {
        let (shared, mut stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; TCP_CHUNK];
            loop {
                let n = tokio::select! {
                    r = peer_reader.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                    _ = stop.changed() => break,
                };
                let wait = lock(&shared).server.handle_tcp_relayed(Instant::now(), id, false, n as u64);
                // Waiting on a slow client or the rate ends when the
                // connection is closed.
                let sent = tokio::select! {
                    r = to_client.send(buf[..n].to_vec()) => r.is_ok(),
                    _ = stop.changed() => false,
                };
                if !sent || !paced(wait, &mut stop).await {
                    break;
                }
            }
            end_connection(&shared, id);
        })
    };
    let mut buf = pending;
    let mut n = buf.len();
    buf.resize(n.max(TCP_CHUNK), 0);
    loop {
        if n > 0 {
            let wait = lock(shared).server.handle_tcp_relayed(Instant::now(), id, true, n as u64);
            // A peer that does not read, or the rate, holds this up only
            // until the connection is closed.
            let written = tokio::select! {
                r = peer_writer.write_all(&buf[..n]) => r.is_ok(),
                _ = stop.changed() => false,
            };
            if !written || !paced(wait, &mut stop).await {
                break;
            }
        }
        n = tokio::select! {
            r = reader.read(&mut buf[..TCP_CHUNK]) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = stop.changed() => break,
        };
    }
    end_connection(shared, id);
    pump.abort();
}

/// Waits `wait` (the allocation's rate); `false` when the connection was
/// closed meanwhile.
async fn paced(wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if wait.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.changed() => false,
    }
}

/// A peer connection is over: both pumps stop, the server forgets it.
fn end_connection(shared: &Mutex<Shared>, id: ConnectionId) {
    let mut s = lock(shared);
    if let Some(peer) = s.peer_connections.remove(&id) {
        peer.close();
    }
    s.server.handle_connection_closed(id);
}

thread_local! {
    /// Where relayed ports receive, behind room for a ChannelData header:
    /// one per runtime thread, not one per allocation (a relayed port's
    /// task never awaits while it holds it).
    static PEER_BUFFER: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; CHANNEL_HEADER_LEN + MAX_PEER_DATAGRAM]);
}

async fn serve_relay(shared: Arc<Mutex<Shared>>, udp: Listeners, socket: Arc<UdpSocket>, relay: RelayId) {
    loop {
        if socket.readable().await.is_err() {
            tokio::task::yield_now().await;
            continue;
        }
        PEER_BUFFER.with_borrow_mut(|buf| loop {
            let (n, from) = match socket.try_recv_from(&mut buf[CHANNEL_HEADER_LEN..]) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            if n == MAX_PEER_DATAGRAM {
                lock(&shared).oversize_drops += 1;
                continue;
            }
            relay_peer_datagram(&shared, &udp, relay, from, buf, n);
        });
    }
}

/// Decides on a peer's datagram (at `buf[CHANNEL_HEADER_LEN..][..n]`) and
/// sends it on to the client.
fn relay_peer_datagram(
    shared: &Mutex<Shared>,
    udp: &Listeners,
    relay: RelayId,
    from: SocketAddr,
    buf: &mut [u8],
    n: usize,
) {
    let (out, local) = {
        let mut s = lock(shared);
        let out = s.server.handle_peer(turn_now(), relay, from, &buf[CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + n]);
        let local = match &out {
            PeerOutput::Channel { client, .. } | PeerOutput::Indication { client, .. } => {
                s.local_of.get(client).copied()
            }
            PeerOutput::Drop(_) => None,
        };
        (out, local)
    };
    match out {
        PeerOutput::Channel { client, header } => {
            if let Some(range) = Framing::Prepend(header).apply(buf, CHANNEL_HEADER_LEN, n) {
                deliver(shared, udp, client, &buf[range], true, local);
            }
        }
        PeerOutput::Indication { client, message } => deliver(shared, udp, client, &message, false, local),
        PeerOutput::Drop(_) => {}
    }
}

async fn run_timers(shared: Arc<Mutex<Shared>>, udp: Listeners) {
    loop {
        let due = lock(&shared).server.poll_timeout();
        // Woken at least once a second: deadlines move with every request.
        let next = Instant::now() + Duration::from_secs(1);
        let at = due.map_or(next, |d| d.min(next));
        tokio::time::sleep_until(at.into()).await;
        let commands = {
            let mut s = lock(&shared);
            s.server.handle_timeout(Instant::now());
            // Clients' addresses are kept while they hold an allocation.
            let Shared { local_of, server, .. } = &mut *s;
            local_of.retain(|client, _| server.has_allocation(*client));
            drain(&mut s.server)
        };
        apply(&shared, &udp, commands);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_frames_are_cut_by_their_length_fields() {
        // A STUN header announcing 8 bytes of attributes: 28 in all.
        let mut stun = vec![0x00, 0x03, 0x00, 0x08];
        stun.extend_from_slice(&[0; 16]);
        assert_eq!(stream_frame_len(&stun), Ok(Some(28)));
        // ChannelData of 5 bytes: 9, padded to 12 on a stream.
        assert_eq!(stream_frame_len(&[0x40, 0x01, 0x00, 0x05]), Ok(Some(12)));
        assert_eq!(stream_frame_len(&[0x40, 0x01, 0x00, 0x04]), Ok(Some(8)));
        assert_eq!(stream_frame_len(&[0x40, 0x01]), Ok(None));
        // Bytes starting with the bits 10 or 11 (RTP, say) break the framing.
        assert_eq!(stream_frame_len(&[0x80, 0x00, 0x00, 0x01]), Err(()));
        assert_eq!(stream_frame_len(&[0xc0, 0x00, 0x00, 0x01]), Err(()));
    }
}
