//! Produce keyed messages to Pulsar's WebSocket API and process them in per-key order with
//! two Key_Shared consumers. The same shape as `amqp_ordered` and `eventstore_ordered`:
//! configure, open, start the ordered consumer, produce, shut down with a grace.
//!
//! Uses the Pulsar at `PULSAR_WS_URL` (e.g. `ws://127.0.0.1:8080`, token from `PULSAR_TOKEN`)
//! or, without it, the embedded emulator:
//!
//! ```text
//! cargo run -p headwaters --example pulsar_ordered -- 20000 100
//! ```

#[path = "support/in_order.rs"]
mod in_order;

use std::time::{Duration, Instant};

use anyhow::Context;
use headwaters::ordering::Config;
use headwaters::pulsar::{
    ClientConfig, Consumer, ConsumerOptions, ConsumerParams, OnDiscard, Producer, ProducerOptions,
    SubscriptionType, Topic, start_ordered,
};
use in_order::InOrder;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args
        .next()
        .map_or(Ok(20_000), |a| a.parse())
        .context("MESSAGES")?;
    let keys: u64 = args.next().map_or(Ok(100), |a| a.parse()).context("KEYS")?;

    // Configure: a real Pulsar if given, else the emulator (kept alive until the end).
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

    // Open and start: two ordered consumers sharing the keys.
    let mut params = ConsumerParams::default();
    params.subscription_type = Some(SubscriptionType::KeyShared);
    let handler = InOrder::default();
    let mut running = Vec::new();
    for _ in 0..2 {
        let options = ConsumerOptions::default().with_params(params.clone());
        let consumer = Consumer::subscribe(&config, topic.clone(), "in-order", options).await?;
        // The handler never discards; were it to, the message would be acknowledged.
        running.push(start_ordered(
            consumer,
            handler.clone(),
            Config::default(),
            OnDiscard::Acknowledge,
        )?);
    }

    // Produce.
    let producer = Producer::connect(&config, topic, ProducerOptions::default()).await?;
    let started = Instant::now();
    let mut receipts = Vec::new();
    for seq in 0..messages / keys {
        for key in 0..keys {
            receipts.push(producer.enqueue((key.to_string(), seq.to_string())).await?);
        }
    }
    for r in receipts {
        r.await?;
    }
    let total = messages / keys * keys;
    handler.wait_for(total, Duration::from_secs(60)).await?;
    let elapsed = started.elapsed();

    // Shut down: handlers finish within the grace, their acks go out.
    producer.close().await;
    for consumer in running {
        consumer.shutdown(Duration::from_secs(5)).await?;
    }
    handler.report(
        &format!(
            "messages over {keys} keys produced, consumed in per-key order by 2 Key_Shared consumers"
        ),
        total,
        elapsed,
    )
}
