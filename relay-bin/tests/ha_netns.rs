//! Redundancy across hosts: network namespaces made by the test (as root,
//! inside a private network namespace of its own: nothing touches the
//! host's interfaces) stand for an active relay, a standby, a Redis, phones
//! and a PBX on one bridge. The service address moves by the takeover hook
//! (`ip addr add` and a gratuitous ARP, as keepalived would do).
//!
//! Calls with real SRTP both ways through the service address — made over
//! the admin API, as a SIP call through a real Kamailio (ng to the service
//! address) and by a connector over the control channel — then `kill -9`
//! of the active and its host going down:
//! the standby takes over, media resumes on the same addresses within a
//! second, every SRTP packet that arrives authenticates, no call is lost,
//! ng `query` and the admin API on the standby show every call, Kamailio's
//! hold/resume re-INVITEs and BYE are served by the new active, the
//! connector is back and finds its session; the kernel fast path (the
//! default `auto` datapath) follows the address to the new active. Then
//! the old active returns and stays standby.
//!
//! `UCMRC_HA_CYCLES=N` (default 1) repeats the takeover N times, back and
//! forth, and prints the gaps (docs/HA.md's measurement).

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use test_support::netns::{sh, socket_in};
use test_support::packets::master;
use test_support::poll::wait_for;
use test_support::srtp::{Direction, Flow, PacedCall};
use test_support::turn_client::Client;
use test_support::ucmrc::kamailio::Kamailio;
use test_support::ucmrc::sip::{SdpView, SipMessage, SipSocket};
use test_support::ucmrc::*;

const CHILD: &str = "UCMRC_HA_NETNS_CHILD";
const VIP: &str = "10.77.0.100";
const TURN_REALM: &str = "turn.ha";
const TURN_SECRET: &[u8] = b"ha-turn-secret-0001";
const TURN_CHANNEL: u16 = 0x4010;

/// ChannelData from the Wave client through the service address's TURN
/// listener to the PBX's host — sent again until it arrives (a takeover
/// may be moving the address), from `relayed` — and back on the channel.
fn turn_round_trip(wave: &Client, peer: &UdpSocket, relayed: SocketAddr, n: u8) {
    let at: SocketAddr = format!("{VIP}:3478").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    'sent: loop {
        wave.channel_data(at, TURN_CHANNEL, &[n; 100]);
        // Copies of earlier rounds may still come: only this one counts.
        while let Ok((len, from)) = peer.recv_from(&mut buf) {
            if buf[..len] == [n; 100] {
                assert_eq!(from, relayed, "from the relayed address");
                break 'sent;
            }
        }
        assert!(Instant::now() < deadline, "ChannelData never reached the PBX's host");
    }
    peer.send_to(&[n ^ 0xff; 80], relayed).expect("send");
    assert_eq!(wave.recv_channel(), vec![n ^ 0xff; 80], "back to the client on its channel");
}

/// The relay's datapath counters now: forwarded and dropped packets, and
/// the kernel fast path's outcomes (nonzero ones, by name).
fn datapath_counters(r: &Relay) -> Vec<(String, f64)> {
    let mut counters: Vec<(String, f64)> = scrape(r)
        .into_iter()
        .filter(|(name, value)| {
            *value > 0.0
                && ["ucmrc_packets_forwarded", "ucmrc_packets_dropped", "ucmrc_fast_path_packets"]
                    .iter()
                    .any(|prefix| name.starts_with(prefix))
        })
        .collect();
    counters.sort_by(|a, b| a.0.cmp(&b.0));
    counters
}

/// Datagrams of TURN channels the kernel relayed on `r` (to the peer).
fn kernel_turn(r: &Relay) -> f64 {
    scrape(r).get("ucmrc_fast_path_packets_total{outcome=\"turn_to_peer\"}").copied().unwrap_or(0.0)
}

#[test]
fn a_standby_host_takes_over_the_service_address_with_every_call() {
    in_private_namespace("a_standby_host_takes_over_the_service_address_with_every_call", in_namespace);
}

#[test]
fn a_partitioned_active_stops_acknowledging_and_gives_the_address_up_at_the_heal() {
    in_private_namespace(
        "a_partitioned_active_stops_acknowledging_and_gives_the_address_up_at_the_heal",
        partition_in_namespace,
    );
}

/// Runs `scenario` in a new network and mount namespace: this test binary
/// again, told by `CHILD` which test it is.
fn in_private_namespace(test: &str, scenario: fn()) {
    if std::env::var(CHILD).is_ok_and(|t| t == test) {
        return scenario();
    }
    test_support::netns::rerun_in_namespaces(test, &["--net", "--mount"], (CHILD, test), "HA-NETNS-OK");
}

/// Hosts on one bridge: `name` gets 10.77.0.`n`.
fn topology() {
    sh("mount --make-rprivate / && mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns");
    sh("ip link set lo up && ip link add br-ha type bridge && ip addr add 10.77.0.1/24 dev br-ha && ip link set br-ha up");
    for (name, n) in [("node-a", 11), ("node-b", 12), ("redis", 5), ("phones", 21), ("pbx", 22)] {
        sh(&format!(
            "ip netns add {name} && ip link add v-{name} type veth peer name eth0 netns {name} && \
             ip link set v-{name} master br-ha up && ip -n {name} addr add 10.77.0.{n}/24 dev eth0 && \
             ip -n {name} link set eth0 up && ip -n {name} link set lo up"
        ));
    }
}

/// redis-server in its namespace; killed on drop (a failing scenario
/// must not leave it holding the test's output open).
struct RedisProcess(std::process::Child);

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> RedisProcess {
    let dir = temp_dir("ha-redis");
    let mut child = Command::new("ip")
        .args(["netns", "exec", "redis", "redis-server", "--bind", "10.77.0.5", "--port", "6379", "--save", ""])
        .args(["--appendonly", "no", "--protected-mode", "no", "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    test_support::redis_server::wait_ready(&mut child);
    RedisProcess(child)
}

struct Setup {
    dir: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    ca: std::path::PathBuf,
    cluster_key: std::path::PathBuf,
    tenant_block: String,
    token: String,
    turn_secret: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = temp_dir("ha");
    let (ca, cert, key) = write_pki(&dir, "relay");
    let cluster_key = dir.join("cluster.key");
    std::fs::write(&cluster_key, "a1".repeat(32)).expect("key");
    let out = Command::new(bin()).args(["token", "new", "--tenant", "acme"]).output().expect("token new");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let token = text.lines().next().and_then(|l| l.rsplit(' ').next()).expect("token").to_string();
    let tenant_block = text.split_once("relay config:\n").expect("config block").1.trim().to_string();
    let turn_secret = dir.join("turn.secret");
    std::fs::write(&turn_secret, format!("{}\n", String::from_utf8_lossy(TURN_SECRET))).expect("secret");
    Setup { dir, cert, key, ca, cluster_key, tenant_block, token, turn_secret }
}

/// A node's configuration: media on the service address (bound with
/// IP_FREEBIND before it arrives), listeners on every address, the hook
/// that moves the service address here.
fn node_config(s: &Setup, node: &str, role: &str) -> String {
    format!(
        "[relay]\nbind_ip = \"{VIP}\"\nport_min = 40000\nport_max = 40199\nworkers = 1\nallow_private_peers = true\n\
         [ng]\nlisten = \"0.0.0.0:22222\"\nallow_from = [\"10.77.0.0/24\"]\n\
         [admin]\nlisten = \"0.0.0.0:9180\"\ntoken_sha256 = \"{}\"\n\
         [control]\nlisten = \"0.0.0.0:7443\"\ncert = \"{}\"\nkey = \"{}\"\nheartbeat_secs = 1\n\
         {}\n\
         [cluster]\nredis_url = \"redis://10.77.0.5:6379/0\"\nnode_id = \"{node}\"\ngroup = \"svc\"\nrole = \"{role}\"\n\
         key_file = \"{}\"\nlease_ttl_ms = 600\nadvertise = \"{node}\"\n\
         takeover_hook = [\"sh\", \"-c\", \"ip addr add {VIP}/24 dev eth0 2>/dev/null; arping -q -U -c 2 -w 1 -I eth0 {VIP} || true\"]\n\
         stepdown_hook = [\"sh\", \"-c\", \"ip addr del {VIP}/24 dev eth0\"]\n\
         [turn]\nlisten = [\"{VIP}:3478\"]\nport_min = 41000\nport_max = 41099\n\
         [[turn.realms]]\nname = \"{TURN_REALM}\"\ntenant = \"acme\"\nsecret_files = [{:?}]\nallow_peers = [\"10.77.0.22/32\"]\n",
        token_hash(),
        s.cert.display(),
        s.key.display(),
        s.tenant_block,
        s.cluster_key.display(),
        s.turn_secret
    )
}

fn node_ip(node: &str) -> &'static str {
    if node == "node-a" {
        "10.77.0.11"
    } else {
        "10.77.0.12"
    }
}

fn start_node(s: &Setup, node: &str, role: &str) -> Relay {
    let mut r = start_with(&["ip", "netns", "exec", node], Some(&node_config(s, node, role)));
    r.admin = format!("{}:9180", node_ip(node)).parse().expect("admin");
    r
}

/// Both directions of `call`, paced and measured (the keys [`Call`] set).
fn media(call: &Call) -> PacedCall {
    let direction = |from: &UdpSocket, relay, sink: &UdpSocket, seed: u8, ssrc| Direction {
        from: from.try_clone().expect("clone"),
        relay,
        sink: sink.try_clone().expect("clone"),
        master: master(seed),
        ssrc,
    };
    PacedCall::start(vec![
        direction(&call.phone, call.to_endpoint_leg, &call.pbx, 2, 2),
        direction(&call.pbx, call.to_pbx_leg, &call.phone, 1, 1),
    ])
}

/// The ng address Kamailio and the test send to: the service address.
fn ng_addr() -> SocketAddr {
    format!("{VIP}:22222").parse().expect("addr")
}

/// An ng request in JSON to the service address.
struct Ng {
    sock: UdpSocket,
    n: u32,
}

impl Ng {
    fn call(&mut self, req: serde_json::Value) -> serde_json::Value {
        self.n += 1;
        let reply = ng_udp(&self.sock, ng_addr(), format!("h{} {req}", self.n).as_bytes());
        json(String::from_utf8(reply).expect("utf-8").split_once(' ').expect("cookie").1)
    }
}

/// A call through Kamailio (in the PBX's namespace, ng to the service
/// address): alice on the phones' host calls bob on the PBX's host, plain
/// RTP with rtcp-mux, Kamailio's `rtpengine_manage()` on every SDP and on
/// the BYE.
struct SipCall {
    alice: SipSocket,
    bob: SipSocket,
    alice_rtp: UdpSocket,
    bob_rtp: UdpSocket,
    call_id: String,
    alice_tag: String,
    bob_tag: String,
    route: Vec<String>,
    bob_target: String,
    cseq: u32,
    /// Where each sends its media (the relay's ports in the SDP it got).
    alice_sends_to: SocketAddr,
    bob_sends_to: SocketAddr,
    seq: u16,
}

const SIP_TIMEOUT: Duration = Duration::from_secs(5);

impl SipCall {
    fn sdp(ip: &str, port: u16, version: u32, direction: &str) -> String {
        format!(
            "v=0\r\no=- 7 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=rtcp-mux\r\na={direction}\r\n"
        )
    }

    /// INVITE, 200 and ACK through Kamailio; both sides are sent to the
    /// service address.
    fn establish(k: &Kamailio, cycle: usize) -> Self {
        let alice = SipSocket::from_socket(socket_in("phones", &format!("10.77.0.21:{}", 5070 + cycle), SIP_TIMEOUT));
        let bob = SipSocket::from_socket(socket_in("pbx", &format!("10.77.0.22:{}", 5170 + cycle), SIP_TIMEOUT));
        let port = |base: u16| base + 2 * cycle as u16;
        let alice_rtp = socket_in("phones", &format!("10.77.0.21:{}", port(34000)), SIP_TIMEOUT);
        let bob_rtp = socket_in("pbx", &format!("10.77.0.22:{}", port(35000)), SIP_TIMEOUT);
        let call_id = format!("ha-kamailio-{cycle}@10.77.0.21");
        let alice_tag = format!("alice-{cycle}");
        let invite = SipMessage::request(
            "INVITE",
            &format!("sip:bob@{}", bob.addr),
            vec![
                ("Via".into(), format!("SIP/2.0/UDP {};branch=z9hG4bKha{cycle}i;rport", alice.addr)),
                ("Max-Forwards".into(), "70".into()),
                ("From".into(), format!("<sip:alice@10.77.0.21>;tag={alice_tag}")),
                ("To".into(), "<sip:bob@10.77.0.22>".into()),
                ("Call-ID".into(), call_id.clone()),
                ("CSeq".into(), "1 INVITE".into()),
                ("Contact".into(), format!("<sip:alice@{}>", alice.addr)),
            ],
            &Self::sdp("10.77.0.21", port(34000), 1, "sendrecv"),
        );
        alice.send(&invite, k.sip);
        let (invite_in, proxy) = bob.expect("INVITE at bob", SIP_TIMEOUT, |m| m.method() == Some("INVITE"));
        let offer = SdpView::parse(&invite_in.body);
        assert_eq!(offer.addr.to_string(), VIP, "bob is sent to the service address; Kamailio:\n{}", k.log_text());
        let bob_tag = format!("bob-{cycle}");
        let ok = invite_in.response(
            200,
            "OK",
            &bob_tag,
            &format!("<sip:bob@{}>", bob.addr),
            Vec::new(),
            &Self::sdp("10.77.0.22", port(35000), 1, "sendrecv"),
        );
        bob.send(&ok, proxy);
        let (ok_in, _) =
            alice.expect("200 at alice", SIP_TIMEOUT, |m| m.status() == Some(200) && m.cseq_method() == "INVITE");
        let answer = SdpView::parse(&ok_in.body);
        assert_eq!(answer.addr.to_string(), VIP, "alice is sent to the service address");
        let mut call = Self {
            alice,
            bob,
            alice_rtp,
            bob_rtp,
            call_id,
            alice_tag,
            bob_tag,
            route: ok_in.all("Record-Route").into_iter().rev().collect(),
            bob_target: ok_in.header("Contact").expect("contact").trim_matches(['<', '>']).to_string(),
            cseq: 1,
            alice_sends_to: SocketAddr::new(answer.addr, answer.media[0].port),
            bob_sends_to: SocketAddr::new(offer.addr, offer.media[0].port),
            seq: 0,
        };
        call.ack(k);
        call
    }

    /// A request from alice inside the dialog, loose-routed via Kamailio.
    fn in_dialog(&self, method: &str, body: &str) -> SipMessage {
        let mut headers = vec![
            ("Via".into(), format!("SIP/2.0/UDP {};branch=z9hG4bKha{method}{};rport", self.alice.addr, self.cseq)),
            ("Max-Forwards".into(), "70".into()),
        ];
        headers.extend(self.route.iter().map(|r| ("Route".to_string(), r.clone())));
        headers.extend([
            ("From".into(), format!("<sip:alice@10.77.0.21>;tag={}", self.alice_tag)),
            ("To".into(), format!("<sip:bob@10.77.0.22>;tag={}", self.bob_tag)),
            ("Call-ID".into(), self.call_id.clone()),
            ("CSeq".into(), format!("{} {method}", self.cseq)),
            ("Contact".into(), format!("<sip:alice@{}>", self.alice.addr)),
        ]);
        SipMessage::request(method, &self.bob_target, headers, body)
    }

    fn ack(&mut self, k: &Kamailio) {
        let ack = self.in_dialog("ACK", "");
        self.alice.send(&ack, k.sip);
        self.bob.expect("ACK at bob", SIP_TIMEOUT, |m| m.method() == Some("ACK"));
    }

    /// A re-INVITE (hold, then resume) answered by bob: the relay must
    /// keep the call's ports — it knows the call, also after a takeover.
    fn reinvite(&mut self, k: &Kamailio, direction: &str, answer_direction: &str) {
        self.cseq += 1;
        let port = self.alice_rtp.local_addr().expect("addr").port();
        let reinvite = self.in_dialog("INVITE", &Self::sdp("10.77.0.21", port, self.cseq, direction));
        self.alice.send(&reinvite, k.sip);
        let cseq = format!("{} INVITE", self.cseq);
        let (rei, proxy) = self.bob.expect("re-INVITE at bob", SIP_TIMEOUT, |m| m.header("CSeq") == Some(&cseq));
        let offer = SdpView::parse(&rei.body);
        assert_eq!(SocketAddr::new(offer.addr, offer.media[0].port), self.bob_sends_to, "the same relay port for bob");
        assert_eq!(offer.media[0].direction, direction);
        let port = self.bob_rtp.local_addr().expect("addr").port();
        let ok = rei.response(
            200,
            "OK",
            &self.bob_tag,
            &format!("<sip:bob@{}>", self.bob.addr),
            Vec::new(),
            &Self::sdp("10.77.0.22", port, self.cseq, answer_direction),
        );
        self.bob.send(&ok, proxy);
        let (ok_in, _) = self.alice.expect("200 to the re-INVITE", SIP_TIMEOUT, |m| {
            m.status() == Some(200) && m.header("CSeq") == Some(&cseq)
        });
        let answer = SdpView::parse(&ok_in.body);
        assert_eq!(
            SocketAddr::new(answer.addr, answer.media[0].port),
            self.alice_sends_to,
            "the same relay port for alice"
        );
        assert_eq!(answer.media[0].direction, answer_direction);
        self.ack(k);
    }

    /// BYE through Kamailio (which sends ng `delete`), answered by bob.
    fn bye(&mut self, k: &Kamailio) {
        self.cseq += 1;
        let bye = self.in_dialog("BYE", "");
        self.alice.send(&bye, k.sip);
        let (bye_in, proxy) = self.bob.expect("BYE at bob", SIP_TIMEOUT, |m| m.method() == Some("BYE"));
        self.bob.send(
            &bye_in.response(200, "OK", &self.bob_tag, &format!("<sip:bob@{}>", self.bob.addr), Vec::new(), ""),
            proxy,
        );
        self.alice.expect("200 to the BYE", SIP_TIMEOUT, |m| m.status() == Some(200) && m.cseq_method() == "BYE");
    }

    /// `n` RTP packets each way through the relay, each compared byte for
    /// byte and coming from the relay's port.
    fn media(&mut self, n: u16) {
        let mut buf = [0u8; 2048];
        for _ in 0..n {
            self.seq += 1;
            for (from, to, dest, ssrc) in [
                (&self.alice_rtp, &self.bob_rtp, self.alice_sends_to, 0x0a11_ce00u32),
                (&self.bob_rtp, &self.alice_rtp, self.bob_sends_to, 0x0b0b_0000),
            ] {
                let mut p = vec![0x80, 0];
                p.extend_from_slice(&self.seq.to_be_bytes());
                p.extend_from_slice(&(u32::from(self.seq) * 160).to_be_bytes());
                p.extend_from_slice(&ssrc.to_be_bytes());
                p.extend((0..160u16).map(|b| (b as u8) ^ (self.seq as u8)));
                from.send_to(&p, dest).expect("send");
                let (len, src) = to.recv_from(&mut buf).expect("RTP across the relay");
                assert_eq!(&buf[..len], p.as_slice(), "RTP unchanged");
                let relay_side = if dest == self.alice_sends_to { self.bob_sends_to } else { self.alice_sends_to };
                assert_eq!(src, relay_side, "from the relay's port of the other leg");
            }
        }
    }
}

fn in_namespace() {
    topology();
    let redis = redis_server();
    let s = setup();
    let mut active = start_node(&s, "node-a", "active");
    wait_for("node-a active", || role(&active) == "active");
    let mut standby = start_node(&s, "node-b", "standby");
    wait_for("node-b standby", || role(&standby) == "standby");
    let (mut active_name, mut standby_name) = ("node-a", "node-b");

    // Calls over the admin API, on the service address, from the phones' and PBX's hosts.
    let mut calls = Vec::new();
    for i in 0..4u16 {
        let pbx = socket_in("pbx", &format!("10.77.0.22:{}", 30000 + i), Duration::from_millis(100));
        let phone = socket_in("phones", &format!("10.77.0.21:{}", 31000 + i), Duration::from_millis(100));
        let c = Call::allocate_with(&active, "acme", pbx, phone).expect("allocate");
        assert_eq!(c.to_pbx_leg.ip().to_string(), VIP);
        calls.push(c);
    }
    // Kamailio on the PBX's host, sending ng to the service address; and an
    // ng client of the test's own there, for queries beside it.
    let probe = SipSocket::from_socket(socket_in("phones", "10.77.0.21:5060", SIP_TIMEOUT));
    let kamailio =
        Kamailio::start(&["ip", "netns", "exec", "pbx"], "10.77.0.22:5060".parse().expect("sip"), ng_addr(), &probe);
    let mut ng = Ng { sock: socket_in("pbx", "10.77.0.22:0", Duration::from_millis(100)), n: 0 };
    ng.sock.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    // A connector (the PBX's) logs in over the control channel at the
    // service address and allocates a session of its own.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ca = std::fs::read(&s.ca).expect("ca");
    let mut cc = relay_core::connector::ConnectorConfig::new(
        &format!("{VIP}:7443"),
        "relay.test",
        relay_core::tls::ClientTrust::CaPem(ca),
        "acme",
        &s.token,
    );
    cc.connector_id = "pbx-ha".into();
    cc.heartbeat = Duration::from_millis(500);
    cc.connect_timeout = Duration::from_secs(2);
    cc.backoff = relay_core::connector::Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
    let connector = rt.block_on(async { relay_core::connector::Connector::start(cc) }).expect("connector");
    let ch = connector.handle();
    rt.block_on(ch.wait_connected(1, Duration::from_secs(10))).expect("connected");
    let own = || -> relay_core::api::SessionRequest {
        serde_json::from_value(serde_json::json!({"tenant": "acme"})).expect("request")
    };

    // A Wave client on the phones' host with a TURN channel, through the
    // service address, to a peer on the PBX's host.
    let turn_peer = socket_in("pbx", "10.77.0.22:29000", Duration::from_millis(100));
    let mut wave = Client::with_socket(
        socket_in("phones", "10.77.0.21:29001", Duration::from_secs(2)),
        TURN_SECRET,
        TURN_REALM,
        "wave-ha",
    );
    let turn_at: SocketAddr = format!("{VIP}:3478").parse().expect("addr");
    let relayed = wave.allocate(turn_at, &[]);
    assert_eq!(relayed.ip().to_string(), VIP, "relayed on the service address");
    wave.bind_channel(turn_at, TURN_CHANNEL, turn_peer.local_addr().expect("addr"));
    let mut turn_rounds = 0u8;

    let mut calls_media: Vec<PacedCall> = calls.iter().map(media).collect();
    let mut media_started = Instant::now();
    let cycles: usize = std::env::var("UCMRC_HA_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let mut gaps = Vec::new();
    for cycle in 0..cycles {
        // The connector's own session (fresh each cycle: an idle session
        // ends by its idle timeout).
        let owned = rt.block_on(ch.allocate(own())).expect("the connector allocates");
        // A SIP call through Kamailio, media both ways through the relay.
        let mut sip = SipCall::establish(&kamailio, cycle);
        sip.media(10);
        // Latched, replicated, and the standby caught up.
        wait_for("media latched", || {
            let (_, body) = http(active.admin, "GET", "/v1/sessions", Some(TOKEN), None);
            let v = json(&body);
            let sessions = v["sessions"].as_array().cloned().unwrap_or_default();
            sessions
                .iter()
                .filter(|s| !s["endpoint"]["remote_rtp"].is_null() && !s["pbx"]["remote_rtp"].is_null())
                .count()
                >= calls.len()
        });
        // Everything up to now is in Redis: two whole replication rounds
        // after this point (the one under way may have pulled its changes
        // before it; a queue seen empty may be about to fill). Then the
        // standby has applied all of it: every session and the ng call.
        let before = json(&http(active.admin, "GET", "/v1/sessions", Some(TOKEN), None).1);
        let rounds = replication_rounds(&active);
        wait_for("two replication rounds", || replication_rounds(&active) >= rounds + 2);
        let written = last_write(&active);
        wait_for("standby caught up", || last_write(&standby) >= written);
        let live = before["sessions"].as_array().map_or(0, Vec::len) as u64;
        assert_eq!(cluster(&standby)["warm_sessions"].as_u64(), Some(live), "the standby's copy is complete");
        // The Wave client's channel: relayed by the active's kernel fast
        // path (attached once the service address is there), and in the
        // standby's copy.
        wait_for("the active's kernel relays the TURN channel", || {
            turn_rounds = turn_rounds.wrapping_add(1);
            turn_round_trip(&wave, &turn_peer, relayed, turn_rounds);
            kernel_turn(&active) > 0.0
        });
        wait_for("the TURN allocation in the standby's copy", || cluster(&standby)["warm_turn"] == 1);
        assert_eq!(cluster(&standby)["warm_calls"], 1, "Kamailio's call is in the standby's copy");

        // The active's process is killed and its host goes down. What it
        // forwarded and dropped until then explains a gap that began
        // before the kill.
        let datapath_before_kill = datapath_counters(&active);
        signal(&active, 9);
        let killed = Instant::now();
        let kill_at = killed - media_started;
        sh(&format!("ip -n {active_name} link set eth0 down"));
        wait_for("the standby takes over", || role(&standby) == "active");
        let took_over = killed.elapsed();
        // Media resumes through the standby (all calls).
        let counted = |r: &Relay| scrape(r).get("ucmrc_packets_forwarded_total").copied().unwrap_or(0.0);
        let base = counted(&standby);
        wait_for("media through the new active", || counted(&standby) >= base + 8.0 * calls.len() as f64);
        let flows: Vec<Flow> = std::mem::take(&mut calls_media).into_iter().flat_map(PacedCall::finish).collect();
        let gap = flows.iter().map(|f| f.max_gap).max().unwrap_or_default();
        eprintln!(
            "cycle {cycle}: {active_name} killed, {standby_name} active after {took_over:?}; longest media gap {gap:?}"
        );
        for f in &flows {
            assert_eq!(f.auth_failures, 0, "every SRTP packet authentic: {f:?}");
            assert_eq!(f.sources.len(), 1, "the same relay address before and after: {f:?}");
            if f.max_gap >= Duration::from_secs(1) {
                // Which gap: one that began well before the kill is the
                // active's loss, not the takeover's.
                let (began, _) = f.long_gaps.iter().copied().max_by_key(|(_, gap)| *gap).unwrap_or_default();
                let on_the_active = began + Duration::from_millis(100) < kill_at;
                panic!(
                    "media gap of {:?} beginning {began:?} after the media started, the kill at {kill_at:?} \
                     (on the active before the kill: {on_the_active}): {f:?}; \
                     the active's datapath before the kill: {datapath_before_kill:?}",
                    f.max_gap
                );
            }
        }
        gaps.push(gap);
        // Every call is on the new active with the same latches.
        let after = json(&http(standby.admin, "GET", "/v1/sessions", Some(TOKEN), None).1);
        let key = |v: &serde_json::Value| {
            let mut k: Vec<String> = v["sessions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    format!(
                        "{} {} {} {}",
                        s["id"], s["pbx"]["rtp"], s["endpoint"]["remote_rtp"], s["pbx"]["remote_rtp"]
                    )
                })
                .collect();
            k.sort();
            k
        };
        if key(&before) != key(&after) {
            let log: Vec<String> = standby.stderr.try_iter().collect();
            panic!(
                "calls lost or moved: before {:?}\nafter {:?}\ntakeover {}\nthe new active's log:\n{}",
                key(&before),
                key(&after),
                cluster(&standby)["last_takeover"],
                log.join("\n")
            );
        }
        assert_eq!(cluster(&standby)["last_takeover"]["failed"], 0, "every session resumed");
        // The Wave client's channel goes on on the same relayed address
        // (the new active bound the service address's TURN ports before the
        // address arrived), relayed by its kernel fast path.
        wait_for("the new active's kernel relays the TURN channel", || {
            turn_rounds = turn_rounds.wrapping_add(1);
            turn_round_trip(&wave, &turn_peer, relayed, turn_rounds);
            kernel_turn(&standby) > 0.0
        });
        // The new active knows Kamailio's call: media on the same ports, a
        // hold and resume answered with the same ports, the BYE's delete.
        let q = ng.call(serde_json::json!({"command": "query", "call-id": sip.call_id}));
        assert_eq!(q["result"], "ok", "the new active knows the call: {q}");
        sip.media(10);
        sip.reinvite(&kamailio, "sendonly", "recvonly");
        sip.reinvite(&kamailio, "sendrecv", "sendrecv");
        sip.media(10);
        sip.bye(&kamailio);
        let q = ng.call(serde_json::json!({"command": "query", "call-id": sip.call_id}));
        assert_eq!(q["result"], "error", "the BYE deleted the call on the new active: {q}");
        kamailio.assert_no_ng_failure();
        // The connector is back on the service address and finds its session.
        rt.block_on(ch.wait_connected(cycle as u64 + 2, Duration::from_secs(10))).expect("connector back");
        let upd: relay_core::api::UpdateRequest =
            serde_json::from_value(serde_json::json!({"pbx": {"hint": "10.77.0.22:33000"}})).expect("update");
        rt.block_on(ch.update(&owned.id, upd)).expect("the connector's session is there");
        rt.block_on(ch.release(&owned.id)).expect("and releases it");
        calls_media = calls.iter().map(media).collect();
        media_started = Instant::now();
        // The kernel fast path followed the service address to the new
        // active (loaded at its start, attached once the address arrived).
        wait_for("kernel forwarding on the new active", || {
            scrape(&standby).get("ucmrc_packets_forwarded_kernel_total").copied().unwrap_or(0.0) > 0.0
        });

        // The old host comes back (without the service address, as after a
        // reboot) and starts its relay configured as before.
        sh(&format!(
            "ip -n {active_name} addr del {VIP}/24 dev eth0 2>/dev/null; ip -n {active_name} link set eth0 up"
        ));
        let returning_role = if active_name == "node-a" { "active" } else { "standby" };
        drop(active);
        active = start_node(&s, active_name, returning_role);
        wait_for("the returning node stays standby", || {
            role(&active) == "standby" && cluster(&active)["warm_sessions"].as_u64() >= Some(calls.len() as u64)
        });
        assert_eq!(scrape(&active)["ucmrc_ports_in_use"], 0.0, "it binds none of the service's ports");
        std::mem::swap(&mut active, &mut standby);
        std::mem::swap(&mut active_name, &mut standby_name);
        assert_eq!(role(&active), "active");
    }
    let flows: Vec<Flow> = calls_media.into_iter().flat_map(PacedCall::finish).collect();
    for f in &flows {
        assert_eq!(f.auth_failures, 0, "{f:?}");
        assert!(f.received > 0, "media still flows: {f:?}");
    }
    gaps.sort();
    println!(
        "takeover gaps over {} takeovers: p50 {:?}, max {:?}",
        gaps.len(),
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1]
    );
    rt.block_on(connector.stop());
    kamailio.assert_no_ng_failure();
    drop(kamailio);
    drop(active);
    drop(standby);
    drop(redis);
    let _ = std::fs::remove_dir_all(&s.dir);
    println!("HA-NETNS-OK");
}

/// The active's host loses its route to Redis while phones and the PBX
/// still reach it: it stops acknowledging allocations (and `GET
/// /v1/cluster` keeps answering at once) before the standby takes the
/// lease; allocations on both sides meanwhile never share an id; at the
/// heal the old active steps down and its step-down hook gives the service
/// address up; every allocation the new active acknowledged is there.
fn partition_in_namespace() {
    topology();
    let redis = redis_server();
    let s = setup();
    let a = start_node(&s, "node-a", "active");
    wait_for("node-a active", || role(&a) == "active");
    let b = start_node(&s, "node-b", "standby");
    wait_for("node-b standby", || role(&b) == "standby");
    let allocate = |r: &Relay, i: u16| {
        let pbx = socket_in("pbx", &format!("10.77.0.22:{}", 30000 + i), Duration::from_millis(100));
        let phone = socket_in("phones", &format!("10.77.0.21:{}", 31000 + i), Duration::from_millis(100));
        Call::allocate_with(r, "acme", pbx, phone)
    };
    let mut acknowledged: Vec<String> = (0..3).map(|i| allocate(&a, i).expect("allocate").id).collect();
    let written = last_write(&a);
    wait_for("standby caught up", || last_write(&b) >= written);

    sh("ip -n node-a route add blackhole 10.77.0.5/32");
    let cut = Instant::now();
    // Nothing is acknowledged by the cut-off node from the cut on (the
    // request waits for Redis, then is refused).
    let admin_a = a.admin;
    let during_cut =
        std::thread::spawn(move || http(admin_a, "POST", "/v1/sessions", Some(TOKEN), Some(r#"{"tenant":"acme"}"#)));
    wait_for("node-a fenced", || role(&a) == "fenced");
    let fenced = cut.elapsed();
    assert_ne!(role(&b), "active", "the standby took over before the cut-off active stopped acknowledging");
    wait_for("node-b takes over", || role(&b) == "active");
    let took_over = cut.elapsed();
    eprintln!("partition: node-a fenced after {fenced:?}, node-b active after {took_over:?}");
    let (status, body) = during_cut.join().expect("request");
    assert_eq!(status, 503, "acknowledged during the cut: {body}");
    assert!(body.contains("not_replicated") || body.contains("standby"), "{body}");
    // Status and metrics never wait on Redis: they answer at once.
    for path in ["/v1/cluster", "/metrics"] {
        let asked = Instant::now();
        let (status, _) = http(a.admin, "GET", path, Some(TOKEN), None);
        assert_eq!(status, 200);
        assert!(asked.elapsed() < Duration::from_millis(300), "{path} took {:?} during the cut", asked.elapsed());
    }
    // Allocations on both sides: the new active acknowledges, the old one
    // refuses; no id twice.
    for i in 20..30 {
        acknowledged.push(allocate(&b, i).expect("the new active allocates").id);
        assert!(matches!(allocate(&a, 40 + i), Err((503, _))), "the cut-off node acknowledged");
    }
    let ids: std::collections::HashSet<&String> = acknowledged.iter().collect();
    assert_eq!(ids.len(), acknowledged.len(), "an id handed out twice: {acknowledged:?}");

    sh("ip -n node-a route del blackhole 10.77.0.5/32");
    wait_for("node-a steps down", || role(&a) == "standby");
    wait_for("node-a gave the service address up", || {
        let out = Command::new("ip").args(["-n", "node-a", "-o", "addr", "show", "dev", "eth0"]).output().expect("ip");
        !String::from_utf8_lossy(&out.stdout).contains(VIP)
    });
    assert_eq!(scrape(&a)["ucmrc_sessions_active"], 0.0, "the old active serves nothing");
    let live = json(&http(b.admin, "GET", "/v1/sessions", Some(TOKEN), None).1);
    let mut on_b: Vec<String> = live["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| s["id"].as_str().unwrap_or("").to_string())
        .collect();
    on_b.sort();
    acknowledged.sort();
    assert_eq!(on_b, acknowledged, "every acknowledged session on the new active, nothing else");
    drop(a);
    drop(b);
    drop(redis);
    let _ = std::fs::remove_dir_all(&s.dir);
    println!("HA-NETNS-OK");
}
