//! Arbitrary bytes as a TURN stranger's datagram and as a peer's datagram
//! to a relayed port (the stateful `turn` target covers clients with
//! allocations). Nothing may panic; a stranger is never relayed for, and
//! an answer to it is never larger than its request plus the budget's
//! burst.
#![no_main]
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay_core::peer::PeerPolicy;
use relay_core::turn::auth::{NonceKey, RestSecrets};
use relay_core::turn::*;

fuzz_target!(|data: &[u8]| {
    let relay_ip: IpAddr = "203.0.113.10".parse().unwrap();
    let settings = TurnSettings {
        realms: vec![Realm {
            name: "r".into(),
            tenant: "t".into(),
            rest: RestSecrets::new(vec![b"secret".to_vec()]),
            users: vec![StaticUser::from_password("alice", "r", "pw")],
            allow_peers: Vec::new(),
        }],
        relay_v4: Some(RelayAddress { bind: relay_ip, advertised: relay_ip }),
        relay_v6: None,
        first_port: 30000,
        last_port: 30003,
        policy: PeerPolicy::default(),
        limits: TurnLimits::default(),
    };
    let mut server = TurnServer::new(settings, NonceKey::new([1; 32]), None, 1).unwrap();
    let now = TurnNow { instant: Instant::now(), unix_secs: 1_800_000_000 };
    let stranger = ClientKey { transport: Transport::Udp, listener: 0, source: "198.51.100.9:4000".parse().unwrap() };
    match server.handle_client(now, stranger, data) {
        ClientOutput::Relay { .. } => panic!("relayed for a stranger"),
        ClientOutput::Bind { .. } => panic!("a stranger's datagram joined to a peer connection"),
        ClientOutput::Reply(r) => {
            assert!(r.len() <= data.len() + TurnLimits::default().stranger_burst_bytes as usize)
        }
        ClientOutput::Pending | ClientOutput::Drop(_) => {}
    }
    let _ = server.handle_peer(now, RelayId { family: proto::Family::V4, port: 30000 }, "192.0.2.1:9".parse().unwrap(), data);
    server.handle_timeout(now.instant + Duration::from_secs(1));
});
