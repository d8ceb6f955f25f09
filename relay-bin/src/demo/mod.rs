//! `ucmrc demo`: a relay, a connector, a simulated PBX and N phones in one
//! process on loopback. The PBX allocates every call through the connector's
//! authenticated TLS control channel (as a PBX behind NAT does), then PBX and
//! phones exchange real SRTP through the relay, with a live line of figures
//! and a summary.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use relay_core::api::{SessionRequest, SrtpAuthKeys};
use relay_core::connector::{Connector, ConnectorConfig};
use relay_core::control::auth::token_hash;
use relay_core::control::server::{ControlConfig, ControlServer, TenantCredentials};
use relay_core::tls::{load_certified_key, pem_fingerprint, ClientTrust, ReloadableCert};
use relay_core::{Relay, RelayConfig};
use tokio::net::UdpSocket;

use relay_core::testkit::srtp::SrtpStream;

/// Demo options.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Simulated calls.
    pub calls: usize,
    /// Run time.
    pub seconds: u64,
    /// Packets per second per direction per call.
    pub pps: u32,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    received: AtomicU64,
    auth_failures: AtomicU64,
}

fn master(rng: &mut fastrand::Rng) -> Vec<u8> {
    (0..30).map(|_| rng.u8(..)).collect()
}

fn auth(master: &[u8]) -> Result<SrtpAuthKeys, String> {
    SrtpAuthKeys::from_master(&master[..16], &master[16..], 80).map_err(|e| e.message)
}

const DEMO_TOKEN_LEN: usize = 32;

/// The relay's control listener (a throwaway certificate, pinned by the
/// connector) and a connector logged in as tenant `demo`.
async fn control_and_connector(relay: &Relay) -> Result<(ControlServer, Connector, SocketAddr), String> {
    let pki = relay_core::testkit::pki::issue("relay.demo")?;
    let (cert_pem, key_pem) = (pki.cert_pem, pki.key_pem);
    let key = load_certified_key(cert_pem.as_bytes(), key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let token: String = (0..DEMO_TOKEN_LEN).map(|_| fastrand::alphanumeric()).collect();
    let tenants = vec![TenantCredentials { id: "demo".into(), token_sha256: token_hash(&token), services: vec![] }];
    let server = ControlServer::new(ControlConfig::default(), ReloadableCert::new(key), tenants, relay.handle())
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener, std::future::pending()).await });
    let trust = ClientTrust::pinned_hex(&pem_fingerprint(cert_pem.as_bytes()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let connector = Connector::start(ConnectorConfig::new(&addr.to_string(), "relay.demo", trust, "demo", &token))
        .map_err(|e| e.to_string())?;
    connector.handle().wait_connected(1, Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
    Ok((server, connector, addr))
}

/// Runs the demo; returns an error if any packet failed authentication.
pub fn run(opts: DemoOptions) -> Result<(), String> {
    let config = RelayConfig { port_min: 10000, port_max: 19999, ..RelayConfig::default() };
    let relay = Relay::start(config.clone()).map_err(|e| e.to_string())?;
    println!(
        "ucmrc demo: relay on {} ports {}-{} (datapath {}), {} calls of SRTP (AES_CM_128_HMAC_SHA1_80) at {} pps each way, {} s",
        config.bind_ip,
        config.port_min,
        config.port_max,
        relay.datapath().running.as_str(),
        opts.calls,
        opts.pps,
        opts.seconds
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(drive(&relay, opts));
    drop(rt);
    relay.shutdown(Duration::ZERO);
    result
}

/// One direction of a simulated call: its socket, where it sends, its
/// SRTP sender and SSRC.
struct Direction {
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    tx: SrtpStream,
    ssrc: u32,
}

/// What the receivers count: packets, authentication failures, one-way
/// latency; and the flag that stops them.
struct Meter {
    tally: Tally,
    hist: Mutex<Histogram<u64>>,
    stop: AtomicBool,
    start: Instant,
}

impl Meter {
    /// A receiver on `sock` for packets protected with `key`: each must
    /// authenticate; the latency comes from the send time the sender wrote.
    fn spawn_receiver(self: &Arc<Self>, sock: Arc<UdpSocket>, mut rx: SrtpStream) -> tokio::task::JoinHandle<()> {
        let meter = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while !meter.stop.load(Ordering::Relaxed) {
                let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), sock.recv(&mut buf)).await else {
                    continue;
                };
                let mut pkt = buf[..n].to_vec();
                match rx.unprotect(&mut pkt) {
                    Ok(()) if pkt.len() >= 20 => {
                        meter.tally.received.fetch_add(1, Ordering::Relaxed);
                        let sent = u64::from_be_bytes(pkt[12..20].try_into().unwrap_or([0; 8]));
                        let now = meter.start.elapsed().as_micros() as u64;
                        if let Ok(mut h) = meter.hist.lock() {
                            let _ = h.record(now.saturating_sub(sent).max(1));
                        }
                    }
                    _ => {
                        meter.tally.auth_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    }

    /// The latency quantiles `qs`, µs.
    fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [u64; N] {
        self.hist.lock().map(|h| qs.map(|q| h.value_at_quantile(q))).unwrap_or([0; N])
    }
}

async fn drive(relay: &Relay, opts: DemoOptions) -> Result<(), String> {
    let (control, connector, control_addr) = control_and_connector(relay).await?;
    println!("connector: logged in to the relay's control channel (TLS) at {control_addr} as tenant demo");
    let handle = connector.handle();
    let meter = Arc::new(Meter {
        tally: Tally::default(),
        hist: Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?),
        stop: AtomicBool::new(false),
        start: Instant::now(),
    });
    let mut rng = fastrand::Rng::new();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for c in 0..opts.calls {
        let (directions, rx) = set_up_call(&handle, &meter, &mut rng, c).await?;
        senders.extend(directions);
        receivers.extend(rx);
    }
    send_media(&mut senders, &meter, &opts).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the last packets' flight, not synchronisation
    meter.stop.store(true, Ordering::Relaxed);
    for r in receivers {
        let _ = r.await;
    }
    let t = &meter.tally;
    let (sent, received, failures) =
        (t.sent.load(Ordering::Relaxed), t.received.load(Ordering::Relaxed), t.auth_failures.load(Ordering::Relaxed));
    let counters = relay.handle().counters().await.map_err(|e| e.to_string())?.total;
    connector.stop().await;
    control.shutdown();
    let [p50, p99, p999] = meter.quantiles([0.5, 0.99, 0.999]);
    println!(
        "summary: {} calls, sent {sent}, received {received} (loss {:.3}%), one-way latency p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms, {failures} auth failures; relay forwarded {} and dropped {}",
        opts.calls,
        100.0 * sent.saturating_sub(received) as f64 / sent.max(1) as f64,
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        p999 as f64 / 1000.0,
        counters.packets_forwarded,
        counters.drops.total()
    );
    if failures > 0 {
        return Err(format!("{failures} packets failed SRTP authentication: the relay altered bytes"));
    }
    Ok(())
}

/// Call `c`: a session allocated through the connector with SRTP
/// authentication keys for a PBX and a phone socket; their two sending
/// directions and two receivers.
async fn set_up_call(
    handle: &relay_core::connector::ConnectorHandle,
    meter: &Arc<Meter>,
    rng: &mut fastrand::Rng,
    c: usize,
) -> Result<([Direction; 2], [tokio::task::JoinHandle<()>; 2]), String> {
    let pbx = Arc::new(UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?);
    let phone = Arc::new(UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?);
    let (pbx_key, phone_key) = (master(rng), master(rng));
    let mut request = SessionRequest::default().with_srtp_auth(auth(&pbx_key)?, auth(&phone_key)?);
    request.pbx.hint = pbx.local_addr().ok().map(|a| a.to_string());
    request.endpoint.hint = phone.local_addr().ok().map(|a| a.to_string());
    request.quality = Some(true);
    let s = handle.allocate(request).await.map_err(|e| format!("allocate through the connector: {e}"))?;
    let addr = |l: &relay_core::api::LegAddressReply| l.rtp_socket_addr().ok_or("bad address".to_string());
    let (to_pbx_leg, to_endpoint_leg) = (addr(&s.pbx)?, addr(&s.endpoint)?);
    if c == 0 {
        println!("call 0: session {}, PBX sends to {}, phone sends to {}", s.id, s.pbx.rtp, s.endpoint.rtp);
    }
    let stream = |k: &[u8]| SrtpStream::new(k).ok_or_else(|| "srtp keys".to_string());
    let receivers = [
        meter.spawn_receiver(pbx.clone(), stream(&phone_key)?),
        meter.spawn_receiver(phone.clone(), stream(&pbx_key)?),
    ];
    let directions = [
        Direction { socket: pbx, to: to_pbx_leg, tx: stream(&pbx_key)?, ssrc: 2 * c as u32 + 1 },
        Direction { socket: phone, to: to_endpoint_leg, tx: stream(&phone_key)?, ssrc: 2 * c as u32 + 2 },
    ];
    Ok((directions, receivers))
}

/// Sends one packet per direction per tick at `opts.pps` (each carrying its
/// send time), printing a line each second, for `opts.seconds` (0: until
/// interrupted).
async fn send_media(senders: &mut [Direction], meter: &Meter, opts: &DemoOptions) {
    let period = Duration::from_secs_f64(1.0 / f64::from(opts.pps.max(1)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut tick, mut last_print, mut last_received) = (0u64, Instant::now(), 0u64);
    let t = &meter.tally;
    loop {
        ticker.tick().await;
        for d in senders.iter_mut() {
            let seq = tick as u16;
            let mut pkt = Vec::with_capacity(12 + 160 + 10);
            pkt.extend_from_slice(&[0x80, 0]);
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(&((tick as u32).wrapping_mul(160)).to_be_bytes());
            pkt.extend_from_slice(&d.ssrc.to_be_bytes());
            pkt.extend_from_slice(&(meter.start.elapsed().as_micros() as u64).to_be_bytes());
            pkt.resize(12 + 160, 0xd5);
            if d.tx.protect(&mut pkt).is_ok() && d.socket.send_to(&pkt, d.to).await.is_ok() {
                t.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        tick += 1;
        if last_print.elapsed() >= Duration::from_secs(1) {
            let received = t.received.load(Ordering::Relaxed);
            let [p50, p99] = meter.quantiles([0.5, 0.99]);
            let sent = t.sent.load(Ordering::Relaxed);
            println!(
                "t={:>3}s calls={} sent={} received={} rate={:.0} pps in-flight/lost={} p50={:.2}ms p99={:.2}ms auth_failures={}",
                meter.start.elapsed().as_secs(),
                opts.calls,
                sent,
                received,
                (received - last_received) as f64 / last_print.elapsed().as_secs_f64(),
                sent.saturating_sub(received),
                p50 as f64 / 1000.0,
                p99 as f64 / 1000.0,
                t.auth_failures.load(Ordering::Relaxed)
            );
            last_print = Instant::now();
            last_received = received;
        }
        if opts.seconds > 0 && meter.start.elapsed() >= Duration::from_secs(opts.seconds) {
            break;
        }
    }
}
