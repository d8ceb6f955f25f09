//! The ng engine's behaviour as a table of cases, the way rtpengine's own
//! tests are written: request options, the SDP in, and the SDP out (the
//! relay's ports as `PORT`) or the refusal. Every row of the option table
//! (`ng::option_table::OPTIONS`) has at least one case here, honoured,
//! ignored or refused; the Kamailio test drives the same engine through a
//! real proxy.

use relay_core::ng::bencode::{self, Value};
use relay_core::ng::{NgConfig, NgEngine};
use relay_core::{Relay, RelayConfig};

/// What the sender offers: plain audio, PCMU and PCMA, RTCP on the next port.
const PLAIN: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n";

/// The same offered with rtcp-mux and ICE.
const MUX_ICE: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\na=rtcp-mux\r\na=ice-ufrag:uf\r\na=ice-pwd:pppppppppppppppppppppp\r\n\
a=candidate:1 1 udp 2130706431 127.0.0.2 4000 typ host\r\n";

/// SDES-keyed SRTP.
const SDES: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";

/// DTLS-SRTP with SDES keys too.
const DTLS_SDES: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
m=audio 4000 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-256 AB:CD\r\na=setup:actpass\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";

/// An offer whose RTCP port (RFC 3605) is one of the relay's own.
const RTCP_AT_RELAY: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\na=rtcp:26001\r\n";

/// What a case expects.
enum Expect {
    /// This SDP (relay ports as `PORT`).
    Sdp(&'static str),
    /// An error whose reason contains this.
    Refused(&'static str),
}

struct Case {
    name: &'static str,
    /// Extra keys of the offer (JSON-like pairs, flags as a list).
    options: Vec<(&'static str, Value)>,
    sdp: &'static str,
    expect: Expect,
}

fn flags(f: &[&str]) -> Value {
    Value::List(f.iter().map(|s| Value::str(s)).collect())
}

fn s(v: &str) -> Value {
    Value::str(v)
}

/// The relay's ports in a rewritten SDP, as `PORT`.
fn normalise(sdp: &str) -> String {
    let mut out = String::new();
    for line in sdp.split_inclusive("\r\n") {
        let body = line.trim_end_matches("\r\n");
        let fixed = if let Some(rest) = body.strip_prefix("m=") {
            let mut parts: Vec<&str> = rest.split(' ').collect();
            if parts.len() > 1 && parts[1] != "0" {
                parts[1] = "PORT";
            }
            format!("m={}", parts.join(" "))
        } else if body.starts_with("a=rtcp:") {
            "a=rtcp:PORT".to_string()
        } else if body.starts_with("a=candidate:ucmrc") {
            let mut parts: Vec<&str> = body.split(' ').collect();
            parts[5] = "PORT";
            parts.join(" ")
        } else {
            body.to_string()
        };
        out.push_str(&fixed);
        out.push_str("\r\n");
    }
    out
}

fn cases() -> Vec<Case> {
    use Expect::{Refused, Sdp};
    let case = |name, options: Vec<(&'static str, Value)>, sdp, expect| Case { name, options, sdp, expect };
    vec![
        case("call-id, from-tag, sdp: the basic offer", vec![], PLAIN, Sdp(BASIC)),
        case("rtcp-mux offered by the sender", vec![], MUX_ICE, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVP 0\r\na=rtcp:PORT\r\na=rtcp-mux\r\na=ice-ufrag:uf\r\na=ice-pwd:pppppppppppppppppppppp\r\na=candidate:ucmrc1 1 udp 2130706431 127.0.0.1 PORT typ host\r\na=end-of-candidates\r\n")),
        case("rtcp-mux-demux", vec![("flags", flags(&["rtcp-mux-demux"]))], MUX_ICE, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVP 0\r\na=rtcp:PORT\r\na=ice-ufrag:uf\r\na=ice-pwd:pppppppppppppppppppppp\r\na=candidate:ucmrc1 1 udp 2130706431 127.0.0.1 PORT typ host\r\na=candidate:ucmrc1 2 udp 2130706430 127.0.0.1 PORT typ host\r\na=end-of-candidates\r\n")),
        case("rtcp-mux require", vec![("rtcp-mux", flags(&["require"]))], PLAIN, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVP 0 8\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n")),
        case("rtcp-mux offer", vec![("rtcp-mux", flags(&["offer"]))], PLAIN, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVP 0 8\r\na=rtcp:PORT\r\na=rtcp-mux\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n")),
        case("rtcp-mux-reject", vec![("flags", flags(&["rtcp-mux-reject"]))], MUX_ICE, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVP 0\r\na=rtcp:PORT\r\na=rtcp-mux\r\na=ice-ufrag:uf\r\na=ice-pwd:pppppppppppppppppppppp\r\na=candidate:ucmrc1 1 udp 2130706431 127.0.0.1 PORT typ host\r\na=end-of-candidates\r\n")),
        case("rtcp-mux nonsense", vec![("rtcp-mux", flags(&["sideways"]))], PLAIN, Refused("unknown rtcp-mux option")),
        case("ICE=remove", vec![("flags", flags(&["ICE=remove"]))], MUX_ICE, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVP 0\r\na=rtcp:PORT\r\na=rtcp-mux\r\n")),
        case("ICE force on an ICE offer", vec![("ICE", s("force"))], MUX_ICE, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVP 0\r\na=rtcp:PORT\r\na=rtcp-mux\r\na=ice-ufrag:uf\r\na=ice-pwd:pppppppppppppppppppppp\r\na=candidate:ucmrc1 1 udp 2130706431 127.0.0.1 PORT typ host\r\na=end-of-candidates\r\n")),
        case("ICE force without ICE", vec![("ICE", s("force"))], PLAIN, Refused("ICE: force")),
        case("direction naming no interface", vec![("direction", flags(&["lan", "wan"]))], PLAIN, Sdp(BASIC)),
        case("media-address", vec![("media-address", s("203.0.113.9"))], PLAIN, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 203.0.113.9\r\nt=0 0\r\nm=audio PORT RTP/AVP 0 8\r\na=rtcp:PORT\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n")),
        case("address family IP6 on an IPv4 relay", vec![("address family", s("IP6"))], PLAIN, Refused("address family IP6")),
        case("address family IP4", vec![("address family", s("IP4"))], PLAIN, Sdp(BASIC)),
        case("replace-origin", vec![("flags", flags(&["replace-origin"]))], PLAIN, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVP 0 8\r\na=rtcp:PORT\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n")),
        case("replace session-connection", vec![("replace", flags(&["session-connection"]))], PLAIN, Sdp(BASIC)),
        case("replace sdp-version (ignored)", vec![("replace", flags(&["sdp-version", "username"]))], PLAIN, Sdp(BASIC)),
        case("SDES-off with DTLS keys", vec![("flags", flags(&["SDES-off"]))], DTLS_SDES, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT UDP/TLS/RTP/SAVP 0\r\na=rtcp:PORT\r\na=fingerprint:sha-256 AB:CD\r\na=setup:actpass\r\n")),
        case("SDES-off leaving no keys", vec![("SDES", flags(&["off"]))], SDES, Refused("SDES: off")),
        case("other SDES parameters (ignored)", vec![("flags", flags(&["SDES-no-AES_CM_128_HMAC_SHA1_32"]))], SDES, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/SAVP 0\r\na=rtcp:PORT\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n")),
        case("DTLS=off with SDES keys", vec![("DTLS", s("off"))], DTLS_SDES, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/SAVP 0\r\na=rtcp:PORT\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n")),
        case("DTLS passive (ignored)", vec![("DTLS", s("passive"))], DTLS_SDES, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT UDP/TLS/RTP/SAVP 0\r\na=rtcp:PORT\r\na=fingerprint:sha-256 AB:CD\r\na=setup:actpass\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n")),
        case("transport-protocol within a family", vec![("transport-protocol", s("RTP/AVPF"))], PLAIN, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVPF 0 8\r\na=rtcp:PORT\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n")),
        case("transport-protocol across families", vec![("transport-protocol", s("RTP/SAVP"))], PLAIN, Refused("needs SRTP encryption or decryption")),
        case("codec-strip-PCMA", vec![("flags", flags(&["codec-strip-PCMA"]))], PLAIN, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVP 0\r\na=rtcp:PORT\r\na=rtpmap:0 PCMU/8000\r\n")),
        case("codec mask", vec![("codec", Value::Dict([(b"mask".to_vec(), flags(&["PCMU"]))].into_iter().collect()))], PLAIN, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVP 8\r\na=rtcp:PORT\r\na=rtpmap:8 PCMA/8000\r\n")),
        case("codec strip all except PCMU", vec![("flags", flags(&["codec-strip-all", "codec-except-PCMU"]))], PLAIN, Sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio PORT RTP/AVP 0\r\na=rtcp:PORT\r\na=rtpmap:0 PCMU/8000\r\n")),
        case("codec strip of every codec", vec![("flags", flags(&["codec-strip-all"]))], PLAIN, Refused("no codec")),
        case("codec transcode", vec![("codec", Value::Dict([(b"transcode".to_vec(), flags(&["G722"]))].into_iter().collect()))], PLAIN, Refused("transcod")),
        case("ptime", vec![("ptime", Value::Int(30))], PLAIN, Refused("ptime")),
        case("record call", vec![("record call", s("yes"))], PLAIN, Refused("never records")),
        case("record call no", vec![("record call", s("no"))], PLAIN, Sdp(BASIC)),
        case("T.38", vec![("T.38", flags(&["decode"]))], PLAIN, Refused("T.38")),
        case("transcode flag", vec![("flags", flags(&["always-transcode"]))], PLAIN, Refused("always-transcode")),
        case("media echo", vec![("media echo", s("forward"))], PLAIN, Refused("media echo")),
        // An RFC 3605 RTCP port naming one of the relay's own ports (its
        // range is 26000-26999 here) is refused like any own-address hint.
        case("a=rtcp naming a relay port", vec![], RTCP_AT_RELAY, Refused("relay's own")),
        case("received-from", vec![("received-from", flags(&["IP4", "127.0.0.3"]))], PLAIN, Sdp(BASIC)),
        case("label", vec![("label", s("caller"))], PLAIN, Sdp(BASIC)),
        case("no-authenticated-latching", vec![("flags", flags(&["no-authenticated-latching"]))], PLAIN, Sdp(BASIC)),
        case("trust-address, symmetric (ignored)", vec![("flags", flags(&["trust-address", "symmetric", "port-latching"]))], PLAIN, Sdp(BASIC)),
        case("asymmetric, media-handover (ignored)", vec![("flags", flags(&["asymmetric", "media-handover"]))], PLAIN, Sdp(BASIC)),
        case("no-redis-update (ignored)", vec![("flags", flags(&["no-redis-update"]))], PLAIN, Sdp(BASIC)),
        case("unidirectional, loop-protect, TOS (ignored)", vec![("flags", flags(&["unidirectional", "loop-protect"])), ("TOS", Value::Int(184))], PLAIN, Sdp(BASIC)),
        case("xmlrpc-callback, supports, OSRTP (ignored)", vec![("xmlrpc-callback", s("127.0.0.1")), ("flags", flags(&["OSRTP"]))], PLAIN, Sdp(BASIC)),
    ]
}

/// The basic offer rewritten: `c=` and `m=` name the relay, RTCP its port.
const BASIC: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio PORT RTP/AVP 0 8\r\na=rtcp:PORT\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n";

/// A relay (`config`, one worker) with an ng engine on it, and a runtime
/// to drive the engine from a test.
struct Lab {
    relay: Relay,
    engine: std::sync::Arc<NgEngine>,
    rt: tokio::runtime::Runtime,
}

impl Lab {
    fn start(config: RelayConfig) -> Self {
        let relay = Relay::start(RelayConfig { workers: 1, ..config }).expect("relay");
        let engine = NgEngine::new(relay.handle(), NgConfig::default());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Self { relay, engine, rt }
    }

    /// Sends one ng command (`pairs`) and returns the reply.
    fn command(&self, cookie: &str, pairs: Vec<(&str, Value)>) -> Value {
        let msg = [cookie.as_bytes(), b" ", &bencode::dict(pairs).encode()].concat();
        let reply = self.rt.block_on(self.engine.handle_message(&msg));
        let at = reply.iter().position(|b| *b == b' ').expect("cookie");
        bencode::decode(&reply[at + 1..]).expect("bencode reply")
    }

    /// Runs case `c` as an offer of call `n`: the rewritten SDP, or the refusal.
    fn offer(&self, n: usize, c: &Case) -> Result<String, String> {
        let mut pairs = vec![
            ("command", s("offer")),
            ("call-id", Value::Bytes(format!("case-{n}").into_bytes())),
            ("from-tag", s("caller")),
            ("sdp", s(c.sdp)),
        ];
        pairs.extend(c.options.iter().cloned());
        // The cookie names the case too: the engine answers a repeated cookie from its cache.
        let cookie: String = format!("k{n}-{}", c.name).chars().filter(|ch| !ch.is_whitespace()).take(100).collect();
        let v = self.command(&cookie, pairs);
        match v.get("sdp").and_then(Value::as_str) {
            Some(sdp) => Ok(normalise(sdp)),
            None => Err(v.get("error-reason").and_then(Value::as_str).unwrap_or("").to_string()),
        }
    }
}

#[test]
fn every_option_behaves_as_its_case_says() {
    let lab = Lab::start(RelayConfig { port_min: 26000, port_max: 26999, ..RelayConfig::default() });
    let cases = cases();
    assert!(
        cases.len() >= relay_core::ng::option_table::OPTIONS.len(),
        "at least one case per row of the option table"
    );
    let mut failures = Vec::new();
    for (n, c) in cases.iter().enumerate() {
        let got = lab.offer(n, c);
        let ok = match (&c.expect, &got) {
            (Expect::Sdp(want), Ok(sdp)) => sdp == want,
            (Expect::Refused(why), Err(reason)) => reason.contains(why),
            _ => false,
        };
        if !ok {
            failures.push(format!("{}:\n  got {got:?}", c.name));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// A re-offer that adds sections and then fails (here: the relay runs out
/// of ports on the second new one) takes back what it allocated; the call
/// stays as it was.
#[test]
fn a_failed_reoffer_keeps_no_new_session() {
    // Eight ports: the first offer's section and one more (four a section).
    let lab = Lab::start(RelayConfig {
        port_min: 27000,
        port_max: 27007,
        tenant_port_share_percent: 100,
        ..RelayConfig::default()
    });
    let h = lab.relay.handle();
    let first = Case { name: "offer", options: vec![], sdp: PLAIN, expect: Expect::Sdp(BASIC) };
    assert!(lab.offer(0, &first).is_ok());
    let three: &'static str = "v=0\r\no=- 1 2 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\nm=video 4004 RTP/AVP 96\r\n";
    // The same call (`offer` names calls by their number), a new cookie.
    let again = Case { name: "re-offer", options: vec![], sdp: three, expect: Expect::Refused("Ran out of ports") };
    let refused = lab.offer(0, &again);
    assert!(refused.as_ref().is_err_and(|r| r.contains("Ran out of ports")), "{refused:?}");
    let active = h.counters().wait().expect("counters").total.sessions_active;
    assert_eq!(active, 1, "the call keeps its one session; the re-offer's new one is gone");
}

/// The `m=` ports of an SDP, in order.
fn media_ports(sdp: &str) -> Vec<u16> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("m="))
        .map(|m| m.split(' ').nth(1).and_then(|p| p.parse().ok()).expect("m= port"))
        .collect()
}

/// A disabled section (port 0) before an enabled one: the answer finds the
/// offer's session by its SDP section, not by its place among the call's
/// sessions, and updates it rather than allocating another.
#[test]
fn an_answer_after_a_disabled_section_updates_the_offers_session() {
    let lab = Lab::start(RelayConfig {
        port_min: 27100,
        port_max: 27199,
        tenant_port_share_percent: 100,
        ..RelayConfig::default()
    });
    let h = lab.relay.handle();
    let sdp = |ip: &str, port: u16| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\nm=video {port} RTP/AVP 96\r\n"
        )
    };
    let offered = lab.command(
        "o1",
        vec![("command", s("offer")), ("call-id", s("c1")), ("from-tag", s("a")), ("sdp", s(&sdp("127.0.0.2", 4002)))],
    );
    let offer_sdp = offered.get("sdp").and_then(Value::as_str).expect("offer answered").to_string();
    let answered = lab.command(
        "a1",
        vec![
            ("command", s("answer")),
            ("call-id", s("c1")),
            ("from-tag", s("a")),
            ("to-tag", s("b")),
            ("sdp", s(&sdp("127.0.0.3", 5002))),
        ],
    );
    let answer_sdp = answered.get("sdp").and_then(Value::as_str).expect("answer answered").to_string();
    let active = h.counters().wait().expect("counters").total.sessions_active;
    assert_eq!(active, 1, "one enabled section, one session");
    let (offer_ports, answer_ports) = (media_ports(&offer_sdp), media_ports(&answer_sdp));
    assert_eq!((offer_ports[0], answer_ports[0]), (0, 0), "the disabled section stays disabled");
    // The answer reached the offer's session: both of its legs know their
    // remotes, and the two SDPs name its two legs.
    let page = h.list(None, 10).wait().expect("list");
    let session = &page.sessions[0];
    assert_eq!(session.pbx.hint, Some("127.0.0.2:4002".parse().expect("addr")));
    assert_eq!(session.endpoint.hint, Some("127.0.0.3:5002".parse().expect("addr")));
    assert_eq!(offer_ports[1], session.endpoint.ports.rtp, "the answerer sends to the endpoint leg");
    assert_eq!(answer_ports[1], session.pbx.ports.rtp, "the offerer sends to the pbx leg");
}

/// One datagram on `s` (the test's synchronisation: what the relay
/// forwarded has been decided on).
fn receive(s: &std::net::UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let (n, _) = s.recv_from(&mut buf).expect("a datagram through the relay");
    buf[..n].to_vec()
}

/// With quality collection on, `query` reports per SSRC what rtpengine
/// does — MOS, round trips, jitter and loss from plain RTCP report blocks,
/// attributed to the reporting party — so a proxy's MOS variables work.
/// A and B exchange RTP, then SRs and RRs, through a real relay.
#[test]
fn query_reports_each_partys_mos_from_plain_rtcp_report_blocks() {
    use relay_core::SessionDefaults;
    use test_support::packets::{rtcp_rr_with, rtcp_sr, rtp, Report};
    let lab = Lab::start(RelayConfig {
        port_min: 27200,
        port_max: 27299,
        tenant_port_share_percent: 100,
        defaults: SessionDefaults { quality: true, ..SessionDefaults::default() },
        ..RelayConfig::default()
    });
    let bind = || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
        s
    };
    let (a, b) = (bind(), bind());
    let sdp = |port: u16| {
        format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtcp-mux\r\n")
    };
    let port = |s: &std::net::UdpSocket| s.local_addr().expect("addr").port();
    let offer = lab.command(
        "q1",
        vec![("command", s("offer")), ("call-id", s("mos")), ("from-tag", s("a")), ("sdp", s(&sdp(port(&a))))],
    );
    let answer = lab.command(
        "q2",
        vec![
            ("command", s("answer")),
            ("call-id", s("mos")),
            ("from-tag", s("a")),
            ("to-tag", s("b")),
            ("sdp", s(&sdp(port(&b)))),
        ],
    );
    // A sends where the answer says, B where the offer says.
    let relay_port = |v: &Value| media_ports(v.get("sdp").and_then(Value::as_str).expect("sdp"))[0];
    let (to_b, to_a) = (("127.0.0.1", relay_port(&answer)), ("127.0.0.1", relay_port(&offer)));
    let (ssrc_a, ssrc_b) = (0xa, 0xb);
    for seq in 0..3u16 {
        a.send_to(&rtp(ssrc_a, seq, u32::from(seq) * 160, 160), to_b).expect("send");
        assert_eq!(receive(&b).len(), 172);
        b.send_to(&rtp(ssrc_b, seq, u32::from(seq) * 160, 160), to_a).expect("send");
        assert_eq!(receive(&a).len(), 172);
    }
    // A's SR reaches B, whose RR about it comes back at once (DLSR 0): the
    // relay times its leg to B. Then B's SR and A's RR: the leg to A, so
    // A's report has an end-to-end round trip and a MOS.
    a.send_to(&rtcp_sr(ssrc_a, 0x1111_0000), to_b).expect("send");
    receive(&b);
    let about_a = Report { about: ssrc_a, fraction_lost: 0, cumulative_lost: 0, jitter: 0, lsr: 0x1111_0000, dlsr: 0 };
    b.send_to(&rtcp_rr_with(ssrc_b, about_a), to_a).expect("send");
    receive(&a);
    b.send_to(&rtcp_sr(ssrc_b, 0x2222_0000), to_a).expect("send");
    receive(&a);
    let about_b =
        Report { about: ssrc_b, fraction_lost: 26, cumulative_lost: 7, jitter: 40, lsr: 0x2222_0000, dlsr: 0 };
    a.send_to(&rtcp_rr_with(ssrc_a, about_b), to_b).expect("send");
    receive(&b);

    let query = lab.command("q3", vec![("command", s("query")), ("call-id", s("mos"))]);
    let ssrcs = query.get("SSRC").expect("an SSRC dictionary");
    let of_a = ssrcs.get(&ssrc_a.to_string()).expect("A's entry");
    let int = |v: &Value, k: &str| v.get(k).and_then(Value::as_int).unwrap_or_else(|| panic!("{k} in {v:?}"));
    assert_eq!((int(of_a, "packets"), int(of_a, "upstream loss"), int(of_a, "cumulative loss")), (3, 0, 7));
    for key in ["average MOS", "lowest MOS", "highest MOS"] {
        let m = of_a.get(key).unwrap_or_else(|| panic!("{key}"));
        // 10 % loss, 5 ms jitter, a loopback round trip: rtpengine's 3.4.
        assert!((33..=35).contains(&int(m, "MOS")), "{key}: {m:?}");
        assert_eq!((int(m, "jitter"), int(m, "packet loss")), (5, 10), "{key}");
        assert!(int(m, "round-trip time") >= int(m, "round-trip time leg") && int(m, "round-trip time leg") > 0);
    }
    assert_eq!(int(of_a.get("average MOS").expect("average"), "samples"), 1);
    // B reported before the relay knew A's round trip: a sample, no MOS.
    let of_b = ssrcs.get(&ssrc_b.to_string()).expect("B's entry");
    assert_eq!(int(of_b, "cumulative loss"), 0);
    assert!(of_b.get("average MOS").is_none(), "{of_b:?}");
    // Each party's stream names its SSRC, which keys the dictionary.
    let tags = query.get("tags").expect("tags");
    let stream = |tag: &str| {
        let medias = tags.get(tag).and_then(|t| t.get("medias")).expect("medias");
        let Value::List(medias) = medias else { panic!("a list") };
        let Some(Value::List(streams)) = medias[0].get("streams").cloned() else { panic!("streams") };
        int(&streams[0], "SSRC")
    };
    assert_eq!((stream("a"), stream("b")), (i64::from(ssrc_a), i64::from(ssrc_b)));
}

/// Every refusal both relays make reads in rtpengine's words (UCMRC's
/// detail, where it has one, after `": "`), checked against the engine.
#[test]
fn refusals_read_as_rtpengines() {
    use relay_core::ng::words;
    let lab = Lab::start(RelayConfig { port_min: 27300, port_max: 27399, ..RelayConfig::default() });
    let offer = |extra: Vec<(&'static str, Value)>| {
        let mut pairs = vec![("command", s("offer")), ("call-id", s("w1")), ("from-tag", s("a")), ("sdp", s(PLAIN))];
        for (k, v) in extra {
            pairs.retain(|(key, _)| *key != k);
            if v != Value::str("-") {
                pairs.push((k, v));
            }
        }
        pairs
    };
    let cases: Vec<(Vec<(&str, Value)>, &str)> = vec![
        (offer(vec![("sdp", s("-"))]), words::NO_SDP_BODY),
        (offer(vec![("call-id", s("-"))]), words::NO_CALL_ID),
        (offer(vec![("from-tag", s("-"))]), words::NO_FROM_TAG),
        (offer(vec![("command", s("answer"))]), words::NO_TO_TAG),
        (offer(vec![("command", s("answer")), ("to-tag", s("b")), ("call-id", s("nobody"))]), words::UNKNOWN_CALL_ID),
        (offer(vec![("sdp", s("v=0\r\nm=audio x RTP/AVP 0\r\n"))]), "Failed to parse SDP: "),
        (vec![("command", s("query")), ("call-id", s("nobody"))], words::UNKNOWN_CALL_ID),
        (vec![("command", s("query"))], words::NO_CALL_ID),
        (vec![("command", s("delete"))], words::NO_CALL_ID),
        (vec![("command", s("delete")), ("call-id", s("nobody")), ("flags", flags(&["fatal"]))], words::NOT_FOUND),
        (vec![("command", s("block media")), ("call-id", s("nobody"))], words::UNKNOWN_CALL_ID_BLOCK),
        (vec![("command", s("block media"))], words::NO_CALL_ID),
        (vec![("command", s("make coffee"))], "Unrecognized command: "),
    ];
    for (n, (pairs, want)) in cases.into_iter().enumerate() {
        let reply = lab.command(&format!("w{n}"), pairs);
        let reason = reply.get("error-reason").and_then(Value::as_str).unwrap_or("");
        assert!(
            reason == want || (want.ends_with(": ") && reason.starts_with(want)),
            "case {n}: {reason:?}, not {want:?}"
        );
    }
    // A tag the call does not have, on a call that exists.
    lab.command("made", offer(vec![]));
    let reply =
        lab.command("tagless", vec![("command", s("block media")), ("call-id", s("w1")), ("from-tag", s("stranger"))]);
    assert_eq!(reply.get("error-reason").and_then(Value::as_str), Some(words::UNKNOWN_FROM_TAG));
}
