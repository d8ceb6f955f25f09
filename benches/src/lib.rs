//! Shared helpers for the UCMRC benches and the `udpbench` loopback
//! forwarding benchmark: packet builders and sans-IO fixtures.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_core::shard::{AddressSlice, AllocatedPorts, Command, Response, Shard, ShardConfig};
use test_support::sockets::FakeSockets;

use relay_core::{LatchPolicy, LegSpec, PeerPolicy, SessionDefaults, SessionSpec, SrtpAuth, Verify};

/// A plain 200-byte RTP packet (12-byte header, 188-byte payload).
pub fn rtp_packet(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(200 + 160);
    p.extend_from_slice(&[0x80, 0]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.resize(200, 0xd5);
    p
}

/// For each session: `(endpoint port, endpoint source, pbx port, pbx source)`.
pub type SessionLegs = Vec<(u16, SocketAddr, u16, SocketAddr)>;

/// A shard with `sessions` established rtcp-mux sessions: returns the shard,
/// its sockets, each session's legs and the shard's epoch.
pub fn established_shard(
    sessions: usize,
    latch: LatchPolicy,
    verify: Verify,
    auth: Option<SrtpAuth>,
) -> (Shard, FakeSockets, SessionLegs, Instant) {
    let t0 = Instant::now();
    let mut shard = Shard::new(
        ShardConfig {
            index: 0,
            addresses: vec![AddressSlice::new([127, 0, 0, 1].into(), 1, (sessions * 2).min(65534))],
            defaults: SessionDefaults { limits: relay_core::LegLimits::default(), ..SessionDefaults::default() },
            peer_policy: PeerPolicy::default(),
            seed: 1,
            bind_quarantine: Duration::from_secs(30),
            offload: false,
            journal: false,
            id_space: 1,
        },
        t0,
    );
    let mut sockets = FakeSockets::default();
    let mut legs = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let phone = SocketAddr::from(([203, 0, 113, (i % 250) as u8 + 1], 10000 + (i / 250) as u16));
        let pbx = SocketAddr::from(([198, 51, 100, (i % 250) as u8 + 1], 20000 + (i / 250) as u16));
        let spec = SessionSpec {
            tenant: "bench".into(),
            pbx: LegSpec { rtcp_mux: true, hint: Some(pbx), srtp_auth: auth.clone(), ..LegSpec::default() },
            endpoint: LegSpec { rtcp_mux: true, hint: Some(phone), srtp_auth: auth.clone(), ..LegSpec::default() },
            latch: Some(latch),
            verify: Some(verify),
            ..SessionSpec::default()
        };
        let a: AllocatedPorts =
            match shard.handle_command(t0, Command::Allocate { spec: Box::new(spec), permit: None }, &mut sockets) {
                Response::Allocated(Ok(a)) => a,
                other => panic!("allocation failed: {other:?}"),
            };
        legs.push((a.endpoint.rtp, phone, a.pbx.rtp, pbx));
    }
    (shard, sockets, legs, t0)
}
