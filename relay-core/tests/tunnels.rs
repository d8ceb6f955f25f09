//! TLS pass-through tunnels end to end on loopback: a rustls client ⇄ the
//! relay's tunnel listener ⇄ a connector ⇄ a rustls server playing the
//! PBX. The relay is never given the PBX's key; it routes by SNI and splices.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use relay_core::connector::{Connector, TunnelTarget};
use relay_core::control::frame::{Frame, FrameType};
use relay_core::control::messages::{Attach, Message};
use relay_core::control::server::ControlConfig;
use relay_core::io::splice::PumpMode;
use relay_core::tls::load_certified_key;
use relay_core::tunnel::proxy;
use relay_core::tunnel::route::SniRouter;
use relay_core::tunnel::server::{Rejection, TunnelConfig, TunnelServer, TunnelStats};
use relay_core::wire::client_hello::build_client_hello;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use test_support::control::*;
use test_support::poll::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Tunnels {
    env: Env,
    tunnels: TunnelServer,
    /// The `sip-tls` tunnel listener.
    sip: SocketAddr,
}

async fn tunnels(config: TunnelConfig) -> Tunnels {
    let env = env(ControlConfig { grace: Duration::from_secs(60), ..quick() }).await;
    let router = SniRouter::new(
        [("pbx.globex.example".to_string(), "globex".to_string())],
        &["{tenant}.relay.test".to_string()],
        ["acme".to_string(), "globex".to_string()],
        None,
    )
    .expect("router");
    let tunnels = TunnelServer::new(config, router, env.server.clone());
    let sip_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sip = sip_listener.local_addr().expect("addr");
    let data_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (t1, t2) = (tunnels.clone(), tunnels.clone());
    tokio::spawn(async move { t1.serve_tunnel(sip_listener, "sip-tls".into(), std::future::pending()).await });
    tokio::spawn(async move { t2.serve_data(data_listener, std::future::pending()).await });
    Tunnels { env, tunnels, sip }
}

impl Tunnels {
    async fn until(&self, what: &str, f: impl Fn(&TunnelStats) -> bool) -> TunnelStats {
        eventually(what, || self.tunnels.stats(), f).await
    }

    /// acme's connector serving `sip-tls` from `pbx`.
    async fn connector(&self, pbx: SocketAddr, proxy_protocol: bool) -> Connector {
        let mut cfg = self.env.connector("acme", ACME_TOKEN, "pbx-1");
        cfg.tunnels = HashMap::from([("sip-tls".to_string(), TunnelTarget { addr: pbx, proxy_protocol })]);
        let c = Connector::start(cfg).expect("connector");
        c.handle().wait_connected(1, WAIT).await.expect("connected");
        c
    }
}

const UP: usize = 4 << 20;
const DOWN: usize = 3 << 20;

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13).wrapping_add(seed) as u8).collect()
}

/// The PBX: a rustls server with its own CA and key (the relay has neither).
/// Reads a PROXY v2 header first when asked; reads UP bytes, answers DOWN.
async fn pbx(proxy_v2: bool) -> (SocketAddr, String, tokio::task::JoinHandle<Option<(SocketAddr, SocketAddr)>>) {
    let pki = pki_for("acme.relay.test");
    let key = load_certified_key(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).expect("pbx key");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            key.cert.clone(),
            rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).expect("key"),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut seen = None;
        if proxy_v2 {
            let mut head = [0u8; 16];
            tcp.read_exact(&mut head).await.expect("proxy header");
            let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
            let mut rest = vec![0u8; len];
            tcp.read_exact(&mut rest).await.expect("proxy addresses");
            let whole: Vec<u8> = head.iter().chain(&rest).copied().collect();
            let (src, dst, _) = proxy::parse(&whole).expect("a PROXY v2 header");
            seen = Some((src, dst));
        }
        let mut tls = acceptor.accept(tcp).await.expect("TLS with the PBX's own certificate");
        let mut got = vec![0u8; UP];
        tls.read_exact(&mut got).await.expect("upload");
        assert!(got == pattern(UP, 1), "upload arrived intact");
        tls.write_all(&pattern(DOWN, 2)).await.expect("download");
        tls.flush().await.expect("flush");
        tls.shutdown().await.expect("close_notify");
        seen
    });
    (addr, pki.ca_pem, task)
}

async fn tls_client(
    to: SocketAddr,
    ca_pem: &str,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca")).expect("root");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(to).await?;
    let name = ServerName::try_from(sni.to_string()).expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_reaches_the_pbx_through_the_relay_and_megabytes_flow_both_ways_intact() {
    let t = tunnels(TunnelConfig::default()).await;
    let (pbx_addr, pbx_ca, pbx_task) = pbx(true).await;
    let connector = t.connector(pbx_addr, true).await;

    let mut tls = tls_client(t.sip, &pbx_ca, "acme.relay.test").await.expect("handshake with the PBX, end to end");
    let client_addr = tls.get_ref().0.local_addr().expect("client addr");
    tls.write_all(&pattern(UP, 1)).await.expect("upload");
    tls.flush().await.expect("flush");
    let mut got = Vec::new();
    tls.read_to_end(&mut got).await.expect("download");
    assert!(got == pattern(DOWN, 2), "download arrived intact ({} bytes)", got.len());

    let (src, dst) = pbx_task.await.expect("pbx").expect("PROXY v2 header");
    assert_eq!(src, client_addr, "the PBX learns the endpoint's address");
    assert_eq!(dst, t.sip, "and the relay address it connected to");
    drop(tls);
    let s = t.until("tunnel closed", |s| s.ended_closed + s.ended_error == 1 && s.active == 0).await;
    assert_eq!((s.accepted, s.opened), (1, 1));
    assert!(s.bytes_to_pbx > UP as u64 && s.bytes_to_endpoint > DOWN as u64, "{s:?}");
    assert!(s.rejected.iter().all(|(_, n)| *n == 0), "{s:?}");
    assert_eq!(connector.handle().status().streams_opened, 1);
    connector.stop().await;
}

/// A raw PBX that expects exactly `hello` first (the relay forwards it
/// verbatim), then answers "routed".
async fn raw_pbx(hello: Vec<u8>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut got = vec![0u8; hello.len()];
        tcp.read_exact(&mut got).await.expect("hello");
        assert_eq!(got, hello, "the ClientHello reaches the PBX byte for byte");
        tcp.write_all(b"routed").await.expect("answer");
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_split_across_records_and_segments_and_large_ones_route_correctly() {
    let t = tunnels(TunnelConfig::default()).await;
    let cases = [(0usize, 60usize, 1usize), (3000, 512, 7), (0, 16384, 1), (9000, 4096, 1000)];
    for (i, (padding, record, segment)) in cases.into_iter().enumerate() {
        let hello = build_client_hello(Some("acme.relay.test"), padding, record);
        let (pbx_addr, pbx_task) = raw_pbx(hello.clone()).await;
        let connector = t.connector(pbx_addr, false).await;
        let mut tcp = TcpStream::connect(t.sip).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        for chunk in hello.chunks(segment) {
            tcp.write_all(chunk).await.expect("segment");
        }
        let mut answer = [0u8; 6];
        tcp.read_exact(&mut answer).await.expect("answer through the tunnel");
        assert_eq!(&answer, b"routed", "case {i}");
        pbx_task.await.expect("pbx");
        connector.stop().await;
    }
    assert_eq!(t.tunnels.stats().opened, cases.len() as u64);
}

async fn refused(to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(to).await.expect("connect");
    tcp.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut out)).await.expect("the relay closes").ok();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_and_unroutable_connections_are_refused_with_counted_reasons() {
    let t = tunnels(TunnelConfig {
        hello_timeout: Duration::from_millis(300),
        ticket_ttl: Duration::from_millis(500),
        ..TunnelConfig::default()
    })
    .await;
    let alert_unrecognized_name = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];
    let unknown = refused(t.sip, &build_client_hello(Some("nobody.example"), 0, 16384)).await;
    assert_eq!(unknown, alert_unrecognized_name);
    let no_sni = refused(t.sip, &build_client_hello(None, 0, 16384)).await;
    assert_eq!(no_sni, alert_unrecognized_name);
    assert!(refused(t.sip, b"GET / HTTP/1.1\r\nHost: acme.relay.test\r\n\r\n").await.is_empty(), "nothing forwarded");
    let oversize = build_client_hello(Some("acme.relay.test"), 20000, 16384);
    assert!(refused(t.sip, &oversize[..16384]).await.is_empty());
    assert!(refused(t.sip, &[]).await.is_empty(), "a silent client is dropped after the hello timeout");
    assert!(refused(t.sip, &build_client_hello(Some("acme.relay.test"), 0, 100)[..50]).await.is_empty(), "stalled");
    // Routable, but the tenant's connector is not there.
    let alert_internal_error = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80];
    assert_eq!(refused(t.sip, &build_client_hello(Some("globex.relay.test"), 0, 16384)).await, alert_internal_error);
    let s = t.until("all refusals counted", |s| s.rejected(Rejection::HelloTimeout) == 2).await;
    for reason in
        [Rejection::UnknownSni, Rejection::NoSni, Rejection::NotTls, Rejection::OversizeHello, Rejection::NoConnector]
    {
        assert_eq!(s.rejected(reason), 1, "{}: {s:?}", reason.as_str());
    }
    assert_eq!(s.opened, 0);
}

/// Dials the data listener and presents `ticket`; returns up to `want`
/// bytes the relay sends before it closes.
async fn attach(data_addr: SocketAddr, ticket: &str, want: usize) -> Vec<u8> {
    let mut tcp = TcpStream::connect(data_addr).await.expect("data");
    tcp.write_all(&Message::Attach(Attach { ticket: ticket.into() }).encode().encode()).await.expect("attach");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < want {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await.expect("data or close") {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_single_use_and_short_lived() {
    let t = tunnels(TunnelConfig { ticket_ttl: Duration::from_millis(400), ..TunnelConfig::default() }).await;
    // A connector that announces sip-tls but lets the test handle open_stream.
    let mut cfg = t.env.connector("acme", ACME_TOKEN, "pbx-1");
    cfg.services = vec!["sip-tls".into()];
    let c = Connector::start(cfg).expect("connector");
    c.handle().wait_connected(1, WAIT).await.expect("connected");
    let mut opens = c.take_open_streams().expect("open streams");

    let hello = build_client_hello(Some("acme.relay.test"), 0, 16384);
    let mut client = TcpStream::connect(t.sip).await.expect("client");
    client.write_all(&hello).await.expect("hello");
    let open = tokio::time::timeout(WAIT, opens.recv()).await.expect("open_stream").expect("open");
    assert_eq!(open.service, "sip-tls");
    assert_eq!(open.client_addr, client.local_addr().expect("addr").to_string());
    let data_addr = SocketAddr::from(([127, 0, 0, 1], open.data_port));
    assert_eq!(attach(data_addr, &open.ticket, hello.len()).await, hello, "the first attach gets the hello");
    assert!(attach(data_addr, &open.ticket, 1).await.is_empty(), "a reused ticket is refused");
    assert!(attach(data_addr, "AAAAAAAAAAAAAAAAAAAAAA", 1).await.is_empty(), "an unknown ticket is refused");
    // A foreign frame on the data listener.
    let bad = Frame::new(FrameType::Hello, b"{}".to_vec()).encode();
    let mut tcp = TcpStream::connect(data_addr).await.expect("data");
    tcp.write_all(&bad).await.expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut sink)).await.expect("closed");

    // A ticket presented after its TTL: the endpoint was already let go.
    let mut late_client = TcpStream::connect(t.sip).await.expect("client");
    late_client.write_all(&hello).await.expect("hello");
    let open = tokio::time::timeout(WAIT, opens.recv()).await.expect("open_stream").expect("open");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, late_client.read_to_end(&mut sink)).await.expect("endpoint let go");
    assert!(attach(data_addr, &open.ticket, 1).await.is_empty(), "an expired ticket is refused");
    let s = t
        .until("ticket refusals", |s| {
            s.rejected(Rejection::TicketReused) == 1
                && s.rejected(Rejection::TicketUnknown) == 1
                && s.rejected(Rejection::TicketExpired) == 1
                && s.rejected(Rejection::DataBadFrame) == 1
                && s.rejected(Rejection::ConnectorTimeout) == 1
        })
        .await;
    assert_eq!(s.opened, 1);
    drop(client);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_half_open_connections_do_not_stop_a_legitimate_client() {
    let t = tunnels(TunnelConfig {
        hello_timeout: Duration::from_secs(30),
        max_pending_per_ip: 4,
        max_pending: 1000,
        pump: PumpMode::Splice,
        ..TunnelConfig::default()
    })
    .await;
    // 10 000 connections that never send a byte, from 100 source addresses.
    let mut held = Vec::new();
    let mut connected = 0u64;
    for ip in 0..100u32 {
        let source = SocketAddr::from(([127, 0, 3, 1 + ip as u8], 0));
        for _ in 0..100 {
            let s = tokio::net::TcpSocket::new_v4().expect("socket");
            s.bind(source).expect("bind");
            if let Ok(tcp) = s.connect(t.sip).await {
                connected += 1;
                held.push(tcp);
            }
        }
        // Once the relay has seen them all, what is over the source's cap is
        // already closed: let those go, keep holding the rest.
        t.until("batch accepted", |s| s.accepted == connected).await;
        held.retain(|tcp| {
            let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            // Non-blocking: WouldBlock means open and silent; 0 means closed.
            matches!(socket2::SockRef::from(tcp).peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
    }
    assert!(connected >= 9_000, "the kernel accepted {connected} of 10 000 connections");
    let s = t.until("caps applied", |s| s.rejected(Rejection::PerSourceCap) == connected - 400).await;
    assert_eq!(s.rejected(Rejection::TotalCap), 0);
    // A legitimate client is served meanwhile.
    let hello = build_client_hello(Some("acme.relay.test"), 0, 16384);
    let (pbx_addr, pbx_task) = raw_pbx(hello.clone()).await;
    let connector = t.connector(pbx_addr, false).await;
    let mut tcp = TcpStream::connect(t.sip).await.expect("connect");
    tcp.write_all(&hello).await.expect("hello");
    let mut answer = [0u8; 6];
    tcp.read_exact(&mut answer).await.expect("served");
    assert_eq!(&answer, b"routed");
    pbx_task.await.expect("pbx");
    drop(held);
    connector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_tunnel_limit_is_refused_until_a_tunnel_closes() {
    let t = tunnels(TunnelConfig::default()).await;
    t.tunnels.set_tenant_limits(HashMap::from([("acme".to_string(), 1)]));
    let hello = build_client_hello(Some("acme.relay.test"), 0, 16384);
    let (pbx_addr, pbx_task) = raw_pbx(hello.clone()).await;
    let connector = t.connector(pbx_addr, false).await;
    let mut first = TcpStream::connect(t.sip).await.expect("first");
    first.write_all(&hello).await.expect("hello");
    let mut answer = [0u8; 6];
    first.read_exact(&mut answer).await.expect("first tunnel open");
    pbx_task.await.expect("pbx");
    // The second concurrent tunnel of the tenant is refused with an alert.
    let alert_internal_error = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80];
    assert_eq!(refused(t.sip, &hello).await, alert_internal_error);
    assert_eq!(t.tunnels.stats().rejected(Rejection::TenantLimit), 1);
    // Closing the first frees the place.
    drop(first);
    t.until("first tunnel closed", |s| s.active == 0).await;
    let (pbx_addr, pbx_task) = raw_pbx(hello.clone()).await;
    connector.stop().await;
    let connector = t.connector(pbx_addr, false).await;
    let mut again = TcpStream::connect(t.sip).await.expect("again");
    again.write_all(&hello).await.expect("hello");
    again.read_exact(&mut answer).await.expect("a new tunnel opens");
    pbx_task.await.expect("pbx");
    connector.stop().await;
}

/// A PBX accepting any number of connections: each must start with a PROXY
/// v2 header and then `hello`; it reports the header's source and answers.
async fn pooled_pbx(hello: Vec<u8>) -> (SocketAddr, tokio::sync::mpsc::Receiver<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (hello, tx) = (hello.clone(), tx.clone());
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                tcp.read_exact(&mut head).await.expect("proxy header");
                let mut rest = vec![0u8; usize::from(u16::from_be_bytes([head[14], head[15]]))];
                tcp.read_exact(&mut rest).await.expect("proxy body");
                let whole: Vec<u8> = head.iter().chain(&rest).copied().collect();
                let (src, _, _) = proxy::parse(&whole).expect("PROXY v2");
                let mut got = vec![0u8; hello.len()];
                tcp.read_exact(&mut got).await.expect("hello");
                assert_eq!(got, hello);
                tcp.write_all(b"routed").await.expect("answer");
                let _ = tx.send(src).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_data_connections_serve_later_tunnels_without_a_dial() {
    let t = tunnels(TunnelConfig { pool_size: 2, ..TunnelConfig::default() }).await;
    let hello = build_client_hello(Some("acme.relay.test"), 0, 16384);
    let (pbx_addr, mut seen) = pooled_pbx(hello.clone()).await;
    let connector = t.connector(pbx_addr, true).await;
    for i in 0..4u64 {
        let mut tcp = TcpStream::connect(t.sip).await.expect("connect");
        tcp.write_all(&hello).await.expect("hello");
        let mut answer = [0u8; 6];
        tcp.read_exact(&mut answer).await.expect("answer");
        assert_eq!(&answer, b"routed");
        let src = tokio::time::timeout(WAIT, seen.recv()).await.expect("pbx saw it").expect("src");
        assert_eq!(src, tcp.local_addr().expect("addr"), "PROXY v2 names the endpoint on pooled streams too");
        // The first tunnel asks for standby connections; later ones use them.
        t.until("pool refilled", |s| s.standby == 2).await;
        assert_eq!(t.tunnels.stats().pooled, i, "tunnel {i}");
    }
    assert_eq!(connector.handle().status().streams_opened, 4);
    connector.stop().await;
    // A new connector channel: the old channel's standbys are not used.
    let (pbx_addr, mut seen) = pooled_pbx(hello.clone()).await;
    let connector = t.connector(pbx_addr, true).await;
    let mut tcp = TcpStream::connect(t.sip).await.expect("connect");
    tcp.write_all(&hello).await.expect("hello");
    let mut answer = [0u8; 6];
    tcp.read_exact(&mut answer).await.expect("answer through the new connector");
    tokio::time::timeout(WAIT, seen.recv()).await.expect("the new PBX target saw it").expect("src");
    assert_eq!(t.tunnels.stats().pooled, 3, "served by a fresh dial, not a dead standby");
    connector.stop().await;
}

/// Connects to `to` from a chosen loopback source address.
async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(SocketAddr::from((source, 0))).expect("bind source");
    s.connect(to).await.expect("connect")
}

/// Opens a tunnel from `source` and waits for the PBX's answer.
async fn open_tunnel(t: &Tunnels, source: [u8; 4], hello: &[u8]) -> TcpStream {
    let mut tcp = connect_from(source, t.sip).await;
    tcp.write_all(hello).await.expect("hello");
    let mut answer = [0u8; 6];
    tcp.read_exact(&mut answer).await.expect("served");
    assert_eq!(&answer, b"routed");
    tcp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_hold_a_tenants_whole_tunnel_quota() {
    let t = tunnels(TunnelConfig { tenant_max_per_source: 2, pool_size: 0, ..TunnelConfig::default() }).await;
    let hello = build_client_hello(Some("acme.relay.test"), 0, 16384);
    let (pbx_addr, _seen) = pooled_pbx(hello.clone()).await;
    let connector = t.connector(pbx_addr, true).await;
    let held = [open_tunnel(&t, [127, 0, 0, 1], &hello).await, open_tunnel(&t, [127, 0, 0, 1], &hello).await];
    // A third from the same address is refused; the tenant still has room.
    let mut third = connect_from([127, 0, 0, 1], t.sip).await;
    third.write_all(&hello).await.expect("hello");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, third.read_to_end(&mut out)).await.expect("closed").ok();
    assert_eq!(out, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80], "an internal_error alert");
    assert_eq!(t.tunnels.stats().rejected(Rejection::SourceLimit), 1);
    // Everyone else is served.
    let other = open_tunnel(&t, [127, 0, 0, 2], &hello).await;
    drop((held, other));
    connector.stop().await;
}

/// A tunnel listener with small hello caps (8 in all, 2 per source), its
/// PBX behind a connector, and a phone (127.0.0.9) whose tunnel carried the
/// PBX's answer: an endpoint the listener knows.
struct KnownPhone {
    t: Tunnels,
    /// The phone's ClientHello.
    hello: Vec<u8>,
    connector: Connector,
    /// The PBX's accepted sources (kept so the PBX keeps answering).
    _seen: tokio::sync::mpsc::Receiver<SocketAddr>,
}

async fn small_caps_and_a_known_phone() -> KnownPhone {
    let t = tunnels(TunnelConfig {
        max_pending: 8,
        max_pending_per_ip: 2,
        hello_timeout: Duration::from_secs(30),
        pool_size: 0,
        ..TunnelConfig::default()
    })
    .await;
    let hello = build_client_hello(Some("acme.relay.test"), 0, 16384);
    let (pbx_addr, _seen) = pooled_pbx(hello.clone()).await;
    let connector = t.connector(pbx_addr, true).await;
    // The phone's tunnel carried its PBX's answer: its address is known
    // from then on.
    drop(open_tunnel(&t, [127, 0, 0, 9], &hello).await);
    t.until("the phone's tunnel ended", |s| s.active == 0 && s.opened == 1).await;
    KnownPhone { t, hello, connector, _seen }
}

/// Two silent connections from each of 127.0.0.`ips`, each holding a place.
async fn silent_connections(t: &Tunnels, ips: std::ops::Range<u8>) -> Vec<TcpStream> {
    let mut silent = Vec::new();
    for ip in ips {
        for _ in 0..2 {
            silent.push(connect_from([127, 0, 0, ip], t.sip).await);
        }
    }
    silent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_filling_the_hello_caps_cannot_lock_out_an_endpoint_already_seen() {
    let KnownPhone { t, hello, connector, _seen } = small_caps_and_a_known_phone().await;
    // A handful of strangers hold every place they may take with silent connections.
    let silent = silent_connections(&t, 20..24).await;
    t.until("strangers stopped at their share", |s| s.rejected(Rejection::TotalCap) == 2).await;
    // The phone comes back (a re-registration): the reserved places are its.
    drop(open_tunnel(&t, [127, 0, 0, 9], &hello).await);
    drop(silent);
    connector.stop().await;
}

/// A hello anyone can send earns no place in the share kept for known
/// endpoints: strangers each send one hello routed by a pattern (to a
/// tenant without a connector, and to one that does not exist), then fill
/// every place they may take; the phone whose tunnel carried its PBX's
/// answer still connects. (Before, one routed hello made a stranger known:
/// they held all 8 places and the phone was refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_with_one_routed_hello_each_do_not_earn_the_reserve() {
    let KnownPhone { t, hello, connector, _seen } = small_caps_and_a_known_phone().await;
    let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02];
    for ip in 30..38u8 {
        for name in ["globex.relay.test", "ghost.relay.test"] {
            let mut s = connect_from([127, 0, 0, ip], t.sip).await;
            s.write_all(&build_client_hello(Some(name), 0, 16384)).await.expect("hello");
            let mut out = Vec::new();
            tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("closed").ok();
            assert!(out.starts_with(&alert), "{name} refused with an alert: {out:?}");
        }
    }
    let s = t.tunnels.stats();
    assert_eq!((s.rejected(Rejection::NoConnector), s.rejected(Rejection::UnknownSni)), (8, 8));
    // The strangers fill every place open to them: 6 of 8.
    let silent = silent_connections(&t, 30..38).await;
    t.until("strangers stopped at their share", |s| s.rejected(Rejection::TotalCap) == 10).await;
    // The phone still gets in, and its PBX answers.
    drop(open_tunnel(&t, [127, 0, 0, 9], &hello).await);
    drop(silent);
    connector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_requests_a_connector_never_attaches_are_forgotten() {
    // The connector is told a data port nothing listens on: it never attaches.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
    let t = tunnels(TunnelConfig {
        pool_size: 2,
        ticket_ttl: Duration::from_millis(300),
        data_port: closed,
        ..TunnelConfig::default()
    })
    .await;
    let hello = build_client_hello(Some("acme.relay.test"), 0, 16384);
    let (pbx_addr, _seen) = pooled_pbx(hello.clone()).await;
    let connector = t.connector(pbx_addr, true).await;
    for i in 1..=3u64 {
        assert_eq!(refused(t.sip, &hello).await, [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80]);
        t.until("the endpoint's ticket timed out", |s| s.rejected(Rejection::ConnectorTimeout) == i).await;
    }
    // Each endpoint asked for standby connections that never came: every
    // waiter is forgotten once its ticket expires.
    t.until("no waiter left", |s| s.awaited == 0).await;
    connector.stop().await;
}
