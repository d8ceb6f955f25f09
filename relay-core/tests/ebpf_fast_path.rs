//! The kernel fast path's program and loader, for real: the test re-runs
//! itself in a private network namespace (`unshare --net`, as root; nothing
//! touches the host's interfaces), attaches the tc program to that
//! namespace's loopback, installs routes and sends real datagrams:
//! forwarded bytes arrive unchanged from the relay's socket address;
//! strangers, STUN and over-rate packets go up to the relay's socket
//! instead; counters equal what was forwarded; a removed route — or a
//! dropped `FastPath` — forwards nothing any more.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::Duration;

use relay_core::io::ebpf::{FastPath, NextHop, Route};

const TEST: &str = "the_tc_program_forwards_latched_media_and_passes_everything_else_up";
const CHILD: &str = "UCMRC_EBPF_NETNS_CHILD";

#[test]
fn the_tc_program_forwards_latched_media_and_passes_everything_else_up() {
    if std::env::var_os(CHILD).is_some() {
        return in_namespace();
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg(exe)
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("unshare (util-linux) runs the test in a new network namespace; CI runs as root");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "namespace run failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("EBPF-NETNS-OK"), "the scenario did not run:\n{stdout}\n{stderr}");
}

fn v4(s: &UdpSocket) -> SocketAddrV4 {
    match s.local_addr().expect("addr") {
        SocketAddr::V4(a) => a,
        other => panic!("not IPv4: {other}"),
    }
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
    // rest goes up to userspace (whose own bucket decides).
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
    assert_eq!((forwarded, up), (5, 15), "5 pps with a one-second burst");
    assert_eq!(fast.stats(3).expect("stats").passed_over_rate, 15);

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
