//! RTP header view (RFC 3550 §5.1). SRTP keeps this header in the clear.

use super::{be16, be32, need, WireError};

/// Fixed RTP header length.
pub const RTP_FIXED_HEADER: usize = 12;

/// A checked view of an RTP (or SRTP) packet's clear header.
#[derive(Debug, Clone, Copy)]
pub struct RtpHeader<'a> {
    buf: &'a [u8],
    header_len: usize,
}

impl<'a> RtpHeader<'a> {
    /// Checks version 2 and that the fixed header, CSRC list and header
    /// extension all fit in `buf`.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        need(buf, RTP_FIXED_HEADER)?;
        if buf[0] >> 6 != 2 {
            return Err(WireError::Invalid { field: "rtp version" });
        }
        let csrc_count = usize::from(buf[0] & 0x0f);
        let mut header_len = RTP_FIXED_HEADER + 4 * csrc_count;
        need(buf, header_len)?;
        if buf[0] & 0x10 != 0 {
            need(buf, header_len + 4)?;
            let words = usize::from(be16(buf, header_len + 2));
            header_len += 4 + 4 * words;
            need(buf, header_len)?;
        }
        Ok(Self { buf, header_len })
    }

    /// A view of a header [`parse`](Self::parse) accepted before, with the
    /// header length it found (no check repeated).
    pub(crate) fn from_checked(buf: &'a [u8], header_len: usize) -> Self {
        debug_assert!(Self::parse(buf).is_ok_and(|h| h.header_len == header_len));
        Self { buf, header_len }
    }

    /// RTP version (always 2 for a parsed header).
    pub fn version(&self) -> u8 {
        self.buf[0] >> 6
    }
    /// Padding bit.
    pub fn padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }
    /// Header-extension bit.
    pub fn has_extension(&self) -> bool {
        self.buf[0] & 0x10 != 0
    }
    /// Number of CSRC identifiers.
    pub fn csrc_count(&self) -> u8 {
        self.buf[0] & 0x0f
    }
    /// Marker bit.
    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }
    /// Payload type.
    pub fn payload_type(&self) -> u8 {
        self.buf[1] & 0x7f
    }
    /// Sequence number.
    pub fn sequence(&self) -> u16 {
        be16(self.buf, 2)
    }
    /// RTP timestamp.
    pub fn timestamp(&self) -> u32 {
        be32(self.buf, 4)
    }
    /// Synchronisation source.
    pub fn ssrc(&self) -> u32 {
        be32(self.buf, 8)
    }
    /// Length of the header extension in bytes including its 4-byte header,
    /// or 0 without one.
    pub fn extension_len(&self) -> usize {
        if self.has_extension() {
            self.header_len - RTP_FIXED_HEADER - 4 * usize::from(self.csrc_count())
        } else {
            0
        }
    }
    /// Total header length (fixed part, CSRCs and extension).
    pub fn header_len(&self) -> usize {
        self.header_len
    }
    /// Everything after the header (for SRTP: ciphertext, then the tag).
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.header_len..]
    }
    /// The whole packet.
    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixed_csrc_and_extension() {
        let mut p = vec![0x80u8, 0x80, 0x12, 0x34, 0, 0, 0x01, 0x00, 0xde, 0xad, 0xbe, 0xef];
        p.extend_from_slice(&[9; 160]);
        let h = RtpHeader::parse(&p).expect("valid");
        assert_eq!((h.version(), h.marker(), h.payload_type()), (2, true, 0));
        assert_eq!((h.sequence(), h.timestamp(), h.ssrc()), (0x1234, 256, 0xdeadbeef));
        assert_eq!((h.header_len(), h.payload().len()), (12, 160));

        // CC = 1 and an extension of 2 words.
        let mut q = vec![0x91u8, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0xbe, 0xde, 0, 2];
        q.extend_from_slice(&[0; 8]);
        q.extend_from_slice(&[7; 4]);
        let h = RtpHeader::parse(&q).expect("valid");
        assert_eq!((h.csrc_count(), h.extension_len(), h.header_len()), (1, 12, 28));
        assert_eq!(h.payload(), &[7; 4]);
    }

    #[test]
    fn rejects_short_and_wrong_version() {
        assert!(matches!(RtpHeader::parse(&[0x80; 11]), Err(WireError::Truncated { .. })));
        assert!(matches!(RtpHeader::parse(&[0x40; 12]), Err(WireError::Invalid { .. })));
        // CC = 15 needs 72 bytes.
        assert!(RtpHeader::parse(&[0x8f; 40]).is_err());
        // Extension announces 0xffff words.
        let q = [0x90u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0xff, 0xff];
        assert!(RtpHeader::parse(&q).is_err());
    }
}
