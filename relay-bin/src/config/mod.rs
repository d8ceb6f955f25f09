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
mod turn;

use std::collections::BTreeMap;
use std::path::Path;

use relay_core::control::server::TenantCredentials;
use relay_core::peer::OwnEndpoint;
use relay_core::quota::TenantLimit;
use relay_core::RelayConfig;
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
pub use turn::{TurnConfig, TurnRealmSection, TurnSection, TurnUserSection};

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
    /// TURN for browsers and Wave clients (absent: disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<TurnSection>,
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
        if let Some(t) = &self.turn {
            v.extend(t.listen.iter().chain(&t.tcp_listen).chain(&t.tls_listen).copied());
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
    /// TURN, when configured.
    pub turn: Option<TurnConfig>,
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
            .field("turn", &self.turn)
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
        if let (Some(dir), Some(t)) = (base_dir, file.turn.as_mut()) {
            let certs = [&mut t.tls_cert, &mut t.tls_key];
            for p in t.realms.iter_mut().flat_map(|r| r.secret_files.iter_mut()).chain(certs) {
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
        // Each section's checks return the dotted key at fault and why;
        // the error names the key's line in the text.
        let err = |(key, message): (String, String)| {
            let (section, leaf) = key.rsplit_once('.').unwrap_or(("", &key));
            let line = find_key_line(text, section, leaf);
            ConfigError { file: name.into(), line, key, message }
        };
        let owned = |(key, message): (&str, String)| (key.to_string(), message);
        relay::check_limits(&file.relay, &file.sessions).map_err(err)?;
        log::check(&file.log).map_err(err)?;
        let admin_token_sha256 = admin::token_hash(&file.admin).map_err(err)?;
        let cluster = file.cluster.as_ref().map(cluster_settings).transpose().map_err(|e| err(owned(e)))?;
        let mut ng = match file.ng.enabled {
            true => Some(ng_settings(&file.ng, file.log.redact_addresses).map_err(|e| err(owned(e)))?),
            false => None,
        };
        if let Some(ng) = ng.as_mut() {
            // A cluster replicates the ng calls.
            ng.engine.journal = cluster.is_some();
        }
        let tenant_credentials = tenants::credentials(&file.tenants).map_err(err)?;
        let control =
            file.control.as_ref().map(|c| control_settings(c, &file.log)).transpose().map_err(|e| err(owned(e)))?;
        let relay = relay::relay_config(&file).map_err(err)?;
        let tunnels = match &file.tunnels {
            None => None,
            Some(_) if control.is_none() => {
                return Err(err((
                    "tunnels".into(),
                    "tunnels need a [control] section (connectors open the streams)".into(),
                )))
            }
            Some(t) => Some(tunnel_settings(t, &file).map_err(err)?),
        };
        let turn = file.turn.as_ref().map(|t| turn::turn_config(t, &file)).transpose().map_err(err)?;
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
            turn,
        })
    }

    /// Per-tenant limits of the tenants the file names (others get
    /// [`RelayConfig::default_tenant_limit`]).
    ///
    /// When ng is the relay's only tenant (no `[tenants]`, no `[control]`
    /// for connectors), the ng tenant may hold the whole port range, as
    /// rtpengine does; `[tenants.NG_TENANT] port_share_percent` sets a
    /// share for mixed use.
    pub fn tenant_limits(&self) -> Vec<(String, TenantLimit)> {
        let default = self.relay.default_tenant_limit();
        let total = self.relay.ports_total();
        let mut limits: Vec<(String, TenantLimit)> = self
            .file
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
            .collect();
        if let (Some(ng), None, true) = (&self.ng, &self.control, self.file.tenants.is_empty()) {
            limits.push((ng.engine.tenant.clone(), TenantLimit { sessions: default.sessions, ports: None }));
        }
        limits
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
