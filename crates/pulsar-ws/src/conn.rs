//! Connecting: where the server is, TLS, tokens, keepalive and reconnection —
//! [`ClientConfig`], [`TokenProvider`], [`TokenPlacement`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{FutureExt, SinkExt, StreamExt};
use headwaters_ordering_core::{Backoff, Pause};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as Frame, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::error::{Error, TokenError};
use crate::params::Secret;
use crate::session::{Link, Lost, Out, Session};
use crate::topic::encode;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The server's default `webSocketMaxTextFrameSize`.
pub const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// Supplies the JWT for each (re)connection, so expiring tokens can be refreshed.
///
/// A [`Secret`] is a fixed token; closures returning a future work too:
///
/// ```
/// use headwaters_pulsar_ws::{ClientConfig, Secret, TokenError};
/// let config = ClientConfig::new("ws://127.0.0.1:8080").unwrap()
///     .with_token_provider(|| async {
///         let token = std::env::var("PULSAR_TOKEN").map_err(TokenError::new)?;
///         Ok(Secret::new(token))
///     });
/// ```
#[async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    /// The token to present now; a failure keeps its cause ([`TokenError::new`] takes any
    /// error, or a message).
    async fn token(&self) -> Result<Secret, TokenError>;
}

#[async_trait]
impl TokenProvider for Secret {
    async fn token(&self) -> Result<Self, TokenError> {
        Ok(self.clone())
    }
}

#[async_trait]
impl<F, Fut> TokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Secret, TokenError>> + Send,
{
    async fn token(&self) -> Result<Secret, TokenError> {
        self().await
    }
}

/// Where the token goes on the upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TokenPlacement {
    /// `Authorization: Bearer <token>` (the default).
    #[default]
    Header,
    /// The `token` query parameter (for proxies that strip headers; percent-encoded).
    Query,
}

/// How to reach and talk to a Pulsar WebSocket service. Cheap to clone.
#[derive(Clone)]
pub struct ClientConfig {
    secure: bool,
    host: String,
    port: u16,
    token: Option<Arc<dyn TokenProvider>>,
    placement: TokenPlacement,
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) ping_interval: Duration,
    pub(crate) pong_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    pub(crate) max_reconnect_attempts: Option<u32>,
    pub(crate) max_frame: usize,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.base_url())
            .field("token", &self.token.as_ref().map(|_| "<provider>"))
            .field("placement", &self.placement)
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_identity", &self.identity.is_some())
            .field("ping_interval", &self.ping_interval)
            .field("pong_timeout", &self.pong_timeout)
            .field("max_reconnect_attempts", &self.max_reconnect_attempts)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// `ws://host:port` or `wss://host:port` (the port defaults to 8080 / 8443).
    pub fn new(url: &str) -> Result<Self, Error> {
        let (secure, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(Error::Config(format!(
                "{url:?}: the URL must start with ws:// or wss://"
            )));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || authority.contains('?') {
            return Err(Error::Config(format!(
                "{url:?}: give only scheme, host and port; topics are chosen per producer or consumer"
            )));
        }
        let default_port = if secure { 8443 } else { 8080 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                let port = p
                    .parse()
                    .map_err(|_| Error::Config(format!("{url:?}: bad port {p:?}")))?;
                (h.to_owned(), port)
            }
            _ => (authority.to_owned(), default_port),
        };
        let mut config = Self {
            secure,
            host,
            port,
            token: None,
            placement: TokenPlacement::Header,
            ca_pem: None,
            identity: None,
            tls: None,
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            max_reconnect_attempts: None,
            max_frame: DEFAULT_MAX_FRAME,
        };
        if secure {
            config.build_tls()?;
        }
        Ok(config)
    }

    /// A fixed JWT.
    pub fn with_token(self, token: impl Into<String>) -> Self {
        self.with_token_provider(Secret::new(token))
    }

    /// A token provider, asked on every (re)connect.
    pub fn with_token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.token = Some(Arc::new(provider));
        self
    }

    /// Where the token goes (header by default).
    pub fn with_token_placement(mut self, placement: TokenPlacement) -> Self {
        self.placement = placement;
        self
    }

    /// Trust this CA (PEM) in addition to the system's roots.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Result<Self, Error> {
        self.ca_pem = Some(pem.into());
        self.build_tls()?;
        Ok(self)
    }

    /// Present this client certificate and key (PEM) for mutual TLS.
    pub fn with_client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Result<Self, Error> {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self.build_tls()?;
        Ok(self)
    }

    /// Ping every `interval` (≤ 30 s keeps idle-timeout proxies happy) and treat the
    /// connection as dead when nothing arrives within `pong_timeout` of a ping.
    pub fn with_keepalive(mut self, interval: Duration, pong_timeout: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(10));
        self.pong_timeout = pong_timeout.max(Duration::from_millis(10));
        self
    }

    /// Reconnect backoff: starts at `min`, doubles up to `max`, with 50–100 % jitter.
    /// Default 100 ms to 1 s: during a long outage attempts stay cheap (one a second), and
    /// once the broker is back the client resumes within about a second.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min.max(Duration::from_millis(1));
        self.backoff_max = max.max(self.backoff_min);
        self
    }

    /// Give up after this many failed reconnection attempts in a row (Extreme's
    /// `max_attempts`); unlimited by default.
    pub fn with_max_reconnect_attempts(mut self, attempts: u32) -> Self {
        self.max_reconnect_attempts = Some(attempts);
        self
    }

    /// Time limit for TCP + TLS + upgrade.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The server's `webSocketMaxTextFrameSize`, if it was changed from 1 MiB.
    pub fn with_max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// A fresh reconnection backoff, with the attempt limit.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_min, self.backoff_max)
            .with_max_attempts(self.max_reconnect_attempts)
    }

    /// The keepalive part of a session on this server.
    pub(crate) fn link(&self) -> Link {
        Link::new(self.ping_interval, self.pong_timeout)
    }

    /// `ws://host:port`.
    pub fn base_url(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    fn build_tls(&mut self) -> Result<(), Error> {
        let identity = self
            .identity
            .as_ref()
            .map(|(cert, key)| (cert.as_slice(), key.as_slice()));
        self.tls = Some(
            headwaters_ordering_core::tls::client_config(self.ca_pem.as_deref(), identity)
                .map_err(Error::Tls)?,
        );
        Ok(())
    }

    /// Open one WebSocket to `path?query`.
    pub(crate) async fn connect(&self, path: &str, query: &str) -> Result<Ws, Error> {
        let url = format!("{}{path}", self.base_url());
        let connect_err = |reason: String, source| Error::Connect {
            url: url.clone(),
            reason,
            source,
        };
        let token = match &self.token {
            Some(p) => Some(p.token().await.map_err(Error::Token)?),
            None => None,
        };
        let mut full = url.clone();
        let mut sep = '?';
        if !query.is_empty() {
            full.push(sep);
            full.push_str(query);
            sep = '&';
        }
        if let (Some(t), TokenPlacement::Query) = (&token, self.placement) {
            full.push(sep);
            full.push_str("token=");
            full.push_str(&encode(t.expose()));
        }
        let mut request = full
            .into_client_request()
            .map_err(|e| Error::Config(format!("{url}: {e}")))?;
        if let (Some(t), TokenPlacement::Header) = (&token, self.placement) {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                .map_err(|e| Error::Token(TokenError::new(e)))?;
            value.set_sensitive(true);
            request.headers_mut().insert("Authorization", value);
        }
        let connector = if self.secure {
            let tls = self
                .tls
                .clone()
                .ok_or_else(|| Error::Config("no TLS configuration for wss://".into()))?;
            Some(Connector::Rustls(tls))
        } else {
            None
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let attempt = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            connector,
        );
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Err(_) => Err(connect_err(
                format!("no upgrade within {:?}", self.connect_timeout),
                None,
            )),
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .unwrap_or_default();
                Err(Error::Rejected {
                    endpoint: path.to_owned(),
                    status: response.status().as_u16(),
                    body,
                })
            }
            Ok(Err(e)) => Err(connect_err(e.to_string(), Some(Arc::new(e)))),
        }
    }
}

/// Connect, retrying transient failures with backoff. Permanent refusals (400, 401, 403,
/// 404), a failing token provider or the attempt limit end it — and `stop` does, at once,
/// with [`Error::Closed`]: every wait, the connect attempt included, races it, so closing a
/// client never waits for an outage to end.
pub(crate) async fn reconnect(
    config: &ClientConfig,
    path: &str,
    query: &str,
    backoff: &mut Backoff,
    stop: impl Future<Output = ()>,
) -> Result<Ws, Error> {
    let mut stop = std::pin::pin!(stop);
    loop {
        let attempt = tokio::select! {
            attempt = config.connect(path, query) => attempt,
            () = &mut stop => return Err(Error::Closed),
        };
        match attempt {
            Ok(ws) => {
                backoff.reset();
                return Ok(ws);
            }
            Err(e) if e.is_transient() => {
                let what = format!("pulsar-ws {path}");
                match backoff.pause(&what, &e, &mut stop).await {
                    Pause::Retry => {}
                    Pause::Stopped => return Err(Error::Closed),
                    Pause::GiveUp => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// What a read from the socket means: `Ok(Some(text))` a JSON frame, `Ok(None)` a control
/// frame (pongs are queued by tungstenite and flushed on the next read or write), `Err` the
/// connection is gone. Close codes are not inspected: the server's are not valid.
pub(crate) fn text_of(
    frame: Option<Result<Frame, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<Utf8Bytes>, Lost> {
    match frame {
        Some(Ok(Frame::Text(text))) => Ok(Some(text)),
        Some(Ok(Frame::Close(_))) | None => Err(Lost::Closed),
        Some(Err(e)) => Err(Lost::Socket(e)),
        Some(Ok(_)) => Ok(None),
    }
}

/// Frames handled per wake-up before other work gets a turn.
pub(crate) const DRAIN: usize = 256;

/// Handle `first` and whatever the socket already holds, at most [`DRAIN`] frames: each JSON
/// frame goes to `on_text`. `Err` when the connection is gone.
pub(crate) fn read_round(
    ws: &mut Ws,
    first: Option<Result<Frame, tokio_tungstenite::tungstenite::Error>>,
    mut on_text: impl FnMut(&str),
) -> Result<(), Lost> {
    let mut frame = first;
    for round in 1..=DRAIN {
        if let Some(text) = text_of(frame)? {
            on_text(&text);
        }
        // A frame fetched is a frame handled: never fetch past the round.
        match (round < DRAIN).then(|| ws.next().now_or_never()).flatten() {
            Some(f) => frame = f,
            None => break,
        }
    }
    Ok(())
}

/// Write what a session asks for: every frame fed, then one flush.
pub(crate) async fn write_out(ws: &mut Ws, session: &mut impl Session) -> Result<(), Lost> {
    let mut fed = false;
    while let Some(out) = session.poll_transmit() {
        let frame = match out {
            Out::Text(text) => Frame::Text(text),
            Out::Ping => Frame::Ping(Default::default()),
        };
        ws.feed(frame).await?;
        fed = true;
    }
    if fed {
        ws.flush().await?;
    }
    Ok(())
}

/// Point the driver's one timer at the session's deadline (none: a day away).
pub(crate) fn arm(timer: Pin<&mut Sleep>, deadline: Option<std::time::Instant>) {
    let at = match deadline {
        Some(at) => tokio::time::Instant::from_std(at),
        None if timer.deadline() > tokio::time::Instant::now() + Duration::from_secs(3600) => {
            return;
        }
        None => tokio::time::Instant::now() + Duration::from_secs(86_400),
    };
    if timer.deadline() != at {
        timer.reset(at);
    }
}
