//! Append numbered events to many EventStore streams and process them in per-stream order
//! from a catch-up subscription on `$all`. The same shape as `amqp_ordered` and
//! `pulsar_ordered`: configure, open, start the ordered consumer, produce, shut down with a
//! grace.
//!
//! Uses the node at `EVENTSTORE_ADDR` (credentials admin/changeit) or, without it, the
//! embedded emulator:
//!
//! ```text
//! cargo run -p headwaters --example eventstore_ordered -- 20000 100
//! ```

#[path = "support/eventstore_node.rs"]
mod eventstore_node;
#[path = "support/in_order.rs"]
mod in_order;

use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::try_join_all;
use headwaters::eventstore::ordered::start_ordered_catch_up;
use headwaters::eventstore::{CatchUpSettings, EventData, ExpectedVersion};
use headwaters::ordering::{Config, Key, Message, Outcome, SimpleHandler};
use in_order::InOrder;

/// Hands the events of this run's streams to [`InOrder`]; `$all` also holds other streams.
struct OurStreams {
    prefix: String,
    in_order: InOrder,
}

impl SimpleHandler for OurStreams {
    type Error = std::convert::Infallible;

    async fn handle(&self, key: &Key, m: &Message) -> Result<Outcome, Self::Error> {
        if key.as_bytes().starts_with(self.prefix.as_bytes()) {
            self.in_order.handle(key, m).await
        } else {
            Ok(Outcome::ack())
        }
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

    // Configure and open: a real node if given, else the emulator (kept alive until the end).
    let (connection, _emulator) = eventstore_node::connect().await?;
    let prefix = format!("order{}-", std::process::id());

    // Start: a catch-up subscription on `$all`, keyed by stream.
    let in_order = InOrder::default();
    let handler = OurStreams {
        prefix: prefix.clone(),
        in_order: in_order.clone(),
    };
    let catch_up = connection.subscribe_to_all_from(None, CatchUpSettings::default());
    let running = start_ordered_catch_up(catch_up, handler, Config::default())?;

    // Produce: one append of `messages / keys` events per stream, all appends in flight.
    let started = Instant::now();
    let per_key = messages / keys;
    let appends = (0..keys).map(|key| {
        let (connection, stream) = (connection.clone(), format!("{prefix}{key}"));
        async move {
            let events: Vec<EventData> = (0..per_key)
                .map(|seq| EventData::binary("Numbered", seq.to_string()))
                .collect();
            connection
                .append_to_stream(&stream, ExpectedVersion::NoStream, &events)
                .await
        }
    });
    try_join_all(appends).await?;
    let total = per_key * keys;
    in_order.wait_for(total, Duration::from_secs(60)).await?;
    let elapsed = started.elapsed();

    // Shut down: handlers finish within the grace.
    running.shutdown(Duration::from_secs(5)).await?;
    connection.close().await;
    in_order.report(
        &format!("events over {keys} streams appended, consumed from $all in per-stream order"),
        total,
        elapsed,
    )
}
