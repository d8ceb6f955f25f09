//! Property test: random sequences of commands, datagrams (random bytes and
//! well-formed SRTP/STUN-looking packets) from random sources, and time
//! jumps. The shard must never panic, never forward a datagram anywhere but
//! the peer leg of its own session, and its counters must add up; whatever
//! happened, its sessions' exported states resume on a fresh shard exactly.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use relay_core::peer::PeerPolicy;
use relay_core::session::SessionId;
use relay_core::shard::{Command, Framing, Response, Shard, ShardConfig, Verdict};
use relay_core::DropReason;
use relay_core::{LatchPolicy, LegSpec, LegUpdate, SessionDefaults, SessionSpec, SessionUpdate, Side, Verify};
use test_support::keys::*;
use test_support::packets::*;
use test_support::sa;
use test_support::sockets::*;
use test_support::srtp::*;
use test_support::stun::*;

const BASE: u16 = 50000;
const PORTS: usize = 24;

#[derive(Debug, Clone)]
enum Op {
    Allocate { pbx_mux: bool, ep_mux: bool, policy: u8, hint: Option<usize>, verify_all: bool },
    Release(usize),
    Update(usize, Option<usize>),
    Datagram { port: usize, src: usize, payload: Payload },
    Advance(u64),
}

#[derive(Debug, Clone)]
enum Payload {
    Random(Vec<u8>),
    Srtp { key: u8, ssrc: u32, seq: u16 },
    Stun { good: bool, id: u8 },
}

fn sources() -> Vec<SocketAddr> {
    [
        "198.51.100.1:4000",
        "198.51.100.1:4001",
        "198.51.100.1:5000",
        "203.0.113.9:6000",
        "203.0.113.9:6001",
        "192.0.2.66:666",
        "[2001:db8:1::5]:7000",
        "[::ffff:198.51.100.1]:4000",
        "127.0.0.1:9",
        "224.0.0.9:9",
        "169.254.169.254:80",
        "10.0.0.1:1234",
    ]
    .iter()
    .map(|s| sa(s))
    .collect()
}

fn op() -> impl Strategy<Value = Op> {
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80).prop_map(Payload::Random),
        (0u8..3, 0u32..3, any::<u16>()).prop_map(|(key, ssrc, seq)| Payload::Srtp { key, ssrc, seq }),
        (any::<bool>(), 0u8..4).prop_map(|(good, id)| Payload::Stun { good, id }),
    ];
    prop_oneof![
        2 => (any::<bool>(), any::<bool>(), 0u8..3, prop::option::of(0usize..12), any::<bool>())
            .prop_map(|(pbx_mux, ep_mux, policy, hint, verify_all)| Op::Allocate { pbx_mux, ep_mux, policy, hint, verify_all }),
        1 => (0usize..8).prop_map(Op::Release),
        1 => ((0usize..8), prop::option::of(0usize..12)).prop_map(|(i, h)| Op::Update(i, h)),
        10 => ((0usize..PORTS + 2), (0usize..12), payload).prop_map(|(port, src, payload)| Op::Datagram { port, src, payload }),
        2 => (0u64..20_000).prop_map(Op::Advance),
    ]
}

struct Model {
    /// port -> (session, side)
    owner: HashMap<u16, (SessionId, Side)>,
    /// (session, side) -> its ports
    ports: HashMap<(SessionId, Side), Vec<u16>>,
    /// (session, side) -> sources that sent to that side, and hints (+1 for RTCP)
    senders: HashMap<(SessionId, Side), HashSet<SocketAddr>>,
    live: Vec<SessionId>,
}

fn payload_bytes(p: &Payload) -> Vec<u8> {
    match p {
        Payload::Random(v) => v.clone(),
        Payload::Srtp { key, ssrc, seq } => {
            let mut tx = SrtpTx::new(&master(*key), *ssrc, *seq);
            tx.next_rtp()
        }
        Payload::Stun { good, id } => stun_request(if *good { b"pw" } else { b"bad" }, [*id; 12]),
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let mut now = t0;
    let srcs = sources();
    let config = || ShardConfig {
        index: 1,
        addresses: vec![relay_core::shard::AddressSlice::new([127, 0, 0, 1].into(), BASE, PORTS)],
        defaults: SessionDefaults { idle_timeout: Duration::from_secs(30), ..SessionDefaults::default() },
        peer_policy: PeerPolicy::default(),
        seed: 7,
        bind_quarantine: Duration::from_secs(5),
        offload: true,
        journal: true,
        id_space: 1,
    };
    let mut shard = Shard::new(config(), t0);
    let mut sockets = FakeSockets::default();
    let mut m = Model { owner: HashMap::new(), ports: HashMap::new(), senders: HashMap::new(), live: vec![] };

    for op in ops {
        match op {
            Op::Allocate { pbx_mux, ep_mux, policy, hint, verify_all } => {
                let latch = [LatchPolicy::Window, LatchPolicy::Authenticated, LatchPolicy::Open][policy as usize];
                let spec = SessionSpec {
                    tenant: "t".into(),
                    pbx: LegSpec {
                        rtcp_mux: pbx_mux,
                        hint: hint.map(|h| srcs[h]),
                        srtp_auth: Some(auth_for(&master(0))),
                        ..LegSpec::default()
                    },
                    endpoint: LegSpec {
                        rtcp_mux: ep_mux,
                        srtp_auth: Some(auth_for(&master(1))),
                        stun_password: Some(b"pw".to_vec()),
                        ..LegSpec::default()
                    },
                    latch: Some(latch),
                    verify: Some(if verify_all { Verify::All } else { Verify::Latch }),
                    ..SessionSpec::default()
                };
                let hint_addr = spec.pbx.hint;
                if let Response::Allocated(Ok(a)) =
                    shard.handle_command(now, Command::Allocate { spec: Box::new(spec), permit: None }, &mut sockets)
                {
                    for (side, lp) in [(Side::Pbx, a.pbx), (Side::Endpoint, a.endpoint)] {
                        let ports: Vec<u16> = std::iter::once(lp.rtp).chain(lp.rtcp).collect();
                        for p in &ports {
                            prop_assert!(m.owner.insert(*p, (a.id, side)).is_none(), "port {} given twice", p);
                        }
                        m.ports.insert((a.id, side), ports);
                        m.senders.insert((a.id, side), HashSet::new());
                    }
                    if let Some(h) = hint_addr {
                        let set = m.senders.get_mut(&(a.id, Side::Pbx)).expect("leg");
                        let h = relay_core::peer::canonical(h);
                        set.insert(h);
                        let mut h1 = h;
                        h1.set_port(h.port().wrapping_add(1));
                        set.insert(h1);
                    }
                    m.live.push(a.id);
                }
            }
            Op::Release(i) | Op::Update(i, _) if m.live.is_empty() => {
                let _ = i;
            }
            Op::Release(i) => {
                let id = m.live.remove(i % m.live.len());
                let r = shard.handle_command(now, Command::Release { id }, &mut sockets);
                prop_assert!(matches!(r, Response::Released(Ok(_))));
                forget(&mut m, id);
            }
            Op::Update(i, hint) => {
                let id = m.live[i % m.live.len()];
                let update = SessionUpdate {
                    pbx: LegUpdate { hint: hint.map(|h| srcs[h]), ..LegUpdate::default() },
                    ..SessionUpdate::default()
                };
                if let Response::Updated(Ok(())) =
                    shard.handle_command(now, Command::Update { id, update: Box::new(update) }, &mut sockets)
                {
                    if let Some(h) = hint.map(|h| relay_core::peer::canonical(srcs[h])) {
                        let set = m.senders.get_mut(&(id, Side::Pbx)).expect("leg");
                        set.insert(h);
                        let mut h1 = h;
                        h1.set_port(h.port().wrapping_add(1));
                        set.insert(h1);
                    }
                }
            }
            Op::Datagram { port, src, payload } => {
                let port = BASE - 1 + port as u16;
                let src = srcs[src];
                let bytes = payload_bytes(&payload);
                if let Some(&(id, side)) = m.owner.get(&port) {
                    // A latched RTP source also stands for its RTCP (port + 1)
                    // until the RTCP port latches on its own.
                    let c = relay_core::peer::canonical(src);
                    let mut c1 = c;
                    c1.set_port(c.port().wrapping_add(1));
                    let set = m.senders.get_mut(&(id, side)).expect("leg");
                    set.insert(c);
                    set.insert(c1);
                }
                match shard.handle_datagram(now, port, src, &bytes) {
                    Verdict::Forward { via, to, framing } => {
                        prop_assert_eq!(framing, Framing::Unchanged, "media leaves as it came");
                        let via_port = via.port;
                        let (id, side) = *m
                            .owner
                            .get(&port)
                            .ok_or_else(|| TestCaseError::fail("forwarded from a port without session"))?;
                        let peer = (id, side.other());
                        prop_assert!(m.ports[&peer].contains(&via_port), "via {} is not the peer leg's port", via_port);
                        prop_assert!(
                            m.senders[&peer].contains(&to),
                            "{} never sent to the peer leg nor was hinted",
                            to
                        );
                    }
                    Verdict::Drop(DropReason::NoSession) => prop_assert!(!m.owner.contains_key(&port)),
                    Verdict::Drop(_) => prop_assert!(m.owner.contains_key(&port)),
                }
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(ms);
                shard.handle_timeout(now, &mut sockets);
                let alive: HashSet<SessionId> = shard.session_ids().into_iter().collect();
                for id in m.live.clone() {
                    if !alive.contains(&id) {
                        m.live.retain(|x| *x != id);
                        forget(&mut m, id);
                    }
                }
            }
        }
        let c = shard.counters();
        prop_assert_eq!(c.packets_received, c.packets_forwarded + c.drops.total());
        prop_assert_eq!(c.sessions_active as usize, m.live.len());
        prop_assert_eq!(sockets.open.len(), m.owner.len());
    }
    // Replication: whatever happened, every session's exported state
    // resumes on a fresh shard of the same layout, and exports the same.
    let exported = match shard.handle_command(now, Command::Export { after: None, limit: usize::MAX }, &mut sockets) {
        Response::Exported(v) => v,
        other => return Err(TestCaseError::fail(format!("{other:?}"))),
    };
    prop_assert_eq!(exported.len(), m.live.len());
    let mut standby = Shard::new(config(), now);
    let mut standby_sockets = FakeSockets::default();
    for state in &exported {
        let r = standby.handle_command(
            now,
            Command::Restore { state: Box::new(state.clone()), permit: None },
            &mut standby_sockets,
        );
        prop_assert!(matches!(r, Response::Restored(Ok(_))), "{:?}", r);
    }
    prop_assert_eq!(&standby_sockets.open, &sockets.open);
    match standby.handle_command(now, Command::Export { after: None, limit: usize::MAX }, &mut standby_sockets) {
        Response::Exported(v) => prop_assert_eq!(v, exported),
        other => return Err(TestCaseError::fail(format!("{other:?}"))),
    }
    shard.release_all(&mut sockets);
    prop_assert!(sockets.open.is_empty());
    prop_assert_eq!(shard.free_ports(), PORTS);
    Ok(())
}

fn forget(m: &mut Model, id: SessionId) {
    for side in [Side::Pbx, Side::Endpoint] {
        for p in m.ports.remove(&(id, side)).unwrap_or_default() {
            m.owner.remove(&p);
        }
        m.senders.remove(&(id, side));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn shard_never_leaks_across_sessions_and_counts_everything(ops in prop::collection::vec(op(), 1..150)) {
        run(ops)?;
    }
}
