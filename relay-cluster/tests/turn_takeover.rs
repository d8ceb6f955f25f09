//! TURN allocations through a takeover, against a real `redis-server`: a
//! UDP client allocates on the active node's TURN server (REST
//! credentials, a permission and a channel to a real UDP peer), the
//! standby serves no TURN but keeps a warm copy, the active dies, and the
//! standby takes the allocation over on the same relayed address: the
//! peer keeps sending to the address it knows and the client's channel,
//! nonce and key keep working against the new node.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use relay_cluster::{Cluster, Role};
use relay_core::peer::PeerPolicy;
use relay_core::turn::auth::{NonceKey, RestSecrets};
use relay_core::turn::proto::*;
use relay_core::turn::service::{StreamLimits, TurnService};
use relay_core::turn::*;
use test_support::cluster::*;
use test_support::poll::until;
use test_support::redis_server::RedisServer;
use test_support::turn_client::Client;

const REALM: &str = "turn.test";
const SECRET: &[u8] = b"cluster-turn-secret-0001";
/// Relayed ports (both nodes: the standby binds none until it takes over).
const FIRST_PORT: u16 = 21800;

/// A node's TURN server: the same settings and nonce key on every node (a
/// cluster derives the key from its cluster key).
fn turn_service() -> TurnService {
    let ip: IpAddr = "127.0.0.1".parse().expect("ip");
    let settings = TurnSettings {
        realms: vec![Realm {
            name: REALM.into(),
            tenant: "acme".into(),
            rest: RestSecrets::new(vec![SECRET.to_vec()]),
            users: vec![],
            allow_peers: vec![PeerNet::parse("127.0.0.1/32").expect("net")],
        }],
        relay_v4: Some(RelayAddress { bind: ip, advertised: ip }),
        relay_v6: None,
        first_port: FIRST_PORT,
        last_port: FIRST_PORT + 9,
        policy: PeerPolicy::default(),
        limits: TurnLimits::default(),
    };
    let server = TurnServer::new(settings, NonceKey::new([9; 32]), None, 1).expect("server");
    let listener = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    TurnService::start(server, vec![listener], StreamLimits::default()).expect("service")
}

/// ChannelData from the client through `server` to the peer (which sees
/// it come from the relayed address) and back, every byte checked.
async fn round_trip(c: Client, peer: UdpSocket, relayed: SocketAddr, server: SocketAddr, n: u8) -> (Client, UdpSocket) {
    tokio::task::spawn_blocking(move || {
        c.channel_data(server, 0x4007, &[n; 40]);
        let mut buf = [0u8; 128];
        let (len, from) = peer.recv_from(&mut buf).expect("to the peer");
        assert_eq!((&buf[..len], from), (&[n; 40][..], relayed), "from the relayed address");
        peer.send_to(&[n ^ 0xff; 24], relayed).expect("back");
        assert_eq!(c.recv_channel(), vec![n ^ 0xff; 24]);
        (c, peer)
    })
    .await
    .expect("round trip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_allocation_survives_a_takeover_on_the_same_relayed_address() {
    let redis = RedisServer::start("turn");
    let (relay_a, turn_a) = (relay(21600), turn_service());
    let mut a = Cluster::start_with_turn(node_config(&redis, "a", true), relay_a.handle(), None, Some(turn_a.clone()))
        .await
        .expect("cluster a");
    wait(&mut a, |s| s.role == Role::Active).await;
    let (relay_b, turn_b) = (relay(21600), turn_service());
    let mut b = Cluster::start_with_turn(node_config(&redis, "b", false), relay_b.handle(), None, Some(turn_b.clone()))
        .await
        .expect("cluster b");
    wait(&mut b, |s| s.role == Role::Standby).await;
    let (at_a, at_b) = (turn_a.udp_addrs()[0], turn_b.udp_addrs()[0]);

    // Allocate on the active, a permission and a channel to a real peer.
    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
    peer.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let peer_addr = peer.local_addr().expect("addr");
    let c = tokio::task::spawn_blocking(move || {
        let mut c = Client::new(SECRET, REALM, "wave-ha");
        let relayed = c.allocate(at_a, &[]);
        c.bind_channel(at_a, 0x4007, peer_addr);
        (c, relayed)
    })
    .await
    .expect("client");
    let (mut c, relayed) = c;
    let (c0, peer) = round_trip(c, peer, relayed, at_a, 1).await;
    c = c0;

    // The standby keeps a warm copy, and answers no TURN itself.
    until("the allocation in the warm copy", || b.status().warm_turn == 1).await;
    let refresh = c.request(Method::Refresh, &[], None);
    c.socket.send_to(&refresh, at_b).expect("send");
    until("the standby drops TURN", || turn_b.stats().drops(TurnDrop::Standby) >= 1).await;

    // The active dies (no hand-over); the standby takes over.
    drop(a);
    drop(turn_a);
    drop(relay_a);
    let st = wait(&mut b, |s| s.role == Role::Active).await;
    let report = st.last_takeover.expect("report");
    assert_eq!(report.turn_allocations, 1, "{report:?}");
    // The service address moved (here: the client now talks to the new
    // node's listener); the relayed address is the same, the channel,
    // permission, nonce and key hold.
    until("the relayed port open again", || turn_b.with_server(|s| s.allocations().all(|a| a.opened))).await;
    let (mut c, _peer) = round_trip(c, peer, relayed, at_b, 2).await;
    let code = tokio::task::spawn_blocking(move || {
        c.ask(at_b, Method::Refresh, &[(ATTR_LIFETIME, 600u32.to_be_bytes().to_vec())], None).0
    })
    .await
    .expect("refresh");
    assert_eq!(code, None, "refreshed with the nonce and key from before the takeover");
    b.stop(false).await;
}
