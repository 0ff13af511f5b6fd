//! Test support: the endpoint, streams, puts, and a recording flusher.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::StreamStatus;
use headwaters_batch_flusher::{
    Added, FlushKind, Flusher, FlusherFactory, ProcessorConfig, Schedule, ShardEnd, Token,
};
use headwaters_kinesis::{
    KinesisConfig, KinesisRecord, KinesisSource, KinesisWorker, ReadSettings, WorkerConfig,
};

pub(crate) fn config() -> KinesisConfig {
    let endpoint = std::env::var("KINESIS_ENDPOINT").expect(
        "KINESIS_ENDPOINT is not set: run `cargo xtask integration`, which starts kinesalite, or point it at a Kinesis-compatible server",
    );
    KinesisConfig::new("us-east-1")
        .with_endpoint(endpoint)
        .with_credentials("test", "test", None)
}

pub(crate) fn client() -> Client {
    config().client().unwrap()
}

pub(crate) fn stream_name(test: &str) -> String {
    format!("hw-{test}-{}", std::process::id())
}

/// A source reading quickly (short idle time), as tests want.
pub(crate) fn source(stream: &str) -> KinesisSource {
    KinesisSource::new(
        &config(),
        stream,
        ReadSettings::default().with_idle_time(Duration::from_millis(100)),
    )
    .unwrap()
}

pub(crate) fn worker_config() -> WorkerConfig {
    WorkerConfig::default()
        .with_lease_interval(Duration::from_millis(200))
        .with_processor(
            ProcessorConfig::default().with_schedule(
                Schedule::default()
                    .with_flush_interval(Duration::from_millis(100))
                    .with_checkpoint_interval(Duration::from_millis(100)),
            ),
        )
}

pub(crate) async fn wait_active(stream: &str) {
    let client = client();
    for _ in 0..200 {
        let out = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        if out.stream_description_summary.map(|s| s.stream_status) == Some(StreamStatus::Active) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {stream} did not become ACTIVE");
}

pub(crate) async fn create_stream(stream: &str, shards: i32) {
    client()
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    wait_active(stream).await;
}

/// Put `data` under `key`; its sequence number.
pub(crate) async fn put_raw(stream: &str, key: &str, data: Vec<u8>) -> String {
    client()
        .put_record()
        .stream_name(stream)
        .partition_key(key)
        .data(Blob::new(data))
        .send()
        .await
        .unwrap()
        .sequence_number
}

pub(crate) async fn put(stream: &str, key: &str, payload: &str) -> String {
    put_raw(stream, key, payload.as_bytes().to_vec()).await
}

/// Put records `n` in `range` round-robin over `keys` keys: key `keyK` with payload
/// `keyK:S`, where K = n mod keys and S = n / keys (each key's own sequence).
pub(crate) async fn put_numbered(stream: &str, keys: u32, range: std::ops::Range<u32>) {
    for n in range {
        let key = format!("key{}", n % keys);
        let payload = format!("{key}:{}", n / keys);
        put(stream, &key, &payload).await;
    }
}

pub(crate) async fn shards(stream: &str) -> Vec<String> {
    let out = client()
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    out.shards
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.shard_id)
        .collect()
}

/// Every record flushed, in order of flushing, as (partition key, payload).
#[derive(Clone, Default)]
pub(crate) struct Recorder(Arc<Mutex<Vec<(String, String)>>>);

impl Recorder {
    pub(crate) fn total(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub(crate) async fn wait_for(&self, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.total() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} records within {limit:?}",
                self.total()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn wait_for_distinct(&self, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.distinct() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} distinct records within {limit:?}",
                self.distinct()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn payloads(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Per key, first processings are consecutive from wherever the key started.
    pub(crate) fn assert_in_order_per_key_from_first(&self) {
        let seen = self.0.lock().unwrap();
        let mut next: HashMap<&str, u32> = HashMap::new();
        for (key, payload) in seen.iter() {
            let n: u32 = payload
                .split_once(':')
                .expect("key:n")
                .1
                .parse()
                .expect("n");
            match next.get_mut(key.as_str()) {
                None => {
                    next.insert(key.as_str(), n + 1);
                }
                Some(expected) if n == *expected => *expected += 1,
                Some(expected) => assert!(n < *expected, "{key}: {n} processed before {expected}"),
            }
        }
    }

    /// Distinct payloads seen.
    pub(crate) fn distinct(&self) -> usize {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .map(|(_, p)| p)
            .collect::<std::collections::HashSet<_>>()
            .len()
    }

    /// Per key, the first processings of payloads `key:N` are N = start, start+1, … (none
    /// skipped, none out of order); repeats of already seen ones are allowed.
    pub(crate) fn assert_in_order_per_key(&self, start: u32) {
        let seen = self.0.lock().unwrap();
        let mut next: HashMap<&str, u32> = HashMap::new();
        for (key, payload) in seen.iter() {
            let (k, n) = payload.split_once(':').expect("key:n");
            assert_eq!(k, key, "payload under its own key");
            let n: u32 = n.parse().expect("n");
            let expected = next.entry(key.as_str()).or_insert(start);
            if n == *expected {
                *expected += 1;
            } else {
                assert!(n < *expected, "{key}: {n} processed before {expected}");
            }
        }
    }
}

pub(crate) struct Recording {
    recorder: Recorder,
    pending: Vec<(String, String, Token)>,
}

impl Flusher for Recording {
    type Record = KinesisRecord;
    type Error = std::convert::Infallible;

    async fn add_record(
        &mut self,
        r: KinesisRecord,
        t: Token,
    ) -> Result<Added<KinesisRecord>, Self::Error> {
        let payload = String::from_utf8_lossy(&r.data).into_owned();
        self.pending.push((r.partition_key, payload, t));
        Ok(Added::Added)
    }

    async fn flush(&mut self, _: FlushKind) -> Result<Vec<Token>, Self::Error> {
        let mut seen = self.recorder.0.lock().unwrap();
        Ok(self
            .pending
            .drain(..)
            .map(|(k, p, t)| {
                seen.push((k, p));
                t
            })
            .collect())
    }
}

impl FlusherFactory for Recorder {
    type Flusher = Recording;

    async fn init(&self, _shard: &str) -> Result<Recording, std::convert::Infallible> {
        Ok(Recording {
            recorder: self.clone(),
            pending: Vec::new(),
        })
    }
}

/// Run `worker` until `until` completes, then stop it (full flush, checkpoint, release): its
/// shards' ends, and what `until` returned.
pub(crate) async fn run_until<F, T>(
    worker: &KinesisWorker<F>,
    until: impl Future<Output = T>,
) -> (Vec<(String, ShardEnd)>, T)
where
    F: FlusherFactory,
    F::Flusher: Flusher<Record = KinesisRecord>,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let until = async {
        let out = until.await;
        let _ = stop.send(());
        out
    };
    tokio::join!(
        worker.run(async {
            let _ = stopped.await;
        }),
        until
    )
}
