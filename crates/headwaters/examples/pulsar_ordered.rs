//! Produce keyed messages to Pulsar's WebSocket API and process them in per-key order with
//! two Key_Shared consumers.
//!
//! Uses the Pulsar at `PULSAR_WS_URL` (e.g. `ws://127.0.0.1:8080`, token from `PULSAR_TOKEN`)
//! or, without it, the embedded emulator:
//!
//! ```text
//! cargo run -p headwaters --example pulsar_ordered -- 20000 100
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use headwaters::ordering::{Config, Key, Message, Outcome, SimpleHandler};
use headwaters::pulsar::{
    ClientConfig, Consumer, ConsumerOptions, ConsumerParams, OnDiscard, Producer, ProducerOptions,
    SubscriptionType, Topic, run_ordered,
};

/// Remembers the last number seen per key and counts anything out of order.
#[derive(Clone, Default)]
struct InOrder {
    last: Arc<Mutex<HashMap<String, u64>>>,
    violations: Arc<Mutex<u64>>,
}

impl SimpleHandler for InOrder {
    type Error = std::convert::Infallible;

    async fn handle(&self, key: &Key, m: &Message) -> Result<Outcome, Self::Error> {
        let n: u64 = std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut last = self.last.lock().unwrap();
        let previous = last.insert(key.to_string(), n);
        if previous.is_some_and(|p| p >= n) && !m.is_redelivery() {
            *self.violations.lock().unwrap() += 1;
        }
        Ok(Outcome::ack())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args
        .next()
        .map_or(Ok(20_000), |a| a.parse())
        .context("MESSAGES")?;
    let keys: u64 = args.next().map_or(Ok(100), |a| a.parse()).context("KEYS")?;

    // A real Pulsar if given, else the emulator (kept alive until the end of main).
    let (_emulator, config) = match std::env::var("PULSAR_WS_URL") {
        Ok(url) => {
            let mut config = ClientConfig::new(&url)?;
            if let Ok(token) = std::env::var("PULSAR_TOKEN") {
                config = config.with_token(token);
            }
            (None, config)
        }
        Err(_) => {
            let emulator = headwaters_testkit::pulsar::PulsarEmulator::start().await?;
            let config = ClientConfig::new(&emulator.url())?;
            println!(
                "no PULSAR_WS_URL: using the embedded emulator at {}",
                emulator.url()
            );
            (Some(emulator), config)
        }
    };
    let topic = Topic::persistent(
        "public",
        "default",
        &format!("orders-{}", std::process::id()),
    )?;

    let mut params = ConsumerParams::default();
    params.subscription_type = Some(SubscriptionType::KeyShared);
    let handler = InOrder::default();
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let consumer = Consumer::subscribe(
            &config,
            topic.clone(),
            "in-order",
            ConsumerOptions::default().with_params(params.clone()),
        )
        .await?;
        let handle = consumer.handle();
        let run = tokio::spawn(run_ordered(
            consumer,
            handler.clone(),
            Config::default(),
            Duration::from_secs(10),
            // The handler never discards; were it to, the message would be acknowledged.
            OnDiscard::Acknowledge,
        ));
        consumers.push((handle, run));
    }

    let producer = Producer::connect(&config, topic, ProducerOptions::default()).await?;
    let started = Instant::now();
    let mut receipts = Vec::new();
    for i in 0..messages {
        receipts.push(
            producer
                .enqueue((format!("key-{}", i % keys), i.to_string()))
                .await?,
        );
    }
    for r in receipts {
        r.await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while handler
        .last
        .lock()
        .unwrap()
        .values()
        .filter(|&&n| n + keys >= messages)
        .count()
        < keys.min(messages) as usize
    {
        if Instant::now() > deadline {
            bail!("not every key reached its last message within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    producer.close().await;
    for (handle, run) in consumers {
        handle.close().await;
        run.await??;
    }
    let violations = *handler.violations.lock().unwrap();
    println!(
        "{messages} messages over {keys} keys produced, consumed in per-key order by 2 Key_Shared consumers in {elapsed:.2?} ({:.0} msgs/s); order violations: {violations}",
        messages as f64 / elapsed.as_secs_f64()
    );
    if violations > 0 {
        bail!("{violations} order violations");
    }
    Ok(())
}
