//! Real sockets on loopback through the portable backend: a simulated PBX
//! and phone exchange real SRTP/SRTCP (libsrtp) through the relay; every
//! datagram is authenticated on receipt and compared byte for byte. Attackers
//! spray the relay from other loopback addresses (127.0.0.2) and must neither
//! receive nor inject anything; a phone rebinding mid-call keeps audio
//! flowing with authenticated latching; 10 000 sessions come and go without
//! leaking ports or descriptors.
//!
//! Every socket of the test endpoints is bound to port 0 (kernel-chosen).
//! The relay allocates from its configured range and skips ports it cannot
//! bind, so parallel tests and other programs can share the range.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use relay_core::relay::{Relay, RelayConfig, RelayHandle};
use relay_core::BackendKind;
use relay_core::DropReason;
use relay_core::LegLimits;
use relay_core::{LatchPolicy, LegSpec, SessionDefaults, SessionSpec};
use test_support::keys::*;
use test_support::packets::*;
use test_support::srtp::*;

const WAIT: Duration = Duration::from_secs(3);

fn relay(backend: BackendKind, defaults: SessionDefaults) -> Relay {
    let relay = Relay::start(RelayConfig {
        backend,
        port_min: 20000,
        port_max: 29999,
        workers: 2,
        defaults,
        ..RelayConfig::default()
    })
    .expect("relay starts");
    assert_eq!(relay.datapath().running, backend, "the backend under test runs");
    relay
}

fn socket(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).expect("bind");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

/// Receives one datagram or `None` after the timeout (counted as lost).
fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 2048];
    loop {
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                buf.truncate(n);
                return Some((buf, from));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Nothing is waiting on `s` right now.
fn assert_nothing_queued(s: &UdpSocket, who: &str) {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((n, from)) => panic!("{who} received {n} bytes from {from}"),
        Err(e) => panic!("{who}: {e}"),
    }
    s.set_nonblocking(false).expect("blocking");
}

/// Waits until the relay has seen at least `n` datagrams in total, so every
/// datagram sent so far has been decided on.
fn wait_received(h: &RelayHandle, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = h.counters().wait().expect("counters");
        if c.total.packets_received >= n {
            return;
        }
        assert!(Instant::now() < deadline, "relay saw {} of {n} datagrams", c.total.packets_received);
        std::thread::yield_now();
    }
}

/// Sends one SRTP packet and checks it arrives unchanged and authentic.
struct Flow<'a> {
    from: &'a UdpSocket,
    to_relay: SocketAddr,
    at: &'a UdpSocket,
    rx: SrtpRx,
    sent: u64,
    lost: u64,
}

impl Flow<'_> {
    fn pass(&mut self, datagram: &[u8]) {
        self.from.send_to(datagram, self.to_relay).expect("send");
        self.sent += 1;
        match recv(self.at) {
            Some((got, _)) => {
                assert_eq!(got, datagram, "relay must deliver every byte unchanged");
                self.rx.accept(&got);
            }
            None => self.lost += 1,
        }
    }

    fn check(&self, label: &str) {
        assert_eq!(self.rx.auth_failures, 0, "{label}: authentication failures");
        assert!(self.lost * 50 <= self.sent, "{label}: lost {} of {}", self.lost, self.sent);
        assert_eq!(self.rx.ok + self.lost, self.sent, "{label}");
    }
}

fn srtp_and_srtcp_flow_both_ways_unchanged_and_authentic(backend: BackendKind) {
    // Lockstep sends far faster than a real call: lift the default rate limits.
    let relay = relay(backend, SessionDefaults { limits: LegLimits::default(), ..SessionDefaults::default() });
    let h = relay.handle();
    let (pbx_rtp, pbx_rtcp, phone) = (socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.1"));
    let a = h
        .allocate(SessionSpec {
            tenant: "acme".into(),
            pbx: LegSpec { rtcp_mux: false, hint: Some(pbx_rtp.local_addr().expect("addr")), ..LegSpec::default() },
            endpoint: LegSpec { rtcp_mux: true, ..LegSpec::default() },
            ..SessionSpec::default()
        })
        .wait()
        .expect("allocate");
    let pbx_relay_rtcp = a.pbx.rtcp.expect("rtcp port without mux");

    let (mk_pbx, mk_phone) = (master(11), master(22));
    let mut pbx_tx = SrtpTx::new(&mk_pbx, 0x5bc0_0001, 1000);
    let mut phone_tx = SrtpTx::new(&mk_phone, 0x9400_0002, 64000); // crosses the 16-bit wrap
    let mut up =
        Flow { from: &phone, to_relay: a.endpoint.rtp, at: &pbx_rtp, rx: SrtpRx::new(&mk_phone), sent: 0, lost: 0 };
    let mut down = Flow { from: &pbx_rtp, to_relay: a.pbx.rtp, at: &phone, rx: SrtpRx::new(&mk_pbx), sent: 0, lost: 0 };
    // The PBX's RTCP socket latches the PBX leg's RTCP port.
    let mut rtcp_down =
        Flow { from: &pbx_rtcp, to_relay: pbx_relay_rtcp, at: &phone, rx: SrtpRx::new(&mk_pbx), sent: 0, lost: 0 };

    for i in 0..2000 {
        up.pass(&phone_tx.next_rtp());
        down.pass(&pbx_tx.next_rtp());
        if i % 50 == 0 {
            rtcp_down.pass(&pbx_tx.next_rtcp());
            // The phone's RTCP shares its mux port and must reach the PBX's RTCP socket.
            let rtcp = phone_tx.next_rtcp();
            let mut rtcp_up = Flow {
                from: &phone,
                to_relay: a.endpoint.rtp,
                at: &pbx_rtcp,
                rx: SrtpRx::new(&mk_phone),
                sent: 0,
                lost: 0,
            };
            rtcp_up.pass(&rtcp);
            rtcp_up.check("rtcp up");
        }
    }
    up.check("rtp up");
    down.check("rtp down");
    rtcp_down.check("rtcp down");

    let info = h.session(a.id).wait().expect("query");
    assert_eq!(info.endpoint.remote_rtp, Some(phone.local_addr().expect("addr")));
    assert_eq!(info.pbx.remote_rtp, Some(pbx_rtp.local_addr().expect("addr")));
    assert_eq!(info.pbx.remote_rtcp, Some(pbx_rtcp.local_addr().expect("addr")));
    let c = h.counters().wait().expect("counters");
    assert_eq!(c.total.packets_received, c.total.packets_forwarded + c.total.drops.total());
    assert_eq!(c.total.drops.total(), 0, "{:?}", c.total.drops.iter().filter(|d| d.1 > 0).collect::<Vec<_>>());
    let released = h.release(a.id).wait().expect("release");
    assert_eq!(released.endpoint.stats.packets_forwarded, info.endpoint.stats.packets_forwarded);
    assert!(h.session(a.id).wait().is_err(), "released session is gone");
}

fn attacker_spraying_in_window_mode_receives_and_injects_nothing(backend: BackendKind) {
    let relay =
        relay(backend, SessionDefaults { learning_window: Duration::from_millis(300), ..SessionDefaults::default() });
    let h = relay.handle();
    let (pbx, phone, attacker) = (socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.2"));
    let a = h
        .allocate(SessionSpec {
            tenant: "acme".into(),
            pbx: LegSpec { rtcp_mux: true, hint: Some(pbx.local_addr().expect("addr")), ..LegSpec::default() },
            // SDP told us the phone's IP but its NAT picks the port.
            endpoint: LegSpec {
                rtcp_mux: true,
                hint: Some("127.0.0.1:0".parse().expect("addr")),
                ..LegSpec::default()
            },
            ..SessionSpec::default()
        })
        .wait()
        .expect("allocate");
    let (mk_pbx, mk_phone) = (master(1), master(2));
    let mut pbx_tx = SrtpTx::new(&mk_pbx, 1, 1);
    let mut phone_tx = SrtpTx::new(&mk_phone, 2, 1);
    let mut forger = SrtpTx::new(&master(66), 2, 500);
    let mut up =
        Flow { from: &phone, to_relay: a.endpoint.rtp, at: &pbx, rx: SrtpRx::new(&mk_phone), sent: 0, lost: 0 };
    let mut down = Flow { from: &pbx, to_relay: a.pbx.rtp, at: &phone, rx: SrtpRx::new(&mk_pbx), sent: 0, lost: 0 };
    up.pass(&phone_tx.next_rtp());
    down.pass(&pbx_tx.next_rtp());

    let spray = |n: usize, forger: &mut SrtpTx| {
        for k in 0..n {
            let junk: Vec<u8> =
                if k % 2 == 0 { forger.next_rtp() } else { vec![0x80, 0, (k >> 8) as u8, k as u8, 1, 2, 3, 4] };
            for port in [a.pbx.rtp, a.endpoint.rtp] {
                attacker.send_to(&junk, port).expect("spray");
            }
        }
        2 * n as u64
    };
    // During the learning window...
    let mut sprayed = spray(200, &mut forger);
    for _ in 0..100 {
        up.pass(&phone_tx.next_rtp());
        down.pass(&pbx_tx.next_rtp());
    }
    // ...and after it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.session(a.id).wait().expect("query").learning {
        assert!(Instant::now() < deadline, "learning window never closed");
        std::thread::yield_now();
    }
    sprayed += spray(200, &mut forger);
    for _ in 0..100 {
        up.pass(&phone_tx.next_rtp());
        down.pass(&pbx_tx.next_rtp());
    }
    let genuine = up.sent + down.sent;
    wait_received(&h, genuine + sprayed);
    assert_nothing_queued(&attacker, "attacker");
    assert_nothing_queued(&pbx, "pbx");
    assert_nothing_queued(&phone, "phone");
    up.check("up");
    down.check("down");
    let info = h.session(a.id).wait().expect("query");
    let refused = |r| info.pbx.stats.drops.get(r) + info.endpoint.stats.drops.get(r);
    assert_eq!(
        refused(DropReason::SourceMismatch) + refused(DropReason::NotMedia),
        sprayed,
        "every attacker datagram refused: forged SRTP as a strict-source mismatch, 8-byte junk as not media"
    );
    assert_eq!(refused(DropReason::NotMedia), sprayed / 2, "the junk half is not media");
    assert_eq!(info.endpoint.remote_rtp, Some(phone.local_addr().expect("addr")));
}

fn authenticated_latching_survives_rebinding_and_refuses_attackers_from_the_start(backend: BackendKind) {
    let relay = relay(backend, SessionDefaults::default());
    let h = relay.handle();
    let (pbx, phone, attacker) = (socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.2"));
    let (mk_pbx, mk_phone) = (master(3), master(4));
    let a = h
        .allocate(SessionSpec {
            tenant: "acme".into(),
            pbx: LegSpec { rtcp_mux: true, srtp_auth: Some(auth_for(&mk_pbx)), ..LegSpec::default() },
            endpoint: LegSpec { rtcp_mux: true, srtp_auth: Some(auth_for(&mk_phone)), ..LegSpec::default() },
            latch: Some(LatchPolicy::Authenticated),
            ..SessionSpec::default()
        })
        .wait()
        .expect("allocate");
    let mut pbx_tx = SrtpTx::new(&mk_pbx, 10, 1);
    let mut phone_tx = SrtpTx::new(&mk_phone, 20, 1);
    let mut forger = SrtpTx::new(&master(99), 20, 1);

    // The attacker is first on both ports: nothing latches to it.
    for _ in 0..50 {
        let f = forger.next_rtp();
        attacker.send_to(&f, a.endpoint.rtp).expect("spray");
        attacker.send_to(&f, a.pbx.rtp).expect("spray");
    }
    // The PBX proves itself first (its packet has nowhere to go yet)...
    pbx.send_to(&pbx_tx.next_rtp(), a.pbx.rtp).expect("send");
    let mut sent = 101;
    wait_received(&h, sent);
    let mut up =
        Flow { from: &phone, to_relay: a.endpoint.rtp, at: &pbx, rx: SrtpRx::new(&mk_phone), sent: 0, lost: 0 };
    let mut captured = Vec::new();
    for _ in 0..100 {
        let p = phone_tx.next_rtp();
        captured.push(p.clone());
        up.pass(&p);
    }
    let mut down = Flow { from: &pbx, to_relay: a.pbx.rtp, at: &phone, rx: SrtpRx::new(&mk_pbx), sent: 0, lost: 0 };
    for _ in 0..100 {
        down.pass(&pbx_tx.next_rtp());
    }
    // A replay of captured genuine packets (from another stranger, whose
    // proof budget is untouched) gets nowhere.
    let replayer = socket("127.0.0.3");
    for p in &captured {
        replayer.send_to(p, a.endpoint.rtp).expect("replay");
    }
    sent += up.sent + down.sent + captured.len() as u64;
    wait_received(&h, sent);
    assert_nothing_queued(&attacker, "attacker");
    assert_nothing_queued(&replayer, "replayer");
    assert_nothing_queued(&pbx, "pbx");

    // The phone roams to a new socket (new NAT binding) mid-call.
    let roamed = socket("127.0.0.1");
    let mut up2 =
        Flow { from: &roamed, to_relay: a.endpoint.rtp, at: &pbx, rx: SrtpRx::new(&mk_phone), sent: 0, lost: 0 };
    up2.rx = up.rx; // same SRTP context continues
    up2.rx.ok = 0;
    for _ in 0..100 {
        up2.pass(&phone_tx.next_rtp());
    }
    let mut down2 = Flow { from: &pbx, to_relay: a.pbx.rtp, at: &roamed, rx: down.rx, sent: 0, lost: 0 };
    down2.rx.ok = 0;
    for _ in 0..100 {
        down2.pass(&pbx_tx.next_rtp());
    }
    sent += up2.sent + down2.sent;
    wait_received(&h, sent);
    assert_nothing_queued(&phone, "old phone socket");
    up2.check("up after roaming");
    down2.check("down after roaming");
    let info = h.session(a.id).wait().expect("query");
    assert_eq!(info.endpoint.remote_rtp, Some(roamed.local_addr().expect("addr")));
    assert_eq!(info.endpoint.stats.relatches, 1);
    let d = info.endpoint.stats.drops;
    // The attacker's first forgeries cost an HMAC each until its own budget
    // is spent; the rest are refused without one.
    let budget = u64::from(relay_core::session::replay::SOURCE_PROOF_BURST) + 1;
    for (leg, d) in [("endpoint", d), ("pbx", info.pbx.stats.drops)] {
        let (checked, refused) = (d.get(DropReason::Unauthenticated), d.get(DropReason::ProofBackoff));
        assert_eq!(checked + refused, 50, "{leg}: every forgery refused");
        assert!(checked >= budget && refused > 0, "{leg}: {checked} checked, {refused} refused without an HMAC");
    }
    assert_eq!(d.get(DropReason::Replay), 100);
}

/// Raises the soft descriptor limit to the hard limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY (test helper): valid pointer to an rlimit for get/set.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// UDP sockets on this host bound to a port in `range` (from /proc/net/udp{,6}).
fn udp_sockets_in(range: std::ops::RangeInclusive<u16>) -> usize {
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(1)?.rsplit(':').next().map(str::to_owned))
                .filter_map(|port| u16::from_str_radix(&port, 16).ok())
                .collect::<Vec<_>>()
        })
        .filter(|p| range.contains(p))
        .count()
}

fn ten_thousand_sessions_come_and_go_without_leaking_ports_or_descriptors(backend: BackendKind) {
    raise_fd_limit();
    // A range of its own (below the kernel's ephemeral ports, apart from the
    // other tests), so every socket in it is this relay's.
    let range = if backend == BackendKind::Uring { 15000..=19999 } else { 10000..=14999 };
    let relay = Relay::start(RelayConfig {
        backend,
        port_min: *range.start(),
        port_max: *range.end(),
        workers: 2,
        ..RelayConfig::default()
    })
    .expect("relay starts");
    let h = relay.handle();
    let baseline = h.counters().wait().expect("counters").total;
    let mut total = 0;
    for _round in 0..10 {
        let pending: Vec<_> = (0..1000)
            .map(|_| {
                h.allocate(SessionSpec {
                    tenant: "load".into(),
                    pbx: LegSpec { rtcp_mux: true, ..LegSpec::default() },
                    endpoint: LegSpec { rtcp_mux: true, ..LegSpec::default() },
                    ..SessionSpec::default()
                })
            })
            .collect();
        let ids: Vec<_> = pending.into_iter().map(|p| p.wait().expect("allocate").id).collect();
        total += ids.len();
        let mid = h.counters().wait().expect("counters").total;
        assert_eq!(mid.sessions_active, 1000);
        // Ports another program holds are skipped and quarantined for a while.
        assert_eq!(mid.ports_in_use, 2000 + mid.ports_quarantined + mid.ports_closing);
        assert_eq!(h.quotas().in_use("load"), 1000);
        for p in ids.into_iter().map(|id| h.release(id)).collect::<Vec<_>>() {
            p.wait().expect("release");
        }
        // io_uring closes a port once its cancelled receive completes: a
        // round starts when the last one's ports are back (on a loaded
        // machine two rounds of closing ports would not fit this range).
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.counters().wait().expect("counters").total.ports_closing > 0 {
            assert!(Instant::now() < deadline, "ports never finished closing");
            std::thread::yield_now();
        }
    }
    assert_eq!(total, 10_000);
    // io_uring closes a socket once its cancelled receive completes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let end = loop {
        let c = h.counters().wait().expect("counters").total;
        if c.ports_closing == 0 || Instant::now() > deadline {
            break c;
        }
        std::thread::yield_now();
    };
    assert_eq!(end.sessions_active, 0);
    assert_eq!(end.ports_in_use, end.ports_quarantined);
    assert_eq!(end.ports_total, baseline.ports_total);
    assert_eq!(end.sessions_created - baseline.sessions_created, 10_000);
    assert_eq!(h.quotas().in_use("load"), 0);
    assert_eq!(end.ports_quarantined, 0, "nothing else binds this range");
    assert_eq!(udp_sockets_in(range), 0, "every socket closed");
}

fn handle_works_from_tokio_and_shutdown_releases_everything(backend: BackendKind) {
    let relay = relay(backend, SessionDefaults::default());
    let h = relay.handle();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (id, port) = rt.block_on(async {
        let a = h.allocate(SessionSpec { tenant: "acme".into(), ..SessionSpec::default() }).await.expect("allocate");
        let page = h.list(None, 10).await.expect("list");
        assert!(page.sessions.iter().any(|s| s.id == a.id));
        // Quotas are enforced through the handle with a typed error.
        h.quotas().set_limit("tiny", relay_core::quota::TenantLimit { sessions: Some(1), ports: None });
        let one = h.allocate(SessionSpec { tenant: "tiny".into(), ..SessionSpec::default() }).await.expect("first");
        let two = h.allocate(SessionSpec { tenant: "tiny".into(), ..SessionSpec::default() }).await;
        assert!(matches!(two, Err(relay_core::RelayError::QuotaExceeded(_))), "{two:?}");
        h.release(one.id).await.expect("release");
        assert!(h.allocate(SessionSpec { tenant: "tiny".into(), ..SessionSpec::default() }).await.is_ok());
        let bad = h.allocate(SessionSpec { tenant: String::new(), ..SessionSpec::default() }).await;
        assert!(matches!(bad, Err(relay_core::RelayError::InvalidSpec(_))), "{bad:?}");
        (a.id, a.endpoint.rtp)
    });
    let addr = port;
    // The port is bound by the relay...
    assert!(UdpSocket::bind(addr).is_err());
    relay.shutdown(Duration::from_millis(50));
    // ...and free once it has shut down.
    assert!(UdpSocket::bind(addr).is_ok(), "shutdown closes every socket");
    assert!(h.session(id).wait().is_err(), "a stopped relay answers with an error");
}

fn ipv6_and_dual_stack_relays_forward_and_latch_canonical_addresses(backend: BackendKind) {
    // IPv6 only, on ::1.
    let v6 = Relay::start(RelayConfig {
        backend,
        bind_ip: "::1".parse().expect("ip"),
        port_min: 20000,
        port_max: 29999,
        workers: 1,
        ..RelayConfig::default()
    })
    .expect("relay starts");
    // Dual-stack (::) reached by IPv4 clients: sources arrive IPv4-mapped and
    // are latched, compared and answered as plain IPv4.
    let dual = Relay::start(RelayConfig {
        backend,
        bind_ip: "::".parse().expect("ip"),
        advertised_ip: Some("127.0.0.1".parse().expect("ip")),
        port_min: 20000,
        port_max: 29999,
        workers: 1,
        ..RelayConfig::default()
    })
    .expect("relay starts");
    for (relay, ip) in [(&v6, "[::1]"), (&dual, "127.0.0.1")] {
        let h = relay.handle();
        let (pbx, phone) = (socket(ip), socket(ip));
        let a = h
            .allocate(SessionSpec {
                tenant: "acme".into(),
                pbx: LegSpec { rtcp_mux: true, hint: Some(pbx.local_addr().expect("addr")), ..LegSpec::default() },
                endpoint: LegSpec { rtcp_mux: true, ..LegSpec::default() },
                ..SessionSpec::default()
            })
            .wait()
            .expect("allocate");
        let mut up =
            Flow { from: &phone, to_relay: a.endpoint.rtp, at: &pbx, rx: SrtpRx::new(&master(5)), sent: 0, lost: 0 };
        let mut down =
            Flow { from: &pbx, to_relay: a.pbx.rtp, at: &phone, rx: SrtpRx::new(&master(6)), sent: 0, lost: 0 };
        let (mut tx_up, mut tx_down) = (SrtpTx::new(&master(5), 1, 1), SrtpTx::new(&master(6), 2, 1));
        for _ in 0..50 {
            up.pass(&tx_up.next_rtp());
            down.pass(&tx_down.next_rtp());
        }
        up.check(ip);
        down.check(ip);
        let info = h.session(a.id).wait().expect("query");
        assert_eq!(info.endpoint.remote_rtp, Some(phone.local_addr().expect("addr")), "{ip}");
    }
}

fn a_flooded_leg_is_rate_limited_and_other_sessions_are_unaffected(backend: BackendKind) {
    let relay = Relay::start(RelayConfig {
        backend,
        port_min: 20000,
        port_max: 29999,
        workers: 1, // both sessions on the same shard and thread
        defaults: SessionDefaults { limits: LegLimits::default(), ..SessionDefaults::default() },
        ..RelayConfig::default()
    })
    .expect("relay starts");
    let h = relay.handle();
    let (a_pbx, a_phone, b_pbx, b_phone) =
        (socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.1"));
    let spec = |pbx: &UdpSocket, limits| SessionSpec {
        tenant: "acme".into(),
        pbx: LegSpec { rtcp_mux: true, hint: Some(pbx.local_addr().expect("addr")), ..LegSpec::default() },
        endpoint: LegSpec { rtcp_mux: true, limits, ..LegSpec::default() },
        ..SessionSpec::default()
    };
    let limit = 200u32;
    let a = h
        .allocate(spec(&a_pbx, Some(LegLimits { max_pps: Some(limit), max_bytes_per_sec: None })))
        .wait()
        .expect("allocate a");
    let b = h.allocate(spec(&b_pbx, None)).wait().expect("allocate b");
    let started = Instant::now();
    // Session A's phone floods its leg at full speed, far above 200 pps.
    let mut flood = SrtpTx::new(&master(7), 7, 1);
    let flood_pkt = flood.next_rtp();
    for _ in 0..20_000 {
        let _ = a_phone.send_to(&flood_pkt, a.endpoint.rtp);
    }
    // Session B's call is untouched.
    let mut up =
        Flow { from: &b_phone, to_relay: b.endpoint.rtp, at: &b_pbx, rx: SrtpRx::new(&master(8)), sent: 0, lost: 0 };
    let mut tx = SrtpTx::new(&master(8), 8, 1);
    for _ in 0..300 {
        up.pass(&tx.next_rtp());
    }
    up.check("session b during the flood");
    let elapsed = started.elapsed().as_secs_f64();
    let info = h.session(a.id).wait().expect("query a");
    let leg = info.endpoint.stats;
    let limited = leg.drops.get(DropReason::RateLimited);
    assert_eq!(leg.packets_received, leg.packets_forwarded + limited, "every drop counted with its reason");
    assert!(leg.packets_received > 5_000, "the flood reached the relay ({})", leg.packets_received);
    let allowed = f64::from(limit) * (1.0 + elapsed) + 5.0;
    assert!(
        (leg.packets_forwarded as f64) <= allowed,
        "forwarded {} > bucket allows {allowed:.0}",
        leg.packets_forwarded
    );
    assert!(limited > 4_000, "rate-limited drops counted: {limited}");
    // Session B saw no drops at all.
    let b_info = h.session(b.id).wait().expect("query b");
    assert_eq!(b_info.endpoint.stats.drops.total(), 0);
}

/// A standby's takeover without the cluster layer: a session exported
/// from a relay that then stops resumes on a new relay (same layout) on the
/// same relay addresses, with its latches — real SRTP keeps flowing both
/// ways, every byte checked, no new latch, and a stranger still gets
/// nothing.
fn an_exported_session_resumes_on_a_new_relay_with_the_same_addresses(backend: BackendKind) {
    let base = if backend == BackendKind::Portable { 31000 } else { 31500 };
    let config = || RelayConfig {
        backend,
        port_min: base,
        port_max: base + 499,
        workers: 2,
        journal: true,
        ..RelayConfig::default()
    };
    let (phone, pbx, stranger) = (socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.2"));
    let (mp, me) = (master(1), master(2));
    let leg = |s: &UdpSocket, key: &[u8]| LegSpec {
        rtcp_mux: true,
        hint: Some(s.local_addr().expect("addr")),
        srtp_auth: Some(auth_for(key)),
        ..LegSpec::default()
    };
    let spec = SessionSpec {
        tenant: "ha".into(),
        pbx: leg(&pbx, &mp),
        endpoint: leg(&phone, &me),
        latch: Some(LatchPolicy::Authenticated),
        ..SessionSpec::default()
    };
    let (mut from_phone, mut from_pbx) = (SrtpTx::new(&me, 7, 1), SrtpTx::new(&mp, 8, 1));
    let relay = Relay::start(config()).expect("relay starts");
    let a = relay.handle().allocate(spec).wait().expect("allocate");
    let mut up = Flow { from: &phone, to_relay: a.endpoint.rtp, at: &pbx, rx: SrtpRx::new(&me), sent: 0, lost: 0 };
    let mut down = Flow { from: &pbx, to_relay: a.pbx.rtp, at: &phone, rx: SrtpRx::new(&mp), sent: 0, lost: 0 };
    for _ in 0..20 {
        up.pass(&from_phone.next_rtp());
        down.pass(&from_pbx.next_rtp());
    }
    let changes = relay.handle().changes(100).wait().expect("changes");
    let state = changes.changed.into_iter().find(|s| s.id == a.id).expect("the latched session is in the journal");
    assert_eq!(state.endpoint.remote_rtp, Some(phone.local_addr().expect("addr")));
    let before = relay.handle().session(a.id).wait().expect("query");
    drop(relay); // the active dies; its ports close

    let standby = Relay::start(config()).expect("standby starts");
    let r = standby.handle().restore(state).wait().expect("restore");
    assert_eq!((r.id, r.pbx, r.endpoint), (a.id, a.pbx, a.endpoint), "same id and relay addresses");
    for _ in 0..20 {
        up.pass(&from_phone.next_rtp());
        down.pass(&from_pbx.next_rtp());
    }
    up.check("phone → PBX across the switch");
    down.check("PBX → phone across the switch");
    assert_eq!((up.lost, down.lost), (0, 0));
    stranger.send_to(&rtp(1, 1, 1, 40), a.endpoint.rtp).expect("send");
    wait_received(&standby.handle(), 41);
    assert_nothing_queued(&pbx, "the PBX");
    let after = standby.handle().session(a.id).wait().expect("query");
    assert_eq!(after.endpoint.stats.latches, before.endpoint.stats.latches, "no new latch");
    assert_eq!(after.endpoint.stats.packets_forwarded, 40);
    assert_eq!(after.endpoint.stats.drops.get(DropReason::Unauthenticated), 1);
}

/// Runs every test above on each datapath backend. The io_uring variants
/// need io_uring (present on the project's machines); where the kernel or a
/// seccomp profile blocks it they fail with the reason, unless
/// `UCMRC_ALLOW_NO_URING=1` says that is expected.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod portable {
            $( #[test] fn $name() { super::$name(relay_core::BackendKind::Portable) } )*
        }
        mod uring {
            $( #[test] fn $name() {
                if let Err(reason) = relay_core::io::uring::probe() {
                    assert!(std::env::var("UCMRC_ALLOW_NO_URING").is_ok_and(|v| v == "1"), "io_uring unavailable: {reason}");
                    eprintln!("skipping io_uring variant: {reason}");
                    return;
                }
                super::$name(relay_core::BackendKind::Uring)
            } )*
        }
    };
}

on_every_backend!(
    srtp_and_srtcp_flow_both_ways_unchanged_and_authentic,
    attacker_spraying_in_window_mode_receives_and_injects_nothing,
    authenticated_latching_survives_rebinding_and_refuses_attackers_from_the_start,
    ten_thousand_sessions_come_and_go_without_leaking_ports_or_descriptors,
    handle_works_from_tokio_and_shutdown_releases_everything,
    ipv6_and_dual_stack_relays_forward_and_latch_canonical_addresses,
    a_flooded_leg_is_rate_limited_and_other_sessions_are_unaffected,
    an_exported_session_resumes_on_a_new_relay_with_the_same_addresses,
);

/// Pages of `list` and `export` cover every session exactly once, also
/// when one shard holds more than a page (the page asks each shard for one
/// more than it returns, so a full page knows whether more follow).
#[test]
fn list_and_export_pages_cover_every_session_once() {
    let relay = Relay::start(RelayConfig {
        backend: BackendKind::Portable,
        port_min: 32000,
        port_max: 32099,
        workers: 1,
        ..RelayConfig::default()
    })
    .expect("relay starts");
    let h = relay.handle();
    let mut ids: Vec<_> = (0..5)
        .map(|_| {
            let spec = SessionSpec { tenant: "pages".into(), ..SessionSpec::default() };
            h.allocate(spec).wait().expect("allocate").id
        })
        .collect();
    ids.sort();
    let (mut listed, mut exported) = (Vec::new(), Vec::new());
    let mut after = None;
    loop {
        let page = h.list(after, 2).wait().expect("list");
        assert!(page.sessions.len() <= 2);
        listed.extend(page.sessions.iter().map(|s| s.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut after = None;
    loop {
        let page = h.export(after, 2).wait().expect("export");
        exported.extend(page.states.iter().map(|s| s.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(listed, ids);
    assert_eq!(exported, ids);
}

/// A burst of allocations sent before any shard has answered fills the
/// relay to 90 % without a refusal: each pick counts the ports already
/// asked of a shard, not only what the shard last published (which alone
/// sends a burst to whichever shard looked emptiest, until it runs out).
#[test]
fn a_burst_of_allocations_spreads_over_the_shards() {
    let relay = Relay::start(RelayConfig {
        backend: BackendKind::Portable,
        port_min: 32100,
        port_max: 32499,
        workers: 2,
        ..RelayConfig::default()
    })
    .expect("relay starts");
    let h = relay.handle();
    let mux = LegSpec { rtcp_mux: true, ..LegSpec::default() };
    // 180 sessions × 2 ports of 400, all in flight at once (a tenant may
    // hold half the ports: four tenants).
    let pending: Vec<_> = (0..180)
        .map(|i| {
            h.allocate(SessionSpec {
                tenant: format!("burst-{}", i % 4),
                pbx: mux.clone(),
                endpoint: mux.clone(),
                ..SessionSpec::default()
            })
        })
        .collect();
    let refused: Vec<_> = pending.into_iter().filter_map(|p| p.wait().err()).collect();
    assert!(refused.is_empty(), "{} refused, first: {:?}", refused.len(), refused.first());
    assert_eq!(h.counters().wait().expect("counters").total.ports_in_use, 360);
}
