//! The io_uring backend: one ring per shard thread, multishot `RECVMSG` on a
//! provided-buffer ring, and each datagram sent from the very buffer it
//! arrived in.
//!
//! Recipe (see `docs/relay-core.md` and `docs/PERFORMANCE.md`):
//! - ring created on the shard thread with `SINGLE_ISSUER | DEFER_TASKRUN`,
//!   CQ four times the buffer count so bursts never overflow;
//! - relay sockets are fixed files in a sparse table indexed by the
//!   shard's dense port index (every address's ports, in order), added and
//!   removed as sessions come and go;
//! - one multishot `RecvMsgMulti` per socket, buffers from one provided
//!   buffer ring (≥ 4096 × 2 KiB, sized from the port count);
//! - a forward is an `IORING_OP_SEND` with a destination address pointing
//!   into the receive buffer; the buffer returns to the ring on the send's
//!   completion;
//! - a multishot that ends (no `F_MORE`, e.g. `ENOBUFS`) is re-armed only
//!   after recycled buffers are published, and only while enough buffers are
//!   free, so buffer exhaustion never turns into a re-arm storm;
//! - the command eventfd is watched by a multishot poll; every wait has a
//!   timeout so timers run.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::sys::{decode_addr, encode_addr};
use super::{ShardRun, SocketOptions};
use crate::framing::Framing;
use crate::session::stats::DropReason;
use crate::shard::{PortClose, PortIndex, PortSockets, RelayPort, Shard, Verdict};

/// Size of each provided buffer.
pub const BUFFER_SIZE: usize = 2048;
/// Minimum provided buffers per shard.
pub const MIN_BUFFERS: usize = 4096;
/// Maximum provided buffers per shard (the kernel caps a ring at 32 768).
pub const MAX_BUFFERS: usize = 32768;
/// The kernel's largest completion queue.
const MAX_CQ_ENTRIES: usize = 65536;
/// Free buffers required before ended multishot receives are re-armed.
const REARM_MIN_FREE: usize = 64;
/// Longest wait, so a lost wake-up can never stall a shard.
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// Buffer group id of the provided-buffer ring.
const BGID: u16 = 0;
/// Room for an IPv6 socket address in each received buffer.
const NAME_LEN: u32 = std::mem::size_of::<libc::sockaddr_in6>() as u32;

const KIND_SHIFT: u32 = 62;
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_WAKE: u64 = 3;
/// Cancellations complete with user data 0 and are ignored.
const CANCEL_UD: u64 = 0;

/// Bits of a receive's user data that hold the socket slot.
const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

fn recv_ud(generation: u32, slot: u32) -> u64 {
    (KIND_RECV << KIND_SHIFT) | (u64::from(generation) << SLOT_BITS) | (u64::from(slot) & SLOT_MASK)
}

/// The provided-buffer ring: page-aligned ring of `BufRingEntry` plus the
/// buffers themselves.
struct BufRing {
    ring: *mut types::BufRingEntry,
    layout: Layout,
    bufs: Box<[u8]>,
    count: u16,
    tail: u16,
    free: usize,
    /// Set when the kernel might still use the memory: never free it.
    leak: bool,
}

impl BufRing {
    fn new(count: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(count * std::mem::size_of::<types::BufRingEntry>(), 4096)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring layout"))?;
        // SAFETY: the layout has a non-zero size (count >= 4096 entries).
        let ring = unsafe { alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if ring.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "buffer ring"));
        }
        let mut me = Self {
            ring,
            layout,
            bufs: vec![0u8; count * BUFFER_SIZE].into_boxed_slice(),
            count: count as u16,
            tail: 0,
            free: 0,
            leak: false,
        };
        for bid in 0..count {
            me.recycle(bid as u16);
        }
        me.publish();
        Ok(me)
    }

    /// Gives buffer `bid` back to the kernel (visible after `publish`).
    fn recycle(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.count.wrapping_sub(1)));
        let addr = self.bufs[usize::from(bid) * BUFFER_SIZE..].as_ptr() as u64;
        // SAFETY: idx < count, so the entry lies inside the ring allocation;
        // the kernel reads entries only up to the published tail, and this
        // one is past it until `publish`.
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(addr);
        entry.set_len(BUFFER_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.free += 1;
    }

    fn publish(&self) {
        // SAFETY: `tail` points at the ring's tail field inside our
        // allocation; the kernel reads it with acquire semantics.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn buf(&self, bid: u16) -> &[u8] {
        let start = usize::from(bid) * BUFFER_SIZE;
        &self.bufs[start..start + BUFFER_SIZE]
    }

    /// Buffer `bid`, to frame a received datagram in place (it is ours
    /// between its completion and its recycling).
    fn buf_mut(&mut self, bid: u16) -> &mut [u8] {
        let start = usize::from(bid) * BUFFER_SIZE;
        &mut self.bufs[start..start + BUFFER_SIZE]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            std::mem::forget(std::mem::take(&mut self.bufs));
            return;
        }
        // SAFETY: allocated in `new` with this layout; the ring is
        // unregistered (or the io_uring dropped) before this runs.
        unsafe { dealloc(self.ring.cast(), self.layout) };
    }
}

/// A ring and everything its in-flight operations point into.
///
/// The memory the kernel reads or writes (buffers, their ring, the
/// receive template, send destinations) is freed only after [`shutdown`]
/// saw every receive and send complete; on any other way out — an error
/// that skipped it, a panic unwinding through the shard — it is leaked
/// rather than risk the kernel writing into freed memory.
struct Ring {
    ring: IoUring,
    bufs: ManuallyDrop<BufRing>,
    /// Template for multishot receives; must outlive every armed receive.
    msghdr: ManuallyDrop<Box<libc::msghdr>>,
    /// Destination address of the send in flight for each buffer.
    dests: ManuallyDrop<Box<[libc::sockaddr_storage]>>,
    /// Sends submitted and not completed yet.
    sends_in_flight: usize,
    /// Set by `shutdown` once nothing is in flight and the buffer ring is
    /// unregistered: only then is the memory above freed.
    quiesced: bool,
    /// Whether each slot holds an open socket. The socket lives only in
    /// the ring's fixed-file table: its descriptor is closed once
    /// registered, so relay ports do not count against RLIMIT_NOFILE (each
    /// shard's table may hold up to RLIMIT_NOFILE sockets).
    open: Vec<bool>,
    generations: Vec<u32>,
    /// Whether a multishot receive is armed on each slot.
    armed_slot: Vec<bool>,
    /// Slots whose cancelled receive has not ended yet.
    closing: Vec<bool>,
    armed: usize,
    index: PortIndex,
    options: SocketOptions,
    wake_fd: i32,
}

impl Ring {
    fn new(run: &ShardRun) -> io::Result<Self> {
        let cfg = run.shard.config();
        // Buffers are held only from a receive to its send's completion; half
        // a buffer per port (at least 4096) absorbs every socket of the shard
        // becoming readable in one loop turn with room to spare.
        let index = cfg.port_index();
        let ports = index.len();
        if ports as u64 > SLOT_MASK {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "more than 16 777 215 ports in one shard"));
        }
        let count = (ports / 2).next_power_of_two().clamp(MIN_BUFFERS, MAX_BUFFERS);
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize((count * 4).min(MAX_CQ_ENTRIES) as u32)
            .build(4096)?;
        ring.submitter().register_files_sparse(ports.max(1) as u32).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot register {ports} fixed files ({e}); the table may not exceed RLIMIT_NOFILE: raise it or use more workers"
                ),
            )
        })?;
        let bufs = BufRing::new(count)?;
        // SAFETY: the ring memory is page-aligned, holds `count` entries and
        // lives (in `Ring`) until after the ring is dropped or the group is
        // unregistered.
        unsafe { ring.submitter().register_buf_ring_with_flags(bufs.ring as u64, bufs.count, BGID, 0)? };
        // SAFETY: all-zero msghdr is valid; only the name length matters.
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msghdr.msg_namelen = NAME_LEN;
        // SAFETY: all-zero sockaddr_storage is valid.
        let zero: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Ok(Self {
            ring,
            bufs: ManuallyDrop::new(bufs),
            msghdr: ManuallyDrop::new(msghdr),
            dests: ManuallyDrop::new(vec![zero; count].into_boxed_slice()),
            sends_in_flight: 0,
            quiesced: false,
            open: vec![false; ports],
            generations: vec![0; ports],
            armed_slot: vec![false; ports],
            closing: vec![false; ports],
            armed: 0,
            index,
            options: run.sockets,
            wake_fd: run.inbox.wake.raw(),
        })
    }

    /// Queues an SQE, submitting first if the queue is full.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every pointer in our SQEs refers to memory owned by
            // `self` (msghdr, buffers, destination addresses) that stays
            // valid and untouched until the operation's completion.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_recv(&mut self, slot: u32) -> io::Result<()> {
        let ud = recv_ud(self.generations[slot as usize], slot);
        let e = opcode::RecvMsgMulti::new(types::Fixed(slot), &**self.msghdr, BGID).build().user_data(ud);
        self.push(&e)?;
        self.armed += 1;
        self.armed_slot[slot as usize] = true;
        Ok(())
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let e = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(KIND_WAKE << KIND_SHIFT);
        self.push(&e)
    }

    fn slot(&self, port: RelayPort) -> Option<u32> {
        self.index.index(port).map(|i| i as u32)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if !self.quiesced {
            // Operations may still be in flight (an error or a panic skipped
            // `shutdown`): keep their memory forever, close only the ring.
            return;
        }
        // SAFETY: `shutdown` saw every receive and send complete and
        // unregistered the buffer ring: the kernel holds no pointer into
        // these any more, and each is dropped exactly once (here).
        unsafe {
            ManuallyDrop::drop(&mut self.bufs);
            ManuallyDrop::drop(&mut self.msghdr);
            ManuallyDrop::drop(&mut self.dests);
        }
    }
}

impl PortSockets for Ring {
    fn open(&mut self, port: RelayPort) -> io::Result<()> {
        let (Some(slot), Some(addr)) = (self.slot(port), self.index.bind_addr(port)) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "port outside shard"));
        };
        let sock = super::bind_udp(addr.ip(), port.port, &self.options)?;
        self.ring.submitter().register_files_update(slot, &[sock.as_raw_fd()])?;
        // The table holds its own reference: the descriptor can go.
        drop(sock);
        self.open[slot as usize] = true;
        self.arm_recv(slot)
    }

    fn close(&mut self, port: RelayPort) -> PortClose {
        let Some(slot) = self.slot(port) else { return PortClose::Closed };
        let i = slot as usize;
        if !std::mem::replace(&mut self.open[i], false) {
            return PortClose::Closed;
        }
        let old = recv_ud(self.generations[i], slot);
        self.generations[i] = self.generations[i].wrapping_add(1);
        let _ = self.ring.submitter().register_files_update(slot, &[-1]);
        if !self.armed_slot[i] {
            return PortClose::Closed;
        }
        // The armed receive holds a reference to the socket: cancel it; the
        // port is reusable once its final completion arrives.
        let cancel = opcode::AsyncCancel::new(old).build().user_data(CANCEL_UD);
        match self.push(&cancel) {
            Ok(()) => {
                self.closing[i] = true;
                PortClose::Closing
            }
            Err(_) => PortClose::Closed,
        }
    }
}

/// The io_uring backend.
#[derive(Debug, Clone, Copy)]
pub struct Uring;

/// Runs one shard on an io_uring until stopped.
fn run_loop(mut run: ShardRun) -> io::Result<()> {
    let mut u = match Ring::new(&run).and_then(|mut u| u.arm_wake().map(|()| u)) {
        Ok(u) => u,
        Err(e) => {
            run.report_ready(Err(format!("io_uring setup: {e}")));
            return Err(e);
        }
    };
    run.report_ready(Ok(()));
    let ShardRun { mut shard, inbox, mut offload, .. } = run;
    let result = event_loop(&mut u, &mut shard, &inbox, &mut offload);
    // On every exit path, errors included: release the sessions (cancelling
    // their receives) and wait for the cancellations before the buffers the
    // kernel may still write into are freed.
    shard.release_all(&mut u);
    inbox.publish_free_ports(&shard);
    let drained = shutdown(&mut u);
    result.and(drained)
}

fn event_loop(
    u: &mut Ring,
    shard: &mut Shard,
    inbox: &super::Inbox,
    offload: &mut super::ShardOffload,
) -> io::Result<()> {
    let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(4096);
    let mut rearm: Vec<u32> = Vec::new();
    loop {
        let now = Instant::now();
        let wait = shard.poll_timeout().map_or(MAX_SLEEP, |d| d.saturating_duration_since(now)).min(MAX_SLEEP);
        wait_for_events(&u.ring, wait)?;
        let now = Instant::now();
        cqes.clear();
        cqes.extend(u.ring.completion());
        let mut woken = false;
        for cqe in &cqes {
            let ud = cqe.user_data();
            let flags = cqe.flags();
            match ud >> KIND_SHIFT {
                KIND_RECV => handle_recv(u, shard, now, cqe.result(), ud, flags, &mut rearm)?,
                KIND_SEND => {
                    u.sends_in_flight = u.sends_in_flight.saturating_sub(1);
                    if cqe.result() < 0 {
                        shard.record_send_error();
                    }
                    u.bufs.recycle((ud & 0xffff) as u16);
                }
                KIND_WAKE => {
                    woken = true;
                    if !cqueue::more(flags) {
                        u.arm_wake()?;
                    }
                }
                _ => {} // cancellations
            }
        }
        // Recycled buffers first, then the re-arms (never the other way).
        u.bufs.publish();
        if !rearm.is_empty() && u.bufs.free >= REARM_MIN_FREE {
            for slot in rearm.drain(..) {
                // Skip ports closed since, or re-opened (and armed) since.
                if u.open[slot as usize] && !u.armed_slot[slot as usize] {
                    shard.record_rearm();
                    u.arm_recv(slot)?;
                }
            }
        }
        if woken && inbox.run_commands(shard, u, offload) {
            return Ok(());
        }
        if shard.poll_timeout().is_some_and(|t| t <= now) {
            shard.handle_timeout(now, u);
            inbox.publish_free_ports(shard);
        }
        offload.run(shard, now);
    }
}

/// Submits queued SQEs and waits for at least one completion or `wait`.
fn wait_for_events(ring: &IoUring, wait: Duration) -> io::Result<()> {
    let ts = types::Timespec::new().sec(wait.as_secs()).nsec(wait.subsec_nanos());
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn handle_recv(
    u: &mut Ring,
    shard: &mut Shard,
    now: Instant,
    res: i32,
    ud: u64,
    flags: u32,
    rearm: &mut Vec<u32>,
) -> io::Result<()> {
    let slot = (ud & SLOT_MASK) as u32;
    let generation = ((ud >> SLOT_BITS) & 0xffff_ffff) as u32;
    let bid = cqueue::buffer_select(flags);
    if bid.is_some() {
        u.bufs.free = u.bufs.free.saturating_sub(1);
    }
    let more = cqueue::more(flags);
    let i = slot as usize;
    let Some(port) = u.index.port(i) else {
        return Ok(());
    };
    if !more {
        u.armed = u.armed.saturating_sub(1);
        u.armed_slot[i] = false;
        if u.closing[i] && u.generations[i] != generation {
            u.closing[i] = false;
            shard.handle_port_closed(port);
        }
    }
    let current = u.generations[i] == generation && u.open[i];
    if !current {
        if let Some(b) = bid {
            u.bufs.recycle(b);
        }
        return Ok(());
    }
    if !more {
        rearm.push(slot);
    }
    if res < 0 {
        if res == -libc::ENOBUFS {
            shard.record_enobufs();
        } else if res != -libc::ECANCELED {
            shard.record_recv_error();
        }
        if let Some(b) = bid {
            u.bufs.recycle(b);
        }
        return Ok(());
    }
    let Some(bid) = bid else { return Ok(()) };
    match decide(u, shard, now, port, bid, res as usize) {
        Some(forward) => push_send(u, shard, bid, forward),
        None => {
            u.bufs.recycle(bid);
            Ok(())
        }
    }
}

/// A datagram the shard forwards: from which relay port, to where, where
/// its payload sits in the receive buffer, and how it is framed. The bytes
/// in front of the payload (the `recvmsg` header and the source address,
/// read already) are its headroom.
struct Forward {
    via: RelayPort,
    to: SocketAddr,
    offset: usize,
    len: usize,
    framing: Framing,
}

/// Parses the received message in buffer `bid` (`res` bytes) and asks the
/// shard; None when it is dropped (truncated, no source, the shard's
/// verdict).
fn decide(u: &Ring, shard: &mut Shard, now: Instant, port: RelayPort, bid: u16, res: usize) -> Option<Forward> {
    let data = &u.bufs.buf(bid)[..res.min(BUFFER_SIZE)];
    let out = match types::RecvMsgOut::parse(data, &u.msghdr) {
        Err(()) => {
            shard.record_backend_drop(data.len(), DropReason::Truncated);
            return None;
        }
        Ok(out) if out.is_payload_truncated() => {
            shard.record_backend_drop(out.payload_data().len(), DropReason::Truncated);
            return None;
        }
        Ok(out) => out,
    };
    let payload = out.payload_data();
    let Some(src) = name_to_addr(out.name_data()) else {
        shard.record_backend_drop(payload.len(), DropReason::SourcePolicy);
        return None;
    };
    let offset = payload.as_ptr() as usize - data.as_ptr() as usize;
    match shard.handle_datagram(now, port, src, payload) {
        Verdict::Forward { via, to, framing } => Some(Forward { via, to, offset, len: payload.len(), framing }),
        Verdict::Drop(_) => None,
    }
}

/// Queues the send of buffer `bid`'s payload (the buffer is recycled when
/// the send completes); a send that cannot be made is counted.
fn push_send(u: &mut Ring, shard: &mut Shard, bid: u16, f: Forward) -> io::Result<()> {
    let via = u.slot(f.via).filter(|s| u.open[*s as usize]);
    let v6 = u.index.bind_addr(f.via).is_some_and(|a| a.is_ipv6());
    let dest = &mut u.dests[usize::from(bid)];
    let (Some(via), Some(dest_len)) = (via, encode_addr(f.to, v6, dest)) else {
        shard.record_send_error();
        u.bufs.recycle(bid);
        return Ok(());
    };
    let Some(bytes) = f.framing.apply(u.bufs.buf_mut(bid), f.offset, f.len) else {
        shard.record_send_error();
        u.bufs.recycle(bid);
        return Ok(());
    };
    let ptr = u.bufs.buf(bid)[bytes.start..].as_ptr();
    let dest_ptr = (&u.dests[usize::from(bid)] as *const libc::sockaddr_storage).cast::<libc::sockaddr>();
    let e = opcode::Send::new(types::Fixed(via), ptr, bytes.len() as u32)
        .dest_addr(dest_ptr)
        .dest_addr_len(dest_len)
        .build()
        .user_data((KIND_SEND << KIND_SHIFT) | u64::from(bid));
    u.push(&e)?;
    u.sends_in_flight += 1;
    Ok(())
}

fn name_to_addr(name: &[u8]) -> Option<SocketAddr> {
    // SAFETY: all-zero sockaddr_storage is valid; we copy at most its size.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = name.len().min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: copies `n` bytes into the storage, which is at least `n` long.
    unsafe {
        std::ptr::copy_nonoverlapping(name.as_ptr(), (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(), n)
    };
    decode_addr(&storage, n as libc::socklen_t)
}

/// Waits (bounded) for cancelled receives and sends in flight to complete,
/// then unregisters files and buffers so every socket is closed when the
/// thread returns. Only then may the ring's memory be freed.
fn shutdown(u: &mut Ring) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while (u.armed > 0 || u.sends_in_flight > 0) && Instant::now() < deadline {
        wait_for_events(&u.ring, Duration::from_millis(20))?;
        let done: Vec<cqueue::Entry> = u.ring.completion().collect();
        for cqe in done {
            match cqe.user_data() >> KIND_SHIFT {
                KIND_RECV if !cqueue::more(cqe.flags()) => u.armed = u.armed.saturating_sub(1),
                KIND_SEND => u.sends_in_flight = u.sends_in_flight.saturating_sub(1),
                _ => {}
            }
        }
    }
    let _ = u.ring.submitter().unregister_files();
    let unregistered = u.ring.submitter().unregister_buf_ring(BGID).is_ok();
    // Anything still in flight after the deadline could touch the memory:
    // then it is never freed (leaked rather than risked).
    u.quiesced = u.armed == 0 && u.sends_in_flight == 0 && unregistered;
    Ok(())
}

/// Why io_uring cannot be used here, or `Ok` if it can. Probed once per
/// process: sets up a ring with the flags the backend uses, checks the
/// opcodes, then receives a datagram with a multishot `RECVMSG` on a
/// provided buffer ring after sending it with `SEND` + destination address.
pub fn probe() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    // On a thread of its own: a ring's teardown queues work to the thread
    // that created it, which could interrupt the caller's own system calls.
    RESULT
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("ucmrc-uring-probe".into())
                .spawn(probe_uncached)
                .map_err(|e| format!("cannot spawn the io_uring probe: {e}"))
                .and_then(|t| t.join().unwrap_or_else(|_| Err("io_uring probe panicked".into())))
        })
        .clone()
}

fn probe_uncached() -> Result<(), String> {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok();
    let hint = match disabled.as_deref().map(str::trim) {
        Some("1") | Some("2") => " (kernel.io_uring_disabled is set)",
        _ => " (blocked by seccomp, e.g. Docker's default profile, or an old kernel)",
    };
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
        .map_err(|e| format!("io_uring setup failed: {e}{hint}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsgMulti::CODE, "RECVMSG"),
        (opcode::Send::CODE, "SEND"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring lacks {name}"));
        }
    }
    functional_probe(ring).map_err(|e| format!("io_uring datagram check failed: {e}"))
}

/// The memory the probe's operations point into.
struct ProbeMemory {
    bufs: BufRing,
    msghdr: Box<libc::msghdr>,
    dest: Box<libc::sockaddr_storage>,
    payload: [u8; 11],
}

fn functional_probe(mut ring: IoUring) -> io::Result<()> {
    // SAFETY: zeroed msghdr and sockaddr_storage are valid values.
    let (msghdr, dest) = unsafe { (Box::new(std::mem::zeroed::<libc::msghdr>()), Box::new(std::mem::zeroed())) };
    // Leaked unless the probe proves nothing is in flight any more: an error
    // (or a panic) on the way must never free memory the kernel may use.
    let mut mem = ManuallyDrop::new(ProbeMemory { bufs: BufRing::new(8)?, msghdr, dest, payload: *b"ucmrc-probe" });
    let quiesced = probe_datagram(&mut ring, &mut mem)?;
    // Close the ring first: nothing can reach the memory after that.
    drop(ring);
    if quiesced {
        drop(ManuallyDrop::into_inner(mem));
    }
    Ok(())
}

/// Sends and receives one datagram; returns whether the multishot receive
/// was seen to end and the buffer ring was unregistered.
fn probe_datagram(ring: &mut IoUring, mem: &mut ProbeMemory) -> io::Result<bool> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    sock.set_nonblocking(true)?;
    let addr = sock.local_addr()?;
    // SAFETY: page-aligned ring of 8 entries; its memory is leaked unless
    // the receive is seen to end and the ring is unregistered.
    unsafe { ring.submitter().register_buf_ring_with_flags(mem.bufs.ring as u64, mem.bufs.count, BGID, 0)? };
    mem.msghdr.msg_namelen = NAME_LEN;
    let dest_len = encode_addr(addr, false, &mut mem.dest).ok_or_else(|| io::Error::other("address"))?;
    let payload = mem.payload;
    let recv = opcode::RecvMsgMulti::new(types::Fd(sock.as_raw_fd()), &*mem.msghdr, BGID).build().user_data(1);
    let send = opcode::Send::new(types::Fd(sock.as_raw_fd()), mem.payload.as_ptr(), payload.len() as u32)
        .dest_addr((&*mem.dest as *const libc::sockaddr_storage).cast())
        .dest_addr_len(dest_len)
        .build()
        .user_data(2);
    // SAFETY: msghdr, dest, the payload and the buffers live in `mem`,
    // which is freed only after the ring is closed and the receive was seen
    // to end (otherwise never) — see `functional_probe`.
    unsafe {
        ring.submission().push(&recv).map_err(|_| io::Error::other("sq full"))?;
        ring.submission().push(&send).map_err(|_| io::Error::other("sq full"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut sent, mut received) = (false, false);
    while !(sent && received) {
        if Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no completion"));
        }
        wait_for_events(ring, Duration::from_millis(100))?;
        for cqe in ring.completion() {
            match cqe.user_data() {
                2 if cqe.result() >= 0 => sent = true,
                1 if cqe.result() > 0 => {
                    let bid = cqueue::buffer_select(cqe.flags()).ok_or_else(|| io::Error::other("no buffer"))?;
                    let data = &mem.bufs.buf(bid)[..cqe.result() as usize];
                    let out = types::RecvMsgOut::parse(data, &mem.msghdr).map_err(|()| io::Error::other("parse"))?;
                    if out.payload_data() != payload || name_to_addr(out.name_data()) != Some(addr) {
                        return Err(io::Error::other("datagram mismatch"));
                    }
                    received = true;
                }
                _ => return Err(io::Error::from_raw_os_error(-cqe.result())),
            }
        }
    }
    // Cancel the multishot receive and wait for its end before the
    // buffers it may write into go away.
    let cancel = opcode::AsyncCancel::new(1).build().user_data(CANCEL_UD);
    // SAFETY: a cancel SQE carries no pointers.
    unsafe { ring.submission().push(&cancel).map_err(|_| io::Error::other("sq full"))? };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut ended = false;
    while !ended && Instant::now() < deadline {
        wait_for_events(ring, Duration::from_millis(50))?;
        ended = ring.completion().any(|c| c.user_data() == 1 && !cqueue::more(c.flags()));
    }
    let unregistered = ring.submitter().unregister_buf_ring(BGID).is_ok();
    Ok(ended && unregistered)
}

impl super::Datapath for Uring {
    const KIND: super::BackendKind = super::BackendKind::Uring;
    fn run(run: ShardRun) -> io::Result<()> {
        run_loop(run)
    }
}
