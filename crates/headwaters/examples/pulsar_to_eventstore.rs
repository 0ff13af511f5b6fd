//! Batch Pulsar messages into EventStore appends of up to 1,000 events with the batch
//! processor: one shard per topic, acks at Pulsar only for written batches, checkpoints in
//! SQLite.
//!
//! Uses `PULSAR_WS_URL` and `EVENTSTORE_ADDR` when set (credentials admin/changeit), else
//! the embedded emulators:
//!
//! ```text
//! cargo run -p headwaters --example pulsar_to_eventstore -- 20000
//! ```

#[path = "support/eventstore_node.rs"]
mod eventstore_node;
#[path = "support/pulsar_to_eventstore.rs"]
mod pulsar_to_eventstore;

use headwaters::pulsar::ClientConfig;
use headwaters_testkit::pulsar::PulsarEmulator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let per_topic: u64 = std::env::args().nth(1).map_or(Ok(20_000), |a| a.parse())?;
    let pulsar_emulator;
    let pulsar = match std::env::var("PULSAR_WS_URL") {
        Ok(url) => ClientConfig::new(&url)?,
        Err(_) => {
            pulsar_emulator = PulsarEmulator::start().await?;
            println!(
                "no PULSAR_WS_URL: embedded Pulsar emulator at {}",
                pulsar_emulator.url()
            );
            ClientConfig::new(&pulsar_emulator.url())?
        }
    };
    let (eventstore, _eventstore_emulator) = eventstore_node::connect().await?;
    let dir = tempfile::tempdir()?;
    let topics: Vec<String> = (0..2)
        .map(|i| format!("events-{}-{i}", std::process::id()))
        .collect();
    let elapsed = pulsar_to_eventstore::run(
        &pulsar,
        eventstore,
        &topics,
        per_topic,
        &dir.path().join("checkpoints.sqlite"),
    )
    .await?;
    let total = per_topic * topics.len() as u64;
    println!(
        "{total} Pulsar messages from {} topics written to EventStore in batches of up to {} in {elapsed:.2?} ({:.0} msgs/s)",
        topics.len(),
        pulsar_to_eventstore::BATCH,
        total as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
