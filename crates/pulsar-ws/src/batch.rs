//! [`PulsarSource`]: Pulsar topics as batch-flusher sources, one topic per shard.

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use headwaters_batch_flusher::{Source, SourceEvent, SourceRecord};
use headwaters_ordering_core::{Settle, Settlement};

use crate::conn::ClientConfig;
use crate::consumer::{AckHandle, Consumer, ConsumerOptions, Message, Reader, ReaderOptions};
use crate::error::Error;
use crate::params::{ConsumerParams, ReaderParams, ReaderStart, SubscriptionType};
use crate::proto::MessageId;
use crate::topic::{Domain, Topic};

/// How a [`PulsarSource`] reads a shard's topic.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SourceMode {
    /// A durable subscription with this name (Failover unless the parameters say
    /// otherwise, so a second instance stands by). Checkpointing is the broker's: a record is
    /// acked once flushed, and what is unacked when a shard run ends is redelivered.
    Subscription {
        /// The subscription name.
        name: String,
        /// Its parameters.
        params: ConsumerParams,
    },
    /// A reader from the stored checkpoint (a message id), or from the earliest message.
    /// Nothing is acknowledged: the checkpoint store is the only record of progress.
    Reader,
}

/// Feeds a [`BatchProcessor`](headwaters_batch_flusher::BatchProcessor) from Pulsar: shard
/// `"orders"` is topic `{persistence}://{tenant}/{namespace}/orders` (use a partitioned
/// topic's `…-partition-N` names as shards to spread one topic). Positions are message ids.
#[derive(Debug, Clone)]
pub struct PulsarSource {
    config: ClientConfig,
    domain: Domain,
    tenant: String,
    namespace: String,
    mode: SourceMode,
}

impl PulsarSource {
    /// Topics of `tenant/namespace` (persistent), read through `mode`.
    pub fn new(config: ClientConfig, tenant: &str, namespace: &str, mode: SourceMode) -> Self {
        Self {
            config,
            domain: Domain::Persistent,
            tenant: tenant.to_owned(),
            namespace: namespace.to_owned(),
            mode,
        }
    }

    /// A durable Failover subscription `name` on every shard's topic.
    pub fn subscription(config: ClientConfig, tenant: &str, namespace: &str, name: &str) -> Self {
        let params = ConsumerParams {
            subscription_type: Some(SubscriptionType::Failover),
            ..ConsumerParams::default()
        };
        Self::new(
            config,
            tenant,
            namespace,
            SourceMode::Subscription {
                name: name.to_owned(),
                params,
            },
        )
    }

    /// Readers from the checkpoint store's positions.
    pub fn reader(config: ClientConfig, tenant: &str, namespace: &str) -> Self {
        Self::new(config, tenant, namespace, SourceMode::Reader)
    }
}

/// Settles a flushed record at the broker: `Ack` acks, a reject nacks (redelivery).
#[derive(Debug)]
pub struct PulsarAck(AckHandle);

impl Settle for PulsarAck {
    fn settle(self, settlement: Settlement) {
        match settlement {
            Settlement::Ack => self.0.ack(),
            Settlement::Reject { .. } => self.0.nack(),
        }
    }
}

type Events = BoxStream<'static, Result<SourceEvent<MessageId, Message, PulsarAck>, Error>>;

fn records<S>(stream: S) -> Events
where
    S: futures_util::Stream<Item = Result<Message, Error>> + Send + 'static,
{
    stream
        .map(|item| {
            let m = item?;
            Ok(SourceEvent::Record(SourceRecord {
                position: m.message_id.clone(),
                sub: None,
                ack: PulsarAck(m.ack_handle()),
                record: m,
            }))
        })
        .boxed()
}

impl Source for PulsarSource {
    type Position = MessageId;
    type Record = Message;
    type Ack = PulsarAck;
    type Error = Error;
    type Stream = Events;

    async fn open(&self, shard: &str, from: Option<MessageId>) -> Result<Events, Error> {
        let topic = Topic::new(self.domain, &self.tenant, &self.namespace, shard)?;
        match &self.mode {
            SourceMode::Subscription { name, params } => {
                let options = ConsumerOptions::default().with_params(params.clone());
                let consumer = Consumer::subscribe(&self.config, topic, name, options).await?;
                Ok(records(consumer))
            }
            SourceMode::Reader => {
                let params = ReaderParams {
                    start: Some(from.map_or(ReaderStart::Earliest, ReaderStart::At)),
                    ..ReaderParams::default()
                };
                let reader = Reader::open(
                    &self.config,
                    topic,
                    ReaderOptions::default().with_params(params),
                )
                .await?;
                Ok(records(reader))
            }
        }
    }
}
