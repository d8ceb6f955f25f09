//! `[admin]`: the admin HTTP API's listener and credentials.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[admin]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Listen address of the admin HTTP API.
    pub listen: SocketAddr,
    /// SHA-256 (hex) of the bearer token (`ucmrc token new` prints it).
    pub token_sha256: Option<String>,
    /// Serve without a token. Default: only when no token is set and
    /// `listen` is loopback (then requests must name localhost in `Host`);
    /// refused on any other listener.
    pub allow_unauthenticated: Option<bool>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9180)), token_sha256: None, allow_unauthenticated: None }
    }
}

impl std::fmt::Debug for AdminSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSection")
            .field("listen", &self.listen)
            .field("token_sha256", &self.token_sha256.as_ref().map(|_| "<set, masked>"))
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .finish()
    }
}
