//! The rustls client configuration every transport builds the same way (feature `tls`):
//! the system's roots plus optional CA certificates, and an optional client identity.

use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why [`client_config`] could not build a configuration; the cause is the source.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The CA PEM does not parse.
    #[error("the CA PEM does not parse: {0}")]
    CaPem(#[source] Arc<pem::Error>),
    /// A CA certificate is not usable as a trust anchor.
    #[error("a CA certificate is not usable as a root: {0}")]
    CaCertificate(#[source] rustls::Error),
    /// The CA PEM holds no certificate.
    #[error("the CA PEM holds no certificate")]
    NoCaCertificate,
    /// The client certificate PEM does not parse.
    #[error("the client certificate PEM does not parse: {0}")]
    ClientCertificatePem(#[source] Arc<pem::Error>),
    /// The client certificate PEM holds no certificate.
    #[error("the client certificate PEM holds no certificate")]
    NoClientCertificate,
    /// The client key PEM does not parse (PKCS#8, PKCS#1 or SEC1 keys are read).
    #[error("the client key PEM does not parse: {0}")]
    ClientKeyPem(#[source] Arc<pem::Error>),
    /// The client certificate and key are not usable together.
    #[error("the client certificate and key are not usable: {0}")]
    ClientIdentity(#[source] rustls::Error),
    /// The crypto provider offers no safe protocol version.
    #[error("no safe TLS protocol version: {0}")]
    Protocols(#[source] rustls::Error),
}

/// A rustls client configuration (ring provider, safe default protocol versions) trusting
/// the system's roots and the certificates in `ca_pem`, presenting `identity`
/// (certificate chain PEM, private key PEM) when given. The error says which input is bad.
pub fn client_config(
    ca_pem: Option<&[u8]>,
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let builder = builder()?.with_root_certificates(roots(ca_pem)?);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsConfigError::ClientCertificatePem(Arc::new(e)))?;
            if certs.is_empty() {
                return Err(TlsConfigError::NoClientCertificate);
            }
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| TlsConfigError::ClientKeyPem(Arc::new(e)))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(TlsConfigError::ClientIdentity)?
        }
    };
    Ok(Arc::new(config))
}

/// The system's roots plus the certificates in `ca_pem`.
pub(crate) fn roots(ca_pem: Option<&[u8]>) -> Result<rustls::RootCertStore, TlsConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| TlsConfigError::CaPem(Arc::new(e)))?;
            roots.add(cert).map_err(TlsConfigError::CaCertificate)?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsConfigError::NoCaCertificate);
        }
    }
    Ok(roots)
}

/// The crypto provider every configuration uses.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A configuration builder with the provider and the safe protocol versions.
pub(crate) fn builder()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, TlsConfigError> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Protocols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_name_what_is_wrong() {
        assert!(client_config(None, None).is_ok());
        let err = client_config(Some(b"not a pem"), None).unwrap_err();
        assert!(matches!(err, TlsConfigError::NoCaCertificate), "{err}");
        let err = client_config(None, Some((b"", b""))).unwrap_err();
        assert!(matches!(err, TlsConfigError::NoClientCertificate), "{err}");
        let broken = b"-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n";
        let err = client_config(Some(broken), None).unwrap_err();
        assert!(matches!(err, TlsConfigError::CaPem(_)), "{err}");
        assert!(
            std::error::Error::source(&err).is_some(),
            "the cause is kept"
        );
    }
}
