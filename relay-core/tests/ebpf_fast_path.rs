//! The kernel fast path's program and loader, for real: the test re-runs
//! itself in a private network namespace (`unshare --net`, as root; nothing
//! touches the host's interfaces), attaches the tc program to that
//! namespace's loopback, installs routes and sends real datagrams:
//! forwarded bytes arrive unchanged from the relay's socket address;
//! strangers and STUN go up to the relay's socket instead (IPv4 and IPv6), packets over a
//! route's rate are dropped and counted; counters equal what was forwarded;
//! a removed route — or a dropped `FastPath` — forwards nothing any more.
//! Then a whole relay with `BackendKind::Ebpf` in the same way, on loopback
//! and across veth links between three namespaces (a LAN and a WAN).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use relay_core::io::ebpf::{AttachMode, Carries, FastPath, NextHop, Route};
use relay_core::{BackendKind, DropReason, Relay, RelayConfig};
use relay_core::{LatchPolicy, LegSpec, SessionSpec};
use test_support::keys::auth_for;
use test_support::netns::{sh, socket_in};
use test_support::packets::master;
use test_support::poll::wait_for;
use test_support::srtp::SrtpTx;

const CHILD: &str = "UCMRC_EBPF_NETNS_CHILD";

/// Runs `test` of this binary again in a new network namespace (as root).
fn in_new_namespace(test: &str) {
    run_in_new_namespace(test, false);
}

/// The same, with the `bpf` system call failing with EPERM (seccomp), as a
/// container profile or missing privileges would make it.
fn run_in_new_namespace(test: &str, block_bpf: bool) {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new("unshare");
    // A private mount namespace too: the veth test mounts /run/netns.
    cmd.args(["--net", "--mount", "--"])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1");
    if block_bpf {
        use std::os::unix::process::CommandExt;
        // SAFETY (test harness): the closure runs in the forked child before
        // exec and only makes two prctl calls on a filter it owns.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(block_bpf_syscall);
        }
    }
    let out = cmd.output().expect("unshare (util-linux) runs the test in a new network namespace; CI runs as root");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "namespace run failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("EBPF-NETNS-OK"), "the scenario did not run:\n{stdout}\n{stderr}");
}

#[test]
fn the_tc_program_forwards_latched_media_and_passes_everything_else_up() {
    if std::env::var_os(CHILD).is_some() {
        return in_namespace();
    }
    in_new_namespace("the_tc_program_forwards_latched_media_and_passes_everything_else_up");
}

#[test]
fn without_bpf_the_ebpf_datapath_falls_back_to_userspace_and_says_why() {
    if std::env::var_os(CHILD).is_some() {
        return fallback_in_namespace();
    }
    run_in_new_namespace("without_bpf_the_ebpf_datapath_falls_back_to_userspace_and_says_why", true);
}

#[test]
fn across_veth_links_the_kernel_forwards_between_a_lan_and_a_wan() {
    if std::env::var_os(CHILD).is_some() {
        return veth_in_namespace();
    }
    in_new_namespace("across_veth_links_the_kernel_forwards_between_a_lan_and_a_wan");
}

#[test]
fn a_relay_with_the_ebpf_datapath_forwards_established_srtp_in_the_kernel() {
    if std::env::var_os(CHILD).is_some() {
        return relay_in_namespace();
    }
    in_new_namespace("a_relay_with_the_ebpf_datapath_forwards_established_srtp_in_the_kernel");
}

/// Kernels before 6.6 (no tcx) attach a netlink `cls_bpf` filter, which
/// keeps the program after its relay dies. Forced here: a relay process
/// with a route PBX → relay port → the old phone is killed with `kill -9`;
/// a new relay starts on the same ports, and a new call on the same port
/// from the same PBX address gets its media — the old phone gets none,
/// and no filter of ours is left on the interface.
#[test]
fn a_netlink_filter_left_by_a_killed_relay_forwards_nothing_for_the_next() {
    if std::env::var_os(STALE_OWNER).is_some() {
        return stale_owner();
    }
    if std::env::var_os(CHILD).is_some() {
        return stale_filter_in_namespace();
    }
    in_new_namespace("a_netlink_filter_left_by_a_killed_relay_forwards_nothing_for_the_next");
}

/// Set for the process that plays the relay which dies.
const STALE_OWNER: &str = "UCMRC_EBPF_STALE_OWNER";
const STALE_RELAY_PORT: u16 = 20_500;
/// Ports of the next relay's range (a session takes two).
const STALE_RELAY_PORTS: u16 = 4;

/// The relay that dies: the program attached with a netlink filter, a
/// route installed from the PBX to the old phone (both given by the
/// parent), then it waits to be killed.
fn stale_owner() {
    let addr = |v: &str| std::env::var(v).expect(v).parse::<SocketAddr>().expect("addr");
    let (pbx, old_phone) = (addr("UCMRC_STALE_PBX"), addr("UCMRC_STALE_PHONE"));
    let mut fast = FastPath::load_with(&["lo"], AttachMode::Netlink).expect("netlink attach");
    // A route from the PBX to the old phone on every port of the range the
    // next relay uses (it picks its ports at random among them).
    for (i, port) in (STALE_RELAY_PORT..STALE_RELAY_PORT + STALE_RELAY_PORTS).enumerate() {
        fast.install(&Route {
            local: SocketAddr::from(([127, 0, 0, 1], port)),
            from: pbx,
            via: SocketAddr::from((
                [127, 0, 0, 1],
                STALE_RELAY_PORT + (port + 2 - STALE_RELAY_PORT) % STALE_RELAY_PORTS,
            )),
            to: old_phone,
            max_pps: 0,
            max_bytes_per_sec: 0,
            slot: 1 + i as u32,
            next_hop: NextHop::Local,
            carries: Carries { rtp: true, rtcp: true },
        })
        .expect("install");
    }
    println!("STALE-READY");
    use std::io::Write as _;
    std::io::stdout().flush().expect("flush");
    loop {
        fast.keep_alive().expect("alive"); // alive, as a relay is, until killed
        std::thread::sleep(Duration::from_millis(200)); // pacing of the renewal, not synchronisation
    }
}

fn stale_filter_in_namespace() {
    use std::io::BufRead as _;
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip").success());
    let bind = |port: u16| {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        s
    };
    let (pbx, old_phone, new_phone) = (bind(0), bind(0), bind(0));
    let mut owner = Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", "a_netlink_filter_left_by_a_killed_relay_forwards_nothing_for_the_next", "--nocapture"])
        .env(STALE_OWNER, "1")
        .env("UCMRC_STALE_PBX", v4(&pbx).to_string())
        .env("UCMRC_STALE_PHONE", v4(&old_phone).to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the relay that dies");
    let out = owner.stdout.take().expect("stdout");
    let ready = std::io::BufReader::new(out).lines().map_while(Result::ok).any(|l| l.contains("STALE-READY"));
    assert!(ready, "the first relay did not start");
    // Its filter forwards while it lives (the route works)...
    let relay_port = SocketAddr::from(([127, 0, 0, 1], STALE_RELAY_PORT));
    pbx.send_to(&rtp(1), relay_port).expect("send");
    let mut buf = [0u8; 2048];
    old_phone.recv_from(&mut buf).expect("the live relay's kernel route forwards");
    // ...then it is killed: the filter stays behind (netlink), holding the
    // program and its route.
    owner.kill().expect("kill -9");
    owner.wait().expect("reaped");
    let filters = || {
        let out = Command::new("tc").args(["filter", "show", "dev", "lo", "ingress"]).output().expect("tc");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(filters().contains("ucmrc_forward"), "the dead relay's netlink filter is there: {}", filters());

    // The next relay on the same ports; a new call on a relay port where
    // the dead relay had a route, from the same PBX address, to a new phone.
    let relay = Relay::start(RelayConfig {
        backend: BackendKind::Ebpf,
        port_min: STALE_RELAY_PORT,
        port_max: STALE_RELAY_PORT + STALE_RELAY_PORTS - 1,
        workers: 1,
        ..RelayConfig::default()
    })
    .expect("relay starts");
    assert!(!filters().contains("ucmrc_forward"), "the dead relay's filter is gone: {}", filters());
    let s = relay
        .handle()
        .allocate(SessionSpec {
            tenant: "t".into(),
            pbx: LegSpec { rtcp_mux: true, hint: Some(v4(&pbx)), ..LegSpec::default() },
            endpoint: LegSpec { rtcp_mux: true, hint: Some(v4(&new_phone)), ..LegSpec::default() },
            ..SessionSpec::default()
        })
        .wait()
        .expect("allocate");
    assert!(
        (STALE_RELAY_PORT..STALE_RELAY_PORT + STALE_RELAY_PORTS).contains(&s.pbx.rtp.port()),
        "a relay port where the dead relay had a route: {:?}",
        s.pbx
    );
    // The new phone speaks, then the PBX's media flows to it.
    new_phone.send_to(&rtp(2), s.endpoint.rtp).expect("send");
    pbx.recv_from(&mut buf).expect("phone → PBX");
    for seq in 3..40u16 {
        pbx.send_to(&rtp(seq), s.pbx.rtp).expect("send");
        let (n, from) = new_phone.recv_from(&mut buf).expect("PBX → the new phone");
        assert_eq!((&buf[..n], from), (rtp(seq).as_slice(), s.endpoint.rtp));
    }
    assert!(!pending(&old_phone), "the old phone got the new call's media");
    assert!(!filters().contains("ucmrc_forward"), "nothing of the dead relay's: {}", filters());
    drop(relay);
    println!("EBPF-NETNS-OK");
}

fn v4(s: &UdpSocket) -> SocketAddr {
    s.local_addr().expect("addr")
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 42];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p.extend((0..160u16).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// Whether `s` has a datagram waiting right now (never blocks: a packet
/// the kernel handled synchronously is queued before `send_to` returns).
fn pending(s: &UdpSocket) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 2048];
    let r = s.recv_from(&mut buf);
    s.set_nonblocking(false).expect("blocking");
    match r {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("recv: {e}"),
    }
}

fn in_namespace() {
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip").success());
    let mut fast = FastPath::load(&["lo"]).expect("load and attach the tc program");
    let bind = || {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s
    };
    // The relay's two sockets (one per leg), a phone, a PBX and a stranger.
    let (relay_a, relay_b, phone, pbx, stranger) = (bind(), bind(), bind(), bind(), bind());
    let to_pbx = Route {
        local: v4(&relay_a),
        from: v4(&phone),
        via: v4(&relay_b),
        to: v4(&pbx),
        max_pps: 0,
        max_bytes_per_sec: 0,
        slot: 1,
        next_hop: NextHop::Local,
        carries: Carries { rtp: true, rtcp: true },
    };
    let to_phone = Route {
        local: v4(&relay_b),
        from: v4(&pbx),
        via: v4(&relay_a),
        to: v4(&phone),
        max_pps: 0,
        max_bytes_per_sec: 0,
        slot: 2,
        next_hop: NextHop::Local,
        carries: Carries { rtp: true, rtcp: true },
    };
    fast.install(&to_pbx).expect("install");
    fast.install(&to_phone).expect("install");
    let mut buf = [0u8; 2048];

    // Media both ways, forwarded in the kernel: unchanged, from the relay's
    // other socket, and the relay's own sockets see nothing.
    let mut bytes = 0;
    for seq in 0..50u16 {
        let p = rtp(seq);
        phone.send_to(&p, relay_a.local_addr().expect("addr")).expect("send");
        let (n, from) = pbx.recv_from(&mut buf).expect("forwarded to the PBX");
        assert_eq!((&buf[..n], from), (p.as_slice(), relay_b.local_addr().expect("addr")));
        pbx.send_to(&p, relay_b.local_addr().expect("addr")).expect("send");
        let (n, from) = phone.recv_from(&mut buf).expect("forwarded to the phone");
        assert_eq!((&buf[..n], from), (p.as_slice(), relay_a.local_addr().expect("addr")));
        bytes += p.len() as u64;
    }
    assert!(!pending(&relay_a) && !pending(&relay_b), "userspace saw none of it");
    let s = fast.stats(1).expect("stats");
    assert_eq!((s.packets, s.bytes), (50, bytes), "counters equal what was forwarded");
    assert!(s.last.is_some());
    assert_eq!(fast.stats(2).expect("stats").packets, 50);

    // A stranger spraying the relay's port injects nothing: its packet goes
    // up to the relay's socket (userspace drops it), never to the PBX.
    stranger.send_to(&rtp(7), relay_a.local_addr().expect("addr")).expect("send");
    let (_, from) = relay_a.recv_from(&mut buf).expect("up to userspace");
    assert_eq!(from, stranger.local_addr().expect("addr"));
    assert!(!pending(&pbx), "the PBX got nothing from the stranger");
    // STUN (and DTLS) from the latched phone go up too.
    let stun = relay_core::wire::stun::binding_request(b"a:b", b"password", [1; 12]);
    phone.send_to(&stun, relay_a.local_addr().expect("addr")).expect("send");
    let (n, _) = relay_a.recv_from(&mut buf).expect("STUN up to userspace");
    assert_eq!(&buf[..n], stun.as_slice());
    assert!(!pending(&pbx));
    assert_eq!(fast.stats(1).expect("stats").packets, 50, "neither was counted as forwarded");
    let o = fast.outcomes().expect("outcomes");
    assert_eq!((o.forwarded, o.other_source, o.not_rtp), (100, 1, 1), "{o:?}");

    // Over the route's rate: the first second's burst is forwarded, the
    // rest is dropped and counted, as userspace's own bucket would.
    fast.install(&Route { max_pps: 5, slot: 3, ..to_pbx }).expect("reinstall with a limit");
    let (mut forwarded, mut up) = (0, 0);
    for seq in 0..20u16 {
        phone.send_to(&rtp(seq), relay_a.local_addr().expect("addr")).expect("send");
        if pending(&pbx) {
            forwarded += 1;
        }
        if pending(&relay_a) {
            up += 1;
        }
    }
    assert_eq!((forwarded, up), (5, 0), "5 pps with a one-second burst, nothing more anywhere");
    assert_eq!(fast.stats(3).expect("stats").dropped_over_rate, 15);

    // IPv6: the same, with the mandatory UDP checksum patched.
    let bind6 = || {
        let s = UdpSocket::bind("[::1]:0").expect("bind ::1");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s
    };
    let (relay6_a, relay6_b, phone6, pbx6, stranger6) = (bind6(), bind6(), bind6(), bind6(), bind6());
    let route6 = Route {
        local: v4(&relay6_a),
        from: v4(&phone6),
        via: v4(&relay6_b),
        to: v4(&pbx6),
        max_pps: 0,
        max_bytes_per_sec: 0,
        slot: 6,
        next_hop: NextHop::Local,
        carries: Carries { rtp: true, rtcp: true },
    };
    fast.install(&route6).expect("install an IPv6 route");
    for seq in 0..10u16 {
        let p = rtp(seq);
        phone6.send_to(&p, relay6_a.local_addr().expect("addr")).expect("send");
        let (n, from) = pbx6.recv_from(&mut buf).expect("forwarded over IPv6");
        assert_eq!((&buf[..n], from), (p.as_slice(), relay6_b.local_addr().expect("addr")));
    }
    assert!(!pending(&relay6_a));
    stranger6.send_to(&rtp(1), relay6_a.local_addr().expect("addr")).expect("send");
    relay6_a.recv_from(&mut buf).expect("an IPv6 stranger goes up");
    assert!(!pending(&pbx6));
    assert_eq!(fast.stats(6).expect("stats").packets, 10);
    // A route mixing families is refused (the kernel does not translate).
    assert!(fast.install(&Route { to: v4(&pbx), slot: 7, ..route6 }).is_err());

    // A removed route forwards nothing: userspace gets the packets again.
    fast.remove(v4(&relay_a)).expect("remove");
    phone.send_to(&rtp(99), relay_a.local_addr().expect("addr")).expect("send");
    relay_a.recv_from(&mut buf).expect("up to userspace after removal");
    assert!(!pending(&pbx));
    // Dropping the loader detaches the program: nothing forwards any more.
    drop(fast);
    pbx.send_to(&rtp(100), relay_b.local_addr().expect("addr")).expect("send");
    relay_b.recv_from(&mut buf).expect("up to userspace once detached");
    assert!(!pending(&phone));
    println!("EBPF-NETNS-OK");
}

/// A relay with `BackendKind::Ebpf` on the namespace's loopback (brought up).
fn ebpf_relay_on_loopback() -> Result<Relay, relay_core::relay::StartError> {
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip").success());
    Relay::start(RelayConfig {
        backend: BackendKind::Ebpf,
        port_min: 20000,
        port_max: 20999,
        workers: 1,
        ..RelayConfig::default()
    })
}

/// An authenticated session with SRTP keys on both legs; each leg is
/// (its remote's socket, the relay interface, the remote's master key).
fn srtp_session(
    h: &relay_core::RelayHandle,
    pbx: (&UdpSocket, u8, &[u8]),
    phone: (&UdpSocket, u8, &[u8]),
) -> relay_core::AllocatedSession {
    let leg = |(sock, interface, key): (&UdpSocket, u8, &[u8])| LegSpec {
        rtcp_mux: true,
        interface,
        hint: Some(sock.local_addr().expect("addr")),
        srtp_auth: Some(auth_for(key)),
        ..LegSpec::default()
    };
    h.allocate(SessionSpec {
        tenant: "kernel".into(),
        pbx: leg(pbx),
        endpoint: leg(phone),
        latch: Some(LatchPolicy::Authenticated),
        ..SessionSpec::default()
    })
    .wait()
    .expect("allocate")
}

/// A whole relay with `BackendKind::Ebpf`: real SRTP both ways with
/// authenticated latching; established legs go to the kernel; strangers are
/// refused by userspace and reach nobody; NAT rebinding re-latches through
/// userspace and the kernel follows; counters stay exact; a released
/// session's route is gone.
fn relay_in_namespace() {
    let relay = ebpf_relay_on_loopback().expect("relay starts");
    assert_eq!(relay.datapath().fast_path, Some(Ok(vec!["lo".to_string()])), "attached to the relay's interface");
    let h = relay.handle();
    let bind = || {
        let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s
    };
    let (phone, pbx) = (bind(), bind());
    // Another address: proof budgets are per source IP.
    let stranger = UdpSocket::bind("127.0.0.2:0").expect("bind");
    let (mp, me) = (master(1), master(2));
    let a = srtp_session(&h, (&pbx, 0, &mp), (&phone, 0, &me));
    let (mut from_phone, mut from_pbx) = (SrtpTx::new(&me, 7, 1), SrtpTx::new(&mp, 8, 1));
    let mut buf = [0u8; 2048];
    let mut exchange = |phone: &UdpSocket, from_phone: &mut SrtpTx, n: usize| {
        for _ in 0..n {
            let p = from_phone.next_rtp();
            phone.send_to(&p, a.endpoint.rtp).expect("send");
            let (len, from) = pbx.recv_from(&mut buf).expect("phone → PBX");
            assert_eq!((&buf[..len], from), (p.as_slice(), a.pbx.rtp), "unchanged, from the relay's PBX leg");
            let q = from_pbx.next_rtp();
            pbx.send_to(&q, a.pbx.rtp).expect("send");
            let (len, from) = phone.recv_from(&mut buf).expect("PBX → phone");
            assert_eq!((&buf[..len], from), (q.as_slice(), a.endpoint.rtp));
        }
    };
    exchange(&phone, &mut from_phone, 50);
    let info = h.session(a.id).wait().expect("query");
    assert_eq!((info.endpoint.stats.packets_forwarded, info.pbx.stats.packets_forwarded), (50, 50), "exact");
    let c = h.counters().wait().expect("counters").total;
    assert_eq!(c.packets_forwarded, 100);
    assert!(c.packets_forwarded_kernel >= 90, "established legs forwarded in the kernel: {c:?}");

    // A stranger spraying forged SRTP at the phone's leg: up to userspace,
    // refused there (its first packet waits until the kernel's view of
    // the leg is back: kernel_sync), and nothing reaches the PBX.
    let mut forger = SrtpTx::new(&master(9), 7, 100);
    for _ in 0..5 {
        stranger.send_to(&forger.next_rtp(), a.endpoint.rtp).expect("send");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let refused = |h: &relay_core::RelayHandle| {
        let d = h.counters().wait().expect("counters").total.drops;
        d.get(DropReason::Unauthenticated) + d.get(DropReason::ProofBackoff) + d.get(DropReason::KernelSync)
    };
    while refused(&h) < 5 {
        assert!(std::time::Instant::now() < deadline, "the forged packets were not all refused");
        std::thread::yield_now();
    }
    assert!(!pending(&pbx), "the stranger injected nothing");
    let o = h.fast_path_outcomes().expect("the fast path runs");
    // All five went up: the first as another source, the rest after the
    // leg's route was withdrawn for it.
    assert!(o.forwarded >= 90 && o.other_source >= 1 && o.other_source + o.no_route >= 5, "{o:?}");

    // NAT rebinding: the phone speaks from a new port; userspace re-latches
    // (authenticated) and the kernel follows the new address.
    let moved = bind();
    exchange(&moved, &mut from_phone, 20);
    let info = h.session(a.id).wait().expect("query");
    assert_eq!(info.endpoint.remote_rtp, Some(moved.local_addr().expect("addr")));
    assert_eq!(info.endpoint.stats.relatches, 1);
    assert_eq!((info.endpoint.stats.packets_forwarded, info.pbx.stats.packets_forwarded), (70, 70));
    let before = h.counters().wait().expect("counters").total.packets_forwarded_kernel;
    exchange(&moved, &mut from_phone, 10);
    h.session(a.id).wait().expect("query");
    let after = h.counters().wait().expect("counters").total.packets_forwarded_kernel;
    assert_eq!(after - before, 20, "the moved phone's media runs in the kernel again");

    // Idle timeouts stay exact: a session whose media runs only in the
    // kernel stays alive past its idle timeout (the driver's counters are
    // its activity); once the media stops it ends, and its route goes.
    let b = h
        .allocate(SessionSpec {
            tenant: "kernel".into(),
            pbx: LegSpec { rtcp_mux: true, hint: Some(pbx.local_addr().expect("addr")), ..LegSpec::default() },
            endpoint: LegSpec { rtcp_mux: true, hint: Some(phone.local_addr().expect("addr")), ..LegSpec::default() },
            idle_timeout: Some(Duration::from_secs(1)),
            ..SessionSpec::default()
        })
        .wait()
        .expect("allocate");
    let kernel_before = h.counters().wait().expect("counters").total.packets_forwarded_kernel;
    let started = std::time::Instant::now();
    let mut seq = 0u16;
    // Paced media for 2.5 s: longer than the idle timeout.
    while started.elapsed() < Duration::from_millis(2500) {
        seq = seq.wrapping_add(1);
        phone.send_to(&rtp(seq), b.endpoint.rtp).expect("send");
        pbx.recv_from(&mut buf).expect("forwarded");
        std::thread::sleep(Duration::from_millis(20)); // pacing (50 pps), not synchronisation
    }
    let alive = h.session(b.id).wait().expect("alive after 2.5 s of kernel-only media");
    assert!(alive.endpoint.stats.packets_forwarded > 100);
    let kernel = h.counters().wait().expect("counters").total.packets_forwarded_kernel - kernel_before;
    assert!(kernel > 100, "the media ran in the kernel: {kernel}");
    // Media stops: the session ends by its idle timeout, and its route with it.
    wait_for("the idle session's end", || h.session(b.id).wait().is_err());
    phone.send_to(&rtp(9999), b.endpoint.rtp).expect("send");
    assert!(!pending(&pbx), "nothing forwarded after the idle end");

    // Released: the route is withdrawn before the release answers, so the
    // kernel forwards nothing more (the port's socket is closed too).
    h.release(a.id).wait().expect("release");
    moved.send_to(&from_phone.next_rtp(), a.endpoint.rtp).expect("send");
    assert!(!pending(&pbx), "nothing forwarded after the release");
    assert_eq!(h.counters().wait().expect("counters").total.sessions_active, 0);
    println!("EBPF-NETNS-OK");
}

/// `bpf` refused: the relay starts anyway, reports why the fast path is
/// not running, and forwards in userspace.
fn fallback_in_namespace() {
    let relay = ebpf_relay_on_loopback().expect("the relay starts without its fast path");
    let reason = match &relay.datapath().fast_path {
        Some(Err(reason)) => reason.clone(),
        other => panic!("the fast path must report why it is not running, got {other:?}"),
    };
    assert!(reason.contains("BPF") || reason.contains("bpf"), "{reason}");
    let (pbx, phone) = (UdpSocket::bind("127.0.0.1:0").expect("bind"), UdpSocket::bind("127.0.0.1:0").expect("bind"));
    pbx.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let s = relay
        .handle()
        .allocate(SessionSpec {
            tenant: "t".into(),
            pbx: LegSpec { rtcp_mux: true, hint: Some(pbx.local_addr().expect("addr")), ..LegSpec::default() },
            endpoint: LegSpec { rtcp_mux: true, ..LegSpec::default() },
            ..SessionSpec::default()
        })
        .wait()
        .expect("allocate");
    let p = rtp(1);
    phone.send_to(&p, s.endpoint.rtp).expect("send");
    let mut buf = [0u8; 2048];
    let n = pbx.recv(&mut buf).expect("forwarded in userspace");
    assert_eq!(&buf[..n], p.as_slice());
    assert_eq!(relay.handle().counters().wait().expect("counters").total.packets_forwarded_kernel, 0);
    println!("EBPF-NETNS-OK");
}

/// EPERM for `bpf(2)`.
fn block_bpf_syscall() -> std::io::Result<()> {
    test_support::seccomp::deny_with_eperm(&[libc::SYS_bpf as u32])
}

/// Three namespaces joined by veth links — a phone (10.1.0.2) on the
/// relay's LAN interface (10.1.0.1), a PBX (10.2.0.2) on its WAN interface
/// (10.2.0.1), the relay on `auto`: the kernel forwards each leg out of the
/// other interface with `bpf_redirect_neigh`, MACs from the neighbour
/// table, real SRTP both ways.
fn veth_in_namespace() {
    sh("mount --make-rprivate / && mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns");
    sh("ip link set lo up && ip netns add phone && ip netns add pbx");
    sh("ip link add vp type veth peer name vp-r && ip link set vp netns phone");
    sh("ip link add vx type veth peer name vx-r && ip link set vx netns pbx");
    sh("ip addr add 10.1.0.1/24 dev vp-r && ip link set vp-r up && ip addr add 10.2.0.1/24 dev vx-r && ip link set vx-r up");
    sh("ip -n phone addr add 10.1.0.2/24 dev vp && ip -n phone link set vp up && ip -n phone link set lo up");
    sh("ip -n pbx addr add 10.2.0.2/24 dev vx && ip -n pbx link set vx up && ip -n pbx link set lo up");
    let itf = |name: &str, ip: [u8; 4]| relay_core::InterfaceConfig {
        name: name.into(),
        addresses: vec![relay_core::InterfaceAddress { bind: ip.into(), advertised: None }],
        port_min: 20000,
        port_max: 20999,
    };
    // `auto` (the default) attaches the fast path by itself on interfaces
    // that are not loopback...
    let relay = Relay::start(RelayConfig {
        backend: BackendKind::Auto,
        interfaces: vec![itf("lan", [10, 1, 0, 1]), itf("wan", [10, 2, 0, 1])],
        workers: 1,
        peer_policy: relay_core::PeerPolicy { allow_private: true, ..relay_core::PeerPolicy::loopback_lab() },
        ..RelayConfig::default()
    })
    .expect("relay starts");
    assert_eq!(relay.datapath().fast_path, Some(Ok(vec!["vp-r".to_string(), "vx-r".to_string()])));
    // ...and leaves the loopback device alone, saying why.
    let lab = Relay::start(RelayConfig { port_min: 21000, port_max: 21999, workers: 1, ..RelayConfig::default() })
        .expect("a loopback relay starts");
    assert!(
        matches!(&lab.datapath().fast_path, Some(Err(r)) if r.contains("non-loopback")),
        "{:?}",
        lab.datapath().fast_path
    );
    drop(lab);
    let h = relay.handle();
    let phone = socket_in("phone", "10.1.0.2:0", Duration::from_secs(5));
    let pbx = socket_in("pbx", "10.2.0.2:0", Duration::from_secs(5));
    let (mp, me) = (master(1), master(2));
    let a = srtp_session(&h, (&pbx, 1, &mp), (&phone, 0, &me));
    assert_eq!((a.endpoint.rtp.ip(), a.pbx.rtp.ip()), ([10, 1, 0, 1].into(), [10, 2, 0, 1].into()));
    exchange(&phone, &pbx, &a, &me, &mp, 100);
    let info = h.session(a.id).wait().expect("query");
    assert_eq!((info.endpoint.stats.packets_forwarded, info.pbx.stats.packets_forwarded), (100, 100));
    let c = h.counters().wait().expect("counters").total;
    assert!(c.packets_forwarded_kernel >= 190, "forwarded across the links in the kernel: {c:?}");

    // A standby's relay: its addresses (bound with IP_FREEBIND) are on no
    // interface yet. The program loads and waits; once a takeover moved
    // the addresses here, attaching finds their interfaces and the kernel
    // forwards from then on. The first relay stays attached to the same
    // interfaces, ahead in the chain: what is not its own it passes on to
    // the next program, not straight to the stack.
    let standby = Relay::start(RelayConfig {
        backend: BackendKind::Auto,
        interfaces: vec![itf("lan", [10, 1, 0, 50]), itf("wan", [10, 2, 0, 50])],
        workers: 1,
        peer_policy: relay_core::PeerPolicy { allow_private: true, ..relay_core::PeerPolicy::loopback_lab() },
        sockets: relay_core::SocketOptions { freebind: true, ..relay_core::SocketOptions::default() },
        ..RelayConfig::default()
    })
    .expect("a relay on addresses not here yet starts");
    assert_eq!(standby.datapath().fast_path, Some(Ok(Vec::new())), "loaded, attached nowhere yet");
    let h = standby.handle();
    assert!(h.attach_fast_path().is_empty(), "the addresses are not here yet");
    sh("ip addr add 10.1.0.50/24 dev vp-r && ip addr add 10.2.0.50/24 dev vx-r");
    assert_eq!(h.attach_fast_path(), vec!["vp-r".to_string(), "vx-r".to_string()]);
    assert_eq!(h.attach_fast_path(), vec!["vp-r".to_string(), "vx-r".to_string()], "attached once");
    let a = srtp_session(&h, (&pbx, 1, &mp), (&phone, 0, &me));
    exchange(&phone, &pbx, &a, &me, &mp, 100);
    let info = h.session(a.id).wait().expect("query"); // reads the kernel's counters back
    assert_eq!((info.endpoint.stats.packets_forwarded, info.pbx.stats.packets_forwarded), (100, 100));
    let c = h.counters().wait().expect("counters").total;
    assert!(c.packets_forwarded_kernel >= 190, "after the late attach, forwarded in the kernel: {c:?}");
    println!("EBPF-NETNS-OK");
}

/// `n` SRTP packets each way between `phone` and `pbx` across session `a`,
/// one at a time, each compared byte for byte with its relay source.
fn exchange(
    phone: &UdpSocket,
    pbx: &UdpSocket,
    a: &relay_core::AllocatedSession,
    phone_key: &[u8],
    pbx_key: &[u8],
    n: usize,
) {
    let (mut from_phone, mut from_pbx) = (SrtpTx::new(phone_key, 7, 1), SrtpTx::new(pbx_key, 8, 1));
    let mut buf = [0u8; 2048];
    for _ in 0..n {
        let p = from_phone.next_rtp();
        phone.send_to(&p, a.endpoint.rtp).expect("send");
        let (len, from) = pbx.recv_from(&mut buf).expect("phone → PBX across the relay");
        assert_eq!((&buf[..len], from), (p.as_slice(), a.pbx.rtp));
        let q = from_pbx.next_rtp();
        pbx.send_to(&q, a.pbx.rtp).expect("send");
        let (len, from) = phone.recv_from(&mut buf).expect("PBX → phone across the relay");
        assert_eq!((&buf[..len], from), (q.as_slice(), a.endpoint.rtp));
    }
}
