//! `ucmrc-loadtest turn` against an in-process TURN server: every
//! allocation made, every datagram back intact both ways, its CPU read
//! from /proc, and its allocations deleted at the end (a second run on
//! the same server succeeds); over IPv4, and over IPv6 with IPv6 relayed
//! addresses.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use loadtest::turn::{run, TurnOptions};
use relay_core::peer::PeerPolicy;
use relay_core::turn::auth::{NonceKey, RestSecrets};
use relay_core::turn::service::TurnService;
use relay_core::turn::{PeerNet, Realm, RelayAddress, TurnLimits, TurnServer, TurnSettings};

/// One test for both families, one after the other: the server is this
/// process, whose CPU time the load reads — another test's threads ending
/// meanwhile would take theirs out of the sum.
#[test]
fn the_turn_load_relays_every_datagram_and_leaves_nothing_behind_over_ipv4_and_ipv6() {
    relays_every_datagram("127.0.0.1", "127.0.0.1", 31000);
    relays_every_datagram("::1", "::1", 31100);
    // IPv4 clients of a dual-stack wildcard listener ([::]): answered and
    // relayed to from the address they sent to, as IPv4.
    relays_every_datagram("127.0.0.1", "::", 31200);
}

/// Two rounds of the load against a server reached on `ip`, its listener
/// bound to `listen`, whose relayed ports start at `first_port` (of `ip`'s
/// family only: over IPv6, a channel to the generator's ::1 peers binds
/// only if the relayed address is IPv6).
fn relays_every_datagram(ip: &str, listen: &str, first_port: u16) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let ip: IpAddr = ip.parse().expect("ip");
    let listen: IpAddr = listen.parse().expect("ip");
    let relay = Some(RelayAddress { bind: ip, advertised: ip });
    let settings = TurnSettings {
        realms: vec![Realm {
            name: "load.test".into(),
            tenant: "load".into(),
            rest: RestSecrets::new(vec![b"load-secret".to_vec()]),
            users: Vec::new(),
            allow_peers: vec![PeerNet::parse(&ip.to_string()).expect("net")],
        }],
        relay_v4: relay.filter(|_| ip.is_ipv4()),
        relay_v6: relay.filter(|_| ip.is_ipv6()),
        first_port,
        last_port: first_port + 99,
        policy: PeerPolicy::default(),
        limits: TurnLimits { stranger_burst_bytes: 1 << 20, ..TurnLimits::default() },
    };
    let server = TurnServer::new(settings, NonceKey::new([3; 32]), None, 7).expect("server");
    // As the binary binds it (a wildcard IPv6 listener takes IPv4 too).
    let listener: std::net::UdpSocket =
        relay_core::io::bind_udp(listen, 0, &relay_core::io::SocketOptions::default()).expect("bind").into();
    let addr = SocketAddr::new(ip, listener.local_addr().expect("addr").port());
    let service = rt.block_on(async { TurnService::start(server, vec![listener], Default::default()) }).expect("start");
    let opts = TurnOptions {
        server: addr,
        secret: "load-secret".into(),
        allocations: 40,
        pps: 50,
        duration: Duration::from_secs(1),
        payload: 160,
        concurrency: 4,
        server_pid: Some(std::process::id()),
    };
    for round in 0..2 {
        let r = run(&opts).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(r.allocations, 40);
        assert_eq!(r.sent, [2000, 2000], "round {round}");
        assert_eq!(r.received, r.sent, "round {round}: every datagram back intact");
        assert!(r.server_ns_per_datagram.is_some_and(|ns| ns > 0.0));
        assert_eq!(service.with_server(|s| s.allocations().count()), 0, "round {round}: all deleted");
    }
}
