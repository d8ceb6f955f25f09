//! `ucmrc-loadtest tunnel`: TLS connections through the relay's SNI-routed
//! tunnels to a local TLS server behind a connector — handshake rate, time
//! to first byte and bulk throughput, optionally against the same server
//! reached directly (interleaved, so noise hits both alike).
//!
//! Everything runs in this process on loopback, each party on its own tokio
//! runtime (relay, connector, PBX, clients) so the relay's CPU time can be
//! read from its own threads. The PBX is a rustls TLS 1.3 server with its
//! own CA and key; the relay never has them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use relay_core::connector::{Backoff, Connector, ConnectorConfig, TunnelTarget};
use relay_core::control::auth::token_hash;
use relay_core::control::server::{ControlConfig, ControlServer, TenantCredentials};
use relay_core::io::splice::PumpMode;
use relay_core::testkit::pki::issue;
use relay_core::tls::{load_certified_key, pem_fingerprint, ClientTrust, ReloadableCert};
use relay_core::tunnel::route::SniRouter;
use relay_core::tunnel::server::{TunnelConfig, TunnelServer};
use relay_core::wire::client_hello::build_client_hello;
use relay_core::{BackendKind, Relay, RelayConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use crate::media::histogram;

const TOKEN: &str = "loadtest-token";
const SNI: &str = "acme.relay.test";
/// Name of the relay runtime's threads (their CPU time is the relay's).
const RELAY_THREADS: &str = "lt-relay";

/// Tunnel load settings.
#[derive(Debug, Clone)]
pub struct TunnelOptions {
    /// Concurrent clients, each opening connections back to back.
    pub connections: usize,
    /// How long the clients open connections.
    pub duration: Duration,
    /// MiB sent over one connection for the throughput figure (0: skip).
    pub bulk_mib: usize,
    /// Also measure the same server reached directly.
    pub compare_direct: bool,
    /// How the relay moves tunnel bytes.
    pub pump: PumpMode,
}

impl Default for TunnelOptions {
    fn default() -> Self {
        Self {
            connections: 10,
            duration: Duration::from_secs(5),
            bulk_mib: 256,
            compare_direct: true,
            pump: PumpMode::Splice,
        }
    }
}

/// The report (`--json` writes it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TunnelReport {
    /// Concurrent clients.
    pub connections: usize,
    /// TLS handshakes completed through the relay.
    pub handshakes: u64,
    /// Handshakes per second through the relay.
    pub handshake_rate: f64,
    /// Connections that failed.
    pub failures: u64,
    /// Time to first byte of a new TLS connection through the relay, p50 µs.
    pub ttfb_p50_us: u64,
    /// ... p99 µs.
    pub ttfb_p99_us: u64,
    /// Handshakes per second straight to the server.
    pub direct_handshake_rate: Option<f64>,
    /// TTFB straight to the server, p50 µs.
    pub direct_ttfb_p50_us: Option<u64>,
    /// What the relay adds to the p50 TTFB, µs.
    pub added_ttfb_p50_us: Option<i64>,
    /// One connection's throughput through the relay, MiB/s.
    pub bulk_mib_s: Option<f64>,
    /// One connection's throughput straight to the server, MiB/s.
    pub direct_bulk_mib_s: Option<f64>,
    /// Relay CPU per GiB moved in the bulk run, ms.
    pub relay_cpu_ms_per_gib: Option<f64>,
}

fn runtime(name: &str) -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The PBX's TLS service: handshake, one byte at once, then a byte count
/// of whatever the client sends until it half-closes.
async fn tls_server(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else { return };
            if tls.write_all(b"!").await.is_err() || tls.flush().await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            let _ = tls.write_all(&n.to_be_bytes()).await;
            let _ = tls.shutdown().await;
        });
    }
}

/// A raw sink for the bulk figure (bytes after a ClientHello, so the relay
/// rather than TLS is measured): counts until EOF, answers the count.
async fn raw_server(listener: TcpListener) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k as u64,
                }
            }
            let _ = tcp.write_all(&n.to_be_bytes()).await;
        });
    }
}

async fn one_connection(to: SocketAddr, tls: &tokio_rustls::TlsConnector) -> Result<Duration, String> {
    let t0 = Instant::now();
    let tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(SNI).map_err(|e| e.to_string())?;
    let mut s = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
    let took = t0.elapsed();
    let _ = s.shutdown().await;
    Ok(took)
}

async fn bulk(to: SocketAddr, bytes: usize) -> Result<f64, String> {
    let hello = build_client_hello(Some(SNI), 0, 16384);
    let chunk = vec![0x5au8; 256 * 1024];
    let mut tcp = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    tcp.write_all(&hello).await.map_err(|e| e.to_string())?;
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        tcp.write_all(&chunk[..n]).await.map_err(|e| e.to_string())?;
        sent += n;
    }
    tcp.shutdown().await.map_err(|e| e.to_string())?;
    let mut count = [0u8; 8];
    tcp.read_exact(&mut count).await.map_err(|e| e.to_string())?;
    if u64::from_be_bytes(count) != (bytes + hello.len()) as u64 {
        return Err("bulk: bytes lost".into());
    }
    Ok(bytes as f64 / 1048576.0 / t0.elapsed().as_secs_f64())
}

/// Clients opening connections to `to` for `duration`: (handshakes, failures, TTFB histogram).
async fn handshake_load(
    to: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    clients: usize,
    duration: Duration,
) -> (u64, u64, Histogram<u64>) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (tls, done, failed) = (tls.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            while Instant::now() < deadline {
                match one_connection(to, &tls).await {
                    Ok(t) => {
                        let _ = h.record((t.as_micros() as u64).max(1));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            h
        }));
    }
    let mut all = histogram();
    for t in tasks {
        if let Ok(h) = t.await {
            let _ = all.add(h);
        }
    }
    (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed), all)
}

/// Runs the tunnel load (in-process relay, connector and server).
pub fn run(opts: &TunnelOptions) -> Result<TunnelReport, String> {
    let relay_rt = runtime(RELAY_THREADS)?;
    let connector_rt = runtime("lt-connector")?;
    let server_rt = runtime("lt-server")?;
    let client_rt = runtime("lt-client")?;
    let ctl = issue("relay.test")?;
    let srv = issue(SNI)?;
    let (tls_addr, raw_addr) = server_rt.block_on(origin_servers(&srv.cert_pem, &srv.key_pem))?;
    let relay = Relay::start(RelayConfig {
        backend: BackendKind::Portable,
        port_min: 24000,
        port_max: 24063,
        workers: 1,
        ..RelayConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let tunnel_config = TunnelConfig { pump: opts.pump, max_pending_per_ip: 4096, ..TunnelConfig::default() };
    let relay_side = relay_rt.block_on(relay_side(&relay, tunnel_config, &ctl.cert_pem, &ctl.key_pem))?;
    let targets = HashMap::from([
        ("tls".to_string(), TunnelTarget { addr: tls_addr, proxy_protocol: false }),
        ("raw".to_string(), TunnelTarget { addr: raw_addr, proxy_protocol: false }),
    ]);
    let connector = connector_rt.block_on(connect(relay_side.control, &ctl.cert_pem, targets))?;
    let tls = client_tls(&srv.ca_pem)?;
    let direct = Endpoints { tls: tls_addr, raw: raw_addr };
    let report = client_rt.block_on(measure(opts, &tls, &relay_side.tunnels, &direct));
    connector_rt.block_on(connector.stop());
    relay.shutdown(Duration::ZERO);
    Ok(report)
}

/// Where a TLS service and a raw TCP service listen.
struct Endpoints {
    tls: SocketAddr,
    raw: SocketAddr,
}

/// The relay's side: its control listener and its tunnel listeners.
struct RelaySide {
    control: SocketAddr,
    tunnels: Endpoints,
}

/// The services behind the PBX: a TLS server (for `SNI`) and a raw TCP sink.
async fn origin_servers(cert_pem: &str, key_pem: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let t = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let r = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addrs = (t.local_addr().map_err(|e| e.to_string())?, r.local_addr().map_err(|e| e.to_string())?);
    tokio::spawn(tls_server(t, acceptor));
    tokio::spawn(raw_server(r));
    Ok(addrs)
}

/// The relay's control listener (tenant acme) and its tunnel listeners
/// (`tls` and `raw`) with the connectors' data listener.
async fn relay_side(relay: &Relay, config: TunnelConfig, cert_pem: &str, key_pem: &str) -> Result<RelaySide, String> {
    let e = |e: std::io::Error| e.to_string();
    let cert =
        ReloadableCert::new(load_certified_key(cert_pem.as_bytes(), key_pem.as_bytes()).map_err(|e| e.to_string())?);
    let tenants = vec![TenantCredentials {
        id: "acme".into(),
        token_sha256: token_hash(TOKEN),
        services: vec!["tls".into(), "raw".into()],
    }];
    let control =
        ControlServer::new(ControlConfig::default(), cert, tenants, relay.handle()).map_err(|e| e.to_string())?;
    let l = TcpListener::bind("127.0.0.1:0").await.map_err(e)?;
    let control_addr = l.local_addr().map_err(e)?;
    let c = control.clone();
    tokio::spawn(async move { c.serve(l, std::future::pending()).await });
    let router = SniRouter::new([], &["{tenant}.relay.test".to_string()], ["acme".to_string()], None)
        .map_err(|e| e.to_string())?;
    let t = TunnelServer::new(config, router, control);
    let data = TcpListener::bind("127.0.0.1:0").await.map_err(e)?;
    let tls_l = TcpListener::bind("127.0.0.1:0").await.map_err(e)?;
    let raw_l = TcpListener::bind("127.0.0.1:0").await.map_err(e)?;
    let tunnels = Endpoints { tls: tls_l.local_addr().map_err(e)?, raw: raw_l.local_addr().map_err(e)? };
    let (t1, t2, t3) = (t.clone(), t.clone(), t);
    tokio::spawn(async move { t1.serve_data(data, std::future::pending()).await });
    tokio::spawn(async move { t2.serve_tunnel(tls_l, "tls".into(), std::future::pending()).await });
    tokio::spawn(async move { t3.serve_tunnel(raw_l, "raw".into(), std::future::pending()).await });
    Ok(RelaySide { control: control_addr, tunnels })
}

/// acme's connector, pinned to the relay's certificate, serving `targets`.
async fn connect(
    control: SocketAddr,
    relay_cert_pem: &str,
    targets: HashMap<String, TunnelTarget>,
) -> Result<Connector, String> {
    let trust = ClientTrust::pinned_hex(&pem_fingerprint(relay_cert_pem.as_bytes()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let mut cfg = ConnectorConfig::new(&control.to_string(), "relay.test", trust, "acme", TOKEN);
    cfg.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    cfg.tunnels = targets;
    let c = Connector::start(cfg).map_err(|e| e.to_string())?;
    c.handle().wait_connected(1, Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
    Ok(c)
}

/// A TLS 1.3 client trusting `ca_pem`.
fn client_tls(ca_pem: &str) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(client_cfg)))
}

/// Handshakes through the relay and (optionally) direct, interleaved in
/// quarters of the duration; then bulk transfer and the relay's CPU per GiB.
async fn measure(
    opts: &TunnelOptions,
    tls: &tokio_rustls::TlsConnector,
    relay: &Endpoints,
    direct: &Endpoints,
) -> TunnelReport {
    let mut r = TunnelReport { connections: opts.connections, ..TunnelReport::default() };
    let quarter = opts.duration / 4;
    let mut relay_h = histogram();
    let mut direct_h = histogram();
    let (mut direct_done, mut direct_time) = (0u64, Duration::ZERO);
    let mut relay_time = Duration::ZERO;
    for _ in 0..2 {
        let t0 = Instant::now();
        let (d, f, h) = handshake_load(relay.tls, tls, opts.connections, quarter).await;
        relay_time += t0.elapsed();
        r.handshakes += d;
        r.failures += f;
        let _ = relay_h.add(h);
        if opts.compare_direct {
            let t0 = Instant::now();
            let (d, _, h) = handshake_load(direct.tls, tls, opts.connections, quarter).await;
            direct_time += t0.elapsed();
            direct_done += d;
            let _ = direct_h.add(h);
        }
    }
    r.handshake_rate = r.handshakes as f64 / relay_time.as_secs_f64().max(1e-9);
    r.ttfb_p50_us = relay_h.value_at_quantile(0.5);
    r.ttfb_p99_us = relay_h.value_at_quantile(0.99);
    if opts.compare_direct {
        r.direct_handshake_rate = Some(direct_done as f64 / direct_time.as_secs_f64().max(1e-9));
        r.direct_ttfb_p50_us = Some(direct_h.value_at_quantile(0.5));
        r.added_ttfb_p50_us = Some(r.ttfb_p50_us as i64 - direct_h.value_at_quantile(0.5) as i64);
    }
    if opts.bulk_mib > 0 {
        let bytes = opts.bulk_mib << 20;
        if opts.compare_direct {
            r.direct_bulk_mib_s = bulk(direct.raw, bytes).await.ok();
        }
        let c0 = crate::cpu::threads_cpu_ns(RELAY_THREADS);
        r.bulk_mib_s = bulk(relay.raw, bytes).await.ok();
        let c1 = crate::cpu::threads_cpu_ns(RELAY_THREADS);
        let gib = bytes as f64 / (1u64 << 30) as f64;
        r.relay_cpu_ms_per_gib = r.bulk_mib_s.map(|_| (c1 - c0) as f64 / 1e6 / gib);
    }
    r
}
