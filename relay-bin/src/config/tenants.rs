//! `[tenants.NAME]`: per-tenant limits and connector credentials.

use serde::{Deserialize, Serialize};

/// `[tenants.NAME]`
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSection {
    /// Maximum concurrent sessions (0: unlimited).
    pub max_sessions: usize,
    /// SHA-256 (hex) of the tenant's connector token (`ucmrc token new --tenant NAME`).
    pub token_sha256: Option<String>,
    /// Services the tenant's connector may expose (tunnel service names).
    pub services: Vec<String>,
    /// Tunnels (pending and open) for this tenant (0: `[tunnels] tenant_max_connections`).
    pub max_tunnel_connections: usize,
    /// Share of the port range this tenant may hold, percent (0: `[relay] tenant_port_share_percent`).
    pub port_share_percent: u8,
}

impl std::fmt::Debug for TenantSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantSection")
            .field("max_sessions", &self.max_sessions)
            .field("token_sha256", &self.token_sha256.as_ref().map(|_| "<set, masked>"))
            .field("services", &self.services)
            .field("max_tunnel_connections", &self.max_tunnel_connections)
            .field("port_share_percent", &self.port_share_percent)
            .finish()
    }
}
