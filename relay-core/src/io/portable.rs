//! The portable backend: epoll (level-triggered) + `recvmmsg`/`sendmmsg`.
//!
//! One thread per shard. Each wake-up reads up to [`RECV_BATCH`] datagrams
//! from every ready socket (so one busy port cannot starve the others),
//! asks the shard for each verdict, then sends all forwards grouped by
//! outgoing socket with `sendmmsg`, straight from the receive buffers.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::Socket;

use super::sys::{Epoll, MsgBatch, Received};
use super::{ShardRun, SocketOptions};
use crate::framing::HEADROOM;
use crate::session::stats::DropReason;
use crate::shard::{PortClose, PortIndex, PortSockets, RelayPort, Shard, Verdict};

/// Datagrams read per socket per wake-up.
pub const RECV_BATCH: usize = 32;
/// Datagram slots per shard (buffers reused every loop).
pub const BATCH_SLOTS: usize = 512;
/// Events per `epoll_wait`.
const EVENTS: usize = 256;
/// Longest sleep, so a lost wake-up can never stall a shard.
const MAX_SLEEP: Duration = Duration::from_millis(250);
/// epoll token of the wake-up eventfd (socket tokens are dense indexes).
const WAKE_TOKEN: u64 = u64::MAX;

/// Relay-port sockets of one shard, registered with its epoll; the epoll
/// token of a socket is its [`PortIndex`] index.
struct Sockets {
    epoll: Epoll,
    index: PortIndex,
    socks: Vec<Option<Socket>>,
    options: SocketOptions,
}

impl Sockets {
    fn get(&self, port: RelayPort) -> Option<&Socket> {
        self.socks.get(self.index.index(port)?)?.as_ref()
    }
}

impl PortSockets for Sockets {
    fn open(&mut self, port: RelayPort) -> io::Result<()> {
        let (Some(i), Some(addr)) = (self.index.index(port), self.index.bind_addr(port)) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "port outside shard"));
        };
        let sock = super::bind_udp(addr.ip(), port.port, &self.options)?;
        self.epoll.add(sock.as_raw_fd(), i as u64)?;
        self.socks[i] = Some(sock);
        Ok(())
    }

    fn close(&mut self, port: RelayPort) -> PortClose {
        let Some(i) = self.index.index(port) else {
            return PortClose::Closed;
        };
        if let Some(sock) = self.socks.get_mut(i).and_then(Option::take) {
            let _ = self.epoll.delete(sock.as_raw_fd());
        }
        PortClose::Closed
    }
}

/// The portable backend.
#[derive(Debug, Clone, Copy)]
pub struct Portable;

impl super::Datapath for Portable {
    const KIND: super::BackendKind = super::BackendKind::Portable;
    fn run(run: ShardRun) -> io::Result<()> {
        run_loop(run)
    }
}

/// Runs one shard until it receives [`Envelope::Stop`] or its mailbox closes.
fn run_loop(mut run: ShardRun) -> io::Result<()> {
    let epoll = match Epoll::new().and_then(|e| e.add(run.inbox.wake.raw(), WAKE_TOKEN).map(|()| e)) {
        Ok(e) => e,
        Err(e) => {
            run.report_ready(Err(format!("epoll setup: {e}")));
            return Err(e);
        }
    };
    run.report_ready(Ok(()));
    let ShardRun { mut shard, inbox, sockets: options, mut offload, .. } = run;
    let index = shard.config().port_index();
    let mut sockets = Sockets { epoll, socks: (0..index.len()).map(|_| None).collect(), index, options };
    let mut batch = MsgBatch::new(BATCH_SLOTS);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut received: Vec<Received> = Vec::with_capacity(RECV_BATCH);
    let mut sends: Vec<(RelayPort, usize, Range<usize>, SocketAddr)> = Vec::with_capacity(BATCH_SLOTS);
    let mut group: Vec<(usize, Range<usize>, SocketAddr)> = Vec::with_capacity(BATCH_SLOTS);

    loop {
        let timeout = sleep_ms(shard.poll_timeout(), Instant::now());
        let n = sockets.epoll.wait(&mut events, timeout)?;
        let now = Instant::now();
        let mut used = 0;
        let mut commands = false;
        for ev in &events[..n] {
            if ev.u64 == WAKE_TOKEN {
                commands = true;
                continue;
            }
            let Some(port) = sockets.index.port(ev.u64 as usize) else {
                continue;
            };
            if used + RECV_BATCH > batch.capacity() {
                flush(&mut shard, &sockets, &mut batch, &mut sends, &mut group);
                used = 0;
            }
            let Some(fd) = sockets.get(port).map(|s| s.as_raw_fd()) else {
                continue;
            };
            received.clear();
            match batch.recv(fd, used, RECV_BATCH, &mut received) {
                Ok(_) => {}
                Err(_) => shard.record_recv_error(),
            }
            for r in &received {
                if r.truncated {
                    shard.record_backend_drop(r.len, DropReason::Truncated);
                    continue;
                }
                let Some(src) = r.src else {
                    shard.record_backend_drop(r.len, DropReason::SourcePolicy);
                    continue;
                };
                let verdict = shard.handle_datagram(now, port, src, batch.slot(r.slot, r.len));
                if let Verdict::Forward { via, to, framing } = verdict {
                    match framing.apply(batch.region_mut(r.slot), HEADROOM, r.len) {
                        Some(bytes) => sends.push((via, r.slot, bytes, to)),
                        None => shard.record_send_error(),
                    }
                }
            }
            used += received.len();
        }
        flush(&mut shard, &sockets, &mut batch, &mut sends, &mut group);

        if commands && inbox.run_commands(&mut shard, &mut sockets, &mut offload) {
            return Ok(());
        }
        if shard.poll_timeout().is_some_and(|t| t <= now) {
            shard.handle_timeout(now, &mut sockets);
            inbox.publish_free_ports(&shard);
        }
        offload.run(&mut shard, now);
    }
}

/// Sends queued forwards grouped by outgoing port (one `sendmmsg` per group).
fn flush(
    shard: &mut Shard,
    sockets: &Sockets,
    batch: &mut MsgBatch,
    sends: &mut Vec<(RelayPort, usize, Range<usize>, SocketAddr)>,
    group: &mut Vec<(usize, Range<usize>, SocketAddr)>,
) {
    if sends.is_empty() {
        return;
    }
    // Stable: keeps per-socket order, hence per-stream order.
    sends.sort_by_key(|s| s.0);
    let mut i = 0;
    while i < sends.len() {
        let port = sends[i].0;
        group.clear();
        while i < sends.len() && sends[i].0 == port {
            group.push((sends[i].1, sends[i].2.clone(), sends[i].3));
            i += 1;
        }
        let v6 = sockets.index.bind_addr(port).is_some_and(|a| a.is_ipv6());
        let failed = match sockets.get(port) {
            Some(s) => batch.send(s.as_raw_fd(), v6, group).1,
            None => group.len(),
        };
        for _ in 0..failed {
            shard.record_send_error();
        }
    }
    sends.clear();
}

fn sleep_ms(deadline: Option<Instant>, now: Instant) -> i32 {
    let wait = deadline.map_or(MAX_SLEEP, |d| d.saturating_duration_since(now)).min(MAX_SLEEP);
    // Round up so we never spin just before a deadline.
    wait.as_micros().div_ceil(1000) as i32
}
