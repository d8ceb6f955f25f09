//! The `ucmrc` configuration file: TOML, unknown keys rejected, every error
//! naming the key and its line, secrets never printed.
//!
//! One module per section; each section's defaults come from the relay-core
//! type it configures, and its named settings (`latch`, `datapath`, ...) are
//! the core's enums, parsed by the core's one parser.

mod admin;
mod cluster;
mod control;
mod errors;
mod files;
mod interfaces;
mod log;
mod ng;
mod relay;
mod runtime;
mod tenants;
mod tunnels;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use relay_core::control::server::TenantCredentials;
use relay_core::peer::{OwnAddresses, OwnEndpoint};
use relay_core::quota::TenantLimit;
use relay_core::session::Ceilings;
use relay_core::{LegLimits, PeerPolicy, RelayConfig, SessionDefaults, SocketOptions};
use serde::{Deserialize, Serialize};

pub use admin::AdminSection;
use cluster::cluster_settings;
pub use cluster::{ClusterSection, ClusterSettings};
use control::control_settings;
pub use control::{ControlSection, ControlSettings};
pub use errors::ConfigError;
pub(crate) use errors::{find_key_line, toml_error};
pub use files::{read_file, read_text, MAX_FILE};
pub use interfaces::InterfaceSection;
pub use log::{valid_log_filter, LogSection};
use ng::ng_settings;
pub use ng::{NgSection, NgSettings};
pub use relay::{RelaySection, SessionsSection};
pub use tenants::TenantSection;
use tunnels::tunnel_settings;
pub use tunnels::{TunnelListenerSection, TunnelSettings, TunnelsSection};

/// The whole file. Every section is optional; missing values take the
/// embedded defaults (a loopback-only relay).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Media relay settings.
    #[serde(default)]
    pub relay: RelaySection,
    /// Defaults for new sessions.
    #[serde(default)]
    pub sessions: SessionsSection,
    /// Admin HTTP API.
    #[serde(default)]
    pub admin: AdminSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// rtpengine ng protocol listener.
    #[serde(default)]
    pub ng: NgSection,
    /// The connectors' TLS control listener (absent: disabled).
    #[serde(default)]
    pub control: Option<ControlSection>,
    /// TLS pass-through tunnels routed by SNI (absent: disabled; needs `[control]`).
    #[serde(default)]
    pub tunnels: Option<TunnelsSection>,
    /// Per-tenant settings, by tenant id.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSection>,
    /// Named interfaces (absent: one, `default`, from `[relay]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceSection>,
    /// Redundancy through Redis (absent: a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
}

impl FileConfig {
    /// Every listener this file configures (admin, ng, control, tunnels):
    /// the relay's own addresses, never a peer. Port 0 (kernel-chosen) is
    /// added once bound.
    pub fn listener_endpoints(&self) -> Vec<OwnEndpoint> {
        let mut v = vec![self.admin.listen];
        if self.ng.enabled {
            v.push(self.ng.listen);
        }
        if let Some(c) = &self.control {
            v.push(c.listen);
        }
        if let Some(t) = &self.tunnels {
            v.push(t.data_listen);
            v.extend(t.listeners.iter().map(|l| l.listen));
        }
        v.into_iter().filter(|a| a.port() != 0).map(OwnEndpoint::socket).collect()
    }
}

/// A loaded, validated configuration.
#[derive(Clone)]
pub struct Config {
    /// Where it came from.
    pub source: String,
    /// The text it was parsed from (to name lines in later checks).
    pub text: String,
    /// As written.
    pub file: FileConfig,
    /// The relay-core configuration it validates into.
    pub relay: RelayConfig,
    /// Parsed token hash.
    pub admin_token_sha256: Option<[u8; 32]>,
    /// The control listener, when configured.
    pub control: Option<ControlSettings>,
    /// Tenants that may log in over the control channel.
    pub tenant_credentials: Vec<TenantCredentials>,
    /// Tunnels, when configured.
    pub tunnels: Option<TunnelSettings>,
    /// The ng protocol, when enabled.
    pub ng: Option<NgSettings>,
    /// Redundancy, when configured.
    pub cluster: Option<ClusterSettings>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the text: it holds token hashes as written.
        f.debug_struct("Config")
            .field("source", &self.source)
            .field("file", &self.file)
            .field("relay", &self.relay)
            .field("admin_token", &self.admin_token_sha256.map(|_| "<set, masked>"))
            .field("control", &self.control)
            .field("tenants_with_tokens", &self.tenant_credentials.len())
            .field("tunnels", &self.tunnels)
            .field("ng", &self.ng)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl Config {
    /// The embedded defaults: a loopback-only relay, admin API on
    /// 127.0.0.1:9180 without a token.
    pub fn embedded() -> Config {
        Config::validate("<embedded>", "", FileConfig::default())
            .unwrap_or_else(|e| panic!("embedded config is valid: {e}"))
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = read_text(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: None,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        })?;
        Config::parse_in(&name, &text, path.parent())
    }

    /// Parses and validates TOML text; relative file names are taken from
    /// the working directory.
    #[cfg(test)]
    pub fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
        Config::parse_in(name, text, None)
    }

    /// Parses and validates TOML text; relative file names (certificates)
    /// are resolved against `base_dir`, the configuration file's directory.
    pub fn parse_in(name: &str, text: &str, base_dir: Option<&Path>) -> Result<Config, ConfigError> {
        let mut file: FileConfig = toml::from_str(text).map_err(|e| toml_error(name, text, &e))?;
        if let (Some(dir), Some(c)) = (base_dir, file.cluster.as_mut()) {
            let files = std::iter::once(&mut c.key_file).chain(c.previous_key_files.iter_mut());
            for p in files.chain(c.redis_password_file.as_mut()) {
                if p.is_relative() && !p.as_os_str().is_empty() {
                    *p = dir.join(&*p);
                }
            }
        }
        if let (Some(dir), Some(c)) = (base_dir, file.control.as_mut()) {
            for p in [&mut c.cert, &mut c.key] {
                if p.is_relative() && !p.as_os_str().is_empty() {
                    *p = dir.join(&*p);
                }
            }
        }
        Config::validate(name, text, file)
    }

    fn validate(name: &str, text: &str, file: FileConfig) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| {
            let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            ConfigError { file: name.into(), line: find_key_line(text, section, leaf), key: key.into(), message }
        };
        let r = &file.relay;
        if r.drain_timeout_secs > 300 {
            return Err(err(
                "relay.drain_timeout_secs",
                "must be at most 300 (the systemd unit's TimeoutStopSec is 330)".into(),
            ));
        }
        let s = &file.sessions;
        if s.idle_timeout_secs == 0 {
            return Err(err("sessions.idle_timeout_secs", "must be at least 1".into()));
        }
        if s.max_duration_secs == 0 {
            return Err(err("sessions.max_duration_secs", "must be at least 1".into()));
        }
        match file.log.format.as_str() {
            "human" | "json" => {}
            other => return Err(err("log.format", format!("{other:?} is not one of human, json"))),
        }
        if !valid_log_filter(&file.log.level) {
            return Err(err(
                "log.level",
                format!(
                    "{:?} is not a level (error, warn, info, debug, trace, off) or a list of target=level directives",
                    file.log.level
                ),
            ));
        }
        let sha256 = |key: &str, h: &Option<String>| -> Result<Option<[u8; 32]>, ConfigError> {
            match h {
                None => Ok(None),
                Some(h) => {
                    let bytes = hex::decode(h.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
                    bytes.map(Some).ok_or_else(|| err(key, "must be 64 hex digits (SHA-256); value masked".into()))
                }
            }
        };
        let admin_token_sha256 = sha256("admin.token_sha256", &file.admin.token_sha256)?;
        let loopback_admin = file.admin.listen.ip().is_loopback();
        if admin_token_sha256.is_none() {
            match file.admin.allow_unauthenticated {
                Some(true) if !loopback_admin => {
                    return Err(err(
                        "admin.allow_unauthenticated",
                        "only allowed when admin.listen is a loopback address".into(),
                    ))
                }
                None if !loopback_admin => {
                    return Err(err(
                        "admin.token_sha256",
                        format!(
                            "required: admin.listen ({}) is not loopback (ucmrc token new prints one)",
                            file.admin.listen
                        ),
                    ))
                }
                Some(false) => {
                    return Err(err(
                        "admin.token_sha256",
                        "required: allow_unauthenticated is false (ucmrc token new prints one)".into(),
                    ))
                }
                _ => {}
            }
        }
        let cluster = match &file.cluster {
            None => None,
            Some(c) => Some(cluster_settings(c).map_err(|(key, message)| err(key, message))?),
        };
        let mut ng = match file.ng.enabled {
            true => Some(ng_settings(&file.ng, file.log.redact_addresses).map_err(|(key, message)| err(key, message))?),
            false => None,
        };
        if let Some(ng) = ng.as_mut() {
            // A cluster replicates the ng calls.
            ng.engine.journal = cluster.is_some();
        }
        let mut tenant_credentials = Vec::new();
        for (tenant, t) in file.tenants.iter() {
            if tenant.is_empty() || tenant.len() > 128 || !tenant.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err("tenants", format!("tenant id {tenant:?} must be 1 to 128 visible ASCII characters")));
            }
            if t.port_share_percent > 100 {
                return Err(err(&format!("tenants.{tenant}.port_share_percent"), "must be 0 to 100".into()));
            }
            if let Some(hash) = sha256(&format!("tenants.{tenant}.token_sha256"), &t.token_sha256)? {
                tenant_credentials.push(TenantCredentials {
                    id: tenant.clone(),
                    token_sha256: hash,
                    services: t.services.clone(),
                });
            }
        }
        let control = match &file.control {
            None => None,
            Some(c) => Some(control_settings(c, &file.log).map_err(|(key, message)| err(key, message))?),
        };
        let interfaces =
            interfaces::interfaces(&file.interfaces).map_err(|(key, message): (String, String)| err(&key, message))?;
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
            // A standby binds the service address's ports before the
            // address moves to it.
            sockets: SocketOptions {
                recv_buffer: r.recv_buffer_bytes,
                freebind: file.cluster.is_some(),
                ..SocketOptions::default()
            },
            defaults: SessionDefaults {
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
            },
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
                f => return err(&format!("relay.{f}"), e.reason.clone()),
            };
            err(key, e.reason)
        })?;
        let tunnels = match &file.tunnels {
            None => None,
            Some(_) if control.is_none() => {
                return Err(err("tunnels", "tunnels need a [control] section (connectors open the streams)".into()))
            }
            Some(t) => Some(tunnel_settings(t, &file).map_err(|(key, message)| err(&key, message))?),
        };
        Ok(Config {
            source: name.into(),
            text: text.into(),
            file,
            relay,
            admin_token_sha256,
            control,
            tenant_credentials,
            tunnels,
            ng,
            cluster,
        })
    }

    /// Per-tenant limits of the tenants the file names (others get
    /// [`RelayConfig::default_tenant_limit`]).
    pub fn tenant_limits(&self) -> Vec<(String, TenantLimit)> {
        let default = self.relay.default_tenant_limit();
        let total = self.relay.ports_total();
        self.file
            .tenants
            .iter()
            .map(|(k, t)| {
                let limit = TenantLimit {
                    sessions: if t.max_sessions > 0 { Some(t.max_sessions) } else { default.sessions },
                    ports: if t.port_share_percent > 0 {
                        Some((total * usize::from(t.port_share_percent) / 100).max(2))
                    } else {
                        default.ports
                    },
                };
                (k.clone(), limit)
            })
            .collect()
    }

    /// The effective configuration as TOML: every key with the value the
    /// relay runs with (defaults filled in), secrets masked.
    pub fn effective_toml(&self) -> String {
        let mut file = self.file.clone();
        file.relay.allow_loopback_peers = Some(self.relay.peer_policy.allow_loopback);
        file.admin.allow_unauthenticated = Some(self.admin_token_sha256.is_none());
        if file.admin.token_sha256.is_some() {
            file.admin.token_sha256 = Some("<masked>".into());
        }
        for t in file.tenants.values_mut() {
            if t.token_sha256.is_some() {
                t.token_sha256 = Some("<masked>".into());
            }
        }
        toml::to_string(&file).unwrap_or_else(|e| format!("# cannot show the configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
