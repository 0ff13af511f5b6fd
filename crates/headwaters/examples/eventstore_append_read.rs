//! Append events to an EventStoreDB stream and read them back, forward, backward and from
//! `$all`.
//!
//! Uses the node at `EVENTSTORE_ADDR` (e.g. `127.0.0.1:1113`, credentials admin/changeit)
//! or, without it, the embedded emulator:
//!
//! ```text
//! cargo run -p headwaters --example eventstore_append_read
//! ```

use headwaters::eventstore::{
    Connection, EventData, ExpectedVersion, Position, ReadDirection, Settings,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (_emulator, addr) = match std::env::var("EVENTSTORE_ADDR") {
        Ok(addr) => (None, addr),
        Err(_) => {
            let emulator = headwaters_testkit::eventstore::EventStoreEmulator::start().await?;
            let addr = emulator.addr().to_string();
            println!("no EVENTSTORE_ADDR: using the embedded emulator at {addr}");
            (Some(emulator), addr)
        }
    };
    let connection =
        Connection::connect(Settings::new(addr).with_credentials("admin", "changeit")?).await?;
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
        .read_stream(&stream, 0, 4, ReadDirection::Forward, false)
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
        .read_stream(&stream, -1, 2, ReadDirection::Backward, false)
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
        .read_all(Position::START, 4096, ReadDirection::Forward, false)
        .await?;
    println!("$all holds {} events so far", all.events.len());
    Ok(())
}
