//! Someone who can write to Redis (and publish on it) attacks a pair of
//! nodes: Redis is trusted for availability, never for integrity.
//! - A session record rewritten to send a live call's media to a stranger
//!   (and downgraded from `authenticated` to `window` with its keys
//!   dropped), announced with a forged change note: refused and counted;
//!   after a takeover the call's media goes to the phone, never the
//!   stranger; a node starting fresh refuses it too.
//! - An older, authentic record of a session written back (a rollback: the
//!   leg was blocked since) and the standby made to read everything again:
//!   refused; the leg stays blocked after a takeover.
//! - A call record copied under another call-id, and a plain call record
//!   tying a call-id to a session: refused; neither call exists after a
//!   takeover.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use relay_cluster::{Cluster, Role};
use relay_core::ng::bencode::Value;
use relay_core::ng::{NgConfig, NgEngine};
use relay_core::Relay;
use relay_core::{LegUpdate, SessionUpdate};
use test_support::cluster::ng::{ng, result};
use test_support::cluster::*;
use test_support::packets::master;
use test_support::poll::until;
use test_support::redis_server::RedisServer;
use test_support::srtp::{SrtpRx, SrtpTx};

const SESSIONS: &str = "ucmrc:{svc}:sessions";
const CALLS: &str = "ucmrc:{svc}:calls";
const CHANGES: &str = "ucmrc:{svc}:changes";

struct Host {
    relay: Relay,
    ng: Arc<NgEngine>,
    node: Cluster,
}

async fn host(redis: &RedisServer, name: &str, eager: bool, base: u16) -> Host {
    let relay = relay(base);
    let ng = NgEngine::new(relay.handle(), NgConfig { journal: true, ..NgConfig::default() });
    let mut node =
        Cluster::start_with(node_config(redis, name, eager), relay.handle(), Some(ng.clone())).await.expect("cluster");
    let want = if eager { Role::Active } else { Role::Standby };
    wait(&mut node, |s| s.role == want).await;
    Host { relay, ng, node }
}

fn hset(redis: &RedisServer, key: &str, field: &str, value: &str) {
    let mut c = redis.client();
    let () = redis::cmd("HSET").arg(key).arg(field).arg(value).query(&mut c).expect("hset");
}

fn hget(redis: &RedisServer, key: &str, field: &str) -> String {
    let mut c = redis.client();
    redis::cmd("HGET").arg(key).arg(field).query(&mut c).expect("hget")
}

fn publish(redis: &RedisServer, payload: &str) {
    let mut c = redis.client();
    let _: i64 = redis::cmd("PUBLISH").arg(CHANGES).arg(payload).query(&mut c).expect("publish");
}

/// Drops every subscriber's connection: standbys subscribe again and read
/// everything from Redis.
fn kill_subscribers(redis: &RedisServer) {
    let mut c = redis.client();
    let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut c).expect("client kill");
}

/// Sends `n` SRTP packets from `from` to `to`; how many `at` receives.
fn deliver(from: &UdpSocket, to: std::net::SocketAddr, at: &UdpSocket, tx: &mut SrtpTx, n: usize) -> usize {
    let mut buf = [0u8; 2048];
    let mut got = 0;
    for _ in 0..n {
        from.send_to(&tx.next_rtp(), to).expect("send");
        if at.recv_from(&mut buf).is_ok() {
            got += 1;
        }
    }
    got
}

/// A live call's record rewritten to send its media to a stranger (format
/// 1's plain fields, `window` latching, no keys) and announced with a
/// forged change note; then the active dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_cannot_redirect_a_live_call() {
    let redis = RedisServer::start("attack-redirect");
    let a = host(&redis, "a", true, 25000).await;
    let mut b = host(&redis, "b", false, 25000).await;
    let (pbx, phone, stranger) = (socket("127.0.0.1"), socket("127.0.0.1"), socket("127.0.0.1"));
    let s = srtp_session(&a.relay.handle(), &pbx, &phone, 1).await;
    let (mut from_pbx, mut from_phone) = (SrtpTx::new(&master(2), 7, 1), SrtpTx::new(&master(3), 8, 1));
    // Both legs latch on their first packets.
    assert_eq!(deliver(&phone, s.endpoint.rtp, &pbx, &mut from_phone, 3), 3);
    assert_eq!(deliver(&pbx, s.pbx.rtp, &phone, &mut from_pbx, 3), 3);
    until("latches replicated", || latched_records(&redis) == 1).await;
    let written = a.node.status().last_write;
    caught_up(&mut b.node, written).await;

    let id = s.id.to_string();
    let evil = stranger.local_addr().expect("addr");
    let forged = serde_json::json!({
        "v": 1, "id": id, "version": {"epoch": 1, "seq": 1_000_000}, "tenant": "ha",
        "latch": "window", "verify": "latch",
        "learning_window_ms": 3000, "learning_left_ms": 0, "idle_timeout_ms": 60000,
        "max_duration_ms": 3_600_000, "age_ms": 1000, "idle_ms": 0, "quality_clock_rate": null,
        "written_unix_ms": relay_cluster::record::unix_ms_now(),
        "pbx": leg(s.pbx.rtp.port(), Some(pbx.local_addr().expect("addr"))),
        "endpoint": leg(s.endpoint.rtp.port(), Some(evil)),
    });
    hset(&redis, SESSIONS, &id, &forged.to_string());
    publish(&redis, &serde_json::json!({"epoch": 1, "seq": 1_000_000, "set": [id], "del": []}).to_string());
    let st = wait(&mut b.node, |st| st.bad_records >= 1).await;
    assert_eq!(st.warm_sessions, 1, "the standby keeps its authentic copy");
    // A node that starts now reads it too, and refuses it.
    let c = host(&redis, "c", false, 25400).await;
    let st = c.node.status();
    assert!(st.bad_records >= 1 && st.warm_sessions == 0, "{st:?}");
    drop(c);

    drop(a.node);
    drop(a.ng);
    drop(a.relay);
    let st = wait(&mut b.node, |st| st.role == Role::Active).await;
    assert_eq!(st.last_takeover.map(|t| (t.restored, t.failed)), Some((1, 0)));
    // The PBX's media goes to the phone, every packet authentic; the
    // stranger gets nothing.
    let mut at_phone = SrtpRx::new(&master(2));
    let mut buf = [0u8; 2048];
    for _ in 0..30 {
        let p = from_pbx.next_rtp();
        pbx.send_to(&p, s.pbx.rtp).expect("send");
        let (n, _) = phone.recv_from(&mut buf).expect("the phone gets the PBX's media");
        assert!(at_phone.accept(&buf[..n]).is_some());
    }
    stranger.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    assert!(stranger.recv_from(&mut buf).is_err(), "the stranger got media");
    let info = b.relay.handle().session(s.id).await.expect("session");
    assert_eq!(info.latch, relay_core::LatchPolicy::Authenticated, "not downgraded");
    assert!(info.endpoint.has_srtp_auth && info.pbx.has_srtp_auth, "keys kept");
    b.node.stop(false).await;
}

/// A leg of format 1's shape aimed at `remote` (plain, no secrets).
fn leg(port: u16, remote: Option<std::net::SocketAddr>) -> serde_json::Value {
    serde_json::json!({
        "addr": 0, "rtp": port, "rtcp": null, "hint": remote, "remote_rtp": remote, "remote_rtcp": null,
        "max_pps": null, "max_bytes_per_sec": null, "await_hint": false, "remote_mux": true,
        "rtcp_hint_port": null, "blocked": false, "last_ssrc": null, "replay": [],
        "stats": {"packets_received": 0, "bytes_received": 0, "rtcp_packets_received": 0,
                  "rtcp_bytes_received": 0, "packets_forwarded": 0, "bytes_forwarded": 0,
                  "latches": 1, "relatches": 0, "drops": []},
        "secrets": null,
    })
}

/// An older, authentic record written back after the leg was blocked, and
/// the standby made to read everything again: it keeps the newer state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_record_written_back_is_not_applied() {
    let redis = RedisServer::start("attack-rollback");
    let a = host(&redis, "a", true, 25800).await;
    let mut b = host(&redis, "b", false, 25800).await;
    let (pbx, phone) = (socket("127.0.0.1"), socket("127.0.0.1"));
    let s = srtp_session(&a.relay.handle(), &pbx, &phone, 1).await;
    let written = a.node.status().last_write;
    caught_up(&mut b.node, written).await;
    let id = s.id.to_string();
    let old = hget(&redis, SESSIONS, &id);
    // The phone's media is blocked from now on.
    let block = SessionUpdate {
        endpoint: LegUpdate { blocked: Some(true), ..LegUpdate::default() },
        ..SessionUpdate::default()
    };
    a.relay.handle().update_committed(s.id, block).await.expect("block");
    assert_ne!(hget(&redis, SESSIONS, &id), old);
    let written = a.node.status().last_write;
    caught_up(&mut b.node, written).await;

    hset(&redis, SESSIONS, &id, &old);
    kill_subscribers(&redis);
    let st = wait(&mut b.node, |st| st.rollbacks_refused >= 1).await;
    assert_eq!(st.warm_sessions, 1);

    drop(a.node);
    drop(a.ng);
    drop(a.relay);
    wait(&mut b.node, |st| st.role == Role::Active).await;
    let info = b.relay.handle().session(s.id).await.expect("session");
    assert!(info.endpoint.blocked, "the rolled-back record unblocked the leg");
    let mut from_phone = SrtpTx::new(&master(3), 8, 1);
    assert_eq!(deliver(&phone, s.endpoint.rtp, &pbx, &mut from_phone, 5), 0, "blocked media crossed");
    b.node.stop(false).await;
}

/// A call's record copied under another call-id, and a plain record tying
/// a call-id to the call's session: both refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_records_cannot_be_moved_or_forged() {
    let redis = RedisServer::start("attack-calls");
    let a = host(&redis, "a", true, 26200).await;
    let mut b = host(&redis, "b", false, 26200).await;
    let at = socket("127.0.0.1");
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n",
        at.local_addr().expect("addr").port()
    );
    let o = ng(
        &a.ng,
        vec![
            ("command", Value::str("offer")),
            ("call-id", Value::str("real-call")),
            ("from-tag", Value::str("caller")),
            ("sdp", Value::str(&sdp)),
        ],
    )
    .await;
    assert_eq!(result(&o), "ok", "{o:?}");
    let written = a.node.status().last_write;
    caught_up(&mut b.node, written).await;
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let real = hget(&redis, CALLS, &b64("real-call"));
    let session = export_all(&a.relay.handle()).await.remove(0).id.to_string();
    // Moved under another call-id.
    hset(&redis, CALLS, &b64("moved-call"), &real);
    // Format 1's plain record naming the real call's session.
    let plain = serde_json::json!({
        "call_id": b64("tied-call"), "from_tag": "x", "to_tag": null, "created": 1,
        "media": [{"session": session, "pbx": ["127.0.0.1:26200", null], "endpoint": ["127.0.0.1:26202", null],
                   "kind": "audio", "proto": "RTP/AVP", "remote_mux": [false, false],
                   "mux": [false, false, false, null], "keyed": [false, false], "blocked": [false, false]}],
        "labels": [],
    });
    hset(&redis, CALLS, &b64("tied-call"), &plain.to_string());
    kill_subscribers(&redis);
    let st = wait(&mut b.node, |st| st.bad_records >= 2).await;
    assert_eq!(st.warm_calls, 1, "{st:?}");

    drop(a.node);
    drop(a.ng);
    drop(a.relay);
    let st = wait(&mut b.node, |st| st.role == Role::Active).await;
    assert_eq!(st.last_takeover.map(|t| t.calls), Some(1));
    let query = |c: &'static str| ng(&b.ng, vec![("command", Value::str("query")), ("call-id", Value::str(c))]);
    assert_eq!(result(&query("real-call").await), "ok");
    assert_eq!(result(&query("moved-call").await), "error");
    assert_eq!(result(&query("tied-call").await), "error");
    b.node.stop(false).await;
}
