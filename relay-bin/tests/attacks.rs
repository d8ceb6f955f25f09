//! The attacks of the first external security review, replayed against the real
//! `ucmrc` binary with its shipped defaults on loopback. Each test performs
//! an attack and asserts it fails; each failed on the relay before the fix
//! (`UCMRC_BIN=/path/to/old/ucmrc cargo test -p ucmrc --test attacks`
//! replays them against another build). SECURITY.md lists them next to
//! their threats.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use test_support::packets::master;
use test_support::poll::{exit_status, wait_for};
use test_support::ucmrc::*;

/// A config with ng and the admin API on kernel-chosen ports; `relay`, `ng`
/// and `admin` add keys to their sections.
fn cfg(relay: &str, ng: &str, admin: &str) -> String {
    format!(
        "[relay]\nport_min = 20000\nport_max = 20999\nworkers = 1\n{relay}\n\
         [ng]\nlisten = \"127.0.0.1:0\"\n{ng}\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken_sha256 = \"{}\"\n{admin}\n",
        token_hash()
    )
}

fn udp(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    s
}

/// What has arrived on `s` so far, without waiting.
fn drain(s: &UdpSocket) -> Vec<Vec<u8>> {
    s.set_nonblocking(true).expect("nonblocking");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = s.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    s.set_nonblocking(false).expect("blocking");
    out
}

/// Waits until the relay has received `n` datagrams in total, so everything
/// sent so far has been decided on (and forwarded ones are on their way).
fn wait_received(r: &Relay, n: f64) {
    wait_for("the relay to see every datagram", || scrape(r)["ucmrc_packets_received_total"] >= n);
}

fn dropped(r: &Relay, reason: &str) -> f64 {
    scrape(r).get(&format!("ucmrc_packets_dropped_total{{reason=\"{reason}\"}}")).copied().unwrap_or(0.0)
}

/// A plain RTP packet (12-byte header, 160 bytes of payload).
fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.resize(172, 0xd5);
    p
}

/// libsrtp sender/receiver for AES_CM_128_HMAC_SHA1_80 with a 30-byte key ‖ salt.
fn srtp_session(master: &[u8], outbound: bool) -> srtp::Session {
    let p = srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80();
    let policy = srtp::StreamPolicy { rtp: p, rtcp: p, key: master, ..Default::default() };
    if outbound {
        srtp::Session::with_outbound_template(policy).expect("srtp")
    } else {
        srtp::Session::with_inbound_template(policy).expect("srtp")
    }
}

fn protect(tx: &mut srtp::Session, ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = rtp(ssrc, seq);
    p.reserve(160);
    tx.protect(&mut p).expect("protect");
    p
}

/// An ng request over UDP with a fresh cookie; returns the decoded reply.
fn ng(r: &Relay, from: &UdpSocket, body: &str) -> Value {
    let (ng_udp_addr, _) = r.ng.expect("ng enabled");
    let cookie = format!("c{}", fastrand_u64());
    let reply = ng_udp(from, ng_udp_addr, format!("{cookie} {body}").as_bytes());
    let text = String::from_utf8_lossy(&reply).to_string();
    let dict = text.split_once(' ').map(|x| x.1).expect("cookie");
    bencode_to_json(dict.as_bytes())
}

/// Enough bencode → JSON for ng replies (strings, ints, lists, dicts).
fn bencode_to_json(b: &[u8]) -> Value {
    fn value(b: &[u8], i: &mut usize) -> Value {
        match b[*i] {
            b'i' => {
                let end = b[*i..].iter().position(|c| *c == b'e').expect("int end") + *i;
                let n: i64 = std::str::from_utf8(&b[*i + 1..end]).expect("utf8").parse().expect("int");
                *i = end + 1;
                Value::from(n)
            }
            b'l' => {
                *i += 1;
                let mut v = Vec::new();
                while b[*i] != b'e' {
                    v.push(value(b, i));
                }
                *i += 1;
                Value::Array(v)
            }
            b'd' => {
                *i += 1;
                let mut m = serde_json::Map::new();
                while b[*i] != b'e' {
                    let k = value(b, i);
                    let v = value(b, i);
                    m.insert(k.as_str().expect("key").to_string(), v);
                }
                *i += 1;
                Value::Object(m)
            }
            _ => {
                let colon = b[*i..].iter().position(|c| *c == b':').expect("colon") + *i;
                let n: usize = std::str::from_utf8(&b[*i..colon]).expect("utf8").parse().expect("len");
                let s = String::from_utf8_lossy(&b[colon + 1..colon + 1 + n]).to_string();
                *i = colon + 1 + n;
                Value::String(s)
            }
        }
    }
    value(b, &mut 0)
}

/// An SDP for one audio line at `addr` (optionally with SDES keys).
fn sdp(addr: SocketAddr, crypto: Option<&[u8]>) -> String {
    let mut s = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} {proto} 0\r\na=rtcp-mux\r\n",
        ip = addr.ip(),
        port = addr.port(),
        proto = if crypto.is_some() { "RTP/SAVP" } else { "RTP/AVP" }
    );
    if let Some(key) = crypto {
        let inline = base64::engine::general_purpose::STANDARD.encode(key);
        s += &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{inline}\r\n");
    }
    s
}

fn offer(call: &str, sdp: &str) -> String {
    format!("d7:call-id{}7:command5:offer8:from-tag1:a3:sdp{}e", bstr(call), bstr(sdp))
}

fn answer(call: &str, sdp: &str) -> String {
    format!("d7:call-id{}7:command6:answer8:from-tag1:a3:sdp{}6:to-tag1:be", bstr(call), bstr(sdp))
}

/// The relay address an SDP tells its receiver to send to.
fn relay_addr_in(sdp: &str) -> SocketAddr {
    let ip = sdp.lines().find_map(|l| l.strip_prefix("c=IN IP4 ")).expect("c=").trim();
    format!("{ip}:{}", sdp_port(sdp)).parse().expect("addr")
}

#[test]
fn an_sdp_naming_the_relays_own_ng_port_cannot_turn_a_session_into_an_ng_client() {
    let r = start(Some(&cfg("", "", "")));
    let (ng_port, _) = r.ng.expect("ng");
    let proxy = udp("127.0.0.1");
    // A SIP caller's SDP names the relay's ng port; the proxy passes it on.
    let evil = SocketAddr::from(([127, 0, 0, 1], ng_port.port()));
    let reply = ng(&r, &proxy, &offer("gateway-1", &sdp(evil, None)));
    // Refused outright: no session can point at the relay's own ports.
    assert_eq!(reply["result"], "error", "an offer naming the relay's own ng port is refused: {reply}");
    let reason = reply["error-reason"].as_str().unwrap_or("");
    assert!(reason.contains("relay's own"), "refused, and the reason says why: {reason}");
}

#[test]
fn hints_naming_the_relay_itself_are_refused_on_every_surface() {
    let r = start(Some(&cfg("", "", "")));
    let (ng_udp_addr, ng_tcp_addr) = r.ng.expect("ng");
    let (status, body) = http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(r#"{"tenant":"acme"}"#));
    assert_eq!(status, 201, "{body}");
    let first = json(&body);
    let media_port = first["endpoint"]["rtp"].as_str().expect("addr").to_string();
    for own in [media_port.clone(), r.admin.to_string(), ng_udp_addr.to_string(), ng_tcp_addr.to_string()] {
        let req = format!(r#"{{"tenant":"acme","pbx":{{"hint":"{own}"}}}}"#);
        let (status, body) = http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(&req));
        assert_eq!(status, 403, "a hint of {own} (the relay itself) must be refused: {body}");
        assert!(body.contains("forbidden_address") && body.contains("relay's own"), "{body}");
        // Nor can an update point a live session at it.
        let id = first["id"].as_str().expect("id");
        let patch = format!(r#"{{"endpoint":{{"hint":"{own}"}}}}"#);
        let (status, body) = http(r.admin, "PATCH", &format!("/v1/sessions/{id}"), Some(TOKEN), Some(&patch));
        assert_eq!(status, 403, "{body}");
    }
    // The RTCP neighbour (port + 1) of a relay port is the relay too.
    let port: u16 = media_port.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port");
    let req = format!(r#"{{"tenant":"acme","pbx":{{"hint":"127.0.0.1:{}"}}}}"#, port - 1);
    assert_eq!(http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(&req)).0, 403);
}

#[test]
fn only_media_crosses_the_relay() {
    let r = start(Some(&cfg("", "", "")));
    let (pbx, phone) = (udp("127.0.0.1"), udp("127.0.0.1"));
    let req = format!(
        r#"{{"tenant":"acme","pbx":{{"hint":"{}"}},"endpoint":{{"hint":"{}"}}}}"#,
        pbx.local_addr().expect("addr"),
        phone.local_addr().expect("addr")
    );
    let (status, body) = http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(&req));
    assert_eq!(status, 201, "{body}");
    let to_endpoint_leg: SocketAddr = json(&body)["endpoint"]["rtp"].as_str().expect("addr").parse().expect("addr");
    let dns_query = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'c', b'o', b'm', 0, 0, 1, 0, 1];
    let not_media: [&[u8]; 4] =
        [b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n", &dns_query, b"12 d7:command4:liste", b"\x80\x00short"];
    for junk in not_media {
        phone.send_to(junk, to_endpoint_leg).expect("send");
    }
    phone.send_to(&rtp(7, 1), to_endpoint_leg).expect("send");
    let mut buf = [0u8; 2048];
    let n = pbx.recv(&mut buf).expect("the RTP packet arrives");
    assert_eq!(&buf[..n], &rtp(7, 1)[..], "media is forwarded unchanged");
    wait_received(&r, 5.0);
    assert!(drain(&pbx).is_empty(), "nothing but media reached the PBX");
    assert_eq!(dropped(&r, "not_media"), 4.0, "each non-media datagram is counted with its own reason");
}

#[test]
fn a_stranger_first_after_the_window_is_displaced_for_good_by_the_hinted_phone() {
    let r = start(Some(&cfg("", "", "")));
    let (pbx, phone, stranger) = (udp("127.0.0.1"), udp("127.0.0.1"), udp("127.0.0.2"));
    let req = format!(
        r#"{{"tenant":"acme","learning_window_ms":50,"pbx":{{"hint":"{}"}},"endpoint":{{"hint":"{}"}}}}"#,
        pbx.local_addr().expect("addr"),
        phone.local_addr().expect("addr")
    );
    let (status, body) = http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(&req));
    assert_eq!(status, 201, "{body}");
    let v = json(&body);
    let id = v["id"].as_str().expect("id");
    let to_pbx_leg: SocketAddr = v["pbx"]["rtp"].as_str().expect("addr").parse().expect("addr");
    let to_endpoint_leg: SocketAddr = v["endpoint"]["rtp"].as_str().expect("addr").parse().expect("addr");
    // The window closes before the phone answers (it rings for seconds).
    wait_for("the learning window to close", || {
        json(&http(r.admin, "GET", &format!("/v1/sessions/{id}"), Some(TOKEN), None).1)["learning"] == false
    });
    // One stranger packet comes first and latches the unlatched leg (plain
    // RTP without keys cannot be told from the phone's until the phone speaks).
    stranger.send_to(&rtp(66, 1), to_endpoint_leg).expect("send");
    // The phone speaks: the hinted phone takes its leg back.
    let (mk_phone, mk_pbx) = (master(2), master(1));
    let (mut phone_tx, mut pbx_tx) = (srtp_session(&mk_phone, true), srtp_session(&mk_pbx, true));
    phone.send_to(&protect(&mut phone_tx, 2, 1), to_endpoint_leg).expect("send");
    wait_received(&r, 2.0);
    assert_eq!(drain(&pbx).len(), 2, "the stranger's first packet and the phone's");
    // 50 packets from the PBX: all to the phone, none to the stranger...
    for seq in 1..=50 {
        pbx.send_to(&protect(&mut pbx_tx, 1, seq), to_pbx_leg).expect("send");
    }
    // ...and 20 injected by the stranger: none reach the PBX.
    for seq in 2..22 {
        stranger.send_to(&rtp(66, seq), to_endpoint_leg).expect("send");
    }
    wait_received(&r, 72.0);
    let mut phone_rx = srtp_session(&mk_pbx, false);
    let mut got = 0;
    for mut p in drain(&phone) {
        p.reserve(160);
        phone_rx.unprotect(&mut p).expect("authentic SRTP from the PBX");
        got += 1;
    }
    let at_pbx = drain(&pbx);
    let at_stranger = drain(&stranger);
    assert_eq!(got, 50, "the phone gets every PBX packet");
    assert_eq!(at_stranger.len(), 0, "the stranger receives nothing once the hinted phone spoke");
    assert_eq!(at_pbx.len(), 0, "none of the 20 injected packets reached the PBX");
}

#[test]
fn the_ng_answerer_leg_latches_nothing_before_the_answer() {
    let r = start(Some(&cfg("", "", "")));
    let proxy = udp("127.0.0.1");
    let (caller, callee, stranger) = (udp("127.0.0.1"), udp("127.0.0.1"), udp("127.0.0.2"));
    let o = ng(&r, &proxy, &offer("call-b", &sdp(caller.local_addr().expect("addr"), None)));
    assert_eq!(o["result"], "ok", "{o}");
    let to_answerer_leg = relay_addr_in(o["sdp"].as_str().expect("sdp"));
    // Before the answer, a stranger sprays the port the offer announced...
    for seq in 1..=20 {
        stranger.send_to(&rtp(66, seq), to_answerer_leg).expect("send");
    }
    wait_received(&r, 20.0);
    // ...and the caller's early media must not reach it.
    let a = ng(&r, &proxy, &answer("call-b", &sdp(callee.local_addr().expect("addr"), None)));
    assert_eq!(a["result"], "ok", "{a}");
    let to_caller_leg = relay_addr_in(a["sdp"].as_str().expect("sdp"));
    for seq in 1..=20 {
        caller.send_to(&rtp(1, seq), to_caller_leg).expect("send");
        callee.send_to(&rtp(2, seq), to_answerer_leg).expect("send");
    }
    wait_received(&r, 60.0);
    assert!(drain(&stranger).is_empty(), "the stranger received the caller's media");
    assert_eq!(drain(&callee).len(), 20, "the callee gets the caller's media");
    assert_eq!(drain(&caller).len(), 20, "the caller gets only the callee's media");
    assert_eq!(dropped(&r, "no_hint"), 20.0, "the stranger's packets before the answer are counted as no_hint");
}

#[test]
fn ng_calls_with_sdes_keys_latch_authenticated_so_a_stranger_first_gets_nothing() {
    let r = start(Some(&cfg("", "", "")));
    let proxy = udp("127.0.0.1");
    let (caller, callee, stranger) = (udp("127.0.0.1"), udp("127.0.0.1"), udp("127.0.0.2"));
    let (mk_a, mk_b) = (master(11), master(12));
    let o = ng(&r, &proxy, &offer("call-c", &sdp(caller.local_addr().expect("addr"), Some(&mk_a))));
    assert_eq!(o["result"], "ok", "{o}");
    let to_b_leg = relay_addr_in(o["sdp"].as_str().expect("sdp"));
    let a = ng(&r, &proxy, &answer("call-c", &sdp(callee.local_addr().expect("addr"), Some(&mk_b))));
    assert_eq!(a["result"], "ok", "{a}");
    let to_a_leg = relay_addr_in(a["sdp"].as_str().expect("sdp"));
    // Inside the window, before the callee speaks, a stranger (behind any
    // NAT, at any rank) sends forged SRTP to the callee's leg.
    let mut forger = srtp_session(&master(99), true);
    for seq in 1..=10 {
        stranger.send_to(&protect(&mut forger, 2, seq), to_b_leg).expect("send");
    }
    wait_received(&r, 10.0);
    // The caller talks: its media must go to the callee, not the stranger.
    let (mut a_tx, mut b_tx) = (srtp_session(&mk_a, true), srtp_session(&mk_b, true));
    for seq in 1..=10 {
        caller.send_to(&protect(&mut a_tx, 1, seq), to_a_leg).expect("send");
    }
    wait_received(&r, 20.0);
    assert!(drain(&stranger).is_empty(), "the stranger received the caller's media");
    // The callee speaks (proving itself with its key) and media flows both ways.
    for seq in 1..=10 {
        callee.send_to(&protect(&mut b_tx, 2, seq), to_b_leg).expect("send");
    }
    for seq in 11..=20 {
        caller.send_to(&protect(&mut a_tx, 1, seq), to_a_leg).expect("send");
    }
    wait_received(&r, 40.0);
    let mut b_rx = srtp_session(&mk_a, false);
    let got: Vec<Vec<u8>> = drain(&callee);
    assert_eq!(got.len(), 20, "the callee gets all of the caller's media");
    for mut p in got {
        p.reserve(160);
        b_rx.unprotect(&mut p).expect("authentic");
    }
    assert_eq!(drain(&caller).len(), 10);
    assert!(drain(&stranger).is_empty());
    assert!(dropped(&r, "unauthenticated") >= 10.0, "the forgeries were refused for want of a valid tag");
}

#[test]
fn a_request_with_huge_durations_is_refused_and_every_call_keeps_flowing() {
    let r = start(Some(&cfg("", "", "")));
    let mut call = Call::allocate(&r, "acme").expect("a call");
    assert_eq!(call.exchange(), 2);
    for field in ["idle_timeout_secs", "max_duration_secs", "learning_window_ms"] {
        for v in ["18446744073709551615", "99999999999"] {
            let req = format!(r#"{{"tenant":"mallory","{field}":{v}}}"#);
            let (status, body) = http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(&req));
            assert_eq!(status, 400, "{field} = {v}: {body}");
        }
    }
    assert_eq!(call.exchange(), 2, "the call on the same shard still flows");
    assert!(Call::allocate(&r, "acme").is_ok(), "new sessions are still allocated");
    assert_eq!(http(r.admin, "GET", "/readyz", None, None).0, 200);
    for (field, v) in [("max_pps", "4000000000"), ("max_bytes_per_sec", "999999999999")] {
        let req = format!(r#"{{"tenant":"mallory","pbx":{{"{field}":{v}}}}}"#);
        assert_eq!(http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(&req)).0, 400, "{field} above the ceiling");
    }
}

#[test]
fn a_failed_shard_fails_readiness_and_the_process_exits_for_its_supervisor() {
    let panic_tenant = relay_core::shard::FAULT_PANIC_TENANT;
    // Default: exit non-zero so systemd restarts the relay.
    let mut r = start(Some(&cfg("", "", "")));
    let req = format!(r#"{{"tenant":"{panic_tenant}"}}"#);
    // The relay may exit before it answers: send without waiting for one.
    let mut s = TcpStream::connect(r.admin).expect("connect");
    let raw = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{req}",
        req.len()
    );
    s.write_all(raw.as_bytes()).expect("send");
    let code = exit_status(&mut r.child, "the relay's exit after a shard failure");
    assert!(!code.success(), "exit status must be non-zero: {code}");
    assert!(stderr_contains(&r, "shard failed"), "the failure is logged");

    // Configured to keep going: /readyz fails and the failure is counted.
    let r = start(Some(&cfg("exit_on_shard_failure = false", "", "").replace("workers = 1", "workers = 2")));
    let mut survivors = Vec::new();
    let mut panicked = false;
    for _ in 0..4 {
        let (status, _) = http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(&req));
        panicked |= status == 503;
        if panicked {
            break;
        }
    }
    assert!(panicked);
    wait_for("readyz to fail", || http(r.admin, "GET", "/readyz", None, None).0 == 503);
    assert_eq!(scrape(&r)["ucmrc_shard_failures_total"], 1.0);
    for _ in 0..4 {
        if let Ok(c) = Call::allocate(&r, "acme") {
            survivors.push(c);
        }
    }
    assert!(!survivors.is_empty(), "the other shard still serves");
}

#[test]
fn ng_requests_cannot_exhaust_ports_memory_or_connections() {
    let r = start(Some(&cfg("", "orphan_call_ttl_secs = 1\ntcp_max_connections = 4\ntcp_idle_timeout_secs = 1", "")));
    let (_, ng_tcp) = r.ng.expect("ng");
    let proxy = udp("127.0.0.1");
    let caller = udp("127.0.0.1");
    // 245 m= lines in one offer.
    let mut big = sdp(caller.local_addr().expect("addr"), None);
    for _ in 0..244 {
        big += &format!("m=audio {} RTP/AVP 0\r\n", caller.local_addr().expect("addr").port());
    }
    let reply = ng(&r, &proxy, &offer("big", &big));
    assert_eq!(reply["result"], "error", "{reply}");
    assert_eq!(scrape(&r)["ucmrc_sessions_active"], 0.0, "no port was taken");
    // 100 pings with 256 KiB cookies over TCP: refused, not cached.
    let rss = |r: &Relay| scrape(r)["process_resident_memory_bytes"];
    let before = rss(&r);
    for _ in 0..100 {
        let mut s = TcpStream::connect(ng_tcp).expect("connect");
        let _ = s.write_all(&[vec![b'k'; 256 * 1024], b" d7:command4:pinge".to_vec()].concat());
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        assert!(!String::from_utf8_lossy(&reply).contains("pong"), "a 256 KiB cookie is refused");
    }
    let grown = rss(&r) - before;
    assert!(grown < 16.0 * 1024.0 * 1024.0, "100 huge cookies grew the relay by {} MiB", grown / 1048576.0);
    // Offers whose media are all disabled are forgotten.
    let disabled = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n";
    for k in 0..20 {
        assert_eq!(ng(&r, &proxy, &offer(&format!("zero-{k}"), disabled))["result"], "ok");
    }
    wait_for("calls without sessions to expire", || {
        ng(&r, &proxy, "d7:command4:liste")["calls"].as_array().is_some_and(|c| c.is_empty())
    });
    // ng/TCP: a connection cap and an idle timeout.
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(ng_tcp).expect("connect")).collect();
    wait_for("the fifth connection to be closed at once", || {
        let mut fifth = TcpStream::connect(ng_tcp).expect("connect");
        fifth.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        let _ = fifth.write_all(b"p d7:command4:pinge");
        let mut buf = [0u8; 64];
        matches!(fifth.read(&mut buf), Ok(0) | Err(_))
    });
    for mut s in held {
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut buf = [0u8; 64];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)), "a silent connection is closed by the idle timeout");
    }
}

/// Clients in `allow_from` that pipeline requests over TCP and never read
/// the replies: each write waits at most `tcp_write_timeout_secs`, then the
/// connection is closed and its slot freed (before, 4 such connections held
/// all 4 slots until the relay restarted).
#[test]
fn ng_tcp_clients_that_never_read_lose_their_connection_not_the_service() {
    let r = start(Some(&cfg("", "tcp_max_connections = 4\ntcp_write_timeout_secs = 1", "")));
    let (_, ng_tcp) = r.ng.expect("ng");
    let cookie = "c".repeat(120);
    let pings: Vec<u8> = (0..100_000).flat_map(|_| format!("{cookie} d7:command4:pinge").into_bytes()).collect();
    let stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let s = TcpStream::connect(ng_tcp).expect("connect");
            // A small receive window: the relay's replies back up at once.
            let size: libc::c_int = 4096;
            // SAFETY (test harness): a valid socket and an int option.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0);
            let mut w = s.try_clone().expect("clone");
            let p = pings.clone();
            std::thread::spawn(move || {
                let _ = w.write_all(&p); // until the relay closes it
            });
            s
        })
        .collect();
    // The stalled writers are cut off; a well-behaved client gets answers.
    wait_for("the relay to close the stalled connections", || {
        scrape(&r)["ucmrc_ng_transport_refused_total{reason=\"tcp_write_timeout\"}"] >= 4.0
    });
    let mut fresh = TcpStream::connect(ng_tcp).expect("connect");
    fresh.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    fresh.write_all(b"p1 d7:command4:pinge").expect("send");
    let mut buf = [0u8; 128];
    let n = fresh.read(&mut buf).expect("an answer");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("pong"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    drop(stalled);
}

#[test]
fn ng_answers_only_its_allowed_networks_and_a_public_listen_needs_a_list() {
    let r = start(Some(&cfg("", "allow_from = [\"127.0.0.2/32\"]", "")));
    let (ng_udp_addr, _) = r.ng.expect("ng");
    let allowed = udp("127.0.0.2");
    assert_eq!(ng(&r, &allowed, "d7:command4:pinge")["result"], "pong");
    let outsider = udp("127.0.0.1");
    outsider.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    outsider.send_to(b"z d7:command4:pinge", ng_udp_addr).expect("send");
    let mut buf = [0u8; 256];
    assert!(outsider.recv(&mut buf).is_err(), "no answer outside allow_from");

    let dir = std::env::temp_dir().join(format!("ucmrc-ng-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("public.toml");
    std::fs::write(&path, "[ng]\nlisten = \"0.0.0.0:22222\"\n").expect("write");
    let out = Command::new(bin()).args(["check-config", path.to_str().expect("path")]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("ng.allow_from"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn no_tenant_and_not_ng_can_take_every_port() {
    // 200 ports, in mixed use: the operator gives ng its share (alone, ng
    // may hold the whole range, as rtpengine does: docs/ng.md); every
    // tenant, ng's too, may hold half.
    let mixed = cfg("", "", "[tenants.ng]\nport_share_percent = 50");
    let r = start(Some(&mixed.replace("port_max = 20999", "port_max = 20199")));
    let proxy = udp("127.0.0.1");
    let caller = udp("127.0.0.1");
    let mut offers = 0;
    loop {
        let reply = ng(&r, &proxy, &offer(&format!("fill-{offers}"), &sdp(caller.local_addr().expect("addr"), None)));
        if reply["result"] == "error" {
            // rtpengine's words (a proxy's relay set fails over), UCMRC's code beside.
            assert_eq!(reply["error-reason"], "Ran out of ports", "{reply}");
            assert_eq!(reply["error-code"], "quota_exceeded", "{reply}");
            break;
        }
        offers += 1;
        assert!(offers < 200, "ng took more than its share");
    }
    assert_eq!(offers, 25, "ng holds half the ports (four per call: an even/odd pair per leg, like rtpengine)");
    let mut others = 0;
    while Call::allocate(&r, "acme").is_ok() {
        others += 1;
    }
    assert!(others >= 24, "another tenant still gets the ports ng could not take ({others} calls)");
}

#[test]
fn a_tokenless_admin_api_refuses_foreign_host_headers() {
    let text = "[relay]\nport_min = 20000\nport_max = 20099\nworkers = 1\n[ng]\nenabled = false\n\
                [admin]\nlisten = \"127.0.0.1:0\"\nallow_unauthenticated = true\n";
    let r = start(Some(text));
    let raw = |host: &str| {
        let mut s = TcpStream::connect(r.admin).expect("connect");
        s.write_all(format!("GET /v1/sessions HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
            .expect("send");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()).expect("status")
    };
    assert_eq!(raw("rebind.attacker.example:9180"), 403, "a browser rebound to 127.0.0.1 is refused");
    assert_eq!(raw("localhost:9180"), 200);
    assert_eq!(raw(&r.admin.to_string()), 200);
}
