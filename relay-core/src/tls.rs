//! TLS for the control channel (rustls, `ring` provider): TLS 1.2 and 1.3
//! only, a server certificate that can be swapped at run time (SIGHUP), and
//! the connector's trust (a CA bundle or a pinned certificate).

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

/// Why a certificate, key or trust setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The certificate PEM holds no certificate or cannot be parsed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The key PEM holds no private key, cannot be parsed, or does not
    /// belong to the certificate.
    #[error("private key: {0}")]
    Key(String),
    /// The CA bundle holds no usable certificate.
    #[error("CA bundle: {0}")]
    Ca(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The protocol versions the control channel (and every UCMRC TLS endpoint)
/// accepts: 1.3 and 1.2. Older versions and plaintext are refused.
pub static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Parses a PEM certificate chain and its private key, and checks that they
/// belong together.
pub fn load_certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate("no CERTIFICATE block found".into()));
    }
    // Never echo key material: the parse error names only the problem.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::Key("no usable private key".into()))?;
    CertifiedKey::from_der(chain, key, &provider()).map(Arc::new).map_err(|e| TlsError::Key(e.to_string()))
}

/// The SHA-256 fingerprint of a DER certificate, lowercase hex — what a
/// connector pins.
pub fn certificate_fingerprint(der: &[u8]) -> String {
    crate::wire::hex_lower(&Sha256::digest(der))
}

/// The fingerprint of the first certificate in a PEM file.
pub fn pem_fingerprint(cert_pem: &[u8]) -> Result<String, TlsError> {
    let cert = CertificateDer::from_pem_slice(cert_pem).map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok(certificate_fingerprint(&cert))
}

/// A server certificate that can be replaced while the listener runs:
/// handshakes after [`replace`](Self::replace) present the new one,
/// established channels keep theirs.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Starts with `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self { current: RwLock::new(key) })
    }

    /// Swaps in a new certificate and key.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
    }

    /// Fingerprint of the certificate served now.
    pub fn fingerprint(&self) -> String {
        let k = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        k.cert.first().map(|c| certificate_fingerprint(c)).unwrap_or_default()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A rustls server configuration: TLS 1.2/1.3, no client certificates,
/// certificate from `cert`.
pub fn server_config(cert: Arc<ReloadableCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    Ok(Arc::new(cfg))
}

/// How a connector decides to trust the relay.
#[derive(Clone, PartialEq, Eq)]
pub enum ClientTrust {
    /// Certificates chaining to these CAs (PEM), for the configured server
    /// name. Debian's `/etc/ssl/certs/ca-certificates.crt` is the system set.
    CaPem(Vec<u8>),
    /// Exactly the certificate with this SHA-256 fingerprint (like an SSH
    /// host key: name and expiry are not checked; the handshake signature is).
    Pinned([u8; 32]),
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientTrust::CaPem(p) => write!(f, "CaPem({} bytes)", p.len()),
            ClientTrust::Pinned(fp) => write!(f, "Pinned({})", crate::wire::hex_lower(fp)),
        }
    }
}

impl ClientTrust {
    /// A pin from a fingerprint written as 64 hex digits (colons allowed).
    pub fn pinned_hex(s: &str) -> Result<Self, TlsError> {
        let digits: String = s.chars().filter(|c| *c != ':').collect();
        let bad = || TlsError::Ca("pinned fingerprint must be 64 hex digits (SHA-256 of the certificate)".into());
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut fp = [0u8; 32];
        for (i, o) in fp.iter_mut().enumerate() {
            *o = u8::from_str_radix(digits.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(ClientTrust::Pinned(fp))
    }
}

/// A rustls client configuration for a connector.
pub fn client_config(trust: &ClientTrust) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let cfg = match trust {
        ClientTrust::CaPem(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TlsError::Ca(e.to_string()))?;
                roots.add(cert).map_err(|e| TlsError::Ca(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(TlsError::Ca("no CERTIFICATE block found".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ClientTrust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                fingerprint: *fp,
                algorithms: provider().signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct PinnedVerifier {
    fingerprint: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if crate::wire::ct_eq(&presented, &self.fingerprint) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["relay.test".into()]).expect("cert");
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn certificates_load_and_mismatched_keys_are_refused_without_echoing_them() {
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        assert!(load_certified_key(cert.as_bytes(), key.as_bytes()).is_ok());
        let e = load_certified_key(cert.as_bytes(), other_key.as_bytes()).expect_err("mismatch");
        assert!(matches!(e, TlsError::Key(_)), "{e}");
        let e = load_certified_key(b"nothing here", key.as_bytes()).expect_err("no cert");
        assert!(matches!(e, TlsError::Certificate(_)));
        let e =
            load_certified_key(cert.as_bytes(), b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
                .expect_err("bad key");
        assert!(!e.to_string().contains("c2VjcmV0"));
    }

    #[test]
    fn pins_parse_with_or_without_colons() {
        let (cert, _) = self_signed();
        let fp = pem_fingerprint(cert.as_bytes()).expect("fp");
        let with_colons: Vec<String> = (0..32).map(|i| fp[2 * i..2 * i + 2].to_string()).collect();
        assert_eq!(ClientTrust::pinned_hex(&fp), ClientTrust::pinned_hex(&with_colons.join(":")));
        assert!(ClientTrust::pinned_hex("abcd").is_err());
        assert!(ClientTrust::pinned_hex(&"zz".repeat(32)).is_err());
        assert!(client_config(&ClientTrust::CaPem(b"junk".to_vec())).is_err());
        assert!(client_config(&ClientTrust::CaPem(cert.into_bytes())).is_ok());
    }
}
