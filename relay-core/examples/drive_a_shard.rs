//! Drive a shard yourself: the sans-IO state machine with your own sockets
//! and your own clock. The shard decides (`handle_datagram` → a verdict);
//! this loop only moves bytes. Runs by itself and exits (CI runs it).
//!
//! ```sh
//! cargo run -p relay-core --example drive_a_shard
//! ```

use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use relay_core::framing::HEADROOM;
use relay_core::shard::{
    AddressSlice, Command, PortClose, PortSockets, RelayPort, Response, Shard, ShardConfig, Verdict,
};
use relay_core::{LegSpec, PeerPolicy, SessionDefaults, SessionSpec};

/// Relay ports as plain blocking-with-timeout std sockets.
#[derive(Default)]
struct MySockets {
    open: HashMap<u16, UdpSocket>,
}

impl PortSockets for MySockets {
    fn open(&mut self, port: RelayPort) -> std::io::Result<()> {
        let port = port.port;
        let s = UdpSocket::bind(("127.0.0.1", port))?;
        s.set_nonblocking(true)?;
        self.open.insert(port, s);
        Ok(())
    }
    fn close(&mut self, port: RelayPort) -> PortClose {
        let port = port.port;
        self.open.remove(&port);
        PortClose::Closed
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let mut sockets = MySockets::default();
    let mut shard = Shard::new(
        ShardConfig {
            index: 0,
            addresses: vec![AddressSlice::new([127, 0, 0, 1].into(), 16200, 100)],
            defaults: SessionDefaults::default(),
            peer_policy: PeerPolicy::loopback_lab(),
            seed: 7,
            bind_quarantine: Duration::from_secs(30),
            offload: false,
            journal: false,
            id_space: 1,
        },
        t0,
    );
    let pbx = UdpSocket::bind("127.0.0.1:0")?;
    let phone = UdpSocket::bind("127.0.0.1:0")?;
    pbx.set_read_timeout(Some(Duration::from_secs(2)))?;
    let spec = SessionSpec {
        tenant: "example".into(),
        pbx: LegSpec { rtcp_mux: true, hint: Some(pbx.local_addr()?), ..LegSpec::default() },
        endpoint: LegSpec { rtcp_mux: true, ..LegSpec::default() },
        ..SessionSpec::default()
    };
    let alloc = match shard.handle_command(t0, Command::Allocate { spec: Box::new(spec), permit: None }, &mut sockets) {
        Response::Allocated(r) => r?,
        other => return Err(format!("unexpected {other:?}").into()),
    };
    println!("phone → 127.0.0.1:{}, PBX ← from 127.0.0.1:{}", alloc.endpoint.rtp, alloc.pbx.rtp);

    // The phone sends; our loop reads the relay port (behind HEADROOM free
    // bytes, where a verdict's framing may put a header), asks the shard,
    // and sends where the verdict says — from the port it names, framed as
    // it says (media: unchanged).
    let mut delivered = 0;
    for seq in 0u16..5 {
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        phone.send_to(&packet, ("127.0.0.1", alloc.endpoint.rtp))?;
        let mut buf = [0u8; HEADROOM + 1500];
        let (n, src) = loop {
            match sockets.open[&alloc.endpoint.rtp].recv_from(&mut buf[HEADROOM..]) {
                Ok(r) => break r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => return Err(e.into()),
            }
        };
        match shard.handle_datagram(Instant::now(), alloc.endpoint.rtp, src, &buf[HEADROOM..HEADROOM + n]) {
            Verdict::Forward { via, to, framing } => {
                let bytes = framing.apply(&mut buf, HEADROOM, n).ok_or("a framing this buffer cannot hold")?;
                sockets.open[&via.port].send_to(&buf[bytes], to)?;
            }
            Verdict::Drop(reason) => println!("dropped: {reason}"),
        }
        let mut got = [0u8; 1500];
        let (m, from) = pbx.recv_from(&mut got)?;
        assert_eq!((&got[..m], from.port()), (&packet[..], alloc.pbx.rtp));
        delivered += 1;
    }
    // Time is yours too: an hour later the idle timeout has ended the session.
    let later = t0 + Duration::from_secs(3600);
    if shard.poll_timeout().is_some_and(|t| t <= later) {
        shard.handle_timeout(later, &mut sockets);
    }
    let c = shard.counters();
    println!("{delivered} delivered; sessions active {}, expired idle {}", c.sessions_active, c.sessions_expired_idle);
    assert_eq!((c.sessions_active, c.sessions_expired_idle), (0, 1));
    assert!(sockets.open.is_empty(), "the shard closed the session's ports");
    Ok(())
}
