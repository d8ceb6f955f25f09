//! `[relay]` and `[sessions]`: the media engine's settings, whose
//! defaults are relay-core's own ([`RelayConfig::default`],
//! [`SessionDefaults::default`]).

use std::net::IpAddr;
use std::time::Duration;

use relay_core::peer::OwnAddresses;
use relay_core::session::Ceilings;
use relay_core::{
    BackendKind, LatchPolicy, LegLimits, PeerPolicy, RelayConfig, SessionDefaults, SocketOptions, Verify,
};

use super::FileConfig;
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

/// The bounds a file could break before anything is built.
pub(super) fn check_limits(r: &RelaySection, s: &SessionsSection) -> Result<(), (String, String)> {
    if r.drain_timeout_secs > 300 {
        return Err((
            "relay.drain_timeout_secs".into(),
            "must be at most 300 (the systemd unit's TimeoutStopSec is 330)".into(),
        ));
    }
    if s.idle_timeout_secs == 0 {
        return Err(("sessions.idle_timeout_secs".into(), "must be at least 1".into()));
    }
    if s.max_duration_secs == 0 {
        return Err(("sessions.max_duration_secs".into(), "must be at least 1".into()));
    }
    Ok(())
}

/// The engine's configuration from `[relay]`, `[sessions]` and
/// `[[interfaces]]`, checked by relay-core (its field names mapped back to
/// the file's keys).
pub(super) fn relay_config(file: &FileConfig) -> Result<RelayConfig, (String, String)> {
    let (r, s) = (&file.relay, &file.sessions);
    let interfaces = super::interfaces::interfaces(&file.interfaces)?;
    // Loopback peers by default only when every relay address is loopback.
    let all_loopback = if interfaces.is_empty() {
        r.bind_ip.is_loopback()
    } else {
        interfaces.iter().flat_map(|i| &i.addresses).all(|a| a.bind.is_loopback())
    };
    let relay = RelayConfig {
        interfaces,
        bind_ip: r.bind_ip,
        advertised_ip: r.advertised_ip,
        port_min: r.port_min,
        port_max: r.port_max,
        workers: r.workers,
        pin_cpus: r.pin_cpus.clone(),
        backend: r.datapath,
        // A standby binds the service address's ports before the address
        // moves to it.
        sockets: SocketOptions {
            recv_buffer: r.recv_buffer_bytes,
            freebind: file.cluster.is_some(),
            ..SocketOptions::default()
        },
        defaults: session_defaults(s),
        peer_policy: PeerPolicy {
            allow_loopback: r.allow_loopback_peers.unwrap_or(all_loopback),
            allow_private: r.allow_private_peers,
            own: OwnAddresses::new(file.listener_endpoints(), Vec::new()),
        },
        tenant_max_sessions: (r.tenant_max_sessions > 0).then_some(r.tenant_max_sessions),
        tenant_port_share_percent: r.tenant_port_share_percent,
        command_queue: 1024,
        thread_name: "ucmrc-shard".into(),
        journal: file.cluster.is_some(),
    };
    relay.validate().map_err(|e| {
        let key = match e.field {
            "defaults.idle_timeout" => "sessions.idle_timeout_secs",
            "defaults.max_duration" => "sessions.max_duration_secs",
            "defaults.learning_window" => "sessions.learning_window_ms",
            "defaults.limits.max_pps" => "sessions.max_pps",
            "defaults.limits.max_bytes_per_sec" => "sessions.max_bytes_per_sec",
            "ceilings.idle_timeout" => "sessions.idle_timeout_ceiling_secs",
            "ceilings.max_duration" => "sessions.max_duration_ceiling_secs",
            "ceilings.max_pps" => "sessions.max_pps_ceiling",
            "interfaces" => "interfaces.name",
            f => return (format!("relay.{f}"), e.reason.clone()),
        };
        (key.to_string(), e.reason)
    })?;
    Ok(relay)
}

/// `[sessions]` as the engine's defaults and ceilings (0 means none).
fn session_defaults(s: &SessionsSection) -> SessionDefaults {
    SessionDefaults {
        latch: s.latch,
        verify: s.verify,
        learning_window: Duration::from_millis(s.learning_window_ms),
        idle_timeout: Duration::from_secs(s.idle_timeout_secs),
        max_duration: Duration::from_secs(s.max_duration_secs),
        limits: LegLimits {
            max_pps: (s.max_pps > 0).then_some(s.max_pps),
            max_bytes_per_sec: (s.max_bytes_per_sec > 0).then_some(s.max_bytes_per_sec),
        },
        quality: s.quality,
        ceilings: Ceilings {
            max_pps: (s.max_pps_ceiling > 0).then_some(s.max_pps_ceiling),
            max_bytes_per_sec: (s.max_bytes_per_sec_ceiling > 0).then_some(s.max_bytes_per_sec_ceiling),
            idle_timeout: Duration::from_secs(s.idle_timeout_ceiling_secs),
            max_duration: Duration::from_secs(s.max_duration_ceiling_secs),
        },
    }
}
