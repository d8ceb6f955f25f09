//! Running the relay as a daemon: start, admin API, signals, drain.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use relay_core::control::server::ControlServer;
use relay_core::tls::{load_certified_key, ReloadableCert};
use relay_core::tunnel::server::TunnelServer;
use relay_core::{Relay, RelayHandle};
use sha2::{Digest, Sha256};
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::{self, AdminState};
use crate::config::{Config, ControlSettings, TunnelSettings};
use crate::metrics::AdminStats;
use relay_core::peer::OwnEndpoint;

/// A fresh 256-bit token (hex) and its SHA-256 (hex).
pub fn new_token() -> std::io::Result<(String, String)> {
    let mut raw = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    let token = hex::encode(raw);
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    Ok((token, hash))
}

/// Sets up `tracing` from a `[log]` section (stderr; human or JSON).
pub fn init_logging(log: &crate::config::LogSection) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Threads of the runtime that serves everything but the media shards
/// (control, tunnels, admin, ng, TURN): two, or one when the process may
/// run on one CPU only. Two workers pinned to one CPU hand every spawned or
/// woken task to each other — a context switch each time: TURN's
/// allocation cost doubled that way (docs/PERFORMANCE.md, "TURN allocation
/// rate").
pub(crate) fn control_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(2))
}

/// Runs until SIGTERM (after draining) or SIGINT.
pub fn run(cfg: Config, path: Option<PathBuf>) -> Result<(), String> {
    init_logging(&cfg.file.log);
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    let relay = Relay::start(cfg.relay.clone()).map_err(|e| e.to_string())?;
    let dp = relay.datapath().clone();
    if let Some(reason) = &dp.fallback_reason {
        tracing::warn!(%reason, "io_uring unavailable, running the portable datapath");
    }
    let handle = relay.handle();
    apply_quotas(&handle, &cfg);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(control_workers())
        .thread_name("ucmrc-control")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the control runtime: {e}"))?;
    let control_listener = match &cfg.control {
        None => None,
        Some(c) => Some(control_server(c, &cfg, &handle)?),
    };
    let tunnels = match (&cfg.tunnels, &control_listener) {
        (Some(t), Some(control)) => {
            let server = TunnelServer::new(t.config.clone(), t.router.clone(), control.clone());
            server.set_tenant_limits(t.tenant_limits.clone());
            Some(server)
        }
        _ => None,
    };
    let ng = cfg.ng.as_ref().map(|ng| relay_core::ng::NgEngine::new(handle.clone(), ng.engine.clone()));
    let state = Arc::new(AdminState {
        ng,
        ng_transport: Arc::new(crate::ng::NgTransportStats::default()),
        clustered: cfg.cluster.is_some(),
        cluster: std::sync::OnceLock::new(),
        turn: std::sync::OnceLock::new(),
        turn_uris: std::sync::OnceLock::new(),
        tunnels,
        control: control_listener,
        handle: handle.clone(),
        token_sha256: RwLock::new(cfg.admin_token_sha256),
        defaults: RwLock::new(cfg.relay.defaults.clone()),
        stats: AdminStats::default(),
        backend: dp.running.as_str().to_string(),
        started: Instant::now(),
        ready: AtomicBool::new(false),
    });
    let result = runtime.block_on(control(cfg, path, state));
    runtime.shutdown_timeout(Duration::from_secs(2));
    relay.shutdown(Duration::ZERO);
    tracing::info!("stopped");
    result
}

/// Serves everything the configuration names, prints the banner, then
/// answers signals and shard failures until the relay stops.
async fn control(mut cfg: Config, path: Option<PathBuf>, state: Arc<AdminState>) -> Result<(), String> {
    let admin = Admin::serve(&cfg, &state).await?;
    let mut bound: Vec<SocketAddr> = Vec::new();
    let ng_line = start_ng(&cfg, &state, &mut bound).await?;
    let control_line = start_control(&cfg, &state, &mut bound).await?;
    let (tunnels_line, tunnel_addrs) = start_tunnels(&cfg, &state, &mut bound).await?;
    let turn_sockets = bind_turn(&cfg, &mut bound).await?;
    // Every bound listener (kernel-chosen ports included) is one of the
    // relay's own addresses: never a hint, latched source or destination.
    let mut listeners = vec![admin.addr];
    listeners.extend(bound.iter().copied());
    state
        .handle
        .reconfigure(cfg.relay.defaults.clone(), peer_policy(&cfg, &listeners))
        .await
        .map_err(|e| e.to_string())?;
    let turn_line = start_turn(&cfg, &state, turn_sockets, &listeners, &tunnel_addrs)?;
    let mut cluster = match &cfg.cluster {
        None => None,
        Some(c) => {
            let turn = state.turn.get().cloned();
            let node =
                relay_cluster::Cluster::start_with_turn(c.config.clone(), state.handle.clone(), state.ng.clone(), turn)
                    .await
                    .map_err(|e| format!("cluster: {e}"))?;
            let _ = state.cluster.set(node.view());
            Some(node)
        }
    };
    state.ready.store(true, Ordering::SeqCst);
    print_banner(&cfg, &state, admin.addr, [ng_line, control_line, tunnels_line, turn_line, cluster_line(&cfg)]);
    tracing::info!(admin_addr = %admin.addr, datapath = %state.backend, "relay running");
    let outcome = run_until_stopped(&mut cfg, path.as_deref(), &state, &listeners, &mut cluster).await;
    state.ready.store(false, Ordering::SeqCst);
    // Before the relay stops: its sessions ending is not news for Redis.
    if let Some(node) = cluster.take() {
        node.stop(false).await;
    }
    if let Some(c) = &state.control {
        c.shutdown();
    }
    if let Some(t) = &state.tunnels {
        t.shutdown();
    }
    admin.stop().await;
    outcome
}

/// The admin API's server and how to stop it.
struct Admin {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Admin {
    /// Binds `admin.listen` and serves the admin API on it.
    async fn serve(cfg: &Config, state: &Arc<AdminState>) -> Result<Admin, String> {
        let at = cfg.file.admin.listen;
        let (listener, addr) = listen(at, format!("admin.listen {at}")).await?;
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(admin::serve(listener, state.clone(), async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        }));
        Ok(Admin { addr, stop, server })
    }

    /// Stops it, waiting at most 2 s for requests in flight.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.server).await;
    }
}

/// A TCP listener on `addr` and the address it got (a kernel-chosen port
/// resolved); the error names `what` (the key and its value).
async fn listen(addr: SocketAddr, what: String) -> Result<(tokio::net::TcpListener, SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {what}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((listener, local))
}

/// Starts the ng listeners when enabled; the banner line.
async fn start_ng(cfg: &Config, state: &Arc<AdminState>, bound: &mut Vec<SocketAddr>) -> Result<String, String> {
    let (Some(ng), Some(engine)) = (&cfg.ng, &state.ng) else {
        return Ok("ng protocol disabled".to_string());
    };
    let listen = ng.transport.listen;
    let gate = state.clone();
    let serving: crate::ng::Serving = Arc::new(move || gate.serving());
    let (udp, tcp) = crate::ng::start(ng.transport.clone(), engine.clone(), state.ng_transport.clone(), serving)
        .await
        .map_err(|e| format!("cannot listen on ng.listen {listen}: {e}"))?;
    bound.extend([udp, tcp]);
    Ok(format!("ng protocol on udp:{udp} tcp:{tcp}"))
}

/// Starts the connectors' control listener when configured; the banner line.
async fn start_control(cfg: &Config, state: &AdminState, bound: &mut Vec<SocketAddr>) -> Result<String, String> {
    let (Some(server), Some(c)) = (&state.control, &cfg.control) else {
        return Ok("control channel disabled (no [control] section)".to_string());
    };
    let (listener, addr) = listen(c.listen, format!("control.listen {}", c.listen)).await?;
    bound.push(addr);
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    let n = cfg.tenant_credentials.len();
    Ok(format!(
        "control channel on tls://{addr} ({n} {} with a token, certificate sha256 {})",
        if n == 1 { "tenant" } else { "tenants" },
        server.certificate().fingerprint()
    ))
}

/// Starts the tunnel listeners and the connectors' data listener when
/// configured; the banner line.
async fn start_tunnels(
    cfg: &Config,
    state: &AdminState,
    bound: &mut Vec<SocketAddr>,
) -> Result<(String, Vec<SocketAddr>), String> {
    let (Some(server), Some(t)) = (&state.tunnels, &cfg.tunnels) else {
        return Ok(("tunnels disabled (no [tunnels] section)".to_string(), Vec::new()));
    };
    let mut addrs = Vec::new();
    let (data, data_addr) = listen(t.data_listen, format!("tunnels.data_listen {}", t.data_listen)).await?;
    bound.push(data_addr);
    let mut shown = Vec::new();
    for (addr, service) in &t.listeners {
        let (l, local) = listen(*addr, format!("tunnels.listeners {addr} ({service})")).await?;
        bound.push(local);
        addrs.push(local);
        shown.push(format!("{service}=tcp://{local}"));
        let (server, service) = (server.clone(), service.clone());
        tokio::spawn(async move { server.serve_tunnel(l, service, std::future::pending()).await });
    }
    let server = server.clone();
    tokio::spawn(async move { server.serve_data(data, std::future::pending()).await });
    Ok((format!("tunnels: {} data=tcp://{data_addr}", shown.join(" ")), addrs))
}

/// TURN's bound listeners.
#[derive(Default)]
struct TurnSockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<tokio::net::TcpListener>,
    tls: Vec<tokio::net::TcpListener>,
}

/// Binds the TURN listeners when configured. A cluster node binds them
/// with `IP_FREEBIND`: a standby listens on the service address before it
/// arrives.
async fn bind_turn(cfg: &Config, bound: &mut Vec<SocketAddr>) -> Result<TurnSockets, String> {
    let mut sockets = TurnSockets::default();
    let Some(t) = &cfg.turn else { return Ok(sockets) };
    let freebind = cfg.cluster.is_some();
    for addr in &t.listen {
        let options = relay_core::SocketOptions { recv_buffer: 0, send_buffer: 0, freebind };
        let socket: std::net::UdpSocket = relay_core::io::bind_udp(addr.ip(), addr.port(), &options)
            .map_err(|e| format!("turn.listen {addr}: {e}"))?
            .into();
        bound.push(socket.local_addr().map_err(|e| format!("turn.listen {addr}: {e}"))?);
        sockets.udp.push(socket);
    }
    for (addrs, list, key) in
        [(&t.tcp_listen, &mut sockets.tcp, "tcp_listen"), (&t.tls_listen, &mut sockets.tls, "tls_listen")]
    {
        for addr in addrs {
            let what = format!("turn.{key} {addr}");
            let l = listen_freely(*addr, freebind).map_err(|e| format!("cannot listen on {what}: {e}"))?;
            bound.push(l.local_addr().map_err(|e| e.to_string())?);
            list.push(l);
        }
    }
    Ok(sockets)
}

/// A TCP listener on `addr`, with `IP_FREEBIND` when asked.
fn listen_freely(addr: SocketAddr, freebind: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = relay_core::io::bind_tcp(addr, false, freebind)?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Starts the TURN server on its bound listeners, its peers held to the
/// relay's policy (every listener of the process among its own
/// addresses), and lets connectors ask for credentials; the banner line.
fn start_turn(
    cfg: &Config,
    state: &AdminState,
    sockets: TurnSockets,
    listeners: &[SocketAddr],
    tunnel_addrs: &[SocketAddr],
) -> Result<String, String> {
    let Some(t) = &cfg.turn else { return Ok("turn disabled (no [turn] section)".to_string()) };
    let mut shown: Vec<String> =
        sockets.udp.iter().filter_map(|s| s.local_addr().ok()).map(|a| format!("udp://{a}")).collect();
    let settings = relay_core::turn::TurnSettings {
        realms: t.realms.clone(),
        relay_v4: t.relay_v4,
        relay_v6: t.relay_v6,
        first_port: t.ports.0,
        last_port: t.ports.1,
        policy: peer_policy(cfg, listeners),
        limits: t.limits,
    };
    let _ = state.turn_uris.set(turn_uris(t, &sockets, tunnel_addrs));
    set_turn_issuer(state, t, &settings);
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("turn: cannot read /dev/urandom for the nonce key: {e}"))?;
    let seed =
        u64::from_le_bytes([random[0], random[1], random[2], random[3], random[4], random[5], random[6], random[7]]);
    // A cluster's nodes share the nonce key (derived from the cluster
    // key): a client's nonce stays good across a takeover.
    let key = match &cfg.cluster {
        Some(c) => c.config.sealer.derive("ucmrc turn nonce key"),
        None => random,
    };
    let server = relay_core::turn::TurnServer::new(
        settings,
        relay_core::turn::auth::NonceKey::new(key),
        Some(state.handle.shared_quotas()),
        seed,
    )
    .map_err(|e| format!("turn: {e}"))?;
    let udp_count = sockets.udp.len();
    let service = relay_core::turn::service::TurnService::start(server, sockets.udp, Default::default())
        .map_err(|e| format!("turn: {e}"))?;
    // A cluster node opens taken-over ports on the service address, which
    // its takeover hook may move here only after.
    if cfg.cluster.is_some() {
        service.bind_freely();
    }
    // Channels of UDP allocations are relayed in the kernel where the
    // relay's fast path runs (the `datapath` setting decides).
    if let Some(fast) = state.handle.fast_path() {
        service.use_fast_path(fast);
        tracing::info!("TURN: channels of UDP allocations are relayed in the kernel fast path");
    }
    let mut index = udp_count;
    for l in sockets.tcp {
        shown.extend(l.local_addr().ok().map(|a| format!("tcp://{a}")));
        service.serve_tcp(l, turn_listener_index(&mut index)?);
    }
    let tls = match &t.tls_key {
        Some(key) => Some(
            relay_core::tls::server_config(relay_core::tls::ReloadableCert::new(key.clone()))
                .map_err(|e| format!("turn: {e}"))?,
        ),
        None => None,
    };
    if let Some(config) = &tls {
        for l in sockets.tls {
            shown.extend(l.local_addr().ok().map(|a| format!("tls://{a}")));
            service.serve_tls(l, config.clone(), turn_listener_index(&mut index)?);
        }
    }
    let mut shared = String::new();
    if let Some(tunnels) = &state.tunnels {
        // Port 443 shared: TURN over TCP by its STUN header; over TLS by a
        // server name or ALPN stun.turn when TURN has a certificate.
        let names = t.server_names.clone();
        shared = match &tls {
            Some(_) => format!("; on the tunnel listeners: TCP, and TLS for ALPN stun.turn or {names:?}"),
            None => "; on the tunnel listeners: TCP (no tls_cert for TLS)".to_string(),
        };
        let handoff =
            relay_core::turn::handoff::TurnHandoff::new(service.clone(), tls, names, turn_listener_index(&mut index)?);
        tunnels.set_handoff(Arc::new(handoff));
    }
    let _ = state.turn.set(service);
    Ok(format!(
        "turn: {} relayed ports {}-{} realms {}{shared}",
        shown.join(" "),
        t.ports.0,
        t.ports.1,
        t.realms.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(",")
    ))
}

/// Lets connectors ask for TURN credentials from `settings`' realms (or
/// replaces the issuer after a reload), telling them `[turn] uris` or the
/// listeners' own.
fn set_turn_issuer(state: &AdminState, t: &crate::config::TurnConfig, settings: &relay_core::turn::TurnSettings) {
    let Some(control) = &state.control else { return };
    let uris = match t.uris.is_empty() {
        true => state.turn_uris.get().cloned().unwrap_or_default(),
        false => t.uris.clone(),
    };
    control.set_turn_issuer(Arc::new(relay_core::turn::credentials::RestIssuer::new(settings, uris)));
}

/// SIGHUP for TURN: realms (secrets, users, allow-lists), limits and the
/// peer policy apply at once, allocations going on; listeners, relayed
/// addresses and ports need a restart (added to `restart`).
fn reload_turn(old: &Config, new: &Config, state: &AdminState, listeners: &[SocketAddr], restart: &mut Vec<&str>) {
    let fixed = |t: &crate::config::TurnConfig| {
        (
            t.listen.clone(),
            t.tcp_listen.clone(),
            t.tls_listen.clone(),
            t.server_names.clone(),
            t.relay_v4,
            t.relay_v6,
            t.ports,
        )
    };
    let (service, t) = match (state.turn.get(), &new.turn, &old.turn) {
        (Some(service), Some(t), Some(o)) => {
            if fixed(o) != fixed(t) {
                restart.push("turn (listeners, server_names, relayed addresses and ports)");
            }
            (service, t)
        }
        (None, None, _) => return,
        _ => {
            restart.push("turn (added or removed)");
            return;
        }
    };
    let policy = peer_policy(new, listeners);
    match service.reconfigure(t.realms.clone(), t.limits, policy.clone()) {
        Ok(()) => {
            let settings = service.with_server(|s| s.settings().clone());
            set_turn_issuer(state, t, &settings);
        }
        Err(e) => tracing::error!(error = %e, "SIGHUP: TURN settings rejected, keeping the running ones"),
    }
}

/// The TURN URIs (RFC 7065) of the bound listeners, told to connectors
/// with the credentials they ask for: each listener's address, or the
/// advertised address when it is the relayed address or unspecified (a
/// wildcard listener of a family with no relay address is left out); TLS
/// by the first server name when there is one. On the tunnel listeners:
/// `turns:` when TURN has a certificate, else TURN over TCP.
fn turn_uris(t: &crate::config::TurnConfig, sockets: &TurnSockets, tunnel_addrs: &[SocketAddr]) -> Vec<String> {
    let host = |a: SocketAddr| -> Option<String> {
        let family = if a.is_ipv4() { t.relay_v4 } else { t.relay_v6 };
        let ip = match family {
            Some(r) if a.ip().is_unspecified() || a.ip() == r.bind => r.advertised,
            _ => a.ip(),
        };
        match ip {
            ip if ip.is_unspecified() => None,
            std::net::IpAddr::V4(v4) => Some(v4.to_string()),
            std::net::IpAddr::V6(v6) => Some(format!("[{v6}]")),
        }
    };
    let tls_host = |a: SocketAddr| t.server_names.first().cloned().or_else(|| host(a));
    let tls = t.tls_key.is_some();
    let listeners = |l: &[tokio::net::TcpListener]| l.iter().filter_map(|s| s.local_addr().ok()).collect::<Vec<_>>();
    let mut uris = Vec::new();
    for a in sockets.udp.iter().filter_map(|s| s.local_addr().ok()) {
        uris.extend(host(a).map(|h| format!("turn:{h}:{}?transport=udp", a.port())));
    }
    for a in listeners(&sockets.tcp) {
        uris.extend(host(a).map(|h| format!("turn:{h}:{}?transport=tcp", a.port())));
    }
    for a in listeners(&sockets.tls).into_iter().filter(|_| tls) {
        uris.extend(tls_host(a).map(|h| format!("turns:{h}:{}?transport=tcp", a.port())));
    }
    for &a in tunnel_addrs {
        uris.extend(match tls {
            true => tls_host(a).map(|h| format!("turns:{h}:{}?transport=tcp", a.port())),
            false => host(a).map(|h| format!("turn:{h}:{}?transport=tcp", a.port())),
        });
    }
    uris
}

/// The next listener index (the server tells clients apart by it).
fn turn_listener_index(next: &mut usize) -> Result<u16, String> {
    let index = u16::try_from(*next).map_err(|_| "turn: too many listeners".to_string())?;
    *next += 1;
    Ok(index)
}

/// The banner's cluster line.
fn cluster_line(cfg: &Config) -> String {
    match &cfg.cluster {
        Some(c) => format!(
            "cluster: node {} of group {} ({}), redis {}",
            c.config.node_id,
            c.config.group,
            if c.config.eager { "takes a free lease at start" } else { "standby until the lease expires" },
            redact_url(&c.config.redis_url)
        ),
        None => "cluster disabled (no [cluster] section)".to_string(),
    }
}

/// What the relay prints on stdout once it serves (tests and scripts read
/// the addresses from it).
fn print_banner(cfg: &Config, state: &AdminState, admin_addr: SocketAddr, services: [String; 5]) {
    let r = &cfg.relay;
    println!(
        "ucmrc relay {}: media on {} ports {}-{} (datapath {}), admin API on http://{admin_addr}",
        env!("CARGO_PKG_VERSION"),
        r.advertised_ip.unwrap_or(r.bind_ip),
        r.port_min,
        r.port_max,
        state.backend
    );
    let auth = if cfg.admin_token_sha256.is_some() { " -H 'Authorization: Bearer TOKEN'" } else { "" };
    println!(
        "allocate a session: curl -s{auth} -X POST http://{admin_addr}/v1/sessions -d '{{\"tenant\":\"demo\"}}' -H 'content-type: application/json'"
    );
    for line in services {
        println!("{line}");
    }
}

/// Answers SIGHUP (reload), SIGTERM (drain or hand the lease over), SIGINT
/// (exit now) and shard failures until one of them stops the relay.
async fn run_until_stopped(
    cfg: &mut Config,
    path: Option<&Path>,
    state: &Arc<AdminState>,
    listeners: &[SocketAddr],
    cluster: &mut Option<relay_cluster::Cluster>,
) -> Result<(), String> {
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut failures = state.handle.watch_shard_failures();
    loop {
        tokio::select! {
            _ = hup.recv() => match path {
                None => tracing::warn!("SIGHUP: no configuration file to reload (embedded defaults)"),
                Some(p) => match Config::load(p) {
                    Err(e) => tracing::error!(error = %e, "SIGHUP: new configuration rejected, keeping the running one"),
                    Ok(new) => {
                        reload(cfg, &new, state, listeners).await;
                        *cfg = new;
                    }
                },
            },
            _ = term.recv() => {
                if state.cluster.get().is_some_and(relay_cluster::ClusterView::is_active) {
                    // A standby takes every session over at once: no drain.
                    tracing::info!("SIGTERM: handing the cluster lease over to a standby");
                    state.ready.store(false, Ordering::SeqCst);
                    if let Some(node) = cluster.take() {
                        node.stop(true).await;
                    }
                } else {
                    drain(cfg, state, &mut term, &mut int).await;
                }
                return Ok(());
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: exiting now");
                return Ok(());
            }
            changed = failures.changed() => {
                if changed.is_err() {
                    continue;
                }
                let failed = failures.borrow_and_update().clone();
                handle_shard_failures(cfg, state, &failed)?;
            }
        }
    }
}

/// A shard failed: /readyz fails; the relay exits (for its supervisor to
/// restart it) unless `relay.exit_on_shard_failure` is off.
fn handle_shard_failures(
    cfg: &Config,
    state: &AdminState,
    failed: &[relay_core::relay::ShardFailure],
) -> Result<(), String> {
    state.ready.store(false, Ordering::SeqCst);
    let shards: Vec<String> = failed.iter().map(|f| format!("shard {}: {}", f.shard, f.reason)).collect();
    if cfg.file.relay.exit_on_shard_failure {
        tracing::error!(failed = ?shards, "a shard failed: exiting so the supervisor restarts the relay (relay.exit_on_shard_failure)");
        return Err(format!("shard failure: {}", shards.join("; ")));
    }
    tracing::error!(failed = ?shards, "a shard failed: /readyz fails; the other shards keep serving (relay.exit_on_shard_failure = false)");
    Ok(())
}

/// A Redis URL without its password.
fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// The configured peer policy with every bound listener among the relay's
/// own addresses.
fn peer_policy(cfg: &Config, listeners: &[SocketAddr]) -> relay_core::PeerPolicy {
    let own = cfg.relay.peer_policy.own.with(listeners.iter().map(|a| OwnEndpoint::socket(*a)));
    cfg.relay.peer_policy.clone().with_own(own)
}

/// Builds the connectors' control listener (it serves once the runtime runs).
fn control_server(c: &ControlSettings, cfg: &Config, handle: &RelayHandle) -> Result<ControlServer, String> {
    let key = load_control_cert(c)?;
    ControlServer::new(c.config.clone(), ReloadableCert::new(key), cfg.tenant_credentials.clone(), handle.clone())
        .map_err(|e| format!("control: {e}"))
}

fn load_control_cert(c: &ControlSettings) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let cert = crate::config::read_file(&c.cert).map_err(|e| format!("control.cert {}: {e}", c.cert.display()))?;
    let key = crate::config::read_file(&c.key).map_err(|e| format!("control.key {}: {e}", c.key.display()))?;
    load_certified_key(&cert, &key).map_err(|e| format!("control: {e}"))
}

fn apply_quotas(handle: &relay_core::RelayHandle, cfg: &Config) {
    handle.quotas().replace(cfg.relay.default_tenant_limit(), cfg.tenant_limits());
}

/// Applies what can change without a restart: session defaults, peer
/// policy, tenant quotas, the admin token. Reports what needs a restart.
async fn reload(old: &Config, new: &Config, state: &AdminState, listeners: &[SocketAddr]) {
    let (o, n) = (&old.relay, &new.relay);
    let mut restart = Vec::new();
    if o.bind_ip != n.bind_ip || o.advertised_ip != n.advertised_ip {
        restart.push("relay.bind_ip/advertised_ip");
    }
    if o.port_min != n.port_min || o.port_max != n.port_max {
        restart.push("relay.port_min/port_max");
    }
    if o.workers != n.workers || o.backend != n.backend || o.pin_cpus != n.pin_cpus || o.sockets != n.sockets {
        restart.push("relay.workers/datapath/pin_cpus/recv_buffer_bytes");
    }
    if old.file.admin.listen != new.file.admin.listen {
        restart.push("admin.listen");
    }
    if old.file.ng.listen != new.file.ng.listen
        || old.file.ng.enabled != new.file.ng.enabled
        || old.file.ng.tenant != new.file.ng.tenant
    {
        restart.push("ng");
    }
    if old.file.log.format != new.file.log.format
        || old.file.log.level != new.file.log.level
        || old.file.log.redact_addresses != new.file.log.redact_addresses
    {
        restart.push("log");
    }
    let listener_settings = |c: &Option<ControlSettings>| c.as_ref().map(|c| (c.listen, c.config.clone()));
    let tunnel_listeners =
        |t: &Option<TunnelSettings>| t.as_ref().map(|t| (t.data_listen, t.listeners.clone(), t.config.clone()));
    if tunnel_listeners(&old.tunnels) != tunnel_listeners(&new.tunnels) {
        restart.push("tunnels (listeners, timeouts, caps)");
    }
    if listener_settings(&old.control) != listener_settings(&new.control) {
        restart.push("control (listen, timeouts, caps, lockout policy)");
    }
    if let Err(e) = state.handle.reconfigure(n.defaults.clone(), peer_policy(new, listeners)).await {
        tracing::error!(error = %e, "SIGHUP: could not apply session defaults");
        return;
    }
    apply_quotas(&state.handle, new);
    *state.token_sha256.write().unwrap_or_else(|p| p.into_inner()) = new.admin_token_sha256;
    *state.defaults.write().unwrap_or_else(|p| p.into_inner()) = n.defaults.clone();
    if let (Some(server), Some(t)) = (&state.tunnels, &new.tunnels) {
        server.replace_router(t.router.clone());
        server.set_tenant_limits(t.tenant_limits.clone());
    }
    if let (Some(server), Some(c)) = (&state.control, &new.control) {
        server.replace_tenants(new.tenant_credentials.clone());
        match load_control_cert(c) {
            Ok(key) => {
                server.certificate().replace(key);
                tracing::info!(sha256 = %server.certificate().fingerprint(), "SIGHUP: control certificate loaded");
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: control certificate rejected, keeping the running one"),
        }
    }
    reload_turn(old, new, state, listeners, &mut restart);
    if !restart.is_empty() {
        tracing::warn!(keys = ?restart, "SIGHUP: these settings changed but need a restart; keeping the running values");
    }
    tracing::info!(
        file = %new.source,
        "SIGHUP: configuration reloaded (limits, policies, tenants, tokens, certificate, TURN realms)"
    );
}

/// SIGTERM: refuse new sessions, fail /readyz, wait for sessions to end or
/// the drain timeout. SIGINT or a second SIGTERM ends the drain at once.
async fn drain(
    cfg: &Config,
    state: &AdminState,
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) {
    state.handle.set_draining(true);
    state.ready.store(false, Ordering::SeqCst);
    let timeout = Duration::from_secs(cfg.file.relay.drain_timeout_secs);
    tracing::info!(timeout_secs = timeout.as_secs(), "SIGTERM: draining (SIGINT or a second SIGTERM exits at once)");
    let handle = state.handle.clone();
    let wait = tokio::task::spawn_blocking(move || handle.wait_drained(timeout));
    tokio::select! {
        r = wait => match r {
            Ok(Ok(0)) => tracing::info!("drained: no session left"),
            Ok(Ok(left)) => tracing::warn!(sessions = left, "drain timeout: releasing the remaining sessions"),
            _ => {}
        },
        _ = term.recv() => tracing::warn!("second SIGTERM during the drain: exiting now"),
        _ = int.recv() => tracing::warn!("SIGINT during the drain: exiting now"),
    }
}

#[cfg(test)]
mod tests {
    use super::control_workers;

    #[test]
    fn a_process_on_one_cpu_runs_one_control_worker() {
        std::thread::spawn(|| {
            relay_core::io::pin_current_thread(0).expect("pin to CPU 0");
            assert_eq!(control_workers(), 1);
        })
        .join()
        .expect("the pinned thread");
    }
}
