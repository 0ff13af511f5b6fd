//! Discard → dead-letter queue; Stop → later messages still in order; invalid deliveries;
//! bad credentials, unreachable broker, missing vhost.

use std::sync::Arc;
use std::time::Duration;

use headwaters_amqp_consumer::{AmqpConfig, Consumer, Error, Producer, PublishOptions};
use headwaters_ordering_core::Config;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

use crate::support::{Recorder, Recording, amqp_url, config, eventually, payload};

/// A fanout exchange bound to one queue, as the dead-letter target.
async fn dead_letter_queue(name: &str) -> lapin::Channel {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        name.into(),
        name.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    std::mem::forget(conn); // keep it open for the test
    ch
}

/// Publish "no key" to `queue` without the sharding_key header, around the producer; the
/// channel stays open for the test.
async fn publish_without_key(queue: &str) -> lapin::Channel {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        b"no key",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    std::mem::forget(conn); // keep it open for the test
    ch
}

async fn count(ch: &lapin::Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut bodies = vec![];
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        bodies.push(m.delivery.data.clone());
    }
    bodies
}

#[tokio::test]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn discarded_and_invalid_messages_reach_the_dead_letter_queue_and_stop_keeps_order() {
    let dlx = format!("hw_dlx_{}", std::process::id());
    let dlq = dead_letter_queue(&dlx).await;
    let cfg = config("failures", 4).with_dead_letter_exchange(&dlx);
    let producer = Producer::connect(cfg.clone()).await.unwrap();
    let recorder = Arc::new(Recorder {
        discard_seq: Some(3),
        stop_seq: Some(5),
        ..Recorder::default()
    });
    let consumer = Consumer::start(
        cfg.clone(),
        Recording(Arc::clone(&recorder)),
        Config::default(),
    )
    .await
    .unwrap();
    for seq in 0..10 {
        producer
            .publish(&payload(1, seq), PublishOptions::key("1"))
            .await
            .unwrap();
    }
    publish_without_key(&producer.queue_for(&"1".into())).await;
    eventually("all ten processed", Duration::from_secs(30), || {
        recorder.unique() == 10
    })
    .await;
    assert_eq!(
        recorder.firsts.lock().unwrap()[&1],
        (0..10).collect::<Vec<_>>(),
        "after Stop the key goes on, in order"
    );
    let mut dead = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dead.len() < 2 && tokio::time::Instant::now() < deadline {
        dead.extend(count(&dlq, &dlx).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dead.sort();
    assert_eq!(
        dead,
        [b"1:3".to_vec(), b"no key".to_vec()],
        "the discard and the key-less message are dead-lettered"
    );
    assert_eq!(consumer.stats().invalid, 1);
    consumer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn unroutable_publishes_are_errors() {
    let producer = Producer::connect(
        config("unroutable", 2).with_exchange(format!("hw_ex_{}", std::process::id())),
    )
    .await
    .unwrap();
    // Remove the queue the key maps to: the direct exchange can no longer route to it.
    let queue = producer.queue_for(&"k".into());
    let raw = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = raw.create_channel().await.unwrap();
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let err = producer
        .publish(b"x", PublishOptions::key("k"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unroutable { .. }), "{err}");
}

#[tokio::test]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn bad_credentials_unreachable_broker_and_missing_vhost_are_typed_errors() {
    let url = amqp_url();
    let rest = url
        .split_once('@')
        .map_or(url.as_str(), |(_, r)| r)
        .to_owned();
    let host = rest.split('/').next().unwrap().to_owned();

    let wrong = AmqpConfig::new(format!("amqp://guest:wrong-secret@{rest}"));
    let err = Producer::connect(wrong).await.unwrap_err();
    assert!(matches!(err, Error::AccessRefused { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong-secret"));
    assert!(
        err.to_string().contains("ACCESS_REFUSED")
            || err.to_string().to_lowercase().contains("refused"),
        "{err}"
    );

    let vhost = AmqpConfig::new(format!("amqp://guest:guest@{host}/no-such-vhost"));
    let err = Producer::connect(vhost).await.unwrap_err();
    assert!(matches!(err, Error::VhostNotAllowed { .. }), "{err:?}");
    assert!(
        err.to_string().contains("no-such-vhost"),
        "the broker's reason names the vhost: {err}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = AmqpConfig::new(format!("amqp://guest:secret@127.0.0.1:{port}/%2f"));
    let err = Producer::connect(down).await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")));
    assert!(!err.to_string().contains("secret"));

    let err = Consumer::start(
        AmqpConfig::new("http://nope"),
        Recording(Arc::default()),
        Config::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}

#[tokio::test]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn clashing_queue_arguments_fail_start_with_the_brokers_reason() {
    // The queues exist without single-active-consumer…
    let plain = config("clash", 2);
    Producer::connect(plain.clone())
        .await
        .unwrap()
        .close()
        .await;
    // …so declaring them with it is refused: the first start says so instead of retrying.
    let err = Consumer::start(
        plain.with_single_active_consumer(true),
        Recording(Arc::default()),
        Config::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Broker { code: 406, .. }), "{err:?}");
    assert!(
        err.to_string().contains("x-single-active-consumer"),
        "the broker's reason names the argument: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn by_default_key_less_and_discarded_messages_reach_a_declared_dead_letter_queue() {
    let cfg = config("default_dlx", 1);
    let recorder = Arc::new(Recorder {
        discard_seq: Some(2),
        ..Recorder::default()
    });
    let consumer = Consumer::start(cfg.clone(), Recording(recorder.clone()), Config::default())
        .await
        .unwrap();
    let producer = Producer::connect(cfg.clone()).await.unwrap();
    for seq in 1..=3 {
        producer
            .publish(&payload(1, seq), PublishOptions::key("1"))
            .await
            .unwrap();
    }
    let raw = publish_without_key(&producer.queue_for(&"1".into())).await;
    eventually("processed and rejected", Duration::from_secs(10), || {
        recorder.unique() == 3 && consumer.stats().invalid == 1
    })
    .await;
    // Both are dead-lettered (asynchronously, by the broker) to `{prefix}dead_letter`.
    let dead_letters = cfg.declared_dead_letter();
    let mut bodies = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bodies.len() < 2 && tokio::time::Instant::now() < deadline {
        bodies.extend(count(&raw, &dead_letters).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bodies.sort();
    assert_eq!(bodies, [b"1:2".to_vec(), b"no key".to_vec()]);
    consumer.shutdown(Duration::from_secs(5)).await;
    producer.close().await;
}
