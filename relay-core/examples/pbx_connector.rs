//! A PBX-side connector: the control channel a PBX behind NAT keeps to the
//! relay (TLS, tenant token), used to allocate a media session whose SRTP is
//! latched with authentication keys. The relay runs in the same process
//! here so the example runs by itself (CI runs it); a real PBX points
//! `ConnectorConfig` at the relay's `[control]` address.
//!
//! ```sh
//! cargo run -p relay-core --example pbx_connector --features control,connector,testkit
//! ```

use std::time::Duration;

use relay_core::api::{SessionRequest, SrtpAuthKeys};
use relay_core::connector::{Connector, ConnectorConfig};
use relay_core::control::auth::token_hash;
use relay_core::control::server::{ControlConfig, ControlServer, TenantCredentials};
use relay_core::tls::{load_certified_key, ClientTrust, ReloadableCert};
use relay_core::{Relay, RelayConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // --- The relay side (normally `ucmrc relay` with a [control] section).
    let relay = Relay::start(RelayConfig { port_min: 16400, port_max: 16499, workers: 1, ..RelayConfig::default() })?;
    let pki = relay_core::testkit::pki::issue("relay.example")?; // a throwaway CA and certificate
    let cert = ReloadableCert::new(load_certified_key(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())?);
    let acme = TenantCredentials { id: "acme".into(), token_sha256: token_hash("acme-secret-token"), services: vec![] };
    let server = ControlServer::new(ControlConfig::default(), cert, vec![acme], relay.handle())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control_addr = listener.local_addr()?;
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });

    // --- The PBX side: one connector, trusting the relay's CA.
    let connector = Connector::start(ConnectorConfig::new(
        &control_addr.to_string(),
        "relay.example",
        ClientTrust::CaPem(pki.ca_pem.into_bytes()),
        "acme",
        "acme-secret-token",
    ))?;
    let handle = connector.handle();
    handle.wait_connected(1, Duration::from_secs(10)).await?;
    println!("connected to the relay's control channel at {control_addr}");

    // SDES master keys from the SDPs: only the derived authentication keys
    // leave the PBX, so the relay can check packets but never decrypt them.
    let (pbx_key, pbx_salt) = ([1u8; 16], [2u8; 14]);
    let (phone_key, phone_salt) = ([3u8; 16], [4u8; 14]);
    let request = SessionRequest::default().with_srtp_auth(
        SrtpAuthKeys::from_master(&pbx_key, &pbx_salt, 80)?,
        SrtpAuthKeys::from_master(&phone_key, &phone_salt, 80)?,
    );
    let session = handle.allocate(request).await?;
    println!("session {}: the PBX sends to {}, the phone to {}", session.id, session.pbx.rtp, session.endpoint.rtp);
    let info = relay.handle().session(session.id.parse()?).await?;
    println!("the relay holds it for tenant {:?}, latching {}", info.tenant, info.latch.as_str());
    assert_eq!(info.tenant, "acme");

    handle.release(&session.id).await?;
    connector.stop().await;
    server.shutdown();
    tokio::task::spawn_blocking(move || relay.shutdown(Duration::ZERO)).await?;
    println!("released and stopped");
    Ok(())
}
