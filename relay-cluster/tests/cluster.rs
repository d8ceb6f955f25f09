//! Cluster nodes beside real relays against a real `redis-server`:
//! replication with sealed secrets, a standby taking over every session on
//! the same ports with real SRTP flowing, fencing of the old active, and a
//! Redis outage under load.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_cluster::record::{self, ChangeNote, Codec, Version};
use relay_cluster::store::{Batch, Holder, Keys, Store, StoreError};
use relay_cluster::{Cluster, ClusterConfig, ClusterKey, Role, Sealer};
use relay_core::{LatchPolicy, LegSpec, SessionSpec};
use relay_core::{Relay, RelayConfig};
use test_support::cluster::*;
use test_support::keys::auth_for;
use test_support::packets::master;
use test_support::poll::{until, until_async};
use test_support::redis_server::RedisServer;
use test_support::srtp::{Flow, PacedCall};
use test_support::srtp::{SrtpRx, SrtpTx};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_replicates_sessions_with_their_secrets_sealed_and_deletes_ended_ones() {
    let redis = RedisServer::start("replicate");
    let relay = relay(21000);
    let mut node = Cluster::start(node_config(&redis, "a", true), relay.handle()).await.expect("cluster");
    wait(&mut node, |s| s.role == Role::Active).await;
    let (pbx, phone) = (socket("127.0.0.1"), socket("127.0.0.1"));
    let sessions =
        [srtp_session(&relay.handle(), &pbx, &phone, 1).await, srtp_session(&relay.handle(), &pbx, &phone, 2).await];
    wait(&mut node, |s| s.last_write.is_some() && s.queue_depth == 0 && s.resyncs >= 1).await;
    until("records in redis", || raw_records(&redis).len() >= 2).await;
    let records = raw_records(&redis);
    for (id, rec) in &records {
        // No secret in clear: neither the STUN passwords nor any key, in
        // any encoding the record uses.
        for n in [1u8, 2] {
            assert!(!rec.contains(&format!("ice-password-{n}")), "{rec}");
            let hex_pw = relay_cluster_hex(format!("ice-password-{n}-secret").as_bytes());
            assert!(!rec.contains(&hex_pw), "{rec}");
            for m in [2 * n, 2 * n + 1] {
                let auth = auth_for(&master(m));
                assert!(!rec.contains(&relay_cluster_hex(&auth.rtp_key)), "{rec}");
            }
        }
        // With the key the record opens to the session's exact state.
        let d = codec().decode_session(rec.as_bytes(), id, record::unix_ms_now()).expect("decodes");
        assert_eq!(&d.state.id.to_string(), id);
        let live = relay.handle().export(None, 10).await.expect("export");
        let mine = live.states.iter().find(|s| s.id == d.state.id).expect("live");
        assert_eq!(d.state.pbx.srtp_auth, mine.pbx.srtp_auth);
        assert_eq!(d.state.endpoint.stun_password, mine.endpoint.stun_password);
        // Without it (or with another group's associated data) it does not.
        let wrong = Codec::new(Sealer::new(ClusterKey::new(&[1; 32]), Vec::new()), "svc");
        assert!(wrong.decode_session(rec.as_bytes(), id, 0).is_err());
        assert!(Codec::new(sealer(), "other").decode_session(rec.as_bytes(), id, 0).is_err());
    }
    // A released session's record goes.
    relay.handle().release(sessions[0].id).await.expect("release");
    until("the ended session's record gone", || raw_records(&redis).len() == 1).await;
    assert_eq!(raw_records(&redis)[0].0, sessions[1].id.to_string());
    node.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_every_session_on_the_same_ports_and_the_old_active_is_fenced() {
    let redis = RedisServer::start("takeover");
    let relay_a = relay(21400);
    let mut a = Cluster::start(node_config(&redis, "a", true), relay_a.handle()).await.expect("cluster a");
    wait(&mut a, |s| s.role == Role::Active).await;
    let relay_b = relay(21400); // same layout; binds nothing until it takes over
    let mut b = Cluster::start(node_config(&redis, "b", false), relay_b.handle()).await.expect("cluster b");
    wait(&mut b, |s| s.role == Role::Standby).await;

    let mut calls = Vec::new();
    for n in 1..=3u8 {
        let (pbx, phone) = (socket("127.0.0.1"), socket("127.0.0.1"));
        let s = srtp_session(&relay_a.handle(), &pbx, &phone, n).await;
        calls.push(paced_call(&s, pbx, phone, n));
    }
    // Latched and replicated: every leg latched, the standby caught up.
    until_async("every leg latched", async || {
        let page = relay_a.handle().list(None, 100).await.expect("list");
        page.sessions.iter().all(|s| s.pbx.remote_rtp.is_some() && s.endpoint.remote_rtp.is_some())
    })
    .await;
    // ...and the latches are in Redis.
    until("latches replicated", || latched_records(&redis) == 3).await;
    let written = a.status().last_write;
    caught_up(&mut b, written).await;
    let before = relay_a.handle().list(None, 100).await.expect("list").sessions;

    // The active dies: no lease hand-over, its sockets close.
    let killed = Instant::now();
    drop(a);
    drop(relay_a);
    let st = wait(&mut b, |s| s.role == Role::Active).await;
    let took_over = killed.elapsed();
    let report = st.last_takeover.clone().expect("report");
    assert_eq!((report.restored, report.failed), (3, 0), "{report:?}");
    assert!(took_over < Duration::from_secs(1), "takeover after {took_over:?}");
    // Media flows through the standby now.
    until_async("media through the standby", async || {
        relay_b.handle().counters().await.expect("counters").total.packets_forwarded >= 120
    })
    .await;
    let flows: Vec<Flow> = calls.into_iter().flat_map(PacedCall::finish).collect();
    let gaps: Vec<Duration> = flows.iter().map(|f| f.max_gap).collect();
    eprintln!("takeover: active killed → standby active in {took_over:?} ({report:?}); media gaps {gaps:?}");
    for f in &flows {
        assert_eq!(f.auth_failures, 0, "{f:?}");
        assert!(f.max_gap < Duration::from_secs(1), "media gap {:?}", f.max_gap);
        assert_eq!(f.sources.len(), 1, "the same relay address before and after: {f:?}");
        assert!(f.received + 60 >= f.sent, "{f:?}");
    }
    // Same latches, same relay ports, counters carried on.
    let after = relay_b.handle().list(None, 100).await.expect("list").sessions;
    assert_eq!(after.len(), 3);
    for (x, y) in before.iter().zip(&after) {
        assert_eq!((x.id, x.pbx.ports, x.endpoint.ports), (y.id, y.pbx.ports, y.endpoint.ports));
        assert_eq!((x.pbx.remote_rtp, x.endpoint.remote_rtp), (y.pbx.remote_rtp, y.endpoint.remote_rtp));
        assert_eq!(x.endpoint.stats.latches, y.endpoint.stats.latches, "no new latch");
        assert!(y.endpoint.stats.packets_forwarded > x.endpoint.stats.packets_forwarded);
    }

    // Fencing: a write with the old active's lease is refused by Redis.
    let mut old = Store::connect(&redis.url(), Keys::new("ucmrc", "svc"), Duration::from_secs(1)).await.expect("store");
    let stale = Holder { node: "a".into(), epoch: 1 };
    let batch = Batch { del: vec![after[0].id.to_string()], ..Batch::default() };
    let note = codec().encode_note(&ChangeNote::default(), Version { epoch: 1, seq: 999 });
    let fenced = old.write(&stale, &batch, &note, Version { epoch: 1, seq: 999 }).await;
    assert!(matches!(fenced, Err(StoreError::Fenced)), "{fenced:?}");
    assert_eq!(raw_records(&redis).len(), 3, "the fenced delete changed nothing");
    // The old active comes back (eager, as configured): it finds the lease
    // held and stays standby, binding none of the ports.
    let relay_a2 = relay(21400);
    let mut a2 = Cluster::start(node_config(&redis, "a", true), relay_a2.handle()).await.expect("cluster a2");
    wait(&mut a2, |s| s.role == Role::Standby && s.warm_sessions == 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // an observation window (two lease lifetimes), not synchronisation
    assert_eq!(a2.status().role, Role::Standby);
    assert_eq!(relay_a2.handle().counters().await.expect("counters").total.ports_in_use, 0);
    assert_eq!(b.status().role, Role::Active);
    a2.stop(false).await;
    b.stop(false).await;
}

/// Redis frozen for 10 s under load: forwarding never notices; changes made
/// before the lease could lapse queue and reach Redis when it returns;
/// after that the node is fenced — it acknowledges nothing a standby
/// taking over would not know — until a renewal succeeds. Then Redis
/// restarts with nothing: the active re-takes its lease and writes
/// everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_never_stops_forwarding_and_the_state_resyncs_when_it_returns() {
    let mut redis = RedisServer::start("outage");
    let relay = relay(21800);
    let mut node = Cluster::start(node_config(&redis, "a", true), relay.handle()).await.expect("cluster");
    wait(&mut node, |s| s.role == Role::Active && s.resyncs >= 1).await;
    let h = relay.handle();
    let (pbx, phone) = (socket("127.0.0.1"), socket("127.0.0.1"));
    let first = srtp_session(&h, &pbx, &phone, 1).await;
    let call = paced_call(&first, pbx, phone, 1);
    let ids = |recs: Vec<(String, String)>| {
        let mut v: Vec<String> = recs.into_iter().map(|(id, _)| id).collect();
        v.sort();
        v
    };
    until("replicated", || !raw_records(&redis).is_empty()).await;

    redis.freeze(true);
    let frozen = Instant::now();
    // Changes while Redis is away, before the lease could lapse (not
    // waiting for Redis: they queue): two sessions come, one of them goes.
    let (p2, e2) = (socket("127.0.0.1"), socket("127.0.0.1"));
    let second = h.allocate(srtp_spec(&p2, &e2, 2)).await.expect("allocate");
    let third = h.allocate(srtp_spec(&p2, &e2, 3)).await.expect("allocate");
    h.release(second.id).await.expect("release");
    let st = wait(&mut node, |s| s.role == Role::Fenced && s.queue_depth > 0).await;
    assert!(st.fences >= 1 && st.demotions == 0, "{st:?}");
    // Fenced: nothing new is acknowledged, nothing is left behind.
    let (p4, e4) = (socket("127.0.0.1"), socket("127.0.0.1"));
    let refused = h.allocate_committed(srtp_spec(&p4, &e4, 4)).await;
    assert_eq!(refused.err(), Some(relay_core::RelayError::Standby));
    assert_eq!(h.update(third.id, Default::default()).await, Err(relay_core::RelayError::Standby));
    assert_eq!(h.counters().await.expect("counters").total.sessions_active, 2);
    let remaining = Duration::from_secs(10).saturating_sub(frozen.elapsed());
    tokio::time::sleep(remaining).await; // the outage itself
    let during = h.counters().await.expect("counters").total.packets_forwarded;
    redis.freeze(false);
    wait(&mut node, |s| s.role == Role::Active && s.redis_up && s.queue_depth == 0).await;
    let want = {
        let mut v = vec![first.id.to_string(), third.id.to_string()];
        v.sort();
        v
    };
    until("redis caught up after the outage", || ids(raw_records(&redis)) == want).await;
    let st = node.status();
    assert!(st.redis_errors > 0 && st.role == Role::Active, "{st:?}");

    // Redis loses everything (a restart without persistence).
    let resyncs = st.resyncs;
    redis.kill();
    redis.restart();
    wait(&mut node, |s| s.redis_up && s.resyncs > resyncs).await;
    until("rewritten after the restart", || ids(raw_records(&redis)) == want).await;
    let mut c = redis.client();
    let lease: String = redis::cmd("GET").arg("ucmrc:{svc}:lease").query(&mut c).expect("lease");
    assert!(lease.starts_with("a "), "the active holds its lease again: {lease}");
    assert_eq!(node.status().demotions, 0, "never stepped down");
    assert_eq!(h.counters().await.expect("counters").total.sessions_active, 2);

    let flows = call.finish();
    for f in &flows {
        assert_eq!(f.auth_failures, 0, "{f:?}");
        assert!(f.max_gap < Duration::from_millis(500), "forwarding paused {:?} during the outage", f.max_gap);
        assert!(f.received + 5 >= f.sent, "{f:?}");
    }
    assert!(during > 900, "media forwarded during the outage: {during}");
    node.stop(false).await;
}

mod ng_calls {
    use super::*;
    use relay_core::ng::bencode::{dict, Value};
    use relay_core::ng::{NgConfig, NgEngine};

    async fn ng(engine: &NgEngine, pairs: Vec<(&str, Value)>) -> Value {
        static COOKIE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let cookie = COOKIE.fetch_add(1, Ordering::Relaxed);
        let msg = [format!("c{cookie} ").into_bytes(), dict(pairs).encode()].concat();
        let reply = engine.handle_message(&msg).await;
        let space = reply.iter().position(|b| *b == b' ').expect("cookie");
        relay_core::ng::bencode::decode(&reply[space + 1..]).expect("bencode reply")
    }

    fn sdes_sdp(at: SocketAddr, key: &[u8]) -> String {
        use base64::Engine as _;
        format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/SAVP 0\r\na=rtcp-mux\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64}\r\n",
            ip = at.ip(),
            port = at.port(),
            b64 = base64::engine::general_purpose::STANDARD.encode(key)
        )
    }

    /// The relay address an SDP sends media to.
    fn media_addr(sdp: &str) -> SocketAddr {
        let ip = sdp.lines().find_map(|l| l.strip_prefix("c=IN IP4 ")).expect("c=").trim();
        let port = sdp.lines().find_map(|l| l.strip_prefix("m=audio ")).expect("m=").split(' ').next().expect("port");
        format!("{ip}:{port}").parse().expect("address")
    }

    fn engine(relay: &Relay) -> Arc<NgEngine> {
        NgEngine::new(relay.handle(), NgConfig { journal: true, ..NgConfig::default() })
    }

    fn pass(from: &UdpSocket, to_relay: SocketAddr, at: &UdpSocket, tx: &mut SrtpTx, rx: &mut SrtpRx) {
        let p = tx.next_rtp();
        from.send_to(&p, to_relay).expect("send");
        let mut buf = [0u8; 2048];
        let (n, _) = at.recv_from(&mut buf).expect("forwarded");
        assert_eq!(&buf[..n], p.as_slice(), "every byte");
        assert!(rx.accept(&buf[..n]).is_some(), "authentic");
    }

    /// Kamailio keeps sending ng to the service address: after a takeover
    /// the standby knows every call — `query` answers, media flows on the
    /// same addresses, `delete` ends it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_standby_knows_every_ng_call_after_a_takeover() {
        let redis = RedisServer::start("ng");
        let relay_a = relay(22200);
        let ng_a = engine(&relay_a);
        let mut a = Cluster::start_with(node_config(&redis, "a", true), relay_a.handle(), Some(ng_a.clone()))
            .await
            .expect("cluster a");
        wait(&mut a, |s| s.role == Role::Active).await;
        let relay_b = relay(22200);
        let ng_b = engine(&relay_b);
        let mut b = Cluster::start_with(node_config(&redis, "b", false), relay_b.handle(), Some(ng_b.clone()))
            .await
            .expect("cluster b");
        wait(&mut b, |s| s.role == Role::Standby).await;

        let (caller, callee) = (socket("127.0.0.1"), socket("127.0.0.1"));
        let (kc, ke) = (master(11), master(12));
        let sdp = |v: &Value| v.get("sdp").and_then(Value::as_str).expect("sdp").to_string();
        let offer = ng(
            &ng_a,
            vec![
                ("command", Value::str("offer")),
                ("call-id", Value::str("ha-call-1")),
                ("from-tag", Value::str("caller")),
                ("sdp", Value::str(&sdes_sdp(caller.local_addr().expect("addr"), &kc))),
            ],
        )
        .await;
        let to_callee_leg = media_addr(&sdp(&offer));
        let answer = ng(
            &ng_a,
            vec![
                ("command", Value::str("answer")),
                ("call-id", Value::str("ha-call-1")),
                ("from-tag", Value::str("caller")),
                ("to-tag", Value::str("callee")),
                ("sdp", Value::str(&sdes_sdp(callee.local_addr().expect("addr"), &ke))),
            ],
        )
        .await;
        let to_caller_leg = media_addr(&sdp(&answer));
        let (mut from_caller, mut from_callee) = (SrtpTx::new(&kc, 1, 1), SrtpTx::new(&ke, 2, 1));
        let (mut at_callee, mut at_caller) = (SrtpRx::new(&kc), SrtpRx::new(&ke));
        for _ in 0..5 {
            pass(&caller, to_caller_leg, &callee, &mut from_caller, &mut at_callee);
            pass(&callee, to_callee_leg, &caller, &mut from_callee, &mut at_caller);
        }
        // Replicated, latches included (the journal's next pulls).
        until("latches replicated", || latched_records(&redis) >= 1).await;
        let written = a.status().last_write;
        caught_up(&mut b, written).await;

        drop(a);
        drop(ng_a);
        drop(relay_a);
        let st = wait(&mut b, |s| s.role == Role::Active).await;
        let report = st.last_takeover.expect("report");
        assert_eq!((report.restored, report.failed, report.calls), (1, 0, 1), "{report:?}");
        let q = ng(&ng_b, vec![("command", Value::str("query")), ("call-id", Value::str("ha-call-1"))]).await;
        assert_eq!(q.get("result").and_then(Value::as_str), Some("ok"), "{q:?}");
        for _ in 0..5 {
            pass(&caller, to_caller_leg, &callee, &mut from_caller, &mut at_callee);
            pass(&callee, to_callee_leg, &caller, &mut from_callee, &mut at_caller);
        }
        let d = ng(
            &ng_b,
            vec![
                ("command", Value::str("delete")),
                ("call-id", Value::str("ha-call-1")),
                ("from-tag", Value::str("caller")),
            ],
        )
        .await;
        assert_eq!(d.get("result").and_then(Value::as_str), Some("ok"), "{d:?}");
        assert_eq!(relay_b.handle().counters().await.expect("counters").total.sessions_active, 0);
        // Its end reaches Redis: nothing left to take over.
        until("the deleted call gone from redis", || {
            let mut c = redis.client();
            let calls: usize = redis::cmd("HLEN").arg("ucmrc:{svc}:calls").query(&mut c).expect("hlen");
            calls == 0 && raw_records(&redis).is_empty()
        })
        .await;
        b.stop(false).await;
    }
}

/// A port still held when the standby takes over (on one host, a killed
/// process's io_uring ring may release its sockets a little later): the
/// takeover retries it and the session resumes once the port is free; the
/// lease is renewed all the while (a long takeover must not let it lapse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_retries_ports_that_are_still_held_for_a_moment() {
    let redis = RedisServer::start("held");
    let relay_a = relay(22600);
    let mut a = Cluster::start(node_config(&redis, "a", true), relay_a.handle()).await.expect("cluster a");
    wait(&mut a, |s| s.role == Role::Active).await;
    let relay_b = relay(22600);
    let mut b = Cluster::start(node_config(&redis, "b", false), relay_b.handle()).await.expect("cluster b");
    wait(&mut b, |s| s.role == Role::Standby).await;
    let (pbx, phone) = (socket("127.0.0.1"), socket("127.0.0.1"));
    let s = srtp_session(&relay_a.handle(), &pbx, &phone, 1).await;
    wait(&mut a, |st| st.last_write.is_some() && st.queue_depth == 0).await;
    wait(&mut b, |st| st.warm_sessions == 1).await;
    drop(a);
    drop(relay_a);
    // Something else holds the session's PBX port when the standby takes over.
    let blocker = UdpSocket::bind(s.pbx.rtp).expect("hold the port");
    let mut c = redis.client();
    until("b holds the lease", || {
        let lease: Option<String> = redis::cmd("GET").arg("ucmrc:{svc}:lease").query(&mut c).expect("lease");
        lease.is_some_and(|l| l.starts_with("b "))
    })
    .await;
    // Held for 2.5 lease lifetimes into the takeover: the lease stays b's,
    // renewed while the takeover waits (it must never lapse and come back).
    let mut lease_seen = Vec::new();
    let held = Instant::now();
    let mut sample = tokio::time::interval(Duration::from_millis(10)); // sampling, not synchronisation
    while held.elapsed() < Duration::from_millis(1500) {
        sample.tick().await;
        let lease: Option<String> = redis::cmd("GET").arg("ucmrc:{svc}:lease").query(&mut c).expect("lease");
        if lease_seen.last() != Some(&lease) {
            lease_seen.push(lease);
        }
    }
    drop(blocker);
    assert_eq!(lease_seen.len(), 1, "the lease changed during the takeover: {lease_seen:?}");
    let st = wait(&mut b, |st| st.role == Role::Active).await;
    let report = st.last_takeover.expect("report");
    assert_eq!((report.restored, report.failed), (1, 0), "{report:?}");
    assert!(report.took >= Duration::from_millis(1400), "it waited for the port: {report:?}");
    assert_eq!(st.demotions, 0);
    assert_eq!(relay_b.handle().session(s.id).await.expect("resumed").pbx.ports.rtp, s.pbx.rtp.port());
    b.stop(false).await;
}

/// Intervals a timer cannot run with are refused by name at start, before
/// anything connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_intervals_are_refused_at_start() {
    let relay = relay(23000);
    let mut c = ClusterConfig::new("redis+unix:///nonexistent.sock", "a", sealer());
    c.lease_ttl = Duration::ZERO;
    let e = Cluster::start(c, relay.handle()).await.expect_err("refused");
    assert!(matches!(e, StoreError::Config("lease_ttl")), "{e}");
}

/// A standby takes over a whole table, not a handful: every session of a
/// thousand (`UCMRC_TAKEOVER_SESSIONS` to measure larger ones, see
/// docs/HA.md) resumes with its id, ports, hints and keys, and the takeover
/// report says how long the restore took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_table_is_taken_over_whole() {
    let sessions: u16 = std::env::var("UCMRC_TAKEOVER_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let redis = RedisServer::start("large");
    // Two ports per session (RTCP muxed), a tenth spare; above the other
    // tests' ranges.
    let ports = u32::from(sessions) * 2 * 11 / 10;
    let big_relay = || {
        Relay::start(RelayConfig {
            port_min: 23200,
            port_max: u16::try_from(23200 + ports).expect("at most ~19 000 sessions"),
            workers: 2,
            journal: true,
            ..RelayConfig::default()
        })
        .expect("relay starts")
    };
    let relay_a = big_relay();
    let mut a = Cluster::start(node_config(&redis, "a", true), relay_a.handle()).await.expect("cluster a");
    wait(&mut a, |s| s.role == Role::Active).await;
    let relay_b = big_relay();
    let mut b = Cluster::start(node_config(&redis, "b", false), relay_b.handle()).await.expect("cluster b");
    wait(&mut b, |s| s.role == Role::Standby).await;

    // Sessions with hints (not latched: no media here), keys and STUN
    // passwords; the hints are outside the relay's ports.
    let h = relay_a.handle();
    let spec = |i: u16| {
        let leg = |port: u16, key: &[u8]| LegSpec {
            rtcp_mux: true,
            hint: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            srtp_auth: Some(auth_for(key)),
            stun_password: Some(format!("ice-password-{i}-secret").into_bytes()),
            ..LegSpec::default()
        };
        let n = (i % 100) as u8;
        SessionSpec {
            tenant: format!("tenant-{}", i % 4), // a tenant may hold half the ports
            pbx: leg(10_000 + i % 5000, &master(2 * n)),
            endpoint: leg(15_000 + i % 5000, &master(2 * n + 1)),
            latch: Some(LatchPolicy::Authenticated),
            ..SessionSpec::default()
        }
    };
    // Pipelined a few hundred at a time (a shard's queue is bounded).
    for chunk in (0..sessions).collect::<Vec<_>>().chunks(256) {
        let allocations: Vec<_> = chunk.iter().map(|&i| h.allocate(spec(i))).collect();
        for p in allocations {
            p.await.expect("allocate");
        }
    }
    let before = export_all(&relay_a.handle()).await;
    assert_eq!(before.len(), usize::from(sessions));
    let total = usize::from(sessions);
    wait(&mut b, |s| s.warm_sessions == total && a.status().queue_depth == 0).await;

    let killed = Instant::now();
    drop(a);
    drop(relay_a);
    let st = wait(&mut b, |s| s.role == Role::Active).await;
    let took_over = killed.elapsed();
    let report = st.last_takeover.expect("report");
    eprintln!("takeover of {sessions} sessions: killed → active in {took_over:?}; restore {:?}", report.took);
    assert_eq!((report.restored, report.failed), (total, 0), "{report:?}");
    // Everything resumed as it was (ids, ports, hints, keys, passwords).
    let after = export_all(&relay_b.handle()).await;
    assert_eq!(after.len(), before.len());
    for (x, y) in before.iter().zip(&after) {
        assert_eq!(x.id, y.id);
        for (lx, ly) in [(&x.pbx, &y.pbx), (&x.endpoint, &y.endpoint)] {
            assert_eq!((lx.ports, lx.hint), (ly.ports, ly.hint), "session {}", x.id);
            assert_eq!(lx.srtp_auth, ly.srtp_auth, "session {}", x.id);
            assert_eq!(lx.stun_password, ly.stun_password, "session {}", x.id);
        }
    }
    let in_use = relay_b.handle().counters().await.expect("counters").total.ports_in_use;
    assert_eq!(in_use, 2 * u64::from(sessions));
    b.stop(false).await;
}
