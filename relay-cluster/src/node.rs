//! A cluster node beside a relay: replicates the relay's sessions to Redis
//! while it holds the lease (active), keeps a warm copy and watches the
//! lease while it does not (standby), and takes over — lease, hook, every
//! session restored on its own ports — when the active stops renewing.
//!
//! Nothing here is on the packet path: the relay forwards whatever Redis
//! does. Changes are pulled from the relay's change journal every
//! `flush_interval` and written in fenced batches; while Redis is away they
//! queue (bounded by `max_pending`, past which the next write is a full
//! resynchronization), and the active keeps serving.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use relay_core::session::state::SessionState;
use relay_core::shard::RestoreClash;
use relay_core::{RelayError, RelayHandle, SessionId};
use tokio::sync::watch;

use crate::calls::{CallEngine, Calls};
use crate::keeper::{KeeperState, LeaseKeeper};
use crate::lease::{LeaseWatch, Observation};
use crate::record::{self, Version};
use crate::seal::Sealer;
use crate::store::{Batch, ChangeNote, Holder, Keys, NodeInfo, Store, StoreError, MAX_BATCH};

/// How a node takes part in a cluster group.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port/db`, `rediss://` (TLS) or
    /// `redis+unix:///path`.
    pub redis_url: String,
    /// Prefix of every key (several deployments may share one Redis).
    pub key_prefix: String,
    /// The group: the nodes that serve one service address (an active and
    /// its standbys).
    pub group: String,
    /// This node's id (unique in the cluster).
    pub node_id: String,
    /// Take a free lease at start without waiting (`role = "active"`);
    /// a standby waits for the lease to expire.
    pub eager: bool,
    /// Seals secrets with the cluster key.
    pub sealer: Sealer,
    /// Lease lifetime; the active renews every third of it. The takeover
    /// gap after a crash is at most about this plus `poll_interval`.
    pub lease_ttl: Duration,
    /// How often a standby looks at the lease.
    pub poll_interval: Duration,
    /// How often the active pulls the relay's changes and writes them.
    pub flush_interval: Duration,
    /// How often the active rewrites every session (their counters).
    pub counters_interval: Duration,
    /// Changes queued while Redis is away before the queue is dropped for a
    /// full resynchronization when Redis returns.
    pub max_pending: usize,
    /// Timeout of every Redis command.
    pub redis_timeout: Duration,
    /// Run on becoming active (the program and its arguments), e.g. to move
    /// the service address; environment `UCMRC_CLUSTER_EPOCH`,
    /// `UCMRC_CLUSTER_NODE`, `UCMRC_CLUSTER_GROUP`.
    pub takeover_hook: Option<Vec<String>>,
    /// The address this node is reached at, as registered for scale-out.
    pub advertise: String,
}

impl ClusterConfig {
    /// Defaults for everything but the URL, node id and key.
    pub fn new(redis_url: &str, node_id: &str, sealer: Sealer) -> Self {
        Self {
            redis_url: redis_url.to_string(),
            key_prefix: "ucmrc".into(),
            group: "default".into(),
            node_id: node_id.to_string(),
            eager: false,
            sealer,
            lease_ttl: Duration::from_millis(600),
            poll_interval: Duration::from_millis(50),
            flush_interval: Duration::from_millis(20),
            counters_interval: Duration::from_secs(5),
            max_pending: 200_000,
            redis_timeout: Duration::from_millis(300),
            takeover_hook: None,
            advertise: String::new(),
        }
    }
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Connecting and loading the warm copy.
    #[default]
    Starting,
    /// Watching the lease; serves nothing.
    Standby,
    /// Holds the lease and serves.
    Active,
    /// Stopped.
    Stopped,
}

impl Role {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Standby => "standby",
            Role::Active => "active",
            Role::Stopped => "stopped",
        }
    }
}

/// What the last takeover did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeoverReport {
    /// The epoch taken.
    pub epoch: u64,
    /// Sessions resumed.
    pub restored: usize,
    /// Sessions that could not be resumed (their reasons are logged).
    pub failed: usize,
    /// ng calls taken over.
    pub calls: usize,
    /// From taking the lease to the last session resumed.
    pub took: Duration,
}

/// The node's state, for metrics, health and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterStatus {
    /// This node's role.
    pub role: Role,
    /// This node's epoch while active.
    pub epoch: Option<u64>,
    /// The lease holder as last seen.
    pub holder: Option<Holder>,
    /// Whether the last Redis command succeeded.
    pub redis_up: bool,
    /// Redis commands that failed.
    pub redis_errors: u64,
    /// Changes waiting to be written.
    pub queue_depth: usize,
    /// Age of the oldest change not yet written (active).
    pub replication_lag: Duration,
    /// Full resynchronizations written.
    pub resyncs: u64,
    /// Sessions in the warm copy (standby).
    pub warm_sessions: usize,
    /// ng calls in the warm copy (standby).
    pub warm_calls: usize,
    /// Replication rounds completed while active: each wrote every change
    /// made before it began (two more than seen earlier: everything up to
    /// then is in Redis).
    pub replication_rounds: u64,
    /// Records that could not be read (malformed, wrong key).
    pub bad_records: u64,
    /// Times this node took the lease.
    pub takeovers: u64,
    /// Times this node lost the lease while active.
    pub demotions: u64,
    /// The last takeover.
    pub last_takeover: Option<TakeoverReport>,
    /// The newest write this node made (active) or applied (standby).
    pub last_write: Option<Version>,
}

/// A read-only view of a running node, for the admin API and metrics.
#[derive(Clone)]
pub struct ClusterView {
    status: watch::Receiver<ClusterStatus>,
    store: Store,
    node_id: String,
    group: String,
}

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView").field("node_id", &self.node_id).field("group", &self.group).finish()
    }
}

impl ClusterView {
    /// The node's current status.
    pub fn status(&self) -> ClusterStatus {
        self.status.borrow().clone()
    }

    /// Whether this node serves (holds the lease).
    pub fn is_active(&self) -> bool {
        self.status.borrow().role == Role::Active
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Every registered node of the cluster (all groups).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.store.clone().nodes().await
    }

    /// A receiver of status changes.
    pub fn subscribe(&self) -> watch::Receiver<ClusterStatus> {
        self.status.clone()
    }
}

/// A running cluster node; dropping it stops the node (without handing the
/// lease over).
pub struct Cluster {
    status: watch::Receiver<ClusterStatus>,
    stop: watch::Sender<Option<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
    store: Store,
    node_id: String,
    group: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("status", &*self.status.borrow()).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts the node beside `relay` (which must run with
    /// [`RelayConfig::journal`](relay_core::RelayConfig::journal) on) on
    /// the current tokio runtime.
    pub async fn start(config: ClusterConfig, relay: RelayHandle) -> Result<Cluster, StoreError> {
        Self::start_with(config, relay, None).await
    }

    /// Starts the node beside `relay` and the ng engine `ng` (whose
    /// [`NgConfig::journal`](relay_core::ng::NgConfig) must be on): the
    /// engine's calls are replicated and taken over with the sessions.
    pub async fn start_with(
        config: ClusterConfig,
        relay: RelayHandle,
        ng: Option<CallEngine>,
    ) -> Result<Cluster, StoreError> {
        for (name, d) in [
            ("lease_ttl", config.lease_ttl),
            ("poll_interval", config.poll_interval),
            ("flush_interval", config.flush_interval),
            ("counters_interval", config.counters_interval),
            ("redis_timeout", config.redis_timeout),
        ] {
            if d < Duration::from_millis(3) {
                return Err(StoreError::Config(name));
            }
        }
        let keys = Keys::new(&config.key_prefix, &config.group);
        let store = Store::connect(&config.redis_url, keys.clone(), config.redis_timeout).await?;
        let lease_store = Store::connect(&config.redis_url, keys, config.redis_timeout).await?;
        let (status_tx, status) = watch::channel(ClusterStatus::default());
        let (stop, stop_rx) = watch::channel(None);
        let (node_id, group) = (config.node_id.clone(), config.group.clone());
        // Nothing is allocated here until this node holds the lease.
        relay.set_standby(true);
        let node = Node {
            watch: LeaseWatch::new(config.lease_ttl, config.eager),
            config: Arc::new(config),
            relay,
            calls: Calls(ng),
            store: store.clone(),
            lease_store,
            status: status_tx,
            stop: stop_rx,
            seq: 0,
        };
        let task = tokio::spawn(node.run());
        Ok(Cluster { status, stop, task: Some(task), store, node_id, group })
    }

    /// The node's current status.
    pub fn status(&self) -> ClusterStatus {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `f`.
    pub async fn wait_for(&mut self, f: impl Fn(&ClusterStatus) -> bool) -> ClusterStatus {
        let r = self.status.wait_for(|s| f(s)).await.map(|s| s.clone());
        r.unwrap_or_else(|_| self.status())
    }

    /// A read-only view for the admin API and metrics.
    pub fn view(&self) -> ClusterView {
        ClusterView {
            status: self.status.clone(),
            store: self.store.clone(),
            node_id: self.node_id.clone(),
            group: self.group.clone(),
        }
    }

    /// Stops the node. An active node first writes what is queued and,
    /// with `hand_over`, gives the lease up so a standby takes over at once
    /// (call before stopping the relay: its sessions ending would otherwise
    /// be replicated as ended).
    pub async fn stop(mut self, hand_over: bool) {
        let _ = self.stop.send(Some(hand_over));
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// How long a takeover retries sessions whose ports do not bind yet.
const RESTORE_RETRY: Duration = Duration::from_secs(2);
/// How often it retries them.
const RESTORE_RETRY_EVERY: Duration = Duration::from_millis(20);
/// Restores in flight at once (a shard's command queue holds 1 024 by
/// default).
const RESTORE_WINDOW: usize = 256;

/// How an active phase ended.
enum ActiveEnd {
    /// Another node holds the lease now.
    Lost,
    /// Asked to stop.
    Stop,
}

struct Node {
    config: Arc<ClusterConfig>,
    relay: RelayHandle,
    calls: Calls,
    store: Store,
    /// A connection of its own for renewing the lease (see [`LeaseKeeper`]).
    lease_store: Store,
    status: watch::Sender<ClusterStatus>,
    stop: watch::Receiver<Option<bool>>,
    watch: LeaseWatch,
    seq: u64,
}

/// The standby's copy of the group's sessions.
#[derive(Default)]
struct WarmCopy {
    sessions: HashMap<String, (SessionState, Version, Instant)>,
    /// ng calls as stored (JSON).
    calls: HashMap<String, Vec<u8>>,
    last: Option<Version>,
}

/// What the active has yet to write: sessions (`None`: ended) and calls.
#[derive(Default)]
struct Pending {
    sessions: BTreeMap<SessionId, (Option<SessionState>, Instant)>,
    calls: BTreeMap<String, (Option<String>, Instant)>,
}

impl Pending {
    fn len(&self) -> usize {
        self.sessions.len() + self.calls.len()
    }
    fn clear(&mut self) {
        self.sessions.clear();
        self.calls.clear();
    }
    fn oldest(&self) -> Duration {
        let s = self.sessions.values().map(|(_, t)| t.elapsed());
        s.chain(self.calls.values().map(|(_, t)| t.elapsed())).max().unwrap_or_default()
    }
}

impl Node {
    fn update(&self, f: impl FnOnce(&mut ClusterStatus)) {
        self.status.send_modify(f);
    }

    fn redis_result<T>(&self, r: &Result<T, StoreError>) {
        let ok = !matches!(r, Err(StoreError::Redis(_) | StoreError::Timeout));
        self.update(|s| {
            s.redis_up = ok;
            if !ok {
                s.redis_errors += 1;
            }
        });
    }

    fn stopping(&self) -> Option<bool> {
        *self.stop.borrow()
    }

    async fn run(mut self) {
        loop {
            let Some((holder, warm)) = self.standby().await else { break };
            // Renewed from now on, however long the takeover takes.
            let keeper = LeaseKeeper::start(self.lease_store.clone(), holder.clone(), self.config.lease_ttl);
            self.take_over(&holder, warm).await;
            match self.active(&holder, keeper).await {
                ActiveEnd::Stop => break,
                ActiveEnd::Lost => {
                    tracing::warn!(epoch = holder.epoch, "lost the cluster lease: stepping down to standby");
                    self.step_down().await;
                }
            }
        }
        self.update(|s| {
            s.role = Role::Stopped;
            s.epoch = None;
        });
    }

    /// Standby: warm copy from Redis, lease watched; returns once this node
    /// holds the lease (with the warm copy), or `None` when stopped.
    async fn standby(&mut self) -> Option<(Holder, WarmCopy)> {
        let mut warm = WarmCopy::default();
        let mut sub: Option<redis::aio::PubSubStream> = None;
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut register = tokio::time::interval(Duration::from_secs(1));
        register.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop = self.stop.clone();
        loop {
            if self.stopping().is_some() {
                return None;
            }
            if sub.is_none() {
                // Bounded: a Redis that accepts connections but does not
                // answer must not stop the lease watch.
                let subscribed =
                    tokio::time::timeout(self.config.redis_timeout.saturating_mul(4), self.store.subscribe()).await;
                match subscribed.unwrap_or(Err(StoreError::Timeout)) {
                    Ok(ps) => {
                        // Subscribed first, then loaded: nothing written in
                        // between is missed.
                        sub = Some(ps.into_on_message());
                        if self.reload(&mut warm).await.is_err() {
                            sub = None;
                        }
                    }
                    Err(e) => {
                        self.redis_result::<()>(&Err(e));
                    }
                }
                self.update(|s| {
                    if s.role == Role::Starting || s.role == Role::Active {
                        s.role = Role::Standby;
                    }
                    s.warm_sessions = warm.sessions.len();
                    s.warm_calls = warm.calls.len();
                });
            }
            tokio::select! {
                msg = async { match sub.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                    match msg {
                        Some(m) => self.apply_note(&mut warm, m.get_payload_bytes()).await,
                        None => sub = None,
                    }
                }
                _ = poll.tick() => {
                    let obs = match self.store.observe().await {
                        Ok(v) => {
                            self.update(|s| { s.redis_up = true; s.holder = v.holder.clone(); });
                            Observation::Seen(v)
                        }
                        Err(e) => {
                            self.redis_result::<()>(&Err(e));
                            Observation::Unreachable
                        }
                    };
                    if self.watch.handle_observation(Instant::now(), &obs) {
                        let r = self.store.take_over(&self.config.node_id, self.config.lease_ttl).await;
                        self.redis_result(&r);
                        if let Ok(Some(holder)) = r {
                            return Some((holder, warm));
                        }
                    }
                }
                _ = register.tick() => self.register(Role::Standby).await,
                _ = stop.changed() => {}
            }
        }
    }

    /// Replaces the warm copy with everything in Redis.
    async fn reload(&mut self, warm: &mut WarmCopy) -> Result<(), ()> {
        let r = self.store.load_all().await;
        self.redis_result(&r);
        let all = r.map_err(|_| ())?;
        let r = self.store.load_calls().await;
        self.redis_result(&r);
        warm.calls = r.map_err(|_| ())?.into_iter().collect();
        let now = Instant::now();
        let now_ms = record::unix_ms_now();
        warm.sessions.clear();
        warm.last = None;
        let mut bad = 0;
        for (id, bytes) in all {
            match record::decode(&bytes, &self.config.sealer, &self.config.group, now_ms) {
                Ok(d) => {
                    warm.sessions.insert(id, (d.state, d.version, now));
                }
                Err(e) => {
                    bad += 1;
                    tracing::warn!(error = %e, "unreadable session record in redis");
                }
            }
        }
        self.update(|s| {
            s.bad_records += bad;
            s.warm_sessions = warm.sessions.len();
            s.warm_calls = warm.calls.len();
        });
        Ok(())
    }

    /// Applies one change note: reads the records it names.
    async fn apply_note(&mut self, warm: &mut WarmCopy, payload: &[u8]) {
        let Ok(note) = serde_json::from_slice::<ChangeNote>(payload) else { return };
        let v = Version { epoch: note.epoch, seq: note.seq };
        let gap = warm.last.is_some_and(|l| l.epoch == v.epoch && v.seq != l.seq + 1);
        warm.last = Some(v);
        if gap {
            let _ = self.reload(warm).await;
            return;
        }
        let r = self.store.get_many(&note.set).await;
        self.redis_result(&r);
        let Ok(records) = r else {
            let _ = self.reload(warm).await;
            return;
        };
        let (now, now_ms) = (Instant::now(), record::unix_ms_now());
        let mut bad = 0;
        for (id, rec) in note.set.iter().zip(records) {
            match rec.map(|b| record::decode(&b, &self.config.sealer, &self.config.group, now_ms)) {
                Some(Ok(d)) => {
                    let newer = warm.sessions.get(id).is_none_or(|(_, old, _)| d.version >= *old);
                    if newer {
                        warm.sessions.insert(id.clone(), (d.state, d.version, now));
                    }
                }
                Some(Err(e)) => {
                    bad += 1;
                    tracing::warn!(error = %e, "unreadable session record in redis");
                }
                None => {
                    warm.sessions.remove(id);
                }
            }
        }
        for id in &note.del {
            warm.sessions.remove(id);
        }
        if !note.calls_set.is_empty() {
            let r = self.store.get_calls(&note.calls_set).await;
            self.redis_result(&r);
            let Ok(calls) = r else {
                let _ = self.reload(warm).await;
                return;
            };
            for (id, c) in note.calls_set.iter().zip(calls) {
                match c {
                    Some(c) => warm.calls.insert(id.clone(), c),
                    None => warm.calls.remove(id),
                };
            }
        }
        for id in &note.calls_del {
            warm.calls.remove(id);
        }
        self.update(|s| {
            s.bad_records += bad;
            s.warm_sessions = warm.sessions.len();
            s.warm_calls = warm.calls.len();
            s.last_write = Some(v);
        });
    }

    /// Becomes active: runs the hook, resumes every warm session.
    async fn take_over(&mut self, holder: &Holder, warm: WarmCopy) {
        let started = Instant::now();
        let total = warm.sessions.len();
        tracing::warn!(epoch = holder.epoch, sessions = total, "took the cluster lease: taking over");
        if let Some(hook) = self.config.takeover_hook.clone() {
            self.run_hook(&hook, holder.epoch);
        }
        let mut todo: Vec<(SessionState, Instant)> = warm.sessions.into_values().map(|(s, _, at)| (s, at)).collect();
        let mut restored = 0;
        let retry_until = started + RESTORE_RETRY;
        loop {
            let mut retry = Vec::new();
            // A window at a time: the shards' command queues are bounded.
            while !todo.is_empty() {
                let window: Vec<_> = todo.drain(..todo.len().min(RESTORE_WINDOW)).collect();
                let pending: Vec<_> = window
                    .into_iter()
                    .map(|(state, arrived)| (self.relay.restore(state.clone().aged(arrived.elapsed())), state, arrived))
                    .collect();
                for (p, state, arrived) in pending {
                    match p.await {
                        Ok(_) => restored += 1,
                        // A port still held by a process that just died on
                        // this host (an io_uring ring is torn down
                        // asynchronously), or a shard's queue full of other
                        // work: try again shortly.
                        Err(RelayError::RestoreConflict(RestoreClash::BindFailed) | RelayError::Busy)
                            if Instant::now() < retry_until =>
                        {
                            retry.push((state, arrived));
                        }
                        Err(e) => tracing::warn!(session = %state.id, error = %e, "session not resumed"),
                    }
                }
            }
            todo = retry;
            if todo.is_empty() {
                break;
            }
            tokio::time::sleep(RESTORE_RETRY_EVERY).await;
        }
        let failed = total - restored;
        let stored_calls: Vec<Vec<u8>> = warm.calls.into_values().collect();
        let calls = stored_calls.len();
        let calls_restored = self.calls.restore(stored_calls).await;
        if calls_restored < calls {
            tracing::warn!(calls, calls_restored, "some ng calls were not taken over");
        }
        self.relay.set_standby(false);
        // The kernel fast path follows the service address here (the hook
        // may still be moving it: the active looks again every second).
        self.relay.attach_fast_path();
        let report =
            TakeoverReport { epoch: holder.epoch, restored, failed, calls: calls_restored, took: started.elapsed() };
        tracing::warn!(?report, "takeover done");
        self.update(|s| {
            s.role = Role::Active;
            s.epoch = Some(holder.epoch);
            s.holder = Some(holder.clone());
            s.takeovers += 1;
            s.warm_sessions = 0;
            s.warm_calls = 0;
            s.last_takeover = Some(report);
        });
    }

    fn run_hook(&self, hook: &[String], epoch: u64) {
        let Some((program, args)) = hook.split_first() else { return };
        let child = std::process::Command::new(program)
            .args(args)
            .env("UCMRC_CLUSTER_EPOCH", epoch.to_string())
            .env("UCMRC_CLUSTER_NODE", &self.config.node_id)
            .env("UCMRC_CLUSTER_GROUP", &self.config.group)
            .stdin(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(mut c) => {
                // Reaped off the async runtime; its outcome is logged.
                std::thread::spawn(move || match c.wait() {
                    Ok(s) if s.success() => tracing::info!("takeover hook done"),
                    Ok(s) => tracing::error!(status = %s, "takeover hook failed"),
                    Err(e) => tracing::error!(error = %e, "takeover hook"),
                });
            }
            Err(e) => tracing::error!(program = %program, error = %e, "takeover hook did not start"),
        }
    }

    /// Active: replicates while `keeper` renews the lease; returns when the
    /// lease is lost or the node is asked to stop.
    async fn active(&mut self, holder: &Holder, mut keeper: LeaseKeeper) -> ActiveEnd {
        let mut pending = Pending::default();
        let mut resync = true;
        let mut seen = KeeperState { redis_up: true, ..KeeperState::default() };
        let mut flush = tokio::time::interval(self.config.flush_interval);
        let mut counters = tokio::time::interval(self.config.counters_interval);
        let mut register = tokio::time::interval(Duration::from_secs(1));
        for t in [&mut flush, &mut counters, &mut register] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                st = keeper.changed() => {
                    let failed = st.failures - seen.failures;
                    self.update(|s| {
                        s.redis_up = st.redis_up;
                        s.redis_errors += failed;
                    });
                    if st.reacquired > seen.reacquired {
                        tracing::warn!(epoch = holder.epoch, "lease re-acquired after redis lost it: resynchronizing");
                        resync = true;
                    }
                    seen = st;
                    if st.lost {
                        return ActiveEnd::Lost;
                    }
                }
                _ = flush.tick() => {
                    if let Err(StoreError::Fenced) = self.flush(holder, &mut pending, &mut resync).await {
                        return ActiveEnd::Lost;
                    }
                }
                _ = counters.tick() => self.queue_everything(&mut pending).await,
                _ = register.tick() => {
                    self.relay.attach_fast_path();
                    self.register(Role::Active).await;
                }
                _ = stop.changed() => break,
            }
        }
        let hand_over = self.stopping().unwrap_or(false);
        let _ = self.flush(holder, &mut pending, &mut resync).await;
        // No renewal may follow the release (it would take the lease back).
        keeper.stop().await;
        if hand_over {
            let r = self.store.release(holder).await;
            self.redis_result(&r);
        }
        ActiveEnd::Stop
    }

    /// Pulls the relay's (and the ng engine's) changes and writes what is
    /// pending.
    async fn flush(&mut self, holder: &Holder, pending: &mut Pending, resync: &mut bool) -> Result<(), StoreError> {
        let now = Instant::now();
        loop {
            let Ok(c) = self.relay.changes(10_000).await else { break };
            for s in c.changed {
                pending.sessions.insert(s.id, (Some(s), now));
            }
            for id in c.ended {
                pending.sessions.insert(id, (None, now));
            }
            *resync |= c.overflowed;
            if !c.more {
                break;
            }
        }
        let (set, ended) = self.calls.pull().await;
        for (id, c) in set {
            pending.calls.insert(id, (Some(c), now));
        }
        for id in ended {
            pending.calls.insert(id, (None, now));
        }
        if pending.len() > self.config.max_pending {
            tracing::warn!(queued = pending.len(), "replication queue full: a full resynchronization follows");
            pending.clear();
            *resync = true;
        }
        let r = if *resync { self.resync(holder, pending).await } else { self.write_pending(holder, pending).await };
        self.redis_result(&r);
        if r.is_ok() && *resync {
            *resync = false;
            self.update(|s| s.resyncs += 1);
        }
        let (lag, depth, done) = (pending.oldest(), pending.len(), r.is_ok());
        self.update(|s| {
            s.queue_depth = depth;
            s.replication_lag = lag;
            s.replication_rounds += u64::from(done);
        });
        r
    }

    /// Writes the pending changes in batches, oldest ids first.
    async fn write_pending(&mut self, holder: &Holder, pending: &mut Pending) -> Result<(), StoreError> {
        while pending.len() > 0 {
            let ids: Vec<SessionId> = pending.sessions.keys().take(MAX_BATCH).copied().collect();
            let call_ids: Vec<String> =
                pending.calls.keys().take(MAX_BATCH.saturating_sub(ids.len())).cloned().collect();
            let mut batch = Batch::default();
            self.seq += 1;
            let version = Version { epoch: holder.epoch, seq: self.seq };
            for id in &ids {
                match &pending.sessions[id].0 {
                    Some(s) => batch
                        .set
                        .push((id.to_string(), record::encode(s, version, &self.config.sealer, &self.config.group))),
                    None => batch.del.push(id.to_string()),
                }
            }
            for id in &call_ids {
                match &pending.calls[id].0 {
                    Some(c) => batch.calls_set.push((id.clone(), c.clone())),
                    None => batch.calls_del.push(id.clone()),
                }
            }
            if let Err(e) = self.write(holder, &batch, version).await {
                self.seq -= 1;
                return Err(e);
            }
            for id in ids {
                pending.sessions.remove(&id);
            }
            for id in call_ids {
                pending.calls.remove(&id);
            }
        }
        Ok(())
    }

    async fn write(&mut self, holder: &Holder, batch: &Batch, v: Version) -> Result<(), StoreError> {
        let ids = |pairs: &[(String, String)]| pairs.iter().map(|(id, _)| id.clone()).collect();
        let note = ChangeNote {
            epoch: v.epoch,
            seq: v.seq,
            set: ids(&batch.set),
            del: batch.del.clone(),
            calls_set: ids(&batch.calls_set),
            calls_del: batch.calls_del.clone(),
        };
        self.store.write(holder, batch, &note).await?;
        self.update(|s| s.last_write = Some(v));
        Ok(())
    }

    /// Queues every session and call this node has, as they are now, for
    /// writing (counters refreshed, or a full resynchronization).
    async fn queue_everything(&self, pending: &mut Pending) {
        let now = Instant::now();
        let mut after = None;
        while let Ok(page) = self.relay.export(after, 10_000).await {
            for s in page.states {
                pending.sessions.insert(s.id, (Some(s), now));
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        for (id, c) in self.calls.export().await {
            pending.calls.insert(id, (Some(c), now));
        }
    }

    /// Writes every session and call this node has and deletes every
    /// other record.
    async fn resync(&mut self, holder: &Holder, pending: &mut Pending) -> Result<(), StoreError> {
        pending.clear();
        self.queue_everything(pending).await;
        let live: std::collections::HashSet<String> =
            pending.sessions.keys().map(|id| id.to_string()).chain(pending.calls.keys().cloned()).collect();
        self.write_pending(holder, pending).await?;
        let stale: Vec<String> = self.store.ids().await?.into_iter().filter(|id| !live.contains(id)).collect();
        let stale_calls: Vec<String> =
            self.store.call_ids().await?.into_iter().filter(|id| !live.contains(id)).collect();
        for chunk in stale.chunks(MAX_BATCH) {
            self.seq += 1;
            let v = Version { epoch: holder.epoch, seq: self.seq };
            self.write(holder, &Batch { del: chunk.to_vec(), ..Batch::default() }, v).await?;
        }
        for chunk in stale_calls.chunks(MAX_BATCH) {
            self.seq += 1;
            let v = Version { epoch: holder.epoch, seq: self.seq };
            self.write(holder, &Batch { calls_del: chunk.to_vec(), ..Batch::default() }, v).await?;
        }
        Ok(())
    }

    /// After losing the lease: stop serving every session (the new active
    /// serves them now) without replicating their end.
    async fn step_down(&mut self) {
        self.relay.set_standby(true);
        let mut ids = Vec::new();
        let mut after = None;
        while let Ok(page) = self.relay.list(after, 10_000).await {
            ids.extend(page.sessions.iter().map(|s| s.id));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        for id in ids {
            let _ = self.relay.release(id).await;
        }
        // Their ends are not ours to write.
        let _ = self.relay.changes(usize::MAX).await;
        self.calls.forget();
        self.watch.reset();
        self.update(|s| {
            s.role = Role::Standby;
            s.epoch = None;
            s.demotions += 1;
            s.queue_depth = 0;
        });
    }

    async fn register(&mut self, role: Role) {
        let Ok(c) = self.relay.counters().await else { return };
        let info = NodeInfo {
            node: self.config.node_id.clone(),
            group: self.config.group.clone(),
            role: role.as_str().to_string(),
            address: self.config.advertise.clone(),
            sessions: c.total.sessions_active,
            ports_in_use: c.total.ports_in_use,
            ports_total: c.total.ports_total,
            updated_unix_ms: record::unix_ms_now(),
        };
        let r = self.store.register(&info, Duration::from_secs(5)).await;
        self.redis_result(&r);
    }
}
