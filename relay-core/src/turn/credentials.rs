//! TURN credentials for connectors (feature `control`): the REST scheme
//! under the newest shared secret of the tenant's realm, so the TURN
//! server accepts them exactly as it accepts a PBX's own.

use std::time::Duration;

use super::auth::RestSecrets;
use super::settings::TurnSettings;
use crate::control::turn_credentials::{IssueError, IssuedCredentials, TurnCredentialIssuer};

/// One tenant's realm that can issue.
struct IssuingRealm {
    tenant: String,
    name: String,
    secrets: RestSecrets,
}

/// Issues REST-scheme credentials from the realms of a [`TurnSettings`]:
/// a tenant gets credentials of its first realm that has shared secrets,
/// and nothing without one.
pub struct RestIssuer {
    realms: Vec<IssuingRealm>,
    uris: Vec<String>,
}

impl std::fmt::Debug for RestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestIssuer")
            .field("realms", &self.realms.iter().map(|r| (&r.tenant, &r.name)).collect::<Vec<_>>())
            .field("uris", &self.uris)
            .finish()
    }
}

impl RestIssuer {
    /// An issuer for `settings`' realms, telling clients `uris` (the
    /// server's `turn:`/`turns:` URIs).
    pub fn new(settings: &TurnSettings, uris: Vec<String>) -> Self {
        let realms = settings
            .realms
            .iter()
            .filter(|r| !r.rest.is_empty())
            .map(|r| IssuingRealm { tenant: r.tenant.clone(), name: r.name.clone(), secrets: r.rest.clone() })
            .collect();
        Self { realms, uris }
    }
}

impl TurnCredentialIssuer for RestIssuer {
    fn issue(
        &self,
        tenant: &str,
        user: &str,
        lifetime: Duration,
        now_unix: u64,
    ) -> Result<IssuedCredentials, IssueError> {
        let realm = self.realms.iter().find(|r| r.tenant == tenant).ok_or(IssueError::NotConfigured)?;
        let (username, password) = realm.secrets.issue(user, now_unix, lifetime).ok_or(IssueError::InvalidUser)?;
        Ok(IssuedCredentials { username, password, realm: realm.name.clone(), ttl: lifetime, uris: self.uris.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::settings::{Realm, RelayAddress, StaticUser, TurnLimits};

    fn settings() -> TurnSettings {
        let realm = |name: &str, tenant: &str, secrets: Vec<Vec<u8>>| Realm {
            name: name.into(),
            tenant: tenant.into(),
            rest: RestSecrets::new(secrets),
            users: vec![StaticUser::from_password("bob", name, "builder")],
            allow_peers: vec![],
        };
        let ip = "203.0.113.1".parse().expect("ip");
        TurnSettings {
            realms: vec![
                realm("static.example", "acme", vec![]),
                realm("turn.acme.example", "acme", vec![b"acme-new-secret".to_vec(), b"acme-old-secret".to_vec()]),
                realm("turn.initech.example", "initech", vec![b"initech-secret".to_vec()]),
                realm("turn.globex.example", "globex", vec![]),
            ],
            relay_v4: Some(RelayAddress { bind: ip, advertised: ip }),
            relay_v6: None,
            first_port: 20000,
            last_port: 20099,
            policy: crate::PeerPolicy::default(),
            limits: TurnLimits::default(),
        }
    }

    #[test]
    fn a_tenant_gets_credentials_of_its_own_realm_that_its_realm_accepts() {
        let s = settings();
        let uris = vec!["turn:203.0.113.1:3478?transport=udp".to_string()];
        let issuer = RestIssuer::new(&s, uris.clone());
        let now = 1_800_000_000;
        let c = issuer.issue("acme", "ext-201", Duration::from_secs(600), now).expect("issued");
        assert_eq!(c.username, "1800000600:ext-201");
        assert_eq!(c.realm, "turn.acme.example", "the realm with secrets, not the static one");
        assert_eq!((c.ttl, &c.uris), (Duration::from_secs(600), &uris));
        // The realm's secrets accept it (signed with the newest), another
        // tenant's do not, and it expires.
        let accepted = s.realms[1].rest.passwords(&c.username, now + 599).expect("fresh");
        assert_eq!(accepted.first(), Some(&c.password));
        let foreign = s.realms[2].rest.passwords(&c.username, now).expect("well formed");
        assert!(!foreign.contains(&c.password), "initech's secret does not sign acme's credentials");
        assert!(s.realms[1].rest.passwords(&c.username, now + 600).is_err(), "expired after its lifetime");
        assert!(!format!("{c:?}").contains(&c.password), "Debug masks the password");
        // A tenant without a realm with secrets, or unknown, gets nothing.
        assert_eq!(issuer.issue("globex", "ext-1", Duration::from_secs(600), now), Err(IssueError::NotConfigured));
        assert_eq!(issuer.issue("nobody", "ext-1", Duration::from_secs(600), now), Err(IssueError::NotConfigured));
    }
}
