//! A small RustCrypto SRTP implementation (AES_CM_128_HMAC_SHA1_80, RFC 3711)
//! for simulated PBXs and phones (`ucmrc demo`, `ucmrc-loadtest`). The relay
//! never uses it: it only forwards ciphertext. Checked byte for byte against
//! libsrtp in the tests.

use crate::srtp_keys::{SrtpMasterKey, LABEL_SRTP_AUTH, LABEL_SRTP_ENCRYPTION, LABEL_SRTP_SALT};
use crate::wire::rtp::RtpHeader;
use crate::wire::srtp_auth::estimate_index;
use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha1::Sha1;

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;
const TAG: usize = 10;

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpError {
    /// Not an RTP packet long enough to carry a tag.
    Malformed,
    /// The authentication tag does not verify.
    AuthFailed,
}

/// One direction of an SRTP stream (one sender or one receiver).
pub struct SrtpStream {
    key: [u8; 16],
    salt: [u8; 14],
    mac: Hmac<Sha1>,
    /// Highest packet index (ROC << 16 | SEQ) sent or accepted.
    highest: Option<u64>,
}

impl SrtpStream {
    /// Session keys derived from a 30-byte master key ‖ salt.
    pub fn new(master: &[u8]) -> Option<Self> {
        let m = SrtpMasterKey::from_concatenated(master).ok()?;
        let (mut key, mut salt, mut auth) = ([0u8; 16], [0u8; 14], [0u8; 20]);
        m.derive(LABEL_SRTP_ENCRYPTION, &mut key);
        m.derive(LABEL_SRTP_SALT, &mut salt);
        m.derive(LABEL_SRTP_AUTH, &mut auth);
        let mac = <Hmac<Sha1> as Mac>::new_from_slice(&auth).ok()?;
        Some(Self { key, salt, mac, highest: None })
    }

    fn keystream(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
            iv[4 + i] ^= b;
        }
        for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
            iv[8 + i] ^= b;
        }
        Aes128Ctr::new(&self.key.into(), &iv.into()).apply_keystream(data);
    }

    fn tag(&self, authenticated: &[u8], roc: u32) -> [u8; TAG] {
        let mut mac = self.mac.clone();
        mac.update(authenticated);
        mac.update(&roc.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut t = [0u8; TAG];
        t.copy_from_slice(&full[..TAG]);
        t
    }

    /// Encrypts an RTP packet in place and appends its tag.
    pub fn protect(&mut self, pkt: &mut Vec<u8>) -> Result<(), SrtpError> {
        let (hlen, ssrc, seq) = {
            let h = RtpHeader::parse(pkt).map_err(|_| SrtpError::Malformed)?;
            (h.header_len(), h.ssrc(), h.sequence())
        };
        let index = match self.highest {
            None => u64::from(seq),
            Some(h) => estimate_index(h, seq).ok_or(SrtpError::Malformed)?,
        };
        self.highest = Some(self.highest.map_or(index, |h| h.max(index)));
        self.keystream(ssrc, index, &mut pkt[hlen..]);
        let tag = self.tag(pkt, (index >> 16) as u32);
        pkt.extend_from_slice(&tag);
        Ok(())
    }

    /// Verifies and decrypts an SRTP packet in place (the tag is removed).
    pub fn unprotect(&mut self, pkt: &mut Vec<u8>) -> Result<(), SrtpError> {
        if pkt.len() < 12 + TAG {
            return Err(SrtpError::Malformed);
        }
        let body_len = pkt.len() - TAG;
        let (hlen, ssrc, seq) = {
            let h = RtpHeader::parse(&pkt[..body_len]).map_err(|_| SrtpError::Malformed)?;
            (h.header_len(), h.ssrc(), h.sequence())
        };
        let index = match self.highest {
            None => u64::from(seq),
            Some(h) => estimate_index(h, seq).ok_or(SrtpError::Malformed)?,
        };
        let expected = self.tag(&pkt[..body_len], (index >> 16) as u32);
        if !crate::wire::ct_eq(&expected, &pkt[body_len..]) {
            return Err(SrtpError::AuthFailed);
        }
        pkt.truncate(body_len);
        self.keystream(ssrc, index, &mut pkt[hlen..]);
        self.highest = Some(self.highest.map_or(index, |h| h.max(index)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libsrtp(master: &[u8], outbound: bool) -> ::srtp::Session {
        let p = ::srtp::CryptoPolicy::aes_cm_128_hmac_sha1_80();
        let policy = ::srtp::StreamPolicy { rtp: p, rtcp: p, key: master, ..Default::default() };
        if outbound {
            ::srtp::Session::with_outbound_template(policy).expect("libsrtp")
        } else {
            ::srtp::Session::with_inbound_template(policy).expect("libsrtp")
        }
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = Vec::with_capacity(400);
        p.extend_from_slice(&[0x80, 0]);
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.extend((0..160).map(|i| i as u8 ^ seq as u8));
        p
    }

    #[test]
    fn byte_identical_to_libsrtp_across_the_sequence_wrap() {
        let master: Vec<u8> = (0..30).map(|i| i * 7 + 3).collect();
        let mut ours = SrtpStream::new(&master).expect("keys");
        let mut reference = libsrtp(&master, true);
        let mut our_rx = SrtpStream::new(&master).expect("keys");
        let mut their_rx = libsrtp(&master, false);
        for k in 0..300u32 {
            let seq = (65400 + k) as u16; // wraps at k = 136 (ROC 0 -> 1)
            let (mut a, mut b) = (rtp(seq), rtp(seq));
            ours.protect(&mut a).expect("protect");
            reference.protect(&mut b).expect("libsrtp protect");
            assert_eq!(a, b, "packet {k} (seq {seq})");
            // Each side decrypts the other's output.
            let mut c = a.clone();
            their_rx.unprotect(&mut c).expect("libsrtp accepts ours");
            our_rx.unprotect(&mut b).expect("we accept libsrtp's");
            assert_eq!(b, rtp(seq));
            assert_eq!(c, rtp(seq));
        }
    }

    #[test]
    fn tampering_is_detected() {
        let master = [9u8; 30];
        let mut tx = SrtpStream::new(&master).expect("keys");
        let mut rx = SrtpStream::new(&master).expect("keys");
        let mut p = rtp(1);
        tx.protect(&mut p).expect("protect");
        p[20] ^= 1;
        assert_eq!(rx.unprotect(&mut p), Err(SrtpError::AuthFailed));
        assert_eq!(rx.unprotect(&mut vec![0x80; 5]), Err(SrtpError::Malformed));
    }
}
