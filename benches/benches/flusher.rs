//! Batch processor overhead and checkpoint-store writes.
//!
//! * `batch_processor/run_shard_noop_flusher`: 1,000,000 records through `run_shard` (stream,
//!   tokens, add_record, heartbeats, flushes every 1,000 records, checkpoint rule, shard end)
//!   with a flusher that only collects tokens — next to draining the same source into a Vec
//!   (the lower bound: what any consumer of this source pays), a bare Vec push, and the
//!   IO-free `Batch` core alone.
//! * `checkpoint_store/*`: checkpoint writes per second for each store (PostgreSQL when
//!   `DATABASE_URL` is set; `cargo xtask bench` sets it).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::stream::{self, BoxStream, StreamExt};
use headwaters_batch_flusher::{
    Added, Batch, Checkpointer, FlushKind, Flusher, FlusherFactory, MemoryCheckpoints,
    PostgresCheckpoints, ProcessorConfig, Schedule, Source, SourceEvent, SourceRecord,
    SqliteCheckpoints, Token, run_shard,
};
use headwaters_ordering_core::NoSettle;

const RECORDS: u64 = 1_000_000;

struct Counting;

impl Source for Counting {
    type Position = u64;
    type Record = u64;
    type Ack = NoSettle;
    type Error = String;
    type Stream = BoxStream<'static, Result<SourceEvent<u64, u64, NoSettle>, String>>;

    async fn open(&self, _shard: &str, _from: Option<u64>) -> Result<Self::Stream, String> {
        let records = (1..=RECORDS).map(|p| {
            Ok(SourceEvent::Record(SourceRecord {
                position: p,
                sub: None,
                record: p,
                ack: NoSettle,
            }))
        });
        Ok(stream::iter(records)
            .chain(stream::iter([Ok(SourceEvent::ShardEnded)]))
            .boxed())
    }
}

/// Holds tokens; full every 1,000 records; a flush hands them back.
struct Noop(Vec<Token>);

impl Flusher for Noop {
    type Record = u64;
    type Error = String;

    async fn add_record(&mut self, record: u64, token: Token) -> Result<Added<u64>, String> {
        if self.0.len() == 1_000 {
            return Ok(Added::Full(record));
        }
        black_box(record);
        self.0.push(token);
        Ok(Added::Added)
    }

    async fn flush(&mut self, _: FlushKind) -> Result<Vec<Token>, String> {
        Ok(std::mem::replace(&mut self.0, Vec::with_capacity(1_000)))
    }
}

struct NoopFactory;

impl FlusherFactory for NoopFactory {
    type Flusher = Noop;

    async fn init(&self, _shard: &str) -> Result<Noop, String> {
        Ok(Noop(Vec::with_capacity(1_000)))
    }
}

fn processor(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let mut group = c.benchmark_group("batch_processor");
    group.throughput(Throughput::Elements(RECORDS));
    group.sample_size(10);
    let config = ProcessorConfig::default();
    group.bench_function("run_shard_noop_flusher", |b| {
        b.iter(|| {
            rt.block_on(async {
                let store = MemoryCheckpoints::new();
                let (_tx, rx) = tokio::sync::watch::channel(false);
                let end = run_shard("s", &Counting, &NoopFactory, &store, &config, rx).await;
                black_box(end.unwrap_or_else(|e| panic!("{e}")));
            });
        });
    });
    group.bench_function("batch_core_only", |b| {
        b.iter(|| {
            let now = Instant::now();
            let mut batch: Batch<u64, NoSettle> = Batch::new(Schedule::default(), now);
            let mut tokens = Vec::with_capacity(1_000);
            for p in 1..=RECORDS {
                tokens.push(batch.token(p, None, NoSettle));
                if tokens.len() == 1_000 {
                    batch
                        .flushed(&tokens, now)
                        .unwrap_or_else(|e| panic!("{e}"));
                    tokens.clear();
                    black_box(batch.checkpoint_due(now));
                }
            }
        });
    });
    group.bench_function("lower_bound_source_into_vec", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut stream = Counting
                    .open("s", None)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let mut v = Vec::with_capacity(1_000);
                while let Some(Ok(event)) = stream.next().await {
                    if let SourceEvent::Record(r) = event {
                        if v.len() == 1_000 {
                            black_box(&v);
                            v.clear();
                        }
                        v.push(r.record);
                    }
                }
                black_box(v);
            });
        });
    });
    group.bench_function("lower_bound_vec_push", |b| {
        b.iter(|| {
            let mut v = Vec::with_capacity(1_000);
            for p in 1..=RECORDS {
                if v.len() == 1_000 {
                    black_box(&v);
                    v.clear();
                }
                v.push(black_box(p));
            }
            black_box(v);
        });
    });
    group.finish();
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut stores: Vec<(&str, Box<dyn Checkpointer>)> =
        vec![("memory", Box::new(MemoryCheckpoints::new()))];
    let sqlite = rt.block_on(SqliteCheckpoints::open(dir.path().join("cp.sqlite")));
    stores.push(("sqlite", Box::new(sqlite.unwrap_or_else(|e| panic!("{e}")))));
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let pg = rt.block_on(PostgresCheckpoints::connect_with(
                &url,
                format!("bench-{}", std::process::id()),
                Duration::from_secs(30),
                "hw_bench_checkpoints",
            ));
            stores.push(("postgres", Box::new(pg.unwrap_or_else(|e| panic!("{e}")))));
        }
        Err(_) => println!(
            "checkpoint_store/postgres: NOT RUN — DATABASE_URL is not set (`cargo xtask bench` starts PostgreSQL and sets it)"
        ),
    }
    let mut group = c.benchmark_group("checkpoint_store");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    // A shard of this run's own: a PostgreSQL lease left by an earlier run (of another
    // process) would otherwise refuse the acquire until it expires.
    let shard = format!("shard-{}", std::process::id());
    for (name, store) in &stores {
        rt.block_on(store.acquire(&shard))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut position = 0_u64;
        group.bench_function(BenchmarkId::new("checkpoint", name), |b| {
            b.iter(|| {
                position += 1;
                rt.block_on(store.checkpoint(&shard, &position.to_string()))
                    .unwrap_or_else(|e| panic!("{e}"));
            });
        });
        rt.block_on(store.release(&shard))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    group.finish();
}

criterion_group!(benches, processor, stores);
criterion_main!(benches);
