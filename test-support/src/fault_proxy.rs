//! A TCP proxy in front of a Redis socket that adds a delay each way or
//! cuts the path (a partition), for the cluster's fault tests (no `tc
//! netem` needed). Every accepted connection gets its own upstream
//! connection; bytes keep their order and are held `delay` in each
//! direction. While cut, nothing is forwarded and new connections wait;
//! when the cut heals, the connections that were open are closed (their
//! peers time out and reconnect, as after a long partition).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the path does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Path {
    delay: Duration,
    cut: bool,
    /// Bumped at each heal: connections of an older generation close.
    generation: u64,
}

/// A running proxy (stops with the runtime that runs it).
pub struct FaultProxy {
    addr: SocketAddr,
    path: watch::Sender<Path>,
}

impl FaultProxy {
    /// Proxies a kernel-chosen loopback port to the Unix socket `upstream`.
    pub async fn start(upstream: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (path, rx) = watch::channel(Path { delay: Duration::ZERO, cut: false, generation: 0 });
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = rx.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move { serve(client, upstream, rx).await });
            }
        });
        Self { addr, path }
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Adds `d` in each direction from now on.
    pub fn set_delay(&self, d: Duration) {
        self.path.send_modify(|p| p.delay = d);
    }

    /// Cuts the path (nothing crosses) or heals it.
    pub fn cut(&self, cut: bool) {
        self.path.send_modify(|p| {
            if p.cut && !cut {
                p.generation += 1;
            }
            p.cut = cut;
        });
    }
}

async fn serve(client: TcpStream, upstream: PathBuf, mut rx: watch::Receiver<Path>) {
    // A connection made during a cut waits for the heal.
    if rx.wait_for(|p| !p.cut).await.is_err() {
        return;
    }
    let generation = rx.borrow().generation;
    let Ok(server) = UnixStream::connect(&upstream).await else { return };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, rx.clone(), generation));
    let down = tokio::spawn(pump(sr, cw, rx, generation));
    let _ = tokio::join!(up, down);
}

/// Copies `from` to `to` with the path's delay; stops when either side
/// closes or the connection outlived a cut.
async fn pump(
    mut from: impl AsyncReadExt + Unpin + Send + 'static,
    mut to: impl AsyncWriteExt + Unpin + Send + 'static,
    rx: watch::Receiver<Path>,
    generation: u64,
) {
    let (tx, mut queue) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let mut writer_rx = rx.clone();
    let writer = tokio::spawn(async move {
        while let Some((due, bytes)) = queue.recv().await {
            tokio::time::sleep_until(due).await;
            // Held while cut; dropped with the connection at the heal.
            if writer_rx.wait_for(|p| !p.cut).await.is_err() || writer_rx.borrow().generation != generation {
                return;
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut rx = rx;
    loop {
        tokio::select! {
            n = from.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + rx.borrow().delay;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            },
            changed = rx.changed() => {
                if changed.is_err() || rx.borrow().generation != generation {
                    break;
                }
            }
        }
    }
    drop(tx);
    writer.abort();
}
