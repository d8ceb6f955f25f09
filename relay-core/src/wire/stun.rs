//! STUN message view (RFC 8489): header, attributes, MESSAGE-INTEGRITY
//! (HMAC-SHA1, short-term credentials) and FINGERPRINT (CRC-32).

use std::net::SocketAddr;

use hmac::Mac;

use super::{be16, be32, need, WireError};

/// STUN magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header length.
pub const HEADER_LEN: usize = 20;
/// USERNAME attribute type.
pub const ATTR_USERNAME: u16 = 0x0006;
/// MESSAGE-INTEGRITY attribute type.
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
/// FINGERPRINT attribute type.
pub const ATTR_FINGERPRINT: u16 = 0x8028;
/// MESSAGE-INTEGRITY-SHA256 attribute type (RFC 8489 §14.6).
pub const ATTR_MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
/// The value XORed into the FINGERPRINT CRC.
pub const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// STUN message class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunClass {
    /// Request.
    Request,
    /// Indication.
    Indication,
    /// Success response.
    Success,
    /// Error response.
    Error,
}

/// A checked view of a STUN message.
#[derive(Debug, Clone, Copy)]
pub struct StunMessage<'a> {
    buf: &'a [u8],
}

/// One STUN attribute: type, value and the offset of its TLV header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunAttribute<'a> {
    /// Attribute type.
    pub kind: u16,
    /// Attribute value (without padding).
    pub value: &'a [u8],
    /// Offset of the attribute's type field from the start of the message.
    pub offset: usize,
}

impl<'a> StunMessage<'a> {
    /// Checks the header (leading zero bits, magic cookie, 4-byte aligned
    /// length that matches the datagram) and that every attribute fits.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        need(buf, HEADER_LEN)?;
        if buf[0] & 0xc0 != 0 {
            return Err(WireError::Invalid { field: "stun leading bits" });
        }
        if be32(buf, 4) != MAGIC_COOKIE {
            return Err(WireError::Invalid { field: "stun magic cookie" });
        }
        let len = usize::from(be16(buf, 2));
        if len % 4 != 0 || HEADER_LEN + len != buf.len() {
            return Err(WireError::Invalid { field: "stun message length" });
        }
        let msg = Self { buf };
        let mut at = HEADER_LEN;
        while at < buf.len() {
            need(buf, at + 4)?;
            let value_len = usize::from(be16(buf, at + 2));
            let padded = (value_len + 3) & !3;
            need(buf, at + 4 + padded)?;
            at += 4 + padded;
        }
        Ok(msg)
    }

    /// Message type (method and class bits).
    pub fn message_type(&self) -> u16 {
        be16(self.buf, 0)
    }
    /// Method (e.g. 0x001 = Binding).
    pub fn method(&self) -> u16 {
        let t = self.message_type();
        (t & 0x000f) | ((t & 0x00e0) >> 1) | ((t & 0x3e00) >> 2)
    }
    /// Class.
    pub fn class(&self) -> StunClass {
        match self.message_type() & 0x0110 {
            0x0000 => StunClass::Request,
            0x0010 => StunClass::Indication,
            0x0100 => StunClass::Success,
            _ => StunClass::Error,
        }
    }
    /// Transaction id.
    pub fn transaction_id(&self) -> &'a [u8] {
        &self.buf[8..HEADER_LEN]
    }
    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Iterates over attributes in order.
    pub fn attributes(&self) -> StunAttributes<'a> {
        StunAttributes { buf: self.buf, at: HEADER_LEN }
    }

    /// First attribute of a type.
    pub fn attribute(&self, kind: u16) -> Option<StunAttribute<'a>> {
        self.attributes().find(|a| a.kind == kind)
    }

    /// The address of an XOR-…-ADDRESS attribute of type `kind` (RFC 8489
    /// §14.2; XOR-MAPPED-, XOR-PEER-, XOR-RELAYED-ADDRESS), if present and
    /// well formed.
    pub fn xor_address(&self, kind: u16) -> Option<SocketAddr> {
        self.xor_address_value(self.attribute(kind)?.value)
    }

    /// The address an XOR-…-ADDRESS attribute's `value` holds, read with
    /// this message's transaction id (for attributes that may repeat, as
    /// XOR-PEER-ADDRESS in a CreatePermission).
    pub fn xor_address_value(&self, v: &[u8]) -> Option<SocketAddr> {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        key[4..].copy_from_slice(self.transaction_id());
        let port = be16(v, 2) ^ (MAGIC_COOKIE >> 16) as u16;
        match (v.first(), v.get(1), v.len()) {
            (Some(0), Some(0x01), 8) => {
                let ip: [u8; 4] = std::array::from_fn(|i| v[4 + i] ^ key[i]);
                Some(SocketAddr::from((ip, port)))
            }
            (Some(0), Some(0x02), 20) => {
                let ip: [u8; 16] = std::array::from_fn(|i| v[4 + i] ^ key[i]);
                Some(SocketAddr::from((ip, port)))
            }
            _ => None,
        }
    }

    /// Verifies MESSAGE-INTEGRITY with a short-term credential `key` (the
    /// ICE password). Returns `false` when the attribute is missing, the
    /// wrong size, or does not verify.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(mi) = self.attribute(ATTR_MESSAGE_INTEGRITY) else {
            return false;
        };
        if mi.value.len() != 20 {
            return false;
        }
        // The length field covers the message up to the end of MI.
        let adjusted = (mi.offset + 4 + 20 - HEADER_LEN) as u16;
        let mut mac = super::srtp_auth::keyed_hmac(key);
        mac.update(&self.buf[0..2]);
        mac.update(&adjusted.to_be_bytes());
        mac.update(&self.buf[4..mi.offset]);
        let digest = mac.finalize().into_bytes();
        super::ct_eq(&digest, mi.value)
    }

    /// Verifies MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256, RFC 8489 §14.6)
    /// with `key`: a tag of 16 to 32 bytes, a multiple of 4 (a truncated
    /// one compares its prefix).
    #[cfg(feature = "turn")]
    pub fn verify_integrity_sha256(&self, key: &[u8]) -> bool {
        let Some(mi) = self.attribute(ATTR_MESSAGE_INTEGRITY_SHA256) else {
            return false;
        };
        let n = mi.value.len();
        if !(16..=32).contains(&n) || n % 4 != 0 {
            return false;
        }
        let adjusted = (mi.offset + 4 + n - HEADER_LEN) as u16;
        let mut mac = hmac_sha256(key);
        mac.update(&self.buf[0..2]);
        mac.update(&adjusted.to_be_bytes());
        mac.update(&self.buf[4..mi.offset]);
        let digest = mac.finalize().into_bytes();
        super::ct_eq(&digest[..n], mi.value)
    }

    /// Verifies the FINGERPRINT attribute, which must be the last one.
    pub fn verify_fingerprint(&self) -> bool {
        let Some(fp) = self.attribute(ATTR_FINGERPRINT) else {
            return false;
        };
        if fp.value.len() != 4 || fp.offset + 8 != self.buf.len() {
            return false;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.buf[..fp.offset]);
        crc.finalize() ^ FINGERPRINT_XOR == be32(fp.value, 0)
    }
}

/// HMAC-SHA256 keyed with `key` (any length is a valid HMAC key).
#[cfg(feature = "turn")]
pub(crate) fn hmac_sha256(key: &[u8]) -> hmac::Hmac<sha2::Sha256> {
    #[allow(clippy::expect_used)]
    <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// A STUN Binding request as an ICE agent's connectivity check: USERNAME,
/// MESSAGE-INTEGRITY keyed with `password` (the short-term credential) and
/// FINGERPRINT. For endpoints simulated in tests and tools; the relay
/// itself only verifies checks.
pub fn binding_request(username: &[u8], password: &[u8], txid: [u8; 12]) -> Vec<u8> {
    let mut w = super::stun_writer::StunWriter::new(0x0001, txid);
    w.attribute(ATTR_USERNAME, username).message_integrity(password).fingerprint();
    w.finish()
}

/// Iterator over a parsed message's attributes.
#[derive(Debug, Clone)]
pub struct StunAttributes<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for StunAttributes<'a> {
    type Item = StunAttribute<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let header = self.buf.get(self.at..self.at + 4)?;
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let value = self.buf.get(self.at + 4..self.at + 4 + len)?;
        let attr = StunAttribute { kind, value, offset: self.at };
        self.at += 4 + ((len + 3) & !3);
        Some(attr)
    }
}

#[cfg(test)]
pub(super) mod tests {
    #[test]
    fn built_checks_parse_and_verify_with_their_password_only() {
        let m = binding_request(b"remote:local", b"the-ice-password", [3; 12]);
        let parsed = StunMessage::parse(&m).expect("parses");
        assert_eq!(parsed.class(), StunClass::Request);
        assert_eq!(parsed.transaction_id(), &[3; 12]);
        assert_eq!(parsed.attribute(ATTR_USERNAME).map(|a| a.value), Some(&b"remote:local"[..]));
        assert!(parsed.verify_integrity(b"the-ice-password") && parsed.verify_fingerprint());
        assert!(!parsed.verify_integrity(b"another-password"));
        // Usernames of any length are padded to 4 bytes.
        let odd = binding_request(b"abcde", b"pw", [4; 12]);
        assert!(StunMessage::parse(&odd).expect("parses").verify_integrity(b"pw"));
    }

    use super::*;

    /// Bytes from spaced hex (the RFCs' samples).
    pub(in crate::wire) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    /// RFC 5769 §2.1 sample request (short-term credentials).
    pub(in crate::wire) fn rfc5769_request() -> Vec<u8> {
        hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
             00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
             00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20 00 08 00 14
             9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
             80 28 00 04 e5 7a 3b cf")
    }

    #[test]
    fn rfc5769_sample_request_verifies() {
        let msg = rfc5769_request();
        let m = StunMessage::parse(&msg).expect("valid");
        assert_eq!(m.class(), StunClass::Request);
        assert_eq!(m.method(), 1);
        assert_eq!(m.attribute(ATTR_USERNAME).map(|a| a.value), Some(&b"evtj:h6vY"[..]));
        assert!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.verify_integrity(b"wrong password"));
        assert!(m.verify_fingerprint());
    }

    #[test]
    fn tampering_breaks_integrity_and_fingerprint() {
        let mut msg = rfc5769_request();
        msg[30] ^= 1;
        let m = StunMessage::parse(&msg).expect("still well-formed");
        assert!(!m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.verify_fingerprint());
    }

    #[test]
    fn rejects_malformed() {
        let msg = rfc5769_request();
        assert!(StunMessage::parse(&msg[..msg.len() - 4]).is_err());
        let mut bad = msg.clone();
        bad[4] = 0;
        assert!(StunMessage::parse(&bad).is_err());
        // An attribute whose length runs past the end.
        let mut bad = msg;
        bad[22] = 0xff;
        assert!(StunMessage::parse(&bad).is_err());
    }
}
