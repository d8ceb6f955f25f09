//! The `ucmrc` configuration file: TOML, unknown keys rejected, every error
//! naming the key and its line, secrets never printed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use relay_core::{
    BackendKind, LatchPolicy, LegLimits, PeerPolicy, RelayConfig, SessionDefaults, SocketOptions, Verify,
};
use serde::Deserialize;

/// The whole file. Every section is optional; missing values take the
/// embedded defaults (a loopback-only relay).
#[derive(Debug, Clone, Default, Deserialize)]
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
    /// Per-tenant settings, by tenant id.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSection>,
}

/// `[relay]`
#[derive(Debug, Clone, Deserialize)]
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
    /// Allow loopback peers (127.0.0.0/8, ::1).
    pub allow_loopback_peers: bool,
    /// Allow private-range peers (RFC 1918, CGNAT, ULA).
    pub allow_private_peers: bool,
    /// Sessions per tenant unless `[tenants.X]` says otherwise (0: unlimited).
    pub tenant_max_sessions: usize,
    /// How long SIGTERM waits for sessions to end, seconds.
    pub drain_timeout_secs: u64,
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertised_ip: None,
            port_min: 30000,
            port_max: 39999,
            workers: 0,
            datapath: "auto".into(),
            pin_cpus: Vec::new(),
            recv_buffer_bytes: 4 << 20,
            allow_loopback_peers: true,
            allow_private_peers: true,
            tenant_max_sessions: 0,
            drain_timeout_secs: 30,
        }
    }
}

/// `[sessions]`: defaults for new sessions.
#[derive(Debug, Clone, Deserialize)]
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
}

impl Default for SessionsSection {
    fn default() -> Self {
        let d = SessionDefaults::default();
        Self {
            latch: "window".into(),
            verify: "latch".into(),
            learning_window_ms: d.learning_window.as_millis() as u64,
            idle_timeout_secs: d.idle_timeout.as_secs(),
            max_duration_secs: d.max_duration.as_secs(),
            max_pps: d.limits.max_pps.unwrap_or(0),
            max_bytes_per_sec: d.limits.max_bytes_per_sec.unwrap_or(0),
            quality: d.quality,
        }
    }
}

/// `[admin]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Listen address of the admin HTTP API.
    pub listen: SocketAddr,
    /// SHA-256 (hex) of the bearer token (`ucmrc token-hash` prints it).
    pub token_sha256: Option<String>,
    /// Serve without a token (only allowed on a loopback listener).
    pub allow_unauthenticated: bool,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9180)), token_sha256: None, allow_unauthenticated: false }
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `human` or `json`.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `ucmrc=debug,info`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self { format: "human".into(), level: "info".into() }
    }
}

/// `[ng]`: the rtpengine ng control protocol (Kamailio/OpenSIPS rtpengine modules).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NgSection {
    /// Serve the ng protocol.
    pub enabled: bool,
    /// UDP and TCP listen address (rtpengine's customary port is 22222).
    pub listen: SocketAddr,
    /// Tenant charged for sessions created over ng.
    pub tenant: String,
}

impl Default for NgSection {
    fn default() -> Self {
        Self { enabled: true, listen: SocketAddr::from(([127, 0, 0, 1], 22222)), tenant: "ng".into() }
    }
}

/// `[tenants.NAME]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSection {
    /// Maximum concurrent sessions (0: unlimited).
    pub max_sessions: usize,
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
        match self.line {
            Some(l) => write!(f, "{}:{}: {}: {}", self.file, l, self.key, self.message),
            None => write!(f, "{}: {}: {}", self.file, self.key, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from.
    pub source: String,
    /// As written.
    pub file: FileConfig,
    /// The relay-core configuration it validates into.
    pub relay: RelayConfig,
    /// Parsed token hash.
    pub admin_token_sha256: Option<[u8; 32]>,
}

impl Config {
    /// The embedded defaults: a loopback-only relay, admin API on
    /// 127.0.0.1:9180 without a token.
    pub fn embedded() -> Config {
        let mut file = FileConfig::default();
        file.admin.allow_unauthenticated = true;
        Config::validate("<embedded>", "", file).unwrap_or_else(|e| panic!("embedded config is valid: {e}"))
    }

    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: None,
            key: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&name, &text)
    }

    /// Parses and validates TOML text.
    pub fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of_offset(text, s.start));
            ConfigError {
                file: name.into(),
                line,
                key: key_at(text, e.span().map(|s| s.start)),
                message: e.message().trim().to_string(),
            }
        })?;
        Config::validate(name, text, file)
    }

    fn validate(name: &str, text: &str, file: FileConfig) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| {
            let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            ConfigError { file: name.into(), line: find_key_line(text, section, leaf), key: key.into(), message }
        };
        let r = &file.relay;
        let backend: BackendKind = r.datapath.parse().map_err(|e: String| err("relay.datapath", e))?;
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
        if tracing_subscriber::EnvFilter::try_new(&file.log.level).is_err() {
            return Err(err("log.level", format!("{:?} is not a valid filter", file.log.level)));
        }
        let admin_token_sha256 =
            match &file.admin.token_sha256 {
                None => None,
                Some(h) => {
                    let bytes = hex::decode(h.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
                    Some(bytes.ok_or_else(|| {
                        err("admin.token_sha256", "must be 64 hex digits (SHA-256); value masked".into())
                    })?)
                }
            };
        if admin_token_sha256.is_none() && !file.admin.allow_unauthenticated {
            return Err(err(
                "admin.token_sha256",
                "set a token hash, or allow_unauthenticated = true on a loopback listener".into(),
            ));
        }
        if admin_token_sha256.is_none() && !file.admin.listen.ip().is_loopback() {
            return Err(err(
                "admin.allow_unauthenticated",
                "only allowed when admin.listen is a loopback address".into(),
            ));
        }
        if file.ng.tenant.is_empty() || file.ng.tenant.len() > 128 {
            return Err(err("ng.tenant", "must be 1 to 128 bytes".into()));
        }
        for (tenant, _) in file.tenants.iter() {
            if tenant.is_empty() || tenant.len() > 128 {
                return Err(err("tenants", format!("tenant id {tenant:?} must be 1 to 128 bytes")));
            }
        }
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
            },
            peer_policy: PeerPolicy { allow_loopback: r.allow_loopback_peers, allow_private: r.allow_private_peers },
            tenant_quota: (r.tenant_max_sessions > 0).then_some(r.tenant_max_sessions),
            command_queue: 1024,
        };
        relay.validate().map_err(|e| {
            let key = match e.field {
                "defaults.idle_timeout" => "sessions.idle_timeout_secs".to_string(),
                f => format!("relay.{f}"),
            };
            err(&key, e.reason)
        })?;
        Ok(Config { source: name.into(), file, relay, admin_token_sha256 })
    }

    /// Per-tenant session limits (`None`: unlimited).
    pub fn tenant_limits(&self) -> impl Iterator<Item = (&str, Option<usize>)> {
        self.file.tenants.iter().map(|(k, t)| (k.as_str(), (t.max_sessions > 0).then_some(t.max_sessions)))
    }
}

/// 1-based line of a byte offset.
fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// The dotted key at a byte offset (section header before it + key on its line).
fn key_at(text: &str, offset: Option<usize>) -> String {
    let Some(offset) = offset else { return "-".into() };
    let offset = offset.min(text.len());
    let mut section = String::new();
    for line in text[..offset].lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    match (section.is_empty(), key.is_empty() || key.starts_with('[')) {
        (_, true) if !section.is_empty() => section,
        (true, _) => key.to_string(),
        _ => format!("{section}.{key}"),
    }
}

/// The line where `key` is set inside `[section]`, if it is written.
fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
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
}
