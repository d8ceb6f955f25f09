//! TURN driven by clients this project did not write: coturn's
//! `turnutils_uclient` (Debian's `coturn` package; its server unused)
//! allocating with REST credentials through the real `ucmrc` binary, with
//! data echoed by coturn's `turnutils_peer`, over channels, Send
//! indications and client to client; and the refusals performed with the
//! same client (a wrong secret, the relay's own port, an internal address
//! not allow-listed, a user over its quota). Over UDP, TCP and TLS, and
//! on a tunnel listener shared with SNI pass-through (port 443's case).

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use test_support::poll::wait_for;
use test_support::ucmrc::*;

const SECRET: &str = "a-shared-secret-of-the-pbx-0001";

/// A relayed port range of its own for each relay (the tests run in
/// parallel; ranges shared among relays made their ports collide: an
/// EVEN-PORT Allocate whose port another relay held was answered 508).
/// All within 30000–30999, below the kernel's ephemeral ports.
fn turn_ports() -> (u16, u16) {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(30000);
    let base = NEXT.fetch_add(120, std::sync::atomic::Ordering::Relaxed);
    assert!(base + 119 <= 30999, "more relays than port ranges");
    (base, base + 119)
}

/// A relay whose `[turn]` section allow-lists only the echo peer's address
/// (loopback peers are otherwise refused), with REST credentials.
fn relay_with_turn(extra_turn: &str) -> Relay {
    relay_with(extra_turn, "")
}

/// [`relay_with_turn`] with more sections (`[control]`, `[tunnels]`).
fn relay_with(extra_turn: &str, sections: &str) -> Relay {
    relay_with_keys("", extra_turn, sections)
}

/// [`relay_with`] with more `[relay]` keys.
fn relay_with_keys(relay_keys: &str, extra_turn: &str, sections: &str) -> Relay {
    relay_allowing(relay_keys, extra_turn, sections, r#""127.0.0.1/32""#)
}

/// [`relay_with_keys`] whose realm allow-lists `allow_peers` (TOML array
/// items).
fn relay_allowing(relay_keys: &str, extra_turn: &str, sections: &str, allow_peers: &str) -> Relay {
    let dir = temp_dir("turn-secret");
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write secret");
    let (port_min, port_max) = turn_ports();
    let text = config(&format!(
        "{relay_keys}allow_loopback_peers = false\n[turn]\nlisten = [\"127.0.0.1:0\"]\nport_min = {port_min}\nport_max = {port_max}\n{extra_turn}\n\
         [[turn.realms]]\nname = \"turn.test\"\ntenant = \"acme\"\nsecret_files = [{secret:?}]\nallow_peers = [{allow_peers}]\n{sections}"
    ));
    let r = start(Some(&text));
    assert!(!r.turn.is_empty(), "the banner names the TURN listeners");
    r
}

/// coturn's echo peer on a loopback address; killed on drop.
struct EchoPeer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EchoPeer {
    fn start(ip: &str) -> Self {
        // A port the kernel picks (freed again for the peer to take).
        let port = UdpSocket::bind((ip, 0)).expect("bind").local_addr().expect("addr").port();
        let child = Command::new("turnutils_peer")
            .args(["-L", ip, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer (Debian's coturn package) runs");
        let addr = SocketAddr::new(ip.parse().expect("ip"), port);
        let probe = UdpSocket::bind((ip, 0)).expect("bind");
        probe.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        wait_for("turnutils_peer to echo", || {
            let _ = probe.send_to(b"ping", addr);
            let mut buf = [0u8; 16];
            matches!(probe.recv_from(&mut buf), Ok((4, _)))
        });
        Self { child, addr }
    }
}

/// What one `turnutils_uclient` run printed.
struct Run {
    output: String,
}

impl Run {
    /// Messages sent and echoed back, from the closing totals (none when
    /// the client gave up before sending).
    fn sent_and_received(&self) -> Option<(u64, u64)> {
        let line = self.output.lines().rev().find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))?;
        let figure = |key: &str| -> Option<u64> {
            line.split(key).nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.trim().parse().ok())
        };
        Some((figure("tot_send_msgs=")?, figure("tot_recv_msgs=")?))
    }

    /// Asserts every message of at least `clients` clients came back.
    fn assert_all_echoed(&self, clients: u64, messages: u64) {
        let (sent, received) = self.sent_and_received().unwrap_or_else(|| panic!("no totals in:\n{}", self.output));
        assert!(sent >= clients * messages && received == sent, "{sent} sent, {received} back:\n{}", self.output);
        assert!(self.output.contains("Total lost packets 0"), "{}", self.output);
    }
}

/// Runs `turnutils_uclient` against the relay's UDP TURN listener
/// (bounded: it sends `messages` per client and stops; a timeout kills it).
fn uclient(r: &Relay, flags: &[&str], secret: &str, user: &str, peer: Option<SocketAddr>, messages: u32) -> Run {
    uclient_at(r.turn_addr("udp"), flags, secret, user, peer, messages)
}

/// [`uclient`] against `turn` (a TCP, TLS or shared listener with `-t`).
fn uclient_at(
    turn: SocketAddr,
    flags: &[&str],
    secret: &str,
    user: &str,
    peer: Option<SocketAddr>,
    messages: u32,
) -> Run {
    uclient_auth(turn, flags, &["-W", secret, "-u", user], peer, messages)
}

/// `turnutils_uclient` with its credential flags (`-W secret -u user`: it
/// makes REST credentials itself; `-u username -w password`: given ones).
fn uclient_auth(turn: SocketAddr, flags: &[&str], auth: &[&str], peer: Option<SocketAddr>, messages: u32) -> Run {
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "turnutils_uclient"]).args(flags).args(auth);
    if let Some(peer) = peer {
        cmd.args(["-e", &peer.ip().to_string(), "-r", &peer.port().to_string()]);
    }
    cmd.args([
        "-n",
        &messages.to_string(),
        "-l",
        "180",
        "-z",
        "5",
        "-p",
        &turn.port().to_string(),
        &turn.ip().to_string(),
    ]);
    let out = cmd.output().expect("turnutils_uclient (Debian's coturn package) runs");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Run { output }
}

/// `GET /v1/turn/allocations`, checked against the schema the relay's own
/// OpenAPI document gives it.
fn allocations(r: &Relay) -> serde_json::Value {
    let (status, text) = http(r.admin, "GET", "/v1/turn/allocations", Some(TOKEN), None);
    assert_eq!(status, 200, "{text}");
    let listing = json(&text);
    let doc = json(&http(r.admin, "GET", "/v1/openapi.json", Some(TOKEN), None).1);
    let mut schema = doc["paths"]["/v1/turn/allocations"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"]
        .clone();
    schema["components"] = doc["components"].clone();
    let validator = jsonschema::draft7::new(&schema).expect("the schema compiles");
    assert!(validator.is_valid(&listing), "{listing} does not match its schema");
    listing
}

/// Marks the run of a test inside its own network namespace.
const NETNS_CHILD: &str = "UCMRC_TURN_KERNEL_CHILD";

#[test]
fn coturn_s_client_relays_over_channels_the_kernel_fast_path_carries() {
    if std::env::var_os(NETNS_CHILD).is_none() {
        // Again in a private network namespace (as root; the tc program
        // attaches to that namespace's loopback, never the host's).
        let test = "coturn_s_client_relays_over_channels_the_kernel_fast_path_carries";
        test_support::netns::rerun_in_namespaces(test, &["--net"], (NETNS_CHILD, "1"), "TURN-KERNEL-NETNS-OK");
        return;
    }
    test_support::netns::sh("ip link set lo up");
    let r = relay_with_keys("datapath = \"ebpf\"\n", "", "");
    let peer = EchoPeer::start("127.0.0.1");
    // coturn's client over channels (its default), two clients with an
    // RTP and an RTCP allocation each: every message echoed.
    uclient(&r, &["-m", "2"], SECRET, "wave-kernel", Some(peer.addr), 40).assert_all_echoed(2, 40);
    let m = scrape(&r);
    let kernel = |outcome: &str| m[&format!("ucmrc_fast_path_packets_total{{outcome=\"{outcome}\"}}")];
    // The kernel relayed the channels' data both ways (the first
    // datagrams of a channel may come before its binding, in userspace).
    assert!(kernel("turn_to_peer") >= 80.0 && kernel("turn_to_client") >= 80.0, "{m:?}");
    // ... and the server counts it with what it relayed itself.
    assert!(m["ucmrc_turn_relayed_packets_total{direction=\"to_peer\"}"] >= kernel("turn_to_peer"));
    assert!(m["ucmrc_turn_relayed_packets_total{direction=\"to_client\"}"] >= kernel("turn_to_client"));
    // The allocations listing brings the kernel's counters first: a
    // channel's datagrams count there at once (the periodic sync is every
    // half second).
    let turn = r.turn_addr("udp");
    let mut c = test_support::turn_client::Client::new(SECRET.as_bytes(), "turn.test", "wave-listed");
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sink.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    c.allocate(turn, &[]);
    c.bind_channel(turn, 0x4020, sink.local_addr().expect("addr"));
    let mut buf = [0u8; 64];
    for n in 0..5u8 {
        c.channel_data(turn, 0x4020, &[n; 10]);
        assert_eq!(sink.recv_from(&mut buf).expect("relayed").0, 10);
    }
    let listing = allocations(&r);
    let mine = listing["allocations"]
        .as_array()
        .expect("list")
        .iter()
        .find(|a| a["username"].as_str().is_some_and(|u| u.ends_with(":wave-listed")))
        .cloned();
    assert_eq!(mine.map(|a| a["to_peer"]["packets"].clone()), Some(5.into()), "{listing}");
    println!("TURN-KERNEL-NETNS-OK");
}

#[test]
fn coturn_clients_relay_through_ucmrc_over_channels_indications_and_client_to_client() {
    let r = relay_with_turn("");
    let peer = EchoPeer::start("127.0.0.1");
    // Channels (coturn's default), two clients each with an RTP and an
    // RTCP allocation (EVEN-PORT with a reservation, then the token).
    assert_eq!(allocations(&r)["total"], 0);
    uclient(&r, &["-m", "2"], SECRET, "wave-1", Some(peer.addr), 40).assert_all_echoed(2, 40);
    // What the client left (it deletes some allocations, not all) is
    // listed, without a credential.
    let listing = allocations(&r);
    assert_eq!(listing["enabled"], true);
    for a in listing["allocations"].as_array().expect("list") {
        assert_eq!((a["tenant"].as_str(), a["transport"].as_str()), (Some("acme"), Some("udp")), "{a}");
        assert!(a["username"].as_str().is_some_and(|u| u.ends_with(":wave-1")), "{a}");
        let port: u16 = a["relayed"].as_str().and_then(|s| s.parse::<SocketAddr>().ok()).expect("relayed").port();
        assert!((30000..=30999).contains(&port), "{a}");
    }
    assert!(!listing.to_string().contains(SECRET));
    // Send and Data indications instead of channels.
    uclient(&r, &["-s", "-m", "1"], SECRET, "wave-2", Some(peer.addr), 40).assert_all_echoed(1, 40);
    // Client to client: each client's peer is another's relayed address on
    // this server.
    uclient(&r, &["-y", "-m", "2"], SECRET, "wave-3", None, 40).assert_all_echoed(2, 40);

    let m = scrape(&r);
    assert!(m["ucmrc_turn_relayed_packets_total{direction=\"to_peer\"}"] >= 200.0, "{m:?}");
    assert!(m["ucmrc_turn_relayed_packets_total{direction=\"to_client\"}"] >= 200.0);
    assert!(m["ucmrc_turn_requests_total{method=\"allocate\",result=\"success\"}"] >= 9.0);
    assert!(m["ucmrc_turn_requests_total{method=\"channel_bind\",result=\"success\"}"] >= 4.0);
    assert!(m["ucmrc_turn_requests_total{method=\"create_permission\",result=\"success\"}"] >= 1.0);
    assert!(
        m["ucmrc_turn_requests_total{method=\"allocate\",result=\"401\"}"] >= 9.0,
        "every client was challenged first"
    );
}

/// Dual allocations (ADDITIONAL-ADDRESS-FAMILY; coturn's `-Z`, at the
/// draft's code point coturn uses): every client gets an IPv4 and an IPv6
/// relayed address, refreshes naming either family (the client picks one
/// at random), and reaches an IPv4 peer from the one and, with `-x`, an
/// IPv6 peer from the other.
#[test]
fn coturn_clients_make_dual_allocations_and_relay_from_either_family() {
    let r = relay_allowing("", "relay_ipv6 = \"::1\"\n", "", r#""127.0.0.1/32", "::1/128""#);
    let peer4 = EchoPeer::start("127.0.0.1");
    let peer6 = EchoPeer::start("::1");
    uclient(&r, &["-Z", "-m", "3"], SECRET, "dual-4", Some(peer4.addr), 30).assert_all_echoed(3, 30);
    uclient(&r, &["-Z", "-x", "-m", "3"], SECRET, "dual-6", Some(peer6.addr), 30).assert_all_echoed(3, 30);
    // What the clients left is listed: the probe allocation each client
    // makes first (never deleted) with both relayed addresses; the client
    // deletes its others naming one family at random or none (RFC 8656
    // §7.1: that family's address alone goes).
    let listing = allocations(&r);
    let dual: Vec<_> = listing["allocations"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| Some((a["relayed"].as_str()?.parse::<SocketAddr>().ok()?, a["relayed_second"].as_str()?)))
        .collect();
    assert!(dual.len() >= 6, "{listing}");
    for (first, second) in dual {
        assert!(first.is_ipv4() && second.parse::<SocketAddr>().is_ok_and(|s| s.is_ipv6()), "{listing}");
    }
    let m = scrape(&r);
    assert!(m["ucmrc_turn_relayed_packets_total{direction=\"to_peer\"}"] >= 180.0, "{m:?}");
    assert!(m["ucmrc_turn_relayed_packets_total{direction=\"to_client\"}"] >= 180.0, "{m:?}");
}

#[test]
fn coturn_clients_are_refused_wrong_secrets_own_and_internal_peers_and_excess() {
    let r = relay_with_turn("allocations_per_user = 2");
    let peer = EchoPeer::start("127.0.0.1");
    // A wrong shared secret: no allocation.
    let run = uclient(&r, &["-c"], "not-the-secret-of-this-relay", "mallory", Some(peer.addr), 5);
    assert!(run.output.contains("Cannot complete Allocation"), "{}", run.output);
    // The relay's own ng port as a peer, and a loopback address that is
    // not allow-listed: 403 on the channel binding.
    let ng = r.ng.expect("ng listener").0;
    let run = uclient(&r, &["-c"], SECRET, "probe-1", Some(ng), 5);
    assert!(run.output.contains("error 403"), "{}", run.output);
    let internal = EchoPeer::start("127.0.0.2");
    let run = uclient(&r, &["-c"], SECRET, "probe-2", Some(internal.addr), 5);
    assert!(run.output.contains("error 403"), "{}", run.output);
    assert!(run.sent_and_received().is_none_or(|(_, back)| back == 0), "nothing reached the internal peer");
    // Three clients of one user with a quota of two allocations.
    let run = uclient(&r, &["-c", "-m", "3"], SECRET, "greedy", Some(peer.addr), 5);
    assert!(run.output.contains("486"), "{}", run.output);

    let m = scrape(&r);
    assert!(m["ucmrc_turn_requests_total{method=\"channel_bind\",result=\"403\"}"] >= 2.0, "{m:?}");
    assert!(m["ucmrc_turn_requests_total{method=\"allocate\",result=\"486\"}"] >= 1.0);
    assert_eq!(m["ucmrc_turn_relayed_packets_total{direction=\"to_peer\"}"], 0.0, "nothing relayed to refused peers");
}

#[test]
fn coturn_clients_over_tcp_and_tls_and_on_the_port_shared_with_sni_pass_through() {
    let dir = temp_dir("turn-tls");
    let (_, ccert, ckey) = write_pki(&dir, "control");
    let (_, tcert, tkey) = write_pki(&dir, "turn");
    let r = relay_with(
        &format!(
            "tcp_listen = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\ntls_cert = {tcert:?}\ntls_key = {tkey:?}\n\
             server_names = [\"turn.relay.test\"]"
        ),
        &format!(
            "[control]\nlisten = \"127.0.0.1:0\"\ncert = {ccert:?}\nkey = {ckey:?}\n[tunnels]\ndata_listen = \"127.0.0.1:0\"\n\
             domain_patterns = [\"{{tenant}}.relay.test\"]\n[[tunnels.listeners]]\nlisten = \"127.0.0.1:0\"\nservice = \"sip-tls\"\n"
        ),
    );
    let peer = EchoPeer::start("127.0.0.1");
    // TURN's own TCP and TLS listeners.
    uclient_at(r.turn_addr("tcp"), &["-t", "-m", "2"], SECRET, "tcp-1", Some(peer.addr), 30).assert_all_echoed(2, 30);
    uclient_at(r.turn_addr("tls"), &["-t", "-S", "-m", "2"], SECRET, "tls-1", Some(peer.addr), 30)
        .assert_all_echoed(2, 30);
    // The tunnel listener (the PBXs' port 443): TURN over TCP by its STUN
    // header, TURN over TLS by ALPN stun.turn (coturn's client offers it).
    let shared = r.tunnels[0].1;
    uclient_at(shared, &["-t", "-m", "1"], SECRET, "tcp-443", Some(peer.addr), 30).assert_all_echoed(1, 30);
    uclient_at(shared, &["-t", "-S", "-m", "1"], SECRET, "tls-443", Some(peer.addr), 30).assert_all_echoed(1, 30);
    // By server name (TLS without ALPN): a TURN request answered (401).
    let pem = std::fs::read(&tcert).expect("cert");
    let trust = relay_core::tls::ClientTrust::pinned_hex(&relay_core::tls::pem_fingerprint(&pem).expect("fingerprint"))
        .expect("pin");
    let config = relay_core::tls::client_config(&trust).expect("client config");
    let name = rustls::pki_types::ServerName::try_from("turn.relay.test").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(shared).expect("connect"));
    let mut allocate = relay_core::wire::stun_writer::StunWriter::new(0x0003, [9; 12]);
    allocate.attribute(0x0019, &[17, 0, 0, 0]);
    std::io::Write::write_all(&mut tls, &allocate.finish()).expect("allocate over TLS");
    let mut answer = [0u8; 20];
    std::io::Read::read_exact(&mut tls, &mut answer).expect("an answer");
    assert_eq!(answer[..2], [0x01, 0x13], "an Allocate error response (401 challenge)");
    let before = scrape(&r);
    let handed = before["ucmrc_tunnel_handoffs_total"];
    assert!(handed >= 2.0, "{before:?}");
    // A hello for a PBX's name is still routed as a tunnel (here refused:
    // no such tenant), not handed to TURN.
    let mut tls = std::net::TcpStream::connect(shared).expect("connect");
    let hello = relay_core::wire::client_hello::build_client_hello(Some("acme.relay.test"), 0, 512);
    std::io::Write::write_all(&mut tls, &hello).expect("hello");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tls, &mut rest);
    let after = scrape(&r);
    assert_eq!(after["ucmrc_tunnel_handoffs_total"], handed, "a PBX's hello is not TURN's");
    let refused = |m: &std::collections::HashMap<String, f64>| -> f64 {
        m.iter().filter(|(k, _)| k.starts_with("ucmrc_tunnel_rejections_total")).map(|(_, v)| v).sum()
    };
    assert_eq!(refused(&after), refused(&before) + 1.0, "routed as a tunnel (and refused: no such PBX)");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_pbx_asks_for_turn_credentials_on_its_control_channel_and_coturn_s_client_uses_them() {
    let dir = temp_dir("turn-grant");
    let (ca, cert, key) = write_pki(&dir, "control");
    let (acme_token, globex_token) = ("acme-connector-token-0123456789abcdef", "globex-connector-token-0123456789abcd");
    let hash = |t: &str| hex::encode(relay_core::control::auth::token_hash(t));
    let r = relay_with(
        "",
        &format!(
            "[control]\nlisten = \"127.0.0.1:0\"\ncert = {cert:?}\nkey = {key:?}\n\
             [tenants.acme]\ntoken_sha256 = \"{}\"\n[tenants.globex]\ntoken_sha256 = \"{}\"\n",
            hash(acme_token),
            hash(globex_token)
        ),
    );
    let peer = EchoPeer::start("127.0.0.1");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let connect = |tenant: &str, token: &str| {
        let ca = std::fs::read(&ca).expect("ca");
        let config = relay_core::connector::ConnectorConfig::new(
            &r.control.expect("control listener").to_string(),
            "relay.test",
            relay_core::tls::ClientTrust::CaPem(ca),
            tenant,
            token,
        );
        let c = rt.block_on(async { relay_core::connector::Connector::start(config) }).expect("connector");
        rt.block_on(c.handle().wait_connected(1, Duration::from_secs(10))).expect("connected");
        c
    };
    // acme's PBX asks for a Wave client's credentials: acme's realm, the
    // UDP listener among the URIs, and coturn's client relays with them.
    let acme = connect("acme", acme_token);
    let grant =
        rt.block_on(acme.handle().turn_credentials("wave-7", Some(Duration::from_secs(600)))).expect("credentials");
    assert_eq!(grant.realm, "turn.test");
    assert!(grant.username.ends_with(":wave-7"), "{grant:?}");
    let udp = r.turn_addr("udp");
    assert!(grant.uris.contains(&format!("turn:{}:{}?transport=udp", udp.ip(), udp.port())), "{grant:?}");
    let auth = ["-u", grant.username.as_str(), "-w", grant.password.as_str()];
    uclient_auth(udp, &["-m", "1"], &auth, Some(peer.addr), 30).assert_all_echoed(1, 30);
    // A tampered password is refused like any wrong credential.
    let mut wrong = grant.password.clone();
    wrong.replace_range(0..1, if wrong.starts_with('A') { "B" } else { "A" });
    let run = uclient_auth(udp, &["-c"], &["-u", grant.username.as_str(), "-w", &wrong], Some(peer.addr), 5);
    assert!(run.output.contains("Cannot complete Allocation"), "{}", run.output);
    // globex has no TURN realm: it gets none, and never acme's.
    let globex = connect("globex", globex_token);
    let refused = rt.block_on(globex.handle().turn_credentials("wave-7", None));
    assert!(
        matches!(&refused, Err(relay_core::connector::ConnectorError::Refused { code, .. }) if code == "turn_not_configured"),
        "{refused:?}"
    );
    let m = scrape(&r);
    assert_eq!(m["ucmrc_connector_events_total{event=\"turn_credentials_issued\"}"], 1.0, "{m:?}");
    rt.block_on(acme.stop());
    rt.block_on(globex.stop());

    // A PBX that is not a Rust program asks `ucmrc connect`'s local API.
    let token_file = dir.join("acme.token");
    std::fs::write(&token_file, format!("{acme_token}\n")).expect("token file");
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let connect_toml = dir.join("connect.toml");
    std::fs::write(
        &connect_toml,
        format!(
            "relay = \"{}\"\nserver_name = \"relay.test\"\nca_file = {ca:?}\ntenant = \"acme\"\ntoken_file = {token_file:?}\n\
             local_api = \"127.0.0.1:0\"\n",
            r.control.expect("control listener")
        ),
    )
    .expect("connect config");
    let connector = Connector::start(&connect_toml);
    let api = connector.local_api.expect("the banner names the local API");
    let (status, body) =
        http(api, "POST", "/v1/turn/credentials", None, Some(r#"{"user":"wave-9","lifetime_secs":600}"#));
    assert_eq!(status, 200, "{body}");
    let grant = json(&body);
    let (username, password) =
        (grant["username"].as_str().expect("username"), grant["password"].as_str().expect("password"));
    assert!(username.ends_with(":wave-9") && grant["realm"] == "turn.test" && grant["ttl_secs"] == 600, "{grant}");
    assert_eq!(grant["ice_servers"][0]["urls"], grant["uris"]);
    assert_eq!(
        (grant["ice_servers"][0]["username"].as_str(), grant["ice_servers"][0]["credential"].as_str()),
        (Some(username), Some(password))
    );
    uclient_auth(udp, &["-m", "1"], &["-u", username, "-w", password], Some(peer.addr), 20).assert_all_echoed(1, 20);
    let (status, body) = http(api, "POST", "/v1/turn/credentials", None, Some(r#"{"user":"no:colons"}"#));
    assert_eq!((status, json(&body)["code"].as_str()), (400, Some("invalid_field")), "{body}");
    let (status, _) = http(api, "POST", "/v1/turn/credentials", None, Some("not json"));
    assert_eq!(status, 400);
    assert_eq!(http(api, "GET", "/v1/sessions", None, None).0, 404, "nothing else");
    drop(connector);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn coturn_clients_make_tcp_allocations_rfc_6062_over_tcp_and_tls() {
    let dir = temp_dir("turn-6062");
    let (_, tcert, tkey) = write_pki(&dir, "turn");
    let r = relay_with(
        &format!(
            "tcp_listen = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\ntls_cert = {tcert:?}\ntls_key = {tkey:?}"
        ),
        "",
    );
    let bytes = |m: &std::collections::HashMap<String, f64>, direction: &str| {
        m[&format!("ucmrc_turn_relayed_bytes_total{{direction=\"{direction}\"}}")]
    };
    // Client to client over TCP relays (-T): each client allocates a TCP
    // relayed address and permits the other's; one Connects (the server
    // dials from its relayed address), the other is told of the incoming
    // connection; both bind data connections and echo through them. Each
    // message crosses one allocation towards its peer and the other
    // towards its client.
    for (turn, flags, user) in
        [(r.turn_addr("tcp"), &["-T"][..], "tcp-relay"), (r.turn_addr("tls"), &["-T", "-S"], "tls-relay")]
    {
        let before = scrape(&r);
        let run = uclient_at(turn, flags, SECRET, user, None, 30);
        run.assert_all_echoed(2, 30);
        let after = scrape(&r);
        let delta = |key: &str| after[key] - before[key];
        assert_eq!(delta("ucmrc_turn_requests_total{method=\"connect\",result=\"success\"}"), 1.0, "{}", run.output);
        assert_eq!(delta("ucmrc_turn_requests_total{method=\"connection_bind\",result=\"success\"}"), 2.0);
        let sent = run.sent_and_received().expect("totals").0 as f64;
        for direction in ["to_peer", "to_client"] {
            assert_eq!(bytes(&after, direction) - bytes(&before, direction), sent * 180.0, "{direction}");
        }
    }
    // A peer that dials the relayed address itself (-P): the allocation's
    // client is told, binds, and the bytes cross both ways. (coturn's
    // client counts only one side's echoes in this mode, against coturn
    // too: the relay's counters are the measure.)
    let before = scrape(&r);
    let run = uclient_at(r.turn_addr("tcp"), &["-P", "-m", "1"], SECRET, "passive", None, 20);
    assert!(run.output.contains("tot_send_msgs=40"), "{}", run.output);
    let after = scrape(&r);
    for direction in ["to_peer", "to_client"] {
        assert_eq!(bytes(&after, direction) - bytes(&before, direction), 20.0 * 180.0, "{direction}: {}", run.output);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sighup_rotates_turn_secrets_while_allocations_go_on() {
    const NEW_SECRET: &str = "the-next-shared-secret-of-the-pbx";
    let dir = temp_dir("turn-rotate");
    let (old, new) = (dir.join("old.secret"), dir.join("new.secret"));
    std::fs::write(&old, SECRET).expect("old secret");
    std::fs::write(&new, NEW_SECRET).expect("new secret");
    let (port_min, port_max) = turn_ports();
    let text = |files: &[&std::path::Path]| {
        config(&format!(
            "allow_loopback_peers = false\n[turn]\nlisten = [\"127.0.0.1:0\"]\nport_min = {port_min}\nport_max = {port_max}\n\
             [[turn.realms]]\nname = \"turn.test\"\ntenant = \"acme\"\nsecret_files = {files:?}\nallow_peers = [\"127.0.0.1/32\"]\n"
        ))
    };
    let r = start(Some(&text(&[&old])));
    let peer = EchoPeer::start("127.0.0.1");
    uclient(&r, &["-c"], SECRET, "before", Some(peer.addr), 10).assert_all_echoed(1, 10);
    let refused = uclient(&r, &["-c"], NEW_SECRET, "early", Some(peer.addr), 5);
    assert!(refused.output.contains("Cannot complete Allocation"), "{}", refused.output);
    // A Wave client holds an allocation with a channel across the reloads.
    let turn = r.turn_addr("udp");
    let mut wave = test_support::turn_client::Client::new(SECRET.as_bytes(), "turn.test", "wave-held");
    let relayed = wave.allocate(turn, &[]);
    let sink = UdpSocket::bind("127.0.0.1:0").expect("peer");
    sink.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    wave.bind_channel(turn, 0x4005, sink.local_addr().expect("addr"));
    let round_trip = |n: u8| {
        wave.channel_data(turn, 0x4005, &[n; 32]);
        let mut buf = [0u8; 64];
        let (len, from) = sink.recv_from(&mut buf).expect("to the peer");
        assert_eq!((&buf[..len], from), (&[n; 32][..], relayed));
        sink.send_to(&[!n; 16], relayed).expect("back");
        assert_eq!(wave.recv_channel(), vec![!n; 16]);
    };
    round_trip(1);
    // Rotation: the new secret first (new credentials), the old one still
    // accepted; SIGHUP, no restart.
    std::fs::write(config_path(&r), text(&[&new, &old])).expect("config");
    signal(&r, libc::SIGHUP);
    assert!(stderr_contains(&r, "configuration reloaded"), "reloaded");
    uclient(&r, &["-c"], NEW_SECRET, "rotated", Some(peer.addr), 10).assert_all_echoed(1, 10);
    uclient(&r, &["-c"], SECRET, "still-old", Some(peer.addr), 10).assert_all_echoed(1, 10);
    // The old secret retired: refused for new allocations; the held one
    // goes on (its key is the one it was made with).
    std::fs::write(config_path(&r), text(&[&new])).expect("config");
    signal(&r, libc::SIGHUP);
    assert!(stderr_contains(&r, "configuration reloaded"), "reloaded");
    let retired = uclient(&r, &["-c"], SECRET, "retired", Some(peer.addr), 5);
    assert!(retired.output.contains("Cannot complete Allocation"), "{}", retired.output);
    uclient(&r, &["-c"], NEW_SECRET, "after", Some(peer.addr), 10).assert_all_echoed(1, 10);
    round_trip(2);
    let lifetime = [(relay_core::turn::proto::ATTR_LIFETIME, 600u32.to_be_bytes().to_vec())];
    assert_eq!(
        wave.ask(turn, relay_core::turn::proto::Method::Refresh, &lifetime, None).0,
        None,
        "refreshed after the rotation"
    );
    let _ = std::fs::remove_dir_all(dir);
}
