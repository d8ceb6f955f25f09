//! Two `ucmrc` processes with `[cluster]` against a real `redis-server`:
//! the active is killed with SIGKILL, the standby takes every session over
//! on the same relay addresses with real SRTP flowing, and the old active,
//! restarted, stays standby and serves nothing; then SIGTERM on the active
//! hands the lease over to it.

use std::time::{Duration, Instant};

use test_support::poll::wait_for;
use test_support::redis_server::RedisServer;
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
    config("datapath = \"portable\"").replace("port_min = 20000\nport_max = 29999", "port_min = 30000\nport_max = 30199")
        + &format!(
            "[cluster]\nredis_url = \"{}\"\nnode_id = \"{node_id}\"\ngroup = \"bin\"\nrole = \"{role}\"\nkey_file = \"{}\"\nadvertise = \"{node_id}.test\"\n",
            redis.url(),
            key.display()
        )
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
