//! kill -9 of the broker mid-run while a producer keeps publishing.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use headwaters_amqp_consumer::{AmqpConfig, Consumer, Error, Producer, PublishOptions};
use headwaters_ordering_core::Config;

use crate::support::{Recorder, Recording, config, eventually, payload};

fn ctl(action: &str) {
    let script = std::env::var("HEADWATERS_RABBITMQ_CTL")
        .expect("HEADWATERS_RABBITMQ_CTL is not set: this test kills and restarts the broker, so it needs the one `cargo xtask integration` starts");
    let status = std::process::Command::new("sh")
        .arg(script)
        .arg(action)
        .status()
        .unwrap();
    assert!(status.success(), "ctl.sh {action} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn broker_restart_loses_nothing_and_keeps_order() {
    const KEYS: u32 = 50;
    const PER_KEY: u32 = 60;
    // The default reconnect backoff: the resume time measured below is what users get.
    let defaults = AmqpConfig::default();
    let cfg = config("restart", 8)
        .with_publish_wait(Duration::from_secs(30))
        .with_backoff(defaults.reconnect_min, defaults.reconnect_max);
    let producer = Producer::connect(cfg.clone()).await.unwrap();
    let recorder = Arc::new(Recorder::default());
    let consumer = Consumer::start(cfg, Recording(Arc::clone(&recorder)), Config::default())
        .await
        .unwrap();
    let publisher = tokio::spawn({
        let producer = producer.clone();
        async move {
            let mut retries = 0_u32;
            for seq in 0..PER_KEY {
                for key in 0..KEYS {
                    let opts = || {
                        PublishOptions::key(key.to_string()).with_message_id(format!("{key}-{seq}"))
                    };
                    // Retry until confirmed: a publish that failed may or may not have been
                    // stored, so the same message id may arrive twice (counted as a duplicate).
                    loop {
                        match producer.publish(&payload(key, seq), opts()).await {
                            Ok(()) => break,
                            Err(Error::Reconnecting | Error::Connection(_)) => {
                                retries += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Err(e) => panic!("publish {key}-{seq}: {e}"),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            retries
        }
    });
    eventually("some progress", Duration::from_secs(60), || {
        recorder.unique() > 500
    })
    .await;
    ctl("kill");
    // Down long enough for the reconnect backoff to reach its cap.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ctl("start"); // returns once the broker is ready
    let ready = std::time::Instant::now();
    eventually("the consumer to reconnect", Duration::from_secs(30), || {
        consumer.stats().connections >= 2
    })
    .await;
    let resumed = ready.elapsed();
    println!("restart: the consumer resumed {resumed:?} after the broker was ready");
    assert!(
        resumed < Duration::from_secs(3),
        "recovery took {resumed:?} after the broker was ready (the backoff cap is 1 s)"
    );
    let retries = publisher.await.unwrap();
    let total = u64::from(KEYS * PER_KEY);
    eventually(
        "every message processed after the restart",
        Duration::from_secs(120),
        || recorder.unique() == total,
    )
    .await;
    println!(
        "restart: {total} unique messages, {} duplicates, {retries} publish retries, {} connections",
        recorder.duplicates.load(SeqCst),
        consumer.stats().connections
    );
    assert!(
        consumer.stats().connections >= 2,
        "the consumer reconnected by itself"
    );
    assert!(
        recorder.order_violations().is_empty(),
        "order of first processing violated: {:?}",
        recorder.order_violations()
    );
    consumer.shutdown(Duration::from_secs(10)).await;
}
