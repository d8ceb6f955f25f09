//! Embed the relay in a tokio service: start it, allocate a session, let two
//! "endpoints" exchange packets through it, read the session's counters,
//! then drain and stop. Runs by itself and exits (CI runs it).
//!
//! ```sh
//! cargo run -p relay-core --example embed_in_tokio
//! ```

use std::time::Duration;

use relay_core::{LegSpec, Relay, RelayConfig, SessionSpec};
use tokio::net::UdpSocket;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A loopback relay: two shards, a small port range. The shards run on
    // their own threads; the handle works from any task (`.await`) or thread
    // (`.wait()`).
    let relay = Relay::start(RelayConfig { port_min: 16000, port_max: 16099, workers: 2, ..RelayConfig::default() })?;
    let handle = relay.handle();
    println!("datapath: {:?}", relay.datapath().running);

    let pbx = UdpSocket::bind("127.0.0.1:0").await?;
    let phone = UdpSocket::bind("127.0.0.1:0").await?;
    // The PBX's address is known from signalling; the phone's is learned.
    let session = handle
        .allocate(SessionSpec {
            tenant: "example".into(),
            pbx: LegSpec { rtcp_mux: true, hint: Some(pbx.local_addr()?), ..LegSpec::default() },
            endpoint: LegSpec { rtcp_mux: true, ..LegSpec::default() },
            ..SessionSpec::default()
        })
        .await?;
    println!("session {}: the PBX sends to {}, the phone to {}", session.id, session.pbx.rtp, session.endpoint.rtp);

    // Ten RTP packets each way (a 12-byte header and a payload).
    let mut buf = [0u8; 1500];
    for seq in 0u16..10 {
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(b"payload");
        phone.send_to(&packet, session.endpoint.rtp).await?;
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), pbx.recv_from(&mut buf)).await??;
        assert_eq!(&buf[..n], &packet[..], "forwarded unchanged");
        pbx.send_to(&packet, session.pbx.rtp).await?;
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), phone.recv_from(&mut buf)).await??;
        assert_eq!(&buf[..n], &packet[..]);
    }

    // Counters of one session, and of the whole relay.
    let info = handle.session(session.id).await?;
    println!(
        "phone latched at {:?}; forwarded {} packets from the phone, {} from the PBX",
        info.endpoint.remote_rtp, info.endpoint.stats.packets_forwarded, info.pbx.stats.packets_forwarded
    );
    assert_eq!(info.endpoint.stats.packets_forwarded, 10);
    let totals = handle.counters().await?.total;
    println!(
        "relay: {} received, {} forwarded, {} dropped",
        totals.packets_received,
        totals.packets_forwarded,
        totals.drops.total()
    );

    // Drain: no new sessions; release the call, then stop the shards.
    handle.set_draining(true);
    assert!(handle.allocate(SessionSpec { tenant: "example".into(), ..SessionSpec::default() }).await.is_err());
    handle.release(session.id).await?;
    tokio::task::spawn_blocking(move || relay.shutdown(Duration::from_secs(1))).await?;
    println!("drained and stopped");
    Ok(())
}
