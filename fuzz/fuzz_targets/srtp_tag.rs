//! SRTP/SRTCP tag verification and rollover estimation on arbitrary input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::wire::srtp_auth::{estimate_index, AuthVerifier, TagLen};

fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (head, packet) = data.split_at(12);
    let roc = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let highest = u64::from_be_bytes([head[4], head[5], head[6], head[7], head[8], head[9], head[10], head[11]]) >> 16;
    for tag in [TagLen::Bits80, TagLen::Bits32] {
        let v = AuthVerifier::new(&[7u8; 20], tag);
        let _ = v.verify_srtp(packet, roc);
        if let Some(index) = v.verify_srtcp(packet) {
            assert!(index < 1 << 31);
        }
    }
    if packet.len() >= 2 {
        let seq = u16::from_be_bytes([packet[0], packet[1]]);
        if let Some(i) = estimate_index(highest, seq) {
            assert_eq!(i & 0xffff, u64::from(seq));
            let (roc_est, roc_hi) = ((i >> 16) as i64, (highest >> 16) as i64);
            assert!((roc_est - roc_hi).abs() <= 1);
        }
    }
});
