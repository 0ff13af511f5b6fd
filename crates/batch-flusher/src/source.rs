//! The record side: a [`Source`] opens a shard's stream from a checkpoint.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use futures_util::Stream;
use headwaters_ordering_core::Settle;

use crate::batch::SubSequence;

/// A position in a shard (a delivery tag, a Pulsar message id, an EventStore event number or
/// `$all` position). Checkpoint stores keep its `Display` form and parse it back with `FromStr`.
pub trait Position:
    Clone + fmt::Debug + fmt::Display + FromStr<Err: fmt::Display> + Send + Sync + 'static
{
}

impl<T> Position for T where
    T: Clone + fmt::Debug + fmt::Display + FromStr<Err: fmt::Display> + Send + Sync + 'static
{
}

/// One record from a source.
#[derive(Debug)]
pub struct SourceRecord<P, R, A> {
    /// Where it is.
    pub position: P,
    /// Its place inside an aggregate, if it is part of one.
    pub sub: Option<SubSequence>,
    /// The record for the flusher.
    pub record: R,
    /// Settled with `Ack` once the record is flushed or ignored (source-native
    /// checkpointing: AMQP acks, Pulsar acks, EventStore persistent-subscription acks); dropped
    /// unsettled when the shard stops without flushing it, so the source redelivers it.
    pub ack: A,
}

/// What a shard's stream yields.
#[derive(Debug)]
pub enum SourceEvent<P, R, A> {
    /// A record.
    Record(SourceRecord<P, R, A>),
    /// The shard ended for good (split, merge, stream deleted): flush everything, checkpoint
    /// the last record, stop (KCL `TERMINATE`).
    ShardEnded,
    /// Another consumer owns the shard now: stop at once, no flush, no checkpoint (KCL
    /// `ZOMBIE`).
    LeaseLost,
}

/// Opens shard streams.
pub trait Source: Send + Sync + 'static {
    /// Positions of its records.
    type Position: Position;
    /// Its records.
    type Record: Send + 'static;
    /// Per-record acknowledgement handle ([`NoSettle`](headwaters_ordering_core::NoSettle)
    /// for sources checkpointed only in a store).
    type Ack: Settle;
    /// Its failures; the shard restarts from its last checkpoint after one.
    type Error: fmt::Display + Send + 'static;
    /// The stream of a shard.
    type Stream: Stream<Item = Result<SourceEvent<Self::Position, Self::Record, Self::Ack>, Self::Error>>
        + Send
        + Unpin
        + 'static;

    /// Open `shard` after `from` (or from the start if there is no checkpoint).
    fn open(
        &self,
        shard: &str,
        from: Option<Self::Position>,
    ) -> impl Future<Output = Result<Self::Stream, Self::Error>> + Send;
}
