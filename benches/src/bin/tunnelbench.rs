//! `tunnelbench`: TLS pass-through tunnels, relay vs direct, in one run.
//!
//! ```text
//! cargo run --release -p ucmrc-benches --bin tunnelbench -- [--connections 300] [--bulk-mib 512] [--rounds 3]
//! ```
//!
//! Everything is on loopback in one process, each part on its own tokio
//! runtime (relay, connector, PBX, client) so the relay's CPU time can be
//! read from its own threads. Measured, interleaved so machine noise hits
//! both sides alike:
//!
//! - time to first byte of a new TLS 1.3 connection (connect → handshake
//!   with the PBX's certificate → first application byte), direct to the
//!   PBX vs through the relay's tunnel listener; p50/p90 and the added p50;
//! - bulk throughput of one connection (raw bytes after a ClientHello, so
//!   the relay, not TLS, is measured), direct vs relay with `splice` vs
//!   relay with plain copy; median of `--rounds`;
//! - relay CPU per GiB moved (utime + stime of the relay runtime's threads).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::connector::{Backoff, Connector, ConnectorConfig, TunnelTarget};
use relay_core::control::auth::token_hash;
use relay_core::control::server::{ControlConfig, ControlServer, TenantCredentials};
use relay_core::control::tls::{load_certified_key, pem_fingerprint, ClientTrust, ReloadableCert};
use relay_core::io::splice::PumpMode;
use relay_core::tunnel::route::SniRouter;
use relay_core::tunnel::server::{TunnelConfig, TunnelServer};
use relay_core::wire::client_hello::build_client_hello;
use relay_core::{BackendKind, Relay, RelayConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const TOKEN: &str = "bench-token";
const RELAY_THREAD: &str = "tb-relay";

struct Args {
    connections: usize,
    bulk_mib: usize,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args { connections: 300, bulk_mib: 512, rounds: 3 };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let n = v.get(i + 1).and_then(|x| x.parse().ok());
        match (v[i].as_str(), n) {
            ("--connections", Some(n)) => a.connections = n,
            ("--bulk-mib", Some(n)) => a.bulk_mib = n,
            ("--rounds", Some(n)) => a.rounds = n,
            _ => {
                eprintln!("usage: tunnelbench [--connections N] [--bulk-mib N] [--rounds N]");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

fn runtime(name: &str, threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// CPU time (user + system) of this process's threads named `name`, ns.
fn thread_cpu_ns(name: &str) -> u64 {
    let ticks_ns = 1_000_000_000 / 100; // USER_HZ
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        if let Some((_, rest)) = stat.rsplit_once(") ") {
            let f: Vec<&str> = rest.split(' ').collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            total += (n(11) + n(12)) * ticks_ns;
        }
    }
    total
}

fn pki(name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec![name.to_string()])
        .expect("params")
        .signed_by(&key, &Issuer::new(ca_params, ca_key))
        .expect("cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// The PBX's TLS service: handshake, then one byte at once, then close.
async fn tls_pbx(listener: TcpListener, cert_pem: String, key_pem: String) {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().expect("chain");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls.write_all(b"!").await;
                let _ = tls.flush().await;
                let mut sink = [0u8; 64];
                let _ = tls.read(&mut sink).await;
            }
        });
    }
}

/// A raw sink: reads everything until EOF, answers the byte count.
async fn raw_pbx(listener: TcpListener) {
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

async fn ttfb(to: SocketAddr, tls: &tokio_rustls::TlsConnector) -> Duration {
    let t0 = Instant::now();
    let tcp = TcpStream::connect(to).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("acme.relay.test").expect("name");
    let mut s = tls.connect(name, tcp).await.expect("TLS handshake with the PBX");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("first byte");
    t0.elapsed()
}

async fn bulk(to: SocketAddr, bytes: usize) -> f64 {
    let hello = build_client_hello(Some("acme.relay.test"), 0, 16384);
    let chunk = vec![0x5au8; 256 * 1024];
    let mut tcp = TcpStream::connect(to).await.expect("connect");
    let t0 = Instant::now();
    tcp.write_all(&hello).await.expect("hello");
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        tcp.write_all(&chunk[..n]).await.expect("bulk");
        sent += n;
    }
    tcp.shutdown().await.expect("half-close");
    let mut count = [0u8; 8];
    tcp.read_exact(&mut count).await.expect("count");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(u64::from_be_bytes(count), (bytes + hello.len()) as u64, "every byte arrived");
    bytes as f64 / secs
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let a = args();
    let relay_rt = runtime(RELAY_THREAD, 1);
    let connector_rt = runtime("tb-connector", 1);
    let pbx_rt = runtime("tb-pbx", 1);
    let client_rt = runtime("tb-client", 1);

    let (ctl_ca, ctl_cert, ctl_key) = pki("relay.test");
    let (pbx_ca, pbx_cert, pbx_key) = pki("acme.relay.test");
    let (pbx_tls, pbx_raw) = pbx_rt.block_on(async {
        let t = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let r = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addrs = (t.local_addr().expect("addr"), r.local_addr().expect("addr"));
        tokio::spawn(tls_pbx(t, pbx_cert, pbx_key));
        tokio::spawn(raw_pbx(r));
        addrs
    });

    let relay = Relay::start(RelayConfig {
        backend: BackendKind::Portable,
        port_min: 46000,
        port_max: 46099,
        workers: 1,
        ..RelayConfig::default()
    })
    .expect("relay");
    let (control_addr, splice_addr, copy_addr) = relay_rt.block_on(async {
        let cert = ReloadableCert::new(load_certified_key(ctl_cert.as_bytes(), ctl_key.as_bytes()).expect("key"));
        let tenants = vec![TenantCredentials {
            id: "acme".into(),
            token_sha256: token_hash(TOKEN),
            services: vec!["tls".into(), "raw".into()],
        }];
        let control = ControlServer::new(ControlConfig::default(), cert, tenants, relay.handle()).expect("control");
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let control_addr = l.local_addr().expect("addr");
        let c = control.clone();
        tokio::spawn(async move { c.serve(l, std::future::pending()).await });
        let router = SniRouter::new([], &["{tenant}.relay.test".to_string()], None).expect("router");
        let mut addrs = Vec::new();
        for mode in [PumpMode::Splice, PumpMode::Copy] {
            let t = TunnelServer::new(
                TunnelConfig { pump: mode, ..TunnelConfig::default() },
                router.clone(),
                control.clone(),
            );
            let data = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let tls_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let raw_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.push((tls_l.local_addr().expect("addr"), raw_l.local_addr().expect("addr")));
            let (t1, t2, t3) = (t.clone(), t.clone(), t);
            tokio::spawn(async move { t1.serve_data(data, std::future::pending()).await });
            tokio::spawn(async move { t2.serve_tunnel(tls_l, "tls".into(), std::future::pending()).await });
            tokio::spawn(async move { t3.serve_tunnel(raw_l, "raw".into(), std::future::pending()).await });
        }
        (control_addr, addrs[0], addrs[1])
    });

    let _connector = connector_rt.block_on(async {
        let trust = ClientTrust::pinned_hex(&pem_fingerprint(ctl_cert.as_bytes()).expect("fp")).expect("pin");
        let _ = ctl_ca;
        let mut cfg = ConnectorConfig::new(&control_addr.to_string(), "relay.test", trust, "acme", TOKEN);
        cfg.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        cfg.tunnels = HashMap::from([
            ("tls".to_string(), TunnelTarget { addr: pbx_tls, proxy_protocol: false }),
            ("raw".to_string(), TunnelTarget { addr: pbx_raw, proxy_protocol: false }),
        ]);
        let c = Connector::start(cfg).expect("connector");
        c.handle().wait_connected(1, Duration::from_secs(10)).await.expect("connected");
        c
    });

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pbx_ca.as_bytes()) {
        roots.add(c.expect("ca")).expect("root");
    }
    let client_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));

    client_rt.block_on(async {
        // Warm-up (connector path, caches).
        for _ in 0..20 {
            ttfb(pbx_tls, &tls).await;
            ttfb(splice_addr.0, &tls).await;
        }
        let (mut direct, mut relayed) = (Vec::new(), Vec::new());
        for _ in 0..a.connections {
            direct.push(ttfb(pbx_tls, &tls).await);
            relayed.push(ttfb(splice_addr.0, &tls).await);
        }
        let (d50, d90) = (percentile(&mut direct, 0.5), percentile(&mut direct, 0.9));
        let (r50, r90) = (percentile(&mut relayed, 0.5), percentile(&mut relayed, 0.9));
        println!("time to first byte of a new TLS 1.3 connection ({} each, interleaved):", a.connections);
        println!("  direct   p50 {:>7.3} ms  p90 {:>7.3} ms", d50.as_secs_f64() * 1e3, d90.as_secs_f64() * 1e3);
        println!("  relay    p50 {:>7.3} ms  p90 {:>7.3} ms", r50.as_secs_f64() * 1e3, r90.as_secs_f64() * 1e3);
        println!("  added p50 {:.3} ms", (r50.as_secs_f64() - d50.as_secs_f64()) * 1e3);

        let bytes = a.bulk_mib << 20;
        let (mut d, mut s, mut c) = (Vec::new(), Vec::new(), Vec::new());
        let (mut splice_cpu, mut copy_cpu) = (0u64, 0u64);
        for _ in 0..a.rounds {
            d.push(bulk(pbx_raw, bytes).await);
            let t0 = thread_cpu_ns(RELAY_THREAD);
            s.push(bulk(splice_addr.1, bytes).await);
            let t1 = thread_cpu_ns(RELAY_THREAD);
            c.push(bulk(copy_addr.1, bytes).await);
            let t2 = thread_cpu_ns(RELAY_THREAD);
            splice_cpu += t1 - t0;
            copy_cpu += t2 - t1;
        }
        let (dm, sm, cm) = (median(&mut d), median(&mut s), median(&mut c));
        let gib = (bytes * a.rounds) as f64 / (1u64 << 30) as f64;
        println!("bulk throughput of one connection ({} MiB, median of {} interleaved rounds):", a.bulk_mib, a.rounds);
        println!("  direct        {:>8.0} MiB/s", dm / 1048576.0);
        println!("  relay splice  {:>8.0} MiB/s  ({:.2}x direct)", sm / 1048576.0, sm / dm);
        println!("  relay copy    {:>8.0} MiB/s  ({:.2}x direct)", cm / 1048576.0, cm / dm);
        println!("relay CPU per GiB moved (relay runtime threads, user+system):");
        println!("  splice {:>6.0} ms/GiB", splice_cpu as f64 / 1e6 / gib);
        println!("  copy   {:>6.0} ms/GiB", copy_cpu as f64 / 1e6 / gib);
    });
    relay.shutdown(Duration::ZERO);
}
