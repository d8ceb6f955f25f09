//! UCMRC as rtpengine under a real Kamailio (Debian's 5.6 with its
//! `rtpengine` module), driven by SIP user agents written here: every call
//! goes caller → Kamailio → callee with Kamailio's `rtpengine_manage()`
//! sending offer/answer/delete to the relay's ng port, and media flows
//! through the relay both ways — real SRTP (libsrtp) where the call is
//! SDES-keyed, every byte compared.
//!
//! One relay and one Kamailio serve every scenario (one test function, so
//! the fixture is torn down when it ends, even on failure). At the end
//! Kamailio's log must hold no ng failure at all.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use base64::Engine as _;
use relay_core::ng::bencode::{self, Value};
use test_support::packets::{master, rtcp_rr_with, rtcp_sr, Report};
use test_support::poll::wait_for;
use test_support::ucmrc::kamailio::Kamailio;
use test_support::ucmrc::sip::{SdpView, SipMessage, SipSocket};
use test_support::ucmrc::*;

const TIMEOUT: Duration = Duration::from_secs(5);

/// An RTP socket on an even port and its RTCP socket on the next one.
fn media_pair() -> (UdpSocket, UdpSocket) {
    for _ in 0..200 {
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = rtp.local_addr().expect("addr").port();
        if port % 2 == 1 || port == u16::MAX {
            continue;
        }
        if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)) {
            for s in [&rtp, &rtcp] {
                s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            }
            return (rtp, rtcp);
        }
    }
    panic!("no free even/odd port pair");
}

/// What one side of a call offers or answers.
#[derive(Debug, Clone, Copy)]
struct Side {
    srtp: bool,
    mux: bool,
    ice: bool,
}

/// A SIP user agent with media sockets for each media section.
struct Agent {
    name: &'static str,
    sip: SipSocket,
    media: Vec<(UdpSocket, UdpSocket)>,
    keys: Vec<Vec<u8>>,
    ufrag: String,
    pwd: String,
    tag: String,
    cseq: u32,
}

impl Agent {
    fn new(name: &'static str, sections: usize, seed: u8) -> Self {
        Self {
            name,
            sip: SipSocket::bind(),
            media: (0..sections).map(|_| media_pair()).collect(),
            keys: (0..sections).map(|i| master(seed.wrapping_add(i as u8 * 7))).collect(),
            ufrag: format!("{name}U"),
            pwd: format!("{name}-ice-password-0123456789"),
            tag: format!("{name}-tag-{}", fastrand_u64()),
            cseq: 0,
        }
    }

    fn contact(&self) -> String {
        format!("<sip:{}@{}>", self.name, self.sip.addr)
    }

    fn port(&self, i: usize) -> u16 {
        self.media[i].0.local_addr().expect("addr").port()
    }

    /// This agent's SDP (audio, then video when it has two sections).
    fn sdp(&self, side: Side, version: u32, direction: &str) -> String {
        let mut s =
            format!("v=0\r\no=- 4242 {version} IN IP4 127.0.0.1\r\ns=ucmrc test\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n");
        for i in 0..self.media.len() {
            let port = self.port(i);
            let proto = if side.srtp { "RTP/SAVP" } else { "RTP/AVP" };
            if i == 0 {
                s.push_str(&format!("m=audio {port} {proto} 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"));
            } else {
                s.push_str(&format!("m=video {port} {proto} 96\r\na=rtpmap:96 VP8/90000\r\n"));
            }
            if side.mux {
                s.push_str("a=rtcp-mux\r\n");
            } else {
                s.push_str(&format!("a=rtcp:{}\r\n", port + 1));
            }
            if side.srtp {
                let key = base64::engine::general_purpose::STANDARD.encode(&self.keys[i]);
                s.push_str(&format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"));
            }
            if side.ice {
                s.push_str(&format!("a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n", self.ufrag, self.pwd));
                s.push_str(&format!("a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host\r\n"));
                if !side.mux {
                    s.push_str(&format!("a=candidate:1 2 udp 2130706430 127.0.0.1 {} typ host\r\n", port + 1));
                }
            }
            s.push_str(&format!("a={direction}\r\n"));
        }
        s
    }
}

/// One call's SIP dialog state as the caller sees it.
struct Dialog {
    call_id: String,
    remote_tag: String,
    remote_target: String,
    route: Vec<String>,
}

/// A call scenario.
#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    /// rtpengine flags Kamailio passes with the offer (X-Rtp-Flags).
    offer_flags: &'static str,
    caller: Side,
    callee: Side,
    video: bool,
    early_media: bool,
    hold_resume: bool,
}

/// The relay's ng socket and address, for queries beside Kamailio.
struct Ng {
    sock: UdpSocket,
    addr: SocketAddr,
    n: u32,
}

impl Ng {
    fn call(&mut self, pairs: Vec<(&str, Value)>) -> Value {
        self.n += 1;
        let msg = [format!("t{} ", self.n).into_bytes(), bencode::dict(pairs).encode()].concat();
        let reply = ng_udp(&self.sock, self.addr, &msg);
        let at = reply.iter().position(|b| *b == b' ').expect("cookie");
        bencode::decode(&reply[at + 1..]).expect("bencode reply")
    }
}

fn int(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for p in path {
        cur = cur.get(p).unwrap_or_else(|| panic!("no {p} in {path:?}"));
    }
    cur.as_int().unwrap_or_else(|| panic!("{path:?} is not an integer"))
}

/// Sends `count` packets each way on every media section (RTP, then RTCP)
/// and checks each arrives unchanged — and authentic, with SRTP.
/// `caller_view` is the SDP the caller received (where it sends), likewise
/// `callee_view`; `*_mux` whether each side multiplexes RTCP.
#[allow(clippy::too_many_arguments)]
fn exchange(
    caller: &Agent,
    callee: &Agent,
    caller_view: &SdpView,
    callee_view: &SdpView,
    mux: (bool, bool),
    srtp: bool,
    first_seq: u16,
    count: u16,
    directions: (bool, bool),
) -> u64 {
    fn pol(k: &[u8]) -> srtp::StreamPolicy<'_> {
        let p = srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80();
        srtp::StreamPolicy { rtp: p, rtcp: p, key: k, ..Default::default() }
    }
    let mut sent = 0;
    for i in 0..caller.media.len() {
        // Keys as the *receiver* learned them from the SDP the relay passed on.
        let callee_learned = callee_view.media[i]
            .crypto
            .first()
            .map(|k| base64::engine::general_purpose::STANDARD.decode(k).expect("b64"));
        let caller_learned = caller_view.media[i]
            .crypto
            .first()
            .map(|k| base64::engine::general_purpose::STANDARD.decode(k).expect("b64"));
        if srtp {
            assert_eq!(callee_learned.as_deref(), Some(caller.keys[i].as_slice()), "SDES passes unchanged");
            assert_eq!(caller_learned.as_deref(), Some(callee.keys[i].as_slice()), "SDES passes unchanged");
        }
        for (from, to, to_view, from_mux, to_mux, learned, on) in [
            (caller, callee, caller_view, mux.0, mux.1, &callee_learned, directions.0),
            (callee, caller, callee_view, mux.1, mux.0, &caller_learned, directions.1),
        ] {
            if !on {
                continue;
            }
            let m = &to_view.media[i];
            let relay_rtp = SocketAddr::new(to_view.addr, m.port);
            let relay_rtcp =
                if from_mux { relay_rtp } else { SocketAddr::new(to_view.addr, m.rtcp.unwrap_or(m.port + 1)) };
            let mut tx = srtp.then(|| session(pol(&from.keys[i]), true));
            let mut rx = learned.as_ref().map(|k| session(pol(k), false));
            let ssrc = 0x1000_0000 + u32::from(from.name.as_bytes()[1]) * 16 + i as u32;
            let (from_rtp, from_rtcp) = &from.media[i];
            let (to_rtp, to_rtcp) = &to.media[i];
            let mut buf = vec![0u8; 2048];
            for seq in first_seq..first_seq + count {
                let mut rtp = vec![0x80, if i == 0 { 0 } else { 96 }];
                rtp.extend_from_slice(&seq.to_be_bytes());
                rtp.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                rtp.extend_from_slice(&ssrc.to_be_bytes());
                rtp.extend((0..160u16).map(|b| (b as u8) ^ (seq as u8)));
                rtp.reserve(200);
                let mut rtcp = vec![0x80, 200, 0, 6];
                rtcp.extend_from_slice(&ssrc.to_be_bytes());
                rtcp.extend_from_slice(&[0u8; 12]);
                rtcp.extend_from_slice(&u32::from(seq).to_be_bytes());
                rtcp.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                rtcp.reserve(200);
                if let Some(tx) = tx.as_mut() {
                    tx.protect(&mut rtp).expect("protect");
                    tx.protect_rtcp(&mut rtcp).expect("protect rtcp");
                }
                for (pkt, sock, dest, recv_sock, what) in [
                    (&rtp, from_rtp, relay_rtp, to_rtp, "RTP"),
                    (
                        &rtcp,
                        if from_mux { from_rtp } else { from_rtcp },
                        relay_rtcp,
                        if to_mux { to_rtp } else { to_rtcp },
                        "RTCP",
                    ),
                ] {
                    sock.send_to(pkt, dest).expect("send media");
                    let n = recv_sock.recv(&mut buf).unwrap_or_else(|e| {
                        panic!("{} → {}: {what} seq {seq} on media {i} lost ({e})", from.name, to.name)
                    });
                    let mut got = Vec::with_capacity(n + 200);
                    got.extend_from_slice(&buf[..n]);
                    assert_eq!(&got, pkt, "the relay must not alter a byte");
                    if let Some(rx) = rx.as_mut() {
                        if what == "RTP" {
                            rx.unprotect(&mut got).expect("authentic SRTP");
                        } else {
                            rx.unprotect_rtcp(&mut got).expect("authentic SRTCP");
                        }
                    }
                    sent += 1;
                }
            }
        }
    }
    sent
}

/// Runs one call through Kamailio and the relay; returns the packets checked.
fn run_call(k: &Kamailio, ng: &mut Ng, s: &Scenario, seed: u8) -> u64 {
    let sections = if s.video { 2 } else { 1 };
    let mut caller = Agent::new("alice", sections, seed);
    let callee = Agent::new("bob", sections, seed.wrapping_add(100));
    let call_id = format!("{}-{}@test", s.name, fastrand_u64());
    let mut checked = 0;

    // INVITE with the offer.
    caller.cseq += 1;
    let offer = caller.sdp(s.caller, 1, "sendrecv");
    let invite = SipMessage::request(
        "INVITE",
        &format!("sip:bob@{}", callee.sip.addr),
        vec![
            ("Via".into(), format!("SIP/2.0/UDP {};branch=z9hG4bK{}1;rport", caller.sip.addr, caller.tag)),
            ("Max-Forwards".into(), "70".into()),
            ("From".into(), format!("<sip:alice@127.0.0.1>;tag={}", caller.tag)),
            ("To".into(), "<sip:bob@127.0.0.1>".into()),
            ("Call-ID".into(), call_id.clone()),
            ("CSeq".into(), format!("{} INVITE", caller.cseq)),
            ("Contact".into(), caller.contact()),
            ("X-Rtp-Flags".into(), s.offer_flags.into()),
        ],
        &offer,
    );
    caller.sip.send(&invite, k.sip);
    let (invite_in, proxy) = callee.sip.expect("INVITE at the callee", TIMEOUT, |m| m.method() == Some("INVITE"));
    let callee_view = SdpView::parse(&invite_in.body);
    check_offer_seen_by_callee(s, &caller, &callee_view);

    // Early media: 183 with the answer, media both ways before the 200.
    let answer = callee.sdp(Side { mux: s.callee.mux && callee_view.media[0].mux, ..s.callee }, 1, "sendrecv");
    let callee_mux = s.callee.mux && callee_view.media[0].mux;
    let reply = |m: &SipMessage, code: u16, reason: &str, body: &str| {
        m.response(code, reason, &callee.tag, &callee.contact(), Vec::new(), body)
    };
    let mut caller_view = None;
    if s.early_media {
        callee.sip.send(&reply(&invite_in, 183, "Session Progress", &answer), proxy);
        let (p, _) = caller.sip.expect("183 at the caller", TIMEOUT, |m| m.status() == Some(183));
        let view = SdpView::parse(&p.body);
        let caller_mux = s.caller.mux && view.media[0].mux;
        checked += exchange(
            &caller,
            &callee,
            &view,
            &callee_view,
            (caller_mux, callee_mux),
            s.caller.srtp,
            1,
            5,
            (true, true),
        );
        caller_view = Some(view);
    }
    callee.sip.send(&reply(&invite_in, 200, "OK", &answer), proxy);
    let (ok, _) =
        caller.sip.expect("200 at the caller", TIMEOUT, |m| m.status() == Some(200) && m.cseq_method() == "INVITE");
    let view = SdpView::parse(&ok.body);
    if let Some(early) = &caller_view {
        assert_eq!(early.media, view.media, "the 200 answers with the same relay ports as the 183");
    }
    check_answer_seen_by_caller(s, &callee, &view);
    let caller_mux = s.caller.mux && view.media[0].mux;
    let dialog = Dialog {
        call_id: call_id.clone(),
        remote_tag: ok.header("To").and_then(|t| t.split(";tag=").nth(1)).expect("to-tag").to_string(),
        remote_target: ok.header("Contact").expect("contact").trim_matches(['<', '>']).to_string(),
        route: ok.all("Record-Route").into_iter().rev().collect(),
    };
    send_ack(&caller, &dialog, k, caller.cseq);
    callee.sip.expect("ACK at the callee", TIMEOUT, |m| m.method() == Some("ACK"));

    if s.caller.ice && s.callee.ice {
        checked += ice_checks_through_relay(&caller, &callee, &view, &callee_view);
    }
    checked +=
        exchange(&caller, &callee, &view, &callee_view, (caller_mux, callee_mux), s.caller.srtp, 100, 20, (true, true));

    // The relay's view of the call (ng query beside Kamailio).
    let q = ng.call(vec![("command", Value::str("query")), ("call-id", Value::str(&call_id))]);
    assert_eq!(q.get("result").and_then(Value::as_str), Some("ok"), "{q:?}");
    let tags = q.get("tags").expect("tags");
    let caller_tag = tags.get(&caller.tag).expect("caller's tag");
    let media0 = &caller_tag.get("medias").expect("medias").items()[0];
    let streams = media0.get("streams").expect("streams").items();
    assert_eq!(streams.len(), 2, "RTP and RTCP apart");
    let expected = 20 + if s.early_media { 5 } else { 0 };
    // The RTP stream counts every non-RTCP datagram: the caller's STUN check too.
    let checks = i64::from(s.caller.ice && s.callee.ice);
    assert_eq!(int(streams[0], &["stats", "packets"]), expected + checks, "RTP from the caller on media 1");
    assert_eq!(int(streams[1], &["stats", "packets"]), expected, "RTCP from the caller on media 1");
    assert_eq!(int(streams[0], &["SSRC"]), 0x1000_0000 + i64::from(b'l') * 16, "the caller's SSRC");
    assert!(int(streams[0], &["last packet"]) > 0);
    assert_eq!(
        media0.get("rtcp-mux").and_then(Value::as_str),
        Some(if caller_mux { "yes" } else { "no" }),
        "the relay knows whether the caller multiplexes"
    );

    if !s.caller.srtp && !caller_mux && !callee_mux {
        receiver_reports(&caller, &callee, &view, &callee_view);
    }

    if s.hold_resume {
        // Hold: re-INVITE with sendonly; the same relay ports come back.
        for (version, dir, answer_dir, both_ways) in
            [(2, "sendonly", "recvonly", false), (3, "sendrecv", "sendrecv", true)]
        {
            caller.cseq += 1;
            let reoffer = caller.sdp(s.caller, version, dir);
            let reinvite = in_dialog(&caller, &dialog, "INVITE", caller.cseq, &reoffer, s.offer_flags);
            caller.sip.send(&reinvite, k.sip);
            let (rei, proxy) = callee.sip.expect("re-INVITE at the callee", TIMEOUT, |m| {
                m.method() == Some("INVITE")
                    && m.header("CSeq").is_some_and(|c| c.starts_with(&caller.cseq.to_string()))
            });
            let again = SdpView::parse(&rei.body);
            assert_eq!(again.media[0].port, callee_view.media[0].port, "a re-offer keeps the call's relay ports");
            assert_eq!(again.media[0].direction, dir, "direction passes through");
            let reanswer = callee.sdp(Side { mux: callee_mux, ..s.callee }, version, answer_dir);
            callee.sip.send(&reply(&rei, 200, "OK", &reanswer), proxy);
            let (ok2, _) = caller.sip.expect("200 to the re-INVITE", TIMEOUT, |m| {
                m.status() == Some(200) && m.header("CSeq").is_some_and(|c| c.starts_with(&caller.cseq.to_string()))
            });
            let view2 = SdpView::parse(&ok2.body);
            assert_eq!(view2.media[0].port, view.media[0].port);
            assert_eq!(view2.media[0].direction, answer_dir);
            send_ack(&caller, &dialog, k, caller.cseq);
            callee.sip.expect("ACK at the callee", TIMEOUT, |m| m.method() == Some("ACK"));
            let first = 200 + version as u16 * 50;
            checked += exchange(
                &caller,
                &callee,
                &view2,
                &again,
                (caller_mux, callee_mux),
                s.caller.srtp,
                first,
                10,
                (true, both_ways),
            );
        }
    }

    // BYE: Kamailio deletes the call on the relay.
    caller.cseq += 1;
    let bye = in_dialog(&caller, &dialog, "BYE", caller.cseq, "", "");
    caller.sip.send(&bye, k.sip);
    let (bye_in, proxy) = callee.sip.expect("BYE at the callee", TIMEOUT, |m| m.method() == Some("BYE"));
    callee.sip.send(&reply(&bye_in, 200, "OK", ""), proxy);
    caller.sip.expect("200 to the BYE", TIMEOUT, |m| m.status() == Some(200) && m.cseq_method() == "BYE");
    let gone = ng.call(vec![("command", Value::str("query")), ("call-id", Value::str(&call_id))]);
    assert_eq!(gone.get("result").and_then(Value::as_str), Some("error"), "the BYE deleted the call: {gone:?}");
    if !s.caller.srtp && !caller_mux && !callee_mux {
        // Kamailio's MOS variables, filled from the delete's reply: the
        // caller's report (10 % loss, 5 ms jitter, a loopback round trip)
        // is rtpengine's MOS 3.4 (3.3 to 3.5 as the round trip varies).
        let line = k.log_text().lines().find(|l| l.contains(&format!("MOS {call_id} "))).map(str::to_string);
        let line = line.expect("Kamailio logged the call's MOS");
        assert!(
            ["3.3", "3.4", "3.5"]
                .iter()
                .any(|m| line.contains(&format!("average={m} min={m} max={m} loss=10 jitter=5 "))),
            "{line}"
        );
    }
    checked
}

/// Plain RTCP with report blocks, the way endpoints send it: the caller's
/// SR, the callee's RR naming it, the callee's SR, the caller's RR naming
/// that (10 % lost, jitter 40 units = 5 ms at 8 kHz). Each is received
/// before the next is sent.
fn receiver_reports(caller: &Agent, callee: &Agent, caller_view: &SdpView, callee_view: &SdpView) {
    let ssrc = |a: &Agent| 0x1000_0000 + u32::from(a.name.as_bytes()[1]) * 16;
    let (ntp_caller, ntp_callee) = (0x1234_0000, 0x5678_0000);
    let steps = [
        (caller, callee, caller_view, rtcp_sr(ssrc(caller), ntp_caller)),
        (
            callee,
            caller,
            callee_view,
            rtcp_rr_with(
                ssrc(callee),
                Report {
                    about: ssrc(caller),
                    fraction_lost: 0,
                    cumulative_lost: 0,
                    jitter: 0,
                    lsr: ntp_caller,
                    dlsr: 0,
                },
            ),
        ),
        (callee, caller, callee_view, rtcp_sr(ssrc(callee), ntp_callee)),
        (
            caller,
            callee,
            caller_view,
            rtcp_rr_with(
                ssrc(caller),
                Report {
                    about: ssrc(callee),
                    fraction_lost: 26,
                    cumulative_lost: 3,
                    jitter: 40,
                    lsr: ntp_callee,
                    dlsr: 0,
                },
            ),
        ),
    ];
    let mut buf = [0u8; 2048];
    for (from, to, view, packet) in steps {
        let m = &view.media[0];
        from.media[0].1.send_to(&packet, SocketAddr::new(view.addr, m.rtcp.unwrap_or(m.port + 1))).expect("send");
        let n = to.media[0].1.recv(&mut buf).expect("the report through the relay");
        assert_eq!(&buf[..n], packet.as_slice(), "the relay must not alter a byte");
    }
}

fn check_offer_seen_by_callee(s: &Scenario, caller: &Agent, v: &SdpView) {
    assert_eq!(v.media.len(), caller.media.len());
    for (i, m) in v.media.iter().enumerate() {
        assert_ne!(m.port, caller.port(i), "{}: the callee is sent to the relay, not the caller", s.name);
        assert_eq!(m.port % 2, 0, "{}: RTP ports are even", s.name);
        // rtcp-mux offered with a reserved RTCP fallback port, like rtpengine.
        let demux = s.offer_flags.contains("rtcp-mux-demux");
        assert_eq!(m.mux, s.caller.mux && !demux, "{}: rtcp-mux offered on as asked", s.name);
        if !s.offer_flags.contains("rtcp-mux-require") {
            assert_eq!(m.rtcp, Some(m.port + 1), "{}: a=rtcp fallback = RTP port + 1", s.name);
        }
        for c in &m.candidates {
            assert!(
                c.contains(&format!(" {} typ host", m.port)) || c.contains(&format!(" {} typ host", m.port + 1)),
                "{}: only the relay's candidates reach the callee: {c}",
                s.name
            );
            assert!(!c.contains(&caller.port(i).to_string()), "{}: the caller's own candidate leaked: {c}", s.name);
        }
        assert_eq!(m.ufrag.is_some(), s.caller.ice && !s.offer_flags.contains("ICE=remove"));
        if s.offer_flags.contains("codec-strip-PCMA") && i == 0 {
            assert_eq!(m.formats, ["0", "101"], "{}: PCMA stripped", s.name);
        }
    }
    if s.offer_flags.contains("replace-origin") {
        assert!(v.origin.ends_with(&format!("IN IP4 {}", v.addr)), "o= rewritten: {}", v.origin);
    }
}

fn check_answer_seen_by_caller(s: &Scenario, callee: &Agent, v: &SdpView) {
    for (i, m) in v.media.iter().enumerate() {
        assert_ne!(m.port, callee.port(i), "{}: the caller is sent to the relay", s.name);
        assert_eq!(m.port % 2, 0, "{}: RTP ports are even", s.name);
        let expect_mux = s.caller.mux
            && (s.offer_flags.contains("rtcp-mux-demux") || s.offer_flags.contains("rtcp-mux-accept") || s.callee.mux);
        assert_eq!(m.mux, expect_mux, "{}: rtcp-mux answered to the caller", s.name);
        for c in &m.candidates {
            assert!(!c.contains(&callee.port(i).to_string()), "{}: the callee's own candidate leaked: {c}", s.name);
        }
    }
}

fn in_dialog(caller: &Agent, d: &Dialog, method: &str, cseq: u32, body: &str, flags: &str) -> SipMessage {
    let mut headers = vec![
        ("Via".into(), format!("SIP/2.0/UDP {};branch=z9hG4bK{}{method}{cseq};rport", caller.sip.addr, caller.tag)),
        ("Max-Forwards".into(), "70".into()),
    ];
    for r in &d.route {
        headers.push(("Route".into(), r.clone()));
    }
    headers.extend([
        ("From".into(), format!("<sip:alice@127.0.0.1>;tag={}", caller.tag)),
        ("To".into(), format!("<sip:bob@127.0.0.1>;tag={}", d.remote_tag)),
        ("Call-ID".into(), d.call_id.clone()),
        ("CSeq".into(), format!("{cseq} {method}")),
        ("Contact".into(), caller.contact()),
    ]);
    if !flags.is_empty() {
        headers.push(("X-Rtp-Flags".into(), flags.into()));
    }
    SipMessage::request(method, &d.remote_target, headers, body)
}

fn send_ack(caller: &Agent, d: &Dialog, k: &Kamailio, cseq: u32) {
    let mut ack = in_dialog(caller, d, "ACK", cseq, "", "");
    ack.first = format!("ACK {} SIP/2.0", d.remote_target);
    caller.sip.send(&ack, k.sip);
}

/// ICE through the relay: each side's connectivity check, signed with the
/// other side's password (which the relay passed on end to end), reaches
/// the other side unchanged via the relay's candidate — the only candidate
/// either side saw.
fn ice_checks_through_relay(caller: &Agent, callee: &Agent, caller_view: &SdpView, callee_view: &SdpView) -> u64 {
    let mut buf = vec![0u8; 2048];
    let mut checked = 0;
    for (from, to, view, to_pwd, n) in
        [(callee, caller, callee_view, &caller.pwd, 1u8), (caller, callee, caller_view, &callee.pwd, 2u8)]
    {
        let m = &view.media[0];
        let candidate = m.candidates.first().expect("a relay candidate");
        let port: u16 = candidate.split(' ').nth(5).and_then(|p| p.parse().ok()).expect("candidate port");
        assert_eq!(port, m.port, "the candidate is the relay's port");
        let username = format!("{}:{}", to.ufrag, from.ufrag);
        let check = relay_core::wire::stun::binding_request(username.as_bytes(), to_pwd.as_bytes(), [n; 12]);
        from.media[0].0.send_to(&check, SocketAddr::new(view.addr, port)).expect("send check");
        let len = to.media[0].0.recv(&mut buf).expect("the check crosses the relay");
        assert_eq!(&buf[..len], check.as_slice(), "checks pass unchanged");
        checked += 1;
    }
    checked
}

#[test]
fn kamailio_drives_ucmrc_as_rtpengine() {
    let relay = start(Some(&config("[log]\nlevel = \"info,relay_core::ng=debug\"\n[sessions]\nquality = true\n")));
    let (ng_addr, _) = relay.ng.expect("ng enabled");
    // Kamailio cannot report a kernel-chosen port back: take one from the
    // kernel and hand it over.
    let port = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free port").port();
    let k = Kamailio::start(&[], SocketAddr::from(([127, 0, 0, 1], port)), ng_addr, &SipSocket::bind());
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut ng = Ng { sock, addr: ng_addr, n: 0 };

    let plain = Side { srtp: false, mux: false, ice: false };
    let sdes = Side { srtp: true, mux: false, ice: false };
    let scenarios = [
        Scenario {
            name: "rtp-avp-early-media-hold",
            offer_flags: "",
            caller: plain,
            callee: plain,
            video: false,
            early_media: true,
            hold_resume: true,
        },
        Scenario {
            name: "sdes-srtp",
            offer_flags: "",
            caller: sdes,
            callee: sdes,
            video: false,
            early_media: false,
            hold_resume: false,
        },
        Scenario {
            name: "audio-video-rtcp-mux",
            offer_flags: "",
            caller: Side { mux: true, ..sdes },
            callee: Side { mux: true, ..sdes },
            video: true,
            early_media: false,
            hold_resume: true,
        },
        Scenario {
            name: "mux-offered-callee-declines",
            offer_flags: "",
            caller: Side { mux: true, ..sdes },
            callee: sdes,
            video: false,
            early_media: true,
            hold_resume: false,
        },
        Scenario {
            name: "mux-demuxed-by-flag",
            offer_flags: "rtcp-mux-demux",
            caller: Side { mux: true, ..sdes },
            callee: Side { mux: true, ..sdes },
            video: true,
            early_media: false,
            hold_resume: false,
        },
        Scenario {
            name: "ice-offered",
            offer_flags: "",
            caller: Side { ice: true, mux: true, ..sdes },
            callee: Side { ice: true, mux: true, ..sdes },
            video: false,
            early_media: false,
            hold_resume: false,
        },
        Scenario {
            name: "ice-forced",
            offer_flags: "ICE=force",
            caller: Side { ice: true, ..sdes },
            callee: Side { ice: true, ..sdes },
            video: false,
            early_media: false,
            hold_resume: false,
        },
        Scenario {
            name: "ice-removed-codec-stripped-origin-replaced",
            offer_flags: "ICE=remove codec-strip-PCMA replace-origin replace-session-connection",
            caller: Side { ice: true, ..plain },
            callee: plain,
            video: false,
            early_media: false,
            hold_resume: false,
        },
    ];
    let mut checked = 0;
    for (n, s) in scenarios.iter().enumerate() {
        checked += run_call(&k, &mut ng, s, n as u8 * 3);
    }
    assert!(checked > 500, "{checked} packets checked");

    // Not one ng failure in Kamailio's log, and the relay logged each command.
    k.assert_no_ng_failure();
    let m = scrape(&relay);
    let offers = m.get("ucmrc_ng_commands_total{command=\"offer\",result=\"ok\"}").copied().unwrap_or(0.0);
    assert!(offers >= scenarios.len() as f64, "offers counted: {offers}");
    assert_eq!(m.get("ucmrc_ng_commands_total{command=\"offer\",result=\"error\"}"), Some(&0.0));
    assert!(m["ucmrc_ng_command_duration_seconds_count"] > offers);
    assert_eq!(m["ucmrc_sessions_active"], 0.0, "every BYE released its sessions");
    // Every key and flag Kamailio sent is a row of the option table.
    assert_eq!(m["ucmrc_ng_unknown_options_total"], 0.0, "options the table does not know");
    wait_for("a debug line per ng command", || stderr_contains(&relay, "ng command"));
    assert!(stderr_contains(&relay, "delete"), "the delete was logged");
}

/// Two relays in one Kamailio set, one of them full: Kamailio moves each
/// call the full relay refuses (rtpengine's "Parallel session limit
/// reached") to the other relay of the set, and every call gets media.
#[test]
fn a_full_relay_in_a_set_passes_its_calls_to_the_next() {
    let relay_config = |ports: &str, ng: &str| {
        // Quality on: each call's MOS reaches Kamailio from whichever relay took it.
        config("[sessions]\nquality = true\n")
            .replace("port_min = 20000\nport_max = 29999", ports)
            .replace("[ng]\n", &format!("[ng]\n{ng}"))
    };
    let full = start(Some(&relay_config("port_min = 20000\nport_max = 20999", "max_calls = 1\n")));
    let spare = start(Some(&relay_config("port_min = 21000\nport_max = 22999", "")));
    let ng_of = |r: &Relay| {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Ng { sock, addr: r.ng.expect("ng enabled").0, n: 0 }
    };
    // The full relay holds its one call.
    let mut full_ng = ng_of(&full);
    let filler = full_ng.call(vec![
        ("command", Value::str("offer")),
        ("call-id", Value::str("filler")),
        ("from-tag", Value::str("f")),
        (
            "sdp",
            Value::str(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
            ),
        ),
    ]);
    assert_eq!(filler.get("result").and_then(Value::as_str), Some("ok"), "{filler:?}");

    let port = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free port").port();
    let relays = [full.ng.expect("ng").0, spare.ng.expect("ng").0];
    let k = Kamailio::start_set(&[], SocketAddr::from(([127, 0, 0, 1], port)), &relays, &SipSocket::bind());
    let mut spare_ng = ng_of(&spare);
    let plain = Side { srtp: false, mux: false, ice: false };
    let scenario = Scenario {
        name: "relay-set",
        offer_flags: "",
        caller: plain,
        callee: plain,
        video: false,
        early_media: false,
        hold_resume: false,
    };
    // Kamailio picks a relay per call-id: call until the full relay has
    // refused three calls (each then taken by the spare), every call with
    // media both ways.
    let refused = |m: &std::collections::HashMap<String, f64>| {
        m.get("ucmrc_ng_commands_total{command=\"offer\",result=\"error\"}").copied().unwrap_or(0.0)
    };
    let mut calls = 0;
    while refused(&scrape(&full)) < 3.0 {
        assert!(calls < 60, "60 calls and the full relay was asked fewer than three times");
        assert!(run_call(&k, &mut spare_ng, &scenario, calls as u8) > 0);
        calls += 1;
    }
    let spare_offers = scrape(&spare)["ucmrc_ng_commands_total{command=\"offer\",result=\"ok\"}"];
    assert!(spare_offers >= calls as f64, "every call was set up on the spare: {spare_offers} of {calls}");
    assert_eq!(scrape(&full)["ucmrc_sessions_active"], 1.0, "the full relay still holds only its own call");
    let held = full_ng.call(vec![("command", Value::str("query")), ("call-id", Value::str("filler"))]);
    assert_eq!(held.get("result").and_then(Value::as_str), Some("ok"), "{held:?}");
    k.assert_no_ng_failure();
    assert!(k.log_text().contains(relay_core::ng::SESSION_LIMIT), "Kamailio saw the refusal and moved on");
}
