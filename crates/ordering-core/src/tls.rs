//! The rustls client configuration every transport builds the same way (feature `tls`):
//! the system's roots plus optional CA certificates, and an optional client identity.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A rustls client configuration (ring provider, safe default protocol versions) trusting
/// the system's roots and the certificates in `ca_pem`, presenting `identity`
/// (certificate chain PEM, private key PEM) when given. The error says which input is bad.
pub fn client_config(
    ca_pem: Option<&[u8]>,
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("CA PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("the CA PEM holds no certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate PEM: {e}"))?;
            if certs.is_empty() {
                return Err("the client certificate PEM holds no certificate".into());
            }
            let key =
                PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("client key PEM: {e}"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client identity: {e}"))?
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_name_what_is_wrong() {
        assert!(client_config(None, None).is_ok());
        let err = client_config(Some(b"not a pem"), None).unwrap_err();
        assert!(err.contains("CA PEM holds no certificate"), "{err}");
        let err = client_config(None, Some((b"", b""))).unwrap_err();
        assert!(err.contains("client certificate"), "{err}");
    }
}
