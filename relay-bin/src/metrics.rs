//! Prometheus text exposition of the relay's counters.
//!
//! Data-plane figures come from a snapshot of every shard's plain counters
//! (one command round trip per scrape; the packet path never touches an
//! atomic or a lock). Admin API figures (`ucmrc_admin_*`: requests by result
//! and their latency) are atomics updated per request; `ucmrc_connector_*`
//! are the connectors' control channel.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use relay_core::ng::stats::{NgStatsSnapshot, BUCKETS as NG_BUCKETS, COMMANDS as NG_COMMANDS, RESULTS as NG_RESULTS};
use relay_core::{RelayCounters, ShardCounters};

/// Latency buckets for admin API requests, seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Admin API operations counted separately.
pub const OPERATIONS: [&str; 6] = ["allocate", "query", "list", "release", "other", "update"];
/// Results of an admin API operation.
pub const RESULTS: [&str; 3] = ["ok", "client_error", "server_error"];

/// Admin API request counters and latency histograms.
#[derive(Debug, Default)]
pub struct AdminStats {
    counts: [[AtomicU64; RESULTS.len()]; OPERATIONS.len()],
    buckets: [[AtomicU64; BUCKETS.len()]; OPERATIONS.len()],
    sum_us: [AtomicU64; OPERATIONS.len()],
    total: [AtomicU64; OPERATIONS.len()],
}

impl AdminStats {
    /// Records one request.
    pub fn record(&self, op: usize, status: u16, elapsed: Duration) {
        let op = op.min(OPERATIONS.len() - 1);
        let result = match status {
            0..=399 => 0,
            400..=499 => 1,
            _ => 2,
        };
        self.counts[op][result].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[op][i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_us[op].fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.total[op].fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads one figure from a shard's counters.
type Field = fn(&ShardCounters) -> u64;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
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
}

/// Renders every metric in the Prometheus text format (version 0.0.4).
pub fn render(f: &Figures<'_>) -> String {
    let Figures {
        counters,
        admin,
        connectors,
        tunnels,
        backend,
        draining,
        uptime,
        shard_failures,
        ng,
        fast_path,
        cluster,
    } = *f;
    let mut o = String::with_capacity(16 * 1024);
    let t = &counters.total;
    let simple: [(&str, &str, &str, Field); 16] = [
        ("ucmrc_packets_received_total", "counter", "Datagrams received on relay ports.", |c| c.packets_received),
        ("ucmrc_bytes_received_total", "counter", "Bytes received on relay ports.", |c| c.bytes_received),
        ("ucmrc_packets_forwarded_total", "counter", "Datagrams forwarded to the other leg.", |c| c.packets_forwarded),
        ("ucmrc_bytes_forwarded_total", "counter", "Bytes forwarded to the other leg.", |c| c.bytes_forwarded),
        (
            "ucmrc_packets_forwarded_kernel_total",
            "counter",
            "Of the datagrams forwarded, those the kernel fast path (datapath ebpf) forwarded.",
            |c| c.packets_forwarded_kernel,
        ),
        ("ucmrc_sessions_active", "gauge", "Sessions allocated now.", |c| c.sessions_active),
        ("ucmrc_sessions_created_total", "counter", "Sessions allocated.", |c| c.sessions_created),
        ("ucmrc_sessions_released_total", "counter", "Sessions released by a request.", |c| c.sessions_released),
        ("ucmrc_latches_total", "counter", "Legs that latched to a first address.", |c| c.latches),
        ("ucmrc_relatches_total", "counter", "Legs that moved to a new address.", |c| c.relatches),
        ("ucmrc_ports", "gauge", "Relay ports owned by the shards.", |c| c.ports_total),
        ("ucmrc_ports_in_use", "gauge", "Relay ports in use (including closing and quarantined).", |c| c.ports_in_use),
        ("ucmrc_port_bind_failures_total", "counter", "Ports skipped because another program holds them.", |c| {
            c.port_bind_failures
        }),
        ("ucmrc_allocations_refused_total", "counter", "Allocations refused by a shard.", |c| c.allocations_refused),
        ("ucmrc_send_errors_total", "counter", "Sends the datapath could not perform.", |c| c.send_errors),
        ("ucmrc_recv_errors_total", "counter", "Receive errors other than would-block.", |c| c.recv_errors),
    ];
    for (name, kind, help, get) in simple {
        family(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {}", get(t));
    }
    family(&mut o, "ucmrc_ports_free", "gauge", "Relay ports free for new sessions.");
    let _ = writeln!(o, "ucmrc_ports_free {}", t.ports_total.saturating_sub(t.ports_in_use));
    family(&mut o, "ucmrc_sessions_expired_total", "counter", "Sessions ended by a timer, by reason.");
    let _ = writeln!(o, "ucmrc_sessions_expired_total{{reason=\"idle\"}} {}", t.sessions_expired_idle);
    let _ = writeln!(o, "ucmrc_sessions_expired_total{{reason=\"max_duration\"}} {}", t.sessions_expired_max_duration);
    family(&mut o, "ucmrc_packets_dropped_total", "counter", "Datagrams dropped, by reason.");
    for (reason, n) in t.drops.iter() {
        let _ = writeln!(o, "ucmrc_packets_dropped_total{{reason=\"{}\"}} {n}", reason.as_str());
    }
    let per_shard: [(&str, &str, Field); 4] = [
        ("ucmrc_shard_packets_forwarded_total", "Datagrams forwarded, per shard.", |c| c.packets_forwarded),
        ("ucmrc_shard_sessions_active", "Sessions allocated now, per shard.", |c| c.sessions_active),
        ("ucmrc_shard_uring_enobufs_total", "io_uring multishot receives ended for lack of buffers, per shard.", |c| {
            c.backend_enobufs
        }),
        ("ucmrc_shard_uring_rearms_total", "io_uring multishot receives re-armed, per shard.", |c| c.backend_rearms),
    ];
    for (name, help, get) in per_shard {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        family(&mut o, name, kind, help);
        for (i, c) in counters.shards.iter().enumerate() {
            let _ = writeln!(o, "{name}{{shard=\"{i}\"}} {}", get(c));
        }
    }
    family(&mut o, "ucmrc_admin_requests_total", "counter", "Admin API requests, by operation and result.");
    for (i, op) in OPERATIONS.iter().enumerate() {
        for (j, res) in RESULTS.iter().enumerate() {
            let n = admin.counts[i][j].load(Ordering::Relaxed);
            let _ = writeln!(o, "ucmrc_admin_requests_total{{operation=\"{op}\",result=\"{res}\"}} {n}");
        }
    }
    family(&mut o, "ucmrc_admin_request_duration_seconds", "histogram", "Admin API request latency, by operation.");
    for (i, op) in OPERATIONS.iter().enumerate() {
        for (j, b) in BUCKETS.iter().enumerate() {
            let n = admin.buckets[i][j].load(Ordering::Relaxed);
            let _ = writeln!(o, "ucmrc_admin_request_duration_seconds_bucket{{operation=\"{op}\",le=\"{b}\"}} {n}");
        }
        let total = admin.total[i].load(Ordering::Relaxed);
        let _ = writeln!(o, "ucmrc_admin_request_duration_seconds_bucket{{operation=\"{op}\",le=\"+Inf\"}} {total}");
        let sum = admin.sum_us[i].load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(o, "ucmrc_admin_request_duration_seconds_sum{{operation=\"{op}\"}} {sum}");
        let _ = writeln!(o, "ucmrc_admin_request_duration_seconds_count{{operation=\"{op}\"}} {total}");
    }
    if let Some(c) = connectors {
        family(&mut o, "ucmrc_connector_events_total", "counter", "Control-channel (connector) events, by kind.");
        for (event, n) in c.counters() {
            let _ = writeln!(o, "ucmrc_connector_events_total{{event=\"{event}\"}} {n}");
        }
        family(&mut o, "ucmrc_connectors_active", "gauge", "Connectors authenticated now.");
        let _ = writeln!(o, "ucmrc_connectors_active {}", c.connectors_active);
        family(&mut o, "ucmrc_connector_unauthenticated", "gauge", "Control connections not yet authenticated.");
        let _ = writeln!(o, "ucmrc_connector_unauthenticated {}", c.unauthenticated);
    }
    if let Some(t) = tunnels {
        family(
            &mut o,
            "ucmrc_tunnel_connections_total",
            "counter",
            "Endpoint connections accepted on tunnel listeners.",
        );
        let _ = writeln!(o, "ucmrc_tunnel_connections_total {}", t.accepted);
        family(&mut o, "ucmrc_tunnels_opened_total", "counter", "Tunnels joined to a connector's data connection.");
        let _ = writeln!(o, "ucmrc_tunnels_opened_total {}", t.opened);
        family(&mut o, "ucmrc_tunnels_active", "gauge", "Tunnels open now.");
        let _ = writeln!(o, "ucmrc_tunnels_active {}", t.active);
        family(&mut o, "ucmrc_tunnel_bytes_total", "counter", "Bytes moved through tunnels, by direction.");
        let _ = writeln!(o, "ucmrc_tunnel_bytes_total{{direction=\"to_pbx\"}} {}", t.bytes_to_pbx);
        let _ = writeln!(o, "ucmrc_tunnel_bytes_total{{direction=\"to_endpoint\"}} {}", t.bytes_to_endpoint);
        family(&mut o, "ucmrc_tunnels_ended_total", "counter", "Tunnels ended, by how.");
        for (how, n) in [("closed", t.ended_closed), ("idle", t.ended_idle), ("error", t.ended_error)] {
            let _ = writeln!(o, "ucmrc_tunnels_ended_total{{how=\"{how}\"}} {n}");
        }
        family(&mut o, "ucmrc_tunnel_rejections_total", "counter", "Tunnel and data connections refused, by reason.");
        for (reason, n) in &t.rejected {
            let _ = writeln!(o, "ucmrc_tunnel_rejections_total{{reason=\"{}\"}} {n}", reason.as_str());
        }
    }
    if let Some((s, transport)) = ng {
        ng_metrics(&mut o, s, transport);
    }
    if let Some(k) = fast_path {
        family(
            &mut o,
            "ucmrc_fast_path_packets_total",
            "counter",
            "Packets the kernel fast path saw: forwarded, dropped over a route's rate, or why each went up to userspace.",
        );
        for (outcome, n) in [
            ("forwarded", k.forwarded),
            ("over_rate", k.over_rate),
            ("no_route", k.no_route),
            ("other_source", k.other_source),
            ("not_rtp", k.not_rtp),
            ("not_ipv4_udp", k.not_ipv4_udp),
            ("fragment_or_options", k.fragment_or_options),
            ("bad_header", k.bad_header),
            ("not_owned", k.not_owned),
            ("no_next_hop", k.no_next_hop),
        ] {
            let _ = writeln!(o, "ucmrc_fast_path_packets_total{{outcome=\"{outcome}\"}} {n}");
        }
    }
    if let Some(c) = cluster {
        cluster_metrics(&mut o, c);
    }
    family(&mut o, "ucmrc_shard_failures_total", "counter", "Shard threads that failed (their sessions are lost).");
    let _ = writeln!(o, "ucmrc_shard_failures_total {shard_failures}");
    family(&mut o, "ucmrc_draining", "gauge", "1 while the relay drains (SIGTERM).");
    let _ = writeln!(o, "ucmrc_draining {}", u8::from(draining));
    family(&mut o, "ucmrc_uptime_seconds", "gauge", "Seconds since the relay started.");
    let _ = writeln!(o, "ucmrc_uptime_seconds {}", uptime.as_secs_f64());
    process_metrics(&mut o);
    family(&mut o, "ucmrc_build_info", "gauge", "Build information.");
    let _ = writeln!(o, "ucmrc_build_info{{version=\"{}\",datapath=\"{backend}\"}} 1", env!("CARGO_PKG_VERSION"));
    o
}

/// `ucmrc_cluster_*`: role, lease, replication and Redis health.
fn cluster_metrics(o: &mut String, c: &relay_cluster::ClusterStatus) {
    family(
        o,
        "ucmrc_cluster_role",
        "gauge",
        "1 for this node's role (active serves; standby keeps a warm copy; fenced could not renew its lease in time).",
    );
    for role in relay_cluster::Role::ALL {
        let _ = writeln!(o, "ucmrc_cluster_role{{role=\"{}\"}} {}", role.as_str(), u8::from(c.role == role));
    }
    let gauges: [(&str, &str, f64); 7] = [
        ("ucmrc_cluster_epoch", "The lease epoch this node holds (0 when not active).", c.epoch.unwrap_or(0) as f64),
        ("ucmrc_cluster_redis_up", "1 when the last Redis command succeeded.", f64::from(u8::from(c.redis_up))),
        ("ucmrc_cluster_queue_depth", "Changes waiting to be written to Redis.", c.queue_depth as f64),
        (
            "ucmrc_cluster_replication_lag_seconds",
            "Age of the oldest change not yet in Redis.",
            c.replication_lag.as_secs_f64(),
        ),
        ("ucmrc_cluster_warm_sessions", "Sessions in the standby's warm copy.", c.warm_sessions as f64),
        ("ucmrc_cluster_warm_calls", "ng calls in the standby's warm copy.", c.warm_calls as f64),
        (
            "ucmrc_cluster_lease_holder_epoch",
            "The epoch of the lease holder as last seen (0: none).",
            c.holder.as_ref().map_or(0.0, |h| h.epoch as f64),
        ),
    ];
    for (name, help, v) in gauges {
        family(o, name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    }
    let counters: [(&str, &str, u64); 8] = [
        ("ucmrc_cluster_takeovers_total", "Times this node took the lease.", c.takeovers),
        ("ucmrc_cluster_demotions_total", "Times this node lost the lease while active.", c.demotions),
        (
            "ucmrc_cluster_fences_total",
            "Times this node stopped answering changes because it could not renew its lease in time.",
            c.fences,
        ),
        ("ucmrc_cluster_redis_errors_total", "Redis commands that failed.", c.redis_errors),
        ("ucmrc_cluster_resyncs_total", "Full resynchronizations written to Redis.", c.resyncs),
        (
            "ucmrc_cluster_bad_records_total",
            "Records in Redis refused: malformed, edited, moved, or sealed under an unknown key.",
            c.bad_records,
        ),
        (
            "ucmrc_cluster_rollbacks_refused_total",
            "Records or deletions older than what this node applied, refused.",
            c.rollbacks_refused,
        ),
        ("ucmrc_cluster_ignored_names_total", "Names in records this release does not know, ignored.", c.ignored_names),
    ];
    for (name, help, v) in counters {
        family(o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    }
}

/// `ucmrc_ng_*`: commands by type and result, their latency, and what the
/// transports refused.
fn ng_metrics(o: &mut String, s: &NgStatsSnapshot, t: &crate::ng::NgTransportStats) {
    family(o, "ucmrc_ng_commands_total", "counter", "ng commands handled, by command and result.");
    for (i, cmd) in NG_COMMANDS.iter().enumerate() {
        for (j, res) in NG_RESULTS.iter().enumerate() {
            let label = cmd.replace(' ', "_");
            let _ = writeln!(o, "ucmrc_ng_commands_total{{command=\"{label}\",result=\"{res}\"}} {}", s.counts[i][j]);
        }
    }
    family(
        o,
        "ucmrc_ng_command_duration_seconds",
        "histogram",
        "ng command latency (request parsed to reply encoded).",
    );
    for (b, n) in NG_BUCKETS.iter().zip(s.buckets) {
        let _ = writeln!(o, "ucmrc_ng_command_duration_seconds_bucket{{le=\"{b}\"}} {n}");
    }
    let _ = writeln!(o, "ucmrc_ng_command_duration_seconds_bucket{{le=\"+Inf\"}} {}", s.total);
    let _ = writeln!(o, "ucmrc_ng_command_duration_seconds_sum {}", s.sum_seconds);
    let _ = writeln!(o, "ucmrc_ng_command_duration_seconds_count {}", s.total);
    family(o, "ucmrc_ng_rejected_offers_total", "counter", "ng offers answered with an error (no call set up).");
    let _ = writeln!(o, "ucmrc_ng_rejected_offers_total {}", s.rejected_offers);
    family(
        o,
        "ucmrc_ng_transport_refused_total",
        "counter",
        "ng requests and connections refused by the transports, by reason.",
    );
    for (reason, n) in [
        ("source", &t.refused_source),
        ("udp_overload", &t.dropped_overload),
        ("tcp_connections", &t.refused_connections),
        ("tcp_idle", &t.idle_closed),
        ("bad_stream", &t.bad_streams),
        ("tcp_write_timeout", &t.write_timeouts),
    ] {
        let _ = writeln!(o, "ucmrc_ng_transport_refused_total{{reason=\"{reason}\"}} {}", n.load(Ordering::Relaxed));
    }
}

/// Conventional `process_*` metrics from /proc/self.
fn process_metrics(o: &mut String) {
    let ticks = 100.0; // USER_HZ on Linux
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces) start at ") ".
        if let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) {
            let f: Vec<&str> = rest.split(' ').collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime = field 14, stime = 15, starttime = 22 (1-based, from the pid).
            family(o, "process_cpu_seconds_total", "counter", "User and system CPU time spent, seconds.");
            let _ = writeln!(o, "process_cpu_seconds_total {}", (num(11) + num(12)) / ticks);
            let boot = std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| s.lines().find(|l| l.starts_with("btime "))?.split(' ').nth(1)?.parse::<f64>().ok());
            if let Some(boot) = boot {
                family(o, "process_start_time_seconds", "gauge", "Start time since the Unix epoch, seconds.");
                let _ = writeln!(o, "process_start_time_seconds {}", boot + num(19) / ticks);
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kib = |key: &str| {
            status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        };
        if let Some(rss) = kib("VmRSS:") {
            family(o, "process_resident_memory_bytes", "gauge", "Resident memory, bytes.");
            let _ = writeln!(o, "process_resident_memory_bytes {}", rss * 1024.0);
        }
        if let Some(vsz) = kib("VmSize:") {
            family(o, "process_virtual_memory_bytes", "gauge", "Virtual memory, bytes.");
            let _ = writeln!(o, "process_virtual_memory_bytes {}", vsz * 1024.0);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        family(o, "process_open_fds", "gauge", "Open file descriptors.");
        let _ = writeln!(o, "process_open_fds {}", fds.count());
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| {
        let line = l.lines().find(|l| l.starts_with("Max open files"))?;
        line.split_whitespace().nth(3)?.parse::<f64>().ok()
    });
    if let Some(max) = max_fds {
        family(o, "process_max_fds", "gauge", "Maximum number of open file descriptors (soft limit).");
        let _ = writeln!(o, "process_max_fds {max}");
    }
}
