//! RTCP header view (RFC 3550 §6.4) and the SRTCP trailer (RFC 3711 §3.4).

use super::{be16, be32, need, WireError};

/// Length of the SRTCP E-flag and index word.
pub const SRTCP_INDEX_LEN: usize = 4;

/// A checked view of the first RTCP packet of a (possibly compound, possibly
/// SRTCP-protected) datagram. Only the first 8 bytes are clear in SRTCP.
#[derive(Debug, Clone, Copy)]
pub struct RtcpHeader<'a> {
    buf: &'a [u8],
}

impl<'a> RtcpHeader<'a> {
    /// Checks version 2, a packet type in 192..=223 and the 8-byte header
    /// (with the sender SSRC).
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        need(buf, 8)?;
        if buf[0] >> 6 != 2 {
            return Err(WireError::Invalid { field: "rtcp version" });
        }
        if !(192..=223).contains(&buf[1]) {
            return Err(WireError::Invalid { field: "rtcp packet type" });
        }
        Ok(Self { buf })
    }

    /// Reception-report count / subtype field.
    pub fn count(&self) -> u8 {
        self.buf[0] & 0x1f
    }
    /// Packet type (200 = SR, 201 = RR, ...).
    pub fn packet_type(&self) -> u8 {
        self.buf[1]
    }
    /// Length of the first packet in 32-bit words minus one.
    pub fn length_words(&self) -> u16 {
        be16(self.buf, 2)
    }
    /// Sender SSRC of the first packet.
    pub fn ssrc(&self) -> u32 {
        be32(self.buf, 4)
    }
    /// The whole datagram.
    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Reads the SRTCP trailer given the authentication tag length: returns
    /// `(encrypted flag, 31-bit SRTCP index)`. No MKI is supported.
    pub fn srtcp_index(&self, tag_len: usize) -> Result<(bool, u32), WireError> {
        need(self.buf, 8 + SRTCP_INDEX_LEN + tag_len)?;
        let at = self.buf.len() - tag_len - SRTCP_INDEX_LEN;
        let word = be32(self.buf, at);
        Ok((word & 0x8000_0000 != 0, word & 0x7fff_ffff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_and_srtcp_trailer() {
        let mut p = vec![0x80u8, 200, 0, 6, 0xca, 0xfe, 0xba, 0xbe];
        p.extend_from_slice(&[0; 20]);
        p.extend_from_slice(&[0x80, 0, 0, 42]);
        p.extend_from_slice(&[0xaa; 10]);
        let h = RtcpHeader::parse(&p).expect("valid");
        assert_eq!((h.packet_type(), h.length_words(), h.ssrc()), (200, 6, 0xcafebabe));
        assert_eq!(h.srtcp_index(10), Ok((true, 42)));
        assert!(h.srtcp_index(100).is_err());
    }

    #[test]
    fn rejects_non_rtcp() {
        assert!(RtcpHeader::parse(&[0x80, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(RtcpHeader::parse(&[0x80, 200, 0]).is_err());
        assert!(RtcpHeader::parse(&[0x00, 200, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
