//! How a decision about a message flows back to its source: [`Settle`], [`Settlement`],
//! [`Epoch`] and [`Delivery`].

use crate::message::{Key, Message};

/// What the source is told about a message once its handler finished.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Settlement {
    /// Processed: the source may forget it (AMQP `basic.ack`, Pulsar ack, EventStore ack).
    Ack,
    /// Not processed. With `requeue: false` the message is dead-lettered where the source
    /// supports it (AMQP `basic.reject(requeue=false)`); with `requeue: true` the source
    /// redelivers it.
    Reject {
        /// Whether the source should redeliver the message.
        requeue: bool,
    },
}

/// A transport's handle to one delivered message, consumed exactly once to settle it.
///
/// Implementations must not block: hand the decision to the transport's own machinery (an ack
/// coalescer, a channel to the connection task) and return. A handle that is dropped without
/// being settled means "never settle this delivery": the dispatcher does that for deliveries
/// of a lost [`Epoch`], and the source is expected to redeliver them.
///
/// Closures implement it, which is handy in tests:
///
/// ```
/// use headwaters_ordering_core::{Settle, Settlement};
/// let (tx, rx) = std::sync::mpsc::channel();
/// let handle = move |s: Settlement| tx.send(s).unwrap();
/// handle.settle(Settlement::Ack);
/// assert_eq!(rx.recv().unwrap(), Settlement::Ack);
/// ```
pub trait Settle: Send + 'static {
    /// Settle the delivery.
    fn settle(self, settlement: Settlement);
}

impl<F> Settle for F
where
    F: FnOnce(Settlement) + Send + 'static,
{
    fn settle(self, settlement: Settlement) {
        self(settlement);
    }
}

/// A settle handle for sources that have nothing to acknowledge (readers, synthetic sources).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSettle;

impl Settle for NoSettle {
    fn settle(self, _settlement: Settlement) {}
}

/// One life of a source connection (an AMQP channel, a WebSocket, a TCP connection).
///
/// A transport takes a new epoch for every connection and declares it lost when the
/// connection dies. Deliveries of a lost epoch that have not started are dropped without being
/// settled (the broker redelivers them), and a delivery whose handler was running when its
/// epoch was lost is not settled either: its handle is stale.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Epoch(u64);

impl Epoch {
    /// An epoch with the given number. The dispatcher hands these out; the IO-free
    /// [`Tracker`](crate::Tracker) accepts any.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The epoch's number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// A message as it arrives from a source: its key, the message, the handle that settles it and
/// the epoch of the connection it came on.
#[derive(Debug)]
pub struct Delivery<S> {
    /// The sharding key.
    pub key: Key,
    /// The message.
    pub message: Message,
    /// The source's settle handle.
    pub settle: S,
    /// The connection epoch the message arrived on.
    pub epoch: Epoch,
}
