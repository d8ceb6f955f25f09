//! UDP: the listeners (clients' requests and ChannelData, answers and
//! ChannelData back from the address each client sends to) and the
//! relayed sockets (peers' datagrams, received behind room for a
//! ChannelData header).

use super::*;

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
pub(super) fn deliver(
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
pub(super) fn handle_client_message(
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

pub(super) async fn serve_udp(shared: Arc<Mutex<Shared>>, udp: Listeners, index: u16) {
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

pub(super) fn open_relay(bind: SocketAddr, freebind: bool) -> io::Result<Arc<UdpSocket>> {
    let options = crate::io::SocketOptions { recv_buffer: 0, send_buffer: 0, freebind };
    let socket: StdUdpSocket = crate::io::bind_udp(bind.ip(), bind.port(), &options)?.into();
    Ok(Arc::new(UdpSocket::from_std(socket)?))
}

thread_local! {
    /// Where relayed ports receive, behind room for a ChannelData header:
    /// one per runtime thread, not one per allocation (a relayed port's
    /// task never awaits while it holds it).
    static PEER_BUFFER: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(vec![0u8; CHANNEL_HEADER_LEN + MAX_PEER_DATAGRAM]);
}

pub(super) async fn serve_relay(shared: Arc<Mutex<Shared>>, udp: Listeners, socket: Arc<UdpSocket>, relay: RelayId) {
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
