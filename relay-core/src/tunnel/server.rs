//! The relay side of TLS pass-through tunnels.
//!
//! A tunnel listener (one per service, e.g. `sip-tls` on :5061) reads the
//! endpoint's ClientHello into a bounded buffer (never decrypting it: the
//! relay has no key), routes its SNI to a tenant, and asks that tenant's
//! connector over the control channel to open a stream with a single-use
//! ticket. The connector dials the data listener, presents the ticket in an
//! `attach` frame, and the relay writes the buffered hello to it verbatim,
//! then splices bytes both ways until both sides close or the tunnel idles.
//!
//! Every refusal is counted by reason; connections still in the hello phase
//! are capped per source IP and in total, and so are data connections that
//! have not presented a ticket yet.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use super::route::RouteReject;
use super::route::SniRouter;
use super::tickets::TicketError;
use super::tickets::Tickets;
use crate::control::caps::{CapGuard, CapRejection, ConnCaps, KnownSources};
use crate::control::frame::FrameType;
use crate::control::messages::{Bind, Message, OpenStream};
use crate::control::server::{ControlServer, ReachError};
use crate::control::stream::{read_single_frame, stopped};
use crate::io::accept::accept_or_back_off;
use crate::io::splice::{pump, PumpCounters, PumpEnd, PumpMode};
use crate::peer::source_prefix;
use crate::wire::client_hello::{ClientHelloInfo, HelloError, HelloReader, DEFAULT_MAX_HELLO};

/// Tunnel settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Time allowed for the complete ClientHello.
    pub hello_timeout: Duration,
    /// Largest ClientHello accepted.
    pub max_hello: usize,
    /// Connections in the hello phase per source IP.
    pub max_pending_per_ip: usize,
    /// Connections in the hello phase in total.
    pub max_pending: usize,
    /// How long a ticket waits for the connector's data connection.
    pub ticket_ttl: Duration,
    /// Close a tunnel after this long without a byte either way.
    pub idle_timeout: Duration,
    /// Zero-copy splice or plain copy.
    pub pump: PumpMode,
    /// Tunnels per tenant (pending and open) unless set per tenant.
    pub tenant_max_connections: usize,
    /// A tenant's tunnels one source (IPv4 address or IPv6 /64) may hold.
    pub tenant_max_per_source: usize,
    /// Data-listener port announced to connectors (0: the bound port).
    pub data_port: u16,
    /// Data connections that have not presented a ticket, per source IP.
    pub max_unattached_per_ip: usize,
    /// Standby data connections kept per tenant (0: none). An endpoint
    /// served from the pool skips the connector's dial to the relay.
    pub pool_size: usize,
    /// How long a standby connection may wait unused.
    pub pool_idle: Duration,
    /// Write `redacted` instead of endpoint addresses in logs.
    pub redact_addresses: bool,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(10),
            max_hello: DEFAULT_MAX_HELLO,
            max_pending_per_ip: 16,
            max_pending: 4096,
            ticket_ttl: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            pump: PumpMode::Splice,
            tenant_max_connections: 1000,
            tenant_max_per_source: 128,
            data_port: 0,
            max_unattached_per_ip: 256,
            pool_size: 2,
            pool_idle: Duration::from_secs(120),
            redact_addresses: false,
        }
    }
}

crate::names::named! {
    /// Why a tunnel or data connection is refused or ends early. Every
    /// refusal is counted with one of these.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Rejection {
        /// The source (IPv4 address or IPv6 /64) has `max_pending_per_ip` hellos pending.
        PerSourceCap => "per_ip_cap",
        /// `max_pending` hellos are pending (for strangers: the unreserved part).
        TotalCap => "total_cap",
        /// The ClientHello did not arrive within `hello_timeout`.
        HelloTimeout => "hello_timeout",
        /// The client closed before its hello was complete.
        ClientClosed => "client_closed",
        /// Not TLS.
        NotTls => "not_tls",
        /// A malformed record or ClientHello.
        MalformedHello => "malformed_hello",
        /// A ClientHello larger than `max_hello_bytes`.
        OversizeHello => "oversize_hello",
        /// An invalid server name.
        BadSni => "bad_sni",
        /// No SNI and no default tenant.
        NoSni => "no_sni",
        /// No tenant for this SNI.
        UnknownSni => "unknown_sni",
        /// The tenant has no connector.
        NoConnector => "no_connector",
        /// The tenant's connector does not expose this service.
        ServiceNotExposed => "service_not_exposed",
        /// The connector's queue is full, or no ticket could be issued.
        ConnectorBusy => "connector_busy",
        /// The tenant has its maximum of tunnels.
        TenantLimit => "tenant_limit",
        /// This source holds its maximum of the tenant's tunnels.
        SourceLimit => "source_limit",
        /// The connector did not attach a data connection within the ticket TTL.
        ConnectorTimeout => "connector_timeout",
        /// Data connections without a ticket are capped (per source and in total).
        DataCap => "data_cap",
        /// A data connection sent no `attach` in time.
        DataTimeout => "data_timeout",
        /// A data connection sent something else than an `attach` frame.
        DataBadFrame => "data_bad_frame",
        /// An unknown ticket.
        TicketUnknown => "ticket_unknown",
        /// An expired (or cancelled) ticket.
        TicketExpired => "ticket_expired",
        /// A ticket presented twice.
        TicketReused => "ticket_reused",
    }
}

impl From<HelloError> for Rejection {
    fn from(e: HelloError) -> Self {
        match e {
            HelloError::NotTls => Rejection::NotTls,
            HelloError::BadRecord | HelloError::NotClientHello | HelloError::Malformed(_) => Rejection::MalformedHello,
            HelloError::TooLarge => Rejection::OversizeHello,
            HelloError::BadServerName => Rejection::BadSni,
        }
    }
}

impl From<RouteReject> for Rejection {
    fn from(e: RouteReject) -> Self {
        match e {
            RouteReject::NoSni => Rejection::NoSni,
            RouteReject::UnknownSni => Rejection::UnknownSni,
        }
    }
}

impl From<TicketError> for Rejection {
    fn from(e: TicketError) -> Self {
        match e {
            TicketError::Unknown => Rejection::TicketUnknown,
            TicketError::Expired => Rejection::TicketExpired,
            TicketError::Reused => Rejection::TicketReused,
        }
    }
}

impl From<ReachError> for Rejection {
    fn from(e: ReachError) -> Self {
        match e {
            ReachError::NoConnector => Rejection::NoConnector,
            ReachError::NoService => Rejection::ServiceNotExposed,
            ReachError::Busy => Rejection::ConnectorBusy,
        }
    }
}

/// A counter snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Endpoint connections accepted on tunnel listeners.
    pub accepted: u64,
    /// Tunnels joined to a connector's data connection.
    pub opened: u64,
    /// Tunnels open now.
    pub active: u64,
    /// Tunnels served over a standby data connection (no dial at open time).
    pub pooled: u64,
    /// Connections handed to the relay's own service sharing the listeners
    /// (TURN over TLS or TCP on port 443).
    pub handed_off: u64,
    /// Standby data connections waiting now.
    pub standby: u64,
    /// Tickets whose data connection is awaited now (endpoints and standby
    /// requests); expired ones are forgotten.
    pub awaited: u64,
    /// Bytes endpoint → PBX (including the ClientHello).
    pub bytes_to_pbx: u64,
    /// Bytes PBX → endpoint.
    pub bytes_to_endpoint: u64,
    /// Tunnels that ended with both sides closed / idle / on an error.
    pub ended_closed: u64,
    /// Tunnels closed by the idle timeout.
    pub ended_idle: u64,
    /// Tunnels ended by a socket error.
    pub ended_error: u64,
    /// Refusals by reason (every [`Rejection`], in order).
    pub rejected: Vec<(Rejection, u64)>,
}

impl TunnelStats {
    /// Refusals for one reason.
    pub fn rejected(&self, reason: Rejection) -> u64 {
        self.rejected.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    opened: AtomicU64,
    active: AtomicU64,
    pooled: AtomicU64,
    handed_off: AtomicU64,
    ended: [AtomicU64; 3],
    rejected: [AtomicU64; Rejection::ALL.len()],
    bytes: PumpCounters,
}

struct Inner {
    config: TunnelConfig,
    router: RwLock<SniRouter>,
    control: ControlServer,
    caps: ConnCaps,
    data_caps: ConnCaps,
    tickets: Mutex<Tickets>,
    waiters: Mutex<HashMap<u64, Waiter>>,
    pools: Mutex<HashMap<String, Pool>>,
    tenant_active: Mutex<HashMap<String, TenantTunnels>>,
    /// Endpoints whose tunnel carried the PBX's answer recently: they may
    /// use the reserved share of the hello caps.
    known_endpoints: KnownSources,
    tenant_limits: RwLock<HashMap<String, usize>>,
    counters: Counters,
    data_port: AtomicU16,
    shutdown: watch::Sender<bool>,
    /// The relay's own service sharing the tunnel listeners (TURN).
    handoff: RwLock<Option<Arc<dyn Handoff>>>,
}

/// A service of the relay itself that shares the tunnel listeners (port
/// 443): TURN over TLS, told apart by its ClientHello (server name or ALPN
/// `stun.turn`), and TURN over TCP, told apart from TLS by a STUN header.
/// Every other connection passes through to its PBX as before.
pub trait Handoff: Send + Sync {
    /// Whether a TLS connection with this ClientHello is for the service.
    fn claims_tls(&self, hello: &ClientHelloInfo) -> bool;
    /// Takes a TLS connection; `read` is what was read of it (the hello).
    fn take_tls(&self, tcp: TcpStream, peer: SocketAddr, read: Vec<u8>);
    /// Takes a plain connection that starts with a STUN header (`read`).
    fn take_stun(&self, tcp: TcpStream, peer: SocketAddr, read: Vec<u8>);
}

/// Who waits for a ticket's data connection.
enum Waiter {
    /// An endpoint connection, now.
    Endpoint(oneshot::Sender<TcpStream>),
    /// The tenant's standby pool, requested from this connector channel.
    Standby(String, u64),
}

/// A tenant's standby data connections.
#[derive(Default)]
struct Pool {
    /// Attached standby connections: (connection, since, connector channel).
    ready: std::collections::VecDeque<(TcpStream, Instant, u64)>,
    /// When each standby ticket not yet attached was sent (forgotten after
    /// the ticket TTL, so a connector that never attaches is asked again).
    requested: std::collections::VecDeque<Instant>,
}

/// The tunnel listeners and the data listener. Cheap to clone.
#[derive(Clone)]
pub struct TunnelServer {
    inner: Arc<Inner>,
}

/// Fatal TLS alert `unrecognized_name` (RFC 6066): no tenant for this SNI.
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];
/// Fatal TLS alert `internal_error`: the PBX cannot be reached now.
const ALERT_INTERNAL_ERROR: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80];
/// Largest `attach` payload (a 22-character ticket in JSON needs ~40).
const MAX_ATTACH: usize = 1024;

struct TenantSlot {
    inner: Arc<Inner>,
    tenant: String,
    source: IpAddr,
}

/// A tenant's tunnels now: in total and per source.
#[derive(Debug, Default)]
struct TenantTunnels {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut m = self.inner.tenant_active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = m.get_mut(&self.tenant) {
            t.total -= 1;
            if let Some(n) = t.per_source.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    t.per_source.remove(&self.source);
                }
            }
            if t.total == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

fn random_ticket_bytes() -> Option<[u8; 16]> {
    let mut b = [0u8; 16];
    rustls::crypto::ring::default_provider().secure_random.fill(&mut b).ok()?;
    Some(b)
}

impl TunnelServer {
    /// A tunnel server routing with `router` through `control`'s connectors.
    pub fn new(config: TunnelConfig, router: SniRouter, control: ControlServer) -> Self {
        let caps = ConnCaps::new(config.max_pending_per_ip, config.max_pending);
        let data_caps = ConnCaps::new(config.max_unattached_per_ip, config.max_pending);
        let tickets = Tickets::new(config.ticket_ttl, config.max_pending);
        Self {
            inner: Arc::new(Inner {
                data_port: AtomicU16::new(config.data_port),
                config,
                router: RwLock::new(router),
                control,
                caps,
                data_caps,
                tickets: Mutex::new(tickets),
                waiters: Mutex::default(),
                pools: Mutex::default(),
                tenant_active: Mutex::default(),
                known_endpoints: KnownSources::new(Duration::from_secs(3600), 65_536),
                tenant_limits: RwLock::default(),
                counters: Counters::default(),
                shutdown: watch::channel(false).0,
                handoff: RwLock::new(None),
            }),
        }
    }

    /// Lets `handoff` take the tunnel listeners' connections that are for
    /// it (see [`Handoff`]).
    pub fn set_handoff(&self, handoff: Arc<dyn Handoff>) {
        *self.inner.handoff.write().unwrap_or_else(|p| p.into_inner()) = Some(handoff);
    }

    /// Replaces the routing table (configuration reload).
    pub fn replace_router(&self, router: SniRouter) {
        *self.inner.router.write().unwrap_or_else(|p| p.into_inner()) = router;
    }

    /// Sets per-tenant tunnel limits (others use `tenant_max_connections`).
    pub fn set_tenant_limits(&self, limits: HashMap<String, usize>) {
        *self.inner.tenant_limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Counter snapshot.
    pub fn stats(&self) -> TunnelStats {
        let c = &self.inner.counters;
        TunnelStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            opened: c.opened.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed),
            pooled: c.pooled.load(Ordering::Relaxed),
            handed_off: c.handed_off.load(Ordering::Relaxed),
            standby: self
                .inner
                .pools
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .map(|p| p.ready.len() as u64)
                .sum(),
            awaited: self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner()).len() as u64,
            bytes_to_pbx: c.bytes.a_to_b.load(Ordering::Relaxed),
            bytes_to_endpoint: c.bytes.b_to_a.load(Ordering::Relaxed),
            ended_closed: c.ended[0].load(Ordering::Relaxed),
            ended_idle: c.ended[1].load(Ordering::Relaxed),
            ended_error: c.ended[2].load(Ordering::Relaxed),
            rejected: Rejection::ALL.iter().zip(&c.rejected).map(|(r, n)| (*r, n.load(Ordering::Relaxed))).collect(),
        }
    }

    /// Stops every listener loop.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Serves endpoints of `service` on `listener` until shutdown or `stop`.
    pub async fn serve_tunnel(&self, listener: TcpListener, service: String, stop: impl Future<Output = ()>) {
        let local = listener.local_addr().ok();
        let service: Arc<str> = service.into();
        self.accept_loop(listener, stop, false, move |inner, tcp, peer, guard| {
            let service = service.clone();
            tokio::spawn(async move { inner.handle_endpoint(tcp, peer, local, &service, guard).await });
        })
        .await;
    }

    /// Serves connectors' data connections on `listener`.
    pub async fn serve_data(&self, listener: TcpListener, stop: impl Future<Output = ()>) {
        if self.inner.config.data_port == 0 {
            if let Ok(a) = listener.local_addr() {
                self.inner.data_port.store(a.port(), Ordering::Relaxed);
            }
        }
        self.accept_loop(listener, stop, true, |inner, tcp, peer, guard| {
            tokio::spawn(async move { inner.handle_data(tcp, peer, guard).await });
        })
        .await;
    }

    async fn accept_loop(
        &self,
        listener: TcpListener,
        stop: impl Future<Output = ()>,
        data: bool,
        spawn: impl Fn(Arc<Inner>, TcpStream, SocketAddr, CapGuard),
    ) {
        let mut shutdown = self.inner.shutdown.subscribe();
        let every = self.inner.config.ticket_ttl.clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut housekeeping = tokio::time::interval(every);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = stopped(&mut shutdown) => break,
                _ = housekeeping.tick() => self.inner.handle_timeout(Instant::now()),
                accepted = accept_or_back_off(&listener, if data { "tunnel data" } else { "tunnel" }) => {
                    let Some((tcp, peer)) = accepted else { continue };
                    let caps = if data { &self.inner.data_caps } else { &self.inner.caps };
                    if !data {
                        self.inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    // Known sources may use the reserved share: for data
                    // connections, hosts whose connector logged in; for
                    // endpoints, sources whose hello was routed recently.
                    let known = if data {
                        self.inner.control.is_known_source(peer.ip())
                    } else {
                        self.inner.known_endpoints.knows(Instant::now(), peer.ip())
                    };
                    match caps.try_acquire(peer.ip(), known) {
                        Ok(guard) => spawn(self.inner.clone(), tcp, peer, guard),
                        Err(_) if data => self.inner.reject(Rejection::DataCap),
                        Err(CapRejection::PerIp) => self.inner.reject(Rejection::PerSourceCap),
                        Err(CapRejection::Total) => self.inner.reject(Rejection::TotalCap),
                    }
                }
            }
        }
    }
}

impl Inner {
    fn reject(&self, reason: Rejection) {
        self.counters.rejected[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Expires tickets and forgets the waiters of expired ones (standby
    /// requests a connector never attached).
    fn handle_timeout(&self, now: Instant) {
        let expired = self.tickets_lock().handle_timeout(now);
        if !expired.is_empty() {
            let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            for id in expired {
                waiters.remove(&id);
            }
        }
    }

    fn tickets_lock(&self) -> std::sync::MutexGuard<'_, Tickets> {
        self.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shown(&self, addr: SocketAddr) -> String {
        if self.config.redact_addresses {
            "redacted".into()
        } else {
            addr.to_string()
        }
    }

    /// Reads until the ClientHello is complete, refused, or times out.
    /// Each read is parsed from where the last one stopped.
    /// Whether a connection that is not TLS starts with a STUN header (the
    /// magic cookie at bytes 4–7), read within the hello timeout.
    async fn starts_stun(&self, tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let read = async {
            let mut chunk = [0u8; 64];
            while buf.len() < 8 {
                match tcp.read(&mut chunk).await {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return false,
                }
            }
            buf[0] & 0xc0 == 0 && buf[4..8] == crate::wire::stun::MAGIC_COOKIE.to_be_bytes()
        };
        tokio::time::timeout(self.config.hello_timeout, read).await.unwrap_or(false)
    }

    async fn read_hello(&self, tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Result<ClientHelloInfo, Rejection> {
        // A hello cut into 1-byte records costs 6 bytes per byte.
        let limit = 6 * self.config.max_hello + 5;
        let read = async {
            let mut reader = HelloReader::new(self.config.max_hello);
            let mut chunk = [0u8; 4096];
            loop {
                let n = tcp.read(&mut chunk).await.map_err(|_| Rejection::ClientClosed)?;
                if n == 0 {
                    return Err(Rejection::ClientClosed);
                }
                buf.extend_from_slice(&chunk[..n]);
                match reader.feed(buf) {
                    Ok(Some(info)) => return Ok(info),
                    Ok(None) if buf.len() > limit => return Err(Rejection::OversizeHello),
                    Ok(None) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        };
        tokio::time::timeout(self.config.hello_timeout, read).await.unwrap_or(Err(Rejection::HelloTimeout))
    }

    /// Takes one of the tenant's tunnel places for a connection from
    /// `peer`: refused at the tenant's limit, or when this source (its IPv4
    /// address or IPv6 /64) already holds `tenant_max_per_source` of them —
    /// one address cannot hold a tenant's whole quota.
    fn take_tenant_slot(self: &Arc<Self>, tenant: &str, peer: IpAddr) -> Result<TenantSlot, Rejection> {
        let limit = self
            .tenant_limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied()
            .unwrap_or(self.config.tenant_max_connections);
        let source = source_prefix(peer);
        let mut m = self.tenant_active.lock().unwrap_or_else(|p| p.into_inner());
        let active = m.entry(tenant.to_string()).or_default();
        if active.total >= limit {
            return Err(Rejection::TenantLimit);
        }
        let from_source = active.per_source.entry(source).or_default();
        if *from_source >= self.config.tenant_max_per_source {
            if *from_source == 0 {
                active.per_source.remove(&source);
            }
            return Err(Rejection::SourceLimit);
        }
        *from_source += 1;
        active.total += 1;
        Ok(TenantSlot { inner: self.clone(), tenant: tenant.to_string(), source })
    }

    async fn handle_endpoint(
        self: Arc<Self>,
        mut tcp: TcpStream,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        service: &str,
        guard: CapGuard,
    ) {
        let _ = tcp.set_nodelay(true);
        let mut hello = Vec::with_capacity(2048);
        let handoff = self.handoff.read().unwrap_or_else(|p| p.into_inner()).clone();
        let sni = match self.read_hello(&mut tcp, &mut hello).await {
            Ok(info) => match handoff {
                Some(h) if h.claims_tls(&info) => {
                    self.counters.handed_off.fetch_add(1, Ordering::Relaxed);
                    return h.take_tls(tcp, peer, hello);
                }
                _ => info.server_name,
            },
            Err(Rejection::NotTls) if handoff.is_some() && self.starts_stun(&mut tcp, &mut hello).await => {
                self.counters.handed_off.fetch_add(1, Ordering::Relaxed);
                if let Some(h) = handoff {
                    h.take_stun(tcp, peer, hello);
                }
                return;
            }
            Err(reason) => {
                self.reject(reason);
                tracing::debug!(peer = %self.shown(peer), reason = reason.as_str(), "tunnel: hello refused");
                return;
            }
        };
        drop(guard); // the hello phase is over
        let routed = self.router.read().unwrap_or_else(|p| p.into_inner()).route(sni.as_deref());
        let tenant = match routed {
            Ok(t) => t,
            Err(r) => {
                self.reject(r.into());
                let _ = write_bounded(&mut tcp, &ALERT_UNRECOGNIZED_NAME, self.config.hello_timeout).await;
                return;
            }
        };
        let _slot = match self.take_tenant_slot(&tenant, peer.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                self.reject(reason);
                let _ = write_bounded(&mut tcp, &ALERT_INTERNAL_ERROR, self.config.hello_timeout).await;
                return;
            }
        };
        // No connector, or one that does not serve this service: refuse
        // before any ticket is issued.
        let epoch = match self.control.exposes(&tenant, service) {
            Ok(epoch) => epoch,
            Err(e) => {
                self.reject(e.into());
                let _ = write_bounded(&mut tcp, &ALERT_INTERNAL_ERROR, self.config.hello_timeout).await;
                return;
            }
        };
        let pooled = self.take_standby(&tenant, epoch, service, peer, local).await;
        let data = match pooled {
            Some(d) => {
                self.counters.pooled.fetch_add(1, Ordering::Relaxed);
                Some(d)
            }
            None => self.open_stream(&tenant, service, peer, local).await,
        };
        self.refill_standby(&tenant);
        let Some(data) = data else {
            let _ = write_bounded(&mut tcp, &ALERT_INTERNAL_ERROR, self.config.hello_timeout).await;
            return;
        };
        self.run_tunnel(tcp, data, &hello, &tenant, peer).await;
    }

    /// A standby data connection of `tenant`'s connector channel `epoch`,
    /// bound to `service` (the `bind` frame is written; the tunnel's bytes
    /// may follow at once).
    async fn take_standby(
        &self,
        tenant: &str,
        epoch: u64,
        service: &str,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Option<TcpStream> {
        let bind = Message::Bind(Bind {
            service: service.to_string(),
            client_addr: peer.to_string(),
            relay_addr: local.map(|a| a.to_string()),
        })
        .encode()
        .encode();
        loop {
            let next = {
                let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
                pools.get_mut(tenant).and_then(|p| p.ready.pop_front())
            };
            let (mut data, since, from) = next?;
            // Stale, from an earlier connector channel, or closed by the
            // connector: dropping it closes it; try the next one.
            if since.elapsed() >= self.config.pool_idle || from != epoch || closed(&data) {
                continue;
            }
            // A standby whose connector went away fails here: try the next.
            if write_bounded(&mut data, &bind, self.config.hello_timeout).await {
                return Some(data);
            }
        }
    }

    /// Asks the tenant's connector for standby connections up to `pool_size`.
    fn refill_standby(&self, tenant: &str) {
        if self.config.pool_size == 0 {
            return;
        }
        let Some(epoch) = self.control.connector_epoch(tenant) else { return };
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let pool = pools.entry(tenant.to_string()).or_default();
        pool.ready.retain(|(_, since, from)| since.elapsed() < self.config.pool_idle && *from == epoch);
        let ttl = self.config.ticket_ttl;
        pool.requested.retain(|sent| sent.elapsed() < ttl);
        while pool.ready.len() + pool.requested.len() < self.config.pool_size {
            let Some(random) = random_ticket_bytes() else { return };
            let Some((ticket, id)) = self.tickets_lock().issue(Instant::now(), random) else { return };
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, Waiter::Standby(tenant.to_string(), epoch));
            let open = OpenStream {
                ticket: ticket.clone(),
                service: String::new(),
                client_addr: String::new(),
                relay_addr: None,
                data_port: self.data_port.load(Ordering::Relaxed),
                standby: true,
            };
            if self.control.send_open_stream(tenant, open).is_err() {
                self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                self.tickets_lock().cancel(Instant::now(), &ticket);
                return;
            }
            pool.requested.push_back(Instant::now());
        }
    }

    /// Asks the tenant's connector for a data connection; waits for it.
    async fn open_stream(
        &self,
        tenant: &str,
        service: &str,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Option<TcpStream> {
        let Some(random) = random_ticket_bytes() else {
            self.reject(Rejection::ConnectorBusy);
            return None;
        };
        let Some((ticket, id)) = self.tickets_lock().issue(Instant::now(), random) else {
            self.reject(Rejection::ConnectorBusy);
            return None;
        };
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Waiter::Endpoint(tx));
        let open = OpenStream {
            ticket: ticket.clone(),
            service: service.to_string(),
            client_addr: peer.to_string(),
            relay_addr: local.map(|a| a.to_string()),
            data_port: self.data_port.load(Ordering::Relaxed),
            standby: false,
        };
        let sent = self.control.send_open_stream(tenant, open);
        let data = match sent {
            Err(e) => Err(Rejection::from(e)),
            Ok(()) => match tokio::time::timeout(self.config.ticket_ttl, rx).await {
                Ok(Ok(data)) => Ok(data),
                _ => Err(Rejection::ConnectorTimeout),
            },
        };
        if data.is_err() {
            self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            self.tickets_lock().cancel(Instant::now(), &ticket);
        }
        match data {
            Ok(d) => Some(d),
            Err(reason) => {
                self.reject(reason);
                tracing::info!(tenant, service, reason = reason.as_str(), "tunnel: no stream from the connector");
                None
            }
        }
    }

    async fn run_tunnel(&self, client: TcpStream, mut data: TcpStream, hello: &[u8], tenant: &str, peer: SocketAddr) {
        let _ = data.set_nodelay(true);
        if !write_bounded(&mut data, hello, self.config.hello_timeout).await {
            self.counters.ended[2].fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters.bytes.a_to_b.fetch_add(hello.len() as u64, Ordering::Relaxed);
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(tenant, peer = %self.shown(peer), "tunnel: open");
        let this = PumpCounters::default();
        let end = pump(client, data, self.config.pump, self.config.idle_timeout, &[&self.counters.bytes, &this]).await;
        // The PBX answered through it: the endpoint has earned a place in
        // the share kept for known sources (a hello alone, which anyone can
        // send, earns nothing).
        if this.b_to_a.load(Ordering::Relaxed) > 0 {
            self.known_endpoints.remember(Instant::now(), peer.ip());
        }
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
        let i = match end {
            PumpEnd::Closed => 0,
            PumpEnd::Idle => 1,
            PumpEnd::Error => 2,
        };
        self.counters.ended[i].fetch_add(1, Ordering::Relaxed);
    }

    async fn handle_data(self: Arc<Self>, mut tcp: TcpStream, peer: SocketAddr, guard: CapGuard) {
        let _ = tcp.set_nodelay(true);
        let attach = read_single_frame(&mut tcp, FrameType::Attach, MAX_ATTACH);
        let ticket = match tokio::time::timeout(self.config.hello_timeout, attach).await {
            Err(_) => Err(Rejection::DataTimeout),
            Ok(Ok(Message::Attach(a))) => Ok(a.ticket),
            Ok(_) => Err(Rejection::DataBadFrame),
        };
        let redeemed = ticket.and_then(|t| self.tickets_lock().redeem(Instant::now(), &t).map_err(Rejection::from));
        let id = match redeemed {
            Ok(id) => id,
            Err(reason) => {
                self.reject(reason);
                tracing::info!(peer = %self.shown(peer), reason = reason.as_str(), "tunnel: data connection refused");
                return;
            }
        };
        drop(guard);
        let waiter = self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match waiter {
            Some(Waiter::Endpoint(w)) => {
                let _ = w.send(tcp); // the endpoint may have gone: then the stream closes
            }
            Some(Waiter::Standby(tenant, epoch)) => {
                let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
                let pool = pools.entry(tenant).or_default();
                pool.requested.pop_front();
                pool.ready.push_back((tcp, Instant::now(), epoch));
            }
            None => {}
        }
    }
}

/// Whether the peer has closed (or sent something unexpected on) an idle
/// standby connection.
fn closed(s: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    !matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Writes `bytes` within `timeout`; `false` if it failed or the peer did
/// not take them in time (a peer that never reads must not hold a task).
async fn write_bounded(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, stream.write_all(bytes)).await, Ok(Ok(())))
}
