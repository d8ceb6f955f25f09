//! `[control]`: the TLS listener connectors log in to (the control
//! channel; not the admin API); defaults from relay-core's
//! [`ControlConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use relay_core::control::auth::AuthPolicy;
use relay_core::control::server::{ControlConfig, SecondConnector};
use relay_core::tls::TlsError;
use serde::{Deserialize, Serialize};

use super::files::read_file;
use super::log::LogSection;

/// `[control]`: where connectors beside the PBXs log in (TLS 1.2/1.3).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    /// Listen address.
    pub listen: SocketAddr,
    /// PEM certificate chain (reloaded on SIGHUP).
    pub cert: PathBuf,
    /// PEM private key (reloaded on SIGHUP).
    pub key: PathBuf,
    /// Time allowed for the TLS handshake, seconds.
    pub handshake_timeout_secs: u64,
    /// Time allowed for the hello after TLS, seconds.
    pub auth_timeout_secs: u64,
    /// Heartbeat interval, seconds (silent for three: closed).
    pub heartbeat_secs: u64,
    /// Connections not yet authenticated, per source IP.
    pub max_unauthenticated_per_ip: usize,
    /// Connections not yet authenticated, in total.
    pub max_unauthenticated: usize,
    /// `replace` or `reject` a second connector of a tenant.
    pub second_connector: SecondConnector,
    /// Seconds a tenant's sessions outlive its absent connector.
    pub grace_secs: u64,
    /// Failed logins from one address within `attempt_window_secs` that lock it out.
    pub max_attempts: u32,
    /// Window for counting failed logins, seconds.
    pub attempt_window_secs: u64,
    /// How long a locked-out address is refused, seconds.
    pub lockout_secs: u64,
    /// Delay before answering a failed login, milliseconds.
    pub failure_delay_ms: u64,
}

impl Default for ControlSection {
    fn default() -> Self {
        let d = ControlConfig::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            handshake_timeout_secs: d.handshake_timeout.as_secs(),
            auth_timeout_secs: d.auth_timeout.as_secs(),
            heartbeat_secs: d.heartbeat.as_secs(),
            max_unauthenticated_per_ip: d.max_unauthenticated_per_ip,
            max_unauthenticated: d.max_unauthenticated,
            second_connector: d.second_connector,
            grace_secs: d.grace.as_secs(),
            max_attempts: d.auth.max_attempts,
            attempt_window_secs: d.auth.window.as_secs(),
            lockout_secs: d.auth.lockout.as_secs(),
            failure_delay_ms: d.auth.failure_delay.as_millis() as u64,
        }
    }
}

/// The validated control listener settings.
#[derive(Debug, Clone)]
pub struct ControlSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Certificate file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
    /// Listener behaviour.
    pub config: ControlConfig,
}

/// Validates `[control]`; errors are (key, reason).
pub(super) fn control_settings(
    c: &ControlSection,
    log: &LogSection,
) -> Result<ControlSettings, (&'static str, String)> {
    let at_least_one =
        |key: &'static str, v: u64| if v == 0 { Err((key, "must be at least 1".to_string())) } else { Ok(()) };
    at_least_one("control.handshake_timeout_secs", c.handshake_timeout_secs)?;
    at_least_one("control.auth_timeout_secs", c.auth_timeout_secs)?;
    at_least_one("control.heartbeat_secs", c.heartbeat_secs)?;
    at_least_one("control.max_unauthenticated_per_ip", c.max_unauthenticated_per_ip as u64)?;
    at_least_one("control.max_unauthenticated", c.max_unauthenticated as u64)?;
    at_least_one("control.max_attempts", u64::from(c.max_attempts))?;
    at_least_one("control.attempt_window_secs", c.attempt_window_secs)?;
    if c.cert.as_os_str().is_empty() {
        return Err(("control.cert", "required: a PEM certificate chain".into()));
    }
    if c.key.as_os_str().is_empty() {
        return Err(("control.key", "required: the certificate's PEM private key".into()));
    }
    let cert = read_file(&c.cert).map_err(|e| ("control.cert", format!("cannot read {}: {e}", c.cert.display())))?;
    let key = read_file(&c.key).map_err(|e| ("control.key", format!("cannot read {}: {e}", c.key.display())))?;
    relay_core::tls::load_certified_key(&cert, &key).map_err(|e| match e {
        TlsError::Certificate(m) => ("control.cert", m),
        other => ("control.key", other.to_string()),
    })?;
    Ok(ControlSettings {
        listen: c.listen,
        cert: c.cert.clone(),
        key: c.key.clone(),
        config: ControlConfig {
            handshake_timeout: Duration::from_secs(c.handshake_timeout_secs),
            auth_timeout: Duration::from_secs(c.auth_timeout_secs),
            heartbeat: Duration::from_secs(c.heartbeat_secs),
            max_unauthenticated_per_ip: c.max_unauthenticated_per_ip,
            max_unauthenticated: c.max_unauthenticated,
            second_connector: c.second_connector,
            grace: Duration::from_secs(c.grace_secs),
            auth: AuthPolicy {
                max_attempts: c.max_attempts,
                window: Duration::from_secs(c.attempt_window_secs),
                lockout: Duration::from_secs(c.lockout_secs),
                failure_delay: Duration::from_millis(c.failure_delay_ms),
                ..AuthPolicy::default()
            },
            redact_addresses: log.redact_addresses,
            ..ControlConfig::default()
        },
    })
}
