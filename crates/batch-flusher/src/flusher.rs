//! The sink side: [`Flusher`] (erlmld's `erlmld_flusher` behaviour) and its [`FlusherFactory`].

use std::fmt;
use std::future::Future;

use crate::batch::Token;

/// What [`Flusher::add_record`] did with a record.
#[derive(Debug)]
pub enum Added<R> {
    /// Buffered; its token comes back from a later flush.
    Added,
    /// Not wanted; it counts as done at once (its token is never returned).
    Ignored,
    /// The batch is full: the record is handed back; the processor flushes and adds it again.
    Full(R),
}

/// How much a flush must write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushKind {
    /// Whatever the flusher chooses to write now (the flush interval passed, or it was full).
    Partial,
    /// Everything outstanding: the shard is ending and will checkpoint its last record.
    Full,
}

/// A batching sink for one shard. Records come with a [`Token`]; a flush returns the tokens of
/// the records it made durable, in any order. The processor checkpoints only over the
/// contiguous prefix of returned tokens, so a flusher may write records out of order.
pub trait Flusher: Send + 'static {
    /// The records it takes.
    type Record: Send + 'static;
    /// Its failures; a failure restarts the shard from its last checkpoint.
    type Error: fmt::Display + Send + 'static;

    /// Buffer a record.
    fn add_record(
        &mut self,
        record: Self::Record,
        token: Token,
    ) -> impl Future<Output = Result<Added<Self::Record>, Self::Error>> + Send;

    /// Write buffered records; return the tokens of those now durable.
    fn flush(
        &mut self,
        kind: FlushKind,
    ) -> impl Future<Output = Result<Vec<Token>, Self::Error>> + Send;

    /// Called on every batch and every timer tick, records or not. Tokens it returns count as a
    /// partial flush (a flusher with its own timer can flush here).
    fn heartbeat(&mut self) -> impl Future<Output = Result<Vec<Token>, Self::Error>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// Makes a [`Flusher`] for a shard (erlmld's `init(ShardId, Data)`; the data is the factory's
/// own fields). Called again when the shard restarts.
pub trait FlusherFactory: Send + Sync + 'static {
    /// The flusher it makes.
    type Flusher: Flusher;

    /// A fresh flusher for `shard`.
    fn init(
        &self,
        shard: &str,
    ) -> impl Future<Output = Result<Self::Flusher, <Self::Flusher as Flusher>::Error>> + Send;
}
