//! The load generator against an in-process relay for a few seconds: its
//! JSON report is complete and consistent, real SRTP arrives authenticated,
//! and a byte corrupted in flight (by a proxy in this test) is reported as
//! an authentication failure, not as a loss.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loadtest::media::{run, MediaOptions};
use loadtest::target::{CallLegs, InProcess, Target};
use relay_core::api::SessionRequest;
use relay_core::BackendKind;

fn opts(calls: usize, secs: u64) -> MediaOptions {
    MediaOptions { calls, pps: 50, duration: Duration::from_secs(secs), ..MediaOptions::default() }
}

#[test]
fn media_through_an_in_process_relay_reports_consistent_json() {
    let mut target = InProcess::start(BackendKind::Auto, 1, 20).expect("relay");
    let r = run(&opts(20, 3), &mut target).expect("run");
    let json = serde_json::to_value(&r).expect("json");
    for field in [
        "calls",
        "offered_pps",
        "delivered_pps",
        "loss_ratio",
        "auth_failures",
        "p50_us",
        "p99_us",
        "p999_us",
        "relay_cpu_us_per_pkt",
        "per_second",
    ] {
        assert!(json.get(field).is_some(), "{field} missing in {json}");
    }
    assert_eq!(json["calls"], 20);
    assert_eq!(r.auth_failures, 0);
    assert_eq!(r.misrouted, 0);
    // 20 calls × 2 streams × 50 pps × 3 s.
    assert_eq!(r.offered, 6000, "the schedule sends exactly what it promises");
    assert!(r.loss_ratio < 0.01, "delivered ≈ offered: {r:?}");
    assert_eq!(r.lost, r.offered - r.delivered);
    assert!((r.offered_pps - 2000.0).abs() < 100.0, "{}", r.offered_pps);
    assert!(r.p50_us > 0 && r.p50_us <= r.p99_us && r.p99_us <= r.p999_us && r.p999_us <= r.max_us);
    assert!(r.relay_cpu_us_per_pkt.is_some_and(|c| c > 0.0), "the local relay's CPU is measured");
    assert!(r.per_second.len() >= 2);
    assert!(r.per_second.iter().all(|s| s.auth_failures == 0));
}

/// Allocates on a real relay, but puts a UDP proxy in front of each call's
/// endpoint leg that flips one payload byte in every `every`-th packet
/// from the endpoint.
struct CorruptingTarget {
    inner: InProcess,
    every: u64,
    stop: Arc<AtomicBool>,
    corrupted: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CorruptingTarget {
    fn proxy(&mut self, relay_leg: SocketAddr) -> SocketAddr {
        let front = UdpSocket::bind("127.0.0.1:0").expect("front");
        let back = UdpSocket::bind("127.0.0.1:0").expect("back");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        }
        let front_addr = front.local_addr().expect("addr");
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (front, back) = (Arc::new(front), Arc::new(back));
        let (f1, b1, c1, stop1, bad, every) =
            (front.clone(), back.clone(), client.clone(), self.stop.clone(), self.corrupted.clone(), self.every);
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            while !stop1.load(Ordering::Relaxed) {
                let Ok((len, from)) = f1.recv_from(&mut buf) else { continue };
                *c1.lock().expect("lock") = Some(from);
                n += 1;
                if n > 5 && n.is_multiple_of(every) {
                    buf[20] ^= 0x01; // one byte of encrypted payload
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                let _ = b1.send_to(&buf[..len], relay_leg);
            }
        }));
        let stop2 = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((len, _)) = back.recv_from(&mut buf) else { continue };
                if let Some(to) = *client.lock().expect("lock") {
                    let _ = front.send_to(&buf[..len], to);
                }
            }
        }));
        front_addr
    }
}

impl Target for CorruptingTarget {
    fn allocate(&mut self, request: &SessionRequest) -> Result<CallLegs, String> {
        let mut legs = self.inner.allocate(request)?;
        legs.to_endpoint_leg = self.proxy(legs.to_endpoint_leg);
        Ok(legs)
    }
    fn release(&mut self, legs: &[CallLegs]) {
        self.inner.release(legs);
    }
    fn describe(&self) -> String {
        "in-process relay behind a corrupting proxy".into()
    }
}

#[test]
fn a_byte_corrupted_in_flight_is_an_authentication_failure_not_a_loss() {
    let mut target = CorruptingTarget {
        inner: InProcess::start(BackendKind::Auto, 1, 5).expect("relay"),
        every: 10,
        stop: Arc::default(),
        corrupted: Arc::default(),
        threads: Vec::new(),
    };
    let r = run(&opts(5, 2), &mut target).expect("run");
    target.stop.store(true, Ordering::Relaxed);
    for t in target.threads.drain(..) {
        t.join().expect("proxy");
    }
    let corrupted = target.corrupted.load(Ordering::Relaxed);
    assert!(corrupted >= 40, "the proxy corrupted {corrupted} packets");
    assert_eq!(r.auth_failures, corrupted, "every corrupted packet is an authentication failure: {r:?}");
    assert!(r.lost <= r.offered / 100, "corruption is not counted as loss: lost {}", r.lost);
    assert_eq!(r.delivered + r.auth_failures + r.lost, r.offered);
}

#[test]
fn nat_rebinding_and_a_junk_sprayer_neither_break_calls_nor_leak_media() {
    let mut target = InProcess::start(BackendKind::Auto, 1, 10).expect("relay");
    let o = MediaOptions { rebind_every: Some(Duration::from_millis(400)), junk_pps: 500, ..opts(10, 3) };
    let r = run(&o, &mut target).expect("run");
    assert!(r.rebinds >= 5, "{r:?}");
    assert!(r.junk_sent >= 1000, "{r:?}");
    assert_eq!(r.junk_leaked, 0, "the sprayer receives nothing");
    assert_eq!((r.auth_failures, r.misrouted), (0, 0));
    // Authenticated latching follows each rebound endpoint at once: only
    // packets already in flight to the old port can be lost.
    assert!(r.loss_ratio < 0.01, "{r:?}");
}

#[test]
fn dtls_handshakes_through_the_relay_key_the_srtp_that_follows() {
    let mut target = InProcess::start(BackendKind::Auto, 1, 4).expect("relay");
    let o = MediaOptions { dtls: true, latch: "window".into(), ..opts(4, 2) };
    let r = run(&o, &mut target).expect("run");
    assert_eq!(r.dtls_handshakes, 4, "one real webrtc-dtls handshake per call, through the relay");
    assert_eq!((r.auth_failures, r.misrouted), (0, 0), "libsrtp verifies with the DTLS-exported keys: {r:?}");
    assert!(r.loss_ratio < 0.01, "{r:?}");
    assert_eq!(r.offered, 4 * 2 * 50 * 2);
    // Authenticated latching cannot be asked for: its keys would not exist yet.
    let refused = run(&MediaOptions { dtls: true, latch: "authenticated".into(), ..opts(1, 1) }, &mut target);
    assert!(refused.is_err());
}

#[test]
fn media_through_sessions_allocated_over_a_connector_channel() {
    use relay_core::connector::ConnectorConfig;
    use relay_core::control::auth::token_hash;
    use relay_core::control::server::{ControlConfig, ControlServer, TenantCredentials};
    use relay_core::tls::{load_certified_key, pem_fingerprint, ClientTrust, ReloadableCert};

    let relay = relay_core::Relay::start(relay_core::RelayConfig {
        port_min: 25000,
        port_max: 25099,
        workers: 1,
        ..relay_core::RelayConfig::default()
    })
    .expect("relay");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pki = relay_core::testkit::pki::issue("relay.test").expect("cert");
    let (cert_pem, key_pem) = (pki.cert_pem, pki.key_pem);
    let addr = rt.block_on(async {
        let key = load_certified_key(cert_pem.as_bytes(), key_pem.as_bytes()).expect("key");
        let tenants = vec![TenantCredentials { id: "pbx".into(), token_sha256: token_hash("tok"), services: vec![] }];
        let server = ControlServer::new(ControlConfig::default(), ReloadableCert::new(key), tenants, relay.handle())
            .expect("server");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { server.serve(l, std::future::pending()).await });
        addr
    });
    let trust = ClientTrust::pinned_hex(&pem_fingerprint(cert_pem.as_bytes()).expect("fp")).expect("pin");
    let mut target = loadtest::target::ViaConnector::connect(ConnectorConfig::new(
        &addr.to_string(),
        "relay.test",
        trust,
        "pbx",
        "tok",
    ))
    .expect("connector");
    let r = run(&opts(3, 2), &mut target).expect("run");
    assert_eq!((r.auth_failures, r.misrouted), (0, 0));
    assert!(r.loss_ratio < 0.01, "{r:?}");
    assert_eq!(r.relay_cpu_us_per_pkt, None, "not a local relay from the tool's point of view");
    assert!(r.target.contains("connector"));
    drop(target);
    relay.shutdown(Duration::ZERO);
}

#[test]
fn find_capacity_steps_up_and_reports_the_highest_passing_rate() {
    // Steps of 2 000+ packets, so one stray loopback loss cannot fail a step.
    let report = loadtest::media::find_capacity(
        &opts(10, 2),
        || Ok(Box::new(InProcess::start(BackendKind::Auto, 1, 10)?) as Box<dyn Target>),
        2,
    )
    .expect("search");
    assert_eq!(report.steps.len(), 2);
    assert!(report.steps.iter().all(|s| s.pass), "{report:?}");
    // 10 calls × 2 streams × 50 pps, then × 1.25.
    assert!((report.steps[0].offered_pps - 1000.0).abs() < 50.0, "{report:?}");
    assert!(report.steps[1].offered_pps > report.steps[0].offered_pps * 1.15);
    assert_eq!(report.capacity_pps, Some(report.steps[1].offered_pps));
    assert!(report.best.is_some());
}

#[test]
fn media_through_an_external_relay_driven_by_its_admin_api() {
    use sha2::Digest;
    use std::sync::atomic::AtomicBool;
    use std::sync::RwLock;
    use ucmrc::admin::{serve, AdminState};

    let relay = relay_core::Relay::start(relay_core::RelayConfig {
        port_min: 25200,
        port_max: 25299,
        workers: 1,
        ..relay_core::RelayConfig::default()
    })
    .expect("relay");
    let token = "admin-token-for-the-test";
    let state = Arc::new(AdminState {
        handle: relay.handle(),
        token_sha256: RwLock::new(Some(sha2::Sha256::digest(token.as_bytes()).into())),
        defaults: RwLock::new(relay_core::SessionDefaults::default()),
        stats: ucmrc::metrics::AdminStats::default(),
        backend: relay.datapath().running.as_str().to_string(),
        started: std::time::Instant::now(),
        ready: AtomicBool::new(true),
        control: None,
        tunnels: None,
        ng: None,
        ng_transport: Default::default(),
        clustered: false,
        cluster: Default::default(),
        turn: Default::default(),
        turn_uris: Default::default(),
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let addr = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(serve(l, state, std::future::pending()));
        addr
    });
    let mut wrong =
        loadtest::target::Admin::new(&format!("http://{addr}"), Some("nope".into()), "loadtest").expect("url");
    assert!(run(&opts(1, 1), &mut wrong).is_err(), "a wrong admin token is refused");
    let mut target =
        loadtest::target::Admin::new(&format!("http://{addr}"), Some(token.into()), "loadtest").expect("url");
    let r = run(&opts(3, 2), &mut target).expect("run");
    assert_eq!((r.auth_failures, r.misrouted), (0, 0));
    assert!(r.loss_ratio < 0.01, "{r:?}");
    assert_eq!(r.relay_cpu_us_per_pkt, None);
    let left = relay.handle().list(None, 10).wait().expect("list");
    assert!(left.sessions.is_empty(), "the tool releases what it allocated");
    relay.shutdown(Duration::ZERO);
}
