//! TURN over UDP on tokio sockets: the driver of a [`TurnServer`]. One task
//! per client listener and per relayed socket, one for timers; the server
//! is shared behind a mutex held only for a decision, never across a send.
//! It binds relayed sockets when the server asks ([`Command::OpenRelay`]),
//! closes them when told, and applies the framing decisions: a peer's
//! datagram is received four bytes into its buffer so a ChannelData header
//! goes in front of it without a copy.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::allocation::{ClientKey, RelayId, Transport};
use super::proto::CHANNEL_HEADER_LEN;
use super::server::{ClientOutput, Command, PeerOutput, TurnNow, TurnServer};
use super::stats::TurnStats;
use crate::framing::Framing;

/// Largest datagram received.
const MAX_DATAGRAM: usize = 65_535;

/// The clock now.
pub fn turn_now() -> TurnNow {
    let unix_secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    TurnNow { instant: Instant::now(), unix_secs }
}

/// What the server and its sockets share.
struct Shared {
    server: TurnServer,
    relays: HashMap<RelayId, Relay>,
    /// Sends the kernel refused (buffer full, unreachable).
    send_failures: u64,
}

struct Relay {
    socket: Arc<UdpSocket>,
    task: JoinHandle<()>,
}

/// A running TURN server on UDP (see the module docs). Dropping it stops
/// every task and closes every socket.
pub struct TurnUdpService {
    shared: Arc<Mutex<Shared>>,
    listeners: Arc<Vec<Arc<UdpSocket>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TurnUdpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnUdpService").field("listeners", &self.local_addrs()).finish_non_exhaustive()
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Every critical section leaves the maps consistent, so a panic in one
    // (none is expected) does not make the state unusable.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl TurnUdpService {
    /// Serves `server` on bound UDP `listeners` (listener `i` is
    /// [`ClientKey::listener`] `i`). Call within a tokio runtime.
    pub fn start(server: TurnServer, listeners: Vec<StdUdpSocket>) -> io::Result<Self> {
        let listeners: Vec<Arc<UdpSocket>> = listeners
            .into_iter()
            .map(|s| {
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s).map(Arc::new)
            })
            .collect::<io::Result<_>>()?;
        let listeners = Arc::new(listeners);
        let shared = Arc::new(Mutex::new(Shared { server, relays: HashMap::new(), send_failures: 0 }));
        let mut tasks = Vec::new();
        for (i, socket) in listeners.iter().enumerate() {
            let (shared, listeners, socket) = (shared.clone(), listeners.clone(), socket.clone());
            let index = u16::try_from(i).map_err(|_| io::Error::other("too many TURN listeners"))?;
            tasks.push(tokio::spawn(serve_listener(shared, listeners, socket, index)));
        }
        tasks.push(tokio::spawn(run_timers(shared.clone(), listeners.clone())));
        Ok(Self { shared, listeners, tasks })
    }

    /// The listeners' addresses.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|s| s.local_addr().ok()).collect()
    }

    /// The server's counters now.
    pub fn stats(&self) -> TurnStats {
        lock(&self.shared).server.stats().clone()
    }

    /// Sends the kernel refused so far.
    pub fn send_failures(&self) -> u64 {
        lock(&self.shared).send_failures
    }

    /// Reads the server (allocations, settings) under its lock.
    pub fn with_server<R>(&self, f: impl FnOnce(&TurnServer) -> R) -> R {
        f(&lock(&self.shared).server)
    }
}

impl Drop for TurnUdpService {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, relay) in lock(&self.shared).relays.drain() {
            relay.task.abort();
        }
    }
}

/// `addr` as `socket` can send to it (IPv4 as mapped IPv6 on an IPv6 socket).
fn for_socket(socket: &UdpSocket, addr: SocketAddr) -> SocketAddr {
    match (socket.local_addr(), addr) {
        (Ok(SocketAddr::V6(_)), SocketAddr::V4(v4)) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        _ => addr,
    }
}

/// Sends without waiting: a full buffer drops the datagram, counted.
fn send(shared: &Mutex<Shared>, socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    if socket.try_send_to(bytes, for_socket(socket, to)).is_err() {
        lock(shared).send_failures += 1;
    }
}

async fn serve_listener(
    shared: Arc<Mutex<Shared>>,
    listeners: Arc<Vec<Arc<UdpSocket>>>,
    socket: Arc<UdpSocket>,
    index: u16,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            // An ICMP error reported on the socket: nothing to read.
            tokio::task::yield_now().await;
            continue;
        };
        let client = ClientKey { transport: Transport::Udp, listener: index, source: from };
        let (out, relay_socket, commands) = {
            let mut s = lock(&shared);
            let out = s.server.handle_client(turn_now(), client, &buf[..n]);
            let relay_socket = match &out {
                ClientOutput::Relay { relay, .. } => s.relays.get(relay).map(|r| r.socket.clone()),
                _ => None,
            };
            (out, relay_socket, drain(&mut s.server))
        };
        match out {
            ClientOutput::Relay { peer, payload, .. } => {
                if let Some(relay) = relay_socket {
                    send(&shared, &relay, &buf[payload], peer);
                }
            }
            ClientOutput::Reply(message) => send(&shared, &socket, &message, from),
            ClientOutput::Pending | ClientOutput::Drop(_) => {}
        }
        apply(&shared, &listeners, commands);
    }
}

fn drain(server: &mut TurnServer) -> Vec<Command> {
    std::iter::from_fn(|| server.poll_command()).collect()
}

/// Carries out the server's commands (and those they lead to).
fn apply(shared: &Arc<Mutex<Shared>>, listeners: &Arc<Vec<Arc<UdpSocket>>>, mut commands: Vec<Command>) {
    while !commands.is_empty() {
        for command in std::mem::take(&mut commands) {
            match command {
                Command::OpenRelay { relay, bind } => {
                    let opened = open_relay(bind);
                    let mut s = lock(shared);
                    let ok = match opened {
                        Ok(socket) => {
                            let task =
                                tokio::spawn(serve_relay(shared.clone(), listeners.clone(), socket.clone(), relay));
                            s.relays.insert(relay, Relay { socket, task });
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
                Command::CloseRelay { relay } => {
                    if let Some(r) = lock(shared).relays.remove(&relay) {
                        r.task.abort();
                    }
                }
                Command::Send { client, message } => {
                    if let Some(socket) = listeners.get(usize::from(client.listener)) {
                        send(shared, socket, &message, client.source);
                    }
                }
            }
        }
    }
}

fn open_relay(bind: SocketAddr) -> io::Result<Arc<UdpSocket>> {
    let socket = StdUdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    Ok(Arc::new(UdpSocket::from_std(socket)?))
}

async fn serve_relay(
    shared: Arc<Mutex<Shared>>,
    listeners: Arc<Vec<Arc<UdpSocket>>>,
    socket: Arc<UdpSocket>,
    relay: RelayId,
) {
    // Received behind room for a ChannelData header.
    let mut buf = vec![0u8; CHANNEL_HEADER_LEN + MAX_DATAGRAM];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf[CHANNEL_HEADER_LEN..]).await else {
            tokio::task::yield_now().await;
            continue;
        };
        let out =
            lock(&shared).server.handle_peer(turn_now(), relay, from, &buf[CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + n]);
        let (client, range) = match out {
            PeerOutput::Channel { client, header } => {
                let Some(range) = Framing::Prepend(header).apply(&mut buf, CHANNEL_HEADER_LEN, n) else { continue };
                (client, range)
            }
            PeerOutput::Indication { client, message } => {
                if let Some(l) = listeners.get(usize::from(client.listener)) {
                    send(&shared, l, &message, client.source);
                }
                continue;
            }
            PeerOutput::Drop(_) => continue,
        };
        if let Some(l) = listeners.get(usize::from(client.listener)) {
            send(&shared, l, &buf[range], client.source);
        }
    }
}

async fn run_timers(shared: Arc<Mutex<Shared>>, listeners: Arc<Vec<Arc<UdpSocket>>>) {
    loop {
        let due = lock(&shared).server.poll_timeout();
        // Woken at least once a second: deadlines move with every request.
        let next = Instant::now() + Duration::from_secs(1);
        let at = due.map_or(next, |d| d.min(next));
        tokio::time::sleep_until(at.into()).await;
        let commands = {
            let mut s = lock(&shared);
            s.server.handle_timeout(Instant::now());
            drain(&mut s.server)
        };
        apply(&shared, &listeners, commands);
    }
}
