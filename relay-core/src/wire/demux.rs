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
}
