//! The `ucmrc` configuration file: TOML, unknown keys rejected, every error
//! naming the key and its line, secrets never printed.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_core::control::auth::AuthPolicy;
use relay_core::control::server::{ControlConfig, SecondConnector, TenantCredentials};
use relay_core::control::tls::TlsError;
use relay_core::io::splice::PumpMode;
use relay_core::quota::TenantLimit;
use relay_core::session::peer::{OwnAddresses, OwnEndpoint};
use relay_core::session::spec::Ceilings;
use relay_core::tunnel::route::SniRouter;
use relay_core::tunnel::server::TunnelConfig;
use relay_core::{
    BackendKind, LatchPolicy, LegLimits, PeerPolicy, RelayConfig, SessionDefaults, SocketOptions, Verify,
};
use serde::{Deserialize, Serialize};

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
    pub datapath: String,
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
        Self {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertised_ip: None,
            port_min: 10000,
            port_max: 19999,
            workers: 0,
            datapath: "auto".into(),
            pin_cpus: Vec::new(),
            recv_buffer_bytes: 4 << 20,
            allow_loopback_peers: None,
            allow_private_peers: false,
            tenant_max_sessions: 0,
            tenant_port_share_percent: relay_core::quota::DEFAULT_PORT_SHARE_PERCENT,
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
    pub latch: String,
    /// `latch` or `all`.
    pub verify: String,
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
            latch: "window".into(),
            verify: "latch".into(),
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

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `human` or `json`.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `ucmrc=debug,info`.
    pub level: String,
    /// Write `redacted` instead of client addresses in logs.
    pub redact_addresses: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self { format: "human".into(), level: "info".into(), redact_addresses: false }
    }
}

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
    /// Forget a call with no live session after this long, seconds.
    pub orphan_call_ttl_secs: u64,
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
            orphan_call_ttl_secs: l.orphan_call_ttl.as_secs(),
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
    pub second_connector: String,
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
            second_connector: "replace".into(),
            grace_secs: d.grace.as_secs(),
            max_attempts: d.auth.max_attempts,
            attempt_window_secs: d.auth.window.as_secs(),
            lockout_secs: d.auth.lockout.as_secs(),
            failure_delay_ms: d.auth.failure_delay.as_millis() as u64,
        }
    }
}

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

/// A configuration error: which key, on which line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File name (or `<embedded>`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key, e.g. `relay.port_min`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.key.is_empty()) {
            (Some(l), false) => write!(f, "{}:{}: {}: {}", self.file, l, self.key, self.message),
            (None, false) => write!(f, "{}: {}: {}", self.file, self.key, self.message),
            (_, true) => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// A serde/toml message in an operator's words: "expected u16" becomes
/// "expected a whole number from 0 to 65535", and so on.
pub(crate) fn humanize(message: &str) -> String {
    const TYPES: [(&str, &str); 10] = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u32", "expected a whole number from 0 to 4294967295"),
        ("expected u64", "expected a whole number from 0 to 18446744073709551615"),
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected i64", "expected a whole number"),
        ("expected a boolean", "expected true or false"),
        ("expected IP address", "expected an IP address such as 192.0.2.10 or 2001:db8::10"),
        ("expected socket address", "expected an address and port such as 127.0.0.1:9180 or [::1]:9180"),
        ("expected a string", "expected a quoted string"),
    ];
    let mut out = message.to_string();
    for (from, to) in TYPES {
        out = out.replace(from, to);
    }
    out
}

impl std::error::Error for ConfigError {}

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
        let backend: BackendKind = r.datapath.parse().map_err(|e: String| err("relay.datapath", e))?;
        if r.drain_timeout_secs > 300 {
            return Err(err(
                "relay.drain_timeout_secs",
                "must be at most 300 (the systemd unit's TimeoutStopSec is 330)".into(),
            ));
        }
        let s = &file.sessions;
        let latch = match s.latch.as_str() {
            "window" => LatchPolicy::Window,
            "authenticated" => LatchPolicy::Authenticated,
            "open" => LatchPolicy::Open,
            other => return Err(err("sessions.latch", format!("{other:?} is not one of window, authenticated, open"))),
        };
        let verify = match s.verify.as_str() {
            "latch" => Verify::Latch,
            "all" => Verify::All,
            other => return Err(err("sessions.verify", format!("{other:?} is not one of latch, all"))),
        };
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
        let ng = match file.ng.enabled {
            true => Some(ng_settings(&file.ng).map_err(|(key, message)| err(key, message))?),
            false => None,
        };
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
        let relay = RelayConfig {
            bind_ip: r.bind_ip,
            advertised_ip: r.advertised_ip,
            port_min: r.port_min,
            port_max: r.port_max,
            workers: r.workers,
            pin_cpus: r.pin_cpus.clone(),
            backend,
            sockets: SocketOptions { recv_buffer: r.recv_buffer_bytes, send_buffer: 0 },
            defaults: SessionDefaults {
                latch,
                verify,
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
                allow_loopback: r.allow_loopback_peers.unwrap_or(r.bind_ip.is_loopback()),
                allow_private: r.allow_private_peers,
                own: OwnAddresses::new(file.listener_endpoints(), Vec::new()),
            },
            tenant_max_sessions: (r.tenant_max_sessions > 0).then_some(r.tenant_max_sessions),
            tenant_port_share_percent: r.tenant_port_share_percent,
            command_queue: 1024,
            thread_name: "ucmrc-shard".into(),
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

    /// What the file asks for that this process cannot do here — checked at
    /// start and by `check-config` (parsing alone cannot know the host):
    /// listeners on the same address, ports below 1024 without the
    /// capability to bind them, CPUs that do not exist.
    pub fn check_runtime(&self) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| {
            let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            ConfigError {
                file: self.source.clone(),
                line: find_key_line(&self.text, section, leaf),
                key: key.into(),
                message,
            }
        };
        let f = &self.file;
        let mut tcp: Vec<(&str, SocketAddr)> = vec![("admin.listen", f.admin.listen)];
        if f.ng.enabled {
            tcp.push(("ng.listen", f.ng.listen));
        }
        if let Some(c) = &f.control {
            tcp.push(("control.listen", c.listen));
        }
        if let Some(t) = &f.tunnels {
            tcp.push(("tunnels.data_listen", t.data_listen));
            tcp.extend(t.listeners.iter().map(|l| ("tunnels.listeners", l.listen)));
        }
        let overlaps = |a: SocketAddr, b: SocketAddr| {
            a.port() == b.port()
                && a.port() != 0
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        for (i, (ka, a)) in tcp.iter().enumerate() {
            if let Some((kb, _)) = tcp[..i].iter().find(|(_, b)| overlaps(*a, *b)) {
                return Err(err(ka, format!("{a} is also {kb}: two listeners cannot share an address")));
            }
        }
        let r = &self.relay;
        let media_ip = |ip: IpAddr| ip == r.bind_ip || ip.is_unspecified() || r.bind_ip.is_unspecified();
        if f.ng.enabled && media_ip(f.ng.listen.ip()) && (r.port_min..=r.port_max).contains(&f.ng.listen.port()) {
            return Err(err(
                "ng.listen",
                format!("port {} is inside the media range {}-{}", f.ng.listen.port(), r.port_min, r.port_max),
            ));
        }
        let unprivileged = unprivileged_port_start();
        if !can_bind_privileged() {
            if r.port_min < unprivileged {
                return Err(err(
                    "relay.port_min",
                    "ports below 1024 need root or CAP_NET_BIND_SERVICE (AmbientCapabilities= in the unit)".into(),
                ));
            }
            if let Some((k, a)) = tcp.iter().find(|(_, a)| a.port() != 0 && a.port() < unprivileged) {
                return Err(err(
                    k,
                    format!(
                        "{a}: ports below 1024 need root or CAP_NET_BIND_SERVICE (AmbientCapabilities= in the unit)"
                    ),
                ));
            }
        }
        if let Ok(allowed) = relay_core::io::sys::allowed_cpus() {
            if let Some(c) = r.pin_cpus.iter().find(|c| !allowed.contains(c)) {
                return Err(err(
                    "relay.pin_cpus",
                    format!("CPU {c} is not available to this process (it may use {allowed:?})"),
                ));
            }
        }
        Ok(())
    }

    /// Settings that work but are risky on a public relay, one sentence each.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let r = &self.relay;
        let public = !r.bind_ip.is_loopback();
        if public && r.peer_policy.allow_loopback {
            w.push(format!(
                "relay.allow_loopback_peers is on with a non-loopback bind_ip ({}): sessions may reach services on this host's loopback",
                r.bind_ip
            ));
        }
        if public && r.peer_policy.allow_private {
            w.push(format!(
                "relay.allow_private_peers is on with a non-loopback bind_ip ({}): sessions may reach private networks behind the relay",
                r.bind_ip
            ));
        }
        if r.defaults.latch == LatchPolicy::Open {
            w.push("sessions.latch = \"open\": any stranger can take over any leg at any time".into());
        }
        if let Some((lo, hi)) = ephemeral_port_range() {
            if r.port_min <= hi && r.port_max >= lo {
                w.push(format!(
                    "the media range {}-{} overlaps the kernel's ephemeral ports {lo}-{hi}: outgoing connections can take relay ports (reserve them with net.ipv4.ip_local_reserved_ports, or move the range)",
                    r.port_min, r.port_max
                ));
            }
        }
        w
    }
}

/// Whether this process may bind ports below 1024: root, or
/// CAP_NET_BIND_SERVICE (bit 10) among its effective capabilities.
fn can_bind_privileged() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return true };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << 10) != 0)
}

/// The first port anyone may bind (`net.ipv4.ip_unprivileged_port_start`, 1024 by default).
fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1024)
}

/// The kernel's ephemeral port range, if readable.
fn ephemeral_port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// Validates `[ng]`; errors are (key, reason).
fn ng_settings(n: &NgSection) -> Result<NgSettings, (&'static str, String)> {
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
    if !(1..=86_400).contains(&n.orphan_call_ttl_secs) {
        return Err(("ng.orphan_call_ttl_secs", "must be 1 to 86400".into()));
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
            max_message_bytes: limits.max_message_bytes,
            max_cookie_bytes: limits.max_cookie_bytes,
        },
        engine: relay_core::ng::NgConfig {
            tenant: n.tenant.clone(),
            limits,
            authenticated_latching: n.authenticated_latching,
        },
    })
}

/// Validates `[control]`; errors are (key, reason).
fn control_settings(c: &ControlSection, log: &LogSection) -> Result<ControlSettings, (&'static str, String)> {
    let at_least_one =
        |key: &'static str, v: u64| if v == 0 { Err((key, "must be at least 1".to_string())) } else { Ok(()) };
    at_least_one("control.handshake_timeout_secs", c.handshake_timeout_secs)?;
    at_least_one("control.auth_timeout_secs", c.auth_timeout_secs)?;
    at_least_one("control.heartbeat_secs", c.heartbeat_secs)?;
    at_least_one("control.max_unauthenticated_per_ip", c.max_unauthenticated_per_ip as u64)?;
    at_least_one("control.max_unauthenticated", c.max_unauthenticated as u64)?;
    at_least_one("control.max_attempts", u64::from(c.max_attempts))?;
    at_least_one("control.attempt_window_secs", c.attempt_window_secs)?;
    let second_connector = match c.second_connector.as_str() {
        "replace" => SecondConnector::Replace,
        "reject" => SecondConnector::Reject,
        other => return Err(("control.second_connector", format!("{other:?} is not one of replace, reject"))),
    };
    if c.cert.as_os_str().is_empty() {
        return Err(("control.cert", "required: a PEM certificate chain".into()));
    }
    if c.key.as_os_str().is_empty() {
        return Err(("control.key", "required: the certificate's PEM private key".into()));
    }
    let cert = read_file(&c.cert).map_err(|e| ("control.cert", format!("cannot read {}: {e}", c.cert.display())))?;
    let key = read_file(&c.key).map_err(|e| ("control.key", format!("cannot read {}: {e}", c.key.display())))?;
    relay_core::control::tls::load_certified_key(&cert, &key).map_err(|e| match e {
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
            second_connector,
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

/// Validates `[tunnels]`; errors are (key, reason).
fn tunnel_settings(t: &TunnelsSection, file: &FileConfig) -> Result<TunnelSettings, (String, String)> {
    let bad = |key: &str, m: String| (format!("tunnels.{key}"), m);
    let router = SniRouter::new(
        t.names.iter().map(|(n, tenant)| (n.clone(), tenant.clone())),
        &t.domain_patterns,
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

/// Whether `level` is a usable `tracing` filter. Non-ASCII text is refused
/// before the parser sees it: tracing-subscriber 0.3 panics on some
/// multi-byte input (found by the `config` fuzz target). Every directive must
/// be a level or `target=level`: a bare word such as `verbose` parses as "the
/// target `verbose` at every level", which silences everything else.
pub fn valid_log_filter(level: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let directives_ok = level.split(',').map(str::trim).all(|d| {
        !d.is_empty()
            && match d.rsplit_once('=') {
                Some((target, lvl)) => !target.is_empty() && LEVELS.contains(&lvl.to_ascii_lowercase().as_str()),
                None => LEVELS.contains(&d.to_ascii_lowercase().as_str()),
            }
    });
    level.is_ascii() && directives_ok && tracing_subscriber::EnvFilter::try_new(level).is_ok()
}

/// Largest configuration, certificate, key, CA bundle or token file read.
pub const MAX_FILE: u64 = 4 << 20;

/// Reads a regular file of at most [`MAX_FILE`] bytes (a path to a device
/// such as `/dev/zero` or a huge file is refused instead of read forever).
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut out = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_FILE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "larger than 4 MiB"));
    }
    Ok(out)
}

/// [`read_file`] as UTF-8 text.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_file(path)?).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

/// The largest char boundary at or before `offset`.
fn boundary(text: &str, offset: usize) -> usize {
    let mut o = offset.min(text.len());
    while !text.is_char_boundary(o) {
        o -= 1;
    }
    o
}

/// 1-based line of a byte offset.
pub(crate) fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..boundary(text, offset)].bytes().filter(|b| *b == b'\n').count() + 1
}

/// A TOML syntax or type error as a [`ConfigError`]: the key (for a
/// missing field, the field inside the table the error points at) and line.
pub(crate) fn toml_error(name: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let message = humanize(e.message().trim());
    let offset = e.span().map(|s| s.start);
    let missing = message.strip_prefix("missing field `").and_then(|m| m.split('`').next());
    let key = match (missing, offset) {
        (Some(field), Some(o)) => match section_at(text, o) {
            s if s.is_empty() => field.to_string(),
            s => format!("{s}.{field}"),
        },
        (Some(field), None) => field.to_string(),
        (None, o) => key_at(text, o),
    };
    ConfigError { file: name.into(), line: offset.map(|o| line_of_offset(text, o)), key, message }
}

/// The `[section]` (or `[[array]]`) header in force at `offset`.
fn section_at(text: &str, offset: usize) -> String {
    let mut section = String::new();
    for line in text[..boundary(text, offset)].lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    section
}

/// The dotted key at a byte offset (section header before it + key on its line).
pub(crate) fn key_at(text: &str, offset: Option<usize>) -> String {
    let Some(offset) = offset else { return "-".into() };
    let offset = boundary(text, offset);
    let section = section_at(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    let key = match (section.is_empty(), key.is_empty() || key.starts_with('[')) {
        (_, true) if !section.is_empty() => section,
        (true, _) => key.to_string(),
        _ => format!("{section}.{key}"),
    };
    if key.is_empty() {
        "-".into()
    } else {
        key
    }
}

/// The line where `key` is set inside `[section]`, if it is written.
pub(crate) fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if current == format!("{section}.{key}") || (section.is_empty() && current == key) {
                return Some(i + 1);
            }
            continue;
        }
        if current == section && t.split('=').next().map(str::trim) == Some(key) {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_are_loopback() {
        let c = Config::embedded();
        assert!(c.relay.bind_ip.is_loopback());
        assert!(c.file.admin.listen.ip().is_loopback());
    }

    #[test]
    fn peer_defaults_are_safe_on_a_public_bind_and_risky_settings_warn() {
        let hash = "ab".repeat(32);
        let public = format!(
            "[relay]\nbind_ip = \"0.0.0.0\"\nadvertised_ip = \"203.0.113.10\"\n[admin]\ntoken_sha256 = \"{hash}\"\n"
        );
        let c = Config::parse("x.toml", &public).expect("valid");
        assert!(!c.relay.peer_policy.allow_loopback && !c.relay.peer_policy.allow_private, "closed by default");
        assert!(c.warnings().iter().all(|w| !w.contains("peers")), "{:?}", c.warnings());
        let risky = public.replace("[admin]", "allow_loopback_peers = true\nallow_private_peers = true\n[admin]");
        let w = Config::parse("x.toml", &risky).expect("valid").warnings();
        assert!(
            w.iter().any(|w| w.contains("allow_loopback_peers")) && w.iter().any(|w| w.contains("allow_private_peers"))
        );
        // A loopback lab relay may only reach loopback, and does by default.
        let lab = Config::parse("x.toml", "").expect("an empty file is the loopback lab");
        assert!(lab.relay.peer_policy.allow_loopback && !lab.relay.peer_policy.allow_private);
        assert!(lab.admin_token_sha256.is_none(), "tokenless admin on loopback");
        // Off loopback, the admin API needs a token; ng needs allow_from.
        let e = Config::parse("x.toml", "[admin]\nlisten = \"0.0.0.0:9180\"\n").expect_err("token");
        assert_eq!(e.key, "admin.token_sha256");
        let e = Config::parse("x.toml", "[ng]\nlisten = \"0.0.0.0:22222\"\n").expect_err("allow_from");
        assert_eq!((e.key.as_str(), e.line), ("ng.allow_from", None));
        let ok = Config::parse(
            "x.toml",
            "[ng]\nlisten = \"0.0.0.0:22222\"\nallow_from = [\"10.0.0.0/24\", \"192.0.2.7\"]\n",
        )
        .expect("valid");
        assert!(ok.ng.expect("ng").transport.allows("10.0.0.9".parse().expect("ip")));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = Config::parse("x.toml", "[relay]\nport_min = 30000\nprot_max = 5\n").expect_err("unknown key");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("prot_max"), "{e}");
    }

    #[test]
    fn bad_values_are_named_with_their_line() {
        let e = Config::parse(
            "x.toml",
            "[admin]\nallow_unauthenticated = true\n[relay]\nport_min = 40000\nport_max = 30000\n",
        )
        .expect_err("bad range");
        assert_eq!((e.key.as_str(), e.line), ("relay.port_min", Some(4)), "{e}");
        let e = Config::parse("x.toml", "[admin]\nallow_unauthenticated = true\n\n[sessions]\nlatch = \"sticky\"\n")
            .expect_err("bad latch");
        assert_eq!((e.key.as_str(), e.line), ("sessions.latch", Some(5)), "{e}");
        let e = Config::parse("x.toml", "[relay]\nport_min = \"x\"\n").expect_err("type");
        assert_eq!(e.line, Some(2), "{e}");
        let e = Config::parse("x.toml", "[admin]\nlisten = \"0.0.0.0:9180\"\nallow_unauthenticated = true\n")
            .expect_err("public");
        assert_eq!(e.key, "admin.allow_unauthenticated");
        let e = Config::parse("x.toml", "[admin]\ntoken_sha256 = \"secret-token-oops\"\n").expect_err("hash");
        assert!(!e.to_string().contains("secret-token-oops"), "secrets are masked: {e}");
    }

    #[test]
    fn control_and_tenant_credentials_are_validated_with_key_and_line() {
        let base = "[admin]\nallow_unauthenticated = true\n";
        let e = Config::parse("x.toml", &format!("{base}[tenants.acme]\nmax_sessions = 3\ntoken_sha256 = \"abc\"\n"))
            .expect_err("short hash");
        assert_eq!((e.key.as_str(), e.line), ("tenants.acme.token_sha256", Some(5)), "{e}");
        let hash = "ab".repeat(32);
        let c = Config::parse(
            "x.toml",
            &format!("{base}[tenants.acme]\ntoken_sha256 = \"{hash}\"\nservices = [\"sip-tls\"]\n[tenants.noauth]\n"),
        )
        .expect("valid");
        assert_eq!(c.tenant_credentials.len(), 1, "only tenants with a token can log in");
        assert_eq!(c.tenant_credentials[0].services, ["sip-tls"]);
        assert!(!format!("{c:?}").contains(&hash), "hashes are masked");
        let e = Config::parse("x.toml", &format!("{base}[control]\nlisten = \"127.0.0.1:0\"\n")).expect_err("no cert");
        assert_eq!(e.key, "control.cert");
        let e = Config::parse(
            "x.toml",
            &format!("{base}[control]\ncert = \"a\"\nkey = \"b\"\nsecond_connector = \"both\"\n"),
        )
        .expect_err("policy");
        assert_eq!((e.key.as_str(), e.line), ("control.second_connector", Some(6)), "{e}");
        let e = Config::parse("x.toml", &format!("{base}[control]\nheartbeat_secs = 0\n")).expect_err("zero");
        assert_eq!((e.key.as_str(), e.line), ("control.heartbeat_secs", Some(4)), "{e}");
    }

    #[test]
    fn tunnels_are_validated_with_key_and_line() {
        let dir = std::env::temp_dir().join(format!("ucmrc-cfg-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let c = relay_core::testkit::pki::issue("relay.test").expect("cert");
        std::fs::write(dir.join("c.pem"), c.cert_pem).expect("cert");
        std::fs::write(dir.join("k.pem"), c.key_pem).expect("key");
        let base = "[admin]\nallow_unauthenticated = true\n";
        let control = "[control]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let listener = "[[tunnels.listeners]]\nlisten = \"127.0.0.1:0\"\nservice = \"sip-tls\"\n";
        let e =
            Config::parse_in("x.toml", &format!("{base}[tunnels]\n{listener}"), Some(&dir)).expect_err("no control");
        assert_eq!(e.key, "tunnels");
        let text = format!("{base}{control}[tunnels]\ndomain_patterns = [\"relay.example\"]\n{listener}");
        let e = Config::parse_in("x.toml", &text, Some(&dir)).expect_err("pattern");
        assert_eq!((e.key.as_str(), e.line), ("tunnels.domain_patterns", Some(7)), "{e}");
        let e = Config::parse_in("x.toml", &format!("{base}{control}[tunnels]\n"), Some(&dir)).expect_err("listeners");
        assert_eq!(e.key, "tunnels.listeners");
        let text = format!(
            "{base}{control}[tunnels]\ndomain_patterns = [\"{{tenant}}.relay.example\"]\nsplice = false\n{listener}[tenants.acme]\nmax_tunnel_connections = 3\n"
        );
        let c = Config::parse_in("x.toml", &text, Some(&dir)).expect("valid");
        let t = c.tunnels.expect("tunnels");
        assert_eq!(t.router.route(Some("acme.relay.example")), Ok("acme".into()));
        assert_eq!(t.config.pump, PumpMode::Copy);
        assert_eq!(t.tenant_limits["acme"], 3);
        assert_eq!(t.listeners[0].1, "sip-tls");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn devices_and_missing_files_are_refused_not_read_forever() {
        let e = Config::load(Path::new("/dev/zero")).expect_err("device");
        assert!(e.message.contains("not a regular file"), "{e}");
        let e = Config::parse(
            "x.toml",
            "[admin]\nallow_unauthenticated = true\n[control]\ncert = \"/dev/zero\"\nkey = \"/dev/zero\"\n",
        )
        .expect_err("device cert");
        assert_eq!((e.key.as_str(), e.line), ("control.cert", Some(4)), "{e}");
    }

    /// Every `key = value` of the example file (commented out or not), by section.
    fn example_values() -> Vec<(String, String, toml::Value, bool)> {
        let text = include_str!("../../docs/ucmrc.example.toml");
        let mut section = String::new();
        let mut out = Vec::new();
        for line in text.lines() {
            let (body, commented) = match line.trim().strip_prefix('#') {
                Some(rest) => (rest.trim(), true),
                None => (line.trim(), false),
            };
            if body.starts_with('[') {
                section = body.trim_matches(|c| c == '[' || c == ']').to_string();
                continue;
            }
            if let Ok(t) = toml::from_str::<toml::Table>(body) {
                for (k, v) in t {
                    out.push((section.clone(), k, v, commented));
                }
            }
        }
        out
    }

    #[test]
    fn the_example_file_states_every_default_exactly() {
        let defaults: toml::Table = toml::Table::try_from(FileConfig::default()).expect("serializes");
        let mut sections: Vec<(String, toml::Table)> = defaults
            .iter()
            .filter_map(|(k, v)| v.as_table().map(|t| (k.clone(), t.clone())))
            .filter(|(k, _)| k != "tenants")
            .collect();
        sections.push(("control".into(), toml::Table::try_from(ControlSection::default()).expect("control")));
        sections.push(("tunnels".into(), toml::Table::try_from(TunnelsSection::default()).expect("tunnels")));
        let example = example_values();
        let mut wrong = Vec::new();
        for (section, table) in &sections {
            for (key, default) in table {
                if default.as_str() == Some("") {
                    continue; // required, no default (control.cert, control.key)
                }
                let written: Vec<&toml::Value> =
                    example.iter().filter(|(s, k, _, _)| s == section && k == key).map(|(_, _, v, _)| v).collect();
                if written.is_empty() {
                    wrong.push(format!("{section}.{key} is not mentioned (default {default})"));
                }
                for v in written.into_iter().filter(|v| *v != default) {
                    wrong.push(format!("{section}.{key} = {v}, the default is {default}"));
                }
            }
        }
        assert!(wrong.is_empty(), "docs/ucmrc.example.toml must state every default:\n{}", wrong.join("\n"));
        // Keys without a fixed default (they depend on other keys) are shown commented out.
        for key in ["advertised_ip", "allow_loopback_peers"] {
            assert!(example.iter().any(|(s, k, _, c)| s == "relay" && k == key && *c), "relay.{key}");
        }
        assert!(example.iter().any(|(s, k, _, c)| s == "admin" && k == "allow_unauthenticated" && *c));
        // And the file itself is a valid configuration.
        Config::parse("ucmrc.example.toml", include_str!("../../docs/ucmrc.example.toml")).expect("valid");
    }

    #[test]
    fn log_filters_that_would_silence_the_relay_are_refused() {
        for good in ["info", "DEBUG", "ucmrc=debug,info", "relay_core=trace, warn", "off"] {
            assert!(valid_log_filter(good), "{good}");
        }
        for bad in ["verbose", "nonsense", "info,", "ucmrc=loud", "=info", ""] {
            assert!(!valid_log_filter(bad), "{bad}");
        }
        let e = Config::parse("x.toml", "[log]\nlevel = \"verbose\"\n").expect_err("refused");
        assert_eq!((e.key.as_str(), e.line), ("log.level", Some(2)), "{e}");
    }

    #[test]
    fn a_non_ascii_log_filter_is_refused_not_a_panic() {
        // Found by the config fuzz target: this level made tracing-subscriber panic.
        let text = "[admin]\nallow_unauthenticated = true\n[log]\nlevel = \"1111,\u{3000}11=\"\n";
        let e = Config::parse("x.toml", text).expect_err("refused");
        assert_eq!((e.key.as_str(), e.line), ("log.level", Some(4)), "{e}");
    }
}
