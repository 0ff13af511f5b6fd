//! [`AmqpShardSource`]: an AMQP shard queue as a batch-flusher [`Source`].

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use headwaters_batch_flusher::{Source, SourceEvent, SourceRecord};
use headwaters_ordering_core::{Key, Message};

use crate::Error;
use crate::config::AmqpConfig;
use crate::consumer::{AmqpSettle, QueueConsumer, consume_queue, decode};
use crate::link::{bounded, connect};

/// One delivery of a shard queue, for a flusher.
#[derive(Debug)]
pub struct AmqpRecord {
    /// Its sharding key, if the message had one.
    pub key: Option<Key>,
    /// The message.
    pub message: Message,
}

/// Feeds a [`BatchProcessor`](headwaters_batch_flusher::BatchProcessor) from AMQP shard
/// queues: shard `"7"` is queue `prefix7`. Checkpointing is the broker's: each record is
/// acked (coalesced, as in [`Consumer`](crate::Consumer)) only once the flusher returned its
/// token, and whatever is unacked when a shard run ends is redelivered by the broker to the
/// next run. So the checkpoint `from` is not needed and ignored, and the store given to the
/// processor only records progress (a [`MemoryCheckpoints`](headwaters_batch_flusher::MemoryCheckpoints)
/// is enough). Positions are delivery tags, which restart with each connection.
#[derive(Debug, Clone)]
pub struct AmqpShardSource {
    config: AmqpConfig,
}

impl AmqpShardSource {
    /// A source over the queues of `config`.
    pub fn new(config: AmqpConfig) -> Self {
        Self { config }
    }
}

impl Source for AmqpShardSource {
    type Position = u64;
    type Record = AmqpRecord;
    type Ack = AmqpSettle;
    type Error = Error;
    type Stream = BoxStream<'static, Result<SourceEvent<u64, AmqpRecord, AmqpSettle>, Error>>;

    async fn open(&self, shard: &str, _from: Option<u64>) -> Result<Self::Stream, Error> {
        let config = &self.config;
        let index: u32 = shard
            .parse()
            .ok()
            .filter(|i| *i < config.total_count)
            .ok_or_else(|| {
                Error::Config(format!(
                    "shard {shard:?} is not a queue index below {}",
                    config.total_count
                ))
            })?;
        let connection = connect(config).await?;
        let QueueConsumer { consumer, acks, .. } =
            bounded(config, "setting up the shard queue", async {
                consume_queue(config, &connection, index, "headwaters-batch").await
            })
            .await?;
        // The stream owns the connection: it lives as long as the shard run.
        let connection = Arc::new(connection);
        let wire = config.wire;
        Ok(consumer
            .map(move |delivery| {
                let _keep_alive = &connection;
                let delivery = delivery.map_err(|e| Error::Lapin(Arc::new(e)))?;
                let tag = delivery.delivery_tag;
                // A key that does not decode stays `None` (the record is still delivered).
                let (key, message) = decode(delivery, wire);
                let key = key.ok();
                Ok(SourceEvent::Record(SourceRecord {
                    position: tag,
                    sub: None,
                    record: AmqpRecord { key, message },
                    ack: AmqpSettle::new(tag, Arc::clone(&acks)),
                }))
            })
            .boxed())
    }
}
