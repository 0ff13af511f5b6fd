//! [`KinesisConfig`]: where the Kinesis API is and who we are, turned into an
//! `aws_sdk_kinesis::Client` (HTTPS through rustls with ring, bounded connects and calls).

use std::fmt;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls;

use crate::Error;

/// The Kinesis endpoint, region and credentials.
///
/// For AWS, [`from_env`](Self::from_env) reads the usual variables; for a local
/// Kinesis-compatible server (kinesalite, moto) set the endpoint and any credentials. For
/// credentials from profiles, SSO or instance metadata, build a client with the `aws-config`
/// crate and hand it to [`KinesisSource::from_client`](crate::KinesisSource::from_client).
#[derive(Clone)]
pub struct KinesisConfig {
    region: String,
    endpoint: Option<String>,
    credentials: Option<Credentials>,
    connect_timeout: Duration,
    call_timeout: Duration,
}

impl fmt::Debug for KinesisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret: only whether credentials are set.
        f.debug_struct("KinesisConfig")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

impl KinesisConfig {
    /// AWS in `region`, no credentials yet.
    pub fn new(region: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            endpoint: None,
            credentials: None,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(20),
        }
    }

    /// From the environment: `AWS_REGION` (or `AWS_DEFAULT_REGION`, else `us-east-1`),
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, and the endpoint
    /// from `AWS_ENDPOINT_URL_KINESIS` or `AWS_ENDPOINT_URL` (unset: AWS's own).
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let region = var("AWS_REGION")
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let mut config = Self::new(region);
        config.endpoint = var("AWS_ENDPOINT_URL_KINESIS").or_else(|| var("AWS_ENDPOINT_URL"));
        if let (Some(id), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            config.credentials = Some(Credentials::new(
                id,
                secret,
                var("AWS_SESSION_TOKEN"),
                None,
                "environment",
            ));
        }
        config
    }

    /// Talk to `url` instead of AWS (e.g. `http://127.0.0.1:4567` for kinesalite).
    pub fn with_endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Sign requests with these static credentials.
    pub fn with_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        self.credentials = Some(Credentials::new(
            access_key_id,
            secret_access_key,
            session_token,
            None,
            "headwaters",
        ));
        self
    }

    /// Bound each connection attempt (default 5 s) and each API call (default 20 s).
    pub fn with_timeouts(mut self, connect: Duration, call: Duration) -> Self {
        self.connect_timeout = connect;
        self.call_timeout = call;
        self
    }

    /// The SDK client.
    pub fn client(&self) -> Result<Client, Error> {
        let credentials = self.credentials.clone().ok_or(Error::NoCredentials)?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut builder = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(credentials)
            .http_client(http)
            // The source retries throttled and failed calls itself, with its own backoff and
            // counters (`Metrics`); a second layer of retries would multiply them.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.connect_timeout)
                    .operation_timeout(self.call_timeout)
                    .build(),
            );
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(Client::from_conf(builder.build()))
    }
}
