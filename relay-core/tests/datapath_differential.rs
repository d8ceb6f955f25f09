//! One definition of media in both datapaths: every packet of one corpus —
//! well-formed RTP and RTCP, short and implausible headers, lying IP and
//! UDP lengths, Ethernet padding, fragments, IP options, bad checksums,
//! every RFC 7983 class, another source, and the fuzz corpus' payloads —
//! goes through the kernel fast path's program (`BPF_PROG_TEST_RUN`, as
//! root) and through what userspace would decide for it (a model of what
//! Linux delivers to the relay's socket, then the sans-IO shard with the
//! same session established and the same routes installed).
//!
//! The program may forward a packet only when userspace forwards it too:
//! to the same address from the same relay socket, with the same payload
//! (the TTL and TOS of the relay's own sends), charged the same length.
//! Everything else it passes up, where userspace's decision stands. The one
//! documented exception: a UDP checksum is not verified in the kernel (see
//! SECURITY.md); a datagram with a bad one is forwarded with its checksum
//! still bad, so the receiver's stack drops it as the relay's would have.
//!
//! New cases found by either path go into `tests/datapath_corpus/` (UDP
//! payloads, sent from the latched source) or into `frame_cases` below.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use relay_core::io::ebpf::{Carries, FastPath, FrameVerdict, NextHop, Route};
use relay_core::peer::PeerPolicy;
use relay_core::shard::offload::Offload;
use relay_core::shard::{AddressSlice, Command, RelayPort, Response, Shard, ShardConfig, Verdict};
use relay_core::{LatchPolicy, LegSpec, SessionDefaults, SessionSpec};
use test_support::frames::{frame, parse_out, stack_delivers, udp_checksum_verifies, Tweak};
use test_support::keys::auth_for;
use test_support::packets::master;
use test_support::sockets::FakeSockets;
use test_support::srtp::SrtpTx;

/// One family's addresses: the relay's, the PBX's, the phone's, a stranger's.
#[derive(Clone, Copy)]
struct Hosts {
    relay: IpAddr,
    pbx: SocketAddr,
    phone: SocketAddr,
    stranger: SocketAddr,
}

const V4: Hosts = Hosts {
    relay: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    pbx: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10)), 4000),
    phone: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20)), 5004),
    stranger: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)), 6666),
};

const V6: Hosts = Hosts {
    relay: IpAddr::V6(Ipv6Addr::new(0x2a01, 0x4f8, 0, 0, 0, 0, 0, 1)),
    pbx: SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2a02, 0x8070, 0, 0, 0, 0, 0, 0x10)), 4000),
    phone: SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2a03, 0x2880, 0, 0, 0, 0, 0, 0x20)), 5004),
    stranger: SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2a03, 0x2880, 0, 0, 0, 0, 0, 0x66)), 6666),
};

/// A shard with one established session (both legs latched, their routes
/// offered), and where the phone's packets arrive.
struct Lab {
    shard: Shard,
    t0: Instant,
    /// The relay socket the phone sends to, and the one its media leaves from.
    to_phone_leg: SocketAddr,
    to_pbx_leg: SocketAddr,
    routes: Vec<Route>,
}

impl Lab {
    /// `keys`: an authenticated session with SRTP keys (its routes carry
    /// RTP only); otherwise window latching (RTP and RTCP).
    fn new(hosts: Hosts, keys: bool) -> Self {
        let t0 = Instant::now();
        let mut shard = Shard::new(
            ShardConfig {
                index: 0,
                addresses: vec![AddressSlice::new(hosts.relay, 30_000, 100)],
                defaults: SessionDefaults::default(),
                peer_policy: PeerPolicy::default(),
                seed: 7,
                bind_quarantine: Duration::from_secs(30),
                offload: true,
                journal: false,
                id_space: 1,
            },
            t0,
        );
        let mut sockets = FakeSockets::default();
        let leg = |hint: SocketAddr, key: u8| LegSpec {
            rtcp_mux: true,
            hint: Some(hint),
            srtp_auth: keys.then(|| auth_for(&master(key))),
            ..LegSpec::default()
        };
        let spec = SessionSpec {
            tenant: "diff".into(),
            pbx: leg(hosts.pbx, 1),
            endpoint: leg(hosts.phone, 2),
            latch: Some(if keys { LatchPolicy::Authenticated } else { LatchPolicy::Window }),
            ..SessionSpec::default()
        };
        let a = match shard.handle_command(t0, Command::Allocate { spec: Box::new(spec), permit: None }, &mut sockets) {
            Response::Allocated(Ok(a)) => a,
            other => panic!("{other:?}"),
        };
        let at = |p: u16| SocketAddr::new(hosts.relay, p);
        let mut lab =
            Self { shard, t0, to_phone_leg: at(a.endpoint.rtp), to_pbx_leg: at(a.pbx.rtp), routes: Vec::new() };
        // Both remotes speak (genuine SRTP): latched, forwarded, offered.
        let mut phone = SrtpTx::new(&master(2), 0x22, 1);
        let mut pbx = SrtpTx::new(&master(1), 0x11, 1);
        for _ in 0..2 {
            let v = lab.decide(hosts.phone, lab.to_phone_leg, &phone.next_rtp());
            assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
            let v = lab.decide(hosts.pbx, lab.to_pbx_leg, &pbx.next_rtp());
            assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        }
        while let Some(o) = lab.shard.poll_offload() {
            let Offload::Install(r) = o else { panic!("{o:?}") };
            lab.routes.push(Route {
                local: at(r.local.port),
                from: r.from,
                via: at(r.via.port),
                to: r.to,
                max_pps: 0,
                max_bytes_per_sec: 0,
                slot: 10 + lab.routes.len() as u32,
                next_hop: NextHop::Local,
                carries: Carries { rtp: r.rtp, rtcp: r.rtcp },
            });
        }
        assert_eq!(lab.routes.len(), 2, "both directions offered");
        lab
    }

    /// Userspace's decision on a payload delivered to relay socket `dst`.
    fn decide(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Verdict {
        self.shard.handle_datagram(self.t0 + Duration::from_millis(10), RelayPort::from(dst.port()), src, payload)
    }
}

/// One case's outcome in both paths.
#[derive(Debug)]
struct Outcome {
    case: String,
    kernel: i32,
    user: Option<Verdict>,
}

/// Runs `frame` through both paths and checks they agree.
fn compare(fast: &mut FastPath, hosts: Hosts, keys: bool, case: &str, f: &[u8]) -> Outcome {
    let mut lab = Lab::new(hosts, keys);
    for r in &lab.routes {
        fast.install(r).expect("install");
    }
    fast.keep_alive().expect("alive");
    let before: Vec<u64> = lab.routes.iter().map(|r| fast.stats(r.slot).expect("stats").bytes).collect();
    let kernel = fast.run_on(f).expect("test run");
    let delivered = stack_delivers(f);
    let user = delivered.as_ref().map(|(src, dst, payload)| {
        assert!(*dst == lab.to_phone_leg || *dst == lab.to_pbx_leg, "{case}: a corpus packet for the session");
        lab.decide(*src, *dst, payload)
    });
    if kernel.forwarded() {
        let charged: u64 =
            lab.routes.iter().zip(&before).map(|(r, b)| fast.stats(r.slot).expect("stats").bytes - b).sum();
        let (from, to, ttl, tos, payload) = parse_out(&kernel.frame);
        assert_eq!((ttl, tos), (64, 0), "{case}: the relay's own TTL and TOS");
        match (&delivered, &user) {
            (Some((_, _, sent)), Some(Verdict::Forward { via, to: user_to, .. })) => {
                let via = SocketAddr::new(hosts.relay, via.port);
                assert_eq!((from, to), (via, *user_to), "{case}: where userspace sends it");
                assert_eq!(&payload, sent, "{case}: the payload userspace would send");
                assert_eq!(charged, sent.len() as u64, "{case}: charged what userspace charges");
            }
            // The one documented exception: a bad UDP checksum the kernel
            // does not verify stays bad, the receiver drops it.
            (None, None) if case.contains("bad UDP checksum") => {
                assert!(!udp_checksum_verifies(&kernel.frame), "{case}: the checksum stays bad");
            }
            _ => panic!("{case}: the kernel forwarded what userspace does not ({user:?}, delivered {delivered:?})"),
        }
    } else {
        assert_eq!(kernel.action, FrameVerdict::PASS_UP, "{case}: only forwarded or passed up here");
        assert_eq!(kernel.frame, f, "{case}: passed up unchanged");
    }
    Outcome { case: case.to_string(), kernel: kernel.action, user }
}

/// RTP and RTCP as the endpoints send them.
fn rtp(len: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 9, 0, 0, 0, 160, 0, 0, 0x22, 0x22];
    p.resize(len, 0xd5);
    p
}

fn rtcp() -> Vec<u8> {
    let mut p = vec![0x80, 200, 0, 6, 0, 0, 0x22, 0x22];
    p.resize(28, 1);
    p
}

/// Frame-level cases: (name, family, keyed session, sender, to the phone's
/// leg, payload, tweak).
#[allow(clippy::type_complexity)]
fn frame_cases() -> Vec<(String, Hosts, bool, fn(Hosts) -> SocketAddr, Vec<u8>, Tweak)> {
    let phone: fn(Hosts) -> SocketAddr = |h| h.phone;
    let stranger: fn(Hosts) -> SocketAddr = |h| h.stranger;
    let mut out = Vec::new();
    for (fam, hosts) in [("IPv4", V4), ("IPv6", V6)] {
        let mut add = |name: &str, keys: bool, who: fn(Hosts) -> SocketAddr, payload: Vec<u8>, t: Tweak| {
            out.push((format!("{fam} {name}"), hosts, keys, who, payload, t));
        };
        add("RTP", false, phone, rtp(172), Tweak::default());
        add("RTP, keyed session", true, phone, rtp(172), Tweak::default());
        add("RTCP (muxed)", false, phone, rtcp(), Tweak::default());
        add("RTCP on a keyed leg (stays in userspace)", true, phone, rtcp(), Tweak::default());
        add("a 1-byte 0x80", false, phone, vec![0x80], Tweak::default());
        add("6 bytes \\x80\\x00GET /", false, phone, b"\x80\x00GET /".to_vec(), Tweak::default());
        add(
            "RTP with 15 CSRCs announced, none present",
            false,
            phone,
            {
                let mut p = rtp(40);
                p[0] = 0x8f;
                p
            },
            Tweak::default(),
        );
        add(
            "RTCP whose length runs past the datagram",
            false,
            phone,
            {
                let mut p = rtcp();
                p[3] = 40;
                p
            },
            Tweak::default(),
        );
        add("UDP length 13 on 1000 bytes", false, phone, rtp(992), Tweak { udp_len: Some(13), ..Tweak::default() });
        add(
            "UDP length longer than the datagram",
            false,
            phone,
            rtp(172),
            Tweak { udp_len: Some(400), ..Tweak::default() },
        );
        add("IP length shorter than the frame", false, phone, rtp(172), Tweak { ip_len: Some(60), ..Tweak::default() });
        add("trailing bytes (Ethernet padding)", false, phone, rtp(12), Tweak { trailer: 6, ..Tweak::default() });
        add(
            "a sender's TTL 2 and TOS EF",
            false,
            phone,
            rtp(172),
            Tweak { ttl: Some(2), tos: Some(0xb8), ..Tweak::default() },
        );
        add("bad UDP checksum", false, phone, rtp(172), Tweak { bad_udp_checksum: true, ..Tweak::default() });
        add("TCP, not UDP", false, phone, rtp(172), Tweak { protocol: Some(6), ..Tweak::default() });
        add("a stranger's RTP", false, stranger, rtp(172), Tweak::default());
        add("a stranger's RTP at a keyed leg", true, stranger, rtp(172), Tweak::default());
        if fam == "IPv4" {
            add("IP options", false, phone, rtp(172), Tweak { options: true, ..Tweak::default() });
            add(
                "a first fragment (more fragments)",
                false,
                phone,
                rtp(172),
                Tweak { frag: Some(0x2000), ..Tweak::default() },
            );
            add("a later fragment (offset)", false, phone, rtp(172), Tweak { frag: Some(0x0010), ..Tweak::default() });
            add(
                "bad IPv4 header checksum",
                false,
                phone,
                rtp(172),
                Tweak { bad_ip_checksum: true, ..Tweak::default() },
            );
        }
    }
    out
}

/// Payload cases: the committed differential corpus and the fuzz corpus'
/// wire seeds, each sent by the latched phone over IPv4 and IPv6, to a
/// window and to a keyed session.
fn payload_cases() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in [
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/datapath_corpus"),
        concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/wire"),
    ] {
        let mut files: Vec<_> = std::fs::read_dir(dir).expect(dir).flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let name = f.file_name().expect("name").to_string_lossy().to_string();
            out.push((name, std::fs::read(&f).expect("read")));
        }
    }
    out
}

#[test]
fn the_kernel_forwards_only_what_userspace_forwards_the_same_way() {
    let mut fast = FastPath::load(&[]).expect("loading the tc program (as root; CI runs as root)");
    let mut outcomes = Vec::new();
    for (name, hosts, keys, who, payload, t) in frame_cases() {
        let lab = Lab::new(hosts, keys);
        let f = frame(who(hosts), lab.to_phone_leg, &payload, &t);
        outcomes.push(compare(&mut fast, hosts, keys, &name, &f));
    }
    for (name, payload) in payload_cases() {
        for (fam, hosts) in [("IPv4", V4), ("IPv6", V6)] {
            for keys in [false, true] {
                let lab = Lab::new(hosts, keys);
                let f = frame(hosts.phone, lab.to_phone_leg, &payload, &Tweak::default());
                let case = format!("{fam} corpus {name}{}", if keys { ", keyed" } else { "" });
                outcomes.push(compare(&mut fast, hosts, keys, &case, &f));
            }
        }
    }
    for o in &outcomes {
        eprintln!("{:<70} kernel {:>2}  userspace {:?}", o.case, o.kernel, o.user);
    }
    // The kernel did forward what it should (the test is not vacuous)...
    let forwarded: Vec<&str> =
        outcomes.iter().filter(|o| o.kernel != FrameVerdict::PASS_UP).map(|o| o.case.as_str()).collect();
    for must in
        ["IPv4 RTP", "IPv6 RTP", "IPv4 RTCP (muxed)", "IPv4 RTP, keyed session", "IPv4 a sender's TTL 2 and TOS EF"]
    {
        assert!(forwarded.contains(&must), "{must} was not forwarded in the kernel: {forwarded:?}");
    }
    // ...and the attacks of the review went up, where userspace drops them.
    for (case, reason) in [
        ("IPv4 a 1-byte 0x80", relay_core::DropReason::NotMedia),
        ("IPv4 6 bytes \\x80\\x00GET /", relay_core::DropReason::NotMedia),
        ("IPv4 UDP length 13 on 1000 bytes", relay_core::DropReason::NotMedia),
    ] {
        let o = outcomes.iter().find(|o| o.case == case).expect(case);
        assert_eq!((o.kernel, &o.user), (FrameVerdict::PASS_UP, &Some(Verdict::Drop(reason))), "{case}");
    }
}
