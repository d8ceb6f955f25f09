//! Plain RTP and RTCP packets, and the SDES master keys the tests protect
//! them with.

/// 30 bytes of SDES master key ‖ salt derived from a seed.
pub fn master(seed: u8) -> Vec<u8> {
    (0..30u8).map(|i| i.wrapping_mul(31).wrapping_add(seed.wrapping_mul(7)).wrapping_add(1)).collect()
}

/// A plain RTP packet with room for libsrtp's trailer.
pub fn rtp(ssrc: u32, seq: u16, ts: u32, payload_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload_len + 160);
    p.extend_from_slice(&[0x80, 0]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..payload_len).map(|i| (i as u8) ^ (seq as u8)));
    p
}

/// A plain RTCP receiver report (no report blocks).
pub fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + 160);
    p.extend_from_slice(&[0x80, 201, 0, 1]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}
