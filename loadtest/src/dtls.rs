//! DTLS-SRTP keying for `media --dtls`: each call's endpoint (DTLS client)
//! and PBX (DTLS server) do a real `webrtc-dtls` handshake *through the
//! relay*, on the same sockets and 5-tuples the media then uses, and the
//! SRTP master keys come from the exported keying material (RFC 5764 §4.2).
//! The relay forwards the handshake like any other datagram; it never sees
//! a key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use webrtc_dtls::config::{ClientAuthType, Config, ExtendedMasterSecretType};
use webrtc_dtls::conn::DTLSConn;
use webrtc_dtls::crypto::Certificate;
use webrtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc_util::conn::Conn;
use webrtc_util::KeyingMaterialExporter;

/// The two self-signed identities every call uses (generated once: key
/// generation would otherwise dominate the handshake cost).
pub struct Identities {
    endpoint: Certificate,
    pbx: Certificate,
}

impl Identities {
    /// Fresh ECDSA P-256 certificates for the endpoint and the PBX side.
    pub fn generate() -> Result<Self, String> {
        let e = |e: webrtc_dtls::Error| e.to_string();
        Ok(Self {
            endpoint: Certificate::generate_self_signed(vec!["endpoint".to_owned()]).map_err(e)?,
            pbx: Certificate::generate_self_signed(vec!["pbx".to_owned()]).map_err(e)?,
        })
    }
}

fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// One side's socket seen as a DTLS transport towards a fixed relay port.
/// Datagrams from anywhere else are ignored.
struct PeerConn {
    sock: UdpSocket,
    peer: SocketAddr,
}

#[async_trait::async_trait]
impl Conn for PeerConn {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Err(webrtc_util::Error::Other("not supported".into()))
    }
    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        loop {
            let (n, from) = self.sock.recv_from(buf).await?;
            if from == self.peer {
                return Ok(n);
            }
        }
    }
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok((self.recv(buf).await?, self.peer))
    }
    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.sock.send_to(buf, self.peer).await?)
    }
    async fn send_to(&self, buf: &[u8], _target: SocketAddr) -> webrtc_util::Result<usize> {
        self.send(buf).await
    }
    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.sock.local_addr()?)
    }
    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

fn config(own: &Certificate, peer: &Certificate, is_client: bool) -> Config {
    let peer_fp = peer.certificate.first().map(|c| fingerprint(c.as_ref())).unwrap_or_default();
    Config {
        certificates: vec![own.clone()],
        srtp_protection_profiles: vec![SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80],
        extended_master_secret: ExtendedMasterSecretType::Require,
        // Self-signed, pinned by fingerprint as SDP's a=fingerprint does.
        insecure_skip_verify: true,
        client_auth: if is_client { ClientAuthType::NoClientCert } else { ClientAuthType::RequireAnyClientCert },
        verify_peer_certificate: Some(Arc::new(move |certs: &[Vec<u8>], _| match certs.first() {
            Some(c) if fingerprint(c) == peer_fp => Ok(()),
            _ => Err(webrtc_dtls::Error::Other("fingerprint mismatch".into())),
        })),
        server_name: "localhost".into(),
        flight_interval: Duration::from_millis(200),
        ..Default::default()
    }
}

/// RFC 5764 §4.2: client_key ‖ server_key ‖ client_salt ‖ server_salt.
async fn masters(conn: &DTLSConn) -> Result<(Vec<u8>, Vec<u8>), String> {
    let km = conn
        .connection_state()
        .await
        .export_keying_material("EXTRACTOR-dtls_srtp", &[], 2 * (16 + 14))
        .await
        .map_err(|e| e.to_string())?;
    let (ck, rest) = km.split_at(16);
    let (sk, rest) = rest.split_at(16);
    let (cs, ss) = rest.split_at(14);
    Ok(([ck, cs].concat(), [sk, ss].concat()))
}

/// Handshakes one call through the relay. Returns the SRTP master keys
/// (key ‖ salt) the endpoint sends with and the PBX sends with.
pub async fn handshake(
    ids: &Identities,
    endpoint: &std::net::UdpSocket,
    to_endpoint_leg: SocketAddr,
    pbx: &std::net::UdpSocket,
    to_pbx_leg: SocketAddr,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let io = |e: std::io::Error| e.to_string();
    // Duplicates of the media sockets, closed again when this returns.
    let e_sock = UdpSocket::from_std(endpoint.try_clone().map_err(io)?).map_err(io)?;
    let p_sock = UdpSocket::from_std(pbx.try_clone().map_err(io)?).map_err(io)?;
    let e_conn: Arc<dyn Conn + Send + Sync> = Arc::new(PeerConn { sock: e_sock, peer: to_endpoint_leg });
    let p_conn: Arc<dyn Conn + Send + Sync> = Arc::new(PeerConn { sock: p_sock, peer: to_pbx_leg });
    let server_cfg = config(&ids.pbx, &ids.endpoint, false);
    let client_cfg = config(&ids.endpoint, &ids.pbx, true);
    let run = async {
        let server = tokio::spawn(DTLSConn::new(p_conn, server_cfg, false, None));
        let client = DTLSConn::new(e_conn, client_cfg, true, None).await.map_err(|e| format!("DTLS client: {e}"))?;
        let server = server.await.map_err(|e| e.to_string())?.map_err(|e| format!("DTLS server: {e}"))?;
        if client.selected_srtpprotection_profile() != SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 {
            return Err("unexpected SRTP profile".to_string());
        }
        let (c_client, c_server) = masters(&client).await?;
        let (s_client, s_server) = masters(&server).await?;
        if (c_client.as_slice(), c_server.as_slice()) != (s_client.as_slice(), s_server.as_slice()) {
            return Err("the two sides exported different keys".into());
        }
        let _ = client.close().await;
        let _ = server.close().await;
        Ok((c_client, c_server))
    };
    tokio::time::timeout(Duration::from_secs(10), run).await.map_err(|_| "DTLS handshake timed out".to_string())?
}
