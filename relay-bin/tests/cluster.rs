//! Two `ucmrc` processes with `[cluster]` against a real `redis-server`:
//! the active is killed with SIGKILL, the standby takes every session over
//! on the same relay addresses with real SRTP flowing, and the old active,
//! restarted, stays standby and serves nothing; then SIGTERM on the active
//! hands the lease over to it.

use std::time::{Duration, Instant};

use std::net::SocketAddr;
use test_support::poll::wait_for;

use relay_core::turn::proto::*;
use test_support::redis_server::RedisServer;
use test_support::turn_client::Client as TurnClient;
use test_support::ucmrc::*;

/// A node's configuration: the relay ports of this test only (a takeover
/// binds exactly the ports the active had), ng and admin on kernel-chosen
/// ports.
///
/// Both nodes on one host here: the portable datapath, whose sockets close
/// the moment a killed process exits (an io_uring ring is torn down
/// asynchronously and may hold the ports a little longer; the takeover
/// retries those, but this test measures the gap).
fn node(redis: &RedisServer, key: &std::path::Path, node_id: &str, role: &str) -> String {
    // TURN beside the media: the same realm and secret on both nodes.
    let secret = key.with_file_name("turn.secret");
    std::fs::write(&secret, TURN_SECRET).expect("secret");
    let turn = format!(
        "[turn]\nlisten = [\"127.0.0.1:0\"]\nport_min = 30300\nport_max = 30399\n\
         [[turn.realms]]\nname = \"turn.test\"\ntenant = \"acme\"\nsecret_files = [{secret:?}]\nallow_peers = [\"127.0.0.1/32\"]\n"
    );
    config("datapath = \"portable\"").replace("port_min = 20000\nport_max = 29999", "port_min = 30000\nport_max = 30199")
        + &turn
        + &format!(
            "[cluster]\nredis_url = \"{}\"\nnode_id = \"{node_id}\"\ngroup = \"bin\"\nrole = \"{role}\"\nkey_file = \"{}\"\nadvertise = \"{node_id}.test\"\n",
            redis.url(),
            key.display()
        )
}

const TURN_SECRET: &str = "a-turn-secret-of-the-cluster-01";

/// ChannelData from `c` through `server` to `peer` (which sees it come
/// from `relayed`) and back, every byte checked.
fn turn_round_trip(c: &TurnClient, peer: &std::net::UdpSocket, relayed: SocketAddr, server: SocketAddr, n: u8) {
    c.channel_data(server, 0x4009, &[n; 60]);
    let mut buf = [0u8; 128];
    let (len, from) = peer.recv_from(&mut buf).expect("to the peer");
    assert_eq!((&buf[..len], from), (&[n; 60][..], relayed), "from the relayed address");
    peer.send_to(&[!n; 30], relayed).expect("back");
    assert_eq!(c.recv_channel(), vec![!n; 30]);
}

#[test]
fn a_killed_active_is_replaced_by_its_standby_with_every_session_and_comes_back_as_standby() {
    let redis = RedisServer::start("bin");
    let dir = temp_dir("cluster");
    let key = dir.join("cluster.key");
    std::fs::write(&key, "7e".repeat(32)).expect("key");
    let a = start(Some(&node(&redis, &key, "node-a", "active")));
    wait_for("node-a active", || role(&a) == "active");
    let b = start(Some(&node(&redis, &key, "node-b", "standby")));
    wait_for("node-b standby", || role(&b) == "standby");
    // The standby serves nothing: not ready, no sessions, no ng.
    assert_eq!(http(b.admin, "GET", "/readyz", None, None).0, 503);
    assert_eq!(Call::allocate(&b, "acme").err().map(|e| e.0), Some(503));
    let reply = NgJson::new(&b).call(serde_json::json!({ "command": "ping" }));
    assert!(reply["error-reason"].as_str().unwrap_or("").contains("standby"), "{reply}");
    assert_eq!(http(a.admin, "GET", "/readyz", None, None).0, 200);

    let mut call = Call::allocate(&a, "acme").expect("allocate on the active");
    // A Wave client's TURN allocation on the active, with a channel to a
    // peer (the standby answers no TURN).
    let (turn_a, turn_b) = (a.turn_addr("udp"), b.turn_addr("udp"));
    let mut wave = TurnClient::new(TURN_SECRET.as_bytes(), "turn.test", "wave-1");
    let relayed = wave.allocate(turn_a, &[]);
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("peer");
    peer.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    wave.bind_channel(turn_a, 0x4009, peer.local_addr().expect("addr"));
    turn_round_trip(&wave, &peer, relayed, turn_a, 1);
    let refresh = wave.request(Method::Refresh, &[], None);
    wave.socket.send_to(&refresh, turn_b).expect("send");
    wait_for("the standby drops TURN", || scrape(&b)["ucmrc_turn_drops_total{reason=\"standby\"}"] >= 1.0);
    wait_for("the allocation in the standby's copy", || cluster(&b)["warm_turn"] == 1);
    for s in [&call.pbx, &call.phone] {
        s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    }
    for _ in 0..10 {
        assert_eq!(call.exchange(), 2, "SRTP both ways through the active");
    }
    // The standby has the session, and everything the active wrote since.
    wait_for("the session in the standby's copy", || cluster(&b)["warm_sessions"] == 1);
    let rounds = replication_rounds(&a);
    wait_for("everything the active has written", || replication_rounds(&a) >= rounds + 2);
    let written = last_write(&a);
    assert!(written.1 > 0, "the active wrote");
    wait_for("the standby caught up", || last_write(&b) >= written);
    // Every registered node, as the active last read them (every second).
    let registered = || {
        let nodes = cluster(&a)["nodes"].as_array().cloned().unwrap_or_default();
        let mut seen: Vec<(String, String)> = nodes
            .iter()
            .map(|n| (n["node"].as_str().unwrap_or("").to_string(), n["role"].as_str().unwrap_or("").to_string()))
            .collect();
        seen.sort();
        seen
    };
    let both = [("node-a".to_string(), "active".to_string()), ("node-b".to_string(), "standby".to_string())];
    wait_for("both nodes registered", || registered() == both);

    // Redis frozen: status and metrics answer at once all the while (they
    // never wait on Redis); the active stops acknowledging once its lease
    // could lapse, and serves again when Redis answers.
    redis.freeze(true);
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_millis(1500) {
        for path in ["/v1/cluster", "/metrics"] {
            let asked = Instant::now();
            assert_eq!(http(a.admin, "GET", path, Some(TOKEN), None).0, 200);
            assert!(asked.elapsed() < Duration::from_millis(300), "{path}: {:?} with Redis frozen", asked.elapsed());
        }
    }
    assert_eq!(role(&a), "fenced");
    assert_eq!(scrape(&a)["ucmrc_cluster_role{role=\"fenced\"}"], 1.0);
    assert_eq!(Call::allocate(&a, "acme").err().map(|e| e.0), Some(503), "nothing acknowledged while fenced");
    redis.freeze(false);
    wait_for("node-a serves again", || role(&a) == "active");
    assert!(scrape(&a)["ucmrc_cluster_fences_total"] >= 1.0);

    // kill -9 the active; media keeps going to the same addresses.
    signal(&a, 9);
    let killed = Instant::now();
    let mut lost = 0;
    while call.exchange() < 2 {
        lost += 1;
        if killed.elapsed() > Duration::from_secs(5) {
            let log: Vec<String> = b.stderr.try_iter().collect();
            panic!("media never came back; the standby: {}\n{}", cluster(&b), log.join("\n"));
        }
    }
    let gap = killed.elapsed();
    eprintln!("media back through the standby {gap:?} after SIGKILL ({lost} exchanges lost)");
    assert!(gap < Duration::from_secs(1), "media gap {gap:?}");
    for _ in 0..10 {
        assert_eq!(call.exchange(), 2, "continuous, authentic SRTP through the standby");
    }
    let c = cluster(&b);
    assert_eq!((c["role"].as_str(), c["takeovers"].as_u64()), (Some("active"), Some(1)), "{c}");
    assert_eq!(c["last_takeover"]["restored"].as_u64(), Some(1), "{c}");
    // The TURN allocation too, on the same relayed address: the service
    // address moved (here the client turns to the standby's listener), the
    // channel, nonce and key hold (the nodes share the nonce key).
    assert_eq!(c["last_takeover"]["turn_allocations"].as_u64(), Some(1), "{c}");
    wait_for("the relayed port open again", || {
        let listing = json(&http(b.admin, "GET", "/v1/turn/allocations", Some(TOKEN), None).1);
        listing["allocations"].as_array().is_some_and(|l| l.iter().any(|a| a["relayed"] == relayed.to_string()))
    });
    turn_round_trip(&wave, &peer, relayed, turn_b, 2);
    let lifetime = [(ATTR_LIFETIME, 600u32.to_be_bytes().to_vec())];
    assert_eq!(wave.ask(turn_b, Method::Refresh, &lifetime, None).0, None, "the nonce from before the takeover");
    let (status, body) = http(b.admin, "GET", &format!("/v1/sessions/{}", call.id), Some(TOKEN), None);
    assert_eq!(status, 200, "the standby knows the session: {body}");
    let s = json(&body);
    assert_eq!(s["endpoint"]["remote_rtp"].as_str(), Some(call.phone.local_addr().expect("addr").to_string().as_str()));
    assert_eq!(http(b.admin, "GET", "/readyz", None, None).0, 200);
    let m = scrape(&b);
    assert_eq!(m["ucmrc_cluster_takeovers_total"], 1.0);
    assert_eq!(m["ucmrc_cluster_role{role=\"active\"}"], 1.0);
    promtool_check(&metrics_text(&b)); // the cluster families too

    // The old active comes back, configured as active as before: the lease
    // is held, so it stays standby and binds none of the ports.
    drop(a);
    let a2 = start(Some(&node(&redis, &key, "node-a", "active")));
    wait_for("node-a standby", || role(&a2) == "standby" && cluster(&a2)["warm_sessions"] == 1);
    for _ in 0..10 {
        assert_eq!(call.exchange(), 2, "the standby keeps serving");
    }
    assert_eq!(scrape(&a2)["ucmrc_ports_in_use"], 0.0);
    assert_eq!(role(&b), "active");

    // A planned switch: SIGTERM on the active hands the lease over (no
    // drain, no waiting for the lease to expire) and the standby serves.
    let mut b = b;
    signal(&b, 15);
    let stopped = Instant::now();
    assert!(stderr_contains(&b, "handing the cluster lease over"), "the hand-over path ran");
    wait_for("node-a active after the hand-over", || role(&a2) == "active");
    eprintln!("node-a active {:?} after SIGTERM on node-b", stopped.elapsed());
    let status = b.child.wait().expect("node-b exits");
    assert!(status.success(), "a clean exit: {status}");
    assert_eq!(cluster(&a2)["last_takeover"]["restored"].as_u64(), Some(1));
    while call.exchange() < 2 {
        assert!(stopped.elapsed() < Duration::from_secs(5), "media never came back after the hand-over");
    }
    for _ in 0..10 {
        assert_eq!(call.exchange(), 2, "SRTP continues through the new active");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
