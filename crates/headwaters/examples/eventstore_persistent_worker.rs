//! Competing consumers on an EventStoreDB persistent subscription: two workers share a
//! group, acknowledge what they handled, ask for a retry when a handler fails once, and
//! park an event they can never handle (it lands in the group's parked-messages stream).
//!
//! Uses the node at `EVENTSTORE_ADDR` (credentials admin/changeit) or, without it, the
//! embedded emulator:
//!
//! ```text
//! cargo run -p headwaters --example eventstore_persistent_worker
//! ```

#[path = "support/eventstore_node.rs"]
mod eventstore_node;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use headwaters::eventstore::Links;
use headwaters::eventstore::{
    Error, EventData, ExpectedVersion, NakAction, PersistentEvent, PersistentSettings,
    ReadDirection, StartFrom,
};

const EVENTS: u64 = 1_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (connection, _emulator) = eventstore_node::connect().await?;
    let stream = format!("jobs-{}", std::process::id());
    let group = "workers";

    let settings = PersistentSettings::default()
        .with_start_from(StartFrom::Beginning)
        .with_max_retry_count(3)
        .with_message_timeout(Duration::from_secs(5));
    match connection
        .create_persistent_subscription(&stream, group, &settings)
        .await
    {
        Ok(()) | Err(Error::GroupExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let jobs: Vec<EventData> = (0..EVENTS)
        .map(|i| {
            let kind = if i == 13 { "Poison" } else { "Job" };
            EventData::json(kind, format!("{{\"job\":{i}}}"))
        })
        .collect();
    connection
        .append_to_stream(&stream, ExpectedVersion::Any, &jobs)
        .await?;

    let done = Arc::new(Mutex::new(HashSet::new()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for worker in 0..2 {
        let mut subscription = connection
            .connect_to_persistent_subscription(&stream, group, 50)
            .await?;
        let done = done.clone();
        let mut stopped = stopped.clone();
        workers.push(tokio::spawn(async move {
            let mut handled = 0u64;
            loop {
                let event = tokio::select! {
                    event = subscription.next() => event,
                    _ = stopped.changed() => break,
                };
                let Some(event) = event else { break };
                let PersistentEvent::Event(m) = event else {
                    println!("worker {worker}: {event:?}");
                    continue;
                };
                let record = m.event.original().expect("an event");
                let n = record.event_number;
                let outcome = if record.event_type == "Poison" {
                    subscription.nak(&m, NakAction::Park, "cannot handle poison")
                } else if n % 100 == 7 && m.retry_count == 0 {
                    // A transient failure: handled on the retry.
                    subscription.nak(&m, NakAction::Retry, "transient failure")
                } else {
                    handled += 1;
                    done.lock().expect("lock").insert(n);
                    subscription.ack(&m)
                };
                outcome?;
            }
            Ok::<u64, Error>(handled)
        }));
    }
    // Every job but the poison one, or give up after a minute.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (done.lock().expect("lock").len() as u64) < EVENTS - 1
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true)?;
    for (i, w) in workers.into_iter().enumerate() {
        println!("worker {i} handled {} events", w.await??);
    }
    let parked = connection
        .read_stream(
            &format!("$persistentsubscription-{stream}::{group}-parked"),
            0,
            10,
            ReadDirection::Forward,
            Links::Resolve,
        )
        .await?;
    println!(
        "{} of {EVENTS} jobs handled; parked: {:?}",
        done.lock().expect("lock").len(),
        parked
            .events
            .iter()
            .filter_map(|e| e
                .event
                .as_ref()
                .map(|r| (r.event_number, r.event_type.clone())))
            .collect::<Vec<_>>()
    );
    connection
        .delete_persistent_subscription(&stream, group)
        .await?;
    Ok(())
}
