//! AMQP throughput against a real RabbitMQ (`AMQP_URL`; `cargo xtask bench` starts one), side
//! by side with raw lapin on the same broker, 100-byte persistent messages, prefetch 300:
//!
//! * consumer: the ordered `Consumer` (no-op handler, coalesced acks) vs a raw lapin consumer
//!   that acks each message, each draining the same number of pre-filled messages;
//! * producer: `Producer::publish` with 1,000 in flight vs a raw lapin publisher pipelining
//!   1,000 confirms.
//!
//! Each comparison runs with one shard queue and with eight. Prints msgs/s and the ratios.
//! `cargo bench` runs 30,000 messages per case; `cargo test --benches` runs 2,000 (a smoke
//! run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use headwaters_amqp_consumer::shard::{queue_name, shard_index};
use headwaters_amqp_consumer::{
    AmqpConfig, Consumer, Producer, PublishOptions, SHARDING_KEY_HEADER,
};
use headwaters_ordering_core::{Config, Handler, Key, Message, Outcome};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

const KEYS: u64 = 1_000;
const WINDOW: usize = 1_000;

struct Count(Arc<AtomicU64>);

impl Handler for Count {
    type State = ();
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = std::convert::Infallible;
    async fn init(&self, _: &Key) -> Result<(), Self::Error> {
        Ok(())
    }
    async fn handle_message(&self, _: &Message, _: &mut ()) -> Result<Outcome, Self::Error> {
        self.0.fetch_add(1, Relaxed);
        Ok(Outcome::ack())
    }
    async fn handle_signal(&self, _: (), _: &mut ()) {}
}

fn payload() -> Vec<u8> {
    vec![b'x'; 100]
}

fn properties(key: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from(SHARDING_KEY_HEADER),
        AMQPValue::LongString(LongString::from(key.as_bytes())),
    );
    BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2)
}

async fn raw_channel(url: &str, prefix: &str, shards: u32) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ch = conn
        .create_channel()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..shards {
        ch.queue_declare(
            queue_name(prefix, i).as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (conn, ch)
}

/// Raw lapin: publish `n` messages, 1,000 confirms in flight. Returns msgs/s.
async fn raw_publish(url: &str, prefix: &str, shards: u32, n: u64) -> f64 {
    let (_conn, ch) = raw_channel(url, prefix, shards).await;
    let started = Instant::now();
    let body = payload();
    let mut sent = 0;
    while sent < n {
        let mut confirms = Vec::with_capacity(WINDOW);
        for _ in 0..WINDOW.min((n - sent) as usize) {
            let key = (sent % KEYS).to_string();
            let queue = queue_name(prefix, shard_index(key.as_bytes(), shards));
            let confirm = ch
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body,
                    properties(&key),
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            confirms.push(confirm);
            sent += 1;
        }
        for c in join_all(confirms).await {
            assert!(c.unwrap_or_else(|e| panic!("{e}")).is_ack());
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Our producer: `publish` with 1,000 in flight. Returns msgs/s.
async fn our_publish(config: &AmqpConfig, n: u64) -> f64 {
    let producer = Producer::connect(config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let body = payload();
    let mut sent = 0;
    while sent < n {
        let window = (sent..n.min(sent + WINDOW as u64)).map(|i| {
            let producer = producer.clone();
            let body = &body;
            async move {
                producer
                    .publish(body, PublishOptions::key((i % KEYS).to_string()))
                    .await
            }
        });
        for r in join_all(window).await {
            r.unwrap_or_else(|e| panic!("{e}"));
        }
        sent = n.min(sent + WINDOW as u64);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    producer.close().await;
    rate
}

/// Raw lapin: one consumer per queue, prefetch 300, `basic.ack` per message. Returns msgs/s.
async fn raw_consume(url: &str, prefix: &str, shards: u32, n: u64) -> f64 {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    for i in 0..shards {
        let ch = conn
            .create_channel()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ch.basic_qos(300, BasicQosOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut consumer = ch
            .basic_consume(
                queue_name(prefix, i).as_str().into(),
                format!("raw-{i}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                if d.ack(BasicAckOptions::default()).await.is_err() {
                    return;
                }
                done.fetch_add(1, Relaxed);
            }
        });
    }
    while done.load(Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    rate
}

/// Our consumer, no-op handler. Returns msgs/s.
async fn our_consume(config: &AmqpConfig, n: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let consumer = Consumer::start(config.clone(), Count(Arc::clone(&done)), Config::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    while done.load(Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    consumer.shutdown(Duration::from_secs(10)).await;
    rate
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u64 = if full { 30_000 } else { 2_000 };
    let Ok(url) = std::env::var("AMQP_URL") else {
        println!(
            "amqp: NOT RUN — AMQP_URL is not set (`cargo xtask bench` starts RabbitMQ and sets it)"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        for shards in [1, 8] {
            let pid = std::process::id();
            let raw_prefix = format!("hw_bench_raw{shards}_{pid}_");
            let our_prefix = format!("hw_bench_ours{shards}_{pid}_");
            let ours = AmqpConfig::new(url.clone()).with_prefix(&our_prefix).with_total_count(shards);

            let raw_pub = raw_publish(&url, &raw_prefix, shards, n).await;
            let our_pub = our_publish(&ours, n).await;
            let raw_con = raw_consume(&url, &raw_prefix, shards, n).await;
            let our_con = our_consume(&ours, n).await;
            println!("amqp ({n} messages of 100 bytes, persistent, {shards} queue(s), {KEYS} keys, prefetch 300):");
            println!("  producer  raw lapin, 1,000 confirms in flight:  {raw_pub:>9.0} msgs/s");
            println!("  producer  headwaters Producer, 1,000 in flight: {our_pub:>9.0} msgs/s   ratio {:.2}", our_pub / raw_pub);
            println!("  consumer  raw lapin, ack per message:          {raw_con:>9.0} msgs/s");
            println!("  consumer  headwaters ordered, coalesced acks:  {our_con:>9.0} msgs/s   ratio {:.2}", our_con / raw_con);
        }
    });
}
