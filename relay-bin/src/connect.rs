//! `ucmrc connect --config FILE`: the connector beside a PBX. It keeps the
//! authenticated control channel to the relay up (reconnecting with backoff
//! and jitter) and announces the services it exposes.
//!
//! ```toml
//! relay = "relay.example.net:7443"
//! more_relays = ["relay2.example.net:7443"]   # optional: the least loaded is used, others on failure
//! server_name = "relay.example.net"      # default: the host part of `relay`
//! ca_file = "/etc/ssl/certs/ca-certificates.crt"   # or: pinned_sha256 = "ab:cd:..."
//! tenant = "acme"
//! token_file = "/etc/ucmrc/acme.token"
//! connector_id = "pbx-01"                # default: the host name
//!
//! local_api = "127.0.0.1:7080"          # optional, loopback only: TURN credentials for the PBX
//!
//! [services]
//! sip-tls = "127.0.0.1:5061"
//! web = { address = "127.0.0.1:443", proxy_protocol = true }   # PROXY v2 header first
//! ```
//!
//! With `local_api`, the PBX on this host gets short-lived TURN credentials
//! for its Wave and browser clients from the relay through the connector's
//! channel: `POST /v1/turn/credentials` with `{"user": "ext-201",
//! "lifetime_secs": 3600}` answers the credentials and a WebRTC
//! `iceServers` entry (docs/turn.md). It takes no token, so it listens on a
//! loopback address only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_core::connector::{Connector, ConnectorConfig, TunnelTarget};
use relay_core::tls::ClientTrust;
use serde::Deserialize;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{find_key_line, read_file, read_text, toml_error, ConfigError, LogSection};

mod local_api;

/// The connector's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectFile {
    /// The relay's control listener, `host:port`.
    pub relay: String,
    /// More relays (same certificate name and trust): at each (re)connect
    /// the least loaded one that answers is used.
    #[serde(default)]
    pub more_relays: Vec<String>,
    /// Name checked against the relay's certificate.
    #[serde(default)]
    pub server_name: Option<String>,
    /// CA bundle (PEM) that signed the relay's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the relay's certificate (instead of a CA).
    #[serde(default)]
    pub pinned_sha256: Option<String>,
    /// Tenant id.
    pub tenant: String,
    /// File holding the tenant's token (one line).
    pub token_file: PathBuf,
    /// Stable id of this connector.
    #[serde(default)]
    pub connector_id: Option<String>,
    /// Services to expose: name → local address of the PBX service.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceEntry>,
    /// Loopback address of the local API (TURN credentials for the PBX).
    #[serde(default)]
    pub local_api: Option<SocketAddr>,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
}

/// One exposed service: an address, or a table with options.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ServiceEntry {
    /// `sip-tls = "127.0.0.1:5061"`
    Address(SocketAddr),
    /// `web = { address = "127.0.0.1:443", proxy_protocol = true }`
    Options(ServiceOptions),
}

/// A service with options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOptions {
    /// The PBX service's address.
    pub address: SocketAddr,
    /// Send a PROXY protocol v2 header with the endpoint's address first.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl ServiceEntry {
    fn target(&self) -> TunnelTarget {
        match self {
            ServiceEntry::Address(addr) => TunnelTarget { addr: *addr, proxy_protocol: false },
            ServiceEntry::Options(o) => TunnelTarget { addr: o.address, proxy_protocol: o.proxy_protocol },
        }
    }
}

/// A validated connector configuration.
#[derive(Debug, Clone)]
pub struct ConnectConfig {
    /// As written.
    pub file: ConnectFile,
    /// What the connector library runs with.
    pub connector: ConnectorConfig,
}

impl ConnectConfig {
    /// Reads and validates a file; relative paths are taken from its directory.
    pub fn load(path: &Path) -> Result<ConnectConfig, ConfigError> {
        let name = path.display().to_string();
        let text = read_text(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: None,
            key: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&name, &text, path.parent())
    }

    /// Parses and validates TOML text.
    pub fn parse(name: &str, text: &str, base_dir: Option<&Path>) -> Result<ConnectConfig, ConfigError> {
        let mut file: ConnectFile = toml::from_str(text).map_err(|e| toml_error(name, text, &e))?;
        let err = |key: &str, message: String| {
            let (section, leaf) = key.rsplit_once('.').unwrap_or(("", key));
            ConfigError { file: name.into(), line: find_key_line(text, section, leaf), key: key.into(), message }
        };
        if let Some(dir) = base_dir {
            for p in [file.ca_file.as_mut(), Some(&mut file.token_file)].into_iter().flatten() {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        let Some((host, port)) = file.relay.rsplit_once(':') else {
            return Err(err("relay", format!("{:?} is not host:port", file.relay)));
        };
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(err("relay", format!("{:?} is not host:port", file.relay)));
        }
        if file.more_relays.len() > 16 {
            return Err(err("more_relays", "at most 16".into()));
        }
        for r in &file.more_relays {
            let ok = r.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
            if !ok {
                return Err(err("more_relays", format!("{r:?} is not host:port")));
            }
        }
        let server_name = file.server_name.clone().unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
        if rustls::pki_types::ServerName::try_from(server_name.clone()).is_err() {
            return Err(err("server_name", format!("{server_name:?} is not a DNS name or IP address")));
        }
        let trust = match (&file.ca_file, &file.pinned_sha256) {
            (Some(_), Some(_)) => return Err(err("pinned_sha256", "set ca_file or pinned_sha256, not both".into())),
            (None, None) => {
                return Err(err(
                    "ca_file",
                    "set ca_file (a PEM CA bundle) or pinned_sha256 (the relay's certificate)".into(),
                ))
            }
            (Some(ca), None) => {
                let pem = read_file(ca).map_err(|e| err("ca_file", format!("cannot read {}: {e}", ca.display())))?;
                let trust = ClientTrust::CaPem(pem);
                relay_core::tls::client_config(&trust).map_err(|e| err("ca_file", e.to_string()))?;
                trust
            }
            (None, Some(pin)) => ClientTrust::pinned_hex(pin).map_err(|e| err("pinned_sha256", e.to_string()))?,
        };
        if file.tenant.is_empty() || file.tenant.len() > 128 {
            return Err(err("tenant", "must be 1 to 128 bytes".into()));
        }
        let token = read_text(&file.token_file)
            .map_err(|e| err("token_file", format!("cannot read {}: {e}", file.token_file.display())))?;
        let token = token.trim();
        if token.is_empty() || token.lines().count() != 1 {
            return Err(err("token_file", "must hold the token on one line".into()));
        }
        warn_if_world_readable(&file.token_file);
        if file.log.format != "human" && file.log.format != "json" {
            return Err(err("log.format", format!("{:?} is not one of human, json", file.log.format)));
        }
        if !crate::config::valid_log_filter(&file.log.level) {
            return Err(err("log.level", format!("{:?} is not a valid filter", file.log.level)));
        }
        let mut connector = ConnectorConfig::new(&file.relay, &server_name, trust, &file.tenant, token);
        connector.more_relays = file.more_relays.clone();
        if let Some(id) = &file.connector_id {
            if id.is_empty() || id.len() > 128 {
                return Err(err("connector_id", "must be 1 to 128 bytes".into()));
            }
            connector.connector_id = id.clone();
        }
        connector.tunnels = file.services.iter().map(|(name, e)| (name.clone(), e.target())).collect();
        if let Some(addr) = file.local_api {
            if !addr.ip().is_loopback() {
                return Err(err(
                    "local_api",
                    format!("{addr} is not a loopback address: the local API takes no token (use 127.0.0.1:PORT)"),
                ));
            }
        }
        Ok(ConnectConfig { file, connector })
    }
}

fn warn_if_world_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o004 != 0 {
            eprintln!("ucmrc connect: warning: {} is readable by every user; chmod 600 it", path.display());
        }
    }
}

/// Runs the connector until SIGTERM or SIGINT.
pub fn run(cfg: ConnectConfig) -> Result<(), String> {
    crate::daemon::init_logging(&cfg.file.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::daemon::control_workers())
        .thread_name("ucmrc-connect")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let connector = Connector::start(cfg.connector.clone()).map_err(|e| e.to_string())?;
        let handle = connector.handle();
        let local_api = match cfg.file.local_api {
            Some(addr) => Some(local_api::serve(addr, handle.clone()).await?),
            None => None,
        };
        println!(
            "ucmrc connect {}: tenant {} to {} (server name {}), services: {}",
            env!("CARGO_PKG_VERSION"),
            cfg.connector.tenant,
            cfg.connector.relay,
            cfg.connector.server_name,
            if cfg.connector.tunnels.is_empty() {
                "none".to_string()
            } else {
                cfg.file.services.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        );
        if let Some(addr) = local_api {
            println!("local API on http://{addr} (POST /v1/turn/credentials)");
        }
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut status = tokio::time::interval(Duration::from_millis(200));
        let mut was_connected = false;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = status.tick() => {
                    let s = handle.status();
                    if s.connected != was_connected {
                        was_connected = s.connected;
                        if s.connected {
                            let relay = s.relay.clone().unwrap_or_else(|| cfg.connector.relay.clone());
                            println!("connected to {relay} (connect #{})", s.connects);
                        } else {
                            println!("disconnected: {}", s.last_error.unwrap_or_default());
                        }
                    }
                }
            }
        }
        connector.stop().await;
        Ok::<(), String>(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("ucmrc-connect-test-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn a_valid_file_becomes_a_connector_config() {
        let d = dir();
        std::fs::write(d.join("acme.token"), "tok-123\n").expect("token");
        let text = format!(
            "relay = \"relay.example.net:7443\"\npinned_sha256 = \"{}\"\ntenant = \"acme\"\ntoken_file = \"acme.token\"\n[services]\nsip-tls = \"127.0.0.1:5061\"\nweb = {{ address = \"127.0.0.1:443\", proxy_protocol = true }}\n",
            "ab".repeat(32)
        );
        let c = ConnectConfig::parse("c.toml", &text, Some(&d)).expect("valid");
        assert_eq!(c.connector.server_name, "relay.example.net");
        assert_eq!(c.connector.token, "tok-123");
        assert_eq!(c.connector.tunnels["sip-tls"].addr, "127.0.0.1:5061".parse().expect("addr"));
        assert!(c.connector.tunnels["web"].proxy_protocol);
        assert!(c.connector.more_relays.is_empty());
        let more = text.replace("tenant =", "more_relays = [\"relay2.example.net:7443\"]\ntenant =");
        let c2 = ConnectConfig::parse("c.toml", &more, Some(&d)).expect("valid");
        assert_eq!(c2.connector.more_relays, ["relay2.example.net:7443"]);
        assert!(!format!("{:?}", c.connector).contains("tok-123"));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let d = dir();
        std::fs::write(d.join("t"), "x\n").expect("token");
        let base = "tenant = \"acme\"\ntoken_file = \"t\"\n";
        let cases = [
            (format!("{base}relay = \"nohost\"\npinned_sha256 = \"00\"\n"), "relay", Some(3)),
            (format!("{base}relay = \"r:1\"\nmore_relays = [\"r2\"]\n"), "more_relays", Some(4)),
            (format!("{base}relay = \"r:1\"\n"), "ca_file", None),
            (format!("{base}relay = \"r:1\"\npinned_sha256 = \"zz\"\n"), "pinned_sha256", Some(4)),
            (format!("{base}relay = \"r:1\"\nca_file = \"missing.pem\"\n"), "ca_file", Some(4)),
            (format!("{base}relay = \"r:1\"\npinned_sha256 = \"{}\"\nbogus = 1\n", "00".repeat(32)), "bogus", Some(5)),
            (
                format!(
                    "{base}relay = \"r:1\"\npinned_sha256 = \"{}\"\n[services]\nweb = \"nowhere\"\n",
                    "00".repeat(32)
                ),
                "services.web",
                Some(6),
            ),
            (
                format!(
                    "{base}relay = \"r:1\"\npinned_sha256 = \"{}\"\nlocal_api = \"0.0.0.0:7080\"\n",
                    "00".repeat(32)
                ),
                "local_api",
                Some(5),
            ),
        ];
        let missing = ConnectConfig::parse("c.toml", "tenant = \"acme\"\n", Some(&d)).expect_err("missing");
        assert_eq!(missing.key, "relay", "{missing}");
        for (text, key, line) in cases {
            let e = ConnectConfig::parse("c.toml", &text, Some(&d)).expect_err(key);
            assert_eq!((e.key.as_str(), e.line), (key, line), "{e}");
        }
        let e = ConnectConfig::parse(
            "c.toml",
            &format!(
                "tenant = \"acme\"\ntoken_file = \"absent\"\nrelay = \"r:1\"\npinned_sha256 = \"{}\"\n",
                "00".repeat(32)
            ),
            Some(&d),
        )
        .expect_err("token file");
        assert_eq!((e.key.as_str(), e.line), ("token_file", Some(2)), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }
}
