//! `ucmrc-loadtest media`: K simulated calls through a relay, real SRTP.
//!
//! Each call has a PBX-side and an endpoint-side UDP socket and two streams
//! (endpoint → PBX, PBX → endpoint) at `pps` each, PCMU-like (160-byte
//! payload, 20 ms timestamps). Senders encrypt with the RustCrypto SRTP
//! implementation ([`relay_core::testkit::srtp`]); the receiver verifies
//! every packet with libsrtp (the `srtp` crate), so a byte altered in
//! flight is an *authentication failure*, never mistaken for a loss.
//!
//! One sender thread paces every stream on a global schedule (packet `n` is
//! due at `n / rate`) and records how late it sends (its own lag, so a
//! saturated generator shows); one receiver thread drains every socket with
//! epoll + `recvmmsg` batches.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use relay_core::api::SrtpAuthKeys;
use relay_core::io::batch_send::{BatchKind, BatchSender, Outgoing};
use relay_core::io::sys::{Epoll, MsgBatch, Received};
use relay_core::testkit::srtp::SrtpStream;
use serde::Serialize;

use crate::packet;
use crate::stats::SeqTracker;
use crate::target::{call_request, CallLegs, Target};

/// Datagrams handed to the kernel per system call by the sender.
const BATCH: usize = 64;

/// Media load settings.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    /// Simultaneous calls.
    pub calls: usize,
    /// Packets per second per direction per call.
    pub pps: u32,
    /// RTP payload bytes (≥ 20).
    pub payload: usize,
    /// How long packets are sent.
    pub duration: Duration,
    /// Latching policy requested for every session.
    pub latch: String,
    /// Move one call's endpoint to a new port this often (NAT rebinding).
    pub rebind_every: Option<Duration>,
    /// Junk datagrams per second sprayed at the calls' relay ports from a
    /// stranger's socket (anything it receives back is a leak).
    pub junk_pps: u32,
    /// Time to wait for packets in flight after the last send.
    pub drain: Duration,
    /// Print a progress line every second (stderr).
    pub progress: bool,
    /// Key SRTP with a DTLS handshake per call, end to end through the relay.
    pub dtls: bool,
    /// Send in io_uring batches (one system call per up to 64 datagrams,
    /// each from its own call's socket); `false`: one `sendto` each.
    pub batch_sends: bool,
}

impl Default for MediaOptions {
    fn default() -> Self {
        Self {
            calls: 100,
            pps: 50,
            payload: 160,
            duration: Duration::from_secs(10),
            latch: "authenticated".into(),
            rebind_every: None,
            junk_pps: 0,
            drain: Duration::from_millis(500),
            progress: false,
            dtls: false,
            batch_sends: true,
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SecondReport {
    /// Seconds since the start (1 = the first second).
    pub t: u64,
    /// Packets sent in this second.
    pub offered: u64,
    /// Packets received (authenticated) in this second.
    pub delivered: u64,
    /// Authentication failures in this second.
    pub auth_failures: u64,
    /// One-way latency p50 in this second, µs.
    pub p50_us: u64,
    /// One-way latency p99 in this second, µs.
    pub p99_us: u64,
}

/// The whole run (`--json` writes this object).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MediaReport {
    /// What was measured.
    pub target: String,
    /// Simultaneous calls.
    pub calls: usize,
    /// Packets per second per direction per call.
    pub pps_per_stream: u32,
    /// Seconds of sending.
    pub duration_s: f64,
    /// Packets sent.
    pub offered: u64,
    /// Packets received and authenticated (unique).
    pub delivered: u64,
    /// Offered packets per second.
    pub offered_pps: f64,
    /// Delivered packets per second.
    pub delivered_pps: f64,
    /// Sent but never received (packets that arrived altered are
    /// `auth_failures`, not losses).
    pub lost: u64,
    /// `lost / offered`.
    pub loss_ratio: f64,
    /// Received more than once.
    pub duplicates: u64,
    /// Received after a later packet of the same stream.
    pub reordered: u64,
    /// Received but failing SRTP authentication (altered in flight).
    pub auth_failures: u64,
    /// Authenticated packets that arrived on another call's socket (must be 0).
    pub misrouted: u64,
    /// One-way latency p50, µs.
    pub p50_us: u64,
    /// One-way latency p99, µs.
    pub p99_us: u64,
    /// One-way latency p99.9, µs.
    pub p999_us: u64,
    /// Largest one-way latency, µs.
    pub max_us: u64,
    /// Relay CPU per forwarded packet, µs (`null` unless the relay runs in
    /// this process).
    pub relay_cpu_us_per_pkt: Option<f64>,
    /// How late the generator sent, p99 µs (large: the generator is saturated).
    pub send_lag_p99_us: u64,
    /// How late the generator sent at worst, µs.
    pub send_lag_max_us: u64,
    /// Sends the kernel refused (full socket buffer).
    pub send_errors: u64,
    /// How the generator sent: `uring` (batched) or `plain` (one `sendto` each).
    pub send_batching: String,
    /// NAT rebinding events.
    pub rebinds: u64,
    /// Junk datagrams sprayed.
    pub junk_sent: u64,
    /// Datagrams the junk socket received back (leaks; must be 0).
    pub junk_leaked: u64,
    /// DTLS-SRTP handshakes completed through the relay (`--dtls`).
    pub dtls_handshakes: u64,
    /// Datagrams received that are not RTP/RTCP (late DTLS records, STUN).
    pub non_media: u64,
    /// Per-second figures.
    pub per_second: Vec<SecondReport>,
}

/// Streams: `2 * call` is endpoint → PBX (received on the PBX socket),
/// `2 * call + 1` is PBX → endpoint (received on the endpoint socket).
/// Sockets: `2 * call` is the PBX socket, `2 * call + 1` the endpoint's.
fn bind() -> Result<UdpSocket, String> {
    bind_on([127, 0, 0, 1])
}

fn bind_on(ip: [u8; 4]) -> Result<UdpSocket, String> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).map_err(|e| e.to_string())?;
    let _ = relay_core::io::sys::set_large_recv_buffer(&s, 4 << 20);
    s.bind(&SocketAddr::from((ip, 0)).into()).map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(s.into())
}

fn master() -> Vec<u8> {
    (0..30).map(|_| fastrand::u8(..)).collect()
}

fn auth_keys(master: &[u8]) -> Result<SrtpAuthKeys, String> {
    SrtpAuthKeys::from_master(&master[..16], &master[16..], 80).map_err(|e| e.message)
}

struct Shared {
    sockets: RwLock<Vec<Arc<UdpSocket>>>,
    epoll: Epoll,
    sent: AtomicU64,
    delivered: AtomicU64,
    auth_failures: AtomicU64,
    sending: AtomicBool,
    receiving: AtomicBool,
    second: Mutex<Histogram<u64>>,
}

/// A latency histogram: 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Runs the media load against `target`.
pub fn run(opts: &MediaOptions, target: &mut dyn Target) -> Result<MediaReport, String> {
    if opts.calls == 0 || opts.pps == 0 {
        return Err("calls and pps must be at least 1".into());
    }
    if opts.dtls && opts.latch == "authenticated" {
        return Err("authenticated latching needs the SRTP keys at allocation; DTLS keys exist only after the handshake (use window)".into());
    }
    let Calls { sockets, masters, legs, dtls_handshakes } = set_up_calls(opts, target)?;
    let epoll = Epoll::new().map_err(|e| e.to_string())?;
    for (i, s) in sockets.iter().enumerate() {
        epoll.add(s.as_raw_fd(), i as u64).map_err(|e| e.to_string())?;
    }
    let shared = Arc::new(Shared {
        sockets: RwLock::new(sockets),
        epoll,
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        auth_failures: AtomicU64::new(0),
        sending: AtomicBool::new(true),
        receiving: AtomicBool::new(true),
        second: Mutex::new(histogram()),
    });
    let cpu0 = target.relay_cpu_ns();
    let fwd0 = target.relay_forwarded();
    let start = Instant::now();

    let receiver = {
        let (shared, masters) = (shared.clone(), masters.clone());
        std::thread::Builder::new()
            .name("lt-receiver".into())
            .spawn(move || receive(&shared, &masters, start))
            .map_err(|e| e.to_string())?
    };
    let sender = {
        let (shared, masters, legs, opts) = (shared.clone(), masters.clone(), legs.clone(), opts.clone());
        std::thread::Builder::new()
            .name("lt-sender".into())
            .spawn(move || send(&shared, &masters, &legs, &opts, start))
            .map_err(|e| e.to_string())?
    };
    let junk = (opts.junk_pps > 0).then(|| {
        let (shared, legs, pps) = (shared.clone(), legs.clone(), opts.junk_pps);
        std::thread::spawn(move || spray(&shared, &legs, pps))
    });
    let per_second = progress(&shared, start, opts.progress);
    let (sent_per_stream, lag, send_errors, rebinds, send_batching) =
        sender.join().map_err(|_| "sender thread panicked")?;
    let sending_time = start.elapsed().min(opts.duration + Duration::from_millis(50));
    std::thread::sleep(opts.drain); // the stragglers' window, not synchronisation
    shared.receiving.store(false, Ordering::Relaxed);
    let rx = receiver.join().map_err(|_| "receiver thread panicked")?;
    let (junk_sent, junk_leaked) = match junk {
        Some(j) => j.join().map_err(|_| "junk thread panicked")?,
        None => (0, 0),
    };
    let relay_cpu_us_per_pkt = match (cpu0, target.relay_cpu_ns(), fwd0, target.relay_forwarded()) {
        (Some(c0), Some(c1), Some(f0), Some(f1)) if f1 > f0 => {
            Some(c1.saturating_sub(c0) as f64 / 1000.0 / (f1 - f0) as f64)
        }
        _ => None,
    };
    target.release(&legs);

    let offered: u64 = sent_per_stream.iter().sum();
    let delivered: u64 = rx.trackers.iter().map(|t| t.unique).sum();
    // A packet that arrived altered is an authentication failure, not a loss.
    let lost = offered.saturating_sub(delivered + rx.auth_failures);
    let secs = sending_time.as_secs_f64().max(1e-9);
    Ok(MediaReport {
        target: target.describe(),
        calls: opts.calls,
        pps_per_stream: opts.pps,
        duration_s: secs,
        offered,
        delivered,
        offered_pps: offered as f64 / secs,
        delivered_pps: delivered as f64 / secs,
        lost,
        loss_ratio: if offered == 0 { 0.0 } else { lost as f64 / offered as f64 },
        duplicates: rx.trackers.iter().map(|t| t.duplicates).sum(),
        reordered: rx.trackers.iter().map(|t| t.reordered).sum(),
        auth_failures: rx.auth_failures,
        misrouted: rx.misrouted,
        p50_us: rx.latency.value_at_quantile(0.5),
        p99_us: rx.latency.value_at_quantile(0.99),
        p999_us: rx.latency.value_at_quantile(0.999),
        max_us: rx.latency.max(),
        relay_cpu_us_per_pkt,
        send_lag_p99_us: lag.value_at_quantile(0.99),
        send_lag_max_us: lag.max(),
        send_errors,
        send_batching: send_batching.to_string(),
        rebinds,
        junk_sent,
        junk_leaked,
        dtls_handshakes,
        non_media: rx.non_media,
        per_second,
    })
}

/// The calls of a run, allocated on the target: two sockets and two
/// master keys per call (PBX, endpoint).
struct Calls {
    sockets: Vec<Arc<UdpSocket>>,
    masters: Vec<Vec<u8>>,
    legs: Vec<CallLegs>,
    dtls_handshakes: u64,
}

/// Allocates every call (with SDES keys, or keys from a DTLS handshake
/// per call afterwards); on a failure, releases what it allocated.
fn set_up_calls(opts: &MediaOptions, target: &mut dyn Target) -> Result<Calls, String> {
    let streams = opts.calls * 2;
    let mut masters: Vec<Vec<u8>> = (0..streams).map(|_| master()).collect();
    let mut sockets = Vec::with_capacity(streams);
    for _ in 0..streams {
        sockets.push(Arc::new(bind()?));
    }
    let mut legs: Vec<CallLegs> = Vec::with_capacity(opts.calls);
    for c in 0..opts.calls {
        let pbx = sockets[2 * c].local_addr().map_err(|e| e.to_string())?;
        let endpoint = sockets[2 * c + 1].local_addr().map_err(|e| e.to_string())?;
        let keys = if opts.dtls { None } else { Some((auth_keys(&masters[2 * c + 1])?, auth_keys(&masters[2 * c])?)) };
        match target.allocate(&call_request(pbx, endpoint, keys, &opts.latch)) {
            Ok(l) => legs.push(l),
            Err(e) => {
                target.release(&legs);
                return Err(format!("allocating call {c}: {e}"));
            }
        }
    }
    let mut dtls_handshakes = 0;
    if opts.dtls {
        match dtls_keys(&sockets, &legs) {
            Ok(keys) => {
                for (c, (endpoint_sends, pbx_sends)) in keys.into_iter().enumerate() {
                    masters[2 * c] = endpoint_sends;
                    masters[2 * c + 1] = pbx_sends;
                    dtls_handshakes += 1;
                }
            }
            Err(e) => {
                target.release(&legs);
                return Err(e);
            }
        }
    }
    Ok(Calls { sockets, masters, legs, dtls_handshakes })
}

/// While the sender sends: one line per second (when `print`), and the
/// per-second series.
fn progress(shared: &Shared, start: Instant, print: bool) -> Vec<SecondReport> {
    let mut per_second = Vec::new();
    let (mut last_sent, mut last_delivered, mut last_auth) = (0, 0, 0);
    let mut next = start + Duration::from_secs(1);
    while shared.sending.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(50))); // the report's pace
            continue;
        }
        next += Duration::from_secs(1);
        let (s, d, a) = (
            shared.sent.load(Ordering::Relaxed),
            shared.delivered.load(Ordering::Relaxed),
            shared.auth_failures.load(Ordering::Relaxed),
        );
        let h = std::mem::replace(&mut *shared.second.lock().unwrap_or_else(|p| p.into_inner()), histogram());
        let sec = SecondReport {
            t: per_second.len() as u64 + 1,
            offered: s - last_sent,
            delivered: d - last_delivered,
            auth_failures: a - last_auth,
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
        };
        if print {
            eprintln!(
                "t={:>3}s offered {:>8} pps  delivered {:>8} pps  auth failures {}  p50 {} µs  p99 {} µs",
                sec.t, sec.offered, sec.delivered, sec.auth_failures, sec.p50_us, sec.p99_us
            );
        }
        (last_sent, last_delivered, last_auth) = (s, d, a);
        per_second.push(sec);
    }
    per_second
}

/// SRTP master keys of one call: (what the endpoint sends with, what the PBX sends with).
type CallMasters = (Vec<u8>, Vec<u8>);

/// DTLS handshakes for every call (16 at a time), on the calls' own sockets.
fn dtls_keys(sockets: &[Arc<UdpSocket>], legs: &[CallLegs]) -> Result<Vec<CallMasters>, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lt-dtls")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let ids = Arc::new(crate::dtls::Identities::generate()?);
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let result = rt.block_on(async {
        let mut tasks = Vec::with_capacity(legs.len());
        for (c, leg) in legs.iter().enumerate() {
            let (ids, limit, leg) = (ids.clone(), limit.clone(), leg.clone());
            let (endpoint, pbx) = (sockets[2 * c + 1].clone(), sockets[2 * c].clone());
            tasks.push(tokio::spawn(async move {
                let _permit = limit.acquire().await.map_err(|e| e.to_string())?;
                crate::dtls::handshake(&ids, &endpoint, leg.to_endpoint_leg, &pbx, leg.to_pbx_leg).await
            }));
        }
        let mut keys = Vec::with_capacity(tasks.len());
        for (c, t) in tasks.into_iter().enumerate() {
            keys.push(t.await.map_err(|e| e.to_string())?.map_err(|e| format!("call {c}: {e}"))?);
        }
        Ok::<_, String>(keys)
    });
    // Dropping the runtime ends every DTLS task and closes the duplicated sockets.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The sender: every stream on one global schedule.
fn send(
    shared: &Shared,
    masters: &[Vec<u8>],
    legs: &[CallLegs],
    opts: &MediaOptions,
    start: Instant,
) -> (Vec<u64>, Histogram<u64>, u64, u64, &'static str) {
    let streams = masters.len();
    let mut tx: Vec<Option<SrtpStream>> = masters.iter().map(|m| SrtpStream::new(m)).collect();
    let mut seqs = vec![0u64; streams];
    let mut lag = histogram();
    let rate = streams as f64 * f64::from(opts.pps);
    let total = (rate * opts.duration.as_secs_f64()) as u64;
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(opts.payload + 200)).collect();
    let mut batch = if opts.batch_sends { BatchSender::new(BATCH) } else { BatchSender::plain() };
    let (mut errors, mut rebinds) = (0u64, 0u64);
    let mut next_rebind = opts.rebind_every.map(|d| start + d);
    let schedule = crate::pace::Schedule::new(start, rate, total);
    let mut n = 0u64;
    while n < total {
        let due = schedule.due(n);
        if n >= due {
            continue;
        }
        let sockets = shared.sockets.read().unwrap_or_else(|p| p.into_inner());
        while n < due {
            // Build up to BATCH due packets, then hand them to the kernel at once.
            let count = ((due - n) as usize).min(BATCH);
            let mut dests = [(0 as std::os::fd::RawFd, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH];
            let mut built = 0;
            for k in 0..count {
                let stream = ((n + k as u64) % streams as u64) as usize;
                let scheduled = schedule.at(n + k as u64);
                let now = start.elapsed();
                let _ = lag.record(now.saturating_sub(scheduled).as_micros() as u64);
                let call = stream / 2;
                // Stream 2c: endpoint socket → endpoint leg; 2c+1: PBX socket → PBX leg.
                let (sock, to) = if stream.is_multiple_of(2) {
                    (&sockets[2 * call + 1], legs[call].to_endpoint_leg)
                } else {
                    (&sockets[2 * call], legs[call].to_pbx_leg)
                };
                let buf = &mut bufs[built];
                packet::build(buf, stream as u32, seqs[stream], now.as_nanos() as u64, opts.payload);
                seqs[stream] += 1;
                if let Some(Some(t)) = tx.get_mut(stream) {
                    if t.protect(buf).is_ok() {
                        dests[built] = (sock.as_raw_fd(), to);
                        built += 1;
                    }
                }
            }
            let items: Vec<Outgoing<'_>> =
                (0..built).map(|k| Outgoing { fd: dests[k].0, bytes: &bufs[k], to: dests[k].1 }).collect();
            errors += batch.send(&items) as u64;
            n += count as u64;
            shared.sent.fetch_add(count as u64, Ordering::Relaxed);
        }
        drop(sockets);
        if let (Some(at), Some(every)) = (next_rebind, opts.rebind_every) {
            if Instant::now() >= at {
                let call = (rebinds as usize) % legs.len();
                if rebind(shared, 2 * call + 1).is_ok() {
                    rebinds += 1;
                }
                next_rebind = Some(at + every);
            }
        }
    }
    shared.sending.store(false, Ordering::Relaxed);
    let kind = match batch.kind() {
        BatchKind::Uring => "uring",
        BatchKind::Plain => "plain",
    };
    (seqs, lag, errors, rebinds, kind)
}

/// Replaces socket `index` with a fresh one on a new port (the old one
/// closes when the receiver lets go of it).
fn rebind(shared: &Shared, index: usize) -> Result<(), String> {
    let fresh = Arc::new(bind()?);
    shared.epoll.add(fresh.as_raw_fd(), index as u64).map_err(|e| e.to_string())?;
    let mut table = shared.sockets.write().unwrap_or_else(|p| p.into_inner());
    if let Some(old) = table.get(index) {
        let _ = shared.epoll.delete(old.as_raw_fd());
    }
    if let Some(slot) = table.get_mut(index) {
        *slot = fresh;
    }
    Ok(())
}

struct ReceiverResult {
    trackers: Vec<SeqTracker>,
    latency: Histogram<u64>,
    auth_failures: u64,
    misrouted: u64,
    non_media: u64,
}

fn libsrtp_inbound(master: &[u8]) -> Option<srtp::Session> {
    let p = srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80();
    srtp::Session::with_inbound_template(srtp::StreamPolicy { rtp: p, rtcp: p, key: master, ..Default::default() }).ok()
}

/// The receiver: drains every socket, verifies with libsrtp, tracks
/// sequence numbers and latency.
fn receive(shared: &Shared, masters: &[Vec<u8>], start: Instant) -> ReceiverResult {
    let streams = masters.len();
    let mut sessions: Vec<Option<srtp::Session>> = masters.iter().map(|m| libsrtp_inbound(m)).collect();
    let mut r = ReceiverResult {
        trackers: vec![SeqTracker::default(); streams],
        latency: histogram(),
        auth_failures: 0,
        misrouted: 0,
        non_media: 0,
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut batch = MsgBatch::new(64);
    let mut got: Vec<Received> = Vec::with_capacity(64);
    let mut clear = Vec::with_capacity(2048 + 160);
    let mut second: Vec<u64> = Vec::with_capacity(1024);
    while shared.receiving.load(Ordering::Relaxed) {
        let n = shared.epoll.wait(&mut events, 20).unwrap_or(0);
        for ev in &events[..n] {
            let index = ev.u64 as usize;
            let Some(sock) = shared.sockets.read().unwrap_or_else(|p| p.into_inner()).get(index).cloned() else {
                continue;
            };
            // Socket 2c (PBX) receives stream 2c; socket 2c+1 (endpoint) stream 2c+1.
            let stream = index;
            loop {
                got.clear();
                match batch.recv(sock.as_raw_fd(), 0, batch.capacity(), &mut got) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let now_ns = start.elapsed().as_nanos() as u64;
                for d in &got {
                    let bytes = batch.slot(d.slot, d.len);
                    // RFC 7983: only 128..=191 is RTP/RTCP; DTLS (e.g. a late
                    // close_notify) and STUN are not media and not failures.
                    if !matches!(bytes.first(), Some(128..=191)) {
                        r.non_media += 1;
                        continue;
                    }
                    clear.clear();
                    clear.extend_from_slice(bytes);
                    let Some(Some(session)) = sessions.get_mut(stream) else { continue };
                    if session.unprotect(&mut clear).is_err() {
                        r.auth_failures += 1;
                        shared.auth_failures.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let Some((s, seq, sent)) = packet::parse(&clear) else {
                        r.auth_failures += 1;
                        continue;
                    };
                    if s as usize != stream {
                        r.misrouted += 1;
                        continue;
                    }
                    let before = r.trackers[stream].unique;
                    r.trackers[stream].record(seq);
                    if r.trackers[stream].unique > before {
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    let us = now_ns.saturating_sub(sent) / 1000;
                    let _ = r.latency.record(us.max(1));
                    second.push(us.max(1));
                }
            }
        }
        if !second.is_empty() {
            let mut h = shared.second.lock().unwrap_or_else(|p| p.into_inner());
            for us in second.drain(..) {
                let _ = h.record(us);
            }
        }
    }
    r
}

/// Sprays junk at the calls' relay ports from a stranger's socket (on
/// 127.0.0.2, another address than the calls', as a stranger on the
/// internet would be); returns (sent, datagrams received back).
fn spray(shared: &Shared, legs: &[CallLegs], pps: u32) -> (u64, u64) {
    let Ok(sock) = bind_on([127, 0, 0, 2]) else { return (0, 0) };
    let interval = Duration::from_secs_f64(1.0 / f64::from(pps));
    let (mut sent, mut leaked) = (0u64, 0u64);
    let mut buf = [0u8; 2048];
    let mut next = Instant::now();
    while shared.sending.load(Ordering::Relaxed) {
        let leg = &legs[fastrand::usize(..legs.len())];
        let to = if fastrand::bool() { leg.to_pbx_leg } else { leg.to_endpoint_leg };
        let len = fastrand::usize(12..200);
        let mut junk: Vec<u8> = (0..len).map(|_| fastrand::u8(..)).collect();
        junk[0] = 0x80 | (junk[0] & 0x3f); // looks like RTP
        if sock.send_to(&junk, to).is_ok() {
            sent += 1;
        }
        while sock.recv_from(&mut buf).is_ok() {
            leaked += 1;
        }
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    while sock.recv_from(&mut buf).is_ok() {
        leaked += 1;
    }
    (sent, leaked)
}

/// One step of a capacity search.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityStep {
    /// Offered packets per second.
    pub offered_pps: f64,
    /// Delivered packets per second.
    pub delivered_pps: f64,
    /// Loss ratio.
    pub loss_ratio: f64,
    /// One-way latency p50, µs.
    pub p50_us: u64,
    /// Whether the step passed.
    pub pass: bool,
}

/// The result of `--find-capacity`.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    /// The highest offered rate that passed (`null`: not even the first step).
    pub capacity_pps: Option<f64>,
    /// The full report of that step.
    pub best: Option<MediaReport>,
    /// Every step in order.
    pub steps: Vec<CapacityStep>,
}

/// A step passes with < 0.1 % loss, p50 ≤ 2 ms and no altered packet.
pub fn passes(r: &MediaReport) -> bool {
    r.loss_ratio < 0.001 && r.p50_us <= 2000 && r.auth_failures == 0 && r.misrouted == 0
}

/// Steps the per-stream rate up ×1.25 from `opts.pps` (a fresh target per
/// step) until a step fails or `max_steps` ran; reports the highest pass.
pub fn find_capacity(
    opts: &MediaOptions,
    mut target: impl FnMut() -> Result<Box<dyn Target>, String>,
    max_steps: usize,
) -> Result<CapacityReport, String> {
    let mut pps = f64::from(opts.pps);
    let mut out = CapacityReport { capacity_pps: None, best: None, steps: Vec::new() };
    for _ in 0..max_steps {
        let step = MediaOptions { pps: pps.round() as u32, ..opts.clone() };
        let mut t = target()?;
        let r = run(&step, t.as_mut())?;
        let pass = passes(&r);
        out.steps.push(CapacityStep {
            offered_pps: r.offered_pps,
            delivered_pps: r.delivered_pps,
            loss_ratio: r.loss_ratio,
            p50_us: r.p50_us,
            pass,
        });
        if !pass {
            break;
        }
        out.capacity_pps = Some(r.offered_pps);
        out.best = Some(r);
        pps *= 1.25;
    }
    Ok(out)
}
