//! The EventStore node the examples use: `EVENTSTORE_ADDR` when set (credentials
//! admin/changeit), else an embedded emulator.

use headwaters::eventstore::{Connection, Settings};
use headwaters_testkit::eventstore::EventStoreEmulator;

/// A connection, and the emulator behind it (keep it alive) when there is no real node.
pub(crate) async fn connect() -> anyhow::Result<(Connection, Option<EventStoreEmulator>)> {
    let (addr, emulator) = match std::env::var("EVENTSTORE_ADDR") {
        Ok(addr) => (addr, None),
        Err(_) => {
            let emulator = EventStoreEmulator::start().await?;
            let addr = emulator.addr().to_string();
            println!("no EVENTSTORE_ADDR: using the embedded EventStore emulator at {addr}");
            (addr, Some(emulator))
        }
    };
    let connection =
        Connection::connect(Settings::new(addr).with_credentials("admin", "changeit")?).await?;
    Ok((connection, emulator))
}
