//! A relay with its TLS control listener on loopback, certificates made
//! with rcgen, and connector settings for it (control-channel and tunnel
//! tests).

use std::net::SocketAddr;
use std::time::Duration;

use relay_core::connector::{Backoff, ConnectorConfig};
use relay_core::control::auth::{token_hash, AuthPolicy};
use relay_core::control::server::{ControlConfig, ControlServer, ControlStats, TenantCredentials};
use relay_core::tls::{load_certified_key, pem_fingerprint, ClientTrust, ReloadableCert};
use relay_core::{BackendKind, Relay, RelayConfig};

use crate::poll::eventually;
use tokio::net::TcpListener;

pub use crate::poll::WAIT;
/// acme's connector token.
pub const ACME_TOKEN: &str = "acme-token-0123456789";
/// globex's connector token.
pub const GLOBEX_TOKEN: &str = "globex-token-9876543210";

pub use relay_core::testkit::pki::TestPki as Pki;

/// A CA and a relay certificate it signed for `relay.test`.
pub fn pki() -> Pki {
    pki_for("relay.test")
}

/// A CA and a certificate it signed for `name`.
pub fn pki_for(name: &str) -> Pki {
    relay_core::testkit::pki::issue(name).expect("test certificates")
}

/// A relay, its control server on loopback, and the certificates it uses.
pub struct Env {
    /// The relay engine.
    pub relay: Relay,
    /// The control server.
    pub server: ControlServer,
    /// Where the control listener listens.
    pub addr: SocketAddr,
    /// The CA and the relay's certificate.
    pub pki: Pki,
}

/// Tenants acme and globex, each with its token and the `sip-tls` service.
pub fn tenants() -> Vec<TenantCredentials> {
    vec![
        TenantCredentials { id: "acme".into(), token_sha256: token_hash(ACME_TOKEN), services: vec!["sip-tls".into()] },
        TenantCredentials { id: "globex".into(), token_sha256: token_hash(GLOBEX_TOKEN), services: vec![] },
    ]
}

/// Control settings with short heartbeats and authentication delays.
pub fn quick() -> ControlConfig {
    ControlConfig {
        heartbeat: Duration::from_secs(1),
        auth: AuthPolicy { failure_delay: Duration::from_millis(20), ..AuthPolicy::default() },
        ..ControlConfig::default()
    }
}

/// Starts a relay and its control server with `config` on loopback.
pub async fn env(config: ControlConfig) -> Env {
    env_with(config, pki(), 23000).await
}

/// A relay with its control listener, presenting `pki`'s certificate, with
/// 5 000 media ports from `port_min`.
pub async fn env_with(config: ControlConfig, pki: Pki, port_min: u16) -> Env {
    let relay = Relay::start(RelayConfig {
        backend: BackendKind::Portable,
        port_min,
        port_max: port_min + 4999,
        workers: 1,
        ..RelayConfig::default()
    })
    .expect("relay starts");
    let cert = ReloadableCert::new(load_certified_key(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).expect("key"));
    let server = ControlServer::new(config, cert, tenants(), relay.handle()).expect("server");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener, std::future::pending()).await });
    Env { relay, server, addr, pki }
}

impl Env {
    /// Connector settings for `tenant` to this relay, trusting its CA.
    pub fn connector(&self, tenant: &str, token: &str, id: &str) -> ConnectorConfig {
        self.connector_to(self.addr, tenant, token, id)
    }

    /// [`connector`](Self::connector) to another address.
    pub fn connector_to(&self, addr: SocketAddr, tenant: &str, token: &str, id: &str) -> ConnectorConfig {
        let mut c = ConnectorConfig::new(
            &addr.to_string(),
            "relay.test",
            ClientTrust::CaPem(self.pki.ca_pem.clone().into_bytes()),
            tenant,
            token,
        );
        c.connector_id = id.into();
        c.heartbeat = Duration::from_secs(1);
        c.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
        c.request_timeout = Duration::from_secs(5);
        c
    }

    /// Trust pinned to the relay certificate's fingerprint.
    pub fn pinned(&self) -> ClientTrust {
        ClientTrust::pinned_hex(&pem_fingerprint(self.pki.cert_pem.as_bytes()).expect("fp")).expect("pin")
    }

    /// Waits until the server's counters satisfy `f`.
    pub async fn stats_until(&self, what: &str, f: impl Fn(&ControlStats) -> bool) -> ControlStats {
        eventually(what, || self.server.stats(), f).await
    }
}
