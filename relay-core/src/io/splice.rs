//! Moving a tunnel's bytes between two TCP sockets without a userspace
//! copy: `splice(2)` from the source socket into a pipe, and from the pipe
//! into the destination socket (the kernel moves page references). A plain
//! read/write copy is the fallback (pipes unavailable, or chosen).
//!
//! Each direction runs until its source reaches EOF, then shuts down the
//! destination's write side (half-close) while the other direction goes on.
//! The pump ends when both directions are done, on the first error, or
//! after `idle` without a byte in either direction.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PumpMode {
    /// `splice(2)` through a pipe per direction (falls back to `Copy` if a
    /// pipe cannot be created).
    #[default]
    Splice,
    /// Read into a buffer and write it out.
    Copy,
}

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// Both sides closed their sending direction.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A socket error (reset, broken pipe).
    Error,
}

/// Live byte counters of one pump (shared with metrics).
#[derive(Debug, Default)]
pub struct PumpCounters {
    /// Bytes from `a` to `b`.
    pub a_to_b: AtomicU64,
    /// Bytes from `b` to `a`.
    pub b_to_a: AtomicU64,
}

/// Pipe capacity asked for (the kernel may give less).
const PIPE_SIZE: i32 = 1 << 20;

/// A non-blocking pipe.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid, writable array of two ints as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by us alone.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ on a pipe we own; failure (e.g. the per-user
        // pipe quota) only leaves the default size.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        let capacity = if size > 0 { size as usize } else { 64 * 1024 };
        Ok(Pipe { read, write, capacity })
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (the
    // caller holds the sockets and the pipe); null offsets are required for
    // sockets and pipes; the kernel checks everything else.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Milliseconds since `epoch`, for the shared last-activity stamp.
fn stamp(epoch: Instant, last: &AtomicU64) {
    last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
}

async fn splice_one_way(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: Pipe,
    moved: &[&AtomicU64],
    epoch: Instant,
    last: &AtomicU64,
) -> io::Result<()> {
    let mut in_pipe = 0usize;
    loop {
        if in_pipe == 0 {
            // EAGAIN here means the socket is empty (the pipe is): wait for it.
            let n = src
                .async_io(Interest::READABLE, || splice(src.as_raw_fd(), pipe.write.as_raw_fd(), pipe.capacity))
                .await?;
            if n == 0 {
                return shutdown_write(dst);
            }
            in_pipe = n;
            stamp(epoch, last);
        }
        // EAGAIN here means the destination's send buffer is full.
        let n = dst.async_io(Interest::WRITABLE, || splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), in_pipe)).await?;
        in_pipe -= n;
        add(moved, n);
        stamp(epoch, last);
    }
}

async fn copy_one_way(
    src: &TcpStream,
    dst: &TcpStream,
    moved: &[&AtomicU64],
    epoch: Instant,
    last: &AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = src.async_io(Interest::READABLE, || read_some(src, &mut buf)).await?;
        if n == 0 {
            return shutdown_write(dst);
        }
        stamp(epoch, last);
        let mut sent = 0;
        while sent < n {
            sent += dst.async_io(Interest::WRITABLE, || dst.try_write(&buf[sent..n])).await?;
            stamp(epoch, last);
        }
        add(moved, n);
    }
}

/// Counts `n` bytes moved on every counter of one direction.
fn add(moved: &[&AtomicU64], n: usize) {
    for m in moved {
        m.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn read_some(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    s.try_read(buf)
}

fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    let sock = socket2::SockRef::from(s);
    match sock.shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r,
    }
}

/// Relays bytes between `a` and `b` until both directions are closed, an
/// error occurs, or nothing moves for `idle`. Returns how it ended; every
/// one of `counters` (say the listener's totals and this connection's own)
/// shows the bytes moved so far at any time.
pub async fn pump(a: TcpStream, b: TcpStream, mode: PumpMode, idle: Duration, counters: &[&PumpCounters]) -> PumpEnd {
    let a_to_b: Vec<&AtomicU64> = counters.iter().map(|c| &c.a_to_b).collect();
    let b_to_a: Vec<&AtomicU64> = counters.iter().map(|c| &c.b_to_a).collect();
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let pipes = match mode {
        PumpMode::Splice => Pipe::new().and_then(|p| Pipe::new().map(|q| (p, q))).ok(),
        PumpMode::Copy => None,
    };
    let directions = async {
        let (r1, r2) = match pipes {
            Some((p, q)) => {
                tokio::join!(
                    splice_one_way(&a, &b, p, &a_to_b, epoch, &last),
                    splice_one_way(&b, &a, q, &b_to_a, epoch, &last)
                )
            }
            None => {
                tokio::join!(copy_one_way(&a, &b, &a_to_b, epoch, &last), copy_one_way(&b, &a, &b_to_a, epoch, &last))
            }
        };
        if r1.is_ok() && r2.is_ok() {
            PumpEnd::Closed
        } else {
            PumpEnd::Error
        }
    };
    let watchdog = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = since + idle;
            let now = epoch.elapsed();
            if now >= deadline {
                return PumpEnd::Idle;
            }
            tokio::time::sleep(deadline - now).await;
        }
    };
    tokio::select! {
        end = directions => end,
        end = watchdog => end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        (c, s)
    }

    async fn run(mode: PumpMode) {
        // client ⇄ [relay_a | pump | relay_b] ⇄ server
        let (mut client, relay_a) = pair().await;
        let (relay_b, mut server) = pair().await;
        let counters = std::sync::Arc::new(PumpCounters::default());
        let c2 = counters.clone();
        let pump = tokio::spawn(async move { pump(relay_a, relay_b, mode, Duration::from_secs(30), &[&c2]).await });
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let down: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 + 5) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let client_task = tokio::spawn(async move {
            let (mut r, mut w) = client.split();
            let send = async {
                w.write_all(&up2).await.expect("client write");
                w.shutdown().await.expect("half-close");
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let (_, n) = tokio::join!(send, recv);
            n.expect("client read");
            got
        });
        let mut got_up = Vec::new();
        {
            let (mut r, mut w) = server.split();
            // The server reads the whole upload (the client half-closed), then answers.
            r.read_to_end(&mut got_up).await.expect("server read");
            w.write_all(&down2).await.expect("server write");
            w.shutdown().await.expect("server close");
        }
        let got_down = client_task.await.expect("client");
        assert!(got_up == up, "upload intact ({} of {} bytes)", got_up.len(), up.len());
        assert!(got_down == down, "download intact ({} of {} bytes)", got_down.len(), down.len());
        assert_eq!(pump.await.expect("pump"), PumpEnd::Closed);
        assert_eq!(counters.a_to_b.load(Ordering::Relaxed), up.len() as u64);
        assert_eq!(counters.b_to_a.load(Ordering::Relaxed), down.len() as u64);
    }

    #[tokio::test]
    async fn splice_moves_megabytes_both_ways_with_half_close() {
        assert!(Pipe::new().is_ok(), "pipes work here, so the splice path is the one tested");
        run(PumpMode::Splice).await;
    }

    #[tokio::test]
    async fn copy_fallback_moves_megabytes_both_ways_with_half_close() {
        run(PumpMode::Copy).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_is_closed_after_the_timeout() {
        let (_client, relay_a) = pair().await;
        let (relay_b, _server) = pair().await;
        let counters = PumpCounters::default();
        let end = pump(relay_a, relay_b, PumpMode::Splice, Duration::from_secs(300), &[&counters]).await;
        assert_eq!(end, PumpEnd::Idle);
    }
}
