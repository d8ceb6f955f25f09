//! STUN parsing, attribute iteration, MESSAGE-INTEGRITY and FINGERPRINT.
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
        let _ = m.verify_fingerprint();
    }
});
