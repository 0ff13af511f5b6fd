//! erlmld's flusher and batch processor for any source: batch records into a sink and
//! checkpoint only what is safely flushed.
//!
//! A [`Source`] yields a shard's records (with positions and, optionally, per-record ack
//! handles); a [`Flusher`] (your sink) buffers them and returns their [`Token`]s when it has
//! written them. The processor flushes when the flusher is full, when the flush interval has
//! passed — **also when no records arrive** (erlmld only flushes when records come) — and on
//! every batch calls the flusher's heartbeat. The checkpoint is the position of the last
//! record of the **contiguous** prefix of flushed records (a gap blocks it; ignored records do
//! not), stored at most every checkpoint interval. Per-record acks are sent as soon as a
//! record is flushed or ignored, never before.
//!
//! Failure handling, unlike erlmld's (which takes the whole daemon down): a flusher error, a
//! bad token or a stuck flusher (watchdog) restarts **only that shard**, from its last
//! checkpoint, with backoff. At shard end (`TERMINATE`) everything is flushed, every token
//! must come back ([`Leftover`] otherwise) and the last record is checkpointed; on lease loss
//! (`ZOMBIE`) nothing is flushed or checkpointed.
//!
//! What it does not do: talk to a broker (sources come from the transport crates) or
//! deduplicate: after a restart, records after the checkpoint are flushed again
//! (at-least-once).
//!
//! # Layout
//!
//! * [`batch`] — [`Batch`], the IO-free core (tokens, checkpoint rule, schedule).
//! * [`Flusher`], [`FlusherFactory`] — the sink contract.
//! * [`Source`], [`SourceEvent`], [`SourceRecord`] — the record side.
//! * [`Checkpointer`] — checkpoint stores: [`MemoryCheckpoints`], [`SqliteCheckpoints`],
//!   [`PostgresCheckpoints`] (shared by many instances: owner lease + compare-and-set).
//! * [`run_shard`], [`BatchProcessor`] — the driver and its per-shard supervisor.
//!
//! # Feature flags
//!
//! | feature    | default | what it adds                                             |
//! |------------|---------|----------------------------------------------------------|
//! | `sqlite`   | yes     | [`SqliteCheckpoints`] (bundled SQLite)                    |
//! | `postgres` | yes     | [`PostgresCheckpoints`] (tokio-postgres, leases)          |
//!
//! # Example
//!
//! ```
//! # mod headwaters { pub use headwaters_batch_flusher as flusher; pub use headwaters_ordering_core as ordering; }
//! use futures_util::stream::{self, BoxStream, StreamExt};
//! // Paths through the `headwaters` facade; with the crates alone: `headwaters::flusher` → `headwaters_batch_flusher`, `headwaters::ordering` → `headwaters_ordering_core`.
//! use headwaters::flusher::*;
//! use headwaters::ordering::NoSettle;
//!
//! /// Five records, then the shard ends.
//! struct Five;
//! impl Source for Five {
//!     type Position = u64;
//!     type Record = String;
//!     type Ack = NoSettle;
//!     type Error = String;
//!     type Stream = BoxStream<'static, Result<SourceEvent<u64, String, NoSettle>, String>>;
//!     async fn open(&self, _shard: &str, from: Option<u64>) -> Result<Self::Stream, String> {
//!         let records = (from.unwrap_or(0) + 1..=5).map(|p| {
//!             Ok(SourceEvent::Record(SourceRecord { position: p, sub: None, record: format!("r{p}"), ack: NoSettle }))
//!         });
//!         Ok(stream::iter(records).chain(stream::iter([Ok(SourceEvent::ShardEnded)])).boxed())
//!     }
//! }
//!
//! /// Writes batches of two.
//! struct Pairs(Vec<(String, Token)>);
//! impl Flusher for Pairs {
//!     type Record = String;
//!     type Error = String;
//!     async fn add_record(&mut self, r: String, t: Token) -> Result<Added<String>, String> {
//!         if self.0.len() == 2 { return Ok(Added::Full(r)); }
//!         self.0.push((r, t));
//!         Ok(Added::Added)
//!     }
//!     async fn flush(&mut self, _: FlushKind) -> Result<Vec<Token>, String> {
//!         Ok(self.0.drain(..).map(|(_, t)| t).collect()) // a real sink writes here
//!     }
//! }
//! struct Factory;
//! impl FlusherFactory for Factory {
//!     type Flusher = Pairs;
//!     async fn init(&self, _shard: &str) -> Result<Pairs, String> { Ok(Pairs(Vec::new())) }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MemoryCheckpoints::new();
//! let processor = BatchProcessor::new(Five, Factory, store.clone(), ProcessorConfig::default());
//! processor.start("shard-0");
//! let ends = processor.wait().await;
//! assert_eq!(ends[0].1, ShardEnd::Terminated { checkpoint: Some("5".into()) });
//! assert_eq!(store.get("shard-0").as_deref(), Some("5"));
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod batch;
mod checkpoint;
mod flusher;
#[cfg(feature = "postgres")]
mod postgres;
mod processor;
mod source;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use batch::{Batch, Leftover, Schedule, SubSequence, Token, TokenError};
pub use checkpoint::{CheckpointError, Checkpointer, DEFAULT_TABLE, Lease, MemoryCheckpoints};
pub use flusher::{Added, FlushKind, Flusher, FlusherFactory};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresCheckpoints;
pub use processor::{
    BatchProcessor, ProcessorConfig, ProcessorStats, ShardEnd, ShardError, run_shard,
};
pub use source::{Position, Source, SourceEvent, SourceRecord};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteCheckpoints;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use tokio_postgres::error::SqlState;
