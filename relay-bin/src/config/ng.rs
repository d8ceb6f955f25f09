//! `[ng]`: rtpengine's ng protocol for Kamailio/OpenSIPS; defaults from
//! relay-core's [`NgLimits`](relay_core::ng::NgLimits).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[ng]`: the rtpengine ng control protocol (Kamailio/OpenSIPS rtpengine modules).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NgSection {
    /// Serve the ng protocol.
    pub enabled: bool,
    /// UDP and TCP listen address (rtpengine's customary port is 22222).
    pub listen: SocketAddr,
    /// Tenant charged for sessions created over ng.
    pub tenant: String,
    /// Networks (CIDR) requests are taken from; required when `listen` is
    /// not loopback (ng has no authentication: its peers are the SIP proxies).
    pub allow_from: Vec<String>,
    /// Switch calls to authenticated latching when both SDPs give keys.
    pub authenticated_latching: bool,
    /// Most calls known at once.
    pub max_calls: usize,
    /// Most media sections in one SDP.
    pub max_media_per_call: usize,
    /// Largest SDP body, bytes.
    pub max_sdp_bytes: usize,
    /// Largest message, bytes.
    pub max_message_bytes: usize,
    /// UDP requests handled at once (more are dropped and counted).
    pub udp_max_in_flight: usize,
    /// TCP connections at once.
    pub tcp_max_connections: usize,
    /// Close a TCP connection silent this long, seconds.
    pub tcp_idle_timeout_secs: u64,
    /// Close a TCP connection whose client has not taken a reply within
    /// this long, seconds.
    pub tcp_write_timeout_secs: u64,
    /// Forget a call with no live session after this long, seconds.
    pub orphan_call_ttl_secs: u64,
    /// How long a deleted call's media keeps flowing when `delete` gives
    /// no `delete-delay`, seconds (rtpengine's `delete-delay`; 0 = at once).
    pub delete_delay_secs: u64,
}

impl Default for NgSection {
    fn default() -> Self {
        let l = relay_core::ng::NgLimits::default();
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 22222)),
            tenant: "ng".into(),
            allow_from: Vec::new(),
            authenticated_latching: true,
            max_calls: l.max_calls,
            max_media_per_call: l.max_media_per_call,
            max_sdp_bytes: l.max_sdp_bytes,
            max_message_bytes: l.max_message_bytes,
            udp_max_in_flight: 256,
            tcp_max_connections: 64,
            tcp_idle_timeout_secs: 300,
            tcp_write_timeout_secs: 10,
            orphan_call_ttl_secs: l.orphan_call_ttl.as_secs(),
            delete_delay_secs: relay_core::ng::NgConfig::default().delete_delay.as_secs(),
        }
    }
}

/// The validated ng settings.
#[derive(Debug, Clone)]
pub struct NgSettings {
    /// The engine.
    pub engine: relay_core::ng::NgConfig,
    /// The transports.
    pub transport: crate::ng::NgTransport,
}

/// Validates `[ng]`; errors are (key, reason).
pub(super) fn ng_settings(n: &NgSection, redact: bool) -> Result<NgSettings, (&'static str, String)> {
    if n.tenant.is_empty() || n.tenant.len() > 128 || !n.tenant.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(("ng.tenant", "must be 1 to 128 visible ASCII characters".into()));
    }
    let mut allow_from = Vec::new();
    for cidr in &n.allow_from {
        let net = cidr
            .parse::<ipnet::IpNet>()
            .or_else(|_| cidr.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| ("ng.allow_from", format!("{cidr:?} is not an address or CIDR network")))?;
        allow_from.push(net);
    }
    if !n.listen.ip().is_loopback() && allow_from.is_empty() {
        return Err((
            "ng.allow_from",
            format!("required when ng.listen ({}) is not loopback: ng has no authentication, list the SIP proxies' networks", n.listen),
        ));
    }
    for (key, v, lo, hi) in [
        ("ng.max_calls", n.max_calls, 1, 10_000_000),
        ("ng.max_media_per_call", n.max_media_per_call, 1, 64),
        ("ng.max_sdp_bytes", n.max_sdp_bytes, 1024, 1 << 20),
        ("ng.max_message_bytes", n.max_message_bytes, 4096, 4 << 20),
        ("ng.udp_max_in_flight", n.udp_max_in_flight, 1, 65_536),
        ("ng.tcp_max_connections", n.tcp_max_connections, 1, 65_536),
    ] {
        if v < lo || v > hi {
            return Err((key, format!("must be {lo} to {hi}")));
        }
    }
    if n.max_message_bytes < n.max_sdp_bytes {
        return Err(("ng.max_message_bytes", "must be at least ng.max_sdp_bytes".into()));
    }
    if !(1..=86_400).contains(&n.tcp_idle_timeout_secs) {
        return Err(("ng.tcp_idle_timeout_secs", "must be 1 to 86400".into()));
    }
    if !(1..=3600).contains(&n.tcp_write_timeout_secs) {
        return Err(("ng.tcp_write_timeout_secs", "must be 1 to 3600".into()));
    }
    if !(1..=86_400).contains(&n.orphan_call_ttl_secs) {
        return Err(("ng.orphan_call_ttl_secs", "must be 1 to 86400".into()));
    }
    let max_delay = relay_core::ng::MAX_DELETE_DELAY.as_secs();
    if n.delete_delay_secs > max_delay {
        return Err(("ng.delete_delay_secs", format!("must be 0 to {max_delay}")));
    }
    let limits = relay_core::ng::NgLimits {
        max_message_bytes: n.max_message_bytes,
        max_sdp_bytes: n.max_sdp_bytes,
        max_media_per_call: n.max_media_per_call,
        max_calls: n.max_calls,
        orphan_call_ttl: Duration::from_secs(n.orphan_call_ttl_secs),
        ..relay_core::ng::NgLimits::default()
    };
    Ok(NgSettings {
        transport: crate::ng::NgTransport {
            listen: n.listen,
            allow_from,
            udp_max_in_flight: n.udp_max_in_flight,
            tcp_max_connections: n.tcp_max_connections,
            tcp_idle_timeout: Duration::from_secs(n.tcp_idle_timeout_secs),
            tcp_write_timeout: Duration::from_secs(n.tcp_write_timeout_secs),
            max_message_bytes: limits.max_message_bytes,
            max_cookie_bytes: limits.max_cookie_bytes,
        },
        engine: relay_core::ng::NgConfig {
            tenant: n.tenant.clone(),
            limits,
            authenticated_latching: n.authenticated_latching,
            delete_delay: Duration::from_secs(n.delete_delay_secs),
            redact_call_ids: redact,
            journal: false,
        },
    })
}
