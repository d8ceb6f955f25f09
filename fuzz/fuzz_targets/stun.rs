//! STUN parsing, attribute iteration, XOR addresses, MESSAGE-INTEGRITY
//! (SHA-1 and SHA-256) and FINGERPRINT.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay_core::wire::stun::StunMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = StunMessage::parse(data) {
        let mut end = 20;
        for a in m.attributes() {
            assert!(a.offset >= end && a.offset + 4 + a.value.len() <= data.len());
            end = a.offset + 4 + a.value.len();
        }
        let _ = (m.class(), m.method(), m.transaction_id());
        let _ = m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt");
        let _ = m.verify_integrity_sha256(b"VOkJxbRl1RmTxUk/WvJxBt");
        for kind in [0x0012, 0x0016, 0x0020] {
            let _ = m.xor_address(kind);
        }
        let _ = m.verify_fingerprint();
    }
});
