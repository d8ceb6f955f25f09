//! Shared test helpers: real SRTP endpoints (libsrtp through the `srtp`
//! crate), STUN requests with MESSAGE-INTEGRITY, and a fake socket table for
//! sans-IO shard tests.
#![allow(dead_code)]

#[cfg(all(feature = "control", feature = "testkit"))]
pub mod control;

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;

use relay_core::shard::RelayPort;

use relay_core::session::spec::SrtpAuth;
use relay_core::shard::{PortClose, PortSockets};
use relay_core::srtp_keys::{derive_auth_keys, SrtpMasterKey};

/// Records which relay ports a shard has open; can refuse some binds.
#[derive(Debug, Default)]
pub struct FakeSockets {
    pub open: BTreeSet<RelayPort>,
    /// Port numbers that fail to bind (on every address).
    pub refuse: BTreeSet<u16>,
    pub opened_total: usize,
    /// Answer `Closing` (like io_uring with an armed receive).
    pub defer_close: bool,
}

impl PortSockets for FakeSockets {
    fn open(&mut self, port: RelayPort) -> io::Result<()> {
        if self.refuse.contains(&port.port) {
            return Err(io::Error::from(io::ErrorKind::AddrInUse));
        }
        assert!(self.open.insert(port), "port {port:?} opened twice");
        self.opened_total += 1;
        Ok(())
    }
    fn close(&mut self, port: RelayPort) -> PortClose {
        assert!(self.open.remove(&port), "port {port:?} closed but not open");
        if self.defer_close {
            PortClose::Closing
        } else {
            PortClose::Closed
        }
    }
}

/// 30 bytes of SDES master key ‖ salt derived from a seed.
pub fn master(seed: u8) -> Vec<u8> {
    (0..30u8).map(|i| i.wrapping_mul(31).wrapping_add(seed.wrapping_mul(7)).wrapping_add(1)).collect()
}

/// The relay-side authentication keys for packets protected with `master`.
pub fn auth_for(master: &[u8]) -> SrtpAuth {
    let m = SrtpMasterKey::from_concatenated(master).expect("30-byte master");
    SrtpAuth::sha1_80(&derive_auth_keys(&m))
}

/// A plain RTP packet with room for libsrtp's trailer.
pub fn rtp(ssrc: u32, seq: u16, ts: u32, payload_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload_len + 160);
    p.extend_from_slice(&[0x80, 0]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..payload_len).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// A plain RTCP receiver report (no report blocks).
pub fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + 160);
    p.extend_from_slice(&[0x80, 201, 0, 1]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

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

/// The relay-side authentication keys for `AES_CM_128_HMAC_SHA1_32` streams.
pub fn auth32_for(master: &[u8]) -> SrtpAuth {
    let m = SrtpMasterKey::from_concatenated(master).expect("30-byte master");
    SrtpAuth::sha1_32(&derive_auth_keys(&m))
}

/// An SRTP sender (libsrtp, AES_CM_128_HMAC_SHA1_80).
pub struct SrtpTx {
    session: srtp::Session,
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
}

impl SrtpTx {
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
    pub ok: u64,
    pub auth_failures: u64,
}

impl SrtpRx {
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

/// A STUN Binding request without MESSAGE-INTEGRITY (a keepalive-style check).
pub fn stun_request_unsigned(txid: [u8; 12]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&txid);
    m
}

/// A STUN Binding request with USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
pub fn stun_request(password: &[u8], txid: [u8; 12]) -> Vec<u8> {
    relay_core::wire::stun::binding_request(b"relay:test", password, txid)
}

pub fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}
