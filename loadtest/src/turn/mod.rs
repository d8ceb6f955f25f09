//! TURN load against any TURN server (UCMRC's or coturn, the same way):
//! N real allocations with REST credentials (the 401 challenge, then the
//! signed Allocate), a channel bound to a peer socket of this process for
//! each, then ChannelData from every client to its peer and datagrams from
//! every peer back through the relayed address, on one global schedule,
//! every packet checked on arrival (stream, sequence, latency).
//!
//! An IPv6 server address makes it all IPv6: clients and peers on ::1,
//! relayed addresses asked for with REQUESTED-ADDRESS-FAMILY.
//!
//! The server's CPU time (all its threads, ended ones included)
//! and resident memory are read when its pid is given: CPU per relayed
//! datagram and memory per allocation come from those.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use relay_core::io::batch_send::{BatchSender, Outgoing};
use relay_core::io::sys::{Epoll, MsgBatch, Received};
use relay_core::turn::proto::*;
use relay_core::wire::stun::{StunClass, StunMessage, ATTR_USERNAME};
use relay_core::wire::stun_writer::{StunWriter, ATTR_ERROR_CODE};
use serde::Serialize;

use crate::packet;
use crate::stats::SeqTracker;

mod setup;

/// The channel every allocation binds to its peer.
const CHANNEL: u16 = 0x4000;
/// Datagrams handed to the kernel at once.
const BATCH: usize = 64;

/// What to run.
#[derive(Debug, Clone)]
pub struct TurnOptions {
    /// The server's UDP listener.
    pub server: SocketAddr,
    /// The REST shared secret.
    pub secret: String,
    /// Allocations.
    pub allocations: usize,
    /// Datagrams per second each way per allocation.
    pub pps: u32,
    /// Seconds of traffic.
    pub duration: Duration,
    /// Payload bytes.
    pub payload: usize,
    /// Allocations in flight at once while they are set up (one thread).
    pub concurrency: usize,
    /// The server's pid (its CPU time and memory are read).
    pub server_pid: Option<u32>,
}

/// What came of it.
#[derive(Debug, Clone, Serialize)]
pub struct TurnReport {
    /// Allocations made (with a channel bound).
    pub allocations: usize,
    /// Seconds the allocations took (challenge, Allocate, ChannelBind each).
    pub setup_secs: f64,
    /// Allocations per second.
    pub allocations_per_sec: f64,
    /// Datagrams sent client → peer and peer → client.
    pub sent: [u64; 2],
    /// Datagrams received intact, each way.
    pub received: [u64; 2],
    /// Loss each way, percent.
    pub loss_percent: [f64; 2],
    /// One-way latency, µs: p50, p99, max.
    pub latency_us: [u64; 3],
    /// Server CPU seconds during the traffic.
    pub server_cpu_secs: Option<f64>,
    /// Server CPU ns per relayed datagram (both ways).
    pub server_ns_per_datagram: Option<f64>,
    /// Server CPU seconds during the allocations.
    pub server_setup_cpu_secs: Option<f64>,
    /// Server resident memory per allocation, bytes.
    pub server_bytes_per_allocation: Option<f64>,
}

/// A server process's CPU time (every thread, ended ones included), ns.
fn process_cpu_ns(pid: u32) -> Option<u64> {
    relay_core::io::sys::process_cpu_time(pid).ok().map(|d| d.as_nanos() as u64)
}

/// A process's resident memory, bytes.
fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// One allocation of the run.
struct Allocation {
    client: Arc<UdpSocket>,
    peer: Arc<UdpSocket>,
    relayed: SocketAddr,
    /// What deleting it at the end signs with.
    credentials: Credentials,
}

/// A TURN client's credentials and the server's challenge.
struct Credentials {
    username: String,
    realm: String,
    nonce: String,
    key: [u8; 16],
}

/// A blocking loopback socket of `server`'s family (127.0.0.1 or ::1)
/// with a large receive buffer.
fn bind(server: SocketAddr) -> Result<UdpSocket, String> {
    let (domain, local) = if server.is_ipv6() {
        (socket2::Domain::IPV6, SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)))
    } else {
        (socket2::Domain::IPV4, SocketAddr::from(([127, 0, 0, 1], 0)))
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, None).map_err(|e| e.to_string())?;
    let _ = relay_core::io::sys::set_large_recv_buffer(&s, 1 << 20);
    s.bind(&local.into()).map_err(|e| format!("bind: {e}"))?;
    Ok(s.into())
}

/// Sends `request` and waits for the answer to its transaction (four
/// tries, 500 ms each).
fn transact(sock: &UdpSocket, server: SocketAddr, request: &[u8]) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; 2048];
    for _ in 0..4 {
        sock.send_to(request, server).map_err(|e| format!("send: {e}"))?;
        let deadline = Instant::now() + Duration::from_millis(500);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1)))).map_err(|e| e.to_string())?;
            let Ok((n, _)) = sock.recv_from(&mut buf) else { break };
            if n >= 20 && buf[8..20] == request[8..20] {
                return Ok(buf[..n].to_vec());
            }
        }
    }
    Err("no answer".into())
}

fn error_code(msg: &StunMessage<'_>) -> Option<u16> {
    let v = msg.attribute(ATTR_ERROR_CODE)?.value;
    Some(u16::from(*v.get(2)?) * 100 + u16::from(*v.get(3)?))
}

fn text(msg: &StunMessage<'_>, kind: u16) -> Option<String> {
    msg.attribute(kind).and_then(|a| std::str::from_utf8(a.value).ok()).map(str::to_owned)
}

/// A signed request of `method` with `attrs`.
fn signed(method: Method, txid: [u8; 12], attrs: &[(u16, Vec<u8>)], c: &Credentials) -> Vec<u8> {
    let mut w = StunWriter::new(message_type(method, StunClass::Request), txid);
    for (kind, value) in attrs {
        w.attribute(*kind, value);
    }
    w.attribute(ATTR_USERNAME, c.username.as_bytes())
        .attribute(ATTR_REALM, c.realm.as_bytes())
        .attribute(ATTR_NONCE, c.nonce.as_bytes())
        .message_integrity(&c.key);
    w.fingerprint();
    w.finish()
}

/// Deletes an allocation (Refresh with LIFETIME 0), so that a later run
/// whose sockets reuse these ports finds no allocation on its 5-tuples.
fn release(server: SocketAddr, a: &Allocation) {
    let _ = a.client.set_nonblocking(false);
    let txid: [u8; 12] = std::array::from_fn(|_| fastrand::u8(..));
    let request = signed(Method::Refresh, txid, &[(ATTR_LIFETIME, vec![0; 4])], &a.credentials);
    let _ = transact(&a.client, server, &request);
}

/// Deletes every allocation, on `threads` threads.
fn release_all(server: SocketAddr, allocations: &[Allocation], threads: usize) {
    let threads = threads.clamp(1, 64);
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || allocations.iter().skip(t).step_by(threads).for_each(|a| release(server, a)));
        }
    });
}

/// Runs the load (see the module docs).
pub fn run(opts: &TurnOptions) -> Result<TurnReport, String> {
    let sockets = setup::open_sockets(opts)?;
    let cpu0 = opts.server_pid.and_then(process_cpu_ns);
    let rss0 = opts.server_pid.and_then(process_rss);
    let t0 = Instant::now();
    let allocations = setup::allocate_all(opts, sockets)?;
    let setup_secs = t0.elapsed().as_secs_f64();
    let cpu1 = opts.server_pid.and_then(process_cpu_ns);
    let rss1 = opts.server_pid.and_then(process_rss);

    // Socket 2i: client i (receives ChannelData); 2i+1: peer i (receives
    // the raw datagram). Stream 2i: client → peer; 2i+1: peer → client.
    let sockets: Vec<Arc<UdpSocket>> = allocations.iter().flat_map(|a| [a.client.clone(), a.peer.clone()]).collect();
    let epoll = Epoll::new().map_err(|e| e.to_string())?;
    for (i, s) in sockets.iter().enumerate() {
        epoll.add(s.as_raw_fd(), i as u64).map_err(|e| e.to_string())?;
    }
    let receiving = AtomicBool::new(true);
    let streams = sockets.len();
    // Send times in packets count from here, for both threads.
    let clock = Instant::now();
    let (sent, received, latency) = std::thread::scope(|s| {
        let receiver = s.spawn(|| receive(&epoll, &sockets, &receiving, clock));
        let sent = send(opts, &allocations, clock);
        // Stragglers: half a second after the last send.
        std::thread::sleep(Duration::from_millis(500));
        receiving.store(false, Ordering::Relaxed);
        let (trackers, latency) =
            receiver.join().unwrap_or_else(|_| (vec![SeqTracker::default(); streams], crate::media::histogram()));
        (sent, trackers, latency)
    });
    let cpu2 = opts.server_pid.and_then(process_cpu_ns);
    // Drained: nothing is in flight any more.
    for s in &sockets {
        let mut buf = [0u8; 2048];
        while s.recv_from(&mut buf).is_ok() {}
    }
    release_all(opts.server, &allocations, opts.concurrency);
    let mut got = [0u64; 2];
    for (stream, t) in received.iter().enumerate() {
        got[stream % 2] += t.unique;
    }
    let loss =
        |i: usize| if sent[i] == 0 { 0.0 } else { 100.0 * (sent[i].saturating_sub(got[i])) as f64 / sent[i] as f64 };
    let relayed = got[0] + got[1];
    let traffic_cpu = cpu1.zip(cpu2).map(|(a, b)| b.saturating_sub(a));
    Ok(TurnReport {
        allocations: allocations.len(),
        setup_secs,
        allocations_per_sec: allocations.len() as f64 / setup_secs.max(1e-9),
        sent,
        received: got,
        loss_percent: [loss(0), loss(1)],
        latency_us: [latency.value_at_quantile(0.5), latency.value_at_quantile(0.99), latency.max()],
        server_cpu_secs: traffic_cpu.map(|ns| ns as f64 / 1e9),
        server_ns_per_datagram: traffic_cpu.filter(|_| relayed > 0).map(|ns| ns as f64 / relayed as f64),
        server_setup_cpu_secs: cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a) as f64 / 1e9),
        server_bytes_per_allocation: rss0
            .zip(rss1)
            .filter(|_| !allocations.is_empty())
            .map(|(a, b)| b.saturating_sub(a) as f64 / allocations.len() as f64),
    })
}

/// Sends every stream on one schedule; returns datagrams sent each way.
fn send(opts: &TurnOptions, allocations: &[Allocation], clock: Instant) -> [u64; 2] {
    let streams = 2 * allocations.len();
    let rate = streams as f64 * f64::from(opts.pps);
    let total = (rate * opts.duration.as_secs_f64()) as u64;
    let mut seqs = vec![0u64; streams];
    let mut sent = [0u64; 2];
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(opts.payload + 64)).collect();
    let mut scratch = Vec::with_capacity(opts.payload + 64);
    let mut batch = BatchSender::new(BATCH);
    let schedule = crate::pace::Schedule::new(Instant::now(), rate, total);
    let mut n = 0u64;
    while n < total {
        let due = schedule.due(n);
        if n >= due {
            continue;
        }
        while n < due {
            let count = ((due - n) as usize).min(BATCH);
            let mut dests = Vec::with_capacity(count);
            for (k, buf) in bufs.iter_mut().enumerate().take(count) {
                let stream = ((n + k as u64) % streams as u64) as usize;
                let a = &allocations[stream / 2];
                let ts = clock.elapsed().as_nanos() as u64;
                packet::build(&mut scratch, stream as u32, seqs[stream], ts, opts.payload);
                seqs[stream] += 1;
                buf.clear();
                if stream.is_multiple_of(2) {
                    buf.extend_from_slice(&ChannelData::header(CHANNEL, scratch.len()));
                    buf.extend_from_slice(&scratch);
                    dests.push((a.client.as_raw_fd(), opts.server));
                } else {
                    buf.extend_from_slice(&scratch);
                    dests.push((a.peer.as_raw_fd(), a.relayed));
                }
                sent[stream % 2] += 1;
            }
            let items: Vec<Outgoing<'_>> =
                dests.iter().zip(&bufs).map(|((fd, to), bytes)| Outgoing { fd: *fd, bytes, to: *to }).collect();
            batch.send(&items);
            n += count as u64;
        }
    }
    sent
}

/// Receives on every socket until told to stop: per-stream trackers and
/// the one-way latency.
fn receive(
    epoll: &Epoll,
    sockets: &[Arc<UdpSocket>],
    receiving: &AtomicBool,
    clock: Instant,
) -> (Vec<SeqTracker>, Histogram<u64>) {
    let mut trackers = vec![SeqTracker::default(); sockets.len()];
    let mut latency = crate::media::histogram();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut batch = MsgBatch::new(64);
    let mut got: Vec<Received> = Vec::with_capacity(64);
    while receiving.load(Ordering::Relaxed) {
        let n = epoll.wait(&mut events, 20).unwrap_or(0);
        for ev in &events[..n] {
            let index = ev.u64 as usize;
            let Some(sock) = sockets.get(index) else { continue };
            loop {
                got.clear();
                match batch.recv(sock.as_raw_fd(), 0, batch.capacity(), &mut got) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                for d in &got {
                    let bytes = batch.slot(d.slot, d.len);
                    // A client receives ChannelData; a peer the bare datagram.
                    let body = if index.is_multiple_of(2) {
                        match ChannelData::parse(bytes) {
                            Some(cd) if cd.channel == CHANNEL => {
                                &bytes[CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + cd.len]
                            }
                            _ => continue,
                        }
                    } else {
                        bytes
                    };
                    let Some((stream, seq, sent_ns)) = packet::parse(body) else { continue };
                    // Socket 2i receives stream 2i+1 (from its peer); 2i+1 stream 2i.
                    if stream as usize != index ^ 1 {
                        continue;
                    }
                    trackers[index ^ 1].record(seq);
                    let now_ns = clock.elapsed().as_nanos() as u64;
                    let _ = latency.record((now_ns.saturating_sub(sent_ns) / 1000).max(1));
                }
            }
        }
    }
    (trackers, latency)
}
