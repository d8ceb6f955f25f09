//! The messages the server writes: responses to requests (signed with the
//! allocation's key when the request was authenticated), challenges
//! (401/438 with REALM and NONCE), and Data indications.

use std::net::SocketAddr;

use super::allocation::IntegrityKey;
use super::proto::{message_type, ErrorCode, Method, ATTR_DATA, ATTR_NONCE, ATTR_REALM, ATTR_XOR_PEER_ADDRESS};
use crate::wire::stun::StunClass;
use crate::wire::stun_writer::StunWriter;

/// A response being written: the writer and how it is to be signed.
pub struct Answer {
    writer: StunWriter,
    key: Option<IntegrityKey>,
}

impl Answer {
    /// A success response to `method` transaction `txid`.
    pub fn success(method: Method, txid: [u8; 12], key: Option<IntegrityKey>) -> Self {
        Self { writer: StunWriter::new(message_type(method, StunClass::Success), txid), key }
    }

    /// An error response with `code`.
    pub fn error(method: Method, txid: [u8; 12], code: ErrorCode, key: Option<IntegrityKey>) -> Self {
        let mut writer = StunWriter::new(message_type(method, StunClass::Error), txid);
        writer.error_code(code.number(), code.reason());
        Self { writer, key }
    }

    /// The attributes so far, to append more.
    pub fn writer(&mut self) -> &mut StunWriter {
        &mut self.writer
    }

    /// The message: MESSAGE-INTEGRITY(-SHA256) when keyed, then
    /// FINGERPRINT.
    pub fn finish(mut self) -> Vec<u8> {
        match self.key {
            Some(IntegrityKey::Sha1(key)) => {
                self.writer.message_integrity(&key);
            }
            Some(IntegrityKey::Sha256(key)) => {
                self.writer.message_integrity_sha256(&key);
            }
            Some(IntegrityKey::Sha256WithMd5Key(key)) => {
                self.writer.message_integrity_sha256(&key);
            }
            None => {}
        }
        self.writer.fingerprint();
        self.writer.finish()
    }
}

/// A 401 or 438 challenge: the error, REALM and a fresh NONCE, unsigned.
pub fn challenge(method: Method, txid: [u8; 12], code: ErrorCode, realm: &str, nonce: &str) -> Vec<u8> {
    let mut a = Answer::error(method, txid, code, None);
    a.writer().attribute(ATTR_REALM, realm.as_bytes()).attribute(ATTR_NONCE, nonce.as_bytes());
    a.finish()
}

/// A Data indication carrying `data` from `peer` (no FINGERPRINT: a
/// client reads it by its method, and every byte more is overhead).
pub fn data_indication(peer: SocketAddr, data: &[u8], txid: [u8; 12]) -> Vec<u8> {
    let mut w = StunWriter::new(message_type(Method::Data, StunClass::Indication), txid);
    w.xor_address(ATTR_XOR_PEER_ADDRESS, peer).attribute(ATTR_DATA, data);
    w.finish()
}
