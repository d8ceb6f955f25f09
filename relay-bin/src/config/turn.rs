//! `[turn]` and `[[turn.realms]]`: the TURN server for browsers and Wave
//! clients; defaults from relay-core's [`TurnLimits`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;

use relay_core::turn::auth::RestSecrets;
use relay_core::turn::{PeerNet, Realm, RelayAddress, StaticUser, TurnLimits};
use serde::{Deserialize, Serialize};

use super::FileConfig;

/// `[turn]` (absent: no TURN server).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TurnSection {
    /// UDP listeners (e.g. `0.0.0.0:3478`).
    pub listen: Vec<SocketAddr>,
    /// TCP listeners (e.g. `0.0.0.0:3478`).
    pub tcp_listen: Vec<SocketAddr>,
    /// TLS listeners (e.g. `0.0.0.0:5349`); need `tls_cert` and `tls_key`.
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for TURN over TLS.
    pub tls_cert: PathBuf,
    /// PEM private key for TURN over TLS.
    pub tls_key: PathBuf,
    /// Names a TLS ClientHello on a tunnel listener (port 443) may carry to
    /// be answered by TURN instead of passed through to a PBX (ALPN
    /// `stun.turn`, RFC 7443, always is). Needs `tls_cert` and `tls_key`.
    pub server_names: Vec<String>,
    /// IPv4 address relayed sockets bind to (default: `[relay] bind_ip`
    /// when it is IPv4).
    pub relay_ip: Option<IpAddr>,
    /// IPv4 address clients are told (behind a 1:1 NAT); default `relay_ip`.
    pub advertised_ip: Option<IpAddr>,
    /// IPv6 address relayed sockets bind to (absent: IPv6 allocations are
    /// refused with 440).
    pub relay_ipv6: Option<IpAddr>,
    /// IPv6 address clients are told; default `relay_ipv6`.
    pub advertised_ipv6: Option<IpAddr>,
    /// First relayed port.
    pub port_min: u16,
    /// Last relayed port (must not overlap `[relay]`'s media range).
    pub port_max: u16,
    /// Lifetime granted when a client asks for less, seconds.
    pub default_lifetime_secs: u64,
    /// Longest lifetime granted, seconds.
    pub max_lifetime_secs: u64,
    /// Allocations one user may hold at once.
    pub allocations_per_user: usize,
    /// Permissions per allocation.
    pub permissions_per_allocation: usize,
    /// Channels per allocation.
    pub channels_per_allocation: usize,
    /// Peer connections per TCP allocation (RFC 6062).
    pub connections_per_allocation: usize,
    /// Bytes per second one allocation may relay (both ways together).
    pub bytes_per_second: u64,
    /// Bytes answered to a stranger's address prefix beyond what it sent.
    pub stranger_burst_bytes: u64,
    /// The TURN URIs (`turn:`/`turns:`, RFC 7065) given with credentials
    /// a connector asks for (default: one per listener, from the
    /// advertised addresses and the first server name).
    pub uris: Vec<String>,
    /// One realm per tenant; the first is the one strangers are told.
    pub realms: Vec<TurnRealmSection>,
}

impl Default for TurnSection {
    fn default() -> Self {
        let d = TurnLimits::default();
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 3478))],
            tcp_listen: Vec::new(),
            tls_listen: Vec::new(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            server_names: Vec::new(),
            relay_ip: None,
            advertised_ip: None,
            relay_ipv6: None,
            advertised_ipv6: None,
            port_min: 20000,
            port_max: 29999,
            default_lifetime_secs: d.default_lifetime.as_secs(),
            max_lifetime_secs: d.max_lifetime.as_secs(),
            allocations_per_user: d.allocations_per_user,
            permissions_per_allocation: d.permissions_per_allocation,
            channels_per_allocation: d.channels_per_allocation,
            connections_per_allocation: d.connections_per_allocation,
            bytes_per_second: d.bytes_per_second,
            stranger_burst_bytes: d.stranger_burst_bytes,
            uris: Vec::new(),
            realms: Vec::new(),
        }
    }
}

/// `[[turn.realms]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TurnRealmSection {
    /// The REALM clients are told.
    pub name: String,
    /// The tenant its allocations count against (one relayed port each).
    pub tenant: String,
    /// Files holding the TURN REST scheme's shared secret, newest first
    /// (several during a rotation); credentials are issued with the first.
    #[serde(default)]
    pub secret_files: Vec<PathBuf>,
    /// Static users, stored as their long-term keys.
    #[serde(default)]
    pub users: Vec<TurnUserSection>,
    /// Internal addresses its clients may reach anyway (its PBX), as
    /// `a.b.c.d`, `a.b.c.d/n` or IPv6 with an optional prefix.
    #[serde(default)]
    pub allow_peers: Vec<String>,
}

/// `[[turn.realms.users]]`: a user as keys, never a password.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TurnUserSection {
    /// Username.
    pub name: String,
    /// MD5(name:realm:password) in hex, as `turnadmin -k` prints it.
    pub key_md5: String,
    /// SHA-256(name:realm:password) in hex (absent: SHA-256 integrity is
    /// refused for this user).
    #[serde(default)]
    pub key_sha256: Option<String>,
}

/// The validated TURN settings.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// UDP listeners.
    pub listen: Vec<SocketAddr>,
    /// TCP listeners.
    pub tcp_listen: Vec<SocketAddr>,
    /// TLS listeners.
    pub tls_listen: Vec<SocketAddr>,
    /// The certificate for TLS (when TLS is served), read and checked.
    pub tls_key: Option<Arc<CertifiedKey>>,
    /// Names a tunnel listener hands to TURN (lowercase).
    pub server_names: Vec<String>,
    /// Realms with their secrets read.
    pub realms: Vec<Realm>,
    /// IPv4 relayed addresses.
    pub relay_v4: Option<RelayAddress>,
    /// IPv6 relayed addresses.
    pub relay_v6: Option<RelayAddress>,
    /// Relayed port range.
    pub ports: (u16, u16),
    /// Limits.
    pub limits: TurnLimits,
    /// Configured URIs (empty: derived from the listeners).
    pub uris: Vec<String>,
}

/// Validates `[turn]`; errors are (key, reason).
pub(super) fn turn_config(t: &TurnSection, file: &FileConfig) -> Result<TurnConfig, (String, String)> {
    let bad = |key: &str, m: String| (format!("turn.{key}"), m);
    if t.listen.is_empty() && t.tcp_listen.is_empty() && t.tls_listen.is_empty() && t.server_names.is_empty() {
        return Err(bad("listen", "add a listener (e.g. listen = [\"0.0.0.0:3478\"])".into()));
    }
    let tls_key = tls_key(t)?;
    if t.port_min == 0 || t.port_min > t.port_max {
        return Err(bad("port_min", format!("the range {}-{} is empty", t.port_min, t.port_max)));
    }
    let media = (file.relay.port_min, file.relay.port_max);
    if t.port_min <= media.1 && t.port_max >= media.0 {
        return Err(bad(
            "port_min",
            format!("the range {}-{} overlaps [relay]'s media range {}-{}", t.port_min, t.port_max, media.0, media.1),
        ));
    }
    let relay_v4 = match t.relay_ip.or(file.relay.bind_ip.is_ipv4().then_some(file.relay.bind_ip)) {
        Some(ip) if ip.is_ipv4() => Some(relay_address(ip, t.advertised_ip, "relay_ip", "advertised_ip")?),
        Some(ip) => return Err(bad("relay_ip", format!("{ip} is not an IPv4 address"))),
        None => None,
    };
    let relay_v6 = match t.relay_ipv6 {
        Some(ip) if ip.is_ipv6() => Some(relay_address(ip, t.advertised_ipv6, "relay_ipv6", "advertised_ipv6")?),
        Some(ip) => return Err(bad("relay_ipv6", format!("{ip} is not an IPv6 address"))),
        None => None,
    };
    if relay_v4.is_none() && relay_v6.is_none() {
        return Err(bad("relay_ip", "set relay_ip or relay_ipv6".into()));
    }
    if t.realms.is_empty() {
        return Err(bad("realms", "add at least one [[turn.realms]] (name, tenant, secret_files or users)".into()));
    }
    let realms = t.realms.iter().map(realm).collect::<Result<Vec<_>, _>>()?;
    if t.default_lifetime_secs == 0 || t.max_lifetime_secs < t.default_lifetime_secs || t.max_lifetime_secs > 86_400 {
        return Err(bad("max_lifetime_secs", "need 0 < default_lifetime_secs ≤ max_lifetime_secs ≤ 86400".into()));
    }
    let limits = TurnLimits {
        default_lifetime: Duration::from_secs(t.default_lifetime_secs),
        max_lifetime: Duration::from_secs(t.max_lifetime_secs),
        allocations_per_user: t.allocations_per_user,
        permissions_per_allocation: t.permissions_per_allocation,
        channels_per_allocation: t.channels_per_allocation.min(4096),
        connections_per_allocation: t.connections_per_allocation.min(1024),
        bytes_per_second: t.bytes_per_second,
        stranger_burst_bytes: t.stranger_burst_bytes,
        ..TurnLimits::default()
    };
    for uri in &t.uris {
        let scheme_ok = uri.starts_with("turn:") || uri.starts_with("turns:");
        if !scheme_ok || uri.len() > 255 || !uri.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("uris", format!("{uri:?} is not a turn: or turns: URI (RFC 7065)")));
        }
    }
    if t.uris.len() > 16 {
        return Err(bad("uris", format!("{} URIs; at most 16", t.uris.len())));
    }
    Ok(TurnConfig {
        uris: t.uris.clone(),
        listen: t.listen.clone(),
        tcp_listen: t.tcp_listen.clone(),
        tls_listen: t.tls_listen.clone(),
        tls_key,
        server_names: t.server_names.iter().map(|n| n.trim_end_matches('.').to_ascii_lowercase()).collect(),
        realms,
        relay_v4,
        relay_v6,
        ports: (t.port_min, t.port_max),
        limits,
    })
}

/// The TLS certificate, when TLS listeners or server names need one.
fn tls_key(t: &TurnSection) -> Result<Option<Arc<CertifiedKey>>, (String, String)> {
    if t.tls_listen.is_empty() && t.server_names.is_empty() {
        return Ok(None);
    }
    if t.tls_cert.as_os_str().is_empty() || t.tls_key.as_os_str().is_empty() {
        return Err(("turn.tls_cert".into(), "TURN over TLS needs tls_cert and tls_key (PEM)".into()));
    }
    let read = |key: &str, p: &PathBuf| {
        super::read_file(p).map_err(|e| (format!("turn.{key}"), format!("cannot read {}: {e}", p.display())))
    };
    let (cert, key) = (read("tls_cert", &t.tls_cert)?, read("tls_key", &t.tls_key)?);
    relay_core::tls::load_certified_key(&cert, &key).map(Some).map_err(|e| ("turn.tls_cert".into(), e.to_string()))
}

fn relay_address(
    bind: IpAddr,
    advertised: Option<IpAddr>,
    key: &str,
    advertised_key: &str,
) -> Result<RelayAddress, (String, String)> {
    if bind.is_multicast() {
        return Err((format!("turn.{key}"), format!("{bind} is a multicast address")));
    }
    let advertised = advertised.unwrap_or(bind);
    if advertised.is_unspecified() {
        return Err((format!("turn.{advertised_key}"), format!("set {advertised_key}: clients cannot be told {bind}")));
    }
    Ok(RelayAddress { bind, advertised })
}

fn realm(r: &TurnRealmSection) -> Result<Realm, (String, String)> {
    let bad = |key: &str, m: String| (format!("turn.realms.{key}"), m);
    if r.name.is_empty() || r.name.len() > 127 {
        return Err(bad("name", format!("realm {:?} must be 1 to 127 bytes", r.name)));
    }
    if r.tenant.is_empty() {
        return Err(bad("tenant", format!("realm {} needs a tenant", r.name)));
    }
    let mut secrets = Vec::new();
    for path in &r.secret_files {
        let text =
            super::read_text(path).map_err(|e| bad("secret_files", format!("cannot read {}: {e}", path.display())))?;
        let secret = text.trim();
        if secret.len() < 16 {
            return Err(bad("secret_files", format!("{}: a secret needs at least 16 characters", path.display())));
        }
        secrets.push(secret.as_bytes().to_vec());
    }
    let users = r.users.iter().map(|u| user(u, &r.name)).collect::<Result<Vec<_>, _>>()?;
    if secrets.is_empty() && users.is_empty() {
        return Err(bad("secret_files", format!("realm {} has neither secret_files nor users", r.name)));
    }
    let allow_peers = r
        .allow_peers
        .iter()
        .map(|p| {
            PeerNet::parse(p).ok_or_else(|| bad("allow_peers", format!("{p:?} is not an address or address/prefix")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Realm { name: r.name.clone(), tenant: r.tenant.clone(), rest: RestSecrets::new(secrets), users, allow_peers })
}

fn user(u: &TurnUserSection, realm: &str) -> Result<StaticUser, (String, String)> {
    let bad = |key: &str| {
        (
            format!("turn.realms.users.{key}"),
            format!("user {:?} in realm {realm}: not a hex key of the right length", u.name),
        )
    };
    let key_md5 = hex_key::<16>(&u.key_md5).ok_or_else(|| bad("key_md5"))?;
    let key_sha256 = u.key_sha256.as_deref().map(|k| hex_key::<32>(k).ok_or_else(|| bad("key_sha256"))).transpose()?;
    Ok(StaticUser { username: u.name.clone(), key_md5, key_sha256 })
}

fn hex_key<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Settings that work but are risky, one sentence each.
pub(super) fn warnings(t: &TurnConfig) -> Vec<String> {
    let mut w = Vec::new();
    for r in &t.realms {
        for net in &r.allow_peers {
            let wide = if net.ip.is_ipv4() { net.prefix < 24 } else { net.prefix < 64 };
            if wide {
                w.push(format!(
                    "turn realm {} allows peers in {}/{}: its clients may reach every host of that network; allow-list the PBX's address",
                    r.name, net.ip, net.prefix
                ));
            }
        }
        if r.rest.is_empty() && !r.users.is_empty() {
            w.push(format!(
                "turn realm {} has only static users: their credentials never expire; prefer secret_files (short-lived REST credentials)",
                r.name
            ));
        }
    }
    if t.limits.bytes_per_second == 0 {
        w.push("turn.bytes_per_second is 0: allocations relay nothing".into());
    }
    w
}
