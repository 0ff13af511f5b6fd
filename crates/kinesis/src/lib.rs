//! Amazon Kinesis for the Headwaters batch processor — erlmld's home stream, without the KCL.
//!
//! * [`KinesisConfig`] — endpoint, region, credentials → an `aws_sdk_kinesis::Client`
//!   (rustls with ring, bounded connects and calls).
//! * [`KinesisSource`] — a [`Source`](headwaters_batch_flusher::Source) of a stream's shards:
//!   iterators from the checkpoint or an [`InitialPosition`], `GetRecords` with a batch size
//!   and idle time, throttling backed off, expired iterators re-created after the last
//!   record handed on, KPL aggregates split into user records with sub-sequence positions,
//!   `MillisBehindLatest` in [`Metrics`].
//! * [`KinesisWorker`] — the lease coordinator: shards listed (every page), free or expired
//!   leases taken in the checkpoint store, a batch processor per shard, children started
//!   only after their parents reached `SHARD_END`, zombies stopped without a flush.
//! * [`kpl`] — the KPL aggregation format, both ways.
//! * [`KinesisPosition`] — checkpoints: `SEQ`, `SEQ:INDEX` inside an aggregate, `SHARD_END`.
//!
//! # Example
//!
//! ```no_run
//! use headwaters_batch_flusher::{Added, FlushKind, Flusher, FlusherFactory, MemoryCheckpoints, Token};
//! use headwaters_kinesis::{KinesisConfig, KinesisRecord, KinesisSource, KinesisWorker, ReadSettings, WorkerConfig};
//!
//! /// Prints records in batches.
//! struct Print(Vec<Token>);
//! impl Flusher for Print {
//!     type Record = KinesisRecord;
//!     type Error = std::convert::Infallible;
//!     async fn add_record(&mut self, r: KinesisRecord, t: Token) -> Result<Added<KinesisRecord>, Self::Error> {
//!         println!("{} {}: {} bytes", r.shard_id, r.partition_key, r.data.len());
//!         self.0.push(t);
//!         Ok(Added::Added)
//!     }
//!     async fn flush(&mut self, _: FlushKind) -> Result<Vec<Token>, Self::Error> {
//!         Ok(std::mem::take(&mut self.0))
//!     }
//! }
//! struct Factory;
//! impl FlusherFactory for Factory {
//!     type Flusher = Print;
//!     async fn init(&self, _shard: &str) -> Result<Print, std::convert::Infallible> { Ok(Print(Vec::new())) }
//! }
//!
//! # async fn run() -> Result<(), headwaters_kinesis::Error> {
//! let config = KinesisConfig::from_env(); // or ::new("eu-west-1").with_endpoint("http://127.0.0.1:4567")…
//! let source = KinesisSource::new(&config, "orders", ReadSettings::default())?;
//! let worker = KinesisWorker::new(source, Factory, MemoryCheckpoints::new(), WorkerConfig::default());
//! worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod client;
mod error;
pub mod kpl;
mod position;
mod source;
mod worker;

pub use client::KinesisConfig;
pub use error::Error;
pub use position::{BadPosition, KinesisPosition, SHARD_END};
pub use source::{
    InitialPosition, KinesisRecord, KinesisSource, Metrics, ReadSettings, ShardStream,
};
pub use worker::{KinesisWorker, Round, ShardInfo, WorkerConfig};
