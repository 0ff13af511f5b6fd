//! 100,000 messages over 1,000 keys with handler delays: order holds, nothing is lost.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use headwaters_amqp_consumer::{Consumer, Producer, PublishOptions};
use headwaters_ordering_core::Config;

use crate::support::{Recorder, Recording, config, eventually, payload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn hundred_thousand_messages_over_a_thousand_keys_in_order() {
    const KEYS: u32 = 1_000;
    const PER_KEY: u32 = 100;
    let cfg = config("ordered", 16);
    let producer = Producer::connect(cfg.clone()).await.unwrap();
    let recorder = Arc::new(Recorder {
        max_delay_us: 300,
        ..Recorder::default()
    });
    let consumer = Consumer::start(cfg, Recording(Arc::clone(&recorder)), Config::default())
        .await
        .unwrap();
    let started = Instant::now();
    // Publish in pipelined rounds: every key's next message, confirmed before the next round.
    for seq in 0..PER_KEY {
        let sends = (0..KEYS).map(|key| {
            let producer = producer.clone();
            async move {
                producer
                    .publish(&payload(key, seq), PublishOptions::key(key.to_string()))
                    .await
            }
        });
        try_join_all(sends).await.unwrap();
    }
    let total = u64::from(KEYS * PER_KEY);
    eventually("every message processed", Duration::from_secs(300), || {
        recorder.unique() == total
    })
    .await;
    let elapsed = started.elapsed();
    println!(
        "{total} messages in {elapsed:.1?}; duplicates {}",
        recorder.duplicates.load(SeqCst)
    );
    assert!(
        recorder.order_violations().is_empty(),
        "order violated for keys {:?}",
        recorder.order_violations()
    );
    {
        let firsts = recorder.firsts.lock().unwrap();
        assert_eq!(firsts.len(), KEYS as usize);
        assert!(firsts.values().all(|s| s.len() == PER_KEY as usize));
    }
    let report = consumer.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained);
    producer.close().await;
}
