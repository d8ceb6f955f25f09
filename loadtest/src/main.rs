//! `ucmrc-loadtest`: real SRTP load through a UCMRC relay.
//!
//! ```text
//! ucmrc-loadtest media [--calls 100] [--pps 50] [--duration 10] [--json FILE|-]
//!                      [--admin http://127.0.0.1:9180 --admin-token T | --connector connect.toml]
//!                      [--latch authenticated]
//!                      [--dtls] [--rebind-every SECS] [--junk-pps N] [--find-capacity]
//! ucmrc-loadtest tunnel [--connections 10] [--duration 8] [--bulk-mib 256] [--json FILE|-]
//! ucmrc-loadtest sessions [--sessions 100000] [--api rust|ng] [--addresses 20] [--sample 1000] [--json FILE|-]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loadtest::media::{self, MediaOptions, MediaReport};
use loadtest::target::{Admin, InProcess, Target};
use relay_core::BackendKind;

/// Load generator for the UCMRC relay.
#[derive(Debug, Parser)]
#[command(name = "ucmrc-loadtest", version, about, arg_required_else_help = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// K calls of real SRTP both ways, verified with libsrtp.
    Media(MediaArgs),
    /// TLS connections through SNI-routed tunnels (in-process relay,
    /// connector and TLS server): handshake rate, time to first byte, bulk
    /// throughput, against the same server reached directly.
    Tunnel(TunnelArgs),
    /// Session capacity: N concurrent sessions on one in-process relay
    /// (several loopback addresses), set up over the Rust API or over ng;
    /// memory per session, setup rate, media on a sample.
    Sessions(SessionsArgs),
    /// TURN load against a TURN server (UCMRC's or another, the same way):
    /// real allocations with REST credentials, a channel each, ChannelData
    /// both ways through the relayed addresses; with --server-pid, the
    /// server's CPU per relayed datagram and memory per allocation.
    Turn(TurnArgs),
}

#[derive(Debug, clap::Args)]
struct TurnArgs {
    /// The server's UDP listener.
    #[arg(long)]
    server: SocketAddr,
    /// The REST shared secret (use-auth-secret).
    #[arg(long)]
    secret: String,
    /// Allocations (each with a channel to a peer socket of this process).
    #[arg(long, default_value_t = 1000)]
    allocations: usize,
    /// Datagrams per second each way per allocation.
    #[arg(long, default_value_t = 50)]
    pps: u32,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Payload bytes per datagram.
    #[arg(long, default_value_t = 160)]
    payload: usize,
    /// Allocations in flight at once while they are set up (one thread
    /// drives them all).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The server's pid: its CPU time and memory are read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the JSON report to FILE (`-`: stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn turn(a: TurnArgs) -> Result<(), String> {
    let r = loadtest::turn::run(&loadtest::turn::TurnOptions {
        server: a.server,
        secret: a.secret,
        allocations: a.allocations,
        pps: a.pps,
        duration: Duration::from_secs(a.duration),
        payload: a.payload.max(loadtest::packet::MIN_PAYLOAD),
        concurrency: a.concurrency,
        server_pid: a.server_pid,
    })?;
    println!(
        "{} allocations (challenge, Allocate, ChannelBind) in {:.2} s: {:.0} per second",
        r.allocations, r.setup_secs, r.allocations_per_sec
    );
    println!(
        "  client→peer {} of {} ({:.3} % lost), peer→client {} of {} ({:.3} % lost); latency p50 {} µs, p99 {} µs, max {} µs",
        r.received[0], r.sent[0], r.loss_percent[0], r.received[1], r.sent[1], r.loss_percent[1], r.latency_us[0], r.latency_us[1], r.latency_us[2]
    );
    if let (Some(cpu), Some(ns)) = (r.server_cpu_secs, r.server_ns_per_datagram) {
        println!("  server: {cpu:.2} CPU s for the traffic, {ns:.0} ns per relayed datagram");
    }
    if let (Some(cpu), Some(bytes)) = (r.server_setup_cpu_secs, r.server_bytes_per_allocation) {
        println!("  server: {cpu:.2} CPU s for the allocations, {bytes:.0} bytes of RSS per allocation");
    }
    write_json(&a.json, &serde_json::to_value(&r).map_err(|e| e.to_string())?)
}

#[derive(Debug, clap::Args)]
struct SessionsArgs {
    /// Concurrent sessions (ng: calls).
    #[arg(long, default_value_t = 100_000)]
    sessions: usize,
    /// How sessions are set up: rust (RelayHandle::allocate) or ng (offer + answer over UDP).
    #[arg(long, default_value = "rust")]
    api: String,
    /// Loopback addresses on the relay's interface (127.0.1.1, ...).
    #[arg(long, default_value_t = 20)]
    addresses: usize,
    /// First relay port on each address.
    #[arg(long, default_value_t = 10_000)]
    port_min: u16,
    /// Last relay port on each address.
    #[arg(long, default_value_t = 31_999)]
    port_max: u16,
    /// Setup requests in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Sessions that carry media afterwards.
    #[arg(long, default_value_t = 1000)]
    sample: usize,
    /// Shards (0: as many as RLIMIT_NOFILE needs).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Run the relay as the active node of a cluster on this Redis
    /// (`redis://…`, `redis+unix://…`): every session is replicated, and
    /// acknowledged once it is in Redis (see --no-wait-for-replication).
    #[arg(long)]
    cluster: Option<String>,
    /// With --cluster: acknowledge at once (replicated within 20 ms).
    #[arg(long)]
    no_wait_for_replication: bool,
    /// Write the JSON report to FILE (`-`: stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn sessions(a: SessionsArgs) -> Result<(), String> {
    use loadtest::sessions::{run, CapacityOptions, SetupApi};
    let api = match a.api.as_str() {
        "rust" => SetupApi::Rust,
        "ng" => SetupApi::Ng,
        other => return Err(format!("--api: {other:?} is not rust or ng")),
    };
    let r = run(&CapacityOptions {
        sessions: a.sessions,
        addresses: a.addresses,
        ports: (a.port_min, a.port_max),
        api,
        concurrency: a.concurrency,
        sample: a.sample,
        workers: a.workers,
        cluster: a.cluster.map(|url| (url, !a.no_wait_for_replication)),
    })?;
    println!(
        "{} sessions over {:?} ({} relay sockets on {} addresses, {} shards, {}): {:.0} set up per second ({:.1} s)",
        r.sessions, r.api, r.relay_sockets, r.addresses, r.workers, r.datapath, r.setup_per_sec, r.setup_secs
    );
    println!(
        "  memory: {:.0} bytes per session in the process (RSS {} → {} → {} KiB), {:.0} bytes per session of kernel slab (sockets)",
        r.user_bytes_per_session, r.rss_kib[0], r.rss_kib[1], r.rss_kib[2], r.kernel_bytes_per_session
    );
    if let Some(l) = &r.setup_latency_us {
        println!(
            "  setup round trip ({}): p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
            if api == SetupApi::Ng { "each offer and answer" } else { "each allocation" },
            l[0],
            l[1],
            l[2],
            l[3]
        );
    }
    if let Some(c) = &r.cluster {
        println!("  cluster: {c}");
    }
    println!(
        "  media on {} sampled sessions: {} of {} packets delivered intact",
        r.sample, r.media_received, r.media_sent
    );
    write_json(&a.json, &serde_json::to_value(&r).map_err(|e| e.to_string())?)?;
    if r.media_received != r.media_sent {
        return Err(format!("{} media packets lost or altered", r.media_sent - r.media_received));
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct TunnelArgs {
    /// Concurrent clients opening connections back to back.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Seconds of connection opening.
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// MiB over one connection for the throughput figure (0: skip).
    #[arg(long, default_value_t = 256)]
    bulk_mib: usize,
    /// Skip the direct comparison.
    #[arg(long)]
    no_direct: bool,
    /// Move tunnel bytes with a userspace copy instead of splice(2).
    #[arg(long)]
    copy: bool,
    /// Write the JSON report to FILE (`-`: stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn tunnel(a: TunnelArgs) -> Result<(), String> {
    let opts = loadtest::tunnel::TunnelOptions {
        connections: a.connections.max(1),
        duration: Duration::from_secs(a.duration.max(1)),
        bulk_mib: a.bulk_mib,
        compare_direct: !a.no_direct,
        pump: if a.copy { relay_core::io::splice::PumpMode::Copy } else { relay_core::io::splice::PumpMode::Splice },
    };
    let r = loadtest::tunnel::run(&opts)?;
    let quiet = a.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if !quiet {
        println!("tunnels: {} concurrent clients, {} s", r.connections, opts.duration.as_secs());
        println!(
            "  relay : {:.0} handshakes/s, TTFB p50 {} µs p99 {} µs, failures {}",
            r.handshake_rate, r.ttfb_p50_us, r.ttfb_p99_us, r.failures
        );
        if let (Some(rate), Some(p50), Some(added)) =
            (r.direct_handshake_rate, r.direct_ttfb_p50_us, r.added_ttfb_p50_us)
        {
            println!("  direct: {rate:.0} handshakes/s, TTFB p50 {p50} µs (the relay adds {added} µs)");
        }
        if let Some(b) = r.bulk_mib_s {
            let direct =
                r.direct_bulk_mib_s.map(|d| format!(", direct {d:.0} MiB/s ({:.2}x)", b / d)).unwrap_or_default();
            let cpu = r.relay_cpu_ms_per_gib.map(|c| format!(", relay CPU {c:.0} ms/GiB")).unwrap_or_default();
            println!("  bulk  : {b:.0} MiB/s through the relay{direct}{cpu}");
        }
    }
    write_json(&a.json, &serde_json::to_value(&r).map_err(|e| e.to_string())?)
}

#[derive(Debug, clap::Args)]
struct MediaArgs {
    /// Simultaneous calls (two streams each).
    #[arg(long, default_value_t = 100)]
    calls: usize,
    /// Packets per second per direction per call.
    #[arg(long, default_value_t = 50)]
    pps: u32,
    /// RTP payload bytes.
    #[arg(long, default_value_t = 160)]
    payload: usize,
    /// Seconds of sending (the run always stops by itself).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Latching policy for the sessions: window, authenticated or open
    /// (default: authenticated, window with --dtls).
    #[arg(long)]
    latch: Option<String>,
    /// Key SRTP from a webrtc-dtls handshake per call, through the relay.
    #[arg(long)]
    dtls: bool,
    /// One sendto per datagram instead of io_uring batches.
    #[arg(long)]
    no_batch: bool,
    /// Move one call's endpoint to a new port every SECS seconds (NAT rebinding).
    #[arg(long)]
    rebind_every: Option<f64>,
    /// Junk datagrams per second sprayed at the relay ports by a stranger.
    #[arg(long, default_value_t = 0)]
    junk_pps: u32,
    /// Drive an external relay through its admin API (http://HOST:PORT).
    #[arg(long)]
    admin: Option<String>,
    /// Bearer token for --admin.
    #[arg(long, env = "UCMRC_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Drive an external relay through a connector: a `ucmrc connect`
    /// configuration file (relay, trust, tenant, token_file).
    #[arg(long, conflicts_with = "admin")]
    connector: Option<PathBuf>,
    /// Datapath of the in-process relay: auto, uring or portable.
    #[arg(long, default_value = "auto")]
    datapath: String,
    /// Shards of the in-process relay.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Step the rate up (×1.25 per step, --duration each) and report the
    /// highest one with < 0.1 % loss and p50 ≤ 2 ms.
    #[arg(long)]
    find_capacity: bool,
    /// Write the JSON report to FILE (`-`: stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn target(a: &MediaArgs) -> Result<Box<dyn Target>, String> {
    if let Some(path) = &a.connector {
        let cfg = ucmrc::connect::ConnectConfig::load(path).map_err(|e| e.to_string())?;
        return Ok(Box::new(loadtest::target::ViaConnector::connect(cfg.connector)?));
    }
    match &a.admin {
        Some(url) => Ok(Box::new(Admin::new(url, a.admin_token.clone(), "loadtest")?)),
        None => {
            let backend: BackendKind = a.datapath.parse().map_err(|e| format!("--datapath: {e}"))?;
            Ok(Box::new(InProcess::start(backend, a.workers, a.calls)?))
        }
    }
}

fn summary(r: &MediaReport) {
    println!("{}: {} calls, {} pps per stream, {:.1} s", r.target, r.calls, r.pps_per_stream, r.duration_s);
    println!(
        "  offered {:.0} pps, delivered {:.0} pps, lost {} ({:.4} %), duplicates {}, reordered {}",
        r.offered_pps,
        r.delivered_pps,
        r.lost,
        r.loss_ratio * 100.0,
        r.duplicates,
        r.reordered
    );
    println!("  SRTP authentication failures {} (altered in flight), misrouted {}", r.auth_failures, r.misrouted);
    println!("  one-way latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs", r.p50_us, r.p99_us, r.p999_us, r.max_us);
    match r.relay_cpu_us_per_pkt {
        Some(c) => println!("  relay CPU {c:.2} µs per forwarded packet"),
        None => println!("  relay CPU: not measured (external relay)"),
    }
    println!(
        "  generator ({} sends) lag p99 {} µs, max {} µs; send errors {}",
        r.send_batching, r.send_lag_p99_us, r.send_lag_max_us, r.send_errors
    );
    if r.dtls_handshakes > 0 {
        println!("  DTLS-SRTP handshakes through the relay: {}", r.dtls_handshakes);
    }
    if r.rebinds > 0 || r.junk_sent > 0 {
        println!("  rebinds {}, junk sent {}, junk leaked {}", r.rebinds, r.junk_sent, r.junk_leaked);
    }
}

fn write_json(path: &Option<PathBuf>, value: &serde_json::Value) -> Result<(), String> {
    let Some(p) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    if p.as_os_str() == "-" {
        println!("{text}");
        Ok(())
    } else {
        std::fs::write(p, text + "\n").map_err(|e| format!("{}: {e}", p.display()))
    }
}

fn media(a: MediaArgs) -> Result<(), String> {
    let opts = MediaOptions {
        calls: a.calls,
        pps: a.pps,
        payload: a.payload.max(loadtest::packet::MIN_PAYLOAD),
        duration: Duration::from_secs(a.duration.max(1)),
        latch: a.latch.clone().unwrap_or_else(|| if a.dtls { "window" } else { "authenticated" }.to_string()),
        dtls: a.dtls,
        batch_sends: !a.no_batch,
        rebind_every: a.rebind_every.filter(|s| *s > 0.0).map(Duration::from_secs_f64),
        junk_pps: a.junk_pps,
        progress: a.json.as_deref().is_none_or(|p| p.as_os_str() != "-"),
        ..MediaOptions::default()
    };
    if !a.find_capacity {
        let mut t = target(&a)?;
        let r = media::run(&opts, t.as_mut())?;
        if opts.progress {
            summary(&r);
        }
        return write_json(&a.json, &serde_json::to_value(&r).map_err(|e| e.to_string())?);
    }
    let report = media::find_capacity(&opts, || target(&a), 40)?;
    for st in &report.steps {
        eprintln!(
            "step {:>8.0} pps offered: delivered {:.0}, loss {:.4} %, p50 {} µs -> {}",
            st.offered_pps,
            st.delivered_pps,
            st.loss_ratio * 100.0,
            st.p50_us,
            if st.pass { "pass" } else { "fail" }
        );
    }
    match report.capacity_pps {
        Some(c) => println!("capacity: {c:.0} pps (highest step with < 0.1 % loss and p50 ≤ 2 ms)"),
        None => println!("capacity: below the first step"),
    }
    write_json(&a.json, &serde_json::to_value(&report).map_err(|e| e.to_string())?)
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Media(a) => match media(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ucmrc-loadtest: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Turn(a) => match turn(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ucmrc-loadtest: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Sessions(a) => match sessions(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ucmrc-loadtest: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Tunnel(a) => match tunnel(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ucmrc-loadtest: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
