//! [`KinesisSource`]: a shard's records for the batch processor, from its checkpoint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::SdkError;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use headwaters_batch_flusher::{Source, SourceEvent, SourceRecord, SubSequence};
use headwaters_ordering_core::{Backoff, NoSettle};
use tokio::sync::mpsc;

use crate::Error;
use crate::kpl;
use crate::position::KinesisPosition;

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest record still in the shard.
    TrimHorizon,
    /// Only records put from now on.
    Latest,
    /// Records put at or after this time.
    AtTimestamp(SystemTime),
}

/// How shards are read.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReadSettings {
    /// Where a shard without a checkpoint starts. Default [`InitialPosition::TrimHorizon`].
    pub initial_position: InitialPosition,
    /// Records per `GetRecords` call (1–10,000). Default 10,000, as the KCL.
    pub batch_size: i32,
    /// The pause after a `GetRecords` call that returned nothing (the KCL's idle time
    /// between reads). Default 1 s.
    pub idle_time: Duration,
    /// Backoff after a throttled call (`ProvisionedThroughputExceeded`, `LimitExceeded`,
    /// KMS throttling) or a failed request: from, up to. Default 200 ms to 5 s.
    pub backoff: (Duration, Duration),
    /// Consecutive failed requests (network, timeouts, server errors) before the shard's
    /// stream fails and the processor restarts it from its checkpoint. Default 10.
    pub max_request_failures: u32,
}

impl Default for ReadSettings {
    fn default() -> Self {
        Self {
            initial_position: InitialPosition::TrimHorizon,
            batch_size: 10_000,
            idle_time: Duration::from_secs(1),
            backoff: (Duration::from_millis(200), Duration::from_secs(5)),
            max_request_failures: 10,
        }
    }
}

impl ReadSettings {
    /// Set [`initial_position`](Self::initial_position).
    pub fn with_initial_position(mut self, position: InitialPosition) -> Self {
        self.initial_position = position;
        self
    }

    /// Set [`batch_size`](Self::batch_size) (clamped to 1–10,000).
    pub fn with_batch_size(mut self, n: i32) -> Self {
        self.batch_size = n.clamp(1, 10_000);
        self
    }

    /// Set [`idle_time`](Self::idle_time).
    pub fn with_idle_time(mut self, idle: Duration) -> Self {
        self.idle_time = idle;
        self
    }

    /// Set [`backoff`](Self::backoff).
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max.max(min));
        self
    }
}

/// A user record from a shard (a whole Kinesis record, or one from inside a KPL aggregate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisRecord {
    /// The shard it came from.
    pub shard_id: Arc<str>,
    /// The Kinesis record's sequence number.
    pub sequence_number: String,
    /// Its place in a KPL aggregate, if it came from one.
    pub sub: Option<SubSequence>,
    /// Its partition key.
    pub partition_key: String,
    /// Its explicit hash key (KPL user records only).
    pub explicit_hash_key: Option<String>,
    /// Its data.
    pub data: Bytes,
    /// When Kinesis received the record.
    pub approximate_arrival: Option<SystemTime>,
}

/// Read-side counters, shared by every shard of a source.
#[derive(Debug, Default)]
pub struct Metrics {
    behind: Mutex<HashMap<String, i64>>,
    records: AtomicU64,
    throttled: AtomicU64,
    expired_iterators: AtomicU64,
    failed_requests: AtomicU64,
}

impl Metrics {
    /// How far behind the tip of `shard` its last `GetRecords` call was
    /// (`MillisBehindLatest`).
    pub fn millis_behind_latest(&self, shard: &str) -> Option<i64> {
        self.behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(shard)
            .copied()
    }

    /// The largest `MillisBehindLatest` over the shards read.
    pub fn max_millis_behind_latest(&self) -> Option<i64> {
        self.behind
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .copied()
            .max()
    }

    /// User records handed on.
    pub fn records(&self) -> u64 {
        self.records.load(Relaxed)
    }

    /// Throttled calls (each backed off and retried).
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Relaxed)
    }

    /// Expired shard iterators (each re-created after the last record handed on).
    pub fn expired_iterators(&self) -> u64 {
        self.expired_iterators.load(Relaxed)
    }

    /// Failed requests retried in place (network errors, timeouts, server errors).
    pub fn failed_requests(&self) -> u64 {
        self.failed_requests.load(Relaxed)
    }
}

/// Reads shards of one stream for the batch processor: from the checkpoint
/// (`AFTER_SEQUENCE_NUMBER`, or `AT_SEQUENCE_NUMBER` with the aggregate's user records up to
/// the checkpointed one skipped) or the initial position; KPL aggregates de-aggregated;
/// throttling backed off; an expired iterator re-created after the last record handed on, so
/// nothing is lost or skipped; `ShardEnded` once the shard is closed and read to its end.
#[derive(Debug, Clone)]
pub struct KinesisSource {
    client: Client,
    stream: Arc<str>,
    settings: ReadSettings,
    metrics: Arc<Metrics>,
}

/// Where a reader (re)starts.
#[derive(Debug, Clone)]
enum Start {
    Initial(InitialPosition),
    After(String),
    /// At this record, skipping its user records up to this index.
    At(String, u32),
}

impl KinesisSource {
    /// A source over `stream` with a client from `config`.
    pub fn new(
        config: &crate::KinesisConfig,
        stream: impl Into<String>,
        settings: ReadSettings,
    ) -> Result<Self, Error> {
        Ok(Self::from_client(config.client()?, stream, settings))
    }

    /// A source over `stream` with a client you built (e.g. with `aws-config`).
    pub fn from_client(client: Client, stream: impl Into<String>, settings: ReadSettings) -> Self {
        Self {
            client,
            stream: stream.into().into(),
            settings,
            metrics: Arc::default(),
        }
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Read-side counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    async fn iterator(&self, shard: &str, start: &Start) -> Result<String, Error> {
        let mut backoff = Backoff::new(self.settings.backoff.0, self.settings.backoff.1);
        loop {
            let mut call = self
                .client
                .get_shard_iterator()
                .stream_name(&*self.stream)
                .shard_id(shard);
            call = match start {
                Start::Initial(InitialPosition::TrimHorizon) => {
                    call.shard_iterator_type(ShardIteratorType::TrimHorizon)
                }
                Start::Initial(InitialPosition::Latest) => {
                    call.shard_iterator_type(ShardIteratorType::Latest)
                }
                Start::Initial(InitialPosition::AtTimestamp(at)) => call
                    .shard_iterator_type(ShardIteratorType::AtTimestamp)
                    .timestamp(DateTime::from(*at)),
                Start::After(seq) => call
                    .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                    .starting_sequence_number(seq),
                Start::At(seq, _) => call
                    .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                    .starting_sequence_number(seq),
            };
            match call.send().await {
                Ok(out) => {
                    return out.shard_iterator.ok_or_else(|| Error::NoIterator {
                        shard: shard.to_owned(),
                    });
                }
                Err(e)
                    if throttled(&e) && backoff.failures() < self.settings.max_request_failures =>
                {
                    self.metrics.throttled.fetch_add(1, Relaxed);
                    tokio::time::sleep(backoff.step()).await;
                }
                Err(e)
                    if transient(&e) && backoff.failures() < self.settings.max_request_failures =>
                {
                    self.metrics.failed_requests.fetch_add(1, Relaxed);
                    tokio::time::sleep(backoff.step()).await;
                }
                Err(e) => return Err(Error::api("GetShardIterator", &self.stream, e)),
            }
        }
    }
}

/// The stream of one shard.
pub type ShardStream =
    BoxStream<'static, Result<SourceEvent<KinesisPosition, KinesisRecord, NoSettle>, Error>>;

type Event = Result<SourceEvent<KinesisPosition, KinesisRecord, NoSettle>, Error>;

impl Source for KinesisSource {
    type Position = KinesisPosition;
    type Record = KinesisRecord;
    type Ack = NoSettle;
    type Error = Error;
    type Stream = ShardStream;

    /// Open `shard` (a shard id, or the worker's `STREAM/SHARD_ID` key) after `from`.
    async fn open(&self, shard: &str, from: Option<KinesisPosition>) -> Result<ShardStream, Error> {
        let shard = shard
            .strip_prefix(&*self.stream)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or(shard);
        let start = match from {
            Some(KinesisPosition::ShardEnd) => {
                return Ok(stream::iter([Ok(SourceEvent::ShardEnded)]).boxed());
            }
            Some(KinesisPosition::Sequence {
                sequence,
                sub: None,
            }) => Start::After(sequence),
            Some(KinesisPosition::Sequence {
                sequence,
                sub: Some(i),
            }) => Start::At(sequence, i),
            None => Start::Initial(self.settings.initial_position),
        };
        let iterator = self.iterator(shard, &start).await?;
        // Two calls' worth of records may wait: reading stays one call ahead of processing.
        let (tx, mut rx) = mpsc::channel(2 * self.settings.batch_size.max(1) as usize);
        tokio::spawn(read(self.clone(), shard.into(), start, iterator, tx));
        Ok(stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
    }
}

/// Read `shard` into `tx` until it ends, the receiver goes, or a call fails for good.
async fn read(
    source: KinesisSource,
    shard: Arc<str>,
    start: Start,
    mut iterator: String,
    tx: mpsc::Sender<Event>,
) {
    let settings = &source.settings;
    let metrics = &source.metrics;
    let mut skip = match &start {
        Start::At(seq, i) => Some((seq.clone(), *i)),
        _ => None,
    };
    // The last record handed on whole: where an expired iterator is re-created.
    let mut restart = start;
    let mut backoff = Backoff::new(settings.backoff.0, settings.backoff.1);
    loop {
        let call = source
            .client
            .get_records()
            .shard_iterator(&iterator)
            .limit(settings.batch_size)
            .send();
        let out = tokio::select! {
            out = call => out,
            () = tx.closed() => return,
        };
        let out = match out {
            Ok(out) => {
                backoff.reset();
                out
            }
            Err(e) if expired(&e) => {
                metrics.expired_iterators.fetch_add(1, Relaxed);
                tracing::debug!(%shard, "shard iterator expired; re-creating it");
                match source.iterator(&shard, &restart).await {
                    Ok(it) => iterator = it,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                continue;
            }
            Err(e)
                if (throttled(&e) || transient(&e))
                    && backoff.failures() < settings.max_request_failures =>
            {
                if throttled(&e) {
                    metrics.throttled.fetch_add(1, Relaxed);
                } else {
                    metrics.failed_requests.fetch_add(1, Relaxed);
                    tracing::debug!(%shard, error = %aws_sdk_kinesis::error::DisplayErrorContext(&e), "GetRecords failed; retrying");
                }
                if pause(&tx, backoff.step()).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                let _ = tx
                    .send(Err(Error::api("GetRecords", &source.stream, e)))
                    .await;
                return;
            }
        };
        if let Some(ms) = out.millis_behind_latest {
            metrics
                .behind
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(shard.to_string(), ms);
        }
        let empty = out.records.is_empty();
        for record in out.records {
            let arrival = record
                .approximate_arrival_timestamp
                .and_then(|t| SystemTime::try_from(t).ok());
            let sequence = record.sequence_number;
            let skip_to = match skip.take() {
                Some((seq, i)) if seq == sequence => Some(i),
                _ => None,
            };
            let data = Bytes::from(record.data.into_inner());
            for user in kpl::deaggregate(&record.partition_key, data) {
                let index = user.sub.map(|s| s.index);
                // The checkpoint was this user record (or, for a whole record, this record).
                if skip_to.is_some_and(|to| index.is_none_or(|i| i <= to)) {
                    continue;
                }
                metrics.records.fetch_add(1, Relaxed);
                let event = SourceEvent::Record(SourceRecord {
                    position: KinesisPosition::Sequence {
                        sequence: sequence.clone(),
                        sub: index,
                    },
                    sub: user.sub,
                    record: KinesisRecord {
                        shard_id: Arc::clone(&shard),
                        sequence_number: sequence.clone(),
                        sub: user.sub,
                        partition_key: user.partition_key,
                        explicit_hash_key: user.explicit_hash_key,
                        data: user.data,
                        approximate_arrival: arrival,
                    },
                    ack: NoSettle,
                });
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            restart = Start::After(sequence);
        }
        match out.next_shard_iterator {
            Some(next) => iterator = next,
            None => {
                // Closed (split or merged) and read to its end.
                let _ = tx.send(Ok(SourceEvent::ShardEnded)).await;
                return;
            }
        }
        if empty && pause(&tx, settings.idle_time).await {
            return;
        }
    }
}

/// Sleep, or say the receiver went away.
async fn pause(tx: &mpsc::Sender<Event>, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        () = tx.closed() => true,
    }
}

fn code<E, R>(e: &SdkError<E, R>) -> Option<&str>
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata,
{
    e.as_service_error().and_then(|s| s.code())
}

fn expired<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata,
{
    code(e) == Some("ExpiredIteratorException")
}

fn throttled<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata,
{
    matches!(
        code(e),
        Some(
            "ProvisionedThroughputExceededException"
                | "LimitExceededException"
                | "KMSThrottlingException"
                | "ThrottlingException"
        )
    )
}

/// Network failures, timeouts and server-side (5xx) errors: worth the same call again.
fn transient<E, R>(e: &SdkError<E, R>) -> bool
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata,
{
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(_) => matches!(
            code(e),
            Some("InternalFailure" | "ServiceUnavailable" | "InternalServerError")
        ),
        _ => false,
    }
}
