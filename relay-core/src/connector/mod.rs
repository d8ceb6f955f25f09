//! The PBX-side connector (tokio): keeps one authenticated TLS control
//! channel to the relay, reconnects with exponential backoff and jitter,
//! re-registers, and lets the PBX allocate, update and release media
//! sessions through it.
//!
//! Media never passes through the connector: sessions forward on the relay
//! whether the channel is up or not. If the connector stays away longer than
//! the relay's grace period, the relay releases the tenant's sessions.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use relay_core::api::{SessionRequest, SrtpAuthKeys};
//! use relay_core::connector::{Connector, ConnectorConfig};
//! use relay_core::tls::ClientTrust;
//!
//! let connector = Connector::start(ConnectorConfig::new(
//!     "relay.example.net:7443",
//!     "relay.example.net",
//!     ClientTrust::CaPem(std::fs::read("/etc/ssl/certs/ca-certificates.crt")?),
//!     "acme",
//!     std::fs::read_to_string("/etc/ucmrc/acme.token")?.trim(),
//! ))?;
//! let handle = connector.handle();
//! // SDES keys from the PBX's and the phone's SDP: the relay only gets the
//! // derived *authentication* keys and latches on packets that prove them.
//! let (pbx_key, pbx_salt) = ([1u8; 16], [2u8; 14]);
//! let (phone_key, phone_salt) = ([3u8; 16], [4u8; 14]);
//! let session = handle
//!     .allocate(SessionRequest::default().with_srtp_auth(
//!         SrtpAuthKeys::from_master(&pbx_key, &pbx_salt, 80)?,
//!         SrtpAuthKeys::from_master(&phone_key, &phone_salt, 80)?,
//!     ))
//!     .await?;
//! println!("put {} into the phone's SDP", session.endpoint.rtp);
//! handle.release(&session.id).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod backoff;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsConnector;

use crate::api::{AllocationReply, SessionRequest, SrtpAuthKeys, UpdateRequest};
use crate::codes::ErrorCode;
use crate::control::frame::{FrameDecoder, FrameType, VERSION};
use crate::control::heartbeat::{Heartbeat as HeartbeatTimer, HeartbeatAction};
use crate::control::messages::{
    Allocate, Attach, ErrorMessage, Heartbeat, Hello, HelloResult, Message, OpenStream, Release, Reply,
    TurnCredentials, TurnCredentialsIssued, Update,
};
use crate::control::stream::{dial, read_single_frame, stopped, SingleFrameError};
use crate::control::turn_credentials::IssuedCredentials;
use crate::tls::{client_config, ClientTrust, TlsError};
pub use backoff::Backoff;

/// Connector settings.
#[derive(Clone)]
pub struct ConnectorConfig {
    /// The relay's control listener, `host:port`.
    pub relay: String,
    /// More relays (`host:port`, same certificate name and trust) this
    /// connector may use: at each (re)connect it asks every relay for its
    /// load (an authenticated probe that registers nothing) and connects to
    /// the least loaded one that answers; when its relay disappears it fails
    /// over to the others. Empty: `relay` only.
    pub more_relays: Vec<String>,
    /// The name the relay's certificate is checked against (and sent as SNI).
    pub server_name: String,
    /// How the relay's certificate is trusted.
    pub trust: ClientTrust,
    /// Tenant id.
    pub tenant: String,
    /// The tenant's token.
    pub token: String,
    /// A stable id of this connector instance.
    pub connector_id: String,
    /// Services this connector announces without serving them itself
    /// (their `open_stream` requests go to [`Connector::take_open_streams`]).
    pub services: Vec<String>,
    /// Services this connector serves itself: name → local PBX address.
    /// For each `open_stream` it dials the PBX service and the relay's data
    /// listener and pumps bytes both ways.
    pub tunnels: HashMap<String, TunnelTarget>,
    /// Time allowed for TCP connect + TLS + hello.
    pub connect_timeout: Duration,
    /// Time a request waits for a channel and its reply.
    pub request_timeout: Duration,
    /// Heartbeat interval until the relay announces its own.
    pub heartbeat: Duration,
    /// Reconnect delays.
    pub backoff: Backoff,
}

impl std::fmt::Debug for ConnectorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorConfig")
            .field("relay", &self.relay)
            .field("more_relays", &self.more_relays)
            .field("server_name", &self.server_name)
            .field("trust", &self.trust)
            .field("tenant", &self.tenant)
            .field("token", &"<masked>")
            .field("connector_id", &self.connector_id)
            .field("services", &self.services)
            .field("tunnels", &self.tunnels)
            .finish_non_exhaustive()
    }
}

impl ConnectorConfig {
    /// Settings with defaults for everything but the essentials; the
    /// connector id defaults to the host name.
    pub fn new(relay: &str, server_name: &str, trust: ClientTrust, tenant: &str, token: &str) -> Self {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        Self {
            relay: relay.into(),
            more_relays: Vec::new(),
            server_name: server_name.into(),
            trust,
            tenant: tenant.into(),
            token: token.into(),
            connector_id: if host.is_empty() { "connector".into() } else { host },
            services: Vec::new(),
            tunnels: HashMap::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(10),
            backoff: Backoff::default(),
        }
    }
}

/// Where a tunnelled service lives beside the PBX.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelTarget {
    /// The PBX service's address (e.g. its SIP-TLS port).
    pub addr: std::net::SocketAddr,
    /// Send a PROXY protocol v2 header with the endpoint's address first.
    pub proxy_protocol: bool,
}

/// Why a connector request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// No channel came up within the request timeout.
    #[error("not connected to the relay")]
    NotConnected,
    /// The channel dropped after the request was sent: it may or may not
    /// have been applied.
    #[error("control channel lost before the reply")]
    ChannelLost,
    /// The relay refused the request.
    #[error("relay refused: {code}: {message}")]
    Refused {
        /// Stable code as sent (see [`ConnectorError::code`]; a newer relay
        /// may send a code this build does not know).
        code: String,
        /// Human message.
        message: String,
    },
    /// The relay answered something this connector cannot read.
    #[error("malformed reply from the relay")]
    BadReply,
    /// The connector has been stopped.
    #[error("connector stopped")]
    Stopped,
    /// The TLS settings are unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The server name is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

impl ConnectorError {
    /// The relay's code for a refusal, when this build knows it.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ConnectorError::Refused { code, .. } => code.parse().ok(),
            _ => None,
        }
    }
}

/// What the connector is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorStatus {
    /// Whether a channel is authenticated now.
    pub connected: bool,
    /// Channels authenticated so far (1 + reconnects).
    pub connects: u64,
    /// The last connect failure (`bad_credentials`, `locked_out`,
    /// `duplicate`, an I/O or TLS error).
    pub last_error: Option<String>,
    /// Tunnel streams joined (PBX service and relay data connection up).
    pub streams_opened: u64,
    /// Tunnel streams that could not be joined.
    pub streams_failed: u64,
    /// While disconnected: how long the connector waits before its next
    /// attempt (full backoff after a refusal or being replaced).
    pub retry_in: Option<Duration>,
    /// The relay of the current (or last) channel.
    pub relay: Option<String>,
}

struct Request {
    msg: Message,
    reply: oneshot::Sender<Result<Message, ConnectorError>>,
}

/// A cloneable handle to a running connector.
#[derive(Clone)]
pub struct ConnectorHandle {
    requests: mpsc::Sender<Request>,
    status: watch::Receiver<ConnectorStatus>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    request_timeout: Duration,
}

/// A running connector: the background task and its handle.
pub struct Connector {
    handle: ConnectorHandle,
    stop: watch::Sender<bool>,
    open_streams: Mutex<Option<mpsc::Receiver<OpenStream>>>,
    task: tokio::task::JoinHandle<()>,
}

const QUEUE: usize = 1024;

impl Connector {
    /// Starts the connector on the current tokio runtime. Fails only on
    /// unusable settings; connection problems are retried forever.
    pub fn start(config: ConnectorConfig) -> Result<Connector, ConnectorError> {
        let tls = TlsConnector::from(client_config(&config.trust)?);
        let server_name = ServerName::try_from(config.server_name.clone())
            .map_err(|_| ConnectorError::ServerName(config.server_name.clone()))?;
        let (req_tx, req_rx) = mpsc::channel(QUEUE);
        let (status_tx, status_rx) = watch::channel(ConnectorStatus::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (open_tx, open_rx) = mpsc::channel(QUEUE);
        let handle = ConnectorHandle {
            requests: req_tx,
            status: status_rx,
            next_id: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            request_timeout: config.request_timeout,
        };
        let worker = Worker {
            current: config.relay.clone(),
            config,
            tls,
            server_name,
            status: status_tx,
            stop: stop_rx,
            open_streams: open_tx,
        };
        let task = tokio::spawn(worker.run(req_rx));
        Ok(Connector { handle, stop: stop_tx, open_streams: Mutex::new(Some(open_rx)), task })
    }

    /// A handle for requests and status.
    pub fn handle(&self) -> ConnectorHandle {
        self.handle.clone()
    }

    /// The relay's open-stream requests (tunnels). Returns `None` after the
    /// first call: there is one consumer.
    pub fn take_open_streams(&self) -> Option<mpsc::Receiver<OpenStream>> {
        self.open_streams.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Closes the channel and stops reconnecting.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

impl ConnectorHandle {
    /// The current status.
    pub fn status(&self) -> ConnectorStatus {
        self.status.borrow().clone()
    }

    /// Waits until a channel is authenticated with at least `connects`
    /// connects so far (1 = the first), or `timeout` passes.
    pub async fn wait_connected(&self, connects: u64, timeout: Duration) -> Result<(), ConnectorError> {
        let mut rx = self.status.clone();
        let reached = async move { rx.wait_for(|s| s.connected && s.connects >= connects).await.is_ok() };
        match tokio::time::timeout(timeout, reached).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ConnectorError::Stopped),
            Err(_) => Err(ConnectorError::NotConnected),
        }
    }

    /// Allocates a media session; the reply holds the relay addresses to
    /// put into SDP (`pbx` for the PBX, `endpoint` for the phone).
    pub async fn allocate(&self, request: SessionRequest) -> Result<AllocationReply, ConnectorError> {
        let session = serde_json::to_value(&request).map_err(|_| ConnectorError::BadReply)?;
        let reply = self.call(|request_id| Message::Allocate(Allocate { request_id, session })).await?;
        match (reply.id, reply.pbx, reply.endpoint) {
            (Some(id), Some(pbx), Some(endpoint)) => Ok(AllocationReply { id, pbx, endpoint }),
            _ => Err(ConnectorError::BadReply),
        }
    }

    /// Changes a session (hints, keys, limits, latching).
    pub async fn update(&self, id: &str, update: UpdateRequest) -> Result<(), ConnectorError> {
        let update = serde_json::to_value(&update).map_err(|_| ConnectorError::BadReply)?;
        let id = id.to_string();
        self.call(|request_id| Message::Update(Update { request_id, id, update })).await.map(drop)
    }

    /// Switches a running session to authenticated latching: the relay gets
    /// the authentication keys of what each side sends (derive them with
    /// [`SrtpAuthKeys::from_master`]), never a master key.
    pub async fn enable_authenticated_latching(
        &self,
        id: &str,
        pbx_sends: SrtpAuthKeys,
        endpoint_sends: SrtpAuthKeys,
    ) -> Result<(), ConnectorError> {
        self.update(id, UpdateRequest::srtp_auth(pbx_sends, endpoint_sends)).await
    }

    /// Releases a session.
    pub async fn release(&self, id: &str) -> Result<(), ConnectorError> {
        let id = id.to_string();
        self.call(|request_id| Message::Release(Release { request_id, id })).await.map(drop)
    }

    /// Short-lived TURN credentials for `user` (an extension or device id:
    /// 1–64 of `A–Z a–z 0–9 . _ @ + -`), valid for `lifetime` (the relay's
    /// default, a day, when `None`; 60 s to 7 days), in this tenant's
    /// realm. Refused with `turn_not_configured` when the relay has no
    /// TURN realm with shared secrets for the tenant.
    pub async fn turn_credentials(
        &self,
        user: &str,
        lifetime: Option<Duration>,
    ) -> Result<IssuedCredentials, ConnectorError> {
        let (user, lifetime_secs) = (user.to_string(), lifetime.map(|l| l.as_secs()));
        let reply = self
            .request(|request_id| Message::TurnCredentials(TurnCredentials { request_id, user, lifetime_secs }))
            .await?;
        let Message::TurnCredentialsIssued(r) = reply else { return Err(ConnectorError::BadReply) };
        let TurnCredentialsIssued { ok, username, password, realm, ttl_secs, uris, code, message, .. } = r;
        match (ok, username, password, realm, ttl_secs) {
            (true, Some(username), Some(password), Some(realm), Some(ttl)) => {
                Ok(IssuedCredentials { username, password, realm, ttl: Duration::from_secs(ttl), uris })
            }
            (true, ..) => Err(ConnectorError::BadReply),
            (false, ..) => Err(refused(code, message)),
        }
    }

    /// A session request: its reply, when it succeeded.
    async fn call(&self, build: impl FnOnce(u64) -> Message) -> Result<Reply, ConnectorError> {
        let reply = match self.request(build).await? {
            Message::Allocated(r) | Message::Updated(r) | Message::Released(r) => r,
            _ => return Err(ConnectorError::BadReply),
        };
        if reply.ok {
            Ok(reply)
        } else {
            Err(refused(reply.code, reply.message))
        }
    }

    /// Sends a request and waits for the message that answers it.
    async fn request(&self, build: impl FnOnce(u64) -> Message) -> Result<Message, ConnectorError> {
        let request_id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let queued =
            tokio::time::timeout_at(deadline, self.requests.send(Request { msg: build(request_id), reply: tx }));
        match queued.await {
            Err(_) => return Err(ConnectorError::NotConnected),
            Ok(Err(_)) => return Err(ConnectorError::Stopped),
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => Err(ConnectorError::NotConnected),
            Ok(Err(_)) => Err(ConnectorError::Stopped),
            Ok(Ok(r)) => r,
        }
    }
}

/// A refusal as the relay worded it.
fn refused(code: Option<String>, message: Option<String>) -> ConnectorError {
    ConnectorError::Refused { code: code.unwrap_or_else(|| "unknown".into()), message: message.unwrap_or_default() }
}

struct Worker {
    config: ConnectorConfig,
    /// The relay of the current (or last) channel.
    current: String,
    tls: TlsConnector,
    server_name: ServerName<'static>,
    status: watch::Sender<ConnectorStatus>,
    stop: watch::Receiver<bool>,
    open_streams: mpsc::Sender<OpenStream>,
}

type Channel = tokio_rustls::client::TlsStream<TcpStream>;

/// Why a connect attempt failed.
struct ConnectFailure {
    reason: String,
    /// The relay refused our credentials or our presence: back off fully.
    refused: bool,
}

impl Worker {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut backoff = self.config.backoff.clone();
        loop {
            if *self.stop.borrow() {
                return;
            }
            let mut stop = self.stop.clone();
            let attempt = tokio::select! {
                // Several relays: a probe round, then the connect itself.
                r = tokio::time::timeout(self.config.connect_timeout.saturating_mul(if self.config.more_relays.is_empty() { 1 } else { 2 }), self.connect()) => r,
                _ = stopped(&mut stop) => return,
            };
            match attempt {
                Ok(Ok((channel, decoder, heartbeat))) => {
                    backoff.reset();
                    let relay = self.current.clone();
                    self.status.send_modify(|s| {
                        s.connected = true;
                        s.relay = Some(relay);
                        s.connects += 1;
                        s.last_error = None;
                        s.retry_in = None;
                    });
                    tracing::info!(relay = %self.current, "connector: channel up");
                    let (why, refused) = self.serve(channel, decoder, heartbeat, &mut requests).await;
                    if refused {
                        // Replaced by another connector or removed: coming
                        // straight back would only fight over the tenant.
                        backoff.saturate();
                    }
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(why.clone());
                    });
                    tracing::warn!(relay = %self.current, reason = %why, "connector: channel down");
                    if *self.stop.borrow() {
                        return;
                    }
                }
                Ok(Err(failure)) => {
                    if failure.refused {
                        backoff.saturate();
                    }
                    tracing::warn!(reason = %failure.reason, "connector: connect failed");
                    self.status.send_modify(|s| s.last_error = Some(failure.reason));
                }
                Err(_) => {
                    self.status.send_modify(|s| s.last_error = Some("connect timed out".into()));
                }
            }
            let delay = backoff.next_delay(fastrand::f64());
            self.status.send_modify(|s| s.retry_in = Some(delay));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(&mut self.stop) => return,
            }
        }
    }

    /// The relays this connector may use: `relay`, then `more_relays`.
    fn relays(&self) -> Vec<String> {
        std::iter::once(&self.config.relay).chain(&self.config.more_relays).cloned().collect()
    }

    /// Connects to a relay and authenticates; with several relays, to the
    /// least loaded one that answers a probe (then the next, on failure).
    /// Sets [`Worker::current`] to the relay connected to.
    async fn connect(&mut self) -> Result<(Channel, FrameDecoder, Duration), ConnectFailure> {
        let candidates =
            if self.config.more_relays.is_empty() { vec![self.config.relay.clone()] } else { self.by_load().await };
        let mut last = ConnectFailure { reason: "no relay answered a load probe".into(), refused: false };
        for addr in candidates {
            let hello = self.hello(false);
            match handshake(self.tls.clone(), self.server_name.clone(), addr.clone(), hello).await {
                Ok((tls, decoder, result)) => {
                    let hb = result
                        .heartbeat_secs
                        .map_or(self.config.heartbeat, |s| Duration::from_secs(u64::from(s.max(1))));
                    self.current = addr;
                    return Ok((tls, decoder, hb));
                }
                Err(e) => {
                    tracing::warn!(relay = %addr, reason = %e.reason, "connector: connect failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Every relay's load, asked at once (an authenticated probe that
    /// registers nothing): those that answered, least loaded first (ports
    /// in use per thousand, then configuration order). Standbys and
    /// relays that do not answer in `connect_timeout` are left out.
    async fn by_load(&self) -> Vec<String> {
        let mut probes = tokio::task::JoinSet::new();
        for (order, addr) in self.relays().into_iter().enumerate() {
            let (tls, name, hello, limit) =
                (self.tls.clone(), self.server_name.clone(), self.hello(true), self.config.connect_timeout);
            probes.spawn(async move {
                let r = tokio::time::timeout(limit, handshake(tls, name, addr.clone(), hello)).await;
                (order, addr, r)
            });
        }
        let mut answered = Vec::new();
        while let Some(Ok((order, addr, r))) = probes.join_next().await {
            match r {
                Ok(Ok((_, _, HelloResult { load: Some(load), .. }))) => answered.push((load.permille(), order, addr)),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::info!(relay = %addr, reason = %e.reason, "connector: load probe refused"),
                Err(_) => tracing::info!(relay = %addr, "connector: load probe timed out"),
            }
        }
        answered.sort();
        answered.into_iter().map(|(_, _, addr)| addr).collect()
    }

    fn hello(&self, probe: bool) -> Hello {
        Hello {
            version: u32::from(VERSION),
            tenant: self.config.tenant.clone(),
            token: self.config.token.clone(),
            connector_id: self.config.connector_id.clone(),
            services: self.announced_services(),
            probe,
        }
    }

    /// Runs one authenticated channel until it ends; returns why, and
    /// whether the relay sent this connector away (`replaced`,
    /// `tenant_removed`).
    async fn serve(
        &mut self,
        channel: Channel,
        mut decoder: FrameDecoder,
        hb: Duration,
        requests: &mut mpsc::Receiver<Request>,
    ) -> (String, bool) {
        let (mut reader, mut writer) = tokio::io::split(channel);
        let mut in_flight: InFlight = HashMap::new();
        let mut heartbeat = HeartbeatTimer::new(tokio::time::Instant::now().into_std(), hb);
        let mut buf = vec![0u8; 16 * 1024];
        let ended = loop {
            match decoder.poll_frame() {
                Ok(Some(frame)) => {
                    heartbeat.handle_received(tokio::time::Instant::now().into_std());
                    match self.handle_frame(&frame, &mut writer, &mut in_flight).await {
                        Ok(()) => continue,
                        Err(ended) => break ended,
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = send(&mut writer, &protocol_error(e.code(), &e.to_string())).await;
                    break Ended::because(format!("framing error from relay: {e}"));
                }
            }
            tokio::select! {
                n = reader.read(&mut buf) => match n {
                    Ok(0) => break Ended::because("relay closed the connection"),
                    Ok(n) => decoder.handle_bytes(&buf[..n]),
                    Err(e) => break Ended::because(e.to_string()),
                },
                req = requests.recv() => {
                    let Some(req) = req else { break Ended::because("connector stopped") };
                    if req.reply.is_closed() {
                        continue; // the caller gave up while we were disconnected
                    }
                    let id = request_id(&req.msg);
                    if send(&mut writer, &req.msg).await.is_err() {
                        let _ = req.reply.send(Err(ConnectorError::ChannelLost));
                        break Ended::because("write failed");
                    }
                    in_flight.insert(id, req.reply);
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(heartbeat.poll_timeout())) => {
                    match heartbeat.handle_timeout(tokio::time::Instant::now().into_std()) {
                        HeartbeatAction::Dead => break Ended::because("relay silent for three heartbeat intervals"),
                        HeartbeatAction::Send(seq) => {
                            if send(&mut writer, &Message::Heartbeat(Heartbeat { seq })).await.is_err() {
                                break Ended::because("write failed");
                            }
                        }
                        HeartbeatAction::Wait => {}
                    }
                }
                _ = stopped(&mut self.stop) => {
                    let _ = writer.shutdown().await;
                    break Ended::because("connector stopped");
                }
            }
        };
        for (_, tx) in in_flight.drain() {
            let _ = tx.send(Err(ConnectorError::ChannelLost));
        }
        (ended.why, ended.sent_away)
    }

    /// One frame from the relay: heartbeats answered, replies handed to
    /// their callers, streams opened; the channel ends on an error frame or
    /// a frame that does not belong here.
    async fn handle_frame(
        &mut self,
        frame: &crate::control::frame::Frame,
        writer: &mut WriteHalf<Channel>,
        in_flight: &mut InFlight,
    ) -> Result<(), Ended> {
        let msg = match Message::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                let _ = send(writer, &protocol_error(ErrorCode::BadMessage, &e.to_string())).await;
                return Err(Ended::because(format!("bad message from relay: {e}")));
            }
        };
        match msg {
            Message::Heartbeat(h) => {
                if send(writer, &Message::HeartbeatAck(h)).await.is_err() {
                    return Err(Ended::because("write failed"));
                }
            }
            Message::HeartbeatAck(_) => {}
            Message::Allocated(Reply { request_id, .. })
            | Message::Updated(Reply { request_id, .. })
            | Message::Released(Reply { request_id, .. })
            | Message::TurnCredentialsIssued(TurnCredentialsIssued { request_id, .. }) => {
                if let Some(tx) = in_flight.remove(&request_id) {
                    let _ = tx.send(Ok(msg));
                }
            }
            Message::OpenStream(o) if o.standby => self.open_standby_stream(o),
            Message::OpenStream(o) => self.open_stream(o),
            Message::Error(e) => {
                return Err(Ended {
                    sent_away: matches!(e.code.parse(), Ok(ErrorCode::Replaced | ErrorCode::TenantRemoved)),
                    why: format!("relay closed the channel: {}", e.code),
                });
            }
            other => {
                let kind = other.encode().kind.as_str();
                let _ = send(writer, &protocol_error(ErrorCode::UnexpectedFrame, kind)).await;
                return Err(Ended::because(format!("unexpected {kind} from relay")));
            }
        }
        Ok(())
    }

    /// A standby stream the relay asks for ahead of need (tunnels only); a
    /// stopped connector takes its idle standby streams with it.
    fn open_standby_stream(&self, o: OpenStream) {
        if self.config.tunnels.is_empty() {
            return;
        }
        let relay_host = relay_host(&self.current).to_string();
        let (tunnels, status) = (self.config.tunnels.clone(), self.status.clone());
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let r = tokio::select! {
                r = standby_stream(&relay_host, &tunnels, o, &status) => r,
                _ = stopped(&mut stop) => Ok(()),
            };
            if let Err(e) = r {
                status.send_modify(|s| s.streams_failed += 1);
                tracing::debug!(error = %e, "connector: standby stream ended");
            }
        });
    }

    /// A tunnel stream to the service's target, or to the embedder's
    /// `open_streams` consumer for services it handles itself.
    fn open_stream(&self, o: OpenStream) {
        let Some(target) = self.config.tunnels.get(&o.service) else {
            if self.open_streams.try_send(o).is_err() {
                tracing::warn!("connector: open_stream dropped (no consumer or queue full)");
            }
            return;
        };
        let relay_host = relay_host(&self.current).to_string();
        let (target, status) = (*target, self.status.clone());
        tokio::spawn(async move {
            if let Err(e) = join_stream(&relay_host, target, o, &status).await {
                status.send_modify(|s| s.streams_failed += 1);
                tracing::warn!(error = %e, "connector: tunnel stream failed");
            }
        });
    }
}

/// Requests sent on the channel, waiting for their replies.
type InFlight = HashMap<u64, oneshot::Sender<Result<Message, ConnectorError>>>;

/// Why a channel ended, and whether the relay sent this connector away.
struct Ended {
    why: String,
    sent_away: bool,
}

impl Ended {
    fn because(why: impl Into<String>) -> Ended {
        Ended { why: why.into(), sent_away: false }
    }
}

impl Worker {
    fn announced_services(&self) -> Vec<String> {
        let mut v: Vec<String> = self.config.services.iter().chain(self.config.tunnels.keys()).cloned().collect();
        v.sort();
        v.dedup();
        v
    }
}

/// TCP, TLS and `hello` to `addr`; the relay's `hello_result` when it is ok.
async fn handshake(
    tls: TlsConnector,
    server_name: ServerName<'static>,
    addr: String,
    hello: Hello,
) -> Result<(Channel, FrameDecoder, HelloResult), ConnectFailure> {
    let io = |e: std::io::Error| ConnectFailure { reason: e.to_string(), refused: false };
    let tcp = TcpStream::connect(&addr).await.map_err(io)?;
    let _ = tcp.set_nodelay(true);
    let mut tls = tls.connect(server_name, tcp).await.map_err(io)?;
    tls.write_all(&Message::Hello(hello).encode().encode()).await.map_err(io)?;
    let mut decoder = FrameDecoder::new();
    let mut buf = [0u8; 4096];
    let frame = loop {
        match decoder.poll_frame() {
            Ok(Some(f)) => break f,
            Ok(None) => {}
            Err(e) => return Err(ConnectFailure { reason: e.to_string(), refused: false }),
        }
        let n = tls.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            return Err(ConnectFailure { reason: "relay closed the channel".into(), refused: false });
        }
        decoder.handle_bytes(&buf[..n]);
    };
    match Message::decode(&frame) {
        Ok(Message::HelloResult(r)) if r.ok => Ok((tls, decoder, r)),
        Ok(Message::HelloResult(HelloResult { code, .. })) => {
            // A standby is not a refusal of this connector: try again soon.
            let standby = code.as_deref() == Some(ErrorCode::Standby.as_str());
            Err(ConnectFailure {
                reason: format!("relay refused the connector: {}", code.as_deref().unwrap_or("unknown")),
                refused: !standby,
            })
        }
        Ok(Message::Error(ErrorMessage { code, .. })) => {
            Err(ConnectFailure { reason: format!("relay error: {code}"), refused: false })
        }
        _ => Err(ConnectFailure { reason: "unexpected first frame from the relay".into(), refused: false }),
    }
}

/// The host part of `host:port` (`[v6]` keeps its brackets).
fn relay_host(relay: &str) -> &str {
    relay.rsplit_once(':').map_or(relay, |(h, _)| h)
}

/// Largest `bind` payload accepted on a standby connection.
const MAX_BIND: usize = 4096;

/// How long a tunnel stream may sit idle on the connector's side (the relay
/// enforces its own, shorter, idle timeout; this one only catches a relay
/// that vanished without closing).
const STREAM_IDLE: Duration = Duration::from_secs(3600);

/// One tunnel stream: dial the PBX service and the relay's data listener
/// (at the same time), present the ticket, optionally tell the PBX the
/// endpoint's address (PROXY v2), then splice bytes until both sides close.
async fn join_stream(
    relay_host: &str,
    target: TunnelTarget,
    open: OpenStream,
    status: &watch::Sender<ConnectorStatus>,
) -> std::io::Result<()> {
    let (pbx, data) = tokio::join!(dial(target.addr), dial(format!("{relay_host}:{}", open.data_port)));
    let (mut pbx, mut data) = (pbx?, data?);
    data.write_all(&Message::Attach(Attach { ticket: open.ticket.clone() }).encode().encode()).await?;
    if target.proxy_protocol {
        send_proxy_header(&mut pbx, &open.client_addr, open.relay_addr.as_deref(), &data).await?;
    }
    pump_joined(pbx, data, status).await;
    Ok(())
}

/// Tells the PBX (PROXY protocol v2) which endpoint the stream comes from
/// and which relay address it reached; without the latter, the data
/// connection's relay side stands in.
async fn send_proxy_header(
    pbx: &mut TcpStream,
    client_addr: &str,
    relay_addr: Option<&str>,
    data: &TcpStream,
) -> std::io::Result<()> {
    let parse = |a: &str| {
        a.parse::<std::net::SocketAddr>()
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad address from the relay"))
    };
    let dst = match relay_addr {
        Some(a) => parse(a)?,
        None => data.peer_addr()?,
    };
    pbx.write_all(&crate::tunnel::proxy::header(parse(client_addr)?, dst)).await
}

/// Counts a joined stream, then moves its bytes until both sides close.
async fn pump_joined(pbx: TcpStream, data: TcpStream, status: &watch::Sender<ConnectorStatus>) {
    status.send_modify(|s| s.streams_opened += 1);
    let counters = crate::io::splice::PumpCounters::default();
    let _ = crate::io::splice::pump(pbx, data, crate::io::splice::PumpMode::Splice, STREAM_IDLE, &[&counters]).await;
}

/// A standby stream: attach to the relay now, wait for its `bind`, then
/// dial the named PBX service and splice. The relay closing it unused
/// (idle expiry, shutdown) is not an error.
async fn standby_stream(
    relay_host: &str,
    tunnels: &HashMap<String, TunnelTarget>,
    open: OpenStream,
    status: &watch::Sender<ConnectorStatus>,
) -> std::io::Result<()> {
    let mut data = dial(format!("{relay_host}:{}", open.data_port)).await?;
    data.write_all(&Message::Attach(Attach { ticket: open.ticket.clone() }).encode().encode()).await?;
    // Wait (as long as the relay keeps it) for exactly one bind frame.
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a bind frame");
    let bind = match read_single_frame(&mut data, FrameType::Bind, MAX_BIND).await {
        Ok(Message::Bind(b)) => b,
        Err(SingleFrameError::Closed) => return Ok(()),
        _ => return Err(bad()),
    };
    let target = *tunnels.get(&bind.service).ok_or_else(bad)?;
    let mut pbx = dial(target.addr).await?;
    if target.proxy_protocol {
        send_proxy_header(&mut pbx, &bind.client_addr, bind.relay_addr.as_deref(), &data).await?;
    }
    pump_joined(pbx, data, status).await;
    Ok(())
}

fn request_id(m: &Message) -> u64 {
    match m {
        Message::Allocate(a) => a.request_id,
        Message::Update(u) => u.request_id,
        Message::Release(r) => r.request_id,
        Message::TurnCredentials(t) => t.request_id,
        _ => 0,
    }
}

fn protocol_error(code: ErrorCode, message: &str) -> Message {
    Message::Error(ErrorMessage { code: code.as_str().into(), message: message.into(), request_id: None })
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) -> std::io::Result<()> {
    let write = async {
        w.write_all(&m.encode().encode()).await?;
        w.flush().await
    };
    match tokio::time::timeout(Duration::from_secs(10), write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
