//! The client's error type.

use std::time::Duration;

use crate::proto::SendFailure;
use crate::{DecodeError, ParamError};

/// What went wrong, with what to do about it in the message.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client configuration is not usable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The ordered dispatcher's configuration is unusable (see the cause).
    #[error("invalid dispatcher configuration: {0}")]
    Dispatcher(#[source] headwaters_ordering_core::ConfigError),
    /// A topic, subscription or parameter the server would refuse.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// The server answered the WebSocket upgrade with an HTTP error.
    #[error("the server refused {endpoint} with HTTP {status} ({}): {body}", meaning(*status))]
    Rejected {
        /// The endpoint path (no query string, so no token).
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// The server's text.
        body: String,
    },
    /// The server could not be reached (DNS, TCP, TLS handshake, timeout).
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL without query string.
        url: String,
        /// Why.
        reason: String,
        /// The WebSocket client's error, when it reported the failure.
        #[source]
        source: Option<std::sync::Arc<tokio_tungstenite::tungstenite::Error>>,
    },
    /// The TLS configuration could not be built (bad PEM, key mismatch); the cause is the
    /// source.
    #[error("TLS configuration: {0}")]
    Tls(#[source] headwaters_ordering_core::tls::TlsConfigError),
    /// The token provider failed (its error is the source).
    #[error("the token provider failed: {0}")]
    Token(#[source] TokenError),
    /// The broker failed this message (`send-error:N`).
    #[error("the broker refused the message: {0}")]
    Send(SendFailure),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection was lost while the operation was pending, and the configured policy
    /// fails pending sends (or it was a request that cannot be replayed).
    #[error("the connection was lost before the operation completed")]
    Disconnected,
    /// The handle was closed, or its connection gave up (see the error it gave up with in
    /// the logs and on the stream).
    #[error("the producer, consumer or reader is closed")]
    Closed,
    /// The server sent a frame that does not decode.
    #[error("malformed frame from the server: {0}")]
    Decode(#[from] DecodeError),
    /// The JSON frame would exceed the server's text-frame limit.
    #[error(
        "the message frame is {size} bytes, above the {limit}-byte text-frame limit (payloads are base64 inside JSON, so about 3/4 of it is usable); split the message"
    )]
    TooLarge {
        /// The frame size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A context was reused while a publish with it was still waiting for its receipt.
    #[error("context {0:?} is already in use by a pending send")]
    DuplicateContext(String),
    /// A blocking call was made on a runtime thread.
    #[error(
        "blocking call from inside the tokio runtime; use the async method there, or call it from a thread the runtime does not own"
    )]
    BlockingInRuntime,
}

impl Error {
    /// Whether the failure is worth retrying with the same settings (the server was busy or
    /// gone, or a send timed out).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Rejected { status, .. } => *status == 409 || *status == 429 || *status >= 500,
            Self::Connect { .. } | Self::Timeout(_) | Self::Disconnected => true,
            Self::Send(f) => f.code == crate::SendErrorCode::Broker,
            _ => false,
        }
    }

    /// Whether the server refused the credentials (401) or the permission (403).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            Self::Rejected {
                status: 401 | 403,
                ..
            }
        )
    }
}

fn meaning(status: u16) -> &'static str {
    match status {
        400 => "bad request: check the topic, subscription and parameters",
        401 => "authentication failed: check the token or token provider",
        403 => "not authorized on this topic: check the role's permissions",
        404 => "topic not found: create it, or enable topic auto-creation",
        409 => "busy: the producer name is taken or an exclusive subscription has a consumer",
        429 => "too many requests: retried with backoff",
        500..=599 => "server error: retried with backoff",
        _ => "unexpected status",
    }
}

/// A [`TokenProvider`](crate::TokenProvider)'s failure, kept whole (shared, so that
/// [`Error`] stays `Clone`).
#[derive(Debug, Clone)]
pub struct TokenError(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl TokenError {
    /// Wrap any error (a `String` or `&str` works too).
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(std::sync::Arc::from(error.into()))
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
