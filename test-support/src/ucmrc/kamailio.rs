//! A real Kamailio (Debian's, with its `rtpengine` module) running the test
//! configuration `test-support/kamailio/kamailio.cfg`: SIP on a given address, ng
//! commands to a given relay address. Shared by the Kamailio test and the
//! redundancy test (there inside a network namespace).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::sip::{SipMessage, SipSocket};
use super::temp_dir;

/// What in Kamailio's log means an ng command failed.
pub const NG_FAILURES: [&str; 4] =
    ["NG-FAILURE", "ERROR: rtpengine", "proxy replied with error", "timeout waiting reply"];

/// A Kamailio process, logging to a file; stopped on drop.
pub struct Kamailio {
    child: Child,
    /// Its SIP address.
    pub sip: SocketAddr,
    log: PathBuf,
    dir: PathBuf,
}

impl Kamailio {
    /// Starts Kamailio listening for SIP on `sip` and sending ng to `ng`,
    /// the command run through `prefix` (`ip netns exec NS`, or nothing);
    /// returns once it answers an OPTIONS sent from `probe`.
    pub fn start(prefix: &[&str], sip: SocketAddr, ng: SocketAddr, probe: &SipSocket) -> Self {
        Self::start_set(prefix, sip, &[ng], probe)
    }

    /// [`start`](Self::start) with a set of relays (one rtpengine set:
    /// Kamailio spreads calls over them and moves a call a full relay
    /// refuses to the next).
    pub fn start_set(prefix: &[&str], sip: SocketAddr, relays: &[SocketAddr], probe: &SipSocket) -> Self {
        let dir = temp_dir("kamailio");
        let log = dir.join("kamailio.log");
        let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/kamailio/kamailio.cfg");
        let bin = ["/usr/sbin/kamailio", "/usr/local/sbin/kamailio"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("kamailio");
        let mut command = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = command
            .args(["-DD", "-E", "-f", cfg, "-m", "32", "-M", "8"])
            .arg("-l")
            .arg(format!("udp:{sip}"))
            .arg("-A")
            .arg(format!("NG_SOCK=\"{}\"", relays.iter().map(|r| format!("udp:{r}")).collect::<Vec<_>>().join(" ")))
            .arg("-Y")
            .arg(&dir)
            .arg("-w")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("kamailio (scripts/setup-debian.sh installs Debian's kamailio)");
        let k = Self { child, sip, log, dir };
        k.wait_ready(probe);
        k
    }

    /// Kamailio is ready when it answers OPTIONS.
    fn wait_ready(&self, probe: &SipSocket) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = vec![0u8; 4096];
        for n in 0.. {
            assert!(Instant::now() < deadline, "Kamailio did not start: {}", self.log_text());
            let options = SipMessage::request(
                "OPTIONS",
                &format!("sip:{}", self.sip),
                vec![
                    ("Via".into(), format!("SIP/2.0/UDP {};branch=z9hG4bKprobe{n};rport", probe.addr)),
                    ("Max-Forwards".into(), "70".into()),
                    ("From".into(), format!("<sip:probe@{}>;tag=probe", probe.addr.ip())),
                    ("To".into(), format!("<sip:{}>", self.sip)),
                    ("Call-ID".into(), format!("probe-{n}")),
                    ("CSeq".into(), format!("{} OPTIONS", n + 1)),
                ],
                "",
            );
            probe.send(&options, self.sip);
            probe.sock.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
            if let Ok(len) = probe.sock.recv(&mut buf) {
                if SipMessage::parse(&buf[..len]).and_then(|m| m.status()) == Some(200) {
                    return;
                }
            }
        }
    }

    /// Everything Kamailio logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test if Kamailio logged any ng failure.
    pub fn assert_no_ng_failure(&self) {
        let log = self.log_text();
        for bad in NG_FAILURES {
            assert!(!log.contains(bad), "Kamailio logged {bad:?}:\n{log}");
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM: the main process stops its children and exits.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
