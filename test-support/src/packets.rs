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

/// A plain RTCP sender report whose NTP timestamp's middle 32 bits are
/// `ntp_middle` (what a receiver report's LSR names), with no blocks.
pub fn rtcp_sr(ssrc: u32, ntp_middle: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(28 + 160);
    p.extend_from_slice(&[0x80, 200, 0, 6]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&(ntp_middle >> 16).to_be_bytes());
    p.extend_from_slice(&(ntp_middle << 16).to_be_bytes());
    p.extend_from_slice(&[0; 12]);
    p
}

/// What one report block says (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// The source reported on.
    pub about: u32,
    /// Fraction lost, /256.
    pub fraction_lost: u8,
    /// Cumulative packets lost.
    pub cumulative_lost: u32,
    /// Interarrival jitter, RTP timestamp units.
    pub jitter: u32,
    /// The last SR's NTP middle bits.
    pub lsr: u32,
    /// Delay since that SR, 1/65536 s.
    pub dlsr: u32,
}

/// A plain RTCP receiver report from `ssrc` with one report block.
pub fn rtcp_rr_with(ssrc: u32, r: Report) -> Vec<u8> {
    let mut p = Vec::with_capacity(32 + 160);
    p.extend_from_slice(&[0x81, 201, 0, 7]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&r.about.to_be_bytes());
    p.extend_from_slice(&((u32::from(r.fraction_lost) << 24) | (r.cumulative_lost & 0x00ff_ffff)).to_be_bytes());
    p.extend_from_slice(&1000u32.to_be_bytes());
    p.extend_from_slice(&r.jitter.to_be_bytes());
    p.extend_from_slice(&r.lsr.to_be_bytes());
    p.extend_from_slice(&r.dlsr.to_be_bytes());
    p
}
