//! The authenticated control channel end to end on loopback with real TLS
//! (rustls on both sides): a connector authenticates, allocates sessions
//! that carry real SRTP, survives a killed channel, and the relay refuses
//! wrong tokens, locked-out sources, old TLS, plaintext, stalled clients and
//! second connectors per policy.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay_core::api::{AllocationReply, LegRequest, SessionRequest, SrtpAuthKeys, UpdateRequest};
use relay_core::connector::{Backoff, Connector, ConnectorError};
use relay_core::control::auth::AuthPolicy;
use relay_core::control::frame::{Frame, FrameDecoder, FrameType};
use relay_core::control::messages::{Hello, Message};
use relay_core::control::server::{ControlConfig, SecondConnector};
use relay_core::control::turn_credentials::{IssueError, IssuedCredentials, TurnCredentialIssuer};
use relay_core::tls::{client_config, load_certified_key, pem_fingerprint, ClientTrust};
use relay_core::RelayError;
use test_support::control::*;
use test_support::packets::*;
use test_support::poll::eventually;
use test_support::srtp::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Waits until the connector's last error mentions `code`.
async fn error_reported(h: &relay_core::connector::ConnectorHandle, code: &str) {
    eventually(code, || h.status(), |s| s.last_error.as_ref().is_some_and(|e| e.contains(code))).await;
}

/// A raw TLS client speaking frames by hand.
struct RawClient {
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    decoder: FrameDecoder,
}

impl RawClient {
    async fn connect(env: &Env) -> RawClient {
        Self::connect_from(env, "127.0.0.1").await
    }

    /// Connects from a chosen loopback source address (127.0.0.0/8).
    async fn connect_from(env: &Env, source: &str) -> RawClient {
        Self::connect_to(env.addr, &env.pinned(), source).await
    }

    async fn connect_to(addr: SocketAddr, trust: &ClientTrust, source: &str) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(format!("{source}:0").parse().expect("source")).expect("bind source");
        let tcp = socket.connect(addr).await.expect("tcp");
        let connector = tokio_rustls::TlsConnector::from(client_config(trust).expect("client config"));
        let name = rustls::pki_types::ServerName::try_from("relay.test").expect("name");
        let tls = connector.connect(name, tcp).await.expect("TLS handshake");
        RawClient { tls, decoder: FrameDecoder::new() }
    }

    async fn send(&mut self, m: &Message) {
        self.send_raw(&m.encode().encode()).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).await.expect("write");
        self.tls.flush().await.expect("flush");
    }

    /// The next frame, or `None` once the relay closed the channel.
    async fn recv(&mut self) -> Option<Message> {
        let mut buf = [0u8; 4096];
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(f) = self.decoder.poll_frame().expect("relay frames are well formed") {
                    return Some(Message::decode(&f).expect("relay messages decode"));
                }
                match self.tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.decoder.handle_bytes(&buf[..n]),
                }
            }
        })
        .await
        .expect("the relay answers or closes in time")
    }

    async fn hello(&mut self, tenant: &str, token: &str) -> Message {
        self.send(&Message::Hello(Hello {
            version: 1,
            tenant: tenant.into(),
            token: token.into(),
            connector_id: "raw".into(),
            services: vec![],
            probe: false,
        }))
        .await;
        self.recv().await.expect("hello_result")
    }
}

fn result_code(m: &Message) -> (bool, Option<String>) {
    match m {
        Message::HelloResult(r) => (r.ok, r.code.clone()),
        other => panic!("expected hello_result, got {other:?}"),
    }
}

/// A call with real SRTP both ways through an allocated session.
struct Call {
    pbx: UdpSocket,
    phone: UdpSocket,
    to_pbx_leg: SocketAddr,
    to_endpoint_leg: SocketAddr,
    pbx_tx: SrtpTx,
    phone_tx: SrtpTx,
    pbx_rx: SrtpRx,
    phone_rx: SrtpRx,
}

const PBX_MASTER: u8 = 11;
const PHONE_MASTER: u8 = 22;

fn keys(seed: u8) -> SrtpAuthKeys {
    let m = master(seed);
    SrtpAuthKeys::from_master(&m[..16], &m[16..], 80).expect("keys")
}

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    s
}

impl Call {
    fn sockets() -> (UdpSocket, UdpSocket) {
        (udp(), udp())
    }

    /// The request a PBX would send: its own address as the pbx-leg hint and
    /// authenticated latching with the SDES keys of both sides.
    fn request(pbx: &UdpSocket) -> SessionRequest {
        SessionRequest {
            pbx: LegRequest { hint: Some(pbx.local_addr().expect("addr").to_string()), ..LegRequest::default() },
            ..SessionRequest::default()
        }
        .with_srtp_auth(keys(PBX_MASTER), keys(PHONE_MASTER))
    }

    fn new((pbx, phone): (UdpSocket, UdpSocket), a: &AllocationReply) -> Call {
        Call {
            pbx,
            phone,
            to_pbx_leg: a.pbx.rtp_socket_addr().expect("pbx leg"),
            to_endpoint_leg: a.endpoint.rtp_socket_addr().expect("endpoint leg"),
            pbx_tx: SrtpTx::new(&master(PBX_MASTER), 0x1111, 1),
            phone_tx: SrtpTx::new(&master(PHONE_MASTER), 0x2222, 1),
            pbx_rx: SrtpRx::new(&master(PHONE_MASTER)),
            phone_rx: SrtpRx::new(&master(PBX_MASTER)),
        }
    }

    /// One SRTP packet each way; true if both arrived byte for byte and
    /// passed libsrtp's authentication.
    fn round(&mut self) -> bool {
        fn one(tx: &mut SrtpTx, from: &UdpSocket, to: SocketAddr, at: &UdpSocket, rx: &mut SrtpRx) -> bool {
            let p = tx.next_rtp();
            from.send_to(&p, to).expect("send");
            let mut buf = [0u8; 2048];
            match at.recv_from(&mut buf) {
                Ok((n, _)) => buf[..n] == p[..] && rx.accept(&buf[..n]).is_some(),
                Err(_) => false,
            }
        }
        let up = one(&mut self.phone_tx, &self.phone, self.to_endpoint_leg, &self.pbx, &mut self.pbx_rx);
        let down = one(&mut self.pbx_tx, &self.pbx, self.to_pbx_leg, &self.phone, &mut self.phone_rx);
        up && down
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_allocates_a_session_that_carries_real_srtp_and_cannot_touch_other_tenants() {
    let env = env(quick()).await;
    let acme = Connector::start(env.connector("acme", ACME_TOKEN, "pbx-1")).expect("start");
    let h = acme.handle();
    h.wait_connected(1, WAIT).await.expect("connected");

    let sockets = Call::sockets();
    let alloc = h.allocate(Call::request(&sockets.0)).await.expect("allocated");
    let info = env.relay.handle().session(alloc.id.parse().expect("id")).await.expect("session");
    assert_eq!(info.tenant, "acme", "the channel's tenant owns the session");
    assert_eq!(info.latch.as_str(), "authenticated");
    let mut call = Call::new(sockets, &alloc);
    let call = tokio::task::spawn_blocking(move || {
        for i in 0..100 {
            assert!(call.round(), "round {i} delivered and authenticated both ways");
        }
        call
    })
    .await
    .expect("media");
    assert_eq!((call.pbx_rx.ok, call.pbx_rx.auth_failures), (100, 0));
    assert_eq!((call.phone_rx.ok, call.phone_rx.auth_failures), (100, 0));

    // Another tenant's connector sees acme's session as nonexistent.
    let globex = Connector::start(env.connector("globex", GLOBEX_TOKEN, "pbx-g")).expect("start");
    let g = globex.handle();
    g.wait_connected(1, WAIT).await.expect("connected");
    for r in [g.release(&alloc.id).await, g.update(&alloc.id, UpdateRequest::default()).await] {
        assert!(matches!(r, Err(ConnectorError::Refused { ref code, .. }) if code == "unknown_session"), "{r:?}");
    }
    let foreign = SessionRequest { tenant: Some("acme".into()), ..SessionRequest::default() };
    let r = g.allocate(foreign).await;
    assert!(matches!(r, Err(ConnectorError::Refused { ref code, .. }) if code == "forbidden_tenant"), "{r:?}");
    let bad = SessionRequest { latch: Some("sometimes".into()), ..SessionRequest::default() };
    assert!(matches!(g.allocate(bad).await, Err(ConnectorError::Refused { ref code, .. }) if code == "invalid_field"));

    // The owner updates and releases it.
    let hint = UpdateRequest {
        endpoint: relay_core::api::LegUpdateRequest { hint: Some("127.0.0.1".into()), ..Default::default() },
        ..UpdateRequest::default()
    };
    h.update(&alloc.id, hint).await.expect("update");
    h.enable_authenticated_latching(&alloc.id, keys(PBX_MASTER), keys(PHONE_MASTER)).await.expect("keys");
    h.release(&alloc.id).await.expect("release");
    let gone = env.relay.handle().session(alloc.id.parse().expect("id")).await;
    assert!(matches!(gone, Err(RelayError::UnknownSession(_))));
    let s = env.server.stats();
    assert_eq!((s.auth_ok, s.connectors_active), (2, 2));
    assert!(s.request_errors >= 4, "{s:?}");
    acme.stop().await;
    globex.stop().await;
    env.stats_until("both connectors gone", |s| s.connectors_active == 0).await;
}

/// An issuer that records what the control listener asked it for and
/// signs nothing (the TURN server's own issuer is tested with the server,
/// and end to end with coturn's client in relay-bin).
#[derive(Default)]
struct RecordingIssuer {
    asked: std::sync::Mutex<Vec<(String, String, Duration)>>,
}

impl TurnCredentialIssuer for RecordingIssuer {
    fn issue(
        &self,
        tenant: &str,
        user: &str,
        lifetime: Duration,
        now_unix: u64,
    ) -> Result<IssuedCredentials, IssueError> {
        self.asked.lock().expect("lock").push((tenant.into(), user.into(), lifetime));
        if tenant == "globex" {
            return Err(IssueError::NotConfigured);
        }
        Ok(IssuedCredentials {
            username: format!("{}:{user}", now_unix + lifetime.as_secs()),
            password: format!("password-of-{tenant}-{user}"),
            realm: format!("turn.{tenant}.test"),
            ttl: lifetime,
            uris: vec!["turns:turn.relay.test:443?transport=tcp".into()],
        })
    }
}

fn refused_with(r: &Result<IssuedCredentials, ConnectorError>) -> Option<String> {
    match r {
        Err(ConnectorError::Refused { code, .. }) => Some(code.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_get_turn_credentials_of_their_own_tenant_within_bounds() {
    let env = env(quick()).await;
    let acme = Connector::start(env.connector("acme", ACME_TOKEN, "pbx-1")).expect("start");
    let h = acme.handle();
    h.wait_connected(1, WAIT).await.expect("connected");
    // A relay without TURN says so.
    let r = h.turn_credentials("ext-201", None).await;
    assert_eq!(refused_with(&r).as_deref(), Some("turn_not_configured"), "{r:?}");

    let issuer = Arc::new(RecordingIssuer::default());
    env.server.set_turn_issuer(issuer.clone());
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let grant = h.turn_credentials("ext-201", None).await.expect("issued");
    let expiry: u64 = grant.username.split(':').next().and_then(|e| e.parse().ok()).expect("expiry:user");
    assert!(expiry >= before + 86_400 && expiry <= before + 86_400 + 60, "a day by default: {}", grant.username);
    assert_eq!(grant.username.split_once(':').map(|(_, u)| u), Some("ext-201"));
    assert_eq!(grant.password, "password-of-acme-ext-201");
    assert_eq!((grant.realm.as_str(), grant.ttl), ("turn.acme.test", Duration::from_secs(86_400)));
    assert_eq!(grant.uris, ["turns:turn.relay.test:443?transport=tcp"]);
    assert!(!format!("{grant:?}").contains("password-of"), "Debug masks the password");
    let short = h.turn_credentials("ext-202", Some(Duration::from_secs(600))).await.expect("issued");
    assert_eq!(short.ttl, Duration::from_secs(600));

    // Out of bounds: refused before the issuer is asked.
    for (user, lifetime) in [
        ("a:b", None),
        ("", None),
        ("ext 1", None),
        (&*"x".repeat(65), None),
        ("ext-1", Some(Duration::from_secs(59))),
        ("ext-1", Some(Duration::from_secs(7 * 86_400 + 1))),
    ] {
        let r = h.turn_credentials(user, lifetime).await;
        assert_eq!(refused_with(&r).as_deref(), Some("invalid_field"), "{user:?} {lifetime:?}: {r:?}");
    }
    // The tenant is always the channel's: globex is asked about as globex.
    let globex = Connector::start(env.connector("globex", GLOBEX_TOKEN, "pbx-g")).expect("start");
    let g = globex.handle();
    g.wait_connected(1, WAIT).await.expect("connected");
    let r = g.turn_credentials("ext-201", None).await;
    assert_eq!(refused_with(&r).as_deref(), Some("turn_not_configured"), "{r:?}");
    let asked = issuer.asked.lock().expect("lock").clone();
    let day = Duration::from_secs(86_400);
    assert_eq!(
        asked,
        [
            ("acme".to_string(), "ext-201".to_string(), day),
            ("acme".to_string(), "ext-202".to_string(), Duration::from_secs(600)),
            ("globex".to_string(), "ext-201".to_string(), day),
        ]
    );
    let s = env.server.stats();
    assert_eq!(s.turn_credentials_issued, 2, "{s:?}");
    // A reload replaces the issuer: the next request goes to the new one.
    let reloaded = Arc::new(RecordingIssuer::default());
    env.server.set_turn_issuer(reloaded.clone());
    h.turn_credentials("ext-203", None).await.expect("issued by the new issuer");
    assert_eq!(reloaded.asked.lock().expect("lock").len(), 1);
    assert_eq!(issuer.asked.lock().expect("lock").len(), 3, "the old one is asked no more");
    assert!(s.request_errors >= 8, "{s:?}");
    // Sessions still work on the same channel (replies are matched by id
    // and kind).
    let alloc = h.allocate(SessionRequest::default()).await.expect("allocated");
    h.release(&alloc.id).await.expect("released");
    acme.stop().await;
    globex.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_refused_and_repeated_failures_lock_the_source_out() {
    let env = env(ControlConfig {
        auth: AuthPolicy { max_attempts: 3, failure_delay: Duration::from_millis(20), ..AuthPolicy::default() },
        ..quick()
    })
    .await;
    for attempt in 0..2 {
        let mut c = RawClient::connect(&env).await;
        let r = c.hello("acme", "guess");
        assert_eq!(result_code(&r.await), (false, Some("bad_credentials".into())), "attempt {attempt}");
        assert!(c.recv().await.is_none(), "the relay closes after a refusal");
    }
    let mut c = RawClient::connect(&env).await;
    assert_eq!(result_code(&c.hello("nobody", "guess").await), (false, Some("locked_out".into())));
    // The right token from the locked-out source is refused too.
    let mut c = RawClient::connect(&env).await;
    assert_eq!(result_code(&c.hello("acme", ACME_TOKEN).await), (false, Some("locked_out".into())));
    // A connector with the right token from that source cannot get in either.
    let locked = Connector::start(env.connector("acme", ACME_TOKEN, "pbx-1")).expect("start");
    let h = locked.handle();
    error_reported(&h, "locked_out").await;
    assert!(!h.status().connected && h.status().connects == 0);
    locked.stop().await;
    let s = env.server.stats();
    assert_eq!((s.auth_ok, s.auth_bad_credentials), (0, 2), "{s:?}");
    assert!(s.auth_locked_out >= 3, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_wrong_tokens_from_twenty_sources_get_nowhere_while_the_real_connector_works() {
    let env = env(ControlConfig {
        auth: AuthPolicy { max_attempts: 5, failure_delay: Duration::from_millis(1), ..AuthPolicy::default() },
        ..quick()
    })
    .await;
    let pbx = Connector::start(env.connector("acme", ACME_TOKEN, "pbx-1")).expect("start");
    pbx.handle().wait_connected(1, WAIT).await.expect("connected");
    let mut attackers = Vec::new();
    for n in 0..20u8 {
        let env_addr = (env.addr, env.pinned());
        attackers.push(tokio::spawn(async move {
            let source = format!("127.0.1.{}", n + 1);
            let mut outcomes = (0u32, 0u32, 0u32); // accepted, bad_credentials, locked_out
            for i in 0..50 {
                let mut c = RawClient::connect_to(env_addr.0, &env_addr.1, &source).await;
                // Guess tokens for both tenants and for tenants that do not exist.
                let tenant = ["acme", "globex", "nobody"][i % 3];
                match result_code(&c.hello(tenant, &format!("guess-{n}-{i}")).await) {
                    (true, _) => outcomes.0 += 1,
                    (false, Some(code)) if code == "bad_credentials" => outcomes.1 += 1,
                    (false, Some(code)) if code == "locked_out" => outcomes.2 += 1,
                    other => panic!("unexpected answer {other:?}"),
                }
            }
            outcomes
        }));
    }
    let mut totals = (0, 0, 0);
    for a in attackers {
        let (ok, bad, locked) = a.await.expect("attacker");
        assert_eq!((ok, bad, locked), (0, 4, 46), "each source is locked out at its fifth failure");
        totals = (totals.0 + ok, totals.1 + bad, totals.2 + locked);
    }
    assert_eq!(totals, (0, 80, 920));
    // The PBX, on another address, never noticed.
    let h = pbx.handle();
    assert_eq!(h.status().connects, 1, "{:?}", h.status());
    let a = h.allocate(SessionRequest::default()).await.expect("the real connector still works");
    h.release(&a.id).await.expect("release");
    let s = env.server.stats();
    assert_eq!((s.auth_ok, s.auth_bad_credentials, s.auth_locked_out), (1, 80, 920), "{s:?}");
    pbx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_with_a_wrong_token_never_connects_and_says_why() {
    let env = env(quick()).await;
    let mut cfg = env.connector("acme", "not-the-token", "pbx-1");
    cfg.backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(20));
    cfg.request_timeout = Duration::from_millis(200);
    let c = Connector::start(cfg).expect("start");
    let h = c.handle();
    error_reported(&h, "bad_credentials").await;
    assert_eq!(h.allocate(SessionRequest::default()).await.expect_err("no channel"), ConnectorError::NotConnected);
    c.stop().await;
    // A refusal backs off fully (≥ 10 s here), not 50 ms: one attempt so
    // far, far from the lockout.
    assert_eq!(env.server.stats().auth_bad_credentials, 1, "{:?}", env.server.stats());
}

/// A TLS 1.1 ClientHello (legacy version 3.2, no supported_versions).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // two CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

/// Sends `bytes` on a fresh TCP connection and returns all the relay sent
/// before closing.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("tcp");
    tcp.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out)).await.expect("relay closes").ok();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_and_plaintext_clients_are_refused() {
    let env = env(quick()).await;
    let answer = raw_exchange(env.addr, &tls11_client_hello()).await;
    assert!(!answer.is_empty() && answer[0] == 0x15, "a TLS alert, not a ServerHello: {answer:02x?}");
    assert_eq!(answer[5], 0x02, "a fatal alert (rustls says handshake_failure or protocol_version)");
    let plaintext = Message::Hello(Hello {
        version: 1,
        tenant: "acme".into(),
        token: ACME_TOKEN.into(),
        connector_id: "plain".into(),
        services: vec![],
        probe: false,
    });
    let answer = raw_exchange(env.addr, &plaintext.encode().encode()).await;
    assert!(answer.is_empty() || answer[0] == 0x15, "never a frame in plaintext: {answer:02x?}");
    let s = env.stats_until("two TLS failures", |s| s.tls_failures == 2).await;
    assert_eq!(s.auth_ok, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_dropped_and_half_open_connections_are_capped() {
    let env = env(ControlConfig {
        handshake_timeout: Duration::from_millis(300),
        auth_timeout: Duration::from_millis(300),
        max_unauthenticated_per_ip: 3,
        ..quick()
    })
    .await;
    // Silent TCP: dropped after the handshake timeout.
    let answer = raw_exchange(env.addr, &[]).await;
    assert!(answer.is_empty());
    env.stats_until("handshake timeout", |s| s.handshake_timeouts == 1).await;
    // TLS done, no hello: an error frame, then close.
    let mut c = RawClient::connect(&env).await;
    match c.recv().await {
        Some(Message::Error(e)) => assert_eq!(e.code, "timeout"),
        other => panic!("expected a timeout error, got {other:?}"),
    }
    assert!(c.recv().await.is_none());
    env.stats_until("auth timeout", |s| s.auth_timeouts == 1).await;

    // Three half-open connections fill this source's cap; the fourth is
    // closed at once, and the cap frees up when they time out.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(env.addr).await.expect("tcp"));
    }
    env.stats_until("three pending", |s| s.unauthenticated == 3).await;
    let answer = raw_exchange(env.addr, &[]).await;
    assert!(answer.is_empty());
    env.stats_until("per-IP cap", |s| s.rejected_per_ip_cap == 1).await;
    env.stats_until("timed out", |s| s.handshake_timeouts == 4 && s.unauthenticated == 0).await;
    let mut c = RawClient::connect(&env).await;
    assert_eq!(result_code(&c.hello("acme", ACME_TOKEN).await), (true, None));
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_filling_the_unauthenticated_caps_cannot_lock_a_known_connector_out() {
    let env = env(ControlConfig {
        handshake_timeout: Duration::from_secs(30),
        max_unauthenticated_per_ip: 2,
        max_unauthenticated: 8,
        ..quick()
    })
    .await;
    // The PBX's connector has logged in from this host before.
    let mut c = RawClient::connect(&env).await;
    assert_eq!(result_code(&c.hello("acme", ACME_TOKEN).await), (true, None));
    drop(c);
    // A handful of strangers open silent connections from four addresses.
    let mut held = Vec::new();
    for ip in 20..24u8 {
        for _ in 0..2 {
            let s = tokio::net::TcpSocket::new_v4().expect("socket");
            s.bind(SocketAddr::from(([127, 0, 0, ip], 0))).expect("bind");
            held.push(s.connect(env.addr).await.expect("tcp"));
        }
    }
    env.stats_until("strangers stopped at their share", |s| s.rejected_total_cap == 2 && s.unauthenticated == 6).await;
    // The connector reconnects (a restart, a network blip): the reserved places are its.
    let mut c = RawClient::connect(&env).await;
    assert_eq!(result_code(&c.hello("acme", ACME_TOKEN).await), (true, None));
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_silence_close_an_authenticated_channel_with_a_reason() {
    let env = env(quick()).await;
    let cases: [(&[u8], &str); 4] = [
        (b"GET / HTTP/1.1\r\n\r\n", "bad_magic"),
        (&[0x55, 0x43, 0x02, 0x03, 0, 0, 0, 0], "unsupported_version"),
        (&[0x55, 0x43, 0x01, 0x7f, 0, 0, 0, 0], "unknown_frame_type"),
        (&[0x55, 0x43, 0x01, 0x05, 0x7f, 0, 0, 0], "frame_too_large"),
    ];
    for (bytes, code) in cases {
        let mut c = RawClient::connect(&env).await;
        assert!(result_code(&c.hello("acme", ACME_TOKEN).await).0);
        c.send_raw(bytes).await;
        loop {
            match c.recv().await {
                Some(Message::Heartbeat(_)) => continue,
                Some(Message::Error(e)) => {
                    assert_eq!(e.code, code);
                    break;
                }
                other => panic!("{code}: expected an error frame, got {other:?}"),
            }
        }
        assert!(c.recv().await.is_none(), "{code}: closed");
    }
    // A well-formed frame a connector must not send.
    let mut c = RawClient::connect(&env).await;
    c.hello("acme", ACME_TOKEN).await;
    let open = br#"{"ticket":"t","service":"s","client_addr":"x"}"#;
    c.send_raw(&Frame::new(FrameType::OpenStream, open.to_vec()).encode()).await;
    let s = env.stats_until("five protocol errors", |s| s.protocol_errors == 5).await;
    assert_eq!(s.auth_ok, 5);
    // A channel that stops answering is closed after three heartbeats.
    let mut silent = RawClient::connect(&env).await;
    silent.hello("acme", ACME_TOKEN).await;
    let mut heartbeats = 0;
    let last = loop {
        match silent.recv().await {
            Some(Message::Heartbeat(_)) => heartbeats += 1,
            other => break other,
        }
    };
    assert!(matches!(last, Some(Message::Error(ref e)) if e.code == "timeout"), "{last:?}");
    assert!(heartbeats >= 2);
    env.stats_until("heartbeat timeout", |s| s.heartbeat_timeouts == 1).await;
}

/// A TCP proxy between connector and relay whose connections can be cut.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
}

async fn proxy(target: SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let up = Arc::new(AtomicBool::new(true));
    let (cut, _) = broadcast::channel(4);
    let (u, c) = (up.clone(), cut.clone());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !u.load(Ordering::SeqCst) {
                continue; // refused while "down"
            }
            let mut killed = c.subscribe();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = killed.recv() => {}
                }
            });
        }
    });
    Proxy { addr, up, cut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_channel_mid_call_keeps_media_flowing_and_the_connector_re_registers() {
    let env = env(quick()).await;
    let proxy = proxy(env.addr).await;
    let c = Connector::start(env.connector_to(proxy.addr, "acme", ACME_TOKEN, "pbx-1")).expect("start");
    let h = c.handle();
    h.wait_connected(1, WAIT).await.expect("connected");
    let sockets = Call::sockets();
    let alloc = h.allocate(Call::request(&sockets.0)).await.expect("allocated");
    let mut call = Call::new(sockets, &alloc);

    let rounds = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let media = {
        let (rounds, failures, stop) = (rounds.clone(), failures.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // 250 rounds/s: a real call's pace is 50, the relay's default limit 1 000 pps.
                std::thread::sleep(Duration::from_millis(4)); // pacing, not synchronisation
                if call.round() {
                    rounds.fetch_add(1, Ordering::SeqCst);
                } else {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
            call
        })
    };
    let wait_rounds = |n: u64| {
        let rounds = rounds.clone();
        async move { eventually("media rounds", || rounds.load(Ordering::SeqCst), |r| *r >= n).await }
    };
    wait_rounds(20).await;

    // Cut the channel and keep the way to the relay closed for a while.
    proxy.up.store(false, Ordering::SeqCst);
    proxy.cut.send(()).expect("cut");
    eventually("the connector notices the cut", || h.status(), |s| !s.connected).await;
    let at_cut = rounds.load(Ordering::SeqCst);
    wait_rounds(at_cut + 100).await; // media flows while the channel is down
    assert_eq!(h.allocate(SessionRequest::default()).await.expect_err("no channel now"), ConnectorError::NotConnected);

    // The way is open again: the connector reconnects and re-registers.
    proxy.up.store(true, Ordering::SeqCst);
    h.wait_connected(2, WAIT).await.expect("reconnected");
    let at_reconnect = rounds.load(Ordering::SeqCst);
    wait_rounds(at_reconnect + 20).await;
    stop.store(true, Ordering::SeqCst);
    let call = media.join().expect("media thread");
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no packet lost or altered across the outage");
    assert_eq!((call.pbx_rx.auth_failures, call.phone_rx.auth_failures), (0, 0));
    // The session still belongs to the tenant: the new channel releases it.
    h.release(&alloc.id).await.expect("released over the new channel");
    let s = env.server.stats();
    assert_eq!((s.auth_ok, s.grace_released_sessions), (2, 0), "{s:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connector_is_rejected_under_the_reject_policy() {
    let env = env(ControlConfig { second_connector: SecondConnector::Reject, ..quick() }).await;
    let first = Connector::start(env.connector("acme", ACME_TOKEN, "pbx-a")).expect("start");
    first.handle().wait_connected(1, WAIT).await.expect("first connected");
    let second = Connector::start(env.connector("acme", ACME_TOKEN, "pbx-b")).expect("start");
    let h2 = second.handle();
    error_reported(&h2, "duplicate").await;
    assert!(first.handle().status().connected);
    let listed = env.server.connectors();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].connector_id, "pbx-a");
    assert!(env.server.stats().duplicates_rejected >= 1);
    // The same instance reconnecting (its old channel presumed dead) is let in.
    let mut raw = RawClient::connect(&env).await;
    raw.send(&Message::Hello(Hello {
        version: 1,
        tenant: "acme".into(),
        token: ACME_TOKEN.into(),
        connector_id: "pbx-a".into(),
        services: vec![],
        probe: false,
    }))
    .await;
    assert_eq!(result_code(&raw.recv().await.expect("result")), (true, None));
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connector_replaces_the_first_under_the_replace_policy() {
    let env = env(ControlConfig { second_connector: SecondConnector::Replace, ..quick() }).await;
    let mut cfg = env.connector("acme", ACME_TOKEN, "pbx-a");
    cfg.backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(20));
    let first = Connector::start(cfg).expect("start");
    let h1 = first.handle();
    h1.wait_connected(1, WAIT).await.expect("first connected");
    let second = Connector::start(env.connector("acme", ACME_TOKEN, "pbx-b")).expect("start");
    second.handle().wait_connected(1, WAIT).await.expect("second connected");
    error_reported(&h1, "replaced").await;
    // The replaced connector backs off fully (10–20 s with this backoff)
    // instead of fighting back after its 50 ms initial delay.
    let status = eventually("a retry delay", || h1.status(), |s| s.retry_in.is_some()).await;
    let wait = status.retry_in.expect("retry delay");
    assert!(wait >= Duration::from_secs(10), "full backoff after being replaced, not {wait:?}");
    assert_eq!(env.server.stats().replaced, 1);
    assert!(!h1.status().connected);
    first.stop().await;
    let listed = env.server.connectors();
    assert_eq!(listed.iter().map(|c| c.connector_id.as_str()).collect::<Vec<_>>(), ["pbx-b"]);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_tenant_whose_connector_stays_away_are_released_after_the_grace_period() {
    let env = env(ControlConfig { grace: Duration::from_millis(300), ..quick() }).await;
    let acme = Connector::start(env.connector("acme", ACME_TOKEN, "pbx-1")).expect("start");
    let globex = Connector::start(env.connector("globex", GLOBEX_TOKEN, "pbx-g")).expect("start");
    acme.handle().wait_connected(1, WAIT).await.expect("acme");
    globex.handle().wait_connected(1, WAIT).await.expect("globex");
    for _ in 0..2 {
        acme.handle().allocate(SessionRequest::default()).await.expect("acme session");
    }
    let kept = globex.handle().allocate(SessionRequest::default()).await.expect("globex session");
    acme.stop().await;
    env.stats_until("grace release", |s| s.grace_released_sessions == 2).await;
    let page = env.relay.handle().list(None, 100).await.expect("list");
    let ids: Vec<String> = page.sessions.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(ids, std::slice::from_ref(&kept.id), "only the absent tenant's sessions are released");
    globex.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_for_a_service_the_tenant_may_not_expose_is_refused() {
    let env = env(quick()).await;
    let mut c = RawClient::connect(&env).await;
    c.send(&Message::Hello(Hello {
        version: 1,
        tenant: "globex".into(),
        token: GLOBEX_TOKEN.into(),
        connector_id: "g".into(),
        services: vec!["sip-tls".into()],
        probe: false,
    }))
    .await;
    assert_eq!(result_code(&c.recv().await.expect("result")), (false, Some("unknown_service".into())));
    let mut c = RawClient::connect(&env).await;
    c.send(&Message::Hello(Hello {
        version: 2,
        tenant: "acme".into(),
        token: ACME_TOKEN.into(),
        connector_id: "a".into(),
        services: vec![],
        probe: false,
    }))
    .await;
    assert_eq!(result_code(&c.recv().await.expect("result")), (false, Some("unsupported_version".into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_is_presented_to_new_connections() {
    let env = env(quick()).await;
    let old = env.server.certificate().fingerprint();
    let fresh = pki();
    let key = load_certified_key(fresh.cert_pem.as_bytes(), fresh.key_pem.as_bytes()).expect("key");
    env.server.certificate().replace(key);
    assert_ne!(env.server.certificate().fingerprint(), old);
    // A connector pinned to the new certificate gets in; one pinned to the old one cannot.
    let mut cfg = env.connector("acme", ACME_TOKEN, "pbx-1");
    cfg.trust = ClientTrust::pinned_hex(&pem_fingerprint(fresh.cert_pem.as_bytes()).expect("fp")).expect("pin");
    let c = Connector::start(cfg).expect("start");
    c.handle().wait_connected(1, WAIT).await.expect("new certificate accepted");
    c.stop().await;
    let mut cfg = env.connector("acme", ACME_TOKEN, "pbx-1");
    cfg.trust = env.pinned();
    let c = Connector::start(cfg).expect("start");
    let h = c.handle();
    let status = eventually("a connect failure", || h.status(), |s| s.last_error.is_some()).await;
    assert_eq!(status.connects, 0, "old pin refused: {status:?}");
    c.stop().await;
}

/// A connector given several relays asks each for its load (a probe that
/// registers nothing) and uses the least loaded; a standby is never chosen;
/// when its relay disappears it fails over to the other, and its tenant's
/// sessions there are still its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_with_several_relays_picks_the_least_loaded_and_fails_over() {
    let shared = pki();
    let busy = env_with(quick(), shared.clone(), 5000).await;
    let idle = env_with(quick(), shared.clone(), 10000).await;
    let standby = env_with(quick(), shared, 15000).await;
    standby.relay.handle().set_standby(true);
    // The busy relay serves other calls already.
    for _ in 0..20 {
        busy.relay
            .handle()
            .allocate(relay_core::SessionSpec { tenant: "globex".into(), ..Default::default() })
            .await
            .expect("allocate");
    }
    let mut cfg = busy.connector("acme", ACME_TOKEN, "pbx-multi");
    cfg.more_relays = vec![standby.addr.to_string(), idle.addr.to_string()];
    let c = Connector::start(cfg).expect("start");
    let h = c.handle();
    h.wait_connected(1, WAIT).await.expect("connected");
    assert_eq!(h.status().relay, Some(idle.addr.to_string()), "the least loaded relay that serves");
    let s = h.allocate(SessionRequest::default()).await.expect("allocate");
    assert_eq!(idle.relay.handle().list(None, 10).await.expect("list").sessions.len(), 1);
    // Probes are answered without registering: only one connector is listed anywhere.
    assert_eq!(busy.server.connectors().len() + standby.server.connectors().len(), 0);
    assert!(busy.server.stats().probes >= 1 && standby.server.stats().probes >= 1);
    assert_eq!(standby.server.stats().auth_ok, 0, "a standby accepts no connector");
    // The idle relay's control listener goes away: the connector fails over.
    idle.server.shutdown();
    h.wait_connected(2, WAIT).await.expect("failed over");
    assert_eq!(h.status().relay, Some(busy.addr.to_string()));
    let t = h.allocate(SessionRequest::default()).await.expect("allocate on the other relay");
    assert_ne!(s.id, t.id);
    c.stop().await;
}
