//! Process-status throughput: `ProcessStatus::item_processed` over 1,000 entities, per store,
//! next to the naive baseline of one upsert statement per event on the same database.
//!
//! SQLite runs everywhere (a temporary file, `synchronous=FULL`); PostgreSQL runs when
//! `DATABASE_URL` is set (`cargo xtask bench` starts a throwaway server and sets it). Each
//! iteration ends with `flush()`, so the figures count committed items.

use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use headwaters_process_status::{
    MemoryStore, PostgresStore, ProcessStatus, SqliteStore, StatusStore, Timestamp, WriteBehind,
};

const ENTITIES: usize = 1_000;
const ITEMS: usize = 100_000;
/// The one-statement-per-event baseline is slow: fewer items per iteration.
const BASELINE_ITEMS: usize = 2_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn entities() -> Vec<String> {
    (0..ENTITIES).map(|e| format!("entity-{e}")).collect()
}

/// Time `ITEMS` `item_processed` calls plus the final flush.
fn bench_status(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    status: ProcessStatus,
) {
    let names = entities();
    let mut group = c.benchmark_group("process_status");
    group.throughput(Throughput::Elements(ITEMS as u64));
    group.sample_size(10);
    let mut clock = 0_i64;
    group.bench_function(BenchmarkId::new("write_behind", name), |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            rt.block_on(async {
                for _ in 0..iters {
                    for i in 0..ITEMS {
                        clock += 1;
                        let entity = &names[i % ENTITIES];
                        if let Err(e) = status
                            .item_processed(entity, Timestamp::from_micros(clock))
                            .await
                        {
                            panic!("item_processed: {e}");
                        }
                    }
                    if let Err(e) = status.flush().await {
                        panic!("flush: {e}");
                    }
                }
            });
            started.elapsed()
        });
    });
    group.finish();
    if let Err(e) = rt.block_on(status.close()) {
        panic!("close: {e}");
    }
}

/// One `store` call (one statement / transaction) per event, awaited each time.
fn bench_baseline(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: &dyn StatusStore,
) {
    let names = entities();
    let mut group = c.benchmark_group("process_status");
    group.throughput(Throughput::Elements(BASELINE_ITEMS as u64));
    group.sample_size(10);
    let mut clock = 0_i64;
    group.bench_function(BenchmarkId::new("upsert_per_event", name), |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            rt.block_on(async {
                for _ in 0..iters {
                    for i in 0..BASELINE_ITEMS {
                        clock += 1;
                        let entity = &names[i % ENTITIES];
                        if let Err(e) = store
                            .item_processed(entity, Timestamp::from_micros(clock))
                            .await
                        {
                            panic!("upsert: {e}");
                        }
                    }
                }
            });
            started.elapsed()
        });
    });
    group.finish();
}

fn stores(c: &mut Criterion) {
    let rt = runtime();
    let config = WriteBehind::default();

    let memory = rt.block_on(ProcessStatus::open(MemoryStore::new(), config.clone()));
    bench_status(c, &rt, "memory", memory.unwrap_or_else(|e| panic!("{e}")));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let sqlite = rt.block_on(async {
        let store = SqliteStore::open(dir.path().join("bench.sqlite")).await?;
        ProcessStatus::open(store, config.clone()).await
    });
    bench_status(c, &rt, "sqlite", sqlite.unwrap_or_else(|e| panic!("{e}")));
    let baseline = rt
        .block_on(SqliteStore::open(dir.path().join("baseline.sqlite")))
        .unwrap_or_else(|e| panic!("{e}"));
    bench_baseline(c, &rt, "sqlite", &baseline);

    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let status = rt.block_on(async {
                let store = PostgresStore::connect_with(&url, "hw_bench_status").await?;
                store.reset().await?;
                ProcessStatus::open(store, config.clone()).await
            });
            bench_status(c, &rt, "postgres", status.unwrap_or_else(|e| panic!("{e}")));
            let baseline = rt.block_on(async {
                let store = PostgresStore::connect_with(&url, "hw_bench_baseline").await?;
                store.reset().await?;
                Ok::<_, headwaters_process_status::Error>(store)
            });
            bench_baseline(
                c,
                &rt,
                "postgres",
                &baseline.unwrap_or_else(|e| panic!("{e}")),
            );
        }
        Err(_) => println!(
            "process_status/postgres: NOT RUN — DATABASE_URL is not set (`cargo xtask bench` starts PostgreSQL and sets it)"
        ),
    }
}

criterion_group!(benches, stores);
criterion_main!(benches);
