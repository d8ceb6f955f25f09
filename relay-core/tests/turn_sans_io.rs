//! The TURN server driven without sockets, in virtual time: every request
//! of RFC 8656 as a client writes it, the answers checked as a client
//! reads them (integrity with the client's own key), the relaying decisions
//! checked byte for byte, and the refusals performed.

mod turn_lab;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use relay_core::quota::{TenantLimit, TenantQuotas};
use relay_core::turn::auth::{long_term_key_md5, long_term_key_sha256, RestSecrets};
use relay_core::turn::proto::*;
use relay_core::turn::*;
use relay_core::wire::stun::{StunClass, StunMessage, ATTR_USERNAME};
use relay_core::wire::stun_writer::{StunWriter, ATTR_XOR_MAPPED_ADDRESS};
use turn_lab::*;

#[test]
fn allocate_is_challenged_then_answered_signed_once_its_port_is_open() {
    let mut lab = Lab::new();
    let mut c = Client::rest("198.51.100.1:5000", "wave-42");
    let first = c.request(Method::Allocate, &[udp_transport()]);
    let challenge = reply(lab.send(c.key, &first));
    assert_eq!(error_code(&challenge), Some(401));
    c.nonce = text(&challenge, ATTR_NONCE);
    let req = c.request(Method::Allocate, &[udp_transport()]);
    assert_eq!(lab.send(c.key, &req), ClientOutput::Pending, "answered once the port is open");
    let commands = lab.commands();
    let [Command::OpenRelay { relay, bind }] = commands.as_slice() else { panic!("{commands:?}") };
    assert_eq!(bind.ip(), RELAY_IP.parse::<IpAddr>().expect("ip"));
    assert!((20000..=20009).contains(&bind.port()) && bind.port() == relay.port);
    lab.server.handle_relay_opened(lab.now(), *relay, true);
    let commands = lab.commands();
    let [Command::Send { client, message }] = commands.as_slice() else { panic!("{commands:?}") };
    assert_eq!(*client, c.key);
    let msg = StunMessage::parse(message).expect("stun");
    assert!(msg.verify_integrity(&c.md5) && msg.verify_fingerprint());
    assert_eq!(msg.message_type(), 0x0103);
    assert_eq!(msg.xor_address(ATTR_XOR_RELAYED_ADDRESS), Some(*bind));
    assert_eq!(msg.xor_address(ATTR_XOR_MAPPED_ADDRESS), Some(c.key.source));
    assert_eq!(msg.attribute(ATTR_LIFETIME).expect("lifetime").value, 600u32.to_be_bytes());
    // A retransmission gets the same answer; another Allocate is 437.
    assert_eq!(reply(lab.send(c.key, &req)), *message);
    assert_eq!(c.ask(&mut lab, Method::Allocate, &[udp_transport()]), Some(437));
    assert_eq!(lab.server.allocations_by_tenant().get("acme"), Some(&1));
    assert_eq!(lab.server.stats().requests(Method::Allocate, None), 2);
    assert_eq!(lab.server.stats().requests(Method::Allocate, Some(ErrorCode::Unauthorized)), 1);
}

#[test]
fn wrong_expired_stale_and_foreign_credentials_are_refused() {
    let mut lab = Lab::new();
    // A wrong password.
    let mut wrong = Client::with_password("198.51.100.2:5000", "alice", "looking-glass");
    assert_eq!(wrong.allocate(&mut lab, &[]), Err(401));
    // The static user with the right one, and with SHA-256 integrity.
    let mut alice = Client::with_password("198.51.100.2:5001", "alice", "wonderland");
    assert!(alice.allocate(&mut lab, &[]).is_ok());
    // Requests on an allocation must use the credentials that made it.
    let mut other = Client::with_password("198.51.100.2:5001", "bob", "builder");
    other.nonce = alice.nonce.clone();
    let req = other.request(Method::Refresh, &[]);
    assert_eq!(error_code(&reply(lab.send(other.key, &req))), Some(441));
    // REST credentials that expired.
    let (username, password) = RestSecrets::new(vec![SECRET.to_vec()])
        .issue("late", T0_UNIX - 7200, Duration::from_secs(3600))
        .expect("issued");
    let mut late = Client::with_password("198.51.100.3:5000", &username, &password);
    assert_eq!(late.allocate(&mut lab, &[]), Err(401));
    // REST credentials signed by another secret.
    let (username, password) =
        RestSecrets::new(vec![b"other".to_vec()]).issue("mallory", T0_UNIX, Duration::from_secs(3600)).expect("issued");
    let mut forged = Client::with_password("198.51.100.4:5000", &username, &password);
    assert_eq!(forged.allocate(&mut lab, &[]), Err(401));
    // A nonce issued to another address.
    let mut thief = Client::rest("198.51.100.5:5000", "thief");
    thief.nonce = alice.nonce.clone();
    assert_eq!(thief.allocate(&mut lab, &[]), Err(401));
    // A stale nonce: 438 with a fresh one, which works.
    let mut slow = Client::rest("198.51.100.6:5000", "slow");
    let first = slow.request(Method::Allocate, &[udp_transport()]);
    slow.nonce = text(&reply(lab.send(slow.key, &first)), ATTR_NONCE);
    lab.advance(Duration::from_secs(3601));
    let req = slow.request(Method::Allocate, &[udp_transport()]);
    let stale = reply(lab.send(slow.key, &req));
    assert_eq!(error_code(&stale), Some(438));
    assert_ne!(text(&stale, ATTR_NONCE), slow.nonce);
    // (The REST credentials themselves expired meanwhile: fresh ones.)
    let mut fresh = Client::rest("198.51.100.6:5000", "slow");
    fresh.nonce = text(&stale, ATTR_NONCE);
    // Issued at T0 for an hour: still expired at T0 + 3601; issue anew.
    let (username, password) = RestSecrets::new(vec![SECRET.to_vec()])
        .issue("slow", T0_UNIX + 3601, Duration::from_secs(3600))
        .expect("issued");
    fresh.username = username.clone();
    fresh.md5 = long_term_key_md5(&username, REALM, &password);
    assert!(fresh.allocate(&mut lab, &[]).is_ok());
}

#[test]
fn sha256_integrity_is_verified_and_answered_in_kind() {
    let mut lab = Lab::new();
    let key = udp("198.51.100.7:5000");
    let first = StunWriter::new(0x0003, [1; 12]);
    let mut first = first;
    first.attribute(ATTR_REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0]);
    let nonce = text(&reply(lab.send(key, &first.finish())), ATTR_NONCE);
    let sha = long_term_key_sha256("alice", REALM, "wonderland");
    let mut w = StunWriter::new(0x0003, [2; 12]);
    w.attribute(ATTR_REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0])
        .attribute(ATTR_USERNAME, b"alice")
        .attribute(ATTR_REALM, REALM.as_bytes())
        .attribute(ATTR_NONCE, nonce.as_bytes())
        .message_integrity_sha256(&sha);
    assert_eq!(lab.send(key, &w.finish()), ClientOutput::Pending);
    let answers = lab.open_relays();
    let msg = StunMessage::parse(&answers[0].1).expect("stun");
    assert!(msg.verify_integrity_sha256(&sha));
    // A wrong SHA-256 key is refused.
    let mut w = StunWriter::new(0x0003, [3; 12]);
    w.attribute(ATTR_REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0])
        .attribute(ATTR_USERNAME, b"alice")
        .attribute(ATTR_REALM, REALM.as_bytes())
        .attribute(ATTR_NONCE, nonce.as_bytes())
        .message_integrity_sha256(&[0; 32]);
    let key2 = udp("198.51.100.7:5001");
    let nonce2 = {
        let mut f = StunWriter::new(0x0003, [4; 12]);
        f.attribute(ATTR_REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0]);
        text(&reply(lab.send(key2, &f.finish())), ATTR_NONCE)
    };
    assert_eq!(nonce2.len(), nonce.len());
    assert_eq!(error_code(&reply(lab.send(key, &w.finish()))), Some(401), "wrong key on the same 5-tuple");
}

/// RFC 8489 §9.2.2: a request naming no PASSWORD-ALGORITHM uses the MD5
/// long-term key, whichever MESSAGE-INTEGRITY it carries.
#[test]
fn sha256_integrity_keyed_with_the_md5_key_as_rfc_8489_says_is_verified_too() {
    let mut lab = Lab::new();
    let key = udp("198.51.100.7:6000");
    let mut first = StunWriter::new(0x0003, [1; 12]);
    first.attribute(ATTR_REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0]);
    let nonce = text(&reply(lab.send(key, &first.finish())), ATTR_NONCE);
    let md5 = long_term_key_md5("alice", REALM, "wonderland");
    let signed = |txid: u8, method: u16, attrs: &[(u16, &[u8])], sha256: bool| {
        let mut w = StunWriter::new(method, [txid; 12]);
        for (kind, value) in attrs {
            w.attribute(*kind, value);
        }
        w.attribute(ATTR_USERNAME, b"alice")
            .attribute(ATTR_REALM, REALM.as_bytes())
            .attribute(ATTR_NONCE, nonce.as_bytes());
        match sha256 {
            true => w.message_integrity_sha256(&md5),
            false => w.message_integrity(&md5),
        };
        w.finish()
    };
    let transport = [TRANSPORT_UDP, 0, 0, 0];
    let allocate = signed(2, 0x0003, &[(ATTR_REQUESTED_TRANSPORT, &transport)], true);
    assert_eq!(lab.send(key, &allocate), ClientOutput::Pending);
    let answers = lab.open_relays();
    let msg = StunMessage::parse(&answers[0].1).expect("stun");
    assert!(msg.verify_integrity_sha256(&md5), "answered with MESSAGE-INTEGRITY-SHA256 under the same key");
    // Requests on it keep that key and algorithm.
    let refresh = signed(3, 0x0004, &[], true);
    let answer = reply(lab.send(key, &refresh));
    assert_eq!(error_code(&answer), None);
    assert!(StunMessage::parse(&answer).expect("stun").verify_integrity_sha256(&md5));
    let refresh = signed(4, 0x0004, &[], false);
    assert_eq!(error_code(&reply(lab.send(key, &refresh))), Some(401), "not another algorithm");
}

#[test]
fn send_indications_and_channel_data_are_relayed_both_ways_byte_exact() {
    let mut lab = Lab::new();
    let mut c = Client::rest("198.51.100.8:5000", "browser");
    let relayed = c.relayed(&mut lab);
    let relay = RelayId { family: Family::V4, port: relayed.port() };
    let peer = addr("192.0.2.50:7000");

    // Without a permission, nothing passes either way.
    let send = |c: &mut Client, data: &[u8]| {
        let txid = c.next_txid();
        let mut w = StunWriter::new(message_type(Method::Send, StunClass::Indication), txid);
        w.xor_address(ATTR_XOR_PEER_ADDRESS, peer).attribute(ATTR_DATA, data);
        w.finish()
    };
    let ind = send(&mut c, b"hello peer");
    assert_eq!(lab.send(c.key, &ind), ClientOutput::Drop(TurnDrop::NoPermission));
    assert_eq!(lab.server.handle_peer(lab.now(), relay, peer, b"x"), PeerOutput::Drop(TurnDrop::NoPermission));

    assert_eq!(c.permit(&mut lab, peer), None);
    let ind = send(&mut c, b"hello peer");
    let ClientOutput::Relay { relay: r, peer: p, payload } = lab.send(c.key, &ind) else { panic!("relayed") };
    assert_eq!((r, p, &ind[payload]), (relay, peer, &b"hello peer"[..]));
    // The peer answers: a Data indication with its bytes and address.
    let PeerOutput::Indication { client, message } = lab.server.handle_peer(lab.now(), relay, peer, b"hi client")
    else {
        panic!("indication")
    };
    assert_eq!(client, c.key);
    let msg = StunMessage::parse(&message).expect("stun");
    assert_eq!(msg.message_type(), 0x0017);
    assert_eq!(msg.xor_address(ATTR_XOR_PEER_ADDRESS), Some(peer));
    assert_eq!(msg.attribute(ATTR_DATA).expect("data").value, b"hi client");

    // A channel: ChannelData both ways, the header taken off and put on.
    assert_eq!(c.bind(&mut lab, 0x4001, peer), None);
    let mut cd = ChannelData::header(0x4001, 5).to_vec();
    cd.extend_from_slice(b"media\0\0\0");
    let ClientOutput::Relay { payload, .. } = lab.send(c.key, &cd) else { panic!("relayed") };
    assert_eq!(&cd[payload], b"media", "the padding is not data");
    let PeerOutput::Channel { client, header } = lab.server.handle_peer(lab.now(), relay, peer, b"back!!") else {
        panic!("channel")
    };
    assert_eq!((client, header), (c.key, ChannelData::header(0x4001, 6)));
    // An unbound channel and another allocation's client are dropped.
    let mut stray = ChannelData::header(0x4002, 1).to_vec();
    stray.push(0);
    assert_eq!(lab.send(c.key, &stray), ClientOutput::Drop(TurnDrop::NoChannel));
    assert_eq!(lab.send(udp("198.51.100.9:1"), &cd), ClientOutput::Drop(TurnDrop::NoAllocation));
    // Conflicting bindings are 400.
    assert_eq!(c.bind(&mut lab, 0x4001, addr("192.0.2.51:7000")), Some(400));
    assert_eq!(c.bind(&mut lab, 0x3fff, addr("192.0.2.51:7000")), Some(400));
    let stats = lab.server.stats();
    assert_eq!((stats.to_peer_packets, stats.to_peer_bytes), (2, 15));
    assert_eq!((stats.to_client_packets, stats.to_client_bytes), (2, 15));
    assert_eq!(stats.drops(TurnDrop::NoPermission), 2);

    // Permissions expire after 5 minutes unless refreshed; the channel
    // (10 minutes) does not keep the permission alive by itself.
    lab.advance(Duration::from_secs(301));
    let ClientOutput::Drop(TurnDrop::NoPermission) = lab.send(c.key, &cd) else { panic!("permission expired") };
}

/// A server under `limits` with offloading on and a client with channel
/// 0x4001 bound to a peer (announced to the kernel; the commands not yet
/// taken): the lab, the client, its allocation's relayed socket, the peer.
fn a_channel_offered_to_the_kernel(limits: TurnLimits) -> (Lab, Client, RelayId, SocketAddr) {
    let mut lab = Lab::with(limits, None);
    let mut c = Client::rest("198.51.100.8:5000", "browser");
    let relayed = c.relayed(&mut lab);
    let relay = RelayId { family: Family::V4, port: relayed.port() };
    let peer = addr("192.0.2.50:7000");
    lab.server.enable_offload(lab.now().instant);
    assert_eq!(c.bind(&mut lab, 0x4001, peer), None);
    (lab, c, relay, peer)
}

#[test]
fn a_client_splitting_its_traffic_between_kernel_channels_and_indications_gets_one_rate() {
    const RATE: u64 = 10_000;
    let limits = TurnLimits { bytes_per_second: RATE, burst_bytes: RATE, ..TurnLimits::default() };
    let (mut lab, mut c, relay, peer) = a_channel_offered_to_the_kernel(limits);
    // The kernel takes the channel with the allocation's whole budget.
    let budgets: Vec<Option<u64>> = lab
        .commands()
        .into_iter()
        .filter_map(|cmd| match cmd {
            Command::OffloadChannel(o) => Some(o.budget),
            _ => None,
        })
        .collect();
    assert_eq!(budgets, [Some(RATE)], "one announcement, the budget handed over once");

    let payload = [0x5au8; 1000];
    let indication = |c: &mut Client| {
        let txid = c.next_txid();
        let mut w = StunWriter::new(message_type(Method::Send, StunClass::Indication), txid);
        w.xor_address(ATTR_XOR_PEER_ADDRESS, peer).attribute(ATTR_DATA, &payload);
        w.finish()
    };
    // The attack: channel traffic at the full rate in the kernel (its
    // burst first), and Send indications offered at twice the rate on top,
    // for ten seconds. The kernel reports every 500 ms.
    let (mut kernel_bytes, mut userspace_bytes) = (0u64, 0u64);
    for step in 0..20 {
        let reported = if step == 0 { RATE + RATE / 2 } else { RATE / 2 };
        lab.advance(Duration::from_millis(500));
        lab.commands();
        let counts = offload::OffloadCounts { to_peer_bytes: reported, to_peer_packets: 10, ..Default::default() };
        lab.server.handle_offload_counts(lab.now().instant, relay, counts);
        kernel_bytes += reported;
        for _ in 0..10 {
            let ind = indication(&mut c);
            match lab.send(c.key, &ind) {
                ClientOutput::Relay { payload: p, .. } => userspace_bytes += p.len() as u64,
                ClientOutput::Drop(TurnDrop::RateLimited) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    // One rate for both paths: over 10 s, at most 10 s of rate, the two
    // bursts and one report's lag — not a second rate for indications.
    assert!(
        kernel_bytes + userspace_bytes <= 10 * RATE + 2 * RATE + RATE / 2,
        "kernel {kernel_bytes} + userspace {userspace_bytes} bytes in 10 s at {RATE} B/s"
    );
    assert!(lab.server.stats().drops(TurnDrop::RateLimited) >= 180, "the indications over the rate were dropped");
    // Everything was counted as relayed, by either path.
    assert_eq!(lab.server.stats().to_peer_bytes, kernel_bytes + userspace_bytes);

    // The kernel goes quiet: once the debt is repaid, indications pass at
    // the allocation's rate again.
    lab.advance(Duration::from_secs(2));
    let passed = (0..20)
        .filter(|_| {
            let ind = indication(&mut c);
            matches!(lab.send(c.key, &ind), ClientOutput::Relay { .. })
        })
        .count();
    assert!((1..=10).contains(&passed), "{passed} indications of 1 000 bytes after the debt was repaid");
}

#[test]
fn what_the_kernel_relays_from_the_budget_handed_to_it_is_not_paid_for_again() {
    let limits = TurnLimits::default();
    let (mut lab, _, relay, _) = a_channel_offered_to_the_kernel(limits);
    lab.commands();
    // 1 ms later the kernel reports 2 000 bytes relayed on the channel (of
    // the 256 KiB burst handed to it); another port of the peer sends 1 000
    // bytes, which userspace relays in a Data indication: 1 ms of refill
    // (2 000 bytes at 2 MB/s) pays for them. Charging the kernel's bytes
    // here again dropped them.
    lab.advance(Duration::from_millis(1));
    let counts = offload::OffloadCounts { to_peer_bytes: 2_000, to_peer_packets: 20, ..Default::default() };
    lab.server.handle_offload_counts(lab.now().instant, relay, counts);
    let other = addr("192.0.2.50:7001");
    let out = lab.server.handle_peer(lab.now(), relay, other, &[7; 1_000]);
    assert!(matches!(out, PeerOutput::Indication { .. }), "{out:?}");
    // Beyond the loan the kernel's bytes are paid for here: the loan's
    // rest and 12 000 bytes more take the 3 000 held and owe 9 000, which
    // 4.5 ms of refill repay before anything passes.
    lab.advance(Duration::from_millis(1));
    let beyond = limits.burst_bytes - 2_000 + 12_000;
    let counts = offload::OffloadCounts { to_client_bytes: beyond, to_client_packets: 200, ..Default::default() };
    lab.server.handle_offload_counts(lab.now().instant, relay, counts);
    assert_eq!(lab.server.handle_peer(lab.now(), relay, other, &[7; 1]), PeerOutput::Drop(TurnDrop::RateLimited));
    lab.advance(Duration::from_micros(4_400));
    assert_eq!(lab.server.handle_peer(lab.now(), relay, other, &[7; 1]), PeerOutput::Drop(TurnDrop::RateLimited));
    lab.advance(Duration::from_micros(200));
    let out = lab.server.handle_peer(lab.now(), relay, other, &[7; 100]);
    assert!(matches!(out, PeerOutput::Indication { .. }), "{out:?}");
}

#[test]
fn repeated_requests_cost_no_kernel_map_writes_for_every_channel() {
    let mut lab = Lab::new();
    let mut c = Client::rest("198.51.100.8:5000", "browser");
    c.relayed(&mut lab);
    lab.server.enable_offload(lab.now().instant);
    let announced =
        |lab: &mut Lab| lab.commands().into_iter().filter(|cmd| matches!(cmd, Command::OffloadChannel(_))).count();
    // 64 channels (the default cap), to peers on one address: each
    // ChannelBind announces its own channel, not all of them again.
    let peer = |i: u16| addr(&format!("192.0.2.50:{}", 7000 + i));
    for i in 0..64 {
        assert_eq!(c.bind(&mut lab, 0x4000 + i, peer(i)), None);
    }
    assert_eq!(announced(&mut lab), 64, "one announcement per channel bound");

    // The attack: CreatePermission for their address, 100 times in 10 s.
    // Each moves every channel's deadline (the permission's) a little.
    let mut flood = 0;
    for _ in 0..100 {
        lab.advance(Duration::from_millis(100));
        assert_eq!(c.permit(&mut lab, peer(0)), None);
        flood += announced(&mut lab);
    }
    assert!(flood <= 64, "{flood} announcements (map writes for 64 channels each) for 100 repeated requests");

    // A deadline that moves materially is announced: the kernel follows.
    lab.advance(Duration::from_secs(60));
    assert_eq!(c.permit(&mut lab, peer(0)), None);
    assert_eq!(announced(&mut lab), 64, "every channel's route extended");
    // The permission lapses (its kernel routes with it); renewed, a moment
    // later, every route is announced again at once.
    lab.advance(Duration::from_secs(301));
    lab.commands();
    assert_eq!(c.permit(&mut lab, peer(0)), None);
    assert_eq!(announced(&mut lab), 64, "every lapsed route back in the kernel");
}

#[test]
fn internal_and_own_peers_are_forbidden_in_every_encoding_unless_allow_listed() {
    let mut lab = Lab::new();
    let mut c = Client::rest("198.51.100.10:5000", "probe");
    c.relayed(&mut lab);
    for peer in [
        "127.0.0.1:22",
        "[::1]:22",
        "[::ffff:127.0.0.1]:22",
        "10.0.0.1:5060",
        "192.168.1.1:80",
        "172.16.0.1:80",
        "100.64.0.1:80",
        "169.254.169.254:80",
        "[fe80::1]:80",
        "168.63.129.16:80",
        "224.0.0.1:5000",
        "255.255.255.255:5000",
        "0.0.0.0:5000",
        "[64:ff9b::7f00:1]:22",
        "[2002:7f00:1::1]:22",
        "[::ffff:169.254.169.254]:80",
    ] {
        let peer = addr(peer);
        let family_ok = Family::of(relay_core::peer::canonical(peer)) == Family::V4;
        let expected = if family_ok { 403 } else { 443 };
        assert_eq!(c.permit(&mut lab, peer), Some(expected), "CreatePermission for {peer}");
        assert_eq!(c.bind(&mut lab, 0x4000, peer), Some(expected), "ChannelBind to {peer}");
    }
    // The relay's own listener on its public address: the IP may be
    // permitted (another client's relayed address lives there), a channel
    // to the listener's port may not, nor may a Send indication reach it.
    let admin = addr(ADMIN);
    assert_eq!(c.permit(&mut lab, admin), None);
    assert_eq!(c.bind(&mut lab, 0x4000, admin), Some(403));
    let mut w = StunWriter::new(0x0016, [9; 12]);
    w.xor_address(ATTR_XOR_PEER_ADDRESS, admin).attribute(ATTR_DATA, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(lab.send(c.key, &w.finish()), ClientOutput::Drop(TurnDrop::Forbidden));
    // Another client's relayed address on this server is a fine peer.
    let mut d = Client::rest("198.51.100.11:5000", "callee");
    let other = d.relayed(&mut lab);
    assert_eq!(c.bind(&mut lab, 0x4000, other), None);
    // The realm's allow-listed PBX network is reachable.
    assert_eq!(c.bind(&mut lab, 0x4001, addr("10.20.3.4:5060")), None);
    assert_eq!(c.permit(&mut lab, addr("10.21.0.1:5060")), Some(403));
}

#[test]
fn quotas_per_user_and_tenant_and_ports_are_enforced() {
    let limits = TurnLimits { allocations_per_user: 2, ..TurnLimits::default() };
    let quotas = Arc::new(TenantQuotas::new(TenantLimit { sessions: None, ports: Some(5) }));
    let mut lab = Lab::with(limits, Some(quotas.clone()));
    let mut held = Vec::new();
    for port in 0..2 {
        let mut c = Client::rest(&format!("198.51.100.20:{}", 6000 + port), "greedy");
        c.relayed(&mut lab);
        held.push(c);
    }
    let mut third = Client::rest("198.51.100.20:6002", "greedy");
    assert_eq!(third.allocate(&mut lab, &[]), Err(486), "per user");
    for i in 0..3 {
        let mut c = Client::rest(&format!("198.51.100.21:{}", 6000 + i), &format!("user{i}"));
        c.relayed(&mut lab);
        held.push(c);
    }
    assert_eq!(quotas.ports_in_use("acme"), 5);
    let mut over = Client::rest("198.51.100.22:6000", "another");
    assert_eq!(over.allocate(&mut lab, &[]), Err(486), "tenant's ports");
    // Deleting one (Refresh with lifetime 0) frees its quota and port.
    assert_eq!(held[0].ask(&mut lab, Method::Refresh, &[(ATTR_LIFETIME, vec![0; 4])]), None);
    assert!(matches!(lab.commands().as_slice(), [Command::CloseRelay { .. }]));
    assert_eq!(quotas.ports_in_use("acme"), 4);
    assert!(over.allocate(&mut lab, &[]).is_ok());

    // Without tenant quotas, the port range (10 ports) is the limit: 508.
    let mut lab = Lab::new();
    for i in 0..10 {
        Client::rest(&format!("198.51.100.30:{}", 6000 + i), &format!("u{i}")).relayed(&mut lab);
    }
    assert_eq!(Client::rest("198.51.100.31:6000", "late").allocate(&mut lab, &[]), Err(508));
}

#[test]
fn lifetimes_expire_refresh_and_free_the_port() {
    let mut lab = Lab::new();
    let mut c = Client::rest("198.51.100.40:5000", "short");
    let relayed = c.relayed(&mut lab);
    assert!(lab.server.poll_timeout().is_some());
    // Refresh asks for 30 s: the default (600 s) is the least granted.
    let req = c.request(Method::Refresh, &[(ATTR_LIFETIME, 30u32.to_be_bytes().to_vec())]);
    let answer = reply(lab.send(c.key, &req));
    assert_eq!(
        StunMessage::parse(&answer).expect("stun").attribute(ATTR_LIFETIME).expect("lifetime").value,
        600u32.to_be_bytes()
    );
    // Past the first lifetime but refreshed: still there.
    lab.advance(Duration::from_secs(599));
    assert_eq!(c.ask(&mut lab, Method::Refresh, &[(ATTR_LIFETIME, 99_999u32.to_be_bytes().to_vec())]), None);
    lab.advance(Duration::from_secs(601));
    assert_eq!(lab.server.allocations().count(), 1, "refreshed to the maximum (3600 s)");
    lab.advance(Duration::from_secs(3000));
    assert_eq!(lab.server.allocations().count(), 0);
    assert_eq!(
        lab.commands(),
        vec![Command::CloseRelay { relay: RelayId { family: Family::V4, port: relayed.port() } }]
    );
    assert_eq!(lab.server.stats().expired, 1);
    let mut cd = ChannelData::header(0x4000, 1).to_vec();
    cd.push(0);
    assert_eq!(lab.send(c.key, &cd), ClientOutput::Drop(TurnDrop::NoAllocation), "gone");
}

#[test]
fn a_refresh_that_shortens_the_lifetime_ends_it_on_time_however_often_it_comes() {
    let mut lab = Lab::new();
    let mut c = Client::rest("198.51.100.41:5000", "shrinking");
    let answer = c.allocate(&mut lab, &[(ATTR_LIFETIME, 3600u32.to_be_bytes().to_vec())]).expect("allocated");
    let relay = RelayId { family: Family::V4, port: relayed_addresses(&answer)[0].port() };
    // Alternating long and short lifetimes, many times (each would leave a
    // look behind), ending on the short one: 600 s from the last.
    for i in 0..200u32 {
        let lifetime = if i % 2 == 0 { 3600u32 } else { 600 };
        assert_eq!(c.ask(&mut lab, Method::Refresh, &[(ATTR_LIFETIME, lifetime.to_be_bytes().to_vec())]), None);
    }
    lab.advance(Duration::from_secs(599));
    assert!(lab.commands().is_empty(), "not yet");
    lab.advance(Duration::from_secs(2));
    assert_eq!(lab.commands(), vec![Command::CloseRelay { relay }], "600 s after the last Refresh, not 3600");
}

#[test]
fn even_port_reservations_pair_rtp_and_rtcp() {
    let mut lab = Lab::new();
    let mut rtp = Client::rest("198.51.100.50:5000", "phone");
    let answer = rtp.allocate(&mut lab, &[(ATTR_EVEN_PORT, vec![0x80])]).expect("allocated");
    let msg = StunMessage::parse(&answer).expect("stun");
    let relayed = msg.xor_address(ATTR_XOR_RELAYED_ADDRESS).expect("relayed");
    assert_eq!(relayed.port() % 2, 0);
    let token = msg.attribute(ATTR_RESERVATION_TOKEN).expect("token").value.to_vec();
    let mut rtcp = Client::rest("198.51.100.50:5001", "phone");
    let answer = rtcp.allocate(&mut lab, &[(ATTR_RESERVATION_TOKEN, token.clone())]).expect("allocated");
    let odd = StunMessage::parse(&answer).expect("stun").xor_address(ATTR_XOR_RELAYED_ADDRESS).expect("relayed");
    assert_eq!(odd.port(), relayed.port() + 1);
    // A token is good once; and it is not to be combined with EVEN-PORT.
    let mut again = Client::rest("198.51.100.50:5002", "phone2");
    assert_eq!(again.allocate(&mut lab, &[(ATTR_RESERVATION_TOKEN, token.clone())]), Err(508));
    let mut both = Client::rest("198.51.100.50:5003", "phone3");
    assert_eq!(both.allocate(&mut lab, &[(ATTR_RESERVATION_TOKEN, token), (ATTR_EVEN_PORT, vec![0])]), Err(400));
    // An unclaimed reservation expires and its port returns.
    let mut lone = Client::rest("198.51.100.51:5000", "lone");
    lone.allocate(&mut lab, &[(ATTR_EVEN_PORT, vec![0x80])]).expect("allocated");
    assert_eq!(lab.server.allocations().count(), 2 + 1);
    let before = lab.server.poll_timeout().expect("reservation timer");
    assert!(before <= lab.now().instant + Duration::from_secs(30));
    lab.advance(Duration::from_secs(31));
    // Ten ports: 3 allocations held, so 7 more fit again.
    for i in 0..7 {
        Client::rest(&format!("198.51.100.52:{}", 6000 + i), &format!("f{i}")).relayed(&mut lab);
    }
}

#[test]
fn families_unknown_attributes_and_bad_requests_get_their_codes() {
    let mut lab = Lab::new();
    let mut c = Client::rest("198.51.100.60:5000", "v6");
    assert_eq!(c.allocate(&mut lab, &[(ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])]), Err(440));
    assert_eq!(c.allocate(&mut lab, &[(ATTR_REQUESTED_ADDRESS_FAMILY, vec![9, 0, 0, 0])]), Err(440));
    // Asking for both families: IPv4 granted, IPv6 refused in the answer.
    let answer = c.allocate(&mut lab, &[(ATTR_ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0])]).expect("allocated");
    let msg = StunMessage::parse(&answer).expect("stun");
    assert_eq!(msg.attribute(ATTR_ADDRESS_ERROR_CODE).expect("address error").value[..4], [2, 0, 4, 40]);
    // A comprehension-required attribute the server does not know: 420.
    let mut d = Client::rest("198.51.100.61:5000", "odd");
    let req = d.request(Method::Allocate, &[udp_transport(), (0x0042, vec![1, 2, 3, 4])]);
    let answer = reply(lab.send(d.key, &req));
    assert_eq!(error_code(&answer), Some(420));
    assert_eq!(
        StunMessage::parse(&answer).expect("stun").attribute(ATTR_UNKNOWN_ATTRIBUTES).expect("list").value,
        [0, 0x42]
    );
    // TCP allocations (RFC 6062) are made over TCP or TLS only: over UDP
    // 400; a transport neither UDP nor TCP: 442; no transport: 400.
    assert_eq!(d.allocate(&mut lab, &[]).map(|_| ()), Ok(()));
    let mut e = Client::rest("198.51.100.62:5000", "tcp");
    e.nonce = d.nonce.clone();
    let fresh = Client::rest("198.51.100.62:5000", "tcp");
    e.nonce = {
        let mut f = fresh;
        let first = f.request(Method::Allocate, &[udp_transport()]);
        text(&reply(lab.send(f.key, &first)), ATTR_NONCE)
    };
    let req = e.request(Method::Allocate, &[(ATTR_REQUESTED_TRANSPORT, vec![TRANSPORT_TCP, 0, 0, 0])]);
    assert_eq!(error_code(&reply(lab.send(e.key, &req))), Some(400));
    let req = e.request(Method::Allocate, &[(ATTR_REQUESTED_TRANSPORT, vec![132, 0, 0, 0])]);
    assert_eq!(error_code(&reply(lab.send(e.key, &req))), Some(442));
    let req = e.request(Method::Allocate, &[]);
    assert_eq!(error_code(&reply(lab.send(e.key, &req))), Some(400));
    // Binding answers the reflexive address.
    let b = StunWriter::new(0x0001, [5; 12]).finish();
    let answer = reply(lab.send(e.key, &b));
    assert_eq!(StunMessage::parse(&answer).expect("stun").xor_address(ATTR_XOR_MAPPED_ADDRESS), Some(e.key.source));
    // Garbage is dropped and counted.
    assert_eq!(lab.send(e.key, b"\x17\x03\x03garbage"), ClientOutput::Drop(TurnDrop::Malformed));
}

/// RFC 8656 §21's concern, measured: strangers spoofing a victim's address
/// get at most what they sent, plus a small burst, sent back to it.
#[test]
fn spoofed_floods_get_no_amplification() {
    let mut lab = Lab::new();
    let victim = udp("198.51.100.99:3478");
    let (mut bytes_in, mut bytes_out) = (0usize, 0usize);
    // 20 000 unauthenticated Allocates and Bindings, 2 000 per second.
    for i in 0..20_000u32 {
        lab.elapsed = Duration::from_micros(u64::from(i) * 500);
        let mut w = StunWriter::new(if i % 2 == 0 { 0x0003 } else { 0x0001 }, [i as u8; 12]);
        if i % 2 == 0 {
            w.attribute(ATTR_REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0]);
        }
        let req = w.finish();
        bytes_in += req.len();
        if let ClientOutput::Reply(r) = lab.send(victim, &req) {
            bytes_out += r.len();
        }
    }
    let limits = TurnLimits::default();
    let allowance = limits.stranger_burst_bytes as usize + 10 * limits.stranger_bytes_per_second as usize;
    assert!(bytes_out <= bytes_in + allowance, "{bytes_out} bytes out for {bytes_in} in");
    assert!(bytes_out > bytes_in / 2, "legitimate retries are still answered ({bytes_out} of {bytes_in})");
    assert!(lab.server.stats().drops(TurnDrop::StrangerBudget) > 0);
    println!("amplification: {bytes_out} bytes out for {bytes_in} in ({:.2}×)", bytes_out as f64 / bytes_in as f64);
}

#[test]
fn an_allocation_ending_while_its_port_opens_gets_the_socket_closed_and_the_port_back() {
    let limits = TurnLimits { max_lifetime: Duration::from_secs(600), ..TurnLimits::default() };
    let mut lab = Lab::with(limits, None);
    let mut c = Client::rest("198.51.100.70:5000", "slow-driver");
    let first = c.request(Method::Allocate, &[udp_transport()]);
    c.nonce = text(&reply(lab.send(c.key, &first)), ATTR_NONCE);
    let req = c.request(Method::Allocate, &[udp_transport()]);
    assert_eq!(lab.send(c.key, &req), ClientOutput::Pending);
    let [Command::OpenRelay { relay, .. }] = lab.commands()[..] else { panic!("one port to open") };
    // The driver is slow: the allocation's lifetime passes first.
    lab.advance(Duration::from_secs(601));
    assert_eq!(lab.server.allocations().count(), 0);
    lab.server.handle_relay_opened(lab.now(), relay, true);
    assert_eq!(lab.commands(), vec![Command::CloseRelay { relay }], "the late socket is closed, nothing answered");
    // Its port is free again once the socket had time to close: ten
    // clients fill the ten ports.
    lab.advance(relay_core::turn::server::PORT_REUSE_DELAY);
    for i in 0..10 {
        Client::rest(&format!("198.51.100.71:{}", 6000 + i), &format!("n{i}")).relayed(&mut lab);
    }
}

/// Found by `ucmrc-loadtest turn` running twice: a port released at the
/// end of one run was handed out again before the driver had closed its
/// socket, the bind failed, the client got 508 and the port never came
/// back. Released ports now wait, and a port that cannot be opened is
/// exchanged for another.
#[test]
fn released_ports_wait_before_reuse_and_a_port_that_cannot_be_opened_is_exchanged() {
    let mut lab = Lab::new();
    // Fill all ten ports, release them all.
    let mut clients: Vec<Client> =
        (0..10).map(|i| Client::rest(&format!("198.51.100.80:{}", 6000 + i), &format!("c{i}"))).collect();
    for c in &mut clients {
        c.relayed(&mut lab);
    }
    for c in &mut clients {
        assert_eq!(c.ask(&mut lab, Method::Refresh, &[(ATTR_LIFETIME, vec![0; 4])]), None);
    }
    assert_eq!(lab.commands().len(), 10, "ten sockets to close");
    // Not handed out while the sockets may still be closing...
    let mut early = Client::rest("198.51.100.81:6000", "early");
    assert_eq!(early.allocate(&mut lab, &[]), Err(508));
    // ...and all of them again after the delay.
    lab.advance(relay_core::turn::server::PORT_REUSE_DELAY);
    for i in 0..10 {
        Client::rest(&format!("198.51.100.82:{}", 6000 + i), &format!("d{i}")).relayed(&mut lab);
    }

    // A port another process holds: the allocation moves to another one
    // and is answered once that opens.
    let mut lab = Lab::new();
    let mut c = Client::rest("198.51.100.83:6000", "moved");
    let first = c.request(Method::Allocate, &[udp_transport()]);
    c.nonce = text(&reply(lab.send(c.key, &first)), ATTR_NONCE);
    let req = c.request(Method::Allocate, &[udp_transport()]);
    assert_eq!(lab.send(c.key, &req), ClientOutput::Pending);
    let [Command::OpenRelay { relay: taken, .. }] = lab.commands()[..] else { panic!("a port to open") };
    lab.server.handle_relay_opened(lab.now(), taken, false);
    let [Command::OpenRelay { relay: other, bind }] = lab.commands()[..] else { panic!("another port to open") };
    assert_ne!(other, taken);
    lab.server.handle_relay_opened(lab.now(), other, true);
    let answers = lab.commands();
    let [Command::Send { message, .. }] = answers.as_slice() else { panic!("{answers:?}") };
    let msg = StunMessage::parse(message).expect("stun");
    assert_eq!(msg.xor_address(ATTR_XOR_RELAYED_ADDRESS), Some(bind), "the port that opened");
    assert_eq!(lab.server.stats().ports_unavailable, 1);
    // After three ports that cannot be opened: 508.
    let mut d = Client::rest("198.51.100.84:6000", "unlucky");
    let first = d.request(Method::Allocate, &[udp_transport()]);
    d.nonce = text(&reply(lab.send(d.key, &first)), ATTR_NONCE);
    let req = d.request(Method::Allocate, &[udp_transport()]);
    assert_eq!(lab.send(d.key, &req), ClientOutput::Pending);
    for attempt in 0..3 {
        let [Command::OpenRelay { relay, .. }] = lab.commands()[..] else {
            panic!("attempt {attempt}: a port to open")
        };
        lab.server.handle_relay_opened(lab.now(), relay, false);
    }
    let answers = lab.commands();
    let [Command::Send { message, .. }] = answers.as_slice() else { panic!("{answers:?}") };
    assert_eq!(error_code(message), Some(508));
    assert_eq!(lab.server.allocations().count(), 1, "only the moved one");
}

#[test]
fn udp_allocations_are_journaled_exported_and_taken_over_on_the_same_port() {
    let mut a = Lab::new();
    let mut c = Client::rest("198.51.100.80:5000", "wave-ha");
    let relayed = c.relayed(&mut a);
    let relay = RelayId { family: Family::V4, port: relayed.port() };
    let peer = addr("192.0.2.60:7000");
    assert_eq!(c.bind(&mut a, 0x4002, peer), None);
    assert_eq!(c.permit(&mut a, addr("192.0.2.61:7000")), None);
    // A TCP client's allocation is not replicated (its connection ends
    // with the node).
    let mut t = Client::rest("198.51.100.81:5000", "tcp-client");
    t.key = tcp("198.51.100.81:5000");
    t.relayed(&mut a);
    let changes = a.server.take_changes(a.now().instant);
    assert_eq!(changes.ended, Vec::<String>::new());
    let [state] = &changes.changed[..] else { panic!("one replicated allocation: {changes:?}") };
    assert_eq!((state.id(), state.client, state.relayed), (format!("v4-{}", relayed.port()), c.key, relayed));
    assert_eq!((state.realm.as_str(), state.tenant.as_str()), (REALM, "acme"));
    assert_eq!(state.channels, vec![(0x4002, peer, Duration::from_secs(600))]);
    assert_eq!(state.permissions.len(), 2);
    assert!(a.server.take_changes(a.now().instant).changed.is_empty(), "pulled once");
    assert!(!format!("{state:?}").contains("Sha1"), "Debug shows no key");

    // Another node (sharing the nonce key, as a cluster's nodes do) takes
    // it over 100 s later: the same port, the permission with 200 s left.
    a.advance(Duration::from_secs(100));
    let exported = a.server.export(a.now().instant);
    assert_eq!(exported.len(), 1);
    let mut b = Lab::new();
    b.server.set_standby(true);
    assert_eq!(b.send(c.key, &c.request(Method::Refresh, &[])), ClientOutput::Drop(TurnDrop::Standby));
    assert_eq!(b.server.stats().drops(TurnDrop::Standby), 1);
    b.server.set_standby(false);
    let state = exported[0].clone().aged(Duration::from_secs(5));
    b.server.restore(b.now().instant, state.clone()).expect("restored");
    assert_eq!(b.server.restore(b.now().instant, state.clone()), Err(replica::RestoreRefusal::ClientTaken));
    assert_eq!(b.commands(), vec![Command::OpenRelay { relay, bind: SocketAddr::new(relayed.ip(), relayed.port()) }]);
    let mut cd = ChannelData::header(0x4002, 4).to_vec();
    cd.extend_from_slice(b"rtp!");
    assert_eq!(b.send(c.key, &cd), ClientOutput::Drop(TurnDrop::NoAllocation), "not before its port is open");
    // The old node still holds the port a moment: tried again shortly.
    b.server.handle_relay_opened(b.now(), relay, false);
    assert!(b.commands().is_empty());
    b.advance(Duration::from_millis(100));
    assert_eq!(b.commands(), vec![Command::OpenRelay { relay, bind: SocketAddr::new(relayed.ip(), relayed.port()) }]);
    b.server.handle_relay_opened(b.now(), relay, true);
    assert!(b.commands().is_empty(), "nobody waits for an answer");
    let ClientOutput::Relay { relay: r, peer: p, payload } = b.send(c.key, &cd) else { panic!("relayed") };
    assert_eq!((r, p, &cd[payload]), (relay, peer, &b"rtp!"[..]));
    let PeerOutput::Channel { client, header } = b.server.handle_peer(b.now(), relay, peer, b"back") else {
        panic!("the channel holds")
    };
    assert_eq!((client, header), (c.key, ChannelData::header(0x4002, 4)));
    // Fenced (or standby again), it changes nothing, but relays on.
    b.server.set_standby(true);
    assert_eq!(b.send(c.key, &c.request(Method::Refresh, &[])), ClientOutput::Drop(TurnDrop::Standby));
    assert!(matches!(b.send(c.key, &cd), ClientOutput::Relay { .. }), "forwarding is not gated");
    b.server.set_standby(false);
    // The client's nonce and key still serve (a Refresh answered, signed).
    assert_eq!(c.ask(&mut b, Method::Refresh, &[]), None);
    // What is left of the permission: 300 - 105 s.
    b.advance(Duration::from_secs(196));
    assert_eq!(b.send(c.key, &cd), ClientOutput::Drop(TurnDrop::NoPermission), "expired on time");
    // Its end is journaled; restoring elsewhere needs the realm and a
    // free port.
    assert_eq!(c.ask(&mut b, Method::Refresh, &[(ATTR_LIFETIME, vec![0; 4])]), None);
    let ended = b.server.take_changes(b.now().instant).ended;
    assert_eq!(ended, vec![format!("v4-{}", relayed.port())]);
    let mut foreign = state.clone();
    foreign.realm = "other.realm".into();
    assert_eq!(b.server.restore(b.now().instant, foreign), Err(replica::RestoreRefusal::UnknownRealm));
    let mut wrong_tenant = state.clone();
    wrong_tenant.tenant = "globex".into();
    assert_eq!(b.server.restore(b.now().instant, wrong_tenant), Err(replica::RestoreRefusal::UnknownRealm));
    let mut outside = state.clone();
    outside.relay.port = 40000;
    outside.client.source = addr("198.51.100.82:1");
    assert_eq!(b.server.restore(b.now().instant, outside), Err(replica::RestoreRefusal::PortUnavailable));
    assert_eq!(
        b.server.restore(b.now().instant, state.clone().aged(Duration::from_secs(3600))),
        Err(replica::RestoreRefusal::NotReplicable)
    );
    // A node stepping down forgets everything and journals nothing.
    let mut d = Client::rest("198.51.100.83:5000", "wave-2");
    d.relayed(&mut b);
    b.server.take_changes(b.now().instant);
    b.server.forget_all(b.now().instant);
    assert_eq!(b.server.allocations().count(), 0);
    assert!(matches!(b.commands()[..], [Command::CloseRelay { .. }]));
    assert_eq!(b.server.take_changes(b.now().instant), replica::AllocationChanges::default());
    // A record cannot outlive what this server grants (nor overflow its
    // clock): lifetimes are held to the limits (once the port is back).
    b.advance(Duration::from_secs(3));
    let mut forever = state.clone();
    forever.lifetime = Duration::MAX;
    forever.permissions = vec![(peer.ip(), Duration::MAX)];
    forever.channels = vec![(0x4002, peer, Duration::MAX)];
    b.server.restore(b.now().instant, forever).expect("restored");
    b.server.handle_relay_opened(b.now(), relay, true);
    b.advance(Duration::from_secs(301));
    assert_eq!(b.send(c.key, &cd), ClientOutput::Drop(TurnDrop::NoPermission), "the permission's 300 s");
    b.advance(Duration::from_secs(3300));
    assert_eq!(b.server.allocations().count(), 0, "the allocation's 3 600 s");
}

#[test]
fn a_reload_keeps_allocations_of_realms_that_stay_and_ends_the_others() {
    let mut lab = Lab::new();
    let mut c = Client::rest("198.51.100.90:5000", "wave-r");
    let relayed = c.relayed(&mut lab);
    let relay = RelayId { family: Family::V4, port: relayed.port() };
    let settings = lab.server.settings().clone();
    let realm = |name: &str, secret: &[u8]| Realm {
        name: name.into(),
        tenant: "acme".into(),
        rest: RestSecrets::new(vec![secret.to_vec()]),
        users: vec![],
        allow_peers: vec![],
    };
    // Another realm first, ours second with a rotated secret: the
    // allocation goes on (its key is its own), its user count follows it.
    let rotated = vec![realm("other.example", b"x"), realm(REALM, b"rotated-secret")];
    let limits = TurnLimits { allocations_per_user: 1, ..TurnLimits::default() };
    lab.server.handle_reconfigure(lab.now().instant, rotated, limits, settings.policy.clone()).expect("reloaded");
    assert!(lab.commands().is_empty(), "nothing closed");
    assert_eq!(c.ask(&mut lab, Method::Refresh, &[]), None, "refreshed with the key it was made with");
    assert_eq!(lab.server.allocations().next().map(|a| a.realm), Some(1));
    // The new limit counts it: a second allocation of the same user is 486.
    let mut again = Client::rest("198.51.100.90:5001", "wave-r");
    let (username, password) = RestSecrets::new(vec![b"rotated-secret".to_vec()])
        .issue("wave-r", T0_UNIX, Duration::from_secs(3600))
        .expect("issued");
    again = Client { md5: long_term_key_md5(&username, REALM, &password), username, nonce: c.nonce.clone(), ..again };
    assert_eq!(again.allocate(&mut lab, &[]), Err(486));
    // Old-secret credentials are refused now.
    let mut stale = Client::rest("198.51.100.90:5002", "someone");
    stale.nonce = c.nonce.clone();
    assert_eq!(stale.allocate(&mut lab, &[]), Err(401));
    // Its realm gone: the allocation ends, its port closed.
    lab.server
        .handle_reconfigure(lab.now().instant, vec![realm("other.example", b"x")], limits, settings.policy.clone())
        .expect("reloaded");
    assert_eq!(lab.commands(), vec![Command::CloseRelay { relay }]);
    assert_eq!(lab.server.allocations().count(), 0);
    assert_eq!(
        lab.server.handle_reconfigure(lab.now().instant, vec![], limits, settings.policy),
        Err(TurnSettingsError::NoRealm)
    );
}
