//! `[tenants.NAME]`: per-tenant limits and connector credentials.

use std::collections::BTreeMap;

use relay_core::control::server::TenantCredentials;
use serde::{Deserialize, Serialize};

use super::admin::sha256_hex;

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

/// Checks every tenant's id and share; the connector credentials of those
/// with a token.
pub(super) fn credentials(
    tenants: &BTreeMap<String, TenantSection>,
) -> Result<Vec<TenantCredentials>, (String, String)> {
    let mut out = Vec::new();
    for (tenant, t) in tenants {
        if tenant.is_empty() || tenant.len() > 128 || !tenant.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(("tenants".into(), format!("tenant id {tenant:?} must be 1 to 128 visible ASCII characters")));
        }
        if t.port_share_percent > 100 {
            return Err((format!("tenants.{tenant}.port_share_percent"), "must be 0 to 100".into()));
        }
        if let Some(hash) = sha256_hex(&format!("tenants.{tenant}.token_sha256"), &t.token_sha256)? {
            out.push(TenantCredentials { id: tenant.clone(), token_sha256: hash, services: t.services.clone() });
        }
    }
    Ok(out)
}
