//! EventStore TCP: the frame codec (ns per frame, mean over many) and pipelined appends
//! and paged reads against the in-process emulator (events/s). Prints its figures.
//!
//! `cargo bench` writes 50,000 events of 100 bytes in appends of 100, 16 appends in flight,
//! then reads them back in pages of 4,096 forward; `cargo test --benches` runs 2,000 (a
//! smoke run). Then node-eventstore-client reads the same stream from the same emulator
//! (`benches/node/eventstore_read.js`) and both rates print side by side; the goal is ours
//! at least 5× the Node client's. `cargo xtask bench eventstore` installs the Node client and
//! points `NODE_PATH` at it; without Node the comparison says why it did not run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use headwaters_eventstore_tcp::Links;
use headwaters_eventstore_tcp::{
    Command, Connection, Credentials, EventData, ExpectedVersion, Frame, FrameDecoder,
    ReadDirection, Settings, StreamPosition,
};
use headwaters_testkit::eventstore::EventStoreEmulator;

fn codec(iterations: u32) {
    let frame = Frame::new(Command::WriteEvents, [7; 16], vec![0u8; 200])
        .with_credentials(Credentials::new("admin", "changeit").unwrap());
    let mut buf = BytesMut::with_capacity(1 << 20);
    let started = Instant::now();
    for _ in 0..iterations {
        buf.clear();
        black_box(&frame).encode(&mut buf).unwrap();
    }
    let encode = started.elapsed() / iterations;
    let bytes = frame.to_bytes().unwrap();
    let mut decoder = FrameDecoder::new();
    let started = Instant::now();
    for _ in 0..iterations {
        decoder.extend(black_box(&bytes));
        black_box(decoder.next_frame().unwrap().unwrap());
    }
    let decode = started.elapsed() / iterations;
    println!(
        "frame codec (200-byte payload, credentials): encode {} ns, decode {} ns",
        encode.as_nanos(),
        decode.as_nanos()
    );
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (events, iterations) = if full {
        (50_000u64, 1_000_000)
    } else {
        (2_000, 10_000)
    };
    codec(iterations);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let emulator = EventStoreEmulator::start().await.unwrap();
        let connection = Connection::connect(
            Settings::new(emulator.addr().to_string())
                .with_credentials("admin", "changeit")
                .unwrap(),
        )
        .await
        .unwrap();
        let batch: Vec<EventData> = (0..100)
            .map(|_| EventData::binary("bench", vec![b'x'; 100]))
            .collect();
        let appends = events / 100;
        let started = Instant::now();
        let mut in_flight: tokio::task::JoinSet<
            Result<headwaters_eventstore_tcp::WriteResult, headwaters_eventstore_tcp::Error>,
        > = tokio::task::JoinSet::new();
        for _ in 0..appends {
            if in_flight.len() >= 16 {
                in_flight.join_next().await.unwrap().unwrap().unwrap();
            }
            let (c, b) = (connection.clone(), batch.clone());
            in_flight.spawn(async move {
                c.append_to_stream("bench", ExpectedVersion::Any, &b).await
            });
        }
        while let Some(done) = in_flight.join_next().await {
            done.unwrap().unwrap();
        }
        let write = started.elapsed();
        let started = Instant::now();
        let (mut from, mut read) = (StreamPosition::START, 0u64);
        loop {
            let slice = connection
                .read_stream("bench", from, 4096, ReadDirection::Forward, Links::AsStored)
                .await
                .unwrap();
            read += slice.events.len() as u64;
            if slice.is_end_of_stream {
                break;
            }
            from = slice.next_position().expect("a forward page names the next");
        }
        let reading = started.elapsed();
        assert_eq!(read, appends * 100);
        println!(
            "eventstore emulator on loopback, {read} events of 100 bytes: appends of 100 with 16 in flight {:.0} events/s; reads in pages of 4,096 {:.0} events/s",
            rate(read, write),
            rate(read, reading)
        );
        let ours = rate(read, reading);
        let addr = emulator.addr().to_string();
        // The Node client blocks this thread while it reads; the emulator keeps serving on
        // the runtime's workers.
        let node = tokio::task::spawn_blocking(move || node_read(&addr, read))
            .await
            .unwrap();
        match node {
            Ok(theirs) => println!(
                "same reads with node-eventstore-client: {theirs:.0} events/s — ours {:.1}× (goal ≥ 5×)",
                ours / theirs
            ),
            Err(why) => println!("node-eventstore-client comparison not run: {why}"),
        }
    });
}

/// Read the bench stream with node-eventstore-client; its events/s.
fn node_read(addr: &str, expected: u64) -> Result<f64, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/node/eventstore_read.js");
    let modules = std::env::var("NODE_PATH").map_err(|_| {
        "NODE_PATH is not set (`cargo xtask bench eventstore` installs node-eventstore-client and sets it)".to_owned()
    })?;
    let out = std::process::Command::new("node")
        .env("NODE_PATH", modules)
        .args([script, addr, "bench"])
        .output()
        .map_err(|e| format!("cannot run node: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "node failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let numbers: Vec<f64> = line
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let [events, seconds] = numbers[..] else {
        return Err(format!("unexpected output {line:?}"));
    };
    if events as u64 != expected {
        return Err(format!("node read {events} events, expected {expected}"));
    }
    Ok(events / seconds)
}
