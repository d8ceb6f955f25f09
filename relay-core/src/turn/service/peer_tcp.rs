//! RFC 6062 TCP allocations: peers accepted on the relayed address or
//! dialled for a Connect, then spliced to the client's data connection,
//! paced at the allocation's rate.

use super::*;

/// A TCP socket on `bind` that may share its address with the others of
/// its allocation (the listener and the connections dialled from it).
fn relay_tcp_socket(bind: SocketAddr, freebind: bool) -> io::Result<TcpSocket> {
    Ok(TcpSocket::from_std_stream(crate::io::bind_tcp(bind, true, freebind)?.into()))
}

pub(super) fn listen_relay(bind: SocketAddr, freebind: bool) -> io::Result<TcpListener> {
    relay_tcp_socket(bind, freebind)?.listen(64)
}

/// Accepts peers on a TCP allocation's relayed address; the server keeps
/// those it permits (telling the client), the others are closed at once.
pub(super) async fn accept_peers(shared: Arc<Mutex<Shared>>, udp: Listeners, listener: TcpListener, relay: RelayId) {
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
pub(super) async fn dial_peer(
    shared: Arc<Mutex<Shared>>,
    udp: Listeners,
    id: ConnectionId,
    bind: SocketAddr,
    peer: SocketAddr,
) {
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
pub(super) async fn splice<R: AsyncRead + Unpin>(
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
