//! The relay-side SRTP authentication keys for an endpoint's master key.

use relay_core::srtp_keys::{derive_auth_keys, SrtpMasterKey};
use relay_core::SrtpAuth;

/// The relay-side authentication keys for packets protected with `master`.
pub fn auth_for(master: &[u8]) -> SrtpAuth {
    let m = SrtpMasterKey::from_concatenated(master).expect("30-byte master");
    SrtpAuth::sha1_80(&derive_auth_keys(&m))
}

/// The relay-side authentication keys for `AES_CM_128_HMAC_SHA1_32` streams.
pub fn auth32_for(master: &[u8]) -> SrtpAuth {
    let m = SrtpMasterKey::from_concatenated(master).expect("30-byte master");
    SrtpAuth::sha1_32(&derive_auth_keys(&m))
}
