//! The crate's [`Error`] and how lapin's errors map onto it.

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// An AMQP failure, with the broker's own reason where it gave one.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable.
    #[error("invalid AMQP configuration: {0}")]
    Config(String),
    /// The ordered dispatcher's configuration is unusable (see the cause).
    #[error("invalid dispatcher configuration: {0}")]
    Dispatcher(#[source] headwaters_ordering_core::ConfigError),
    /// The TLS configuration could not be built (a PEM without a usable certificate, a key
    /// that does not match); the cause is the source.
    #[error("TLS configuration: {0}")]
    Tls(#[source] headwaters_ordering_core::tls::TlsConfigError),
    /// The broker could not be reached.
    #[error(
        "cannot reach the AMQP broker at {target}: {reason}; check that it runs and that the URL is right"
    )]
    Unreachable {
        /// Host and port (never credentials).
        target: String,
        /// Why.
        reason: String,
        /// lapin's error, when it reported the failure.
        #[source]
        source: Option<std::sync::Arc<lapin::Error>>,
    },
    /// The broker refused the credentials (`ACCESS_REFUSED`).
    #[error("the broker refused the login: {reason}; check the user name and password in the URL")]
    AccessRefused {
        /// The broker's reason.
        reason: String,
    },
    /// The virtual host does not exist or the user may not use it (`NOT_ALLOWED`).
    #[error(
        "the broker refused the virtual host: {reason}; create it (`rabbitmqctl add_vhost`) and grant the user access, or fix the URL"
    )]
    VhostNotAllowed {
        /// The broker's reason.
        reason: String,
    },
    /// Any other error the broker reported, with its AMQP reply code.
    #[error("broker error {code}: {reason}")]
    Broker {
        /// The AMQP reply code (e.g. 406 PRECONDITION_FAILED, 404 NOT_FOUND).
        code: u16,
        /// The broker's reason.
        reason: String,
    },
    /// The connection is being re-established; the publish was not sent (Mississippi's
    /// `{:error, :reconnecting}`). Retry it.
    #[error(
        "the connection to the broker is being re-established; the message was not sent, retry"
    )]
    Reconnecting,
    /// The message matched no queue (returned under `mandatory`).
    #[error(
        "the message was not routed to any queue (exchange {exchange:?}, routing key {routing_key:?}): {reason}"
    )]
    Unroutable {
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
        /// The broker's reply text.
        reason: String,
    },
    /// The broker refused the message (publisher confirm `nack`).
    #[error("the broker nacked the message; it was not stored")]
    Nacked,
    /// The message is larger than the broker takes: it was not sent, and the publishes on
    /// the same channel are unaffected (the broker would have closed it).
    #[error("the {what} take {size} bytes, over the limit of {limit}; the message was not sent")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit (the negotiated frame size, the broker's `max_message_size`, or 255 for
        /// short strings).
        limit: usize,
    },
    /// The sharding key cannot be written as an Erlang term (Mississippi wire format).
    #[error("the sharding key cannot be written as an Erlang term: {0}")]
    InvalidKey(#[source] crate::etf::EtfError),
    /// The connection or channel failed.
    #[error("AMQP connection error: {0}")]
    Connection(String),
    /// The connection or channel failed, as lapin reported it.
    #[error("AMQP connection error: {0}")]
    Lapin(#[source] std::sync::Arc<lapin::Error>),
}

impl Error {
    /// Whether the failure is worth retrying with the same settings: the broker was gone or
    /// the connection was being re-established, or the broker refused to store a message
    /// for now (a nack under `x-overflow: reject-publish`). Refused credentials, a wrong
    /// virtual host, bad configuration and oversized or unroutable messages are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. }
            | Self::Reconnecting
            | Self::Nacked
            | Self::Connection(_)
            | Self::Lapin(_) => true,
            // 320 CONNECTION_FORCED (broker shutting down), 505/506 (frame/resource errors
            // on a connection the broker closed), 541 INTERNAL_ERROR.
            Self::Broker { code, .. } => matches!(code, 320 | 505 | 506 | 541),
            _ => false,
        }
    }

    /// Map a lapin error, naming `target` (host and port) for network failures.
    pub(crate) fn from_lapin(e: &lapin::Error, target: &str) -> Self {
        use lapin::ErrorKind;
        match e.kind() {
            ErrorKind::ProtocolError(amqp) => {
                let reason = amqp.get_message().to_string();
                match amqp.kind() {
                    AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => {
                        Self::VhostNotAllowed { reason }
                    }
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                        Self::AccessRefused { reason }
                    }
                    kind => Self::Broker {
                        code: kind.get_id(),
                        reason,
                    },
                }
            }
            ErrorKind::IOError(io) => Self::Unreachable {
                target: target.to_owned(),
                reason: io.to_string(),
                source: Some(std::sync::Arc::new(e.clone())),
            },
            ErrorKind::AuthProviderError(reason) => Self::AccessRefused {
                reason: reason.clone(),
            },
            _ => Self::Lapin(std::sync::Arc::new(e.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_the_ones_a_retry_can_cure() {
        let unreachable = Error::Unreachable {
            target: "127.0.0.1:1".into(),
            reason: "refused".into(),
            source: None,
        };
        let forced = Error::Broker {
            code: 320,
            reason: "CONNECTION_FORCED".into(),
        };
        for e in [unreachable, Error::Reconnecting, Error::Nacked, forced] {
            assert!(e.is_transient(), "{e}");
        }
        let refused = Error::AccessRefused {
            reason: "ACCESS_REFUSED".into(),
        };
        let precondition = Error::Broker {
            code: 406,
            reason: "PRECONDITION_FAILED".into(),
        };
        let too_large = Error::TooLarge {
            what: "headers",
            size: 200_000,
            limit: 131_072,
        };
        for e in [refused, precondition, too_large, Error::Config("x".into())] {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
