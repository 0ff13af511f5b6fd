//! Apache Pulsar's own Java client as the peer, on a real broker (`ci/pulsar/PulsarPeer.java`,
//! compiled and put on `HEADWATERS_PULSAR_PEER_CLASSPATH` by `cargo xtask integration`): it
//! publishes keyed messages that our `start_ordered` consumer processes in per-key order, and
//! consumes with Key_Shared what our producer sends, properties and all.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headwaters_ordering_core::{self as ordering, Key, Outcome};
use headwaters_pulsar_ws::{
    ClientConfig, Consumer, ConsumerOptions, ConsumerParams, InitialPosition, OnDiscard,
    OutgoingMessage, Producer, ProducerOptions, SubscriptionType, Topic,
};

const MESSAGES: u32 = 2000;
const KEYS: u32 = 20;

/// Run the Java peer with `args`; its stdout on success, a panic with all it said otherwise.
fn java_peer(args: &[&str]) -> String {
    let classpath = std::env::var("HEADWATERS_PULSAR_PEER_CLASSPATH").expect(
        "HEADWATERS_PULSAR_PEER_CLASSPATH must hold the compiled PulsarPeer and pulsar-client (cargo xtask integration sets it)",
    );
    let broker = std::env::var("PULSAR_BROKER_URL")
        .expect("PULSAR_BROKER_URL must give the broker's pulsar:// URL for the Java client");
    let out = Command::new("java")
        .args(["-Xmx256m", "-cp", &classpath, "PulsarPeer"])
        .arg(args[0])
        .arg(&broker)
        .args(&args[1..])
        .output()
        .expect("cannot run java");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "PulsarPeer {args:?} failed with {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn live_config() -> ClientConfig {
    let url = std::env::var("PULSAR_WS_URL").expect("PULSAR_WS_URL must name a real Pulsar");
    let config = ClientConfig::new(&url).unwrap();
    match std::env::var("PULSAR_TOKEN") {
        Ok(token) => config.with_token(token),
        Err(_) => config,
    }
}

fn unique_topic(name: &str) -> Topic {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    Topic::persistent(
        "public",
        "default",
        &format!("{name}-{}-{nanos}", std::process::id()),
    )
    .unwrap()
}

/// Checks that each key's `seq` property counts 0, 1, 2… and that the payload says the same.
#[derive(Clone, Default)]
struct InOrder {
    next: Arc<Mutex<HashMap<Key, u32>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl ordering::SimpleHandler for InOrder {
    type Error = std::convert::Infallible;

    async fn handle(&self, key: &Key, m: &ordering::Message) -> Result<Outcome, Self::Error> {
        let seq: u32 = m
            .headers
            .get("seq")
            .and_then(|v| v.as_str()?.parse().ok())
            .unwrap_or(u32::MAX);
        let mut next = self.next.lock().unwrap();
        let want = next.entry(key.clone()).or_insert(0);
        let payload = String::from_utf8_lossy(&m.payload);
        if seq != *want || !payload.ends_with(&format!(":{seq}")) {
            self.violations.lock().unwrap().push(format!(
                "{key:?}: seq {seq} ({payload}) where {want} was next"
            ));
        }
        if seq == *want {
            *want += 1;
        }
        Ok(Outcome::ack())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Pulsar and Java: cargo xtask integration"]
async fn live_java_producer_into_an_ordered_consumer() {
    let config = live_config();
    let topic = unique_topic("java-to-rust");
    let mut params = ConsumerParams::default();
    params.subscription_type = Some(SubscriptionType::KeyShared);
    params.initial_position = Some(InitialPosition::Earliest);
    let consumer = Consumer::subscribe(
        &config,
        topic.clone(),
        "rust",
        ConsumerOptions::default().with_params(params),
    )
    .await
    .unwrap();
    let handler = InOrder::default();
    let running = headwaters_pulsar_ws::start_ordered(
        consumer,
        handler.clone(),
        ordering::Config::default(),
        OnDiscard::Acknowledge,
    )
    .unwrap();
    let said = tokio::task::spawn_blocking({
        let topic = topic.to_string();
        move || java_peer(&["produce", &topic, &MESSAGES.to_string(), &KEYS.to_string()])
    })
    .await
    .unwrap();
    assert!(said.contains(&format!("produced {MESSAGES}")), "{said}");
    let processed = || handler.next.lock().unwrap().values().sum::<u32>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while processed() < MESSAGES {
        assert!(
            tokio::time::Instant::now() < deadline,
            "processed {} of {MESSAGES} within 60 s; violations: {:?}",
            processed(),
            handler.violations.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(*handler.violations.lock().unwrap(), Vec::<String>::new());
    assert_eq!(handler.next.lock().unwrap().len(), KEYS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Pulsar and Java: cargo xtask integration"]
async fn live_our_producer_into_java_key_shared_consumers() {
    let config = live_config();
    let topic = unique_topic("rust-to-java");
    let producer = Producer::connect(&config, topic.clone(), ProducerOptions::default())
        .await
        .unwrap();
    let mut next = vec![0u32; KEYS as usize];
    let mut receipts = Vec::new();
    for i in 0..MESSAGES {
        let k = (i % KEYS) as usize;
        let seq = next[k];
        next[k] += 1;
        let message = OutgoingMessage::new(format!("k{k}:{seq}"))
            .with_key(format!("k{k}"))
            .with_property("seq", seq.to_string())
            .with_property("origin", "headwaters")
            .with_property(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            );
        receipts.push(producer.enqueue(message).await.unwrap());
    }
    for r in receipts {
        r.await.unwrap();
    }
    producer.close().await;
    let said = tokio::task::spawn_blocking({
        let topic = topic.to_string();
        move || java_peer(&["consume", &topic, "java", &MESSAGES.to_string(), "60"])
    })
    .await
    .unwrap();
    assert!(said.contains(&format!("consumed {MESSAGES}")), "{said}");
}
