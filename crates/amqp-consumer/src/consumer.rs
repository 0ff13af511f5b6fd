//! [`Consumer`]: one consumer per shard queue, deliveries dispatched in order per key through
//! the ordering-core [`Dispatcher`], acks coalesced per channel, reconnection built in.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::StreamExt;
use headwaters_ordering_core::Handler;
use headwaters_ordering_core::{
    Config as DispatchConfig, Delivery, Dispatcher, Epoch, HeaderValue, Headers, Key, Message,
    Settle, Settlement, ShutdownReport, Timestamp,
};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::Error;
use crate::acks::{AckOp, AckWindow};
use crate::config::{AmqpConfig, target};
use crate::link::{Backoff, connect, declare};
use crate::producer::SHARDING_KEY_HEADER;
use crate::shard::queue_name;

/// Settles one delivery through its channel's ack coalescer.
#[derive(Debug)]
pub struct AmqpSettle {
    tag: u64,
    acks: mpsc::UnboundedSender<(u64, Settlement)>,
}

impl Settle for AmqpSettle {
    fn settle(self, settlement: Settlement) {
        // If the channel is gone its coalescer is too; the broker redelivers the message.
        let _ = self.acks.send((self.tag, settlement));
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
    stop: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
}

impl<H: Handler> std::fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Consumer<H> {
    /// Connect (a bad URL, refused credentials or a missing vhost fail here, with the broker's
    /// reason), declare the queues, start consuming.
    pub async fn start(
        config: AmqpConfig,
        handler: H,
        dispatch: DispatchConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        let dispatcher =
            Dispatcher::new(handler, dispatch).map_err(|e| Error::Config(e.to_string()))?;
        let first = connect(&config).await?;
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            config,
            first,
            dispatcher.clone(),
            Arc::clone(&counters),
            stop_rx,
        ));
        Ok(Self {
            dispatcher,
            stop,
            task: std::sync::Mutex::new(Some(task)),
            counters,
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

    /// Graceful shutdown: stop taking deliveries, let the handlers finish what they hold
    /// (up to `grace`), send the last acks, close the connection.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.stop.send_replace(true);
        let report = self.dispatcher.shutdown(grace).await;
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
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// Reconnect loop: run a connection until it dies, declare its epoch lost, reconnect.
async fn supervise<H: Handler>(
    config: AmqpConfig,
    first: Connection,
    dispatcher: Dispatcher<H, AmqpSettle>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn = Some(first);
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    loop {
        let connection = match conn.take() {
            Some(c) => c,
            None => match connect(&config).await {
                Ok(c) => c,
                Err(e) => {
                    let delay = backoff.step();
                    tracing::warn!(error = %e, ?delay, "consumer reconnect failed");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            },
        };
        counters.connections.fetch_add(1, Relaxed);
        let epoch = dispatcher.new_epoch();
        let result = run_connection(
            &config,
            &connection,
            epoch,
            &dispatcher,
            &counters,
            &mut stop,
        )
        .await;
        dispatcher.epoch_lost(epoch);
        match result {
            Ok(()) => {
                // Stopped: wait for the dispatcher to drain (the caller shuts it down), then
                // give the coalescers time to send the last acks before closing.
                tokio::time::sleep(config.ack_interval * 4).await;
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    connection.close(200, "shutdown".into()),
                )
                .await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "consumer connection lost; reconnecting");
                backoff.reset();
                tokio::time::sleep(backoff.step()).await;
            }
        }
    }
}

/// Consume every queue of the range on `connection` until it fails (`Err`) or `stop` (`Ok`).
async fn run_connection<H: Handler>(
    config: &AmqpConfig,
    connection: &Connection,
    epoch: Epoch,
    dispatcher: &Dispatcher<H, AmqpSettle>,
    counters: &Arc<Counters>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Error> {
    let err = |e: lapin::Error| Error::from_lapin(&e, &target(&config.url));
    let mut readers = tokio::task::JoinSet::new();
    for index in config.range.clone() {
        let channel = connection.create_channel().await.map_err(err)?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(err)?;
        declare(config, &channel, std::iter::once(index)).await?;
        let queue = queue_name(&config.prefix, index);
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                format!("headwaters-{queue}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        let (acks, ack_rx) = mpsc::unbounded_channel();
        tokio::spawn(coalesce_acks(channel.clone(), ack_rx, config.ack_interval));
        let (dispatcher, counters) = (dispatcher.clone(), Arc::clone(counters));
        readers.spawn(read_queue(consumer, acks, epoch, dispatcher, counters));
    }
    tracing::info!(queues = ?config.range, "consuming");
    tokio::select! {
        Some(ended) = readers.join_next() => {
            readers.abort_all();
            Err(match ended {
                Ok(Err(e)) => e,
                Ok(Ok(())) => Error::Connection("a queue reader stopped: the dispatcher is shut down".into()),
                Err(join) => Error::Connection(format!("a queue reader failed: {join}")),
            })
        }
        _ = stop.wait_for(|s| *s) => {
            readers.abort_all();
            Ok(())
        }
    }
}

/// Turn one queue's deliveries into dispatcher deliveries.
async fn read_queue<H: Handler>(
    mut consumer: lapin::Consumer,
    acks: mpsc::UnboundedSender<(u64, Settlement)>,
    epoch: Epoch,
    dispatcher: Dispatcher<H, AmqpSettle>,
    counters: Arc<Counters>,
) -> Result<(), Error> {
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.map_err(|e| Error::Connection(e.to_string()))?;
        counters.deliveries.fetch_add(1, Relaxed);
        let tag = delivery.delivery_tag;
        let props = &delivery.properties;
        let mut headers = Headers::new();
        let mut key = None;
        if let Some(table) = props.headers() {
            for (name, value) in table.inner() {
                if name.as_str() == SHARDING_KEY_HEADER {
                    key = match value {
                        AMQPValue::LongString(s) => Some(Key::new(s.as_bytes().to_vec())),
                        AMQPValue::ShortString(s) => Some(Key::new(s.as_str().as_bytes().to_vec())),
                        _ => None,
                    };
                    continue;
                }
                if let Some(v) = header_value(value) {
                    headers.insert(name.as_str(), v);
                }
            }
        }
        let Some(key) = key else {
            counters.invalid.fetch_add(1, Relaxed);
            tracing::warn!(tag, message_id = ?props.message_id(), "delivery without a usable `sharding_key` header: rejected without requeue");
            let _ = acks.send((tag, Settlement::Reject { requeue: false }));
            continue;
        };
        if delivery.redelivered {
            headers.insert("redelivered", true);
        }
        let message = Message {
            payload: delivery.data.into(),
            headers,
            message_id: props
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            timestamp: props.timestamp().map_or_else(Timestamp::now, |secs| {
                Timestamp::from_micros((secs as i64).saturating_mul(1_000_000))
            }),
        };
        let settle = AmqpSettle {
            tag,
            acks: acks.clone(),
        };
        if dispatcher
            .dispatch(Delivery {
                key,
                message,
                settle,
                epoch,
            })
            .await
            .is_err()
        {
            // Shutting down: the message stays unacked and is redelivered.
            return Ok(());
        }
    }
    Err(Error::Connection(
        "the consumer stream ended (channel closed or consumer cancelled)".into(),
    ))
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

/// The per-channel ack coalescer task.
async fn coalesce_acks(
    channel: Channel,
    mut settles: mpsc::UnboundedReceiver<(u64, Settlement)>,
    every: Duration,
) {
    let mut window = AckWindow::new();
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let open = tokio::select! {
            settled = settles.recv() => match settled {
                Some((tag, s)) => {
                    window.settle(tag, s, &mut out);
                    while let Ok((tag, s)) = settles.try_recv() {
                        window.settle(tag, s, &mut out);
                    }
                    true
                }
                None => {
                    window.flush_all(&mut out);
                    false
                }
            },
            _ = tick.tick() => {
                window.flush(&mut out);
                true
            }
        };
        for op in out.drain(..) {
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
        if !open {
            return;
        }
    }
}
