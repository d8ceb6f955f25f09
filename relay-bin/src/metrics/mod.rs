//! The relay's metrics, encoded by the Prometheus project's own client
//! (`prometheus-client`, OpenMetrics text).
//!
//! Data-plane figures come from a snapshot of every shard's plain counters
//! (one command round trip per scrape; the packet path never touches an
//! atomic or a lock): each scrape builds a registry of typed families from
//! the snapshots and encodes it. Admin API figures (`ucmrc_admin_*`:
//! requests by result and their latency) are the client's own counters and
//! histograms, updated per request; `ucmrc_connector_*` are the connectors'
//! control channel.

mod families;
mod process;

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use relay_core::ng::commands::{kind_label, KINDS as NG_KINDS};
use relay_core::ng::stats::{NgStatsSnapshot, BUCKETS as NG_BUCKETS, RESULTS as NG_RESULTS};
use relay_core::RelayCounters;

use families::{Scrape, SnapshotHistogram};

/// The media type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets for admin API requests, seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Admin API operations counted separately.
pub const OPERATIONS: [&str; 6] = ["allocate", "query", "list", "release", "other", "update"];
/// Results of an admin API operation.
pub const RESULTS: [&str; 3] = ["ok", "client_error", "server_error"];

/// Labels of one admin API series.
type AdminLabels = Vec<(&'static str, &'static str)>;

/// Admin API request counters and latency histograms.
#[derive(Debug, Clone)]
pub struct AdminStats {
    requests: Family<AdminLabels, Counter>,
    durations: Family<AdminLabels, Histogram, fn() -> Histogram>,
}

impl Default for AdminStats {
    /// Every operation and result present from the start (at zero).
    fn default() -> Self {
        let stats =
            Self { requests: Family::default(), durations: Family::new_with_constructor(|| Histogram::new(BUCKETS)) };
        for op in OPERATIONS {
            for result in RESULTS {
                drop(stats.requests.get_or_create(&vec![("operation", op), ("result", result)]));
            }
            drop(stats.durations.get_or_create(&vec![("operation", op)]));
        }
        stats
    }
}

impl AdminStats {
    /// Records one request of operation `op` (an index into [`OPERATIONS`]).
    pub fn record(&self, op: usize, status: u16, elapsed: Duration) {
        let op = OPERATIONS[op.min(OPERATIONS.len() - 1)];
        let result = match status {
            0..=399 => RESULTS[0],
            400..=499 => RESULTS[1],
            _ => RESULTS[2],
        };
        self.requests.get_or_create(&vec![("operation", op), ("result", result)]).inc();
        self.durations.get_or_create(&vec![("operation", op)]).observe(elapsed.as_secs_f64());
    }
}

/// Everything one scrape renders.
pub struct Figures<'a> {
    /// Every shard's counters.
    pub counters: &'a RelayCounters,
    /// Admin API requests.
    pub admin: &'a AdminStats,
    /// The connectors' control listener, when configured.
    pub connectors: Option<&'a relay_core::control::server::ControlStats>,
    /// The tunnel listeners, when configured.
    pub tunnels: Option<&'a relay_core::tunnel::server::TunnelStats>,
    /// The running datapath.
    pub backend: &'a str,
    /// Whether the relay drains.
    pub draining: bool,
    /// Time since start.
    pub uptime: Duration,
    /// Shard threads that failed.
    pub shard_failures: usize,
    /// The ng protocol (commands, transports), when enabled.
    pub ng: Option<(&'a NgStatsSnapshot, &'a crate::ng::NgTransportStats)>,
    /// The kernel fast path's outcomes, when it runs (`datapath = "ebpf"`).
    pub fast_path: Option<relay_core::io::FastPathOutcomes>,
    /// The cluster node, when `[cluster]` is configured.
    pub cluster: Option<&'a relay_cluster::ClusterStatus>,
    /// The TURN server, when `[turn]` is configured.
    pub turn: Option<&'a TurnFigures>,
}

/// The TURN server's figures at one scrape.
#[derive(Debug, Clone, Default)]
pub struct TurnFigures {
    /// Its counters.
    pub stats: relay_core::turn::TurnStats,
    /// Allocations now, by tenant (every configured tenant listed).
    pub allocations: Vec<(String, u64)>,
    /// Sends the kernel refused (or a stream client's full queue).
    pub send_failures: u64,
    /// Peer datagrams too large for a relayed socket's buffer.
    pub oversize_drops: u64,
    /// TCP/TLS connections refused at the connection limits.
    pub streams_refused: u64,
    /// Allocations whose channels the kernel fast path relays now.
    pub in_kernel: u64,
}

/// Encodes every metric (OpenMetrics text, [`CONTENT_TYPE`]).
pub fn render(f: &Figures<'_>) -> String {
    let mut s = Scrape::default();
    data_plane(&mut s, f.counters);
    s.registry.register(
        "ucmrc_admin_requests",
        "Admin API requests, by operation and result",
        f.admin.requests.clone(),
    );
    s.registry.register(
        "ucmrc_admin_request_duration_seconds",
        "Admin API request latency, by operation",
        f.admin.durations.clone(),
    );
    if let Some(c) = f.connectors {
        connectors(&mut s, c);
    }
    if let Some(t) = f.tunnels {
        tunnels(&mut s, t);
    }
    if let Some((stats, transport)) = f.ng {
        ng(&mut s, stats, transport);
    }
    if let Some(k) = f.fast_path {
        fast_path(&mut s, k);
    }
    if let Some(c) = f.cluster {
        cluster(&mut s, c);
    }
    if let Some(t) = f.turn {
        turn(&mut s, t);
    }
    s.counter("ucmrc_shard_failures", "Shard threads that failed (their sessions are lost)", f.shard_failures as u64);
    s.gauge("ucmrc_draining", "1 while the relay drains (SIGTERM)", i64::from(f.draining));
    s.gauge_f64("ucmrc_uptime_seconds", "Seconds since the relay started", f.uptime.as_secs_f64());
    process::register(&mut s);
    s.gauges(
        "ucmrc_build_info",
        "Build information",
        [(vec![("version", env!("CARGO_PKG_VERSION").to_string()), ("datapath", f.backend.to_string())], 1)],
    );
    s.encode()
}

/// The shards' counters: packets, bytes, sessions, ports, drops.
fn data_plane(s: &mut Scrape, counters: &RelayCounters) {
    let t = &counters.total;
    s.counter("ucmrc_packets_received", "Datagrams received on relay ports", t.packets_received);
    s.counter("ucmrc_bytes_received", "Bytes received on relay ports", t.bytes_received);
    s.counter("ucmrc_packets_forwarded", "Datagrams forwarded to the other leg", t.packets_forwarded);
    s.counter("ucmrc_bytes_forwarded", "Bytes forwarded to the other leg", t.bytes_forwarded);
    s.counter(
        "ucmrc_packets_forwarded_kernel",
        "Of the datagrams forwarded, those the kernel fast path (datapath ebpf) forwarded",
        t.packets_forwarded_kernel,
    );
    s.gauge("ucmrc_sessions_active", "Sessions allocated now", t.sessions_active as i64);
    s.counter("ucmrc_sessions_created", "Sessions allocated", t.sessions_created);
    s.counter("ucmrc_sessions_released", "Sessions released by a request", t.sessions_released);
    s.counter("ucmrc_latches", "Legs that latched to a first address", t.latches);
    s.counter("ucmrc_relatches", "Legs that moved to a new address", t.relatches);
    s.gauge("ucmrc_ports", "Relay ports owned by the shards", t.ports_total as i64);
    s.gauge("ucmrc_ports_in_use", "Relay ports in use (including closing and quarantined)", t.ports_in_use as i64);
    s.counter("ucmrc_port_bind_failures", "Ports skipped because another program holds them", t.port_bind_failures);
    s.counter("ucmrc_allocations_refused", "Allocations refused by a shard", t.allocations_refused);
    s.counter("ucmrc_send_errors", "Sends the datapath could not perform", t.send_errors);
    s.counter("ucmrc_recv_errors", "Receive errors other than would-block", t.recv_errors);
    s.gauge(
        "ucmrc_ports_free",
        "Relay ports free for new sessions",
        t.ports_total.saturating_sub(t.ports_in_use) as i64,
    );
    s.counters(
        "ucmrc_sessions_expired",
        "Sessions ended by a timer, by reason",
        "reason",
        [("idle", t.sessions_expired_idle), ("max_duration", t.sessions_expired_max_duration)],
    );
    s.counters(
        "ucmrc_packets_dropped",
        "Datagrams dropped, by reason",
        "reason",
        t.drops.iter().map(|(reason, n)| (reason.as_str(), n)),
    );
    let shards = |get: fn(&relay_core::ShardCounters) -> u64| {
        counters.shards.iter().enumerate().map(move |(i, c)| (i.to_string(), get(c))).collect::<Vec<_>>()
    };
    s.counters(
        "ucmrc_shard_packets_forwarded",
        "Datagrams forwarded, per shard",
        "shard",
        shards(|c| c.packets_forwarded),
    );
    s.gauges_by(
        "ucmrc_shard_sessions_active",
        "Sessions allocated now, per shard",
        "shard",
        shards(|c| c.sessions_active),
    );
    s.counters(
        "ucmrc_shard_uring_enobufs",
        "io_uring multishot receives ended for lack of buffers, per shard",
        "shard",
        shards(|c| c.backend_enobufs),
    );
    s.counters(
        "ucmrc_shard_uring_rearms",
        "io_uring multishot receives re-armed, per shard",
        "shard",
        shards(|c| c.backend_rearms),
    );
}

/// `ucmrc_connector_*`: the control channel.
fn connectors(s: &mut Scrape, c: &relay_core::control::server::ControlStats) {
    s.counters("ucmrc_connector_events", "Control-channel (connector) events, by kind", "event", c.counters());
    s.gauge("ucmrc_connectors_active", "Connectors authenticated now", c.connectors_active as i64);
    s.gauge("ucmrc_connector_unauthenticated", "Control connections not yet authenticated", c.unauthenticated as i64);
}

/// `ucmrc_tunnel*`: the SNI tunnels.
fn tunnels(s: &mut Scrape, t: &relay_core::tunnel::server::TunnelStats) {
    s.counter("ucmrc_tunnel_connections", "Endpoint connections accepted on tunnel listeners", t.accepted);
    s.counter("ucmrc_tunnels_opened", "Tunnels joined to a connector's data connection", t.opened);
    s.gauge("ucmrc_tunnels_active", "Tunnels open now", t.active as i64);
    s.counter(
        "ucmrc_tunnel_handoffs",
        "Tunnel-listener connections handed to the relay's own TURN server (TCP, or TLS by name or ALPN stun.turn)",
        t.handed_off,
    );
    s.counters(
        "ucmrc_tunnel_bytes",
        "Bytes moved through tunnels, by direction",
        "direction",
        [("to_pbx", t.bytes_to_pbx), ("to_endpoint", t.bytes_to_endpoint)],
    );
    s.counters(
        "ucmrc_tunnels_ended",
        "Tunnels ended, by how",
        "how",
        [("closed", t.ended_closed), ("idle", t.ended_idle), ("error", t.ended_error)],
    );
    s.counters(
        "ucmrc_tunnel_rejections",
        "Tunnel and data connections refused, by reason",
        "reason",
        t.rejected.iter().map(|(reason, n)| (reason.as_str(), *n)),
    );
}

/// `ucmrc_turn_*`: allocations by tenant, requests by method and result,
/// relayed datagrams and bytes, drops by reason.
fn turn(s: &mut Scrape, t: &TurnFigures) {
    use relay_core::turn::proto::{ErrorCode, Method};
    use relay_core::turn::TurnDrop;
    s.gauges_by("ucmrc_turn_allocations", "TURN allocations now, by tenant", "tenant", t.allocations.clone());
    let requests = Method::ALL.into_iter().flat_map(|m| {
        std::iter::once(None).chain(ErrorCode::ALL.into_iter().map(Some)).filter_map(move |e| {
            let n = t.stats.requests(m, e);
            let result = e.map_or_else(|| "success".to_string(), |e| e.number().to_string());
            (n > 0 || e.is_none() && m != Method::Send && m != Method::Data && m != Method::ConnectionAttempt)
                .then(|| (vec![("method", m.label().to_string()), ("result", result)], n))
        })
    });
    s.counters_labelled(
        "ucmrc_turn_requests",
        "TURN requests answered, by method and result (success or the error code)",
        requests,
    );
    s.counters(
        "ucmrc_turn_relayed_packets",
        "Datagrams relayed by TURN, by direction",
        "direction",
        [("to_peer", t.stats.to_peer_packets), ("to_client", t.stats.to_client_packets)],
    );
    s.counters(
        "ucmrc_turn_relayed_bytes",
        "Application bytes relayed by TURN, by direction",
        "direction",
        [("to_peer", t.stats.to_peer_bytes), ("to_client", t.stats.to_client_bytes)],
    );
    let mut drops: Vec<(&str, u64)> = TurnDrop::ALL.iter().map(|d| (d.label(), t.stats.drops(*d))).collect();
    drops.push(("send_failed", t.send_failures));
    drops.push(("oversize", t.oversize_drops));
    s.counters("ucmrc_turn_drops", "TURN input dropped (and sends the kernel refused), by reason", "reason", drops);
    s.counter("ucmrc_turn_allocations_expired", "TURN allocations that expired unrefreshed", t.stats.expired);
    s.gauge(
        "ucmrc_turn_kernel_allocations",
        "TURN allocations whose channels the kernel fast path relays now (their packets are counted with the rest)",
        t.in_kernel as i64,
    );
    s.counter(
        "ucmrc_turn_streams_refused",
        "TURN TCP/TLS connections refused at the connection limits",
        t.streams_refused,
    );
    s.counter(
        "ucmrc_turn_ports_unavailable",
        "Relayed ports TURN could not open (held by another process)",
        t.stats.ports_unavailable,
    );
    s.counter(
        "ucmrc_turn_connections_unbound",
        "Peer connections of TCP allocations (RFC 6062) closed because no ConnectionBind came in time",
        t.stats.connections_unbound,
    );
}

/// `ucmrc_ng_*`: commands by type and result, their latency, and what the
/// transports refused.
fn ng(s: &mut Scrape, stats: &NgStatsSnapshot, t: &crate::ng::NgTransportStats) {
    let commands = (0..NG_KINDS).flat_map(|i| {
        NG_RESULTS.iter().enumerate().map(move |(j, res)| {
            (vec![("command", kind_label(i).replace(' ', "_")), ("result", res.to_string())], stats.counts[i][j])
        })
    });
    s.counters_labelled("ucmrc_ng_commands", "ng commands handled, by command and result", commands);
    s.registry.register(
        "ucmrc_ng_command_duration_seconds",
        "ng command latency (request parsed to reply encoded)",
        SnapshotHistogram::from_cumulative(&NG_BUCKETS, &stats.buckets, stats.total, stats.sum_seconds),
    );
    s.counter("ucmrc_ng_rejected_offers", "ng offers answered with an error (no call set up)", stats.rejected_offers);
    s.counter(
        "ucmrc_ng_unknown_options",
        "Keys and flags of ng requests that no option UCMRC knows uses (without effect)",
        stats.unknown_options,
    );
    s.counter(
        "ucmrc_ng_unknown_directions",
        "ng direction names that matched no interface (the default interface was used)",
        stats.unknown_directions,
    );
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    s.counters(
        "ucmrc_ng_transport_refused",
        "ng requests and connections refused by the transports, by reason",
        "reason",
        [
            ("source", load(&t.refused_source)),
            ("udp_overload", load(&t.dropped_overload)),
            ("tcp_connections", load(&t.refused_connections)),
            ("tcp_idle", load(&t.idle_closed)),
            ("bad_stream", load(&t.bad_streams)),
            ("tcp_write_timeout", load(&t.write_timeouts)),
        ],
    );
}

/// `ucmrc_fast_path_packets_total`: what the kernel fast path saw.
fn fast_path(s: &mut Scrape, k: relay_core::io::FastPathOutcomes) {
    s.counters(
        "ucmrc_fast_path_packets",
        "Packets the kernel fast path saw: forwarded, dropped over a route's rate, or why each went up to userspace",
        "outcome",
        [
            ("forwarded", k.forwarded),
            ("over_rate", k.over_rate),
            ("no_route", k.no_route),
            ("other_source", k.other_source),
            ("not_rtp", k.not_rtp),
            ("not_ipv4_udp", k.not_ipv4_udp),
            ("fragment_or_options", k.fragment_or_options),
            ("bad_header", k.bad_header),
            ("not_owned", k.not_owned),
            ("turn_to_peer", k.turn_to_peer),
            ("turn_to_client", k.turn_to_client),
            ("turn_expired", k.turn_expired),
            ("turn_unusual", k.turn_unusual),
            ("no_next_hop", k.no_next_hop),
        ],
    );
}

/// `ucmrc_cluster_*`: role, lease, replication and Redis health.
fn cluster(s: &mut Scrape, c: &relay_cluster::ClusterStatus) {
    s.gauges_by(
        "ucmrc_cluster_role",
        "1 for this node's role (active serves; standby keeps a warm copy; fenced could not renew its lease in time)",
        "role",
        relay_cluster::Role::ALL.map(|role| (role.as_str(), u64::from(c.role == role))),
    );
    s.gauge("ucmrc_cluster_epoch", "The lease epoch this node holds (0 when not active)", c.epoch.unwrap_or(0) as i64);
    s.gauge("ucmrc_cluster_redis_up", "1 when the last Redis command succeeded", i64::from(c.redis_up));
    s.gauge("ucmrc_cluster_queue_depth", "Changes waiting to be written to Redis", c.queue_depth as i64);
    s.gauge_f64(
        "ucmrc_cluster_replication_lag_seconds",
        "Age of the oldest change not yet in Redis",
        c.replication_lag.as_secs_f64(),
    );
    s.gauge("ucmrc_cluster_warm_sessions", "Sessions in the standby's warm copy", c.warm_sessions as i64);
    s.gauge("ucmrc_cluster_warm_calls", "ng calls in the standby's warm copy", c.warm_calls as i64);
    s.gauge("ucmrc_cluster_warm_turn", "TURN allocations in the standby's warm copy", c.warm_turn as i64);
    s.gauge(
        "ucmrc_cluster_lease_holder_epoch",
        "The epoch of the lease holder as last seen (0: none)",
        c.holder.as_ref().map_or(0, |h| h.epoch as i64),
    );
    s.counter("ucmrc_cluster_takeovers", "Times this node took the lease", c.takeovers);
    s.counter("ucmrc_cluster_demotions", "Times this node lost the lease while active", c.demotions);
    s.counter(
        "ucmrc_cluster_fences",
        "Times this node stopped answering changes because it could not renew its lease in time",
        c.fences,
    );
    s.counter("ucmrc_cluster_redis_errors", "Redis commands that failed", c.redis_errors);
    s.counter("ucmrc_cluster_resyncs", "Full resynchronizations written to Redis", c.resyncs);
    s.counter(
        "ucmrc_cluster_bad_records",
        "Records in Redis refused: malformed, edited, moved, or sealed under an unknown key",
        c.bad_records,
    );
    s.counter(
        "ucmrc_cluster_rollbacks_refused",
        "Records or deletions older than what this node applied, refused",
        c.rollbacks_refused,
    );
    s.counter("ucmrc_cluster_ignored_names", "Names in records this release does not know, ignored", c.ignored_names);
}
