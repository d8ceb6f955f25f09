//! RFC 7983 first-byte demultiplexing of one UDP 5-tuple.

/// The protocol class of a datagram, by its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketClass {
    /// STUN (first byte 0..=3).
    Stun,
    /// ZRTP (first byte 16..=19).
    Zrtp,
    /// DTLS (first byte 20..=63).
    Dtls,
    /// TURN channel data (first byte 64..=79).
    TurnChannel,
    /// RTP or SRTP (first byte 128..=191, second byte's PT not in 192..=223).
    Rtp,
    /// RTCP or SRTCP (first byte 128..=191, packet type 192..=223, RFC 5761).
    Rtcp,
    /// Anything else, including empty datagrams.
    Other,
}

/// Classifies a datagram by its first bytes. Never panics.
///
/// RTP and RTCP share the 128..=191 range; they are told apart by the second
/// byte as RFC 5761 §4 does for rtcp-mux (RTCP packet types 192..=223).
pub fn classify(datagram: &[u8]) -> PacketClass {
    let Some(&first) = datagram.first() else {
        return PacketClass::Other;
    };
    match first {
        0..=3 => PacketClass::Stun,
        16..=19 => PacketClass::Zrtp,
        20..=63 => PacketClass::Dtls,
        64..=79 => PacketClass::TurnChannel,
        128..=191 => match datagram.get(1) {
            Some(pt) if (192..=223).contains(pt) => PacketClass::Rtcp,
            Some(_) => PacketClass::Rtp,
            None => PacketClass::Other,
        },
        _ => PacketClass::Other,
    }
}

/// STUN magic cookie (RFC 5389).
const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// ZRTP magic cookie "ZRTP" (RFC 6189).
const ZRTP_MAGIC: [u8; 4] = *b"ZRTP";

/// Classifies a datagram like [`classify`] and also checks that its header
/// is plausible for its class; anything implausible is [`PacketClass::Other`]
/// (not media). This is what the relay forwards: only media crosses it, so
/// a session cannot carry another protocol to whatever a hint names.
///
/// - STUN: 20-byte header, magic cookie, length field equal to the rest
///   (a multiple of 4).
/// - ZRTP: at least 12 bytes with the `ZRTP` magic cookie.
/// - DTLS 1.0/1.2 records (content types 20–25): a full 13-byte header,
///   version 0xfeff or 0xfefd, a length that fits; DTLS 1.3 unified headers
///   (first byte 32–63): at least 12 bytes.
/// - TURN ChannelData: 4-byte header whose length fits.
/// - RTP: 12-byte header plus its CSRC list; RTCP: the first packet's
///   header and length fit.
pub fn classify_media(datagram: &[u8]) -> PacketClass {
    let class = classify(datagram);
    let d = datagram;
    let be16 = |at: usize| d.get(at..at + 2).map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let plausible = match class {
        PacketClass::Stun => d.len() >= 20 && d[4..8] == STUN_MAGIC && be16(2) == d.len() - 20 && be16(2) % 4 == 0,
        PacketClass::Zrtp => d.len() >= 12 && d[4..8] == ZRTP_MAGIC,
        PacketClass::Dtls => match d[0] {
            20..=25 => d.len() >= 13 && d[1] == 0xfe && (d[2] == 0xff || d[2] == 0xfd) && 13 + be16(11) <= d.len(),
            // DTLS 1.3 unified header 0b001CSLEE (RFC 9147 §4): without a
            // connection id (C = 0; media never negotiates one, and every
            // ASCII digit has that bit set), with its length when L = 1.
            32..=63 => {
                let seq_len = if d[0] & 0x08 != 0 { 2 } else { 1 };
                let header = 1 + seq_len + if d[0] & 0x04 != 0 { 2 } else { 0 };
                d[0] & 0x10 == 0 && d.len() >= 12 && (d[0] & 0x04 == 0 || header + be16(1 + seq_len) <= d.len())
            }
            _ => false,
        },
        PacketClass::TurnChannel => d.len() >= 4 && 4 + be16(2) <= d.len(),
        PacketClass::Rtp => d.len() >= 12 + 4 * usize::from(d[0] & 0x0f),
        PacketClass::Rtcp => d.len() >= 8 && 4 * (be16(2) + 1) <= d.len(),
        PacketClass::Other => false,
    };
    if plausible {
        class
    } else {
        PacketClass::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc7983() {
        assert_eq!(classify(&[0, 1]), PacketClass::Stun);
        assert_eq!(classify(&[3]), PacketClass::Stun);
        assert_eq!(classify(&[4]), PacketClass::Other);
        assert_eq!(classify(&[16]), PacketClass::Zrtp);
        assert_eq!(classify(&[20]), PacketClass::Dtls);
        assert_eq!(classify(&[22, 0xfe, 0xfd]), PacketClass::Dtls);
        assert_eq!(classify(&[63]), PacketClass::Dtls);
        assert_eq!(classify(&[64]), PacketClass::TurnChannel);
        assert_eq!(classify(&[0x80, 0]), PacketClass::Rtp);
        assert_eq!(classify(&[0x80, 0x80 | 8]), PacketClass::Rtp);
        assert_eq!(classify(&[0x80, 200]), PacketClass::Rtcp);
        assert_eq!(classify(&[0x81, 201]), PacketClass::Rtcp);
        assert_eq!(classify(&[0x80]), PacketClass::Other);
        assert_eq!(classify(&[192, 0]), PacketClass::Other);
        assert_eq!(classify(&[]), PacketClass::Other);
    }

    #[test]
    fn media_needs_a_plausible_header_for_its_class() {
        let mut stun = vec![0, 1, 0, 4, 0x21, 0x12, 0xa4, 0x42];
        stun.extend_from_slice(&[7; 12]);
        stun.extend_from_slice(&[0, 0x24, 0, 0]);
        assert_eq!(classify_media(&stun), PacketClass::Stun);
        assert_eq!(classify_media(&stun[..20]), PacketClass::Other, "length field disagrees");
        let mut rtp = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(classify_media(&rtp), PacketClass::Rtp);
        rtp[0] = 0x81; // one CSRC announced, none present
        assert_eq!(classify_media(&rtp), PacketClass::Other);
        assert_eq!(
            classify_media(&[0x80, 200, 0, 2, 0, 0, 0, 1]),
            PacketClass::Other,
            "RTCP length beyond the datagram"
        );
        assert_eq!(classify_media(&[0x80, 200, 0, 0, 0, 0, 0, 1]), PacketClass::Rtcp);
        let dtls = [22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        assert_eq!(classify_media(&dtls), PacketClass::Dtls);
        assert_eq!(classify_media(&[22, 0x03, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]), PacketClass::Other, "TLS");
        assert_eq!(classify_media(&[26; 20]), PacketClass::Other);
        assert_eq!(classify_media(&[0x40, 0, 0, 2, 9, 9]), PacketClass::TurnChannel);
        assert_eq!(classify_media(&[0x40, 0, 0, 9, 9, 9]), PacketClass::Other);
        // DTLS 1.3: no connection id, a length that fits.
        let mut dtls13 = vec![0x2c, 0, 1, 0, 16];
        dtls13.extend_from_slice(&[7; 16]);
        assert_eq!(classify_media(&dtls13), PacketClass::Dtls);
        dtls13[4] = 99;
        assert_eq!(classify_media(&dtls13), PacketClass::Other);
        // An rtpengine ng message or reply, a DNS answer and HTTP are not media.
        assert_eq!(classify_media(b"12 d7:command4:liste"), PacketClass::Other);
        assert_eq!(classify_media(b"d6:result4:ponge"), PacketClass::Other);
        assert_eq!(classify_media(b"GET / HTTP/1.1\r\n"), PacketClass::Other);
        assert_eq!(classify_media(&[0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]), PacketClass::Other);
    }
}
