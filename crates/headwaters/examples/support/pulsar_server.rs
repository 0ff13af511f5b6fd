//! The Pulsar the demo's Pulsar stage and the chaos soak put a fault proxy in front of: the
//! broker at `PULSAR_WS_URL` (token from `PULSAR_TOKEN`), or the embedded emulator.

use std::net::SocketAddr;

use anyhow::Context;
use headwaters_testkit::pulsar::PulsarEmulator;

/// Where a Pulsar WebSocket server listens, and what it takes to talk to it.
pub(crate) struct PulsarServer {
    /// The emulator, when no `PULSAR_WS_URL` was given (kept alive with this value).
    pub(crate) emulator: Option<PulsarEmulator>,
    /// The address to forward to.
    pub(crate) addr: SocketAddr,
    /// The token the broker wants, if any.
    pub(crate) token: Option<String>,
    /// `PULSAR_WS_URL`, or the emulator's URL.
    pub(crate) url: String,
}

impl PulsarServer {
    /// The broker at `PULSAR_WS_URL` (a `ws://` URL: a proxy cannot sit inside TLS), else a
    /// fresh emulator.
    pub(crate) async fn from_env() -> anyhow::Result<Self> {
        match std::env::var("PULSAR_WS_URL") {
            Ok(url) => {
                let host_port = url
                    .strip_prefix("ws://")
                    .context("PULSAR_WS_URL must be a ws:// URL here (a fault proxy goes in front of it)")?
                    .trim_end_matches('/');
                let addr = tokio::net::lookup_host(host_port)
                    .await?
                    .next()
                    .with_context(|| format!("PULSAR_WS_URL names no address: {url}"))?;
                Ok(Self {
                    emulator: None,
                    addr,
                    token: std::env::var("PULSAR_TOKEN").ok(),
                    url,
                })
            }
            Err(_) => {
                let emulator = PulsarEmulator::start().await?;
                Ok(Self {
                    addr: emulator.addr(),
                    url: emulator.url(),
                    emulator: Some(emulator),
                    token: None,
                })
            }
        }
    }
}
