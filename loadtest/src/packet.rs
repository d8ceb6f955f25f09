//! What a load-test RTP packet carries (inside the SRTP encryption): the
//! send time, the stream and a 64-bit sequence number, so the receiver can
//! measure one-way latency and tell loss, duplicates and reordering apart.

/// Bytes of payload the tool needs (the rest is filler).
pub const MIN_PAYLOAD: usize = 20;

/// RTP payload type 0 (PCMU) and an 8 kHz clock: 160 samples per 20 ms.
pub const SAMPLES_PER_PACKET: u32 = 160;

/// Builds the clear RTP packet of `stream`'s packet number `seq`, with
/// `payload` bytes of payload, into `out` (cleared first; capacity for the
/// SRTP tag is left to the caller).
pub fn build(out: &mut Vec<u8>, stream: u32, seq: u64, sent_ns: u64, payload: usize) {
    out.clear();
    out.extend_from_slice(&[0x80, 0x00]);
    out.extend_from_slice(&(seq as u16).to_be_bytes());
    out.extend_from_slice(&((seq as u32).wrapping_mul(SAMPLES_PER_PACKET)).to_be_bytes());
    out.extend_from_slice(&ssrc(stream).to_be_bytes());
    out.extend_from_slice(&sent_ns.to_be_bytes());
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    let filler = payload.max(MIN_PAYLOAD) - MIN_PAYLOAD;
    out.extend(std::iter::repeat_n((stream as u8) ^ 0x5a, filler));
}

/// The SSRC of a stream.
pub fn ssrc(stream: u32) -> u32 {
    0x1000_0000 | stream
}

/// What a decrypted packet says: (stream, sequence, send time in ns).
pub fn parse(clear: &[u8]) -> Option<(u32, u64, u64)> {
    let p = clear.get(12..12 + MIN_PAYLOAD)?;
    let sent = u64::from_be_bytes(p[0..8].try_into().ok()?);
    let stream = u32::from_be_bytes(p[8..12].try_into().ok()?);
    let seq = u64::from_be_bytes(p[12..20].try_into().ok()?);
    Some((stream, seq, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip() {
        let mut p = Vec::new();
        build(&mut p, 7, 70_000, 123_456_789, 160);
        assert_eq!(p.len(), 12 + 160);
        assert_eq!(parse(&p), Some((7, 70_000, 123_456_789)));
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 70_000u64 as u16);
        assert!(parse(&p[..20]).is_none());
    }
}
