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

/// A `token_sha256` value as the 32 bytes it names (the value is never
/// repeated in the error).
pub(super) fn sha256_hex(key: &str, value: &Option<String>) -> Result<Option<[u8; 32]>, (String, String)> {
    let Some(h) = value else { return Ok(None) };
    let bytes = hex::decode(h.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
    bytes.map(Some).ok_or_else(|| (key.into(), "must be 64 hex digits (SHA-256); value masked".into()))
}

/// The admin token's hash; without one, serving unauthenticated is allowed
/// only on a loopback listener.
pub(super) fn token_hash(a: &AdminSection) -> Result<Option<[u8; 32]>, (String, String)> {
    let hash = sha256_hex("admin.token_sha256", &a.token_sha256)?;
    if hash.is_some() {
        return Ok(hash);
    }
    let loopback = a.listen.ip().is_loopback();
    match a.allow_unauthenticated {
        Some(true) if !loopback => {
            Err(("admin.allow_unauthenticated".into(), "only allowed when admin.listen is a loopback address".into()))
        }
        None if !loopback => Err((
            "admin.token_sha256".into(),
            format!("required: admin.listen ({}) is not loopback (ucmrc token new prints one)", a.listen),
        )),
        Some(false) => Err((
            "admin.token_sha256".into(),
            "required: allow_unauthenticated is false (ucmrc token new prints one)".into(),
        )),
        _ => Ok(None),
    }
}
