//! What the configuration promises, proven against RabbitMQ: `prefetch` bounds the unacked
//! deliveries per queue, split `range`s share the shard queues without overlap, and a queue
//! that refuses a message makes its publish fail with `Nacked`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_amqp_consumer::shard::shard_index;
use headwaters_amqp_consumer::{Consumer, Error, Producer, PublishOptions};
use headwaters_ordering_core::{Config, Handler, Key, Message, Outcome};
use tokio::sync::Semaphore;

use crate::support::{config, eventually};

/// Holds every message until the gate opens; records which keys it saw.
struct Gate {
    open: Arc<Semaphore>,
    started: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    keys: Arc<Mutex<HashSet<Key>>>,
}

impl Gate {
    fn new(open: bool) -> Self {
        Self {
            open: Arc::new(Semaphore::new(if open {
                Semaphore::MAX_PERMITS
            } else {
                0
            })),
            started: Arc::default(),
            done: Arc::default(),
            keys: Arc::default(),
        }
    }

    fn share(&self) -> Self {
        Self {
            open: Arc::clone(&self.open),
            started: Arc::clone(&self.started),
            done: Arc::clone(&self.done),
            keys: Arc::clone(&self.keys),
        }
    }
}

impl Handler for Gate {
    type State = Key;
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = String;

    async fn init(&self, key: &Key) -> Result<Key, String> {
        Ok(key.clone())
    }

    async fn handle_message(&self, _: &Message, key: &mut Key) -> Result<Outcome, String> {
        self.started.fetch_add(1, SeqCst);
        self.keys.lock().unwrap().insert(key.clone());
        let _ = self.open.acquire().await.map_err(|e| e.to_string())?;
        self.done.fetch_add(1, SeqCst);
        Ok(Outcome::ack())
    }

    async fn handle_signal(&self, (): (), _: &mut Key) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn prefetch_bounds_the_unacked_deliveries_of_a_queue() {
    let config = config("prefetch", 1).with_prefetch(5);
    let gate = Gate::new(false);
    let consumer = Consumer::start(config.clone(), gate.share(), Config::default())
        .await
        .unwrap();
    let producer = Producer::connect(config).await.unwrap();
    for key in 0..50 {
        producer
            .publish(b"x", PublishOptions::key(format!("k{key}")))
            .await
            .unwrap();
    }
    // Fifty keys could all run at once; the broker hands out five, then waits for acks.
    eventually("five deliveries", Duration::from_secs(10), || {
        gate.started.load(SeqCst) == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        gate.started.load(SeqCst),
        5,
        "more unacked than the prefetch"
    );
    gate.open.add_permits(Semaphore::MAX_PERMITS / 2);
    eventually("all fifty", Duration::from_secs(20), || {
        gate.done.load(SeqCst) == 50
    })
    .await;
    consumer.shutdown(Duration::from_secs(5)).await;
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn split_ranges_share_the_queues_without_overlap() {
    let total = 128;
    let base = config("ranges", total);
    let (low, high) = (Gate::new(true), Gate::new(true));
    let first = Consumer::start(
        base.clone().with_range(0..64),
        low.share(),
        Config::default(),
    )
    .await
    .unwrap();
    let second = Consumer::start(
        base.clone().with_range(64..128),
        high.share(),
        Config::default(),
    )
    .await
    .unwrap();
    let producer = Producer::connect(base).await.unwrap();
    let keys: Vec<String> = (0..1_000).map(|k| format!("user-{k}")).collect();
    let sends = keys
        .iter()
        .map(|k| producer.publish(b"x", PublishOptions::key(k.clone())));
    for sent in futures_util::future::join_all(sends).await {
        sent.unwrap();
    }
    eventually("every message", Duration::from_secs(30), || {
        low.done.load(SeqCst) + high.done.load(SeqCst) == 1_000
    })
    .await;
    let low_keys = low.keys.lock().unwrap().clone();
    let high_keys = high.keys.lock().unwrap().clone();
    assert!(
        low_keys
            .iter()
            .all(|k| shard_index(k.as_bytes(), total) < 64)
    );
    assert!(
        high_keys
            .iter()
            .all(|k| shard_index(k.as_bytes(), total) >= 64)
    );
    assert!(low_keys.is_disjoint(&high_keys));
    assert_eq!(low_keys.len() + high_keys.len(), 1_000);
    assert!(!low_keys.is_empty() && !high_keys.is_empty());
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn a_queue_that_refuses_the_message_nacks_the_publish() {
    // One message fits; the broker nacks the next (`x-overflow: reject-publish`).
    let config = config("nacked", 1)
        .with_queue_argument("x-max-length", 1_i64)
        .with_queue_argument("x-overflow", "reject-publish");
    let producer = Producer::connect(config).await.unwrap();
    producer
        .publish(b"fits", PublishOptions::key("k"))
        .await
        .unwrap();
    let err = producer
        .publish(b"overflows", PublishOptions::key("k"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Nacked), "{err}");
    // The channel is still good: one bad publish does not break the others.
    let err = producer
        .publish(b"overflows again", PublishOptions::key("k"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Nacked), "{err}");
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn an_oversized_publish_fails_alone() {
    let config = config("oversized", 4).with_max_message_size(64 * 1024);
    let producer = Producer::connect(config).await.unwrap();
    let huge_key = "k".repeat(200 * 1024);
    // A hundred ordinary publishes in flight around three that the broker would refuse by
    // closing the channel under all of them.
    let ordinary = (0..100).map(|i| {
        let producer = producer.clone();
        async move {
            producer
                .publish(b"fine", PublishOptions::key(format!("k{i}")))
                .await
        }
    });
    let big_body = vec![0; 65 * 1024];
    let (ordinary, bad_key, bad_body, bad_id) = tokio::join!(
        futures_util::future::join_all(ordinary),
        producer.publish(b"x", PublishOptions::key(huge_key)),
        producer.publish(&big_body, PublishOptions::key("k")),
        producer.publish(
            b"x",
            PublishOptions::key("k").with_message_id("i".repeat(300))
        ),
    );
    assert!(ordinary.iter().all(Result::is_ok), "{ordinary:?}");
    assert!(
        matches!(bad_key, Err(Error::TooLarge { size, limit, .. }) if size > 200 * 1024 && limit == 131_072),
        "{bad_key:?}"
    );
    assert!(
        matches!(
            bad_body,
            Err(Error::TooLarge {
                what: "message body",
                ..
            })
        ),
        "{bad_body:?}"
    );
    assert!(
        matches!(bad_id, Err(Error::TooLarge { limit: 255, .. })),
        "{bad_id:?}"
    );
    // The channel is still the same good one.
    producer
        .publish(b"after", PublishOptions::key("k"))
        .await
        .unwrap();
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn channels_per_connection_spreads_the_queues_over_a_pool() {
    let proxy = headwaters_testkit::proxy::FaultProxy::start(crate::support::broker_addr(
        &crate::support::amqp_url(),
    ))
    .await
    .unwrap();
    let direct = config("pool", 8);
    let mut pooled = direct.clone().with_channels_per_connection(3);
    pooled.url = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let gate = Gate::new(true);
    let consumer = Consumer::start(pooled, gate.share(), Config::default())
        .await
        .unwrap();
    assert_eq!(proxy.accepted(), 3, "8 queues, 3 channels per connection");
    let producer = Producer::connect(direct).await.unwrap();
    let sends = (0..80).map(|k| producer.publish(b"x", PublishOptions::key(format!("k{k}"))));
    for sent in futures_util::future::join_all(sends).await {
        sent.unwrap();
    }
    eventually(
        "every message over the pool",
        Duration::from_secs(20),
        || gate.done.load(SeqCst) == 80,
    )
    .await;
    consumer.shutdown(Duration::from_secs(5)).await;
    producer.close().await;
}
