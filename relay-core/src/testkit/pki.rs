//! Throwaway certificates for tests, the demo and the load generator: a CA
//! and a server certificate it signed (rcgen, ECDSA P-256). Never for
//! production: the keys live in memory and nothing is persisted or revoked.

/// A CA and a certificate it signed, PEM.
#[derive(Clone)]
pub struct TestPki {
    /// The CA certificate (trust this).
    pub ca_pem: String,
    /// The server certificate (present this).
    pub cert_pem: String,
    /// The server certificate's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").field("key_pem", &"<masked>").finish_non_exhaustive()
    }
}

/// A fresh CA and a certificate for `name` signed by it.
pub fn issue(name: &str) -> Result<TestPki, String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: with rcgen's one default name for both, OpenSSL
    // takes the leaf for a self-signed certificate and refuses it.
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "UCMRC test CA");
    let ca = ca_params.self_signed(&ca_key).map_err(e)?;
    let key = KeyPair::generate().map_err(e)?;
    let mut leaf = CertificateParams::new(vec![name.to_string()]).map_err(e)?;
    leaf.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = leaf.signed_by(&key, &Issuer::new(ca_params, ca_key)).map_err(e)?;
    Ok(TestPki { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_chains_to_the_ca_and_matches_its_key() {
        let p = issue("pbx.example").expect("pki");
        assert!(crate::tls::load_certified_key(p.cert_pem.as_bytes(), p.key_pem.as_bytes()).is_ok());
        let trust = crate::tls::ClientTrust::CaPem(p.ca_pem.clone().into_bytes());
        assert!(crate::tls::client_config(&trust).is_ok());
        assert!(!format!("{p:?}").contains("PRIVATE KEY"));
    }
}
