//! Pulsar messages batched into EventStore appends of up to 1,000 events, with the batch
//! processor acking each message at Pulsar only once its batch is written and checkpointing
//! progress in SQLite. Shared by the `pulsar_to_eventstore` example and the demo pipeline.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use headwaters::eventstore::Links;
use headwaters::eventstore::{Connection, EventData, ExpectedVersion};
use headwaters::flusher::{
    Added, BatchProcessor, FlushKind, Flusher, FlusherFactory, ProcessorConfig, Schedule,
    SqliteCheckpoints, Token,
};
use headwaters::pulsar::{
    ClientConfig, Message, OutgoingMessage, Producer, ProducerOptions, PulsarSource, Topic,
};

/// At most this many events per EventStore append.
pub(crate) const BATCH: usize = 1_000;

/// Writes each shard's messages to the EventStore stream `pulsar-{shard}`.
#[derive(Clone)]
pub(crate) struct ToEventStore(pub(crate) Connection);

/// One shard's batch.
pub(crate) struct EventBatch {
    connection: Connection,
    stream: String,
    events: Vec<EventData>,
    tokens: Vec<Token>,
}

impl Flusher for EventBatch {
    type Record = Message;
    type Error = headwaters::eventstore::Error;

    async fn add_record(
        &mut self,
        m: Message,
        token: Token,
    ) -> Result<Added<Message>, Self::Error> {
        if self.events.len() == BATCH {
            return Ok(Added::Full(m));
        }
        let event_type = m
            .properties
            .get("type")
            .cloned()
            .unwrap_or_else(|| "PulsarMessage".into());
        self.events
            .push(EventData::binary(event_type, m.payload.clone()));
        self.tokens.push(token);
        Ok(Added::Added)
    }

    async fn flush(&mut self, _: FlushKind) -> Result<Vec<Token>, Self::Error> {
        if !self.events.is_empty() {
            self.connection
                .append_to_stream(&self.stream, ExpectedVersion::Any, &self.events)
                .await?;
            self.events.clear();
        }
        Ok(std::mem::take(&mut self.tokens))
    }
}

impl FlusherFactory for ToEventStore {
    type Flusher = EventBatch;

    async fn init(&self, shard: &str) -> Result<EventBatch, headwaters::eventstore::Error> {
        Ok(EventBatch {
            connection: self.0.clone(),
            stream: format!("pulsar-{shard}"),
            events: Vec::with_capacity(BATCH),
            tokens: Vec::with_capacity(BATCH),
        })
    }
}

/// Publish `per_topic` messages to each of `topics`, move them into EventStore through the
/// batch processor, and check that every stream holds every message. Returns the time taken.
pub(crate) async fn run(
    pulsar: &ClientConfig,
    eventstore: Connection,
    topics: &[String],
    per_topic: u64,
    checkpoints: &Path,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let source = PulsarSource::subscription(pulsar.clone(), "public", "default", "to-eventstore");
    let processor = BatchProcessor::new(
        source,
        ToEventStore(eventstore.clone()),
        SqliteCheckpoints::open(checkpoints).await?,
        ProcessorConfig::default().with_schedule(
            Schedule::default()
                .with_flush_interval(Duration::from_millis(50))
                .with_checkpoint_interval(Duration::from_millis(200)),
        ),
    );
    for topic in topics {
        processor.start(topic.clone());
    }
    // Give the subscriptions a moment to exist before publishing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for topic in topics {
        let producer = Producer::connect(
            pulsar,
            Topic::persistent("public", "default", topic)?,
            ProducerOptions::default(),
        )
        .await?;
        let mut receipts = Vec::new();
        for i in 0..per_topic {
            let m =
                OutgoingMessage::new(format!("{{\"seq\":{i}}}")).with_property("type", "Counted");
            receipts.push(producer.enqueue(m).await?);
        }
        for r in receipts {
            r.await?;
        }
        producer.close().await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for topic in topics {
        let stream = format!("pulsar-{topic}");
        loop {
            let last = eventstore
                .read_stream(
                    &stream,
                    headwaters::eventstore::StreamPosition::End,
                    1,
                    headwaters::eventstore::ReadDirection::Backward,
                    Links::AsStored,
                )
                .await
                .context("reading back from EventStore")?;
            if last.last_event_number + 1 >= per_topic as i64 {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{stream}: {} of {per_topic} events after 120 s",
                    last.last_event_number + 1
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let elapsed = started.elapsed();
    processor.stop().await;
    Ok(elapsed)
}
