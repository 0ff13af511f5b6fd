//! A shard queue driving a batch processor: acks only for flushed records.

#![cfg(feature = "batch")]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_amqp_consumer::{AmqpRecord, AmqpShardSource, Producer, PublishOptions};
use headwaters_batch_flusher::{
    Added, BatchProcessor, FlushKind, Flusher, FlusherFactory, MemoryCheckpoints, ProcessorConfig,
    Schedule, Token,
};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

use crate::support::{amqp_url, config, eventually};

#[derive(Clone, Default)]
struct Sink {
    written: Arc<Mutex<Vec<String>>>,
    flushes: Arc<AtomicUsize>,
}

struct Batcher(Sink, Vec<(String, Token)>);

impl Flusher for Batcher {
    type Record = AmqpRecord;
    type Error = String;

    async fn add_record(
        &mut self,
        r: AmqpRecord,
        token: Token,
    ) -> Result<Added<AmqpRecord>, String> {
        if self.1.len() == 50 {
            return Ok(Added::Full(r));
        }
        let text = String::from_utf8(r.message.payload.to_vec()).map_err(|e| e.to_string())?;
        self.1.push((text, token));
        Ok(Added::Added)
    }

    async fn flush(&mut self, _: FlushKind) -> Result<Vec<Token>, String> {
        if self.0.flushes.fetch_add(1, SeqCst) == 0 {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn shard_queues_feed_a_batch_processor_and_are_acked_only_when_flushed() {
    let cfg = config("batch", 2);
    let producer = Producer::connect(cfg.clone()).await.unwrap();
    for i in 0..300 {
        producer
            .publish(i.to_string().as_bytes(), PublishOptions::key(i.to_string()))
            .await
            .unwrap();
    }
    let sink = Sink::default();
    let processor = BatchProcessor::new(
        AmqpShardSource::new(cfg.clone()),
        sink.clone(),
        MemoryCheckpoints::new(),
        ProcessorConfig::default()
            .with_schedule(Schedule::default().with_flush_interval(Duration::from_millis(20)))
            .with_restart_backoff(Duration::from_millis(10), Duration::from_millis(50)),
    );
    processor.start("0");
    processor.start("1");
    let all: BTreeSet<String> = (0..300).map(|i| i.to_string()).collect();
    eventually("every record flushed", Duration::from_secs(30), || {
        sink.written
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            == all
    })
    .await;
    assert_eq!(
        processor.stats().restarts,
        1,
        "the failed flush restarted one shard"
    );
    processor.stop().await;
    // Everything was acked: nothing is left in the queues.
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for index in 0..2 {
        let queue = format!("{}{index}", cfg.prefix);
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = ch
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap();
        assert_eq!(
            q.message_count(),
            0,
            "{queue} still holds unacked or unflushed records"
        );
    }
}
