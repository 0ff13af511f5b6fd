//! The shared vocabulary of Headwaters and a bounded dispatcher that processes messages in
//! order per key.
//!
//! Every Headwaters transport (AMQP, Pulsar, EventStore) turns what it receives into a
//! [`Delivery`] — a [`Key`], a [`Message`], a [`Settle`] handle and an [`Epoch`] — so that the
//! same [`Dispatcher`], batch flusher and status store serve all of them, and each decision
//! flows back to the source the message came from. This is Mississippi's MessageTracker +
//! DataUpdater pair, for any transport, without its known ordering hole (a stopping handler
//! orphaning the messages queued behind it) and with a poison policy, epochs and bounds.
//!
//! What it does not do: talk to any broker, persist anything, or decide how keys are sharded
//! across machines (brokers do that: single-active-consumer queues, Key_Shared subscriptions).
//! Its API changes rarely; applications normally use it through the `headwaters` facade.
//!
//! # Guarantees
//!
//! * Per key, the handler sees messages in delivery order, one at a time; different keys run
//!   in parallel.
//! * Only the head of a key's FIFO is settled, at most once, after its handler finished.
//!   `Discard` rejects **without** requeue.
//! * A failing or panicking handler is replaced by a fresh one (`init` again) that gets the
//!   **same** message after a backoff, up to [`RetryPolicy::max_attempts`]; then the
//!   [`PoisonAction`] applies. Messages behind it wait, in order.
//! * `Stop` settles the message and terminates the handler; the key's queued messages are
//!   processed, in order, by a fresh handler — never orphaned or overtaken.
//! * Deliveries of a lost [`Epoch`] are never settled (their handles are stale); unstarted
//!   ones are dropped so the broker's redelivery is the only copy.
//! * At most [`Config::max_in_flight`] deliveries are held; beyond that
//!   [`Dispatcher::dispatch`] waits. Idle keys are evicted after [`Config::idle_timeout`].
//!
//! At-least-once: a message may be processed again after a failure or a lost connection;
//! handlers deduplicate with [`Message::message_id`] if they need to.
//!
//! # Layout
//!
//! * [`message`] — [`Key`], [`Message`], [`Headers`], [`Timestamp`].
//! * [`settle`] — [`Settle`], [`Settlement`], [`Epoch`], [`Delivery`].
//! * [`handler`] — the [`Handler`] trait, its one-method form [`SimpleHandler`], and
//!   [`Outcome`].
//! * [`tracker`] — [`Tracker`], the IO-free per-key state machine (no tokio, time passed in).
//! * `dispatcher` — [`Dispatcher`], the tokio driver running trackers in lanes.
//!
//! # Feature flags
//!
//! | feature      | default | what it adds                                   |
//! |--------------|---------|------------------------------------------------|
//! | `dispatcher` | yes     | [`Dispatcher`] and its types (tokio, futures)  |
//!
//! # Example
//!
//! ```
//! # mod headwaters { pub use headwaters_ordering_core as ordering; }
//! // Paths through the `headwaters` facade; with the crates alone: `headwaters::ordering` → `headwaters_ordering_core`.
//! use headwaters::ordering::{
//!     Config, Delivery, Dispatcher, Handler, Key, Message, NoSettle, Outcome, Timestamp,
//! };
//!
//! /// Sums the payload lengths seen per key.
//! struct Summer;
//!
//! impl Handler for Summer {
//!     type State = usize;
//!     type Continue = ();
//!     type Signal = ();
//!     type Reply = usize;
//!     type Error = std::convert::Infallible;
//!
//!     async fn init(&self, _key: &Key) -> Result<usize, Self::Error> {
//!         Ok(0)
//!     }
//!     async fn handle_message(&self, m: &Message, total: &mut usize) -> Result<Outcome, Self::Error> {
//!         *total += m.payload.len();
//!         Ok(Outcome::ack())
//!     }
//!     async fn handle_signal(&self, _: (), total: &mut usize) -> usize {
//!         *total
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let dispatcher = Dispatcher::new(Summer, Config::default()).unwrap();
//! let epoch = dispatcher.new_epoch();
//! for payload in ["a", "bb", "ccc"] {
//!     let message = Message::new(payload, "id", Timestamp::now());
//!     let delivery = Delivery { key: Key::from("k"), message, settle: NoSettle, epoch };
//!     dispatcher.dispatch(delivery).await.unwrap();
//! }
//! // Signals run between messages with no ordering guarantee, so wait for the acks first.
//! while dispatcher.metrics().acked < 3 {
//!     tokio::task::yield_now().await;
//! }
//! assert_eq!(dispatcher.signal("k", ()).await.unwrap(), 6);
//! dispatcher.shutdown(std::time::Duration::from_secs(1)).await;
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod backoff;
pub mod handler;
pub mod keepalive;
pub mod message;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod pg;
pub mod settle;
pub mod sql;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
pub mod tracker;

#[cfg(feature = "dispatcher")]
mod dispatcher;

pub use backoff::Backoff;
#[cfg(feature = "dispatcher")]
#[cfg_attr(docsrs, doc(cfg(feature = "dispatcher")))]
pub use backoff::Pause;
#[cfg(feature = "dispatcher")]
#[cfg_attr(docsrs, doc(cfg(feature = "dispatcher")))]
pub use dispatcher::{
    Config, ConfigError, DispatchError, Dispatcher, Metrics, Running, ShutdownReport, SignalError,
    SourceEvent, TryDispatchError, WaitTimeout,
};
pub use handler::{Handler, Outcome, SimpleHandler, StopAction, TerminateReason};
pub use keepalive::{Keepalive, Liveness};
pub use message::{HeaderValue, Headers, Key, Message, Timestamp};
pub use settle::{Delivery, Epoch, NoSettle, Settle, Settlement};
pub use tracker::{PoisonAction, RetryPolicy, Tracker};
