//! Nodes beside relays for the cluster tests: configurations, relays on
//! ranges below the kernel's ephemeral ports, authenticated SRTP sessions,
//! paced real SRTP calls that measure their gaps, and waits on a node's
//! status.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay_cluster::record::{self, Codec};
use relay_cluster::{Cluster, ClusterConfig, ClusterKey, Sealer};
use relay_core::session::spec::{LatchPolicy, LegSpec, SessionSpec};
use relay_core::{AllocatedSession, Relay, RelayConfig, RelayHandle};

use super::core::{auth_for, master, SrtpRx, SrtpTx};
use super::RedisServer;

pub const KEY: [u8; 32] = [0x5a; 32];

pub fn sealer() -> Sealer {
    Sealer::new(ClusterKey::new(&KEY), Vec::new())
}

/// What the nodes of group `svc` seal records with.
pub fn codec() -> Codec {
    Codec::new(sealer(), "svc")
}

/// A node of group `svc` on `redis`.
pub fn node_config(redis: &RedisServer, node: &str, eager: bool) -> ClusterConfig {
    config_at(&redis.url(), node, eager)
}

/// A node of group `svc` reaching Redis at `url`.
pub fn config_at(url: &str, node: &str, eager: bool) -> ClusterConfig {
    let mut c = ClusterConfig::new(url, node, sealer());
    c.eager = eager;
    c.group = "svc".into();
    c
}

/// A relay with 200 ports from `base` (below the kernel's ephemeral ports:
/// a test socket's port + 1 must never be a relay port).
pub fn relay(base: u16) -> Relay {
    relay_on("127.0.0.1", base)
}

/// A relay like [`relay`] bound to `ip` (two nodes alive on one host at
/// once: a cut-off active and the standby that took over).
pub fn relay_on(ip: &str, base: u16) -> Relay {
    Relay::start(RelayConfig {
        bind_ip: ip.parse().expect("ip"),
        port_min: base,
        port_max: base + 199,
        workers: 2,
        journal: true,
        ..RelayConfig::default()
    })
    .expect("relay starts")
}

/// A UDP socket on `ip` with a short read timeout.
pub fn socket(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    s
}

/// An authenticated session's spec: SDES keys and a STUN password on both
/// legs.
pub fn srtp_spec(pbx: &UdpSocket, phone: &UdpSocket, n: u8) -> SessionSpec {
    let leg = |s: &UdpSocket, key: &[u8]| LegSpec {
        rtcp_mux: true,
        hint: Some(s.local_addr().expect("addr")),
        srtp_auth: Some(auth_for(key)),
        stun_password: Some(format!("ice-password-{n}-secret").into_bytes()),
        ..LegSpec::default()
    };
    SessionSpec {
        tenant: "ha".into(),
        pbx: leg(pbx, &master(2 * n)),
        endpoint: leg(phone, &master(2 * n + 1)),
        latch: Some(LatchPolicy::Authenticated),
        ..SessionSpec::default()
    }
}

/// An authenticated session (see [`srtp_spec`]), acknowledged once it is in
/// Redis.
pub async fn srtp_session(h: &RelayHandle, pbx: &UdpSocket, phone: &UdpSocket, n: u8) -> AllocatedSession {
    h.allocate_committed(srtp_spec(pbx, phone, n)).await.expect("allocate")
}

pub fn raw_records(redis: &RedisServer) -> Vec<(String, String)> {
    let mut c = redis.client();
    redis::cmd("HGETALL").arg("ucmrc:{svc}:sessions").query(&mut c).expect("hgetall")
}

/// Records in Redis whose both legs carry a latched address.
pub fn latched_records(redis: &RedisServer) -> usize {
    raw_records(redis)
        .iter()
        .filter_map(|(id, r)| codec().decode_session(r.as_bytes(), id, record::unix_ms_now()).ok())
        .filter(|d| d.state.pbx.remote_rtp.is_some() && d.state.endpoint.remote_rtp.is_some())
        .count()
}

/// Polls `done` every 10 ms; fails the test naming `what` after 5 s.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (at most 10 s) until `node`'s status satisfies `f`.
pub async fn wait(
    node: &mut Cluster,
    f: impl Fn(&relay_cluster::ClusterStatus) -> bool,
) -> relay_cluster::ClusterStatus {
    match tokio::time::timeout(Duration::from_secs(10), node.wait_for(f)).await {
        Ok(s) => s,
        Err(_) => panic!("node status never got there: {:?}", node.status()),
    }
}

pub fn relay_cluster_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Real SRTP both ways, paced at 50 packets/s per direction, received and
/// verified by libsrtp; records arrival times to measure gaps.
pub struct Call {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Flow>>,
}

#[derive(Debug, Default, Clone)]
pub struct Flow {
    pub sent: u64,
    pub received: u64,
    pub auth_failures: u64,
    pub max_gap: Duration,
    pub from: Vec<SocketAddr>,
}

impl Call {
    pub fn start(a: &AllocatedSession, pbx: UdpSocket, phone: UdpSocket, n: u8) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (from, to, relay_addr, key, ssrc) in [
            (
                phone.try_clone().expect("clone"),
                pbx.try_clone().expect("clone"),
                a.endpoint.rtp,
                master(2 * n + 1),
                0x100 + u32::from(n),
            ),
            (pbx, phone, a.pbx.rtp, master(2 * n), 0x200 + u32::from(n)),
        ] {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut tx = SrtpTx::new(&key, ssrc, 1);
                let mut rx = SrtpRx::new(&key);
                let received = Arc::new(Mutex::new(Flow::default()));
                let r2 = received.clone();
                let stop2 = stop.clone();
                let sink = std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    let mut last: Option<Instant> = None;
                    while !stop2.load(Ordering::Relaxed) {
                        if let Ok((len, src)) = to.recv_from(&mut buf) {
                            let now = Instant::now();
                            let mut f = r2.lock().expect("lock");
                            if let Some(l) = last {
                                f.max_gap = f.max_gap.max(now - l);
                            }
                            last = Some(now);
                            f.received += 1;
                            if !f.from.contains(&src) {
                                f.from.push(src);
                            }
                            if rx.accept(&buf[..len]).is_none() {
                                f.auth_failures += 1;
                            }
                        }
                    }
                });
                let mut sent = 0;
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let _ = from.send_to(&tx.next_rtp(), relay_addr);
                    sent += 1;
                    let next = start + Duration::from_millis(20 * sent);
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d); // pacing, not synchronisation
                    }
                }
                sink.join().expect("sink");
                let mut f = received.lock().expect("lock").clone();
                f.sent = sent;
                f
            }));
        }
        Self { stop, threads }
    }

    pub fn finish(self) -> Vec<Flow> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().expect("flow")).collect()
    }
}

/// Waits until `node`'s last applied write is at least `v`.
pub async fn caught_up(node: &mut Cluster, v: Option<record::Version>) {
    wait(node, |s| s.last_write >= v).await;
}

/// Every session's resumable state, page by page.
pub async fn export_all(h: &RelayHandle) -> Vec<relay_core::session::state::SessionState> {
    let (mut all, mut after) = (Vec::new(), None);
    loop {
        let page = h.export(after, 500).await.expect("export");
        all.extend(page.states);
        match page.next {
            Some(n) => after = Some(n),
            None => return all,
        }
    }
}
