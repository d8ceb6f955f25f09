//! Runs an embedded relay on loopback and pushes simulated calls through it:
//! each call is a "PBX" and a "phone" exchanging real SRTP (libsrtp,
//! AES_CM_128_HMAC_SHA1_80) at 50 packets per second per direction. Every
//! received packet is authenticated, so corruption shows up as an auth
//! failure, separately from loss.
//!
//! ```text
//! cargo run --release -p relay-core --example simulated_call -- [--calls N] [--seconds S]
//! ```
//! `--seconds 0` runs until interrupted.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::srtp_keys::{derive_auth_keys, SrtpMasterKey};
use relay_core::{LatchPolicy, LegSpec, Relay, RelayConfig, SessionSpec, SrtpAuth};

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    received: AtomicU64,
    auth_failures: AtomicU64,
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number")))
        .unwrap_or(default)
}

fn policy(key: &[u8]) -> srtp::StreamPolicy<'_> {
    let p = srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80();
    srtp::StreamPolicy { rtp: p, rtcp: p, key, ..Default::default() }
}

fn master(seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..30).map(|_| rng.u8(..)).collect()
}

fn auth(master: &[u8]) -> SrtpAuth {
    SrtpAuth::sha1_80(&derive_auth_keys(&SrtpMasterKey::from_concatenated(master).expect("30 bytes")))
}

fn receiver(sock: UdpSocket, key: Vec<u8>, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut rx = srtp::Session::with_inbound_template(policy(&key)).expect("srtp");
    sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let mut pkt = Vec::with_capacity(n + 160);
        pkt.extend_from_slice(&buf[..n]);
        match rx.unprotect(&mut pkt) {
            Ok(()) => tally.received.fetch_add(1, Ordering::Relaxed),
            Err(_) => tally.auth_failures.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls = arg("--calls", 20) as usize;
    let seconds = arg("--seconds", 10);
    let config = RelayConfig::default();
    println!(
        "ucmrc relay-core demo: relay on {} ports {}-{}, {} calls of SRTP at 50 pps each way (authenticated latching)",
        config.bind_ip, config.port_min, config.port_max, calls
    );
    let relay = Relay::start(config)?;
    let handle = relay.handle();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    let mut threads = Vec::new();
    for c in 0..calls as u64 {
        let (pbx, phone) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
        let (pbx_key, phone_key) = (master(2 * c + 1), master(2 * c + 2));
        let s = handle
            .allocate(SessionSpec {
                tenant: "demo".into(),
                // Hints: where each side said (in SDP) it receives media.
                pbx: LegSpec {
                    rtcp_mux: true,
                    hint: Some(pbx.local_addr()?),
                    srtp_auth: Some(auth(&pbx_key)),
                    ..LegSpec::default()
                },
                endpoint: LegSpec {
                    rtcp_mux: true,
                    hint: Some(phone.local_addr()?),
                    srtp_auth: Some(auth(&phone_key)),
                    ..LegSpec::default()
                },
                latch: Some(LatchPolicy::Authenticated),
                ..SessionSpec::default()
            })
            .wait()?;
        if c == 0 {
            println!("call 0: PBX sends to {}, phone sends to {} (session {})", s.pbx.rtp, s.endpoint.rtp, s.id);
        }
        let tx_pbx = srtp::Session::with_outbound_template(policy(&pbx_key))?;
        let tx_phone = srtp::Session::with_outbound_template(policy(&phone_key))?;
        streams.push((pbx.try_clone()?, s.pbx.rtp, tx_pbx, c as u32 * 2 + 1));
        streams.push((phone.try_clone()?, s.endpoint.rtp, tx_phone, c as u32 * 2 + 2));
        for (sock, key) in [(pbx, phone_key), (phone, pbx_key)] {
            let (t, st) = (tally.clone(), stop.clone());
            threads.push(std::thread::spawn(move || receiver(sock, key, t, st)));
        }
    }

    let start = Instant::now();
    let mut tick = 0u64;
    let mut last_print = start;
    let mut last_fwd = 0;
    loop {
        let due = start + Duration::from_millis(20 * tick);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for (sock, to, tx, ssrc) in streams.iter_mut() {
            let seq = tick as u16;
            let mut pkt = Vec::with_capacity(12 + 160 + 160);
            pkt.extend_from_slice(&[0x80, 0]);
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(&((tick as u32).wrapping_mul(160)).to_be_bytes());
            pkt.extend_from_slice(&ssrc.to_be_bytes());
            pkt.resize(12 + 160, 0xd5);
            tx.protect(&mut pkt)?;
            sock.send_to(&pkt, *to)?;
            tally.sent.fetch_add(1, Ordering::Relaxed);
        }
        tick += 1;
        if last_print.elapsed() >= Duration::from_secs(1) {
            let c = handle.counters().wait()?.total;
            println!(
                "t={:>3}s forwarded {:>6} pps | sent {} received {} auth failures {} | relay drops {}",
                start.elapsed().as_secs(),
                c.packets_forwarded - last_fwd,
                tally.sent.load(Ordering::Relaxed),
                tally.received.load(Ordering::Relaxed),
                tally.auth_failures.load(Ordering::Relaxed),
                c.drops.total(),
            );
            last_fwd = c.packets_forwarded;
            last_print = Instant::now();
        }
        if seconds > 0 && start.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let (sent, received, failures) = (
        tally.sent.load(Ordering::Relaxed),
        tally.received.load(Ordering::Relaxed),
        tally.auth_failures.load(Ordering::Relaxed),
    );
    println!("done: sent {sent}, received {received} ({} lost), {failures} auth failures", sent - received.min(sent));
    relay.shutdown(Duration::ZERO);
    if failures > 0 {
        return Err("authentication failures: the relay altered packets".into());
    }
    Ok(())
}
