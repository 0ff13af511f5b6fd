//! Kinesis: KPL de-aggregation (ns per user record, mean over many), and a `KinesisWorker`
//! reading a stream through the batch processor against a local Kinesis (records/s, end to
//! end: GetRecords, de-aggregation, flusher, checkpoints). Prints its figures.
//!
//! `cargo bench` reads 60,000 user records (half plain records, half in KPL aggregates of
//! 100) into a no-op flusher, beside a bare `GetRecords` loop on the same client and stream;
//! `cargo test --benches` reads 2,000 (a smoke run). The stream part needs
//! `KINESIS_ENDPOINT` (`cargo xtask bench kinesis` starts kinesalite); without it it says so.
//! kinesalite is a Node.js server: the end-to-end figure is bounded by it, not by us.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use headwaters_batch_flusher::{
    Added, FlushKind, Flusher, FlusherFactory, MemoryCheckpoints, ProcessorConfig, Schedule, Token,
};
use headwaters_kinesis::{
    KinesisConfig, KinesisRecord, KinesisSource, KinesisWorker, ReadSettings, WorkerConfig, kpl,
};

fn deaggregation(iterations: u32) {
    let users: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("key-{i}"), vec![i as u8; 100]))
        .collect();
    let aggregate = kpl::aggregate(users.iter().map(|(k, d)| (k.as_str(), None, d.as_slice())));
    let started = Instant::now();
    for _ in 0..iterations {
        black_box(kpl::deaggregate("outer", black_box(aggregate.clone())));
    }
    let per_user = started.elapsed() / (iterations * 100);
    let plain = bytes::Bytes::from(vec![7u8; 100]);
    let started = Instant::now();
    for _ in 0..iterations * 100 {
        black_box(kpl::deaggregate("outer", black_box(plain.clone())));
    }
    let per_plain = started.elapsed() / (iterations * 100);
    println!(
        "KPL de-aggregation (aggregates of 100 user records of 100 bytes, MD5 checked): {} ns per user record; a plain record: {} ns",
        per_user.as_nanos(),
        per_plain.as_nanos()
    );
}

/// A no-op flusher: counts each record and lets it go (`Ignored`: done at once, no flush
/// to wait for), so the figure is the source and the processor's own cost.
#[derive(Clone, Default)]
struct Count(Arc<AtomicUsize>);

struct Counting(Arc<AtomicUsize>);

impl Flusher for Counting {
    type Record = KinesisRecord;
    type Error = std::convert::Infallible;
    async fn add_record(
        &mut self,
        r: KinesisRecord,
        _: Token,
    ) -> Result<Added<KinesisRecord>, Self::Error> {
        black_box(r);
        self.0.fetch_add(1, Relaxed);
        Ok(Added::Ignored)
    }
    async fn flush(&mut self, _: FlushKind) -> Result<Vec<Token>, Self::Error> {
        Ok(Vec::new())
    }
}

impl FlusherFactory for Count {
    type Flusher = Counting;
    async fn init(&self, _: &str) -> Result<Counting, std::convert::Infallible> {
        Ok(Counting(Arc::clone(&self.0)))
    }
}

async fn read_stream(endpoint: String, records: usize) {
    let config = KinesisConfig::new("us-east-1")
        .with_endpoint(endpoint)
        .with_credentials("bench", "bench", None);
    let client = config.client().expect("client");
    let stream = format!("hw-bench-{}", std::process::id());
    client
        .create_stream()
        .stream_name(&stream)
        .shard_count(4)
        .send()
        .await
        .expect("create");
    loop {
        let s = client
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await
            .expect("describe");
        if s.stream_description_summary.map(|d| d.stream_status) == Some(StreamStatus::Active) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Half plain records, half KPL aggregates of 100 user records.
    let plain = records / 2;
    let aggregates = (records - plain) / 100;
    let mut entries: Vec<PutRecordsRequestEntry> = (0..plain)
        .map(|i| {
            PutRecordsRequestEntry::builder()
                .partition_key(format!("key-{}", i % 64))
                .data(Blob::new(vec![1u8; 100]))
                .build()
                .expect("entry")
        })
        .collect();
    for a in 0..aggregates {
        let users: Vec<(String, Vec<u8>)> = (0..100)
            .map(|i| (format!("user-{}", (a * 100 + i) % 64), vec![2u8; 100]))
            .collect();
        let data = kpl::aggregate(users.iter().map(|(k, d)| (k.as_str(), None, d.as_slice())));
        entries.push(
            PutRecordsRequestEntry::builder()
                .partition_key(format!("agg-{a}"))
                .data(Blob::new(data.to_vec()))
                .build()
                .expect("entry"),
        );
    }
    for chunk in entries.chunks(500) {
        client
            .put_records()
            .stream_name(&stream)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await
            .expect("put");
    }
    let expected = plain + aggregates * 100;
    let bare = bare_loop(&client, &stream, plain + aggregates).await;
    let count = Count::default();
    let source = KinesisSource::from_client(
        client.clone(),
        &stream,
        // The bare loop's pause when caught up.
        ReadSettings::default().with_idle_time(Duration::from_millis(5)),
    );
    let worker =
        KinesisWorker::new(
            source,
            count.clone(),
            MemoryCheckpoints::new(),
            WorkerConfig::default()
                .with_lease_interval(Duration::from_millis(100))
                .with_processor(ProcessorConfig::default().with_schedule(
                    Schedule::default().with_flush_interval(Duration::from_millis(50)),
                )),
        );
    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let wait = async {
        while count.0.load(Relaxed) < expected {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "records did not all arrive"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = started.elapsed();
        let _ = stop.send(());
        elapsed
    };
    let (_, elapsed) = tokio::join!(
        worker.run(async {
            let _ = stopped.await;
        }),
        wait
    );
    println!(
        "KinesisWorker against kinesalite, 4 shards: {expected} user records ({plain} plain, {aggregates} aggregates of 100) through the processor into a no-op flusher in {elapsed:.2?}: {:.0} user records/s",
        expected as f64 / elapsed.as_secs_f64()
    );
    println!(
        "bare GetRecords loop, same client and stream (no de-aggregation, no flusher, no checkpoints): {bare:.2?}; the worker takes {:.2}× its time (goal: at most 1.11×, i.e. ≥ 0.9× its rate)",
        elapsed.as_secs_f64() / bare.as_secs_f64()
    );
    let _ = client.delete_stream().stream_name(&stream).send().await;
}

/// Every shard read from its start with plain `GetRecords` calls, all shards at once, until
/// `records` Kinesis records came back: the floor the worker is compared with.
async fn bare_loop(client: &aws_sdk_kinesis::Client, stream: &str, records: usize) -> Duration {
    use aws_sdk_kinesis::types::ShardIteratorType;
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .expect("shards");
    let started = Instant::now();
    let seen = Arc::new(AtomicUsize::new(0));
    let reads = shards.shards.unwrap_or_default().into_iter().map(|shard| {
        let seen = Arc::clone(&seen);
        async move {
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(shard.shard_id)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .expect("iterator")
                .shard_iterator;
            while let Some(it) = iterator {
                if seen.load(Relaxed) >= records {
                    break;
                }
                let out = client
                    .get_records()
                    .shard_iterator(it)
                    .send()
                    .await
                    .expect("records");
                seen.fetch_add(black_box(out.records).len(), Relaxed);
                if out.millis_behind_latest == Some(0) && seen.load(Relaxed) < records {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                iterator = out.next_shard_iterator;
            }
        }
    });
    futures_util::future::join_all(reads).await;
    assert!(
        seen.load(Relaxed) >= records,
        "the bare loop saw every record"
    );
    started.elapsed()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    deaggregation(if full { 20_000 } else { 200 });
    match std::env::var("KINESIS_ENDPOINT") {
        Ok(endpoint) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(read_stream(endpoint, if full { 60_000 } else { 2_000 })),
        Err(_) => println!(
            "KinesisWorker read: not run — KINESIS_ENDPOINT is not set (`cargo xtask bench kinesis` starts kinesalite)"
        ),
    }
}
