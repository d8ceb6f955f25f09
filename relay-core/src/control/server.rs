//! The relay side of the control channel: a TLS 1.2/1.3 listener that
//! authenticates connectors and serves their requests against a
//! [`RelayHandle`].
//!
//! Per connection: accept only within the unauthenticated caps (per source
//! IP and total); TLS handshake within `handshake_timeout`; a `hello` within
//! `auth_timeout`, checked by the [`Authenticator`] (constant-time, lockouts
//! per source, a delay after each failure); then the second-connector policy;
//! then requests until the channel closes or falls silent for three
//! heartbeat intervals. A tenant whose connector stays away longer than
//! `grace` has its sessions released. Every refusal is counted by reason.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_rustls::TlsAcceptor;

use super::auth::{AuthOutcome, AuthPolicy, Authenticator};
use super::caps::{CapGuard, ConnCaps, KnownSources};
use super::frame::{Frame, FrameDecoder, FrameError};
use super::heartbeat::{Heartbeat, HeartbeatAction};
use super::messages::{
    ErrorMessage, Heartbeat as HeartbeatMessage, Hello, HelloResult, Message, OpenStream, RelayLoad, Reply,
    TurnCredentials, TurnCredentialsIssued,
};
use super::registry::Registry;
use super::stream::stopped;
use super::turn_credentials::{check_lifetime, check_user, IssueError, TurnCredentialIssuer};
use crate::api::{parse_session_id, AllocationReply, FieldError, SessionRequest, UpdateRequest};
use crate::codes::ErrorCode;
use crate::io::accept::accept_or_back_off;
use crate::tls::{server_config, ReloadableCert, TlsError};
use crate::{RelayError, RelayHandle, SessionId};

/// What to do when a second connector authenticates for a tenant that
/// already has one (a reconnect of the *same* `connector_id` always
/// replaces: the old channel is presumed dead).
pub use super::registry::SecondConnector;

/// Control listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed, after TLS, for the `hello`.
    pub auth_timeout: Duration,
    /// Heartbeat interval; a channel silent for three is closed.
    pub heartbeat: Duration,
    /// Time allowed for one frame to be written (a peer that does not read
    /// is dropped).
    pub write_timeout: Duration,
    /// Connections not yet authenticated, per source IP.
    pub max_unauthenticated_per_ip: usize,
    /// Connections not yet authenticated, in total.
    pub max_unauthenticated: usize,
    /// Second-connector policy.
    pub second_connector: SecondConnector,
    /// How long a tenant's sessions outlive its connector.
    pub grace: Duration,
    /// Lockout policy.
    pub auth: AuthPolicy,
    /// Write `redacted` instead of peer addresses in logs.
    pub redact_addresses: bool,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_unauthenticated_per_ip: 8,
            max_unauthenticated: 1024,
            second_connector: SecondConnector::Replace,
            grace: Duration::from_secs(120),
            auth: AuthPolicy::default(),
            redact_addresses: false,
        }
    }
}

/// A tenant as the control listener knows it.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantCredentials {
    /// Tenant id.
    pub id: String,
    /// SHA-256 of its token (the token itself is never stored).
    pub token_sha256: [u8; 32],
    /// Services its connector may expose (tunnel service names).
    pub services: Vec<String>,
}

impl std::fmt::Debug for TenantCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCredentials")
            .field("id", &self.id)
            .field("token_sha256", &"<masked>")
            .field("services", &self.services)
            .finish()
    }
}

macro_rules! counters {
    ($(#[doc = $doc:literal] $name:ident,)*) => {
        #[derive(Debug, Default)]
        struct Counters { $($name: AtomicU64,)* }

        /// Control-listener counters (totals since start, plus two gauges).
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct ControlStats {
            $(#[doc = $doc] pub $name: u64,)*
            /// Connectors authenticated now.
            pub connectors_active: u64,
            /// Connections not yet authenticated now.
            pub unauthenticated: u64,
        }

        impl Counters {
            fn snapshot(&self) -> ControlStats {
                ControlStats { $($name: self.$name.load(Ordering::Relaxed),)* ..ControlStats::default() }
            }
        }

        impl ControlStats {
            /// Every counter as (name, value), for exporters.
            pub fn counters(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// TCP connections accepted.
    connections_accepted,
    /// Refused at accept: the source's unauthenticated cap was full.
    rejected_per_ip_cap,
    /// Refused at accept: the total unauthenticated cap was full.
    rejected_total_cap,
    /// TLS handshakes that failed (plaintext, TLS ≤ 1.1, bad records).
    tls_failures,
    /// TLS handshakes that did not finish in time (stalled clients).
    handshake_timeouts,
    /// Channels that sent no `hello` in time.
    auth_timeouts,
    /// Channels whose first frame was not a valid `hello`.
    hello_protocol_errors,
    /// Successful authentications.
    auth_ok,
    /// Wrong token or unknown tenant.
    auth_bad_credentials,
    /// Refused because the source is locked out.
    auth_locked_out,
    /// Refused: hello asked for a service the tenant may not expose.
    auth_unknown_service,
    /// Refused: unsupported protocol version in hello.
    auth_unsupported_version,
    /// Second connectors refused (policy `reject`).
    duplicates_rejected,
    /// Connectors replaced by a newcomer.
    replaced,
    /// Channels closed for a protocol error after authentication.
    protocol_errors,
    /// Channels closed after three silent heartbeat intervals.
    heartbeat_timeouts,
    /// Requests served (allocate, update, release, turn_credentials).
    requests,
    /// Requests that failed (bad body, foreign session, relay error).
    request_errors,
    /// Sessions released because their tenant's connector stayed away past the grace period.
    grace_released_sessions,
    /// Load probes answered (a connector choosing among several relays).
    probes,
    /// Connectors refused because this relay is a cluster standby.
    standby_refused,
    /// TURN credentials issued to connectors.
    turn_credentials_issued,
}

/// One authenticated connector, as listed by [`ControlServer::connectors`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorInfo {
    /// Tenant.
    pub tenant: String,
    /// The connector's own id.
    pub connector_id: String,
    /// Its address.
    pub peer: SocketAddr,
    /// Services it exposes.
    pub services: Vec<String>,
    /// How long it has been connected.
    pub connected_for: Duration,
}

/// The server's handle on one connector's channel.
struct Channel {
    /// Closes the channel with a code (`replaced`, `tenant_removed`).
    kill: Option<oneshot::Sender<ErrorCode>>,
    outbox: mpsc::Sender<Message>,
}

impl Channel {
    fn kill(&mut self, code: ErrorCode) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(code);
        }
    }
}

struct Inner {
    config: ControlConfig,
    acceptor: TlsAcceptor,
    cert: Arc<ReloadableCert>,
    auth: Mutex<Authenticator>,
    tenants: RwLock<HashMap<String, TenantCredentials>>,
    relay: RelayHandle,
    caps: ConnCaps,
    /// Sources whose connector logged in recently: they may use the
    /// capacity reserved for known sources, here and on the tunnels' data
    /// listener.
    known: KnownSources,
    registry: Mutex<Registry<Channel>>,
    /// Wakes the grace task when a tenant's connector leaves.
    grace_changed: Notify,
    /// Whether the grace task runs (started by the first `serve`).
    grace_running: std::sync::atomic::AtomicBool,
    counters: Counters,
    shutdown: watch::Sender<bool>,
    /// Issues TURN credentials (set when the relay serves TURN).
    turn_issuer: RwLock<Option<Arc<dyn TurnCredentialIssuer>>>,
}

/// The control listener. Cheap to clone; every clone is the same server.
#[derive(Clone)]
pub struct ControlServer {
    inner: Arc<Inner>,
}

/// Why a connector could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReachError {
    /// The tenant has no connector now.
    #[error("tenant has no connector")]
    NoConnector,
    /// The connector does not expose this service.
    #[error("connector does not expose this service")]
    NoService,
    /// Its outbound queue is full.
    #[error("connector busy")]
    Busy,
}

const OUTBOX: usize = 256;
/// How long a source whose connector logged in stays known.
const KNOWN_SOURCE_TTL: Duration = Duration::from_secs(24 * 3600);

impl ControlServer {
    /// A server for `tenants`, presenting `cert`, acting on `relay`.
    pub fn new(
        config: ControlConfig,
        cert: Arc<ReloadableCert>,
        tenants: Vec<TenantCredentials>,
        relay: RelayHandle,
    ) -> Result<Self, TlsError> {
        let acceptor = TlsAcceptor::from(server_config(cert.clone())?);
        let auth = Authenticator::new(config.auth, tenants.iter().map(|t| (t.id.clone(), t.token_sha256)));
        let caps = ConnCaps::new(config.max_unauthenticated_per_ip, config.max_unauthenticated);
        let tenants = tenants.into_iter().map(|t| (t.id.clone(), t)).collect();
        let registry = Registry::new(config.grace, config.second_connector);
        let server = Self {
            inner: Arc::new(Inner {
                config,
                acceptor,
                cert,
                auth: Mutex::new(auth),
                tenants: RwLock::new(tenants),
                relay,
                caps,
                known: KnownSources::new(KNOWN_SOURCE_TTL, 65_536),
                registry: Mutex::new(registry),
                grace_changed: Notify::new(),
                grace_running: std::sync::atomic::AtomicBool::new(false),
                counters: Counters::default(),
                shutdown: watch::channel(false).0,
                turn_issuer: RwLock::new(None),
            }),
        };
        Ok(server)
    }

    /// Lets connectors ask for TURN credentials for their clients
    /// (`turn_credentials`), or replaces the issuer (a configuration
    /// reload: new realms or secrets); without an issuer they are refused
    /// with `turn_not_configured`.
    pub fn set_turn_issuer(&self, issuer: Arc<dyn TurnCredentialIssuer>) {
        *self.inner.turn_issuer.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(issuer);
    }

    /// Replaces the tenant list (configuration reload). Connectors of
    /// removed tenants are closed; connectors whose token changed stay
    /// connected (rotation without an outage) and use the new token on their
    /// next connect. Failure history is kept.
    pub fn replace_tenants(&self, tenants: Vec<TenantCredentials>) {
        self.inner.auth_lock().replace_tenants(tenants.iter().map(|t| (t.id.clone(), t.token_sha256)));
        let ids: HashMap<String, TenantCredentials> = tenants.into_iter().map(|t| (t.id.clone(), t)).collect();
        let mut reg = self.inner.registry_lock();
        let removed: Vec<String> = reg.iter().map(|(t, _)| t.clone()).filter(|t| !ids.contains_key(t)).collect();
        for tenant in removed {
            if let Some(mut entry) = reg.remove_tenant(&tenant) {
                entry.handle.kill(ErrorCode::TenantRemoved);
            }
        }
        drop(reg);
        *self.inner.tenants.write().unwrap_or_else(|p| p.into_inner()) = ids;
    }

    /// Whether a connector logged in from `ip` (its IPv4 address or IPv6
    /// /64) within the last day: such sources may use reserved capacity.
    pub fn is_known_source(&self, ip: std::net::IpAddr) -> bool {
        self.inner.known.knows(tokio_now(), ip)
    }

    /// The certificate holder (swap it to reload the certificate).
    pub fn certificate(&self) -> &Arc<ReloadableCert> {
        &self.inner.cert
    }

    /// Counter snapshot.
    pub fn stats(&self) -> ControlStats {
        let mut s = self.inner.counters.snapshot();
        s.connectors_active = self.inner.registry_lock().len() as u64;
        s.unauthenticated = self.inner.caps.pending() as u64;
        s
    }

    /// Connectors authenticated now, by tenant.
    pub fn connectors(&self) -> Vec<ConnectorInfo> {
        let reg = self.inner.registry_lock();
        let mut v: Vec<ConnectorInfo> = reg
            .iter()
            .map(|(tenant, a)| ConnectorInfo {
                tenant: tenant.clone(),
                connector_id: a.connector_id.clone(),
                peer: a.peer,
                services: a.services.clone(),
                connected_for: a.since.elapsed(),
            })
            .collect();
        v.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        v
    }

    /// Asks `tenant`'s connector to open a stream for `service` (tunnels),
    /// or a standby stream (`open.standby`, any service the connector has).
    pub fn send_open_stream(&self, tenant: &str, open: OpenStream) -> Result<(), ReachError> {
        let reg = self.inner.registry_lock();
        let a = reg.get(tenant).ok_or(ReachError::NoConnector)?;
        if !open.standby && !a.services.contains(&open.service) {
            return Err(ReachError::NoService);
        }
        a.handle.outbox.try_send(Message::OpenStream(open)).map_err(|_| ReachError::Busy)
    }

    /// An id of `tenant`'s current connector channel (changes on every
    /// reconnect or replacement), if it has one.
    pub fn connector_epoch(&self, tenant: &str) -> Option<u64> {
        self.inner.registry_lock().get(tenant).map(|a| a.epoch)
    }

    /// Whether `tenant`'s connector is here and exposes `service`; if so,
    /// the id of its channel (as [`connector_epoch`](Self::connector_epoch)).
    pub fn exposes(&self, tenant: &str, service: &str) -> Result<u64, ReachError> {
        let reg = self.inner.registry_lock();
        let a = reg.get(tenant).ok_or(ReachError::NoConnector)?;
        if a.services.iter().any(|s| s == service) {
            Ok(a.epoch)
        } else {
            Err(ReachError::NoService)
        }
    }

    /// Closes every channel and stops [`serve`](Self::serve).
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Accepts connections on `listener` until [`shutdown`](Self::shutdown)
    /// or `stop` resolves.
    pub async fn serve(&self, listener: TcpListener, stop: impl Future<Output = ()>) -> std::io::Result<()> {
        if !self.inner.grace_running.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.inner.clone().run_grace());
        }
        let mut shutdown = self.inner.shutdown.subscribe();
        let mut housekeeping = tokio::time::interval(Duration::from_secs(30));
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = stopped(&mut shutdown) => break,
                _ = housekeeping.tick() => self.inner.auth_lock().handle_timeout(tokio_now()),
                accepted = accept_or_back_off(&listener, "control") => {
                    let Some((tcp, peer)) = accepted else { continue };
                    self.inner.counters.connections_accepted.fetch_add(1, Ordering::Relaxed);
                    let known = self.inner.known.knows(tokio_now(), peer.ip());
                    match self.inner.caps.try_acquire(peer.ip(), known) {
                        Ok(guard) => {
                            let inner = self.inner.clone();
                            tokio::spawn(async move { inner.handle_connection(tcp, peer, guard).await });
                        }
                        Err(reason) => {
                            let c = match reason {
                                super::caps::CapRejection::PerIp => &self.inner.counters.rejected_per_ip_cap,
                                super::caps::CapRejection::Total => &self.inner.counters.rejected_total_cap,
                            };
                            c.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(peer = %self.inner.shown(peer), reason = reason.as_str(), "control connection refused");
                        }
                    }
                }
            }
        }
        self.shutdown();
        Ok(())
    }
}

/// How a channel ended (for logs).
enum Ending {
    Closed,
    Killed(ErrorCode),
    Protocol(ErrorCode),
    Silent,
    Io,
    Shutdown,
}

impl Inner {
    fn auth_lock(&self) -> std::sync::MutexGuard<'_, Authenticator> {
        self.auth.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn registry_lock(&self) -> std::sync::MutexGuard<'_, Registry<Channel>> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn shown(&self, addr: SocketAddr) -> String {
        if self.config.redact_addresses {
            "redacted".into()
        } else {
            addr.to_string()
        }
    }

    async fn handle_connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, guard: CapGuard) {
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(self.config.handshake_timeout, self.acceptor.accept(tcp)).await {
            Err(_) => {
                self.counters.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(peer = %self.shown(peer), "control: TLS handshake timed out");
                return;
            }
            Ok(Err(e)) => {
                self.counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(peer = %self.shown(peer), error = %e, "control: TLS handshake failed");
                return;
            }
            Ok(Ok(s)) => s,
        };
        let (mut reader, mut writer) = tokio::io::split(tls);
        let mut decoder = FrameDecoder::new();
        let first = tokio::time::timeout(self.config.auth_timeout, read_frame(&mut reader, &mut decoder)).await;
        let hello = match first {
            Err(_) => {
                self.counters.auth_timeouts.fetch_add(1, Ordering::Relaxed);
                let _ = self.send_error(&mut writer, ErrorCode::Timeout, "no hello within the auth timeout").await;
                return;
            }
            Ok(Err(ReadError::Frame(e))) => {
                self.counters.hello_protocol_errors.fetch_add(1, Ordering::Relaxed);
                let _ = self.send_error(&mut writer, e.code(), &e.to_string()).await;
                return;
            }
            Ok(Err(ReadError::Closed | ReadError::Io)) => return,
            Ok(Ok(frame)) => match Message::decode(&frame) {
                Ok(Message::Hello(h)) => h,
                Ok(_) => {
                    self.counters.hello_protocol_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = self
                        .send_error(&mut writer, ErrorCode::NotAuthenticated, "the first frame must be hello")
                        .await;
                    return;
                }
                Err(e) => {
                    self.counters.hello_protocol_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = self.send_error(&mut writer, ErrorCode::BadMessage, &e.to_string()).await;
                    return;
                }
            },
        };
        let Some(registration) = self.authenticate(&mut writer, peer, &hello, guard).await else {
            let _ = writer.shutdown().await;
            return;
        };
        let epoch = registration.epoch;
        let ending = self.run_channel(reader, writer, decoder, &hello.tenant, registration).await;
        let why = match ending {
            Ending::Closed => "closed by connector",
            Ending::Killed(r) => r.as_str(),
            Ending::Protocol(code) => code.as_str(),
            Ending::Silent => "heartbeat timeout",
            Ending::Io => "connection error",
            Ending::Shutdown => "relay shutting down",
        };
        tracing::info!(tenant = %hello.tenant, peer = %self.shown(peer), reason = why, "control: connector disconnected");
        self.unregister(&hello.tenant, epoch);
    }

    /// Checks the hello; on success registers the connector and answers ok.
    async fn authenticate<W: AsyncWrite + Unpin>(
        self: &Arc<Self>,
        writer: &mut W,
        peer: SocketAddr,
        hello: &Hello,
        guard: super::caps::CapGuard,
    ) -> Option<Registration> {
        let refuse = |code: ErrorCode, message: &str| {
            Message::HelloResult(HelloResult {
                ok: false,
                code: Some(code.as_str().into()),
                message: Some(message.into()),
                heartbeat_secs: None,
                load: None,
            })
        };
        if hello.version != u32::from(super::frame::VERSION) {
            self.counters.auth_unsupported_version.fetch_add(1, Ordering::Relaxed);
            let _ = self
                .write(writer, &refuse(ErrorCode::UnsupportedVersion, "this relay speaks protocol version 1"))
                .await;
            return None;
        }
        let outcome = self.auth_lock().handle_hello(tokio_now(), peer.ip(), &hello.tenant, &hello.token);
        if let AuthOutcome::Rejected { code, delay } = outcome {
            let counter = if code == ErrorCode::LockedOut {
                &self.counters.auth_locked_out
            } else {
                &self.counters.auth_bad_credentials
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tenant = %hello.tenant, peer = %self.shown(peer), code = code.as_str(), "control: authentication refused");
            tokio::time::sleep(delay).await;
            let message = if code == ErrorCode::LockedOut {
                "too many failed attempts from this address; try later"
            } else {
                "unknown tenant or wrong token"
            };
            let _ = self.write(writer, &refuse(code, message)).await;
            return None;
        }
        self.known.remember(tokio_now(), peer.ip());
        let allowed = self.tenants.read().unwrap_or_else(|p| p.into_inner()).get(&hello.tenant).cloned();
        let Some(tenant) = allowed else {
            return None; // removed by a reload between the two checks
        };
        if hello.probe {
            // Authenticated, so the load is not shown to strangers.
            self.counters.probes.fetch_add(1, Ordering::Relaxed);
            let load = self.load().await;
            let (ok, code, message) = match load {
                Some(_) => (true, None, None),
                None => {
                    (false, Some(ErrorCode::Standby.as_str().into()), Some("a cluster standby serves nothing".into()))
                }
            };
            let answer = Message::HelloResult(HelloResult { ok, code, message, heartbeat_secs: None, load });
            let _ = self.write(writer, &answer).await;
            return None;
        }
        if self.relay.is_standby() {
            self.counters.standby_refused.fetch_add(1, Ordering::Relaxed);
            let _ = self
                .write(writer, &refuse(ErrorCode::Standby, "this relay is a cluster standby: another node serves"))
                .await;
            return None;
        }
        if let Some(bad) = hello.services.iter().find(|s| !tenant.services.contains(s)) {
            self.counters.auth_unknown_service.fetch_add(1, Ordering::Relaxed);
            let _ = self
                .write(writer, &refuse(ErrorCode::UnknownService, &format!("service {bad:?} is not allowed")))
                .await;
            return None;
        }
        let registration = match self.register(hello, peer) {
            Ok(r) => r,
            Err(()) => {
                self.counters.duplicates_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tenant = %hello.tenant, peer = %self.shown(peer), "control: second connector refused");
                let _ = self.write(writer, &refuse(ErrorCode::Duplicate, "this tenant already has a connector")).await;
                return None;
            }
        };
        self.counters.auth_ok.fetch_add(1, Ordering::Relaxed);
        // Its place among the unauthenticated is free before it is told:
        // a connector that hears "ok" never finds itself still counted.
        drop(guard);
        tracing::info!(tenant = %hello.tenant, connector = %hello.connector_id, peer = %self.shown(peer), "control: connector authenticated");
        let ok = Message::HelloResult(HelloResult {
            ok: true,
            code: None,
            message: None,
            heartbeat_secs: Some(self.config.heartbeat.as_secs().max(1) as u32),
            load: self.load().await,
        });
        if self.write(writer, &ok).await.is_err() {
            self.unregister(&hello.tenant, registration.epoch);
            return None;
        }
        Some(registration)
    }

    /// The relay's load for `hello_result`; `None` on a cluster standby.
    async fn load(&self) -> Option<RelayLoad> {
        if self.relay.is_standby() {
            return None;
        }
        let c = self.relay.counters().await.ok()?.total;
        Some(RelayLoad { sessions: c.sessions_active, ports_in_use: c.ports_in_use, ports_total: c.ports_total })
    }

    fn register(&self, hello: &Hello, peer: SocketAddr) -> Result<Registration, ()> {
        let (kill_tx, kill_rx) = oneshot::channel();
        let (out_tx, out_rx) = mpsc::channel(OUTBOX);
        let channel = Channel { kill: Some(kill_tx), outbox: out_tx };
        let registered = self
            .registry_lock()
            .handle_register(tokio_now(), &hello.tenant, &hello.connector_id, peer, hello.services.clone(), channel)
            .map_err(|_| ())?;
        if let Some(mut old) = registered.replaced {
            old.handle.kill(ErrorCode::Replaced);
            self.counters.replaced.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tenant = %hello.tenant, old = %self.shown(old.peer), new = %self.shown(peer), "control: connector replaced");
        }
        Ok(Registration { epoch: registered.epoch, kill: kill_rx, outbox: out_rx })
    }

    fn unregister(&self, tenant: &str, epoch: u64) {
        if self.registry_lock().handle_leave(tokio_now(), tenant, epoch) {
            self.grace_changed.notify_one();
        }
    }

    /// Releases the sessions of tenants whose connector stayed away past the
    /// grace period (the registry says when), until shutdown.
    async fn run_grace(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let next = self.registry_lock().poll_timeout();
            let wait = async {
                match next {
                    Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = self.grace_changed.notified() => continue,
                _ = stopped(&mut shutdown) => return,
            }
            let due = self.registry_lock().handle_timeout(tokio_now());
            for tenant in due {
                let n = self.release_tenant_sessions(&tenant).await;
                self.counters.grace_released_sessions.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(tenant = %tenant, sessions = n, "control: connector away past the grace period; sessions released");
            }
        }
    }

    async fn release_tenant_sessions(&self, tenant: &str) -> u64 {
        let mut ids = Vec::new();
        let mut after = None;
        loop {
            let Ok(page) = self.relay.list(after, 1000).await else { break };
            ids.extend(page.sessions.iter().filter(|s| s.tenant == tenant).map(|s| s.id));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let mut released = 0;
        for id in ids {
            if self.relay.release(id).await.is_ok() {
                released += 1;
            }
        }
        released
    }

    async fn run_channel<R, W>(
        &self,
        mut reader: R,
        mut writer: W,
        mut decoder: FrameDecoder,
        tenant: &str,
        mut registration: Registration,
    ) -> Ending
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut heartbeat = Heartbeat::new(tokio_now(), self.config.heartbeat);
        let mut shutdown = self.shutdown.subscribe();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // Frames already buffered first (several may arrive in one read).
            match decoder.poll_frame() {
                Ok(Some(frame)) => {
                    heartbeat.handle_received(tokio_now());
                    match self.handle_frame(tenant, &frame).await {
                        Ok(Some(reply)) => {
                            if self.write(&mut writer, &reply).await.is_err() {
                                return Ending::Io;
                            }
                        }
                        Ok(None) => {}
                        Err((code, message)) => {
                            self.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                            let _ = self.send_error(&mut writer, code, &message).await;
                            return Ending::Protocol(code);
                        }
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.counters.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = self.send_error(&mut writer, e.code(), &e.to_string()).await;
                    return Ending::Protocol(e.code());
                }
            }
            tokio::select! {
                n = reader.read(&mut buf) => match n {
                    Ok(0) => return Ending::Closed,
                    Ok(n) => decoder.handle_bytes(&buf[..n]),
                    Err(_) => return Ending::Io,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(heartbeat.poll_timeout())) => {
                    match heartbeat.handle_timeout(tokio_now()) {
                        HeartbeatAction::Dead => {
                            self.counters.heartbeat_timeouts.fetch_add(1, Ordering::Relaxed);
                            let _ = self.send_error(&mut writer, ErrorCode::Timeout, "no frame for three heartbeat intervals").await;
                            return Ending::Silent;
                        }
                        HeartbeatAction::Send(seq) => {
                            if self.write(&mut writer, &Message::Heartbeat(HeartbeatMessage { seq })).await.is_err() {
                                return Ending::Io;
                            }
                        }
                        HeartbeatAction::Wait => {}
                    }
                }
                Some(out) = registration.outbox.recv() => {
                    if self.write(&mut writer, &out).await.is_err() {
                        return Ending::Io;
                    }
                }
                reason = &mut registration.kill => {
                    let reason = reason.unwrap_or(ErrorCode::Replaced);
                    let message = match reason {
                        ErrorCode::TenantRemoved => "the tenant was removed from the relay's configuration",
                        _ => "another connector took over this tenant",
                    };
                    let _ = self.send_error(&mut writer, reason, message).await;
                    let _ = writer.shutdown().await;
                    return Ending::Killed(reason);
                }
                _ = stopped(&mut shutdown) => {
                    let _ = self.send_error(&mut writer, ErrorCode::Shutdown, "the relay is shutting down").await;
                    let _ = writer.shutdown().await;
                    return Ending::Shutdown;
                }
            }
        }
    }

    /// Serves one frame: `Ok(Some(reply))`, `Ok(None)` (nothing to answer),
    /// or a protocol error that closes the channel.
    async fn handle_frame(&self, tenant: &str, frame: &Frame) -> Result<Option<Message>, (ErrorCode, String)> {
        let msg = Message::decode(frame).map_err(|e| (ErrorCode::BadMessage, e.to_string()))?;
        Ok(match msg {
            Message::Heartbeat(h) => Some(Message::HeartbeatAck(h)),
            Message::HeartbeatAck(_) => None,
            Message::Error(e) => {
                tracing::info!(tenant, code = %e.code, "control: connector reported an error");
                None
            }
            Message::Allocate(a) => {
                let reply = self.allocate(tenant, a.session).await;
                Some(Message::Allocated(self.finish(a.request_id, reply)))
            }
            Message::Update(u) => {
                let reply = self.update(tenant, &u.id, u.update).await;
                Some(Message::Updated(self.finish(u.request_id, reply)))
            }
            Message::Release(r) => {
                let reply = self.release(tenant, &r.id).await;
                Some(Message::Released(self.finish(r.request_id, reply)))
            }
            Message::TurnCredentials(t) => Some(Message::TurnCredentialsIssued(self.turn_credentials(tenant, &t))),
            other => {
                return Err((
                    ErrorCode::UnexpectedFrame,
                    format!("a connector does not send {}", other.encode().kind.as_str()),
                ))
            }
        })
    }

    fn finish(&self, request_id: u64, r: Result<Reply, FieldError>) -> Reply {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(mut reply) => {
                reply.request_id = request_id;
                reply
            }
            Err(e) => {
                self.counters.request_errors.fetch_add(1, Ordering::Relaxed);
                Reply {
                    request_id,
                    ok: false,
                    id: None,
                    pbx: None,
                    endpoint: None,
                    code: Some(e.code.as_str().into()),
                    message: Some(e.message),
                }
            }
        }
    }

    async fn allocate(&self, tenant: &str, body: serde_json::Value) -> Result<Reply, FieldError> {
        let req: SessionRequest = serde_json::from_value(body).map_err(body_error)?;
        let spec = req.to_spec_for_channel(tenant)?;
        let a = self.relay.allocate_committed(spec).await.map_err(relay_error)?;
        let a = AllocationReply::of(&a);
        Ok(Reply { id: Some(a.id), pbx: Some(a.pbx), endpoint: Some(a.endpoint), ..ok_reply() })
    }

    async fn update(&self, tenant: &str, id: &str, body: serde_json::Value) -> Result<Reply, FieldError> {
        let id = self.owned(tenant, id).await?;
        let req: UpdateRequest = serde_json::from_value(body).map_err(body_error)?;
        self.relay.update_committed(id, req.to_update()?).await.map_err(relay_error)?;
        Ok(ok_reply())
    }

    async fn release(&self, tenant: &str, id: &str) -> Result<Reply, FieldError> {
        let id = self.owned(tenant, id).await?;
        self.relay.release(id).await.map_err(relay_error)?;
        Ok(ok_reply())
    }

    /// TURN credentials for one of `tenant`'s clients. Never logs the
    /// password; counted as a request (and an error when refused).
    fn turn_credentials(&self, tenant: &str, request: &TurnCredentials) -> TurnCredentialsIssued {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let issued = check_user(&request.user).and_then(|()| {
            let lifetime = check_lifetime(request.lifetime_secs)?;
            let issuer = self
                .turn_issuer
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .ok_or(IssueError::NotConfigured)?;
            let now_unix =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            issuer.issue(tenant, &request.user, lifetime, now_unix)
        });
        let mut reply = TurnCredentialsIssued {
            request_id: request.request_id,
            ok: false,
            username: None,
            password: None,
            realm: None,
            ttl_secs: None,
            uris: Vec::new(),
            code: None,
            message: None,
        };
        match issued {
            Ok(c) => {
                self.counters.turn_credentials_issued.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(tenant, username = %c.username, "control: TURN credentials issued");
                reply.ok = true;
                reply.username = Some(c.username);
                reply.password = Some(c.password);
                reply.realm = Some(c.realm);
                reply.ttl_secs = Some(c.ttl.as_secs());
                reply.uris = c.uris;
            }
            Err(e) => {
                self.counters.request_errors.fetch_add(1, Ordering::Relaxed);
                reply.code = Some(e.code().as_str().into());
                reply.message = Some(e.to_string());
            }
        }
        reply
    }

    /// The session id, if the session exists and belongs to `tenant`. A
    /// session of another tenant is reported exactly like a missing one.
    async fn owned(&self, tenant: &str, id: &str) -> Result<SessionId, FieldError> {
        let id = parse_session_id(id)?;
        match self.relay.session(id).await {
            Ok(info) if info.tenant == tenant => Ok(id),
            Ok(_) => Err(relay_error(RelayError::UnknownSession(id))),
            Err(e) => Err(relay_error(e)),
        }
    }

    async fn write<W: AsyncWrite + Unpin>(&self, writer: &mut W, msg: &Message) -> std::io::Result<()> {
        let bytes = msg.encode().encode();
        match tokio::time::timeout(self.config.write_timeout, async {
            writer.write_all(&bytes).await?;
            writer.flush().await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    async fn send_error<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        code: ErrorCode,
        message: &str,
    ) -> std::io::Result<()> {
        let e = Message::Error(ErrorMessage { code: code.as_str().into(), message: message.into(), request_id: None });
        self.write(writer, &e).await?;
        writer.shutdown().await
    }
}

struct Registration {
    epoch: u64,
    kill: oneshot::Receiver<ErrorCode>,
    outbox: mpsc::Receiver<Message>,
}

fn ok_reply() -> Reply {
    Reply { request_id: 0, ok: true, id: None, pbx: None, endpoint: None, code: None, message: None }
}

fn body_error(e: serde_json::Error) -> FieldError {
    FieldError { code: ErrorCode::InvalidJson, message: format!("{:?} error at column {}", e.classify(), e.column()) }
}

fn relay_error(e: RelayError) -> FieldError {
    FieldError { code: e.code(), message: e.to_string() }
}

enum ReadError {
    Closed,
    Io,
    Frame(FrameError),
}

async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, decoder: &mut FrameDecoder) -> Result<Frame, ReadError> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(f) = decoder.poll_frame().map_err(ReadError::Frame)? {
            return Ok(f);
        }
        match reader.read(&mut buf).await {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => decoder.handle_bytes(&buf[..n]),
            Err(_) => return Err(ReadError::Io),
        }
    }
}

/// Now, on tokio's clock: the registry's grace timers and the heartbeat
/// follow tokio's paused time in tests, like the timers that wake them.
fn tokio_now() -> Instant {
    tokio::time::Instant::now().into_std()
}
