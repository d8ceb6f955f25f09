//! SRTP / SRTCP HMAC-SHA1 authentication-tag verification (RFC 3711 §4.2).
//!
//! The relay is given only the *authentication* key of a stream (never the
//! encryption key), so it can tell a genuine packet from a forged or replayed
//! one without being able to read the media.

use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::rtcp::{RtcpHeader, SRTCP_INDEX_LEN};
use super::rtp::RtpHeader;

type HmacSha1 = Hmac<Sha1>;

/// Length of an SRTP session authentication key (HMAC-SHA1, RFC 3711).
pub const AUTH_KEY_LEN: usize = 20;

/// Length of the HMAC-SHA1 authentication tag appended to each packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagLen {
    /// 80-bit tag (`*_HMAC_SHA1_80`; always used for SRTCP).
    Bits80,
    /// 32-bit tag (`*_HMAC_SHA1_32`, SRTP only).
    Bits32,
}

impl TagLen {
    /// Tag length in bytes.
    pub fn bytes(self) -> usize {
        match self {
            TagLen::Bits80 => 10,
            TagLen::Bits32 => 4,
        }
    }
}

/// A pre-keyed HMAC-SHA1 verifier for one SRTP or SRTCP stream direction.
///
/// Keyed once; each verification clones the keyed state (no key schedule per
/// packet). `Debug` never prints the key.
#[derive(Clone)]
pub struct AuthVerifier {
    mac: HmacSha1,
    tag_len: TagLen,
}

impl std::fmt::Debug for AuthVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthVerifier").field("tag_len", &self.tag_len).finish_non_exhaustive()
    }
}

impl AuthVerifier {
    /// Keys a verifier with a 20-byte session authentication key.
    pub fn new(auth_key: &[u8; AUTH_KEY_LEN], tag_len: TagLen) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = keyed_hmac(auth_key);
        Self { mac, tag_len }
    }

    /// The tag length this verifier expects.
    pub fn tag_len(&self) -> TagLen {
        self.tag_len
    }

    /// Verifies an SRTP packet's tag for a given rollover counter.
    /// Returns `false` for anything that is not a well-formed SRTP packet.
    pub fn verify_srtp(&self, packet: &[u8], roc: u32) -> bool {
        RtpHeader::parse(packet).is_ok_and(|header| self.verify_srtp_header(&header, roc))
    }

    /// [`verify_srtp`](Self::verify_srtp) of a packet whose header is read.
    pub fn verify_srtp_header(&self, header: &RtpHeader<'_>, roc: u32) -> bool {
        let tag_len = self.tag_len.bytes();
        let packet = header.bytes();
        if packet.len() < header.header_len() + tag_len {
            return false;
        }
        let (authenticated, tag) = packet.split_at(packet.len() - tag_len);
        let mut mac = self.mac.clone();
        mac.update(authenticated);
        mac.update(&roc.to_be_bytes());
        let full = mac.finalize().into_bytes();
        super::ct_eq(&full[..tag_len], tag)
    }

    /// Verifies an SRTCP packet's tag (which covers the E flag and index).
    /// Returns the 31-bit SRTCP index when the tag verifies.
    pub fn verify_srtcp(&self, packet: &[u8]) -> Option<u32> {
        self.verify_srtcp_header(&RtcpHeader::parse(packet).ok()?)
    }

    /// [`verify_srtcp`](Self::verify_srtcp) of a packet whose header is read.
    pub fn verify_srtcp_header(&self, header: &RtcpHeader<'_>) -> Option<u32> {
        let tag_len = self.tag_len.bytes();
        let packet = header.bytes();
        let (_, index) = header.srtcp_index(tag_len).ok()?;
        let (authenticated, tag) = packet.split_at(packet.len() - tag_len);
        debug_assert!(authenticated.len() >= 8 + SRTCP_INDEX_LEN);
        let mut mac = self.mac.clone();
        mac.update(authenticated);
        let full = mac.finalize().into_bytes();
        super::ct_eq(&full[..tag_len], tag).then_some(index)
    }
}

/// Keys HMAC-SHA1 with `key`. HMAC takes keys of any length, so this is total.
pub(crate) fn keyed_hmac(key: &[u8]) -> HmacSha1 {
    #[allow(clippy::expect_used)]
    <HmacSha1 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Estimates the 48-bit SRTP packet index of sequence number `seq` given the
/// highest index seen so far (RFC 3711 Appendix A). Returns `None` when the
/// estimate would fall below zero.
pub fn estimate_index(highest: u64, seq: u16) -> Option<u64> {
    let s_l = (highest & 0xffff) as i64;
    let roc = (highest >> 16) as i64;
    let seq_i = i64::from(seq);
    let v = if s_l < 32768 {
        if seq_i - s_l > 32768 {
            roc - 1
        } else {
            roc
        }
    } else if s_l - 32768 > seq_i {
        roc + 1
    } else {
        roc
    };
    if !(0..=i64::from(u32::MAX)).contains(&v) {
        return None;
    }
    Some(((v as u64) << 16) | u64::from(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_estimation_follows_rfc3711_appendix_a() {
        assert_eq!(estimate_index(10, 11), Some(11));
        assert_eq!(estimate_index(65535, 2), Some(65536 + 2));
        assert_eq!(estimate_index(65536 + 2, 65534), Some(65534));
        assert_eq!(estimate_index(3, 65000), None);
        assert_eq!(estimate_index(40000, 100), Some(65536 + 100));
    }

    #[test]
    fn tag_roundtrip_and_tamper() {
        let key = [7u8; 20];
        let v = AuthVerifier::new(&key, TagLen::Bits80);
        let mut pkt = vec![0x80u8, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1];
        pkt.extend_from_slice(&[1; 32]);
        let mut mac = <HmacSha1 as Mac>::new_from_slice(&key).expect("any key");
        mac.update(&pkt);
        mac.update(&3u32.to_be_bytes());
        let tag = mac.finalize().into_bytes();
        pkt.extend_from_slice(&tag[..10]);
        assert!(v.verify_srtp(&pkt, 3));
        assert!(!v.verify_srtp(&pkt, 2));
        pkt[20] ^= 1;
        assert!(!v.verify_srtp(&pkt, 3));
        assert!(!v.verify_srtp(&pkt[..15], 3));
    }
}
