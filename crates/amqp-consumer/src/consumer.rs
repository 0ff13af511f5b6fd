//! [`Consumer`]: one consumer per shard queue, deliveries dispatched in order per key through
//! the ordering-core [`Dispatcher`], acks coalesced per channel, reconnection built in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::StreamExt;
use headwaters_ordering_core::{
    Config as DispatchConfig, Delivery, Dispatcher, Epoch, HeaderValue, Headers, Key, Message,
    Settle, Settlement, ShutdownReport, Timestamp, WaitTimeout,
};
use headwaters_ordering_core::{Handler, Pause, SourceEvent};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::acks::{AckOp, AckWindow};
use crate::config::{AmqpConfig, target};
use crate::link::{bounded, connect, declare};
use crate::producer::SHARDING_KEY_HEADER;

/// The header in which quorum queues count a message's earlier delivery attempts.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
use crate::shard::queue_name;
use crate::{Error, WireFormat};

/// Settles one delivery through its channel's ack coalescer.
#[derive(Debug)]
pub struct AmqpSettle {
    tag: u64,
    acks: Arc<ChannelAcks>,
}

impl AmqpSettle {
    pub(crate) fn new(tag: u64, acks: Arc<ChannelAcks>) -> Self {
        Self { tag, acks }
    }
}

impl Settle for AmqpSettle {
    fn settle(self, settlement: Settlement) {
        self.acks.settle(self.tag, settlement);
    }
}

/// A channel's settlements, shared by its deliveries' settle handles and its coalescer task.
/// Settling only records (no task wake-up per message); the coalescer sends on its tick, or at
/// once for rejects.
#[derive(Debug)]
pub(crate) struct ChannelAcks {
    state: std::sync::Mutex<AckState>,
    urgent: tokio::sync::Notify,
}

#[derive(Debug)]
struct AckState {
    window: AckWindow,
    out: Vec<AckOp>,
}

impl ChannelAcks {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: std::sync::Mutex::new(AckState {
                window: AckWindow::new(),
                out: Vec::new(),
            }),
            urgent: tokio::sync::Notify::new(),
        })
    }

    fn settle(&self, tag: u64, settlement: Settlement) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let AckState { window, out } = &mut *state;
        window.settle(tag, settlement, out);
        if !out.is_empty() {
            self.urgent.notify_one();
        }
    }

    /// What to send now; `tick` also flushes coalesced acks, `all` everything.
    fn take(&self, tick: bool, all: bool, into: &mut Vec<AckOp>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let AckState { window, out } = &mut *state;
        if all {
            window.flush_all(out);
        } else if tick {
            window.flush(out);
        }
        into.append(out);
    }
}

/// Counters of a [`Consumer`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Connections established (the first included).
    pub connections: u64,
    /// Deliveries received.
    pub deliveries: u64,
    /// Deliveries without a usable sharding key (rejected without requeue).
    pub invalid: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    deliveries: AtomicU64,
    invalid: AtomicU64,
}

/// Where a consumer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// Cancel the consumers: no new deliveries.
    Stopping,
    /// The dispatcher has drained: send the last acks and close.
    Drained,
    /// Die: close the connection at once, ack nothing more.
    Aborted,
}

/// Consumes the shard queues of [`AmqpConfig::range`] and runs a [`Handler`] over them in
/// order per sharding key.
///
/// * Deliveries carry the key in the `sharding_key` header; one without it is rejected
///   without requeue (dead-lettered if configured) and logged — never acked silently.
/// * `Ack` settles are coalesced: `basic.ack(N, multiple=true)` once every tag up to `N` is
///   settled; `Discard` is `basic.reject(requeue=false)`, sent at once.
/// * When the connection drops, its deliveries' epoch is declared lost (unstarted ones are
///   dropped, running ones are not acked), and the consumer reconnects with backoff and
///   jitter, re-declares and re-consumes; the broker redelivers in queue order.
pub struct Consumer<H: Handler> {
    dispatcher: Dispatcher<H, AmqpSettle>,
    phase: watch::Sender<Phase>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    /// Why it stopped reconnecting ([`AmqpConfig::max_reconnect_attempts`]).
    failure: Arc<std::sync::Mutex<Option<Error>>>,
}

impl<H: Handler> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Consumer<H> {
    /// Connect, declare the queues and start consuming. Whatever stops the first attempt — a
    /// bad URL, refused credentials, a missing vhost, queue arguments that clash with an
    /// existing queue — is returned here, with the broker's reason; later connection losses
    /// are retried in the background.
    pub async fn start(
        config: AmqpConfig,
        handler: H,
        dispatch: DispatchConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        let dispatcher = Dispatcher::new(handler, dispatch).map_err(Error::Dispatcher)?;
        let counters = Arc::new(Counters::default());
        let first = establish(&config, &dispatcher, &counters).await?;
        let (phase, phase_rx) = watch::channel(Phase::Running);
        let failure = Arc::default();
        let task = tokio::spawn(supervise(
            config,
            first,
            dispatcher.clone(),
            Arc::clone(&counters),
            phase_rx,
            Arc::clone(&failure),
        ));
        Ok(Self {
            dispatcher,
            phase,
            task: std::sync::Mutex::new(Some(task)),
            counters,
            failure,
        })
    }

    /// The dispatcher (signals to a key's handler, metrics).
    pub fn dispatcher(&self) -> &Dispatcher<H, AmqpSettle> {
        &self.dispatcher
    }

    /// Counters.
    pub fn stats(&self) -> ConsumerStats {
        ConsumerStats {
            connections: self.counters.connections.load(Relaxed),
            deliveries: self.counters.deliveries.load(Relaxed),
            invalid: self.counters.invalid.load(Relaxed),
        }
    }

    /// Messages processed so far: acked or discarded (see
    /// [`Dispatcher::processed`](headwaters_ordering_core::Dispatcher::processed)).
    pub fn processed(&self) -> u64 {
        self.dispatcher.processed()
    }

    /// Wait until `n` messages were processed, or `timeout` passes; the consumer keeps
    /// running either way.
    pub async fn wait_processed(&self, n: u64, timeout: Duration) -> Result<u64, WaitTimeout> {
        self.dispatcher.wait_processed(n, timeout).await
    }

    /// Wait until nothing was in flight or processed for `quiet`, or `timeout` passes; the
    /// consumer keeps running either way.
    pub async fn wait_idle(&self, quiet: Duration, timeout: Duration) -> Result<u64, WaitTimeout> {
        self.dispatcher.wait_idle(quiet, timeout).await
    }

    /// Whether it has stopped: shut down, aborted, or out of reconnection attempts (then
    /// [`failure`](Self::failure) says why).
    pub fn is_finished(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(JoinHandle::is_finished)
    }

    /// The last connection error, once the consumer gave up reconnecting
    /// ([`AmqpConfig::max_reconnect_attempts`]); `None` while it runs or after a shutdown.
    pub fn failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Graceful shutdown: cancel the consumers (`basic.cancel`), let the handlers finish what
    /// they hold (up to `grace`; the rest is requeued by the broker), send the last acks, close
    /// the connection.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.phase.send_replace(Phase::Stopping);
        let report = self.dispatcher.shutdown(grace).await;
        self.phase.send_replace(Phase::Drained);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(grace + Duration::from_secs(5), task).await;
        }
        report
    }

    /// Stop at once, as if the process died: the connection is dropped without acking what
    /// is in flight, and the broker redelivers it (to another consumer in
    /// single-active-consumer mode).
    pub fn abort(&self) {
        self.phase.send_replace(Phase::Aborted);
        let dispatcher = self.dispatcher.clone();
        tokio::spawn(async move { dispatcher.shutdown(Duration::ZERO).await });
    }
}

/// The connections (one, or a pool: [`AmqpConfig::channels_per_connection`]) with a
/// channel, a consumer, an ack coalescer and a reader per shard queue; they live and die
/// together, as one epoch.
struct Link {
    connections: Vec<Connection>,
    epoch: Epoch,
    readers: tokio::task::JoinSet<Result<(), Error>>,
    coalescers: Vec<JoinHandle<()>>,
    consumers: Vec<(Channel, String)>,
}

/// Connect and set up every queue of the range. Any failure (refused login, missing vhost,
/// queue arguments that clash with an existing queue) is returned, with its epoch declared
/// lost.
async fn establish<H: Handler>(
    config: &AmqpConfig,
    dispatcher: &Dispatcher<H, AmqpSettle>,
    counters: &Arc<Counters>,
) -> Result<Link, Error> {
    let pool = config.range.len().div_ceil(config.queues_per_connection());
    let mut connections = Vec::with_capacity(pool);
    for _ in 0..pool.max(1) {
        connections.push(connect(config).await?);
    }
    let epoch = dispatcher.new_epoch();
    let mut link = Link {
        connections,
        epoch,
        readers: tokio::task::JoinSet::new(),
        coalescers: Vec::new(),
        consumers: Vec::new(),
    };
    let setup = consume_range(config, &mut link, dispatcher, counters);
    if let Err(e) = bounded(config, "setting up the shard queues", setup).await {
        dispatcher.epoch_lost(epoch);
        return Err(e);
    }
    counters.connections.fetch_add(1, Relaxed);
    tracing::info!(queues = ?config.range, "consuming");
    Ok(link)
}

async fn consume_range<H: Handler>(
    config: &AmqpConfig,
    link: &mut Link,
    dispatcher: &Dispatcher<H, AmqpSettle>,
    counters: &Arc<Counters>,
) -> Result<(), Error> {
    let per = config.queues_per_connection();
    for (n, index) in config.range.clone().enumerate() {
        let queue = consume_queue(config, &link.connections[n / per], index, "headwaters").await?;
        link.coalescers.push(queue.coalescer);
        link.consumers.push((queue.channel, queue.tag));
        let (dispatcher, counters) = (dispatcher.clone(), Arc::clone(counters));
        link.readers.spawn(read_queue(
            queue.consumer,
            queue.acks,
            link.epoch,
            dispatcher,
            counters,
            config.wire,
        ));
    }
    Ok(())
}

/// One shard queue being consumed on its own channel, with its ack coalescer running.
pub(crate) struct QueueConsumer {
    pub(crate) channel: Channel,
    pub(crate) consumer: lapin::Consumer,
    /// The consumer tag (for `basic.cancel`).
    pub(crate) tag: String,
    pub(crate) acks: Arc<ChannelAcks>,
    pub(crate) coalescer: JoinHandle<()>,
}

/// Open a channel on `connection`, set the prefetch, declare shard queue `index` and start
/// consuming it under the tag `{tag_prefix}-{queue}`.
pub(crate) async fn consume_queue(
    config: &AmqpConfig,
    connection: &Connection,
    index: u32,
    tag_prefix: &str,
) -> Result<QueueConsumer, Error> {
    let err = |e: lapin::Error| Error::from_lapin(&e, &target(&config.url));
    let channel = connection.create_channel().await.map_err(err)?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .map_err(err)?;
    declare(config, &channel, std::iter::once(index)).await?;
    let queue = queue_name(&config.prefix, index);
    let tag = format!("{tag_prefix}-{queue}");
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    let acks = ChannelAcks::new();
    let coalescer = tokio::spawn(coalesce_acks(
        channel.clone(),
        Arc::clone(&acks),
        config.ack_interval,
    ));
    Ok(QueueConsumer {
        channel,
        consumer,
        tag,
        acks,
        coalescer,
    })
}

/// Reconnect loop: run a link until its connection dies, declare its epoch lost, reconnect.
async fn supervise<H: Handler>(
    config: AmqpConfig,
    first: Link,
    dispatcher: Dispatcher<H, AmqpSettle>,
    counters: Arc<Counters>,
    mut phase: watch::Receiver<Phase>,
    failure: Arc<std::sync::Mutex<Option<Error>>>,
) {
    let mut next = Some(first);
    let mut backoff = config.backoff();
    loop {
        let link = match next.take() {
            Some(link) => link,
            None => match establish(&config, &dispatcher, &counters).await {
                Ok(link) => link,
                Err(e) => {
                    let mut stopping = phase.clone();
                    let stop = async move {
                        let _ = stopping.wait_for(|p| *p != Phase::Running).await;
                    };
                    match backoff.pause("amqp consumer", &e, stop).await {
                        Pause::Retry => continue,
                        Pause::GiveUp => {
                            *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            return;
                        }
                        Pause::Stopped => return,
                    }
                }
            },
        };
        let epoch = link.epoch;
        let result = run_link(link, &mut phase).await;
        let aborted = *phase.borrow() == Phase::Aborted;
        match result {
            Ok(connections) | Err((connections, _)) if aborted => {
                dispatcher.epoch_lost(epoch);
                close_all(connections, 320, "aborted").await;
                return;
            }
            Ok(connections) => {
                // Stopped and drained: the last acks are sent.
                close_all(connections, 200, "shutdown").await;
                return;
            }
            Err((_, e)) => {
                dispatcher.epoch_lost(epoch);
                tracing::warn!(error = %e, "consumer connection lost; reconnecting");
                // At once, as every transport does: the backoff starts with the first
                // failed attempt.
                backoff.reset();
            }
        }
    }
}

/// Close `connections`, each within 5 s.
async fn close_all(connections: Vec<Connection>, code: u16, reason: &str) {
    for connection in connections {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            connection.close(code, reason.into()),
        )
        .await;
    }
}

/// Run a link until one of its readers fails (`Err`, the connection or a channel is gone), or
/// until a shutdown has cancelled the consumers and the dispatcher drained (`Ok`). The
/// connection is handed back for closing.
async fn run_link(
    mut link: Link,
    phase: &mut watch::Receiver<Phase>,
) -> Result<Vec<Connection>, (Vec<Connection>, Error)> {
    tokio::select! {
        Some(ended) = link.readers.join_next() => {
            link.readers.abort_all();
            let error = match ended {
                Ok(Err(e)) => e,
                Ok(Ok(())) => Error::Connection("a queue reader stopped: the dispatcher is shut down".into()),
                Err(join) => Error::Connection(format!("a queue reader failed: {join}")),
            };
            return Err((link.connections, error));
        }
        _ = phase.wait_for(|p| *p != Phase::Running) => {}
    }
    if *phase.borrow() == Phase::Aborted {
        link.readers.abort_all();
        return Ok(link.connections);
    }
    // Stopping: no new deliveries; what was received is still dispatched, or redelivered.
    for (channel, tag) in &link.consumers {
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    link.readers.abort_all();
    // Once the dispatcher has drained, every settle handle is gone and each coalescer sends
    // its last acks and ends.
    let _ = phase.wait_for(|p| *p >= Phase::Drained).await;
    for coalescer in link.coalescers {
        let _ = tokio::time::timeout(Duration::from_secs(5), coalescer).await;
    }
    // Close the channels ourselves, before the connection: lapin closes a channel when its
    // last handle drops, and that close racing the connection's logs a spurious error.
    for (channel, _) in &link.consumers {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            channel.close(200, "shutdown".into()),
        )
        .await;
    }
    Ok(link.connections)
}

/// Turn one queue's deliveries into dispatcher deliveries.
async fn read_queue<H: Handler>(
    consumer: lapin::Consumer,
    acks: Arc<ChannelAcks>,
    epoch: Epoch,
    dispatcher: Dispatcher<H, AmqpSettle>,
    counters: Arc<Counters>,
    wire: WireFormat,
) -> Result<(), Error> {
    let deliveries = consumer.filter_map(move |delivery| {
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(e) => return std::future::ready(Some(Err(Error::Lapin(Arc::new(e))))),
        };
        counters.deliveries.fetch_add(1, Relaxed);
        let tag = delivery.delivery_tag;
        let (key, message) = decode(delivery, wire);
        let event = match key {
            Ok(key) => Some(Ok(SourceEvent::Delivery(Delivery {
                key,
                message,
                settle: AmqpSettle::new(tag, Arc::clone(&acks)),
                epoch,
            }))),
            Err(e) => {
                counters.invalid.fetch_add(1, Relaxed);
                tracing::warn!(tag, message_id = %message.message_id, reason = %e, "delivery without a usable `sharding_key` header: rejected without requeue");
                acks.settle(tag, Settlement::Reject { requeue: false });
                None
            }
        };
        std::future::ready(event)
    });
    // The stream ends when the channel closes or the consumer is cancelled: the link is
    // gone. The feeding ends without an error only when the dispatcher shuts down (what it
    // did not start is redelivered).
    let ended = futures_util::stream::once(std::future::ready(Err(Error::Connection(
        "the consumer stream ended (channel closed or consumer cancelled)".into(),
    ))));
    dispatcher.feed(deliveries.chain(ended)).await
}

/// Why a delivery has no usable sharding key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("no `sharding_key` header, or not a string")]
    Missing,
    #[error("the `sharding_key` header is not an Erlang term: {0}")]
    NotATerm(#[from] crate::etf::EtfError),
}

/// A delivery's sharding key (read as `wire` writes it) and message, with its
/// redeliveries counted.
pub(crate) fn decode(
    delivery: lapin::message::Delivery,
    wire: WireFormat,
) -> (Result<Key, KeyError>, Message) {
    let props = &delivery.properties;
    let mut headers = Headers::new();
    let mut key = Err(KeyError::Missing);
    if let Some(table) = props.headers() {
        for (name, value) in table.inner() {
            if name.as_str() == SHARDING_KEY_HEADER {
                let bytes = match value {
                    AMQPValue::LongString(s) => Some(s.as_bytes()),
                    AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
                    _ => None,
                };
                key = bytes.map_or(Err(KeyError::Missing), |b| Ok(wire.key_of(b)?));
                continue;
            }
            if let Some(v) = header_value(value) {
                headers.insert(name.as_str(), v);
            }
        }
    }
    // Quorum queues count deliveries exactly; classic queues only flag a redelivery.
    let counted = match headers.get(DELIVERY_COUNT_HEADER) {
        Some(HeaderValue::Int(n)) => u32::try_from(*n).ok(),
        _ => None,
    };
    let redeliveries = counted.unwrap_or_else(|| u32::from(delivery.redelivered));
    let message_id = props
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let timestamp = props.timestamp().map_or_else(Timestamp::now, |secs| {
        Timestamp::from_micros((secs as i64).saturating_mul(1_000_000))
    });
    let message = Message::new(delivery.data, message_id, timestamp)
        .with_headers(headers)
        .with_redeliveries(redeliveries);
    (key, message)
}

fn header_value(value: &AMQPValue) -> Option<HeaderValue> {
    Some(match value {
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Float(f) => HeaderValue::Float(f64::from(*f)),
        AMQPValue::Double(f) => HeaderValue::Float(*f),
        AMQPValue::ShortString(s) => HeaderValue::Str(s.to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => HeaderValue::Str(text.to_owned()),
            Err(_) => HeaderValue::Bytes(s.as_bytes().to_vec().into()),
        },
        _ => return None,
    })
}

/// The per-channel ack coalescer task. It ends when it holds the last reference to the
/// channel's acks (the reader and every delivery are gone), after sending what is left, or
/// when the channel is closed.
async fn coalesce_acks(channel: Channel, acks: Arc<ChannelAcks>, every: Duration) {
    let mut ops = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ticked = tokio::select! {
            _ = tick.tick() => true,
            () = acks.urgent.notified() => false,
        };
        let last = Arc::strong_count(&acks) == 1;
        acks.take(ticked, last, &mut ops);
        for op in ops.drain(..) {
            let sent = match op {
                AckOp::AckUpTo(tag) => {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: true })
                        .await
                }
                AckOp::Ack(tag) => {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: false })
                        .await
                }
                AckOp::Reject(tag, requeue) => {
                    channel
                        .basic_reject(tag, BasicRejectOptions { requeue })
                        .await
                }
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, "ack channel closed");
                return;
            }
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use lapin::message::Delivery as AmqpDelivery;
    use lapin::types::{AMQPValue, FieldTable, ShortString};

    use super::*;

    fn delivery(redelivered: bool, headers: &[(&str, AMQPValue)]) -> AmqpDelivery {
        let mut d = AmqpDelivery::mock(
            1,
            ShortString::from(""),
            ShortString::from("q"),
            redelivered,
            b"body".to_vec(),
        );
        let mut table = FieldTable::default();
        for (name, value) in headers {
            table.insert(ShortString::from(*name), value.clone());
        }
        d.properties = BasicProperties::default().with_headers(table);
        d
    }

    #[test]
    fn redeliveries_come_from_the_quorum_count_else_the_redelivered_flag() {
        let key = (SHARDING_KEY_HEADER, AMQPValue::LongString("k".into()));
        let count = |n| (DELIVERY_COUNT_HEADER, AMQPValue::LongLongInt(n));
        let cases = [
            (delivery(false, std::slice::from_ref(&key)), 0),
            (delivery(true, std::slice::from_ref(&key)), 1),
            (delivery(true, &[key.clone(), count(3)]), 3),
            (delivery(false, &[key.clone(), count(0)]), 0),
        ];
        for (d, expected) in cases {
            let (k, m) = decode(d, WireFormat::Native);
            assert_eq!(k.unwrap(), Key::from("k"));
            assert_eq!(m.redeliveries, expected);
            assert_eq!(m.is_redelivery(), expected > 0);
        }
    }
}
