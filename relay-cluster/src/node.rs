//! A cluster node beside a relay: replicates the relay's sessions to Redis
//! while it holds the lease (active), keeps a warm copy and watches the
//! lease while it does not (standby), and takes over — lease, hook, every
//! session restored on its own ports — when the active stops renewing.
//!
//! Nothing here is on the packet path: the relay forwards whatever Redis
//! does. Changes are pulled from the relay's change journal every
//! `flush_interval` (or at once when a request waits to be acknowledged)
//! and written in fenced batches; while Redis is away they queue (bounded
//! by `max_pending`, past which the next write is a full
//! resynchronization). The phases live in their own modules: `standby`,
//! `takeover` and `active`.

use std::sync::Arc;
use std::time::Duration;

use relay_core::RelayHandle;
use tokio::sync::watch;

use crate::calls::{CallEngine, Calls};
use crate::commit::{Barrier, Commits};
use crate::gate::ServeGate;
use crate::lease::LeaseWatch;
use crate::record::{Codec, Version};
use crate::registrar::Registrar;
use crate::seal::Sealer;
use crate::store::{Holder, Keys, NodeInfo, Store, StoreError};
use crate::turn::{Turn, TurnEngine};
use crate::warm::{Applied, BadRecords};

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
    /// Seals every record with the cluster key.
    pub sealer: Sealer,
    /// Lease lifetime; the active renews every third of it and stops
    /// answering changes a tenth of it before it could expire unrenewed.
    /// The takeover gap after a crash is about this plus `poll_interval`
    /// plus two Redis round trips.
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
    /// Timeout of every Redis command; `None`: the lease lifetime (a
    /// command slower than that cannot decide anything about the lease,
    /// and anything faster is a slow Redis, not a dead one). Connecting
    /// may take four times this.
    pub redis_timeout: Option<Duration>,
    /// Acknowledge allocations and changes (admin API, control channel, ng
    /// offer/answer) only once they are in Redis (waiting at most two
    /// lease lifetimes, then refused with `not_replicated`); off: answered
    /// at once and written within `flush_interval` (a crash in between
    /// loses them).
    pub wait_for_replication: bool,
    /// Read records of format 1 (written before records were authenticated
    /// whole) — only for the hand-over of a rolling upgrade from such a
    /// release: anyone who can write to Redis can change them.
    pub accept_v1_records: bool,
    /// Run on becoming active (the program and its arguments), e.g. to move
    /// the service address; environment `UCMRC_CLUSTER_EPOCH`,
    /// `UCMRC_CLUSTER_NODE`, `UCMRC_CLUSTER_GROUP`. Not awaited: the
    /// takeover goes on while it runs; its outcome is logged.
    pub takeover_hook: Option<Vec<String>>,
    /// Run on stepping down after the lease was lost (another node serves
    /// now), e.g. to remove the service address; same environment, not
    /// awaited either.
    pub stepdown_hook: Option<Vec<String>>,
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
            redis_timeout: None,
            wait_for_replication: true,
            accept_v1_records: false,
            takeover_hook: None,
            stepdown_hook: None,
            advertise: String::new(),
        }
    }

    /// The Redis command timeout in effect.
    pub fn effective_redis_timeout(&self) -> Duration {
        self.redis_timeout.unwrap_or(self.lease_ttl)
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
    /// Holds the lease as far as it knows but could not renew it in time:
    /// answers no allocation or change (they could be lost to a standby
    /// taking over), forwards existing media, until a renewal succeeds
    /// (active again) or finds the lease taken (standby).
    Fenced,
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
            Role::Fenced => "fenced",
            Role::Stopped => "stopped",
        }
    }

    /// Every role, for metrics.
    pub const ALL: [Role; 5] = [Role::Starting, Role::Standby, Role::Active, Role::Fenced, Role::Stopped];
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
    /// TURN allocations taken over (on their relayed ports).
    pub turn_allocations: usize,
    /// From taking the lease to the last session resumed.
    pub took: Duration,
    /// Whether the warm copy was behind the last write and was read again
    /// whole before resuming.
    pub reloaded: bool,
}

/// The node's state, for metrics, health and the admin API (published by
/// the node: reading it never waits on Redis).
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
    /// TURN allocations in the warm copy (standby).
    pub warm_turn: usize,
    /// Replication rounds completed while active: each wrote every change
    /// made before it began (two more than seen earlier: everything up to
    /// then is in Redis).
    pub replication_rounds: u64,
    /// Records refused: malformed, sealed under an unknown key, edited or
    /// moved (they do not open), or of a refused format.
    pub bad_records: u64,
    /// Authentic records or deletions older than what this node applied
    /// (replayed by someone who can write to Redis), refused.
    pub rollbacks_refused: u64,
    /// Names in records this release does not know (a newer writer's),
    /// ignored.
    pub ignored_names: u64,
    /// Times this node took the lease.
    pub takeovers: u64,
    /// Times this node lost the lease while active.
    pub demotions: u64,
    /// Times this node stopped answering changes because its lease might
    /// have expired unrenewed.
    pub fences: u64,
    /// The last takeover.
    pub last_takeover: Option<TakeoverReport>,
    /// The newest write this node made (active) or applied (standby).
    pub last_write: Option<Version>,
    /// Every node registered in the cluster, as last read (every second).
    pub nodes: Vec<NodeInfo>,
}

/// A read-only view of a running node, for the admin API and metrics.
#[derive(Clone)]
pub struct ClusterView {
    status: watch::Receiver<ClusterStatus>,
    gate: Arc<ServeGate>,
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

    /// Whether this node serves now: it holds the lease, its takeover is
    /// done, and the lease is known valid.
    pub fn is_active(&self) -> bool {
        self.gate.serving()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's group.
    pub fn group(&self) -> &str {
        &self.group
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
    gate: Arc<ServeGate>,
    node_id: String,
    group: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("status", &*self.status.borrow()).finish_non_exhaustive()
    }
}

/// Longest lease accepted (its deadlines are added to the clock).
const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);

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
        Self::start_with_turn(config, relay, ng, None).await
    }

    /// [`start_with`](Self::start_with) and the TURN service `turn` (feature
    /// `turn`): its UDP allocations are replicated and taken over on their
    /// relayed ports, and it serves nothing while this node is a standby.
    pub async fn start_with_turn(
        config: ClusterConfig,
        relay: RelayHandle,
        ng: Option<CallEngine>,
        turn: Option<TurnEngine>,
    ) -> Result<Cluster, StoreError> {
        for (name, d) in [
            ("lease_ttl", config.lease_ttl),
            ("poll_interval", config.poll_interval),
            ("flush_interval", config.flush_interval),
            ("counters_interval", config.counters_interval),
            ("redis_timeout", config.effective_redis_timeout()),
        ] {
            if d < Duration::from_millis(3) || d > MAX_LEASE_TTL {
                return Err(StoreError::Config(name));
            }
        }
        let keys = Keys::new(&config.key_prefix, &config.group);
        let timeout = config.effective_redis_timeout();
        let store = Store::connect(&config.redis_url, keys.clone(), timeout).await?;
        let lease_store = Store::connect(&config.redis_url, keys, timeout).await?;
        let (status_tx, status) = watch::channel(ClusterStatus::default());
        let (stop, stop_rx) = watch::channel(None);
        let (node_id, group) = (config.node_id.clone(), config.group.clone());
        // Nothing is allocated here until this node holds the lease.
        let gate = Arc::new(ServeGate::new(relay.clone()));
        let commits = Commits::new(gate.clone(), config.lease_ttl.saturating_mul(2));
        relay.set_commit_barrier(
            config
                .wait_for_replication
                .then(|| Arc::new(Barrier(commits.clone())) as Arc<dyn relay_core::CommitBarrier>),
        );
        let calls = Calls(ng);
        #[cfg(feature = "turn")]
        if let Some(t) = &turn {
            t.follow_standby(relay.clone());
        }
        let turn = Turn(turn);
        let (config, status_tx) = (Arc::new(config), Arc::new(status_tx));
        let registrar =
            Registrar { store: store.clone(), relay: relay.clone(), config: config.clone(), status: status_tx.clone() };
        tokio::spawn(registrar.run(stop_rx.clone()));
        let node = Node {
            watch: LeaseWatch::new(config.lease_ttl, config.eager),
            codec: Codec::new(config.sealer.clone(), &config.group).accept_v1(config.accept_v1_records),
            call_tenant: calls.tenant(),
            config,
            relay,
            calls,
            turn,
            store,
            lease_store,
            status: status_tx,
            stop: stop_rx,
            gate: gate.clone(),
            commits,
            seq: 0,
            highest_epoch: 0,
            sessions_applied: Applied::default(),
            calls_applied: Applied::default(),
            turn_applied: Applied::default(),
            bad: BadRecords::default(),
        };
        let task = tokio::spawn(node.run());
        Ok(Cluster { status, stop, task: Some(task), gate, node_id, group })
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
            gate: self.gate.clone(),
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

/// Publishes an active node's role from its gate: `active` while it
/// serves, `fenced` while its lease might have lapsed. Decided inside the
/// status's lock, so the last writer always reflects the gate as it is.
pub(crate) fn publish_serving(status: &watch::Sender<ClusterStatus>, gate: &ServeGate) {
    status.send_if_modified(|s| {
        let role = if gate.serving() { Role::Active } else { Role::Fenced };
        let changed = matches!(s.role, Role::Active | Role::Fenced) && s.role != role;
        if changed {
            s.role = role;
        }
        changed
    });
}

/// Records in `status` whether Redis answered (`r` is a command's result).
pub(crate) fn note_redis<T>(status: &watch::Sender<ClusterStatus>, r: &Result<T, StoreError>) {
    let ok = !matches!(r, Err(StoreError::Redis(_) | StoreError::Timeout));
    status.send_modify(|s| {
        s.redis_up = ok;
        if !ok {
            s.redis_errors += 1;
        }
    });
}

/// How an active phase ended.
pub(crate) enum ActiveEnd {
    /// Another node holds the lease now.
    Lost,
    /// Asked to stop.
    Stop,
}

pub(crate) struct Node {
    pub(crate) config: Arc<ClusterConfig>,
    pub(crate) codec: Codec,
    pub(crate) relay: RelayHandle,
    pub(crate) calls: Calls,
    pub(crate) turn: Turn,
    /// The tenant the ng engine's call records are bound to.
    #[cfg_attr(not(feature = "ng"), allow(dead_code))]
    pub(crate) call_tenant: String,
    /// Replication, the warm copy and registration.
    pub(crate) store: Store,
    /// The lease: watched, taken and renewed on a connection of its own
    /// (kept warm by the standby's polls, so a takeover does not first
    /// connect).
    pub(crate) lease_store: Store,
    /// Shared with the lease keeper, which publishes fencing at once.
    pub(crate) status: Arc<watch::Sender<ClusterStatus>>,
    pub(crate) stop: watch::Receiver<Option<bool>>,
    pub(crate) gate: Arc<ServeGate>,
    pub(crate) commits: Arc<Commits>,
    pub(crate) watch: LeaseWatch,
    pub(crate) seq: u64,
    /// The highest lease epoch this node has seen: a lease it takes is
    /// above it even if Redis lost its counter.
    pub(crate) highest_epoch: u64,
    pub(crate) sessions_applied: Applied,
    pub(crate) calls_applied: Applied,
    pub(crate) turn_applied: Applied,
    pub(crate) bad: BadRecords,
}

impl Node {
    pub(crate) fn update(&self, f: impl FnOnce(&mut ClusterStatus)) {
        self.status.send_modify(f);
    }

    pub(crate) fn redis_result<T>(&self, r: &Result<T, StoreError>) {
        note_redis(&self.status, r);
    }

    pub(crate) fn stopping(&self) -> Option<bool> {
        *self.stop.borrow()
    }

    async fn run(mut self) {
        loop {
            let Some(taken) = self.standby().await else { break };
            let (holder, keeper) = self.take_over(taken).await;
            match self.active(&holder, keeper).await {
                ActiveEnd::Stop => break,
                ActiveEnd::Lost => {
                    tracing::warn!(epoch = holder.epoch, "lost the cluster lease: stepping down to standby");
                    self.step_down().await;
                }
            }
        }
        self.gate.set_ready(false);
        self.commits.end();
        self.update(|s| {
            s.role = Role::Stopped;
            s.epoch = None;
        });
    }

    /// Runs `hook` (not awaited; reaped off the runtime, its outcome
    /// logged) with the cluster's environment.
    pub(crate) fn run_hook(&self, what: &'static str, hook: &[String], epoch: u64) {
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
                std::thread::spawn(move || match c.wait() {
                    Ok(s) if s.success() => tracing::info!(hook = what, "cluster hook done"),
                    Ok(s) => tracing::error!(hook = what, status = %s, "cluster hook failed"),
                    Err(e) => tracing::error!(hook = what, error = %e, "cluster hook"),
                });
            }
            Err(e) => tracing::error!(hook = what, program = %program, error = %e, "cluster hook did not start"),
        }
    }

    /// Remembers an epoch seen (in the lease or a record).
    pub(crate) fn saw_epoch(&mut self, epoch: u64) {
        self.highest_epoch = self.highest_epoch.max(epoch);
    }
}
