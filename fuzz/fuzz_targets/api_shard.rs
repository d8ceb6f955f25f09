//! Request bodies all the way into a shard: whatever the admin API or a
//! connector's channel parses (`POST /v1/sessions`, `PATCH`), allocated and
//! updated on a sans-IO shard, then driven by datagrams and by timers far in
//! the future. Found before it existed: durations of u64::MAX seconds
//! overflowed `Instant` arithmetic and panicked the shard thread.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use relay_core::api::{SessionRequest, UpdateRequest};
use relay_core::shard::{Command, Response, Shard, ShardConfig};
use relay_core::{PeerPolicy, SessionDefaults};
use test_support::sockets::FakeSockets;

fuzz_target!(|data: &[u8]| {
    let mut sockets = FakeSockets::default();
    let t0 = Instant::now();
    let mut shard = Shard::new(
        ShardConfig {
            index: 0,
            addresses: vec![relay_core::shard::AddressSlice::new([127, 0, 0, 1].into(), 20000, 64)],
            defaults: SessionDefaults::default(),
            peer_policy: PeerPolicy::permissive_local(),
            seed: 1,
            bind_quarantine: Duration::from_secs(30),
            offload: false,
            journal: false,
            id_space: 1,
        },
        t0,
    );
    let Ok(req) = serde_json::from_slice::<SessionRequest>(data) else { return };
    let Ok(spec) = req.to_spec("acme") else { return };
    let id = match shard.handle_command(t0, Command::Allocate { spec: Box::new(spec), permit: None }, &mut sockets) {
        Response::Allocated(Ok(a)) => {
            for port in [a.pbx.rtp, a.endpoint.rtp] {
                let src = "203.0.113.9:4000".parse().expect("addr");
                let _ = shard.handle_datagram(t0, port, src, &[0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7]);
            }
            a.id
        }
        _ => return,
    };
    if let Ok(upd) = serde_json::from_slice::<UpdateRequest>(data).map(|u| u.to_update()) {
        if let Ok(update) = upd {
            let _ = shard.handle_command(t0, Command::Update { id, update: Box::new(update) }, &mut sockets);
        }
    }
    for later in [Duration::from_secs(1), Duration::from_secs(86_400), Duration::from_secs(400 * 86_400)] {
        let now = t0 + later;
        if shard.poll_timeout().is_some_and(|t| t <= now) {
            shard.handle_timeout(now, &mut sockets);
        }
    }
});
