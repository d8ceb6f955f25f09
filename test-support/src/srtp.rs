//! Real SRTP endpoints (libsrtp through the `srtp` crate): a sender and a
//! receiver that counts authentication failures, and paced calls that
//! measure their gaps.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::packets::{rtcp_rr, rtp};

/// libsrtp stream policy for AES_CM_128_HMAC_SHA1_80 with a 30-byte master key ‖ salt.
fn cm80(master: &[u8]) -> srtp::StreamPolicy<'_> {
    let policy = srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80();
    srtp::StreamPolicy { rtp: policy, rtcp: policy, key: master, ..Default::default() }
}

/// AES_CM_128_HMAC_SHA1_32: 32-bit SRTP tags (SRTCP keeps 80 bits).
fn cm32(master: &[u8]) -> srtp::StreamPolicy<'_> {
    srtp::StreamPolicy {
        rtp: srtp::CryptoPolicy::aes_cm_128_hmac_sha1_32(),
        rtcp: srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80(),
        key: master,
        ..Default::default()
    }
}

/// An SRTP sender (libsrtp, AES_CM_128_HMAC_SHA1_80).
pub struct SrtpTx {
    session: srtp::Session,
    /// Its SSRC.
    pub ssrc: u32,
    /// The next packet's sequence number.
    pub seq: u16,
    /// The next packet's timestamp.
    pub ts: u32,
}

impl SrtpTx {
    /// A sender with 80-bit tags; its first packet has sequence `first_seq`.
    pub fn new(master: &[u8], ssrc: u32, first_seq: u16) -> Self {
        let session = srtp::Session::with_outbound_template(cm80(master)).expect("libsrtp outbound session");
        Self { session, ssrc, seq: first_seq, ts: 0 }
    }

    /// A sender with 32-bit SRTP tags.
    pub fn new_32(master: &[u8], ssrc: u32, first_seq: u16) -> Self {
        let session = srtp::Session::with_outbound_template(cm32(master)).expect("libsrtp outbound session");
        Self { session, ssrc, seq: first_seq, ts: 0 }
    }

    /// Protects the next RTP packet of another SSRC of the same session (a bundle).
    pub fn next_rtp_of(&mut self, ssrc: u32) -> Vec<u8> {
        let own = self.ssrc;
        self.ssrc = ssrc;
        let p = self.next_rtp();
        self.ssrc = own;
        p
    }

    /// Protects the next RTP packet (160-byte payload, 20 ms of PCMU).
    pub fn next_rtp(&mut self) -> Vec<u8> {
        let mut p = rtp(self.ssrc, self.seq, self.ts, 160);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(160);
        self.session.protect(&mut p).expect("protect");
        p
    }

    /// Protects an RTCP receiver report.
    pub fn next_rtcp(&mut self) -> Vec<u8> {
        let mut p = rtcp_rr(self.ssrc);
        self.session.protect_rtcp(&mut p).expect("protect rtcp");
        p
    }
}

/// An SRTP receiver (libsrtp) that counts authentication failures.
pub struct SrtpRx {
    session: srtp::Session,
    /// Packets that were authentic.
    pub ok: u64,
    /// Packets libsrtp refused.
    pub auth_failures: u64,
}

impl SrtpRx {
    /// A receiver of streams protected with `master`.
    pub fn new(master: &[u8]) -> Self {
        let session = srtp::Session::with_inbound_template(cm80(master)).expect("libsrtp inbound session");
        Self { session, ok: 0, auth_failures: 0 }
    }

    /// Unprotects an SRTP or SRTCP datagram; returns the clear packet.
    pub fn accept(&mut self, datagram: &[u8]) -> Option<Vec<u8>> {
        let mut buf = Vec::with_capacity(datagram.len() + 160);
        buf.extend_from_slice(datagram);
        let r = if datagram.len() > 1 && (192..=223).contains(&datagram[1]) {
            self.session.unprotect_rtcp(&mut buf)
        } else {
            self.session.unprotect(&mut buf)
        };
        match r {
            Ok(()) => {
                self.ok += 1;
                Some(buf)
            }
            Err(_) => {
                self.auth_failures += 1;
                None
            }
        }
    }
}

/// What one direction of a [`PacedCall`] measured.
#[derive(Debug, Default, Clone)]
pub struct Flow {
    /// Packets sent.
    pub sent: u64,
    /// Datagrams received by the sink.
    pub received: u64,
    /// Received datagrams libsrtp refused.
    pub auth_failures: u64,
    /// The longest time between two arrivals.
    pub max_gap: Duration,
    /// Gaps longer than 100 ms, as (when after the flow started, length).
    pub long_gaps: Vec<(Duration, Duration)>,
    /// Every source address packets arrived from (one: the relay's port).
    pub sources: Vec<SocketAddr>,
}

/// Real SRTP both ways, paced at 50 packets/s per direction, received and
/// authenticated by libsrtp; records arrival times to measure gaps (a
/// takeover, an outage).
pub struct PacedCall {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Flow>>,
}

/// One direction of a [`PacedCall`]: `from` sends to `relay`, `sink`
/// receives, both with the SDES `master` key.
pub struct Direction {
    /// The sending socket.
    pub from: UdpSocket,
    /// The relay address it sends to.
    pub relay: SocketAddr,
    /// The receiving socket (a read timeout set: the sink checks for stop).
    pub sink: UdpSocket,
    /// The sender's master key ‖ salt.
    pub master: Vec<u8>,
    /// The sender's SSRC.
    pub ssrc: u32,
}

impl PacedCall {
    /// Starts every direction.
    pub fn start(directions: Vec<Direction>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = directions
            .into_iter()
            .map(|d| {
                let stop = stop.clone();
                std::thread::spawn(move || run_direction(d, &stop))
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops every direction; what each measured.
    pub fn finish(self) -> Vec<Flow> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().expect("flow")).collect()
    }
}

fn run_direction(d: Direction, stop: &Arc<AtomicBool>) -> Flow {
    let mut tx = SrtpTx::new(&d.master, d.ssrc, 1);
    let mut rx = SrtpRx::new(&d.master);
    let result = Arc::new(Mutex::new(Flow::default()));
    let (r2, stop2, sink) = (result.clone(), stop.clone(), d.sink);
    let started = Instant::now();
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut last: Option<Instant> = None;
        while !stop2.load(Ordering::Relaxed) {
            let Ok((len, src)) = sink.recv_from(&mut buf) else { continue };
            let now = Instant::now();
            let mut f = r2.lock().expect("lock");
            if let Some(l) = last {
                let gap = now - l;
                f.max_gap = f.max_gap.max(gap);
                if gap > Duration::from_millis(100) {
                    f.long_gaps.push((l - started, gap));
                }
            }
            last = Some(now);
            f.received += 1;
            if !f.sources.contains(&src) {
                f.sources.push(src);
            }
            if rx.accept(&buf[..len]).is_none() {
                f.auth_failures += 1;
            }
        }
    });
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        let _ = d.from.send_to(&tx.next_rtp(), d.relay);
        sent += 1;
        if let Some(wait) = (started + Duration::from_millis(20 * sent)).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait); // pacing, not synchronisation
        }
    }
    receiver.join().expect("sink");
    let mut f = result.lock().expect("lock").clone();
    f.sent = sent;
    f
}
