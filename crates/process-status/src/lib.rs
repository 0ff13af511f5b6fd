//! Last-processed timestamps per entity — EventStreamex's process status — with storage
//! adapters that are safe under crashes and cheap under load.
//!
//! A consumer records, per entity (a table, a stream, an aggregate), the timestamp of the last
//! event it fully processed; readers ask [`ProcessStatus::processed`] whether their write has
//! been processed yet (EventStreamex answers HTTP 425 until it has). Reads come from memory;
//! writes are coalesced per entity and committed in batches with a bounded delay, so recording
//! never costs a database round trip per event.
//!
//! What it does not do: decide what "processed" means for your pipeline (record after every
//! consumer of the event finished), or replicate the in-memory view between processes (share
//! a PostgreSQL store and open a [`ProcessStatus`] in each).
//!
//! # Layout
//!
//! * [`ProcessStatus`] — the view and the write-behind ([`WriteBehind`] settings); its docs
//!   state exactly what is durable when.
//! * [`StatusStore`] — the storage contract; [`MemoryStore`], [`NoopStore`] (dev only),
//!   [`SqliteStore`] (embedded default), [`PostgresStore`] (EventStreamex-compatible table).
//! * [`Error`] — typed failures (bad URL, unreachable database, SQLSTATE codes).
//!
//! # Feature flags
//!
//! | feature    | default | what it adds                                          |
//! |------------|---------|-------------------------------------------------------|
//! | `sqlite`   | yes     | [`SqliteStore`] (bundled SQLite, WAL)                 |
//! | `postgres` | yes     | [`PostgresStore`] (tokio-postgres)                    |
//!
//! # Example
//!
//! ```
//! # mod headwaters { pub use headwaters_process_status as status; }
//! # #[cfg(feature = "sqlite")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), headwaters_process_status::Error> {
//! // Paths through the `headwaters` facade; with the crates alone: `headwaters::status` → `headwaters_process_status`.
//! use headwaters::status::{ProcessStatus, SqliteStore, Timestamp, WriteBehind};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = SqliteStore::open(dir.path().join("status.db")).await?;
//! let status = ProcessStatus::open(store, WriteBehind::default()).await?;
//!
//! status.item_processed("posts", Timestamp::from_micros(1_000)).await?;
//! status.item_processed("posts", Timestamp::from_micros(900)).await?; // never backwards
//! assert!(status.processed("posts", Timestamp::from_micros(1_000)));
//! assert!(!status.processed("comments", Timestamp::from_micros(1)));
//!
//! status.flush().await?; // durable from here on
//! status.close().await?;
//!
//! // A restart loads what was committed.
//! let again = ProcessStatus::open(SqliteStore::open(dir.path().join("status.db")).await?, WriteBehind::default()).await?;
//! assert_eq!(again.last_processed("posts"), Some(Timestamp::from_micros(1_000)));
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "sqlite"))]
//! # fn main() {}
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod error;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod status;
mod store;

pub use error::Error;
pub use headwaters_ordering_core::Timestamp;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::{SqliteStore, Sync as SqliteSync};
pub use status::{ProcessStatus, WriteBehind};
pub use store::{Item, MemoryStore, NoopStore, StatusStore};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use tokio_postgres::error::SqlState;

/// The table EventStreamex uses; the default of the SQL adapters.
pub const DEFAULT_TABLE: &str = "event_streamex_process_status";
