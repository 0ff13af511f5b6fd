//! Endpoints that accept a connection and then say nothing: every connection attempt is
//! bounded and followed by the next, so neither the first connect nor a reconnect hangs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use headwaters_amqp_consumer::{AmqpConfig, Consumer, Error, Producer, PublishOptions};
use headwaters_ordering_core::Config;
use headwaters_testkit::proxy::FaultProxy;

use crate::support::{Recorder, Recording, amqp_url, broker_addr, config, eventually, payload};

/// A listener that accepts and never answers (sockets held open).
async fn silent_endpoint() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_silent_endpoint_fails_the_connect_in_time() {
    let (addr, _listener) = silent_endpoint().await;
    let config = AmqpConfig::new(format!("amqp://guest:guest@{addr}/%2f"))
        .with_connect_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = Producer::connect(config.clone()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Unreachable { reason, .. } if reason.contains("did not answer")),
        "{err}"
    );
    let Err(err) = Consumer::start(config, Recording(Arc::default()), Config::default()).await
    else {
        panic!("a consumer started without a broker");
    };
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "two bounded attempts took {:?}",
        started.elapsed()
    );
    let unbounded = AmqpConfig::new(format!("amqp://guest:guest@{addr}/%2f"))
        .with_connect_timeout(Duration::ZERO);
    assert!(
        matches!(Producer::connect(unbounded).await, Err(Error::Config(r)) if r.contains("connect_timeout")),
        "an unbounded connect is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn a_consumer_resumes_by_itself_after_a_proxy_froze_and_thawed() {
    let proxy = FaultProxy::start(broker_addr(&amqp_url())).await.unwrap();
    let direct = config("stall", 4);
    // The consumer goes through the proxy; heartbeats every second notice a frozen stream.
    let mut via_proxy = direct.clone();
    via_proxy.url = format!("amqp://guest:guest@{}/%2f?heartbeat=1", proxy.addr());
    let via_proxy = via_proxy
        .with_connect_timeout(Duration::from_millis(500))
        .with_backoff(Duration::from_millis(50), Duration::from_millis(200));
    let recorder = Arc::new(Recorder::default());
    let consumer = Consumer::start(
        via_proxy,
        Recording(Arc::clone(&recorder)),
        Config::default(),
    )
    .await
    .unwrap();
    let producer = Producer::connect(direct).await.unwrap();
    let publish = |range: std::ops::Range<u32>| {
        let producer = producer.clone();
        async move {
            for seq in range {
                for key in 0..10 {
                    producer
                        .publish(&payload(key, seq), PublishOptions::key(key.to_string()))
                        .await
                        .unwrap();
                }
            }
        }
    };
    publish(0..10).await;
    eventually("the first 100 processed", Duration::from_secs(20), || {
        recorder.unique() == 100
    })
    .await;

    // Freeze: the live connection stalls mid-stream, new ones are accepted and ignored.
    let before = proxy.accepted();
    proxy.freeze(true);
    let frozen_at = Instant::now();
    publish(10..20).await;
    eventually(
        "two reconnect attempts into the frozen proxy, each given up in time",
        Duration::from_secs(30),
        || proxy.accepted() >= before + 2,
    )
    .await;
    assert_eq!(
        recorder.unique(),
        100,
        "nothing gets through a frozen proxy"
    );

    proxy.freeze(false);
    let thawed_at = Instant::now();
    eventually(
        "the messages published while frozen, after the thaw",
        Duration::from_secs(30),
        || recorder.unique() == 200,
    )
    .await;
    println!(
        "frozen for {:?}, {} connection attempts meanwhile; resumed {:?} after the thaw",
        thawed_at - frozen_at,
        proxy.accepted() - before,
        thawed_at.elapsed()
    );
    assert!(recorder.order_violations().is_empty());
    assert!(consumer.stats().connections >= 2);
    consumer.shutdown(Duration::from_secs(5)).await;
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn a_consumer_out_of_reconnection_attempts_stops_and_says_why() {
    let proxy = FaultProxy::start(broker_addr(&amqp_url())).await.unwrap();
    let mut via_proxy = config("give_up", 2);
    via_proxy.url = format!("amqp://guest:guest@{}/%2f?heartbeat=1", proxy.addr());
    let via_proxy = via_proxy
        .with_connect_timeout(Duration::from_millis(300))
        .with_backoff(Duration::from_millis(20), Duration::from_millis(50))
        .with_max_reconnect_attempts(2);
    let consumer = Consumer::start(via_proxy, Recording(Arc::default()), Config::default())
        .await
        .unwrap();
    assert!(!consumer.is_finished());
    assert!(consumer.failure().is_none());
    // The broker goes away for good: the connection is cut and every new one refused.
    let before = proxy.accepted();
    proxy.set_down(true);
    eventually("the consumer gave up", Duration::from_secs(20), || {
        consumer.is_finished()
    })
    .await;
    let failure = consumer.failure().expect("the reason it gave up");
    assert!(failure.is_transient(), "{failure}");
    assert!(
        proxy.accepted() >= before + 2,
        "two attempts were made: {}",
        proxy.accepted() - before
    );
    consumer.shutdown(Duration::from_secs(1)).await;
}
