//! Append events to an EventStoreDB stream, read them back (forward, backward, `$all`),
//! then follow the stream with a catch-up subscription (Extreme's listener): the history
//! after a checkpoint, the switch to live, and events appended afterwards.
//!
//! Uses the node at `EVENTSTORE_ADDR` (e.g. `127.0.0.1:1113`, credentials admin/changeit)
//! or, without it, the embedded emulator:
//!
//! ```text
//! cargo run -p headwaters --example eventstore_append_read
//! ```

#[path = "support/eventstore_node.rs"]
mod eventstore_node;

use futures_util::StreamExt;
use headwaters::eventstore::Links;
use headwaters::eventstore::{
    CatchUpEvent, EventData, ExpectedVersion, Position, ReadDirection, StreamPosition,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (connection, _emulator) = eventstore_node::connect().await?;
    let stream = format!("orders-{}", std::process::id());

    let events: Vec<EventData> = (0..10)
        .map(|i| EventData::json("OrderPlaced", format!("{{\"order\":{i}}}")))
        .collect();
    let written = connection
        .append_to_stream(&stream, ExpectedVersion::NoStream, &events)
        .await?;
    println!(
        "appended 10 events to {stream}; next expected version {}",
        written.next_expected_version
    );
    // A second writer that assumed the stream was new loses the race, with a typed error.
    let late = connection
        .append_to_stream(&stream, ExpectedVersion::NoStream, &events[..1])
        .await;
    println!("a stale writer gets: {}", late.unwrap_err());

    let forward = connection
        .read_stream(&stream, 0, 4, ReadDirection::Forward, Links::AsStored)
        .await?;
    for e in &forward.events {
        let r = e.original().expect("an event");
        println!(
            "  #{} {} {}",
            r.event_number,
            r.event_type,
            String::from_utf8_lossy(&r.data)
        );
    }
    let backward = connection
        .read_stream(
            &stream,
            StreamPosition::End,
            2,
            ReadDirection::Backward,
            Links::AsStored,
        )
        .await?;
    println!(
        "last two, newest first: {:?}",
        backward
            .events
            .iter()
            .map(|e| e.original_event_number())
            .collect::<Vec<_>>()
    );
    let all = connection
        .read_all(
            Position::START,
            4096,
            ReadDirection::Forward,
            Links::AsStored,
        )
        .await?;
    println!("$all holds {} events so far", all.events.len());

    // A listener that processed up to event 6 before it stopped resumes after it.
    let mut listener = connection.subscribe_to_stream_from(&stream, Some(6), 100);
    let mut live_seen = 0;
    while let Some(event) = listener.next().await {
        match event {
            CatchUpEvent::Event(e) => {
                let n = e.original_event_number().unwrap_or_default();
                println!("  listener: event #{n}");
                if n >= 10 {
                    live_seen += 1;
                    if live_seen == 2 {
                        break;
                    }
                }
            }
            CatchUpEvent::CaughtUp => {
                println!("  listener: caught up; appending two more");
                let more: Vec<EventData> = (10..12)
                    .map(|i| EventData::json("OrderPlaced", format!("{{\"order\":{i}}}")))
                    .collect();
                connection
                    .append_to_stream(&stream, ExpectedVersion::Exact(9), &more)
                    .await?;
            }
            other => println!("  listener: {other:?}"),
        }
    }
    Ok(())
}
