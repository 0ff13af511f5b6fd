//! Stopping never waits for an outage: `close()` while the server is away — refusing
//! connections, or accepting them and then saying nothing — returns at once, what needed the
//! connection fails instead of waiting, and a dropped client stops trying to connect.

use std::time::Duration;

use headwaters_pulsar_ws::{
    ClientConfig, Consumer, ConsumerOptions, Error, Producer, ProducerOptions, Topic,
};
use headwaters_testkit::eventually;
use headwaters_testkit::proxy::FaultProxy;
use headwaters_testkit::pulsar::PulsarEmulator;
use tokio::time::timeout;

const AT_ONCE: Duration = Duration::from_secs(1);

fn topic(name: &str) -> Topic {
    Topic::persistent("public", "default", name).unwrap()
}

/// An emulator behind a proxy, and a client configuration that reconnects quickly.
async fn behind_a_proxy() -> (PulsarEmulator, FaultProxy, ClientConfig) {
    let e = PulsarEmulator::start().await.unwrap();
    let proxy = FaultProxy::start(e.addr()).await.unwrap();
    let config = ClientConfig::new(&format!("ws://{}", proxy.addr()))
        .unwrap()
        .with_backoff(Duration::from_millis(10), Duration::from_millis(30));
    (e, proxy, config)
}

/// Until the clients have tried at least once more to connect after the outage began.
async fn reconnecting(proxy: &FaultProxy) {
    let before = proxy.accepted();
    eventually("a reconnect attempt reaches the proxy", || {
        proxy.accepted() > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_an_outage_returns_at_once() {
    // Refused (the port closes every connection), then silent (accepted, nothing forwarded:
    // the upgrade would wait for the connect timeout).
    for silent in [false, true] {
        let (_e, proxy, config) = behind_a_proxy().await;
        let mut consumer =
            Consumer::subscribe(&config, topic("c"), "s", ConsumerOptions::default())
                .await
                .unwrap();
        let producer = Producer::connect(&config, topic("p"), ProducerOptions::default())
            .await
            .unwrap();
        if silent {
            proxy.freeze(true);
            proxy.cut();
        } else {
            proxy.set_down(true);
        }
        reconnecting(&proxy).await;
        let pending = producer.enqueue("sent during the outage").await.unwrap();
        let end = timeout(AT_ONCE, consumer.is_end_of_topic())
            .await
            .expect("a question that needs the connection is answered at once");
        assert!(matches!(end, Err(Error::Disconnected)), "{end:?}");
        timeout(AT_ONCE, consumer.close())
            .await
            .unwrap_or_else(|_| panic!("consumer close waited for the outage (silent: {silent})"));
        timeout(AT_ONCE, producer.close())
            .await
            .unwrap_or_else(|_| panic!("producer close waited for the outage (silent: {silent})"));
        let sent = timeout(AT_ONCE, pending)
            .await
            .expect("the pending send ends");
        assert!(matches!(sent, Err(Error::Closed)), "{sent:?}");
        assert!(
            timeout(AT_ONCE, futures_util::StreamExt::next(&mut consumer))
                .await
                .expect("the stream ends")
                .is_none(),
            "a closed consumer's stream ends"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_stops_trying_to_connect() {
    let (_e, proxy, config) = behind_a_proxy().await;
    let consumer = Consumer::subscribe(&config, topic("c"), "s", ConsumerOptions::default())
        .await
        .unwrap();
    let producer = Producer::connect(&config, topic("p"), ProducerOptions::default())
        .await
        .unwrap();
    proxy.set_down(true);
    reconnecting(&proxy).await;
    drop(consumer);
    drop(producer);
    // An attempt already under way may still land; after that, none. With a 30 ms backoff
    // cap, clients still trying would knock a dozen times in the next 400 ms.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_drop = proxy.accepted();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        proxy.accepted(),
        after_drop,
        "a dropped client went on connecting"
    );
}
