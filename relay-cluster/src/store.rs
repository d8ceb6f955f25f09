//! Redis as the cluster's shared store: the keys, the Lua scripts that
//! make the lease and fenced writes atomic, and the reads a standby needs.
//!
//! Keys of cluster group `g` under prefix `p` (the `{g}` hash tag keeps a
//! group's keys in one Redis Cluster slot):
//! - `p:{g}:lease` — `"<node> <epoch>"`, with a short TTL, renewed by the
//!   active node;
//! - `p:{g}:epoch` — the last epoch handed out (only ever incremented);
//! - `p:{g}:sessions` — hash: session id → sealed record ([`crate::record`]);
//! - `p:{g}:calls` — hash: ng call-id (base64) → sealed call record;
//! - `p:{g}:turn` — hash: TURN allocation id (`v4-<port>`) → sealed record;
//! - `p:{g}:head` — `"<epoch> <seq>"` of the last write (a new active
//!   catches up to it before it serves);
//! - `p:{g}:changes` — pub/sub channel: one sealed change note per write
//!   ([`crate::record::ChangeNote`]);
//! - `p:nodes:<node>` — each node's registration (load, capacity, role),
//!   expiring unless refreshed.
//!
//! Every write is one script that first checks the lease still names the
//! writer and its epoch: an old active that lost the lease cannot
//! overwrite what the new one wrote (fencing in the store itself).

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Client, Cmd};
use serde::{Deserialize, Serialize};

use crate::record::Version;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The write was refused: the lease names another node or epoch.
    #[error("fenced: the lease is held by another node or epoch")]
    Fenced,
    /// The write was refused: nobody holds the lease (it expired while
    /// Redis was unreachable, or Redis lost it). Not final: renewing may
    /// re-acquire it.
    #[error("no lease: it expired or redis lost it")]
    NoLease,
    /// Redis did not answer in time.
    #[error("redis did not answer in time")]
    Timeout,
    /// A [`ClusterConfig`](crate::ClusterConfig) interval under 3 ms (the
    /// lease is renewed every third of its lifetime); names the field.
    #[error("cluster config: {0} must be at least 3 ms")]
    Config(&'static str),
    /// The configured URL is not a Redis URL.
    #[error("invalid redis url: {0}")]
    Url(String),
}

/// Who holds the lease: a node and the epoch it was granted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The node id.
    pub node: String,
    /// The lease epoch.
    pub epoch: u64,
}

impl Holder {
    fn encode(&self) -> String {
        format!("{} {}", self.node, self.epoch)
    }

    fn decode(s: &str) -> Option<Self> {
        let (node, epoch) = s.rsplit_once(' ')?;
        Some(Self { node: node.to_string(), epoch: epoch.parse().ok()? })
    }
}

/// What a look at the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The current holder, if the lease is held.
    pub holder: Option<Holder>,
    /// The last epoch handed out, if the store remembers one.
    pub epoch: Option<u64>,
}

/// What renewing the lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours (its TTL extended).
    Renewed,
    /// It had expired or the store lost it, nobody else took it, and it is
    /// ours again under the same epoch.
    Reacquired,
    /// Another node or epoch holds it: stop serving.
    Lost,
}

/// One fenced write: records to set and ids to delete.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// `(session id, record)` pairs.
    pub set: Vec<(String, String)>,
    /// Session ids to delete.
    pub del: Vec<String>,
    /// `(call-id, call state)` pairs.
    pub calls_set: Vec<(String, String)>,
    /// Call-ids to delete.
    pub calls_del: Vec<String>,
    /// `(TURN allocation id, record)` pairs.
    pub turn_set: Vec<(String, String)>,
    /// TURN allocation ids to delete.
    pub turn_del: Vec<String>,
}

impl Batch {
    /// Whether it writes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many entries it writes.
    pub fn len(&self) -> usize {
        self.set.len()
            + self.del.len()
            + self.calls_set.len()
            + self.calls_del.len()
            + self.turn_set.len()
            + self.turn_del.len()
    }
}

/// A node's registration, for scale-out and `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub node: String,
    /// Cluster group (the service its sessions belong to).
    pub group: String,
    /// `active` or `standby`.
    pub role: String,
    /// The address clients reach it at (control channel / ng / media).
    pub address: String,
    /// Sessions it serves.
    pub sessions: u64,
    /// Relay ports in use and in total.
    pub ports_in_use: u64,
    /// Relay ports it has.
    pub ports_total: u64,
    /// When it last registered (Unix ms).
    pub updated_unix_ms: u64,
}

const WRITE: &str = r"
local holder = redis.call('GET', KEYS[1])
if not holder then
  return redis.error_reply('NOLEASE the lease expired or was lost')
end
if holder ~= ARGV[1] then
  return redis.error_reply('FENCED lease held by another node or epoch')
end
local i = 10
for _ = 1, tonumber(ARGV[5]) do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, tonumber(ARGV[6]) do
  redis.call('HDEL', KEYS[2], ARGV[i])
  i = i + 1
end
for _ = 1, tonumber(ARGV[7]) do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, tonumber(ARGV[8]) do
  redis.call('HDEL', KEYS[3], ARGV[i])
  i = i + 1
end
for _ = 1, tonumber(ARGV[9]) do
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HDEL', KEYS[5], ARGV[i])
  i = i + 1
end
redis.call('SET', KEYS[4], ARGV[4])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
";

const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if v then return 0 end
local e = redis.call('GET', KEYS[2])
if (not e) or e == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  redis.call('SET', KEYS[2], ARGV[2])
  return 2
end
return 0
";

const TAKE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, false} end
local e = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if e <= floor then
  e = floor + 1
  redis.call('SET', KEYS[2], e)
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. e, 'PX', ARGV[2])
return {e, redis.call('GET', KEYS[3])}
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// `EVAL script keys…` (arguments follow). The script travels with every
/// call: one round trip always (`EVALSHA` costs two more whenever the
/// server's script cache is empty — after every Redis restart — which a
/// renewal cannot afford on a slow link).
fn eval(script: &str, keys: &[&String]) -> Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(script).arg(keys.len());
    for k in keys {
        c.arg(k.as_str());
    }
    c
}

fn encode_version(v: Version) -> String {
    format!("{} {}", v.epoch, v.seq)
}

fn decode_version(s: &str) -> Option<Version> {
    let (epoch, seq) = s.split_once(' ')?;
    Some(Version { epoch: epoch.parse().ok()?, seq: seq.parse().ok()? })
}

/// Key names of one group.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// The lease key.
    pub lease: String,
    /// The epoch counter.
    pub epoch: String,
    /// The sessions hash.
    pub sessions: String,
    /// The ng calls hash.
    pub calls: String,
    /// The TURN allocations hash.
    pub turn: String,
    /// The version of the last write.
    pub head: String,
    /// The change channel.
    pub changes: String,
}

impl Keys {
    /// The keys of group `group` under `prefix`.
    pub fn new(prefix: &str, group: &str) -> Self {
        let g = format!("{prefix}:{{{group}}}");
        Self {
            prefix: prefix.to_string(),
            lease: format!("{g}:lease"),
            epoch: format!("{g}:epoch"),
            sessions: format!("{g}:sessions"),
            calls: format!("{g}:calls"),
            turn: format!("{g}:turn"),
            head: format!("{g}:head"),
            changes: format!("{g}:changes"),
        }
    }

    fn node(&self, node: &str) -> String {
        format!("{}:nodes:{node}", self.prefix)
    }
}

/// A connection to the store (reconnecting by itself) and its scripts.
#[derive(Clone)]
pub struct Store {
    client: Client,
    conn: ConnectionManager,
    keys: Keys,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("keys", &self.keys).finish_non_exhaustive()
    }
}

/// Largest number of records in one write (one script call).
pub const MAX_BATCH: usize = 256;

impl Store {
    /// Connects to `url` (`redis://`, `rediss://` for TLS, `redis+unix://`;
    /// user and password in the URL for ACLs). Every command times out
    /// after `timeout`, so a stalled Redis never stalls a caller for long;
    /// setting up a connection (several round trips: TCP, TLS, AUTH,
    /// SELECT) may take four times that.
    pub async fn connect(url: &str, keys: Keys, timeout: Duration) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(|e| StoreError::Url(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.saturating_mul(4)))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self { client, conn, keys })
    }

    /// The group's keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Reads the lease and the epoch counter.
    pub async fn observe(&mut self) -> Result<LeaseView, StoreError> {
        let (lease, epoch): (Option<String>, Option<u64>) =
            redis::pipe().get(&self.keys.lease).get(&self.keys.epoch).query_async(&mut self.conn).await?;
        Ok(LeaseView { holder: lease.as_deref().and_then(Holder::decode), epoch })
    }

    /// Takes the lease if nobody holds it: the next epoch (above `floor`,
    /// the highest epoch this node has seen: epochs never go back even if
    /// Redis lost its counter) and the version of the last write, or
    /// `None`.
    pub async fn take_over(
        &mut self,
        node: &str,
        ttl: Duration,
        floor: u64,
    ) -> Result<Option<(Holder, Option<Version>)>, StoreError> {
        let (epoch, head): (u64, Option<String>) = eval(TAKE, &[&self.keys.lease, &self.keys.epoch, &self.keys.head])
            .arg(node)
            .arg(ttl.as_millis() as u64)
            .arg(floor)
            .query_async(&mut self.conn)
            .await?;
        let head = head.as_deref().and_then(decode_version);
        Ok((epoch > 0).then(|| (Holder { node: node.to_string(), epoch }, head)))
    }

    /// Renews the lease `holder` holds.
    pub async fn renew(&mut self, holder: &Holder, ttl: Duration) -> Result<Renewal, StoreError> {
        let r: u8 = eval(RENEW, &[&self.keys.lease, &self.keys.epoch])
            .arg(holder.encode())
            .arg(holder.epoch)
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.conn)
            .await?;
        Ok(match r {
            1 => Renewal::Renewed,
            2 => Renewal::Reacquired,
            _ => Renewal::Lost,
        })
    }

    /// Gives the lease up (a planned switchover); `false` if not held.
    pub async fn release(&mut self, holder: &Holder) -> Result<bool, StoreError> {
        let n: u8 = eval(RELEASE, &[&self.keys.lease]).arg(holder.encode()).query_async(&mut self.conn).await?;
        Ok(n == 1)
    }

    /// Writes a batch as `holder` (the write `version`), sets the head and
    /// publishes the sealed `note`, atomically; refused with
    /// [`StoreError::Fenced`] when another holds the lease and
    /// [`StoreError::NoLease`] when nobody does.
    pub async fn write(
        &mut self,
        holder: &Holder,
        batch: &Batch,
        note: &str,
        version: Version,
    ) -> Result<(), StoreError> {
        let keys = [&self.keys.lease, &self.keys.sessions, &self.keys.calls, &self.keys.head, &self.keys.turn];
        let mut inv = eval(WRITE, &keys);
        inv.arg(holder.encode()).arg(&self.keys.changes).arg(note).arg(encode_version(version));
        inv.arg(batch.set.len()).arg(batch.del.len()).arg(batch.calls_set.len());
        inv.arg(batch.calls_del.len()).arg(batch.turn_set.len());
        for (id, record) in &batch.set {
            inv.arg(id).arg(record);
        }
        for id in &batch.del {
            inv.arg(id);
        }
        for (id, call) in &batch.calls_set {
            inv.arg(id).arg(call);
        }
        for id in &batch.calls_del {
            inv.arg(id);
        }
        for (id, record) in &batch.turn_set {
            inv.arg(id).arg(record);
        }
        for id in &batch.turn_del {
            inv.arg(id);
        }
        match inv.query_async::<u64>(&mut self.conn).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("FENCED") => Err(StoreError::Fenced),
            Err(e) if e.code() == Some("NOLEASE") => Err(StoreError::NoLease),
            Err(e) => Err(e.into()),
        }
    }

    /// The version of the last write, if any.
    pub async fn head(&mut self) -> Result<Option<Version>, StoreError> {
        let head: Option<String> = self.conn.get(&self.keys.head).await?;
        Ok(head.as_deref().and_then(decode_version))
    }

    /// Every stored session record (`HSCAN`, page by page).
    pub async fn load_all(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let key = self.keys.sessions.clone();
        self.scan_hash(&key).await
    }

    /// Every stored call (`HSCAN`, page by page).
    pub async fn load_calls(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let key = self.keys.calls.clone();
        self.scan_hash(&key).await
    }

    async fn scan_hash(&mut self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<(String, Vec<u8>)>) =
                redis::cmd("HSCAN").arg(key).arg(cursor).arg("COUNT").arg(1000).query_async(&mut self.conn).await?;
            out.extend(page);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Every stored TURN allocation.
    pub async fn load_turn(&mut self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let key = self.keys.turn.clone();
        self.scan_hash(&key).await
    }

    /// Every stored TURN allocation id.
    pub async fn turn_ids(&mut self) -> Result<Vec<String>, StoreError> {
        let key = self.keys.turn.clone();
        self.hash_keys(&key).await
    }

    /// The stored TURN allocations of `ids` (`None` where deleted since).
    pub async fn get_turn(&mut self, ids: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let key = self.keys.turn.clone();
        self.hash_get(&key, ids).await
    }

    /// Every stored call-id.
    pub async fn call_ids(&mut self) -> Result<Vec<String>, StoreError> {
        let key = self.keys.calls.clone();
        self.hash_keys(&key).await
    }

    /// The stored calls of `ids` (`None` where deleted since).
    pub async fn get_calls(&mut self, ids: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let key = self.keys.calls.clone();
        self.hash_get(&key, ids).await
    }

    async fn hash_keys(&mut self, key: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.conn.hkeys(key).await?)
    }

    async fn hash_get(&mut self, key: &str, ids: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(redis::cmd("HMGET").arg(key).arg(ids).query_async(&mut self.conn).await?)
    }

    /// Every stored session id.
    pub async fn ids(&mut self) -> Result<Vec<String>, StoreError> {
        let key = self.keys.sessions.clone();
        self.hash_keys(&key).await
    }

    /// The records of `ids` (`None` where deleted since).
    pub async fn get_many(&mut self, ids: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let key = self.keys.sessions.clone();
        self.hash_get(&key, ids).await
    }

    /// A dedicated subscription to the group's change channel.
    pub async fn subscribe(&self) -> Result<redis::aio::PubSub, StoreError> {
        let mut ps = self.client.get_async_pubsub().await?;
        ps.subscribe(&self.keys.changes).await?;
        Ok(ps)
    }

    /// Registers (or refreshes) a node, expiring after `ttl` unless refreshed.
    pub async fn register(&mut self, info: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        let key = self.keys.node(&info.node);
        let json = serde_json::to_string(info).unwrap_or_default();
        let () = self.conn.pset_ex(key, json, ttl.as_millis() as u64).await?;
        Ok(())
    }

    /// Every registered node (all groups), by node id.
    pub async fn nodes(&mut self) -> Result<Vec<NodeInfo>, StoreError> {
        let pattern = format!("{}:nodes:*", self.keys.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.conn)
                .await?;
            keys.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut self.conn).await?;
        let mut nodes: Vec<NodeInfo> = values.iter().flatten().filter_map(|v| serde_json::from_str(v).ok()).collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }
}
