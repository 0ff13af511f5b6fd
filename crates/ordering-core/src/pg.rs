//! PostgreSQL connections for the stores (feature `postgres`): the URL parsed once, TLS via
//! rustls as its `sslmode` says — libpq's meanings, so a URL that works with `psql` works
//! here — and one client, connected on first use and re-established by the next use after it
//! was lost. `headwaters-process-status` and `headwaters-batch-flusher` both connect through it.
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers it | not checked (libpq does not either) |
//! | `require` | always | not checked, unless `sslrootcert` is given: then as `verify-ca` |
//! | `verify-ca` | always | signed by the system's roots or `sslrootcert` |
//! | `verify-full` | always | as `verify-ca`, and issued for the host connected to |
//!
//! `sslrootcert` is a PEM file of CA certificates (or `system`: the system's roots only).

use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{self, TlsConfigError};

/// Why a PostgreSQL connection could not be made.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The URL does not parse (the reason says where).
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(String),
    /// The URL's `sslrootcert` cannot be read or holds no usable certificate.
    #[error("PostgreSQL TLS: {0}")]
    Tls(#[source] TlsConfigError),
    /// The server could not be reached or refused the login (the server's message, or the
    /// TLS failure: a certificate the `sslmode` does not accept).
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect {
        /// Host and port (never the password).
        target: String,
        /// Why.
        reason: String,
        /// The driver's error, when it reported the failure.
        #[source]
        source: Option<Arc<tokio_postgres::Error>>,
    },
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndHost,
}

/// A PostgreSQL server to connect to, and the one client connected to it.
pub struct PgConnection {
    config: tokio_postgres::Config,
    target: String,
    /// `None`: plain TCP only (`sslmode=disable`).
    tls: Option<MakeRustlsConnect>,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the config: it holds the password.
        f.debug_struct("PgConnection")
            .field("target", &self.target)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl PgConnection {
    /// Parse `url` (`postgres://user:password@host:port/db?sslmode=…&sslrootcert=…`, or
    /// libpq's `key=value` form) and prepare its TLS; nothing is connected yet.
    pub fn new(url: &str) -> Result<Self, PgError> {
        let (rest, sslmode, rootcert) = take_tls_params(url);
        let config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| PgError::InvalidUrl(e.to_string()))?;
        let target = describe(&config);
        let root_pem = match rootcert.as_deref() {
            None | Some("system") => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                PgError::InvalidUrl(format!("sslrootcert {path:?} cannot be read: {e}"))
            })?),
        };
        let (mode, check) = match sslmode.as_deref().unwrap_or("prefer") {
            "disable" => (SslMode::Disable, None),
            "allow" | "prefer" => (SslMode::Prefer, Some(Check::Nothing)),
            "require" if rootcert.is_some() => (SslMode::Require, Some(Check::Chain)),
            "require" => (SslMode::Require, Some(Check::Nothing)),
            "verify-ca" => (SslMode::Require, Some(Check::Chain)),
            "verify-full" => (SslMode::Require, Some(Check::ChainAndHost)),
            other => {
                return Err(PgError::InvalidUrl(format!(
                    "sslmode {other:?}: one of disable, prefer, require, verify-ca, verify-full"
                )));
            }
        };
        let mut config = config;
        config.ssl_mode(mode);
        let tls = match check {
            None => None,
            Some(check) => Some(MakeRustlsConnect::new(
                client_config(check, root_pem.as_deref()).map_err(PgError::Tls)?,
            )),
        };
        Ok(Self {
            config,
            target,
            tls,
            client: Mutex::new(None),
        })
    }

    /// Host and port, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The live client, connecting first if there is none or the last one was lost.
    pub async fn client(&self) -> Result<MappedMutexGuard<'_, Client>, PgError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_some_and(Client::is_closed) {
            *slot = None;
        }
        if slot.is_none() {
            *slot = Some(self.connect().await?);
        }
        MutexGuard::try_map(slot, Option::as_mut).map_err(|_| PgError::Connect {
            target: self.target.clone(),
            reason: "no connection".into(),
            source: None,
        })
    }

    async fn connect(&self) -> Result<Client, PgError> {
        let failed = |e: tokio_postgres::Error| PgError::Connect {
            target: self.target.clone(),
            reason: connect_reason(&e),
            source: Some(Arc::new(e)),
        };
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) =
                    self.config.connect(tls.clone()).await.map_err(failed)?;
                spawn_connection(connection);
                client
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(failed)?;
                spawn_connection(connection);
                client
            }
        };
        Ok(client)
    }
}

fn spawn_connection<F>(connection: F)
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
}

/// The server's message, or the whole chain of causes (a TLS failure sits below "error
/// performing TLS handshake").
fn connect_reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    reason
}

/// `host:port` of the first host (no credentials).
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config.get_hosts().first().map_or_else(
        || "localhost".to_owned(),
        |h| match h {
            Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            Host::Unix(path) => path.display().to_string(),
        },
    );
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// Remove `sslmode` and `sslrootcert` from a URL or `key=value` string (tokio-postgres knows
/// neither `verify-ca`/`verify-full` nor `sslrootcert`): the rest, and their values.
fn take_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            mode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            root = Some(value.to_owned());
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(k, &percent_decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        url.split_whitespace()
            .filter(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                !take(k.trim(), v.trim().trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, mode, root)
}

/// `%XX` escapes decoded (a path in `sslrootcert` may carry them).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rustls configuration for a check.
fn client_config(
    check: Check,
    root_pem: Option<&[u8]>,
) -> Result<rustls::ClientConfig, TlsConfigError> {
    let builder = tls::builder()?;
    let chain = || -> Result<_, TlsConfigError> {
        WebPkiServerVerifier::builder_with_provider(
            Arc::new(tls::roots(root_pem)?),
            tls::provider(),
        )
        .build()
        .map_err(|e| TlsConfigError::CaCertificate(rustls::Error::General(e.to_string())))
    };
    let config = match check {
        Check::ChainAndHost => builder.with_root_certificates(tls::roots(root_pem)?),
        Check::Chain | Check::Nothing => {
            let verifier = Libpq {
                provider: tls::provider(),
                chain: (check == Check::Chain).then(chain).transpose()?,
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        }
    };
    Ok(config.with_no_client_auth())
}

/// libpq's weaker checks: `verify-ca` (the chain must be valid, the name in it is not
/// checked) and `prefer` / `require` without a root certificate (the certificate is not
/// checked at all: encryption without knowing who the server is). The handshake's
/// signatures are verified either way.
#[derive(Debug)]
struct Libpq {
    provider: Arc<CryptoProvider>,
    /// `None`: any certificate.
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Libpq {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_both_url_forms() {
        let (rest, mode, root) = take_tls_params(
            "postgres://u:p@127.0.0.1:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@127.0.0.1:5432/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/tmp/ca.pem"));
        let (rest, mode, root) =
            take_tls_params("host=127.0.0.1 sslmode=require user=u sslrootcert='/ca.pem'");
        assert_eq!(rest, "host=127.0.0.1 user=u");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
        let (rest, mode, _) = take_tls_params("postgres://u@h/db");
        assert_eq!((rest.as_str(), mode), ("postgres://u@h/db", None));
    }

    #[test]
    fn modes_parse_and_bad_ones_say_what_is_allowed() {
        for (url, tls) in [
            ("postgres://u@127.0.0.1/db", true),
            ("postgres://u@127.0.0.1/db?sslmode=disable", false),
            ("postgres://u@127.0.0.1/db?sslmode=require", true),
            ("postgres://u@127.0.0.1/db?sslmode=verify-full", true),
            ("postgres://u@127.0.0.1/db?sslmode=verify-ca", true),
        ] {
            let pg = PgConnection::new(url).unwrap();
            assert_eq!(pg.tls.is_some(), tls, "{url}");
            assert_eq!(pg.target(), "127.0.0.1:5432");
            assert!(!format!("{pg:?}").contains("u@"), "no credentials in Debug");
        }
        let err = PgConnection::new("postgres://u@h/db?sslmode=sometimes").unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");
        let err =
            PgConnection::new("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent")
                .unwrap_err();
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }
}
