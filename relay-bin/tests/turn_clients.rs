//! TURN driven by clients this project did not write: coturn's
//! `turnutils_uclient` (Debian's `coturn` package; its server unused)
//! allocating with REST credentials through the real `ucmrc` binary, with
//! data echoed by coturn's `turnutils_peer`, over channels, Send
//! indications and client to client; and the refusals performed with the
//! same client (a wrong secret, the relay's own port, an internal address
//! not allow-listed, a user over its quota).

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use test_support::poll::wait_for;
use test_support::ucmrc::*;

const SECRET: &str = "a-shared-secret-of-the-pbx-0001";

/// A relay whose `[turn]` section allow-lists only the echo peer's address
/// (loopback peers are otherwise refused), with REST credentials.
fn relay_with_turn(extra_turn: &str) -> Relay {
    let dir = temp_dir("turn-secret");
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write secret");
    let text = config(&format!(
        "allow_loopback_peers = false\n[turn]\nlisten = [\"127.0.0.1:0\"]\nport_min = 30000\nport_max = 30999\n{extra_turn}\n\
         [[turn.realms]]\nname = \"turn.test\"\ntenant = \"acme\"\nsecret_files = [{secret:?}]\nallow_peers = [\"127.0.0.1/32\"]\n"
    ));
    let r = start(Some(&text));
    assert_eq!(r.turn.len(), 1, "the banner names the TURN listener");
    r
}

/// coturn's echo peer on a loopback address; killed on drop.
struct EchoPeer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EchoPeer {
    fn start(ip: &str) -> Self {
        // A port the kernel picks (freed again for the peer to take).
        let port = UdpSocket::bind((ip, 0)).expect("bind").local_addr().expect("addr").port();
        let child = Command::new("turnutils_peer")
            .args(["-L", ip, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer (Debian's coturn package) runs");
        let addr: SocketAddr = format!("{ip}:{port}").parse().expect("addr");
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
        probe.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        wait_for("turnutils_peer to echo", || {
            let _ = probe.send_to(b"ping", addr);
            let mut buf = [0u8; 16];
            matches!(probe.recv_from(&mut buf), Ok((4, _)))
        });
        Self { child, addr }
    }
}

/// What one `turnutils_uclient` run printed.
struct Run {
    output: String,
}

impl Run {
    /// Messages sent and echoed back, from the closing totals (none when
    /// the client gave up before sending).
    fn sent_and_received(&self) -> Option<(u64, u64)> {
        let line = self.output.lines().rev().find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))?;
        let figure = |key: &str| -> Option<u64> {
            line.split(key).nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.trim().parse().ok())
        };
        Some((figure("tot_send_msgs=")?, figure("tot_recv_msgs=")?))
    }

    /// Asserts every message of at least `clients` clients came back.
    fn assert_all_echoed(&self, clients: u64, messages: u64) {
        let (sent, received) = self.sent_and_received().unwrap_or_else(|| panic!("no totals in:\n{}", self.output));
        assert!(sent >= clients * messages && received == sent, "{sent} sent, {received} back:\n{}", self.output);
        assert!(self.output.contains("Total lost packets 0"), "{}", self.output);
    }
}

/// Runs `turnutils_uclient` against the relay's TURN listener (bounded:
/// it sends `messages` per client and stops; a timeout kills it).
fn uclient(r: &Relay, flags: &[&str], secret: &str, user: &str, peer: Option<SocketAddr>, messages: u32) -> Run {
    let turn = r.turn[0];
    let mut cmd = Command::new("timeout");
    cmd.args(["60", "turnutils_uclient"]).args(flags).args(["-W", secret, "-u", user]);
    if let Some(peer) = peer {
        cmd.args(["-e", &peer.ip().to_string(), "-r", &peer.port().to_string()]);
    }
    cmd.args([
        "-n",
        &messages.to_string(),
        "-l",
        "180",
        "-z",
        "5",
        "-p",
        &turn.port().to_string(),
        &turn.ip().to_string(),
    ]);
    let out = cmd.output().expect("turnutils_uclient (Debian's coturn package) runs");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Run { output }
}

#[test]
fn coturn_clients_relay_through_ucmrc_over_channels_indications_and_client_to_client() {
    let r = relay_with_turn("");
    let peer = EchoPeer::start("127.0.0.1");
    // Channels (coturn's default), two clients each with an RTP and an
    // RTCP allocation (EVEN-PORT with a reservation, then the token).
    uclient(&r, &["-m", "2"], SECRET, "wave-1", Some(peer.addr), 40).assert_all_echoed(2, 40);
    // Send and Data indications instead of channels.
    uclient(&r, &["-s", "-m", "1"], SECRET, "wave-2", Some(peer.addr), 40).assert_all_echoed(1, 40);
    // Client to client: each client's peer is another's relayed address on
    // this server.
    uclient(&r, &["-y", "-m", "2"], SECRET, "wave-3", None, 40).assert_all_echoed(2, 40);

    let m = scrape(&r);
    assert!(m["ucmrc_turn_relayed_packets_total{direction=\"to_peer\"}"] >= 200.0, "{m:?}");
    assert!(m["ucmrc_turn_relayed_packets_total{direction=\"to_client\"}"] >= 200.0);
    assert!(m["ucmrc_turn_requests_total{method=\"allocate\",result=\"success\"}"] >= 9.0);
    assert!(m["ucmrc_turn_requests_total{method=\"channel_bind\",result=\"success\"}"] >= 4.0);
    assert!(m["ucmrc_turn_requests_total{method=\"create_permission\",result=\"success\"}"] >= 1.0);
    assert!(
        m["ucmrc_turn_requests_total{method=\"allocate\",result=\"401\"}"] >= 9.0,
        "every client was challenged first"
    );
}

#[test]
fn coturn_clients_are_refused_wrong_secrets_own_and_internal_peers_and_excess() {
    let r = relay_with_turn("allocations_per_user = 2");
    let peer = EchoPeer::start("127.0.0.1");
    // A wrong shared secret: no allocation.
    let run = uclient(&r, &["-c"], "not-the-secret-of-this-relay", "mallory", Some(peer.addr), 5);
    assert!(run.output.contains("Cannot complete Allocation"), "{}", run.output);
    // The relay's own ng port as a peer, and a loopback address that is
    // not allow-listed: 403 on the channel binding.
    let ng = r.ng.expect("ng listener").0;
    let run = uclient(&r, &["-c"], SECRET, "probe-1", Some(ng), 5);
    assert!(run.output.contains("error 403"), "{}", run.output);
    let internal = EchoPeer::start("127.0.0.2");
    let run = uclient(&r, &["-c"], SECRET, "probe-2", Some(internal.addr), 5);
    assert!(run.output.contains("error 403"), "{}", run.output);
    assert!(run.sent_and_received().is_none_or(|(_, back)| back == 0), "nothing reached the internal peer");
    // Three clients of one user with a quota of two allocations.
    let run = uclient(&r, &["-c", "-m", "3"], SECRET, "greedy", Some(peer.addr), 5);
    assert!(run.output.contains("486"), "{}", run.output);

    let m = scrape(&r);
    assert!(m["ucmrc_turn_requests_total{method=\"channel_bind\",result=\"403\"}"] >= 2.0, "{m:?}");
    assert!(m["ucmrc_turn_requests_total{method=\"allocate\",result=\"486\"}"] >= 1.0);
    assert_eq!(m["ucmrc_turn_relayed_packets_total{direction=\"to_peer\"}"], 0.0, "nothing relayed to refused peers");
}
