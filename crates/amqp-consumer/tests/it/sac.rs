//! Two instances on single-active-consumer queues; one dies, the other takes over.

use std::sync::Arc;
use std::time::Duration;

use headwaters_amqp_consumer::{Consumer, Producer, PublishOptions};
use headwaters_ordering_core::Config;

use crate::support::{Recorder, Recording, config, eventually, payload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn the_survivor_takes_over_every_queue_and_nothing_is_lost() {
    let cfg = config("sac", 4).with_single_active_consumer(true);
    let producer = Producer::connect(cfg.clone()).await.unwrap();
    let shared = Arc::new(Recorder::default());
    let first = Consumer::start(
        cfg.clone(),
        Recording(Arc::clone(&shared)),
        Config::default(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = Consumer::start(
        cfg.clone(),
        Recording(Arc::clone(&shared)),
        Config::default(),
    )
    .await
    .unwrap();
    for seq in 0..50 {
        for key in 0..20 {
            producer
                .publish(&payload(key, seq), PublishOptions::key(key.to_string()))
                .await
                .unwrap();
        }
    }
    eventually("first half", Duration::from_secs(30), || {
        shared.unique() == 1_000
    })
    .await;
    assert!(
        second.stats().deliveries == 0,
        "the second instance stands by while the first is active"
    );
    first.abort();
    for seq in 50..100 {
        for key in 0..20 {
            producer
                .publish(&payload(key, seq), PublishOptions::key(key.to_string()))
                .await
                .unwrap();
        }
    }
    eventually(
        "second half, by the survivor",
        Duration::from_secs(60),
        || shared.unique() == 2_000,
    )
    .await;
    assert!(
        second.stats().deliveries >= 1_000,
        "the survivor consumed every queue"
    );
    assert!(shared.order_violations().is_empty());
    second.shutdown(Duration::from_secs(5)).await;
}
