//! Stateful target: arbitrary sequences of commands, datagrams from a set of
//! sources (good and bad), and time jumps, driving one shard. Invariants: no
//! panic, a forward always leaves through a port of the *other* leg of the
//! same session, drops of unknown ports are `no_session`, and
//! `received = forwarded + dropped`.
#![no_main]
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay_core::shard::{Command, Response, Shard, ShardConfig, Verdict};
use relay_core::{
    DropReason, LatchPolicy, LegSpec, PeerPolicy, SessionDefaults, SessionId, SessionSpec, Side, SrtpAuth,
};
use test_support::sockets::FakeSockets;

const BASE: u16 = 50000;
const PORTS: usize = 16;
const SOURCES: [&str; 8] = [
    "198.51.100.1:4000",
    "198.51.100.1:4001",
    "203.0.113.9:6000",
    "192.0.2.66:666",
    "[2001:db8::5]:7000",
    "[::ffff:198.51.100.1]:4000",
    "169.254.169.254:80",
    "127.0.0.1:9",
];

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let srcs: Vec<SocketAddr> = SOURCES.iter().map(|s| s.parse().unwrap()).collect();
    let mut shard = Shard::new(
        ShardConfig {
            index: 0,
            addresses: vec![relay_core::shard::AddressSlice::new([127, 0, 0, 1].into(), BASE, PORTS)],
            defaults: SessionDefaults::default(),
            peer_policy: PeerPolicy::default(),
            seed: 1,
            bind_quarantine: Duration::from_secs(5),
            offload: true,
            journal: true,
            id_space: 1,
        },
        t0,
    );
    let mut sockets = FakeSockets::default();
    let mut owner: HashMap<u16, (SessionId, Side)> = HashMap::new();
    let mut ports: HashMap<(SessionId, Side), Vec<u16>> = HashMap::new();
    let mut live: Vec<SessionId> = Vec::new();
    let auth = SrtpAuth::sha1_80(&relay_core::srtp_keys::derive_auth_keys(
        &relay_core::srtp_keys::SrtpMasterKey::new(&[1; 16], &[2; 14]).unwrap(),
    ));
    let mut i = 0;
    while i < data.len() {
        let op = data[i];
        i += 1;
        match op % 5 {
            0 => {
                let flags = data.get(i).copied().unwrap_or(0);
                i += 1;
                let latch =
                    [LatchPolicy::Window, LatchPolicy::Authenticated, LatchPolicy::Open][usize::from(flags >> 2) % 3];
                let spec = SessionSpec {
                    tenant: "t".into(),
                    pbx: LegSpec {
                        rtcp_mux: flags & 1 != 0,
                        hint: Some(srcs[usize::from(flags >> 5)]),
                        srtp_auth: Some(auth.clone()),
                        ..LegSpec::default()
                    },
                    endpoint: LegSpec {
                        rtcp_mux: flags & 2 != 0,
                        stun_password: Some(b"pw".to_vec()),
                        ..LegSpec::default()
                    },
                    latch: Some(latch),
                    // Quality figures (and plain RTCP report blocks) on some.
                    quality: Some(flags & 0x10 != 0),
                    ..SessionSpec::default()
                };
                if let Response::Allocated(Ok(a)) =
                    shard.handle_command(now, Command::Allocate { spec: Box::new(spec), permit: None }, &mut sockets)
                {
                    for (side, lp) in [(Side::Pbx, a.pbx), (Side::Endpoint, a.endpoint)] {
                        let ps: Vec<u16> = std::iter::once(lp.rtp).chain(lp.rtcp).collect();
                        for p in &ps {
                            assert!(owner.insert(*p, (a.id, side)).is_none());
                        }
                        ports.insert((a.id, side), ps);
                    }
                    live.push(a.id);
                }
            }
            1 if !live.is_empty() => {
                let k = usize::from(data.get(i).copied().unwrap_or(0)) % live.len();
                i += 1;
                let id = live.remove(k);
                assert!(matches!(
                    shard.handle_command(now, Command::Release { id }, &mut sockets),
                    Response::Released(Ok(_))
                ));
                forget(&mut owner, &mut ports, id);
            }
            2 => {
                let (p, s, len) = (
                    data.get(i).copied().unwrap_or(0),
                    data.get(i + 1).copied().unwrap_or(0),
                    data.get(i + 2).copied().unwrap_or(0),
                );
                i = (i + 3).min(data.len());
                let end = (i + usize::from(len % 64)).min(data.len());
                let payload = &data[i..end];
                i = end;
                let port = BASE + u16::from(p) % (PORTS as u16 + 2);
                match shard.handle_datagram(now, port, srcs[usize::from(s) % srcs.len()], payload) {
                    Verdict::Forward { via, .. } => {
                        let via_port = via.port;
                        let (id, side) = owner[&port];
                        assert!(ports[&(id, side.other())].contains(&via_port), "forwarded outside the session");
                    }
                    Verdict::Drop(DropReason::NoSession) => assert!(!owner.contains_key(&port)),
                    Verdict::Drop(_) => assert!(owner.contains_key(&port)),
                }
            }
            3 => {
                let ms = u64::from(u16::from_be_bytes([
                    data.get(i).copied().unwrap_or(0),
                    data.get(i + 1).copied().unwrap_or(0),
                ]));
                i += 2;
                now += Duration::from_millis(ms * 8);
                shard.handle_timeout(now, &mut sockets);
                let alive: BTreeSet<SessionId> = shard.session_ids().into_iter().collect();
                for id in live.clone() {
                    if !alive.contains(&id) {
                        live.retain(|x| *x != id);
                        forget(&mut owner, &mut ports, id);
                    }
                }
            }
            _ => {}
        }
        let c = shard.counters();
        assert_eq!(c.packets_received, c.packets_forwarded + c.drops.total());
        assert_eq!(sockets.open.len(), owner.len());
    }
    shard.release_all(&mut sockets);
    assert!(sockets.open.is_empty());
});

fn forget(
    owner: &mut HashMap<u16, (SessionId, Side)>,
    ports: &mut HashMap<(SessionId, Side), Vec<u16>>,
    id: SessionId,
) {
    for side in [Side::Pbx, Side::Endpoint] {
        for p in ports.remove(&(id, side)).unwrap_or_default() {
            owner.remove(&p);
        }
    }
}
