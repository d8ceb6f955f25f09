//! `[relay]` and `[sessions]`: the media engine's settings, whose
//! defaults are relay-core's own ([`RelayConfig::default`],
//! [`SessionDefaults::default`]).

use std::net::IpAddr;

use relay_core::{BackendKind, LatchPolicy, RelayConfig, SessionDefaults, Verify};
use serde::{Deserialize, Serialize};

/// `[relay]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// IP the relay ports bind to (`::` for dual-stack).
    pub bind_ip: IpAddr,
    /// IP written into SDP; required when `bind_ip` is unspecified.
    pub advertised_ip: Option<IpAddr>,
    /// First relay port.
    pub port_min: u16,
    /// Last relay port.
    pub port_max: u16,
    /// Shard threads (0: one per CPU).
    pub workers: usize,
    /// `auto`, `uring` or `portable`.
    pub datapath: BackendKind,
    /// CPUs to pin shard threads to (empty: no pinning).
    pub pin_cpus: Vec<usize>,
    /// Receive buffer per relay socket, bytes.
    pub recv_buffer_bytes: usize,
    /// Allow loopback peers (127.0.0.0/8, ::1). Default: only when
    /// `bind_ip` is loopback (a lab relay can reach nothing else).
    pub allow_loopback_peers: Option<bool>,
    /// Allow private-range peers (RFC 1918, CGNAT, ULA). Default false.
    pub allow_private_peers: bool,
    /// Sessions per tenant unless `[tenants.X]` says otherwise (0: no session limit).
    pub tenant_max_sessions: usize,
    /// Share of the port range one tenant may hold, percent (1–100).
    pub tenant_port_share_percent: u8,
    /// How long SIGTERM waits for sessions to end, seconds.
    pub drain_timeout_secs: u64,
    /// Exit (non-zero) when a shard thread fails, so a supervisor restarts
    /// the relay; false keeps serving the other shards' sessions.
    pub exit_on_shard_failure: bool,
}

impl Default for RelaySection {
    fn default() -> Self {
        let d = RelayConfig::default();
        Self {
            bind_ip: d.bind_ip,
            advertised_ip: d.advertised_ip,
            port_min: d.port_min,
            port_max: d.port_max,
            workers: d.workers,
            datapath: d.backend,
            pin_cpus: d.pin_cpus,
            recv_buffer_bytes: d.sockets.recv_buffer,
            // Follows bind_ip (the core's default is a loopback lab relay).
            allow_loopback_peers: None,
            allow_private_peers: d.peer_policy.allow_private,
            tenant_max_sessions: d.tenant_max_sessions.unwrap_or(0),
            tenant_port_share_percent: d.tenant_port_share_percent,
            drain_timeout_secs: 30,
            exit_on_shard_failure: true,
        }
    }
}

/// `[sessions]`: defaults for new sessions.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsSection {
    /// `window`, `authenticated` or `open`.
    pub latch: LatchPolicy,
    /// `latch` or `all`.
    pub verify: Verify,
    /// Learning window, milliseconds.
    pub learning_window_ms: u64,
    /// Idle timeout, seconds.
    pub idle_timeout_secs: u64,
    /// Maximum duration, seconds.
    pub max_duration_secs: u64,
    /// Packets per second per leg (0: unlimited).
    pub max_pps: u32,
    /// Bytes per second per leg (0: unlimited).
    pub max_bytes_per_sec: u64,
    /// Collect RTP quality figures.
    pub quality: bool,
    /// Highest `max_pps` a request may set (0: no ceiling).
    pub max_pps_ceiling: u32,
    /// Highest `max_bytes_per_sec` a request may set (0: no ceiling).
    pub max_bytes_per_sec_ceiling: u64,
    /// Longest idle timeout a request may set, seconds.
    pub idle_timeout_ceiling_secs: u64,
    /// Longest maximum duration a request may set, seconds.
    pub max_duration_ceiling_secs: u64,
}

impl Default for SessionsSection {
    fn default() -> Self {
        let d = SessionDefaults::default();
        let c = d.ceilings;
        Self {
            latch: d.latch,
            verify: d.verify,
            learning_window_ms: d.learning_window.as_millis() as u64,
            idle_timeout_secs: d.idle_timeout.as_secs(),
            max_duration_secs: d.max_duration.as_secs(),
            max_pps: d.limits.max_pps.unwrap_or(0),
            max_bytes_per_sec: d.limits.max_bytes_per_sec.unwrap_or(0),
            quality: d.quality,
            max_pps_ceiling: c.max_pps.unwrap_or(0),
            max_bytes_per_sec_ceiling: c.max_bytes_per_sec.unwrap_or(0),
            idle_timeout_ceiling_secs: c.idle_timeout.as_secs(),
            max_duration_ceiling_secs: c.max_duration.as_secs(),
        }
    }
}
