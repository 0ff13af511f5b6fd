//! The client's error type.

use std::sync::Arc;
use std::time::Duration;

use crate::command::Command;
use crate::frame::{CredentialsError, FrameError};

/// What went wrong, with what to do about it in the message.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad settings.
    #[error("invalid settings: {0}")]
    Config(String),
    /// The ordered dispatcher's configuration is unusable (see the cause).
    #[error("invalid dispatcher configuration: {0}")]
    Dispatcher(#[source] headwaters_ordering_core::ConfigError),
    /// The TLS configuration could not be built (bad PEM, key mismatch); the cause is the
    /// source.
    #[error("TLS configuration: {0}")]
    Tls(#[source] headwaters_ordering_core::tls::TlsConfigError),
    /// Credentials that cannot be sent.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The server could not be reached (or the connection broke and retries are exhausted).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        #[source]
        reason: ConnectError,
    },
    /// The server refused the credentials.
    #[error("not authenticated: {0} — check the login and password")]
    NotAuthenticated(String),
    /// The server did not understand a request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The server (a read-only replica) refused a write.
    #[error("the node is read-only; connect to the leader for writes")]
    ReadOnly,
    /// The node is not the leader and the request needs one.
    #[error("the node is not the leader (leader at {0})")]
    NotLeader(String),
    /// The node stayed busy or not ready through every retry.
    #[error(
        "the server kept answering `{0}` through every retry; it is starting up or overloaded — try again later or raise Settings::with_operation_timeout's retries"
    )]
    NotHandled(Busy),
    /// The stream's version was not the expected one.
    #[error("wrong expected version (the stream is at {current:?})")]
    WrongExpectedVersion {
        /// The stream's actual version, when the server said (4.0+).
        current: Option<i64>,
    },
    /// The stream was hard-deleted.
    #[error("stream {0:?} is deleted")]
    StreamDeleted(String),
    /// A persistent subscription group of that name exists on the stream.
    #[error("persistent subscription group {group:?} on {stream:?} already exists")]
    GroupExists {
        /// The stream.
        stream: String,
        /// The group.
        group: String,
    },
    /// No such persistent subscription group.
    #[error("no persistent subscription group {group:?} on {stream:?} — create it first")]
    GroupNotFound {
        /// The stream.
        stream: String,
        /// The group.
        group: String,
    },
    /// The group already has its maximum number of consumers.
    #[error("persistent subscription group {0:?} has its maximum number of consumers")]
    SubscriberMaxCountReached(String),
    /// The user may not do this.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// Any other failure result from the server.
    #[error("the server failed the operation: {0}")]
    Server(String),
    /// No answer in time, after the configured retries.
    #[error("no answer within {0:?} (after retries)")]
    Timeout(Duration),
    /// The connection is closed.
    #[error("the connection is closed")]
    Closed,
    /// The server sent something that does not decode.
    #[error("malformed reply: {0}")]
    Decode(String),
    /// A reply's protobuf message does not decode (the cause says where).
    #[error("malformed reply: {0}")]
    Protobuf(#[source] prost::DecodeError),
    /// The byte stream is not valid framing.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl Error {
    /// Whether the failure is worth retrying with the same settings: the server was gone,
    /// busy, not the leader or slow to answer. Refused credentials or access, a wrong
    /// expected version, a deleted stream and bad settings are not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::NotLeader(_) | Self::NotHandled(_) | Self::Timeout(_)
        )
    }
}

/// Why a connection could not be made, or why it ended.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No TCP connection (or TLS handshake) within the connect timeout.
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// The socket failed (refused, reset, closed mid-write).
    #[error("socket: {0}")]
    Io(#[source] Arc<std::io::Error>),
    /// The name to check the server's certificate against is not a valid DNS name or IP.
    #[error("TLS server name {0:?} is not valid")]
    TlsServerName(String),
    /// The TLS handshake failed (untrusted certificate, wrong name, no TLS on the port).
    #[error("TLS handshake: {0}")]
    TlsHandshake(#[source] Arc<std::io::Error>),
    /// Cluster discovery found no node to connect to.
    #[error("gossip: {0}")]
    Gossip(#[source] crate::gossip::GossipError),
    /// The server closed the connection.
    #[error("closed by the server")]
    ClosedByServer,
    /// The server refused the connection (`BadRequest` without a correlation id).
    #[error("the server refused the connection: {0}")]
    Refused(String),
    /// The server refused the default credentials during the handshake.
    #[error("not authenticated: {0}")]
    NotAuthenticated(String),
    /// The server answered the handshake with something else.
    #[error("unexpected {0:?} during the handshake")]
    Handshake(Command),
    /// No answer to the handshake within the operation timeout.
    #[error("no answer to the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// No heartbeat answer (nor anything else) within the heartbeat timeout.
    #[error("no heartbeat answer within {0:?}")]
    HeartbeatTimeout(Duration),
    /// The node is not the leader; the client reconnects to the one named.
    #[error("not the leader; the leader is at {0}")]
    NotLeader(String),
    /// The bytes from the server are not valid framing.
    #[error("malformed frame: {0}")]
    Frame(#[source] FrameError),
}

impl From<std::io::Error> for ConnectError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

/// Why a node did not handle an operation it may handle later (`NotHandled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Busy {
    /// The node is starting up or catching up (`NotReady`).
    NotReady,
    /// The node's queues are full (`TooBusy`).
    TooBusy,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotReady => "NotReady",
            Self::TooBusy => "TooBusy",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_the_ones_a_retry_can_cure() {
        let connect = Error::Connect {
            addr: "127.0.0.1:1113".into(),
            reason: ConnectError::ClosedByServer,
        };
        let transient = [
            connect,
            Error::NotLeader("127.0.0.1:1114".into()),
            Error::NotHandled(Busy::TooBusy),
            Error::Timeout(Duration::from_secs(1)),
        ];
        for e in transient {
            assert!(e.is_transient(), "{e}");
        }
        let lasting = [
            Error::NotAuthenticated("bad password".into()),
            Error::AccessDenied("$all".into()),
            Error::WrongExpectedVersion { current: Some(3) },
            Error::StreamDeleted("s".into()),
            Error::Config("x".into()),
        ];
        for e in lasting {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
