//! The few calls of a real Pulsar's admin REST API (`/admin/v2`) that tests need to look at
//! a broker as they look at the emulator: a subscription's backlog and unacked count, its
//! existence, and terminating a topic. Plain HTTP/1.0 over a socket (`http://` only), so
//! the testkit needs no HTTP client.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A real broker's admin API at `http://host:port`, with a token when it wants one.
#[derive(Clone)]
pub struct PulsarAdmin {
    host_port: String,
    token: Option<String>,
}

impl std::fmt::Debug for PulsarAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarAdmin")
            .field("host_port", &self.host_port)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What an admin call failed with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The URL is not `http://host:port`.
    #[error("the admin URL must be http://host:port, not {0:?}")]
    Url(String),
    /// The socket failed or the call took longer than 10 s.
    #[error("admin call failed")]
    Io(#[from] io::Error),
    /// The broker answered with another status than 2xx.
    #[error("admin call {path} answered {status}: {body}")]
    Status {
        /// The path called.
        path: String,
        /// The HTTP status.
        status: u16,
        /// What the broker said.
        body: String,
    },
    /// The answer was not the JSON expected.
    #[error("admin call {path} answered something that is not its JSON")]
    Json {
        /// The path called.
        path: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// A subscription as the broker's topic stats show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionStats {
    /// Messages not yet acknowledged (`msgBacklog`).
    pub backlog: u64,
    /// Messages delivered to consumers and not acknowledged (`unackedMessages`).
    pub unacked: u64,
}

impl PulsarAdmin {
    /// The admin API at `url` (`http://host:port`), calling with `token` as a bearer token
    /// when given.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, AdminError> {
        let host_port = url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|hp| !hp.is_empty() && !hp.contains('/'))
            .ok_or_else(|| AdminError::Url(url.to_owned()))?;
        Ok(Self {
            host_port: host_port.to_owned(),
            token,
        })
    }

    /// The admin API beside a WebSocket URL (`ws://host:port` → `http://host:port`): the
    /// broker serves both on its web port.
    pub fn beside(ws_url: &str, token: Option<String>) -> Result<Self, AdminError> {
        let http = ws_url
            .strip_prefix("ws://")
            .map(|rest| format!("http://{rest}"))
            .ok_or_else(|| AdminError::Url(ws_url.to_owned()))?;
        Self::new(&http, token)
    }

    /// A subscription's stats on `topic` (`persistent://tenant/ns/name`); `None` when the
    /// topic or the subscription does not exist.
    pub async fn subscription(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Result<Option<SubscriptionStats>, AdminError> {
        let path = format!("/admin/v2/{}/stats", rest_path(topic));
        let (status, body) = self.call("GET", &path).await?;
        if status == 404 {
            return Ok(None);
        }
        let stats: serde_json::Value = json(&path, status, &body)?;
        Ok(stats["subscriptions"]
            .get(subscription)
            .map(|s| SubscriptionStats {
                backlog: s["msgBacklog"].as_u64().unwrap_or(0),
                unacked: s["unackedMessages"].as_u64().unwrap_or(0),
            }))
    }

    /// Terminate `topic`: publishes fail, readers and consumers reach its end.
    pub async fn terminate(&self, topic: &str) -> Result<(), AdminError> {
        let path = format!("/admin/v2/{}/terminate", rest_path(topic));
        let (status, body) = self.call("POST", &path).await?;
        json::<serde_json::Value>(&path, status, &body).map(drop)
    }

    async fn call(&self, method: &str, path: &str) -> Result<(u16, String), AdminError> {
        let exchange = async {
            let mut stream = TcpStream::connect(&self.host_port).await?;
            let auth = self
                .token
                .as_ref()
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            let request = format!(
                "{method} {path} HTTP/1.0\r\nHost: {}\r\n{auth}Accept: application/json\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n",
                self.host_port
            );
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, io::Error>(response)
        };
        let response = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "admin call took over 10 s"))??;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status line"))?;
        Ok((status, body.to_owned()))
    }
}

/// `persistent://t/ns/name` → `persistent/t/ns/name`, as the REST paths spell topics.
fn rest_path(topic: &str) -> String {
    topic.replacen("://", "/", 1)
}

fn json<T: serde::de::DeserializeOwned>(
    path: &str,
    status: u16,
    body: &str,
) -> Result<T, AdminError> {
    if !(200..300).contains(&status) {
        return Err(AdminError::Status {
            path: path.to_owned(),
            status,
            body: body.to_owned(),
        });
    }
    let body = if body.trim().is_empty() { "null" } else { body };
    serde_json::from_str(body).map_err(|source| AdminError::Json {
        path: path.to_owned(),
        source,
    })
}
