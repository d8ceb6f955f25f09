//! UDP and TCP transports for the rtpengine ng protocol.
//!
//! Both are bounded: requests are taken only from `allow_from` networks,
//! UDP requests in flight are capped (beyond it datagrams are dropped and
//! counted: Kamailio retransmits), TCP connections are capped and closed
//! when idle, and a TCP stream is framed incrementally (each byte is looked
//! at once, however slowly it arrives).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use relay_core::io::pktinfo;
use relay_core::ng::bencode::{FrameError, MessageFramer};
use relay_core::ng::NgEngine;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;

/// Transport settings.
#[derive(Debug, Clone)]
pub struct NgTransport {
    /// Listen address (UDP and TCP).
    pub listen: SocketAddr,
    /// Networks requests are taken from (empty: loopback only).
    pub allow_from: Vec<IpNet>,
    /// UDP requests being handled at once.
    pub udp_max_in_flight: usize,
    /// TCP connections at once.
    pub tcp_max_connections: usize,
    /// A TCP connection silent this long is closed.
    pub tcp_idle_timeout: Duration,
    /// A TCP reply not taken by the client within this long closes the
    /// connection (a client that sends and never reads must not hold a
    /// connection slot).
    pub tcp_write_timeout: Duration,
    /// Largest message, bytes.
    pub max_message_bytes: usize,
    /// Longest cookie, bytes.
    pub max_cookie_bytes: usize,
}

/// Transport counters.
#[derive(Debug, Default)]
pub struct NgTransportStats {
    /// Requests refused because their source is not in `allow_from`.
    pub refused_source: AtomicU64,
    /// UDP requests dropped because `udp_max_in_flight` were being handled.
    pub dropped_overload: AtomicU64,
    /// TCP connections refused at `tcp_max_connections`.
    pub refused_connections: AtomicU64,
    /// TCP connections closed for silence.
    pub idle_closed: AtomicU64,
    /// TCP connections closed for a stream that is not ng messages.
    pub bad_streams: AtomicU64,
    /// TCP connections closed because the client did not read a reply in
    /// time.
    pub write_timeouts: AtomicU64,
}

impl NgTransport {
    /// Whether requests from `ip` are taken.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if self.allow_from.is_empty() {
            return ip.is_loopback();
        }
        self.allow_from.iter().any(|n| n.contains(&ip))
    }
}

/// Whether this relay serves ng commands now (a cluster standby does not).
pub type Serving = Arc<dyn Fn() -> bool + Send + Sync>;

/// The reply to a command a standby does not serve: rtpengine's error
/// shape, with the request's cookie.
fn standby_reply(msg: &[u8]) -> Vec<u8> {
    const REASON: &str = "cluster standby: another relay serves this address";
    let split = msg.iter().position(|b| *b == b' ');
    let cookie = split.map_or(&msg[..0], |i| &msg[..i]);
    let json = split.is_some_and(|i| msg[i + 1..].first() == Some(&b'{'));
    let body = if json {
        serde_json::json!({ "result": "error", "error-reason": REASON }).to_string().into_bytes()
    } else {
        relay_core::ng::bencode::dict([
            ("result", relay_core::ng::bencode::Value::str("error")),
            ("error-reason", relay_core::ng::bencode::Value::str(REASON)),
        ])
        .encode()
    };
    [cookie, b" ", &body].concat()
}

/// Handles one message, unless this relay is a standby.
async fn handle(engine: &NgEngine, serving: &Serving, msg: &[u8]) -> Vec<u8> {
    if serving() {
        engine.handle_message(msg).await
    } else {
        standby_reply(msg)
    }
}

/// Binds UDP and TCP on `listen` (same port when the port is fixed) and
/// serves them; returns the bound addresses.
pub async fn start(
    t: NgTransport,
    engine: Arc<NgEngine>,
    stats: Arc<NgTransportStats>,
    serving: Serving,
) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let udp = Arc::new(UdpSocket::bind(t.listen).await?);
    let udp_addr = udp.local_addr()?;
    let tcp = TcpListener::bind(if t.listen.port() == 0 { t.listen } else { udp_addr }).await?;
    let tcp_addr = tcp.local_addr()?;
    let t = Arc::new(t);
    tokio::spawn(drive_timers(engine.clone()));
    let (e, tt, st, sv) = (engine.clone(), t.clone(), stats.clone(), serving.clone());
    tokio::spawn(async move { serve_udp(udp, e, tt, st, sv).await });
    tokio::spawn(async move {
        let connections = Arc::new(Semaphore::new(t.tcp_max_connections));
        loop {
            let Ok((stream, peer)) = tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if !t.allows(peer.ip()) {
                stats.refused_source.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                stats.refused_connections.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let (engine, t, stats, serving) = (engine.clone(), t.clone(), stats.clone(), serving.clone());
            tokio::spawn(async move {
                serve_tcp(stream, engine, &t, &stats, &serving).await;
                drop(permit);
            });
        }
    });
    Ok((udp_addr, tcp_addr))
}

async fn serve_udp(
    udp: Arc<UdpSocket>,
    engine: Arc<NgEngine>,
    t: Arc<NgTransport>,
    stats: Arc<NgTransportStats>,
    serving: Serving,
) {
    let in_flight = Arc::new(Semaphore::new(t.udp_max_in_flight));
    let mut buf = vec![0u8; 65536];
    // Bound to a wildcard address: each reply leaves from the address its
    // request came to (a host with several, such as a service address
    // moved here at takeover; Kamailio's socket only takes answers from
    // the address it asked).
    let local = udp.local_addr().ok().map(|a| a.ip());
    let v6 = local.is_some_and(|ip| ip.is_ipv6());
    let reply_from_request =
        local.is_some_and(|ip| ip.is_unspecified()) && pktinfo::enable(udp.as_raw_fd(), v6).is_ok();
    loop {
        let received = if reply_from_request {
            udp.async_io(Interest::READABLE, || pktinfo::recv(udp.as_raw_fd(), &mut buf)).await
        } else {
            udp.recv_from(&mut buf).await.map(|(n, from)| (n, from, None))
        };
        let Ok((n, from, to)) = received else { continue };
        if !t.allows(from.ip()) {
            stats.refused_source.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            stats.dropped_overload.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let msg = buf[..n].to_vec();
        let (udp, e, serving) = (udp.clone(), engine.clone(), serving.clone());
        tokio::spawn(async move {
            let reply = handle(&e, &serving, &msg).await;
            if reply_from_request {
                let _ = udp.async_io(Interest::WRITABLE, || pktinfo::send(udp.as_raw_fd(), v6, &reply, from, to)).await;
            } else {
                let _ = udp.send_to(&reply, from).await;
            }
            drop(permit);
        });
    }
}

/// One TCP connection: messages are `cookie SP bencode`, back to back
/// (bencode delimits itself).
async fn serve_tcp(
    mut stream: tokio::net::TcpStream,
    engine: Arc<NgEngine>,
    t: &NgTransport,
    stats: &NgTransportStats,
    serving: &Serving,
) {
    let mut framer = MessageFramer::new(t.max_cookie_bytes, t.max_message_bytes);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16384];
    loop {
        loop {
            match framer.next_message(&buf) {
                Ok(Some(range)) => {
                    let reply = handle(&engine, serving, &buf[range.clone()]).await;
                    buf.drain(..range.end);
                    match tokio::time::timeout(t.tcp_write_timeout, stream.write_all(&reply)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return,
                        Err(_) => {
                            stats.write_timeouts.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    stats.bad_streams.fetch_add(1, Ordering::Relaxed);
                    let reason = match e {
                        FrameError::Invalid => "not an ng message (cookie, space, bencoded dictionary)",
                        FrameError::CookieTooLong => "cookie too long",
                        FrameError::TooLarge => "message too large",
                    };
                    let reply = relay_core::ng::bencode::dict([
                        ("result", relay_core::ng::bencode::Value::str("error")),
                        ("error-reason", relay_core::ng::bencode::Value::str(reason)),
                    ]);
                    let bytes = [b"? ".as_slice(), &reply.encode()].concat();
                    let _ = tokio::time::timeout(t.tcp_write_timeout, stream.write_all(&bytes)).await;
                    return;
                }
            }
        }
        match tokio::time::timeout(t.tcp_idle_timeout, stream.read(&mut chunk)).await {
            Err(_) => {
                stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The engine's timers: calls whose sessions all ended are forgotten
/// (`sweep`, every half `orphan_call_ttl`, at most 5 s), and deleted calls'
/// sessions are released when their `delete-delay` is over.
async fn drive_timers(engine: Arc<NgEngine>) {
    let every = (engine.config().limits.orphan_call_ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut next_sweep = tokio::time::Instant::now() + every;
    loop {
        let deadline = engine.poll_timeout().map_or(next_sweep, |t| next_sweep.min(t.into()));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = engine.timers_changed() => continue,
        }
        let now = tokio::time::Instant::now();
        engine.handle_timeout(now.into_std()).await;
        if now >= next_sweep {
            engine.sweep().await;
            next_sweep = now + every;
        }
    }
}
