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
//!
//! This module holds the service's state and carries out the server's
//! commands; `udp` serves the listeners and relayed sockets, `stream` the
//! TCP and TLS clients, `peer_tcp` RFC 6062's peer connections, and
//! `kernel` the fast path's driver.

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

mod kernel;
mod peer_tcp;
mod stream;
mod udp;

#[cfg(feature = "ebpf")]
use kernel::sync_kernel;
use kernel::{end_offload, offload_channel};
use peer_tcp::{accept_peers, dial_peer, listen_relay};
use stream::{read_stream, write_stream};
use udp::{deliver, open_relay, serve_relay, serve_udp};

/// Largest datagram received from a client.
const MAX_DATAGRAM: usize = 65_535;
/// Largest datagram a relayed socket takes from a peer (media is far
/// smaller; a datagram that fills the buffer may have been cut, and is
/// dropped, counted). Relayed sockets receive into one such buffer per
/// runtime thread.
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

fn drain(server: &mut TurnServer) -> Vec<Command> {
    std::iter::from_fn(|| server.poll_command()).collect()
}

/// A relayed port the server asked for was opened (its task started by
/// `serve`, under the lock, so it relays nothing before the server knows)
/// or could not be: the server is told either way; returns what it asks
/// for next.
fn relay_opened<T>(
    shared: &Mutex<Shared>,
    relay: RelayId,
    opened: io::Result<T>,
    serve: impl FnOnce(T) -> Relay,
) -> Vec<Command> {
    let mut s = lock(shared);
    let ok = opened.map(|port| s.relays.insert(relay, serve(port))).is_ok();
    s.server.handle_relay_opened(turn_now(), relay, ok);
    drain(&mut s.server)
}

/// Carries out the server's commands (and those they lead to).
fn apply(shared: &Arc<Mutex<Shared>>, udp: &Listeners, mut commands: Vec<Command>) {
    while !commands.is_empty() {
        for command in std::mem::take(&mut commands) {
            match command {
                Command::OpenRelay { relay, bind } => {
                    let opened = open_relay(bind, lock(shared).freebind).inspect_err(|e| {
                        tracing::warn!(%bind, error = %e, "cannot open a TURN relayed port");
                    });
                    commands.extend(relay_opened(shared, relay, opened, |socket| Relay {
                        task: tokio::spawn(serve_relay(shared.clone(), udp.clone(), socket.clone(), relay)),
                        socket: Some(socket),
                    }));
                }
                Command::ListenRelay { relay, bind } => {
                    let opened = listen_relay(bind, lock(shared).freebind).inspect_err(|e| {
                        tracing::warn!(%bind, error = %e, "cannot listen on a TURN relayed TCP port");
                    });
                    commands.extend(relay_opened(shared, relay, opened, |listener| Relay {
                        task: tokio::spawn(accept_peers(shared.clone(), udp.clone(), listener, relay)),
                        socket: None,
                    }));
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
