//! Writes STUN messages (RFC 8489 §5, §14) attribute by attribute: each
//! value padded to 4 bytes, the length field kept current, and
//! MESSAGE-INTEGRITY and FINGERPRINT computed over what precedes them with
//! the length the RFC prescribes at that point. What the relay answers with
//! (and what simulated endpoints send); [`super::stun::StunMessage`] reads.

use std::net::SocketAddr;

use hmac::Mac;

use super::stun::{ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY, FINGERPRINT_XOR, HEADER_LEN, MAGIC_COOKIE};

/// ERROR-CODE attribute type.
pub const ATTR_ERROR_CODE: u16 = 0x0009;
/// XOR-MAPPED-ADDRESS attribute type.
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// A STUN message being written.
#[derive(Debug, Clone)]
pub struct StunWriter {
    buf: Vec<u8>,
    padding: u8,
}

impl StunWriter {
    /// A message of `message_type` (method and class bits) with `txid`.
    pub fn new(message_type: u16, txid: [u8; 12]) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type.to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&txid);
        Self { buf, padding: 0 }
    }

    /// Pads values with `byte` instead of zeros (RFC 5769's samples use
    /// spaces; receivers ignore padding).
    pub fn with_padding(mut self, byte: u8) -> Self {
        self.padding = byte;
        self
    }

    /// Appends an attribute. A value longer than 65 531 bytes (more than a
    /// STUN message can hold) is cut to that.
    pub fn attribute(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let value = &value[..value.len().min(usize::from(u16::MAX) - 4)];
        self.buf.extend_from_slice(&kind.to_be_bytes());
        self.buf.extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let padded = self.buf.len() + (4 - value.len() % 4) % 4;
        self.buf.resize(padded, self.padding);
        self.set_length(0);
        self
    }

    /// Appends an XOR-…-ADDRESS attribute (RFC 8489 §14.2): the port
    /// XORed with the cookie's high half, the address with the cookie (and,
    /// for IPv6, the transaction id).
    pub fn xor_address(&mut self, kind: u16, addr: SocketAddr) -> &mut Self {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        key[4..].copy_from_slice(&self.buf[8..HEADER_LEN]);
        let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
        let mut value = vec![0, if addr.is_ipv4() { 0x01 } else { 0x02 }];
        value.extend_from_slice(&port.to_be_bytes());
        let ip = match addr {
            SocketAddr::V4(a) => a.ip().octets().to_vec(),
            SocketAddr::V6(a) => a.ip().octets().to_vec(),
        };
        value.extend(ip.iter().zip(key).map(|(b, k)| b ^ k));
        self.attribute(kind, &value)
    }

    /// Appends ERROR-CODE (RFC 8489 §14.8): class and number of `code`
    /// (300–699), and a reason phrase (at most 127 characters are kept).
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut value = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        let cut = reason.char_indices().nth(127).map_or(reason.len(), |(i, _)| i);
        value.extend_from_slice(&reason.as_bytes()[..cut]);
        self.attribute(ATTR_ERROR_CODE, &value)
    }

    /// Appends MESSAGE-INTEGRITY: HMAC-SHA1 keyed with `key` (the
    /// short-term password, or a long-term key) over the message so far,
    /// its length field counting the attribute itself.
    pub fn message_integrity(&mut self, key: &[u8]) -> &mut Self {
        self.set_length(24);
        let mut mac = super::srtp_auth::keyed_hmac(key);
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.attribute(ATTR_MESSAGE_INTEGRITY, &tag)
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6): the full 32-byte
    /// HMAC-SHA256 keyed with `key` over the message so far, its length
    /// field counting the attribute itself.
    #[cfg(feature = "turn")]
    pub fn message_integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        self.set_length(36);
        let mut mac = super::stun::hmac_sha256(key);
        mac.update(&self.buf);
        let tag = mac.finalize().into_bytes();
        self.attribute(super::stun::ATTR_MESSAGE_INTEGRITY_SHA256, &tag)
    }

    /// Appends FINGERPRINT: CRC-32 of the message so far XOR 0x5354554e,
    /// its length field counting the attribute itself.
    pub fn fingerprint(&mut self) -> &mut Self {
        self.set_length(8);
        let crc = crc32fast::hash(&self.buf) ^ FINGERPRINT_XOR;
        self.attribute(ATTR_FINGERPRINT, &crc.to_be_bytes())
    }

    /// The message.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// Sets the length field to the attributes so far plus `extra` bytes.
    fn set_length(&mut self, extra: usize) {
        let len = (self.buf.len() - HEADER_LEN + extra).min(usize::from(u16::MAX)) as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::stun::tests::{hex, rfc5769_request};
    use super::super::stun::{StunClass, StunMessage, ATTR_USERNAME};
    use super::*;

    const TXID: [u8; 12] = [0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae];

    /// RFC 5769 §2.1, written from its attributes: byte for byte the RFC's.
    #[test]
    fn writes_rfc5769s_sample_request_exactly() {
        let mut w = StunWriter::new(0x0001, TXID).with_padding(0x20);
        w.attribute(0x8022, b"STUN test client")
            .attribute(0x0024, &[0x6e, 0x00, 0x01, 0xff])
            .attribute(0x8029, &[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36])
            .attribute(ATTR_USERNAME, b"evtj:h6vY")
            .message_integrity(b"VOkJxbRl1RmTxUk/WvJxBt")
            .fingerprint();
        assert_eq!(w.finish(), rfc5769_request());
    }

    /// RFC 5769 §2.2 and §2.3's XOR-MAPPED-ADDRESS values.
    #[test]
    fn xor_addresses_are_rfc5769s() {
        let mut w = StunWriter::new(0x0101, TXID);
        w.xor_address(ATTR_XOR_MAPPED_ADDRESS, "192.0.2.1:32853".parse().expect("v4"));
        w.xor_address(ATTR_XOR_MAPPED_ADDRESS, "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().expect("v6"));
        let m = w.finish();
        assert_eq!(&m[20..32], hex("00 20 00 08 00 01 a1 47 e1 12 a6 43").as_slice());
        assert_eq!(&m[32..], hex("00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9").as_slice());
    }

    #[test]
    fn error_responses_parse_and_verify() {
        let mut w = StunWriter::new(0x0113, [9; 12]);
        w.error_code(438, "Stale Nonce").attribute(0x0015, b"f//499k954d6OL34oL9FSTvy64sA");
        w.message_integrity(b"key").fingerprint();
        let bytes = w.finish();
        let m = StunMessage::parse(&bytes).expect("parses");
        assert_eq!((m.class(), m.method()), (StunClass::Error, 3));
        assert_eq!(m.attribute(ATTR_ERROR_CODE).map(|a| a.value), Some(&b"\x00\x00\x04\x26Stale Nonce"[..]));
        assert!(m.verify_integrity(b"key") && m.verify_fingerprint());
        // A reason phrase is cut at 127 characters, on a character boundary.
        let mut w = StunWriter::new(0x0113, [9; 12]);
        w.error_code(401, &"é".repeat(200));
        let bytes = w.finish();
        let m = StunMessage::parse(&bytes).expect("parses");
        let reason = &m.attribute(ATTR_ERROR_CODE).expect("error code").value[4..];
        assert_eq!(std::str::from_utf8(reason).expect("utf-8").chars().count(), 127);
    }

    #[test]
    fn xor_addresses_read_back() {
        let mut w = StunWriter::new(0x0101, TXID);
        let (v4, v6): (SocketAddr, SocketAddr) =
            ("192.0.2.1:32853".parse().expect("v4"), "[2001:db8::1]:3478".parse().expect("v6"));
        w.xor_address(ATTR_XOR_MAPPED_ADDRESS, v4).xor_address(0x0012, v6).attribute(0x0016, &[0, 3, 0]);
        let bytes = w.finish();
        let m = StunMessage::parse(&bytes).expect("parses");
        assert_eq!(m.xor_address(ATTR_XOR_MAPPED_ADDRESS), Some(v4));
        assert_eq!(m.xor_address(0x0012), Some(v6));
        assert_eq!(m.xor_address(0x0016), None, "a malformed value reads as nothing");
        assert_eq!(m.xor_address(0x0099), None);
    }

    #[cfg(feature = "turn")]
    #[test]
    fn message_integrity_sha256_verifies_full_and_truncated_and_fails_on_change() {
        let mut w = StunWriter::new(0x0003, [5; 12]);
        w.attribute(ATTR_USERNAME, b"1800000000:alice").message_integrity_sha256(b"long-term-key").fingerprint();
        let mut bytes = w.finish();
        let m = StunMessage::parse(&bytes).expect("parses");
        assert!(m.verify_integrity_sha256(b"long-term-key") && m.verify_fingerprint());
        assert!(!m.verify_integrity_sha256(b"another-key"));
        assert!(!m.verify_integrity(b"long-term-key"), "no SHA-1 integrity was written");
        // The same request with its tag truncated to 16 bytes (RFC 8489
        // allows it) still verifies: HMAC over the same prefix, fewer bytes.
        let mut short = StunWriter::new(0x0003, [5; 12]);
        short.attribute(ATTR_USERNAME, b"1800000000:alice");
        let mut truncated = short.finish();
        let full = StunMessage::parse(&bytes).expect("parses");
        let tag = full.attribute(super::super::stun::ATTR_MESSAGE_INTEGRITY_SHA256).expect("tag").value;
        // With a 16-byte tag the length field differs, so compute it anew.
        let len = (truncated.len() - HEADER_LEN + 20) as u16;
        truncated[2..4].copy_from_slice(&len.to_be_bytes());
        let mut mac = super::super::stun::hmac_sha256(b"long-term-key");
        mac.update(&truncated);
        let tag16 = mac.finalize().into_bytes();
        assert_ne!(&tag16[..16], &tag[..16], "the length field is part of what is signed");
        truncated.extend_from_slice(&[0x00, 0x1c, 0x00, 0x10]);
        truncated.extend_from_slice(&tag16[..16]);
        assert!(StunMessage::parse(&truncated).expect("parses").verify_integrity_sha256(b"long-term-key"));
        // One flipped byte of the signed part breaks it.
        bytes[25] ^= 1;
        assert!(!StunMessage::parse(&bytes).expect("parses").verify_integrity_sha256(b"long-term-key"));
    }
}
