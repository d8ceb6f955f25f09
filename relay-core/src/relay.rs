//! Building, running and controlling a relay: configuration, the shard
//! threads, and the cloneable [`RelayHandle`] used from tokio or plain threads.
#![forbid(unsafe_code)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::io::{self, BackendKind, Envelope, Mailbox, MailboxError, ShardRun, SocketOptions};
use crate::peer::{OwnAddresses, OwnEndpoint, PeerPolicy};
use crate::quota::{QuotaExceeded, TenantLimit, TenantQuotas, DEFAULT_PORT_SHARE_PERCENT};
use crate::session::spec::{SessionDefaults, SessionSpec, SessionUpdate};
use crate::session::state::SessionState;
use crate::session::stats::ShardCounters;
use crate::session::{InvalidSpec, LegPorts, SessionId, SessionInfo};
use crate::shard::{AddressSlice, Changes, Command, Response, Shard, ShardConfig, ShardError};

/// One local address of an interface: where sockets bind and what goes
/// into SDP (rtpengine's `local!advertised`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// IP relay ports bind to (`::` binds dual-stack).
    pub bind: IpAddr,
    /// IP written into SDP for ports on `bind` (`None`: `bind` itself;
    /// required when `bind` is unspecified).
    pub advertised: Option<IpAddr>,
}

impl InterfaceAddress {
    /// The address SDP names.
    pub fn sdp_ip(&self) -> IpAddr {
        self.advertised.unwrap_or(self.bind)
    }
}

/// A named relay interface (rtpengine's `interface` / ng's `direction`):
/// one or more local addresses and the port range used on each. A session's
/// legs may sit on different interfaces (a PBX LAN and the internet), and
/// several addresses lift the 65 535-ports-per-IP ceiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    /// Name (1 to 64 visible ASCII characters), as ng's `direction` names it.
    pub name: String,
    /// Local addresses; a leg on this interface gets ports on the one with
    /// the most free ports.
    pub addresses: Vec<InterfaceAddress>,
    /// First relay port on each address.
    pub port_min: u16,
    /// Last relay port on each address (inclusive).
    pub port_max: u16,
}

/// Most interfaces a relay may have.
pub const MAX_INTERFACES: usize = 64;
/// Most addresses over all interfaces.
pub const MAX_ADDRESSES: usize = 1024;

/// Everything needed to start a relay. `Default` is a loopback-only relay on
/// ports 10000–19999 (below Linux's ephemeral ports, so local sockets never
/// collide with relay ports, and clear of ng's customary 22222) with one
/// worker per CPU.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// IP to bind relay ports on (`::` binds dual-stack).
    pub bind_ip: IpAddr,
    /// IP to put into SDP; required when `bind_ip` is unspecified.
    pub advertised_ip: Option<IpAddr>,
    /// First relay port.
    pub port_min: u16,
    /// Last relay port (inclusive).
    pub port_max: u16,
    /// Shard threads (0: one per available CPU).
    pub workers: usize,
    /// Pin shard thread *i* to CPU `cpus[i % len]` (empty: no pinning).
    pub pin_cpus: Vec<usize>,
    /// Datapath backend.
    pub backend: BackendKind,
    /// Socket options for relay ports.
    pub sockets: SocketOptions,
    /// Session defaults.
    pub defaults: SessionDefaults,
    /// Which remote addresses are allowed. Its `own` addresses should list
    /// every listener of the process (admin, ng, control, tunnels); the
    /// relay adds its media port range on its bind and advertised IPs.
    pub peer_policy: PeerPolicy,
    /// Sessions per tenant unless set per tenant (`None`: no session limit).
    pub tenant_max_sessions: Option<usize>,
    /// Share of the port range (percent, 1–100) one tenant may hold unless
    /// set per tenant; default [`DEFAULT_PORT_SHARE_PERCENT`] so that no
    /// tenant (ng included) can take every port.
    pub tenant_port_share_percent: u8,
    /// Queued control commands per shard before callers see `Busy`.
    pub command_queue: usize,
    /// Named interfaces. Empty: one interface named `default` made of
    /// `bind_ip`, `advertised_ip`, `port_min` and `port_max`.
    pub interfaces: Vec<InterfaceConfig>,
    /// Shard threads are named `{thread_name}-{index}` (Linux keeps the
    /// first 15 bytes): lets tools tell this relay's threads from others'.
    pub thread_name: String,
    /// Keep a change journal per shard for replication
    /// ([`RelayHandle::changes`], [`RelayHandle::export`]); off: nothing is
    /// recorded.
    pub journal: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertised_ip: None,
            port_min: 10000,
            port_max: 19999,
            workers: 0,
            pin_cpus: Vec::new(),
            backend: BackendKind::default(),
            sockets: SocketOptions::default(),
            defaults: SessionDefaults::default(),
            peer_policy: PeerPolicy::loopback_lab(),
            tenant_max_sessions: None,
            tenant_port_share_percent: DEFAULT_PORT_SHARE_PERCENT,
            command_queue: 1024,
            interfaces: Vec::new(),
            thread_name: "ucmrc-shard".into(),
            journal: false,
        }
    }
}

pub use crate::session::spec::InvalidConfig;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] InvalidConfig),
    /// A system call failed while setting up a shard.
    #[error("shard setup failed: {0}")]
    Io(#[from] std::io::Error),
    /// A shard's backend could not be set up.
    #[error("shard {index} could not start: {reason}")]
    Shard {
        /// Shard index.
        index: usize,
        /// Why.
        reason: String,
    },
    /// `datapath = "uring"` was asked for and io_uring is not usable here.
    #[error("io_uring datapath unavailable: {0}")]
    Datapath(String),
}

/// The datapath the relay runs and, when `auto` fell back, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathInfo {
    /// What was configured.
    pub configured: BackendKind,
    /// What runs (`Uring` or `Portable`).
    pub running: BackendKind,
    /// Why `auto` did not pick io_uring.
    pub fallback_reason: Option<String>,
    /// The kernel fast path (`ebpf`, or `auto` built with the feature): the
    /// interfaces it was attached to at start (none: loaded, waiting for a
    /// relay address to arrive, see [`RelayHandle::attach_fast_path`]), or
    /// why it is not running; `None` when not asked for (`uring`,
    /// `portable`, `auto` without the feature).
    pub fast_path: Option<Result<Vec<String>, String>>,
}

/// A shard thread that ended without being asked to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardFailure {
    /// Shard index.
    pub shard: usize,
    /// What ended it (a panic message or an I/O error).
    pub reason: String,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// No free ports in any shard.
    #[error("port range exhausted")]
    PortsExhausted,
    /// The tenant's session quota is full.
    #[error(transparent)]
    QuotaExceeded(#[from] QuotaExceeded),
    /// No such session.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// The spec or update is invalid.
    #[error(transparent)]
    InvalidSpec(#[from] InvalidSpec),
    /// A shard's command queue is full; retry later.
    #[error("relay busy")]
    Busy,
    /// The relay is draining and takes no new sessions.
    #[error("relay is draining")]
    Draining,
    /// The relay has stopped.
    #[error("relay stopped")]
    Stopped,
    /// The relay is a cluster standby: another node serves.
    #[error("relay is a cluster standby: another node serves")]
    Standby,
    /// The change could not be made durable in time (a cluster node whose
    /// store did not take it); an allocation was taken back.
    #[error("not stored in the cluster's shared store in time; retry")]
    NotReplicated,
    /// A session state cannot be restored here; the clash names what.
    #[error("cannot restore session: {0}")]
    RestoreConflict(crate::shard::RestoreClash),
}

impl RelayError {
    /// Its stable code, as the admin API and the control channel report it.
    pub fn code(&self) -> crate::codes::ErrorCode {
        use crate::codes::ErrorCode;
        use crate::session::SpecErrorKind;
        match self {
            RelayError::PortsExhausted => ErrorCode::PortsExhausted,
            RelayError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            RelayError::UnknownSession(_) => ErrorCode::UnknownSession,
            RelayError::InvalidSpec(s) => match s.kind {
                SpecErrorKind::AddressRefused => ErrorCode::ForbiddenAddress,
                SpecErrorKind::Invalid | SpecErrorKind::MissingCredentials => ErrorCode::InvalidSpec,
            },
            RelayError::Busy => ErrorCode::Busy,
            RelayError::Draining => ErrorCode::Draining,
            RelayError::Standby => ErrorCode::Standby,
            RelayError::NotReplicated => ErrorCode::NotReplicated,
            RelayError::Stopped => ErrorCode::Stopped,
            RelayError::RestoreConflict(_) => ErrorCode::RestoreConflict,
        }
    }
}

impl From<ShardError> for RelayError {
    fn from(e: ShardError) -> Self {
        match e {
            ShardError::PortsExhausted | ShardError::TableFull => RelayError::PortsExhausted,
            ShardError::UnknownSession(id) => RelayError::UnknownSession(id),
            ShardError::InvalidSpec(s) => RelayError::InvalidSpec(s),
            ShardError::RestoreConflict(r) => RelayError::RestoreConflict(r),
        }
    }
}

impl From<MailboxError> for RelayError {
    fn from(e: MailboxError) -> Self {
        match e {
            MailboxError::Full => RelayError::Busy,
            MailboxError::Closed => RelayError::Stopped,
        }
    }
}

/// Relay addresses of one leg, to put into SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegAddresses {
    /// RTP address (RTP and RTCP with rtcp-mux).
    pub rtp: SocketAddr,
    /// RTCP address, without rtcp-mux.
    pub rtcp: Option<SocketAddr>,
}

/// Every shard's part of a page, merged in id order and cut to `limit`;
/// the id to continue after when more follow.
fn page<T>(parts: Vec<Vec<T>>, limit: usize, id: impl Fn(&T) -> SessionId) -> (Vec<T>, Option<SessionId>) {
    let mut all: Vec<T> = parts.into_iter().flatten().collect();
    all.sort_by_key(&id);
    let more = all.len() > limit;
    all.truncate(limit);
    let next = if more { all.last().map(&id) } else { None };
    (all, next)
}

/// A page of exported session states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePage {
    /// States in id order.
    pub states: Vec<SessionState>,
    /// Pass as `after` for the next page; `None` at the end.
    pub next: Option<SessionId>,
}

/// A newly allocated session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatedSession {
    /// Session id.
    pub id: SessionId,
    /// Where the PBX must send (the PBX leg's relay ports).
    pub pbx: LegAddresses,
    /// Where the endpoint must send (the endpoint leg's relay ports).
    pub endpoint: LegAddresses,
}

/// Relay-wide counters: the sum over shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Sum of every shard.
    pub total: ShardCounters,
    /// Each shard's own counters, by shard index.
    pub shards: Vec<ShardCounters>,
}

/// A page of sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionPage {
    /// Sessions, ordered by id.
    pub sessions: Vec<SessionInfo>,
    /// Pass as `after` to get the next page; `None` at the end.
    pub next: Option<SessionId>,
}

/// The answer to a request, to `.wait()` for on a plain thread or `.await`
/// in async code.
#[must_use = "a pending request does nothing unless waited for"]
pub struct Pending<T> {
    inner: PendingInner<T>,
}

enum PendingInner<T> {
    Ready(Option<Result<T, RelayError>>),
    Waiting(oneshot::Receiver<Result<T, RelayError>>),
}

impl<T> Pending<T> {
    fn ready(r: Result<T, RelayError>) -> Self {
        Self { inner: PendingInner::Ready(Some(r)) }
    }

    /// Blocks the current thread until the answer arrives.
    ///
    /// Do not call this from inside an async runtime; `.await` instead.
    pub fn wait(self) -> Result<T, RelayError> {
        match self.inner {
            PendingInner::Ready(r) => r.unwrap_or(Err(RelayError::Stopped)),
            PendingInner::Waiting(rx) => rx.blocking_recv().unwrap_or(Err(RelayError::Stopped)),
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, RelayError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            PendingInner::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(RelayError::Stopped))),
            PendingInner::Waiting(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or(Err(RelayError::Stopped))),
        }
    }
}

impl<T> Unpin for Pending<T> {}

/// Ports counted in a shard's in-flight figure until dropped (when the
/// shard answers, or when the request is dropped unanswered).
struct InFlight {
    counter: Arc<AtomicUsize>,
    ports: usize,
}

impl InFlight {
    fn add(counter: &Arc<AtomicUsize>, ports: usize) -> Self {
        counter.fetch_add(ports, Ordering::Relaxed);
        Self { counter: counter.clone(), ports }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.ports, Ordering::Relaxed);
    }
}

struct Inner {
    mailboxes: Vec<Mailbox>,
    /// Ports asked of each shard by allocations it has not answered yet: a
    /// shard publishes its free ports only after it processed them, so a
    /// burst of allocations would otherwise all pick the same shard.
    ports_in_flight: Vec<Arc<AtomicUsize>>,
    quotas: Arc<TenantQuotas>,
    advertised_ip: IpAddr,
    /// The SDP address of each relay address ([`crate::shard::RelayPort::addr`]).
    sdp_ips: Vec<IpAddr>,
    /// Interface names, by index.
    interface_names: Vec<String>,
    /// The kernel fast path, when it runs.
    #[cfg_attr(not(feature = "ebpf"), allow(dead_code))]
    fast: SharedFastPath,
    /// Where the fast path may attach later (see [`RelayHandle::attach_fast_path`]).
    #[cfg_attr(not(feature = "ebpf"), allow(dead_code))]
    fast_targets: Option<FastPathTargets>,
    draining: AtomicBool,
    standby: AtomicBool,
    /// What makes a change durable before it is acknowledged (a cluster
    /// node), if anything.
    commit: std::sync::RwLock<Option<Arc<dyn CommitBarrier>>>,
    next_shard: AtomicUsize,
    backend: BackendKind,
    /// The relay's media ranges, added to every peer policy it is given.
    media_own: Vec<OwnEndpoint>,
    failures: Arc<tokio::sync::watch::Sender<Vec<ShardFailure>>>,
}

/// A future that resolves once a relay's changes are durable.
pub type CommitFuture = Pin<Box<dyn Future<Output = Result<(), RelayError>> + Send>>;

/// Makes a relay's changes durable before they are acknowledged. A cluster
/// node installs one ([`RelayHandle::set_commit_barrier`]) so that an
/// allocation the relay answers is already in the shared store: a crash
/// right after the answer loses nothing the client was told exists.
pub trait CommitBarrier: Send + Sync + 'static {
    /// Resolves once every change the relay made before this call is
    /// durable; [`RelayError::Standby`] when this node no longer serves,
    /// [`RelayError::NotReplicated`] when the store did not take it in
    /// time.
    fn commit(&self) -> CommitFuture;
}

/// A cloneable, `Send + Sync` handle to a running relay.
#[derive(Clone)]
pub struct RelayHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle").field("shards", &self.inner.mailboxes.len()).finish()
    }
}

/// A running relay: its shard threads and a handle. Dropping it stops it.
pub struct Relay {
    handle: RelayHandle,
    datapath: DatapathInfo,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("handle", &self.handle).finish()
    }
}

impl RelayConfig {
    /// The interfaces in use: [`interfaces`](Self::interfaces), or the one
    /// named `default` built from `bind_ip`, `advertised_ip` and the range.
    pub fn effective_interfaces(&self) -> Vec<InterfaceConfig> {
        if !self.interfaces.is_empty() {
            return self.interfaces.clone();
        }
        vec![InterfaceConfig {
            name: "default".into(),
            addresses: vec![InterfaceAddress { bind: self.bind_ip, advertised: self.advertised_ip }],
            port_min: self.port_min,
            port_max: self.port_max,
        }]
    }

    /// Checks the configuration and returns the effective worker count.
    pub fn validate(&self) -> Result<usize, InvalidConfig> {
        let bad = |field: &'static str, reason: String| Err(InvalidConfig { field, reason });
        let interfaces = self.effective_interfaces();
        let named = !self.interfaces.is_empty();
        let (range_field, addr_field) =
            if named { ("interfaces", "interfaces") } else { ("port_min", "advertised_ip") };
        if interfaces.len() > MAX_INTERFACES {
            return bad("interfaces", format!("at most {MAX_INTERFACES}"));
        }
        let mut smallest = usize::MAX;
        let mut seen: Vec<(IpAddr, u16, u16, &str)> = Vec::new();
        for (i, itf) in interfaces.iter().enumerate() {
            let name = &itf.name;
            if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return bad("interfaces", format!("interface name {name:?} must be 1 to 64 visible ASCII characters"));
            }
            if interfaces[..i].iter().any(|o| o.name == *name) {
                return bad("interfaces", format!("two interfaces are named {name:?}"));
            }
            if itf.port_min == 0 || itf.port_min > itf.port_max {
                let reason = "need 0 < port_min <= port_max".to_string();
                return if named { bad(range_field, format!("{name}: {reason}")) } else { bad("port_min", reason) };
            }
            let ports = usize::from(itf.port_max - itf.port_min) + 1;
            if ports < 4 {
                let reason = "the range needs at least 4 ports".to_string();
                return if named { bad(range_field, format!("{name}: {reason}")) } else { bad("port_max", reason) };
            }
            smallest = smallest.min(ports);
            if itf.addresses.is_empty() {
                return bad("interfaces", format!("{name}: needs at least one address"));
            }
            for a in &itf.addresses {
                if a.bind.is_unspecified() && a.advertised.is_none() {
                    let reason = "required when bind_ip is unspecified (0.0.0.0 or ::)".to_string();
                    return if named {
                        bad(addr_field, format!("{name}: an advertised address is {reason}"))
                    } else {
                        bad("advertised_ip", reason)
                    };
                }
                if a.advertised.is_some_and(|ip| ip.is_unspecified() || ip.is_multicast()) {
                    return bad(addr_field, "must be a unicast address".into());
                }
                // Two interfaces may share an IP only with disjoint ranges.
                for &(ip, lo, hi, other) in &seen {
                    let same = ip == a.bind
                        || (ip.is_unspecified() || a.bind.is_unspecified()) && ip.is_ipv4() == a.bind.is_ipv4();
                    if same && lo <= itf.port_max && itf.port_min <= hi {
                        return bad(
                            "interfaces",
                            format!(
                                "{name} ({}) and {other} ({ip}) both use ports {lo}-{hi} (a wildcard address takes those ports on every address of its family)",
                                a.bind
                            ),
                        );
                    }
                }
                seen.push((a.bind, itf.port_min, itf.port_max, name));
            }
        }
        if seen.len() > MAX_ADDRESSES {
            return bad("interfaces", format!("at most {MAX_ADDRESSES} addresses in all"));
        }
        let workers =
            if self.workers == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { self.workers };
        if workers > 255 {
            return Err(InvalidConfig { field: "workers", reason: "at most 255".into() });
        }
        // Every shard gets a slice of every address: at least 4 ports each.
        let workers = workers.min(smallest / 4).max(1);
        if !(1..=100).contains(&self.tenant_port_share_percent) {
            return Err(InvalidConfig { field: "tenant_port_share_percent", reason: "must be 1 to 100".into() });
        }
        self.defaults.validate()?;
        Ok(workers)
    }

    /// Ports in the media ranges, over every interface address.
    pub fn ports_total(&self) -> usize {
        self.effective_interfaces()
            .iter()
            .map(|i| (usize::from(i.port_max.saturating_sub(i.port_min)) + 1) * i.addresses.len())
            .sum()
    }

    /// The limit every tenant gets unless set per tenant.
    pub fn default_tenant_limit(&self) -> TenantLimit {
        TenantLimit {
            sessions: self.tenant_max_sessions,
            ports: Some((self.ports_total() * usize::from(self.tenant_port_share_percent) / 100).max(2)),
        }
    }

    /// The relay's media port ranges on every bind and advertised IP: its
    /// own addresses, never a peer.
    pub fn media_endpoints(&self) -> Vec<OwnEndpoint> {
        let mut v = Vec::new();
        for itf in self.effective_interfaces() {
            for a in &itf.addresses {
                v.push(OwnEndpoint::range(a.bind, itf.port_min, itf.port_max));
                if let Some(ip) = a.advertised {
                    v.push(OwnEndpoint::range(ip, itf.port_min, itf.port_max));
                }
            }
        }
        v
    }

    /// Splits every address's port range into one slice per shard
    /// (even-aligned sizes): each shard gets ports on every address.
    fn slices(&self, workers: usize) -> Vec<Vec<AddressSlice>> {
        let mut shards = vec![Vec::new(); workers];
        for (n, itf) in self.effective_interfaces().iter().enumerate() {
            let total = usize::from(itf.port_max - itf.port_min) + 1;
            let per = (total / workers) & !1;
            for a in &itf.addresses {
                for (i, slices) in shards.iter_mut().enumerate() {
                    let base = usize::from(itf.port_min) + i * per;
                    let count = if i + 1 == workers { total - i * per } else { per };
                    slices.push(AddressSlice {
                        interface: n as u8,
                        ip: a.bind,
                        port_base: base as u16,
                        port_count: count,
                    });
                }
            }
        }
        shards
    }
}

/// The shared kernel fast path, when one runs.
#[cfg(feature = "ebpf")]
type SharedFastPath = Option<Arc<Mutex<io::ebpf::FastPath>>>;
#[cfg(not(feature = "ebpf"))]
type SharedFastPath = Option<Arc<std::convert::Infallible>>;

/// Which relay addresses the kernel fast path may attach for: specific
/// addresses (a wildcard bind is not offloaded), and for `auto` not the
/// loopback interface (the host's shared device; a lab relay there asks
/// for `ebpf` explicitly). `None` when the fast path is not asked for.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "ebpf"), allow(dead_code))]
struct FastPathTargets {
    addresses: Vec<IpAddr>,
    explicit: bool,
}

impl FastPathTargets {
    fn of(config: &RelayConfig) -> Option<Self> {
        let explicit = match config.backend {
            BackendKind::Ebpf => true,
            BackendKind::Auto if cfg!(feature = "ebpf") => false,
            _ => return None,
        };
        let mut addresses = Vec::new();
        for itf in config.effective_interfaces() {
            for a in &itf.addresses {
                if !a.bind.is_unspecified() && (explicit || !a.bind.is_loopback()) && !addresses.contains(&a.bind) {
                    addresses.push(a.bind);
                }
            }
        }
        Some(Self { addresses, explicit })
    }

    /// The interfaces that hold a target address now.
    #[cfg_attr(not(feature = "ebpf"), allow(dead_code))]
    fn interfaces(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for a in &self.addresses {
            if let Ok(Some(name)) = io::sys::interface_of(*a) {
                if !names.contains(&name) && (self.explicit || name != "lo") {
                    names.push(name);
                }
            }
        }
        names
    }
}

/// Loads the kernel fast path when `config.backend` asks for it (`ebpf`) or
/// allows it (`auto`, built with the `ebpf` feature): attached to the
/// interfaces that hold the relay's specific addresses. With
/// `IP_FREEBIND` (a standby whose service address arrives at takeover) it
/// loads with no interface yet; [`RelayHandle::attach_fast_path`] attaches
/// it where the address turns up.
fn start_fast_path(config: &RelayConfig) -> (Option<Result<Vec<String>, String>>, SharedFastPath) {
    let Some(targets) = FastPathTargets::of(config) else { return (None, None) };
    #[cfg(feature = "ebpf")]
    {
        let names = targets.interfaces();
        let later = config.sockets.freebind && !targets.addresses.is_empty();
        if names.is_empty() && !later {
            let reason = if targets.explicit {
                "no relay address is a specific address of an interface (wildcard binds are not offloaded)"
            } else {
                "auto attaches only to non-loopback interfaces that hold a specific relay address"
            };
            return (Some(Err(reason.into())), None);
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        match io::ebpf::FastPath::load(&refs) {
            Ok(f) => (Some(Ok(names)), Some(Arc::new(Mutex::new(f)))),
            Err(e) => (Some(Err(e.to_string())), None),
        }
    }
    #[cfg(not(feature = "ebpf"))]
    {
        let _ = targets;
        (Some(Err("this build has no kernel fast path (relay-core's ebpf feature)".into())), None)
    }
}

/// A shard's fast path driver (its counters slots follow the shard before).
fn shard_offload(_fast: &SharedFastPath, _shard: &Shard, _slot_base: &mut u32) -> io::ShardOffload {
    #[cfg(feature = "ebpf")]
    if let Some(f) = _fast {
        let index = _shard.config().port_index();
        let base = *_slot_base;
        *_slot_base = _slot_base.saturating_add(index.len() as u32);
        return io::ShardOffload { driver: Some(io::ebpf::OffloadDriver::new(f.clone(), index, base)) };
    }
    io::ShardOffload::default()
}

/// Says what became of the kernel fast path (a warning only when it was
/// asked for by name).
fn log_fast_path(configured: BackendKind, fast_path: &Option<Result<Vec<String>, String>>) {
    match fast_path {
        Some(Err(reason)) if configured == BackendKind::Ebpf => {
            tracing::warn!(%reason, "kernel fast path unavailable, forwarding in userspace only")
        }
        Some(Err(reason)) => tracing::info!(%reason, "kernel fast path not used, forwarding in userspace only"),
        Some(Ok(interfaces)) if interfaces.is_empty() => {
            tracing::info!("kernel fast path loaded; it attaches when a relay address arrives on an interface")
        }
        Some(Ok(interfaces)) => tracing::info!(?interfaces, "kernel fast path attached"),
        None => {}
    }
}

/// The shards' threads and their mailboxes, each shard running (its backend
/// set up) before the next starts; on a failure, the ones started are
/// stopped again.
fn start_shards(
    config: &RelayConfig,
    workers: usize,
    fast: &SharedFastPath,
    media_own: &[OwnEndpoint],
    failures: &Arc<tokio::sync::watch::Sender<Vec<ShardFailure>>>,
) -> Result<(Vec<io::Mailbox>, Vec<std::thread::JoinHandle<()>>), StartError> {
    let mut slot_base = 0u32;
    let peer_policy = with_own_addresses(&config.peer_policy, media_own);
    let now = Instant::now();
    let mut mailboxes = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    // A random id space per start: ids from before a restart are not
    // handed out again (a cluster node moves to its epoch's space).
    let id_space = fastrand::u32(1..=0x00ff_ffff);
    for (index, addresses) in config.slices(workers).into_iter().enumerate() {
        let count = addresses.iter().map(|a| a.port_count).sum();
        let shard = Shard::new(
            ShardConfig {
                index: index as u8,
                addresses,
                defaults: config.defaults.clone(),
                peer_policy: peer_policy.clone(),
                seed: fastrand::u64(..),
                bind_quarantine: Duration::from_secs(30),
                offload: fast.is_some(),
                journal: config.journal,
                id_space,
            },
            now,
        );
        let (mailbox, inbox) = io::mailbox(config.command_queue, count)?;
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let offload = shard_offload(fast, &shard, &mut slot_base);
        let run = ShardRun { shard, inbox, sockets: config.sockets, offload, ready: Some(ready_tx) };
        let thread = spawn_shard(&config.thread_name, index, config.backend, run, failures.clone())?;
        mailboxes.push(mailbox);
        threads.push(thread);
        // Wait for the shard's backend to be set up: a relay that starts
        // has every shard running.
        let setup = ready_rx.recv().unwrap_or_else(|_| Err("shard thread ended during setup".into()));
        if let Err(reason) = setup {
            for m in &mailboxes {
                let _ = m.send(Envelope::Stop);
            }
            for t in threads {
                let _ = t.join();
            }
            return Err(StartError::Shard { index, reason });
        }
    }
    Ok((mailboxes, threads))
}

/// One shard's thread. A shard that ends for any reason but `Stop` is a
/// failure: its mailbox closes (requests to it fail with `Stopped`), and
/// whoever watches `RelayHandle::shard_failures` acts.
fn spawn_shard(
    name: &str,
    index: usize,
    backend: BackendKind,
    run: ShardRun,
    failed: Arc<tokio::sync::watch::Sender<Vec<ShardFailure>>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("{name}-{index}")).spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| io::run_shard(backend, run)));
        let reason = match result {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("I/O error: {e}"),
            Err(panic) => match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
                (Some(m), _) => format!("panic: {m}"),
                (_, Some(m)) => format!("panic: {m}"),
                _ => "panic".to_string(),
            },
        };
        tracing::error!(shard = index, %reason, "shard failed: its sessions are lost");
        failed.send_modify(|v| v.push(ShardFailure { shard: index, reason }));
    })
}

impl Relay {
    /// Starts the shard threads. Returns once every shard is running.
    pub fn start(config: RelayConfig) -> Result<Relay, StartError> {
        let workers = config.validate()?;
        let (running, fallback_reason) = config.backend.resolve().map_err(StartError::Datapath)?;
        if let Some(reason) = &fallback_reason {
            tracing::warn!(%reason, "io_uring unavailable, using the portable datapath");
        }
        let (fast_path, fast) = start_fast_path(&config);
        log_fast_path(config.backend, &fast_path);
        let datapath = DatapathInfo { configured: config.backend, running, fallback_reason, fast_path };
        let media_own = config.media_endpoints();
        let failures = Arc::new(tokio::sync::watch::channel(Vec::new()).0);
        let (mailboxes, threads) = start_shards(&config, workers, &fast, &media_own, &failures)?;
        let interfaces = config.effective_interfaces();
        let handle = RelayHandle {
            inner: Arc::new(Inner {
                ports_in_flight: mailboxes.iter().map(|_| Arc::default()).collect(),
                mailboxes,
                quotas: Arc::new(TenantQuotas::new(config.default_tenant_limit())),
                advertised_ip: interfaces[0].addresses[0].sdp_ip(),
                sdp_ips: interfaces.iter().flat_map(|i| i.addresses.iter().map(InterfaceAddress::sdp_ip)).collect(),
                interface_names: interfaces.iter().map(|i| i.name.clone()).collect(),
                fast: fast.clone(),
                fast_targets: FastPathTargets::of(&config),
                draining: AtomicBool::new(false),
                standby: AtomicBool::new(false),
                commit: std::sync::RwLock::new(None),
                next_shard: AtomicUsize::new(0),
                backend: running,
                media_own,
                failures,
            }),
        };
        Ok(Relay { handle, datapath, threads: Mutex::new(threads) })
    }

    /// The datapath in use and, if `auto` fell back, why.
    pub fn datapath(&self) -> &DatapathInfo {
        &self.datapath
    }

    /// A handle for control calls.
    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// Stops taking new sessions, waits up to `drain` for existing sessions
    /// to end (released or timed out), then releases the rest and stops.
    pub fn shutdown(self, drain: Duration) {
        self.handle.inner.draining.store(true, Ordering::SeqCst);
        let _ = self.handle.wait_drained(drain);
        self.stop();
    }

    fn stop(&self) {
        for m in &self.handle.inner.mailboxes {
            // A full queue still gets the stop once it drains: retry briefly.
            for _ in 0..100 {
                match m.send(Envelope::Stop) {
                    Err(MailboxError::Full) => std::thread::sleep(Duration::from_millis(10)),
                    _ => break,
                }
            }
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RelayHandle {
    /// The datapath backend running (`Uring` or `Portable`).
    pub fn backend(&self) -> BackendKind {
        self.inner.backend
    }

    /// The IP written into SDP for relay ports of the first interface's
    /// first address ([`LegAddresses`] carry each leg's own).
    pub fn advertised_ip(&self) -> IpAddr {
        self.inner.advertised_ip
    }

    /// The index of the interface named `name` (for [`LegSpec::interface`](crate::session::spec::LegSpec::interface)).
    pub fn interface(&self, name: &str) -> Option<u8> {
        self.inner.interface_names.iter().position(|n| n == name).map(|i| i as u8)
    }

    /// The interfaces' names, by index.
    pub fn interface_names(&self) -> &[String] {
        &self.inner.interface_names
    }

    /// What the kernel fast path did with the packets it saw (forwarded,
    /// or why each went up), when it runs.
    #[cfg(feature = "ebpf")]
    pub fn fast_path_outcomes(&self) -> Option<io::FastPathOutcomes> {
        let fast = self.inner.fast.as_ref()?;
        let guard = fast.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.outcomes().ok()
    }

    /// The running kernel fast path, for a service beside the media engine
    /// that relays through it as well (TURN's channels): `None` when it
    /// does not run.
    #[cfg(feature = "ebpf")]
    pub fn fast_path(&self) -> Option<Arc<Mutex<io::ebpf::FastPath>>> {
        self.inner.fast.clone()
    }

    /// Attaches the running kernel fast path to interfaces that have come
    /// to hold a relay address since the start (a takeover moved the
    /// service address here) and returns every interface it is attached
    /// to; empty when the fast path does not run. Cheap when nothing
    /// changed (a look at the interface table); call it after the address
    /// may have moved.
    pub fn attach_fast_path(&self) -> Vec<String> {
        #[cfg(feature = "ebpf")]
        if let (Some(fast), Some(targets)) = (&self.inner.fast, &self.inner.fast_targets) {
            let mut guard = fast.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for name in targets.interfaces() {
                if guard.interfaces().contains(&name) {
                    continue;
                }
                match guard.attach(&name) {
                    Ok(()) => tracing::info!(interface = %name, "kernel fast path attached"),
                    Err(e) => tracing::warn!(interface = %name, error = %e, "kernel fast path not attached"),
                }
            }
            return guard.interfaces().to_vec();
        }
        Vec::new()
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.mailboxes.len()
    }

    /// Tenant quota table (to set per-tenant limits).
    pub fn quotas(&self) -> &TenantQuotas {
        &self.inner.quotas
    }

    /// The same quota table, shared (for services beside the media engine
    /// whose allocations count against the tenants' ports, as TURN's).
    pub fn shared_quotas(&self) -> Arc<TenantQuotas> {
        self.inner.quotas.clone()
    }

    /// Whether the relay is draining.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Whether the relay is a cluster standby (see [`set_standby`](Self::set_standby)).
    pub fn is_standby(&self) -> bool {
        self.inner.standby.load(Ordering::SeqCst)
    }

    /// Marks the relay a cluster standby (or active again): while standby,
    /// `allocate` fails with [`RelayError::Standby`] on every path (admin
    /// API, control channel, ng); restoring sessions still works.
    pub fn set_standby(&self, standby: bool) {
        self.inner.standby.store(standby, Ordering::SeqCst);
    }

    /// Starts (or cancels) draining: while draining, `allocate` fails with
    /// [`RelayError::Draining`]; existing sessions are untouched.
    pub fn set_draining(&self, draining: bool) {
        self.inner.draining.store(draining, Ordering::SeqCst);
    }

    /// Blocks until no session is left or `timeout` passes (polling every
    /// 50 ms); returns the sessions still active. Call it on a thread (from
    /// async code: `spawn_blocking`).
    pub fn wait_drained(&self, timeout: Duration) -> Result<u64, RelayError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.counters().wait()?.total.sessions_active;
            if left == 0 || Instant::now() >= deadline {
                return Ok(left);
            }
            std::thread::sleep(Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// Shards that have failed (panicked or hit a fatal I/O error) so far.
    pub fn shard_failures(&self) -> Vec<ShardFailure> {
        self.inner.failures.borrow().clone()
    }

    /// A receiver that changes whenever a shard fails (for supervisors:
    /// fail readiness, exit so the process is restarted).
    pub fn watch_shard_failures(&self) -> tokio::sync::watch::Receiver<Vec<ShardFailure>> {
        self.inner.failures.subscribe()
    }

    /// Replaces, on every shard, the defaults for new sessions and the peer
    /// policy (configuration reload). Existing sessions keep theirs. The
    /// relay's media ranges are added to the policy's own addresses.
    pub fn reconfigure(&self, defaults: SessionDefaults, peer_policy: PeerPolicy) -> Pending<()> {
        let peer_policy = with_own_addresses(&peer_policy, &self.inner.media_own);
        self.gather(
            move || Command::Reconfigure { defaults: Box::new(defaults.clone()), peer_policy: peer_policy.clone() },
            |r| match r {
                Response::Reconfigured => Some(()),
                _ => None,
            },
            |_| (),
        )
    }

    /// Mints new session ids in `space` (its low 24 bits) from now on, on
    /// every shard. A cluster node calls it with its lease epoch before it
    /// serves: ids of different epochs never collide, so an id a client
    /// got from a node that lost its lease never names another session.
    pub fn set_id_space(&self, space: u32) -> Pending<()> {
        self.gather(
            move || Command::SetIdSpace { space },
            |r| match r {
                Response::IdSpaceSet => Some(()),
                _ => None,
            },
            |_| (),
        )
    }

    fn call<T: Send + 'static>(
        &self,
        shard: usize,
        cmd: Command,
        map: impl FnOnce(Response) -> Result<T, RelayError> + Send + 'static,
    ) -> Pending<T> {
        let Some(mailbox) = self.inner.mailboxes.get(shard) else {
            return Pending::ready(Err(RelayError::Stopped));
        };
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |resp: Response| {
            let _ = tx.send(map(resp));
        });
        match mailbox.send(Envelope::Command(cmd, reply)) {
            Ok(()) => Pending { inner: PendingInner::Waiting(rx) },
            Err(e) => Pending::ready(Err(e.into())),
        }
    }

    /// A command about session `id`: an id naming a shard this relay does
    /// not have is an unknown session (not a stopped relay).
    fn call_session<T: Send + 'static>(
        &self,
        id: SessionId,
        cmd: Command,
        map: impl FnOnce(Response) -> Result<T, RelayError> + Send + 'static,
    ) -> Pending<T> {
        let shard = usize::from(id.shard());
        if shard >= self.inner.mailboxes.len() {
            return Pending::ready(Err(RelayError::UnknownSession(id)));
        }
        self.call(shard, cmd, map)
    }

    fn addrs(&self, ports: LegPorts) -> LegAddresses {
        let ip = self.inner.sdp_ips.get(usize::from(ports.addr)).copied().unwrap_or(self.inner.advertised_ip);
        LegAddresses { rtp: SocketAddr::new(ip, ports.rtp), rtcp: ports.rtcp.map(|p| SocketAddr::new(ip, p)) }
    }

    /// Allocates a session on the shard with the most free ports.
    pub fn allocate(&self, spec: SessionSpec) -> Pending<AllocatedSession> {
        if self.is_draining() {
            return Pending::ready(Err(RelayError::Draining));
        }
        if self.is_standby() {
            return Pending::ready(Err(RelayError::Standby));
        }
        let ports = 2 + usize::from(!spec.pbx.rtcp_mux) + usize::from(!spec.endpoint.rtcp_mux);
        let permit = match self.inner.quotas.acquire(&spec.tenant, ports) {
            Ok(p) => p,
            Err(e) => return Pending::ready(Err(e.into())),
        };
        let n = self.inner.mailboxes.len();
        let start = self.inner.next_shard.fetch_add(1, Ordering::Relaxed);
        // A failed shard's last free-port figure stays frozen: never pick it.
        let failed: Vec<usize> = self.inner.failures.borrow().iter().map(|f| f.shard).collect();
        // The two vectors are built together, one entry per shard.
        let free = |i: usize| {
            self.inner.mailboxes[i].free_ports().saturating_sub(self.inner.ports_in_flight[i].load(Ordering::Relaxed))
        };
        let shard =
            (0..n).map(|k| (start + k) % n).filter(|i| !failed.contains(i)).max_by_key(|&i| free(i)).unwrap_or(0);
        let in_flight = self.inner.ports_in_flight.get(shard).map(|p| InFlight::add(p, ports));
        let me = self.clone();
        self.call(shard, Command::Allocate { spec: Box::new(spec), permit: Some(permit) }, move |r| {
            drop(in_flight); // answered: the shard's own figure counts it from now on
            match r {
                Response::Allocated(Ok(a)) => {
                    Ok(AllocatedSession { id: a.id, pbx: me.addrs(a.pbx), endpoint: me.addrs(a.endpoint) })
                }
                Response::Allocated(Err(e)) => Err(e.into()),
                _ => Err(RelayError::Stopped),
            }
        })
    }

    /// Installs (or with `None` removes) what makes changes durable before
    /// they are acknowledged; see [`commit`](Self::commit).
    pub fn set_commit_barrier(&self, barrier: Option<Arc<dyn CommitBarrier>>) {
        *self.inner.commit.write().unwrap_or_else(std::sync::PoisonError::into_inner) = barrier;
    }

    /// Resolves once every change made before the call is durable (at once
    /// without a [`CommitBarrier`]). Services acknowledge a change only
    /// after it: [`allocate_committed`](Self::allocate_committed) does so
    /// for an allocation.
    pub fn commit(&self) -> CommitFuture {
        let barrier = self.inner.commit.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        match barrier {
            Some(b) => b.commit(),
            None => Box::pin(std::future::ready(Ok(()))),
        }
    }

    /// Allocates a session and waits until it is durable
    /// ([`commit`](Self::commit)); if it cannot be made durable the session
    /// is discarded and the commit's error returned. What the admin API,
    /// the control channel and ng acknowledge.
    pub async fn allocate_committed(&self, spec: SessionSpec) -> Result<AllocatedSession, RelayError> {
        let a = self.allocate(spec).await?;
        if let Err(e) = self.commit().await {
            let _ = self.discard(a.id).await;
            return Err(e);
        }
        Ok(a)
    }

    /// Updates a session and waits until the change is durable
    /// ([`commit`](Self::commit)).
    pub async fn update_committed(&self, id: SessionId, update: SessionUpdate) -> Result<(), RelayError> {
        self.update(id, update).await?;
        self.commit().await
    }

    /// Updates hints, keys, limits or policy; re-opens the learning window.
    /// Refused with [`RelayError::Standby`] on a cluster standby (a node
    /// that lost, or cannot renew, its lease changes nothing).
    pub fn update(&self, id: SessionId, update: SessionUpdate) -> Pending<()> {
        if self.is_standby() {
            return Pending::ready(Err(RelayError::Standby));
        }
        self.call_session(id, Command::Update { id, update: Box::new(update) }, |r| match r {
            Response::Updated(r) => r.map_err(Into::into),
            _ => Err(RelayError::Stopped),
        })
    }

    /// Releases a session; returns its final state and counters. Refused
    /// with [`RelayError::Standby`] on a cluster standby (see
    /// [`discard`](Self::discard)).
    pub fn release(&self, id: SessionId) -> Pending<SessionInfo> {
        if self.is_standby() {
            return Pending::ready(Err(RelayError::Standby));
        }
        self.discard(id)
    }

    /// Ends a session whatever the relay's role: a cluster node stepping
    /// down stops serving what the new active serves now, and a request
    /// that created a session and then failed takes it back.
    pub fn discard(&self, id: SessionId) -> Pending<SessionInfo> {
        self.call_session(id, Command::Release { id }, |r| match r {
            Response::Released(r) => r.map_err(Into::into),
            _ => Err(RelayError::Stopped),
        })
    }

    /// Describes one session (latched addresses, counters, quality).
    pub fn session(&self, id: SessionId) -> Pending<SessionInfo> {
        self.call_session(id, Command::Query { id }, |r| match r {
            Response::Session(r) => r.map_err(Into::into),
            _ => Err(RelayError::Stopped),
        })
    }

    /// Lists up to `limit` sessions with ids after `after`, in id order.
    pub fn list(&self, after: Option<SessionId>, limit: usize) -> Pending<SessionPage> {
        let limit = limit.clamp(1, 10_000);
        self.gather(
            // One more than asked per shard: a full page says whether more follow.
            move || Command::List { after, limit: limit + 1 },
            |r| match r {
                Response::List(v) => Some(v),
                _ => None,
            },
            move |parts: Vec<Vec<SessionInfo>>| {
                let (sessions, next) = page(parts, limit, |s| s.id);
                SessionPage { sessions, next }
            },
        )
    }

    /// Resumes a session from its exported state (another relay's, with
    /// the same interfaces, port ranges and worker count): the same id,
    /// relay ports, latched addresses, keys and counters. Counts against
    /// the tenant's quota like an allocation.
    pub fn restore(&self, state: SessionState) -> Pending<AllocatedSession> {
        let ports = state.relay_ports().len();
        let permit = match self.inner.quotas.acquire(&state.tenant, ports) {
            Ok(p) => p,
            Err(e) => return Pending::ready(Err(e.into())),
        };
        let (me, id) = (self.clone(), state.id);
        self.call_session(id, Command::Restore { state: Box::new(state), permit: Some(permit) }, move |r| match r {
            Response::Restored(Ok(a)) => {
                Ok(AllocatedSession { id: a.id, pbx: me.addrs(a.pbx), endpoint: me.addrs(a.endpoint) })
            }
            Response::Restored(Err(e)) => Err(e.into()),
            _ => Err(RelayError::Stopped),
        })
    }

    /// The resumable states of sessions with ids above `after`, in id
    /// order, up to `limit` (1 to 10 000) per page; `next` continues.
    pub fn export(&self, after: Option<SessionId>, limit: usize) -> Pending<StatePage> {
        let limit = limit.clamp(1, 10_000);
        self.gather(
            move || Command::Export { after, limit: limit + 1 },
            |r| match r {
                Response::Exported(v) => Some(v),
                _ => None,
            },
            move |parts: Vec<Vec<SessionState>>| {
                let (states, next) = page(parts, limit, |s| s.id);
                StatePage { states, next }
            },
        )
    }

    /// What changed since the last call, from every shard's journal (up to
    /// `limit` changed sessions per shard; [`RelayConfig::journal`] must be
    /// on, otherwise nothing is ever reported).
    pub fn changes(&self, limit: usize) -> Pending<Changes> {
        let limit = limit.clamp(1, 100_000);
        self.gather(
            move || Command::Changes { limit },
            |r| match r {
                Response::Changes(c) => Some(c),
                _ => None,
            },
            |parts: Vec<Changes>| {
                let mut all = Changes::default();
                for p in parts {
                    all.changed.extend(p.changed);
                    all.ended.extend(p.ended);
                    all.overflowed |= p.overflowed;
                    all.more |= p.more;
                }
                all
            },
        )
    }

    /// Sums every shard's counters.
    pub fn counters(&self) -> Pending<RelayCounters> {
        self.gather(
            || Command::Snapshot,
            |r| match r {
                Response::Snapshot(c) => Some(c),
                _ => None,
            },
            |parts: Vec<ShardCounters>| {
                let mut total = ShardCounters::default();
                for p in &parts {
                    total.merge(p);
                }
                RelayCounters { total, shards: parts }
            },
        )
    }

    /// Sends a command to every shard and combines the answers (in shard
    /// order). A shard that has failed contributes `P::default()` (no
    /// sessions, zero counters), so the rest of the relay stays observable.
    fn gather<P: Send + Default + 'static, T: Send + 'static>(
        &self,
        make: impl Fn() -> Command,
        pick: fn(Response) -> Option<P>,
        combine: impl FnOnce(Vec<P>) -> T + Send + 'static,
    ) -> Pending<T> {
        let n = self.inner.mailboxes.len();
        let (tx, rx) = oneshot::channel();
        type Combine<P, T> = Box<dyn FnOnce(Vec<P>) -> T + Send>;
        type Done<P, T> = (oneshot::Sender<Result<T, RelayError>>, Combine<P, T>);
        struct Gather<P, T> {
            parts: Vec<Option<P>>,
            left: usize,
            done: Option<Done<P, T>>,
        }
        impl<P: Default, T> Gather<P, T> {
            fn finish_one(&mut self, i: usize, p: Option<P>) {
                self.parts[i] = Some(p.unwrap_or_default());
                self.left -= 1;
                if self.left == 0 {
                    if let Some((tx, combine)) = self.done.take() {
                        let parts: Vec<P> = std::mem::take(&mut self.parts).into_iter().flatten().collect();
                        let _ = tx.send(Ok(combine(parts)));
                    }
                }
            }
        }
        /// Settles a shard's part if its reply never comes (a shard that
        /// panics drops the command unanswered).
        struct Part<P: Default, T> {
            state: Arc<Mutex<Gather<P, T>>>,
            index: usize,
            answered: bool,
        }
        impl<P: Default, T> Drop for Part<P, T> {
            fn drop(&mut self) {
                if !self.answered {
                    self.state.lock().unwrap_or_else(|p| p.into_inner()).finish_one(self.index, None);
                }
            }
        }
        let state = Arc::new(Mutex::new(Gather {
            parts: (0..n).map(|_| None).collect(),
            left: n,
            done: Some((tx, Box::new(combine))),
        }));
        for (i, m) in self.inner.mailboxes.iter().enumerate() {
            let mut part = Part { state: state.clone(), index: i, answered: false };
            let reply = Box::new(move |resp: Response| {
                part.answered = true;
                part.state.lock().unwrap_or_else(|p| p.into_inner()).finish_one(part.index, pick(resp));
            });
            // A failed send drops `reply`, and with it `part`, which settles it.
            let _ = m.send(Envelope::Command(make(), reply));
        }
        Pending { inner: PendingInner::Waiting(rx) }
    }
}

/// `policy` with the relay's media ranges added to its own addresses, and
/// the host's interface addresses read when any own address is a wildcard.
fn with_own_addresses(policy: &PeerPolicy, media: &[OwnEndpoint]) -> PeerPolicy {
    let endpoints: Vec<OwnEndpoint> = policy.own.endpoints().iter().chain(media).copied().collect();
    let wildcard = endpoints.iter().any(|e| e.ip.is_unspecified());
    let local_ips = if wildcard {
        io::sys::local_addresses().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list this host's addresses; only loopback counts as local");
            Vec::new()
        })
    } else {
        Vec::new()
    };
    policy.clone().with_own(OwnAddresses::new(endpoints, local_ips))
}
