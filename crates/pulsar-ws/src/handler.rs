//! Handler-based receiving, like Stargate's receivers: [`MessageHandler`] with `processors`
//! parallelism ([`run_handler`]), and per-key ordered processing through ordering-core
//! ([`run_ordered`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use headwaters_ordering_core::{
    self as ordering, Delivery, Dispatcher, Epoch, Headers, Key, Running, Settlement,
    ShutdownReport, SourceEvent, Timestamp,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::consumer::{Consumer, Message};
use crate::error::Error;
use crate::producer::Producer;
use crate::proto::OutgoingMessage;

/// What a [`MessageHandler`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handled {
    /// Acknowledge the message.
    Ack,
    /// Negatively acknowledge it (redelivered after `negativeAckRedeliveryDelay`).
    Nack,
    /// Do not settle it now (Stargate's `:continue`). In push mode every message must be
    /// settled eventually or the stream stalls at `receiverQueueSize`.
    Continue,
}

/// Processes messages one at a time per processor, with per-processor state.
pub trait MessageHandler: Send + Sync + 'static {
    /// State of one processor.
    type State: Send + 'static;

    /// Create a processor's state.
    fn init(&self) -> impl Future<Output = Self::State> + Send;

    /// Handle one message.
    fn handle_message(
        &self,
        message: &Message,
        state: &mut Self::State,
    ) -> impl Future<Output = Handled> + Send;
}

/// Feed a consumer or reader to `processors` concurrent processors until the stream ends.
/// Messages are not kept in order across processors (use [`run_ordered`] for per-key
/// order). Malformed frames are logged and skipped; an error that ended the stream is
/// returned.
pub async fn run_handler<S, H>(stream: S, handler: H, processors: usize) -> Result<(), Error>
where
    S: Stream<Item = Result<Message, Error>> + Send + Unpin + 'static,
    H: MessageHandler,
{
    let stream = Arc::new(tokio::sync::Mutex::new(stream));
    let handler = Arc::new(handler);
    let mut tasks = JoinSet::new();
    for _ in 0..processors.max(1) {
        let (stream, handler) = (stream.clone(), handler.clone());
        tasks.spawn(async move {
            let mut state = handler.init().await;
            let mut fatal = None;
            loop {
                let item = stream.lock().await.next().await;
                match item {
                    None => return fatal.map_or(Ok(()), Err),
                    Some(Err(Error::Decode(e))) => {
                        tracing::warn!(error = %e, "pulsar-ws handler: skipping a malformed frame");
                    }
                    Some(Err(e)) => fatal = Some(e),
                    Some(Ok(m)) => match handler.handle_message(&m, &mut state).await {
                        Handled::Ack => m.ack(),
                        Handled::Nack => m.nack(),
                        Handled::Continue => {}
                    },
                }
            }
        });
    }
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Err(e)) => result = Err(e),
            Err(panic) => {
                tracing::error!(error = %panic, "pulsar-ws handler: a processor panicked");
            }
            Ok(Ok(())) => {}
        }
    }
    result
}

/// The ordering-core message for a Pulsar message: payload, properties as headers (plus
/// `pulsar.key`), the message id, the event time or else the publish time, and the
/// redelivery count.
pub fn to_ordering_message(m: &Message) -> ordering::Message {
    let mut headers = Headers::new();
    for (k, v) in &m.properties {
        headers.insert(k.clone(), v.as_str());
    }
    if let Some(k) = &m.key {
        headers.insert("pulsar.key".to_owned(), k.as_str());
    }
    let at: Timestamp = m.event_time.unwrap_or(m.publish_time).timestamp;
    ordering::Message::new(m.payload.clone(), m.message_id.as_str(), at)
        .with_headers(headers)
        .with_redeliveries(m.redelivery_count)
}

/// Process a consumer's messages through an ordering-core [`Dispatcher`]: messages of one
/// key are handled one at a time, in delivery order; different keys run concurrently
/// (Key_Shared subscriptions keep each key on one consumer, so order holds across a group).
/// Messages without a key are keyed by their id (no order among them).
///
/// Settlements map to Pulsar as: `Ack` → ack; `Reject { requeue: true }` → nack;
/// `Reject { requeue: false }` (a discard) → as `on_discard` says: the WebSocket API has no
/// reject-to-dead-letter frame, so the choice of what a discard means is yours to make.
/// When the stream ends the dispatcher drains for up to `grace`.
///
/// Each connection of the consumer is a dispatcher epoch. When a connection is lost, the
/// broker redelivers what it had not acknowledged — possibly to another consumer of the
/// group — so the messages of that connection not yet started are dropped here (the
/// redelivery brings them back in order), and a handler state they fed ends before its key's
/// next message ([`TerminateReason::EpochLost`](ordering::TerminateReason::EpochLost)).
///
/// Keys also move between the consumers of a Key_Shared group when another consumer joins or
/// leaves; the broker keeps each key's order through that (it waits until the old consumer
/// acknowledged what it holds), but this consumer is not told. A handler state kept only in
/// memory may then be behind when the key comes back: let `init` read your checkpoint, or
/// keep the idle timeout short.
pub async fn run_ordered<H>(
    consumer: Consumer,
    handler: H,
    config: ordering::Config,
    grace: Duration,
    on_discard: OnDiscard,
) -> Result<ShutdownReport, Error>
where
    H: ordering::Handler,
{
    let dispatcher: Dispatcher<H, Settler> =
        Dispatcher::new(handler, config).map_err(Error::Dispatcher)?;
    dispatcher
        .run(
            OrderedSource::new(consumer, on_discard).into_stream(),
            grace,
        )
        .await
}

/// An ordered Pulsar consumer at work: what [`start_ordered`] returns.
pub type OrderedConsumer<H> = Running<H, Settler, Error>;

/// [`run_ordered`] on a task of its own: the same processing, stopped by
/// [`OrderedConsumer::shutdown`] (handlers finish within the grace, their acks go out, then
/// the consumer closes) — the shape of AMQP's `Consumer::start` and EventStore's
/// `ordered::start_ordered`.
///
/// ```no_run
/// # mod headwaters { pub use headwaters_pulsar_ws as pulsar; pub use headwaters_ordering_core as ordering; }
/// # async fn demo() -> Result<(), headwaters_pulsar_ws::Error> {
/// use std::time::Duration;
/// // Paths through the `headwaters` facade; with the crates alone: `headwaters::pulsar` → `headwaters_pulsar_ws`, `headwaters::ordering` → `headwaters_ordering_core`.
/// use headwaters::ordering::{Config, Key, Message, Outcome, SimpleHandler};
/// use headwaters::pulsar::{ClientConfig, Consumer, ConsumerOptions, OnDiscard, Topic, start_ordered};
///
/// struct Print;
/// impl SimpleHandler for Print {
///     type Error = std::convert::Infallible;
///     async fn handle(&self, key: &Key, m: &Message) -> Result<Outcome, Self::Error> {
///         println!("{key}: {} bytes", m.payload.len());
///         Ok(Outcome::ack())
///     }
/// }
///
/// let config = ClientConfig::new("ws://127.0.0.1:8080")?;
/// let topic = Topic::persistent("public", "default", "orders")?;
/// let consumer = Consumer::subscribe(&config, topic, "in-order", ConsumerOptions::default()).await?;
/// let running = start_ordered(consumer, Print, Config::default(), OnDiscard::Acknowledge)?;
/// // … later:
/// let report = running.shutdown(Duration::from_secs(10)).await?;
/// # let _ = report; Ok(()) }
/// ```
pub fn start_ordered<H>(
    consumer: Consumer,
    handler: H,
    config: ordering::Config,
    on_discard: OnDiscard,
) -> Result<OrderedConsumer<H>, Error>
where
    H: ordering::Handler,
{
    let dispatcher: Dispatcher<H, Settler> =
        Dispatcher::new(handler, config).map_err(Error::Dispatcher)?;
    Ok(dispatcher.start(OrderedSource::new(consumer, on_discard).into_stream()))
}

/// A consumer as a dispatcher source: each connection is an epoch (its number), lost as
/// soon as the consumer notices, before the next connection's messages.
struct OrderedSource {
    consumer: Consumer,
    /// The consumer's connection number; `None` once its task ended.
    connection: Option<watch::Receiver<u64>>,
    current: u64,
    /// A delivery of a newer connection, held back behind the loss of the current one.
    next: Option<Delivery<Settler>>,
    on_discard: OnDiscard,
}

impl OrderedSource {
    fn new(consumer: Consumer, on_discard: OnDiscard) -> Self {
        let mut connection = consumer.handle().connection();
        let current = *connection.borrow_and_update();
        Self {
            consumer,
            connection: Some(connection),
            current,
            next: None,
            on_discard,
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<SourceEvent<Settler>, Error>> + Send {
        futures_util::stream::unfold(self, |mut source| async move {
            let event = source.next().await?;
            Some((event, source))
        })
    }

    async fn next(&mut self) -> Option<Result<SourceEvent<Settler>, Error>> {
        if let Some(delivery) = self.next.take() {
            return Some(Ok(SourceEvent::Delivery(delivery)));
        }
        loop {
            let item = tokio::select! {
                // A lost connection is noticed at once, not when the next one delivers.
                connection = changed(&mut self.connection) => match connection {
                    Some(c) if c > self.current => return Some(Ok(self.switch_to(c))),
                    _ => continue,
                },
                item = self.consumer.next() => item?,
            };
            let m = match item {
                Ok(m) => m,
                Err(Error::Decode(e)) => {
                    tracing::warn!(error = %e, "pulsar-ws ordered: skipping a malformed frame");
                    continue;
                }
                Err(e) => return Some(Err(e)),
            };
            // Messages of an older connection carry its lost epoch: the dispatcher drops them.
            let connection = m.connection();
            let key = Key::new(
                m.key
                    .clone()
                    .unwrap_or_else(|| m.message_id.as_str().to_owned()),
            );
            let delivery = Delivery {
                key,
                message: to_ordering_message(&m),
                settle: Settler {
                    message: m,
                    on_discard: self.on_discard.clone(),
                },
                epoch: Epoch::new(connection),
            };
            if connection > self.current {
                self.next = Some(delivery);
                return Some(Ok(self.switch_to(connection)));
            }
            return Some(Ok(SourceEvent::Delivery(delivery)));
        }
    }

    fn switch_to(&mut self, connection: u64) -> SourceEvent<Settler> {
        let lost = Epoch::new(self.current);
        self.current = connection;
        SourceEvent::EpochLost(lost)
    }
}

/// The next connection number, or `None` when the consumer's task ended (then never again).
async fn changed(watch: &mut Option<watch::Receiver<u64>>) -> Option<u64> {
    let Some(w) = watch else {
        return std::future::pending().await;
    };
    if w.changed().await.is_err() {
        *watch = None;
        return None;
    }
    Some(*w.borrow_and_update())
}

/// What a `Discard` outcome does to a Pulsar message in [`run_ordered`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum OnDiscard {
    /// Produce it to this dead-letter topic — payload, key, properties, plus
    /// `pulsar.origin.topic` and `pulsar.origin.message_id` — and ack it once the dead-letter
    /// topic has it; if that send fails, nack it, so it comes back: a discard loses nothing.
    DeadLetter(Producer),
    /// Acknowledge it: the message is gone. Choose this only where losing a discarded message
    /// is acceptable.
    Acknowledge,
}

/// Settles a Pulsar message from the ordered dispatcher.
#[derive(Debug)]
pub struct Settler {
    message: Message,
    on_discard: OnDiscard,
}

impl ordering::Settle for Settler {
    fn settle(self, settlement: Settlement) {
        let m = self.message;
        match (settlement, self.on_discard) {
            (Settlement::Ack, _) => m.ack(),
            (Settlement::Reject { requeue: true }, _) => m.nack(),
            (Settlement::Reject { requeue: false }, OnDiscard::Acknowledge) => m.ack(),
            (Settlement::Reject { requeue: false }, OnDiscard::DeadLetter(dead_letter)) => {
                let mut out = OutgoingMessage::new(m.payload.clone());
                out.key.clone_from(&m.key);
                out.properties.clone_from(&m.properties);
                out.properties
                    .insert("pulsar.origin.topic".into(), m.topic.to_string());
                out.properties.insert(
                    "pulsar.origin.message_id".into(),
                    m.message_id.as_str().to_owned(),
                );
                tokio::spawn(async move {
                    match dead_letter.send(out).await {
                        Ok(_) => m.ack(),
                        Err(e) => {
                            tracing::warn!(error = %e, message_id = %m.message_id.as_str(), "pulsar-ws ordered: the dead-letter topic did not take a discarded message; nacked, it will come back");
                            m.nack();
                        }
                    }
                });
            }
        }
    }
}
