//! Pulsar topics driving a batch processor: a subscription acked only for flushed records,
//! and a reader resuming from the checkpoint store.

#![cfg(feature = "batch")]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_batch_flusher::{
    Added, BatchProcessor, FlushKind, Flusher, FlusherFactory, MemoryCheckpoints, ProcessorConfig,
    Schedule, Token,
};
use headwaters_pulsar_ws::{ClientConfig, Message, Producer, ProducerOptions, PulsarSource, Topic};
use headwaters_testkit::pulsar::PulsarEmulator;

use headwaters_testkit::eventually;

#[derive(Clone, Default)]
struct Sink {
    written: Arc<Mutex<Vec<String>>>,
    flushes: Arc<AtomicUsize>,
    fail_first: bool,
}

struct Batcher(Sink, Vec<(String, Token)>);

impl Flusher for Batcher {
    type Record = Message;
    type Error = String;

    async fn add_record(&mut self, m: Message, token: Token) -> Result<Added<Message>, String> {
        if self.1.len() == 50 {
            return Ok(Added::Full(m));
        }
        let text = String::from_utf8(m.payload.to_vec()).map_err(|e| e.to_string())?;
        self.1.push((text, token));
        Ok(Added::Added)
    }

    async fn flush(&mut self, _: FlushKind) -> Result<Vec<Token>, String> {
        if self.0.flushes.fetch_add(1, SeqCst) == 0 && self.0.fail_first {
            self.1.clear(); // the sink lost the batch
            return Err("injected: first flush fails".into());
        }
        let batch = std::mem::take(&mut self.1);
        self.0
            .written
            .lock()
            .unwrap()
            .extend(batch.iter().map(|(t, _)| t.clone()));
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
    ProcessorConfig::default()
        .with_schedule(
            Schedule::default()
                .with_flush_interval(Duration::from_millis(20))
                .with_checkpoint_interval(Duration::from_millis(20)),
        )
        .with_restart_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

async fn produce(config: &ClientConfig, topic: &str, range: std::ops::Range<u32>) {
    let topic = Topic::persistent("public", "default", topic).unwrap();
    let producer = Producer::connect(config, topic, ProducerOptions::default())
        .await
        .unwrap();
    for i in range {
        producer.send(format!("{i}")).await.unwrap();
    }
    producer.close().await;
}

fn written(sink: &Sink) -> BTreeSet<String> {
    sink.written.lock().unwrap().iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_feed_a_batch_processor_and_are_acked_only_when_flushed() {
    let e = PulsarEmulator::start().await.unwrap();
    let config = ClientConfig::new(&e.url()).unwrap();
    let source = PulsarSource::subscription(config.clone(), "public", "default", "flusher");
    let sink = Sink {
        fail_first: true,
        ..Sink::default()
    };
    let processor = BatchProcessor::new(source, sink.clone(), MemoryCheckpoints::new(), fast());
    processor.start("a");
    processor.start("b");
    // The subscriptions exist once the shards started; then publish.
    eventually("subscribed", || {
        e.backlog("persistent://public/default/a", "flusher")
            .is_some()
            && e.backlog("persistent://public/default/b", "flusher")
                .is_some()
    })
    .await;
    produce(&config, "a", 0..300).await;
    produce(&config, "b", 300..600).await;
    let all: BTreeSet<String> = (0..600).map(|i| i.to_string()).collect();
    eventually("every record flushed", || written(&sink) == all).await;
    eventually("every record acked", || {
        e.backlog("persistent://public/default/a", "flusher") == Some(0)
            && e.backlog("persistent://public/default/b", "flusher") == Some(0)
    })
    .await;
    assert_eq!(
        processor.stats().restarts,
        1,
        "the failed flush restarted one shard"
    );
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_resumes_from_its_checkpoint_without_skipping() {
    let e = PulsarEmulator::start().await.unwrap();
    let config = ClientConfig::new(&e.url()).unwrap();
    produce(&config, "r", 0..200).await;
    let store = MemoryCheckpoints::new();
    let sink = Sink::default();
    let first = BatchProcessor::new(
        PulsarSource::reader(config.clone(), "public", "default"),
        sink.clone(),
        store.clone(),
        fast(),
    );
    first.start("r");
    let first_half: BTreeSet<String> = (0..200).map(|i| i.to_string()).collect();
    eventually("the first run flushed everything", || {
        written(&sink) == first_half
    })
    .await;
    eventually("checkpointed", || store.get("r").is_some()).await;
    first.stop().await;
    let checkpoint = store.get("r").expect("a checkpoint");

    produce(&config, "r", 200..300).await;
    let resumed = Sink::default();
    let second = BatchProcessor::new(
        PulsarSource::reader(config, "public", "default"),
        resumed.clone(),
        store.clone(),
        fast(),
    );
    second.start("r");
    let rest: BTreeSet<String> = (200..300).map(|i| i.to_string()).collect();
    eventually("the second run flushed the rest", || {
        written(&resumed).is_superset(&rest)
    })
    .await;
    second.stop().await;
    let again = written(&resumed);
    assert!(
        again.len() < 300,
        "the second run started from the checkpoint {checkpoint:?}, not from the beginning ({} records)",
        again.len()
    );
}
