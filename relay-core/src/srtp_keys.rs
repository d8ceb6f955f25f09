//! SRTP session-key derivation for the PBX side (RFC 3711 §4.3).
//!
//! A PBX that knows an SDES master key can hand the relay the *authentication*
//! keys only, so the relay can verify packets (authenticated latching,
//! `verify = all`) while it still cannot decrypt anything.
//!
//! ```
//! use relay_core::srtp_keys::{SrtpMasterKey, derive_auth_keys};
//! let master = SrtpMasterKey::new(&[0x11; 16], &[0x22; 14]).unwrap();
//! let keys = derive_auth_keys(&master);
//! assert_ne!(keys.srtp, keys.srtcp);
//! ```
#![forbid(unsafe_code)]

use aes::cipher::{BlockEncrypt, KeyInit};

use crate::wire::srtp_auth::AUTH_KEY_LEN;

/// KDF label for the SRTP encryption key.
pub const LABEL_SRTP_ENCRYPTION: u8 = 0x00;
/// KDF label for the SRTP authentication key.
pub const LABEL_SRTP_AUTH: u8 = 0x01;
/// KDF label for the SRTP salt.
pub const LABEL_SRTP_SALT: u8 = 0x02;
/// KDF label for the SRTCP encryption key.
pub const LABEL_SRTCP_ENCRYPTION: u8 = 0x03;
/// KDF label for the SRTCP authentication key.
pub const LABEL_SRTCP_AUTH: u8 = 0x04;
/// KDF label for the SRTCP salt.
pub const LABEL_SRTCP_SALT: u8 = 0x05;

/// An invalid master key or salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The master key is not 16 (AES-128) or 32 (AES-256) bytes.
    #[error("master key must be 16 or 32 bytes, got {0}")]
    KeyLength(usize),
    /// The master salt is not 14 bytes.
    #[error("master salt must be 14 bytes, got {0}")]
    SaltLength(usize),
}

/// An SRTP master key and salt (AES_CM_128 or AES_256_CM, RFC 3711 / 6188).
#[derive(Clone)]
pub struct SrtpMasterKey {
    key: MasterCipher,
    salt: [u8; 14],
}

#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // short-lived, never stored in bulk
enum MasterCipher {
    Aes128(aes::Aes128),
    Aes256(aes::Aes256),
}

impl std::fmt::Debug for SrtpMasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpMasterKey(<redacted>)")
    }
}

impl SrtpMasterKey {
    /// Builds a master key from its key (16 or 32 bytes) and salt (14 bytes).
    pub fn new(key: &[u8], salt: &[u8]) -> Result<Self, KeyError> {
        let salt: [u8; 14] = salt.try_into().map_err(|_| KeyError::SaltLength(salt.len()))?;
        let key = match key.len() {
            16 => MasterCipher::Aes128(aes::Aes128::new(key.into())),
            32 => MasterCipher::Aes256(aes::Aes256::new(key.into())),
            n => return Err(KeyError::KeyLength(n)),
        };
        Ok(Self { key, salt })
    }

    /// Splits SDES `inline:` key material (key ‖ salt, 30 or 46 bytes).
    pub fn from_concatenated(material: &[u8]) -> Result<Self, KeyError> {
        match material.len() {
            30 => Self::new(&material[..16], &material[16..]),
            46 => Self::new(&material[..32], &material[32..]),
            n => Err(KeyError::KeyLength(n.saturating_sub(14))),
        }
    }

    /// The RFC 3711 §4.3.1 PRF with key-derivation rate 0: fills `out` with
    /// the AES-CM keystream for `label`.
    pub fn derive(&self, label: u8, out: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        iv[7] ^= label;
        for (counter, chunk) in out.chunks_mut(16).enumerate() {
            let mut block = iv;
            let c = (counter as u16).to_be_bytes();
            block[14] = c[0];
            block[15] = c[1];
            let mut block = aes::Block::from(block);
            match &self.key {
                MasterCipher::Aes128(k) => k.encrypt_block(&mut block),
                MasterCipher::Aes256(k) => k.encrypt_block(&mut block),
            }
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
}

/// The two 20-byte authentication keys the relay needs for one direction of
/// one SRTP context.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKeys {
    /// SRTP authentication key (label 0x01).
    pub srtp: [u8; AUTH_KEY_LEN],
    /// SRTCP authentication key (label 0x04).
    pub srtcp: [u8; AUTH_KEY_LEN],
}

impl std::fmt::Debug for AuthKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKeys(<redacted>)")
    }
}

/// Derives the SRTP and SRTCP authentication keys from a master key.
pub fn derive_auth_keys(master: &SrtpMasterKey) -> AuthKeys {
    let mut keys = AuthKeys { srtp: [0; AUTH_KEY_LEN], srtcp: [0; AUTH_KEY_LEN] };
    master.derive(LABEL_SRTP_AUTH, &mut keys.srtp);
    master.derive(LABEL_SRTCP_AUTH, &mut keys.srtcp);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    /// RFC 3711 Appendix B.3 key-derivation test vectors.
    #[test]
    fn rfc3711_b3_vectors() {
        let master = SrtpMasterKey::new(&hex("E1F97A0D3E018BE0D64FA32C06DE4139"), &hex("0EC675AD498AFEEBB6960B3AABE6"))
            .expect("valid");
        let mut cipher_key = [0u8; 16];
        master.derive(LABEL_SRTP_ENCRYPTION, &mut cipher_key);
        assert_eq!(cipher_key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut salt = [0u8; 14];
        master.derive(LABEL_SRTP_SALT, &mut salt);
        assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let keys = derive_auth_keys(&master);
        assert_eq!(keys.srtp.to_vec(), hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"));
    }

    #[test]
    fn rejects_bad_lengths() {
        assert_eq!(SrtpMasterKey::new(&[0; 15], &[0; 14]).err(), Some(KeyError::KeyLength(15)));
        assert_eq!(SrtpMasterKey::new(&[0; 16], &[0; 12]).err(), Some(KeyError::SaltLength(12)));
        assert!(SrtpMasterKey::from_concatenated(&[0; 30]).is_ok());
        assert!(SrtpMasterKey::from_concatenated(&[0; 46]).is_ok());
        assert!(SrtpMasterKey::from_concatenated(&[0; 31]).is_err());
    }
}
