//! STUN Binding requests as ICE agents send them.

/// A STUN Binding request without MESSAGE-INTEGRITY (a keepalive-style check).
pub fn stun_request_unsigned(txid: [u8; 12]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&txid);
    m
}

/// A STUN Binding request with USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
pub fn stun_request(password: &[u8], txid: [u8; 12]) -> Vec<u8> {
    relay_core::wire::stun::binding_request(b"relay:test", password, txid)
}
