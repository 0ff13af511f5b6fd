//! Mississippi on lapin: a sharded AMQP producer and a consumer that processes messages in
//! order per key.
//!
//! A [`Producer`] publishes each message to shard queue `prefix + hash(key) mod total_count`
//! (FNV-1a over the key's bytes, see [`shard`]; or, in Elixir Mississippi's
//! [`WireFormat`], `phash2` over the key's Erlang term) with publisher confirms and `mandatory`:
//! `publish` succeeds only when the broker stored the message. A [`Consumer`] consumes the
//! shard queues of its range, one channel each, and runs an ordering-core
//! [`Handler`](headwaters_ordering_core::Handler) over them: per key in order, one message in
//! flight per key, many keys in parallel.
//!
//! Fixes over Mississippi: publisher confirms (it had none), unroutable messages are errors
//! (it dropped them), topology declared once per connection (it declared per publish),
//! `Discard` is `basic.reject(requeue=false)` (it requeued), a message without a sharding key
//! is rejected, not acked, a stopping handler does not orphan its key's queue, and deliveries
//! of a dead channel are never acked with stale tags.
//!
//! It runs beside Elixir Mississippi on the same queues when both sides of the Rust fleet use
//! [`WireFormat::Mississippi`]: keys are Erlang terms ([`etf`]), written with
//! `term_to_binary` and routed with `phash2`, exactly as Mississippi does.
//!
//! What it does not do: retry publishes for you (a failed publish is an error to handle;
//! retrying may duplicate).
//!
//! # Layout
//!
//! * [`AmqpConfig`] — URL (amqp/amqps), shard queues, range, prefetch, SAC, dead-lettering.
//! * [`Producer`], [`PublishOptions`] — publishing.
//! * [`Consumer`] — ordered consumption, reconnection, graceful shutdown.
//! * [`acks`] — [`AckWindow`](acks::AckWindow), the IO-free ack coalescer.
//! * [`shard`] — the key → queue function of the native format.
//! * [`WireFormat`] — native or Mississippi keys; [`etf`] — Erlang terms (External Term
//!   Format codec, canonical keys, `phash2`), IO-free.
//! * [`Error`] — typed errors carrying the broker's reason.
//! * `AmqpShardSource` (feature `batch`) — a shard queue as a `headwaters-batch-flusher`
//!   source, acked only for flushed records.
//!
//! # Feature flags
//!
//! | feature | default | what it adds                                                  |
//! |---------|---------|---------------------------------------------------------------|
//! | `batch` | no      | `AmqpShardSource`, `AmqpRecord` (depends on the batch flusher) |
//!
//! # Example
//!
//! ```no_run
//! # mod headwaters { pub use headwaters_amqp_consumer as amqp; pub use headwaters_ordering_core as ordering; }
//! // Paths through the `headwaters` facade; with the crates alone: `headwaters::amqp` → `headwaters_amqp_consumer`, `headwaters::ordering` → `headwaters_ordering_core`.
//! use headwaters::amqp::{AmqpConfig, Consumer, Producer, PublishOptions};
//! use headwaters::ordering::{Config, Handler, Key, Message, Outcome};
//!
//! struct Print;
//! impl Handler for Print {
//!     type State = ();
//!     type Continue = ();
//!     type Signal = ();
//!     type Reply = ();
//!     type Error = std::convert::Infallible;
//!     async fn init(&self, _: &Key) -> Result<(), Self::Error> { Ok(()) }
//!     async fn handle_message(&self, m: &Message, _: &mut ()) -> Result<Outcome, Self::Error> {
//!         println!("{}: {:?}", m.message_id, m.payload);
//!         Ok(Outcome::ack())
//!     }
//!     async fn handle_signal(&self, _: (), _: &mut ()) {}
//! }
//!
//! # async fn run() -> Result<(), headwaters_amqp_consumer::Error> {
//! let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f");
//! let consumer = Consumer::start(config.clone(), Print, Config::default()).await?;
//! let producer = Producer::connect(config).await?;
//! producer.publish(b"hello", PublishOptions::key("user-1")).await?; // confirmed
//! consumer.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod acks;
#[cfg(feature = "batch")]
mod batch;
mod config;
mod consumer;
mod error;
pub mod etf;
mod link;
mod producer;
pub mod shard;
mod wire;

#[cfg(feature = "batch")]
#[cfg_attr(docsrs, doc(cfg(feature = "batch")))]
pub use batch::{AmqpRecord, AmqpShardSource};
pub use config::{AmqpConfig, DeadLetter, TlsConfig};
pub use consumer::{AmqpSettle, Consumer, ConsumerStats};
pub use error::Error;
pub use producer::{Producer, PublishOptions, SHARDING_KEY_HEADER};
pub use wire::WireFormat;
