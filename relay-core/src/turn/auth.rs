//! TURN long-term credentials, sans-IO (`now` passed in):
//!
//! - the **REST scheme** coturn popularised (`use-auth-secret`): the
//!   username is `expiry:user` (Unix seconds), the password
//!   base64(HMAC-SHA1(secret, username)); several secrets at once, so one
//!   can be rotated while credentials signed by the other still work;
//! - the **long-term keys** (RFC 8489 §9.2.2) that MESSAGE-INTEGRITY
//!   (MD5 password algorithm) and MESSAGE-INTEGRITY-SHA256 (SHA-256) are
//!   keyed with — what a static user is stored as, never its password;
//! - **stateless nonces** (RFC 8489 §9.2): a nonce names its expiry and is
//!   signed for the client's address, so checking one needs no memory per
//!   stranger, and an old one is answered 438 (Stale Nonce).
//!
//! Usernames and passwords are used byte for byte (OpaqueString of ASCII
//! is the identity; the REST scheme's are ASCII).

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use sha2::Sha256;

/// Longest username accepted (RFC 8489 §14.3: fewer than 509 bytes).
pub const MAX_USERNAME: usize = 508;

/// The long-term key with the MD5 password algorithm:
/// MD5(username ":" realm ":" password), the key of MESSAGE-INTEGRITY.
pub fn long_term_key_md5(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    for part in [username, ":", realm, ":", password] {
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// The long-term key with the SHA-256 password algorithm:
/// SHA-256(username ":" realm ":" password), the key of
/// MESSAGE-INTEGRITY-SHA256.
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [username, ":", realm, ":", password] {
        sha2::Digest::update(&mut h, part.as_bytes());
    }
    sha2::Digest::finalize(h).into()
}

/// Why a REST username is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RestRefusal {
    /// Not `expiry:user` (or `user:expiry`), empty parts, or too long.
    #[error("the username is not expiry:user")]
    Malformed,
    /// Its expiry has passed.
    #[error("the credentials have expired")]
    Expired,
}

/// The shared secrets of the TURN REST scheme (`Debug` never shows them).
#[derive(Clone)]
pub struct RestSecrets {
    /// Newest first: credentials are issued with the first.
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for RestSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestSecrets").field("secrets", &self.secrets.len()).finish()
    }
}

impl RestSecrets {
    /// Secrets, newest first (issuing uses the first; any may have signed).
    pub fn new(secrets: Vec<Vec<u8>>) -> Self {
        Self { secrets }
    }

    /// Whether there is no secret (the realm has static users only).
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The password each secret gives `username` (newest first), when the
    /// username is well formed and not expired at `now_unix`. The caller
    /// derives the long-term key from each and checks the request's
    /// integrity with them.
    pub fn passwords(&self, username: &str, now_unix: u64) -> Result<Vec<String>, RestRefusal> {
        let expiry = rest_expiry(username)?;
        if expiry <= now_unix {
            return Err(RestRefusal::Expired);
        }
        Ok(self.secrets.iter().map(|s| rest_password(s, username)).collect())
    }

    /// Credentials for `user` valid for `lifetime` from `now_unix` (what a
    /// PBX hands its clients): `expiry:user` and its password under the
    /// newest secret. `None` without a secret or with a `user` that would
    /// not make a valid username.
    pub fn issue(&self, user: &str, now_unix: u64, lifetime: Duration) -> Option<(String, String)> {
        let secret = self.secrets.first()?;
        let username = format!("{}:{user}", now_unix.saturating_add(lifetime.as_secs()));
        rest_expiry(&username).ok()?;
        let password = rest_password(secret, &username);
        Some((username, password))
    }
}

/// The REST password of `username` under `secret`.
fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = crate::wire::srtp_auth::keyed_hmac(secret);
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The expiry a REST username names: `expiry:user` (coturn's order), or
/// `user:expiry`; both parts non-empty.
fn rest_expiry(username: &str) -> Result<u64, RestRefusal> {
    if username.len() > MAX_USERNAME {
        return Err(RestRefusal::Malformed);
    }
    let digits = |s: &str| {
        (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
    };
    let (first, rest) = username.split_once(':').ok_or(RestRefusal::Malformed)?;
    if let (Some(expiry), false) = (digits(first), rest.is_empty()) {
        return Ok(expiry);
    }
    let (user, last) = username.rsplit_once(':').ok_or(RestRefusal::Malformed)?;
    match (digits(last), user.is_empty()) {
        (Some(expiry), false) => Ok(expiry),
        _ => Err(RestRefusal::Malformed),
    }
}

/// What a nonce is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by this key for this client and not expired.
    Valid,
    /// Genuine but expired: answer 438 (Stale Nonce) with a fresh one.
    Stale,
    /// Not one of ours, or for another client: answer 401 with a fresh one.
    Invalid,
}

/// Issues and checks stateless nonces (`Debug` never shows the key).
#[derive(Clone)]
pub struct NonceKey {
    key: [u8; 32],
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

/// Hex digits of a nonce's expiry, then of its tag.
const EXPIRY_HEX: usize = 16;
const TAG_HEX: usize = 32;

impl NonceKey {
    /// A key (random per process, or shared by a cluster's nodes).
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A nonce for `client`, valid until `now_unix + lifetime`: its expiry
    /// and a 128-bit tag over the expiry and the address, in hex.
    pub fn issue(&self, client: IpAddr, now_unix: u64, lifetime: Duration) -> String {
        let expiry = now_unix.saturating_add(lifetime.as_secs());
        format!("{expiry:016x}{}", crate::wire::hex_lower(&self.tag(expiry, client)))
    }

    /// Whether `nonce` is ours, for `client`, and still fresh at `now_unix`.
    pub fn check(&self, nonce: &str, client: IpAddr, now_unix: u64) -> NonceCheck {
        if nonce.len() != EXPIRY_HEX + TAG_HEX || !nonce.is_ascii() {
            return NonceCheck::Invalid;
        }
        let (expiry, tag) = nonce.split_at(EXPIRY_HEX);
        let Ok(expiry) = u64::from_str_radix(expiry, 16) else { return NonceCheck::Invalid };
        if !crate::wire::ct_eq(crate::wire::hex_lower(&self.tag(expiry, client)).as_bytes(), tag.as_bytes()) {
            return NonceCheck::Invalid;
        }
        if expiry <= now_unix {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }

    /// HMAC-SHA256(key, expiry ‖ address), truncated to 128 bits.
    fn tag(&self, expiry: u64, client: IpAddr) -> [u8; 16] {
        #[allow(clippy::expect_used)]
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    /// `openssl dgst ARGS -binary` of `input`: the real tool as the oracle.
    fn openssl_digest(args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new("openssl")
            .arg("dgst")
            .args(args)
            .arg("-binary")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl (scripts/setup-debian.sh installs it)");
        child.stdin.take().expect("stdin").write_all(input).expect("write");
        let out = child.wait_with_output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?} failed");
        out.stdout
    }

    #[test]
    fn rest_passwords_and_long_term_keys_are_what_openssl_computes() {
        let (secret, username) = ("north-secret", "1800000000:alice");
        // coturn's documented recipe: HMAC-SHA1 of the username, base64.
        let want = base64::engine::general_purpose::STANDARD
            .encode(openssl_digest(&["-sha1", "-hmac", secret], username.as_bytes()));
        let secrets = RestSecrets::new(vec![secret.as_bytes().to_vec()]);
        assert_eq!(secrets.passwords(username, 1_700_000_000), Ok(vec![want.clone()]));
        let joined = format!("{username}:example.org:{want}");
        assert_eq!(
            long_term_key_md5(username, "example.org", &want).to_vec(),
            openssl_digest(&["-md5"], joined.as_bytes())
        );
        assert_eq!(
            long_term_key_sha256(username, "example.org", &want).to_vec(),
            openssl_digest(&["-sha256"], joined.as_bytes())
        );
    }

    #[test]
    fn rest_usernames_expire_rotate_and_are_checked_for_shape() {
        let now = 1_800_000_000;
        let (new, old) = (b"new-secret".to_vec(), b"old-secret".to_vec());
        // Credentials an older relay issued under the old secret still work
        // while both are configured, and the new one issues.
        let (username, password) =
            RestSecrets::new(vec![old.clone()]).issue("bob", now, Duration::from_secs(600)).expect("issued");
        assert_eq!(username, format!("{}:bob", now + 600));
        let rotating = RestSecrets::new(vec![new.clone(), old]);
        let passwords = rotating.passwords(&username, now).expect("valid");
        assert_eq!(passwords.len(), 2);
        assert_eq!(passwords[1], password, "the old secret's password is among them");
        let (fresh, fresh_password) = rotating.issue("bob", now, Duration::from_secs(600)).expect("issued");
        assert_eq!(RestSecrets::new(vec![new]).passwords(&fresh, now).expect("valid")[0], fresh_password);
        // Expiry, both orders, and what is not a REST username.
        assert_eq!(rotating.passwords(&username, now + 600), Err(RestRefusal::Expired));
        assert!(rotating.passwords("bob:1800000601", now).is_ok(), "user:expiry is accepted too");
        for bad in ["bob", ":", "123:", ":bob", "bob:", "x:y", "99999999999999999999999:bob", &"a".repeat(600)] {
            assert_eq!(rotating.passwords(bad, now), Err(RestRefusal::Malformed), "{bad:?}");
        }
        assert_eq!(rotating.issue("", now, Duration::from_secs(60)), None, "an empty user makes no username");
        assert_eq!(RestSecrets::new(Vec::new()).issue("bob", now, Duration::from_secs(60)), None);
        let shown = format!("{rotating:?}");
        assert!(!shown.contains("new-secret") && !shown.contains("old-secret"), "Debug shows no secret: {shown}");
    }

    #[test]
    fn nonces_expire_belong_to_their_client_and_cannot_be_forged() {
        let key = NonceKey::new([7; 32]);
        let (client, other): (IpAddr, IpAddr) =
            ("198.51.100.7".parse().expect("ip"), "2001:db8::7".parse().expect("ip"));
        let nonce = key.issue(client, 1_000, Duration::from_secs(60));
        assert_eq!(key.check(&nonce, client, 1_000), NonceCheck::Valid);
        assert_eq!(key.check(&nonce, client, 1_059), NonceCheck::Valid);
        assert_eq!(key.check(&nonce, client, 1_060), NonceCheck::Stale, "438, then a fresh nonce");
        assert_eq!(key.check(&nonce, other, 1_000), NonceCheck::Invalid, "another client's");
        assert_eq!(NonceKey::new([8; 32]).check(&nonce, client, 1_000), NonceCheck::Invalid, "another key's");
        // A later expiry with the old tag: refused.
        let extended = format!("{:016x}{}", 1_000_000u64, &nonce[16..]);
        assert_eq!(key.check(&extended, client, 1_000), NonceCheck::Invalid);
        for junk in ["", "zz", &"0".repeat(48), &"é".repeat(24)] {
            assert_eq!(key.check(junk, client, 1_000), NonceCheck::Invalid, "{junk:?}");
        }
        assert_eq!(format!("{key:?}"), "NonceKey(..)");
    }

    proptest! {
        #[test]
        fn any_username_or_nonce_is_answered_without_a_panic(s in ".{0,600}", now in any::<u64>()) {
            let secrets = RestSecrets::new(vec![b"k".to_vec()]);
            let _ = secrets.passwords(&s, now);
            let _ = NonceKey::new([1; 32]).check(&s, IpAddr::from([192, 0, 2, 1]), now);
        }
    }
}
