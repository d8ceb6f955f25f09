//! A media datagram classified once: its RFC 7983 class and, for RTP, the
//! header length, found in one pass; every later step of the relay's
//! decision (source proofs, `verify = all`, replay memory, quality) takes
//! its header view from here instead of parsing the bytes again. STUN,
//! whose attributes only a proof or a consent check reads, is parsed then,
//! once.

use super::rtcp::RtcpHeader;
use super::rtp::RtpHeader;
use super::stun::StunMessage;
use super::{classify_media, PacketClass};

/// A datagram the relay may forward (a plausible media header,
/// [`classify_media`]), small enough to pass around by value.
#[derive(Debug, Clone, Copy)]
pub struct MediaDatagram<'a> {
    bytes: &'a [u8],
    class: PacketClass,
    /// RTP: the header's length with its CSRCs and extension; 0 when the
    /// extension does not fit (forwarded like any plausible RTP, but it
    /// names no SSRC and proves nothing).
    rtp_header_len: u16,
}

impl<'a> MediaDatagram<'a> {
    /// Classifies `bytes`; `None` when it is not media.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let class = classify_media(bytes);
        let rtp_header_len = match class {
            PacketClass::Other => return None,
            PacketClass::Rtp => RtpHeader::parse(bytes).map_or(0, |h| h.header_len().min(usize::from(u16::MAX)) as u16),
            _ => 0,
        };
        Some(Self { bytes, class, rtp_header_len })
    }

    /// Its RFC 7983 class.
    pub fn class(&self) -> PacketClass {
        self.class
    }

    /// The whole datagram.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The RTP header, for RTP whose header fits.
    pub fn rtp(&self) -> Option<RtpHeader<'a>> {
        (self.rtp_header_len > 0).then(|| RtpHeader::from_checked(self.bytes, usize::from(self.rtp_header_len)))
    }

    /// The first RTCP header, for RTCP (a plausible one always has it).
    pub fn rtcp(&self) -> Option<RtcpHeader<'a>> {
        (self.class == PacketClass::Rtcp).then(|| RtcpHeader::from_checked(self.bytes))
    }

    /// The STUN message, for STUN whose attributes all fit (parsed on each
    /// call: the decision asks once).
    pub fn stun(&self) -> Option<StunMessage<'a>> {
        (self.class == PacketClass::Stun).then(|| StunMessage::parse(self.bytes).ok()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_gives_its_header() {
        let rtp = [0x80u8, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 9];
        let d = MediaDatagram::parse(&rtp).expect("rtp");
        let h = d.rtp().expect("header");
        assert_eq!((d.class(), h.sequence(), h.ssrc()), (PacketClass::Rtp, 7, 9));
        assert!(d.rtcp().is_none() && d.stun().is_none());
        // An extension that runs past the end: still RTP, but no header.
        let ext = [0x90u8, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 9, 0xbe, 0xde, 0, 9];
        let d = MediaDatagram::parse(&ext).expect("plausible rtp");
        assert_eq!((d.class(), d.rtp().is_none()), (PacketClass::Rtp, true));
        let rtcp = [0x80u8, 201, 0, 1, 0, 0, 0, 5];
        assert_eq!(MediaDatagram::parse(&rtcp).and_then(|d| d.rtcp()).map(|h| h.ssrc()), Some(5));
        let dtls = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let d = MediaDatagram::parse(&dtls).expect("dtls");
        assert_eq!((d.class(), d.bytes().len()), (PacketClass::Dtls, 13));
        assert!(d.rtp().is_none() && d.rtcp().is_none() && d.stun().is_none());
        assert!(MediaDatagram::parse(&[0xff, 0]).is_none());
        assert!(MediaDatagram::parse(&[]).is_none());
    }
}
