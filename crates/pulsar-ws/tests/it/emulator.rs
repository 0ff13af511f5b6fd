//! The client against the in-process Pulsar WebSocket emulator (headwaters-testkit), where a
//! test needs what only the emulator offers — its stored messages and counts, injected
//! faults, time offsets, TLS set-ups: round trips, flow control, nack/redelivery/DLQ,
//! readers, reconnection, auth, TLS, handlers and the registry. What both the emulator and
//! a real broker can answer is in `differential.rs`, run against both.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use headwaters_ordering_core::{self as ordering, Key, Outcome};
use headwaters_pulsar_ws::{
    Client, ClientConfig, Component, Consumer, ConsumerOptions, ConsumerParams, Error, Handled,
    Message, MessageHandler, OnDiscard, OutgoingMessage, PendingPolicy, Producer, ProducerOptions,
    Reader, ReaderOptions, ReaderParams, ReaderStart, RegistryKey, SendErrorCode, SubscriptionType,
    TokenPlacement, Topic,
};
use headwaters_testkit::eventually;
use headwaters_testkit::pulsar::{EmulatorConfig, PulsarEmulator};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn topic(name: &str) -> Topic {
    Topic::persistent("public", "default", name).unwrap()
}

fn full(name: &str) -> String {
    format!("persistent://public/default/{name}")
}

async fn emulator() -> (PulsarEmulator, ClientConfig) {
    let e = PulsarEmulator::start().await.unwrap();
    let c = ClientConfig::new(&e.url()).unwrap();
    (e, c)
}

/// A producer with default options on `public/default/{name}`.
async fn connect_producer(config: &ClientConfig, name: &str) -> Producer {
    Producer::connect(config, topic(name), ProducerOptions::default())
        .await
        .unwrap()
}

fn consumer_options(kind: SubscriptionType) -> ConsumerOptions {
    let mut p = ConsumerParams::default();
    p.subscription_type = Some(kind);
    ConsumerOptions::default().with_params(p)
}

async fn next(
    stream: &mut (impl futures_util::Stream<Item = Result<Message, Error>> + Unpin),
) -> Message {
    timeout(WAIT, stream.next())
        .await
        .expect("a message in time")
        .expect("open stream")
        .expect("a good message")
}

fn text(m: &Message) -> String {
    String::from_utf8(m.payload.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_every_field_and_offsets() {
    let e = PulsarEmulator::start_with(
        EmulatorConfig::default().with_time_offset(-7 * 3600),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let config = ClientConfig::new(&e.url()).unwrap();
    let mut consumer = Consumer::subscribe(&config, topic("rt"), "s", ConsumerOptions::default())
        .await
        .unwrap();
    let producer = connect_producer(&config, "rt").await;
    let event_time = headwaters_ordering_core::Timestamp::from_millis(1_700_000_000_123);
    let sent = OutgoingMessage::new(vec![0u8, 159, 146, 150])
        .with_key("user-1")
        .with_property("origin", "test")
        .with_event_time(event_time);
    let id = producer.send(sent).await.unwrap();
    let m = next(&mut consumer).await;
    assert_eq!(m.message_id, id);
    assert_eq!(&m.payload[..], &[0u8, 159, 146, 150]);
    assert_eq!(m.key.as_deref(), Some("user-1"));
    assert_eq!(m.properties["origin"], "test");
    assert_eq!(m.event_time.unwrap().timestamp, event_time);
    assert_eq!(m.event_time.unwrap().offset_seconds, -7 * 3600);
    assert_eq!(m.publish_time.offset_seconds, -7 * 3600);
    assert_eq!(m.redelivery_count, 0);
    assert_eq!(m.topic.name(), "rt");
    m.ack();
    eventually("ack reaches the broker", || {
        e.backlog(&full("rt"), "s") == Some(0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_arrive_in_order_on_an_exclusive_subscription() {
    let (e, config) = emulator().await;
    let mut consumer = Consumer::subscribe(&config, topic("pipe"), "s", ConsumerOptions::default())
        .await
        .unwrap();
    let producer = Producer::connect(
        &config,
        topic("pipe"),
        ProducerOptions::default().with_max_in_flight(100),
    )
    .await
    .unwrap();
    let mut receipts = Vec::new();
    for i in 0..3000 {
        receipts.push(producer.enqueue(format!("{i}")).await.unwrap());
        assert!(producer.in_flight() <= 100);
    }
    let mut ids = Vec::new();
    for r in receipts {
        ids.push(r.await.unwrap());
    }
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        3000,
        "distinct ids"
    );
    let stored: Vec<String> = e
        .messages(&full("pipe"))
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    assert_eq!(
        stored,
        (0..3000).map(|i| i.to_string()).collect::<Vec<_>>(),
        "stored order"
    );
    for i in 0..3000 {
        let m = next(&mut consumer).await;
        assert_eq!(text(&m), i.to_string());
        m.ack();
    }
    eventually("all acked", || e.backlog(&full("pipe"), "s") == Some(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_spreads_and_key_shared_keeps_each_key_on_one_consumer_in_order() {
    let (_e, config) = emulator().await;
    for (name, kind) in [
        ("sh", SubscriptionType::Shared),
        ("ks", SubscriptionType::KeyShared),
    ] {
        let mut a = Consumer::subscribe(&config, topic(name), "s", consumer_options(kind))
            .await
            .unwrap();
        let mut b = Consumer::subscribe(&config, topic(name), "s", consumer_options(kind))
            .await
            .unwrap();
        let producer = Producer::connect(&config, topic(name), ProducerOptions::default())
            .await
            .unwrap();
        for i in 0..200 {
            let _receipt = producer
                .enqueue((format!("k{}", i % 10), format!("{}", i)))
                .await
                .unwrap();
        }
        let mut seen: Vec<Vec<Message>> = vec![Vec::new(), Vec::new()];
        while seen[0].len() + seen[1].len() < 200 {
            tokio::select! {
                Some(Ok(m)) = a.next() => { m.ack(); seen[0].push(m) }
                Some(Ok(m)) = b.next() => { m.ack(); seen[1].push(m) }
                () = tokio::time::sleep(WAIT) => panic!("{name}: stalled at {}", seen[0].len() + seen[1].len()),
            }
        }
        assert!(
            !seen[0].is_empty() && !seen[1].is_empty(),
            "{name}: both consumers got messages"
        );
        if kind == SubscriptionType::KeyShared {
            let keys = |v: &Vec<Message>| {
                v.iter()
                    .map(|m| m.key.clone().unwrap())
                    .collect::<BTreeSet<_>>()
            };
            assert!(
                keys(&seen[0]).is_disjoint(&keys(&seen[1])),
                "a key on both consumers"
            );
            for side in &seen {
                let mut last: HashMap<String, u32> = HashMap::new();
                for m in side {
                    let n: u32 = text(m).parse().unwrap();
                    let prev = last.insert(m.key.clone().unwrap(), n);
                    assert!(prev.is_none_or(|p| p < n), "per-key order broken");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_redeliver_with_counts_until_the_dead_letter_topic() {
    let (e, config) = emulator().await;
    let mut p = ConsumerParams::default();
    p.subscription_type = Some(SubscriptionType::Shared);
    p.negative_ack_redelivery_delay = Some(Duration::from_millis(50));
    p.max_redeliver_count = Some(2);
    let mut consumer = Consumer::subscribe(
        &config,
        topic("nack"),
        "s",
        ConsumerOptions::default().with_params(p),
    )
    .await
    .unwrap();
    let dlq = topic("nack").dead_letter_topic("s");
    let mut dead = Consumer::subscribe(
        &config,
        dlq.clone(),
        "dlq",
        consumer_options(SubscriptionType::Shared),
    )
    .await
    .unwrap();
    let producer = connect_producer(&config, "nack").await;
    producer.send("poison").await.unwrap();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let m = next(&mut consumer).await;
        counts.push(m.redelivery_count);
        // What an ordered handler sees.
        let ordered = headwaters_pulsar_ws::to_ordering_message(&m);
        assert_eq!(ordered.redeliveries, m.redelivery_count);
        assert_eq!(ordered.is_redelivery(), m.redelivery_count > 0);
        m.nack();
    }
    assert_eq!(counts, [0, 1, 2]);
    let d = next(&mut dead).await;
    assert_eq!(text(&d), "poison");
    assert_eq!(d.properties["REAL_TOPIC"], full("nack"));
    d.ack();
    assert!(
        timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "no fourth delivery"
    );
    eventually("nothing left", || e.backlog(&full("nack"), "s") == Some(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_mode_backpressure_reaches_the_broker_and_push_mode_stalls_without_acks() {
    let (e, config) = emulator().await;
    let mut p = ConsumerParams::default();
    p.receiver_queue_size = Some(10);
    let mut pull = Consumer::subscribe(
        &config,
        topic("bp"),
        "pull",
        ConsumerOptions::default().with_params(p.clone()),
    )
    .await
    .unwrap();
    let producer = connect_producer(&config, "bp").await;
    for i in 0..100 {
        let _receipt = producer.enqueue(format!("{i}")).await.unwrap();
    }
    producer.send("last").await.unwrap();
    // At most receiverQueueSize granted and on the way, plus as many read and waiting for
    // the application: 20 here, however long the application reads nothing.
    eventually("the permits are used", || {
        e.unacked(&full("bp"), "pull") == Some(20)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        e.unacked(&full("bp"), "pull"),
        Some(20),
        "the broker delivered beyond the permits while the application read nothing"
    );
    for _ in 0..101 {
        let m = next(&mut pull).await;
        m.ack();
        assert!(
            pull.handle().in_flight() <= 10,
            "more than receiverQueueSize permits outstanding"
        );
    }

    p.pull_mode = Some(false);
    p.receiver_queue_size = Some(5);
    let mut push = Consumer::subscribe(
        &config,
        topic("bp2"),
        "push",
        ConsumerOptions::default().with_params(p),
    )
    .await
    .unwrap();
    let producer = connect_producer(&config, "bp2").await;
    for i in 0..10 {
        producer.send(format!("{i}")).await.unwrap();
    }
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next(&mut push).await);
    }
    assert_eq!(push.handle().in_flight(), 5);
    assert!(
        timeout(Duration::from_millis(300), push.next())
            .await
            .is_err(),
        "push mode must stall at receiverQueueSize without acks"
    );
    held[0].ack();
    assert_eq!(text(&next(&mut push).await), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_start_where_asked_and_see_the_end_of_a_terminated_topic() {
    let (e, config) = emulator().await;
    let producer = connect_producer(&config, "rd").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(producer.send(format!("{i}")).await.unwrap());
    }
    let open = |start| {
        let mut p = ReaderParams::default();
        p.start = Some(start);
        p.receiver_queue_size = Some(2);
        Reader::open(
            &config,
            topic("rd"),
            ReaderOptions::default().with_params(p),
        )
    };
    let mut earliest = open(ReaderStart::Earliest).await.unwrap();
    for i in 0..5 {
        assert_eq!(text(&next(&mut earliest).await), i.to_string());
    }
    let mut after = open(ReaderStart::At(ids[2].clone())).await.unwrap();
    assert_eq!(
        text(&next(&mut after).await),
        "3",
        "the start id is exclusive"
    );
    let mut latest = open(ReaderStart::Latest).await.unwrap();
    assert!(!latest.is_end_of_topic().await.unwrap());
    producer.send("5").await.unwrap();
    assert_eq!(text(&next(&mut latest).await), "5");
    e.terminate_topic(&full("rd"));
    assert!(latest.is_end_of_topic().await.unwrap());
    let err = producer.send("too late").await.unwrap_err();
    assert!(
        matches!(&err, Error::Send(f) if f.code == SendErrorCode::Broker),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_emulator_drops_every_connection_without_losing_sends() {
    let (e, config) = emulator().await;
    let config = config.with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    let mut consumer = Consumer::subscribe(&config, topic("rc"), "s", ConsumerOptions::default())
        .await
        .unwrap();
    let producer = connect_producer(&config, "rc").await;
    let mut mid_run_delay = true;
    let mut receipts = Vec::new();
    for i in 0..2000 {
        if i == 1000 {
            // Receipts held back, then every socket dropped: pending sends must be resent.
            e.delay_receipts(Duration::from_millis(100));
            receipts.push(producer.enqueue(format!("{i}")).await.unwrap());
            e.drop_connections();
            e.delay_receipts(Duration::ZERO);
            mid_run_delay = false;
            continue;
        }
        receipts.push(producer.enqueue(format!("{i}")).await.unwrap());
    }
    assert!(!mid_run_delay);
    for r in receipts {
        timeout(WAIT, r).await.expect("receipt in time").unwrap();
    }
    let mut got = BTreeSet::new();
    while got.len() < 2000 {
        let m = next(&mut consumer).await;
        got.insert(text(&m).parse::<u32>().unwrap());
        m.ack();
    }
    assert_eq!(got, (0..2000).collect());
    assert!(consumer.handle().reconnects() >= 1);
    let stored: BTreeSet<String> = e
        .messages(&full("rc"))
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    assert_eq!(stored.len(), 2000, "every send stored (duplicates allowed)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_sends_fail_on_disconnect_when_asked_to() {
    let (e, config) = emulator().await;
    let config = config.with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    let producer = Producer::connect(
        &config,
        topic("fail"),
        ProducerOptions::default().with_on_disconnect(PendingPolicy::Fail),
    )
    .await
    .unwrap();
    e.delay_receipts(Duration::from_secs(5));
    let pending = producer.enqueue("lost receipt").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    e.drop_connections();
    e.delay_receipts(Duration::ZERO);
    assert!(matches!(pending.await, Err(Error::Disconnected)));
    producer
        .send("after")
        .await
        .expect("the producer reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_typed_and_tokens_work_in_header_or_query() {
    let e = PulsarEmulator::start_with(
        EmulatorConfig::default().with_token("s3cret"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let bare = ClientConfig::new(&e.url()).unwrap();
    let err = Producer::connect(&bare, topic("auth"), ProducerOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert!(matches!(err, Error::Rejected { status: 401, .. }));
    assert!(err.to_string().contains("check the token"));

    let wrong = bare.clone().with_token("nope");
    assert!(
        Producer::connect(&wrong, topic("auth"), ProducerOptions::default())
            .await
            .unwrap_err()
            .is_auth()
    );
    assert!(
        !format!("{wrong:?}").contains("nope"),
        "tokens never show in Debug"
    );

    let calls = Arc::new(Mutex::new(0));
    let counted = calls.clone();
    let header = bare.clone().with_token_provider(move || {
        let counted = counted.clone();
        async move {
            *counted.lock().unwrap() += 1;
            Ok(headwaters_pulsar_ws::Secret::new("s3cret"))
        }
    });
    let p = Producer::connect(&header, topic("auth"), ProducerOptions::default())
        .await
        .unwrap();
    p.send("ok").await.unwrap();
    assert_eq!(*calls.lock().unwrap(), 1);

    let query = bare
        .with_token("s3cret")
        .with_token_placement(TokenPlacement::Query);
    let p = Producer::connect(&query, topic("auth"), ProducerOptions::default())
        .await
        .unwrap();
    p.send("ok").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_errors_are_typed_and_refused_parameters_are_400() {
    let (e, config) = emulator().await;
    let producer = connect_producer(&config, "err").await;
    e.fail_next_sends(1);
    let err = producer.send("a").await.unwrap_err();
    assert!(
        matches!(&err, Error::Send(f) if f.code == SendErrorCode::Broker),
        "{err}"
    );
    assert!(err.is_transient());
    producer.send("b").await.unwrap();

    let big = vec![b'x'; 800 * 1024];
    let err = producer.send(big).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");

    let err = headwaters_pulsar_ws::produce(
        &format!(
            "{}/ws/v2/producer/persistent/public/default/err?messageRoutingMode=Bogus",
            e.url()
        ),
        ["x"],
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Rejected { status: 400, .. }), "{err}");

    let ids = headwaters_pulsar_ws::produce(
        &format!("{}/ws/v2/producer/persistent/public/default/adhoc", e.url()),
        ["one", "two", "three"],
    )
    .await
    .unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(e.messages(&full("adhoc")).len(), 3);

    let producer2 = producer.clone();
    let blocking =
        std::thread::spawn(move || producer2.send_blocking("sync", Duration::from_secs(5)));
    blocking.join().unwrap().unwrap();
    assert!(matches!(
        producer.send_blocking("x", Duration::from_secs(1)),
        Err(Error::BlockingInRuntime)
    ));

    let (tx, rx) = tokio::sync::oneshot::channel();
    producer
        .send_with_callback("cb", move |r| {
            let _ = tx.send(r);
        })
        .await
        .unwrap();
    rx.await.unwrap().unwrap();
    e.fail_next_sends(1);
    let (tx, rx) = tokio::sync::oneshot::channel();
    producer
        .send_with_callback("cb-fails", move |r| {
            let _ = tx.send(r);
        })
        .await
        .unwrap();
    assert!(
        rx.await.unwrap().is_err(),
        "callbacks hear about failures too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_custom_ca_and_a_client_certificate() {
    let certs = headwaters_testkit::tls::TestCerts::generate().unwrap();
    let e = PulsarEmulator::start_with(
        EmulatorConfig::default().with_tls(certs.server_config(true).unwrap()),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    assert!(e.url().starts_with("wss://"));
    let trusted = ClientConfig::new(&e.url())
        .unwrap()
        .with_ca_pem(certs.ca_pem.clone())
        .unwrap();
    let mtls = trusted
        .clone()
        .with_client_identity(certs.client.cert_pem.clone(), certs.client.key_pem.clone())
        .unwrap();
    let producer = Producer::connect(&mtls, topic("tls"), ProducerOptions::default())
        .await
        .unwrap();
    producer.send("over tls").await.unwrap();

    let err = Producer::connect(&trusted, topic("tls"), ProducerOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Connect { .. }),
        "no client certificate: {err}"
    );
    let untrusted = ClientConfig::new(&e.url()).unwrap();
    let err = Producer::connect(&untrusted, topic("tls"), ProducerOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "unknown CA: {err}");
    assert!(matches!(
        ClientConfig::new(&e.url())
            .unwrap()
            .with_ca_pem("not a pem"),
        Err(Error::Tls(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_pings_hold_an_idle_connection_open() {
    let e = PulsarEmulator::start_with(
        EmulatorConfig::default().with_idle_timeout(Duration::from_millis(400)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let config = ClientConfig::new(&e.url())
        .unwrap()
        .with_keepalive(Duration::from_millis(100), Duration::from_millis(300));
    let consumer = Consumer::subscribe(&config, topic("idle"), "s", ConsumerOptions::default())
        .await
        .unwrap();
    // Ten pings span 2.5 idle timeouts.
    eventually("ten pings", || e.pings() >= 10).await;
    assert_eq!(
        consumer.handle().reconnects(),
        0,
        "pings kept the socket alive"
    );

    let quiet = ClientConfig::new(&e.url())
        .unwrap()
        .with_keepalive(Duration::from_secs(30), Duration::from_secs(10))
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50));
    let consumer = Consumer::subscribe(&quiet, topic("idle"), "t", ConsumerOptions::default())
        .await
        .unwrap();
    eventually(
        "without pings the idle timeout closes it, and the client reconnects",
        || consumer.handle().reconnects() >= 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_is_detected_by_the_pong_timeout_and_left_for_a_new_connection() {
    let (e, config) = emulator().await;
    let config = config
        .with_keepalive(Duration::from_millis(100), Duration::from_millis(200))
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50));
    // Shared: the stalled server still holds the old consumer, which would refuse a second
    // Exclusive one with 409 until it notices.
    let mut consumer = Consumer::subscribe(
        &config,
        topic("stall"),
        "s",
        consumer_options(SubscriptionType::Shared),
    )
    .await
    .unwrap();
    let producer = connect_producer(&config, "stall").await;
    e.freeze(true);
    let started = std::time::Instant::now();
    eventually("the consumer gave up on the silent socket", || {
        consumer.handle().reconnects() >= 1
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "detected after {:?} (ping every 100 ms, pong timeout 200 ms)",
        started.elapsed()
    );
    e.freeze(false);
    let id = timeout(WAIT, producer.send("after the stall"))
        .await
        .expect("the producer recovered")
        .unwrap();
    let m = next(&mut consumer).await;
    assert_eq!(
        (m.message_id.clone(), text(&m).as_str()),
        (id, "after the stall")
    );
}

struct Counter(Arc<Mutex<Vec<String>>>);

impl MessageHandler for Counter {
    type State = usize;

    async fn init(&self) -> usize {
        0
    }

    async fn handle_message(&self, message: &Message, handled: &mut usize) -> Handled {
        *handled += 1;
        self.0.lock().unwrap().push(text(message));
        Handled::Ack
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_processors_ack_everything() {
    let (e, config) = emulator().await;
    let consumer = Consumer::subscribe(&config, topic("hd"), "s", ConsumerOptions::default())
        .await
        .unwrap();
    let handle = consumer.handle();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let run = tokio::spawn(headwaters_pulsar_ws::run_handler(
        consumer,
        Counter(seen.clone()),
        4,
    ));
    let producer = connect_producer(&config, "hd").await;
    for i in 0..500 {
        let _receipt = producer.enqueue(format!("{i}")).await.unwrap();
    }
    producer.send("end").await.unwrap();
    eventually("all handled", || seen.lock().unwrap().len() == 501).await;
    eventually("all acked", || e.backlog(&full("hd"), "s") == Some(0)).await;
    handle.close().await;
    timeout(WAIT, run).await.unwrap().unwrap().unwrap();
}

#[derive(Clone)]
struct Ordered(Arc<Mutex<HashMap<String, Vec<u32>>>>);

impl ordering::Handler for Ordered {
    type State = String;
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = String;

    async fn init(&self, key: &Key) -> Result<String, String> {
        Ok(String::from_utf8_lossy(key.as_bytes()).into_owned())
    }

    async fn handle_message(
        &self,
        m: &ordering::Message,
        key: &mut String,
    ) -> Result<Outcome, String> {
        let n: u32 = String::from_utf8_lossy(&m.payload)
            .parse()
            .map_err(|_| "bad")?;
        tokio::time::sleep(Duration::from_micros(u64::from(n % 7) * 50)).await;
        self.0
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .push(n);
        Ok(Outcome::ack())
    }

    async fn handle_signal(&self, (): (), _: &mut String) {}
}

type OrderedRun = tokio::task::JoinHandle<Result<ordering::ShutdownReport, Error>>;

/// Two Key_Shared consumers of subscription `s` on `name`, each running `handler` ordered.
async fn ordered_group<H>(
    config: &ClientConfig,
    name: &str,
    handler: &H,
) -> (Vec<headwaters_pulsar_ws::ConsumerHandle>, Vec<OrderedRun>)
where
    H: ordering::Handler + Clone,
{
    let mut handles = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let c = Consumer::subscribe(
            config,
            topic(name),
            "s",
            consumer_options(SubscriptionType::KeyShared),
        )
        .await
        .unwrap();
        handles.push(c.handle());
        runs.push(tokio::spawn(headwaters_pulsar_ws::run_ordered(
            c,
            handler.clone(),
            ordering::Config::default(),
            Duration::from_secs(5),
            OnDiscard::Acknowledge,
        )));
    }
    (handles, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_mode_keeps_per_key_order_over_a_key_shared_group() {
    let (e, config) = emulator().await;
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let (handles, runs) = ordered_group(&config, "ord", &Ordered(seen.clone())).await;
    let producer = connect_producer(&config, "ord").await;
    for i in 0..1000u32 {
        let _receipt = producer
            .enqueue((format!("key-{}", i % 25), i.to_string()))
            .await
            .unwrap();
    }
    producer.send(("key-0", "1000")).await.unwrap();
    eventually("all acked", || e.backlog(&full("ord"), "s") == Some(0)).await;
    for h in &handles {
        h.close().await;
    }
    for r in runs {
        timeout(WAIT, r).await.unwrap().unwrap().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 1001);
    for (key, ns) in seen.iter() {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{key}: out of order {ns:?}"
        );
    }
}

/// Checks each key's numbers 1, 2, 3… against a checkpoint shared by the whole group (what
/// a store would hold): a handler starts from it, skips what was processed already (a
/// redelivery), and records a gap — a message overtaking one before it — as a violation.
#[derive(Clone, Default)]
struct Checkpointed {
    done: Arc<Mutex<HashMap<String, u32>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl ordering::Handler for Checkpointed {
    /// The key and the last number this handler processed.
    type State = (String, u32);
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = String;

    async fn init(&self, key: &Key) -> Result<(String, u32), String> {
        let key = String::from_utf8_lossy(key.as_bytes()).into_owned();
        let last = self.done.lock().unwrap().get(&key).copied().unwrap_or(0);
        Ok((key, last))
    }

    async fn handle_message(
        &self,
        m: &ordering::Message,
        (key, last): &mut (String, u32),
    ) -> Result<Outcome, String> {
        let n: u32 = String::from_utf8_lossy(&m.payload)
            .parse()
            .map_err(|_| "bad")?;
        tokio::time::sleep(Duration::from_micros(u64::from(n % 5) * 100)).await;
        if n <= *last {
            return Ok(Outcome::ack());
        }
        if n != *last + 1 {
            self.violations
                .lock()
                .unwrap()
                .push(format!("{key}: {n} after {last}"));
        }
        *last = n;
        self.done.lock().unwrap().insert(key.clone(), n);
        Ok(Outcome::ack())
    }

    async fn handle_signal(&self, (): (), _: &mut (String, u32)) {}
}

/// Every connection drops three times while two ordered Key_Shared consumers work: keys
/// move between them as they reconnect one after the other, and what a lost connection had
/// queued comes back as redeliveries. No key may see a gap. (Which consumer reconnects first
/// is up to the scheduler: three rounds make a regression show.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_key_shared_keeps_order_when_connections_drop() {
    for _ in 0..3 {
        ordered_key_shared_through_drops().await;
    }
}

async fn ordered_key_shared_through_drops() {
    let (e, config) = emulator().await;
    let config = config.with_backoff(Duration::from_millis(5), Duration::from_millis(50));
    let checker = Checkpointed::default();
    let (handles, runs) = ordered_group(&config, "ord-drop", &checker).await;
    let (keys, per_key) = (25u32, 80u32);
    let producer = connect_producer(&config, "ord-drop").await;
    let mut receipts = Vec::new();
    for i in 0..keys * per_key {
        if i > 0 && i % (keys * per_key / 4) == 0 {
            e.drop_connections();
            let drops = u64::from(i / (keys * per_key / 4));
            eventually("both consumers back", || {
                handles.iter().all(|h| h.reconnects() == drops)
            })
            .await;
        }
        let message = (format!("key-{}", i % keys), (i / keys + 1).to_string());
        receipts.push(producer.enqueue(message).await.unwrap());
    }
    for r in receipts {
        r.await.unwrap();
    }
    eventually("every key processed to its end", || {
        let done = checker.done.lock().unwrap();
        done.len() == keys as usize && done.values().all(|n| *n == per_key)
    })
    .await;
    for h in &handles {
        h.close().await;
    }
    for r in runs {
        timeout(WAIT, r).await.unwrap().unwrap().unwrap();
    }
    let violations = checker.violations.lock().unwrap();
    assert!(violations.is_empty(), "gaps: {violations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_registry_finds_what_it_created() {
    let (e, config) = emulator().await;
    let client = Client::new(config);
    let t = topic("reg");
    let p = client
        .producer(t.clone(), ProducerOptions::default())
        .await
        .unwrap();
    let again = client
        .producer(t.clone(), ProducerOptions::default())
        .await
        .unwrap();
    p.send("1").await.unwrap();
    again.send("2").await.unwrap();
    let _c = client
        .consumer(t.clone(), "s", ConsumerOptions::default())
        .await
        .unwrap();
    let _r = client
        .reader(t.clone(), ReaderOptions::default())
        .await
        .unwrap();
    assert!(client.find_producer(&t).is_some());
    assert!(
        client
            .find_receiver(&RegistryKey::new(Component::Consumer, &t))
            .is_some()
    );
    assert!(client.find_reader(&t).is_some());
    // A reader is not a consumer: no consumer handle (with acks) is found for it.
    assert!(
        client
            .find_receiver(&RegistryKey::new(Component::Reader, &t))
            .is_none()
    );
    assert_eq!(client.keys().len(), 3);
    assert_eq!(
        e.open_connections(),
        3,
        "one producer connection shared by both handles"
    );
    client.close().await;
    eventually("all closed", || e.open_connections() == 0).await;
    assert_eq!(e.messages(&full("reg")).len(), 2);
}

/// Discards payloads that start with "poison", acks the rest.
struct DiscardPoison;

impl ordering::Handler for DiscardPoison {
    type State = ();
    type Continue = ();
    type Signal = ();
    type Reply = ();
    type Error = String;

    async fn init(&self, _: &Key) -> Result<(), String> {
        Ok(())
    }

    async fn handle_message(&self, m: &ordering::Message, (): &mut ()) -> Result<Outcome, String> {
        Ok(if m.payload.starts_with(b"poison") {
            Outcome::discard("poison")
        } else {
            Outcome::ack()
        })
    }

    async fn handle_signal(&self, (): (), (): &mut ()) {}
}

/// Runs `run_ordered` over ten messages, two of them discarded.
async fn discard_two(
    config: &ClientConfig,
    source: &str,
    on_discard: OnDiscard,
) -> tokio::task::JoinHandle<Result<ordering::ShutdownReport, Error>> {
    let c = Consumer::subscribe(
        config,
        topic(source),
        "s",
        consumer_options(SubscriptionType::Shared),
    )
    .await
    .unwrap();
    let run = tokio::spawn(headwaters_pulsar_ws::run_ordered(
        c,
        DiscardPoison,
        ordering::Config::default(),
        Duration::from_secs(5),
        on_discard,
    ));
    let producer = connect_producer(config, source).await;
    for i in 0..10 {
        let body = if i % 5 == 2 {
            format!("poison-{i}")
        } else {
            format!("ok-{i}")
        };
        producer.send((format!("k{i}"), body)).await.unwrap();
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_discards_go_to_the_dead_letter_topic_before_the_ack() {
    let (e, config) = emulator().await;
    let mut dead = Consumer::subscribe(
        &config,
        topic("discard-dlq"),
        "inspect",
        consumer_options(SubscriptionType::Exclusive),
    )
    .await
    .unwrap();
    let dlq = connect_producer(&config, "discard-dlq").await;
    let _run = discard_two(&config, "discard-src", OnDiscard::DeadLetter(dlq)).await;
    eventually("every source message acked", || {
        e.backlog(&full("discard-src"), "s") == Some(0)
    })
    .await;
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let m = next(&mut dead).await;
        assert_eq!(
            m.properties.get("pulsar.origin.topic").map(String::as_str),
            Some(full("discard-src").as_str())
        );
        assert!(m.properties.contains_key("pulsar.origin.message_id"));
        bodies.push(String::from_utf8(m.payload.to_vec()).unwrap());
        m.ack();
    }
    bodies.sort();
    assert_eq!(bodies, ["poison-2", "poison-7"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_discards_are_acknowledged_only_when_asked() {
    let (e, config) = emulator().await;
    let _run = discard_two(&config, "discard-ack", OnDiscard::Acknowledge).await;
    eventually("every source message acked", || {
        e.backlog(&full("discard-ack"), "s") == Some(0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_fail_with_timeout_after_their_deadline() {
    let (e, config) = emulator().await;
    let options = ProducerOptions::default().with_send_timeout(Some(Duration::from_millis(200)));
    let producer = Producer::connect(&config, topic("deadline"), options)
        .await
        .unwrap();
    producer.send("fast").await.unwrap();
    e.delay_receipts(Duration::from_secs(3));
    let err = producer.send("slow").await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout(t) if t == Duration::from_millis(200)),
        "{err}"
    );
    assert!(err.is_transient());
    let receipt = producer.enqueue("slow too").await.unwrap();
    assert!(matches!(receipt.await, Err(Error::Timeout(_))));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    producer
        .send_with_callback("slow as well", move |result| {
            let _ = tx.send(result);
        })
        .await
        .unwrap();
    let first = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert!(matches!(first, Err(Error::Timeout(_))), "{first:?}");
    e.delay_receipts(Duration::ZERO);
    // The late receipts do not call the callback a second time.
    producer.send("fast again").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "the callback ran twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_asked_for_again_on_reconnect() {
    let e = PulsarEmulator::start_with(
        EmulatorConfig::default().with_token("first"),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let current = Arc::new(Mutex::new("first".to_owned()));
    let calls = Arc::new(Mutex::new(0));
    let (token, counted) = (current.clone(), calls.clone());
    let config = ClientConfig::new(&e.url())
        .unwrap()
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .with_token_provider(move || {
            let (token, counted) = (token.clone(), counted.clone());
            async move {
                *counted.lock().unwrap() += 1;
                let value = token.lock().unwrap().clone();
                Ok(headwaters_pulsar_ws::Secret::new(value))
            }
        });
    let producer = Producer::connect(&config, topic("rotate"), ProducerOptions::default())
        .await
        .unwrap();
    producer.send("before").await.unwrap();
    // The key is rotated: the server takes only the new token, and drops the connections.
    *current.lock().unwrap() = "second".to_owned();
    e.set_token(Some("second".into()));
    e.drop_connections();
    eventually("the reconnect to ask for the token again", || {
        *calls.lock().unwrap() >= 2
    })
    .await;
    // Only the new token is accepted now: this goes through the new connection.
    timeout(WAIT, producer.send("after"))
        .await
        .expect("the producer reconnected with the new token")
        .unwrap();
    eventually("only the new connection open", || e.open_connections() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_provider_is_reported_with_its_cause() {
    let (_e, config) = emulator().await;
    let config = config.with_token_provider(|| async {
        Err(headwaters_pulsar_ws::TokenError::new(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "vault unreachable",
        )))
    });
    let err = Producer::connect(&config, topic("tok"), ProducerOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Token(_)), "{err}");
    assert!(err.to_string().contains("vault unreachable"), "{err}");
    let source = std::error::Error::source(&err).expect("the provider's error is the source");
    assert!(source.to_string().contains("vault unreachable"));
}

/// Takes its time over each message, counting the ones it started.
struct Slow(Arc<std::sync::atomic::AtomicUsize>);

impl ordering::SimpleHandler for Slow {
    type Error = std::convert::Infallible;

    async fn handle(&self, _: &Key, _: &ordering::Message) -> Result<Outcome, Self::Error> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Outcome::ack())
    }
}

/// Five messages of five keys started by a `start_ordered` consumer, then a shutdown with
/// `grace`; returns the subscription's backlog once the consumer closed.
async fn shut_down_while_handling(name: &str, grace: Duration) -> Option<usize> {
    let (e, config) = emulator().await;
    let consumer = Consumer::subscribe(
        &config,
        topic(name),
        "s",
        consumer_options(SubscriptionType::Shared),
    )
    .await
    .unwrap();
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let running = headwaters_pulsar_ws::start_ordered(
        consumer,
        Slow(Arc::clone(&started)),
        ordering::Config::default(),
        OnDiscard::Acknowledge,
    )
    .unwrap();
    let producer = connect_producer(&config, name).await;
    for i in 0..5 {
        producer.send((format!("k{i}"), "m")).await.unwrap();
    }
    eventually("all five started", || {
        started.load(std::sync::atomic::Ordering::Relaxed) == 5
    })
    .await;
    assert!(!running.is_finished());
    let report = running.shutdown(grace).await.unwrap();
    // The consumer closes once the shutdown is over: its last acks are written first.
    eventually(
        "the consumer closed (the producer's socket is the last)",
        || e.open_connections() == 1,
    )
    .await;
    assert_eq!(report.drained, grace > Duration::ZERO, "{report:?}");
    e.backlog(&full(name), "s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_ordered_consumer_acks_what_finishes_within_the_grace() {
    assert_eq!(
        shut_down_while_handling("start-grace", Duration::from_secs(5)).await,
        Some(0)
    );
    // Without a grace the handlers are abandoned: nothing is acked, all is redelivered.
    assert_eq!(
        shut_down_while_handling("start-no-grace", Duration::ZERO).await,
        Some(5)
    );
}
