//! Short-lived TURN credentials a connector asks for on its channel
//! (`turn_credentials`), to hand to the PBX's Wave and browser clients.
//!
//! The control listener checks the request (the user's characters and
//! length, the lifetime's bounds) and asks a [`TurnCredentialIssuer`] for
//! the channel's tenant: the relay's TURN server provides one
//! (`relay_core::turn::credentials::RestIssuer`, the REST scheme under the
//! tenant's realm's newest secret). A tenant only ever gets credentials of
//! its own realm: the tenant is the authenticated channel's, never a field
//! of the request.

use std::time::Duration;

use crate::codes::ErrorCode;

/// Lifetime when the request names none (a day: a client's credentials
/// must outlive its longest call, since refreshes are checked against them).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Shortest lifetime issued.
pub const MIN_LIFETIME: Duration = Duration::from_secs(60);
/// Longest lifetime issued.
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest `user`.
pub const MAX_USER_LEN: usize = 64;

/// Credentials for one client.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCredentials {
    /// TURN username (`expiry:user`).
    pub username: String,
    /// TURN password.
    pub password: String,
    /// The realm the relay challenges with.
    pub realm: String,
    /// How long they stay valid.
    pub ttl: Duration,
    /// The relay's TURN URIs (RFC 7065).
    pub uris: Vec<String>,
}

impl std::fmt::Debug for IssuedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredentials")
            .field("username", &self.username)
            .field("password", &"<masked>")
            .field("realm", &self.realm)
            .field("ttl", &self.ttl)
            .field("uris", &self.uris)
            .finish()
    }
}

/// Why no credentials were issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The relay has no TURN realm with shared secrets for the tenant.
    #[error("no TURN realm with shared secrets for this tenant")]
    NotConfigured,
    /// `user` is empty, too long or has characters outside the allowed set.
    #[error("user must be 1-64 of A-Z a-z 0-9 . _ @ + -")]
    InvalidUser,
    /// The lifetime is outside the bounds.
    #[error("lifetime_secs must be between 60 and 604800")]
    InvalidLifetime,
}

impl IssueError {
    /// The stable code of the refusal.
    pub fn code(self) -> ErrorCode {
        match self {
            IssueError::NotConfigured => ErrorCode::TurnNotConfigured,
            IssueError::InvalidUser | IssueError::InvalidLifetime => ErrorCode::InvalidField,
        }
    }
}

/// Issues TURN credentials for a tenant's clients.
pub trait TurnCredentialIssuer: Send + Sync {
    /// Credentials for `user` (already checked by [`check_user`]) of
    /// `tenant`, valid for `lifetime` (within the bounds) from `now_unix`.
    fn issue(
        &self,
        tenant: &str,
        user: &str,
        lifetime: Duration,
        now_unix: u64,
    ) -> Result<IssuedCredentials, IssueError>;
}

/// Whether `user` may name a client: 1–[`MAX_USER_LEN`] of
/// `A–Z a–z 0–9 . _ @ + -` (no `:`, which separates the REST username's
/// parts, and nothing a log or a listing would have to escape).
pub fn check_user(user: &str) -> Result<(), IssueError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b".@_+-".contains(&b);
    if user.is_empty() || user.len() > MAX_USER_LEN || !user.bytes().all(allowed) {
        return Err(IssueError::InvalidUser);
    }
    Ok(())
}

/// The lifetime a request asks for, within the bounds
/// ([`DEFAULT_LIFETIME`] when it names none).
pub fn check_lifetime(secs: Option<u64>) -> Result<Duration, IssueError> {
    let lifetime = secs.map_or(DEFAULT_LIFETIME, Duration::from_secs);
    if lifetime < MIN_LIFETIME || lifetime > MAX_LIFETIME {
        return Err(IssueError::InvalidLifetime);
    }
    Ok(lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_lifetimes_are_bounded() {
        for good in ["ext-201", "alice@acme.example", "a", "dev_1.2+x", &"x".repeat(64)] {
            assert_eq!(check_user(good), Ok(()), "{good}");
        }
        for bad in ["", "a:b", "a b", "ä", "a\n", "a/b", &"x".repeat(65)] {
            assert_eq!(check_user(bad), Err(IssueError::InvalidUser), "{bad:?}");
        }
        assert_eq!(check_lifetime(None), Ok(DEFAULT_LIFETIME));
        assert_eq!(check_lifetime(Some(60)), Ok(Duration::from_secs(60)));
        assert_eq!(check_lifetime(Some(604_800)), Ok(MAX_LIFETIME));
        for bad in [0, 59, 604_801, u64::MAX] {
            assert_eq!(check_lifetime(Some(bad)), Err(IssueError::InvalidLifetime), "{bad}");
        }
        assert_eq!(IssueError::NotConfigured.code(), ErrorCode::TurnNotConfigured);
    }
}
