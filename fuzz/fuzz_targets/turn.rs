//! Stateful target: the TURN server's allocation state machine driven by
//! arbitrary sequences of signed requests (built from the input, so the
//! fuzzer gets past authentication), raw client bytes, peer datagrams,
//! relayed ports opening or failing, and time jumps; and TCP allocations
//! (RFC 6062): Connect and ConnectionBind, peers dialling in, dials
//! succeeding or failing, connections closing. Invariants: no panic;
//! data is relayed only from an opened allocation of the sending client,
//! to a peer the policy allows, as a range inside the input; peer data only
//! reaches the allocation's own client; allocations never outnumber the
//! ports; a relayed port is closed only once, after it was opened; a dial
//! goes from an opened TCP allocation's relayed address to a peer the
//! policy allows; a data connection joins only a connection that exists;
//! every connection belongs to an allocation, within its cap. The node
//! steps down (its allocations exported, then forgotten) and takes them
//! back later, while their ports open or fail; at the end every socket is
//! closed and every port of both families comes back to the pool. With
//! offloading on: a channel is announced to the kernel only for an opened
//! UDP allocation, live and bound to that peer with a live permission, its
//! deadline never past the channel's, the permission's or the
//! allocation's; the budget goes with the first announcement only (again
//! only after the driver refused it, or after every route of the
//! allocation was withdrawn); nothing stays in the kernel for an
//! allocation that is gone.
#![no_main]
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay_core::peer::{OwnAddresses, OwnEndpoint, PeerPolicy};
use relay_core::turn::allocation::IntegrityKey;
use relay_core::turn::auth::{long_term_key_md5, NonceKey, RestSecrets};
use relay_core::turn::offload::OffloadCounts;
use relay_core::turn::proto::*;
use relay_core::turn::replica::AllocationState;
use relay_core::turn::server::{PORT_RETRY_DELAY, PORT_REUSE_DELAY};
use relay_core::turn::*;
use relay_core::wire::stun::{StunClass, ATTR_USERNAME};
use relay_core::wire::stun_writer::StunWriter;

const UNIX: u64 = 1_800_000_000;
const CLIENTS: [&str; 4] = ["198.51.100.1:5000", "198.51.100.1:5001", "[2001:db8::1]:5000", "203.0.113.7:9"];
/// Stream clients (control and data connections of TCP allocations).
const STREAM_CLIENTS: [&str; 3] = ["198.51.100.1:6000", "198.51.100.1:6001", "198.51.100.1:6002"];
const PEERS: [&str; 8] = [
    "192.0.2.10:7000",
    "192.0.2.10:7001",
    "203.0.113.10:30001",
    "203.0.113.10:8080",
    "127.0.0.1:22",
    "10.20.0.5:5060",
    "[::ffff:169.254.169.254]:80",
    "[2001:db8::99]:7000",
];

fn server() -> TurnServer {
    let relay_ip: IpAddr = "203.0.113.10".parse().unwrap();
    let relay_ip6: IpAddr = "2001:db8::10".parse().unwrap();
    let own =
        OwnAddresses::new([OwnEndpoint::socket("203.0.113.10:8080".parse().unwrap())], vec![relay_ip, relay_ip6]);
    let settings = TurnSettings {
        realms: vec![Realm {
            name: "r".into(),
            tenant: "t".into(),
            rest: RestSecrets::new(vec![b"secret".to_vec()]),
            users: vec![StaticUser::from_password("alice", "r", "pw")],
            allow_peers: vec![PeerNet::parse("10.20.0.0/16").unwrap()],
        }],
        relay_v4: Some(RelayAddress { bind: relay_ip, advertised: relay_ip }),
        relay_v6: Some(RelayAddress { bind: relay_ip6, advertised: relay_ip6 }),
        first_port: 30000,
        last_port: 30007,
        policy: PeerPolicy::default().with_own(own),
        limits: TurnLimits {
            allocations_per_user: 6,
            permissions_per_allocation: 4,
            channels_per_allocation: 3,
            connections_per_allocation: 3,
            ..TurnLimits::default()
        },
    };
    TurnServer::new(settings, NonceKey::new([7; 32]), None, 1).unwrap()
}

struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.at)?;
        self.at += 1;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let end = (self.at + n).min(self.data.len());
        let s = &self.data[self.at..end];
        self.at = end;
        s
    }
}

fn signed(
    input: &mut Input<'_>,
    client: ClientKey,
    now_unix: u64,
    nonces: &NonceKey,
    connections: &[u32],
) -> Option<Vec<u8>> {
    let method = [
        Method::Allocate,
        Method::Refresh,
        Method::CreatePermission,
        Method::ChannelBind,
        Method::Binding,
        Method::Connect,
        Method::ConnectionBind,
    ][usize::from(input.byte()? % 7)];
    let mut w = StunWriter::new(message_type(method, StunClass::Request), [input.byte()?; 12]);
    if method == Method::ConnectionBind {
        let pick = usize::from(input.byte()?);
        let id = connections.get(pick % connections.len().max(1)).copied().unwrap_or(pick as u32);
        w.attribute(ATTR_CONNECTION_ID, &id.to_be_bytes());
    }
    let flags = input.byte()?;
    if flags & 1 != 0 {
        w.attribute(ATTR_REQUESTED_TRANSPORT, &[if flags & 2 != 0 { TRANSPORT_UDP } else { TRANSPORT_TCP }, 0, 0, 0]);
    }
    if flags & 4 != 0 {
        w.attribute(ATTR_LIFETIME, &u32::from(input.byte()?).saturating_mul(30).to_be_bytes());
    }
    if flags & 8 != 0 {
        let peer: SocketAddr = PEERS[usize::from(input.byte()? % 8)].parse().unwrap();
        w.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
    }
    if flags & 16 != 0 {
        let n = 0x3ff0u16.wrapping_add(u16::from(input.byte()?));
        w.attribute(ATTR_CHANNEL_NUMBER, &[(n >> 8) as u8, n as u8, 0, 0]);
    }
    if flags & 32 != 0 {
        w.attribute(ATTR_EVEN_PORT, &[input.byte()? & 0x80]);
    }
    if flags & 64 != 0 {
        // REQUESTED-ADDRESS-FAMILY, or ADDITIONAL-ADDRESS-FAMILY at RFC
        // 8656's or the draft's code point (dual allocations).
        let b = input.byte()?;
        let kind = [ATTR_REQUESTED_ADDRESS_FAMILY, ATTR_ADDITIONAL_ADDRESS_FAMILY, ATTR_ADDITIONAL_ADDRESS_FAMILY_DRAFT];
        w.attribute(kind[usize::from(b / 3 % 3)], &[b % 3, 0, 0, 0]);
    }
    if flags & 128 != 0 {
        let token = input.bytes(8).to_vec();
        w.attribute(ATTR_RESERVATION_TOKEN, &token);
    }
    let nonce = nonces.issue(client.source.ip(), now_unix, Duration::from_secs(3600));
    w.attribute(ATTR_USERNAME, b"alice").attribute(ATTR_REALM, b"r").attribute(ATTR_NONCE, nonce.as_bytes());
    w.message_integrity(&long_term_key_md5("alice", "r", "pw"));
    w.fingerprint();
    Some(w.finish())
}

/// The allocation `relay` serves: its first relayed socket, or a dual
/// allocation's second.
fn owner(server: &TurnServer, relay: RelayId) -> Option<&relay_core::turn::allocation::Allocation> {
    server.allocations().find(|a| a.relay == relay || a.second.as_ref().is_some_and(|s| s.relay == relay))
}

/// A model of the kernel fast path's driver: which allocations' budgets it
/// holds, and the invariants of what the server announces to it.
#[derive(Default)]
struct Kernel {
    /// Allocations whose budget went to the kernel.
    offloaded: HashSet<RelayId>,
    /// ... and those whose budget the driver gave back (their channels
    /// announced in the same round come without one).
    refused: HashSet<RelayId>,
}

impl Kernel {
    /// Takes one announcement at `now` (when it was made), accepting or
    /// (`ok` false) refusing a budget handed over.
    fn handle(&mut self, server: &mut TurnServer, command: Command, now: Instant, ok: bool) {
        match command {
            Command::OffloadChannel(o) => {
                let alloc = server.allocations().find(|a| a.relay == o.relay).expect("allocation");
                assert!(alloc.opened && !alloc.tcp && alloc.client.transport == Transport::Udp);
                assert_eq!(alloc.client, o.client);
                let ch = alloc.channels(now).find(|c| c.number == o.channel).expect("a live channel");
                assert_eq!(ch.peer, o.peer, "announced for another peer");
                assert_eq!(alloc.relay_for(Family::of(o.peer)), Some(o.socket), "relayed from the wrong socket");
                assert_eq!(Family::of(o.peer), Family::of(o.client.source), "the kernel does not translate families");
                let permission = alloc.permissions(now).find(|p| p.0 == o.peer.ip()).expect("permitted");
                assert!(o.until > now, "announced already expired");
                let expires = alloc.expires_for(Family::of(o.peer));
                assert!(o.until <= ch.expires && o.until <= permission.1 && o.until <= expires);
                if o.budget.is_some() {
                    assert!(!self.offloaded.contains(&o.relay), "the budget moved twice");
                    self.refused.remove(&o.relay);
                    if ok {
                        self.offloaded.insert(o.relay);
                    } else {
                        server.handle_offload_refused(now, o.relay, o.budget);
                        self.refused.insert(o.relay);
                    }
                } else {
                    assert!(
                        self.offloaded.contains(&o.relay) || self.refused.contains(&o.relay),
                        "a first announcement without the budget"
                    );
                }
            }
            Command::EndOffload { relay } => {
                // Its allocation is gone, or (one family of a dual
                // allocation deleted) every route is withdrawn at once, to
                // be announced again with the budget.
                assert!(self.offloaded.remove(&relay), "the end of an allocation never offloaded");
                self.refused.remove(&relay);
            }
            other => panic!("not the kernel's: {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut server = server();
    let nonces = NonceKey::new([7; 32]);
    let t0 = Instant::now();
    let mut elapsed = Duration::ZERO;
    let clients: Vec<ClientKey> = CLIENTS
        .iter()
        .map(|s| ClientKey { transport: Transport::Udp, listener: 0, source: s.parse().unwrap() })
        .chain(STREAM_CLIENTS.iter().map(|s| ClientKey {
            transport: Transport::Tcp,
            listener: 1,
            source: s.parse().unwrap(),
        }))
        .collect();
    let mut bound: HashSet<u32> = HashSet::new();
    let peers: Vec<SocketAddr> = PEERS.iter().map(|s| s.parse().unwrap()).collect();
    let mut opened: HashSet<RelayId> = HashSet::new();
    let mut kernel = Kernel::default();
    let mut pending: std::collections::VecDeque<Command> = Default::default();
    // What the node exported when it stepped down, and when.
    let mut stepped_down: Option<(Vec<AllocationState>, Duration)> = None;
    server.enable_offload(t0);
    let mut input = Input { data, at: 0 };
    while let Some(op) = input.byte() {
        let now = TurnNow { instant: t0 + elapsed, unix_secs: UNIX + elapsed.as_secs() };
        let client = clients[usize::from(op >> 4) % clients.len()];
        let connections: Vec<u32> = server.connections().map(|(id, _)| *id).collect();
        match op % 8 {
            0 | 1 => {
                let message = if op % 8 == 0 {
                    let Some(m) = signed(&mut input, client, now.unix_secs, &nonces, &connections) else { break };
                    m
                } else {
                    let n = usize::from(input.byte().unwrap_or(0));
                    input.bytes(n).to_vec()
                };
                match server.handle_client(now, client, &message) {
                    ClientOutput::Relay { relay, peer, payload } => {
                        assert!(payload.end <= message.len() && payload.start <= payload.end);
                        assert!(opened.contains(&relay), "relayed from a port never opened");
                        let alloc = owner(&server, relay).expect("allocation");
                        assert_eq!(Family::of(peer), relay.family, "relayed from a socket of another family");
                        assert_eq!(alloc.client, client, "relayed for another client's allocation");
                        assert!(!alloc.tcp, "datagrams relayed for a TCP allocation");
                        assert!(server.peer_allowed(alloc.realm, peer), "relayed to a refused peer {peer}");
                    }
                    ClientOutput::Bind { connection, .. } => {
                        assert_ne!(client.transport, Transport::Udp, "a UDP client bound");
                        assert!(connections.contains(&connection), "bound to a connection that does not exist");
                        assert!(!server.has_allocation(client), "a control connection bound as data");
                        assert!(bound.insert(connection), "a connection bound twice");
                    }
                    _ => {}
                }
            }
            2 => {
                let port = 30000 + u16::from(input.byte().unwrap_or(0) % 9);
                let peer = peers[usize::from(op >> 4) % peers.len()];
                let relay = RelayId { family: Family::of(relay_core::peer::canonical(peer)), port };
                let n = usize::from(input.byte().unwrap_or(0));
                let payload = input.bytes(n).to_vec();
                let to = match server.handle_peer(now, relay, peer, &payload) {
                    PeerOutput::Channel { client, .. } | PeerOutput::Indication { client, .. } => Some(client),
                    PeerOutput::Drop(_) => None,
                };
                if let Some(to) = to {
                    let alloc = owner(&server, relay).expect("allocation");
                    assert!(opened.contains(&relay), "relayed from a port never opened");
                    assert_eq!(alloc.client, to, "peer data sent to another client");
                    assert!(alloc.permits(relay_core::peer::canonical(peer).ip(), now.instant));
                }
            }
            3 => {
                elapsed += Duration::from_secs(u64::from(input.byte().unwrap_or(0)) * 7);
                server.handle_timeout(t0 + elapsed);
                // The kernel reports what it relayed for what it holds: counted
                // exactly, and paid from the allocations' budgets.
                let mut relays: Vec<RelayId> = kernel.offloaded.iter().copied().collect();
                relays.sort_by_key(|r| r.port);
                for relay in relays {
                    let bytes = u64::from(input.byte().unwrap_or(0)).pow(4);
                    let before = server.stats().to_client_bytes;
                    let counts = OffloadCounts { to_client_packets: 1, to_client_bytes: bytes, ..Default::default() };
                    server.handle_offload_counts(t0 + elapsed, relay, counts);
                    assert_eq!(server.stats().to_client_bytes, before + bytes);
                }
            }
            5 => {
                // The node steps down (a partition), or takes back what it
                // held (the ports may still be closing: refused, or tried
                // again until they open).
                match stepped_down.take() {
                    None => {
                        stepped_down = Some((server.export(now.instant), elapsed));
                        server.forget_all(now.instant);
                    }
                    Some((states, at)) => {
                        for state in states {
                            let _ = server.restore(now.instant, state.aged(elapsed - at));
                        }
                    }
                }
            }
            6 => {
                // A peer dials a relayed TCP address.
                let port = 30000 + u16::from(input.byte().unwrap_or(0) % 9);
                let peer = peers[usize::from(op >> 4) % peers.len()];
                let relay = RelayId { family: Family::V4, port };
                if let Some(id) = server.handle_peer_connection(now, relay, peer) {
                    let alloc = server.allocations().find(|a| a.relay == relay).expect("allocation");
                    assert!(alloc.tcp && alloc.opened, "a peer connection kept for a port that does not listen");
                    assert!(alloc.permits(relay_core::peer::canonical(peer).ip(), now.instant));
                    assert!(!connections.contains(&id), "a connection id reused");
                }
            }
            7 => {
                // A connection closes (either side), or a data connection.
                if let Some(id) = connections.get(usize::from(input.byte().unwrap_or(0)) % connections.len().max(1)) {
                    server.handle_connection_closed(*id);
                }
                server.handle_client_closed(now.instant, client);
            }
            _ => {
                let ok = op & 0x10 == 0;
                while let Some(c) = pending.pop_front().or_else(|| server.poll_command()) {
                    match c {
                        Command::OpenRelay { relay, bind } => {
                            assert!((30000..=30007).contains(&bind.port()) && bind.port() == relay.port);
                            assert!(!opened.contains(&relay), "a port opened twice");
                            if ok {
                                opened.insert(relay);
                            }
                            server.handle_relay_opened(now, relay, ok);
                        }
                        Command::ListenRelay { relay, bind } => {
                            assert!((30000..=30007).contains(&bind.port()) && bind.port() == relay.port);
                            assert!(!opened.contains(&relay), "a port opened twice");
                            if ok {
                                opened.insert(relay);
                            }
                            server.handle_relay_opened(now, relay, ok);
                        }
                        Command::Dial { connection, bind, peer } => {
                            // (A connection whose allocation went meanwhile is
                            // gone: its dial's outcome is then closed.)
                            if let Some((_, c)) = server.connections().find(|(id, _)| **id == connection) {
                                let alloc = server.allocations().find(|a| a.relay == c.relay).expect("allocation");
                                assert!(
                                    alloc.tcp && opened.contains(&alloc.relay),
                                    "dialled from a port not listening"
                                );
                                assert_eq!(bind.port(), alloc.relay.port, "dialled from another address");
                                assert!(server.peer_allowed(alloc.realm, peer), "dialled a refused peer {peer}");
                            }
                            server.handle_dialed(now, connection, ok);
                        }
                        Command::CloseConnection { .. } => {}
                        Command::CloseRelay { relay } => {
                            assert!(opened.remove(&relay), "closed a port not open");
                        }
                        Command::Send { .. } => {}
                        offload @ (Command::OffloadChannel(_) | Command::EndOffload { .. }) => {
                            kernel.handle(&mut server, offload, now.instant, ok)
                        }
                    }
                }
            }
        }
        // The driver takes the kernel's share at once (the other commands
        // wait for an op that carries them out: a port opens later).
        while let Some(c) = server.poll_command() {
            match c {
                offload @ (Command::OffloadChannel(_) | Command::EndOffload { .. }) => {
                    kernel.handle(&mut server, offload, now.instant, op & 0x20 == 0)
                }
                other => pending.push_back(other),
            }
        }
        // Nothing stays in the kernel for an allocation that is gone (nor
        // under a key it no longer has).
        for relay in &kernel.offloaded {
            assert!(
                server.allocations().any(|a| a.relay == *relay && a.offloaded),
                "kernel state outlives its allocation"
            );
        }
        // Eight ports of each family.
        assert!(server.allocations().count() <= 16, "more allocations than ports");
        for (_, c) in server.connections() {
            let alloc = server.allocations().find(|a| a.relay == c.relay).expect("a connection without allocation");
            assert!(alloc.tcp && alloc.connections <= 3, "over the cap or on a UDP allocation");
        }
        let live: HashSet<u32> = server.connections().map(|(id, _)| *id).collect();
        bound.retain(|id| live.contains(id));
    }
    every_port_comes_back(&mut server, t0, elapsed, pending, opened);
});

/// The node steps down; the driver carries out what it was told (the
/// openings under way fail: the old node holds the ports); once the
/// longest wait has passed no socket is left open and every port of both
/// families can be taken over.
fn every_port_comes_back(
    server: &mut TurnServer,
    t0: Instant,
    mut elapsed: Duration,
    mut pending: std::collections::VecDeque<Command>,
    mut opened: HashSet<RelayId>,
) {
    server.forget_all(t0 + elapsed);
    for _ in 0..4 {
        let now = TurnNow { instant: t0 + elapsed, unix_secs: UNIX + elapsed.as_secs() };
        while let Some(c) = pending.pop_front().or_else(|| server.poll_command()) {
            match c {
                Command::OpenRelay { relay, .. } | Command::ListenRelay { relay, .. } => {
                    server.handle_relay_opened(now, relay, false)
                }
                Command::CloseRelay { relay } => assert!(opened.remove(&relay), "closed a port not open"),
                _ => {}
            }
        }
        elapsed += PORT_RETRY_DELAY + PORT_REUSE_DELAY;
        server.handle_timeout(t0 + elapsed);
    }
    assert_eq!(server.allocations().count(), 0);
    assert!(opened.is_empty(), "sockets left open: {opened:?}");
    let now = t0 + elapsed;
    for (i, port) in (30000..=30007u16).enumerate() {
        for family in [Family::V4, Family::V6] {
            let relay = RelayId { family, port };
            let ip: IpAddr = if family == Family::V4 { "203.0.113.10" } else { "2001:db8::10" }.parse().unwrap();
            let source = SocketAddr::new("192.0.2.200".parse().unwrap(), 1000 + i as u16 * 2 + family.code() as u16);
            let probe = AllocationState {
                client: ClientKey { transport: Transport::Udp, listener: 0, source },
                relay,
                relayed: SocketAddr::new(ip, port),
                second: None,
                realm: "r".into(),
                tenant: "t".into(),
                username: "alice".into(),
                key: IntegrityKey::Sha1([0; 16]),
                allocate_txid: [0; 12],
                lifetime: Duration::from_secs(600),
                permissions: vec![],
                channels: vec![],
            };
            assert_eq!(server.restore(now, probe), Ok(()), "port {relay:?} never came back");
        }
    }
}
