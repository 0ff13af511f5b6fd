//! The Apache Pulsar WebSocket API v2 for Rust — this release: the IO-free protocol core.
//!
//! Everything here follows Pulsar's own WebSocket handler source (not only its docs, which
//! differ in places): the endpoint paths with percent-encoded segments
//! ([`Topic`]), the producer, consumer and reader query parameters with the server's exact
//! spellings and its validation rules applied before connecting ([`ProducerParams`],
//! [`ConsumerParams`], [`ReaderParams`]), and the JSON frames ([`OutgoingMessage`],
//! [`Receipt`], [`ConsumerFrame`], [`Command`]).
//!
//! What it does not do yet: open sockets. The async client (producer, consumer, reader, flow
//! control, reconnection, TLS, JWT) and the embedded emulator come next and build on these
//! types.
//!
//! # Layout
//!
//! * [`topic`] — [`Topic`], [`Domain`], endpoint paths.
//! * [`params`] — query parameters and their enums.
//! * [`proto`] — wire messages and codecs.
//!
//! # Example
//!
//! ```
//! use headwaters_pulsar_ws::{Command, ConsumerFrame, ConsumerParams, OutgoingMessage, SubscriptionType, Topic};
//!
//! let topic: Topic = "persistent://public/default/orders".parse().unwrap();
//! let mut params = ConsumerParams::default();
//! params.subscription_type = Some(SubscriptionType::KeyShared);
//! let url = format!("ws://127.0.0.1:8080{}?{}", topic.consumer_path("billing").unwrap(), params.query().unwrap());
//! assert!(url.ends_with("/orders/billing?subscriptionType=Key_Shared"));
//!
//! let publish = OutgoingMessage::new("hi").with_key("user-1").encode("ctx-1");
//! assert_eq!(publish, r#"{"payload":"aGk=","context":"ctx-1","key":"user-1"}"#);
//!
//! let frame = r#"{"messageId":"CAAQAw==","payload":"aGk=","properties":{},"publishTime":"2024-01-01T00:00:00Z","redeliveryCount":0}"#;
//! let ConsumerFrame::Message(m) = ConsumerFrame::decode(frame).unwrap() else { unreachable!() };
//! assert_eq!(Command::Ack(m.message_id).encode(), r#"{"messageId":"CAAQAw=="}"#);
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod params;
pub mod proto;
pub mod topic;

pub use params::{
    CompressionType, ConsumerParams, CryptoFailureAction, HashingScheme, InitialPosition,
    ProducerParams, ReaderParams, ReaderStart, RoutingMode, Secret, SubscriptionMode,
    SubscriptionType,
};
pub use proto::{
    Command, ConsumerFrame, MessageId, OutgoingMessage, Receipt, ReceivedMessage, SendErrorCode,
    SendFailure, ZonedTime,
};
pub use topic::{Domain, Topic};

/// A parameter or name the server would refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// The value is not acceptable.
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// The parameter.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// A frame from the server that does not decode. The connection should be treated as broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not JSON, or not the expected shape.
    #[error("malformed frame: {0}")]
    Json(String),
    /// A field has a bad value.
    #[error("bad {field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl DecodeError {
    #[cold]
    fn json(e: serde_json::Error) -> Self {
        Self::Json(e.to_string())
    }
}
