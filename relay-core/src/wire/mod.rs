//! Pure, allocation-free wire views.
//!
//! Every parser here takes a byte slice, checks it, and returns a borrowed
//! *view* (or a typed error). None of them allocates, and none of them can
//! panic on any input: the fuzz targets in `fuzz/` (`wire`, `stun`,
//! `srtp_tag`, `client_hello`) and the shard's property tests feed them
//! arbitrary bytes; the unit tests here pin the formats.
//!
//! The relay never decrypts. These views only read the clear parts of packets:
//! RTP/RTCP headers, STUN headers and attributes, and the SRTP/SRTCP
//! authentication tag (verified with an authentication key only).
#![forbid(unsafe_code)]

pub mod client_hello;
mod demux;
pub mod media;
pub mod rtcp;
pub mod rtp;
pub mod srtp_auth;
pub mod stun;
pub mod stun_writer;

pub use demux::{classify, classify_media, PacketClass};
pub use media::MediaDatagram;

/// Why a wire view refused a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ends before the structure it announces.
    #[error("truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// A fixed field has a value the format does not allow.
    #[error("invalid {field}")]
    Invalid {
        /// The field that is wrong.
        field: &'static str,
    },
}

/// Checks that `buf` holds at least `needed` bytes.
pub(crate) fn need(buf: &[u8], needed: usize) -> Result<(), WireError> {
    if buf.len() < needed {
        Err(WireError::Truncated { needed, have: buf.len() })
    } else {
        Ok(())
    }
}

/// Reads a big-endian `u16` at `at`; the caller has checked the length.
pub(crate) fn be16(buf: &[u8], at: usize) -> u16 {
    match buf.get(at..at + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

/// Reads a big-endian `u32` at `at`; the caller has checked the length.
pub(crate) fn be32(buf: &[u8], at: usize) -> u32 {
    match buf.get(at..at + 4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// Lowercase hex of `bytes` (fingerprints, keys in JSON, nonces).
#[cfg(any(feature = "api", feature = "tls", feature = "turn"))]
pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Constant-time equality of two byte slices (lengths are public).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(all(test, any(feature = "api", feature = "tls", feature = "turn")))]
mod tests {
    #[test]
    fn hex_is_two_lowercase_digits_per_byte() {
        assert_eq!(super::hex_lower(&[]), "");
        assert_eq!(super::hex_lower(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(super::hex_lower(&all), expected);
    }
}
