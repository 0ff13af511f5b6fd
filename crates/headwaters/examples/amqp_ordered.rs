//! Publish messages over many keys to RabbitMQ and consume them in order per key. The same
//! shape as `pulsar_ordered` and `eventstore_ordered`: configure, open, start the ordered
//! consumer, produce, shut down with a grace.
//!
//! Needs a broker: `AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run -p headwaters
//! --example amqp_ordered -- [messages] [keys] [--wire mississippi]`. Prints throughput and
//! checks the order. With `--wire mississippi` it speaks Elixir Mississippi's wire format:
//! keys are Erlang terms (here `{order, N}`), queues are chosen by `phash2`, and an Elixir
//! Mississippi consumer on the same queues would process the same messages.

#[path = "support/in_order.rs"]
mod in_order;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::future::join_all;
use headwaters::amqp::etf::Term;
use headwaters::amqp::{AmqpConfig, Consumer, DeadLetter, Producer, PublishOptions, WireFormat};
use headwaters::ordering::Config;
use in_order::InOrder;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("AMQP_URL")
        .context("set AMQP_URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f")?;
    let mut wire = WireFormat::Native;
    let mut numbers = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--wire" => {
                wire = match args.next().as_deref() {
                    Some("mississippi") => WireFormat::Mississippi,
                    Some("native") => WireFormat::Native,
                    other => bail!("--wire {other:?}: native or mississippi"),
                }
            }
            _ => numbers.push(arg.parse::<u64>().with_context(|| format!("{arg:?}"))?),
        }
    }
    let messages = numbers.first().copied().unwrap_or(20_000);
    let keys = numbers.get(1).copied().unwrap_or(100);
    // Configure.
    let mut config = AmqpConfig::new(url)
        .with_prefix(format!("hw_example_{}_", std::process::id()))
        .with_total_count(8)
        .with_wire(wire);
    if wire == WireFormat::Mississippi {
        // Mississippi's queues carry no arguments: their dead-letter exchange comes from a
        // broker policy, e.g. `rabbitmqctl set_policy hw-dlx '^hw_example_' \
        // '{"dead-letter-exchange":"hw.dlx"}' --apply-to queues`.
        config = config.with_dead_letter(DeadLetter::Policy);
    }
    // Open and start: the ordered consumer of the shard queues.
    let handler = InOrder::default();
    let consumer = Consumer::start(config.clone(), handler.clone(), Config::default()).await?;

    // Produce.
    let producer = Producer::connect(config).await?;
    let started = Instant::now();
    for seq in 0..messages / keys {
        let sends = (0..keys).map(|key| {
            let producer = producer.clone();
            // Mississippi keys are Erlang terms, as an Elixir producer would send them.
            let options = if wire == WireFormat::Mississippi {
                PublishOptions::term((Term::atom("order"), key))
            } else {
                PublishOptions::key(key)
            };
            async move { producer.publish(seq.to_string().as_bytes(), options).await }
        });
        for result in join_all(sends).await {
            result?;
        }
    }
    let published = started.elapsed();
    let total = messages / keys * keys;
    handler.wait_for(total, Duration::from_secs(60)).await?;
    let consumed = started.elapsed();

    // Shut down: handlers finish within the grace, the last acks go out.
    consumer.shutdown(Duration::from_secs(5)).await;
    producer.close().await;
    println!(
        "published {total} in {published:.2?} ({:.0} msgs/s, confirmed)",
        total as f64 / published.as_secs_f64()
    );
    handler.report(
        &format!("messages over {keys} keys consumed in per-key order, end to end"),
        total,
        consumed,
    )
}
