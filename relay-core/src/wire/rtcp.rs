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

    /// A view of a datagram [`parse`](Self::parse) accepted before (no
    /// check repeated).
    pub(crate) fn from_checked(buf: &'a [u8]) -> Self {
        debug_assert!(Self::parse(buf).is_ok());
        Self { buf }
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

/// Report blocks read from one datagram at most (more are ignored).
pub const MAX_REPORT_BLOCKS: usize = 4;

/// One reception report block (RFC 3550 §6.4.1): what a receiver says
/// about one source it hears.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source reported on.
    pub ssrc: u32,
    /// Fraction of its packets lost since the last report, /256.
    pub fraction_lost: u8,
    /// Packets lost since the start (signed 24 bits).
    pub cumulative_lost: i32,
    /// Interarrival jitter in the source's RTP timestamp units.
    pub jitter: u32,
    /// The middle 32 bits of the NTP time of the last SR from the source
    /// (0: none yet).
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

/// The reports of a plain (unencrypted) RTCP datagram: its sender report
/// if it starts with one, and the report blocks of its SR or RR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlainReports {
    /// The SSRC of the packet's sender (the reporter).
    pub reporter: u32,
    /// An SR's NTP timestamp, middle 32 bits (what a later LSR names).
    pub sender_report_ntp: Option<u32>,
    blocks: [ReportBlock; MAX_REPORT_BLOCKS],
    count: usize,
}

impl PlainReports {
    /// Reads a compound RTCP datagram that must be plain: every packet
    /// version 2 with a type in 192..=223, the lengths adding up to the
    /// datagram exactly. SRTCP fails that (its index and tag follow the
    /// packets, and its packets after the first 8 bytes are ciphertext), so
    /// nothing encrypted is ever read as a report. The first packet must be
    /// an SR or RR (RFC 3550 §6.1).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        let first = RtcpHeader::parse(buf)?;
        let mut at = 0;
        while at < buf.len() {
            // Packets after the first may be 4 bytes (a BYE naming no SSRC).
            let rest = &buf[at..];
            need(rest, 4)?;
            if rest[0] >> 6 != 2 || !(192..=223).contains(&rest[1]) {
                return Err(WireError::Invalid { field: "rtcp compound packet" });
            }
            at += (usize::from(be16(rest, 2)) + 1) * 4;
        }
        if at != buf.len() {
            return Err(WireError::Invalid { field: "rtcp compound length" });
        }
        let (blocks_at, sender_report_ntp) = match first.packet_type() {
            200 => (28, Some((be32(buf, 8) << 16) | (be32(buf, 12) >> 16))),
            201 => (8, None),
            _ => return Err(WireError::Invalid { field: "rtcp first packet type" }),
        };
        let first_len = (usize::from(first.length_words()) + 1) * 4;
        need(&buf[..first_len], blocks_at + usize::from(first.count()) * 24)?;
        let mut reports = Self { reporter: first.ssrc(), sender_report_ntp, ..Self::default() };
        for k in 0..usize::from(first.count()).min(MAX_REPORT_BLOCKS) {
            let b = blocks_at + k * 24;
            let lost = be32(buf, b + 4);
            reports.blocks[k] = ReportBlock {
                ssrc: be32(buf, b),
                fraction_lost: (lost >> 24) as u8,
                // Sign-extend the 24-bit count.
                cumulative_lost: ((lost << 8) as i32) >> 8,
                jitter: be32(buf, b + 12),
                lsr: be32(buf, b + 16),
                dlsr: be32(buf, b + 20),
            };
            reports.count = k + 1;
        }
        Ok(reports)
    }

    /// The report blocks read.
    pub fn blocks(&self) -> &[ReportBlock] {
        &self.blocks[..self.count]
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

    /// An RR from 0x11 with one block about 0x22, then an SDES.
    fn receiver_report() -> Vec<u8> {
        let mut p = vec![0x81u8, 201, 0, 7, 0, 0, 0, 0x11];
        p.extend_from_slice(&[0, 0, 0, 0x22, 26, 0xff, 0xff, 0xfe, 0, 1, 0, 5]);
        p.extend_from_slice(&[0, 0, 0, 80, 0xab, 0xcd, 0x12, 0x34, 0, 0, 0x80, 0]);
        p.extend_from_slice(&[0x81, 202, 0, 2, 0, 0, 0, 0x11, 0, 0, 0, 0]);
        p
    }

    #[test]
    fn reads_the_report_blocks_of_plain_compound_rtcp() {
        let r = PlainReports::parse(&receiver_report()).expect("plain");
        assert_eq!((r.reporter, r.sender_report_ntp), (0x11, None));
        let b = r.blocks()[0];
        assert_eq!((b.ssrc, b.fraction_lost, b.cumulative_lost), (0x22, 26, -2));
        assert_eq!((b.jitter, b.lsr, b.dlsr), (80, 0xabcd_1234, 0x8000));
        // An SR: its NTP middle bits, and no blocks.
        let sr = [0x80u8, 200, 0, 6, 0, 0, 0, 0x22, 0x12, 0x34, 0xab, 0xcd, 0x56, 0x78, 0x9a, 0xbc]
            .iter()
            .copied()
            .chain([0u8; 12])
            .collect::<Vec<u8>>();
        let r = PlainReports::parse(&sr).expect("sr");
        assert_eq!((r.reporter, r.sender_report_ntp, r.blocks().len()), (0x22, Some(0xabcd_5678), 0));
    }

    #[test]
    fn srtcp_and_broken_lengths_are_not_reports() {
        let mut srtcp = receiver_report();
        srtcp.extend_from_slice(&[0x80, 0, 0, 1]);
        srtcp.extend_from_slice(&[0xaa; 10]);
        assert!(PlainReports::parse(&srtcp).is_err(), "an SRTCP trailer breaks the length sum");
        let mut short = receiver_report();
        short.truncate(20);
        assert!(PlainReports::parse(&short).is_err());
        // A count that claims more blocks than the packet holds.
        let mut lying = receiver_report();
        lying[0] = 0x83;
        assert!(PlainReports::parse(&lying).is_err());
        // Starting with an SDES: not a report.
        assert!(PlainReports::parse(&receiver_report()[32..]).is_err());
    }
}
