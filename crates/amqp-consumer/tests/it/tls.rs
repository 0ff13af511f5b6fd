//! `amqps://` through rustls against the test broker's TLS listener, which requires a client
//! certificate (`fail_if_no_peer_cert`), so a client that sends none is refused.

use std::sync::Arc;
use std::time::Duration;

use headwaters_amqp_consumer::{AmqpConfig, Consumer, Producer, PublishOptions};
use headwaters_ordering_core::Config;

use crate::support::{Recorder, Recording, eventually, payload};

fn tls() -> (String, std::path::PathBuf) {
    let url = std::env::var("AMQPS_URL").expect("AMQPS_URL is not set: run `cargo xtask integration`, which starts RabbitMQ with a TLS listener");
    let dir = std::env::var("HEADWATERS_AMQP_TLS_DIR")
        .expect("HEADWATERS_AMQP_TLS_DIR is not set: run `cargo xtask integration`");
    (url, dir.into())
}

fn read(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
}

fn config(url: &str, test: &str) -> AmqpConfig {
    AmqpConfig::new(url)
        .with_prefix(format!("hw_{test}_{}_", std::process::id()))
        .with_total_count(2)
}

#[tokio::test]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn amqps_round_trip_trusting_the_test_ca() {
    let (url, dir) = tls();
    let cfg = config(&url, "tls")
        .with_ca_pem(read(&dir, "ca.pem"))
        .unwrap()
        .with_client_identity(read(&dir, "client.pem"), read(&dir, "client.key"))
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let consumer = Consumer::start(
        cfg.clone(),
        Recording(Arc::clone(&recorder)),
        Config::default(),
    )
    .await
    .unwrap();
    let producer = Producer::connect(cfg).await.unwrap();
    for seq in 0..20 {
        producer
            .publish(&payload(7, seq), PublishOptions::key("7"))
            .await
            .unwrap();
    }
    eventually("20 messages over TLS", Duration::from_secs(20), || {
        recorder.unique() == 20
    })
    .await;
    assert_eq!(
        recorder.firsts.lock().unwrap()[&7],
        (0..20).collect::<Vec<_>>()
    );
    consumer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn amqps_with_a_client_certificate() {
    let (url, dir) = tls();
    let cfg = config(&url, "mtls")
        .with_ca_pem(read(&dir, "ca.pem"))
        .unwrap()
        .with_client_identity(read(&dir, "client.pem"), read(&dir, "client.key"))
        .unwrap();
    assert!(
        !format!("{cfg:?}").contains("PRIVATE KEY"),
        "the key never shows in Debug"
    );
    let producer = Producer::connect(cfg.clone()).await.unwrap();
    producer
        .publish(b"x", PublishOptions::key("k"))
        .await
        .unwrap();
    // The broker requires a certificate: without one the same connection is refused, so
    // the success above proves the client sent it.
    let mut without = cfg;
    without.tls.client_cert_pem = None;
    without.tls.client_key_pem = None;
    let without = without.with_connect_timeout(Duration::from_secs(5));
    let refused = Producer::connect(without).await;
    assert!(refused.is_err(), "a client without a certificate got in");
}

#[tokio::test]
#[ignore = "needs RabbitMQ: cargo xtask integration"]
async fn amqps_refuses_an_untrusted_server_with_a_clear_error() {
    let (url, _) = tls();
    let err = Producer::connect(config(&url, "untrusted"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "{err:?}"
    );
    assert!(
        !text.contains("guest:guest"),
        "no credentials in errors: {text}"
    );
}
