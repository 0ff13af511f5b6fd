//! An Apache Pulsar WebSocket API v2 client: what Stargate (Elixir) does, as async Rust,
//! with its gaps fixed.
//!
//! Everything follows Pulsar's own WebSocket handler source (not only its docs, which differ
//! in places): endpoint paths with percent-encoded segments ([`Topic`]), query parameters
//! with the server's exact spellings, validated before connecting ([`ProducerParams`],
//! [`ConsumerParams`], [`ReaderParams`]), and the JSON frames ([`proto`]).
//!
//! # The client (feature `client`, on by default)
//!
//! * [`Producer`] — a cloneable handle on one persistent connection. Sends are pipelined and
//!   matched to receipts by context; [`Producer::send`] resolves to the [`MessageId`] or a
//!   typed error (`send-error:N` → [`Error::Send`]); [`Producer::enqueue`] returns the receipt
//!   future so many sends can be in flight; a callback variant and a blocking variant with a
//!   mandatory timeout; a max-in-flight limit. [`produce`] sends ad hoc to a URL.
//! * [`Consumer`] and [`Reader`] — `Stream`s of [`Message`]s with ack / nack, end-of-topic
//!   and unsubscribe. Pull mode with permits by default, so backpressure reaches the broker;
//!   push mode with exact in-flight accounting.
//! * [`run_handler`] (Stargate's handler + `processors: N`), and [`start_ordered`] /
//!   [`run_ordered`] (per-key order through ordering-core's dispatcher, on its own task or
//!   as a future).
//! * Connections ([`ClientConfig`]): ping keepalive with pong timeout; reconnection with
//!   backoff + jitter on any close, EOF or 429/5xx upgrade failure, restoring producers
//!   (pending sends resent or failed, per [`PendingPolicy`]), consumers and readers (resuming
//!   after the last delivered message); close codes are not trusted. `wss://` via rustls with
//!   a custom CA and client certificate; JWT in the header or the `token` parameter from a
//!   [`TokenProvider`] asked on every (re)connect; tokens are never logged.
//! * [`Client`] — owns producers, consumers and readers and finds them by Stargate's
//!   registry keys.
//! * `PulsarSource` (feature `batch`) — Pulsar topics as `headwaters-batch-flusher`
//!   sources: a subscription acked only for flushed records, or a reader resuming from the
//!   checkpoint store.
//!
//! # Example
//!
//! ```no_run
//! # mod headwaters { pub use headwaters_pulsar_ws as pulsar; }
//! # async fn demo() -> Result<(), headwaters_pulsar_ws::Error> {
//! use futures_util::StreamExt;
//! // Paths through the `headwaters` facade; with the crates alone: `headwaters::pulsar` → `headwaters_pulsar_ws`.
//! use headwaters::pulsar::{ClientConfig, Consumer, ConsumerOptions, Producer, ProducerOptions, Topic};
//!
//! let config = ClientConfig::new("ws://127.0.0.1:8080")?.with_token("my-jwt");
//! let topic: Topic = "persistent://public/default/orders".parse()?;
//! let mut consumer = Consumer::subscribe(&config, topic.clone(), "billing", ConsumerOptions::default()).await?;
//! let producer = Producer::connect(&config, topic, ProducerOptions::default()).await?;
//! producer.send(("order-7", "created")).await?;
//! let message = consumer.next().await.expect("open stream")?;
//! assert_eq!(message.key.as_deref(), Some("order-7"));
//! message.ack();
//! # Ok(()) }
//! ```
//!
//! # The protocol core
//!
//! Without the `client` feature only the IO-free core is built: [`topic`], [`params`] and
//! [`proto`], for use with another WebSocket stack:
//!
//! ```
//! # mod headwaters { pub use headwaters_pulsar_ws as pulsar; }
//! // Paths through the `headwaters` facade; with the crates alone: `headwaters::pulsar` → `headwaters_pulsar_ws`.
//! use headwaters::pulsar::{Command, ConsumerFrame, ConsumerParams, OutgoingMessage, SubscriptionType, Topic};
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

#[cfg(feature = "batch")]
mod batch;
#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
mod conn;
#[cfg(feature = "client")]
mod consumer;
#[cfg(feature = "client")]
mod error;
#[cfg(feature = "client")]
mod handler;
#[cfg(feature = "client")]
mod producer;
#[cfg(feature = "client")]
mod session;

#[cfg(feature = "batch")]
#[cfg_attr(docsrs, doc(cfg(feature = "batch")))]
pub use batch::{PulsarAck, PulsarSource, SourceMode};
#[cfg(feature = "client")]
pub use client::{Client, Component, RegistryKey, produce, produce_with};
#[cfg(feature = "client")]
pub use conn::{ClientConfig, DEFAULT_MAX_FRAME, TokenPlacement, TokenProvider};
#[cfg(feature = "client")]
pub use consumer::{
    AckHandle, Consumer, ConsumerHandle, ConsumerOptions, Message, Reader, ReaderHandle,
    ReaderOptions,
};
#[cfg(feature = "client")]
pub use error::{Error, TokenError};
#[cfg(feature = "client")]
pub use handler::{
    Handled, MessageHandler, OnDiscard, OrderedConsumer, Settler, run_handler, run_ordered,
    start_ordered, to_ordering_message,
};
#[cfg(feature = "client")]
pub use producer::{PendingPolicy, Producer, ProducerOptions, SendFuture};

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
