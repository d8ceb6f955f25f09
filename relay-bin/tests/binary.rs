//! Integration tests that start the real `ucmrc` binary: no-config start,
//! `check-config` errors, the session lifecycle over HTTP with real SRTP,
//! authentication, Prometheus metrics, SIGHUP reload (good and broken) and
//! SIGTERM drain.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use test_support::packets::master;
use test_support::poll::wait_for;
use test_support::ucmrc::*;

#[test]
fn runs_with_no_config_on_loopback() {
    // The defaults are fixed ports (admin 9180, ng 22222, relay ports
    // 10000-19999): the relay runs in a private network namespace, where no
    // other test's socket can hold one of them (one did, once).
    const CHILD: &str = "UCMRC_NO_CONFIG_CHILD";
    if std::env::var_os(CHILD).is_none() {
        test_support::netns::rerun_in_namespaces(
            "runs_with_no_config_on_loopback",
            &["--net"],
            (CHILD, "1"),
            "NO-CONFIG-NETNS-OK",
        );
        return;
    }
    assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip").success());
    let r = start(None);
    assert_eq!(r.admin, "127.0.0.1:9180".parse().expect("addr"), "documented default admin address");
    assert_eq!(http(r.admin, "GET", "/healthz", None, None).0, 200);
    let (status, body) = http(r.admin, "POST", "/v1/sessions", None, Some(r#"{"tenant":"demo"}"#));
    assert_eq!(status, 201, "{body}");
    let v = json(&body);
    let ep: SocketAddr = v["endpoint"]["rtp"].as_str().expect("addr").parse().expect("addr");
    assert!(ep.ip().is_loopback());
    assert!((10000..=19999).contains(&ep.port()));
    println!("NO-CONFIG-NETNS-OK");
}

#[test]
fn check_config_names_key_and_line() {
    let dir = temp_dir("check");
    let cases = [
        ("[relay]\nport_min = 30000\nprot_max = 5\n", "3", "prot_max"),
        (
            "[admin]\nallow_unauthenticated = true\n\n[relay]\nport_min = 40000\nport_max = 30000\n",
            "5",
            "relay.port_min",
        ),
        ("[admin]\nallow_unauthenticated = true\n[sessions]\nlatch = \"sticky\"\n", "4", "sessions.latch"),
        ("[admin]\nallow_unauthenticated = true\n[relay]\ndatapath = \"fast\"\n", "4", "relay.datapath"),
        ("[admin]\nlisten = \"0.0.0.0:9180\"\nallow_unauthenticated = true\n", "3", "admin.allow_unauthenticated"),
    ];
    for (text, line, key) in cases {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).expect("write");
        let out = Command::new(bin()).args(["check-config", path.to_str().expect("path")]).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(&format!("bad.toml:{line}:")), "line {line} missing in {err:?}");
        assert!(err.contains(key), "key {key} missing in {err:?}");
    }
    let good = dir.join("good.toml");
    std::fs::write(&good, config("")).expect("write");
    let out = Command::new(bin()).args(["check-config", good.to_str().expect("path")]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains(&token_hash()), "secrets are masked");
    // The example config in the repo is valid.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ucmrc.example.toml");
    let out = Command::new(bin()).args(["check-config", example]).output().expect("run");
    assert!(out.status.success(), "example config: {}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn session_lifecycle_over_http_with_real_srtp_and_metrics() {
    let r = start(Some(&config("")));
    // Authentication.
    assert_eq!(http(r.admin, "GET", "/healthz", None, None).0, 200, "probes need no token");
    for token in [None, Some("wrong")] {
        let (status, body) = http(r.admin, "GET", "/v1/sessions", token, None);
        assert_eq!(status, 401, "{body}");
        assert_eq!(json(&body)["code"], "unauthorized");
        assert_eq!(http(r.admin, "POST", "/v1/sessions", token, Some(r#"{"tenant":"x"}"#)).0, 401);
        assert_eq!(http(r.admin, "GET", "/metrics", token, None).0, 401);
    }
    // Bad input is a 4xx with a stable code, never a 500.
    for (body, code) in [
        ("not json", "invalid_json"),
        (r#"{"tenant":"t","bogus":1}"#, "invalid_json"),
        (r#"{"tenant":""}"#, "invalid_spec"),
        (r#"{"tenant":"t","latch":"sticky"}"#, "invalid_field"),
        (r#"{"tenant":"t","pbx":{"hint":"not-an-ip"}}"#, "invalid_field"),
        (r#"{"tenant":"t","pbx":{"srtp_auth":{"rtp_key":"zz","rtcp_key":"00"}}}"#, "invalid_field"),
        (r#"{"tenant":"t","latch":"authenticated"}"#, "invalid_spec"),
    ] {
        let (status, text) = http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(body));
        assert_eq!(status, 400, "{body} -> {text}");
        assert_eq!(json(&text)["code"], code, "{body} -> {text}");
    }
    // A well-formed address the peer policy refuses is a 403, not malformed input.
    let (status, text) = http(
        r.admin,
        "POST",
        "/v1/sessions",
        Some(TOKEN),
        Some(r#"{"tenant":"t","pbx":{"hint":"169.254.169.254:80"}}"#),
    );
    assert_eq!((status, json(&text)["code"].as_str()), (403, Some("forbidden_address")), "{text}");
    assert_eq!(json(&http(r.admin, "GET", "/v1/sessions/xyz", Some(TOKEN), None).1)["code"], "invalid_id");
    assert_eq!(http(r.admin, "GET", "/v1/sessions/0000000000000000", Some(TOKEN), None).0, 404);

    let before = scrape(&r);
    let mut call = Call::allocate(&r, "acme").expect("allocate");
    let delivered: usize = (0..200).map(|_| call.exchange()).sum();
    assert!(delivered >= 396, "delivered {delivered} of 400");
    let (status, body) = http(r.admin, "GET", &format!("/v1/sessions/{}", call.id), Some(TOKEN), None);
    assert_eq!(status, 200);
    let s = json(&body);
    assert_eq!(s["latch"], "authenticated");
    assert_eq!(s["endpoint"]["remote_rtp"], call.phone.local_addr().expect("addr").to_string());
    assert!(s["endpoint"]["packets_forwarded"].as_u64().expect("n") >= 198);
    assert_eq!(s["endpoint"]["quality"][0]["ssrc"], 2);
    let listed = json(&http(r.admin, "GET", "/v1/sessions?limit=10", Some(TOKEN), None).1);
    assert!(listed["sessions"].as_array().expect("array").iter().any(|x| x["id"] == call.id.as_str()));

    let after = scrape(&r);
    let moved = after["ucmrc_packets_forwarded_total"] - before["ucmrc_packets_forwarded_total"];
    assert!(moved >= delivered as f64, "forwarded counter moved by {moved}");
    assert_eq!(after["ucmrc_sessions_active"], 1.0);
    assert!(after["process_resident_memory_bytes"] > 0.0 && after["process_open_fds"] > 0.0);
    assert!(after["ucmrc_admin_requests_total{operation=\"allocate\",result=\"ok\"}"] >= 1.0);
    assert!(after["ucmrc_admin_requests_total{operation=\"allocate\",result=\"client_error\"}"] >= 8.0);

    // PATCH changes a running session: the new hint shows in its state.
    let path = format!("/v1/sessions/{}", call.id);
    let (status, body) = http(r.admin, "PATCH", &path, Some(TOKEN), Some(r#"{"endpoint":{"hint":"127.0.0.9"}}"#));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["endpoint"]["hint"], "127.0.0.9:0");
    let (status, body) = http(r.admin, "PATCH", &path, Some(TOKEN), Some(r#"{"latch":"never"}"#));
    assert_eq!((status, json(&body)["code"].as_str()), (400, Some("invalid_field")), "{body}");
    let (status, body) = http(r.admin, "DELETE", &path, Some(TOKEN), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(http(r.admin, "GET", &format!("/v1/sessions/{}", call.id), Some(TOKEN), None).0, 404);
    assert_eq!(scrape(&r)["ucmrc_sessions_active"], 0.0);
    let openapi = json(&http(r.admin, "GET", "/v1/openapi.json", Some(TOKEN), None).1);
    assert_eq!(openapi["openapi"], "3.0.3");
}

#[test]
fn sighup_applies_a_new_limit_while_the_call_flows_and_rejects_a_broken_file() {
    let r = start(Some(&config("[tenants.acme]\nmax_sessions = 1\n")));
    let mut call = Call::allocate(&r, "acme").expect("first session");
    assert!(call.exchange() == 2);
    let (status, body) = Call::allocate(&r, "acme").err().expect("quota of 1");
    assert_eq!((status, json(&body)["code"].as_str()), (409, Some("quota_exceeded")));

    // A broken file is rejected and the running config stays.
    std::fs::write(config_path(&r), "[relay\nthis is not toml").expect("write");
    signal(&r, libc::SIGHUP);
    assert!(stderr_contains(&r, "rejected"), "the rejection is logged");
    assert!(call.exchange() == 2, "media unaffected");
    assert_eq!(Call::allocate(&r, "acme").err().map(|e| e.0), Some(409), "old limit still applies");

    // A good file with a higher limit applies while the call keeps flowing.
    std::fs::write(config_path(&r), config("[tenants.acme]\nmax_sessions = 2\n")).expect("write");
    signal(&r, libc::SIGHUP);
    let mut second = None;
    wait_for("the new limit", || {
        assert_eq!(call.exchange(), 2, "call keeps flowing during the reload");
        second = Call::allocate(&r, "acme").ok();
        second.is_some()
    });
    let mut second = second.expect("second session");
    assert_eq!(second.exchange(), 2);
    for _ in 0..50 {
        assert_eq!(call.exchange(), 2);
    }
    let m = scrape(&r);
    assert_eq!(m["ucmrc_sessions_active"], 2.0, "0 lost sessions");
    assert_eq!(m["ucmrc_sessions_expired_total{reason=\"idle\"}"], 0.0);
}

#[test]
fn sigterm_drains_keeping_the_active_call_until_it_is_released() {
    let mut r = start(Some(&config("drain_timeout_secs = 60\n")));
    let mut call = Call::allocate(&r, "acme").expect("session");
    assert_eq!(call.exchange(), 2);
    signal(&r, libc::SIGTERM);
    wait_for("/readyz to fail", || http(r.admin, "GET", "/readyz", None, None).0 == 503);
    let (status, body) = http(r.admin, "POST", "/v1/sessions", Some(TOKEN), Some(r#"{"tenant":"acme"}"#));
    assert_eq!((status, json(&body)["code"].as_str()), (503, Some("draining")));
    for _ in 0..100 {
        assert_eq!(call.exchange(), 2, "the active call keeps flowing while draining");
    }
    assert!(r.child.try_wait().expect("wait").is_none(), "still running while a call is up");
    assert_eq!(http(r.admin, "DELETE", &format!("/v1/sessions/{}", call.id), Some(TOKEN), None).0, 200);
    wait_for("the relay to exit after the last session", || r.child.try_wait().expect("wait").is_some());
    let status = r.child.try_wait().expect("wait").expect("exited");
    assert!(status.success(), "clean exit after draining: {status:?}");
}

#[test]
fn demo_pushes_real_srtp_through_a_relay_and_summarizes() {
    let out = Command::new(bin()).args(["demo", "--calls", "4", "--seconds", "2"]).output().expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary =
        stdout.lines().find(|l| l.starts_with("summary:")).unwrap_or_else(|| panic!("no summary in {stdout}"));
    assert!(summary.contains(" 0 auth failures"), "{summary}");
    assert!(stdout.lines().any(|l| l.starts_with("t=")), "a live line each second: {stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("connector: logged in to the relay's control channel (TLS)")),
        "calls are allocated through a connector: {stdout}"
    );
    let received: u64 = summary
        .split("received ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no received count in {summary}"));
    assert!(received >= 600, "4 calls × 2 directions × 50 pps × 2 s should mostly arrive: {summary}");
}

#[test]
fn ng_protocol_offer_answer_media_query_delete_cache_and_garbage() {
    use base64::Engine as _;
    let r = start(Some(&config("")));
    let (ng, ng_tcp) = r.ng.expect("ng enabled");
    let ctl = UdpSocket::bind("127.0.0.1:0").expect("bind");
    ctl.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    assert_eq!(ng_udp(&ctl, ng, b"c0 d7:command4:pinge"), b"c0 d6:result4:ponge");
    assert_eq!(ng_udp(&ctl, ng, br#"j0 {"command":"ping"}"#), br#"j0 {"result":"pong"}"#, "JSON dictionaries too");

    // Garbage gets error replies, never silence or a crash.
    for bad in [&b"hello"[..], b"c1 d7:command4:nopee", b"c2 i1e", b"c3 d7:command5:offere", b"c4 d3:sdp"] {
        let reply = String::from_utf8_lossy(&ng_udp(&ctl, ng, bad)).to_string();
        assert!(reply.contains("6:result5:error") && reply.contains("error-reason"), "{bad:?} -> {reply}");
    }

    let (caller, callee) =
        (UdpSocket::bind("127.0.0.1:0").expect("bind"), UdpSocket::bind("127.0.0.1:0").expect("bind"));
    for s in [&caller, &callee] {
        s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    }
    let (mk_caller, mk_callee) = (master(31), master(32));
    let b64 = |m: &[u8]| base64::engine::general_purpose::STANDARD.encode(m);
    let sdp = |port: u16, key: &[u8]| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/SAVP 0\r\na=rtcp-mux\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\na=ice-ufrag:u\r\na=ice-pwd:p\r\n",
            b64(key)
        )
    };
    let offer_sdp = sdp(caller.local_addr().expect("addr").port(), &mk_caller);
    let offer = format!(
        "o1 d7:call-id{}5:flagsl{}e8:from-tag{}3:ICE{}7:command5:offer3:sdp{}e",
        bstr("call-1"),
        bstr("authenticated"),
        bstr("tag-a"),
        bstr("remove"),
        bstr(&offer_sdp)
    );
    let reply = ng_udp(&ctl, ng, offer.as_bytes());
    let offered = sdp_of(&reply);
    assert!(!offered.contains("ice-ufrag") && offered.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80"), "{offered}");
    assert!(offered.contains("c=IN IP4 127.0.0.1\r\n"));
    let to_callee_leg = sdp_port(&offered);
    // A retransmission gets the cached reply and allocates nothing new.
    assert_eq!(ng_udp(&ctl, ng, offer.as_bytes()), reply);
    assert_eq!(scrape(&r)["ucmrc_sessions_active"], 1.0);

    let answer_sdp = sdp(callee.local_addr().expect("addr").port(), &mk_callee);
    let answer = format!(
        "a1 d7:call-id{}5:flagsl{}e8:from-tag{}6:to-tag{}7:command6:answer3:sdp{}e",
        bstr("call-1"),
        bstr("authenticated"),
        bstr("tag-a"),
        bstr("tag-b"),
        bstr(&answer_sdp)
    );
    let answered = sdp_of(&ng_udp(&ctl, ng, answer.as_bytes()));
    let to_caller_leg = sdp_port(&answered);
    assert_ne!(to_caller_leg, to_callee_leg);

    // Real SRTP both ways through the rewritten ports.
    let p = srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80();
    fn pol(p: srtp::CryptoPolicy, k: &[u8]) -> srtp::StreamPolicy<'_> {
        srtp::StreamPolicy { rtp: p, rtcp: p, key: k, ..Default::default() }
    }
    let (mut caller_tx, mut callee_rx) = (session(pol(p, &mk_caller), true), session(pol(p, &mk_caller), false));
    let (mut callee_tx, mut caller_rx) = (session(pol(p, &mk_callee), true), session(pol(p, &mk_callee), false));
    let mut buf = vec![0u8; 2048];
    for seq in 1..=100u16 {
        for (tx, from, to_port, rx, at) in [
            (&mut caller_tx, &caller, to_caller_leg, &mut callee_rx, &callee),
            (&mut callee_tx, &callee, to_callee_leg, &mut caller_rx, &caller),
        ] {
            let mut pkt = Vec::with_capacity(400);
            pkt.extend_from_slice(&[0x80, 0]);
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]);
            pkt.resize(172, 7);
            tx.protect(&mut pkt).expect("protect");
            from.send_to(&pkt, SocketAddr::from(([127, 0, 0, 1], to_port))).expect("send");
            let n = at.recv(&mut buf).expect("media through the relay");
            let mut got = buf[..n].to_vec();
            assert_eq!(got, pkt);
            rx.unprotect(&mut got).expect("authentic");
        }
    }

    // A re-offer (new cookie) reuses the call's relay ports.
    let reoffer = offer.replacen("o1 ", "o2 ", 1);
    assert_eq!(sdp_port(&sdp_of(&ng_udp(&ctl, ng, reoffer.as_bytes()))), to_callee_leg);
    assert_eq!(scrape(&r)["ucmrc_sessions_active"], 1.0);
    // SDES: the relay derived only the auth keys from a=crypto and latches with proof.
    let listed = json(&http(r.admin, "GET", "/v1/sessions", Some(TOKEN), None).1);
    let s0 = &listed["sessions"][0];
    assert_eq!(s0["latch"], "authenticated", "{s0}");
    assert_eq!(
        (s0["pbx"]["has_srtp_auth"].as_bool(), s0["endpoint"]["has_srtp_auth"].as_bool()),
        (Some(true), Some(true))
    );
    let q = String::from_utf8_lossy(&ng_udp(
        &ctl,
        ng,
        format!("q1 d7:call-id{}7:command5:querye", bstr("call-1")).as_bytes(),
    ))
    .to_string();
    assert!(
        q.contains("6:result2:ok") && q.contains("5:tag-a") && q.contains("5:tag-b") && q.contains("10:local port"),
        "{q}"
    );
    assert!(q.contains("7:packetsi100e"), "per-stream packet counts: {q}");

    // TCP transport.
    let mut t = TcpStream::connect(ng_tcp).expect("tcp");
    t.write_all(b"t1 d7:command4:pinge").expect("write");
    let mut got = [0u8; 19];
    t.read_exact(&mut got).expect("tcp reply");
    assert_eq!(&got, b"t1 d6:result4:ponge");

    let del = String::from_utf8_lossy(&ng_udp(
        &ctl,
        ng,
        format!("d1 d7:call-id{}8:from-tag{}7:command6:deletee", bstr("call-1"), bstr("tag-a")).as_bytes(),
    ))
    .to_string();
    assert!(del.contains("6:result2:ok"), "{del}");
    wait_for("ports freed", || scrape(&r)["ucmrc_sessions_active"] == 0.0);
    let q = String::from_utf8_lossy(&ng_udp(
        &ctl,
        ng,
        format!("q2 d7:call-id{}7:command5:querye", bstr("call-1")).as_bytes(),
    ))
    .to_string();
    assert!(q.contains("error"), "{q}");
    // A second delete is ok with rtpengine's warning (Kamailio's
    // rtpengine_delete() must not fail); with the `fatal` flag it is an error.
    let again = String::from_utf8_lossy(&ng_udp(
        &ctl,
        ng,
        format!("d3 d7:call-id{}7:command6:deletee", bstr("call-1")).as_bytes(),
    ))
    .to_string();
    assert!(again.contains("6:result2:ok") && again.contains("7:warning"), "{again}");
    let fatal = String::from_utf8_lossy(&ng_udp(
        &ctl,
        ng,
        format!("d4 d7:call-id{}5:flagsl5:fatale7:command6:deletee", bstr("call-1")).as_bytes(),
    ))
    .to_string();
    assert!(fatal.contains("6:result5:error"), "{fatal}");
}

#[test]
fn connect_binary_logs_in_over_tls_and_the_relay_lists_counts_and_reloads() {
    let dir = temp_dir("connect");
    let (ca, cert, key) = write_pki(&dir, "relay");
    // `token new --tenant` prints the token and the block for the relay config.
    let out = Command::new(bin()).args(["token", "new", "--tenant", "acme"]).output().expect("token new");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let token = text.lines().next().and_then(|l| l.rsplit(' ').next()).expect("token").to_string();
    let block = text.split_once("relay config:\n").expect("config block").1.trim().to_string();
    assert!(block.starts_with("[tenants.acme]\ntoken_sha256 = \"") && !block.contains(&token), "{block}");
    let token_file = dir.join("acme.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");

    let control = format!(
        "[control]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\nheartbeat_secs = 1\n[tunnels]\ndata_listen = \"127.0.0.1:0\"\ndomain_patterns = [\"{{tenant}}.relay.test\"]\n[[tunnels.listeners]]\nlisten = \"127.0.0.1:0\"\nservice = \"sip-tls\"\n{block}\nservices = [\"sip-tls\"]\n",
        cert.display(),
        key.display()
    );
    let r = start(Some(&config(&control)));
    let control_addr = r.control.expect("control listener in the banner");
    let (service, tunnel_addr) = r.tunnels.first().cloned().expect("a tunnel listener in the banner");
    assert_eq!(service, "sip-tls");
    // The PBX's TLS service (here: a TCP server that checks the hello arrives verbatim).
    let hello = relay_core::wire::client_hello::build_client_hello(Some("acme.relay.test"), 0, 64);
    let pbx = std::net::TcpListener::bind("127.0.0.1:0").expect("pbx");
    let pbx_addr = pbx.local_addr().expect("pbx addr");
    let expected = hello.clone();
    let pbx_thread = std::thread::spawn(move || {
        let (mut s, _) = pbx.accept().expect("the connector dials the PBX");
        let mut got = vec![0u8; expected.len()];
        s.read_exact(&mut got).expect("hello");
        assert_eq!(got, expected, "the hello reaches the PBX verbatim");
        s.write_all(b"routed").expect("answer");
    });

    let connect_toml = dir.join("connect.toml");
    std::fs::write(
        &connect_toml,
        format!(
            "relay = \"{control_addr}\"\nserver_name = \"relay.test\"\nca_file = \"{}\"\ntenant = \"acme\"\ntoken_file = \"acme.token\"\nconnector_id = \"pbx-bin\"\n[services]\nsip-tls = \"{pbx_addr}\"\n",
            ca.display()
        ),
    )
    .expect("connect config");
    let check =
        Command::new(bin()).args(["connect", "--check", "--config"]).arg(&connect_toml).output().expect("check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(!String::from_utf8_lossy(&check.stdout).contains(&token), "the token is masked");

    // It reports its channel connected.
    let connector = Connector::start(&connect_toml);

    let listed = json(&http(r.admin, "GET", "/v1/connectors", Some(TOKEN), None).1);
    assert_eq!(listed["enabled"], true);
    assert_eq!(listed["connectors"][0]["tenant"], "acme");
    assert_eq!(listed["connectors"][0]["connector_id"], "pbx-bin");
    assert_eq!(listed["connectors"][0]["services"][0], "sip-tls");
    let m = scrape(&r);
    assert_eq!(m["ucmrc_connectors_active"], 1.0);
    assert_eq!(m["ucmrc_connector_events_total{event=\"auth_ok\"}"], 1.0);
    // Every metric the shipped Grafana dashboard queries exists (this relay has every feature on).
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana-dashboard.json"))
        .expect("dashboard");
    let families: std::collections::HashSet<String> =
        m.keys().map(|k| k.split('{').next().unwrap_or(k).to_string()).collect();
    let mut queried = 0;
    for piece in dashboard.split("ucmrc_").skip(1) {
        let name: String = piece.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let name = format!("ucmrc_{name}");
        let base = ["_bucket", "_sum", "_count"].iter().fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            families.contains(&name) || families.iter().any(|f| f.starts_with(base)),
            "the dashboard queries {name}, which /metrics does not have"
        );
        queried += 1;
    }
    assert!(queried >= 20, "dashboard queries found: {queried}");
    // Prometheus' own linter accepts the exposition (every family this relay has).
    promtool_check(&metrics_text(&r));
    // Every panel query is scoped by the job and instance selectors: a fleet is never summed blindly.
    let board = json(&dashboard);
    let panels = board["panels"].as_array().expect("panels");
    for expr in
        panels.iter().flat_map(|p| p["targets"].as_array().into_iter().flatten()).filter_map(|t| t["expr"].as_str())
    {
        let series = expr.matches("ucmrc_").count();
        assert_eq!(expr.matches(r#"{job=~"$job",instance=~"$instance"}"#).count(), series, "{expr}");
    }
    let variables: Vec<&str> =
        board["templating"]["list"].as_array().expect("variables").iter().filter_map(|v| v["name"].as_str()).collect();
    assert!(variables.contains(&"job") && variables.contains(&"instance"), "{variables:?}");

    // An endpoint's TLS connection reaches the PBX through the tunnel.
    let mut endpoint = TcpStream::connect(tunnel_addr).expect("tunnel");
    endpoint.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    endpoint.write_all(&hello).expect("hello");
    let mut answer = [0u8; 6];
    endpoint.read_exact(&mut answer).expect("answer through the tunnel");
    assert_eq!(&answer, b"routed");
    pbx_thread.join().expect("pbx");
    drop(endpoint);
    wait_for("tunnel closed", || scrape(&r)["ucmrc_tunnels_active"] == 0.0);
    let m = scrape(&r);
    assert_eq!(m["ucmrc_tunnels_opened_total"], 1.0);
    assert!(m["ucmrc_tunnel_bytes_total{direction=\"to_pbx\"}"] >= hello.len() as f64);
    assert_eq!(m["ucmrc_tunnel_bytes_total{direction=\"to_endpoint\"}"], 6.0);
    // An unknown name is refused and counted.
    let mut stranger = TcpStream::connect(tunnel_addr).expect("tunnel");
    stranger.write_all(&relay_core::wire::client_hello::build_client_hello(Some("x.example"), 0, 512)).expect("hello");
    let mut sink = Vec::new();
    let _ = stranger.read_to_end(&mut sink);
    wait_for("refusal counted", || scrape(&r)["ucmrc_tunnel_rejections_total{reason=\"unknown_sni\"}"] == 1.0);

    // SIGHUP loads a new certificate for new connections.
    let (_, cert2, key2) = write_pki(&dir, "relay2");
    std::fs::copy(&cert2, &cert).expect("swap cert");
    std::fs::copy(&key2, &key).expect("swap key");
    signal(&r, libc::SIGHUP);
    assert!(stderr_contains(&r, "control certificate loaded"));

    // SIGTERM stops the connector cleanly; the relay sees it leave.
    assert!(connector.stop(), "the connector exits cleanly on SIGTERM");
    wait_for("connector gone", || scrape(&r)["ucmrc_connectors_active"] == 0.0);

    // A broken [control] section names the key and its line.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, config("[control]\ncert = \"/nonexistent.crt\"\nkey = \"/nonexistent.key\"\n"))
        .expect("write");
    let out = Command::new(bin()).arg("check-config").arg(&bad).output().expect("check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("bad.toml:6: control.cert: cannot read /nonexistent.crt"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// ng: what would need decryption, transcoding or storage is refused with a
/// reason and allocates nothing; `block media` drops one party's media and
/// `unblock media` forwards it again; a delete with another dialog's tags
/// leaves the call alone; `statistics` and the metrics count all of it.
#[test]
fn ng_refuses_what_it_cannot_do_and_blocks_media_on_command() {
    let r = start(Some(&config("")));
    let mut ng = NgJson::new(&r);
    let mut call = |req: serde_json::Value| ng.call(req);
    let (caller, callee) = (loopback_udp(), loopback_udp());
    let sdp = |port: u16, proto: &str, extra: &str| {
        format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} {proto} 0 8\r\na=rtcp-mux\r\n{extra}")
    };
    let crypto = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n";
    let port = caller.local_addr().expect("addr").port();
    let offer = |extra: serde_json::Value, body: String| {
        let mut o = serde_json::json!({"command": "offer", "call-id": "refused", "from-tag": "a", "sdp": body});
        o.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        o
    };
    for (extra, body, needle) in [
        (serde_json::json!({"transport-protocol": "RTP/AVP"}), sdp(port, "RTP/SAVP", crypto), "without decrypting"),
        (serde_json::json!({"transport-protocol": "RTP/SAVP"}), sdp(port, "RTP/AVP", ""), "without decrypting"),
        (serde_json::json!({"SDES": ["off"]}), sdp(port, "RTP/SAVP", crypto), "without keys"),
        (
            serde_json::json!({"DTLS": "off"}),
            sdp(port, "UDP/TLS/RTP/SAVPF", "a=fingerprint:sha-256 AB\r\n"),
            "without keys",
        ),
        (serde_json::json!({"codec": {"transcode": ["opus"]}}), sdp(port, "RTP/AVP", ""), "transcode"),
        (serde_json::json!({"codec": {"strip": ["all"]}}), sdp(port, "RTP/AVP", ""), "no codec"),
        (serde_json::json!({"ptime": 30}), sdp(port, "RTP/AVP", ""), "ptime"),
        (serde_json::json!({"record call": "yes"}), sdp(port, "RTP/AVP", ""), "never records"),
        (serde_json::json!({"address family": "IP6"}), sdp(port, "RTP/AVP", ""), "address family"),
        (serde_json::json!({"ICE": "force"}), sdp(port, "RTP/AVP", ""), "terminate ICE"),
    ] {
        let reply = call(offer(extra.clone(), body));
        assert_eq!(reply["result"], "error", "{extra}: {reply}");
        assert!(reply["error-reason"].as_str().unwrap_or("").contains(needle), "{extra}: {reply}");
    }
    for cmd in ["start recording", "silence media", "play media", "block DTMF", "subscribe request"] {
        let reply = call(serde_json::json!({"command": cmd, "call-id": "refused"}));
        assert_eq!(reply["result"], "error", "{cmd}");
        assert!(reply["error-reason"].as_str().unwrap_or("").contains("not supported"), "{cmd}: {reply}");
    }
    assert_eq!(scrape(&r)["ucmrc_sessions_active"], 0.0, "a refused offer allocates nothing");

    // A plain call; the callee's answer declines rtcp-mux.
    let offered = call(offer(serde_json::json!({"call-id": "blocky"}), sdp(port, "RTP/AVP", "")));
    assert_eq!(offered["result"], "ok", "{offered}");
    let to_callee: u16 = sdp_port(offered["sdp"].as_str().expect("sdp"));
    let answered = call(serde_json::json!({"command": "answer", "call-id": "blocky", "from-tag": "a", "to-tag": "b",
        "sdp": sdp(callee.local_addr().expect("addr").port(), "RTP/AVP", "").replace("a=rtcp-mux\r\n", "")}));
    assert_eq!(answered["result"], "ok", "{answered}");
    let answer_sdp = answered["sdp"].as_str().expect("sdp");
    assert!(!answer_sdp.contains("a=rtcp-mux"), "the caller is told the callee declined: {answer_sdp}");
    let to_caller = sdp_port(answer_sdp);
    let rtp = |seq: u16| {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 7];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0x55; 40]);
        p
    };
    let relay = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let mut buf = [0u8; 256];
    let mut deliver = |from: &UdpSocket, to: &UdpSocket, port: u16, seq: u16| {
        from.send_to(&rtp(seq), relay(port)).expect("send");
        let n = to.recv(&mut buf).expect("delivered");
        assert_eq!(&buf[..n], rtp(seq).as_slice());
    };
    deliver(&caller, &callee, to_caller, 1);
    deliver(&callee, &caller, to_callee, 1);
    let blocked = call(serde_json::json!({"command": "block media", "call-id": "blocky", "from-tag": "a"}));
    assert_eq!(blocked["result"], "ok", "{blocked}");
    caller.send_to(&rtp(2), relay(to_caller)).expect("send");
    wait_for("the blocked packet counted", || scrape(&r)["ucmrc_packets_dropped_total{reason=\"blocked\"}"] == 1.0);
    deliver(&callee, &caller, to_callee, 2);
    let q = call(serde_json::json!({"command": "query", "call-id": "blocky"}));
    let flags = &q["tags"]["a"]["medias"][0]["streams"][0]["flags"];
    assert!(flags.as_array().is_some_and(|f| f.iter().any(|x| x == "blocked")), "{q}");
    assert_eq!(call(serde_json::json!({"command": "unblock media", "call-id": "blocky"}))["result"], "ok");
    // The next packet the callee gets is seq 3: seq 2 never crossed.
    deliver(&caller, &callee, to_caller, 3);

    // A delete for another dialog's tags does nothing (rtpengine's warning).
    let other = call(serde_json::json!({"command": "delete", "call-id": "blocky", "from-tag": "x", "to-tag": "y"}));
    assert_eq!((other["result"].as_str(), other["warning"].is_string()), (Some("ok"), true), "{other}");
    assert_eq!(call(serde_json::json!({"command": "query", "call-id": "blocky"}))["result"], "ok");

    let stats = call(serde_json::json!({"command": "statistics"}));
    let s = &stats["statistics"];
    assert_eq!(s["currentstatistics"]["sessionsown"], 1, "{stats}");
    assert_eq!(s["totalstatistics"]["rejectedsessions"], 10, "{stats}");
    assert_eq!(s["totalstatistics"]["droppedbyreason"]["blocked"], 1, "{stats}");
    assert_eq!(s["controlstatistics"]["commands"]["totalrefusedcount"], 5, "{stats}");
    assert_eq!(s["totalstatistics"]["relayedpackets"], 4, "four delivered, the blocked one not: {stats}");
    let m = scrape(&r);
    assert_eq!(m["ucmrc_ng_commands_total{command=\"offer\",result=\"error\"}"], 10.0);
    assert_eq!(m["ucmrc_ng_commands_total{command=\"block_media\",result=\"ok\"}"], 1.0);
    assert_eq!(m["ucmrc_ng_rejected_offers_total"], 10.0);

    let done = call(serde_json::json!({"command": "delete", "call-id": "blocky", "from-tag": "a", "to-tag": "b"}));
    assert_eq!(done["result"], "ok", "{done}");
    assert_eq!(call(serde_json::json!({"command": "query", "call-id": "blocky"}))["result"], "error");
}

/// `[[interfaces]]` and ng's `direction`: the caller's leg sits on the
/// `lan` interface, the callee's on `wan` (two addresses); each side is
/// given, and hears from, its own interface's address only.
#[test]
fn interfaces_put_each_leg_on_its_own_network() {
    let text = config("").replace(
        "[ng]\n",
        "[[interfaces]]\nname = \"lan\"\naddresses = [\"127.0.0.2\"]\nport_min = 21000\nport_max = 21999\n\
         [[interfaces]]\nname = \"wan\"\naddresses = [\"127.0.0.3\", \"127.0.0.4\"]\nport_min = 21000\nport_max = 21999\n[ng]\n",
    );
    let r = start(Some(&text));
    let mut ng = NgJson::new(&r);
    let mut call = |req: serde_json::Value| ng.call(req);
    let (caller, callee) = (loopback_udp(), loopback_udp());
    let sdp = |port: u16| {
        format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtcp-mux\r\n")
    };
    let c_line = |sdp: &str| -> std::net::IpAddr {
        sdp.lines().find_map(|l| l.strip_prefix("c=IN IP4 ")).expect("c=").trim().parse().expect("ip")
    };
    // A direction naming no interface means the default (first) one, as
    // with rtpengine: the call goes through, and the miss is counted.
    let unknown = call(serde_json::json!({"command": "offer", "call-id": "x", "from-tag": "a",
        "direction": ["lan", "dmz"], "sdp": sdp(4000)}));
    assert_eq!(unknown["result"], "ok", "{unknown}");
    let lan: std::net::IpAddr = [127, 0, 0, 2].into();
    assert_eq!(c_line(unknown["sdp"].as_str().expect("sdp")), lan, "the default interface faces the callee");
    assert_eq!(scrape(&r)["ucmrc_ng_unknown_directions_total"], 1.0);
    assert_eq!(call(serde_json::json!({"command": "delete", "call-id": "x"}))["result"], "ok");
    let mut wan_seen = std::collections::BTreeSet::new();
    for k in 0..6 {
        let id = format!("itf-{k}");
        let offer = call(serde_json::json!({"command": "offer", "call-id": id, "from-tag": "a",
            "direction": ["lan", "wan"], "sdp": sdp(caller.local_addr().expect("addr").port())}));
        let to_callee = offer["sdp"].as_str().expect("sdp").to_string();
        let wan = c_line(&to_callee);
        let wan_ips: [std::net::IpAddr; 2] = [[127, 0, 0, 3].into(), [127, 0, 0, 4].into()];
        assert!(wan_ips.contains(&wan), "the callee is sent to WAN: {wan}");
        wan_seen.insert(wan);
        let answer = call(serde_json::json!({"command": "answer", "call-id": id, "from-tag": "a", "to-tag": "b",
            "sdp": sdp(callee.local_addr().expect("addr").port())}));
        let to_caller = answer["sdp"].as_str().expect("sdp").to_string();
        assert_eq!(c_line(&to_caller), std::net::IpAddr::from([127, 0, 0, 2]), "the caller is sent to LAN");
        let pkt = |seq: u8| {
            let mut p = vec![0x80, 0, 0, seq, 0, 0, 0, 1, 0, 0, 0, 9];
            p.extend_from_slice(&[seq; 20]);
            p
        };
        let mut buf = [0u8; 128];
        caller.send_to(&pkt(1), (c_line(&to_caller), sdp_port(&to_caller))).expect("send");
        let (len, from) = callee.recv_from(&mut buf).expect("caller → callee");
        assert_eq!((&buf[..len], from), (pkt(1).as_slice(), SocketAddr::new(wan, sdp_port(&to_callee))));
        callee.send_to(&pkt(2), (wan, sdp_port(&to_callee))).expect("send");
        let (len, from) = caller.recv_from(&mut buf).expect("callee → caller");
        assert_eq!(
            (&buf[..len], from),
            (pkt(2).as_slice(), SocketAddr::new([127, 0, 0, 2].into(), sdp_port(&to_caller)))
        );
    }
    assert_eq!(wan_seen.len(), 2, "both WAN addresses carry calls");
    let m = scrape(&r);
    assert_eq!(m["ucmrc_ports_free"] + m["ucmrc_ports_in_use"], 3000.0, "1 000 ports on each of three addresses");

    // check-config names the key of a bad address.
    let path = r.dir.join("bad.toml");
    std::fs::write(&path, "[[interfaces]]\nname = \"lan\"\naddresses = [\"10.0.0.300\"]\n").expect("write");
    let out = Command::new(bin()).args(["check-config", path.to_str().expect("path")]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("interfaces.addresses") && err.contains("10.0.0.300"), "{err}");
}

/// rtpengine's rtcp-mux options, one call each: what the callee is offered
/// (mux, RTCP fallback port) and what the caller is answered, for a caller
/// that offers mux (or not) and a callee that accepts it (or not). Also:
/// `label` shows in `query`, and a configured delete-delay keeps the
/// call's media until it passes.
#[test]
fn ng_rtcp_mux_options_label_and_delete_delay() {
    let r = start(Some(&config("").replace("[ng]\n", "[ng]\ndelete_delay_secs = 1\n")));
    let mut ng = NgJson::new(&r);
    let mut call = |req: serde_json::Value| ng.call(req);
    let sdp = |port: u16, mux: bool| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n{}",
            if mux { "a=rtcp-mux\r\n" } else { "" }
        )
    };
    let view = |sdp: &str| {
        let port = sdp_port(sdp);
        let rtcp = sdp.lines().find_map(|l| l.strip_prefix("a=rtcp:")).map(|p| p.trim().parse::<u16>().expect("port"));
        (sdp.contains("a=rtcp-mux"), rtcp.map(|r| r == port + 1))
    };
    // (option, caller offers mux, callee accepts mux) →
    //   ((callee offered mux, fallback a=rtcp = port + 1), (caller answered mux, its a=rtcp))
    let cases = [
        ("", true, true, ((true, Some(true)), (true, None))),
        ("", true, false, ((true, Some(true)), (false, Some(true)))),
        ("", false, false, ((false, Some(true)), (false, Some(true)))),
        ("demux", true, false, ((false, Some(true)), (true, None))),
        ("accept", true, false, ((true, Some(true)), (true, None))),
        ("reject", true, true, ((true, Some(true)), (false, Some(true)))),
        ("offer", false, true, ((true, Some(true)), (false, Some(true)))),
        ("require", true, true, ((true, None), (true, None))),
    ];
    for (k, (option, caller_mux, callee_mux, (offered, answered))) in cases.into_iter().enumerate() {
        let id = format!("mux-{k}");
        let mut offer = serde_json::json!({"command": "offer", "call-id": id, "from-tag": "a", "label": "caller-side",
            "sdp": sdp(4000, caller_mux)});
        if !option.is_empty() {
            offer["rtcp-mux"] = serde_json::json!([option]);
        }
        let o = call(offer);
        assert_eq!(view(o["sdp"].as_str().expect("sdp")), offered, "{option:?} offer to the callee: {o}");
        let a = call(serde_json::json!({"command": "answer", "call-id": id, "from-tag": "a", "to-tag": "b",
            "sdp": sdp(4002, callee_mux && offered.0)}));
        assert_eq!(view(a["sdp"].as_str().expect("sdp")), answered, "{option:?} answer to the caller: {a}");
    }
    let q = call(serde_json::json!({"command": "query", "call-id": "mux-0"}));
    assert_eq!(q["tags"]["a"]["label"], "caller-side", "{q}");

    // delete_delay_secs = 1: the deleted call's sessions live one second more.
    let active = |r: &Relay| scrape(r)["ucmrc_sessions_active"];
    assert_eq!(active(&r), 8.0);
    assert_eq!(call(serde_json::json!({"command": "delete", "call-id": "mux-0"}))["result"], "ok");
    assert_eq!(active(&r), 8.0, "kept for the delete delay");
    assert_eq!(
        call(serde_json::json!({"command": "query", "call-id": "mux-0"}))["result"],
        "error",
        "the call is gone"
    );
    wait_for("released after the delay", || active(&r) == 7.0);
    assert_eq!(call(serde_json::json!({"command": "delete", "call-id": "mux-1", "delete-delay": 0}))["result"], "ok");
    assert_eq!(active(&r), 6.0, "delete-delay 0 releases at once");
}

/// With ng as the relay's only tenant, its calls may use the whole port
/// range (as with rtpengine); a full range answers rtpengine's "Ran out of
/// ports", which a proxy's relay set fails over on.
#[test]
fn ng_alone_uses_the_whole_port_range() {
    // 16 ports: four calls of an even/odd pair per leg.
    let r =
        start(Some(&config("").replace("port_min = 20000\nport_max = 29999", "port_min = 20000\nport_max = 20015")));
    let mut ng = NgJson::new(&r);
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    for k in 0..4 {
        // Options no table row knows have no effect and are counted.
        let offer = ng.call(serde_json::json!({"command": "offer", "call-id": format!("c{k}"), "from-tag": "a",
            "sdp": sdp, "frobnicate": "yes", "flags": ["trust-address", "wobble"]}));
        assert_eq!(offer["result"], "ok", "call {k} of 4: {offer}");
    }
    assert_eq!(scrape(&r)["ucmrc_ng_unknown_options_total"], 8.0, "two unknown names in each of four offers");
    let full = ng.call(serde_json::json!({"command": "offer", "call-id": "c4", "from-tag": "a", "sdp": sdp}));
    assert_eq!(full["error-reason"], "Ran out of ports", "{full}");
    assert!(matches!(full["error-code"].as_str(), Some("quota_exceeded" | "ports_exhausted")), "{full}");
}
