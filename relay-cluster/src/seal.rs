//! Authenticated encryption under the cluster key: every record a node
//! writes to Redis is sealed with AES-256-GCM before it leaves the process
//! ([`crate::record`]). Each sealed blob is bound to its place by the
//! associated data, so a blob copied elsewhere does not open. Old keys may
//! be kept for reading while a new key is rolled out.
//!
//! Format: `<key id: 8 hex digits>.<base64(nonce ‖ ciphertext ‖ tag)>`,
//! the key id being the first four bytes of the key's SHA-256.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use sha2::Digest as _;

/// A 256-bit cluster key (the same on every node of a group).
#[derive(Clone)]
pub struct ClusterKey {
    id: [u8; 4],
    cipher: Aes256Gcm,
    /// The seed of keys derived for other uses (never the key itself).
    derive_seed: [u8; 32],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({})", hex::encode(self.id))
    }
}

/// Why a sealed secret did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not `<key id>.<base64>`, or too short to hold a nonce and a tag.
    #[error("malformed sealed secret")]
    Malformed,
    /// Sealed under a key this node does not have.
    #[error("sealed under unknown key {0}")]
    UnknownKey(String),
    /// The tag does not verify (wrong key, tampered, or moved elsewhere).
    #[error("sealed secret does not verify")]
    Forged,
}

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster key must be 64 hex digits (32 bytes)")]
pub struct BadKey;

impl ClusterKey {
    /// A key from its 32 bytes.
    pub fn new(bytes: &[u8; 32]) -> Self {
        let digest = sha2::Sha256::digest(bytes);
        let mut id = [0u8; 4];
        id.copy_from_slice(&digest[..4]);
        let mut seed = sha2::Sha256::new();
        seed.update(b"ucmrc cluster key derivation\0");
        seed.update(bytes);
        Self { id, cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)), derive_seed: seed.finalize().into() }
    }

    /// A key from 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, BadKey> {
        let bytes = hex::decode(text.trim()).map_err(|_| BadKey)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| BadKey)?;
        Ok(Self::new(&bytes))
    }

    /// The key's public id (8 hex digits), as sealed blobs name it.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }
}

/// Seals and opens secrets: seals with the current key, opens with it or
/// any previous one.
#[derive(Debug, Clone)]
pub struct Sealer {
    current: ClusterKey,
    previous: Vec<ClusterKey>,
}

impl Sealer {
    /// A sealer with `current` and keys still accepted for reading.
    pub fn new(current: ClusterKey, previous: Vec<ClusterKey>) -> Self {
        Self { current, previous }
    }

    /// The id of the key new blobs are sealed under.
    pub fn current_key_id(&self) -> String {
        self.current.id()
    }

    /// The key id a blob names (before opening it), if it has the format.
    pub fn key_id_of(sealed: &str) -> Option<&str> {
        sealed.split_once('.').map(|(id, _)| id)
    }

    /// A 256-bit key for `purpose`, the same on every node with the same
    /// current key (e.g. TURN's nonce key, so that nonces survive a
    /// takeover); it reveals nothing of the cluster key.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(self.current.derive_seed);
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    /// Seals `plain` for the place `aad` names.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = self
            .current
            .cipher
            .encrypt(&nonce, Payload { msg: plain, aad })
            .expect("AES-GCM encryption of a bounded buffer cannot fail");
        let mut blob = Vec::with_capacity(nonce.len() + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        format!("{}.{}", self.current.id(), base64::engine::general_purpose::STANDARD_NO_PAD.encode(blob))
    }

    /// Opens a blob sealed for `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let (id, b64) = sealed.split_once('.').ok_or(SealError::Malformed)?;
        let blob = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64).map_err(|_| SealError::Malformed)?;
        if blob.len() < 12 + 16 {
            return Err(SealError::Malformed);
        }
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id() == id)
            .ok_or_else(|| SealError::UnknownKey(id.chars().take(8).collect()))?;
        let (nonce, body) = blob.split_at(12);
        key.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad }).map_err(|_| SealError::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_in_their_place_and_under_a_known_key() {
        let (k1, k2) = (ClusterKey::new(&[1; 32]), ClusterKey::new(&[2; 32]));
        let s = Sealer::new(k1.clone(), Vec::new());
        let blob = s.seal(b"srtp-key-material", b"group/0001/pbx");
        assert!(!blob.contains("srtp"), "{blob}");
        assert_ne!(blob, s.seal(b"srtp-key-material", b"group/0001/pbx"), "a fresh nonce each time");
        assert_eq!(s.open(&blob, b"group/0001/pbx").expect("opens"), b"srtp-key-material");
        assert_eq!(s.open(&blob, b"group/0001/endpoint"), Err(SealError::Forged), "moved to another leg");
        // Any flipped bit of the nonce, ciphertext or tag.
        let (id, b64) = blob.split_once('.').expect("format");
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64).expect("base64");
        for i in [0, 12, raw.len() - 1] {
            let mut t = raw.clone();
            t[i] ^= 1;
            let tampered = format!("{id}.{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(&t));
            assert_eq!(s.open(&tampered, b"group/0001/pbx"), Err(SealError::Forged), "bit flipped at {i}");
        }
        // Rolled: the new key seals, the old one still opens old blobs.
        let rolled = Sealer::new(k2.clone(), vec![k1.clone()]);
        assert_eq!(rolled.open(&blob, b"group/0001/pbx").expect("opens"), b"srtp-key-material");
        assert!(rolled.seal(b"x", b"a").starts_with(&k2.id()));
        let other = Sealer::new(k2, Vec::new());
        assert!(matches!(other.open(&blob, b"group/0001/pbx"), Err(SealError::UnknownKey(_))));
        assert_eq!(s.open("nonsense", b""), Err(SealError::Malformed));
        assert_eq!(s.open(&format!("{}.AAAA", k1.id()), b""), Err(SealError::Malformed));
        assert!(ClusterKey::from_hex(&"ab".repeat(32)).is_ok());
        assert_eq!(ClusterKey::from_hex("abcd").err(), Some(BadKey));
    }
}
