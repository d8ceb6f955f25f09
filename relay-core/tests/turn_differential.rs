//! One definition of a TURN channel in both paths: every datagram of one
//! corpus — ChannelData of every length and padding, lying lengths, other
//! channels and sources, STUN and indications, the TURN and wire fuzz
//! corpora, peer datagrams from the peer and from others, IP options,
//! fragments, lying UDP lengths, bad checksums — goes through the kernel
//! fast path's program (`BPF_PROG_TEST_RUN`, in a private network
//! namespace, as root) and through what userspace would decide for it (a
//! model of what Linux delivers to the server's socket, then the sans-IO
//! TURN server with the same allocation and channel).
//!
//! The routes are the ones the server announces, written by the driver the
//! service uses. The program may relay a datagram only when the server
//! relays it too: to the same address, from the same socket, with the same
//! bytes, counted the same. Everything else it passes up unchanged, where
//! the server's decision stands. The one documented exception, as for
//! media: a bad UDP checksum is not verified in the kernel; such a datagram
//! leaves with its checksum still bad, and the receiver's stack drops it as
//! the server's would have.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command as Process;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relay_core::io::ebpf::{FastPath, FrameVerdict, TurnOffloadDriver};
use relay_core::peer::PeerPolicy;
use relay_core::turn::auth::{NonceKey, RestSecrets};
use relay_core::turn::offload::{ChannelOffload, OffloadCounts};
use relay_core::turn::proto::*;
use relay_core::turn::*;
use relay_core::wire::stun::StunMessage;
use test_support::frames::{frame, stack_delivers, udp_checksum_verifies, Tweak};
use test_support::turn_client::Client;

const CHILD: &str = "UCMRC_TURN_DIFF_CHILD";
const REALM: &str = "diff.test";
const SECRET: &[u8] = b"differential-secret-0001";
const CHANNEL: u16 = 0x4001;

/// One family's addresses: the client, the server's listener, and the
/// peer its channel is bound to (every one on loopback: the namespace's
/// only interface).
#[derive(Clone, Copy)]
struct Hosts {
    client: SocketAddr,
    listener: SocketAddr,
    peer: SocketAddr,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn settings() -> TurnSettings {
    let v4: IpAddr = "127.0.0.1".parse().expect("ip");
    let v6: IpAddr = "::1".parse().expect("ip");
    TurnSettings {
        realms: vec![Realm {
            name: REALM.into(),
            tenant: "diff".into(),
            rest: RestSecrets::new(vec![SECRET.to_vec()]),
            users: vec![],
            allow_peers: vec![PeerNet::parse("127.0.0.0/8").expect("net"), PeerNet::parse("::1").expect("net")],
        }],
        relay_v4: Some(RelayAddress { bind: v4, advertised: v4 }),
        relay_v6: Some(RelayAddress { bind: v6, advertised: v6 }),
        first_port: 21960,
        last_port: 21969,
        policy: PeerPolicy::default(),
        // The corpus is relayed many times over: no rate in the way.
        limits: TurnLimits { bytes_per_second: 1 << 30, burst_bytes: 1 << 30, ..TurnLimits::default() },
    }
}

/// A TURN server twice over — one announcing its channels to the kernel
/// (its budget moves there), one deciding as userspace would — fed the
/// same requests, with one allocation and a channel to the peer.
struct Lab {
    offloading: TurnServer,
    deciding: TurnServer,
    driver: TurnOffloadDriver,
    now: TurnNow,
    hosts: Hosts,
    relay: RelayId,
    relayed: SocketAddr,
}

impl Lab {
    fn new(fast: Arc<Mutex<FastPath>>, hosts: Hosts) -> Self {
        let server = || TurnServer::new(settings(), NonceKey::new([5; 32]), None, 11).expect("server");
        let unix_secs = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let mut lab = Self {
            offloading: server(),
            deciding: server(),
            driver: TurnOffloadDriver::new(fast, vec![hosts.listener], &[]),
            now: TurnNow { instant: Instant::now(), unix_secs },
            hosts,
            relay: RelayId { family: Family::V4, port: 0 },
            relayed: hosts.listener,
        };
        lab.offloading.enable_offload(lab.now.instant);
        let family = if hosts.client.is_ipv4() { 1 } else { 2 };
        let requested = [(ATTR_REQUESTED_ADDRESS_FAMILY, vec![family, 0, 0, 0])];
        let mut c = Client::with_socket(UdpSocket::bind("127.0.0.1:0").expect("bind"), SECRET, REALM, "diff");
        let attrs = [(ATTR_REQUESTED_TRANSPORT, vec![TRANSPORT_UDP, 0, 0, 0]), requested[0].clone()];
        let req = c.request(Method::Allocate, &attrs, None);
        assert_eq!(c.handle_answer(&lab.ask(&req)), Some(401), "challenged first");
        let req = c.request(Method::Allocate, &attrs, None);
        let answer = lab.ask(&req);
        assert_eq!(c.handle_answer(&answer), None, "allocated");
        lab.relayed =
            StunMessage::parse(&answer).expect("stun").xor_address(ATTR_XOR_RELAYED_ADDRESS).expect("relayed");
        let family = if lab.relayed.is_ipv4() { Family::V4 } else { Family::V6 };
        lab.relay = RelayId { family, port: lab.relayed.port() };
        let number = (ATTR_CHANNEL_NUMBER, [CHANNEL.to_be_bytes(), [0, 0]].concat());
        let req = c.request(Method::ChannelBind, &[number], Some(hosts.peer));
        assert_eq!(c.handle_answer(&lab.ask(&req)), None, "channel bound");
        assert_eq!(lab.driver.allocations(), 1, "the kernel took the channel");
        // A channel announced without the budget for an allocation the
        // kernel holds nothing of (its budget went back with a refused
        // announcement) gets no slot: it would relay at a rate of its own.
        let stray = ChannelOffload {
            relay: RelayId { family: lab.relay.family, port: lab.relay.port + 1 },
            socket: RelayId { family: lab.relay.family, port: lab.relay.port + 1 },
            client: lab.client(hosts.client),
            channel: CHANNEL + 1,
            peer: hosts.peer,
            until: lab.now.instant + Duration::from_secs(60),
            bytes_per_second: 1000,
            burst_bytes: 1000,
            budget: None,
        };
        let relayed = SocketAddr::new(lab.relayed.ip(), lab.relayed.port() + 1);
        assert_eq!(lab.driver.handle_offload(&stray, relayed, None, lab.now.instant), None);
        assert_eq!(lab.driver.allocations(), 1, "no slot without the budget");
        lab
    }

    fn client(&self, source: SocketAddr) -> ClientKey {
        ClientKey { transport: Transport::Udp, listener: 0, source }
    }

    /// Sends a request to both servers, opens what they ask for, hands the
    /// offloading one's announcements to the driver; both must answer alike.
    fn ask(&mut self, request: &[u8]) -> Vec<u8> {
        let client = self.client(self.hosts.client);
        let answers: Vec<Vec<u8>> = [&mut self.offloading, &mut self.deciding]
            .into_iter()
            .map(|server| {
                let mut answer = match server.handle_client(self.now, client, request) {
                    ClientOutput::Reply(a) => Some(a),
                    ClientOutput::Pending => None,
                    other => panic!("{other:?}"),
                };
                let mut offloads = Vec::new();
                while let Some(command) = server.poll_command() {
                    match command {
                        Command::OpenRelay { relay, .. } => server.handle_relay_opened(self.now, relay, true),
                        Command::Send { message, .. } => answer = Some(message),
                        Command::OffloadChannel(o) => offloads.push(o),
                        other => panic!("{other:?}"),
                    }
                }
                for o in offloads {
                    let relayed = server.relay_bind_address(o.socket).expect("relayed");
                    assert_eq!(self.driver.handle_offload(&o, relayed, None, self.now.instant), None, "taken");
                }
                answer.expect("an answer")
            })
            .collect();
        assert_eq!(answers[0], answers[1], "twin servers answer alike");
        answers[0].clone()
    }

    /// What userspace sends for a datagram the stack delivered to the
    /// server: (from, to, bytes), or `None` when it relays nothing.
    fn userspace(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        if dst == self.hosts.listener {
            match self.deciding.handle_client(self.now, self.client(src), payload) {
                ClientOutput::Relay { relay, peer, payload: range } => {
                    let from = self.deciding.relay_bind_address(relay).expect("relayed");
                    Some((from, peer, payload[range].to_vec()))
                }
                _ => None,
            }
        } else if dst == self.relayed {
            match self.deciding.handle_peer(self.now, self.relay, src, payload) {
                PeerOutput::Channel { client, header } => {
                    Some((self.hosts.listener, client.source, [&header[..], payload].concat()))
                }
                _ => None,
            }
        } else {
            None
        }
    }
}

/// One case's outcome in both paths.
struct Outcome {
    case: String,
    kernel: i32,
    userspace: bool,
}

/// Runs `f` through both paths and checks they agree.
fn compare(lab: &mut Lab, fast: &Mutex<FastPath>, case: &str, f: &[u8]) -> Outcome {
    let kernel = fast.lock().expect("fast path").run_on(f).expect("test run");
    let delivered = stack_delivers(f);
    let user = delivered.as_ref().and_then(|(src, dst, payload)| lab.userspace(*src, *dst, payload));
    let counts = lab.driver.poll_counts();
    if kernel.forwarded() {
        let out = stack_delivers(&kernel.frame);
        match (&out, &user) {
            (Some(out), Some(user)) => {
                assert_eq!(out, user, "{case}: what userspace sends, from where it sends it");
                // Counted as the server counts: the application bytes.
                let to_peer = out.1 == lab.hosts.peer;
                let counted: Vec<OffloadCounts> = counts.iter().map(|(_, c)| *c).collect();
                let expected = if to_peer {
                    OffloadCounts { to_peer_packets: 1, to_peer_bytes: out.2.len() as u64, ..Default::default() }
                } else {
                    let data = out.2.len() as u64 - 4;
                    OffloadCounts { to_client_packets: 1, to_client_bytes: data, ..Default::default() }
                };
                assert_eq!(counted, [expected], "{case}: counted");
            }
            // The documented exception: a bad UDP checksum stays bad.
            (None, None) if case.contains("bad UDP checksum") => {
                assert!(!udp_checksum_verifies(&kernel.frame), "{case}: the checksum stays bad");
            }
            _ => panic!("{case}: the kernel relayed what userspace does not ({user:?}, delivered {delivered:?})"),
        }
    } else {
        assert_eq!(kernel.action, FrameVerdict::PASS_UP, "{case}: only relayed or passed up here");
        assert_eq!(kernel.frame, f, "{case}: passed up unchanged");
        assert!(counts.iter().all(|(_, c)| *c == OffloadCounts::default()), "{case}: nothing counted");
    }
    Outcome { case: case.to_string(), kernel: kernel.action, userspace: user.is_some() }
}

fn channel_data(channel: u16, data: &[u8], pad: &[u8]) -> Vec<u8> {
    let mut m = ChannelData::header(channel, data.len()).to_vec();
    m.extend_from_slice(data);
    m.extend_from_slice(pad);
    m
}

fn bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + len) as u8).collect()
}

/// Every file of a corpus directory, by name.
fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir).expect(dir).flatten().map(|e| e.path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|f| (f.file_name().expect("name").to_string_lossy().to_string(), std::fs::read(&f).expect("read")))
        .collect()
}

/// The cases of one family: (name, source, destination, payload, tweak).
fn cases(fam: &str, h: Hosts, relayed: SocketAddr) -> Vec<(String, SocketAddr, SocketAddr, Vec<u8>, Tweak)> {
    let plain = Tweak::default;
    let mut out = Vec::new();
    let mut add = |name: String, src: SocketAddr, dst: SocketAddr, payload: Vec<u8>, t: Tweak| {
        out.push((format!("{fam} {name}"), src, dst, payload, t));
    };
    let (client, listener, peer) = (h.client, h.listener, h.peer);
    for (len, pad) in [(0, 0), (1, 3), (1, 0), (4, 0), (7, 1), (160, 0), (161, 3), (1200, 0), (2048, 0), (2049, 3)] {
        let cd = channel_data(CHANNEL, &bytes(len), &vec![0; pad]);
        add(format!("ChannelData {len}+{pad}"), client, listener, cd, plain());
    }
    for len in [0, 1, 3, 160, 1200, 2048, 2100] {
        add(format!("peer datagram {len}"), peer, relayed, bytes(len), plain());
    }
    let other_port = SocketAddr::new(client.ip(), client.port() + 1);
    add("ChannelData from another port".into(), other_port, listener, channel_data(CHANNEL, b"hi", &[]), plain());
    add("another channel".into(), client, listener, channel_data(0x4002, b"hi", &[]), plain());
    add("the last channel number".into(), client, listener, channel_data(0x4fff, b"hi", &[]), plain());
    add("a reserved channel number".into(), client, listener, channel_data(0x5000, b"hi", &[]), plain());
    add("a length past the datagram".into(), client, listener, vec![0x40, 0x01, 0, 10, b'h', b'i'], plain());
    add("a header alone, cut short".into(), client, listener, vec![0x40, 0x01, 0], plain());
    add("padding that is not zeros".into(), client, listener, channel_data(CHANNEL, b"hi", &[0, 9]), plain());
    add("padding past four bytes".into(), client, listener, channel_data(CHANNEL, b"hi", &[0; 6]), plain());
    add(
        "trailing bytes on an aligned length".into(),
        client,
        listener,
        channel_data(CHANNEL, b"four", &[0; 4]),
        plain(),
    );
    add(
        "STUN Binding".into(),
        client,
        listener,
        vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
        plain(),
    );
    let other_peer_port = SocketAddr::new(peer.ip(), peer.port() + 1);
    add("another peer port".into(), other_peer_port, relayed, b"data".to_vec(), plain());
    let cd = channel_data(CHANNEL, &bytes(160), &[]);
    add(
        "UDP length longer than the datagram".into(),
        client,
        listener,
        cd.clone(),
        Tweak { udp_len: Some(400), ..plain() },
    );
    add(
        "UDP length shorter than the datagram".into(),
        client,
        listener,
        cd.clone(),
        Tweak { udp_len: Some(13), ..plain() },
    );
    add("IP length shorter than the frame".into(), client, listener, cd.clone(), Tweak { ip_len: Some(60), ..plain() });
    add("trailing bytes (Ethernet padding)".into(), client, listener, cd.clone(), Tweak { trailer: 6, ..plain() });
    add("bad UDP checksum".into(), client, listener, cd.clone(), Tweak { bad_udp_checksum: true, ..plain() });
    add("TCP, not UDP".into(), client, listener, cd.clone(), Tweak { protocol: Some(6), ..plain() });
    add("a peer's bad UDP checksum".into(), peer, relayed, bytes(40), Tweak { bad_udp_checksum: true, ..plain() });
    if fam == "IPv4" {
        let other_ip = SocketAddr::new("127.0.0.9".parse().expect("ip"), client.port());
        add("ChannelData from another address".into(), other_ip, listener, cd.clone(), plain());
        let stranger = SocketAddr::new("127.0.0.9".parse().expect("ip"), peer.port());
        add("a stranger to the relayed address".into(), stranger, relayed, b"data".to_vec(), plain());
        add("IP options".into(), client, listener, cd.clone(), Tweak { options: true, ..plain() });
        add("a first fragment".into(), client, listener, cd.clone(), Tweak { frag: Some(0x2000), ..plain() });
        add("a later fragment".into(), client, listener, cd.clone(), Tweak { frag: Some(0x0010), ..plain() });
        add("a peer's fragment".into(), peer, relayed, bytes(40), Tweak { frag: Some(0x2000), ..plain() });
        add("bad IPv4 header checksum".into(), client, listener, cd, Tweak { bad_ip_checksum: true, ..plain() });
    }
    let fuzz = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus");
    // TURN messages and ChannelData as the fuzz target found them, from the client.
    for (name, m) in corpus(&format!("{fuzz}/turn_messages")) {
        add(format!("turn corpus {name}"), client, listener, m, plain());
    }
    // Media payloads: on the channel, and from the peer.
    for (name, p) in corpus(&format!("{fuzz}/wire")) {
        let cd = channel_data(CHANNEL, &p, &vec![0; (4 - p.len() % 4) % 4]);
        add(format!("wire corpus {name} on the channel"), client, listener, cd, plain());
        add(format!("wire corpus {name} from the peer"), peer, relayed, p, plain());
    }
    out
}

#[test]
fn the_kernel_relays_only_what_the_turn_server_relays_the_same_way() {
    if std::env::var_os(CHILD).is_some() {
        differential_in_namespace();
        println!("TURN-DIFF-NETNS-OK");
    } else {
        test_support::netns::rerun_in_namespaces(
            "the_kernel_relays_only_what_the_turn_server_relays_the_same_way",
            &["--net"],
            (CHILD, "1"),
            "TURN-DIFF-NETNS-OK",
        );
    }
}

fn differential_in_namespace() {
    assert!(Process::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip").success());
    let fast = Arc::new(Mutex::new(FastPath::load(&["lo"]).expect("load and attach the tc program")));
    let families = [
        (
            "IPv4",
            Hosts { client: addr("127.0.0.2:50000"), listener: addr("127.0.0.1:3478"), peer: addr("127.0.0.3:6000") },
        ),
        ("IPv6", Hosts { client: addr("[::1]:50000"), listener: addr("[::1]:3478"), peer: addr("[::1]:6000") }),
    ];
    let mut outcomes = Vec::new();
    for (fam, hosts) in families {
        let mut lab = Lab::new(fast.clone(), hosts);
        for (case, src, dst, payload, tweak) in cases(fam, hosts, lab.relayed) {
            let f = frame(src, dst, &payload, &tweak);
            outcomes.push(compare(&mut lab, &fast, &case, &f));
        }
        lab.driver.end_all();
    }
    for o in &outcomes {
        eprintln!("{:<70} kernel {:>2}  userspace relays: {}", o.case, o.kernel, o.userspace);
    }
    let kernel_relayed = |case: &str| outcomes.iter().find(|o| o.case == case).expect(case).kernel;
    // The kernel did relay what it should (the test is not vacuous)...
    for fam in ["IPv4", "IPv6"] {
        for must in [
            "ChannelData 0+0",
            "ChannelData 1+3",
            "ChannelData 161+3",
            "ChannelData 1200+0",
            "peer datagram 0",
            "peer datagram 1200",
        ] {
            let case = format!("{fam} {must}");
            assert!(kernel_relayed(&case) != FrameVerdict::PASS_UP, "{case} was not relayed in the kernel");
        }
        // ...and what only the server may judge went up.
        for up in [
            "another channel",
            "a length past the datagram",
            "padding that is not zeros",
            "STUN Binding",
            "another peer port",
            "peer datagram 2100",
        ] {
            let case = format!("{fam} {up}");
            assert_eq!(kernel_relayed(&case), FrameVerdict::PASS_UP, "{case} went up");
        }
    }
    assert!(outcomes.iter().filter(|o| o.case.contains("corpus") && o.kernel != FrameVerdict::PASS_UP).count() > 50);
}
