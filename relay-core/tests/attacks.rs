//! Attacks on authenticated latching (the first external review), performed against a
//! real relay on loopback with real SRTP (libsrtp) and STUN: replayed
//! consent checks after the replay memory was "flushed", brute force of
//! 32-bit SRTP tags, WebRTC bundles of many SSRCs, and key updates. The
//! attacker is a stranger on 127.0.0.2; every test fails on the relay
//! before the fix (see SECURITY.md).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use relay_core::ng::bencode::{dict, Value};
use relay_core::DropReason;
use relay_core::{AllocatedSession, BackendKind, Relay, RelayConfig, RelayHandle};
use relay_core::{LatchPolicy, LegSpec, LegUpdate, SessionSpec, SessionUpdate};
use test_support::keys::*;
use test_support::packets::*;
use test_support::srtp::*;
use test_support::stun::*;

const PBX_ICE_PWD: &[u8] = b"pbx-side-ice-password-0123";

fn relay() -> Relay {
    Relay::start(RelayConfig {
        backend: BackendKind::Portable,
        port_min: 21000,
        port_max: 21999,
        workers: 1,
        ..RelayConfig::default()
    })
    .expect("relay")
}

fn socket(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    s
}

/// What has arrived on `s` so far, without waiting.
fn drain(s: &UdpSocket) -> usize {
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while s.recv(&mut buf).is_ok() {
        n += 1;
    }
    s.set_nonblocking(false).expect("blocking");
    n
}

/// Waits until the relay has decided on `n` datagrams in total.
fn wait_received(h: &RelayHandle, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.counters().wait().expect("counters").total.packets_received < n {
        assert!(Instant::now() < deadline, "the relay did not see {n} datagrams");
        std::thread::yield_now();
    }
}

/// A call whose endpoint leg is keyed with `auth` (and the PBX's ICE
/// password), authenticated latching, the PBX hinted.
fn call(h: &RelayHandle, pbx: &UdpSocket, endpoint: LegSpec) -> AllocatedSession {
    h.allocate(SessionSpec {
        tenant: "acme".into(),
        pbx: LegSpec {
            rtcp_mux: true,
            hint: Some(pbx.local_addr().expect("addr")),
            srtp_auth: Some(auth_for(&master(1))),
            ..LegSpec::default()
        },
        endpoint: LegSpec { rtcp_mux: true, ..endpoint },
        latch: Some(LatchPolicy::Authenticated),
        ..SessionSpec::default()
    })
    .wait()
    .expect("allocate")
}

fn drops(h: &RelayHandle, a: &AllocatedSession, reason: DropReason) -> u64 {
    h.session(a.id).wait().expect("query").endpoint.stats.drops.get(reason)
}

fn latched(h: &RelayHandle, a: &AllocatedSession) -> Option<SocketAddr> {
    h.session(a.id).wait().expect("query").endpoint.remote_rtp
}

#[test]
fn a_captured_consent_check_cannot_move_a_leg_however_many_requests_follow() {
    let relay = relay();
    let h = relay.handle();
    let (pbx, phone, attacker) = (socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.2"));
    let a = call(&h, &pbx, LegSpec { stun_password: Some(PBX_ICE_PWD.to_vec()), ..LegSpec::default() });
    let to_relay = a.endpoint.rtp;
    // The phone's first check latches the leg; the attacker captures it.
    let captured = stun_request(PBX_ICE_PWD, [1; 12]);
    phone.send_to(&captured, to_relay).expect("send");
    // 100 newer verified checks from the phone (ICE consent over ~8 minutes)...
    for i in 0..100u32 {
        let mut id = [2; 12];
        id[..4].copy_from_slice(&i.to_be_bytes());
        phone.send_to(&stun_request(PBX_ICE_PWD, id), to_relay).expect("send");
    }
    // ...and 100 requests without MESSAGE-INTEGRITY from the latched address.
    for i in 0..100u32 {
        let mut id = [3; 12];
        id[..4].copy_from_slice(&i.to_be_bytes());
        phone.send_to(&stun_request_unsigned(id), to_relay).expect("send");
    }
    wait_received(&h, 201);
    assert_eq!(latched(&h, &a), Some(phone.local_addr().expect("addr")));
    // The replay from the attacker's address is refused, not latched.
    attacker.send_to(&captured, to_relay).expect("replay");
    wait_received(&h, 202);
    assert_eq!(drops(&h, &a, DropReason::Replay), 1, "the captured check is a replay");
    assert_eq!(latched(&h, &a), Some(phone.local_addr().expect("addr")), "the leg stays with the phone");
    // The PBX's media keeps going to the phone only.
    let mut pbx_tx = SrtpTx::new(&master(1), 1, 1);
    for _ in 0..10 {
        pbx.send_to(&pbx_tx.next_rtp(), a.pbx.rtp).expect("send");
    }
    wait_received(&h, 212);
    assert_eq!(drain(&attacker), 0, "the attacker receives nothing");
    assert_eq!(drain(&phone), 10);
}

#[test]
fn guessing_32_bit_tags_is_throttled_per_source_without_stopping_the_phone() {
    let relay = relay();
    let h = relay.handle();
    let (pbx, phone, attacker) = (socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.2"));
    let a = call(&h, &pbx, LegSpec { srtp_auth: Some(auth32_for(&master(2))), ..LegSpec::default() });
    let mut phone_tx = SrtpTx::new_32(&master(2), 2, 1);
    phone.send_to(&phone_tx.next_rtp(), a.endpoint.rtp).expect("send");
    // 2 000 guesses at the 32-bit tag from one stranger.
    let mut forger = SrtpTx::new_32(&master(66), 2, 100);
    for _ in 0..2000 {
        attacker.send_to(&forger.next_rtp(), a.endpoint.rtp).expect("guess");
    }
    wait_received(&h, 2001);
    let checked = drops(&h, &a, DropReason::Unauthenticated);
    let refused = drops(&h, &a, DropReason::ProofBackoff);
    assert_eq!(checked + refused, 2000, "every guess refused");
    let burst = u64::from(relay_core::session::replay::SOURCE_PROOF_BURST);
    assert!(checked <= burst + 8, "only the source's budget of guesses was checked ({checked})");
    // Meanwhile the phone roams (new NAT binding): it re-latches at once.
    let roamed = socket("127.0.0.1");
    roamed.send_to(&phone_tx.next_rtp(), a.endpoint.rtp).expect("send");
    wait_received(&h, 2002);
    assert_eq!(latched(&h, &a), Some(roamed.local_addr().expect("addr")));
    assert_eq!(drain(&pbx), 2, "both of the phone's packets reached the PBX, no forgery did");
}

#[test]
fn a_bundle_of_many_ssrcs_does_not_make_a_captured_packet_fresh_again() {
    let relay = relay();
    let h = relay.handle();
    let (pbx, phone, attacker) = (socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.2"));
    let a = call(&h, &pbx, LegSpec { srtp_auth: Some(auth_for(&master(2))), ..LegSpec::default() });
    let mut phone_tx = SrtpTx::new(&master(2), 100, 1);
    let captured = phone_tx.next_rtp();
    phone.send_to(&captured, a.endpoint.rtp).expect("send");
    // A WebRTC bundle: audio, video, simulcast layers and RTX — 20 SSRCs.
    for ssrc in 101..120 {
        for _ in 0..3 {
            phone.send_to(&phone_tx.next_rtp_of(ssrc), a.endpoint.rtp).expect("send");
        }
    }
    wait_received(&h, 58);
    attacker.send_to(&captured, a.endpoint.rtp).expect("replay");
    wait_received(&h, 59);
    assert_eq!(drops(&h, &a, DropReason::Replay), 1);
    assert_eq!(latched(&h, &a), Some(phone.local_addr().expect("addr")));
    let mut pbx_tx = SrtpTx::new(&master(1), 1, 1);
    pbx.send_to(&pbx_tx.next_rtp(), a.pbx.rtp).expect("send");
    wait_received(&h, 60);
    assert_eq!(drain(&attacker), 0);
}

#[test]
fn new_keys_start_a_new_index_history_so_the_phone_can_roam_after_a_re_invite() {
    let relay = relay();
    let h = relay.handle();
    let (pbx, phone) = (socket("127.0.0.1"), socket("127.0.0.1"));
    let a = call(&h, &pbx, LegSpec { srtp_auth: Some(auth_for(&master(2))), ..LegSpec::default() });
    let mut old = SrtpTx::new(&master(2), 7, 1000);
    for _ in 0..50 {
        phone.send_to(&old.next_rtp(), a.endpoint.rtp).expect("send");
    }
    wait_received(&h, 50);
    // A re-INVITE re-keys the call; the phone's new SRTP context restarts low.
    let upd = SessionUpdate {
        endpoint: LegUpdate { srtp_auth: Some(auth_for(&master(3))), ..LegUpdate::default() },
        ..SessionUpdate::default()
    };
    h.update(a.id, upd).wait().expect("update");
    let mut new = SrtpTx::new(&master(3), 7, 1);
    // It roams at the same moment: the fresh packet under the new keys proves it.
    let roamed = socket("127.0.0.1");
    roamed.send_to(&new.next_rtp(), a.endpoint.rtp).expect("send");
    wait_received(&h, 51);
    assert_eq!(drops(&h, &a, DropReason::Replay), 0, "not mistaken for a replay of the old stream");
    assert_eq!(latched(&h, &a), Some(roamed.local_addr().expect("addr")));
    // The same keys again keep the history: old captured packets stay stale.
    let same = SessionUpdate {
        endpoint: LegUpdate { srtp_auth: Some(auth_for(&master(3))), ..LegUpdate::default() },
        ..SessionUpdate::default()
    };
    h.update(a.id, same).wait().expect("update");
    let mut replayer = SrtpTx::new(&master(3), 7, 1);
    socket("127.0.0.2").send_to(&replayer.next_rtp(), a.endpoint.rtp).expect("replay");
    wait_received(&h, 52);
    assert_eq!(drops(&h, &a, DropReason::Replay), 1);
}

/// One ng request to `engine` (a fresh cookie each: replies are cached by
/// cookie); returns the reply dictionary.
fn ng(engine: &relay_core::ng::NgEngine, rt: &tokio::runtime::Runtime, pairs: Vec<(&str, Value)>) -> Value {
    static COOKIE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let cookie = COOKIE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let msg = [format!("c{cookie} ").into_bytes(), dict(pairs).encode()].concat();
    let reply = rt.block_on(engine.handle_message(&msg));
    let space = reply.iter().position(|b| *b == b' ').expect("cookie");
    relay_core::ng::bencode::decode(&reply[space + 1..]).expect("bencode reply")
}

fn ice_sdp(at: SocketAddr, ufrag: &str, pwd: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtcp-mux\r\n\
         a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n\
         a=candidate:1 1 udp 2130706431 {ip} {port} typ host\r\n\
         a=candidate:2 1 udp 2130706431 10.9.9.9 {port} typ host\r\n",
        ip = at.ip(),
        port = at.port()
    )
}

#[test]
fn ng_calls_with_ice_hide_the_endpoints_candidates_and_latch_only_on_verified_checks() {
    let relay = relay();
    let h = relay.handle();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let engine = relay_core::ng::NgEngine::new(h.clone(), relay_core::ng::NgConfig::default());
    let (caller, callee, stranger) = (socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.2"));
    let (caller_pwd, callee_pwd) = ("caller-ice-password-000000", "callee-ice-password-111111");
    let sdp_text = |v: &Value| v.get("sdp").and_then(Value::as_str).expect("sdp").to_string();
    let offer = ng(
        &engine,
        &rt,
        vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str("ice-1")),
            ("from-tag", Value::str("a")),
            ("sdp", Value::str(&ice_sdp(caller.local_addr().expect("addr"), "ca", caller_pwd))),
        ],
    );
    let offer_sdp = sdp_text(&offer);
    // The callee sees the relay's candidate only, and the caller's credentials.
    assert!(!offer_sdp.contains("10.9.9.9") && offer_sdp.contains("a=ice-pwd:caller-ice-password"), "{offer_sdp}");
    let to_callee_leg: SocketAddr = {
        let c = offer_sdp.lines().find(|l| l.starts_with("a=candidate:")).expect("a relay candidate");
        let f: Vec<&str> = c.split(' ').collect();
        format!("{}:{}", f[4], f[5]).parse().expect("candidate address")
    };
    let answer = ng(
        &engine,
        &rt,
        vec![
            ("command", Value::str("answer")),
            ("call-id", Value::str("ice-1")),
            ("from-tag", Value::str("a")),
            ("to-tag", Value::str("b")),
            ("sdp", Value::str(&ice_sdp(callee.local_addr().expect("addr"), "cb", callee_pwd))),
        ],
    );
    let answer_sdp = sdp_text(&answer);
    assert!(!answer_sdp.contains("10.9.9.9") && answer_sdp.contains("typ host"), "{answer_sdp}");
    let session = h.list(None, 10).wait().expect("list").sessions.remove(0);
    assert_eq!(session.latch, LatchPolicy::Authenticated, "ICE credentials on both sides switch latching");
    // A stranger's checks (a guessed password) latch nothing.
    stranger.send_to(&stun_request(b"guessed-password", [5; 12]), to_callee_leg).expect("send");
    // The callee's check is signed with the caller's password (it is the
    // caller's agent that must answer it): it latches the callee's leg...
    let check = stun_request(caller_pwd.as_bytes(), [6; 12]);
    callee.send_to(&check, to_callee_leg).expect("send");
    let mut buf = [0u8; 2048];
    let n = caller.recv(&mut buf).expect("the check reaches the caller");
    assert_eq!(&buf[..n], &check[..]);
    // ...and the same check replayed by the stranger moves nothing.
    stranger.send_to(&check, to_callee_leg).expect("replay");
    wait_received(&h, 3);
    let info = h.session(session.id).wait().expect("query");
    assert_eq!(info.endpoint.remote_rtp, Some(callee.local_addr().expect("addr")));
    let d = info.endpoint.stats.drops;
    assert_eq!((d.get(DropReason::Unauthenticated), d.get(DropReason::Replay)), (1, 1));
    assert_eq!(drain(&stranger), 0);
}
