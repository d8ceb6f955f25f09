//! What parsing alone cannot know: checks against this host (listener
//! clashes, privileged ports, CPUs) and warnings for risky settings.

use std::net::{IpAddr, SocketAddr};

use relay_core::LatchPolicy;

use super::errors::find_key_line;
use super::{Config, ConfigError};

impl Config {
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
        if let Some(c) = &self.cluster {
            if c.config.accept_v1_records {
                w.push("cluster.accept_v1_records is on: records of format 1 are not authenticated, anyone who can write to Redis can redirect calls through them; turn it off once the pair runs this release".into());
            }
            if !c.config.wait_for_replication {
                w.push("cluster.wait_for_replication is off: an allocation answered less than a replication round (20 ms) before a crash is lost".into());
            }
        }
        if let Some(t) = &self.turn {
            w.extend(super::turn::warnings(t));
        }
        if let Some((lo, hi)) = ephemeral_port_range() {
            if let Some(t) = self.turn.as_ref().filter(|t| t.ports.0 <= hi && t.ports.1 >= lo) {
                w.push(format!(
                    "the TURN range {}-{} overlaps the kernel's ephemeral ports {lo}-{hi}: outgoing connections can take relayed ports",
                    t.ports.0, t.ports.1
                ));
            }
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
