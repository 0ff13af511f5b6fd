//! EventStore streams driving a batch processor from the stored checkpoint.

#![cfg(feature = "batch")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_batch_flusher::{
    Added, BatchProcessor, FlushKind, Flusher, FlusherFactory, MemoryCheckpoints, ProcessorConfig,
    Schedule, Token,
};
use headwaters_eventstore_tcp::{
    Connection, EventData, EventStoreSource, ExpectedVersion, ResolvedEvent, Settings,
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
    c.delete_stream("a", ExpectedVersion::Any, true)
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), second.wait())
        .await
        .expect("the shard ended");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(store.get("a").as_deref(), Some("129"));
}
