//! RFC 7983 demux, RTP/RTCP/SRTCP header views and plain RTCP report
//! blocks on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::wire::rtcp::{PlainReports, RtcpHeader, MAX_REPORT_BLOCKS};
use relay_core::wire::rtp::RtpHeader;
use relay_core::wire::{classify, PacketClass};

fuzz_target!(|data: &[u8]| {
    let class = classify(data);
    if let Ok(h) = RtpHeader::parse(data) {
        assert!(h.header_len() <= data.len());
        assert_eq!(h.header_len() + h.payload().len(), data.len());
        assert_eq!(h.version(), 2);
        let _ = (h.sequence(), h.timestamp(), h.ssrc(), h.marker(), h.payload_type(), h.extension_len());
        assert!(matches!(class, PacketClass::Rtp | PacketClass::Rtcp));
    }
    if let Ok(h) = RtcpHeader::parse(data) {
        assert_eq!(class, PacketClass::Rtcp);
        let _ = (h.count(), h.packet_type(), h.length_words(), h.ssrc());
        for tag in [0usize, 4, 10, 16] {
            if let Ok((_, index)) = h.srtcp_index(tag) {
                assert!(index < 1 << 31);
            }
        }
    }
    if let Ok(r) = PlainReports::parse(data) {
        // Only whole plain compound RTCP, beginning with an SR or RR.
        assert_eq!(class, PacketClass::Rtcp);
        assert!(matches!(data[1], 200 | 201));
        assert!(r.blocks().len() <= MAX_REPORT_BLOCKS);
        assert_eq!(r.sender_report_ntp.is_some(), data[1] == 200);
    }
});
