//! Throwaway certificates for TLS tests: a CA, a server certificate for `127.0.0.1` and
//! `localhost`, and a client certificate for mutual TLS, plus the rustls server
//! configuration the emulators take.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why certificates or a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[error("test TLS setup failed: {0}")]
pub struct TlsError(String);

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct Identity {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

/// A CA with a server and a client identity it signed.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA certificate, PEM (what clients trust).
    pub ca_pem: String,
    /// The server identity (SANs `127.0.0.1` and `localhost`).
    pub server: Identity,
    /// A client identity for mutual TLS.
    pub client: Identity,
    ca_der: CertificateDer<'static>,
}

fn identity(
    name: &str,
    sans: Vec<String>,
    issuer: &rcgen::Issuer<'_, KeyPair>,
) -> Result<Identity, TlsError> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(sans).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, issuer).map_err(err)?;
    Ok(Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    })
}

impl TestCerts {
    /// Generate a fresh set.
    pub fn generate() -> Result<Self, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Headwaters test CA");
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(err)?).map_err(err)?;
        let server = identity(
            "headwaters-emulator",
            vec!["127.0.0.1".into(), "localhost".into()],
            &ca,
        )?;
        let client = identity("headwaters-client", vec!["client.test".into()], &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server,
            client,
        })
    }

    /// A rustls server configuration with the server identity; with
    /// `require_client_cert`, clients must present a certificate signed by the CA.
    pub fn server_config(
        &self,
        require_client_cert: bool,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(err)?;
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone()).map_err(err)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(err)?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server.key_der.clone()));
        let config = builder
            .with_single_cert(vec![self.server.cert_der.clone()], key)
            .map_err(err)?;
        Ok(Arc::new(config))
    }
}
