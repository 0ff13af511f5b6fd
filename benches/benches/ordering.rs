//! Ordered dispatch throughput: the bounded `Dispatcher` next to Mississippi's
//! process-per-key design (one tokio task per key, mpsc in, oneshot ack out, unbounded) and a
//! single-threaded lower bound (HashMap lookup + per-key VecDeque push/pop). Same messages,
//! same key distribution (round-robin), settle/ack included in every variant.
//!
//! Also prints the memory held per idle key (RSS growth over 100,000 idle keys) and fails if
//! it is over the 1 KiB goal.
//!
//! `cargo xtask bench ordering` runs it; `cargo test --benches` runs each case once.

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use headwaters_ordering_core::{
    Config, Delivery, Dispatcher, Handler, Key, Message, Outcome, Settle, Settlement, Timestamp,
};
use tokio::sync::{mpsc, oneshot};

const MESSAGES: usize = 200_000;
const KEY_COUNTS: [usize; 3] = [1, 100, 10_000];

struct Noop;

impl Handler for Noop {
    type State = ();
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = std::convert::Infallible;

    async fn init(&self, _: &Key) -> Result<(), Self::Error> {
        Ok(())
    }
    async fn handle_message(&self, m: &Message, _: &mut ()) -> Result<Outcome, Self::Error> {
        black_box(m);
        Ok(Outcome::ack())
    }
    async fn handle_signal(&self, _: (), _: &mut ()) {}
}

/// Acks counted by [`Count`].
static ACKED: AtomicU64 = AtomicU64::new(0);

/// Settle handle of the benchmark: counts acks (a static counter, so that the harness adds no
/// per-message reference counting of its own).
struct Count;

impl Settle for Count {
    fn settle(self, settlement: Settlement) {
        if settlement == Settlement::Ack {
            ACKED.fetch_add(1, Relaxed);
        }
    }
}

fn workload(keys: usize) -> Vec<(Key, Message)> {
    let names: Vec<Key> = (0..keys).map(|k| Key::from(format!("key-{k}"))).collect();
    (0..MESSAGES)
        .map(|i| {
            let m = Message::new(
                &b"0123456789"[..],
                i.to_string(),
                Timestamp::from_micros(i as i64),
            );
            (names[i % keys].clone(), m)
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn ordered(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("ordered_dispatch");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.sample_size(10);
    for keys in KEY_COUNTS {
        let dispatcher =
            rt.block_on(async { Dispatcher::new(Noop, Config::default()).expect("config") });
        let epoch = dispatcher.new_epoch();
        group.bench_function(BenchmarkId::new("headwaters_dispatcher", keys), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let work = workload(keys);
                    let target = ACKED.load(Relaxed) + MESSAGES as u64;
                    let started = Instant::now();
                    rt.block_on(async {
                        for (key, message) in work {
                            let settle = Count;
                            let delivery = Delivery {
                                key,
                                message,
                                settle,
                                epoch,
                            };
                            if dispatcher.dispatch(delivery).await.is_err() {
                                panic!("dispatcher closed");
                            }
                        }
                        while ACKED.load(Relaxed) < target {
                            tokio::task::yield_now().await;
                        }
                    });
                    total += started.elapsed();
                }
                total
            });
        });
        rt.block_on(dispatcher.shutdown(Duration::from_secs(5)));

        group.bench_function(BenchmarkId::new("task_per_key_unbounded", keys), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let work = workload(keys);
                    let started = Instant::now();
                    rt.block_on(task_per_key(work));
                    total += started.elapsed();
                }
                total
            });
        });

        group.bench_function(BenchmarkId::new("lower_bound_single_thread", keys), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let work = workload(keys);
                    let started = Instant::now();
                    lower_bound(work);
                    total += started.elapsed();
                }
                total
            });
        });
    }
    group.finish();
}

/// Mississippi's design: a task per key, fed by a channel; each message carries a oneshot the
/// key task completes as its ack; the producer awaits every ack.
async fn task_per_key(work: Vec<(Key, Message)>) {
    let mut senders: HashMap<Key, mpsc::UnboundedSender<(Message, oneshot::Sender<()>)>> =
        HashMap::new();
    let mut acks = Vec::with_capacity(work.len());
    for (key, message) in work {
        let tx = senders.entry(key).or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<(Message, oneshot::Sender<()>)>();
            tokio::spawn(async move {
                while let Some((m, ack)) = rx.recv().await {
                    black_box(&m);
                    let _ = ack.send(());
                }
            });
            tx
        });
        let (ack_tx, ack_rx) = oneshot::channel();
        if tx.send((message, ack_tx)).is_err() {
            panic!("key task gone");
        }
        acks.push(ack_rx);
    }
    for ack in acks {
        let _ = ack.await;
    }
}

/// The least work per-key FIFO ordering can do: a map lookup, a push, a pop.
fn lower_bound(work: Vec<(Key, Message)>) {
    let mut queues: HashMap<Key, VecDeque<Message>> = HashMap::new();
    let mut done = 0_u64;
    for (key, message) in work {
        let q = queues.entry(key).or_default();
        q.push_back(message);
        if let Some(m) = q.pop_front() {
            black_box(&m);
            done += 1;
        }
    }
    black_box(done);
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Memory per idle key: RSS growth after 100,000 keys each processed one message and went idle.
fn idle_key_memory(_: &mut Criterion) {
    const KEYS: usize = 100_000;
    let rt = runtime();
    let dispatcher =
        rt.block_on(async { Dispatcher::new(Noop, Config::default()).expect("config") });
    let epoch = dispatcher.new_epoch();
    let start = ACKED.load(Relaxed);
    let work: Vec<(Key, Message)> = (0..KEYS)
        .map(|k| {
            (
                Key::from(format!("key-{k}")),
                Message::new(&b"x"[..], "m", Timestamp::from_micros(0)),
            )
        })
        .collect();
    let before = rss();
    rt.block_on(async {
        for (key, message) in work {
            let delivery = Delivery {
                key,
                message,
                settle: Count,
                epoch,
            };
            if dispatcher.dispatch(delivery).await.is_err() {
                panic!("dispatcher closed");
            }
        }
        while ACKED.load(Relaxed) < start + KEYS as u64 {
            tokio::task::yield_now().await;
        }
    });
    let after = rss();
    let live = dispatcher.metrics().live_keys;
    match (before, after) {
        (Some(b), Some(a)) => {
            let per_key = a.saturating_sub(b) / KEYS as u64;
            println!(
                "idle keys: {live} live; memory per idle key ≈ {per_key} bytes (RSS {} KiB -> {} KiB; includes the key's own bytes)",
                b / 1024,
                a / 1024
            );
            // The design goal, checked wherever this runs (the CI smoke run included).
            assert!(
                per_key <= 1024,
                "an idle key holds {per_key} bytes, over the 1 KiB goal"
            );
        }
        _ => println!(
            "idle keys: {live} live; memory per idle key: RSS not readable on this platform"
        ),
    }
    assert_eq!(
        live, KEYS as u64,
        "every key stays live until its idle timeout"
    );
    rt.block_on(dispatcher.shutdown(Duration::from_secs(5)));
}

criterion_group!(benches, idle_key_memory, ordered);
criterion_main!(benches);
