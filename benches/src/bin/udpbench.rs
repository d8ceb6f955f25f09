//! `udpbench`: the loopback forwarding benchmark behind docs/PERFORMANCE.md.
//!
//! ```text
//! udpbench capacity --target uring|portable|floor|ebpf|direct [--sessions 1000] [--step-secs 4]
//! udpbench fixed    --target uring|portable|floor --rate 50000 [--sessions 1000] [--secs 5]
//! udpbench compare  [--targets portable,uring,floor] [--repeat 3] [--ladder 100000,...] [--cpu-rate 50000]
//! udpbench overload --target uring --capacity PPS [--factor 1.5] [--secs 10]
//! udpbench memory   [--sessions 32000]
//! udpbench kernel-cost [--targets direct,ebpf] [--sessions 1000] [--secs 3] [--repeat 3]
//! ```
//! `--burst N` (any subcommand): N packets in a row to one relay port, then
//! the next (default 1), for receive batching.
//! `--pairs` (any subcommand): sessions with RTP/RTCP port pairs instead of
//! rtcp-mux (rtpengine's shape: four sockets a session). `ebpf` needs root
//! and a private network namespace (`unshare --net`, `ip link set lo up`):
//! the fast path attaches to the namespace's loopback.
//! The generator (this process, pinned to CPU 0) drives two sockets, A (the
//! "phones") and B (the "PBXs"), and spawns the forwarder under test as a
//! child process pinned to CPU 1: `relay` (relay-core with the chosen
//! backend, N sessions, 2 N sockets) or `floor` (a minimal io_uring
//! forwarder that does nothing but forward between the same 2 N sockets).
//! Each session gets 200-byte packets in both directions (A → endpoint port
//! → B, and B → PBX port → A); every payload carries its send time, so the
//! sink measures one-way latency. Relay CPU comes from the child's CPU
//! clock (every thread, ended ones included). Every run is bounded in
//! time; children exit when the parent's pipe closes or their own deadline
//! passes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Counts heap bytes in use (for `memory`).
struct Counting;
static HEAP: AtomicUsize = AtomicUsize::new(0);
// SAFETY: forwards to the system allocator and only counts sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HEAP.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HEAP.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

const PKT: usize = 200;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)) {
        Some(v) => v.parse().unwrap_or_else(|_| panic!("bad value for {name}: {v}")),
        None => default,
    }
}

fn pin(cpu: usize, pid: i32) {
    #[allow(unsafe_code)]
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays inside it; the call
    // reads the set we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("warning: could not pin pid {pid} to cpu {cpu}");
        }
    }
}

/// `--burst N`: N consecutive packets to one relay port before the next
/// (default 1: strict round-robin). Bursts per socket are what batch
/// receives (`recvmmsg`) profit from.
fn burst_len() -> u64 {
    arg("--burst", 1u64).max(1)
}

/// `--pairs`: sessions with RTP/RTCP port pairs (rtpengine's shape without
/// rtcp-mux: four sockets a session, RTP on the even ones).
fn pairs() -> bool {
    std::env::args().any(|a| a == "--pairs")
}

/// Ports a relay child's range needs for `n` sessions (with slack).
fn range_len(n: usize, pairs: bool) -> usize {
    ((if pairs { 8 } else { 4 }) * n).clamp(1000, 55_000)
}

fn raise_fd_limit() {
    #[allow(unsafe_code)]
    // SAFETY: valid rlimit pointers.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() {
    raise_fd_limit();
    let cmd = std::env::args().nth(1).unwrap_or_default();
    match cmd.as_str() {
        "relay" => child_relay(),
        "floor" => child_floor(),
        "direct" => child_direct(),
        "capacity" => capacity(),
        "fixed" => {
            let r = run_once(
                &arg("--target", "uring".to_string()),
                arg("--sessions", 1000),
                arg("--rate", 50_000),
                arg("--secs", 5),
            );
            println!("{}", r.line());
        }
        "memory" => memory(arg("--sessions", 32_000)),
        "compare" => compare(),
        "kernel-cost" => kernel_cost(),
        "overload" => overload(),
        _ => {
            eprintln!("usage: udpbench capacity|fixed|memory --target uring|portable|floor ...");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------- children

/// Exits when stdin closes (the parent is gone) or after `--max-secs`.
fn watch_parent() {
    let max = Duration::from_secs(arg("--max-secs", 600));
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        std::process::exit(0);
    });
    std::thread::spawn(move || {
        std::thread::sleep(max);
        std::process::exit(0);
    });
}

fn child_relay() {
    use relay_core::*;
    watch_parent();
    let n: usize = arg("--sessions", 1000);
    let a: SocketAddr = arg("--a", "127.0.0.1:1".parse().expect("addr"));
    let b: SocketAddr = arg("--b", "127.0.0.1:1".parse().expect("addr"));
    let backend: BackendKind = arg("--backend", "uring".to_string()).parse().expect("backend");
    let relay = Relay::start(RelayConfig {
        backend,
        port_min: arg("--base", 10000u16),
        port_max: arg("--base", 10000u16) + range_len(n, pairs()) as u16 - 1,
        workers: 1,
        tenant_port_share_percent: 100,
        defaults: SessionDefaults { limits: LegLimits::default(), ..SessionDefaults::default() },
        ..RelayConfig::default()
    })
    .expect("relay");
    let h = relay.handle();
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let s = h
            .allocate(SessionSpec {
                tenant: "bench".into(),
                pbx: LegSpec { rtcp_mux: !pairs(), hint: Some(b), ..LegSpec::default() },
                endpoint: LegSpec { rtcp_mux: !pairs(), hint: Some(a), ..LegSpec::default() },
                ..SessionSpec::default()
            })
            .wait()
            .expect("allocate");
        ports.push(format!("{},{}", s.endpoint.rtp.port(), s.pbx.rtp.port()));
    }
    println!("PORTS {}", ports.join(" "));
    let kind = match &relay.datapath().fast_path {
        Some(Ok(_)) => "ebpf",
        Some(Err(reason)) => {
            eprintln!("kernel fast path unavailable: {reason}");
            relay.datapath().running.as_str()
        }
        None => relay.datapath().running.as_str(),
    };
    println!("READY {kind}");
    let _ = std::io::stdout().flush();
    let mut tick = 0u64;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let c = h.counters().wait().expect("counters").total;
        println!("FWD {}", c.packets_forwarded);
        let _ = std::io::stdout().flush();
        tick += 1;
        if !tick.is_multiple_of(10) {
            continue;
        }
        eprintln!(
            "relay: forwarded {} dropped {} enobufs {} rearms {} send_errors {}",
            c.packets_forwarded,
            c.drops.total(),
            c.backend_enobufs,
            c.backend_rearms,
            c.send_errors
        );
    }
}

/// No forwarder at all: the generator's two sockets send to each other
/// (the baseline the other targets' total CPU is compared with).
fn child_direct() {
    watch_parent();
    let n: usize = arg("--sessions", 1000);
    let a: SocketAddr = arg("--a", "127.0.0.1:1".parse().expect("addr"));
    let b: SocketAddr = arg("--b", "127.0.0.1:1".parse().expect("addr"));
    let ports: Vec<String> = (0..n).map(|_| format!("{},{}", b.port(), a.port())).collect();
    println!("PORTS {}", ports.join(" "));
    println!("READY direct");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        println!("FWD 0");
        let _ = std::io::stdout().flush();
    }
}

/// The floor's provided buffers: `BUFS` buffers of `BSZ` bytes in a
/// buffer ring registered with the kernel (group 0).
struct FloorBuffers {
    ring: *mut io_uring::types::BufRingEntry,
    bufs: Vec<u8>,
    tail: u16,
}

impl FloorBuffers {
    const BUFS: usize = 4096;
    const BSZ: usize = 2048;

    /// Every buffer provided, the ring registered with `uring`.
    fn register(uring: &io_uring::IoUring) -> FloorBuffers {
        let layout = Layout::from_size_align(Self::BUFS * 16, 4096).expect("layout");
        #[allow(unsafe_code)]
        // SAFETY: non-zero layout; memory lives until the process exits.
        let ring = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<io_uring::types::BufRingEntry>();
        let mut b = FloorBuffers { ring, bufs: vec![0u8; Self::BUFS * Self::BSZ], tail: 0 };
        for bid in 0..Self::BUFS as u16 {
            b.recycle(bid);
        }
        b.publish();
        #[allow(unsafe_code)]
        // SAFETY: page-aligned ring of BUFS entries that outlives the ring.
        unsafe {
            uring.submitter().register_buf_ring_with_flags(ring as u64, Self::BUFS as u16, 0, 0).expect("buf ring")
        };
        b
    }

    /// Gives buffer `bid` back (visible to the kernel at the next publish).
    fn recycle(&mut self, bid: u16) {
        #[allow(unsafe_code)]
        // SAFETY: index masked into the ring; entry past the published tail.
        unsafe {
            let e = &mut *self.ring.add(usize::from(self.tail) & (Self::BUFS - 1));
            e.set_addr(self.bufs[usize::from(bid) * Self::BSZ..].as_mut_ptr() as u64);
            e.set_len(Self::BSZ as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the recycled buffers to the kernel.
    fn publish(&self) {
        #[allow(unsafe_code)]
        // SAFETY: the tail field lies inside the ring allocation.
        unsafe {
            (*io_uring::types::BufRingEntry::tail(self.ring).cast::<std::sync::atomic::AtomicU16>())
                .store(self.tail, Ordering::Release)
        };
    }

    /// The first `len` bytes of buffer `bid`.
    fn data(&self, bid: u16, len: usize) -> &[u8] {
        &self.bufs[usize::from(bid) * Self::BSZ..usize::from(bid) * Self::BSZ + len]
    }
}

/// `2n` loopback UDP sockets (endpoint sockets even, partners odd), their
/// ports printed for the parent.
fn floor_sockets(n: usize) -> Vec<socket2::Socket> {
    let socks: Vec<socket2::Socket> = (0..2 * n)
        .map(|_| {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
            s.set_recv_buffer_size(4 << 20).expect("rcvbuf");
            s.bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into()).expect("bind");
            s
        })
        .collect();
    let port = |s: &socket2::Socket| s.local_addr().expect("addr").as_socket().expect("inet").port();
    let ports: Vec<String> = (0..n).map(|i| format!("{},{}", port(&socks[2 * i]), port(&socks[2 * i + 1]))).collect();
    println!("PORTS {}", ports.join(" "));
    println!("READY floor");
    let _ = std::io::stdout().flush();
    socks
}

/// An IPv4 destination as the kernel takes it.
fn sockaddr_in(to: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v4) = to else { panic!("ipv4 only") };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
        sin_zero: [0; 8],
    }
}

/// The floor: a minimal io_uring forwarder (same recipe, no relay logic).
fn child_floor() {
    use io_uring::{cqueue, opcode, types, IoUring};
    watch_parent();
    let n: usize = arg("--sessions", 1000);
    let a: SocketAddr = arg("--a", "127.0.0.1:1".parse().expect("addr"));
    let b: SocketAddr = arg("--b", "127.0.0.1:1".parse().expect("addr"));
    let socks = floor_sockets(n);
    let mut ring =
        IoUring::builder().setup_single_issuer().setup_defer_taskrun().setup_cqsize(16384).build(4096).expect("ring");
    let fds: Vec<i32> = socks.iter().map(|s| s.as_raw_fd()).collect();
    ring.submitter().register_files(&fds).expect("files");
    let mut bufs = FloorBuffers::register(&ring);
    #[allow(unsafe_code)]
    // SAFETY: zeroed msghdr is valid.
    let mut msghdr: libc::msghdr = unsafe { std::mem::zeroed() };
    msghdr.msg_namelen = 16;
    let (dst_a, dst_b) = (sockaddr_in(a), sockaddr_in(b));
    let arm = |ring: &mut IoUring, slot: u32| {
        let e = opcode::RecvMsgMulti::new(types::Fixed(slot), &msghdr, 0).build().user_data(1 << 32 | u64::from(slot));
        #[allow(unsafe_code)]
        // SAFETY: msghdr lives for the whole process.
        while unsafe { ring.submission().push(&e) }.is_err() {
            ring.submit().expect("submit");
        }
    };
    for slot in 0..2 * n as u32 {
        arm(&mut ring, slot);
    }
    let mut cqes = Vec::with_capacity(16384);
    let mut rearm = Vec::new();
    let mut forwarded = 0u64;
    let mut last_print = Instant::now();
    loop {
        if last_print.elapsed() >= Duration::from_millis(100) {
            println!("FWD {forwarded}");
            let _ = std::io::stdout().flush();
            last_print = Instant::now();
        }
        let ts = types::Timespec::new().nsec(50_000_000);
        let _ = ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts));
        cqes.clear();
        cqes.extend(ring.completion());
        for c in &cqes {
            let ud = c.user_data();
            if ud >> 32 == 2 {
                bufs.recycle((ud & 0xffff) as u16);
                continue;
            }
            let slot = (ud & 0xffff_ffff) as u32;
            if !cqueue::more(c.flags()) {
                rearm.push(slot);
            }
            let Some(bid) = cqueue::buffer_select(c.flags()) else { continue };
            if c.result() <= 0 {
                bufs.recycle(bid);
                continue;
            }
            let Ok(out) = types::RecvMsgOut::parse(bufs.data(bid, c.result() as usize), &msghdr) else {
                bufs.recycle(bid);
                continue;
            };
            let payload = out.payload_data();
            forwarded += 1;
            // Endpoint sockets are even: forward out of the partner socket.
            let (via, to) = if slot.is_multiple_of(2) { (slot + 1, &dst_b) } else { (slot - 1, &dst_a) };
            let e = opcode::Send::new(types::Fixed(via), payload.as_ptr(), payload.len() as u32)
                .dest_addr((to as *const libc::sockaddr_in).cast())
                .dest_addr_len(16)
                .build()
                .user_data(2 << 32 | u64::from(bid));
            #[allow(unsafe_code)]
            // SAFETY: the buffer stays untouched until this send completes.
            while unsafe { ring.submission().push(&e) }.is_err() {
                ring.submit().expect("submit");
            }
        }
        bufs.publish();
        for slot in rearm.drain(..) {
            arm(&mut ring, slot);
        }
    }
}

// ---------------------------------------------------------------- generator

struct Spawned {
    child: Child,
    _stdin: ChildStdin,
    ports: Vec<(u16, u16)>,
    /// The forwarder's own count of forwarded packets (updated every 100 ms).
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn spawn(target: &str, n: usize, a: SocketAddr, b: SocketAddr) -> Spawned {
    let exe = std::env::current_exe().expect("exe");
    let mut cmd = Command::new(exe);
    match target {
        "floor" => cmd.arg("floor"),
        "direct" => cmd.arg("direct"),
        backend => cmd.args(["relay", "--backend", backend]),
    };
    // A fresh port range for each run: a killed relay's sockets may take a
    // moment to disappear (io_uring tears down asynchronously).
    static RUN: AtomicUsize = AtomicUsize::new(0);
    // Ranges that never overlap between consecutive runs, however large.
    let span = range_len(n, pairs());
    let slots = (50_000 / span).max(2);
    let base = 10000 + (RUN.fetch_add(1, Ordering::Relaxed) % slots) * span;
    cmd.args(["--sessions", &n.to_string(), "--a", &a.to_string(), "--b", &b.to_string(), "--base", &base.to_string()]);
    if pairs() {
        cmd.arg("--pairs");
    }
    // UDPBENCH_CHILD_LOG=FILE keeps the child's per-second counters.
    let stderr = match std::env::var("UDPBENCH_CHILD_LOG") {
        Ok(path) => Stdio::from(std::fs::File::create(path).expect("child log")),
        Err(_) => Stdio::null(),
    };
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr).spawn().expect("spawn");
    pin(1, child.id() as i32);
    let stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut ports = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("child output");
        if let Some(rest) = line.strip_prefix("PORTS ") {
            ports = rest
                .split(' ')
                .map(|p| {
                    let (e, q) = p.split_once(',').expect("pair");
                    (e.parse().expect("port"), q.parse().expect("port"))
                })
                .collect();
        }
        if let Some(kind) = line.strip_prefix("READY ") {
            if kind != target {
                eprintln!("warning: asked for {target}, running {kind}");
            }
            break;
        }
    }
    if ports.is_empty() {
        eprintln!("the {target} child did not start (see its stderr by running it directly)");
        std::process::exit(1);
    }
    // Let the child's threads settle on their CPU.
    for tid in std::fs::read_dir(format!("/proc/{}/task", child.id())).into_iter().flatten().flatten() {
        if let Ok(t) = tid.file_name().to_string_lossy().parse::<i32>() {
            pin(1, t);
        }
    }
    let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let fwd = forwarded.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("FWD ").and_then(|n| n.parse().ok()) {
                fwd.store(n, Ordering::Relaxed);
            }
        }
    });
    Spawned { child, _stdin: stdin, ports, forwarded }
}

/// On-CPU nanoseconds of every thread of `pid` (includes the softirq work
/// its own sends trigger on loopback; see docs/PERFORMANCE.md).
fn cpu_ns(pid: u32) -> u64 {
    relay_core::io::sys::process_cpu_time(pid).map_or(0, |d| d.as_nanos() as u64)
}

/// One measured run's results.
struct RunResult {
    target: String,
    sessions: usize,
    offered_pps: f64,
    delivered_pps: f64,
    loss: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    relay_cpu: f64,
    /// Generator and forwarder CPU together per delivered packet (on
    /// loopback the kernel's forwarding, in-kernel or not, runs in the
    /// sender's context: this is the comparable figure across targets).
    total_ns_per_pkt: f64,
    /// The forwarder's own count (independent of the generator's receive side).
    forwarded_pps: f64,
    ns_per_pkt: f64,
    gen_lag_ms: f64,
}

impl RunResult {
    fn good(&self) -> bool {
        self.loss < 0.001 && self.p50_us <= 2000.0
    }
    fn line(&self) -> String {
        format!(
            "target={} sessions={} offered_pps={:.0} forwarded_pps={:.0} delivered_pps={:.0} loss={:.5} p50_us={:.0} p99_us={:.0} p999_us={:.0} relay_cpu={:.1}% ns_per_pkt={:.0} total_ns_per_pkt={:.0} gen_lag_ms={:.1}",
            self.target, self.sessions, self.offered_pps, self.forwarded_pps, self.delivered_pps, self.loss, self.p50_us, self.p99_us, self.p999_us,
            self.relay_cpu * 100.0, self.ns_per_pkt, self.total_ns_per_pkt, self.gen_lag_ms
        )
    }
}

fn socket() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).expect("socket");
    s.set_recv_buffer_size(8 << 20).expect("rcvbuf");
    s.set_send_buffer_size(8 << 20).expect("sndbuf");
    // 127.0.0.2: the generator's ports can never fall inside a relay's own
    // range (on 127.0.0.1), however large the range is.
    s.bind(&"127.0.0.2:0".parse::<SocketAddr>().expect("addr").into()).expect("bind");
    s.set_nonblocking(true).expect("nonblocking");
    s.into()
}

/// Runs one paced load at `rate` packets/s (both directions together)
/// after a one-second warm-up.
fn run_once(target: &str, n: usize, rate: u64, secs: u64) -> RunResult {
    run_phases(target, n, &[(rate, Duration::from_secs(1)), (rate, Duration::from_secs(secs))]).remove(1)
}

/// Runs consecutive phases `(rate, duration)` against one forwarder process
/// and reports each phase (packets are attributed by their send time).
fn run_phases(target: &str, n: usize, phases: &[(u64, Duration)]) -> Vec<RunResult> {
    pin(0, 0);
    let (a, b) = (socket(), socket());
    let sp = spawn(target, n, a.local_addr().expect("a"), b.local_addr().expect("b"));
    let res = drive(target, &sp, &a, &b, phases);
    let mut child = sp.child;
    let _ = child.kill();
    let _ = child.wait();
    res
}

#[derive(Default, Clone)]
struct PhaseStats {
    sent: u64,
    received: u64,
    cpu_start: u64,
    cpu_end: u64,
    gen_start: u64,
    gen_end: u64,
    fwd_start: u64,
    fwd_end: u64,
    max_lag: Duration,
}

fn drive(target: &str, sp: &Spawned, a: &UdpSocket, b: &UdpSocket, phases: &[(u64, Duration)]) -> Vec<RunResult> {
    let start = Instant::now();
    let mut bounds = Vec::with_capacity(phases.len());
    let mut t = start;
    for (_, d) in phases {
        bounds.push((t, t + *d));
        t += *d;
    }
    let stop_send = t;
    let stop_all = stop_send + Duration::from_millis(300);
    let dests: Vec<(bool, SocketAddr)> = sp
        .ports
        .iter()
        .flat_map(|(e, p)| {
            [(true, SocketAddr::from(([127, 0, 0, 1], *e))), (false, SocketAddr::from(([127, 0, 0, 1], *p)))]
        })
        .collect();
    let mut hists: Vec<Histogram<u64>> =
        phases.iter().map(|_| Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram")).collect();
    let mut stats = vec![PhaseStats::default(); phases.len()];
    let pid = sp.child.id();
    let mut pkt = [0u8; PKT];
    pkt[0] = 0x80;
    let mut buf = [0u8; 2048];
    let mut phase = 0usize;
    let mut phase_start_k = 0u64;
    let mut k = 0u64;
    let me = std::process::id();
    let burst_len = burst_len();
    stats[0].cpu_start = cpu_ns(pid);
    stats[0].gen_start = cpu_ns(me);
    stats[0].fwd_start = sp.forwarded.load(Ordering::Relaxed);
    loop {
        let now = Instant::now();
        while phase < phases.len() && now >= bounds[phase].1 {
            stats[phase].cpu_end = cpu_ns(pid);
            stats[phase].gen_end = cpu_ns(me);
            stats[phase].fwd_end = sp.forwarded.load(Ordering::Relaxed);
            phase += 1;
            phase_start_k = k;
            if phase < phases.len() {
                stats[phase].cpu_start = stats[phase - 1].cpu_end;
                stats[phase].gen_start = stats[phase - 1].gen_end;
                stats[phase].fwd_start = stats[phase - 1].fwd_end;
            }
        }
        if phase < phases.len() {
            let (rate, _) = phases[phase];
            let since = (now - bounds[phase].0).as_nanos() as u64;
            let due = phase_start_k + since * rate / 1_000_000_000;
            if due > k {
                let lag = Duration::from_nanos((due - k) * 1_000_000_000 / rate.max(1));
                stats[phase].max_lag = stats[phase].max_lag.max(lag);
            }
            let mut burst = 0;
            while k < due && burst < 256 {
                let (from_a, to) = dests[((k / burst_len) % dests.len() as u64) as usize];
                let t = (Instant::now() - start).as_nanos() as u64;
                pkt[12..20].copy_from_slice(&t.to_le_bytes());
                pkt[20..28].copy_from_slice(&k.to_le_bytes());
                let sock = if from_a { a } else { b };
                if sock.send_to(&pkt, to).is_ok() {
                    stats[phase].sent += 1;
                }
                k += 1;
                burst += 1;
            }
        }
        for s in [a, b] {
            receive_some(s, &mut buf, start, &bounds, &mut stats, &mut hists);
        }
        if Instant::now() >= stop_all {
            break;
        }
    }
    results(target, sp, &stats, &hists, phases)
}

/// Up to 64 datagrams from `s`: each counted, with its latency, in the
/// phase it was sent in (its send time is in the payload).
fn receive_some(
    s: &UdpSocket,
    buf: &mut [u8],
    start: Instant,
    bounds: &[(Instant, Instant)],
    stats: &mut [PhaseStats],
    hists: &mut [Histogram<u64>],
) {
    for _ in 0..64 {
        match s.recv(buf) {
            Ok(len) if len >= 28 => {
                let t = u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes"));
                let sent_at = start + Duration::from_nanos(t);
                if let Some(p) = bounds.iter().position(|(s0, s1)| sent_at >= *s0 && sent_at < *s1) {
                    stats[p].received += 1;
                    let lat = Instant::now().saturating_duration_since(sent_at).as_micros() as u64;
                    let _ = hists[p].record(lat.max(1));
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

/// Each phase's figures.
fn results(
    target: &str,
    sp: &Spawned,
    stats: &[PhaseStats],
    hists: &[Histogram<u64>],
    phases: &[(u64, Duration)],
) -> Vec<RunResult> {
    stats
        .iter()
        .zip(hists)
        .zip(phases)
        .map(|((st, h), (_, d))| {
            let cpu = st.cpu_end.saturating_sub(st.cpu_start) as f64;
            let gen = st.gen_end.saturating_sub(st.gen_start) as f64;
            RunResult {
                total_ns_per_pkt: (cpu + gen) / st.received.max(1) as f64,
                target: target.to_string(),
                sessions: sp.ports.len(),
                offered_pps: st.sent as f64 / d.as_secs_f64(),
                delivered_pps: st.received as f64 / d.as_secs_f64(),
                loss: 1.0 - st.received as f64 / st.sent.max(1) as f64,
                p50_us: h.value_at_quantile(0.5) as f64,
                p99_us: h.value_at_quantile(0.99) as f64,
                p999_us: h.value_at_quantile(0.999) as f64,
                relay_cpu: cpu / d.as_nanos() as f64,
                forwarded_pps: st.fwd_end.saturating_sub(st.fwd_start) as f64 / d.as_secs_f64(),
                ns_per_pkt: cpu / st.received.max(1) as f64,
                gen_lag_ms: st.max_lag.as_secs_f64() * 1000.0,
            }
        })
        .collect()
}

/// Interleaves the targets at each rate of a ladder (so every target sees
/// the same machine conditions), `--repeat` times; reports per target the
/// highest rate that passed in the majority of repeats, and the median CPU
/// per packet at `--cpu-rate`.
fn compare() {
    let targets: Vec<String> =
        arg("--targets", "portable,uring,floor".to_string()).split(',').map(str::to_owned).collect();
    let n: usize = arg("--sessions", 1000);
    let secs: u64 = arg("--step-secs", 3);
    let repeat: usize = arg("--repeat", 3);
    let cpu_rate: u64 = arg("--cpu-rate", 50_000);
    let ladder: Vec<u64> = arg("--ladder", "100000,125000,150000,175000,200000,225000,250000".to_string())
        .split(',')
        .map(|r| r.parse().expect("rate"))
        .collect();
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..repeat {
        for (i, t) in targets.iter().enumerate() {
            let r = run_once(t, n, cpu_rate, secs);
            println!("round {round} fixed {}", r.line());
            cpu[i].push(r.ns_per_pkt);
        }
    }
    let mut passes = vec![vec![0usize; ladder.len()]; targets.len()];
    for round in 0..repeat {
        for (j, rate) in ladder.iter().enumerate() {
            for (i, t) in targets.iter().enumerate() {
                let r = run_once(t, n, *rate, secs);
                println!("round {round} ladder {} -> {}", r.line(), if r.good() { "ok" } else { "FAIL" });
                if r.good() {
                    passes[i][j] += 1;
                }
            }
        }
    }
    println!("SUMMARY sessions={n} step_secs={secs} repeat={repeat}");
    for (i, t) in targets.iter().enumerate() {
        let mut c = cpu[i].clone();
        c.sort_by(|a, b| a.total_cmp(b));
        let median = c[c.len() / 2];
        let cap = ladder.iter().zip(&passes[i]).filter(|(_, p)| **p * 2 > repeat).map(|(r, _)| *r).max().unwrap_or(0);
        println!(
            "SUMMARY target={t} capacity_pps={cap} (passed majority of {repeat}) ns_per_pkt_at_{cpu_rate}={median:.0}"
        );
    }
}

/// The CPU a forwarding hop costs when it happens in the kernel: one core
/// (CPU 0) sends A → forwarder → B as fast as it can and receives at B; on
/// loopback the whole path — send, the tc program or the plain delivery,
/// receive — runs on that core, so the generator's CPU per delivered packet
/// with `ebpf` minus the same with `direct` is the fast path's own cost.
/// Targets are interleaved, `--repeat` rounds; medians reported.
fn kernel_cost() {
    let targets: Vec<String> = arg("--targets", "direct,ebpf".to_string()).split(',').map(str::to_owned).collect();
    let n: usize = arg("--sessions", 1000);
    let secs: u64 = arg("--secs", 3);
    let repeat: usize = arg("--repeat", 3);
    pin(0, 0);
    let me = std::process::id();
    let mut costs: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..repeat {
        for (i, t) in targets.iter().enumerate() {
            let (a, b) = (socket(), socket());
            let sp = spawn(t, n, a.local_addr().expect("a"), b.local_addr().expect("b"));
            let dests: Vec<SocketAddr> = sp.ports.iter().map(|(e, _)| SocketAddr::from(([127, 0, 0, 1], *e))).collect();
            let mut pkt = [0u8; PKT];
            pkt[0] = 0x80;
            let mut buf = [0u8; 2048];
            // Warm-up: one packet per session (the fast path installs its
            // routes on the first one), all received.
            let mut got = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            for d in &dests {
                let _ = a.send_to(&pkt, d);
            }
            while got < dests.len() && Instant::now() < deadline {
                match b.recv(&mut buf) {
                    Ok(_) => got += 1,
                    Err(_) => std::thread::yield_now(),
                }
            }
            std::thread::sleep(Duration::from_millis(300));
            while b.recv(&mut buf).is_ok() {}
            let (cpu0, t0) = (cpu_ns(me), Instant::now());
            let (mut sent, mut received, mut k) = (0u64, 0u64, 0usize);
            while t0.elapsed() < Duration::from_secs(secs) {
                for _ in 0..32 {
                    if a.send_to(&pkt, dests[k % dests.len()]).is_ok() {
                        sent += 1;
                    }
                    k += 1;
                }
                while b.recv(&mut buf).is_ok() {
                    received += 1;
                }
            }
            let cpu = cpu_ns(me) - cpu0;
            let elapsed = t0.elapsed().as_secs_f64();
            let ns = cpu as f64 / received.max(1) as f64;
            println!(
                "round {round} target={t} sent_pps={:.0} delivered_pps={:.0} loss={:.4} generator_ns_per_delivered={ns:.0}",
                sent as f64 / elapsed,
                received as f64 / elapsed,
                1.0 - received as f64 / sent.max(1) as f64
            );
            costs[i].push(ns);
            let mut child = sp.child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    for (i, t) in targets.iter().enumerate() {
        let mut c = costs[i].clone();
        c.sort_by(|a, b| a.total_cmp(b));
        println!("SUMMARY target={t} sessions={n} generator_ns_per_delivered_median={:.0}", c[c.len() / 2]);
    }
}

/// Offers `--factor` × `--capacity` for `--secs`, then drops to a third of
/// the capacity: delivered during overload and loss/latency right after.
fn overload() {
    let target: String = arg("--target", "uring".to_string());
    let n: usize = arg("--sessions", 1000);
    let capacity: u64 = arg("--capacity", 150_000);
    let factor: f64 = arg("--factor", 1.5);
    let secs: u64 = arg("--secs", 10);
    let over = (capacity as f64 * factor) as u64;
    let phases = [
        (capacity / 2, Duration::from_secs(1)),
        (over, Duration::from_secs(secs)),
        (capacity / 3, Duration::from_secs(1)),
        (capacity / 3, Duration::from_secs(3)),
    ];
    let r = run_phases(&target, n, &phases);
    println!("overload  {}", r[1].line());
    println!("recovery first second {}", r[2].line());
    println!("recovery after        {}", r[3].line());
    println!(
        "OVERLOAD target={target} offered={over} forwarded={:.0} = {:.1}% of capacity {capacity} (generator received {:.0}); recovery loss={:.5} p50_us={:.0}",
        r[1].forwarded_pps,
        100.0 * r[1].forwarded_pps / capacity as f64,
        r[1].delivered_pps,
        r[3].loss,
        r[3].p50_us
    );
}

/// Steps the rate up until a run fails (loss ≥ 0.1 % or p50 > 2 ms), then
/// bisects between the last good and the first bad rate.
fn capacity() {
    let target: String = arg("--target", "uring".to_string());
    let n: usize = arg("--sessions", 1000);
    let secs: u64 = arg("--step-secs", 4);
    let mut good = 0u64;
    let mut bad = 0u64;
    let mut rate: u64 = arg("--start", 40_000);
    let mut best: Option<RunResult> = None;
    for _ in 0..12 {
        let r = run_once(&target, n, rate, secs);
        println!("{} -> {}", r.line(), if r.good() { "ok" } else { "FAIL" });
        if r.good() {
            good = rate;
            best = Some(r);
            rate = rate * 5 / 4;
        } else {
            bad = rate;
            break;
        }
    }
    for _ in 0..3 {
        if bad == 0 || good == 0 || bad - good < good / 20 {
            break;
        }
        let mid = (good + bad) / 2;
        let r = run_once(&target, n, mid, secs);
        println!("{} -> {}", r.line(), if r.good() { "ok" } else { "FAIL" });
        if r.good() {
            good = mid;
            best = Some(r);
        } else {
            bad = mid;
        }
    }
    match best {
        Some(r) => println!("CAPACITY {} {:.0} pps ({})", target, r.delivered_pps, r.line()),
        None => println!("CAPACITY {target} below the start rate"),
    }
}

// ---------------------------------------------------------------- memory

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn memory(n: usize) {
    use relay_core::*;
    // Sans-IO: heap bytes per session of the shard (the port-indexed tables
    // are allocated when the shard is created and counted separately).
    for (label, latch, verify, keys) in [
        ("window, no keys", LatchPolicy::Window, Verify::Latch, false),
        ("authenticated + verify=all, keys on both legs", LatchPolicy::Authenticated, Verify::All, true),
    ] {
        let master: Vec<u8> = (1..=30).collect();
        let auth = keys.then(|| {
            SrtpAuth::sha1_80(&srtp_keys::derive_auth_keys(
                &srtp_keys::SrtpMasterKey::from_concatenated(&master).expect("key"),
            ))
        });
        let m = n.min(32_000);
        let (shard0, _, _, _) = ucmrc_benches::established_shard(0, latch, verify, auth.clone());
        let empty = HEAP.load(Ordering::Relaxed);
        drop(shard0);
        let empty = empty - HEAP.load(Ordering::Relaxed);
        let before = HEAP.load(Ordering::Relaxed);
        let (shard, sockets, legs, _) = ucmrc_benches::established_shard(m, latch, verify, auth);
        let total = HEAP.load(Ordering::Relaxed) - before;
        let fixed = empty + 65534 * 16; // port tables of a full 64 k slice, approximately
        let sockets_set = sockets.open.len() * 40; // the bench's own BTreeSet of open ports
        let legs_vec = legs.capacity() * std::mem::size_of_val(&legs[0]);
        println!(
            "sans-io shard, {m} sessions ({label}): {:.0} bytes/session of heap (total {:.1} MiB, of which ~{:.1} MiB port tables)",
            (total.saturating_sub(fixed + sockets_set + legs_vec)) as f64 / m as f64,
            total as f64 / 1048576.0,
            fixed as f64 / 1048576.0
        );
        drop((shard, sockets, legs));
    }
    // Whole relay per backend: heap and RSS with sockets bound (kernel
    // socket memory is in neither figure). Limited by RLIMIT_NOFILE.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    #[allow(unsafe_code)]
    // SAFETY: valid pointer.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim)
    };
    let sessions = n.min((lim.rlim_cur as usize).saturating_sub(200) / 2);
    let ports = (2 * sessions + 2).min(60_000) as u16;
    for backend in [BackendKind::Portable, BackendKind::Uring] {
        let heap0 = HEAP.load(Ordering::Relaxed);
        let relay = match Relay::start(RelayConfig {
            backend,
            port_min: 2000,
            port_max: 2000 + ports,
            workers: 1,
            ..RelayConfig::default()
        }) {
            Ok(r) => r,
            Err(e) => {
                println!("{}: {e}", backend.as_str());
                continue;
            }
        };
        let h = relay.handle();
        let heap1 = HEAP.load(Ordering::Relaxed);
        let rss1 = rss_kib();
        let mut ok = 0;
        for _ in 0..sessions {
            if h.allocate(SessionSpec {
                tenant: "mem".into(),
                pbx: LegSpec { rtcp_mux: true, ..LegSpec::default() },
                endpoint: LegSpec { rtcp_mux: true, ..LegSpec::default() },
                ..SessionSpec::default()
            })
            .wait()
            .is_ok()
            {
                ok += 1;
            }
        }
        let heap2 = HEAP.load(Ordering::Relaxed);
        let rss2 = rss_kib();
        println!(
            "relay {}: fixed per shard {:.1} MiB heap; {ok} sessions: {:.0} bytes/session heap, {:.0} bytes/session RSS",
            backend.as_str(),
            (heap1 - heap0) as f64 / 1048576.0,
            heap2.saturating_sub(heap1) as f64 / ok.max(1) as f64,
            (rss2.saturating_sub(rss1) * 1024) as f64 / ok.max(1) as f64
        );
        relay.shutdown(Duration::ZERO);
    }
}
