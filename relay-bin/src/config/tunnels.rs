//! `[tunnels]` and `[[tunnels.listeners]]`: TLS pass-through routed by
//! SNI; defaults from relay-core's [`TunnelConfig`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use relay_core::io::splice::PumpMode;
use relay_core::tunnel::route::SniRouter;
use relay_core::tunnel::server::TunnelConfig;
use serde::{Deserialize, Serialize};

use super::FileConfig;

/// `[tunnels]`: endpoints reach the PBXs' TLS services through the relay.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelsSection {
    /// Where connectors dial in with a ticket for each tunnel.
    pub data_listen: SocketAddr,
    /// Data port announced to connectors (0: the bound port; set it behind a port forward).
    pub data_port: u16,
    /// SNI patterns whose first label is the tenant, e.g. `{tenant}.relay.example`.
    pub domain_patterns: Vec<String>,
    /// Explicit SNI → tenant routes (checked first).
    pub names: BTreeMap<String, String>,
    /// Tenant for hellos without SNI (empty: refuse them).
    pub default_tenant: String,
    /// Time allowed for the complete ClientHello, seconds.
    pub hello_timeout_secs: u64,
    /// Largest ClientHello accepted, bytes.
    pub max_hello_bytes: usize,
    /// Connections still sending their hello, per source IP.
    pub max_pending_per_ip: usize,
    /// Connections still sending their hello, in total.
    pub max_pending: usize,
    /// How long a ticket waits for the connector, seconds.
    pub ticket_ttl_secs: u64,
    /// Close a tunnel idle this long, seconds.
    pub idle_timeout_secs: u64,
    /// Move bytes with splice(2) (false: plain copy).
    pub splice: bool,
    /// Tunnels per tenant unless `[tenants.X] max_tunnel_connections` says otherwise.
    pub tenant_max_connections: usize,
    /// A tenant's tunnels one source (IPv4 address or IPv6 /64) may hold.
    pub tenant_max_per_source: usize,
    /// Standby data connections kept per tenant (0: none); saves a dial per tunnel.
    pub pool_size: usize,
    /// One listener per service.
    pub listeners: Vec<TunnelListenerSection>,
}

impl Default for TunnelsSection {
    fn default() -> Self {
        let d = TunnelConfig::default();
        Self {
            data_listen: SocketAddr::from(([127, 0, 0, 1], 7444)),
            data_port: 0,
            domain_patterns: Vec::new(),
            names: BTreeMap::new(),
            default_tenant: String::new(),
            hello_timeout_secs: d.hello_timeout.as_secs(),
            max_hello_bytes: d.max_hello,
            max_pending_per_ip: d.max_pending_per_ip,
            max_pending: d.max_pending,
            ticket_ttl_secs: d.ticket_ttl.as_secs(),
            idle_timeout_secs: d.idle_timeout.as_secs(),
            splice: true,
            tenant_max_connections: d.tenant_max_connections,
            tenant_max_per_source: d.tenant_max_per_source,
            pool_size: d.pool_size,
            listeners: Vec::new(),
        }
    }
}

/// `[[tunnels.listeners]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelListenerSection {
    /// Listen address (e.g. `0.0.0.0:5061`).
    pub listen: SocketAddr,
    /// Service name the connector maps to a PBX address (e.g. `sip-tls`).
    pub service: String,
}

/// The validated tunnel settings.
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    /// Data listener address.
    pub data_listen: SocketAddr,
    /// Listeners: (address, service).
    pub listeners: Vec<(SocketAddr, String)>,
    /// SNI routing.
    pub router: SniRouter,
    /// Behaviour.
    pub config: TunnelConfig,
    /// Per-tenant tunnel limits.
    pub tenant_limits: HashMap<String, usize>,
}

/// Validates `[tunnels]`; errors are (key, reason).
pub(super) fn tunnel_settings(t: &TunnelsSection, file: &FileConfig) -> Result<TunnelSettings, (String, String)> {
    let bad = |key: &str, m: String| (format!("tunnels.{key}"), m);
    let router = SniRouter::new(
        t.names.iter().map(|(n, tenant)| (n.clone(), tenant.clone())),
        &t.domain_patterns,
        file.tenants.keys().cloned(),
        (!t.default_tenant.is_empty()).then(|| t.default_tenant.clone()),
    )
    .map_err(|e| bad("domain_patterns", e.0))?;
    if t.listeners.is_empty() {
        return Err(bad("listeners", "add at least one [[tunnels.listeners]] (listen, service)".into()));
    }
    let mut listeners = Vec::new();
    for l in &t.listeners {
        if l.service.is_empty() || l.service.len() > 64 {
            return Err(bad("listeners", format!("service name {:?} must be 1 to 64 bytes", l.service)));
        }
        listeners.push((l.listen, l.service.clone()));
    }
    for (key, v) in [
        ("hello_timeout_secs", t.hello_timeout_secs),
        ("ticket_ttl_secs", t.ticket_ttl_secs),
        ("idle_timeout_secs", t.idle_timeout_secs),
        ("max_pending_per_ip", t.max_pending_per_ip as u64),
        ("max_pending", t.max_pending as u64),
        ("tenant_max_per_source", t.tenant_max_per_source as u64),
    ] {
        if v == 0 {
            return Err(bad(key, "must be at least 1".into()));
        }
    }
    if !(512..=65536).contains(&t.max_hello_bytes) {
        return Err(bad("max_hello_bytes", "must be 512 to 65536".into()));
    }
    let tenant_limits = file
        .tenants
        .iter()
        .filter(|(_, s)| s.max_tunnel_connections > 0)
        .map(|(k, s)| (k.clone(), s.max_tunnel_connections))
        .collect();
    Ok(TunnelSettings {
        data_listen: t.data_listen,
        listeners,
        router,
        config: TunnelConfig {
            hello_timeout: Duration::from_secs(t.hello_timeout_secs),
            max_hello: t.max_hello_bytes,
            max_pending_per_ip: t.max_pending_per_ip,
            max_pending: t.max_pending,
            ticket_ttl: Duration::from_secs(t.ticket_ttl_secs),
            idle_timeout: Duration::from_secs(t.idle_timeout_secs),
            pump: if t.splice { PumpMode::Splice } else { PumpMode::Copy },
            tenant_max_connections: t.tenant_max_connections,
            tenant_max_per_source: t.tenant_max_per_source,
            data_port: t.data_port,
            pool_size: t.pool_size.min(64),
            redact_addresses: file.log.redact_addresses,
            ..TunnelConfig::default()
        },
        tenant_limits,
    })
}
