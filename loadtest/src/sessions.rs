//! Session capacity: how many concurrent sessions one relay holds, what each
//! costs in memory, and how fast they are set up — over the Rust API
//! (`RelayHandle::allocate`) or over ng (offer + answer through the
//! binary's real UDP transport, as Kamailio sends them). Media then flows on
//! an evenly spread sample of the sessions, every byte compared.
//!
//! The relay runs in this process with one interface of several loopback
//! addresses (127.0.1.1, 127.0.1.2, ...): each address has at most 65 535
//! ports, so 100 000 sessions need several. Its shards use the io_uring
//! backend, whose sockets live in fixed-file tables, so a shard may hold up
//! to RLIMIT_NOFILE sockets and the relay far more.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay_core::ng::bencode::{self, Value};
use relay_core::ng::{NgConfig, NgEngine, NgLimits};
use relay_core::{
    BackendKind, InterfaceAddress, InterfaceConfig, LegSpec, PeerPolicy, Relay, RelayConfig, SessionDefaults,
    SessionSpec,
};
use serde::Serialize;

/// How sessions are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SetupApi {
    /// `RelayHandle::allocate` (two rtcp-mux legs: two ports a session).
    Rust,
    /// ng offer + answer over UDP (rtpengine's shape: an even/odd pair per
    /// leg, four ports a call).
    Ng,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CapacityOptions {
    /// Concurrent sessions to set up and hold.
    pub sessions: usize,
    /// Loopback addresses on the relay's one interface.
    pub addresses: usize,
    /// First and last relay port on each address.
    pub ports: (u16, u16),
    /// Setup API.
    pub api: SetupApi,
    /// Requests in flight during setup.
    pub concurrency: usize,
    /// Sessions that carry media afterwards (spread evenly).
    pub sample: usize,
    /// Shards (0: enough that each holds at most RLIMIT_NOFILE − 2 048 sockets).
    pub workers: usize,
    /// Run as the active node of a cluster on this Redis URL, acknowledging
    /// once replicated (`true`) or at once (`false`).
    pub cluster: Option<(String, bool)>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    /// Setup API used.
    pub api: SetupApi,
    /// Sessions held at once.
    pub sessions: usize,
    /// Relay sockets bound for them.
    pub relay_sockets: u64,
    /// Loopback addresses used.
    pub addresses: usize,
    /// Shards.
    pub workers: usize,
    /// Sessions (ng: calls) set up per second.
    pub setup_per_sec: f64,
    /// Setup wall time, seconds.
    pub setup_secs: f64,
    /// Resident memory of the process: before the relay, with the relay
    /// idle, with every session (KiB).
    pub rss_kib: [u64; 3],
    /// (RSS with sessions − RSS idle) / sessions.
    pub user_bytes_per_session: f64,
    /// Kernel slab memory (sockets, their files) per session, bytes
    /// (machine-wide `Slab:` of /proc/meminfo: run on a quiet machine).
    pub kernel_bytes_per_session: f64,
    /// Sampled sessions with media.
    pub sample: usize,
    /// Media packets sent (both directions) and received back intact.
    pub media_sent: u64,
    /// Media packets received intact.
    pub media_received: u64,
    /// Datapath.
    pub datapath: String,
    /// Round trip of each setup request, µs: p50, p90, p99, max (ng: every
    /// offer and answer; Rust API with a cluster: every allocation).
    pub setup_latency_us: Option<[u64; 4]>,
    /// The cluster mode, when on.
    pub cluster: Option<String>,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Kernel slab memory, bytes (`Slab:` of /proc/meminfo): sockets, their
/// inodes and io_uring's file references live there. Machine-wide, so a
/// quiet machine gives the relay's share.
fn kernel_slab_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Slab:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The soft RLIMIT_NOFILE (from /proc/self/limits).
fn nofile_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok())
        .unwrap_or(1024)
}

/// A session set up: its index, and where its caller and callee send (to
/// the caller's leg, to the callee's leg).
type SetUp = (usize, (SocketAddr, SocketAddr));

/// The relay's addresses: 127.0.1.1, 127.0.1.2, ...
fn address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8))
}

/// Runs one capacity measurement.
pub fn run(o: &CapacityOptions) -> Result<CapacityReport, String> {
    let workers = shards_needed(o)?;
    let rss0 = rss_kib();
    let kernel0 = kernel_slab_bytes();
    let relay = start_relay(o, workers)?;
    let h = relay.handle();
    let rss1 = rss_kib();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let sample = Sample::new(o)?;
    // The ng engine (and the cluster node beside the relay, which
    // replicates its calls too).
    let engine = (o.api == SetupApi::Ng).then(|| {
        NgEngine::new(
            h.clone(),
            NgConfig {
                limits: NgLimits { max_calls: o.sessions + 16, ..NgLimits::default() },
                authenticated_latching: false,
                journal: o.cluster.is_some(),
                ..NgConfig::default()
            },
        )
    });
    let node = match &o.cluster {
        Some((url, wait)) => Some(runtime.block_on(start_cluster(url, *wait, &h, engine.clone()))?),
        None => None,
    };
    let mut latency = hdrhistogram::Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let set_up = match (o.api, engine) {
        (SetupApi::Rust, _) if node.is_some() => {
            runtime.block_on(committed_setup(&h, o, &|k| sample.hint_of(k), &mut latency))?
        }
        (SetupApi::Rust, _) => pipelined_setup(&h, o, &|k| sample.hint_of(k))?,
        (SetupApi::Ng, Some(engine)) => {
            let ng = runtime.block_on(start_ng_transport(o, engine))?;
            ng_setup(ng, o, &|k| sample.hint_of(k), &mut latency)?
        }
        (SetupApi::Ng, None) => return Err("no ng engine".into()),
    };
    let setup = started.elapsed();
    let counters = h.counters().wait().map_err(|e| e.to_string())?.total;
    let rss2 = rss_kib();
    let kernel2 = kernel_slab_bytes();
    let (media_sent, media_received) = sample.media(&set_up)?;
    let sessions = counters.sessions_active as usize;
    let cluster = o.cluster.as_ref().map(|(_, wait)| {
        format!(
            "active node, acknowledging {}",
            if *wait { "once replicated to Redis" } else { "at once (replicated within 20 ms)" }
        )
    });
    if let Some(n) = node {
        runtime.block_on(n.stop(false));
    }
    drop(relay);
    Ok(CapacityReport {
        api: o.api,
        sessions,
        relay_sockets: counters.ports_in_use,
        addresses: o.addresses,
        workers,
        setup_per_sec: o.sessions as f64 / setup.as_secs_f64(),
        setup_secs: setup.as_secs_f64(),
        rss_kib: [rss0, rss1, rss2],
        user_bytes_per_session: (rss2.saturating_sub(rss1) * 1024) as f64 / sessions.max(1) as f64,
        kernel_bytes_per_session: kernel2.saturating_sub(kernel0) as f64 / sessions.max(1) as f64,
        sample: sample.sessions.len(),
        media_sent,
        media_received,
        datapath: format!("{:?}", h.backend()).to_lowercase(),
        setup_latency_us: (!latency.is_empty()).then(|| {
            [
                latency.value_at_quantile(0.5),
                latency.value_at_quantile(0.9),
                latency.value_at_quantile(0.99),
                latency.max(),
            ]
        }),
        cluster,
    })
}

/// Checks the addresses hold the ports the sessions need; the shards to
/// run (each holds at most RLIMIT_NOFILE − 2 048 sockets).
fn shards_needed(o: &CapacityOptions) -> Result<usize, String> {
    let ports_per_session = match o.api {
        SetupApi::Rust => 2,
        SetupApi::Ng => 4,
    };
    let per_address = usize::from(o.ports.1 - o.ports.0) + 1;
    let needed = o.sessions * ports_per_session;
    if per_address * o.addresses < needed + needed / 50 {
        return Err(format!(
            "{needed} ports needed, {} addresses × {per_address} ports give {}: add --addresses",
            o.addresses,
            per_address * o.addresses
        ));
    }
    let limit = nofile_limit().saturating_sub(2048).max(1024);
    Ok(if o.workers > 0 { o.workers } else { (per_address * o.addresses).div_ceil(limit).max(1) })
}

/// The relay under test: one interface of `o.addresses` loopback
/// addresses, io_uring, sessions that never idle out during the run.
fn start_relay(o: &CapacityOptions, workers: usize) -> Result<Relay, String> {
    Relay::start(RelayConfig {
        interfaces: vec![InterfaceConfig {
            name: "default".into(),
            addresses: (0..o.addresses).map(|i| InterfaceAddress { bind: address(i), advertised: None }).collect(),
            port_min: o.ports.0,
            port_max: o.ports.1,
        }],
        workers,
        backend: BackendKind::Uring,
        tenant_port_share_percent: 100,
        command_queue: 4096,
        thread_name: "capacity".into(),
        defaults: SessionDefaults {
            idle_timeout: Duration::from_secs(3600),
            limits: relay_core::LegLimits::default(),
            ..SessionDefaults::default()
        },
        peer_policy: PeerPolicy::loopback_lab(),
        journal: o.cluster.is_some(),
        ..RelayConfig::default()
    })
    .map_err(|e| format!("relay: {e}"))
}

/// The sessions that carry media after setup (spread evenly), with a
/// caller and a callee socket each.
struct Sample {
    sessions: Vec<usize>,
    ends: Vec<(UdpSocket, UdpSocket)>,
}

impl Sample {
    fn new(o: &CapacityOptions) -> Result<Sample, String> {
        let stride = (o.sessions / o.sample.max(1)).max(1);
        let sessions: Vec<usize> = (0..o.sessions).step_by(stride).take(o.sample).collect();
        let mut ends = Vec::with_capacity(sessions.len());
        for _ in &sessions {
            let a = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let b = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            for s in [&a, &b] {
                s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
            }
            ends.push((a, b));
        }
        Ok(Sample { sessions, ends })
    }

    /// Session `k`'s hints: its sample sockets, or a discard address for
    /// sessions outside the sample (they never see a packet).
    fn hint_of(&self, k: usize) -> (SocketAddr, SocketAddr) {
        match self.sessions.binary_search(&k) {
            Ok(i) => (self.ends[i].0.local_addr().expect("addr"), self.ends[i].1.local_addr().expect("addr")),
            Err(_) => (SocketAddr::from(([127, 0, 0, 1], 9)), SocketAddr::from(([127, 0, 0, 1], 9))),
        }
    }

    /// Three packets each way on every sampled session of `set_up` (session,
    /// (to caller's leg, to callee's leg)), every byte compared; (sent,
    /// received intact).
    fn media(&self, set_up: &[SetUp]) -> Result<(u64, u64), String> {
        let (mut sent, mut received) = (0u64, 0u64);
        let mut buf = [0u8; 512];
        for &(k, (to_caller_leg, to_callee_leg)) in set_up {
            let Ok(i) = self.sessions.binary_search(&k) else { continue };
            let (caller, callee) = &self.ends[i];
            for seq in 0..3u16 {
                for (from, to, dest) in [(caller, callee, to_caller_leg), (callee, caller, to_callee_leg)] {
                    let mut pkt = vec![0x80, 0];
                    pkt.extend_from_slice(&seq.to_be_bytes());
                    pkt.extend_from_slice(&[0, 0, 0, 0]);
                    pkt.extend_from_slice(&(i as u32).to_be_bytes());
                    pkt.extend(std::iter::repeat_n(seq as u8, 160));
                    from.send_to(&pkt, dest).map_err(|e| e.to_string())?;
                    sent += 1;
                    if matches!(to.recv(&mut buf), Ok(n) if buf[..n] == pkt[..]) {
                        received += 1;
                    }
                }
            }
        }
        Ok((sent, received))
    }
}

/// Sets up `o.sessions` sessions with `allocate`, `o.concurrency` in
/// flight; returns each one's (to caller's leg, to callee's leg).
fn pipelined_setup(
    h: &relay_core::RelayHandle,
    o: &CapacityOptions,
    hint_of: &dyn Fn(usize) -> (SocketAddr, SocketAddr),
) -> Result<Vec<SetUp>, String> {
    let mut pending = std::collections::VecDeque::with_capacity(o.concurrency);
    let mut out = Vec::with_capacity(o.sessions);
    let mut k = 0;
    while k < o.sessions || !pending.is_empty() {
        if k < o.sessions && pending.len() < o.concurrency.max(1) {
            pending.push_back((k, h.allocate(capacity_spec(hint_of(k)))));
            k += 1;
            continue;
        }
        let Some((j, p)) = pending.pop_front() else { break };
        let a = p.wait().map_err(|e| format!("session {j}: {e}"))?;
        out.push((j, (a.pbx.rtp, a.endpoint.rtp)));
    }
    Ok(out)
}

/// ucmrc's own ng transport (UDP and TCP on loopback) in front of `engine`;
/// its UDP address.
async fn start_ng_transport(o: &CapacityOptions, engine: Arc<NgEngine>) -> Result<SocketAddr, String> {
    let transport = ucmrc::ng::NgTransport {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allow_from: Vec::new(),
        udp_max_in_flight: o.concurrency.max(1) * 2,
        tcp_max_connections: 4,
        tcp_idle_timeout: Duration::from_secs(60),
        tcp_write_timeout: Duration::from_secs(10),
        max_message_bytes: 256 * 1024,
        max_cookie_bytes: 128,
    };
    let stats = Arc::new(ucmrc::ng::NgTransportStats::default());
    let (udp, _) =
        ucmrc::ng::start(transport, engine, stats, Arc::new(|| true)).await.map_err(|e| format!("ng listen: {e}"))?;
    Ok(udp)
}

/// The relay's cluster node, active (it takes the free lease at once).
async fn start_cluster(
    url: &str,
    wait_for_replication: bool,
    h: &relay_core::RelayHandle,
    engine: Option<Arc<NgEngine>>,
) -> Result<relay_cluster::Cluster, String> {
    let key = relay_cluster::ClusterKey::new(&[0x11; 32]);
    let mut config = relay_cluster::ClusterConfig::new(url, "loadtest", relay_cluster::Sealer::new(key, Vec::new()));
    config.eager = true;
    config.group = format!("loadtest-{}", std::process::id());
    config.wait_for_replication = wait_for_replication;
    let mut node =
        relay_cluster::Cluster::start_with(config, h.clone(), engine).await.map_err(|e| format!("cluster: {e}"))?;
    let active =
        tokio::time::timeout(Duration::from_secs(10), node.wait_for(|s| s.role == relay_cluster::Role::Active)).await;
    active.map_err(|_| format!("cluster: not active after 10 s: {:?}", node.status()))?;
    Ok(node)
}

/// The spec of one capacity session: tenant `capacity`, rtcp-mux legs
/// hinted at (caller, callee).
fn capacity_spec((caller, callee): (SocketAddr, SocketAddr)) -> SessionSpec {
    SessionSpec {
        tenant: "capacity".into(),
        pbx: LegSpec { rtcp_mux: true, hint: Some(caller), ..LegSpec::default() },
        endpoint: LegSpec { rtcp_mux: true, hint: Some(callee), ..LegSpec::default() },
        ..SessionSpec::default()
    }
}

/// Sets up `o.sessions` sessions with `allocate_committed` (acknowledged
/// once durable), `o.concurrency` in flight; returns each one's (to
/// caller's leg, to callee's leg) and records each round trip.
async fn committed_setup(
    h: &relay_core::RelayHandle,
    o: &CapacityOptions,
    hint_of: &dyn Fn(usize) -> (SocketAddr, SocketAddr),
    latency: &mut hdrhistogram::Histogram<u64>,
) -> Result<Vec<SetUp>, String> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = Vec::with_capacity(o.sessions);
    let mut k = 0;
    while k < o.sessions || !tasks.is_empty() {
        if k < o.sessions && tasks.len() < o.concurrency.max(1) {
            let spec = capacity_spec(hint_of(k));
            let (h, j) = (h.clone(), k);
            tasks.spawn(async move {
                let asked = Instant::now();
                (j, h.allocate_committed(spec).await, asked.elapsed())
            });
            k += 1;
            continue;
        }
        let Some(done) = tasks.join_next().await else { break };
        let (j, r, took) = done.map_err(|e| e.to_string())?;
        let a = r.map_err(|e| format!("session {j}: {e}"))?;
        let _ = latency.record(took.as_micros() as u64);
        out.push((j, (a.pbx.rtp, a.endpoint.rtp)));
    }
    Ok(out)
}

/// Sets up `o.sessions` calls over ng (offer, then answer), `o.concurrency`
/// requests in flight; returns each call's (to caller's leg, to callee's
/// leg) from the rewritten SDPs.
fn ng_setup(
    ng: SocketAddr,
    o: &CapacityOptions,
    hint_of: &dyn Fn(usize) -> (SocketAddr, SocketAddr),
    latency: &mut hdrhistogram::Histogram<u64>,
) -> Result<Vec<SetUp>, String> {
    let mut client = NgClient::new(ng)?;
    let mut offered: Vec<Option<SocketAddr>> = vec![None; o.sessions];
    let mut out = Vec::new();
    let mut next = 0usize;
    while out.len() < o.sessions {
        while client.outstanding.len() < o.concurrency.max(1) && next < o.sessions {
            client.send(call_message(next, false, hint_of(next)))?;
            next += 1;
        }
        let Some((cookie, reply, first_try)) = client.recv(out.len())? else { continue };
        if let Some(took) = first_try {
            let _ = latency.record(took.as_micros() as u64);
        }
        let k: usize = cookie[1..].parse().map_err(|_| "bad cookie")?;
        if cookie.starts_with('o') {
            offered[k] = Some(relay_addr_in(&reply)?);
            client.send(call_message(k, true, hint_of(k)))?;
        } else {
            let to_callee_leg = offered[k].ok_or("answer before offer")?;
            out.push((k, (relay_addr_in(&reply)?, to_callee_leg)));
        }
    }
    out.sort_by_key(|(k, _)| *k);
    Ok(out)
}

/// Call `k`'s offer (from its caller) or answer (from its callee), with a
/// cookie naming which and the call.
fn call_message(k: usize, answer: bool, (caller, callee): (SocketAddr, SocketAddr)) -> Vec<u8> {
    let from = if answer { callee } else { caller };
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 8\r\na=rtcp-mux\r\n",
        ip = from.ip(),
        port = from.port()
    );
    let mut pairs = vec![
        ("command", Value::str(if answer { "answer" } else { "offer" })),
        ("call-id", Value::Bytes(format!("cap-{k}").into_bytes())),
        ("from-tag", Value::str("caller")),
        ("sdp", Value::Bytes(sdp.into_bytes())),
    ];
    if answer {
        pairs.push(("to-tag", Value::str("callee")));
    }
    [format!("{}{k} ", if answer { 'a' } else { 'o' }).into_bytes(), bencode::dict(pairs).encode()].concat()
}

/// The relay address a reply's SDP gives (its `c=` and first `m=audio`).
fn relay_addr_in(reply: &Value) -> Result<SocketAddr, String> {
    let sdp = reply.get("sdp").and_then(Value::as_str).ok_or_else(|| format!("ng error: {reply:?}"))?;
    let ip: IpAddr = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .and_then(|a| a.trim().parse().ok())
        .ok_or("no c= in the reply")?;
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .ok_or("no m= in the reply")?;
    Ok(SocketAddr::new(ip, port))
}

/// ng over UDP as Kamailio speaks it: a request unanswered for 500 ms is
/// sent again with the same cookie (UDP may drop it; the relay answers a
/// retransmission from its reply cache), ten times at most.
struct NgClient {
    sock: UdpSocket,
    ng: SocketAddr,
    /// Requests without a reply, by cookie: (message, last sent, retransmissions).
    outstanding: std::collections::HashMap<String, (Vec<u8>, Instant, u32)>,
    buf: Vec<u8>,
}

impl NgClient {
    fn new(ng: SocketAddr) -> Result<NgClient, String> {
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_millis(100))).map_err(|e| e.to_string())?;
        Ok(NgClient { sock, ng, outstanding: std::collections::HashMap::new(), buf: vec![0u8; 65536] })
    }

    fn send(&mut self, msg: Vec<u8>) -> Result<(), String> {
        let cookie = String::from_utf8_lossy(&msg[..msg.iter().position(|b| *b == b' ').unwrap_or(0)]).to_string();
        let sent = self.sock.send_to(&msg, self.ng).map_err(|e| e.to_string());
        self.outstanding.insert(cookie, (msg, Instant::now(), 0));
        sent.map(|_| ())
    }

    /// The next reply: its cookie, its message and, when its request was
    /// sent once only, the round trip. None when nothing new arrived
    /// (requests due are sent again meanwhile).
    fn recv(&mut self, done: usize) -> Result<Option<(String, Value, Option<Duration>)>, String> {
        let n = match self.sock.recv(&mut self.buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                self.retransmit_due(done)?;
                return Ok(None);
            }
            Err(e) => return Err(format!("ng reply: {e}")),
        };
        let space = self.buf[..n].iter().position(|b| *b == b' ').ok_or("reply without cookie")?;
        let cookie = std::str::from_utf8(&self.buf[..space]).map_err(|e| e.to_string())?.to_string();
        let Some((_, sent_at, tries)) = self.outstanding.remove(&cookie) else {
            return Ok(None); // the answer to a retransmission already handled
        };
        let reply = bencode::decode(&self.buf[space + 1..n]).map_err(|e| format!("{e:?}"))?;
        Ok(Some((cookie, reply, (tries == 0).then(|| sent_at.elapsed()))))
    }

    fn retransmit_due(&mut self, done: usize) -> Result<(), String> {
        for (cookie, (msg, at, tries)) in self.outstanding.iter_mut() {
            if at.elapsed() >= Duration::from_millis(500) {
                *tries += 1;
                if *tries > 10 {
                    return Err(format!("no ng reply to {cookie} after 10 retransmissions ({done} calls set up)"));
                }
                self.sock.send_to(msg, self.ng).map_err(|e| e.to_string())?;
                *at = Instant::now();
            }
        }
        Ok(())
    }
}
