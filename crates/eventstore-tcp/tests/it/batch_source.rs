//! EventStore streams driving a batch processor from the stored checkpoint.

#![cfg(feature = "batch")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_batch_flusher::{
    Added, BatchProcessor, FlushKind, Flusher, FlusherFactory, MemoryCheckpoints, ProcessorConfig,
    Schedule, Token,
};
use headwaters_eventstore_tcp::{
    Connection, DeleteMode, EventData, EventStoreSource, ExpectedVersion, ResolvedEvent, Settings,
};
use headwaters_testkit::eventstore::EventStoreEmulator;
use headwaters_testkit::eventually;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<(String, u64)>>>);

struct Batcher(Sink, Vec<((String, u64), Token)>);

impl Flusher for Batcher {
    type Record = ResolvedEvent;
    type Error = String;

    async fn add_record(
        &mut self,
        e: ResolvedEvent,
        token: Token,
    ) -> Result<Added<ResolvedEvent>, String> {
        if self.1.len() == 50 {
            return Ok(Added::Full(e));
        }
        let r = e.original().ok_or("an event")?;
        self.1.push(((r.stream_id.clone(), r.event_number), token));
        Ok(Added::Added)
    }

    async fn flush(&mut self, _: FlushKind) -> Result<Vec<Token>, String> {
        let batch = std::mem::take(&mut self.1);
        self.0
            .0
            .lock()
            .unwrap()
            .extend(batch.iter().map(|(e, _)| e.clone()));
        Ok(batch.into_iter().map(|(_, t)| t).collect())
    }
}

impl FlusherFactory for Sink {
    type Flusher = Batcher;
    async fn init(&self, _shard: &str) -> Result<Batcher, String> {
        Ok(Batcher(self.clone(), Vec::new()))
    }
}

fn fast() -> ProcessorConfig {
    ProcessorConfig::default().with_schedule(
        Schedule::default()
            .with_flush_interval(Duration::from_millis(20))
            .with_checkpoint_interval(Duration::from_millis(20)),
    )
}

async fn append(c: &Connection, stream: &str, n: u32) {
    let events: Vec<EventData> = (0..n)
        .map(|i| EventData::json("e", format!("{i}")))
        .collect();
    c.append_to_stream(stream, ExpectedVersion::Any, &events)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_feed_a_batch_processor_and_resume_from_the_checkpoint() {
    let e = EventStoreEmulator::start().await.unwrap();
    let c = Connection::connect(
        Settings::new(e.addr().to_string())
            .with_credentials("admin", "changeit")
            .unwrap(),
    )
    .await
    .unwrap();
    append(&c, "a", 120).await;
    append(&c, "b", 80).await;
    let store = MemoryCheckpoints::new();
    let sink = Sink::default();
    let first = BatchProcessor::new(
        EventStoreSource::new(c.clone(), 25),
        sink.clone(),
        store.clone(),
        fast(),
    );
    first.start("a");
    first.start("b");
    eventually("both streams flushed and checkpointed", || {
        sink.0.lock().unwrap().len() == 200
            && store.get("a").as_deref() == Some("119")
            && store.get("b").as_deref() == Some("79")
    })
    .await;
    first.stop().await;

    // A new run resumes after the checkpoint: only the events written since.
    append(&c, "a", 10).await;
    let resumed = Sink::default();
    let second = BatchProcessor::new(
        EventStoreSource::new(c.clone(), 25),
        resumed.clone(),
        store.clone(),
        fast(),
    );
    second.start("a");
    eventually("the new events flushed", || {
        resumed.0.lock().unwrap().len() == 10
    })
    .await;
    let numbers: Vec<u64> = resumed.0.lock().unwrap().iter().map(|(_, n)| *n).collect();
    assert_eq!(numbers, (120..130).collect::<Vec<u64>>());

    // A hard delete ends the shard, with everything flushed and checkpointed.
    c.delete_stream("a", ExpectedVersion::Any, DeleteMode::Hard)
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), second.wait())
        .await
        .expect("the shard ended");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(store.get("a").as_deref(), Some("129"));
}

async fn connect(e: &EventStoreEmulator) -> Connection {
    Connection::connect(
        Settings::new(e.addr().to_string())
            .with_credentials("admin", "changeit")
            .unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_feeds_a_batch_processor_by_position() {
    use headwaters_eventstore_tcp::{EventStoreAllSource, Position};
    let e = EventStoreEmulator::start().await.unwrap();
    let c = connect(&e).await;
    append(&c, "a", 30).await;
    append(&c, "b", 20).await;
    let store = MemoryCheckpoints::new();
    let sink = Sink::default();
    let first = BatchProcessor::new(
        EventStoreAllSource::new(c.clone(), 16),
        sink.clone(),
        store.clone(),
        fast(),
    );
    first.start("all");
    eventually("$all flushed and checkpointed", || {
        sink.0.lock().unwrap().len() == 50
            && store
                .get("all")
                .and_then(|p| p.parse::<Position>().ok())
                .is_some_and(|p| p.commit > 0)
    })
    .await;
    first.stop().await;
    let checkpoint: Position = store.get("all").unwrap().parse().unwrap();

    // System events are skipped; a restart resumes after the checkpoint.
    c.set_stream_metadata(
        "a",
        ExpectedVersion::Any,
        &headwaters_eventstore_tcp::StreamMetadata::default().with_max_count(100),
    )
    .await
    .unwrap();
    append(&c, "c", 5).await;
    let resumed = Sink::default();
    let second = BatchProcessor::new(
        EventStoreAllSource::new(c.clone(), 16),
        resumed.clone(),
        store.clone(),
        fast(),
    );
    second.start("all");
    eventually("the new events flushed", || {
        resumed.0.lock().unwrap().len() == 5
            && store
                .get("all")
                .and_then(|p| p.parse::<Position>().ok())
                .is_some_and(|p| p > checkpoint)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let streams: Vec<String> = resumed
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(s, _)| s.clone())
        .collect();
    assert_eq!(
        streams,
        vec!["c".to_owned(); 5],
        "only stream c, no $metadata"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_group_feeds_a_batch_processor_acked_at_the_server() {
    use headwaters_eventstore_tcp::{EventStorePersistentSource, PersistentSettings, StartFrom};
    let e = EventStoreEmulator::start().await.unwrap();
    let c = connect(&e).await;
    append(&c, "jobs", 120).await;
    c.create_persistent_subscription(
        "jobs",
        "flushers",
        &PersistentSettings::default().with_start_from(StartFrom::Beginning),
    )
    .await
    .unwrap();
    let store = MemoryCheckpoints::new();
    let sink = Sink::default();
    let first = BatchProcessor::new(
        EventStorePersistentSource::new(c.clone(), "flushers", 100),
        sink.clone(),
        store.clone(),
        fast(),
    );
    first.start("jobs");
    eventually("every event flushed", || {
        sink.0.lock().unwrap().len() == 120
    })
    .await;
    // Acks reach the server before the shard is stopped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.stop().await;
    let mut numbers: Vec<u64> = sink.0.lock().unwrap().iter().map(|(_, n)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..120).collect::<Vec<u64>>());

    // The group's position is at the server: a new processor gets only new events.
    append(&c, "jobs", 7).await;
    let resumed = Sink::default();
    let second = BatchProcessor::new(
        EventStorePersistentSource::new(c.clone(), "flushers", 100),
        resumed.clone(),
        MemoryCheckpoints::new(),
        fast(),
    );
    second.start("jobs");
    eventually("the new events flushed", || {
        resumed.0.lock().unwrap().len() == 7
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let numbers: Vec<u64> = resumed.0.lock().unwrap().iter().map(|(_, n)| *n).collect();
    assert_eq!(numbers, (120..127).collect::<Vec<u64>>());
    second.stop().await;
}
