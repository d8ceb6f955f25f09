//! Sans-IO tests of the shard in virtual time: latching policies, learning
//! window and hint ranking, strict source, authenticated re-latching with
//! replay guard, `verify = all`, timeouts, token buckets and quotas.
//! Packets are real SRTP from libsrtp; the relay verifies them with auth keys
//! derived by `relay_core::srtp_keys`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use relay_core::peer::PeerPolicy;
use relay_core::quota::{TenantLimit, TenantQuotas};
use relay_core::shard::{
    AllocatedPorts, Command, Framing, Response, RestoreClash, Shard, ShardConfig, ShardError, Verdict,
};
use relay_core::DropReason;
use relay_core::LegLimits;
use relay_core::{LatchPolicy, LegSpec, LegUpdate, SessionDefaults, SessionSpec, SessionUpdate, Verify};
use test_support::keys::*;
use test_support::packets::*;
use test_support::sa;
use test_support::sockets::*;
use test_support::srtp::*;
use test_support::stun::*;

struct Lab {
    shard: Shard,
    sockets: FakeSockets,
    t0: Instant,
}

impl Lab {
    fn new() -> Self {
        Self::with(SessionDefaults::default(), 1000)
    }

    fn with(defaults: SessionDefaults, ports: usize) -> Self {
        Self::build(defaults, ports, false)
    }

    fn build(defaults: SessionDefaults, ports: usize, offload: bool) -> Self {
        let t0 = Instant::now();
        let shard = Shard::new(
            ShardConfig {
                index: 3,
                addresses: vec![relay_core::shard::AddressSlice::new([127, 0, 0, 1].into(), 40000, ports)],
                defaults,
                peer_policy: PeerPolicy::default(),
                seed: 42,
                bind_quarantine: Duration::from_secs(30),
                offload,
                journal: true,
                id_space: 1,
            },
            t0,
        );
        Self { shard, sockets: FakeSockets::default(), t0 }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn allocate(&mut self, spec: SessionSpec) -> Result<AllocatedPorts, ShardError> {
        self.allocate_with(spec, None)
    }

    fn allocate_with(
        &mut self,
        spec: SessionSpec,
        permit: Option<relay_core::quota::QuotaPermit>,
    ) -> Result<AllocatedPorts, ShardError> {
        match self.shard.handle_command(self.t0, Command::Allocate { spec: Box::new(spec), permit }, &mut self.sockets)
        {
            Response::Allocated(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn send(&mut self, ms: u64, port: u16, src: SocketAddr, bytes: &[u8]) -> Verdict {
        self.shard.handle_datagram(self.at(ms), port, src, bytes)
    }

    fn assert_counters_add_up(&self) {
        let c = self.shard.counters();
        assert_eq!(c.packets_received, c.packets_forwarded + c.drops.total());
    }
}

fn spec(latch: LatchPolicy) -> SessionSpec {
    SessionSpec {
        tenant: "acme".into(),
        pbx: LegSpec { rtcp_mux: true, ..LegSpec::default() },
        endpoint: LegSpec { rtcp_mux: true, ..LegSpec::default() },
        latch: Some(latch),
        ..SessionSpec::default()
    }
}

const PBX: &str = "198.51.100.10:4000";
const PHONE: &str = "203.0.113.20:5004";
const ATTACKER: &str = "192.0.2.66:6666";

/// A minimal, well-formed DTLS 1.2 handshake record header with one byte.
const DTLS_RECORD: [u8; 14] = [22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1];

fn fwd(via_port: u16, to: &str) -> Verdict {
    Verdict::Forward { via: via_port.into(), to: sa(to), framing: Framing::Unchanged }
}

#[test]
fn window_latches_both_legs_and_forwards_unchanged_both_ways() {
    let mut lab = Lab::new();
    let a = lab.allocate(spec(LatchPolicy::Window)).expect("allocate");
    let (p, e) = (a.pbx.rtp, a.endpoint.rtp);
    let mut pbx_tx = SrtpTx::new(&master(1), 0x1111, 100);
    let mut phone_tx = SrtpTx::new(&master(2), 0x2222, 200);

    // Nobody latched on the endpoint leg yet and no hint: nowhere to send.
    assert_eq!(lab.send(0, p, sa(PBX), &pbx_tx.next_rtp()), Verdict::Drop(DropReason::NoDestination));
    // The phone's first packet latches the endpoint leg and goes to the PBX.
    assert_eq!(lab.send(10, e, sa(PHONE), &phone_tx.next_rtp()), fwd(p, PBX), "pbx latched by its first packet");
    assert_eq!(lab.send(20, p, sa(PBX), &pbx_tx.next_rtp()), fwd(e, PHONE));
    // RTCP on the mux port takes the same path.
    assert_eq!(lab.send(30, e, sa(PHONE), &phone_tx.next_rtcp()), fwd(p, PBX));
    let info = match lab.shard.handle_command(lab.at(40), Command::Query { id: a.id }, &mut lab.sockets) {
        Response::Session(Ok(i)) => i,
        other => panic!("{other:?}"),
    };
    assert_eq!(info.endpoint.remote_rtp, Some(sa(PHONE)));
    assert_eq!(info.pbx.remote_rtp, Some(sa(PBX)));
    assert_eq!(info.endpoint.stats.packets_forwarded, 2);
    assert_eq!(info.pbx.stats.drops.get(DropReason::NoDestination), 1);
    lab.assert_counters_add_up();
}

#[test]
fn learning_window_ranks_sources_by_hint_then_turns_strict() {
    let mut lab = Lab::new();
    let mut s = spec(LatchPolicy::Window);
    s.endpoint.hint = Some(sa(PHONE));
    s.pbx.hint = Some(sa(PBX));
    let a = lab.allocate(s).expect("allocate");
    let (p, e) = (a.pbx.rtp, a.endpoint.rtp);
    let mut phone = SrtpTx::new(&master(2), 2, 1);

    // With an exact hint, media flows to the hint before any latch.
    assert_eq!(lab.send(0, p, sa(PBX), &phone.next_rtp()), fwd(e, PHONE));
    // An attacker (rank "other") latches first while nothing better is seen...
    assert_eq!(lab.send(5, e, sa(ATTACKER), b"\x80\x00junk-rtp-ish-bytes"), fwd(p, PBX));
    // ...the real phone (exact hint, rank 3) takes over...
    assert_eq!(lab.send(10, e, sa(PHONE), &phone.next_rtp()), fwd(p, PBX));
    assert_eq!(lab.send(11, p, sa(PBX), &phone.next_rtp()), fwd(e, PHONE));
    // ...and neither the attacker nor a same-IP other port (rank 2) can take it back.
    assert_eq!(lab.send(20, e, sa(ATTACKER), &phone.next_rtp()), Verdict::Drop(DropReason::SourceMismatch));
    assert_eq!(lab.send(21, e, sa("203.0.113.20:7000"), &phone.next_rtp()), Verdict::Drop(DropReason::SourceMismatch));

    // Without an exact match, equal ranks may move within the window (NAT rebinding during setup).
    let mut lab2 = Lab::new();
    let mut s2 = spec(LatchPolicy::Window);
    s2.endpoint.hint = Some(sa("203.0.113.20:0"));
    let a2 = lab2.allocate(s2).expect("allocate");
    let e2 = a2.endpoint.rtp;
    assert!(matches!(
        lab2.send(0, e2, sa("203.0.113.20:1111"), &phone.next_rtp()),
        Verdict::Drop(DropReason::NoDestination)
    ));
    assert!(
        matches!(lab2.send(1, e2, sa(ATTACKER), &phone.next_rtp()), Verdict::Drop(DropReason::SourceMismatch)),
        "rank 1 < rank 2"
    );
    assert!(
        matches!(
            lab2.send(2, e2, sa("203.0.113.20:2222"), &phone.next_rtp()),
            Verdict::Drop(DropReason::NoDestination)
        ),
        "rank 2 == rank 2 re-latches"
    );

    // After the 3 s window: strict source, even for a better-ranked address.
    let mut lab3 = Lab::new();
    let mut s3 = spec(LatchPolicy::Window);
    s3.pbx.hint = Some(sa(PBX));
    let a3 = lab3.allocate(s3).expect("allocate");
    let e3 = a3.endpoint.rtp;
    assert_eq!(lab3.send(100, e3, sa(PHONE), &phone.next_rtp()), fwd(a3.pbx.rtp, PBX));
    assert_eq!(
        lab3.send(3_100, e3, sa("203.0.113.21:5004"), &phone.next_rtp()),
        Verdict::Drop(DropReason::SourceMismatch)
    );
    assert_eq!(lab3.send(3_200, e3, sa(PHONE), &phone.next_rtp()), fwd(a3.pbx.rtp, PBX));
    // An update re-opens the window: the new address may latch again.
    let upd = SessionUpdate {
        endpoint: LegUpdate { hint: Some(sa("203.0.113.21:5004")), ..LegUpdate::default() },
        ..SessionUpdate::default()
    };
    assert!(matches!(
        lab3.shard.handle_command(
            lab3.at(4_000),
            Command::Update { id: a3.id, update: Box::new(upd) },
            &mut lab3.sockets
        ),
        Response::Updated(Ok(()))
    ));
    assert_eq!(lab3.send(4_100, e3, sa("203.0.113.21:5004"), &phone.next_rtp()), fwd(a3.pbx.rtp, PBX));
    lab3.assert_counters_add_up();
}

fn authenticated_spec() -> SessionSpec {
    let mut s = spec(LatchPolicy::Authenticated);
    s.pbx.srtp_auth = Some(auth_for(&master(1)));
    s.endpoint.srtp_auth = Some(auth_for(&master(2)));
    s.endpoint.stun_password = Some(b"pbx-ice-password".to_vec());
    s.pbx.hint = Some(sa(PBX));
    s
}

#[test]
fn authenticated_latching_needs_a_valid_tag_and_a_fresh_index() {
    let mut lab = Lab::new();
    let a = lab.allocate(authenticated_spec()).expect("allocate");
    let (p, e) = (a.pbx.rtp, a.endpoint.rtp);
    let mut phone = SrtpTx::new(&master(2), 0xabc, 65530);
    let mut forger = SrtpTx::new(&master(9), 0xabc, 65530);

    // Forged SRTP (wrong key) and junk cannot latch, not even first: a
    // DTLS record proves nothing, and bytes that only start like one are not media.
    assert_eq!(lab.send(0, e, sa(ATTACKER), &forger.next_rtp()), Verdict::Drop(DropReason::Unauthenticated));
    assert_eq!(lab.send(1, e, sa(ATTACKER), &DTLS_RECORD), Verdict::Drop(DropReason::Unauthenticated));
    assert_eq!(lab.send(1, e, sa(ATTACKER), b"\x16\xfe\xfd dtls-looking"), Verdict::Drop(DropReason::NotMedia));
    // A genuine packet latches.
    let first = phone.next_rtp();
    assert_eq!(lab.send(2, e, sa(PHONE), &first), fwd(p, PBX));
    let mut captured = Vec::new();
    for i in 0..10 {
        let pkt = phone.next_rtp(); // crosses the 16-bit sequence wrap
        captured.push(pkt.clone());
        assert_eq!(lab.send(3 + i, e, sa(PHONE), &pkt), fwd(p, PBX));
    }
    // Long after any window: a replayed genuine packet from a new source is refused.
    assert_eq!(lab.send(60_000, e, sa(ATTACKER), &captured[9]), Verdict::Drop(DropReason::Replay));
    assert_eq!(lab.send(60_001, e, sa(ATTACKER), &captured[0]), Verdict::Drop(DropReason::Replay));
    // The phone roams (NAT rebinding): a fresh, valid packet re-latches at once.
    let roamed = sa("203.0.113.99:40000");
    assert_eq!(lab.send(60_002, e, roamed, &phone.next_rtp()), fwd(p, PBX));
    assert_eq!(lab.send(60_003, p, sa(PBX), &SrtpTx::new(&master(1), 7, 1).next_rtp()), fwd(e, "203.0.113.99:40000"));
    // The old address is now a stranger.
    assert_eq!(lab.send(60_004, e, sa(PHONE), &forger.next_rtp()), Verdict::Drop(DropReason::Unauthenticated));
    // SRTCP proves itself too (its index is authenticated).
    let rtcp = phone.next_rtcp();
    assert_eq!(lab.send(60_005, e, sa(PHONE), &rtcp), fwd(p, PBX));
    assert_eq!(lab.send(60_006, e, sa(ATTACKER), &rtcp), Verdict::Drop(DropReason::Replay));
    // STUN with MESSAGE-INTEGRITY (ICE consent) latches; a replayed transaction does not.
    let stun = stun_request(b"pbx-ice-password", [7; 12]);
    assert_eq!(lab.send(60_007, e, sa("203.0.113.50:1"), &stun), fwd(p, PBX));
    assert_eq!(lab.send(60_008, e, sa(ATTACKER), &stun), Verdict::Drop(DropReason::Replay));
    let wrong = stun_request(b"guessed", [8; 12]);
    assert_eq!(lab.send(60_009, e, sa(ATTACKER), &wrong), Verdict::Drop(DropReason::Unauthenticated));
    // A consent check sent from the latched address, captured and replayed
    // from elsewhere, cannot move the leg either.
    let consent = stun_request(b"pbx-ice-password", [9; 12]);
    assert_eq!(lab.send(60_010, e, sa("203.0.113.50:1"), &consent), fwd(p, PBX));
    assert_eq!(lab.send(60_011, e, sa(ATTACKER), &consent), Verdict::Drop(DropReason::Replay));
    lab.assert_counters_add_up();
}

#[test]
fn authenticated_policy_refuses_specs_without_credentials() {
    let mut lab = Lab::new();
    let err = lab.allocate(spec(LatchPolicy::Authenticated)).expect_err("no keys");
    assert!(matches!(err, ShardError::InvalidSpec(ref s) if s.field == "pbx.srtp_auth"), "{err:?}");
    assert!(lab.sockets.open.is_empty(), "no port taken by a refused spec");
}

#[test]
fn verify_all_drops_forged_packets_from_the_latched_source() {
    let mut lab = Lab::new();
    let mut s = spec(LatchPolicy::Window);
    s.verify = Some(Verify::All);
    s.endpoint.srtp_auth = Some(auth_for(&master(2)));
    s.pbx.hint = Some(sa(PBX));
    let a = lab.allocate(s).expect("allocate");
    let e = a.endpoint.rtp;
    let mut phone = SrtpTx::new(&master(2), 5, 10);
    assert_eq!(lab.send(0, e, sa(PHONE), &phone.next_rtp()), fwd(a.pbx.rtp, PBX));
    // Spoofed from the phone's own address: valid header, wrong tag.
    let mut forged = phone.next_rtp();
    let n = forged.len();
    forged[n - 1] ^= 0x55;
    assert_eq!(lab.send(1, e, sa(PHONE), &forged), Verdict::Drop(DropReason::AuthFailed));
    let mut bad_rtcp = phone.next_rtcp();
    bad_rtcp[9] ^= 1;
    assert_eq!(lab.send(2, e, sa(PHONE), &bad_rtcp), Verdict::Drop(DropReason::AuthFailed));
    assert_eq!(lab.send(3, e, sa(PHONE), &phone.next_rtp()), fwd(a.pbx.rtp, PBX));
    assert_eq!(lab.send(4, e, sa(PHONE), &phone.next_rtcp()), fwd(a.pbx.rtp, PBX));
    // STUN and DTLS are not SRTP: they pass from the latched source.
    assert_eq!(lab.send(5, e, sa(PHONE), &DTLS_RECORD), fwd(a.pbx.rtp, PBX));
}

#[test]
fn open_policy_follows_every_source() {
    let mut lab = Lab::new();
    let mut s = spec(LatchPolicy::Open);
    s.pbx.hint = Some(sa(PBX));
    let a = lab.allocate(s).expect("allocate");
    let e = a.endpoint.rtp;
    for (i, src) in [PHONE, ATTACKER, "203.0.113.7:9"].iter().enumerate() {
        assert_eq!(lab.send(10_000 * i as u64, e, sa(src), b"\x80\x00abcdefghijkl"), fwd(a.pbx.rtp, PBX));
        assert_eq!(lab.send(10_000 * i as u64 + 1, a.pbx.rtp, sa(PBX), b"\x80\x00abcdefghijkl"), fwd(e, src));
    }
}

#[test]
fn rtcp_pairs_use_their_own_ports_and_mux_bridges_to_pairs() {
    let mut lab = Lab::new();
    let mut s = spec(LatchPolicy::Window);
    s.pbx.rtcp_mux = false;
    s.pbx.hint = Some(sa(PBX));
    let a = lab.allocate(s).expect("allocate");
    let pbx_rtcp = a.pbx.rtcp.expect("pair");
    assert_eq!(a.pbx.rtp % 2, 0);
    assert_eq!(pbx_rtcp, a.pbx.rtp + 1);
    let e = a.endpoint.rtp;
    let mut phone = SrtpTx::new(&master(2), 5, 10);
    // Endpoint (mux) RTP goes to the PBX RTP port, its RTCP to the PBX RTCP port (hint port + 1).
    assert_eq!(lab.send(0, e, sa(PHONE), &phone.next_rtp()), fwd(a.pbx.rtp, PBX));
    assert_eq!(lab.send(1, e, sa(PHONE), &phone.next_rtcp()), fwd(pbx_rtcp, "198.51.100.10:4001"));
    // The PBX's RTCP port latches separately; replies go to the mux port.
    assert_eq!(lab.send(2, pbx_rtcp, sa("198.51.100.10:4999"), &phone.next_rtcp()), fwd(e, PHONE));
    assert_eq!(lab.send(3, e, sa(PHONE), &phone.next_rtcp()), fwd(pbx_rtcp, "198.51.100.10:4999"));
}

/// rtpengine's shape for "rtcp-mux offered, callee declines": both legs
/// have an even/odd pair; the caller multiplexes (its leg is told so), the
/// callee does not. The caller's RTCP, sent on the RTP port, must reach the
/// callee's RTCP port from the relay's RTCP port, and the callee's RTCP
/// must reach the caller's RTP address from the relay's RTP port.
#[test]
fn a_multiplexing_remote_and_a_demultiplexing_one_exchange_rtcp_on_the_right_ports() {
    let mut lab = Lab::new();
    let mut s = spec(LatchPolicy::Window);
    s.pbx = LegSpec { rtcp_mux: false, hint: Some(sa(PBX)), ..LegSpec::default() };
    s.endpoint = LegSpec { rtcp_mux: false, hint: Some(sa(PHONE)), ..LegSpec::default() };
    let a = lab.allocate(s).expect("allocate");
    let (pbx_rtcp, phone_rtcp) = (a.pbx.rtcp.expect("pair"), a.endpoint.rtcp.expect("pair"));
    assert!(a.pbx.rtp.is_multiple_of(2) && a.endpoint.rtp.is_multiple_of(2), "RTP ports are even");
    let update =
        SessionUpdate { pbx: LegUpdate { rtcp_mux: Some(true), ..LegUpdate::default() }, ..SessionUpdate::default() };
    assert!(matches!(
        lab.shard.handle_command(lab.t0, Command::Update { id: a.id, update: Box::new(update) }, &mut lab.sockets),
        Response::Updated(Ok(()))
    ));
    let mut caller = SrtpTx::new(&master(1), 7, 10);
    let mut callee = SrtpTx::new(&master(2), 8, 10);
    // Caller RTP and muxed RTCP both arrive on the pbx leg's RTP port.
    assert_eq!(lab.send(0, a.pbx.rtp, sa(PBX), &caller.next_rtp()), fwd(a.endpoint.rtp, PHONE));
    assert_eq!(lab.send(1, a.pbx.rtp, sa(PBX), &caller.next_rtcp()), fwd(phone_rtcp, "203.0.113.20:5005"));
    // Callee RTP from its RTP port, RTCP from port + 1 to the relay's RTCP port.
    assert_eq!(lab.send(2, a.endpoint.rtp, sa(PHONE), &callee.next_rtp()), fwd(a.pbx.rtp, PBX));
    assert_eq!(lab.send(3, phone_rtcp, sa("203.0.113.20:5005"), &callee.next_rtcp()), fwd(a.pbx.rtp, PBX));
    // The caller's own RTCP port stays served (an endpoint may still use it).
    assert_eq!(
        lab.send(4, pbx_rtcp, sa("198.51.100.10:4001"), &caller.next_rtcp()),
        fwd(phone_rtcp, "203.0.113.20:5005")
    );
    let info = match lab.shard.handle_command(lab.at(5), Command::Query { id: a.id }, &mut lab.sockets) {
        Response::Session(Ok(i)) => i,
        other => panic!("unexpected {other:?}"),
    };
    assert!(info.pbx.remote_rtcp_mux && !info.endpoint.remote_rtcp_mux);
    assert_eq!((info.pbx.stats.rtcp_packets_received, info.endpoint.stats.rtcp_packets_received), (2, 1));
    assert_eq!(info.pbx.last_ssrc, Some(7));
    assert!(info.pbx.last_rtcp_ago.is_some() && info.endpoint.last_rtp_ago.is_some());
    lab.assert_counters_add_up();
}

/// `block media` drops (and counts) what one side sends, without touching
/// the other direction or the latch; unblocking resumes the same flow.
#[test]
fn blocked_legs_drop_their_media_and_resume_when_unblocked() {
    let mut lab = Lab::new();
    let mut s = spec(LatchPolicy::Window);
    s.pbx.hint = Some(sa(PBX));
    s.endpoint.hint = Some(sa(PHONE));
    let a = lab.allocate(s).expect("allocate");
    let mut caller = SrtpTx::new(&master(1), 7, 10);
    let mut callee = SrtpTx::new(&master(2), 8, 10);
    let block = |b: bool| SessionUpdate {
        pbx: LegUpdate { blocked: Some(b), ..LegUpdate::default() },
        ..SessionUpdate::default()
    };
    let Response::Updated(Ok(())) =
        lab.shard.handle_command(lab.t0, Command::Update { id: a.id, update: Box::new(block(true)) }, &mut lab.sockets)
    else {
        panic!("update refused")
    };
    assert_eq!(lab.send(0, a.pbx.rtp, sa(PBX), &caller.next_rtp()), Verdict::Drop(DropReason::Blocked));
    assert_eq!(lab.send(1, a.endpoint.rtp, sa(PHONE), &callee.next_rtp()), fwd(a.pbx.rtp, PBX));
    let Response::Updated(Ok(())) = lab.shard.handle_command(
        lab.t0,
        Command::Update { id: a.id, update: Box::new(block(false)) },
        &mut lab.sockets,
    ) else {
        panic!("update refused")
    };
    assert_eq!(lab.send(2, a.pbx.rtp, sa(PBX), &caller.next_rtp()), fwd(a.endpoint.rtp, PHONE));
    assert_eq!(lab.shard.counters().drops.get(DropReason::Blocked), 1);
    lab.assert_counters_add_up();
}

#[test]
fn peer_policy_refuses_dangerous_sources_and_canonicalizes_mapped_ones() {
    let mut lab = Lab::new();
    let mut s = spec(LatchPolicy::Window);
    s.pbx.hint = Some(sa(PBX));
    let a = lab.allocate(s).expect("allocate");
    let e = a.endpoint.rtp;
    for bad in ["127.0.0.1:5000", "169.254.169.254:80", "[::ffff:10.0.0.1]:5000", "224.0.0.5:5000", "[fe80::1]:5000"] {
        assert_eq!(lab.send(0, e, sa(bad), b"\x80\x00abcdefghij"), Verdict::Drop(DropReason::SourcePolicy), "{bad}");
    }
    assert_eq!(lab.send(1, e, sa("[::ffff:203.0.113.20]:5004"), b"\x80\x00abcdefghij"), fwd(a.pbx.rtp, PBX));
    assert_eq!(lab.send(2, a.pbx.rtp, sa(PBX), b"\x80\x00abcdefghij"), fwd(e, PHONE), "latched in canonical form");
    // Hints are checked too.
    let mut bad = spec(LatchPolicy::Window);
    bad.endpoint.hint = Some(sa("[::ffff:169.254.169.254]:80"));
    assert!(matches!(lab.allocate(bad), Err(ShardError::InvalidSpec(_))));
}

#[test]
fn idle_timeout_and_max_duration_end_sessions_and_free_ports() {
    let mut lab = Lab::new();
    let quotas = TenantQuotas::new(TenantLimit { sessions: Some(10), ports: None });
    let mut s = spec(LatchPolicy::Window);
    s.idle_timeout = Some(Duration::from_secs(10));
    s.pbx.hint = Some(sa(PBX));
    let idle = lab.allocate_with(s, Some(quotas.acquire("acme", 2).expect("quota"))).expect("allocate");
    let mut s2 = spec(LatchPolicy::Window);
    s2.max_duration = Some(Duration::from_secs(31));
    s2.pbx.hint = Some(sa(PBX));
    let long = lab.allocate_with(s2, Some(quotas.acquire("acme", 2).expect("quota"))).expect("allocate");
    assert_eq!(quotas.in_use("acme"), 2);
    assert_eq!(lab.sockets.open.len(), 4);

    // Traffic every 5 s keeps `idle` alive past its 10 s timeout...
    for t in (0..=20_000).step_by(5_000) {
        lab.send(t, idle.endpoint.rtp, sa(PHONE), b"\x80\x00keepalive!!");
        lab.send(t, long.endpoint.rtp, sa(PHONE), b"\x80\x00keepalive!!");
        lab.shard.handle_timeout(lab.at(t), &mut lab.sockets);
    }
    assert_eq!(lab.shard.counters().sessions_active, 2);
    // ...then it goes silent and ends ~10 s later, within one timer tick.
    lab.shard.handle_timeout(lab.at(29_000), &mut lab.sockets);
    assert_eq!(lab.shard.counters().sessions_active, 2);
    lab.shard.handle_timeout(lab.at(30_200), &mut lab.sockets);
    let c = lab.shard.counters();
    assert_eq!((c.sessions_expired_idle, c.sessions_expired_max_duration), (1, 0));
    // `long` keeps sending but its 31 s maximum is reached.
    assert!(matches!(lab.send(30_300, long.endpoint.rtp, sa(PHONE), b"\x80\x00keepalive!!"), Verdict::Forward { .. }));
    let next = lab.shard.poll_timeout().expect("a timer is pending");
    assert!(next <= lab.at(30_400));
    lab.shard.handle_timeout(lab.at(31_100), &mut lab.sockets);
    let c = lab.shard.counters();
    assert_eq!((c.sessions_active, c.sessions_expired_max_duration), (0, 1));
    assert!(lab.sockets.open.is_empty(), "every port closed");
    assert_eq!(lab.shard.free_ports(), 1000, "every port back in the pool");
    assert_eq!(quotas.in_use("acme"), 0, "quota permits returned with the sessions");
    assert_eq!(lab.send(31_000, idle.endpoint.rtp, sa(PHONE), b"\x80\x00late"), Verdict::Drop(DropReason::NoSession));
}

#[test]
fn token_buckets_limit_packets_and_bytes_per_leg() {
    let mut lab = Lab::new();
    let mut s = spec(LatchPolicy::Window);
    s.pbx.hint = Some(sa(PBX));
    s.endpoint.limits = Some(LegLimits { max_pps: Some(50), max_bytes_per_sec: None });
    s.pbx.limits = Some(LegLimits { max_pps: None, max_bytes_per_sec: Some(10_000) });
    let a = lab.allocate(s).expect("allocate");
    let pkt = [0x80u8; 200];
    let ok =
        (0..200).filter(|_| matches!(lab.send(0, a.endpoint.rtp, sa(PHONE), &pkt), Verdict::Forward { .. })).count();
    assert_eq!(ok, 50, "one second of burst");
    assert_eq!(lab.send(0, a.endpoint.rtp, sa(PHONE), &pkt), Verdict::Drop(DropReason::RateLimited));
    // 100 ms later, 5 more.
    let ok =
        (0..20).filter(|_| matches!(lab.send(100, a.endpoint.rtp, sa(PHONE), &pkt), Verdict::Forward { .. })).count();
    assert_eq!(ok, 5);
    // Bytes: 10 000 B/s = 50 packets of 200 B.
    let ok = (0..100).filter(|_| matches!(lab.send(100, a.pbx.rtp, sa(PBX), &pkt), Verdict::Forward { .. })).count();
    assert_eq!(ok, 50);
    assert_eq!(lab.send(100, a.pbx.rtp, sa(PBX), &pkt), Verdict::Drop(DropReason::ByteRateLimited));
    // A spoofed flood does not eat the genuine leg's budget.
    let mut lab2 = Lab::new();
    let mut s2 = spec(LatchPolicy::Window);
    s2.pbx.hint = Some(sa(PBX));
    s2.endpoint.limits = Some(LegLimits { max_pps: Some(50), max_bytes_per_sec: None });
    let b = lab2.allocate(s2).expect("allocate");
    assert!(matches!(lab2.send(0, b.endpoint.rtp, sa(PHONE), &pkt), Verdict::Forward { .. }));
    for _ in 0..1000 {
        assert_eq!(lab2.send(5000, b.endpoint.rtp, sa(ATTACKER), &pkt), Verdict::Drop(DropReason::SourceMismatch));
    }
    assert!(matches!(lab2.send(5000, b.endpoint.rtp, sa(PHONE), &pkt), Verdict::Forward { .. }));
    lab.assert_counters_add_up();
    lab2.assert_counters_add_up();
}

#[test]
fn quota_limits_sessions_per_tenant() {
    let quotas = TenantQuotas::new(TenantLimit { sessions: Some(2), ports: None });
    let mut lab = Lab::new();
    let mut ids = vec![];
    for _ in 0..2 {
        let permit = quotas.acquire("acme", 2).expect("within quota");
        ids.push(lab.allocate_with(spec(LatchPolicy::Window), Some(permit)).expect("allocate").id);
    }
    assert!(quotas.acquire("acme", 2).is_err(), "third session refused");
    assert!(quotas.acquire("other", 2).is_ok(), "other tenants unaffected");
    assert!(matches!(
        lab.shard.handle_command(lab.t0, Command::Release { id: ids[0] }, &mut lab.sockets),
        Response::Released(Ok(_))
    ));
    assert!(quotas.acquire("acme", 2).is_ok(), "a release frees a slot");
}

#[test]
fn ports_that_fail_to_bind_are_skipped_and_retried_later() {
    let mut lab = Lab::with(SessionDefaults::default(), 4);
    lab.sockets.refuse.extend([40000, 40001]);
    let a = lab.allocate(spec(LatchPolicy::Window)).expect("two free ports remain");
    let mut got = [a.pbx.rtp, a.endpoint.rtp];
    got.sort();
    assert_eq!(got, [40002, 40003]);
    assert_eq!(lab.allocate(spec(LatchPolicy::Window)), Err(ShardError::PortsExhausted));
    assert_eq!(lab.shard.counters().port_bind_failures, 2);
    // After the quarantine the ports come back.
    lab.sockets.refuse.clear();
    lab.shard.handle_timeout(lab.at(31_000), &mut lab.sockets);
    assert!(lab.allocate(spec(LatchPolicy::Window)).is_ok());
}

#[test]
fn ten_thousand_sessions_allocate_and_release_without_leaks() {
    let mut lab = Lab::with(SessionDefaults::default(), 20_000);
    for round in 0..3 {
        let mut ids = Vec::new();
        for _ in 0..10_000 {
            ids.push(lab.allocate(spec(LatchPolicy::Window)).expect("allocate").id);
        }
        assert_eq!(lab.allocate(spec(LatchPolicy::Window)), Err(ShardError::PortsExhausted), "round {round}");
        assert_eq!(lab.sockets.open.len(), 20_000);
        assert_eq!(lab.shard.counters().sessions_active, 10_000);
        for id in ids {
            assert!(matches!(
                lab.shard.handle_command(lab.t0, Command::Release { id }, &mut lab.sockets),
                Response::Released(Ok(_))
            ));
        }
        assert!(lab.sockets.open.is_empty());
        assert_eq!(lab.shard.free_ports(), 20_000);
        assert_eq!(lab.shard.counters().sessions_active, 0);
        assert_eq!(lab.shard.session_slots(), 10_000, "session slots are reused, not grown");
    }
}

#[test]
fn stale_ids_do_not_reach_new_sessions() {
    let mut lab = Lab::new();
    let a = lab.allocate(spec(LatchPolicy::Window)).expect("allocate");
    assert!(matches!(
        lab.shard.handle_command(lab.t0, Command::Release { id: a.id }, &mut lab.sockets),
        Response::Released(Ok(_))
    ));
    let b = lab.allocate(spec(LatchPolicy::Window)).expect("allocate");
    assert_ne!(a.id, b.id);
    assert!(matches!(
        lab.shard.handle_command(lab.t0, Command::Release { id: a.id }, &mut lab.sockets),
        Response::Released(Err(ShardError::UnknownSession(_)))
    ));
    assert!(matches!(
        lab.shard.handle_command(lab.t0, Command::Query { id: b.id }, &mut lab.sockets),
        Response::Session(Ok(_))
    ));
}

#[test]
fn opt_in_quality_reads_clear_rtp_headers_of_srtp() {
    let mut lab = Lab::new();
    let mut s = spec(LatchPolicy::Window);
    s.pbx.hint = Some(sa(PBX));
    s.quality = Some(true);
    let a = lab.allocate(s).expect("allocate");
    let mut off = spec(LatchPolicy::Window);
    off.pbx.hint = Some(sa(PBX));
    let b = lab.allocate(off).expect("allocate");
    let mut phone = SrtpTx::new(&master(2), 0x77, 1);
    let packets: Vec<Vec<u8>> = (0..10).map(|_| phone.next_rtp()).collect();
    // Packet 4 is lost, packet 6 arrives twice, 8 and 9 swap.
    for (t, i) in [0usize, 1, 2, 3, 5, 6, 6, 7, 9, 8].iter().enumerate() {
        assert!(matches!(lab.send(20 * t as u64, a.endpoint.rtp, sa(PHONE), &packets[*i]), Verdict::Forward { .. }));
        lab.send(20 * t as u64, b.endpoint.rtp, sa(PHONE), &packets[*i]);
    }
    let query = |lab: &mut Lab, id| match lab.shard.handle_command(lab.at(500), Command::Query { id }, &mut lab.sockets)
    {
        Response::Session(Ok(i)) => i,
        other => panic!("{other:?}"),
    };
    let q = query(&mut lab, a.id).endpoint.quality;
    assert_eq!(q.len(), 1);
    assert_eq!((q[0].ssrc, q[0].packets, q[0].lost, q[0].duplicates, q[0].reordered), (0x77, 9, 1, 1, 1));
    assert!(query(&mut lab, b.id).endpoint.quality.is_empty(), "off by default");
}

#[test]
fn ports_still_closing_stay_out_of_the_pool_until_the_backend_says_so() {
    let mut lab = Lab::with(SessionDefaults::default(), 2);
    lab.sockets.defer_close = true;
    let a = lab.allocate(spec(LatchPolicy::Window)).expect("allocate");
    assert!(matches!(
        lab.shard.handle_command(lab.t0, Command::Release { id: a.id }, &mut lab.sockets),
        Response::Released(Ok(_))
    ));
    assert_eq!(lab.shard.counters().ports_closing, 2);
    assert_eq!(lab.allocate(spec(LatchPolicy::Window)), Err(ShardError::PortsExhausted));
    lab.shard.handle_port_closed(a.pbx.rtp.into());
    lab.shard.handle_port_closed(a.endpoint.rtp.into());
    lab.shard.handle_port_closed(a.endpoint.rtp.into()); // duplicate reports are harmless
    assert_eq!(lab.shard.counters().ports_closing, 0);
    assert!(lab.allocate(spec(LatchPolicy::Window)).is_ok());
}

/// Interfaces: a leg asks for an interface and gets ports on one of its
/// addresses (the one with the most free ports, so several addresses share
/// the load); forwarding leaves from the other leg's address.
#[test]
fn legs_get_ports_on_their_interface_and_forward_from_its_address() {
    use relay_core::shard::{AddressSlice, RelayPort};
    let t0 = Instant::now();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
    let mut shard = Shard::new(
        ShardConfig {
            index: 0,
            addresses: vec![
                AddressSlice { interface: 0, ip: ip("10.0.0.1"), port_base: 30000, port_count: 8 },
                AddressSlice { interface: 1, ip: ip("192.0.2.1"), port_base: 30000, port_count: 8 },
                AddressSlice { interface: 1, ip: ip("192.0.2.2"), port_base: 30000, port_count: 8 },
            ],
            defaults: SessionDefaults::default(),
            peer_policy: PeerPolicy::default(),
            seed: 7,
            bind_quarantine: Duration::from_secs(30),
            offload: false,
            journal: true,
            id_space: 1,
        },
        t0,
    );
    let index = shard.config().port_index();
    assert_eq!(index.len(), 24);
    assert_eq!(index.index(RelayPort::new(2, 30003)), Some(19));
    assert_eq!(index.port(19), Some(RelayPort::new(2, 30003)));
    assert_eq!(index.bind_addr(RelayPort::new(1, 30001)), Some(sa("192.0.2.1:30001")));
    let mut sockets = FakeSockets::default();
    let mut allocate = |pbx_itf: u8, endpoint_itf: u8| {
        let mut s = spec(LatchPolicy::Window);
        s.pbx = LegSpec { rtcp_mux: true, interface: pbx_itf, hint: Some(sa(PBX)), ..LegSpec::default() };
        s.endpoint = LegSpec { rtcp_mux: true, interface: endpoint_itf, hint: Some(sa(PHONE)), ..LegSpec::default() };
        match shard.handle_command(t0, Command::Allocate { spec: Box::new(s), permit: None }, &mut sockets) {
            Response::Allocated(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    };
    let mut wan_addresses = std::collections::BTreeSet::new();
    let mut calls = Vec::new();
    for _ in 0..8 {
        let a = allocate(0, 1).expect("allocate");
        assert_eq!(a.pbx.addr, 0, "the pbx leg is on the LAN interface");
        assert!(a.endpoint.addr == 1 || a.endpoint.addr == 2, "the endpoint leg is on the WAN interface");
        wan_addresses.insert(a.endpoint.addr);
        calls.push(a);
    }
    assert_eq!(wan_addresses.len(), 2, "both WAN addresses share the load");
    // The LAN address (8 ports, one per call) is now full; the WAN has room.
    assert_eq!(allocate(0, 1), Err(ShardError::PortsExhausted));
    let e = allocate(1, 5).expect_err("no interface 5");
    assert!(matches!(e, ShardError::InvalidSpec(_)), "{e:?}");
    // Same port numbers on different addresses are different sockets.
    let a = calls[0];
    let from_phone = shard.handle_datagram(
        t0,
        RelayPort::new(a.endpoint.addr, a.endpoint.rtp),
        sa(PHONE),
        &SrtpTx::new(&master(1), 1, 1).next_rtp(),
    );
    assert_eq!(
        from_phone,
        Verdict::Forward { via: RelayPort::new(0, a.pbx.rtp), to: sa(PBX), framing: Framing::Unchanged }
    );
    let from_pbx =
        shard.handle_datagram(t0, RelayPort::new(0, a.pbx.rtp), sa(PBX), &SrtpTx::new(&master(2), 2, 1).next_rtp());
    assert_eq!(
        from_pbx,
        Verdict::Forward {
            via: RelayPort::new(a.endpoint.addr, a.endpoint.rtp),
            to: sa(PHONE),
            framing: Framing::Unchanged
        }
    );
    // Two calls with the same endpoint port number on the two WAN addresses
    // (8 calls over 2 × 8 ports, seeded: deterministic) are told apart.
    let (x, y) = calls
        .iter()
        .flat_map(|x| calls.iter().map(move |y| (x, y)))
        .find(|(x, y)| x.endpoint.rtp == y.endpoint.rtp && x.endpoint.addr != y.endpoint.addr)
        .expect("a port number used on both WAN addresses");
    for c in [x, y] {
        let v = shard.handle_datagram(
            t0,
            RelayPort::new(c.endpoint.addr, c.endpoint.rtp),
            sa(PHONE),
            &SrtpTx::new(&master(3), 3, 1).next_rtp(),
        );
        assert_eq!(
            v,
            Verdict::Forward { via: RelayPort::new(0, c.pbx.rtp), to: sa(PBX), framing: Framing::Unchanged },
            "each reaches its own call"
        );
    }
}

/// RFC 3605: an `a=rtcp:` port that is not the RTP port + 1 is where RTCP
/// goes until the RTCP port latches; an update can move it back.
#[test]
fn an_announced_rtcp_port_is_the_rtcp_destination_until_rtcp_latches() {
    let mut lab = Lab::new();
    let mut s = spec(LatchPolicy::Window);
    s.pbx = LegSpec { rtcp_mux: false, hint: Some(sa(PBX)), ..LegSpec::default() };
    s.endpoint = LegSpec { rtcp_mux: false, hint: Some(sa(PHONE)), ..LegSpec::default() };
    let a = lab.allocate(s).expect("allocate");
    let update = |port: u16| SessionUpdate {
        endpoint: LegUpdate { rtcp_port: Some(port), ..LegUpdate::default() },
        ..SessionUpdate::default()
    };
    let apply = |lab: &mut Lab, u: SessionUpdate| match lab.shard.handle_command(
        lab.t0,
        Command::Update { id: a.id, update: Box::new(u) },
        &mut lab.sockets,
    ) {
        Response::Updated(r) => r,
        other => panic!("unexpected {other:?}"),
    };
    apply(&mut lab, update(6000)).expect("update");
    let mut caller = SrtpTx::new(&master(1), 7, 10);
    let rtcp_port = a.pbx.rtcp.expect("pair");
    assert_eq!(
        lab.send(0, rtcp_port, sa("198.51.100.10:4001"), &caller.next_rtcp()),
        fwd(a.endpoint.rtcp.expect("pair"), "203.0.113.20:6000")
    );
    apply(&mut lab, update(0)).expect("back to port + 1");
    assert_eq!(
        lab.send(1, rtcp_port, sa("198.51.100.10:4001"), &caller.next_rtcp()),
        fwd(a.endpoint.rtcp.expect("pair"), "203.0.113.20:5005")
    );
}

/// Kernel offload, sans-IO: a route is offered only after userspace itself
/// forwarded RTP/RTCP from a leg's latched source; the kernel's counters
/// come back into the leg's and the shard's; a re-latch, an update or the
/// end of the session withdraws the routes (their last counters still
/// count); an idle session with routes asks for fresh counters before it
/// expires; `verify = all` is never offloaded.
#[test]
fn offload_routes_follow_userspace_decisions_and_their_counters_come_back() {
    use relay_core::shard::offload::{Offload, OffloadRoute, OffloadStats};
    use relay_core::shard::RelayPort;
    let defaults = SessionDefaults { idle_timeout: Duration::from_secs(10), ..SessionDefaults::default() };
    let mut lab = Lab::build(defaults.clone(), 1000, true);
    let mut s = spec(LatchPolicy::Window);
    s.pbx.hint = Some(sa(PBX));
    s.endpoint.hint = Some(sa(PHONE));
    let a = lab.allocate(s).expect("allocate");
    let (e, p) = (RelayPort::from(a.endpoint.rtp), RelayPort::from(a.pbx.rtp));
    let mut phone = SrtpTx::new(&master(2), 5, 10);
    let mut pbx = SrtpTx::new(&master(1), 6, 10);
    let limits = (defaults.limits.max_pps, defaults.limits.max_bytes_per_sec);
    let route = |local, from, via, to| OffloadRoute {
        local,
        from: sa(from),
        via,
        to: sa(to),
        max_pps: limits.0,
        max_bytes_per_sec: limits.1,
        // Both legs multiplex RTCP: it goes where the RTP goes.
        rtp: true,
        rtcp: true,
    };

    // STUN is never offloaded; RTP from the latched phone is, once.
    let stun = stun_request(b"pw", [1; 12]);
    assert_eq!(lab.send(0, e.port, sa(PHONE), &stun), fwd(p.port, PBX));
    assert_eq!(lab.shard.poll_offload(), None);
    let (first, second) = (phone.next_rtp(), phone.next_rtp());
    let userspace_bytes = (stun.len() + first.len() + second.len()) as u64;
    assert_eq!(lab.send(1, e.port, sa(PHONE), &first), fwd(p.port, PBX));
    assert_eq!(lab.shard.poll_offload(), Some(Offload::Install(route(e, PHONE, p, PBX))));
    assert_eq!(lab.send(2, e.port, sa(PHONE), &second), fwd(p.port, PBX));
    assert_eq!(lab.shard.poll_offload(), None, "installed once");
    assert_eq!(lab.send(3, p.port, sa(PBX), &pbx.next_rtp()), fwd(e.port, PHONE));
    assert_eq!(lab.shard.poll_offload(), Some(Offload::Install(route(p, PBX, e, PHONE))));

    // The kernel's counters: forwarded, dropped over the rate, activity.
    lab.shard.handle_offload_stats(
        lab.at(4000),
        e,
        OffloadStats { packets: 100, bytes: 17_200, rate_limited: 3, last_ago: Some(Duration::ZERO), last_rtp: None },
    );
    lab.shard.handle_offload_stats(
        lab.at(4000),
        e,
        OffloadStats { packets: 150, bytes: 25_800, rate_limited: 3, last_ago: Some(Duration::ZERO), last_rtp: None },
    );
    let c = lab.shard.counters();
    assert_eq!(c.drops.get(DropReason::RateLimited), 3);
    assert_eq!(c.packets_forwarded, 4 + 150, "userspace's 4, the kernel's 150 (not 250)");
    lab.assert_counters_add_up();
    let info = match lab.shard.handle_command(lab.at(4000), Command::Query { id: a.id }, &mut lab.sockets) {
        Response::Session(Ok(i)) => i,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        (info.endpoint.stats.packets_forwarded, info.endpoint.stats.bytes_forwarded),
        (153, 25_800 + userspace_bytes)
    );

    // Idle in userspace but active in the kernel: before expiring, the
    // shard asks for fresh counters, which keep the session.
    lab.shard.handle_timeout(lab.at(14_500), &mut lab.sockets);
    let mut two = [lab.shard.poll_offload(), lab.shard.poll_offload()];
    two.sort_by_key(|o| format!("{o:?}"));
    let mut want = [Some(Offload::Refresh(e)), Some(Offload::Refresh(p))];
    want.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(two, want, "fresh counters for both routes before expiring");
    lab.shard.handle_offload_stats(
        lab.at(14_510),
        e,
        OffloadStats {
            packets: 160,
            bytes: 27_520,
            rate_limited: 3,
            last_ago: Some(Duration::from_millis(10)),
            last_rtp: None,
        },
    );
    lab.shard.handle_timeout(lab.at(14_800), &mut lab.sockets);
    assert_eq!(lab.shard.counters().sessions_active, 1, "the kernel's traffic kept it alive");

    // An update (keys, hints, limits, policy, block) withdraws both
    // routes; their final counters still count.
    lab.shard.handle_command(
        lab.at(14_900),
        Command::Update { id: a.id, update: Box::new(SessionUpdate::default()) },
        &mut lab.sockets,
    );
    let mut two = [lab.shard.poll_offload(), lab.shard.poll_offload()];
    two.sort_by_key(|o| format!("{o:?}"));
    let mut want = [Some(Offload::Remove(e)), Some(Offload::Remove(p))];
    want.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(two, want, "an update withdraws both routes");
    lab.shard.handle_offload_stats(
        lab.at(14_950),
        e,
        OffloadStats { packets: 161, bytes: 27_692, rate_limited: 3, last_ago: Some(Duration::ZERO), last_rtp: None },
    );
    assert_eq!(lab.shard.counters().packets_forwarded, 4 + 161);
    lab.assert_counters_add_up();
    // Back in userspace; the next packet offers the route again.
    assert_eq!(lab.send(15_000, e.port, sa(PHONE), &phone.next_rtp()), fwd(p.port, PBX));
    assert_eq!(lab.shard.poll_offload(), Some(Offload::Install(route(e, PHONE, p, PBX))));

    // Idle everywhere: the refresh brings nothing new, the session ends
    // and its route is withdrawn.
    lab.shard.handle_timeout(lab.at(30_000), &mut lab.sockets);
    assert_eq!(lab.shard.poll_offload(), Some(Offload::Refresh(e)));
    lab.shard.handle_timeout(lab.at(30_300), &mut lab.sockets);
    assert_eq!(lab.shard.counters().sessions_active, 0);
    assert_eq!(lab.shard.poll_offload(), Some(Offload::Remove(e)));
    assert_eq!(lab.shard.poll_offload(), None);

    // verify = all: every packet needs its HMAC checked in userspace.
    let mut s = authenticated_spec();
    s.verify = Some(Verify::All);
    let b = lab.allocate(s).expect("allocate");
    let mut tx = SrtpTx::new(&master(2), 9, 10);
    let v = lab.send(31_000, b.endpoint.rtp, sa(PHONE), &tx.next_rtp());
    assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
    assert_eq!(lab.shard.poll_offload(), None);
}

/// A re-latch withdraws the kernel's routes at once: the kernel never keeps
/// forwarding for a source userspace no longer accepts, and the new source
/// is offered only from its next packet on.
#[test]
fn a_relatch_withdraws_the_kernel_routes_before_anything_else() {
    use relay_core::shard::offload::Offload;
    use relay_core::shard::RelayPort;
    let mut lab = Lab::build(SessionDefaults::default(), 1000, true);
    let mut s = spec(LatchPolicy::Window);
    s.pbx.hint = Some(sa(PBX));
    s.endpoint.hint = Some(sa(PHONE));
    let a = lab.allocate(s).expect("allocate");
    let e = RelayPort::from(a.endpoint.rtp);
    let mut tx = SrtpTx::new(&master(2), 5, 10);
    // A stranger speaks first and latches (ranked below the hinted phone).
    assert_eq!(lab.send(0, e.port, sa(ATTACKER), &tx.next_rtp()), fwd(a.pbx.rtp, PBX));
    assert!(matches!(lab.shard.poll_offload(), Some(Offload::Install(r)) if r.from == sa(ATTACKER)));
    // The hinted phone takes the leg back: the stranger's route goes first.
    assert_eq!(lab.send(1, e.port, sa(PHONE), &tx.next_rtp()), fwd(a.pbx.rtp, PBX));
    assert_eq!(lab.shard.poll_offload(), Some(Offload::Remove(e)));
    assert_eq!(lab.shard.poll_offload(), None, "nothing offered in the re-latching packet");
    assert_eq!(lab.send(2, e.port, sa(PHONE), &tx.next_rtp()), fwd(a.pbx.rtp, PBX));
    assert!(matches!(lab.shard.poll_offload(), Some(Offload::Install(r)) if r.from == sa(PHONE)));
    lab.assert_counters_add_up();
}

/// What the kernel forwards counts as seen: a copy of a packet the kernel
/// forwarded, sent from elsewhere to an `authenticated` leg, is a replay,
/// never a fresh proof that moves the leg (the replay memory used to stop
/// at the moment the route was installed, so any later packet captured on
/// the path re-latched the leg to its sender). A genuine roam with a newer
/// packet still re-latches, once the kernel's view is back in userspace.
#[test]
fn a_copy_of_a_packet_the_kernel_forwarded_never_relatches_an_authenticated_leg() {
    use relay_core::shard::offload::{Offload, OffloadStats};
    use relay_core::shard::RelayPort;
    use relay_core::wire::rtp::RtpHeader;
    let mut lab = Lab::build(SessionDefaults::default(), 1000, true);
    let mut s = authenticated_spec();
    s.endpoint.hint = Some(sa(PHONE));
    let a = lab.allocate(s).expect("allocate");
    let (e, p) = (RelayPort::from(a.endpoint.rtp), RelayPort::from(a.pbx.rtp));
    let mut phone = SrtpTx::new(&master(2), 5, 10);
    let mut pbx = SrtpTx::new(&master(1), 6, 10);
    assert_eq!(lab.send(0, e.port, sa(PHONE), &phone.next_rtp()), fwd(p.port, PBX));
    match lab.shard.poll_offload() {
        Some(Offload::Install(r)) => assert!(r.rtp && !r.rtcp, "a keyed leg offloads RTP only: {r:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(lab.send(1, p.port, sa(PBX), &pbx.next_rtp()), fwd(e.port, PHONE));
    assert!(matches!(lab.shard.poll_offload(), Some(Offload::Install(_))));
    // The kernel forwards the phone's next 100 packets; one is captured.
    let kernel: Vec<Vec<u8>> = (0..100).map(|_| phone.next_rtp()).collect();
    let captured = kernel[90].clone();
    let last = RtpHeader::parse(&kernel[99]).expect("rtp");
    // The copy, from elsewhere, before the driver's next read: the leg's
    // route is withdrawn first, the packet waits.
    assert_eq!(lab.send(10, e.port, sa(ATTACKER), &captured), Verdict::Drop(DropReason::KernelSync));
    assert_eq!(lab.shard.poll_offload(), Some(Offload::Remove(e)));
    assert_eq!(lab.shard.poll_offload(), None, "the PBX leg's route stays");
    assert_eq!(lab.send(11, e.port, sa(ATTACKER), &captured), Verdict::Drop(DropReason::KernelSync));
    // The route's last counters: 100 packets, the last one's index.
    let bytes = kernel.iter().map(|k| k.len() as u64).sum();
    let stats = OffloadStats {
        packets: 100,
        bytes,
        rate_limited: 0,
        last_ago: Some(Duration::ZERO),
        last_rtp: Some((last.ssrc(), last.sequence())),
    };
    lab.shard.handle_offload_stats(lab.at(12), e, stats);
    assert_eq!(lab.send(13, e.port, sa(ATTACKER), &captured), Verdict::Drop(DropReason::Replay));
    let info = lab.info(14, a.id);
    assert_eq!(info.endpoint.remote_rtp, Some(sa(PHONE)), "the leg stays with the phone");
    assert_eq!(info.endpoint.stats.packets_forwarded, 101);
    // A genuine roam, newer than anything the kernel forwarded, moves it.
    assert_eq!(lab.send(15, e.port, sa("203.0.113.99:40000"), &phone.next_rtp()), fwd(p.port, PBX));
    assert_eq!(lab.info(16, a.id).endpoint.remote_rtp, Some(sa("203.0.113.99:40000")));
    lab.assert_counters_add_up();
}

impl Lab {
    fn command(&mut self, ms: u64, cmd: Command) -> Response {
        let now = self.at(ms);
        self.shard.handle_command(now, cmd, &mut self.sockets)
    }

    fn export_all(&mut self, ms: u64) -> Vec<relay_core::session::SessionState> {
        match self.command(ms, Command::Export { after: None, limit: usize::MAX }) {
            Response::Exported(v) => v,
            other => panic!("{other:?}"),
        }
    }

    fn restore(&mut self, ms: u64, state: relay_core::session::SessionState) -> Result<AllocatedPorts, ShardError> {
        match self.command(ms, Command::Restore { state: Box::new(state), permit: None }) {
            Response::Restored(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn changes(&mut self, ms: u64) -> relay_core::shard::Changes {
        match self.command(ms, Command::Changes { limit: usize::MAX }) {
            Response::Changes(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn info(&mut self, ms: u64, id: relay_core::SessionId) -> relay_core::SessionInfo {
        match self.command(ms, Command::Query { id }) {
            Response::Session(Ok(i)) => i,
            other => panic!("{other:?}"),
        }
    }
}

/// A session carried from one shard to a fresh one with the same layout
/// (a standby taking over) goes on at once: same id and ports, the latched
/// addresses forward with no new latch, strangers stay out, counters and
/// the replay memory come along (a packet captured before the switch
/// cannot move the leg after it), keys keep verifying.
#[test]
fn an_exported_session_resumes_on_another_shard_with_its_latches_keys_and_counters() {
    let mut active = Lab::new();
    let a = active.allocate(authenticated_spec()).expect("allocate");
    let (p, e) = (a.pbx.rtp, a.endpoint.rtp);
    let mut phone = SrtpTx::new(&master(2), 0xabc, 100);
    let mut pbx = SrtpTx::new(&master(1), 0x123, 500);
    let mut captured = Vec::new();
    for i in 0..5 {
        let pkt = phone.next_rtp();
        captured.push(pkt.clone());
        assert_eq!(active.send(10 + i, e, sa(PHONE), &pkt), fwd(p, PBX));
        assert_eq!(active.send(10 + i, p, sa(PBX), &pbx.next_rtp()), fwd(e, PHONE));
    }
    assert_eq!(active.send(20, e, sa(ATTACKER), &rtp(1, 1, 1, 20)), Verdict::Drop(DropReason::Unauthenticated));
    let before = active.info(30, a.id);
    let states = active.export_all(1_000);
    assert_eq!(states.len(), 1);
    let state = states[0].clone().aged(Duration::from_millis(300));
    assert_eq!(state.endpoint.remote_rtp, Some(sa(PHONE)));
    assert!(state.endpoint.srtp_auth.is_some() && state.endpoint.stun_password.is_some());
    assert!(!format!("{state:?}").contains("pbx-ice-password"), "secrets stay out of Debug");

    let mut standby = Lab::new();
    let r = standby.restore(0, state).expect("restore");
    assert_eq!((r.id, r.pbx, r.endpoint), (a.id, a.pbx, a.endpoint));
    assert_eq!(standby.sockets.open.len(), active.sockets.open.len(), "the same ports are bound");
    // Media continues both ways with no new latch.
    assert_eq!(standby.send(10, e, sa(PHONE), &phone.next_rtp()), fwd(p, PBX));
    assert_eq!(standby.send(10, p, sa(PBX), &pbx.next_rtp()), fwd(e, PHONE));
    let after = standby.info(20, a.id);
    assert_eq!(after.endpoint.stats.latches, before.endpoint.stats.latches, "no new latch");
    assert_eq!(after.endpoint.stats.packets_forwarded, before.endpoint.stats.packets_forwarded + 1);
    assert_eq!(after.endpoint.stats.drops.get(DropReason::Unauthenticated), 1, "counters came along");
    // Strangers and captured packets get nothing after the switch either.
    assert_eq!(standby.send(30, e, sa(ATTACKER), &rtp(1, 1, 1, 20)), Verdict::Drop(DropReason::Unauthenticated));
    assert_eq!(standby.send(31, e, sa(ATTACKER), &captured[4]), Verdict::Drop(DropReason::Replay));
    // The keys still prove a genuine roam.
    assert_eq!(standby.send(40, e, sa("203.0.113.99:40000"), &phone.next_rtp()), fwd(p, PBX));
    // Timers run from the session's age: the idle timeout (60 s) counts
    // from the last packet, not from the restore.
    let restored = standby.export_all(50).remove(0);
    assert!(restored.age >= Duration::from_millis(1_300), "{:?}", restored.age);
}

/// A state from a shared store is input like any other: a clash (its slot
/// or a port in use, another shard's id, ports outside the range, bad
/// bounds) is refused with the reason and leaves nothing bound.
#[test]
fn restore_refuses_clashes_and_bad_states_and_leaks_nothing() {
    let mut active = Lab::new();
    let a = active.allocate(authenticated_spec()).expect("allocate");
    let state = active.export_all(0).remove(0);
    let mut standby = Lab::new();
    let taken = standby.allocate(spec(LatchPolicy::Window)).expect("allocate");
    let bound = standby.sockets.open.len();
    let conflict = |r: Result<AllocatedPorts, ShardError>| match r {
        Err(ShardError::RestoreConflict(reason)) => reason,
        other => panic!("expected a conflict, got {other:?}"),
    };
    // The standby's own session has the state's id (both minted the first
    // id of space 1): probe with another id.
    assert_eq!(taken.id, a.id);
    let probe = relay_core::session::SessionState { id: relay_core::SessionId(state.id.0 + 5), ..state.clone() };
    assert_eq!(conflict(standby.restore(1, state.clone())), RestoreClash::IdInUse);
    // The standby's own session holds a port the state wants.
    let mut clash = probe.clone();
    clash.endpoint.ports.rtp = taken.pbx.rtp;
    assert_eq!(conflict(standby.restore(1, clash)), RestoreClash::PortInUse);
    // Another shard's id; ports outside the range; an unknown address.
    let mut other = probe.clone();
    other.id = relay_core::SessionId(other.id.0 ^ (1 << 56));
    assert_eq!(conflict(standby.restore(1, other)), RestoreClash::OtherShard);
    let mut outside = probe.clone();
    outside.pbx.ports.rtp = 20_000;
    assert_eq!(conflict(standby.restore(1, outside)), RestoreClash::OutOfRange);
    let mut nowhere = probe.clone();
    nowhere.pbx.ports.addr = 7;
    assert_eq!(conflict(standby.restore(1, nowhere)), RestoreClash::UnknownAddress);
    // Bounds are checked like a spec's.
    let mut long = probe.clone();
    long.idle_timeout = Duration::from_secs(365 * 24 * 3600);
    assert!(matches!(standby.restore(1, long), Err(ShardError::InvalidSpec(_))));
    let mut odd = probe.clone();
    odd.pbx.ports.rtcp = Some(odd.pbx.ports.rtp + 3);
    assert!(matches!(standby.restore(1, odd), Err(ShardError::InvalidSpec(_))));
    // A forged record cannot aim latched media anywhere the peer policy
    // refuses: a metadata service, the relay itself, a private network.
    for bad in ["169.254.169.254:80", "127.0.0.1:40002", "10.0.0.1:5004"] {
        let mut aimed = probe.clone();
        aimed.endpoint.remote_rtp = Some(sa(bad));
        let r = standby.restore(1, aimed);
        assert!(
            matches!(&r, Err(ShardError::InvalidSpec(e)) if e.kind == relay_core::session::SpecErrorKind::AddressRefused),
            "{bad}: {r:?}"
        );
    }
    let mut keyless = probe.clone();
    keyless.endpoint.srtp_auth = None;
    keyless.endpoint.stun_password = None;
    assert!(matches!(standby.restore(1, keyless), Err(ShardError::InvalidSpec(_))), "authenticated needs keys");
    assert_eq!(standby.sockets.open.len(), bound, "nothing left bound by refused restores");
    // A standby serves nothing of its own: the state restores.
    assert!(matches!(standby.command(2, Command::Release { id: taken.id }), Response::Released(Ok(_))));
    standby.restore(2, state.clone()).expect("restore");
    assert_eq!(conflict(standby.restore(3, state.clone())), RestoreClash::IdInUse);
    // New allocations never collide with a restored id, even in the space
    // it was minted in.
    for _ in 0..50 {
        let n = standby.allocate(spec(LatchPolicy::Window)).expect("allocate");
        assert_ne!(n.id, a.id);
    }
    assert_eq!(standby.info(4, a.id).pbx.ports, a.pbx);
}

/// Ids are never handed out twice by two shards in different id spaces —
/// a cut-off active still minting in its epoch's space and the standby that
/// took its sessions over minting in the next — nor by one shard across
/// spaces; a restored session keeps its id whatever its space.
#[test]
fn ids_of_different_id_spaces_never_collide() {
    let mut active = Lab::new();
    let first: Vec<_> = (0..20).map(|_| active.allocate(spec(LatchPolicy::Window)).expect("allocate").id).collect();
    let states = active.export_all(0);
    // The standby restores every session, then serves under the next epoch.
    let mut standby = Lab::new();
    for s in &states {
        standby.restore(1, s.clone()).expect("restore");
    }
    assert!(matches!(standby.command(1, Command::SetIdSpace { space: 2 }), Response::IdSpaceSet));
    // Both keep allocating (the partition): sessions come and go on both.
    let mut seen: std::collections::HashSet<relay_core::SessionId> = first.iter().copied().collect();
    for round in 0..200 {
        for lab in [&mut active, &mut standby] {
            let n = lab.allocate(spec(LatchPolicy::Window)).expect("allocate");
            assert!(seen.insert(n.id), "id {} handed out twice (round {round})", n.id);
            assert!(matches!(lab.command(2, Command::Release { id: n.id }), Response::Released(Ok(_))));
        }
    }
    // Restored ids stay what they were; new ones carry the new space.
    for id in &first {
        assert_eq!(standby.info(3, *id).id, *id);
    }
    let n = standby.allocate(spec(LatchPolicy::Window)).expect("allocate");
    assert_eq!((n.id.space(), n.id.shard()), (2, 3));
    // Back in a space already used: ids of live sessions are skipped.
    assert!(matches!(active.command(4, Command::SetIdSpace { space: 7 }), Response::IdSpaceSet));
    let x = active.allocate(spec(LatchPolicy::Window)).expect("allocate");
    let mut probe = active.export_all(5).into_iter().find(|s| s.id == x.id).expect("live");
    probe.id = relay_core::SessionId(x.id.0 + 1);
    for p in [&mut probe.pbx.ports, &mut probe.endpoint.ports] {
        p.rtp += 200;
    }
    active.restore(6, probe.clone()).expect("restore the next serial");
    let y = active.allocate(spec(LatchPolicy::Window)).expect("allocate");
    assert_eq!(y.id.0, x.id.0 + 2, "the live restored id is skipped");
}

/// The change journal lists each created, updated, latched or restored
/// session once until pulled, with its current state, and every ended
/// one; a pull with nothing new is empty.
#[test]
fn the_change_journal_lists_what_changed_and_what_ended_once() {
    let mut lab = Lab::new();
    let a = lab.allocate(spec(LatchPolicy::Window)).expect("allocate");
    let b = lab.allocate(spec(LatchPolicy::Window)).expect("allocate");
    let c = lab.changes(0);
    assert_eq!(c.changed.iter().map(|s| s.id).collect::<Vec<_>>(), vec![a.id, b.id]);
    assert!(c.ended.is_empty() && !c.overflowed && !c.more);
    assert_eq!(lab.changes(1), relay_core::shard::Changes::default(), "nothing new");
    // A latch is a change; packets from the latched source are not.
    let mut phone = SrtpTx::new(&master(2), 1, 1);
    lab.send(10, a.endpoint.rtp, sa(PHONE), &phone.next_rtp());
    lab.send(11, a.endpoint.rtp, sa(PHONE), &phone.next_rtp());
    let c = lab.changes(20);
    assert_eq!(c.changed.len(), 1);
    assert_eq!((c.changed[0].id, c.changed[0].endpoint.remote_rtp), (a.id, Some(sa(PHONE))));
    lab.send(30, a.endpoint.rtp, sa(PHONE), &phone.next_rtp());
    assert!(lab.changes(31).changed.is_empty(), "forwarding alone is not a change");
    // Updates are changes; several before a pull are listed once.
    let upd =
        || SessionUpdate { pbx: LegUpdate { hint: Some(sa(PBX)), ..LegUpdate::default() }, ..SessionUpdate::default() };
    for ms in [40, 41, 42] {
        assert!(matches!(
            lab.command(ms, Command::Update { id: b.id, update: Box::new(upd()) }),
            Response::Updated(Ok(()))
        ));
    }
    let c = lab.changes(43);
    assert_eq!(c.changed.len(), 1);
    assert_eq!(c.changed[0].pbx.hint, Some(sa(PBX)));
    // Releases and expiries end sessions.
    assert!(matches!(lab.command(50, Command::Release { id: a.id }), Response::Released(Ok(_))));
    lab.shard.handle_timeout(lab.at(3_600_000), &mut lab.sockets);
    let c = lab.changes(3_600_001);
    assert!(c.changed.is_empty());
    assert_eq!(c.ended, vec![a.id, b.id]);
    // A limit leaves the rest for the next pull.
    let ids: Vec<_> = (0..5).map(|_| lab.allocate(spec(LatchPolicy::Window)).expect("allocate").id).collect();
    match lab.command(3_600_002, Command::Changes { limit: 2 }) {
        Response::Changes(c) => assert_eq!((c.changed.len(), c.more), (2, true)),
        other => panic!("{other:?}"),
    }
    assert_eq!(lab.changes(3_600_003).changed.iter().map(|s| s.id).collect::<Vec<_>>(), ids[2..].to_vec());
}

/// Ended ids are bounded: past `MAX_ENDED` between two pulls the journal
/// forgets them and says so (the puller resynchronizes).
#[test]
fn the_change_journal_is_bounded_and_says_when_it_overflowed() {
    let mut lab = Lab::with(SessionDefaults::default(), 8);
    for _ in 0..=relay_core::shard::journal::MAX_ENDED {
        let a = lab.allocate(spec(LatchPolicy::Window)).expect("allocate");
        assert!(matches!(lab.command(0, Command::Release { id: a.id }), Response::Released(Ok(_))));
        lab.shard.handle_timeout(lab.at(0), &mut lab.sockets);
    }
    let c = lab.changes(1);
    assert!(c.overflowed);
    assert!(c.ended.len() < 10, "{}", c.ended.len());
    assert!(!lab.changes(2).overflowed, "said once");
}
