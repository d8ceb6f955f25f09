//! Nodes beside relays for the cluster tests (relay-cluster's and
//! ucmrc's): configurations, relays on
//! ranges below the kernel's ephemeral ports, authenticated SRTP sessions,
//! paced real SRTP calls that measure their gaps, and waits on a node's
//! status.

use std::net::UdpSocket;
use std::time::Duration;

use relay_cluster::record::{self, Codec};
use relay_cluster::{Cluster, ClusterConfig, ClusterKey, Sealer};
use relay_core::{AllocatedSession, Relay, RelayConfig, RelayHandle};
use relay_core::{LatchPolicy, LegSpec, SessionSpec};

use crate::keys::auth_for;
use crate::packets::master;
use crate::redis_server::RedisServer;
use crate::srtp::{Direction, PacedCall};

pub mod ng;

/// The cluster key every test node shares.
pub const KEY: [u8; 32] = [0x5a; 32];

/// What the test nodes seal records with.
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

/// Every session record in group `svc`, as stored (id, sealed record).
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

/// Lower-case hex of `b`.
pub fn relay_cluster_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Real SRTP both ways through session `a` (see [`srtp_spec`] for the
/// keys of call `n`), paced and measured.
pub fn paced_call(a: &AllocatedSession, pbx: UdpSocket, phone: UdpSocket, n: u8) -> PacedCall {
    PacedCall::start(vec![
        Direction {
            from: phone.try_clone().expect("clone"),
            relay: a.endpoint.rtp,
            sink: pbx.try_clone().expect("clone"),
            master: master(2 * n + 1),
            ssrc: 0x100 + u32::from(n),
        },
        Direction { from: pbx, relay: a.pbx.rtp, sink: phone, master: master(2 * n), ssrc: 0x200 + u32::from(n) },
    ])
}

/// Waits until `node`'s last applied write is at least `v`.
pub async fn caught_up(node: &mut Cluster, v: Option<record::Version>) {
    wait(node, |s| s.last_write >= v).await;
}

/// Every session's resumable state, page by page.
pub async fn export_all(h: &RelayHandle) -> Vec<relay_core::session::SessionState> {
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
