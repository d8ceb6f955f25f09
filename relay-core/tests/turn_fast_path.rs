//! TURN channels relayed by the kernel fast path, for real: the test re-runs
//! itself in a private network namespace (`unshare --net`, as root; nothing
//! touches the host's interfaces) and attaches the tc program to that
//! namespace's loopback.
//!
//! - The program alone (`BPF_PROG_TEST_RUN`): ChannelData from the client
//!   leaves from the relayed address to the peer, unwrapped (zero padding
//!   dropped), a peer's datagram leaves from the listener to the client
//!   behind the channel's header; both with checksums the stack accepts.
//!   Everything userspace must judge goes up unchanged: another source,
//!   another channel, a length past the datagram, padding that is not
//!   zeros, a route past its deadline.
//! - A whole `TurnService` with the fast path: a client allocates and binds
//!   a channel over real sockets, every byte both ways arrives, the kernel
//!   relayed it (its outcome counters) and the allocation's counters say
//!   so; a rate lowered by a reload holds in the kernel (exact drops,
//!   counted) and a refreshed permission refills nothing; the
//!   allocation's end removes its routes, and so does the service's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_core::io::ebpf::{ChannelRoute, FastPath, FrameVerdict, NextHop, TurnBucket};
use relay_core::peer::PeerPolicy;
use relay_core::turn::auth::{NonceKey, RestSecrets};
use relay_core::turn::proto::*;
use relay_core::turn::service::{StreamLimits, TurnService};
use relay_core::turn::*;
use relay_core::wire::stun::StunMessage;
use test_support::frames::{frame, stack_delivers, Tweak};
use test_support::turn_client::Client;

const CHILD: &str = "UCMRC_TURN_EBPF_CHILD";
const REALM: &str = "turn.test";
const SECRET: &[u8] = b"kernel-turn-secret-0001";

/// Runs `test` of this binary again in a new network namespace (as root).
fn in_new_namespace(test: &str) {
    test_support::netns::rerun_in_namespaces(test, &["--net"], (CHILD, "1"), "TURN-EBPF-NETNS-OK");
}

/// Test `test`: `scenario` on a tokio runtime, in a new network namespace.
fn on_a_runtime_in_a_new_namespace<F: std::future::Future<Output = ()>>(test: &str, scenario: impl FnOnce() -> F) {
    if in_child() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(scenario());
        println!("TURN-EBPF-NETNS-OK");
    } else {
        in_new_namespace(test);
    }
}

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn lo_up_and_load() -> FastPath {
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip").success());
    FastPath::load(&["lo"]).expect("load and attach the tc program")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn monotonic_now() -> Duration {
    relay_core::io::ebpf::monotonic_now().expect("clock")
}

#[test]
fn the_program_unwraps_and_wraps_channel_data_and_passes_the_rest_up() {
    if in_child() {
        program_in_namespace();
        println!("TURN-EBPF-NETNS-OK");
    } else {
        in_new_namespace("the_program_unwraps_and_wraps_channel_data_and_passes_the_rest_up");
    }
}

fn program_in_namespace() {
    let mut fast = lo_up_and_load();
    // IPv4, then IPv6 (each family has its own maps, one program).
    program_cases(&mut fast, ["198.51.100.20:50000", "192.0.2.1:3478", "192.0.2.1:40000", "203.0.113.7:6000"], 3);
    program_cases(
        &mut fast,
        ["[2001:db8:20::20]:50000", "[2001:db8:1::1]:3478", "[2001:db8:1::1]:40000", "[2001:db8:7::7]:6000"],
        4,
    );
}

/// Every case of the program's test on one family's addresses: the
/// client, the listener, the relayed address and the peer.
fn program_cases(fast: &mut FastPath, hosts: [&str; 4], slot: u32) {
    let [client, listener, relayed, peer] = hosts.map(addr);
    let route = ChannelRoute {
        client,
        listener,
        channel: 0x4001,
        relayed,
        peer,
        until: monotonic_now() + Duration::from_secs(600),
        slot,
        to_peer: NextHop::Local,
        to_client: NextHop::Local,
    };
    fast.start_turn_slot(slot, TurnBucket { tokens: 1 << 30, bytes_per_second: 1 << 20, burst: 1 << 30 })
        .expect("slot");
    fast.install_channel(&route).expect("install");
    let plain = Tweak::default();
    let channel_data = |channel: u16, data: &[u8], pad: &[u8]| {
        let mut m = ChannelData::header(channel, data.len()).to_vec();
        m.extend_from_slice(data);
        m.extend_from_slice(pad);
        m
    };

    // To the peer: every length (odd ones too, with and without zero
    // padding), from the relayed address, the stack accepts the checksum.
    let mut relayed_bytes = 0;
    for (len, pad) in [(0usize, 0usize), (1, 3), (7, 1), (7, 0), (160, 0), (161, 3), (1200, 0)] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let f = frame(client, listener, &channel_data(0x4001, &data, &vec![0; pad]), &plain);
        let v = fast.run_on(&f).expect("run");
        assert_eq!(v.action, FrameVerdict::DELIVER, "{len}+{pad}: relayed in the kernel");
        let (from, to, payload) = stack_delivers(&v.frame).expect("the stack accepts what the kernel relayed");
        assert_eq!((from, to, payload), (relayed, peer, data), "{len}+{pad}: unwrapped, to the peer");
        relayed_bytes += len as u64;
    }
    // To the client: behind the channel's header, from the listener.
    for len in [0usize, 1, 3, 160, 1200] {
        let data: Vec<u8> = (0..len).map(|i| (i * 3 + 1) as u8).collect();
        let f = frame(peer, relayed, &data, &plain);
        let v = fast.run_on(&f).expect("run");
        assert_eq!(v.action, FrameVerdict::DELIVER, "{len}: relayed in the kernel");
        let (from, to, payload) = stack_delivers(&v.frame).expect("the stack accepts what the kernel relayed");
        assert_eq!((from, to), (listener, client));
        assert_eq!(payload, channel_data(0x4001, &data, &[]), "{len}: wrapped in the channel's header");
    }
    // No UDP checksum (IPv4 allows it) stays none.
    if client.is_ipv4() {
        let mut f = frame(client, listener, &channel_data(0x4001, b"abc", &[0]), &plain);
        f[40..42].copy_from_slice(&[0, 0]); // Ethernet 14 + IPv4 20 + UDP's checksum at 6
        let v = fast.run_on(&f).expect("run");
        assert_eq!(v.action, FrameVerdict::DELIVER);
        assert_eq!(stack_delivers(&v.frame).map(|d| d.2), Some(b"abc".to_vec()));
        relayed_bytes += 3;
    }
    let c = fast.turn_counters(slot).expect("counters");
    let datagrams = if client.is_ipv4() { 8 } else { 7 };
    assert_eq!((c.to_peer_packets, c.to_peer_bytes), (datagrams, relayed_bytes), "counted as userspace counts");
    assert_eq!((c.to_client_packets, c.to_client_bytes), (5, 1364));

    // What userspace must judge goes up, unchanged.
    let other = SocketAddr::new(client.ip(), client.port() + 1);
    let up = [
        ("another source port", frame(other, listener, &channel_data(0x4001, b"hi", &[]), &plain)),
        ("another channel", frame(client, listener, &channel_data(0x4002, b"hi", &[]), &plain)),
        ("a length past the datagram", frame(client, listener, &[0x40, 0x01, 0, 10, b'h', b'i'], &plain)),
        ("padding that is not zeros", frame(client, listener, &channel_data(0x4001, b"hi", &[0, 9]), &plain)),
        ("padding past four bytes", frame(client, listener, &channel_data(0x4001, b"hi", &[0; 6]), &plain)),
        ("STUN to the listener", frame(client, listener, &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4], &plain)),
        ("another peer port to the relayed address", frame(SocketAddr::new(peer.ip(), 6001), relayed, b"data", &plain)),
    ];
    let before = fast.outcomes().expect("outcomes");
    for (case, f) in &up {
        let v = fast.run_on(f).expect("run");
        assert_eq!((v.action, &v.frame), (FrameVerdict::PASS_UP, f), "{case}: up, unchanged");
    }
    let after = fast.outcomes().expect("outcomes");
    assert_eq!(after.turn_unusual - before.turn_unusual, 3, "the length and padding cases");

    // Past its deadline, a route relays nothing: up, where userspace
    // decides (a Data indication, or a drop).
    fast.install_channel(&ChannelRoute { until: monotonic_now(), ..route }).expect("install");
    for f in
        [frame(client, listener, &channel_data(0x4001, b"late", &[]), &plain), frame(peer, relayed, b"late", &plain)]
    {
        let v = fast.run_on(&f).expect("run");
        assert_eq!(v.action, FrameVerdict::PASS_UP, "expired: up");
    }
    assert_eq!(fast.outcomes().expect("outcomes").turn_expired - after.turn_expired, 2);

    // Over the allocation's rate: dropped, counted, as userspace's bucket.
    fast.install_channel(&route).expect("install");
    fast.start_turn_slot(slot, TurnBucket { tokens: 250, bytes_per_second: 1, burst: 250 }).expect("slot");
    let f = frame(client, listener, &channel_data(0x4001, &[5; 100], &[]), &plain);
    let actions: Vec<i32> = (0..4).map(|_| fast.run_on(&f).expect("run").action).collect();
    assert_eq!(actions, [FrameVerdict::DELIVER, FrameVerdict::DELIVER, FrameVerdict::DROP, FrameVerdict::DROP]);
    assert_eq!(fast.turn_counters(slot).expect("counters").over_rate, 2);

    // Removed: up again.
    fast.remove_channel(&route).expect("remove");
    assert_eq!(fast.run_on(&f).expect("run").action, FrameVerdict::PASS_UP);
}

#[test]
fn a_turn_service_relays_its_channels_in_the_kernel() {
    on_a_runtime_in_a_new_namespace("a_turn_service_relays_its_channels_in_the_kernel", service_in_namespace);
}

fn settings(limits: TurnLimits) -> TurnSettings {
    let ip: IpAddr = Ipv4Addr::LOCALHOST.into();
    TurnSettings {
        realms: vec![realm()],
        relay_v4: Some(RelayAddress { bind: ip, advertised: ip }),
        relay_v6: None,
        first_port: 21900,
        last_port: 21909,
        policy: PeerPolicy::default(),
        limits,
    }
}

fn realm() -> Realm {
    Realm {
        name: REALM.into(),
        tenant: "acme".into(),
        rest: RestSecrets::new(vec![SECRET.to_vec()]),
        users: vec![],
        allow_peers: vec![PeerNet::parse("127.0.0.1/32").expect("net")],
    }
}

async fn service_in_namespace() {
    let fast = Arc::new(Mutex::new(lo_up_and_load()));
    let server = TurnServer::new(settings(TurnLimits::default()), NonceKey::new([3; 32]), None, 1).expect("server");
    let listener = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let at = listener.local_addr().expect("addr");
    let service = TurnService::start(server, vec![listener], StreamLimits::default()).expect("service");
    service.use_fast_path(fast.clone());

    let svc = service.clone();
    let fast2 = fast.clone();
    tokio::task::spawn_blocking(move || {
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
        peer.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        let mut c = Client::new(SECRET, REALM, "wave-kernel");
        let relayed = c.allocate(at, &[]);
        let peer_at = peer.local_addr().expect("addr");
        c.bind_channel(at, 0x4007, peer_at);
        assert_eq!(svc.offloaded_allocations(), 1, "its channel went to the kernel");
        let start = fast2.lock().expect("fast path").outcomes().expect("outcomes");

        // Every byte both ways, the kernel relaying.
        let mut buf = [0u8; 2048];
        let (mut up, mut down) = (0u64, 0u64);
        for n in 0..200usize {
            let data: Vec<u8> = (0..(n % 300) + 1).map(|i| (i + n) as u8).collect();
            c.channel_data(at, 0x4007, &data);
            let (len, from) = peer.recv_from(&mut buf).expect("to the peer");
            assert_eq!((&buf[..len], from), (&data[..], relayed), "from the relayed address");
            peer.send_to(&data, relayed).expect("send");
            assert_eq!(c.recv_channel(), data, "to the client on its channel");
            up += data.len() as u64;
            down += data.len() as u64;
        }
        let end = fast2.lock().expect("fast path").outcomes().expect("outcomes");
        assert_eq!(end.turn_to_peer - start.turn_to_peer, 200, "the kernel relayed every datagram to the peer");
        assert_eq!(end.turn_to_client - start.turn_to_client, 200, "and every one back");
        svc.sync_kernel_counters();
        let (to_peer, to_client) = svc.with_server(|s| {
            let a = s.allocations().next().expect("the allocation");
            (a.to_peer, a.to_client)
        });
        assert_eq!((to_peer, to_client), ((200, up), (200, down)), "the allocation counts what the kernel relayed");

        // A reload lowers the rate: the kernel's bucket follows, exactly.
        let limits = TurnLimits { bytes_per_second: 1, burst_bytes: 1000, ..TurnLimits::default() };
        svc.reconfigure(vec![realm()], limits, PeerPolicy::default()).expect("reload");
        for _ in 0..20 {
            c.channel_data(at, 0x4007, &[9; 200]);
        }
        for _ in 0..5 {
            let (len, _) = peer.recv_from(&mut buf).expect("within the burst");
            assert_eq!(&buf[..len], &[9; 200][..]);
        }
        // Refreshing the permission (the channel is announced again)
        // refills nothing: these are dropped too.
        assert_eq!(c.ask(at, Method::CreatePermission, &[], Some(peer_at)).0, None);
        for _ in 0..5 {
            c.channel_data(at, 0x4007, &[9; 200]);
        }
        // The allocation's end brings the kernel's last counters: the
        // other 20 were dropped over the rate.
        let ended = c.ask(at, Method::Refresh, &[(ATTR_LIFETIME, 0u32.to_be_bytes().to_vec())], None).0;
        assert_eq!(ended, None, "deleted");
        assert_eq!(svc.stats().drops(TurnDrop::RateLimited), 20, "the kernel's drops are counted as the server's");
        assert_eq!(svc.offloaded_allocations(), 0, "its routes went with it");
        // Gone from the kernel: the client's ChannelData goes up, where the
        // server drops it (no allocation).
        let before = svc.stats().drops(TurnDrop::NoAllocation);
        c.channel_data(at, 0x4007, b"after");
        test_support::poll::wait_for("the server's drop", || svc.stats().drops(TurnDrop::NoAllocation) > before);
        let last = fast2.lock().expect("fast path").outcomes().expect("outcomes");
        assert_eq!(last.turn_to_peer, end.turn_to_peer + 5, "nothing more relayed in the kernel");
    })
    .await
    .expect("client");
}

#[test]
fn a_turn_service_relays_ipv6_channels_in_the_kernel() {
    on_a_runtime_in_a_new_namespace("a_turn_service_relays_ipv6_channels_in_the_kernel", ipv6_service_in_namespace);
}

async fn ipv6_service_in_namespace() {
    let fast = Arc::new(Mutex::new(lo_up_and_load()));
    let ip: IpAddr = std::net::Ipv6Addr::LOCALHOST.into();
    let settings = TurnSettings {
        realms: vec![Realm { allow_peers: vec![PeerNet::parse("::1/128").expect("net")], ..realm() }],
        relay_v4: None,
        relay_v6: Some(RelayAddress { bind: ip, advertised: ip }),
        ..settings(TurnLimits::default())
    };
    let server = TurnServer::new(settings, NonceKey::new([4; 32]), None, 1).expect("server");
    let listener = UdpSocket::bind("[::1]:0").expect("bind");
    let at = listener.local_addr().expect("addr");
    let service = TurnService::start(server, vec![listener], StreamLimits::default()).expect("service");
    service.use_fast_path(fast.clone());
    tokio::task::spawn_blocking(move || {
        let peer = UdpSocket::bind("[::1]:0").expect("bind");
        peer.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        let mut c = Client::bound("[::1]:0", SECRET, REALM, "wave-kernel-6");
        let relayed = c.allocate(at, &[(ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])]);
        assert!(relayed.is_ipv6());
        c.bind_channel(at, 0x4009, peer.local_addr().expect("addr"));
        let start = fast.lock().expect("fast path").outcomes().expect("outcomes");
        let mut buf = [0u8; 2048];
        for n in 0..50usize {
            let data: Vec<u8> = (0..n * 7 + 1).map(|i| (i ^ n) as u8).collect();
            c.channel_data(at, 0x4009, &data);
            let (len, from) = peer.recv_from(&mut buf).expect("to the peer");
            assert_eq!((&buf[..len], from), (&data[..], relayed), "from the relayed address");
            peer.send_to(&data, relayed).expect("send");
            assert_eq!(c.recv_channel(), data, "to the client on its channel");
        }
        let end = fast.lock().expect("fast path").outcomes().expect("outcomes");
        assert_eq!(
            (end.turn_to_peer - start.turn_to_peer, end.turn_to_client - start.turn_to_client),
            (50, 50),
            "the kernel relayed every datagram both ways"
        );
        service.sync_kernel_counters();
        let counted = service.with_server(|s| s.allocations().next().map(|a| (a.to_peer.0, a.to_client.0)));
        assert_eq!(counted, Some((50, 50)));

        // The service stops (the relay's fast path goes on): its routes go
        // with it, nothing relays for it in the kernel any more.
        let outcomes = || fast.lock().expect("fast path").outcomes().expect("outcomes");
        let before = outcomes();
        drop(service);
        c.channel_data(at, 0x4009, b"after the service");
        test_support::poll::wait_for("the kernel to pass it up", || outcomes().not_rtp > before.not_rtp);
        assert_eq!(outcomes().turn_to_peer, before.turn_to_peer, "no route left");
    })
    .await
    .expect("client");
}

#[test]
fn a_wildcard_listener_answers_and_relays_from_the_address_the_client_asked() {
    on_a_runtime_in_a_new_namespace(
        "a_wildcard_listener_answers_and_relays_from_the_address_the_client_asked",
        wildcard_in_namespace,
    );
}

/// The listener on 0.0.0.0, the client asking 127.0.0.2 (the kernel's own
/// choice of source would be 127.0.0.1): every answer and every datagram
/// the client gets comes from 127.0.0.2, and its channel is relayed in the
/// kernel, both ways.
async fn wildcard_in_namespace() {
    let fast = Arc::new(Mutex::new(lo_up_and_load()));
    let server = TurnServer::new(settings(TurnLimits::default()), NonceKey::new([5; 32]), None, 1).expect("server");
    let listener = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let at = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), listener.local_addr().expect("addr").port());
    let service = TurnService::start(server, vec![listener], StreamLimits::default()).expect("service");
    service.use_fast_path(fast.clone());
    tokio::task::spawn_blocking(move || {
        let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
        peer.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        let mut c = Client::new(SECRET, REALM, "wave-wildcard");
        let transport = (ATTR_REQUESTED_TRANSPORT, vec![TRANSPORT_UDP, 0, 0, 0]);
        assert_eq!(c.ask(at, Method::Allocate, std::slice::from_ref(&transport), None).0, Some(401));
        assert_eq!(c.last_source(), Some(at), "the challenge comes from the address asked");
        let (code, answer) = c.ask(at, Method::Allocate, &[transport], None);
        assert_eq!((code, c.last_source()), (None, Some(at)), "allocated, answered from the address asked");
        let relayed =
            StunMessage::parse(&answer).expect("stun").xor_address(ATTR_XOR_RELAYED_ADDRESS).expect("relayed");
        c.bind_channel(at, 0x4011, peer.local_addr().expect("addr"));
        let start = fast.lock().expect("fast path").outcomes().expect("outcomes");
        let mut buf = [0u8; 2048];
        for n in 0..20u8 {
            c.channel_data(at, 0x4011, &[n; 60]);
            let (len, from) = peer.recv_from(&mut buf).expect("to the peer");
            assert_eq!((&buf[..len], from), (&[n; 60][..], relayed));
            peer.send_to(&[!n; 40], relayed).expect("send");
            assert_eq!(c.recv_channel(), vec![!n; 40]);
            assert_eq!(c.last_source(), Some(at), "relayed from the address the client asked");
        }
        let end = fast.lock().expect("fast path").outcomes().expect("outcomes");
        assert_eq!(
            (end.turn_to_peer - start.turn_to_peer, end.turn_to_client - start.turn_to_client),
            (20, 20),
            "a wildcard listener's channel is relayed in the kernel too"
        );
        // A Data indication (no channel: another peer port) from userspace
        // leaves from there too.
        let other = UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert_eq!(c.ask(at, Method::CreatePermission, &[], Some(other.local_addr().expect("addr"))).0, None);
        other.send_to(b"no channel", relayed).expect("send");
        let (_, from) = c.socket.recv_from(&mut buf).expect("a Data indication");
        assert_eq!(from, at);
        drop(service);
    })
    .await
    .expect("client");
}
