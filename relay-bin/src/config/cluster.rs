//! `[cluster]`: redundancy through Redis (relay-cluster). Absent: a single
//! node, as before.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// `redis://host:6379/0`, `rediss://host:6380/0` (TLS),
    /// `redis+unix:///run/redis/redis.sock`; an ACL user may be given as
    /// `redis://user@host/0` with its password in `redis_password_file`.
    pub redis_url: String,
    /// A file holding the Redis password (ACL or `requirepass`).
    pub redis_password_file: Option<PathBuf>,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// The group of nodes serving one service address.
    pub group: String,
    /// `active`: takes a free lease at start; `standby`: waits for the
    /// active's lease to expire.
    pub role: String,
    /// A file with the 256-bit cluster key (64 hex digits), the same on
    /// every node: seals SRTP keys and ICE passwords in Redis.
    pub key_file: PathBuf,
    /// Older keys still accepted for reading while rolling a new one.
    pub previous_key_files: Vec<PathBuf>,
    /// Lease lifetime in milliseconds (the takeover gap after a crash is
    /// about this plus 50 ms plus two Redis round trips). The active stops
    /// answering changes a tenth of it before an unrenewed lease could
    /// expire.
    pub lease_ttl_ms: u64,
    /// Timeout of each Redis command in milliseconds; unset: the lease
    /// lifetime. Takeover works while Redis's round trip is under a
    /// quarter of the lease (docs/HA.md has the measurements).
    pub redis_timeout_ms: Option<u64>,
    /// Acknowledge allocations and changes (admin API, control channel, ng
    /// offer/answer) only once they are in Redis: a crash right after the
    /// answer loses nothing. Off: answered at once, written within 20 ms.
    pub wait_for_replication: bool,
    /// Read records written before records were authenticated (format 1,
    /// releases before this one): only for the hand-over of a rolling
    /// upgrade from such a release (docs/HA.md, "Upgrading a pair").
    pub accept_v1_records: bool,
    /// Rewrite every session's counters this often, seconds.
    pub counters_interval_secs: u64,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// Run on becoming active: program and arguments (e.g. to move the
    /// service address when keepalived does not). Not awaited.
    pub takeover_hook: Vec<String>,
    /// Run on stepping down after another node took the lease: program and
    /// arguments (e.g. to remove the service address). Not awaited.
    pub stepdown_hook: Vec<String>,
    /// The address this node is known by, shown in `GET /v1/cluster`.
    pub advertise: String,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            redis_password_file: None,
            node_id: String::new(),
            group: "default".into(),
            role: "standby".into(),
            key_file: PathBuf::new(),
            previous_key_files: Vec::new(),
            lease_ttl_ms: 600,
            redis_timeout_ms: None,
            wait_for_replication: true,
            accept_v1_records: false,
            counters_interval_secs: 5,
            key_prefix: "ucmrc".into(),
            takeover_hook: Vec::new(),
            stepdown_hook: Vec::new(),
            advertise: String::new(),
        }
    }
}

/// The validated cluster settings.
#[derive(Clone)]
pub struct ClusterSettings {
    /// What relay-cluster runs with.
    pub config: relay_cluster::ClusterConfig,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("node_id", &self.config.node_id)
            .field("group", &self.config.group)
            .field("eager", &self.config.eager)
            .field("lease_ttl", &self.config.lease_ttl)
            .finish_non_exhaustive()
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn read_key(key: &'static str, path: &std::path::Path) -> Result<relay_cluster::ClusterKey, (&'static str, String)> {
    let text = super::read_text(path).map_err(|e| (key, format!("cannot read {}: {e}", path.display())))?;
    relay_cluster::ClusterKey::from_hex(&text)
        .map_err(|_| (key, format!("{} must hold 64 hex digits (openssl rand -hex 32)", path.display())))
}

/// Validates `[cluster]`; errors are (key, reason).
pub(super) fn cluster_settings(c: &ClusterSection) -> Result<ClusterSettings, (&'static str, String)> {
    let mut url = c.redis_url.trim().to_string();
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if !matches!(scheme, "redis" | "rediss" | "redis+unix" | "unix") {
        return Err(("cluster.redis_url", "must be a redis://, rediss:// or redis+unix:// URL".into()));
    }
    if let Some(p) = &c.redis_password_file {
        let pw = super::read_text(p)
            .map_err(|e| ("cluster.redis_password_file", format!("cannot read {}: {e}", p.display())))?;
        let pw = pw.trim();
        if pw.is_empty() || !pw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(("cluster.redis_password_file", "must hold one line of visible ASCII".into()));
        }
        // Into the URL's userinfo, percent-encoded.
        let enc: String = pw
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (s, rest) = url.split_once("://").unwrap_or(("redis", ""));
        url = match rest.split_once('@') {
            Some((user, host)) if !user.contains(':') => format!("{s}://{user}:{enc}@{host}"),
            Some(_) => {
                return Err(("cluster.redis_url", "give the password in redis_password_file, not in the URL".into()))
            }
            None => format!("{s}://:{enc}@{rest}"),
        };
    } else if url
        .split_once("://")
        .and_then(|(_, r)| r.split('/').next().unwrap_or("").rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    {
        return Err(("cluster.redis_url", "give the password in redis_password_file, not in the URL".into()));
    }
    if !valid_name(&c.node_id) {
        return Err(("cluster.node_id", "required: 1 to 64 letters, digits, '-', '_' or '.'".into()));
    }
    if !valid_name(&c.group) {
        return Err(("cluster.group", "must be 1 to 64 letters, digits, '-', '_' or '.'".into()));
    }
    if !valid_name(&c.key_prefix) {
        return Err(("cluster.key_prefix", "must be 1 to 64 letters, digits, '-', '_' or '.'".into()));
    }
    let eager = match c.role.as_str() {
        "active" => true,
        "standby" => false,
        other => return Err(("cluster.role", format!("{other:?} is not one of active, standby"))),
    };
    if !(200..=10_000).contains(&c.lease_ttl_ms) {
        return Err(("cluster.lease_ttl_ms", "must be 200 to 10000".into()));
    }
    if c.redis_timeout_ms.is_some_and(|t| !(10..=60_000).contains(&t)) {
        return Err(("cluster.redis_timeout_ms", "must be 10 to 60000".into()));
    }
    if !(1..=3600).contains(&c.counters_interval_secs) {
        return Err(("cluster.counters_interval_secs", "must be 1 to 3600".into()));
    }
    if c.key_file.as_os_str().is_empty() {
        return Err((
            "cluster.key_file",
            "required: the cluster key seals secrets in Redis (openssl rand -hex 32)".into(),
        ));
    }
    let current = read_key("cluster.key_file", &c.key_file)?;
    let mut previous = Vec::new();
    for p in &c.previous_key_files {
        previous.push(read_key("cluster.previous_key_files", p)?);
    }
    let mut config = relay_cluster::ClusterConfig::new(&url, &c.node_id, relay_cluster::Sealer::new(current, previous));
    config.group = c.group.clone();
    config.key_prefix = c.key_prefix.clone();
    config.eager = eager;
    config.lease_ttl = Duration::from_millis(c.lease_ttl_ms);
    config.counters_interval = Duration::from_secs(c.counters_interval_secs);
    config.redis_timeout = c.redis_timeout_ms.map(Duration::from_millis);
    config.wait_for_replication = c.wait_for_replication;
    config.accept_v1_records = c.accept_v1_records;
    config.takeover_hook = (!c.takeover_hook.is_empty()).then(|| c.takeover_hook.clone());
    config.stepdown_hook = (!c.stepdown_hook.is_empty()).then(|| c.stepdown_hook.clone());
    config.advertise = c.advertise.clone();
    Ok(ClusterSettings { config })
}
