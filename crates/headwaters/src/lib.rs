//! Headwaters: consume and produce event streams reliably and in order.
//!
//! This facade re-exports the Headwaters crates as modules behind same-named features, so an
//! application depends on one crate and picks the transports it needs. Each module is also
//! published on its own (`headwaters-ordering-core`, `headwaters-process-status`, …) for
//! libraries that want a smaller dependency.
//!
//! What it does not do: add behaviour of its own. There is no umbrella error type; each module
//! keeps its own typed errors.
//!
//! # Layout
//!
//! * [`ordering`] — the shared vocabulary (message, key, settle handle, outcome) and the
//!   per-key ordered [`Dispatcher`](ordering::Dispatcher).
//! * [`status`] — last-processed timestamps per entity with SQLite/PostgreSQL storage.
//! * [`amqp`] — Mississippi on lapin: sharded producer with confirms, ordered consumer.
//! * [`pulsar`] — Stargate on tokio-tungstenite: the Pulsar WebSocket API's producer,
//!   consumer and reader with flow control, reconnection, TLS and JWT, handler and per-key
//!   ordered processing.
//! * [`eventstore`] — Extreme's EventStoreDB TCP client: appends with expected versions,
//!   reads of streams and `$all`, deletes, with heartbeats, retries and reconnection.
//! * [`flusher`] — erlmld's flusher and batch processor: batch records into a sink,
//!   checkpoint only the contiguous flushed prefix, restart one shard at a time.
//! * `kinesis` (opt-in: it brings the AWS SDK) — the batch processor on Amazon Kinesis: shard
//!   leases, resharding, KPL de-aggregation.
//!
//! # Feature flags
//!
//! | feature    | default | module              | crate                        |
//! |------------|---------|---------------------|------------------------------|
//! | `ordering` | yes     | [`ordering`]        | `headwaters-ordering-core`   |
//! | `status`   | yes     | [`status`]          | `headwaters-process-status`  |
//! | `flusher`  | yes     | [`flusher`]         | `headwaters-batch-flusher`   |
//! | `amqp`     | yes     | [`amqp`]            | `headwaters-amqp-consumer`   |
//! | `pulsar`   | yes     | [`pulsar`]          | `headwaters-pulsar-ws`       |
//! | `eventstore` | yes   | [`eventstore`]      | `headwaters-eventstore-tcp`  |
//! | `kinesis`  | no      | `kinesis`           | `headwaters-kinesis`         |
//!
//! # Example
//!
//! The runnable end-to-end example is `examples/pipeline.rs` (`cargo xtask demo`): a source
//! of messages over many keys through the ordered dispatcher, with process status recorded
//! in SQLite. In short:
//!
//! ```
//! # #[cfg(all(feature = "ordering", feature = "status"))]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use headwaters::ordering::{Config, Delivery, Dispatcher, Handler, Key, Message, NoSettle, Outcome, Timestamp};
//! use headwaters::status::{MemoryStore, ProcessStatus, WriteBehind};
//!
//! struct Record(ProcessStatus);
//!
//! impl Handler for Record {
//!     type State = ();
//!     type Continue = ();
//!     type Signal = ();
//!     type Reply = ();
//!     type Error = headwaters::status::Error;
//!
//!     async fn init(&self, _key: &Key) -> Result<(), Self::Error> { Ok(()) }
//!     async fn handle_message(&self, m: &Message, _: &mut ()) -> Result<Outcome, Self::Error> {
//!         let entity = std::str::from_utf8(&m.payload).unwrap_or("unknown");
//!         self.0.item_processed(entity, m.timestamp).await?;
//!         Ok(Outcome::ack())
//!     }
//!     async fn handle_signal(&self, _: (), _: &mut ()) {}
//! }
//!
//! let status = ProcessStatus::open(MemoryStore::new(), WriteBehind::default()).await.unwrap();
//! let dispatcher = Dispatcher::new(Record(status.clone()), Config::default()).unwrap();
//! let epoch = dispatcher.new_epoch();
//! let message = Message::new("posts", "m-1", Timestamp::from_micros(42));
//! dispatcher.dispatch(Delivery { key: Key::from("posts"), message, settle: NoSettle, epoch }).await.unwrap();
//! dispatcher.shutdown(std::time::Duration::from_secs(5)).await;
//! assert!(status.processed("posts", Timestamp::from_micros(42)));
//! # }
//! # #[cfg(not(all(feature = "ordering", feature = "status")))]
//! # fn main() {}
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(feature = "ordering")]
#[cfg_attr(docsrs, doc(cfg(feature = "ordering")))]
#[doc(inline)]
pub use headwaters_ordering_core as ordering;

#[cfg(feature = "amqp")]
#[cfg_attr(docsrs, doc(cfg(feature = "amqp")))]
#[doc(inline)]
pub use headwaters_amqp_consumer as amqp;

#[cfg(feature = "pulsar")]
#[cfg_attr(docsrs, doc(cfg(feature = "pulsar")))]
#[doc(inline)]
pub use headwaters_pulsar_ws as pulsar;

#[cfg(feature = "eventstore")]
#[cfg_attr(docsrs, doc(cfg(feature = "eventstore")))]
#[doc(inline)]
pub use headwaters_eventstore_tcp as eventstore;

#[cfg(feature = "flusher")]
#[cfg_attr(docsrs, doc(cfg(feature = "flusher")))]
#[doc(inline)]
pub use headwaters_batch_flusher as flusher;

#[cfg(feature = "kinesis")]
#[cfg_attr(docsrs, doc(cfg(feature = "kinesis")))]
#[doc(inline)]
pub use headwaters_kinesis as kinesis;

#[cfg(feature = "status")]
#[cfg_attr(docsrs, doc(cfg(feature = "status")))]
#[doc(inline)]
pub use headwaters_process_status as status;
